// The org usage analytics API (docs/api.md):
//   GET /api/orgs/{org_id}/api-keys/usage[?dormant_days&limit&cursor&sort
//                                          &order&status&dormant&q&spike
//                                          &spike_ratio&spike_min]
//   GET /api/orgs/{org_id}/api-keys/{key_id}/usage[?from&to&interval&top
//                                          &spike_ratio&spike_min]
//   GET /api/orgs/{org_id}/api-keys/usage/export[?from&to&interval&format]
//   GET /api/keys/self/usage[?from&to&interval&top] (the caller's key)
// Bearer-key auth against the key table (api_auth), parameters checked by
// api_params, data from api_keys and the rollups (analytics_queries,
// usage_export).
//
// The JSON routes answer with an ETag over their data (complete_until
// aside) and 304 to an If-None-Match that names it; the export streams.
//
// Status codes: 400 bad parameter (an invalid cursor included), 401 missing/bad key, 403 key of the org
// without usage:read, 404 another org's (or no such) org or key, with one
// identical body, 503 key table or database unavailable.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>

#include "analytics_queries.h"
#include "analytics_spikes.h"
#include "api_auth.h"
#include "api_params.h"

namespace httplib {
class Server;
}

namespace apikey {

struct DaemonState;

namespace api {

using Json = nlohmann::ordered_json;

// --- complete_until
// ------------------------------------------------------------------

// What this node's capture pipeline holds back at one instant.
struct CaptureState {
    bool segment_attached = false;   // the drainer sees nginx's rings
    std::uint64_t ring_records = 0;  // records in the rings, not committed
    std::uint64_t spool_bytes = 0;   // batches waiting in the spool
    std::int64_t newest_committed_us = 0;  // 0: none since apikeyd started
};

// The instant up to which every usage record of this node is committed:
// `now_us` (taken before the snapshot and before querying) when nothing
// is held back; otherwise the newest committed record's time, and nullopt
// when nothing was committed since apikeyd started.
std::optional<std::int64_t> complete_until_us(const CaptureState& state,
                                              std::int64_t now_us) noexcept;

// --- JSON
// --------------------------------------------------------------------------

// One element of "keys" (and the per-key endpoint's "key"); "spike" by
// `rule`.
Json key_json(const KeySummary& key, const SpikeRule& rule);

// The whole per-key answer but complete_until, which the route adds last.
Json key_usage_json(const KeySummary& key, const UsageSummary& usage,
                    const std::vector<SpikeHour>& spikes,
                    const SpikeRule& rule);

// --- routes
// --------------------------------------------------------------------------

class AnalyticsApi {
   public:
    explicit AnalyticsApi(const DaemonState& state);
    ~AnalyticsApi();
    AnalyticsApi(const AnalyticsApi&) = delete;
    AnalyticsApi& operator=(const AnalyticsApi&) = delete;

    // Registers both GET routes; the object must outlive the server.
    void add_routes(httplib::Server& server);

   private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace api
}  // namespace apikey
