// apikeyd's HTTP connection loop. One thread owns every socket: it accepts,
// reads each request's head and (small) body against a deadline, writes
// each answer and lingers on close, all non-blocking (epoll). Worker threads
// never touch a socket: they get one complete request in memory and return
// the answer's bytes, or hand them over while producing them (ReplyStream,
// bounded). So a slow, stalled or flooding client costs a buffer of a few
// KiB, never a thread (but a streamed answer's producer waits for it).
//
// Two lanes of workers: the bounded "slow" lane (the analytics API, which
// waits on PostgreSQL) and the fast lane (/healthz, /metrics, the dashboard:
// in-memory answers). A full lane answers 503 + Retry-After at once, so
// neither queue grows without bound, and the fast lane never waits behind
// analytics queries.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "http_head.h"
#include "http_stats.h"

namespace apikey {

struct FrontLimits {
    HeadLimits head;
    // Open connections; beyond it a new one gets a 503 and is closed.
    std::size_t max_connections = 512;
    // From accept (or from a kept-alive request's first byte) to the whole
    // head and body; then 408 and close.
    std::chrono::milliseconds header_timeout{5000};
    // Idle between two requests on one connection; then a silent close.
    std::chrono::milliseconds keep_alive_timeout{5000};
    int keep_alive_requests = 100;
    // Without any progress writing an answer; then close.
    std::chrono::milliseconds write_timeout{5000};
    // After answering and closing our side, input is read and dropped this
    // long (and this much) so the client sees the answer, not a reset.
    std::chrono::milliseconds linger_timeout{1000};
    std::size_t linger_max_bytes = 64 * 1024;
    std::size_t fast_workers = 2;
    std::size_t fast_queue = 256;
    std::size_t slow_workers = 4;
    std::size_t slow_queue = 128;
};

struct Peer {
    std::string ip;
    int port = 0;
};

struct Reply {
    // The response, or its rest after what went through the ReplyStream;
    // empty with nothing streamed: close without an answer.
    std::string bytes;
    bool close = false;  // close the connection after it
};

// The start of an answer, sent while the worker is still producing the
// rest (a long export). Bounded: write() waits while kStreamBufferBytes
// are unsent, so a slow reader slows the producer instead of growing a
// buffer; it returns false, at once, when the connection is gone (closed,
// timed out, server stopping): the producer should stop.
class ReplyStream {
public:
    virtual ~ReplyStream() = default;
    virtual bool write(std::string_view bytes) = 0;
};
inline constexpr std::size_t kStreamBufferBytes = 256 * 1024;

// Answers one complete request (head and body). `last`: the connection is
// closed after this answer. Called on a worker thread; must not throw.
using RequestHandler = std::function<Reply(
    std::string_view request, const Peer& peer, bool last, ReplyStream& out)>;
// True when `path` belongs to the slow lane.
using LaneSelector = std::function<bool(std::string_view path)>;

class HttpFront {
public:
    HttpFront(const FrontLimits& limits, HttpStats* stats,
              RequestHandler handler, LaneSelector is_slow);
    ~HttpFront();
    HttpFront(const HttpFront&) = delete;
    HttpFront& operator=(const HttpFront&) = delete;

    // Binds and listens; throws std::runtime_error saying why not.
    void listen(const std::string& host, int port);
    // The bound port (useful with port 0).
    int port() const;
    // Serves until stop(); then stops the workers and closes everything.
    void run();
    // From any thread.
    void stop();

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace apikey
