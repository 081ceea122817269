// What the usage store last wrote to each rollup row of the current (and
// the previous) bucket: the state its upsert guard expects
// (usage_store_sql.h). Right for a single node; with several, rows another
// node wrote since go through the slower locked path, which tells the cache
// their new state. Entries are updated in place while a batch is prepared,
// so any failed transaction must clear() the cache (a wrong entry only
// costs the slow path, but a cleared one is simply absent).
#pragma once

#include <climits>
#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>

#include "rollup.h"
#include "uuid.h"

namespace apikey {

class RollupCache {
public:
    struct Entry {
        Uuid key_id{};
        std::int64_t bucket_us = 0;
        std::string endpoint;
        std::string method;
        std::uint64_t requests = 0;
        LatencyHistogram hist;

        bool same_row(const RollupRow& r) const {
            return bucket_us == r.bucket_us && key_id == r.key_id &&
                   endpoint == r.endpoint && method == r.method;
        }
    };

    RollupCache(std::int64_t bucket_us, std::size_t max_entries)
        : bucket_us_(bucket_us), max_entries_(max_entries) {}

    // The entry of the row, empty (requests 0) if unknown. Stays valid
    // until trim() or clear().
    Entry* get(const RollupRow& r);
    // After a commit: forgets buckets older than the previous one, and
    // everything if more than max_entries are left.
    void trim();
    void clear();
    std::size_t size() const { return map_.size(); }

private:
    static std::uint64_t hash_of(const RollupRow& r);

    std::int64_t bucket_us_;
    std::size_t max_entries_;
    std::int64_t newest_us_ = INT64_MIN;
    std::int64_t trimmed_for_us_ = INT64_MIN;
    std::unordered_map<std::uint64_t, Entry> map_;
};

}  // namespace apikey
