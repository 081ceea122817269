// extern "C" glue for usage capture: the usage segment, the worker's
// record stream and its aggregates. Every entry point is noexcept; the hot
// path (push, aggregate, count) does no allocation and no syscall.

#include <cstddef>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <string_view>
#include <type_traits>

#include "apikey_glue.h"
#include "apikey_glue_errors.h"
#include "usage_ring.h"

struct apikey_usage_s {
    apikey::UsageSegment segment;
    // The worker's own: each worker has its copy of the master's object.
    apikey::StreamWriter writer;
};

namespace {

apikey::UnrecordedCounter counter_for(apikey_result_e result) noexcept {
    switch (result) {
        case APIKEY_MISSING: return apikey::UnrecordedCounter::kMissing;
        case APIKEY_MALFORMED: return apikey::UnrecordedCounter::kMalformed;
        case APIKEY_UNAVAILABLE: return apikey::UnrecordedCounter::kUnavailable;
        default: return apikey::UnrecordedCounter::kUnknown;
    }
}

std::string_view text(const unsigned char* p, size_t n) noexcept {
    return std::string_view(reinterpret_cast<const char*>(p), n);
}

}  // namespace

extern "C" {

static_assert(APIKEY_AGGREGATE_DEFAULT == apikey::kAggDefaultEntries);
static_assert(APIKEY_AGGREGATE_MIN == apikey::kAggMinEntries);
static_assert(APIKEY_AGGREGATE_MAX == apikey::kAggMaxEntries);

apikey_usage_t* apikey_usage_open(const char* path, size_t size,
                                  unsigned slots, unsigned aggregate,
                                  int* created, char* err,
                                  size_t err_len) noexcept {
    try {
        if (apikey::agg_layout_for(aggregate).entries == 0) {
            apikey::copy_error("aggregate=" + std::to_string(aggregate) +
                                   " out of range",
                               err, err_len);
            return nullptr;
        }
        apikey::UsageLayout layout = apikey::usage_layout_for(
            size, static_cast<std::uint32_t>(slots), aggregate);
        if (layout.chunk_count == 0) {
            apikey::copy_error("size too small for " + std::to_string(slots) +
                           " streams",
                       err, err_len);
            return nullptr;
        }
        auto usage = std::make_unique<apikey_usage_s>();
        bool fresh = false;
        std::string why;
        // 0600: nginx workers inherit the master's mapping, so no process
        // of the worker user (a PHP pool, say) can open the file to forge
        // or hide usage; apikeyd owns it.
        apikey::SegmentStatus s =
            usage->segment.open_or_create(path, layout, 0600, &fresh, &why);
        if (s != apikey::SegmentStatus::kOk) {
            apikey::copy_error(why, err, err_len);
            return nullptr;
        }
        *created = fresh ? 1 : 0;
        return usage.release();
    } catch (...) {
        apikey::copy_error("out of memory", err, err_len);
        return nullptr;
    }
}

void apikey_usage_close(apikey_usage_t* usage) noexcept { delete usage; }

int apikey_usage_claim(apikey_usage_t* usage, int pid,
                       int64_t now_us) noexcept {
    usage->writer = apikey::StreamWriter{};
    return usage->segment.claim_slot(pid, now_us);
}

void apikey_usage_retire(apikey_usage_t* usage, int slot) noexcept {
    usage->segment.retire_slot(static_cast<std::uint32_t>(slot));
}

static_assert(APIKEY_METHOD_FIELD_LEN == apikey::kUsageMethodLen);
static_assert(APIKEY_ENDPOINT_FIELD_LEN == apikey::kUsageEndpointLen);

size_t apikey_usage_pad_text(unsigned char* dst, size_t cap,
                             const unsigned char* src, size_t len) noexcept {
    std::memset(dst, 0, cap);
    return apikey::copy_truncated(reinterpret_cast<char*>(dst), cap,
                                  text(src, len));
}

uint64_t apikey_usage_label_hash(const unsigned char* field,
                                 size_t len) noexcept {
    return apikey::agg_text_hash(text(field, len));
}

static_assert(static_cast<int>(apikey::IpFamily::kV4) == 4 &&
              static_cast<int>(apikey::IpFamily::kV6) == 6);

// The shim fills the core's UsageFields itself: the same layout.
#define APIKEY_SAME_FIELD(c, cpp)                                      \
    static_assert(offsetof(apikey_usage_fields_t, c) ==                \
                      offsetof(apikey::UsageFields, cpp) &&            \
                  sizeof(apikey_usage_fields_t::c) ==                  \
                      sizeof(apikey::UsageFields::cpp))
APIKEY_SAME_FIELD(result, result);
APIKEY_SAME_FIELD(ip_family, ip_family);
APIKEY_SAME_FIELD(status, status);
APIKEY_SAME_FIELD(time_us, time_us);
APIKEY_SAME_FIELD(response_time_us, response_time_us);
APIKEY_SAME_FIELD(bytes_sent, bytes_sent);
APIKEY_SAME_FIELD(key_id, key_id);
APIKEY_SAME_FIELD(org_id, org_id);
APIKEY_SAME_FIELD(ip, ip);
APIKEY_SAME_FIELD(method, method);
APIKEY_SAME_FIELD(method.data, method.ptr);
APIKEY_SAME_FIELD(method.len, method.len);
APIKEY_SAME_FIELD(endpoint, endpoint);
APIKEY_SAME_FIELD(user_agent, user_agent);
APIKEY_SAME_FIELD(method_constant, method_constant);
APIKEY_SAME_FIELD(endpoint_constant, endpoint_constant);
APIKEY_SAME_FIELD(endpoint_hash, endpoint_hash);
#undef APIKEY_SAME_FIELD
static_assert(sizeof(apikey_usage_fields_t) == sizeof(apikey::UsageFields));
static_assert(sizeof(bool) == 1 &&
              std::is_standard_layout_v<apikey::UsageFields>);

// The record is encoded straight into the stream's chunk, the aggregate
// added in place, both from the shim's fields.
int apikey_usage_log(apikey_usage_t* usage, int slot,
                     const apikey_usage_fields_t* f, int raw) noexcept {
    const apikey::UsageFields& u =
        *reinterpret_cast<const apikey::UsageFields*>(f);
    const int missed = usage->segment.log(static_cast<std::uint32_t>(slot),
                                          &usage->writer, u, raw != 0);
    static_assert(apikey::UsageSegment::kLogDropped == APIKEY_USAGE_DROPPED &&
                  apikey::UsageSegment::kLogOverflow == APIKEY_USAGE_OVERFLOW);
    return missed;
}

void apikey_usage_count(apikey_usage_t* usage, int slot,
                        apikey_result_e result) noexcept {
    usage->segment.count_unrecorded(static_cast<std::uint32_t>(slot),
                                    counter_for(result));
}

void apikey_usage_count_unslotted(apikey_usage_t* usage) noexcept {
    usage->segment.header().unslotted_drops.fetch_add(
        1, std::memory_order_relaxed);
}

uint64_t apikey_usage_chunk_count(const apikey_usage_t* usage) noexcept {
    return usage->segment.header().chunk_count;
}

uint64_t apikey_usage_file_size(const apikey_usage_t* usage) noexcept {
    return usage->segment.header().file_size;
}

}  // extern "C"
