#include "partitions.h"

#include <gtest/gtest.h>

namespace apikey {
namespace {

constexpr std::int64_t kUs = 1000000;
constexpr MonthIndex month(int year, int m) { return year * 12 + (m - 1); }

TEST(Partitions, MonthOfATimeIsUtc) {
    EXPECT_EQ(month_of_us(0), month(1970, 1));
    EXPECT_EQ(month_of_us(-1), month(1969, 12));
    // 2024-02-29T23:59:59.999999Z and the next microsecond.
    EXPECT_EQ(month_of_us(1709251200LL * kUs - 1), month(2024, 2));
    EXPECT_EQ(month_of_us(1709251200LL * kUs), month(2024, 3));
    // 2025-12-31T23:59:59.999999Z and 2026-01-01.
    EXPECT_EQ(month_of_us(1767225600LL * kUs - 1), month(2025, 12));
    EXPECT_EQ(month_of_us(1767225600LL * kUs), month(2026, 1));
}

TEST(Partitions, MonthStartRoundTrips) {
    EXPECT_EQ(month_start_us(month(1970, 1)), 0);
    EXPECT_EQ(month_start_us(month(2024, 3)), 1709251200LL * kUs);
    for (MonthIndex m = month(1999, 1); m < month(2031, 1); ++m) {
        EXPECT_EQ(month_of_us(month_start_us(m)), m);
        EXPECT_EQ(month_of_us(month_start_us(m) - 1), m - 1);
    }
}

TEST(Partitions, NamesAndDates) {
    EXPECT_EQ(usage_partition_name(month(2025, 1)), "api_key_usage_y2025m01");
    EXPECT_EQ(usage_partition_name(month(2025, 12)), "api_key_usage_y2025m12");
    EXPECT_EQ(month_first_day(month(2025, 7)), "2025-07-01");
    EXPECT_EQ(parse_usage_partition_name("api_key_usage_y2025m07"),
              month(2025, 7));
    for (const char* bad :
         {"api_key_usage", "api_key_usage_y2025m13", "api_key_usage_y2025m00",
          "api_key_usage_y2025_07", "api_key_usage_y25m07",
          "api_key_usage_y2025m07x", "api_key_usage_default"}) {
        EXPECT_FALSE(parse_usage_partition_name(bad).has_value()) << bad;
    }
}

TEST(Partitions, PlanCreatesAheadAndDropsPastRetention) {
    const MonthIndex now = month(2025, 3);
    PartitionPlan plan = plan_partitions(
        now, 13,
        {month(2023, 12), month(2024, 1), month(2024, 2), month(2025, 3)});
    EXPECT_EQ(plan.create,
              (std::vector<MonthIndex>{month(2025, 4), month(2025, 5)}));
    // Retention 13: 2024-02 .. 2025-03 stay.
    EXPECT_EQ(plan.drop,
              (std::vector<MonthIndex>{month(2023, 12), month(2024, 1)}));

    PartitionPlan nothing = plan_partitions(
        now, 13, {month(2025, 3), month(2025, 4), month(2025, 5)});
    EXPECT_TRUE(nothing.create.empty());
    EXPECT_TRUE(nothing.drop.empty());
}

TEST(Partitions, RawRowsKeptInsideTheWindowOnly) {
    const MonthIndex now = month(2025, 3);
    EXPECT_TRUE(raw_month_kept(now, now, 13));
    EXPECT_TRUE(raw_month_kept(month(2024, 2), now, 13));
    EXPECT_FALSE(raw_month_kept(month(2024, 1), now, 13));
    EXPECT_TRUE(raw_month_kept(month(2025, 5), now, 13));
    EXPECT_FALSE(raw_month_kept(month(2025, 6), now, 13));
    EXPECT_FALSE(raw_month_kept(month(2099, 1), now, 13));
}

TEST(Partitions, RetentionStartsAtTheOldestKeptMonth) {
    // 2024-03-15T12:00:00Z with 13 months kept: from 2023-02-01.
    const std::int64_t now = 1710504000LL * kUs;
    EXPECT_EQ(retention_start_us(now, 13), month_start_us(month(2023, 2)));
    EXPECT_EQ(retention_start_us(now, 0), month_start_us(month(2024, 3)));
    EXPECT_TRUE(raw_month_kept(month_of_us(retention_start_us(now, 13)),
                               month_of_us(now), 13));
    EXPECT_FALSE(raw_month_kept(
        month_of_us(retention_start_us(now, 13) - 1), month_of_us(now), 13));
}

}  // namespace
}  // namespace apikey
