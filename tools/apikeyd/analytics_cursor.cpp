#include "analytics_cursor.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <array>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace apikey::api {
namespace {

// 128 bits of the HMAC: forging one is out of reach, the cursor stays short.
constexpr std::size_t kMacBytes = 16;
constexpr char kAlphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

std::string base64url(std::string_view in) {
    std::string out;
    std::uint32_t acc = 0;
    int bits = 0;
    for (unsigned char c : in) {
        acc = (acc << 8) | c;
        bits += 8;
        while (bits >= 6) {
            bits -= 6;
            out.push_back(kAlphabet[(acc >> bits) & 63]);
        }
    }
    if (bits > 0) out.push_back(kAlphabet[(acc << (6 - bits)) & 63]);
    return out;
}

int sextet(char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '-') return 62;
    if (c == '_') return 63;
    return -1;
}

// Unpadded base64url; nullopt on any other character or a non-canonical
// tail (so that one byte string has exactly one spelling).
std::optional<std::string> unbase64url(std::string_view in) {
    if (in.size() % 4 == 1) return std::nullopt;
    std::string out;
    std::uint32_t acc = 0;
    int bits = 0;
    for (char c : in) {
        int v = sextet(c);
        if (v < 0) return std::nullopt;
        acc = (acc << 6) | static_cast<std::uint32_t>(v);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out.push_back(static_cast<char>((acc >> bits) & 0xff));
        }
    }
    if ((acc & ((1u << bits) - 1)) != 0) return std::nullopt;
    return out;
}

// Length-prefixed fields, so that no two scopes share a byte string.
void field(std::string* out, std::string_view value) {
    *out += std::to_string(value.size());
    out->push_back(':');
    out->append(value);
}

std::string mac(std::string_view secret, const CursorScope& s,
                std::string_view payload) {
    std::string msg = "apikey-cursor-v1";
    field(&msg, s.org_id);
    field(&msg, s.sort);
    field(&msg, s.descending ? "desc" : "asc");
    field(&msg, s.status);
    field(&msg, s.dormant);
    field(&msg, std::to_string(s.dormant_days));
    field(&msg, s.q);
    field(&msg, s.spike);
    field(&msg, s.spike_ratio);
    field(&msg, std::to_string(s.spike_min));
    field(&msg, payload);
    std::array<unsigned char, EVP_MAX_MD_SIZE> md{};
    unsigned int len = 0;
    if (!HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
              reinterpret_cast<const unsigned char*>(msg.data()), msg.size(),
              md.data(), &len) ||
        len < kMacBytes) {
        throw std::runtime_error("HMAC-SHA256 failed");
    }
    return std::string(reinterpret_cast<const char*>(md.data()), kMacBytes);
}

}  // namespace

std::string encode_cursor(std::string_view secret, const CursorScope& scope,
                          const std::vector<std::string>& position) {
    std::string payload = nlohmann::json(position).dump();
    return base64url(payload) + "." + base64url(mac(secret, scope, payload));
}

std::optional<std::vector<std::string>> decode_cursor(
    std::string_view secret, const CursorScope& scope,
    std::string_view cursor) {
    std::size_t dot = cursor.find('.');
    if (dot == std::string_view::npos) return std::nullopt;
    std::optional<std::string> payload = unbase64url(cursor.substr(0, dot));
    std::optional<std::string> tag = unbase64url(cursor.substr(dot + 1));
    if (!payload || !tag || tag->size() != kMacBytes) return std::nullopt;
    std::string want = mac(secret, scope, *payload);
    if (CRYPTO_memcmp(want.data(), tag->data(), kMacBytes) != 0) {
        return std::nullopt;
    }
    // Verified: this server wrote it, so it parses; checked all the same.
    nlohmann::json j = nlohmann::json::parse(*payload, nullptr, false);
    if (!j.is_array()) return std::nullopt;
    std::vector<std::string> out;
    for (const auto& v : j) {
        if (!v.is_string()) return std::nullopt;
        out.push_back(v.get<std::string>());
    }
    return out;
}

}  // namespace apikey::api
