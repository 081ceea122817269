#include "usage_record.h"

#include <cstring>

namespace apikey {

namespace {

// A length is stored in a uint8_t.
constexpr std::size_t kMaxTruncatedLen = 255;
// The longest UTF-8 sequence has three continuation bytes.
constexpr std::size_t kMaxContinuationBytes = 3;

inline bool is_continuation(char c) noexcept {
    return (static_cast<unsigned char>(c) & 0xC0) == 0x80;
}

}  // namespace

const char* auth_result_name(AuthResult r) noexcept {
    switch (r) {
    case AuthResult::kOk:
        return "ok";
    case AuthResult::kMissing:
        return "missing";
    case AuthResult::kMalformed:
        return "malformed";
    case AuthResult::kUnknown:
        return "unknown";
    case AuthResult::kExpired:
        return "expired";
    case AuthResult::kRevoked:
        return "revoked";
    case AuthResult::kForbidden:
        return "forbidden";
    case AuthResult::kUnavailable:
        return "unavailable";
    }
    // A record from a corrupt or newer ring; not a real result.
    return "invalid";
}

std::size_t truncated_len(std::string_view text, std::size_t cap) noexcept {
    if (cap > kMaxTruncatedLen) {
        cap = kMaxTruncatedLen;
    }
    std::size_t n = text.size() < cap ? text.size() : cap;
    if (n < text.size()) {
        // text[n] is the first byte left out: if it continues a sequence,
        // back off to that sequence's lead byte. Invalid input (a longer
        // run of continuation bytes) is cut where it is.
        std::size_t back = 0;
        while (back < kMaxContinuationBytes && back < n &&
               is_continuation(text[n - back])) {
            ++back;
        }
        if (!is_continuation(text[n - back])) {
            n -= back;
        }
    }
    return n;
}

std::uint8_t copy_cut(char* dst, std::size_t cap,
                      std::string_view text) noexcept {
    const std::size_t n = truncated_len(text, cap);
    if (n > 0) {
        std::memcpy(dst, text.data(), n);
    }
    return static_cast<std::uint8_t>(n);
}

}  // namespace apikey
