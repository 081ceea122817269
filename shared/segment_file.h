// A shared file mapped into memory: the base of the key-table and usage-ring
// segments. RAII; move-only; no exceptions. Every file is opened and created
// through its runtime directory's trust check (runtime_dir.h).
#pragma once

#include <cstddef>
#include <string>

namespace apikey {

enum class SegmentStatus {
    kOk = 0,
    kMissing,        // no file at the path (yet)
    kIoError,        // open/stat/mmap failed for another reason
    kBadMagic,       // not one of our segments
    kBadVersion,     // our segment, another layout version
    kBadSize,        // header and file size disagree
    kUntrusted,      // refused: see runtime_dir.h for the rule
};

const char* segment_status_name(SegmentStatus s) noexcept;

// Error text for noexcept callers, best effort (an allocation failure
// leaves it short rather than throwing). Paths and our own words only.
// `what("path") failed: <strerror(err)>`
void describe_errno(std::string* error, const char* what, const char* path,
                    int err) noexcept;
// `kind "path": message` (kind may be "")
void describe_error(std::string* error, const char* kind, const char* path,
                    const char* message) noexcept;

class MappedFile {
public:
    MappedFile() = default;
    ~MappedFile();
    MappedFile(MappedFile&& other) noexcept;
    MappedFile& operator=(MappedFile&& other) noexcept;
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;

    // Maps an existing file; `writable` selects PROT_READ|PROT_WRITE and
    // O_RDWR. On failure returns the status and sets *error (errno text,
    // or why the file or its directory is not trusted: kUntrusted).
    SegmentStatus open(const char* path, bool writable,
                       std::string* error) noexcept;
    // Creates `path` as a new file (a stale one is removed first, never
    // truncated) with exactly `mode`, owned by the directory's owner when
    // root creates it, sizes it to `size` bytes (zero-filled) and maps it
    // read-write.
    SegmentStatus create(const char* path, std::size_t size, unsigned mode,
                         std::string* error) noexcept;
    void reset() noexcept;

    void* data() const noexcept { return data_; }
    std::size_t size() const noexcept { return size_; }

private:
    void* data_ = nullptr;
    std::size_t size_ = 0;
};

}  // namespace apikey
