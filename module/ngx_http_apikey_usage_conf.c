
/*
 * The usage directives: apikey_usage (the segment's path, its size= and
 * aggregate= parameters, or off) and apikey_usage_raw (which requests also
 * leave a raw record). Their checks are long; the rest of the
 * configuration is in ngx_http_apikey_module.c.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_apikey.h"


#define NGX_HTTP_APIKEY_MIN_USAGE_SIZE      (1024 * 1024)


static char *ngx_http_apikey_usage_param(ngx_conf_t *cf,
    ngx_http_apikey_main_conf_t *amcf, ngx_str_t *param);


/*
 * apikey_usage_raw all | errors | sample=N | off;   (http, server, location)
 *
 * Which requests with a known key also leave a raw record (api_key_usage
 * rows); the others are counted as kept out by the policy.
 */

char *
ngx_http_apikey_usage_raw(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_apikey_loc_conf_t  *alcf = conf;

    ngx_int_t   n;
    ngx_str_t  *value;

    if (alcf->raw_policy != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "all") == 0) {
        alcf->raw_policy = APIKEY_RAW_ALL;

    } else if (ngx_strcmp(value[1].data, "errors") == 0) {
        alcf->raw_policy = APIKEY_RAW_ERRORS;

    } else if (ngx_strcmp(value[1].data, "off") == 0) {
        alcf->raw_policy = APIKEY_RAW_OFF;

    } else if (value[1].len > 7
               && ngx_strncmp(value[1].data, "sample=", 7) == 0)
    {
        n = ngx_atoi(value[1].data + 7, value[1].len - 7);

        if (n < 1 || n > APIKEY_RAW_MAX_SAMPLE) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid apikey_usage_raw \"%V\": sample=N "
                               "takes N from 1 to %d", &value[1],
                               APIKEY_RAW_MAX_SAMPLE);
            return NGX_CONF_ERROR;
        }

        alcf->raw_policy = APIKEY_RAW_SAMPLE;
        alcf->raw_sample = (ngx_uint_t) n;

    } else {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid apikey_usage_raw \"%V\": all, errors, "
                           "sample=N or off", &value[1]);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/*
 * apikey_usage PATH [size=64m] [aggregate=65536];   (http)
 * apikey_usage off;                                 (http, server, location)
 */

char *
ngx_http_apikey_usage(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_apikey_loc_conf_t  *alcf = conf;

    char                         *rv;
    ngx_str_t                    *value;
    ngx_uint_t                    i;
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

    for (i = 2; i < cf->args->nelts; i++) {
        rv = ngx_http_apikey_usage_param(cf, amcf, &value[i]);
        if (rv != NGX_CONF_OK) {
            return rv;
        }
    }

    return NGX_CONF_OK;
}


/* size=SIZE (the rings' share) or aggregate=N (entries per buffer) */

static char *
ngx_http_apikey_usage_param(ngx_conf_t *cf, ngx_http_apikey_main_conf_t *amcf,
    ngx_str_t *param)
{
    ssize_t    size;
    ngx_int_t  n;
    ngx_str_t  s;

    if (param->len >= 5 && ngx_strncmp(param->data, "size=", 5) == 0) {
        if (amcf->usage_size != NGX_CONF_UNSET_SIZE) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "duplicate apikey_usage parameter \"%V\"",
                               param);
            return NGX_CONF_ERROR;
        }

        s.len = param->len - 5;
        s.data = param->data + 5;

        size = ngx_parse_size(&s);

        if (size == NGX_ERROR || size < NGX_HTTP_APIKEY_MIN_USAGE_SIZE) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid apikey_usage size \"%V\": at least 1m",
                               param);
            return NGX_CONF_ERROR;
        }

        amcf->usage_size = size;
        return NGX_CONF_OK;
    }

    if (param->len >= 10
        && ngx_strncmp(param->data, "aggregate=", 10) == 0)
    {
        if (amcf->usage_aggregate != NGX_CONF_UNSET_UINT) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "duplicate apikey_usage parameter \"%V\"",
                               param);
            return NGX_CONF_ERROR;
        }

        n = ngx_atoi(param->data + 10, param->len - 10);

        if (n < APIKEY_AGGREGATE_MIN || n > APIKEY_AGGREGATE_MAX) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid apikey_usage aggregate \"%V\": "
                               "entries per buffer, from %d to %d", param,
                               APIKEY_AGGREGATE_MIN, APIKEY_AGGREGATE_MAX);
            return NGX_CONF_ERROR;
        }

        amcf->usage_aggregate = (ngx_uint_t) n;
        return NGX_CONF_OK;
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid apikey_usage parameter \"%V\"", param);
    return NGX_CONF_ERROR;
}
