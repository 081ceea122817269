// The usage segment: a file (under /dev/shm) created by nginx and drained
// by apikeyd. It holds `slot_count` single-producer/single-consumer record
// streams (usage_stream.h) over one shared pool of chunks. Each nginx
// worker claims one slot at start (the producer); apikeyd is the only
// consumer of every slot.
//
// Layout: a 4 KiB header, `slot_count` slot descriptors (four cache lines
// each: control, producer, consumer, aggregation counters), then, from the
// next page, the stream area (the chunk pool and each slot's chunk table),
// then, from the next page, one aggregation area per slot (usage_agg.h).
// Positions (head, tail) are byte offsets in the slot's stream, never wrap
// and never go back. No pointers live in the segment.
//
// Slot life: kFree -> (worker start, CAS) kOwned -> (worker exit, or apikeyd
// finding the owner dead) kRetired -> (apikeyd drained its stream and
// collected its aggregates) kFree. A slot is handed to a new worker only
// after the old worker's records are drained and its aggregation buffers
// are clean, so (slot, generation, position) identifies a record exactly
// once, and (slot, generation, epoch) an aggregation buffer. Positions are
// never reset (a free slot has head == tail, at a chunk boundary); a claim
// sets the
// generation to max(previous + 1, claim time in µs), so it also grows across
// re-created files.
//
// A segment is replaced, never resized: open_or_create builds a new file
// beside the old one, renames it into place and sets the old header's
// `superseded`, so apikeyd drains the old mapping until its slots are empty
// and then attaches the new file.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

#include "segment_file.h"
#include "usage_agg.h"
#include "usage_ipset.h"
#include "usage_record.h"
#include "usage_shape.h"
#include "usage_stream.h"

namespace apikey {

inline constexpr std::uint64_t kUsageMagic =
    0x31474e5259454b41ULL;  // "AKEYRNG1"
// 3: variable-length records in a shared chunk pool, slot descriptors of
// four cache lines, aggregation areas after the stream area. 4: a
// client-address set at the end of each aggregation buffer.
inline constexpr std::uint32_t kUsageLayoutVersion = 4;
inline constexpr std::size_t kUsageHeaderSize = 4096;
inline constexpr std::size_t kCacheLine = 64;
// A replaced segment stays at PATH + kUsageOldSuffix + its created_at_us
// until apikeyd has drained and deleted it.
inline constexpr const char* kUsageOldSuffix = ".old.";
// Far above any worker_processes; keeps slot indexes in an int.
inline constexpr std::uint32_t kMaxUsageSlots = 1u << 16;

enum class SlotOwnership : std::uint32_t {
    kFree = 0,
    kOwned = 1,
    kRetired = 2
};

// Counters of requests that carried no usable key: counted, not recorded.
enum class UnrecordedCounter : int {
    kMissing = 0,
    kMalformed,
    kUnknown,
    kUnavailable,
    kCount
};

struct UsageSlot {
    // Control line: written on claim/retire/free only.
    alignas(kCacheLine) std::atomic<std::uint32_t> state;  // SlotOwnership
    // Set last (release) by a claim: 0 on an owned slot means the claim is
    // still in progress, not a dead owner. Cleared when the slot is freed.
    std::atomic<std::int32_t> owner_pid;
    std::atomic<std::uint64_t> generation;  // changes on every claim
    std::atomic<std::int64_t> claimed_at_us;
    // Producer line: only the owning worker writes here (apikeyd too once
    // the slot is retired and drained: UsageStream::release_all).
    // Stream position after the last record published.
    alignas(kCacheLine) std::atomic<std::uint64_t> head;
    std::atomic<std::uint64_t> dropped;  // pool empty: record not written
    std::atomic<std::uint64_t>
        unrecorded[static_cast<int>(UnrecordedCounter::kCount)];
    // The epoch whose buffer the worker is in right now, 0: in none.
    std::atomic<std::uint64_t> agg_active;
    // Consumer line: only apikeyd writes here. Stream position up to which
    // records are committed.
    alignas(kCacheLine) std::atomic<std::uint64_t> tail;
    // The worker writes buffer[agg_epoch & 1]; starts at 1.
    std::atomic<std::uint64_t> agg_epoch;
    // Aggregation counters: only the owning worker writes here.
    // Requests not aggregated (entry table full).
    alignas(kCacheLine) std::atomic<std::uint64_t> agg_overflow;
    // Requests aggregated under kAggOtherLabel (label table full).
    std::atomic<std::uint64_t> agg_label_overflow;
    // Latencies left out of a histogram (cell table full); the request
    // itself is counted.
    std::atomic<std::uint64_t> agg_histogram_overflow;
    // Client addresses not counted (the buffer's address set was full).
    std::atomic<std::uint64_t> agg_ipset_overflow;
};
static_assert(sizeof(UsageSlot) == 4 * kCacheLine);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

struct UsageHeader {
    std::uint64_t magic;  // written last (release) when a file is created
    std::uint32_t layout_version;
    std::uint32_t chunk_size;  // kStreamChunkSize
    std::uint32_t slot_count;
    std::uint32_t reserved;
    std::uint64_t chunk_count;  // chunks in the stream's pool
    std::uint64_t file_size;
    std::int64_t created_at_us;
    alignas(kCacheLine) std::atomic<std::uint32_t> superseded;
    std::atomic<std::uint64_t> unslotted_drops;  // workers without a slot
    // Aggregation areas: entries per buffer (the rest follows from it,
    // agg_layout_for) and where the first area starts (a page boundary).
    alignas(kCacheLine) std::uint32_t agg_entries;
    std::uint32_t agg_labels;
    std::uint32_t agg_cells;
    std::uint32_t reserved_agg;
    std::uint64_t agg_area_offset;
    std::uint64_t agg_area_size;
};
static_assert(sizeof(UsageHeader) <= kUsageHeaderSize);

struct UsageLayout {
    std::uint32_t slot_count;
    std::uint64_t chunk_count;
    std::size_t file_size;  // stream and aggregation areas
    std::uint32_t agg_entries;
};

// The largest stream area that fits `stream_size` bytes with `slot_count`
// slots (header and slot descriptors included), plus one aggregation area
// of `agg_entries` per buffer for each slot: chunk_count is the most chunks
// that fit and file_size the exact size of the whole file. chunk_count == 0
// (and file_size == 0) if not even one chunk fits, slot_count is 0 or
// above kMaxUsageSlots, or agg_entries is out of range (agg_layout_for).
UsageLayout usage_layout_for(std::size_t stream_size, std::uint32_t slot_count,
                             std::uint32_t agg_entries) noexcept;

// A mapped usage segment. Used by nginx (create or reuse, claim, push) and
// by apikeyd (attach, drain, retire dead owners, free).
class UsageSegment {
public:
    UsageSegment() = default;
    // Moves null the source: its pointers must not outlive the mapping.
    UsageSegment(UsageSegment&& other) noexcept;
    UsageSegment& operator=(UsageSegment&& other) noexcept;
    UsageSegment(const UsageSegment&) = delete;
    UsageSegment& operator=(const UsageSegment&) = delete;
    ~UsageSegment() = default;

    // nginx master: maps the segment at `path` if it exists with exactly
    // `layout` (reuse across reloads), or else creates a fresh file at
    // `path`.tmp, renames it over `path` and marks the old one superseded.
    // `mode` applies exactly (not filtered by the umask) to a new file; the
    // caller changes its owner if needed. *created tells which happened.
    // A path that exists but cannot be opened is an error, not replaced.
    SegmentStatus open_or_create(const char* path, const UsageLayout& layout,
                                 unsigned mode, bool* created,
                                 std::string* error) noexcept;
    // apikeyd: maps an existing segment read-write, validating the header.
    SegmentStatus attach(const char* path, std::string* error) noexcept;
    void reset() noexcept;

    bool mapped() const noexcept { return header_ != nullptr; }
    const UsageHeader& header() const noexcept { return *header_; }
    UsageHeader& header() noexcept { return *header_; }
    // A newer file has replaced this one at its path.
    bool superseded() const noexcept;
    // Both as validated when mapped: never re-read from the shared file.
    std::uint32_t slot_count() const noexcept { return slot_count_; }
    std::uint64_t chunk_count() const noexcept {
        return stream_.layout().chunk_count;
    }
    const UsageStream& stream() const noexcept { return stream_; }
    UsageSlot& slot(std::uint32_t i) noexcept;
    const UsageSlot& slot(std::uint32_t i) const noexcept;

    // --- producer (nginx worker) ---
    // Claims a free slot for `pid`; returns its index or -1 if none is free.
    int claim_slot(std::int32_t pid, std::int64_t now_us) noexcept;
    // Marks the slot retired (worker exit). Its records stay for apikeyd.
    void retire_slot(std::uint32_t slot) noexcept;
    // One request with a known key, the worker's usual call: observed
    // once (RequestShape), then, if `raw` (the raw-event policy keeps it),
    // appended as append() does, else counted as kept out; then aggregated
    // as aggregate() does. Returns 0, or kLogDropped and/or kLogOverflow
    // for what append and aggregate returned false. Always inline: at
    // nginx's -O the calls and their frames would cost a tenth of it.
    static constexpr int kLogDropped = 1;
    static constexpr int kLogOverflow = 2;
    __attribute__((always_inline)) int log(std::uint32_t slot,
                                           StreamWriter* writer,
                                           const UsageFields& fields,
                                           bool raw) noexcept {
        shape_.observe(fields);
        int missed = 0;
        if (!raw) {
            count_policy_skipped(slot);
        } else if (!append_observed(slot, writer, fields)) {
            missed |= kLogDropped;
        }
        if (!aggregate_observed(slot, fields)) {
            missed |= kLogOverflow;
        }
        return missed;
    }
    // Appends one record to the slot's stream (the worker's `writer`, reset
    // on every claim). Never blocks: false when the pool has no chunk (a
    // drop, counted) or the slot is out of range (counted in the header's
    // unslotted_drops).
    [[nodiscard]] bool append(std::uint32_t slot, StreamWriter* writer,
                              const UsageFields& fields) noexcept {
        shape_.observe(fields);
        return append_observed(slot, writer, fields);
    }
    // A request with a known key that the raw-event policy kept out.
    void count_policy_skipped(std::uint32_t slot) noexcept {
        if (slot < slot_count_) {
            stream_.state(slot).policy_skipped.fetch_add(
                1, std::memory_order_relaxed);
        }
    }
    void count_unrecorded(std::uint32_t slot, UnrecordedCounter c) noexcept;

    // --- consumer (apikeyd) ---
    // Decodes up to `max` records from position `from` (raised to the tail
    // if below it) up to the head into `out`, slot and sequence set;
    // *end: the position after what was read. Does not advance the tail.
    // A corrupt record costs the rest of its chunk (counted,
    // corrupt_chunks()).
    std::size_t peek(std::uint32_t slot, std::uint64_t from, UsageRecord* out,
                     std::size_t max, std::uint64_t* end) noexcept;
    std::uint64_t corrupt_chunks() const noexcept { return corrupt_; }
    // Advances the tail to `position` (after the records are committed)
    // and gives the chunks it passed back to the pool. Clamped to [tail,
    // head]: the tail never moves back or past the head.
    void commit(std::uint32_t slot, std::uint64_t position) noexcept;
    // Frees a retired slot whose stream is empty (its chunks back to the
    // pool) and whose aggregation buffers are clean (none closed, the
    // active one without an entry); returns true if freed.
    bool free_if_drained(std::uint32_t slot) noexcept;

    // --- aggregation (usage_agg.h), worker ---
    // Adds one request to the slot's active buffer. Never blocks, never
    // allocates: false if the entry table is full (counted in
    // agg_overflow) or the slot is out of range. Reads the key id, time,
    // response time, bytes, status, address, method, endpoint and the
    // promises about the texts (UsageFields).
    bool aggregate(std::uint32_t slot, const UsageFields& f) noexcept {
        shape_.observe(f);
        return aggregate_observed(slot, f);
    }
    bool aggregate(std::uint32_t slot, const AggregateInput& in) noexcept;

    // --- aggregation, apikeyd ---
    // True and *epoch set if a buffer of this slot is kClosed: it must be
    // collected (committed or found committed, then cleared) first.
    bool agg_closed_epoch(std::uint32_t slot,
                          std::uint64_t* epoch) const noexcept;
    // Closes the active buffer and makes the other one active; returns the
    // closed buffer's epoch. Precondition: no buffer is closed (else, or for
    // a slot out of range, nothing changes and it returns 0).
    std::uint64_t agg_close(std::uint32_t slot) noexcept;
    // The worker is no longer in buffer `epoch` (always true once the slot
    // is retired or free: a dead worker's half-done update is what it is).
    bool agg_settled(std::uint32_t slot, std::uint64_t epoch) const noexcept;
    // Appends the entries of closed buffer `epoch` to *out, decoded (text
    // lengths clamped, indexes bounds-checked: a buffer a worker wrote is
    // not trusted); returns how many. 0 if `epoch` is not a closed buffer.
    std::size_t agg_read(std::uint32_t slot, std::uint64_t epoch,
                         std::vector<AggregateEntry>* out) const;
    // Appends the client-address set of closed buffer `epoch` to *out
    // (usage_ipset.h); returns how many rows. 0 if it is not closed.
    std::size_t agg_read_ips(std::uint32_t slot, std::uint64_t epoch,
                             std::vector<IpSetEntry>* out) const;
    // Zeroes the used part of closed buffer `epoch` and marks it kClean.
    void agg_clear(std::uint32_t slot, std::uint64_t epoch) noexcept;
    // The active buffer has no entry (or the slot is out of range).
    bool agg_empty(std::uint32_t slot) const noexcept;
    // As validated when mapped.
    const AggLayout& agg_layout() const noexcept { return agg_; }

private:
    // append() for a request shape_ has observed. Inline, with the usual
    // request's path: a repeat record (encode_repeat_record) in the
    // writer's chunk, nobody else having written since (the head is where
    // the writer left it); anything else goes through UsageStream::append.
    __attribute__((always_inline)) bool append_observed(
        std::uint32_t slot, StreamWriter* writer,
        const UsageFields& fields) noexcept {
        if (slot >= slot_count_) {
            count_unslotted();
            return false;
        }
        UsageSlot& s = slots_[slot];
        const std::uint64_t head = s.head.load(std::memory_order_relaxed);
        if (head == writer->head) {
            // Relative to the writer's chunk: a head at its very end is
            // past every offset a repeat may take (and with no chunk yet,
            // the context allows none).
            const std::size_t n = encode_repeat_record(
                writer->chunk,
                static_cast<std::size_t>(head -
                                         (writer->chunk_seq
                                          << kStreamChunkShift)),
                fields, &writer->context, shape_.address());
            if (n != 0) {
                writer->head = head + n;
                // Release: the consumer that sees the head sees the record.
                s.head.store(writer->head, std::memory_order_release);
                return true;
            }
        }
        return stream_.append(slot, s, writer, fields, shape_.address());
    }
    // aggregate() for a request shape_ has observed. Inline, with the
    // usual request's path: the entry memo and its latency cell hold the
    // request (agg_memo_holds, same bucket: then there is a cell);
    // anything else goes through aggregate_rest.
    __attribute__((always_inline)) bool aggregate_observed(
        std::uint32_t slot, const UsageFields& f) noexcept {
        if (slot >= slot_count_) {
            return false;
        }
        UsageSlot& s = slots_[slot];
        // Say which buffer we are in, then check apikeyd has not moved on
        // in between (seq_cst both sides: apikeyd stores agg_epoch, then
        // loads agg_active; one of the two sees the other).
        std::uint64_t e = s.agg_epoch.load(std::memory_order_acquire);
        for (;;) {
            s.agg_active.exchange(e, std::memory_order_seq_cst);
            const std::uint64_t now =
                s.agg_epoch.load(std::memory_order_seq_cst);
            if (now == e) {
                break;
            }
            e = now;
        }
        AggEntryMemo& m = entry_memo_;
        const bool held = agg_memo_holds(m, slot, e, shape_, f);
        bool ip_in_set = held && m.ip_shape == shape_.address();
        if (!ip_in_set) {
            ip_in_set = ipset_add(agg_buffer(slot, e), agg_, f);
            if (!ip_in_set) {
                // Only this worker writes its slot's counts: no locked add.
                s.agg_ipset_overflow.store(
                    s.agg_ipset_overflow.load(std::memory_order_relaxed) + 1,
                    std::memory_order_relaxed);
            } else if (held) {
                m.ip_shape = shape_.address();
            }
        }
        if (held && m.bucket == agg_bucket_of(f.response_time_us)) {
            agg_count_held(m, shape_, f);
            ++m.cell->count;
            // Release: apikeyd, seeing us out, sees every write above.
            s.agg_active.store(0, std::memory_order_release);
            return true;
        }
        return aggregate_rest(slot, s, e, f, ip_in_set);
    }
    void adopt(MappedFile&& map) noexcept;
    void count_unslotted() noexcept;
    // aggregate() past its epoch handshake (e: the epoch it entered), for
    // any request its inline path does not take; leaves the buffer.
    // ip_in_set: the request's address reached the epoch's set.
    bool aggregate_rest(std::uint32_t slot, UsageSlot& s, std::uint64_t e,
                        const UsageFields& f, bool ip_in_set) noexcept;
    // Inline: every aggregated request locates its buffer.
    unsigned char* agg_buffer(std::uint32_t slot,
                              std::uint64_t epoch) const noexcept {
        return agg_areas_ + std::size_t{slot} * agg_.area_size +
               (epoch & 1) * agg_.buffer_size;
    }
    // The closed buffer holding `epoch`, or nullptr.
    unsigned char* agg_closed(std::uint32_t slot,
                              std::uint64_t epoch) const noexcept;

    UsageHeader* header_ = nullptr;
    UsageSlot* slots_ = nullptr;
    std::uint32_t slot_count_ = 0;
    UsageStream stream_;
    std::uint64_t corrupt_ = 0;  // chunks cut short by a corrupt record
    unsigned char* agg_areas_ = nullptr;
    AggLayout agg_;
    AggLabelMemo label_memo_{};  // the worker's, in its own memory
    AggEntryMemo entry_memo_{};  // likewise
    RequestShape shape_{};       // likewise
    MappedFile map_;
};

}  // namespace apikey
