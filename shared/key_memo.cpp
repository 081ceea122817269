#include "key_memo.h"

#include <cstring>

#include <new>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define APIKEY_HAVE_AESNI 1
#endif

#include "key_format.h"

namespace apikey {

namespace {

inline std::uint64_t rotl(std::uint64_t x, int b) noexcept {
    return (x << b) | (x >> (64 - b));
}

struct SipState {
    std::uint64_t v0, v1, v2, v3;

    void round() noexcept {
        v0 += v1;
        v1 = rotl(v1, 13);
        v1 ^= v0;
        v0 = rotl(v0, 32);
        v2 += v3;
        v3 = rotl(v3, 16);
        v3 ^= v2;
        v0 += v3;
        v3 = rotl(v3, 21);
        v3 ^= v0;
        v2 += v1;
        v1 = rotl(v1, 17);
        v1 ^= v2;
        v2 = rotl(v2, 32);
    }

    void compress(std::uint64_t m) noexcept {
        v3 ^= m;
        round();
        round();
        v0 ^= m;
    }
};

// Little-endian 64-bit load, whatever the host's byte order.
inline std::uint64_t load_le64(const unsigned char* p) noexcept {
    std::uint64_t v;
    std::memcpy(&v, p, sizeof v);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

}  // namespace

Tag128 siphash24_128(const SipKey& key, std::string_view data) noexcept {
    SipState s{key.k0 ^ 0x736f6d6570736575ULL, key.k1 ^ 0x646f72616e646f6dULL,
               key.k0 ^ 0x6c7967656e657261ULL, key.k1 ^ 0x7465646279746573ULL};
    s.v1 ^= 0xee;  // 128-bit output

    const auto* p = reinterpret_cast<const unsigned char*>(data.data());
    const std::size_t n = data.size();
    const unsigned char* const end = p + (n & ~std::size_t{7});
    for (; p != end; p += 8) {
        s.compress(load_le64(p));
    }
    std::uint64_t last = static_cast<std::uint64_t>(n) << 56;
    for (std::size_t i = 0; i < (n & 7); ++i) {
        last |= static_cast<std::uint64_t>(p[i]) << (8 * i);
    }
    s.compress(last);

    s.v2 ^= 0xee;
    s.round();
    s.round();
    s.round();
    s.round();
    Tag128 tag;
    tag.lo = s.v0 ^ s.v1 ^ s.v2 ^ s.v3;
    s.v1 ^= 0xdd;
    s.round();
    s.round();
    s.round();
    s.round();
    tag.hi = s.v0 ^ s.v1 ^ s.v2 ^ s.v3;
    return tag;
}

// --- AES-128 CBC-MAC with AES-NI ----------------------------------------

namespace {

// Three blocks: the length, the data, zero padding.
constexpr std::size_t kMacBlocks = 3;
constexpr std::size_t kMaxMacData = kMacBlocks * 16 - 1;
static_assert(kMaxKeyLen <= kMaxMacData);

#ifdef APIKEY_HAVE_AESNI

__attribute__((target("aes,sse2"))) inline __m128i expand_step(
    __m128i key, __m128i assist) noexcept {
    assist = _mm_shuffle_epi32(assist, 0xff);
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    return _mm_xor_si128(key, assist);
}

// The AES-128 key schedule (FIPS-197), eleven round keys.
__attribute__((target("aes,sse2"))) void aes128_expand(
    const std::uint8_t key[16], __m128i rk[11]) noexcept {
    rk[0] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(key));
#define APIKEY_EXPAND(i, rcon) \
    rk[i] = expand_step(rk[i - 1], _mm_aeskeygenassist_si128(rk[i - 1], rcon))
    APIKEY_EXPAND(1, 0x01);
    APIKEY_EXPAND(2, 0x02);
    APIKEY_EXPAND(3, 0x04);
    APIKEY_EXPAND(4, 0x08);
    APIKEY_EXPAND(5, 0x10);
    APIKEY_EXPAND(6, 0x20);
    APIKEY_EXPAND(7, 0x40);
    APIKEY_EXPAND(8, 0x80);
    APIKEY_EXPAND(9, 0x1b);
    APIKEY_EXPAND(10, 0x36);
#undef APIKEY_EXPAND
}

__attribute__((target("aes,sse2"))) inline __m128i aes128_encrypt(
    const __m128i rk[11], __m128i x) noexcept {
    // written out: the module is built at -O, which unrolls nothing
    x = _mm_xor_si128(x, rk[0]);
    x = _mm_aesenc_si128(x, rk[1]);
    x = _mm_aesenc_si128(x, rk[2]);
    x = _mm_aesenc_si128(x, rk[3]);
    x = _mm_aesenc_si128(x, rk[4]);
    x = _mm_aesenc_si128(x, rk[5]);
    x = _mm_aesenc_si128(x, rk[6]);
    x = _mm_aesenc_si128(x, rk[7]);
    x = _mm_aesenc_si128(x, rk[8]);
    x = _mm_aesenc_si128(x, rk[9]);
    return _mm_aesenclast_si128(x, rk[10]);
}

// Overwrites a stack buffer that held key bytes; the empty asm keeps the
// compiler from dropping the stores as dead (OPENSSL_cleanse() does the same
// through a call, 40 instructions for 48 bytes on every request).
inline void wipe(void* p, std::size_t n) noexcept {
    std::memset(p, 0, n);
    __asm__ __volatile__("" : : "r"(p) : "memory");
}

// The message is [length byte] + data, zero-padded to kMacBlocks blocks
// (prefix-free, so CBC-MAC is a PRF on it).
__attribute__((target("aes,sse2"))) Tag128 aes_cbc_mac_copy(
    const __m128i rk[11], std::string_view data) noexcept {
    alignas(16) std::uint8_t msg[kMacBlocks * 16] = {};
    msg[0] = static_cast<std::uint8_t>(data.size());
    std::memcpy(msg + 1, data.data(), data.size());
    const auto* blocks = reinterpret_cast<const __m128i*>(msg);
    __m128i x = aes128_encrypt(rk, _mm_load_si128(&blocks[0]));
    x = aes128_encrypt(rk, _mm_xor_si128(x, _mm_load_si128(&blocks[1])));
    x = aes128_encrypt(rk, _mm_xor_si128(x, _mm_load_si128(&blocks[2])));
    alignas(16) std::uint64_t out[2];
    _mm_store_si128(reinterpret_cast<__m128i*>(out), x);
    wipe(msg, sizeof msg);  // it held the key
    return Tag128{out[0], out[1]};
}

// Between two blocks: each block reads the round keys from memory, as
// the operands of its AES instructions, instead of keeping all eleven in
// registers across the blocks (eleven instructions fewer a tag).
inline void reread_round_keys() noexcept {
    __asm__ __volatile__("" : : : "memory");
}

// The shortest data aes_cbc_mac_in_place() takes.
constexpr std::size_t kMinInPlaceData = 31;

// The same blocks as aes_cbc_mac_copy(), read in place: for data of 31 to
// 47 bytes (every key), the first two blocks are plain unaligned loads
// (the first shifted by the length byte) and only the tail goes through a
// 32-byte stack buffer, to be zero-padded. The caller checks the length.
// Always inline: into KeyHashMemo::tag_of(), the per-request call.
__attribute__((target("aes,sse2"), always_inline)) inline Tag128
aes_cbc_mac_in_place(const __m128i rk[11], std::string_view data) noexcept {
    const std::size_t n = data.size();
    const auto* p = reinterpret_cast<const std::uint8_t*>(data.data());
    const __m128i b0 = _mm_or_si128(
        _mm_slli_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)), 1),
        _mm_cvtsi32_si128(static_cast<int>(n)));
    const __m128i b1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 15));
    alignas(16) std::uint8_t tail[32];
    _mm_store_si128(reinterpret_cast<__m128i*>(tail),
                    _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + n - 16)));
    _mm_store_si128(reinterpret_cast<__m128i*>(tail + 16), _mm_setzero_si128());
    // tail[0..16) = data[n-16..n): data[31..n) starts at 47 - n
    const __m128i b2 =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(tail + (47 - n)));
    __m128i x = aes128_encrypt(rk, b0);
    reread_round_keys();
    x = aes128_encrypt(rk, _mm_xor_si128(x, b1));
    reread_round_keys();
    x = aes128_encrypt(rk, _mm_xor_si128(x, b2));
    _mm_store_si128(reinterpret_cast<__m128i*>(tail), _mm_setzero_si128());
    __asm__ __volatile__("" : : "r"(tail) : "memory");  // it held the key
    alignas(16) std::uint64_t out[2];
    _mm_store_si128(reinterpret_cast<__m128i*>(out), x);
    return Tag128{out[0], out[1]};
}

// The tag of any data up to kMaxMacData bytes, for a caller without the
// AES target.
__attribute__((target("aes,sse2"), noinline)) Tag128 aes_cbc_mac_call(
    const __m128i rk[11], std::string_view data) noexcept {
    if (data.size() < kMinInPlaceData || data.size() > kMaxMacData) {
        return aes_cbc_mac_copy(rk, data);
    }
    return aes_cbc_mac_in_place(rk, data);
}

#endif  // APIKEY_HAVE_AESNI

}  // namespace

bool cpu_has_aes() noexcept {
#ifdef APIKEY_HAVE_AESNI
    unsigned a = 0, b = 0, c = 0, d = 0;
    return __get_cpuid(1, &a, &b, &c, &d) != 0 && (c & bit_AES) != 0 &&
           (d & bit_SSE2) != 0;
#else
    return false;
#endif
}

bool aes128_cbc_mac_tag(const std::uint8_t key[16], std::string_view data,
                        Tag128* tag) noexcept {
#ifdef APIKEY_HAVE_AESNI
    if (!cpu_has_aes() || data.size() > kMaxMacData) {
        return false;
    }
    __m128i rk[11];
    aes128_expand(key, rk);
    *tag = aes_cbc_mac_call(rk, data);
    OPENSSL_cleanse(rk, sizeof rk);
    return true;
#else
    (void)key;
    (void)data;
    (void)tag;
    return false;
#endif
}

// --- the memo ------------------------------------------------------------

struct KeyHashMemo::Secret {
#ifdef APIKEY_HAVE_AESNI
    __m128i round_keys[11];
#endif
    SipKey sip;
};

KeyHashMemo::KeyHashMemo(bool use_aes) noexcept {
    secret_.reset(new (std::nothrow) Secret());
    entries_.reset(new (std::nothrow) Entry[kEntries]);
    used_.reset(new (std::nothrow) std::uint8_t[kEntries]());
    if (!secret_ || !entries_ || !used_) {
        return;
    }
    std::uint8_t seed[16];
    if (RAND_bytes(seed, sizeof seed) != 1) {
        OPENSSL_cleanse(seed, sizeof seed);
        return;
    }
#ifdef APIKEY_HAVE_AESNI
    if (use_aes && cpu_has_aes()) {
        aes128_expand(seed, secret_->round_keys);
        aes_ = true;
    }
#else
    (void)use_aes;
#endif
    if (!aes_) {
        std::memcpy(&secret_->sip, seed, sizeof seed);
    }
    OPENSSL_cleanse(seed, sizeof seed);
    seeded_ = true;
}

KeyHashMemo::~KeyHashMemo() {
    if (secret_) {
        OPENSSL_cleanse(secret_.get(), sizeof(Secret));
    }
}

#ifdef APIKEY_HAVE_AESNI
__attribute__((target("aes,sse2")))
#endif
KeyHashMemo::TagBits KeyHashMemo::tag_of(std::string_view key) const noexcept {
#ifdef APIKEY_HAVE_AESNI
    // find() asks only for a key's length: no check here
    static_assert(kMinKeyLen >= kMinInPlaceData && kMaxKeyLen <= kMaxMacData);
    const Tag128 tag = aes_ ? aes_cbc_mac_in_place(secret_->round_keys, key)
                            : siphash24_128(secret_->sip, key);
#else
    const Tag128 tag = siphash24_128(secret_->sip, key);
#endif
    return static_cast<TagBits>(tag.hi) << 64 | tag.lo;
}

KeyHashMemo::Remembered* KeyHashMemo::remember(const Probe& probe,
                                               const KeyHash& hash) noexcept {
    if (!probe.usable) {
        return nullptr;
    }
    Entry& e = entries_[probe.index];
    e.tag = probe.tag;
    e.remembered.hash = hash;
    e.remembered.slot = SlotMark{};
    used_[probe.index] = 1;
    return &e.remembered;
}

void KeyHashMemo::forget_slots() noexcept {
    if (!entries_) {
        return;
    }
    for (std::size_t i = 0; i < kEntries; ++i) {
        entries_[i].remembered.slot = SlotMark{};
    }
}

}  // namespace apikey
