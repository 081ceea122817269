#include "usage_store.h"

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "distinct_ips_write.h"
#include "log.h"
#include "pg_binary.h"
#include "pg_copy.h"
#include "pg_pipeline.h"
#include "rollup.h"
#include "rollup_cache.h"
#include "rollup_write.h"
#include "time_util.h"
#include "usage_store_sql.h"

namespace apikey {
namespace {

// Rollup rows remembered per table (a few hundred bytes each).
constexpr std::size_t kRollupCacheEntries = 65536;

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

// Times a record or aggregate may sensibly carry; one outside (a broken
// clock, a corrupt segment) would make PostgreSQL reject the whole batch on
// every retry.
constexpr std::int64_t kMinRecordTimeUs = 946684800LL * 1000000;   // 2000
constexpr std::int64_t kMaxRecordTimeUs = 7258118400LL * 1000000;  // 2200

bool sane_time(std::int64_t time_us) {
    return time_us >= kMinRecordTimeUs && time_us < kMaxRecordTimeUs;
}

// A record with a known key and a sane time; the rest only move the ring
// position on.
bool storable(const UsageRecord& r) {
    return result_is_recorded(r.result) && sane_time(r.time_us);
}

// More requests than one worker serves in an hour by orders of magnitude:
// a corrupt entry, which would overflow the bigint counters on every
// retry.
constexpr std::uint64_t kMaxEntryRequests = 1ull << 40;

// An aggregate entry with sane times and counts; the rest are not stored.
bool storable(const AggregateEntry& e) {
    for (std::uint64_t n : {e.status_2xx, e.status_3xx, e.status_4xx,
                            e.status_5xx, e.status_other}) {
        if (n > kMaxEntryRequests) return false;
    }
    return e.requests > 0 && e.requests <= kMaxEntryRequests &&
           sane_time(e.hour_us) && sane_time(e.last_used_us);
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
// COPY. Returns how many rows were left out.
std::size_t copy_raw(pg::Connection& conn,
                     const std::vector<const UsageRecord*>& recs,
                     const std::set<MonthIndex>& partitions,
                     const std::string& node) {
    pg::CopyIn copy(conn, usage_sql::kCopyRaw);
    MonthCache months;
    std::size_t skipped = 0;
    for (const UsageRecord* r : recs) {
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
    copy.wait();
    return skipped;
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

    if (raw_events_ && !known.empty()) {
        stats.raw_skipped = copy_raw(conn, known, partitions_, node_);
    }
    if (advanced) {
        pg::ArrayParam s(pg::kInt4Oid), g(pg::kInt8Oid), n(pg::kInt8Oid);
        for (const auto& entry : next) {
            s.add_int4(static_cast<std::int32_t>(entry.first.first));
            g.add_int8(clamp_i64(entry.first.second));
            n.add_int8(clamp_i64(entry.second));
        }
        pg::Pipeline pipe(conn);
        pipe.send_prepared(usage_sql::kAdvanceOffsets.name,
                           {node, s.param(), g.param(), n.param()});
        pipe.send("COMMIT");
        pipe.run();
    } else {
        conn.exec("COMMIT");
    }
    return stats;
}

AggregateCommitStats UsageStore::commit_aggregates(
    const std::vector<AggregateBuffer>& buffers) {
    if (buffers.empty()) return AggregateCommitStats{};
    return or_abandon([&] { return commit_aggregate_batch(buffers); });
}

AggregateCommitStats UsageStore::commit_aggregate_batch(
    const std::vector<AggregateBuffer>& buffers) {
    AggregateCommitStats stats;
    pg::Connection& conn = connection();

    // The newest epoch per (slot, generation) in this batch, in lock order.
    using SlotKey = std::pair<std::uint32_t, std::uint64_t>;
    std::map<SlotKey, std::uint64_t> stored;  // last committed epoch, or 0
    std::map<SlotKey, bool> seen;
    for (const AggregateBuffer& b : buffers) {
        stored.emplace(SlotKey(b.slot, b.generation), 0);
        seen.emplace(SlotKey(b.slot, b.generation), false);
    }
    pg::ArrayParam slots(pg::kInt4Oid), generations(pg::kInt8Oid);
    for (const auto& entry : stored) {
        slots.add_int4(static_cast<std::int32_t>(entry.first.first));
        generations.add_int8(clamp_i64(entry.first.second));
    }
    const pg::BinaryParam node = pg::BinaryParam::text(node_);
    pg::Pipeline begin(conn);
    begin.send("BEGIN");
    begin.send_prepared(usage_sql::kLockAggregateOffsets.name,
                        {node, slots.param(), generations.param()});
    const pg::Result committed = std::move(begin.run().back());
    for (int i = 0; i < committed.rows(); ++i) {
        SlotKey k(static_cast<std::uint32_t>(std::stoul(committed.get(i, 0))),
                  static_cast<std::uint64_t>(std::stoll(committed.get(i, 1))));
        stored[k] = static_cast<std::uint64_t>(std::stoll(committed.get(i, 2)));
        seen[k] = true;
    }

    // Skip buffers committed before (a restart after COMMIT, before the
    // buffer was cleared); the rest advance their epoch.
    std::vector<OrgEntry> entries;
    std::map<SlotKey, std::uint64_t> advance;
    std::vector<const AggregateBuffer*> fresh;  // not committed before
    for (const AggregateBuffer& b : buffers) {
        const SlotKey k(b.slot, b.generation);
        if (seen[k] && b.epoch <= stored[k]) {
            stats.duplicates++;
            continue;
        }
        std::uint64_t& to = advance[k];
        to = std::max(to, b.epoch);
        stats.buffers++;
        fresh.push_back(&b);
        for (std::size_t i = 0; i < b.entries.size(); ++i) {
            if (storable(b.entries[i])) {
                entries.push_back({&b.entries[i], b.orgs[i]});
            } else {
                stats.ignored++;
            }
        }
    }
    stats.entries = entries.size();

    const BatchRollup rollup = rollup_aggregates(entries);
    for (const KeyUsage& k : rollup.keys) stats.requests += k.requests;
    RollupWrite write(rollup, hourly_cache_.get(), daily_cache_.get());
    pg::Pipeline pipe(conn);
    const int rollup_statements = write.send(&pipe);
    if (!advance.empty()) {
        pg::ArrayParam s(pg::kInt4Oid), g(pg::kInt8Oid), e(pg::kInt8Oid);
        for (const auto& [k, epoch] : advance) {
            s.add_int4(static_cast<std::int32_t>(k.first));
            g.add_int8(clamp_i64(k.second));
            e.add_int8(clamp_i64(epoch));
        }
        pipe.send_prepared(usage_sql::kAdvanceAggregateOffsets.name,
                           {node, s.param(), g.param(), e.param()});
    }
    if (pipe.queued() > 0) {
        std::vector<pg::Result> results = pipe.run();
        if (rollup_statements > 0) {
            stats.keys_touched = write.finish(conn, results, 0);
        }
    }
    stats.distinct_ip_days = write_distinct_ips(conn, fresh, now_us());
    conn.exec("COMMIT");
    write.committed();
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
        return static_cast<std::size_t>(std::stoull(res.get(0, 0)));
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
        prune_distinct_ip_sketches(conn, now_us_value);
    });
}

}  // namespace apikey
