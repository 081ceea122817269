#include "key_hash.h"

#include <cstring>

#include <openssl/core_dispatch.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/provider.h>

namespace apikey {

namespace {

// Fetched once per process: EVP_MD_fetch does a provider lookup and takes a
// lock, too slow for every request. Never freed (lives until exit); it also
// keeps its provider, and so the functions below, loaded.
const EVP_MD* sha256_md() noexcept {
    static EVP_MD* const md = EVP_MD_fetch(nullptr, "SHA256", nullptr);
    return md;
}

// The fetched provider's own SHA-256 functions. OpenSSL 3.0's
// EVP_DigestInit_ex2 frees and reallocates the provider context on every
// call, even for the same digest; calling the provider directly with one
// context per thread hashes without allocating.
struct ProviderSha256 {
    OSSL_FUNC_digest_newctx_fn* newctx = nullptr;
    OSSL_FUNC_digest_init_fn* init = nullptr;
    OSSL_FUNC_digest_update_fn* update = nullptr;
    OSSL_FUNC_digest_final_fn* finalize = nullptr;
    OSSL_FUNC_digest_freectx_fn* freectx = nullptr;
    void* provctx = nullptr;

    bool usable() const noexcept {
        return newctx && init && update && finalize && freectx && provctx;
    }
};

// True if the first of the colon-separated `names` designates `md`.
bool names_digest(const char* names, const EVP_MD* md) noexcept {
    char first[64];
    const std::size_t len = std::strcspn(names, ":");
    if (len == 0 || len >= sizeof first) {
        return false;
    }
    std::memcpy(first, names, len);
    first[len] = '\0';
    return EVP_MD_is_a(md, first) == 1;
}

void take_functions(const OSSL_DISPATCH* fns, ProviderSha256* out) noexcept {
    for (; fns->function_id != 0; ++fns) {
        switch (fns->function_id) {
        case OSSL_FUNC_DIGEST_NEWCTX:
            out->newctx = OSSL_FUNC_digest_newctx(fns);
            break;
        case OSSL_FUNC_DIGEST_INIT:
            out->init = OSSL_FUNC_digest_init(fns);
            break;
        case OSSL_FUNC_DIGEST_UPDATE:
            out->update = OSSL_FUNC_digest_update(fns);
            break;
        case OSSL_FUNC_DIGEST_FINAL:
            out->finalize = OSSL_FUNC_digest_final(fns);
            break;
        case OSSL_FUNC_DIGEST_FREECTX:
            out->freectx = OSSL_FUNC_digest_freectx(fns);
            break;
        default:
            break;
        }
    }
}

ProviderSha256 find_provider_sha256() noexcept {
    ProviderSha256 found;
    const EVP_MD* md = sha256_md();
    const OSSL_PROVIDER* prov = md ? EVP_MD_get0_provider(md) : nullptr;
    if (prov == nullptr) {
        return found;
    }
    int no_cache = 0;
    const OSSL_ALGORITHM* algs =
        OSSL_PROVIDER_query_operation(prov, OSSL_OP_DIGEST, &no_cache);
    for (const OSSL_ALGORITHM* a = algs; a && a->algorithm_names; ++a) {
        if (names_digest(a->algorithm_names, md)) {
            take_functions(a->implementation, &found);
            break;
        }
    }
    if (algs != nullptr) {
        OSSL_PROVIDER_unquery_operation(prov, OSSL_OP_DIGEST, algs);
    }
    found.provctx = OSSL_PROVIDER_get0_provider_ctx(prov);
    return found;
}

const ProviderSha256& provider_sha256() noexcept {
    static const ProviderSha256 fns = find_provider_sha256();
    return fns;
}

// Per-thread state, created on first use and freed at thread exit. The EVP
// context is the fallback if the provider functions are not available.
struct ThreadSha256 {
    void* algctx = nullptr;
    EVP_MD_CTX* evp = nullptr;

    ThreadSha256() noexcept {
        const ProviderSha256& p = provider_sha256();
        if (p.usable()) {
            algctx = p.newctx(p.provctx);
        }
        if (algctx == nullptr) {
            evp = EVP_MD_CTX_new();
        }
    }
    ~ThreadSha256() {
        if (algctx != nullptr) {
            provider_sha256().freectx(algctx);
        }
        EVP_MD_CTX_free(evp);
    }
    ThreadSha256(const ThreadSha256&) = delete;
    ThreadSha256& operator=(const ThreadSha256&) = delete;
};

bool hash_with_provider(void* algctx, std::string_view key,
                        KeyHash* out) noexcept {
    const ProviderSha256& p = provider_sha256();
    std::size_t len = 0;
    return p.init(algctx, nullptr) == 1 &&
           p.update(algctx, reinterpret_cast<const unsigned char*>(key.data()),
                    key.size()) == 1 &&
           p.finalize(algctx, out->data(), &len, out->size()) == 1 &&
           len == out->size();
}

bool hash_with_evp(EVP_MD_CTX* ctx, std::string_view key,
                   KeyHash* out) noexcept {
    const EVP_MD* md = sha256_md();
    unsigned int len = 0;
    return md != nullptr && ctx != nullptr &&
           EVP_DigestInit_ex2(ctx, md, nullptr) == 1 &&
           EVP_DigestUpdate(ctx, key.data(), key.size()) == 1 &&
           EVP_DigestFinal_ex(ctx, out->data(), &len) == 1 &&
           len == out->size();
}

}  // namespace

bool sha256_key(std::string_view key, KeyHash* out) noexcept {
    thread_local ThreadSha256 state;
    if (state.algctx != nullptr) {
        return hash_with_provider(state.algctx, key, out);
    }
    return hash_with_evp(state.evp, key, out);
}

}  // namespace apikey
