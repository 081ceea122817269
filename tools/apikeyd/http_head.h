// The head of one HTTP/1.x request, read by apikeyd's connection loop
// before any worker sees the request: where the request ends, which path it
// asks for, and whether it is refused without reading further. No route of
// apikeyd takes a body, so a declared body beyond a few bytes is refused
// rather than read. Also the answers the loop gives by itself.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace apikey {

struct HeadLimits {
    // Request line and header fields, up to and including the empty line.
    std::size_t max_head_bytes = 8192;
    // A larger declared body is refused with 413 before any of it is read.
    std::size_t max_body_bytes = 1024;
};

enum class HeadVerdict {
    kIncomplete,  // read more (the head, or the declared body, is not all in)
    kComplete,    // the first `length` bytes are one whole request
    kRefused,     // answer `status` {"error": `error`} and close
};

struct RequestHead {
    HeadVerdict verdict = HeadVerdict::kIncomplete;
    std::size_t length = 0;  // kComplete: head and body bytes
    std::string path;        // the target without query or fragment
    int status = 0;          // kRefused: 400, 411, 413 or 431
    const char* error = "";  // kRefused: the message for the client
};

// Reads the request at the start of `bytes` (what the connection received
// so far). Framing follows RFC 9112: a Transfer-Encoding (apikeyd reads no
// chunked body) -> 411, with a Content-Length too -> 400; conflicting or
// malformed Content-Length, a malformed request line or field, obsolete
// line folding -> 400; a head over the limit -> 431; a body over the limit
// -> 413.
RequestHead read_request_head(std::string_view bytes, const HeadLimits& limits);

// A whole response with {"error": message}, Cache-Control: no-store and
// Connection: close; with `retry_after`, also Retry-After: 1.
std::string error_response(int status, std::string_view message,
                           bool retry_after = false);

}  // namespace apikey
