#include "usage_store_sql.h"

namespace apikey::usage_sql {
namespace {

// A positions table's rows of the node for the (slot, generation) pairs
// given, locked in that order: slot, generation, `column`.
std::string lock_positions(const std::string& table,
                           const std::string& column) {
    return "SELECT o.slot, o.generation, o." + column + "\n"
           "  FROM " + table + " AS o\n"
           "  JOIN unnest($2::int[], $3::bigint[]) AS u(slot, generation)\n"
           "    ON o.slot = u.slot AND o.generation = u.generation\n"
           " WHERE o.node = $1::text\n"
           " ORDER BY o.slot, o.generation\n"
           "   FOR UPDATE OF o";
}

// Deletes the node's rows last advanced before $2 whose pair is not in
// `live` (a CTE of the pairs still mapped).
std::string prune_positions(const std::string& table) {
    return "DELETE FROM " + table + " AS o\n"
           " WHERE o.node = $1::text AND o.updated_at < $2::timestamptz\n"
           "   AND NOT EXISTS (SELECT 1 FROM live AS u\n"
           "                    WHERE u.slot = o.slot AND "
           "u.generation = o.generation)\n"
           "RETURNING 1";
}

RollupSql make_rollup_sql(const std::string& table) {
    const std::string status_sum =
        "t.status_2xx + t.status_3xx + t.status_4xx + t.status_5xx + "
        "t.status_other";
    const std::string key_match =
        "t.key_id = u.key_id AND t.bucket = u.bucket AND "
        "t.endpoint = u.endpoint AND t.method = u.method";
    RollupSql sql;
    sql.upsert.name = table + "_upsert";
    sql.select_mine.name = table + "_select_mine";
    sql.update.name = table + "_update";
    sql.repair.name = table + "_repair";
    sql.upsert.sql =
        "WITH w AS (\n"
        "INSERT INTO " + table + " AS t (org_id, key_id, bucket, endpoint, "
        "method, requests, status_2xx, status_3xx, status_4xx, status_5xx, "
        "status_other, response_time_ms_sum, latency_hist)\n"
        "SELECT u.org_id, u.key_id, u.bucket, u.endpoint, u.method, "
        "u.requests, u.s2, u.s3, u.s4, u.s5, u.so, u.ms, u.hist::bigint[]\n"
        "  FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], "
        "$5::uuid[], $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], "
        "$10::bigint[], $11::bigint[], $12::float8[], $13::text[])\n"
        "       AS u(key_id, bucket, endpoint, method, org_id, requests, s2, "
        "s3, s4, s5, so, ms, hist)\n"
        " ORDER BY u.key_id, u.bucket, u.endpoint COLLATE \"C\", "
        "u.method COLLATE \"C\"\n"
        "ON CONFLICT (key_id, bucket, endpoint, method) DO UPDATE SET\n"
        "    requests = EXCLUDED.requests,\n"
        "    status_2xx = t.status_2xx + EXCLUDED.status_2xx,\n"
        "    status_3xx = t.status_3xx + EXCLUDED.status_3xx,\n"
        "    status_4xx = t.status_4xx + EXCLUDED.status_4xx,\n"
        "    status_5xx = t.status_5xx + EXCLUDED.status_5xx,\n"
        "    status_other = t.status_other + EXCLUDED.status_other,\n"
        "    response_time_ms_sum = t.response_time_ms_sum + "
        "EXCLUDED.response_time_ms_sum,\n"
        "    latency_hist = EXCLUDED.latency_hist\n"
        "  WHERE t.requests + EXCLUDED.status_2xx + EXCLUDED.status_3xx + "
        "EXCLUDED.status_4xx + EXCLUDED.status_5xx + EXCLUDED.status_other "
        "= EXCLUDED.requests\n"
        "RETURNING t.requests <> " + status_sum + " AS broken)\n"
        "SELECT count(*), count(*) FILTER (WHERE broken) FROM w";
    sql.select_mine.sql =
        "SELECT u.ord, t.requests, t.latency_hist, "
        "t.xmin = pg_current_xact_id()::xid\n"
        "  FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[]) "
        "WITH ORDINALITY AS u(key_id, bucket, endpoint, method, ord)\n"
        "  JOIN " + table + " AS t ON " + key_match;
    sql.update.sql =
        "UPDATE " + table + " AS t SET\n"
        "    requests = t.requests + u.requests,\n"
        "    status_2xx = t.status_2xx + u.s2,\n"
        "    status_3xx = t.status_3xx + u.s3,\n"
        "    status_4xx = t.status_4xx + u.s4,\n"
        "    status_5xx = t.status_5xx + u.s5,\n"
        "    status_other = t.status_other + u.so,\n"
        "    response_time_ms_sum = t.response_time_ms_sum + u.ms,\n"
        "    latency_hist = u.hist::bigint[]\n"
        "  FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], "
        "$5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], "
        "$10::bigint[], $11::float8[], $12::text[])\n"
        "       AS u(key_id, bucket, endpoint, method, requests, s2, s3, s4, "
        "s5, so, ms, hist)\n"
        " WHERE " + key_match;
    sql.repair.sql =
        "UPDATE " + table + " AS t SET requests = " + status_sum + ",\n"
        "    latency_hist = u.hist::bigint[]\n"
        "  FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], "
        "$5::text[]) AS u(key_id, bucket, endpoint, method, hist)\n"
        " WHERE " + key_match + "\n"
        "   AND t.xmin = pg_current_xact_id()::xid\n"
        "   AND t.requests <> " + status_sum;
    return sql;
}

}  // namespace

const char* const kCopyRaw =
    "COPY api_key_usage (ts, org_id, key_id, endpoint, method, status_code, "
    "response_time_ms, ip_address, user_agent, bytes_sent, result, node, "
    "slot, generation, sequence) FROM STDIN (FORMAT binary)";

const Statement kInsertOffsets{"apikey_insert_offsets", R"sql(
INSERT INTO usage_offsets (node, slot, generation, next_sequence)
SELECT $1::text, u.slot, u.generation, 0
  FROM unnest($2::int[], $3::bigint[]) AS u(slot, generation)
ON CONFLICT (node, slot, generation) DO NOTHING
)sql"};

const Statement kLockOffsets{"apikey_lock_offsets",
                             lock_positions("usage_offsets", "next_sequence")};

const Statement kAdvanceOffsets{"apikey_advance_offsets", R"sql(
UPDATE usage_offsets AS o
   SET next_sequence = u.next_sequence, updated_at = now()
  FROM unnest($2::int[], $3::bigint[], $4::bigint[])
       AS u(slot, generation, next_sequence)
 WHERE o.node = $1::text AND o.slot = u.slot AND o.generation = u.generation
   AND o.next_sequence < u.next_sequence
)sql"};

const Statement kSelectPositions{"apikey_select_positions", R"sql(
SELECT slot, generation, next_sequence
  FROM usage_offsets
 WHERE node = $1::text
 ORDER BY slot, generation
)sql"};

// Both tables, in one round trip: the same rule for raw and aggregate
// positions.
const Statement kPruneOffsets{
    "apikey_prune_offsets",
    "WITH live AS (SELECT * FROM unnest($3::int[], $4::bigint[]) "
    "AS u(slot, generation)),\n"
    "raw AS (" + prune_positions("usage_offsets") + "),\n"
    "agg AS (" + prune_positions("usage_aggregate_offsets") + ")\n"
    "SELECT (SELECT count(*) FROM raw) + (SELECT count(*) FROM agg)"};

const Statement kLockAggregateOffsets{
    "apikey_lock_aggregate_offsets",
    lock_positions("usage_aggregate_offsets", "epoch")};

const Statement kAdvanceAggregateOffsets{"apikey_advance_aggregate_offsets",
                                         R"sql(
INSERT INTO usage_aggregate_offsets AS o (node, slot, generation, epoch)
SELECT $1::text, u.slot, u.generation, u.epoch
  FROM unnest($2::int[], $3::bigint[], $4::bigint[]) AS u(slot, generation, epoch)
ON CONFLICT (node, slot, generation) DO UPDATE
   SET epoch = EXCLUDED.epoch, updated_at = now()
 WHERE o.epoch < EXCLUDED.epoch
)sql"};

const Statement kLockKeys{"apikey_lock_keys", R"sql(
SELECT 1 FROM api_keys WHERE id = ANY($1::uuid[]) ORDER BY id
   FOR NO KEY UPDATE
)sql"};

const Statement kUpdateKeys{"apikey_update_keys", R"sql(
UPDATE api_keys AS k
   SET last_used_at = greatest(k.last_used_at, u.ts),
       last_used_ip = CASE WHEN k.last_used_at IS NULL OR u.ts > k.last_used_at
                           THEN u.ip ELSE k.last_used_ip END,
       request_count = k.request_count + u.n
  FROM unnest($1::uuid[], $2::timestamptz[], $3::inet[], $4::bigint[])
       AS u(id, ts, ip, n)
 WHERE k.id = u.id
)sql"};

const RollupSql& hourly() {
    static const RollupSql sql = make_rollup_sql("api_key_usage_hourly");
    return sql;
}

const RollupSql& daily() {
    static const RollupSql sql = make_rollup_sql("api_key_usage_daily");
    return sql;
}

std::vector<const Statement*> all_statements() {
    std::vector<const Statement*> all = {
        &kInsertOffsets,         &kLockOffsets,
        &kAdvanceOffsets,        &kSelectPositions,
        &kPruneOffsets,          &kLockAggregateOffsets,
        &kAdvanceAggregateOffsets, &kLockKeys,
        &kUpdateKeys};
    for (const RollupSql* r : {&hourly(), &daily()}) {
        for (const Statement* st :
             {&r->upsert, &r->select_mine, &r->update, &r->repair}) {
            all.push_back(st);
        }
    }
    return all;
}

const char* const kLockNode = R"sql(
SELECT pg_try_advisory_lock(
         ('x' || left(md5('apikeyd node ' || $1), 16))::bit(64)::bigint)
)sql";

const char* const kKeepalives =
    "SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10; "
    "SET tcp_keepalives_count = 3";

}  // namespace apikey::usage_sql
