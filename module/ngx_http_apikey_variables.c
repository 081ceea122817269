
/*
 * $apikey_id, $apikey_org, $apikey_name and $apikey_result: the request's
 * verdict, looked up at first use in any phase (e.g. in limit_req, before
 * the access phase).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_apikey.h"


static ngx_int_t ngx_http_apikey_uuid_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_apikey_name_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_apikey_result_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);


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


ngx_int_t
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

    ctx = ngx_http_apikey_request_ctx(r);
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

    ctx = ngx_http_apikey_request_ctx(r);
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

    ctx = ngx_http_apikey_request_ctx(r);
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