// One suite for shared/usage_ring and the stream it holds
// (shared/usage_stream): layout, claims, the producer and the consumer, the
// chunk pool, replacement of a segment. Long because the unit is.
#include "usage_ring.h"

#include <atomic>
#include <climits>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "usage_fields_equal.h"

namespace apikey {
namespace {

constexpr std::size_t kPage = 4096;

// The smallest aggregation areas: these tests are about the streams.
constexpr std::uint32_t kAgg = kAggMinEntries;

// Where the stream area of `chunks` chunks ends: header and slots up to a
// page, then the stream area.
std::size_t size_for(std::uint32_t slots, std::uint32_t chunks) {
    const std::size_t fixed =
        (kUsageHeaderSize + slots * sizeof(UsageSlot) + kPage - 1) &
        ~(kPage - 1);
    return fixed + stream_layout(slots, chunks).size;
}

// The whole file: the stream area, then (it ends on a page) an aggregation
// area per slot.
std::size_t file_for(std::uint32_t slots, std::uint32_t chunks) {
    return size_for(slots, chunks) + slots * agg_layout_for(kAgg).area_size;
}

UsageLayout layout_of(std::uint32_t slots, std::uint32_t chunks) {
    return usage_layout_for(size_for(slots, chunks), slots, kAgg);
}

std::int64_t now_us() {
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

// A record derived from `n`: every field varies with it, keys and texts in
// runs (so records refer to the one before them) and of every length up to
// the fields' maxima, so a misplaced, torn or misdecoded record shows.
UsageRecord pattern_record(std::uint64_t n) {
    UsageRecord r{};
    r.result = n % 11 == 5 ? AuthResult::kRevoked : AuthResult::kOk;
    r.status = static_cast<std::uint16_t>(100 + n % 500);
    r.time_us = 1700000000000000 + static_cast<std::int64_t>(n * 997 % 100000);
    r.response_time_us = n * 7 % 100000;
    r.bytes_sent = n * 131;
    for (int i = 0; i < 16; ++i) {
        r.key_id[i] = static_cast<std::uint8_t>(n / 4 + i);
        r.org_id[i] = static_cast<std::uint8_t>(n / 4 * 3 + i);
    }
    const std::uint64_t family = n / 3 % 3;
    r.ip_family = family == 0   ? IpFamily::kV4
                  : family == 1 ? IpFamily::kV6
                                : IpFamily::kNone;
    if (r.ip_family != IpFamily::kNone) {
        r.ip[0] = static_cast<std::uint8_t>(n / 3);
        r.ip[3] = 7;
    }
    if (r.ip_family == IpFamily::kV6) r.ip[15] = 9;
    r.method_len = static_cast<std::uint8_t>(n / 5 % 17);
    std::memset(r.method, 'A' + static_cast<int>(n / 5 % 26), r.method_len);
    r.endpoint_len = static_cast<std::uint8_t>(n / 2 % 97);
    std::memset(r.endpoint, 'a' + static_cast<int>(n / 2 % 26), r.endpoint_len);
    r.user_agent_len = static_cast<std::uint16_t>(n / 7 % 257);
    std::memset(r.user_agent, '0' + static_cast<int>(n / 7 % 10),
                r.user_agent_len);
    return r;
}

// The record as the consumer must see it: fields as written, the slot and
// generation it came from.
bool matches_pattern(const UsageRecord& got, std::uint64_t n,
                     std::uint32_t slot, std::uint64_t generation) {
    return got.slot == slot && got.generation == generation &&
           usage_fields_equal(got, pattern_record(n));
}

UsageRecord sample_record() {
    UsageRecord r{};
    r.result = AuthResult::kOk;
    r.status = 200;
    r.time_us = 1700000000000000;
    r.method_len =
        static_cast<std::uint8_t>(copy_truncated(r.method, kUsageMethodLen, "GET"));
    r.endpoint_len = static_cast<std::uint8_t>(
        copy_truncated(r.endpoint, kUsageEndpointLen, "/v1/things"));
    return r;
}

// The producer side as a worker holds it: the segment's slot and its own
// writer.
struct Producer {
    UsageSegment* seg;
    std::uint32_t slot;
    StreamWriter writer;

    bool push(const UsageRecord& r) {
        return seg->append(slot, &writer, usage_fields_of(r));
    }
};

// Reads records of `slot` from its tail (at most `max`); *end: where the
// next read starts.
std::vector<UsageRecord> peek_all(UsageSegment& seg, std::uint32_t slot,
                                  std::size_t max, std::uint64_t* end) {
    std::vector<UsageRecord> out(max);
    out.resize(seg.peek(slot, 0, out.data(), max, end));
    return out;
}

class UsageRingTest : public ::testing::Test {
protected:
    void SetUp() override {
        char tmpl[] = "/tmp/usage_ring_test.XXXXXX";
        ASSERT_NE(mkdtemp(tmpl), nullptr);
        dir_ = tmpl;
        path_ = dir_ + "/usage";
    }
    void TearDown() override {
        unlink(path_.c_str());
        unlink((path_ + ".tmp").c_str());
        rmdir((path_ + ".d").c_str());
        rmdir(dir_.c_str());
    }

    // A fresh segment at path_ with `slots` streams over `chunks` chunks.
    UsageSegment create(std::uint32_t slots, std::uint32_t chunks) {
        UsageSegment seg;
        bool created = false;
        std::string error;
        EXPECT_EQ(seg.open_or_create(path_.c_str(), layout_of(slots, chunks),
                                     0600, &created, &error),
                  SegmentStatus::kOk)
            << error;
        EXPECT_TRUE(created);
        return seg;
    }

    void write_file(const std::string& bytes) {
        std::ofstream out(path_, std::ios::binary | std::ios::trunc);
        out << bytes;
    }

    // Overwrites `n` bytes at `offset` of the file at path_.
    void patch(off_t offset, const void* data, std::size_t n) {
        const int fd = open(path_.c_str(), O_RDWR);
        ASSERT_GE(fd, 0);
        ASSERT_EQ(pwrite(fd, data, n, offset), static_cast<ssize_t>(n));
        close(fd);
    }

    ino_t inode_of(const std::string& p) {
        struct stat st;
        EXPECT_EQ(stat(p.c_str(), &st), 0);
        return st.st_ino;
    }

    std::string dir_;
    std::string path_;
};

// --- layout -----------------------------------------------------------------

TEST(UsageLayoutTest, ChunkCountIsTheMostThatFits) {
    const std::size_t total = size_for(4, 100) + kStreamChunkSize / 2;
    const UsageLayout l = usage_layout_for(total, 4, kAgg);
    EXPECT_EQ(l.slot_count, 4u);
    EXPECT_EQ(l.chunk_count, 100u);
    EXPECT_EQ(l.file_size, file_for(4, 100));
    EXPECT_EQ(l.agg_entries, kAgg);
}

TEST(UsageLayoutTest, ExactFitUsesTheWholeSize) {
    const UsageLayout l = usage_layout_for(size_for(8, 64), 8, kAgg);
    EXPECT_EQ(l.chunk_count, 64u);
    EXPECT_EQ(l.file_size, file_for(8, 64));
    // One byte short: one chunk less.
    EXPECT_EQ(usage_layout_for(size_for(8, 64) - 1, 8, kAgg).chunk_count, 63u);
}

TEST(UsageLayoutTest, SixtyFourMegabytesIsNearlyAllChunks) {
    const std::size_t total = 64u << 20;
    for (std::uint32_t slots : {1u, 2u, 3u, 8u, 64u, 1000u}) {
        const UsageLayout l = usage_layout_for(total, slots, kAgg);
        ASSERT_GT(l.chunk_count, 0u) << slots;
        EXPECT_GT(size_for(slots, static_cast<std::uint32_t>(l.chunk_count) + 1),
                  total)
            << slots;
        EXPECT_EQ(l.file_size,
                  file_for(slots, static_cast<std::uint32_t>(l.chunk_count)))
            << slots;
    }
    // Eight slots (two workers): the pool is 1018 of the 1024 64 KiB parts.
    EXPECT_GE(usage_layout_for(total, 8, kAgg).chunk_count, 1016u);
}

TEST(UsageLayoutTest, TooSmallGivesNoChunks) {
    EXPECT_EQ(usage_layout_for(size_for(2, 1) - 1, 2, kAgg).chunk_count, 0u);
    EXPECT_EQ(usage_layout_for(size_for(2, 1) - 1, 2, kAgg).file_size, 0u);
    EXPECT_EQ(usage_layout_for(size_for(2, 1), 2, kAgg).chunk_count, 1u);
    EXPECT_EQ(usage_layout_for(100, 1, kAgg).chunk_count, 0u);
    EXPECT_EQ(usage_layout_for(0, 1, kAgg).chunk_count, 0u);
    EXPECT_EQ(usage_layout_for(64u << 20, 0, kAgg).chunk_count, 0u);
    EXPECT_EQ(
        usage_layout_for(SIZE_MAX / 2, kMaxUsageSlots + 1, kAgg).chunk_count,
        0u);
    EXPECT_EQ(stream_layout(1, kMaxStreamChunks + 1).size, 0u);
    EXPECT_EQ(stream_chunks_fitting(SIZE_MAX / 2, 1), kMaxStreamChunks);
}

// --- create, reuse, replace, attach ----------------------------------------

TEST_F(UsageRingTest, CreateWritesHeaderWithExactModeDespiteUmask) {
    const mode_t old_umask = umask(0077);
    UsageSegment seg;
    bool created = false;
    std::string error;
    const UsageLayout layout = layout_of(3, 8);
    ASSERT_EQ(seg.open_or_create(path_.c_str(), layout, 0660, &created, &error),
              SegmentStatus::kOk)
        << error;
    umask(old_umask);
    EXPECT_TRUE(created);
    struct stat st;
    ASSERT_EQ(stat(path_.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0660u);
    EXPECT_EQ(static_cast<std::size_t>(st.st_size), layout.file_size);
    EXPECT_NE(access((path_ + ".tmp").c_str(), F_OK), 0);

    const UsageHeader& h = seg.header();
    EXPECT_EQ(h.magic, kUsageMagic);
    EXPECT_EQ(h.layout_version, kUsageLayoutVersion);
    EXPECT_EQ(h.chunk_size, kStreamChunkSize);
    EXPECT_EQ(h.slot_count, 3u);
    EXPECT_EQ(h.chunk_count, 8u);
    EXPECT_EQ(h.file_size, layout.file_size);
    EXPECT_GT(h.created_at_us, 0);
    EXPECT_FALSE(seg.superseded());
    EXPECT_EQ(seg.slot_count(), 3u);
    EXPECT_EQ(seg.chunk_count(), 8u);
    EXPECT_EQ(seg.stream().free_chunks(), 8u);
    for (std::uint32_t i = 0; i < 3; ++i) {
        EXPECT_EQ(seg.slot(i).state.load(),
                  static_cast<std::uint32_t>(SlotOwnership::kFree));
        EXPECT_EQ(seg.slot(i).head.load(), 0u);
        EXPECT_EQ(seg.slot(i).tail.load(), 0u);
    }
}

TEST_F(UsageRingTest, ReopenWithSameLayoutReusesFileAndKeepsRecords) {
    {
        UsageSegment seg = create(2, 4);
        const int s = seg.claim_slot(1234, 1000);
        ASSERT_EQ(s, 0);
        Producer p{&seg, 0, {}};
        for (std::uint64_t i = 0; i < 3; ++i) {
            ASSERT_TRUE(p.push(pattern_record(i)));
        }
    }
    const ino_t before = inode_of(path_);
    UsageSegment seg;
    bool created = true;
    std::string error;
    ASSERT_EQ(seg.open_or_create(path_.c_str(), layout_of(2, 4), 0600,
                                 &created, &error),
              SegmentStatus::kOk)
        << error;
    EXPECT_FALSE(created);
    EXPECT_EQ(inode_of(path_), before);
    EXPECT_EQ(seg.slot(0).state.load(),
              static_cast<std::uint32_t>(SlotOwnership::kOwned));
    EXPECT_EQ(seg.slot(0).owner_pid.load(), 1234);
    std::uint64_t end = 0;
    const auto out = peek_all(seg, 0, 4, &end);
    ASSERT_EQ(out.size(), 3u);
    for (std::uint64_t i = 0; i < 3; ++i) {
        UsageRecord r = out[i];
        r.generation = 1000;  // the consumer stamps it
        EXPECT_TRUE(matches_pattern(r, i, 0, 1000)) << i;
    }
}

TEST_F(UsageRingTest, DifferentLayoutCreatesFreshFileAndSupersedesOld) {
    UsageSegment old = create(2, 4);
    ASSERT_EQ(old.claim_slot(1, 1000), 0);
    Producer p{&old, 0, {}};
    ASSERT_TRUE(p.push(sample_record()));
    UsageSegment drainer;  // apikeyd's mapping of the old file
    std::string error;
    ASSERT_EQ(drainer.attach(path_.c_str(), &error), SegmentStatus::kOk)
        << error;
    const ino_t old_inode = inode_of(path_);

    UsageSegment fresh;
    bool created = false;
    ASSERT_EQ(fresh.open_or_create(path_.c_str(), layout_of(4, 8), 0600,
                                   &created, &error),
              SegmentStatus::kOk)
        << error;
    EXPECT_TRUE(created);
    EXPECT_NE(inode_of(path_), old_inode);
    EXPECT_EQ(fresh.slot_count(), 4u);
    EXPECT_EQ(fresh.chunk_count(), 8u);
    EXPECT_FALSE(fresh.superseded());
    EXPECT_TRUE(old.superseded());
    EXPECT_TRUE(drainer.superseded());
    // The old mapping still works: its record can be drained.
    std::uint64_t end = 0;
    EXPECT_EQ(peek_all(drainer, 0, 1, &end).size(), 1u);

    UsageSegment reattached;
    ASSERT_EQ(reattached.attach(path_.c_str(), &error), SegmentStatus::kOk)
        << error;
    EXPECT_EQ(reattached.slot_count(), 4u);
    EXPECT_FALSE(reattached.superseded());
}

TEST_F(UsageRingTest, GarbageFileIsReplaced) {
    write_file(std::string(10000, 'x'));
    UsageSegment seg = create(1, 2);
    std::string error;
    UsageSegment check;
    EXPECT_EQ(check.attach(path_.c_str(), &error), SegmentStatus::kOk) << error;
}

TEST_F(UsageRingTest, EmptyFileIsReplaced) {
    write_file("");
    UsageSegment seg = create(1, 2);
    EXPECT_TRUE(seg.mapped());
}

TEST_F(UsageRingTest, PathThatCannotBeOpenedIsErrorNotReplaced) {
    ASSERT_EQ(mkdir((path_ + ".d").c_str(), 0700), 0);
    const std::string dir_path = path_ + ".d";
    UsageSegment seg;
    bool created = true;
    std::string error;
    EXPECT_EQ(seg.open_or_create(dir_path.c_str(), layout_of(1, 2), 0600,
                                 &created, &error),
              SegmentStatus::kIoError);
    EXPECT_FALSE(created);
    EXPECT_FALSE(seg.mapped());
    EXPECT_NE(error.find(dir_path), std::string::npos) << error;
    struct stat st;
    ASSERT_EQ(stat(dir_path.c_str(), &st), 0);
    EXPECT_TRUE(S_ISDIR(st.st_mode));
}

TEST_F(UsageRingTest, InvalidLayoutIsRefused) {
    UsageSegment seg;
    bool created = true;
    std::string error;
    UsageLayout bad = layout_of(2, 4);
    bad.chunk_count = 3;
    EXPECT_EQ(seg.open_or_create(path_.c_str(), bad, 0600, &created, &error),
              SegmentStatus::kBadSize);
    EXPECT_FALSE(created);
    EXPECT_NE(error.find(path_), std::string::npos) << error;
    EXPECT_NE(access(path_.c_str(), F_OK), 0);
    EXPECT_EQ(seg.open_or_create(path_.c_str(),
                                 usage_layout_for(100, 1, kAgg), 0600,
                                 &created, &error),
              SegmentStatus::kBadSize);
}

TEST_F(UsageRingTest, AttachMissingFileSaysMissingWithPath) {
    UsageSegment seg;
    std::string error;
    EXPECT_EQ(seg.attach(path_.c_str(), &error), SegmentStatus::kMissing);
    EXPECT_NE(error.find(path_), std::string::npos) << error;
    EXPECT_FALSE(seg.mapped());
}

TEST_F(UsageRingTest, AttachRefusesBadMagic) {
    { UsageSegment seg = create(1, 2); }
    const std::uint64_t wrong = 0x1122334455667788ULL;
    patch(offsetof(UsageHeader, magic), &wrong, sizeof wrong);
    UsageSegment seg;
    std::string error;
    EXPECT_EQ(seg.attach(path_.c_str(), &error), SegmentStatus::kBadMagic);
    EXPECT_NE(error.find(path_), std::string::npos) << error;
    EXPECT_FALSE(seg.mapped());
}

// A segment of the previous layout (fixed 288-byte records, version 1) is
// refused with both versions named, never read as streams.
TEST_F(UsageRingTest, AttachRefusesTheFixedRecordLayoutByName) {
    { UsageSegment seg = create(1, 2); }
    const std::uint32_t v1 = 1;
    const std::uint32_t record_size = 288;
    patch(offsetof(UsageHeader, layout_version), &v1, sizeof v1);
    patch(offsetof(UsageHeader, chunk_size), &record_size, sizeof record_size);
    UsageSegment seg;
    std::string error;
    EXPECT_EQ(seg.attach(path_.c_str(), &error), SegmentStatus::kBadVersion);
    EXPECT_FALSE(seg.mapped());
    EXPECT_NE(error.find(path_), std::string::npos) << error;
    EXPECT_NE(error.find("layout version 1"), std::string::npos) << error;
    EXPECT_NE(error.find("reads version " + std::to_string(kUsageLayoutVersion)),
              std::string::npos)
        << error;
}

TEST_F(UsageRingTest, AttachRefusesOtherChunkSize) {
    { UsageSegment seg = create(1, 2); }
    const std::uint32_t size = kStreamChunkSize * 2;
    patch(offsetof(UsageHeader, chunk_size), &size, sizeof size);
    UsageSegment seg;
    std::string error;
    EXPECT_EQ(seg.attach(path_.c_str(), &error), SegmentStatus::kBadVersion);
}

TEST_F(UsageRingTest, AttachRefusesTruncatedFile) {
    { UsageSegment seg = create(2, 2); }
    ASSERT_EQ(truncate(path_.c_str(), file_for(2, 2) - 8), 0);
    UsageSegment seg;
    std::string error;
    EXPECT_EQ(seg.attach(path_.c_str(), &error), SegmentStatus::kBadSize);
    EXPECT_NE(error.find(path_), std::string::npos) << error;
    ASSERT_EQ(truncate(path_.c_str(), 4), 0);
    EXPECT_EQ(seg.attach(path_.c_str(), &error), SegmentStatus::kBadSize);
}

TEST_F(UsageRingTest, AttachRefusesAFileCutInsideTheHeader) {
    { UsageSegment seg = create(2, 2); }
    // The magic is there, the rest of the header is not.
    ASSERT_EQ(truncate(path_.c_str(), 16), 0);
    UsageSegment seg;
    std::string error;
    EXPECT_EQ(seg.attach(path_.c_str(), &error), SegmentStatus::kBadSize);
    EXPECT_NE(error.find("file too small for a header"), std::string::npos)
        << error;
}

TEST_F(UsageRingTest, PathWithNoRoomForTheTemporaryNameIsRefused) {
    // A path that opens (shorter than PATH_MAX) but whose ".tmp" sibling
    // would not fit: directories of 200 characters down to it.
    std::string dir = dir_;
    std::vector<std::string> made;
    const std::string name(200, 'd');
    const std::size_t length = PATH_MAX - 2;  // +".tmp": over PATH_MAX
    while (length - (dir.size() + 1) > 255) {
        dir += "/" + name;
        ASSERT_EQ(mkdir(dir.c_str(), 0700), 0) << dir.size();
        made.push_back(dir);
    }
    const std::size_t base = length - (dir.size() + 1);
    ASSERT_LE(base, 255u);
    const std::string path = dir + "/" + std::string(base, 'u');
    ASSERT_LT(path.size(), static_cast<std::size_t>(PATH_MAX));
    UsageSegment seg;
    bool created = true;
    std::string error;
    EXPECT_EQ(seg.open_or_create(path.c_str(), layout_of(1, 2), 0600,
                                 &created, &error),
              SegmentStatus::kIoError);
    EXPECT_NE(error.find("path too long"), std::string::npos) << error;
    for (auto it = made.rbegin(); it != made.rend(); ++it) {
        rmdir(it->c_str());
    }
}

TEST_F(UsageRingTest, AttachRefusesHeaderThatDisagreesWithSize) {
    { UsageSegment seg = create(2, 4); }
    const std::uint64_t chunks = 5;  // the file holds 4
    patch(offsetof(UsageHeader, chunk_count), &chunks, sizeof chunks);
    UsageSegment seg;
    std::string error;
    EXPECT_EQ(seg.attach(path_.c_str(), &error), SegmentStatus::kBadSize);
    const std::uint64_t chunks4 = 4;
    const std::uint32_t slots = 300;  // more slot descriptors than fit
    patch(offsetof(UsageHeader, chunk_count), &chunks4, sizeof chunks4);
    patch(offsetof(UsageHeader, slot_count), &slots, sizeof slots);
    EXPECT_EQ(seg.attach(path_.c_str(), &error), SegmentStatus::kBadSize);
    const std::uint32_t none = 0;
    patch(offsetof(UsageHeader, slot_count), &none, sizeof none);
    EXPECT_EQ(seg.attach(path_.c_str(), &error), SegmentStatus::kBadSize);
}

TEST_F(UsageRingTest, BadHeaderMakesOpenOrCreateReplaceTheFile) {
    { UsageSegment seg = create(1, 2); }
    const std::uint32_t v = kUsageLayoutVersion + 1;
    patch(offsetof(UsageHeader, layout_version), &v, sizeof v);
    UsageSegment seg = create(1, 2);
    EXPECT_EQ(seg.header().layout_version, kUsageLayoutVersion);
}

TEST_F(UsageRingTest, MoveLeavesSourceUnmapped) {
    UsageSegment a = create(2, 2);
    UsageSegment b(std::move(a));
    StreamWriter w;
    EXPECT_FALSE(a.mapped());
    EXPECT_EQ(a.slot_count(), 0u);
    EXPECT_FALSE(a.append(0, &w, usage_fields_of(sample_record())));
    EXPECT_EQ(a.claim_slot(1, 1), -1);
    ASSERT_TRUE(b.mapped());
    EXPECT_EQ(b.claim_slot(1, 1), 0);
    EXPECT_TRUE(b.append(0, &w, usage_fields_of(sample_record())));

    UsageSegment c;
    c = std::move(b);
    EXPECT_FALSE(b.mapped());
    std::uint64_t end = 0;
    EXPECT_EQ(peek_all(c, 0, 1, &end).size(), 1u);
}

// --- append, peek, commit ----------------------------------------------------

TEST_F(UsageRingTest, PeekStampsSlotAndEachRecordsLastByte) {
    UsageSegment seg = create(2, 4);
    ASSERT_EQ(seg.claim_slot(10, 5000), 0);
    ASSERT_EQ(seg.claim_slot(11, 6000), 1);
    Producer p{&seg, 1, {}};
    for (int i = 0; i < 3; ++i) {
        ASSERT_TRUE(p.push(sample_record()));
    }
    const std::uint64_t head = seg.slot(1).head.load();
    EXPECT_GT(head, 0u);
    EXPECT_EQ(seg.slot(0).head.load(), 0u);
    std::uint64_t end = 0;
    const auto out = peek_all(seg, 1, 8, &end);
    ASSERT_EQ(out.size(), 3u);
    EXPECT_EQ(end, head);
    EXPECT_EQ(out[2].sequence + 1, head);
    for (std::uint64_t i = 0; i < 3; ++i) {
        EXPECT_EQ(out[i].slot, 1u);
        EXPECT_EQ(out[i].status, 200);
        EXPECT_EQ(out[i].method_view(), "GET");
        EXPECT_EQ(out[i].endpoint_view(), "/v1/things");
        if (i > 0) {
            EXPECT_GT(out[i].sequence, out[i - 1].sequence);
        }
    }
    EXPECT_EQ(peek_all(seg, 0, 8, &end).size(), 0u);
}

TEST_F(UsageRingTest, PeekHonoursFromAndMaxAndDoesNotConsume) {
    UsageSegment seg = create(1, 4);
    ASSERT_EQ(seg.claim_slot(1, 1), 0);
    Producer p{&seg, 0, {}};
    for (std::uint64_t i = 0; i < 10; ++i) {
        ASSERT_TRUE(p.push(pattern_record(i)));
    }
    std::vector<UsageRecord> out(16);
    std::uint64_t end = 0;
    ASSERT_EQ(seg.peek(0, 0, out.data(), 4, &end), 4u);
    const std::uint64_t fourth = end;
    EXPECT_EQ(out[3].sequence + 1, fourth);
    // From a record's start: the rest, decoded against the records before.
    ASSERT_EQ(seg.peek(0, fourth, out.data(), 16, &end), 6u);
    out[5].generation = 1;
    EXPECT_TRUE(matches_pattern(out[5], 9, 0, 1));
    EXPECT_EQ(end, seg.slot(0).head.load());
    EXPECT_EQ(seg.peek(0, end, out.data(), 16, &end), 0u);
    EXPECT_EQ(seg.peek(0, 1u << 30, out.data(), 16, &end), 0u);
    EXPECT_EQ(seg.peek(0, 0, out.data(), 0, &end), 0u);
    EXPECT_EQ(seg.slot(0).tail.load(), 0u);

    seg.commit(0, fourth);
    EXPECT_EQ(seg.slot(0).tail.load(), fourth);
    // `from` below the tail starts at the tail.
    ASSERT_EQ(seg.peek(0, 0, out.data(), 16, &end), 6u);
    out[0].generation = 1;
    EXPECT_TRUE(matches_pattern(out[0], 4, 0, 1));
    // `from` inside a record: the next record's start.
    ASSERT_EQ(seg.peek(0, fourth + 1, out.data(), 16, &end), 5u);
    out[0].generation = 1;
    EXPECT_TRUE(matches_pattern(out[0], 5, 0, 1));
}

TEST_F(UsageRingTest, PeekWalksAtMostThePoolPastACorruptHead) {
    UsageSegment seg = create(1, 2);
    ASSERT_EQ(seg.claim_slot(1, 1), 0);
    Producer p{&seg, 0, {}};
    for (std::uint64_t i = 0; i < 4; ++i) {
        ASSERT_TRUE(p.push(pattern_record(i)));
    }
    seg.slot(0).head.store(1ull << 40);  // a producer gone wrong
    std::vector<UsageRecord> out(64);
    std::uint64_t end = 0;
    EXPECT_EQ(seg.peek(0, 0, out.data(), out.size(), &end), 4u);
    EXPECT_LE(end, 2 * kStreamChunkSize);
    EXPECT_GE(seg.corrupt_chunks(), 1u);
}

TEST_F(UsageRingTest, ACorruptRecordCostsTheRestOfItsChunkOnly) {
    UsageSegment seg = create(1, 4);
    ASSERT_EQ(seg.claim_slot(1, 1), 0);
    Producer p{&seg, 0, {}};
    ASSERT_TRUE(p.push(pattern_record(0)));
    const std::uint64_t second = seg.slot(0).head.load();
    for (std::uint64_t i = 1; i < 5; ++i) {
        ASSERT_TRUE(p.push(pattern_record(i)));
    }
    // The chunk is the pool's first: the stream area starts after the
    // header page and its metadata page.
    const off_t chunk0 = static_cast<off_t>(
        size_for(1, 4) - 4 * kStreamChunkSize);
    const unsigned char bad = 0xff;
    patch(chunk0 + static_cast<off_t>(second), &bad, 1);
    std::vector<UsageRecord> out(16);
    std::uint64_t end = 0;
    EXPECT_EQ(seg.peek(0, 0, out.data(), out.size(), &end), 1u);
    EXPECT_EQ(end, seg.slot(0).head.load());
    EXPECT_EQ(seg.corrupt_chunks(), 1u);
    // The next chunk is read as usual.
    p.writer.chunk = nullptr;  // as if the worker moved on
    UsageRecord big = pattern_record(6);
    ASSERT_TRUE(p.push(big));
    seg.commit(0, end);
    EXPECT_EQ(seg.peek(0, 0, out.data(), out.size(), &end), 1u);
    out[0].generation = 1;
    EXPECT_TRUE(matches_pattern(out[0], 6, 0, 1));
}

// A record someone else put into the stream (a process able to write the
// segment): the worker's next record refers to nothing, so it decodes as
// written, not against the stranger's fields.
TEST_F(UsageRingTest, AWriterRefersToNothingAfterAnotherWroteItsStream) {
    UsageSegment seg = create(1, 2);
    ASSERT_EQ(seg.claim_slot(1, 1), 0);
    Producer worker{&seg, 0, {}};
    Producer stranger{&seg, 0, {}};
    ASSERT_TRUE(worker.push(pattern_record(0)));
    stranger.writer = worker.writer;  // the same chunk, its own context
    stranger.writer.context = RecordEncodeContext{};
    ASSERT_TRUE(stranger.push(pattern_record(40)));
    ASSERT_TRUE(worker.push(pattern_record(1)));  // the same key as record 0
    std::uint64_t end = 0;
    auto out = peek_all(seg, 0, 8, &end);
    ASSERT_EQ(out.size(), 3u);
    for (auto& r : out) r.generation = 1;
    EXPECT_TRUE(matches_pattern(out[0], 0, 0, 1));
    EXPECT_TRUE(matches_pattern(out[1], 40, 0, 1));
    EXPECT_TRUE(matches_pattern(out[2], 1, 0, 1));
}

TEST_F(UsageRingTest, RetiringASlotOutOfRangeChangesNothing) {
    UsageSegment seg = create(2, 2);
    ASSERT_EQ(seg.claim_slot(1, 1), 0);
    seg.retire_slot(2);
    seg.retire_slot(1u << 20);
    EXPECT_EQ(seg.slot(0).state.load(),
              static_cast<std::uint32_t>(SlotOwnership::kOwned));
    EXPECT_EQ(seg.slot(1).state.load(),
              static_cast<std::uint32_t>(SlotOwnership::kFree));
}

TEST_F(UsageRingTest, CommitIsClampedToHeadAndNeverMovesBack) {
    UsageSegment seg = create(1, 2);
    ASSERT_EQ(seg.claim_slot(1, 1), 0);
    Producer p{&seg, 0, {}};
    for (int i = 0; i < 5; ++i) {
        ASSERT_TRUE(p.push(sample_record()));
    }
    const std::uint64_t head = seg.slot(0).head.load();
    seg.commit(0, 1u << 30);
    EXPECT_EQ(seg.slot(0).tail.load(), head);
    seg.commit(0, 2);
    EXPECT_EQ(seg.slot(0).tail.load(), head);
    seg.commit(7, 1);  // no such slot: ignored
    std::uint64_t end = 0;
    EXPECT_EQ(peek_all(seg, 0, 1, &end).size(), 0u);
}

TEST_F(UsageRingTest, RecordsNeverStraddleChunksAndChunksGoBack) {
    UsageSegment seg = create(1, 4);
    ASSERT_EQ(seg.claim_slot(1, 42), 0);
    Producer p{&seg, 0, {}};
    std::uint64_t pushed = 0;
    std::uint64_t consumed = 0;
    std::vector<UsageRecord> out(997);
    // Ten pools' worth through four chunks, read in odd batches.
    while (seg.slot(0).head.load() < 10 * 4 * kStreamChunkSize) {
        for (int i = 0; i < 500; ++i) {
            ASSERT_TRUE(p.push(pattern_record(pushed))) << pushed;
            ++pushed;
        }
        std::uint64_t end = 0;
        const std::size_t n = seg.peek(0, 0, out.data(), out.size(), &end);
        for (std::size_t i = 0; i < n; ++i) {
            ASSERT_TRUE(matches_pattern(out[i], consumed + i, 0, 0))
                << consumed + i;
            const std::uint64_t last = out[i].sequence;
            const std::uint64_t first =
                i > 0 ? out[i - 1].sequence + 1 : last;
            if (i > 0 && (first >> kStreamChunkShift) !=
                             (last >> kStreamChunkShift)) {
                // The record after a chunk end starts the next chunk.
                EXPECT_EQ(last >> kStreamChunkShift,
                          (first >> kStreamChunkShift) + 1);
            }
        }
        consumed += n;
        seg.commit(0, end);
    }
    EXPECT_EQ(consumed, pushed);
    EXPECT_EQ(seg.slot(0).dropped.load(), 0u);
    // Every chunk is in the pool or held by the slot (the one it writes).
    const StreamSlotState& st = seg.stream().state(0);
    EXPECT_EQ(seg.stream().free_chunks() + st.chunks_taken.load() -
                  st.chunks_released.load(),
              4u);
    EXPECT_LE(st.chunks_taken.load() - st.chunks_released.load(), 1u);
    EXPECT_GE(st.chunks_taken.load(), 40u);
}

TEST_F(UsageRingTest, AnEmptyPoolDropsAndCountsExactly) {
    UsageSegment seg = create(2, 2);
    ASSERT_EQ(seg.claim_slot(1, 7), 0);
    ASSERT_EQ(seg.claim_slot(2, 8), 1);
    Producer a{&seg, 0, {}};
    std::uint64_t pushed = 0;
    while (a.push(pattern_record(pushed))) ++pushed;
    EXPECT_EQ(seg.slot(0).dropped.load(), 1u);
    // One busy slot took the whole pool: the other finds nothing.
    EXPECT_EQ(seg.stream().free_chunks(), 0u);
    Producer b{&seg, 1, {}};
    for (int i = 0; i < 4; ++i) EXPECT_FALSE(b.push(sample_record()));
    EXPECT_EQ(seg.slot(1).dropped.load(), 4u);
    EXPECT_EQ(seg.slot(0).dropped.load(), 1u);

    // Drained past the first chunk: it goes back and takes records again.
    std::vector<UsageRecord> out(pushed);
    std::uint64_t end = 0;
    ASSERT_EQ(seg.peek(0, 0, out.data(), out.size(), &end), pushed);
    for (std::uint64_t i = 0; i < pushed; ++i) {
        out[i].generation = 7;
        ASSERT_TRUE(matches_pattern(out[i], i, 0, 7)) << i;
    }
    seg.commit(0, kStreamChunkSize);
    EXPECT_EQ(seg.stream().free_chunks(), 1u);
    EXPECT_TRUE(b.push(sample_record()));
    // Dropped records left no trace: slot 0's stream holds 0..pushed-1.
    ASSERT_EQ(seg.peek(1, 0, out.data(), out.size(), &end), 1u);
}

TEST_F(UsageRingTest, AppendToMissingSlotCountsUnslottedDrop) {
    UsageSegment seg = create(2, 2);
    StreamWriter w;
    EXPECT_FALSE(seg.append(2, &w, usage_fields_of(sample_record())));
    EXPECT_FALSE(seg.append(1000, &w, usage_fields_of(sample_record())));
    EXPECT_EQ(seg.header().unslotted_drops.load(), 2u);
    EXPECT_EQ(seg.slot(0).dropped.load(), 0u);
}

TEST_F(UsageRingTest, CountUnrecordedAndPolicySkippedPerSlot) {
    UsageSegment seg = create(2, 2);
    ASSERT_EQ(seg.claim_slot(1, 1), 0);
    seg.count_unrecorded(0, UnrecordedCounter::kMissing);
    seg.count_unrecorded(0, UnrecordedCounter::kMissing);
    seg.count_unrecorded(0, UnrecordedCounter::kUnavailable);
    seg.count_unrecorded(5, UnrecordedCounter::kMissing);  // ignored
    seg.count_unrecorded(0, UnrecordedCounter::kCount);    // ignored
    seg.count_policy_skipped(1);
    seg.count_policy_skipped(1);
    seg.count_policy_skipped(9);  // ignored
    const UsageSlot& s = seg.slot(0);
    EXPECT_EQ(
        s.unrecorded[static_cast<int>(UnrecordedCounter::kMissing)].load(), 2u);
    EXPECT_EQ(
        s.unrecorded[static_cast<int>(UnrecordedCounter::kMalformed)].load(),
        0u);
    EXPECT_EQ(
        s.unrecorded[static_cast<int>(UnrecordedCounter::kUnavailable)].load(),
        1u);
    EXPECT_EQ(s.head.load(), 0u);
    EXPECT_EQ(seg.stream().state(1).policy_skipped.load(), 2u);
    EXPECT_EQ(seg.stream().state(0).policy_skipped.load(), 0u);
}

// Consumes `total` records of `slot`, checking order and payloads.
void consume_checked(UsageSegment& seg, std::uint32_t slot,
                     std::uint64_t total, std::uint64_t generation,
                     std::uint64_t* consumed, std::uint64_t* bad) {
    std::vector<UsageRecord> batch(256);
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (*consumed < total && std::chrono::steady_clock::now() < deadline) {
        std::uint64_t end = 0;
        const std::size_t n =
            seg.peek(slot, 0, batch.data(), batch.size(), &end);
        if (n == 0) {
            std::this_thread::yield();
            continue;
        }
        for (std::size_t i = 0; i < n; ++i) {
            batch[i].generation = generation;
            if (!matches_pattern(batch[i], *consumed + i, slot, generation)) {
                ++*bad;
            }
        }
        *consumed += n;
        seg.commit(slot, end);
    }
}

// A producer thread against a consumer thread through a pool that runs
// empty: every record arrives intact, in order, once; every failed append
// is a counted drop.
TEST_F(UsageRingTest, ThreadsTransferTwoMillionRecordsIntact) {
    constexpr std::uint64_t kTotal = 2000000;
    UsageSegment seg = create(1, 2);
    ASSERT_EQ(seg.claim_slot(1, 3), 0);
    std::uint64_t failed = 0;
    std::thread producer([&] {
        Producer p{&seg, 0, {}};
        for (std::uint64_t i = 0; i < kTotal;) {
            if (p.push(pattern_record(i))) {
                ++i;
            } else {
                ++failed;  // pool empty: retry the same record
                std::this_thread::yield();
            }
        }
    });
    std::uint64_t consumed = 0;
    std::uint64_t bad = 0;
    consume_checked(seg, 0, kTotal, 3, &consumed, &bad);
    producer.join();
    EXPECT_EQ(consumed, kTotal);
    EXPECT_EQ(bad, 0u);
    EXPECT_EQ(seg.slot(0).tail.load(), seg.slot(0).head.load());
    EXPECT_EQ(seg.slot(0).dropped.load(), failed);
    EXPECT_GT(failed, 0u) << "the pool never ran empty: not tested";
}

// Two producers share the pool (a CAS on its top each); the consumer
// drains both.
TEST_F(UsageRingTest, TwoProducersShareThePool) {
    constexpr std::uint64_t kTotal = 400000;
    UsageSegment seg = create(2, 3);
    ASSERT_EQ(seg.claim_slot(1, 5), 0);
    ASSERT_EQ(seg.claim_slot(2, 6), 1);
    std::uint64_t failed[2] = {0, 0};
    std::vector<std::thread> producers;
    for (std::uint32_t s = 0; s < 2; ++s) {
        producers.emplace_back([&, s] {
            Producer p{&seg, s, {}};
            for (std::uint64_t i = 0; i < kTotal;) {
                if (p.push(pattern_record(i))) {
                    ++i;
                } else {
                    ++failed[s];
                    std::this_thread::yield();
                }
            }
        });
    }
    std::uint64_t consumed[2] = {0, 0};
    std::uint64_t bad = 0;
    std::vector<UsageRecord> batch(256);
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while ((consumed[0] < kTotal || consumed[1] < kTotal) &&
           std::chrono::steady_clock::now() < deadline) {
        for (std::uint32_t s = 0; s < 2; ++s) {
            std::uint64_t end = 0;
            const std::size_t n =
                seg.peek(s, 0, batch.data(), batch.size(), &end);
            for (std::size_t i = 0; i < n; ++i) {
                batch[i].generation = 5 + s;
                bad += !matches_pattern(batch[i], consumed[s] + i, s, 5 + s);
            }
            consumed[s] += n;
            seg.commit(s, end);
        }
    }
    for (auto& t : producers) t.join();
    EXPECT_EQ(consumed[0], kTotal);
    EXPECT_EQ(consumed[1], kTotal);
    EXPECT_EQ(bad, 0u);
    EXPECT_EQ(seg.slot(0).dropped.load(), failed[0]);
    EXPECT_EQ(seg.slot(1).dropped.load(), failed[1]);
    std::uint64_t held = 0;
    for (std::uint32_t s = 0; s < 2; ++s) {
        held += seg.stream().state(s).chunks_taken.load() -
                seg.stream().state(s).chunks_released.load();
    }
    EXPECT_EQ(seg.stream().free_chunks() + held, 3u);
}

// The producer is another process with its own mapping of the file, as an
// nginx worker and apikeyd are.
TEST_F(UsageRingTest, ProcessesShareStreamsThroughTheFile) {
    constexpr std::uint64_t kTotal = 300000;
    UsageSegment seg = create(2, 4);
    const pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        UsageSegment mine;
        if (mine.attach(path_.c_str(), nullptr) != SegmentStatus::kOk) {
            _exit(2);
        }
        const int s = mine.claim_slot(static_cast<std::int32_t>(getpid()), 77);
        if (s != 0) {
            _exit(3);
        }
        Producer p{&mine, 0, {}};
        for (std::uint64_t i = 0; i < kTotal;) {
            if (p.push(pattern_record(i))) {
                ++i;
            } else {
                sched_yield();
            }
        }
        mine.retire_slot(0);
        _exit(0);
    }
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::seconds(60);
    // The pid is the last field a claim writes.
    while (seg.slot(0).owner_pid.load(std::memory_order_acquire) == 0 &&
           std::chrono::steady_clock::now() < deadline) {
        std::this_thread::yield();
    }
    const std::uint64_t gen = seg.slot(0).generation.load();
    std::uint64_t consumed = 0;
    std::uint64_t bad = 0;
    consume_checked(seg, 0, kTotal, gen, &consumed, &bad);
    if (consumed < kTotal) {
        kill(child, SIGKILL);
    }
    int status = 0;
    ASSERT_EQ(waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0);
    EXPECT_EQ(gen, 77u);
    EXPECT_EQ(consumed, kTotal);
    EXPECT_EQ(bad, 0u);
    EXPECT_EQ(seg.slot(0).owner_pid.load(), child);
    EXPECT_EQ(seg.slot(0).state.load(),
              static_cast<std::uint32_t>(SlotOwnership::kRetired));
    EXPECT_TRUE(seg.free_if_drained(0));
    EXPECT_EQ(seg.stream().free_chunks(), 4u);
}

// --- slot life ------------------------------------------------------------

TEST_F(UsageRingTest, ClaimWhenNoneFreeReturnsMinusOne) {
    UsageSegment seg = create(2, 2);
    EXPECT_EQ(seg.claim_slot(1, 1), 0);
    EXPECT_EQ(seg.claim_slot(2, 1), 1);
    EXPECT_EQ(seg.claim_slot(3, 1), -1);
    UsageSegment unmapped;
    EXPECT_EQ(unmapped.claim_slot(1, 1), -1);
}

TEST_F(UsageRingTest, ClaimRecordsOwnerAndTime) {
    UsageSegment seg = create(1, 2);
    ASSERT_EQ(seg.claim_slot(4321, 1700000000000000), 0);
    EXPECT_EQ(seg.slot(0).state.load(),
              static_cast<std::uint32_t>(SlotOwnership::kOwned));
    EXPECT_EQ(seg.slot(0).owner_pid.load(), 4321);
    EXPECT_EQ(seg.slot(0).claimed_at_us.load(), 1700000000000000);
    EXPECT_EQ(seg.slot(0).generation.load(), 1700000000000000u);
}

TEST_F(UsageRingTest, RetiredSlotWithRecordsIsNeitherFreedNorClaimable) {
    UsageSegment seg = create(1, 2);
    ASSERT_EQ(seg.claim_slot(1, 100), 0);
    Producer p{&seg, 0, {}};
    for (int i = 0; i < 3; ++i) {
        ASSERT_TRUE(p.push(sample_record()));
    }
    seg.retire_slot(0);
    EXPECT_EQ(seg.slot(0).state.load(),
              static_cast<std::uint32_t>(SlotOwnership::kRetired));
    EXPECT_FALSE(seg.free_if_drained(0));
    EXPECT_EQ(seg.claim_slot(2, 200), -1);
    seg.commit(0, 2);
    EXPECT_FALSE(seg.free_if_drained(0));
    EXPECT_EQ(seg.claim_slot(2, 200), -1);
}

TEST_F(UsageRingTest, OwnedSlotIsNeverFreed) {
    UsageSegment seg = create(1, 2);
    ASSERT_EQ(seg.claim_slot(1, 100), 0);
    EXPECT_FALSE(seg.free_if_drained(0));
    EXPECT_FALSE(seg.free_if_drained(9));
}

TEST_F(UsageRingTest, DrainedSlotIsFreedAndReclaimedOnAFreshChunk) {
    UsageSegment seg = create(1, 2);
    ASSERT_EQ(seg.claim_slot(1, 100), 0);
    EXPECT_EQ(seg.slot(0).generation.load(), 100u);
    Producer p{&seg, 0, {}};
    for (int i = 0; i < 5; ++i) {
        ASSERT_TRUE(p.push(sample_record()));
    }
    seg.retire_slot(0);
    seg.commit(0, seg.slot(0).head.load());
    EXPECT_EQ(seg.stream().free_chunks(), 1u);  // the partial chunk is held
    EXPECT_TRUE(seg.free_if_drained(0));
    EXPECT_FALSE(seg.free_if_drained(0));
    EXPECT_EQ(seg.slot(0).state.load(),
              static_cast<std::uint32_t>(SlotOwnership::kFree));
    EXPECT_EQ(seg.slot(0).owner_pid.load(), 0);
    EXPECT_EQ(seg.stream().free_chunks(), 2u);
    // Positions carry on, from the next chunk boundary.
    EXPECT_EQ(seg.slot(0).head.load(), kStreamChunkSize);
    EXPECT_EQ(seg.slot(0).tail.load(), kStreamChunkSize);

    // A clock that went back still gives a larger generation.
    ASSERT_EQ(seg.claim_slot(2, 50), 0);
    EXPECT_EQ(seg.slot(0).generation.load(), 101u);
    EXPECT_EQ(seg.slot(0).owner_pid.load(), 2);
    Producer q{&seg, 0, {}};  // the new worker's own writer
    for (std::uint64_t i = 0; i < 8; ++i) {
        ASSERT_TRUE(q.push(pattern_record(i)));
    }
    std::uint64_t end = 0;
    const auto out = peek_all(seg, 0, 16, &end);
    ASSERT_EQ(out.size(), 8u);
    EXPECT_GE(out[0].sequence, kStreamChunkSize);
    EXPECT_LT(out[0].sequence, 2 * kStreamChunkSize);
    UsageRecord last = out[7];
    last.generation = 101;
    EXPECT_TRUE(matches_pattern(last, 7, 0, 101));

    seg.retire_slot(0);
    seg.commit(0, end);
    ASSERT_TRUE(seg.free_if_drained(0));
    ASSERT_EQ(seg.claim_slot(3, 5000), 0);
    EXPECT_EQ(seg.slot(0).generation.load(), 5000u);
}

// A worker killed after taking a chunk, before its record was published:
// freeing the slot gives that chunk back too.
TEST_F(UsageRingTest, FreeingASlotReturnsAChunkTakenButNeverUsed) {
    UsageSegment seg = create(1, 3);
    ASSERT_EQ(seg.claim_slot(1, 100), 0);
    Producer p{&seg, 0, {}};
    ASSERT_TRUE(p.push(sample_record()));
    // As if the worker had popped a second chunk and died.
    StreamSlotState& st = seg.stream().state(0);
    st.chunks_taken.store(2);
    seg.retire_slot(0);
    seg.commit(0, seg.slot(0).head.load());
    ASSERT_TRUE(seg.free_if_drained(0));
    EXPECT_EQ(seg.slot(0).head.load(), 2 * kStreamChunkSize);
    EXPECT_EQ(st.chunks_released.load(), 2u);
}

TEST_F(UsageRingTest, GenerationGrowsAcrossRecreatedFiles) {
    UsageSegment old = create(1, 2);
    const std::int64_t t0 = now_us();
    ASSERT_EQ(old.claim_slot(1, t0), 0);
    const std::uint64_t old_gen = old.slot(0).generation.load();
    UsageSegment fresh = create(2, 2);
    ASSERT_EQ(fresh.claim_slot(1, now_us()), 0);
    EXPECT_GT(fresh.slot(0).generation.load(), old_gen);
}

}  // namespace
}  // namespace apikey
