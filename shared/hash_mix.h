// The 64-bit mixing steps the segment's hash tables share (usage_agg,
// usage_ipset): inline, on every request's path.
#pragma once

#include <cstdint>

namespace apikey {

inline std::uint64_t rotl64(std::uint64_t v, int r) noexcept {
    return (v << r) | (v >> (64 - r));
}

// MurmurHash3's finalizer: every input bit reaches every output bit.
inline std::uint64_t fmix64(std::uint64_t h) noexcept {
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

}  // namespace apikey
