#include "rollup_write.h"

#include <string>
#include <utility>

#include "log.h"
#include "usage_store_sql.h"

namespace apikey {
namespace {

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

// One table's upsert, encoded ahead. Advances the cache entries of its
// rows to what they hold after it if the guard holds.
RollupWrite::Table prepare_rollup(const std::vector<RollupRow>& rows,
                                  RollupCache* cache) {
    RollupWrite::Table w;
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
                   RollupWrite::Table* write) {
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
            RollupCache::Entry& next = *write->entries[i];
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
        write->stale = true;
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

RollupWrite::RollupWrite(const BatchRollup& rollup, RollupCache* hourly,
                         RollupCache* daily)
    : rollup_(rollup), hourly_cache_(hourly), daily_cache_(daily) {
    if (rollup_.hourly.empty()) return;
    hourly_ = prepare_rollup(rollup_.hourly, hourly_cache_);
    daily_ = prepare_rollup(rollup_.daily, daily_cache_);
    keys_ = key_update_params(rollup_.keys);
}

// Lock order, the same on every node: hourly rows, daily rows, keys, each
// sorted.
int RollupWrite::send(pg::Pipeline* pipe) const {
    if (rollup_.hourly.empty()) return 0;
    pipe->send_prepared(usage_sql::hourly().upsert.name, hourly_.params);
    pipe->send_prepared(usage_sql::daily().upsert.name, daily_.params);
    pipe->send_prepared(usage_sql::kLockKeys.name, {keys_[0]});
    pipe->send_prepared(usage_sql::kUpdateKeys.name, keys_);
    return 4;
}

std::size_t RollupWrite::finish(pg::Connection& conn,
                                const std::vector<pg::Result>& results,
                                std::size_t first) {
    if (rollup_.hourly.empty()) return 0;
    finish_rollup(conn, usage_sql::hourly(), rollup_.hourly, results[first],
                  &hourly_);
    finish_rollup(conn, usage_sql::daily(), rollup_.daily, results[first + 1],
                  &daily_);
    return results[first + 3].affected_rows();
}

void RollupWrite::committed() {
    for (auto [cache, table] :
         {std::pair{hourly_cache_, &hourly_}, std::pair{daily_cache_, &daily_}}) {
        if (table->stale) {
            cache->clear();
        } else {
            cache->trim();
        }
    }
}

}  // namespace apikey
