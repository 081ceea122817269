#include "spool.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "spool_fixture.h"

namespace apikey {
namespace {

using testing::batch;
using testing::batch_id;
using testing::drain;
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

TEST_F(SpoolTest, ReplaysBatchesOldestFirstWithTheirRecords) {
    Spool s(dir_, 64 << 20);
    ASSERT_TRUE(s.append(batch(1, 3)));
    ASSERT_TRUE(s.append(batch(2, 1)));
    ASSERT_TRUE(s.append(batch(3, 500)));
    EXPECT_FALSE(s.empty());
    EXPECT_EQ(s.pending_batches(), 3u);
    EXPECT_EQ(s.bytes(),
              3 * kSpoolFrameHeaderBytes + 504 * sizeof(UsageRecord));

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
    const std::uint64_t frame =
        kSpoolFrameHeaderBytes + 10 * sizeof(UsageRecord);
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
    EXPECT_EQ(again.bytes(),
              2 * (kSpoolFrameHeaderBytes + 7 * sizeof(UsageRecord)));
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
    const off_t second = kSpoolFrameHeaderBytes + 2 * sizeof(UsageRecord);
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

TEST_F(SpoolTest, RotatesFilesAndReplaysAcrossThem) {
    const std::size_t per_batch = 10000;  // 2.88 MB
    const std::size_t batches =
        kSpoolFileRotateBytes / (per_batch * sizeof(UsageRecord)) + 3;
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
