// One usage record: what the nginx log phase writes per request into its
// stream and apikeyd stores in api_key_usage. In the stream a record is
// variable-length and may refer to the record before it in the same chunk
// instead of repeating a field (encode_usage_record); apikeyd decodes it
// into a UsageRecord, trusting nothing the bytes say (decode_usage_record).
//
// Encoding (kUsageRecordVersion 2), integers little-endian, varints
// unless said:
//     flags         u8: kRecordMark | kSame* bits | kAbsoluteTime; 0x00
//                   ends the chunk
//     body_len      u16: bytes after this field
//     result        u8
//     status        u16
//     time          zigzag varint: time_us minus the previous record's
//                   (with kAbsoluteTime, as the first record of a chunk
//                   has it: minus 0)
//     response_us   varint
//     bytes_sent    varint
//     key_id,org_id 32 bytes           unless kSameKey
//     ip            family u8 + 0/4/16 unless kSameIp
//     method        len u8 + bytes     unless kSameMethod
//     endpoint      len u8 + bytes     unless kSameEndpoint
//     user_agent    len varint + bytes unless kSameUserAgent
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <type_traits>

#include "auth_result.h"

namespace apikey {

// The record encoding; also names the spool's frame format.
inline constexpr std::uint16_t kUsageRecordVersion = 2;
inline constexpr std::size_t kUsageMethodLen = 16;
inline constexpr std::size_t kUsageEndpointLen = 96;
inline constexpr std::size_t kUsageUserAgentLen = 256;
// The longest encoded record: every field present at its longest.
inline constexpr std::size_t kUsageRecordMaxBytes =
    1 + 2 + 1 + 2 + 10 + 10 + 10 + 32 + 17 + 1 + kUsageMethodLen + 1 +
    kUsageEndpointLen + 2 + kUsageUserAgentLen;

// The result of a key check, as apikey_result_e (auth_result.h) defines it
// for the C shim and C++ alike.
enum class AuthResult : std::uint8_t {
    kOk = APIKEY_OK,
    kMissing = APIKEY_MISSING,
    kMalformed = APIKEY_MALFORMED,
    kUnknown = APIKEY_UNKNOWN,
    kExpired = APIKEY_EXPIRED,
    kRevoked = APIKEY_REVOKED,
    kForbidden = APIKEY_FORBIDDEN,
    kUnavailable = APIKEY_UNAVAILABLE,
};
inline constexpr int kAuthResultCount = APIKEY_RESULT_COUNT;
static_assert(APIKEY_RESULT_COUNT == APIKEY_UNAVAILABLE + 1);

// A request with this result becomes a usage record (a known key); the
// others are only counted. Any byte, as read from a stream.
inline bool result_is_recorded(AuthResult r) noexcept {
    return apikey_result_is_recorded(static_cast<unsigned>(r)) != 0;
}

const char* auth_result_name(AuthResult r) noexcept;

enum class IpFamily : std::uint8_t { kNone = 0, kV4 = 4, kV6 = 6 };

// The address bytes a family has (0 for none, or for a byte that names no
// family).
inline std::size_t ip_address_bytes(IpFamily family) noexcept {
    return family == IpFamily::kV4 ? 4 : family == IpFamily::kV6 ? 16 : 0;
}

// A decoded record (apikeyd's side; not a shared-memory layout). Text
// fields are not terminated; readers go by the lengths.
struct UsageRecord {
    AuthResult result;
    IpFamily ip_family;
    std::uint16_t status;      // HTTP status as sent
    std::uint8_t method_len;
    std::uint8_t endpoint_len;
    std::uint16_t user_agent_len;
    // Identity (node is apikeyd's): where the record was read. sequence is
    // the stream position of its last byte, so sequence + 1 is where the
    // next record starts.
    std::uint32_t slot;
    std::uint64_t generation;
    std::uint64_t sequence;
    std::int64_t time_us;          // request start, Unix epoch µs
    std::uint64_t response_time_us;
    std::uint64_t bytes_sent;
    std::uint8_t key_id[16];
    std::uint8_t org_id[16];
    std::uint8_t ip[16];           // v4 in the first 4 bytes
    char method[kUsageMethodLen];
    char endpoint[kUsageEndpointLen];
    char user_agent[kUsageUserAgentLen];

    std::string_view method_view() const noexcept {
        return {method, method_len};
    }
    std::string_view endpoint_view() const noexcept {
        return {endpoint, endpoint_len};
    }
    std::string_view user_agent_view() const noexcept {
        return {user_agent, user_agent_len};
    }
};
static_assert(std::is_trivially_copyable_v<UsageRecord>);

// A text of UsageFields: address and length, in that order, so that the C
// shim's apikey_usage_fields_t (apikey_glue.h) has the same layout and the
// shim fills UsageFields directly; reads as a std::string_view.
struct UsageText {
    const char* ptr = nullptr;
    std::size_t len = 0;

    UsageText() = default;
    UsageText(std::string_view s) noexcept : ptr(s.data()), len(s.size()) {}
    const char* data() const noexcept { return ptr; }
    std::size_t size() const noexcept { return len; }
    bool empty() const noexcept { return len == 0; }
    operator std::string_view() const noexcept { return {ptr, len}; }
    std::string_view view() const noexcept { return {ptr, len}; }
};
static_assert(std::is_standard_layout_v<UsageText> &&
              std::is_trivially_copyable_v<UsageText>);

// One request as the worker hands it to the encoder. Texts are cut by the
// encoder (UTF-8 boundary) to the field lengths above. Standard layout, in
// the order of the shim's apikey_usage_fields_t (the glue asserts every
// offset): change both together.
struct UsageFields {
    AuthResult result;
    IpFamily ip_family;
    std::uint16_t status;
    std::int64_t time_us;
    std::uint64_t response_time_us;
    std::uint64_t bytes_sent;
    const std::uint8_t* key_id;  // 16 bytes
    const std::uint8_t* org_id;  // 16 bytes
    const std::uint8_t* ip;      // 4 or 16 bytes per ip_family
    UsageText method;
    UsageText endpoint;
    UsageText user_agent;
    // The worker's promises, for its fast paths (encode_repeat_record, the
    // aggregation's memo); false unless the text is configuration memory.
    // method_constant: method.data() holds kUsageMethodLen bytes, zero past
    // method.size(), that never change while the writer lives (the shim's
    // table of common methods), so its address names the text and its
    // length.
    bool method_constant = false;
    // endpoint_constant: the endpoint is already cut to kUsageEndpointLen,
    // it and its length never change at that address (so the address
    // names both), and endpoint_hash is agg_text_hash(endpoint).
    bool endpoint_constant = false;
    std::uint64_t endpoint_hash = 0;
};

// A decoded record's fields, to encode it again (the spool, tests).
UsageFields usage_fields_of(const UsageRecord& r) noexcept;

// The encoder's view of the previous record in the chunk: where each field
// it may refer to was last written (offsets into the chunk; 0 = not yet,
// as no field starts at offset 0). Reset for every new chunk, and whenever
// the record before is not the encoder's own (a decoder refers to the
// record just before).
struct RecordEncodeContext {
    bool started = false;  // a record was written: time is a delta
    std::int64_t time_us = 0;
    std::uint32_t key = 0;
    std::uint32_t ip = 0;
    std::uint32_t method = 0;
    std::uint32_t endpoint = 0;
    std::uint32_t user_agent = 0;
    // What encode_repeat_record needs of the previous record: the
    // RequestShape address counter it was encoded under, the offsets at
    // which a repeat fits (below repeat_until, from its longest form and
    // the chunk's size; 0: none, it is not repeatable) and where its user
    // agent's bytes are in the chunk. Kept in the worker's memory.
    std::uint64_t shape = 0;
    std::uint32_t repeat_until = 0;
    std::uint32_t agent_at = 0;
    std::uint16_t agent_len = 0;
};

// The decoder's: the previous record of the chunk.
struct RecordDecodeContext {
    bool has_previous = false;
    UsageRecord previous;
};

// Writes `f` into chunk[offset, chunk_size) and returns the bytes written,
// or 0 (nothing written, context unchanged) when the record's longest
// form (every field written out) might not fit there: one pass, no sizing
// pass first, at the cost of ending a chunk up to that many bytes early.
// A record always fits from offset 0 of a chunk of >= kUsageRecordMaxBytes.
// `shape`: the worker's RequestShape::address() after observing `f`, for
// encode_repeat_record (0: the next record is never a repeat of this one).
std::size_t encode_usage_record(unsigned char* chunk, std::size_t offset,
                                std::size_t chunk_size, const UsageFields& f,
                                RecordEncodeContext* ctx,
                                std::uint64_t shape = 0) noexcept;

enum class DecodeResult {
    kRecord,   // *out holds the record, *consumed its bytes
    kEnd,      // the chunk ends here (the rest is unused)
    kCorrupt,  // not a record: the rest of the chunk cannot be read
};

// Reads the record at data[offset, limit) (limit: the chunk's end, or the
// producer's head within it). The bytes are not trusted: every length is
// checked against limit and the field maxima, every reference needs a
// previous record; nothing is read at or past limit. Identity fields of
// *out are left to the caller.
DecodeResult decode_usage_record(const unsigned char* data, std::size_t offset,
                                 std::size_t limit, RecordDecodeContext* ctx,
                                 UsageRecord* out,
                                 std::size_t* consumed) noexcept;

// How much of `text` a field of `cap` bytes keeps: all of it if it fits,
// else cut at a UTF-8 character boundary.
std::size_t truncated_len(std::string_view text, std::size_t cap) noexcept;

// copy_truncated() of a text longer than `cap`.
std::size_t copy_cut(char* dst, std::size_t cap,
                     std::string_view text) noexcept;

// Copies up to `cap` bytes of `text` into `dst`; returns the length stored.
// Cuts at a UTF-8 character boundary so stored text stays valid UTF-8 when
// the input was. Inline: most texts fit.
inline std::size_t copy_truncated(char* dst, std::size_t cap,
                                  std::string_view text) noexcept {
    const std::size_t n = text.size();
    if (n - 1 < cap) {  // 0 < n <= cap
        std::memcpy(dst, text.data(), n);
        return n;
    }
    return n == 0 ? 0 : copy_cut(dst, cap, text);
}

namespace record_detail {

// The flags byte (usage_record.cpp documents the encoding).
inline constexpr unsigned kRecordMark = 0x80;
inline constexpr unsigned kSameKey = 0x01;
inline constexpr unsigned kSameIp = 0x02;
inline constexpr unsigned kSameMethod = 0x04;
inline constexpr unsigned kSameEndpoint = 0x08;
inline constexpr unsigned kSameUserAgent = 0x10;
inline constexpr unsigned kAbsoluteTime = 0x20;
inline constexpr unsigned kSameAll =
    kSameKey | kSameIp | kSameMethod | kSameEndpoint | kSameUserAgent;

inline std::uint64_t load64(const void* p) noexcept {
    std::uint64_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

inline std::uint32_t load32(const void* p) noexcept {
    std::uint32_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// a[0, n) == b[0, n) with word loads inside both ranges (the last words
// may overlap the ones before): cheaper than a call to memcmp for the
// short texts of a record, on every request. 16 bytes a step: a user
// agent of up to 16 bytes takes no loop at all.
inline bool equal_bytes(const unsigned char* a, const unsigned char* b,
                        std::size_t n) noexcept {
    if (n >= 16) {
        std::uint64_t diff = 0;
        for (std::size_t i = 0; i + 16 < n; i += 16) {
            diff |= (load64(a + i) ^ load64(b + i)) |
                    (load64(a + i + 8) ^ load64(b + i + 8));
        }
        return (diff | (load64(a + n - 16) ^ load64(b + n - 16)) |
                (load64(a + n - 8) ^ load64(b + n - 8))) == 0;
    }
    if (n >= 8) {
        return ((load64(a) ^ load64(b)) |
                (load64(a + n - 8) ^ load64(b + n - 8))) == 0;
    }
    if (n >= 4) {
        return ((load32(a) ^ load32(b)) |
                (load32(a + n - 4) ^ load32(b + n - 4))) == 0;
    }
    for (std::size_t i = 0; i < n; ++i) {
        if (a[i] != b[i]) return false;
    }
    return true;
}

__attribute__((always_inline)) inline unsigned char* put_varint(
    unsigned char* p, std::uint64_t v) noexcept {
    if (v < 0x80) {  // the usual time delta, response time, size: 1-2 bytes
        *p = static_cast<unsigned char>(v);
        return p + 1;
    }
    if (v < 0x4000) {
        p[0] = static_cast<unsigned char>(v | 0x80);
        p[1] = static_cast<unsigned char>(v >> 7);
        return p + 2;
    }
    while (v >= 0x80) {
        *p++ = static_cast<unsigned char>(v | 0x80);
        v >>= 7;
    }
    *p++ = static_cast<unsigned char>(v);
    return p;
}

inline std::uint64_t zigzag(std::int64_t v) noexcept {
    return (static_cast<std::uint64_t>(v) << 1) ^
           static_cast<std::uint64_t>(v >> 63);
}

// The address as two words, zero past its bytes (a family without bytes,
// or an unknown one, has none).
inline void ip_as_words(IpFamily family, const std::uint8_t* ip,
                        std::uint64_t* w) noexcept {
    w[0] = 0;
    w[1] = 0;
    if (family == IpFamily::kV4) {
        w[0] = load32(ip);
    } else if (family == IpFamily::kV6) {
        w[0] = load64(ip);
        w[1] = load64(ip + 8);
    }
}

}  // namespace record_detail

// The usual request of a busy worker: the same key, address, method,
// endpoint and user agent as the record before it in the chunk. Writes
// exactly the bytes encode_usage_record would (every field "as before")
// without its per-field comparisons and returns their count; 0 when `f`
// is not such a repeat (or might not fit: the same rule), and then the
// caller encodes it with encode_usage_record. `offset` may be anything
// (the chunk's size, say): only offsets the previous record left room
// for are written. `shape`: as for encode_usage_record; the same value as
// the previous record's vouches for its key, org, address, method and
// endpoint, so only the user agent is compared. Always inline (every
// request): a call and its argument set-up would cost a fifth of it.
__attribute__((always_inline)) inline std::size_t encode_repeat_record(
    unsigned char* chunk, std::size_t offset, const UsageFields& f,
    RecordEncodeContext* ctx, std::uint64_t shape) noexcept {
    namespace d = record_detail;
    if (offset >= ctx->repeat_until || ctx->shape != shape ||
        f.user_agent.size() != ctx->agent_len ||
        !d::equal_bytes(chunk + ctx->agent_at,
                        reinterpret_cast<const unsigned char*>(
                            f.user_agent.data()),
                        ctx->agent_len)) {
        return 0;
    }
    unsigned char* const start = chunk + offset;
    unsigned char* p = start + 3;
    *p++ = static_cast<unsigned char>(f.result);
    *p++ = static_cast<unsigned char>(f.status);
    *p++ = static_cast<unsigned char>(f.status >> 8);
    p = d::put_varint(p, d::zigzag(static_cast<std::int64_t>(
                             static_cast<std::uint64_t>(f.time_us) -
                             static_cast<std::uint64_t>(ctx->time_us))));
    p = d::put_varint(p, f.response_time_us);
    p = d::put_varint(p, f.bytes_sent);
    ctx->time_us = f.time_us;
    const std::size_t body = static_cast<std::size_t>(p - (start + 3));
    start[0] = static_cast<unsigned char>(d::kRecordMark | d::kSameAll);
    start[1] = static_cast<unsigned char>(body);
    start[2] = static_cast<unsigned char>(body >> 8);
    return static_cast<std::size_t>(p - start);
}

}  // namespace apikey
