// Who is calling the analytics API: `Authorization: Bearer <key>` checked
// against the key table apikeyd publishes (the same table nginx reads), so
// the API needs no database round trip to authenticate and a revocation
// reaches it exactly as it reaches nginx.
//
// Nothing here keeps, logs or returns the key: only its SHA-256 is looked
// up, and a verdict (ids, status, scope) comes back.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "key_table.h"
#include "uuid.h"

namespace apikey::api {

// The scope a key needs to read its org's usage.
inline constexpr std::string_view kUsageReadScope = "usage:read";

enum class AuthStatus {
    kOk,
    kMissing,    // no Authorization header, or not the Bearer scheme
    kMalformed,  // not a well-formed key (or several Authorization headers)
    kUnknown,    // not in the key table
    kExpired,
    kRevoked,
    kUnavailable,  // no readable key table yet: 503
};

// The client-facing reason for a 401 ("" for kOk and kUnavailable).
std::string_view auth_status_message(AuthStatus status) noexcept;

struct AuthResult {
    AuthStatus status = AuthStatus::kMissing;
    Uuid key_id{};
    Uuid org_id{};
    bool usage_read = false;  // the key has kUsageReadScope
};

// The credentials of "Bearer <token>" (scheme case-insensitive, one or more
// spaces, surrounding whitespace ignored); nullopt for any other scheme or
// an empty token.
std::optional<std::string_view> bearer_token(std::string_view header) noexcept;

// The verdict for one key against a ready table at time now_us: syntax
// (format and checksum), lookup by SHA-256, revocation, expiry, scope.
AuthResult check_key(const KeyTableReader& table, std::string_view key,
                     std::int64_t now_us) noexcept;

// Holds the key table at `path` mapped, attaching lazily and again when
// apikeyd publishes a replacement (superseded). Thread-safe: lookups run
// on a shared reader, never under the lock.
class KeyTableAuth {
   public:
    explicit KeyTableAuth(std::string path);

    // `authorization`: every Authorization header value of the request
    // (none: kMissing; more than one: kMalformed).
    AuthResult authenticate(const std::vector<std::string>& authorization,
                            std::int64_t now_us);

   private:
    std::shared_ptr<const KeyTableReader> reader(std::int64_t now_us);

    std::string path_;
    std::mutex mutex_;
    std::shared_ptr<KeyTableReader> reader_;
    std::int64_t next_attach_us_ = 0;
};

}  // namespace apikey::api
