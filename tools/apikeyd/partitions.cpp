#include "partitions.h"

#include <algorithm>
#include <cstdio>

#include "pg.h"

namespace apikey {
namespace {

constexpr std::string_view kPartitionPrefix = "api_key_usage_y";
// pg_advisory_xact_lock key for partition DDL ("akpart" in ASCII).
constexpr long long kPartitionLockKey = 0x616b70617274;
// DDL on a partition locks api_key_usage itself: wait briefly, never queue
// behind a long analytics query while blocking every reader behind us.
constexpr const char* kDdlLockTimeout = "SET LOCAL lock_timeout = '5s'";

constexpr std::int64_t kUsPerDay = 86400LL * 1000000;

std::int64_t floor_div(std::int64_t a, std::int64_t b) noexcept {
    std::int64_t q = a / b;
    if (a % b != 0 && ((a < 0) != (b < 0))) --q;
    return q;
}

// Howard Hinnant's civil_from_days / days_from_civil (proleptic Gregorian).
void civil_from_days(std::int64_t z, std::int64_t* y, int* m, int* d) noexcept {
    z += 719468;
    const std::int64_t era = floor_div(z, 146097);
    const std::int64_t doe = z - era * 146097;
    const std::int64_t yoe =
        (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const std::int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const std::int64_t mp = (5 * doy + 2) / 153;
    *d = static_cast<int>(doy - (153 * mp + 2) / 5 + 1);
    *m = static_cast<int>(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2 ? 1 : 0);
}

std::int64_t days_from_civil(std::int64_t y, int m, int d) noexcept {
    y -= m <= 2 ? 1 : 0;
    const std::int64_t era = floor_div(y, 400);
    const std::int64_t yoe = y - era * 400;
    const std::int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    const std::int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

std::int64_t year_of(MonthIndex m) noexcept { return floor_div(m, 12); }
int month_number(MonthIndex m) noexcept {
    return static_cast<int>(m - year_of(m) * 12) + 1;
}

std::vector<std::string> run_ddl(pg::Connection& conn,
                                 const std::vector<MonthIndex>& create,
                                 const std::vector<MonthIndex>& drop,
                                 std::vector<std::string>* dropped) {
    std::vector<std::string> created;
    if (create.empty() && drop.empty()) return created;
    pg::in_transaction(conn, [&] {
        conn.exec(kDdlLockTimeout);
        conn.exec("SELECT pg_advisory_xact_lock($1::bigint)",
                  {std::to_string(kPartitionLockKey)});
        for (MonthIndex m : create) {
            pg::Result r = conn.exec(
                "SELECT apikey_usage_partition_create($1::date)",
                {month_first_day(m)});
            if (!r.is_null(0, 0)) created.push_back(r.get(0, 0));
        }
        for (MonthIndex m : drop) {
            pg::Result r = conn.exec(
                "SELECT apikey_usage_partition_drop($1::date)",
                {month_first_day(m)});
            if (!r.is_null(0, 0) && dropped) dropped->push_back(r.get(0, 0));
        }
    });
    return created;
}

}  // namespace

MonthIndex month_of_us(std::int64_t time_us) noexcept {
    std::int64_t y;
    int m, d;
    civil_from_days(floor_div(time_us, kUsPerDay), &y, &m, &d);
    return y * 12 + (m - 1);
}

std::int64_t month_start_us(MonthIndex month) noexcept {
    return days_from_civil(year_of(month), month_number(month), 1) *
           kUsPerDay;
}

std::string month_first_day(MonthIndex month) {
    char buf[48];
    std::snprintf(buf, sizeof(buf), "%04lld-%02d-01",
                  static_cast<long long>(year_of(month)),
                  month_number(month));
    return buf;
}

std::string usage_partition_name(MonthIndex month) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "api_key_usage_y%04lldm%02d",
                  static_cast<long long>(year_of(month)),
                  month_number(month));
    return buf;
}

std::optional<MonthIndex> parse_usage_partition_name(std::string_view name) {
    // api_key_usage_yYYYYmMM
    if (name.size() != kPartitionPrefix.size() + 7 ||
        name.substr(0, kPartitionPrefix.size()) != kPartitionPrefix ||
        name[kPartitionPrefix.size() + 4] != 'm') {
        return std::nullopt;
    }
    auto digits = [](std::string_view s, int* out) {
        int v = 0;
        for (char c : s) {
            if (c < '0' || c > '9') return false;
            v = v * 10 + (c - '0');
        }
        *out = v;
        return true;
    };
    int y, m;
    if (!digits(name.substr(kPartitionPrefix.size(), 4), &y) ||
        !digits(name.substr(kPartitionPrefix.size() + 5, 2), &m) || m < 1 ||
        m > 12) {
        return std::nullopt;
    }
    return static_cast<MonthIndex>(y) * 12 + (m - 1);
}

bool raw_month_kept(MonthIndex month, MonthIndex current,
                    int retention_months) noexcept {
    return month >= current - retention_months &&
           month <= current + kPartitionMonthsAhead;
}

std::int64_t retention_start_us(std::int64_t now_us,
                                int retention_months) noexcept {
    return month_start_us(month_of_us(now_us) - retention_months);
}

PartitionPlan plan_partitions(MonthIndex current, int retention_months,
                              const std::vector<MonthIndex>& existing) {
    PartitionPlan plan;
    for (MonthIndex m = current; m <= current + kPartitionMonthsAhead; ++m) {
        if (std::find(existing.begin(), existing.end(), m) == existing.end()) {
            plan.create.push_back(m);
        }
    }
    for (MonthIndex m : existing) {
        if (m < current - retention_months) plan.drop.push_back(m);
    }
    std::sort(plan.drop.begin(), plan.drop.end());
    return plan;
}

std::vector<MonthIndex> list_usage_partitions(pg::Connection& conn) {
    pg::Result r = conn.exec(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c "
        "ON c.oid = i.inhrelid WHERE i.inhparent = 'api_key_usage'::regclass");
    std::vector<MonthIndex> months;
    for (int i = 0; i < r.rows(); ++i) {
        if (auto m = parse_usage_partition_name(r.get(i, 0))) {
            months.push_back(*m);
        }
    }
    std::sort(months.begin(), months.end());
    return months;
}

std::vector<MonthIndex> maintain_usage_partitions(
    pg::Connection& conn, std::int64_t now_us, int retention_months,
    std::vector<std::string>* created, std::vector<std::string>* dropped) {
    const MonthIndex current = month_of_us(now_us);
    PartitionPlan plan =
        plan_partitions(current, retention_months, list_usage_partitions(conn));
    std::vector<std::string> names =
        run_ddl(conn, plan.create, plan.drop, dropped);
    if (created) created->insert(created->end(), names.begin(), names.end());
    return list_usage_partitions(conn);
}

std::vector<std::string> ensure_usage_partitions(
    pg::Connection& conn, const std::vector<MonthIndex>& months) {
    return run_ddl(conn, months, {}, nullptr);
}

}  // namespace apikey
