#include "http_server.h"

#include <httplib.h>

#include <nlohmann/json.hpp>
#include <stdexcept>

#include "analytics_api.h"
#include "dashboard.h"
#include "metrics.h"
#include "time_util.h"

namespace apikey {
namespace {

void send_json(httplib::Response& res, int status, const nlohmann::json& j) {
    res.status = status;
    res.set_header("Cache-Control", "no-store");
    res.set_content(j.dump(), "application/json");
}

}  // namespace

HttpServer::HttpServer(const DaemonState& state)
    : state_(state), server_(std::make_unique<httplib::Server>()) {
    // cpp-httplib's default also sets SO_REUSEPORT, which would let a second
    // apikeyd share the port and split requests: a busy port must fail.
    server_->set_socket_options([](socket_t sock) {
        int yes = 1;
        setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    });
    add_routes();
}

HttpServer::~HttpServer() = default;

void HttpServer::add_routes() {
    server_->Get("/healthz", [this](const httplib::Request&,
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

    server_->Get("/metrics", [this](const httplib::Request&,
                                    httplib::Response& res) {
        res.set_content(format_metrics(*state_.keys, *state_.drain,
                                       state_.drainer->snapshot(), now_us()),
                        "text/plain; version=0.0.4");
    });

    analytics_ = std::make_unique<api::AnalyticsApi>(state_);
    analytics_->add_routes(*server_);
    add_dashboard_routes(*server_);

    server_->set_error_handler([](const httplib::Request&,
                                  httplib::Response& res) {
        if (res.body.empty()) {
            const char* what = res.status == 404   ? "not found"
                               : res.status == 405 ? "method not allowed"
                                                   : "bad request";
            send_json(res, res.status, {{"error", what}});
        }
    });
    server_->set_exception_handler([](const httplib::Request&,
                                      httplib::Response& res,
                                      std::exception_ptr) {
        send_json(res, 500, {{"error", "internal error"}});
    });
}

void HttpServer::bind() {
    const DaemonConfig& c = *state_.config;
    if (!server_->bind_to_port(c.listen_host, c.listen_port)) {
        throw std::runtime_error("cannot listen on " + c.listen_host + ":" +
                                 std::to_string(c.listen_port) +
                                 " (address in use or not local?)");
    }
}

void HttpServer::serve() { server_->listen_after_bind(); }

void HttpServer::stop() { server_->stop(); }

}  // namespace apikey
