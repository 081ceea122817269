// Fuzz target: the consumer side of the usage stream (shared/usage_stream,
// shared/usage_record) reading bytes a worker wrote: records, chunk
// tables, positions, none of them trusted.
//
// Input: 8 bytes of slot state (head offset into the stream: u16; chunk
// table entries for sequences 0 and 1: u8 each; chunks_taken: u8; tail
// offset: u16; one spare byte), then the bytes of chunk 0 (up to 64 KiB);
// chunk 1 holds a valid record.
//
// Checks:
//  - read() never reads outside the stream area (ASan: the area is its
//    own allocation) and never past the head (bounded to a pool's worth
//    ahead of the tail); it returns at most `max`
//    records, each inside [tail, head), in increasing positions, with
//    texts within their fields;
//  - every record it returns encodes again and decodes to the same fields
//    (what the decoder accepts is what the encoder can say);
//  - release() and release_all() give back only chunk indexes in range
//    (a table naming one chunk twice corrupts the pool's list, which only
//    costs the writer's own records: the walk stays bounded).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "usage_ring.h"
#include "usage_stream.h"

#include "../usage_fields_equal.h"
#include "fuzz_check.h"

namespace {

using namespace apikey;

constexpr std::uint32_t kChunks = 2;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data,
                                      std::size_t size) {
    if (size < 8) return 0;
    const StreamLayout layout = stream_layout(1, kChunks);
    std::vector<unsigned char> area(layout.size);
    UsageStream stream;
    stream.map(area.data(), layout);
    stream.format();
    auto slot = std::make_unique<UsageSlot>();

    // Chunk 1: one valid record, so a read may cross into it.
    UsageRecord valid{};
    valid.result = AuthResult::kOk;
    valid.status = 200;
    valid.time_us = 1700000000000000;
    StreamSlotState& st = stream.state(0);
    StreamWriter w;
    slot->head.store(kStreamChunkSize);
    st.chunks_taken.store(1);
    std::atomic<std::uint32_t>* table = reinterpret_cast<std::atomic<std::uint32_t>*>(
        area.data() + sizeof(StreamPool) + sizeof(StreamSlotState));
    (void)stream.append(0, *slot, &w, usage_fields_of(valid), 0);

    const std::uint64_t head = data[0] | std::uint64_t{data[1]} << 8;
    table[0].store(data[2]);
    table[1].store(data[3]);
    st.chunks_taken.store(data[4]);
    const std::uint64_t tail = data[5] | std::uint64_t{data[6]} << 8;
    const std::size_t n = std::min<std::size_t>(size - 8, kStreamChunkSize);
    std::memcpy(area.data() + layout.chunks_offset, data + 8, n);
    slot->head.store(head + (data[7] & 1 ? kStreamChunkSize : 0));
    slot->tail.store(tail);

    std::vector<UsageRecord> out(64);
    std::uint64_t end = 0, corrupt = 0;
    const std::size_t got =
        stream.read(0, *slot, 0, out.data(), out.size(), &end, &corrupt);
    FUZZ_CHECK(got <= out.size());
    // The head as read() bounds it: never behind the tail, never more
    // than the pool ahead of it.
    std::uint64_t h = slot->head.load();
    if (h < tail) h = tail;
    h = std::min<std::uint64_t>(h, tail + kChunks * kStreamChunkSize);
    std::uint64_t prev = 0;
    for (std::size_t i = 0; i < got; ++i) {
        const UsageRecord& r = out[i];
        FUZZ_CHECK(r.slot == 0);
        FUZZ_CHECK(r.sequence >= tail && r.sequence < h);
        FUZZ_CHECK(i == 0 || r.sequence > prev);
        prev = r.sequence;
        FUZZ_CHECK(r.method_len <= kUsageMethodLen);
        FUZZ_CHECK(r.endpoint_len <= kUsageEndpointLen);
        FUZZ_CHECK(r.user_agent_len <= kUsageUserAgentLen);
        std::vector<unsigned char> again(kUsageRecordMaxBytes);
        RecordEncodeContext ectx;
        const std::size_t len = encode_usage_record(
            again.data(), 0, again.size(), usage_fields_of(r), &ectx);
        FUZZ_CHECK(len > 0);
        RecordDecodeContext dctx;
        UsageRecord back;
        std::size_t used = 0;
        FUZZ_CHECK(decode_usage_record(again.data(), 0, len, &dctx, &back,
                                       &used) == DecodeResult::kRecord);
        FUZZ_CHECK(used == len && usage_fields_equal(back, r));
    }
    FUZZ_CHECK(got == 0 || end > prev);

    slot->tail.store(end);
    stream.release(0, *slot);
    stream.release_all(0, *slot);
    FUZZ_CHECK(stream.free_chunks() <= kChunks);
    return 0;
}
