// Rollups built from workers' aggregate entries (rollup_aggregates).
#include <cstring>
#include <random>

#include <gtest/gtest.h>

#include "rollup.h"

namespace apikey {
namespace {

// 2024-01-02T00:00:00Z
constexpr std::int64_t kJan2Us = 1704153600LL * 1000000;

Uuid make_uuid(std::uint8_t tag) {
    Uuid u{};
    u.fill(tag);
    return u;
}

AggregateEntry make_entry(std::uint8_t key, std::int64_t hour_us,
                          std::string endpoint = "/items",
                          std::string method = "GET") {
    AggregateEntry e;
    Uuid k = make_uuid(key);
    std::memcpy(e.key_id.data(), k.data(), 16);
    e.hour_us = hour_us;
    e.endpoint = std::move(endpoint);
    e.method = std::move(method);
    e.last_used_us = hour_us + 1;
    e.ip_family = IpFamily::kV4;
    e.ip[0] = 10;
    e.ip[3] = key;
    return e;
}

// n requests of status `status` taking `us` each.
void count(AggregateEntry* e, std::uint64_t n, std::uint16_t status,
           std::uint64_t us) {
    e->requests += n;
    switch (status_class(status)) {
    case StatusClass::k2xx: e->status_2xx += n; break;
    case StatusClass::k3xx: e->status_3xx += n; break;
    case StatusClass::k4xx: e->status_4xx += n; break;
    case StatusClass::k5xx: e->status_5xx += n; break;
    case StatusClass::kOther: e->status_other += n; break;
    }
    e->response_time_us_sum += n * us;
    const auto b = static_cast<std::uint16_t>(latency_bucket(us));
    for (auto& cell : e->latency) {
        if (cell.first == b) {
            cell.second += n;
            return;
        }
    }
    e->latency.emplace_back(b, n);
}

std::vector<OrgEntry> with_org(const std::vector<AggregateEntry>& entries,
                               std::uint8_t org = 200) {
    std::vector<OrgEntry> out;
    for (const AggregateEntry& e : entries) out.push_back({&e, make_uuid(org)});
    return out;
}

TEST(RollupAggregates, SumsEntriesOfOneRowFromSeveralBuffers) {
    std::vector<AggregateEntry> es = {make_entry(1, kJan2Us),
                                      make_entry(1, kJan2Us)};
    count(&es[0], 3, 200, 1000);
    count(&es[0], 1, 404, 5000);
    count(&es[1], 2, 200, 1000);
    count(&es[1], 1, 0, 70);  // client closed: other
    BatchRollup r = rollup_aggregates(with_org(es));
    ASSERT_EQ(r.hourly.size(), 1u);
    const RollupRow& row = r.hourly[0];
    EXPECT_EQ(row.key_id, make_uuid(1));
    EXPECT_EQ(row.org_id, make_uuid(200));
    EXPECT_EQ(row.bucket_us, kJan2Us);
    EXPECT_EQ(row.requests, 7u);
    EXPECT_EQ(row.status_2xx, 5u);
    EXPECT_EQ(row.status_4xx, 1u);
    EXPECT_EQ(row.status_other, 1u);
    EXPECT_EQ(row.response_time_us_sum, 5u * 1000 + 5000 + 70);
    EXPECT_EQ(row.latency_hist.total(), 7u);
    EXPECT_EQ(row.latency_hist.count(latency_bucket(1000)), 5u);
    EXPECT_EQ(row.latency_hist.count(latency_bucket(70)), 1u);
    ASSERT_EQ(r.daily.size(), 1u);
    EXPECT_EQ(r.daily[0].requests, 7u);
    ASSERT_EQ(r.keys.size(), 1u);
    EXPECT_EQ(r.keys[0].requests, 7u);
}

TEST(RollupAggregates, DailyRowsAreTheSumsOfTheirHours) {
    std::vector<AggregateEntry> es = {
        make_entry(1, kJan2Us - kUsPerHour),  // 2024-01-01 23:00
        make_entry(1, kJan2Us),
        make_entry(1, kJan2Us + kUsPerHour),
        make_entry(1, kJan2Us + 5 * kUsPerHour, "/items", "POST"),
    };
    for (std::size_t i = 0; i < es.size(); ++i) count(&es[i], i + 1, 201, 900);
    BatchRollup r = rollup_aggregates(with_org(es));
    ASSERT_EQ(r.hourly.size(), 4u);
    ASSERT_EQ(r.daily.size(), 3u);
    EXPECT_EQ(r.daily[0].bucket_us, kJan2Us - kUsPerDay);
    EXPECT_EQ(r.daily[0].requests, 1u);
    EXPECT_EQ(r.daily[1].bucket_us, kJan2Us);
    EXPECT_EQ(r.daily[1].method, "GET");
    EXPECT_EQ(r.daily[1].requests, 2u + 3u);
    EXPECT_EQ(r.daily[1].latency_hist.total(), 5u);
    EXPECT_EQ(r.daily[2].method, "POST");
    EXPECT_EQ(r.daily[2].requests, 4u);
}

TEST(RollupAggregates, KeyUsageTakesTheLatestUseWithItsAddress) {
    std::vector<AggregateEntry> es = {make_entry(1, kJan2Us),
                                      make_entry(1, kJan2Us + kUsPerHour),
                                      make_entry(1, kJan2Us, "/other"),
                                      make_entry(2, kJan2Us)};
    for (AggregateEntry& e : es) count(&e, 2, 200, 100);
    es[0].last_used_us = kJan2Us + 500;
    es[1].last_used_us = kJan2Us + kUsPerHour + 7;  // the latest
    es[1].ip[3] = 77;
    es[2].last_used_us = kJan2Us + 900;
    es[3].ip_family = IpFamily::kV6;
    es[3].ip[15] = 1;
    BatchRollup r = rollup_aggregates(with_org(es));
    ASSERT_EQ(r.keys.size(), 2u);
    EXPECT_EQ(r.keys[0].key_id, make_uuid(1));
    EXPECT_EQ(r.keys[0].requests, 6u);
    EXPECT_EQ(r.keys[0].last_used_us, kJan2Us + kUsPerHour + 7);
    EXPECT_EQ(r.keys[0].ip[3], 77);
    EXPECT_EQ(r.keys[1].requests, 2u);
    EXPECT_EQ(r.keys[1].ip_family, IpFamily::kV6);
    EXPECT_EQ(r.keys[1].ip[15], 1);
}

TEST(RollupAggregates, OrgIsTheCallersNotTheSegments) {
    std::vector<AggregateEntry> es = {make_entry(1, kJan2Us)};
    count(&es[0], 1, 200, 100);
    BatchRollup r = rollup_aggregates(with_org(es, 9));
    EXPECT_EQ(r.hourly[0].org_id, make_uuid(9));
    EXPECT_EQ(r.daily[0].org_id, make_uuid(9));
}

TEST(RollupAggregates, RequestsAlwaysEqualTheStatusClasses) {
    // A worker killed mid-update can leave requests and status counts one
    // apart: the rows keep requests = the sum of the classes.
    std::vector<AggregateEntry> es = {make_entry(1, kJan2Us),
                                      make_entry(2, kJan2Us)};
    count(&es[0], 4, 200, 100);
    es[0].requests += 1;  // counted, no class yet
    count(&es[1], 4, 500, 100);
    es[1].status_5xx += 1;  // classed, not counted yet
    BatchRollup r = rollup_aggregates(with_org(es));
    ASSERT_EQ(r.hourly.size(), 2u);
    EXPECT_EQ(r.hourly[0].requests, 5u);
    EXPECT_EQ(r.hourly[0].status_2xx, 4u);
    EXPECT_EQ(r.hourly[0].status_other, 1u);
    EXPECT_EQ(r.hourly[1].requests, 5u);
    EXPECT_EQ(r.hourly[1].status_5xx, 5u);
    EXPECT_EQ(r.keys[0].requests, 5u);
    EXPECT_EQ(r.keys[1].requests, 5u);
}

TEST(RollupAggregates, BucketsPastTheLastCountInTheLast) {
    std::vector<AggregateEntry> es = {make_entry(1, kJan2Us)};
    es[0].requests = es[0].status_2xx = 3;
    es[0].latency = {{60000, 2}, {5, 0}, {7, 1}};
    BatchRollup r = rollup_aggregates(with_org(es));
    EXPECT_EQ(r.hourly[0].latency_hist.count(kLatencyBucketCount - 1), 2u);
    EXPECT_EQ(r.hourly[0].latency_hist.count(7), 1u);
    EXPECT_EQ(r.hourly[0].latency_hist.lo(), 7u);  // the empty cell adds none
}

TEST(RollupAggregates, SameRollupAsTheRequestsOneByOne) {
    std::mt19937_64 rng(13);
    std::vector<UsageRecord> recs;
    std::vector<AggregateEntry> es;
    const char* eps[] = {"/a", "/b", "/\xff"};  // invalid UTF-8 sanitized
    for (int i = 0; i < 3000; ++i) {
        UsageRecord rec{};
        rec.result = AuthResult::kOk;
        Uuid k = make_uuid(static_cast<std::uint8_t>(rng() % 4));
        Uuid o = make_uuid(200);
        std::memcpy(rec.key_id, k.data(), 16);
        std::memcpy(rec.org_id, o.data(), 16);
        rec.time_us =
            kJan2Us + static_cast<std::int64_t>(rng() % (2 * kUsPerDay));
        rec.status = static_cast<std::uint16_t>(rng() % 600);
        rec.response_time_us = rng() % 2000000;
        const char* ep = eps[rng() % 3];
        rec.endpoint_len = static_cast<std::uint8_t>(std::strlen(ep));
        std::memcpy(rec.endpoint, ep, rec.endpoint_len);
        rec.method_len = 3;
        std::memcpy(rec.method, rng() % 2 ? "GET" : "PUT", 3);
        rec.ip_family = IpFamily::kV4;
        rec.ip[3] = static_cast<std::uint8_t>(i);
        recs.push_back(rec);

        AggregateEntry e;
        std::memcpy(e.key_id.data(), rec.key_id, 16);
        e.hour_us = hour_bucket_us(rec.time_us);
        e.endpoint = ep;
        e.method = std::string(rec.method, 3);
        e.last_used_us = rec.time_us;
        e.ip_family = rec.ip_family;
        std::memcpy(e.ip.data(), rec.ip, 16);
        count(&e, 1, rec.status, rec.response_time_us);
        es.push_back(e);
    }
    const BatchRollup want = rollup_batch(recs);
    const BatchRollup got = rollup_aggregates(with_org(es));
    for (auto [w, g] : {std::pair{&want.hourly, &got.hourly},
                        std::pair{&want.daily, &got.daily}}) {
        ASSERT_EQ(w->size(), g->size());
        for (std::size_t i = 0; i < w->size(); ++i) {
            const RollupRow& a = (*w)[i];
            const RollupRow& b = (*g)[i];
            EXPECT_EQ(a.key_id, b.key_id);
            EXPECT_EQ(a.bucket_us, b.bucket_us);
            EXPECT_EQ(a.endpoint, b.endpoint);
            EXPECT_EQ(a.method, b.method);
            EXPECT_EQ(a.requests, b.requests);
            EXPECT_EQ(a.status_2xx, b.status_2xx);
            EXPECT_EQ(a.status_3xx, b.status_3xx);
            EXPECT_EQ(a.status_4xx, b.status_4xx);
            EXPECT_EQ(a.status_5xx, b.status_5xx);
            EXPECT_EQ(a.status_other, b.status_other);
            EXPECT_EQ(a.response_time_us_sum, b.response_time_us_sum);
            EXPECT_TRUE(a.latency_hist == b.latency_hist);
        }
    }
    ASSERT_EQ(want.keys.size(), got.keys.size());
    for (std::size_t i = 0; i < want.keys.size(); ++i) {
        EXPECT_EQ(want.keys[i].requests, got.keys[i].requests);
        EXPECT_EQ(want.keys[i].last_used_us, got.keys[i].last_used_us);
    }
}

TEST(RollupAggregates, NoEntriesNoRows) {
    BatchRollup r = rollup_aggregates({});
    EXPECT_TRUE(r.hourly.empty());
    EXPECT_TRUE(r.daily.empty());
    EXPECT_TRUE(r.keys.empty());
}

}  // namespace
}  // namespace apikey
