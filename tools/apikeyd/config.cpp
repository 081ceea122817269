#include "config.h"

#include <unistd.h>

#include <climits>
#include <fstream>
#include <sstream>

#include "daemon_options.h"
#include "rollup.h"

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

void parse_listen(const DaemonOption& o, const std::string& value,
                  DaemonConfig* config) {
    // The message quotes the whole value, not only the port in it.
    auto bad = [&](const std::string& expected) {
        return UsageError("invalid --" + std::string(o.name) + " \"" + value +
                          "\": expected " + expected);
    };
    size_t colon = value.rfind(':');
    if (colon == std::string::npos || colon == 0) {
        throw bad("HOST:PORT");
    }
    std::string host = value.substr(0, colon);
    if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
        host = host.substr(1, host.size() - 2);
    }
    try {
        config->*o.number =
            parse_int(o.name, value.substr(colon + 1), o.min, o.max);
    } catch (const UsageError&) {
        throw bad("HOST:PORT with a PORT from " + std::to_string(o.min) +
                  " to " + std::to_string(o.max));
    }
    config->*o.text = host;
}

std::string require_nonempty(const std::string& name,
                             const std::string& value) {
    if (value.empty()) {
        throw UsageError("invalid --" + name + ": must not be empty");
    }
    return value;
}

const DaemonOption& option_named(const std::string& name) {
    const DaemonOption* o = find_daemon_option(name);
    if (o == nullptr) {
        throw UsageError("unknown option --" + name +
                         " (see apikeyd --help)");
    }
    return *o;
}

void read_config_file(const std::string& path, DaemonConfig* config) {
    std::ifstream f(path);
    if (!f) {
        throw UsageError("cannot read config file \"" + path + "\"");
    }
    std::stringstream text;
    text << f.rdbuf();
    apply_config_text(text.str(), path, config);
}

// Sets one option from its text, a flag's and a config line's alike.
void set_option(const DaemonOption& o, const std::string& value,
                DaemonConfig* c) {
    switch (o.kind) {
    case OptionKind::kText:
        c->*o.text = value;
        break;
    case OptionKind::kNonEmpty:
        c->*o.text = require_nonempty(o.name, value);
        break;
    case OptionKind::kName:
        // The node name goes into usage_offsets: text PostgreSQL would
        // refuse must be refused here, not on every commit.
        if (!text_is_clean(require_nonempty(o.name, value))) {
            throw UsageError(std::string("invalid --") + o.name +
                             ": must be UTF-8 text without NUL bytes");
        }
        c->*o.text = value;
        break;
    case OptionKind::kInt:
        c->*o.number = parse_int(o.name, value, o.min, o.max);
        break;
    case OptionKind::kOnOff:
        c->*o.flag = parse_on_off(o.name, value);
        break;
    case OptionKind::kListen:
        parse_listen(o, value, c);
        break;
    case OptionKind::kConfigFile:
        c->*o.text = value;
        read_config_file(value, c);
        break;
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

DaemonConfig::DaemonConfig() {
    for (const DaemonOption& o : daemon_options()) {
        if (o.default_value != nullptr) {
            set_option(o, o.default_value, this);
        }
    }
}

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
        std::string where = origin + ":" + std::to_string(lineno) + ": ";
        size_t eq = t.find('=');
        if (eq == std::string::npos) {
            throw UsageError(where + "expected \"name = value\"");
        }
        try {
            const DaemonOption& o = option_named(trim(t.substr(0, eq)));
            if (!o.in_config_file) {
                throw UsageError("--" + std::string(o.name) +
                                 " is not allowed in a config file");
            }
            set_option(o, trim(t.substr(eq + 1)), config);
        } catch (const UsageError& e) {
            throw UsageError(where + e.what());
        }
    }
}

bool parse_daemon_args(const std::vector<std::string>& args,
                       DaemonConfig* config) {
    // Split "--name value" and "--name=value" into pairs first, so that a
    // --config file can be applied before the flags that override it.
    std::vector<std::pair<const DaemonOption*, std::string>> flags;
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        if (a == "-h" || a == "--help" || a == "help") {
            return false;
        }
        if (a == "--check-config") {
            config->check_config = true;
            continue;
        }
        if (a.rfind("--", 0) != 0 || a.size() == 2) {
            throw UsageError("unexpected argument \"" + a +
                             "\" (see apikeyd --help)");
        }
        size_t eq = a.find('=');
        const DaemonOption& o = option_named(a.substr(2, eq - 2));
        if (eq != std::string::npos) {
            flags.emplace_back(&o, a.substr(eq + 1));
        } else if (i + 1 < args.size()) {
            flags.emplace_back(&o, args[++i]);
        } else {
            throw UsageError("option " + a + " needs a value");
        }
    }

    for (bool files : {true, false}) {
        for (const auto& [o, value] : flags) {
            if ((o->kind == OptionKind::kConfigFile) == files) {
                set_option(*o, value, config);
            }
        }
    }
    if (config->node.empty()) {
        config->node = default_node_name();
    }
    return true;
}

}  // namespace apikey
