
/*
 * Error-log redaction: keys never reach an error log, at any level.
 */


#ifndef NGX_HTTP_APIKEY_REDACT_H
#define NGX_HTTP_APIKEY_REDACT_H


#include <ngx_config.h>
#include <ngx_core.h>


ngx_int_t ngx_http_apikey_redact_error_logs(ngx_cycle_t *cycle);


#endif /* NGX_HTTP_APIKEY_REDACT_H */
