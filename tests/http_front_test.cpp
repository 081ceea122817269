// The connection loop against real loopback sockets, with a stand-in
// handler and small limits.
#include "http_front.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <stdexcept>
#include <string>
#include <thread>

#include "process_limits.h"

namespace apikey {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// Answers 200 with the request line as the body; "/slow" waits for `gate`,
// "/throw" throws, "/throw-int" throws something else, "/empty" answers
// nothing and "/big" answers kBigBody bytes; "/stream" writes kStreamBody
// bytes through the ReplyStream, kStreamPiece at a time.
constexpr std::size_t kBigBody = 8 << 20;
constexpr std::size_t kStreamBody = 64 << 20;
constexpr std::size_t kStreamPiece = 64 << 10;

class Front : public ::testing::Test {
protected:
    void start(FrontLimits limits, const std::string& host = "127.0.0.1") {
        front_ = std::make_unique<HttpFront>(
            limits, &stats_,
            [this](std::string_view req, const Peer& peer, bool last,
                   ReplyStream& out) {
                std::string line(req.substr(0, req.find("\r\n")));
                if (line.find(" /stream ") != std::string::npos) {
                    return stream(out, last);
                }
                if (line.find(" /throw ") != std::string::npos) {
                    throw std::runtime_error("boom");
                }
                if (line.find(" /throw-int ") != std::string::npos) throw 42;
                if (line.find(" /empty ") != std::string::npos) {
                    return Reply{"", false};
                }
                if (line.find(" /slow ") != std::string::npos) {
                    ++slow_started_;
                    gate_.wait();
                }
                peer_ip_ = peer.ip;
                std::string body = line;
                if (line.find(" /big ") != std::string::npos) {
                    body.assign(kBigBody, 'x');
                }
                return Reply{"HTTP/1.1 200 OK\r\nContent-Length: " +
                                 std::to_string(body.size()) + "\r\n\r\n" +
                                 body,
                             last};
            },
            [](std::string_view path) { return path == "/slow"; });
        front_->listen(host, 0);
        thread_ = std::thread([this] { front_->run(); });
    }

    void TearDown() override {
        release_.set_value();
        if (front_) front_->stop();
        if (thread_.joinable()) thread_.join();
        EXPECT_EQ(stats_.connections.load(), 0);
    }

    // A socket with a 5 s receive timeout (an unconnected one: connect_to).
    static int client_socket(int family = AF_INET) {
        int fd = socket(family, SOCK_STREAM, 0);
        timeval tv{5, 0};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        return fd;
    }

    void connect_to(int fd) {
        sockaddr_in sa{};
        sa.sin_family = AF_INET;
        sa.sin_port = htons(static_cast<uint16_t>(front_->port()));
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
    }

    int connect_client() {
        int fd = client_socket();
        connect_to(fd);
        return fd;
    }

    static void send_all(int fd, const std::string& s) {
        ASSERT_EQ(send(fd, s.data(), s.size(), MSG_NOSIGNAL),
                  static_cast<ssize_t>(s.size()));
    }

    // Everything until EOF (or the 5 s receive timeout).
    static std::string read_to_eof(int fd) {
        std::string out;
        char buf[4096];
        ssize_t n;
        while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) out.append(buf, n);
        return out;
    }

    // At least `n` bytes (or what came before EOF/timeout).
    static std::string read_n(int fd, std::size_t n) {
        std::string out;
        char buf[4096];
        while (out.size() < n) {
            ssize_t got = recv(fd, buf, sizeof(buf), 0);
            if (got <= 0) break;
            out.append(buf, got);
        }
        return out;
    }

    static std::string ok(const std::string& line) {
        return "HTTP/1.1 200 OK\r\nContent-Length: " +
               std::to_string(line.size()) + "\r\n\r\n" + line;
    }

    // Polls for up to 4 s until `done` holds.
    template <typename Cond>
    static void wait_for(Cond done) {
        for (int i = 0; i < 800 && !done(); ++i) {
            std::this_thread::sleep_for(5ms);
        }
    }

    // Closes with a reset (RST) instead of a FIN.
    static void reset(int fd) {
        linger abort{1, 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &abort, sizeof(abort));
        close(fd);
    }

    // What `fn` threw as std::runtime_error ("" when nothing).
    template <typename Fn>
    static std::string error_of(Fn fn) {
        try {
            fn();
        } catch (const std::runtime_error& e) {
            return e.what();
        }
        return "";
    }

    Reply stream(ReplyStream& out, bool last) {
        std::string piece(kStreamPiece, 'y');
        bool ok = out.write("HTTP/1.1 200 OK\r\nContent-Length: " +
                            std::to_string(kStreamBody) + "\r\n\r\n");
        for (std::size_t n = 0; ok && n < kStreamBody; n += piece.size()) {
            ok = out.write(piece);
            if (ok) streamed_ += piece.size();
        }
        stream_stopped_ = !ok;
        return Reply{"", last || !ok};
    }

    std::uint64_t refused(HttpRefusal r) const {
        return stats_.refused[static_cast<int>(r)].load();
    }

    HttpStats stats_;
    std::unique_ptr<HttpFront> front_;
    std::thread thread_;
    std::promise<void> release_;
    std::shared_future<void> gate_ = release_.get_future().share();
    std::atomic<int> slow_started_{0};
    std::atomic<std::size_t> streamed_{0};
    std::atomic<bool> stream_stopped_{false};
    std::string peer_ip_;
};

TEST_F(Front, KeepsAliveAndAnswersPipelinedRequestsInOrder) {
    start({});
    int fd = connect_client();
    send_all(fd, "GET /a HTTP/1.1\r\n\r\n");
    EXPECT_EQ(read_n(fd, ok("GET /a HTTP/1.1").size()), ok("GET /a HTTP/1.1"));
    send_all(fd, "GET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n");
    std::string both = ok("GET /b HTTP/1.1") + ok("GET /c HTTP/1.1");
    EXPECT_EQ(read_n(fd, both.size()), both);
    EXPECT_EQ(peer_ip_, "127.0.0.1");
    close(fd);
}

TEST_F(Front, AnswersARequestFollowedByEof) {
    start({});
    int fd = connect_client();
    send_all(fd, "GET /a HTTP/1.1\r\n\r\n");
    shutdown(fd, SHUT_WR);
    EXPECT_EQ(read_to_eof(fd), ok("GET /a HTTP/1.1"));
    close(fd);
}

TEST_F(Front, LastRequestOfAConnectionCloses) {
    FrontLimits l;
    l.keep_alive_requests = 2;
    start(l);
    int fd = connect_client();
    send_all(fd, "GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n");
    EXPECT_EQ(read_to_eof(fd), ok("GET /a HTTP/1.1") + ok("GET /b HTTP/1.1"));
    close(fd);
}

TEST_F(Front, LargeBodyRefusedWithoutReadingIt) {
    start({});
    int fd = connect_client();
    send_all(fd, "GET /a HTTP/1.1\r\nContent-Length: 100000000\r\n\r\n" +
                     std::string(65536, 'x'));
    std::string r = read_to_eof(fd);
    EXPECT_EQ(r.rfind("HTTP/1.1 413 ", 0), 0u) << r;
    EXPECT_NE(r.find("{\"error\":\"request body too large\"}"),
              std::string::npos);
    EXPECT_EQ(refused(HttpRefusal::kBodyTooLarge), 1u);
    close(fd);
}

TEST_F(Front, SlowHeadGets408AtTheHeaderTimeout) {
    FrontLimits l;
    l.header_timeout = 300ms;
    start(l);
    int fd = connect_client();
    Clock::time_point t0 = Clock::now();
    send_all(fd, "GET /a HT");
    std::this_thread::sleep_for(100ms);
    send_all(fd, "TP/1.1\r\n");  // a trickle does not extend the deadline
    std::string r = read_to_eof(fd);
    auto waited = Clock::now() - t0;
    EXPECT_EQ(r.rfind("HTTP/1.1 408 ", 0), 0u) << r;
    EXPECT_GE(waited, 250ms);
    EXPECT_LT(waited, 2s);
    EXPECT_EQ(refused(HttpRefusal::kTimeout), 1u);
    close(fd);
}

TEST_F(Front, IdleKeepAliveClosesSilently) {
    FrontLimits l;
    l.keep_alive_timeout = 200ms;
    start(l);
    int fd = connect_client();
    send_all(fd, "GET /a HTTP/1.1\r\n\r\n");
    EXPECT_EQ(read_to_eof(fd), ok("GET /a HTTP/1.1"));
    EXPECT_EQ(refused(HttpRefusal::kTimeout), 0u);
    close(fd);
}

TEST_F(Front, FullSlowLaneAnswers503WhileTheFastLaneServes) {
    FrontLimits l;
    l.slow_workers = 1;
    l.slow_queue = 1;
    start(l);
    int running = connect_client();
    send_all(running, "GET /slow HTTP/1.1\r\n\r\n");
    for (int i = 0; i < 500 && slow_started_ == 0; ++i) {
        std::this_thread::sleep_for(5ms);
    }
    ASSERT_EQ(slow_started_, 1);
    int waiting = connect_client();
    send_all(waiting, "GET /slow HTTP/1.1\r\n\r\n");
    for (int i = 0; i < 500 && stats_.api_queued == 0; ++i) {
        std::this_thread::sleep_for(5ms);
    }
    ASSERT_EQ(stats_.api_queued, 1);
    int over = connect_client();
    send_all(over, "GET /slow?x=1 HTTP/1.1\r\n\r\n");
    std::string r = read_to_eof(over);
    EXPECT_EQ(r.rfind("HTTP/1.1 503 ", 0), 0u) << r;
    EXPECT_NE(r.find("\r\nRetry-After: 1\r\n"), std::string::npos) << r;
    EXPECT_EQ(refused(HttpRefusal::kBusy), 1u);

    int fast = connect_client();
    send_all(fast, "GET /healthz HTTP/1.1\r\n\r\n");
    EXPECT_EQ(read_n(fast, ok("GET /healthz HTTP/1.1").size()),
              ok("GET /healthz HTTP/1.1"));

    release_.set_value();
    release_ = std::promise<void>();  // TearDown sets it again
    EXPECT_EQ(read_n(running, ok("GET /slow HTTP/1.1").size()),
              ok("GET /slow HTTP/1.1"));
    EXPECT_EQ(read_n(waiting, ok("GET /slow HTTP/1.1").size()),
              ok("GET /slow HTTP/1.1"));
    for (int fd : {running, waiting, over, fast}) close(fd);
}

TEST_F(Front, ConnectionsBeyondTheCapAreRefused) {
    FrontLimits l;
    l.max_connections = 2;
    start(l);
    int a = connect_client();
    int b = connect_client();
    send_all(b, "GET /b HTTP/1.1\r\n\r\n");
    ASSERT_EQ(read_n(b, ok("GET /b HTTP/1.1").size()), ok("GET /b HTTP/1.1"));
    int c = connect_client();
    std::string r = read_to_eof(c);
    EXPECT_EQ(r.rfind("HTTP/1.1 503 ", 0), 0u) << r;
    EXPECT_NE(r.find("too many connections"), std::string::npos);
    EXPECT_EQ(stats_.connections_refused, 1u);
    EXPECT_EQ(stats_.connections, 2);
    for (int fd : {a, b, c}) close(fd);
}

TEST_F(Front, HandlerExceptionIs500WhateverIsThrown) {
    start({});
    for (const char* path : {"/throw", "/throw-int"}) {
        int fd = connect_client();
        send_all(fd, std::string("GET ") + path + " HTTP/1.1\r\n\r\n");
        std::string r = read_to_eof(fd);
        EXPECT_EQ(r.rfind("HTTP/1.1 500 ", 0), 0u) << path << ": " << r;
        close(fd);
    }
}

TEST_F(Front, BusyPortIsAClearError) {
    start({});
    HttpStats other_stats;
    HttpFront other({}, &other_stats, nullptr, nullptr);
    std::string what =
        error_of([&] { other.listen("127.0.0.1", front_->port()); });
    EXPECT_EQ(what.rfind("cannot listen on 127.0.0.1:", 0), 0u) << what;
    EXPECT_NE(what.find("in use"), std::string::npos) << what;
}

TEST_F(Front, ServesIpv6AndSeesThePeer) {
    start({}, "::1");
    int fd = client_socket(AF_INET6);
    sockaddr_in6 sa{};
    sa.sin6_family = AF_INET6;
    sa.sin6_port = htons(static_cast<uint16_t>(front_->port()));
    sa.sin6_addr = in6addr_loopback;
    ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
    send_all(fd, "GET /a HTTP/1.1\r\n\r\n");
    EXPECT_EQ(read_n(fd, ok("GET /a HTTP/1.1").size()), ok("GET /a HTTP/1.1"));
    EXPECT_EQ(peer_ip_, "::1");
    close(fd);
}

TEST_F(Front, NoPortBeforeListening) {
    HttpFront f({}, &stats_, nullptr, nullptr);
    EXPECT_EQ(f.port(), -1);
}

TEST_F(Front, AHostThatDoesNotResolveIsAClearError) {
    HttpFront f({}, &stats_, nullptr, nullptr);
    std::string what = error_of([&] { f.listen("no such host", 8080); });
    EXPECT_EQ(what.rfind("cannot listen on no such host:8080 (", 0), 0u)
        << what;
}

TEST_F(Front, OutOfDescriptorsAtStartIsAClearError) {
    testing::NoMoreDescriptors limit;
    ASSERT_TRUE(limit.ok());
    std::string what =
        error_of([&] { HttpFront f({}, &stats_, nullptr, nullptr); });
    EXPECT_EQ(what.rfind("http: cannot create epoll: ", 0), 0u) << what;
}

TEST_F(Front, OutOfDescriptorsForTheSocketIsAClearError) {
    HttpFront f({}, &stats_, nullptr, nullptr);
    testing::NoMoreDescriptors limit;
    ASSERT_TRUE(limit.ok());
    std::string what = error_of([&] { f.listen("127.0.0.1", 0); });
    EXPECT_EQ(what.rfind("cannot listen on 127.0.0.1:0 (", 0), 0u) << what;
}

TEST_F(Front, OutOfDescriptorsAtAcceptWaitsAndThenServes) {
    start({});
    int fd = client_socket();
    {
        // The connection waits in the backlog: accept() fails with EMFILE
        // and the loop pauses accepting instead of spinning.
        testing::NoMoreDescriptors limit;
        ASSERT_TRUE(limit.ok());
        connect_to(fd);
        send_all(fd, "GET /a HTTP/1.1\r\n\r\n");
        timeval tv{0, 300 * 1000};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        char byte;
        EXPECT_EQ(recv(fd, &byte, 1, MSG_PEEK), -1) << "answered anyway";
        EXPECT_EQ(stats_.connections, 0);
    }
    timeval tv{5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    EXPECT_EQ(read_n(fd, ok("GET /a HTTP/1.1").size()), ok("GET /a HTTP/1.1"));
    close(fd);
}

TEST_F(Front, AnEmptyReplyClosesWithoutAnAnswer) {
    start({});
    int fd = connect_client();
    send_all(fd, "GET /empty HTTP/1.1\r\n\r\n");
    EXPECT_EQ(read_to_eof(fd), "");
    close(fd);
}

TEST_F(Front, ALargeAnswerGoesOutAsTheClientReads) {
    start({});
    int fd = connect_client();
    send_all(fd, "GET /big HTTP/1.1\r\n\r\n");
    // The answer outgrows the socket buffers: the rest waits for EPOLLOUT.
    std::this_thread::sleep_for(200ms);
    std::string head = "HTTP/1.1 200 OK\r\nContent-Length: " +
                       std::to_string(kBigBody) + "\r\n\r\n";
    std::string r = read_n(fd, head.size() + kBigBody);
    EXPECT_EQ(r.size(), head.size() + kBigBody);
    EXPECT_EQ(r.substr(0, head.size()), head);
    EXPECT_EQ(r.find_first_not_of('x', head.size()), std::string::npos);
    EXPECT_EQ(stats_.write_timeouts, 0u);
    close(fd);
}

TEST_F(Front, AReaderThatStallsIsClosedAtTheWriteTimeout) {
    FrontLimits l;
    l.write_timeout = 200ms;
    start(l);
    int fd = connect_client();
    send_all(fd, "GET /big HTTP/1.1\r\n\r\n");
    wait_for([&] { return stats_.write_timeouts != 0; });
    EXPECT_EQ(stats_.write_timeouts, 1u);
    EXPECT_LT(read_to_eof(fd).size(), kBigBody) << "cut short";
    close(fd);
}

TEST_F(Front, AResetWhileAnswerWaitsClosesTheConnection) {
    start({});
    int fd = connect_client();
    send_all(fd, "GET /big HTTP/1.1\r\n\r\n");
    // The first bytes arrive: the rest of the answer waits for room.
    char byte;
    ASSERT_EQ(recv(fd, &byte, 1, 0), 1);
    reset(fd);
    wait_for([&] { return stats_.connections == 0; });
    EXPECT_EQ(stats_.connections, 0);
    EXPECT_EQ(stats_.write_timeouts, 0u) << "closed at the reset, not later";
}

TEST_F(Front, AResetMidRequestClosesTheConnection) {
    start({});
    int fd = connect_client();
    send_all(fd, "GET /a HTTP/1.1\r\nHost: x\r\n");
    wait_for([&] { return stats_.connections != 0; });
    ASSERT_EQ(stats_.connections, 1);
    reset(fd);
    wait_for([&] { return stats_.connections == 0; });
    EXPECT_EQ(stats_.connections, 0);
    for (int r = 0; r < static_cast<int>(HttpRefusal::kCount); ++r) {
        EXPECT_EQ(refused(static_cast<HttpRefusal>(r)), 0u) << r;
    }
}

TEST_F(Front, AStreamedAnswerGoesOutAtTheReadersPace) {
    start({});
    int fd = connect_client();
    send_all(fd, "GET /stream HTTP/1.1\r\n\r\n");
    // Nobody reads: the producer waits once the socket buffers and the
    // stream's bound are full, far short of the whole body.
    std::this_thread::sleep_for(300ms);
    EXPECT_GT(streamed_.load(), 0u);
    EXPECT_LT(streamed_.load(), kStreamBody / 4);
    std::string head = "HTTP/1.1 200 OK\r\nContent-Length: " +
                       std::to_string(kStreamBody) + "\r\n\r\n";
    std::string r = read_n(fd, head.size() + kStreamBody);
    EXPECT_EQ(r.size(), head.size() + kStreamBody);
    EXPECT_EQ(r.substr(0, head.size()), head);
    EXPECT_EQ(r.find_first_not_of('y', head.size()), std::string::npos);
    // The connection stays usable.
    send_all(fd, "GET /a HTTP/1.1\r\n\r\n");
    EXPECT_EQ(read_n(fd, ok("GET /a HTTP/1.1").size()), ok("GET /a HTTP/1.1"));
    EXPECT_FALSE(stream_stopped_.load());
    close(fd);
}

TEST_F(Front, AReaderThatGoesAwayStopsTheStream) {
    start({});
    int fd = connect_client();
    send_all(fd, "GET /stream HTTP/1.1\r\n\r\n");
    EXPECT_EQ(read_n(fd, 1000).substr(0, 15), "HTTP/1.1 200 OK");
    reset(fd);
    wait_for([&] { return stream_stopped_.load(); });
    EXPECT_TRUE(stream_stopped_.load());
    EXPECT_LT(streamed_.load(), kStreamBody);
}

TEST_F(Front, StoppingTheServerStopsAStreamThatWaits) {
    start({});
    int fd = connect_client();
    send_all(fd, "GET /stream HTTP/1.1\r\n\r\n");
    wait_for([&] { return streamed_.load() > 0; });
    std::this_thread::sleep_for(100ms);
    front_->stop();
    thread_.join();  // returns only if the blocked producer was released
    EXPECT_TRUE(stream_stopped_.load());
    close(fd);
}

}  // namespace
}  // namespace apikey
