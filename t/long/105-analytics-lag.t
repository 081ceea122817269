# Long test (tools/test --long): how long a request takes to show in the
# analytics API, at a steady load.
#
# nginx (2 workers, auth + capture) takes a paced stream from wrk (the mix
# of Test::Apikey::Soak, 4 connections, about TEST_APIKEY_LAG_RATE
# requests/s, default 1000). Meanwhile the test sends TEST_APIKEY_LAG_PROBES
# (default 200) requests with a key of its own, one at a time; after each
# answer it asks the per-key view (GET /api/orgs/{org}/api-keys/{key}/usage
# with a usage:read key of the org) every 10 ms until the key's
# request_count counts that request. The lag is from the answer to the
# first view that counts it. Asserted: p99 <= 1 s, every probe seen within
# 5 s, and in the end request_count = the probes sent. Prints p50, p99 and
# the maximum.
#
# About 1.5 minutes.

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use Test::Apikey::Soak;
use POSIX ();
use Time::HiRes qw(time sleep);

my $RATE   = $ENV{TEST_APIKEY_LAG_RATE} || 1000;
my $PROBES = $ENV{TEST_APIKEY_LAG_PROBES} || 200;
my $CONNS  = 4;
my $DELAY  = POSIX::floor($CONNS * 1000 / $RATE + 0.5) || 1;
my $GIVE_UP = 5;    # s: a probe not seen by then counts as failed

log_level('warn');
start_postgres();
start_apikeyd();
my $org = apikeyctl('org', 'create', 'lag-long');
my $T = make_traffic($org->{org_id});
my $probe = new_key($org->{org_id}, 'probe');
my $reader = new_key($org->{org_id}, 'reader', '--scopes', 'usage:read');
wait_key_results({ (map { ($T->{keys}{$_}{key} => 'ok') } qw(k1 k2 k3)),
                   $probe->{key} => 'ok', $reader->{key} => 'ok' }, 10, 'key table');
start_nginx(workers => 2, soak_nginx_config());
wait_until(sub { apikeyd_metrics()->{apikey_usage_segment_attached} == 1 }, 5, 'segment attached');

my $view = "/api/orgs/$org->{org_id}/api-keys/$probe->{key_id}/usage?interval=hour";
my $counted = sub {
    my $r = apikeyd_get($view, ["Authorization: Bearer $reader->{key}"], timeout => 5);
    die "the per-key view answered $r->{status}\n" unless $r->{status} == 200;
    return $r->{json}{key}{request_count};
};

my $h = start_wrk($T, seconds => 3600, connections => $CONNS, delay_ms => $DELAY);
sleep 3;    # past the start
# requests nginx served: aggregated (known keys) or counted per result
my $served = sub {
    my $m = apikeyd_metrics();
    return ($m->{apikey_agg_requests_committed_total}
            + metric_sum($m, 'apikey_requests_unrecorded_total'), time);
};
my ($n0, $t0) = $served->();
my (@lag, @bad);
for my $i (1 .. $PROBES) {
    my $st = get_with_key($probe->{key}, '/t.txt')->{status};
    my $t_answer = time;
    push @bad, "probe $i answered $st" unless $st == 200;
    my $seen;
    while (time - $t_answer < $GIVE_UP) {
        my $n = eval { $counted->() };
        push(@bad, "probe $i: $@"), last unless defined $n;
        if ($n >= $i) { $seen = time - $t_answer; last }
        sleep 0.01;
    }
    push @bad, "probe $i not counted within $GIVE_UP s" unless defined $seen;
    push @lag, $seen // $GIVE_UP;
}
my ($n1, $t1) = $served->();
kill 'INT', $h->{pid};    # the load was only the background

is_deeply(\@bad, [], "$PROBES probes: each answered 200 and counted in the view within $GIVE_UP s")
    or diag(join "\n", @bad[0 .. ($#bad > 9 ? 9 : $#bad)]);
my ($p50, $p99, $max) = (percentile(50, @lag), percentile(99, @lag), percentile(100, @lag));
ok($p99 <= 1, 'request -> visible in the analytics API: p99 <= 1 s')
    or diag(sprintf 'p99 %.0f ms', $p99 * 1000);
is($counted->(), $PROBES, "request_count = the $PROBES probes");
diag(sprintf 'request -> counted in the per-key view, %d probes at a steady %.0f requests/s '
             . '(2 workers): p50 %.0f ms, p99 %.0f ms, max %.0f ms',
     $PROBES, ($n1 - $n0) / ($t1 - $t0), $p50 * 1000, $p99 * 1000, $max * 1000);

done_testing();
