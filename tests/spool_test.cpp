#include "spool.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "key_format.h"  // crc32
#include "spool_fixture.h"

namespace apikey {
namespace {

using testing::batch;
using testing::batch_id;
using testing::drain;
using testing::frame_bytes;
using testing::SpoolTest;

TEST_F(SpoolTest, CreatesItsDirectoryPrivate) {
    Spool s(dir_ + "/nested", 1 << 20);
    struct stat st;
    ASSERT_EQ(::stat((dir_ + "/nested").c_str(), &st), 0);
    EXPECT_TRUE(S_ISDIR(st.st_mode));
    EXPECT_EQ(st.st_mode & 0777, 0700u);
    EXPECT_TRUE(s.empty());
    EXPECT_EQ(s.bytes(), 0u);
}

TEST_F(SpoolTest, ReplaysInTurnsOfAtMostTheBatchesAsked) {
    Spool s(dir_, 64 << 20);
    for (std::uint64_t id = 1; id <= 3; id++) {
        ASSERT_TRUE(s.append(batch(id, 2)));
    }

    std::vector<std::uint64_t> seen;
    const auto take = [&](const std::vector<UsageRecord>& b) {
        seen.push_back(batch_id(b));
        return true;
    };
    EXPECT_EQ(s.replay(take, 1), 1u);
    EXPECT_EQ(s.pending_batches(), 2u);
    // A batch appended between turns queues behind the older ones.
    ASSERT_TRUE(s.append(batch(4, 2)));
    EXPECT_EQ(s.replay(take, 2), 2u);
    EXPECT_EQ(s.replay(take, 0), 0u);
    EXPECT_EQ(s.replay(take, 1), 1u);
    EXPECT_EQ(seen, (std::vector<std::uint64_t>{1, 2, 3, 4}));
    EXPECT_TRUE(s.empty());
    EXPECT_EQ(s.bytes(), 0u) << "the last turn removes the emptied file";
    EXPECT_TRUE(files().empty());
}

TEST_F(SpoolTest, ReplaysBatchesOldestFirstWithTheirRecords) {
    Spool s(dir_, 64 << 20);
    ASSERT_TRUE(s.append(batch(1, 3)));
    ASSERT_TRUE(s.append(batch(2, 1)));
    ASSERT_TRUE(s.append(batch(3, 500)));
    EXPECT_FALSE(s.empty());
    EXPECT_EQ(s.pending_batches(), 3u);
    EXPECT_EQ(s.bytes(), frame_bytes(batch(1, 3)) + frame_bytes(batch(2, 1)) +
                             frame_bytes(batch(3, 500)));

    std::vector<std::vector<UsageRecord>> seen;
    std::size_t removed = s.replay([&](const std::vector<UsageRecord>& b) {
        seen.push_back(b);
        return true;
    });
    EXPECT_EQ(removed, 3u);
    ASSERT_EQ(seen.size(), 3u);
    EXPECT_EQ(batch_id(seen[0]), 1u);
    EXPECT_EQ(batch_id(seen[1]), 2u);
    EXPECT_EQ(batch_id(seen[2]), 3u);
    ASSERT_EQ(seen[2].size(), 500u);
    EXPECT_EQ(std::memcmp(seen[2].data(), batch(3, 500).data(),
                          500 * sizeof(UsageRecord)),
              0);
    EXPECT_TRUE(s.empty());
    EXPECT_EQ(s.bytes(), 0u);
    EXPECT_TRUE(files().empty()) << "replayed files are removed";
}

TEST_F(SpoolTest, ReplayStopsAtTheFirstFailureAndKeepsTheRest) {
    Spool s(dir_, 64 << 20);
    for (std::uint64_t id = 1; id <= 4; ++id) {
        ASSERT_TRUE(s.append(batch(id, 2)));
    }
    std::vector<std::uint64_t> ids;
    std::size_t removed = s.replay([&](const std::vector<UsageRecord>& b) {
        ids.push_back(batch_id(b));
        return batch_id(b) < 3;  // the database goes away at batch 3
    });
    EXPECT_EQ(removed, 2u);
    EXPECT_EQ(ids, (std::vector<std::uint64_t>{1, 2, 3}));
    EXPECT_EQ(s.pending_batches(), 2u);
    EXPECT_EQ(drain(s), (std::vector<std::uint64_t>{3, 4}));
    EXPECT_TRUE(s.empty());
}

TEST_F(SpoolTest, AnExceptionFromTheCallbackKeepsTheBatch) {
    Spool s(dir_, 64 << 20);
    ASSERT_TRUE(s.append(batch(1, 2)));
    EXPECT_THROW(s.replay([](const std::vector<UsageRecord>&) -> bool {
        throw std::runtime_error("boom");
    }),
                 std::runtime_error);
    EXPECT_EQ(drain(s), (std::vector<std::uint64_t>{1}));
}

TEST_F(SpoolTest, AppendsDuringReplayComeAfter) {
    Spool s(dir_, 64 << 20);
    ASSERT_TRUE(s.append(batch(1, 2)));
    std::vector<std::uint64_t> ids;
    s.replay([&](const std::vector<UsageRecord>& b) {
        ids.push_back(batch_id(b));
        if (batch_id(b) == 1) {
            EXPECT_TRUE(s.append(batch(2, 2)));
        }
        return true;
    });
    EXPECT_EQ(ids, (std::vector<std::uint64_t>{1, 2}));
    EXPECT_TRUE(s.empty());
}

TEST_F(SpoolTest, FullSpoolRejectsAndCountsNothing) {
    const std::uint64_t frame = frame_bytes(batch(1, 10));
    ASSERT_EQ(frame_bytes(batch(3, 10)), frame);
    Spool s(dir_, 2 * frame + 100);
    EXPECT_TRUE(s.append(batch(1, 10)));
    EXPECT_TRUE(s.append(batch(2, 10)));
    EXPECT_FALSE(s.append(batch(3, 10)));
    EXPECT_TRUE(s.append(batch(4, 0))) << "nothing to store";
    EXPECT_EQ(s.pending_batches(), 2u);
    EXPECT_LE(s.bytes(), s.max_bytes());
    // Room again once replayed.
    EXPECT_EQ(drain(s), (std::vector<std::uint64_t>{1, 2}));
    EXPECT_TRUE(s.append(batch(5, 10)));
}

TEST_F(SpoolTest, ANewSpoolOnTheSameDirectorySeesTheData) {
    {
        Spool s(dir_, 64 << 20);
        ASSERT_TRUE(s.append(batch(1, 7)));
        ASSERT_TRUE(s.append(batch(2, 7)));
        // "crash": no replay, object gone
    }
    Spool again(dir_, 64 << 20, logger());
    EXPECT_EQ(again.pending_batches(), 2u);
    EXPECT_EQ(again.bytes(), frame_bytes(batch(1, 7)) + frame_bytes(batch(2, 7)));
    ASSERT_TRUE(again.append(batch(3, 1)));
    EXPECT_EQ(drain(again), (std::vector<std::uint64_t>{1, 2, 3}));
    EXPECT_TRUE(logs_.empty());
}

TEST_F(SpoolTest, ReplayedBatchesStayReplayedAcrossARestart) {
    {
        Spool s(dir_, 64 << 20);
        for (std::uint64_t id = 1; id <= 3; ++id) {
            ASSERT_TRUE(s.append(batch(id, 4)));
        }
        s.replay([](const std::vector<UsageRecord>& b) {
            return batch_id(b) == 1;
        });
    }
    Spool again(dir_, 64 << 20);
    EXPECT_EQ(drain(again), (std::vector<std::uint64_t>{2, 3}));
}

TEST_F(SpoolTest, ATornTailIsCutAndEarlierBatchesKept) {
    {
        Spool s(dir_, 64 << 20);
        ASSERT_TRUE(s.append(batch(1, 3)));
        ASSERT_TRUE(s.append(batch(2, 3)));
    }
    ASSERT_EQ(files().size(), 1u);
    const std::string path = files()[0];
    struct stat st;
    ASSERT_EQ(::stat(path.c_str(), &st), 0);
    const off_t good_size = st.st_size;
    {
        // A crash halfway through a third frame: header and part of a record.
        std::vector<UsageRecord> third = batch(3, 3);
        std::ofstream f(path, std::ios::binary | std::ios::app);
        const unsigned char header[12] = {'A', 'K', 'S', kUsageRecordVersion,
                                          3, 0, 0, 0, 1, 2, 3, 4};
        f.write(reinterpret_cast<const char*>(header), sizeof(header));
        f.write(reinterpret_cast<const char*>(third.data()), 100);
    }
    Spool s(dir_, 64 << 20, logger());
    EXPECT_EQ(s.pending_batches(), 2u);
    EXPECT_EQ(s.corrupt_frames(), 1u);
    EXPECT_EQ(s.corrupt_bytes(), 112u);
    ASSERT_EQ(logs_.size(), 1u);
    EXPECT_NE(logs_[0].find("torn"), std::string::npos);
    ASSERT_EQ(::stat(path.c_str(), &st), 0);
    EXPECT_EQ(st.st_size, good_size) << "the tail is truncated on disk";
    // Appends go on after the cut.
    ASSERT_TRUE(s.append(batch(4, 3)));
    EXPECT_EQ(drain(s), (std::vector<std::uint64_t>{1, 2, 4}));
}

TEST_F(SpoolTest, ACorruptPayloadCutsFromThatFrameOn) {
    {
        Spool s(dir_, 64 << 20);
        for (std::uint64_t id = 1; id <= 3; ++id) {
            ASSERT_TRUE(s.append(batch(id, 2)));
        }
    }
    const std::string path = files()[0];
    // Flip one payload byte of the second frame.
    const off_t second = static_cast<off_t>(frame_bytes(batch(1, 2)));
    int fd = ::open(path.c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    unsigned char byte;
    ASSERT_EQ(::pread(fd, &byte, 1, second + kSpoolFrameHeaderBytes + 40), 1);
    byte ^= 0x5a;
    ASSERT_EQ(::pwrite(fd, &byte, 1, second + kSpoolFrameHeaderBytes + 40), 1);
    ::close(fd);

    Spool s(dir_, 64 << 20, logger());
    EXPECT_EQ(s.corrupt_frames(), 1u);
    EXPECT_EQ(drain(s), (std::vector<std::uint64_t>{1}));
}

TEST_F(SpoolTest, GarbageHeaderIsCut) {
    {
        Spool s(dir_, 64 << 20);
        ASSERT_TRUE(s.append(batch(1, 2)));
    }
    {
        std::ofstream f(files()[0], std::ios::binary | std::ios::app);
        f << "this is not a frame at all";
    }
    Spool s(dir_, 64 << 20, logger());
    EXPECT_EQ(s.corrupt_frames(), 1u);
    EXPECT_EQ(drain(s), (std::vector<std::uint64_t>{1}));
}

TEST_F(SpoolTest, FramesStartWithTheLayoutMagic) {
    {
        Spool s(dir_, 64 << 20);
        ASSERT_TRUE(s.append(batch(1, 1)));
    }
    std::ifstream f(files()[0], std::ios::binary);
    char head[8];
    f.read(head, sizeof(head));
    EXPECT_EQ(std::string(head, 3), "AKS");
    EXPECT_EQ(head[3], static_cast<char>(kUsageRecordVersion));
    EXPECT_EQ(head[4], 1);  // record count, little-endian
    EXPECT_EQ(head[5], 0);
}

// A spool the previous version wrote (frame version 1: 12-byte headers,
// fixed 288-byte records) is replayed after an upgrade, and its frames are
// marked consumed in their own version.
TEST_F(SpoolTest, AVersionOneSpoolFileIsReplayed) {
    ASSERT_EQ(::mkdir(dir_.c_str(), 0700), 0);
    const std::string path = dir_ + "/spool-0000000000000003.bin";
    std::string file;
    auto u32 = [](std::string* s, std::size_t at, std::uint32_t v) {
        for (int i = 0; i < 4; ++i) (*s)[at + i] = static_cast<char>(v >> (8 * i));
    };
    auto u64 = [&](std::string* s, std::size_t at, std::uint64_t v) {
        u32(s, at, static_cast<std::uint32_t>(v));
        u32(s, at + 4, static_cast<std::uint32_t>(v >> 32));
    };
    for (std::uint32_t frame = 0; frame < 2; ++frame) {
        const std::uint32_t count = 2 + frame;
        std::string payload(count * kSpoolV1RecordBytes, '\0');
        for (std::uint32_t i = 0; i < count; ++i) {
            const std::size_t at = i * kSpoolV1RecordBytes;
            payload[at] = 1;                      // version
            payload[at + 2] = 0;                  // result: ok
            payload[at + 3] = 4;                  // ip family
            payload[at + 4] = static_cast<char>(200 % 256);
            payload[at + 6] = 3;                  // method_len
            payload[at + 7] = 2;                  // endpoint_len
            payload[at + 8] = 64;                 // user_agent_len (the old cap)
            u32(&payload, at + 16, 5);            // slot
            u64(&payload, at + 24, 777 + frame);  // generation
            u64(&payload, at + 32, i);            // sequence (a record count)
            u64(&payload, at + 40, 1700000000000000 + i);
            u64(&payload, at + 56, 4096);         // bytes_sent
            payload[at + 64] = static_cast<char>(0x11 + i);  // key_id[0]
            payload[at + 96] = 10;                // ip 10.0.0.9
            payload[at + 99] = 9;
            payload.replace(at + 112, 3, "GET");
            payload.replace(at + 128, 2, "/v");
            payload.replace(at + 224, 64, std::string(64, 'u'));
        }
        std::string header(kSpoolV1FrameHeaderBytes, '\0');
        u32(&header, 0, spool_frame_magic(1));
        u32(&header, 4, count);
        u32(&header, 8, crc32(payload));
        file += header + payload;
    }
    {
        std::ofstream f(path, std::ios::binary);
        f << file;
    }
    std::vector<std::vector<UsageRecord>> seen;
    {
        Spool s(dir_, 64 << 20, logger());
        EXPECT_EQ(s.pending_batches(), 2u);
        EXPECT_EQ(s.bytes(), file.size());
        // The first batch is replayed; the database goes away at the second.
        s.replay([&](const std::vector<UsageRecord>& b) {
            seen.push_back(b);
            return seen.size() == 1;
        });
        EXPECT_EQ(s.pending_batches(), 1u);
    }
    ASSERT_EQ(seen.size(), 2u);
    ASSERT_EQ(seen[0].size(), 2u);
    ASSERT_EQ(seen[1].size(), 3u);
    const UsageRecord& r = seen[1][2];
    EXPECT_EQ(r.slot, 5u);
    EXPECT_EQ(r.generation, 778u);
    EXPECT_EQ(r.sequence, 2u);
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.result, AuthResult::kOk);
    EXPECT_EQ(r.time_us, 1700000000000002);
    EXPECT_EQ(r.bytes_sent, 4096u);
    EXPECT_EQ(r.key_id[0], 0x13);
    EXPECT_EQ(r.ip_family, IpFamily::kV4);
    EXPECT_EQ(r.ip[3], 9);
    EXPECT_EQ(r.method_view(), "GET");
    EXPECT_EQ(r.endpoint_view(), "/v");
    EXPECT_EQ(r.user_agent_view(), std::string(64, 'u'));
    EXPECT_TRUE(logs_.empty());
    // After a restart only the batch not yet committed comes back.
    Spool again(dir_, 64 << 20, logger());
    EXPECT_EQ(again.pending_batches(), 1u);
    std::vector<std::uint64_t> gens;
    again.replay([&](const std::vector<UsageRecord>& b) {
        gens.push_back(b.front().generation);
        return true;
    });
    EXPECT_EQ(gens, (std::vector<std::uint64_t>{778}));
    EXPECT_TRUE(again.empty());
    EXPECT_TRUE(files().empty());
}

TEST_F(SpoolTest, RotatesFilesAndReplaysAcrossThem) {
    const std::size_t per_batch = 10000;  // about 2.2 MB
    const std::size_t batches =
        kSpoolFileRotateBytes / frame_bytes(batch(1, per_batch)) + 3;
    {
        Spool s(dir_, 256ull << 20);
        for (std::size_t id = 1; id <= batches; ++id) {
            ASSERT_TRUE(s.append(batch(id, per_batch)));
        }
    }
    EXPECT_GE(files().size(), 2u);
    Spool s(dir_, 256ull << 20);
    EXPECT_EQ(s.pending_batches(), batches);
    std::vector<std::uint64_t> ids = drain(s);
    ASSERT_EQ(ids.size(), batches);
    for (std::size_t i = 0; i < batches; ++i) EXPECT_EQ(ids[i], i + 1);
    EXPECT_TRUE(files().empty());
}

TEST_F(SpoolTest, LeavesOtherFilesAlone) {
    ASSERT_EQ(::mkdir(dir_.c_str(), 0700), 0);
    { std::ofstream(dir_ + "/README") << "hello"; }
    { std::ofstream(dir_ + "/spool-12.bin") << "short name"; }
    Spool s(dir_, 1 << 20);
    EXPECT_TRUE(s.empty());
    ASSERT_TRUE(s.append(batch(1, 1)));
    EXPECT_EQ(drain(s), (std::vector<std::uint64_t>{1}));
    struct stat st;
    EXPECT_EQ(::stat((dir_ + "/README").c_str(), &st), 0);
    EXPECT_EQ(::stat((dir_ + "/spool-12.bin").c_str(), &st), 0);
}

}  // namespace
}  // namespace apikey
