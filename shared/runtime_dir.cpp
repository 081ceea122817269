#include "runtime_dir.h"

#include <cerrno>
#include <cstring>
#include <string_view>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "segment_file.h"

namespace apikey {
namespace {

constexpr mode_t kOthersMayWrite = S_IWGRP | S_IWOTH;

// `"path": <what> (<detail> uid N)` for a refusal, best effort.
void describe_refusal(std::string* error, const char* path, const char* what,
                      unsigned long uid) noexcept {
    if (error == nullptr) {
        return;
    }
    try {
        std::string message = what;
        message += std::to_string(uid);
        describe_error(error, "refusing", path, message.c_str());
    } catch (...) {
    }
}

TrustStatus status_for_errno(int err) noexcept {
    return err == ENOENT ? TrustStatus::kMissing : TrustStatus::kIoError;
}

// Only root may change `fd`'s directory: owned by root, no group or other
// write.
bool only_root_may_change(int dir_fd) noexcept {
    struct stat st;
    return fstat(dir_fd, &st) == 0 && st.st_uid == 0 &&
           (st.st_mode & kOthersMayWrite) == 0;
}

}  // namespace

const char* path_base_name(const char* path) noexcept {
    const char* slash = std::strrchr(path, '/');
    return slash == nullptr ? path : slash + 1;
}

TrustStatus check_trusted_file(int fd, uid_t dir_owner, const char* path,
                               std::string* error) noexcept {
    struct stat st;
    if (fstat(fd, &st) != 0) {
        describe_errno(error, "fstat", path, errno);
        return TrustStatus::kIoError;
    }
    if (!S_ISREG(st.st_mode)) {
        describe_error(error, "refusing", path, "not a regular file");
        return TrustStatus::kUntrusted;
    }
    if ((st.st_mode & kOthersMayWrite) != 0) {
        describe_error(error, "refusing", path,
                       "writable by its group or others");
        return TrustStatus::kUntrusted;
    }
    if (st.st_uid != 0 && st.st_uid != dir_owner) {
        describe_refusal(error, path,
                         "owned neither by root nor by the runtime "
                         "directory's owner: uid ",
                         st.st_uid);
        return TrustStatus::kUntrusted;
    }
    return TrustStatus::kTrusted;
}

RuntimeDir::~RuntimeDir() { close_fd(); }

RuntimeDir::RuntimeDir(RuntimeDir&& other) noexcept
    : fd_(other.fd_), owner_(other.owner_), path_(std::move(other.path_)) {
    other.fd_ = -1;
}

RuntimeDir& RuntimeDir::operator=(RuntimeDir&& other) noexcept {
    if (this != &other) {
        close_fd();
        fd_ = other.fd_;
        owner_ = other.owner_;
        path_ = std::move(other.path_);
        other.fd_ = -1;
    }
    return *this;
}

void RuntimeDir::close_fd() noexcept {
    if (fd_ >= 0) {
        close(fd_);
        fd_ = -1;
    }
}

TrustStatus RuntimeDir::open_for(const char* file_path,
                                 std::string* error) noexcept {
    close_fd();
    try {
        const std::string_view p(file_path);
        const std::size_t slash = p.rfind('/');
        path_ = slash == std::string_view::npos ? std::string(".")
                : slash == 0                    ? std::string("/")
                                                : std::string(p.substr(0, slash));
    } catch (...) {
        describe_error(error, "", file_path, "out of memory");
        return TrustStatus::kIoError;
    }
    const char* dir = path_.c_str();
    // O_NOFOLLOW: the directory itself must not be a symlink (a planted
    // one would point anywhere); its parents may be (/var/run -> /run).
    const int fd =
        ::open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        const int err = errno;
        if (err == ELOOP || err == ENOTDIR) {
            describe_error(error, "refusing", dir,
                           "not a directory (a symlink?)");
            return TrustStatus::kUntrusted;
        }
        describe_errno(error, "open", dir, err);
        return status_for_errno(err);
    }
    fd_ = fd;
    struct stat st;
    if (fstat(fd_, &st) != 0) {
        describe_errno(error, "fstat", dir, errno);
        close_fd();
        return TrustStatus::kIoError;
    }
    if ((st.st_mode & kOthersMayWrite) != 0) {
        describe_error(error, "refusing", dir,
                       "runtime directory writable by its group or others "
                       "(use a private one such as /run/apikey, mode 0750)");
        close_fd();
        return TrustStatus::kUntrusted;
    }
    owner_ = st.st_uid;
    if (owner_ != 0 && owner_ != geteuid()) {
        // Another user's directory: trusted only if root put it there.
        const int parent =
            openat(fd_, "..", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        const bool rooted = parent >= 0 && only_root_may_change(parent);
        if (parent >= 0) {
            close(parent);
        }
        if (!rooted) {
            describe_refusal(error, dir,
                             "runtime directory in a parent that others "
                             "than root may change, owned by uid ",
                             owner_);
            close_fd();
            return TrustStatus::kUntrusted;
        }
    }
    return TrustStatus::kTrusted;
}

// The file's full path, for messages only ("" if it cannot be allocated).
std::string RuntimeDir::full_path(const char* name) const noexcept {
    try {
        return path_ + "/" + name;
    } catch (...) {
        return {};
    }
}

int RuntimeDir::open_file(const char* name, int flags, TrustStatus* status,
                          std::string* error) const noexcept {
    const std::string shown = full_path(name);
    // O_NONBLOCK: a fifo at the name must be refused, not waited on.
    const int fd =
        openat(fd_, name, flags | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        const int err = errno;
        if (err == ELOOP) {
            describe_error(error, "refusing", shown.c_str(), "a symlink");
            *status = TrustStatus::kUntrusted;
        } else {
            describe_errno(error, "open", shown.c_str(), err);
            *status = status_for_errno(err);
        }
        return -1;
    }
    *status = check_trusted_file(fd, owner_, shown.c_str(), error);
    if (*status != TrustStatus::kTrusted) {
        close(fd);
        return -1;
    }
    return fd;
}

int RuntimeDir::create_file(const char* name, unsigned mode,
                            std::string* error) const noexcept {
    const std::string shown = full_path(name);
    // A fresh inode: never truncate a file someone might still map. Only
    // trusted users can have left one here (the directory is checked).
    if (unlinkat(fd_, name, 0) != 0 && errno != ENOENT) {
        describe_errno(error, "unlink", shown.c_str(), errno);
        return -1;
    }
    const int fd = openat(fd_, name,
                          O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                          static_cast<mode_t>(mode));
    if (fd < 0) {
        describe_errno(error, "open", shown.c_str(), errno);
        return -1;
    }
    // open()'s mode is filtered through the umask; readers running as
    // another user depend on the exact mode.
    bool ok = fchmod(fd, static_cast<mode_t>(mode)) == 0;
    const char* what = "fchmod";
    if (ok && geteuid() == 0 && owner_ != 0) {
        // Root (the nginx master) creates on behalf of apikeyd's user.
        ok = fchown(fd, owner_, static_cast<gid_t>(-1)) == 0;
        what = "fchown";
    }
    if (!ok) {
        const int err = errno;
        close(fd);
        unlinkat(fd_, name, 0);
        describe_errno(error, what, shown.c_str(), err);
        return -1;
    }
    return fd;
}

}  // namespace apikey
