// The keys apikeyd publishes, by id, with their orgs: the drainer stores a
// usage record only when its key is one of them and its org is that key's
// org, so nobody who can write a ring can invent usage for other keys or
// orgs. The key publisher maintains it: a key is added before it reaches
// the shared key table (a record for a key a worker accepted is always
// known). A removed key stays known for the records written until shortly
// after it went: the drainer forgets it once it has read all of them, so
// that a steady churn of keys does not pile up removed ones. Thread-safe.
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <shared_mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include "uuid.h"

namespace apikey {

// A request whose key was checked before the key was removed writes its
// record when it ends: records written up to this long after a removal are
// still admitted, however long they wait in the rings.
inline constexpr std::int64_t kRemovedKeyGraceUs = 60 * 1000000LL;
// The latest a removed key is forgotten, should the drainer never catch up.
inline constexpr std::int64_t kRemovedKeyMaxUs = 10 * 60 * 1000000LL;

enum class KeyVerdict { kKnown, kUnknownKey, kOrgMismatch };

class KeyIndex {
public:
    explicit KeyIndex(std::int64_t removed_max_us = kRemovedKeyMaxUs)
        : max_us_(removed_max_us) {}

    // Adds or updates a key (live again if it was removed).
    void put(const Uuid& key_id, const Uuid& org_id);
    // Marks a key removed at now_us: it stays known until forgotten, at
    // the latest removed_max_us later.
    void remove(const Uuid& key_id, std::int64_t now_us);
    // remove() for every key not in `keep`.
    void retain_only(const std::vector<Uuid>& keep, std::int64_t now_us);
    // Forgets the keys removed before cutoff_us (the drainer: once it has
    // read every record written until cutoff_us + kRemovedKeyGraceUs).
    void forget_removed_before(std::int64_t cutoff_us);

    // Set once the index holds a complete key set (the first full load, or
    // the key table published before a restart). Until then the drainer
    // waits rather than rejecting genuine records.
    void mark_ready();
    bool ready() const;

    KeyVerdict check(const Uuid& key_id, const Uuid& org_id,
                     std::int64_t now_us) const;
    // The org of a key check() knows, nullopt for an unknown one (an
    // aggregate entry names no org: it gets its key's).
    std::optional<Uuid> org_of(const Uuid& key_id, std::int64_t now_us) const;
    std::size_t size() const;

private:
    struct UuidHash {
        std::size_t operator()(const Uuid& u) const noexcept;
    };
    struct Entry {
        Uuid org_id;
        bool removed;
        std::int64_t removed_at_us;
    };
    // Both with the lock held.
    void mark_removed(const Uuid& key_id, Entry* entry, std::int64_t now_us);
    void forget_before(std::int64_t cutoff_us);

    const std::int64_t max_us_;
    mutable std::shared_mutex mutex_;
    std::unordered_map<Uuid, Entry, UuidHash> keys_;
    // Removals in time order, to forget them without scanning keys_.
    std::deque<std::pair<std::int64_t, Uuid>> removals_;
    bool ready_ = false;
};

}  // namespace apikey
