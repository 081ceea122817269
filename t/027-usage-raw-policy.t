# The raw-event policy (apikey_usage_raw): which requests with a known key
# leave an api_key_usage row, and that every other one is counted
# (apikey_raw_policy_skipped_total): rows + policy-skipped == requests
# served, while the aggregates (request_count, rollups) count every request.
# Then the invariant under load: 2 workers at full speed (wrk),
# apikeyd killed with -9 and started again after 10 s: with the default
# configuration the raw rows are complete (rows + counted drops ==
# requests served, and no drop).

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use POSIX ();
use Time::HiRes qw(time sleep);

start_postgres();
start_apikeyd();

my $org = apikeyctl('org', 'create', 'raw-policy');
my %K = map { ($_ => new_key($org->{org_id}, $_)) } qw(errors sample off all load);

my $html = $ENV{TEST_NGINX_HTML_DIR};
start_nginx(usage_conf(config => <<"CONF"));
location /errors/ { apikey on; apikey_usage_raw errors; alias $html/; }
location /sample/ { apikey on; apikey_usage_raw sample=4; alias $html/; }
location /off/    { apikey on; apikey_usage_raw off; alias $html/; }
location /all/    { apikey on; alias $html/; }
CONF
wait_until(sub { get_with_key($K{all}{key}, '/all/t.txt')->{status} == 200 }, 5, 'key table');
wait_usage_rows($K{all}{key_id}, 1, 10, 'first row');

sub skipped { metric_sum(apikeyd_metrics(), 'apikey_raw_policy_skipped_total') }

# The sentinel: a request under "all" after the others; once its row is in,
# the rows before it are in too (one worker).
my $all = 1;
sub settle {
    get_with_key($K{all}{key}, '/all/t.txt');
    $all++;
    wait_usage_rows($K{all}{key_id}, $all, 10, 'sentinel row');
}

{
    my $s0 = skipped();
    my %st = (%{ request_burst($K{errors}{key}, 10, path => '/errors/t.txt') },
              %{ request_burst($K{errors}{key}, 5, path => '/errors/missing.txt') });
    is_deeply(\%st, { 200 => 10, 404 => 5 }, 'errors: 10 x 200 and 5 x 404 served');
    settle();
    is(usage_rows($K{errors}{key_id}), 5, 'errors: only the 5 error requests have rows');
    is(psql_one(q{SELECT count(*) FROM api_key_usage WHERE key_id = :'id' AND status_code = 404},
                { id => $K{errors}{key_id} }), 5, 'errors: the rows are the 404s');
    is(skipped() - $s0, 10, 'errors: the 10 others counted as kept out by the policy');
}

{
    my $s0 = skipped();
    my $st = request_burst($K{sample}{key}, 40, path => '/sample/t.txt');
    is_deeply($st, { 200 => 40 }, 'sample=4: 40 requests served');
    settle();
    my $rows = usage_rows($K{sample}{key_id});
    is($rows, 10, 'sample=4: one row in 4 (one worker, deterministic)');
    is($rows + skipped() - $s0, 40, 'sample=4: rows + policy-skipped == served');
}

{
    my $s0 = skipped();
    my $st = request_burst($K{off}{key}, 7, path => '/off/t.txt');
    is_deeply($st, { 200 => 7 }, 'off: 7 requests served');
    settle();
    is(usage_rows($K{off}{key_id}), 0, 'off: no row');
    is(skipped() - $s0, 7, 'off: all 7 counted as kept out');
}

# The policy decides the raw record only: every request with a known key is
# in the aggregates (request_count and the rollups), whatever the policy.
for my $c (['errors', 15], ['sample', 40], ['off', 7]) {
    my ($name, $n) = @$c;
    my $id = $K{$name}{key_id};
    eval { wait_request_count($id, $n, 10, "$name: request_count") };
    is(key_request_count($id), $n, "$name: request_count counts all $n requests");
    is(psql_one(q{SELECT coalesce(sum(requests), 0) FROM api_key_usage_hourly WHERE key_id = :'id'},
                { id => $id }), $n, "$name: the hourly rollup counts all $n requests");
}

stop_nginx();

# --- the invariant under load, apikeyd killed for 10 s ---------------------------

SKIP: {
    skip 'wrk is not installed', 6 unless -x '/usr/bin/wrk';
    my $log = "$ENV{TEST_NGINX_SERVROOT}/logs/load.log";
    start_nginx(usage_conf(workers => 2, config => <<"CONF"));
location /load/ { apikey on; alias $html/; access_log $log; }
CONF
    wait_until(sub { get_with_key($K{load}{key}, '/load/t.txt')->{status} == 200 }, 5, 'key table');
    my $m0 = apikeyd_metrics();
    my $drops0 = metric_sum($m0, 'apikey_ring_dropped_total') + $m0->{apikey_unslotted_drops_total};
    my $url = "http://127.0.0.1:$ENV{TEST_NGINX_SERVER_PORT}/load/t.txt";
    my $wrk = fork // die "fork: $!\n";
    if (!$wrk) {
        open STDOUT, '>', "$ENV{TEST_NGINX_SERVROOT}/wrk.out";
        { exec '/usr/bin/wrk', '-t1', '-c16', '-d14s', '-H', "X-API-Key: $K{load}{key}", $url }
        POSIX::_exit(127);
    }
    sleep 2;
    kill_apikeyd();
    my $killed = time;
    sleep 10;
    start_apikeyd();
    diag(sprintf 'apikeyd away %.1f s under load', time - $killed);
    waitpid $wrk, 0;
    is($? >> 8, 0, 'wrk ran');
    stop_nginx();    # every log phase has run and the access log is complete
    open my $fh, '<', $log or die "$log: $!\n";
    my $served = 0;
    $served++ while <$fh>;
    close $fh;
    ok($served > 10000, "load: $served requests served in 14 s");
    my $ok = eval { wait_usage_rows($K{load}{key_id}, $served, 60, 'all rows'); 1 };
    my $m = apikeyd_metrics();
    my $drops = metric_sum($m, 'apikey_ring_dropped_total') + $m->{apikey_unslotted_drops_total} - $drops0;
    my $rows = usage_rows($K{load}{key_id});
    diag("load: $served served, $rows rows, $drops counted drops");
    ok($ok, 'load: the rows arrived') or diag($@);
    is($rows + $drops, $served, 'load: raw rows + counted raw drops == requests served');
    is($drops, 0, 'load: the default segment rode out the 10 s outage: no drop');
    is(usage_duplicates(), 0, 'load: no duplicate idempotency keys');
}

my @bad = grep { /\[(?:error|alert|crit|emerg)\]/ } split /\n/, nginx_error_log();
ok(!@bad, 'no errors in nginx error.log') or diag(join "\n", @bad);

done_testing();
