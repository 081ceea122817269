// Publishes the key table for nginx: a full load at start, LISTEN/NOTIFY
// driven updates of single keys, and a periodic full resync that heals
// missed notifications and lost connections. The only writer of the
// key-table segment.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "config.h"
#include "key_index.h"
#include "key_table.h"
#include "pg.h"

namespace apikey {

// Read by /healthz and /metrics while the publisher runs.
struct KeyPublisherStats {
    std::atomic<bool> ready{false};
    std::atomic<bool> db_connected{false};
    std::atomic<std::uint64_t> keys{0};
    std::atomic<std::int64_t> synced_at_us{0};
    std::atomic<std::uint64_t> full_syncs{0};
    std::atomic<std::uint64_t> notifications{0};
    std::atomic<std::uint64_t> db_errors{0};
};

// One api_keys row as text, as the publisher's queries return it.
struct KeyRow {
    std::string id;
    std::string org_id;
    std::string name;
    std::string key_hash_hex;  // 64 hex digits
    std::string scopes;        // comma-separated
    std::optional<std::int64_t> expires_at_us;
    std::optional<std::int64_t> revoked_at_us;
};

// Converts a row into a key-table entry; throws std::invalid_argument on a
// row the table cannot hold (bad id, hash, too many scopes, long name).
KeyInfo key_info_from_row(const KeyRow& row);

class KeyPublisher {
public:
    // Keeps `index` (which outlives it) in step with the published table;
    // fills it at once from the table published before, if there is one.
    KeyPublisher(const DaemonConfig& config, KeyPublisherStats* stats,
                 KeyIndex* index);

    // Runs until `stop` becomes true; never throws.
    void run(const std::atomic<bool>& stop);

private:
    struct UuidHash {
        std::size_t operator()(const Uuid& u) const noexcept;
    };

    void seed_index();
    void connect();
    void full_sync();
    void apply_notified(const std::vector<std::string>& ids);
    void rebuild(const std::vector<KeyInfo>& keys);
    void upsert(const KeyInfo& info);
    void remove_id(const Uuid& id);
    void wait_for_notifications(int timeout_ms);
    void update_stats();

    const DaemonConfig& config_;
    KeyPublisherStats* stats_;
    KeyIndex* index_;
    std::unique_ptr<pg::Connection> conn_;
    std::optional<KeyTableWriter> table_;
    std::unordered_map<Uuid, KeyHash, UuidHash> hash_by_id_;
    std::vector<std::string> pending_ids_;
};

}  // namespace apikey
