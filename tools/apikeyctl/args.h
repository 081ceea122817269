// Command-line parsing for apikeyctl: pure (no I/O, no database), so every
// rule a user can trip over is unit-tested.
#pragma once

#include <chrono>
#include <cstddef>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "api_params.h"
#include "key_table.h"
#include "scope.h"

namespace apikey::ctl {

inline constexpr int kExitOk = 0;
inline constexpr int kExitRuntime = 1;  // database or runtime failure
inline constexpr int kExitUsage = 2;    // bad command line

// A key's name and scopes must fit the key table's entry (one definition,
// shared/key_table.h and shared/scope.h); org names share the name limit.
inline constexpr std::size_t kMaxNameBytes = apikey::kMaxNameLen;
using apikey::kMaxScopeLen;
using apikey::kMaxScopes;
inline constexpr int kDefaultDormantDays = 30;
inline constexpr int kMaxDormantDays = 36500;
inline constexpr std::chrono::seconds kDefaultGrace = std::chrono::hours(24);
// Longest duration accepted anywhere (100 years): keeps timestamps sane.
inline constexpr std::chrono::seconds kMaxDuration =
    std::chrono::hours(24 * 365 * 100);

enum class Command {
    kHelp,
    kMigrate,
    kOrgCreate,
    kOrgList,
    kKeyCreate,
    kKeyList,
    kKeyRotate,
    kKeyRevoke,
    kKeyRevokeDormant,  // key revoke --org ORG --dormant D [--yes]
    kUsageExport,
};

struct Options {
    std::string conninfo;  // "" means libpq's PG* environment
    bool json = false;
    Command command = Command::kHelp;
    std::string help_topic;  // kHelp: "", "org", "key create", ...

    std::string org_id;  // canonical lowercase UUID
    std::string key_id;  // canonical lowercase UUID
    std::string name;    // org create NAME, key create --name
    std::vector<std::string> scopes;
    std::string prefix = "ak";
    std::optional<std::chrono::seconds> expires_in;
    std::chrono::seconds grace = kDefaultGrace;
    int dormant_days = kDefaultDormantDays;
    // --dormant D (whole days): key list shows only the keys dormant by
    // that threshold; key revoke acts on them.
    bool dormant_only = false;
    bool yes = false;  // --yes: act, not a dry run
    // usage export: checked by the API's own rules (api_params.h).
    api::ExportParams export_params;
};

// A bad command line (exit 2). topic() names the command whose help would
// have helped ("" for the top level).
class UsageError : public std::runtime_error {
public:
    UsageError(const std::string& message, std::string topic = {})
        : std::runtime_error(message), topic_(std::move(topic)) {}
    const std::string& topic() const noexcept { return topic_; }

private:
    std::string topic_;
};

// args excludes argv[0]. Global options (--db, --json, --help) are accepted
// anywhere; "--opt value" and "--opt=value" both work; "--" ends options.
Options parse_args(const std::vector<std::string>& args);

// "90d", "24h", "30m", "45s", "2w", combinations such as "1d12h", or "0".
// Throws UsageError.
std::chrono::seconds parse_duration(std::string_view text);

// Comma-separated scopes, each [a-z0-9][a-z0-9:._-]{0,63}; duplicates are
// dropped, at most 8 remain; "" means none. Throws UsageError.
std::vector<std::string> parse_scopes(std::string_view text);

// 1..100 bytes, no control characters. Throws UsageError naming `what`.
void check_name(std::string_view name, std::string_view what);

// Help text for a topic ("" = overview); unknown topics get the overview.
std::string usage(std::string_view topic);

// The single stderr line for a usage error, with a pointer to the help.
std::string usage_error_line(const UsageError& error);

}  // namespace apikey::ctl
