#include "runtime_dir.h"
#include "scratch_dir.h"
#include "segment_file.h"

#include <fcntl.h>
#include <pwd.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <string>
#include <utility>

namespace apikey {
namespace {

// A file of `size` zero bytes at `path` with exactly `mode`.
void write_file(const std::string& path, unsigned mode, off_t size = 64) {
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(ftruncate(fd, size), 0);
    ASSERT_EQ(fchmod(fd, static_cast<mode_t>(mode)), 0);
    close(fd);
}

uid_t nobody_uid() {
    const passwd* pw = getpwnam("nobody");
    return pw != nullptr ? pw->pw_uid : 65534;
}

class RuntimeDirTest : public ::testing::Test {
protected:
    // <scratch>/run, mode 0750: the shape of /run/apikey.
    void SetUp() override {
        run_ = scratch_.file("run");
        ASSERT_EQ(mkdir(run_.c_str(), 0750), 0);
        ASSERT_EQ(chmod(run_.c_str(), 0750), 0);
    }

    TrustStatus open_file(const std::string& name, std::string* why) {
        RuntimeDir dir;
        TrustStatus s = dir.open_for((run_ + "/" + name).c_str(), why);
        if (s != TrustStatus::kTrusted) return s;
        const int fd = dir.open_file(name.c_str(), O_RDONLY, &s, why);
        if (fd >= 0) close(fd);
        return s;
    }

    apikey::testing::ScratchDir scratch_;
    std::string run_;
};

TEST_F(RuntimeDirTest, OwnPrivateDirectoryAndOwnFileAreTrusted) {
    write_file(run_ + "/keys", 0644);
    std::string why;
    EXPECT_EQ(open_file("keys", &why), TrustStatus::kTrusted) << why;
}

TEST_F(RuntimeDirTest, MissingFileAndMissingDirectoryAreMissing) {
    std::string why;
    EXPECT_EQ(open_file("keys", &why), TrustStatus::kMissing);
    RuntimeDir dir;
    EXPECT_EQ(dir.open_for((run_ + "/no-such-dir/keys").c_str(), &why),
              TrustStatus::kMissing);
    EXPECT_NE(why.find("no-such-dir"), std::string::npos) << why;
}

TEST_F(RuntimeDirTest, GroupOrWorldWritableDirectoryIsRefused) {
    for (mode_t mode : {0770, 0757, 01777}) {
        ASSERT_EQ(chmod(run_.c_str(), mode), 0);
        RuntimeDir dir;
        std::string why;
        EXPECT_EQ(dir.open_for((run_ + "/keys").c_str(), &why),
                  TrustStatus::kUntrusted)
            << std::oct << mode;
        EXPECT_NE(why.find("writable by its group or others"),
                  std::string::npos)
            << why;
    }
}

TEST_F(RuntimeDirTest, WorldWritableSystemDirectoriesAreRefused) {
    // /dev/shm and /tmp are 1777 on every Linux: a segment straight in
    // them could have been created by anyone.
    for (const char* path : {"/dev/shm/apikey_keys", "/tmp/apikey_keys"}) {
        RuntimeDir dir;
        std::string why;
        EXPECT_EQ(dir.open_for(path, &why), TrustStatus::kUntrusted) << path;
    }
}

TEST_F(RuntimeDirTest, SymlinkedDirectoryIsRefused) {
    const std::string link = scratch_.file("link");
    ASSERT_EQ(symlink(run_.c_str(), link.c_str()), 0);
    RuntimeDir dir;
    std::string why;
    EXPECT_EQ(dir.open_for((link + "/keys").c_str(), &why),
              TrustStatus::kUntrusted);
    EXPECT_NE(why.find("not a directory"), std::string::npos) << why;
}

TEST_F(RuntimeDirTest, SymlinkedFileIsRefusedEvenToATrustedTarget) {
    write_file(run_ + "/real", 0644);
    ASSERT_EQ(symlink((run_ + "/real").c_str(), (run_ + "/keys").c_str()), 0);
    std::string why;
    EXPECT_EQ(open_file("keys", &why), TrustStatus::kUntrusted);
    EXPECT_NE(why.find("symlink"), std::string::npos) << why;
}

TEST_F(RuntimeDirTest, GroupOrWorldWritableFileIsRefused) {
    for (unsigned mode : {0664u, 0646u, 0660u}) {
        write_file(run_ + "/keys", mode);
        std::string why;
        EXPECT_EQ(open_file("keys", &why), TrustStatus::kUntrusted)
            << std::oct << mode;
    }
}

TEST_F(RuntimeDirTest, DirectoryAtTheFilesPathIsRefused) {
    ASSERT_EQ(mkdir((run_ + "/keys").c_str(), 0755), 0);
    std::string why;
    EXPECT_EQ(open_file("keys", &why), TrustStatus::kUntrusted);
    EXPECT_NE(why.find("not a regular file"), std::string::npos) << why;
}

TEST_F(RuntimeDirTest, FileOfAnotherUserIsRefused) {
    if (geteuid() != 0) GTEST_SKIP() << "chown needs root";
    write_file(run_ + "/keys", 0644);
    ASSERT_EQ(chown((run_ + "/keys").c_str(), nobody_uid(), -1), 0);
    std::string why;
    EXPECT_EQ(open_file("keys", &why), TrustStatus::kUntrusted);
    EXPECT_NE(why.find("uid " + std::to_string(nobody_uid())),
              std::string::npos)
        << why;
}

TEST_F(RuntimeDirTest, AnotherUsersDirectoryIsTrustedOnlyUnderARootOnlyParent) {
    if (geteuid() != 0) GTEST_SKIP() << "chown needs root";
    // The scratch directory is root's, 0700: only root could have put
    // `run` there, so its owner (apikeyd's user) and that user's files are
    // trusted.
    ASSERT_EQ(chown(run_.c_str(), nobody_uid(), -1), 0);
    write_file(run_ + "/keys", 0644);
    ASSERT_EQ(chown((run_ + "/keys").c_str(), nobody_uid(), -1), 0);
    std::string why;
    EXPECT_EQ(open_file("keys", &why), TrustStatus::kTrusted) << why;

    // The same directory in a parent that others may write (sticky, as
    // /tmp): anyone could have created it first.
    ASSERT_EQ(chmod(scratch_.path().c_str(), 01777), 0);
    EXPECT_EQ(open_file("keys", &why), TrustStatus::kUntrusted);
    EXPECT_NE(why.find("parent"), std::string::npos) << why;
    ASSERT_EQ(chmod(scratch_.path().c_str(), 0700), 0);
}

TEST_F(RuntimeDirTest, RootCreatesFilesForTheDirectorysOwner) {
    if (geteuid() != 0) GTEST_SKIP() << "chown needs root";
    ASSERT_EQ(chown(run_.c_str(), nobody_uid(), -1), 0);
    RuntimeDir dir;
    std::string why;
    ASSERT_EQ(dir.open_for((run_ + "/usage").c_str(), &why),
              TrustStatus::kTrusted)
        << why;
    const int fd = dir.create_file("usage", 0600, &why);
    ASSERT_GE(fd, 0) << why;
    struct stat st;
    ASSERT_EQ(fstat(fd, &st), 0);
    close(fd);
    EXPECT_EQ(st.st_uid, nobody_uid());
    EXPECT_EQ(st.st_mode & 07777, 0600u);
}

TEST_F(RuntimeDirTest, CreateReplacesAStaleFileWithANewInode) {
    write_file(run_ + "/keys.tmp", 0644);
    // Held open, as a reader holds a mapping: its inode stays allocated.
    const int old_fd = ::open((run_ + "/keys.tmp").c_str(), O_RDONLY);
    ASSERT_GE(old_fd, 0);
    struct stat before;
    ASSERT_EQ(fstat(old_fd, &before), 0);
    RuntimeDir dir;
    std::string why;
    ASSERT_EQ(dir.open_for((run_ + "/keys.tmp").c_str(), &why),
              TrustStatus::kTrusted);
    const int fd = dir.create_file("keys.tmp", 0644, &why);
    ASSERT_GE(fd, 0) << why;
    struct stat after;
    ASSERT_EQ(fstat(fd, &after), 0);
    close(fd);
    EXPECT_NE(after.st_ino, before.st_ino);
    EXPECT_EQ(after.st_size, 0);
    // The old file was not truncated under its reader.
    ASSERT_EQ(fstat(old_fd, &before), 0);
    EXPECT_EQ(before.st_size, 64);
    close(old_fd);
}

TEST_F(RuntimeDirTest, CreateDoesNotFollowASymlinkPlantedAtTheName) {
    const std::string target = scratch_.file("target");
    write_file(target, 0644, 7);
    ASSERT_EQ(symlink(target.c_str(), (run_ + "/keys.tmp").c_str()), 0);
    MappedFile map;
    std::string why;
    // The stale name is removed, not followed: the target keeps its size.
    ASSERT_EQ(map.create((run_ + "/keys.tmp").c_str(), 4096, 0644, &why),
              SegmentStatus::kOk)
        << why;
    struct stat st;
    ASSERT_EQ(stat(target.c_str(), &st), 0);
    EXPECT_EQ(st.st_size, 7);
    ASSERT_EQ(lstat((run_ + "/keys.tmp").c_str(), &st), 0);
    EXPECT_TRUE(S_ISREG(st.st_mode));
}

TEST_F(RuntimeDirTest, MappedFileReportsARefusalAsUntrusted) {
    write_file(run_ + "/keys", 0666);
    MappedFile map;
    std::string why;
    EXPECT_EQ(map.open((run_ + "/keys").c_str(), false, &why),
              SegmentStatus::kUntrusted);
    EXPECT_STREQ(segment_status_name(SegmentStatus::kUntrusted), "refused");
    EXPECT_EQ(map.data(), nullptr);
}

TEST_F(RuntimeDirTest, MovesHandTheDirectoryOver) {
    RuntimeDir a;
    std::string why;
    ASSERT_EQ(a.open_for((run_ + "/keys").c_str(), &why),
              TrustStatus::kTrusted);
    const int fd = a.fd();
    RuntimeDir b(std::move(a));
    EXPECT_FALSE(a.is_open());
    EXPECT_EQ(b.fd(), fd);
    EXPECT_EQ(b.path(), run_);

    RuntimeDir c;
    ASSERT_EQ(c.open_for((scratch_.path() + "/x").c_str(), &why),
              TrustStatus::kTrusted);
    const int old = c.fd();
    c = std::move(b);  // c's own descriptor is closed first
    EXPECT_FALSE(b.is_open());
    EXPECT_EQ(c.fd(), fd);
    EXPECT_EQ(c.path(), run_);
    EXPECT_EQ(fcntl(old, F_GETFD), -1) << "the replaced descriptor is closed";
    RuntimeDir& self = c;
    c = std::move(self);
    EXPECT_EQ(c.fd(), fd);
    write_file(run_ + "/keys", 0644);
    TrustStatus s;
    const int file = c.open_file("keys", O_RDONLY, &s, &why);
    EXPECT_GE(file, 0) << why;
    if (file >= 0) close(file);
}

TEST_F(RuntimeDirTest, CreateReportsThatNoDescriptorIsLeft) {
    RuntimeDir dir;
    std::string why;
    ASSERT_EQ(dir.open_for((run_ + "/usage").c_str(), &why),
              TrustStatus::kTrusted);
    // The lowest free descriptor becomes the limit: open() gets EMFILE.
    const int probe = dup(0);
    ASSERT_GE(probe, 0);
    close(probe);
    rlimit saved{};
    ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &saved), 0);
    rlimit lowered = saved;
    lowered.rlim_cur = static_cast<rlim_t>(probe);
    ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &lowered), 0);
    const int fd = dir.create_file("usage", 0600, &why);
    ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &saved), 0);
    EXPECT_EQ(fd, -1);
    EXPECT_NE(why.find("open(\"" + run_ + "/usage\") failed: "),
              std::string::npos)
        << why;
    struct stat st;
    EXPECT_NE(lstat((run_ + "/usage").c_str(), &st), 0);
}

TEST_F(RuntimeDirTest, RefusalsNeedNoErrorText) {
    // A file owned by neither root nor the directory's owner, checked by a
    // caller that passes no error string.
    write_file(run_ + "/keys", 0644);
    if (geteuid() == 0) {
        ASSERT_EQ(chown((run_ + "/keys").c_str(), nobody_uid(), -1), 0);
    }
    const int fd = ::open((run_ + "/keys").c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    struct stat st;
    ASSERT_EQ(fstat(fd, &st), 0);
    const uid_t other = st.st_uid + 1;
    EXPECT_EQ(check_trusted_file(fd, other, "keys", nullptr),
              TrustStatus::kUntrusted);
    EXPECT_EQ(check_trusted_file(fd, st.st_uid, "keys", nullptr),
              TrustStatus::kTrusted);
    close(fd);
}

TEST(PathBaseName, TakesThePartAfterTheLastSlash) {
    EXPECT_STREQ(path_base_name("/run/apikey/keys"), "keys");
    EXPECT_STREQ(path_base_name("keys"), "keys");
    EXPECT_STREQ(path_base_name("/keys"), "keys");
}

}  // namespace
}  // namespace apikey
