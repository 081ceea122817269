// The drainer's side of distinct_ips: merges the client-address hashes of
// committed aggregation buffers (usage_ipset.h) into the per-(key, UTC
// day) HyperLogLog sketches of api_key_distinct_ips (hll_sketch.h), inside
// the transaction that commits the buffers' counters.
//
// Race-free across apikeyd nodes: the (key, day) rows are created first
// (INSERT ... ON CONFLICT DO NOTHING), then locked (SELECT ... FOR UPDATE),
// both in (key, day) order, merged here and written back only where a
// register grew; so a buffer committed twice, or by two nodes at once,
// never counts an address twice.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "pg.h"

namespace apikey {

struct AggregateBuffer;

// Days whose sketches are kept (distinct_ips_7d merges the last 7); older
// ones keep their estimate only. Addresses of days outside [today - this,
// today + 1] (a clock far off, a corrupt buffer) are not counted.
inline constexpr int kDistinctIpsSketchDays = 8;

// Merges the buffers' addresses; returns how many (key, day) rows grew.
// Throws pg::Error (the caller rolls back).
std::size_t write_distinct_ips(pg::Connection& conn,
                               const std::vector<const AggregateBuffer*>& buffers,
                               std::int64_t now_us);

// Drops the sketches of days more than kDistinctIpsSketchDays before
// now_us's; returns how many. Throws pg::Error.
std::size_t prune_distinct_ip_sketches(pg::Connection& conn,
                                       std::int64_t now_us);

}  // namespace apikey
