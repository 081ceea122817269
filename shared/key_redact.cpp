#include "key_redact.h"

#include "key_format.h"

namespace apikey {

namespace {

bool is_base62(char c) noexcept {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
           (c >= 'A' && c <= 'Z');
}

// The run reaches the end of the text, or only the line feed nginx appends
// to every message follows it.
bool at_text_end(const char* buf, std::size_t end, std::size_t len) noexcept {
    return end == len || (end + 1 == len && buf[end] == '\n');
}

}  // namespace

std::size_t redact_keys(char* buf, std::size_t len, bool truncated) noexcept {
    std::size_t masked = 0;
    std::size_t i = 0;
    while (i < len) {
        if (buf[i] != '_') {
            ++i;
            continue;
        }
        std::size_t start = i + 1;
        std::size_t end = start;
        while (end < len && is_base62(buf[end])) {
            ++end;
        }
        std::size_t run = end - start;
        if (run >= kRedactMinRun ||
            (truncated && run > kHintRandomChars && at_text_end(buf, end, len))) {
            for (std::size_t j = start + kHintRandomChars; j < end; ++j) {
                buf[j] = '*';
            }
            ++masked;
        }
        i = end > i + 1 ? end : i + 1;
    }
    return masked;
}

}  // namespace apikey
