// Ingest benchmark producer: plays nginx's part. Creates (or reuses) the
// usage segment, claims a slot and appends synthetic records with the
// current time, either as fast as the drainer takes them or at a fixed
// rate. Unlike a worker it waits when the chunk pool is empty: the
// benchmark measures apikeyd.
//
//   bench_ingest_producer PATH RECORDS [RATE_PER_S] [KEYS] [uniform|skewed]
//
// uniform: every request picks any key, endpoint and method (the worst case
// for rollups: nearly one rollup row per record in a batch). skewed: key
// popularity falls off steeply and each key uses two endpoints with a fixed
// method each, as API clients do.

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "usage_ring.h"

namespace {

std::int64_t now_us() {
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

const char* const kEndpoints[] = {"/api/orders", "/api/users", "/api/items",
                                  "/api/search", "/api/cart",  "/api/pay",
                                  "/static/",    "/api/admin"};
const char* const kMethods[] = {"GET", "POST", "PUT"};
const std::uint16_t kStatuses[] = {200, 200, 200, 200, 201, 304, 404, 500};

apikey::UsageRecord make_record(std::mt19937_64& rng, std::uint32_t keys,
                                bool skewed) {
    apikey::UsageRecord r;
    std::memset(&r, 0, sizeof(r));
    r.result = apikey::AuthResult::kOk;
    std::uint32_t key;
    if (skewed) {
        double u = std::uniform_real_distribution<double>(0, 1)(rng);
        key = static_cast<std::uint32_t>(keys * u * u * u);
    } else {
        key = static_cast<std::uint32_t>(rng() % keys);
    }
    // Key k belongs to org k / 10 (tools/bench/ingest inserts both: apikeyd
    // stores usage of known keys only).
    std::memcpy(r.key_id, &key, sizeof(key));
    r.key_id[6] = 0x40;
    r.key_id[8] = 0x80;
    std::uint32_t org = key / 10;
    std::memcpy(r.org_id, &org, sizeof(org));
    r.org_id[6] = 0x40;
    r.org_id[8] = 0x80;
    r.status = kStatuses[rng() % 8];
    r.response_time_us = 200 + rng() % 50000;
    r.bytes_sent = 200 + rng() % 5000;
    r.ip_family = apikey::IpFamily::kV4;
    r.ip[0] = 10;
    r.ip[3] = static_cast<std::uint8_t>(rng());
    std::uint32_t e = skewed ? (key + rng() % 2) % 8 : rng() % 8;
    const char* ep = kEndpoints[e];
    const char* m = kMethods[skewed ? e % 3 : rng() % 3];
    r.endpoint_len = static_cast<std::uint8_t>(
        apikey::copy_truncated(r.endpoint, sizeof(r.endpoint), ep));
    r.method_len = static_cast<std::uint8_t>(
        apikey::copy_truncated(r.method, sizeof(r.method), m));
    r.user_agent_len = static_cast<std::uint16_t>(apikey::copy_truncated(
        r.user_agent, sizeof(r.user_agent), "bench/1.0 (ingest producer)"));
    return r;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr,
                     "usage: %s PATH RECORDS [RATE_PER_S] [KEYS]\n", argv[0]);
        return 2;
    }
    const char* path = argv[1];
    std::uint64_t total = std::strtoull(argv[2], nullptr, 10);
    double rate = argc > 3 ? std::atof(argv[3]) : 0;
    std::uint32_t keys = argc > 4 ? std::atoi(argv[4]) : 1000;
    bool skewed = argc > 5 && std::strcmp(argv[5], "skewed") == 0;

    apikey::UsageLayout layout = apikey::usage_layout_for(
        64u << 20, 8, apikey::kAggDefaultEntries);
    apikey::UsageSegment seg;
    bool created = false;
    std::string err;
    if (seg.open_or_create(path, layout, 0600, &created, &err) !=
        apikey::SegmentStatus::kOk) {
        std::fprintf(stderr, "producer: %s\n", err.c_str());
        return 1;
    }
    int slot = seg.claim_slot(static_cast<std::int32_t>(getpid()), now_us());
    if (slot < 0) {
        std::fprintf(stderr, "producer: no free ring\n");
        return 1;
    }

    apikey::StreamWriter writer;
    std::mt19937_64 rng(42);
    auto start = std::chrono::steady_clock::now();
    for (std::uint64_t i = 0; i < total; ++i) {
        if (rate > 0) {
            auto due = start + std::chrono::microseconds(
                                   static_cast<std::int64_t>(i * 1e6 / rate));
            while (std::chrono::steady_clock::now() < due) {
                std::this_thread::sleep_for(std::chrono::microseconds(50));
            }
        }
        apikey::UsageRecord r = make_record(rng, keys, skewed);
        r.time_us = now_us();
        while (!seg.append(static_cast<std::uint32_t>(slot), &writer,
                           apikey::usage_fields_of(r))) {
            // Pool empty: wait for apikeyd, sleeping rather than spinning so the
            // 2-core machine's other core stays with PostgreSQL (the drop
            // counter records the retries: the benchmark reads commits).
            std::this_thread::sleep_for(std::chrono::microseconds(500));
            r.time_us = now_us();
        }
    }
    double secs = std::chrono::duration<double>(
                      std::chrono::steady_clock::now() - start)
                      .count();
    seg.retire_slot(static_cast<std::uint32_t>(slot));
    std::printf("producer: pushed %llu records in %.2f s\n",
                static_cast<unsigned long long>(total), secs);
    return 0;
}
