#include "analytics_listing.h"

#include <algorithm>
#include <stdexcept>

#include "analytics_distinct_ips.h"
#include "analytics_spikes.h"

namespace apikey::api {
namespace {

struct SortColumn {
    const char* expr;
    const char* type;  // the cast of its position parameter
};

// The sort key of each sort, the key id last (ties, and a total order).
std::vector<SortColumn> sort_columns(ListSort sort) {
    switch (sort) {
        case ListSort::kLastUsedAt:
            return {{"s.last_used_at", "timestamptz"}, {"s.key_id", "uuid"}};
        case ListSort::kRequestsToday:
            return {{"s.day", "date"},
                    {"s.requests_day", "bigint"},
                    {"s.key_id", "uuid"}};
        case ListSort::kRequestsThisMonth:
            return {{"s.month", "date"},
                    {"s.requests_month", "bigint"},
                    {"s.key_id", "uuid"}};
        case ListSort::kName:
            return {{"k.name", "text"}, {"k.id", "uuid"}};
        case ListSort::kRequestsLastHour:
            return {{"s.hour", "timestamptz"},
                    {"s.requests_hour", "bigint"},
                    {"s.key_id", "uuid"}};
        case ListSort::kCreatedAt:
            break;
    }
    return {{"k.created_at", "timestamptz"}, {"k.id", "uuid"}};
}

bool driven_by_listing(ListSort sort) {
    return sort == ListSort::kLastUsedAt || sort == ListSort::kRequestsToday ||
           sort == ListSort::kRequestsThisMonth ||
           sort == ListSort::kRequestsLastHour;
}

// The same conditions as keysql::status().
const char* status_condition(ListStatus status) {
    switch (status) {
        case ListStatus::kActive:
            return " AND k.revoked_at IS NULL"
                   " AND (k.expires_at IS NULL OR k.expires_at > now())";
        case ListStatus::kRevoked:
            return " AND k.revoked_at IS NOT NULL";
        case ListStatus::kExpired:
            return " AND k.revoked_at IS NULL AND k.expires_at <= now()";
        case ListStatus::kAny:
            break;
    }
    return "";
}

// LIKE pattern matching values that start with `text`.
std::string prefix_pattern(const std::string& text) {
    std::string out;
    for (char c : text) {
        if (c == '\\' || c == '%' || c == '_') out.push_back('\\');
        out.push_back(c);
    }
    out.push_back('%');
    return out;
}

// A statement and its parameters, numbered as they are added.
struct Builder {
    std::string sql;
    std::vector<pg::Param> params;

    std::string bind(pg::Param value) {
        params.push_back(std::move(value));
        return "$" + std::to_string(params.size());
    }
};

}  // namespace

std::size_t position_size(ListSort sort) noexcept {
    return sort == ListSort::kRequestsToday ||
                   sort == ListSort::kRequestsThisMonth ||
                   sort == ListSort::kRequestsLastHour
               ? 3
               : 2;
}

ListingQuery build_listing(const std::string& org_id,
                           const OrgUsageParams& p,
                           const std::vector<std::string>& after,
                           const CalendarWindow& window) {
    std::vector<SortColumn> cols = sort_columns(p.sort);
    if (!after.empty() && after.size() != cols.size()) {
        throw std::invalid_argument("cursor position of another sort");
    }
    Builder b{key_summary_from(),
              key_summary_params(org_id, p.dormant_days, window)};
    // The listing indexes' own org condition, beside api_keys' (which
    // isolates): for the sorts they serve, and for the dormant range.
    if (driven_by_listing(p.sort) || p.dormant == ListDormant::kYes ||
        p.spike == ListDormant::kYes) {
        b.sql += " AND s.org_id = $1::uuid";
    }
    b.sql += status_condition(p.status);
    // The one dormancy rule, as keys[].dormant shows it ($2: dormant_days).
    if (p.dormant == ListDormant::kYes) {
        // Implied by the rule (s.last_used_at is -infinity when never
        // used), and a range of the last-used index: dormant keys are
        // usually few, so the planner may read them alone and sort them.
        // A constant, which the planner can estimate (now() is not one),
        // a day wider than the rule so that apikeyd's and PostgreSQL's
        // clocks a little apart never hide a dormant key.
        std::int64_t wider = window.now_us -
                             std::int64_t{p.dormant_days - 1} * kApiUsPerDay;
        b.sql += " AND " + keysql::dormant("k.", 2) +
                 " AND s.last_used_at < " +
                 b.bind(format_rfc3339(wider, TimePrecision::kMicros)) +
                 "::timestamptz";
    } else if (p.dormant == ListDormant::kNo) {
        b.sql += " AND NOT " + keysql::dormant("k.", 2);
    }
    // The spike rule over the stored last hour ($5); spike=true is a range
    // of the hour index (requests_hour >= spike_min in the hour).
    if (p.spike != ListDormant::kAny) {
        // Bound one after the other: argument order is unspecified.
        std::string ratio = b.bind(ratio_text(p.spike_rule.ratio));
        std::string min = b.bind(std::to_string(p.spike_rule.min));
        std::string cond = spike_condition("$5", ratio, min);
        b.sql += p.spike == ListDormant::kYes ? " AND " + cond
                                              : " AND NOT " + cond;
    }
    if (!p.q.empty()) {
        std::string q = b.bind(prefix_pattern(p.q));
        b.sql += " AND (lower(k.name) LIKE lower(" + q + ") ESCAPE '\\'" +
                 " OR k.hint LIKE " + q + " ESCAPE '\\')";
    }
    std::string select_position, order_by, lhs, rhs;
    for (std::size_t i = 0; i < cols.size(); ++i) {
        const char* sep = i ? ", " : "";
        select_position += std::string(", ") + cols[i].expr + "::text";
        order_by += std::string(sep) + cols[i].expr +
                    (p.descending ? " DESC" : " ASC");
        if (after.empty()) continue;
        lhs += std::string(sep) + cols[i].expr;
        rhs += std::string(sep) + b.bind(after[i]) + "::" + cols[i].type;
    }
    if (!after.empty()) {
        b.sql += " AND (" + lhs + ")" + (p.descending ? " < (" : " > (") +
                 rhs + ")";
    }
    // The position columns go after the summary's.
    b.sql.insert(b.sql.find(" FROM api_keys k"), select_position);
    // One more row than the page: is there a next one?
    b.sql += " ORDER BY " + order_by + " LIMIT " +
             b.bind(std::to_string(p.limit + 1)) + "::int";
    return {std::move(b.sql), std::move(b.params)};
}

ListingPage query_listing(pg::Connection& conn, const std::string& org_id,
                          const OrgUsageParams& p,
                          const std::vector<std::string>& after,
                          const CalendarWindow& window) {
    ListingQuery q = build_listing(org_id, p, after, window);
    pg::Result r = conn.exec(q.sql, q.params);
    ListingPage page;
    int rows = std::min(r.rows(), p.limit);
    page.keys.reserve(static_cast<std::size_t>(rows));
    for (int i = 0; i < rows; ++i) page.keys.push_back(read_key_summary(r, i));
    add_distinct_ips(conn, org_id, page.keys.data(), page.keys.size(), window);
    if (r.rows() > p.limit) {
        std::vector<std::string> last;
        int first = kKeySummaryColumns;
        for (std::size_t c = 0; c < position_size(p.sort); ++c) {
            last.push_back(r.get(rows - 1, first + static_cast<int>(c)));
        }
        page.next = std::move(last);
    }
    return page;
}

}  // namespace apikey::api
