#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <vector>

#include "analytics_api.h"
#include "analytics_distinct_ips.h"
#include "analytics_queries.h"

namespace apikey::api {
namespace {

constexpr std::int64_t kDay = kApiUsPerDay;
constexpr std::int64_t kT0 = 1714521600LL * 1000000;  // 2024-05-01T00:00:00Z

UsageRow row(std::int64_t bucket, const char* endpoint, const char* method,
             std::uint64_t requests, std::uint64_t e4, std::uint64_t e5,
             std::uint64_t latency_us) {
    UsageRow r;
    r.bucket_us = bucket;
    r.endpoint = endpoint;
    r.method = method;
    r.requests = requests;
    r.errors_4xx = e4;
    r.errors_5xx = e5;
    r.response_time_ms_sum =
        static_cast<double>(requests) * static_cast<double>(latency_us) / 1000;
    r.latency_hist.add(latency_bucket(latency_us), requests);
    return r;
}

std::vector<std::int64_t> days(int n) {
    return series_buckets(kT0, kT0 + n * kDay, Interval::kDay);
}

TEST(SummarizeUsage, EveryBucketAppearsEmptyOnesAsZero) {
    std::vector<UsageRow> rows = {row(kT0 + kDay, "/a", "GET", 4, 1, 0, 10000)};
    UsageSummary s = summarize_usage(rows, days(3), 10);
    ASSERT_EQ(s.series.size(), 3u);
    EXPECT_EQ(s.series[0].t_us, kT0);
    EXPECT_EQ(s.series[0].totals.requests, 0u);
    EXPECT_FALSE(s.series[0].totals.avg_ms());
    EXPECT_FALSE(s.series[0].totals.p95_ms());
    EXPECT_EQ(s.series[1].totals.requests, 4u);
    EXPECT_EQ(s.series[1].totals.errors_4xx, 1u);
    EXPECT_DOUBLE_EQ(*s.series[1].totals.avg_ms(), 10.0);
    EXPECT_EQ(s.series[2].totals.requests, 0u);
}

TEST(SummarizeUsage, SumsEndpointsPerBucketAndRanksTopEndpoints) {
    std::vector<UsageRow> rows = {
        row(kT0, "/a", "GET", 10, 0, 1, 1000),
        row(kT0, "/b", "GET", 5, 5, 0, 3000),
        row(kT0 + kDay, "/a", "GET", 10, 0, 1, 1000),
        row(kT0 + kDay, "/a", "POST", 20, 2, 0, 2000),
        row(kT0 + kDay, "/c", "GET", 5, 0, 0, 1000),
    };
    UsageSummary s = summarize_usage(rows, days(2), 10);
    EXPECT_EQ(s.series[0].totals.requests, 15u);
    EXPECT_EQ(s.series[1].totals.requests, 35u);
    EXPECT_EQ(s.totals.requests, 50u);
    EXPECT_EQ(s.totals.errors_4xx, 7u);
    EXPECT_EQ(s.totals.errors_5xx, 2u);
    EXPECT_DOUBLE_EQ(s.totals.rate_4xx(), 7.0 / 50);
    EXPECT_DOUBLE_EQ(s.totals.rate_5xx(), 2.0 / 50);

    ASSERT_EQ(s.top.size(), 4u);
    // 20 (/a GET) and 20 (/a POST) tie: endpoint, then method, ascending.
    EXPECT_EQ(s.top[0].endpoint, "/a");
    EXPECT_EQ(s.top[0].method, "GET");
    EXPECT_EQ(s.top[0].totals.requests, 20u);
    EXPECT_EQ(s.top[1].method, "POST");
    EXPECT_EQ(s.top[2].endpoint, "/b");  // 5 and 5: /b before /c
    EXPECT_EQ(s.top[3].endpoint, "/c");
    EXPECT_DOUBLE_EQ(*s.top[1].totals.avg_ms(), 2.0);

    EXPECT_EQ(summarize_usage(rows, days(2), 1).top.size(), 1u);
}

TEST(SummarizeUsage, RowsOutsideTheBucketsAreIgnored) {
    std::vector<UsageRow> rows = {
        row(kT0 - kDay, "/a", "GET", 3, 0, 0, 1000),
        row(kT0 + 5 * kDay, "/a", "GET", 3, 0, 0, 1000),
        row(kT0 + 1, "/a", "GET", 3, 0, 0, 1000)};
    UsageSummary s = summarize_usage(rows, days(2), 10);
    EXPECT_EQ(s.totals.requests, 0u);
    EXPECT_TRUE(s.top.empty());
}

TEST(SummarizeUsage, P95ComesFromTheSummedHistograms) {
    // 95 fast requests on one day, 5 slow on the next: p95 over both days
    // lies in the fast bucket, while the second day alone is all slow.
    std::vector<UsageRow> rows = {
        row(kT0, "/a", "GET", 95, 0, 0, 1000),
        row(kT0 + kDay, "/a", "GET", 5, 0, 0, 500000)};
    UsageSummary s = summarize_usage(rows, days(2), 10);
    double p95 = *s.totals.p95_ms();
    EXPECT_GE(p95, latency_bucket_lower_us(latency_bucket(1000)) / 1000.0);
    EXPECT_LE(p95, latency_bucket_upper_us(latency_bucket(1000)) / 1000.0);
    double day2 = *s.series[1].totals.p95_ms();
    EXPECT_NEAR(day2, 500.0, 500.0 * 0.1);
}

TEST(SummarizeUsage, NoRowsNoRequests) {
    UsageSummary s = summarize_usage({}, days(30), 10);
    EXPECT_EQ(s.series.size(), 30u);
    EXPECT_FALSE(s.totals.avg_ms());
    EXPECT_FALSE(s.totals.p95_ms());
    EXPECT_EQ(s.totals.rate_4xx(), 0.0);
    EXPECT_EQ(s.totals.rate_5xx(), 0.0);
}

// --- the session pool, without a server

constexpr const char* kNoServer = "host=127.0.0.1 port=1 connect_timeout=2";

TEST(ConnectionPool, AFailedConnectGivesItsSlotBack) {
    ConnectionPool pool(kNoServer, 1, std::chrono::milliseconds(50));
    for (int i = 0; i < 2; ++i) {
        // pg::Error both times: the first failure did not keep the one slot.
        EXPECT_THROW(pool.acquire(), pg::Error);
        EXPECT_EQ(pool.open_sessions(), 0u);
    }
    pool.discard_idle();
    EXPECT_EQ(pool.open_sessions(), 0u);
}

TEST(ConnectionPool, NoFreeSessionWithinTheWaitIsPoolExhausted) {
    ConnectionPool pool(kNoServer, 0, std::chrono::milliseconds(50));
    auto t0 = std::chrono::steady_clock::now();
    EXPECT_THROW(pool.acquire(), PoolExhausted);
    EXPECT_GE(std::chrono::steady_clock::now() - t0,
              std::chrono::milliseconds(50));
}

TEST(CompleteUntil, NowWhenNothingIsHeldBack) {
    CaptureState c;
    c.segment_attached = true;
    c.newest_committed_us = 5;
    EXPECT_EQ(complete_until_us(c, 100), 100);
}

TEST(CompleteUntil, NewestCommittedWhileRecordsWait) {
    CaptureState c;
    c.segment_attached = true;
    c.newest_committed_us = 50;
    c.ring_records = 3;
    EXPECT_EQ(complete_until_us(c, 100), 50);
    c.ring_records = 0;
    c.spool_bytes = 4096;  // PostgreSQL was down: the spool holds batches
    EXPECT_EQ(complete_until_us(c, 100), 50);
    c.spool_bytes = 0;
    c.segment_attached = false;  // rings not visible: cannot vouch for them
    EXPECT_EQ(complete_until_us(c, 100), 50);
}

TEST(CompleteUntil, UnknownWhenNothingWasCommitted) {
    CaptureState c;
    c.segment_attached = true;
    c.ring_records = 1;
    EXPECT_FALSE(complete_until_us(c, 100));
}

TEST(KeyUsageJson, HasEveryContractFieldInOrder) {
    KeySummary k;
    k.key.key_id = "0b6e1c9a-8a5e-4c3e-9d2e-1f0a2b3c4d5e";
    k.key.name = "svc";
    k.key.hint = "ak_AbCd";
    k.key.scopes_json = R"(["usage:read"])";
    k.key.status = "active";
    k.key.created_at = "2024-05-01T00:00:00Z";
    k.key.request_count = 7;
    k.key.dormant = true;
    k.requests_today = 2;
    k.requests_this_month = 7;
    std::vector<UsageRow> rows = {row(kT0, "/a", "GET", 7, 1, 2, 1500)};
    Json j = key_usage_json(k, summarize_usage(rows, days(2), 10), {}, {});

    std::vector<std::string> fields;
    for (auto& [name, value] : j.items()) fields.push_back(name);
    EXPECT_EQ(fields, (std::vector<std::string>{
                          "key", "requests_today", "requests_this_month",
                          "series", "top_endpoints", "error_rate", "avg_ms",
                          "p95_ms", "spikes"}));
    std::vector<std::string> key_fields;
    for (auto& [name, value] : j["key"].items()) key_fields.push_back(name);
    EXPECT_EQ(key_fields,
              (std::vector<std::string>{
                  "key_id", "name", "hint", "scopes", "status", "created_at",
                  "expires_at", "last_used_at", "last_used_ip", "request_count",
                  "requests_today", "requests_this_month", "dormant",
                  "requests_last_hour", "baseline_hourly", "spike",
                  "distinct_ips_today", "distinct_ips_7d"}));
    EXPECT_TRUE(j["key"]["expires_at"].is_null());
    EXPECT_EQ(j["key"]["scopes"], Json::array({"usage:read"}));
    EXPECT_EQ(j["series"].size(), 2u);
    EXPECT_EQ(j["series"][0]["t"], "2024-05-01T00:00:00Z");
    EXPECT_EQ(j["series"][0]["requests"], 7);
    EXPECT_EQ(j["series"][0]["avg_ms"], 1.5);
    EXPECT_TRUE(j["series"][1]["avg_ms"].is_null());
    EXPECT_TRUE(j["series"][1]["p95_ms"].is_null());
    EXPECT_EQ(j["series"][1]["requests"], 0);
    EXPECT_EQ(j["top_endpoints"][0]["endpoint"], "/a");
    EXPECT_EQ(j["top_endpoints"][0]["errors_5xx"], 2);
    EXPECT_DOUBLE_EQ(j["error_rate"]["4xx"].get<double>(), 1.0 / 7);
    EXPECT_DOUBLE_EQ(j["error_rate"]["5xx"].get<double>(), 2.0 / 7);
    EXPECT_EQ(j["avg_ms"], 1.5);
    // Not a day series with distinct_ips filled: no such field.
    EXPECT_FALSE(j["series"][0].contains("distinct_ips"));
}

TEST(KeyUsageJson, DaySeriesCarriesDistinctIps) {
    KeySummary k;
    k.key.scopes_json = "[]";
    k.distinct_ips_today = 3;
    k.distinct_ips_7d = 5;
    UsageSummary usage = summarize_usage({}, days(3), 10);
    fill_distinct_ips(&usage.series, {{kT0 + kApiUsPerDay, 3}});
    Json j = key_usage_json(k, usage, {}, {});
    EXPECT_EQ(j["key"]["distinct_ips_today"], 3);
    EXPECT_EQ(j["key"]["distinct_ips_7d"], 5);
    std::vector<std::string> point_fields;
    for (auto& [name, value] : j["series"][1].items()) {
        point_fields.push_back(name);
    }
    EXPECT_EQ(point_fields, (std::vector<std::string>{
                                "t", "requests", "errors_4xx", "errors_5xx",
                                "avg_ms", "p95_ms", "distinct_ips"}));
    EXPECT_EQ(j["series"][0]["distinct_ips"], 0);
    EXPECT_EQ(j["series"][1]["distinct_ips"], 3);
    EXPECT_EQ(j["series"][2]["distinct_ips"], 0);
}

}  // namespace
}  // namespace apikey::api
