// Fuzz target: sanitize_text() / text_is_clean() (tools/apikeyd/rollup.cpp),
// which make client-supplied endpoint, method and user-agent bytes safe for
// PostgreSQL text columns, and copy_truncated() (shared/usage_record.cpp),
// which cuts those strings into a usage record.
//
// The contract (rollup.h): every NUL and every byte that does not start a
// valid UTF-8 sequence becomes U+FFFD; valid text comes back unchanged.
// Checked against an independent decoder written from RFC 3629 (not the
// product's table), for arbitrary bytes:
//  - the output equals the reference's replacement, byte for byte;
//  - the output is valid UTF-8 without NUL (by the reference), and
//    text_is_clean() says so;
//  - text_is_clean(input) is true exactly when the reference accepts it,
//    and then the output equals the input;
//  - sanitizing is idempotent and at most triples the length (one byte ->
//    the three bytes of U+FFFD);
//  - copy_truncated() of clean text (at the record's capacities, small
//    ones, and one the input picks) keeps it clean and a prefix of the
//    input, cut at a character boundary, at most 3 bytes short of the
//    capacity.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include "rollup.h"
#include "usage_record.h"

#include "fuzz_check.h"

namespace {

using namespace apikey;

// Length of the well-formed UTF-8 sequence at s[i] (RFC 3629: shortest
// form, no surrogates, <= U+10FFFF), 0 if there is none; NUL counts as
// not valid (PostgreSQL rejects it in text).
std::size_t ref_sequence(std::string_view s, std::size_t i) {
    const auto b = [&](std::size_t k) {
        return static_cast<unsigned char>(s[i + k]);
    };
    const unsigned char c = b(0);
    std::size_t len;
    std::uint32_t cp;
    if (c < 0x80) {
        return c == 0 ? 0 : 1;
    } else if ((c & 0xe0) == 0xc0) {
        len = 2;
        cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
        len = 3;
        cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (i + len > s.size()) return 0;
    for (std::size_t k = 1; k < len; ++k) {
        if ((b(k) & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (b(k) & 0x3f);
    }
    static const std::uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len]) return 0;                    // overlong
    if (cp >= 0xd800 && cp <= 0xdfff) return 0;      // surrogate
    if (cp > 0x10ffff) return 0;                     // out of range
    return len;
}

bool ref_valid(std::string_view s) {
    for (std::size_t i = 0; i < s.size();) {
        std::size_t n = ref_sequence(s, i);
        if (n == 0) return false;
        i += n;
    }
    return true;
}

std::string ref_sanitize(std::string_view s) {
    std::string out;
    for (std::size_t i = 0; i < s.size();) {
        std::size_t n = ref_sequence(s, i);
        if (n == 0) {
            out += "\xef\xbf\xbd";
            ++i;
        } else {
            out.append(s.substr(i, n));
            i += n;
        }
    }
    return out;
}

void check_cut(std::string_view clean, std::size_t cap) {
    // Caps up to 256 (the user agent's field): the length is a size_t, not
    // a byte, since a field can hold 256.
    char buf[256];
    const std::size_t n = copy_truncated(buf, cap, clean);
    const std::size_t want = clean.size() < cap ? clean.size() : cap;
    FUZZ_CHECK(n <= want);
    FUZZ_CHECK(want - n <= 3);
    std::string_view got(buf, n);
    FUZZ_CHECK(got == clean.substr(0, n));
    FUZZ_CHECK(ref_valid(got));
    FUZZ_CHECK(text_is_clean(got));
}

// The record's own capacities, every small one, and one the input picks.
void check_truncation(std::string_view clean, std::size_t pick) {
    for (std::size_t cap = 0; cap <= 8; ++cap) check_cut(clean, cap);
    for (std::size_t cap : {kUsageMethodLen, kUsageUserAgentLen,
                            kUsageEndpointLen, std::size_t{255}, std::size_t{256}}) {
        check_cut(clean, cap);
    }
    check_cut(clean, pick % 257);
    if (clean.size() <= 256) check_cut(clean, clean.size());
    if (clean.size() >= 1 && clean.size() <= 257) check_cut(clean, clean.size() - 1);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view in(reinterpret_cast<const char*>(data), size);

    const bool clean = text_is_clean(in);
    FUZZ_CHECK(clean == ref_valid(in));

    std::string out = sanitize_text(in);
    FUZZ_CHECK(out == ref_sanitize(in));
    FUZZ_CHECK(out.find('\0') == std::string::npos);
    FUZZ_CHECK(ref_valid(out));
    FUZZ_CHECK(text_is_clean(out));
    FUZZ_CHECK(out.size() <= 3 * in.size());
    if (clean) FUZZ_CHECK(out == in);
    FUZZ_CHECK(sanitize_text(out) == out);

    // The cut the module makes when it fills a usage record: clean text
    // stays clean at every capacity; raw bytes are copied as they are
    // (apikeyd sanitizes them later).
    check_truncation(out.size() <= 300 ? std::string_view(out)
                                       : std::string_view(out).substr(0, 300),
                     size > 0 ? data[size - 1] * 7u + size : 0);
    char buf[255];
    std::uint8_t n = copy_truncated(buf, sizeof buf, in);
    FUZZ_CHECK(n <= size && n <= sizeof buf);
    FUZZ_CHECK(std::memcmp(buf, data, n) == 0);
    return 0;
}
