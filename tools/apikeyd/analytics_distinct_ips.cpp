#include "analytics_distinct_ips.h"

#include <algorithm>
#include <unordered_map>

#include "hll_sketch.h"

namespace apikey::api {
namespace {

std::string date_param(std::int64_t us) {
    return format_rfc3339(us).substr(0, 10);
}

struct Merged {
    HllSketch sketch;
    std::uint64_t today = 0;
    std::uint64_t largest_day = 0;  // a pruned day's floor
};

}  // namespace

void add_distinct_ips(pg::Connection& conn, const std::string& org_id,
                      KeySummary* keys, std::size_t n,
                      const CalendarWindow& window) {
    if (n == 0) return;
    std::vector<std::string> ids;
    ids.reserve(n);
    for (std::size_t i = 0; i < n; ++i) ids.push_back(keys[i].key.key_id);
    const pg::Result r = conn.exec(
        "SELECT key_id::text, day = $3::date, ips, sketch"
        " FROM api_key_distinct_ips"
        " WHERE key_id = ANY($2::uuid[]) AND org_id = $1::uuid"
        " AND day > $3::date - $4::int AND day <= $3::date",
        {org_id, pg::text_array_param(ids), date_param(window.day_start_us),
         std::to_string(kDistinctIpsWindowDays)});
    std::unordered_map<std::string, Merged> by_key;
    for (int row = 0; row < r.rows(); ++row) {
        Merged& m = by_key[r.get(row, 0)];
        const std::uint64_t ips = r.get_u64(row, 2);
        if (r.get(row, 1) == "t") m.today = ips;
        m.largest_day = std::max(m.largest_day, ips);
        if (!r.is_null(row, 3) &&
            !m.sketch.merge_stored(pg::bytea_from_text(r.get(row, 3)))) {
            throw std::runtime_error("stored sketch is not a sketch");
        }
    }
    for (std::size_t i = 0; i < n; ++i) {
        auto it = by_key.find(keys[i].key.key_id);
        if (it == by_key.end()) continue;
        const Merged& m = it->second;
        keys[i].distinct_ips_today = static_cast<std::int64_t>(m.today);
        keys[i].distinct_ips_7d = static_cast<std::int64_t>(
            std::max(m.sketch.estimate(), m.largest_day));
    }
}

std::map<std::int64_t, std::uint64_t> query_distinct_ips_by_day(
    pg::Connection& conn, const std::string& org_id, const std::string& key_id,
    std::int64_t from_us, std::int64_t to_us) {
    const pg::Result r = conn.exec(
        "SELECT (extract(epoch FROM day::timestamp) * 1000000)::bigint, ips"
        " FROM api_key_distinct_ips WHERE key_id = $1::uuid"
        " AND org_id = $2::uuid AND day >= $3::timestamptz::date"
        " AND day <= $4::timestamptz::date",
        {key_id, org_id, format_rfc3339(from_us, TimePrecision::kMicros),
         format_rfc3339(to_us, TimePrecision::kMicros)});
    std::map<std::int64_t, std::uint64_t> out;
    for (int row = 0; row < r.rows(); ++row) {
        out[std::stoll(r.get(row, 0))] = r.get_u64(row, 1);
    }
    return out;
}

void fill_distinct_ips(std::vector<SeriesPoint>* series,
                       const std::map<std::int64_t, std::uint64_t>& by_day) {
    for (SeriesPoint& p : *series) {
        auto it = by_day.find(p.t_us);
        p.distinct_ips = it == by_day.end() ? 0 : it->second;
    }
}

}  // namespace apikey::api
