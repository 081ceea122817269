# PostgreSQL failover under traffic: a primary and a streaming standby
# (pg_basebackup -R), apikeyd and apikeyctl with one multi-host conninfo
# (host=127.0.0.1,127.0.0.1 port=PRIMARY,STANDBY
# target_session_attrs=read-write). wrk sends the traffic mix of
# Test::Apikey::Soak to nginx (2 workers, auth + capture), about 700
# requests/s for TEST_APIKEY_FAILOVER_SECONDS (default 14). A few seconds
# in, the primary is stopped (fast shutdown: it sends the standby all its
# WAL first) and the standby promoted. Then:
#
#  - a key revoked with apikeyctl right after the promotion gets 401 from
#    nginx within 2 s of the promotion (the key publisher found the new
#    primary and LISTENs there);
#  - once the traffic is over and apikeyd settled, the new primary holds
#    exactly the keyed requests nginx served, per key: nothing lost in the
#    switch, nothing committed twice (rows, request_count, idempotency keys);
#  - no request was refused for it (nginx answers from its key table);
#  - apikeyd's analytics session, pooled on the old primary, gives way to one
#    on the new primary: the first query after the failover answers 200.

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use Test::Apikey::Soak;
use Test::Apikey::Standby;
use Time::HiRes qw(time sleep);

my $SECONDS = $ENV{TEST_APIKEY_FAILOVER_SECONDS} || 14;

my $primary = start_postgres();
my $standby = start_standby();
my $multi = "host=127.0.0.1,127.0.0.1 port=$primary->{port},$standby->{port} "
    . 'dbname=postgres user=postgres target_session_attrs=read-write';
$ENV{TEST_APIKEY_DB} = $multi;    # apikeyd and apikeyctl from here on

start_apikeyd();
my $org = apikeyctl('org', 'create', 'failover');
my $traffic = make_traffic($org->{org_id});
my $victim = new_key($org->{org_id}, 'victim');
my $reader = new_key($org->{org_id}, 'reader', '--scopes', 'usage:read');
my $listing = "/api/orgs/$org->{org_id}/api-keys/usage";
sub analytics { return apikeyd_get($listing, ["Authorization: Bearer $reader->{key}"]) }
wait_key_results({ $traffic->{keys}{k1}{key} => 'ok', $victim->{key} => 'ok',
                   $reader->{key} => 'ok' }, 10, 'keys published');
# An analytics session is now kept idle in apikeyd's pool, on the primary.
is(analytics()->{status}, 200, 'analytics answer before the failover');
start_nginx(workers => 2, soak_nginx_config());    # wait_key_results stopped it

sub probe { return get_with_key($_[0], '/probe')->{status} }

my $wrk = start_wrk($traffic, seconds => $SECONDS, connections => 4, delay_ms => 5);
my $t_start = time;
sleep 0.1 while time - $t_start < 4;

my $t_stop = time;
stop_postgres();
my $stopped = time - $t_stop;
promote_standby();
my $t_promoted = time;
diag(sprintf 'primary stopped in %.0f ms, standby promoted %.0f ms later',
     1000 * $stopped, 1000 * ($t_promoted - $t_stop - $stopped));
is(psql_at($multi, 'SELECT pg_is_in_recovery()')->[0][0], 'f',
   'the multi-host conninfo reaches the promoted standby');

my $revoked = eval { apikeyctl('key', 'revoke', $victim->{key_id}); 1 };
ok($revoked, 'apikeyctl revokes through the multi-host conninfo after the promotion')
    or diag($@);
my $t_401;
while (time - $t_promoted < 5) {
    if (probe($victim->{key}) == 401) { $t_401 = time - $t_promoted; last }
    sleep 0.01;
}
ok(defined $t_401 && $t_401 <= 2, 'the revoked key gets 401 within 2 s of the promotion')
    or diag(defined $t_401 ? sprintf('after %.3f s', $t_401) : 'not within 5 s');
diag(sprintf 'revocation seen %.0f ms after the promotion', 1000 * ($t_401 // 5));

my $r = finish_wrk($wrk, $SECONDS + 60);
is($r->{error}, undef, 'wrk counted every request');
is($r->{answered}, $r->{issued}, 'every keyed request answered');
my $valid = $r->{kinds}{k1} + $r->{kinds}{k2} + $r->{kinds}{k3};
is_deeply($r->{status}, { 200 => $valid, 401 => $r->{issued} - $valid },
          'valid keys 200 throughout, the others 401')
    or diag(format_statuses($r->{status}));
diag(sprintf '%d keyed requests in %.1f s (%.0f/s)', $r->{issued}, $r->{elapsed}, $r->{rps});

stop_nginx();
usage_settle(30);

psql_target($multi);    # the harness's queries too
my %name_of = map { ($traffic->{keys}{$_}{key_id} => $_) } keys %{ $traffic->{keys} };
my $rows = rows_by_key();
delete $rows->{ $victim->{key_id} };
my %want = map { ($_ => $r->{kinds}{$_}) } grep { $r->{kinds}{$_} } qw(k1 k2 k3 revoked);
is_deeply({ map { ($name_of{$_} // $_ => $rows->{$_}) } keys %$rows }, \%want,
          'rows per key on the new primary = the keyed requests nginx served');
is_deeply({ map { ($_ => key_request_count($traffic->{keys}{$_}{key_id})) } keys %want }, \%want,
          'request_count per key = the same numbers');
is(usage_duplicates(), 0, 'no idempotency key twice');
my $a = analytics();
is($a->{status}, 200, 'analytics answer after the failover, at the first request')
    or diag($a->{body});
my ($k1) = grep { $_->{key_id} eq $traffic->{keys}{k1}{key_id} } @{ $a->{json}{keys} || [] };
is($k1 && $k1->{request_count}, $want{k1}, 'analytics count every request of k1');
my $t = ingest_totals(apikeyd_metrics());
is($t->{drops}, 0, 'no record dropped');
my @connects = apikeyd_log() =~ /key publisher: connected to PostgreSQL/g;
is(scalar @connects, 2,
   'the key publisher connected twice (the primary, then the promoted standby)');

done_testing();
