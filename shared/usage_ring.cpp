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
static_assert(sizeof(UsageSlot) % alignof(UsageRecord) == 0,
              "rings follow the slots and must stay aligned");
static_assert(offsetof(UsageSlot, head) == kCacheLine);
static_assert(offsetof(UsageSlot, tail) == 2 * kCacheLine);
static_assert(offsetof(UsageSlot, agg_overflow) == 3 * kCacheLine);
static_assert(offsetof(UsageHeader, superseded) % kCacheLine == 0);
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);
static_assert(std::atomic<std::int64_t>::is_always_lock_free);
static_assert(std::is_trivially_copyable_v<UsageRecord>);

std::uint64_t floor_power_of_two(std::uint64_t v) noexcept {
    if (v == 0) {
        return 0;
    }
    return std::uint64_t{1} << (63 - __builtin_clzll(v));
}

constexpr std::size_t kPage = 4096;
constexpr std::uint32_t kFirstEpoch = 1;

std::size_t fixed_size(std::uint32_t slot_count) noexcept {
    return kUsageHeaderSize + std::size_t{slot_count} * sizeof(UsageSlot);
}

std::size_t page_up(std::size_t n) noexcept {
    return (n + kPage - 1) & ~(kPage - 1);
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
        h->record_size != sizeof(UsageRecord)) {
        char why[128];
        std::snprintf(why, sizeof why,
                      "layout version %u (record size %u), this build reads "
                      "version %u (record size %zu)",
                      static_cast<unsigned>(h->layout_version),
                      static_cast<unsigned>(h->record_size),
                      static_cast<unsigned>(kUsageLayoutVersion),
                      sizeof(UsageRecord));
        describe_error(error, "usage segment", path, why);
        return SegmentStatus::kBadVersion;
    }
    if (h->file_size != map.size()) {
        describe_error(error, "usage segment", path, "header and file size disagree");
        return SegmentStatus::kBadSize;
    }
    // The rings' exact size, then the layout it makes: a header whose
    // numbers disagree with one another or with the file is refused.
    // (Bounded first, so that the product cannot overflow.)
    const std::size_t rings =
        h->slot_count <= kMaxUsageSlots &&
                h->ring_capacity <= map.size() / sizeof(UsageRecord)
            ? fixed_size(h->slot_count) +
                  std::size_t{h->slot_count} *
                      static_cast<std::size_t>(h->ring_capacity) *
                      sizeof(UsageRecord)
            : 0;
    const UsageLayout layout =
        usage_layout_for(rings, h->slot_count, h->agg_entries);
    if (layout.ring_capacity == 0 || layout.ring_capacity != h->ring_capacity ||
        layout.file_size != map.size()) {
        describe_error(error, "usage segment", path,
                       "slot count, ring capacity and size disagree");
        return SegmentStatus::kBadSize;
    }
    const AggLayout agg = agg_layout_for(h->agg_entries);
    if (h->agg_labels != agg.labels || h->agg_cells != agg.cells ||
        h->agg_area_size != agg.area_size ||
        h->agg_area_offset != page_up(rings)) {
        describe_error(error, "usage segment", path,
                       "aggregation area sizes disagree");
        return SegmentStatus::kBadSize;
    }
    return SegmentStatus::kOk;
}

bool same_layout(const MappedFile& map, const UsageLayout& layout) noexcept {
    const auto* h = static_cast<const UsageHeader*>(map.data());
    return h->slot_count == layout.slot_count &&
           h->ring_capacity == layout.ring_capacity &&
           h->file_size == layout.file_size &&
           h->agg_entries == layout.agg_entries &&
           h->superseded.load(std::memory_order_acquire) == 0;
}

}  // namespace

UsageLayout usage_layout_for(std::size_t ring_size, std::uint32_t slot_count,
                             std::uint32_t agg_entries) noexcept {
    const UsageLayout none{slot_count, 0, 0, agg_entries};
    const AggLayout agg = agg_layout_for(agg_entries);
    if (slot_count == 0 || slot_count > kMaxUsageSlots || agg.entries == 0) {
        return none;
    }
    const std::size_t fixed = fixed_size(slot_count);
    if (ring_size <= fixed) {
        return none;
    }
    const std::size_t per_ring =
        (ring_size - fixed) / slot_count / sizeof(UsageRecord);
    const std::uint64_t cap = floor_power_of_two(per_ring);
    if (cap == 0) {
        return none;
    }
    // No overflow: slot_count * cap records fit in ring_size - fixed, and
    // slot_count areas of at most a few GiB each fit a 64-bit size.
    const std::size_t rings =
        fixed + std::size_t{slot_count} * static_cast<std::size_t>(cap) *
                    sizeof(UsageRecord);
    return {slot_count, cap,
            page_up(rings) + std::size_t{slot_count} * agg.area_size,
            agg_entries};
}

// --- mapping ----------------------------------------------------------------

UsageSegment::UsageSegment(UsageSegment&& other) noexcept
    : header_(std::exchange(other.header_, nullptr)),
      slots_(std::exchange(other.slots_, nullptr)),
      rings_(std::exchange(other.rings_, nullptr)),
      slot_count_(std::exchange(other.slot_count_, 0)),
      capacity_(std::exchange(other.capacity_, 0)),
      agg_areas_(std::exchange(other.agg_areas_, nullptr)),
      agg_(std::exchange(other.agg_, AggLayout{})),
      label_memo_(std::exchange(other.label_memo_, AggLabelMemo{})),
      map_(std::move(other.map_)) {}

UsageSegment& UsageSegment::operator=(UsageSegment&& other) noexcept {
    if (this != &other) {
        reset();
        header_ = std::exchange(other.header_, nullptr);
        slots_ = std::exchange(other.slots_, nullptr);
        rings_ = std::exchange(other.rings_, nullptr);
        slot_count_ = std::exchange(other.slot_count_, 0);
        capacity_ = std::exchange(other.capacity_, 0);
        agg_areas_ = std::exchange(other.agg_areas_, nullptr);
        agg_ = std::exchange(other.agg_, AggLayout{});
        label_memo_ = std::exchange(other.label_memo_, AggLabelMemo{});
        map_ = std::move(other.map_);
    }
    return *this;
}

void UsageSegment::reset() noexcept {
    header_ = nullptr;
    slots_ = nullptr;
    rings_ = nullptr;
    slot_count_ = 0;
    capacity_ = 0;
    agg_areas_ = nullptr;
    agg_ = AggLayout{};
    label_memo_ = AggLabelMemo{};  // ids of another mapping's buffers
    map_.reset();
}

// `map` holds a validated segment.
void UsageSegment::adopt(MappedFile&& map) noexcept {
    map_ = std::move(map);
    auto* base = static_cast<unsigned char*>(map_.data());
    header_ = reinterpret_cast<UsageHeader*>(base);
    slot_count_ = header_->slot_count;
    capacity_ = header_->ring_capacity;
    slots_ = reinterpret_cast<UsageSlot*>(base + kSlotsOffset);
    rings_ = base + fixed_size(slot_count_);
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
    const std::size_t rings =
        fixed_size(layout.slot_count) +
        std::size_t{layout.slot_count} *
            static_cast<std::size_t>(layout.ring_capacity) *
            sizeof(UsageRecord);
    const UsageLayout want =
        usage_layout_for(rings, layout.slot_count, layout.agg_entries);
    if (want.ring_capacity == 0 || want.ring_capacity != layout.ring_capacity ||
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
    // and generation 0, every aggregation buffer kClean and empty. Rings
    // and tables are not touched so the file stays sparse.
    auto* h = new (fresh.data()) UsageHeader();
    const AggLayout agg = agg_layout_for(layout.agg_entries);
    h->layout_version = kUsageLayoutVersion;
    h->record_size = sizeof(UsageRecord);
    h->slot_count = layout.slot_count;
    h->ring_capacity = layout.ring_capacity;
    h->file_size = layout.file_size;
    h->created_at_us = realtime_us();
    h->agg_entries = agg.entries;
    h->agg_labels = agg.labels;
    h->agg_cells = agg.cells;
    h->agg_area_offset = page_up(rings);
    h->agg_area_size = agg.area_size;
    // Epochs start at 1 (agg_active == 0 means "in no buffer"): buffer 1
    // is every slot's first active buffer.
    auto* base = static_cast<unsigned char*>(fresh.data());
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
        // Keep the old file reachable for apikeyd: its rings may still hold
        // records (apikeyd down during a layout change). apikeyd drains and
        // deletes PATH.old.* files.
        char kept[PATH_MAX];
        const int n = std::snprintf(
            kept, sizeof kept, "%s%s%lld", path, kUsageOldSuffix,
            static_cast<long long>(
                static_cast<UsageHeader*>(old.data())->created_at_us));
        if (n > 0 && static_cast<std::size_t>(n) < sizeof kept) {
            link(path, kept);  // best effort: EEXIST means already kept
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

UsageRecord* UsageSegment::ring(std::uint32_t slot) const noexcept {
    return reinterpret_cast<UsageRecord*>(
        rings_ + std::size_t{slot} * static_cast<std::size_t>(capacity_) *
                     sizeof(UsageRecord));
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
        s.cached_tail = s.tail.load(std::memory_order_acquire);
        // A dead predecessor may have left its epoch here.
        s.agg_active.store(0, std::memory_order_relaxed);
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

UsageRecord* UsageSegment::reserve(std::uint32_t slot) noexcept {
    if (slot >= slot_count_) {
        if (header_ != nullptr) {
            header_->unslotted_drops.fetch_add(1, std::memory_order_relaxed);
        }
        return nullptr;
    }
    UsageSlot& s = slots_[slot];
    const std::uint64_t head = s.head.load(std::memory_order_relaxed);
    if (head - s.cached_tail >= capacity_) {
        s.cached_tail = s.tail.load(std::memory_order_acquire);
        if (head - s.cached_tail >= capacity_) {
            s.dropped.fetch_add(1, std::memory_order_relaxed);
            return nullptr;
        }
    }
    return ring(slot) + (head & (capacity_ - 1));
}

void UsageSegment::publish(std::uint32_t slot, UsageRecord* record) noexcept {
    UsageSlot& s = slots_[slot];
    const std::uint64_t head = s.head.load(std::memory_order_relaxed);
    record->slot = slot;
    record->generation = s.generation.load(std::memory_order_relaxed);
    record->sequence = head;
    s.head.store(head + 1, std::memory_order_release);
}

bool UsageSegment::push(std::uint32_t slot,
                        const UsageRecord& record) noexcept {
    UsageRecord* dst = reserve(slot);
    if (dst == nullptr) {
        return false;
    }
    std::memcpy(dst, &record, sizeof(UsageRecord));
    publish(slot, dst);
    return true;
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
                               UsageRecord* out,
                               std::size_t max) const noexcept {
    if (slot >= slot_count_ || max == 0) {
        return 0;
    }
    const UsageSlot& s = slots_[slot];
    const std::uint64_t tail = s.tail.load(std::memory_order_relaxed);
    std::uint64_t head = s.head.load(std::memory_order_acquire);
    // A sane producer never runs more than a ring ahead; a corrupt head
    // must not make us read records twice over.
    if (head - tail > capacity_) {
        head = tail + capacity_;
    }
    if (from < tail) {
        from = tail;
    }
    if (from >= head) {
        return 0;
    }
    const std::uint64_t available = head - from;
    const std::size_t n =
        available < max ? static_cast<std::size_t>(available) : max;
    const UsageRecord* r = ring(slot);
    const std::size_t first = static_cast<std::size_t>(from & (capacity_ - 1));
    const std::size_t run =
        n < capacity_ - first ? n : static_cast<std::size_t>(capacity_ - first);
    std::memcpy(out, r + first, run * sizeof(UsageRecord));
    if (run < n) {
        std::memcpy(out + run, r, (n - run) * sizeof(UsageRecord));
    }
    return n;
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
    // Release: the producer reuses these records only after it sees this.
    s.tail.store(position, std::memory_order_release);
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
    // So that an owned slot never shows its previous (dead) owner's pid.
    s.owner_pid.store(0, std::memory_order_relaxed);
    std::uint32_t expected = kRetired;
    return s.state.compare_exchange_strong(
        expected, kFree, std::memory_order_acq_rel, std::memory_order_relaxed);
}

}  // namespace apikey
