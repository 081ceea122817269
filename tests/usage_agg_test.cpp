// shared/usage_agg: the aggregation areas of the usage segment. The
// worker's update (exact sums, overflows), the epoch protocol against a
// concurrent collector, apikeyd's reads of hostile buffers, the layout.
#include "usage_agg.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "scratch_dir.h"
#include "usage_ring.h"

namespace apikey {
namespace {

constexpr std::int64_t kJan2Us = 1704153600LL * 1000000;  // 2024-01-02Z

// The smallest tables: 1024 entries, 64 labels, 4096 cells per buffer.
constexpr std::uint32_t kEntries = kAggMinEntries;

std::array<std::uint8_t, 16> key_of(unsigned n) {
    std::array<std::uint8_t, 16> k{};
    for (std::size_t i = 0; i < k.size(); ++i) {
        k[i] = static_cast<std::uint8_t>(n * 31 + i * 7 + 1);
    }
    k[0] = static_cast<std::uint8_t>(n);
    k[1] = static_cast<std::uint8_t>(n >> 8);
    return k;
}

// One request's input, with storage for what it points to.
struct Request {
    std::array<std::uint8_t, 16> key{};
    std::string method = "GET";
    std::string endpoint = "/items";
    std::int64_t time_us = kJan2Us;
    std::uint64_t response_time_us = 1000;
    std::uint64_t bytes_sent = 100;
    std::uint16_t status = 200;
    IpFamily family = IpFamily::kV4;
    std::array<std::uint8_t, 16> ip{{10, 0, 0, 1}};
    char method_field[kUsageMethodLen] = {};  // as the worker gets it

    AggregateInput input() {
        std::memset(method_field, 0, sizeof method_field);
        std::memcpy(method_field, method.data(),
                    std::min(method.size(), sizeof method_field));
        AggregateInput in;
        in.key_id = key.data();
        in.time_us = time_us;
        in.response_time_us = response_time_us;
        in.bytes_sent = bytes_sent;
        in.status = status;
        in.ip_family = family;
        in.ip = ip.data();
        in.method = method_field;
        in.method_len = static_cast<std::uint8_t>(method.size());
        in.endpoint = endpoint;
        return in;
    }
};

// What the collector must find: the sums per (key, method, endpoint, hour).
using Key = std::tuple<std::array<std::uint8_t, 16>, std::string, std::string,
                       std::int64_t>;

struct Sums {
    std::uint64_t requests = 0;
    std::uint64_t status[kStatusClassCount] = {};
    std::uint64_t response_time_us_sum = 0;
    std::uint64_t bytes_sent = 0;
    std::int64_t last_used_us = 0;
    std::array<std::uint8_t, 16> ip{};
    std::map<std::uint16_t, std::uint64_t> latency;

    void add(const Request& r) {
        ++requests;
        ++status[static_cast<int>(status_class(r.status))];
        response_time_us_sum += r.response_time_us;
        bytes_sent += r.bytes_sent;
        if (requests == 1 || r.time_us >= last_used_us) {
            last_used_us = r.time_us;
            ip = r.ip;
        }
        const auto b = latency_bucket(r.response_time_us);
        ++latency[static_cast<std::uint16_t>(b)];
    }
    void add(const AggregateEntry& e) {
        requests += e.requests;
        status[0] += e.status_2xx;
        status[1] += e.status_3xx;
        status[2] += e.status_4xx;
        status[3] += e.status_5xx;
        status[4] += e.status_other;
        response_time_us_sum += e.response_time_us_sum;
        bytes_sent += e.bytes_sent;
        if (e.last_used_us >= last_used_us) {
            last_used_us = e.last_used_us;
            ip = e.ip;
        }
        for (const auto& [b, c] : e.latency) latency[b] += c;
    }
    bool operator==(const Sums& o) const {
        return requests == o.requests &&
               std::equal(std::begin(status), std::end(status),
                          std::begin(o.status)) &&
               response_time_us_sum == o.response_time_us_sum &&
               bytes_sent == o.bytes_sent && last_used_us == o.last_used_us &&
               ip == o.ip && latency == o.latency;
    }
};

Key key_for(const Request& r) {
    return {r.key, r.method, r.endpoint, hour_of(r.time_us) * kUsPerHour};
}

Key key_for(const AggregateEntry& e) {
    return {e.key_id, e.method, e.endpoint, e.hour_us};
}

class UsageAggTest : public ::testing::Test {
protected:
    // A fresh segment of `slots` slots, every slot
    // claimed unless told otherwise.
    void create(std::uint32_t slots = 1, std::uint32_t entries = kEntries,
                bool claim = true) {
        bool created = false;
        std::string error;
        // A stream of a few chunks (sparse): these tests are about the
        // aggregation areas after it.
        const std::size_t stream = std::size_t{1} << 20;
        ASSERT_EQ(seg_.open_or_create(path_.c_str(),
                                      usage_layout_for(stream, slots, entries),
                                      0600, &created, &error),
                  SegmentStatus::kOk)
            << error;
        for (std::uint32_t i = 0; claim && i < slots; ++i) {
            ASSERT_EQ(seg_.claim_slot(100 + static_cast<int>(i), 1),
                      static_cast<int>(i));
        }
    }

    // Closes the slot's active buffer and returns its entries.
    std::vector<AggregateEntry> collect(std::uint32_t slot = 0) {
        const std::uint64_t e = seg_.agg_close(slot);
        EXPECT_NE(e, 0u);
        EXPECT_TRUE(seg_.agg_settled(slot, e));
        std::vector<AggregateEntry> out;
        seg_.agg_read(slot, e, &out);
        seg_.agg_clear(slot, e);
        return out;
    }

    unsigned char* buffer_bytes(std::uint32_t slot, std::uint64_t epoch) {
        return reinterpret_cast<unsigned char*>(&seg_.header()) +
               seg_.header().agg_area_offset +
               slot * seg_.agg_layout().area_size +
               (epoch & 1) * seg_.agg_layout().buffer_size;
    }
    AggBufferHeader& buffer_header(std::uint32_t slot, std::uint64_t epoch) {
        return *reinterpret_cast<AggBufferHeader*>(buffer_bytes(slot, epoch));
    }

    testing::ScratchDir dir_;
    std::string path_ = dir_.file("usage");
    UsageSegment seg_;
};

std::map<Key, Sums> sums_of(const std::vector<AggregateEntry>& entries) {
    std::map<Key, Sums> m;
    for (const auto& e : entries) m[key_for(e)].add(e);
    return m;
}

// --- layout ------------------------------------------------------------------

TEST(AggLayoutTest, DefaultHoldsFiftyThousandEntriesAndSaysItsSize) {
    const AggLayout l = agg_layout_for(kAggDefaultEntries);
    EXPECT_EQ(l.entries, 65536u);
    EXPECT_EQ(l.labels, 4096u);
    EXPECT_EQ(l.cells, 4u * 65536);
    EXPECT_EQ(l.entry_index, 131072u);
    EXPECT_EQ(l.label_index, 8192u);
    EXPECT_EQ(l.buffer_size % 4096, 0u);
    EXPECT_EQ(l.area_size, 2 * l.buffer_size);
    // docs/capture.md: 13.66 MiB a buffer, 27.32 MiB a slot.
    EXPECT_EQ(l.buffer_size, 14323712u);
    EXPECT_LT(l.cells_offset + l.cells * sizeof(AggCell), l.buffer_size + 1);
}

TEST(AggLayoutTest, TablesDoNotOverlapAndIndexesAreRoomy) {
    for (std::uint32_t n : {kAggMinEntries, 1500u, 65536u, 100000u,
                            kAggMaxEntries}) {
        const AggLayout l = agg_layout_for(n);
        ASSERT_EQ(l.entries, n);
        EXPECT_EQ(l.entry_index & (l.entry_index - 1), 0u) << n;
        EXPECT_GE(l.entry_index, 2 * n);
        EXPECT_GE(l.label_index, 2 * l.labels);
        EXPECT_GE(l.entry_index_offset, sizeof(AggBufferHeader));
        EXPECT_LE(l.entry_index_offset + 4 * l.entry_index,
                  l.label_index_offset);
        EXPECT_LE(l.label_index_offset + 4 * l.label_index, l.entries_offset);
        EXPECT_EQ(l.labels_offset, l.entries_offset + 128 * std::size_t{n});
        EXPECT_EQ(l.cells_offset,
                  l.labels_offset + 128 * std::size_t{l.labels});
        EXPECT_EQ(l.entries_offset % 64, 0u);
    }
}

TEST(AggLayoutTest, OutOfRangeIsInvalid) {
    EXPECT_EQ(agg_layout_for(0).entries, 0u);
    EXPECT_EQ(agg_layout_for(kAggMinEntries - 1).entries, 0u);
    EXPECT_EQ(agg_layout_for(kAggMaxEntries + 1).entries, 0u);
    EXPECT_EQ(usage_layout_for(64u << 20, 8, 10).file_size, 0u);
}

TEST_F(UsageAggTest, HeaderRecordsTheAreasAndEpochsStartAtOne) {
    create(2);
    const UsageHeader& h = seg_.header();
    EXPECT_EQ(h.layout_version, 4u);
    // Right after the stream area: the header page, the slots' page, the
    // stream.
    EXPECT_EQ(h.agg_area_offset,
              2 * 4096 + stream_layout(2, static_cast<std::uint32_t>(
                                                h.chunk_count))
                             .size);
    EXPECT_EQ(h.agg_entries, kEntries);
    EXPECT_EQ(h.agg_labels, kEntries / 16);
    EXPECT_EQ(h.agg_cells, kEntries * 4);
    EXPECT_EQ(h.agg_area_offset % 4096, 0u);
    EXPECT_EQ(h.file_size, h.agg_area_offset + 2 * h.agg_area_size);
    for (std::uint32_t s = 0; s < 2; ++s) {
        EXPECT_EQ(seg_.slot(s).agg_epoch.load(), 1u);
        EXPECT_EQ(buffer_header(s, 1).state.load(),
                  static_cast<std::uint32_t>(AggBufferState::kActive));
        EXPECT_EQ(buffer_header(s, 1).epoch.load(), 1u);
        EXPECT_EQ(buffer_header(s, 0).state.load(),
                  static_cast<std::uint32_t>(AggBufferState::kClean));
        EXPECT_TRUE(seg_.agg_empty(s));
    }
}

TEST_F(UsageAggTest, AttachRefusesAreaSizesThatDisagree) {
    create(1);
    seg_.reset();
    auto patch32 = [&](std::size_t off, std::uint32_t v) {
        const int fd = open(path_.c_str(), O_RDWR);
        ASSERT_GE(fd, 0);
        std::uint32_t old = 0;
        ASSERT_EQ(pread(fd, &old, 4, static_cast<off_t>(off)), 4);
        ASSERT_EQ(pwrite(fd, &v, 4, static_cast<off_t>(off)), 4);
        close(fd);
        UsageSegment s;
        std::string error;
        EXPECT_EQ(s.attach(path_.c_str(), &error), SegmentStatus::kBadSize)
            << off;
        const int fd2 = open(path_.c_str(), O_RDWR);
        ASSERT_EQ(pwrite(fd2, &old, 4, static_cast<off_t>(off)), 4);
        close(fd2);
    };
    patch32(offsetof(UsageHeader, agg_entries), kEntries * 2);
    patch32(offsetof(UsageHeader, agg_entries), 5);
    patch32(offsetof(UsageHeader, agg_labels), 65);
    patch32(offsetof(UsageHeader, agg_cells), 1);
    patch32(offsetof(UsageHeader, agg_area_offset), 3 * 4096);
    UsageSegment s;
    std::string error;
    EXPECT_EQ(s.attach(path_.c_str(), &error), SegmentStatus::kOk) << error;
}

// A segment rewritten as an older layout: its version and chunk size in
// the header; attach()'s error.
std::string attach_as_layout(const std::string& path, std::uint32_t version,
                             std::uint32_t chunk_size) {
    const int fd = open(path.c_str(), O_RDWR);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(pwrite(fd, &version, 4, offsetof(UsageHeader, layout_version)),
              4);
    EXPECT_EQ(pwrite(fd, &chunk_size, 4, offsetof(UsageHeader, chunk_size)),
              4);
    close(fd);
    UsageSegment s;
    std::string error;
    EXPECT_EQ(s.attach(path.c_str(), &error), SegmentStatus::kBadVersion);
    return error;
}

// The layout before the stream (fixed 288-byte records in rings, then
// the aggregation areas) is refused, never read as this one.
TEST_F(UsageAggTest, AVersionTwoFileIsRefusedNamingBothVersions) {
    create(1);
    seg_.reset();
    const std::string error = attach_as_layout(path_, 2, 288);
    EXPECT_NE(error.find(path_), std::string::npos) << error;
    EXPECT_NE(error.find("layout version 2 (chunk size 288), this build "
                         "reads version 4 (chunk size 65536)"),
              std::string::npos)
        << error;
}

// The layout before the client-address sets: same header, smaller
// buffers; refused by its version.
TEST_F(UsageAggTest, AVersionThreeFileIsRefused) {
    create(1);
    seg_.reset();
    const std::string error = attach_as_layout(path_, 3, 65536);
    EXPECT_NE(error.find("layout version 3 (chunk size 65536), this build "
                         "reads version 4 (chunk size 65536)"),
              std::string::npos)
        << error;
}

// --- the worker's update, one thread -----------------------------------------

TEST_F(UsageAggTest, SumsAreExactPerKeyLabelAndHour) {
    create();
    std::mt19937_64 rng(42);
    std::map<Key, Sums> want;
    const char* methods[] = {"GET", "POST", "DELETE"};
    const char* endpoints[] = {"/a", "/items/{id}", "/ü/long-enough-to-hash-"
                                                    "in-more-than-one-word"};
    const std::uint16_t statuses[] = {200, 201, 302, 404, 503, 0, 101, 600};
    for (int i = 0; i < 5000; ++i) {
        Request r;
        r.key = key_of(static_cast<unsigned>(rng() % 7));
        r.method = methods[rng() % 3];
        r.endpoint = endpoints[rng() % 3];
        r.time_us = kJan2Us +
                    static_cast<std::int64_t>(rng() % 3) * kUsPerHour +
                    static_cast<std::int64_t>(rng() % kUsPerHour);
        r.response_time_us = (rng() % 4000) * 1000;
        r.bytes_sent = rng() % 100000;
        r.status = statuses[rng() % 8];
        r.ip[3] = static_cast<std::uint8_t>(rng());
        ASSERT_TRUE(seg_.aggregate(0, r.input()));
        want[key_for(r)].add(r);
    }
    EXPECT_FALSE(seg_.agg_empty(0));
    const auto got = collect();
    EXPECT_EQ(got.size(), want.size());  // one entry per (key, label, hour)
    EXPECT_EQ(sums_of(got), want);
    for (const auto& e : got) {
        EXPECT_EQ(e.ip_family, IpFamily::kV4);
        EXPECT_TRUE(std::is_sorted(e.latency.begin(), e.latency.end()));
    }
    EXPECT_EQ(seg_.slot(0).agg_overflow.load(), 0u);
    EXPECT_EQ(seg_.slot(0).agg_label_overflow.load(), 0u);
    EXPECT_EQ(seg_.slot(0).agg_histogram_overflow.load(), 0u);
    EXPECT_TRUE(seg_.agg_empty(0));
}

TEST_F(UsageAggTest, LastUseIsTheLatestRequestAndItsAddress) {
    create();
    Request late;
    late.time_us = kJan2Us + 5000;
    late.family = IpFamily::kV6;
    late.ip = {{0x20, 0x01, 0x0d, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}};
    Request early;
    early.time_us = kJan2Us + 10;  // finishes later, started earlier
    early.ip = {{192, 0, 2, 7}};
    ASSERT_TRUE(seg_.aggregate(0, late.input()));
    ASSERT_TRUE(seg_.aggregate(0, early.input()));
    const auto got = collect();
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].requests, 2u);
    EXPECT_EQ(got[0].last_used_us, late.time_us);
    EXPECT_EQ(got[0].ip_family, IpFamily::kV6);
    EXPECT_EQ(got[0].ip, late.ip);
    EXPECT_EQ(got[0].hour_us, kJan2Us);
}

TEST_F(UsageAggTest, AnAddressOfNoFamilyIsStoredAsNone) {
    create();
    Request r;
    r.family = IpFamily::kNone;
    r.ip = {};
    ASSERT_TRUE(seg_.aggregate(0, r.input()));
    const auto got = collect();
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].ip_family, IpFamily::kNone);
    EXPECT_EQ(got[0].ip, (std::array<std::uint8_t, 16>{}));
}

// A constant label (hashed at configuration time, remembered by address)
// and the same text given as a variable one find the same label, in every
// buffer; another method at the same address is another label.
TEST_F(UsageAggTest, AConstantEndpointFindsTheSameLabelInEveryBuffer) {
    create();
    static const char kConstant[] = "/constant";
    Request r;
    r.endpoint = kConstant;
    auto constant = [&](Request& q) {
        AggregateInput in = q.input();
        in.endpoint = std::string_view(kConstant);
        in.endpoint_constant = true;
        in.endpoint_hash = agg_text_hash(kConstant);
        return in;
    };
    for (int round = 0; round < 3; ++round) {
        ASSERT_TRUE(seg_.aggregate(0, r.input()));
        ASSERT_TRUE(seg_.aggregate(0, constant(r)));
        ASSERT_TRUE(seg_.aggregate(0, constant(r)));
        Request post = r;
        post.method = "POST";
        ASSERT_TRUE(seg_.aggregate(0, constant(post)));
        const auto got = collect();
        ASSERT_EQ(got.size(), 2u) << round;
        const auto m = sums_of(got);
        EXPECT_EQ(m.at(key_for(r)).requests, 3u) << round;
        EXPECT_EQ(m.at(key_for(post)).requests, 1u) << round;
    }
}

TEST_F(UsageAggTest, LabelsAreStoredAtFullLength) {
    create();
    Request r;
    r.method = std::string(kUsageMethodLen, 'M');
    r.endpoint = std::string(kUsageEndpointLen, 'e');
    ASSERT_TRUE(seg_.aggregate(0, r.input()));
    const auto got = collect();
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].method, r.method);
    EXPECT_EQ(got[0].endpoint, r.endpoint);
}

TEST_F(UsageAggTest, EachBufferHasItsOwnEpochAndOwnEntries) {
    create();
    Request r;
    ASSERT_TRUE(seg_.aggregate(0, r.input()));
    const std::uint64_t first = seg_.agg_close(0);
    EXPECT_EQ(first, 1u);
    ASSERT_TRUE(seg_.aggregate(0, r.input()));
    ASSERT_TRUE(seg_.aggregate(0, r.input()));
    std::uint64_t closed = 0;
    ASSERT_TRUE(seg_.agg_closed_epoch(0, &closed));
    EXPECT_EQ(closed, 1u);
    // One closed buffer at a time.
    EXPECT_EQ(seg_.agg_close(0), 0u);
    std::vector<AggregateEntry> out;
    EXPECT_EQ(seg_.agg_read(0, 2, &out), 0u);  // not closed
    EXPECT_EQ(seg_.agg_read(0, 1, &out), 1u);
    EXPECT_EQ(out[0].requests, 1u);
    seg_.agg_clear(0, 2);  // not closed: ignored
    EXPECT_FALSE(seg_.agg_empty(0));
    seg_.agg_clear(0, 1);
    EXPECT_FALSE(seg_.agg_closed_epoch(0, &closed));
    EXPECT_EQ(seg_.agg_close(0), 2u);
    out.clear();
    EXPECT_EQ(seg_.agg_read(0, 2, &out), 1u);
    EXPECT_EQ(out[0].requests, 2u);
    seg_.agg_clear(0, 2);
    // Epoch 3 is in the buffer epoch 1 had: cleared, so it starts empty.
    ASSERT_TRUE(seg_.aggregate(0, r.input()));
    EXPECT_EQ(seg_.agg_close(0), 3u);
    out.clear();
    EXPECT_EQ(seg_.agg_read(0, 3, &out), 1u);
    EXPECT_EQ(out[0].requests, 1u);
}

TEST_F(UsageAggTest, AnEmptyBufferReadsAsNothing) {
    create();
    EXPECT_TRUE(collect().empty());
}

TEST_F(UsageAggTest, OutOfRangeSlotsAreRefusedQuietly) {
    create(1);
    Request r;
    EXPECT_FALSE(seg_.aggregate(1, r.input()));
    EXPECT_EQ(seg_.agg_close(1), 0u);
    std::uint64_t e = 0;
    EXPECT_FALSE(seg_.agg_closed_epoch(1, &e));
    EXPECT_TRUE(seg_.agg_settled(1, 1));
    std::vector<AggregateEntry> out;
    EXPECT_EQ(seg_.agg_read(1, 1, &out), 0u);
    seg_.agg_clear(1, 1);
    EXPECT_TRUE(seg_.agg_empty(1));
    UsageSegment none;
    EXPECT_FALSE(none.aggregate(0, r.input()));
}

// --- the epoch protocol ------------------------------------------------------

TEST_F(UsageAggTest, NotSettledWhileTheWorkerIsInTheBuffer) {
    create();
    UsageSlot& s = seg_.slot(0);
    // The worker has announced epoch 1 and is writing in it.
    s.agg_active.store(1);
    const std::uint64_t e = seg_.agg_close(0);
    ASSERT_EQ(e, 1u);
    EXPECT_FALSE(seg_.agg_settled(0, e));
    // It moves on to epoch 2 (its next request), or leaves.
    s.agg_active.store(2);
    EXPECT_TRUE(seg_.agg_settled(0, e));
    s.agg_active.store(0);
    EXPECT_TRUE(seg_.agg_settled(0, e));
    // A dead worker's epoch stays: once retired, nobody waits for it.
    s.agg_active.store(1);
    EXPECT_FALSE(seg_.agg_settled(0, e));
    seg_.retire_slot(0);
    EXPECT_TRUE(seg_.agg_settled(0, e));
}

TEST_F(UsageAggTest, NotSettledBeforeTheEpochMoves) {
    create();
    // apikeyd died between closing and moving on: the buffer is active.
    EXPECT_FALSE(seg_.agg_settled(0, 1));
}

TEST_F(UsageAggTest, ASlotIsFreedOnlyWithCleanBuffers) {
    create();
    Request r;
    ASSERT_TRUE(seg_.aggregate(0, r.input()));
    seg_.retire_slot(0);
    EXPECT_FALSE(seg_.free_if_drained(0));  // the active buffer has an entry
    const std::uint64_t e = seg_.agg_close(0);
    EXPECT_FALSE(seg_.free_if_drained(0));  // a closed buffer
    std::vector<AggregateEntry> out;
    ASSERT_EQ(seg_.agg_read(0, e, &out), 1u);
    seg_.agg_clear(0, e);
    EXPECT_TRUE(seg_.free_if_drained(0));
    // The next owner starts from agg_active 0 whatever the last one left.
    seg_.slot(0).agg_active.store(7);
    ASSERT_EQ(seg_.claim_slot(200, 2), 0);
    EXPECT_EQ(seg_.slot(0).agg_active.load(), 0u);
}

// The worker aggregates on one thread while a collector closes, waits,
// reads and clears on another, as fast as both can: every request is
// collected exactly once.
TEST_F(UsageAggTest, ConcurrentCollectionLosesAndDoublesNothing) {
    create();
    constexpr int kRequests = 300000;
    std::atomic<bool> done{false};
    std::map<Key, Sums> want;
    std::map<Key, Sums> got;
    std::uint64_t collections = 0;
    std::thread collector([&] {
        std::vector<AggregateEntry> out;
        for (;;) {
            const bool last = done.load(std::memory_order_acquire);
            const std::uint64_t e = seg_.agg_close(0);
            ASSERT_NE(e, 0u);
            while (!seg_.agg_settled(0, e)) {
                std::this_thread::yield();
            }
            out.clear();
            seg_.agg_read(0, e, &out);
            for (const auto& a : out) got[key_for(a)].add(a);
            seg_.agg_clear(0, e);
            ++collections;
            if (last) {
                break;
            }
        }
    });
    std::mt19937_64 rng(7);
    for (int i = 0; i < kRequests; ++i) {
        Request r;
        r.key = key_of(static_cast<unsigned>(rng() % 50));
        r.endpoint = (rng() % 2) ? "/a" : "/b";
        r.time_us = kJan2Us + i;  // ever later: last use is well defined
        r.response_time_us = (rng() % 50) * 1000;
        r.status = static_cast<std::uint16_t>(200 + (rng() % 4) * 100);
        r.bytes_sent = rng() % 5000;
        ASSERT_TRUE(seg_.aggregate(0, r.input()));
        want[key_for(r)].add(r);
    }
    done.store(true, std::memory_order_release);
    collector.join();
    EXPECT_GT(collections, 2u);
    std::uint64_t total = 0;
    for (const auto& [k, s] : got) total += s.requests;
    EXPECT_EQ(total, static_cast<std::uint64_t>(kRequests));
    EXPECT_EQ(got, want);
    EXPECT_EQ(seg_.slot(0).agg_overflow.load(), 0u);
}

// --- overflows ---------------------------------------------------------------

TEST_F(UsageAggTest, AFullEntryTableCountsTheRequestsItCannotHold) {
    create();
    Request r;
    for (unsigned k = 0; k < kEntries; ++k) {
        r.key = key_of(k);
        ASSERT_TRUE(seg_.aggregate(0, r.input())) << k;
    }
    r.key = key_of(kEntries);
    EXPECT_FALSE(seg_.aggregate(0, r.input()));
    EXPECT_FALSE(seg_.aggregate(0, r.input()));
    r.key = key_of(0);  // a known entry still counts
    EXPECT_TRUE(seg_.aggregate(0, r.input()));
    EXPECT_EQ(seg_.slot(0).agg_overflow.load(), 2u);
    const auto got = collect();
    EXPECT_EQ(got.size(), kEntries);
    std::uint64_t total = 0;
    for (const auto& e : got) total += e.requests;
    EXPECT_EQ(total, kEntries + 1u);
    // The next buffer has room again.
    r.key = key_of(kEntries);
    EXPECT_TRUE(seg_.aggregate(0, r.input()));
}

TEST_F(UsageAggTest, AFullLabelTableAggregatesUnderOther) {
    create();
    const std::uint32_t labels = kEntries / kAggEntriesPerLabel;
    Request r;
    for (std::uint32_t i = 0; i < labels + 10; ++i) {
        r.endpoint = "/e" + std::to_string(i);
        ASSERT_TRUE(seg_.aggregate(0, r.input()));
    }
    EXPECT_EQ(seg_.slot(0).agg_label_overflow.load(), 10u);
    const auto got = collect();
    ASSERT_EQ(got.size(), labels + 1u);
    const auto other = std::find_if(got.begin(), got.end(), [](const auto& e) {
        return e.endpoint == kAggOtherText;
    });
    ASSERT_NE(other, got.end());
    EXPECT_EQ(other->method, kAggOtherText);
    EXPECT_EQ(other->requests, 10u);
    // Labels are per buffer: a churning label recovers at the next one.
    r.endpoint = "/e" + std::to_string(labels + 5);
    ASSERT_TRUE(seg_.aggregate(0, r.input()));
    const auto next = collect();
    ASSERT_EQ(next.size(), 1u);
    EXPECT_EQ(next[0].endpoint, r.endpoint);
}

TEST_F(UsageAggTest, AFullCellTableLeavesOutTheLatencyNotTheRequest) {
    create();
    // 1024 entries x 4 cells: entries with 5 distinct buckets each.
    Request r;
    const std::uint64_t ms[] = {1, 2, 3, 5, 8};
    std::uint64_t requests = 0;
    for (unsigned k = 0; k < kEntries; ++k) {
        r.key = key_of(k);
        for (std::uint64_t m : ms) {
            r.response_time_us = m * 1000;
            ASSERT_TRUE(seg_.aggregate(0, r.input()));
            ++requests;
        }
    }
    const std::uint64_t cells = std::uint64_t{kEntries} * kAggCellsPerEntry;
    EXPECT_EQ(seg_.slot(0).agg_histogram_overflow.load(), requests - cells);
    EXPECT_EQ(seg_.slot(0).agg_overflow.load(), 0u);
    std::uint64_t total = 0;
    std::uint64_t in_histograms = 0;
    for (const auto& e : collect()) {
        total += e.requests;
        for (const auto& [b, c] : e.latency) in_histograms += c;
    }
    EXPECT_EQ(total, requests);
    EXPECT_EQ(in_histograms, cells);
}

// --- hostile buffers ---------------------------------------------------------

// Random bytes in every table and count of a closed buffer: apikeyd reads
// only inside the buffer, returns labels no longer than their fields and
// buckets that exist, and clears it to a buffer the worker can use. The
// buffer is the file's last one, so a read past it leaves the mapping.
TEST_F(UsageAggTest, RandomBytesInABufferAreReadWithinBounds) {
    create(2);
    std::mt19937_64 rng(99);
    const AggLayout& l = seg_.agg_layout();
    for (int round = 0; round < 40; ++round) {
        const std::uint64_t e = seg_.agg_close(1);
        ASSERT_NE(e, 0u);
        unsigned char* b = buffer_bytes(1, e);
        // Everything after the state and epoch; counts from tiny to huge.
        for (std::size_t i = 16; i < l.buffer_size; i += 8) {
            const std::uint64_t v = rng();
            std::memcpy(b + i, &v, std::min<std::size_t>(8, l.buffer_size - i));
        }
        AggBufferHeader& h = buffer_header(1, e);
        const std::uint32_t counts[] = {0, 1, 5, l.entries, UINT32_MAX};
        h.entries_used.store(counts[round % 5]);
        h.labels_used.store(counts[(round / 5) % 5]);
        h.cells_used.store(round % 2 ? UINT32_MAX
                                     : static_cast<std::uint32_t>(rng()));
        std::vector<AggregateEntry> out;
        const std::size_t n = seg_.agg_read(1, e, &out);
        EXPECT_LE(n, l.entries);
        for (const auto& a : out) {
            EXPECT_LE(a.method.size(), kUsageMethodLen);
            EXPECT_LE(a.endpoint.size(), kUsageEndpointLen);
            EXPECT_GT(a.requests, 0u);
            for (const auto& [bucket, c] : a.latency) {
                EXPECT_LT(bucket, kLatencyBucketCount);
            }
        }
        seg_.agg_clear(1, e);
        EXPECT_EQ(h.state.load(),
                  static_cast<std::uint32_t>(AggBufferState::kClean));
        EXPECT_EQ(h.entries_used.load(), 0u);
        // The worker, given the cleared buffer with garbage left in its
        // indexes and unused rows, still counts exactly.
        ASSERT_EQ(seg_.agg_close(1), e + 1);
        std::vector<AggregateEntry> drop;
        seg_.agg_read(1, e + 1, &drop);
        seg_.agg_clear(1, e + 1);
        Request r;
        r.key = key_of(static_cast<unsigned>(round));
        ASSERT_TRUE(seg_.aggregate(1, r.input()));
        ASSERT_TRUE(seg_.aggregate(1, r.input()));
        const auto got = collect(1);
        ASSERT_EQ(got.size(), 1u) << round;
        EXPECT_EQ(got[0].requests, 2u);
        EXPECT_EQ(got[0].endpoint, "/items");
    }
}

// A worker killed between writing an index slot and counting the entry
// leaves an index value past the used count: that slot is free again.
TEST_F(UsageAggTest, AnIndexValuePastTheUsedCountIsAFreeSlot) {
    create();
    const AggLayout& l = seg_.agg_layout();
    auto* index = reinterpret_cast<std::uint32_t*>(buffer_bytes(0, 1) +
                                                   l.entry_index_offset);
    for (std::uint32_t i = 0; i < l.entry_index; ++i) index[i] = 5;
    Request r;
    ASSERT_TRUE(seg_.aggregate(0, r.input()));
    ASSERT_TRUE(seg_.aggregate(0, r.input()));
    const auto got = collect();
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].requests, 2u);
}

// --- the worker's entry memo (constant method and endpoint texts) ------------

const char kGetField[kUsageMethodLen] = "GET";
const char kPostField[kUsageMethodLen] = "POST";
const char kItems[] = "/items";
const char kOrders[] = "/orders";

// The worker's input: texts at fixed addresses, promised constant.
UsageFields worker_fields(const Request& r, const char* method,
                          const char* endpoint) {
    UsageFields f{};
    f.key_id = r.key.data();
    f.org_id = r.key.data();
    f.time_us = r.time_us;
    f.response_time_us = r.response_time_us;
    f.bytes_sent = r.bytes_sent;
    f.status = r.status;
    f.ip_family = r.family;
    f.ip = r.ip.data();
    f.method = std::string_view(method, std::strlen(method));
    f.endpoint = std::string_view(endpoint, std::strlen(endpoint));
    f.method_constant = true;
    f.endpoint_constant = true;
    f.endpoint_hash = agg_text_hash(f.endpoint);
    return f;
}

TEST_F(UsageAggTest, RepeatsThroughTheMemoSumExactly) {
    // Runs of one (key, label, hour) with changes of label, method, key,
    // hour, client address and latency between them, and requests that
    // start before the one before: the memo must follow every change
    // (the last-used address too).
    create();
    std::mt19937_64 rng(11);
    std::map<Key, Sums> want;
    const char* methods[] = {kGetField, kPostField};
    const char* endpoints[] = {kItems, kOrders};
    Request r;
    const char* method = kGetField;
    const char* endpoint = kItems;
    for (int i = 0; i < 5000; ++i) {
        switch (rng() % 12) {
        case 0: endpoint = endpoints[rng() % 2]; break;
        case 1: method = methods[rng() % 2]; break;
        case 2: r.key = key_of(static_cast<unsigned>(rng() % 3)); break;
        case 3: r.time_us += kUsPerHour; break;
        case 4: r.time_us -= kUsPerHour; break;  // a late request
        case 5: r.ip[3] = static_cast<std::uint8_t>(rng() % 3); break;
        case 6: r.time_us -= 2000; break;  // started before the last one
        default: break;
        }
        r.time_us += static_cast<std::int64_t>(rng() % 1000);
        r.response_time_us = (rng() % 3) * 1000;
        r.status = (rng() % 4 == 0) ? 404 : 200;
        r.method = method;
        r.endpoint = endpoint;
        ASSERT_TRUE(seg_.aggregate(0, worker_fields(r, method, endpoint)));
        want[key_for(r)].add(r);
    }
    const auto got = collect();
    EXPECT_EQ(got.size(), want.size());
    EXPECT_EQ(sums_of(got), want);
}

TEST_F(UsageAggTest, AnHourBoundaryStartsANewEntry) {
    create();
    Request r;
    r.time_us = kJan2Us + kUsPerHour - 1;
    ASSERT_TRUE(seg_.aggregate(0, worker_fields(r, kGetField, kItems)));
    r.time_us = kJan2Us + kUsPerHour;  // the next hour's first µs
    ASSERT_TRUE(seg_.aggregate(0, worker_fields(r, kGetField, kItems)));
    ASSERT_TRUE(seg_.aggregate(0, worker_fields(r, kGetField, kItems)));
    r.time_us = kJan2Us;  // back in the first hour
    ASSERT_TRUE(seg_.aggregate(0, worker_fields(r, kGetField, kItems)));
    std::map<std::int64_t, std::uint64_t> per_hour;
    for (const auto& e : collect()) per_hour[e.hour_us] += e.requests;
    EXPECT_EQ(per_hour, (std::map<std::int64_t, std::uint64_t>{
                            {kJan2Us, 2}, {kJan2Us + kUsPerHour, 2}}));
}

TEST_F(UsageAggTest, AnEpochFlipBetweenTwoRequestsForgetsTheEntry) {
    // The same request before and after each collection: every buffer
    // holds its own, with its latency, also once a cleared buffer is
    // written again (a stale entry or cell would lose or misplace it).
    create();
    Request r;
    r.response_time_us = 5000;
    for (std::uint64_t epoch = 1; epoch <= 4; ++epoch) {
        ASSERT_TRUE(seg_.aggregate(0, worker_fields(r, kGetField, kItems)));
        ASSERT_TRUE(seg_.aggregate(0, worker_fields(r, kGetField, kItems)));
        const auto got = collect();
        ASSERT_EQ(got.size(), 1u) << "epoch " << epoch;
        EXPECT_EQ(got[0].requests, 2u);
        ASSERT_EQ(got[0].latency.size(), 1u);
        EXPECT_EQ(got[0].latency[0].second, 2u);
        EXPECT_EQ(got[0].latency[0].first, latency_bucket(5000));
    }
    // Closed between two requests while the other buffer is still clean
    // (no collection): the second lands in the new epoch.
    ASSERT_TRUE(seg_.aggregate(0, worker_fields(r, kGetField, kItems)));
    const std::uint64_t closed = seg_.agg_close(0);
    ASSERT_TRUE(seg_.aggregate(0, worker_fields(r, kGetField, kItems)));
    std::vector<AggregateEntry> out;
    ASSERT_EQ(seg_.agg_read(0, closed, &out), 1u);
    EXPECT_EQ(out[0].requests, 1u);
    seg_.agg_clear(0, closed);
    const auto rest = collect();
    ASSERT_EQ(rest.size(), 1u);
    EXPECT_EQ(rest[0].requests, 1u);
}

TEST_F(UsageAggTest, ALabelTableFullOfOtherCountsEveryOverflowThroughTheMemo) {
    // Requests under "(other)" are never remembered: each one counts.
    create();
    Request r;
    std::vector<std::string> names;
    for (std::uint32_t i = 0; i < seg_.agg_layout().labels; ++i) {
        names.push_back("/fill/" + std::to_string(i));
    }
    for (const auto& n : names) {
        r.endpoint = n;
        ASSERT_TRUE(seg_.aggregate(0, r.input()));
    }
    for (int i = 0; i < 3; ++i) {
        ASSERT_TRUE(seg_.aggregate(0, worker_fields(r, kGetField, kItems)));
    }
    EXPECT_EQ(seg_.slot(0).agg_label_overflow.load(), 3u);
}

}  // namespace
}  // namespace apikey
