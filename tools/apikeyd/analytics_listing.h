// One page of an org's key listing: the SQL for each sort, order and
// filter, built from fixed fragments (every value bound), and the position
// of the page's last row for the next cursor.
//
// Each sort has an index (org_id, sort key..., key id) (migration 0004):
// a page is the index range after the cursor's position, read forwards or
// backwards, LIMIT n + 1, each row joined to its api_keys (or
// api_key_listing) row by primary key. Filters are conditions on the rows
// that range walks; q also has prefix indexes for the planner to choose
// when it is selective.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "analytics_queries.h"
#include "api_params.h"
#include "pg.h"

namespace apikey::api {

struct ListingPage {
    std::vector<KeySummary> keys;
    // The last key's position when more keys follow; nullopt on the last
    // page.
    std::optional<std::vector<std::string>> next;
};

// How many strings a position of `sort` has (its sort values, the key id).
std::size_t position_size(ListSort sort) noexcept;

struct ListingQuery {
    std::string sql;
    std::vector<pg::Param> params;
};

// The statement of the page after `after` (empty: the first page), which
// must come from a cursor of this listing (position_size(p.sort) strings;
// std::invalid_argument otherwise).
ListingQuery build_listing(const std::string& org_id, const OrgUsageParams& p,
                           const std::vector<std::string>& after,
                           const CalendarWindow& window);

// Runs build_listing()'s statement.
ListingPage query_listing(pg::Connection& conn, const std::string& org_id,
                          const OrgUsageParams& p,
                          const std::vector<std::string>& after,
                          const CalendarWindow& window);

}  // namespace apikey::api
