// UUIDs as 16 raw bytes (what the key table and usage records carry) and
// their canonical 36-character text form (what PostgreSQL and the API use).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace apikey {

using Uuid = std::array<std::uint8_t, 16>;

inline constexpr std::size_t kUuidTextLen = 36;

// Writes exactly 36 lowercase characters, no terminator.
void uuid_format(const Uuid& id, char* out) noexcept;
std::string uuid_to_string(const Uuid& id);

// Accepts the canonical 8-4-4-4-12 form, either case.
bool uuid_parse(std::string_view text, Uuid* out) noexcept;

}  // namespace apikey
