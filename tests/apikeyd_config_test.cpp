#include "config.h"

#include <gtest/gtest.h>

namespace apikey {
namespace {

DaemonConfig parse(const std::vector<std::string>& args) {
    DaemonConfig c;
    EXPECT_TRUE(parse_daemon_args(args, &c));
    return c;
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

TEST(DaemonConfig, Ipv6ListenAddressInBrackets) {
    DaemonConfig c = parse({"--listen", "[::1]:8089"});
    EXPECT_EQ(c.listen_host, "::1");
    EXPECT_EQ(c.listen_port, 8089);
}

TEST(DaemonConfig, HelpReturnsFalse) {
    DaemonConfig c;
    EXPECT_FALSE(parse_daemon_args({"--help"}, &c));
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

}  // namespace
}  // namespace apikey
