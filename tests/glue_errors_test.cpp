// The glue's copy of an error message into a C caller's buffer.
#include "../module/apikey_glue_errors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>

namespace apikey {
namespace {

TEST(CopyError, FitsTheMessageAndTerminatesIt) {
    char buf[8];
    std::memset(buf, 'x', sizeof buf);
    copy_error("short", buf, sizeof buf);
    EXPECT_STREQ(buf, "short");
    copy_error("a longer message", buf, sizeof buf);
    EXPECT_STREQ(buf, "a longe") << "cut to the buffer, NUL included";
}

TEST(CopyError, LeavesANullOrEmptyBufferAlone) {
    copy_error("message", nullptr, 16);
    char buf[4] = {'x', 'x', 'x', 'x'};
    copy_error("message", buf, 0);
    EXPECT_EQ(std::string(buf, sizeof buf), "xxxx");
    copy_error("message", buf, 1);
    EXPECT_EQ(buf[0], '\0');
}

}  // namespace
}  // namespace apikey
