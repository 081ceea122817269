#include "rollup.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <deque>
#include <functional>
#include <limits>
#include <unordered_map>

namespace apikey {
namespace {

// --- UTF-8, as PostgreSQL's pg_utf8_islegal() accepts it, minus NUL ---------

// Length of the valid sequence at p (1..4), or 0 if p does not start one.
inline std::size_t utf8_sequence_len(const unsigned char* p,
                                     std::size_t avail) noexcept {
    const unsigned char c = p[0];
    if (c >= 0x01 && c <= 0x7f) return 1;
    auto cont = [](unsigned char b) { return (b & 0xc0) == 0x80; };
    if (c >= 0xc2 && c <= 0xdf) {
        return avail >= 2 && cont(p[1]) ? 2 : 0;
    }
    if (c >= 0xe0 && c <= 0xef) {
        if (avail < 3 || !cont(p[1]) || !cont(p[2])) return 0;
        if (c == 0xe0 && p[1] < 0xa0) return 0;   // overlong
        if (c == 0xed && p[1] > 0x9f) return 0;   // UTF-16 surrogates
        return 3;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        if (avail < 4 || !cont(p[1]) || !cont(p[2]) || !cont(p[3])) return 0;
        if (c == 0xf0 && p[1] < 0x90) return 0;   // overlong
        if (c == 0xf4 && p[1] > 0x8f) return 0;   // above U+10FFFF
        return 4;
    }
    return 0;  // NUL, continuation byte, C0, C1, F5..FF
}

constexpr std::string_view kReplacement = "\xef\xbf\xbd";  // U+FFFD

std::int64_t floor_to(std::int64_t t, std::int64_t unit) noexcept {
    std::int64_t q = t / unit;
    if (t % unit < 0) --q;
    return q * unit;
}

// --- aggregation -------------------------------------------------------------

struct RowKey {
    const std::uint8_t* key_id;  // 16 bytes
    std::int64_t bucket_us;
    std::string_view endpoint;
    std::string_view method;

    bool operator==(const RowKey& o) const noexcept {
        return bucket_us == o.bucket_us &&
               std::memcmp(key_id, o.key_id, 16) == 0 &&
               endpoint == o.endpoint && method == o.method;
    }
};

struct RowKeyHash {
    std::size_t operator()(const RowKey& k) const noexcept {
        // All 16 bytes: ids need not be random (v7, or made up in tests).
        std::uint64_t a, b;
        std::memcpy(&a, k.key_id, sizeof(a));
        std::memcpy(&b, k.key_id + 8, sizeof(b));
        std::uint64_t h =
            (a * 0x9e3779b97f4a7c15ull) ^ (b * 0xc2b2ae3d27d4eb4full);
        h ^= h >> 29;
        h ^= static_cast<std::uint64_t>(k.bucket_us) * 0xff51afd7ed558ccdull;
        h ^= std::hash<std::string_view>{}(k.endpoint) + 0x7f4a7c15 + (h << 6) +
             (h >> 2);
        h ^= std::hash<std::string_view>{}(k.method) + 0x9e3779b9 + (h << 6) +
             (h >> 2);
        return static_cast<std::size_t>(h);
    }
};

struct UuidHash {
    std::size_t operator()(const Uuid& u) const noexcept {
        std::uint64_t a, b;
        std::memcpy(&a, u.data(), 8);
        std::memcpy(&b, u.data() + 8, 8);
        std::uint64_t h =
            (a * 0x9e3779b97f4a7c15ull) ^ (b * 0xc2b2ae3d27d4eb4full);
        return static_cast<std::size_t>(h ^ (h >> 29));
    }
};

Uuid to_uuid(const std::uint8_t* bytes) noexcept {
    Uuid u;
    std::memcpy(u.data(), bytes, u.size());
    return u;
}

void count_status(RollupRow* row, std::uint16_t status) noexcept {
    switch (status_class(status)) {
    case StatusClass::k2xx: row->status_2xx++; break;
    case StatusClass::k3xx: row->status_3xx++; break;
    case StatusClass::k4xx: row->status_4xx++; break;
    case StatusClass::k5xx: row->status_5xx++; break;
    case StatusClass::kOther: row->status_other++; break;
    }
}

void add_row(RollupRow* into, const RollupRow& from) {
    into->requests += from.requests;
    into->status_2xx += from.status_2xx;
    into->status_3xx += from.status_3xx;
    into->status_4xx += from.status_4xx;
    into->status_5xx += from.status_5xx;
    into->status_other += from.status_other;
    into->response_time_us_sum += from.response_time_us_sum;
    into->latency_hist.merge(from.latency_hist);
}

// Sorts by rollup_row_less, moving each (large) row once; compares the
// first 8 bytes of the key ids first, from a compact array (random ids
// differ there, so the full comparison runs only within one key).
void sort_rows(std::vector<RollupRow>* rows) {
    struct Slot {
        std::uint64_t prefix;
        std::uint32_t index;
    };
    std::vector<Slot> order(rows->size());
    for (std::uint32_t i = 0; i < order.size(); ++i) {
        std::uint64_t p = 0;
        for (int b = 0; b < 8; ++b) p = p << 8 | (*rows)[i].key_id[b];
        order[i] = {p, i};
    }
    std::sort(order.begin(), order.end(), [rows](const Slot& a, const Slot& b) {
        if (a.prefix != b.prefix) return a.prefix < b.prefix;
        return rollup_row_less((*rows)[a.index], (*rows)[b.index]);
    });
    std::vector<RollupRow> sorted;
    sorted.reserve(rows->size());
    for (const Slot& s : order) sorted.push_back(std::move((*rows)[s.index]));
    rows->swap(sorted);
}

// Keeps the views stable: a sanitized copy lives as long as the batch.
std::string_view clean_view(std::string_view raw,
                            std::deque<std::string>* storage) {
    if (text_is_clean(raw)) return raw;
    storage->push_back(sanitize_text(raw));
    return storage->back();
}

}  // namespace

// --- text --------------------------------------------------------------------

bool text_is_clean(std::string_view text) noexcept {
    const auto* p = reinterpret_cast<const unsigned char*>(text.data());
    std::size_t n = text.size();
    std::size_t i = 0;
    while (i < n) {
        if (p[i] >= 0x01 && p[i] <= 0x7f) {
            ++i;
            continue;
        }
        std::size_t len = utf8_sequence_len(p + i, n - i);
        if (len == 0) return false;
        i += len;
    }
    return true;
}

std::string sanitize_text(std::string_view text) {
    if (text_is_clean(text)) return std::string(text);
    const auto* p = reinterpret_cast<const unsigned char*>(text.data());
    std::size_t n = text.size();
    std::string out;
    out.reserve(n + 8);
    std::size_t i = 0;
    while (i < n) {
        std::size_t len = utf8_sequence_len(p + i, n - i);
        if (len == 0) {
            out.append(kReplacement);
            ++i;
        } else {
            out.append(text.data() + i, len);
            i += len;
        }
    }
    return out;
}

// --- histogram ---------------------------------------------------------------

void LatencyHistogram::add(std::size_t bucket, std::uint64_t count) {
    if (bucket >= kLatencyBucketCount) bucket = kLatencyBucketCount - 1;
    if (counts_.empty()) {
        lo_ = bucket;
        counts_.reserve(16);  // most rows span a few buckets: one allocation
        counts_.assign(1, count);
        return;
    }
    if (bucket < lo_) {
        counts_.insert(counts_.begin(), lo_ - bucket, 0);
        lo_ = bucket;
    } else if (bucket >= hi()) {
        counts_.resize(bucket - lo_ + 1, 0);
    }
    counts_[bucket - lo_] += count;
}

void LatencyHistogram::merge(const LatencyHistogram& other) {
    if (other.empty()) return;
    if (empty()) {
        *this = other;
        return;
    }
    // Widen once, then add.
    std::size_t new_lo = std::min(lo_, other.lo_);
    std::size_t new_hi = std::max(hi(), other.hi());
    if (new_lo < lo_) {
        counts_.insert(counts_.begin(), lo_ - new_lo, 0);
        lo_ = new_lo;
    }
    if (new_hi > hi()) counts_.resize(new_hi - lo_, 0);
    for (std::size_t i = 0; i < other.counts_.size(); ++i) {
        counts_[other.lo_ + i - lo_] += other.counts_[i];
    }
}

std::uint64_t LatencyHistogram::count(std::size_t bucket) const noexcept {
    if (bucket < lo_ || bucket >= hi()) return 0;
    return counts_[bucket - lo_];
}

std::uint64_t LatencyHistogram::total() const noexcept {
    std::uint64_t t = 0;
    for (std::uint64_t c : counts_) t += c;
    return t;
}

std::string LatencyHistogram::to_pg_array() const {
    std::string out;
    append_pg_array(&out);
    return out;
}

void LatencyHistogram::append_pg_array(std::string* out) const {
    if (counts_.empty()) {
        out->append("{}");
        return;
    }
    char buf[24];
    auto put = [&](std::uint64_t v) {
        auto r = std::to_chars(buf, buf + sizeof(buf), v);
        out->append(buf, r.ptr);
    };
    out->push_back('[');
    put(lo_ + 1);
    out->push_back(':');
    put(hi());
    out->append("]={");
    for (std::size_t i = 0; i < counts_.size(); ++i) {
        if (i > 0) out->push_back(',');
        put(counts_[i]);
    }
    out->push_back('}');
}

bool LatencyHistogram::add_pg_array(std::string_view text) {
    std::size_t first = 1;  // subscript of the first element
    std::size_t last = 0;   // 0: not given
    std::size_t pos = 0;
    auto parse_num = [&](std::uint64_t* v) {
        auto r = std::from_chars(text.data() + pos, text.data() + text.size(),
                                 *v);
        if (r.ec != std::errc() || r.ptr == text.data() + pos) return false;
        pos = static_cast<std::size_t>(r.ptr - text.data());
        return true;
    };
    if (!text.empty() && text[0] == '[') {
        std::uint64_t a = 0, b = 0;
        pos = 1;
        if (!parse_num(&a) || pos >= text.size() || text[pos] != ':') {
            return false;
        }
        ++pos;
        if (!parse_num(&b) || text.substr(pos, 2) != "]=") return false;
        pos += 2;
        if (a < 1 || b < a || b > kLatencyBucketCount) return false;
        first = a;
        last = b;
    }
    if (pos >= text.size() || text[pos] != '{' || text.back() != '}') {
        return false;
    }
    ++pos;
    LatencyHistogram parsed;
    std::size_t subscript = first;
    const std::size_t end = text.size() - 1;
    if (pos < end) {
        while (true) {
            if (subscript > kLatencyBucketCount) return false;
            std::uint64_t v = 0;
            if (text.substr(pos, 4) == "NULL") {
                pos += 4;
            } else if (!parse_num(&v)) {
                return false;
            }
            if (v != 0) parsed.add(subscript - 1, v);
            ++subscript;
            if (pos == end) break;
            if (text[pos] != ',') return false;
            ++pos;
        }
    }
    if (last != 0 && subscript != last + 1) return false;
    merge(parsed);
    return true;
}

std::optional<double> latency_percentile_ms(const LatencyHistogram& hist,
                                            double q) {
    const std::uint64_t total = hist.total();
    if (total == 0) return std::nullopt;
    if (!(q >= 0.0)) q = 0.0;  // also NaN
    if (q > 1.0) q = 1.0;
    const double rank = q * static_cast<double>(total);
    double before = 0;
    const auto& counts = hist.counts();
    for (std::size_t i = 0; i < counts.size(); ++i) {
        if (counts[i] == 0) continue;
        const double c = static_cast<double>(counts[i]);
        if (before + c < rank && i + 1 < counts.size()) {
            before += c;
            continue;
        }
        const std::size_t b = hist.lo() + i;
        double frac = (rank - before) / c;
        frac = std::clamp(frac, 0.0, 1.0);
        const double lo = static_cast<double>(latency_bucket_lower_us(b));
        double us;
        if (b == 0) {
            us = frac * static_cast<double>(latency_bucket_upper_us(0));
        } else if (b + 1 >= kLatencyBucketCount) {
            us = lo;
        } else {
            const double hi = static_cast<double>(latency_bucket_upper_us(b));
            us = lo * std::pow(hi / lo, frac);
        }
        return us / 1000.0;
    }
    return std::nullopt;  // unreachable: total > 0
}

// --- rollups -----------------------------------------------------------------

std::int64_t hour_bucket_us(std::int64_t time_us) noexcept {
    return floor_to(time_us, kUsPerHour);
}

std::int64_t day_bucket_us(std::int64_t time_us) noexcept {
    return floor_to(time_us, kUsPerDay);
}

std::string_view record_method(const UsageRecord& r) noexcept {
    return {r.method, std::min<std::size_t>(r.method_len, kUsageMethodLen)};
}

std::string_view record_endpoint(const UsageRecord& r) noexcept {
    return {r.endpoint,
            std::min<std::size_t>(r.endpoint_len, kUsageEndpointLen)};
}

std::string_view record_user_agent(const UsageRecord& r) noexcept {
    return {r.user_agent,
            std::min<std::size_t>(r.user_agent_len, kUsageUserAgentLen)};
}

bool rollup_row_less(const RollupRow& a, const RollupRow& b) noexcept {
    if (int c = std::memcmp(a.key_id.data(), b.key_id.data(), 16)) {
        return c < 0;
    }
    if (a.bucket_us != b.bucket_us) return a.bucket_us < b.bucket_us;
    if (int c = a.endpoint.compare(b.endpoint)) return c < 0;
    return a.method < b.method;
}

struct RollupBuilder::Index {
    std::unordered_map<RowKey, std::size_t, RowKeyHash> hourly;
    std::unordered_map<Uuid, std::size_t, UuidHash> keys;
};

RollupBuilder::RollupBuilder() : index_(std::make_unique<Index>()) {}
RollupBuilder::~RollupBuilder() = default;

void RollupBuilder::reserve(std::size_t records) {
    index_->hourly.reserve(records);
}

RollupRow& RollupBuilder::row_for(const std::uint8_t* key_id,
                                  const Uuid& org_id, std::int64_t time_us,
                                  std::string_view endpoint,
                                  std::string_view method) {
    const std::int64_t hour = hour_bucket_us(time_us);
    RowKey key{key_id, hour, clean_view(endpoint, &sanitized_),
               clean_view(method, &sanitized_)};
    auto [it, fresh] = index_->hourly.try_emplace(key, out_.hourly.size());
    if (fresh) {
        RollupRow row;
        row.key_id = to_uuid(key_id);
        row.org_id = org_id;
        row.bucket_us = hour;
        row.endpoint = std::string(key.endpoint);
        row.method = std::string(key.method);
        out_.hourly.push_back(std::move(row));
    }
    return out_.hourly[it->second];
}

void RollupBuilder::note_use(const Uuid& key_id, std::uint64_t requests,
                             std::int64_t time_us, IpFamily family,
                             const std::uint8_t* ip) {
    auto [kit, kfresh] = index_->keys.try_emplace(key_id, out_.keys.size());
    if (kfresh) {
        KeyUsage k;
        k.key_id = key_id;
        k.last_used_us = std::numeric_limits<std::int64_t>::min();
        out_.keys.push_back(k);
    }
    KeyUsage& k = out_.keys[kit->second];
    k.requests += requests;
    if (time_us >= k.last_used_us) {  // ties: the later one added
        k.last_used_us = time_us;
        k.ip_family = family;
        std::memcpy(k.ip.data(), ip, k.ip.size());
    }
}

void RollupBuilder::add(const UsageRecord& r) {
    RollupRow& row = row_for(r.key_id, to_uuid(r.org_id), r.time_us,
                             record_endpoint(r), record_method(r));
    row.requests++;
    count_status(&row, r.status);
    row.response_time_us_sum += r.response_time_us;
    row.latency_hist.add_latency_us(r.response_time_us);
    note_use(to_uuid(r.key_id), 1, r.time_us, r.ip_family, r.ip);
}

void RollupBuilder::add(const AggregateEntry& e, const Uuid& org_id) {
    RollupRow& row =
        row_for(e.key_id.data(), org_id, e.hour_us, e.endpoint, e.method);
    // The stored rows keep requests = the sum of the status classes (the
    // upsert relies on it). A worker killed in the middle of an update can
    // leave one entry off by a request: each status count stands for a
    // request, and requests counted without a class are status_other.
    const std::uint64_t classes = e.status_2xx + e.status_3xx +
                                  e.status_4xx + e.status_5xx + e.status_other;
    const std::uint64_t requests = std::max(e.requests, classes);
    row.requests += requests;
    row.status_2xx += e.status_2xx;
    row.status_3xx += e.status_3xx;
    row.status_4xx += e.status_4xx;
    row.status_5xx += e.status_5xx;
    row.status_other += e.status_other + (requests - classes);
    row.response_time_us_sum += e.response_time_us_sum;
    for (const auto& [bucket, count] : e.latency) {
        if (count > 0) row.latency_hist.add(bucket, count);
    }
    note_use(to_uuid(e.key_id.data()), requests, e.last_used_us,
             e.ip_family, e.ip.data());
}

BatchRollup RollupBuilder::finish() {
    BatchRollup out = std::move(out_);
    out_ = BatchRollup();

    // Daily rows from hourly ones, while the hourly strings stay in place.
    std::unordered_map<RowKey, std::size_t, RowKeyHash> daily_index;
    daily_index.reserve(out.hourly.size());
    for (const RollupRow& h : out.hourly) {
        RowKey key{h.key_id.data(), day_bucket_us(h.bucket_us), h.endpoint,
                   h.method};
        auto [it, fresh] = daily_index.try_emplace(key, out.daily.size());
        if (fresh) {
            RollupRow row = h;
            row.bucket_us = key.bucket_us;
            out.daily.push_back(std::move(row));
        } else {
            add_row(&out.daily[it->second], h);
        }
    }

    sort_rows(&out.hourly);
    sort_rows(&out.daily);
    std::sort(out.keys.begin(), out.keys.end(),
              [](const KeyUsage& a, const KeyUsage& b) {
                  return a.key_id < b.key_id;
              });
    index_->hourly.clear();
    index_->keys.clear();
    sanitized_.clear();
    return out;
}

BatchRollup rollup_batch(const std::vector<const UsageRecord*>& records) {
    RollupBuilder builder;
    builder.reserve(records.size());
    for (const UsageRecord* r : records) builder.add(*r);
    return builder.finish();
}

BatchRollup rollup_aggregates(const std::vector<OrgEntry>& entries) {
    RollupBuilder builder;
    builder.reserve(entries.size());
    for (const OrgEntry& e : entries) builder.add(*e.entry, e.org_id);
    return builder.finish();
}

BatchRollup rollup_batch(const std::vector<UsageRecord>& records) {
    std::vector<const UsageRecord*> ptrs;
    ptrs.reserve(records.size());
    for (const UsageRecord& r : records) ptrs.push_back(&r);
    return rollup_batch(ptrs);
}

}  // namespace apikey
