// Fuzz target: apikeyd's request-head reader (tools/apikeyd/http_head.cpp),
// the framing its connection loop does before cpp-httplib parses a whole
// request in memory.
//
// Byte 0 picks the limits (head 64..8192 bytes, body 0..2048); the rest is
// what a connection received so far. Properties:
//   - a complete request fits in what was received, and its path has no
//     query or fragment;
//   - a refusal is one of 400, 411, 413, 431 with a message;
//   - framing depends on no byte after the request: the request alone reads
//     the same, and every shorter prefix of it reads as incomplete;
//   - error_response() is a whole HTTP/1.1 answer whose Content-Length is
//     its body's length.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "fuzz_check.h"
#include "http_head.h"

using apikey::HeadLimits;
using apikey::HeadVerdict;
using apikey::RequestHead;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data,
                                      std::size_t size) {
    if (size < 1) return 0;
    HeadLimits limits;
    limits.max_head_bytes = 64 + (data[0] & 0x0f) * 540;  // 64 .. 8164
    limits.max_body_bytes = (data[0] >> 4) * 128;         // 0 .. 1920
    const std::string_view bytes(reinterpret_cast<const char*>(data) + 1,
                                 size - 1);

    const RequestHead h = apikey::read_request_head(bytes, limits);
    switch (h.verdict) {
    case HeadVerdict::kRefused:
        FUZZ_CHECK(h.status == 400 || h.status == 411 || h.status == 413 ||
                   h.status == 431);
        FUZZ_CHECK(h.error != nullptr && *h.error != '\0');
        break;
    case HeadVerdict::kIncomplete:
        break;
    case HeadVerdict::kComplete: {
        FUZZ_CHECK(h.length > 0 && h.length <= bytes.size());
        FUZZ_CHECK(h.path.find_first_of("?#") == std::string::npos);
        const std::string_view request = bytes.substr(0, h.length);
        const RequestHead alone = apikey::read_request_head(request, limits);
        FUZZ_CHECK(alone.verdict == HeadVerdict::kComplete);
        FUZZ_CHECK(alone.length == h.length && alone.path == h.path);
        // A few prefixes, not all: inputs stay fast.
        for (std::size_t cut : {h.length - 1, h.length / 2, std::size_t{0}}) {
            const RequestHead part =
                apikey::read_request_head(request.substr(0, cut), limits);
            FUZZ_CHECK(part.verdict == HeadVerdict::kIncomplete);
        }
        break;
    }
    }

    const std::string answer = apikey::error_response(
        h.status == 0 ? 503 : h.status, h.error, (data[0] & 1) != 0);
    const std::size_t blank = answer.find("\r\n\r\n");
    FUZZ_CHECK(answer.rfind("HTTP/1.1 ", 0) == 0 && blank != std::string::npos);
    const std::string body = answer.substr(blank + 4);
    FUZZ_CHECK(answer.find("Content-Length: " + std::to_string(body.size()) +
                           "\r\n") != std::string::npos);
    return 0;
}
