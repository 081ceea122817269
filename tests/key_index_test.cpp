#include "key_index.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace apikey {
namespace {

constexpr std::int64_t kMax = 1000;

Uuid id(std::uint32_t n) {
    Uuid u{};
    std::memcpy(u.data(), &n, sizeof(n));
    u[15] = static_cast<std::uint8_t>(n * 7);
    return u;
}

TEST(KeyIndex, KnownKeyWithItsOwnOrgIsKnown) {
    KeyIndex index(kMax);
    index.put(id(1), id(100));
    EXPECT_EQ(index.check(id(1), id(100), 0), KeyVerdict::kKnown);
}

TEST(KeyIndex, AnotherOrgIsAMismatch) {
    KeyIndex index(kMax);
    index.put(id(1), id(100));
    EXPECT_EQ(index.check(id(1), id(101), 0), KeyVerdict::kOrgMismatch);
}

TEST(KeyIndex, AbsentKeyIsUnknown) {
    KeyIndex index(kMax);
    index.put(id(1), id(100));
    EXPECT_EQ(index.check(id(2), id(100), 0), KeyVerdict::kUnknownKey);
}

TEST(KeyIndex, OrgOfAKnownKeyIsItsOwnAndOfOthersNone) {
    KeyIndex index(kMax);
    index.put(id(1), id(100));
    EXPECT_EQ(index.org_of(id(1), 0), id(100));
    EXPECT_EQ(index.org_of(id(2), 0), std::nullopt);
    index.remove(id(1), 5000);
    EXPECT_EQ(index.org_of(id(1), 5000 + kMax), id(100));
    EXPECT_EQ(index.org_of(id(1), 5001 + kMax), std::nullopt);
}

TEST(KeyIndex, PutReplacesTheOrg) {
    KeyIndex index(kMax);
    index.put(id(1), id(100));
    index.put(id(1), id(101));
    EXPECT_EQ(index.check(id(1), id(101), 0), KeyVerdict::kKnown);
    EXPECT_EQ(index.check(id(1), id(100), 0), KeyVerdict::kOrgMismatch);
}

TEST(KeyIndex, RemovedKeyStaysKnownForTheGracePeriodOnly) {
    KeyIndex index(kMax);
    index.put(id(1), id(100));
    index.remove(id(1), 5000);
    EXPECT_EQ(index.check(id(1), id(100), 5000 + kMax), KeyVerdict::kKnown);
    EXPECT_EQ(index.check(id(1), id(100), 5001 + kMax),
              KeyVerdict::kUnknownKey);
}

TEST(KeyIndex, ExpiredRemovalsAreForgotten) {
    KeyIndex index(kMax);
    index.put(id(1), id(100));
    index.put(id(2), id(100));
    index.remove(id(1), 0);
    EXPECT_EQ(index.size(), 2u);
    index.remove(id(3), 2 * kMax);  // any later change forgets old ones
    EXPECT_EQ(index.size(), 1u);
}

TEST(KeyIndex, KeyPutAgainAfterRemovalIsLiveAndNotForgotten) {
    KeyIndex index(kMax);
    index.put(id(1), id(100));
    index.remove(id(1), 0);
    index.put(id(1), id(100));
    index.remove(id(2), 10 * kMax);
    index.forget_removed_before(10 * kMax);  // nor by the drainer
    EXPECT_EQ(index.check(id(1), id(100), 10 * kMax), KeyVerdict::kKnown);
}

TEST(KeyIndex, RetainOnlyRemovesTheOthers) {
    KeyIndex index(kMax);
    index.put(id(1), id(100));
    index.put(id(2), id(100));
    index.put(id(3), id(100));
    index.retain_only({id(2)}, 0);
    const std::int64_t later = kMax + 1;
    EXPECT_EQ(index.check(id(1), id(100), later), KeyVerdict::kUnknownKey);
    EXPECT_EQ(index.check(id(2), id(100), later), KeyVerdict::kKnown);
    EXPECT_EQ(index.check(id(3), id(100), later), KeyVerdict::kUnknownKey);
}

TEST(KeyIndex, RemovedKeyStaysKnownUntilForgotten) {
    KeyIndex index(kMax);
    index.put(id(1), id(100));
    index.remove(id(1), 5000);
    index.forget_removed_before(5000);
    EXPECT_EQ(index.check(id(1), id(100), 5000), KeyVerdict::kKnown);
    EXPECT_EQ(index.size(), 1u);
    index.forget_removed_before(5001);
    EXPECT_EQ(index.check(id(1), id(100), 5001), KeyVerdict::kUnknownKey);
    EXPECT_EQ(index.size(), 0u);
}

TEST(KeyIndex, ForgettingKeepsLiveKeysAndLaterRemovals) {
    KeyIndex index(kMax);
    index.put(id(1), id(100));
    index.put(id(2), id(100));
    index.put(id(3), id(100));
    index.remove(id(1), 10);
    index.remove(id(2), 20);
    index.forget_removed_before(15);
    EXPECT_EQ(index.check(id(1), id(100), 20), KeyVerdict::kUnknownKey);
    EXPECT_EQ(index.check(id(2), id(100), 20), KeyVerdict::kKnown);
    EXPECT_EQ(index.check(id(3), id(100), 20), KeyVerdict::kKnown);
    EXPECT_EQ(index.size(), 2u);
}

// A key table whose keys are all replaced every 30 s, with the drainer
// forgetting once a second what it has read: the index holds the live
// keys and those of the last grace period, not every key ever removed.
TEST(KeyIndex, ReplacedKeysDoNotPileUp) {
    constexpr std::uint32_t kKeys = 500;
    constexpr std::int64_t kSecond = 1000000;
    constexpr std::int64_t kEvery = 30 * kSecond;
    KeyIndex index;
    std::uint32_t next = 0;
    std::size_t largest = 0;
    std::int64_t now = 0;
    for (int round = 0; round < 40; ++round) {
        std::vector<Uuid> live;
        for (std::uint32_t i = 0; i < kKeys; ++i) {
            live.push_back(id(next++));
            index.put(live.back(), id(100000));
        }
        index.retain_only(live, now);
        largest = std::max(largest, index.size());
        for (std::int64_t t = now; t < now + kEvery; t += kSecond) {
            index.forget_removed_before(t - kRemovedKeyGraceUs);
        }
        now += kEvery;
    }
    // Live, plus the removals of the last grace period and of the round
    // at its edge (without the drainer's forgetting: kRemovedKeyMaxUs of
    // removals, 20 rounds).
    const std::size_t rounds_kept = kRemovedKeyGraceUs / kEvery + 1;
    EXPECT_LE(largest, kKeys * (1 + rounds_kept));
    EXPECT_LE(index.size(), kKeys * (1 + rounds_kept));
}

TEST(KeyIndex, ReadyOnlyOnceMarked) {
    KeyIndex index(kMax);
    index.put(id(1), id(100));
    EXPECT_FALSE(index.ready());
    index.mark_ready();
    EXPECT_TRUE(index.ready());
}

}  // namespace
}  // namespace apikey
