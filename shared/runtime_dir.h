// The private runtime directory that holds the shared segment files, and the
// rule for trusting it and the files in it. nginx (master and workers) and
// apikeyd apply the same rule before they map anything, so a local user
// cannot plant a key table, a usage segment or a symlink for them to use.
//
// A directory is trusted when
//   - it is a directory (the last path component is not a symlink),
//   - neither its group nor others may write to it, and
//   - it is owned by root or by this process's user, or it sits in a
//     directory that only root can change (owned by root, not writable by
//     group or others), so that root created it and chose its owner.
// A file in it is trusted when
//   - it is a regular file opened without following a symlink,
//   - neither its group nor others may write to it, and
//   - it is owned by root or by the directory's owner (apikeyd's user).
// World-writable directories such as /dev/shm and /tmp fail the first
// rule: a file there could have been created by anyone.
#pragma once

#include <sys/types.h>

#include <string>

namespace apikey {

// Why a path was refused (or kTrusted). Texts come from describe_*.
enum class TrustStatus {
    kTrusted = 0,
    kMissing,    // the directory or the file does not exist
    kIoError,    // open/fstat failed for another reason
    kUntrusted,  // exists, but fails the rule above
};

// An open, checked runtime directory. Move-only; closes its descriptor.
class RuntimeDir {
public:
    RuntimeDir() = default;
    ~RuntimeDir();
    RuntimeDir(RuntimeDir&& other) noexcept;
    RuntimeDir& operator=(RuntimeDir&& other) noexcept;
    RuntimeDir(const RuntimeDir&) = delete;
    RuntimeDir& operator=(const RuntimeDir&) = delete;

    // Opens and checks the directory that holds `file_path` ("." for a
    // bare name). *error says why on failure, naming the path.
    TrustStatus open_for(const char* file_path, std::string* error) noexcept;

    // Opens `name` in the directory with `flags` (O_NOFOLLOW and O_CLOEXEC
    // are added) and checks it. Returns the descriptor, or -1 with *status
    // and *error set.
    int open_file(const char* name, int flags, TrustStatus* status,
                  std::string* error) const noexcept;

    // Creates `name` afresh (removing a stale file of that name first, and
    // refusing if one appears meanwhile: O_EXCL), with exactly `mode`, and
    // owned by the directory's owner when this process is root. Returns the
    // descriptor, or -1 with *error set.
    int create_file(const char* name, unsigned mode,
                    std::string* error) const noexcept;

    bool is_open() const noexcept { return fd_ >= 0; }
    int fd() const noexcept { return fd_; }
    uid_t owner() const noexcept { return owner_; }
    const std::string& path() const noexcept { return path_; }

private:
    void close_fd() noexcept;
    std::string full_path(const char* name) const noexcept;

    int fd_ = -1;
    uid_t owner_ = 0;
    std::string path_;
};

// The part of `path` after its last '/' (the whole path if none).
const char* path_base_name(const char* path) noexcept;

// The check of an open file against the rule above, for callers that hold
// a descriptor: kTrusted, or kUntrusted with *error saying why.
TrustStatus check_trusted_file(int fd, uid_t dir_owner, const char* path,
                               std::string* error) noexcept;

}  // namespace apikey
