// Commits usage to PostgreSQL, exactly once, in two streams:
// - usage records: raw rows (COPY, binary format) into api_key_usage and
//   the node's ring offsets, in one transaction;
// - aggregation buffers: hourly and daily rollups, coalesced api_keys
//   request_count and last-used updates (rollup_write.h) and the buffers'
//   epochs, in one transaction.
// docs/data-model.md describes the tables.
//
// Exactly once: usage_offsets holds, per (node, slot, generation), the next
// sequence not yet committed. commit() locks those rows first and drops
// every record below them, so a batch retried after a crash, a lost COMMIT
// acknowledgement or a spool replay is not counted twice. Consequence for
// the caller: per (slot, generation), commit records in sequence order -
// replay the spool before committing newer records of the same ring slot,
// or the older ones are taken for duplicates. usage_aggregate_offsets holds
// the last epoch committed per (node, slot, generation), and
// commit_aggregates() skips a buffer at or below it in the same way.
//
// One UsageStore per thread; it owns one connection (statements prepared
// on connect, so the schema must be migrated first). That connection holds
// a session advisory lock on the node name: two apikeyd with the same
// --node would take each other's records for duplicates.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "config.h"
#include "partitions.h"
#include "pg.h"
#include "usage_agg.h"
#include "usage_ipset.h"
#include "usage_record.h"
#include "uuid.h"

namespace apikey {

class RollupCache;

// Another apikeyd's connection holds this node's lock.
class NodeInUse : public pg::Error {
public:
    using pg::Error::Error;
};

struct SlotPosition {
    std::uint32_t slot;
    std::uint64_t generation;
    std::uint64_t next_sequence;
};

struct CommitStats {
    // Records committed: stored raw, unless raw_events is off or
    // raw_skipped says otherwise.
    std::size_t inserted = 0;
    // Records below the committed position of their ring slot: dropped.
    std::size_t duplicates = 0;
    // Of `inserted`, records without a raw row because their month lies
    // outside the partition window (past retention, or a clock far ahead).
    std::size_t raw_skipped = 0;
    // Records not stored, only their ring position committed: a result
    // that is not a known key (the drainer should not send those), or a
    // time outside 2000..2200 (a broken clock or a corrupt record).
    std::size_t ignored = 0;
};

// One collected aggregation buffer: its identity (with the store's node)
// and the entries of known keys, orgs[i] being the org of entries[i]'s key
// in apikeyd's key index.
struct AggregateBuffer {
    std::uint32_t slot = 0;
    std::uint64_t generation = 0;
    std::uint64_t epoch = 0;
    std::vector<AggregateEntry> entries;
    std::vector<Uuid> orgs;
    // Its client-address set (usage_ipset.h), of known keys, with their
    // orgs.
    std::vector<IpSetEntry> ips;
    std::vector<Uuid> ip_orgs;
};

struct AggregateCommitStats {
    std::size_t buffers = 0;     // committed
    std::size_t duplicates = 0;  // committed before: skipped
    std::size_t entries = 0;     // entries rolled up
    std::uint64_t requests = 0;  // the requests they count
    // Entries not stored: a time outside 2000..2200 or an impossible count
    // (a corrupt buffer).
    std::size_t ignored = 0;
    std::size_t keys_touched = 0;  // api_keys rows updated
    std::size_t distinct_ip_days = 0;  // (key, day) sketches that grew
};

class UsageStore {
public:
    // Does not connect yet. Throws std::invalid_argument without a node
    // name (every node's offsets would collide).
    explicit UsageStore(const DaemonConfig& config);
    ~UsageStore();
    UsageStore(const UsageStore&) = delete;
    UsageStore& operator=(const UsageStore&) = delete;

    // Commits one batch in one transaction (connecting first if needed).
    // On any error: rolls back, drops the connection and throws pg::Error;
    // nothing of the batch is committed, and the caller may spool it and
    // retry it later as is.
    CommitStats commit(const std::vector<UsageRecord>& records);

    // Commits aggregation buffers in one transaction: locks their
    // usage_aggregate_offsets rows, skips the buffers committed already,
    // upserts the rollups and api_keys counters of the rest and stores
    // their epochs. Errors as commit(); clear a buffer only once this
    // returned.
    AggregateCommitStats commit_aggregates(
        const std::vector<AggregateBuffer>& buffers);

    // This node's committed positions, for resuming after a restart.
    // Throws pg::Error (and drops the connection).
    std::vector<SlotPosition> committed_positions();

    // Creates the partitions of the current month (of now_us) and the next
    // two if missing, drops those entirely before the retention window, and
    // appends their names to created / dropped (either may be null). Call at
    // start and hourly. Throws pg::Error (and drops the connection).
    void maintain_partitions(std::int64_t now_us,
                             std::vector<std::string>* created,
                             std::vector<std::string>* dropped);

    // Deletes this node's usage_offsets and usage_aggregate_offsets rows
    // last advanced before `before_us`, except those of the (slot,
    // generation) in `live` (slots still in a mapped segment). Returns how
    // many were deleted. Throws pg::Error (and drops the connection).
    std::size_t prune_offsets(
        std::int64_t before_us,
        const std::vector<std::pair<std::uint32_t, std::uint64_t>>& live);

    // Connects (taking the node's lock) unless connected. Throws NodeInUse
    // or pg::Error.
    void connect();
    bool connected() const;
    void disconnect();

private:
    pg::Connection& connection();
    void abandon() noexcept;
    CommitStats commit_batch(const std::vector<UsageRecord>& records);
    AggregateCommitStats commit_aggregate_batch(
        const std::vector<AggregateBuffer>& buffers);
    // Runs fn; on any failure drops the connection (the next call
    // reconnects) and throws pg::Error, so callers see one error type.
    template <typename Fn>
    auto or_abandon(Fn&& fn) -> decltype(fn()) {
        try {
            return fn();
        } catch (const pg::Error&) {
            abandon();
            throw;
        } catch (const std::exception& e) {
            abandon();
            throw pg::Error(std::string("usage store: ") + e.what());
        }
    }
    std::size_t ensure_partitions_for(const std::vector<UsageRecord>& records,
                                      MonthIndex current);

    std::string db_;
    std::string node_;
    bool raw_events_;
    int retention_months_;
    std::unique_ptr<pg::Connection> conn_;
    std::set<MonthIndex> partitions_;  // known to exist on this connection
    std::unique_ptr<RollupCache> hourly_cache_;
    std::unique_ptr<RollupCache> daily_cache_;
};

}  // namespace apikey
