#include "rollup.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include <gtest/gtest.h>

namespace apikey {
namespace {

// 2024-01-02T00:00:00Z
constexpr std::int64_t kJan2Us = 1704153600LL * 1000000;
const std::string kFffd = "\xef\xbf\xbd";

Uuid make_uuid(std::uint8_t tag) {
    Uuid u{};
    u.fill(tag);
    u[6] = 0x40;  // v4-ish, not that it matters
    return u;
}

UsageRecord make_record(std::uint8_t key, std::int64_t time_us,
                        std::string_view endpoint = "/items",
                        std::string_view method = "GET",
                        std::uint16_t status = 200,
                        std::uint64_t response_time_us = 1000) {
    UsageRecord r{};
    r.result = AuthResult::kOk;
    r.status = status;
    r.time_us = time_us;
    r.response_time_us = response_time_us;
    Uuid k = make_uuid(key);
    Uuid o = make_uuid(static_cast<std::uint8_t>(key + 100));
    std::memcpy(r.key_id, k.data(), 16);
    std::memcpy(r.org_id, o.data(), 16);
    r.endpoint_len = static_cast<std::uint8_t>(endpoint.size());
    std::memcpy(r.endpoint, endpoint.data(), endpoint.size());
    r.method_len = static_cast<std::uint8_t>(method.size());
    std::memcpy(r.method, method.data(), method.size());
    r.ip_family = IpFamily::kV4;
    r.ip[0] = 10;
    r.ip[3] = key;
    return r;
}

// --- text --------------------------------------------------------------------

TEST(SanitizeText, KeepsValidUtf8AsIs) {
    for (std::string s : {std::string(""), std::string("GET"),
                          std::string("Mozilla/5.0 (X11; Linux)"),
                          std::string("h\xc3\xa9llo"),           // é
                          std::string("\xe2\x82\xac 10"),        // €
                          std::string("\xf0\x9f\x98\x80"),       // U+1F600
                          std::string("\xf4\x8f\xbf\xbf"),       // U+10FFFF
                          std::string("tab\tnew\nline\\")}) {
        EXPECT_TRUE(text_is_clean(s)) << s;
        EXPECT_EQ(sanitize_text(s), s);
    }
}

TEST(SanitizeText, ReplacesNulAndEveryInvalidByte) {
    EXPECT_EQ(sanitize_text(std::string("a\0b", 3)), "a" + kFffd + "b");
    EXPECT_EQ(sanitize_text("\xff"), kFffd);
    // A stray continuation byte.
    EXPECT_EQ(sanitize_text("x\x80y"), "x" + kFffd + "y");
    EXPECT_EQ(sanitize_text("\xc0\xaf"), kFffd + kFffd);    // overlong '/'
    EXPECT_EQ(sanitize_text("\xe0\x80\xaf"), kFffd + kFffd + kFffd);
    // A UTF-16 surrogate.
    EXPECT_EQ(sanitize_text("\xed\xa0\x80"), kFffd + kFffd + kFffd);
    EXPECT_EQ(sanitize_text("\xf4\x90\x80\x80"),
              kFffd + kFffd + kFffd + kFffd);  // above U+10FFFF
    EXPECT_EQ(sanitize_text("ok\xe2\x82"), "ok" + kFffd + kFffd);  // truncated
    EXPECT_EQ(sanitize_text("\xe9t\xe9"), kFffd + "t" + kFffd);    // Latin-1
    for (std::string s : {std::string("a\0b", 3), std::string("\xff"),
                          std::string("\xc0\xaf"), std::string("ok\xe2\x82")}) {
        EXPECT_FALSE(text_is_clean(s));
        EXPECT_TRUE(text_is_clean(sanitize_text(s)));
    }
}

TEST(SanitizeText, AnyByteStringComesOutClean) {
    std::mt19937 rng(7);
    for (int i = 0; i < 2000; ++i) {
        std::string s(rng() % 40, '\0');
        for (char& c : s) c = static_cast<char>(rng());
        EXPECT_TRUE(text_is_clean(sanitize_text(s)));
    }
}

// --- histogram window --------------------------------------------------------

TEST(LatencyHistogram, KeepsOnlyTheSpanOfNonEmptyBuckets) {
    LatencyHistogram h;
    EXPECT_TRUE(h.empty());
    EXPECT_EQ(h.to_pg_array(), "{}");
    h.add(50);
    h.add(52, 2);
    EXPECT_EQ(h.lo(), 50u);
    EXPECT_EQ(h.hi(), 53u);
    EXPECT_EQ(h.to_pg_array(), "[51:53]={1,0,2}");
    h.add(48);
    EXPECT_EQ(h.to_pg_array(), "[49:53]={1,0,1,0,2}");
    EXPECT_EQ(h.total(), 4u);
    EXPECT_EQ(h.count(52), 2u);
    EXPECT_EQ(h.count(10), 0u);
    EXPECT_EQ(h.count(1000), 0u);
}

TEST(LatencyHistogram, MergesDisjointAndOverlappingSpans) {
    LatencyHistogram a, b, c;
    a.add(10, 1);
    a.add(11, 1);
    b.add(20, 5);
    c.add(11, 3);
    c.add(5, 1);
    a.merge(b);
    EXPECT_EQ(a.lo(), 10u);
    EXPECT_EQ(a.hi(), 21u);
    a.merge(c);
    EXPECT_EQ(a.to_pg_array(), "[6:21]={1,0,0,0,0,1,4,0,0,0,0,0,0,0,0,5}");
    LatencyHistogram empty;
    a.merge(empty);
    EXPECT_EQ(a.total(), 11u);
    empty.merge(b);
    EXPECT_EQ(empty, b);
}

TEST(LatencyHistogram, ParsesWhatPostgresPrints) {
    LatencyHistogram h;
    ASSERT_TRUE(h.add_pg_array("[51:53]={1,0,2}"));
    EXPECT_EQ(h.count(50), 1u);
    EXPECT_EQ(h.count(52), 2u);
    ASSERT_TRUE(h.add_pg_array("{4,NULL,1}"));  // subscripts 1..3
    EXPECT_EQ(h.count(0), 4u);
    EXPECT_EQ(h.count(2), 1u);
    ASSERT_TRUE(h.add_pg_array("{}"));
    EXPECT_EQ(h.total(), 8u);

    LatencyHistogram round;
    ASSERT_TRUE(round.add_pg_array(h.to_pg_array()));
    EXPECT_EQ(round, h);
}

TEST(LatencyHistogram, RejectsMalformedArraysWithoutAddingAnything) {
    LatencyHistogram h;
    h.add(3);
    for (const char* bad :
         {"", "{", "1,2", "{1,,2}", "{a}", "[0:1]={1,2}", "[2:1]={1}",
          "[1:3]={1,2}", "[162:163]={1,2}", "{-1}", "[1:2]{1,2}"}) {
        EXPECT_FALSE(h.add_pg_array(bad)) << bad;
    }
    std::string too_long = "{";
    for (std::size_t i = 0; i <= kLatencyBucketCount; ++i) {
        too_long += i ? ",1" : "1";
    }
    too_long += "}";
    EXPECT_FALSE(h.add_pg_array(too_long));
    EXPECT_EQ(h.total(), 1u);
}

// --- percentiles -------------------------------------------------------------

double exact_quantile(std::vector<std::uint64_t> v, double q) {
    std::sort(v.begin(), v.end());
    std::size_t i = static_cast<std::size_t>(std::ceil(q * v.size())) - 1;
    return static_cast<double>(v[std::min(i, v.size() - 1)]) / 1000.0;
}

void expect_quantiles_close(const std::vector<std::uint64_t>& samples,
                            double tolerance) {
    LatencyHistogram h;
    for (std::uint64_t us : samples) h.add_latency_us(us);
    for (double q : {0.5, 0.9, 0.95, 0.99}) {
        double exact = exact_quantile(samples, q);
        auto est = latency_percentile_ms(h, q);
        ASSERT_TRUE(est.has_value());
        EXPECT_NEAR(*est / exact, 1.0, tolerance)
            << "q=" << q << " exact=" << exact << " est=" << *est;
    }
}

TEST(LatencyPercentile, LogNormalWithinOnePercent) {
    std::mt19937_64 rng(42);
    std::lognormal_distribution<double> dist(std::log(20000.0), 0.8);  // µs
    std::vector<std::uint64_t> samples(200000);
    for (auto& s : samples) s = static_cast<std::uint64_t>(dist(rng));
    expect_quantiles_close(samples, 0.01);
}

TEST(LatencyPercentile, BimodalCacheHitsAndMissesWithinTwoPercent) {
    std::mt19937_64 rng(1);
    std::normal_distribution<double> hit(400, 60), miss(45000, 9000);
    std::bernoulli_distribution is_miss(0.1);
    std::vector<std::uint64_t> samples(200000);
    for (auto& s : samples) {
        double v = is_miss(rng) ? miss(rng) : hit(rng);
        s = static_cast<std::uint64_t>(std::max(1.0, v));
    }
    expect_quantiles_close(samples, 0.02);
}

// p99 sits in the bucket the distribution ends in: interpolating over the
// whole bucket overshoots the hard edge, still within the bucket's width.
TEST(LatencyPercentile, UniformWithAHardEdgeWithinFivePercent) {
    std::mt19937_64 rng(3);
    std::uniform_int_distribution<std::uint64_t> dist(1000, 300000);
    std::vector<std::uint64_t> samples(100000);
    for (auto& s : samples) s = dist(rng);
    expect_quantiles_close(samples, 0.05);
}

TEST(LatencyPercentile, ASingleValueIsWithinItsBucket) {
    LatencyHistogram h;
    for (int i = 0; i < 100; ++i) h.add_latency_us(10000);
    auto p = latency_percentile_ms(h, 0.95);
    ASSERT_TRUE(p.has_value());
    EXPECT_NEAR(*p, 10.0, 10.0 * 0.091);
}

TEST(LatencyPercentile, EdgeCases) {
    LatencyHistogram h;
    EXPECT_FALSE(latency_percentile_ms(h, 0.95).has_value());
    h.add_latency_us(10);  // bucket 0: linear in [0, 64 µs)
    EXPECT_NEAR(*latency_percentile_ms(h, 0.5), 0.032, 1e-9);
    LatencyHistogram slow;
    slow.add_latency_us(600'000'000);  // 10 minutes: the open bucket
    EXPECT_NEAR(*latency_percentile_ms(slow, 0.99), 67108.864, 1e-6);
    LatencyHistogram two;
    two.add_latency_us(1000);
    two.add_latency_us(100000);
    EXPECT_LT(*latency_percentile_ms(two, 0.0), 1.1);
    EXPECT_GT(*latency_percentile_ms(two, 1.0), 90.0);
    EXPECT_GT(*latency_percentile_ms(two, 7.0), 90.0);  // clamped
}

// --- time buckets ------------------------------------------------------------

TEST(TimeBuckets, LastMicrosecondOfADayStaysInIt) {
    const std::int64_t before = kJan2Us - 1;  // 2024-01-01T23:59:59.999999Z
    EXPECT_EQ(hour_bucket_us(before), kJan2Us - kUsPerHour);
    EXPECT_EQ(day_bucket_us(before), kJan2Us - kUsPerDay);
    EXPECT_EQ(hour_bucket_us(kJan2Us), kJan2Us);
    EXPECT_EQ(day_bucket_us(kJan2Us), kJan2Us);
    EXPECT_EQ(hour_bucket_us(kJan2Us + kUsPerHour - 1), kJan2Us);
    EXPECT_EQ(day_bucket_us(kJan2Us + kUsPerDay - 1), kJan2Us);
}

TEST(TimeBuckets, FloorBeforeTheEpoch) {
    EXPECT_EQ(hour_bucket_us(-1), -kUsPerHour);
    EXPECT_EQ(day_bucket_us(-1), -kUsPerDay);
    EXPECT_EQ(day_bucket_us(0), 0);
}

// --- batch aggregation -------------------------------------------------------

TEST(RollupBatch, SumsPerKeyEndpointMethodAndHour) {
    std::vector<UsageRecord> recs = {
        make_record(1, kJan2Us + 10, "/items", "GET", 200, 1000),
        make_record(1, kJan2Us + 20, "/items", "GET", 404, 3000),
        make_record(1, kJan2Us + 30, "/items", "GET", 0, 5000),    // closed
        make_record(1, kJan2Us + 40, "/items", "GET", 101, 7000),  // other
        make_record(1, kJan2Us + 50, "/items", "POST", 503, 2000),
        make_record(2, kJan2Us + 60, "/items", "GET", 302, 4000),
    };
    BatchRollup r = rollup_batch(recs);
    ASSERT_EQ(r.hourly.size(), 3u);
    const RollupRow& get = r.hourly[0];
    EXPECT_EQ(get.key_id, make_uuid(1));
    EXPECT_EQ(get.org_id, make_uuid(101));
    EXPECT_EQ(get.bucket_us, kJan2Us);
    EXPECT_EQ(get.endpoint, "/items");
    EXPECT_EQ(get.method, "GET");
    EXPECT_EQ(get.requests, 4u);
    EXPECT_EQ(get.status_2xx, 1u);
    EXPECT_EQ(get.status_3xx, 0u);
    EXPECT_EQ(get.status_4xx, 1u);
    EXPECT_EQ(get.status_5xx, 0u);
    EXPECT_EQ(get.status_other, 2u);  // 0 and 101 count in requests only
    EXPECT_EQ(get.response_time_us_sum, 16000u);
    EXPECT_DOUBLE_EQ(get.response_time_ms_sum(), 16.0);
    EXPECT_EQ(get.latency_hist.total(), 4u);
    EXPECT_EQ(get.latency_hist.count(latency_bucket(3000)), 1u);

    const RollupRow& post = r.hourly[1];
    EXPECT_EQ(post.method, "POST");
    EXPECT_EQ(post.requests, 1u);
    EXPECT_EQ(post.status_5xx, 1u);

    const RollupRow& other_key = r.hourly[2];
    EXPECT_EQ(other_key.key_id, make_uuid(2));
    EXPECT_EQ(other_key.status_3xx, 1u);

    ASSERT_EQ(r.daily.size(), 3u);
    EXPECT_EQ(r.daily[0].bucket_us, kJan2Us);
    EXPECT_EQ(r.daily[0].requests, 4u);
}

TEST(RollupBatch, SplitsAtHourAndDayBoundaries) {
    std::vector<UsageRecord> recs = {
        make_record(1, kJan2Us - 1),               // 2024-01-01 23:59:59.999999
        make_record(1, kJan2Us),                   // 2024-01-02 00:00
        make_record(1, kJan2Us + kUsPerHour - 1),  // 00:59:59.999999
        make_record(1, kJan2Us + kUsPerHour),      // 01:00
    };
    BatchRollup r = rollup_batch(recs);
    ASSERT_EQ(r.hourly.size(), 3u);
    EXPECT_EQ(r.hourly[0].bucket_us, kJan2Us - kUsPerHour);
    EXPECT_EQ(r.hourly[0].requests, 1u);
    EXPECT_EQ(r.hourly[1].bucket_us, kJan2Us);
    EXPECT_EQ(r.hourly[1].requests, 2u);
    EXPECT_EQ(r.hourly[2].bucket_us, kJan2Us + kUsPerHour);
    EXPECT_EQ(r.hourly[2].requests, 1u);
    ASSERT_EQ(r.daily.size(), 2u);
    EXPECT_EQ(r.daily[0].bucket_us, kJan2Us - kUsPerDay);
    EXPECT_EQ(r.daily[0].requests, 1u);
    EXPECT_EQ(r.daily[1].bucket_us, kJan2Us);
    EXPECT_EQ(r.daily[1].requests, 3u);
    EXPECT_EQ(r.daily[1].latency_hist.total(), 3u);
}

TEST(RollupBatch, DailyEqualsTheSumOfItsHours) {
    std::mt19937_64 rng(9);
    std::vector<UsageRecord> recs;
    for (int i = 0; i < 5000; ++i) {
        const char* eps[] = {"/a", "/b", "/c"};
        recs.push_back(make_record(
            static_cast<std::uint8_t>(rng() % 5),
            kJan2Us + static_cast<std::int64_t>(rng() % (3 * kUsPerDay)),
            eps[rng() % 3], rng() % 2 ? "GET" : "PUT",
            static_cast<std::uint16_t>(100 + rng() % 500), rng() % 900000));
    }
    BatchRollup r = rollup_batch(recs);
    std::uint64_t hourly = 0, daily = 0, keys = 0;
    for (const auto& h : r.hourly) hourly += h.requests;
    for (const auto& d : r.daily) {
        daily += d.requests;
        EXPECT_EQ(d.latency_hist.total(), d.requests);
        EXPECT_EQ(d.bucket_us % kUsPerDay, 0);
    }
    for (const auto& k : r.keys) keys += k.requests;
    for (const auto& h : r.hourly) {
        EXPECT_EQ(h.status_2xx + h.status_3xx + h.status_4xx + h.status_5xx +
                      h.status_other,
                  h.requests);
    }
    EXPECT_EQ(hourly, recs.size());
    EXPECT_EQ(daily, recs.size());
    EXPECT_EQ(keys, recs.size());
    EXPECT_EQ(r.keys.size(), 5u);
    EXPECT_EQ(r.daily.size(), 5u * 3 * 2 * 3);
    EXPECT_TRUE(std::is_sorted(r.hourly.begin(), r.hourly.end(),
                               rollup_row_less));
    EXPECT_TRUE(std::is_sorted(r.daily.begin(), r.daily.end(),
                               rollup_row_less));
}

TEST(RollupBatch, CoalescesLastUsePerKey) {
    std::vector<UsageRecord> recs = {
        make_record(1, kJan2Us + 500),
        make_record(1, kJan2Us + 900),
        make_record(1, kJan2Us + 100),
        make_record(2, kJan2Us + 50),
    };
    recs[1].ip[3] = 77;   // the latest record's address
    recs[2].ip[3] = 99;
    recs[3].ip_family = IpFamily::kV6;
    recs[3].ip[15] = 1;
    BatchRollup r = rollup_batch(recs);
    ASSERT_EQ(r.keys.size(), 2u);
    EXPECT_EQ(r.keys[0].key_id, make_uuid(1));
    EXPECT_EQ(r.keys[0].requests, 3u);
    EXPECT_EQ(r.keys[0].last_used_us, kJan2Us + 900);
    EXPECT_EQ(r.keys[0].ip_family, IpFamily::kV4);
    EXPECT_EQ(r.keys[0].ip[3], 77);
    EXPECT_EQ(r.keys[1].ip_family, IpFamily::kV6);
    EXPECT_EQ(r.keys[1].ip[15], 1);
}

TEST(RollupBatch, EqualTimesLetTheLaterRecordWin) {
    std::vector<UsageRecord> recs = {make_record(1, kJan2Us),
                                     make_record(1, kJan2Us)};
    recs[1].ip[3] = 42;
    EXPECT_EQ(rollup_batch(recs).keys[0].ip[3], 42);
}

TEST(RollupBatch, InvalidTextThatSanitizesAlikeLandsInOneRow) {
    std::vector<UsageRecord> recs = {
        make_record(1, kJan2Us, "/x\xff", "GET"),
        make_record(1, kJan2Us, "/x\xfe", "GET"),
        make_record(1, kJan2Us, std::string("/x\0", 3), "GET"),
    };
    BatchRollup r = rollup_batch(recs);
    ASSERT_EQ(r.hourly.size(), 1u);
    EXPECT_EQ(r.hourly[0].endpoint, "/x" + kFffd);
    EXPECT_EQ(r.hourly[0].requests, 3u);
    ASSERT_EQ(r.daily.size(), 1u);
}

TEST(RollupBatch, ClampsLengthsOfCorruptRecords) {
    UsageRecord r = make_record(1, kJan2Us);
    std::memset(r.endpoint, 'e', sizeof(r.endpoint));
    std::memset(r.method, 'M', sizeof(r.method));
    r.endpoint_len = 255;
    r.method_len = 200;
    r.user_agent_len = 300;
    EXPECT_EQ(record_endpoint(r).size(), kUsageEndpointLen);
    EXPECT_EQ(record_method(r).size(), kUsageMethodLen);
    EXPECT_EQ(record_user_agent(r).size(), kUsageUserAgentLen);
    BatchRollup b = rollup_batch(std::vector<UsageRecord>{r});
    EXPECT_EQ(b.hourly[0].endpoint.size(), kUsageEndpointLen);
}

TEST(RollupBuilder, IsReusableAndMatchesRollupBatch) {
    std::vector<UsageRecord> recs = {make_record(1, kJan2Us),
                                     make_record(2, kJan2Us + kUsPerDay)};
    RollupBuilder b;
    b.add(recs[0]);
    b.add(recs[1]);
    BatchRollup first = b.finish();
    BatchRollup expect = rollup_batch(recs);
    ASSERT_EQ(first.hourly.size(), expect.hourly.size());
    ASSERT_EQ(first.daily.size(), 2u);
    EXPECT_EQ(first.hourly[1].key_id, expect.hourly[1].key_id);
    b.add(recs[0]);
    BatchRollup second = b.finish();
    EXPECT_EQ(second.hourly.size(), 1u);
    EXPECT_EQ(second.keys.size(), 1u);
    EXPECT_EQ(second.hourly[0].requests, 1u);
}

TEST(RollupBatch, EmptyBatch) {
    BatchRollup r = rollup_batch(std::vector<UsageRecord>{});
    EXPECT_TRUE(r.hourly.empty());
    EXPECT_TRUE(r.daily.empty());
    EXPECT_TRUE(r.keys.empty());
}

}  // namespace
}  // namespace apikey
