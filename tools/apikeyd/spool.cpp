#include "spool.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <system_error>

#include "key_format.h"  // crc32
#include "spool_frame.h"

namespace apikey {
namespace {

// No payload is larger (a batch of the longest records); a header that
// says more is corrupt.
constexpr std::uint64_t kMaxPayloadBytes =
    std::uint64_t{kSpoolMaxBatchRecords} * (30 + kUsageRecordMaxBytes);
constexpr std::string_view kPrefix = "spool-";
constexpr std::string_view kSuffix = ".bin";
constexpr std::size_t kSeqDigits = 16;

std::string errno_text(int err) { return std::generic_category().message(err); }

void put_u32(unsigned char* p, std::uint32_t v) {
    p[0] = static_cast<unsigned char>(v);
    p[1] = static_cast<unsigned char>(v >> 8);
    p[2] = static_cast<unsigned char>(v >> 16);
    p[3] = static_cast<unsigned char>(v >> 24);
}

std::uint32_t get_u32(const unsigned char* p) {
    return static_cast<std::uint32_t>(p[0]) |
           static_cast<std::uint32_t>(p[1]) << 8 |
           static_cast<std::uint32_t>(p[2]) << 16 |
           static_cast<std::uint32_t>(p[3]) << 24;
}

std::uint32_t payload_crc(const void* data, std::size_t size) {
    return crc32(std::string_view(static_cast<const char*>(data), size));
}

// spool-0000000000000042.bin -> 42; false for anything else.
bool parse_name(const char* name, std::uint64_t* seq) {
    std::string_view n(name);
    if (n.size() != kPrefix.size() + kSeqDigits + kSuffix.size() ||
        n.substr(0, kPrefix.size()) != kPrefix ||
        n.substr(kPrefix.size() + kSeqDigits) != kSuffix) {
        return false;
    }
    std::uint64_t v = 0;
    for (char c : n.substr(kPrefix.size(), kSeqDigits)) {
        if (c < '0' || c > '9') return false;
        v = v * 10 + static_cast<std::uint64_t>(c - '0');
    }
    *seq = v;
    return true;
}

std::string file_name(std::uint64_t seq) {
    std::string digits = std::to_string(seq);
    if (digits.size() < kSeqDigits) {
        digits.insert(0, kSeqDigits - digits.size(), '0');
    }
    return std::string(kPrefix) + digits + std::string(kSuffix);
}

// Reads exactly n bytes at offset; false on EOF or error (errno set).
bool pread_full(int fd, void* buf, std::size_t n, std::uint64_t offset) {
    auto* p = static_cast<unsigned char*>(buf);
    while (n > 0) {
        ssize_t r = ::pread(fd, p, n, static_cast<off_t>(offset));
        if (r < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        if (r == 0) {
            errno = 0;
            return false;
        }
        p += r;
        n -= static_cast<std::size_t>(r);
        offset += static_cast<std::uint64_t>(r);
    }
    return true;
}

bool write_full(int fd, const void* buf, std::size_t n) {
    const auto* p = static_cast<const unsigned char*>(buf);
    while (n > 0) {
        ssize_t r = ::write(fd, p, n);
        if (r < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        p += r;
        n -= static_cast<std::size_t>(r);
    }
    return true;
}

bool fsync_dir(const std::string& dir) {
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return false;
    bool ok = ::fsync(fd) == 0;
    ::close(fd);
    return ok;
}

// mkdir -p; the last component gets `mode`, missing parents 0755.
void make_dirs(const std::string& dir, mode_t mode) {
    struct stat st;
    if (::stat(dir.c_str(), &st) == 0) {
        if (!S_ISDIR(st.st_mode)) {
            throw std::system_error(ENOTDIR, std::generic_category(),
                                    "spool directory " + dir);
        }
        return;
    }
    std::size_t slash = dir.find_last_of('/');
    if (slash != std::string::npos && slash > 0) {
        make_dirs(dir.substr(0, slash), 0755);
    }
    if (::mkdir(dir.c_str(), mode) != 0 && errno != EEXIST) {
        throw std::system_error(errno, std::generic_category(),
                                "cannot create spool directory " + dir);
    }
}

}  // namespace

Spool::Spool(std::string dir, std::uint64_t max_bytes, LogFn log)
    : dir_(std::move(dir)), max_bytes_(max_bytes), log_(std::move(log)) {
    while (dir_.size() > 1 && dir_.back() == '/') dir_.pop_back();
    make_dirs(dir_, 0700);
    scan();
}

Spool::~Spool() { close_current(); }

void Spool::log(const std::string& message) const {
    if (log_) log_("spool " + dir_ + ": " + message);
}

void Spool::scan() {
    DIR* d = ::opendir(dir_.c_str());
    if (d == nullptr) {
        throw std::system_error(errno, std::generic_category(),
                                "cannot read spool directory " + dir_);
    }
    std::vector<File> found;
    while (dirent* e = ::readdir(d)) {
        std::uint64_t seq;
        if (parse_name(e->d_name, &seq)) {
            found.push_back(File{seq, dir_ + "/" + e->d_name, 0, {}});
        }
    }
    ::closedir(d);
    std::sort(found.begin(), found.end(),
              [](const File& a, const File& b) { return a.seq < b.seq; });

    for (File& f : found) {
        next_seq_ = std::max(next_seq_, f.seq + 1);
        scan_file(&f);
        if (f.frames.empty()) {
            // Empty, or every batch in it already replayed.
            if (::unlink(f.path.c_str()) != 0 && errno != ENOENT) {
                log("cannot remove " + f.path + ": " + errno_text(errno));
                bytes_ += f.size;
                files_.push_back(std::move(f));
            }
            continue;
        }
        bytes_ += f.size;
        pending_batches_ += f.frames.size();
        files_.push_back(std::move(f));
    }
}

void Spool::scan_file(File* file) {
    int fd = ::open(file->path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        log("cannot open " + file->path + ": " + errno_text(errno) +
            "; leaving it alone");
        return;
    }
    struct stat st;
    if (::fstat(fd, &st) != 0) {
        log("cannot stat " + file->path + ": " + errno_text(errno));
        ::close(fd);
        return;
    }
    const auto size = static_cast<std::uint64_t>(st.st_size);
    std::uint64_t offset = 0;
    std::vector<unsigned char> payload;
    while (offset + kSpoolV1FrameHeaderBytes <= size) {
        unsigned char header[kSpoolFrameHeaderBytes] = {};
        const std::size_t avail = static_cast<std::size_t>(
            std::min<std::uint64_t>(size - offset, sizeof(header)));
        if (!pread_full(fd, header, avail, offset)) break;
        const std::uint32_t magic = get_u32(header);
        const std::uint32_t count = get_u32(header + 4);
        const std::uint32_t crc = get_u32(header + 8);
        std::uint32_t version = 0;
        for (std::uint32_t v : {std::uint32_t{1},
                                std::uint32_t{kUsageRecordVersion}}) {
            if (magic == spool_frame_magic(v) ||
                magic == spool_consumed_magic(v)) {
                version = v;
            }
        }
        if (version == 0 || count == 0 || count > kSpoolMaxBatchRecords) {
            break;
        }
        std::uint64_t header_bytes = kSpoolV1FrameHeaderBytes;
        std::uint64_t payload_bytes =
            static_cast<std::uint64_t>(count) * kSpoolV1RecordBytes;
        if (version != 1) {
            if (avail < kSpoolFrameHeaderBytes) break;
            header_bytes = kSpoolFrameHeaderBytes;
            payload_bytes = get_u32(header + 12);
            if (payload_bytes > kMaxPayloadBytes) break;
        }
        if (offset + header_bytes + payload_bytes > size) break;
        payload.resize(payload_bytes);
        if (!pread_full(fd, payload.data(), payload.size(),
                        offset + header_bytes) ||
            payload_crc(payload.data(), payload.size()) != crc) {
            break;
        }
        if (magic == spool_frame_magic(version)) {
            file->frames.push_back({offset, count, version, payload_bytes});
        }
        offset += header_bytes + payload_bytes;
    }
    if (offset < size) {
        corrupt_frames_++;
        corrupt_bytes_ += size - offset;
        log("cut a corrupt or torn tail of " + std::to_string(size - offset) +
            " bytes from " + file->path + " (kept " +
            std::to_string(file->frames.size()) + " batches before it)");
        if (::ftruncate(fd, static_cast<off_t>(offset)) != 0 ||
            ::fdatasync(fd) != 0) {
            log("cannot truncate " + file->path + ": " + errno_text(errno));
            file->size = size;
            ::close(fd);
            return;
        }
    }
    file->size = offset;
    ::close(fd);
}

bool Spool::open_new_file() {
    close_current();
    const std::uint64_t seq = next_seq_++;
    std::string path = dir_ + "/" + file_name(seq);
    int fd = ::open(path.c_str(),
                    O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0) {
        log("cannot create " + path + ": " + errno_text(errno));
        return false;
    }
    if (!fsync_dir(dir_)) {
        log("cannot fsync " + dir_ + ": " + errno_text(errno));
        ::close(fd);
        ::unlink(path.c_str());
        return false;
    }
    files_.push_back(File{seq, std::move(path), 0, {}});
    append_fd_ = fd;
    return true;
}

void Spool::close_current() {
    if (append_fd_ >= 0) {
        ::close(append_fd_);
        append_fd_ = -1;
    }
}

bool Spool::append(const std::vector<UsageRecord>& batch) {
    if (batch.empty()) return true;
    if (batch.size() > kSpoolMaxBatchRecords) {
        log("batch of " + std::to_string(batch.size()) +
            " records is larger than a spool frame holds");
        return false;
    }
    std::vector<unsigned char> payload;
    encode_spool_payload(batch, &payload);
    const std::uint64_t payload_bytes = payload.size();
    const std::uint64_t frame_bytes = kSpoolFrameHeaderBytes + payload_bytes;
    if (payload_bytes > kMaxPayloadBytes) return false;  // cannot happen
    if (bytes_.load() + frame_bytes > max_bytes_) return false;

    if (append_fd_ < 0 || files_.back().size >= kSpoolFileRotateBytes) {
        if (!open_new_file()) return false;
    }
    File& file = files_.back();

    std::vector<unsigned char> frame(frame_bytes);
    std::memcpy(frame.data() + kSpoolFrameHeaderBytes, payload.data(),
                payload_bytes);
    put_u32(frame.data(), kSpoolFrameMagic);
    put_u32(frame.data() + 4, static_cast<std::uint32_t>(batch.size()));
    put_u32(frame.data() + 8, payload_crc(payload.data(), payload_bytes));
    put_u32(frame.data() + 12, static_cast<std::uint32_t>(payload_bytes));

    if (!write_full(append_fd_, frame.data(), frame.size()) ||
        ::fdatasync(append_fd_) != 0) {
        int err = errno;
        // Take the partial frame back, and start a fresh file next time.
        bool cut = ::ftruncate(append_fd_, static_cast<off_t>(file.size)) == 0;
        log("cannot write " + file.path + ": " + errno_text(err) +
            (cut ? "" : "; the torn frame is cut at the next start"));
        close_current();
        return false;
    }
    file.frames.push_back({file.size,
                           static_cast<std::uint32_t>(batch.size()),
                           kUsageRecordVersion, payload_bytes});
    file.size += frame_bytes;
    bytes_ += frame_bytes;
    pending_batches_++;
    return true;
}

bool Spool::read_frame(const File& file, const Frame& frame,
                       std::vector<UsageRecord>* out) {
    int fd = ::open(file.path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        log("cannot open " + file.path + ": " + errno_text(errno));
        return false;
    }
    const std::size_t header_bytes = frame.version == 1
                                         ? kSpoolV1FrameHeaderBytes
                                         : kSpoolFrameHeaderBytes;
    unsigned char header[kSpoolFrameHeaderBytes];
    std::vector<unsigned char> payload(frame.payload_bytes);
    bool ok = pread_full(fd, header, header_bytes, frame.offset) &&
              pread_full(fd, payload.data(), payload.size(),
                         frame.offset + header_bytes);
    int err = errno;
    ::close(fd);
    if (!ok) {
        log("cannot read " + file.path + ": " +
            (err ? errno_text(err) : std::string("file shrank")));
        return false;
    }
    if (get_u32(header) != spool_frame_magic(frame.version) ||
        get_u32(header + 4) != frame.records ||
        get_u32(header + 8) != payload_crc(payload.data(), payload.size())) {
        log("batch at offset " + std::to_string(frame.offset) + " of " +
            file.path + " changed on disk since it was checked");
        return false;
    }
    if (!decode_spool_payload(frame.version, payload.data(), payload.size(),
                              frame.records, out)) {
        // Its CRC holds, so it will never decode: skipped, not retried.
        log("batch at offset " + std::to_string(frame.offset) + " of " +
            file.path + " does not decode; skipped");
        out->clear();
        corrupt_frames_++;
        corrupt_bytes_ += payload.size();
    }
    return true;
}

void Spool::mark_consumed(File* file, const Frame& frame) {
    unsigned char magic[4];
    put_u32(magic, spool_consumed_magic(frame.version));
    int fd = ::open(file->path.c_str(), O_WRONLY | O_CLOEXEC);
    bool ok = fd >= 0 &&
              ::pwrite(fd, magic, sizeof(magic),
                       static_cast<off_t>(frame.offset)) == sizeof(magic) &&
              ::fdatasync(fd) == 0;
    int err = errno;
    if (fd >= 0) ::close(fd);
    if (!ok) {
        // Only costs a second replay (duplicates) after a restart.
        log("cannot mark a replayed batch in " + file->path + ": " +
            errno_text(err));
    }
}

void Spool::remove_file(std::size_t index) {
    if (index + 1 == files_.size()) close_current();
    File& f = files_[index];
    if (::unlink(f.path.c_str()) != 0 && errno != ENOENT) {
        log("cannot remove " + f.path + ": " + errno_text(errno));
    }
    bytes_ -= f.size;
    files_.erase(files_.begin() + static_cast<std::ptrdiff_t>(index));
}

std::size_t Spool::replay(const ReplayFn& fn, std::size_t max_batches) {
    std::size_t removed = 0;
    std::vector<UsageRecord> batch;
    while (!files_.empty()) {
        if (files_.front().frames.empty()) {
            remove_file(0);  // replayed to the end (or never written)
            continue;
        }
        if (removed == max_batches) break;
        const Frame frame = files_.front().frames.front();
        if (!read_frame(files_.front(), frame, &batch)) {
            break;  // unreadable now: keep everything for a later call
        }
        if (!batch.empty() && !fn(batch)) break;
        // fn may have appended (files_ can have grown): index again.
        File& file = files_.front();
        mark_consumed(&file, frame);
        file.frames.pop_front();
        pending_batches_--;
        removed++;
    }
    return removed;
}

}  // namespace apikey
