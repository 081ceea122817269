#include "api_params.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iterator>

#include "rollup.h"

namespace apikey::api {
namespace {

// Times the API accepts: 1970-01-01T00:00:00Z <= t < 10000-01-01T00:00:00Z.
constexpr std::int64_t kMaxTimeUs = 253402300800LL * kUsPerSecond;

int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

std::string percent_decode(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (std::size_t i = 0; i < s.size(); ++i) {
        char c = s[i];
        if (c == '+') {
            out.push_back(' ');
        } else if (c == '%') {
            int hi = i + 2 < s.size() ? hex_digit(s[i + 1]) : -1;
            int lo = i + 2 < s.size() ? hex_digit(s[i + 2]) : -1;
            if (hi < 0 || lo < 0) {
                throw ParamError("malformed %-escape in the query string");
            }
            out.push_back(static_cast<char>(hi << 4 | lo));
            i += 2;
        } else {
            out.push_back(c);
        }
    }
    return out;
}

// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
// days_from_civil).
std::int64_t days_from_civil(std::int64_t y, unsigned m, unsigned d) noexcept {
    y -= m <= 2;
    const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = static_cast<unsigned>(y - era * 400);
    const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

struct Civil {
    std::int64_t year;
    unsigned month;
    unsigned day;
};

Civil civil_from_days(std::int64_t z) noexcept {
    z += 719468;
    const std::int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    const unsigned doe = static_cast<unsigned>(z - era * 146097);
    const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const std::int64_t y = static_cast<std::int64_t>(yoe) + era * 400;
    const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const unsigned mp = (5 * doy + 2) / 153;
    const unsigned d = doy - (153 * mp + 2) / 5 + 1;
    const unsigned m = mp < 10 ? mp + 3 : mp - 9;
    return {y + (m <= 2), m, d};
}

std::int64_t floor_div(std::int64_t a, std::int64_t b) noexcept {
    std::int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

bool is_leap(std::int64_t y) noexcept {
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

unsigned days_in_month(std::int64_t y, unsigned m) noexcept {
    static constexpr unsigned kDays[] = {31, 28, 31, 30, 31, 30,
                                         31, 31, 30, 31, 30, 31};
    return m == 2 && is_leap(y) ? 29 : kDays[m - 1];
}

// Reads exactly n decimal digits at text[*pos].
bool digits(std::string_view text, std::size_t* pos, std::size_t n,
            int* out) noexcept {
    if (text.size() < *pos + n) return false;
    int v = 0;
    for (std::size_t i = 0; i < n; ++i) {
        char c = text[*pos + i];
        if (c < '0' || c > '9') return false;
        v = v * 10 + (c - '0');
    }
    *pos += n;
    *out = v;
    return true;
}

bool expect(std::string_view text, std::size_t* pos, char c) noexcept {
    if (*pos >= text.size() || text[*pos] != c) return false;
    ++*pos;
    return true;
}

// A whole number from min to max, plain decimal digits only.
int parse_int_param(std::string_view name, const std::string& value, int min,
                    int max) {
    std::string range = std::to_string(min) + ".." + std::to_string(max);
    // At most 9 digits, checked before accumulating: never overflows.
    bool ok = !value.empty() && value.size() <= 9;
    long v = 0;
    for (std::size_t i = 0; ok && i < value.size(); ++i) {
        char c = value[i];
        if (c < '0' || c > '9') {
            ok = false;
            break;
        }
        v = v * 10 + (c - '0');
    }
    if (!ok || v < min || v > max) {
        throw ParamError(std::string(name) + " must be a whole number in " +
                         range);
    }
    return static_cast<int>(v);
}

// The parameter's value, nullopt when absent; throws when repeated.
std::optional<std::string> single(const QueryParams& query,
                                  const std::string& name) {
    auto [first, last] = query.equal_range(name);
    if (first == last) return std::nullopt;
    if (std::next(first) != last) {
        throw ParamError("parameter " + name + " is given more than once");
    }
    return first->second;
}

std::int64_t parse_time_param(std::string_view name, const std::string& value) {
    std::optional<std::int64_t> t = parse_time(value);
    if (!t) {
        throw ParamError(std::string(name) +
                         " must be an RFC 3339 date-time (2024-05-01T00:00:00Z,"
                         " 2024-05-01T02:00:00+02:00) or a date (2024-05-01)");
    }
    return *t;
}

}  // namespace

QueryParams parse_query(std::string_view target) {
    QueryParams out;
    std::size_t q = target.find('?');
    if (q == std::string_view::npos) return out;
    std::string_view query = target.substr(q + 1);
    // A fragment never reaches a server, but cut one off if a client sent it.
    query = query.substr(0, query.find('#'));
    while (!query.empty()) {
        std::size_t amp = query.find('&');
        std::string_view pair = query.substr(0, amp);
        query = amp == std::string_view::npos ? std::string_view{}
                                              : query.substr(amp + 1);
        if (pair.empty()) continue;
        std::size_t eq = pair.find('=');
        std::string name = percent_decode(pair.substr(0, eq));
        std::string value = eq == std::string_view::npos
                                ? std::string()
                                : percent_decode(pair.substr(eq + 1));
        if (name.empty()) {
            throw ParamError("empty parameter name in the query string");
        }
        out.emplace(std::move(name), std::move(value));
    }
    return out;
}

std::string_view interval_name(Interval interval) noexcept {
    return interval == Interval::kHour ? "hour" : "day";
}

std::int64_t interval_us(Interval interval) noexcept {
    return interval == Interval::kHour ? kApiUsPerHour : kApiUsPerDay;
}

std::string_view sort_name(ListSort sort) noexcept {
    switch (sort) {
        case ListSort::kLastUsedAt:
            return "last_used_at";
        case ListSort::kRequestsToday:
            return "requests_today";
        case ListSort::kRequestsThisMonth:
            return "requests_this_month";
        case ListSort::kName:
            return "name";
        case ListSort::kRequestsLastHour:
            return "requests_last_hour";
        case ListSort::kCreatedAt:
            break;
    }
    return "created_at";
}

std::string_view status_name(ListStatus status) noexcept {
    switch (status) {
        case ListStatus::kActive:
            return "active";
        case ListStatus::kRevoked:
            return "revoked";
        case ListStatus::kExpired:
            return "expired";
        case ListStatus::kAny:
            break;
    }
    return "";
}

std::string_view dormant_name(ListDormant dormant) noexcept {
    return dormant == ListDormant::kYes  ? "true"
           : dormant == ListDormant::kNo ? "false"
                                         : "";
}

int parse_dormant_days(const QueryParams& query) {
    std::optional<std::string> v = single(query, "dormant_days");
    return v ? parse_int_param("dormant_days", *v, 0, kMaxDormantDays)
             : kDefaultDormantDays;
}

SpikeRule parse_spike_rule(const QueryParams& query) {
    SpikeRule rule;
    if (auto v = single(query, "spike_ratio")) {
        // Plain decimals ("5", "2.5"), at most 12 characters: no exponent,
        // sign, inf or nan for strtod to accept.
        bool ok = !v->empty() && v->size() <= 12 && v->front() != '.' &&
                  v->back() != '.' &&
                  std::count(v->begin(), v->end(), '.') <= 1 &&
                  std::all_of(v->begin(), v->end(), [](char c) {
                      return (c >= '0' && c <= '9') || c == '.';
                  });
        double ratio = ok ? std::strtod(v->c_str(), nullptr) : 0.0;
        if (!ok || !(ratio > 1.0) || ratio > kMaxSpikeRatio) {
            throw ParamError(
                "spike_ratio must be a decimal number greater than 1 and at"
                " most 1000");
        }
        rule.ratio = ratio;
    }
    if (auto v = single(query, "spike_min")) {
        rule.min = parse_int_param("spike_min", *v, 0, kMaxSpikeMin);
    }
    return rule;
}

OrgUsageParams parse_org_usage_params(const QueryParams& query) {
    OrgUsageParams p;
    p.dormant_days = parse_dormant_days(query);
    if (auto v = single(query, "limit")) {
        p.limit = parse_int_param("limit", *v, 1, kMaxLimit);
    }
    if (auto v = single(query, "sort")) {
        static constexpr ListSort kSorts[] = {
            ListSort::kCreatedAt, ListSort::kLastUsedAt,
            ListSort::kRequestsToday, ListSort::kRequestsThisMonth,
            ListSort::kName, ListSort::kRequestsLastHour};
        auto it = std::find_if(std::begin(kSorts), std::end(kSorts),
                               [&](ListSort s) { return sort_name(s) == *v; });
        if (it == std::end(kSorts)) {
            throw ParamError(
                "sort must be created_at, last_used_at, requests_today,"
                " requests_this_month, requests_last_hour or name");
        }
        p.sort = *it;
    }
    p.descending = p.sort != ListSort::kCreatedAt && p.sort != ListSort::kName;
    if (auto v = single(query, "order")) {
        if (*v != "asc" && *v != "desc") {
            throw ParamError("order must be asc or desc");
        }
        p.descending = *v == "desc";
    }
    if (auto v = single(query, "status")) {
        if (*v == "active") {
            p.status = ListStatus::kActive;
        } else if (*v == "revoked") {
            p.status = ListStatus::kRevoked;
        } else if (*v == "expired") {
            p.status = ListStatus::kExpired;
        } else {
            throw ParamError("status must be active, revoked or expired");
        }
    }
    if (auto v = single(query, "dormant")) {
        if (*v != "true" && *v != "false") {
            throw ParamError("dormant must be true or false");
        }
        p.dormant = *v == "true" ? ListDormant::kYes : ListDormant::kNo;
    }
    if (auto v = single(query, "spike")) {
        if (*v != "true" && *v != "false") {
            throw ParamError("spike must be true or false");
        }
        p.spike = *v == "true" ? ListDormant::kYes : ListDormant::kNo;
    }
    p.spike_rule = parse_spike_rule(query);
    if (auto v = single(query, "q")) {
        // Names are UTF-8 without NUL in the database; anything else could
        // never match and PostgreSQL would refuse it.
        if (v->empty() || v->size() > kMaxQueryBytes || !text_is_clean(*v)) {
            throw ParamError(
                "q must be 1 to 100 bytes of UTF-8 text without NUL");
        }
        p.q = *v;
    }
    if (auto v = single(query, "cursor")) {
        if (v->empty() || v->size() > kMaxCursorBytes) {
            throw ParamError("cursor is not valid for this listing");
        }
        p.cursor = *v;
    }
    return p;
}

namespace {

// from, to and interval, shared by the per-key view and the export: the
// same defaults and limits, so both cover the same buckets.
void parse_range(const QueryParams& query, std::int64_t now_us,
                 std::int64_t* from_us, std::int64_t* to_us,
                 Interval* interval_out) {
    std::optional<std::string> from = single(query, "from");
    std::optional<std::string> to = single(query, "to");
    std::optional<std::string> interval = single(query, "interval");

    Interval iv = Interval::kDay;
    if (interval) {
        if (*interval == "hour") {
            iv = Interval::kHour;
        } else if (*interval != "day") {
            throw ParamError("interval must be hour or day");
        }
    }
    std::int64_t span = iv == Interval::kHour ? kDefaultHourlyRangeUs
                                              : kDefaultDailyRangeUs;
    std::int64_t t = to ? parse_time_param("to", *to) : now_us;
    std::int64_t f = from ? parse_time_param("from", *from) : t - span;

    if (f < 0 || t < 0 || f >= kMaxTimeUs || t >= kMaxTimeUs) {
        throw ParamError(
            "from and to must lie between 1970-01-01 and 9999-12-31");
    }
    if (f >= t) throw ParamError("from must be before to");
    if (t - f > kMaxRangeUs) {
        throw ParamError("the range from..to must not exceed 400 days");
    }
    if (iv == Interval::kHour && t - f > kMaxHourlyRangeUs) {
        throw ParamError(
            "the range from..to must not exceed 31 days with interval=hour");
    }
    *from_us = f;
    *to_us = t;
    *interval_out = iv;
}

}  // namespace

KeyUsageParams parse_key_usage_params(const QueryParams& query,
                                      std::int64_t now_us) {
    KeyUsageParams p;
    parse_range(query, now_us, &p.from_us, &p.to_us, &p.interval);
    std::optional<std::string> top = single(query, "top");
    if (top) p.top = parse_int_param("top", *top, 1, kMaxTop);
    p.spike_rule = parse_spike_rule(query);
    return p;
}

ExportParams parse_export_params(const QueryParams& query,
                                 std::int64_t now_us) {
    ExportParams p;
    parse_range(query, now_us, &p.from_us, &p.to_us, &p.interval);
    std::optional<std::string> format = single(query, "format");
    if (format) {
        if (*format == "ndjson") {
            p.format = ExportFormat::kNdjson;
        } else if (*format != "csv") {
            throw ParamError("format must be csv or ndjson");
        }
    }
    return p;
}

Uuid parse_uuid_segment(std::string_view text, std::string_view what) {
    Uuid id{};
    if (!uuid_parse(text, &id)) {
        throw ParamError(std::string(what) + " must be a UUID");
    }
    return id;
}

std::optional<std::int64_t> parse_time(std::string_view text) noexcept {
    std::size_t pos = 0;
    int year = 0, month = 0, day = 0;
    if (!digits(text, &pos, 4, &year) || !expect(text, &pos, '-') ||
        !digits(text, &pos, 2, &month) || !expect(text, &pos, '-') ||
        !digits(text, &pos, 2, &day)) {
        return std::nullopt;
    }
    if (year < 1 || month < 1 || month > 12 || day < 1 ||
        static_cast<unsigned>(day) >
            days_in_month(year, static_cast<unsigned>(month))) {
        return std::nullopt;
    }
    std::int64_t days = days_from_civil(year, static_cast<unsigned>(month),
                                        static_cast<unsigned>(day));
    if (pos == text.size()) return days * kApiUsPerDay;  // plain date

    if (text[pos] != 'T' && text[pos] != 't') return std::nullopt;
    ++pos;
    int hour = 0, minute = 0, second = 0;
    if (!digits(text, &pos, 2, &hour) || !expect(text, &pos, ':') ||
        !digits(text, &pos, 2, &minute) || !expect(text, &pos, ':') ||
        !digits(text, &pos, 2, &second)) {
        return std::nullopt;
    }
    // 60: a leap second, which RFC 3339 allows; it lands on the next minute.
    if (hour > 23 || minute > 59 || second > 60) return std::nullopt;

    std::int64_t frac_us = 0;
    if (pos < text.size() && text[pos] == '.') {
        ++pos;
        std::size_t n = 0;
        std::int64_t scale = 100000;
        while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') {
            if (scale > 0) {
                frac_us += (text[pos] - '0') * scale;
                scale /= 10;
            }
            ++pos;
            ++n;
        }
        if (n == 0 || n > 9) return std::nullopt;
    }

    if (pos >= text.size()) return std::nullopt;  // the offset is required
    std::int64_t offset_s = 0;
    char sign = text[pos++];
    if (sign == 'Z' || sign == 'z') {
        if (pos != text.size()) return std::nullopt;
    } else if (sign == '+' || sign == '-' || sign == ' ') {
        int oh = 0, om = 0;
        if (!digits(text, &pos, 2, &oh) || !expect(text, &pos, ':') ||
            !digits(text, &pos, 2, &om) || pos != text.size() || oh > 23 ||
            om > 59) {
            return std::nullopt;
        }
        offset_s = (oh * 60 + om) * 60;
        if (sign == '-') offset_s = -offset_s;
    } else {
        return std::nullopt;
    }

    std::int64_t secs =
        days * 86400 + hour * 3600 + minute * 60 + second - offset_s;
    return secs * kUsPerSecond + frac_us;
}

double round_ms(double ms) noexcept { return std::round(ms * 1000.0) / 1000.0; }

std::string format_rfc3339(std::int64_t time_us, TimePrecision precision) {
    std::int64_t secs = floor_div(time_us, kUsPerSecond);
    std::int64_t us = time_us - secs * kUsPerSecond;
    std::int64_t days = floor_div(secs, 86400);
    std::int64_t sod = secs - days * 86400;
    Civil c = civil_from_days(days);
    char buf[48];
    int n = std::snprintf(buf, sizeof(buf), "%04lld-%02u-%02uT%02d:%02d:%02d",
                          static_cast<long long>(c.year), c.month, c.day,
                          static_cast<int>(sod / 3600),
                          static_cast<int>(sod / 60 % 60),
                          static_cast<int>(sod % 60));
    std::string out(buf, static_cast<std::size_t>(n));
    if (precision == TimePrecision::kMillis) {
        std::snprintf(buf, sizeof(buf), ".%03d", static_cast<int>(us / 1000));
        out += buf;
    } else if (precision == TimePrecision::kMicros) {
        std::snprintf(buf, sizeof(buf), ".%06d", static_cast<int>(us));
        out += buf;
    }
    out.push_back('Z');
    return out;
}

std::int64_t floor_to(std::int64_t time_us, Interval interval) noexcept {
    std::int64_t step = interval_us(interval);
    return floor_div(time_us, step) * step;
}

std::int64_t month_start_us(std::int64_t time_us) noexcept {
    Civil c = civil_from_days(floor_div(time_us, kApiUsPerDay));
    return days_from_civil(c.year, c.month, 1) * kApiUsPerDay;
}

std::int64_t next_month_start_us(std::int64_t time_us) noexcept {
    Civil c = civil_from_days(floor_div(time_us, kApiUsPerDay));
    std::int64_t y = c.month == 12 ? c.year + 1 : c.year;
    unsigned m = c.month == 12 ? 1 : c.month + 1;
    return days_from_civil(y, m, 1) * kApiUsPerDay;
}

std::vector<std::int64_t> series_buckets(std::int64_t from_us,
                                         std::int64_t to_us,
                                         Interval interval) {
    std::vector<std::int64_t> out;
    std::int64_t step = interval_us(interval);
    std::int64_t t = floor_to(from_us, interval);
    if (t < from_us) t += step;
    for (; t < to_us; t += step) out.push_back(t);
    return out;
}

}  // namespace apikey::api
