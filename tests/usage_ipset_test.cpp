// shared/usage_ipset: the client-address set of an aggregation buffer.
// Distinct (key, day, address) rows whatever the repeats, the memo's
// shortcut cleared with the buffer, a full set counted, hostile counts
// clamped.
#include "usage_ipset.h"

#include <array>
#include <cstring>
#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include "scratch_dir.h"
#include "usage_ring.h"

namespace apikey {
namespace {

constexpr std::int64_t kJan2Us = 1704153600LL * 1000000;  // 2024-01-02Z
constexpr std::int32_t kJan2 = 19724;                     // its day number

struct Request {
    std::array<std::uint8_t, 16> key{{1, 2, 3}};
    std::array<std::uint8_t, 16> ip{{127, 0, 0, 1}};
    IpFamily family = IpFamily::kV4;
    std::int64_t time_us = kJan2Us;
    char method[kUsageMethodLen] = {'G', 'E', 'T'};

    AggregateInput input() const {
        AggregateInput in;
        in.key_id = key.data();
        in.time_us = time_us;
        in.status = 200;
        in.ip_family = family;
        in.ip = ip.data();
        in.method = method;
        in.method_len = 3;
        in.endpoint = "/items";
        return in;
    }
};

using Row = std::tuple<std::array<std::uint8_t, 16>, std::int32_t,
                       std::uint64_t>;

class UsageIpSetTest : public ::testing::Test {
protected:
    void SetUp() override {
        bool created = false;
        std::string error;
        ASSERT_EQ(seg_.open_or_create(
                      path_.c_str(),
                      usage_layout_for(std::size_t{1} << 20, 1, kAggMinEntries),
                      0600, &created, &error),
                  SegmentStatus::kOk)
            << error;
        ASSERT_EQ(seg_.claim_slot(100, 1), 0);
    }

    void add(const Request& r) {
        EXPECT_TRUE(seg_.aggregate(0, r.input()));
    }

    // As the worker hands it: constant texts, so the entry memo holds the
    // repeats (and with them the address it last put in the set).
    void add_worker(const Request& r) {
        static const char kGet[kUsageMethodLen] = {'G', 'E', 'T'};
        static const char kItems[] = "/items";
        UsageFields f{};
        f.key_id = r.key.data();
        f.org_id = r.key.data();
        f.time_us = r.time_us;
        f.status = 200;
        f.ip_family = r.family;
        f.ip = r.ip.data();
        f.method = std::string_view(kGet, 3);
        f.endpoint = std::string_view(kItems);
        f.method_constant = true;
        f.endpoint_constant = true;
        f.endpoint_hash = agg_text_hash(f.endpoint);
        EXPECT_TRUE(seg_.aggregate(0, f));
    }

    // Closes the active buffer; returns its set (and clears it).
    std::vector<IpSetEntry> collect() {
        const std::uint64_t e = seg_.agg_close(0);
        EXPECT_NE(e, 0u);
        std::vector<IpSetEntry> out;
        seg_.agg_read_ips(0, e, &out);
        seg_.agg_clear(0, e);
        return out;
    }

    static std::set<Row> rows(const std::vector<IpSetEntry>& v) {
        std::set<Row> out;
        for (const IpSetEntry& e : v) {
            std::array<std::uint8_t, 16> k;
            std::memcpy(k.data(), e.key_id, 16);
            out.emplace(k, e.day, e.ip_hash);
        }
        return out;
    }

    testing::ScratchDir dir_;
    std::string path_ = dir_.file("usage");
    UsageSegment seg_;
};

TEST(UsageIpSetLayoutTest, AQuarterOfTheEntriesAfterTheCells) {
    const AggLayout l = agg_layout_for(kAggDefaultEntries);
    EXPECT_EQ(l.ipset_rows, kAggDefaultEntries / 4);
    EXPECT_EQ(l.ipset_index, 2 * l.ipset_rows);
    EXPECT_GE(l.ipset_offset, l.cells_offset + l.cells * sizeof(AggCell));
    EXPECT_EQ(l.ipset_offset % 64, 0u);
    EXPECT_EQ(l.ipset_rows_offset % 64, 0u);
    EXPECT_LE(l.ipset_rows_offset + l.ipset_rows * sizeof(AggIpRow),
              l.buffer_size);
}

TEST(UsageIpSetHashTest, SameAddressSameHashFamiliesApart) {
    const std::uint8_t a[16] = {127, 0, 0, 1};
    const std::uint8_t b[16] = {127, 0, 0, 2};
    EXPECT_EQ(ipset_ip_hash(IpFamily::kV4, a), ipset_ip_hash(IpFamily::kV4, a));
    EXPECT_NE(ipset_ip_hash(IpFamily::kV4, a), ipset_ip_hash(IpFamily::kV4, b));
    EXPECT_NE(ipset_ip_hash(IpFamily::kV4, a), ipset_ip_hash(IpFamily::kV6, a));
}

TEST_F(UsageIpSetTest, OneRowPerKeyDayAndAddress) {
    Request r;
    for (int i = 0; i < 5; ++i) add(r);  // memo hits
    Request other_ip = r;
    other_ip.ip[3] = 2;
    Request other_key = r;
    other_key.key[0] = 9;
    Request next_day = r;
    next_day.time_us += kUsPerDay;
    Request v6 = r;
    v6.family = IpFamily::kV6;
    v6.ip = {{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}};
    for (int i = 0; i < 3; ++i) {
        // Interleaved: the memo misses and the probe finds the row.
        for (const Request* x : {&r, &other_ip, &other_key, &next_day, &v6}) {
            add(*x);
        }
    }
    const std::vector<IpSetEntry> got = collect();
    EXPECT_EQ(got.size(), 5u);
    const std::set<Row> want = {
        {r.key, kJan2, ipset_ip_hash(IpFamily::kV4, r.ip.data())},
        {r.key, kJan2, ipset_ip_hash(IpFamily::kV4, other_ip.ip.data())},
        {other_key.key, kJan2, ipset_ip_hash(IpFamily::kV4, r.ip.data())},
        {r.key, kJan2 + 1, ipset_ip_hash(IpFamily::kV4, r.ip.data())},
        {r.key, kJan2, ipset_ip_hash(IpFamily::kV6, v6.ip.data())},
    };
    EXPECT_EQ(rows(got), want);
    EXPECT_EQ(seg_.slot(0).agg_ipset_overflow.load(), 0u);
}

TEST_F(UsageIpSetTest, BytesPastAnIpv4AddressDoNotCount) {
    Request r;
    add(r);
    Request dirty = r;
    dirty.ip[9] = 0x55;  // what a reused field may hold past 4 bytes
    Request between = r;
    between.key[0] = 7;
    add(between);  // the memo now names another key
    add(dirty);
    EXPECT_EQ(collect().size(), 2u);
}

TEST_F(UsageIpSetTest, NoAddressNoRow) {
    Request r;
    r.family = IpFamily::kNone;
    add(r);
    add(r);
    EXPECT_TRUE(collect().empty());
}

// The memo lives in the buffer: a cleared buffer forgets it, so the same
// client is counted again in the next one.
TEST_F(UsageIpSetTest, ClearedBufferForgetsTheMemo) {
    Request r;
    add(r);
    EXPECT_EQ(collect().size(), 1u);
    add(r);  // the other buffer
    EXPECT_EQ(collect().size(), 1u);
    add(r);  // back in the first, cleared
    add(r);
    const std::vector<IpSetEntry> third = collect();
    ASSERT_EQ(third.size(), 1u);
    EXPECT_EQ(third[0].day, kJan2);
}

// The entry memo's address: repeats skip the insert, a new address on the
// same entry is inserted, and every (key, day, address) is a row.
TEST_F(UsageIpSetTest, TheEntryMemoSkipsOnlyItsOwnAddress) {
    Request a;
    Request b = a;
    b.ip[3] = 2;
    Request dirty = a;
    dirty.ip[9] = 0x55;  // the same v4 address
    Request v6 = a;
    v6.family = IpFamily::kV6;
    v6.ip = {{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}};
    Request v6b = v6;
    v6b.ip[15] = 2;
    Request later = a;  // another hour (a new entry), same day
    later.time_us += 3 * kUsPerHour;
    Request next_day = a;
    next_day.time_us += kUsPerDay;
    Request other_key = a;
    other_key.key[0] = 9;
    for (int i = 0; i < 3; ++i) {
        for (const Request* x :
             {&a, &a, &b, &b, &dirty, &a, &v6, &v6b, &v6, &later, &b,
              &next_day, &a, &other_key, &a}) {
            add_worker(*x);
        }
    }
    const std::set<Row> want = {
        {a.key, kJan2, ipset_ip_hash(IpFamily::kV4, a.ip.data())},
        {a.key, kJan2, ipset_ip_hash(IpFamily::kV4, b.ip.data())},
        {a.key, kJan2, ipset_ip_hash(IpFamily::kV6, v6.ip.data())},
        {a.key, kJan2, ipset_ip_hash(IpFamily::kV6, v6b.ip.data())},
        {a.key, kJan2 + 1, ipset_ip_hash(IpFamily::kV4, a.ip.data())},
        {other_key.key, kJan2, ipset_ip_hash(IpFamily::kV4, a.ip.data())},
    };
    const std::vector<IpSetEntry> got = collect();
    EXPECT_EQ(got.size(), want.size());
    EXPECT_EQ(rows(got), want);
}

// The entry memo is the worker's, not the buffer's: after a flip the same
// (key, day, address) must reach the new buffer's set, every time.
TEST_F(UsageIpSetTest, AnEpochFlipReinsertsTheMemoAddress) {
    Request r;
    const std::set<Row> want = {
        {r.key, kJan2, ipset_ip_hash(IpFamily::kV4, r.ip.data())}};
    for (int round = 0; round < 4; ++round) {
        add_worker(r);
        add_worker(r);  // the memo's repeat
        const std::vector<IpSetEntry> got = collect();
        EXPECT_EQ(rows(got), want) << "round " << round;
    }
    // A flip with nothing collected in between: the closed buffer keeps
    // its row, the new one gets its own.
    add_worker(r);
    const std::uint64_t e = seg_.agg_close(0);
    ASSERT_NE(e, 0u);
    add_worker(r);
    std::vector<IpSetEntry> closed;
    seg_.agg_read_ips(0, e, &closed);
    seg_.agg_clear(0, e);
    EXPECT_EQ(rows(closed), want);
    EXPECT_EQ(rows(collect()), want);
}

// An address the full set dropped is not remembered: each repeat of it is
// counted, none is skipped as if it were in the set.
TEST_F(UsageIpSetTest, ADroppedAddressIsNotRemembered) {
    const std::uint32_t cap = seg_.agg_layout().ipset_rows;
    Request r;
    for (std::uint32_t i = 0; i < cap; ++i) {
        r.ip[2] = static_cast<std::uint8_t>(i >> 8);
        r.ip[3] = static_cast<std::uint8_t>(i);
        add_worker(r);
    }
    EXPECT_EQ(seg_.slot(0).agg_ipset_overflow.load(), 0u);
    Request dropped = r;
    dropped.ip[0] = 10;
    for (int i = 0; i < 5; ++i) add_worker(dropped);
    EXPECT_EQ(seg_.slot(0).agg_ipset_overflow.load(), 5u);
    add_worker(r);  // the memo's address is in the set: no count
    EXPECT_EQ(seg_.slot(0).agg_ipset_overflow.load(), 5u);
    // Another key's entry forgets the address: (other key, r's address)
    // was never in the set.
    Request other_key = r;
    other_key.key[0] = 9;
    add_worker(other_key);
    add_worker(other_key);
    EXPECT_EQ(seg_.slot(0).agg_ipset_overflow.load(), 7u);
    EXPECT_EQ(collect().size(), cap);
}

TEST_F(UsageIpSetTest, AFullSetCountsTheRestAndKeepsAggregating) {
    const std::uint32_t cap = seg_.agg_layout().ipset_rows;
    Request r;
    for (std::uint32_t i = 0; i < cap + 10; ++i) {
        r.ip[2] = static_cast<std::uint8_t>(i >> 8);
        r.ip[3] = static_cast<std::uint8_t>(i);
        add(r);  // still aggregated: true
    }
    EXPECT_EQ(seg_.slot(0).agg_ipset_overflow.load(), 10u);
    EXPECT_EQ(collect().size(), cap);
}

TEST_F(UsageIpSetTest, AHostileUsedCountIsClamped) {
    Request r;
    add(r);
    const std::uint64_t e = seg_.agg_close(0);
    unsigned char* buffer = reinterpret_cast<unsigned char*>(&seg_.header()) +
                            seg_.header().agg_area_offset +
                            (e & 1) * seg_.agg_layout().buffer_size;
    auto* h = reinterpret_cast<AggIpSetHeader*>(
        buffer + seg_.agg_layout().ipset_offset);
    h->used.store(0xffffffffu);
    std::vector<IpSetEntry> out;
    EXPECT_EQ(seg_.agg_read_ips(0, e, &out), seg_.agg_layout().ipset_rows);
    seg_.agg_clear(0, e);
    EXPECT_EQ(h->used.load(), 0u);
    // Not a closed buffer: nothing.
    EXPECT_EQ(seg_.agg_read_ips(0, e, &out), 0u);
}

}  // namespace
}  // namespace apikey
