#include "segment_file.h"
#include "scratch_dir.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <string>
#include <utility>

namespace apikey {
namespace {

constexpr std::size_t kBig = std::size_t{1} << 30;  // 1 GiB, sparse

// Sets a soft resource limit for the scope of the object, then puts the old
// one back. ctest runs every test in a process of its own, so nothing else
// runs under the lowered limit.
class SoftLimit {
public:
    SoftLimit(int resource, rlim_t soft) : resource_(resource) {
        getrlimit(resource_, &saved_);
        rlimit lowered = saved_;
        lowered.rlim_cur = soft;
        ok_ = setrlimit(resource_, &lowered) == 0;
    }
    ~SoftLimit() { setrlimit(resource_, &saved_); }
    SoftLimit(const SoftLimit&) = delete;
    SoftLimit& operator=(const SoftLimit&) = delete;
    bool ok() const { return ok_; }

private:
    int resource_;
    rlimit saved_{};
    bool ok_ = false;
};

// The address space this process maps now, in bytes.
rlim_t mapped_now() {
    long pages = 0;
    if (FILE* f = std::fopen("/proc/self/statm", "r")) {
        if (std::fscanf(f, "%ld", &pages) != 1) pages = 0;
        std::fclose(f);
    }
    return static_cast<rlim_t>(pages) *
           static_cast<rlim_t>(sysconf(_SC_PAGESIZE));
}

class SegmentFileTest : public ::testing::Test {
protected:
    void SetUp() override {
        run_ = scratch_.file("run");
        ASSERT_EQ(mkdir(run_.c_str(), 0750), 0);
    }
    std::string path(const char* name) const { return run_ + "/" + name; }

    apikey::testing::ScratchDir scratch_;
    std::string run_;
};

TEST(SegmentStatusName, NamesEveryStatus) {
    EXPECT_STREQ(segment_status_name(SegmentStatus::kOk), "ok");
    EXPECT_STREQ(segment_status_name(SegmentStatus::kMissing), "missing");
    EXPECT_STREQ(segment_status_name(SegmentStatus::kIoError), "I/O error");
    EXPECT_STREQ(segment_status_name(SegmentStatus::kBadMagic), "bad magic");
    EXPECT_STREQ(segment_status_name(SegmentStatus::kBadVersion),
                 "unsupported layout version");
    EXPECT_STREQ(segment_status_name(SegmentStatus::kBadSize), "bad size");
    EXPECT_STREQ(segment_status_name(SegmentStatus::kUntrusted), "refused");
    // A value from a newer peer (the status travels as an int through the
    // glue): named, not undefined.
    EXPECT_STREQ(segment_status_name(static_cast<SegmentStatus>(99)),
                 "unknown");
}

TEST(DescribeError, WritesNothingWithoutATarget) {
    // noexcept callers pass nullptr when they do not want the text.
    describe_errno(nullptr, "open", "/x", ENOENT);
    describe_error(nullptr, "kind", "/x", "message");
    std::string s;
    describe_errno(&s, "open", "/x", ENOENT);
    EXPECT_EQ(s, "open(\"/x\") failed: No such file or directory");
    describe_error(&s, "", "/x", "message");
    EXPECT_EQ(s, "\"/x\": message");
}

TEST_F(SegmentFileTest, CreateRefusesAnEmptySegment) {
    MappedFile map;
    std::string why;
    EXPECT_EQ(map.create(path("keys").c_str(), 0, 0644, &why),
              SegmentStatus::kBadSize);
    EXPECT_NE(why.find("cannot create an empty segment"), std::string::npos)
        << why;
    struct stat st;
    EXPECT_NE(lstat(path("keys").c_str(), &st), 0) << "no file was made";
}

TEST_F(SegmentFileTest, CreateInAMissingDirectoryIsMissing) {
    MappedFile map;
    std::string why;
    EXPECT_EQ(map.create((run_ + "/no-dir/keys").c_str(), 4096, 0644, &why),
              SegmentStatus::kMissing);
}

TEST_F(SegmentFileTest, CreateOverADirectoryIsAnIoError) {
    ASSERT_EQ(mkdir(path("keys").c_str(), 0750), 0);
    MappedFile map;
    std::string why;
    EXPECT_EQ(map.create(path("keys").c_str(), 4096, 0644, &why),
              SegmentStatus::kIoError);
    EXPECT_NE(why.find("unlink"), std::string::npos) << why;
}

TEST_F(SegmentFileTest, CreateReportsAFileSizeLimit) {
    // ftruncate beyond RLIMIT_FSIZE: EFBIG (the signal it also raises is
    // ignored, as a daemon would).
    signal(SIGXFSZ, SIG_IGN);
    MappedFile map;
    std::string why;
    SegmentStatus s;
    {
        SoftLimit limit(RLIMIT_FSIZE, 4096);
        ASSERT_TRUE(limit.ok());
        s = map.create(path("usage").c_str(), 1 << 20, 0600, &why);
    }
    EXPECT_EQ(s, SegmentStatus::kIoError);
    EXPECT_NE(why.find("ftruncate(\"" + path("usage") + "\") failed: "),
              std::string::npos)
        << why;
    EXPECT_EQ(map.data(), nullptr);
    EXPECT_EQ(map.size(), 0u);
}

TEST_F(SegmentFileTest, CreateAndOpenReportAFailedMapping) {
    MappedFile map;
    std::string why;
    ASSERT_EQ(map.create(path("big").c_str(), 4096, 0600, &why),
              SegmentStatus::kOk)
        << why;
    map.reset();
    ASSERT_EQ(truncate(path("big").c_str(), static_cast<off_t>(kBig)), 0);
    SegmentStatus created, opened;
    {
        // Room for the test's own allocations, not for 1 GiB more.
        SoftLimit limit(RLIMIT_AS, mapped_now() + (64 << 20));
        ASSERT_TRUE(limit.ok());
        created = map.create(path("big2").c_str(), kBig, 0600, &why);
        opened = map.open(path("big").c_str(), false, &why);
    }
    EXPECT_EQ(created, SegmentStatus::kIoError);
    EXPECT_EQ(opened, SegmentStatus::kIoError);
    EXPECT_NE(why.find("mmap(\"" + path("big") + "\") failed: "),
              std::string::npos)
        << why;
    EXPECT_EQ(map.data(), nullptr);
    // Under the old limit the same file maps.
    EXPECT_EQ(map.open(path("big").c_str(), false, &why), SegmentStatus::kOk)
        << why;
    EXPECT_EQ(map.size(), kBig);
}

TEST_F(SegmentFileTest, OpenRefusesAnEmptyFile) {
    const int fd =
        ::open(path("keys").c_str(), O_RDWR | O_CREAT | O_EXCL, 0644);
    ASSERT_GE(fd, 0);
    close(fd);
    MappedFile map;
    std::string why;
    EXPECT_EQ(map.open(path("keys").c_str(), false, &why),
              SegmentStatus::kBadSize);
    EXPECT_NE(why.find("file is empty"), std::string::npos) << why;
}

TEST_F(SegmentFileTest, MovesHandTheMappingOver) {
    MappedFile a;
    std::string why;
    ASSERT_EQ(a.create(path("keys").c_str(), 8192, 0644, &why),
              SegmentStatus::kOk)
        << why;
    void* const data = a.data();
    MappedFile b(std::move(a));
    EXPECT_EQ(a.data(), nullptr);
    EXPECT_EQ(a.size(), 0u);
    EXPECT_EQ(b.data(), data);
    EXPECT_EQ(b.size(), 8192u);

    MappedFile c;
    ASSERT_EQ(c.create(path("other").c_str(), 4096, 0644, &why),
              SegmentStatus::kOk);
    c = std::move(b);  // c's own mapping is released first
    EXPECT_EQ(c.data(), data);
    EXPECT_EQ(c.size(), 8192u);
    EXPECT_EQ(b.data(), nullptr);
    MappedFile& self = c;
    c = std::move(self);  // self-move keeps the mapping
    EXPECT_EQ(c.data(), data);
    static_cast<char*>(c.data())[8191] = 'x';  // still mapped, writable
}

}  // namespace
}  // namespace apikey
