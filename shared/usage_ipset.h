// The client-address set of an aggregation buffer (usage_agg.h): per
// buffer, the distinct (key id, UTC day, 64-bit hash of the client
// address) its worker saw since apikeyd last cleared it. apikeyd merges
// them into the per-(key, day) HyperLogLog sketches behind
// distinct_ips_today / distinct_ips_7d (hll_sketch.h), in the transaction
// that commits the buffer's counters.
//
// The set sits at the end of each buffer and follows the buffer's life:
// written by the worker under the same epoch protocol, read and zeroed by
// apikeyd with the rest. A header line holds the used count and the
// worker's memo of its last insert, so a client repeating on one key costs
// a comparison, not a probe; clearing the buffer clears the memo. (The
// worker's entry memo, usage_agg.h, skips even that for its own repeats.)
// Rows are used from 0 up with an open-addressing u32 index of 1-based
// rows, like the buffer's other tables. A full set drops the address and counts it
// (agg_ipset_overflow); the worker never waits.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "usage_agg.h"
#include "usage_record.h"

namespace apikey {

// Rows per buffer = aggregate entries / 4 (16,384 by default).
inline constexpr std::uint32_t kIpSetEntriesPerRow = 4;

struct AggIpSetHeader {
    std::atomic<std::uint32_t> used;
    IpFamily memo_family;      // kNone: no memo yet
    std::uint8_t reserved[3];
    // The memo's UTC day, as its first µs: "same day" is one subtraction.
    std::int64_t memo_day_start_us;
    std::uint8_t memo_key[16];
    std::uint8_t memo_ip[16];  // v4: 4 bytes, then zero
    std::uint8_t reserved2[16];
};
static_assert(sizeof(AggIpSetHeader) == 64);

// One (key, day, address hash). 32 bytes.
struct AggIpRow {
    std::uint8_t key_id[16];
    std::uint64_t ip_hash;
    std::int32_t day;           // UTC days since 1970
    std::uint32_t index_slot;   // where the index names the row
};
static_assert(sizeof(AggIpRow) == 32);

// One row of a closed buffer, as apikeyd reads it.
struct IpSetEntry {
    std::uint8_t key_id[16];
    std::int32_t day;
    std::uint64_t ip_hash;
};

// Places the set after `offset` (a buffer offset) in `l` (ipset_* fields);
// returns where it ends.
std::size_t ipset_layout(AggLayout* l, std::size_t offset) noexcept;

// The hash of a client address that the sketches count: the same on every
// worker, node and version (sketches of one day from many nodes merge).
// `ip` holds 16 bytes, zero past the family's address.
std::uint64_t ipset_ip_hash(IpFamily family, const std::uint8_t* ip) noexcept;

// Adds the request's (key, day, address) to the set at `buffer` (the
// buffer's start). True when it is in the set (or has no address); false
// when the set is full.
bool ipset_insert(unsigned char* buffer, const AggLayout& l,
                  const UsageFields& in) noexcept;

// The worker's side, per request: a repeat of the last insert is a few
// compares (`in.ip` holds the family's 4 or 16 bytes).
inline bool ipset_add(unsigned char* buffer, const AggLayout& l,
                      const UsageFields& in) noexcept {
    const auto* h =
        reinterpret_cast<const AggIpSetHeader*>(buffer + l.ipset_offset);
    auto u64 = [](const void* p) {
        std::uint64_t v;
        std::memcpy(&v, p, sizeof v);
        return v;
    };
    auto u32 = [](const void* p) {
        std::uint32_t v;
        std::memcpy(&v, p, sizeof v);
        return v;
    };
    if (in.ip_family != IpFamily::kV4 && in.ip_family != IpFamily::kV6) {
        return true;  // no address (a unix socket): nothing to count
    }
    if (h->memo_family == in.ip_family &&
        static_cast<std::uint64_t>(in.time_us - h->memo_day_start_us) <
            static_cast<std::uint64_t>(kUsPerDay) &&
        u64(h->memo_key) == u64(in.key_id) &&
        u64(h->memo_key + 8) == u64(in.key_id + 8) &&
        (in.ip_family == IpFamily::kV4
             ? u32(h->memo_ip) == u32(in.ip)
             : u64(h->memo_ip) == u64(in.ip) &&
                   u64(h->memo_ip + 8) == u64(in.ip + 8))) {
        return true;
    }
    return ipset_insert(buffer, l, in);
}

// apikeyd: appends the rows of the buffer at `buffer` (closed, settled) to
// *out, the used count clamped; returns how many.
std::size_t ipset_read(const unsigned char* buffer, const AggLayout& l,
                       std::vector<IpSetEntry>* out);
// apikeyd: zeroes the used rows, their index slots and the header.
void ipset_clear(unsigned char* buffer, const AggLayout& l) noexcept;

}  // namespace apikey
