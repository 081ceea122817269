#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "args.h"
#include "key_format.h"

namespace apikey::ctl {
namespace {

using std::chrono::hours;
using std::chrono::minutes;
using std::chrono::seconds;

constexpr const char* kOrg = "0b6f1c2e-3d4a-4b5c-8d6e-7f8091a2b3c4";
constexpr const char* kKey = "9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d";

Options parse(std::vector<std::string> args) { return parse_args(args); }

// The UsageError a command line raises ("" if it parses).
UsageError usage_error(std::vector<std::string> args) {
    try {
        parse_args(args);
    } catch (const UsageError& e) {
        return e;
    }
    ADD_FAILURE() << "expected a UsageError";
    return UsageError("");
}

std::string error_of(std::vector<std::string> args) {
    return usage_error(std::move(args)).what();
}

// --- durations
// -----------------------------------------------------------------

TEST(ParseDuration, AcceptsEachUnit) {
    EXPECT_EQ(parse_duration("45s"), seconds(45));
    EXPECT_EQ(parse_duration("30m"), minutes(30));
    EXPECT_EQ(parse_duration("24h"), hours(24));
    EXPECT_EQ(parse_duration("90d"), hours(24 * 90));
    EXPECT_EQ(parse_duration("2w"), hours(24 * 14));
}

TEST(ParseDuration, AcceptsCombinations) {
    EXPECT_EQ(parse_duration("1d12h"), hours(36));
    EXPECT_EQ(parse_duration("1h30m15s"), seconds(5415));
}

TEST(ParseDuration, AcceptsZeroWithOrWithoutUnit) {
    EXPECT_EQ(parse_duration("0"), seconds(0));
    EXPECT_EQ(parse_duration("0s"), seconds(0));
    EXPECT_EQ(parse_duration("0h"), seconds(0));
}

TEST(ParseDuration, RejectsMalformedText) {
    for (const char* bad : {"", "90", "d", "90x", "1.5h", "-1h", "+1h", "h1",
                            "1h ", " 1h", "1H", "1d2", "24 h", "1hh"}) {
        EXPECT_THROW(parse_duration(bad), UsageError) << '"' << bad << '"';
    }
}

TEST(ParseDuration, ErrorNamesTheInputAndTheUnits) {
    try {
        parse_duration("90x");
        FAIL();
    } catch (const UsageError& e) {
        EXPECT_NE(std::string(e.what()).find("\"90x\""), std::string::npos);
        EXPECT_NE(std::string(e.what()).find("90d"), std::string::npos);
    }
}

TEST(ParseDuration, CapsAtOneHundredYears) {
    EXPECT_EQ(parse_duration("36500d"), kMaxDuration);
    EXPECT_THROW(parse_duration("36501d"), UsageError);
    EXPECT_THROW(parse_duration("999999999999w"), UsageError);
    EXPECT_THROW(parse_duration("9999999999999s"), UsageError);  // 13 digits
}

// --- scopes
// --------------------------------------------------------------------

TEST(ParseScopes, SplitsOnCommas) {
    EXPECT_EQ(
        parse_scopes("usage:read,orders.write,a_b-c"),
        (std::vector<std::string>{"usage:read", "orders.write", "a_b-c"}));
}

TEST(ParseScopes, EmptyTextMeansNoScopes) {
    EXPECT_TRUE(parse_scopes("").empty());
}

TEST(ParseScopes, DropsDuplicatesKeepingOrder) {
    EXPECT_EQ(parse_scopes("b,a,b"), (std::vector<std::string>{"b", "a"}));
}

TEST(ParseScopes, RejectsBadCharactersAndLeadingPunctuation) {
    for (const char* bad : {"Usage", "a b", ":read", ".x", "-x", "_x", "a/b",
                            "é", "a;b", " a", "a,B"}) {
        EXPECT_THROW(parse_scopes(bad), UsageError) << '"' << bad << '"';
    }
}

TEST(ParseScopes, RejectsEmptyElements) {
    EXPECT_THROW(parse_scopes("a,,b"), UsageError);
    EXPECT_THROW(parse_scopes("a,"), UsageError);
    EXPECT_THROW(parse_scopes(",a"), UsageError);
    EXPECT_THROW(parse_scopes(","), UsageError);
}

TEST(ParseScopes, LengthLimitIs64) {
    EXPECT_EQ(parse_scopes(std::string(64, 'a')).size(), 1u);
    EXPECT_THROW(parse_scopes(std::string(65, 'a')), UsageError);
}

TEST(ParseScopes, AtMostEightDistinct) {
    EXPECT_EQ(parse_scopes("a,b,c,d,e,f,g,h").size(), 8u);
    EXPECT_THROW(parse_scopes("a,b,c,d,e,f,g,h,i"), UsageError);
    EXPECT_EQ(parse_scopes("a,b,c,d,e,f,g,h,a").size(), 8u);
}

// --- names
// -----------------------------------------------------------------------

TEST(CheckName, AcceptsUpToOneHundredBytes) {
    EXPECT_NO_THROW(check_name("ci deploy", "key name"));
    EXPECT_NO_THROW(check_name(std::string(100, 'x'), "key name"));
    EXPECT_THROW(check_name(std::string(101, 'x'), "key name"), UsageError);
}

TEST(CheckName, CountsBytesNotCharacters) {
    std::string euros;
    for (int i = 0; i < 34; ++i) euros += "\xe2\x82\xac";  // 102 bytes
    EXPECT_THROW(check_name(euros, "org name"), UsageError);
}

TEST(CheckName, RejectsEmptyAndControlCharacters) {
    EXPECT_THROW(check_name("", "org name"), UsageError);
    EXPECT_THROW(check_name("two\nlines", "org name"), UsageError);
    EXPECT_THROW(check_name("tab\there", "org name"), UsageError);
}

TEST(CheckName, ErrorSaysWhichName) {
    try {
        check_name(std::string(101, 'x'), "key name");
        FAIL();
    } catch (const UsageError& e) {
        EXPECT_NE(std::string(e.what()).find("key name is too long"),
                  std::string::npos);
    }
}

// --- global options
// ----------------------------------------------------------------

TEST(ParseArgs, DbDefaultsToTheEnvironment) {
    Options o = parse({"org", "list"});
    EXPECT_EQ(o.conninfo, "");
    EXPECT_FALSE(o.json);
}

TEST(ParseArgs, DbTakesSeparateOrAttachedValue) {
    EXPECT_EQ(parse({"--db", "dbname=x host=/tmp", "migrate"}).conninfo,
              "dbname=x host=/tmp");
    EXPECT_EQ(
        parse({"--db=postgresql://u@h/d?sslmode=require", "migrate"}).conninfo,
        "postgresql://u@h/d?sslmode=require");
}

TEST(ParseArgs, GlobalOptionsWorkAfterTheCommand) {
    Options o = parse({"org", "list", "--json", "--db", "dbname=y"});
    EXPECT_TRUE(o.json);
    EXPECT_EQ(o.conninfo, "dbname=y");
    EXPECT_EQ(o.command, Command::kOrgList);
}

TEST(ParseArgs, RejectsUnknownOptions) {
    EXPECT_NE(error_of({"--verbose", "migrate"}).find("unknown option"),
              std::string::npos);
    EXPECT_THROW(parse({"migrate", "-x"}), UsageError);
}

TEST(ParseArgs, RejectsOptionWithoutValue) {
    EXPECT_NE(error_of({"migrate", "--db"}).find("--db needs a value"),
              std::string::npos);
}

TEST(ParseArgs, RejectsRepeatedOption) {
    EXPECT_NE(
        error_of({"key", "create", "--org", kOrg, "--org", kOrg, "--name", "x"})
            .find("given twice"),
        std::string::npos);
}

TEST(ParseArgs, RejectsJsonWithValue) {
    EXPECT_THROW(parse({"--json=yes", "migrate"}), UsageError);
}

// --- commands
// ------------------------------------------------------------------------

TEST(ParseArgs, MissingCommandIsAUsageError) {
    EXPECT_EQ(error_of({}), "missing command");
    EXPECT_THROW(parse({"--json"}), UsageError);
}

TEST(ParseArgs, UnknownCommandIsAUsageError) {
    EXPECT_NE(error_of({"frobnicate"}).find("unknown command"),
              std::string::npos);
    UsageError e = usage_error({"key", "delete", kKey});
    EXPECT_EQ(e.topic(), "key");
}

TEST(ParseArgs, GroupWithoutSubcommandListsThem) {
    EXPECT_NE(error_of({"key"}).find("create, list, rotate, revoke"),
              std::string::npos);
    EXPECT_NE(error_of({"org"}).find("create, list"), std::string::npos);
}

TEST(ParseArgs, Migrate) {
    EXPECT_EQ(parse({"migrate"}).command, Command::kMigrate);
    EXPECT_THROW(parse({"migrate", "now"}), UsageError);
}

TEST(ParseArgs, OrgCreateTakesTheName) {
    Options o = parse({"org", "create", "Acme Corp"});
    EXPECT_EQ(o.command, Command::kOrgCreate);
    EXPECT_EQ(o.name, "Acme Corp");
}

TEST(ParseArgs, OrgCreateAcceptsDashNameAfterDoubleDash) {
    EXPECT_EQ(parse({"org", "create", "--", "-dash-"}).name, "-dash-");
}

TEST(ParseArgs, OrgCreateNeedsExactlyOneName) {
    EXPECT_NE(error_of({"org", "create"}).find("missing NAME"),
              std::string::npos);
    EXPECT_THROW(parse({"org", "create", "a", "b"}), UsageError);
    EXPECT_THROW(parse({"org", "create", std::string(101, 'n')}), UsageError);
}

TEST(ParseArgs, OrgList) {
    EXPECT_EQ(parse({"org", "list"}).command, Command::kOrgList);
    EXPECT_THROW(parse({"org", "list", "--org", kOrg}), UsageError);
}

TEST(ParseArgs, KeyCreateWithEveryOption) {
    Options o =
        parse({"key", "create", "--org", kOrg, "--name", "ci", "--scopes",
               "usage:read,b", "--prefix", "acme", "--expires-in", "90d"});
    EXPECT_EQ(o.command, Command::kKeyCreate);
    EXPECT_EQ(o.org_id, kOrg);
    EXPECT_EQ(o.name, "ci");
    EXPECT_EQ(o.scopes, (std::vector<std::string>{"usage:read", "b"}));
    EXPECT_EQ(o.prefix, "acme");
    ASSERT_TRUE(o.expires_in.has_value());
    EXPECT_EQ(*o.expires_in, hours(24 * 90));
}

TEST(ParseArgs, KeyCreateDefaults) {
    Options o = parse({"key", "create", "--org", kOrg, "--name", "ci"});
    EXPECT_EQ(o.prefix, "ak");
    EXPECT_TRUE(o.scopes.empty());
    EXPECT_FALSE(o.expires_in.has_value());
}

TEST(ParseArgs, KeyCreateNeedsOrgAndName) {
    UsageError e = usage_error({"key", "create", "--name", "ci"});
    EXPECT_EQ(std::string(e.what()), "missing --org for 'key create'");
    EXPECT_EQ(e.topic(), "key create");
    EXPECT_NE(error_of({"key", "create", "--org", kOrg}).find("missing --name"),
              std::string::npos);
}

TEST(ParseArgs, KeyCreateRejectsBadValues) {
    auto with = [](const char* flag, std::string value) {
        return std::vector<std::string>{"key",    "create", "--org", kOrg,
                                        "--name", "ci",     flag,    value};
    };
    EXPECT_NE(error_of(with("--scopes", "Read")).find("invalid scope"),
              std::string::npos);
    EXPECT_NE(error_of(with("--prefix", "AK")).find("invalid prefix"),
              std::string::npos);
    EXPECT_THROW(parse(with("--prefix", "")), UsageError);
    EXPECT_THROW(parse(with("--prefix", "toolongpx")), UsageError);
    EXPECT_THROW(parse(with("--prefix", "a_b")), UsageError);
    EXPECT_NE(error_of(with("--expires-in", "soon")).find("invalid duration"),
              std::string::npos);
    EXPECT_THROW(parse(with("--expires-in", "0")), UsageError);
    EXPECT_THROW(parse(with("--grace", "1h")), UsageError);
}

TEST(ParseArgs, KeyCreateRejectsLongName) {
    EXPECT_NE(error_of({"key", "create", "--org", kOrg, "--name",
                        std::string(101, 'k')})
                  .find("too long"),
              std::string::npos);
}

TEST(ParseArgs, OptionThatBelongsElsewhereIsRejected) {
    EXPECT_NE(error_of({"key", "revoke", kKey, "--grace", "1h"})
                  .find("does not apply to 'key revoke'"),
              std::string::npos);
}

TEST(ParseArgs, UuidsAreValidatedAndCanonicalised) {
    Options o =
        parse({"key", "list", "--org", "0B6F1C2E-3D4A-4B5C-8D6E-7F8091A2B3C4"});
    EXPECT_EQ(o.org_id, kOrg);
    EXPECT_NE(error_of({"key", "list", "--org", "acme"}).find("invalid org id"),
              std::string::npos);
    EXPECT_THROW(parse({"key", "revoke", "9a1b2c3d4e5f4a6b8c7d0e1f2a3b4c5d"}),
                 UsageError);
    EXPECT_THROW(parse({"key", "revoke", "'; DROP TABLE api_keys; --"}),
                 UsageError);
}

TEST(ParseArgs, AKeyPastedAsIdIsNotEchoed) {
    std::string secret = generate_key("ak");
    std::string message = error_of({"key", "revoke", secret});
    EXPECT_EQ(message.find(secret), std::string::npos);
    EXPECT_NE(message.find("not an API key"), std::string::npos);
}

TEST(ParseArgs, KeyListDefaultsToThirtyDormantDays) {
    Options o = parse({"key", "list", "--org", kOrg});
    EXPECT_EQ(o.command, Command::kKeyList);
    EXPECT_EQ(o.dormant_days, 30);
    EXPECT_EQ(parse({"key", "list", "--org", kOrg, "--dormant-days", "7"})
                  .dormant_days,
              7);
}

TEST(ParseArgs, KeyListRejectsBadDormantDays) {
    for (const char* bad : {"", "-1", "7d", "1.5", "36501", "9999999"}) {
        EXPECT_THROW(
            parse({"key", "list", "--org", kOrg, "--dormant-days", bad}),
            UsageError)
            << '"' << bad << '"';
    }
    EXPECT_THROW(parse({"key", "list"}), UsageError);
}

TEST(ParseArgs, KeyRotateDefaultsToOneDayGrace) {
    Options o = parse({"key", "rotate", kKey});
    EXPECT_EQ(o.command, Command::kKeyRotate);
    EXPECT_EQ(o.key_id, kKey);
    EXPECT_EQ(o.grace, hours(24));
    EXPECT_FALSE(o.expires_in.has_value());
}

TEST(ParseArgs, KeyRotateTakesGraceAndExpiry) {
    Options o =
        parse({"key", "rotate", kKey, "--grace", "0", "--expires-in", "30d"});
    EXPECT_EQ(o.grace, seconds(0));
    EXPECT_EQ(o.expires_in, std::optional<seconds>(hours(24 * 30)));
    EXPECT_EQ(parse({"key", "rotate", "--grace=7d", kKey}).grace,
              hours(24 * 7));
}

TEST(ParseArgs, KeyRotateNeedsOneKeyId) {
    EXPECT_NE(error_of({"key", "rotate"}).find("missing KEY_ID"),
              std::string::npos);
    EXPECT_THROW(parse({"key", "rotate", kKey, kKey}), UsageError);
}

TEST(ParseArgs, KeyRevoke) {
    Options o = parse({"--json", "key", "revoke", kKey});
    EXPECT_EQ(o.command, Command::kKeyRevoke);
    EXPECT_EQ(o.key_id, kKey);
    EXPECT_TRUE(o.json);
}

TEST(ParseArgs, KeyRevokeDormantIsADryRunUnlessYes) {
    Options o = parse({"key", "revoke", "--org", kOrg, "--dormant", "90d"});
    EXPECT_EQ(o.command, Command::kKeyRevokeDormant);
    EXPECT_EQ(o.org_id, kOrg);
    EXPECT_EQ(o.dormant_days, 90);
    EXPECT_FALSE(o.yes);
    o = parse({"--json", "key", "revoke", "--dormant=2w", "--yes", "--org",
               kOrg});
    EXPECT_EQ(o.command, Command::kKeyRevokeDormant);
    EXPECT_EQ(o.dormant_days, 14);
    EXPECT_TRUE(o.yes);
    EXPECT_TRUE(o.json);
}

TEST(ParseArgs, KeyRevokeDormantRefusesMixedForms) {
    EXPECT_NE(error_of({"key", "revoke", "--dormant", "90d"})
                  .find("missing --org"),
              std::string::npos);
    EXPECT_NE(error_of({"key", "revoke", "--org", kOrg, "--dormant", "90d",
                        kKey})
                  .find("unexpected argument"),
              std::string::npos);
    EXPECT_NE(error_of({"key", "revoke", kKey, "--yes"}).find("--dormant"),
              std::string::npos);
    EXPECT_NE(error_of({"key", "revoke", kKey, "--org", kOrg}).find("--dormant"),
              std::string::npos);
    EXPECT_NE(error_of({"key", "list", "--org", kOrg, "--yes"})
                  .find("does not apply"),
              std::string::npos);
    EXPECT_NE(error_of({"key", "revoke", "--yes=1"}).find("takes no value"),
              std::string::npos);
}

TEST(ParseArgs, DormantTakesWholeDays) {
    for (const char* bad : {"0", "36h", "1d1s", "12", "x", "100001d", ""}) {
        std::string e =
            error_of({"key", "revoke", "--org", kOrg, "--dormant", bad});
        EXPECT_NE(e.find("expected whole days"), std::string::npos) << bad;
    }
    EXPECT_EQ(parse({"key", "revoke", "--org", kOrg, "--dormant", "1d"})
                  .dormant_days,
              1);
}

TEST(ParseArgs, KeyListDormantFilters) {
    Options o = parse({"key", "list", "--org", kOrg, "--dormant", "90d"});
    EXPECT_EQ(o.command, Command::kKeyList);
    EXPECT_TRUE(o.dormant_only);
    EXPECT_EQ(o.dormant_days, 90);
    EXPECT_FALSE(parse({"key", "list", "--org", kOrg}).dormant_only);
    EXPECT_NE(error_of({"key", "list", "--org", kOrg, "--dormant", "9d",
                        "--dormant-days", "9"})
                  .find("exclude each other"),
              std::string::npos);
}

// --- help
// ------------------------------------------------------------------------------

TEST(ParseArgs, HelpFlagAloneShowsTheOverview) {
    for (const char* flag : {"--help", "-h"}) {
        Options o = parse({flag});
        EXPECT_EQ(o.command, Command::kHelp);
        EXPECT_EQ(o.help_topic, "");
    }
    EXPECT_EQ(parse({"help"}).command, Command::kHelp);
}

TEST(ParseArgs, CommandHelpWinsOverMissingArguments) {
    Options o = parse({"key", "create", "--help"});
    EXPECT_EQ(o.command, Command::kHelp);
    EXPECT_EQ(o.help_topic, "key create");
    EXPECT_EQ(parse({"key", "--help"}).help_topic, "key");
    EXPECT_EQ(parse({"--help", "org", "create"}).help_topic, "org create");
}

TEST(ParseArgs, HelpCommandTakesATopic) {
    EXPECT_EQ(parse({"help", "key", "rotate"}).help_topic, "key rotate");
    EXPECT_EQ(parse({"help", "org"}).help_topic, "org");
    EXPECT_EQ(parse({"help", "migrate"}).help_topic, "migrate");
    EXPECT_THROW(parse({"help", "bogus"}), UsageError);
    EXPECT_THROW(parse({"help", "key", "bogus"}), UsageError);
}

TEST(ParseArgs, HelpRefusesWordsAfterItsTopic) {
    try {
        parse({"help", "org", "list", "extra"});
        FAIL() << "took a word after the topic";
    } catch (const UsageError& e) {
        EXPECT_STREQ(e.what(), "unexpected argument \"extra\" for 'help'");
    }
}

TEST(Usage, EachTopicDescribesItsCommand) {
    EXPECT_NE(usage("").find("key rotate KEY_ID"), std::string::npos);
    EXPECT_NE(usage("").find("Exit status"), std::string::npos);
    EXPECT_NE(usage("key create").find("--expires-in"), std::string::npos);
    EXPECT_NE(usage("key list").find("--dormant-days"), std::string::npos);
    EXPECT_NE(usage("key rotate").find("--grace"), std::string::npos);
    EXPECT_NE(usage("key revoke").find("KEY_ID"), std::string::npos);
    EXPECT_NE(usage("key revoke").find("--dormant"), std::string::npos);
    EXPECT_NE(usage("key list").find("--dormant D"), std::string::npos);
    EXPECT_NE(usage("org create").find("NAME"), std::string::npos);
    EXPECT_NE(usage("migrate").find("schema_version"), std::string::npos);
}

TEST(UsageErrorLine, PointsAtTheRelevantHelp) {
    EXPECT_EQ(usage_error_line(UsageError("missing --org", "key create")),
              "missing --org (see 'apikeyctl key create --help')");
    EXPECT_EQ(usage_error_line(UsageError("missing command")),
              "missing command (see 'apikeyctl --help')");
}


// --- usage export
// -------------------------------------------------------------

TEST(UsageExportArgs, TheApisRulesAndDefaults) {
    Options o = parse({"usage", "export", "--org", kOrg, "--from", "2024-03-01",
                       "--to", "2024-03-05"});
    EXPECT_EQ(o.command, Command::kUsageExport);
    EXPECT_EQ(o.org_id, kOrg);
    EXPECT_EQ(o.export_params.interval, api::Interval::kDay);
    EXPECT_EQ(o.export_params.format, api::ExportFormat::kCsv);
    EXPECT_EQ(o.export_params.from_us, 1709251200LL * 1000000);
    o = parse({"usage", "export", "--org", kOrg, "--from", "2024-03-01",
               "--to=2024-03-02", "--interval", "hour", "--format", "ndjson"});
    EXPECT_EQ(o.export_params.interval, api::Interval::kHour);
    EXPECT_EQ(o.export_params.format, api::ExportFormat::kNdjson);
}

TEST(UsageExportArgs, Errors) {
    auto says = [](std::vector<std::string> args, const std::string& what) {
        return error_of(std::move(args)).find(what) != std::string::npos;
    };
    const std::string from = "2024-03-01", to = "2024-03-05";
    EXPECT_TRUE(says({"usage", "export", "--org", kOrg, "--from", from},
                     "missing --to"));
    EXPECT_TRUE(says({"usage", "export", "--org", kOrg, "--from", from, "--to",
                      to, "--format", "xml"},
                     "format must be csv or ndjson"));
    EXPECT_TRUE(says({"--json", "usage", "export", "--org", kOrg, "--from",
                      from, "--to", to},
                     "--json does not apply"));
    EXPECT_TRUE(says({"usage"}, "missing subcommand for 'usage' (export)"));
    EXPECT_EQ(usage_error({"usage", "export", "--org", kOrg, "--from", "x",
                           "--to", "2024-03-05"})
                  .topic(),
              "usage export");
}

}  // namespace
}  // namespace apikey::ctl
