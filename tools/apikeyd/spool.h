// A bounded on-disk spool of usage batches, for while PostgreSQL is down:
// the drainer keeps emptying the rings into it and replays it, oldest first,
// once the database is back.
//
// Layout: files `spool-<16-digit sequence>.bin` in one directory (created
// 0700), each a run of frames
//     [u32 magic][u32 record_count][u32 crc32 of payload][u32 payload bytes]
//     [payload]
// with the payload the batch's records encoded (spool_frame.h); the magic
// names the format version, so a frame of an unknown one is never misread.
// Frames of version 1 (no payload-bytes field, record_count fixed 288-byte
// records) are still read and replayed. A new file is started once the
// current one reaches ~16 MiB.
//
// Guarantees: append() returns only after the frame is on disk (fdatasync,
// and the directory fsynced when the file is new); a crash mid-append leaves
// a torn tail that the next open cuts off (and reports) while keeping every
// earlier frame. A replayed frame is marked consumed in place (its magic
// rewritten, fdatasync) and a file is unlinked once every frame in it is
// consumed, so a restart does not replay committed batches again; if the
// mark is lost to a crash the batch is replayed once more, which apikeyd's
// idempotent commit turns into duplicates, not double counts.
//
// Not thread-safe, except bytes() and empty(), which may be read from any
// thread (metrics).
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <vector>

#include "usage_record.h"

namespace apikey {

// The first four bytes of a frame: "AKS" + the format version.
inline constexpr std::uint32_t spool_frame_magic(std::uint32_t version) {
    return 0x00534b41u | version << 24;
}
// A frame that was replayed and committed: "AKC" + the version.
inline constexpr std::uint32_t spool_consumed_magic(std::uint32_t version) {
    return 0x00434b41u | version << 24;
}
inline constexpr std::uint32_t kSpoolFrameMagic =
    spool_frame_magic(kUsageRecordVersion);
inline constexpr std::uint32_t kSpoolConsumedMagic =
    spool_consumed_magic(kUsageRecordVersion);
inline constexpr std::uint64_t kSpoolFileRotateBytes = 16ull << 20;
inline constexpr std::size_t kSpoolFrameHeaderBytes = 16;
inline constexpr std::size_t kSpoolV1FrameHeaderBytes = 12;
// No batch is larger; a header that says more is corrupt.
inline constexpr std::uint32_t kSpoolMaxBatchRecords = 1u << 20;

class Spool {
public:
    // Receives one line per event worth logging (a cut tail, an I/O error).
    using LogFn = std::function<void(const std::string& message)>;
    using ReplayFn = std::function<bool(const std::vector<UsageRecord>&)>;

    // Creates `dir` (0700) if missing, scans its spool files, validates every
    // frame and truncates each file at its first bad frame. Throws
    // std::system_error when the directory cannot be created or read.
    Spool(std::string dir, std::uint64_t max_bytes, LogFn log = {});
    ~Spool();
    Spool(const Spool&) = delete;
    Spool& operator=(const Spool&) = delete;

    // Stores the batch durably. False when it would take the spool past
    // max_bytes or on an I/O error (logged; the partial frame is removed):
    // either way the batch is not stored and the caller counts the drop.
    [[nodiscard]] bool append(const std::vector<UsageRecord>& batch);

    // Calls fn with each stored batch, oldest first. When fn returns true the
    // batch is committed elsewhere and leaves the spool; at the first false
    // replay stops and keeps that batch and all later ones for the next call.
    // An exception from fn propagates and keeps the batch too. At most
    // max_batches are offered, so a caller can interleave a long replay with
    // its other work. Returns the number of batches removed.
    std::size_t replay(const ReplayFn& fn,
                       std::size_t max_batches = SIZE_MAX);

    // True when no batch is waiting.
    bool empty() const noexcept { return pending_batches_.load() == 0; }
    std::uint64_t pending_batches() const noexcept {
        return pending_batches_.load();
    }
    // Bytes of the spool files on disk (what max_bytes bounds).
    std::uint64_t bytes() const noexcept { return bytes_.load(); }
    std::uint64_t max_bytes() const noexcept { return max_bytes_; }
    // Frames and bytes cut off as corrupt or torn since construction.
    std::uint64_t corrupt_frames() const noexcept { return corrupt_frames_; }
    std::uint64_t corrupt_bytes() const noexcept { return corrupt_bytes_; }
    const std::string& dir() const noexcept { return dir_; }

private:
    struct Frame {
        std::uint64_t offset;  // of the header
        std::uint32_t records;
        std::uint32_t version;
        std::uint64_t payload_bytes;
    };
    struct File {
        std::uint64_t seq;
        std::string path;
        std::uint64_t size;
        std::deque<Frame> frames;  // not yet consumed, in order
    };

    void scan();
    void scan_file(File* file);
    bool open_new_file();
    void close_current();
    bool read_frame(const File& file, const Frame& frame,
                    std::vector<UsageRecord>* out);
    void mark_consumed(File* file, const Frame& frame);
    void remove_file(std::size_t index);
    void log(const std::string& message) const;

    std::string dir_;
    std::uint64_t max_bytes_;
    LogFn log_;
    std::vector<File> files_;  // oldest first; the last one takes appends
    int append_fd_ = -1;       // open on files_.back() when valid
    std::uint64_t next_seq_ = 1;
    std::atomic<std::uint64_t> bytes_{0};
    std::atomic<std::uint64_t> pending_batches_{0};
    std::uint64_t corrupt_frames_ = 0;
    std::uint64_t corrupt_bytes_ = 0;
};

}  // namespace apikey
