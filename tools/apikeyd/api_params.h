// The analytics API's request parameters: query-string decoding, parameter
// validation, and the time formats the API reads and writes. Pure (no I/O,
// no clock: callers pass "now"), so every rule is unit-tested alone.
// docs/api.md documents each parameter and its limits.
//
// Error messages name the parameter and what it expects, never the value
// given: a client may paste anything (a key, by mistake) into a URL.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "uuid.h"

namespace apikey::api {

// A bad request; what() is the message for the client's {"error": ...}.
class ParamError : public std::invalid_argument {
   public:
    using std::invalid_argument::invalid_argument;
};

// Decoded query parameters, in order, repeats kept.
using QueryParams = std::multimap<std::string, std::string>;

// Decodes the query part of a request target (everything after the first
// '?'; "" when there is none): '&'-separated name[=value] pairs, %XX
// escapes, '+' as a space. Empty pairs ("a=1&&b=2") are skipped; a name
// without '=' has an empty value. Throws ParamError on a bad %-escape or an
// empty name.
QueryParams parse_query(std::string_view target);

// --- limits
// -------------------------------------------------------------------

inline constexpr int kDefaultDormantDays = 30;
inline constexpr int kMaxDormantDays = 3650;
inline constexpr int kDefaultTop = 10;
inline constexpr int kMaxTop = 100;
inline constexpr std::int64_t kUsPerSecond = 1000000;
inline constexpr std::int64_t kApiUsPerHour = 3600 * kUsPerSecond;
inline constexpr std::int64_t kApiUsPerDay = 24 * kApiUsPerHour;
inline constexpr std::int64_t kMaxRangeUs = 400 * kApiUsPerDay;
inline constexpr std::int64_t kMaxHourlyRangeUs = 31 * kApiUsPerDay;
inline constexpr std::int64_t kDefaultDailyRangeUs = 30 * kApiUsPerDay;
inline constexpr std::int64_t kDefaultHourlyRangeUs = kApiUsPerHour * 24;

// --- the two endpoints' parameters
// ---------------------------------------------

enum class Interval { kHour, kDay };

std::string_view interval_name(Interval interval) noexcept;
std::int64_t interval_us(Interval interval) noexcept;

// The listing's page size, sorts and filters.
inline constexpr int kDefaultLimit = 100;
inline constexpr int kMaxLimit = 1000;
inline constexpr std::size_t kMaxQueryBytes = 100;  // a key name's bound
inline constexpr std::size_t kMaxCursorBytes = 1024;

enum class ListSort {
    kCreatedAt,
    kLastUsedAt,
    kRequestsToday,
    kRequestsThisMonth,
    kName,
    kRequestsLastHour
};
enum class ListStatus { kAny, kActive, kRevoked, kExpired };
enum class ListDormant { kAny, kYes, kNo };

std::string_view sort_name(ListSort sort) noexcept;
std::string_view status_name(ListStatus status) noexcept;
std::string_view dormant_name(ListDormant dormant) noexcept;

// The spike rule's two knobs (analytics_spikes.h applies them): a key
// spikes in an hour when its requests are >= ratio x its baseline and
// >= min. The ratio is a decimal in (1, 1000], min a whole number.
inline constexpr double kDefaultSpikeRatio = 5.0;
inline constexpr double kMaxSpikeRatio = 1000.0;
inline constexpr std::int64_t kDefaultSpikeMin = 100;
inline constexpr int kMaxSpikeMin = 999999999;

struct SpikeRule {
    double ratio = kDefaultSpikeRatio;
    std::int64_t min = kDefaultSpikeMin;
};

// spike_ratio and spike_min, defaults for the absent ones. Throws
// ParamError.
SpikeRule parse_spike_rule(const QueryParams& query);

// GET /api/orgs/{org_id}/api-keys/usage
struct OrgUsageParams {
    int dormant_days = kDefaultDormantDays;
    int limit = kDefaultLimit;
    ListSort sort = ListSort::kCreatedAt;
    // Default: ascending for created_at and name, descending for the
    // activity sorts (the busiest, the most recently used first).
    bool descending = false;
    ListStatus status = ListStatus::kAny;
    ListDormant dormant = ListDormant::kAny;
    ListDormant spike = ListDormant::kAny;  // spike=true|false
    SpikeRule spike_rule;
    std::string q;       // name (any case) or hint prefix; "" = none
    std::string cursor;  // "" = the first page
};

// GET /api/orgs/{org_id}/api-keys/{key_id}/usage
struct KeyUsageParams {
    std::int64_t from_us = 0;  // inclusive
    std::int64_t to_us = 0;    // exclusive
    Interval interval = Interval::kDay;
    int top = kDefaultTop;
    SpikeRule spike_rule;
};

// GET /api/orgs/{org_id}/api-keys/usage/export (and apikeyctl usage
// export): the per-key view's range rules, and the line format.
enum class ExportFormat { kCsv, kNdjson };

struct ExportParams {
    std::int64_t from_us = 0;  // inclusive
    std::int64_t to_us = 0;    // exclusive
    Interval interval = Interval::kDay;
    ExportFormat format = ExportFormat::kCsv;
};

// Validate every known parameter and apply the defaults; unknown parameters
// are ignored, a known one given twice is an error. Throws ParamError.
OrgUsageParams parse_org_usage_params(const QueryParams& query);
// dormant_days alone (the per-key view's "key" object).
int parse_dormant_days(const QueryParams& query);
KeyUsageParams parse_key_usage_params(const QueryParams& query,
                                      std::int64_t now_us);
ExportParams parse_export_params(const QueryParams& query,
                                 std::int64_t now_us);

// A path segment that must be a UUID ("org_id", "key_id" name it in the
// error). Throws ParamError.
Uuid parse_uuid_segment(std::string_view text, std::string_view what);

// --- time --------------------------------------------------------------------

// Milliseconds as every answer writes them: rounded to the microsecond.
double round_ms(double ms) noexcept;

// RFC 3339 date-time ("2024-05-01T12:00:00Z", "...T12:00:00.5+02:00";
// 't'/'z' in either case; a space instead of '+' before the offset, which
// is what an unescaped '+' in a query string decodes to) or a plain date
// "YYYY-MM-DD" (00:00 UTC). Fraction digits 7 to 9 are truncated to microseconds; 10 or more are rejected.
// Years 0001..9999. nullopt when malformed.
std::optional<std::int64_t> parse_time(std::string_view text) noexcept;

enum class TimePrecision { kSeconds, kMillis, kMicros };

// "YYYY-MM-DDTHH:MM:SS[.fff[fff]]Z" in UTC; sub-second digits truncated.
std::string format_rfc3339(std::int64_t time_us,
                           TimePrecision precision = TimePrecision::kSeconds);

// Start of the UTC hour / day / month holding time_us (floor, also before
// 1970), and of the month after it.
std::int64_t floor_to(std::int64_t time_us, Interval interval) noexcept;
std::int64_t month_start_us(std::int64_t time_us) noexcept;
std::int64_t next_month_start_us(std::int64_t time_us) noexcept;

// The buckets a series shows: every bucket start t with from <= t < to, on
// the interval's UTC grid.
std::vector<std::int64_t> series_buckets(std::int64_t from_us,
                                         std::int64_t to_us, Interval interval);

}  // namespace apikey::api
