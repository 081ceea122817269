#include "http_head.h"
#include "http_server.h"

#include <gtest/gtest.h>

#include <string>

namespace apikey {
namespace {

RequestHead read(const std::string& bytes, HeadLimits limits = {}) {
    return read_request_head(bytes, limits);
}

TEST(HttpHead, CompleteGetWithoutBody) {
    std::string req =
        "GET /api/orgs/x/api-keys/usage?dormant_days=3 HTTP/1.1\r\n"
        "Host: a\r\n\r\n";
    RequestHead h = read(req + "GET /next");
    EXPECT_EQ(h.verdict, HeadVerdict::kComplete);
    EXPECT_EQ(h.length, req.size()) << "pipelined bytes are not part of it";
    EXPECT_EQ(h.path, "/api/orgs/x/api-keys/usage");
}

TEST(HttpHead, IncompleteUntilTheEmptyLine) {
    EXPECT_EQ(read("").verdict, HeadVerdict::kIncomplete);
    EXPECT_EQ(read("GET / HTTP/1.1\r\nHost: a\r\n").verdict,
              HeadVerdict::kIncomplete);
    EXPECT_EQ(read("GET / HTTP/1.1\r\nHost: a\n\n").verdict,
              HeadVerdict::kIncomplete)
        << "bare LF lines do not end the head (cpp-httplib skips them)";
}

TEST(HttpHead, SmallBodyIsReadWhole) {
    std::string head = "POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\n";
    RequestHead h = read(head + "abc");
    EXPECT_EQ(h.verdict, HeadVerdict::kIncomplete);
    h = read(head + "abcde");
    EXPECT_EQ(h.verdict, HeadVerdict::kComplete);
    EXPECT_EQ(h.length, head.size() + 5);
}

TEST(HttpHead, BodyOverTheLimitIsRefusedFromTheHeadAlone) {
    HeadLimits limits;
    limits.max_body_bytes = 10;
    RequestHead h =
        read("GET /healthz HTTP/1.1\r\ncontent-length: 11\r\n\r\n", limits);
    EXPECT_EQ(h.verdict, HeadVerdict::kRefused);
    EXPECT_EQ(h.status, 413);
    EXPECT_EQ(
        read("GET / HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789", limits)
            .verdict,
        HeadVerdict::kComplete);
    EXPECT_EQ(read("GET / HTTP/1.1\r\nContent-Length: 99999999999999999\r\n"
                   "\r\n")
                  .status,
              413);
}

TEST(HttpHead, TransferEncodingNeedsALength) {
    RequestHead h =
        read("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n");
    EXPECT_EQ(h.verdict, HeadVerdict::kRefused);
    EXPECT_EQ(h.status, 411);
    EXPECT_EQ(read("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
                   "Content-Length: 3\r\n\r\n")
                  .status,
              400)
        << "both framings at once: ambiguous";
}

TEST(HttpHead, MalformedFramingIs400) {
    for (const char* bad : {
             "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
             "GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
             "GET / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
             "GET / HTTP/1.1\r\nContent-Length:\r\n\r\n",
             "GET / HTTP/1.1\r\nContent-Length : 1\r\n\r\n",
             "GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
             "GET / HTTP/1.1\r\nno colon\r\n\r\n",
             "GET / HTTP/1.1\r\n: empty name\r\n\r\n",
             "GET /  HTTP/1.1\r\n\r\n",
             "GET / HTTP/2.0\r\n\r\n",
             "GET /\r\n\r\n",
             " GET / HTTP/1.1\r\n\r\n",
             "\r\n\r\n",
         }) {
        RequestHead h = read(bad);
        EXPECT_EQ(h.verdict, HeadVerdict::kRefused) << bad;
        EXPECT_EQ(h.status, 400) << bad;
    }
    EXPECT_EQ(read("GET / HTTP/1.0\r\nContent-Length: 0\r\nContent-Length: 0"
                   "\r\n\r\n")
                  .verdict,
              HeadVerdict::kComplete)
        << "a repeated identical length is fine";
}

TEST(HttpHead, HeadOverTheLimitIs431) {
    HeadLimits limits;
    limits.max_head_bytes = 64;
    std::string head = "GET / HTTP/1.1\r\nX: " + std::string(40, 'a');
    EXPECT_EQ(read(head, limits).verdict, HeadVerdict::kIncomplete);
    RequestHead h = read(head + std::string(20, 'a'), limits);
    EXPECT_EQ(h.verdict, HeadVerdict::kRefused);
    EXPECT_EQ(h.status, 431);
    EXPECT_EQ(read(std::string(61, 'x').replace(0, 16, "GET / HTTP/1.1\r\n") +
                       "\r\n\r\n",
                   limits)
                  .status,
              431)
        << "the final empty line must end within the limit";
}

TEST(HttpHead, PathDropsQueryAndFragment) {
    EXPECT_EQ(read("GET /a/b?c=d#e HTTP/1.1\r\n\r\n").path, "/a/b");
    EXPECT_EQ(read("GET /a#e?x HTTP/1.1\r\n\r\n").path, "/a");
}

TEST(HttpHead, ErrorResponseIsCompleteJson) {
    std::string r = error_response(503, "busy; retry", true);
    EXPECT_EQ(r.rfind("HTTP/1.1 503 Service Unavailable\r\n", 0), 0u);
    EXPECT_NE(r.find("\r\nRetry-After: 1\r\n"), std::string::npos);
    EXPECT_NE(r.find("\r\nConnection: close\r\n"), std::string::npos);
    EXPECT_NE(r.find("\r\nContent-Type: application/json\r\n"),
              std::string::npos);
    std::string body = "{\"error\":\"busy; retry\"}";
    EXPECT_NE(r.find("\r\nContent-Length: " + std::to_string(body.size()) +
                     "\r\n\r\n" + body),
              std::string::npos);
    EXPECT_EQ(error_response(413, "x").find("Retry-After"), std::string::npos);
    EXPECT_EQ(
        error_response(413, "x").rfind("HTTP/1.1 413 Payload Too Large", 0),
        0u);
}

}  // namespace
}  // namespace apikey

namespace apikey {
namespace {

// cpp-httplib routes the decoded path: an escaped /api/ must not get the
// fast lane that /healthz and /metrics need.
TEST(AnalyticsLane, ApiPathsAndEveryEscapedPathTakeTheSlowLane) {
    EXPECT_TRUE(is_analytics_path("/api/orgs/x/api-keys/usage"));
    EXPECT_TRUE(is_analytics_path("/%61pi/orgs/x/api-keys/usage"));
    EXPECT_TRUE(is_analytics_path("/%2Fapi/x"));
    EXPECT_TRUE(is_analytics_path("/heal%74hz"));
    EXPECT_FALSE(is_analytics_path("/healthz"));
    EXPECT_FALSE(is_analytics_path("/metrics"));
    EXPECT_FALSE(is_analytics_path("/"));
    EXPECT_FALSE(is_analytics_path("/app.js"));
    EXPECT_FALSE(is_analytics_path("/apix"));
}

}  // namespace
}  // namespace apikey
