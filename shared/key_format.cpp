#include "key_format.h"

#include <array>
#include <stdexcept>

#include <openssl/crypto.h>
#include <openssl/rand.h>

namespace apikey {

namespace {

constexpr char kBase62[] =
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
constexpr std::uint8_t kNotBase62 = 0xff;
constexpr std::uint32_t kCrcPolynomial = 0xedb88320u;  // IEEE, reflected
// Largest multiple of 62 that fits in a byte: bytes at or above it are
// rejected so every character is equally likely (no modulo bias).
constexpr unsigned kRandomByteLimit = 62 * (256 / 62);

// Slicing-by-8 tables: tables[k][b] is the CRC of byte b followed by k zero
// bytes, so eight input bytes cost eight independent lookups.
using CrcTables = std::array<std::array<std::uint32_t, 256>, 8>;

constexpr CrcTables make_crc_tables() {
    CrcTables t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
        std::uint32_t c = i;
        for (int bit = 0; bit < 8; ++bit) {
            c = (c & 1) ? (c >> 1) ^ kCrcPolynomial : c >> 1;
        }
        t[0][i] = c;
    }
    for (std::size_t k = 1; k < t.size(); ++k) {
        for (std::size_t i = 0; i < 256; ++i) {
            t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xff];
        }
    }
    return t;
}

constexpr std::array<std::uint8_t, 256> make_base62_table() {
    std::array<std::uint8_t, 256> table{};
    for (auto& v : table) {
        v = kNotBase62;
    }
    for (std::uint8_t i = 0; i < 62; ++i) {
        table[static_cast<unsigned char>(kBase62[i])] = i;
    }
    return table;
}

constexpr bool is_prefix_char(unsigned char c) noexcept {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

constexpr std::array<std::uint8_t, 256> make_prefix_table() {
    std::array<std::uint8_t, 256> table{};
    for (unsigned c = 0; c < 256; ++c) {
        table[c] = is_prefix_char(static_cast<unsigned char>(c)) ? 1 : 0;
    }
    return table;
}

constexpr CrcTables kCrcTables = make_crc_tables();
constexpr auto kBase62Value = make_base62_table();
constexpr auto kPrefixChar = make_prefix_table();

// Raw (pre- and post-inverted by the caller) CRC32 update. Bytes are
// assembled explicitly, so this is endian-neutral.
std::uint32_t crc32_update(std::uint32_t crc, const unsigned char* p,
                           std::size_t n) noexcept {
    const auto& t = kCrcTables;
    for (; n >= 8; p += 8, n -= 8) {
        crc ^= static_cast<std::uint32_t>(p[0]) |
               static_cast<std::uint32_t>(p[1]) << 8 |
               static_cast<std::uint32_t>(p[2]) << 16 |
               static_cast<std::uint32_t>(p[3]) << 24;
        crc = t[7][crc & 0xff] ^ t[6][(crc >> 8) & 0xff] ^
              t[5][(crc >> 16) & 0xff] ^ t[4][crc >> 24] ^ t[3][p[4]] ^
              t[2][p[5]] ^ t[1][p[6]] ^ t[0][p[7]];
    }
    for (; n > 0; ++p, --n) {
        crc = t[0][(crc ^ *p) & 0xff] ^ (crc >> 8);
    }
    return crc;
}

// Fixed width, most significant digit first, zero-padded.
void encode_checksum(std::uint32_t crc, char* out) noexcept {
    std::uint64_t v = crc;
    for (std::size_t i = kChecksumChars; i-- > 0;) {
        out[i] = kBase62[v % 62];
        v /= 62;
    }
}

}  // namespace

bool prefix_is_valid(std::string_view prefix) noexcept {
    if (prefix.empty() || prefix.size() > kMaxPrefixLen) {
        return false;
    }
    for (char c : prefix) {
        if (!is_prefix_char(static_cast<unsigned char>(c))) {
            return false;
        }
    }
    return true;
}

std::uint32_t crc32(std::string_view data) noexcept {
    const auto* p = reinterpret_cast<const unsigned char*>(data.data());
    return crc32_update(0xffffffffu, p, data.size()) ^ 0xffffffffu;
}

// Character classes first (table lookups, unrolled; garbage fails before
// any CRC work), then one slicing-by-8 CRC pass over everything before the
// checksum.
bool key_is_well_formed(std::string_view key) noexcept {
    constexpr std::size_t kTailLen = 1 + kRandomChars + kChecksumChars;
    const std::size_t n = key.size();
    if (n < 1 + kTailLen || n > kMaxKeyLen) {
        return false;
    }
    const std::size_t prefix_len = n - kTailLen;
    const auto* p = reinterpret_cast<const unsigned char*>(key.data());

    unsigned prefix_ok = p[prefix_len] == '_';
    for (std::size_t i = 0; i < prefix_len; ++i) {
        prefix_ok &= kPrefixChar[p[i]];
    }
    // kNotBase62 is the only table value with the high bit set.
    const unsigned char* base62 = p + prefix_len + 1;
    unsigned seen = 0;
#pragma GCC unroll 36
    for (std::size_t i = 0; i < kRandomChars + kChecksumChars; ++i) {
        seen |= kBase62Value[base62[i]];
    }
    if (!prefix_ok || (seen & 0x80) != 0) {
        return false;
    }

    const unsigned char* check = base62 + kRandomChars;
    std::uint64_t stated = 0;
#pragma GCC unroll 6
    for (std::size_t i = 0; i < kChecksumChars; ++i) {
        stated = stated * 62 + kBase62Value[check[i]];
    }
    const std::uint32_t crc =
        crc32_update(0xffffffffu, p, n - kChecksumChars) ^ 0xffffffffu;
    return stated == crc;
}

std::string generate_key(std::string_view prefix) {
    if (!prefix_is_valid(prefix)) {
        throw std::invalid_argument("key prefix must match [a-z0-9]{1,8}");
    }
    std::string key;
    key.reserve(prefix.size() + 1 + kRandomChars + kChecksumChars);
    key.append(prefix);
    key.push_back('_');

    std::size_t produced = 0;
    while (produced < kRandomChars) {
        unsigned char bytes[64];
        if (RAND_bytes(bytes, sizeof bytes) != 1) {
            throw std::runtime_error("OpenSSL RAND_bytes failed");
        }
        for (unsigned char b : bytes) {
            if (b < kRandomByteLimit && produced < kRandomChars) {
                key.push_back(kBase62[b % 62]);
                ++produced;
            }
        }
        OPENSSL_cleanse(bytes, sizeof bytes);  // key material
    }

    char check[kChecksumChars];
    encode_checksum(crc32(key), check);
    key.append(check, kChecksumChars);
    return key;
}

std::string key_hint(std::string_view key) {
    if (!key_is_well_formed(key)) {
        // Never echo the input: it may be a real key with a typo.
        throw std::invalid_argument("key_hint: malformed key");
    }
    const std::size_t prefix_len =
        key.size() - 1 - kRandomChars - kChecksumChars;
    return std::string(key.substr(0, prefix_len + 1 + kHintRandomChars));
}

}  // namespace apikey
