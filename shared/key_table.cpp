#include "key_table.h"

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <new>
#include <stdexcept>
#include <type_traits>

#include <sched.h>
#include <time.h>
#include <unistd.h>

namespace apikey {

namespace {

// The slot payload is copied as 64-bit words with relaxed atomic accesses:
// readers race with the writer by design (the seqlock discards torn
// copies), and atomic word accesses keep that race defined behaviour.
// may_alias: the words overlay byte arrays and integers of KeyInfo.
typedef std::uint64_t __attribute__((may_alias)) Word;
constexpr std::size_t kInfoWords = sizeof(KeyInfo) / sizeof(Word);
constexpr std::size_t kHashWords = sizeof(KeyHash) / sizeof(Word);
static_assert(sizeof(KeyInfo) % sizeof(Word) == 0);
static_assert(alignof(KeyInfo) >= alignof(Word));
static_assert(offsetof(KeyInfo, key_hash) == 0);
static_assert(offsetof(KeyTableSlot, info) % sizeof(Word) == 0);
static_assert(std::is_trivially_copyable_v<KeyInfo>);
static_assert(std::has_unique_object_representations_v<KeyInfo>,
              "KeyInfo must have no padding: it is copied word by word");

constexpr std::uint64_t kMaxKeyTableCapacity = 1ULL << 32;
constexpr unsigned kKeyTableMode = 0644;  // workers run as another user
// Load limit, counting tombstones: 7/10.
constexpr std::uint64_t kMaxLoadNumerator = 7;
constexpr std::uint64_t kMaxLoadDenominator = 10;
// A slot the writer holds (odd sequence) is retried: spinning first, then
// yielding (long waits only), for up to the reader's busy wait.
constexpr unsigned kSpinRetries = 64;
constexpr std::int64_t kYieldingWaitNs = 1000 * 1000;


constexpr std::uint32_t kEmpty = static_cast<std::uint32_t>(SlotState::kEmpty);
constexpr std::uint32_t kLive = static_cast<std::uint32_t>(SlotState::kLive);
constexpr std::uint32_t kTombstone =
    static_cast<std::uint32_t>(SlotState::kTombstone);

inline const Word* words(const KeyInfo& info) noexcept {
    return reinterpret_cast<const Word*>(&info);
}

inline Word* words(KeyInfo& info) noexcept {
    return reinterpret_cast<Word*>(&info);
}

inline std::uint64_t home_index(const KeyHash& hash) noexcept {
    std::uint64_t h;
    std::memcpy(&h, hash.data(), sizeof h);
    return h;
}

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

inline void backoff(unsigned attempt, std::int64_t max_wait_ns) noexcept {
    if (attempt < kSpinRetries || max_wait_ns < kYieldingWaitNs) {
        cpu_relax();
    } else {
        sched_yield();  // the writer may be preempted mid-update
    }
}

bool is_power_of_two(std::uint64_t v) noexcept {
    return v != 0 && (v & (v - 1)) == 0;
}

std::uint64_t round_capacity(std::uint64_t requested) {
    if (requested > kMaxKeyTableCapacity) {
        throw std::runtime_error("key table capacity too large");
    }
    std::uint64_t cap = kMinKeyTableCapacity;
    while (cap < requested) {
        cap <<= 1;
    }
    return cap;
}


// Checks everything a reader relies on before trusting the header.
SegmentStatus validate(const MappedFile& map, const char* path,
                       std::string* error) noexcept {
    if (map.size() < sizeof(std::uint64_t)) {
        describe_error(error, "key table", path, "file too small for a header");
        return SegmentStatus::kBadSize;
    }
    const auto* h = static_cast<const KeyTableHeader*>(map.data());
    if (h->magic != kKeyTableMagic) {
        describe_error(error, "key table", path, "not a key table (bad magic)");
        return SegmentStatus::kBadMagic;
    }
    if (map.size() < kKeyTableHeaderSize) {
        describe_error(error, "key table", path, "file too small for a header");
        return SegmentStatus::kBadSize;
    }
    if (h->layout_version != kKeyTableLayoutVersion ||
        h->slot_size != sizeof(KeyTableSlot) ||
        h->header_size != kKeyTableHeaderSize) {
        describe_error(error, "key table", path, "unsupported layout version");
        return SegmentStatus::kBadVersion;
    }
    if (!is_power_of_two(h->capacity) ||
        key_table_file_size(h->capacity) != map.size()) {
        describe_error(error, "key table", path, "capacity and file size disagree");
        return SegmentStatus::kBadSize;
    }
    return SegmentStatus::kOk;
}

bool hash_matches(const KeyInfo& info, const KeyHash& hash) noexcept {
    Word want[kHashWords];
    std::memcpy(want, hash.data(), sizeof want);
    const Word* src = words(info);
#pragma GCC unroll 4
    for (std::size_t i = 0; i < kHashWords; ++i) {
        if (__atomic_load_n(&src[i], __ATOMIC_RELAXED) != want[i]) {
            return false;
        }
    }
    return true;
}

void load_info(const KeyInfo& from, KeyInfo* to) noexcept {
    const Word* src = words(from);
    Word* dst = words(*to);
#pragma GCC unroll 31
    for (std::size_t i = 0; i < kInfoWords; ++i) {
        dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
    }
}

// load_info() of the words a request needs (see lookup_brief()). The
// counts come from the racy copy itself: clamped, so a torn value stays
// inside the slot, and the seqlock discards the copy anyway.
constexpr std::size_t kCountsWord = offsetof(KeyInfo, scope_count) / sizeof(Word);
constexpr std::size_t kScopesWord = offsetof(KeyInfo, scope_hashes) / sizeof(Word);
constexpr std::size_t kNameWord = offsetof(KeyInfo, name) / sizeof(Word);
static_assert(offsetof(KeyInfo, name_len) / sizeof(Word) == kCountsWord);
static_assert(offsetof(KeyInfo, scope_hashes) % sizeof(Word) == 0);
static_assert(offsetof(KeyInfo, scope_hashes) == offsetof(KeyInfo, revoked_at_us) + 8);
static_assert(kNameWord == kCountsWord);

void load_info_brief(const KeyInfo& from, KeyInfo* to) noexcept {
    const Word* src = words(from);
    Word* dst = words(*to);
#pragma GCC unroll 10
    for (std::size_t i = 0; i < kScopesWord; ++i) {  // hash, ids, times
        dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
    }
    dst[kCountsWord] = __atomic_load_n(&src[kCountsWord], __ATOMIC_RELAXED);
    const std::size_t scopes =
        to->scope_count < kMaxScopes ? to->scope_count : kMaxScopes;
    for (std::size_t i = 0; i < scopes; ++i) {
        dst[kScopesWord + i] =
            __atomic_load_n(&src[kScopesWord + i], __ATOMIC_RELAXED);
    }
    const std::size_t name_len =
        to->name_len < kMaxNameLen ? to->name_len : kMaxNameLen;
    const std::size_t name_end =
        (offsetof(KeyInfo, name) + name_len + sizeof(Word) - 1) / sizeof(Word);
    for (std::size_t i = kNameWord + 1; i < name_end; ++i) {
        dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
    }
}

void store_info(KeyInfo& to, const KeyInfo& from) noexcept {
    const Word* src = words(from);
    Word* dst = words(to);
    for (std::size_t i = 0; i < kInfoWords; ++i) {
        __atomic_store_n(&dst[i], src[i], __ATOMIC_RELAXED);
    }
}

enum class SlotRead { kEmpty, kSkip, kMatch, kBusy };

// One consistent look at a slot (seqlock read side). Copies the entry into
// *out only when its hash matches (kBrief: only what lookup_brief() says).
std::int64_t monotonic_ns() noexcept {
    struct timespec ts;
    // not _COARSE: its ticks (1-4 ms) are coarser than a short busy wait
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<std::int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

template <bool kBrief>
SlotRead read_slot(const KeyTableSlot& slot, const KeyHash& hash,
                   KeyInfo* out, std::uint32_t* seq,
                   std::int64_t max_wait_ns) noexcept {
    std::int64_t deadline = 0;  // set once spinning is over
    for (unsigned attempt = 0;; ++attempt) {
        if (attempt >= kSpinRetries) {
            std::int64_t now = monotonic_ns();
            if (deadline == 0) {
                deadline = now + max_wait_ns;
            } else if (now > deadline) {
                break;
            }
        }
        if (attempt > 0) {
            backoff(attempt, max_wait_ns);
        }
        const std::uint32_t before = slot.seq.load(std::memory_order_acquire);
        if (before & 1) {
            continue;
        }
        const std::uint32_t state = slot.state.load(std::memory_order_relaxed);
        SlotRead result = SlotRead::kSkip;
        if (state == kEmpty) {
            result = SlotRead::kEmpty;
        } else if (state == kLive && hash_matches(slot.info, hash)) {
            if (kBrief) {
                load_info_brief(slot.info, out);
            } else {
                load_info(slot.info, out);
            }
            result = SlotRead::kMatch;
        }
        std::atomic_thread_fence(std::memory_order_acquire);
        if (slot.seq.load(std::memory_order_relaxed) == before) {
            *seq = before;
            return result;
        }
    }
    return SlotRead::kBusy;
}

// Seqlock write side: odd while the fields change, even again after.
void write_slot(KeyTableSlot& slot, std::uint32_t state,
                const KeyInfo& info) noexcept {
    const std::uint32_t seq = slot.seq.load(std::memory_order_relaxed);
    slot.seq.store(seq + 1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_release);
    slot.state.store(state, std::memory_order_relaxed);
    store_info(slot.info, info);
    slot.seq.store(seq + 2, std::memory_order_release);
}

// The writer stores only what readers can interpret safely.
KeyInfo sanitized(const KeyInfo& info) noexcept {
    KeyInfo clean = info;
    if (clean.scope_count > kMaxScopes) {
        clean.scope_count = kMaxScopes;
    }
    if (clean.name_len > kMaxNameLen) {
        clean.name_len = kMaxNameLen;
    }
    std::memset(clean.reserved, 0, sizeof clean.reserved);
    return clean;
}

}  // namespace

bool KeyInfo::has_scope(std::uint64_t hash) const noexcept {
    const std::size_t n = scope_count < kMaxScopes ? scope_count : kMaxScopes;
    for (std::size_t i = 0; i < n; ++i) {
        if (scope_hashes[i] == hash) {
            return true;
        }
    }
    return false;
}

std::size_t key_table_file_size(std::uint64_t capacity) noexcept {
    constexpr std::uint64_t kMaxSlots =
        (SIZE_MAX - kKeyTableHeaderSize) / sizeof(KeyTableSlot);
    if (capacity > kMaxSlots) {
        return 0;  // never equal to a real file's size
    }
    return kKeyTableHeaderSize +
           static_cast<std::size_t>(capacity) * sizeof(KeyTableSlot);
}

// --- reader -------------------------------------------------------------

KeyTableReader::~KeyTableReader() { detach(); }

SegmentStatus KeyTableReader::attach(const char* path,
                                     std::string* error) noexcept {
    detach();
    MappedFile map;
    SegmentStatus status = map.open(path, false, error);
    if (status != SegmentStatus::kOk) {
        return status;
    }
    status = validate(map, path, error);
    if (status != SegmentStatus::kOk) {
        return status;
    }
    map_ = std::move(map);
    header_ = static_cast<const KeyTableHeader*>(map_.data());
    slots_ = reinterpret_cast<const KeyTableSlot*>(
        static_cast<const char*>(map_.data()) + kKeyTableHeaderSize);
    mask_ = header_->capacity - 1;
    slot_count_ = header_->capacity;
    return SegmentStatus::kOk;
}

void KeyTableReader::detach() noexcept {
    header_ = nullptr;
    slots_ = nullptr;
    mask_ = 0;
    slot_count_ = 0;
    map_.reset();
}

std::uint64_t KeyTableReader::generation() const noexcept {
    return header_ ? header_->generation.load(std::memory_order_acquire) : 0;
}

std::uint64_t KeyTableReader::live_count() const noexcept {
    return header_ ? header_->live_count.load(std::memory_order_relaxed) : 0;
}

std::int64_t KeyTableReader::synced_at_us() const noexcept {
    return header_ ? header_->synced_at_us.load(std::memory_order_acquire)
                   : 0;
}

bool KeyTableReader::lookup(const KeyHash& hash, KeyInfo* out) const noexcept {
    return find<false>(hash, out, nullptr) == LookupResult::kFound;
}

LookupResult KeyTableReader::lookup_brief(const KeyHash& hash, KeyInfo* out,
                                          SlotMark* mark) const noexcept {
    return find<true>(hash, out, mark);
}

template <bool kBrief>
LookupResult KeyTableReader::find(const KeyHash& hash, KeyInfo* out,
                                  SlotMark* mark) const noexcept {
    if (header_ == nullptr) {
        return LookupResult::kAbsent;
    }
    std::uint64_t i = home_index(hash) & mask_;
    // Bounded by capacity: a corrupt table without empty slots cannot
    // trap a worker.
    for (std::uint64_t probe = 0; probe <= mask_; ++probe) {
        std::uint32_t seq;
        switch (read_slot<kBrief>(slots_[i], hash, out, &seq,
                                  busy_wait_ns_)) {
        case SlotRead::kMatch:
            if (mark != nullptr) {
                mark->index = i;
                mark->seq = seq;
            }
            return LookupResult::kFound;
        case SlotRead::kEmpty:
            return LookupResult::kAbsent;
        case SlotRead::kBusy:
            return LookupResult::kBusy;
        case SlotRead::kSkip:
            break;
        }
        i = (i + 1) & mask_;
    }
    return LookupResult::kAbsent;
}

bool KeyTableReader::entry_at(std::uint64_t index,
                              KeyInfo* out) const noexcept {
    if (header_ == nullptr || index > mask_) {
        return false;
    }
    const KeyTableSlot& slot = slots_[index];
    for (unsigned attempt = 0; attempt < 64 * kSpinRetries; ++attempt) {
        if (attempt > 0) {
            backoff(attempt, busy_wait_ns_);
        }
        const std::uint32_t before = slot.seq.load(std::memory_order_acquire);
        if (before & 1) {
            continue;
        }
        const bool live =
            slot.state.load(std::memory_order_relaxed) == kLive;
        if (live) {
            load_info(slot.info, out);
        }
        std::atomic_thread_fence(std::memory_order_acquire);
        if (slot.seq.load(std::memory_order_relaxed) == before) {
            return live;
        }
    }
    return false;
}

// --- writer -------------------------------------------------------------

KeyTableWriter KeyTableWriter::create(const std::string& path,
                                      std::uint64_t capacity) {
    const std::uint64_t cap = round_capacity(capacity);
    const std::string tmp = path + ".tmp";
    KeyTableWriter w;
    w.path_ = path;
    std::string error;
    if (w.map_.create(tmp.c_str(), key_table_file_size(cap), kKeyTableMode,
                      &error) != SegmentStatus::kOk) {
        throw std::runtime_error(error);
    }
    w.header_ = new (w.map_.data()) KeyTableHeader();
    w.header_->layout_version = kKeyTableLayoutVersion;
    w.header_->slot_size = sizeof(KeyTableSlot);
    w.header_->capacity = cap;
    w.header_->header_size = kKeyTableHeaderSize;
    w.header_->magic = kKeyTableMagic;
    // The slots are all-zero: kEmpty with an even sequence. Not touched
    // here so that the file stays sparse.
    w.slots_ = reinterpret_cast<KeyTableSlot*>(
        static_cast<char*>(w.map_.data()) + kKeyTableHeaderSize);
    return w;
}

bool KeyTableWriter::upsert(const KeyInfo& info) noexcept {
    const std::uint64_t cap = capacity();
    const std::uint64_t mask = cap - 1;
    std::uint64_t i = home_index(info.key_hash) & mask;
    KeyTableSlot* reuse = nullptr;  // first tombstone on the probe path
    KeyTableSlot* empty = nullptr;
    for (std::uint64_t probe = 0; probe < cap; ++probe, i = (i + 1) & mask) {
        KeyTableSlot& s = slots_[i];
        const std::uint32_t state = s.state.load(std::memory_order_relaxed);
        if (state == kEmpty) {
            empty = &s;
            break;
        }
        if (state == kTombstone) {
            if (reuse == nullptr) {
                reuse = &s;
            }
        } else if (s.info.key_hash == info.key_hash) {
            write_slot(s, kLive, sanitized(info));
            bump_generation();
            return true;
        }
    }

    const std::uint64_t live = live_count();
    const std::uint64_t tombstones = tombstone_count();
    if (reuse == nullptr) {
        // Only a new entry in an empty slot raises the load.
        if (empty == nullptr || (live + tombstones + 1) * kMaxLoadDenominator >
                                    cap * kMaxLoadNumerator) {
            return false;
        }
        write_slot(*empty, kLive, sanitized(info));
    } else {
        write_slot(*reuse, kLive, sanitized(info));
        header_->tombstone_count.store(tombstones - 1,
                                       std::memory_order_relaxed);
    }
    header_->live_count.store(live + 1, std::memory_order_relaxed);
    bump_generation();
    return true;
}

bool KeyTableWriter::remove(const KeyHash& hash) noexcept {
    const std::uint64_t cap = capacity();
    const std::uint64_t mask = cap - 1;
    std::uint64_t i = home_index(hash) & mask;
    for (std::uint64_t probe = 0; probe < cap; ++probe, i = (i + 1) & mask) {
        KeyTableSlot& s = slots_[i];
        const std::uint32_t state = s.state.load(std::memory_order_relaxed);
        if (state == kEmpty) {
            return false;
        }
        if (state == kLive && s.info.key_hash == hash) {
            // A tombstone keeps the probe chains through this slot intact.
            write_slot(s, kTombstone, KeyInfo{});
            header_->live_count.store(live_count() - 1,
                                      std::memory_order_relaxed);
            header_->tombstone_count.store(tombstone_count() + 1,
                                           std::memory_order_relaxed);
            bump_generation();
            return true;
        }
    }
    return false;
}

void KeyTableWriter::set_ready() noexcept {
    header_->ready.store(1, std::memory_order_release);
    bump_generation();
}

void KeyTableWriter::mark_synced(std::int64_t now_us) noexcept {
    header_->synced_at_us.store(now_us, std::memory_order_release);
}

void KeyTableWriter::publish() {
    if (published_) {
        return;
    }
    const std::string tmp = path_ + ".tmp";
    // Map the current file first: after the rename the path names ours.
    MappedFile old;
    const bool have_old =
        old.open(path_.c_str(), true, nullptr) == SegmentStatus::kOk &&
        validate(old, path_.c_str(), nullptr) == SegmentStatus::kOk;
    if (rename(tmp.c_str(), path_.c_str()) != 0) {
        throw std::runtime_error("rename(\"" + tmp + "\", \"" + path_ +
                                 "\") failed: " + std::strerror(errno));
    }
    published_ = true;
    if (have_old) {
        // Only now: a reader that sees the flag must find the new file.
        static_cast<KeyTableHeader*>(old.data())
            ->superseded.store(1, std::memory_order_release);
    }
}

std::uint64_t KeyTableWriter::capacity() const noexcept {
    return header_->capacity;
}

std::uint64_t KeyTableWriter::live_count() const noexcept {
    return header_->live_count.load(std::memory_order_relaxed);
}

std::uint64_t KeyTableWriter::tombstone_count() const noexcept {
    return header_->tombstone_count.load(std::memory_order_relaxed);
}

void KeyTableWriter::bump_generation() noexcept {
    header_->generation.fetch_add(1, std::memory_order_release);
}

}  // namespace apikey
