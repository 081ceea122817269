// The spike rule (analytics_spikes): the last complete hour, the baseline's
// hours for young and old keys, the rule, and the per-key view's spike
// hours each against its own baseline. PostgreSQL's side runs in t/035.
#include "analytics_spikes.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <vector>

namespace apikey::api {
namespace {

constexpr std::int64_t kHour = kApiUsPerHour;
// 2024-05-15T10:00:00Z, an hour's start.
constexpr std::int64_t kH = 1715767200LL * kUsPerSecond;

TEST(SpikeRule, TheLastCompleteHourIsTheOneBeforeNow) {
    EXPECT_EQ(last_complete_hour(kH + 30 * 60 * kUsPerSecond), kH - kHour);
    EXPECT_EQ(last_complete_hour(kH), kH - kHour);
    EXPECT_EQ(last_complete_hour(kH - 1), kH - 2 * kHour);
}

TEST(SpikeRule, BaselineHoursCountFromTheCreationHourUpTo7Days) {
    // Under 24 h of history at the hour's start: none.
    EXPECT_FALSE(baseline_hours(kH - 23 * kHour, kH));
    EXPECT_FALSE(baseline_hours(kH - 24 * kHour + 1, kH));
    EXPECT_EQ(baseline_hours(kH - 24 * kHour, kH), 24);
    // Created inside an hour: that hour counts.
    EXPECT_EQ(baseline_hours(kH - 72 * kHour - 1, kH), 73);
    EXPECT_EQ(baseline_hours(kH - 72 * kHour + 600 * kUsPerSecond, kH), 72);
    EXPECT_EQ(baseline_hours(kH - 167 * kHour, kH), 167);
    EXPECT_EQ(baseline_hours(kH - 168 * kHour, kH), 168);
    EXPECT_EQ(baseline_hours(kH - 1000 * kHour, kH), 168);
}

TEST(SpikeRule, RatioAndMinimumBothApply) {
    SpikeRule rule;  // 5x, 100
    EXPECT_TRUE(is_spike(120, 20.0, rule));    // 6x
    EXPECT_FALSE(is_spike(120, 30.0, rule));   // 4x
    EXPECT_TRUE(is_spike(100, 20.0, rule));    // exactly 5x and the minimum
    EXPECT_FALSE(is_spike(99, 1.0, rule));     // under spike_min
    EXPECT_FALSE(is_spike(500, std::nullopt, rule));  // no baseline
    EXPECT_TRUE(is_spike(100, 0.0, rule));     // from nothing
    SpikeRule zero{5.0, 0};
    EXPECT_FALSE(is_spike(0, 0.0, zero));      // an hour without requests
    EXPECT_TRUE(is_spike(1, 0.0, zero));
    EXPECT_TRUE(is_spike(12, 2.0, zero));
}

TEST(SpikeRule, RatioTextReadsBackExactly) {
    for (double r : {5.0, 2.5, 1.0001, 1000.0, 1.1, 3.3333333333333335}) {
        EXPECT_EQ(std::strtod(ratio_text(r).c_str(), nullptr), r);
    }
    EXPECT_EQ(ratio_text(5.0), "5");
    EXPECT_EQ(ratio_text(2.5), "2.5");
    EXPECT_EQ(ratio_text(1.1), "1.1");
}

TEST(SpikeRule, TheSqlConditionNamesItsParameters) {
    std::string c = spike_condition("$5", "$6", "$7");
    EXPECT_EQ(c,
              "(s.hour = $5::timestamptz AND s.requests_hour >= "
              "greatest($7::bigint, 1) AND s.baseline_hourly IS NOT NULL AND "
              "s.requests_hour >= $6::float8 * s.baseline_hourly)");
}

// A key with `per` requests in every hour of [from, to).
void fill(std::vector<HourTotal>* out, std::int64_t from, std::int64_t to,
          std::int64_t per) {
    for (std::int64_t t = from; t < to; t += kHour) out->push_back({t, per});
}

TEST(FindSpikes, EachHourAgainstItsOwnBaseline) {
    std::int64_t created = kH - 400 * kHour;
    std::vector<HourTotal> hours;
    fill(&hours, kH - 200 * kHour, kH - 2 * kHour, 20);
    hours.push_back({kH - 2 * kHour, 120});  // 6x 20
    hours.push_back({kH - kHour, 130});      // against (167x20 + 120) / 168
    SpikeRule rule;
    std::vector<SpikeHour> s =
        find_spikes(hours, created, kH - 3 * kHour, kH + kHour,
                    kH + 10 * kUsPerSecond, rule);
    ASSERT_EQ(s.size(), 2u);
    EXPECT_EQ(s[0].t_us, kH - 2 * kHour);
    EXPECT_EQ(s[0].requests, 120);
    EXPECT_DOUBLE_EQ(s[0].baseline_hourly, 20.0);
    EXPECT_DOUBLE_EQ(*s[0].ratio, 6.0);
    EXPECT_EQ(s[1].t_us, kH - kHour);
    EXPECT_DOUBLE_EQ(s[1].baseline_hourly, (167 * 20 + 120) / 168.0);
}

TEST(FindSpikes, TheCurrentHourAndHoursOutsideTheRangeAreNotEvaluated) {
    std::int64_t created = kH - 400 * kHour;
    std::vector<HourTotal> hours;
    fill(&hours, kH - 200 * kHour, kH - kHour, 10);
    hours.push_back({kH - kHour, 500});
    hours.push_back({kH, 900});  // the current hour at now
    SpikeRule rule;
    std::int64_t now = kH + 30 * 60 * kUsPerSecond;
    std::vector<SpikeHour> s =
        find_spikes(hours, created, kH - 5 * kHour, kH + 5 * kHour, now, rule);
    ASSERT_EQ(s.size(), 1u);
    EXPECT_EQ(s[0].t_us, kH - kHour);
    // A range that ends before the spike hour, or starts after it.
    EXPECT_TRUE(
        find_spikes(hours, created, kH - 5 * kHour, kH - kHour, now, rule)
            .empty());
    EXPECT_TRUE(find_spikes(hours, created, kH, kH + 5 * kHour, now, rule)
                    .empty());
    // A range starting inside the hour: that hour is not a bucket of it.
    EXPECT_TRUE(find_spikes(hours, created, kH - kHour + 1, kH + kHour, now,
                            rule)
                    .empty());
}

TEST(FindSpikes, AYoungKeyAveragesOnlyItsOwnHoursAndANewOneNeverSpikes) {
    SpikeRule rule;
    // 3 days old: 72 hours of 20, then 120 = 6x (over 168 hours it would
    // look like 14x of 8.6).
    std::int64_t created = kH - 73 * kHour + 600 * kUsPerSecond;
    std::vector<HourTotal> hours;
    fill(&hours, kH - 73 * kHour, kH - kHour, 20);
    hours.push_back({kH - kHour, 120});
    std::vector<SpikeHour> s =
        find_spikes(hours, created, kH - kHour, kH, kH + 1, rule);
    ASSERT_EQ(s.size(), 1u);
    EXPECT_DOUBLE_EQ(s[0].baseline_hourly, 20.0);
    // 20 hours old: no baseline, whatever it does.
    created = kH - 21 * kHour;
    hours = {{kH - 21 * kHour, 1}, {kH - kHour, 100000}};
    EXPECT_TRUE(find_spikes(hours, created, kH - kHour, kH, kH + 1, rule)
                    .empty());
}

TEST(FindSpikes, FromNothingTheRatioIsNull) {
    std::vector<HourTotal> hours = {{kH - kHour, 150}};
    std::vector<SpikeHour> s = find_spikes(hours, kH - 500 * kHour,
                                           kH - kHour, kH, kH + 1, SpikeRule{});
    ASSERT_EQ(s.size(), 1u);
    EXPECT_EQ(s[0].baseline_hourly, 0.0);
    EXPECT_FALSE(s[0].ratio);
}

TEST(FindSpikes, TheWindowStartsSevenDaysBeforeTheRangesFirstHour) {
    EXPECT_EQ(spike_window_start(kH + 5), kH - 168 * kHour);
    EXPECT_EQ(spike_window_start(kH), kH - 168 * kHour);
}

}  // namespace
}  // namespace apikey::api
