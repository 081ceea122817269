// What the key code does when OpenSSL offers no SHA-256 and no random
// bytes: a process whose only provider is OpenSSL's "null" one (as a broken
// or FIPS-only configuration would leave it). A binary of its own: the
// provider choice is made once per process, before the first fetch.

#include <stdexcept>

#include <gtest/gtest.h>
#include <openssl/crypto.h>
#include <openssl/provider.h>

#include "key_format.h"
#include "key_hash.h"
#include "key_memo.h"

namespace apikey {
namespace {

// Loading a provider explicitly stops OpenSSL from loading its default one;
// no configuration file may load it either.
bool only_null_provider() {
    static const bool loaded =
        OPENSSL_init_crypto(OPENSSL_INIT_NO_LOAD_CONFIG, nullptr) == 1 &&
        OSSL_PROVIDER_load(nullptr, "null") != nullptr &&
        OSSL_PROVIDER_available(nullptr, "default") == 0;
    return loaded;
}

TEST(Sha256Unavailable, HashingFailsInsteadOfReturningGarbage) {
    ASSERT_TRUE(only_null_provider());
    const std::string key = "ak_" + std::string(30, 'a') + "AAAAAA";
    KeyHash h{};
    h.fill(0xab);
    EXPECT_FALSE(sha256_key(key, &h));
    EXPECT_FALSE(sha256_key(key, &h)) << "the second call of the thread too";
}

TEST(Sha256Unavailable, NoKeyIsGeneratedWithoutRandomBytes) {
    ASSERT_TRUE(only_null_provider());
    EXPECT_THROW(generate_key("ak"), std::runtime_error);
}

TEST(Sha256Unavailable, TheMemoStaysOffWithoutASeed) {
    ASSERT_TRUE(only_null_provider());
    KeyHashMemo memo;
    const std::string key = "ak_" + std::string(30, 'b') + "BBBBBB";
    KeyHashMemo::Probe probe;
    EXPECT_EQ(memo.find(key, &probe), nullptr);
    EXPECT_FALSE(probe.usable) << "an unseeded memo is never used";
}

}  // namespace
}  // namespace apikey
