// How a key is listed, shared by `apikeyctl key list` and apikeyd's
// analytics API so that both derive status, dormancy and times the same
// way: the SQL select list over api_keys, and the row it reads back.
// Header-only (used by both tools; no secret column is ever selected).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "pg.h"

namespace apikey::keysql {

// `column` as RFC 3339 UTC with whole seconds ("2026-11-22T10:00:00Z");
// NULL stays NULL. Independent of the session's TimeZone.
inline std::string rfc3339(std::string_view column) {
    return "to_char(" + std::string(column) +
           " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')";
}

// 'revoked' (revoked_at set), 'expired' (expires_at <= now()) or 'active'.
// `t` is the api_keys alias with its dot ("k.") or "".
inline std::string status(std::string_view t = "") {
    std::string a(t);
    return "CASE WHEN " + a + "revoked_at IS NOT NULL THEN 'revoked'" +
           " WHEN " + a + "expires_at <= now() THEN 'expired'" +
           " ELSE 'active' END";
}

// True when the key has not been used in the last N days, N being the int
// parameter $days_param; a key never used counts from its creation, so a
// key issued yesterday is not dormant by a 30-day rule (and is not swept
// up by `apikeyctl key revoke --dormant 30d`).
inline std::string dormant(std::string_view t, int days_param) {
    std::string a(t);
    return "(coalesce(" + a + "last_used_at, " + a +
           "created_at) < now() - make_interval(days => $" +
           std::to_string(days_param) + "::int))";
}

// The select list of a key listing, over api_keys aliased by `t` (with its
// dot, or ""); KeyRow::read() reads it back. kKeyColumns columns.
inline constexpr int kKeyColumns = 11;
inline std::string key_columns(std::string_view t, int dormant_days_param) {
    std::string a(t);
    return a + "id, " + a + "name, " + a + "hint, to_json(" + a +
           "scopes)::text, " + status(t) + ", " + rfc3339(a + "created_at") +
           ", " + rfc3339(a + "expires_at") + ", " +
           rfc3339(a + "last_used_at") + ", host(" + a + "last_used_ip), " + a +
           "request_count, " + dormant(t, dormant_days_param);
}

// Listings are ordered oldest key first.
inline std::string key_order(std::string_view t) {
    std::string a(t);
    return a + "created_at, " + a + "id";
}

struct KeyRow {
    std::string key_id;
    std::string name;
    std::string hint;
    std::string scopes_json;  // JSON array of strings
    std::string status;       // active | expired | revoked
    std::string created_at;
    std::optional<std::string> expires_at;
    std::optional<std::string> last_used_at;
    std::optional<std::string> last_used_ip;
    std::int64_t request_count = 0;
    bool dormant = false;

    // The kKeyColumns columns from `col` on of a key_columns() result.
    static KeyRow read(const pg::Result& r, int row, int col = 0) {
        KeyRow k;
        k.key_id = r.get(row, col + 0);
        k.name = r.get(row, col + 1);
        k.hint = r.get(row, col + 2);
        k.scopes_json = r.get(row, col + 3);
        k.status = r.get(row, col + 4);
        k.created_at = r.get(row, col + 5);
        k.expires_at = r.get_optional(row, col + 6);
        k.last_used_at = r.get_optional(row, col + 7);
        k.last_used_ip = r.get_optional(row, col + 8);
        k.request_count = std::stoll(r.get(row, col + 9));
        k.dormant = r.get(row, col + 10) == "t";
        return k;
    }
};

}  // namespace apikey::keysql
