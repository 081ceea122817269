// What a worker's request has in common with the one before it, found
// once per request for every fast path of the log phase: the record
// stream's repeat record (usage_record.h) and the aggregation's entry memo
// (usage_agg.h) each remember a counter instead of comparing the fields
// again.
#pragma once

#include <cstdint>

#include "usage_record.h"

namespace apikey {

// The previous request's key, org, constant method and endpoint texts (by
// address, which names a constant text and its length: UsageFields) and
// client address, and two counters named after what they follow:
// - route: changes whenever the key, org, method or endpoint differ from
//   the previous request's, and on every request whose method or endpoint
//   is not a constant text (UsageFields' promises);
// - address: changes whenever the route does and whenever the client
//   address differs.
// A counter never goes back and is never 0 once a request was observed, so
// a fast path that kept a counter's value (0: nothing kept) knows, while it
// is unchanged, that every request observed since had those fields as the
// one it kept it for.
//
// Worker memory, one per worker (not thread-safe); observing the same
// request again changes nothing, unless its texts are not constant.
class RequestShape {
public:
    std::uint64_t route() const noexcept { return route_; }
    std::uint64_t address() const noexcept { return address_; }

    // Always inline: once per request, at nginx's -O.
    __attribute__((always_inline)) void observe(const UsageFields& f) noexcept {
        namespace d = record_detail;
        std::uint64_t ip[2];
        d::ip_as_words(f.ip_family, f.ip, ip);
        const std::uint64_t ids = (d::load64(f.key_id) ^ ids_[0]) |
                                  (d::load64(f.key_id + 8) ^ ids_[1]) |
                                  (d::load64(f.org_id) ^ ids_[2]) |
                                  (d::load64(f.org_id + 8) ^ ids_[3]);
        if (ids != 0 || !f.method_constant || !f.endpoint_constant ||
            f.method.data() != method_ || f.endpoint.data() != endpoint_) {
            new_route(f);
        } else if (((ip[0] ^ ip_[0]) | (ip[1] ^ ip_[1])) == 0 &&
                   f.ip_family == ip_family_) {
            return;
        }
        ++address_;
        ip_family_ = f.ip_family;
        ip_[0] = ip[0];
        ip_[1] = ip[1];
    }

private:
    // Out of line: the usual request keeps its route.
    __attribute__((noinline)) void new_route(const UsageFields& f) noexcept {
        ++route_;
        const bool constant = f.method_constant && f.endpoint_constant;
        method_ = constant ? f.method.data() : nullptr;
        endpoint_ = constant ? f.endpoint.data() : nullptr;
        ids_[0] = record_detail::load64(f.key_id);
        ids_[1] = record_detail::load64(f.key_id + 8);
        ids_[2] = record_detail::load64(f.org_id);
        ids_[3] = record_detail::load64(f.org_id + 8);
    }

    std::uint64_t route_ = 0;
    std::uint64_t address_ = 0;
    // nullptr after a request with a text that is not constant: no
    // request's address of a constant text compares equal to it.
    const char* method_ = nullptr;
    const char* endpoint_ = nullptr;
    std::uint64_t ids_[4] = {};  // key_id, org_id
    IpFamily ip_family_ = IpFamily::kNone;
    std::uint64_t ip_[2] = {};
};

}  // namespace apikey
