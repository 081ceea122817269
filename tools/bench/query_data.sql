-- Data set for tools/bench/query, in phases, each a psql run with
--   -v phase=setup|raw|rollup|finish -v part=P -v parts=N
--   -v rows=ROWS -v keys=KEYS -v orgs=ORGS [-v days=30]
-- "raw" and "rollup" run in N sessions at once, session P doing its share.
--
-- Orgs and keys are inserted directly; the raw usage rows are spread
-- uniformly over the keys and over the last DAYS days; the hourly and daily
-- rollups and api_keys' last-used columns are derived from those raw rows
-- with the rules apikeyd's drainer follows (docs/data-model.md), latency
-- histograms included. Helper tables are named bench_* and dropped by
-- "finish".
\set ON_ERROR_STOP on
\set QUIET on
\if :{?days}
\else
\set days 30
\endif
SET TimeZone = 'UTC';
SET work_mem = '1GB';
SET temp_buffers = '1GB';
SET maintenance_work_mem = '1GB';
SET synchronous_commit = off;
SELECT :'phase' = 'setup' AS is_setup, :'phase' = 'raw' AS is_raw,
       :'phase' = 'rollup' AS is_rollup, :'phase' = 'finish' AS is_finish,
       :'phase' = 'check' AS is_check \gset

-- Latency histogram bucket bounds, as tools/apikeyd/rollup.cpp computes
-- them: bound(j) = round(64 * 2^(j/8)) us, j = 0..160; width_bucket(us,
-- bounds) is then the bucket number (the count of bounds <= us).
SELECT array_agg(floor((64::bigint << (j / 8))::float8
                       * (ARRAY[1.0, 1.0905077326652577, 1.1892071150027210,
                                1.2968395546510096, 1.4142135623730951,
                                1.5422108254079407, 1.6817928305074290,
                                1.8340080864093424]::float8[])[j % 8 + 1]
                       + 0.5)::bigint ORDER BY j)::text AS bounds
  FROM generate_series(0, 160) j \gset

\if :is_setup
-- The instant the data set ends at, the same for every session.
CREATE UNLOGGED TABLE bench_params AS SELECT now() AS t;

-- Orgs and keys. Key n belongs to org n % orgs.
CREATE UNLOGGED TABLE bench_orgs AS
SELECT o, gen_random_uuid() AS id FROM generate_series(0, :orgs - 1) o;
INSERT INTO orgs (id, name, created_at)
SELECT id, 'bench org ' || o, now() - interval '400 days' FROM bench_orgs;

CREATE UNLOGGED TABLE bench_keys AS
SELECT n, gen_random_uuid() AS id, o.id AS org_id,
       format('10.%s.%s.%s', (n >> 16) & 255, (n >> 8) & 255, n & 255)::inet AS ip
  FROM generate_series(0, :keys - 1) n
  JOIN bench_orgs o ON o.o = n % :orgs;
ALTER TABLE bench_keys ADD PRIMARY KEY (n);

-- 2% revoked, 1% past their expiry, 10% expiring later; random 32-byte hashes.
INSERT INTO api_keys (id, org_id, name, prefix, hint, key_hash, scopes,
                      created_at, expires_at, revoked_at)
SELECT id, org_id, 'bench key ' || n, 'ak',
       'ak_' || substr(md5(id::text), 1, 4),
       sha256(uuid_send(id) || uuid_send(gen_random_uuid())),
       '{orders.read,orders.write}',
       now() - interval '60 days' - (n % 300) * interval '1 day'
             - (n % 86400) * interval '1 second',
       CASE WHEN n % 100 = 7 THEN now() - interval '1 day'
            WHEN n % 10 = 3 THEN now() + interval '90 days' END,
       CASE WHEN n % 50 = 11 THEN now() - interval '2 days' END
  FROM bench_keys;

-- Monthly partitions covering the range (apikeyd would create the current
-- month's when it starts, not the previous one).
SELECT count(apikey_usage_partition_create(m::date)) AS partitions
  FROM bench_params,
       generate_series(date_trunc('month', t - :days * interval '1 day'),
                       date_trunc('month', t), interval '1 month') m \gset
\endif

\if :is_raw
-- Raw rows: this session's share of g = 0 .. rows-1. Row g belongs to key
-- g % keys and falls at a uniformly random instant of the DAYS days before
-- bench_params.t; six endpoint x method pairs (skewed); statuses 2xx
-- (~93%), 304, 4xx, 5xx and 0 (client closed); log-normal latencies in
-- whole milliseconds (median 40 ms), as nginx measures them.
INSERT INTO api_key_usage (ts, org_id, key_id, endpoint, method, status_code,
                           response_time_ms, ip_address, user_agent,
                           bytes_sent, result, node, slot, generation, sequence)
SELECT x.ts, k.org_id, k.id,
       (ARRAY['/v1/orders', '/v1/orders', '/v1/orders/{id}', '/v1/customers',
              '/v1/invoices', '/v1/search'])[x.c],
       (ARRAY['GET', 'POST', 'GET', 'GET', 'GET', 'GET'])[x.c],
       CASE WHEN x.s < 0.002 THEN 0
            WHEN x.s < 0.010 THEN 500
            WHEN x.s < 0.015 THEN 503
            WHEN x.s < 0.035 THEN 404
            WHEN x.s < 0.045 THEN 429
            WHEN x.s < 0.050 THEN 400
            WHEN x.s < 0.070 THEN 304
            WHEN x.c = 2 THEN 201
            ELSE 200 END,
       least(30000, round(exp(ln(40) + 0.9 * sqrt(-2 * ln(x.u1))
                                               * cos(2 * pi() * x.u2)))),
       k.ip, 'bench-client/1.0', 200 + (x.u2 * 20000)::bigint, 'ok',
       'bench', 0, 1, x.g
  FROM (SELECT g, p.t - random() * (:days * interval '1 day') AS ts,
               width_bucket(random(), ARRAY[0.30, 0.40, 0.62, 0.78, 0.90]::float8[]) + 1 AS c,
               random() AS s, 1 - random() AS u1, random() AS u2
          FROM bench_params p, generate_series(:part, :rows - 1, :parts) g) x
  JOIN bench_keys k ON k.n = x.g % :keys;
\endif

\if :is_rollup
-- This session's keys, n % parts = part (row g is key g % keys, and
-- sequence = g): its raw rows counted per (key, hour, endpoint, method,
-- latency bucket).
CREATE TEMP TABLE hb AS
SELECT key_id, org_id, date_trunc('hour', ts) AS bucket, endpoint, method,
       width_bucket(round(response_time_ms * 1000)::bigint, :'bounds'::bigint[]) AS b,
       count(*) AS n,
       count(*) FILTER (WHERE status_code BETWEEN 200 AND 299) AS s2,
       count(*) FILTER (WHERE status_code BETWEEN 300 AND 399) AS s3,
       count(*) FILTER (WHERE status_code BETWEEN 400 AND 499) AS s4,
       count(*) FILTER (WHERE status_code BETWEEN 500 AND 599) AS s5,
       sum(response_time_ms) AS ms,
       max(ts) AS last_ts
  FROM api_key_usage
 WHERE sequence % :keys % :parts = :part
 GROUP BY 1, 2, 3, 4, 5, 6;

-- A rollup row's histogram in the stored form: '[lo+1:hi+1]={...}' over its
-- first..last non-empty bucket, zeros for the empty ones in between (gap:
-- empty buckets since the previous non-empty one).
INSERT INTO api_key_usage_hourly
SELECT org_id, key_id, bucket, endpoint, method,
       sum(n), sum(s2), sum(s3), sum(s4), sum(s5), sum(n - s2 - s3 - s4 - s5),
       sum(ms),
       format('[%s:%s]={%s}', min(b) + 1, max(b) + 1,
              string_agg(repeat('0,', gap) || n, ',' ORDER BY b))::bigint[]
  FROM (SELECT *, b - lag(b, 1, b - 1) OVER (PARTITION BY key_id, bucket, endpoint, method, org_id
                                             ORDER BY b) - 1 AS gap
          FROM hb) x
 GROUP BY key_id, bucket, endpoint, method, org_id;

-- Daily rows: the sums of the hourly ones of that UTC day.
CREATE TEMP TABLE db AS
SELECT key_id, org_id, date_trunc('day', bucket) AS bucket, endpoint, method, b,
       sum(n) AS n, sum(s2) AS s2, sum(s3) AS s3, sum(s4) AS s4, sum(s5) AS s5,
       sum(ms) AS ms
  FROM hb
 GROUP BY 1, 2, 3, 4, 5, 6;

INSERT INTO api_key_usage_daily
SELECT org_id, key_id, bucket, endpoint, method,
       sum(n), sum(s2), sum(s3), sum(s4), sum(s5), sum(n - s2 - s3 - s4 - s5),
       sum(ms),
       format('[%s:%s]={%s}', min(b) + 1, max(b) + 1,
              string_agg(repeat('0,', gap) || n, ',' ORDER BY b))::bigint[]
  FROM (SELECT *, b - lag(b, 1, b - 1) OVER (PARTITION BY key_id, bucket, endpoint, method, org_id
                                             ORDER BY b) - 1 AS gap
          FROM db) x
 GROUP BY key_id, bucket, endpoint, method, org_id
 ORDER BY bucket;  -- day by day, as apikeyd writes them (the heap's order)

UPDATE api_keys k
   SET last_used_at = u.last_ts, last_used_ip = bk.ip, request_count = u.n
  FROM (SELECT key_id, sum(n) AS n, max(last_ts) AS last_ts
          FROM hb GROUP BY key_id) u
  JOIN bench_keys bk ON bk.id = u.key_id
 WHERE k.id = u.key_id;
\endif

\if :is_finish
-- Distinct client addresses, the last 7 UTC days of every key: sparse
-- sketches of 1..40 addresses, 1 key in 100 a dense (4 KiB) one.
INSERT INTO api_key_distinct_ips (key_id, day, org_id, ips, sketch)
SELECT bk.id, d::date, bk.org_id, x.ips,
       CASE WHEN bk.n % 100 = 5 THEN decode('02' || repeat('05', 4096), 'hex')
            ELSE decode('01' || (SELECT string_agg(lpad(to_hex(r), 4, '0') || '01', ''
                                                   ORDER BY r)
                                   FROM generate_series(1, x.ips) r), 'hex') END
  FROM bench_keys bk
 CROSS JOIN generate_series((now() AT TIME ZONE 'UTC')::date - 6,
                            (now() AT TIME ZONE 'UTC')::date, interval '1 day') d
 CROSS JOIN LATERAL (SELECT CASE WHEN bk.n % 100 = 5 THEN 90000
                                 ELSE 1 + abs(hashtext(bk.id::text || d::text)) % 40
                            END AS ips) x;
DROP TABLE bench_params, bench_keys, bench_orgs;
\endif

\if :is_check
-- Sampled rollup rows recomputed from their raw rows, the histogram through
-- the schema's own apikey_latency_hist_sum() over one-bucket histograms.
-- Prints "checked bad".
SELECT count(*) AS checked,
       count(*) FILTER (WHERE (r.requests, r.s2, r.s3, r.s4, r.s5, r.so, r.ms, r.hist)
                              IS DISTINCT FROM
                              (s.requests, s.status_2xx, s.status_3xx, s.status_4xx,
                               s.status_5xx, s.status_other, s.response_time_ms_sum,
                               s.latency_hist)) AS bad
  FROM (SELECT *, interval '1 hour' AS width
          FROM (SELECT * FROM api_key_usage_hourly TABLESAMPLE SYSTEM (1) LIMIT 200) h
        UNION ALL
        SELECT *, interval '1 day'
          FROM (SELECT * FROM api_key_usage_daily TABLESAMPLE SYSTEM (1) LIMIT 200) d) s
 CROSS JOIN LATERAL (
       SELECT count(*) AS requests,
              count(*) FILTER (WHERE status_code BETWEEN 200 AND 299) AS s2,
              count(*) FILTER (WHERE status_code BETWEEN 300 AND 399) AS s3,
              count(*) FILTER (WHERE status_code BETWEEN 400 AND 499) AS s4,
              count(*) FILTER (WHERE status_code BETWEEN 500 AND 599) AS s5,
              count(*) FILTER (WHERE status_code NOT BETWEEN 200 AND 599) AS so,
              sum(response_time_ms) AS ms,
              apikey_latency_hist_sum(format('[%1$s:%1$s]={1}',
                  width_bucket(round(response_time_ms * 1000)::bigint,
                               :'bounds'::bigint[]) + 1)::bigint[]) AS hist
         FROM api_key_usage u
        WHERE u.key_id = s.key_id AND u.ts >= s.bucket AND u.ts < s.bucket + s.width
          AND u.endpoint = s.endpoint AND u.method = s.method) r;
\endif
