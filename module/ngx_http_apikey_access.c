
/*
 * The access phase: finds the key in the request (and hides it from
 * upstreams), asks the core for a verdict against this worker's key table,
 * keeps it in the request ctx, and lets the request through or has it
 * answered (ngx_http_apikey_reject.c). The functions the handler calls per
 * request stay static beside it, so the compiler can inline them.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_apikey.h"


/* This worker's key table (its usage ring is in ngx_http_apikey_log.c). */

typedef struct {
    apikey_table_t            *table;
    ngx_msec_t                 last_attach;
    ngx_msec_t                 last_check;   /* for a newer table file */
    unsigned                   attach_tried:1;
} ngx_http_apikey_table_state_t;


static ngx_inline ngx_http_apikey_ctx_t *ngx_http_apikey_lookup(
    ngx_http_request_t *r, ngx_http_apikey_loc_conf_t *alcf)
    __attribute__((always_inline));
static ngx_inline ngx_http_apikey_ctx_t *ngx_http_apikey_create_ctx(
    ngx_http_request_t *r) __attribute__((always_inline));
static void ngx_http_apikey_cleanup(void *data);
static ngx_inline ngx_int_t ngx_http_apikey_find_key(ngx_http_request_t *r,
    ngx_http_apikey_loc_conf_t *alcf, ngx_str_t *key,
    ngx_http_apikey_ctx_t *ctx) __attribute__((always_inline));
static ngx_inline ngx_uint_t ngx_http_apikey_is_key_header(
    ngx_table_elt_t *h, ngx_http_apikey_loc_conf_t *alcf);
static ngx_inline ngx_uint_t ngx_http_apikey_same_bytes(u_char *a, u_char *b,
    size_t len);
static ngx_int_t ngx_http_apikey_bearer(ngx_table_elt_t *h, ngx_str_t *key);
static ngx_int_t ngx_http_apikey_hide(ngx_http_request_t *r,
    ngx_http_apikey_ctx_t *ctx);
static ngx_inline void ngx_http_apikey_copy_header(ngx_table_elt_t *dst,
    ngx_table_elt_t *src);
static void ngx_http_apikey_refresh_table(ngx_log_t *log);


static ngx_http_apikey_table_state_t  ngx_http_apikey_worker;


ngx_int_t
ngx_http_apikey_handler(ngx_http_request_t *r)
{
    ngx_http_apikey_ctx_t       *ctx;
    ngx_http_apikey_loc_conf_t  *alcf;

    alcf = ngx_http_get_module_loc_conf(r, ngx_http_apikey_module);

    if (!alcf->enable) {
        return NGX_DECLINED;
    }

    ctx = ngx_http_apikey_lookup(r, alcf);
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
        return ngx_http_apikey_reject(r, ctx, ngx_http_apikey_worker.table);
    }

    return NGX_OK;
}


/*
 * The verdict for this request, computed once: by the first variable that
 * needs it (possibly in an earlier phase, e.g. limit_req) or by the access
 * handler. A verdict computed before the location was chosen (a variable
 * read at server level) is computed again in a location with another
 * apikey_header, unless an access check already acted on it.
 *
 * Always inline, with what it calls per request: the handler runs it in
 * its own frame; ngx_http_apikey_request_ctx() is the copy for the
 * variables.
 */

static ngx_inline ngx_http_apikey_ctx_t *
ngx_http_apikey_lookup(ngx_http_request_t *r,
    ngx_http_apikey_loc_conf_t *alcf)
{
    ngx_str_t                    key;
    ngx_time_t                  *tp;
    ngx_http_apikey_ctx_t       *ctx;
    ngx_http_apikey_loc_conf_t  *prev;

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

    /*
     * The verdict's fixed fields (scope count, ids, name length) in one
     * block: no stale pool memory can reach a usage record.
     */
    ngx_memzero(&ctx->verdict, offsetof(apikey_verdict_t, scope_hashes));

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


/* The verdict for a variable: ngx_http_apikey_lookup() for other files. */

ngx_http_apikey_ctx_t *
ngx_http_apikey_request_ctx(ngx_http_request_t *r)
{
    return ngx_http_apikey_lookup(r,
               ngx_http_get_module_loc_conf(r, ngx_http_apikey_module));
}


static ngx_inline ngx_http_apikey_ctx_t *
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


/* an internal redirect cleared the module ctx: find it again */

ngx_http_apikey_ctx_t *
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

static ngx_inline ngx_int_t
ngx_http_apikey_find_key(ngx_http_request_t *r,
    ngx_http_apikey_loc_conf_t *alcf, ngx_str_t *key,
    ngx_http_apikey_ctx_t *ctx)
{
    ngx_str_t          bearer;
    ngx_list_part_t   *part;
    ngx_table_elt_t   *h, *last;

    ngx_str_null(key);

    /* walked by pointer: no index arithmetic per header */

    for (part = &r->headers_in.headers.part; part; part = part->next) {

        for (h = part->elts, last = h + part->nelts; h < last; h++) {

            if (!ngx_http_apikey_is_key_header(h, alcf)
                || h->value.len == 0)
            {
                continue;
            }

            if (ctx->key_header) {
                ctx->extra_keys = 1;
                continue;
            }

            *key = h->value;
            ctx->key_header = h;
        }
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


/*
 * Named as alcf's apikey_header (case-insensitive), whatever its value.
 * The length first: one comparison tells most other headers apart.
 */

static ngx_inline ngx_uint_t
ngx_http_apikey_is_key_header(ngx_table_elt_t *h,
    ngx_http_apikey_loc_conf_t *alcf)
{
    if (h->key.len != alcf->header_lc.len
        || (h->hash != alcf->header_hash && alcf->header_hash != 0))
    {
        return 0;
    }

    /* nginx sets lowcase_key; a third-party module might not */

    if (h->lowcase_key != NULL) {
        return ngx_http_apikey_same_bytes(h->lowcase_key,
                                          alcf->header_lc.data,
                                          alcf->header_lc.len);
    }

    return ngx_strncasecmp(h->key.data, alcf->header_lc.data,
                           alcf->header_lc.len) == 0;
}


/*
 * ngx_memcmp() == 0 without the call for the usual header name (8 to 16
 * bytes: X-API-Key is 9): its first and last 8 bytes, overlapping.
 */

static ngx_inline ngx_uint_t
ngx_http_apikey_same_bytes(u_char *a, u_char *b, size_t len)
{
    uint64_t  a0, a1, b0, b1;

    if (len < 8 || len > 16) {
        return ngx_memcmp(a, b, len) == 0;
    }

    ngx_memcpy(&a0, a, 8);
    ngx_memcpy(&b0, b, 8);
    ngx_memcpy(&a1, a + len - 8, 8);
    ngx_memcpy(&b1, b + len - 8, 8);

    return ((a0 ^ b0) | (a1 ^ b1)) == 0;
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
 * the request headers that upstreams see. Elements cannot be moved (other
 * pointers, such as r->headers_in.host, point into the list), so the list
 * is rebuilt as one part without them, copying the runs between them; the
 * old elements stay valid. The usual request (one part, one key header)
 * needs no allocation: with the key header last the part is shortened,
 * first or second it starts one element later (the first header's copy
 * taking the key header's element), otherwise the copy goes to the part's
 * unused elements when they suffice. Either way the list's nalloc is what
 * the new part can hold, so a module that pushes a header later writes
 * into memory of its own.
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

        /* compared as pointers: no division by the element size */

        if (key == h + n - 1) {
            /* last: the part is only shortened */

        } else if (key <= h + 1) {
            if (key == h + 1) {
                ngx_http_apikey_copy_header(&h[1], &h[0]);
            }

            list->part.elts = h + 1;
            list->nalloc--;

        } else {
            i = key - h;

            if (list->nalloc >= 2 * n - 1) {
                elts = h + n;
                list->nalloc -= n;

            } else {
                elts = ngx_palloc(r->pool, (n - 1) * sizeof(ngx_table_elt_t));
                if (elts == NULL) {
                    return NGX_ERROR;
                }

                list->nalloc = n - 1;
            }

            ngx_memcpy(elts, h, i * sizeof(ngx_table_elt_t));
            ngx_memcpy(&elts[i], &h[i + 1],
                       (n - 1 - i) * sizeof(ngx_table_elt_t));

            list->part.elts = elts;
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
 * One header element, in 16-byte pieces and a rest: GCC compiles a struct
 * assignment (or one memcpy) of that size in a block it thinks seldom runs
 * as "rep movs" of 4-byte words, which runs 12 or 14 times.
 */

static ngx_inline void
ngx_http_apikey_copy_header(ngx_table_elt_t *dst, ngx_table_elt_t *src)
{
    u_char  *d, *s;

    d = (u_char *) dst;
    s = (u_char *) src;

    ngx_memcpy(d, s, 16);
    ngx_memcpy(d + 16, s + 16, 16);
    ngx_memcpy(d + 32, s + 32, sizeof(ngx_table_elt_t) - 32);
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
           < NGX_HTTP_APIKEY_RETRY_INTERVAL)
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


/* At worker start: the key table, mapped at once if apikeyd published it. */

ngx_int_t
ngx_http_apikey_open_table(ngx_cycle_t *cycle)
{
    ngx_http_apikey_worker.table = apikey_table_new();
    if (ngx_http_apikey_worker.table == NULL) {
        return NGX_ERROR;
    }

    /* a missing table is not fatal: requests get 503 until apikeyd runs */

    ngx_http_apikey_refresh_table(cycle->log);

    return NGX_OK;
}


void
ngx_http_apikey_close_table(void)
{
    apikey_table_free(ngx_http_apikey_worker.table);
    ngx_http_apikey_worker.table = NULL;
}
