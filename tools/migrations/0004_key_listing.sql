-- The org key listing's sort and filter columns, so that every page of
-- GET /api/orgs/{org}/api-keys/usage is one short index scan whatever the
-- org's size or its endpoint x method x day fan-out (docs/api.md).
--
-- api_key_listing holds one row per key, kept by triggers inside
-- PostgreSQL: from api_keys (creation, last_used_at) and from the daily
-- rollup (requests of the key's latest day and month with traffic), applied
-- once per key at commit. The ingest writes neither this table nor its
-- indexes directly, and api_keys' own last-used updates stay HOT (no index
-- on api_keys covers them).

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

-- What a transaction changed is gathered in two temporary tables of its
-- session (created on first use, emptied at every commit) and applied at
-- commit, once per key: one update of a key's row per ingest batch however
-- many rollup and api_keys statements the batch runs, and no dead row
-- left in a permanent table for each of them.
CREATE FUNCTION apikey_listing_pending() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF to_regclass('pg_temp.apikey_listing_pending') IS NULL THEN
        -- day NULL: api_keys changed (last_used_at, org_id); else requests.
        CREATE TEMP TABLE apikey_listing_pending (
            key_id  uuid   NOT NULL,
            day     date,
            n       bigint NOT NULL
        ) ON COMMIT DELETE ROWS;
        CREATE TEMP TABLE apikey_listing_flush (one int PRIMARY KEY)
            ON COMMIT DELETE ROWS;
        CREATE CONSTRAINT TRIGGER apikey_listing_flush
            AFTER INSERT ON pg_temp.apikey_listing_flush
            DEFERRABLE INITIALLY DEFERRED
            FOR EACH ROW EXECUTE FUNCTION apikey_listing_flush();
    END IF;
    -- The first of the transaction queues the flush; the others conflict.
    INSERT INTO pg_temp.apikey_listing_flush VALUES (1) ON CONFLICT DO NOTHING;
END;
$$;

-- At commit: per key, last_used_at and org_id as api_keys has them now,
-- and its latest day and month of requests. Of the request deltas only
-- the latest day and month in them matter: a later period than the row's
-- is summed afresh from the rollup (this transaction's rows included), the
-- row's own period gets the delta, an earlier one changes nothing.
CREATE FUNCTION apikey_listing_flush() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    WITH d AS (
        SELECT key_id, day, date_trunc('month', day)::date AS month,
               sum(n) AS n
          FROM pg_temp.apikey_listing_pending
         WHERE day IS NOT NULL
         GROUP BY 1, 2
    ), latest AS (
        SELECT DISTINCT ON (key_id) key_id, day, n, month,
               sum(n) OVER (PARTITION BY key_id, month) AS month_n
          FROM d
         ORDER BY key_id, day DESC
    ), keys AS (
        SELECT DISTINCT key_id FROM pg_temp.apikey_listing_pending
         WHERE day IS NULL
    ), x AS (
        SELECT coalesce(l.key_id, k.key_id) AS key_id, l.day, l.n, l.month,
               l.month_n, k.key_id IS NOT NULL AS key_changed
          FROM latest l FULL JOIN keys k ON k.key_id = l.key_id
    ), v AS (
        SELECT s.key_id,
               CASE WHEN x.key_changed THEN a.org_id ELSE s.org_id END
                   AS org_id,
               CASE WHEN x.key_changed
                    THEN coalesce(a.last_used_at, '-infinity')
                    ELSE s.last_used_at END AS last_used_at,
               greatest(s.day, x.day) AS day,
               CASE
                   WHEN x.day IS NULL OR x.day < s.day THEN s.requests_day
                   WHEN x.day = s.day THEN s.requests_day + x.n
                   ELSE (SELECT coalesce(sum(r.requests), 0)
                           FROM api_key_usage_daily r
                          WHERE r.key_id = s.key_id
                            AND r.bucket = x.day::timestamp AT TIME ZONE 'UTC')
               END AS requests_day,
               greatest(s.month, x.month) AS month,
               CASE
                   WHEN x.month IS NULL OR x.month < s.month
                       THEN s.requests_month
                   WHEN x.month = s.month THEN s.requests_month + x.month_n
                   ELSE (SELECT coalesce(sum(r.requests), 0)
                           FROM api_key_usage_daily r
                          WHERE r.key_id = s.key_id
                            AND r.bucket >= x.month::timestamp AT TIME ZONE 'UTC'
                            AND r.bucket < (x.month + interval '1 month')
                                           AT TIME ZONE 'UTC')
               END AS requests_month
          FROM x
          JOIN api_key_listing s ON s.key_id = x.key_id
          LEFT JOIN api_keys a ON x.key_changed AND a.id = x.key_id
    )
    UPDATE api_key_listing AS s
       SET org_id = v.org_id, last_used_at = v.last_used_at, day = v.day,
           requests_day = v.requests_day, month = v.month,
           requests_month = v.requests_month
      FROM v
     WHERE s.key_id = v.key_id
       AND (s.org_id, s.last_used_at, s.day, s.requests_day, s.month,
            s.requests_month) IS DISTINCT FROM
           (v.org_id, v.last_used_at, v.day, v.requests_day, v.month,
            v.requests_month);
    RETURN NULL;
END;
$$;

-- Statement-level, with transition tables: one call per rollup statement
-- (INSERT ... ON CONFLICT fires the INSERT and the UPDATE trigger, each
-- with its own rows), however the ingest batches them.
CREATE FUNCTION api_key_listing_from_daily() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM apikey_listing_pending();
    IF TG_OP = 'INSERT' THEN
        INSERT INTO pg_temp.apikey_listing_pending (key_id, day, n)
        SELECT key_id, (bucket AT TIME ZONE 'UTC')::date, sum(requests)
          FROM new_rows GROUP BY 1, 2;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO pg_temp.apikey_listing_pending (key_id, day, n)
        SELECT key_id, day, sum(r)
          FROM (SELECT key_id, (bucket AT TIME ZONE 'UTC')::date AS day,
                       requests AS r FROM new_rows
                UNION ALL
                SELECT key_id, (bucket AT TIME ZONE 'UTC')::date,
                       -requests FROM old_rows) u
         GROUP BY 1, 2;
    ELSE
        INSERT INTO pg_temp.apikey_listing_pending (key_id, day, n)
        SELECT key_id, (bucket AT TIME ZONE 'UTC')::date, -sum(requests)
          FROM old_rows GROUP BY 1, 2;
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

-- A new key gets its row at once; an update marks the key, and the flush
-- copies its org_id and last_used_at at commit (the ingest's coalesced
-- update, one statement per batch).
CREATE FUNCTION api_key_listing_from_keys() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO api_key_listing (key_id, org_id, last_used_at)
        SELECT id, org_id, coalesce(last_used_at, '-infinity')
          FROM new_rows
        ON CONFLICT (key_id) DO NOTHING;
    ELSE
        PERFORM apikey_listing_pending();
        INSERT INTO pg_temp.apikey_listing_pending (key_id, day, n)
        SELECT id, NULL, 0 FROM new_rows;
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
