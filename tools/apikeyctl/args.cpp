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
         {"--org", "--dormant-days", "--dormant"},
         {"--org"},
         ""},
        {"key rotate",
         Command::kKeyRotate,
         {"--grace", "--expires-in"},
         {},
         "KEY_ID"},
        // With --dormant, a set of keys instead of KEY_ID (see apply()).
        {"key revoke",
         Command::kKeyRevoke,
         {"--org", "--dormant", "--yes"},
         {},
         "KEY_ID"},
        {"usage export",
         Command::kUsageExport,
         {"--org", "--from", "--to", "--interval", "--format"},
         {"--org", "--from", "--to"},
         ""},
    };
    return specs;
}

constexpr std::string_view kValueOptions[] = {
    "--db",     "--org",        "--name",         "--scopes",
    "--prefix", "--expires-in", "--dormant-days", "--grace",
    "--dormant", "--from", "--to", "--interval", "--format",
};

bool is_value_option(std::string_view name) {
    return std::find(std::begin(kValueOptions), std::end(kValueOptions),
                     name) != std::end(kValueOptions);
}

bool is_group(std::string_view word) {
    return word == "org" || word == "key" || word == "usage";
}

std::string_view subcommands(std::string_view group) {
    if (group == "org") return "create, list";
    if (group == "key") return "create, list, rotate, revoke";
    return "export";
}

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
    bool yes = false;
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
        if (name == "--yes") {
            if (value) throw UsageError("option --yes takes no value");
            t.yes = true;
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
                             std::string(subcommands(head)) + ")",
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

// --dormant DURATION: whole days (90d, 13w), at least one, so that the
// threshold is the one the API's dormant_days applies.
int parse_dormant(std::string_view text, std::string_view topic) {
    std::int64_t secs = 0;
    try {
        secs = parse_duration(text).count();
    } catch (const UsageError&) {
        secs = -1;
    }
    constexpr std::int64_t kDay = 86400;
    if (secs < kDay || secs % kDay != 0 || secs / kDay > kMaxDormantDays) {
        throw UsageError("invalid --dormant " + quoted(text) +
                             ": expected whole days, e.g. 90d or 13w (1d to " +
                             std::to_string(kMaxDormantDays) + "d)",
                         std::string(topic));
    }
    return static_cast<int>(secs / kDay);
}

bool has_option(const Tokens& t, std::string_view name) {
    return std::any_of(t.options.begin(), t.options.end(),
                       [&](const auto& o) { return o.first == name; });
}

// usage export's options, checked as the API checks its query string, so
// both accept the same ranges and print the same lines.
api::ExportParams export_params(const Tokens& t) {
    api::QueryParams query;
    for (const auto& [name, value] : t.options) {
        if (name == "--from" || name == "--to" || name == "--interval" ||
            name == "--format") {
            query.emplace(name.substr(2), value);
        }
    }
    try {
        // --from and --to are required: "now" is never used.
        return api::parse_export_params(query, 0);
    } catch (const api::ParamError& e) {
        throw UsageError(std::string("invalid usage export range or format: ") +
                         e.what());
    }
}

// Applies the command's options and positional argument to opts.
void apply(const CommandSpec& spec, const Tokens& t, std::size_t consumed,
           Options* opts) {
    const std::string topic(spec.path);
    std::vector<std::string> rest(t.words.begin() + consumed, t.words.end());
    // "key revoke --org ORG --dormant D" names a set of keys, not KEY_ID.
    const bool bulk =
        spec.command == Command::kKeyRevoke && has_option(t, "--dormant");
    std::string_view positional = bulk ? "" : spec.positional;
    if (bulk && !has_option(t, "--org")) {
        throw UsageError("missing --org for 'key revoke --dormant'", topic);
    }
    if (spec.command == Command::kKeyRevoke && !bulk &&
        (has_option(t, "--org") || t.yes)) {
        throw UsageError(
            "--org and --yes apply to 'key revoke' only with --dormant", topic);
    }
    if (t.json && spec.command == Command::kUsageExport) {
        throw UsageError("--json does not apply to 'usage export' (use "
                         "--format ndjson)",
                         topic);
    }
    if (t.yes && !bulk) {
        throw UsageError("option --yes does not apply to '" + topic + "'",
                         topic);
    }
    if (positional.empty() && !rest.empty()) {
        throw UsageError(
            "unexpected argument " + quoted(rest[0]) + " for '" + topic + "'",
            topic);
    }
    if (!positional.empty()) {
        if (rest.empty()) {
            throw UsageError("missing " + std::string(positional) +
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
        if (!has_option(t, required)) {
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
            } else if (name == "--dormant") {
                opts->dormant_days = parse_dormant(value, topic);
                opts->dormant_only = true;
            }
        }
        if (spec.command == Command::kUsageExport) {
            opts->export_params = export_params(t);
        }
        if (has_option(t, "--dormant") && has_option(t, "--dormant-days")) {
            throw UsageError("--dormant and --dormant-days exclude each other");
        }

        if (positional == "NAME") {
            check_name(rest[0], "org name");
            opts->name = rest[0];
        } else if (positional == "KEY_ID") {
            opts->key_id = canonical_uuid(rest[0], "key id", topic);
        }
    } catch (const UsageError& e) {
        if (!e.topic().empty()) throw;
        throw UsageError(e.what(), topic);
    }
    opts->yes = t.yes;
    opts->command = bulk ? Command::kKeyRevokeDormant : spec.command;
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

}  // namespace apikey::ctl
