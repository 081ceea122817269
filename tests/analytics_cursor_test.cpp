// Listing cursors (analytics_cursor) and entity tags (analytics_etag).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "analytics_cursor.h"
#include "analytics_etag.h"

namespace apikey::api {
namespace {

const std::string kSecret(32, '\x5a');
const std::vector<std::string> kPos = {"2024-05-01 10:00:00.123456+00",
                                       "0b6e1c9a-8a5e-4c3e-9d2e-1f0a2b3c4d5e"};

CursorScope scope() {
    return {"11111111-1111-4111-8111-111111111111", "created_at", false, "",
            "", 30, "", "", "5", 100};
}

TEST(Cursor, RoundTripsItsPosition) {
    std::string c = encode_cursor(kSecret, scope(), kPos);
    EXPECT_EQ(decode_cursor(kSecret, scope(), c), kPos);
    // URL-safe as it is: no escaping needed in a query string.
    EXPECT_EQ(c.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnop"
                                  "qrstuvwxyz0123456789-_."),
              std::string::npos);
}

TEST(Cursor, KeepsAnyText) {
    std::vector<std::string> pos = {"name \"with\" \\ and \xc3\xa9", ""};
    std::string c = encode_cursor(kSecret, scope(), pos);
    EXPECT_EQ(decode_cursor(kSecret, scope(), c), pos);
}

TEST(Cursor, IsBoundToEveryPartOfItsListing) {
    std::string c = encode_cursor(kSecret, scope(), kPos);
    std::vector<CursorScope> others(11, scope());
    others[0].org_id = "22222222-2222-4222-8222-222222222222";
    others[1].sort = "name";
    others[2].descending = true;
    others[3].status = "active";
    others[4].dormant = "true";
    others[5].dormant_days = 31;
    others[6].q = "svc";
    others[7].spike = "true";
    others[8].spike_ratio = "4";
    others[9].spike_min = 99;
    for (std::size_t i = 0; i + 1 < others.size(); ++i) {
        EXPECT_FALSE(decode_cursor(kSecret, others[i], c)) << i;
    }
    EXPECT_FALSE(decode_cursor(std::string(32, 'x'), scope(), c));
}

TEST(Cursor, FieldsCannotBeShiftedIntoEachOther) {
    CursorScope a = scope(), b = scope();
    a.q = "ab";
    b.q = "a";
    b.dormant = "b";  // would collide with a plain concatenation
    a.dormant = "";
    std::string c = encode_cursor(kSecret, a, kPos);
    EXPECT_FALSE(decode_cursor(kSecret, b, c));
}

TEST(Cursor, AnyEditIsRefused) {
    std::string c = encode_cursor(kSecret, scope(), kPos);
    for (std::size_t i = 0; i < c.size(); ++i) {
        for (char repl : {'A', 'z', '0', '-', '.', '='}) {
            if (c[i] == repl) continue;
            std::string t = c;
            t[i] = repl;
            EXPECT_FALSE(decode_cursor(kSecret, scope(), t)) << i << repl;
        }
    }
    EXPECT_FALSE(decode_cursor(kSecret, scope(), c + "A"));
    EXPECT_FALSE(decode_cursor(kSecret, scope(), c.substr(0, c.size() - 1)));
    EXPECT_FALSE(decode_cursor(kSecret, scope(), c.substr(0, c.find('.'))));
    for (const char* junk : {"", ".", "abc", "a.b", "!!.??", "e30.AAAA"}) {
        EXPECT_FALSE(decode_cursor(kSecret, scope(), junk)) << junk;
    }
}

TEST(EntityTag, QuotedHexOfTheContent) {
    std::string t = entity_tag("{}");
    EXPECT_EQ(t.size(), 34u);
    EXPECT_EQ(t.front(), '"');
    EXPECT_EQ(t.back(), '"');
    EXPECT_EQ(t, entity_tag("{}"));
    EXPECT_NE(t, entity_tag("{ }"));
}

TEST(IfNoneMatch, ListsWeakAndStar) {
    std::string t = entity_tag("x");
    EXPECT_TRUE(none_match_hits({t}, t));
    EXPECT_TRUE(none_match_hits({"W/" + t}, t));
    EXPECT_TRUE(none_match_hits({"\"a\", " + t + " ,\"b\""}, t));
    EXPECT_TRUE(none_match_hits({"\"a\"", t}, t));
    EXPECT_TRUE(none_match_hits({"*"}, t));
    EXPECT_FALSE(none_match_hits({}, t));
    EXPECT_FALSE(none_match_hits({"\"a\", \"b\""}, t));
    EXPECT_FALSE(none_match_hits({t.substr(1, 32)}, t));  // unquoted
    EXPECT_FALSE(none_match_hits({""}, t));
}

}  // namespace
}  // namespace apikey::api
