#include "config.h"

#include <unistd.h>

#include <climits>
#include <fstream>
#include <sstream>

namespace apikey {
namespace {

std::string trim(const std::string& s) {
    size_t b = s.find_first_not_of(" \t\r\n");
    size_t e = s.find_last_not_of(" \t\r\n");
    return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

int parse_int(const std::string& name, const std::string& value, int min,
              int max) {
    try {
        size_t used = 0;
        long v = std::stol(value, &used, 10);
        if (used == value.size() && v >= min && v <= max) {
            return static_cast<int>(v);
        }
    } catch (const std::exception&) {
    }
    throw UsageError("invalid --" + name + " \"" + value +
                     "\": expected a whole number from " +
                     std::to_string(min) + " to " + std::to_string(max));
}

bool parse_on_off(const std::string& name, const std::string& value) {
    if (value == "on") return true;
    if (value == "off") return false;
    throw UsageError("invalid --" + name + " \"" + value +
                     "\": expected on or off");
}

void parse_listen(const std::string& value, DaemonConfig* config) {
    size_t colon = value.rfind(':');
    if (colon == std::string::npos || colon == 0) {
        throw UsageError("invalid --listen \"" + value +
                         "\": expected HOST:PORT");
    }
    std::string host = value.substr(0, colon);
    if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
        host = host.substr(1, host.size() - 2);
    }
    config->listen_port = parse_int("listen", value.substr(colon + 1), 1,
                                    65535);
    config->listen_host = host;
}

std::string require_nonempty(const std::string& name,
                             const std::string& value) {
    if (value.empty()) {
        throw UsageError("invalid --" + name + ": must not be empty");
    }
    return value;
}

const char* const kOptionNames[] = {
    "config", "db",    "node",         "keys",       "usage",
    "listen", "spool", "spool-max-mb", "raw-events", "retention-months",
    "key-resync", "keep-dead-keys-days",
};

bool is_known_option(const std::string& name) {
    for (const char* known : kOptionNames) {
        if (name == known) return true;
    }
    return false;
}

// Sets one option by its flag name (without dashes).
void set_option(const std::string& name, const std::string& value,
                DaemonConfig* c) {
    if (name == "db") {
        c->db = value;
    } else if (name == "node") {
        c->node = require_nonempty(name, value);
    } else if (name == "keys") {
        c->keys_path = require_nonempty(name, value);
    } else if (name == "usage") {
        c->usage_path = require_nonempty(name, value);
    } else if (name == "listen") {
        parse_listen(value, c);
    } else if (name == "spool") {
        c->spool_dir = require_nonempty(name, value);
    } else if (name == "spool-max-mb") {
        c->spool_max_mb = parse_int(name, value, 1, 1 << 20);
    } else if (name == "raw-events") {
        c->raw_events = parse_on_off(name, value);
    } else if (name == "retention-months") {
        c->retention_months = parse_int(name, value, 1, 1200);
    } else if (name == "key-resync") {
        c->key_resync_seconds = parse_int(name, value, 1, 86400);
    } else if (name == "keep-dead-keys-days") {
        c->keep_dead_keys_days = parse_int(name, value, 0, 3650);
    } else {
        throw UsageError("unknown option --" + name +
                         " (see apikeyd --help)");
    }
}

std::string default_node_name() {
    char host[HOST_NAME_MAX + 1] = {};
    if (gethostname(host, sizeof(host) - 1) == 0 && host[0] != '\0') {
        return host;
    }
    return "localhost";
}

}  // namespace

void apply_config_text(const std::string& text, const std::string& origin,
                       DaemonConfig* config) {
    std::istringstream in(text);
    std::string line;
    int lineno = 0;
    while (std::getline(in, line)) {
        ++lineno;
        std::string t = trim(line);
        if (t.empty() || t[0] == '#') {
            continue;
        }
        size_t eq = t.find('=');
        if (eq == std::string::npos) {
            throw UsageError(origin + ":" + std::to_string(lineno) +
                             ": expected \"name = value\"");
        }
        try {
            set_option(trim(t.substr(0, eq)), trim(t.substr(eq + 1)), config);
        } catch (const UsageError& e) {
            throw UsageError(origin + ":" + std::to_string(lineno) + ": " +
                             e.what());
        }
    }
}

bool parse_daemon_args(const std::vector<std::string>& args,
                       DaemonConfig* config) {
    // Split "--name value" and "--name=value" into pairs first, so that a
    // --config file can be applied before the flags that override it.
    std::vector<std::pair<std::string, std::string>> flags;
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        if (a == "-h" || a == "--help" || a == "help") {
            return false;
        }
        if (a.rfind("--", 0) != 0 || a.size() == 2) {
            throw UsageError("unexpected argument \"" + a +
                             "\" (see apikeyd --help)");
        }
        size_t eq = a.find('=');
        if (eq != std::string::npos) {
            flags.emplace_back(a.substr(2, eq - 2), a.substr(eq + 1));
            continue;
        }
        if (i + 1 >= args.size()) {
            if (!is_known_option(a.substr(2))) {
                throw UsageError("unknown option " + a +
                                 " (see apikeyd --help)");
            }
            throw UsageError("option " + a + " needs a value");
        }
        flags.emplace_back(a.substr(2), args[++i]);
    }

    for (const auto& [name, value] : flags) {
        if (name == "config") {
            std::ifstream f(value);
            if (!f) {
                throw UsageError("cannot read config file \"" + value + "\"");
            }
            std::stringstream text;
            text << f.rdbuf();
            config->config_file = value;
            apply_config_text(text.str(), value, config);
        }
    }
    for (const auto& [name, value] : flags) {
        if (name != "config") {
            set_option(name, value, config);
        }
    }
    if (config->node.empty()) {
        config->node = default_node_name();
    }
    return true;
}

const char* daemon_usage() {
    return R"(Usage: apikeyd [OPTIONS]

Publishes the API-key table from PostgreSQL for nginx's apikey module, drains
the usage rings into PostgreSQL, and serves the usage analytics API.

Options (also accepted as "name = value" lines in a --config file):
  --config FILE            read options from FILE first; flags override it
  --db CONNINFO            libpq conninfo or URI (default: PG* environment)
  --node NAME              this host's name in usage records (default: hostname)
  --keys PATH              key-table segment to publish
                           (default: /run/apikey/keys; nginx: apikey_keys)
  --usage PATH             usage-ring segment to drain
                           (default: /run/apikey/usage; nginx: apikey_usage)
  --listen HOST:PORT       HTTP API, dashboard, /metrics, /healthz
                           (default: 127.0.0.1:8089)
  --spool DIR              on-disk spool while PostgreSQL is unreachable
                           (default: /var/spool/apikeyd)
  --spool-max-mb N         spool bound; beyond it records are dropped and
                           counted (default: 1024)
  --raw-events on|off      keep one api_key_usage row per request (default: on)
  --retention-months N     drop raw usage partitions older than N months
                           (default: 13)
  --key-resync SECONDS     full key-table resync period (default: 60)
  --keep-dead-keys-days N  keep revoked/expired keys in the table N days so
                           nginx reports them as such (default: 30)
  -h, --help               this text

Signals: SIGTERM/SIGINT stop cleanly.
)";
}

}  // namespace apikey
