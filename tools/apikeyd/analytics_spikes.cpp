#include "analytics_spikes.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "log.h"
#include "time_util.h"

namespace apikey::api {
namespace {

// pg_advisory_lock key of the hourly refresh ("akspike" in ASCII).
constexpr long long kRefreshLockKey = 0x616b7370696b65;
// The refresh waits this long past the hour boundary, so that the
// aggregates of the hour's last moments (committed every 250 ms, up to
// 1.5 s while commits are slow) are in before it sums the hour.
constexpr std::int64_t kRefreshDelayUs = 5 * kUsPerSecond;
// How often the gauge is counted, and how long after a failure the
// refresher tries again.
constexpr std::int64_t kCountEveryUs = 60 * kUsPerSecond;
constexpr std::int64_t kRetryUs = 30 * kUsPerSecond;

std::string ts_param(std::int64_t us) {
    return format_rfc3339(us, TimePrecision::kMicros);
}

// Keys refreshed per transaction: each holds its rows' locks briefly, so
// an ingest commit that updates the same listing rows waits a moment,
// never the whole refresh.
constexpr int kRefreshBatch = 2000;

// One batch: the next kRefreshBatch keys after $4 in key-id order; per key
// with requests in the hour $1 or the 7 days before it, the hour's
// requests and the baseline (the window's requests over its hours from the
// creation hour on; NULL under 24 h of history), as baseline_hours()
// counts them, each key's rows one range of the rollup's primary key.
// Answers the batch's last key id (NULL: no keys left) and the keys
// updated.
constexpr const char* kRefreshSql = R"(
WITH b AS (
    SELECT key_id FROM api_key_listing
     WHERE key_id > $4::uuid ORDER BY key_id LIMIT $5::int
), h AS (
    SELECT r.key_id,
           coalesce(sum(r.requests) FILTER (WHERE r.bucket = $1::timestamptz),
                    0) AS n,
           coalesce(sum(r.requests) FILTER (WHERE r.bucket < $1::timestamptz),
                    0) AS b
      FROM b
      JOIN api_key_usage_hourly r ON r.key_id = b.key_id
     WHERE r.bucket >= $1::timestamptz - make_interval(hours => $2::int)
       AND r.bucket <= $1::timestamptz
     GROUP BY r.key_id
), u AS (
    UPDATE api_key_listing s
       SET hour = $1::timestamptz, requests_hour = h.n,
           baseline_hourly = CASE
               WHEN k.created_at <= $1::timestamptz - make_interval(hours => $3::int)
               THEN h.b::float8 / (extract(epoch FROM $1::timestamptz - greatest(
                        $1::timestamptz - make_interval(hours => $2::int),
                        date_trunc('hour', k.created_at))) / 3600)::float8
           END
      FROM h JOIN api_keys k ON k.id = h.key_id
     WHERE s.key_id = h.key_id
    RETURNING 1
)
SELECT (SELECT key_id::text FROM b ORDER BY key_id DESC LIMIT 1),
       (SELECT count(*) FROM u))";

}  // namespace

std::int64_t last_complete_hour(std::int64_t now_us) noexcept {
    return floor_to(now_us, Interval::kHour) - kApiUsPerHour;
}

std::optional<std::int64_t> baseline_hours(std::int64_t created_us,
                                           std::int64_t hour_us) noexcept {
    if (created_us > hour_us - kMinHistoryHours * kApiUsPerHour) {
        return std::nullopt;
    }
    std::int64_t start = std::max(hour_us - kBaselineHours * kApiUsPerHour,
                                  floor_to(created_us, Interval::kHour));
    return (hour_us - start) / kApiUsPerHour;
}

bool is_spike(std::int64_t requests, std::optional<double> baseline,
              const SpikeRule& rule) noexcept {
    return baseline && requests > 0 && requests >= rule.min &&
           static_cast<double>(requests) >= rule.ratio * *baseline;
}

std::string spike_condition(const std::string& hour_param,
                            const std::string& ratio_param,
                            const std::string& min_param) {
    return "(s.hour = " + hour_param + "::timestamptz"
           " AND s.requests_hour >= greatest(" + min_param + "::bigint, 1)"
           " AND s.baseline_hourly IS NOT NULL"
           " AND s.requests_hour >= " + ratio_param +
           "::float8 * s.baseline_hourly)";
}

std::string ratio_text(double ratio) {
    char buf[32];
    for (int digits = 1; digits <= 17; ++digits) {
        std::snprintf(buf, sizeof(buf), "%.*g", digits, ratio);
        if (std::strtod(buf, nullptr) == ratio) break;
    }
    return buf;
}

std::int64_t spike_window_start(std::int64_t from_us) noexcept {
    return floor_to(from_us, Interval::kHour) - kBaselineHours * kApiUsPerHour;
}

std::vector<SpikeHour> find_spikes(const std::vector<HourTotal>& hours,
                                   std::int64_t created_us,
                                   std::int64_t from_us, std::int64_t to_us,
                                   std::int64_t now_us,
                                   const SpikeRule& rule) {
    std::vector<SpikeHour> out;
    auto at = [&](std::int64_t t) {
        return std::lower_bound(
            hours.begin(), hours.end(), t,
            [](const HourTotal& h, std::int64_t v) { return h.t_us < v; });
    };
    std::int64_t step = kApiUsPerHour;
    std::int64_t end = std::min(to_us, floor_to(now_us, Interval::kHour));
    for (std::int64_t t : series_buckets(from_us, end, Interval::kHour)) {
        auto it = at(t);
        std::int64_t requests = it != hours.end() && it->t_us == t
                                    ? it->requests
                                    : 0;
        std::optional<std::int64_t> n = baseline_hours(created_us, t);
        if (!n || requests <= 0 || requests < rule.min) continue;
        std::int64_t sum = 0;
        for (auto w = at(t - *n * step); w != it; ++w) sum += w->requests;
        double baseline = static_cast<double>(sum) / static_cast<double>(*n);
        if (!is_spike(requests, baseline, rule)) continue;
        SpikeHour s{t, requests, baseline, std::nullopt};
        if (baseline > 0) s.ratio = static_cast<double>(requests) / baseline;
        out.push_back(s);
    }
    return out;
}

std::vector<HourTotal> query_hour_totals(pg::Connection& conn,
                                         const std::string& org_id,
                                         const std::string& key_id,
                                         std::int64_t from_us,
                                         std::int64_t to_us) {
    pg::Result r = conn.exec(
        "SELECT (extract(epoch FROM bucket) * 1000000)::bigint,"
        " sum(requests) FROM api_key_usage_hourly"
        " WHERE key_id = $1::uuid AND org_id = $2::uuid"
        " AND bucket >= $3::timestamptz AND bucket < $4::timestamptz"
        " GROUP BY bucket ORDER BY bucket",
        {key_id, org_id, ts_param(from_us), ts_param(to_us)});
    std::vector<HourTotal> out;
    out.reserve(static_cast<std::size_t>(r.rows()));
    for (int i = 0; i < r.rows(); ++i) {
        out.push_back({std::stoll(r.get(i, 0)), std::stoll(r.get(i, 1))});
    }
    return out;
}

std::optional<std::size_t> refresh_spikes(pg::Connection& conn,
                                          std::int64_t hour_us, bool force,
                                          const std::atomic<bool>* stop) {
    std::string hour = ts_param(hour_us);
    // A session lock: the batches commit one by one under it. On an error
    // the caller closes the session, which releases it.
    conn.exec("SELECT pg_advisory_lock($1::bigint)",
              {std::to_string(kRefreshLockKey)});
    std::optional<std::size_t> keys;
    pg::Result done = conn.exec(
        "SELECT hour >= $1::timestamptz FROM api_spike_refresh WHERE id = 1",
        {hour});
    if (force || done.rows() == 0 || done.get(0, 0) != "t") {
        keys = 0;
        std::string after = "00000000-0000-0000-0000-000000000000";
        for (;;) {
            pg::Result r = conn.exec(
                kRefreshSql, {hour, std::to_string(kBaselineHours),
                              std::to_string(kMinHistoryHours), after,
                              std::to_string(kRefreshBatch)});
            *keys += std::stoull(r.get(0, 1));
            std::optional<std::string> last = r.get_optional(0, 0);
            if (!last) break;
            after = *last;
            if (stop && stop->load()) return keys;
        }
        conn.exec(
            "INSERT INTO api_spike_refresh (id, hour) VALUES (1, $1)"
            " ON CONFLICT (id) DO UPDATE SET hour = greatest("
            "api_spike_refresh.hour, excluded.hour)",
            {hour});
    }
    conn.exec("SELECT pg_advisory_unlock($1::bigint)",
              {std::to_string(kRefreshLockKey)});
    return keys;
}

std::int64_t count_spiking(pg::Connection& conn, std::int64_t hour_us) {
    static const std::string sql =
        "SELECT count(*) FROM api_key_listing s WHERE " +
        spike_condition("$1", "$2", "$3");
    SpikeRule rule;
    pg::Result r = conn.exec(sql, {ts_param(hour_us), ratio_text(rule.ratio),
                                   std::to_string(rule.min)});
    return std::stoll(r.get(0, 0));
}

SpikeRefresher::SpikeRefresher(std::string conninfo, SpikeStats* stats)
    : conninfo_(std::move(conninfo)), stats_(stats) {}

void SpikeRefresher::run(const std::atomic<bool>& stop) {
    std::int64_t next_try = 0;
    while (!stop.load()) {
        std::int64_t now = now_us();
        if (now >= next_try) {
            try {
                step(now, stop);
            } catch (const std::exception& e) {
                log_warn(std::string("spikes: refresh failed, retrying in"
                                     " 30 s: ") +
                         e.what());
                next_try = now + kRetryUs;
            }
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
}

void SpikeRefresher::step(std::int64_t now, const std::atomic<bool>& stop) {
    // The hour whose aggregates are all in, by kRefreshDelayUs.
    std::int64_t hour = last_complete_hour(now - kRefreshDelayUs);
    bool due = hour > refreshed_hour_;
    if (!due && now < next_count_us_) return;
    // A session for the moment it is needed, not one more held per host.
    pg::Connection conn(conninfo_, "apikeyd-spikes");
    conn.exec("SET TimeZone = 'UTC'");
    if (due) {
        // Forced at start: the rollup may have changed while no node ran.
        std::int64_t started = now_us();
        if (auto keys =
                refresh_spikes(conn, hour, refreshed_hour_ < 0, &stop)) {
            log_info("spikes: hour " + format_rfc3339(hour) + " refreshed for " +
                     std::to_string(*keys) + " keys in " +
                     std::to_string((now_us() - started) / 1000) + " ms");
        }
        refreshed_hour_ = hour;
    }
    stats_->spiking.store(count_spiking(conn, hour));
    next_count_us_ = now + kCountEveryUs;
}

std::string format_spike_metrics(const SpikeStats& stats) {
    std::int64_t n = stats.spiking.load();
    if (n < 0) return "";
    return "# HELP apikey_keys_spiking Keys whose requests in the last"
           " complete UTC hour meet the spike rule (spike_ratio 5,"
           " spike_min 100), all orgs of the database; counted every minute.\n"
           "# TYPE apikey_keys_spiking gauge\n"
           "apikey_keys_spiking " +
           std::to_string(n) + "\n";
}

}  // namespace apikey::api
