// apikeyd --check-config: what `nginx -t` is to nginx. It tests the options
// (flags over the --config file, already parsed) with the checks apikeyd
// makes before it touches anything, prints the options it would run with,
// and changes nothing: no database connection, no file written.
#pragma once

#include <cstdio>
#include <string>

#include "config.h"

namespace apikey {

// The directories of --keys and --usage pass the trust rule that nginx
// applies too; false with the reason in *why otherwise.
bool runtime_dirs_trusted(const DaemonConfig& config, std::string* why);

// `conninfo` (keywords or a URI) as libpq reads it, in keyword form, with
// every secret (the password) masked: the options can then be shown.
// Throws UsageError when libpq cannot parse it.
std::string conninfo_for_display(const std::string& conninfo);

// Every option as a `name = value` config line, the db masked.
std::string effective_options(const DaemonConfig& config);

// Runs the checks: on success the options to `out`, "... test is
// successful" to `err`, returns 0; otherwise the reason and "... test
// failed" to `err`, returns 2 (as a bad flag does).
int check_config(const DaemonConfig& config, std::FILE* out, std::FILE* err);

}  // namespace apikey
