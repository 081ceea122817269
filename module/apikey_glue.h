/*
 * The C API between the nginx shim and the C++ core. Every function is
 * noexcept on the C++ side: nothing throws into nginx.
 */

#ifndef APIKEY_GLUE_H
#define APIKEY_GLUE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif


/* Values of $apikey_result; the order is part of the usage record. */
typedef enum {
    APIKEY_OK = 0,
    APIKEY_MISSING,
    APIKEY_MALFORMED,
    APIKEY_UNKNOWN,
    APIKEY_EXPIRED,
    APIKEY_REVOKED,
    APIKEY_FORBIDDEN,
    APIKEY_UNAVAILABLE
} apikey_result_e;

#define APIKEY_MAX_SCOPES    8
#define APIKEY_MAX_NAME_LEN  100
#define APIKEY_UUID_TEXT_LEN 36


/* What a request learned about its key; never the key itself. */
typedef struct {
    apikey_result_e   result;
    unsigned char     key_id[16];
    unsigned char     org_id[16];
    uint64_t          scope_hashes[APIKEY_MAX_SCOPES];
    unsigned          scope_count;
    size_t            name_len;
    char              name[APIKEY_MAX_NAME_LEN];
} apikey_verdict_t;


typedef struct apikey_table_s  apikey_table_t;


apikey_table_t *apikey_table_new(void);
void apikey_table_free(apikey_table_t *table);

/*
 * Maps the key-table segment at path (read-only). Returns 0 on success;
 * otherwise writes a reason (no key material) into err.
 */
int apikey_table_attach(apikey_table_t *table, const char *path, char *err,
    size_t err_len);

/* No table mapped yet, or apikeyd replaced it with a newer file. */
int apikey_table_needs_attach(const apikey_table_t *table);

/* A table is mapped and apikeyd finished its first full load. */
int apikey_table_ready(const apikey_table_t *table);

/*
 * Checks a key's format, then its hash against the table. Fills verdict
 * (ids, name, scopes) whenever the key is known, even if expired or
 * revoked, so that usage is recorded under it.
 */
apikey_result_e apikey_verify(const apikey_table_t *table,
    const unsigned char *key, size_t len, int64_t now_us,
    apikey_verdict_t *verdict);

uint64_t apikey_scope_hash(const unsigned char *scope, size_t len);

/* All of the required scopes are among the key's scopes. */
int apikey_verdict_has_scopes(const apikey_verdict_t *verdict,
    const uint64_t *required, size_t n);

/* Writes exactly APIKEY_UUID_TEXT_LEN characters. */
void apikey_uuid_format(const unsigned char id[16], unsigned char *out);

/* The name of a result, as $apikey_result shows it. */
const char *apikey_result_name(apikey_result_e result);


#ifdef __cplusplus
}
#endif

#endif /* APIKEY_GLUE_H */
