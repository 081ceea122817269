// The buckets a request is counted in, for the rollups: its status class,
// its latency bucket and its UTC hour. One definition for the worker (which
// aggregates in shared memory) and apikeyd (rollups, percentiles); the SQL
// side only adds bucket counts up. docs/data-model.md lists the bounds.
#pragma once

#include <cstddef>
#include <cstdint>

namespace apikey {

// --- status classes ----------------------------------------------------------

enum class StatusClass : std::uint8_t { k2xx, k3xx, k4xx, k5xx, kOther };
inline constexpr std::size_t kStatusClassCount = 5;

// 200-299 -> k2xx ... 500-599 -> k5xx; 1xx, 0 (client closed before a
// response) and anything else -> kOther (status_other), so that
// requests = 2xx + 3xx + 4xx + 5xx + other. Inline: the worker classifies
// every request.
// Arithmetic, not a switch: the classes k2xx..k5xx are 0..3 in order;
// the usual 2xx without the division.
inline StatusClass status_class(std::uint16_t status) noexcept {
    static_assert(static_cast<int>(StatusClass::k2xx) == 0 &&
                  static_cast<int>(StatusClass::k5xx) == 3 &&
                  static_cast<int>(StatusClass::kOther) == 4);
    if (static_cast<unsigned>(status) - 200 < 100) {
        return StatusClass::k2xx;
    }
    const unsigned c = static_cast<unsigned>(status) / 100 - 2;
    return c < 4 ? static_cast<StatusClass>(c) : StatusClass::kOther;
}

// --- latency histogram -------------------------------------------------------

// Log-scale buckets, 8 per doubling (each bucket ~9.05% wide, so the
// geometric middle of a bucket is within 4.4% of any value in it), from
// 64 µs to 2^26 µs (~67.1 s):
//   bucket 0           [0, 64 µs)
//   bucket b, 1..160   [bound(b-1), bound(b)),
//                      bound(j) = round(64 · 2^(j/8)) µs
//   bucket 161         [67 108 864 µs, ∞)
// In PostgreSQL the bucket b is array subscript b + 1.
inline constexpr std::size_t kLatencyBucketsPerOctave = 8;
inline constexpr std::size_t kLatencyOctaves = 20;
inline constexpr std::uint64_t kLatencyFirstBoundUs = 64;
inline constexpr std::size_t kLatencyBoundCount =
    kLatencyBucketsPerOctave * kLatencyOctaves + 1;  // 161
inline constexpr std::size_t kLatencyBucketCount = kLatencyBoundCount + 1;

// Bucket of a response time; never more than kLatencyBucketCount - 1.
std::size_t latency_bucket(std::uint64_t response_time_us) noexcept;
// Inclusive lower bound of bucket b, in µs (0 for bucket 0).
std::uint64_t latency_bucket_lower_us(std::size_t bucket) noexcept;
// Exclusive upper bound of bucket b, in µs (UINT64_MAX for the last one).
std::uint64_t latency_bucket_upper_us(std::size_t bucket) noexcept;

// --- hours -------------------------------------------------------------------

inline constexpr std::int64_t kUsPerHour = 3600LL * 1000000;
inline constexpr std::int64_t kUsPerDay = 24 * kUsPerHour;

// The UTC hour that holds time_us, counted from 1970 (floor, also before).
inline std::int64_t hour_of(std::int64_t time_us) noexcept {
    if (time_us >= 0) {  // every real request: the cheaper division
        return static_cast<std::int64_t>(static_cast<std::uint64_t>(time_us) /
                                         kUsPerHour);
    }
    const std::int64_t q = time_us / kUsPerHour;
    return q * kUsPerHour > time_us ? q - 1 : q;
}

}  // namespace apikey
