#include "scope.h"

#include <gtest/gtest.h>

#include <string>

namespace apikey {
namespace {

TEST(ScopeIsValid, MatchesTheDocumentedPattern) {
    EXPECT_TRUE(scope_is_valid("a"));
    EXPECT_TRUE(scope_is_valid("0"));
    EXPECT_TRUE(scope_is_valid("usage:read"));
    EXPECT_TRUE(scope_is_valid("orders.write_all-v2"));
    EXPECT_TRUE(scope_is_valid(std::string(kMaxScopeLen, 'a')));
    EXPECT_FALSE(scope_is_valid(std::string(kMaxScopeLen + 1, 'a')));
    EXPECT_FALSE(scope_is_valid(""));
    EXPECT_FALSE(scope_is_valid("A"));
    EXPECT_FALSE(scope_is_valid(":read"));
    EXPECT_FALSE(scope_is_valid("-x"));
    EXPECT_FALSE(scope_is_valid("usage read"));
    EXPECT_FALSE(scope_is_valid("usage/read"));
    EXPECT_FALSE(scope_is_valid(std::string("a\0b", 3)));
}

TEST(ScopeHash, IsFnv1a64) {
    EXPECT_EQ(scope_hash(""), 0xcbf29ce484222325ULL);
    EXPECT_EQ(scope_hash("a"), 0xaf63dc4c8601ec8cULL);
    EXPECT_EQ(scope_hash("foobar"), 0x85944171f73967e8ULL);
    EXPECT_NE(scope_hash("usage:read"), scope_hash("usage:write"));
}

}  // namespace
}  // namespace apikey
