// distinct_ips in the analytics API (docs/api.md): a key's distinct client
// addresses today and over the last 7 UTC days (the listing and the
// per-key view's "key"), and per day (series[].distinct_ips, interval=day),
// from api_key_distinct_ips (distinct_ips_write.h).
//
// One statement per page, after the listing's own: the page's key ids as
// one array on the table's primary key (key_id, day), at most 7 rows a
// key; the 7-day figure merges those days' sketches here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "analytics_queries.h"
#include "pg.h"

namespace apikey::api {

// Days counted by distinct_ips_7d: today and the 6 before.
inline constexpr int kDistinctIpsWindowDays = 7;

// Sets distinct_ips_today and distinct_ips_7d of keys[0..n) (keys of
// `org_id`) as of window.now_us.
void add_distinct_ips(pg::Connection& conn, const std::string& org_id,
                      KeySummary* keys, std::size_t n,
                      const CalendarWindow& window);

// The key's distinct addresses per UTC day with from <= day < to (day
// start, µs -> count); days without a row are absent.
std::map<std::int64_t, std::uint64_t> query_distinct_ips_by_day(
    pg::Connection& conn, const std::string& org_id, const std::string& key_id,
    std::int64_t from_us, std::int64_t to_us);

// Sets distinct_ips on every point of a day series (0 where `by_day` has
// no such day).
void fill_distinct_ips(std::vector<SeriesPoint>* series,
                       const std::map<std::int64_t, std::uint64_t>& by_day);

}  // namespace apikey::api
