// apikeyd's HTTP side (cpp-httplib): /healthz, /metrics; the analytics API
// and the dashboard are added as routes here.
#pragma once

#include <memory>
#include <string>

#include "config.h"
#include "drainer.h"
#include "key_publisher.h"

namespace httplib {
class Server;
}

namespace apikey {

namespace api {
class AnalyticsApi;
}

struct DaemonState {
    const DaemonConfig* config = nullptr;
    KeyPublisherStats* keys = nullptr;
    DrainerStats* drain = nullptr;
    const Drainer* drainer = nullptr;
};

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

    DaemonState state_;
    // Declared before server_, so the server (whose routes call into it)
    // goes first.
    std::unique_ptr<api::AnalyticsApi> analytics_;
    std::unique_ptr<httplib::Server> server_;
};

}  // namespace apikey
