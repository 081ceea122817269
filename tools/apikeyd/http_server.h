// apikeyd's HTTP side: /healthz, /metrics, the analytics API and the
// dashboard. Sockets, deadlines and worker lanes belong to the connection
// loop (http_front.h); cpp-httplib only parses each complete request and
// routes it, in memory, on a worker thread.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "analytics_spikes.h"
#include "config.h"
#include "drainer.h"
#include "http_front.h"
#include "http_stats.h"
#include "key_publisher.h"

namespace httplib {
struct Request;
struct Response;
}  // namespace httplib

namespace apikey {

namespace api {
class AnalyticsApi;
}

// A body sent while it is produced (the usage export): it hands its bytes
// to `write` (false: the reader is gone, stop) and returns true when it
// wrote them all; false ends the answer short, which the client sees as a
// chunked body without its last chunk.
using BodyWriter = std::function<bool(std::string_view bytes)>;
using StreamedBody = std::function<bool(const BodyWriter& write)>;

// From a route: answers 200 with a chunked body that `body` produces once
// the route has returned, on the same worker thread, at the pace the client
// reads (http_front.h's ReplyStream). cpp-httplib runs its own content
// providers only under its listen loop, which apikeyd does not use. A HEAD
// request gets the head alone (`body` is dropped unrun).
void stream_body(const httplib::Request& req, httplib::Response& res,
                 const char* content_type, StreamedBody body);

struct DaemonState {
    const DaemonConfig* config = nullptr;
    KeyPublisherStats* keys = nullptr;
    DrainerStats* drain = nullptr;
    const Drainer* drainer = nullptr;
    const api::SpikeStats* spikes = nullptr;  // nullptr: no gauge
};

class HttpRouter;

// True for the paths of the analytics API: they wait on PostgreSQL, so they
// take the bounded slow lane; everything else answers from memory.
bool is_analytics_path(std::string_view path);

class HttpServer {
public:
    explicit HttpServer(const DaemonState& state);
    ~HttpServer();

    // Binds --listen; throws std::runtime_error with a clear reason.
    void bind();
    // Serves until stop() (blocking).
    void serve();
    void stop();

private:
    void add_routes();
    Reply handle(std::string_view request, const Peer& peer, bool last,
                 ReplyStream& out);

    DaemonState state_;
    HttpStats stats_;
    // In this order: the front's workers call the router, whose routes call
    // the analytics API; the front goes first.
    std::unique_ptr<api::AnalyticsApi> analytics_;
    std::unique_ptr<HttpRouter> router_;
    std::unique_ptr<HttpFront> front_;
};

}  // namespace apikey
