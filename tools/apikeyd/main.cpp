// apikeyd: publishes the key table, drains usage into PostgreSQL, serves the
// analytics API. See `apikeyd --help` and docs/apikeyd.md.

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <thread>

#include "analytics_spikes.h"
#include "check_config.h"
#include "config.h"
#include "drainer.h"
#include "http_server.h"
#include "key_index.h"
#include "key_publisher.h"
#include "log.h"

namespace {

std::atomic<bool> g_stop{false};

void on_signal(int) { g_stop = true; }

}  // namespace

int main(int argc, char** argv) {
    using namespace apikey;

    DaemonConfig config;
    try {
        if (!parse_daemon_args({argv + 1, argv + argc}, &config)) {
            std::fputs(daemon_usage(), stdout);
            return 0;
        }
    } catch (const UsageError& e) {
        std::fprintf(stderr, "apikeyd: %s\n", e.what());
        if (config.check_config) {
            std::fputs("apikeyd: configuration test failed\n", stderr);
        }
        return 2;
    }
    if (config.check_config) {
        return check_config(config, stdout, stderr);
    }
    // Refusing the runtime directories here says so at once instead of in
    // every retry.
    std::string why;
    if (!runtime_dirs_trusted(config, &why)) {
        std::fprintf(stderr, "apikeyd: %s\n", why.c_str());
        return 2;
    }

    std::signal(SIGPIPE, SIG_IGN);
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);

    KeyPublisherStats key_stats;
    DrainerStats drain_stats;
    KeyIndex key_index;
    KeyPublisher publisher(config, &key_stats, &key_index);
    Drainer drainer(config, &drain_stats, &key_index);
    if (!drainer.claim_node()) return 1;
    api::SpikeStats spike_stats;
    api::SpikeRefresher spikes(config.db, &spike_stats);
    DaemonState state{&config, &key_stats, &drain_stats, &drainer,
                      &spike_stats};

    HttpServer http(state);
    try {
        http.bind();
    } catch (const std::exception& e) {
        log_error(std::string("apikeyd: ") + e.what());
        return 1;
    }

    log_info(std::string("apikeyd starting (version ") + APIKEY_VERSION +
             "): node " + config.node + ", keys " + config.keys_path +
             ", usage " + config.usage_path + ", listening on " +
             config.listen_host + ":" + std::to_string(config.listen_port));

    std::thread keys_thread([&] { publisher.run(g_stop); });
    std::thread drain_thread([&] { drainer.run(g_stop); });
    std::thread http_thread([&] { http.serve(); });
    std::thread spike_thread([&] { spikes.run(g_stop); });

    while (!g_stop.load()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }

    log_info("apikeyd stopping");
    http.stop();
    http_thread.join();
    keys_thread.join();
    drain_thread.join();
    spike_thread.join();
    log_info("apikeyd stopped");
    return 0;
}
