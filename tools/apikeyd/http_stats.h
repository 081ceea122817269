// Counters of apikeyd's HTTP connection loop, shown on /metrics.
#pragma once

#include <atomic>
#include <cstdint>

namespace apikey {

// Why the connection loop answered a request itself, without a handler.
enum class HttpRefusal {
    kBadRequest = 0,  // 400: malformed request line, field or framing
    kTimeout,         // 408: head (or declared body) not in within the timeout
    kLengthRequired,  // 411: a Transfer-Encoding body
    kBodyTooLarge,    // 413
    kHeadTooLarge,    // 431
    kBusy,            // 503: the request's worker queue was full
    kCount
};

inline constexpr int kHttpRefusalStatus[] = {400, 408, 411, 413, 431, 503};
static_assert(sizeof(kHttpRefusalStatus) / sizeof(kHttpRefusalStatus[0]) ==
              static_cast<int>(HttpRefusal::kCount));

struct HttpStats {
    std::atomic<std::int64_t> connections{0};  // open now
    // Closed at once (after a best-effort 503) because the cap was reached.
    std::atomic<std::uint64_t> connections_refused{0};
    std::atomic<std::uint64_t> write_timeouts{0};
    // Analytics requests waiting for a worker.
    std::atomic<std::int64_t> api_queued{0};
    std::atomic<std::uint64_t> refused[static_cast<int>(HttpRefusal::kCount)]{};

    void count(HttpRefusal r) {
        refused[static_cast<int>(r)].fetch_add(1, std::memory_order_relaxed);
    }
};

}  // namespace apikey
