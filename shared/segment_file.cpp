#include "segment_file.h"

#include <cerrno>
#include <cstring>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime_dir.h"

namespace apikey {

void describe_errno(std::string* error, const char* what, const char* path,
                    int err) noexcept {
    if (error == nullptr) {
        return;
    }
    try {
        *error = what;
        *error += "(\"";
        *error += path;
        *error += "\") failed: ";
        *error += std::strerror(err);
    } catch (...) {
    }
}

void describe_error(std::string* error, const char* kind, const char* path,
                    const char* message) noexcept {
    if (error == nullptr) {
        return;
    }
    try {
        *error = kind;
        if (*kind != '\0') *error += ' ';
        *error += '"';
        *error += path;
        *error += "\": ";
        *error += message;
    } catch (...) {
    }
}

namespace {

SegmentStatus segment_status_for(TrustStatus t) noexcept {
    switch (t) {
    case TrustStatus::kTrusted:
        return SegmentStatus::kOk;
    case TrustStatus::kMissing:
        return SegmentStatus::kMissing;
    case TrustStatus::kUntrusted:
        return SegmentStatus::kUntrusted;
    case TrustStatus::kIoError:
        break;
    }
    return SegmentStatus::kIoError;
}

// Maps fd and closes it either way (the mapping keeps the file alive).
SegmentStatus map_and_close(int fd, const char* path, std::size_t size,
                            bool writable, void** data,
                            std::string* error) noexcept {
    const int prot = writable ? PROT_READ | PROT_WRITE : PROT_READ;
    void* p = mmap(nullptr, size, prot, MAP_SHARED, fd, 0);
    const int err = errno;
    close(fd);
    if (p == MAP_FAILED) {
        describe_errno(error, "mmap", path, err);
        return SegmentStatus::kIoError;
    }
    *data = p;
    return SegmentStatus::kOk;
}

}  // namespace

const char* segment_status_name(SegmentStatus s) noexcept {
    switch (s) {
    case SegmentStatus::kOk:
        return "ok";
    case SegmentStatus::kMissing:
        return "missing";
    case SegmentStatus::kIoError:
        return "I/O error";
    case SegmentStatus::kBadMagic:
        return "bad magic";
    case SegmentStatus::kBadVersion:
        return "unsupported layout version";
    case SegmentStatus::kBadSize:
        return "bad size";
    case SegmentStatus::kUntrusted:
        return "refused";
    }
    return "unknown";
}

MappedFile::~MappedFile() { reset(); }

MappedFile::MappedFile(MappedFile&& other) noexcept
    : data_(other.data_), size_(other.size_) {
    other.data_ = nullptr;
    other.size_ = 0;
}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
    if (this != &other) {
        reset();
        data_ = other.data_;
        size_ = other.size_;
        other.data_ = nullptr;
        other.size_ = 0;
    }
    return *this;
}

void MappedFile::reset() noexcept {
    if (data_ != nullptr) {
        munmap(data_, size_);
        data_ = nullptr;
        size_ = 0;
    }
}

SegmentStatus MappedFile::open(const char* path, bool writable,
                               std::string* error) noexcept {
    reset();
    RuntimeDir dir;
    TrustStatus trust = dir.open_for(path, error);
    if (trust != TrustStatus::kTrusted) {
        return segment_status_for(trust);
    }
    const int fd = dir.open_file(path_base_name(path),
                                 writable ? O_RDWR : O_RDONLY, &trust, error);
    if (fd < 0) {
        return segment_status_for(trust);
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        const int err = errno;
        close(fd);
        describe_errno(error, "fstat", path, err);
        return SegmentStatus::kIoError;
    }
    if (st.st_size <= 0) {
        close(fd);
        describe_error(error, "", path, "file is empty");
        return SegmentStatus::kBadSize;
    }
    const auto size = static_cast<std::size_t>(st.st_size);
    const SegmentStatus status =
        map_and_close(fd, path, size, writable, &data_, error);
    if (status == SegmentStatus::kOk) {
        size_ = size;
    }
    return status;
}

SegmentStatus MappedFile::create(const char* path, std::size_t size,
                                 unsigned mode, std::string* error) noexcept {
    reset();
    if (size == 0) {
        describe_error(error, "", path, "cannot create an empty segment");
        return SegmentStatus::kBadSize;
    }
    RuntimeDir dir;
    const TrustStatus trust = dir.open_for(path, error);
    if (trust != TrustStatus::kTrusted) {
        return segment_status_for(trust);
    }
    const int fd = dir.create_file(path_base_name(path), mode, error);
    if (fd < 0) {
        return SegmentStatus::kIoError;
    }
    if (ftruncate(fd, static_cast<off_t>(size)) != 0) {
        const int err = errno;
        close(fd);
        describe_errno(error, "ftruncate", path, err);
        return SegmentStatus::kIoError;
    }
    const SegmentStatus status =
        map_and_close(fd, path, size, true, &data_, error);
    if (status == SegmentStatus::kOk) {
        size_ = size;
    }
    return status;
}

}  // namespace apikey
