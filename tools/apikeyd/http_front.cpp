// The epoll loop that owns every HTTP socket (http_front.h). One concern,
// kept in one file because its parts share the connection state machine:
// framing and deadlines per phase, the two worker lanes, and answers
// streamed back at the client's pace (the export).
#include "http_front.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <unordered_map>
#include <utility>
#include <vector>

#include "log.h"
#include "work_queue.h"

namespace apikey {
namespace {

using Clock = std::chrono::steady_clock;

// epoll ids of the two non-connection descriptors; connections count from
// kFirstConnId and are never reused, so a late event for a closed one finds
// nothing.
constexpr std::uint64_t kListenId = 0;
constexpr std::uint64_t kWakeId = 1;
constexpr std::uint64_t kFirstConnId = 2;
constexpr int kMaxEvents = 128;
// Deadlines are checked this often: their precision.
constexpr std::chrono::milliseconds kTick{50};
// accept() out of descriptors: the backlog waits this long instead of the
// loop spinning on a listening socket that stays readable.
constexpr std::chrono::milliseconds kAcceptPause{100};
constexpr int kAcceptBatch = 64;
constexpr std::size_t kReadChunk = 16384;

// kStreaming: everything the worker streamed so far is sent, and it is
// still producing (no deadline, as in kWorking).
enum class Phase { kReading, kWorking, kWriting, kStreaming, kLingering };

// One request's ReplyStream: the worker appends, the loop takes.
class Pipe final : public ReplyStream {
public:
    // `ready` tells the loop there is something to take; called by the
    // writer, once per take().
    explicit Pipe(std::function<void()> ready) : ready_(std::move(ready)) {}

    bool write(std::string_view bytes) override {
        bool first = false;
        {
            std::unique_lock<std::mutex> lock(mutex_);
            space_.wait(lock, [this] {
                return aborted_ || buf_.size() < kStreamBufferBytes;
            });
            if (aborted_) return false;
            if (bytes.empty()) return true;
            buf_.append(bytes);
            used_ = true;
            first = !signalled_;
            signalled_ = true;
        }
        if (first) ready_();
        return true;
    }

    // What was written since the last take().
    std::string take() {
        std::string out;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            out.swap(buf_);
            signalled_ = false;
        }
        space_.notify_all();
        return out;
    }

    bool used() {
        std::lock_guard<std::mutex> lock(mutex_);
        return used_;
    }

    // The connection is gone: every write() returns false from now on.
    void abort() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            aborted_ = true;
        }
        space_.notify_all();
    }

private:
    const std::function<void()> ready_;
    std::mutex mutex_;
    std::condition_variable space_;
    std::string buf_;
    bool used_ = false;       // anything written at all
    bool signalled_ = false;  // ready_ called since the last take()
    bool aborted_ = false;
};

struct Conn {
    int fd = -1;
    std::uint64_t id = 0;
    Phase phase = Phase::kReading;
    std::uint32_t watched = 0;  // epoll events registered; 0: not in epoll
    std::string in;             // received, not yet handled
    std::string out;            // the answer being written
    std::size_t sent = 0;
    bool close_after = false;
    bool started = false;      // a byte of the current request arrived
    bool peer_closed = false;  // the client sent EOF
    int served = 0;
    std::size_t lingered = 0;
    // While a worker answers: its stream (kWorking, kWriting, kStreaming).
    std::shared_ptr<Pipe> pipe;
    Clock::time_point deadline;
    Peer peer;
};

struct Done {
    std::uint64_t id;
    Reply reply;
    bool streamed = false;  // not the reply: the stream has bytes to take
};

bool would_block() { return errno == EAGAIN || errno == EWOULDBLOCK; }

std::string error_text(int err) { return std::system_category().message(err); }

Peer peer_of(const sockaddr_storage& sa) {
    Peer p;
    char ip[INET6_ADDRSTRLEN] = {};
    if (sa.ss_family == AF_INET) {
        const auto& a = reinterpret_cast<const sockaddr_in&>(sa);
        inet_ntop(AF_INET, &a.sin_addr, ip, sizeof(ip));
        p.port = ntohs(a.sin_port);
    } else if (sa.ss_family == AF_INET6) {
        const auto& a = reinterpret_cast<const sockaddr_in6&>(sa);
        inet_ntop(AF_INET6, &a.sin6_addr, ip, sizeof(ip));
        p.port = ntohs(a.sin6_port);
    }
    p.ip = ip;
    return p;
}

HttpRefusal refusal_for(int status) {
    switch (status) {
        case 408: return HttpRefusal::kTimeout;
        case 411: return HttpRefusal::kLengthRequired;
        case 413: return HttpRefusal::kBodyTooLarge;
        case 431: return HttpRefusal::kHeadTooLarge;
        case 503: return HttpRefusal::kBusy;
        default: return HttpRefusal::kBadRequest;
    }
}

}  // namespace

struct HttpFront::Impl {
    Impl(const FrontLimits& l, HttpStats* s, RequestHandler h, LaneSelector sel)
        : limits(l),
          stats(s),
          handler(std::move(h)),
          is_slow(std::move(sel)),
          busy_answer(error_response(503, "busy; retry", true)),
          full_answer(error_response(503, "too many connections", true)),
          fast(l.fast_workers, l.fast_queue),
          slow(l.slow_workers, l.slow_queue) {
        epoll_fd = epoll_create1(EPOLL_CLOEXEC);
        wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (epoll_fd < 0 || wake_fd < 0) {
            throw std::runtime_error("http: cannot create epoll: " +
                                     error_text(errno));
        }
        add_fd(wake_fd, kWakeId);
    }

    ~Impl() {
        abort_streams();
        fast.stop();
        slow.stop();
        close_all();
        if (wake_fd >= 0) ::close(wake_fd);
        if (epoll_fd >= 0) ::close(epoll_fd);
    }

    void add_fd(int fd, std::uint64_t id) {
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.u64 = id;
        epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &ev);
    }

    void listen_on(const std::string& host, int port) {
        std::string where = host + ":" + std::to_string(port);
        addrinfo hints{};
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
        addrinfo* found = nullptr;
        int rc = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints,
                             &found);
        if (rc != 0) {
            throw std::runtime_error("cannot listen on " + where + " (" +
                                     gai_strerror(rc) + ")");
        }
        int err = 0;
        for (addrinfo* ai = found; ai && listen_fd < 0; ai = ai->ai_next) {
            int fd = socket(ai->ai_family,
                            ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                            ai->ai_protocol);
            if (fd < 0) {
                err = errno;
                continue;
            }
            // SO_REUSEADDR but never SO_REUSEPORT: a second apikeyd on the
            // port must fail, not share it and split the requests.
            int yes = 1;
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
            if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 &&
                ::listen(fd, SOMAXCONN) == 0) {
                listen_fd = fd;
            } else {
                err = errno;
                ::close(fd);
            }
        }
        freeaddrinfo(found);
        if (listen_fd < 0) {
            throw std::runtime_error("cannot listen on " + where + " (" +
                                     error_text(err) + ")");
        }
        add_fd(listen_fd, kListenId);
    }

    int bound_port() const {
        sockaddr_storage sa{};
        socklen_t len = sizeof(sa);
        if (listen_fd < 0 ||
            getsockname(listen_fd, reinterpret_cast<sockaddr*>(&sa), &len)) {
            return -1;
        }
        return peer_of(sa).port;
    }

    void run() {
        std::vector<epoll_event> events(kMaxEvents);
        Clock::time_point next_sweep = Clock::now() + kTick;
        while (!stopping.load()) {
            int n = epoll_wait(epoll_fd, events.data(), kMaxEvents,
                               static_cast<int>(kTick.count()));
            if (n < 0 && errno != EINTR) {
                log_error("http: epoll_wait: " + error_text(errno));
                break;
            }
            for (int i = 0; i < n; ++i) on_event(events[i].data.u64);
            Clock::time_point now = Clock::now();
            if (now >= next_sweep) {
                sweep(now);
                next_sweep = now + kTick;
            }
        }
        abort_streams();
        fast.stop();
        slow.stop();
        close_all();
    }

    // Workers blocked on a stream must return before the queues join them.
    void abort_streams() {
        for (auto& entry : conns) {
            if (entry.second->pipe) entry.second->pipe->abort();
        }
    }

    void wake() {
        std::uint64_t one = 1;
        ssize_t n = write(wake_fd, &one, sizeof(one));
        (void)n;  // EAGAIN: the counter is already non-zero, loop wakes
    }

    void stop() {
        stopping = true;
        wake();
    }

    // --- events

    void on_event(std::uint64_t id) {
        if (id == kListenId) return accept_all();
        if (id == kWakeId) return finish_done();
        auto it = conns.find(id);
        if (it == conns.end()) return;
        Conn& c = *it->second;
        switch (c.phase) {
            case Phase::kReading: return read_request(c);
            case Phase::kWriting: return write_answer(c);
            case Phase::kLingering: return linger(c);
            case Phase::kWorking:
            case Phase::kStreaming: return;
        }
    }

    void accept_all() {
        for (int i = 0; i < kAcceptBatch; ++i) {
            sockaddr_storage sa{};
            socklen_t len = sizeof(sa);
            int fd = accept4(listen_fd, reinterpret_cast<sockaddr*>(&sa), &len,
                             SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) {
                if (errno == EINTR || errno == ECONNABORTED) continue;
                if (!would_block()) pause_accept();
                return;
            }
            if (conns.size() >= limits.max_connections) {
                stats->connections_refused.fetch_add(1);
                ssize_t n = send(fd, full_answer.data(), full_answer.size(),
                                 MSG_NOSIGNAL | MSG_DONTWAIT);
                (void)n;  // best effort
                ::close(fd);
                continue;
            }
            // Answers go out in one write; no Nagle delay on keep-alive.
            int yes = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &yes, sizeof(yes));
            auto owned = std::make_unique<Conn>();
            Conn& c = *owned;
            c.fd = fd;
            c.id = next_id++;
            c.peer = peer_of(sa);
            c.deadline = Clock::now() + limits.header_timeout;
            conns.emplace(c.id, std::move(owned));
            stats->connections.fetch_add(1);
            watch(c, EPOLLIN);
        }
    }

    void pause_accept() {
        epoll_ctl(epoll_fd, EPOLL_CTL_DEL, listen_fd, nullptr);
        accept_paused = true;
        accept_resume = Clock::now() + kAcceptPause;
    }

    void read_request(Conn& c) {
        const std::size_t cap =
            limits.head.max_head_bytes + limits.head.max_body_bytes;
        char buf[kReadChunk];
        while (c.in.size() < cap) {
            ssize_t n =
                recv(c.fd, buf, std::min(sizeof(buf), cap - c.in.size()), 0);
            if (n > 0) {
                if (!c.started) {
                    c.started = true;
                    // A new connection's clock runs from accept.
                    if (c.served > 0) {
                        c.deadline = Clock::now() + limits.header_timeout;
                    }
                }
                c.in.append(buf, static_cast<std::size_t>(n));
                continue;
            }
            if (n == 0) {
                c.peer_closed = true;
                break;
            }
            if (errno == EINTR) continue;
            if (would_block()) break;
            return close_conn(c);
        }
        if (c.peer_closed) watch(c, 0);  // EOF stays readable
        handle_buffered(c);
    }

    void handle_buffered(Conn& c) {
        RequestHead h = read_request_head(c.in, limits.head);
        if (h.verdict == HeadVerdict::kIncomplete) {
            if (c.peer_closed) close_conn(c);
            return;
        }
        if (h.verdict == HeadVerdict::kRefused) {
            stats->count(refusal_for(h.status));
            return respond(c, error_response(h.status, h.error), true);
        }
        std::string request = c.in.substr(0, h.length);
        c.in.erase(0, h.length);
        bool last = c.peer_closed || c.served + 1 >= limits.keep_alive_requests;
        submit(c, std::move(request), is_slow(h.path), last);
    }

    void submit(Conn& c, std::string request, bool slow_lane, bool last) {
        watch(c, 0);
        c.phase = Phase::kWorking;
        if (slow_lane) stats->api_queued.fetch_add(1);
        c.pipe = std::make_shared<Pipe>(
            [this, id = c.id] { post(Done{id, Reply{}, true}); });
        auto job = [this, id = c.id, peer = c.peer, slow_lane, last,
                    pipe = c.pipe, request = std::move(request)]() {
            if (slow_lane) stats->api_queued.fetch_sub(1);
            Reply r;
            try {
                r = handler(request, peer, last, *pipe);
            } catch (const std::exception& e) {
                log_error(std::string("http: ") + e.what());
                r = Reply{error_response(500, "internal error"), true};
            } catch (...) {
                r = Reply{error_response(500, "internal error"), true};
            }
            r.close = r.close || last;
            post(Done{id, std::move(r)});
        };
        if ((slow_lane ? slow : fast).try_push(std::move(job))) return;
        c.pipe.reset();
        if (slow_lane) stats->api_queued.fetch_sub(1);
        stats->count(HttpRefusal::kBusy);
        respond(c, busy_answer, true);
    }

    // From a worker: hands `d` to the loop.
    void post(Done d) {
        {
            std::lock_guard<std::mutex> lock(done_mutex);
            done.push_back(std::move(d));
        }
        wake();
    }

    void finish_done() {
        std::uint64_t count;
        ssize_t n = read(wake_fd, &count, sizeof(count));
        (void)n;
        std::vector<Done> ready;
        {
            std::lock_guard<std::mutex> lock(done_mutex);
            ready.swap(done);
        }
        for (Done& d : ready) {
            auto it = conns.find(d.id);
            if (it == conns.end()) continue;
            Conn& c = *it->second;
            if (d.streamed) {
                stream_more(c);
            } else {
                finish_reply(c, std::move(d.reply));
            }
        }
    }

    // The worker streamed more; the loop sends it unless it is still
    // sending what came before (write_answer takes the rest then).
    void stream_more(Conn& c) {
        if (!c.pipe || c.phase == Phase::kWriting) return;
        std::string bytes = c.pipe->take();
        if (bytes.empty()) return;
        respond(c, std::move(bytes), false);
    }

    // The worker is done: what it left in the stream, then its reply.
    void finish_reply(Conn& c, Reply reply) {
        bool streamed = false;
        std::string rest;
        if (c.pipe) {
            streamed = c.pipe->used();
            rest = c.pipe->take();
            c.pipe.reset();
        }
        rest += reply.bytes;
        if (!streamed && rest.empty()) return close_conn(c);
        if (c.phase == Phase::kWriting) {
            c.out += rest;
            c.close_after = reply.close;
            return;
        }
        respond(c, std::move(rest), reply.close);
    }

    void respond(Conn& c, std::string bytes, bool close) {
        c.phase = Phase::kWriting;
        c.out = std::move(bytes);
        c.sent = 0;
        c.close_after = close;
        c.deadline = Clock::now() + limits.write_timeout;
        write_answer(c);
    }

    void write_answer(Conn& c) {
        while (true) {
            while (c.sent < c.out.size()) {
                ssize_t n = send(c.fd, c.out.data() + c.sent,
                                 c.out.size() - c.sent, MSG_NOSIGNAL);
                if (n > 0) {
                    c.sent += static_cast<std::size_t>(n);
                    c.deadline = Clock::now() + limits.write_timeout;
                    continue;
                }
                if (n < 0 && errno == EINTR) continue;
                if (n < 0 && would_block()) return watch(c, EPOLLOUT);
                return close_conn(c);
            }
            if (!c.pipe) break;
            // The worker is still producing: send what it has, or wait.
            c.out = c.pipe->take();
            c.sent = 0;
            if (c.out.empty()) {
                c.phase = Phase::kStreaming;
                return watch(c, 0);
            }
        }
        std::string().swap(c.out);
        ++c.served;
        if (c.close_after || c.peer_closed) return start_linger(c);
        c.phase = Phase::kReading;
        c.started = !c.in.empty();
        c.deadline = Clock::now() + (c.started ? limits.header_timeout
                                               : limits.keep_alive_timeout);
        watch(c, EPOLLIN);
        if (c.started) handle_buffered(c);  // a pipelined request
    }

    // Closes our side and reads what the client still sends, up to a small
    // budget, so that closing with unread input does not reset the
    // connection while the answer may still be on its way (Linux keeps an
    // answer that arrived readable after a reset; the budget is for the
    // one still in flight). One read per event: a flood cannot make one
    // turn of the loop long for the others.
    void start_linger(Conn& c) {
        if (c.peer_closed) return close_conn(c);
        shutdown(c.fd, SHUT_WR);
        c.phase = Phase::kLingering;
        c.lingered = 0;
        std::string().swap(c.in);
        c.deadline = Clock::now() + limits.linger_timeout;
        watch(c, EPOLLIN);
    }

    void linger(Conn& c) {
        char buf[kReadChunk];
        ssize_t n = recv(c.fd, buf, sizeof(buf), 0);
        if (n < 0 && (errno == EINTR || would_block())) return;
        if (n > 0) {
            c.lingered += static_cast<std::size_t>(n);
            if (c.lingered < limits.linger_max_bytes) return;
        }
        close_conn(c);
    }

    void sweep(Clock::time_point now) {
        if (accept_paused && now >= accept_resume) {
            accept_paused = false;
            add_fd(listen_fd, kListenId);
        }
        std::vector<std::uint64_t> expired;
        for (const auto& [id, c] : conns) {
            if (c->phase != Phase::kWorking &&
                c->phase != Phase::kStreaming && c->deadline <= now) {
                expired.push_back(id);
            }
        }
        for (std::uint64_t id : expired) {
            auto it = conns.find(id);
            if (it == conns.end()) continue;
            Conn& c = *it->second;
            if (c.phase == Phase::kReading && (c.started || c.served == 0)) {
                stats->count(HttpRefusal::kTimeout);
                respond(c, error_response(408, "request timeout"), true);
            } else {
                // Idle keep-alive, a stalled reader, or lingering done.
                if (c.phase == Phase::kWriting) {
                    stats->write_timeouts.fetch_add(1);
                }
                close_conn(c);
            }
        }
    }

    // --- connections

    void watch(Conn& c, std::uint32_t events) {
        if (events == c.watched) return;
        epoll_event ev{};
        ev.events = events;
        ev.data.u64 = c.id;
        int op = c.watched == 0 ? EPOLL_CTL_ADD
                 : events == 0  ? EPOLL_CTL_DEL
                                : EPOLL_CTL_MOD;
        epoll_ctl(epoll_fd, op, c.fd, &ev);
        c.watched = events;
    }

    // Destroys `c`.
    void close_conn(Conn& c) {
        if (c.pipe) c.pipe->abort();
        ::close(c.fd);
        stats->connections.fetch_sub(1);
        conns.erase(c.id);
    }

    void close_all() {
        abort_streams();
        for (auto& entry : conns) ::close(entry.second->fd);
        stats->connections.fetch_sub(static_cast<std::int64_t>(conns.size()));
        conns.clear();
        if (listen_fd >= 0) ::close(listen_fd);
        listen_fd = -1;
    }

    const FrontLimits limits;
    HttpStats* const stats;
    const RequestHandler handler;
    const LaneSelector is_slow;
    const std::string busy_answer;
    const std::string full_answer;

    int epoll_fd = -1;
    int wake_fd = -1;
    int listen_fd = -1;
    std::atomic<bool> stopping{false};
    bool accept_paused = false;
    Clock::time_point accept_resume;
    std::uint64_t next_id = kFirstConnId;
    std::unordered_map<std::uint64_t, std::unique_ptr<Conn>> conns;

    std::mutex done_mutex;
    std::vector<Done> done;

    // Last: their threads use everything above, and stop first.
    WorkQueue fast;
    WorkQueue slow;
};

HttpFront::HttpFront(const FrontLimits& limits, HttpStats* stats,
                     RequestHandler handler, LaneSelector is_slow)
    : impl_(std::make_unique<Impl>(limits, stats, std::move(handler),
                                   std::move(is_slow))) {}

HttpFront::~HttpFront() = default;

void HttpFront::listen(const std::string& host, int port) {
    impl_->listen_on(host, port);
}

int HttpFront::port() const { return impl_->bound_port(); }

void HttpFront::run() { impl_->run(); }

void HttpFront::stop() { impl_->stop(); }

}  // namespace apikey
