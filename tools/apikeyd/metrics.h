// GET /metrics: Prometheus text exposition of apikeyd's counters and gauges.
// Only counts, sizes and times: never a key, a hash or an org's data.
#pragma once

#include <cstdint>
#include <string>

#include "drainer.h"
#include "http_stats.h"
#include "key_publisher.h"

namespace apikey {

std::string format_metrics(const KeyPublisherStats& keys,
                           const DrainerStats& drain,
                           const SegmentSnapshot& rings, std::int64_t now_us);

// The HTTP server's own families, appended to the above.
std::string format_http_metrics(const HttpStats& http);

}  // namespace apikey
