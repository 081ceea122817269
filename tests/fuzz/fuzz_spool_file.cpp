// Fuzz target: apikeyd's on-disk spool (tools/apikeyd/spool.cpp) reading
// files that may be torn or corrupt, and the rollup of what it replays
// (tools/apikeyd/rollup.cpp). The files are of frame version 1 (fixed
// 288-byte records, what an upgrade finds: any version-2 magic in the
// input is made unknown first); what is replayed is appended again, as
// version 2 (spool_frame.h), and must read back the same.
//
// Input: one mode byte, then the bytes of the spool file(s).
//   mode bit 0: fix each frame's CRC before writing (so the fuzzer gets
//               past the checksum into record contents);
//   mode bit 1: also make each frame header plausible (frame magic unless
//               it is the consumed magic, a record count that fits);
//   mode bit 2: split the bytes into two spool files (at the position
//               named by the next two bytes);
//   mode bit 3: the first replay callback refuses its batch once.
// The files are written into a private directory (under $TMPDIR, default
// /dev/shm when writable) as spool-<16 digits>.bin, beside a file that is
// not a spool file.
//
// Checks:
//  - opening never crashes or throws; it keeps exactly the valid frame
//    prefix of each file (computed here independently), cuts the rest off
//    on disk, counts it in corrupt_bytes(), and unlinks files left without
//    a pending frame; the foreign file is left alone;
//  - a second open finds nothing corrupt and the same pending batches;
//  - replay() hands over every pending batch once, oldest first, each
//    record's fields as in the file; a refused batch is offered again; afterwards the
//    spool is empty, its files gone, and a third open finds nothing;
//  - a replayed batch appended again replays identically;
//  - the rollup of the storable records (the filter usage_store.cpp
//    applies first) adds up: requests per hourly/daily row sum to the
//    record count, status classes and histogram totals match, endpoint and
//    method are clean UTF-8.
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "key_format.h"
#include "rollup.h"
#include "spool.h"
#include "spool_frame.h"

#include "../usage_fields_equal.h"
#include "fuzz_check.h"

namespace {

using namespace apikey;

constexpr std::size_t kRecord = kSpoolV1RecordBytes;
constexpr std::size_t kHeader = kSpoolV1FrameHeaderBytes;
constexpr std::uint32_t kFrameMagic = spool_frame_magic(1);
constexpr std::uint32_t kConsumedMagic = spool_consumed_magic(1);

std::string g_root;  // private directory of this process
std::string g_dir;   // the spool directory inside it

std::uint32_t get_u32(const std::string& s, std::size_t at) {
    return static_cast<std::uint32_t>(static_cast<unsigned char>(s[at])) |
           static_cast<std::uint32_t>(static_cast<unsigned char>(s[at + 1])) << 8 |
           static_cast<std::uint32_t>(static_cast<unsigned char>(s[at + 2])) << 16 |
           static_cast<std::uint32_t>(static_cast<unsigned char>(s[at + 3])) << 24;
}

void put_u32(std::string* s, std::size_t at, std::uint32_t v) {
    for (int i = 0; i < 4; ++i) {
        (*s)[at + static_cast<std::size_t>(i)] = static_cast<char>(v >> (8 * i));
    }
}

std::uint32_t payload_crc(const std::string& s, std::size_t at, std::size_t n) {
    return crc32(std::string_view(s).substr(at, n));
}

// Version 2 frames are the round trip's part (spool_frame_test.cpp reads
// them): their magics become an unknown version here.
void hide_version_two(std::string* f) {
    for (std::size_t i = 0; i + 4 <= f->size(); ++i) {
        const std::uint32_t m = get_u32(*f, i);
        if (m == spool_frame_magic(2) || m == spool_consumed_magic(2)) {
            (*f)[i + 3] = 3;
        }
    }
}

// The structure-aware help: valid headers and CRCs where the bytes allow.
void fix_frames(std::string* f, bool headers, bool crcs) {
    std::size_t off = 0;
    while (off + kHeader <= f->size()) {
        std::uint32_t magic = get_u32(*f, off);
        std::uint32_t count = get_u32(*f, off + 4);
        if (headers) {
            const std::size_t fit = (f->size() - off - kHeader) / kRecord;
            if (fit == 0) break;
            if (magic != kConsumedMagic) magic = kFrameMagic;
            count = 1 + static_cast<std::uint32_t>(count % std::min<std::size_t>(fit, 8));
            put_u32(f, off, magic);
            put_u32(f, off + 4, count);
        }
        if ((magic != kFrameMagic && magic != kConsumedMagic) ||
            count == 0 || count > kSpoolMaxBatchRecords) {
            break;
        }
        const std::uint64_t payload = std::uint64_t{count} * kRecord;
        if (off + kHeader + payload > f->size()) break;
        if (crcs) put_u32(f, off + 8, payload_crc(*f, off + kHeader, payload));
        off += kHeader + payload;
    }
}

struct Expected {
    std::size_t kept = 0;  // bytes of the valid frame prefix
    std::vector<std::string> batches;  // payloads of the pending frames
};

// The documented format, read independently of spool.cpp.
Expected expect(const std::string& f) {
    Expected e;
    std::size_t off = 0;
    while (off + kHeader <= f.size()) {
        const std::uint32_t magic = get_u32(f, off);
        const std::uint32_t count = get_u32(f, off + 4);
        if ((magic != kFrameMagic && magic != kConsumedMagic) ||
            count == 0 || count > kSpoolMaxBatchRecords) {
            break;
        }
        const std::uint64_t payload = std::uint64_t{count} * kRecord;
        if (off + kHeader + payload > f.size()) break;
        if (payload_crc(f, off + kHeader, payload) != get_u32(f, off + 8)) break;
        if (magic == kFrameMagic) e.batches.push_back(f.substr(off + kHeader, payload));
        off += kHeader + payload;
    }
    e.kept = off;
    return e;
}

std::uint64_t get_u64(const std::string& s, std::size_t at) {
    return static_cast<std::uint64_t>(get_u32(s, at)) |
           static_cast<std::uint64_t>(get_u32(s, at + 4)) << 32;
}

// A replayed record against its 288 bytes in the file (version 1 layout).
bool matches_v1(const UsageRecord& r, const std::string& b, std::size_t at) {
    const auto u8 = [&](std::size_t o) {
        return static_cast<unsigned char>(b[at + o]);
    };
    const std::size_t ua = std::min<std::size_t>(u8(8), 64);
    return static_cast<unsigned>(r.result) == u8(2) &&
           r.status == (u8(4) | u8(5) << 8) &&
           r.slot == get_u32(b, at + 16) &&
           r.generation == get_u64(b, at + 24) &&
           r.sequence == get_u64(b, at + 32) &&
           static_cast<std::uint64_t>(r.time_us) == get_u64(b, at + 40) &&
           r.bytes_sent == get_u64(b, at + 56) &&
           std::memcmp(r.key_id, b.data() + at + 64, 16) == 0 &&
           r.user_agent_view() == std::string_view(b).substr(at + 224, ua);
}

bool same_record(const UsageRecord& a, const UsageRecord& b) {
    return a.slot == b.slot && a.generation == b.generation &&
           a.sequence == b.sequence && usage_fields_equal(a, b);
}

void write_file(const std::string& path, const std::string& bytes) {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    FUZZ_CHECK(fd >= 0);
    FUZZ_CHECK(::write(fd, bytes.data(), bytes.size()) ==
               static_cast<ssize_t>(bytes.size()));
    ::close(fd);
}

// Size of a file, -1 when it does not exist.
long long file_size(const std::string& path) {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) return -1;
    return static_cast<long long>(st.st_size);
}

std::vector<std::string> spool_files() {
    std::vector<std::string> out;
    if (DIR* d = ::opendir(g_dir.c_str())) {
        while (dirent* e = ::readdir(d)) {
            if (std::strncmp(e->d_name, "spool-", 6) == 0) out.push_back(e->d_name);
        }
        ::closedir(d);
    }
    return out;
}

void clear_dir() {
    for (const std::string& n : spool_files()) ::unlink((g_dir + "/" + n).c_str());
}

void remove_root() {
    clear_dir();
    ::unlink((g_dir + "/README").c_str());
    ::rmdir(g_dir.c_str());
    ::rmdir(g_root.c_str());
}

// What usage_store.cpp's storable() lets into the rollup.
bool storable(const UsageRecord& r) {
    constexpr std::int64_t kMin = 946684800LL * 1000000;   // 2000
    constexpr std::int64_t kMax = 7258118400LL * 1000000;  // 2200
    return result_is_recorded(r.result) && r.time_us >= kMin &&
           r.time_us < kMax;
}

void check_rows(const std::vector<RollupRow>& rows, std::uint64_t records) {
    std::uint64_t total = 0;
    for (const RollupRow& row : rows) {
        FUZZ_CHECK(row.requests > 0);
        FUZZ_CHECK(row.status_2xx + row.status_3xx + row.status_4xx +
                       row.status_5xx + row.status_other == row.requests);
        FUZZ_CHECK(row.latency_hist.total() == row.requests);
        FUZZ_CHECK(text_is_clean(row.endpoint) && text_is_clean(row.method));
        FUZZ_CHECK(row.endpoint.size() <= 3 * kUsageEndpointLen);
        FUZZ_CHECK(row.method.size() <= 3 * kUsageMethodLen);
        // The histogram round-trips through its PostgreSQL form.
        LatencyHistogram back;
        FUZZ_CHECK(back.add_pg_array(row.latency_hist.to_pg_array()));
        FUZZ_CHECK(back == row.latency_hist);
        std::optional<double> p95 = latency_percentile_ms(row.latency_hist, 0.95);
        FUZZ_CHECK(p95.has_value() && *p95 >= 0.0);
        total += row.requests;
    }
    for (std::size_t i = 1; i < rows.size(); ++i) {
        FUZZ_CHECK(rollup_row_less(rows[i - 1], rows[i]));
    }
    FUZZ_CHECK(total == records);
}

void check_batch(const std::vector<UsageRecord>& batch) {
    std::vector<const UsageRecord*> known;
    for (const UsageRecord& r : batch) {
        // The clamped views never reach past their arrays.
        FUZZ_CHECK(record_method(r).size() <= kUsageMethodLen);
        FUZZ_CHECK(record_endpoint(r).size() <= kUsageEndpointLen);
        FUZZ_CHECK(record_user_agent(r).size() <= kUsageUserAgentLen);
        (void)auth_result_name(r.result);
        if (storable(r)) known.push_back(&r);
    }
    BatchRollup roll = rollup_batch(known);
    check_rows(roll.hourly, known.size());
    check_rows(roll.daily, known.size());
    std::uint64_t key_requests = 0;
    for (const KeyUsage& k : roll.keys) key_requests += k.requests;
    FUZZ_CHECK(key_requests == known.size());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    std::string base = fuzz_scratch_dir();
    std::string templ = base + "/apikey-fuzz-spool-XXXXXX";
    FUZZ_CHECK(::mkdtemp(templ.data()) != nullptr);
    g_root = templ;
    g_dir = g_root + "/spool";
    FUZZ_CHECK(::mkdir(g_dir.c_str(), 0700) == 0);
    write_file(g_dir + "/README", "not a spool file\n");
    std::atexit(remove_root);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    const std::uint8_t mode = data[0];
    std::string bytes(reinterpret_cast<const char*>(data) + 1, size - 1);

    std::vector<std::string> files;
    if ((mode & 4) && bytes.size() >= 2) {
        const std::size_t at =
            (static_cast<std::size_t>(static_cast<unsigned char>(bytes[0])) |
             static_cast<std::size_t>(static_cast<unsigned char>(bytes[1])) << 8) %
            (bytes.size() - 1);
        bytes.erase(0, 2);
        files.push_back(bytes.substr(0, at));
        files.push_back(bytes.substr(at));
    } else {
        files.push_back(bytes);
    }

    clear_dir();
    std::vector<std::string> paths;
    std::vector<Expected> want;
    std::size_t want_pending = 0;
    std::uint64_t want_bytes = 0, want_corrupt = 0;
    for (std::size_t i = 0; i < files.size(); ++i) {
        hide_version_two(&files[i]);
        fix_frames(&files[i], mode & 2, mode & 1);
        // Sequence numbers 7 and 10: sorted as numbers, not by readdir.
        char name[64];
        std::snprintf(name, sizeof name, "/spool-%016d.bin", i == 0 ? 7 : 10);
        paths.push_back(g_dir + name);
        write_file(paths.back(), files[i]);
        want.push_back(expect(files[i]));
        want_pending += want.back().batches.size();
        if (!want.back().batches.empty()) want_bytes += want.back().kept;
        want_corrupt += files[i].size() - want.back().kept;
    }

    std::vector<std::string> logged;
    auto log = [&logged](const std::string& m) { logged.push_back(m); };
    {
        Spool s(g_dir, 1ull << 30, log);
        FUZZ_CHECK(s.pending_batches() == want_pending);
        FUZZ_CHECK(s.empty() == (want_pending == 0));
        FUZZ_CHECK(s.bytes() == want_bytes);
        FUZZ_CHECK(s.corrupt_bytes() == want_corrupt);
        for (std::size_t i = 0; i < paths.size(); ++i) {
            const long long on_disk = file_size(paths[i]);
            if (want[i].batches.empty()) {
                FUZZ_CHECK(on_disk == -1);  // nothing pending: removed
            } else {
                FUZZ_CHECK(on_disk == static_cast<long long>(want[i].kept));
            }
        }
        FUZZ_CHECK(file_size(g_dir + "/README") > 0);
    }

    // Opening again: the cut is on disk, nothing is corrupt any more.
    Spool s(g_dir, 1ull << 30, log);
    FUZZ_CHECK(s.corrupt_bytes() == 0 && s.corrupt_frames() == 0);
    FUZZ_CHECK(s.pending_batches() == want_pending);
    FUZZ_CHECK(s.bytes() == want_bytes);

    std::vector<std::string> expected_batches;
    for (const Expected& e : want) {
        expected_batches.insert(expected_batches.end(), e.batches.begin(), e.batches.end());
    }
    std::size_t next = 0;
    bool refuse_once = mode & 8;
    std::vector<UsageRecord> first_batch;
    auto fn = [&](const std::vector<UsageRecord>& batch) {
        FUZZ_CHECK(next < expected_batches.size());
        const std::string& b = expected_batches[next];
        FUZZ_CHECK(batch.size() * kRecord == b.size());
        for (std::size_t i = 0; i < batch.size(); ++i) {
            FUZZ_CHECK(matches_v1(batch[i], b, i * kRecord));
        }
        if (refuse_once) {
            refuse_once = false;
            return false;
        }
        check_batch(batch);
        if (next == 0) first_batch = batch;
        ++next;
        return true;
    };
    std::size_t removed = s.replay(fn);
    if (mode & 8 && want_pending > 0) {
        FUZZ_CHECK(removed == 0);  // refused the first: nothing moves
        FUZZ_CHECK(s.pending_batches() == want_pending);
        removed = s.replay(fn);
    }
    FUZZ_CHECK(removed == want_pending);
    FUZZ_CHECK(next == want_pending);
    FUZZ_CHECK(s.empty() && s.bytes() == 0);
    FUZZ_CHECK(spool_files().empty());

    // Append what came out and read it back.
    if (!first_batch.empty()) {
        FUZZ_CHECK(s.append(first_batch));
        FUZZ_CHECK(s.pending_batches() == 1);
        std::size_t seen = 0;
        FUZZ_CHECK(s.replay([&](const std::vector<UsageRecord>& batch) {
            FUZZ_CHECK(batch.size() == first_batch.size());
            for (std::size_t i = 0; i < batch.size(); ++i) {
                FUZZ_CHECK(same_record(batch[i], first_batch[i]));
            }
            ++seen;
            return true;
        }) == 1);
        FUZZ_CHECK(seen == 1 && s.empty());
    }
    {
        Spool again(g_dir, 1ull << 30, log);
        FUZZ_CHECK(again.empty() && again.corrupt_bytes() == 0);
    }
    clear_dir();
    return 0;
}
