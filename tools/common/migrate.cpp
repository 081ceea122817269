#include "migrate.h"

#include <algorithm>

namespace apikey {
namespace {

// pg_advisory_xact_lock key shared by every migrating process ("apkeymig").
constexpr const char* kMigrationLockKey = "7021229902643685735";

constexpr const char* kCreateMigrationsTable =
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " version int PRIMARY KEY,"
    " name text NOT NULL,"
    " applied_at timestamptz NOT NULL DEFAULT now())";

// Held until the end of the current transaction, so concurrent migrators
// (two apikeyd starting at once, or apikeyctl next to them) take turns.
void lock_migrations(pg::Connection& conn) {
    conn.exec("SELECT pg_advisory_xact_lock($1::bigint)", {kMigrationLockKey});
}

bool is_applied(pg::Connection& conn, int version) {
    return conn.exec("SELECT 1 FROM schema_migrations WHERE version = $1",
                     {std::to_string(version)})
               .rows() > 0;
}

}  // namespace

std::vector<int> migrate(pg::Connection& conn) {
    // Even CREATE TABLE IF NOT EXISTS races with itself, so bootstrap under
    // the lock too.
    pg::in_transaction(conn, [&] {
        lock_migrations(conn);
        conn.exec(kCreateMigrationsTable);
    });

    std::vector<Migration> pending = embedded_migrations();
    std::sort(pending.begin(), pending.end(),
              [](const Migration& a, const Migration& b) {
                  return a.version < b.version;
              });

    std::vector<int> applied;
    for (const Migration& m : pending) {
        // Re-checked under the lock: another process may have applied it
        // while we waited.
        bool ran = pg::in_transaction(conn, [&] {
            lock_migrations(conn);
            if (is_applied(conn, m.version)) return false;
            try {
                conn.exec_script(m.sql);
            } catch (const pg::Error& e) {
                throw pg::Error("migration " + m.name + ": " + e.what(),
                                e.sqlstate());
            }
            conn.exec(
                "INSERT INTO schema_migrations (version, name) "
                "VALUES ($1, $2)",
                {std::to_string(m.version), m.name});
            return true;
        });
        if (ran) applied.push_back(m.version);
    }
    return applied;
}

int schema_version(pg::Connection& conn) {
    pg::Result exists =
        conn.exec("SELECT to_regclass('schema_migrations') IS NOT NULL");
    if (exists.get(0, 0) != "t") return 0;
    pg::Result res =
        conn.exec("SELECT coalesce(max(version), 0) FROM schema_migrations");
    return std::stoi(res.get(0, 0));
}

}  // namespace apikey
