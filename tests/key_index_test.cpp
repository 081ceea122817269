#include "key_index.h"

#include <gtest/gtest.h>

namespace apikey {
namespace {

constexpr std::int64_t kGrace = 1000;

Uuid id(std::uint8_t n) {
    Uuid u{};
    u[0] = n;
    u[15] = static_cast<std::uint8_t>(n * 7);
    return u;
}

TEST(KeyIndex, KnownKeyWithItsOwnOrgIsKnown) {
    KeyIndex index(kGrace);
    index.put(id(1), id(100));
    EXPECT_EQ(index.check(id(1), id(100), 0), KeyVerdict::kKnown);
}

TEST(KeyIndex, AnotherOrgIsAMismatch) {
    KeyIndex index(kGrace);
    index.put(id(1), id(100));
    EXPECT_EQ(index.check(id(1), id(101), 0), KeyVerdict::kOrgMismatch);
}

TEST(KeyIndex, AbsentKeyIsUnknown) {
    KeyIndex index(kGrace);
    index.put(id(1), id(100));
    EXPECT_EQ(index.check(id(2), id(100), 0), KeyVerdict::kUnknownKey);
}

TEST(KeyIndex, PutReplacesTheOrg) {
    KeyIndex index(kGrace);
    index.put(id(1), id(100));
    index.put(id(1), id(101));
    EXPECT_EQ(index.check(id(1), id(101), 0), KeyVerdict::kKnown);
    EXPECT_EQ(index.check(id(1), id(100), 0), KeyVerdict::kOrgMismatch);
}

TEST(KeyIndex, RemovedKeyStaysKnownForTheGracePeriodOnly) {
    KeyIndex index(kGrace);
    index.put(id(1), id(100));
    index.remove(id(1), 5000);
    EXPECT_EQ(index.check(id(1), id(100), 5000 + kGrace), KeyVerdict::kKnown);
    EXPECT_EQ(index.check(id(1), id(100), 5001 + kGrace),
              KeyVerdict::kUnknownKey);
}

TEST(KeyIndex, ExpiredRemovalsAreForgotten) {
    KeyIndex index(kGrace);
    index.put(id(1), id(100));
    index.put(id(2), id(100));
    index.remove(id(1), 0);
    EXPECT_EQ(index.size(), 2u);
    index.remove(id(3), 2 * kGrace);  // any later change forgets old ones
    EXPECT_EQ(index.size(), 1u);
}

TEST(KeyIndex, KeyPutAgainAfterRemovalIsLiveAndNotForgotten) {
    KeyIndex index(kGrace);
    index.put(id(1), id(100));
    index.remove(id(1), 0);
    index.put(id(1), id(100));
    index.remove(id(2), 10 * kGrace);
    EXPECT_EQ(index.check(id(1), id(100), 10 * kGrace), KeyVerdict::kKnown);
}

TEST(KeyIndex, RetainOnlyRemovesTheOthers) {
    KeyIndex index(kGrace);
    index.put(id(1), id(100));
    index.put(id(2), id(100));
    index.put(id(3), id(100));
    index.retain_only({id(2)}, 0);
    const std::int64_t later = kGrace + 1;
    EXPECT_EQ(index.check(id(1), id(100), later), KeyVerdict::kUnknownKey);
    EXPECT_EQ(index.check(id(2), id(100), later), KeyVerdict::kKnown);
    EXPECT_EQ(index.check(id(3), id(100), later), KeyVerdict::kUnknownKey);
}

TEST(KeyIndex, ReadyOnlyOnceMarked) {
    KeyIndex index(kGrace);
    index.put(id(1), id(100));
    EXPECT_FALSE(index.ready());
    index.mark_ready();
    EXPECT_TRUE(index.ready());
}

}  // namespace
}  // namespace apikey
