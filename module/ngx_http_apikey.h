
/*
 * ngx_http_apikey_module's private header: the configuration and request
 * structs its files share, and the functions one file calls in another.
 *
 *   ngx_http_apikey_module.c     directives, configuration, process hooks
 *   ngx_http_apikey_access.c     access phase: the key, the verdict, the
 *                                worker's key table
 *   ngx_http_apikey_variables.c  $apikey_* variables
 *   ngx_http_apikey_log.c        log phase: usage records and aggregates,
 *                                the worker's ring
 *   ngx_http_apikey_redact.c     keys masked in every error log
 */


#ifndef NGX_HTTP_APIKEY_H
#define NGX_HTTP_APIKEY_H


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "apikey_glue.h"
#include "raw_policy.h"


/* between retries to map the key table or to claim a ring */
#define NGX_HTTP_APIKEY_RETRY_INTERVAL  1000  /* ms */


typedef struct {
    ngx_str_t                  keys_path;
    ngx_str_t                  usage_path;
    size_t                     usage_size;   /* the rings' share */
    ngx_uint_t                 usage_aggregate; /* entries per buffer */
    apikey_usage_t            *usage;        /* mapped by the master */
} ngx_http_apikey_main_conf_t;


typedef struct {
    ngx_flag_t                 enable;
    ngx_flag_t                 capture;
    ngx_flag_t                 hide_key;
    ngx_uint_t                 raw_policy;   /* apikey_raw_policy_e */
    ngx_uint_t                 raw_sample;   /* N of sample=N */
    ngx_str_t                  header;
    ngx_str_t                  header_lc;    /* lowercase, as lowcase_key */
    ngx_uint_t                 header_hash;  /* as h->hash; 0: compare all */
    ngx_array_t               *scopes;       /* of uint64_t scope hashes */
    ngx_http_complex_value_t  *endpoint;
    u_char                    *endpoint_field;  /* as recorded, padded */
    size_t                     endpoint_field_len;
    uint64_t                   endpoint_hash;   /* of endpoint_field */
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


/* ngx_http_apikey_access.c */
ngx_int_t ngx_http_apikey_handler(ngx_http_request_t *r);
ngx_http_apikey_ctx_t *ngx_http_apikey_request_ctx(ngx_http_request_t *r);
ngx_http_apikey_ctx_t *ngx_http_apikey_find_ctx(ngx_http_request_t *r);
ngx_int_t ngx_http_apikey_open_table(ngx_cycle_t *cycle);
void ngx_http_apikey_close_table(void);

/* ngx_http_apikey_reject.c */
ngx_int_t ngx_http_apikey_reject(ngx_http_request_t *r,
    ngx_http_apikey_ctx_t *ctx, apikey_table_t *table);

/* ngx_http_apikey_variables.c */
ngx_int_t ngx_http_apikey_add_variables(ngx_conf_t *cf);

/* ngx_http_apikey_usage_conf.c: the directives' setters */
char *ngx_http_apikey_usage(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *ngx_http_apikey_usage_raw(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

/* ngx_http_apikey_log.c */
ngx_int_t ngx_http_apikey_log_handler(ngx_http_request_t *r);
void ngx_http_apikey_claim_ring(ngx_cycle_t *cycle, apikey_usage_t *usage);
void ngx_http_apikey_retire_ring(void);


extern ngx_module_t  ngx_http_apikey_module;


/*
 * The request's ctx if a lookup made one; inline, as the access and log
 * phases call it on every request. An internal redirect clears module
 * ctxs: then it is found again through its pool cleanup.
 */

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


#endif /* NGX_HTTP_APIKEY_H */
