#include "usage_store.h"

#include <libpq-fe.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <iterator>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "log.h"
#include "rollup.h"
#include "time_util.h"

namespace apikey {
namespace {

// PostgreSQL's binary timestamps count µs from 2000-01-01 UTC.
constexpr std::int64_t kPgEpochOffsetUs = 946684800LL * 1000000;

// Built-in type OIDs (pg_type.dat; fixed across PostgreSQL versions).
constexpr Oid kInt4Oid = 23;
constexpr Oid kInt8Oid = 20;
constexpr Oid kTextOid = 25;
constexpr Oid kFloat8Oid = 701;
constexpr Oid kInetOid = 869;
constexpr Oid kTimestamptzOid = 1184;
constexpr Oid kUuidOid = 2950;

Oid array_oid(Oid elem) {
    switch (elem) {
    case kInt4Oid: return 1007;
    case kInt8Oid: return 1016;
    case kTextOid: return 1009;
    case kFloat8Oid: return 1022;
    case kInetOid: return 1041;
    case kTimestamptzOid: return 1185;
    case kUuidOid: return 2951;
    }
    throw std::logic_error("no array type for this element type");
}

// inet's binary form uses PGSQL_AF_INET = AF_INET (2 on every platform
// PostgreSQL supports) and PGSQL_AF_INET6 = AF_INET + 1.
constexpr unsigned char kPgAfInet = 2;
constexpr unsigned char kPgAfInet6 = 3;

// The binary COPY stream's fixed header: signature, flags, extension length.
constexpr char kCopyHeader[] = "PGCOPY\n\377\r\n\0\0\0\0\0\0\0\0\0";
constexpr std::size_t kCopyHeaderLen = 19;
constexpr std::int16_t kRawColumns = 15;
constexpr std::size_t kCopyChunkBytes = 256 * 1024;
// Rollup rows remembered per table (a few hundred bytes each).
constexpr std::size_t kRollupCacheEntries = 65536;

constexpr const char* kCopyRaw =
    "COPY api_key_usage (ts, org_id, key_id, endpoint, method, status_code, "
    "response_time_ms, ip_address, user_agent, bytes_sent, result, node, "
    "slot, generation, sequence) FROM STDIN (FORMAT binary)";

// A statement prepared once per connection under `name`.
struct Statement {
    std::string name;
    std::string sql;
};

constexpr const char* kInsertOffsets = R"sql(
INSERT INTO usage_offsets (node, slot, generation, next_sequence)
SELECT $1::text, u.slot, u.generation, 0
  FROM unnest($2::int[], $3::bigint[]) AS u(slot, generation)
ON CONFLICT (node, slot, generation) DO NOTHING
)sql";

constexpr const char* kLockOffsets = R"sql(
SELECT o.slot, o.generation, o.next_sequence
  FROM usage_offsets AS o
  JOIN unnest($2::int[], $3::bigint[]) AS u(slot, generation)
    ON o.slot = u.slot AND o.generation = u.generation
 WHERE o.node = $1::text
 ORDER BY o.slot, o.generation
   FOR UPDATE OF o
)sql";

constexpr const char* kAdvanceOffsets = R"sql(
UPDATE usage_offsets AS o
   SET next_sequence = u.next_sequence, updated_at = now()
  FROM unnest($2::int[], $3::bigint[], $4::bigint[])
       AS u(slot, generation, next_sequence)
 WHERE o.node = $1::text AND o.slot = u.slot AND o.generation = u.generation
   AND o.next_sequence < u.next_sequence
)sql";

constexpr const char* kSelectPositions = R"sql(
SELECT slot, generation, next_sequence
  FROM usage_offsets
 WHERE node = $1::text
 ORDER BY slot, generation
)sql";

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
struct RollupSql {
    Statement upsert;
    Statement select_mine;
    Statement update;
    Statement repair;
};

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

const RollupSql& hourly_sql() {
    static const RollupSql sql = make_rollup_sql("api_key_usage_hourly");
    return sql;
}

const RollupSql& daily_sql() {
    static const RollupSql sql = make_rollup_sql("api_key_usage_daily");
    return sql;
}

// Row locks in id order first (same reason as above); NO KEY UPDATE so that
// a concurrent key rotation's foreign-key check is not blocked.
constexpr const char* kLockKeys = R"sql(
SELECT 1 FROM api_keys WHERE id = ANY($1::uuid[]) ORDER BY id
   FOR NO KEY UPDATE
)sql";

constexpr const char* kUpdateKeys = R"sql(
UPDATE api_keys AS k
   SET last_used_at = greatest(k.last_used_at, u.ts),
       last_used_ip = CASE WHEN k.last_used_at IS NULL OR u.ts > k.last_used_at
                           THEN u.ip ELSE k.last_used_ip END,
       request_count = k.request_count + u.n
  FROM unnest($1::uuid[], $2::timestamptz[], $3::inet[], $4::bigint[])
       AS u(id, ts, ip, n)
 WHERE k.id = u.id
)sql";

// This node's usage_offsets rows nobody needs any more: their last
// advance lies before the retention window, and their ring is not mapped.
constexpr const char* kPruneOffsets = R"sql(
DELETE FROM usage_offsets AS o
 WHERE o.node = $1::text AND o.updated_at < $2::timestamptz
   AND NOT EXISTS (SELECT 1
                     FROM unnest($3::int[], $4::bigint[]) AS u(slot, generation)
                    WHERE u.slot = o.slot AND u.generation = o.generation)
)sql";

// A session lock, held as long as the connection: one apikeyd per node.
// The key is 64 bits of a hash of the node name.
constexpr const char* kLockNode = R"sql(
SELECT pg_try_advisory_lock(
         ('x' || left(md5('apikeyd node ' || $1), 16))::bit(64)::bigint)
)sql";

// The server drops the session (and its lock) of a host that vanished
// within about a minute, not after the kernel's two-hour default; no effect
// over a unix socket.
constexpr const char* kKeepalives =
    "SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10; "
    "SET tcp_keepalives_count = 3";

const Statement kStInsertOffsets{"apikey_insert_offsets", kInsertOffsets};
const Statement kStLockOffsets{"apikey_lock_offsets", kLockOffsets};
const Statement kStAdvanceOffsets{"apikey_advance_offsets", kAdvanceOffsets};
const Statement kStSelectPositions{"apikey_select_positions",
                                   kSelectPositions};
const Statement kStPruneOffsets{"apikey_prune_offsets", kPruneOffsets};
const Statement kStLockKeys{"apikey_lock_keys", kLockKeys};
const Statement kStUpdateKeys{"apikey_update_keys", kUpdateKeys};

std::vector<const Statement*> all_statements() {
    std::vector<const Statement*> all = {
        &kStInsertOffsets, &kStLockOffsets, &kStAdvanceOffsets,
        &kStSelectPositions, &kStPruneOffsets, &kStLockKeys,
        &kStUpdateKeys};
    for (const RollupSql* r : {&hourly_sql(), &daily_sql()}) {
        for (const Statement* st :
             {&r->upsert, &r->select_mine, &r->update, &r->repair}) {
            all.push_back(st);
        }
    }
    return all;
}

// --- binary encoding (network byte order) ------------------------------------

void put_u16(std::string* s, std::uint16_t v) {
    char b[2] = {static_cast<char>(v >> 8), static_cast<char>(v)};
    s->append(b, 2);
}

void put_u32(std::string* s, std::uint32_t v) {
    char b[4] = {static_cast<char>(v >> 24), static_cast<char>(v >> 16),
                 static_cast<char>(v >> 8), static_cast<char>(v)};
    s->append(b, 4);
}

void put_u64(std::string* s, std::uint64_t v) {
    put_u32(s, static_cast<std::uint32_t>(v >> 32));
    put_u32(s, static_cast<std::uint32_t>(v));
}

void put_i32(std::string* s, std::int32_t v) {
    put_u32(s, static_cast<std::uint32_t>(v));
}

void put_i64(std::string* s, std::int64_t v) {
    put_u64(s, static_cast<std::uint64_t>(v));
}

void put_f64(std::string* s, double v) {
    std::uint64_t bits;
    std::memcpy(&bits, &v, sizeof(bits));
    put_u64(s, bits);
}

std::int64_t clamp_i64(std::uint64_t v) {
    return v > static_cast<std::uint64_t>(INT64_MAX)
               ? INT64_MAX
               : static_cast<std::int64_t>(v);
}

std::int64_t pg_time(std::int64_t unix_us) {
    return unix_us - kPgEpochOffsetUs;
}

// A field: length, then bytes. Text is sanitized (valid UTF-8, no NUL).
void put_text_field(std::string* s, std::string_view text) {
    if (text_is_clean(text)) {
        put_i32(s, static_cast<std::int32_t>(text.size()));
        s->append(text.data(), text.size());
    } else {
        std::string clean = sanitize_text(text);
        put_i32(s, static_cast<std::int32_t>(clean.size()));
        s->append(clean);
    }
}

// An inet field (with its length) or NULL.
void put_inet_field(std::string* s, IpFamily family, const std::uint8_t* ip) {
    if (family == IpFamily::kV4) {
        put_i32(s, 8);
        const char head[4] = {static_cast<char>(kPgAfInet), 32, 0, 4};
        s->append(head, 4);
        s->append(reinterpret_cast<const char*>(ip), 4);
    } else if (family == IpFamily::kV6) {
        put_i32(s, 20);
        const char head[4] = {static_cast<char>(kPgAfInet6),
                              static_cast<char>(128), 0, 16};
        s->append(head, 4);
        s->append(reinterpret_cast<const char*>(ip), 16);
    } else {
        put_i32(s, -1);
    }
}

// A one-dimensional array parameter in binary form.
class ArrayParam {
public:
    explicit ArrayParam(Oid elem) : elem_(elem) {}

    void add_i32(std::int32_t v) {
        put_i32(&body_, 4);
        put_i32(&body_, v);
        ++count_;
    }
    void add_i64(std::int64_t v) {
        put_i32(&body_, 8);
        put_i64(&body_, v);
        ++count_;
    }
    void add_f64(double v) {
        put_i32(&body_, 8);
        put_f64(&body_, v);
        ++count_;
    }
    void add_time(std::int64_t unix_us) { add_i64(pg_time(unix_us)); }
    void add_uuid(const Uuid& id) {
        put_i32(&body_, 16);
        body_.append(reinterpret_cast<const char*>(id.data()), id.size());
        ++count_;
    }
    void add_text(std::string_view text) {
        put_text_field(&body_, text);
        ++count_;
    }
    // A histogram as its array literal (ASCII: no sanitizing needed).
    void add_hist(const LatencyHistogram& h) {
        const std::size_t at = body_.size();
        put_i32(&body_, 0);
        h.append_pg_array(&body_);
        const auto len = static_cast<std::uint32_t>(body_.size() - at - 4);
        body_[at] = static_cast<char>(len >> 24);
        body_[at + 1] = static_cast<char>(len >> 16);
        body_[at + 2] = static_cast<char>(len >> 8);
        body_[at + 3] = static_cast<char>(len);
        ++count_;
    }
    void add_inet(IpFamily family, const std::uint8_t* ip) {
        if (family != IpFamily::kV4 && family != IpFamily::kV6) {
            has_null_ = true;
        }
        put_inet_field(&body_, family, ip);
        ++count_;
    }

    Oid type() const { return array_oid(elem_); }
    std::string encode() const {
        std::string out;
        out.reserve(20 + body_.size());
        if (count_ == 0) {
            put_i32(&out, 0);  // no dimensions: '{}'
            put_i32(&out, 0);
            put_u32(&out, elem_);
            return out;
        }
        put_i32(&out, 1);
        put_i32(&out, has_null_ ? 1 : 0);
        put_u32(&out, elem_);
        put_i32(&out, static_cast<std::int32_t>(count_));
        put_i32(&out, 1);  // lower bound
        out.append(body_);
        return out;
    }

private:
    Oid elem_;
    std::string body_;
    std::size_t count_ = 0;
    bool has_null_ = false;
};

struct Param {
    Oid type;
    std::string value;  // binary form

    static Param text(std::string_view t) {
        return {kTextOid, std::string(t)};
    }
    static Param time(std::int64_t unix_us) {
        Param p{kTimestamptzOid, {}};
        put_i64(&p.value, pg_time(unix_us));
        return p;
    }
    static Param array(const ArrayParam& a) { return {a.type(), a.encode()}; }
};

[[noreturn]] void throw_pg(PGconn* conn, const PGresult* res) {
    std::string message;
    std::string sqlstate;
    if (res != nullptr) {
        if (const char* m = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY)) {
            message = m;
        }
        if (const char* s = PQresultErrorField(res, PG_DIAG_SQLSTATE)) {
            sqlstate = s;
        }
    }
    if (message.empty()) {
        // libpq's own message can span lines; keep log lines whole.
        bool gap = false;
        for (const char* p = PQerrorMessage(conn); p && *p; ++p) {
            if (*p == '\n' || *p == '\t' || *p == ' ') {
                gap = true;
                continue;
            }
            if (gap && !message.empty()) message.push_back(' ');
            gap = false;
            message.push_back(*p);
        }
    }
    if (message.empty()) message = "unknown libpq error";
    throw pg::Error(message, sqlstate);
}

struct BoundParams {
    std::vector<const char*> values;
    std::vector<int> lengths;
    std::vector<int> formats;

    explicit BoundParams(const std::vector<Param>& params)
        : formats(params.size(), 1) {
        for (const Param& p : params) {
            values.push_back(p.value.data());
            lengths.push_back(static_cast<int>(p.value.size()));
        }
    }
    int count() const { return static_cast<int>(values.size()); }
};

void check_result(PGconn* conn, const pg::Result& res) {
    ExecStatusType st = PQresultStatus(res.get());
    if (res.get() == nullptr ||
        (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)) {
        throw_pg(conn, res.get());
    }
}

// Prepares every statement on a fresh connection. Parameter types come
// from the casts in the SQL.
void prepare_statements(PGconn* conn) {
    for (const Statement* st : all_statements()) {
        pg::Result res(
            PQprepare(conn, st->name.c_str(), st->sql.c_str(), 0, nullptr));
        check_result(conn, res);
    }
}

// Runs a prepared statement with binary parameters and text results.
pg::Result exec_params(PGconn* conn, const Statement& st,
                       const std::vector<Param>& params) {
    BoundParams b(params);
    pg::Result res(PQexecPrepared(conn, st.name.c_str(), b.count(),
                                  b.values.data(), b.lengths.data(),
                                  b.formats.data(), 0));
    check_result(conn, res);
    return res;
}

void exec_simple(PGconn* conn, const char* sql) {
    pg::Result res(PQexec(conn, sql));
    if (res.get() == nullptr || PQresultStatus(res.get()) != PGRES_COMMAND_OK) {
        throw_pg(conn, res.get());
    }
}

std::size_t affected_rows(const pg::Result& res) {
    const char* n = PQcmdTuples(res.get());
    return n && *n ? static_cast<std::size_t>(std::stoull(n)) : 0;
}

// Times a record may sensibly carry; one outside (a broken clock, a corrupt
// ring) would make PostgreSQL reject the whole batch on every retry.
constexpr std::int64_t kMinRecordTimeUs = 946684800LL * 1000000;   // 2000
constexpr std::int64_t kMaxRecordTimeUs = 7258118400LL * 1000000;  // 2200

// A record with a known key and a sane time; the rest only move the ring
// position on.
bool storable(const UsageRecord& r) {
    const bool known_key =
        r.result == AuthResult::kOk || r.result == AuthResult::kExpired ||
        r.result == AuthResult::kRevoked || r.result == AuthResult::kForbidden;
    return known_key && r.time_us >= kMinRecordTimeUs &&
           r.time_us < kMaxRecordTimeUs;
}

// The month of a time, remembering the last month's range (a batch rarely
// spans two).
class MonthCache {
public:
    MonthIndex month(std::int64_t time_us) {
        if (time_us < start_ || time_us >= end_) {
            month_ = month_of_us(time_us);
            start_ = month_start_us(month_);
            end_ = month_start_us(month_ + 1);
        }
        return month_;
    }

private:
    MonthIndex month_ = 0;
    std::int64_t start_ = 1;
    std::int64_t end_ = 0;
};

// Streams rows into a COPY ... FROM STDIN (FORMAT binary).
class CopyIn {
public:
    explicit CopyIn(PGconn* conn) : conn_(conn) {
        pg::Result res(PQexec(conn_, kCopyRaw));
        if (res.get() == nullptr ||
            PQresultStatus(res.get()) != PGRES_COPY_IN) {
            throw_pg(conn_, res.get());
        }
        buf_.reserve(kCopyChunkBytes + 4096);
        buf_.append(kCopyHeader, kCopyHeaderLen);
    }

    std::string* row() {
        if (buf_.size() >= kCopyChunkBytes) send();
        return &buf_;
    }

    // Sends the trailer and ends the data; the server may still be busy
    // with it until wait() returns.
    void end_data() {
        put_u16(&buf_, 0xffff);  // trailer: field count -1
        send();
        if (PQputCopyEnd(conn_, nullptr) != 1) throw_pg(conn_, nullptr);
    }

    void wait() {
        std::string error_message;
        std::string sqlstate;
        bool failed = false;
        while (PGresult* r = PQgetResult(conn_)) {
            pg::Result res(r);
            if (PQresultStatus(r) != PGRES_COMMAND_OK && !failed) {
                failed = true;
                try {
                    throw_pg(conn_, r);
                } catch (const pg::Error& e) {
                    error_message = e.what();
                    sqlstate = e.sqlstate();
                }
            }
        }
        if (failed) throw pg::Error(error_message, sqlstate);
    }

private:
    void send() {
        if (buf_.empty()) return;
        if (PQputCopyData(conn_, buf_.data(), static_cast<int>(buf_.size())) !=
            1) {
            throw_pg(conn_, nullptr);
        }
        buf_.clear();
    }

    PGconn* conn_;
    std::string buf_;
};

// Streams the raw rows of the records whose month has a partition into
// COPY and, between chunks (while the server works on the previous one),
// adds each record to the rollup; runs while_server_finishes() between the
// end of the data and the server's answer. Returns how many rows were left
// out.
std::size_t copy_raw(PGconn* conn, const std::vector<const UsageRecord*>& recs,
                     const std::set<MonthIndex>& partitions,
                     const std::string& node, RollupBuilder* rollup,
                     const std::function<void()>& while_server_finishes) {
    CopyIn copy(conn);
    MonthCache months;
    std::size_t skipped = 0;
    for (const UsageRecord* r : recs) {
        rollup->add(*r);
        if (partitions.count(months.month(r->time_us)) == 0) {
            ++skipped;
            continue;
        }
        std::string* s = copy.row();
        put_u16(s, kRawColumns);
        put_i32(s, 8);
        put_i64(s, pg_time(r->time_us));
        put_i32(s, 16);
        s->append(reinterpret_cast<const char*>(r->org_id), 16);
        put_i32(s, 16);
        s->append(reinterpret_cast<const char*>(r->key_id), 16);
        put_text_field(s, record_endpoint(*r));
        put_text_field(s, record_method(*r));
        put_i32(s, 2);
        put_u16(s, r->status > 32767 ? 32767 : r->status);
        put_i32(s, 8);
        put_f64(s, static_cast<double>(r->response_time_us) / 1000.0);
        put_inet_field(s, r->ip_family, r->ip);
        put_text_field(s, record_user_agent(*r));
        put_i32(s, 8);
        put_i64(s, clamp_i64(r->bytes_sent));
        put_text_field(s, auth_result_name(r->result));
        put_text_field(s, node);
        put_i32(s, 4);
        put_i32(s, static_cast<std::int32_t>(r->slot));
        put_i32(s, 8);
        put_i64(s, clamp_i64(r->generation));
        put_i32(s, 8);
        put_i64(s, clamp_i64(r->sequence));
    }
    copy.end_data();
    while_server_finishes();
    copy.wait();
    return skipped;
}

// Primary keys of the rows, as the first four parameters.
std::vector<Param> key_params(const std::vector<RollupRow>& rows,
                              const std::vector<std::size_t>& which) {
    ArrayParam key(kUuidOid), bucket(kTimestamptzOid), endpoint(kTextOid),
        method(kTextOid);
    for (std::size_t i : which) {
        const RollupRow& r = rows[i];
        key.add_uuid(r.key_id);
        bucket.add_time(r.bucket_us);
        endpoint.add_text(r.endpoint);
        method.add_text(r.method);
    }
    return {Param::array(key), Param::array(bucket), Param::array(endpoint),
            Param::array(method)};
}

struct CurrentRow {
    bool exists = false;
    bool mine = false;  // written by this transaction already
    std::uint64_t requests = 0;
    LatencyHistogram hist;
};

// Reads rows[which[...]] as stored, by position in `which`.
std::vector<CurrentRow> read_current(PGconn* conn, const Statement& st,
                                     const std::vector<RollupRow>& rows,
                                     const std::vector<std::size_t>& which) {
    pg::Result res = exec_params(conn, st, key_params(rows, which));
    std::vector<CurrentRow> current(which.size());
    for (int i = 0; i < res.rows(); ++i) {
        const std::size_t ord = std::stoull(res.get(i, 0));
        if (ord < 1 || ord > which.size()) {
            throw pg::Error("rollup read returned an unknown row");
        }
        CurrentRow& c = current[ord - 1];
        c.exists = true;
        c.requests = std::stoull(res.get(i, 1));
        if (!c.hist.add_pg_array(res.get(i, 2))) {
            throw pg::Error("stored latency_hist is not a histogram");
        }
        c.mine = res.get(i, 3) == "t";
    }
    return current;
}

}  // namespace

// What this store last wrote to each rollup row of the current (and the
// previous) bucket: the state the upsert guard expects. Right for a single
// node; with several, rows another node wrote since go through the slower
// locked path, which tells the cache their new state. Entries are updated
// in place while a batch is prepared, so any failed transaction must clear()
// the cache (a wrong entry only costs the slow path, but a cleared one is
// simply absent).
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
    Entry* get(const RollupRow& r) {
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

    // After a commit: forgets buckets older than the previous one.
    void trim() {
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

    void clear() {
        map_.clear();
        newest_us_ = trimmed_for_us_ = INT64_MIN;
    }

private:
    static std::uint64_t hash_of(const RollupRow& r) {
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

    std::int64_t bucket_us_;
    std::size_t max_entries_;
    std::int64_t newest_us_ = INT64_MIN;
    std::int64_t trimmed_for_us_ = INT64_MIN;
    std::unordered_map<std::uint64_t, Entry> map_;
};

namespace {

// One table's upsert, encoded ahead (while the server still works on the
// COPY). Advances the cache entries of its rows to what they hold after it
// if the guard holds.
struct RollupWrite {
    std::vector<Param> params;
    std::vector<RollupCache::Entry*> entries;  // per row
};

RollupWrite prepare_rollup(const std::vector<RollupRow>& rows,
                           RollupCache* cache) {
    RollupWrite w;
    std::vector<std::size_t> all(rows.size());
    for (std::size_t i = 0; i < all.size(); ++i) all[i] = i;
    w.params = key_params(rows, all);
    w.entries.reserve(rows.size());
    ArrayParam org(kUuidOid), requests(kInt8Oid), s2(kInt8Oid), s3(kInt8Oid),
        s4(kInt8Oid), s5(kInt8Oid), so(kInt8Oid), ms(kFloat8Oid),
        hist(kTextOid);
    for (const RollupRow& r : rows) {
        RollupCache::Entry* e = cache->get(r);
        e->requests += r.requests;
        e->hist.merge(r.latency_hist);
        w.entries.push_back(e);
        org.add_uuid(r.org_id);
        // Absolute: what the row holds after this batch if nobody else
        // wrote it since (the guard checks exactly that).
        requests.add_i64(clamp_i64(e->requests));
        s2.add_i64(clamp_i64(r.status_2xx));
        s3.add_i64(clamp_i64(r.status_3xx));
        s4.add_i64(clamp_i64(r.status_4xx));
        s5.add_i64(clamp_i64(r.status_5xx));
        so.add_i64(clamp_i64(r.status_other));
        ms.add_f64(r.response_time_ms_sum());
        hist.add_hist(e->hist);
    }
    for (const ArrayParam* a : {&org, &requests, &s2, &s3, &s4, &s5, &so, &ms,
                                &hist}) {
        w.params.push_back(Param::array(*a));
    }
    return w;
}

// After the upsert: rows the guard refused (written elsewhere since we last
// did, or never seen by us) are locked by us now; read them and add this
// batch's increment. Rows the cache remembered but that were deleted since
// got re-inserted with old totals ("broken"): give them just the increment,
// and set *stale (the cache cannot name them).
void finish_rollup(PGconn* conn, const RollupSql& sql,
                   const std::vector<RollupRow>& rows, const pg::Result& upsert,
                   const RollupWrite& write, bool* stale) {
    const std::size_t done = std::stoull(upsert.get(0, 0));
    const std::size_t broken = std::stoull(upsert.get(0, 1));
    std::vector<std::size_t> all(rows.size());
    for (std::size_t i = 0; i < all.size(); ++i) all[i] = i;

    if (done < rows.size()) {
        std::vector<CurrentRow> now =
            read_current(conn, sql.select_mine, rows, all);
        std::vector<std::size_t> retry;
        for (std::size_t i = 0; i < now.size(); ++i) {
            if (!now[i].exists) {
                throw pg::Error("rollup row vanished under a lock");
            }
            if (!now[i].mine) retry.push_back(i);
        }
        std::vector<Param> update = key_params(rows, retry);
        ArrayParam d_requests(kInt8Oid), d2(kInt8Oid), d3(kInt8Oid),
            d4(kInt8Oid), d5(kInt8Oid), d_other(kInt8Oid), d_ms(kFloat8Oid),
            d_hist(kTextOid);
        for (std::size_t i : retry) {
            const RollupRow& r = rows[i];
            RollupCache::Entry& next = *write.entries[i];
            next.requests = now[i].requests + r.requests;
            next.hist = std::move(now[i].hist);
            next.hist.merge(r.latency_hist);
            d_requests.add_i64(clamp_i64(r.requests));
            d2.add_i64(clamp_i64(r.status_2xx));
            d3.add_i64(clamp_i64(r.status_3xx));
            d4.add_i64(clamp_i64(r.status_4xx));
            d5.add_i64(clamp_i64(r.status_5xx));
            d_other.add_i64(clamp_i64(r.status_other));
            d_ms.add_f64(r.response_time_ms_sum());
            d_hist.add_hist(next.hist);
        }
        for (const ArrayParam* a :
             {&d_requests, &d2, &d3, &d4, &d5, &d_other, &d_ms, &d_hist}) {
            update.push_back(Param::array(*a));
        }
        pg::Result updated = exec_params(conn, sql.update, update);
        if (affected_rows(updated) != retry.size()) {
            throw pg::Error("rollup rows changed under a lock");
        }
        log_debug("usage store: " + std::to_string(retry.size()) +
                  " rollup rows were written elsewhere; merged under lock");
    }

    if (broken > 0) {
        std::vector<Param> repair = key_params(rows, all);
        ArrayParam delta(kTextOid);
        for (const RollupRow& r : rows) {
            delta.add_hist(r.latency_hist);
        }
        repair.push_back(Param::array(delta));
        pg::Result fixed = exec_params(conn, sql.repair, repair);
        if (affected_rows(fixed) != broken) {
            throw pg::Error("could not repair re-inserted rollup rows");
        }
        log_info("usage store: " + std::to_string(broken) +
                 " rollup rows were deleted while cached; re-created");
        *stale = true;
    }
}

std::vector<Param> key_update_params(const std::vector<KeyUsage>& keys) {
    ArrayParam ids(kUuidOid), ts(kTimestamptzOid), ip(kInetOid), n(kInt8Oid);
    for (const KeyUsage& k : keys) {
        ids.add_uuid(k.key_id);
        ts.add_time(k.last_used_us);
        ip.add_inet(k.ip_family, k.ip.data());
        n.add_i64(clamp_i64(k.requests));
    }
    return {Param::array(ids), Param::array(ts), Param::array(ip),
            Param::array(n)};
}

// Statements sent back to back in one round trip (libpq pipeline mode);
// results come back in order. Any error is thrown once all are in.
class Pipeline {
public:
    explicit Pipeline(PGconn* conn) : conn_(conn) {}
    ~Pipeline() {
        if (PQpipelineStatus(conn_) != PQ_PIPELINE_OFF) {
            PQexitPipelineMode(conn_);
        }
    }

    void send(const Statement& st, const std::vector<Param>& params) {
        enter();
        BoundParams b(params);
        if (PQsendQueryPrepared(conn_, st.name.c_str(), b.count(),
                                b.values.data(), b.lengths.data(),
                                b.formats.data(), 0) != 1) {
            throw_pg(conn_, nullptr);
        }
        ++queued_;
    }

    void send_sql(const char* sql) {
        enter();
        if (PQsendQueryParams(conn_, sql, 0, nullptr, nullptr, nullptr,
                              nullptr, 0) != 1) {
            throw_pg(conn_, nullptr);
        }
        ++queued_;
    }

    int queued() const { return queued_; }

    std::vector<pg::Result> run() {
        if (PQpipelineSync(conn_) != 1) throw_pg(conn_, nullptr);
        std::vector<pg::Result> results;
        std::optional<pg::Error> error;
        for (int i = 0; i < queued_; ++i) {
            pg::Result res(PQgetResult(conn_));
            ExecStatusType st = PQresultStatus(res.get());
            if (res.get() == nullptr) throw_pg(conn_, nullptr);
            if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && !error) {
                try {
                    throw_pg(conn_, res.get());
                } catch (const pg::Error& e) {
                    error = e;
                }
            }
            results.push_back(std::move(res));
            // Each statement's results end with a NULL.
            while (PGresult* extra = PQgetResult(conn_)) PQclear(extra);
        }
        pg::Result sync(PQgetResult(conn_));
        if (PQresultStatus(sync.get()) != PGRES_PIPELINE_SYNC && !error) {
            throw_pg(conn_, sync.get());
        }
        if (PQexitPipelineMode(conn_) != 1 && !error) {
            throw_pg(conn_, nullptr);
        }
        queued_ = 0;
        if (error) throw *error;
        return results;
    }

private:
    void enter() {
        if (queued_ == 0 && PQenterPipelineMode(conn_) != 1) {
            throw_pg(conn_, nullptr);
        }
    }

    PGconn* conn_;
    int queued_ = 0;
};

}  // namespace

UsageStore::UsageStore(const DaemonConfig& config)
    : db_(config.db),
      node_(sanitize_text(config.node)),
      raw_events_(config.raw_events),
      retention_months_(config.retention_months),
      hourly_cache_(std::make_unique<RollupCache>(kUsPerHour,
                                                  kRollupCacheEntries)),
      daily_cache_(std::make_unique<RollupCache>(kUsPerDay,
                                                 kRollupCacheEntries)) {
    if (node_.empty()) {
        throw std::invalid_argument("usage store: node name is empty");
    }
}

UsageStore::~UsageStore() = default;

bool UsageStore::connected() const { return conn_ && conn_->ok(); }

void UsageStore::disconnect() {
    conn_.reset();
    partitions_.clear();
}

pg::Connection& UsageStore::connection() {
    if (conn_ && !conn_->ok()) disconnect();
    if (!conn_) {
        auto conn = std::make_unique<pg::Connection>(db_, "apikeyd");
        // Text goes out as UTF-8 whatever the environment says.
        conn->exec("SET client_encoding = 'UTF8'");
        conn->exec_script(kKeepalives);
        if (conn->exec(kLockNode, {node_}).get(0, 0) != "t") {
            throw NodeInUse("node \"" + node_ +
                            "\" is in use by another apikeyd connected to "
                            "this database (each host needs its own --node)");
        }
        prepare_statements(conn->get());
        if (raw_events_) {
            std::vector<MonthIndex> months = list_usage_partitions(*conn);
            partitions_ = std::set<MonthIndex>(months.begin(), months.end());
        }
        conn_ = std::move(conn);
    }
    return *conn_;
}

void UsageStore::abandon() noexcept {
    if (conn_ && conn_->ok()) {
        PQclear(PQexec(conn_->get(), "ROLLBACK"));
    }
    disconnect();
    // Only ever a cost, never wrong; but start afresh after an error.
    hourly_cache_->clear();
    daily_cache_->clear();
}

std::size_t UsageStore::ensure_partitions_for(
    const std::vector<UsageRecord>& records, MonthIndex current) {
    std::vector<MonthIndex> missing;
    MonthCache months;
    for (const UsageRecord& r : records) {
        MonthIndex m = months.month(r.time_us);
        if (partitions_.count(m) == 0 &&
            raw_month_kept(m, current, retention_months_) &&
            std::find(missing.begin(), missing.end(), m) == missing.end()) {
            missing.push_back(m);
        }
    }
    if (missing.empty()) return 0;
    std::sort(missing.begin(), missing.end());
    std::vector<std::string> created = ensure_usage_partitions(*conn_, missing);
    for (const std::string& name : created) {
        log_info("usage store: created partition " + name);
    }
    partitions_.insert(missing.begin(), missing.end());
    return created.size();
}

CommitStats UsageStore::commit(const std::vector<UsageRecord>& records) {
    if (records.empty()) return CommitStats{};
    return or_abandon([&] { return commit_batch(records); });
}

CommitStats UsageStore::commit_batch(const std::vector<UsageRecord>& records) {
    CommitStats stats;
    PGconn* conn = connection().get();
    if (raw_events_) ensure_partitions_for(records, month_of_us(now_us()));

    // Ring positions in this batch, in lock order.
    using SlotKey = std::pair<std::uint32_t, std::uint64_t>;
    std::map<SlotKey, std::uint64_t> next;
    for (const UsageRecord& r : records) {
        next.emplace(SlotKey(r.slot, r.generation), 0);
    }
    ArrayParam slots(kInt4Oid), generations(kInt8Oid);
    for (const auto& entry : next) {
        slots.add_i32(static_cast<std::int32_t>(entry.first.first));
        generations.add_i64(clamp_i64(entry.first.second));
    }
    const Param node = Param::text(node_);
    const Param slots_param = Param::array(slots);
    const Param generations_param = Param::array(generations);

    Pipeline begin(conn);
    begin.send_sql("BEGIN");
    begin.send(kStInsertOffsets, {node, slots_param, generations_param});
    begin.send(kStLockOffsets, {node, slots_param, generations_param});
    const pg::Result committed = std::move(begin.run().back());
    for (int i = 0; i < committed.rows(); ++i) {
        SlotKey k(
            static_cast<std::uint32_t>(std::stoul(committed.get(i, 0))),
            static_cast<std::uint64_t>(std::stoll(committed.get(i, 1))));
        next[k] =
            static_cast<std::uint64_t>(std::stoll(committed.get(i, 2)));
    }
    if (static_cast<std::size_t>(committed.rows()) != next.size()) {
        throw pg::Error("usage_offsets rows vanished while locking them");
    }

    // Drop what is already committed; advance the positions.
    std::vector<const UsageRecord*> known;
    known.reserve(records.size());
    bool advanced = false;
    auto slot_it = next.end();
    for (const UsageRecord& r : records) {
        if (slot_it == next.end() || slot_it->first.first != r.slot ||
            slot_it->first.second != r.generation) {
            slot_it = next.find(SlotKey(r.slot, r.generation));
        }
        if (r.sequence < slot_it->second) {
            stats.duplicates++;
            continue;
        }
        slot_it->second = r.sequence + 1;
        advanced = true;
        if (storable(r)) {
            known.push_back(&r);
        } else {
            stats.ignored++;
        }
    }
    stats.inserted = known.size();

    // Raw rows stream into COPY; the rollup is built between chunks and
    // the statements after the COPY are encoded while the server
    // finishes it, then go out in one round trip.
    BatchRollup rollup;
    RollupWrite hourly, daily;
    std::vector<Param> keys;
    auto prepare = [&](RollupBuilder* builder) {
        rollup = builder->finish();
        hourly = prepare_rollup(rollup.hourly, hourly_cache_.get());
        daily = prepare_rollup(rollup.daily, daily_cache_.get());
        keys = key_update_params(rollup.keys);
    };
    if (!known.empty()) {
        RollupBuilder builder;
        builder.reserve(known.size());
        if (raw_events_) {
            stats.raw_skipped =
                copy_raw(conn, known, partitions_, node_, &builder,
                         [&] { prepare(&builder); });
        } else {
            for (const UsageRecord* r : known) builder.add(*r);
            prepare(&builder);
        }
    }

    // Lock order, the same on every node: hourly rows, daily rows, keys,
    // each sorted (the offsets locked first are this node's alone).
    Pipeline pipe(conn);
    if (!rollup.hourly.empty()) {
        pipe.send(hourly_sql().upsert, hourly.params);
        pipe.send(daily_sql().upsert, daily.params);
        pipe.send(kStLockKeys, {keys[0]});
        pipe.send(kStUpdateKeys, keys);
    }
    if (advanced) {
        ArrayParam s(kInt4Oid), g(kInt8Oid), n(kInt8Oid);
        for (const auto& entry : next) {
            s.add_i32(static_cast<std::int32_t>(entry.first.first));
            g.add_i64(clamp_i64(entry.first.second));
            n.add_i64(clamp_i64(entry.second));
        }
        pipe.send(kStAdvanceOffsets, {node, Param::array(s),
                                      Param::array(g), Param::array(n)});
    }
    bool hourly_stale = false, daily_stale = false;
    if (pipe.queued() > 0) {
        std::vector<pg::Result> results = pipe.run();
        if (!rollup.hourly.empty()) {
            finish_rollup(conn, hourly_sql(), rollup.hourly, results[0],
                          hourly, &hourly_stale);
            finish_rollup(conn, daily_sql(), rollup.daily, results[1],
                          daily, &daily_stale);
            stats.keys_touched = affected_rows(results[3]);
        }
    }
    exec_simple(conn, "COMMIT");

    if (hourly_stale) {
        hourly_cache_->clear();
    } else {
        hourly_cache_->trim();
    }
    if (daily_stale) {
        daily_cache_->clear();
    } else {
        daily_cache_->trim();
    }
    return stats;
}

std::vector<SlotPosition> UsageStore::committed_positions() {
    return or_abandon([&] {
        pg::Result res =
            exec_params(connection().get(), kStSelectPositions,
                        {Param::text(node_)});
        std::vector<SlotPosition> out;
        out.reserve(static_cast<std::size_t>(res.rows()));
        for (int i = 0; i < res.rows(); ++i) {
            out.push_back(SlotPosition{
                static_cast<std::uint32_t>(std::stoul(res.get(i, 0))),
                static_cast<std::uint64_t>(std::stoll(res.get(i, 1))),
                static_cast<std::uint64_t>(std::stoll(res.get(i, 2)))});
        }
        return out;
    });
}

void UsageStore::connect() {
    or_abandon([&] { connection(); });
}

std::size_t UsageStore::prune_offsets(
    std::int64_t before_us,
    const std::vector<std::pair<std::uint32_t, std::uint64_t>>& live) {
    return or_abandon([&] {
        ArrayParam slots(kInt4Oid), generations(kInt8Oid);
        for (const auto& [slot, generation] : live) {
            slots.add_i32(static_cast<std::int32_t>(slot));
            generations.add_i64(clamp_i64(generation));
        }
        pg::Result res = exec_params(
            connection().get(), kStPruneOffsets,
            {Param::text(node_), Param::time(before_us), Param::array(slots),
             Param::array(generations)});
        return affected_rows(res);
    });
}

void UsageStore::maintain_partitions(std::int64_t now_us_value,
                                     std::vector<std::string>* created,
                                     std::vector<std::string>* dropped) {
    or_abandon([&] {
        pg::Connection& conn = connection();
        std::vector<MonthIndex> months = maintain_usage_partitions(
            conn, now_us_value, retention_months_, created, dropped);
        partitions_ = std::set<MonthIndex>(months.begin(), months.end());
    });
}

}  // namespace apikey
