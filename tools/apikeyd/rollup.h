// Pure aggregation into what apikeyd stores besides the raw rows: hourly
// and daily rollups per key x endpoint x method (request and status-class
// counts, latency sum and histogram) and one last-used update per key,
// from the aggregates nginx workers keep in the usage segment (or, in
// tests and tools, from usage records). No database, no I/O: unit-tested
// alone.
//
// The status classes and latency buckets are shared/usage_buckets.h's (the
// worker aggregates with the same ones); the SQL side only adds bucket counts
// up, and the analytics API reads percentiles back with
// latency_percentile_ms().
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "usage_agg.h"
#include "usage_buckets.h"
#include "usage_record.h"
#include "uuid.h"

namespace apikey {

// --- text --------------------------------------------------------------------

// PostgreSQL rejects text that is not valid UTF-8 or that contains NUL,
// and a record's endpoint, method and user agent come from clients. Every
// NUL and every byte that does not start a valid UTF-8 sequence (overlong
// forms, surrogates, code points above U+10FFFF, stray continuation bytes,
// truncated sequences) becomes U+FFFD, so one hostile request can never
// make a batch fail on every retry. Valid text is returned unchanged.
std::string sanitize_text(std::string_view text);
// True when sanitize_text(text) == text (no allocation).
bool text_is_clean(std::string_view text) noexcept;

// --- latency histogram -------------------------------------------------------

// Bucket counts over a window [lo, hi) of buckets: a rollup row sees few
// distinct latencies, so it stores only the span from its first to its last
// non-empty bucket. Stored in PostgreSQL as a bigint[] whose subscripts are
// bucket + 1 ("[lo+1:hi]={...}"; elements outside the bounds are zero).
class LatencyHistogram {
public:
    void add(std::size_t bucket, std::uint64_t count = 1);
    void add_latency_us(std::uint64_t response_time_us) {
        add(latency_bucket(response_time_us));
    }
    void merge(const LatencyHistogram& other);

    std::uint64_t count(std::size_t bucket) const noexcept;
    std::uint64_t total() const noexcept;
    bool empty() const noexcept { return counts_.empty(); }
    // Window of stored buckets; lo() == hi() when empty.
    std::size_t lo() const noexcept { return lo_; }
    std::size_t hi() const noexcept { return lo_ + counts_.size(); }
    // counts()[i] is bucket lo() + i.
    const std::vector<std::uint64_t>& counts() const noexcept {
        return counts_;
    }

    // The PostgreSQL array literal: "[lo+1:hi]={c,c,...}", "{}" if empty.
    std::string to_pg_array() const;
    void append_pg_array(std::string* out) const;
    // Adds a bigint[] in PostgreSQL's text output form ("{1,2}" or
    // "[5:6]={1,2}"; NULL elements count as zero). False on malformed
    // input or subscripts outside 1..kLatencyBucketCount (nothing added).
    bool add_pg_array(std::string_view text);

    bool operator==(const LatencyHistogram& o) const noexcept {
        return lo_ == o.lo_ && counts_ == o.counts_;
    }

private:
    std::size_t lo_ = 0;
    std::vector<std::uint64_t> counts_;
};

// The q-quantile (0 <= q <= 1) of the histogram's latencies, in ms, or
// nullopt when it is empty. Interpolates log-linearly inside the bucket
// that holds the rank q * total (linearly in bucket 0); for the last,
// unbounded bucket it returns the bucket's lower bound.
std::optional<double> latency_percentile_ms(const LatencyHistogram& hist,
                                            double q);

// --- rollups -----------------------------------------------------------------


// Start of the UTC hour / day that holds time_us (floor, also before 1970).
std::int64_t hour_bucket_us(std::int64_t time_us) noexcept;
std::int64_t day_bucket_us(std::int64_t time_us) noexcept;

// One row of api_key_usage_hourly or api_key_usage_daily (the increment a
// batch adds). endpoint and method are sanitized.
struct RollupRow {
    Uuid key_id{};
    Uuid org_id{};
    std::int64_t bucket_us = 0;
    std::string endpoint;
    std::string method;
    std::uint64_t requests = 0;
    std::uint64_t status_2xx = 0;
    std::uint64_t status_3xx = 0;
    std::uint64_t status_4xx = 0;
    std::uint64_t status_5xx = 0;
    std::uint64_t status_other = 0;
    std::uint64_t response_time_us_sum = 0;
    LatencyHistogram latency_hist;

    double response_time_ms_sum() const noexcept {
        return static_cast<double>(response_time_us_sum) / 1000.0;
    }
};

// The coalesced api_keys update of one key.
struct KeyUsage {
    Uuid key_id{};
    std::int64_t last_used_us = 0;  // latest record's time
    IpFamily ip_family = IpFamily::kNone;  // that record's client IP
    std::array<std::uint8_t, 16> ip{};
    std::uint64_t requests = 0;
};

struct BatchRollup {
    // Sorted by (key_id, bucket, endpoint, method), bytewise: the order
    // rows are upserted in, the same on every node.
    std::vector<RollupRow> hourly;
    std::vector<RollupRow> daily;
    std::vector<KeyUsage> keys;  // sorted by key_id
};

// Orders rows as BatchRollup does.
bool rollup_row_less(const RollupRow& a, const RollupRow& b) noexcept;

// Aggregates records or aggregate entries one at a time. Those with equal
// key, hour and sanitized endpoint and method land in one row. What is
// added must stay alive and unchanged until finish().
class RollupBuilder {
public:
    RollupBuilder();
    ~RollupBuilder();
    RollupBuilder(const RollupBuilder&) = delete;
    RollupBuilder& operator=(const RollupBuilder&) = delete;

    void reserve(std::size_t records);
    // One request.
    void add(const UsageRecord& record);
    // A worker's aggregate of requests; org_id is its key's org as apikeyd
    // knows it (an entry carries none). Latency buckets past the last are
    // counted in the last, as add_latency_us() does.
    void add(const AggregateEntry& entry, const Uuid& org_id);
    // The rollup of everything added; the builder is empty afterwards.
    BatchRollup finish();

private:
    struct Index;
    RollupRow& row_for(const std::uint8_t* key_id, const Uuid& org_id,
                       std::int64_t time_us, std::string_view endpoint,
                       std::string_view method);
    void note_use(const Uuid& key_id, std::uint64_t requests,
                  std::int64_t time_us, IpFamily family,
                  const std::uint8_t* ip);
    BatchRollup out_;
    std::deque<std::string> sanitized_;  // views into it stay valid
    std::unique_ptr<Index> index_;
};

// Aggregates every record given (filter duplicates and unknown keys out
// first).
BatchRollup rollup_batch(const std::vector<const UsageRecord*>& records);
BatchRollup rollup_batch(const std::vector<UsageRecord>& records);

// An aggregate entry with its key's org (from apikeyd's key index).
struct OrgEntry {
    const AggregateEntry* entry;
    Uuid org_id;
};

// Aggregates every entry given: hourly rows summed per key x hour x
// endpoint x method, daily rows summed from them, and per key the latest
// last_used_us with its IP and the sum of requests.
BatchRollup rollup_aggregates(const std::vector<OrgEntry>& entries);

// The record's text fields, clamped to their arrays (a length byte from a
// corrupt record can say more than the array holds).
std::string_view record_method(const UsageRecord& r) noexcept;
std::string_view record_endpoint(const UsageRecord& r) noexcept;
std::string_view record_user_agent(const UsageRecord& r) noexcept;

}  // namespace apikey
