-- Edge aggregation: nginx workers aggregate usage per key x endpoint x
-- method x UTC hour in the usage segment, and apikeyd builds the rollups,
-- request_count and last_used_* from those aggregates (no longer from the
-- raw rows). docs/data-model.md describes the table and how apikeyd
-- writes it.

-- Per node and ring slot generation: the last aggregation-buffer epoch
-- committed. A buffer of (node, slot, generation) with an epoch at or
-- below it is committed already (skipped as a duplicate). Written in the
-- same transaction as the rollups and api_keys counters it covers.
CREATE TABLE usage_aggregate_offsets (
    node        text        NOT NULL,
    slot        int         NOT NULL,
    generation  bigint      NOT NULL,
    epoch       bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (node, slot, generation)
);
