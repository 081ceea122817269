// Fuzz target: apikeyd's configuration parsing (tools/apikeyd/config.cpp):
// apply_config_text() on arbitrary config-file text, and parse_daemon_args()
// on arbitrary argument vectors.
//
// Input: the config text. The same bytes, split at NUL bytes, are also an
// argument vector (arguments naming "config" are dropped: --config reads a
// file, and a fuzzer must not read /dev/stdin or /dev/zero).
//
// Checks: either the call returns, or it throws UsageError (whose message,
// for a config file, starts with "<origin>:<line>: "); nothing else
// escapes. An accepted configuration holds only values inside the
// documented ranges (ports 1..65535, spool-max-mb 1..1048576,
// retention-months 1..1200, key-resync 1..86400, keep-dead-keys-days
// 0..3650) and no empty path.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "config.h"

#include "fuzz_check.h"

namespace {

using namespace apikey;

void check_config(const DaemonConfig& c) {
    FUZZ_CHECK(c.listen_port >= 1 && c.listen_port <= 65535);
    FUZZ_CHECK(c.spool_max_mb >= 1 && c.spool_max_mb <= (1 << 20));
    FUZZ_CHECK(c.retention_months >= 1 && c.retention_months <= 1200);
    FUZZ_CHECK(c.key_resync_seconds >= 1 && c.key_resync_seconds <= 86400);
    FUZZ_CHECK(c.keep_dead_keys_days >= 0 && c.keep_dead_keys_days <= 3650);
    FUZZ_CHECK(!c.keys_path.empty() && !c.usage_path.empty());
    FUZZ_CHECK(!c.spool_dir.empty());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string text(reinterpret_cast<const char*>(data), size);

    DaemonConfig config;
    const std::string origin = "fuzz.conf";
    try {
        apply_config_text(text, origin, &config);
        check_config(config);
    } catch (const UsageError& e) {
        const std::string_view msg = e.what();
        FUZZ_CHECK(msg.substr(0, origin.size() + 1) == origin + ":");
        // "<origin>:<line number>: ..."
        std::size_t i = origin.size() + 1;
        FUZZ_CHECK(i < msg.size() && msg[i] >= '1' && msg[i] <= '9');
        while (i < msg.size() && msg[i] >= '0' && msg[i] <= '9') ++i;
        FUZZ_CHECK(msg.substr(i, 2) == ": ");
    }

    std::vector<std::string> args;
    std::size_t start = 0;
    for (std::size_t i = 0; i <= size; ++i) {
        if (i == size || data[i] == 0) {
            std::string a = text.substr(start, i - start);
            if (a.find("config") == std::string::npos) args.push_back(std::move(a));
            start = i + 1;
        }
    }
    DaemonConfig from_args;
    try {
        if (parse_daemon_args(args, &from_args)) {
            check_config(from_args);
            FUZZ_CHECK(!from_args.node.empty());  // defaults to the host name
        }
    } catch (const UsageError& e) {
        FUZZ_CHECK(std::string_view(e.what()).size() > 0);
    }
    return 0;
}
