#include "key_index.h"

#include <cstring>
#include <mutex>
#include <unordered_set>

namespace apikey {

std::size_t KeyIndex::UuidHash::operator()(const Uuid& u) const noexcept {
    std::uint64_t h;
    std::memcpy(&h, u.data(), sizeof(h));
    return static_cast<std::size_t>(h);
}

void KeyIndex::put(const Uuid& key_id, const Uuid& org_id) {
    std::unique_lock<std::shared_mutex> lock(mutex_);
    keys_[key_id] = Entry{org_id, false, 0};
}

void KeyIndex::remove(const Uuid& key_id, std::int64_t now_us) {
    std::unique_lock<std::shared_mutex> lock(mutex_);
    auto it = keys_.find(key_id);
    if (it != keys_.end()) mark_removed(key_id, &it->second, now_us);
    forget_before(now_us - max_us_);
}

void KeyIndex::retain_only(const std::vector<Uuid>& keep,
                           std::int64_t now_us) {
    std::unordered_set<Uuid, UuidHash> kept(keep.begin(), keep.end());
    std::unique_lock<std::shared_mutex> lock(mutex_);
    for (auto& [id, entry] : keys_) {
        if (kept.count(id) == 0) mark_removed(id, &entry, now_us);
    }
    forget_before(now_us - max_us_);
}

void KeyIndex::forget_removed_before(std::int64_t cutoff_us) {
    std::unique_lock<std::shared_mutex> lock(mutex_);
    forget_before(cutoff_us);
}

void KeyIndex::mark_removed(const Uuid& key_id, Entry* entry,
                            std::int64_t now_us) {
    if (entry->removed) return;
    entry->removed = true;
    entry->removed_at_us = now_us;
    removals_.emplace_back(now_us, key_id);
}

void KeyIndex::forget_before(std::int64_t cutoff_us) {
    while (!removals_.empty() && removals_.front().first < cutoff_us) {
        auto it = keys_.find(removals_.front().second);
        // Not if it was put again (live) or removed again later.
        if (it != keys_.end() && it->second.removed &&
            it->second.removed_at_us == removals_.front().first) {
            keys_.erase(it);
        }
        removals_.pop_front();
    }
}

void KeyIndex::mark_ready() {
    std::unique_lock<std::shared_mutex> lock(mutex_);
    ready_ = true;
}

bool KeyIndex::ready() const {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    return ready_;
}

KeyVerdict KeyIndex::check(const Uuid& key_id, const Uuid& org_id,
                           std::int64_t now_us) const {
    std::optional<Uuid> org = org_of(key_id, now_us);
    if (!org) return KeyVerdict::kUnknownKey;
    return *org == org_id ? KeyVerdict::kKnown : KeyVerdict::kOrgMismatch;
}

std::optional<Uuid> KeyIndex::org_of(const Uuid& key_id,
                                     std::int64_t now_us) const {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    auto it = keys_.find(key_id);
    if (it == keys_.end()) return std::nullopt;
    const Entry& e = it->second;
    if (e.removed && now_us - e.removed_at_us > max_us_) return std::nullopt;
    return e.org_id;
}

std::size_t KeyIndex::size() const {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    return keys_.size();
}

}  // namespace apikey
