// Versioned schema migrations, embedded in the binaries at build time from
// tools/migrations/*.sql.
#pragma once

#include <string>
#include <vector>

#include "pg.h"

namespace apikey {

struct Migration {
    int version;
    std::string name;
    std::string sql;
};

// All migrations, ordered by version (generated at build time).
const std::vector<Migration>& embedded_migrations();

// Applies every migration newer than the database's, each in its own
// transaction under an advisory lock; returns the versions applied (empty
// when the schema is current, so running it twice is a no-op).
std::vector<int> migrate(pg::Connection& conn);

// Highest applied version, 0 for an empty database.
int schema_version(pg::Connection& conn);

}  // namespace apikey
