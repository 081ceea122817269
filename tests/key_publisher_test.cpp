#include "key_publisher.h"

#include <gtest/gtest.h>

namespace apikey {
namespace {

KeyRow sample_row() {
    KeyRow r;
    r.id = "0b6e1c9a-8a5e-4c3e-9d2e-1f0a2b3c4d5e";
    r.org_id = "5f1d2c3b-4a59-4687-a6b5-c4d3e2f1a0b9";
    r.name = "billing service";
    r.key_hash_hex = std::string(62, 'a') + "0f";
    r.scopes = "usage:read,orders.write";
    return r;
}

TEST(KeyInfoFromRow, CopiesIdsNameScopesAndHash) {
    KeyInfo info = key_info_from_row(sample_row());
    EXPECT_EQ(uuid_to_string(info.key_id), sample_row().id);
    EXPECT_EQ(uuid_to_string(info.org_id), sample_row().org_id);
    EXPECT_EQ(info.name_view(), "billing service");
    EXPECT_EQ(info.key_hash[0], 0xaa);
    EXPECT_EQ(info.key_hash[31], 0x0f);
    ASSERT_EQ(info.scope_count, 2);
    EXPECT_TRUE(info.has_scope(scope_hash("usage:read")));
    EXPECT_TRUE(info.has_scope(scope_hash("orders.write")));
    EXPECT_FALSE(info.has_scope(scope_hash("usage")));
    EXPECT_EQ(info.expires_at_us, 0);
    EXPECT_EQ(info.revoked_at_us, 0);
}

TEST(KeyInfoFromRow, TimesAndNoScopes) {
    KeyRow r = sample_row();
    r.scopes = "";
    r.expires_at_us = 1700000000000000;
    r.revoked_at_us = 0;  // revoked at the epoch still counts as revoked
    KeyInfo info = key_info_from_row(r);
    EXPECT_EQ(info.scope_count, 0);
    EXPECT_EQ(info.expires_at_us, 1700000000000000);
    EXPECT_NE(info.revoked_at_us, 0);
}

TEST(KeyInfoFromRow, RejectsRowsTheTableCannotHold) {
    KeyRow r = sample_row();
    r.key_hash_hex = "abcd";
    EXPECT_THROW(key_info_from_row(r), std::invalid_argument);
    r = sample_row();
    r.key_hash_hex[5] = 'g';
    EXPECT_THROW(key_info_from_row(r), std::invalid_argument);
    r = sample_row();
    r.id = "not-a-uuid";
    EXPECT_THROW(key_info_from_row(r), std::invalid_argument);
    r = sample_row();
    r.name = std::string(kMaxNameLen + 1, 'n');
    EXPECT_THROW(key_info_from_row(r), std::invalid_argument);
    r = sample_row();
    r.scopes = "a,b,c,d,e,f,g,h,i";
    EXPECT_THROW(key_info_from_row(r), std::invalid_argument);
}

}  // namespace
}  // namespace apikey
