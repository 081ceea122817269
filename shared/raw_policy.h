/*
 * The raw-event policy (apikey_usage_raw): which requests with a known key
 * also leave a raw record in the usage stream. C, so that the nginx shim
 * decides with the definition the unit tests check.
 */

#ifndef APIKEY_RAW_POLICY_H
#define APIKEY_RAW_POLICY_H


typedef enum {
    APIKEY_RAW_ALL = 0,
    APIKEY_RAW_ERRORS,      /* status >= 400, or 0 (no response sent) */
    APIKEY_RAW_SAMPLE,      /* one in `sample`, counted per worker */
    APIKEY_RAW_OFF
} apikey_raw_policy_e;

#define APIKEY_RAW_MAX_SAMPLE  1000000000

/*
 * 1 if the request's raw record is kept. sample=N keeps the first of every
 * N requests that reach it; *seen is the worker's count of those.
 */

static inline int
apikey_raw_kept(unsigned policy, unsigned long sample, unsigned status,
    unsigned long *seen)
{
    switch (policy) {
    case APIKEY_RAW_ALL:
        return 1;
    case APIKEY_RAW_ERRORS:
        return status >= 400 || status == 0;
    case APIKEY_RAW_SAMPLE:
        return sample <= 1 || (*seen)++ % sample == 0;
    default:
        return 0;
    }
}


#endif /* APIKEY_RAW_POLICY_H */
