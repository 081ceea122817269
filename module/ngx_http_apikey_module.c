
/*
 * ngx_http_apikey_module: API-key authentication against a shared-memory key
 * table published by apikeyd, and per-request usage capture.
 *
 * The shim only translates between nginx and the C++ core (apikey_glue.h).
 * This file holds the directives, the configuration and the process hooks
 * (the usage directives' setters are in ngx_http_apikey_usage_conf.c);
 * ngx_http_apikey.h lists the others.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_apikey.h"
#include "ngx_http_apikey_redact.h"


#define NGX_HTTP_APIKEY_DEFAULT_USAGE_SIZE  (64 * 1024 * 1024)
#define NGX_HTTP_APIKEY_SLOTS_PER_WORKER    4     /* old + new during reloads */
#define NGX_HTTP_APIKEY_MIN_SLOTS           8


static void *ngx_http_apikey_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_apikey_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_http_apikey_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_apikey_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static ngx_int_t ngx_http_apikey_prepare_endpoint(ngx_conf_t *cf,
    ngx_http_apikey_loc_conf_t *conf);
static char *ngx_http_apikey_keys(ngx_conf_t *cf, ngx_command_t *cmd,
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
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE123,
      ngx_http_apikey_usage,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("apikey_usage_raw"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_apikey_usage_raw,
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
    amcf->usage_aggregate = NGX_CONF_UNSET_UINT;

    return amcf;
}


static char *
ngx_http_apikey_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_apikey_main_conf_t  *amcf = conf;

    ngx_conf_init_size_value(amcf->usage_size,
                             NGX_HTTP_APIKEY_DEFAULT_USAGE_SIZE);
    ngx_conf_init_uint_value(amcf->usage_aggregate, APIKEY_AGGREGATE_DEFAULT);

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
    alcf->raw_policy = NGX_CONF_UNSET_UINT;
    alcf->raw_sample = NGX_CONF_UNSET_UINT;

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

    /* what the aggregation looks the label up by, once and for all */

    conf->endpoint_hash = apikey_usage_label_hash(conf->endpoint_field,
                                                  conf->endpoint_field_len);
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
    ngx_conf_merge_uint_value(conf->raw_policy, prev->raw_policy,
                              APIKEY_RAW_ALL);
    ngx_conf_merge_uint_value(conf->raw_sample, prev->raw_sample, 1);
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
                                    (unsigned) amcf->usage_aggregate,
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
                  "apikey: %s usage segment \"%V\": %ui streams over "
                  "%uL chunks of 64k, aggregates of %ui entries, %uL bytes",
                  created ? "created" : "reusing",
                  &amcf->usage_path, slots,
                  apikey_usage_chunk_count(amcf->usage),
                  amcf->usage_aggregate,
                  apikey_usage_file_size(amcf->usage));

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
        ngx_http_apikey_claim_ring(cycle, amcf->usage);
    }

    if (amcf->keys_path.len == 0) {
        return NGX_OK;
    }

    return ngx_http_apikey_open_table(cycle);
}


static void
ngx_http_apikey_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_apikey_retire_ring();
    ngx_http_apikey_close_table();
}
