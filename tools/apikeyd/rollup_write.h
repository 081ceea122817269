// Writes a batch's rollup (hourly and daily rows, api_keys counters)
// inside the caller's open transaction. Rollup histograms are merged here,
// not in SQL: the RollupCaches remember what was last written to each row,
// and the upsert (usage_store_sql.h) writes absolute values under a guard
// that detects writes by other nodes; rows it refuses are merged again
// under their lock. docs/data-model.md has the details.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "pg.h"
#include "pg_binary.h"
#include "pg_pipeline.h"
#include "rollup.h"
#include "rollup_cache.h"

namespace apikey {

// v as a bigint, saturated.
inline std::int64_t clamp_i64(std::uint64_t v) {
    return v > static_cast<std::uint64_t>(INT64_MAX)
               ? INT64_MAX
               : static_cast<std::int64_t>(v);
}

class RollupWrite {
public:
    // Encodes the statements (do it while the server works on something
    // else) and advances the caches' entries to what the rows hold after
    // them; a failed transaction must clear both caches.
    RollupWrite(const BatchRollup& rollup, RollupCache* hourly,
                RollupCache* daily);

    // Queues the statements: hourly and daily upserts, api_keys locks and
    // update (none for an empty rollup). Returns how many.
    int send(pg::Pipeline* pipe) const;
    // With the results of those statements, results[first...]: merges rows
    // written elsewhere, repairs rows deleted while cached. Returns the
    // api_keys rows updated (keys deleted since are not). Throws pg::Error.
    std::size_t finish(pg::Connection& conn,
                       const std::vector<pg::Result>& results,
                       std::size_t first);
    // After COMMIT: forgets old buckets, or everything a repair made stale.
    void committed();

    // One table's encoded upsert (rollup_write.cpp's helpers fill it).
    struct Table {
        std::vector<pg::BinaryParam> params;
        std::vector<RollupCache::Entry*> entries;  // per row
        bool stale = false;  // a repair ran: the cache cannot name its rows
    };

private:
    const BatchRollup& rollup_;
    RollupCache* hourly_cache_;
    RollupCache* daily_cache_;
    Table hourly_, daily_;
    std::vector<pg::BinaryParam> keys_;
};

}  // namespace apikey
