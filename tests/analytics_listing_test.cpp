// The listing's statement (analytics_listing): which index order, which
// conditions, and every value bound in order. PostgreSQL runs it in t/033.
#include "analytics_listing.h"

#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <vector>

namespace apikey::api {
namespace {

const std::string kOrg = "11111111-1111-4111-8111-111111111111";
// 2024-05-15T10:30:00Z
const CalendarWindow kWindow = CalendarWindow::at(1715769000LL * kUsPerSecond);

bool has(const std::string& sql, const std::string& part) {
    return sql.find(part) != std::string::npos;
}

TEST(ListingQuery, FirstPageOfTheDefaultSort) {
    ListingQuery q = build_listing(kOrg, OrgUsageParams{}, {}, kWindow);
    EXPECT_TRUE(has(q.sql, "ORDER BY k.created_at ASC, k.id ASC LIMIT $6::int"));
    EXPECT_FALSE(has(q.sql, "s.org_id"));  // api_keys' index serves it
    EXPECT_EQ(q.params,
              (std::vector<pg::Param>{kOrg, "30", "2024-05-15", "2024-05-01",
                                      "2024-05-15T09:00:00.000000Z", "101"}));
}

TEST(ListingQuery, APageAfterAPositionDescending) {
    OrgUsageParams p;
    p.sort = ListSort::kRequestsToday;
    p.descending = true;
    p.limit = 10;
    ListingQuery q =
        build_listing(kOrg, p, {"2024-05-15", "7", "k-id"}, kWindow);
    EXPECT_TRUE(has(q.sql, " AND s.org_id = $1::uuid"));
    EXPECT_TRUE(has(q.sql, "AND (s.day, s.requests_day, s.key_id) < "
                           "($6::date, $7::bigint, $8::uuid)"));
    EXPECT_TRUE(has(q.sql, "ORDER BY s.day DESC, s.requests_day DESC, "
                           "s.key_id DESC LIMIT $9::int"));
    EXPECT_EQ(q.params.back(), pg::Param("11"));
}

TEST(ListingQuery, APositionOfAnotherSortIsRefused) {
    OrgUsageParams p;
    p.sort = ListSort::kName;
    EXPECT_THROW(build_listing(kOrg, p, {"a", "b", "c"}, kWindow),
                 std::invalid_argument);
    EXPECT_EQ(position_size(ListSort::kName), 2u);
    EXPECT_EQ(position_size(ListSort::kRequestsThisMonth), 3u);
}

TEST(ListingQuery, QueryIsABoundPrefixPatternWithLikeCharactersEscaped) {
    OrgUsageParams p;
    p.q = "a_b%c\\";
    ListingQuery q = build_listing(kOrg, p, {}, kWindow);
    EXPECT_TRUE(has(q.sql, "lower(k.name) LIKE lower($6)"));
    EXPECT_TRUE(has(q.sql, "k.hint LIKE $6"));
    EXPECT_EQ(q.params[5], pg::Param("a\\_b\\%c\\\\%"));
}

TEST(ListingQuery, FiltersAddTheirConditions) {
    OrgUsageParams p;
    p.status = ListStatus::kExpired;
    p.dormant = ListDormant::kNo;
    ListingQuery q = build_listing(kOrg, p, {}, kWindow);
    EXPECT_TRUE(has(q.sql, "k.revoked_at IS NULL AND k.expires_at <= now()"));
    EXPECT_TRUE(has(q.sql, "AND NOT (coalesce(k.last_used_at, k.created_at)"));

    p.status = ListStatus::kRevoked;
    p.dormant = ListDormant::kYes;
    p.dormant_days = 7;
    q = build_listing(kOrg, p, {}, kWindow);
    EXPECT_TRUE(has(q.sql, "k.revoked_at IS NOT NULL"));
    // The rule, and the last-used range a day wider than it.
    EXPECT_TRUE(has(q.sql, " AND s.org_id = $1::uuid"));
    EXPECT_TRUE(has(q.sql, "AND s.last_used_at < $6::timestamptz"));
    EXPECT_EQ(q.params[5], pg::Param("2024-05-09T10:30:00.000000Z"));
}

TEST(ListingQuery, SortByTheLastHourReadsTheHourIndex) {
    OrgUsageParams p;
    p.sort = ListSort::kRequestsLastHour;
    p.descending = true;
    ListingQuery q = build_listing(
        kOrg, p, {"2024-05-15 09:00:00+00", "7", "k-id"}, kWindow);
    EXPECT_TRUE(has(q.sql, " AND s.org_id = $1::uuid"));
    EXPECT_TRUE(has(q.sql, "AND (s.hour, s.requests_hour, s.key_id) < "
                           "($6::timestamptz, $7::bigint, $8::uuid)"));
    EXPECT_TRUE(has(q.sql, "ORDER BY s.hour DESC, s.requests_hour DESC, "
                           "s.key_id DESC LIMIT $9::int"));
    EXPECT_EQ(position_size(ListSort::kRequestsLastHour), 3u);
}

TEST(ListingQuery, SpikeFilterBindsTheRuleAgainstTheLastHour) {
    OrgUsageParams p;
    p.spike = ListDormant::kYes;
    p.spike_rule = {2.5, 40};
    ListingQuery q = build_listing(kOrg, p, {}, kWindow);
    // The hour index's org condition, and the rule over the hour ($5).
    EXPECT_TRUE(has(q.sql, " AND s.org_id = $1::uuid"));
    EXPECT_TRUE(has(q.sql, " AND (s.hour = $5::timestamptz AND "
                           "s.requests_hour >= greatest($7::bigint, 1)"));
    EXPECT_TRUE(has(q.sql, "s.requests_hour >= $6::float8 * s.baseline_hourly"));
    EXPECT_EQ(q.params[4], pg::Param("2024-05-15T09:00:00.000000Z"));
    EXPECT_EQ(q.params[5], pg::Param("2.5"));
    EXPECT_EQ(q.params[6], pg::Param("40"));

    p.spike = ListDormant::kNo;
    q = build_listing(kOrg, p, {}, kWindow);
    EXPECT_TRUE(has(q.sql, " AND NOT (s.hour = $5::timestamptz"));
    EXPECT_FALSE(has(q.sql, "s.org_id"));
}

}  // namespace
}  // namespace apikey::api
