// The client-address set of an aggregation buffer (usage_ipset.h): the
// worker's insert after a memo miss, apikeyd's read and clear.
#include "usage_ipset.h"

#include <limits>
#include <string_view>

#include "hash_mix.h"
#include "usage_ring.h"

namespace apikey {
namespace {

constexpr std::uint64_t kMul = 0x9e3779b97f4a7c15ULL;


inline std::uint64_t load_u64(const void* p) noexcept {
    std::uint64_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

std::size_t line_up(std::size_t n) noexcept {
    return (n + 63) & ~std::size_t{63};
}

struct Set {
    AggIpSetHeader* header;
    std::uint32_t* index;
    AggIpRow* rows;

    Set(unsigned char* buffer, const AggLayout& l) noexcept
        : header(reinterpret_cast<AggIpSetHeader*>(buffer + l.ipset_offset)),
          index(reinterpret_cast<std::uint32_t*>(buffer +
                                                 l.ipset_index_offset)),
          rows(reinterpret_cast<AggIpRow*>(buffer + l.ipset_rows_offset)) {}
};

std::uint32_t used_rows(const AggIpSetHeader& h, const AggLayout& l,
                        std::memory_order order) noexcept {
    const std::uint32_t n = h.used.load(order);
    return n < l.ipset_rows ? n : l.ipset_rows;
}

// The index is probed from a seeded hash: clients choose their addresses
// (within an IPv6 prefix, freely), not where they land. Drawn on the
// first miss, from the label hash's per-lineage seed.
std::uint64_t probe_seed() noexcept {
    static const std::uint64_t seed = agg_text_hash("apikey ipset");
    return seed;
}

}  // namespace

std::size_t ipset_layout(AggLayout* l, std::size_t offset) noexcept {
    l->ipset_rows = l->entries / kIpSetEntriesPerRow;
    std::uint32_t slots = 1;
    while (slots < std::uint64_t{l->ipset_rows} * 2) slots <<= 1;
    l->ipset_index = slots;
    l->ipset_offset = line_up(offset);
    l->ipset_index_offset = l->ipset_offset + sizeof(AggIpSetHeader);
    l->ipset_rows_offset =
        line_up(l->ipset_index_offset + std::size_t{slots} * 4);
    return l->ipset_rows_offset + std::size_t{l->ipset_rows} * sizeof(AggIpRow);
}

std::uint64_t ipset_ip_hash(IpFamily family, const std::uint8_t* ip) noexcept {
    // Fixed constants, no seed: this value is stored in the sketches.
    const std::uint64_t f = static_cast<std::uint64_t>(family);
    return fmix64(load_u64(ip) * kMul ^ rotl64(load_u64(ip + 8) * kMul, 29) ^
                  (f + 1) * 0xc2b2ae3d27d4eb4fULL);
}

bool ipset_insert(unsigned char* buffer, const AggLayout& l,
                  const UsageFields& in) noexcept {
    const auto day = static_cast<std::int32_t>(hour_of(in.time_us) / 24);
    std::uint8_t ip[16] = {};
    if (in.ip_family == IpFamily::kV4) {
        std::memcpy(ip, in.ip, 4);
    } else if (in.ip_family == IpFamily::kV6) {
        std::memcpy(ip, in.ip, 16);
    } else {
        return true;  // no address (a unix socket): nothing to count
    }
    const std::uint64_t h = ipset_ip_hash(in.ip_family, ip);
    const std::uint64_t k0 = load_u64(in.key_id);
    const std::uint64_t k1 = load_u64(in.key_id + 8);
    const Set s(buffer, l);
    const std::uint32_t n = used_rows(*s.header, l, std::memory_order_relaxed);
    const std::uint32_t mask = l.ipset_index - 1;
    const std::uint64_t probe =
        fmix64(h ^ probe_seed() ^ k0 * kMul ^ rotl64(k1, 31) ^
               rotl64(static_cast<std::uint64_t>(day) * kMul, 17));
    std::uint32_t i = static_cast<std::uint32_t>(probe >> 32) & mask;
    for (std::uint32_t probes = 0;; ++probes, i = (i + 1) & mask) {
        if (probes == l.ipset_index) {
            return false;  // an index full of garbage
        }
        const std::uint32_t v = s.index[i];
        if (v == 0 || v > n) {
            if (n == l.ipset_rows) {
                return false;
            }
            AggIpRow& r = s.rows[n];
            std::memcpy(r.key_id, in.key_id, 16);
            r.ip_hash = h;
            r.day = day;
            r.index_slot = i;
            s.index[i] = n + 1;
            s.header->used.store(n + 1, std::memory_order_relaxed);
            break;
        }
        const AggIpRow& r = s.rows[v - 1];
        if (r.ip_hash == h && r.day == day && load_u64(r.key_id) == k0 &&
            load_u64(r.key_id + 8) == k1) {
            break;
        }
    }
    AggIpSetHeader& m = *s.header;
    std::memcpy(m.memo_key, in.key_id, 16);
    std::memcpy(m.memo_ip, ip, 16);
    m.memo_day_start_us = std::int64_t{day} * kUsPerDay;
    m.memo_family = in.ip_family;
    return true;
}

std::size_t ipset_read(const unsigned char* buffer, const AggLayout& l,
                       std::vector<IpSetEntry>* out) {
    const Set s(const_cast<unsigned char*>(buffer), l);
    const std::uint32_t n = used_rows(*s.header, l, std::memory_order_acquire);
    out->reserve(out->size() + n);
    for (std::uint32_t i = 0; i < n; ++i) {
        AggIpRow r;
        std::memcpy(&r, &s.rows[i], sizeof r);
        IpSetEntry e;
        std::memcpy(e.key_id, r.key_id, 16);
        e.day = r.day;
        e.ip_hash = r.ip_hash;
        out->push_back(e);
    }
    return n;
}

void ipset_clear(unsigned char* buffer, const AggLayout& l) noexcept {
    const Set s(buffer, l);
    const std::uint32_t n = used_rows(*s.header, l, std::memory_order_acquire);
    for (std::uint32_t i = 0; i < n; ++i) {
        const std::uint32_t at = s.rows[i].index_slot;
        if (at < l.ipset_index) {
            s.index[at] = 0;
        }
    }
    std::memset(static_cast<void*>(s.rows), 0, std::size_t{n} * sizeof(AggIpRow));
    s.header->used.store(0, std::memory_order_relaxed);
    std::memset(static_cast<void*>(reinterpret_cast<unsigned char*>(s.header) +
                                   sizeof(s.header->used)),
                0, sizeof(AggIpSetHeader) - sizeof(s.header->used));
}

std::size_t UsageSegment::agg_read_ips(std::uint32_t slot, std::uint64_t epoch,
                                       std::vector<IpSetEntry>* out) const {
    const unsigned char* base = agg_closed(slot, epoch);
    return base == nullptr ? 0 : ipset_read(base, agg_, out);
}

}  // namespace apikey
