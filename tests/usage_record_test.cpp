// shared/usage_record: the variable-length encoding (round trips, the
// references to the previous record, texts cut at their limits) and a
// decoder that trusts none of the bytes it reads.
#include "usage_record.h"
#include "usage_shape.h"

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace apikey {
namespace {

constexpr std::size_t kChunk = 4096;

struct Owned {
    UsageRecord r{};
    UsageFields fields() const { return usage_fields_of(r); }
};

Owned record(std::uint8_t key, std::string_view method,
             std::string_view endpoint, std::string_view agent) {
    Owned o;
    UsageRecord& r = o.r;
    r.result = AuthResult::kForbidden;
    r.ip_family = IpFamily::kV6;
    for (int i = 0; i < 16; ++i) {
        r.key_id[i] = static_cast<std::uint8_t>(key + i);
        r.org_id[i] = static_cast<std::uint8_t>(key * 3 + i);
        r.ip[i] = static_cast<std::uint8_t>(0xf0 + i);
    }
    r.status = 503;
    r.time_us = 1700000000123000;
    r.response_time_us = 1234567;
    r.bytes_sent = 0xffffffffffULL;
    r.method_len = static_cast<std::uint8_t>(
        copy_truncated(r.method, kUsageMethodLen, method));
    r.endpoint_len = static_cast<std::uint8_t>(
        copy_truncated(r.endpoint, kUsageEndpointLen, endpoint));
    r.user_agent_len = static_cast<std::uint16_t>(
        copy_truncated(r.user_agent, kUsageUserAgentLen, agent));
    return o;
}

void expect_same(const UsageRecord& got, const UsageRecord& want) {
    EXPECT_EQ(got.result, want.result);
    EXPECT_EQ(got.ip_family, want.ip_family);
    EXPECT_EQ(got.status, want.status);
    EXPECT_EQ(got.time_us, want.time_us);
    EXPECT_EQ(got.response_time_us, want.response_time_us);
    EXPECT_EQ(got.bytes_sent, want.bytes_sent);
    EXPECT_EQ(std::memcmp(got.key_id, want.key_id, 16), 0);
    EXPECT_EQ(std::memcmp(got.org_id, want.org_id, 16), 0);
    EXPECT_EQ(std::memcmp(got.ip, want.ip, ip_address_bytes(want.ip_family)),
              0);
    EXPECT_EQ(got.method_view(), want.method_view());
    EXPECT_EQ(got.endpoint_view(), want.endpoint_view());
    EXPECT_EQ(got.user_agent_view(), want.user_agent_view());
}

// Decodes every record of buf[0, size), expecting `n` records and the end.
std::vector<UsageRecord> decode_all(const unsigned char* buf,
                                    std::size_t size) {
    std::vector<UsageRecord> out;
    RecordDecodeContext ctx;
    std::size_t at = 0;
    while (at < size) {
        UsageRecord r;
        std::size_t used = 0;
        const DecodeResult res = decode_usage_record(buf, at, size, &ctx, &r, &used);
        if (res != DecodeResult::kRecord) break;
        out.push_back(r);
        at += used;
    }
    return out;
}

TEST(UsageRecordTest, RoundTripsEveryFieldAtItsLongest) {
    const Owned a = record(1, std::string(16, 'M'), std::string(96, 'e'),
                           std::string(256, 'u'));
    std::vector<unsigned char> buf(kChunk);
    RecordEncodeContext ctx;
    const std::size_t n = encode_usage_record(buf.data(), 0, kChunk,
                                              a.fields(), &ctx);
    ASSERT_GT(n, 0u);
    EXPECT_LE(n, kUsageRecordMaxBytes);
    RecordDecodeContext dctx;
    UsageRecord out;
    std::size_t used = 0;
    ASSERT_EQ(decode_usage_record(buf.data(), 0, n, &dctx, &out, &used),
              DecodeResult::kRecord);
    EXPECT_EQ(used, n);
    expect_same(out, a.r);
}

TEST(UsageRecordTest, ARepeatedRecordRefersToThePreviousOne) {
    const Owned a = record(7, "GET", "/v1/orders/{id}", "curl/8.5.0");
    Owned b = a;
    b.r.time_us += 2000;
    b.r.status = 200;
    std::vector<unsigned char> buf(kChunk);
    RecordEncodeContext ctx;
    const std::size_t first =
        encode_usage_record(buf.data(), 0, kChunk, a.fields(), &ctx);
    const std::size_t second =
        encode_usage_record(buf.data(), first, kChunk, b.fields(), &ctx);
    // flags, length, result, status, time delta, response time, bytes
    EXPECT_LE(second, 1u + 2 + 1 + 2 + 2 + 3 + 6);
    EXPECT_GT(first, second + 32 + 16);
    // A different key and agent are written again, the rest referred to.
    Owned c = b;
    c.r.time_us += 2000;
    c.r.key_id[0] ^= 1;
    c.r.user_agent_len = 2;
    const std::size_t third = encode_usage_record(
        buf.data(), first + second, kChunk, c.fields(), &ctx);
    EXPECT_EQ(third, second + 32 + 1 + 2);
    const auto got = decode_all(buf.data(), first + second + third);
    ASSERT_EQ(got.size(), 3u);
    expect_same(got[0], a.r);
    expect_same(got[1], b.r);
    expect_same(got[2], c.r);
}

TEST(UsageRecordTest, TimeGoingBackAndIpFamiliesRoundTrip) {
    std::vector<unsigned char> buf(kChunk);
    RecordEncodeContext ctx;
    std::vector<Owned> want;
    std::size_t at = 0;
    for (int i = 0; i < 6; ++i) {
        Owned o = record(static_cast<std::uint8_t>(i / 2), "POST", "/x", "");
        o.r.time_us = 1700000000000000 - i * 7919;  // earlier each time
        o.r.ip_family = i % 3 == 0   ? IpFamily::kV4
                        : i % 3 == 1 ? IpFamily::kNone
                                     : IpFamily::kV6;
        o.r.ip[0] = static_cast<std::uint8_t>(i);
        if (o.r.ip_family != IpFamily::kV6) {
            std::memset(o.r.ip + 4, 0, 12);
        }
        at += encode_usage_record(buf.data(), at, kChunk, o.fields(), &ctx);
        want.push_back(o);
    }
    const auto got = decode_all(buf.data(), at);
    ASSERT_EQ(got.size(), want.size());
    for (std::size_t i = 0; i < got.size(); ++i) expect_same(got[i], want[i].r);
}

TEST(UsageRecordTest, UserAgentKeeps256BytesAndCutsLongerAtUtf8Boundary) {
    const std::string exact(256, 'a');
    Owned o = record(1, "GET", "/", "");
    UsageFields f = o.fields();
    f.user_agent = std::string_view(exact);
    std::vector<unsigned char> buf(kChunk);
    RecordEncodeContext ctx;
    std::size_t at = encode_usage_record(buf.data(), 0, kChunk, f, &ctx);
    // 255 x 'a' then a 2-byte character: 257 bytes, the cut backs off to 255.
    const std::string longer = std::string(255, 'a') + "\xc3\xa9";
    f.user_agent = std::string_view(longer);
    at += encode_usage_record(buf.data(), at, kChunk, f, &ctx);
    // 600 bytes of 'b': cut at 256.
    const std::string huge(600, 'b');
    f.user_agent = std::string_view(huge);
    at += encode_usage_record(buf.data(), at, kChunk, f, &ctx);
    const auto got = decode_all(buf.data(), at);
    ASSERT_EQ(got.size(), 3u);
    EXPECT_EQ(got[0].user_agent_view(), exact);
    EXPECT_EQ(got[1].user_agent_view(), std::string(255, 'a'));
    EXPECT_EQ(got[2].user_agent_view(), std::string(256, 'b'));
}

TEST(UsageRecordTest, MethodAndEndpointAreCutToTheirFields) {
    Owned o = record(1, "", "", "");
    UsageFields f = o.fields();
    const std::string method = std::string(15, 'M') + "\xe2\x82\xac";
    const std::string endpoint(200, 'e');
    f.method = std::string_view(method);
    f.endpoint = std::string_view(endpoint);
    std::vector<unsigned char> buf(kChunk);
    RecordEncodeContext ctx;
    const std::size_t n = encode_usage_record(buf.data(), 0, kChunk, f, &ctx);
    const auto got = decode_all(buf.data(), n);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].method_view(), std::string(15, 'M'));
    EXPECT_EQ(got[0].endpoint_view(), std::string(96, 'e'));
}

TEST(UsageRecordTest, ARecordThatDoesNotFitWritesNothing) {
    const Owned a = record(1, "GET", "/a", "agent");
    std::vector<unsigned char> buf(128, 0xaa);
    RecordEncodeContext ctx;
    // Its longest form (every field written out) is 99 bytes.
    EXPECT_EQ(encode_usage_record(buf.data(), 30, 128, a.fields(), &ctx), 0u);
    EXPECT_EQ(encode_usage_record(buf.data(), 128, 128, a.fields(), &ctx), 0u);
    for (unsigned char c : buf) EXPECT_EQ(c, 0xaa);
    EXPECT_EQ(ctx.key, 0u);
    EXPECT_EQ(ctx.time_us, 0);
    EXPECT_GT(encode_usage_record(buf.data(), 29, 128, a.fields(), &ctx), 0u);
}

TEST(UsageRecordTest, AZeroByteEndsTheChunk) {
    const unsigned char zero[4] = {0, 1, 2, 3};
    RecordDecodeContext ctx;
    UsageRecord r;
    std::size_t used = 0;
    EXPECT_EQ(decode_usage_record(zero, 0, sizeof zero, &ctx, &r, &used),
              DecodeResult::kEnd);
    EXPECT_EQ(decode_usage_record(zero, 4, sizeof zero, &ctx, &r, &used),
              DecodeResult::kCorrupt);
}

// Valid bytes of two records: the second refers to the first.
std::vector<unsigned char> two_records(std::size_t* first) {
    const Owned a = record(3, "GET", "/v1", "ua");
    std::vector<unsigned char> buf(kChunk);
    RecordEncodeContext ctx;
    *first = encode_usage_record(buf.data(), 0, kChunk, a.fields(), &ctx);
    const std::size_t second =
        encode_usage_record(buf.data(), *first, kChunk, a.fields(), &ctx);
    buf.resize(*first + second);
    return buf;
}

DecodeResult decode_one(const std::vector<unsigned char>& buf,
                        std::size_t limit, RecordDecodeContext* ctx) {
    UsageRecord r;
    std::size_t used = 0;
    return decode_usage_record(buf.data(), 0, limit, ctx, &r, &used);
}

TEST(UsageRecordTest, EveryCutShortRecordIsCorrupt) {
    std::size_t first = 0;
    const std::vector<unsigned char> buf = two_records(&first);
    for (std::size_t limit = 1; limit < first; ++limit) {
        // A copy of exactly `limit` bytes: ASan sees any read past it.
        std::vector<unsigned char> cut(buf.begin(), buf.begin() + limit);
        RecordDecodeContext ctx;
        EXPECT_EQ(decode_one(cut, limit, &ctx), DecodeResult::kCorrupt)
            << limit;
        EXPECT_FALSE(ctx.has_previous);
    }
}

TEST(UsageRecordTest, HostileBytesAreRefused) {
    std::size_t first = 0;
    const std::vector<unsigned char> good = two_records(&first);
    RecordDecodeContext fresh;
    auto corrupt_at = [&](std::size_t i, unsigned char v) {
        std::vector<unsigned char> b = good;
        b[i] = v;
        RecordDecodeContext ctx;
        return decode_one(b, first, &ctx);
    };
    EXPECT_EQ(corrupt_at(0, 0x80 | 0x40), DecodeResult::kCorrupt);  // unknown flag
    EXPECT_EQ(corrupt_at(0, 0x01), DecodeResult::kCorrupt);  // no record mark
    // A reference with no previous record: the second record alone.
    std::vector<unsigned char> second(good.begin() + first, good.end());
    EXPECT_EQ(decode_one(second, second.size(), &fresh),
              DecodeResult::kCorrupt);
    // A body length past the limit, or longer than any record.
    EXPECT_EQ(corrupt_at(1, 0x7f), DecodeResult::kCorrupt);
    EXPECT_EQ(corrupt_at(2, 0x7f), DecodeResult::kCorrupt);
    // After flags and length (3 bytes): [result][status 2][time 8][response time 3]
    // [bytes 6][ids 32][ip family]...:
    // an IP family that is none of 0, 4, 6.
    const std::size_t family = 3 + 1 + 2 + 8 + 3 + 6 + 32;
    ASSERT_EQ(good[family], 6u);
    EXPECT_EQ(corrupt_at(family, 5), DecodeResult::kCorrupt);
    // A method longer than its field.
    EXPECT_EQ(corrupt_at(family + 17, 17), DecodeResult::kCorrupt);
    // A body with a spare byte at its end.
    std::vector<unsigned char> longer(good.begin(), good.begin() + first);
    longer[1] = static_cast<unsigned char>(longer[1] + 1);
    longer.push_back(0);
    RecordDecodeContext ctx;
    EXPECT_EQ(decode_one(longer, longer.size(), &ctx), DecodeResult::kCorrupt);
    // A varint that never ends.
    std::vector<unsigned char> endless = {0xa0, 14, 0, 0, 200, 0, 0xff, 0xff,
                                          0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                          0xff, 0xff, 0xff};
    EXPECT_EQ(decode_one(endless, endless.size(), &ctx),
              DecodeResult::kCorrupt);
}

TEST(UsageRecordTest, UserAgentLengthOverItsFieldIsCorrupt) {
    Owned o = record(1, "", "", "x");
    std::vector<unsigned char> buf(kChunk);
    RecordEncodeContext ectx;
    const std::size_t n =
        encode_usage_record(buf.data(), 0, kChunk, o.fields(), &ectx);
    // The agent's one-byte length is the record's second byte from the end.
    buf[n - 2] = 0x7f;
    RecordDecodeContext ctx;
    UsageRecord r;
    std::size_t used;
    EXPECT_EQ(decode_usage_record(buf.data(), 0, n, &ctx, &r, &used),
              DecodeResult::kCorrupt);
}

// --- record helpers ----------------------------------------------------------

TEST(UsageRecordTest, EqualBytesAgreesWithMemcmp) {
    // Every length up to 100 (the word, two-word and 16-byte-step paths),
    // equal and with one byte changed at each position.
    std::vector<unsigned char> a(100), b(100);
    for (std::size_t i = 0; i < a.size(); ++i) {
        a[i] = b[i] = static_cast<unsigned char>('a' + i % 26);
    }
    for (std::size_t n = 0; n <= a.size(); ++n) {
        ASSERT_TRUE(record_detail::equal_bytes(a.data(), b.data(), n)) << n;
        for (std::size_t at = 0; at < n; ++at) {
            b[at] ^= 0x20;
            ASSERT_FALSE(record_detail::equal_bytes(a.data(), b.data(), n))
                << n << " " << at;
            b[at] ^= 0x20;
        }
    }
}

TEST(UsageRecordTest, AuthResultNames) {
    const char* want[kAuthResultCount] = {
        "ok",      "missing", "malformed", "unknown",
        "expired", "revoked", "forbidden", "unavailable"};
    for (int i = 0; i < kAuthResultCount; ++i) {
        EXPECT_STREQ(auth_result_name(static_cast<AuthResult>(i)), want[i]);
    }
    EXPECT_STREQ(auth_result_name(static_cast<AuthResult>(200)), "invalid");
}

TEST(UsageRecordTest, CopyTruncatedAsciiFitsOrIsCut) {
    char buf[8];
    EXPECT_EQ(copy_truncated(buf, sizeof buf, "GET"), 3u);
    EXPECT_EQ(std::string(buf, 3), "GET");
    EXPECT_EQ(copy_truncated(buf, sizeof buf, "OPTIONSX"), 8u);
    EXPECT_EQ(copy_truncated(buf, sizeof buf, "OPTIONSXYZ"), 8u);
    EXPECT_EQ(std::string(buf, 8), "OPTIONSX");
    EXPECT_EQ(copy_truncated(buf, sizeof buf, ""), 0u);
    EXPECT_EQ(copy_truncated(nullptr, 0, "abc"), 0u);
}

TEST(UsageRecordTest, CopyTruncatedBacksOffToUtf8Boundary) {
    char buf[16];
    // "ab" + U+00E9 (2 bytes): a cap of 3 would split it.
    EXPECT_EQ(copy_truncated(buf, 3, "ab\xc3\xa9"), 2u);
    EXPECT_EQ(copy_truncated(buf, 4, "ab\xc3\xa9"), 4u);
    EXPECT_EQ(std::string(buf, 4), "ab\xc3\xa9");
    // U+20AC (3 bytes) after "a": caps 2 and 3 cut inside it.
    EXPECT_EQ(copy_truncated(buf, 2, "a\xe2\x82\xac"), 1u);
    EXPECT_EQ(copy_truncated(buf, 3, "a\xe2\x82\xac"), 1u);
    EXPECT_EQ(copy_truncated(buf, 4, "a\xe2\x82\xac"), 4u);
    // U+1F600 (4 bytes) at the start: nothing of it fits in 3.
    EXPECT_EQ(copy_truncated(buf, 3, "\xf0\x9f\x98\x80!"), 0u);
    EXPECT_EQ(copy_truncated(buf, 4, "\xf0\x9f\x98\x80!"), 4u);
    EXPECT_EQ(copy_truncated(buf, 5, "\xf0\x9f\x98\x80!"), 5u);
    // A cut right before a multibyte character needs no back-off.
    EXPECT_EQ(copy_truncated(buf, 2, "ab\xc3\xa9"), 2u);
}

TEST(UsageRecordTest, CopyTruncatedCutsInvalidUtf8WhereItIs) {
    const std::string longer(300, 'x');
    char buf[300];
    EXPECT_EQ(copy_truncated(buf, 256, longer), 256u);
    // Only continuation bytes: not UTF-8, cut at the cap.
    EXPECT_EQ(copy_truncated(buf, 6, std::string(10, '\x80')), 6u);
}

// --- the worker's repeat path (encode_repeat_record) --------------------------

// Texts at fixed addresses, as the worker's method table and configuration
// hold them.
const char kGet[kUsageMethodLen] = "GET";
const char kPost[kUsageMethodLen] = "POST";
const char kEndA[] = "/a";
const char kEndB[] = "/b";  // same length as kEndA, another label

struct Worker {
    std::uint8_t key[16] = {1, 2, 3};
    std::uint8_t org[16] = {9, 9};
    std::uint8_t ip[16] = {10, 0, 0, 1};
    std::string agent = "wrk/4.1 (bench)";
    const char* method = kGet;
    const char* endpoint = kEndA;
    std::int64_t time_us = 1700000000000000;

    UsageFields fields() const {
        UsageFields f{};
        f.result = AuthResult::kOk;
        f.ip_family = IpFamily::kV4;
        f.status = 200;
        f.time_us = time_us;
        f.response_time_us = 1000;
        f.bytes_sent = 1300;
        f.key_id = key;
        f.org_id = org;
        f.ip = ip;
        f.method = std::string_view(method, std::strlen(method));
        f.endpoint = std::string_view(endpoint, std::strlen(endpoint));
        f.user_agent = std::string_view(agent);
        f.method_constant = true;
        f.endpoint_constant = true;
        return f;
    }
};

// Encodes as UsageSegment::log does (the request observed, then the
// repeat path first); *repeats counts the records the repeat path wrote.
std::size_t encode_as_worker(unsigned char* chunk, std::size_t at,
                             const UsageFields& f, RequestShape* shape,
                             RecordEncodeContext* ctx, int* repeats) {
    shape->observe(f);
    std::size_t n =
        encode_repeat_record(chunk, at, f, ctx, shape->address());
    if (n != 0) {
        ++*repeats;
        return n;
    }
    return encode_usage_record(chunk, at, kChunk, f, ctx, shape->address());
}

TEST(UsageRecordRepeatTest, ARepeatIsWrittenByTheFastPathAndDecodes) {
    std::vector<unsigned char> buf(kChunk);
    RecordEncodeContext ctx;
    RequestShape shape;
    Worker w;
    int repeats = 0;
    std::size_t at =
        encode_as_worker(buf.data(), 0, w.fields(), &shape, &ctx, &repeats);
    EXPECT_EQ(repeats, 0);  // nothing before it
    w.time_us += 3000;
    const std::size_t n =
        encode_as_worker(buf.data(), at, w.fields(), &shape, &ctx, &repeats);
    EXPECT_EQ(repeats, 1);
    // flags, length, result, status, then three one- or two-byte varints
    EXPECT_EQ(n, 3u + 1 + 2 + 2 + 2 + 2);
    EXPECT_EQ(buf[at], 0x80 | 0x1f);  // every field as before
    const auto got = decode_all(buf.data(), at + n);
    ASSERT_EQ(got.size(), 2u);
    EXPECT_EQ(got[1].time_us, w.time_us);
    EXPECT_EQ(got[1].user_agent_view(), w.agent);
    EXPECT_EQ(got[1].endpoint_view(), "/a");
    EXPECT_EQ(std::memcmp(got[1].key_id, w.key, 16), 0);
}

TEST(UsageRecordRepeatTest, AnyChangedFieldTakesTheFullEncoder) {
    std::vector<unsigned char> buf(kChunk);
    const Worker base;
    // Each change, made after one record of `base`: the repeat path must
    // refuse it.
    const std::vector<void (*)(Worker&)> changes = {
        [](Worker& w) { w.endpoint = kEndB; },            // label
        [](Worker& w) { w.method = kPost; },              // method
        [](Worker& w) { w.agent[3] = 'X'; },              // same length
        [](Worker& w) { w.agent += "!"; },                // longer
        [](Worker& w) { w.key[15] ^= 1; },
        [](Worker& w) { w.org[8] ^= 1; },
        [](Worker& w) { w.ip[3] = 2; },
    };
    for (std::size_t i = 0; i < changes.size(); ++i) {
        RecordEncodeContext ctx;
        RequestShape shape;
        shape.observe(base.fields());
        const std::size_t first = encode_usage_record(
            buf.data(), 0, kChunk, base.fields(), &ctx, shape.address());
        Worker w = base;
        changes[i](w);
        shape.observe(w.fields());
        EXPECT_EQ(encode_repeat_record(buf.data(), first, w.fields(),
                                       &ctx, shape.address()),
                  0u)
            << "change " << i;
        // And back again: a changed key, org, address, method or endpoint
        // made a new shape, so the first record is not repeated; a user
        // agent (changes 2 and 3) is not part of the shape, and the first
        // record repeats (11 bytes: no time delta).
        shape.observe(base.fields());
        EXPECT_EQ(encode_repeat_record(buf.data(), first,
                                       base.fields(), &ctx, shape.address()),
                  i == 2 || i == 3 ? 11u : 0u)
            << "change " << i << " undone";
    }
    // Texts not promised constant are never repeated by address.
    RecordEncodeContext ctx;
    RequestShape shape;
    UsageFields f = base.fields();
    f.endpoint_constant = false;
    shape.observe(f);
    const std::size_t first =
        encode_usage_record(buf.data(), 0, kChunk, f, &ctx, shape.address());
    shape.observe(f);
    EXPECT_EQ(encode_repeat_record(buf.data(), first, f, &ctx,
                                   shape.address()),
              0u);
    // Nor a record encoded without a shape (0), with the shape 0.
    RecordEncodeContext none;
    const std::size_t plain =
        encode_usage_record(buf.data(), 0, kChunk, base.fields(), &none);
    EXPECT_EQ(encode_repeat_record(buf.data(), plain, base.fields(),
                                   &none, 0),
              0u);
    // Nor a record with nothing before it in the chunk.
    RecordEncodeContext fresh;
    EXPECT_EQ(encode_repeat_record(buf.data(), 0, base.fields(), &fresh,
                                   shape.address()),
              0u);
}

TEST(UsageRecordRepeatTest, ARepeatTakesExactlyTheOffsetsTheFullEncoderDoes) {
    // The repeat path's fit (repeat_until) against the full encoder's at
    // every offset near the chunk's end, its very end and past it.
    std::vector<unsigned char> fast(kChunk), full(kChunk);
    const Worker w;
    RequestShape shape;
    shape.observe(w.fields());
    RecordEncodeContext first_fast, first_full;
    ASSERT_NE(encode_usage_record(fast.data(), 0, kChunk, w.fields(),
                                  &first_fast, shape.address()),
              0u);
    UsageFields plain = w.fields();
    plain.method_constant = false;
    plain.endpoint_constant = false;
    ASSERT_NE(encode_usage_record(full.data(), 0, kChunk, plain, &first_full),
              0u);
    shape.observe(w.fields());
    int fits = 0;
    for (std::size_t at = kChunk - 200; at <= kChunk + 1; ++at) {
        RecordEncodeContext a = first_fast, b = first_full;
        const std::size_t n =
            encode_repeat_record(fast.data(), at, w.fields(), &a,
                                 shape.address());
        const std::size_t m =
            encode_usage_record(full.data(), at, kChunk, plain, &b);
        ASSERT_EQ(n, m) << "offset " << at;
        if (n != 0) ++fits;
    }
    EXPECT_GT(fits, 0);
    EXPECT_LT(fits, 200);
}

TEST(UsageRecordRepeatTest, TheWorkersBytesAreTheFullEncodersBytes) {
    // A worker's traffic: runs of repeats, label, user-agent, key and
    // address changes, time jumps, end of chunk. Encoded with the repeat
    // path and, separately, with the full encoder alone (no promises):
    // the same bytes, record for record.
    std::vector<unsigned char> fast(kChunk), full(kChunk);
    RecordEncodeContext fctx, sctx;
    RequestShape shape;
    std::mt19937_64 rng(7);
    Worker w;
    const char* endpoints[] = {kEndA, kEndB};
    const char* methods[] = {kGet, kPost};
    const std::string agents[] = {"wrk/4.1 (bench)", "wrk/4.1 (bencH)",
                                  std::string(200, 'u')};
    std::size_t at = 0;
    int repeats = 0;
    int records = 0;
    while (true) {
        const unsigned roll = static_cast<unsigned>(rng() % 40);
        if (roll == 0) w.endpoint = endpoints[rng() % 2];
        if (roll == 1) w.method = methods[rng() % 2];
        if (roll == 2) w.agent = agents[rng() % 3];
        if (roll == 3) w.key[0] = static_cast<std::uint8_t>(rng() % 3);
        if (roll == 4) w.ip[3] = static_cast<std::uint8_t>(rng() % 3);
        w.time_us += static_cast<std::int64_t>(rng() % 5000) - 1000;
        if (roll == 5) w.time_us += 3600LL * 1000000;  // next hour
        UsageFields f = w.fields();
        f.response_time_us = (rng() % 3) * 1000;
        UsageFields plain = f;
        plain.method_constant = false;
        plain.endpoint_constant = false;
        const std::size_t n = encode_as_worker(fast.data(), at, f, &shape,
                                               &fctx, &repeats);
        const std::size_t m =
            encode_usage_record(full.data(), at, kChunk, plain, &sctx);
        ASSERT_EQ(n, m) << "record " << records;
        if (n == 0) break;  // the chunk is full: the same record for both
        at += n;
        ++records;
    }
    EXPECT_GT(records, 200);
    EXPECT_GT(repeats, records / 2);
    EXPECT_EQ(std::memcmp(fast.data(), full.data(), at), 0);
    EXPECT_EQ(decode_all(fast.data(), at).size(),
              static_cast<std::size_t>(records));
}

}  // namespace
}  // namespace apikey
