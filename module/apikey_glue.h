/*
 * The C API between the nginx shim and the C++ core. Every function is
 * declared noexcept for C++ (APIKEY_NOEXCEPT) and catches inside whatever
 * could throw: nothing throws into nginx.
 */

#ifndef APIKEY_GLUE_H
#define APIKEY_GLUE_H

#include <stddef.h>
#include <stdint.h>

/* apikey_result_e and apikey_result_is_recorded(), shared with the core */
#include "auth_result.h"

#ifdef __cplusplus
#define APIKEY_NOEXCEPT  noexcept
extern "C" {
#else
#define APIKEY_NOEXCEPT
#endif

/*
 * Called from the module's C files on every request: hidden, so that the
 * call goes straight to the function rather than through the PLT.
 */
#if defined(__GNUC__)
#define APIKEY_HIDDEN  __attribute__((visibility("hidden")))
#else
#define APIKEY_HIDDEN
#endif

#define APIKEY_MAX_SCOPES    8
#define APIKEY_MAX_NAME_LEN  100
#define APIKEY_UUID_TEXT_LEN 36


/*
 * What a request learned about its key; never the key itself. The fixed
 * fields first: a remembered verdict is handed out as them plus only the
 * scope hashes and name bytes in use.
 */
typedef struct {
    apikey_result_e   result;
    unsigned          scope_count;
    unsigned char     key_id[16];
    unsigned char     org_id[16];
    size_t            name_len;
    uint64_t          scope_hashes[APIKEY_MAX_SCOPES];
    char              name[APIKEY_MAX_NAME_LEN];
} apikey_verdict_t;


typedef struct apikey_table_s  apikey_table_t;


apikey_table_t *apikey_table_new(void) APIKEY_NOEXCEPT;
void apikey_table_free(apikey_table_t *table) APIKEY_NOEXCEPT;

/*
 * Maps the key-table segment at path (read-only). Returns 0 on success;
 * otherwise writes a reason (no key material) into err.
 */
int apikey_table_attach(apikey_table_t *table, const char *path, char *err,
    size_t err_len) APIKEY_NOEXCEPT;

/* No table mapped yet, or apikeyd replaced it with a newer file. */
int apikey_table_needs_attach(const apikey_table_t *table) APIKEY_NOEXCEPT
    APIKEY_HIDDEN;

/* A table is mapped and apikeyd finished its first full load. */
int apikey_table_ready(const apikey_table_t *table) APIKEY_NOEXCEPT;

/*
 * Checks a key's format, then its hash against the table. Fills verdict
 * (ids, name, scopes) whenever the key is known, even if expired or
 * revoked, so that usage is recorded under it. A key the worker saw lately
 * skips the format check and SHA-256 (the table keeps a memo of their
 * hashes, never the keys), and, while its table slot is unchanged, the
 * lookup too: the verdict read there last is reused. Revocation and
 * expiry times are compared with now_us every time.
 */
apikey_result_e apikey_verify(apikey_table_t *table,
    const unsigned char *key, size_t len, int64_t now_us,
    apikey_verdict_t *verdict) APIKEY_NOEXCEPT APIKEY_HIDDEN;

uint64_t apikey_scope_hash(const unsigned char *scope, size_t len)
    APIKEY_NOEXCEPT;
/* 1: the scope has the syntax apikeyctl accepts (shared/scope.h). */
int apikey_scope_is_valid(const unsigned char *scope, size_t len)
    APIKEY_NOEXCEPT;

/* All of the required scopes are among the key's scopes. */
int apikey_verdict_has_scopes(const apikey_verdict_t *verdict,
    const uint64_t *required, size_t n) APIKEY_NOEXCEPT;

/* Writes exactly APIKEY_UUID_TEXT_LEN characters. */
void apikey_uuid_format(const unsigned char id[16], unsigned char *out)
    APIKEY_NOEXCEPT;

/* The name of a result, as $apikey_result shows it. */
const char *apikey_result_name(apikey_result_e result) APIKEY_NOEXCEPT;

/*
 * Masks key-shaped tokens in an error-log message in place (everything
 * after the hint becomes '*'); truncated: nginx cut the message short.
 */
void apikey_redact_keys(unsigned char *buf, size_t len, int truncated)
    APIKEY_NOEXCEPT;


/*
 * Usage capture: the usage segment's per-worker record streams (raw records,
 * as the raw policy keeps them) and aggregation areas (counters per key,
 * label and hour, of every recorded request).
 */

typedef struct apikey_usage_s  apikey_usage_t;

/*
 * Record text fields. A source flagged constant in apikey_usage_fields_t
 * (padded) was fitted to the field at configuration
 * (apikey_usage_pad_text() or a static table: a method is 16 bytes, zero
 * past its length) and never changes at that address: it is not cut again
 * per request, and the worker recognises a repeat by its address.
 */
#define APIKEY_METHOD_FIELD_LEN    16
#define APIKEY_ENDPOINT_FIELD_LEN  96

/*
 * One request, as the log phase sees it; text is copied and truncated.
 * The layout of the core's UsageFields (the glue asserts every offset), so
 * the shim fills what the core reads. result: an apikey_result_e.
 * method_constant / endpoint_constant: the text is padded (above).
 * endpoint_hash: apikey_usage_label_hash() of a padded endpoint, computed
 * at configuration (ignored unless endpoint_constant); a padded endpoint
 * never changes while the segment is mapped (configuration memory), so
 * the worker remembers its label by its address.
 */
typedef struct {
    const unsigned char     *data;
    size_t                   len;
} apikey_usage_text_t;

typedef struct {
    uint8_t                  result;
    uint8_t                  ip_family;      /* 0, 4 or 6 */
    uint16_t                 status;
    int64_t                  time_us;
    uint64_t                 response_time_us;
    uint64_t                 bytes_sent;
    const unsigned char     *key_id;         /* 16 bytes */
    const unsigned char     *org_id;         /* 16 bytes */
    const unsigned char     *ip;             /* 4 or 16 bytes */
    apikey_usage_text_t      method;
    apikey_usage_text_t      endpoint;
    apikey_usage_text_t      user_agent;
    uint8_t                  method_constant;
    uint8_t                  endpoint_constant;
    uint64_t                 endpoint_hash;
} apikey_usage_fields_t;

/* Entries per aggregation buffer: the default and the range allowed. */
#define APIKEY_AGGREGATE_DEFAULT   65536
#define APIKEY_AGGREGATE_MIN       1024
#define APIKEY_AGGREGATE_MAX       16777216

/*
 * Writes text into dst[0, cap) as a record field holds it: cut at a UTF-8
 * boundary to fit, zero-padded. Returns the length kept.
 */
size_t apikey_usage_pad_text(unsigned char *dst, size_t cap,
    const unsigned char *text, size_t len) APIKEY_NOEXCEPT;

/*
 * The hash the aggregation looks a label's endpoint up by, for a field
 * apikey_usage_pad_text() prepared (len: the length it returned).
 */
uint64_t apikey_usage_label_hash(const unsigned char *field, size_t len)
    APIKEY_NOEXCEPT;

/*
 * nginx master, at configuration load: maps the segment at path, reusing it
 * when its layout matches (reload) or creating a fresh one (mode 0600, owned
 * by the runtime directory's owner: apikeyd's user; workers inherit the
 * mapping and never open the file). *created tells which. size is the
 * rings' share; each slot adds an aggregation area of aggregate entries per
 * buffer. NULL on failure, with err (also for a file or directory that
 * fails the trust check).
 */
apikey_usage_t *apikey_usage_open(const char *path, size_t size,
    unsigned slots, unsigned aggregate, int *created, char *err,
    size_t err_len) APIKEY_NOEXCEPT;
void apikey_usage_close(apikey_usage_t *usage) APIKEY_NOEXCEPT;

/* Worker start/exit: a slot index, or -1 when none is free. */
int apikey_usage_claim(apikey_usage_t *usage, int pid, int64_t now_us)
    APIKEY_NOEXCEPT;
void apikey_usage_retire(apikey_usage_t *usage, int slot) APIKEY_NOEXCEPT;

/* What apikey_usage_log() could not do (both are counted). */
#define APIKEY_USAGE_DROPPED       1     /* raw record: chunk pool empty */
#define APIKEY_USAGE_OVERFLOW      2     /* aggregate: entry table full */

/*
 * A request with a known key: added to the worker's aggregates and, if
 * raw (the raw-event policy keeps it), one record into its stream;
 * otherwise counted as kept out by the policy. Never blocks, never
 * allocates. Returns APIKEY_USAGE_* bits, 0 when all went in.
 */
int apikey_usage_log(apikey_usage_t *usage, int slot,
    const apikey_usage_fields_t *fields, int raw) APIKEY_NOEXCEPT
    APIKEY_HIDDEN;

/*
 * A request whose result is not recorded (apikey_result_is_recorded) is
 * counted per result.
 */
void apikey_usage_count(apikey_usage_t *usage, int slot,
    apikey_result_e result) APIKEY_NOEXCEPT APIKEY_HIDDEN;

/* A request that could not be recorded because the worker has no slot. */
void apikey_usage_count_unslotted(apikey_usage_t *usage) APIKEY_NOEXCEPT;

/* Chunks in the segment's pool and file size, for the startup log line. */
uint64_t apikey_usage_chunk_count(const apikey_usage_t *usage)
    APIKEY_NOEXCEPT;
uint64_t apikey_usage_file_size(const apikey_usage_t *usage)
    APIKEY_NOEXCEPT;


#ifdef __cplusplus
}
#endif

#endif /* APIKEY_GLUE_H */
