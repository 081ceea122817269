// The analytics API's side of PostgreSQL: a small pool of read-only
// sessions, the queries of one key (its summary, its rollup rows over a
// range), and the pure aggregation of those rows into a series, top
// endpoints and totals. Every value is a bound parameter; the rollup table
// name comes from a fixed pair, never from the request.
//
// Query plans (docs/api.md): a key by the primary key (listings:
// analytics_listing.h); usage by the rollups' primary key (key_id, bucket, ...) as a range on
// bucket, so a 30-day view reads ~30 x endpoints index entries.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "api_params.h"
#include "key_sql.h"
#include "pg.h"
#include "rollup.h"

namespace apikey::api {

// Per statement, set on every pooled session.
inline constexpr std::chrono::milliseconds kStatementTimeout{5000};
// How long a request waits for a session when all are in use.
inline constexpr std::chrono::milliseconds kSessionWait{2000};

// No session came free within kSessionWait (503 + Retry-After).
class PoolExhausted : public std::runtime_error {
   public:
    using std::runtime_error::runtime_error;
};

// --- connection pool
// ------------------------------------------------------------

// At most `max_sessions` sessions to --db (--api-db-sessions): opened
// lazily, set up read-only with statement_timeout, TimeZone UTC and UTF-8,
// kept while healthy, and dropped after any error that leaves them
// unusable. Thread-safe.
class ConnectionPool {
   public:
    ConnectionPool(std::string conninfo, std::size_t max_sessions,
                   std::chrono::milliseconds wait = kSessionWait);
    ~ConnectionPool();
    ConnectionPool(const ConnectionPool&) = delete;
    ConnectionPool& operator=(const ConnectionPool&) = delete;

    class Lease {
       public:
        Lease(ConnectionPool* pool, std::unique_ptr<pg::Connection> conn)
            : pool_(pool), conn_(std::move(conn)) {}
        Lease(Lease&&) noexcept = default;
        Lease& operator=(Lease&&) = delete;
        ~Lease();
        pg::Connection& operator*() const { return *conn_; }
        pg::Connection* operator->() const { return conn_.get(); }

       private:
        ConnectionPool* pool_;
        std::unique_ptr<pg::Connection> conn_;
    };

    // An idle session, or a new one while fewer than max_sessions are open;
    // otherwise waits up to `wait` for one (PoolExhausted). With as many
    // sessions as analytics workers (apikeyd's setup) nobody waits. Throws
    // pg::Error when connecting or setting up the session fails.
    Lease acquire();
    // Sessions open now (idle and leased).
    std::size_t open_sessions() const;
    // Closes every idle session: after a connection failure they are most
    // likely dead too (server restart), and libpq only finds out on use.
    void discard_idle();

   private:
    void release(std::unique_ptr<pg::Connection> conn);
    // One session fewer (closed or never opened): a waiter may open one.
    void forget_one();

    std::string conninfo_;
    std::size_t max_sessions_;
    std::chrono::milliseconds wait_;
    mutable std::mutex mutex_;
    std::condition_variable freed_;
    std::size_t open_ = 0;  // idle + leased + being opened
    std::vector<std::unique_ptr<pg::Connection>> idle_;
};

// --- queries
// --------------------------------------------------------------------

// "Today" and "this month" in UTC, as of `now_us`.
struct CalendarWindow {
    std::int64_t now_us = 0;
    std::int64_t day_start_us = 0;
    std::int64_t day_end_us = 0;
    std::int64_t month_start_us = 0;
    std::int64_t month_end_us = 0;

    static CalendarWindow at(std::int64_t now_us) noexcept;
};

// A key as the API lists it: api_keys (through keysql) plus its requests
// today and this month from api_key_listing (kept from the daily rollup).
struct KeySummary {
    keysql::KeyRow key;
    std::int64_t requests_today = 0;
    std::int64_t requests_this_month = 0;
    // The last complete UTC hour's requests and the key's baseline for it
    // (analytics_spikes.h; nullopt: under 24 h of history).
    std::int64_t requests_last_hour = 0;
    std::optional<double> baseline_hourly;
    // analytics_distinct_ips.h
    std::int64_t distinct_ips_today = 0;
    std::int64_t distinct_ips_7d = 0;
};

// Columns of a key summary: the key's, then the four above.
inline constexpr int kKeySummaryColumns = keysql::kKeyColumns + 4;

// SELECT <a key summary> FROM api_keys k JOIN api_key_listing s WHERE <k of
// the org>, to extend with more conditions. Parameters: key_summary_params()
// ($1 org_id, $2 dormant_days, $3 today, $4 this month's first day, $5 the
// last complete hour's start).
std::string key_summary_from();
std::vector<pg::Param> key_summary_params(const std::string& org_id,
                                          int dormant_days,
                                          const CalendarWindow& window);
// The summary in row `row` of such a query (its first columns).
KeySummary read_key_summary(const pg::Result& r, int row);

// The key if it belongs to the org; nullopt otherwise (no such key, or
// another org's: the caller cannot tell them apart either).
std::optional<KeySummary> query_key(pg::Connection& conn,
                                    const std::string& org_id,
                                    const std::string& key_id, int dormant_days,
                                    const CalendarWindow& window);

// One rollup row (hourly or daily) of a key.
struct UsageRow {
    std::int64_t bucket_us = 0;
    std::string endpoint;
    std::string method;
    std::uint64_t requests = 0;
    std::uint64_t errors_4xx = 0;
    std::uint64_t errors_5xx = 0;
    double response_time_ms_sum = 0;
    LatencyHistogram latency_hist;
};

// The key's rollup rows of `interval`'s table with from <= bucket < to.
std::vector<UsageRow> query_key_usage(pg::Connection& conn,
                                      const std::string& org_id,
                                      const std::string& key_id,
                                      Interval interval, std::int64_t from_us,
                                      std::int64_t to_us);

// --- aggregation (pure)
// -----------------------------------------------------------

// Requests, error counts, latency sum and histogram of a set of rows.
struct UsageTotals {
    std::uint64_t requests = 0;
    std::uint64_t errors_4xx = 0;
    std::uint64_t errors_5xx = 0;
    double response_time_ms_sum = 0;
    LatencyHistogram latency_hist;

    void add(const UsageRow& row);
    // sum / requests, nullopt without requests.
    std::optional<double> avg_ms() const;
    // From the summed histogram (latency_percentile_ms), nullopt without
    // requests.
    std::optional<double> p95_ms() const;
    // errors / requests, 0 without requests.
    double rate_4xx() const;
    double rate_5xx() const;
};

struct SeriesPoint {
    std::int64_t t_us = 0;
    UsageTotals totals;
    // Day series only (analytics_distinct_ips.h).
    std::optional<std::uint64_t> distinct_ips;
};

struct EndpointUsage {
    std::string endpoint;
    std::string method;
    UsageTotals totals;
};

struct UsageSummary {
    std::vector<SeriesPoint> series;  // one per bucket, empty ones too
    std::vector<EndpointUsage> top;   // by requests, then name, method
    UsageTotals totals;               // every row in the range
};

// Folds rows into the series of `buckets` (every bucket start, ascending;
// rows of other buckets are ignored), the `top` busiest endpoint x method
// pairs (requests descending, then endpoint and method ascending), and the
// totals over the series' buckets.
UsageSummary summarize_usage(const std::vector<UsageRow>& rows,
                             const std::vector<std::int64_t>& buckets, int top);

}  // namespace apikey::api
