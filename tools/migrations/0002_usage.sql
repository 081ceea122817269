-- Usage: raw events (partitioned by month), hourly and daily rollups, and
-- the per-node ring offsets that make ingestion exactly-once.
-- docs/data-model.md describes every table and how apikeyd writes them.
--
-- No foreign keys on these tables: usage outlives deleted keys and orgs, and
-- the ingest path must not take locks on api_keys/orgs per row.

-- One row per request with a known key (result ok, expired, revoked or
-- forbidden). Partitions api_key_usage_yYYYYmMM, one per UTC month, are
-- created ahead and dropped past retention by apikeyd.
CREATE TABLE api_key_usage (
    ts                timestamptz      NOT NULL,
    org_id            uuid             NOT NULL,
    key_id            uuid             NOT NULL,
    endpoint          text             NOT NULL,
    method            text             NOT NULL,
    status_code       smallint         NOT NULL,
    response_time_ms  double precision NOT NULL,
    ip_address        inet,
    user_agent        text             NOT NULL,
    bytes_sent        bigint           NOT NULL,
    result            text             NOT NULL,
    -- Idempotency key of the record: (node, slot, generation, sequence).
    node              text             NOT NULL,
    slot              int              NOT NULL,
    generation        bigint           NOT NULL,
    sequence          bigint           NOT NULL
) PARTITION BY RANGE (ts);

-- On the parent, so every partition gets its own.
CREATE INDEX api_key_usage_key_id_ts_idx ON api_key_usage (key_id, ts);

-- Rollups: one row per key x endpoint x method x UTC hour (day). Status
-- classes count 2xx..5xx; status_other counts the rest (1xx, 0 = client
-- closed early), so requests = status_2xx + ... + status_5xx + status_other
-- = the sum of latency_hist. latency_hist[b + 1] counts responses in latency
-- bucket b (docs/data-model.md lists the bounds); the array holds only the
-- span from the first to the last non-empty bucket, so its lower bound is
-- usually not 1 (array_lower()); subscripts outside it count zero.
CREATE TABLE api_key_usage_hourly (
    org_id                uuid             NOT NULL,
    key_id                uuid             NOT NULL,
    bucket                timestamptz      NOT NULL,
    endpoint              text             NOT NULL,
    method                text             NOT NULL,
    requests              bigint           NOT NULL,
    status_2xx            bigint           NOT NULL,
    status_3xx            bigint           NOT NULL,
    status_4xx            bigint           NOT NULL,
    status_5xx            bigint           NOT NULL,
    status_other          bigint           NOT NULL,
    response_time_ms_sum  double precision NOT NULL,
    latency_hist          bigint[]         NOT NULL,
    PRIMARY KEY (key_id, bucket, endpoint, method)
) WITH (fillfactor = 80);  -- room for HOT updates of the current bucket

CREATE INDEX api_key_usage_hourly_org_id_bucket_idx
    ON api_key_usage_hourly (org_id, bucket);

CREATE TABLE api_key_usage_daily (
    org_id                uuid             NOT NULL,
    key_id                uuid             NOT NULL,
    bucket                timestamptz      NOT NULL,
    endpoint              text             NOT NULL,
    method                text             NOT NULL,
    requests              bigint           NOT NULL,
    status_2xx            bigint           NOT NULL,
    status_3xx            bigint           NOT NULL,
    status_4xx            bigint           NOT NULL,
    status_5xx            bigint           NOT NULL,
    status_other          bigint           NOT NULL,
    response_time_ms_sum  double precision NOT NULL,
    latency_hist          bigint[]         NOT NULL,
    PRIMARY KEY (key_id, bucket, endpoint, method)
) WITH (fillfactor = 80);

CREATE INDEX api_key_usage_daily_org_id_bucket_idx
    ON api_key_usage_daily (org_id, bucket);

-- Per node ring position: every record of (node, slot, generation) with
-- sequence < next_sequence is committed. Written in the same transaction as
-- the data it covers.
CREATE TABLE usage_offsets (
    node           text        NOT NULL,
    slot           int         NOT NULL,
    generation     bigint      NOT NULL,
    next_sequence  bigint      NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (node, slot, generation)
);

-- Every ingest batch updates last_used_at, last_used_ip and request_count of
-- the keys it saw (columns no index covers): leave room on each page so
-- those updates stay HOT (no new index entries).
ALTER TABLE api_keys SET (fillfactor = 70);

-- Adds two latency histograms bucket by bucket (arrays with any bounds;
-- NULL elements count zero). The result spans both inputs, without NULLs.
CREATE FUNCTION apikey_latency_hist_add(a bigint[], b bigint[])
RETURNS bigint[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    r  bigint[] := a;
    la int := array_lower(a, 1);
    ua int := array_upper(a, 1);
    lb int := array_lower(b, 1);
    ub int := array_upper(b, 1);
BEGIN
    IF lb IS NULL THEN
        RETURN coalesce(a, b);
    END IF;
    IF la IS NULL THEN
        RETURN b;
    END IF;
    -- Zero the gap between two disjoint spans first, so that assigning
    -- past either end never leaves NULLs behind.
    FOR i IN ub + 1 .. la - 1 LOOP
        r[i] := 0;
    END LOOP;
    FOR i IN ua + 1 .. lb - 1 LOOP
        r[i] := 0;
    END LOOP;
    FOR i IN lb .. ub LOOP
        r[i] := coalesce(r[i], 0) + coalesce(b[i], 0);
    END LOOP;
    RETURN r;
END;
$$;

-- Sum of histograms, e.g. over the hourly rows of a range:
--   SELECT apikey_latency_hist_sum(latency_hist) FROM api_key_usage_hourly ...
CREATE AGGREGATE apikey_latency_hist_sum(bigint[]) (
    SFUNC = apikey_latency_hist_add,
    STYPE = bigint[],
    PARALLEL = SAFE
);

-- Monthly partitions of api_key_usage, named api_key_usage_yYYYYmMM and
-- covering [month, month + 1) in UTC. apikeyd calls these (under an
-- advisory lock, so that nodes sharing the database do not race).
-- Returns the partition's name if it was created, NULL if it existed.
CREATE FUNCTION apikey_usage_partition_create(month date)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    start_ts timestamp := date_trunc('month', month);
    name     text := 'api_key_usage_' || to_char(start_ts, '"y"YYYY"m"MM');
BEGIN
    IF EXISTS (SELECT 1
                 FROM pg_inherits i
                 JOIN pg_class c ON c.oid = i.inhrelid
                WHERE i.inhparent = 'api_key_usage'::regclass
                  AND c.relname = name) THEN
        RETURN NULL;
    END IF;
    -- Bounds spelled in UTC, whatever the session's TimeZone.
    EXECUTE format(
        'CREATE TABLE %I PARTITION OF api_key_usage FOR VALUES FROM (%L) TO (%L)',
        name,
        to_char(start_ts, 'YYYY-MM-DD HH24:MI:SS') || '+00',
        to_char(start_ts + interval '1 month', 'YYYY-MM-DD HH24:MI:SS') || '+00');
    RETURN name;
END;
$$;

-- Drops the partition of `month`; returns its name, or NULL if there was
-- none. Only ever drops a partition of api_key_usage.
CREATE FUNCTION apikey_usage_partition_drop(month date)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    name text := 'api_key_usage_' ||
                 to_char(date_trunc('month', month), '"y"YYYY"m"MM');
    rel  oid;
BEGIN
    SELECT c.oid INTO rel
      FROM pg_inherits i
      JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = 'api_key_usage'::regclass
       AND c.relname = name;
    IF rel IS NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE format('DROP TABLE %s', rel::regclass);
    RETURN name;
END;
$$;
