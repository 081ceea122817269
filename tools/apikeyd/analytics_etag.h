// Conditional GETs for dashboards that poll: a strong entity tag over an
// answer's content, and RFC 9110's If-None-Match test. Pure.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace apikey::api {

// "\"<32 hex digits of SHA-256(content)>\"".
std::string entity_tag(std::string_view content);

// True when any If-None-Match header value lists `tag` (weak comparison:
// a W/ prefix is ignored) or is "*": the client's copy is current (304).
bool none_match_hits(const std::vector<std::string>& if_none_match,
                     std::string_view tag);

}  // namespace apikey::api
