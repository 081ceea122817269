# Long test (tools/test --long): an nginx worker's private memory stays
# flat over 1,000,000 keyed requests.
#
# One worker with auth and usage capture on, apikeyd draining the ring into
# PostgreSQL. wrk (1 thread, 16 keepalive connections; nginx closes each
# after 100 requests, so about 10,000 connections are opened and closed)
# sends the mix of Test::Apikey::Soak: three valid keys, a revoked one, an
# unknown and a malformed key (10% 401s), over four endpoints, in ten runs
# of 100,000 requests. Before each run the 5000 keys of a bulk insert are
# replaced by 5000 others (apikeyd builds a new key-table file, the worker
# remaps it) and a key is replaced by a new one (in-place updates).
# Between runs the worker is idle and its /proc/PID/status is sampled.
#
# The leak criterion is RssAnon, the worker's private memory: it may grow
# by at most 256 KiB from the sample after the first run (the warm-up:
# pools, buffers and the key memo at their working size) to the last.
# glibc's smallest chunk is 32 bytes, so one leaked allocation per request
# would add about 28 MiB over the 900,000 requests after the warm-up, and
# one per connection (about 9000) about 280 KiB. The noise is malloc's
# top-chunk trimming (128 KiB threshold) plus a few pages; measured growth
# is 0 to 16 KiB. RssFile and RssShmem grow legitimately as pages of the
# file-backed ring and key table are touched (at most the ring's 4.7 MB
# and the table's 2 MiB); they are printed, not judged.
#
# Also asserted: every request answered (wrk: no socket error, its non-2xx
# count = the intended 401s), the worker never restarted, every request
# with a known key recorded exactly once (rows + counted drops = requests,
# no duplicate), unknown and malformed keys counted on /metrics, the key
# table file replaced before every run and as many mappings at the end as
# after the warm-up, nothing above [error] in error.log. Prints requests,
# RPS and every sample.
#
# Takes about 40 s on the 2-core machine (1M requests at 80k to 100k
# requests/s, ten key-table rebuilds of ~2 s, the ingest and duplicate
# checks over 920,000 rows). Settings: TEST_APIKEY_RSS_REQUESTS (default
# 1000000), TEST_APIKEY_RSS_ANON_BOUND_KB (256), TEST_APIKEY_RSS_CONNECTIONS
# (16), TEST_APIKEY_WRK (/usr/bin/wrk).

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use Test::Apikey::Soak;
use Time::HiRes qw(time sleep);

my $TOTAL = $ENV{TEST_APIKEY_RSS_REQUESTS} || 1_000_000;
my $BOUND = $ENV{TEST_APIKEY_RSS_ANON_BOUND_KB} // 256;
my $CONNS = $ENV{TEST_APIKEY_RSS_CONNECTIONS} || 16;
my $RUNS  = 10;    # the first is the warm-up
my $KEEPALIVE = 100;    # requests per connection: 10,000 connections in all

# warn: the 401s log at info, 100,000 lines a minute for nothing
log_level('warn');

my $t_start = time;
start_postgres();
start_apikeyd();
my $org = apikeyctl('org', 'create', 'worker-rss');
my $T = make_traffic($org->{org_id});
my %K = %{ $T->{keys} };
wait_key_results({ (map { ($K{$_}{key} => 'ok') } qw(k1 k2 k3)),
                   $K{revoked}{key} => 'revoked', $T->{unknown} => 'unknown',
                   $T->{malformed} => 'malformed' }, 10, 'key table');

start_nginx(workers => 1, soak_nginx_config(keepalive_requests => $KEEPALIVE));
my ($worker) = eval {
    wait_until(sub { my @w = nginx_worker_pids(); @w == 1 }, 5, 'one worker');
    nginx_worker_pids();
};
die "no nginx worker: $@" unless $worker;
wait_until(sub { apikeyd_metrics()->{apikey_usage_segment_attached} == 1 }, 5, 'segment attached');
my $m0 = apikeyd_metrics();
my $in0 = ingest_totals($m0);

# --- traffic: $RUNS runs, a sample after each --------------------------------------

my @samples = ({ label => 'before traffic', requests => 0, %{ proc_status($worker) },
                 maps => proc_maps($worker) });
my (%kinds, %status, @problems, @runs);
my ($sent, $non2xx, $busy) = (0, 0, 0);
my (@publish, @rebuild);    # seconds: key table rebuilt; new key to its 200 on the worker
my $inode = (stat $ENV{TEST_NGINX_APIKEY_KEYS})[1];
my $replaced = 0;
my $churned;    # the last churn_key's key: the next one replaces it
for my $run (1 .. $RUNS) {
    # before each run a new key-table file (5000 keys replaced: the worker
    # remaps it), then a new key (updated in place); its 200 on the worker
    # shows the worker has both
    my ($tr) = eval { rebuild_key_table($org->{org_id}, 5000) };
    push @problems, "run $run: $@" unless defined $tr;
    push @rebuild, $tr // -1;
    my ($tp, $k) = eval { churn_key($org->{org_id}, "churn-$run", $churned) };
    push @problems, "run $run: $@" unless defined $tp;
    $churned = $k if $k;
    push @publish, $tp // -1;
    my $now_inode = (stat $ENV{TEST_NGINX_APIKEY_KEYS})[1];
    $replaced++ if $now_inode != $inode;
    $inode = $now_inode;
    my $quota = int($TOTAL * $run / $RUNS) - int($TOTAL * ($run - 1) / $RUNS);
    my $h = start_wrk($T, quota => $quota, threads => 1, connections => $CONNS);
    my $r = finish_wrk($h, 600);
    push @problems, "run $run: $r->{error}" if $r->{error};
    push @problems, "run $run: sent $r->{issued} keyed requests, not $quota" if $r->{issued} != $quota;
    push @problems, "run $run: $r->{answered} of $r->{issued} answered" if $r->{answered} != $r->{issued};
    my $w = $r->{wrk};
    my $errs = join ', ', map { "$_ $w->{$_}" } grep { $w->{$_} } qw(connect read write timeout);
    push @problems, "run $run: socket errors: $errs" if length $errs;
    # wrk may count a few more: /stop answers read in the same event-loop
    # round as the last keyed one, after the script stopped counting
    push @problems, "run $run: wrk counted " . ($w->{requests} // 'no')
        . " requests, the script $r->{issued} keyed + $r->{stops} /stop"
        if ($w->{requests} // -1) < $r->{issued} + $r->{stops};
    $kinds{$_} += $r->{kinds}{$_} for keys %{ $r->{kinds} };
    $status{$_} += $r->{status}{$_} for keys %{ $r->{status} };
    $non2xx += $w->{non2xx};
    $sent += $r->{issued};
    $busy += $r->{elapsed};
    push @runs, $r;
    push @samples, { label => $run == 1 ? 'after warm-up' : "after run $run", requests => $sent,
                     rps => $r->{rps}, %{ proc_status($worker) // {} }, maps => proc_maps($worker) };
    last if @problems;
}

is_deeply(\@problems, [], "$RUNS wrk runs: exactly $TOTAL keyed requests sent and answered, "
                          . 'no socket error') or diag(join "\n", @problems);
my $want = expected_kinds($T, map { @{ $_->{per_thread} } } @runs);
is_deeply(\%kinds, $want, 'the mix as planned (per kind)');
my $n401 = $kinds{revoked} + $kinds{unknown} + $kinds{malformed};
is_deeply(\%status, { 200 => $kinds{k1} + $kinds{k2} + $kinds{k3}, 401 => $n401 },
          "valid keys 200, revoked, unknown and malformed 401 ($n401)");
is($non2xx, $n401, "wrk's non-2xx count = the intended 401s ($n401)");
is_deeply([ nginx_worker_pids() ], [$worker], 'the same worker served every request (no restart)');

# --- ingestion: every request with a known key once ----------------------------------

my $recorded = $kinds{k1} + $kinds{k2} + $kinds{k3} + $kinds{revoked};
my ($t_ingest, $in) = eval { wait_ingested($in0, $recorded, 300) };
ok(defined $t_ingest, "apikeyd ingested $recorded records (committed or counted as dropped)") or diag($@);
$in //= ingest_totals(apikeyd_metrics());
my $drops = $in->{drops} - $in0->{drops};
my $rows = rows_by_key();
my $total_rows = 0;
$total_rows += $_ for values %$rows;
is($total_rows + $drops, $recorded, "rows + counted drops = requests with a known key ($recorded)");
my %want_rows = map { ($K{$_}{key_id} => $kinds{$_}) } qw(k1 k2 k3 revoked);
if ($drops == 0) {
    is_deeply($rows, \%want_rows, 'rows per key = its requests');
} else {
    ok(!grep({ ($rows->{$_} // 0) > $want_rows{$_} } keys %want_rows) && keys %$rows <= 4,
       "$drops dropped: no key has more rows than requests");
}
is_deeply({ map { ($_ => key_request_count($_)) } keys %want_rows },
          { map { ($_ => $rows->{$_} // 0) } keys %want_rows },
          'api_keys.request_count = rows, per key');
is(usage_duplicates(), 0, 'no duplicate (node, slot, generation, sequence)');
my $m = apikeyd_metrics();
is_deeply({ map { ($_ => unrecorded($m, $_) - unrecorded($m0, $_)) } qw(unknown malformed missing) },
          { unknown => $kinds{unknown}, malformed => $kinds{malformed}, missing => 0 },
          'unknown and malformed keys counted on /metrics (and GET /stop not at all)');

# --- memory ---------------------------------------------------------------------------

my ($warm, $last) = @samples[1, -1];
my $growth = ($last->{RssAnon} // 0) - ($warm->{RssAnon} // 0);
ok(defined $last->{RssAnon} && $growth <= $BOUND,
   sprintf 'worker RssAnon after %d requests within %d KiB of the warm-up sample (%s)',
           $last->{requests}, $BOUND, format_kib($growth, 1));

is($replaced, $RUNS, "the key-table file was replaced before each of the $RUNS runs");
is($last->{maps}, $warm->{maps}, 'worker mappings: as many after the last run as after the warm-up '
   . '(each replaced key table unmapped)');

stop_nginx();
my @bad = grep { /\[(?:alert|crit|emerg)\]|exited on signal/ } split /\n/, nginx_error_log();
is_deeply(\@bad, [], 'error.log: nothing at [crit], [alert] or [emerg], no worker crash')
    or diag(join "\n", @bad[0 .. ($#bad > 9 ? 9 : $#bad)]);

# --- figures --------------------------------------------------------------------------

diag(sprintf 'worker RSS over %d keyed requests (%d runs of %d, wrk -t1 -c%d, %d requests per '
             . 'connection): %.0f requests/s while sending (%.1f s), %d x 200, %d x 401',
             $sent, $RUNS, int($TOTAL / $RUNS), $CONNS, $KEEPALIVE, $busy ? $sent / $busy : 0, $busy,
             $status{200} // 0, $status{401} // 0);
diag(sprintf '  %-15s %9s %7s %9s %9s %9s %9s %9s %6s', 'sample', 'requests', 'RPS',
             'VmRSS', 'RssAnon', 'RssFile', 'RssShmem', 'VmHWM', 'maps');
for my $s (@samples) {
    diag(sprintf '  %-15s %9d %7s %9s %9s %9s %9s %9s %6s', $s->{label}, $s->{requests},
                 $s->{rps} ? sprintf('%.0f', $s->{rps}) : '-',
                 map({ defined $s->{$_} ? "$s->{$_} kB" : '-' } qw(VmRSS RssAnon RssFile RssShmem VmHWM)),
                 $s->{maps} // '-');
}
diag(sprintf '  growth from the warm-up sample to the last: RssAnon %s, VmRSS %s, RssFile %s, '
             . 'RssShmem %s (bound on RssAnon: %d KiB)',
             map({ format_kib(($last->{$_} // 0) - ($warm->{$_} // 0), 1) } qw(RssAnon VmRSS RssFile RssShmem)),
             $BOUND);
diag(sprintf '  before each run: key table rebuilt with 5000 new keys in %s s; then a new key answered '
             . '200 by the worker after %s s', join(' / ', map { sprintf '%.1f', $_ } @rebuild),
             join(' / ', map { sprintf '%.3f', $_ } @publish));
diag(sprintf '  ingest: %d records with a known key, %d rows, %d dropped, last row %.1f s after '
             . 'the traffic; %.0f s in all', $recorded, $total_rows, $drops, $t_ingest // -1,
             time - $t_start);

stop_apikeyd();
done_testing();
