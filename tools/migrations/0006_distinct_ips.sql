-- Distinct client addresses per key and UTC day (distinct_ips_today,
-- distinct_ips_7d, series[].distinct_ips; docs/api.md). apikeyd merges
-- each aggregation buffer's address hashes into the day's HyperLogLog
-- sketch (tools/apikeyd/hll_sketch.h) in the transaction that commits the
-- buffer's counters, under a row lock, and keeps the rounded estimate
-- beside it. Sketches older than 8 days are dropped (sketch NULL); the
-- day's estimate stays.
CREATE TABLE api_key_distinct_ips (
    key_id  uuid   NOT NULL,
    day     date   NOT NULL,
    org_id  uuid   NOT NULL,
    ips     bigint NOT NULL DEFAULT 0,
    sketch  bytea,
    PRIMARY KEY (key_id, day)
);

-- The hourly prune's range: only the days that still hold a sketch.
CREATE INDEX api_key_distinct_ips_sketch_day_idx
    ON api_key_distinct_ips (day) WHERE sketch IS NOT NULL;
