#include "usage_store.h"

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "log.h"
#include "pg_binary.h"
#include "pg_copy.h"
#include "pg_pipeline.h"
#include "rollup.h"
#include "rollup_cache.h"
#include "time_util.h"
#include "usage_store_sql.h"

namespace apikey {
namespace {

// Rollup rows remembered per table (a few hundred bytes each).
constexpr std::size_t kRollupCacheEntries = 65536;

std::int64_t clamp_i64(std::uint64_t v) {
    return v > static_cast<std::uint64_t>(INT64_MAX)
               ? INT64_MAX
               : static_cast<std::int64_t>(v);
}

// Text from clients, sanitized (valid UTF-8, no NUL) as a field.
void put_text_field(std::string* s, std::string_view text) {
    if (text_is_clean(text)) {
        pg::put_bytes_field(s, text);
    } else {
        pg::put_bytes_field(s, sanitize_text(text));
    }
}

// The client address as an inet field, NULL when the record has none.
void put_ip_field(std::string* s, IpFamily family, const std::uint8_t* ip) {
    if (family == IpFamily::kV4) {
        pg::put_inet4_field(s, ip);
    } else if (family == IpFamily::kV6) {
        pg::put_inet6_field(s, ip);
    } else {
        pg::put_null_field(s);
    }
}

void add_ip(pg::ArrayParam* a, IpFamily family, const std::uint8_t* ip) {
    if (family == IpFamily::kV4) {
        a->add_inet4(ip);
    } else if (family == IpFamily::kV6) {
        a->add_inet6(ip);
    } else {
        a->add_null();
    }
}

// A histogram as its array literal, a text element (ASCII: no sanitizing
// needed).
void add_hist(pg::ArrayParam* a, const LatencyHistogram& h) {
    a->add_encoded([&](std::string* s) { h.append_pg_array(s); });
}

// Times a record may sensibly carry; one outside (a broken clock, a corrupt
// ring) would make PostgreSQL reject the whole batch on every retry.
constexpr std::int64_t kMinRecordTimeUs = 946684800LL * 1000000;   // 2000
constexpr std::int64_t kMaxRecordTimeUs = 7258118400LL * 1000000;  // 2200

// A record with a known key and a sane time; the rest only move the ring
// position on.
bool storable(const UsageRecord& r) {
    return result_is_recorded(r.result) && r.time_us >= kMinRecordTimeUs &&
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

// Streams the raw rows of the records whose month has a partition into
// COPY and, between chunks (while the server works on the previous one),
// adds each record to the rollup; runs while_server_finishes() between the
// end of the data and the server's answer. Returns how many rows were left
// out.
std::size_t copy_raw(pg::Connection& conn,
                     const std::vector<const UsageRecord*>& recs,
                     const std::set<MonthIndex>& partitions,
                     const std::string& node, RollupBuilder* rollup,
                     const std::function<void()>& while_server_finishes) {
    pg::CopyIn copy(conn, usage_sql::kCopyRaw);
    MonthCache months;
    std::size_t skipped = 0;
    for (const UsageRecord* r : recs) {
        rollup->add(*r);
        if (partitions.count(months.month(r->time_us)) == 0) {
            ++skipped;
            continue;
        }
        std::string* s = copy.row(usage_sql::kRawColumns);
        pg::put_timestamptz_field(s, r->time_us);
        pg::put_uuid_field(s, r->org_id);
        pg::put_uuid_field(s, r->key_id);
        put_text_field(s, record_endpoint(*r));
        put_text_field(s, record_method(*r));
        pg::put_int2_field(s, static_cast<std::int16_t>(
                                  r->status > 32767 ? 32767 : r->status));
        pg::put_float8_field(s,
                             static_cast<double>(r->response_time_us) / 1000.0);
        put_ip_field(s, r->ip_family, r->ip);
        put_text_field(s, record_user_agent(*r));
        pg::put_int8_field(s, clamp_i64(r->bytes_sent));
        put_text_field(s, auth_result_name(r->result));
        put_text_field(s, node);
        pg::put_int4_field(s, static_cast<std::int32_t>(r->slot));
        pg::put_int8_field(s, clamp_i64(r->generation));
        pg::put_int8_field(s, clamp_i64(r->sequence));
    }
    copy.end_data();
    while_server_finishes();
    copy.wait();
    return skipped;
}

// Primary keys of the rows, as the first four parameters.
std::vector<pg::BinaryParam> key_params(const std::vector<RollupRow>& rows,
                                        const std::vector<std::size_t>& which) {
    pg::ArrayParam key(pg::kUuidOid), bucket(pg::kTimestamptzOid),
        endpoint(pg::kTextOid), method(pg::kTextOid);
    for (std::size_t i : which) {
        const RollupRow& r = rows[i];
        key.add_uuid(r.key_id.data());
        bucket.add_timestamptz(r.bucket_us);
        endpoint.add_text(r.endpoint);
        method.add_text(r.method);
    }
    return {key.param(), bucket.param(), endpoint.param(), method.param()};
}

struct CurrentRow {
    bool exists = false;
    bool mine = false;  // written by this transaction already
    std::uint64_t requests = 0;
    LatencyHistogram hist;
};

// Reads rows[which[...]] as stored, by position in `which`.
std::vector<CurrentRow> read_current(pg::Connection& conn,
                                     const usage_sql::Statement& st,
                                     const std::vector<RollupRow>& rows,
                                     const std::vector<std::size_t>& which) {
    pg::Result res = conn.exec_prepared(st.name, key_params(rows, which));
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

// A batch's status counts and latency sums of rollup rows, the parameters
// that follow `requests` in both the upsert and the update.
struct CountParams {
    pg::ArrayParam s2{pg::kInt8Oid}, s3{pg::kInt8Oid}, s4{pg::kInt8Oid},
        s5{pg::kInt8Oid}, other{pg::kInt8Oid}, ms{pg::kFloat8Oid};

    void add(const RollupRow& r) {
        s2.add_int8(clamp_i64(r.status_2xx));
        s3.add_int8(clamp_i64(r.status_3xx));
        s4.add_int8(clamp_i64(r.status_4xx));
        s5.add_int8(clamp_i64(r.status_5xx));
        other.add_int8(clamp_i64(r.status_other));
        ms.add_float8(r.response_time_ms_sum());
    }
    void append_to(std::vector<pg::BinaryParam>* params) const {
        for (const pg::ArrayParam* a : {&s2, &s3, &s4, &s5, &other, &ms}) {
            params->push_back(a->param());
        }
    }
};

// One table's upsert, encoded ahead (while the server still works on the
// COPY). Advances the cache entries of its rows to what they hold after it
// if the guard holds.
struct RollupWrite {
    std::vector<pg::BinaryParam> params;
    std::vector<RollupCache::Entry*> entries;  // per row
};

RollupWrite prepare_rollup(const std::vector<RollupRow>& rows,
                           RollupCache* cache) {
    RollupWrite w;
    std::vector<std::size_t> all(rows.size());
    for (std::size_t i = 0; i < all.size(); ++i) all[i] = i;
    w.params = key_params(rows, all);
    w.entries.reserve(rows.size());
    pg::ArrayParam org(pg::kUuidOid), requests(pg::kInt8Oid),
        hist(pg::kTextOid);
    CountParams counts;
    for (const RollupRow& r : rows) {
        RollupCache::Entry* e = cache->get(r);
        e->requests += r.requests;
        e->hist.merge(r.latency_hist);
        w.entries.push_back(e);
        org.add_uuid(r.org_id.data());
        // Absolute: what the row holds after this batch if nobody else
        // wrote it since (the guard checks exactly that).
        requests.add_int8(clamp_i64(e->requests));
        counts.add(r);
        add_hist(&hist, e->hist);
    }
    w.params.push_back(org.param());
    w.params.push_back(requests.param());
    counts.append_to(&w.params);
    w.params.push_back(hist.param());
    return w;
}

// After the upsert: rows the guard refused (written elsewhere since we last
// did, or never seen by us) are locked by us now; read them and add this
// batch's increment. Rows the cache remembered but that were deleted since
// got re-inserted with old totals ("broken"): give them just the increment,
// and set *stale (the cache cannot name them).
void finish_rollup(pg::Connection& conn, const usage_sql::RollupSql& sql,
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
        std::vector<pg::BinaryParam> update = key_params(rows, retry);
        pg::ArrayParam d_requests(pg::kInt8Oid), d_hist(pg::kTextOid);
        CountParams d_counts;
        for (std::size_t i : retry) {
            const RollupRow& r = rows[i];
            RollupCache::Entry& next = *write.entries[i];
            next.requests = now[i].requests + r.requests;
            next.hist = std::move(now[i].hist);
            next.hist.merge(r.latency_hist);
            d_requests.add_int8(clamp_i64(r.requests));
            d_counts.add(r);
            add_hist(&d_hist, next.hist);
        }
        update.push_back(d_requests.param());
        d_counts.append_to(&update);
        update.push_back(d_hist.param());
        pg::Result updated = conn.exec_prepared(sql.update.name, update);
        if (updated.affected_rows() != retry.size()) {
            throw pg::Error("rollup rows changed under a lock");
        }
        log_debug("usage store: " + std::to_string(retry.size()) +
                  " rollup rows were written elsewhere; merged under lock");
    }

    if (broken > 0) {
        std::vector<pg::BinaryParam> repair = key_params(rows, all);
        pg::ArrayParam delta(pg::kTextOid);
        for (const RollupRow& r : rows) {
            add_hist(&delta, r.latency_hist);
        }
        repair.push_back(delta.param());
        pg::Result fixed = conn.exec_prepared(sql.repair.name, repair);
        if (fixed.affected_rows() != broken) {
            throw pg::Error("could not repair re-inserted rollup rows");
        }
        log_info("usage store: " + std::to_string(broken) +
                 " rollup rows were deleted while cached; re-created");
        *stale = true;
    }
}

std::vector<pg::BinaryParam> key_update_params(
    const std::vector<KeyUsage>& keys) {
    pg::ArrayParam ids(pg::kUuidOid), ts(pg::kTimestamptzOid), ip(pg::kInetOid),
        n(pg::kInt8Oid);
    for (const KeyUsage& k : keys) {
        ids.add_uuid(k.key_id.data());
        ts.add_timestamptz(k.last_used_us);
        add_ip(&ip, k.ip_family, k.ip.data());
        n.add_int8(clamp_i64(k.requests));
    }
    return {ids.param(), ts.param(), ip.param(), n.param()};
}

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
        conn->exec_script(usage_sql::kKeepalives);
        if (conn->exec(usage_sql::kLockNode, {node_}).get(0, 0) != "t") {
            throw NodeInUse("node \"" + node_ +
                            "\" is in use by another apikeyd connected to "
                            "this database (each host needs its own --node)");
        }
        for (const usage_sql::Statement* st : usage_sql::all_statements()) {
            conn->prepare(st->name, st->sql);
        }
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
    pg::Connection& conn = connection();
    if (raw_events_) ensure_partitions_for(records, month_of_us(now_us()));

    // Ring positions in this batch, in lock order.
    using SlotKey = std::pair<std::uint32_t, std::uint64_t>;
    std::map<SlotKey, std::uint64_t> next;
    for (const UsageRecord& r : records) {
        next.emplace(SlotKey(r.slot, r.generation), 0);
    }
    pg::ArrayParam slots(pg::kInt4Oid), generations(pg::kInt8Oid);
    for (const auto& entry : next) {
        slots.add_int4(static_cast<std::int32_t>(entry.first.first));
        generations.add_int8(clamp_i64(entry.first.second));
    }
    const pg::BinaryParam node = pg::BinaryParam::text(node_);
    const pg::BinaryParam slots_param = slots.param();
    const pg::BinaryParam generations_param = generations.param();

    pg::Pipeline begin(conn);
    begin.send("BEGIN");
    begin.send_prepared(usage_sql::kInsertOffsets.name,
                        {node, slots_param, generations_param});
    begin.send_prepared(usage_sql::kLockOffsets.name,
                        {node, slots_param, generations_param});
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
    std::vector<pg::BinaryParam> keys;
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
    pg::Pipeline pipe(conn);
    if (!rollup.hourly.empty()) {
        pipe.send_prepared(usage_sql::hourly().upsert.name, hourly.params);
        pipe.send_prepared(usage_sql::daily().upsert.name, daily.params);
        pipe.send_prepared(usage_sql::kLockKeys.name, {keys[0]});
        pipe.send_prepared(usage_sql::kUpdateKeys.name, keys);
    }
    if (advanced) {
        pg::ArrayParam s(pg::kInt4Oid), g(pg::kInt8Oid), n(pg::kInt8Oid);
        for (const auto& entry : next) {
            s.add_int4(static_cast<std::int32_t>(entry.first.first));
            g.add_int8(clamp_i64(entry.first.second));
            n.add_int8(clamp_i64(entry.second));
        }
        pipe.send_prepared(usage_sql::kAdvanceOffsets.name,
                           {node, s.param(), g.param(), n.param()});
    }
    bool hourly_stale = false, daily_stale = false;
    if (pipe.queued() > 0) {
        std::vector<pg::Result> results = pipe.run();
        if (!rollup.hourly.empty()) {
            finish_rollup(conn, usage_sql::hourly(), rollup.hourly, results[0],
                          hourly, &hourly_stale);
            finish_rollup(conn, usage_sql::daily(), rollup.daily, results[1],
                          daily, &daily_stale);
            stats.keys_touched = results[3].affected_rows();
        }
    }
    conn.exec("COMMIT");

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
        pg::Result res = connection().exec_prepared(
            usage_sql::kSelectPositions.name, {pg::BinaryParam::text(node_)});
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
        pg::ArrayParam slots(pg::kInt4Oid), generations(pg::kInt8Oid);
        for (const auto& [slot, generation] : live) {
            slots.add_int4(static_cast<std::int32_t>(slot));
            generations.add_int8(clamp_i64(generation));
        }
        pg::Result res =
            connection().exec_prepared(usage_sql::kPruneOffsets.name,
                                       {pg::BinaryParam::text(node_),
                                        pg::BinaryParam::timestamptz(before_us),
                                        slots.param(), generations.param()});
        return res.affected_rows();
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
