#include "usage_stream.h"

#include "usage_ring.h"

namespace apikey {

namespace {

constexpr std::size_t kPage = 4096;
constexpr std::uint64_t kChunkMask = kStreamChunkSize - 1;
constexpr std::uint64_t kLowMask = 0xffffffffu;

static_assert(std::atomic<std::uint32_t>::is_always_lock_free);
static_assert(sizeof(StreamPool) == 64);

std::size_t page_up(std::size_t n) noexcept {
    return (n + kPage - 1) & ~(kPage - 1);
}

std::uint32_t ceil_power_of_two(std::uint32_t v) noexcept {
    std::uint32_t p = 1;
    while (p < v) p <<= 1;
    return p;
}

inline std::uint64_t min_u64(std::uint64_t a, std::uint64_t b) noexcept {
    return a < b ? a : b;
}

}  // namespace

StreamLayout stream_layout(std::uint32_t slot_count,
                           std::uint32_t chunk_count) noexcept {
    StreamLayout l;
    if (slot_count == 0 || slot_count > kMaxUsageSlots || chunk_count == 0 ||
        chunk_count > kMaxStreamChunks) {
        return l;
    }
    l.slot_count = slot_count;
    l.chunk_count = chunk_count;
    l.table_size = ceil_power_of_two(chunk_count);
    // No overflow: at most 2^16 slots x 2^24 entries x 4 bytes.
    const std::size_t meta =
        sizeof(StreamPool) + std::size_t{slot_count} * sizeof(StreamSlotState) +
        std::size_t{slot_count} * l.table_size * sizeof(std::uint32_t) +
        std::size_t{chunk_count} * sizeof(std::uint32_t);
    l.chunks_offset = page_up(meta);
    l.size = l.chunks_offset + std::size_t{chunk_count} * kStreamChunkSize;
    return l;
}

std::uint32_t stream_chunks_fitting(std::size_t bytes,
                                    std::uint32_t slot_count) noexcept {
    std::uint64_t lo = 0;
    std::uint64_t hi = min_u64(bytes / kStreamChunkSize, kMaxStreamChunks);
    while (lo < hi) {  // the largest n whose layout fits
        const std::uint64_t mid = (lo + hi + 1) / 2;
        const StreamLayout l =
            stream_layout(slot_count, static_cast<std::uint32_t>(mid));
        if (l.size != 0 && l.size <= bytes) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    return static_cast<std::uint32_t>(lo);
}

void UsageStream::map(unsigned char* base, const StreamLayout& layout) noexcept {
    layout_ = layout;
    pool_ = reinterpret_cast<StreamPool*>(base);
    slots_ = reinterpret_cast<StreamSlotState*>(base + sizeof(StreamPool));
    tables_ = reinterpret_cast<std::atomic<std::uint32_t>*>(
        base + sizeof(StreamPool) +
        std::size_t{layout.slot_count} * sizeof(StreamSlotState));
    links_ = tables_ + std::size_t{layout.slot_count} * layout.table_size;
    chunks_ = base + layout.chunks_offset;
}

void UsageStream::format() noexcept {
    // Chunk 0 on top: a fresh segment's first writes touch its first pages.
    for (std::uint32_t i = 0; i < layout_.chunk_count; ++i) {
        links_[i].store(i + 1 < layout_.chunk_count ? i + 2 : 0,
                        std::memory_order_relaxed);
    }
    pool_->top.store(1, std::memory_order_release);
}

std::atomic<std::uint32_t>* UsageStream::table(
    std::uint32_t slot) const noexcept {
    return tables_ + std::size_t{slot} * layout_.table_size;
}

unsigned char* UsageStream::chunk(std::uint32_t index) const noexcept {
    return chunks_ + std::size_t{index} * kStreamChunkSize;
}

// --- pool ---------------------------------------------------------------------

std::uint32_t UsageStream::pop() noexcept {
    // Acquire: the chunk's link as its pusher left it.
    std::uint64_t top = pool_->top.load(std::memory_order_acquire);
    while (true) {
        const std::uint64_t low = top & kLowMask;
        if (low == 0 || low > layout_.chunk_count) {
            return kNoChunk;  // empty (or a corrupt top: nothing to take)
        }
        const std::uint32_t index = static_cast<std::uint32_t>(low - 1);
        // A stale link (another process popped this chunk meanwhile) fails
        // the CAS: the tag moved.
        const std::uint64_t next =
            links_[index].load(std::memory_order_relaxed);
        const std::uint64_t tagged = ((top >> 32) + 1) << 32 | next;
        if (pool_->top.compare_exchange_weak(top, tagged,
                                             std::memory_order_acq_rel,
                                             std::memory_order_acquire)) {
            return index;
        }
    }
}

void UsageStream::push(std::uint32_t index) noexcept {
    std::uint64_t top = pool_->top.load(std::memory_order_relaxed);
    while (true) {
        links_[index].store(static_cast<std::uint32_t>(top & kLowMask),
                            std::memory_order_relaxed);
        const std::uint64_t tagged = ((top >> 32) + 1) << 32 | (index + 1u);
        // Release: a popper sees the link, and the consumer's reads of the
        // chunk are done before a producer can write it again.
        if (pool_->top.compare_exchange_weak(top, tagged,
                                             std::memory_order_release,
                                             std::memory_order_relaxed)) {
            return;
        }
    }
}

std::uint32_t UsageStream::free_chunks() const noexcept {
    std::uint32_t n = 0;
    std::uint64_t low = pool_->top.load(std::memory_order_acquire) & kLowMask;
    while (low != 0 && low <= layout_.chunk_count && n < layout_.chunk_count) {
        ++n;
        low = links_[low - 1].load(std::memory_order_relaxed);
    }
    return n;
}

// --- producer -----------------------------------------------------------------

bool UsageStream::append(std::uint32_t slot, UsageSlot& s, StreamWriter* w,
                         const UsageFields& f, std::uint64_t shape) noexcept {
    const std::uint64_t head = s.head.load(std::memory_order_relaxed);
    const std::uint64_t seq = head >> kStreamChunkShift;
    const std::size_t off = static_cast<std::size_t>(head & kChunkMask);
    if (w->chunk != nullptr && w->chunk_seq == seq) {
        if (head != w->head) {
            // Someone else wrote since (a forger): refer to nothing.
            w->context = RecordEncodeContext{};
        }
        std::size_t n = encode_repeat_record(w->chunk, off, f, &w->context,
                                             shape);
        if (n == 0) {
            n = encode_usage_record(w->chunk, off, kStreamChunkSize, f,
                                    &w->context, shape);
        }
        if (n != 0) {
            w->head = head + n;
            // Release: the consumer that sees the head sees the record.
            s.head.store(w->head, std::memory_order_release);
            return true;
        }
        w->chunk[off] = 0;  // the chunk ends here
    }
    StreamSlotState& st = slots_[slot];
    // The next chunk: after the one the head is in, and after any the
    // slot took (a previous owner killed mid-take).
    std::uint64_t next = seq + (off != 0 ? 1 : 0);
    const std::uint64_t taken = st.chunks_taken.load(std::memory_order_relaxed);
    if (taken > next) next = taken;
    // The table holds table_size chunks of the slot at once; a pool larger
    // than that (a corrupt count) is not trusted.
    if (next - st.chunks_released.load(std::memory_order_acquire) >=
        layout_.table_size) {
        s.dropped.fetch_add(1, std::memory_order_relaxed);
        return false;
    }
    const std::uint32_t index = pop();
    if (index == kNoChunk) {
        s.dropped.fetch_add(1, std::memory_order_relaxed);
        return false;
    }
    table(slot)[next & (layout_.table_size - 1)].store(
        index, std::memory_order_relaxed);
    st.chunks_taken.store(next + 1, std::memory_order_release);
    w->chunk = chunk(index);
    w->chunk_seq = next;
    w->context = RecordEncodeContext{};
    const std::size_t n = encode_usage_record(w->chunk, 0, kStreamChunkSize,
                                              f, &w->context, shape);
    w->head = (next << kStreamChunkShift) + n;
    s.head.store(w->head, std::memory_order_release);
    return true;
}

// --- consumer -----------------------------------------------------------------

std::uint32_t UsageStream::chunk_at(std::uint32_t slot, std::uint64_t seq,
                                    std::uint64_t taken) const noexcept {
    const std::uint64_t released =
        slots_[slot].chunks_released.load(std::memory_order_relaxed);
    if (seq >= taken || seq < released ||
        seq - released >= layout_.table_size) {
        return kNoChunk;
    }
    const std::uint32_t index =
        table(slot)[seq & (layout_.table_size - 1)].load(
            std::memory_order_relaxed);
    return index < layout_.chunk_count ? index : kNoChunk;
}

std::size_t UsageStream::read(std::uint32_t slot, const UsageSlot& s,
                              std::uint64_t from, UsageRecord* out,
                              std::size_t max, std::uint64_t* end,
                              std::uint64_t* corrupt) const noexcept {
    const std::uint64_t tail = s.tail.load(std::memory_order_relaxed);
    // Acquire: the records, table entries and chunks_taken before it.
    std::uint64_t head = s.head.load(std::memory_order_acquire);
    const std::uint64_t taken =
        slots_[slot].chunks_taken.load(std::memory_order_acquire);
    // A sane producer never holds more than the pool; a corrupt head must
    // not make us walk further.
    const std::uint64_t most =
        std::uint64_t{layout_.chunk_count} << kStreamChunkShift;
    if (head < tail) head = tail;  // behind the tail: nothing is readable
    if (head - tail > most) head = tail + most;
    std::uint64_t pos = from < tail ? tail : from;
    std::size_t n = 0;
    RecordDecodeContext ctx;
    std::uint64_t ctx_seq = ~std::uint64_t{0};
    UsageRecord scratch;
    while (n < max && pos < head) {
        const std::uint64_t seq = pos >> kStreamChunkShift;
        const std::uint64_t chunk_start = seq << kStreamChunkShift;
        const std::uint64_t chunk_end = chunk_start + kStreamChunkSize;
        const std::uint32_t index = chunk_at(slot, seq, taken);
        if (index == kNoChunk) {
            ++*corrupt;
            pos = min_u64(chunk_end, head);
            continue;
        }
        const unsigned char* data = chunk(index);
        const std::size_t limit =
            static_cast<std::size_t>(min_u64(kStreamChunkSize, head - chunk_start));
        std::size_t off = static_cast<std::size_t>(pos - chunk_start);
        std::size_t used = 0;
        DecodeResult r = DecodeResult::kRecord;
        if (ctx_seq != seq) {
            // The records before `off` in this chunk are the context.
            ctx = RecordDecodeContext{};
            ctx_seq = seq;
            std::size_t at = 0;
            while (at < off && r == DecodeResult::kRecord) {
                r = decode_usage_record(data, at, limit, &ctx, &scratch, &used);
                if (r == DecodeResult::kRecord) at += used;
            }
            off = at;  // past `from` if it was not a record's start
        }
        if (r == DecodeResult::kRecord && off < limit) {
            r = decode_usage_record(data, off, limit, &ctx, out + n, &used);
        } else if (r == DecodeResult::kRecord) {
            pos = chunk_start + off;
            continue;
        }
        switch (r) {
        case DecodeResult::kRecord:
            out[n].slot = slot;
            out[n].sequence = chunk_start + off + used - 1;
            pos = chunk_start + off + used;
            ++n;
            break;
        case DecodeResult::kEnd:
            pos = min_u64(chunk_end, head);
            break;
        case DecodeResult::kCorrupt:
            ++*corrupt;
            pos = min_u64(chunk_end, head);
            break;
        }
    }
    *end = pos < head ? pos : head;
    return n;
}

void UsageStream::release(std::uint32_t slot, const UsageSlot& s) noexcept {
    StreamSlotState& st = slots_[slot];
    const std::uint64_t tail = s.tail.load(std::memory_order_relaxed);
    const std::uint64_t released =
        st.chunks_released.load(std::memory_order_relaxed);
    std::uint64_t upto = min_u64(tail >> kStreamChunkShift,
                                 st.chunks_taken.load(std::memory_order_acquire));
    if (upto <= released) return;
    upto = min_u64(upto, released + layout_.table_size);
    for (std::uint64_t k = released; k < upto; ++k) {
        const std::uint32_t index =
            table(slot)[k & (layout_.table_size - 1)].load(
                std::memory_order_relaxed);
        if (index < layout_.chunk_count) push(index);
    }
    // Release: the producer that sees this may reuse those table entries.
    st.chunks_released.store(upto, std::memory_order_release);
}

void UsageStream::release_all(std::uint32_t slot, UsageSlot& s) noexcept {
    StreamSlotState& st = slots_[slot];
    const std::uint64_t released =
        st.chunks_released.load(std::memory_order_relaxed);
    std::uint64_t taken = st.chunks_taken.load(std::memory_order_acquire);
    if (taken < released) taken = released;
    taken = min_u64(taken, released + layout_.table_size);
    for (std::uint64_t k = released; k < taken; ++k) {
        const std::uint32_t index =
            table(slot)[k & (layout_.table_size - 1)].load(
                std::memory_order_relaxed);
        if (index < layout_.chunk_count) push(index);
    }
    const std::uint64_t head = s.head.load(std::memory_order_acquire);
    std::uint64_t pos = (head + kChunkMask) & ~kChunkMask;
    if ((taken << kStreamChunkShift) > pos) pos = taken << kStreamChunkShift;
    st.chunks_taken.store(pos >> kStreamChunkShift, std::memory_order_relaxed);
    st.chunks_released.store(pos >> kStreamChunkShift,
                             std::memory_order_relaxed);
    s.head.store(pos, std::memory_order_relaxed);
    s.tail.store(pos, std::memory_order_release);
}

}  // namespace apikey
