#include "api_auth.h"
#include "scratch_dir.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "key_format.h"
#include "key_hash.h"
#include "key_publisher.h"

namespace apikey::api {
namespace {

constexpr const char* kOrg = "5f1d2c3b-4a59-4687-a6b5-c4d3e2f1a0b9";
constexpr const char* kKeyId = "0b6e1c9a-8a5e-4c3e-9d2e-1f0a2b3c4d5e";
constexpr std::int64_t kNow = 1715769000LL * 1000000;

std::string hex(const KeyHash& h) {
    std::string out;
    char buf[3];
    for (std::uint8_t b : h) {
        std::snprintf(buf, sizeof buf, "%02x", b);
        out += buf;
    }
    return out;
}

// A key-table entry for `key` as apikeyd would publish it.
KeyInfo entry(const std::string& key, const std::string& scopes,
              std::optional<std::int64_t> expires = std::nullopt,
              std::optional<std::int64_t> revoked = std::nullopt) {
    KeyHash h;
    EXPECT_TRUE(sha256_key(key, &h));
    KeyRow row;
    row.id = kKeyId;
    row.org_id = kOrg;
    row.name = "admin";
    row.key_hash_hex = hex(h);
    row.scopes = scopes;
    row.expires_at_us = expires;
    row.revoked_at_us = revoked;
    return key_info_from_row(row);
}

class ApiAuthTest : public ::testing::Test {
   protected:
    void SetUp() override {
        const auto* test =
            ::testing::UnitTest::GetInstance()->current_test_info();
        path_ = scratch_.file(test->name());
        cleanup();
    }
    void TearDown() override { cleanup(); }
    void cleanup() {
        unlink(path_.c_str());
        unlink((path_ + ".tmp").c_str());
    }

    // A published, ready table holding `entries`.
    KeyTableWriter publish(std::initializer_list<KeyInfo> entries) {
        KeyTableWriter w = KeyTableWriter::create(path_, 0);
        for (const KeyInfo& e : entries) EXPECT_TRUE(w.upsert(e));
        w.set_ready();
        w.publish();
        return w;
    }

    AuthResult auth(KeyTableAuth& a, const std::string& key,
                    std::int64_t now = kNow) {
        return a.authenticate({"Bearer " + key}, now);
    }

    apikey::testing::ScratchDir scratch_;
    std::string path_;
};

TEST(BearerToken, ExtractsTheCredentials) {
    EXPECT_EQ(bearer_token("Bearer abc"), "abc");
    EXPECT_EQ(bearer_token("bearer abc"), "abc");
    EXPECT_EQ(bearer_token("BEARER   abc  "), "abc");
    EXPECT_EQ(bearer_token("  Bearer\tabc"), "abc");
}

TEST(BearerToken, RejectsOtherSchemesAndEmptyTokens) {
    EXPECT_FALSE(bearer_token(""));
    EXPECT_FALSE(bearer_token("Bearer"));
    EXPECT_FALSE(bearer_token("Bearer "));
    EXPECT_FALSE(bearer_token("Bearerabc"));
    EXPECT_FALSE(bearer_token("Basic YWxhZGRpbjpvcGVu"));
    EXPECT_FALSE(bearer_token("ApiKey abc"));
    EXPECT_FALSE(bearer_token("abc"));
}

TEST_F(ApiAuthTest, ValidKeyWithScope) {
    std::string key = generate_key("ak");
    KeyTableWriter w = publish({entry(key, "usage:read,other")});
    KeyTableAuth a(path_);
    AuthResult r = auth(a, key);
    EXPECT_EQ(r.status, AuthStatus::kOk);
    EXPECT_TRUE(r.usage_read);
    EXPECT_EQ(uuid_to_string(r.org_id), kOrg);
    EXPECT_EQ(uuid_to_string(r.key_id), kKeyId);
}

TEST_F(ApiAuthTest, ValidKeyWithoutScope) {
    std::string key = generate_key("ak");
    KeyTableWriter w = publish({entry(key, "usage:write,usage")});
    KeyTableAuth a(path_);
    AuthResult r = auth(a, key);
    EXPECT_EQ(r.status, AuthStatus::kOk);
    EXPECT_FALSE(r.usage_read);
}

TEST_F(ApiAuthTest, MissingMalformedUnknown) {
    std::string key = generate_key("ak");
    KeyTableWriter w = publish({entry(key, "usage:read")});
    KeyTableAuth a(path_);
    EXPECT_EQ(a.authenticate({}, kNow).status, AuthStatus::kMissing);
    EXPECT_EQ(a.authenticate({"Basic eDp5"}, kNow).status,
              AuthStatus::kMissing);
    EXPECT_EQ(a.authenticate({"Bearer " + key, "Bearer " + key}, kNow).status,
              AuthStatus::kMalformed);
    EXPECT_EQ(auth(a, "not-a-key").status, AuthStatus::kMalformed);
    std::string typo = key;
    typo[5] = typo[5] == 'A' ? 'B' : 'A';
    EXPECT_EQ(auth(a, typo).status, AuthStatus::kMalformed);  // checksum
    EXPECT_EQ(auth(a, generate_key("ak")).status, AuthStatus::kUnknown);
}

TEST_F(ApiAuthTest, ExpiredAndRevoked) {
    std::string expired = generate_key("ak");
    std::string revoked = generate_key("ak");
    std::string later = generate_key("ak");
    KeyTableWriter w =
        publish({entry(expired, "usage:read", kNow),
                 entry(revoked, "usage:read", std::nullopt, kNow - 1),
                 entry(later, "usage:read", kNow + 1)});
    KeyTableAuth a(path_);
    EXPECT_EQ(auth(a, expired).status, AuthStatus::kExpired);
    EXPECT_EQ(auth(a, revoked).status, AuthStatus::kRevoked);
    EXPECT_EQ(auth(a, later).status, AuthStatus::kOk);
    EXPECT_EQ(auth(a, later, kNow + 1).status, AuthStatus::kExpired);
}

TEST_F(ApiAuthTest, NoTableIsUnavailableUntilOneIsPublished) {
    std::string key = generate_key("ak");
    KeyTableAuth a(path_);
    EXPECT_EQ(auth(a, key).status, AuthStatus::kUnavailable);
    // A malformed key is refused without a table.
    EXPECT_EQ(auth(a, "garbage").status, AuthStatus::kMalformed);
    KeyTableWriter w = publish({entry(key, "usage:read")});
    // Attach attempts are throttled; a later request finds the table.
    EXPECT_EQ(auth(a, key, kNow + 1000000).status, AuthStatus::kOk);
}

TEST_F(ApiAuthTest, TableNotReadyIsUnavailable) {
    std::string key = generate_key("ak");
    KeyTableWriter w = KeyTableWriter::create(path_, 0);
    ASSERT_TRUE(w.upsert(entry(key, "usage:read")));
    w.publish();  // not ready: the first full load has not finished
    KeyTableAuth a(path_);
    EXPECT_EQ(auth(a, key).status, AuthStatus::kUnavailable);
}

TEST_F(ApiAuthTest, FollowsAReplacedTable) {
    std::string key = generate_key("ak");
    KeyTableWriter w1 = publish({entry(key, "usage:read")});
    KeyTableAuth a(path_);
    ASSERT_EQ(auth(a, key).status, AuthStatus::kOk);
    // apikeyd rebuilds the table, now with the key revoked.
    KeyTableWriter w2 = publish({entry(key, "usage:read", std::nullopt, 1)});
    EXPECT_EQ(auth(a, key).status, AuthStatus::kRevoked);
}

TEST_F(ApiAuthTest, CheckKeyRefusesAMalformedKeyBeforeTheTable) {
    std::string key = generate_key("ak");
    KeyTableWriter w = publish({entry(key, "usage:read")});
    KeyTableReader table;
    std::string why;
    ASSERT_EQ(table.attach(path_.c_str(), &why), SegmentStatus::kOk) << why;
    EXPECT_EQ(check_key(table, key, kNow).status, AuthStatus::kOk);
    EXPECT_EQ(check_key(table, key.substr(1), kNow).status,
              AuthStatus::kMalformed);
    EXPECT_EQ(check_key(KeyTableReader(), key, kNow).status,
              AuthStatus::kUnavailable);
}

TEST(AuthStatusMessage, NothingToSayForOkOrUnavailable) {
    EXPECT_EQ(auth_status_message(AuthStatus::kOk), "");
    EXPECT_EQ(auth_status_message(AuthStatus::kUnavailable), "");
}

TEST(AuthStatusMessage, SaysWhyWithoutTheKey) {
    EXPECT_EQ(auth_status_message(AuthStatus::kRevoked), "revoked API key");
    EXPECT_EQ(auth_status_message(AuthStatus::kExpired), "expired API key");
    EXPECT_EQ(auth_status_message(AuthStatus::kUnknown), "unknown API key");
    EXPECT_EQ(auth_status_message(AuthStatus::kMalformed), "malformed API key");
    EXPECT_NE(auth_status_message(AuthStatus::kMissing).find("Bearer"),
              std::string_view::npos);
}

}  // namespace
}  // namespace apikey::api
