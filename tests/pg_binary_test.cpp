// Byte layouts of PostgreSQL's binary format (the *send / *recv functions of
// int2, int4, int8, float8, timestamptz, text, bytea, uuid, inet and
// arrays), written out by hand from the format, not from the encoder.
#include "pg_binary.h"

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace apikey::pg {
namespace {

std::string bytes(std::initializer_list<int> list) {
    std::string out;
    for (int b : list) out.push_back(static_cast<char>(b));
    return out;
}

template <typename Fn>
std::string field(Fn&& put) {
    std::string s;
    put(&s);
    return s;
}

TEST(PgBinary, IntegersAreBigEndian) {
    EXPECT_EQ(field([](auto* s) { put_u16(s, 0x0102); }), bytes({1, 2}));
    EXPECT_EQ(field([](auto* s) { put_u32(s, 0x01020304); }),
              bytes({1, 2, 3, 4}));
    EXPECT_EQ(field([](auto* s) { put_u64(s, 0x0102030405060708ull); }),
              bytes({1, 2, 3, 4, 5, 6, 7, 8}));
    EXPECT_EQ(field([](auto* s) { put_i32(s, -2); }),
              bytes({0xff, 0xff, 0xff, 0xfe}));
}

TEST(PgBinary, Int2FieldIsLengthTwoThenTwoBytes) {
    EXPECT_EQ(field([](auto* s) { put_int2_field(s, 404); }),
              bytes({0, 0, 0, 2, 0x01, 0x94}));
    EXPECT_EQ(field([](auto* s) { put_int2_field(s, -1); }),
              bytes({0, 0, 0, 2, 0xff, 0xff}));
}

TEST(PgBinary, Int4FieldIsLengthFourThenFourBytes) {
    EXPECT_EQ(field([](auto* s) { put_int4_field(s, 70000); }),
              bytes({0, 0, 0, 4, 0x00, 0x01, 0x11, 0x70}));
    EXPECT_EQ(field([](auto* s) { put_int4_field(s, INT32_MIN); }),
              bytes({0, 0, 0, 4, 0x80, 0, 0, 0}));
}

TEST(PgBinary, Int8FieldIsLengthEightThenEightBytes) {
    EXPECT_EQ(field([](auto* s) { put_int8_field(s, 0x0102030405060708); }),
              bytes({0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8}));
    EXPECT_EQ(field([](auto* s) { put_int8_field(s, -1); }),
              bytes({0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                     0xff}));
    EXPECT_EQ(field([](auto* s) { put_int8_field(s, INT64_MAX); }),
              bytes({0, 0, 0, 8, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                     0xff}));
}

TEST(PgBinary, Float8FieldIsIeeeBitsBigEndian) {
    // 1.5 = 0x3FF8000000000000, -0.25 = 0xBFD0000000000000
    EXPECT_EQ(field([](auto* s) { put_float8_field(s, 1.5); }),
              bytes({0, 0, 0, 8, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0}));
    EXPECT_EQ(field([](auto* s) { put_float8_field(s, -0.25); }),
              bytes({0, 0, 0, 8, 0xbf, 0xd0, 0, 0, 0, 0, 0, 0}));
}

TEST(PgBinary, TimestamptzCountsMicrosecondsFrom2000) {
    constexpr std::int64_t k2000 = 946684800LL * 1000000;
    EXPECT_EQ(field([](auto* s) { put_timestamptz_field(s, k2000); }),
              bytes({0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0}));
    // one second later: 1 000 000 = 0x0F4240
    EXPECT_EQ(
        field([](auto* s) { put_timestamptz_field(s, k2000 + 1000000); }),
        bytes({0, 0, 0, 8, 0, 0, 0, 0, 0, 0x0f, 0x42, 0x40}));
    // the Unix epoch lies before it: negative
    EXPECT_EQ(pg_time_from_unix_us(0), -k2000);
    EXPECT_EQ(BinaryParam::timestamptz(k2000 - 1).value,
              bytes({0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}));
}

TEST(PgBinary, TextAndByteaAreLengthThenBytesAsIs) {
    EXPECT_EQ(field([](auto* s) { put_bytes_field(s, "GET"); }),
              bytes({0, 0, 0, 3, 'G', 'E', 'T'}));
    EXPECT_EQ(field([](auto* s) { put_bytes_field(s, ""); }),
              bytes({0, 0, 0, 0}));
    // bytea: NUL and high bytes, no escaping
    const std::string raw = bytes({0, 0xff, '\\', '\n'});
    EXPECT_EQ(field([&](auto* s) { put_bytes_field(s, raw); }),
              bytes({0, 0, 0, 4, 0, 0xff, '\\', '\n'}));
    EXPECT_EQ(BinaryParam::text("a\tb").value, "a\tb");
}

TEST(PgBinary, UuidIsSixteenBytesInOrder) {
    std::uint8_t id[16];
    for (int i = 0; i < 16; ++i) id[i] = static_cast<std::uint8_t>(0xa0 + i);
    std::string want = bytes({0, 0, 0, 16});
    want.append(reinterpret_cast<const char*>(id), 16);
    EXPECT_EQ(field([&](auto* s) { put_uuid_field(s, id); }), want);
}

TEST(PgBinary, InetUsesPostgresFamilyCodesAndFullPrefix) {
    const std::uint8_t v4[4] = {192, 0, 2, 7};
    // PGSQL_AF_INET 2, /32, not cidr, 4 address bytes
    EXPECT_EQ(field([&](auto* s) { put_inet4_field(s, v4); }),
              bytes({0, 0, 0, 8, 2, 32, 0, 4, 192, 0, 2, 7}));
    std::uint8_t v6[16] = {0x20, 0x01, 0x0d, 0xb8};
    v6[15] = 1;
    // PGSQL_AF_INET6 3 (not the platform's AF_INET6), /128, 16 bytes
    EXPECT_EQ(field([&](auto* s) { put_inet6_field(s, v6); }),
              bytes({0, 0, 0, 20, 3, 128, 0, 16, 0x20, 0x01, 0x0d, 0xb8, 0, 0,
                     0, 0, 0, 0, 0, 0, 0, 0, 0, 1}));
}

TEST(PgBinary, NullFieldIsLengthMinusOne) {
    EXPECT_EQ(field([](auto* s) { put_null_field(s); }),
              bytes({0xff, 0xff, 0xff, 0xff}));
}

TEST(PgBinary, BeginEndFieldSetsTheLengthWritten) {
    std::string s = "x";
    const std::size_t at = begin_field(&s);
    s.append(300, 'y');
    end_field(&s, at);
    ASSERT_EQ(s.size(), 1u + 4 + 300);
    EXPECT_EQ(s.substr(1, 4), bytes({0, 0, 0x01, 0x2c}));
}

// ndim, has-nulls flag, element type; then dimension, lower bound.
std::string array_head(int ndim, int has_null, Oid elem) {
    std::string s;
    put_i32(&s, ndim);
    put_i32(&s, has_null);
    put_u32(&s, elem);
    return s;
}

TEST(PgBinary, EmptyArrayHasNoDimensions) {
    ArrayParam a(kInt8Oid);
    EXPECT_EQ(a.size(), 0u);
    EXPECT_EQ(a.param().value, array_head(0, 0, 20));
}

TEST(PgBinary, Int4ArrayIsHeaderDimensionThenFields) {
    ArrayParam a(kInt4Oid);
    a.add_int4(1);
    a.add_int4(-1);
    std::string want = array_head(1, 0, 23) + bytes({0, 0, 0, 2, 0, 0, 0, 1});
    want += bytes({0, 0, 0, 4, 0, 0, 0, 1});
    want += bytes({0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff});
    EXPECT_EQ(a.size(), 2u);
    EXPECT_EQ(a.param().value, want);
}

TEST(PgBinary, ArrayWithANullSetsTheFlag) {
    const std::uint8_t v4[4] = {10, 0, 0, 1};
    ArrayParam a(kInetOid);
    a.add_inet4(v4);
    a.add_null();
    std::string want = array_head(1, 1, 869) + bytes({0, 0, 0, 2, 0, 0, 0, 1});
    want += bytes({0, 0, 0, 8, 2, 32, 0, 4, 10, 0, 0, 1});
    want += bytes({0xff, 0xff, 0xff, 0xff});
    EXPECT_EQ(a.param().value, want);
}

TEST(PgBinary, ArrayElementsOfEveryKind) {
    const std::uint8_t id[16] = {1, 2, 3, 4, 5, 6, 7, 8,
                                 9, 10, 11, 12, 13, 14, 15, 16};
    const std::uint8_t v6[16] = {0xfe, 0x80};
    struct Case {
        Oid elem;
        std::function<void(ArrayParam*)> add;
        std::function<void(std::string*)> put;
    };
    const std::vector<Case> cases = {
        {kInt8Oid, [](ArrayParam* a) { a->add_int8(-5); },
         [](std::string* s) { put_int8_field(s, -5); }},
        {kFloat8Oid, [](ArrayParam* a) { a->add_float8(2.5); },
         [](std::string* s) { put_float8_field(s, 2.5); }},
        {kTimestamptzOid, [](ArrayParam* a) { a->add_timestamptz(1); },
         [](std::string* s) { put_timestamptz_field(s, 1); }},
        {kUuidOid, [&](ArrayParam* a) { a->add_uuid(id); },
         [&](std::string* s) { put_uuid_field(s, id); }},
        {kTextOid, [](ArrayParam* a) { a->add_text("/v1"); },
         [](std::string* s) { put_bytes_field(s, "/v1"); }},
        {kInetOid, [&](ArrayParam* a) { a->add_inet6(v6); },
         [&](std::string* s) { put_inet6_field(s, v6); }},
    };
    for (const Case& c : cases) {
        ArrayParam a(c.elem);
        c.add(&a);
        std::string want =
            array_head(1, 0, c.elem) + bytes({0, 0, 0, 1, 0, 0, 0, 1});
        c.put(&want);
        EXPECT_EQ(a.param().value, want) << "element type " << c.elem;
    }
}

TEST(PgBinary, EncodedElementGetsItsLength) {
    ArrayParam a(kTextOid);
    a.add_encoded([](std::string* s) { s->append("{1,2}"); });
    EXPECT_EQ(a.param().value, array_head(1, 0, 25) +
                                   bytes({0, 0, 0, 1, 0, 0, 0, 1}) +
                                   bytes({0, 0, 0, 5}) + "{1,2}");
}

TEST(PgBinary, BoundParamsPointIntoTheParamsAsBinary) {
    std::vector<BinaryParam> params = {BinaryParam::text("node"),
                                       BinaryParam::text("")};
    BoundParams b(params);
    ASSERT_EQ(b.count(), 2);
    EXPECT_EQ(b.values[0], params[0].value.data());
    EXPECT_EQ(b.lengths[0], 4);
    EXPECT_EQ(b.lengths[1], 0);
    EXPECT_EQ(b.formats, (std::vector<int>{1, 1}));
}

}  // namespace
}  // namespace apikey::pg
