// Fuzz target: the key format (shared/key_format.cpp) and key hashing
// (shared/key_hash.cpp), which the nginx module runs on every request's
// untrusted X-API-Key / Bearer value.
//
// Checks, for arbitrary bytes:
//  - key_is_well_formed() never crashes and agrees with an independent,
//    deliberately slow reference of the documented format
//    (<[a-z0-9]{1,8}>_<30 base62><6 base62 = CRC32 of everything before>);
//  - crc32() (slicing-by-8) equals a bitwise CRC32;
//  - a well-formed input: key_hint() returns prefix + '_' + 4 characters
//    and never throws; sha256_key() succeeds and equals OpenSSL's one-shot
//    EVP_Digest(SHA-256);
//  - a malformed input: key_hint() throws std::invalid_argument whose
//    message does not contain the input.
// Then, from the same bytes, a generate_key()-like key (prefix and 30
// random characters taken from the input, checksum computed by the
// reference): it must be well formed, and every single-character
// substitution of it must be rejected (the point of the checksum: typos
// fail before any lookup; CRC32 catches every single-byte change, so this
// holds always, not just with high probability). generate_key() itself is called with a prefix
// taken from the input: a valid prefix gives a well-formed key, an invalid
// one throws std::invalid_argument.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>

#include <openssl/evp.h>

#include "key_format.h"
#include "key_hash.h"

#include "fuzz_check.h"

namespace {

using namespace apikey;

constexpr char kAlphabet[] =
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

std::uint32_t ref_crc32(std::string_view data) {
    std::uint32_t c = 0xffffffffu;
    for (unsigned char b : data) {
        c ^= b;
        for (int i = 0; i < 8; ++i) c = (c & 1) ? (c >> 1) ^ 0xedb88320u : c >> 1;
    }
    return c ^ 0xffffffffu;
}

int ref_base62(char c) {
    const char* p = c ? std::strchr(kAlphabet, c) : nullptr;
    return p ? static_cast<int>(p - kAlphabet) : -1;
}

bool ref_well_formed(std::string_view key) {
    std::size_t us = key.find('_');
    if (us == std::string_view::npos || us < 1 || us > 8) return false;
    for (std::size_t i = 0; i < us; ++i) {
        char c = key[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))) return false;
    }
    std::string_view tail = key.substr(us + 1);
    if (tail.size() != 36) return false;
    std::uint64_t stated = 0;
    for (std::size_t i = 0; i < tail.size(); ++i) {
        int v = ref_base62(tail[i]);
        if (v < 0) return false;
        if (i >= 30) stated = stated * 62 + static_cast<unsigned>(v);
    }
    return stated == ref_crc32(key.substr(0, key.size() - 6));
}

std::string ref_checksum(std::uint32_t crc) {
    std::string out(6, '0');
    std::uint64_t v = crc;
    for (int i = 5; i >= 0; --i) {
        out[static_cast<std::size_t>(i)] = kAlphabet[v % 62];
        v /= 62;
    }
    return out;
}

void check_hash(std::string_view key) {
    KeyHash h{};
    FUZZ_CHECK(sha256_key(key, &h));
    unsigned char want[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    FUZZ_CHECK(EVP_Digest(key.data(), key.size(), want, &len, EVP_sha256(),
                          nullptr) == 1);
    FUZZ_CHECK(len == h.size());
    FUZZ_CHECK(std::memcmp(want, h.data(), h.size()) == 0);
}

void check_any_input(std::string_view in) {
    const bool ok = key_is_well_formed(in);
    FUZZ_CHECK(ok == ref_well_formed(in));
    FUZZ_CHECK(crc32(in) == ref_crc32(in));
    if (ok) {
        std::string hint = key_hint(in);
        std::size_t prefix_len = in.find('_');
        FUZZ_CHECK(hint.size() == prefix_len + 1 + kHintRandomChars);
        FUZZ_CHECK(in.substr(0, hint.size()) == hint);
        FUZZ_CHECK(prefix_is_valid(in.substr(0, prefix_len)));
        check_hash(in);
    } else {
        bool threw = false;
        try {
            (void)key_hint(in);
        } catch (const std::invalid_argument& e) {
            threw = true;
            // Never echo the input (it may be a real key with a typo): the
            // message is the same whatever the input.
            static const std::string kMessage = [] {
                try {
                    (void)key_hint("");
                } catch (const std::invalid_argument& e) {
                    return std::string(e.what());
                }
                return std::string();
            }();
            FUZZ_CHECK(!kMessage.empty() && kMessage == e.what());
        }
        FUZZ_CHECK(threw);
        if (in.size() <= kMaxKeyLen * 2) check_hash(in);  // also on garbage
    }
}

// A key built like generate_key() does, from fuzz bytes instead of the CSPRNG.
void check_made_key(const std::uint8_t* data, std::size_t size) {
    if (size < 2) return;
    std::size_t prefix_len = 1 + data[0] % kMaxPrefixLen;
    std::string key;
    std::size_t at = 1;
    auto next = [&]() -> unsigned {
        return at < size ? data[at++] : static_cast<unsigned>(at++ * 31);
    };
    for (std::size_t i = 0; i < prefix_len; ++i) {
        key.push_back("abcdefghijklmnopqrstuvwxyz0123456789"[next() % 36]);
    }
    key.push_back('_');
    for (std::size_t i = 0; i < kRandomChars; ++i) {
        key.push_back(kAlphabet[next() % 62]);
    }
    key += ref_checksum(ref_crc32(key));
    FUZZ_CHECK(key.size() <= kMaxKeyLen);
    FUZZ_CHECK(key_is_well_formed(key));
    FUZZ_CHECK(key_hint(key) == key.substr(0, prefix_len + 1 + kHintRandomChars));
    check_hash(key);

    // Every single-character substitution is a typo the checksum catches.
    const unsigned pos = next() % key.size();
    const unsigned char repl = static_cast<unsigned char>(next());
    std::string typo = key;
    typo[pos] = static_cast<char>(repl);
    if (typo != key) {
        FUZZ_CHECK(!key_is_well_formed(typo));
    }
}

void check_generate(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return;
    std::string_view prefix(reinterpret_cast<const char*>(data),
                            data[0] % 12 < size ? data[0] % 12 : size);
    if (!prefix.empty()) prefix.remove_prefix(1);
    if (prefix_is_valid(prefix)) {
        std::string key = generate_key(prefix);
        FUZZ_CHECK(key.size() == prefix.size() + 1 + kRandomChars + kChecksumChars);
        FUZZ_CHECK(key.compare(0, prefix.size(), prefix) == 0);
        FUZZ_CHECK(key_is_well_formed(key));
        FUZZ_CHECK(ref_well_formed(key));
    } else {
        bool threw = false;
        try {
            (void)generate_key(prefix);
        } catch (const std::invalid_argument&) {
            threw = true;
        }
        FUZZ_CHECK(threw);
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view in(reinterpret_cast<const char*>(data), size);
    check_any_input(in);
    check_made_key(data, size);
    check_generate(data, size);
    return 0;
}
