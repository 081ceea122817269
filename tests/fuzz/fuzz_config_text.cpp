// Fuzz target: apikeyd's configuration parsing (tools/apikeyd/config.cpp
// and the options table in daemon_options.cpp): apply_config_text() on
// arbitrary config-file text, and parse_daemon_args() on arbitrary argument
// vectors.
//
// Input: the config text. The same bytes, split at NUL bytes, are also an
// argument vector (arguments naming "config" are dropped: --config reads a
// file, and a fuzzer must not read /dev/stdin or /dev/zero).
//
// Checks: either the call returns, or it throws UsageError (whose message,
// for a config file, starts with "<origin>:<line>: "); nothing else
// escapes. An accepted configuration holds only values inside the options
// table's bounds (ports, spool-max-mb, retention-months, key-resync,
// keep-dead-keys-days) and no empty path, and each value, written back as
// a flag, parses to itself. Each `name = value` line of the text, alone,
// gives the same verdict, message and values as the flag `--name=value`.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "config.h"
#include "daemon_options.h"
#include "rollup.h"

#include "fuzz_check.h"

namespace {

using namespace apikey;

void check_config(const DaemonConfig& c) {
    for (const DaemonOption& o : daemon_options()) {
        if (o.kind == OptionKind::kInt || o.kind == OptionKind::kListen) {
            FUZZ_CHECK(c.*o.number >= o.min && c.*o.number <= o.max);
        }
        if (o.kind == OptionKind::kName) {
            FUZZ_CHECK(text_is_clean(c.*o.text));
        }
        if (o.kind == OptionKind::kNonEmpty && o.default_value != nullptr) {
            FUZZ_CHECK(!(c.*o.text).empty());
        }
        const std::string text = format_option(o, c);
        // Not --config (it reads a file), nor a node left for the host name.
        if (o.kind == OptionKind::kConfigFile || text.empty()) continue;
        // The value, written back as a flag, parses to itself.
        DaemonConfig again;
        bool accepted = true;
        try {
            parse_daemon_args({std::string("--") + o.name + "=" + text},
                              &again);
        } catch (const UsageError&) {
            accepted = false;
        }
        FUZZ_CHECK(accepted && format_option(o, again) == text);
    }
}

std::string trim(const std::string& s) {
    std::size_t b = s.find_first_not_of(" \t\r\n");
    std::size_t e = s.find_last_not_of(" \t\r\n");
    return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

// One `name = value` line, alone in a config file and as `--name=value`:
// the same verdict, the same message (after "<origin>:1: ") and the same
// values. Options only for the command line are refused in the file.
void check_line_against_flag(const std::string& line) {
    const std::string t = trim(line);
    const std::size_t eq = t.find('=');
    if (t.empty() || t[0] == '#' || eq == std::string::npos) return;
    const std::string name = trim(t.substr(0, eq));
    const DaemonOption* option = find_daemon_option(name);

    DaemonConfig from_line;
    std::string line_error;
    try {
        apply_config_text(line, "l.conf", &from_line);
    } catch (const UsageError& e) {
        line_error = e.what();
        FUZZ_CHECK(line_error.rfind("l.conf:1: ", 0) == 0);
        line_error.erase(0, 10);
    }
    if (option != nullptr && !option->in_config_file) {
        FUZZ_CHECK(line_error == "--" + name +
                                     " is not allowed in a config file");
        return;  // as a flag it would read a file
    }

    DaemonConfig from_flag;
    std::string flag_error;
    try {
        parse_daemon_args({"--" + name + "=" + trim(t.substr(eq + 1))},
                          &from_flag);
    } catch (const UsageError& e) {
        flag_error = e.what();
    }
    FUZZ_CHECK(line_error == flag_error);
    if (!line_error.empty()) return;
    for (const DaemonOption& o : daemon_options()) {
        // parse_daemon_args() puts the host name into an unset node
        if (o.text == &DaemonConfig::node && from_line.node.empty()) continue;
        FUZZ_CHECK(format_option(o, from_line) == format_option(o, from_flag));
    }
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
    std::size_t line_start = 0;
    for (std::size_t i = 0; i <= size; ++i) {
        if (i == size || text[i] == '\n') {
            check_line_against_flag(text.substr(line_start, i - line_start));
            line_start = i + 1;
        }
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
