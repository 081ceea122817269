// sha256_key must not allocate per call (it runs once per request in nginx
// workers). A binary of its own: OpenSSL accepts a counting allocator only
// before its first allocation, which other libraries linked into
// unit_tests (libpq, cpp-httplib) may already have made.

#include <atomic>
#include <cstdlib>

#include <gtest/gtest.h>
#include <openssl/crypto.h>

#include "key_format.h"
#include "key_hash.h"

namespace apikey {
namespace {

std::atomic<long> openssl_allocations{0};

void* counting_malloc(std::size_t n, const char*, int) {
    ++openssl_allocations;
    return std::malloc(n);
}
void* counting_realloc(void* p, std::size_t n, const char*, int) {
    ++openssl_allocations;
    return std::realloc(p, n);
}
void counting_free(void* p, const char*, int) { std::free(p); }

// Installed during static initialisation, before OpenSSL allocates.
const bool counting_installed =
    CRYPTO_set_mem_functions(counting_malloc, counting_realloc, counting_free);

TEST(Sha256, DoesNotAllocatePerCall) {
    ASSERT_TRUE(counting_installed)
        << "OpenSSL allocated before the counter could be installed";
    const std::string key = generate_key("ak");
    KeyHash h{};
    ASSERT_TRUE(sha256_key(key, &h));  // the first call sets up the thread
    const long before = openssl_allocations.load();
    for (int i = 0; i < 1000; ++i) {
        ASSERT_TRUE(sha256_key(key, &h));
    }
    EXPECT_EQ(openssl_allocations.load() - before, 0);
}

}  // namespace
}  // namespace apikey
