
/*
 * The log phase: per request with a known key, the request added to this
 * worker's aggregates and, if the raw-event policy keeps it, one usage
 * record into its stream, both in the usage segment and without blocking;
 * the other requests are counted (per result, or as kept out by the
 * policy).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_apikey.h"


/* This worker's usage ring (its key table is in ngx_http_apikey_access.c). */

typedef struct {
    apikey_usage_t            *usage;
    ngx_int_t                  slot;         /* -1: none claimed */
    ngx_msec_t                 last_claim;
    unsigned long              sampled;      /* requests under sample=N */
} ngx_http_apikey_ring_state_t;


static const u_char *ngx_http_apikey_method_field(ngx_uint_t method);
static void ngx_http_apikey_record(ngx_http_request_t *r,
    ngx_http_apikey_ctx_t *ctx, ngx_http_apikey_loc_conf_t *alcf);
static void ngx_http_apikey_claim_slot(ngx_log_t *log);


static ngx_http_apikey_ring_state_t  ngx_http_apikey_worker = {
    NULL, -1, 0, 0
};


ngx_int_t
ngx_http_apikey_log_handler(ngx_http_request_t *r)
{
    ngx_http_apikey_ctx_t       *ctx;
    ngx_http_apikey_loc_conf_t  *alcf;

    if (ngx_http_apikey_worker.usage == NULL || r != r->main) {
        return NGX_OK;
    }

    /* no ctx: the request was answered before any key lookup */

    ctx = ngx_http_apikey_get_ctx(r);
    if (ctx == NULL) {
        return NGX_OK;
    }

    /*
     * The location that checked the key records the request, wherever
     * internal redirects took it since; otherwise (a variable looked the
     * key up, the access phase never came) the location it ended in.
     */

    alcf = ctx->checked;

    if (alcf == NULL) {
        alcf = ngx_http_get_module_loc_conf(r, ngx_http_apikey_module);
    }

    if (!alcf->enable || !alcf->capture) {
        return NGX_OK;
    }

    if (ngx_http_apikey_worker.slot < 0) {
        ngx_http_apikey_claim_slot(r->connection->log);

        if (ngx_http_apikey_worker.slot < 0) {
            apikey_usage_count_unslotted(ngx_http_apikey_worker.usage);
            return NGX_OK;
        }
    }

    if (apikey_result_is_recorded(ctx->verdict.result)) {
        ngx_http_apikey_record(r, ctx, alcf);

    } else {
        apikey_usage_count(ngx_http_apikey_worker.usage,
                           ngx_http_apikey_worker.slot, ctx->verdict.result);
    }

    return NGX_OK;
}


/*
 * The common methods as zero-padded record fields: copied as one block
 * (names as nginx's parser matched them, so equal to r->method_name).
 */

static const u_char *
ngx_http_apikey_method_field(ngx_uint_t method)
{
    static const u_char  fields[][APIKEY_METHOD_FIELD_LEN] = {
        "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"
    };

    /* the usual one first, without the switch's chain of comparisons */

    if (method == NGX_HTTP_GET) {
        return fields[0];
    }

    switch (method) {
    case NGX_HTTP_HEAD:    return fields[1];
    case NGX_HTTP_POST:    return fields[2];
    case NGX_HTTP_PUT:     return fields[3];
    case NGX_HTTP_DELETE:  return fields[4];
    case NGX_HTTP_OPTIONS: return fields[5];
    case NGX_HTTP_PATCH:   return fields[6];
    default:               return NULL;
    }
}


/*
 * A request with a known key: its usage record and its aggregates; never
 * blocks.
 */

static void
ngx_http_apikey_record(ngx_http_request_t *r, ngx_http_apikey_ctx_t *ctx,
    ngx_http_apikey_loc_conf_t *alcf)
{
    int                        kept, missed;
    int64_t                    now_us;
    ngx_str_t                  endpoint;
    ngx_time_t                *tp;
    struct sockaddr_in        *sin;
    apikey_usage_fields_t      f;
#if (NGX_HAVE_INET6)
    struct sockaddr_in6       *sin6;
#endif

    /*
     * Every field is set below (no ngx_memzero() of the struct): the
     * core's own layout, read by it as it is.
     */

    f.result = (uint8_t) ctx->verdict.result;
    f.key_id = ctx->verdict.key_id;
    f.org_id = ctx->verdict.org_id;

    /*
     * The same clock and resolution as $request_time: now minus the start,
     * both in microseconds of whole milliseconds.
     */

    tp = ngx_timeofday();
    f.time_us = (int64_t) r->start_sec * 1000000
                + (int64_t) r->start_msec * 1000;
    now_us = (int64_t) tp->sec * 1000000 + (int64_t) tp->msec * 1000;
    f.response_time_us = now_us > f.time_us ? now_us - f.time_us : 0;

    if (r->err_status) {
        f.status = (uint16_t) r->err_status;

    } else {
        f.status = (uint16_t) r->headers_out.status;
    }

    f.bytes_sent = r->connection->sent;

    f.ip_family = 0;
    f.ip = NULL;

    switch (r->connection->sockaddr->sa_family) {

    case AF_INET:
        sin = (struct sockaddr_in *) r->connection->sockaddr;
        f.ip_family = 4;
        f.ip = (u_char *) &sin->sin_addr;
        break;

#if (NGX_HAVE_INET6)
    case AF_INET6:
        sin6 = (struct sockaddr_in6 *) r->connection->sockaddr;
        f.ip_family = 6;
        f.ip = sin6->sin6_addr.s6_addr;
        break;
#endif
    }

    f.method.data = ngx_http_apikey_method_field(r->method);
    f.method.len = r->method_name.len;
    f.method_constant = (f.method.data != NULL);

    if (f.method.data == NULL) {
        f.method.data = r->method_name.data;
    }

    if (alcf->endpoint_field) {
        f.endpoint.data = alcf->endpoint_field;
        f.endpoint.len = alcf->endpoint_field_len;
        f.endpoint_constant = 1;

    } else {
        if (ngx_http_complex_value(r, alcf->endpoint, &endpoint) != NGX_OK) {
            ngx_str_null(&endpoint);
        }

        f.endpoint.data = endpoint.data;
        f.endpoint.len = endpoint.len;
        f.endpoint_constant = 0;
    }

    f.endpoint_hash = alcf->endpoint_hash;

    if (r->headers_in.user_agent) {
        f.user_agent.data = r->headers_in.user_agent->value.data;
        f.user_agent.len = r->headers_in.user_agent->value.len;

    } else {
        f.user_agent.data = NULL;
        f.user_agent.len = 0;
    }

    /* the default policy without a call through the policy's switch */

    kept = alcf->raw_policy == APIKEY_RAW_ALL
           || apikey_raw_kept(alcf->raw_policy, alcf->raw_sample, f.status,
                              &ngx_http_apikey_worker.sampled);

    missed = apikey_usage_log(ngx_http_apikey_worker.usage,
                              ngx_http_apikey_worker.slot, &f, kept);

    if (missed & APIKEY_USAGE_DROPPED) {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "apikey: usage chunk pool empty, record dropped");
    }

    if (missed & APIKEY_USAGE_OVERFLOW) {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "apikey: aggregation table full, request counted "
                       "as an overflow");
    }
}


/*
 * A ring of our own in the usage segment: at worker start, and retried at
 * most once a second while apikeyd has not yet freed enough slots.
 */

static void
ngx_http_apikey_claim_slot(ngx_log_t *log)
{
    ngx_time_t  *tp;

    if (ngx_http_apikey_worker.last_claim
        && ngx_current_msec - ngx_http_apikey_worker.last_claim
           < NGX_HTTP_APIKEY_RETRY_INTERVAL)
    {
        return;
    }

    ngx_http_apikey_worker.last_claim = ngx_current_msec
                                        ? ngx_current_msec : 1;

    tp = ngx_timeofday();

    ngx_http_apikey_worker.slot = apikey_usage_claim(
        ngx_http_apikey_worker.usage, (int) ngx_pid,
        (int64_t) tp->sec * 1000000 + (int64_t) tp->msec * 1000);

    if (ngx_http_apikey_worker.slot < 0) {
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "apikey: no free usage ring slot (is apikeyd "
                      "draining?), usage of this worker is not recorded "
                      "for now");
        return;
    }

    ngx_log_error(NGX_LOG_INFO, log, 0,
                  "apikey: worker claimed usage ring slot %i",
                  ngx_http_apikey_worker.slot);
}


/* At worker start: the usage segment the master mapped, and a ring in it. */

void
ngx_http_apikey_claim_ring(ngx_cycle_t *cycle, apikey_usage_t *usage)
{
    ngx_http_apikey_worker.usage = usage;
    ngx_http_apikey_claim_slot(cycle->log);
}


void
ngx_http_apikey_retire_ring(void)
{
    /* the ring's records stay for apikeyd; it frees the slot once drained */

    if (ngx_http_apikey_worker.usage && ngx_http_apikey_worker.slot >= 0) {
        apikey_usage_retire(ngx_http_apikey_worker.usage,
                            ngx_http_apikey_worker.slot);
        ngx_http_apikey_worker.slot = -1;
    }
}
