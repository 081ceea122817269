// Micro-benchmarks of the usage stream's producer side: the per-request
// cost in an nginx worker's log phase, with a memcpy of one fixed 288-byte
// record (what the rings held before) as the physical reference.
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

constexpr std::uint64_t kRingCapacity = 32768;
constexpr std::size_t kOldRecordBytes = 288;
constexpr std::size_t kConsumerBatch = 256;
constexpr std::size_t kSegmentBytes = 64u << 20;

UsageRecord sample_record() {
    UsageRecord r{};
    r.result = AuthResult::kOk;
    r.ip_family = IpFamily::kV4;
    r.status = 200;
    r.time_us = 1700000000000000;
    r.response_time_us = 1234;
    r.bytes_sent = 5678;
    r.method_len =
        static_cast<std::uint8_t>(copy_truncated(r.method, kUsageMethodLen, "GET"));
    r.endpoint_len = static_cast<std::uint8_t>(
        copy_truncated(r.endpoint, kUsageEndpointLen, "/v1/orders/{id}"));
    r.user_agent_len = static_cast<std::uint16_t>(
        copy_truncated(r.user_agent, kUsageUserAgentLen, "curl/8.5.0"));
    return r;
}

// A one-slot segment in a private directory (tmpfs if there is one, as in
// production); removed on destruction.
class BenchSegment {
public:
    explicit BenchSegment(std::size_t size) {
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

// The physical reference: one fixed record copied into a ring-sized array.
void BM_MemcpyRecord(benchmark::State& state) {
    std::vector<unsigned char> ring(kRingCapacity * kOldRecordBytes);
    unsigned char record[kOldRecordBytes] = {1};
    std::uint64_t i = 0;
    for (auto _ : state) {
        std::memcpy(&ring[(i & (kRingCapacity - 1)) * kOldRecordBytes], record,
                    sizeof record);
        ++i;
        benchmark::ClobberMemory();
    }
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_MemcpyRecord);

// Append with the tail advanced in the same thread: the stream's own cost
// without cross-core traffic (records repeat the key and texts: the
// encoding refers to the previous record).
void BM_AppendConsumerSameThread(benchmark::State& state) {
    BenchSegment bench(kSegmentBytes);
    UsageSegment& seg = bench.seg();
    const UsageRecord record = sample_record();
    const UsageFields fields = usage_fields_of(record);
    StreamWriter writer;
    std::uint64_t n = 0;
    for (auto _ : state) {
        benchmark::DoNotOptimize(seg.append(0, &writer, fields));
        if ((++n & (kConsumerBatch - 1)) == 0) {
            seg.commit(0, seg.slot(0).head.load());
        }
    }
    state.counters["dropped"] = static_cast<double>(seg.slot(0).dropped.load());
    state.counters["bytes/record"] =
        static_cast<double>(seg.slot(0).head.load()) /
        static_cast<double>(state.iterations());
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_AppendConsumerSameThread);

// Append while another thread drains as apikeyd does (peek a batch, commit).
void BM_AppendWithDrainingConsumer(benchmark::State& state) {
    BenchSegment bench(kSegmentBytes);
    UsageSegment& seg = bench.seg();
    std::atomic<bool> stop{false};
    std::thread consumer([&] {
        std::vector<UsageRecord> batch(kConsumerBatch);
        while (!stop.load(std::memory_order_relaxed)) {
            std::uint64_t end = 0;
            const std::size_t n =
                seg.peek(0, 0, batch.data(), batch.size(), &end);
            if (n == 0) {
                std::this_thread::yield();
                continue;
            }
            seg.commit(0, end);
        }
    });
    const UsageFields fields = usage_fields_of(sample_record());
    StreamWriter writer;
    for (auto _ : state) {
        benchmark::DoNotOptimize(seg.append(0, &writer, fields));
    }
    stop.store(true, std::memory_order_relaxed);
    consumer.join();
    const auto dropped = seg.slot(0).dropped.load();
    state.counters["dropped"] = static_cast<double>(dropped);
    state.counters["drop%"] = 100.0 * static_cast<double>(dropped) /
                              static_cast<double>(state.iterations());
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_AppendWithDrainingConsumer)->UseRealTime();

// Every append finds the pool empty: one failed pop, count, give up.
void BM_AppendEmptyPoolDrops(benchmark::State& state) {
    BenchSegment bench(1u << 20);
    UsageSegment& seg = bench.seg();
    const UsageFields fields = usage_fields_of(sample_record());
    StreamWriter writer;
    while (seg.append(0, &writer, fields)) {
    }
    for (auto _ : state) {
        benchmark::DoNotOptimize(seg.append(0, &writer, fields));
    }
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_AppendEmptyPoolDrops);

}  // namespace
}  // namespace apikey

BENCHMARK_MAIN();
