// pg::Connection without a server: how a failure to connect reads.
#include "pg.h"

#include <gtest/gtest.h>

namespace apikey::pg {
namespace {

// libpq's message spans two lines ("... failed: Connection refused\n\tIs
// the server running ..."); a log line or apikeyctl's one-line error keeps
// all of it.
TEST(PgConnection, ConnectFailureIsOneLineWithLibpqsHint) {
    try {
        Connection conn("host=127.0.0.1 port=1 connect_timeout=2", "test");
        FAIL() << "connected to port 1";
    } catch (const Error& e) {
        const std::string what = e.what();
        EXPECT_EQ(what.find('\n'), std::string::npos) << what;
        EXPECT_EQ(what.find('\t'), std::string::npos) << what;
        EXPECT_EQ(what.find("  "), std::string::npos) << what;
        EXPECT_NE(what.find("Connection refused Is the server running"),
                  std::string::npos)
            << what;
        EXPECT_EQ(e.sqlstate(), "");
    }
}

}  // namespace
}  // namespace apikey::pg
