# Analytics under load: 100 heavy analytics queries at once (half the
# per-key 400-day daily view, half the org listing's largest page, 1000 of
# its 2000+ keys), from
# forked clients with a valid usage:read key, while keyed requests flow
# through nginx. Ingestion must not fall behind (request-to-row lag under
# 5 s, apikey_ingest_lag_seconds under 5 s right after the traffic), every
# request is still recorded exactly once, and every query is answered 200.
#
# apikeyd's analytics lane runs 4 queries at once and queues 128 more
# (docs/apikeyd.md, "Limits"): 100 queries all fit, so none may get the
# 503 "busy; retry". A 503 could otherwise only come from the 5 s
# statement_timeout or an unreachable database; neither may happen here,
# so the test wants 200 for all 100.
# Settings: TEST_APIKEY_ANALYTICS_CLIENTS (default 100).

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use JSON::PP ();
use POSIX ();
use Time::HiRes qw(time sleep);

my $CLIENTS = $ENV{TEST_APIKEY_ANALYTICS_CLIENTS} || 100;

# --- setup: an org with 2000 more keys, and 400 days of history ------------------

start_postgres();
my $org = apikeyctl('org', 'create', 'analytics-load');
my $k = apikeyctl('key', 'create', '--org', $org->{org_id}, '--name', 'traffic');
my $reader = apikeyctl('key', 'create', '--org', $org->{org_id}, '--name', 'reader',
                       '--scopes', 'usage:read');
my $t_seed = time;
psql(q{
    INSERT INTO api_keys (org_id, name, prefix, hint, key_hash, created_at, last_used_at,
                          last_used_ip, request_count)
    SELECT :'org', 'bulk ' || n, 'ak', 'ak_' || substr(md5(n::text), 1, 4),
           sha256(convert_to('bulk ' || n || ' ' || random(), 'UTF8')),
           now() - interval '420 days', now() - n * interval '1 hour', '10.0.0.1', n
      FROM generate_series(1, 2000) n;
    -- 400 days x 25 endpoints for the traffic key (not today: the drainer
    -- writes today's /t.txt row), and this month's days for every key
    INSERT INTO api_key_usage_daily (org_id, key_id, bucket, endpoint, method, requests,
                                     status_2xx, status_3xx, status_4xx, status_5xx, status_other,
                                     response_time_ms_sum, latency_hist)
    SELECT :'org', :'key', date_trunc('day', now()) - d * interval '1 day', '/seed/' || e, 'GET',
           10, 7, 0, 2, 1, 0, 55.5, '[40:42]={3,5,2}'
      FROM generate_series(1, 400) d, generate_series(1, 25) e;
    INSERT INTO api_key_usage_daily (org_id, key_id, bucket, endpoint, method, requests,
                                     status_2xx, status_3xx, status_4xx, status_5xx, status_other,
                                     response_time_ms_sum, latency_hist)
    SELECT k.org_id, k.id, date_trunc('day', now()) - d * interval '1 day', '/seed', 'GET',
           4, 4, 0, 0, 0, 0, 20.0, '[40:41]={2,2}'
      FROM api_keys k, generate_series(0, 20) d
     WHERE k.org_id = :'org' AND k.name LIKE 'bulk %'
       AND date_trunc('day', now()) - d * interval '1 day' >= date_trunc('month', now());
    ANALYZE api_keys; ANALYZE api_key_usage_daily;
}, { org => $org->{org_id}, key => $k->{key_id} });
my $daily = psql_one('SELECT count(*) FROM api_key_usage_daily');
diag(sprintf 'seeded 2000 keys and %d daily rollup rows in %.1f s', $daily, time - $t_seed);

start_apikeyd();
start_nginx(workers => 2, http_config => apikey_http_config(usage => '16m'),
            config => 'location /t.txt { apikey on; }');
wait_until(sub { get_with_key($k->{key})->{status} == 200 }, 10, 'key table with 2000+ keys');
wait_until(sub { apikeyd_metrics()->{apikey_usage_segment_attached} == 1 }, 5, 'segment attached');
wait_usage_rows($k->{key_id}, 1, 5, 'first row');
wait_until(sub { metric_sum(apikeyd_metrics(), 'apikey_ring_depth') == 0 }, 5, 'rings drained');
my $warm = usage_rows($k->{key_id});    # rows of the traffic key so far

my $to_day = POSIX::floor(time / 86400) + 1;    # tomorrow, UTC
my $ymd = sub { my @t = gmtime($_[0] * 86400); sprintf '%04d-%02d-%02d', $t[5] + 1900, $t[4] + 1, $t[3] };
my $key_path = "/api/orgs/$org->{org_id}/api-keys/$k->{key_id}/usage?from="
             . $ymd->($to_day - 400) . '&to=' . $ymd->($to_day) . '&interval=day&top=10';
my $org_path = "/api/orgs/$org->{org_id}/api-keys/usage?dormant_days=30&limit=1000";
my @auth = ("Authorization: Bearer $reader->{key}");

# The two queries, once, checked in full.
{
    my $t0 = time;
    my $r = apikeyd_get($key_path, \@auth, timeout => 30);
    my $t_key = time - $t0;
    is($r->{status}, 200, 'per-key 400-day daily view: 200') or diag($r->{body});
    is(scalar @{ $r->{json}{series} // [] }, 400, '... 400 daily points');
    is(scalar @{ $r->{json}{top_endpoints} // [] }, 10, '... top 10 endpoints');
    $t0 = time;
    $r = apikeyd_get($org_path, \@auth, timeout => 30);
    my $t_org = time - $t0;
    is($r->{status}, 200, 'org listing: 200') or diag($r->{body});
    is(scalar @{ $r->{json}{keys} // [] }, 1000, '... a page of 1000 keys');
    my %seen = map { $_->{key_id} => 1 } @{ $r->{json}{keys} // [] };
    my $cursor = $r->{json}{next_cursor};
    while (defined $cursor) {
        my $p = apikeyd_get("$org_path&cursor=$cursor", \@auth, timeout => 30);
        last unless $p->{status} == 200;
        $seen{ $_->{key_id} }++ for @{ $p->{json}{keys} };
        $cursor = $p->{json}{next_cursor};
    }
    is(scalar keys %seen, 2002, '... all 2002 keys over its pages, each once');
    is((grep { $_ > 1 } values %seen), 0, '... none twice');
    diag(sprintf 'alone: per-key 400-day view %.0f ms, org listing page (1000 keys) %.0f ms (%d bytes)',
                 1000 * $t_key, 1000 * $t_org, length $r->{body});
}

# --- the load ---------------------------------------------------------------------------

my $root = $ENV{TEST_NGINX_SERVROOT};
my $stream = "$root/stream";
my $m0 = apikeyd_metrics();
my $child = request_stream(key => $k->{key}, n => 1, after_go => 20, file => $stream, pace => 0.004);
wait_until(sub { stream_progress($stream) >= 50 }, 10, 'stream running');

# One request with its own User-Agent through nginx -> seconds until its row.
my $lag_n = 0;
sub lag_sample {
    my $ua = 'lag-' . ++$lag_n;
    my $t0 = time;
    my $r = http_get('/t.txt', [ "X-API-Key: $k->{key}", "User-Agent: $ua" ], timeout => 5);
    return undef unless $r->{status} == 200;
    $warm++;
    my $ok = eval {
        wait_until(sub { psql_one(q{SELECT count(*) FROM api_key_usage
                                     WHERE key_id = :'id' AND user_agent = :'ua'},
                                  { id => $k->{key_id}, ua => $ua }) == 1 }, 30, "row of $ua");
        1;
    };
    return $ok ? time - $t0 : 30;
}

my @idle_lag = map { lag_sample() } 1 .. 3;

# the clients: each waits for "go", sends one query, writes
# "STATUS RETRY_AFTER SECONDS BYTES KIND" to its file
my $go = "$root/go";
my @kids;
for my $i (1 .. $CLIENTS) {
    my $kind = $i % 2 ? 'key' : 'org';
    my $pid = fork // die "fork: $!\n";
    if (!$pid) {
        for (1 .. 6000) { last if -e $go; sleep 0.005 }
        my $t0 = time;
        my $r = http_get($kind eq 'key' ? $key_path : $org_path, \@auth,
                         port => $ENV{TEST_APIKEY_API_PORT}, timeout => 60);
        my $ok = $r->{status} == 200
            && ($r->{body} // '') =~ ($kind eq 'key' ? qr/"series":\[/ : qr/"keys":\[/) ? 1 : 0;
        spew("$root/q$i", sprintf "%d %s %.6f %d %s %d\n", $r->{status},
             $r->{headers}{'retry-after'} // '-', time - $t0, length($r->{body} // ''), $kind, $ok);
        POSIX::_exit(0);
    }
    push @kids, $pid;
}
sleep 0.3;    # all forked and waiting
spew($go, '');
my $t_go = time;
my (@load_lag, @health);
my $all_done = sub { !grep { !-e "$root/q$_" } 1 .. $CLIENTS };
while (!$all_done->() && time - $t_go < 120) {
    push @load_lag, lag_sample() // 30;
    # /healthz and /metrics share apikeyd's HTTP threads with the queries
    my $t0 = time;
    my $h = apikeyd_get('/healthz', [], timeout => 30);
    push @health, [ $h->{status}, time - $t0 ];
}
my $t_storm = time - $t_go;
waitpid($_, 0) for @kids;

stream_go($stream);
my $st = wait_stream($child, $stream, 30);
my $t_last = time;
my $lag_metric = apikeyd_metrics()->{apikey_ingest_lag_seconds};
my $n = status_total($st);
is_deeply($st, { 200 => $n }, "all $n requests through nginx answered 200") or diag(format_statuses($st));
my $want = $n + $warm;
my $t_rows = eval { wait_usage_rows($k->{key_id}, $want, 30, "$want rows") };
ok(defined $t_rows, 'every request recorded') or diag($@);

# --- results ----------------------------------------------------------------------------

my (%status, @lat, @bad, %kind_lat);
for my $i (1 .. $CLIENTS) {
    my ($status, $retry, $secs, $bytes, $kind, $ok) = split ' ', slurp("$root/q$i") // '0 - 0 0 ? 0';
    $status{$status}++;
    push @lat, $secs;
    push @{ $kind_lat{$kind} }, $secs;
    push @bad, "client $i ($kind): $status Retry-After $retry, $bytes bytes"
        unless $status == 200 && $ok;
}
is_deeply(\%status, { 200 => $CLIENTS }, "$CLIENTS concurrent analytics queries: every one answered 200")
    or diag(join "\n", @bad[0 .. ($#bad > 9 ? 9 : $#bad)]);
is_deeply(\@bad, [], '... each with a complete JSON body');
my $max_lag = (sort { $b <=> $a } @load_lag, @idle_lag)[0];
ok(@load_lag > 0, 'lag sampled while the queries ran') or diag('no sample');
is_deeply([ grep { $_ != 200 } map { $_->[0] } @health ], [], '/healthz answers 200 while the queries run');
ok($max_lag < 5, sprintf 'request-to-row lag under load stays under 5 s (max %.2f s)', $max_lag);
ok($lag_metric >= 0 && $lag_metric < 5,
   sprintf 'apikey_ingest_lag_seconds right after the traffic: %.2f s < 5 s', $lag_metric);
ok(defined $t_rows && $t_rows < 5, sprintf 'last request to its row: %.2f s < 5 s', $t_rows // -1);
is(usage_rows($k->{key_id}), $want, "exactly $want rows");
is(usage_duplicates(), 0, 'no duplicate (node, slot, generation, sequence)');
my $m = apikeyd_metrics();
is(metric_sum($m, 'apikey_ring_dropped_total') - metric_sum($m0, 'apikey_ring_dropped_total')
   + $m->{apikey_records_spool_dropped_total}, 0, 'nothing dropped');
is($m->{apikey_postgres_errors_total} - $m0->{apikey_postgres_errors_total}, 0, 'no PostgreSQL error');
my @api_err = grep { /\[(?:warn|error)\] api:/ } split /\n/, apikeyd_log();
is_deeply(\@api_err, [], "apikeyd's log: no API warning or error");

diag(sprintf '%d queries (%d per-key 400-day views, %d org listing pages of 1000 keys) in %.1f s: '
             . 'latency p50 %.0f ms, p95 %.0f ms, max %.0f ms (per-key p95 %.0f ms, org p95 %.0f ms); '
             . 'PostgreSQL sessions of the API pool at the end: %d',
             $CLIENTS, scalar @{ $kind_lat{key} // [] }, scalar @{ $kind_lat{org} // [] }, $t_storm,
             1000 * percentile(50, @lat), 1000 * percentile(95, @lat), 1000 * percentile(100, @lat),
             1000 * percentile(95, @{ $kind_lat{key} // [] }), 1000 * percentile(95, @{ $kind_lat{org} // [] }),
             psql_one(q{SELECT count(*) FROM pg_stat_activity WHERE application_name = 'apikeyd-api'}));
diag(sprintf 'ingest: %d requests through nginx; request-to-row lag idle %s ms, under load %d samples '
             . 'median %.0f ms max %.0f ms; apikey_ingest_lag_seconds after the traffic %.2f s; last '
             . 'request to its row %.2f s',
             $n, join('/', map { sprintf '%.0f', 1000 * $_ } @idle_lag), scalar @load_lag,
             1000 * percentile(50, @load_lag), 1000 * percentile(100, @load_lag), $lag_metric, $t_rows // -1);
diag(sprintf '/healthz during the queries: %d samples, median %.0f ms, max %.0f ms (queued behind the '
             . 'queries on the same HTTP threads)', scalar @health,
             1000 * percentile(50, map { $_->[1] } @health), 1000 * percentile(100, map { $_->[1] } @health));

stop_apikeyd();
stop_nginx();

done_testing();
