// Listing cursors: opaque, tamper-proof, bound to one listing. A cursor
// carries the last row's position (its sort values and key id, as the
// query returned them) and an HMAC-SHA256 over that position and the
// listing it belongs to (org, sort, order, filters). A cursor edited by a
// client, or used with another org, sort, order or filter, does not verify:
// the API answers 400 and never runs a query with it. Pure (the secret is
// passed in), unit-tested alone.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace apikey::api {

// Where a cursor is valid: every listing parameter but limit and cursor.
struct CursorScope {
    std::string org_id;
    std::string_view sort;
    bool descending = false;
    std::string_view status;   // "" = any
    std::string_view dormant;  // "" = any, "true", "false"
    int dormant_days = 0;
    std::string q;
    std::string_view spike;   // "" = any, "true", "false"
    std::string spike_ratio;  // as bound (ratio_text)
    std::int64_t spike_min = 0;
};

// "<base64url(JSON array of the position's strings)>.<base64url(MAC)>".
std::string encode_cursor(std::string_view secret, const CursorScope& scope,
                          const std::vector<std::string>& position);

// The position, if `cursor` was made by encode_cursor() with this secret
// and an equal scope; nullopt for anything else (malformed, edited, other
// scope).
std::optional<std::vector<std::string>> decode_cursor(
    std::string_view secret, const CursorScope& scope, std::string_view cursor);

}  // namespace apikey::api
