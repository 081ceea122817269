// Monthly partitions of api_key_usage: api_key_usage_yYYYYmMM holds the UTC
// month [YYYY-MM-01, next month). apikeyd keeps the current month and the
// next kPartitionMonthsAhead ones created, and drops a month's partition
// once it lies entirely before the retention window (the current month and
// the retention_months months before it).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace apikey {

namespace pg {
class Connection;
}

inline constexpr int kPartitionMonthsAhead = 2;

// A month as year * 12 + (month - 1), UTC.
using MonthIndex = std::int64_t;

MonthIndex month_of_us(std::int64_t time_us) noexcept;
std::int64_t month_start_us(MonthIndex month) noexcept;
// "YYYY-MM-01", a date parameter.
std::string month_first_day(MonthIndex month);
// "api_key_usage_yYYYYmMM".
std::string usage_partition_name(MonthIndex month);
std::optional<MonthIndex> parse_usage_partition_name(std::string_view name);

// Raw rows of `month` are stored: it is within the retention window or at
// most kPartitionMonthsAhead ahead of `current` (a record further ahead
// comes from a wrong clock, and one behind is already past retention).
bool raw_month_kept(MonthIndex month, MonthIndex current,
                    int retention_months) noexcept;

// The start of the retention window: the first day of the oldest month
// whose raw rows are kept. Ring offsets last advanced before it are pruned.
std::int64_t retention_start_us(std::int64_t now_us,
                                int retention_months) noexcept;

struct PartitionPlan {
    std::vector<MonthIndex> create;  // ascending
    std::vector<MonthIndex> drop;    // ascending
};
PartitionPlan plan_partitions(MonthIndex current, int retention_months,
                              const std::vector<MonthIndex>& existing);

// --- against the database (each runs its own transaction; pg::Error) ------

// Months that have a partition named as above (others are ignored).
std::vector<MonthIndex> list_usage_partitions(pg::Connection& conn);

// Creates what plan_partitions() says is missing and drops what it says is
// past retention, under an advisory lock shared by every node, with a short
// lock_timeout (attaching and dropping partitions lock the parent table).
// Appends the partitions' names to created / dropped (either may be null).
// Returns the months that exist afterwards.
std::vector<MonthIndex> maintain_usage_partitions(
    pg::Connection& conn, std::int64_t now_us, int retention_months,
    std::vector<std::string>* created, std::vector<std::string>* dropped);

// Creates the partitions of these months if missing (same lock); returns
// the names created.
std::vector<std::string> ensure_usage_partitions(
    pg::Connection& conn, const std::vector<MonthIndex>& months);

}  // namespace apikey
