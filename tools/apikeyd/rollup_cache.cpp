#include "rollup_cache.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <functional>
#include <iterator>
#include <string_view>

namespace apikey {

RollupCache::Entry* RollupCache::get(const RollupRow& r) {
    Entry& e = map_[hash_of(r)];
    if (!e.same_row(r)) {
        // New, or a 64-bit hash collision: either way, unknown.
        e.key_id = r.key_id;
        e.bucket_us = r.bucket_us;
        e.endpoint = r.endpoint;
        e.method = r.method;
        e.requests = 0;
        e.hist = LatencyHistogram();
    }
    newest_us_ = std::max(newest_us_, r.bucket_us);
    return &e;
}

void RollupCache::trim() {
    if (newest_us_ > trimmed_for_us_) {
        for (auto it = map_.begin(); it != map_.end();) {
            it = it->second.bucket_us < newest_us_ - bucket_us_
                     ? map_.erase(it)
                     : std::next(it);
        }
        trimmed_for_us_ = newest_us_;
    }
    if (map_.size() > max_entries_) clear();
}

void RollupCache::clear() {
    map_.clear();
    newest_us_ = trimmed_for_us_ = INT64_MIN;
}

std::uint64_t RollupCache::hash_of(const RollupRow& r) {
    std::uint64_t a, b;
    std::memcpy(&a, r.key_id.data(), 8);
    std::memcpy(&b, r.key_id.data() + 8, 8);
    std::uint64_t h =
        (a * 0x9e3779b97f4a7c15ull) ^ (b * 0xc2b2ae3d27d4eb4full);
    h = (h ^ (h >> 29) ^ static_cast<std::uint64_t>(r.bucket_us)) *
        0xff51afd7ed558ccdull;
    h ^= std::hash<std::string_view>{}(r.endpoint) + (h << 6) + (h >> 2);
    h ^= std::hash<std::string_view>{}(r.method) + (h << 6) + (h >> 2);
    return h;
}

}  // namespace apikey
