#include "rollup_cache.h"

#include <gtest/gtest.h>

namespace apikey {
namespace {

constexpr std::int64_t kHour = kUsPerHour;

RollupRow row(std::uint8_t key, std::int64_t bucket_us,
              std::string endpoint = "/a", std::string method = "GET") {
    RollupRow r;
    r.key_id.fill(key);
    r.bucket_us = bucket_us;
    r.endpoint = std::move(endpoint);
    r.method = std::move(method);
    return r;
}

TEST(RollupCache, UnknownRowIsEmptyAndRemembered) {
    RollupCache cache(kHour, 100);
    RollupCache::Entry* e = cache.get(row(1, 10 * kHour));
    EXPECT_EQ(e->requests, 0u);
    EXPECT_TRUE(e->hist.empty());
    e->requests = 7;
    EXPECT_EQ(cache.get(row(1, 10 * kHour))->requests, 7u);
    EXPECT_EQ(cache.size(), 1u);
}

TEST(RollupCache, EveryKeyPartMakesADifferentRow) {
    RollupCache cache(kHour, 100);
    cache.get(row(1, 10 * kHour))->requests = 7;
    EXPECT_EQ(cache.get(row(2, 10 * kHour))->requests, 0u);
    EXPECT_EQ(cache.get(row(1, 11 * kHour))->requests, 0u);
    EXPECT_EQ(cache.get(row(1, 10 * kHour, "/b"))->requests, 0u);
    EXPECT_EQ(cache.get(row(1, 10 * kHour, "/a", "POST"))->requests, 0u);
    EXPECT_EQ(cache.get(row(1, 10 * kHour))->requests, 7u);
}

TEST(RollupCache, TrimKeepsTheNewestAndThePreviousBucket) {
    RollupCache cache(kHour, 100);
    cache.get(row(1, 8 * kHour))->requests = 1;
    cache.get(row(1, 9 * kHour))->requests = 2;
    cache.get(row(1, 10 * kHour))->requests = 3;
    cache.trim();
    EXPECT_EQ(cache.size(), 2u);
    EXPECT_EQ(cache.get(row(1, 9 * kHour))->requests, 2u);
    EXPECT_EQ(cache.get(row(1, 10 * kHour))->requests, 3u);
    EXPECT_EQ(cache.get(row(1, 8 * kHour))->requests, 0u);
}

TEST(RollupCache, TrimClearsWhenOverTheLimit) {
    RollupCache cache(kHour, 2);
    for (std::uint8_t k = 1; k <= 3; ++k) cache.get(row(k, kHour))->requests = k;
    cache.trim();
    EXPECT_EQ(cache.size(), 0u);
}

TEST(RollupCache, ClearForgetsEverything) {
    RollupCache cache(kHour, 100);
    cache.get(row(1, kHour))->requests = 5;
    cache.clear();
    EXPECT_EQ(cache.size(), 0u);
    EXPECT_EQ(cache.get(row(1, kHour))->requests, 0u);
}

}  // namespace
}  // namespace apikey
