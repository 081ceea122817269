// One usage record: what the nginx log phase writes per request into its
// ring and apikeyd stores in api_key_usage. Fixed size, trivially copyable,
// versioned; text fields are truncated, not terminated.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <type_traits>

#include "auth_result.h"

namespace apikey {

inline constexpr std::uint16_t kUsageRecordVersion = 1;
inline constexpr std::size_t kUsageMethodLen = 16;
inline constexpr std::size_t kUsageEndpointLen = 96;
inline constexpr std::size_t kUsageUserAgentLen = 64;

// The result of a key check, as apikey_result_e (auth_result.h) defines it
// for the C shim and C++ alike.
enum class AuthResult : std::uint8_t {
    kOk = APIKEY_OK,
    kMissing = APIKEY_MISSING,
    kMalformed = APIKEY_MALFORMED,
    kUnknown = APIKEY_UNKNOWN,
    kExpired = APIKEY_EXPIRED,
    kRevoked = APIKEY_REVOKED,
    kForbidden = APIKEY_FORBIDDEN,
    kUnavailable = APIKEY_UNAVAILABLE,
};
inline constexpr int kAuthResultCount = APIKEY_RESULT_COUNT;
static_assert(APIKEY_RESULT_COUNT == APIKEY_UNAVAILABLE + 1);

// A request with this result becomes a usage record (a known key); the
// others are only counted. Any byte, as read from a ring.
inline bool result_is_recorded(AuthResult r) noexcept {
    return apikey_result_is_recorded(static_cast<unsigned>(r)) != 0;
}

const char* auth_result_name(AuthResult r) noexcept;

enum class IpFamily : std::uint8_t { kNone = 0, kV4 = 4, kV6 = 6 };

struct alignas(8) UsageRecord {
    std::uint16_t version;     // kUsageRecordVersion
    AuthResult result;
    IpFamily ip_family;
    std::uint16_t status;      // HTTP status as sent
    std::uint8_t method_len;
    std::uint8_t endpoint_len;
    std::uint8_t user_agent_len;
    std::uint8_t reserved0[7];
    // Idempotency key (node is apikeyd's): set by the ring on push.
    std::uint32_t slot;
    std::uint32_t reserved1;
    std::uint64_t generation;
    std::uint64_t sequence;
    std::int64_t time_us;          // request start, Unix epoch µs
    std::uint64_t response_time_us;
    std::uint64_t bytes_sent;
    std::uint8_t key_id[16];
    std::uint8_t org_id[16];
    std::uint8_t ip[16];           // v4 in the first 4 bytes
    char method[kUsageMethodLen];
    char endpoint[kUsageEndpointLen];
    char user_agent[kUsageUserAgentLen];

    std::string_view method_view() const noexcept {
        return {method, method_len};
    }
    std::string_view endpoint_view() const noexcept {
        return {endpoint, endpoint_len};
    }
    std::string_view user_agent_view() const noexcept {
        return {user_agent, user_agent_len};
    }
};
static_assert(sizeof(UsageRecord) == 288, "record size is part of the layout");
static_assert(std::is_trivially_copyable_v<UsageRecord>);
static_assert(std::is_standard_layout_v<UsageRecord>);

// How much of `text` a field of `cap` bytes keeps (cap above 255 counts
// as 255): all of it if it fits, else cut at a UTF-8 character boundary.
std::size_t truncated_len(std::string_view text, std::size_t cap) noexcept;

// copy_truncated() of a text longer than `cap` (or `cap` above 255).
std::uint8_t copy_cut(char* dst, std::size_t cap,
                      std::string_view text) noexcept;

// Copies up to `cap` bytes of `text` into `dst`; returns the length stored.
// Cuts at a UTF-8 character boundary so stored text stays valid UTF-8 when
// the input was. Inline: most texts fit (one record field each, per
// request).
inline std::uint8_t copy_truncated(char* dst, std::size_t cap,
                                   std::string_view text) noexcept {
    const std::size_t n = text.size();
    if (n - 1 < cap && cap <= 255) {  // 0 < n <= cap
        std::memcpy(dst, text.data(), n);
        return static_cast<std::uint8_t>(n);
    }
    return n == 0 ? 0 : copy_cut(dst, cap, text);
}

}  // namespace apikey
