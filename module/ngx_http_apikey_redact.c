
/*
 * Error-log redaction. nginx itself writes every request header into the
 * error log at debug level ("http header: ...") and the request line into
 * many messages; a key must not reach a log at any level. Every error log of
 * the cycle and of the http configuration (main, server, location,
 * limit_except, and the listening sockets' copies) gets a writer that masks
 * key-shaped tokens (apikey_redact_keys) before the message is written as
 * nginx would write it, or handed to the log's own writer (syslog, memory).
 *
 * Not covered: an error_log directive inside an "if" block (nginx keeps no
 * reference to those locations after configuration).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "apikey_glue.h"
#include "ngx_http_apikey_redact.h"


typedef struct {
    ngx_log_writer_pt   writer;     /* the log's own writer, or NULL */
    void               *wdata;
} ngx_http_apikey_redact_t;


static void ngx_http_apikey_redact_writer(ngx_log_t *log, ngx_uint_t level,
    u_char *buf, size_t len);
static ngx_int_t ngx_http_apikey_redact_chain(ngx_pool_t *pool,
    ngx_log_t *log);
static ngx_int_t ngx_http_apikey_redact_location(ngx_pool_t *pool,
    ngx_http_core_loc_conf_t *clcf);
static ngx_int_t ngx_http_apikey_redact_tree(ngx_pool_t *pool,
    ngx_http_location_tree_node_t *node);


ngx_int_t
ngx_http_apikey_redact_error_logs(ngx_cycle_t *cycle)
{
    ngx_uint_t                  s, i;
    ngx_listening_t            *ls;
    ngx_http_core_srv_conf_t  **cscfp;
    ngx_http_core_loc_conf_t  **named;
    ngx_http_core_main_conf_t  *cmcf;

    if (ngx_http_apikey_redact_chain(cycle->pool, &cycle->new_log) != NGX_OK) {
        return NGX_ERROR;
    }

    /* accepted connections start from a copy of their listening's log */
    ls = cycle->listening.elts;
    for (i = 0; i < cycle->listening.nelts; i++) {
        if (ngx_http_apikey_redact_chain(cycle->pool, &ls[i].log) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    cmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_core_module);
    if (cmcf == NULL) {
        return NGX_OK;
    }

    cscfp = cmcf->servers.elts;
    for (s = 0; s < cmcf->servers.nelts; s++) {

        if (ngx_http_apikey_redact_location(cycle->pool,
                cscfp[s]->ctx->loc_conf[ngx_http_core_module.ctx_index])
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        for (named = cscfp[s]->named_locations; named && *named; named++) {
            if (ngx_http_apikey_redact_location(cycle->pool, *named)
                != NGX_OK)
            {
                return NGX_ERROR;
            }
        }
    }

    return NGX_OK;
}


static void
ngx_http_apikey_redact_writer(ngx_log_t *log, ngx_uint_t level, u_char *buf,
    size_t len)
{
    ssize_t                    n;
    ngx_log_t                  own;
    ngx_http_apikey_redact_t  *rd;

    rd = log->wdata;

    /* ngx_log_error_core() stops a message at NGX_MAX_ERROR_STR bytes */
    apikey_redact_keys(buf, len, len >= NGX_MAX_ERROR_STR);

    if (rd->writer) {
        own = *log;
        own.writer = rd->writer;
        own.wdata = rd->wdata;
        rd->writer(&own, level, buf, len);
        return;
    }

    /* what ngx_log_error_core() does for a log without a writer */

    if (ngx_time() == log->disk_full_time) {
        return;
    }

    n = ngx_write_fd(log->file->fd, buf, len);

    if (n == -1 && ngx_errno == NGX_ENOSPC) {
        log->disk_full_time = ngx_time();
    }
}


static ngx_int_t
ngx_http_apikey_redact_chain(ngx_pool_t *pool, ngx_log_t *log)
{
    ngx_http_apikey_redact_t  *rd;

    for ( /* void */ ; log; log = log->next) {

        if (log->writer == ngx_http_apikey_redact_writer) {
            continue;        /* shared by several locations: done already */
        }

        rd = ngx_palloc(pool, sizeof(ngx_http_apikey_redact_t));
        if (rd == NULL) {
            return NGX_ERROR;
        }

        rd->writer = log->writer;
        rd->wdata = log->wdata;

        log->writer = ngx_http_apikey_redact_writer;
        log->wdata = rd;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_apikey_redact_location(ngx_pool_t *pool,
    ngx_http_core_loc_conf_t *clcf)
{
    ngx_http_core_loc_conf_t  *lecf;
#if (NGX_PCRE)
    ngx_http_core_loc_conf_t  **regex;
#endif

    if (clcf == NULL) {
        return NGX_OK;
    }

    if (ngx_http_apikey_redact_chain(pool, clcf->error_log) != NGX_OK) {
        return NGX_ERROR;
    }

    if (clcf->limit_except_loc_conf) {
        lecf = clcf->limit_except_loc_conf[ngx_http_core_module.ctx_index];
        if (lecf != clcf
            && ngx_http_apikey_redact_location(pool, lecf) != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

#if (NGX_PCRE)
    for (regex = clcf->regex_locations; regex && *regex; regex++) {
        if (ngx_http_apikey_redact_location(pool, *regex) != NGX_OK) {
            return NGX_ERROR;
        }
    }
#endif

    return ngx_http_apikey_redact_tree(pool, clcf->static_locations);
}


static ngx_int_t
ngx_http_apikey_redact_tree(ngx_pool_t *pool,
    ngx_http_location_tree_node_t *node)
{
    if (node == NULL) {
        return NGX_OK;
    }

    if (ngx_http_apikey_redact_location(pool, node->exact) != NGX_OK
        || ngx_http_apikey_redact_location(pool, node->inclusive) != NGX_OK
        || ngx_http_apikey_redact_tree(pool, node->left) != NGX_OK
        || ngx_http_apikey_redact_tree(pool, node->right) != NGX_OK
        || ngx_http_apikey_redact_tree(pool, node->tree) != NGX_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}
