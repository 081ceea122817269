// Scopes: their syntax (one rule for apikeyctl and the nginx module) and the
// hash the key table stores and the module compares.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace apikey {

inline constexpr std::size_t kMaxScopeLen = 64;

// 1 to kMaxScopeLen characters of a-z, 0-9, ':', '.', '_', '-', starting
// with a letter or digit.
bool scope_is_valid(std::string_view scope) noexcept;

// 64-bit FNV-1a of a scope name, as stored in the key table and computed by
// the module at configuration time.
std::uint64_t scope_hash(std::string_view scope) noexcept;

}  // namespace apikey
