#include "args.h"

#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include "key_format.h"
#include "uuid.h"

namespace apikey::ctl {
namespace {

struct CommandSpec {
    std::string_view path;  // "key create"
    Command command;
    std::vector<std::string_view> options;   // command options it accepts
    std::vector<std::string_view> required;  // subset of options
    std::string_view positional;             // "NAME", "KEY_ID" or ""
};

const std::vector<CommandSpec>& command_specs() {
    static const std::vector<CommandSpec> specs = {
        {"migrate", Command::kMigrate, {}, {}, ""},
        {"org create", Command::kOrgCreate, {}, {}, "NAME"},
        {"org list", Command::kOrgList, {}, {}, ""},
        {"key create",
         Command::kKeyCreate,
         {"--org", "--name", "--scopes", "--prefix", "--expires-in"},
         {"--org", "--name"},
         ""},
        {"key list",
         Command::kKeyList,
         {"--org", "--dormant-days"},
         {"--org"},
         ""},
        {"key rotate",
         Command::kKeyRotate,
         {"--grace", "--expires-in"},
         {},
         "KEY_ID"},
        {"key revoke", Command::kKeyRevoke, {}, {}, "KEY_ID"},
    };
    return specs;
}

constexpr std::string_view kValueOptions[] = {
    "--db",     "--org",        "--name",         "--scopes",
    "--prefix", "--expires-in", "--dormant-days", "--grace",
};

bool is_value_option(std::string_view name) {
    return std::find(std::begin(kValueOptions), std::end(kValueOptions),
                     name) != std::end(kValueOptions);
}

bool is_group(std::string_view word) { return word == "org" || word == "key"; }

bool is_base62(char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
           (c >= 'A' && c <= 'Z');
}

// True if `s` holds something shaped like a key (prefix_ then a long base62
// run), well-formed or not: a mistyped key is still nearly a secret.
bool looks_like_key(std::string_view s) {
    constexpr std::size_t kMinRun = 20;
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] != '_') continue;
        std::size_t run = 0;
        while (i + 1 + run < s.size() && is_base62(s[i + 1 + run])) ++run;
        if (run >= kMinRun) return true;
    }
    return false;
}

// Echoes user input in an error message, unless it may be a key.
std::string quoted(std::string_view s) {
    if (looks_like_key(s)) return "(a value that looks like an API key)";
    return "\"" + std::string(s) + "\"";
}

// The command line split into words and options, before any meaning.
struct Tokens {
    std::vector<std::string> words;
    std::vector<std::pair<std::string, std::string>> options;  // in order
    bool help = false;
    bool json = false;
};

Tokens tokenize(const std::vector<std::string>& args) {
    Tokens t;
    bool options_done = false;
    for (std::size_t i = 0; i < args.size(); ++i) {
        const std::string& arg = args[i];
        if (options_done || arg.size() < 2 || arg[0] != '-') {
            t.words.push_back(arg);
            continue;
        }
        if (arg == "--") {
            options_done = true;
            continue;
        }
        std::string name = arg;
        std::optional<std::string> value;
        if (std::size_t eq = arg.find('=');
            arg.rfind("--", 0) == 0 && eq != std::string::npos) {
            name = arg.substr(0, eq);
            value = arg.substr(eq + 1);
        }
        if (name == "--help" || name == "-h" || name == "--json") {
            if (value) throw UsageError("option " + name + " takes no value");
            (name == "--json" ? t.json : t.help) = true;
            continue;
        }
        if (!is_value_option(name)) {
            throw UsageError("unknown option " + quoted(name));
        }
        if (!value) {
            if (i + 1 >= args.size()) {
                throw UsageError("option " + name + " needs a value");
            }
            value = args[++i];
        }
        for (const auto& [seen, unused] : t.options) {
            if (seen == name)
                throw UsageError("option " + name + " given twice");
        }
        t.options.emplace_back(name, *value);
    }
    return t;
}

const CommandSpec* find_spec(std::string_view path) {
    for (const CommandSpec& spec : command_specs()) {
        if (spec.path == path) return &spec;
    }
    return nullptr;
}

// Resolves the leading words to a command; *consumed says how many.
// Returns nullptr for a bare group ("key") so help can still be shown.
const CommandSpec* resolve(const std::vector<std::string>& words,
                           std::size_t first, std::size_t* consumed,
                           bool for_help) {
    const std::string& head = words.at(first);
    if (!is_group(head)) {
        const CommandSpec* spec = find_spec(head);
        if (spec == nullptr) {
            throw UsageError("unknown command " + quoted(head));
        }
        *consumed = 1;
        return spec;
    }
    if (first + 1 >= words.size()) {
        if (for_help) {
            *consumed = 1;
            return nullptr;
        }
        throw UsageError("missing subcommand for '" + head + "' (" +
                             (head == "org" ? "create, list"
                                            : "create, list, rotate, revoke") +
                             ")",
                         head);
    }
    std::string path = head + " " + words[first + 1];
    const CommandSpec* spec = find_spec(path);
    if (spec == nullptr) {
        throw UsageError("unknown command " + quoted(path), head);
    }
    *consumed = 2;
    return spec;
}

std::string canonical_uuid(std::string_view text, std::string_view what,
                           std::string_view topic) {
    Uuid id;
    if (!uuid_parse(text, &id)) {
        // Never echo it: a pasted key secret must not end up in a terminal
        // log or CI output.
        if (key_is_well_formed(text)) {
            throw UsageError(std::string(what) +
                                 " must be a UUID, not an API key (the key "
                                 "is not repeated here)",
                             std::string(topic));
        }
        throw UsageError("invalid " + std::string(what) +
                             ": expected a UUID such as "
                             "0b6f1c2e-3d4a-4b5c-8d6e-7f8091a2b3c4",
                         std::string(topic));
    }
    return uuid_to_string(id);
}

int parse_days(std::string_view text, std::string_view topic) {
    bool ok = !text.empty() && text.size() <= 6 &&
              std::all_of(text.begin(), text.end(),
                          [](char c) { return c >= '0' && c <= '9'; });
    int days = ok ? std::stoi(std::string(text)) : -1;
    if (!ok || days > kMaxDormantDays) {
        throw UsageError("invalid --dormant-days " + quoted(text) +
                             ": expected a whole number of days, 0 to " +
                             std::to_string(kMaxDormantDays),
                         std::string(topic));
    }
    return days;
}

// Applies the command's options and positional argument to opts.
void apply(const CommandSpec& spec, const Tokens& t, std::size_t consumed,
           Options* opts) {
    const std::string topic(spec.path);
    std::vector<std::string> rest(t.words.begin() + consumed, t.words.end());
    if (spec.positional.empty() && !rest.empty()) {
        throw UsageError(
            "unexpected argument " + quoted(rest[0]) + " for '" + topic + "'",
            topic);
    }
    if (!spec.positional.empty()) {
        if (rest.empty()) {
            throw UsageError("missing " + std::string(spec.positional) +
                                 " for '" + topic + "'",
                             topic);
        }
        if (rest.size() > 1) {
            throw UsageError("unexpected argument " + quoted(rest[1]) +
                                 " for '" + topic + "'",
                             topic);
        }
    }

    for (std::string_view required : spec.required) {
        bool given =
            std::any_of(t.options.begin(), t.options.end(),
                        [&](const auto& o) { return o.first == required; });
        if (!given) {
            throw UsageError(
                "missing " + std::string(required) + " for '" + topic + "'",
                topic);
        }
    }

    try {
        for (const auto& [name, value] : t.options) {
            if (name == "--db") {
                opts->conninfo = value;
                continue;
            }
            if (std::find(spec.options.begin(), spec.options.end(), name) ==
                spec.options.end()) {
                throw UsageError("option " + name + " does not apply to '" +
                                 topic + "'");
            }
            if (name == "--org") {
                opts->org_id = canonical_uuid(value, "org id", topic);
            } else if (name == "--name") {
                check_name(value, "key name");
                opts->name = value;
            } else if (name == "--scopes") {
                opts->scopes = parse_scopes(value);
            } else if (name == "--prefix") {
                if (!prefix_is_valid(value)) {
                    throw UsageError("invalid prefix " + quoted(value) +
                                     ": expected 1 to 8 characters a-z, 0-9");
                }
                opts->prefix = value;
            } else if (name == "--expires-in") {
                auto d = parse_duration(value);
                if (d.count() == 0) {
                    throw UsageError("--expires-in must be longer than 0");
                }
                opts->expires_in = d;
            } else if (name == "--grace") {
                opts->grace = parse_duration(value);
            } else if (name == "--dormant-days") {
                opts->dormant_days = parse_days(value, topic);
            }
        }

        if (spec.positional == "NAME") {
            check_name(rest[0], "org name");
            opts->name = rest[0];
        } else if (spec.positional == "KEY_ID") {
            opts->key_id = canonical_uuid(rest[0], "key id", topic);
        }
    } catch (const UsageError& e) {
        if (!e.topic().empty()) throw;
        throw UsageError(e.what(), topic);
    }
    opts->command = spec.command;
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

}  // namespace

Options parse_args(const std::vector<std::string>& args) {
    Tokens t = tokenize(args);
    Options opts;
    opts.json = t.json;

    if (!t.words.empty() && t.words[0] == "help") {
        std::size_t consumed = 0;
        if (t.words.size() > 1) {
            const CommandSpec* spec = resolve(t.words, 1, &consumed, true);
            if (1 + consumed < t.words.size()) {
                throw UsageError("unexpected argument " +
                                 quoted(t.words[1 + consumed]) + " for 'help'");
            }
            opts.help_topic = spec ? std::string(spec->path) : t.words[1];
        }
        opts.command = Command::kHelp;
        return opts;
    }
    if (t.words.empty()) {
        if (t.help) return opts;  // kHelp, overview
        throw UsageError("missing command");
    }

    std::size_t consumed = 0;
    const CommandSpec* spec = resolve(t.words, 0, &consumed, t.help);
    if (t.help) {
        opts.help_topic = spec ? std::string(spec->path) : t.words[0];
        return opts;
    }
    apply(*spec, t, consumed, &opts);
    return opts;
}

std::chrono::seconds parse_duration(std::string_view text) {
    auto invalid = [&] {
        return UsageError("invalid duration " + quoted(text) +
                          ": use e.g. 90d, 24h, 30m or 1d12h "
                          "(units s, m, h, d, w)");
    };
    if (text == "0") return std::chrono::seconds(0);
    if (text.empty()) throw invalid();

    const std::uint64_t max = static_cast<std::uint64_t>(kMaxDuration.count());
    std::uint64_t total = 0;
    std::size_t i = 0;
    while (i < text.size()) {
        std::size_t start = i;
        std::uint64_t n = 0;
        while (i < text.size() && is_digit(text[i])) {
            if (i - start >= 12) throw invalid();  // no overflow below
            n = n * 10 + static_cast<std::uint64_t>(text[i] - '0');
            ++i;
        }
        if (i == start || i == text.size()) throw invalid();
        std::uint64_t unit = 0;
        switch (text[i]) {
            case 's':
                unit = 1;
                break;
            case 'm':
                unit = 60;
                break;
            case 'h':
                unit = 3600;
                break;
            case 'd':
                unit = 86400;
                break;
            case 'w':
                unit = 7 * 86400;
                break;
            default:
                throw invalid();
        }
        ++i;
        total += n * unit;  // n < 10^12, unit < 10^6: fits in 64 bits
        if (total > max) {
            throw UsageError("duration " + quoted(text) +
                             " is too long (at most 100 years)");
        }
    }
    return std::chrono::seconds(static_cast<std::int64_t>(total));
}

std::vector<std::string> parse_scopes(std::string_view text) {
    std::vector<std::string> scopes;
    if (text.empty()) return scopes;
    std::size_t start = 0;
    while (true) {
        std::size_t comma = text.find(',', start);
        std::string_view scope = text.substr(
            start, comma == std::string_view::npos ? std::string_view::npos
                                                   : comma - start);
        if (scope.empty()) {
            throw UsageError("empty scope in " + quoted(text));
        }
        if (!apikey::scope_is_valid(scope)) {
            throw UsageError("invalid scope " + quoted(scope) +
                             ": scopes are 1 to 64 characters a-z, 0-9, "
                             "':', '.', '_', '-', starting with a letter or "
                             "digit");
        }
        if (std::find(scopes.begin(), scopes.end(), scope) == scopes.end()) {
            scopes.emplace_back(scope);
        }
        if (comma == std::string_view::npos) break;
        start = comma + 1;
    }
    if (scopes.size() > kMaxScopes) {
        throw UsageError("too many scopes (" + std::to_string(scopes.size()) +
                         "; at most " + std::to_string(kMaxScopes) + ")");
    }
    return scopes;
}

void check_name(std::string_view name, std::string_view what) {
    if (name.empty()) {
        throw UsageError(std::string(what) + " must not be empty");
    }
    if (name.size() > kMaxNameBytes) {
        throw UsageError(std::string(what) + " is too long (" +
                         std::to_string(name.size()) + " bytes; at most " +
                         std::to_string(kMaxNameBytes) + ")");
    }
    for (char c : name) {
        auto u = static_cast<unsigned char>(c);
        if (u < 0x20 || u == 0x7f) {
            throw UsageError(std::string(what) +
                             " must not contain control characters");
        }
    }
}

namespace {

constexpr std::string_view kOverview =
    R"(Usage: apikeyctl [--db CONNINFO] [--json] COMMAND [ARGS]

Manage organisations and API keys in the apikey PostgreSQL database.

Commands:
  migrate                 apply pending schema migrations
  org create NAME         create an organisation
  org list                list organisations
  key create --org ORG_ID --name NAME [--scopes a,b] [--prefix P]
             [--expires-in 90d]
                          issue a key; the secret is printed once, here only
  key list --org ORG_ID [--dormant-days N]
                          list an org's keys: status, last use, dormancy
  key rotate KEY_ID [--grace 24h] [--expires-in D]
                          issue a replacement; the old key expires after
                          the grace period
  key revoke KEY_ID       revoke a key now (idempotent)

Global options (accepted anywhere on the line):
  --db CONNINFO   libpq connection string or URI, e.g.
                  "host=/run/postgresql dbname=apikey" or
                  postgresql://apikey@db.internal/apikey
                  (default: libpq's PG* environment variables)
  --json          print exactly one JSON object on stdout
  -h, --help      show help; also 'apikeyctl COMMAND --help' and
                  'apikeyctl help COMMAND'

Exit status: 0 success, 1 runtime or database error, 2 usage error.
Errors are one line on stderr: "apikeyctl: <message>".
)";

constexpr std::string_view kMigrate =
    R"(Usage: apikeyctl [--db CONNINFO] [--json] migrate

Applies every schema migration the database does not have yet, each in its
own transaction. Concurrent runs take turns (advisory lock); running it again
is a no-op.

Output: the migrations applied and the resulting schema version.
JSON: {"applied":[1],"schema_version":1}
)";

constexpr std::string_view kOrg = R"(Usage: apikeyctl org create NAME
       apikeyctl org list

  org create NAME   create an organisation (NAME: 1 to 100 bytes)
  org list          list organisations, oldest first

JSON: org create -> {"org_id","name"}
      org list   -> {"orgs":[{"org_id","name","created_at"}]}
)";

constexpr std::string_view kOrgCreate =
    R"(Usage: apikeyctl [--json] org create NAME

Creates an organisation named NAME (1 to 100 bytes, no control characters)
and prints its id, which the key commands take as --org.

JSON: {"org_id":"...","name":"..."}
)";

constexpr std::string_view kOrgList = R"(Usage: apikeyctl [--json] org list

Lists organisations, oldest first.

JSON: {"orgs":[{"org_id","name","created_at"}]}
)";

constexpr std::string_view kKey =
    R"(Usage: apikeyctl key create --org ORG_ID --name NAME [--scopes a,b]
                           [--prefix P] [--expires-in 90d]
       apikeyctl key list --org ORG_ID [--dormant-days N]
       apikeyctl key rotate KEY_ID [--grace 24h] [--expires-in D]
       apikeyctl key revoke KEY_ID

See 'apikeyctl key COMMAND --help' for each.
)";

constexpr std::string_view kKeyCreate =
    R"(Usage: apikeyctl [--json] key create --org ORG_ID --name NAME
           [--scopes a,b] [--prefix P] [--expires-in DURATION]

Issues a new API key for an organisation. The key is printed once, now,
and never again: only its SHA-256 is stored.

  --org ORG_ID           the organisation (a UUID from 'org create')
  --name NAME            a label for the key, 1 to 100 bytes
  --scopes a,b           comma-separated scopes, at most 8, each
                         [a-z0-9][a-z0-9:._-]{0,63} (default: none)
  --prefix P             key prefix, [a-z0-9]{1,8} (default: ak)
  --expires-in DURATION  expire after e.g. 90d, 12h, 30m, 2w, 1d12h
                         (default: never)

JSON: {"key_id","org_id","key","hint"}
)";

constexpr std::string_view kKeyList =
    R"(Usage: apikeyctl [--json] key list --org ORG_ID [--dormant-days N]

Lists an organisation's keys, oldest first, with status (active, expired,
revoked), expiry, last use (time and client IP), request count, and whether
the key is dormant: never used, or last used more than N days ago.

  --org ORG_ID        the organisation
  --dormant-days N    dormancy threshold in days (default: 30)

JSON: {"org_id","keys":[{"key_id","name","hint","scopes","status",
       "created_at","expires_at","last_used_at","last_used_ip",
       "request_count","dormant"}]}
)";

constexpr std::string_view kKeyRotate =
    R"(Usage: apikeyctl [--json] key rotate KEY_ID [--grace DURATION]
           [--expires-in DURATION]

Issues a replacement for a key, in one transaction: the new key has the
same organisation, name, scopes and prefix, and records the old key in
rotated_from; the old key keeps working until the grace period ends (its
expiry only ever moves earlier). A revoked key cannot be rotated.

  --grace DURATION       how long the old key keeps working, e.g. 24h, 7d;
                         0 expires it now (default: 24h)
  --expires-in DURATION  expiry of the new key (default: never)

The new key is printed once, now, and never again.
JSON: {"key_id","org_id","key","hint","rotated_from","old_expires_at"}
)";

constexpr std::string_view kKeyRevoke =
    R"(Usage: apikeyctl [--json] key revoke KEY_ID

Revokes a key now; every gateway rejects it within a second. Revoking a
revoked key changes nothing and says so.

JSON: {"key_id","org_id","revoked_at","already_revoked"}
)";

}  // namespace

std::string usage(std::string_view topic) {
    if (topic == "migrate") return std::string(kMigrate);
    if (topic == "org") return std::string(kOrg);
    if (topic == "org create") return std::string(kOrgCreate);
    if (topic == "org list") return std::string(kOrgList);
    if (topic == "key") return std::string(kKey);
    if (topic == "key create") return std::string(kKeyCreate);
    if (topic == "key list") return std::string(kKeyList);
    if (topic == "key rotate") return std::string(kKeyRotate);
    if (topic == "key revoke") return std::string(kKeyRevoke);
    return std::string(kOverview);
}

std::string usage_error_line(const UsageError& error) {
    std::string help = "apikeyctl ";
    if (!error.topic().empty()) help += error.topic() + " ";
    return std::string(error.what()) + " (see '" + help + "--help')";
}

}  // namespace apikey::ctl
