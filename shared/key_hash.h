// SHA-256 of a key: the only form in which a key is stored anywhere.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace apikey {

using KeyHash = std::array<std::uint8_t, 32>;

// SHA-256 through OpenSSL with a digest fetched once per thread: no
// allocation per call. Returns false only if OpenSSL fails.
bool sha256_key(std::string_view key, KeyHash* out) noexcept;

}  // namespace apikey
