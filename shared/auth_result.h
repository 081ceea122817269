/*
 * The result of a key check: the values of $apikey_result and the result
 * byte of a usage record (part of its layout). C, so that the nginx shim
 * and the C++ core include the same definition; usage_record.h names the
 * values apikey::AuthResult.
 */

#ifndef APIKEY_AUTH_RESULT_H
#define APIKEY_AUTH_RESULT_H


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

#define APIKEY_RESULT_COUNT  8

/*
 * The results with a known key (ids, name and scopes in the verdict) are
 * recorded as usage records; the others are only counted. unsigned: a
 * result byte read from a ring may be out of range.
 */

static inline int
apikey_result_is_recorded(unsigned result)
{
    switch (result) {
    case APIKEY_OK:
    case APIKEY_EXPIRED:
    case APIKEY_REVOKED:
    case APIKEY_FORBIDDEN:
        return 1;
    default:
        return 0;
    }
}


#endif /* APIKEY_AUTH_RESULT_H */
