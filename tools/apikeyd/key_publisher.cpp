#include "key_publisher.h"

#include <poll.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <unordered_set>

#include "log.h"
#include "time_util.h"

namespace apikey {
namespace {

// Keys that nginx should know: live ones, and dead ones recent enough that
// a request with them is answered "revoked"/"expired" rather than "unknown".
// Times in µs since the epoch; 'infinity' is NULL (never), and the rest is
// clamped to years 1..99999: PostgreSQL's last timestamps (year 294276)
// overflow a bigint of µs, which would fail the whole query.
constexpr const char* kSelectKeys = R"sql(
SELECT id, org_id, name, encode(key_hash, 'hex'),
       array_to_string(scopes, ','),
       CASE WHEN expires_at <> 'infinity' THEN
         (extract(epoch FROM least(greatest(expires_at, '0001-01-01Z'),
                                   '99999-01-01Z')) * 1000000)::bigint END,
       CASE WHEN revoked_at <> 'infinity' THEN
         (extract(epoch FROM least(greatest(revoked_at, '0001-01-01Z'),
                                   '99999-01-01Z')) * 1000000)::bigint END
  FROM api_keys
 WHERE (revoked_at IS NULL OR revoked_at > now() - make_interval(days => $1))
   AND (expires_at IS NULL OR expires_at > now() - make_interval(days => $1))
)sql";

constexpr const char* kChannel = "apikey_keys";
// Revocation must reach nginx within a second of PostgreSQL coming back:
// retries stay at most a second apart (a connection attempt is cheap).
constexpr int kMaxBackoffMs = 1000;

int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

KeyRow row_at(const pg::Result& res, int i) {
    KeyRow row;
    row.id = res.get(i, 0);
    row.org_id = res.get(i, 1);
    row.name = res.get(i, 2);
    row.key_hash_hex = res.get(i, 3);
    row.scopes = res.get(i, 4);
    if (!res.is_null(i, 5)) row.expires_at_us = std::stoll(res.get(i, 5));
    if (!res.is_null(i, 6)) row.revoked_at_us = std::stoll(res.get(i, 6));
    return row;
}

std::uint64_t capacity_for(std::size_t keys) {
    // Load at most ~0.5 after a rebuild, leaving room to grow in place.
    return std::max<std::uint64_t>(kMinKeyTableCapacity, 2 * keys + 1024);
}

}  // namespace

KeyInfo key_info_from_row(const KeyRow& row) {
    KeyInfo info{};
    if (!uuid_parse(row.id, &info.key_id) ||
        !uuid_parse(row.org_id, &info.org_id)) {
        throw std::invalid_argument("malformed key or org id");
    }
    if (row.key_hash_hex.size() != 2 * info.key_hash.size()) {
        throw std::invalid_argument("key hash is not 32 bytes");
    }
    for (std::size_t i = 0; i < info.key_hash.size(); ++i) {
        int hi = hex_value(row.key_hash_hex[2 * i]);
        int lo = hex_value(row.key_hash_hex[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            throw std::invalid_argument("key hash is not hex");
        }
        info.key_hash[i] = static_cast<std::uint8_t>(hi * 16 + lo);
    }
    if (row.name.size() > kMaxNameLen) {
        throw std::invalid_argument("name longer than the table holds");
    }
    info.name_len = static_cast<std::uint8_t>(row.name.size());
    std::memcpy(info.name, row.name.data(), row.name.size());

    std::size_t start = 0;
    while (start < row.scopes.size()) {
        std::size_t comma = row.scopes.find(',', start);
        if (comma == std::string::npos) comma = row.scopes.size();
        if (comma > start) {
            if (info.scope_count == kMaxScopes) {
                throw std::invalid_argument("more scopes than the table holds");
            }
            info.scope_hashes[info.scope_count++] =
                scope_hash(std::string_view(row.scopes).substr(
                    start, comma - start));
        }
        start = comma + 1;
    }
    info.expires_at_us = row.expires_at_us.value_or(0);
    info.revoked_at_us = row.revoked_at_us.value_or(0);
    // A key revoked "at" time zero would read as not revoked.
    if (row.revoked_at_us && info.revoked_at_us == 0) info.revoked_at_us = 1;
    if (row.expires_at_us && info.expires_at_us == 0) info.expires_at_us = 1;
    return info;
}

std::size_t KeyPublisher::UuidHash::operator()(const Uuid& u) const noexcept {
    std::uint64_t h;
    std::memcpy(&h, u.data(), sizeof(h));
    return static_cast<std::size_t>(h);
}

KeyPublisher::KeyPublisher(const DaemonConfig& config,
                           KeyPublisherStats* stats, KeyIndex* index)
    : config_(config), stats_(stats), index_(index) {
    seed_index();  // before the drainer starts
}

void KeyPublisher::run(const std::atomic<bool>& stop) {
    int backoff_ms = 250;
    std::int64_t next_full_sync_us = 0;

    while (!stop.load()) {
        try {
            if (!conn_) {
                connect();
                next_full_sync_us = 0;  // we may have missed notifications
            }
            if (now_us() >= next_full_sync_us) {
                full_sync();
                next_full_sync_us =
                    now_us() + config_.key_resync_seconds * 1000000LL;
            }
            wait_for_notifications(200);
            if (!pending_ids_.empty()) {
                std::vector<std::string> ids;
                ids.swap(pending_ids_);
                apply_notified(ids);
            }
            backoff_ms = 250;
        } catch (const std::exception& e) {
            stats_->db_errors++;
            stats_->db_connected = false;
            conn_.reset();
            log_warn(std::string("key publisher: ") + e.what() +
                     "; retrying in " + std::to_string(backoff_ms) + " ms");
            for (int waited = 0; waited < backoff_ms && !stop.load();
                 waited += 50) {
                std::this_thread::sleep_for(std::chrono::milliseconds(50));
            }
            backoff_ms = std::min(backoff_ms * 2, kMaxBackoffMs);
        }
    }
}

// Until the first full load, the table published before this start is what
// nginx's workers accept: the drainer may accept the same keys (it would
// otherwise wait, while PostgreSQL is down, with the rings filling up).
void KeyPublisher::seed_index() {
    KeyTableReader reader;
    std::string why;
    if (reader.attach(config_.keys_path.c_str(), &why) != SegmentStatus::kOk ||
        !reader.ready()) {
        return;
    }
    std::size_t n = 0;
    KeyInfo info;
    for (std::uint64_t i = 0; i < reader.capacity(); ++i) {
        if (reader.entry_at(i, &info)) {
            index_->put(info.key_id, info.org_id);
            ++n;
        }
    }
    index_->mark_ready();
    log_info("key publisher: " + std::to_string(n) + " keys known from " +
             config_.keys_path + " until the first full load");
}

void KeyPublisher::connect() {
    auto conn = std::make_unique<pg::Connection>(config_.db, "apikeyd-keys");
    conn->exec(std::string("LISTEN ") + kChannel);
    conn_ = std::move(conn);
    stats_->db_connected = true;
    log_info("key publisher: connected to PostgreSQL, listening on " +
             std::string(kChannel));
}

void KeyPublisher::full_sync() {
    pg::Result res = conn_->exec(
        kSelectKeys, {std::to_string(config_.keep_dead_keys_days)});

    std::vector<KeyInfo> keys;
    keys.reserve(res.rows());
    for (int i = 0; i < res.rows(); ++i) {
        try {
            keys.push_back(key_info_from_row(row_at(res, i)));
        } catch (const std::invalid_argument& e) {
            log_warn("key publisher: skipping key " + res.get(i, 0) + ": " +
                     e.what());
        }
    }

    bool fresh = !table_;
    if (fresh || table_->tombstone_count() > table_->capacity() / 4) {
        rebuild(keys);
    } else {
        std::unordered_set<Uuid, UuidHash> live;
        live.reserve(keys.size());
        for (const KeyInfo& k : keys) {
            live.insert(k.key_id);
            upsert(k);  // may fall back to a bigger rebuild
        }
        std::vector<Uuid> gone;
        for (const auto& [id, hash] : hash_by_id_) {
            if (!live.count(id)) gone.push_back(id);
        }
        for (const Uuid& id : gone) remove_id(id);
    }

    table_->mark_synced(now_us());
    stats_->full_syncs++;
    update_stats();
    if (fresh) {
        log_info("key publisher: published " + std::to_string(keys.size()) +
                 " keys to " + config_.keys_path);
    }
}

void KeyPublisher::rebuild(const std::vector<KeyInfo>& keys) {
    KeyTableWriter fresh =
        KeyTableWriter::create(config_.keys_path, capacity_for(keys.size()));
    hash_by_id_.clear();
    std::vector<Uuid> ids;
    ids.reserve(keys.size());
    for (const KeyInfo& k : keys) {
        auto old = hash_by_id_.find(k.key_id);
        if (old != hash_by_id_.end()) fresh.remove(old->second);
        if (!fresh.upsert(k)) {
            throw std::runtime_error("key table sized too small");
        }
        hash_by_id_[k.key_id] = k.key_hash;
        index_->put(k.key_id, k.org_id);
        ids.push_back(k.key_id);
    }
    fresh.set_ready();
    fresh.mark_synced(now_us());
    fresh.publish();
    table_.emplace(std::move(fresh));
    // Only now: workers may have used the old table up to the rename.
    index_->retain_only(ids, now_us());
    index_->mark_ready();
}

void KeyPublisher::upsert(const KeyInfo& info) {
    auto old = hash_by_id_.find(info.key_id);
    if (old != hash_by_id_.end() && old->second != info.key_hash) {
        table_->remove(old->second);
    }
    index_->put(info.key_id, info.org_id);  // before any worker can use it
    if (!table_->upsert(info)) {
        // Full: rebuild twice as big from what we know plus this key.
        std::vector<KeyInfo> all;
        all.reserve(hash_by_id_.size() + 1);
        table_->for_each([&](const KeyInfo& k) {
            if (k.key_id != info.key_id) all.push_back(k);
        });
        all.push_back(info);
        rebuild(all);
        log_info("key publisher: key table grown to " +
                 std::to_string(table_->capacity()) + " slots");
        return;
    }
    hash_by_id_[info.key_id] = info.key_hash;
}

void KeyPublisher::remove_id(const Uuid& id) {
    auto it = hash_by_id_.find(id);
    if (it == hash_by_id_.end()) return;
    table_->remove(it->second);
    hash_by_id_.erase(it);
    index_->remove(id, now_us());
}

void KeyPublisher::apply_notified(const std::vector<std::string>& ids) {
    std::string sql = std::string(kSelectKeys) + " AND id = $2";
    for (const std::string& text : ids) {
        Uuid id;
        if (!uuid_parse(text, &id)) {
            log_warn("key publisher: ignoring malformed notification");
            continue;
        }
        pg::Result res = conn_->exec(
            sql, {std::to_string(config_.keep_dead_keys_days), text});
        if (res.rows() == 0) {
            remove_id(id);  // deleted, or dead for too long
            continue;
        }
        try {
            upsert(key_info_from_row(row_at(res, 0)));
        } catch (const std::invalid_argument& e) {
            log_warn("key publisher: skipping key " + text + ": " + e.what());
            remove_id(id);
        }
    }
    stats_->notifications += ids.size();
    update_stats();
}

void KeyPublisher::wait_for_notifications(int timeout_ms) {
    PGconn* c = conn_->get();
    pollfd pfd{PQsocket(c), POLLIN, 0};
    if (pfd.fd < 0) {
        throw pg::Error("PostgreSQL connection lost");
    }
    int rc = poll(&pfd, 1, timeout_ms);
    if (rc < 0 && errno != EINTR) {
        throw pg::Error(std::string("poll: ") + std::strerror(errno));
    }
    if (rc > 0) {
        if (PQconsumeInput(c) == 0) {
            throw pg::Error(std::string("PostgreSQL connection lost: ") +
                            PQerrorMessage(c));
        }
    }
    while (PGnotify* n = PQnotifies(c)) {
        pending_ids_.emplace_back(n->extra);
        PQfreemem(n);
    }
    if (PQstatus(c) != CONNECTION_OK) {
        throw pg::Error("PostgreSQL connection lost");
    }
}

void KeyPublisher::update_stats() {
    stats_->keys = table_ ? table_->live_count() : 0;
    stats_->synced_at_us = now_us();
    stats_->ready = table_.has_value();
}

}  // namespace apikey
