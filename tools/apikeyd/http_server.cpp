#include "http_server.h"

#include <httplib.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "analytics_api.h"
#include "dashboard.h"
#include "metrics.h"
#include "time_util.h"

namespace apikey {

// cpp-httplib's server, used only to parse a request and run its route:
// process_request() is protected in httplib::Server.
class HttpRouter : public httplib::Server {
public:
    using httplib::Server::process_request;
};

namespace {

constexpr std::string_view kAnalyticsPrefix = "/api/";

void send_json(httplib::Response& res, int status, const nlohmann::json& j) {
    res.status = status;
    res.set_header("Cache-Control", "no-store");
    // Replaced, not thrown: a node name that is not UTF-8 must not turn
    // /healthz into a 500.
    res.set_content(
        j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
        "application/json");
}

// One complete request in, the response bytes out: what httplib reads and
// writes never touches the socket (the connection loop owns it).
class MemoryStream final : public httplib::Stream {
public:
    MemoryStream(std::string_view in, const Peer& peer)
        : in_(in), peer_(peer) {}

    bool is_readable() const override { return true; }
    bool is_writable() const override { return true; }
    ssize_t read(char* ptr, size_t size) override {
        size_t n = std::min(size, in_.size());
        std::memcpy(ptr, in_.data(), n);
        in_.remove_prefix(n);
        return static_cast<ssize_t>(n);
    }
    ssize_t write(const char* ptr, size_t size) override {
        out_.append(ptr, size);
        return static_cast<ssize_t>(size);
    }
    void get_remote_ip_and_port(std::string& ip, int& port) const override {
        ip = peer_.ip;
        port = peer_.port;
    }
    void get_local_ip_and_port(std::string& ip, int& port) const override {
        ip.clear();
        port = 0;
    }
    // No descriptor: httplib would refuse one above FD_SETSIZE.
    socket_t socket() const override { return INVALID_SOCKET; }

    std::string take_output() { return std::move(out_); }

private:
    std::string_view in_;
    const Peer& peer_;
    std::string out_;
};

// The body a route on this worker thread asked for (stream_body); handle()
// takes it once the route returned.
StreamedBody& pending_body() {
    thread_local StreamedBody body;
    return body;
}

// One chunk of a chunked body: size in hex, CRLF, the bytes, CRLF.
bool write_chunk(ReplyStream& out, std::string_view bytes) {
    if (bytes.empty()) return true;  // an empty chunk would end the body
    char size[24];
    int n = std::snprintf(size, sizeof(size), "%zx\r\n", bytes.size());
    std::string chunk(size, static_cast<std::size_t>(n));
    chunk.append(bytes);
    chunk.append("\r\n");
    return out.write(chunk);
}

}  // namespace

void stream_body(const httplib::Request& req, httplib::Response& res,
                 const char* content_type, StreamedBody body) {
    res.status = 200;
    // Only for its head (Transfer-Encoding: chunked): cpp-httplib does not
    // run it outside its own listen loop; failing keeps a change of that
    // from sending a second body.
    res.set_chunked_content_provider(
        content_type, [](std::size_t, httplib::DataSink&) { return false; });
    if (req.method != "HEAD") pending_body() = std::move(body);
}

bool is_analytics_path(std::string_view path) {
    // cpp-httplib routes the percent-decoded path ("/%61pi/..." reaches an
    // /api/ route): an encoded path takes the analytics lane too, so that no
    // caller can run analytics queries in the lane /healthz needs. No route
    // of the fast lane needs an escape.
    return path.substr(0, kAnalyticsPrefix.size()) == kAnalyticsPrefix ||
           path.find('%') != std::string_view::npos;
}

HttpServer::HttpServer(const DaemonState& state)
    : state_(state), router_(std::make_unique<HttpRouter>()) {
    FrontLimits limits;
    limits.slow_workers = static_cast<std::size_t>(state.config->api_db_sessions);
    // What the Keep-Alive header announces; the front enforces both.
    router_->set_keep_alive_max_count(
        static_cast<size_t>(limits.keep_alive_requests));
    router_->set_keep_alive_timeout(
        std::chrono::duration_cast<std::chrono::seconds>(
            limits.keep_alive_timeout)
            .count());
    router_->set_payload_max_length(limits.head.max_body_bytes);
    add_routes();
    front_ = std::make_unique<HttpFront>(
        limits, &stats_,
        [this](std::string_view request, const Peer& peer, bool last,
               ReplyStream& out) { return handle(request, peer, last, out); },
        is_analytics_path);
}

HttpServer::~HttpServer() = default;

Reply HttpServer::handle(std::string_view request, const Peer& peer,
                         bool last, ReplyStream& out) {
    MemoryStream stream(request, peer);
    bool closed = false;
    pending_body() = nullptr;
    bool ok = router_->process_request(stream, last, closed, nullptr);
    StreamedBody body = std::move(pending_body());
    pending_body() = nullptr;
    bool close = last || closed || !ok;
    if (!body) return Reply{stream.take_output(), close};

    if (!out.write(stream.take_output())) return Reply{{}, true};
    bool complete = body([&out](std::string_view bytes) {
        return write_chunk(out, bytes);
    });
    // Short: close after what was sent, so the missing last chunk shows.
    if (!complete) return Reply{{}, true};
    return Reply{"0\r\n\r\n", close};
}

void HttpServer::add_routes() {
    router_->Get("/healthz", [this](const httplib::Request&,
                                    httplib::Response& res) {
        const KeyPublisherStats& k = *state_.keys;
        std::int64_t synced = k.synced_at_us.load();
        nlohmann::json body = {
            {"status", "ok"},
            {"node", state_.config->node},
            {"database", k.db_connected.load() ? "connected" : "unreachable"},
            {"key_table",
             {{"ready", k.ready.load()},
              {"keys", k.keys.load()},
              {"age_seconds", synced ? nlohmann::json((now_us() - synced) / 1e6)
                                     : nlohmann::json(nullptr)}}},
        };
        send_json(res, 200, body);
    });

    router_->Get("/metrics", [this](const httplib::Request&,
                                    httplib::Response& res) {
        res.set_content(format_metrics(*state_.keys, *state_.drain,
                                       state_.drainer->snapshot(), now_us()) +
                            format_http_metrics(stats_) +
                            (state_.spikes
                                 ? api::format_spike_metrics(*state_.spikes)
                                 : std::string()),
                        "text/plain; version=0.0.4");
    });

    analytics_ = std::make_unique<api::AnalyticsApi>(state_);
    analytics_->add_routes(*router_);
    add_dashboard_routes(*router_);

    router_->set_error_handler([](const httplib::Request&,
                                  httplib::Response& res) {
        if (res.body.empty()) {
            const char* what = res.status == 404   ? "not found"
                               : res.status == 405 ? "method not allowed"
                                                   : "bad request";
            send_json(res, res.status, {{"error", what}});
        }
    });
    router_->set_exception_handler([](const httplib::Request&,
                                      httplib::Response& res,
                                      std::exception_ptr) {
        send_json(res, 500, {{"error", "internal error"}});
    });
}

void HttpServer::bind() {
    const DaemonConfig& c = *state_.config;
    front_->listen(c.listen_host, c.listen_port);
}

void HttpServer::serve() { front_->run(); }

void HttpServer::stop() { front_->stop(); }

}  // namespace apikey
