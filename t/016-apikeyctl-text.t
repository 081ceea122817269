# apikeyctl's answers for people (without --json) and the cases a script
# meets less often: an empty database, an org without keys, an unknown org,
# a key revoked twice, help, and a migration that cannot run on a database
# holding a conflicting table. Each block runs apikeyctl transcripts
# against the file's PostgreSQL.

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;

start_postgres();

# A second database where the first migration meets a table of its own:
# the error names the migration, which is not recorded as applied.
psql(q{CREATE DATABASE conflict});
psql(qq{\\c conflict\nCREATE TABLE orgs (x int);});
{
    (local $ENV{TEST_APIKEY_DB} = $ENV{TEST_APIKEY_DB}) =~ s/dbname=\S+/dbname=conflict/
        or die "no dbname in $ENV{TEST_APIKEY_DB}\n";
    for my $json (0, 1) {
        my $label = 'migrate on a conflicting table' . ($json ? ' (--json)' : '');
        my ($rc, $out, $err) = apikeyctl_raw(($json ? '--json' : ()), 'migrate');
        is($rc, 1, "$label: exit 1");
        is($out, '', "$label: nothing on stdout");
        like($err, qr/^apikeyctl: migration \S+: .*already exists\n\z/,
             "$label: one line naming the migration");
    }
    is(psql_one(qq{\\c conflict\nSELECT count(*) FROM schema_migrations}), 0,
       'the failed migration is not recorded as applied');
}

run_tests();

__DATA__

=== TEST 1: an empty database: no orgs, and how to create one
--- apikeyctl
$ org list
stdout: no orgs yet; create one with 'apikeyctl org create NAME'
$ --json org list
json orgs: []



=== TEST 2: an org created and listed, for people and as JSON
--- apikeyctl
$ org create "text org"
stdout like: ^org_id\s+[0-9a-f]{8}-[0-9a-f-]{27}\nname\s+text org\ncreated_at\s+\d{4}-
$ org list
stdout like: ^ORG_ID\s+CREATED_AT\s+NAME\n[0-9a-f-]{36}\s+\d{4}-\S+\s+text org\n\z
$ --json org list
json orgs.0.name: text org
stdout like: "created_at"



=== TEST 3: key list of an org without keys, and of an org that does not exist
--- init
$ENV{TEST_NGINX_ORG_ID} = apikeyctl('org', 'create', 'keyless')->{org_id};
--- apikeyctl
$ key list --org $TEST_NGINX_ORG_ID
stdout like: ^org [0-9a-f-]{36} has no keys\n\z
$ key list --org 00000000-0000-4000-8000-000000000000
exit 1
stderr: unknown org 00000000-0000-4000-8000-000000000000
stdout like: ^\z



=== TEST 4: revoking a key twice says when it was revoked
--- init
my $org = apikeyctl('org', 'create', 'revoker')->{org_id};
$ENV{TEST_NGINX_KEY_ID} =
    apikeyctl('key', 'create', '--org', $org, '--name', 'once')->{key_id};
--- apikeyctl
$ key revoke $TEST_NGINX_KEY_ID
stdout like: ^revoked key [0-9a-f-]{36} at \d{4}-
$ key revoke $TEST_NGINX_KEY_ID
stdout like: ^key [0-9a-f-]{36} was already revoked at \d{4}-



=== TEST 5: help needs no database
--- apikeyctl
$ help
stdout like: ^Usage: apikeyctl
stderr like: ^\z
$ key --help
stdout like: ^Usage: apikeyctl key
