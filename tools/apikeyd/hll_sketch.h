// A HyperLogLog sketch of 64-bit hashes (precision 12: 4,096 registers,
// a standard error of 1.04 / sqrt(4096) = 1.6%), as stored per (key, UTC
// day) in api_key_distinct_ips.sketch. Merging is a register-wise max:
// merging the same hashes twice changes nothing, which makes a replayed
// aggregation buffer harmless.
//
// Stored form (bytea): empty for no hash; 0x01 then (register index u16
// big-endian, value u8) triples in index order while that is shorter
// (up to 1,365 registers set), so a key seen from a few addresses costs a
// few bytes; 0x02 then the 4,096 register values otherwise.
//
// The estimate is Ertl's improved raw estimator ("New cardinality
// estimation algorithms for HyperLogLog sketches", 2017): unbiased from
// 0 to far beyond 10^9 without an empirical bias table; a handful of
// hashes in distinct registers estimate to exactly their count once
// rounded.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace apikey {

inline constexpr int kHllPrecision = 12;
inline constexpr std::size_t kHllRegisters = std::size_t{1} << kHllPrecision;

class HllSketch {
public:
    void add(std::uint64_t hash) noexcept;
    // Register-wise max; true if any register grew.
    bool merge(const HllSketch& other) noexcept;
    // False (and the sketch unchanged) if `stored` is not a stored form.
    bool merge_stored(std::string_view stored) noexcept;
    std::string stored() const;
    // The estimated count of distinct hashes added, rounded.
    std::uint64_t estimate() const noexcept;
    bool empty() const noexcept;

private:
    std::array<std::uint8_t, kHllRegisters> registers_{};
};

}  // namespace apikey
