package Test::Apikey::AggOutage;

# apikeyd killed with -9 under full load (2 nginx workers, wrk, one key)
# and started again after a given outage: the rollups and request_count,
# built from the workers' aggregates, must equal the requests nginx served
# with the key, counted from nginx's own access log ($apikey_result), and
# raw rows + counted ring drops must equal them too. Shared by the fast
# suite (t/025, 15 s) and t/long/ (60 s).
#
# Not exported by Test::Apikey: `use Test::Apikey::AggOutage;` after it.

use strict;
use warnings;

use Exporter qw(import);
use Test::More;
use Time::HiRes qw(time sleep);

use Test::Apikey::Util qw(servroot_path spew slurp spawn process_alive stop_process on_cleanup);
use Test::Apikey::Daemon qw(kill_apikeyd start_apikeyd apikeyd_pid);
use Test::Apikey::Nginx qw(start_nginx stop_nginx);
use Test::Apikey::Postgres qw(psql_one);
use Test::Apikey::Usage qw(apikeyd_metrics metric_sum usage_rows usage_duplicates key_request_count);
use Test::Apikey::Outcome qw(usage_settle);
use Test::Apikey::Soak qw(wrk_path);

our @EXPORT = qw(agg_nginx_config served_with_key run_wrk agg_outage);

# agg_nginx_config() -> start_nginx's sections: 2 workers, the default
# usage segment, and an access log of every request's key result and id.
sub agg_nginx_config {
    my $log = servroot_path('logs', 'keyed_access.log');
    return (
        workers     => 2,
        http_config => "apikey_keys $ENV{TEST_NGINX_APIKEY_KEYS};\n"
            . "apikey_usage $ENV{TEST_NGINX_APIKEY_USAGE};\n"
            . "log_format keyed '\$apikey_result \$apikey_id \$status';\n",
        config => "location /t.txt { apikey on; access_log $log keyed; }\n",
    );
}

# served_with_key($key_id) -> requests nginx's access log says were served
# with that key (result ok).
sub served_with_key {
    my ($id) = @_;
    my $n = 0;
    for (split /\n/, slurp(servroot_path('logs', 'keyed_access.log')) // '') {
        $n++ if /^ok \Q$id\E /;
    }
    return $n;
}

# run_wrk($key, $seconds) -> wrk's pid: GET /t.txt with the key, 1 thread,
# 8 connections (the header comes from a 0600 script, not the command line).
sub run_wrk {
    my ($key, $secs) = @_;
    my $script = spew(servroot_path('agg-wrk.lua'),
                      qq{wrk.headers["X-API-Key"] = "$key"\n}, 0600);
    my $pid = spawn([wrk_path(), '-t1', '-c8', "-d${secs}s", '-s', $script,
                     "http://127.0.0.1:$ENV{TEST_NGINX_SERVER_PORT}/t.txt"],
                    log => servroot_path('logs', 'agg-wrk.log'));
    on_cleanup('agg-wrk', sub { stop_process($pid, INT => 5, KILL => 5) });
    return $pid;
}

# agg_outage(key => apikeyctl's key, outage => S, tag => '(a)'): the
# scenario, with its tests.
sub agg_outage {
    my (%o) = @_;
    my ($k, $outage, $tag) = @o{qw(key outage tag)};
    my $id = $k->{key_id};
    my $m0 = apikeyd_metrics();
    my $wrk = run_wrk($k->{key}, $outage + 6);
    sleep 2;
    kill_apikeyd();
    my $down_at = time;
    sleep $outage;
    start_apikeyd();
    my $down = time - $down_at;
    my $deadline = time + $outage + 60;
    sleep 0.2 while process_alive($wrk) && time < $deadline;
    ok(!process_alive($wrk), "$tag wrk finished");
    stop_process($wrk, INT => 5, KILL => 5);
    stop_nginx();    # the workers retire their slots: collected at once
    my $settled = eval { usage_settle(60) };
    ok($settled, "$tag apikeyd committed everything after the restart") or diag($@);

    my $served = served_with_key($id);
    my $m = apikeyd_metrics();
    my $hourly = psql_one(q{SELECT coalesce(sum(requests), 0) FROM api_key_usage_hourly
                            WHERE key_id = :'id'}, { id => $id });
    my $daily = psql_one(q{SELECT coalesce(sum(requests), 0) FROM api_key_usage_daily
                           WHERE key_id = :'id'}, { id => $id });
    my $rows = usage_rows($id);
    my $dropped = metric_sum($m, 'apikey_ring_dropped_total')
        - metric_sum($m0, 'apikey_ring_dropped_total');
    diag(sprintf '%s apikeyd down %.1f s under load: %d requests served with the key, '
                 . '%d raw rows, %d ring drops, hourly %d, daily %d, request_count %d',
                 $tag, $down, $served, $rows, $dropped, $hourly, $daily, key_request_count($id));
    ok($served > 1000, "$tag the load ran (more than 1000 requests served with the key)");
    is($hourly, $served, "$tag sum(hourly requests) = requests served: 0 lost, 0 doubled");
    is($daily, $served, "$tag sum(daily requests) = requests served");
    is(key_request_count($id), $served, "$tag request_count = requests served");
    is($rows + $dropped, $served, "$tag raw rows + counted ring drops = requests served");
    is(usage_duplicates(), 0, "$tag no raw row twice");
    is(metric_sum($m, 'apikey_agg_overflow_total') - metric_sum($m0, 'apikey_agg_overflow_total'),
       0, "$tag nothing left out of the aggregates (apikey_agg_overflow_total)");
}

1;
