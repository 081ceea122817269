# Long test (tools/test --long): PostgreSQL stopped for 10 minutes under a
# steady load, then started again: nothing lost.
#
# nginx (2 workers, auth + capture, the default usage segment) takes a
# paced stream of keyed requests from wrk (the mix of Test::Apikey::Soak:
# three valid keys, a revoked, an unknown and a malformed one, four
# endpoints; 4 connections, about 200 requests/s) for 20 s, then
# PostgreSQL is stopped (fast shutdown) for TEST_APIKEY_PG_LONG_OUTAGE_SECONDS
# (default 600) while the load goes on, then started; the load runs 20 s
# more. Meanwhile apikeyd spools the raw records to disk and keeps the
# workers' aggregates: a closed buffer in its memory, the workers adding
# into their other buffer in the segment.
#
# After nginx stopped and apikeyd settled (rings and spool empty, every
# buffer collected): per key, raw rows = sum(hourly requests) =
# sum(daily requests) = request_count = the requests wrk sent with that
# key (exact counts: Test::Apikey::Soak); no ring, spool or aggregate drop;
# no raw row twice. Prints the spool's peak, how long the replay took and
# how long the rollups took to catch up.
#
# About 11.5 minutes. TEST_APIKEY_PG_LONG_OUTAGE_SECONDS shortens the
# outage for development; TEST_APIKEY_PG_OUTAGE_RATE (requests/s, default
# 200).

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use Test::Apikey::Soak;
use POSIX ();
use Time::HiRes qw(time sleep);

my $OUTAGE = $ENV{TEST_APIKEY_PG_LONG_OUTAGE_SECONDS} || 600;
my $RATE   = $ENV{TEST_APIKEY_PG_OUTAGE_RATE} || 200;
my $BEFORE = 20;    # s of load before PostgreSQL stops
my $AFTER  = 20;    # and after it is back
my $CONNS  = 4;
my $DELAY  = POSIX::floor($CONNS * 1000 / $RATE + 0.5) || 1;

log_level('warn');
start_postgres();
start_apikeyd();
my $org = apikeyctl('org', 'create', 'pg-outage-long');
my $T = make_traffic($org->{org_id});
my %K = %{ $T->{keys} };
wait_key_results({ (map { ($K{$_}{key} => 'ok') } qw(k1 k2 k3)),
                   $K{revoked}{key} => 'revoked' }, 10, 'key table');
start_nginx(workers => 2, soak_nginx_config());
wait_until(sub { apikeyd_metrics()->{apikey_usage_segment_attached} == 1 }, 5, 'segment attached');
my $m0 = apikeyd_metrics();

my $h = start_wrk($T, seconds => $BEFORE + $OUTAGE + $AFTER, connections => $CONNS,
                  delay_ms => $DELAY);
sleep $BEFORE;
stop_postgres();
my $t_down = time;
my ($spool_peak, @up) = (0);
while (time < $t_down + $OUTAGE) {
    my $m = eval { apikeyd_metrics() };
    if ($m) {
        push @up, $m->{apikey_postgres_up} if time - $t_down > 5;
        $spool_peak = $m->{apikey_spool_bytes} if $m->{apikey_spool_bytes} > $spool_peak;
    }
    sleep 1;
}
start_postgres();
my $t_up = time;
my ($t_replay, $t_rollups);
my $agg_down = apikeyd_metrics()->{apikey_agg_requests_committed_total};
while (time - $t_up < 60 && !(defined $t_replay && defined $t_rollups)) {
    my $m = eval { apikeyd_metrics() } or next;
    $t_replay //= time - $t_up if $m->{apikey_spool_bytes} == 0;
    $t_rollups //= time - $t_up if $m->{apikey_agg_requests_committed_total} > $agg_down;
    sleep 0.1;
}
my $r = finish_wrk($h, 120);
stop_nginx();
my $settled = eval { usage_settle(120) };
ok($settled, 'apikeyd committed everything after PostgreSQL came back') or diag($@);

is($r->{error}, undef, 'wrk ran to the end') or diag($r->{error});
is($r->{answered}, $r->{issued}, "every keyed request answered ($r->{issued})");
my %kinds = %{ $r->{kinds} };
is_deeply($r->{status}, { 200 => $kinds{k1} + $kinds{k2} + $kinds{k3},
                          401 => $kinds{revoked} + $kinds{unknown} + $kinds{malformed} },
          'valid keys 200, revoked, unknown and malformed 401: nginx kept answering');
ok(@up && !grep({ $_ != 0 } @up), 'apikey_postgres_up 0 while PostgreSQL was down')
    or diag("samples: @up");
ok($spool_peak > 0, 'raw records spooled while PostgreSQL was down');

my $m = apikeyd_metrics();
my $delta = sub { metric_sum($m, $_[0]) - metric_sum($m0, $_[0]) };
is($delta->('apikey_ring_dropped_total') + $delta->('apikey_unslotted_drops_total')
   + $delta->('apikey_records_spool_dropped_total'), 0, 'no raw record dropped (rings, spool)');
is($delta->('apikey_agg_overflow_total'), 0, 'no request left out of the aggregates');
is(usage_duplicates(), 0, 'no raw row twice');

my %got = map { ($_->[0] => [ @$_[1 .. 4] ]) } @{ psql(q{
    SELECT k.name, (SELECT count(*) FROM api_key_usage u WHERE u.key_id = k.id),
           (SELECT coalesce(sum(requests), 0) FROM api_key_usage_hourly h WHERE h.key_id = k.id),
           (SELECT coalesce(sum(requests), 0) FROM api_key_usage_daily d WHERE d.key_id = k.id),
           k.request_count
      FROM api_keys k WHERE k.org_id = :'org'}, { org => $org->{org_id} }) };
my %want = map { ("long-$_" => [ ($kinds{$_}) x 4 ]) } qw(k1 k2 k3 revoked);
is_deeply(\%got, \%want,
          'per key: raw rows = sum(hourly) = sum(daily) = request_count = requests sent')
    or diag(explain(\%got), explain(\%want));

diag(sprintf 'PostgreSQL down %d s under %.0f requests/s (2 workers): %d keyed requests '
             . '(%d with a known key); spool peak %.1f MB; spool replayed %s, rollups '
             . 'committed %s after PostgreSQL was back',
     $t_up - $t_down, $r->{rps}, $r->{issued},
     $kinds{k1} + $kinds{k2} + $kinds{k3} + $kinds{revoked}, $spool_peak / 1048576,
     map { defined $_ ? sprintf('%.1f s', $_) : 'not within 60 s' } $t_replay, $t_rollups);

done_testing();
