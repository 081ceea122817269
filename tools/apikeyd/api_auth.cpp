#include "api_auth.h"

#include <utility>

#include "key_format.h"
#include "key_hash.h"

namespace apikey::api {
namespace {

// How often a missing or unreadable key table is looked for again.
constexpr std::int64_t kAttachRetryUs = 200 * 1000;

bool is_space(char c) noexcept { return c == ' ' || c == '\t'; }

char lower(char c) noexcept {
    return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
}

}  // namespace

std::string_view auth_status_message(AuthStatus status) noexcept {
    switch (status) {
        case AuthStatus::kMissing:
            return "missing API key: send Authorization: Bearer <key>";
        case AuthStatus::kMalformed:
            return "malformed API key";
        case AuthStatus::kUnknown:
            return "unknown API key";
        case AuthStatus::kExpired:
            return "expired API key";
        case AuthStatus::kRevoked:
            return "revoked API key";
        case AuthStatus::kOk:
        case AuthStatus::kUnavailable:
            break;
    }
    return "";
}

std::optional<std::string_view> bearer_token(std::string_view header) noexcept {
    while (!header.empty() && is_space(header.front())) header.remove_prefix(1);
    while (!header.empty() && is_space(header.back())) header.remove_suffix(1);
    constexpr std::string_view kScheme = "bearer";
    if (header.size() <= kScheme.size() || !is_space(header[kScheme.size()])) {
        return std::nullopt;
    }
    for (std::size_t i = 0; i < kScheme.size(); ++i) {
        if (lower(header[i]) != kScheme[i]) return std::nullopt;
    }
    header.remove_prefix(kScheme.size());
    while (!header.empty() && is_space(header.front())) header.remove_prefix(1);
    if (header.empty()) return std::nullopt;
    return header;
}

AuthResult check_key(const KeyTableReader& table, std::string_view key,
                     std::int64_t now_us) noexcept {
    AuthResult r;
    if (!key_is_well_formed(key)) {
        r.status = AuthStatus::kMalformed;
        return r;
    }
    if (!table.attached() || !table.ready()) {
        r.status = AuthStatus::kUnavailable;
        return r;
    }
    KeyHash hash;
    if (!sha256_key(key, &hash)) {
        r.status = AuthStatus::kUnavailable;
        return r;
    }
    KeyInfo info;
    if (!table.lookup(hash, &info)) {
        r.status = AuthStatus::kUnknown;
        return r;
    }
    r.key_id = info.key_id;
    r.org_id = info.org_id;
    // The same order and comparisons as the nginx module.
    if (info.revoked_at_us != 0 && info.revoked_at_us <= now_us) {
        r.status = AuthStatus::kRevoked;
    } else if (info.expires_at_us != 0 && info.expires_at_us <= now_us) {
        r.status = AuthStatus::kExpired;
    } else {
        r.status = AuthStatus::kOk;
        r.usage_read = info.has_scope(scope_hash(kUsageReadScope));
    }
    return r;
}

KeyTableAuth::KeyTableAuth(std::string path) : path_(std::move(path)) {}

std::shared_ptr<const KeyTableReader> KeyTableAuth::reader(
    std::int64_t now_us) {
    std::lock_guard<std::mutex> lock(mutex_);
    bool stale = !reader_ || reader_->superseded();
    if (stale && now_us >= next_attach_us_) {
        auto fresh = std::make_shared<KeyTableReader>();
        std::string why;
        if (fresh->attach(path_.c_str(), &why) == SegmentStatus::kOk) {
            // Requests still holding the old reader keep its mapping alive
            // until they finish.
            reader_ = std::move(fresh);
            next_attach_us_ = 0;
        } else {
            next_attach_us_ = now_us + kAttachRetryUs;
        }
    }
    return reader_;
}

AuthResult KeyTableAuth::authenticate(
    const std::vector<std::string>& authorization, std::int64_t now_us) {
    AuthResult r;
    if (authorization.empty()) {
        r.status = AuthStatus::kMissing;
        return r;
    }
    if (authorization.size() > 1) {
        r.status = AuthStatus::kMalformed;
        return r;
    }
    std::optional<std::string_view> key = bearer_token(authorization.front());
    if (!key) {
        r.status = AuthStatus::kMissing;
        return r;
    }
    if (!key_is_well_formed(*key)) {
        r.status = AuthStatus::kMalformed;
        return r;
    }
    std::shared_ptr<const KeyTableReader> table = reader(now_us);
    if (!table) {
        r.status = AuthStatus::kUnavailable;
        return r;
    }
    return check_key(*table, *key, now_us);
}

}  // namespace apikey::api
