// Aggregate commit benchmark: apikeyd's aggregate path on one core. Plays
// W nginx workers filling their aggregation buffers in a private usage
// segment (not timed), then runs apikeyd's own AggregateCollector on it:
// close, read, check the keys, commit (UsageStore::commit_aggregates: the
// hourly and daily rollups, request_count, last-used, the epochs) and
// clear. Each round every worker's buffer holds KEYS x ENDPOINTS x METHODS
// entries of R requests each, in the current UTC hour (the steady state:
// after the first round every rollup row exists and is updated).
//
//   bench_agg_commit DB SEGMENT KEYS ENDPOINTS METHODS R ROUNDS WORKERS PM
//
// Prints per round and in total (the first round, which inserts the rows,
// left out): entries and requests committed, the wall time of
// collect + commit and the CPU time of this thread in it (apikeyd's
// share), and the CPU time of the PostgreSQL cluster whose postmaster is
// PM over the same rounds (the fills in between leave it idle but for what
// the commits left it to do: WAL writing, checkpoints).
// Keys: key k has id bench_uuid(k) and org bench_uuid(k / 10), as
// tools/bench/bench_keys.sql creates them.

#include <dirent.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "aggregate_collector.h"
#include "config.h"
#include "drainer.h"
#include "key_index.h"
#include "usage_agg.h"
#include "usage_ring.h"
#include "usage_store.h"

namespace {

using apikey::Uuid;

std::int64_t now_us() {
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

double wall_s() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

double thread_cpu_s() {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

// CPU seconds of a PostgreSQL cluster: the postmaster with the children it
// has reaped, plus every live child (backends, WAL writer, checkpointer).
double pg_cpu_s(long postmaster) {
    DIR* d = opendir("/proc");
    if (d == nullptr) return 0;
    unsigned long long ticks = 0;
    while (dirent* de = readdir(d)) {
        const long pid = std::strtol(de->d_name, nullptr, 10);
        if (pid <= 0) continue;
        std::ifstream f("/proc/" + std::string(de->d_name) + "/stat");
        std::string line;
        if (!std::getline(f, line)) continue;
        const std::size_t close = line.rfind(')');
        if (close == std::string::npos) continue;
        std::istringstream in(line.substr(close + 2));
        std::string state;
        long ppid = 0;
        unsigned long long v[13] = {};
        in >> state >> ppid;
        for (unsigned long long& x : v) in >> x;  // fields 5..17
        if (pid == postmaster) {
            ticks += v[9] + v[10] + v[11] + v[12];  // utime stime cu cs
        } else if (ppid == postmaster) {
            ticks += v[9] + v[10];
        }
    }
    closedir(d);
    return static_cast<double>(ticks) / sysconf(_SC_CLK_TCK);
}

Uuid bench_uuid(std::uint32_t n) {
    Uuid u{};
    std::memcpy(u.data(), &n, sizeof(n));
    u[6] = 0x40;
    u[8] = 0x80;
    return u;
}

const char* const kEndpoints[] = {"/api/orders", "/api/users", "/api/items",
                                  "/api/search", "/api/cart",  "/api/pay",
                                  "/static/",    "/api/admin"};
const char* const kMethods[] = {"GET", "POST", "PUT", "DELETE"};
const std::uint16_t kStatuses[] = {200, 200, 200, 201, 304, 404, 200, 500};

struct Shape {
    std::uint32_t keys, endpoints, methods, requests_per_entry;
};

// One worker's buffer: every (key, endpoint, method) of the shape, each R
// times, with a few distinct latencies (histogram cells) and statuses.
std::uint64_t fill(apikey::UsageSegment* seg, std::uint32_t slot,
                   const Shape& s, std::int64_t t_us) {
    std::uint8_t ip[4] = {10, 0, 0, 1};
    std::uint64_t requests = 0;
    for (std::uint32_t k = 0; k < s.keys; ++k) {
        const Uuid key = bench_uuid(k);
        for (std::uint32_t e = 0; e < s.endpoints; ++e) {
            for (std::uint32_t m = 0; m < s.methods; ++m) {
                char method[apikey::kUsageMethodLen] = {};
                const std::size_t mlen = std::strlen(kMethods[m]);
                std::memcpy(method, kMethods[m], mlen);
                for (std::uint32_t r = 0; r < s.requests_per_entry; ++r) {
                    apikey::AggregateInput in;
                    in.key_id = key.data();
                    in.time_us = t_us;
                    in.response_time_us = 1000 * (1 + (k + r) % 4);
                    in.bytes_sent = 512 + r;
                    in.status = kStatuses[(k + e + r) % 8];
                    in.ip_family = apikey::IpFamily::kV4;
                    in.ip = ip;
                    in.method = method;
                    in.method_len = static_cast<std::uint8_t>(mlen);
                    in.endpoint = kEndpoints[e];
                    if (seg->aggregate(slot, in)) ++requests;
                }
            }
        }
    }
    return requests;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 10) {
        std::fprintf(stderr,
                     "usage: %s DB SEGMENT KEYS ENDPOINTS METHODS R ROUNDS "
                     "WORKERS POSTMASTER_PID\n",
                     argv[0]);
        return 2;
    }
    const Shape shape{static_cast<std::uint32_t>(std::atoi(argv[3])),
                      static_cast<std::uint32_t>(std::atoi(argv[4])),
                      static_cast<std::uint32_t>(std::atoi(argv[5])),
                      static_cast<std::uint32_t>(std::atoi(argv[6]))};
    const int rounds = std::atoi(argv[7]);
    const auto workers = static_cast<std::uint32_t>(std::atoi(argv[8]));
    const long postmaster = std::atol(argv[9]);
    if (shape.endpoints > 8 || shape.methods > 4 || workers < 1 ||
        workers > 8 || rounds < 1) {
        std::fprintf(stderr, "at most 8 endpoints, 4 methods, 8 workers\n");
        return 2;
    }

    apikey::UsageSegment seg;
    bool created = false;
    std::string err;
    const apikey::UsageLayout layout =
        apikey::usage_layout_for(1u << 20, 8, apikey::kAggDefaultEntries);
    if (seg.open_or_create(argv[2], layout, 0600, &created, &err) !=
        apikey::SegmentStatus::kOk) {
        std::fprintf(stderr, "segment: %s\n", err.c_str());
        return 1;
    }
    std::vector<std::uint32_t> slots;
    for (std::uint32_t w = 0; w < workers; ++w) {
        const int s = seg.claim_slot(static_cast<std::int32_t>(getpid()),
                                     now_us());
        if (s < 0) {
            std::fprintf(stderr, "no free slot\n");
            return 1;
        }
        slots.push_back(static_cast<std::uint32_t>(s));
    }

    apikey::KeyIndex keys;
    for (std::uint32_t k = 0; k < shape.keys; ++k) {
        keys.put(bench_uuid(k), bench_uuid(k / 10));
    }
    keys.mark_ready();
    apikey::DaemonConfig config;
    config.db = argv[1];
    // A node of its own per run: epochs start at 1 in every new segment.
    config.node = "bench-agg-" + std::to_string(getpid());
    apikey::UsageStore store(config);
    apikey::DrainerStats stats;
    apikey::AggregateCollector collector(&store, &keys, &stats);

    std::printf("round entries requests collect_ms commit_ms wall_ms "
                "cpu_ms\n");
    double wall = 0, cpu = 0, pg0 = 0;
    std::uint64_t entries = 0, requests = 0;
    // The collector closes a slot's buffer once it is due on its clock:
    // each round is the longest period later.
    std::int64_t clock_us = now_us();
    for (int round = 0; round <= rounds; ++round) {
        std::uint64_t filled = 0;
        for (std::uint32_t s : slots) filled += fill(&seg, s, shape, now_us());
        clock_us += apikey::kAggregateMaxEveryUs;
        const std::uint64_t e0 = stats.agg_entries_committed;
        const std::uint64_t r0 = stats.agg_requests_committed;
        const double w0 = wall_s(), c0 = thread_cpu_s();
        collector.collect(&seg, clock_us);
        const double w1 = wall_s();
        if (!collector.commit(clock_us)) {
            std::fprintf(stderr, "commit failed (see above)\n");
            return 1;
        }
        const double w2 = wall_s(), c2 = thread_cpu_s();
        const std::uint64_t de = stats.agg_entries_committed - e0;
        const std::uint64_t dr = stats.agg_requests_committed - r0;
        if (dr != filled) {
            std::fprintf(stderr, "round %d: %llu requests filled, %llu "
                         "committed\n", round,
                         static_cast<unsigned long long>(filled),
                         static_cast<unsigned long long>(dr));
            return 1;
        }
        std::printf("%d %llu %llu %.1f %.1f %.1f %.1f%s\n", round,
                    static_cast<unsigned long long>(de),
                    static_cast<unsigned long long>(dr), (w1 - w0) * 1e3,
                    (w2 - w1) * 1e3, (w2 - w0) * 1e3, (c2 - c0) * 1e3,
                    round == 0 ? " (warm-up: inserts the rows)" : "");
        if (round == 0) {
            pg0 = pg_cpu_s(postmaster);
            continue;
        }
        wall += w2 - w0;
        cpu += c2 - c0;
        entries += de;
        requests += dr;
    }
    sleep(1);  // what the last COMMIT left the WAL writer to do
    const double pg = pg_cpu_s(postmaster) - pg0;
    std::printf("total %llu entries, %llu requests in %.3f s wall, %.3f s "
                "apikeyd CPU, %.3f s PostgreSQL CPU\n",
                static_cast<unsigned long long>(entries),
                static_cast<unsigned long long>(requests), wall, cpu, pg);
    std::printf("entries/s: wall %.0f, per apikeyd CPU-second %.0f, per "
                "PostgreSQL CPU-second %.0f\n",
                entries / wall, entries / cpu, pg > 0 ? entries / pg : 0);
    std::printf("requests/s: wall %.0f, per apikeyd CPU-second %.0f, per "
                "PostgreSQL CPU-second %.0f\n",
                requests / wall, requests / cpu, pg > 0 ? requests / pg : 0);
    return 0;
}
