// The aggregation areas of the usage segment (usage_agg.h): the worker's
// update path and apikeyd's collection, as UsageSegment members. Both
// sides stay in one file because they share the buffer layout and the
// bounds every read re-checks (a worker-written buffer is not trusted).
#include "usage_agg.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <ctime>
#include <limits>
#include <type_traits>

#include <sys/random.h>
#include <unistd.h>

#include "hash_mix.h"
#include "usage_ipset.h"
#include "usage_ring.h"

namespace apikey {

namespace {

constexpr std::size_t kPage = 4096;
constexpr std::uint64_t kMul = 0x9e3779b97f4a7c15ULL;
constexpr std::uint32_t kBucketBits = 8;
constexpr std::uint32_t kBucketMask = (1u << kBucketBits) - 1;

static_assert(sizeof(AggBufferHeader) <= kCacheLine);
static_assert(sizeof(AggEntry) % kCacheLine == 0);
static_assert(std::is_trivially_copyable_v<AggEntry>);
static_assert(std::is_trivially_copyable_v<AggLabel>);
static_assert(std::is_trivially_copyable_v<AggCell>);
static_assert((std::uint64_t{kAggMaxEntries} - 1) << kBucketBits <=
              std::numeric_limits<std::uint32_t>::max());
static_assert(kAggMaxEntries * std::uint64_t{kAggCellsPerEntry} <
              std::numeric_limits<std::uint32_t>::max());

constexpr std::uint32_t state_value(AggBufferState s) noexcept {
    return static_cast<std::uint32_t>(s);
}

std::size_t line_up(std::size_t n) noexcept {
    return (n + kCacheLine - 1) & ~(kCacheLine - 1);
}

std::uint32_t ceil_power_of_two(std::uint64_t v) noexcept {
    std::uint64_t p = 1;
    while (p < v) p <<= 1;
    return static_cast<std::uint32_t>(p);
}

std::uint64_t make_seed() noexcept {
    std::uint64_t seed = 0;
    if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) != sizeof seed) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        seed = fmix64(static_cast<std::uint64_t>(ts.tv_nsec) ^
                      (static_cast<std::uint64_t>(getpid()) << 32));
    }
    return seed | 1;
}

// Drawn once per process lineage, when the module (or program) is loaded:
// nginx's master hashes constant labels at configuration time, before its
// workers fork, so both see the same seed. Not a function-local static:
// every request reads it, and a plain load costs no guard.
const std::uint64_t g_seed = make_seed();

inline std::uint64_t load_u64(const void* p) noexcept {
    std::uint64_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// The method is a zero-padded 16-byte field: two words.
inline std::uint64_t label_hash(std::uint64_t m0, std::uint64_t m1,
                                std::uint64_t endpoint_hash) noexcept {
    return fmix64((m0 ^ g_seed) * kMul ^ rotl64(m1 * kMul, 29) ^
                  rotl64(endpoint_hash, 23));
}

// Key ids are the server's, not the client's: no seed needed.
inline std::uint64_t entry_hash(const std::uint8_t* key, std::uint32_t label,
                                std::int32_t hour) noexcept {
    const std::uint64_t lh =
        (std::uint64_t{label} << 32) | static_cast<std::uint32_t>(hour);
    return fmix64(load_u64(key) * kMul ^ rotl64(load_u64(key + 8), 31) ^
                  rotl64(lh * kMul, 17));
}

// A count only this process writes: no locked instruction needed.
inline void bump(std::atomic<std::uint64_t>& c) noexcept {
    c.store(c.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

// One buffer's tables, located from its start.
struct Buffer {
    AggBufferHeader* header;
    std::uint32_t* entry_index;
    std::uint32_t* label_index;
    AggEntry* entries;
    AggLabel* labels;
    AggCell* cells;

    Buffer(unsigned char* base, const AggLayout& l) noexcept
        : header(reinterpret_cast<AggBufferHeader*>(base)),
          entry_index(reinterpret_cast<std::uint32_t*>(
              base + l.entry_index_offset)),
          label_index(reinterpret_cast<std::uint32_t*>(
              base + l.label_index_offset)),
          entries(reinterpret_cast<AggEntry*>(base + l.entries_offset)),
          labels(reinterpret_cast<AggLabel*>(base + l.labels_offset)),
          cells(reinterpret_cast<AggCell*>(base + l.cells_offset)) {}
};

// A used count as the table can hold it: a count the worker wrote is
// trusted by nobody.
inline std::uint32_t used(const std::atomic<std::uint32_t>& n,
                          std::uint32_t cap, std::memory_order order) noexcept {
    const std::uint32_t v = n.load(order);
    return v < cap ? v : cap;
}

// The used prefix of each table of a closed buffer, as apikeyd reads it
// (after the worker's release stores).
struct UsedRows {
    std::uint32_t entries, labels, cells;
};
inline UsedRows used_rows(const Buffer& b, const AggLayout& l) noexcept {
    return {used(b.header->entries_used, l.entries, std::memory_order_acquire),
            used(b.header->labels_used, l.labels, std::memory_order_acquire),
            used(b.header->cells_used, l.cells, std::memory_order_acquire)};
}

// --- the worker's update -----------------------------------------------------

// Open addressing over a table used from row 0 up: the 1-based row that
// `match` accepts, or a new row that `fill` writes, in the first free index
// slot; 0 when the table is full. Index values above the used count (a
// worker killed between the two stores) are free slots.
template <typename Row, typename Match, typename Fill>
inline std::uint32_t find_or_add(std::uint32_t* index, std::uint32_t index_size,
                          Row* rows, std::atomic<std::uint32_t>& used_count,
                          std::uint32_t cap, std::uint64_t h, Match match,
                          Fill fill) noexcept {
    const std::uint32_t n = used(used_count, cap, std::memory_order_relaxed);
    const std::uint32_t mask = index_size - 1;
    std::uint32_t i = static_cast<std::uint32_t>(h >> 32) & mask;
    for (std::uint32_t probes = 0; probes < index_size;
         ++probes, i = (i + 1) & mask) {
        const std::uint32_t v = index[i];
        if (v == 0 || v > n) {
            if (n == cap) {
                return 0;
            }
            fill(rows[n], i);
            index[i] = n + 1;
            used_count.store(n + 1, std::memory_order_relaxed);
            return n + 1;
        }
        if (match(rows[v - 1])) {
            return v;
        }
    }
    return 0;  // an index full of garbage
}

// A label as the worker looks it up: the method as the two words of its
// zero-padded field, the endpoint already cut to fit.
struct LabelKey {
    const char* method;  // kUsageMethodLen bytes, zero past method_len
    std::uint64_t m0, m1;
    std::uint8_t method_len;
    std::string_view endpoint;
    bool constant;       // endpoint: configuration memory, hash given
    std::uint64_t endpoint_hash;
};

// The label id of (method, endpoint), added if new; kAggOtherLabel when the
// label table is full.
std::uint32_t find_label(const Buffer& b, const AggLayout& l,
                         const LabelKey& k) noexcept {
    const std::uint64_t h = label_hash(
        k.m0, k.m1, k.constant ? k.endpoint_hash : agg_text_hash(k.endpoint));
    const auto h32 = static_cast<std::uint32_t>(h);
    static_assert(kAggOtherLabel == 0, "find_or_add's full");
    return find_or_add(
        b.label_index, l.label_index, b.labels, b.header->labels_used,
        l.labels, h,
        [&](const AggLabel& lb) {
            return lb.hash == h32 && lb.method_len == k.method_len &&
                   lb.endpoint_len == k.endpoint.size() &&
                   load_u64(lb.method) == k.m0 &&
                   load_u64(lb.method + 8) == k.m1 &&
                   std::memcmp(lb.endpoint, k.endpoint.data(),
                               k.endpoint.size()) == 0;
        },
        [&](AggLabel& lb, std::uint32_t at) {
            std::memset(&lb, 0, sizeof lb);
            lb.hash = h32;
            lb.index_slot = at;
            lb.method_len = k.method_len;
            lb.endpoint_len = static_cast<std::uint8_t>(k.endpoint.size());
            std::memcpy(lb.method, k.method, sizeof lb.method);
            std::memcpy(lb.endpoint, k.endpoint.data(), k.endpoint.size());
        });
}

// find_label() through the worker's memo, for a constant label.
std::uint32_t label_of(AggLabelMemo& memos, const Buffer& b,
                       const AggLayout& l, std::uint32_t slot,
                       std::uint64_t epoch, const LabelKey& k) noexcept {
    if (!k.constant) {
        return find_label(b, l, k);
    }
    const auto at = reinterpret_cast<std::uintptr_t>(k.endpoint.data());
    AggLabelMemoEntry& memo = memos[((at >> 4) ^ k.m0) % memos.size()];
    if (memo.endpoint == k.endpoint.data() && memo.epoch == epoch &&
        memo.slot == slot && memo.m0 == k.m0 && memo.m1 == k.m1 &&
        memo.method_len == k.method_len) {
        return memo.label;
    }
    const std::uint32_t label = find_label(b, l, k);
    if (label != kAggOtherLabel) {
        memo = {k.endpoint.data(), k.m0, k.m1, epoch, slot, label,
                k.method_len};
    }
    return label;
}

// The entry of (key, label, hour), added (zeroed) if new; nullptr when the
// entry table is full.
AggEntry* find_entry(const Buffer& b, const AggLayout& l,
                     const std::uint8_t* key, std::uint32_t label,
                     std::int32_t hour, std::uint32_t* index) noexcept {
    const std::uint64_t h = entry_hash(key, label, hour);
    const auto h32 = static_cast<std::uint32_t>(h);
    const std::uint32_t id = find_or_add(
        b.entry_index, l.entry_index, b.entries, b.header->entries_used,
        l.entries, h,
        [&](const AggEntry& e) {
            return e.hash == h32 && e.label == label && e.hour == hour &&
                   load_u64(e.key_id) == load_u64(key) &&
                   load_u64(e.key_id + 8) == load_u64(key + 8);
        },
        [&](AggEntry& e, std::uint32_t at) {
            std::memset(&e, 0, sizeof e);
            std::memcpy(e.key_id, key, sizeof e.key_id);
            e.label = label;
            e.hour = hour;
            e.hash = h32;
            e.index_slot = at;
            e.last_used_us = std::numeric_limits<std::int64_t>::min();
        });
    if (id == 0) {
        return nullptr;
    }
    *index = id - 1;
    return &b.entries[id - 1];
}

// One more latency in the entry's histogram: the cell counted in, nullptr
// if the cell table is full.
AggCell* add_latency(const Buffer& b, const AggLayout& l, AggEntry& e,
                     std::uint32_t index, std::uint32_t bucket) noexcept {
    const std::uint32_t n =
        used(b.header->cells_used, l.cells, std::memory_order_relaxed);
    std::uint32_t c = e.first_cell;
    // A chain holds one cell per bucket at most.
    for (std::size_t steps = 0; c != 0 && c <= n && steps < kLatencyBucketCount;
         ++steps) {
        AggCell& cell = b.cells[c - 1];
        if ((cell.entry_bucket & kBucketMask) == bucket) {
            ++cell.count;
            return &cell;
        }
        c = cell.next;
    }
    if (n == l.cells) {
        return nullptr;
    }
    AggCell& cell = b.cells[n];
    cell.entry_bucket = index << kBucketBits | bucket;
    cell.next = e.first_cell;
    cell.count = 1;
    e.first_cell = n + 1;
    b.header->cells_used.store(n + 1, std::memory_order_relaxed);
    return &cell;
}

// The entry's path: the label (through its memo), the entry (hash and
// probe), and the entry memo set for the next request when the texts are
// constant.
AggEntry* find_entry_of(AggLabelMemo& labels, AggEntryMemo& m, UsageSlot& s,
                        const Buffer& b, const AggLayout& l,
                        std::uint32_t slot, std::uint64_t epoch,
                        const RequestShape& shape, const UsageFields& f,
                        std::uint32_t* index) noexcept {
    // The aggregation keys labels by the method's zero-padded field; a
    // method not from the worker's constant table is padded here.
    char padded[kUsageMethodLen];
    LabelKey k;
    if (f.method_constant) {
        k.method = f.method.data();
        k.method_len = static_cast<std::uint8_t>(
            f.method.size() < kUsageMethodLen ? f.method.size()
                                              : kUsageMethodLen);
    } else {
        std::memset(padded, 0, sizeof padded);
        k.method = padded;
        k.method_len = static_cast<std::uint8_t>(
            copy_truncated(padded, sizeof padded, f.method));
    }
    k.m0 = load_u64(k.method);
    k.m1 = load_u64(k.method + 8);
    k.constant = f.endpoint_constant;
    k.endpoint = f.endpoint_constant
                     ? f.endpoint.view()
                     : f.endpoint.view().substr(
                           0, truncated_len(f.endpoint, kUsageEndpointLen));
    k.endpoint_hash = f.endpoint_hash;
    const std::uint32_t label = label_of(labels, b, l, slot, epoch, k);
    if (label == kAggOtherLabel) {
        bump(s.agg_label_overflow);
    }
    const std::int64_t hour = hour_of(f.time_us);
    AggEntry* entry = find_entry(b, l, f.key_id, label,
                                 static_cast<std::int32_t>(hour), index);
    // Not for the "(other)" label: each of its requests counts an overflow.
    if (entry != nullptr && label != kAggOtherLabel && f.method_constant &&
        f.endpoint_constant) {
        m.epoch = epoch;
        m.slot = slot;
        m.index = *index;
        m.route = shape.route();
        m.hour_start_us = hour * kUsPerHour;
        m.hour_end_us = m.hour_start_us + kUsPerHour;
        m.entry = entry;
        m.cell = nullptr;
        m.bucket = kAggNoBucket;
        m.ip_shape = 0;
        m.entry_ip_shape = 0;
    } else {
        m.epoch = 0;
    }
    return entry;
}

// --- apikeyd's reading -------------------------------------------------------

std::string_view clamped(const char* p, std::uint8_t len,
                         std::size_t cap) noexcept {
    return {p, len < cap ? len : cap};
}

}  // namespace

AggLayout agg_layout_for(std::uint32_t entries) noexcept {
    AggLayout l;
    if (entries < kAggMinEntries || entries > kAggMaxEntries) {
        return l;
    }
    l.entries = entries;
    l.labels = entries / kAggEntriesPerLabel;
    l.cells = entries * kAggCellsPerEntry;
    l.entry_index = ceil_power_of_two(std::uint64_t{entries} * 2);
    l.label_index = ceil_power_of_two(std::uint64_t{l.labels} * 2);
    l.entry_index_offset = line_up(sizeof(AggBufferHeader));
    l.label_index_offset =
        line_up(l.entry_index_offset + std::size_t{l.entry_index} * 4);
    l.entries_offset =
        line_up(l.label_index_offset + std::size_t{l.label_index} * 4);
    l.labels_offset =
        l.entries_offset + std::size_t{entries} * sizeof(AggEntry);
    l.cells_offset = l.labels_offset + std::size_t{l.labels} * sizeof(AggLabel);
    const std::size_t end = ipset_layout(
        &l, l.cells_offset + std::size_t{l.cells} * sizeof(AggCell));
    l.buffer_size = (end + kPage - 1) & ~(kPage - 1);
    l.area_size = 2 * l.buffer_size;
    return l;
}

std::uint64_t agg_text_hash(std::string_view text) noexcept {
    const char* p = text.data();
    const std::size_t n = text.size();
    std::uint64_t h = g_seed ^ (n * kMul);
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        h = rotl64((h ^ load_u64(p + i)) * kMul, 31);
    }
    if (i < n) {
        std::uint64_t w = 0;
        std::memcpy(&w, p + i, n - i);
        h = rotl64((h ^ w) * kMul, 31);
    }
    return fmix64(h);
}

// --- UsageSegment: the worker's side -----------------------------------------

bool UsageSegment::aggregate(std::uint32_t slot,
                             const AggregateInput& in) noexcept {
    // No org: the aggregates are keyed by the key alone.
    static constexpr std::uint8_t kNoOrg[16] = {};
    UsageFields f{};
    f.key_id = in.key_id;
    f.org_id = kNoOrg;
    f.time_us = in.time_us;
    f.response_time_us = in.response_time_us;
    f.bytes_sent = in.bytes_sent;
    f.status = in.status;
    f.ip_family = in.ip_family;
    f.ip = in.ip;
    f.method = std::string_view(in.method, in.method_len);
    f.endpoint = in.endpoint;
    f.endpoint_constant = in.endpoint_constant;
    f.endpoint_hash = in.endpoint_hash;
    return aggregate(slot, f);
}

bool UsageSegment::aggregate_rest(std::uint32_t slot, UsageSlot& s,
                                  std::uint64_t e, const UsageFields& f,
                                  bool ip_in_set) noexcept {
    AggEntryMemo& m = entry_memo_;
    AggEntry* entry;
    std::uint32_t index;
    if (agg_memo_holds(m, slot, e, shape_, f)) {
        entry = m.entry;
        index = m.index;
    } else {
        const Buffer b(agg_buffer(slot, e), agg_);
        entry = find_entry_of(label_memo_, m, s, b, agg_, slot, e, shape_, f,
                              &index);
    }
    if (entry == nullptr) {
        bump(s.agg_overflow);
    } else {
        // The last-used address it may write is this request's, whose
        // address counter is current: m.entry_ip_shape stays true.
        agg_count(*entry, f);
        const std::uint32_t bucket = agg_bucket_of(f.response_time_us);
        if (m.cell != nullptr && m.bucket == bucket && m.entry == entry &&
            m.epoch == e) {
            ++m.cell->count;
        } else {
            const Buffer b(agg_buffer(slot, e), agg_);
            AggCell* cell = add_latency(b, agg_, *entry, index, bucket);
            if (cell == nullptr) {
                bump(s.agg_histogram_overflow);
            } else if (m.entry == entry && m.epoch == e) {
                m.cell = cell;
                m.bucket = bucket;
            }
        }
        if (ip_in_set && m.entry == entry && m.epoch == e) {
            m.ip_shape = shape_.address();
        }
    }
    // Release: apikeyd, seeing us out, sees every write above.
    s.agg_active.store(0, std::memory_order_release);
    return entry != nullptr;
}

// --- UsageSegment: apikeyd's side --------------------------------------------

unsigned char* UsageSegment::agg_closed(std::uint32_t slot,
                                        std::uint64_t epoch) const noexcept {
    if (slot >= slot_count_) {
        return nullptr;
    }
    unsigned char* base = agg_buffer(slot, epoch);
    const auto* h = reinterpret_cast<const AggBufferHeader*>(base);
    if (h->state.load(std::memory_order_acquire) !=
            state_value(AggBufferState::kClosed) ||
        h->epoch.load(std::memory_order_relaxed) != epoch) {
        return nullptr;
    }
    return base;
}

bool UsageSegment::agg_closed_epoch(std::uint32_t slot,
                                    std::uint64_t* epoch) const noexcept {
    if (slot >= slot_count_) {
        return false;
    }
    for (std::uint64_t i = 0; i < 2; ++i) {
        const auto* h =
            reinterpret_cast<const AggBufferHeader*>(agg_buffer(slot, i));
        if (h->state.load(std::memory_order_acquire) ==
            state_value(AggBufferState::kClosed)) {
            *epoch = h->epoch.load(std::memory_order_relaxed);
            return true;
        }
    }
    return false;
}

std::uint64_t UsageSegment::agg_close(std::uint32_t slot) noexcept {
    std::uint64_t closed = 0;
    if (slot >= slot_count_ || agg_closed_epoch(slot, &closed)) {
        return 0;
    }
    UsageSlot& s = slots_[slot];
    // Only apikeyd writes agg_epoch.
    const std::uint64_t e = s.agg_epoch.load(std::memory_order_relaxed);
    auto* next = reinterpret_cast<AggBufferHeader*>(agg_buffer(slot, e + 1));
    auto* cur = reinterpret_cast<AggBufferHeader*>(agg_buffer(slot, e));
    next->epoch.store(e + 1, std::memory_order_relaxed);
    next->state.store(state_value(AggBufferState::kActive),
                      std::memory_order_relaxed);
    // seq_cst: pairs with the worker's exchange of agg_active (see
    // aggregate()); also publishes the cleared buffer to the worker.
    s.agg_epoch.store(e + 1, std::memory_order_seq_cst);
    // Closed only after the move: a closed buffer's worker is leaving it.
    cur->epoch.store(e, std::memory_order_relaxed);
    cur->state.store(state_value(AggBufferState::kClosed),
                     std::memory_order_release);
    return e;
}

bool UsageSegment::agg_settled(std::uint32_t slot,
                               std::uint64_t epoch) const noexcept {
    if (slot >= slot_count_) {
        return true;
    }
    const UsageSlot& s = slots_[slot];
    if (s.state.load(std::memory_order_acquire) !=
        static_cast<std::uint32_t>(SlotOwnership::kOwned)) {
        return true;  // retired or free: nobody writes any more
    }
    // seq_cst: after agg_close's store of agg_epoch (see aggregate()).
    return s.agg_epoch.load(std::memory_order_seq_cst) != epoch &&
           s.agg_active.load(std::memory_order_seq_cst) != epoch;
}

std::size_t UsageSegment::agg_read(std::uint32_t slot, std::uint64_t epoch,
                                   std::vector<AggregateEntry>* out) const {
    unsigned char* base = agg_closed(slot, epoch);
    if (base == nullptr) {
        return 0;
    }
    const Buffer b(base, agg_);
    const auto [n_entries, n_labels, n_cells] = used_rows(b, agg_);

    // Every value is read once into a local copy, then checked: the
    // worker's memory may change under us.
    std::vector<std::pair<std::string_view, std::string_view>> labels;
    labels.reserve(n_labels);
    for (std::uint32_t i = 0; i < n_labels; ++i) {
        const AggLabel& lb = b.labels[i];
        const std::uint8_t ml = lb.method_len;
        const std::uint8_t el = lb.endpoint_len;
        labels.emplace_back(clamped(lb.method, ml, kUsageMethodLen),
                            clamped(lb.endpoint, el, kUsageEndpointLen));
    }

    const std::size_t first = out->size();
    constexpr std::uint32_t kNone = std::numeric_limits<std::uint32_t>::max();
    std::vector<std::uint32_t> position(n_entries, kNone);
    for (std::uint32_t i = 0; i < n_entries; ++i) {
        AggEntry e;
        std::memcpy(&e, &b.entries[i], sizeof e);
        AggregateEntry a;
        a.status_2xx = e.status[static_cast<int>(StatusClass::k2xx)];
        a.status_3xx = e.status[static_cast<int>(StatusClass::k3xx)];
        a.status_4xx = e.status[static_cast<int>(StatusClass::k4xx)];
        a.status_5xx = e.status[static_cast<int>(StatusClass::k5xx)];
        a.status_other = e.status[static_cast<int>(StatusClass::kOther)];
        a.requests = a.status_2xx + a.status_3xx + a.status_4xx +
                     a.status_5xx + a.status_other;
        if (a.requests == 0) {
            continue;  // a worker killed while adding it: nothing to count
        }
        std::memcpy(a.key_id.data(), e.key_id, a.key_id.size());
        a.hour_us = std::int64_t{e.hour} * kUsPerHour;
        if (e.label != kAggOtherLabel && e.label <= n_labels) {
            a.method.assign(labels[e.label - 1].first);
            a.endpoint.assign(labels[e.label - 1].second);
        } else {
            a.method.assign(kAggOtherText);
            a.endpoint.assign(kAggOtherText);
        }
        a.response_time_us_sum = e.response_time_us_sum;
        a.bytes_sent = e.bytes_sent;
        a.last_used_us = e.last_used_us;
        switch (e.ip_family) {
        case IpFamily::kV4:
            a.ip_family = IpFamily::kV4;
            std::memcpy(a.ip.data(), e.ip, 4);
            break;
        case IpFamily::kV6:
            a.ip_family = IpFamily::kV6;
            std::memcpy(a.ip.data(), e.ip, 16);
            break;
        default:
            a.ip_family = IpFamily::kNone;
            break;
        }
        position[i] = static_cast<std::uint32_t>(out->size() - first);
        out->push_back(std::move(a));
    }

    for (std::uint32_t i = 0; i < n_cells; ++i) {
        AggCell c;
        std::memcpy(&c, &b.cells[i], sizeof c);
        const std::uint32_t entry = c.entry_bucket >> kBucketBits;
        const std::uint32_t bucket = c.entry_bucket & kBucketMask;
        if (entry >= n_entries || position[entry] == kNone ||
            bucket >= kLatencyBucketCount || c.count == 0) {
            continue;
        }
        (*out)[first + position[entry]].latency.emplace_back(
            static_cast<std::uint16_t>(bucket), c.count);
    }
    // By bucket, one pair per bucket (a sane worker writes one cell per
    // bucket; a corrupt one is merged, not repeated).
    for (std::size_t i = first; i < out->size(); ++i) {
        auto& lat = (*out)[i].latency;
        std::sort(lat.begin(), lat.end());
        std::size_t k = 0;
        for (std::size_t j = 0; j < lat.size(); ++j) {
            if (k > 0 && lat[k - 1].first == lat[j].first) {
                lat[k - 1].second += lat[j].second;
            } else {
                lat[k++] = lat[j];
            }
        }
        lat.resize(k);
    }
    return out->size() - first;
}

void UsageSegment::agg_clear(std::uint32_t slot, std::uint64_t epoch) noexcept {
    unsigned char* base = agg_closed(slot, epoch);
    if (base == nullptr) {
        return;
    }
    const Buffer b(base, agg_);
    const auto [n_entries, n_labels, n_cells] = used_rows(b, agg_);
    // The index slots the used rows name, then the rows: a prefix of each
    // table, so a buffer that saw little costs little to clear.
    for (std::uint32_t i = 0; i < n_entries; ++i) {
        const std::uint32_t at = b.entries[i].index_slot;
        if (at < agg_.entry_index) {
            b.entry_index[at] = 0;
        }
    }
    for (std::uint32_t i = 0; i < n_labels; ++i) {
        const std::uint32_t at = b.labels[i].index_slot;
        if (at < agg_.label_index) {
            b.label_index[at] = 0;
        }
    }
    std::memset(static_cast<void*>(b.entries), 0,
                std::size_t{n_entries} * sizeof(AggEntry));
    std::memset(static_cast<void*>(b.labels), 0,
                std::size_t{n_labels} * sizeof(AggLabel));
    std::memset(static_cast<void*>(b.cells), 0,
                std::size_t{n_cells} * sizeof(AggCell));
    ipset_clear(base, agg_);
    b.header->entries_used.store(0, std::memory_order_relaxed);
    b.header->labels_used.store(0, std::memory_order_relaxed);
    b.header->cells_used.store(0, std::memory_order_relaxed);
    // Release: whoever sees kClean sees it zeroed.
    b.header->state.store(state_value(AggBufferState::kClean),
                          std::memory_order_release);
}

bool UsageSegment::agg_empty(std::uint32_t slot) const noexcept {
    if (slot >= slot_count_) {
        return true;
    }
    const std::uint64_t e =
        slots_[slot].agg_epoch.load(std::memory_order_acquire);
    const auto* h =
        reinterpret_cast<const AggBufferHeader*>(agg_buffer(slot, e));
    return h->entries_used.load(std::memory_order_acquire) == 0;
}

}  // namespace apikey
