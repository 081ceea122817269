// shared/raw_policy.h: which requests the raw-event policy keeps.
#include "raw_policy.h"

#include <gtest/gtest.h>

namespace {

TEST(RawPolicyTest, AllKeepsEveryRequestAndOffNone) {
    unsigned long seen = 0;
    for (unsigned status : {0u, 200u, 302u, 404u, 503u}) {
        EXPECT_TRUE(apikey_raw_kept(APIKEY_RAW_ALL, 1, status, &seen));
        EXPECT_FALSE(apikey_raw_kept(APIKEY_RAW_OFF, 1, status, &seen));
    }
    EXPECT_FALSE(apikey_raw_kept(99, 1, 500, &seen));  // unknown: none
    EXPECT_EQ(seen, 0u);
}

TEST(RawPolicyTest, ErrorsAreFourHundredAndAboveOrNoStatus) {
    unsigned long seen = 0;
    EXPECT_TRUE(apikey_raw_kept(APIKEY_RAW_ERRORS, 1, 0, &seen));
    EXPECT_FALSE(apikey_raw_kept(APIKEY_RAW_ERRORS, 1, 200, &seen));
    EXPECT_FALSE(apikey_raw_kept(APIKEY_RAW_ERRORS, 1, 399, &seen));
    EXPECT_TRUE(apikey_raw_kept(APIKEY_RAW_ERRORS, 1, 400, &seen));
    EXPECT_TRUE(apikey_raw_kept(APIKEY_RAW_ERRORS, 1, 403, &seen));
    EXPECT_TRUE(apikey_raw_kept(APIKEY_RAW_ERRORS, 1, 599, &seen));
}

TEST(RawPolicyTest, SampleKeepsTheFirstOfEveryN) {
    unsigned long seen = 0;
    int kept = 0;
    for (int i = 0; i < 1000; ++i) {
        const int k = apikey_raw_kept(APIKEY_RAW_SAMPLE, 7, 200, &seen);
        EXPECT_EQ(k, i % 7 == 0 ? 1 : 0) << i;
        kept += k;
    }
    EXPECT_EQ(kept, 143);  // ceil(1000 / 7)
    EXPECT_EQ(seen, 1000u);
    // sample=1 keeps everything.
    for (int i = 0; i < 5; ++i) {
        EXPECT_TRUE(apikey_raw_kept(APIKEY_RAW_SAMPLE, 1, 200, &seen));
    }
}

}  // namespace
