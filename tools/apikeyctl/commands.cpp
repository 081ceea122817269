#include "commands.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include "key_format.h"
#include "key_hash.h"
#include "key_sql.h"
#include "migrate.h"
#include "usage_export.h"

namespace apikey::ctl {
namespace {

// ordered_json: fields come out in the order the docs list them.
using json = nlohmann::ordered_json;
using Fields = std::vector<std::pair<std::string, std::string>>;

// RFC 3339 UTC, whole seconds; NULL stays NULL.
std::string ts(std::string_view column) { return keysql::rfc3339(column); }

// A duration as a float8 seconds parameter for make_interval(secs => ...).
pg::Param seconds_param(std::optional<std::chrono::seconds> d) {
    if (!d) return std::nullopt;
    return std::to_string(d->count());
}

json nullable(const std::optional<std::string>& value) {
    return value ? json(*value) : json(nullptr);
}

std::string or_dash(const std::optional<std::string>& value) {
    return value && !value->empty() ? *value : "-";
}

std::string or_never(const std::optional<std::string>& value) {
    return value ? *value : "never";
}

std::string join(const std::vector<std::string>& items) {
    std::string out;
    for (const std::string& item : items) {
        if (!out.empty()) out += ',';
        out += item;
    }
    return out;
}

// Terminal columns taken by UTF-8 text (code points; good enough for
// names, which are mostly ASCII).
std::size_t display_width(std::string_view s) {
    return static_cast<std::size_t>(std::count_if(
        s.begin(), s.end(),
        [](char c) { return (static_cast<unsigned char>(c) & 0xc0) != 0x80; }));
}

void pad(std::ostream& out, std::string_view s, std::size_t width) {
    out << s;
    for (std::size_t w = display_width(s); w < width; ++w) out << ' ';
}

void print_fields(std::ostream& out, const Fields& fields) {
    std::size_t width = 0;
    for (const auto& f : fields)
        width = std::max(width, display_width(f.first));
    for (const auto& [name, value] : fields) {
        pad(out, name, width + 2);
        out << value << '\n';
    }
}

void print_table(std::ostream& out, const std::vector<std::string>& header,
                 const std::vector<std::vector<std::string>>& rows) {
    std::vector<std::size_t> widths;
    for (const std::string& h : header) widths.push_back(display_width(h));
    for (const auto& row : rows) {
        for (std::size_t i = 0; i < row.size(); ++i) {
            widths[i] = std::max(widths[i], display_width(row[i]));
        }
    }
    auto print_row = [&](const std::vector<std::string>& row) {
        for (std::size_t i = 0; i < row.size(); ++i) {
            if (i + 1 == row.size()) {
                out << row[i];
            } else {
                pad(out, row[i], widths[i] + 2);
            }
        }
        out << '\n';
    };
    print_row(header);
    for (const auto& row : rows) print_row(row);
}

void print_json(std::ostream& out, const json& j) {
    // Replace rather than throw on invalid UTF-8 (SQL_ASCII databases).
    out << j.dump(-1, ' ', false, json::error_handler_t::replace) << '\n';
}

std::vector<keysql::KeyRow> read_keys(const pg::Result& r) {
    std::vector<keysql::KeyRow> keys;
    for (int i = 0; i < r.rows(); ++i) {
        keys.push_back(keysql::KeyRow::read(r, i));
    }
    return keys;
}

void require_org(pg::Connection& conn, const std::string& org_id) {
    if (conn.exec("SELECT 1 FROM orgs WHERE id = $1::uuid", {org_id})
            .rows() == 0) {
        throw CommandError("unknown org " + org_id);
    }
}

// A fresh key and what is stored of it. The secret itself never reaches SQL.
struct NewKey {
    std::string secret;
    std::string hint;
    std::string hash_param;  // bytea hex text
};

NewKey new_key(std::string_view prefix) {
    NewKey k;
    k.secret = generate_key(prefix);
    k.hint = key_hint(k.secret);
    KeyHash hash;
    if (!sha256_key(k.secret, &hash))
        throw CommandError("hashing the key failed");
    k.hash_param = pg::bytea_param(hash.data(), hash.size());
    return k;
}

constexpr std::string_view kStoreNow =
    "Store this key now: it is shown only once and cannot be recovered.";

// --- migrate -----------------------------------------------------------------

void cmd_migrate(const Options& opts, pg::Connection& conn, std::ostream& out) {
    std::vector<int> applied = migrate(conn);
    int version = schema_version(conn);
    if (opts.json) {
        print_json(out, {{"applied", applied}, {"schema_version", version}});
        return;
    }
    for (int v : applied) {
        std::string name = std::to_string(v);
        for (const Migration& m : embedded_migrations()) {
            if (m.version == v) name = m.name;
        }
        out << "applied " << name << '\n';
    }
    if (applied.empty()) {
        out << "schema is up to date (version " << version << ")\n";
    } else {
        out << "schema version " << version << '\n';
    }
}

// --- org
// -----------------------------------------------------------------------

void cmd_org_create(const Options& opts, pg::Connection& conn,
                    std::ostream& out) {
    pg::Result r =
        conn.exec("INSERT INTO orgs (name) VALUES ($1) RETURNING id, name, " +
                      ts("created_at"),
                  {opts.name});
    std::string id = r.get(0, 0);
    if (opts.json) {
        print_json(out, {{"org_id", id}, {"name", r.get(0, 1)}});
        return;
    }
    print_fields(
        out,
        {{"org_id", id}, {"name", r.get(0, 1)}, {"created_at", r.get(0, 2)}});
}

void cmd_org_list(const Options& opts, pg::Connection& conn,
                  std::ostream& out) {
    pg::Result r = conn.exec("SELECT id, name, " + ts("created_at") +
                             " FROM orgs ORDER BY created_at, id");
    if (opts.json) {
        json orgs = json::array();
        for (int i = 0; i < r.rows(); ++i) {
            orgs.push_back({{"org_id", r.get(i, 0)},
                            {"name", r.get(i, 1)},
                            {"created_at", r.get(i, 2)}});
        }
        print_json(out, {{"orgs", orgs}});
        return;
    }
    if (r.rows() == 0) {
        out << "no orgs yet; create one with 'apikeyctl org create NAME'\n";
        return;
    }
    std::vector<std::vector<std::string>> rows;
    for (int i = 0; i < r.rows(); ++i) {
        rows.push_back({r.get(i, 0), r.get(i, 2), r.get(i, 1)});
    }
    print_table(out, {"ORG_ID", "CREATED_AT", "NAME"}, rows);
}

// --- key
// -----------------------------------------------------------------------

void print_new_key(const Options& opts, std::ostream& out, const Fields& fields,
                   const NewKey& key, json j) {
    if (opts.json) {
        print_json(out, j);
        return;
    }
    Fields all = fields;
    all.emplace_back("key", key.secret);
    print_fields(out, all);
    out << '\n' << kStoreNow << '\n';
}

void cmd_key_create(const Options& opts, pg::Connection& conn,
                    std::ostream& out) {
    NewKey key = new_key(opts.prefix);
    // INSERT ... SELECT FROM orgs: no row means no such org, in one step.
    pg::Result r = conn.exec(
        "INSERT INTO api_keys"
        " (org_id, name, prefix, hint, key_hash, scopes, expires_at)"
        " SELECT id, $2, $3, $4, $5::bytea, $6::text[],"
        " now() + make_interval(secs => $7::float8)"
        " FROM orgs WHERE id = $1::uuid"
        " RETURNING id, org_id, " +
            ts("expires_at"),
        {opts.org_id, opts.name, opts.prefix, key.hint, key.hash_param,
         pg::text_array_param(opts.scopes), seconds_param(opts.expires_in)});
    if (r.rows() == 0) throw CommandError("unknown org " + opts.org_id);

    std::string key_id = r.get(0, 0);
    print_new_key(opts, out,
                  {{"key_id", key_id},
                   {"org_id", r.get(0, 1)},
                   {"name", opts.name},
                   {"hint", key.hint},
                   {"scopes", opts.scopes.empty() ? "-" : join(opts.scopes)},
                   {"expires_at", or_never(r.get_optional(0, 2))}},
                  key,
                  {{"key_id", key_id},
                   {"org_id", r.get(0, 1)},
                   {"key", key.secret},
                   {"hint", key.hint}});
}

void cmd_key_list(const Options& opts, pg::Connection& conn,
                  std::ostream& out) {
    require_org(conn, opts.org_id);
    pg::Result r = conn.exec(
        "SELECT " + keysql::key_columns("", 2) +
            " FROM api_keys WHERE org_id = $1::uuid" +
            (opts.dormant_only ? " AND " + keysql::dormant("", 2) : "") +
            " ORDER BY " + keysql::key_order(""),
        {opts.org_id, std::to_string(opts.dormant_days)});
    std::vector<keysql::KeyRow> keys = read_keys(r);

    if (opts.json) {
        json list = json::array();
        for (const keysql::KeyRow& k : keys) {
            list.push_back({{"key_id", k.key_id},
                            {"name", k.name},
                            {"hint", k.hint},
                            {"scopes", json::parse(k.scopes_json)},
                            {"status", k.status},
                            {"created_at", k.created_at},
                            {"expires_at", nullable(k.expires_at)},
                            {"last_used_at", nullable(k.last_used_at)},
                            {"last_used_ip", nullable(k.last_used_ip)},
                            {"request_count", k.request_count},
                            {"dormant", k.dormant}});
        }
        print_json(out, {{"org_id", opts.org_id}, {"keys", list}});
        return;
    }
    if (keys.empty()) {
        out << "org " << opts.org_id
            << (opts.dormant_only ? " has no dormant keys\n" : " has no keys\n");
        return;
    }
    std::vector<std::vector<std::string>> rows;
    for (const keysql::KeyRow& k : keys) {
        auto scopes =
            json::parse(k.scopes_json).get<std::vector<std::string>>();
        rows.push_back({k.key_id, k.hint, k.status, k.dormant ? "yes" : "no",
                        or_dash(k.last_used_at), or_dash(k.last_used_ip),
                        std::to_string(k.request_count), or_dash(k.expires_at),
                        k.created_at, scopes.empty() ? "-" : join(scopes),
                        k.name});
    }
    print_table(
        out,
        {"KEY_ID", "HINT", "STATUS", "DORMANT", "LAST_USED_AT", "LAST_USED_IP",
         "REQUESTS", "EXPIRES_AT", "CREATED_AT", "SCOPES", "NAME"},
        rows);
}

void cmd_key_rotate(const Options& opts, pg::Connection& conn,
                    std::ostream& out) {
    struct Rotated {
        NewKey key;
        std::string key_id, org_id, name, scopes, expires_at, old_expires_at;
    };
    Rotated rot = pg::in_transaction(conn, [&] {
        // FOR UPDATE: a concurrent revoke or rotate of the same key waits.
        pg::Result old = conn.exec(
            "SELECT prefix, revoked_at IS NOT NULL FROM api_keys"
            " WHERE id = $1::uuid FOR UPDATE",
            {opts.key_id});
        if (old.rows() == 0) throw CommandError("unknown key " + opts.key_id);
        if (old.get(0, 1) == "t") {
            throw CommandError("key " + opts.key_id +
                               " is revoked; revoked keys cannot be rotated");
        }
        Rotated r{new_key(old.get(0, 0)), {}, {}, {}, {}, {}, {}};
        pg::Result ins = conn.exec(
            "INSERT INTO api_keys (org_id, name, prefix, hint, key_hash,"
            " scopes, rotated_from, expires_at)"
            " SELECT org_id, name, prefix, $2, $3::bytea, scopes, id,"
            " now() + make_interval(secs => $4::float8)"
            " FROM api_keys WHERE id = $1::uuid"
            " RETURNING id, org_id, name, array_to_string(scopes, ','), " +
                ts("expires_at"),
            {opts.key_id, r.key.hint, r.key.hash_param,
             seconds_param(opts.expires_in)});
        r.key_id = ins.get(0, 0);
        r.org_id = ins.get(0, 1);
        r.name = ins.get(0, 2);
        r.scopes = ins.get(0, 3);
        r.expires_at = or_never(ins.get_optional(0, 4));
        // least() skips NULL: a key without expiry gets now() + grace, and
        // an earlier expiry is never extended.
        pg::Result upd = conn.exec(
            "UPDATE api_keys SET expires_at ="
            " least(expires_at, now() + make_interval(secs => $2::float8))"
            " WHERE id = $1::uuid RETURNING " +
                ts("expires_at"),
            {opts.key_id, seconds_param(opts.grace)});
        r.old_expires_at = upd.get(0, 0);
        return r;
    });

    print_new_key(opts, out,
                  {{"key_id", rot.key_id},
                   {"org_id", rot.org_id},
                   {"name", rot.name},
                   {"hint", rot.key.hint},
                   {"scopes", rot.scopes.empty() ? "-" : rot.scopes},
                   {"expires_at", rot.expires_at},
                   {"rotated_from", opts.key_id},
                   {"old_expires_at", rot.old_expires_at}},
                  rot.key,
                  {{"key_id", rot.key_id},
                   {"org_id", rot.org_id},
                   {"key", rot.key.secret},
                   {"hint", rot.key.hint},
                   {"rotated_from", opts.key_id},
                   {"old_expires_at", rot.old_expires_at}});
}

void cmd_key_revoke(const Options& opts, pg::Connection& conn,
                    std::ostream& out) {
    bool already = false;
    pg::Result r = conn.exec(
        "UPDATE api_keys SET revoked_at = now()"
        " WHERE id = $1::uuid AND revoked_at IS NULL"
        " RETURNING org_id, " +
            ts("revoked_at"),
        {opts.key_id});
    if (r.rows() == 0) {
        r = conn.exec("SELECT org_id, " + ts("revoked_at") +
                          " FROM api_keys WHERE id = $1::uuid",
                      {opts.key_id});
        if (r.rows() == 0) throw CommandError("unknown key " + opts.key_id);
        already = true;
    }
    std::string revoked_at = r.get(0, 1);
    if (opts.json) {
        print_json(out, {{"key_id", opts.key_id},
                         {"org_id", r.get(0, 0)},
                         {"revoked_at", revoked_at},
                         {"already_revoked", already}});
        return;
    }
    if (already) {
        out << "key " << opts.key_id << " was already revoked at " << revoked_at
            << '\n';
    } else {
        out << "revoked key " << opts.key_id << " at " << revoked_at << '\n';
    }
}

// Revokes (with --yes) or lists (dry run) the org's keys that are dormant
// by the API's rule and not revoked yet, in one statement: a key used
// between a dry run and the real one is not revoked.
void cmd_key_revoke_dormant(const Options& opts, pg::Connection& conn,
                            std::ostream& out) {
    require_org(conn, opts.org_id);
    const std::string which = " WHERE org_id = $1::uuid AND revoked_at IS NULL"
                              " AND " + keysql::dormant("", 2);
    const std::string sql =
        opts.yes ? "WITH r AS (UPDATE api_keys SET revoked_at = now()" + which +
                       " RETURNING *) SELECT " + keysql::key_columns("r.", 2) +
                       " FROM r ORDER BY " + keysql::key_order("r.")
                 : "SELECT " + keysql::key_columns("", 2) +
                       " FROM api_keys" + which + " ORDER BY " +
                       keysql::key_order("");
    pg::Result r =
        conn.exec(sql, {opts.org_id, std::to_string(opts.dormant_days)});
    std::vector<keysql::KeyRow> keys = read_keys(r);
    if (opts.json) {
        json list = json::array();
        for (const keysql::KeyRow& k : keys) {
            list.push_back({{"key_id", k.key_id},
                            {"name", k.name},
                            {"hint", k.hint},
                            {"status", k.status},
                            {"created_at", k.created_at},
                            {"last_used_at", nullable(k.last_used_at)},
                            {"last_used_ip", nullable(k.last_used_ip)},
                            {"request_count", k.request_count}});
        }
        print_json(out, {{"org_id", opts.org_id},
                         {"dormant_days", opts.dormant_days},
                         {"dry_run", !opts.yes},
                         {"revoked", opts.yes ? keys.size() : 0},
                         {"keys", list}});
        return;
    }
    std::vector<std::vector<std::string>> rows;
    for (const keysql::KeyRow& k : keys) {
        rows.push_back({k.key_id, k.hint, or_dash(k.last_used_at),
                        k.created_at, k.name});
    }
    if (!rows.empty()) {
        print_table(out, {"KEY_ID", "HINT", "LAST_USED_AT", "CREATED_AT", "NAME"},
                    rows);
    }
    const std::string n = std::to_string(keys.size());
    const std::string days = std::to_string(opts.dormant_days);
    if (opts.yes) {
        out << "revoked " << n << " key(s) unused for " << days << " days\n";
    } else {
        out << n << " key(s) unused for " << days
            << " days would be revoked (dry run: add --yes to revoke them)\n";
    }
}

// --- usage export ---------------------------------------------------------

// Written batch by batch as the cursor reads them: constant memory.
void cmd_usage_export(const Options& opts, pg::Connection& conn,
                      std::ostream& out) {
    require_org(conn, opts.org_id);
    api::ExportCursor cursor(conn, opts.org_id, opts.export_params);
    std::string lines;
    bool more = true;
    while (more) {
        more = cursor.next(&lines);
        out << lines;
        lines.clear();
    }
}

}  // namespace

void run_command(const Options& opts, pg::Connection& conn, std::ostream& out) {
    switch (opts.command) {
        case Command::kMigrate:
            return cmd_migrate(opts, conn, out);
        case Command::kOrgCreate:
            return cmd_org_create(opts, conn, out);
        case Command::kOrgList:
            return cmd_org_list(opts, conn, out);
        case Command::kKeyCreate:
            return cmd_key_create(opts, conn, out);
        case Command::kKeyList:
            return cmd_key_list(opts, conn, out);
        case Command::kKeyRotate:
            return cmd_key_rotate(opts, conn, out);
        case Command::kKeyRevoke:
            return cmd_key_revoke(opts, conn, out);
        case Command::kKeyRevokeDormant:
            return cmd_key_revoke_dormant(opts, conn, out);
        case Command::kUsageExport:
            return cmd_usage_export(opts, conn, out);
        case Command::kHelp:
            break;
    }
    throw CommandError("nothing to run");
}

}  // namespace apikey::ctl
