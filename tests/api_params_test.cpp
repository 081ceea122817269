#include "api_params.h"

#include <gtest/gtest.h>

#include <string>

namespace apikey::api {
namespace {

// 2024-05-15T10:30:00Z
constexpr std::int64_t kNow = 1715769000LL * kUsPerSecond;
constexpr std::int64_t kSec = kUsPerSecond;

std::int64_t at(const char* text) {
    std::optional<std::int64_t> t = parse_time(text);
    EXPECT_TRUE(t.has_value()) << text;
    return t.value_or(0);
}

// The ParamError message for a query ("" when it is accepted).
std::string key_error(const std::string& target) {
    try {
        parse_key_usage_params(parse_query(target), kNow);
    } catch (const ParamError& e) {
        return e.what();
    }
    return "";
}

std::string org_error(const std::string& target) {
    try {
        parse_org_usage_params(parse_query(target));
    } catch (const ParamError& e) {
        return e.what();
    }
    return "";
}

// --- query strings
// -------------------------------------------------------------

TEST(ParseQuery, NoQueryIsEmpty) {
    EXPECT_TRUE(parse_query("/api/x").empty());
    EXPECT_TRUE(parse_query("/api/x?").empty());
}

TEST(ParseQuery, DecodesPairsInOrderKeepingRepeats) {
    QueryParams q = parse_query("/p?a=1&b=x%20y&a=2&c&&d=");
    ASSERT_EQ(q.size(), 5u);
    auto [first, last] = q.equal_range("a");
    ASSERT_EQ(std::distance(first, last), 2);
    EXPECT_EQ(first->second, "1");
    EXPECT_EQ(std::next(first)->second, "2");
    EXPECT_EQ(q.find("b")->second, "x y");
    EXPECT_EQ(q.find("c")->second, "");
    EXPECT_EQ(q.find("d")->second, "");
}

TEST(ParseQuery, PlusIsASpaceAndPercent2BIsAPlus) {
    QueryParams q = parse_query("/p?t=2024-05-01T00:00:00+02:00&u=%2B");
    EXPECT_EQ(q.find("t")->second, "2024-05-01T00:00:00 02:00");
    EXPECT_EQ(q.find("u")->second, "+");
}

TEST(ParseQuery, IdenticalRepeatsAreKept) {
    // cpp-httplib's own parser drops an exact duplicate pair.
    EXPECT_EQ(parse_query("/p?top=5&top=5").count("top"), 2u);
}

TEST(ParseQuery, RejectsBadEscapesAndEmptyNames) {
    EXPECT_THROW(parse_query("/p?a=%zz"), ParamError);
    EXPECT_THROW(parse_query("/p?a=%4"), ParamError);
    EXPECT_THROW(parse_query("/p?a=%"), ParamError);
    EXPECT_THROW(parse_query("/p?=1"), ParamError);
    EXPECT_NO_THROW(parse_query("/p?a=%41%42"));
    EXPECT_EQ(parse_query("/p?a=%41%62").find("a")->second, "Ab");
}

TEST(ParseQuery, IgnoresAFragment) {
    QueryParams q = parse_query("/p?a=1#b=2");
    EXPECT_EQ(q.size(), 1u);
    EXPECT_EQ(q.find("a")->second, "1");
}

// --- time parsing
// ------------------------------------------------------------------

TEST(IntervalName, AsTheQueryNamesIt) {
    EXPECT_EQ(interval_name(Interval::kHour), "hour");
    EXPECT_EQ(interval_name(Interval::kDay), "day");
}

TEST(ParseTime, RFC3339WithZ) {
    EXPECT_EQ(at("1970-01-01T00:00:00Z"), 0);
    EXPECT_EQ(at("2024-05-15T10:30:00Z"), kNow);
    EXPECT_EQ(at("2024-05-15t10:30:00z"), kNow);
}

TEST(ParseTime, Offsets) {
    EXPECT_EQ(at("2024-05-15T12:30:00+02:00"), kNow);
    EXPECT_EQ(at("2024-05-15T05:00:00-05:30"), kNow);
    EXPECT_EQ(at("2024-05-15T10:30:00+00:00"), kNow);
    EXPECT_EQ(at("2024-05-15T10:30:00-00:00"), kNow);
    // An unescaped '+' in a query string arrives as a space.
    EXPECT_EQ(at("2024-05-15T12:30:00 02:00"), kNow);
}

TEST(ParseTime, Fractions) {
    EXPECT_EQ(at("2024-05-15T10:30:00.5Z"), kNow + 500000);
    EXPECT_EQ(at("2024-05-15T10:30:00.123456Z"), kNow + 123456);
    EXPECT_EQ(at("2024-05-15T10:30:00.123456789Z"), kNow + 123456);  // cut
    EXPECT_FALSE(parse_time("2024-05-15T10:30:00.Z"));
    EXPECT_FALSE(parse_time("2024-05-15T10:30:00.1234567890Z"));
}

TEST(ParseTime, PlainDateIsMidnightUTC) {
    EXPECT_EQ(at("2024-05-15"), at("2024-05-15T00:00:00Z"));
    EXPECT_EQ(at("2024-02-29"), 1709164800LL * kSec);
    EXPECT_EQ(at("2000-03-01"), 951868800LL * kSec);
}

TEST(ParseTime, LeapSecondRollsOver) {
    EXPECT_EQ(at("2016-12-31T23:59:60Z"), at("2017-01-01T00:00:00Z"));
}

TEST(ParseTime, RejectsMalformed) {
    for (const char* bad : {
             "",
             "now",
             "2024",
             "2024-05",
             "2024-5-15",
             "2024/05/15",
             "2024-05-15T",
             "2024-05-15T10:30Z",
             "2024-05-15T10:30:00",       // no offset
             "2024-05-15 10:30:00Z",      // space instead of T
             "2024-05-15T10:30:00+0200",  // offset without colon
             "2024-05-15T10:30:00+02",
             "2024-05-15T10:30:00ZZ",
             "2024-05-15T10:30:00X",      // no such zone designator
             "2024-05-15T10:30:00Z ",
             " 2024-05-15",
             "2024-05-15x",
             "2024-13-01",
             "2024-00-01",
             "2024-04-31",
             "2023-02-29",
             "1900-02-29",
             "0000-01-01",
             "2024-05-15T24:00:00Z",
             "2024-05-15T10:60:00Z",
             "2024-05-15T10:30:61Z",
             "2024-05-15T10:30:00+24:00",
             "2024-05-15T10:30:00+02:60",
             "+2024-05-15",
             "1715769000",
         }) {
        EXPECT_FALSE(parse_time(bad)) << "'" << bad << "'";
    }
}

TEST(ParseTime, AcceptsLeapDaysOfLeapYears) {
    EXPECT_TRUE(parse_time("2000-02-29"));
    EXPECT_TRUE(parse_time("2024-02-29T23:59:59Z"));
}

// --- formatting
// --------------------------------------------------------------------

TEST(FormatRFC3339, WholeSecondsByDefault) {
    EXPECT_EQ(format_rfc3339(0), "1970-01-01T00:00:00Z");
    EXPECT_EQ(format_rfc3339(kNow), "2024-05-15T10:30:00Z");
    EXPECT_EQ(format_rfc3339(kNow + 999999), "2024-05-15T10:30:00Z");
    EXPECT_EQ(format_rfc3339(at("9999-12-31T23:59:59Z")),
              "9999-12-31T23:59:59Z");
}

TEST(FormatRFC3339, MillisAndMicrosTruncate) {
    EXPECT_EQ(format_rfc3339(kNow + 123456, TimePrecision::kMillis),
              "2024-05-15T10:30:00.123Z");
    EXPECT_EQ(format_rfc3339(kNow + 123456, TimePrecision::kMicros),
              "2024-05-15T10:30:00.123456Z");
    EXPECT_EQ(format_rfc3339(kNow, TimePrecision::kMillis),
              "2024-05-15T10:30:00.000Z");
}

TEST(FormatRFC3339, BeforeTheEpoch) {
    EXPECT_EQ(format_rfc3339(-1), "1969-12-31T23:59:59Z");
    EXPECT_EQ(format_rfc3339(-1, TimePrecision::kMicros),
              "1969-12-31T23:59:59.999999Z");
}

TEST(FormatRFC3339, RoundTripsThroughParse) {
    for (std::int64_t t :
         {std::int64_t{0}, kNow, kNow + 1, std::int64_t{951782400} * kSec,
          std::int64_t{4102444800} * kSec - 1}) {
        EXPECT_EQ(parse_time(format_rfc3339(t, TimePrecision::kMicros)), t);
    }
}

// --- calendar
// ------------------------------------------------------------------------

TEST(Calendar, FloorToHourAndDay) {
    EXPECT_EQ(floor_to(kNow + 59 * 60 * kSec, Interval::kHour),
              at("2024-05-15T11:00:00Z"));
    EXPECT_EQ(floor_to(kNow, Interval::kDay), at("2024-05-15"));
    EXPECT_EQ(floor_to(-1, Interval::kDay), -kApiUsPerDay);
}

TEST(Calendar, MonthBounds) {
    EXPECT_EQ(month_start_us(kNow), at("2024-05-01"));
    EXPECT_EQ(next_month_start_us(kNow), at("2024-06-01"));
    EXPECT_EQ(month_start_us(at("2024-12-31T23:59:59Z")), at("2024-12-01"));
    EXPECT_EQ(next_month_start_us(at("2024-12-31T23:59:59Z")),
              at("2025-01-01"));
    EXPECT_EQ(next_month_start_us(at("2024-02-10")), at("2024-03-01"));
    EXPECT_EQ(month_start_us(at("2024-03-01")), at("2024-03-01"));
}

TEST(SeriesBuckets, StartsInsideFromAndEndsBeforeTo) {
    std::vector<std::int64_t> b =
        series_buckets(at("2024-05-01T10:30:00Z"), at("2024-05-01T13:00:00Z"),
                       Interval::kHour);
    ASSERT_EQ(b.size(), 2u);
    EXPECT_EQ(b[0], at("2024-05-01T11:00:00Z"));
    EXPECT_EQ(b[1], at("2024-05-01T12:00:00Z"));

    b = series_buckets(at("2024-05-01"), at("2024-05-04"), Interval::kDay);
    ASSERT_EQ(b.size(), 3u);
    EXPECT_EQ(b.front(), at("2024-05-01"));
    EXPECT_EQ(b.back(), at("2024-05-03"));

    // An unaligned `to` keeps the bucket it falls in (it started before to).
    b = series_buckets(at("2024-05-01"), at("2024-05-03T00:00:01Z"),
                       Interval::kDay);
    EXPECT_EQ(b.size(), 3u);
    EXPECT_TRUE(series_buckets(at("2024-05-01T10:30:00Z"),
                               at("2024-05-01T10:59:00Z"), Interval::kHour)
                    .empty());
}

// --- the org endpoint
// -------------------------------------------------------------------

TEST(OrgUsageParams, DefaultsTo30Days) {
    EXPECT_EQ(parse_org_usage_params(parse_query("/x")).dormant_days, 30);
}

TEST(OrgUsageParams, DormantDaysRange) {
    EXPECT_EQ(
        parse_org_usage_params(parse_query("/x?dormant_days=0")).dormant_days,
        0);
    EXPECT_EQ(parse_org_usage_params(parse_query("/x?dormant_days=3650"))
                  .dormant_days,
              3650);
    EXPECT_EQ(
        parse_org_usage_params(parse_query("/x?dormant_days=007")).dormant_days,
        7);
    for (const char* bad : {"-1", "3651", "", "abc", "1.5", "+5", " 5", "5 ",
                            "1e3", "0x10", "99999999999999999999"}) {
        EXPECT_EQ(org_error(std::string("/x?dormant_days=") + bad),
                  "dormant_days must be a whole number in 0..3650")
            << bad;
    }
}

TEST(OrgUsageParams, RepeatedIsAnErrorUnknownIsIgnored) {
    EXPECT_EQ(org_error("/x?dormant_days=5&dormant_days=5"),
              "parameter dormant_days is given more than once");
    EXPECT_EQ(org_error("/x?foo=bar&interval=nonsense"), "");
}

OrgUsageParams org(const std::string& target) {
    return parse_org_usage_params(parse_query(target));
}

TEST(OrgUsageParams, PagingDefaults) {
    OrgUsageParams p = org("/x");
    EXPECT_EQ(p.limit, 100);
    EXPECT_EQ(p.sort, ListSort::kCreatedAt);
    EXPECT_FALSE(p.descending);
    EXPECT_EQ(p.status, ListStatus::kAny);
    EXPECT_EQ(p.dormant, ListDormant::kAny);
    EXPECT_EQ(p.q, "");
    EXPECT_EQ(p.cursor, "");
}

TEST(OrgUsageParams, LimitRange) {
    EXPECT_EQ(org("/x?limit=1").limit, 1);
    EXPECT_EQ(org("/x?limit=1000").limit, 1000);
    for (const char* bad : {"0", "1001", "", "-1", "ten", "10.0"}) {
        EXPECT_EQ(org_error(std::string("/x?limit=") + bad),
                  "limit must be a whole number in 1..1000")
            << bad;
    }
}

TEST(OrgUsageParams, SortsAndTheirDefaultOrder) {
    struct {
        const char* name;
        ListSort sort;
        bool descending;
    } cases[] = {{"created_at", ListSort::kCreatedAt, false},
                 {"name", ListSort::kName, false},
                 {"last_used_at", ListSort::kLastUsedAt, true},
                 {"requests_today", ListSort::kRequestsToday, true},
                 {"requests_this_month", ListSort::kRequestsThisMonth, true},
                 {"requests_last_hour", ListSort::kRequestsLastHour, true}};
    for (const auto& c : cases) {
        OrgUsageParams p = org(std::string("/x?sort=") + c.name);
        EXPECT_EQ(p.sort, c.sort) << c.name;
        EXPECT_EQ(sort_name(p.sort), c.name);
        EXPECT_EQ(p.descending, c.descending) << c.name;
        EXPECT_TRUE(org(std::string("/x?order=desc&sort=") + c.name).descending);
        EXPECT_FALSE(org(std::string("/x?order=asc&sort=") + c.name).descending);
    }
    for (const char* bad : {"", "id", "Name", "requests", "created_at "}) {
        EXPECT_EQ(org_error(std::string("/x?sort=") + bad),
                  "sort must be created_at, last_used_at, requests_today,"
                  " requests_this_month, requests_last_hour or name")
            << bad;
    }
    EXPECT_EQ(org_error("/x?order=up"), "order must be asc or desc");
    EXPECT_EQ(org_error("/x?order=ASC"), "order must be asc or desc");
}

TEST(OrgUsageParams, Filters) {
    EXPECT_EQ(org("/x?status=active").status, ListStatus::kActive);
    EXPECT_EQ(org("/x?status=revoked").status, ListStatus::kRevoked);
    EXPECT_EQ(org("/x?status=expired").status, ListStatus::kExpired);
    EXPECT_EQ(status_name(ListStatus::kExpired), "expired");
    EXPECT_EQ(status_name(ListStatus::kAny), "");
    EXPECT_EQ(org_error("/x?status=all"),
              "status must be active, revoked or expired");
    EXPECT_EQ(org("/x?dormant=true").dormant, ListDormant::kYes);
    EXPECT_EQ(org("/x?dormant=false").dormant, ListDormant::kNo);
    EXPECT_EQ(dormant_name(ListDormant::kNo), "false");
    EXPECT_EQ(dormant_name(ListDormant::kAny), "");
    EXPECT_EQ(org_error("/x?dormant=1"), "dormant must be true or false");
    EXPECT_EQ(org("/x?q=svc%20a").q, "svc a");
    const std::string q_error =
        "q must be 1 to 100 bytes of UTF-8 text without NUL";
    EXPECT_EQ(org_error("/x?q="), q_error);
    EXPECT_EQ(org_error("/x?q=a%00b"), q_error);
    EXPECT_EQ(org_error("/x?q=%ff"), q_error);
    EXPECT_EQ(org_error("/x?q=" + std::string(101, 'a')), q_error);
    EXPECT_EQ(org("/x?q=" + std::string(100, 'a')).q.size(), 100u);
}

TEST(OrgUsageParams, CursorIsTakenAsGivenWithinItsBound) {
    EXPECT_EQ(org("/x?cursor=abc.def").cursor, "abc.def");
    EXPECT_EQ(org_error("/x?cursor="), "cursor is not valid for this listing");
    EXPECT_EQ(org_error("/x?cursor=" + std::string(1025, 'a')),
              "cursor is not valid for this listing");
}

TEST(DormantDays, AloneForThePerKeyView) {
    EXPECT_EQ(parse_dormant_days(parse_query("/x?limit=0")), 30);
    EXPECT_EQ(parse_dormant_days(parse_query("/x?dormant_days=9")), 9);
}

// --- the key endpoint
// ---------------------------------------------------------------------

TEST(KeyUsageParams, DefaultsAre30DaysDailyTop10) {
    KeyUsageParams p = parse_key_usage_params(parse_query("/x"), kNow);
    EXPECT_EQ(p.interval, Interval::kDay);
    EXPECT_EQ(p.to_us, kNow);
    EXPECT_EQ(p.from_us, kNow - 30 * kApiUsPerDay);
    EXPECT_EQ(p.top, 10);
    // 30 buckets: 29 whole days before today, and today.
    EXPECT_EQ(series_buckets(p.from_us, p.to_us, p.interval).size(), 30u);
}

TEST(KeyUsageParams, HourlyDefaultsTo24Hours) {
    KeyUsageParams p =
        parse_key_usage_params(parse_query("/x?interval=hour"), kNow);
    EXPECT_EQ(p.interval, Interval::kHour);
    EXPECT_EQ(p.from_us, kNow - 24 * kApiUsPerHour);
    EXPECT_EQ(series_buckets(p.from_us, p.to_us, p.interval).size(), 24u);
}

TEST(KeyUsageParams, FromAndToAreParsed) {
    KeyUsageParams p = parse_key_usage_params(
        parse_query("/x?from=2024-05-01&to=2024-05-08T00:00:00%2B02:00"), kNow);
    EXPECT_EQ(p.from_us, at("2024-05-01"));
    EXPECT_EQ(p.to_us, at("2024-05-07T22:00:00Z"));
}

TEST(KeyUsageParams, ToAloneMovesTheDefaultRange) {
    KeyUsageParams p =
        parse_key_usage_params(parse_query("/x?to=2024-04-01"), kNow);
    EXPECT_EQ(p.to_us, at("2024-04-01"));
    EXPECT_EQ(p.from_us, at("2024-03-02"));
}

TEST(KeyUsageParams, FromAloneEndsNow) {
    KeyUsageParams p =
        parse_key_usage_params(parse_query("/x?from=2024-05-10"), kNow);
    EXPECT_EQ(p.from_us, at("2024-05-10"));
    EXPECT_EQ(p.to_us, kNow);
}

TEST(KeyUsageParams, Interval) {
    EXPECT_EQ(key_error("/x?interval=day"), "");
    EXPECT_EQ(key_error("/x?interval=hour"), "");
    for (const char* bad : {"", "Day", "HOUR", "week", "minute", "1h"}) {
        EXPECT_EQ(key_error(std::string("/x?interval=") + bad),
                  "interval must be hour or day")
            << bad;
    }
}

TEST(KeyUsageParams, Top) {
    EXPECT_EQ(parse_key_usage_params(parse_query("/x?top=1"), kNow).top, 1);
    EXPECT_EQ(parse_key_usage_params(parse_query("/x?top=100"), kNow).top, 100);
    for (const char* bad : {"0", "101", "-1", "", "ten", "5.0", "1000000"}) {
        EXPECT_EQ(key_error(std::string("/x?top=") + bad),
                  "top must be a whole number in 1..100")
            << bad;
    }
}

TEST(KeyUsageParams, UnparseableTimes) {
    EXPECT_EQ(
        key_error("/x?from=yesterday").rfind("from must be an RFC 3339", 0),
        0u);
    EXPECT_EQ(key_error("/x?to=2024-05-32").rfind("to must be an RFC 3339", 0),
              0u);
    EXPECT_NE(key_error("/x?from="), "");
}

TEST(KeyUsageParams, FromMustBeBeforeTo) {
    EXPECT_EQ(key_error("/x?from=2024-05-02&to=2024-05-01"),
              "from must be before to");
    EXPECT_EQ(key_error("/x?from=2024-05-01&to=2024-05-01"),
              "from must be before to");
    EXPECT_EQ(key_error("/x?from=2024-05-16"), "from must be before to");
    EXPECT_EQ(
        key_error(
            "/x?from=2024-05-01T00:00:00Z&to=2024-05-01T00:00:00.000001Z"),
        "");
}

TEST(KeyUsageParams, RangeLimits) {
    EXPECT_EQ(key_error("/x?from=2023-01-01&to=2024-02-05"), "");  // 400 days
    EXPECT_EQ(key_error("/x?from=2023-01-01&to=2024-02-05T00:00:01Z"),
              "the range from..to must not exceed 400 days");
    EXPECT_EQ(key_error("/x?interval=hour&from=2024-04-01&to=2024-05-02"), "");
    EXPECT_EQ(
        key_error("/x?interval=hour&from=2024-04-01&to=2024-05-02T00:00:01Z"),
        "the range from..to must not exceed 31 days with interval=hour");
    EXPECT_EQ(key_error("/x?from=2024-04-01&to=2024-05-02T00:00:01Z"), "");
}

TEST(KeyUsageParams, TimesBefore1970AreRejected) {
    EXPECT_EQ(key_error("/x?from=1969-12-31&to=1970-01-02"),
              "from and to must lie between 1970-01-01 and 9999-12-31");
    EXPECT_EQ(key_error("/x?to=1970-01-05"),  // default from: 30 days before
              "from and to must lie between 1970-01-01 and 9999-12-31");
    EXPECT_EQ(key_error("/x?from=1970-01-01&to=1970-01-05"), "");
}

TEST(KeyUsageParams, RepeatedParameters) {
    for (const char* q : {"/x?from=2024-05-01&from=2024-05-02",
                          "/x?to=2024-05-10&to=2024-05-10",
                          "/x?interval=day&interval=day", "/x?top=5&top=6"}) {
        EXPECT_NE(key_error(q).find("is given more than once"),
                  std::string::npos)
            << q;
    }
}

TEST(KeyUsageParams, UnknownParametersAreIgnored) {
    EXPECT_EQ(key_error("/x?foo=1&bar&_=123"), "");
}

TEST(KeyUsageParams, ErrorsNeverEchoTheValue) {
    const std::string secret = "ak_SECRETSECRETSECRETSECRETSECRETxyz123";
    for (const char* name : {"from", "to", "interval", "top"}) {
        std::string msg = key_error(std::string("/x?") + name + "=" + secret);
        EXPECT_NE(msg, "") << name;
        EXPECT_EQ(msg.find("SECRET"), std::string::npos) << msg;
    }
    EXPECT_EQ(org_error("/x?dormant_days=" + secret).find("SECRET"),
              std::string::npos);
}

// --- path segments
// ------------------------------------------------------------------------

TEST(UuidSegment, AcceptsCanonicalFormEitherCase) {
    Uuid a =
        parse_uuid_segment("0b6f1c2e-3d4a-4b5c-8d6e-7f8091a2b3c4", "org_id");
    Uuid b =
        parse_uuid_segment("0B6F1C2E-3D4A-4B5C-8D6E-7F8091A2B3C4", "org_id");
    EXPECT_EQ(a, b);
    EXPECT_EQ(uuid_to_string(a), "0b6f1c2e-3d4a-4b5c-8d6e-7f8091a2b3c4");
}

TEST(UuidSegment, RejectsAnythingElseNamingTheSegment) {
    for (const char* bad : {"", "x", "0b6f1c2e3d4a4b5c8d6e7f8091a2b3c4",
                            "{0b6f1c2e-3d4a-4b5c-8d6e-7f8091a2b3c4}",
                            "0b6f1c2e-3d4a-4b5c-8d6e-7f8091a2b3c",
                            "0b6f1c2e-3d4a-4b5c-8d6e-7f8091a2b3c4x",
                            "gb6f1c2e-3d4a-4b5c-8d6e-7f8091a2b3c4"}) {
        try {
            parse_uuid_segment(bad, "key_id");
            ADD_FAILURE() << bad;
        } catch (const ParamError& e) {
            EXPECT_STREQ(e.what(), "key_id must be a UUID");
        }
    }
}


// --- export
// -------------------------------------------------------------------

std::string export_error(const std::string& target) {
    try {
        parse_export_params(parse_query(target), kNow);
    } catch (const ParamError& e) {
        return e.what();
    }
    return "";
}

TEST(ExportParams, TheRangeRulesOfThePerKeyView) {
    ExportParams e = parse_export_params(parse_query("/x"), kNow);
    KeyUsageParams k = parse_key_usage_params(parse_query("/x"), kNow);
    EXPECT_EQ(e.from_us, k.from_us);
    EXPECT_EQ(e.to_us, k.to_us);
    EXPECT_EQ(e.interval, Interval::kDay);
    EXPECT_EQ(e.format, ExportFormat::kCsv);
    e = parse_export_params(
        parse_query("/x?interval=hour&from=2024-04-01&to=2024-04-02"), kNow);
    EXPECT_EQ(e.interval, Interval::kHour);
    EXPECT_EQ(e.from_us, at("2024-04-01T00:00:00Z"));
    EXPECT_EQ(e.to_us, at("2024-04-02T00:00:00Z"));
    EXPECT_EQ(export_error("/x?interval=hour&from=2024-04-01&to=2024-05-03"),
              "the range from..to must not exceed 31 days with interval=hour");
    EXPECT_EQ(export_error("/x?from=2024-04-02&to=2024-04-01"),
              "from must be before to");
    EXPECT_EQ(export_error("/x?interval=week"), "interval must be hour or day");
}

TEST(ExportParams, Format) {
    EXPECT_EQ(parse_export_params(parse_query("/x?format=ndjson"), kNow).format,
              ExportFormat::kNdjson);
    EXPECT_EQ(parse_export_params(parse_query("/x?format=csv"), kNow).format,
              ExportFormat::kCsv);
    EXPECT_EQ(export_error("/x?format=CSV"), "format must be csv or ndjson");
    EXPECT_EQ(export_error("/x?format="), "format must be csv or ndjson");
    EXPECT_NE(export_error("/x?format=csv&format=csv")
                  .find("is given more than once"),
              std::string::npos);
}

// --- the spike rule's parameters
// ------------------------------------------------------

TEST(SpikeParams, DefaultsOnBothEndpoints) {
    OrgUsageParams o = parse_org_usage_params(parse_query("/x"));
    EXPECT_EQ(o.spike_rule.ratio, 5.0);
    EXPECT_EQ(o.spike_rule.min, 100);
    EXPECT_EQ(o.spike, ListDormant::kAny);
    KeyUsageParams k = parse_key_usage_params(parse_query("/x"), kNow);
    EXPECT_EQ(k.spike_rule.ratio, 5.0);
    EXPECT_EQ(k.spike_rule.min, 100);
}

TEST(SpikeParams, AcceptsDecimalsAboveOneAndWholeMinimums) {
    OrgUsageParams o = parse_org_usage_params(
        parse_query("/x?spike_ratio=2.5&spike_min=0&spike=true"));
    EXPECT_EQ(o.spike_rule.ratio, 2.5);
    EXPECT_EQ(o.spike_rule.min, 0);
    EXPECT_EQ(o.spike, ListDormant::kYes);
    EXPECT_EQ(parse_org_usage_params(parse_query("/x?spike=false")).spike,
              ListDormant::kNo);
    KeyUsageParams k = parse_key_usage_params(
        parse_query("/x?spike_ratio=1000&spike_min=999999999"), kNow);
    EXPECT_EQ(k.spike_rule.ratio, 1000.0);
    EXPECT_EQ(k.spike_rule.min, 999999999);
    EXPECT_EQ(parse_spike_rule(parse_query("/x?spike_ratio=1.0001")).ratio,
              1.0001);
}

TEST(SpikeParams, RefusesEverythingElseNamingTheParameter) {
    for (const char* q :
         {"spike_ratio=1", "spike_ratio=1.0", "spike_ratio=0.5", "spike_ratio=",
          "spike_ratio=abc", "spike_ratio=1e3", "spike_ratio=-2",
          "spike_ratio=+2", "spike_ratio=5.", "spike_ratio=.5",
          "spike_ratio=1.2.3", "spike_ratio=inf", "spike_ratio=nan",
          "spike_ratio=1000.01", "spike_ratio=0x10", "spike_ratio=0000000000005",
          "spike_ratio=5&spike_ratio=5"}) {
        std::string target = std::string("/x?") + q;
        EXPECT_NE(org_error(target).find("spike_ratio"), std::string::npos)
            << q;
        EXPECT_NE(key_error(target).find("spike_ratio"), std::string::npos)
            << q;
    }
    for (const char* q : {"spike_min=-1", "spike_min=1.5", "spike_min=",
                          "spike_min=x", "spike_min=1000000000"}) {
        std::string target = std::string("/x?") + q;
        EXPECT_NE(org_error(target).find("spike_min"), std::string::npos) << q;
        EXPECT_NE(key_error(target).find("spike_min"), std::string::npos) << q;
    }
    EXPECT_EQ(org_error("/x?spike=yes"), "spike must be true or false");
    // The per-key view has no spike filter: an unknown parameter there.
    EXPECT_EQ(key_error("/x?spike=yes"), "");
}

}  // namespace
}  // namespace apikey::api
