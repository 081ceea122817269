
/*
 * ngx_http_apikey_module: API-key authentication against a shared-memory key
 * table published by apikeyd, and per-request usage capture.
 *
 * The shim only translates between nginx and the C++ core (apikey_glue.h):
 * it finds the key in the request, asks the core for a verdict, and answers
 * 401/403/503 or lets the request through.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "apikey_glue.h"
#include "ngx_http_apikey_redact.h"


#define NGX_HTTP_APIKEY_DEFAULT_USAGE_SIZE  (64 * 1024 * 1024)
#define NGX_HTTP_APIKEY_MIN_USAGE_SIZE      (1024 * 1024)
#define NGX_HTTP_APIKEY_ATTACH_INTERVAL     1000  /* ms between retries */
#define NGX_HTTP_APIKEY_SLOTS_PER_WORKER    4     /* old + new during reloads */
#define NGX_HTTP_APIKEY_MIN_SLOTS           8


typedef struct {
    ngx_str_t                  keys_path;
    ngx_str_t                  usage_path;
    size_t                     usage_size;
    apikey_usage_t            *usage;        /* mapped by the master */
} ngx_http_apikey_main_conf_t;


typedef struct {
    ngx_flag_t                 enable;
    ngx_flag_t                 capture;
    ngx_flag_t                 hide_key;
    ngx_str_t                  header;
    ngx_str_t                  header_lc;    /* lowercase, as lowcase_key */
    ngx_uint_t                 header_hash;  /* as h->hash; 0: compare all */
    ngx_array_t               *scopes;       /* of uint64_t scope hashes */
    ngx_http_complex_value_t  *endpoint;
    u_char                    *endpoint_field;  /* as recorded, padded */
    size_t                     endpoint_field_len;
} ngx_http_apikey_loc_conf_t;


typedef struct {
    apikey_verdict_t             verdict;    /* result: as last decided */
    apikey_result_e              key_result; /* the key's own, no scopes */
    ngx_table_elt_t             *key_header; /* apikey_header, if sent */
    ngx_table_elt_t             *bearer_header; /* Authorization: Bearer */
    ngx_http_apikey_loc_conf_t  *found_with; /* whose apikey_header */
    ngx_http_apikey_loc_conf_t  *checked;    /* last "apikey on" to decide */
    unsigned                     extra_keys:1; /* the key header repeated */
} ngx_http_apikey_ctx_t;


typedef struct {
    apikey_table_t            *table;
    ngx_msec_t                 last_attach;
    ngx_msec_t                 last_check;   /* for a newer table file */
    unsigned                   attach_tried:1;
    apikey_usage_t            *usage;
    ngx_int_t                  slot;         /* -1: none claimed */
    ngx_msec_t                 last_claim;
} ngx_http_apikey_worker_t;


static ngx_int_t ngx_http_apikey_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_apikey_log_handler(ngx_http_request_t *r);
static const u_char *ngx_http_apikey_method_field(ngx_uint_t method);
static void ngx_http_apikey_record(ngx_http_request_t *r,
    ngx_http_apikey_ctx_t *ctx, ngx_http_apikey_loc_conf_t *alcf);
static void ngx_http_apikey_claim_slot(ngx_log_t *log);
static ngx_http_apikey_ctx_t *ngx_http_apikey_lookup(ngx_http_request_t *r);
static ngx_http_apikey_ctx_t *ngx_http_apikey_create_ctx(
    ngx_http_request_t *r);
static ngx_inline ngx_http_apikey_ctx_t *ngx_http_apikey_get_ctx(
    ngx_http_request_t *r);
static ngx_http_apikey_ctx_t *ngx_http_apikey_find_ctx(ngx_http_request_t *r);
static void ngx_http_apikey_cleanup(void *data);
static ngx_int_t ngx_http_apikey_find_key(ngx_http_request_t *r,
    ngx_http_apikey_loc_conf_t *alcf, ngx_str_t *key,
    ngx_http_apikey_ctx_t *ctx);
static ngx_inline ngx_uint_t ngx_http_apikey_is_key_header(
    ngx_table_elt_t *h, ngx_http_apikey_loc_conf_t *alcf);
static ngx_int_t ngx_http_apikey_bearer(ngx_table_elt_t *h, ngx_str_t *key);
static ngx_int_t ngx_http_apikey_hide(ngx_http_request_t *r,
    ngx_http_apikey_ctx_t *ctx);
static ngx_int_t ngx_http_apikey_reject(ngx_http_request_t *r,
    ngx_http_apikey_ctx_t *ctx);
static void ngx_http_apikey_refresh_table(ngx_log_t *log);

static ngx_int_t ngx_http_apikey_add_variables(ngx_conf_t *cf);
static ngx_int_t ngx_http_apikey_uuid_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_apikey_name_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_apikey_result_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);

static void *ngx_http_apikey_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_apikey_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_http_apikey_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_apikey_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static ngx_int_t ngx_http_apikey_prepare_endpoint(ngx_conf_t *cf,
    ngx_http_apikey_loc_conf_t *conf);
static char *ngx_http_apikey_keys(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_apikey_usage(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_apikey_header(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_apikey_scope(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_apikey_init(ngx_conf_t *cf);
static ngx_int_t ngx_http_apikey_init_module(ngx_cycle_t *cycle);
static void ngx_http_apikey_close_usage(void *data);
static ngx_int_t ngx_http_apikey_init_process(ngx_cycle_t *cycle);
static void ngx_http_apikey_exit_process(ngx_cycle_t *cycle);


static ngx_command_t  ngx_http_apikey_commands[] = {

    { ngx_string("apikey"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_apikey_loc_conf_t, enable),
      NULL },

    { ngx_string("apikey_keys"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_apikey_keys,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("apikey_usage"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE12,
      ngx_http_apikey_usage,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("apikey_header"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_apikey_header,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_apikey_loc_conf_t, header),
      NULL },

    { ngx_string("apikey_scope"),
      NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_apikey_scope,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("apikey_endpoint"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_set_complex_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_apikey_loc_conf_t, endpoint),
      NULL },

    { ngx_string("apikey_hide_key"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_apikey_loc_conf_t, hide_key),
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_apikey_module_ctx = {
    ngx_http_apikey_add_variables,        /* preconfiguration */
    ngx_http_apikey_init,                 /* postconfiguration */

    ngx_http_apikey_create_main_conf,     /* create main configuration */
    ngx_http_apikey_init_main_conf,       /* init main configuration */

    NULL,                                 /* create server configuration */
    NULL,                                 /* merge server configuration */

    ngx_http_apikey_create_loc_conf,      /* create location configuration */
    ngx_http_apikey_merge_loc_conf        /* merge location configuration */
};


ngx_module_t  ngx_http_apikey_module = {
    NGX_MODULE_V1,
    &ngx_http_apikey_module_ctx,          /* module context */
    ngx_http_apikey_commands,             /* module directives */
    NGX_HTTP_MODULE,                      /* module type */
    NULL,                                 /* init master */
    ngx_http_apikey_init_module,          /* init module */
    ngx_http_apikey_init_process,         /* init process */
    NULL,                                 /* init thread */
    NULL,                                 /* exit thread */
    ngx_http_apikey_exit_process,         /* exit process */
    NULL,                                 /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_http_variable_t  ngx_http_apikey_vars[] = {

    { ngx_string("apikey_id"), NULL, ngx_http_apikey_uuid_variable,
      offsetof(apikey_verdict_t, key_id), NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("apikey_org"), NULL, ngx_http_apikey_uuid_variable,
      offsetof(apikey_verdict_t, org_id), NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("apikey_name"), NULL, ngx_http_apikey_name_variable,
      0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("apikey_result"), NULL, ngx_http_apikey_result_variable,
      0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


static ngx_str_t  ngx_http_apikey_challenge = ngx_string("ApiKey");

/* Per worker process: the mapped key table and the claimed ring. */
static ngx_http_apikey_worker_t  ngx_http_apikey_worker = { NULL, 0, 0, 0,
                                                            NULL, -1, 0 };


static ngx_int_t
ngx_http_apikey_handler(ngx_http_request_t *r)
{
    ngx_http_apikey_ctx_t       *ctx;
    ngx_http_apikey_loc_conf_t  *alcf;

    alcf = ngx_http_get_module_loc_conf(r, ngx_http_apikey_module);

    if (!alcf->enable) {
        return NGX_DECLINED;
    }

    ctx = ngx_http_apikey_lookup(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* from here on the verdict stands, and this location records it */

    ctx->checked = alcf;

    /*
     * Hidden whatever the verdict: error_page or "satisfy any" may still
     * pass a rejected request to an upstream.
     */

    if (alcf->hide_key
        && (ctx->key_header != NULL || ctx->bearer_header != NULL))
    {
        if (ngx_http_apikey_hide(r, ctx) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    /* scopes are per location: decided again after an internal redirect */

    ctx->verdict.result = ctx->key_result;

    if (ctx->key_result == APIKEY_OK
        && alcf->scopes != NULL
        && !apikey_verdict_has_scopes(&ctx->verdict, alcf->scopes->elts,
                                      alcf->scopes->nelts))
    {
        ctx->verdict.result = APIKEY_FORBIDDEN;
    }

    if (ctx->verdict.result != APIKEY_OK) {
        return ngx_http_apikey_reject(r, ctx);
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_apikey_reject(ngx_http_request_t *r, ngx_http_apikey_ctx_t *ctx)
{
    u_char            id[APIKEY_UUID_TEXT_LEN];
    ngx_table_elt_t  *h;

    if (ctx->verdict.result == APIKEY_UNAVAILABLE) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "apikey: %s, rejecting request with 503",
                      ngx_http_apikey_worker.table != NULL
                      && apikey_table_ready(ngx_http_apikey_worker.table)
                      ? "key table entry locked mid-update"
                      : "no key table is readable");
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    if (ctx->verdict.result == APIKEY_FORBIDDEN) {
        apikey_uuid_format(ctx->verdict.key_id, id);
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "apikey: key %*s lacks a required scope",
                      (size_t) APIKEY_UUID_TEXT_LEN, id);
        return NGX_HTTP_FORBIDDEN;
    }

    if (ctx->verdict.result == APIKEY_EXPIRED
        || ctx->verdict.result == APIKEY_REVOKED)
    {
        apikey_uuid_format(ctx->verdict.key_id, id);
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "apikey: key %*s is %s",
                      (size_t) APIKEY_UUID_TEXT_LEN, id,
                      apikey_result_name(ctx->verdict.result));

    } else {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "apikey: request rejected, key %s",
                      apikey_result_name(ctx->verdict.result));
    }

    /* once, even if an error_page location rejects again */

    if (r->headers_out.www_authenticate == NULL) {
        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        h->hash = 1;
        ngx_str_set(&h->key, "WWW-Authenticate");
        h->value = ngx_http_apikey_challenge;
        r->headers_out.www_authenticate = h;
    }

    return NGX_HTTP_UNAUTHORIZED;
}


static ngx_int_t
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

    switch (method) {
    case NGX_HTTP_GET:     return fields[0];
    case NGX_HTTP_HEAD:    return fields[1];
    case NGX_HTTP_POST:    return fields[2];
    case NGX_HTTP_PUT:     return fields[3];
    case NGX_HTTP_DELETE:  return fields[4];
    case NGX_HTTP_OPTIONS: return fields[5];
    case NGX_HTTP_PATCH:   return fields[6];
    default:               return NULL;
    }
}


/* One usage record for a request with a known key; never blocks. */

static void
ngx_http_apikey_record(ngx_http_request_t *r, ngx_http_apikey_ctx_t *ctx,
    ngx_http_apikey_loc_conf_t *alcf)
{
    ngx_str_t                  endpoint;
    ngx_time_t                *tp;
    ngx_msec_int_t             ms;
    struct sockaddr_in        *sin;
    apikey_usage_fields_t      f;
#if (NGX_HAVE_INET6)
    struct sockaddr_in6       *sin6;
#endif

    /* every field is set below: no ngx_memzero() of the struct */

    f.verdict = &ctx->verdict;

    /* the same clock and resolution as $request_time */

    tp = ngx_timeofday();
    ms = (ngx_msec_int_t) ((tp->sec - r->start_sec) * 1000
                           + (tp->msec - r->start_msec));
    f.time_us = (int64_t) r->start_sec * 1000000
                + (int64_t) r->start_msec * 1000;
    f.response_time_us = (uint64_t) ngx_max(ms, 0) * 1000;

    if (r->err_status) {
        f.status = r->err_status;

    } else if (r->headers_out.status) {
        f.status = r->headers_out.status;

    } else {
        f.status = 0;
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

    f.method = ngx_http_apikey_method_field(r->method);
    f.padded = f.method ? APIKEY_PADDED_METHOD : 0;

    if (f.method == NULL) {
        f.method = r->method_name.data;
    }

    f.method_len = r->method_name.len;

    if (alcf->endpoint_field) {
        f.endpoint = alcf->endpoint_field;
        f.endpoint_len = alcf->endpoint_field_len;
        f.padded |= APIKEY_PADDED_ENDPOINT;

    } else {
        if (ngx_http_complex_value(r, alcf->endpoint, &endpoint) != NGX_OK) {
            ngx_str_null(&endpoint);
        }

        f.endpoint = endpoint.data;
        f.endpoint_len = endpoint.len;
    }

    if (r->headers_in.user_agent) {
        f.user_agent = r->headers_in.user_agent->value.data;
        f.user_agent_len = r->headers_in.user_agent->value.len;

    } else {
        f.user_agent = NULL;
        f.user_agent_len = 0;
    }

    if (!apikey_usage_push(ngx_http_apikey_worker.usage,
                           ngx_http_apikey_worker.slot, &f))
    {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "apikey: usage ring full, record dropped");
    }
}


/*
 * The verdict for this request, computed once: by the first variable that
 * needs it (possibly in an earlier phase, e.g. limit_req) or by the access
 * handler. A verdict computed before the location was chosen (a variable
 * read at server level) is computed again in a location with another
 * apikey_header, unless an access check already acted on it.
 */

static ngx_http_apikey_ctx_t *
ngx_http_apikey_lookup(ngx_http_request_t *r)
{
    ngx_str_t                    key;
    ngx_time_t                  *tp;
    ngx_http_apikey_ctx_t       *ctx;
    ngx_http_apikey_loc_conf_t  *alcf, *prev;

    alcf = ngx_http_get_module_loc_conf(r, ngx_http_apikey_module);

    ctx = ngx_http_apikey_get_ctx(r);

    if (ctx == NULL) {
        ctx = ngx_http_apikey_create_ctx(r);
        if (ctx == NULL) {
            return NULL;
        }

    } else {
        prev = ctx->found_with;

        if (ctx->checked != NULL
            || prev == alcf
            || (prev->header_lc.len == alcf->header_lc.len
                && ngx_memcmp(prev->header_lc.data, alcf->header_lc.data,
                              alcf->header_lc.len) == 0))
        {
            return ctx;
        }
    }

    /*
     * Not all of the ctx is zeroed: apikey_verify() fills the verdict's
     * ids, scopes and name whenever the key is known, and nothing reads
     * them otherwise (the variables and the usage record check the result
     * first); the name and scope counts are read for every result.
     */

    ctx->key_header = NULL;
    ctx->bearer_header = NULL;
    ctx->extra_keys = 0;
    ctx->found_with = alcf;
    ctx->checked = NULL;
    ctx->verdict.scope_count = 0;
    ctx->verdict.name_len = 0;

    /* ids too (32 bytes): no stale pool memory can reach a usage record */
    ngx_memzero(ctx->verdict.key_id, sizeof(ctx->verdict.key_id));
    ngx_memzero(ctx->verdict.org_id, sizeof(ctx->verdict.org_id));

    ctx->verdict.result = ngx_http_apikey_find_key(r, alcf, &key, ctx);
    ctx->key_result = ctx->verdict.result;

    if (ctx->verdict.result != APIKEY_OK) {
        return ctx;
    }

    /* a newer table file: looked for once per millisecond tick at most */

    if (ngx_http_apikey_worker.table != NULL
        && ngx_http_apikey_worker.last_check != ngx_current_msec)
    {
        ngx_http_apikey_worker.last_check = ngx_current_msec;

        if (apikey_table_needs_attach(ngx_http_apikey_worker.table)) {
            ngx_http_apikey_refresh_table(r->connection->log);
        }
    }

    tp = ngx_timeofday();

    ctx->key_result = apikey_verify(ngx_http_apikey_worker.table, key.data,
                                    key.len,
                                    (int64_t) tp->sec * 1000000
                                    + (int64_t) tp->msec * 1000,
                                    &ctx->verdict);

    return ctx;
}


static ngx_http_apikey_ctx_t *
ngx_http_apikey_create_ctx(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t     *cln;
    ngx_http_apikey_ctx_t  *ctx;

    /*
     * The cleanup keeps the ctx findable across internal redirects: what
     * ngx_pool_cleanup_add() does, with one allocation for both.
     */

    cln = ngx_palloc(r->pool, sizeof(ngx_pool_cleanup_t)
                              + sizeof(ngx_http_apikey_ctx_t));
    if (cln == NULL) {
        return NULL;
    }

    ctx = (ngx_http_apikey_ctx_t *) (cln + 1);

    cln->handler = ngx_http_apikey_cleanup;
    cln->data = ctx;
    cln->next = r->pool->cleanup;
    r->pool->cleanup = cln;

    ngx_http_set_ctx(r, ctx, ngx_http_apikey_module);

    return ctx;
}


static ngx_inline ngx_http_apikey_ctx_t *
ngx_http_apikey_get_ctx(ngx_http_request_t *r)
{
    ngx_http_apikey_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_apikey_module);

    if (ctx || !r->internal) {
        return ctx;
    }

    return ngx_http_apikey_find_ctx(r);
}


/* an internal redirect cleared the module ctx: find it again */

static ngx_http_apikey_ctx_t *
ngx_http_apikey_find_ctx(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t     *cln;
    ngx_http_apikey_ctx_t  *ctx;

    for (cln = r->pool->cleanup; cln; cln = cln->next) {
        if (cln->handler == ngx_http_apikey_cleanup) {
            ctx = cln->data;
            ngx_http_set_ctx(r, ctx, ngx_http_apikey_module);
            return ctx;
        }
    }

    return NULL;
}


static void
ngx_http_apikey_cleanup(void *data)
{
    /* nothing to free: the handler only marks the ctx's cleanup entry */
}


/*
 * Finds the key in the configured header or in "Authorization: Bearer".
 * Returns APIKEY_OK with the key, APIKEY_MISSING, or APIKEY_MALFORMED when
 * the request carries more than one key (or two different ones). Empty
 * headers count as absent. Remembers the headers (or that the key header
 * is repeated), to hide them all.
 */

static ngx_int_t
ngx_http_apikey_find_key(ngx_http_request_t *r,
    ngx_http_apikey_loc_conf_t *alcf, ngx_str_t *key,
    ngx_http_apikey_ctx_t *ctx)
{
    ngx_str_t          bearer;
    ngx_uint_t         i;
    ngx_list_part_t   *part;
    ngx_table_elt_t   *h;

    ngx_str_null(key);

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].value.len == 0
            || !ngx_http_apikey_is_key_header(&h[i], alcf))
        {
            continue;
        }

        if (ctx->key_header) {
            ctx->extra_keys = 1;
            continue;
        }

        *key = h[i].value;
        ctx->key_header = &h[i];
    }

    if (r->headers_in.authorization != NULL
        && ngx_http_apikey_bearer(r->headers_in.authorization, &bearer)
           == NGX_OK
        && bearer.len > 0)
    {
        ctx->bearer_header = r->headers_in.authorization;

        if (ctx->key_header == NULL) {
            *key = bearer;

        } else if (bearer.len != key->len
                   || ngx_memcmp(bearer.data, key->data, key->len) != 0)
        {
            return APIKEY_MALFORMED;
        }
    }

    if (ctx->extra_keys) {
        return APIKEY_MALFORMED;
    }

    if (key->len == 0) {
        return APIKEY_MISSING;
    }

    return APIKEY_OK;
}


/* Named as alcf's apikey_header (case-insensitive), whatever its value. */

static ngx_inline ngx_uint_t
ngx_http_apikey_is_key_header(ngx_table_elt_t *h,
    ngx_http_apikey_loc_conf_t *alcf)
{
    if ((h->hash != alcf->header_hash && alcf->header_hash != 0)
        || h->key.len != alcf->header_lc.len)
    {
        return 0;
    }

    /* nginx sets lowcase_key; a third-party module might not */

    if (h->lowcase_key != NULL) {
        return ngx_memcmp(h->lowcase_key, alcf->header_lc.data,
                          alcf->header_lc.len) == 0;
    }

    return ngx_strncasecmp(h->key.data, alcf->header_lc.data,
                           alcf->header_lc.len) == 0;
}


static ngx_int_t
ngx_http_apikey_bearer(ngx_table_elt_t *h, ngx_str_t *key)
{
    u_char  *p, *last;

    p = h->value.data;
    last = p + h->value.len;

    if (h->value.len < sizeof("Bearer ") - 1
        || ngx_strncasecmp(p, (u_char *) "Bearer", sizeof("Bearer") - 1)
           != 0
        || (p[6] != ' ' && p[6] != '\t'))
    {
        return NGX_DECLINED;
    }

    p += sizeof("Bearer") - 1;

    while (p < last && (*p == ' ' || *p == '\t')) {
        p++;
    }

    while (last > p && (last[-1] == ' ' || last[-1] == '\t')) {
        last--;
    }

    key->data = p;
    key->len = last - p;

    return NGX_OK;
}


/*
 * Removes the key headers (every one, if the key header was repeated) from
 * the request headers that upstreams see. Elements cannot be unlinked in
 * place (other pointers, such as r->headers_in.host, point into the list),
 * so the list is rebuilt as one part without them, copying the runs between
 * them; the old elements stay valid in the request pool. When the key
 * header came last, the part is only shortened.
 */

static ngx_int_t
ngx_http_apikey_hide(ngx_http_request_t *r, ngx_http_apikey_ctx_t *ctx)
{
    ngx_uint_t        i, n, start;
    ngx_list_t       *list;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h, *elts, *d, *key;

    list = &r->headers_in.headers;

    if (ctx->bearer_header != NULL) {
        r->headers_in.authorization = NULL;
    }

    key = ctx->key_header ? ctx->key_header : ctx->bearer_header;
    h = list->part.elts;
    n = list->part.nelts;

    if (list->part.next == NULL
        && (ctx->key_header == NULL || ctx->bearer_header == NULL)
        && !ctx->extra_keys
        && key >= h && key < h + n)
    {
        /* one part, one key header: the usual request */

        i = key - h;

        if (i < n - 1) {
            elts = ngx_palloc(r->pool, (n - 1) * sizeof(ngx_table_elt_t));
            if (elts == NULL) {
                return NGX_ERROR;
            }

            ngx_memcpy(elts, h, i * sizeof(ngx_table_elt_t));
            ngx_memcpy(&elts[i], &h[i + 1],
                       (n - 1 - i) * sizeof(ngx_table_elt_t));

            list->part.elts = elts;
            list->nalloc = n - 1;
        }

        list->part.nelts = n - 1;
        ctx->key_header = NULL;
        ctx->bearer_header = NULL;
        return NGX_OK;
    }

    n = 0;
    for (part = &list->part; part; part = part->next) {
        n += part->nelts;
    }

    elts = ngx_palloc(r->pool, (n ? n : 1) * sizeof(ngx_table_elt_t));
    if (elts == NULL) {
        return NGX_ERROR;
    }

    d = elts;

    for (part = &list->part; part; part = part->next) {
        h = part->elts;
        start = 0;

        for (i = 0; i < part->nelts; i++) {
            if (&h[i] != ctx->key_header && &h[i] != ctx->bearer_header
                && !(ctx->extra_keys
                     && ngx_http_apikey_is_key_header(&h[i], ctx->found_with)))
            {
                continue;
            }

            ngx_memcpy(d, &h[start], (i - start) * sizeof(ngx_table_elt_t));
            d += i - start;
            start = i + 1;
        }

        ngx_memcpy(d, &h[start],
                   (part->nelts - start) * sizeof(ngx_table_elt_t));
        d += part->nelts - start;
    }

    list->part.elts = elts;
    list->part.nelts = d - elts;
    list->part.next = NULL;
    list->last = &list->part;
    list->nalloc = n ? n : 1;

    ctx->key_header = NULL;
    ctx->bearer_header = NULL;
    ctx->extra_keys = 0;

    return NGX_OK;
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
           < NGX_HTTP_APIKEY_ATTACH_INTERVAL)
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


/*
 * (Re)maps the key table: at the first request, when apikeyd replaced the
 * file, or while none is readable -- at most once a second, so a missing
 * daemon costs no syscalls per request.
 */

static void
ngx_http_apikey_refresh_table(ngx_log_t *log)
{
    u_char                       err[256];
    ngx_http_apikey_main_conf_t  *amcf;

    if (ngx_http_apikey_worker.table == NULL) {
        return;
    }

    if (ngx_http_apikey_worker.attach_tried
        && ngx_current_msec - ngx_http_apikey_worker.last_attach
           < NGX_HTTP_APIKEY_ATTACH_INTERVAL)
    {
        return;
    }

    ngx_http_apikey_worker.attach_tried = 1;
    ngx_http_apikey_worker.last_attach = ngx_current_msec;

    amcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                               ngx_http_apikey_module);

    if (amcf == NULL || amcf->keys_path.len == 0) {
        return;
    }

    if (apikey_table_attach(ngx_http_apikey_worker.table,
                            (char *) amcf->keys_path.data, (char *) err,
                            sizeof(err))
        != 0)
    {
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "apikey: key table \"%V\" not readable: %s",
                      &amcf->keys_path, err);
        return;
    }

    ngx_log_error(NGX_LOG_NOTICE, log, 0,
                  "apikey: key table \"%V\" mapped", &amcf->keys_path);
}


static ngx_int_t
ngx_http_apikey_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_apikey_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_apikey_uuid_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char                 *p;
    ngx_http_apikey_ctx_t  *ctx;

    ctx = ngx_http_apikey_lookup(r);
    if (ctx == NULL) {
        return NGX_ERROR;
    }

    if (ctx->verdict.result == APIKEY_MISSING
        || ctx->verdict.result == APIKEY_MALFORMED
        || ctx->verdict.result == APIKEY_UNKNOWN
        || ctx->verdict.result == APIKEY_UNAVAILABLE)
    {
        v->not_found = 1;
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, APIKEY_UUID_TEXT_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    apikey_uuid_format((u_char *) &ctx->verdict + data, p);

    v->len = APIKEY_UUID_TEXT_LEN;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;
    v->data = p;

    return NGX_OK;
}


static ngx_int_t
ngx_http_apikey_name_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_apikey_ctx_t  *ctx;

    ctx = ngx_http_apikey_lookup(r);
    if (ctx == NULL) {
        return NGX_ERROR;
    }

    if (ctx->verdict.name_len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->len = ctx->verdict.name_len;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;
    v->data = (u_char *) ctx->verdict.name;

    return NGX_OK;
}


static ngx_int_t
ngx_http_apikey_result_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    const char             *name;
    ngx_http_apikey_ctx_t  *ctx;

    ctx = ngx_http_apikey_lookup(r);
    if (ctx == NULL) {
        return NGX_ERROR;
    }

    name = apikey_result_name(ctx->verdict.result);

    v->len = ngx_strlen(name);
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
    v->data = (u_char *) name;

    return NGX_OK;
}


static void *
ngx_http_apikey_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_apikey_main_conf_t  *amcf;

    amcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_apikey_main_conf_t));
    if (amcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     amcf->keys_path = { 0, NULL };
     *     amcf->usage_path = { 0, NULL };
     */

    amcf->usage_size = NGX_CONF_UNSET_SIZE;

    return amcf;
}


static char *
ngx_http_apikey_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_apikey_main_conf_t  *amcf = conf;

    ngx_conf_init_size_value(amcf->usage_size,
                             NGX_HTTP_APIKEY_DEFAULT_USAGE_SIZE);

    return NGX_CONF_OK;
}


static void *
ngx_http_apikey_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_apikey_loc_conf_t  *alcf;

    alcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_apikey_loc_conf_t));
    if (alcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     alcf->header = { 0, NULL };
     *     alcf->scopes = NULL;
     *     alcf->endpoint = NULL;
     */

    alcf->enable = NGX_CONF_UNSET;
    alcf->capture = NGX_CONF_UNSET;
    alcf->hide_key = NGX_CONF_UNSET;

    return alcf;
}


/*
 * The endpoint label as the record field will hold it, unless it has
 * variables: the location's name by default (the same clcf the request
 * will have, since both come from this location's loc_conf).
 */

static ngx_int_t
ngx_http_apikey_prepare_endpoint(ngx_conf_t *cf,
    ngx_http_apikey_loc_conf_t *conf)
{
    ngx_str_t                  label;
    ngx_http_core_loc_conf_t  *clcf;

    if (conf->endpoint == NULL) {
        clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
        label = clcf->name;

    } else if (conf->endpoint->lengths == NULL) {
        label = conf->endpoint->value;

    } else {
        return NGX_OK;
    }

    conf->endpoint_field = ngx_palloc(cf->pool, APIKEY_ENDPOINT_FIELD_LEN);
    if (conf->endpoint_field == NULL) {
        return NGX_ERROR;
    }

    conf->endpoint_field_len = apikey_usage_pad_text(conf->endpoint_field,
                                                     APIKEY_ENDPOINT_FIELD_LEN,
                                                     label.data, label.len);
    return NGX_OK;
}


static char *
ngx_http_apikey_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_apikey_loc_conf_t  *prev = parent;
    ngx_http_apikey_loc_conf_t  *conf = child;

    ngx_http_apikey_main_conf_t  *amcf;

    ngx_conf_merge_value(conf->enable, prev->enable, 0);
    ngx_conf_merge_value(conf->capture, prev->capture, 1);
    ngx_conf_merge_value(conf->hide_key, prev->hide_key, 1);
    ngx_conf_merge_str_value(conf->header, prev->header, "X-API-Key");

    conf->header_lc.len = conf->header.len;
    conf->header_lc.data = ngx_pnalloc(cf->pool, conf->header.len);
    if (conf->header_lc.data == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_strlow(conf->header_lc.data, conf->header.data, conf->header.len);

    /*
     * nginx hashes each request header name as it parses it (h->hash), so
     * one comparison skips most headers; a name with "_" is hashed only
     * with underscores_in_headers on, so such names are compared in full.
     */

    conf->header_hash = ngx_strlchr(conf->header_lc.data,
                                    conf->header_lc.data + conf->header_lc.len,
                                    '_')
                        ? 0
                        : ngx_hash_key(conf->header_lc.data,
                                       conf->header_lc.len);

    if (ngx_http_apikey_prepare_endpoint(cf, conf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (conf->enable) {
        amcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_apikey_module);

        if (amcf->keys_path.len == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"apikey on\" requires \"apikey_keys\" "
                               "in the http block");
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_apikey_keys(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_apikey_main_conf_t  *amcf = conf;

    ngx_str_t  *value;

    if (amcf->keys_path.data) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (value[1].len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid apikey_keys path \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    amcf->keys_path = value[1];

    /* a NUL-terminated absolute path, as the core's open() wants */

    if (ngx_conf_full_name(cf->cycle, &amcf->keys_path, 0) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/*
 * apikey_usage PATH [size=64m];   (http)
 * apikey_usage off;               (http, server, location)
 */

static char *
ngx_http_apikey_usage(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_apikey_loc_conf_t  *alcf = conf;

    ssize_t                       size;
    ngx_str_t                    *value, s;
    ngx_http_apikey_main_conf_t  *amcf;

    value = cf->args->elts;

    if (cf->args->nelts == 2 && ngx_strcmp(value[1].data, "off") == 0) {
        if (alcf->capture != NGX_CONF_UNSET) {
            return "is duplicate";
        }

        alcf->capture = 0;
        return NGX_CONF_OK;
    }

    if (cf->cmd_type != NGX_HTTP_MAIN_CONF) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid apikey_usage value \"%V\": only "
                           "\"off\" is allowed here; the segment path is "
                           "set in the http block", &value[1]);
        return NGX_CONF_ERROR;
    }

    amcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_apikey_module);

    if (amcf->usage_path.data) {
        return "is duplicate";
    }

    if (value[1].len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid apikey_usage path \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    amcf->usage_path = value[1];

    if (ngx_conf_full_name(cf->cycle, &amcf->usage_path, 0) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (cf->args->nelts == 2) {
        return NGX_CONF_OK;
    }

    if (ngx_strncmp(value[2].data, "size=", 5) != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid apikey_usage parameter \"%V\"",
                           &value[2]);
        return NGX_CONF_ERROR;
    }

    s.len = value[2].len - 5;
    s.data = value[2].data + 5;

    size = ngx_parse_size(&s);

    if (size == NGX_ERROR || size < NGX_HTTP_APIKEY_MIN_USAGE_SIZE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid apikey_usage size \"%V\": at least 1m",
                           &value[2]);
        return NGX_CONF_ERROR;
    }

    amcf->usage_size = size;

    return NGX_CONF_OK;
}


static char *
ngx_http_apikey_header(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_apikey_loc_conf_t  *alcf = conf;

    u_char     *p;
    ngx_str_t  *value;

    if (alcf->header.data) {
        return "is duplicate";
    }

    value = cf->args->elts;

    /* an HTTP token: what a request header name can be */

    for (p = value[1].data; p < value[1].data + value[1].len; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')
              || (*p >= '0' && *p <= '9') || *p == '-' || *p == '_'))
        {
            break;
        }
    }

    if (value[1].len == 0 || p != value[1].data + value[1].len
        || (value[1].len == sizeof("Authorization") - 1
            && ngx_strncasecmp(value[1].data, (u_char *) "Authorization",
                               value[1].len) == 0))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid apikey_header name \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    alcf->header = value[1];

    return NGX_CONF_OK;
}


static char *
ngx_http_apikey_scope(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_apikey_loc_conf_t  *alcf = conf;

    uint64_t    *hash;
    ngx_str_t   *value;
    ngx_uint_t   i;

    if (alcf->scopes != NULL) {
        return "is duplicate";
    }

    if (cf->args->nelts - 1 > APIKEY_MAX_SCOPES) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "too many scopes in apikey_scope: at most %d",
                           APIKEY_MAX_SCOPES);
        return NGX_CONF_ERROR;
    }

    alcf->scopes = ngx_array_create(cf->pool, cf->args->nelts - 1,
                                    sizeof(uint64_t));
    if (alcf->scopes == NULL) {
        return NGX_CONF_ERROR;
    }

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {

        /* the syntax apikeyctl accepts: [a-z0-9][a-z0-9:._-]{0,63} */

        if (!apikey_scope_is_valid(value[i].data, value[i].len)) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid apikey_scope scope \"%V\"",
                               &value[i]);
            return NGX_CONF_ERROR;
        }

        hash = ngx_array_push(alcf->scopes);
        if (hash == NULL) {
            return NGX_CONF_ERROR;
        }

        *hash = apikey_scope_hash(value[i].data, value[i].len);
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_apikey_init(ngx_conf_t *cf)
{
    ngx_http_handler_pt        *h;
    ngx_http_core_main_conf_t  *cmcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_ACCESS_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_apikey_handler;

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_LOG_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_apikey_log_handler;

    return NGX_OK;
}


/*
 * In the master, at every configuration load: map the usage segment so
 * that workers inherit the mapping. "nginx -t" and "nginx -s" never touch a
 * live segment.
 */

static ngx_int_t
ngx_http_apikey_init_module(ngx_cycle_t *cycle)
{
    int                           created;
    u_char                        err[256];
    ngx_uint_t                    slots;
    ngx_core_conf_t              *ccf;
    ngx_pool_cleanup_t           *cln;
    ngx_http_apikey_main_conf_t  *amcf;

    if (ngx_http_apikey_redact_error_logs(cycle) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_test_config || ngx_process == NGX_PROCESS_SIGNALLER) {
        return NGX_OK;
    }

    amcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_apikey_module);

    if (amcf == NULL || amcf->usage_path.len == 0) {
        return NGX_OK;
    }

    ccf = (ngx_core_conf_t *) ngx_get_conf(cycle->conf_ctx, ngx_core_module);

    slots = ngx_max(NGX_HTTP_APIKEY_MIN_SLOTS,
                    NGX_HTTP_APIKEY_SLOTS_PER_WORKER
                    * (ngx_uint_t) ccf->worker_processes);

    amcf->usage = apikey_usage_open((char *) amcf->usage_path.data,
                                    amcf->usage_size, (unsigned) slots,
                                    &created, (char *) err, sizeof(err));
    if (amcf->usage == NULL) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "apikey_usage \"%V\": %s", &amcf->usage_path, err);
        return NGX_ERROR;
    }

    cln = ngx_pool_cleanup_add(cycle->pool, 0);
    if (cln == NULL) {
        apikey_usage_close(amcf->usage);
        amcf->usage = NULL;
        return NGX_ERROR;
    }

    cln->handler = ngx_http_apikey_close_usage;
    cln->data = amcf->usage;

    ngx_log_error(NGX_LOG_NOTICE, cycle->log, 0,
                  "apikey: %s usage segment \"%V\": %ui rings of %uL "
                  "records", created ? "created" : "reusing",
                  &amcf->usage_path, slots,
                  apikey_usage_ring_capacity(amcf->usage));

    return NGX_OK;
}


static void
ngx_http_apikey_close_usage(void *data)
{
    apikey_usage_close(data);
}


static ngx_int_t
ngx_http_apikey_init_process(ngx_cycle_t *cycle)
{
    ngx_http_apikey_main_conf_t  *amcf;

    amcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_apikey_module);

    if (amcf == NULL) {
        return NGX_OK;
    }

    if (amcf->usage != NULL) {
        ngx_http_apikey_worker.usage = amcf->usage;
        ngx_http_apikey_claim_slot(cycle->log);
    }

    if (amcf->keys_path.len == 0) {
        return NGX_OK;
    }

    ngx_http_apikey_worker.table = apikey_table_new();
    if (ngx_http_apikey_worker.table == NULL) {
        return NGX_ERROR;
    }

    /* a missing table is not fatal: requests get 503 until apikeyd runs */

    ngx_http_apikey_refresh_table(cycle->log);

    return NGX_OK;
}


static void
ngx_http_apikey_exit_process(ngx_cycle_t *cycle)
{
    /* the ring's records stay for apikeyd; it frees the slot once drained */

    if (ngx_http_apikey_worker.usage && ngx_http_apikey_worker.slot >= 0) {
        apikey_usage_retire(ngx_http_apikey_worker.usage,
                            ngx_http_apikey_worker.slot);
        ngx_http_apikey_worker.slot = -1;
    }

    apikey_table_free(ngx_http_apikey_worker.table);
    ngx_http_apikey_worker.table = NULL;
}
