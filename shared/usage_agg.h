// Edge aggregation: per ring slot of the usage segment, an aggregation area
// where the slot's worker adds up every recorded request per (key, endpoint
// label, method, UTC hour), and apikeyd collects the sums. What the rollups,
// request_count and last_used_* are built from.
//
// An area is two buffers. The slot's agg_epoch (written by apikeyd only)
// names the buffer the worker writes: buffer[agg_epoch & 1]. To collect,
// apikeyd moves agg_epoch on (agg_close), waits until the worker is out of
// the old buffer (agg_settled), reads it (agg_read), commits, and zeroes it
// (agg_clear). The worker never waits and never locks:
//
//   worker, per request                  apikeyd, per collection
//   e = agg_epoch (acquire)              other.epoch = E+1, other = kActive
//   loop: agg_active = e (seq_cst)       agg_epoch = E+1 (seq_cst)
//         if agg_epoch == e: break       buffer E = kClosed
//         e = agg_epoch                  settled: agg_active != E (seq_cst)
//   update buffer[e & 1]                 read, commit, clear -> kClean
//   agg_active = 0 (release)
//
// Epochs start at 1 (a fresh segment's worker writes epoch 1 in buffer 1),
// so agg_active == 0 always means "in no buffer". An epoch names one
// buffer's contents for good: with (node, slot, generation) it is the
// identity apikeyd commits exactly once.
//
// A buffer holds three append-only tables (and the client-address set of
// usage_ipset.h, after them), each an array filled from index
// 0 plus (for entries and labels) an open-addressing u32 index of
// 1-based positions, so that the used part is a prefix and a clear only
// touches what was used:
//   labels   (method, endpoint) -> label id; id 0 is reserved for "(other)"
//            (label table full: the request is aggregated under it)
//   entries  (key id, label id, hour) -> counters, last use
//   cells    (entry, latency bucket) -> count, chained from their entry
// Everything a worker wrote is untrusted by apikeyd: agg_read clamps every
// count and length and bounds-checks every index.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "usage_buckets.h"
#include "usage_record.h"
#include "usage_shape.h"

namespace apikey {

// --- sizes -------------------------------------------------------------------

// `apikey_usage ... aggregate=N`: entries per buffer. The default holds
// 50,000 distinct (key, endpoint, method, hour) per worker with room to
// spare.
inline constexpr std::uint32_t kAggDefaultEntries = 65536;
inline constexpr std::uint32_t kAggMinEntries = 1024;
// A cell names its entry in 24 bits.
inline constexpr std::uint32_t kAggMaxEntries = 1u << 24;
// Labels per buffer = entries / 16 (4096 by default); cells = 4 per entry.
inline constexpr std::uint32_t kAggEntriesPerLabel = 16;
inline constexpr std::uint32_t kAggCellsPerEntry = 4;
// The label of requests whose label did not fit, and how apikeyd stores it.
inline constexpr std::uint32_t kAggOtherLabel = 0;
inline constexpr std::string_view kAggOtherText = "(other)";

enum class AggBufferState : std::uint32_t {
    kClean = 0,   // zero, waiting to become the active buffer
    kActive = 1,  // the worker writes here (buffer[agg_epoch & 1])
    kClosed = 2   // apikeyd's until it is committed and cleared
};

// --- in the segment (no pointers; offsets from the area) ---------------------

struct AggBufferHeader {
    // apikeyd writes state and epoch; the worker reads neither.
    std::atomic<std::uint32_t> state;  // AggBufferState
    std::uint32_t reserved;
    std::atomic<std::uint64_t> epoch;
    // The worker's (and apikeyd's on clear): how much of each table is used.
    std::atomic<std::uint32_t> entries_used;
    std::atomic<std::uint32_t> labels_used;
    std::atomic<std::uint32_t> cells_used;
};

// One (key, label, hour). 128 bytes: two cache lines.
struct AggEntry {
    std::uint8_t key_id[16];
    std::uint32_t label;           // kAggOtherLabel or 1 + label index
    std::int32_t hour;             // UTC hours since 1970 (hour_of)
    std::uint64_t status[kStatusClassCount];  // by StatusClass
    std::uint64_t response_time_us_sum;
    std::uint64_t bytes_sent;
    std::int64_t last_used_us;     // latest request start in the entry
    std::uint8_t ip[16];           // that request's client (v4: 4 bytes)
    IpFamily ip_family;
    std::uint8_t reserved0[3];
    std::uint32_t first_cell;      // 1 + cell index, 0: none yet
    std::uint32_t index_slot;      // where the entry index names it
    std::uint32_t hash;            // of (key, label, hour), checked first
    std::uint8_t reserved1[8];
};
static_assert(sizeof(AggEntry) == 128);

// One (method, endpoint). 128 bytes.
struct AggLabel {
    std::uint32_t hash;
    std::uint32_t index_slot;
    std::uint8_t method_len;
    std::uint8_t endpoint_len;
    std::uint8_t reserved[6];
    char method[kUsageMethodLen];      // zero-padded past method_len
    char endpoint[kUsageEndpointLen];  // zero-padded past endpoint_len
};
static_assert(sizeof(AggLabel) == 128);

// One (entry, latency bucket) -> count. 16 bytes.
struct AggCell {
    std::uint32_t entry_bucket;  // entry index << 8 | bucket
    std::uint32_t next;          // 1 + next cell of the entry, 0: last
    std::uint64_t count;
};
static_assert(sizeof(AggCell) == 16);
static_assert(kLatencyBucketCount <= 256);

// Where everything of one slot's area is, from the entries per buffer.
// Offsets are from the start of a buffer; every table starts on a cache
// line, every buffer on a page.
struct AggLayout {
    std::uint32_t entries = 0;      // 0: invalid
    std::uint32_t labels = 0;
    std::uint32_t cells = 0;
    std::uint32_t entry_index = 0;  // slots, a power of two >= 2 entries
    std::uint32_t label_index = 0;  // slots, a power of two >= 2 labels
    std::size_t entry_index_offset = 0;
    std::size_t label_index_offset = 0;
    std::size_t entries_offset = 0;
    std::size_t labels_offset = 0;
    std::size_t cells_offset = 0;
    // The client-address set (usage_ipset.h), after the cells.
    std::uint32_t ipset_rows = 0;
    std::uint32_t ipset_index = 0;  // slots, a power of two >= 2 rows
    std::size_t ipset_offset = 0;   // its header
    std::size_t ipset_index_offset = 0;
    std::size_t ipset_rows_offset = 0;
    std::size_t buffer_size = 0;
    std::size_t area_size = 0;      // both buffers of one slot
};

// The layout for `entries` per buffer; entries == 0 in the result when
// `entries` is outside [kAggMinEntries, kAggMaxEntries].
AggLayout agg_layout_for(std::uint32_t entries) noexcept;

// --- the worker's side -------------------------------------------------------

// The hash of an endpoint label, as the worker looks labels up by it.
// Seeded per process lineage (nginx's master, before the workers fork, so
// that a label hashed at configuration time matches), so that clients
// cannot aim probe chains at one another.
std::uint64_t agg_text_hash(std::string_view text) noexcept;

// One request as a test or tool hands it to the aggregation (the worker
// hands its UsageFields, the same struct its record is encoded from).
struct AggregateInput {
    const std::uint8_t* key_id = nullptr;  // 16 bytes
    std::int64_t time_us = 0;              // request start
    std::uint64_t response_time_us = 0;
    std::uint64_t bytes_sent = 0;
    std::uint16_t status = 0;
    IpFamily ip_family = IpFamily::kNone;
    const std::uint8_t* ip = nullptr;      // 4 or 16 bytes
    // kUsageMethodLen bytes, zero past method_len (a record field's form:
    // compared and hashed as two words).
    const char* method = nullptr;
    std::uint8_t method_len = 0;
    // Already cut to fit a label (kUsageEndpointLen, at a UTF-8 boundary:
    // truncated_len()).
    std::string_view endpoint;
    // A configuration-time label: agg_text_hash(endpoint) is given, and
    // the text at endpoint.data() stays the same as long as the segment
    // is mapped, so the worker remembers its label id per buffer.
    bool endpoint_constant = false;
    std::uint64_t endpoint_hash = 0;
};

// A worker's memory (its own, not the segment's) of the label ids of
// constant labels, per (slot, epoch): labels are append-only within an
// epoch, so (slot, epoch, the label text's address, the method) name one
// id. Spares the label's hash and comparisons on most requests.
struct AggLabelMemoEntry {
    const char* endpoint = nullptr;
    std::uint64_t m0 = 0;
    std::uint64_t m1 = 0;
    std::uint64_t epoch = 0;
    std::uint32_t slot = 0;
    std::uint32_t label = 0;
    std::uint8_t method_len = 0;
};
using AggLabelMemo = std::array<AggLabelMemoEntry, 16>;

inline constexpr std::uint32_t kAggNoBucket = ~std::uint32_t{0};

// The entry the worker's last request went to, and its latency cell: a
// request of the same route (RequestShape: key, org, constant method and
// endpoint texts) with a start in the same hour, in the same (slot,
// epoch), adds to them without a hash or a probe. Entries and cells are
// append-only within an epoch, so the pointers hold while the epoch does.
// epoch 0: nothing remembered.
struct AggEntryMemo {
    std::uint64_t epoch = 0;
    std::uint32_t slot = 0;
    std::uint32_t index = 0;        // the entry's row
    std::uint64_t route = 0;        // RequestShape::route() of its requests
    std::int64_t hour_start_us = 0;  // [start, end): the entry's hour
    std::int64_t hour_end_us = 0;
    AggEntry* entry = nullptr;
    AggCell* cell = nullptr;        // nullptr: none remembered
    // The cell's; kAggNoBucket (no request's) while there is no cell, so
    // a matching bucket vouches for the cell.
    std::uint32_t bucket = kAggNoBucket;
    // RequestShape::address() values (0: none), both reset whenever the
    // memo names another entry. ip_shape: the address was put in the
    // epoch's client-address set with the memo's key and day (its hour's),
    // so the same client again skips the set's insert. entry_ip_shape: the
    // entry's last-used address is the address's, so a newer request of
    // the same client only moves the last-used time.
    std::uint64_t ip_shape = 0;
    std::uint64_t entry_ip_shape = 0;
};

// The memo's entry is the request's: same slot and epoch, route, hour.
inline bool agg_memo_holds(const AggEntryMemo& m, std::uint32_t slot,
                           std::uint64_t epoch, const RequestShape& shape,
                           const UsageFields& f) noexcept {
    return m.route == shape.route() && m.epoch == epoch && m.slot == slot &&
           f.time_us >= m.hour_start_us && f.time_us < m.hour_end_us;
}

// latency_bucket() without the call for the fastest responses.
inline std::uint32_t agg_bucket_of(std::uint64_t response_time_us) noexcept {
    return response_time_us < kLatencyFirstBoundUs
               ? 0
               : static_cast<std::uint32_t>(latency_bucket(response_time_us));
}

// The entry's last-used address becomes the request's.
inline void agg_set_last_ip(AggEntry& entry, const UsageFields& f) noexcept {
    entry.ip_family = f.ip_family;
    std::memset(entry.ip, 0, sizeof entry.ip);
    if (f.ip_family == IpFamily::kV4) {
        std::memcpy(entry.ip, f.ip, 4);
    } else if (f.ip_family == IpFamily::kV6) {
        std::memcpy(entry.ip, f.ip, 16);
    }
}

// One request added to its entry's status, response-time and byte
// counters.
inline void agg_add_counters(AggEntry& entry, const UsageFields& f) noexcept {
    ++entry.status[static_cast<int>(status_class(f.status))];
    entry.response_time_us_sum += f.response_time_us;
    entry.bytes_sent += f.bytes_sent;
}

// One request added to its entry's counters and last-used time and
// address (not its latency cell).
inline void agg_count(AggEntry& entry, const UsageFields& f) noexcept {
    agg_add_counters(entry, f);
    if (f.time_us >= entry.last_used_us) {
        entry.last_used_us = f.time_us;
        agg_set_last_ip(entry, f);
    }
}

// agg_count() on the memo's entry, which holds the request: the last-used
// address is written only when it is not already the request's.
inline void agg_count_held(AggEntryMemo& m, const RequestShape& shape,
                           const UsageFields& f) noexcept {
    AggEntry& entry = *m.entry;
    agg_add_counters(entry, f);
    if (f.time_us >= entry.last_used_us) {
        entry.last_used_us = f.time_us;
        if (m.entry_ip_shape != shape.address()) {
            agg_set_last_ip(entry, f);
            m.entry_ip_shape = shape.address();
        }
    }
}

// --- what apikeyd sees -------------------------------------------------------

// One entry of a closed buffer, decoded. method and endpoint are as the
// worker stored them (apikeyd sanitizes them), or kAggOtherText for the
// reserved label (and for a label id the buffer does not hold).
struct AggregateEntry {
    std::array<std::uint8_t, 16> key_id{};
    std::int64_t hour_us = 0;  // start of the UTC hour
    std::string method;
    std::string endpoint;
    std::uint64_t requests = 0;  // = the five status counts added up
    std::uint64_t status_2xx = 0;
    std::uint64_t status_3xx = 0;
    std::uint64_t status_4xx = 0;
    std::uint64_t status_5xx = 0;
    std::uint64_t status_other = 0;
    std::uint64_t response_time_us_sum = 0;
    std::uint64_t bytes_sent = 0;
    std::int64_t last_used_us = 0;
    IpFamily ip_family = IpFamily::kNone;
    std::array<std::uint8_t, 16> ip{};
    // (bucket, count), by bucket; the counts add up to at most `requests`
    // (less when the cell table was full: agg_histogram_overflow).
    std::vector<std::pair<std::uint16_t, std::uint64_t>> latency;
};

// The consumer API is on UsageSegment (usage_ring.h):
//   bool agg_closed_epoch(slot, &epoch)   a closed buffer to collect first
//   uint64_t agg_close(slot)              closes the active buffer
//   bool agg_settled(slot, epoch)         the worker is out of it
//   size_t agg_read(slot, epoch, &out)    its entries, decoded
//   void agg_clear(slot, epoch)           zeroes it, kClean
//   bool agg_empty(slot)                  the active buffer has no entry
// and the worker's: bool aggregate(slot, fields).

}  // namespace apikey
