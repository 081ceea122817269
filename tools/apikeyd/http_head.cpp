#include "http_head.h"

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>

namespace apikey {
namespace {

constexpr std::string_view kCrlf = "\r\n";
constexpr std::string_view kHeadEnd = "\r\n\r\n";
// 18 digits cannot overflow 64 bits; no declared length that long is
// acceptable anyway.
constexpr std::size_t kMaxLengthDigits = 18;

RequestHead refused(int status, const char* error) {
    RequestHead h;
    h.verdict = HeadVerdict::kRefused;
    h.status = status;
    h.error = error;
    return h;
}

RequestHead bad_request() { return refused(400, "bad request"); }

bool is_space(char c) { return c == ' ' || c == '\t'; }

bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i) {
        char x = a[i], y = b[i];
        if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
        if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
        if (x != y) return false;
    }
    return true;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
    while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
    return s;
}

std::optional<std::uint64_t> parse_length(std::string_view v) {
    if (v.empty() || v.size() > kMaxLengthDigits) return std::nullopt;
    std::uint64_t n = 0;
    for (char c : v) {
        if (c < '0' || c > '9') return std::nullopt;
        n = n * 10 + static_cast<std::uint64_t>(c - '0');
    }
    return n;
}

// METHOD SP request-target SP HTTP/1.x, single spaces; returns the target.
std::optional<std::string_view> parse_request_line(std::string_view line) {
    std::size_t sp1 = line.find(' ');
    if (sp1 == 0 || sp1 == std::string_view::npos) return std::nullopt;
    std::size_t sp2 = line.find(' ', sp1 + 1);
    if (sp2 == sp1 + 1 || sp2 == std::string_view::npos) return std::nullopt;
    std::string_view version = line.substr(sp2 + 1);
    if (version != "HTTP/1.1" && version != "HTTP/1.0") return std::nullopt;
    return line.substr(sp1 + 1, sp2 - sp1 - 1);
}

}  // namespace

RequestHead read_request_head(std::string_view bytes,
                              const HeadLimits& limits) {
    std::size_t end = bytes.substr(0, limits.max_head_bytes).find(kHeadEnd);
    if (end == std::string_view::npos) {
        if (bytes.size() >= limits.max_head_bytes) {
            return refused(431, "request header too large");
        }
        return {};
    }
    // Every line of `head` ends with CRLF, the empty line excluded.
    std::string_view head = bytes.substr(0, end + kCrlf.size());
    std::size_t eol = head.find(kCrlf);
    std::optional<std::string_view> target =
        parse_request_line(head.substr(0, eol));
    if (!target) return bad_request();

    std::optional<std::uint64_t> length;
    bool transfer_encoding = false;
    for (std::size_t pos = eol + kCrlf.size(); pos < head.size();) {
        std::size_t next = head.find(kCrlf, pos);
        std::string_view field = head.substr(pos, next - pos);
        pos = next + kCrlf.size();
        std::size_t colon = field.find(':');
        if (colon == 0 || colon == std::string_view::npos) {
            return bad_request();
        }
        std::string_view name = field.substr(0, colon);
        // Covers obsolete line folding (a line starting with a space) and
        // a space before the colon: both are smuggling tools.
        for (char c : name) {
            if (is_space(c)) return bad_request();
        }
        std::string_view value = trim(field.substr(colon + 1));
        if (iequals(name, "Content-Length")) {
            std::optional<std::uint64_t> n = parse_length(value);
            if (!n || (length && *length != *n)) return bad_request();
            length = n;
        } else if (iequals(name, "Transfer-Encoding")) {
            transfer_encoding = true;
        }
    }
    if (transfer_encoding) {
        return length ? bad_request()
                      : refused(411, "request body needs Content-Length");
    }
    std::uint64_t body = length.value_or(0);
    if (body > limits.max_body_bytes) {
        return refused(413, "request body too large");
    }

    RequestHead h;
    h.path = std::string(target->substr(0, target->find_first_of("?#")));
    h.length = end + kHeadEnd.size() + static_cast<std::size_t>(body);
    h.verdict = bytes.size() >= h.length ? HeadVerdict::kComplete
                                         : HeadVerdict::kIncomplete;
    return h;
}

std::string error_response(int status, std::string_view message,
                           bool retry_after) {
    const char* reason = "Error";
    switch (status) {
        case 400: reason = "Bad Request"; break;
        case 408: reason = "Request Timeout"; break;
        case 411: reason = "Length Required"; break;
        case 413: reason = "Payload Too Large"; break;
        case 431: reason = "Request Header Fields Too Large"; break;
        case 500: reason = "Internal Server Error"; break;
        case 503: reason = "Service Unavailable"; break;
    }
    std::string body = nlohmann::json{{"error", message}}.dump();
    std::string out = "HTTP/1.1 " + std::to_string(status) + " " + reason +
                      "\r\nContent-Type: application/json"
                      "\r\nCache-Control: no-store"
                      "\r\nConnection: close\r\n";
    if (retry_after) out += "Retry-After: 1\r\n";
    out += "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n";
    return out + body;
}

}  // namespace apikey
