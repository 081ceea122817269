// apikeyd's configuration: command-line flags, optionally mirrored by a
// config file of `name = value` lines (flag names without the dashes).
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

namespace apikey {

// The options' names, bounds, defaults and help text are in one table,
// daemon_options.cpp; the fields here only hold the values.
struct DaemonConfig {
    // Every option at its default from the table.
    DaemonConfig();

    std::string db;  // libpq conninfo or URI; "" = PG* environment
    std::string node;
    std::string keys_path;
    std::string usage_path;
    std::string listen_host;
    int listen_port = 0;
    std::string spool_dir;
    int spool_max_mb = 0;  // beyond this, records are dropped (counted)
    bool raw_events = false;
    int retention_months = 0;
    int key_resync_seconds = 0;
    // Revoked or expired keys stay in the key table this long, so nginx can
    // say "revoked"/"expired" (and record usage) rather than "unknown".
    int keep_dead_keys_days = 0;
    // The analytics API's PostgreSQL sessions, at most; also its worker
    // threads, so that no worker waits for a session.
    int api_db_sessions = 0;
    std::string config_file;
    // --check-config: test the options and exit (not an option of the
    // table: it takes no value and means nothing in a file).
    bool check_config = false;
};

// A bad flag or value; what() is the message for the user.
class UsageError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Parses argv (without argv[0]). A `--config FILE` is read first, then the
// flags override it. Returns false if --help was asked for;
// `--check-config` sets config->check_config.
bool parse_daemon_args(const std::vector<std::string>& args,
                       DaemonConfig* config);

// Applies the `name = value` lines of a config file's text (every option
// but --config itself).
void apply_config_text(const std::string& text, const std::string& origin,
                       DaemonConfig* config);

// The --help text, built from the options table.
const char* daemon_usage();

}  // namespace apikey
