// Fuzz target: the runtime-directory trust rule (shared/runtime_dir.h).
//
// Each input lays out a small tree and asks RuntimeDir / MappedFile about it:
//   bytes 0-1: the parent directory's mode bits (& 07777, little-endian)
//   bytes 2-3: the runtime directory's mode bits
//   byte 4:    what stands at the file's name: 0 nothing, 1 a regular file,
//              2 a symlink to a regular file, 3 a directory, 4 a fifo
//   bytes 5-6: the file's mode bits
//   byte 7:    owners when running as root: bit 0 the runtime directory is
//              nobody's, bit 1 the file is nobody's, bit 2 the parent is
//              nobody's
//   byte 8:    bit 0: then create() a file at the name
//
// Properties: open() accepts exactly what an independent reading of the
// rule (lstat/stat below) accepts; a refusal is kUntrusted or kMissing,
// never a mapping; create() in an accepted directory leaves a regular file
// with exactly the asked mode at the name and never writes through a
// symlink.

#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "fuzz_check.h"
#include "runtime_dir.h"
#include "segment_file.h"

namespace {

std::string g_base;  // private scratch directory, made once
uid_t g_nobody = 65534;

constexpr mode_t kOthersMayWrite = S_IWGRP | S_IWOTH;

unsigned mode12(const std::uint8_t* p) { return (p[0] | (p[1] << 8)) & 07777; }

void remove_tree() {
    const std::string parent = g_base + "/p";
    const std::string run = parent + "/run";
    unlink((run + "/f").c_str());
    rmdir((run + "/f").c_str());
    unlink((run + "/target").c_str());
    rmdir(run.c_str());
    rmdir(parent.c_str());
}

// The rule, read from lstat/stat of the paths (not from descriptors).
apikey::SegmentStatus expected(const std::string& parent,
                               const std::string& run,
                               const std::string& file) {
    using apikey::SegmentStatus;
    struct stat d, p, f;
    if (lstat(run.c_str(), &d) != 0) return SegmentStatus::kMissing;
    if (!S_ISDIR(d.st_mode) || (d.st_mode & kOthersMayWrite) != 0) {
        return SegmentStatus::kUntrusted;
    }
    if (d.st_uid != 0 && d.st_uid != geteuid()) {
        FUZZ_CHECK(stat(parent.c_str(), &p) == 0);
        if (p.st_uid != 0 || (p.st_mode & kOthersMayWrite) != 0) {
            return SegmentStatus::kUntrusted;
        }
    }
    if (lstat(file.c_str(), &f) != 0) return SegmentStatus::kMissing;
    if (!S_ISREG(f.st_mode) || (f.st_mode & kOthersMayWrite) != 0 ||
        (f.st_uid != 0 && f.st_uid != d.st_uid)) {
        return SegmentStatus::kUntrusted;
    }
    return f.st_size == 0 ? SegmentStatus::kBadSize : SegmentStatus::kOk;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    std::string templ = fuzz_scratch_dir() + "/apikey-fuzz-rundir.XXXXXX";
    FUZZ_CHECK(::mkdtemp(templ.data()) != nullptr);
    g_base = templ;
    if (const passwd* pw = getpwnam("nobody")) g_nobody = pw->pw_uid;
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data,
                                      std::size_t size) {
    if (size < 9) return 0;
    const unsigned parent_mode = mode12(data);
    const unsigned run_mode = mode12(data + 2);
    const unsigned kind = data[4] % 5;
    const unsigned file_mode = mode12(data + 5);
    const unsigned owners = geteuid() == 0 ? data[7] : 0;
    const bool do_create = (data[8] & 1) != 0;

    remove_tree();
    const std::string parent = g_base + "/p";
    const std::string run = parent + "/run";
    const std::string file = run + "/f";
    FUZZ_CHECK(mkdir(parent.c_str(), 0700) == 0);
    FUZZ_CHECK(mkdir(run.c_str(), 0700) == 0);
    // Built while both are 0700, then given their modes and owners.
    if (kind == 1 || kind == 2) {
        const std::string real = kind == 1 ? file : run + "/target";
        const int fd = ::open(real.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
        FUZZ_CHECK(fd >= 0);
        FUZZ_CHECK(ftruncate(fd, 4096) == 0);
        FUZZ_CHECK(fchmod(fd, file_mode) == 0);
        if (owners & 2) FUZZ_CHECK(fchown(fd, g_nobody, -1) == 0);
        close(fd);
        if (kind == 2) FUZZ_CHECK(symlink(real.c_str(), file.c_str()) == 0);
    } else if (kind == 3) {
        FUZZ_CHECK(mkdir(file.c_str(), file_mode) == 0);
    } else if (kind == 4) {
        FUZZ_CHECK(mkfifo(file.c_str(), file_mode) == 0);
    }
    FUZZ_CHECK(chmod(run.c_str(), run_mode) == 0);
    FUZZ_CHECK(chmod(parent.c_str(), parent_mode) == 0);
    if (owners & 1) FUZZ_CHECK(chown(run.c_str(), g_nobody, -1) == 0);
    if (owners & 4) FUZZ_CHECK(chown(parent.c_str(), g_nobody, -1) == 0);

    const apikey::SegmentStatus want = expected(parent, run, file);
    apikey::MappedFile map;
    std::string why;
    const apikey::SegmentStatus got = map.open(file.c_str(), false, &why);
    FUZZ_CHECK(got == want);
    FUZZ_CHECK((got == apikey::SegmentStatus::kOk) == (map.data() != nullptr));
    FUZZ_CHECK(got == apikey::SegmentStatus::kOk || !why.empty());
    map.reset();

    if (do_create && kind != 3) {
        apikey::RuntimeDir dir;
        const bool trusted =
            dir.open_for(file.c_str(), &why) == apikey::TrustStatus::kTrusted;
        const apikey::SegmentStatus made =
            map.create(file.c_str(), 8192, 0640, &why);
        // Root may create in any trusted directory; another user only where
        // the directory's mode lets it, which a trusted one does for its
        // owner alone.
        if (trusted && geteuid() == 0) FUZZ_CHECK(made == apikey::SegmentStatus::kOk);
        if (!trusted) FUZZ_CHECK(made != apikey::SegmentStatus::kOk);
        if (made == apikey::SegmentStatus::kOk) {
            struct stat st;
            FUZZ_CHECK(lstat(file.c_str(), &st) == 0);
            FUZZ_CHECK(S_ISREG(st.st_mode));
            FUZZ_CHECK((st.st_mode & 07777) == 0640);
            if (kind == 2) {
                // The old symlink's target kept its own content and size.
                FUZZ_CHECK(stat((run + "/target").c_str(), &st) == 0);
                FUZZ_CHECK(st.st_size == 4096);
            }
        }
    }
    // Let cleanup reach everything again.
    chmod(parent.c_str(), 0700);
    chmod(run.c_str(), 0700);
    return 0;
}
