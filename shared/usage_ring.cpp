#include "usage_ring.h"

#include <cerrno>
#include <climits>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <new>
#include <type_traits>
#include <utility>

#include <time.h>
#include <unistd.h>

namespace apikey {

namespace {

constexpr std::uint32_t kFree =
    static_cast<std::uint32_t>(SlotOwnership::kFree);
constexpr std::uint32_t kOwned =
    static_cast<std::uint32_t>(SlotOwnership::kOwned);
constexpr std::uint32_t kRetired =
    static_cast<std::uint32_t>(SlotOwnership::kRetired);

constexpr std::size_t kSlotsOffset = kUsageHeaderSize;

static_assert(kUsageHeaderSize % kCacheLine == 0);
static_assert(offsetof(UsageSlot, head) == kCacheLine);
static_assert(offsetof(UsageSlot, tail) == 2 * kCacheLine);
static_assert(offsetof(UsageSlot, agg_overflow) == 3 * kCacheLine);
static_assert(offsetof(UsageHeader, superseded) % kCacheLine == 0);
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);
static_assert(std::atomic<std::int64_t>::is_always_lock_free);

constexpr std::size_t kPage = 4096;
constexpr std::uint32_t kFirstEpoch = 1;

std::size_t page_up(std::size_t n) noexcept {
    return (n + kPage - 1) & ~(kPage - 1);
}

// Header and slot descriptors, up to the page the stream area starts on.
std::size_t fixed_size(std::uint32_t slot_count) noexcept {
    return page_up(kUsageHeaderSize +
                   std::size_t{slot_count} * sizeof(UsageSlot));
}

// Where the stream area of `chunk_count` chunks ends (header and slot
// descriptors before it); 0 if no layout is valid.
std::size_t stream_end_for(std::uint32_t slot_count,
                           std::uint64_t chunk_count) noexcept {
    if (chunk_count == 0 || chunk_count > kMaxStreamChunks) {
        return 0;
    }
    const StreamLayout l =
        stream_layout(slot_count, static_cast<std::uint32_t>(chunk_count));
    return l.size == 0 ? 0 : fixed_size(slot_count) + l.size;
}

std::int64_t realtime_us() noexcept {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return static_cast<std::int64_t>(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000;
}



std::uint64_t load_magic(const UsageHeader* h) noexcept {
    // Pairs with the release store that publishes a new header.
    return __atomic_load_n(&h->magic, __ATOMIC_ACQUIRE);
}

// Checks everything the segment relies on before trusting the header.
SegmentStatus validate(const MappedFile& map, const char* path,
                       std::string* error) noexcept {
    if (map.size() < sizeof(std::uint64_t)) {
        describe_error(error, "usage segment", path, "file too small for a header");
        return SegmentStatus::kBadSize;
    }
    const auto* h = static_cast<const UsageHeader*>(map.data());
    if (load_magic(h) != kUsageMagic) {
        describe_error(error, "usage segment", path, "not a usage segment (bad magic)");
        return SegmentStatus::kBadMagic;
    }
    if (map.size() < kUsageHeaderSize) {
        describe_error(error, "usage segment", path, "file too small for a header");
        return SegmentStatus::kBadSize;
    }
    if (h->layout_version != kUsageLayoutVersion ||
        h->chunk_size != kStreamChunkSize) {
        // Never read as ours: another layout's bytes mean other things.
        char why[160];
        std::snprintf(why, sizeof why,
                      "layout version %u (chunk size %u), this build reads "
                      "version %u (chunk size %zu); left to its writer",
                      static_cast<unsigned>(h->layout_version),
                      static_cast<unsigned>(h->chunk_size),
                      static_cast<unsigned>(kUsageLayoutVersion),
                      kStreamChunkSize);
        describe_error(error, "usage segment", path, why);
        return SegmentStatus::kBadVersion;
    }
    if (h->file_size != map.size()) {
        describe_error(error, "usage segment", path, "header and file size disagree");
        return SegmentStatus::kBadSize;
    }
    // The stream area's exact end, then the layout it makes: a header whose
    // numbers disagree with one another or with the file is refused.
    const std::size_t stream_end =
        h->slot_count == 0 || h->slot_count > kMaxUsageSlots
            ? 0
            : stream_end_for(h->slot_count, h->chunk_count);
    const UsageLayout layout =
        usage_layout_for(stream_end, h->slot_count, h->agg_entries);
    if (stream_end == 0 || layout.chunk_count != h->chunk_count ||
        layout.file_size != map.size()) {
        describe_error(error, "usage segment", path,
                       "slot count, chunk count and size disagree");
        return SegmentStatus::kBadSize;
    }
    const AggLayout agg = agg_layout_for(h->agg_entries);
    if (h->agg_labels != agg.labels || h->agg_cells != agg.cells ||
        h->agg_area_size != agg.area_size ||
        h->agg_area_offset != page_up(stream_end)) {
        describe_error(error, "usage segment", path,
                       "aggregation area sizes disagree");
        return SegmentStatus::kBadSize;
    }
    return SegmentStatus::kOk;
}

bool same_layout(const MappedFile& map, const UsageLayout& layout) noexcept {
    const auto* h = static_cast<const UsageHeader*>(map.data());
    return h->slot_count == layout.slot_count &&
           h->chunk_count == layout.chunk_count &&
           h->file_size == layout.file_size &&
           h->agg_entries == layout.agg_entries &&
           h->superseded.load(std::memory_order_acquire) == 0;
}

}  // namespace

UsageLayout usage_layout_for(std::size_t stream_size, std::uint32_t slot_count,
                             std::uint32_t agg_entries) noexcept {
    const UsageLayout none{slot_count, 0, 0, agg_entries};
    const AggLayout agg = agg_layout_for(agg_entries);
    if (slot_count == 0 || slot_count > kMaxUsageSlots || agg.entries == 0) {
        return none;
    }
    const std::size_t fixed = fixed_size(slot_count);
    if (stream_size <= fixed) {
        return none;
    }
    const std::uint32_t chunks =
        stream_chunks_fitting(stream_size - fixed, slot_count);
    if (chunks == 0) {
        return none;
    }
    // No overflow: the stream fits stream_size, and slot_count areas of at
    // most a few GiB each fit a 64-bit size.
    return {slot_count, chunks,
            page_up(stream_end_for(slot_count, chunks)) +
                std::size_t{slot_count} * agg.area_size,
            agg_entries};
}

// --- mapping ----------------------------------------------------------------

UsageSegment::UsageSegment(UsageSegment&& other) noexcept
    : header_(std::exchange(other.header_, nullptr)),
      slots_(std::exchange(other.slots_, nullptr)),
      slot_count_(std::exchange(other.slot_count_, 0)),
      stream_(std::exchange(other.stream_, UsageStream{})),
      corrupt_(std::exchange(other.corrupt_, 0)),
      agg_areas_(std::exchange(other.agg_areas_, nullptr)),
      agg_(std::exchange(other.agg_, AggLayout{})),
      label_memo_(std::exchange(other.label_memo_, AggLabelMemo{})),
      entry_memo_(std::exchange(other.entry_memo_, AggEntryMemo{})),
      map_(std::move(other.map_)) {}

UsageSegment& UsageSegment::operator=(UsageSegment&& other) noexcept {
    if (this != &other) {
        reset();
        header_ = std::exchange(other.header_, nullptr);
        slots_ = std::exchange(other.slots_, nullptr);
        slot_count_ = std::exchange(other.slot_count_, 0);
        stream_ = std::exchange(other.stream_, UsageStream{});
        corrupt_ = std::exchange(other.corrupt_, 0);
        agg_areas_ = std::exchange(other.agg_areas_, nullptr);
        agg_ = std::exchange(other.agg_, AggLayout{});
        label_memo_ = std::exchange(other.label_memo_, AggLabelMemo{});
        entry_memo_ = std::exchange(other.entry_memo_, AggEntryMemo{});
        map_ = std::move(other.map_);
    }
    return *this;
}

void UsageSegment::reset() noexcept {
    header_ = nullptr;
    slots_ = nullptr;
    slot_count_ = 0;
    stream_ = UsageStream{};
    corrupt_ = 0;
    agg_areas_ = nullptr;
    agg_ = AggLayout{};
    label_memo_ = AggLabelMemo{};  // ids of another mapping's buffers
    entry_memo_ = AggEntryMemo{};
    map_.reset();
}

// `map` holds a validated segment.
void UsageSegment::adopt(MappedFile&& map) noexcept {
    map_ = std::move(map);
    auto* base = static_cast<unsigned char*>(map_.data());
    header_ = reinterpret_cast<UsageHeader*>(base);
    slot_count_ = header_->slot_count;
    slots_ = reinterpret_cast<UsageSlot*>(base + kSlotsOffset);
    stream_.map(base + fixed_size(slot_count_),
                stream_layout(slot_count_, static_cast<std::uint32_t>(
                                               header_->chunk_count)));
    agg_ = agg_layout_for(header_->agg_entries);
    agg_areas_ = base + header_->agg_area_offset;
}

SegmentStatus UsageSegment::attach(const char* path,
                                   std::string* error) noexcept {
    reset();
    MappedFile map;
    SegmentStatus status = map.open(path, true, error);
    if (status != SegmentStatus::kOk) {
        return status;
    }
    status = validate(map, path, error);
    if (status != SegmentStatus::kOk) {
        return status;
    }
    adopt(std::move(map));
    return SegmentStatus::kOk;
}

SegmentStatus UsageSegment::open_or_create(const char* path,
                                           const UsageLayout& layout,
                                           unsigned mode, bool* created,
                                           std::string* error) noexcept {
    reset();
    if (created != nullptr) {
        *created = false;
    }
    const std::size_t stream_end =
        stream_end_for(layout.slot_count, layout.chunk_count);
    const UsageLayout want =
        usage_layout_for(stream_end, layout.slot_count, layout.agg_entries);
    if (want.chunk_count == 0 || want.chunk_count != layout.chunk_count ||
        want.file_size != layout.file_size) {
        describe_error(error, "usage segment", path, "invalid layout (use usage_layout_for)");
        return SegmentStatus::kBadSize;
    }

    // Reuse across reloads: old workers keep writing into the same file.
    MappedFile old;
    const SegmentStatus old_status = old.open(path, true, error);
    bool old_valid = false;
    if (old_status == SegmentStatus::kOk) {
        old_valid = validate(old, path, nullptr) == SegmentStatus::kOk;
        if (old_valid && same_layout(old, layout)) {
            adopt(std::move(old));
            return SegmentStatus::kOk;
        }
    } else if (old_status == SegmentStatus::kIoError ||
               old_status == SegmentStatus::kUntrusted) {
        return old_status;  // exists but unusable: not ours to clobber
    }
    if (error != nullptr) {
        error->clear();  // open's complaint about the old file is moot
    }
    // kMissing, an empty file, garbage or another layout: a fresh file.

    char tmp[PATH_MAX];
    const int len = std::snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (len < 0 || static_cast<std::size_t>(len) >= sizeof tmp) {
        describe_error(error, "usage segment", path, "path too long");
        return SegmentStatus::kIoError;
    }
    // create() makes a fresh inode: truncating a file someone still maps
    // would fault them.
    MappedFile fresh;
    SegmentStatus status = fresh.create(tmp, layout.file_size, mode, error);
    if (status != SegmentStatus::kOk) {
        return status;
    }
    // The file is zero-filled: every slot is kFree with head == tail == 0
    // and generation 0, every aggregation buffer kClean and empty. Chunks
    // and tables are not touched so the file stays sparse.
    auto* h = new (fresh.data()) UsageHeader();
    const AggLayout agg = agg_layout_for(layout.agg_entries);
    h->layout_version = kUsageLayoutVersion;
    h->chunk_size = kStreamChunkSize;
    h->slot_count = layout.slot_count;
    h->chunk_count = layout.chunk_count;
    h->file_size = layout.file_size;
    h->created_at_us = realtime_us();
    h->agg_entries = agg.entries;
    h->agg_labels = agg.labels;
    h->agg_cells = agg.cells;
    h->agg_area_offset = page_up(stream_end);
    h->agg_area_size = agg.area_size;
    auto* base = static_cast<unsigned char*>(fresh.data());
    UsageStream stream;
    stream.map(base + fixed_size(layout.slot_count),
               stream_layout(layout.slot_count,
                             static_cast<std::uint32_t>(layout.chunk_count)));
    stream.format();
    // Epochs start at 1 (agg_active == 0 means "in no buffer"): buffer 1
    // is every slot's first active buffer.
    for (std::uint32_t i = 0; i < layout.slot_count; ++i) {
        reinterpret_cast<UsageSlot*>(base + kSlotsOffset)[i].agg_epoch.store(
            kFirstEpoch, std::memory_order_relaxed);
        auto* first = reinterpret_cast<AggBufferHeader*>(
            base + h->agg_area_offset + i * agg.area_size +
            (kFirstEpoch & 1) * agg.buffer_size);
        first->epoch.store(kFirstEpoch, std::memory_order_relaxed);
        first->state.store(static_cast<std::uint32_t>(AggBufferState::kActive),
                           std::memory_order_relaxed);
    }
    // Magic last, with release: whoever reads it (acquire) sees the rest.
    __atomic_store_n(&h->magic, kUsageMagic, __ATOMIC_RELEASE);

    if (old_valid) {
        // Keep the old file reachable for apikeyd: its streams may still hold
        // records (apikeyd down during a layout change). apikeyd drains and
        // deletes PATH.old.* files.
        char kept[PATH_MAX];
        const int n = std::snprintf(
            kept, sizeof kept, "%s%s%lld", path, kUsageOldSuffix,
            static_cast<long long>(
                static_cast<UsageHeader*>(old.data())->created_at_us));
        if (n > 0 && static_cast<std::size_t>(n) < sizeof kept) {
            // Best effort: EEXIST means already kept. The result is
            // named, not dropped: glibc's _FORTIFY_SOURCE marks link()
            // warn_unused_result, and package builds use -Werror.
            [[maybe_unused]] const int linked = link(path, kept);
        }
    }
    if (std::rename(tmp, path) != 0) {
        const int err = errno;
        unlink(tmp);
        describe_errno(error, "rename", tmp, err);
        return SegmentStatus::kIoError;
    }
    if (old_valid) {
        // Only after the rename: whoever sees the flag finds the new file.
        static_cast<UsageHeader*>(old.data())
            ->superseded.store(1, std::memory_order_release);
    }
    adopt(std::move(fresh));
    if (created != nullptr) {
        *created = true;
    }
    return SegmentStatus::kOk;
}

bool UsageSegment::superseded() const noexcept {
    return header_ != nullptr &&
           header_->superseded.load(std::memory_order_acquire) != 0;
}

UsageSlot& UsageSegment::slot(std::uint32_t i) noexcept { return slots_[i]; }

const UsageSlot& UsageSegment::slot(std::uint32_t i) const noexcept {
    return slots_[i];
}

// --- producer (nginx worker) ---------------------------------------------

int UsageSegment::claim_slot(std::int32_t pid, std::int64_t now_us) noexcept {
    for (std::uint32_t i = 0; i < slot_count_; ++i) {
        UsageSlot& s = slots_[i];
        std::uint32_t expected = kFree;
        // Acquire: see the final head and tail of the slot's last owner.
        if (!s.state.compare_exchange_strong(expected, kOwned,
                                             std::memory_order_acq_rel,
                                             std::memory_order_relaxed)) {
            continue;
        }
        // Unique per claim, and above anything an earlier file handed out.
        const std::uint64_t next =
            s.generation.load(std::memory_order_relaxed) + 1;
        const std::uint64_t now =
            now_us > 0 ? static_cast<std::uint64_t>(now_us) : 0;
        s.generation.store(next > now ? next : now, std::memory_order_relaxed);
        s.claimed_at_us.store(now_us, std::memory_order_relaxed);
        // A dead predecessor may have left its epoch here.
        s.agg_active.store(0, std::memory_order_relaxed);
        entry_memo_ = AggEntryMemo{};  // the worker's memory of its last slot
        // Last, release: a non-zero pid means the claim is complete.
        s.owner_pid.store(pid, std::memory_order_release);
        return static_cast<int>(i);
    }
    return -1;
}

void UsageSegment::retire_slot(std::uint32_t slot) noexcept {
    if (slot >= slot_count_) {
        return;
    }
    // Release: the consumer that sees kRetired sees the final head.
    slots_[slot].state.store(kRetired, std::memory_order_release);
}

void UsageSegment::count_unslotted() noexcept {
    if (header_ != nullptr) {
        header_->unslotted_drops.fetch_add(1, std::memory_order_relaxed);
    }
}

void UsageSegment::count_unrecorded(std::uint32_t slot,
                                    UnrecordedCounter c) noexcept {
    const int i = static_cast<int>(c);
    if (slot >= slot_count_ || i < 0 ||
        i >= static_cast<int>(UnrecordedCounter::kCount)) {
        return;
    }
    slots_[slot].unrecorded[i].fetch_add(1, std::memory_order_relaxed);
}

// --- consumer (apikeyd) ----------------------------------------------------

std::size_t UsageSegment::peek(std::uint32_t slot, std::uint64_t from,
                               UsageRecord* out, std::size_t max,
                               std::uint64_t* end) noexcept {
    if (slot >= slot_count_) {
        *end = from;
        return 0;
    }
    return stream_.read(slot, slots_[slot], from, out, max, end, &corrupt_);
}

void UsageSegment::commit(std::uint32_t slot, std::uint64_t position) noexcept {
    if (slot >= slot_count_) {
        return;
    }
    UsageSlot& s = slots_[slot];
    const std::uint64_t tail = s.tail.load(std::memory_order_relaxed);
    const std::uint64_t head = s.head.load(std::memory_order_acquire);
    if (position > head) {
        position = head;
    }
    if (position <= tail) {
        return;
    }
    s.tail.store(position, std::memory_order_release);
    stream_.release(slot, s);
}

bool UsageSegment::free_if_drained(std::uint32_t slot) noexcept {
    if (slot >= slot_count_) {
        return false;
    }
    UsageSlot& s = slots_[slot];
    if (s.state.load(std::memory_order_acquire) != kRetired) {
        return false;
    }
    if (s.tail.load(std::memory_order_acquire) !=
        s.head.load(std::memory_order_acquire)) {
        return false;
    }
    std::uint64_t closed = 0;
    if (agg_closed_epoch(slot, &closed) || !agg_empty(slot)) {
        return false;
    }
    stream_.release_all(slot, s);
    // So that an owned slot never shows its previous (dead) owner's pid.
    s.owner_pid.store(0, std::memory_order_relaxed);
    std::uint32_t expected = kRetired;
    return s.state.compare_exchange_strong(
        expected, kFree, std::memory_order_acq_rel, std::memory_order_relaxed);
}

}  // namespace apikey
