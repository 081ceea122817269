# Long test (tools/test --long): apikeyd's memory stays flat over a
# 10-minute soak of ingest, analytics queries, metrics scrapes and key
# changes.
#
# nginx (2 workers, auth + capture) takes a paced stream of keyed requests
# from wrk (4 connections, 4 ms think time per request: about 930
# requests/s; the mix of Test::Apikey::Soak: three valid keys, a revoked,
# an unknown and a malformed key, four endpoints), which apikeyd drains
# into PostgreSQL. Meanwhile the test asks apikeyd's analytics API five
# queries a second (the org listing; per-key views: hourly, daily, 30 days
# hourly, 399 days daily; the error answers 400, 401 and 404) and scrapes
# /metrics and /healthz every second. Every 30 s it samples apikeyd's
# /proc/PID/status, then replaces the 5000 keys of another org (apikeyd
# builds a new key-table file), replaces one key by a new one (in-place
# updates, seen by nginx; the number of keys stays the same: more keys
# legitimately take more memory) and sends a burst of 16 concurrent heavy
# queries (the 399-day and 30-day views, the listing: twice apikeyd's 8
# HTTP threads, so that each thread and its malloc arena builds the
# largest answers).
#
# Warm-up: for the first 50 s the same queries go back to back (about
# 6500) with a burst every 5 s. malloc's per-thread arenas reach their
# working size after some thousands of queries, not after some seconds
# (measured: at 5 queries/s alone RssAnon crept by ~2 KiB/s for minutes).
# By 60 s the arenas (about 0.4 MiB per HTTP thread, 4.7 MiB for the
# drainer's), libpq's buffers, the session pool, the key table and the
# pages of the two 16384-record rings (each wraps every ~35 s) are at
# their working size.
#
# Criterion: from the sample at 60 s to the last one, apikeyd's RssAnon and
# its VmRSS without the key-table mapping (VmRSSexTable: the table file's
# size follows the number of keys, 4 or 8 MiB here depending on whether the
# last rebuild happened mid-churn) each grow by at most 4 MiB and at most
# 10% of the 60 s value (about 1.7 MiB for RssAnon, 3.9 MiB for VmRSS).
# Before the soak, grow_key_table() takes apikeyd once to the largest key
# count the churn can reach (10,000 extra keys), so its key index is at its
# working size too (without that, one run of six saw +1.2 MiB RssAnon when a
# late churn first needed it). Measured: +148 KiB for both
# (fragmentation; RssFile, threads, fds and mappings constant). Over the
# 540 s, a leak of 10 bytes per record (~500,000), 100 bytes per committed
# batch (~23,000), 0.5 KiB per query (~3000), 1.5 KiB per scrape (~1100)
# or 100 KiB per key-table rebuild (18) exceeds the bound.
#
# Also asserted: every request answered and recorded exactly once (rows
# per key = requests with a known key, no duplicate, nothing dropped),
# every API answer as expected, apikeyd never restarted. Prints the series.
#
# Takes TEST_APIKEY_SOAK_SECONDS (default 600) plus about 5 s. Settings:
# TEST_APIKEY_SOAK_SECONDS (at least 90), TEST_APIKEY_SOAK_RATE (requests/s,
# default 1000: the think time is 4 connections x 1000 / rate ms),
# TEST_APIKEY_SOAK_BOUND_KB (4096), TEST_APIKEY_SOAK_BOUND_PCT (10),
# TEST_APIKEY_WRK (/usr/bin/wrk).

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use Test::Apikey::Soak;
use POSIX ();
use Time::HiRes qw(time sleep);

my $SECONDS = $ENV{TEST_APIKEY_SOAK_SECONDS} || 600;
my $RATE    = $ENV{TEST_APIKEY_SOAK_RATE} || 1000;
my $BOUND   = $ENV{TEST_APIKEY_SOAK_BOUND_KB} // 4096;
my $PCT     = $ENV{TEST_APIKEY_SOAK_BOUND_PCT} // 10;
my $TICK    = 30;     # seconds between samples
my $WARM    = 60;     # the reference sample
my $WARMUP  = 50;     # s of back-to-back queries and a burst every 5 s
my $BURST   = 16;     # concurrent queries each tick
my $CONNS   = 4;
my $QUERY_EVERY  = 0.2;    # s between sequential analytics queries
my $SCRAPE_EVERY = 1;      # s between /metrics + /healthz scrapes
my $DELAY   = POSIX::floor($CONNS * 1000 / $RATE + 0.5) || 1;    # ms per request and connection
die "TEST_APIKEY_SOAK_SECONDS must be at least " . ($WARM + $TICK) . "\n" if $SECONDS < $WARM + $TICK;

log_level('warn');

my $t_start = time;
start_postgres();
my $d = start_apikeyd();
my $pid = $d->{pid};
my $org = apikeyctl('org', 'create', 'apikeyd-soak');
my $bulk = apikeyctl('org', 'create', 'apikeyd-soak-bulk');    # rebuild_key_table's keys
my $T = make_traffic($org->{org_id});
my %K = %{ $T->{keys} };
my $admin = apikeyctl('key', 'create', '--org', $org->{org_id}, '--name', 'soak-reader',
                      '--scopes', 'usage:read');
wait_key_results({ (map { ($K{$_}{key} => 'ok') } qw(k1 k2 k3)),
                   $K{revoked}{key} => 'revoked', $T->{unknown} => 'unknown',
                   $T->{malformed} => 'malformed' }, 10, 'key table');

start_nginx(workers => 2, soak_nginx_config());
wait_until(sub { apikeyd_metrics()->{apikey_usage_segment_attached} == 1 }, 5, 'segment attached');
my $m0 = apikeyd_metrics();
my $in0 = ingest_totals($m0);

# --- the analytics queries: [path, auth?, expected status] ------------------------------

my $o = $org->{org_id};
my $day = sub { my @t = gmtime($_[0]); sprintf '%04d-%02d-%02d', $t[5] + 1900, $t[4] + 1, $t[3] };
my $tomorrow = $day->(time + 86400);
my $long_ago = $day->(time - 398 * 86400);
my $month_ago = $day->(time - 29 * 86400);
# the heaviest answers: 399 daily buckets, 720 hourly ones, the listing
my @HEAVY = (
    [ "/api/orgs/$o/api-keys/$K{k3}{key_id}/usage?from=$long_ago&to=$tomorrow", 1, 200 ],
    [ "/api/orgs/$o/api-keys/$K{k1}{key_id}/usage?interval=hour&from=$month_ago&to=$tomorrow", 1, 200 ],
    [ "/api/orgs/$o/api-keys/usage", 1, 200 ],
);
my @QUERIES = (
    @HEAVY,
    [ "/api/orgs/$o/api-keys/$K{k1}{key_id}/usage?interval=hour&top=5", 1, 200 ],
    [ "/api/orgs/$o/api-keys/$K{k2}{key_id}/usage", 1, 200 ],
    [ "/api/orgs/$o/api-keys/$K{revoked}{key_id}/usage?interval=hour", 1, 200 ],
    [ "/api/orgs/$o/api-keys/usage?dormant_days=0", 1, 200 ],
    [ "/api/orgs/$o/api-keys/$K{k1}{key_id}/usage?interval=week", 1, 400 ],
    [ "/api/orgs/$o/api-keys/usage", 0, 401 ],
    [ "/api/orgs/$o/api-keys/00000000-0000-4000-8000-000000000000/usage", 1, 404 ],
);
my @AUTH = ("Authorization: Bearer $admin->{key}");
my (%answers, @wrong);
my $n_query = 0;

sub query {
    my ($q) = @_;
    my $r = apikeyd_get($q->[0], $q->[1] ? \@AUTH : [], timeout => 30);
    my $ok = $r->{status} == $q->[2] && ($q->[2] != 200 || ref $r->{json} eq 'HASH');
    $answers{ $r->{status} }++;
    push @wrong, "$q->[0]: $r->{status}" . ($r->{error} ? " ($r->{error})" : '') unless $ok;
}

# $BURST heavy queries at once, from forked clients released together: twice
# as many as apikeyd's 8 HTTP threads, so that each thread (and its malloc
# arena) serves the largest answers from the first burst on.
my $root = $ENV{TEST_NGINX_SERVROOT};
my $burst_n = 0;
sub burst {
    $burst_n++;
    my $go = "$root/burst$burst_n.go";
    my @kids;
    for my $i (1 .. $BURST) {
        my $q = $HEAVY[ $i % @HEAVY ];
        my $f = "$root/burst$burst_n.$i";
        my $kid = fork // die "fork: $!\n";
        if (!$kid) {
            for (1 .. 2000) { last if -e $go; sleep 0.005 }
            my $r = http_get($q->[0], $q->[1] ? \@AUTH : [], port => $ENV{TEST_APIKEY_API_PORT},
                             timeout => 30);
            spew($f, $r->{status} == $q->[2] ? 'ok' : "$q->[0]: $r->{status} (want $q->[2])");
            POSIX::_exit(0);
        }
        push @kids, [ $kid, $f ];
    }
    spew($go, '');
    for (@kids) {
        waitpid($_->[0], 0);
        my $res = slurp($_->[1]) // 'no answer';
        $answers{burst}++;
        push @wrong, "burst $burst_n: $res" unless $res eq 'ok';
    }
}

sub sample {
    my ($label, $at) = @_;
    my $s = proc_status($pid) // {};
    my $table = proc_mapping_rss($pid, $ENV{TEST_NGINX_APIKEY_KEYS}) // 0;
    return { label => $label, at => $at, %$s, fds => proc_fds($pid), maps => proc_maps($pid),
             KeyTable => $table,
             VmRSSexTable => defined $s->{VmRSS} ? $s->{VmRSS} - $table : undef,
             rows => ingest_totals(apikeyd_metrics())->{committed} - $in0->{committed} };
}

# --- the soak -------------------------------------------------------------------------

# The largest key table and key index the churn below can make apikeyd
# need (a full sync adds the new keys before it drops the old ones): reached
# now, so that a late churn that happens to need it is not taken for a leak.
grow_key_table($bulk->{org_id}, 10000);

my $h = start_wrk($T, seconds => $SECONDS, threads => 1, connections => $CONNS,
                  delay_ms => $DELAY);
my $t0 = $h->{t0};
my (@samples, @publish, @rebuild, %scrapes, @scrape_bad);
# sample times: every $TICK s, and the end
my @ticks = ((map { $_ * $TICK } 0 .. int(($SECONDS - 1) / $TICK)), $SECONDS);
my ($next_query, $next_scrape, $next_burst) = ($t0 + $QUERY_EVERY, $t0 + $SCRAPE_EVERY, $t0 + 5);
my $i = 0;
my $n_warm = 0;
my $churned;    # the last churn_key's key: the next one replaces it
while ($i < @ticks) {
    my $now = time;
    my $warming = $now < $t0 + $WARMUP;
    if ($warming && $now >= $next_burst) {
        burst();
        $next_burst += 5;
        next;
    }
    if ($now >= $t0 + $ticks[$i]) {
        push @samples, sample("$ticks[$i] s", $ticks[$i]);
        if ($i < $#ticks) {
            my ($tr) = eval { rebuild_key_table($bulk->{org_id}, 5000) };
            push @rebuild, $tr // -1;
            push @wrong, "key table rebuild at $ticks[$i] s: $@" unless defined $tr;
            my ($tp, $k) = eval { churn_key($o, "soak-churn-$i", $churned) };
            $churned = $k if $k;
            push @publish, $tp // -1;
            push @wrong, "key change at $ticks[$i] s: $@" unless defined $tp;
            burst();
        }
        $i++;
        next;
    }
    if ($warming || $now >= $next_query) {
        query($QUERIES[ $n_query++ % @QUERIES ]);
        $n_warm++ if $warming;
        $next_query += $QUERY_EVERY;
        # no catching up (and none owed for the warm-up's extra queries)
        $next_query = $now + $QUERY_EVERY if $warming || $next_query < $now;
    }
    if ($now >= $next_scrape) {
        for my $p ('/metrics', '/healthz') {
            my $r = apikeyd_get($p, [], timeout => 10);
            $scrapes{$p}++;
            push @scrape_bad, "$p: $r->{status}" unless $r->{status} == 200;
        }
        $next_scrape += $SCRAPE_EVERY;
        $next_scrape = $now + $SCRAPE_EVERY if $next_scrape < $now;
    }
    last if wrk_finished($h) && $h->{exited};    # wrk died: finish_wrk says so
    next if $warming;
    my $wake = (sort { $a <=> $b } $t0 + $ticks[$i], $next_query, $next_scrape)[0] - time;
    sleep($wake > 0.2 ? 0.2 : $wake) if $wake > 0;
}
my $r = finish_wrk($h, 120);

# --- traffic and API checks -------------------------------------------------------------

my $w = $r->{wrk};
my @traffic_bad = (
    ($r->{error} ? "wrk: $r->{error}" : ()),
    ($r->{answered} != $r->{issued} ? "$r->{answered} of $r->{issued} answered" : ()),
    (map { $w->{$_} ? "socket errors: $_ $w->{$_}" : () } qw(connect read write timeout)),
);
is_deeply(\@traffic_bad, [], sprintf 'wrk: %d keyed requests in %.0f s, every one answered, no socket error',
                                     $r->{issued}, $r->{elapsed}) or diag(join "\n", @traffic_bad);
my %kinds = %{ $r->{kinds} };
my $n401 = ($kinds{revoked} // 0) + ($kinds{unknown} // 0) + ($kinds{malformed} // 0);
is_deeply($r->{status}, { 200 => ($kinds{k1} // 0) + ($kinds{k2} // 0) + ($kinds{k3} // 0), 401 => $n401 },
          "valid keys 200, revoked, unknown and malformed 401 ($n401)");
is($w->{non2xx}, $n401, "wrk's non-2xx count = the intended 401s");
is_deeply(\@wrong, [], sprintf '%d analytics queries, %d in bursts of %d, %d key-table rebuilds and %d '
                               . 'key changes: every answer as expected', $n_query, $answers{burst} // 0,
                               $BURST, scalar @rebuild, scalar @publish)
    or diag(join "\n", @wrong[0 .. ($#wrong > 19 ? 19 : $#wrong)]);
is_deeply(\@scrape_bad, [], sprintf '%d /metrics and %d /healthz scrapes: all 200',
                                    $scrapes{'/metrics'} // 0, $scrapes{'/healthz'} // 0)
    or diag(join "\n", @scrape_bad);
ok(process_title($pid) =~ /apikeyd/, 'apikeyd ran the whole soak (same process)');

# --- exactly once -----------------------------------------------------------------------

my $recorded = ($kinds{k1} // 0) + ($kinds{k2} // 0) + ($kinds{k3} // 0) + ($kinds{revoked} // 0);
my ($t_ingest, $in) = eval { wait_ingested($in0, $recorded, 120) };
ok(defined $t_ingest, "apikeyd ingested $recorded records") or diag($@);
$in //= ingest_totals(apikeyd_metrics());
my $drops = $in->{drops} - $in0->{drops};
is($drops, 0, 'nothing dropped (ring, spool)');
my $rows = rows_by_key();
is_deeply($rows, { map { ($K{$_}{key_id} => $kinds{$_}) } qw(k1 k2 k3 revoked) },
          "rows per key = its requests ($recorded in all)");
is(usage_duplicates(), 0, 'no duplicate (node, slot, generation, sequence)');
my $m = apikeyd_metrics();
is_deeply({ map { ($_ => unrecorded($m, $_) - unrecorded($m0, $_)) } qw(unknown malformed) },
          { unknown => $kinds{unknown} // 0, malformed => $kinds{malformed} // 0 },
          'unknown and malformed keys counted on /metrics');
my @alog = grep { /\[(?:error|crit|alert|emerg)\]/ } split /\n/, apikeyd_log();
is_deeply(\@alog, [], "apikeyd's log: nothing at [error] or above")
    or diag(join "\n", @alog[0 .. ($#alog > 9 ? 9 : $#alog)]);

# --- memory -------------------------------------------------------------------------------

my ($warm) = grep { $_->{at} == $WARM } @samples;
my $last = $samples[-1];
for my $f (qw(RssAnon VmRSSexTable)) {
    my $g = ($last->{$f} // 0) - ($warm->{$f} // 0);
    my $lim = $warm->{$f} ? $warm->{$f} * $PCT / 100 : 0;
    $lim = $BOUND if $lim > $BOUND;
    ok($warm->{$f} && defined $last->{$f} && $g <= $lim,
       sprintf "apikeyd %s from %d s to %d s: %s (bound: %d kB, the smaller of %d KiB and %d%%)",
               $f, $warm->{at} // -1, $last->{at}, format_kib($g, 1), $lim, $BOUND, $PCT);
}
push @samples, sample('drained', undef);

# --- figures ------------------------------------------------------------------------------

diag(sprintf 'soak: %d s, %d keyed requests (%.0f/s; wrk -t1 -c%d, %d ms think time), %d rows in %d '
             . 'batches, %d dropped; %d analytics queries (%d of them in the first %d s) + %d in %d bursts, '
             . '%d /metrics scrapes, %d key changes', $r->{elapsed}, $r->{issued},
             $r->{elapsed} ? $r->{issued} / $r->{elapsed} : 0, $CONNS, $DELAY,
             $in->{committed} - $in0->{committed},
             ($m->{apikey_batches_total} // 0) - ($m0->{apikey_batches_total} // 0), $drops, $n_query,
             $n_warm, $WARMUP, $answers{burst} // 0, $burst_n, $scrapes{'/metrics'} // 0, scalar @publish);
diag(sprintf '  %-8s %9s %9s %9s %9s %9s %9s %7s %4s %5s', 'sample', 'rows', 'VmRSS', 'RssAnon',
             'RssFile', 'KeyTable', 'VmHWM', 'threads', 'fds', 'maps');
for my $s (@samples) {
    diag(sprintf '  %-8s %9d %9s %9s %9s %9s %9s %7s %4s %5s', $s->{label}, $s->{rows},
                 map({ defined $s->{$_} ? "$s->{$_} kB" : '-' } qw(VmRSS RssAnon RssFile KeyTable VmHWM)),
                 map({ $s->{$_} // '-' } qw(Threads fds maps)));
}
diag(sprintf '  growth from %d s to %d s: RssAnon %s, VmRSS %s (%s without the key table), RssFile %s; key table '
             . 'rebuilt (5000 keys replaced) in %.1f s, a new key on nginx in %.3f s (medians)', $WARM, $last->{at},
             map({ format_kib(($last->{$_} // 0) - ($warm->{$_} // 0), 1) } qw(RssAnon VmRSS VmRSSexTable RssFile)),
             (sort { $a <=> $b } @rebuild)[ $#rebuild / 2 ] // -1,
             (sort { $a <=> $b } @publish)[ $#publish / 2 ] // -1);
diag(sprintf '  last record to its row: %.1f s; %.0f s in all', $t_ingest // -1, time - $t_start);

stop_nginx();
stop_apikeyd();
done_testing();
