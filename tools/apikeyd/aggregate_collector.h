// Collects the aggregation buffers nginx workers fill in the usage segment
// (shared/usage_agg.h) and commits them exactly once. Per slot: the
// worker's active buffer is closed (the worker moves to the other one),
// read once the worker no longer writes in it, its entries of keys in
// apikeyd's key index committed together with the buffer's identity
// (node, slot, generation, epoch), and only then cleared. A closed buffer
// found at start is committed (or found committed already) and cleared
// before the slot's next one is closed.
//
// While PostgreSQL is down a read buffer stays closed (and its entries
// here, read once); the worker keeps aggregating into the other one, so
// the outage covered is the aggregation space, not the rings'.
#pragma once

#include <cstdint>
#include <map>
#include <utility>
#include <vector>

#include "drainer.h"
#include "key_index.h"
#include "usage_ring.h"
#include "usage_store.h"

namespace apikey {

// How often an owned slot's active buffer is closed and collected: a
// request shows in the rollups within about a second.
inline constexpr std::int64_t kAggregateEveryUs = 250000;
// Aggregates are committed on the drainer's thread, between batches of raw
// records. When commits are slow (traffic spread over tens of thousands of
// key x endpoint x method entries per collection), buffers are closed only
// this many times the last commit's duration apart: commits then take at
// most about a quarter of the thread, and a longer collection holds more
// requests per entry, not more entries. At most kAggregateMaxEveryUs
// apart: one commit slowed by a lock must not hold the rollups back long.
inline constexpr std::int64_t kAggregateSlowCommitFactor = 3;
inline constexpr std::int64_t kAggregateMaxEveryUs = 1500000;

class AggregateCollector {
public:
    AggregateCollector(UsageStore* store, KeyIndex* keys, DrainerStats* stats)
        : store_(store), keys_(keys), stats_(stats) {}

    // One pass over a segment's slots: closes the active buffer of each
    // slot that is due (every kAggregateEveryUs; at once when retired) and
    // has entries, and reads every closed buffer the worker has left.
    // Returns how many entries were rejected (key not in the index).
    std::size_t collect(UsageSegment* seg, std::int64_t now_us);
    // Commits what was read and clears those buffers. False when nothing
    // could be committed (PostgreSQL unavailable: the buffers stay closed
    // and are retried from memory). Throws NodeInUse.
    bool commit(std::int64_t now_us);

    // When the oldest buffer not read yet was opened: every entry written
    // before it has been read (and its key checked).
    std::int64_t unread_since_us(std::int64_t now_us) const;
    // The segment is unmapped: forget its slots.
    void forget(const UsageSegment* seg);

private:
    struct SlotState {
        std::int64_t next_close_us = 0;
        std::int64_t active_since_us = 0;  // the active buffer opened
        std::int64_t closed_since_us = 0;  // the closed one opened
        bool closed_unread = false;        // a closed buffer, not read yet
        bool read = false;                 // the closed one is in pending_
    };
    using SlotKey = std::pair<const UsageSegment*, std::uint32_t>;
    struct Pending {
        UsageSegment* seg;
        AggregateBuffer buffer;
    };

    std::size_t read_closed(UsageSegment* seg, std::uint32_t slot,
                            std::uint64_t epoch, std::int64_t now_us);
    std::int64_t close_every_us() const;

    UsageStore* store_;
    KeyIndex* keys_;
    DrainerStats* stats_;
    std::map<SlotKey, SlotState> slots_;
    std::vector<Pending> pending_;
    std::int64_t next_commit_us_ = 0;
    std::int64_t last_commit_us_ = 0;  // how long the last commit took
    bool db_down_logged_ = false;
};

}  // namespace apikey
