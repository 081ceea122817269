#include "analytics_queries.h"

#include <algorithm>
#include <map>
#include <stdexcept>
#include <tuple>
#include <utility>

#include "analytics_spikes.h"

namespace apikey::api {
namespace {

// Parameters are RFC 3339 text with microseconds and 'Z', so their meaning
// does not depend on the session's TimeZone.
std::string ts_param(std::int64_t us) {
    return format_rfc3339(us, TimePrecision::kMicros);
}

// The UTC date of `us` as "YYYY-MM-DD".
std::string format_date(std::int64_t us) {
    return format_rfc3339(us).substr(0, 10);
}

void setup_session(pg::Connection& conn) {
    conn.exec(
        "SELECT set_config('statement_timeout', $1, false),"
        " set_config('TimeZone', 'UTC', false),"
        " set_config('default_transaction_read_only', 'on', false),"
        // Short index scans: JIT compilation would cost more than it saves.
        " set_config('jit', 'off', false)",
        {std::to_string(kStatementTimeout.count())});
}

}  // namespace

// --- key summaries
// ----------------------------------------------------------------

std::string key_summary_from() {
    return "SELECT " + keysql::key_columns("k.", 2) +
           ", CASE WHEN s.day = $3::date THEN s.requests_day ELSE 0 END"
           ", CASE WHEN s.month = $4::date THEN s.requests_month ELSE 0 END"
           // The last complete hour ($5): a stored hour older than it had
           // no requests in it, nor in the 7 days before.
           ", CASE WHEN s.hour = $5::timestamptz THEN s.requests_hour"
           " ELSE 0 END"
           ", CASE WHEN s.hour = $5::timestamptz THEN s.baseline_hourly"
           " WHEN k.created_at <= $5::timestamptz - interval '" +
           std::to_string(kMinHistoryHours) + " hours' THEN 0 END"
           " FROM api_keys k JOIN api_key_listing s ON s.key_id = k.id"
           " WHERE k.org_id = $1::uuid";
}

std::vector<pg::Param> key_summary_params(const std::string& org_id,
                                          int dormant_days,
                                          const CalendarWindow& w) {
    return {org_id, std::to_string(dormant_days),
            format_date(w.day_start_us), format_date(w.month_start_us),
            ts_param(last_complete_hour(w.now_us))};
}

KeySummary read_key_summary(const pg::Result& r, int row) {
    KeySummary s;
    s.key = keysql::KeyRow::read(r, row);
    s.requests_today = std::stoll(r.get(row, keysql::kKeyColumns));
    s.requests_this_month = std::stoll(r.get(row, keysql::kKeyColumns + 1));
    s.requests_last_hour = std::stoll(r.get(row, keysql::kKeyColumns + 2));
    if (auto b = r.get_optional(row, keysql::kKeyColumns + 3)) {
        s.baseline_hourly = std::stod(*b);
    }
    return s;
}

// --- pool
// -----------------------------------------------------------------------

ConnectionPool::ConnectionPool(std::string conninfo, std::size_t max_sessions,
                               std::chrono::milliseconds wait)
    : conninfo_(std::move(conninfo)), max_sessions_(max_sessions), wait_(wait) {}

ConnectionPool::~ConnectionPool() = default;

ConnectionPool::Lease::~Lease() {
    if (conn_) pool_->release(std::move(conn_));
}

ConnectionPool::Lease ConnectionPool::acquire() {
    {
        std::unique_lock<std::mutex> lock(mutex_);
        bool free = freed_.wait_for(lock, wait_, [this] {
            return !idle_.empty() || open_ < max_sessions_;
        });
        if (!free) {
            throw PoolExhausted("every database session is busy");
        }
        while (!idle_.empty()) {
            std::unique_ptr<pg::Connection> conn = std::move(idle_.back());
            idle_.pop_back();
            if (conn->ok()) return Lease(this, std::move(conn));
            --open_;
        }
        // Each dead idle session freed its slot: there is room for one.
        ++open_;  // reserved before connecting, outside the lock
    }
    // Connect outside the lock: a slow server must not stall other requests
    // that could use an idle session.
    try {
        auto conn = std::make_unique<pg::Connection>(conninfo_, "apikeyd-api");
        setup_session(*conn);
        return Lease(this, std::move(conn));
    } catch (...) {
        forget_one();
        throw;
    }
}

std::size_t ConnectionPool::open_sessions() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return open_;
}

void ConnectionPool::forget_one() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        --open_;
    }
    freed_.notify_one();
}

void ConnectionPool::discard_idle() {
    std::vector<std::unique_ptr<pg::Connection>> dead;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        dead.swap(idle_);
        open_ -= dead.size();
    }
    freed_.notify_all();
}

// Sessions come back only when healthy and outside a transaction; a
// statement that failed inside one leaves it aborted, so it is dropped.
void ConnectionPool::release(std::unique_ptr<pg::Connection> conn) {
    if (!conn->ok() || PQtransactionStatus(conn->get()) != PQTRANS_IDLE) {
        conn.reset();
        forget_one();
        return;
    }
    {
        std::lock_guard<std::mutex> lock(mutex_);
        idle_.push_back(std::move(conn));
    }
    freed_.notify_one();
}

// --- queries
// --------------------------------------------------------------------

CalendarWindow CalendarWindow::at(std::int64_t now_us) noexcept {
    CalendarWindow w;
    w.now_us = now_us;
    w.day_start_us = floor_to(now_us, Interval::kDay);
    w.day_end_us = w.day_start_us + kApiUsPerDay;
    w.month_start_us = api::month_start_us(now_us);
    w.month_end_us = next_month_start_us(now_us);
    return w;
}

std::optional<KeySummary> query_key(pg::Connection& conn,
                                    const std::string& org_id,
                                    const std::string& key_id, int dormant_days,
                                    const CalendarWindow& window) {
    static const std::string sql = key_summary_from() + " AND k.id = $6::uuid";
    std::vector<pg::Param> params =
        key_summary_params(org_id, dormant_days, window);
    params.emplace_back(key_id);
    pg::Result r = conn.exec(sql, params);
    if (r.rows() == 0) return std::nullopt;
    return read_key_summary(r, 0);
}

std::vector<UsageRow> query_key_usage(pg::Connection& conn,
                                      const std::string& org_id,
                                      const std::string& key_id,
                                      Interval interval, std::int64_t from_us,
                                      std::int64_t to_us) {
    auto sql_for = [](const char* table) {
        return std::string(
                   "SELECT (extract(epoch FROM bucket) * 1000000)::bigint,"
                   " endpoint, method, requests, status_4xx, status_5xx,"
                   " response_time_ms_sum, latency_hist FROM ") +
               table +
               " WHERE key_id = $1::uuid AND org_id = $2::uuid"
               " AND bucket >= $3::timestamptz AND bucket < $4::timestamptz";
    };
    static const std::string hourly = sql_for("api_key_usage_hourly");
    static const std::string daily = sql_for("api_key_usage_daily");

    pg::Result r =
        conn.exec(interval == Interval::kHour ? hourly : daily,
                  {key_id, org_id, ts_param(from_us), ts_param(to_us)});
    std::vector<UsageRow> rows;
    rows.reserve(static_cast<std::size_t>(r.rows()));
    for (int i = 0; i < r.rows(); ++i) {
        UsageRow row;
        row.bucket_us = std::stoll(r.get(i, 0));
        row.endpoint = r.get(i, 1);
        row.method = r.get(i, 2);
        row.requests = r.get_u64(i, 3);
        row.errors_4xx = r.get_u64(i, 4);
        row.errors_5xx = r.get_u64(i, 5);
        row.response_time_ms_sum = std::stod(r.get(i, 6));
        if (!row.latency_hist.add_pg_array(r.get(i, 7))) {
            // Not pg::Error: the session is fine, the data is not (500).
            throw std::runtime_error("stored latency_hist is not a histogram");
        }
        rows.push_back(std::move(row));
    }
    return rows;
}

// --- aggregation
// ------------------------------------------------------------------

void UsageTotals::add(const UsageRow& row) {
    requests += row.requests;
    errors_4xx += row.errors_4xx;
    errors_5xx += row.errors_5xx;
    response_time_ms_sum += row.response_time_ms_sum;
    latency_hist.merge(row.latency_hist);
}

std::optional<double> UsageTotals::avg_ms() const {
    if (requests == 0) return std::nullopt;
    return response_time_ms_sum / static_cast<double>(requests);
}

std::optional<double> UsageTotals::p95_ms() const {
    if (requests == 0) return std::nullopt;
    return latency_percentile_ms(latency_hist, 0.95);
}

double UsageTotals::rate_4xx() const {
    return requests == 0 ? 0.0
                         : static_cast<double>(errors_4xx) /
                               static_cast<double>(requests);
}

double UsageTotals::rate_5xx() const {
    return requests == 0 ? 0.0
                         : static_cast<double>(errors_5xx) /
                               static_cast<double>(requests);
}

UsageSummary summarize_usage(const std::vector<UsageRow>& rows,
                             const std::vector<std::int64_t>& buckets,
                             int top) {
    UsageSummary s;
    s.series.reserve(buckets.size());
    for (std::int64_t t : buckets) s.series.push_back({t, {}, {}});

    std::map<std::pair<std::string, std::string>, UsageTotals> by_endpoint;
    for (const UsageRow& row : rows) {
        auto it = std::lower_bound(
            s.series.begin(), s.series.end(), row.bucket_us,
            [](const SeriesPoint& p, std::int64_t t) { return p.t_us < t; });
        if (it == s.series.end() || it->t_us != row.bucket_us) continue;
        it->totals.add(row);
        s.totals.add(row);
        by_endpoint[{row.endpoint, row.method}].add(row);
    }

    for (auto& [name, totals] : by_endpoint) {
        s.top.push_back({name.first, name.second, std::move(totals)});
    }
    std::sort(s.top.begin(), s.top.end(),
              [](const EndpointUsage& a, const EndpointUsage& b) {
                  return std::tie(b.totals.requests, a.endpoint, a.method) <
                         std::tie(a.totals.requests, b.endpoint, b.method);
              });
    if (top >= 0 && s.top.size() > static_cast<std::size_t>(top)) {
        s.top.resize(static_cast<std::size_t>(top));
    }
    return s;
}

}  // namespace apikey::api
