// The raw-record stream of the usage segment: a pool of fixed-size chunks
// that all slots share, and per slot a stream of variable-length records
// (usage_record.h) in the chunks it took. A busy worker takes as many
// chunks as it needs; an idle one holds at most the one it writes in.
//
// Layout (from the stream's offset in the segment, page-aligned):
//     StreamPool                one cache line: the pool's top
//     StreamSlotState[slots]    two cache lines each (producer, consumer)
//     chunk tables [slots]      table_size u32 each: chunk index by the
//                               chunk's sequence in the slot's stream
//     pool links [chunk_count]  u32 each: the next free chunk + 1
//     chunks [chunk_count]      from the next page, kStreamChunkSize each
//
// Positions (UsageSlot head and tail) are byte offsets in the slot's
// stream and never go back: chunk sequence = position / kStreamChunkSize,
// offset in it = position % kStreamChunkSize. A record never straddles two
// chunks: one that does not fit ends the chunk (a 0x00 byte, when there is
// room for one) and goes at the start of the next.
//
// Pool: a lock-free stack (Treiber) of chunk indexes with a 32-bit tag
// against ABA. Workers pop (a CAS per chunk, never a wait: an empty pool
// drops the record and counts it); apikeyd pushes a chunk back once the
// slot's tail has passed its end. A worker killed between popping a chunk
// and entering it in its table leaks that chunk until the file is
// replaced.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "usage_record.h"

namespace apikey {

struct UsageSlot;  // usage_ring.h

inline constexpr std::size_t kStreamChunkSize = 64 * 1024;
inline constexpr unsigned kStreamChunkShift = 16;
static_assert(std::size_t{1} << kStreamChunkShift == kStreamChunkSize);
static_assert(kUsageRecordMaxBytes < kStreamChunkSize);
inline constexpr std::uint32_t kNoChunk = 0xffffffffu;
// Keeps chunk indexes (plus one) and the tag each in 32 bits.
inline constexpr std::uint32_t kMaxStreamChunks = 1u << 24;

struct StreamPool {
    // Low 32 bits: index + 1 of the top free chunk (0: empty); high 32
    // bits: a tag that changes on every push and pop.
    alignas(64) std::atomic<std::uint64_t> top;
};

struct StreamSlotState {
    // Producer line: only the owning worker writes here.
    // Chunks this slot's stream has taken so far (the next chunk sequence).
    alignas(64) std::atomic<std::uint64_t> chunks_taken;
    // Requests with a known key the raw-event policy kept out.
    std::atomic<std::uint64_t> policy_skipped;
    // Consumer line: only apikeyd writes here.
    // Chunks given back to the pool (all sequences below this).
    alignas(64) std::atomic<std::uint64_t> chunks_released;
};
static_assert(sizeof(StreamSlotState) == 128);

struct StreamLayout {
    std::uint32_t slot_count = 0;
    std::uint32_t chunk_count = 0;
    std::uint32_t table_size = 0;  // per slot, a power of two >= chunks
    std::size_t chunks_offset = 0;  // from the stream's start
    std::size_t size = 0;           // the whole stream, chunks included
};

// The exact layout of `chunk_count` chunks for `slot_count` slots; size 0
// when either is 0 or too large.
StreamLayout stream_layout(std::uint32_t slot_count,
                           std::uint32_t chunk_count) noexcept;
// The most chunks whose layout fits in `bytes`.
std::uint32_t stream_chunks_fitting(std::size_t bytes,
                                    std::uint32_t slot_count) noexcept;

// The worker's own state for writing its slot's stream: process memory,
// not the segment. Reset on every claim.
struct StreamWriter {
    std::uint64_t chunk_seq = ~std::uint64_t{0};  // the chunk `chunk` is
    unsigned char* chunk = nullptr;
    std::uint64_t head = 0;  // where its last record ended
    RecordEncodeContext context;
};

// A view of one stream area in a mapped segment.
class UsageStream {
public:
    // `base`: the stream's start in the mapping, laid out as `layout`.
    void map(unsigned char* base, const StreamLayout& layout) noexcept;
    // A new file: every chunk into the pool.
    void format() noexcept;
    const StreamLayout& layout() const noexcept { return layout_; }
    StreamSlotState& state(std::uint32_t slot) const noexcept {
        return slots_[slot];
    }

    // --- producer (nginx worker) ---
    // Appends one record to the slot's stream and publishes it (head).
    // Never blocks: false when the pool has no chunk (counted in `dropped`).
    // `shape`: the worker's RequestShape::address() for `f`
    // (encode_usage_record).
    bool append(std::uint32_t slot, UsageSlot& s, StreamWriter* w,
                const UsageFields& f, std::uint64_t shape) noexcept;

    // --- consumer (apikeyd) ---
    // Decodes up to `max` records from position `from` (raised to the tail)
    // up to the head into `out`, each with slot and sequence set; *end is
    // the position after the last byte read (records, chunk ends, and a
    // corrupt chunk's rest, which is skipped and counted in *corrupt).
    std::size_t read(std::uint32_t slot, const UsageSlot& s,
                     std::uint64_t from, UsageRecord* out, std::size_t max,
                     std::uint64_t* end, std::uint64_t* corrupt) const noexcept;
    // Gives the chunks wholly below the slot's tail back to the pool.
    void release(std::uint32_t slot, const UsageSlot& s) noexcept;
    // A retired, drained slot: every chunk it took back to the pool, and
    // head and tail to the next chunk boundary, so the next owner starts
    // on a fresh chunk.
    void release_all(std::uint32_t slot, UsageSlot& s) noexcept;
    // Chunks in the pool now (a walk: metrics and tests only).
    std::uint32_t free_chunks() const noexcept;

private:
    std::uint32_t pop() noexcept;
    void push(std::uint32_t chunk) noexcept;
    std::atomic<std::uint32_t>* table(std::uint32_t slot) const noexcept;
    unsigned char* chunk(std::uint32_t index) const noexcept;
    // The chunk of sequence `seq` of the slot, kNoChunk if it has none.
    std::uint32_t chunk_at(std::uint32_t slot, std::uint64_t seq,
                           std::uint64_t taken) const noexcept;

    StreamLayout layout_;
    StreamPool* pool_ = nullptr;
    StreamSlotState* slots_ = nullptr;
    std::atomic<std::uint32_t>* tables_ = nullptr;
    std::atomic<std::uint32_t>* links_ = nullptr;
    unsigned char* chunks_ = nullptr;
};

}  // namespace apikey
