// tools/apikeyd/spool_frame: a batch's bytes in the spool, both versions.
#include "spool_frame.h"

#include <cstring>
#include <vector>

#include <gtest/gtest.h>

namespace apikey {
namespace {

UsageRecord make(std::uint32_t i) {
    UsageRecord r{};
    r.result = AuthResult::kOk;
    r.ip_family = IpFamily::kV4;
    r.ip[0] = 10;
    r.status = static_cast<std::uint16_t>(200 + i % 3);
    r.slot = i % 2;
    r.generation = 1700000000000000 + i % 2;
    r.sequence = 100 + i * 37;
    r.time_us = 1700000000000000 + i;
    r.key_id[0] = static_cast<std::uint8_t>(i / 3);
    r.method_len = 3;
    std::memcpy(r.method, "GET", 3);
    r.endpoint_len = 2;
    std::memcpy(r.endpoint, "/x", 2);
    r.user_agent_len = 256;
    std::memset(r.user_agent, 'u', 256);
    return r;
}

TEST(SpoolFrameTest, VersionTwoRoundTripsIdentityAndFields) {
    std::vector<UsageRecord> batch;
    for (std::uint32_t i = 0; i < 50; ++i) batch.push_back(make(i));
    std::vector<unsigned char> bytes;
    encode_spool_payload(batch, &bytes);
    // Repeated fields refer to the record before: far below 50 x 288.
    EXPECT_LT(bytes.size(), 50u * 64);
    std::vector<UsageRecord> out;
    ASSERT_TRUE(decode_spool_payload(kUsageRecordVersion, bytes.data(),
                                     bytes.size(), 50, &out));
    ASSERT_EQ(out.size(), 50u);
    for (std::uint32_t i = 0; i < 50; ++i) {
        EXPECT_EQ(out[i].slot, batch[i].slot);
        EXPECT_EQ(out[i].generation, batch[i].generation);
        EXPECT_EQ(out[i].sequence, batch[i].sequence);
        EXPECT_EQ(out[i].status, batch[i].status);
        EXPECT_EQ(out[i].key_id[0], batch[i].key_id[0]);
        EXPECT_EQ(out[i].user_agent_view(), batch[i].user_agent_view());
    }
    // A count or size that is not exactly the payload's is refused.
    EXPECT_FALSE(decode_spool_payload(kUsageRecordVersion, bytes.data(),
                                      bytes.size(), 49, &out));
    EXPECT_FALSE(decode_spool_payload(kUsageRecordVersion, bytes.data(),
                                      bytes.size(), 51, &out));
    EXPECT_FALSE(decode_spool_payload(kUsageRecordVersion, bytes.data(),
                                      bytes.size() - 1, 50, &out));
    EXPECT_FALSE(decode_spool_payload(3, bytes.data(), bytes.size(), 50, &out));
}

TEST(SpoolFrameTest, VersionOneSizeMustMatchTheCount) {
    std::vector<unsigned char> bytes(2 * kSpoolV1RecordBytes);
    std::vector<UsageRecord> out;
    EXPECT_TRUE(decode_spool_payload(1, bytes.data(), bytes.size(), 2, &out));
    EXPECT_EQ(out.size(), 2u);
    EXPECT_FALSE(decode_spool_payload(1, bytes.data(), bytes.size(), 3, &out));
}

}  // namespace
}  // namespace apikey
