// Masking key material in text that is about to be logged. nginx itself
// writes request headers (at debug) and request lines into its error log;
// the module passes every error-log line through redact_keys() first.
#pragma once

#include <cstddef>

namespace apikey {

// Masks, in place, every key-shaped token in buf[0, len): a '_' followed by
// a run of at least kRedactMinRun base62 characters (a key has 36; a
// mangled key is still a secret), or, when the text was cut short
// (truncated: nginx stops a message at NGX_MAX_ERROR_STR), by any run longer
// than the hint at its very end. The first kHintRandomChars of the run stay,
// as the API's hint; the rest become '*'. Returns how many tokens were
// masked.
std::size_t redact_keys(char* buf, std::size_t len, bool truncated) noexcept;

inline constexpr std::size_t kRedactMinRun = 20;

}  // namespace apikey
