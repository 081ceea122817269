// Micro-benchmarks of the usage ring's producer side: the per-request cost
// in an nginx worker's log phase, with memcpy of one record as the physical
// reference.
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include <benchmark/benchmark.h>

#include "usage_ring.h"

namespace apikey {
namespace {

// 64 MiB over 4 workers: what `apikey_usage ... size=64m` gives each ring.
constexpr std::uint64_t kRingCapacity = 32768;
constexpr std::size_t kConsumerBatch = 256;

UsageRecord sample_record() {
    UsageRecord r{};
    r.version = kUsageRecordVersion;
    r.result = AuthResult::kOk;
    r.ip_family = IpFamily::kV4;
    r.status = 200;
    r.time_us = 1700000000000000;
    r.response_time_us = 1234;
    r.bytes_sent = 5678;
    r.method_len = copy_truncated(r.method, kUsageMethodLen, "GET");
    r.endpoint_len =
        copy_truncated(r.endpoint, kUsageEndpointLen, "/v1/orders/{id}");
    r.user_agent_len =
        copy_truncated(r.user_agent, kUsageUserAgentLen, "curl/8.5.0");
    return r;
}

// A one-slot segment in a private directory (tmpfs if there is one, as in
// production); removed on destruction.
class BenchSegment {
public:
    explicit BenchSegment(std::uint64_t capacity) {
        char tmpl[] = "/dev/shm/apikey_bench.XXXXXX";
        char tmpl_tmp[] = "/tmp/apikey_bench.XXXXXX";
        const char* dir = mkdtemp(tmpl);
        if (dir == nullptr) {
            dir = mkdtemp(tmpl_tmp);
        }
        if (dir == nullptr) {
            std::perror("mkdtemp");
            std::abort();
        }
        dir_ = dir;
        path_ = dir_ + "/usage";
        const std::size_t size = kUsageHeaderSize + sizeof(UsageSlot) +
                                 capacity * sizeof(UsageRecord);
        bool created = false;
        std::string error;
        if (seg_.open_or_create(path_.c_str(),
                                usage_layout_for(size, 1, kAggMinEntries),
                                0600, &created, &error) != SegmentStatus::kOk ||
            seg_.claim_slot(static_cast<std::int32_t>(getpid()), 1) != 0) {
            std::fprintf(stderr, "%s\n", error.c_str());
            std::abort();
        }
    }
    ~BenchSegment() {
        seg_.reset();
        unlink(path_.c_str());
        rmdir(dir_.c_str());
    }
    BenchSegment(const BenchSegment&) = delete;
    BenchSegment& operator=(const BenchSegment&) = delete;

    UsageSegment& seg() { return seg_; }

private:
    std::string dir_;
    std::string path_;
    UsageSegment seg_;
};

// The physical reference: one record copied into a ring-sized array.
void BM_MemcpyRecord(benchmark::State& state) {
    std::vector<UsageRecord> ring(kRingCapacity);
    const UsageRecord record = sample_record();
    std::uint64_t i = 0;
    for (auto _ : state) {
        std::memcpy(&ring[i & (kRingCapacity - 1)], &record, sizeof record);
        ++i;
        benchmark::ClobberMemory();
    }
    state.SetItemsProcessed(state.iterations());
    state.SetBytesProcessed(state.iterations() * sizeof(UsageRecord));
}
BENCHMARK(BM_MemcpyRecord);

// Push with the tail advanced in the same thread: the ring's own cost
// without cross-core traffic.
void BM_PushConsumerSameThread(benchmark::State& state) {
    BenchSegment bench(kRingCapacity);
    UsageSegment& seg = bench.seg();
    const UsageRecord record = sample_record();
    std::uint64_t n = 0;
    for (auto _ : state) {
        benchmark::DoNotOptimize(seg.push(0, record));
        if ((++n & (kConsumerBatch - 1)) == 0) {
            seg.commit(0, n);
        }
    }
    state.counters["dropped"] = static_cast<double>(seg.slot(0).dropped.load());
    state.SetItemsProcessed(state.iterations());
    state.SetBytesProcessed(state.iterations() * sizeof(UsageRecord));
}
BENCHMARK(BM_PushConsumerSameThread);

// Push while another thread drains as apikeyd does (peek a batch, commit).
void BM_PushWithDrainingConsumer(benchmark::State& state) {
    BenchSegment bench(kRingCapacity);
    UsageSegment& seg = bench.seg();
    std::atomic<bool> stop{false};
    std::thread consumer([&] {
        std::vector<UsageRecord> batch(kConsumerBatch);
        std::uint64_t pos = 0;
        while (!stop.load(std::memory_order_relaxed)) {
            const std::size_t n = seg.peek(0, pos, batch.data(), batch.size());
            if (n == 0) {
                std::this_thread::yield();
                continue;
            }
            pos += n;
            seg.commit(0, pos);
        }
    });
    const UsageRecord record = sample_record();
    for (auto _ : state) {
        benchmark::DoNotOptimize(seg.push(0, record));
    }
    stop.store(true, std::memory_order_relaxed);
    consumer.join();
    const auto dropped = seg.slot(0).dropped.load();
    state.counters["dropped"] = static_cast<double>(dropped);
    state.counters["drop%"] = 100.0 * static_cast<double>(dropped) /
                              static_cast<double>(state.iterations());
    state.SetItemsProcessed(state.iterations());
    state.SetBytesProcessed(state.iterations() * sizeof(UsageRecord));
}
BENCHMARK(BM_PushWithDrainingConsumer)->UseRealTime();

// Every push finds the ring full: reload the tail, count, give up.
void BM_PushFullRingDrops(benchmark::State& state) {
    BenchSegment bench(64);
    UsageSegment& seg = bench.seg();
    const UsageRecord record = sample_record();
    while (seg.push(0, record)) {
    }
    for (auto _ : state) {
        benchmark::DoNotOptimize(seg.push(0, record));
    }
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_PushFullRingDrops);

}  // namespace
}  // namespace apikey

BENCHMARK_MAIN();
