#include "check_config.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "daemon_options.h"
#include "scratch_dir.h"

namespace apikey {
namespace {

using apikey::testing::ScratchDir;

struct CheckRun {
    int status = -1;
    std::string out;
    std::string err;
};

std::string read_stream(std::FILE* f) {
    std::rewind(f);
    std::string text;
    char buf[512];
    for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) {
        text.append(buf, n);
    }
    std::fclose(f);
    return text;
}

CheckRun run_check(const std::vector<std::string>& args) {
    DaemonConfig c;
    EXPECT_TRUE(parse_daemon_args(args, &c));
    EXPECT_TRUE(c.check_config);
    std::FILE* out = std::tmpfile();
    std::FILE* err = std::tmpfile();
    CheckRun run;
    run.status = check_config(c, out, err);
    run.out = read_stream(out);
    run.err = read_stream(err);
    return run;
}

TEST(CheckConfig, TheFlagIsAModeNotAnOption) {
    DaemonConfig c;
    ASSERT_TRUE(parse_daemon_args({"--node", "a"}, &c));
    EXPECT_FALSE(c.check_config);
    ASSERT_TRUE(parse_daemon_args({"--check-config", "--node", "b"}, &c));
    EXPECT_TRUE(c.check_config);
    EXPECT_EQ(c.node, "b");
    // It takes no value, and a file cannot set it.
    EXPECT_THROW(parse_daemon_args({"--check-config=yes"}, &c), UsageError);
    EXPECT_THROW(apply_config_text("check-config = on\n", "t.conf", &c),
                 UsageError);
}

TEST(CheckConfig, PrintsTheOptionsTheFlagsOverrideTheFileWith) {
    ScratchDir dir;
    const std::string conf = dir.file("apikeyd.conf");
    std::ofstream(conf) << "node = from-file\nretention-months = 5\n"
                        << "keys = " << dir.file("keys") << "\n"
                        << "usage = " << dir.file("usage") << "\n";
    CheckRun run = run_check(
        {"--check-config", "--config", conf, "--retention-months", "7"});
    EXPECT_EQ(run.status, 0) << run.err;
    EXPECT_NE(run.out.find("\nnode = from-file\n"), std::string::npos)
        << run.out;
    EXPECT_NE(run.out.find("\nretention-months = 7\n"), std::string::npos)
        << run.out;
    EXPECT_NE(run.out.find("\nlisten = 127.0.0.1:8089\n"), std::string::npos)
        << run.out;
    EXPECT_EQ(run.out.find("config ="), std::string::npos) << run.out;
    EXPECT_EQ(run.err, "apikeyd: the configuration file " + conf +
                           " syntax is ok\n"
                           "apikeyd: configuration test is successful\n");
}

TEST(CheckConfig, AnUntrustedRuntimeDirectoryFailsTheTest) {
    ScratchDir dir;
    ASSERT_EQ(chmod(dir.path().c_str(), 0777), 0);
    CheckRun run = run_check({"--check-config", "--keys", dir.file("keys")});
    EXPECT_EQ(run.status, 2);
    EXPECT_EQ(run.out, "");
    EXPECT_NE(run.err.find("writable by its group or others"),
              std::string::npos)
        << run.err;
    EXPECT_NE(run.err.find("\napikeyd: configuration test failed\n"),
              std::string::npos)
        << run.err;
}

TEST(CheckConfig, AConninfoLibpqRefusesFailsTheTest) {
    ScratchDir dir;
    CheckRun run = run_check({"--check-config", "--db", "host=a bogus=1",
                              "--keys", dir.file("k"), "--usage",
                              dir.file("u")});
    EXPECT_EQ(run.status, 2);
    EXPECT_NE(run.err.find("apikeyd: invalid --db: "), std::string::npos)
        << run.err;
    EXPECT_NE(run.err.find("bogus"), std::string::npos) << run.err;
}

TEST(CheckConfig, TheDatabasePasswordIsNeverShown) {
    EXPECT_EQ(conninfo_for_display(""), "");
    EXPECT_EQ(conninfo_for_display("host=db1,db2 password=s3cret dbname=x"),
              "password=******** dbname=x host=db1,db2")
        << "keyword form, in libpq's order";
    EXPECT_EQ(conninfo_for_display("postgresql://u:s3cret@h:5433/d"),
              "user=u password=******** dbname=d host=h port=5433");
    EXPECT_EQ(conninfo_for_display("application_name='a b' options=it\\'s"),
              "options='it\\'s' application_name='a b'");
    DaemonConfig c;
    c.db = "host=h password='x y'";
    const std::string shown = effective_options(c);
    EXPECT_NE(shown.find("db = password=******** host=h\n"),
              std::string::npos)
        << shown;
    EXPECT_EQ(shown.find("x y"), std::string::npos) << shown;
}

// The shipped config file names every option a file may set, commented out
// at its default, and is itself a valid config file.
TEST(CheckConfig, TheShippedConfigFileListsEveryOption) {
    std::ifstream f(APIKEY_SHIPPED_CONF);
    std::stringstream text;
    text << f.rdbuf();
    ASSERT_FALSE(text.str().empty()) << "cannot read " << APIKEY_SHIPPED_CONF;
    for (const DaemonOption& o : daemon_options()) {
        if (!o.in_config_file) continue;
        // Without a default (node) or with an empty one (db) the line
        // shows an example instead.
        std::string line = "\n# " + std::string(o.name) + " = ";
        if (o.default_value != nullptr && *o.default_value != '\0') line += std::string(o.default_value) + '\n';
        EXPECT_NE(text.str().find(line), std::string::npos) << o.name;
    }
    DaemonConfig shipped, defaults;
    apply_config_text(text.str(), APIKEY_SHIPPED_CONF, &shipped);
    EXPECT_EQ(effective_options(shipped), effective_options(defaults));
}

}  // namespace
}  // namespace apikey
