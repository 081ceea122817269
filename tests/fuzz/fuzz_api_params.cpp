// Fuzz target: the analytics API's parameter parsing
// (tools/apikeyd/api_params.cpp), in the order analytics_api.cpp runs it on
// a request: the {org_id} and {key_id} path segments, the query string,
// then the per-endpoint parameters.
//
// Input: 8 bytes that pick "now" (a wall-clock time between 1970 and 9999,
// as the daemon's clock gives), then the request target
// ("/api/orgs/<seg>/api-keys/<seg>/usage?..."; anything is accepted).
//
// Checks: every step either returns or throws ParamError (a 400 with a
// message); nothing else may escape, and no UB. A ParamError message never
// contains the value the client sent (it may be a pasted key). Accepted
// parameters satisfy the documented limits (docs/api.md): from < to, both
// in [1970, 10000), range <= 400 days (31 with interval=hour), top 1..100,
// dormant_days 0..3650; the series has one bucket per interval step and
// stays small. Times parsed from the input round-trip through
// format_rfc3339(); the month helpers bracket every accepted time.
//
// The same bytes are also an Authorization header value for apikeyd's own
// Bearer parsing (tools/apikeyd/api_auth.cpp: bearer_token(), then
// check_key() against a detached key table): the token agrees with a
// reference reading of "Bearer <token>" (scheme case-insensitive, spaces
// and tabs around), and check_key() says malformed or unavailable without
// touching a table. (The nginx module's own Bearer parsing,
// ngx_http_apikey_bearer() in module/ngx_http_apikey_access.c, is C on
// nginx types and is not fuzzed here.)
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <string_view>

#include "api_auth.h"
#include "api_params.h"
#include "key_format.h"
#include "key_table.h"

#include "fuzz_check.h"

namespace {

using namespace apikey;
using namespace apikey::api;

constexpr std::int64_t kMaxTimeUs = 253402300800LL * kUsPerSecond;  // 10000-01-01
constexpr std::int64_t kMinTimeUs = -62135596800LL * kUsPerSecond;  // 0001-01-01

void check_message(const ParamError& e) {
    FUZZ_CHECK(std::string_view(e.what()).size() > 0);
}

// A message must not echo what the client sent. The messages' own text
// uses letters, digits and a little punctuation (and quotes example
// values such as 2024-05-01T00:00:00Z), so a value that holds any other
// byte can only be in a message if it was echoed.
void check_no_echo(const ParamError& e, std::string_view value) {
    static constexpr std::string_view kMessageChars =
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
        " .:-+(),_%";
    if (value.find_first_not_of(kMessageChars) == std::string_view::npos) return;
    FUZZ_CHECK(std::string_view(e.what()).find(value) == std::string_view::npos);
}

// A path segment as the route regex "([^/]+)" would capture it.
std::string_view segment(std::string_view path, std::size_t index) {
    for (std::size_t i = 0; i < index; ++i) {
        std::size_t slash = path.find('/');
        if (slash == std::string_view::npos) return {};
        path.remove_prefix(slash + 1);
    }
    return path.substr(0, path.find('/'));
}

void check_time_roundtrip(std::int64_t t) {
    if (t < kMinTimeUs || t >= kMaxTimeUs) return;
    for (TimePrecision p : {TimePrecision::kSeconds, TimePrecision::kMillis,
                            TimePrecision::kMicros}) {
        std::string s = format_rfc3339(t, p);
        std::optional<std::int64_t> back = parse_time(s);
        FUZZ_CHECK(back.has_value());
        std::int64_t unit = p == TimePrecision::kSeconds  ? kUsPerSecond
                            : p == TimePrecision::kMillis ? 1000
                                                          : 1;
        // Truncated to the precision, toward the past.
        FUZZ_CHECK(*back <= t && t - *back < unit);
    }
    std::int64_t m = month_start_us(t);
    std::int64_t next = next_month_start_us(t);
    FUZZ_CHECK(m <= t && t < next);
    FUZZ_CHECK(next - m >= 28 * kApiUsPerDay && next - m <= 31 * kApiUsPerDay);
    FUZZ_CHECK(floor_to(t, Interval::kHour) <= t);
    FUZZ_CHECK(floor_to(t, Interval::kDay) <= floor_to(t, Interval::kHour));
}

void check_key_params(const KeyUsageParams& p, std::int64_t now) {
    FUZZ_CHECK(p.from_us >= 0 && p.to_us < kMaxTimeUs);
    FUZZ_CHECK(p.from_us < p.to_us);
    FUZZ_CHECK(p.to_us - p.from_us <= kMaxRangeUs);
    if (p.interval == Interval::kHour) {
        FUZZ_CHECK(p.to_us - p.from_us <= kMaxHourlyRangeUs);
    }
    FUZZ_CHECK(p.top >= 1 && p.top <= kMaxTop);
    FUZZ_CHECK(interval_name(p.interval) == "hour" ||
               interval_name(p.interval) == "day");

    std::vector<std::int64_t> buckets =
        series_buckets(p.from_us, p.to_us, p.interval);
    const std::int64_t step = interval_us(p.interval);
    // At most one bucket per step of the range (400 days, or 31 * 24 hours).
    FUZZ_CHECK(buckets.size() <=
               static_cast<std::size_t>((p.to_us - p.from_us) / step + 1));
    FUZZ_CHECK(buckets.size() <= 31 * 24 + 1);
    for (std::size_t i = 0; i < buckets.size(); ++i) {
        FUZZ_CHECK(buckets[i] >= p.from_us && buckets[i] < p.to_us);
        FUZZ_CHECK(floor_to(buckets[i], p.interval) == buckets[i]);
        if (i > 0) FUZZ_CHECK(buckets[i] - buckets[i - 1] == step);
    }
    // No bucket start is missing at either end.
    if (!buckets.empty()) {
        FUZZ_CHECK(buckets.front() - step < p.from_us);
        FUZZ_CHECK(buckets.back() + step >= p.to_us);
    }
    check_time_roundtrip(p.from_us);
    check_time_roundtrip(p.to_us);
    (void)now;
}

void run(std::int64_t now, std::string_view target) {
    // The path: /api/orgs/{org}/api-keys/{key}/usage (segments 3 and 5).
    std::string_view path = target.substr(0, target.find('?'));
    for (std::size_t idx : {3u, 5u}) {
        std::string_view seg = segment(path, idx);
        try {
            Uuid id = parse_uuid_segment(seg, idx == 3 ? "org_id" : "key_id");
            // Canonical form, either case: the text is the id, lowercased.
            std::string canon = uuid_to_string(id);
            FUZZ_CHECK(canon.size() == seg.size());
            for (std::size_t i = 0; i < canon.size(); ++i) {
                char c = seg[i];
                if (c >= 'A' && c <= 'F') c = static_cast<char>(c - 'A' + 'a');
                FUZZ_CHECK(canon[i] == c);
            }
        } catch (const ParamError& e) {
            check_no_echo(e, seg);
        }
    }

    QueryParams query;
    try {
        query = parse_query(target);
    } catch (const ParamError& e) {
        check_message(e);
        check_no_echo(e, target.substr(target.find('?') + 1));
        return;
    }
    for (const auto& [name, value] : query) {
        FUZZ_CHECK(!name.empty());
        // Decoding never grows the text.
        FUZZ_CHECK(name.size() + value.size() <= target.size());
    }

    try {
        OrgUsageParams o = parse_org_usage_params(query);
        FUZZ_CHECK(o.dormant_days >= 0 && o.dormant_days <= kMaxDormantDays);
    } catch (const ParamError& e) {
        check_message(e);
        for (const auto& kv : query) check_no_echo(e, kv.second);
    }
    try {
        KeyUsageParams k = parse_key_usage_params(query, now);
        check_key_params(k, now);
    } catch (const ParamError& e) {
        check_message(e);
        for (const auto& kv : query) check_no_echo(e, kv.second);
    }

    // The export: the per-key view's range rules, and a format.
    try {
        ExportParams x = parse_export_params(query, now);
        check_key_params(KeyUsageParams{x.from_us, x.to_us, x.interval,
                                        kDefaultTop, SpikeRule{}},
                         now);
    } catch (const ParamError& e) {
        check_message(e);
        for (const auto& kv : query) check_no_echo(e, kv.second);
    }

    // Every decoded value as a time too (the from/to grammar).
    for (const auto& kv : query) {
        if (std::optional<std::int64_t> t = parse_time(kv.second)) {
            check_time_roundtrip(*t);
        }
    }
}

bool ref_space(char c) { return c == ' ' || c == '\t'; }

std::optional<std::string> ref_bearer(std::string_view h) {
    while (!h.empty() && ref_space(h.front())) h.remove_prefix(1);
    while (!h.empty() && ref_space(h.back())) h.remove_suffix(1);
    if (h.size() < 7) return std::nullopt;
    for (std::size_t i = 0; i < 6; ++i) {
        char c = h[i];
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
        if (c != "bearer"[i]) return std::nullopt;
    }
    if (!ref_space(h[6])) return std::nullopt;
    h.remove_prefix(6);
    while (!h.empty() && ref_space(h.front())) h.remove_prefix(1);
    if (h.empty()) return std::nullopt;
    return std::string(h);
}

void check_authorization(std::string_view header, std::int64_t now) {
    std::optional<std::string_view> token = bearer_token(header);
    std::optional<std::string> want = ref_bearer(header);
    FUZZ_CHECK(token.has_value() == want.has_value());
    if (!token) return;
    FUZZ_CHECK(*token == *want);
    // A view into the header, not a copy.
    FUZZ_CHECK(token->data() >= header.data() &&
               token->data() + token->size() <= header.data() + header.size());
    static const KeyTableReader detached;
    api::AuthResult r = check_key(detached, *token, now);
    FUZZ_CHECK(r.status == (key_is_well_formed(*token) ? AuthStatus::kUnavailable
                                                       : AuthStatus::kMalformed));
    FUZZ_CHECK(!auth_status_message(AuthStatus::kMalformed).empty());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::uint64_t raw = 0;
    const std::size_t n = size < 8 ? size : 8;
    std::memcpy(&raw, data, n);
    // 2024-05-15T10:30:00Z for short inputs, else anywhere in 1970..9999.
    std::int64_t now = n < 8 ? 1715769000LL * kUsPerSecond
                             : static_cast<std::int64_t>(raw % kMaxTimeUs);
    std::string_view target(reinterpret_cast<const char*>(data) + n, size - n);
    run(now, target);
    check_authorization(target, now);
    // The raw input as a time string too (no query decoding in the way).
    if (std::optional<std::int64_t> t = parse_time(target)) {
        check_time_roundtrip(*t);
    }
    return 0;
}
