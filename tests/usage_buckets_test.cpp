// shared/usage_buckets: the status classes, latency buckets and hours
// both the worker's aggregation and apikeyd's rollups count requests in.
#include "usage_buckets.h"

#include <cmath>
#include <cstdint>

#include <gtest/gtest.h>

namespace apikey {
namespace {

// --- status ------------------------------------------------------------------

TEST(StatusClass, CountsOnlyTwoHundredToFiveNinetyNine) {
    EXPECT_EQ(status_class(0), StatusClass::kOther);  // client closed
    EXPECT_EQ(status_class(101), StatusClass::kOther);
    EXPECT_EQ(status_class(199), StatusClass::kOther);
    EXPECT_EQ(status_class(200), StatusClass::k2xx);
    EXPECT_EQ(status_class(299), StatusClass::k2xx);
    EXPECT_EQ(status_class(304), StatusClass::k3xx);
    EXPECT_EQ(status_class(400), StatusClass::k4xx);
    EXPECT_EQ(status_class(499), StatusClass::k4xx);
    EXPECT_EQ(status_class(500), StatusClass::k5xx);
    EXPECT_EQ(status_class(599), StatusClass::k5xx);
    EXPECT_EQ(status_class(600), StatusClass::kOther);
    EXPECT_EQ(status_class(65535), StatusClass::kOther);
    // Every status, against the hundreds' rule.
    for (unsigned s = 0; s <= 65535; ++s) {
        const unsigned h = s / 100;
        const StatusClass want = h >= 2 && h <= 5
                                     ? static_cast<StatusClass>(h - 2)
                                     : StatusClass::kOther;
        ASSERT_EQ(status_class(static_cast<std::uint16_t>(s)), want) << s;
    }
}

// --- histogram buckets -------------------------------------------------------

TEST(LatencyBucket, BoundariesAreInclusiveBelowExclusiveAbove) {
    EXPECT_EQ(kLatencyBucketCount, 162u);
    EXPECT_EQ(latency_bucket(0), 0u);
    EXPECT_EQ(latency_bucket(63), 0u);
    EXPECT_EQ(latency_bucket(64), 1u);
    EXPECT_EQ(latency_bucket(127), 8u);
    EXPECT_EQ(latency_bucket(128), 9u);
    EXPECT_EQ(latency_bucket((64u << 20) - 1), 160u);
    EXPECT_EQ(latency_bucket(64u << 20), 161u);
    EXPECT_EQ(latency_bucket(UINT64_MAX), 161u);
    EXPECT_EQ(latency_bucket_lower_us(0), 0u);
    EXPECT_EQ(latency_bucket_upper_us(0), 64u);
    EXPECT_EQ(latency_bucket_lower_us(1), 64u);
    EXPECT_EQ(latency_bucket_upper_us(1), 70u);  // round(64 * 2^(1/8)) = 69.8
    EXPECT_EQ(latency_bucket_lower_us(161), 64u << 20);
    EXPECT_EQ(latency_bucket_upper_us(161), UINT64_MAX);
}

TEST(LatencyBucket, EveryBucketHoldsItsBoundsAndIsAboutNinePercentWide) {
    for (std::size_t b = 0; b < kLatencyBucketCount; ++b) {
        const std::uint64_t lo = latency_bucket_lower_us(b);
        const std::uint64_t hi = latency_bucket_upper_us(b);
        ASSERT_LT(lo, hi);
        EXPECT_EQ(latency_bucket(lo), b);
        EXPECT_EQ(latency_bucket(hi - 1), b);
        if (b + 1 < kLatencyBucketCount) {
            EXPECT_EQ(latency_bucket_lower_us(b + 1), hi);
        }
        if (b >= 9 && b + 1 < kLatencyBucketCount) {  // past integer rounding
            const double ratio = static_cast<double>(hi) / lo;
            EXPECT_NEAR(ratio, std::pow(2.0, 1.0 / 8), 0.01) << b;
        }
    }
}

// The octave-and-compare search the worker uses agrees with a plain scan
// of the bounds for every value near every bound.
TEST(LatencyBucket, AgreesWithAScanOfTheBounds) {
    auto scan = [](std::uint64_t us) {
        std::size_t b = 0;
        while (b < kLatencyBoundCount && latency_bucket_upper_us(b) <= us) ++b;
        return b;
    };
    for (std::size_t b = 0; b < kLatencyBoundCount; ++b) {
        const std::uint64_t bound = latency_bucket_upper_us(b);
        for (std::uint64_t us : {bound - 1, bound, bound + 1}) {
            EXPECT_EQ(latency_bucket(us), scan(us)) << us;
        }
    }
    for (std::uint64_t ms = 0; ms < 70000; ms += 7) {
        EXPECT_EQ(latency_bucket(ms * 1000), scan(ms * 1000)) << ms;
    }
}

// --- hours -------------------------------------------------------------------

TEST(HourOf, FloorsAlsoBefore1970) {
    EXPECT_EQ(hour_of(0), 0);
    EXPECT_EQ(hour_of(kUsPerHour - 1), 0);
    EXPECT_EQ(hour_of(kUsPerHour), 1);
    EXPECT_EQ(hour_of(-1), -1);
    EXPECT_EQ(hour_of(-kUsPerHour), -1);
    EXPECT_EQ(hour_of(-kUsPerHour - 1), -2);
    // 2024-01-02T00:00:00Z
    EXPECT_EQ(hour_of(1704153600LL * 1000000), 1704153600LL / 3600);
}

}  // namespace
}  // namespace apikey
