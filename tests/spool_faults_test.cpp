// The spool when the file system says no: a spool path that cannot be a
// directory, files that vanish, shrink, change or turn into directories
// between the scan and the replay, a write past the file-size limit, a
// directory that cannot be fsynced. Every fault is a real one.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include <gtest/gtest.h>

#include "process_limits.h"
#include "spool.h"
#include "spool_fixture.h"

namespace apikey {
namespace {

using testing::batch;
using testing::drain;
using SpoolFault = testing::SpoolTest;

constexpr std::uint64_t kRoomy = 64 << 20;

bool logged(const std::vector<std::string>& logs, const std::string& what) {
    for (const std::string& line : logs) {
        if (line.find(what) != std::string::npos) return true;
    }
    return false;
}

int system_error_code(const std::string& dir) {
    try {
        Spool s(dir, kRoomy);
    } catch (const std::system_error& e) {
        return e.code().value();
    }
    return 0;
}

TEST_F(SpoolFault, APathThatIsAFileIsRefused) {
    { std::ofstream(dir_) << "not a directory"; }
    EXPECT_EQ(system_error_code(dir_), ENOTDIR);
}

TEST_F(SpoolFault, ADirectoryThatCannotBeCreatedIsRefused) {
    // /proc takes no new directories, for root either.
    EXPECT_NE(system_error_code("/proc/apikey-spool-test/spool"), 0);
}

TEST_F(SpoolFault, ADanglingSymlinkCannotBeRead) {
    ASSERT_EQ(::symlink((root_ + "/nowhere").c_str(), dir_.c_str()), 0);
    EXPECT_EQ(system_error_code(dir_), ENOENT);
}

TEST_F(SpoolFault, ASpoolNamedDirectoryIsLeftAloneAndLogged) {
    ASSERT_EQ(::mkdir(dir_.c_str(), 0700), 0);
    const std::string odd = dir_ + "/spool-0000000000000003.bin";
    ASSERT_EQ(::mkdir(odd.c_str(), 0700), 0);
    Spool s(dir_, kRoomy, logger());
    EXPECT_TRUE(s.empty());
    EXPECT_TRUE(logged(logs_, "cannot open " + odd)) << logs_.size();
    EXPECT_TRUE(logged(logs_, "cannot remove " + odd));
    ASSERT_TRUE(s.append(batch(1, 2)));
    // The new file numbers on after it.
    EXPECT_EQ(files(), (std::vector<std::string>{
                           odd, dir_ + "/spool-0000000000000004.bin"}));
    logs_.clear();
    EXPECT_EQ(drain(s), (std::vector<std::uint64_t>{1}));
    EXPECT_TRUE(logged(logs_, "cannot remove " + odd));
    EXPECT_EQ(files(), (std::vector<std::string>{odd})) << "never deleted";
}

TEST_F(SpoolFault, AnEmptyLeftoverFileIsRemovedAndNumberingGoesOn) {
    ASSERT_EQ(::mkdir(dir_.c_str(), 0700), 0);
    { std::ofstream(dir_ + "/spool-0000000000000007.bin"); }
    Spool s(dir_, kRoomy, logger());
    EXPECT_TRUE(s.empty());
    EXPECT_TRUE(files().empty());
    ASSERT_TRUE(s.append(batch(1, 1)));
    EXPECT_EQ(files(),
              (std::vector<std::string>{dir_ + "/spool-0000000000000008.bin"}));
    EXPECT_TRUE(logs_.empty());
}

TEST_F(SpoolFault, AWritePastTheFileSizeLimitStoresNothing) {
    Spool s(dir_, kRoomy, logger());
    {
        testing::FileSizeLimit limit(4096);
        ASSERT_TRUE(limit.ok());
        EXPECT_FALSE(s.append(batch(1, 100)));  // about 22 KB
    }
    EXPECT_TRUE(logged(logs_, "cannot write"));
    EXPECT_TRUE(s.empty());
    EXPECT_EQ(s.bytes(), 0u);
    ASSERT_EQ(files().size(), 1u);
    struct stat st;
    ASSERT_EQ(::stat(files()[0].c_str(), &st), 0);
    EXPECT_EQ(st.st_size, 0) << "the partial frame is cut";
    // The next append starts a fresh file and works.
    ASSERT_TRUE(s.append(batch(2, 100)));
    EXPECT_EQ(drain(s), (std::vector<std::uint64_t>{2}));
}

TEST_F(SpoolFault, ABatchLargerThanAFrameIsRefused) {
    Spool s(dir_, ~0ull, logger());
    std::vector<UsageRecord> huge(kSpoolMaxBatchRecords + 1);
    EXPECT_FALSE(s.append(huge));
    EXPECT_TRUE(logged(logs_, "larger than a spool frame holds"));
    EXPECT_TRUE(files().empty());
}

TEST_F(SpoolFault, ANameTakenByAnotherFileFailsThatAppendOnly) {
    Spool s(dir_, kRoomy, logger());
    const std::string taken = dir_ + "/spool-0000000000000001.bin";
    { std::ofstream(taken) << "someone else's"; }
    EXPECT_FALSE(s.append(batch(1, 1)));
    EXPECT_TRUE(logged(logs_, "cannot create " + taken));
    ASSERT_TRUE(s.append(batch(2, 1)));
    EXPECT_EQ(drain(s), (std::vector<std::uint64_t>{2}));
}

TEST_F(SpoolFault, ADirectoryThatCannotBeSyncedStoresNothing) {
    Spool s(dir_, kRoomy, logger());
    // Write and search but no read: files can be created in it, the
    // directory itself cannot be opened to fsync it.
    ASSERT_EQ(::chmod(dir_.c_str(), 0300), 0);
    {
        testing::WithoutDacOverride no_override;
        ASSERT_TRUE(no_override.ok());
        EXPECT_FALSE(s.append(batch(1, 1)));
    }
    ASSERT_EQ(::chmod(dir_.c_str(), 0700), 0);
    EXPECT_TRUE(logged(logs_, "cannot fsync " + dir_));
    EXPECT_TRUE(files().empty()) << "the new file is taken back";
    EXPECT_TRUE(s.empty());
}

// A spool holding one batch of two records, in files()[0].
class SpoolReplayFault : public testing::SpoolTest {
protected:
    void SetUp() override {
        testing::SpoolTest::SetUp();
        spool_ = std::make_unique<Spool>(dir_, kRoomy, logger());
        ASSERT_TRUE(spool_->append(batch(1, 2)));
        ASSERT_EQ(files().size(), 1u);
        path_ = files()[0];
    }
    void TearDown() override {
        spool_.reset();
        testing::SpoolTest::TearDown();
    }

    // Replays; the batch must stay for a later call.
    void expect_kept(const std::string& why) {
        std::size_t calls = 0;
        EXPECT_EQ(spool_->replay([&](const std::vector<UsageRecord>&) {
            ++calls;
            return true;
        }),
                  0u);
        EXPECT_EQ(calls, 0u);
        EXPECT_EQ(spool_->pending_batches(), 1u);
        EXPECT_TRUE(logged(logs_, why)) << why;
    }

    std::unique_ptr<Spool> spool_;
    std::string path_;
};

TEST_F(SpoolReplayFault, AVanishedFileIsKeptForLater) {
    ASSERT_EQ(::unlink(path_.c_str()), 0);
    expect_kept("cannot open " + path_);
}

TEST_F(SpoolReplayFault, AShrunkFileIsKeptForLater) {
    ASSERT_EQ(::truncate(path_.c_str(), 5), 0);
    expect_kept("cannot read " + path_ + ": file shrank");
}

TEST_F(SpoolReplayFault, AFileTurnedDirectoryIsKeptForLater) {
    ASSERT_EQ(::unlink(path_.c_str()), 0);
    ASSERT_EQ(::mkdir(path_.c_str(), 0700), 0);
    expect_kept("cannot read " + path_ + ": " +
                std::generic_category().message(EISDIR));
}

TEST_F(SpoolReplayFault, ABatchChangedOnDiskIsKeptForLater) {
    int fd = ::open(path_.c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    const unsigned char junk = 0xa5;
    ASSERT_EQ(::pwrite(fd, &junk, 1, kSpoolFrameHeaderBytes + 8), 1);
    ::close(fd);
    expect_kept("changed on disk since it was checked");
}

TEST_F(SpoolReplayFault, AMarkThatCannotBeWrittenIsLoggedAndReplayGoesOn) {
    // The file turns into a directory while its batch is committed: the
    // consumed mark cannot be written and the file cannot be unlinked.
    std::size_t calls = 0;
    EXPECT_EQ(spool_->replay([&](const std::vector<UsageRecord>&) {
        ++calls;
        EXPECT_EQ(::unlink(path_.c_str()), 0);
        EXPECT_EQ(::mkdir(path_.c_str(), 0700), 0);
        return true;
    }),
              1u);
    EXPECT_EQ(calls, 1u);
    EXPECT_TRUE(spool_->empty());
    EXPECT_EQ(spool_->bytes(), 0u);
    EXPECT_TRUE(logged(logs_, "cannot mark a replayed batch in " + path_));
    EXPECT_TRUE(logged(logs_, "cannot remove " + path_));
}

}  // namespace
}  // namespace apikey
