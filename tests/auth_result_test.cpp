#include "auth_result.h"

#include <gtest/gtest.h>

#include "usage_record.h"

namespace apikey {
namespace {

TEST(ResultIsRecorded, OnlyResultsWithAKnownKey) {
    EXPECT_TRUE(result_is_recorded(AuthResult::kOk));
    EXPECT_TRUE(result_is_recorded(AuthResult::kExpired));
    EXPECT_TRUE(result_is_recorded(AuthResult::kRevoked));
    EXPECT_TRUE(result_is_recorded(AuthResult::kForbidden));
    EXPECT_FALSE(result_is_recorded(AuthResult::kMissing));
    EXPECT_FALSE(result_is_recorded(AuthResult::kMalformed));
    EXPECT_FALSE(result_is_recorded(AuthResult::kUnknown));
    EXPECT_FALSE(result_is_recorded(AuthResult::kUnavailable));
}

TEST(ResultIsRecorded, NoByteOutsideTheResultsFromACorruptRing) {
    for (int byte = kAuthResultCount; byte <= 255; ++byte) {
        EXPECT_FALSE(result_is_recorded(static_cast<AuthResult>(byte)))
            << byte;
    }
    EXPECT_EQ(apikey_result_is_recorded(256), 0);
    EXPECT_EQ(apikey_result_is_recorded(~0u), 0);
}

TEST(AuthResult, ValuesAreFixed) {
    // the result byte of rings, spool files and stored rows
    EXPECT_EQ(static_cast<int>(AuthResult::kOk), 0);
    EXPECT_EQ(static_cast<int>(AuthResult::kMissing), 1);
    EXPECT_EQ(static_cast<int>(AuthResult::kMalformed), 2);
    EXPECT_EQ(static_cast<int>(AuthResult::kUnknown), 3);
    EXPECT_EQ(static_cast<int>(AuthResult::kExpired), 4);
    EXPECT_EQ(static_cast<int>(AuthResult::kRevoked), 5);
    EXPECT_EQ(static_cast<int>(AuthResult::kForbidden), 6);
    EXPECT_EQ(static_cast<int>(AuthResult::kUnavailable), 7);
    EXPECT_EQ(kAuthResultCount, 8);
}

}  // namespace
}  // namespace apikey
