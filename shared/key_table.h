// The key-table segment: a file (under /dev/shm) that apikeyd writes and
// every nginx worker maps read-only.
//
// Layout: a 4 KiB header, then `capacity` fixed-size slots forming an
// open-addressing hash table (linear probing, tombstones) keyed by
// SHA-256(key). There is exactly one writer (apikeyd). Readers never lock:
// each slot carries a sequence counter (seqlock); a reader retries while the
// counter is odd or changed under it, so it never sees a torn entry.
//
// Growth and rebuilds use a generation swap: apikeyd builds a complete new
// file beside the old one, renames it over the path, then marks the old
// header `superseded`; readers notice that flag on their next lookup and
// remap the path. No pointers live in the segment, only offsets and values.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "key_hash.h"
#include "scope.h"
#include "segment_file.h"
#include "uuid.h"

namespace apikey {

inline constexpr std::uint64_t kKeyTableMagic = 0x3154594b59454b41ULL;  // "AKEYKYT1"
inline constexpr std::uint32_t kKeyTableLayoutVersion = 1;
inline constexpr std::size_t kKeyTableHeaderSize = 4096;
inline constexpr std::size_t kMaxScopes = 8;
inline constexpr std::size_t kMaxNameLen = 100;
inline constexpr std::uint64_t kMinKeyTableCapacity = 4096;

// What the table knows about one key: never the key itself, only its hash.
struct KeyInfo {
    KeyHash key_hash;
    Uuid key_id;
    Uuid org_id;
    std::int64_t expires_at_us;  // 0: never expires
    std::int64_t revoked_at_us;  // 0: not revoked
    std::uint64_t scope_hashes[kMaxScopes];  // scope_hash() of each scope
    std::uint8_t scope_count;
    std::uint8_t name_len;
    char name[kMaxNameLen];
    std::uint8_t reserved[2];

    std::string_view name_view() const noexcept {
        return {name, name_len < kMaxNameLen ? name_len : kMaxNameLen};
    }
    bool has_scope(std::uint64_t hash) const noexcept;
};
static_assert(sizeof(KeyInfo) == 248, "KeyInfo layout is part of the segment");

enum class SlotState : std::uint32_t { kEmpty = 0, kLive = 1, kTombstone = 2 };

struct alignas(8) KeyTableSlot {
    std::atomic<std::uint32_t> seq;    // odd while the writer is changing it
    std::atomic<std::uint32_t> state;  // SlotState
    KeyInfo info;
};
static_assert(sizeof(KeyTableSlot) == 256, "slot size is part of the layout");

struct KeyTableHeader {
    std::uint64_t magic;
    std::uint32_t layout_version;
    std::uint32_t slot_size;
    std::uint64_t capacity;  // number of slots, a power of two
    std::uint64_t header_size;
    alignas(64) std::atomic<std::uint64_t> generation;  // bumped per change
    std::atomic<std::uint32_t> ready;       // 1 after the first full load
    std::atomic<std::uint32_t> superseded;  // 1: a newer file is at the path
    std::atomic<std::uint64_t> live_count;
    std::atomic<std::uint64_t> tombstone_count;
    std::atomic<std::int64_t> synced_at_us;  // last full sync (wall clock)
};
static_assert(sizeof(KeyTableHeader) <= kKeyTableHeaderSize);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);

std::size_t key_table_file_size(std::uint64_t capacity) noexcept;

// kBusy: a slot on the probe path stayed held by the writer past the
// reader's busy wait, so the key's state is unknown.
enum class LookupResult { kFound, kAbsent, kBusy };

// Where lookup_brief() found a key, and the slot's sequence it read the
// entry under. The writer adds two to a slot's sequence for every change
// (an update, a removal, a reuse by another key), so while the sequence
// is the same the slot still holds what was read; only 2^31 changes of
// that one slot between two looks could wrap it back. Valid for the
// mapping it was taken from only: a reader that attaches another file
// makes every mark stale (the caller forgets them).
struct SlotMark {
    static constexpr std::uint64_t kNone = ~std::uint64_t{0};
    std::uint64_t index = kNone;
    std::uint32_t seq = 0;
};

// The busy wait an event loop can afford (nginx workers): an update holds
// a slot for ~100 ns, so only a writer descheduled or dead mid-update
// outlasts it, and the request is answered "unavailable" instead of
// stalling every connection of the worker.
inline constexpr std::int64_t kEventLoopSlotWaitNs = 50 * 1000;

// Read side (nginx workers, apikeyd's own API auth). noexcept throughout.
class KeyTableReader {
public:
    KeyTableReader() = default;
    ~KeyTableReader();
    KeyTableReader(const KeyTableReader&) = delete;
    KeyTableReader& operator=(const KeyTableReader&) = delete;

    // Maps `path` read-only and validates magic, layout version, slot size
    // and file size. On failure the reader stays detached and `error`
    // (if given) says why, without any key material.
    SegmentStatus attach(const char* path, std::string* error) noexcept;
    void detach() noexcept;

    bool attached() const noexcept { return header_ != nullptr; }
    // Both inline: asked on every request.
    bool ready() const noexcept {
        return header_ != nullptr &&
               header_->ready.load(std::memory_order_acquire) != 0;
    }
    // A newer file replaced this one: the caller should attach() again.
    bool superseded() const noexcept {
        return header_ != nullptr &&
               header_->superseded.load(std::memory_order_acquire) != 0;
    }
    std::uint64_t generation() const noexcept;
    std::uint64_t live_count() const noexcept;
    std::int64_t synced_at_us() const noexcept;

    // Copies the entry for `hash` into *out. Lock-free and allocation-free;
    // retries a slot that the writer is changing, and gives up (false)
    // only if the writer holds one slot past the busy wait (it died
    // mid-update, whose restart publishes a new file, or is descheduled).
    bool lookup(const KeyHash& hash, KeyInfo* out) const noexcept;
    // lookup() that copies only what a request needs: the hash, ids,
    // times, scope_count and name_len, the first scope_count scope hashes
    // and the first name_len bytes of the name. The rest of *out is left
    // as it was. (The nginx worker's per-request path.)
    // With `mark`: also where the entry was found (only for kFound).
    LookupResult lookup_brief(const KeyHash& hash, KeyInfo* out,
                              SlotMark* mark = nullptr) const noexcept;
    // The slot `mark` names was not written since lookup_brief() set the
    // mark (on this mapping): what it read then is what the slot holds
    // now. Inline: asked on every request with a remembered key.
    // (No mark, a detached reader: the index is out of range.)
    bool unchanged(const SlotMark& mark) const noexcept {
        return mark.index < slot_count_ &&
               slots_[mark.index].seq.load(std::memory_order_acquire) ==
                   mark.seq;
    }

    // For walking the whole table (apikeyd reading back what it published):
    // the number of slots (0 when detached), and a consistent copy of slot
    // `index`'s entry if it is live. False for an empty slot, a tombstone,
    // an index out of range, or a slot the writer holds for too long.
    std::uint64_t capacity() const noexcept { return slot_count_; }
    bool entry_at(std::uint64_t index, KeyInfo* out) const noexcept;

    // How long a lookup waits for a slot the writer holds before giving
    // up: 200 ms by default (apikeyd's threads), where a writer preempted
    // mid-update on a loaded machine is waited for. Event loops set
    // kEventLoopSlotWaitNs; a wait under 1 ms only spins, never yields the
    // CPU (a yield can cost a scheduler slice).
    void set_busy_wait_ns(std::int64_t ns) noexcept { busy_wait_ns_ = ns; }

private:
    std::int64_t busy_wait_ns_ = 200 * 1000 * 1000;
    template <bool kBrief>
    LookupResult find(const KeyHash& hash, KeyInfo* out,
                      SlotMark* mark) const noexcept;

    const KeyTableHeader* header_ = nullptr;
    const KeyTableSlot* slots_ = nullptr;
    std::uint64_t mask_ = 0;
    std::uint64_t slot_count_ = 0;  // 0 while detached
    MappedFile map_;
};

// Write side: apikeyd only. Throws std::runtime_error on I/O failure.
class KeyTableWriter {
public:
    // Creates a complete, empty table at `path`.tmp with `capacity` slots
    // (rounded up to a power of two, at least kMinKeyTableCapacity). Call
    // publish() to move it to `path`.
    static KeyTableWriter create(const std::string& path,
                                 std::uint64_t capacity);

    KeyTableWriter(KeyTableWriter&&) noexcept = default;
    KeyTableWriter& operator=(KeyTableWriter&&) noexcept = default;
    ~KeyTableWriter() = default;

    // Inserts or replaces the entry with info.key_hash. Returns false when
    // the table is too full (load above 0.7 counting tombstones): the
    // caller rebuilds a bigger table.
    [[nodiscard]] bool upsert(const KeyInfo& info) noexcept;
    // Returns true if an entry was removed.
    bool remove(const KeyHash& hash) noexcept;

    // Calls fn(const KeyInfo&) for every live entry (writer side, no race).
    template <typename Fn>
    void for_each(Fn&& fn) const {
        for (std::uint64_t i = 0; i < capacity(); ++i) {
            const KeyTableSlot& s = slots_[i];
            if (s.state.load(std::memory_order_relaxed) ==
                static_cast<std::uint32_t>(SlotState::kLive)) {
                fn(s.info);
            }
        }
    }

    void set_ready() noexcept;
    void mark_synced(std::int64_t now_us) noexcept;
    // Renames the file built by create() over `path` and marks the file that
    // was there (if any, and if it is a valid table) superseded.
    void publish();

    std::uint64_t capacity() const noexcept;
    std::uint64_t live_count() const noexcept;
    std::uint64_t tombstone_count() const noexcept;
    const std::string& path() const noexcept { return path_; }

private:
    KeyTableWriter() = default;
    void bump_generation() noexcept;

    std::string path_;
    bool published_ = false;
    KeyTableHeader* header_ = nullptr;
    KeyTableSlot* slots_ = nullptr;
    MappedFile map_;
};

}  // namespace apikey
