// pg::'s text forms, no server needed: bytea parameters and values
// ("\x" + hex), and text[] parameters.
#include "pg.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace apikey::pg {
namespace {

TEST(PgBytea, HexRoundTrip) {
    const std::string bytes("\x00\x01\x7f\x80\xab\xff", 6);
    const std::string param = bytea_param(bytes.data(), bytes.size());
    EXPECT_EQ(param, "\\x00017f80abff");
    EXPECT_EQ(bytea_from_text(param), bytes);
    EXPECT_EQ(bytea_from_text("\\x"), "");
}

TEST(PgBytea, UpperCaseHexIsRead) {
    EXPECT_EQ(bytea_from_text("\\xABcd09"), std::string("\xab\xcd\x09", 3));
}

TEST(PgBytea, AnythingButHexFormatIsAnError) {
    for (const char* bad : {"", "\\", "x00", "\\y00", "\\x0", "\\x0g",
                            "\\xg0", "\\x 0", "\\x00\\x"}) {
        EXPECT_THROW(bytea_from_text(bad), Error) << bad;
    }
}

TEST(PgTextArray, QuotesAndEscapesEveryElement) {
    EXPECT_EQ(text_array_param({}), "{}");
    EXPECT_EQ(text_array_param({"a", "NULL", ""}), "{\"a\",\"NULL\",\"\"}");
    EXPECT_EQ(text_array_param({"say \"hi\"", "back\\slash", "a,b"}),
              "{\"say \\\"hi\\\"\",\"back\\\\slash\",\"a,b\"}");
}

}  // namespace
}  // namespace apikey::pg
