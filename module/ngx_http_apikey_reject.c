
/*
 * The answer to a request the access phase rejects: 503 while no key table
 * can decide, 403 for a key without a required scope, otherwise 401 with
 * the "WWW-Authenticate: ApiKey" challenge; each logged at info level by
 * the key's id (never the key) or the result's name.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_apikey.h"


static ngx_str_t  ngx_http_apikey_challenge = ngx_string("ApiKey");


/* table: the worker's key table (NULL: none), for the 503's reason */

ngx_int_t
ngx_http_apikey_reject(ngx_http_request_t *r, ngx_http_apikey_ctx_t *ctx,
    apikey_table_t *table)
{
    u_char            id[APIKEY_UUID_TEXT_LEN];
    ngx_table_elt_t  *h;

    if (ctx->verdict.result == APIKEY_UNAVAILABLE) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "apikey: %s, rejecting request with 503",
                      table != NULL && apikey_table_ready(table)
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
