#include "usage_record.h"

#include <cstring>

namespace apikey {

namespace {

// The longest UTF-8 sequence has three continuation bytes.
constexpr std::size_t kMaxContinuationBytes = 3;

// The flags byte (record_detail, usage_record.h). kRecordMark tells a
// record from the 0x00 that ends a chunk; the other bits say which fields
// repeat the previous record's.
using record_detail::equal_bytes;
using record_detail::kAbsoluteTime;
using record_detail::kRecordMark;
using record_detail::kSameEndpoint;
using record_detail::kSameIp;
using record_detail::kSameKey;
using record_detail::kSameMethod;
using record_detail::kSameUserAgent;
using record_detail::put_varint;
using record_detail::zigzag;
constexpr unsigned kKnownFlags = kRecordMark | kSameKey | kSameIp |
                                 kSameMethod | kSameEndpoint | kSameUserAgent |
                                 kAbsoluteTime;
constexpr std::size_t kIdBytes = 32;  // key_id + org_id

inline bool is_continuation(char c) noexcept {
    return (static_cast<unsigned char>(c) & 0xC0) == 0x80;
}

inline std::int64_t unzigzag(std::uint64_t v) noexcept {
    return static_cast<std::int64_t>(v >> 1) ^ -static_cast<std::int64_t>(v & 1);
}

inline std::string_view cut(std::string_view text, std::size_t cap) noexcept {
    return text.size() <= cap ? text
                              : text.substr(0, truncated_len(text, cap));
}

// A text field as last written at chunk[at]: length (one byte, or a
// varint for the user agent) and bytes.
inline bool same_text(const unsigned char* chunk, std::uint32_t at,
                      std::string_view text, bool varint_len) noexcept {
    if (at == 0) return false;
    std::size_t len = chunk[at];
    std::size_t skip = 1;
    if (varint_len && len >= 0x80) {
        len = (len & 0x7f) | static_cast<std::size_t>(chunk[at + 1]) << 7;
        skip = 2;
    }
    return len == text.size() &&
           equal_bytes(chunk + at + skip,
                       reinterpret_cast<const unsigned char*>(text.data()),
                       len);
}

// What encode_repeat_record compares the next record with: only a record
// whose method and endpoint are constant texts, and whose user agent was
// not cut, can be repeated (the shape vouches for the texts by address),
// and only under a shape (0: the caller has none).
inline void remember_for_repeat(const unsigned char* chunk,
                                std::size_t chunk_size, const UsageFields& f,
                                std::string_view agent,
                                std::size_t longest, std::uint64_t shape,
                                RecordEncodeContext* ctx) noexcept {
    const bool repeatable = shape != 0 && f.method_constant &&
                            f.endpoint_constant &&
                            f.method.size() <= kUsageMethodLen &&
                            f.endpoint.size() <= kUsageEndpointLen &&
                            agent.size() == f.user_agent.size();
    ctx->shape = shape;
    // Where this record's longest form fits, so do its repeats (the same
    // longest form: the full encoder's rule).
    ctx->repeat_until =
        repeatable ? static_cast<std::uint32_t>(chunk_size - longest + 1) : 0;
    if (!repeatable) return;
    const std::uint32_t at = ctx->user_agent;
    ctx->agent_len = static_cast<std::uint16_t>(agent.size());
    ctx->agent_at = at + (chunk[at] >= 0x80 ? 2 : 1);
}

// A bounded reader over untrusted bytes.
struct Reader {
    const unsigned char* p;
    const unsigned char* end;
    bool ok = true;

    std::uint8_t u8() noexcept {
        if (p >= end) {
            ok = false;
            return 0;
        }
        return *p++;
    }
    unsigned u16() noexcept {
        const unsigned lo = u8();
        const unsigned hi = u8();
        return lo | hi << 8;
    }
    std::uint64_t varint() noexcept {
        std::uint64_t v = 0;
        for (unsigned shift = 0; shift < 64; shift += 7) {
            const std::uint8_t b = u8();
            if (!ok) return 0;
            v |= static_cast<std::uint64_t>(b & 0x7f) << shift;
            if ((b & 0x80) == 0) return v;
        }
        ok = false;  // longer than ten bytes
        return 0;
    }
    // n bytes into dst, at most cap (a longer field is corrupt).
    void bytes(void* dst, std::size_t n, std::size_t cap) noexcept {
        if (n > cap || static_cast<std::size_t>(end - p) < n) {
            ok = false;
            return;
        }
        if (n > 0) std::memcpy(dst, p, n);
        p += n;
    }
};

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
    // A record from a corrupt or newer stream; not a real result.
    return "invalid";
}

std::size_t truncated_len(std::string_view text, std::size_t cap) noexcept {
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

std::size_t copy_cut(char* dst, std::size_t cap,
                     std::string_view text) noexcept {
    const std::size_t n = truncated_len(text, cap);
    if (n > 0) {
        std::memcpy(dst, text.data(), n);
    }
    return n;
}

UsageFields usage_fields_of(const UsageRecord& r) noexcept {
    UsageFields f;
    f.result = r.result;
    f.ip_family = r.ip_family;
    f.status = r.status;
    f.time_us = r.time_us;
    f.response_time_us = r.response_time_us;
    f.bytes_sent = r.bytes_sent;
    f.key_id = r.key_id;
    f.org_id = r.org_id;
    f.ip = r.ip;
    f.method = r.method_view();
    f.endpoint = r.endpoint_view();
    f.user_agent = r.user_agent_view();
    return f;
}

std::size_t encode_usage_record(unsigned char* chunk, std::size_t offset,
                                std::size_t chunk_size, const UsageFields& f,
                                RecordEncodeContext* ctx,
                                std::uint64_t shape) noexcept {
    const std::string_view method = cut(f.method, kUsageMethodLen);
    const std::string_view endpoint = cut(f.endpoint, kUsageEndpointLen);
    const std::string_view agent = cut(f.user_agent, kUsageUserAgentLen);
    const std::size_t ip_len = ip_address_bytes(f.ip_family);
    const IpFamily family = ip_len != 0 ? f.ip_family : IpFamily::kNone;
    // Flags, length, result, status, three varints, then every field.
    const std::size_t longest = 1 + 2 + 1 + 2 + 30 + kIdBytes + 1 + ip_len +
                                1 + method.size() + 1 + endpoint.size() + 2 +
                                agent.size();
    if (offset >= chunk_size || chunk_size - offset < longest) {
        return 0;
    }

    unsigned char* const start = chunk + offset;
    unsigned char* p = start + 3;  // after flags and body length
    unsigned flags = kRecordMark;
    *p++ = static_cast<unsigned char>(f.result);
    *p++ = static_cast<unsigned char>(f.status);
    *p++ = static_cast<unsigned char>(f.status >> 8);
    if (ctx->started) {
        p = put_varint(p, zigzag(static_cast<std::int64_t>(
                              static_cast<std::uint64_t>(f.time_us) -
                              static_cast<std::uint64_t>(ctx->time_us))));
    } else {
        flags |= kAbsoluteTime;
        p = put_varint(p, zigzag(f.time_us));
    }
    p = put_varint(p, f.response_time_us);
    p = put_varint(p, f.bytes_sent);
    const auto at = [&] { return static_cast<std::uint32_t>(p - chunk); };

    if (ctx->key != 0 && std::memcmp(chunk + ctx->key, f.key_id, 16) == 0 &&
        std::memcmp(chunk + ctx->key + 16, f.org_id, 16) == 0) {
        flags |= kSameKey;
    } else {
        ctx->key = at();
        std::memcpy(p, f.key_id, 16);
        std::memcpy(p + 16, f.org_id, 16);
        p += kIdBytes;
    }
    const unsigned char* last_ip = chunk + ctx->ip;
    if (ctx->ip != 0 && *last_ip == static_cast<unsigned char>(family) &&
        equal_bytes(last_ip + 1, f.ip, ip_len)) {
        flags |= kSameIp;
    } else {
        ctx->ip = at();
        *p++ = static_cast<unsigned char>(family);
        if (ip_len != 0) std::memcpy(p, f.ip, ip_len);
        p += ip_len;
    }
    if (same_text(chunk, ctx->method, method, false)) {
        flags |= kSameMethod;
    } else {
        ctx->method = at();
        *p++ = static_cast<unsigned char>(method.size());
        if (!method.empty()) std::memcpy(p, method.data(), method.size());
        p += method.size();
    }
    if (same_text(chunk, ctx->endpoint, endpoint, false)) {
        flags |= kSameEndpoint;
    } else {
        ctx->endpoint = at();
        *p++ = static_cast<unsigned char>(endpoint.size());
        if (!endpoint.empty()) std::memcpy(p, endpoint.data(), endpoint.size());
        p += endpoint.size();
    }
    if (same_text(chunk, ctx->user_agent, agent, true)) {
        flags |= kSameUserAgent;
    } else {
        ctx->user_agent = at();
        p = put_varint(p, agent.size());
        if (!agent.empty()) std::memcpy(p, agent.data(), agent.size());
        p += agent.size();
    }
    ctx->started = true;
    ctx->time_us = f.time_us;
    remember_for_repeat(chunk, chunk_size, f, agent, longest, shape, ctx);
    const std::size_t body = static_cast<std::size_t>(p - (start + 3));
    start[0] = static_cast<unsigned char>(flags);
    start[1] = static_cast<unsigned char>(body);
    start[2] = static_cast<unsigned char>(body >> 8);
    return static_cast<std::size_t>(p - start);
}

DecodeResult decode_usage_record(const unsigned char* data, std::size_t offset,
                                 std::size_t limit, RecordDecodeContext* ctx,
                                 UsageRecord* out,
                                 std::size_t* consumed) noexcept {
    if (offset >= limit) return DecodeResult::kCorrupt;
    Reader r{data + offset, data + limit};
    const unsigned flags = r.u8();
    if (flags == 0) return DecodeResult::kEnd;
    const unsigned same = flags & ~(kRecordMark | kAbsoluteTime);
    const bool refers = same != 0 || (flags & kAbsoluteTime) == 0;
    if ((flags & ~kKnownFlags) != 0 || (flags & kRecordMark) == 0 ||
        (refers && !ctx->has_previous)) {
        return DecodeResult::kCorrupt;
    }
    const std::uint64_t body = r.u16();
    if (!r.ok || body > kUsageRecordMaxBytes ||
        body > static_cast<std::size_t>(r.end - r.p)) {
        return DecodeResult::kCorrupt;
    }
    r.end = r.p + body;  // a record is never read past its own end

    const UsageRecord& prev = ctx->previous;
    UsageRecord& o = *out;
    o.result = static_cast<AuthResult>(r.u8());
    o.status = static_cast<std::uint16_t>(r.u16());
    const std::int64_t base = (flags & kAbsoluteTime) ? 0 : prev.time_us;
    o.time_us = static_cast<std::int64_t>(
        static_cast<std::uint64_t>(base) +
        static_cast<std::uint64_t>(unzigzag(r.varint())));
    o.response_time_us = r.varint();
    o.bytes_sent = r.varint();
    if (flags & kSameKey) {
        std::memcpy(o.key_id, prev.key_id, 16);
        std::memcpy(o.org_id, prev.org_id, 16);
    } else {
        r.bytes(o.key_id, 16, 16);
        r.bytes(o.org_id, 16, 16);
    }
    if (flags & kSameIp) {
        o.ip_family = prev.ip_family;
        std::memcpy(o.ip, prev.ip, sizeof o.ip);
    } else {
        o.ip_family = static_cast<IpFamily>(r.u8());
        const std::size_t n = ip_address_bytes(o.ip_family);
        if (n == 0 && o.ip_family != IpFamily::kNone) r.ok = false;
        std::memset(o.ip, 0, sizeof o.ip);
        r.bytes(o.ip, n, sizeof o.ip);
    }
    // A text of at most `cap` bytes with a one-byte length, or the previous
    // record's.
    const auto text = [&](unsigned same_bit, std::uint8_t* len, char* dst,
                          std::uint8_t prev_len, const char* prev_text,
                          std::size_t cap) {
        if (flags & same_bit) {
            *len = prev_len;
            std::memcpy(dst, prev_text, prev_len);
        } else {
            *len = r.u8();
            r.bytes(dst, *len, cap);
        }
    };
    text(kSameMethod, &o.method_len, o.method, prev.method_len, prev.method,
         kUsageMethodLen);
    text(kSameEndpoint, &o.endpoint_len, o.endpoint, prev.endpoint_len,
         prev.endpoint, kUsageEndpointLen);
    if (flags & kSameUserAgent) {
        o.user_agent_len = prev.user_agent_len;
        std::memcpy(o.user_agent, prev.user_agent, prev.user_agent_len);
    } else {
        const std::uint64_t n = r.varint();
        o.user_agent_len =
            static_cast<std::uint16_t>(n > kUsageUserAgentLen ? 0 : n);
        r.bytes(o.user_agent, n, kUsageUserAgentLen);
    }
    // Every byte of the body is a field: a body longer than its fields is
    // as corrupt as one too short.
    if (!r.ok || r.p != r.end) return DecodeResult::kCorrupt;
    *consumed = static_cast<std::size_t>(r.end - (data + offset));
    ctx->previous = o;
    ctx->has_previous = true;
    return DecodeResult::kRecord;
}

}  // namespace apikey
