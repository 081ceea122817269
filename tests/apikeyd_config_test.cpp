#include "config.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "daemon_options.h"
#include "scratch_dir.h"

namespace apikey {
namespace {

using apikey::testing::ScratchDir;

DaemonConfig parse(const std::vector<std::string>& args) {
    DaemonConfig c;
    EXPECT_TRUE(parse_daemon_args(args, &c));
    return c;
}

// The message of the UsageError that `f` throws; "" if it throws none.
template <typename F>
std::string error_of(F f) {
    try {
        f();
    } catch (const UsageError& e) {
        return e.what();
    }
    return "";
}

std::string flag_error(const std::vector<std::string>& args) {
    return error_of([&] {
        DaemonConfig c;
        parse_daemon_args(args, &c);
    });
}

std::string config_text_error(const std::string& text) {
    return error_of([&] {
        DaemonConfig c;
        apply_config_text(text, "t.conf", &c);
    });
}

// Every option's value, as a flag would take it: two configurations are the
// same when these are.
std::vector<std::string> values_of(const DaemonConfig& c) {
    std::vector<std::string> values;
    for (const DaemonOption& o : daemon_options()) {
        if (o.kind != OptionKind::kConfigFile) {
            values.push_back(std::string(o.name) + "=" + format_option(o, c));
        }
    }
    return values;
}

// Values each option takes, written as format_option() writes them back.
std::vector<std::string> good_values(const DaemonOption& o) {
    std::string min = std::to_string(o.min), max = std::to_string(o.max);
    switch (o.kind) {
    case OptionKind::kText:
        return {"", "host=/tmp port=5433"};
    case OptionKind::kNonEmpty:
        return {"/dev/shm/a b", "edge-1"};
    case OptionKind::kName:
        return {"edge-1", "z\xc3\xbcrich-1"};
    case OptionKind::kInt:
        return {min, max, std::to_string(o.min + (o.max - o.min) / 2)};
    case OptionKind::kOnOff:
        return {"on", "off"};
    case OptionKind::kListen:
        return {"0.0.0.0:" + min, "[::1]:" + max, "localhost:8090",
                "[[x]]:8089"};
    case OptionKind::kConfigFile:
        break;
    }
    return {};
}

// Values each option refuses (none for free text).
std::vector<std::string> bad_values(const DaemonOption& o) {
    std::string below = std::to_string(static_cast<long>(o.min) - 1);
    std::string above = std::to_string(static_cast<long>(o.max) + 1);
    switch (o.kind) {
    case OptionKind::kNonEmpty:
        return {""};
    case OptionKind::kName:
        return {"", "edge-\xff", std::string("a\0b", 3)};
    case OptionKind::kInt:
        return {below, above, "", "x", "12x", "99999999999999999999"};
    case OptionKind::kOnOff:
        return {"", "yes", "ON", "1"};
    case OptionKind::kListen:
        return {"nope", ":8089", "host:", "host:" + below, "host:" + above,
                "host:http"};
    case OptionKind::kText:
    case OptionKind::kConfigFile:
        break;
    }
    return {};
}

std::string read_text(const std::string& path) {
    std::ifstream f(path);
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
}

std::string collapse_spaces(const std::string& s) {
    std::istringstream in(s);
    std::string word, out;
    while (in >> word) out += (out.empty() ? "" : " ") + word;
    return out;
}

TEST(DaemonConfig, DefaultsFollowTheContract) {
    DaemonConfig c = parse({});
    EXPECT_EQ(c.listen_host, "127.0.0.1");
    EXPECT_EQ(c.listen_port, 8089);
    EXPECT_TRUE(c.raw_events);
    EXPECT_EQ(c.retention_months, 13);
    EXPECT_EQ(c.db, "");
    EXPECT_FALSE(c.node.empty()) << "node defaults to the host name";
}

TEST(DaemonConfig, DefaultsComeFromTheTable) {
    DaemonConfig c;
    for (const DaemonOption& o : daemon_options()) {
        if (o.default_value != nullptr) {
            EXPECT_EQ(format_option(o, c), o.default_value) << o.name;
        }
    }
}

TEST(DaemonConfig, FlagsInBothSpellings) {
    DaemonConfig c = parse({"--db", "host=/tmp port=5433", "--node=edge-1",
                            "--keys", "/dev/shm/k", "--usage=/dev/shm/u",
                            "--listen", "0.0.0.0:9000", "--spool", "/var/s",
                            "--raw-events", "off", "--retention-months=3"});
    EXPECT_EQ(c.db, "host=/tmp port=5433");
    EXPECT_EQ(c.node, "edge-1");
    EXPECT_EQ(c.keys_path, "/dev/shm/k");
    EXPECT_EQ(c.usage_path, "/dev/shm/u");
    EXPECT_EQ(c.listen_host, "0.0.0.0");
    EXPECT_EQ(c.listen_port, 9000);
    EXPECT_EQ(c.spool_dir, "/var/s");
    EXPECT_FALSE(c.raw_events);
    EXPECT_EQ(c.retention_months, 3);
}

TEST(DaemonConfig, EveryOptionRoundTripsThroughFlagsAndAConfigLine) {
    ScratchDir dir;
    const std::string path = dir.file("apikeyd.conf");
    const std::vector<std::string> defaults = values_of(parse({}));
    for (const DaemonOption& o : daemon_options()) {
        if (o.kind == OptionKind::kConfigFile) continue;
        const std::string flag = std::string("--") + o.name;
        bool changed = false;  // some value must differ from the default
        for (const std::string& v : good_values(o)) {
            SCOPED_TRACE(flag + " " + v);
            DaemonConfig spaced = parse({flag, v});
            DaemonConfig joined = parse({flag + "=" + v});
            std::ofstream(path) << "# x\n\n" << o.name << " = " << v << "\n";
            DaemonConfig from_file = parse({"--config", path});
            EXPECT_EQ(format_option(o, spaced), v);
            EXPECT_EQ(values_of(joined), values_of(spaced));
            EXPECT_EQ(values_of(from_file), values_of(spaced));
            changed = changed || values_of(spaced) != defaults;
        }
        EXPECT_TRUE(changed) << flag << ": no test value differs from the "
                             << "default";
    }
}

TEST(DaemonConfig, EveryBoundIsEnforcedIdenticallyInFlagsAndConfigLines) {
    int checked = 0;
    for (const DaemonOption& o : daemon_options()) {
        const std::string flag = std::string("--") + o.name;
        for (const std::string& v : bad_values(o)) {
            SCOPED_TRACE(flag + " \"" + v + "\"");
            const std::string message = flag_error({flag, v});
            EXPECT_NE(message.find(flag), std::string::npos) << message;
            EXPECT_EQ(flag_error({flag + "=" + v}), message);
            EXPECT_EQ(config_text_error(std::string(o.name) + " = " + v),
                      "t.conf:1: " + message);
            ++checked;
        }
    }
    EXPECT_GT(checked, 20);
}

TEST(DaemonConfig, BoundsAreInclusiveAndTheMessageSaysThem) {
    EXPECT_EQ(flag_error({"--retention-months", "0"}),
              "invalid --retention-months \"0\": expected a whole number "
              "from 1 to 1200");
    EXPECT_EQ(flag_error({"--keep-dead-keys-days=3651"}),
              "invalid --keep-dead-keys-days \"3651\": expected a whole "
              "number from 0 to 3650");
    EXPECT_EQ(parse({"--keep-dead-keys-days", "0"}).keep_dead_keys_days, 0);
    EXPECT_EQ(parse({"--spool-max-mb", "1048576"}).spool_max_mb, 1 << 20);
    EXPECT_EQ(flag_error({"--listen", "127.0.0.1:99999"}),
              "invalid --listen \"127.0.0.1:99999\": expected HOST:PORT with "
              "a PORT from 1 to 65535");
    EXPECT_EQ(flag_error({"--raw-events", "yes"}),
              "invalid --raw-events \"yes\": expected on or off");
    EXPECT_EQ(flag_error({"--keys", ""}), "invalid --keys: must not be empty");
}

TEST(DaemonConfig, Ipv6ListenAddressInBrackets) {
    DaemonConfig c = parse({"--listen", "[::1]:8089"});
    EXPECT_EQ(c.listen_host, "::1");
    EXPECT_EQ(c.listen_port, 8089);
}

TEST(DaemonConfig, HelpReturnsFalse) {
    DaemonConfig c;
    EXPECT_FALSE(parse_daemon_args({"--help"}, &c));
    EXPECT_FALSE(parse_daemon_args({"--db", "x", "-h"}, &c));
}

TEST(DaemonConfig, BadValuesAreUsageErrorsNamingTheFlag) {
    const std::vector<std::vector<std::string>> bad = {
        {"--listen", "8089"},        {"--listen", "host:99999"},
        {"--listen", "host:http"},   {"--raw-events", "yes"},
        {"--retention-months", "0"}, {"--retention-months", "12x"},
        {"--bogus", "1"},            {"--db"},
        {"positional"},              {"--keys", ""},
    };
    for (const auto& args : bad) {
        DaemonConfig c;
        EXPECT_THROW(parse_daemon_args(args, &c), UsageError) << args[0];
    }
    try {
        DaemonConfig c;
        parse_daemon_args({"--retention-months", "0"}, &c);
    } catch (const UsageError& e) {
        EXPECT_NE(std::string(e.what()).find("--retention-months"),
                  std::string::npos);
    }
}

TEST(DaemonConfig, UnknownOptionsAndMissingValues) {
    const std::string unknown = "unknown option --bogus (see apikeyd --help)";
    EXPECT_EQ(flag_error({"--bogus", "1"}), unknown);
    EXPECT_EQ(flag_error({"--bogus=1"}), unknown);
    EXPECT_EQ(flag_error({"--bogus"}), unknown);
    EXPECT_EQ(config_text_error("bogus = 1"), "t.conf:1: " + unknown);
    EXPECT_EQ(flag_error({"--db"}), "option --db needs a value");
    EXPECT_EQ(flag_error({"positional"}),
              "unexpected argument \"positional\" (see apikeyd --help)");
}

TEST(DaemonConfig, ConfigFileLinesMirrorFlags) {
    DaemonConfig c;
    apply_config_text("# comment\n\nnode = edge-2\nlisten = 127.0.0.1:7000\n"
                      "raw-events = off\n",
                      "test.conf", &c);
    EXPECT_EQ(c.node, "edge-2");
    EXPECT_EQ(c.listen_port, 7000);
    EXPECT_FALSE(c.raw_events);
}

TEST(DaemonConfig, ConfigFileErrorsNameFileAndLine) {
    DaemonConfig c;
    try {
        apply_config_text("node = a\nlisten\n", "x.conf", &c);
        FAIL() << "expected a UsageError";
    } catch (const UsageError& e) {
        EXPECT_EQ(std::string(e.what()).rfind("x.conf:2:", 0), 0u) << e.what();
    }
}

TEST(DaemonConfig, OptionsOnlyForTheCommandLineAreRefusedInAConfigFile) {
    int refused = 0;
    for (const DaemonOption& o : daemon_options()) {
        if (o.in_config_file) continue;
        EXPECT_EQ(config_text_error("\n" + std::string(o.name) + " = x\n"),
                  "t.conf:2: --" + std::string(o.name) +
                      " is not allowed in a config file");
        ++refused;
    }
    EXPECT_EQ(refused, 1) << "only --config";
}

TEST(DaemonConfig, ConfigFileIsReadFirstAndFlagsOverrideIt) {
    ScratchDir dir;
    const std::string path = dir.file("apikeyd.conf");
    std::ofstream(path) << "node = from-file\nretention-months = 5\n";
    DaemonConfig c = parse({"--node", "from-flag", "--config", path});
    EXPECT_EQ(c.node, "from-flag");
    EXPECT_EQ(c.retention_months, 5);
    EXPECT_EQ(c.config_file, path);

    std::ofstream(path) << "node = a\nkey-resync = 0\n";
    EXPECT_EQ(flag_error({"--config=" + path}),
              path + ":2: invalid --key-resync \"0\": expected a whole "
                     "number from 1 to 86400");
    EXPECT_EQ(flag_error({"--config", dir.file("missing.conf")}),
              "cannot read config file \"" + dir.file("missing.conf") + "\"");
}

TEST(DaemonConfig, HelpIsBuiltFromTheTable) {
    const std::string help = daemon_usage();
    const std::string flat = collapse_spaces(help);
    for (const DaemonOption& o : daemon_options()) {
        const std::string head = std::string("--") + o.name + " " + o.metavar;
        EXPECT_NE(help.find("\n  " + head + " "), std::string::npos) << head;
        // The whole entry, up to the next one's "--" (or "-h, --help").
        std::string entry = head + " " + collapse_spaces(o.help);
        if (!shown_default(o).empty()) {
            entry += " (default: " + shown_default(o) + ")";
        }
        if (!o.in_config_file) entry += " (command line only)";
        EXPECT_NE(flat.find(entry + " -"), std::string::npos) << entry;
    }
    std::istringstream lines(help);
    std::string line;
    while (std::getline(lines, line)) {
        EXPECT_LE(line.size(), 79u) << line;
    }
}

// How docs/apikeyd.md's "accepted" column words an option's values.
std::string accepted_in_docs(const DaemonOption& o) {
    std::string text;
    switch (o.kind) {
    case OptionKind::kText:
        text = "any text";
        break;
    case OptionKind::kNonEmpty:
        text = "not empty";
        break;
    case OptionKind::kName:
        text = "UTF-8, not empty";
        break;
    case OptionKind::kInt:
        text = std::to_string(o.min) + " to " + std::to_string(o.max);
        break;
    case OptionKind::kOnOff:
        text = "on, off";
        break;
    case OptionKind::kListen:
        text = "port " + std::to_string(o.min) + " to " +
               std::to_string(o.max);
        break;
    case OptionKind::kConfigFile:
        text = "a readable file";
        break;
    }
    return o.in_config_file ? text : text + "; command line only";
}

using DocsRow = std::vector<std::string>;  // flag, default, accepted

// docs/apikeyd.md's "## Flags" table: each row's first three cells,
// backticks dropped and `\|` read as `|`.
std::vector<DocsRow> docs_flags_table(const std::string& markdown) {
    std::vector<DocsRow> rows;
    std::istringstream in(markdown);
    std::string line;
    bool in_section = false;
    int table_line = 0;
    while (std::getline(in, line)) {
        if (line.rfind("## ", 0) == 0) {
            in_section = line == "## Flags";
            continue;
        }
        if (!in_section || line.rfind("|", 0) != 0) {
            if (table_line > 0) break;  // the table has ended
            continue;
        }
        if (++table_line <= 2) continue;  // the header and its rule
        DocsRow cells(1);
        for (size_t i = 1; i < line.size(); ++i) {
            if (line[i] == '\\' && i + 1 < line.size() && line[i + 1] == '|') {
                cells.back() += line[++i];
            } else if (line[i] == '|') {
                cells.emplace_back();
            } else if (line[i] != '`') {
                cells.back() += line[i];
            }
        }
        cells.resize(3);
        for (std::string& cell : cells) cell = collapse_spaces(cell);
        rows.push_back(cells);
    }
    return rows;
}

std::string quoted(const DocsRow& row) {
    std::string out;
    for (const std::string& cell : row) out += " \"" + cell + "\"";
    return out;
}

// The first row where the docs and the options table disagree; "" if none.
std::string docs_mismatch(const std::string& markdown) {
    const std::vector<DocsRow> rows = docs_flags_table(markdown);
    const auto& options = daemon_options();
    for (size_t i = 0; i < std::max(rows.size(), options.size()); ++i) {
        DocsRow want(3), have(3);
        if (i < options.size()) {
            const DaemonOption& o = options[i];
            want = {std::string("--") + o.name + " " + o.metavar,
                    shown_default(o), accepted_in_docs(o)};
        }
        if (i < rows.size()) have = rows[i];
        if (have != want) {
            return "row " + std::to_string(i + 1) + ": docs" + quoted(have) +
                   ", options table" + quoted(want);
        }
    }
    return "";
}

TEST(DaemonConfig, DocsFlagsTableMatchesTheOptionsTable) {
    const std::string docs = read_text(APIKEY_DOCS_APIKEYD_MD);
    ASSERT_FALSE(docs.empty()) << "cannot read " << APIKEY_DOCS_APIKEYD_MD;
    EXPECT_EQ(docs_flags_table(docs).size(), daemon_options().size());
    EXPECT_EQ(docs_mismatch(docs), "");

    // The check sees a changed default, a renamed flag and a missing row.
    auto changed = [&](const std::string& from, const std::string& to) {
        std::string text = docs;
        size_t at = text.find(from);
        EXPECT_NE(at, std::string::npos) << from;
        return at == std::string::npos ? text : text.replace(at, from.size(),
                                                             to);
    };
    EXPECT_NE(docs_mismatch(changed("| 1024 |", "| 2048 |")), "");
    EXPECT_NE(docs_mismatch(changed("`--key-resync SECONDS`",
                                    "`--key-resync-s SECONDS`")),
              "");
    EXPECT_NE(docs_mismatch(changed("| 1 to 1200 |", "| 1 to 120 |")), "");
    EXPECT_NE(docs_mismatch(changed("| `--spool DIR` |", "")), "");
}

}  // namespace
}  // namespace apikey
