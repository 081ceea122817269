#include "spool_frame.h"

#include <cstring>
#include <string_view>

namespace apikey {
namespace {

// The fixed record of spool version 1, byte for byte as it was written
// (little-endian host layout).
struct alignas(8) RecordV1 {
    std::uint16_t version;
    std::uint8_t result;
    std::uint8_t ip_family;
    std::uint16_t status;
    std::uint8_t method_len;
    std::uint8_t endpoint_len;
    std::uint8_t user_agent_len;
    std::uint8_t reserved0[7];
    std::uint32_t slot;
    std::uint32_t reserved1;
    std::uint64_t generation;
    std::uint64_t sequence;
    std::int64_t time_us;
    std::uint64_t response_time_us;
    std::uint64_t bytes_sent;
    std::uint8_t key_id[16];
    std::uint8_t org_id[16];
    std::uint8_t ip[16];
    char method[16];
    char endpoint[96];
    char user_agent[64];
};
static_assert(sizeof(RecordV1) == kSpoolV1RecordBytes);

constexpr std::size_t kMaxIdentityBytes = 3 * 10;

unsigned char* put_varint(unsigned char* p, std::uint64_t v) {
    while (v >= 0x80) {
        *p++ = static_cast<unsigned char>(v | 0x80);
        v >>= 7;
    }
    *p++ = static_cast<unsigned char>(v);
    return p;
}

bool get_varint(const unsigned char** p, const unsigned char* end,
                std::uint64_t* v) {
    *v = 0;
    for (unsigned shift = 0; shift < 64 && *p < end; shift += 7) {
        const unsigned char b = *(*p)++;
        *v |= static_cast<std::uint64_t>(b & 0x7f) << shift;
        if ((b & 0x80) == 0) return true;
    }
    return false;
}

std::size_t clamp_len(std::size_t n, std::size_t cap) {
    return n < cap ? n : cap;
}

UsageRecord from_v1(const RecordV1& v) {
    UsageRecord r{};
    r.result = static_cast<AuthResult>(v.result);
    // Only the families the stream encodes (a corrupt byte reads as none).
    const auto family = static_cast<IpFamily>(v.ip_family);
    r.ip_family = ip_address_bytes(family) ? family : IpFamily::kNone;
    r.status = v.status;
    r.slot = v.slot;
    r.generation = v.generation;
    r.sequence = v.sequence;
    r.time_us = v.time_us;
    r.response_time_us = v.response_time_us;
    r.bytes_sent = v.bytes_sent;
    std::memcpy(r.key_id, v.key_id, 16);
    std::memcpy(r.org_id, v.org_id, 16);
    std::memcpy(r.ip, v.ip, ip_address_bytes(r.ip_family));
    r.method_len = static_cast<std::uint8_t>(
        clamp_len(v.method_len, sizeof v.method));
    std::memcpy(r.method, v.method, r.method_len);
    r.endpoint_len = static_cast<std::uint8_t>(
        clamp_len(v.endpoint_len, sizeof v.endpoint));
    std::memcpy(r.endpoint, v.endpoint, r.endpoint_len);
    r.user_agent_len = static_cast<std::uint16_t>(
        clamp_len(v.user_agent_len, sizeof v.user_agent));
    std::memcpy(r.user_agent, v.user_agent, r.user_agent_len);
    return r;
}

}  // namespace

void encode_spool_payload(const std::vector<UsageRecord>& batch,
                          std::vector<unsigned char>* out) {
    out->assign(batch.size() * (kMaxIdentityBytes + kUsageRecordMaxBytes), 0);
    RecordEncodeContext ctx;
    std::size_t at = 0;
    for (const UsageRecord& r : batch) {
        unsigned char* p = out->data() + at;
        p = put_varint(p, r.slot);
        p = put_varint(p, r.generation);
        p = put_varint(p, r.sequence);
        at = static_cast<std::size_t>(p - out->data());
        // Room for the longest record is reserved: it always fits.
        at += encode_usage_record(out->data(), at, out->size(), usage_fields_of(r),
                                  &ctx);
    }
    out->resize(at);
}

bool decode_spool_payload(std::uint32_t version, const unsigned char* data,
                          std::size_t size, std::uint32_t count,
                          std::vector<UsageRecord>* out) {
    out->clear();
    if (version == 1) {
        if (size != std::size_t{count} * kSpoolV1RecordBytes) return false;
        out->reserve(count);
        for (std::uint32_t i = 0; i < count; ++i) {
            RecordV1 v;
            std::memcpy(&v, data + std::size_t{i} * sizeof v, sizeof v);
            out->push_back(from_v1(v));
        }
        return true;
    }
    if (version != kUsageRecordVersion) return false;
    out->resize(count);
    RecordDecodeContext ctx;
    std::size_t at = 0;
    for (std::uint32_t i = 0; i < count; ++i) {
        UsageRecord& r = (*out)[i];
        const unsigned char* p = data + at;
        std::uint64_t slot, generation, sequence;
        if (!get_varint(&p, data + size, &slot) ||
            !get_varint(&p, data + size, &generation) ||
            !get_varint(&p, data + size, &sequence) || slot > 0xffffffffu) {
            return false;
        }
        at = static_cast<std::size_t>(p - data);
        std::size_t used = 0;
        if (decode_usage_record(data, at, size, &ctx, &r, &used) !=
            DecodeResult::kRecord) {
            return false;
        }
        at += used;
        r.slot = static_cast<std::uint32_t>(slot);
        r.generation = generation;
        r.sequence = sequence;
    }
    return at == size;
}

}  // namespace apikey
