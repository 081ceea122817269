// Fuzz target: apikeyd's reading and clearing of an aggregation buffer
// (UsageSegment::agg_read / agg_clear, shared/usage_agg.cpp) whose contents
// a worker wrote: a crashed or compromised worker can leave anything there.
//
// Input: 12 bytes of used counts (entries, labels, cells; little-endian
// u32), then the rest cut in three, written over the start of the entry,
// label and cell tables of a closed buffer. The buffer is the last of the
// file, so a read past it leaves the mapping.
//
// Checks: agg_read returns at most the table's capacity of entries, each
// with requests == the sum of its status counts and > 0, a method of at
// most 16 and an endpoint of at most 96 bytes, latency buckets that exist,
// one pair per bucket in order; exactly as many entries as the counted
// rows with a non-zero sum (computed here independently). agg_clear leaves
// the buffer clean and empty, and the worker then aggregates two requests
// into it exactly.
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "usage_ring.h"

#include "fuzz_check.h"

namespace {

using namespace apikey;

std::string g_dir;
std::string g_path;
UsageSegment* g_seg = nullptr;

void remove_file() {
    delete g_seg;
    ::unlink(g_path.c_str());
    ::rmdir(g_dir.c_str());
}

unsigned char* buffer(std::uint64_t epoch) {
    return reinterpret_cast<unsigned char*>(&g_seg->header()) +
           g_seg->header().agg_area_offset + (epoch & 1) *
           g_seg->agg_layout().buffer_size;
}

std::uint32_t get32(const std::uint8_t* p) {
    std::uint32_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// Rows [0, min(used, cap)) whose five status counts do not add up to 0.
std::size_t counted_rows(std::uint32_t used) {
    const AggLayout& l = g_seg->agg_layout();
    const std::uint32_t n = used < l.entries ? used : l.entries;
    const auto* rows =
        reinterpret_cast<const AggEntry*>(buffer(1) + l.entries_offset);
    std::size_t counted = 0;
    for (std::uint32_t i = 0; i < n; ++i) {
        std::uint64_t sum = 0;
        for (std::uint64_t s : rows[i].status) sum += s;
        counted += sum != 0;
    }
    return counted;
}

// Closes the active buffer and discards it (read, then cleared).
std::uint64_t close_and_drop(std::vector<AggregateEntry>* out) {
    const std::uint64_t e = g_seg->agg_close(0);
    FUZZ_CHECK(e != 0);
    FUZZ_CHECK(g_seg->agg_settled(0, e));
    out->clear();
    g_seg->agg_read(0, e, out);
    g_seg->agg_clear(0, e);
    return e;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    std::string templ = fuzz_scratch_dir() + "/apikey-fuzz-agg-XXXXXX";
    FUZZ_CHECK(::mkdtemp(templ.data()) != nullptr);
    g_dir = templ;
    g_path = g_dir + "/usage";
    g_seg = new UsageSegment();
    bool created = false;
    std::string error;
    const std::size_t stream = std::size_t{1} << 20;  // a few chunks
    FUZZ_CHECK(g_seg->open_or_create(
                   g_path.c_str(), usage_layout_for(stream, 1, kAggMinEntries),
                   0600, &created, &error) == SegmentStatus::kOk);
    FUZZ_CHECK(g_seg->claim_slot(1, 1) == 0);
    std::atexit(remove_file);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data,
                                      std::size_t size) {
    if (size < 12) return 0;
    const AggLayout& l = g_seg->agg_layout();
    std::vector<AggregateEntry> out;

    // Make buffer 1 the closed one: the file's last buffer.
    std::uint64_t e = g_seg->slot(0).agg_epoch.load();
    if ((e & 1) == 0) {
        close_and_drop(&out);
    }
    e = g_seg->agg_close(0);
    FUZZ_CHECK(e != 0 && (e & 1) == 1);

    unsigned char* b = buffer(e);
    auto* h = reinterpret_cast<AggBufferHeader*>(b);
    h->entries_used.store(get32(data));
    h->labels_used.store(get32(data + 4));
    h->cells_used.store(get32(data + 8));
    const std::uint8_t* rest = data + 12;
    const std::size_t third = (size - 12) / 3;
    const std::size_t offsets[] = {l.entries_offset, l.labels_offset,
                                   l.cells_offset};
    const std::size_t ends[] = {l.labels_offset, l.cells_offset,
                                l.buffer_size};
    for (int t = 0; t < 3; ++t) {
        const std::size_t n = std::min(third, ends[t] - offsets[t]);
        std::memcpy(b + offsets[t], rest + t * third, n);
    }

    const std::size_t want = counted_rows(get32(data));
    const std::size_t n = g_seg->agg_read(0, e, &out);
    FUZZ_CHECK(n == out.size());
    FUZZ_CHECK(n == want);
    FUZZ_CHECK(n <= l.entries);
    for (const AggregateEntry& a : out) {
        FUZZ_CHECK(a.requests == a.status_2xx + a.status_3xx + a.status_4xx +
                                     a.status_5xx + a.status_other);
        FUZZ_CHECK(a.requests != 0);
        FUZZ_CHECK(a.method.size() <= kUsageMethodLen);
        FUZZ_CHECK(a.endpoint.size() <= kUsageEndpointLen);
        for (std::size_t i = 0; i < a.latency.size(); ++i) {
            FUZZ_CHECK(a.latency[i].first < kLatencyBucketCount);
            FUZZ_CHECK(i == 0 || a.latency[i - 1].first < a.latency[i].first);
        }
    }

    g_seg->agg_clear(0, e);
    FUZZ_CHECK(h->state.load() ==
               static_cast<std::uint32_t>(AggBufferState::kClean));
    FUZZ_CHECK(h->entries_used.load() == 0 && h->labels_used.load() == 0 &&
               h->cells_used.load() == 0);

    // The worker's next turn in this buffer (garbage left past the used
    // rows and in the indexes) still counts exactly.
    close_and_drop(&out);
    FUZZ_CHECK(g_seg->slot(0).agg_epoch.load() == e + 2);
    std::uint8_t key[16] = {1, 2, 3};
    const std::uint8_t ip[4] = {127, 0, 0, 1};
    AggregateInput in;
    in.key_id = key;
    in.time_us = 1704153600LL * 1000000;
    in.status = 200;
    in.ip_family = IpFamily::kV4;
    in.ip = ip;
    static const char kGet[kUsageMethodLen] = "GET";
    in.method = kGet;
    in.method_len = 3;
    in.endpoint = "/fuzz";
    FUZZ_CHECK(g_seg->aggregate(0, in));
    FUZZ_CHECK(g_seg->aggregate(0, in));
    close_and_drop(&out);
    FUZZ_CHECK(out.size() == 1 && out[0].requests == 2 &&
               out[0].endpoint == "/fuzz");
    return 0;
}
