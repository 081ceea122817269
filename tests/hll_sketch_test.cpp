// tools/apikeyd/hll_sketch: estimates within the stated error, exact small
// counts, idempotent merges, the stored forms and what they refuse.
#include "hll_sketch.h"

#include <cmath>
#include <cstdint>
#include <random>
#include <string>

#include <gtest/gtest.h>

#include "usage_ipset.h"

namespace apikey {
namespace {

std::uint64_t v4_hash(std::uint8_t a, std::uint8_t b, std::uint8_t c,
                      std::uint8_t d) {
    const std::uint8_t ip[16] = {a, b, c, d};
    return ipset_ip_hash(IpFamily::kV4, ip);
}

TEST(HllSketchTest, EmptyEstimatesZeroAndStoresNothing) {
    HllSketch s;
    EXPECT_TRUE(s.empty());
    EXPECT_EQ(s.estimate(), 0u);
    EXPECT_EQ(s.stored(), "");
    EXPECT_TRUE(s.merge_stored(""));
    EXPECT_TRUE(s.empty());
}

// The t/ scenario: three loopback clients count as exactly 3.
TEST(HllSketchTest, ThreeAddressesEstimateThree) {
    HllSketch s;
    for (std::uint8_t d = 1; d <= 3; ++d) {
        s.add(v4_hash(127, 0, 0, d));
        s.add(v4_hash(127, 0, 0, d));  // repeats change nothing
    }
    EXPECT_EQ(s.estimate(), 3u);
    EXPECT_EQ(s.stored().size(), 1u + 3 * 3);  // sparse: 3 registers
}

// Small counts are exact once rounded (while no two share a register).
TEST(HllSketchTest, SmallCountsAreExact) {
    HllSketch s;
    for (unsigned n = 1; n <= 20; ++n) {
        s.add(v4_hash(10, 0, static_cast<std::uint8_t>(n >> 8),
                      static_cast<std::uint8_t>(n)));
        EXPECT_EQ(s.estimate(), n);
    }
}

// 1.04 / sqrt(4096) = 1.6% standard error; each check allows 3 of them.
void expect_within_error(std::uint64_t estimate, double truth) {
    EXPECT_LE(std::fabs(static_cast<double>(estimate) - truth),
              3 * 0.01625 * truth)
        << "estimate " << estimate << " for " << truth;
}

TEST(HllSketchTest, TenThousandAddressesWithinTheStatedError) {
    HllSketch s;
    for (unsigned n = 0; n < 10000; ++n) {
        s.add(v4_hash(10, static_cast<std::uint8_t>(n >> 16),
                      static_cast<std::uint8_t>(n >> 8),
                      static_cast<std::uint8_t>(n)));
    }
    expect_within_error(s.estimate(), 10000);
}

TEST(HllSketchTest, EstimatesAcrossSizesWithinTheStatedError) {
    std::mt19937_64 rng(15);
    for (unsigned size : {100u, 1000u, 5000u, 10000u, 20000u, 100000u,
                          1000000u}) {
        HllSketch s;
        for (unsigned i = 0; i < size; ++i) s.add(rng());
        expect_within_error(s.estimate(), size);
    }
}

TEST(HllSketchTest, MergingTheSameHashesAgainChangesNothing) {
    std::mt19937_64 rng(2);
    HllSketch a, b;
    for (int i = 0; i < 5000; ++i) a.add(rng());
    EXPECT_TRUE(b.merge(a));
    const std::uint64_t once = b.estimate();
    EXPECT_FALSE(b.merge(a));
    EXPECT_TRUE(b.merge_stored(a.stored()));
    EXPECT_EQ(b.estimate(), once);
    EXPECT_EQ(b.stored(), a.stored());
}

TEST(HllSketchTest, UnionOfOverlappingDays) {
    std::mt19937_64 rng(3);
    std::vector<std::uint64_t> hashes(6000);
    for (auto& h : hashes) h = rng();
    HllSketch day1, day2;
    for (int i = 0; i < 4000; ++i) day1.add(hashes[i]);
    for (int i = 2000; i < 6000; ++i) day2.add(hashes[i]);
    HllSketch week;
    week.merge_stored(day1.stored());
    week.merge_stored(day2.stored());
    expect_within_error(week.estimate(), 6000);
}

TEST(HllSketchTest, StoredFormsRoundTrip) {
    std::mt19937_64 rng(4);
    HllSketch small, large;
    for (int i = 0; i < 50; ++i) small.add(rng());
    for (int i = 0; i < 50000; ++i) large.add(rng());
    const std::string s = small.stored();
    ASSERT_FALSE(s.empty());
    EXPECT_EQ(s[0], 1);
    EXPECT_EQ((s.size() - 1) % 3, 0u);
    EXPECT_LT(s.size(), 200u);
    const std::string l = large.stored();
    EXPECT_EQ(l[0], 2);
    EXPECT_EQ(l.size(), 1u + kHllRegisters);
    for (const HllSketch* x : {&small, &large}) {
        HllSketch back;
        ASSERT_TRUE(back.merge_stored(x->stored()));
        EXPECT_EQ(back.stored(), x->stored());
        EXPECT_EQ(back.estimate(), x->estimate());
    }
}

TEST(HllSketchTest, RefusesWhatIsNotAStoredForm) {
    HllSketch s;
    s.add(42);
    const std::string before = s.stored();
    const std::string bad[] = {
        std::string("\x03", 1),                    // no such form
        std::string("\x01\x00\x01", 3),            // a triple cut short
        std::string("\x01\x10\x00\x05", 4),        // register 4096
        std::string("\x01\x00\x01\x36", 4),        // value 54 > 53
        std::string("\x02", 1) + std::string(10, '\x01'),  // dense, short
    };
    for (const std::string& b : bad) {
        EXPECT_FALSE(s.merge_stored(b));
        EXPECT_EQ(s.stored(), before);
    }
}

}  // namespace
}  // namespace apikey
