# Dormant-key cleanup: one rule for the API's dormant flag, `key list
# --dormant` and `key revoke --dormant`: not used in the last N days, a key
# never used counting from its creation. The dry run changes nothing;
# --yes revokes exactly the dormant, not yet revoked keys of that org, and
# nginx rejects them within a second.

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;

start_postgres();
start_apikeyd();

my $A = apikeyctl('org', 'create', 'dormant A')->{org_id};
my $B = apikeyctl('org', 'create', 'dormant B')->{org_id};
my %K;
sub mk {
    my ($name, $org, @extra) = @_;
    $K{$name} = apikeyctl('key', 'create', '--org', $org, '--name', $name, @extra);
}
mk('fresh',      $A);                              # never used, created now
mk('stale',      $A);                              # never used, created 100 days ago
mk('old_use',    $A);                              # created 200 days ago, used 95 days ago
mk('recent_use', $A);                              # created 200 days ago, used 10 days ago
mk('revoked',    $A);                              # dormant, but revoked already
mk('admin',      $A, '--scopes', 'usage:read');    # used 1 day ago
mk('other_org',  $B);                              # dormant, other org

psql(<<'SQL', { map { ($_ => $K{$_}{key_id}) } keys %K });
UPDATE api_keys SET created_at = now() - interval '100 days' WHERE id = :'stale';
UPDATE api_keys SET created_at = now() - interval '200 days',
                    last_used_at = now() - interval '95 days', last_used_ip = '192.0.2.9'
 WHERE id = :'old_use';
UPDATE api_keys SET created_at = now() - interval '200 days',
                    last_used_at = now() - interval '10 days' WHERE id = :'recent_use';
UPDATE api_keys SET created_at = now() - interval '300 days',
                    revoked_at = now() - interval '1 day' WHERE id = :'revoked';
UPDATE api_keys SET last_used_at = now() - interval '1 day' WHERE id = :'admin';
UPDATE api_keys SET created_at = now() - interval '300 days' WHERE id = :'other_org';
SQL

my %name_of = map { ($K{$_}{key_id} => $_) } keys %K;
sub names { [ sort map { $name_of{ $_->{key_id} } } @{ $_[0] } ] }

# --- the API's flag follows the same rule ----------------------------------
my $r = apikeyd_get("/api/orgs/$A/api-keys/usage?dormant_days=90",
                    ["Authorization: Bearer $K{admin}{key}"]);
is($r->{status}, 200, 'listing answers');
my %flag = map { ($name_of{ $_->{key_id} } => $_->{dormant} ? 1 : 0) } @{ $r->{json}{keys} };
is_deeply(\%flag, { fresh => 0, stale => 1, old_use => 1, recent_use => 0,
                    revoked => 1, admin => 0 },
          'dormant_days=90: unused for 90 days, a never-used key counted from its creation');

# --- key list --dormant ------------------------------------------------------
my $list = apikeyctl('key', 'list', '--org', $A, '--dormant', '90d');
is_deeply(names($list->{keys}), [qw(old_use revoked stale)],
          'key list --dormant 90d: exactly the dormant keys, revoked included');
ok(!grep({ !$_->{dormant} } @{ $list->{keys} }), 'each listed key says dormant');
is_deeply(names(apikeyctl('key', 'list', '--org', $A, '--dormant', '1w')->{keys}),
          [qw(old_use recent_use revoked stale)], '--dormant 1w takes the 10-day-old use in');

# --- dry run ----------------------------------------------------------------
sub revoked_set {
    return join ',', map { $_->[0] } @{ psql(
        "SELECT name FROM api_keys WHERE revoked_at IS NOT NULL ORDER BY name") };
}
my $before = revoked_set();
my $dry = apikeyctl('key', 'revoke', '--org', $A, '--dormant', '90d');
is($dry->{dry_run}, JSON::PP::true, 'without --yes: a dry run');
is($dry->{revoked}, 0, 'dry run: revoked 0');
is($dry->{dormant_days}, 90, 'dry run: the threshold in days');
is_deeply(names($dry->{keys}), [qw(old_use stale)],
          'dry run lists the dormant keys not yet revoked, of this org only');
is(revoked_set(), $before, 'dry run changed nothing');

my ($rc, $out) = apikeyctl_raw('key', 'revoke', '--org', $A, '--dormant', '90d');
is($rc, 0, 'text dry run exits 0');
like($out, qr/^2 key\(s\) unused for 90 days would be revoked \(dry run: add --yes/m,
     'text dry run says what it would do');
unlike($out, qr/\Q$K{stale}{key}\E/, 'no key secret in the output');

# --- --yes --------------------------------------------------------------------
my $done = apikeyctl('key', 'revoke', '--org', $A, '--dormant', '90d', '--yes');
is($done->{dry_run}, JSON::PP::false, '--yes: not a dry run');
is($done->{revoked}, 2, '--yes revoked 2');
is_deeply(names($done->{keys}), [qw(old_use stale)], '--yes revoked exactly the dormant keys');
is_deeply([ map { $_->{status} } @{ $done->{keys} } ], [qw(revoked revoked)],
          'they are revoked now');
is(revoked_set(), 'old_use,revoked,stale', 'nothing else revoked (other org, fresh, recently used)');

my $t = wait_key_results({ $K{stale}{key} => 'revoked', $K{old_use}{key} => 'revoked',
                           $K{fresh}{key} => 'ok', $K{other_org}{key} => 'ok' }, 1,
                         'nginx rejecting the revoked keys');
cmp_ok($t, '<=', 1, 'nginx rejects the revoked dormant keys within 1 s');

my $again = apikeyctl('key', 'revoke', '--org', $A, '--dormant', '90d', '--yes');
is($again->{revoked}, 0, 'a second run finds nothing left');
($rc, $out) = apikeyctl_raw('key', 'revoke', '--org', $A, '--dormant', '90d', '--yes');
like($out, qr/^revoked 0 key\(s\) unused for 90 days$/m, 'text: revoked 0');

# --- errors -----------------------------------------------------------------
my $err;
($rc, $out, $err) = apikeyctl_raw('key', 'revoke', '--org', $A, '--dormant', '36h');
is($rc, 2, 'a dormancy that is not whole days is a usage error');
like($err, qr/expected whole days/, '... and says so');
($rc, $out, $err) = apikeyctl_raw('key', 'revoke', '--org', '0b6f1c2e-3d4a-4b5c-8d6e-7f8091a2b3c4',
                                  '--dormant', '90d');
is($rc, 1, 'an unknown org fails');
like($err, qr/unknown org/, '... naming the problem');

done_testing();
