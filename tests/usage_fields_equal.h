// Whether two decoded usage records say the same (identity aside): what
// the stream, spool and fuzz tests compare a record read back against.
#pragma once

#include <cstring>

#include "usage_record.h"

namespace apikey {

inline bool usage_fields_equal(const UsageRecord& a,
                               const UsageRecord& b) noexcept {
    return a.result == b.result && a.status == b.status &&
           a.time_us == b.time_us &&
           a.response_time_us == b.response_time_us &&
           a.bytes_sent == b.bytes_sent &&
           std::memcmp(a.key_id, b.key_id, 16) == 0 &&
           std::memcmp(a.org_id, b.org_id, 16) == 0 &&
           a.ip_family == b.ip_family &&
           std::memcmp(a.ip, b.ip, ip_address_bytes(a.ip_family)) == 0 &&
           a.method_view() == b.method_view() &&
           a.endpoint_view() == b.endpoint_view() &&
           a.user_agent_view() == b.user_agent_view();
}

}  // namespace apikey
