#include "key_format.h"
#include "key_hash.h"
#include "key_memo.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <openssl/evp.h>

namespace apikey {
namespace {

constexpr std::string_view kBase62 =
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

std::string hex(const KeyHash& h) {
    static const char digits[] = "0123456789abcdef";
    std::string s;
    for (std::uint8_t b : h) {
        s.push_back(digits[b >> 4]);
        s.push_back(digits[b & 0x0f]);
    }
    return s;
}

bool is_base62(char c) { return kBase62.find(c) != std::string_view::npos; }

TEST(KeyFormat, GeneratedKeyHasTheDocumentedShape) {
    const std::string key = generate_key("ak");
    ASSERT_EQ(key.size(), 2 + 1 + kRandomChars + kChecksumChars);
    EXPECT_EQ(key.substr(0, 3), "ak_");
    for (char c : key.substr(3)) {
        EXPECT_TRUE(is_base62(c)) << "unexpected character " << c;
    }
}

TEST(KeyFormat, GeneratedKeysRoundTripThroughTheChecker) {
    for (const char* prefix : {"ak", "a", "test1234", "0", "live"}) {
        for (int i = 0; i < 200; ++i) {
            const std::string key = generate_key(prefix);
            EXPECT_TRUE(key_is_well_formed(key)) << "prefix " << prefix;
        }
    }
}

TEST(KeyFormat, ChecksumIsCrc32OfEverythingBeforeItInBase62) {
    const std::string key = generate_key("ak");
    const std::string body = key.substr(0, key.size() - kChecksumChars);
    std::uint64_t v = crc32(body);
    std::string check(kChecksumChars, '0');
    for (std::size_t i = kChecksumChars; i-- > 0;) {
        check[i] = kBase62[v % 62];
        v /= 62;
    }
    EXPECT_EQ(key.substr(body.size()), check);
}

TEST(KeyFormat, GeneratedKeysAreDistinct) {
    std::set<std::string> seen;
    for (int i = 0; i < 10000; ++i) {
        EXPECT_TRUE(seen.insert(generate_key("ak")).second);
    }
}

TEST(KeyFormat, RandomCharactersCoverTheWholeAlphabet) {
    std::set<char> seen;
    for (int i = 0; i < 2000 && seen.size() < 62; ++i) {
        const std::string key = generate_key("ak");
        for (std::size_t j = 3; j < 3 + kRandomChars; ++j) {
            seen.insert(key[j]);
        }
    }
    EXPECT_EQ(seen.size(), 62u);
}

TEST(KeyFormat, EveryOneCharacterTypoIsRejected) {
    const std::string key = generate_key("ak");
    static const char kOthers[] = "_-+/=. \t\n\0\x80\xff";
    const std::string alphabet =
        std::string(kBase62) + std::string(kOthers, sizeof kOthers - 1);
    for (std::size_t pos = 0; pos < key.size(); ++pos) {
        for (char c : alphabet) {
            if (c == key[pos]) {
                continue;
            }
            std::string typo = key;
            typo[pos] = c;
            EXPECT_FALSE(key_is_well_formed(typo))
                << "substitution at " << pos << " accepted";
        }
    }
}

TEST(KeyFormat, AdjacentTranspositionsAreRejected) {
    const std::string key = generate_key("ak");
    for (std::size_t pos = 0; pos + 1 < key.size(); ++pos) {
        if (key[pos] == key[pos + 1]) {
            continue;
        }
        std::string typo = key;
        std::swap(typo[pos], typo[pos + 1]);
        EXPECT_FALSE(key_is_well_formed(typo)) << "swap at " << pos;
    }
}

TEST(KeyFormat, WrongLengthIsRejected) {
    const std::string key = generate_key("ak");
    EXPECT_FALSE(key_is_well_formed(key.substr(0, key.size() - 1)));
    EXPECT_FALSE(key_is_well_formed(key + "0"));
    EXPECT_FALSE(key_is_well_formed(key.substr(1)));
    EXPECT_FALSE(key_is_well_formed("ak_"));
}

TEST(KeyFormat, EmptyInputIsRejected) {
    EXPECT_FALSE(key_is_well_formed(""));
    EXPECT_FALSE(key_is_well_formed(std::string_view()));
}

TEST(KeyFormat, NonBase62CharactersAreRejectedEvenWithAMatchingChecksum) {
    // Build a key whose random part holds a '-' but whose checksum is right.
    std::string body = "ak_" + std::string(kRandomChars - 1, 'A') + "-";
    std::uint64_t v = crc32(body);
    std::string check(kChecksumChars, '0');
    for (std::size_t i = kChecksumChars; i-- > 0;) {
        check[i] = kBase62[v % 62];
        v /= 62;
    }
    EXPECT_FALSE(key_is_well_formed(body + check));
}

TEST(KeyFormat, BadPrefixIsRejected) {
    const std::string key = generate_key("ak");
    const std::string rest = key.substr(2);  // "_" + random + checksum
    for (const char* prefix : {"", "AK", "a-k", "a_k", "toolongpx", "ak "}) {
        EXPECT_FALSE(key_is_well_formed(prefix + rest)) << prefix;
    }
    std::string no_separator = key;
    no_separator[2] = 'x';
    EXPECT_FALSE(key_is_well_formed(no_separator));
}

TEST(KeyFormat, GarbageIsRejected) {
    std::string garbage(4096, '\0');
    for (std::size_t i = 0; i < garbage.size(); ++i) {
        garbage[i] = static_cast<char>(i * 131 + 7);
    }
    EXPECT_FALSE(key_is_well_formed(garbage));
    EXPECT_FALSE(key_is_well_formed(std::string(4096, 'a')));
    EXPECT_FALSE(key_is_well_formed("Bearer ak_"));
    const std::string key = generate_key("ak");
    EXPECT_FALSE(key_is_well_formed(std::string(4000, 'x') + key));
    EXPECT_FALSE(key_is_well_formed(" " + key));
    EXPECT_FALSE(key_is_well_formed(key + "\n"));
}

TEST(KeyFormat, PrefixValidation) {
    EXPECT_TRUE(prefix_is_valid("ak"));
    EXPECT_TRUE(prefix_is_valid("a"));
    EXPECT_TRUE(prefix_is_valid("abc12345"));
    EXPECT_FALSE(prefix_is_valid(""));
    EXPECT_FALSE(prefix_is_valid("abc123456"));
    EXPECT_FALSE(prefix_is_valid("Ak"));
    EXPECT_FALSE(prefix_is_valid("a_k"));
    EXPECT_FALSE(prefix_is_valid("a k"));
}

TEST(KeyFormat, GenerateRejectsABadPrefix) {
    EXPECT_THROW(generate_key(""), std::invalid_argument);
    EXPECT_THROW(generate_key("UPPER"), std::invalid_argument);
    EXPECT_THROW(generate_key("muchtoolong"), std::invalid_argument);
}

TEST(KeyFormat, HintIsPrefixUnderscoreAndFourRandomCharacters) {
    const std::string key = generate_key("live");
    const std::string hint = key_hint(key);
    EXPECT_EQ(hint.size(), 4 + 1 + kHintRandomChars);
    EXPECT_EQ(hint, key.substr(0, 9));
    EXPECT_EQ(hint.substr(0, 5), "live_");
}

TEST(KeyFormat, HintOfAMalformedKeyThrowsWithoutEchoingIt) {
    std::string key = generate_key("ak");
    key.back() = key.back() == '0' ? '1' : '0';
    try {
        key_hint(key);
        FAIL() << "no exception";
    } catch (const std::invalid_argument& e) {
        EXPECT_EQ(std::string(e.what()).find(key.substr(3, 8)),
                  std::string::npos);
    }
}

TEST(Crc32, MatchesTheStandardCheckValue) {
    EXPECT_EQ(crc32("123456789"), 0xCBF43926u);
    EXPECT_EQ(crc32(""), 0u);
    EXPECT_EQ(crc32("The quick brown fox jumps over the lazy dog"),
              0x414FA339u);
}

TEST(Sha256, MatchesKnownVectors) {
    KeyHash h{};
    ASSERT_TRUE(sha256_key("abc", &h));
    EXPECT_EQ(hex(h),
              "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    ASSERT_TRUE(sha256_key("", &h));
    EXPECT_EQ(hex(h),
              "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(Sha256, RepeatedCallsReuseTheContextCorrectly) {
    KeyHash first{};
    KeyHash second{};
    const std::string key = generate_key("ak");
    ASSERT_TRUE(sha256_key(key, &first));
    ASSERT_TRUE(sha256_key("something else", &second));
    ASSERT_TRUE(sha256_key(key, &second));
    EXPECT_EQ(first, second);
}

TEST(Sha256, ThreadsHashIndependently) {
    const std::string key = generate_key("ak");
    KeyHash want{};
    ASSERT_TRUE(sha256_key(key, &want));
    std::atomic<int> wrong{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&] {
            KeyHash h{};
            for (int i = 0; i < 2000; ++i) {
                if (!sha256_key(key, &h) || h != want) {
                    ++wrong;
                }
            }
        });
    }
    for (auto& t : threads) {
        t.join();
    }
    EXPECT_EQ(wrong.load(), 0);
}

// The reference implementation's vectors (github.com/veorq/SipHash,
// vectors.h): key 00..0f, message 00..(n-1).
TEST(SipHash, MatchesTheReferenceVectorsFor128BitTags) {
    SipKey key;
    std::uint8_t k[16];
    for (int i = 0; i < 16; ++i) {
        k[i] = static_cast<std::uint8_t>(i);
    }
    std::memcpy(&key, k, sizeof key);  // little-endian k0, k1
    const std::uint8_t want0[16] = {0xa3, 0x81, 0x7f, 0x04, 0xba, 0x25,
                                    0xa8, 0xe6, 0x6d, 0xf6, 0x72, 0x14,
                                    0xc7, 0x55, 0x02, 0x93};
    const std::uint8_t want1[16] = {0xda, 0x87, 0xc1, 0xd8, 0x6b, 0x99,
                                    0xaf, 0x44, 0x34, 0x76, 0x59, 0x11,
                                    0x9b, 0x22, 0xfc, 0x45};
    const char msg1[1] = {0};
    for (const auto& [data, want] :
         {std::pair{std::string_view(), want0},
          std::pair{std::string_view(msg1, 1), want1}}) {
        const Tag128 tag = siphash24_128(key, data);
        std::uint8_t got[16];
        std::memcpy(got, &tag.lo, 8);
        std::memcpy(got + 8, &tag.hi, 8);
        EXPECT_EQ(std::memcmp(got, want, 16), 0) << data.size();
    }
}

// The same tag, from OpenSSL: AES-128-CBC with a zero IV over the
// three-block encoding; the last ciphertext block is the CBC-MAC.
Tag128 openssl_cbc_mac(const std::uint8_t key[16], std::string_view data) {
    std::uint8_t msg[48] = {};
    msg[0] = static_cast<std::uint8_t>(data.size());
    std::memcpy(msg + 1, data.data(), data.size());
    std::uint8_t iv[16] = {};
    std::uint8_t out[48 + 16];
    int len = 0;
    EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
    EXPECT_EQ(EVP_EncryptInit_ex(ctx, EVP_aes_128_cbc(), nullptr, key, iv), 1);
    EVP_CIPHER_CTX_set_padding(ctx, 0);
    EXPECT_EQ(EVP_EncryptUpdate(ctx, out, &len, msg, sizeof msg), 1);
    EXPECT_EQ(len, 48);
    EVP_CIPHER_CTX_free(ctx);
    Tag128 tag;
    std::memcpy(&tag.lo, out + 32, 8);
    std::memcpy(&tag.hi, out + 40, 8);
    return tag;
}

TEST(AesCbcMac, MatchesOpenSsl) {
    if (!cpu_has_aes()) {
        GTEST_SKIP() << "no AES instructions on this CPU";
    }
    std::uint8_t key[16];
    for (int i = 0; i < 16; ++i) {
        key[i] = static_cast<std::uint8_t>(0x11 * i + 3);
    }
    std::vector<std::string> inputs = {generate_key("ak"),
                                       generate_key("test1234")};
    // every length: below 31 bytes one code path, 31-47 another (in place)
    for (std::size_t n = 0; n <= 47; ++n) {
        std::string data(n, '\0');
        for (std::size_t i = 0; i < n; ++i) {
            data[i] = static_cast<char>(0x5a ^ (i * 37 + n));
        }
        inputs.push_back(data);
    }
    for (const std::string& data : inputs) {
        Tag128 tag{};
        ASSERT_TRUE(aes128_cbc_mac_tag(key, data, &tag)) << data.size();
        const Tag128 want = openssl_cbc_mac(key, data);
        EXPECT_EQ(tag.lo, want.lo) << data.size();
        EXPECT_EQ(tag.hi, want.hi) << data.size();
    }
    Tag128 tag{};
    EXPECT_FALSE(aes128_cbc_mac_tag(key, std::string(48, 'z'), &tag));
}

void memo_remembers_keys(bool use_aes) {
    KeyHashMemo memo(use_aes);
    const std::string a = generate_key("ak");
    const std::string b = generate_key("ak");
    KeyHash ha{}, hb{};
    ASSERT_TRUE(sha256_key(a, &ha));
    ASSERT_TRUE(sha256_key(b, &hb));

    KeyHashMemo::Probe pa, pb;
    EXPECT_EQ(memo.find(a, &pa), nullptr);
    ASSERT_TRUE(pa.usable);
    EXPECT_LT(pa.index, KeyHashMemo::kEntries);
    ASSERT_NE(memo.remember(pa, ha), nullptr);
    const KeyHashMemo::Remembered* got = memo.find(a, &pa);
    ASSERT_NE(got, nullptr);
    EXPECT_EQ(got->hash, ha);
    EXPECT_EQ(got->slot.index, SlotMark::kNone) << "no slot until told";
    EXPECT_EQ(memo.find(b, &pb), nullptr);
    memo.remember(pb, hb);
    got = memo.find(b, &pb);
    ASSERT_NE(got, nullptr);
    EXPECT_EQ(got->hash, hb);

    // one character off: another tag
    std::string typo = a;
    typo[5] = typo[5] == 'A' ? 'B' : 'A';
    KeyHashMemo::Probe pt;
    EXPECT_EQ(memo.find(typo, &pt), nullptr);
    // a prefix or an extension of a remembered key
    EXPECT_EQ(memo.find(std::string_view(a).substr(0, a.size() - 1), &pt),
              nullptr);

    // never a candidate: too short or too long to be a key
    KeyHashMemo::Probe pn;
    EXPECT_EQ(memo.find("ak_short", &pn), nullptr);
    EXPECT_FALSE(pn.usable);
    EXPECT_EQ(memo.find(std::string(kMaxKeyLen + 1, 'a'), &pn), nullptr);
    EXPECT_FALSE(pn.usable);
    EXPECT_EQ(memo.remember(pn, ha), nullptr);  // ignored

    // another memo has another secret: nothing carries over
    KeyHashMemo other(use_aes);
    KeyHashMemo::Probe po{};
    EXPECT_EQ(other.find(a, &po), nullptr);
    EXPECT_TRUE(po.tag.lo != pa.tag.lo || po.tag.hi != pa.tag.hi);
}

TEST(KeyHashMemo, RemembersKeysWithSipHash) {
    KeyHashMemo memo(false);
    EXPECT_FALSE(memo.uses_aes());
    memo_remembers_keys(false);
}

TEST(KeyHashMemo, RemembersKeysWithAes) {
    KeyHashMemo memo(true);
    EXPECT_EQ(memo.uses_aes(), cpu_has_aes());
    memo_remembers_keys(true);
}

// The tag is taken in place for exactly the lengths find() asks for (no
// check of its own): the shortest and the longest key, and each of them
// with its last byte changed (the zero-padded third block).
void memo_tags_both_ends(bool use_aes) {
    KeyHashMemo memo(use_aes);
    for (std::size_t n : {KeyHashMemo::kMinKeyLen, kMaxKeyLen}) {
        std::string key(n, 'k');
        std::string other = key;
        other.back() = 'j';
        KeyHash h{};
        ASSERT_TRUE(sha256_key(key, &h));

        KeyHashMemo::Probe p{}, q{}, o{};
        EXPECT_EQ(memo.find(key, &p), nullptr) << n;
        ASSERT_TRUE(p.usable) << n;
        ASSERT_NE(memo.remember(p, h), nullptr) << n;
        const KeyHashMemo::Remembered* got = memo.find(key, &q);
        ASSERT_NE(got, nullptr) << n;
        EXPECT_EQ(got->hash, h);
        EXPECT_TRUE(q.tag.lo == p.tag.lo && q.tag.hi == p.tag.hi) << n;
        EXPECT_EQ(memo.find(other, &o), nullptr) << n;
        EXPECT_TRUE(o.usable);
        EXPECT_TRUE(o.tag.lo != p.tag.lo || o.tag.hi != p.tag.hi) << n;
    }
    KeyHashMemo::Probe p{};
    EXPECT_EQ(memo.find(std::string(KeyHashMemo::kMinKeyLen - 1, 'k'), &p),
              nullptr);
    EXPECT_FALSE(p.usable);
}

TEST(KeyHashMemo, TagsTheShortestAndLongestKeysWithSipHash) {
    memo_tags_both_ends(false);
}

TEST(KeyHashMemo, TagsTheShortestAndLongestKeysWithAes) {
    memo_tags_both_ends(true);
}

TEST(KeyHashMemo, ManyKeysEvictButNeverConfuse) {
    KeyHashMemo memo;
    std::vector<std::string> keys;
    std::vector<KeyHash> hashes;
    for (std::size_t i = 0; i < 3 * KeyHashMemo::kEntries; ++i) {
        keys.push_back(generate_key("ak"));
        hashes.emplace_back();
        ASSERT_TRUE(sha256_key(keys.back(), &hashes.back()));
        KeyHashMemo::Probe p;
        if (memo.find(keys.back(), &p) == nullptr) {
            memo.remember(p, hashes.back());
        }
    }
    std::size_t hits = 0;
    for (std::size_t i = 0; i < keys.size(); ++i) {
        KeyHashMemo::Probe p;
        if (const KeyHashMemo::Remembered* got = memo.find(keys[i], &p)) {
            ++hits;
            EXPECT_EQ(got->hash, hashes[i]) << i;
        }
    }
    EXPECT_GT(hits, 0u);
    EXPECT_LE(hits, KeyHashMemo::kEntries);
}

// A new key table mapping: every slot mark goes, every hash stays.
TEST(KeyHashMemo, ForgetSlotsDropsMarksAndKeepsHashes) {
    KeyHashMemo memo;
    const std::string a = generate_key("ak");
    KeyHash ha{};
    ASSERT_TRUE(sha256_key(a, &ha));
    KeyHashMemo::Probe p;
    ASSERT_EQ(memo.find(a, &p), nullptr);
    KeyHashMemo::Remembered* r = memo.remember(p, ha);
    ASSERT_NE(r, nullptr);
    r->slot = SlotMark{7, 42};
    ASSERT_EQ(memo.find(a, &p), r);
    EXPECT_EQ(r->slot.index, 7u);

    memo.forget_slots();
    const KeyHashMemo::Remembered* got = memo.find(a, &p);
    ASSERT_NE(got, nullptr);
    EXPECT_EQ(got->slot.index, SlotMark::kNone);
    EXPECT_EQ(got->hash, ha);

    // remembered again (evicted and back): no stale mark either
    r = memo.remember(p, ha);
    ASSERT_NE(r, nullptr);
    r->slot = SlotMark{7, 42};
    r = memo.remember(p, ha);
    EXPECT_EQ(r->slot.index, SlotMark::kNone);
}


}  // namespace
}  // namespace apikey
