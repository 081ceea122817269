// Drains the usage rings that nginx workers fill into PostgreSQL, exactly
// once: records are read (not consumed), committed together with the ring
// positions, and only then is each ring's tail advanced. While PostgreSQL is
// unreachable, batches go to the on-disk spool (fsync'd) before the tail
// moves, and are replayed in order when it is back. The workers'
// aggregation buffers, which the rollups and api_keys counters come from,
// are collected in the same loop (aggregate_collector.h).
//
// What a record says about itself is not trusted: its (slot, generation,
// sequence) are those of the ring position it was read from, and it is
// stored only if its key and org are in apikeyd's own key table (KeyIndex).
// One apikeyd per --node and database: the drainer's connection holds an
// advisory lock on the node name, and it does not drain without it.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "config.h"
#include "key_index.h"
#include "usage_ring.h"

namespace apikey {

class AggregateCollector;
class Spool;
class UsageStore;

// Read by /metrics while the drainer runs.
struct DrainerStats {
    std::atomic<std::uint64_t> drained{0};     // records read from rings
    std::atomic<std::uint64_t> committed{0};   // rows committed
    std::atomic<std::uint64_t> duplicates{0};  // skipped on commit (retries)
    std::atomic<std::uint64_t> spooled{0};     // records written to spool
    std::atomic<std::uint64_t> spool_dropped{0};  // spool full
    std::atomic<std::uint64_t> spool_bytes{0};
    std::atomic<std::uint64_t> batches{0};
    std::atomic<std::uint64_t> last_batch_size{0};
    std::atomic<std::uint64_t> last_batch_us{0};
    std::atomic<std::uint64_t> db_errors{0};
    // Not stored: the key is not in the key table, or the org is not its.
    std::atomic<std::uint64_t> rejected_unknown_key{0};
    std::atomic<std::uint64_t> rejected_org_mismatch{0};
    // Aggregation buffers (aggregate_collector.h).
    std::atomic<std::uint64_t> agg_buffers_committed{0};
    std::atomic<std::uint64_t> agg_buffers_duplicate{0};
    std::atomic<std::uint64_t> agg_entries_committed{0};
    std::atomic<std::uint64_t> agg_requests_committed{0};
    std::atomic<std::uint64_t> agg_entries_ignored{0};  // corrupt
    std::atomic<std::uint64_t> agg_rejected_unknown_key{0};
    std::atomic<bool> waiting_for_keys{false};  // no key set known yet
    std::atomic<bool> node_in_use{false};  // another apikeyd has this node
    std::atomic<bool> db_connected{false};
    std::atomic<bool> segment_attached{false};
    std::atomic<std::int64_t> newest_committed_us{0};
};

// One ring as /metrics shows it.
struct RingSnapshot {
    std::int64_t segment;  // the segment's created_at_us: tells files apart
    std::uint32_t slot;
    SlotOwnership state;
    std::uint64_t depth;  // bytes
    std::uint64_t dropped;
    std::uint64_t policy_skipped;  // kept out by apikey_usage_raw
    std::uint64_t unrecorded[static_cast<int>(UnrecordedCounter::kCount)];
    std::uint64_t agg_overflow;            // requests not aggregated
    std::uint64_t agg_label_overflow;      // aggregated under "(other)"
    std::uint64_t agg_histogram_overflow;  // latencies left out
    std::uint64_t agg_ipset_overflow;      // client addresses left out
    bool agg_pending;  // a closed buffer, or entries in the active one
};

struct SegmentSnapshot {
    std::vector<RingSnapshot> rings;
    std::uint64_t unslotted_drops = 0;
};

class Drainer {
public:
    // `keys` (maintained by the key publisher) outlives the drainer, which
    // forgets removed keys in it once it has read their last records.
    Drainer(const DaemonConfig& config, DrainerStats* stats, KeyIndex* keys);
    ~Drainer();

    // Takes this node's lock in PostgreSQL, waiting a few seconds for a
    // previous apikeyd's session to end. False when another apikeyd holds
    // it (the caller should exit); true too when PostgreSQL cannot be
    // reached now (the lock is taken on every connection). Call before run().
    bool claim_node();

    // Runs until `stop` becomes true, then drains once more; never throws.
    void run(const std::atomic<bool>& stop);

    // Thread-safe view of the current segment for /metrics.
    SegmentSnapshot snapshot() const;

private:
    struct Source;  // one mapped segment (the current one, or an old one)
    using SlotKey = std::pair<std::uint32_t, std::uint64_t>;  // slot, gen
    // Where a ring's tail goes once the records read from it are stored.
    struct RingEnd {
        Source* source;
        std::uint32_t slot;
        std::uint64_t position;
        std::size_t count;  // records read (stored or rejected)
    };

    void attach_segments();
    void attach_one(const std::string& path, bool newest);
    void resume_from_database();
    std::size_t drain_once();
    bool keys_known();
    bool node_usable();
    void node_lost();
    void collect(Source& src, std::vector<UsageRecord>* batch,
                 std::vector<RingEnd>* ends);
    bool collect_aggregates();
    bool admit(const UsageRecord& r, std::int64_t now);
    void report_rejections(std::int64_t now);
    bool store_batch(const std::vector<UsageRecord>& batch);
    bool commit_to_database(const std::vector<UsageRecord>& batch);
    void reap_slots(Source& src);
    void retire_dead_owners(Source& src);
    void maintain_partitions();
    void prune_offsets();

    const DaemonConfig& config_;
    DrainerStats* stats_;
    KeyIndex* keys_;
    std::unique_ptr<UsageStore> store_;
    std::unique_ptr<Spool> spool_;
    std::unique_ptr<AggregateCollector> aggregates_;
    // Changed only by the drainer thread, under the mutex; /metrics reads
    // under the mutex, so commits never hold it.
    mutable std::mutex sources_mutex_;
    std::vector<std::unique_ptr<Source>> sources_;  // newest last
    std::map<SlotKey, std::uint64_t> resume_;  // committed next_sequence
    bool resumed_ = false;
    std::int64_t next_attach_us_ = 0;
    std::int64_t next_maintenance_us_ = 0;
    std::int64_t next_prune_us_ = 0;
    std::int64_t next_drop_log_us_ = 0;
    std::uint64_t unlogged_drops_ = 0;
    // The last spool replay turn ran out of time, not of batches.
    bool replay_pending_ = false;
    bool node_in_use_ = false;
    std::int64_t next_node_retry_us_ = 0;
    bool waiting_logged_ = false;
    std::uint64_t unreported_unknown_ = 0;
    std::uint64_t unreported_mismatch_ = 0;
    std::uint64_t unreported_agg_unknown_ = 0;
    std::int64_t next_reject_log_us_ = 0;
};

}  // namespace apikey
