# Long test (tools/test --long): the spread load. 1,000 keys x 8 paths x 3
# methods (GET, POST, PUT) at full speed for 30 s through nginx (2 workers,
# the default usage segment), wrk with 16 connections: every request is a
# (key, path, method) of its own until the 24,000 of the cycle come round
# again, the worst case for the rollups and the raw stream alike.
#
# Asserted: no raw record and no aggregate dropped (rings, aggregation
# entries); the backlog (ring depth, raw rows and the aggregates of every
# request sent) is committed within 3 s of the last answer; after nginx
# stopped, the hourly and daily rollups hold exactly the requests sent per
# (key, endpoint, method), request_count and the raw rows exactly the
# requests sent per key (exact counts: Test::Apikey::Soak). GET answers 200;
# POST and PUT of a static file 405 (recorded all the same).
#
# About 1.5 minutes. TEST_APIKEY_SPREAD_SECONDS (default 30).

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use Test::Apikey::Soak;
use Digest::SHA qw(sha256_hex);
use Time::HiRes qw(time sleep);

my $SECONDS = $ENV{TEST_APIKEY_SPREAD_SECONDS} || 30;
my $KEYS    = 1000;
my @PATHS   = map { "/p$_/" } 0 .. 7;
my @METHODS = qw(GET POST PUT);
my $DRAIN   = 3;    # s: the backlog's bound

log_level('warn');
start_postgres();
start_apikeyd();
my $org = apikeyctl('org', 'create', 'spread-long');

# 1,000 keys straight into api_keys (apikeyctl would take minutes): the
# key strings stay here, the table gets their SHA-256.
my @keys = map { make_key() } 1 .. $KEYS;
psql(q{INSERT INTO api_keys (org_id, name, prefix, hint, key_hash)
       SELECT :'org', 'spread ' || (i - 1), 'ak', 'ak_sprd', decode(h, 'hex')
         FROM unnest(string_to_array(:'hashes', ',')) WITH ORDINALITY AS t(h, i)},
     { org => $org->{org_id}, hashes => join ',', map { sha256_hex($_) } @keys });
wait_until(sub { (apikeyd_metrics()->{apikey_keys} // 0) >= $KEYS }, 30, "apikeyd holds the $KEYS keys");

# The cycle: every (key, path, method) once; consecutive requests differ
# in key.
my @cycle;
for my $i (0 .. $KEYS * @PATHS * @METHODS - 1) {
    my ($k, $p, $m) = ($i % $KEYS, int($i / $KEYS) % @PATHS, int($i / ($KEYS * @PATHS)));
    push @cycle, [ "$k:$PATHS[$p]:$METHODS[$m]", $PATHS[$p], $keys[$k], $METHODS[$m] ];
}
my $T = plan_traffic(\@cycle);

my $html = $ENV{TEST_NGINX_HTML_DIR};
start_nginx(
    workers     => 2,
    http_config => "apikey_keys $ENV{TEST_NGINX_APIKEY_KEYS};\n"
        . "apikey_usage $ENV{TEST_NGINX_APIKEY_USAGE};\n",
    config => join('', "location = /stop { return 204; }\n",
                   map { "location $_ { apikey on; alias $html/; }\n" } @PATHS),
);
wait_until(sub { apikeyd_metrics()->{apikey_usage_segment_attached} == 1 }, 5, 'segment attached');
my $m0 = apikeyd_metrics();
my $in0 = ingest_totals($m0);

my $h = start_wrk($T, seconds => $SECONDS, connections => 16);
my ($peak, @series) = (0);    # ring depth; what each second committed
my $prev = [ time, $in0, $m0->{apikey_agg_requests_committed_total} ];
until (wrk_finished($h)) {
    sleep 1;
    my $m = eval { apikeyd_metrics() } or next;
    my $now = [ time, ingest_totals($m), $m->{apikey_agg_requests_committed_total} ];
    $peak = $now->[1]{depth} if $now->[1]{depth} > $peak;
    push @series, sprintf '%.0f s: %d raw rows/s (last batch %.0f ms), %d aggregated/s, '
                          . 'depth %d, drops %d',
        $now->[0] - $h->{t0}, 
        ($now->[1]{committed} - $prev->[1]{committed}) / ($now->[0] - $prev->[0]),
        1000 * ($m->{apikey_batch_duration_seconds} // 0),
        ($now->[2] - $prev->[2]) / ($now->[0] - $prev->[0]), $now->[1]{depth},
        $now->[1]{drops} - $in0->{drops};
    $prev = $now;
}
my $r = finish_wrk($h, $SECONDS + 60);
my $t_done = $h->{t_done} // time;
my $n = $r->{issued};
my ($in, $agg);
my $drained = eval {
    wait_until(sub {
        my $m = apikeyd_metrics();
        $in = ingest_totals($m);
        $agg = $m->{apikey_agg_requests_committed_total} - $m0->{apikey_agg_requests_committed_total};
        return $in->{depth} == 0 && $in->{committed} - $in0->{committed} + $in->{drops}
            - $in0->{drops} >= $n && $agg >= $n;
    }, 30, 'backlog committed');
    time - $t_done;
};

is($r->{error}, undef, 'wrk ran to the end') or diag($r->{error});
is($r->{answered}, $n, "every request answered ($n)");
my $gets = 0;
$gets += $r->{kinds}{$_} for grep { /:GET$/ } keys %{ $r->{kinds} };
is_deeply($r->{status}, { 200 => $gets, 405 => $n - $gets }, 'GET 200, POST and PUT 405');
is($in->{drops} - $in0->{drops}, 0, 'no raw record dropped')
    or diag(join "\n", "peak ring depth $peak", @series);
my $m = apikeyd_metrics();
is(metric_sum($m, 'apikey_agg_overflow_total') - metric_sum($m0, 'apikey_agg_overflow_total'),
   0, 'no request left out of the aggregates');
ok(defined $drained && $drained <= $DRAIN, "backlog committed within $DRAIN s of the last answer")
    or diag(defined $drained ? sprintf('took %.2f s', $drained) : $@);

stop_nginx();
my $settled = eval { usage_settle(60) };
ok($settled, 'apikeyd settled') or diag($@);
ok($n >= @cycle, sprintf 'the load went round the whole cycle (%d requests, %d in the cycle)',
                         $n, scalar @cycle);
my %name_of = map { ("spread $_" => $_) } 0 .. $KEYS - 1;
my (%want_key, %want_cell);
for my $kind (keys %{ $r->{kinds} }) {
    my ($k) = split /:/, $kind;
    $want_key{$k} += $r->{kinds}{$kind};
    $want_cell{$kind} = $r->{kinds}{$kind} if $r->{kinds}{$kind};
}
for my $table (qw(hourly daily)) {
    my %got = map { ("$name_of{$_->[0]}:$_->[1]:$_->[2]" => $_->[3]) } @{ psql(qq{
        SELECT k.name, u.endpoint, u.method, sum(u.requests) FROM api_key_usage_$table u
          JOIN api_keys k ON k.id = u.key_id WHERE k.org_id = :'org' GROUP BY 1, 2, 3},
        { org => $org->{org_id} }) };
    ok(eq_hash(\%got, \%want_cell),
       sprintf '%s rollups: the requests sent, per (key, endpoint, method) (%d cells)',
               $table, scalar keys %want_cell)
        or diag(scalar(grep { ($got{$_} // 0) != $want_cell{$_} } keys %want_cell), ' cells differ');
}
my (%count, %rows);
for (@{ psql(q{SELECT k.name, k.request_count,
                      (SELECT count(*) FROM api_key_usage u WHERE u.key_id = k.id)
                 FROM api_keys k WHERE k.org_id = :'org'}, { org => $org->{org_id} }) }) {
    $count{ $name_of{ $_->[0] } } = $_->[1];
    $rows{ $name_of{ $_->[0] } } = $_->[2];
}
delete @count{ grep { !$count{$_} && !$want_key{$_} } keys %count };
delete @rows{ grep { !$rows{$_} && !$want_key{$_} } keys %rows };
ok(eq_hash(\%count, \%want_key), 'request_count per key = requests sent');
ok(eq_hash(\%rows, \%want_key), 'raw rows per key = requests sent');
is(usage_duplicates(), 0, 'no raw row twice');

diag(sprintf 'spread load: %d requests in %.1f s (%.0f/s) over %d keys x %d paths x %d methods; '
             . 'backlog committed %s after the last answer',
     $n, $r->{elapsed}, $r->{rps}, $KEYS, scalar @PATHS, scalar @METHODS,
     defined $drained ? sprintf('%.2f s', $drained) : 'not within 30 s');

done_testing();
