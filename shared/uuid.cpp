#include "uuid.h"

namespace apikey {

namespace {

constexpr char kHexDigits[] = "0123456789abcdef";

// Canonical 8-4-4-4-12: dashes sit before these byte indexes.
inline bool dash_before(std::size_t byte) noexcept {
    return byte == 4 || byte == 6 || byte == 8 || byte == 10;
}

inline int hex_value(char c) noexcept {
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

}  // namespace

void uuid_format(const Uuid& id, char* out) noexcept {
    std::size_t pos = 0;
    for (std::size_t i = 0; i < id.size(); ++i) {
        if (dash_before(i)) {
            out[pos++] = '-';
        }
        out[pos++] = kHexDigits[id[i] >> 4];
        out[pos++] = kHexDigits[id[i] & 0x0f];
    }
}

std::string uuid_to_string(const Uuid& id) {
    std::string s(kUuidTextLen, '\0');
    uuid_format(id, s.data());
    return s;
}

bool uuid_parse(std::string_view text, Uuid* out) noexcept {
    if (text.size() != kUuidTextLen) {
        return false;
    }
    Uuid id{};
    std::size_t pos = 0;
    for (std::size_t i = 0; i < id.size(); ++i) {
        if (dash_before(i) && text[pos++] != '-') {
            return false;
        }
        const int hi = hex_value(text[pos++]);
        const int lo = hex_value(text[pos++]);
        if (hi < 0 || lo < 0) {
            return false;
        }
        id[i] = static_cast<std::uint8_t>(hi << 4 | lo);
    }
    *out = id;
    return true;
}

}  // namespace apikey
