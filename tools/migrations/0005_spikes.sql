-- Spikes (docs/api.md#spikes): per key, the requests of the last complete
-- UTC hour and its mean hourly requests over the 7 days before, so that
-- the org listing can sort by the first and filter on the rule with one
-- index range, whatever the org's size.
--
-- "The last complete hour" moves every hour, so a stored value belongs to
-- the hour it names: `hour`. apikeyd's hourly refresh (one node of many,
-- under an advisory lock) sets hour, requests_hour and baseline_hourly of
-- every key with requests in that hour or the 7 days before; the API reads
-- a row whose hour is older as 0 requests. Rows of `hour` that arrive after
-- the refresh (late aggregates, a replayed spool) are added by the trigger
-- below; late rows of the 7-day window count from the next refresh.
ALTER TABLE api_key_listing
    ADD COLUMN hour            timestamptz NOT NULL DEFAULT '-infinity',
    ADD COLUMN requests_hour   bigint      NOT NULL DEFAULT 0,
    -- Mean hourly requests over the window (NULL: under 24 h of history).
    ADD COLUMN baseline_hourly double precision;

-- sort=requests_last_hour, and the spike filter's range (requests_hour >=
-- spike_min in the hour): keys of older hours sit below every key of the
-- last one, as in the requests_today index.
CREATE INDEX api_key_listing_hour_idx
    ON api_key_listing (org_id, hour, requests_hour, key_id);

-- The last hour refreshed, so that of several apikeyd nodes one does it.
CREATE TABLE api_spike_refresh (
    id    int         PRIMARY KEY CHECK (id = 1),
    hour  timestamptz NOT NULL
);

-- Late rows of a key's refreshed hour: their requests join requests_hour.
-- Rows of any other hour change nothing here (the current hour's are
-- summed by the next refresh), so the ingest's statements of the current
-- hour find no row to update.
CREATE FUNCTION api_key_listing_hour_from_hourly() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE api_key_listing s SET requests_hour = s.requests_hour + d.n
          FROM (SELECT key_id, bucket, sum(requests) AS n FROM new_rows
                 GROUP BY 1, 2) d
         WHERE s.key_id = d.key_id AND s.hour = d.bucket AND d.n <> 0;
    ELSIF TG_OP = 'UPDATE' THEN
        UPDATE api_key_listing s SET requests_hour = s.requests_hour + d.n
          FROM (SELECT key_id, bucket, sum(r) AS n
                  FROM (SELECT key_id, bucket, requests AS r FROM new_rows
                        UNION ALL
                        SELECT key_id, bucket, -requests FROM old_rows) u
                 GROUP BY 1, 2) d
         WHERE s.key_id = d.key_id AND s.hour = d.bucket AND d.n <> 0;
    ELSE
        UPDATE api_key_listing s SET requests_hour = s.requests_hour - d.n
          FROM (SELECT key_id, bucket, sum(requests) AS n FROM old_rows
                 GROUP BY 1, 2) d
         WHERE s.key_id = d.key_id AND s.hour = d.bucket AND d.n <> 0;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER api_key_listing_hourly_ins
    AFTER INSERT ON api_key_usage_hourly
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION api_key_listing_hour_from_hourly();
CREATE TRIGGER api_key_listing_hourly_upd
    AFTER UPDATE ON api_key_usage_hourly
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION api_key_listing_hour_from_hourly();
CREATE TRIGGER api_key_listing_hourly_del
    AFTER DELETE ON api_key_usage_hourly
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION api_key_listing_hour_from_hourly();
