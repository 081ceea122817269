#include "ring_owners.h"

#include <unistd.h>

#include <ctime>

#include <gtest/gtest.h>

namespace apikey {
namespace {

constexpr std::int64_t kS = 1000000;

TEST(RingOwners, NspidListsEveryNamespaceOutermostFirst) {
    const char* status =
        "Name:\tnginx\nTgid:\t7\nNgid:\t0\nPid:\t7\nPPid:\t1\n"
        "NStgid:\t29791\t7\nNSpid:\t29791\t7\nNSpgid:\t29790\t1\n";
    EXPECT_EQ(parse_nspid(status), (std::vector<std::int32_t>{29791, 7}));
    EXPECT_EQ(parse_nspid("Name:\tsh\nNSpid:\t42\n"),
              (std::vector<std::int32_t>{42}));
}

TEST(RingOwners, NoOrBrokenNspidLineGivesNothing) {
    EXPECT_TRUE(parse_nspid("Name:\tsh\nPid:\t42\n").empty());
    EXPECT_TRUE(parse_nspid("Name:\tsh\nNSpid:\t42x\n").empty());
    EXPECT_TRUE(parse_nspid("Name:\tsh\nNSpid:\t99999999999\n").empty());
}

TEST(RingOwners, StartTimeIsField22EvenWithSpacesInTheName) {
    std::string stat = "123 (a b) c) S 1 123 123 0 -1 4194560 100 0 0 0 "
                       "1 2 0 0 20 0 1 0 98765 1000 10 0 0 0";
    EXPECT_EQ(parse_start_ticks(stat), 98765u);
    EXPECT_FALSE(parse_start_ticks("123 (x) S 1 2").has_value());
    EXPECT_FALSE(parse_start_ticks("garbage").has_value());
}

TEST(RingOwners, AWorkerClaimsAsItStarts) {
    const std::int64_t claim = 1700000000 * kS;
    EXPECT_TRUE(started_at_claim(claim, claim));
    EXPECT_TRUE(started_at_claim(claim - 30 * kS, claim));  // slow start
    EXPECT_TRUE(started_at_claim(claim + kS, claim));  // second-wide btime
    EXPECT_FALSE(started_at_claim(claim + 10 * kS, claim));  // pid reused
    EXPECT_FALSE(started_at_claim(claim - 3600 * kS, claim));  // a stranger
}

TEST(RingOwners, OwnProcessIsSeenHereWhenItClaimedAtItsStart) {
    // This test process started less than a minute before "now" is unsure
    // (a long ctest run): check the two sides that do not depend on it.
    const std::int64_t now = static_cast<std::int64_t>(time(nullptr)) * kS;
    EXPECT_TRUE(process_exists(getpid()));
    EXPECT_FALSE(owner_seen_here(getpid(), now + 3600 * kS));
    EXPECT_FALSE(owner_seen_here(0, now));
}

TEST(RingOwners, OwnPidIsNotInANestedNamespace) {
    // This process is in the namespace of /proc: its NSpid has one entry.
    EXPECT_FALSE(pid_used_in_nested_namespace(getpid()));
}

}  // namespace
}  // namespace apikey
