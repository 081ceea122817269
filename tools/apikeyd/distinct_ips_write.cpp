#include "distinct_ips_write.h"

#include <cstring>
#include <map>
#include <string>
#include <utility>

#include "hll_sketch.h"
#include "usage_store.h"
#include "uuid.h"

namespace apikey {
namespace {

// Days are passed and read as days since 1970-01-01 (the set's unit).
constexpr const char* kCreateRows =
    "INSERT INTO api_key_distinct_ips (key_id, day, org_id)"
    " SELECT k, '1970-01-01'::date + d, o"
    " FROM unnest($1::uuid[], $2::int[], $3::uuid[]) AS u(k, d, o)"
    " ORDER BY k, d ON CONFLICT (key_id, day) DO NOTHING";
constexpr const char* kLockRows =
    "SELECT key_id::text, day - '1970-01-01'::date, sketch, ips"
    " FROM api_key_distinct_ips"
    " WHERE (key_id, day) IN (SELECT k, '1970-01-01'::date + d"
    " FROM unnest($1::uuid[], $2::int[]) AS u(k, d))"
    " ORDER BY key_id, day FOR UPDATE";
constexpr const char* kWriteRows =
    "UPDATE api_key_distinct_ips t SET sketch = u.s, ips = u.n"
    " FROM unnest($1::uuid[], $2::int[], $3::bytea[], $4::bigint[])"
    " AS u(k, d, s, n)"
    " WHERE t.key_id = u.k AND t.day = '1970-01-01'::date + u.d";

struct Group {
    Uuid org{};
    std::vector<std::uint64_t> hashes;
};

template <typename T>
std::string number_array(const std::vector<T>& v) {
    std::string out = "{";
    for (std::size_t i = 0; i < v.size(); ++i) {
        if (i > 0) out.push_back(',');
        out += std::to_string(v[i]);
    }
    out.push_back('}');
    return out;
}

std::int32_t day_of(std::int64_t us) {
    return static_cast<std::int32_t>(us / kUsPerDay);
}

}  // namespace

std::size_t write_distinct_ips(pg::Connection& conn,
                               const std::vector<const AggregateBuffer*>& buffers,
                               std::int64_t now_us) {
    const std::int32_t today = day_of(now_us);
    std::map<std::pair<std::string, std::int32_t>, Group> groups;
    for (const AggregateBuffer* b : buffers) {
        for (std::size_t i = 0; i < b->ips.size(); ++i) {
            const IpSetEntry& e = b->ips[i];
            if (e.day < today - kDistinctIpsSketchDays || e.day > today + 1) {
                continue;
            }
            Uuid key;
            std::memcpy(key.data(), e.key_id, key.size());
            Group& g = groups[{uuid_to_string(key), e.day}];
            g.org = b->ip_orgs[i];
            g.hashes.push_back(e.ip_hash);
        }
    }
    if (groups.empty()) return 0;

    std::vector<std::string> keys, orgs;
    std::vector<std::int32_t> days;
    for (const auto& [kd, g] : groups) {
        keys.push_back(kd.first);
        days.push_back(kd.second);
        orgs.push_back(uuid_to_string(g.org));
    }
    const std::string key_param = pg::text_array_param(keys);
    const std::string day_param = number_array(days);
    conn.exec(kCreateRows, {key_param, day_param, pg::text_array_param(orgs)});
    const pg::Result locked = conn.exec(kLockRows, {key_param, day_param});

    std::vector<std::string> grew_keys, sketches;
    std::vector<std::uint64_t> counts;
    std::vector<std::int32_t> grew_days;
    for (int r = 0; r < locked.rows(); ++r) {
        auto it = groups.find({locked.get(r, 0), std::stoi(locked.get(r, 1))});
        if (it == groups.end()) continue;
        HllSketch sketch;
        if (locked.is_null(r, 2)) {
            // Pruned: the day's estimate is final.
            if (locked.get_u64(r, 3) > 0) continue;
        } else if (!sketch.merge_stored(pg::bytea_from_text(locked.get(r, 2)))) {
            throw pg::Error("api_key_distinct_ips.sketch is not a sketch");
        }
        HllSketch delta;
        for (std::uint64_t h : it->second.hashes) delta.add(h);
        if (!sketch.merge(delta)) continue;  // nothing new: no write
        grew_keys.push_back(it->first.first);
        grew_days.push_back(it->first.second);
        const std::string s = sketch.stored();
        sketches.push_back(pg::bytea_param(s.data(), s.size()));
        counts.push_back(sketch.estimate());
    }
    if (grew_keys.empty()) return 0;
    conn.exec(kWriteRows,
              {pg::text_array_param(grew_keys), number_array(grew_days),
               pg::text_array_param(sketches), number_array(counts)});
    return grew_keys.size();
}

std::size_t prune_distinct_ip_sketches(pg::Connection& conn,
                                       std::int64_t now_us) {
    const pg::Result r = conn.exec(
        "UPDATE api_key_distinct_ips SET sketch = NULL"
        " WHERE day < '1970-01-01'::date + $1::int AND sketch IS NOT NULL",
        {std::to_string(day_of(now_us) - kDistinctIpsSketchDays)});
    return r.affected_rows();
}

}  // namespace apikey
