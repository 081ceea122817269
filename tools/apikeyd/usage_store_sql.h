// The usage store's SQL (usage_store.cpp holds the logic around it): the
// statements it prepares on each connection, the raw rows' COPY and the
// session setup. docs/data-model.md describes the tables.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace apikey::usage_sql {

// A statement prepared once per connection under `name`.
struct Statement {
    std::string name;
    std::string sql;
};

// --- ring positions (usage_offsets), this node's rows ----------------------
// $1 node, $2 slots (int[]), $3 generations (bigint[]).

// Rows for positions seen for the first time (next_sequence 0).
extern const Statement kInsertOffsets;
// The batch's rows, locked in (slot, generation) order: slot, generation,
// next_sequence.
extern const Statement kLockOffsets;
// $4 next sequences (bigint[]): moves positions forward, never back.
extern const Statement kAdvanceOffsets;
// $1 node: every position, for resuming after a restart.
extern const Statement kSelectPositions;
// $1 node, $2 before (timestamptz), $3 / $4 slots / generations still
// mapped: deletes the rows of usage_offsets and usage_aggregate_offsets
// nobody needs any more (last advanced before the retention window, ring
// not mapped); returns how many.
extern const Statement kPruneOffsets;

// --- aggregation-buffer epochs (usage_aggregate_offsets), this node's rows --
// $1 node, $2 slots (int[]), $3 generations (bigint[]).

// The rows that exist, locked in (slot, generation) order: slot,
// generation, epoch (the last one committed). One apikeyd per node, so a
// missing row cannot appear under us.
extern const Statement kLockAggregateOffsets;
// $4 epochs (bigint[]): inserts or moves forward, never back.
extern const Statement kAdvanceAggregateOffsets;

// --- api_keys ----------------------------------------------------------------

// $1 ids: row locks in id order first (the same on every node, so two
// nodes wait for each other, never deadlock); NO KEY UPDATE so that a
// concurrent key rotation's foreign-key check is not blocked.
extern const Statement kLockKeys;
// $1 ids, $2 last-used times, $3 their IPs, $4 request counts.
extern const Statement kUpdateKeys;

// --- rollups -----------------------------------------------------------------

// Statements for one rollup table. Merging latency histograms bucket by
// bucket is the expensive part of an upsert when done in SQL, so apikeyd
// merges them itself: it knows what it wrote last (RollupCache), computes
// the new histograms, and upserts them with a guard that holds only if
// nobody changed the row since (requests only grows, and every writer keeps
// requests = status_2xx + ... + status_other). Rows the guard refuses are
// locked by then; they are read again and updated with a plain UPDATE.
// Rows go in primary-key order (bytewise text), the same on every node, so
// two nodes upserting overlapping rows wait for each other, never deadlock.
//
// The upsert inserts absolute requests and histogram: right for a new row,
// wrong for a row the cache remembers but that was deleted since. Such a row
// is the only kind whose requests differ from its status counts ("broken"),
// and `repair` puts it right in the same transaction.
//
// Each takes the rows' primary keys first: $1 key ids, $2 buckets, $3
// endpoints, $4 methods.
struct RollupSql {
    // $5 org ids, $6 requests (absolute), $7..$11 status counts, $12 ms
    // sums, $13 histograms (text): count(*) written, count(*) broken.
    Statement upsert;
    // ord (1-based position in the arrays), requests, latency_hist, and
    // whether this transaction wrote the row.
    Statement select_mine;
    // $5 requests, $6..$10 status counts, $11 ms sums (increments), $12
    // histograms (absolute).
    Statement update;
    // $5 histograms (this batch's increments): sets the broken rows this
    // transaction wrote to their status counts and these histograms.
    Statement repair;
};

const RollupSql& hourly();  // api_key_usage_hourly
const RollupSql& daily();   // api_key_usage_daily

// Every statement above, to prepare on a new connection.
std::vector<const Statement*> all_statements();

// --- raw rows and session ----------------------------------------------------

// COPY of the raw rows in binary format, kRawColumns fields per row.
extern const char* const kCopyRaw;
inline constexpr std::uint16_t kRawColumns = 15;

// $1 node: a session lock, held as long as the connection (one apikeyd per
// node). The key is 64 bits of a hash of the node name.
extern const char* const kLockNode;

// The server drops the session (and its lock) of a host that vanished
// within about a minute, not after the kernel's two-hour default; no effect
// over a unix socket.
extern const char* const kKeepalives;

}  // namespace apikey::usage_sql
