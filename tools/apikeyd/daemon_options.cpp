#include "daemon_options.h"

#include <sstream>

namespace apikey {
namespace {

using C = DaemonConfig;

DaemonOption option(const char* name, const char* metavar, OptionKind kind,
                    const char* help) {
    DaemonOption o;
    o.name = name;
    o.metavar = metavar;
    o.kind = kind;
    o.help = help;
    return o;
}

DaemonOption string_option(const char* name, const char* metavar,
                           OptionKind kind, std::string C::*field,
                           const char* default_value, const char* default_shown,
                           const char* help) {
    DaemonOption o = option(name, metavar, kind, help);
    o.text = field;
    o.default_value = default_value;
    o.default_shown = default_shown;
    return o;
}

DaemonOption int_option(const char* name, const char* metavar, int C::*field,
                        int min, int max, const char* default_value,
                        const char* help) {
    DaemonOption o = option(name, metavar, OptionKind::kInt, help);
    o.number = field;
    o.min = min;
    o.max = max;
    o.default_value = default_value;
    return o;
}

DaemonOption on_off_option(const char* name, bool C::*field,
                           const char* default_value, const char* help) {
    DaemonOption o = option(name, "on|off", OptionKind::kOnOff, help);
    o.flag = field;
    o.default_value = default_value;
    return o;
}

DaemonOption listen_option() {
    DaemonOption o = option("listen", "HOST:PORT", OptionKind::kListen,
                            "HTTP API, dashboard, /metrics, /healthz");
    o.text = &C::listen_host;
    o.number = &C::listen_port;
    o.min = 1;  // the port's bounds
    o.max = 65535;
    o.default_value = "127.0.0.1:8089";
    return o;
}

DaemonOption config_file_option() {
    DaemonOption o = string_option(
        "config", "FILE", OptionKind::kConfigFile, &C::config_file, nullptr,
        nullptr, "read options from FILE first; flags override it");
    o.in_config_file = false;  // a file naming another file: no loops
    return o;
}

std::vector<DaemonOption> build_options() {
    using K = OptionKind;
    return {
        config_file_option(),
        string_option("db", "CONNINFO", K::kText, &C::db, "",
                      "libpq's PG* environment", "libpq conninfo or URI"),
        // No literal default: parse_daemon_args() puts the host name in.
        string_option("node", "NAME", K::kName, &C::node, nullptr,
                      "the host name", "this host's name in usage records"),
        string_option("keys", "PATH", K::kNonEmpty, &C::keys_path,
                      "/run/apikey/keys", nullptr,
                      "key-table segment to publish (nginx: apikey_keys)"),
        string_option("usage", "PATH", K::kNonEmpty, &C::usage_path,
                      "/run/apikey/usage", nullptr,
                      "usage-ring segment to drain (nginx: apikey_usage)"),
        listen_option(),
        string_option("spool", "DIR", K::kNonEmpty, &C::spool_dir,
                      "/var/spool/apikeyd", nullptr,
                      "on-disk spool while PostgreSQL is unreachable"),
        int_option("spool-max-mb", "N", &C::spool_max_mb, 1, 1 << 20, "1024",
                   "spool bound; beyond it records are dropped and counted"),
        on_off_option("raw-events", &C::raw_events, "on",
                      "keep one api_key_usage row per request"),
        int_option("retention-months", "N", &C::retention_months, 1, 1200, "13",
                   "drop raw usage partitions older than N months"),
        int_option("key-resync", "SECONDS", &C::key_resync_seconds, 1, 86400,
                   "60", "full key-table resync period"),
        int_option("keep-dead-keys-days", "N", &C::keep_dead_keys_days, 0, 3650,
                   "30",
                   "keep revoked/expired keys in the table N days so nginx "
                   "reports them as such"),
        int_option("api-db-sessions", "N", &C::api_db_sessions, 1, 64, "4",
                   "PostgreSQL sessions of the analytics API, at most (one "
                   "per analytics worker thread)"),
    };
}

// --help's option lines: the flag in a 25-column field, then the words
// wrapped at 79 columns under the first one.
constexpr size_t kHelpIndent = 27;
constexpr size_t kHelpWidth = 79;

void append_help_entry(const std::string& flag,
                       const std::vector<std::string>& words,
                       std::string* out) {
    std::string line = "  " + flag;
    bool fresh = true;  // nothing after the flag yet on this line
    for (const std::string& word : words) {
        if (!fresh && line.size() + 1 + word.size() > kHelpWidth) {
            *out += line + "\n";
            line.clear();
            fresh = true;
        }
        if (fresh) {
            if (line.size() + 1 > kHelpIndent) {  // a flag too long to share
                *out += line + "\n";
                line.clear();
            }
            line.resize(kHelpIndent, ' ');
            line += word;
            fresh = false;
        } else {
            line += " " + word;
        }
    }
    *out += line + "\n";
}

std::vector<std::string> words_of(const char* text) {
    std::vector<std::string> words;
    std::istringstream in(text);
    for (std::string word; in >> word;) words.push_back(word);
    return words;
}

// The help text's words, then the default and "command line only" each as
// one word (they read badly broken).
std::vector<std::string> help_words(const DaemonOption& o) {
    std::vector<std::string> words = words_of(o.help);
    std::string shown = shown_default(o);
    if (!shown.empty()) words.push_back("(default: " + shown + ")");
    if (!o.in_config_file) words.push_back("(command line only)");
    return words;
}

std::string build_usage() {
    std::string out = R"(Usage: apikeyd [OPTIONS]

Publishes the API-key table from PostgreSQL for nginx's apikey module, drains
the usage rings into PostgreSQL, and serves the usage analytics API.

Options (each also accepted as a "name = value" line in a --config file,
unless marked "command line only"):
)";
    for (const DaemonOption& o : daemon_options()) {
        append_help_entry(std::string("--") + o.name + " " + o.metavar,
                          help_words(o), &out);
    }
    append_help_entry("--check-config",
                      words_of("test the options (the --config file and the "
                               "flags), print them and exit: 0 if they are "
                               "valid, 2 if not (command line only)"),
                      &out);
    append_help_entry("-h, --help", {"this", "text"}, &out);
    out += "\nSignals: SIGTERM/SIGINT stop cleanly.\n";
    return out;
}

}  // namespace

const std::vector<DaemonOption>& daemon_options() {
    static const std::vector<DaemonOption> options = build_options();
    return options;
}

const DaemonOption* find_daemon_option(const std::string& name) {
    for (const DaemonOption& o : daemon_options()) {
        if (name == o.name) return &o;
    }
    return nullptr;
}

std::string shown_default(const DaemonOption& option) {
    const char* shown =
        option.default_shown ? option.default_shown : option.default_value;
    return shown ? shown : "";
}

std::string format_option(const DaemonOption& option,
                          const DaemonConfig& config) {
    switch (option.kind) {
        case OptionKind::kInt:
            return std::to_string(config.*option.number);
        case OptionKind::kOnOff:
            return config.*option.flag ? "on" : "off";
        case OptionKind::kListen: {
            const std::string& host = config.*option.text;
            std::string port = std::to_string(config.*option.number);
            // Brackets where the parser would otherwise read the host wrong.
            bool bracket =
                host.find(':') != std::string::npos || host.rfind('[', 0) == 0;
            return bracket ? "[" + host + "]:" + port : host + ":" + port;
        }
        case OptionKind::kText:
        case OptionKind::kNonEmpty:
        case OptionKind::kName:
        case OptionKind::kConfigFile:
            break;
    }
    return config.*option.text;
}

const char* daemon_usage() {
    static const std::string text = build_usage();
    return text.c_str();
}

}  // namespace apikey
