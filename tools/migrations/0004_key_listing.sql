-- The org key listing's sort and filter columns, so that every page of
-- GET /api/orgs/{org}/api-keys/usage is one short index scan whatever the
-- org's size or its endpoint x method x day fan-out (docs/api.md).
--
-- api_key_listing holds one row per key, kept by triggers inside
-- PostgreSQL: from api_keys (creation, last_used_at) and from the daily
-- rollup (requests of the key's latest day and month with traffic). The
-- ingest writes neither this table nor its indexes directly, and api_keys'
-- own last-used updates stay HOT (no index on api_keys covers them).

CREATE TABLE api_key_listing (
    key_id          uuid        PRIMARY KEY
                    REFERENCES api_keys (id) ON DELETE CASCADE,
    org_id          uuid        NOT NULL,
    -- api_keys.last_used_at; never used = -infinity (row comparisons and
    -- index order need a value).
    last_used_at    timestamptz NOT NULL DEFAULT '-infinity',
    -- The latest UTC day with requests in api_key_usage_daily and that
    -- day's requests; requests_today is requests_day when day is today,
    -- else 0. Same for the UTC month (its first day).
    day             date        NOT NULL DEFAULT '-infinity',
    requests_day    bigint      NOT NULL DEFAULT 0,
    month           date        NOT NULL DEFAULT '-infinity',
    requests_month  bigint      NOT NULL DEFAULT 0
) WITH (fillfactor = 80);

-- One index per sort: (org, sort key..., key id), read forwards or
-- backwards. Keys unused today (or this month) sit below every key used
-- today, ordered by their latest day's requests: still a total order with
-- requests_today non-increasing (descending), as a cursor needs.
CREATE INDEX api_key_listing_last_used_idx
    ON api_key_listing (org_id, last_used_at, key_id);
CREATE INDEX api_key_listing_day_idx
    ON api_key_listing (org_id, day, requests_day, key_id);
CREATE INDEX api_key_listing_month_idx
    ON api_key_listing (org_id, month, requests_month, key_id);
CREATE INDEX api_keys_org_created_idx ON api_keys (org_id, created_at, id);
CREATE INDEX api_keys_org_name_idx ON api_keys (org_id, name, id);
-- status=revoked in the default order: revoked keys are few, so a walk of
-- the full created_at index would skip most rows.
CREATE INDEX api_keys_org_revoked_idx ON api_keys (org_id, created_at, id)
    WHERE revoked_at IS NOT NULL;
-- q= (name or hint prefix): LIKE 'prefix%' ranges.
CREATE INDEX api_keys_org_name_prefix_idx
    ON api_keys (org_id, lower(name) text_pattern_ops);
CREATE INDEX api_keys_org_hint_prefix_idx
    ON api_keys (org_id, hint text_pattern_ops);

-- Adds request deltas per (key, UTC day) to the listing rows. Per key only
-- its latest day and month in the delta matter: a later period than the
-- row's is summed afresh from the rollup (this statement's rows included),
-- the row's own period gets the delta, an earlier one changes nothing.
CREATE FUNCTION apikey_listing_add(keys uuid[], days date[], n bigint[])
RETURNS void
LANGUAGE sql AS $$
    WITH d AS (
        SELECT u.key_id, u.day, date_trunc('month', u.day)::date AS month,
               sum(u.n) AS n
          FROM unnest(keys, days, n) AS u(key_id, day, n)
         GROUP BY 1, 2
    ), latest AS (
        SELECT DISTINCT ON (key_id) key_id, day, n,
               month, sum(n) OVER (PARTITION BY key_id, month) AS month_n
          FROM d
         ORDER BY key_id, day DESC
    )
    UPDATE api_key_listing AS s SET
        requests_day = CASE
            WHEN x.day = s.day THEN s.requests_day + x.n
            WHEN x.day > s.day THEN (
                SELECT coalesce(sum(r.requests), 0)
                  FROM api_key_usage_daily r
                 WHERE r.key_id = s.key_id
                   AND r.bucket = x.day::timestamp AT TIME ZONE 'UTC')
            ELSE s.requests_day END,
        day = greatest(s.day, x.day),
        requests_month = CASE
            WHEN x.month = s.month THEN s.requests_month + x.month_n
            WHEN x.month > s.month THEN (
                SELECT coalesce(sum(r.requests), 0)
                  FROM api_key_usage_daily r
                 WHERE r.key_id = s.key_id
                   AND r.bucket >= x.month::timestamp AT TIME ZONE 'UTC'
                   AND r.bucket < (x.month + interval '1 month')
                                  AT TIME ZONE 'UTC')
            ELSE s.requests_month END,
        month = greatest(s.month, x.month)
      FROM latest x
     WHERE s.key_id = x.key_id
       AND (x.n <> 0 OR x.month_n <> 0 OR x.day > s.day);
$$;

-- Statement-level, with transition tables: one call per rollup statement
-- (INSERT ... ON CONFLICT fires the INSERT and the UPDATE trigger, each
-- with its own rows), however the ingest batches them.
CREATE FUNCTION api_key_listing_from_daily() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    k uuid[];
    d date[];
    n bigint[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(key_id), array_agg(day), array_agg(s)
          INTO k, d, n
          FROM (SELECT key_id, (bucket AT TIME ZONE 'UTC')::date AS day,
                       sum(requests) AS s
                  FROM new_rows GROUP BY 1, 2) x;
    ELSIF TG_OP = 'UPDATE' THEN
        SELECT array_agg(key_id), array_agg(day), array_agg(s)
          INTO k, d, n
          FROM (SELECT key_id, day, sum(r) AS s
                  FROM (SELECT key_id, (bucket AT TIME ZONE 'UTC')::date AS day,
                               requests AS r FROM new_rows
                        UNION ALL
                        SELECT key_id, (bucket AT TIME ZONE 'UTC')::date,
                               -requests FROM old_rows) u
                 GROUP BY 1, 2) x;
    ELSE
        SELECT array_agg(key_id), array_agg(day), array_agg(s)
          INTO k, d, n
          FROM (SELECT key_id, (bucket AT TIME ZONE 'UTC')::date AS day,
                       -sum(requests) AS s
                  FROM old_rows GROUP BY 1, 2) x;
    END IF;
    IF k IS NOT NULL THEN
        PERFORM apikey_listing_add(k, d, n);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER api_key_listing_daily_ins
    AFTER INSERT ON api_key_usage_daily
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION api_key_listing_from_daily();
CREATE TRIGGER api_key_listing_daily_upd
    AFTER UPDATE ON api_key_usage_daily
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION api_key_listing_from_daily();
CREATE TRIGGER api_key_listing_daily_del
    AFTER DELETE ON api_key_usage_daily
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION api_key_listing_from_daily();

-- A new key gets its row; an update copies org_id and last_used_at where
-- they changed (the ingest's coalesced update, one statement per batch).
CREATE FUNCTION api_key_listing_from_keys() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO api_key_listing (key_id, org_id, last_used_at)
        SELECT id, org_id, coalesce(last_used_at, '-infinity')
          FROM new_rows
        ON CONFLICT (key_id) DO NOTHING;
    ELSE
        UPDATE api_key_listing AS s
           SET org_id = n.org_id,
               last_used_at = coalesce(n.last_used_at, '-infinity')
          FROM new_rows n
         WHERE s.key_id = n.id
           AND (s.org_id, s.last_used_at) IS DISTINCT FROM
               (n.org_id, coalesce(n.last_used_at, '-infinity'));
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER api_key_listing_keys_ins
    AFTER INSERT ON api_keys
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION api_key_listing_from_keys();
CREATE TRIGGER api_key_listing_keys_upd
    AFTER UPDATE ON api_keys
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION api_key_listing_from_keys();

-- Existing keys, from the rollup as it stands.
INSERT INTO api_key_listing (key_id, org_id, last_used_at, day, requests_day,
                             month, requests_month)
SELECT k.id, k.org_id, coalesce(k.last_used_at, '-infinity'),
       coalesce(ld.day, '-infinity'), coalesce(ld.n, 0),
       coalesce(lm.month, '-infinity'), coalesce(lm.n, 0)
  FROM api_keys k
  LEFT JOIN LATERAL (
       SELECT (r.bucket AT TIME ZONE 'UTC')::date AS day, sum(r.requests) AS n
         FROM api_key_usage_daily r
        WHERE r.key_id = k.id
        GROUP BY 1 HAVING sum(r.requests) <> 0
        ORDER BY 1 DESC LIMIT 1) ld ON true
  LEFT JOIN LATERAL (
       SELECT date_trunc('month', r.bucket AT TIME ZONE 'UTC')::date AS month,
              sum(r.requests) AS n
         FROM api_key_usage_daily r
        WHERE r.key_id = k.id
        GROUP BY 1 HAVING sum(r.requests) <> 0
        ORDER BY 1 DESC LIMIT 1) lm ON true;

-- The secret that signs listing cursors, shared by every apikeyd on this
-- database (a cursor from one node pages on another). 256 bits from
-- pg_strong_random() through two version-4 UUIDs (244 random bits) and
-- SHA-256. Not key material: it protects paging positions only.
CREATE TABLE api_cursor_secret (
    id      int   PRIMARY KEY CHECK (id = 1),
    secret  bytea NOT NULL CHECK (octet_length(secret) = 32)
);
INSERT INTO api_cursor_secret (id, secret)
VALUES (1, sha256(uuid_send(gen_random_uuid()) ||
                  uuid_send(gen_random_uuid())));
