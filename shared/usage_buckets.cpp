#include "usage_buckets.h"

#include <array>
#include <limits>

namespace apikey {
namespace {

// bound(j) = round(64 * 2^(j/8)) µs, j = 0 .. 160.
constexpr double kEighthRoots[kLatencyBucketsPerOctave] = {
    1.0,
    1.0905077326652577,
    1.1892071150027210,
    1.2968395546510096,
    1.4142135623730951,
    1.5422108254079407,
    1.6817928305074290,
    1.8340080864093424,
};

constexpr std::array<std::uint64_t, kLatencyBoundCount> make_bounds() {
    std::array<std::uint64_t, kLatencyBoundCount> b{};
    for (std::size_t j = 0; j < kLatencyBoundCount; ++j) {
        const double octave_start = static_cast<double>(
            kLatencyFirstBoundUs << (j / kLatencyBucketsPerOctave));
        b[j] = static_cast<std::uint64_t>(
            octave_start * kEighthRoots[j % kLatencyBucketsPerOctave] + 0.5);
    }
    return b;
}

constexpr std::array<std::uint64_t, kLatencyBoundCount> kBounds =
    make_bounds();
static_assert(kBounds[0] == 64);
static_assert(kBounds[8] == 128);
static_assert(kBounds[kLatencyBoundCount - 1] == 64ull << 20);
static_assert(kLatencyFirstBoundUs == 1u << 6);

}  // namespace

// Every worker request calls this: the octave from the highest set bit,
// then the 7 bounds inside it, without a branch per bound.
std::size_t latency_bucket(std::uint64_t response_time_us) noexcept {
    if (response_time_us < kLatencyFirstBoundUs) {
        return 0;
    }
    // response_time_us is in [64 << octave, 128 << octave).
    const std::size_t octave =
        static_cast<std::size_t>(63 - __builtin_clzll(response_time_us)) - 6;
    if (octave >= kLatencyOctaves) {
        return kLatencyBucketCount - 1;
    }
    const std::uint64_t* b = &kBounds[octave * kLatencyBucketsPerOctave];
    std::size_t bucket = octave * kLatencyBucketsPerOctave + 1;
    for (std::size_t j = 1; j < kLatencyBucketsPerOctave; ++j) {
        bucket += response_time_us >= b[j] ? 1 : 0;
    }
    return bucket;
}

std::uint64_t latency_bucket_lower_us(std::size_t bucket) noexcept {
    if (bucket == 0) return 0;
    if (bucket > kLatencyBoundCount) bucket = kLatencyBoundCount;
    return kBounds[bucket - 1];
}

std::uint64_t latency_bucket_upper_us(std::size_t bucket) noexcept {
    if (bucket >= kLatencyBoundCount) {
        return std::numeric_limits<std::uint64_t>::max();
    }
    return kBounds[bucket];
}

}  // namespace apikey
