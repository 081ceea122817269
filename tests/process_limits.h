// Real faults for tests, undone when the object goes: a resource limit
// (RLIMIT_FSIZE makes a write fail with EFBIG, RLIMIT_NOFILE makes the
// next descriptor fail with EMFILE), and permission checks that apply to
// root as well.
#pragma once

#include <fcntl.h>
#include <linux/capability.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <csignal>

namespace apikey::testing {

class ScopedRlimit {
public:
    ScopedRlimit(int resource, rlim_t soft) : resource_(resource) {
        ::getrlimit(resource_, &saved_);
        rlimit lowered = saved_;
        lowered.rlim_cur = soft;
        ok_ = ::setrlimit(resource_, &lowered) == 0;
    }
    ~ScopedRlimit() { ::setrlimit(resource_, &saved_); }
    ScopedRlimit(const ScopedRlimit&) = delete;
    ScopedRlimit& operator=(const ScopedRlimit&) = delete;

    bool ok() const { return ok_; }

private:
    int resource_;
    rlimit saved_{};
    bool ok_ = false;
};

// Writes past RLIMIT_FSIZE fail with EFBIG instead of killing the process.
class FileSizeLimit {
public:
    explicit FileSizeLimit(rlim_t bytes)
        : old_(std::signal(SIGXFSZ, SIG_IGN)), limit_(RLIMIT_FSIZE, bytes) {}
    ~FileSizeLimit() = default;
    FileSizeLimit(const FileSizeLimit&) = delete;
    FileSizeLimit& operator=(const FileSizeLimit&) = delete;

    bool ok() const { return limit_.ok(); }

private:
    struct Restore {
        explicit Restore(void (*h)(int)) : handler(h) {}
        ~Restore() { std::signal(SIGXFSZ, handler); }
        void (*handler)(int);
    } old_;
    ScopedRlimit limit_;  // lifted before the handler comes back
};

// No descriptor can be created until the object goes: the soft limit is
// set to the lowest free descriptor number.
class NoMoreDescriptors {
public:
    NoMoreDescriptors() : limit_(RLIMIT_NOFILE, lowest_free()) {}
    bool ok() const { return limit_.ok(); }

private:
    static rlim_t lowest_free() {
        int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
        ::close(fd);
        return static_cast<rlim_t>(fd);
    }
    ScopedRlimit limit_;
};

// Drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from this thread's
// effective set (they stay permitted and come back at the end), so that a
// mode bit refuses root too. A normal user has neither: nothing changes.
class WithoutDacOverride {
public:
    WithoutDacOverride() {
        header_.version = _LINUX_CAPABILITY_VERSION_3;
        header_.pid = 0;
        ok_ = ::syscall(SYS_capget, &header_, saved_) == 0;
        if (!ok_) return;
        __user_cap_data_struct lowered[2] = {saved_[0], saved_[1]};
        lowered[0].effective &= ~(CAP_TO_MASK(CAP_DAC_OVERRIDE) |
                                  CAP_TO_MASK(CAP_DAC_READ_SEARCH));
        ok_ = ::syscall(SYS_capset, &header_, lowered) == 0;
    }
    ~WithoutDacOverride() {
        if (ok_) ::syscall(SYS_capset, &header_, saved_);
    }
    WithoutDacOverride(const WithoutDacOverride&) = delete;
    WithoutDacOverride& operator=(const WithoutDacOverride&) = delete;

    bool ok() const { return ok_; }

private:
    __user_cap_header_struct header_{};
    __user_cap_data_struct saved_[2]{};
    bool ok_ = false;
};

}  // namespace apikey::testing
