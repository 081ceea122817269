// apikeyd's options, one table: each option's name, value type, bounds,
// default and help text. The flag parser, the config-file parser, the
// defaults of DaemonConfig and `apikeyd --help` all read it, and a unit test
// holds docs/apikeyd.md's flags table to it.
#pragma once

#include <string>
#include <vector>

#include "config.h"

namespace apikey {

enum class OptionKind {
    kText,        // any string, "" included
    kNonEmpty,    // any string but ""
    kName,        // not "", UTF-8 without NUL: PostgreSQL stores it
    kInt,         // a whole number from min to max
    kOnOff,       // "on" or "off"
    kListen,      // HOST:PORT or [HOST]:PORT, PORT from min to max
    kConfigFile,  // a file of `name = value` lines, read before the flags
};

struct DaemonOption {
    const char* name = "";     // the flag without "--"; the config-file name
    const char* metavar = "";  // what --help and the docs write after it
    OptionKind kind = OptionKind::kText;
    int min = 0;  // kInt: the value's bounds; kListen: the port's
    int max = 0;
    // Applied by DaemonConfig() through the same parser as a flag;
    // nullptr: none (or one computed later, as the node's host name).
    const char* default_value = nullptr;
    // What --help and the docs say the default is; nullptr: default_value.
    const char* default_shown = nullptr;
    bool in_config_file = true;
    const char* help = "";
    // Where the value goes: the string, the number, or the flag (kListen
    // uses text for the host and number for the port).
    std::string DaemonConfig::*text = nullptr;
    int DaemonConfig::*number = nullptr;
    bool DaemonConfig::*flag = nullptr;
};

// Every option, in the order --help and the docs list them.
const std::vector<DaemonOption>& daemon_options();

// The option called `name` (without dashes), or nullptr.
const DaemonOption* find_daemon_option(const std::string& name);

// The default as --help and the docs show it; "" when there is none.
std::string shown_default(const DaemonOption& option);

// The option's current value in `config`, written as a flag would take it
// ("on", "8089", "[::1]:8089"); parsing it back gives the same value.
std::string format_option(const DaemonOption& option,
                          const DaemonConfig& config);

}  // namespace apikey
