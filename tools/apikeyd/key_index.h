// The keys apikeyd publishes, by id, with their orgs: the drainer stores a
// usage record only when its key is one of them and its org is that key's
// org, so nobody who can write a ring can invent usage for other keys or
// orgs. The key publisher maintains it: a key is added before it reaches
// the shared key table (a record for a key a worker accepted is always
// known), and a removed key stays known for a grace period, for records
// that were still in the rings when it went. Thread-safe.
#pragma once

#include <cstdint>
#include <deque>
#include <shared_mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include "uuid.h"

namespace apikey {

// Long enough for any backlog the rings and a restart can hold.
inline constexpr std::int64_t kRemovedKeyGraceUs = 10 * 60 * 1000000LL;

enum class KeyVerdict { kKnown, kUnknownKey, kOrgMismatch };

class KeyIndex {
public:
    explicit KeyIndex(std::int64_t removed_grace_us = kRemovedKeyGraceUs)
        : grace_us_(removed_grace_us) {}

    // Adds or updates a key (live again if it was removed).
    void put(const Uuid& key_id, const Uuid& org_id);
    // Removes a key, after the grace period from now_us.
    void remove(const Uuid& key_id, std::int64_t now_us);
    // remove() for every key not in `keep`.
    void retain_only(const std::vector<Uuid>& keep, std::int64_t now_us);

    // Set once the index holds a complete key set (the first full load, or
    // the key table published before a restart). Until then the drainer
    // waits rather than rejecting genuine records.
    void mark_ready();
    bool ready() const;

    KeyVerdict check(const Uuid& key_id, const Uuid& org_id,
                     std::int64_t now_us) const;
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
    void forget_expired(std::int64_t now_us);

    const std::int64_t grace_us_;
    mutable std::shared_mutex mutex_;
    std::unordered_map<Uuid, Entry, UuidHash> keys_;
    // Removals in time order, to forget them without scanning keys_.
    std::deque<std::pair<std::int64_t, Uuid>> removals_;
    bool ready_ = false;
};

}  // namespace apikey
