#include "key_format.h"
#include "key_hash.h"

#include <atomic>
#include <cstdlib>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

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

TEST(ScopeHash, IsFnv1a64) {
    EXPECT_EQ(scope_hash(""), 0xcbf29ce484222325ULL);
    EXPECT_EQ(scope_hash("a"), 0xaf63dc4c8601ec8cULL);
    EXPECT_EQ(scope_hash("foobar"), 0x85944171f73967e8ULL);
    EXPECT_NE(scope_hash("usage:read"), scope_hash("usage:write"));
}

}  // namespace
}  // namespace apikey
