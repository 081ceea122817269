// The usage-ring segment: a file (under /dev/shm) created by nginx and
// drained by apikeyd. It holds `slot_count` single-producer/single-consumer
// rings of UsageRecord. Each nginx worker claims one slot at start (the
// producer); apikeyd is the only consumer of every slot.
//
// Layout: a 4 KiB header, `slot_count` slot descriptors (three cache lines
// each: control, producer, consumer), then the rings themselves, each
// `ring_capacity` records (a power of two). Positions (head, tail) count
// records since the slot was first used and never wrap; the index in the
// ring is position & (capacity - 1). No pointers live in the segment.
//
// Slot life: kFree -> (worker start, CAS) kOwned -> (worker exit, or apikeyd
// finding the owner dead) kRetired -> (apikeyd drained it) kFree. A slot is
// handed to a new worker only after the old worker's records are drained, so
// (slot, generation, position) identifies a record exactly once. Positions
// are never reset (a free slot has head == tail); a claim sets the
// generation to max(previous + 1, claim time in µs), so it also grows across
// re-created files.
//
// A segment is replaced, never resized: open_or_create builds a new file
// beside the old one, renames it into place and sets the old header's
// `superseded`, so apikeyd drains the old mapping until its slots are empty
// and then attaches the new file.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

#include "segment_file.h"
#include "usage_record.h"

namespace apikey {

inline constexpr std::uint64_t kUsageMagic =
    0x31474e5259454b41ULL;  // "AKEYRNG1"
inline constexpr std::uint32_t kUsageLayoutVersion = 1;
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
    // Producer line: only the owning worker writes here.
    alignas(kCacheLine) std::atomic<std::uint64_t> head;
    std::atomic<std::uint64_t> dropped;  // ring full: record not written
    std::atomic<std::uint64_t>
        unrecorded[static_cast<int>(UnrecordedCounter::kCount)];
    std::uint64_t cached_tail;  // producer-private copy of tail
    // Consumer line: only apikeyd writes here.
    alignas(kCacheLine) std::atomic<std::uint64_t> tail;
};
static_assert(sizeof(UsageSlot) == 3 * kCacheLine);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

struct UsageHeader {
    std::uint64_t magic;  // written last (release) when a file is created
    std::uint32_t layout_version;
    std::uint32_t record_size;
    std::uint32_t slot_count;
    std::uint32_t reserved;
    std::uint64_t ring_capacity;  // records per slot, a power of two
    std::uint64_t file_size;
    std::int64_t created_at_us;
    alignas(kCacheLine) std::atomic<std::uint32_t> superseded;
    std::atomic<std::uint64_t> unslotted_drops;  // workers without a slot
};
static_assert(sizeof(UsageHeader) <= kUsageHeaderSize);

struct UsageLayout {
    std::uint32_t slot_count;
    std::uint64_t ring_capacity;
    std::size_t file_size;
};

// The largest layout that fits `total_size` bytes with `slot_count` slots:
// ring_capacity is the largest power of two that fits and file_size the
// exact size it needs. ring_capacity == 0 (and file_size == 0) if not even
// one record per ring fits, or slot_count is 0 or above kMaxUsageSlots.
UsageLayout usage_layout_for(std::size_t total_size,
                             std::uint32_t slot_count) noexcept;

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
    std::uint64_t ring_capacity() const noexcept { return capacity_; }
    UsageSlot& slot(std::uint32_t i) noexcept;
    const UsageSlot& slot(std::uint32_t i) const noexcept;

    // --- producer (nginx worker) ---
    // Claims a free slot for `pid`; returns its index or -1 if none is free.
    int claim_slot(std::int32_t pid, std::int64_t now_us) noexcept;
    // Marks the slot retired (worker exit). Its records stay for apikeyd.
    void retire_slot(std::uint32_t slot) noexcept;
    // Copies `record` into the slot's ring, stamping slot, generation and
    // sequence. Never blocks: a full ring counts a drop and returns false
    // (an out-of-range slot counts in the header's unslotted_drops).
    [[nodiscard]] bool push(std::uint32_t slot,
                            const UsageRecord& record) noexcept;
    // push() in two steps, for a producer that fills the record in place
    // (no copy): reserve() returns the next record of the slot's ring, or
    // nullptr when the ring is full (the drop is counted, as by push()) or
    // the slot is out of range; the caller writes every field of it, then
    // publish() stamps slot, generation and sequence and makes it visible.
    // Nothing is visible to the consumer between the two.
    [[nodiscard]] UsageRecord* reserve(std::uint32_t slot) noexcept;
    void publish(std::uint32_t slot, UsageRecord* record) noexcept;
    void count_unrecorded(std::uint32_t slot, UnrecordedCounter c) noexcept;

    // --- consumer (apikeyd) ---
    // Copies up to `max` records from position `from` (raised to the tail
    // if below it) up to the head into `out`; returns how many. Does not
    // advance the tail.
    std::size_t peek(std::uint32_t slot, std::uint64_t from, UsageRecord* out,
                     std::size_t max) const noexcept;
    // Advances the tail to `position` (after the records are committed).
    // Clamped to [tail, head]: the tail never moves back or past the head.
    void commit(std::uint32_t slot, std::uint64_t position) noexcept;
    // Frees a retired slot whose ring is empty; returns true if freed.
    bool free_if_drained(std::uint32_t slot) noexcept;

private:
    void adopt(MappedFile&& map) noexcept;
    UsageRecord* ring(std::uint32_t slot) const noexcept;

    UsageHeader* header_ = nullptr;
    UsageSlot* slots_ = nullptr;
    unsigned char* rings_ = nullptr;
    std::uint32_t slot_count_ = 0;
    std::uint64_t capacity_ = 0;  // records per ring, a power of two
    MappedFile map_;
};

}  // namespace apikey
