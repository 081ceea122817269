#include "uuid.h"

#include <string>

#include <gtest/gtest.h>

namespace apikey {
namespace {

constexpr std::string_view kText = "123e4567-e89b-12d3-a456-426614174000";
constexpr Uuid kBytes = {0x12, 0x3e, 0x45, 0x67, 0xe8, 0x9b, 0x12, 0xd3,
                         0xa4, 0x56, 0x42, 0x66, 0x14, 0x17, 0x40, 0x00};

TEST(Uuid, ParsesTheCanonicalForm) {
    Uuid id{};
    ASSERT_TRUE(uuid_parse(kText, &id));
    EXPECT_EQ(id, kBytes);
}

TEST(Uuid, FormatsLowercaseCanonical) {
    EXPECT_EQ(uuid_to_string(kBytes), kText);
    char out[kUuidTextLen + 1];
    out[kUuidTextLen] = '#';
    uuid_format(kBytes, out);
    EXPECT_EQ(std::string_view(out, kUuidTextLen), kText);
    EXPECT_EQ(out[kUuidTextLen], '#') << "wrote past 36 characters";
}

TEST(Uuid, AcceptsUppercaseAndFormatsItLowercase) {
    Uuid id{};
    ASSERT_TRUE(uuid_parse("123E4567-E89B-12D3-A456-426614174000", &id));
    EXPECT_EQ(uuid_to_string(id), kText);
}

TEST(Uuid, RoundTripsEveryByteValue) {
    for (int start = 0; start < 256; start += 16) {
        Uuid id{};
        for (std::size_t i = 0; i < id.size(); ++i) {
            id[i] = static_cast<std::uint8_t>(start + i);
        }
        Uuid back{};
        ASSERT_TRUE(uuid_parse(uuid_to_string(id), &back));
        EXPECT_EQ(back, id);
    }
}

TEST(Uuid, RejectsMalformedText) {
    const std::string good(kText);
    const char* bad[] = {
        "",
        "123e4567e89b12d3a456426614174000",      // no dashes
        "{123e4567-e89b-12d3-a456-426614174000}",  // braces
        "123e4567-e89b-12d3-a456-42661417400",   // short
        "123e4567-e89b-12d3-a456-4266141740000",  // long
        "123e4567-e89b-12d3-a456_426614174000",  // wrong separator
        "123e4567e-89b-12d3-a456-426614174000",  // dash misplaced
        "g23e4567-e89b-12d3-a456-426614174000",  // not hex
        "123e4567-e89b-12d3-a456-42661417400 ",  // trailing space
    };
    for (const char* text : bad) {
        Uuid id = kBytes;
        EXPECT_FALSE(uuid_parse(text, &id)) << text;
        EXPECT_EQ(id, kBytes) << "output changed on failure: " << text;
    }
}

TEST(Uuid, RejectsEmbeddedNul) {
    std::string text(kText);
    text[3] = '\0';
    Uuid id{};
    EXPECT_FALSE(uuid_parse(text, &id));
}

}  // namespace
}  // namespace apikey
