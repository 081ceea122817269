// apikeyd's log: the level filter and the line format, read back from a
// stderr redirected into a file.
#include "log.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <regex>
#include <string>

namespace apikey {
namespace {

// What the calls in `fn` wrote to stderr.
template <typename Fn>
std::string stderr_of(Fn fn) {
    std::fflush(stderr);
    std::FILE* sink = std::tmpfile();
    int saved = ::dup(STDERR_FILENO);
    ::dup2(::fileno(sink), STDERR_FILENO);
    fn();
    std::fflush(stderr);
    ::dup2(saved, STDERR_FILENO);
    ::close(saved);
    std::string out;
    std::rewind(sink);
    char buf[512];
    while (std::size_t n = std::fread(buf, 1, sizeof buf, sink)) out.append(buf, n);
    std::fclose(sink);
    return out;
}

class Log : public ::testing::Test {
protected:
    void TearDown() override { set_log_level(LogLevel::kInfo); }
};

TEST_F(Log, InfoAndAboveByDefault) {
    std::string out = stderr_of([] {
        log_debug("quiet");
        log_info("one");
        log_warn("two");
        log_error("three");
    });
    EXPECT_EQ(out.find("quiet"), std::string::npos);
    EXPECT_TRUE(std::regex_search(
        out, std::regex(R"(^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \[info\] one\n)")))
        << out;
    EXPECT_NE(out.find("Z [warn] two\n"), std::string::npos);
    EXPECT_NE(out.find("Z [error] three\n"), std::string::npos);
}

TEST_F(Log, DebugWhenAskedFor) {
    set_log_level(LogLevel::kDebug);
    EXPECT_NE(stderr_of([] { log_debug("loud"); }).find("Z [debug] loud\n"),
              std::string::npos);
}

TEST_F(Log, WarnHidesInfo) {
    set_log_level(LogLevel::kWarn);
    std::string out = stderr_of([] {
        log_info("hidden");
        log_warn("shown");
    });
    EXPECT_EQ(out.find("hidden"), std::string::npos);
    EXPECT_NE(out.find("[warn] shown"), std::string::npos);
}

TEST_F(Log, ALevelOutsideTheEnumIsMarked) {
    std::string out =
        stderr_of([] { log_line(static_cast<LogLevel>(9), "odd"); });
    EXPECT_NE(out.find("Z [?] odd\n"), std::string::npos) << out;
}

}  // namespace
}  // namespace apikey
