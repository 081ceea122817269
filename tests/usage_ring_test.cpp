// One suite for shared/usage_ring: layout, claims, the producer and the
// consumer, replacement of a segment. Long because the unit is.
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

namespace apikey {
namespace {

constexpr std::size_t kFixedPerSlot = sizeof(UsageSlot);
constexpr std::size_t kRecordWords = sizeof(UsageRecord) / 8;

// The smallest aggregation areas: these tests are about the rings.
constexpr std::uint32_t kAgg = kAggMinEntries;

// The size the rings take (header and slot descriptors included).
std::size_t size_for(std::uint32_t slots, std::uint64_t capacity) {
    return kUsageHeaderSize + slots * kFixedPerSlot +
           slots * capacity * sizeof(UsageRecord);
}

// The whole file: the rings, then from the next page an aggregation area
// per slot.
std::size_t file_for(std::uint32_t slots, std::uint64_t capacity) {
    return (size_for(slots, capacity) + 4095) / 4096 * 4096 +
           slots * agg_layout_for(kAgg).area_size;
}

UsageLayout layout_of(std::uint32_t slots, std::uint64_t capacity) {
    return usage_layout_for(size_for(slots, capacity), slots, kAgg);
}

std::int64_t now_us() {
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

// Every byte of the record derived from `n`, so a torn or misplaced copy
// shows up; push then overwrites slot, generation and sequence.
UsageRecord pattern_record(std::uint64_t n) {
    std::uint64_t words[kRecordWords];
    for (std::size_t i = 0; i < kRecordWords; ++i) {
        words[i] =
            (n + 1) * 0x9e3779b97f4a7c15ULL ^ (i * 0xff51afd7ed558ccdULL);
    }
    UsageRecord r;
    std::memcpy(&r, words, sizeof r);
    return r;
}

// The record as the consumer must see it after push.
bool matches_pattern(const UsageRecord& got, std::uint64_t n,
                     std::uint32_t slot, std::uint64_t generation) {
    UsageRecord want = pattern_record(n);
    want.slot = slot;
    want.generation = generation;
    want.sequence = n;
    return std::memcmp(&got, &want, sizeof want) == 0;
}

UsageRecord sample_record() {
    UsageRecord r{};
    r.version = kUsageRecordVersion;
    r.result = AuthResult::kOk;
    r.status = 200;
    r.method_len = copy_truncated(r.method, kUsageMethodLen, "GET");
    r.endpoint_len =
        copy_truncated(r.endpoint, kUsageEndpointLen, "/v1/things");
    return r;
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

    // A fresh segment at path_ with `slots` rings of `capacity` records.
    UsageSegment create(std::uint32_t slots, std::uint64_t capacity) {
        UsageSegment seg;
        bool created = false;
        std::string error;
        EXPECT_EQ(seg.open_or_create(path_.c_str(), layout_of(slots, capacity),
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

TEST(UsageLayoutTest, CapacityIsLargestPowerOfTwoThatFits) {
    const std::size_t total = size_for(4, 1000);
    const UsageLayout l = usage_layout_for(total, 4, kAgg);
    EXPECT_EQ(l.slot_count, 4u);
    EXPECT_EQ(l.ring_capacity, 512u);
    EXPECT_EQ(l.file_size, file_for(4, 512));
    EXPECT_LE(l.file_size, file_for(4, 1000));
}

TEST(UsageLayoutTest, ExactFitUsesTheWholeSize) {
    const UsageLayout l = usage_layout_for(size_for(8, 1024), 8, kAgg);
    EXPECT_EQ(l.ring_capacity, 1024u);
    EXPECT_EQ(l.file_size, file_for(8, 1024));
    // One byte short halves the rings.
    EXPECT_EQ(usage_layout_for(size_for(8, 1024) - 1, 8, kAgg).ring_capacity,
              512u);
}

TEST(UsageLayoutTest, SixtyFourMegabytesIsPowerOfTwoAndFits) {
    const std::size_t total = 64u << 20;
    for (std::uint32_t slots : {1u, 2u, 3u, 8u, 64u, 1000u}) {
        const UsageLayout l = usage_layout_for(total, slots, kAgg);
        ASSERT_GT(l.ring_capacity, 0u) << slots;
        EXPECT_EQ(l.ring_capacity & (l.ring_capacity - 1), 0u) << slots;
        EXPECT_LE(l.file_size, file_for(slots, l.ring_capacity)) << slots;
        EXPECT_GT(size_for(slots, l.ring_capacity * 2), total) << slots;
        EXPECT_EQ(l.file_size, file_for(slots, l.ring_capacity)) << slots;
    }
}

TEST(UsageLayoutTest, TooSmallGivesZeroCapacity) {
    EXPECT_EQ(usage_layout_for(size_for(2, 1) - 1, 2, kAgg).ring_capacity, 0u);
    EXPECT_EQ(usage_layout_for(size_for(2, 1) - 1, 2, kAgg).file_size, 0u);
    EXPECT_EQ(usage_layout_for(size_for(2, 1), 2, kAgg).ring_capacity, 1u);
    EXPECT_EQ(usage_layout_for(100, 1, kAgg).ring_capacity, 0u);
    EXPECT_EQ(usage_layout_for(0, 1, kAgg).ring_capacity, 0u);
    EXPECT_EQ(usage_layout_for(64u << 20, 0, kAgg).ring_capacity, 0u);
    EXPECT_EQ(
        usage_layout_for(SIZE_MAX / 2, kMaxUsageSlots + 1, kAgg).ring_capacity,
        0u);
}

// --- create, reuse, replace, attach ----------------------------------------

TEST_F(UsageRingTest, CreateWritesHeaderWithExactModeDespiteUmask) {
    const mode_t old_umask = umask(0077);
    UsageSegment seg;
    bool created = false;
    std::string error;
    const UsageLayout layout = layout_of(3, 64);
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
    EXPECT_EQ(h.record_size, sizeof(UsageRecord));
    EXPECT_EQ(h.slot_count, 3u);
    EXPECT_EQ(h.ring_capacity, 64u);
    EXPECT_EQ(h.file_size, layout.file_size);
    EXPECT_GT(h.created_at_us, 0);
    EXPECT_FALSE(seg.superseded());
    EXPECT_EQ(seg.slot_count(), 3u);
    EXPECT_EQ(seg.ring_capacity(), 64u);
    for (std::uint32_t i = 0; i < 3; ++i) {
        EXPECT_EQ(seg.slot(i).state.load(),
                  static_cast<std::uint32_t>(SlotOwnership::kFree));
        EXPECT_EQ(seg.slot(i).head.load(), 0u);
        EXPECT_EQ(seg.slot(i).tail.load(), 0u);
    }
}

TEST_F(UsageRingTest, ReopenWithSameLayoutReusesFileAndKeepsRecords) {
    {
        UsageSegment seg = create(2, 16);
        const int s = seg.claim_slot(1234, 1000);
        ASSERT_EQ(s, 0);
        for (std::uint64_t i = 0; i < 3; ++i) {
            ASSERT_TRUE(seg.push(0, pattern_record(i)));
        }
    }
    const ino_t before = inode_of(path_);
    UsageSegment seg;
    bool created = true;
    std::string error;
    ASSERT_EQ(seg.open_or_create(path_.c_str(), layout_of(2, 16), 0600,
                                 &created, &error),
              SegmentStatus::kOk)
        << error;
    EXPECT_FALSE(created);
    EXPECT_EQ(inode_of(path_), before);
    EXPECT_EQ(seg.slot(0).state.load(),
              static_cast<std::uint32_t>(SlotOwnership::kOwned));
    EXPECT_EQ(seg.slot(0).owner_pid.load(), 1234);
    UsageRecord out[4];
    ASSERT_EQ(seg.peek(0, 0, out, 4), 3u);
    for (std::uint64_t i = 0; i < 3; ++i) {
        EXPECT_TRUE(matches_pattern(out[i], i, 0, 1000)) << i;
    }
}

TEST_F(UsageRingTest, DifferentLayoutCreatesFreshFileAndSupersedesOld) {
    UsageSegment old = create(2, 16);
    ASSERT_EQ(old.claim_slot(1, 1000), 0);
    ASSERT_TRUE(old.push(0, sample_record()));
    UsageSegment drainer;  // apikeyd's mapping of the old file
    std::string error;
    ASSERT_EQ(drainer.attach(path_.c_str(), &error), SegmentStatus::kOk)
        << error;
    const ino_t old_inode = inode_of(path_);

    UsageSegment fresh;
    bool created = false;
    ASSERT_EQ(fresh.open_or_create(path_.c_str(), layout_of(4, 32), 0600,
                                   &created, &error),
              SegmentStatus::kOk)
        << error;
    EXPECT_TRUE(created);
    EXPECT_NE(inode_of(path_), old_inode);
    EXPECT_EQ(fresh.slot_count(), 4u);
    EXPECT_EQ(fresh.ring_capacity(), 32u);
    EXPECT_FALSE(fresh.superseded());
    EXPECT_TRUE(old.superseded());
    EXPECT_TRUE(drainer.superseded());
    // The old mapping still works: its record can be drained.
    UsageRecord out;
    EXPECT_EQ(drainer.peek(0, 0, &out, 1), 1u);

    UsageSegment reattached;
    ASSERT_EQ(reattached.attach(path_.c_str(), &error), SegmentStatus::kOk)
        << error;
    EXPECT_EQ(reattached.slot_count(), 4u);
    EXPECT_FALSE(reattached.superseded());
}

TEST_F(UsageRingTest, GarbageFileIsReplaced) {
    write_file(std::string(10000, 'x'));
    UsageSegment seg = create(1, 8);
    std::string error;
    UsageSegment check;
    EXPECT_EQ(check.attach(path_.c_str(), &error), SegmentStatus::kOk) << error;
}

TEST_F(UsageRingTest, EmptyFileIsReplaced) {
    write_file("");
    UsageSegment seg = create(1, 8);
    EXPECT_TRUE(seg.mapped());
}

TEST_F(UsageRingTest, PathThatCannotBeOpenedIsErrorNotReplaced) {
    ASSERT_EQ(mkdir((path_ + ".d").c_str(), 0700), 0);
    const std::string dir_path = path_ + ".d";
    UsageSegment seg;
    bool created = true;
    std::string error;
    EXPECT_EQ(seg.open_or_create(dir_path.c_str(), layout_of(1, 8), 0600,
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
    UsageLayout bad = layout_of(2, 16);
    bad.ring_capacity = 12;
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
    { UsageSegment seg = create(1, 8); }
    const std::uint64_t wrong = 0x1122334455667788ULL;
    patch(offsetof(UsageHeader, magic), &wrong, sizeof wrong);
    UsageSegment seg;
    std::string error;
    EXPECT_EQ(seg.attach(path_.c_str(), &error), SegmentStatus::kBadMagic);
    EXPECT_NE(error.find(path_), std::string::npos) << error;
    EXPECT_FALSE(seg.mapped());
}

TEST_F(UsageRingTest, AttachRefusesOtherLayoutVersion) {
    { UsageSegment seg = create(1, 8); }
    const std::uint32_t v = kUsageLayoutVersion + 1;
    patch(offsetof(UsageHeader, layout_version), &v, sizeof v);
    UsageSegment seg;
    std::string error;
    EXPECT_EQ(seg.attach(path_.c_str(), &error), SegmentStatus::kBadVersion);
    EXPECT_FALSE(seg.mapped());
}

TEST_F(UsageRingTest, AttachRefusesOtherRecordSize) {
    { UsageSegment seg = create(1, 8); }
    const std::uint32_t size = sizeof(UsageRecord) + 8;
    patch(offsetof(UsageHeader, record_size), &size, sizeof size);
    UsageSegment seg;
    std::string error;
    EXPECT_EQ(seg.attach(path_.c_str(), &error), SegmentStatus::kBadVersion);
}

TEST_F(UsageRingTest, AttachRefusesTruncatedFile) {
    { UsageSegment seg = create(2, 8); }
    ASSERT_EQ(truncate(path_.c_str(), file_for(2, 8) - 4096), 0);
    UsageSegment seg;
    std::string error;
    EXPECT_EQ(seg.attach(path_.c_str(), &error), SegmentStatus::kBadSize);
    EXPECT_NE(error.find(path_), std::string::npos) << error;
    ASSERT_EQ(truncate(path_.c_str(), 4), 0);
    EXPECT_EQ(seg.attach(path_.c_str(), &error), SegmentStatus::kBadSize);
}

TEST_F(UsageRingTest, AttachRefusesAFileCutInsideTheHeader) {
    { UsageSegment seg = create(2, 8); }
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
    EXPECT_EQ(seg.open_or_create(path.c_str(), layout_of(1, 8), 0600,
                                 &created, &error),
              SegmentStatus::kIoError);
    EXPECT_NE(error.find("path too long"), std::string::npos) << error;
    for (auto it = made.rbegin(); it != made.rend(); ++it) {
        rmdir(it->c_str());
    }
}

TEST_F(UsageRingTest, AttachRefusesHeaderThatDisagreesWithSize) {
    { UsageSegment seg = create(2, 8); }
    const std::uint64_t cap = 16;  // file holds 8 per ring
    patch(offsetof(UsageHeader, ring_capacity), &cap, sizeof cap);
    UsageSegment seg;
    std::string error;
    EXPECT_EQ(seg.attach(path_.c_str(), &error), SegmentStatus::kBadSize);
    const std::uint64_t cap8 = 8;
    const std::uint32_t slots = 3;
    patch(offsetof(UsageHeader, ring_capacity), &cap8, sizeof cap8);
    patch(offsetof(UsageHeader, slot_count), &slots, sizeof slots);
    EXPECT_EQ(seg.attach(path_.c_str(), &error), SegmentStatus::kBadSize);
}

TEST_F(UsageRingTest, BadHeaderMakesOpenOrCreateReplaceTheFile) {
    { UsageSegment seg = create(1, 8); }
    const std::uint32_t v = kUsageLayoutVersion + 1;
    patch(offsetof(UsageHeader, layout_version), &v, sizeof v);
    UsageSegment seg = create(1, 8);
    EXPECT_EQ(seg.header().layout_version, kUsageLayoutVersion);
}

TEST_F(UsageRingTest, MoveLeavesSourceUnmapped) {
    UsageSegment a = create(2, 8);
    UsageSegment b(std::move(a));
    EXPECT_FALSE(a.mapped());
    EXPECT_EQ(a.slot_count(), 0u);
    EXPECT_FALSE(a.push(0, sample_record()));
    EXPECT_EQ(a.claim_slot(1, 1), -1);
    ASSERT_TRUE(b.mapped());
    EXPECT_EQ(b.claim_slot(1, 1), 0);
    EXPECT_TRUE(b.push(0, sample_record()));

    UsageSegment c;
    c = std::move(b);
    EXPECT_FALSE(b.mapped());
    UsageRecord out;
    EXPECT_EQ(c.peek(0, 0, &out, 1), 1u);
}

// --- push, peek, commit ----------------------------------------------------

TEST_F(UsageRingTest, PushStampsSlotGenerationAndSequence) {
    UsageSegment seg = create(2, 16);
    ASSERT_EQ(seg.claim_slot(10, 5000), 0);
    ASSERT_EQ(seg.claim_slot(11, 6000), 1);
    const std::uint64_t gen = seg.slot(1).generation.load();
    EXPECT_EQ(gen, 6000u);

    UsageRecord r = sample_record();
    r.slot = 77;  // whatever the caller left here is overwritten
    r.generation = 88;
    r.sequence = 99;
    for (int i = 0; i < 3; ++i) {
        ASSERT_TRUE(seg.push(1, r));
    }
    EXPECT_EQ(seg.slot(1).head.load(), 3u);
    EXPECT_EQ(seg.slot(0).head.load(), 0u);
    UsageRecord out[8];
    ASSERT_EQ(seg.peek(1, 0, out, 8), 3u);
    for (std::uint64_t i = 0; i < 3; ++i) {
        EXPECT_EQ(out[i].slot, 1u);
        EXPECT_EQ(out[i].generation, gen);
        EXPECT_EQ(out[i].sequence, i);
        EXPECT_EQ(out[i].status, 200);
        EXPECT_EQ(out[i].method_view(), "GET");
        EXPECT_EQ(out[i].endpoint_view(), "/v1/things");
    }
    EXPECT_EQ(seg.peek(0, 0, out, 8), 0u);
}

TEST_F(UsageRingTest, PeekHonoursFromAndMaxAndDoesNotConsume) {
    UsageSegment seg = create(1, 16);
    ASSERT_EQ(seg.claim_slot(1, 1), 0);
    for (std::uint64_t i = 0; i < 10; ++i) {
        ASSERT_TRUE(seg.push(0, pattern_record(i)));
    }
    UsageRecord out[16];
    ASSERT_EQ(seg.peek(0, 0, out, 4), 4u);
    EXPECT_EQ(out[3].sequence, 3u);
    ASSERT_EQ(seg.peek(0, 4, out, 16), 6u);
    EXPECT_EQ(out[0].sequence, 4u);
    EXPECT_TRUE(matches_pattern(out[5], 9, 0, 1));
    EXPECT_EQ(seg.peek(0, 10, out, 16), 0u);
    EXPECT_EQ(seg.peek(0, 1000, out, 16), 0u);
    EXPECT_EQ(seg.peek(0, 0, out, 0), 0u);
    EXPECT_EQ(seg.slot(0).tail.load(), 0u);

    seg.commit(0, 6);
    EXPECT_EQ(seg.slot(0).tail.load(), 6u);
    // `from` below the tail starts at the tail.
    ASSERT_EQ(seg.peek(0, 0, out, 16), 4u);
    EXPECT_EQ(out[0].sequence, 6u);
}

TEST_F(UsageRingTest, PeekReadsAtMostOneRingPastACorruptHead) {
    UsageSegment seg = create(1, 16);
    ASSERT_EQ(seg.claim_slot(1, 1), 0);
    for (std::uint64_t i = 0; i < 4; ++i) {
        ASSERT_TRUE(seg.push(0, pattern_record(i)));
    }
    seg.slot(0).head.store(1000);  // a producer gone wrong
    UsageRecord out[64];
    EXPECT_EQ(seg.peek(0, 0, out, 64), 16u);
}

TEST_F(UsageRingTest, RetiringASlotOutOfRangeChangesNothing) {
    UsageSegment seg = create(2, 8);
    ASSERT_EQ(seg.claim_slot(1, 1), 0);
    seg.retire_slot(2);
    seg.retire_slot(1u << 20);
    EXPECT_EQ(seg.slot(0).state.load(),
              static_cast<std::uint32_t>(SlotOwnership::kOwned));
    EXPECT_EQ(seg.slot(1).state.load(),
              static_cast<std::uint32_t>(SlotOwnership::kFree));
}

TEST_F(UsageRingTest, CommitIsClampedToHeadAndNeverMovesBack) {
    UsageSegment seg = create(1, 8);
    ASSERT_EQ(seg.claim_slot(1, 1), 0);
    for (int i = 0; i < 5; ++i) {
        ASSERT_TRUE(seg.push(0, sample_record()));
    }
    seg.commit(0, 100);
    EXPECT_EQ(seg.slot(0).tail.load(), 5u);
    seg.commit(0, 2);
    EXPECT_EQ(seg.slot(0).tail.load(), 5u);
    seg.commit(7, 1);  // no such slot: ignored
    UsageRecord out;
    EXPECT_EQ(seg.peek(0, 0, &out, 1), 0u);
}

TEST_F(UsageRingTest, WrapsAroundOverSeveralCapacities) {
    constexpr std::uint64_t kCap = 8;
    UsageSegment seg = create(1, kCap);
    ASSERT_EQ(seg.claim_slot(1, 42), 0);
    std::uint64_t pushed = 0;
    std::uint64_t consumed = 0;
    UsageRecord out[kCap];
    // Odd batch sizes so that reads straddle the end of the ring.
    while (consumed < 6 * kCap) {
        for (int i = 0; i < 5; ++i) {
            ASSERT_TRUE(seg.push(0, pattern_record(pushed)));
            ++pushed;
        }
        const std::size_t n = seg.peek(0, consumed, out, kCap);
        ASSERT_EQ(n, pushed - consumed);
        for (std::size_t i = 0; i < n; ++i) {
            ASSERT_TRUE(matches_pattern(out[i], consumed + i, 0, 42))
                << consumed + i;
        }
        consumed += n;
        seg.commit(0, consumed);
    }
    EXPECT_EQ(seg.slot(0).head.load(), pushed);
    EXPECT_EQ(seg.slot(0).tail.load(), pushed);
    EXPECT_EQ(seg.slot(0).dropped.load(), 0u);
}

TEST_F(UsageRingTest, FullRingDropsAndCountsExactly) {
    constexpr std::uint64_t kCap = 16;
    UsageSegment seg = create(1, kCap);
    ASSERT_EQ(seg.claim_slot(1, 7), 0);
    for (std::uint64_t i = 0; i < kCap; ++i) {
        ASSERT_TRUE(seg.push(0, pattern_record(i)));
    }
    for (int i = 0; i < 5; ++i) {
        EXPECT_FALSE(seg.push(0, pattern_record(999)));
    }
    EXPECT_EQ(seg.slot(0).dropped.load(), 5u);
    EXPECT_EQ(seg.slot(0).head.load(), kCap);

    seg.commit(0, 4);
    for (std::uint64_t i = kCap; i < kCap + 4; ++i) {
        ASSERT_TRUE(seg.push(0, pattern_record(i)));
    }
    EXPECT_FALSE(seg.push(0, pattern_record(999)));
    EXPECT_EQ(seg.slot(0).dropped.load(), 6u);

    // Dropped records left no trace: the ring holds 4..19 in order.
    UsageRecord out[kCap];
    ASSERT_EQ(seg.peek(0, 0, out, kCap), kCap);
    for (std::uint64_t i = 0; i < kCap; ++i) {
        EXPECT_TRUE(matches_pattern(out[i], i + 4, 0, 7)) << i;
    }
}

TEST_F(UsageRingTest, ReserveAndPublishWriteInPlaceLikePush) {
    constexpr std::uint64_t kCap = 8;
    UsageSegment seg = create(2, kCap);
    ASSERT_EQ(seg.claim_slot(1, 9), 0);
    ASSERT_EQ(seg.claim_slot(2, 12345), 1);
    for (std::uint64_t i = 0; i < kCap; ++i) {
        UsageRecord* rec = seg.reserve(1);
        ASSERT_NE(rec, nullptr);
        // invisible until published
        EXPECT_EQ(seg.slot(1).head.load(), i);
        *rec = pattern_record(i);
        seg.publish(1, rec);
        EXPECT_EQ(seg.slot(1).head.load(), i + 1);
    }
    EXPECT_EQ(seg.reserve(1), nullptr);  // full: counted like push
    EXPECT_EQ(seg.slot(1).dropped.load(), 1u);
    EXPECT_EQ(seg.reserve(2), nullptr);  // no such slot
    EXPECT_EQ(seg.header().unslotted_drops.load(), 1u);

    UsageRecord out[kCap];
    ASSERT_EQ(seg.peek(1, 0, out, kCap), kCap);
    for (std::uint64_t i = 0; i < kCap; ++i) {
        EXPECT_TRUE(matches_pattern(out[i], i, 1, 12345)) << i;
    }
    seg.commit(1, 3);
    UsageRecord* rec = seg.reserve(1);  // the oldest drained record's place
    ASSERT_NE(rec, nullptr);
    EXPECT_EQ(rec, seg.reserve(1));  // nothing moves until publish
    *rec = pattern_record(kCap);
    seg.publish(1, rec);
    ASSERT_EQ(seg.peek(1, kCap, out, kCap), 1u);
    EXPECT_TRUE(matches_pattern(out[0], kCap, 1, 12345));
}

TEST_F(UsageRingTest, PushToMissingSlotCountsUnslottedDrop) {
    UsageSegment seg = create(2, 8);
    EXPECT_FALSE(seg.push(2, sample_record()));
    EXPECT_FALSE(seg.push(1000, sample_record()));
    EXPECT_EQ(seg.header().unslotted_drops.load(), 2u);
    EXPECT_EQ(seg.slot(0).dropped.load(), 0u);
}

TEST_F(UsageRingTest, CountUnrecordedCountsPerReason) {
    UsageSegment seg = create(2, 8);
    ASSERT_EQ(seg.claim_slot(1, 1), 0);
    seg.count_unrecorded(0, UnrecordedCounter::kMissing);
    seg.count_unrecorded(0, UnrecordedCounter::kMissing);
    seg.count_unrecorded(0, UnrecordedCounter::kUnavailable);
    seg.count_unrecorded(5, UnrecordedCounter::kMissing);  // ignored
    seg.count_unrecorded(0, UnrecordedCounter::kCount);    // ignored
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
}

// Consumes `total` records of slot 0 (until `done` says the producer has
// finished), checking contiguous sequences and intact payloads.
void consume_checked(UsageSegment& seg, std::uint64_t total,
                     std::uint64_t generation, std::uint64_t* consumed,
                     std::uint64_t* bad) {
    std::vector<UsageRecord> batch(256);
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (*consumed < total && std::chrono::steady_clock::now() < deadline) {
        const std::size_t n =
            seg.peek(0, *consumed, batch.data(), batch.size());
        if (n == 0) {
            std::this_thread::yield();
            continue;
        }
        for (std::size_t i = 0; i < n; ++i) {
            if (!matches_pattern(batch[i], *consumed + i, 0, generation)) {
                ++*bad;
            }
        }
        *consumed += n;
        seg.commit(0, *consumed);
    }
}

TEST_F(UsageRingTest, ThreadsTransferFiveMillionRecordsIntact) {
    constexpr std::uint64_t kTotal = 5000000;
    UsageSegment seg = create(1, 1024);
    ASSERT_EQ(seg.claim_slot(1, 3), 0);
    std::uint64_t failed_pushes = 0;
    std::thread producer([&] {
        for (std::uint64_t i = 0; i < kTotal;) {
            if (seg.push(0, pattern_record(i))) {
                ++i;
            } else {
                ++failed_pushes;  // full: retry the same record
                std::this_thread::yield();
            }
        }
    });
    std::uint64_t consumed = 0;
    std::uint64_t bad = 0;
    consume_checked(seg, kTotal, 3, &consumed, &bad);
    producer.join();
    EXPECT_EQ(consumed, kTotal);
    EXPECT_EQ(bad, 0u);
    EXPECT_EQ(seg.slot(0).head.load(), kTotal);
    EXPECT_EQ(seg.slot(0).tail.load(), kTotal);
    EXPECT_EQ(seg.slot(0).dropped.load(), failed_pushes);
}

// The producer is another process with its own mapping of the file, as an
// nginx worker and apikeyd are.
TEST_F(UsageRingTest, ProcessesShareRingsThroughTheFile) {
    constexpr std::uint64_t kTotal = 300000;
    UsageSegment seg = create(2, 256);
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
        for (std::uint64_t i = 0; i < kTotal;) {
            if (mine.push(0, pattern_record(i))) {
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
    consume_checked(seg, kTotal, gen, &consumed, &bad);
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
}

// --- slot life ------------------------------------------------------------

TEST_F(UsageRingTest, ClaimWhenNoneFreeReturnsMinusOne) {
    UsageSegment seg = create(2, 8);
    EXPECT_EQ(seg.claim_slot(1, 1), 0);
    EXPECT_EQ(seg.claim_slot(2, 1), 1);
    EXPECT_EQ(seg.claim_slot(3, 1), -1);
    UsageSegment unmapped;
    EXPECT_EQ(unmapped.claim_slot(1, 1), -1);
}

TEST_F(UsageRingTest, ClaimRecordsOwnerAndTime) {
    UsageSegment seg = create(1, 8);
    ASSERT_EQ(seg.claim_slot(4321, 1700000000000000), 0);
    EXPECT_EQ(seg.slot(0).state.load(),
              static_cast<std::uint32_t>(SlotOwnership::kOwned));
    EXPECT_EQ(seg.slot(0).owner_pid.load(), 4321);
    EXPECT_EQ(seg.slot(0).claimed_at_us.load(), 1700000000000000);
    EXPECT_EQ(seg.slot(0).generation.load(), 1700000000000000u);
}

TEST_F(UsageRingTest, RetiredSlotWithRecordsIsNeitherFreedNorClaimable) {
    UsageSegment seg = create(1, 8);
    ASSERT_EQ(seg.claim_slot(1, 100), 0);
    for (int i = 0; i < 3; ++i) {
        ASSERT_TRUE(seg.push(0, sample_record()));
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
    UsageSegment seg = create(1, 8);
    ASSERT_EQ(seg.claim_slot(1, 100), 0);
    EXPECT_FALSE(seg.free_if_drained(0));
    EXPECT_FALSE(seg.free_if_drained(9));
}

TEST_F(UsageRingTest, DrainedSlotIsFreedAndReclaimedWithLargerGeneration) {
    UsageSegment seg = create(1, 8);
    ASSERT_EQ(seg.claim_slot(1, 100), 0);
    EXPECT_EQ(seg.slot(0).generation.load(), 100u);
    for (int i = 0; i < 5; ++i) {
        ASSERT_TRUE(seg.push(0, sample_record()));
    }
    seg.retire_slot(0);
    seg.commit(0, 5);
    EXPECT_TRUE(seg.free_if_drained(0));
    EXPECT_FALSE(seg.free_if_drained(0));
    EXPECT_EQ(seg.slot(0).state.load(),
              static_cast<std::uint32_t>(SlotOwnership::kFree));
    EXPECT_EQ(seg.slot(0).owner_pid.load(), 0);

    // A clock that went back still gives a larger generation.
    ASSERT_EQ(seg.claim_slot(2, 50), 0);
    EXPECT_EQ(seg.slot(0).generation.load(), 101u);
    EXPECT_EQ(seg.slot(0).owner_pid.load(), 2);
    // Positions carry on; the new owner has the whole ring.
    for (int i = 0; i < 8; ++i) {
        ASSERT_TRUE(seg.push(0, sample_record()));
    }
    EXPECT_FALSE(seg.push(0, sample_record()));
    UsageRecord out[8];
    ASSERT_EQ(seg.peek(0, 0, out, 8), 8u);
    EXPECT_EQ(out[0].sequence, 5u);
    EXPECT_EQ(out[0].generation, 101u);
    EXPECT_EQ(out[7].sequence, 12u);

    seg.retire_slot(0);
    seg.commit(0, 13);
    ASSERT_TRUE(seg.free_if_drained(0));
    ASSERT_EQ(seg.claim_slot(3, 5000), 0);
    EXPECT_EQ(seg.slot(0).generation.load(), 5000u);
}

TEST_F(UsageRingTest, GenerationGrowsAcrossRecreatedFiles) {
    UsageSegment old = create(1, 8);
    const std::int64_t t0 = now_us();
    ASSERT_EQ(old.claim_slot(1, t0), 0);
    const std::uint64_t old_gen = old.slot(0).generation.load();
    UsageSegment fresh = create(2, 8);
    ASSERT_EQ(fresh.claim_slot(1, now_us()), 0);
    EXPECT_GT(fresh.slot(0).generation.load(), old_gen);
}

// --- record helpers ----------------------------------------------------------

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
    EXPECT_EQ(copy_truncated(buf, sizeof buf, "GET"), 3);
    EXPECT_EQ(std::string(buf, 3), "GET");
    EXPECT_EQ(copy_truncated(buf, sizeof buf, "OPTIONSX"), 8);
    EXPECT_EQ(copy_truncated(buf, sizeof buf, "OPTIONSXYZ"), 8);
    EXPECT_EQ(std::string(buf, 8), "OPTIONSX");
    EXPECT_EQ(copy_truncated(buf, sizeof buf, ""), 0);
    EXPECT_EQ(copy_truncated(nullptr, 0, "abc"), 0);
}

TEST(UsageRecordTest, CopyTruncatedBacksOffToUtf8Boundary) {
    char buf[16];
    // "ab" + U+00E9 (2 bytes): a cap of 3 would split it.
    EXPECT_EQ(copy_truncated(buf, 3, "ab\xc3\xa9"), 2);
    EXPECT_EQ(copy_truncated(buf, 4, "ab\xc3\xa9"), 4);
    EXPECT_EQ(std::string(buf, 4), "ab\xc3\xa9");
    // U+20AC (3 bytes) after "a": caps 2 and 3 cut inside it.
    EXPECT_EQ(copy_truncated(buf, 2, "a\xe2\x82\xac"), 1);
    EXPECT_EQ(copy_truncated(buf, 3, "a\xe2\x82\xac"), 1);
    EXPECT_EQ(copy_truncated(buf, 4, "a\xe2\x82\xac"), 4);
    // U+1F600 (4 bytes) at the start: nothing of it fits in 3.
    EXPECT_EQ(copy_truncated(buf, 3, "\xf0\x9f\x98\x80!"), 0);
    EXPECT_EQ(copy_truncated(buf, 4, "\xf0\x9f\x98\x80!"), 4);
    EXPECT_EQ(copy_truncated(buf, 5, "\xf0\x9f\x98\x80!"), 5);
    // A cut right before a multibyte character needs no back-off.
    EXPECT_EQ(copy_truncated(buf, 2, "ab\xc3\xa9"), 2);
}

TEST(UsageRecordTest, CopyTruncatedCapsAt255AndCutsInvalidUtf8) {
    const std::string longer(300, 'x');
    char buf[300];
    EXPECT_EQ(copy_truncated(buf, sizeof buf, longer), 255);
    // Only continuation bytes: not UTF-8, cut at the cap.
    EXPECT_EQ(copy_truncated(buf, 6, std::string(10, '\x80')), 6);
}

}  // namespace
}  // namespace apikey
