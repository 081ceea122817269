// The per-worker memo of recently seen keys' SHA-256, and the keyed 128-bit
// tags it is looked up by (SipHash-2-4-128, or AES-128 CBC-MAC where the CPU
// has AES instructions).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

#include "key_format.h"
#include "key_hash.h"
#include "key_table.h"

namespace apikey {

// SipHash-2-4 with a 128-bit tag (the reference algorithm of Aumasson and
// Bernstein): a pseudorandom function for short inputs under a secret key.
struct SipKey {
    std::uint64_t k0;
    std::uint64_t k1;
};
struct Tag128 {
    std::uint64_t lo;
    std::uint64_t hi;
};
Tag128 siphash24_128(const SipKey& key, std::string_view data) noexcept;

// The same tag from AES-128 as a CBC-MAC over exactly three blocks: a
// length byte, the data, zero padding (so inputs of up to 47 bytes map
// one-to-one onto 48-byte messages, for which CBC-MAC is a PRF). Needs the
// CPU's AES instructions (x86-64 AES-NI); returns false without them.
bool aes128_cbc_mac_tag(const std::uint8_t key[16], std::string_view data,
                        Tag128* tag) noexcept;
bool cpu_has_aes() noexcept;

// SHA-256 of the keys a worker saw recently, so that a key that comes back
// (the common case: a client sends the same key on every request) costs one
// keyed tag instead of the format check and a SHA-256.
//
// It never holds a key. An entry is the key's 128-bit tag under a secret
// of the memo's own (random, drawn once, never leaves the process) and the
// key's SHA-256, which the key table holds anyway. The tag is AES-128
// CBC-MAC where the CPU has AES instructions (a few dozen instructions per
// key), SipHash-2-4-128 elsewhere: both are PRFs, so without the secret,
// making another string collide with a remembered key takes ~2^128
// guesses, each one a request. Only well-formed keys are remembered, so a
// hit also stands for the format check.
//
// An entry can also keep where the key table held the key (a SlotMark):
// while that slot is unchanged, the caller may reuse what it read there
// instead of looking the key up again. Entries are indexed by the probe's
// `index` (0 to kEntries - 1), so a caller can keep such results in an
// array of its own beside the memo.
//
// Direct-mapped, a fixed size, no allocation after construction; a
// colliding key evicts the older one. Not thread-safe: one per thread
// (an nginx worker has one).
class KeyHashMemo {
public:
    static constexpr std::size_t kEntries = 1024;  // 64 KiB
    // The lengths a key can have: only those are looked up.
    static constexpr std::size_t kMinKeyLen =
        2 + kRandomChars + kChecksumChars;

    struct Probe {
        Tag128 tag;
        std::size_t index;
        bool usable;  // false: not a candidate (length), or no secret
    };

    // Draws the secret. Without one (the CSPRNG failed) the memo stays
    // empty and find() always misses. use_aes false: SipHash even where
    // AES instructions exist (tests).
    explicit KeyHashMemo(bool use_aes = true) noexcept;
    ~KeyHashMemo();
    KeyHashMemo(const KeyHashMemo&) = delete;
    KeyHashMemo& operator=(const KeyHashMemo&) = delete;

    // What the memo keeps for a key: its SHA-256, and where the caller
    // last found it in its key table (SlotMark::kNone: not yet).
    struct Remembered {
        KeyHash hash;
        SlotMark slot;
    };

    // The entry for `key` if it was remembered, else nullptr. Fills
    // *probe either way, for remember(). Always inline (every request):
    // the caller keeps the probe in registers and sets up no frame for it;
    // the tag itself is one call.
    __attribute__((always_inline)) Remembered* find(std::string_view key,
                                                    Probe* probe) noexcept {
        probe->usable = seeded_ && key.size() >= kMinKeyLen &&
                        key.size() <= kMaxKeyLen;
        if (!probe->usable) {
            return nullptr;
        }
        const TagBits bits = tag_of(key);
        probe->tag.lo = static_cast<std::uint64_t>(bits);
        probe->tag.hi = static_cast<std::uint64_t>(bits >> 64);
        probe->index = static_cast<std::size_t>(probe->tag.lo) & (kEntries - 1);
        Entry& e = entries_[probe->index];
        if (used_[probe->index] == 0 || e.tag.lo != probe->tag.lo ||
            e.tag.hi != probe->tag.hi) {
            return nullptr;
        }
        return &e.remembered;
    }
    // Remembers the SHA-256 of the (well-formed) key that `probe` is for,
    // with no slot; nullptr if the probe is not usable.
    Remembered* remember(const Probe& probe, const KeyHash& hash) noexcept;
    // Every entry's slot mark becomes kNone (the caller mapped another
    // key table); the hashes stay.
    void forget_slots() noexcept;

    bool uses_aes() const noexcept { return aes_; }

private:
    struct Entry {
        Tag128 tag;
        Remembered remembered;
    };
    // A tag as one 128-bit integer (lo | hi << 64): find() gets it in two
    // registers, where a Tag128 result would go through memory.
    using TagBits = unsigned __int128;
    // The key's tag under the secret (AES-128 CBC-MAC or SipHash); only
    // for kMinKeyLen to kMaxKeyLen bytes. Hidden: the nginx module calls
    // it per request, not through the PLT.
    __attribute__((visibility("hidden"))) TagBits tag_of(
        std::string_view key) const noexcept;

    struct Secret;  // AES round keys or the SipHash key
    std::unique_ptr<Secret> secret_;
    bool seeded_ = false;
    bool aes_ = false;
    std::unique_ptr<std::uint8_t[]> used_;
    std::unique_ptr<Entry[]> entries_;
};

}  // namespace apikey
