// apikeyctl's help texts: the overview and one page per command, kept
// apart from the parser so each can be read (and changed) on its own.
#include "args.h"

namespace apikey::ctl {

namespace {

constexpr std::string_view kOverview =
    R"(Usage: apikeyctl [--db CONNINFO] [--json] COMMAND [ARGS]

Manage organisations and API keys in the apikey PostgreSQL database.

Commands:
  migrate                 apply pending schema migrations
  org create NAME         create an organisation
  org list                list organisations
  key create --org ORG_ID --name NAME [--scopes a,b] [--prefix P]
             [--expires-in 90d]
                          issue a key; the secret is printed once, here only
  key list --org ORG_ID [--dormant-days N | --dormant D]
                          list an org's keys: status, last use, dormancy
  key rotate KEY_ID [--grace 24h] [--expires-in D]
                          issue a replacement; the old key expires after
                          the grace period
  key revoke KEY_ID       revoke a key now (idempotent)
  key revoke --org ORG_ID --dormant D [--yes]
                          revoke the keys unused for D (dry run without --yes)
  usage export --org ORG_ID --from T --to T [--interval hour|day]
               [--format csv|ndjson]
                          the org's usage per key, endpoint, method and
                          hour or day, as the API's export prints it

Global options (accepted anywhere on the line):
  --db CONNINFO   libpq connection string or URI, e.g.
                  "host=/run/postgresql dbname=apikey" or
                  postgresql://apikey@db.internal/apikey
                  (default: libpq's PG* environment variables)
  --json          print exactly one JSON object on stdout
  -h, --help      show help; also 'apikeyctl COMMAND --help' and
                  'apikeyctl help COMMAND'

Exit status: 0 success, 1 runtime or database error, 2 usage error.
Errors are one line on stderr: "apikeyctl: <message>".
)";

constexpr std::string_view kMigrate =
    R"(Usage: apikeyctl [--db CONNINFO] [--json] migrate

Applies every schema migration the database does not have yet, each in its
own transaction. Concurrent runs take turns (advisory lock); running it again
is a no-op.

Output: the migrations applied and the resulting schema version.
JSON: {"applied":[1],"schema_version":1}
)";

constexpr std::string_view kOrg = R"(Usage: apikeyctl org create NAME
       apikeyctl org list

  org create NAME   create an organisation (NAME: 1 to 100 bytes)
  org list          list organisations, oldest first

JSON: org create -> {"org_id","name"}
      org list   -> {"orgs":[{"org_id","name","created_at"}]}
)";

constexpr std::string_view kOrgCreate =
    R"(Usage: apikeyctl [--json] org create NAME

Creates an organisation named NAME (1 to 100 bytes, no control characters)
and prints its id, which the key commands take as --org.

JSON: {"org_id":"...","name":"..."}
)";

constexpr std::string_view kOrgList = R"(Usage: apikeyctl [--json] org list

Lists organisations, oldest first.

JSON: {"orgs":[{"org_id","name","created_at"}]}
)";

constexpr std::string_view kKey =
    R"(Usage: apikeyctl key create --org ORG_ID --name NAME [--scopes a,b]
                           [--prefix P] [--expires-in 90d]
       apikeyctl key list --org ORG_ID [--dormant-days N | --dormant D]
       apikeyctl key rotate KEY_ID [--grace 24h] [--expires-in D]
       apikeyctl key revoke KEY_ID
       apikeyctl key revoke --org ORG_ID --dormant D [--yes]

See 'apikeyctl key COMMAND --help' for each.
)";

constexpr std::string_view kKeyCreate =
    R"(Usage: apikeyctl [--json] key create --org ORG_ID --name NAME
           [--scopes a,b] [--prefix P] [--expires-in DURATION]

Issues a new API key for an organisation. The key is printed once, now,
and never again: only its SHA-256 is stored.

  --org ORG_ID           the organisation (a UUID from 'org create')
  --name NAME            a label for the key, 1 to 100 bytes
  --scopes a,b           comma-separated scopes, at most 8, each
                         [a-z0-9][a-z0-9:._-]{0,63} (default: none)
  --prefix P             key prefix, [a-z0-9]{1,8} (default: ak)
  --expires-in DURATION  expire after e.g. 90d, 12h, 30m, 2w, 1d12h
                         (default: never)

JSON: {"key_id","org_id","key","hint"}
)";

constexpr std::string_view kKeyList =
    R"(Usage: apikeyctl [--json] key list --org ORG_ID
           [--dormant-days N | --dormant D]

Lists an organisation's keys, oldest first, with status (active, expired,
revoked), expiry, last use (time and client IP), request count, and whether
the key is dormant: not used in the last N days (a key never used counts
from its creation).

  --org ORG_ID        the organisation
  --dormant-days N    dormancy threshold in days (default: 30)
  --dormant D         list only the keys dormant by D, in whole days
                      (90d, 13w)

JSON: {"org_id","keys":[{"key_id","name","hint","scopes","status",
       "created_at","expires_at","last_used_at","last_used_ip",
       "request_count","dormant"}]}
)";

constexpr std::string_view kKeyRotate =
    R"(Usage: apikeyctl [--json] key rotate KEY_ID [--grace DURATION]
           [--expires-in DURATION]

Issues a replacement for a key, in one transaction: the new key has the
same organisation, name, scopes and prefix, and records the old key in
rotated_from; the old key keeps working until the grace period ends (its
expiry only ever moves earlier). A revoked key cannot be rotated.

  --grace DURATION       how long the old key keeps working, e.g. 24h, 7d;
                         0 expires it now (default: 24h)
  --expires-in DURATION  expiry of the new key (default: never)

The new key is printed once, now, and never again.
JSON: {"key_id","org_id","key","hint","rotated_from","old_expires_at"}
)";

constexpr std::string_view kKeyRevoke =
    R"(Usage: apikeyctl [--json] key revoke KEY_ID
       apikeyctl [--json] key revoke --org ORG_ID --dormant D [--yes]

Revokes a key now; every gateway rejects it within a second. Revoking a
revoked key changes nothing and says so.

With --org and --dormant, the organisation's keys not used in the last D
(whole days: 90d, 13w; a key never used counts from its creation) and not
revoked yet. Without --yes this is a dry run: it lists the keys it would
revoke and changes nothing. With --yes it revokes exactly those that are
still dormant when it runs, in one statement.

JSON: {"key_id","org_id","revoked_at","already_revoked"}
      --dormant: {"org_id","dormant_days","dry_run","revoked","keys":[
       {"key_id","name","hint","status","created_at","last_used_at",
        "last_used_ip","request_count"}]}
)";

constexpr std::string_view kUsageExport =
    R"(Usage: apikeyctl usage export --org ORG_ID --from T --to T
           [--interval hour|day] [--format csv|ndjson]

Prints the organisation's usage from the rollups, one line per key,
endpoint, method and bucket with from <= bucket < to: the same lines, byte
for byte, as GET /api/orgs/ORG_ID/api-keys/usage/export. Lines are written
as they are read (a cursor in one read-only transaction), so any range
streams in constant memory; on an error the output stops short and the
exit status is 1.

  --org ORG_ID               the organisation
  --from T, --to T           RFC 3339 times or dates (2024-05-01), UTC
                             unless an offset is given; at most 400 days,
                             31 with --interval hour
  --interval hour|day        the rollup to read (default: day)
  --format csv|ndjson        CSV with a header line, or one JSON object a
                             line (default: csv); --json does not apply

Columns: bucket, key_id, key_name, endpoint, method, requests, status_2xx,
status_3xx, status_4xx, status_5xx, status_other, response_time_ms_sum,
avg_ms, p95_ms.
)";

}  // namespace

std::string usage(std::string_view topic) {
    if (topic == "migrate") return std::string(kMigrate);
    if (topic == "org") return std::string(kOrg);
    if (topic == "org create") return std::string(kOrgCreate);
    if (topic == "org list") return std::string(kOrgList);
    if (topic == "key") return std::string(kKey);
    if (topic == "key create") return std::string(kKeyCreate);
    if (topic == "key list") return std::string(kKeyList);
    if (topic == "key rotate") return std::string(kKeyRotate);
    if (topic == "key revoke") return std::string(kKeyRevoke);
    if (topic == "usage" || topic == "usage export") {
        return std::string(kUsageExport);
    }
    return std::string(kOverview);
}

std::string usage_error_line(const UsageError& error) {
    std::string help = "apikeyctl ";
    if (!error.topic().empty()) help += error.topic() + " ";
    return std::string(error.what()) + " (see '" + help + "--help')";
}

}  // namespace apikey::ctl
