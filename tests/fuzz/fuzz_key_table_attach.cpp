// Fuzz target: KeyTableReader::attach() and lookup() (shared/key_table.cpp)
// on hostile key-table files. Every nginx worker maps this file; a file
// that is truncated, from another version, or plain garbage must be
// rejected, and one that passes validation must never make a lookup read
// outside the mapping, loop forever, or hand back a torn or made-up entry.
//
// Input: one mode byte, then the file's bytes.
//   mode bit 0: give the bytes a valid header (magic, layout version, slot
//               and header size, a power-of-two capacity matching the
//               file size, which is cut to fit), so the fuzzer spends its
//               time on the slots;
//   mode bit 1: keep odd slot sequences (a writer mid-update, or one that
//               died there). Without it every sequence is made even: an
//               odd one costs each lookup the documented ~10k retries with
//               sched_yield before it gives up, which is correct but slow
//               to fuzz, so only inputs that ask for it pay;
//   mode bit 2: write the file shorter than its header claims (truncated
//               by the mode, not the input length).
//
// Checks: attach() returns kOk exactly when the header is one this reader
// accepts (checked here independently), otherwise the reader stays
// detached with an error text; never a crash. When attached: the header
// accessors work; a lookup of every slot's hash, and of a few hashes from
// the input, returns false or a byte-exact copy of a live slot with that
// hash (never a tombstone, never an empty slot); has_scope() and
// name_view() stay inside the entry however corrupt scope_count and
// name_len are. detach() and attach() again work on the same reader.
#include <fcntl.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "key_table.h"

#include "fuzz_check.h"

namespace {

using namespace apikey;

constexpr std::size_t kSlot = sizeof(KeyTableSlot);
// Offsets inside the header and a slot (the layout is the contract).
constexpr std::size_t kMagicAt = offsetof(KeyTableHeader, magic);
constexpr std::size_t kVersionAt = offsetof(KeyTableHeader, layout_version);
constexpr std::size_t kSlotSizeAt = offsetof(KeyTableHeader, slot_size);
constexpr std::size_t kCapacityAt = offsetof(KeyTableHeader, capacity);
constexpr std::size_t kHeaderSizeAt = offsetof(KeyTableHeader, header_size);
constexpr std::size_t kSeqAt = offsetof(KeyTableSlot, seq);
constexpr std::size_t kStateAt = offsetof(KeyTableSlot, state);
constexpr std::size_t kInfoAt = offsetof(KeyTableSlot, info);

std::string g_dir;   // private scratch directory
std::string g_path;  // the key table in it

template <typename T>
T get(const std::string& s, std::size_t at) {
    T v{};
    if (at + sizeof v <= s.size()) std::memcpy(&v, s.data() + at, sizeof v);
    return v;
}

template <typename T>
void put(std::string* s, std::size_t at, T v) {
    if (at + sizeof v <= s->size()) std::memcpy(s->data() + at, &v, sizeof v);
}

void give_valid_header(std::string* f) {
    if (f->size() < kKeyTableHeaderSize + kSlot) f->resize(kKeyTableHeaderSize + kSlot);
    std::uint64_t cap = 1;
    while (kKeyTableHeaderSize + 2 * cap * kSlot <= f->size()) cap *= 2;
    f->resize(kKeyTableHeaderSize + cap * kSlot);
    put(f, kMagicAt, kKeyTableMagic);
    put(f, kVersionAt, kKeyTableLayoutVersion);
    put(f, kSlotSizeAt, static_cast<std::uint32_t>(kSlot));
    put(f, kCapacityAt, cap);
    put(f, kHeaderSizeAt, static_cast<std::uint64_t>(kKeyTableHeaderSize));
}

// What the reader must accept, from the documented header alone.
bool header_acceptable(const std::string& f) {
    if (f.size() < kKeyTableHeaderSize) return false;
    const std::uint64_t cap = get<std::uint64_t>(f, kCapacityAt);
    return get<std::uint64_t>(f, kMagicAt) == kKeyTableMagic &&
           get<std::uint32_t>(f, kVersionAt) == kKeyTableLayoutVersion &&
           get<std::uint32_t>(f, kSlotSizeAt) == kSlot &&
           get<std::uint64_t>(f, kHeaderSizeAt) == kKeyTableHeaderSize &&
           cap != 0 && (cap & (cap - 1)) == 0 &&
           cap <= (f.size() - kKeyTableHeaderSize) / kSlot &&
           kKeyTableHeaderSize + cap * kSlot == f.size();
}

void write_file(const std::string& bytes) {
    // A fresh inode each time, as apikeyd publishes (never rewrite a file
    // that is mapped).
    ::unlink(g_path.c_str());
    int fd = ::open(g_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    FUZZ_CHECK(fd >= 0);
    FUZZ_CHECK(::write(fd, bytes.data(), bytes.size()) ==
               static_cast<ssize_t>(bytes.size()));
    ::close(fd);
}

void remove_file() {
    ::unlink(g_path.c_str());
    ::rmdir(g_dir.c_str());
}

void check_entry(const KeyInfo& got, const KeyHash& hash, const std::string& f,
                 std::uint64_t cap) {
    FUZZ_CHECK(std::memcmp(got.key_hash.data(), hash.data(), hash.size()) == 0);
    // A byte-exact copy of a live slot with that hash.
    bool found = false;
    for (std::uint64_t i = 0; i < cap && !found; ++i) {
        const std::size_t at = kKeyTableHeaderSize + i * kSlot;
        found = get<std::uint32_t>(f, at + kStateAt) ==
                    static_cast<std::uint32_t>(SlotState::kLive) &&
                std::memcmp(f.data() + at + kInfoAt, &got, sizeof got) == 0;
    }
    FUZZ_CHECK(found);
    FUZZ_CHECK(got.name_view().size() <= kMaxNameLen);
    FUZZ_CHECK(got.name_view().data() == got.name);
    // has_scope() looks at no more than kMaxScopes hashes.
    const std::size_t n = got.scope_count < kMaxScopes ? got.scope_count : kMaxScopes;
    for (std::size_t i = 0; i < kMaxScopes; ++i) {
        FUZZ_CHECK(got.has_scope(got.scope_hashes[i]) ||
                   i >= n);  // a listed scope is found
    }
    if (n == 0) FUZZ_CHECK(!got.has_scope(got.scope_hashes[0]));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    // A private directory: a file straight in /dev/shm or /tmp is refused.
    std::string templ = fuzz_scratch_dir() + "/apikey-fuzz-keys-XXXXXX";
    FUZZ_CHECK(::mkdtemp(templ.data()) != nullptr);
    g_dir = templ;
    g_path = g_dir + "/keys";
    std::atexit(remove_file);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    const std::uint8_t mode = data[0];
    std::string f(reinterpret_cast<const char*>(data) + 1, size - 1);
    if (mode & 1) give_valid_header(&f);
    const std::uint64_t claimed = get<std::uint64_t>(f, kCapacityAt);
    if (!(mode & 2) && f.size() >= kKeyTableHeaderSize) {
        for (std::size_t at = kKeyTableHeaderSize; at + kSlot <= f.size(); at += kSlot) {
            put(&f, at + kSeqAt, get<std::uint32_t>(f, at + kSeqAt) & ~1u);
        }
    }
    if ((mode & 4) && !f.empty()) f.resize(f.size() - 1 - (mode >> 3) % f.size());

    write_file(f);
    const bool acceptable = header_acceptable(f);

    KeyTableReader reader;
    reader.set_busy_wait_ns(1000 * 1000);  // odd slots: give up fast
    std::string error;
    SegmentStatus st = reader.attach(g_path.c_str(), &error);
    FUZZ_CHECK((st == SegmentStatus::kOk) == acceptable);
    if (st != SegmentStatus::kOk) {
        FUZZ_CHECK(!reader.attached());
        FUZZ_CHECK(!error.empty());
        FUZZ_CHECK(segment_status_name(st) != nullptr);
        KeyInfo out{};
        KeyHash h{};
        FUZZ_CHECK(!reader.lookup(h, &out));
        FUZZ_CHECK(!reader.ready() && !reader.superseded());
        FUZZ_CHECK(reader.generation() == 0 && reader.live_count() == 0);
        return 0;
    }
    FUZZ_CHECK(reader.attached());
    (void)reader.ready();
    (void)reader.superseded();
    (void)reader.generation();
    (void)reader.live_count();
    (void)reader.synced_at_us();

    const std::uint64_t cap = claimed;
    std::vector<KeyHash> probes;
    for (std::uint64_t i = 0; i < cap; ++i) {
        KeyHash h;
        std::memcpy(h.data(), f.data() + kKeyTableHeaderSize + i * kSlot + kInfoAt,
                    h.size());
        probes.push_back(h);
    }
    // Hashes that are in no slot, or only in a dead one.
    KeyHash h{};
    probes.push_back(h);
    for (std::size_t i = 0; i + h.size() <= 64 && i + h.size() <= f.size(); i += 16) {
        std::memcpy(h.data(), f.data() + i, h.size());
        probes.push_back(h);
    }
    for (const KeyHash& p : probes) {
        KeyInfo out{};
        if (reader.lookup(p, &out)) check_entry(out, p, f, cap);
    }

    // The same reader again, as a worker does when the file is superseded.
    reader.detach();
    FUZZ_CHECK(!reader.attached());
    FUZZ_CHECK(reader.attach(g_path.c_str(), nullptr) == SegmentStatus::kOk);
    KeyInfo out{};
    if (reader.lookup(probes.front(), &out)) check_entry(out, probes.front(), f, cap);
    return 0;
}
