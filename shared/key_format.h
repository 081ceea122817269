// API key format: <prefix>_<30 base62 random><6 base62 CRC32 of the rest>.
// The checksum lets the module reject typos and garbage before any hashing or
// lookup, and lets secret scanners recognise leaked keys.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace apikey {

inline constexpr std::size_t kMaxPrefixLen = 8;
inline constexpr std::size_t kRandomChars = 30;
inline constexpr std::size_t kChecksumChars = 6;
inline constexpr std::size_t kHintRandomChars = 4;
inline constexpr std::size_t kMaxKeyLen =
    kMaxPrefixLen + 1 + kRandomChars + kChecksumChars;
inline constexpr std::string_view kDefaultPrefix = "ak";

// [a-z0-9]{1,8}
bool prefix_is_valid(std::string_view prefix) noexcept;

// Full syntactic check: prefix, '_', 36 base62 characters, and a checksum
// that matches. No allocation, no hashing; safe on arbitrary bytes.
bool key_is_well_formed(std::string_view key) noexcept;

// CRC32 (IEEE, as zlib) of data.
std::uint32_t crc32(std::string_view data) noexcept;

// A fresh key from OpenSSL's CSPRNG. Throws std::invalid_argument on a bad
// prefix and std::runtime_error if the CSPRNG fails.
std::string generate_key(std::string_view prefix);

// prefix + '_' + the first 4 random characters: what the API shows.
// Requires a well-formed key.
std::string key_hint(std::string_view key);

}  // namespace apikey
