/*
 * gwclient: the load client of tools/bench/gateway. Two modes:
 *
 *   gwclient count N  HOST PORT PATH [HEADER ...]
 *       one keepalive connection, exactly N requests one after another;
 *       exits 1 unless every response is 200. (wrk cannot send an exact
 *       number of requests; callgrind's per-request figure needs one.)
 *
 *   gwclient pace RATE SECONDS CONNS HOST PORT PATH [HEADER ...]
 *       open loop at a fixed RATE (requests/s) over CONNS keepalive
 *       connections, one request in flight per connection. Request i is
 *       due at t0 + i / RATE; its latency runs from that due time to the
 *       last byte of the response, so time spent waiting for a free
 *       connection counts (no coordinated omission, as in wrk2). The first
 *       0.5 s are a warm-up and not recorded. Prints one line:
 *       "sent=.. ok=.. bad=.. rate=.. p50_us=.. p90_us=.. p99_us=.. p999_us=.. max_us=.."
 *
 *       The client sleeps in epoll until the next request is due (timer
 *       slack 1 ns). GWCLIENT_SPIN_NS=N polls instead when the next one is
 *       due within N ns (fewer late sends, but a whole CPU);
 *       GWCLIENT_TICK_NS=N sleeps at least N ns per wake-up (batches of due
 *       requests). Neither is used by tools/bench/gateway.
 *
 * Responses must carry Content-Length (no chunked encoding): true of
 * every response in the benchmark.
 */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUF_SIZE  65536
#define WARMUP_NS 500000000LL

typedef struct {
    int       fd;
    int       busy;
    int64_t   due;        /* ns: when the request in flight was due */
    size_t    sent;       /* bytes of the request written */
    size_t    have;       /* bytes of the response buffered */
    char      buf[BUF_SIZE];
} conn_t;

static char    *request;
static size_t   request_len;
static struct sockaddr_in  peer;

static int64_t
now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void
die(const char *what)
{
    perror(what);
    exit(2);
}

static void
build_request(const char *host, const char *path, char **headers, int n)
{
    size_t  cap = 4096;
    int     i;

    for (i = 0; i < n; i++) {
        cap += strlen(headers[i]) + 2;
    }

    request = malloc(cap);
    if (request == NULL) {
        die("malloc");
    }

    request_len = snprintf(request, cap, "GET %s HTTP/1.1\r\nHost: %s\r\n",
                           path, host);
    for (i = 0; i < n; i++) {
        request_len += snprintf(request + request_len, cap - request_len,
                                "%s\r\n", headers[i]);
    }
    request_len += snprintf(request + request_len, cap - request_len, "\r\n");
}

static int
connect_one(int nonblocking)
{
    int  fd, one = 1;

    fd = socket(AF_INET, SOCK_STREAM | (nonblocking ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0) {
        die("socket");
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (struct sockaddr *) &peer, sizeof(peer)) != 0
        && errno != EINPROGRESS)
    {
        die("connect");
    }
    return fd;
}

/*
 * A complete response in c->buf: returns its length and its status in
 * *status, 0 if more bytes are needed, -1 if it cannot be parsed.
 */
static ssize_t
parse_response(conn_t *c, int *status)
{
    char    *end, *p, *line;
    size_t   head, body = 0;

    if (c->have < 12) {
        return 0;
    }
    end = memmem(c->buf, c->have, "\r\n\r\n", 4);
    if (end == NULL) {
        return c->have == BUF_SIZE ? -1 : 0;
    }
    head = (size_t) (end - c->buf) + 4;
    if (strncmp(c->buf, "HTTP/1.", 7) != 0) {
        return -1;
    }
    *status = atoi(c->buf + 9);

    for (line = c->buf; line < end; line = p + 2) {
        p = memmem(line, end - line + 2, "\r\n", 2);
        if (p == NULL) {
            break;
        }
        if (p - line > 15 && strncasecmp(line, "Content-Length:", 15) == 0) {
            body = strtoul(line + 15, NULL, 10);
        }
        if (p - line > 18 && strncasecmp(line, "Transfer-Encoding:", 18) == 0) {
            return -1;
        }
    }
    if (*status == 204 || *status == 304) {
        body = 0;
    }
    if (head + body > BUF_SIZE) {
        return -1;
    }
    if (c->have < head + body) {
        return 0;
    }
    return (ssize_t) (head + body);
}

static int
cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *) a, y = *(const int64_t *) b;
    return (x > y) - (x < y);
}

static int
count_mode(long n)
{
    conn_t  *c;
    ssize_t  r, len;
    int      status;
    long     i, bad = 0;

    c = calloc(1, sizeof(conn_t));
    if (c == NULL) {
        die("calloc");
    }
    c->fd = connect_one(0);

    for (i = 0; i < n; i++) {
        size_t off = 0;
        while (off < request_len) {
            r = write(c->fd, request + off, request_len - off);
            if (r <= 0) {
                die("write");
            }
            off += r;
        }
        for ( ;; ) {
            len = parse_response(c, &status);
            if (len < 0) {
                fprintf(stderr, "gwclient: unparsable response\n");
                return 2;
            }
            if (len > 0) {
                break;
            }
            r = read(c->fd, c->buf + c->have, BUF_SIZE - c->have);
            if (r <= 0) {
                fprintf(stderr, "gwclient: connection closed after %ld "
                        "responses\n", i);
                return 2;
            }
            c->have += r;
        }
        if (status != 200) {
            if (bad++ == 0) {
                fprintf(stderr, "gwclient: status %d\n", status);
            }
        }
        memmove(c->buf, c->buf + len, c->have - len);
        c->have -= len;
    }

    close(c->fd);
    printf("requests=%ld bad=%ld\n", n, bad);
    return bad ? 1 : 0;
}

static void
send_on(conn_t *c, int64_t due)
{
    ssize_t  r;

    c->busy = 1;
    c->due = due;
    c->sent = 0;
    r = write(c->fd, request, request_len);
    if (r < 0 && errno != EAGAIN) {
        die("write");
    }
    if (r > 0) {
        c->sent = r;
    }
}

static int
pace_mode(double rate, double seconds, int nconns)
{
    int                  ep, i, n, status;
    conn_t              *conns, *c;
    int64_t              t0, start_rec, end, now, next, interval_ns, idx;
    int64_t             *lat, nlat = 0, cap, sent = 0, ok = 0, bad = 0;
    int64_t              spin, tick;
    ssize_t              r, len;
    struct epoll_event   ev, events[256];
    struct timespec      timeout;
    int                 *idle, nidle;

    conns = calloc(nconns, sizeof(conn_t));
    idle = calloc(nconns, sizeof(int));
    cap = (int64_t) (rate * seconds) + 1024;
    lat = malloc(cap * sizeof(int64_t));
    if (conns == NULL || idle == NULL || lat == NULL) {
        die("calloc");
    }

    ep = epoll_create1(0);
    if (ep < 0) {
        die("epoll_create1");
    }

    nidle = 0;
    for (i = 0; i < nconns; i++) {
        conns[i].fd = connect_one(1);
        ev.events = EPOLLIN;
        ev.data.u32 = i;
        if (epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &ev) != 0) {
            die("epoll_ctl");
        }
        idle[nidle++] = i;
    }
    usleep(100000);   /* connections established */

    /* wake up on time: the default 50 µs timer slack would add to every
     * latency; and spin (timeout 0) when the next request is due within
     * SPIN_NS, since a VM's wake-ups take tens of microseconds */
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    spin = getenv("GWCLIENT_SPIN_NS") ? atoll(getenv("GWCLIENT_SPIN_NS")) : 0;
    tick = getenv("GWCLIENT_TICK_NS") ? atoll(getenv("GWCLIENT_TICK_NS")) : 0;

    interval_ns = (int64_t) (1e9 / rate);
    t0 = now_ns();
    start_rec = t0 + WARMUP_NS;
    end = start_rec + (int64_t) (seconds * 1e9);
    idx = 0;

    for ( ;; ) {
        now = now_ns();

        /* every request that is due goes out on an idle connection */
        while (nidle > 0) {
            next = t0 + idx * interval_ns;
            if (next > now || next >= end) {
                break;
            }
            send_on(&conns[idle[--nidle]], next);
            idx++;
            if (next >= start_rec) {
                sent++;
            }
        }

        next = t0 + idx * interval_ns;
        if (next >= end && nidle == nconns) {
            break;
        }

        if (nidle == 0 || next <= now) {
            /* wait for a response only (all connections busy) */
            timeout.tv_sec = 0;
            timeout.tv_nsec = nidle == 0 ? 10000000 : 0;
        } else if (next - now <= spin) {
            timeout.tv_sec = 0;
            timeout.tv_nsec = 0;
        } else {
            int64_t d = next - now - spin;
            if (d < tick) {
                d = tick;   /* a batch of due requests per wake-up */
            }
            timeout.tv_sec = d / 1000000000LL;
            timeout.tv_nsec = d % 1000000000LL;
        }
        if (next >= end && nidle < nconns) {
            timeout.tv_sec = 0;
            timeout.tv_nsec = 10000000;
        }

        n = epoll_pwait2(ep, events, 256, &timeout, NULL);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            die("epoll_pwait2");
        }

        for (i = 0; i < n; i++) {
            c = &conns[events[i].data.u32];

            if (c->busy && c->sent < request_len) {
                r = write(c->fd, request + c->sent, request_len - c->sent);
                if (r > 0) {
                    c->sent += r;
                }
            }

            r = read(c->fd, c->buf + c->have, BUF_SIZE - c->have);
            if (r == 0) {
                fprintf(stderr, "gwclient: server closed a connection\n");
                return 2;
            }
            if (r < 0) {
                if (errno == EAGAIN) {
                    continue;
                }
                die("read");
            }
            c->have += r;

            len = parse_response(c, &status);
            if (len < 0) {
                fprintf(stderr, "gwclient: unparsable response\n");
                return 2;
            }
            if (len == 0) {
                continue;
            }
            if (!c->busy) {
                fprintf(stderr, "gwclient: unexpected response\n");
                return 2;
            }

            now = now_ns();
            if (c->due >= start_rec) {
                if (status == 200) {
                    ok++;
                } else {
                    bad++;
                }
                if (nlat < cap) {
                    lat[nlat++] = now - c->due;
                }
            }
            memmove(c->buf, c->buf + len, c->have - len);
            c->have -= len;
            c->busy = 0;
            idle[nidle++] = (int) (c - conns);
        }
    }

    qsort(lat, nlat, sizeof(int64_t), cmp_i64);

#define PCT(p) (nlat ? lat[(int64_t) ((nlat - 1) * (p))] / 1000 : 0)

    printf("sent=%lld ok=%lld bad=%lld rate=%.0f p50_us=%lld p90_us=%lld "
           "p99_us=%lld p999_us=%lld max_us=%lld\n",
           (long long) sent, (long long) ok, (long long) bad,
           (double) (ok + bad) / seconds,
           (long long) PCT(0.50), (long long) PCT(0.90),
           (long long) PCT(0.99), (long long) PCT(0.999),
           (long long) PCT(1.0));

    return bad ? 1 : 0;
}

static void
set_peer(const char *host, const char *port)
{
    memset(&peer, 0, sizeof(peer));
    peer.sin_family = AF_INET;
    peer.sin_port = htons((uint16_t) atoi(port));
    if (inet_pton(AF_INET, host, &peer.sin_addr) != 1) {
        fprintf(stderr, "gwclient: HOST must be an IPv4 address\n");
        exit(2);
    }
}

int
main(int argc, char **argv)
{
    if (argc >= 6 && strcmp(argv[1], "count") == 0) {
        set_peer(argv[3], argv[4]);
        build_request(argv[3], argv[5], argv + 6, argc - 6);
        return count_mode(atol(argv[2]));
    }

    if (argc >= 8 && strcmp(argv[1], "pace") == 0) {
        set_peer(argv[5], argv[6]);
        build_request(argv[5], argv[7], argv + 8, argc - 8);
        return pace_mode(atof(argv[2]), atof(argv[3]), atoi(argv[4]));
    }

    fprintf(stderr,
            "usage: gwclient count N HOST PORT PATH [HEADER ...]\n"
            "       gwclient pace RATE SECONDS CONNS HOST PORT PATH "
            "[HEADER ...]\n");
    return 2;
}
