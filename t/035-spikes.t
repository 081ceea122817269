# Spikes (docs/api.md#spikes): requests_last_hour, baseline_hourly and
# spike on the org listing, sort=requests_last_hour and spike=true|false,
# spike_ratio and spike_min on the listing and the per-key view, the
# per-key view's "spikes", and the apikey_keys_spiking gauge. Rollup rows
# of the last complete hour and the 7 days before are inserted here; real
# traffic through nginx lands in the current hour, which is not "the last
# complete hour" and so changes nothing until it completes.

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use Test::Apikey::Usage qw(apikeyd_metrics);
use POSIX qw(strftime);

# The blocks read "the last complete hour" more than once: stay inside one.
my $left = 3600 - time % 3600;
sleep($left + 10) if $left < 150;

start_postgres();
start_apikeyd();

our $S = apikeyctl('org', 'create', 'spikes-s')->{org_id};
our $O = apikeyctl('org', 'create', 'spikes-o')->{org_id};
our %K;
sub mk { my ($n, $org, @a) = @_; $K{$n} = new_key($org, $n, @a) }
mk('admin', $S, '--scopes', 'usage:read');
mk($_, $S) for qw(six four young small mid idle);
mk('other', $O);

our $H = time - time % 3600 - 3600;    # the last complete hour's start
sub iso { strftime('%Y-%m-%dT%H:%M:%SZ', gmtime($_[0])) }

# name => [hours of history before H (created then, plus 10 minutes
# inside its hour), requests per hour before H, requests in H]
our %SPEC = (
    six   => [ 240, 20, 120 ],    # 6x its baseline of 20
    four  => [ 240, 30, 120 ],    # 4x
    young => [ 20,  5,  500 ],    # under 24 h: no baseline, never spikes
    small => [ 240, 2,  12 ],     # 6x, under spike_min
    mid   => [ 72,  20, 120 ],    # 3 days old: mean over its 72 hours = 20
    idle  => [ 240, 0,  0 ],
    other => [ 240, 1,  900 ],    # another org's: never in org S's answers
);
our %BASE;
for my $n (sort keys %SPEC) {
    my ($age, $per, $last) = @{ $SPEC{$n} };
    my $org = $n eq 'other' ? $O : $S;
    psql(q{UPDATE api_keys SET created_at = to_timestamp(:'c') WHERE id = :'id'},
         { c => $H - $age * 3600 + 600, id => $K{$n}{key_id} });
    # The window's hours from the creation hour on (at most 168).
    my $first = $H - ($age < 168 ? $age : 168) * 3600;
    $BASE{$n} = $age < 24 ? undef : $per;    # every hour of the window alike
    psql(q{INSERT INTO api_key_usage_hourly (org_id, key_id, bucket, endpoint, method,
            requests, status_2xx, status_3xx, status_4xx, status_5xx, status_other,
            response_time_ms_sum, latency_hist)
            SELECT :'org', :'id', b, '/x', 'GET', r, r, 0, 0, 0, 0, r, '{1}'
              FROM (SELECT to_timestamp(:'first') + make_interval(hours => i) AS b,
                           CASE WHEN i = :'n' THEN :'last'::bigint ELSE :'per'::bigint END AS r
                      FROM generate_series(0, :'n') i) g
             WHERE r > 0},
         { org => $org, id => $K{$n}{key_id}, first => $first,
           n => ($H - $first) / 3600, last => $last, per => $per });
}
# An hour 8 days before H, outside every window.
psql(q{INSERT INTO api_key_usage_hourly (org_id, key_id, bucket, endpoint, method,
        requests, status_2xx, status_3xx, status_4xx, status_5xx, status_other,
        response_time_ms_sum, latency_hist)
        VALUES (:'org', :'id', to_timestamp(:'b'), '/old', 'GET', 99999, 99999, 0, 0, 0, 0, 1, '{1}')},
     { org => $S, id => $K{four}{key_id}, b => $H - 8 * 86400 });

# The refresh runs when apikeyd starts, then hourly; the gauge follows it.
restart_apikeyd();
wait_until(sub { defined apikeyd_metrics()->{apikey_keys_spiking} },
           20, 'the first spike refresh');

sub auth { return ["Authorization: Bearer $_[0]"] }
sub api { my ($path, $key) = @_; return apikeyd_get($path, auth($key // $K{admin}{key})) }
sub lpath { "/api/orgs/$S/api-keys/usage" . ($_[0] // '') }
sub kpath { "/api/orgs/$S/api-keys/$K{$_[0]}{key_id}/usage" . ($_[1] // '') }
sub by_name { return { map { $_->{name} => $_ } @{ $_[0]{keys} } } }
sub names { return [ map { $_->{name} } @{ $_[0]{keys} } ] }
sub spiking { return [ sort map { $_->{name} } grep { $_->{spike} } @{ $_[0]{keys} } ] }

# (outside the blocks: their code sees the harness's lexical $b)
sub numeric_order {
    my ($order, @v) = @_;
    @v = sort { $a <=> $b } @v;
    return $order eq 'desc' ? reverse @v : @v;
}

# Every page of a listing, limit 2.
sub walk {
    my ($query) = @_;
    my (@names, $cursor);
    for (1 .. 20) {
        my $r = api(lpath("?limit=2&$query" . (defined $cursor ? "&cursor=$cursor" : '')));
        die "page: $r->{status} $r->{body}\n" unless $r->{status} == 200;
        push @names, @{ names($r->{json}) };
        $cursor = $r->{json}{next_cursor} // return \@names;
    }
    die "more than 20 pages\n";
}

our $HTTP = apikey_http_config(usage => '1m');
our $CONF = <<"EOF";
location /orders/ { apikey on; alias $ENV{TEST_NGINX_HTML_DIR}/; log_not_found off; }
EOF

run_tests();

__DATA__

=== TEST 1: real traffic in the current hour: counted in the rollup, not in the last complete hour
--- http_config eval: $HTTP
--- config eval: $CONF
--- raw_request eval
[ map { build_request("GET /orders/t.txt", ["X-API-Key: $K{four}{key}"]) } 1 .. 30 ]
--- error_code eval: [ (200) x 30 ]
--- check
my $now = time - time % 3600;
ok_eventually(sub {
    psql(q{SELECT coalesce(sum(requests), 0) FROM api_key_usage_hourly
            WHERE key_id = :'id' AND bucket = to_timestamp(:'b')},
         { id => $K{four}{key_id}, b => $now })->[0][0] == 30 }, 10,
    'the 30 requests reached the current hour of the hourly rollup');
my $k = by_name(api(lpath())->{json})->{four};
is($k->{requests_last_hour}, 120, 'requests_last_hour: the last complete hour only (120, not 150)');
is($k->{baseline_hourly}, 30, 'baseline_hourly: 30');
ok(!$k->{spike}, '4x its baseline: no spike');



=== TEST 2: the listing's last hour, baselines and spikes by the default rule
--- port: $TEST_APIKEY_API_PORT
--- check
my $r = api(lpath());
is($r->{status}, 200, '200');
my $k = by_name($r->{json});
is_deeply([ sort keys %$k ], [ sort qw(admin six four young small mid idle) ], "org S's keys only");
for my $n (qw(six four young small mid idle)) {
    is($k->{$n}{requests_last_hour}, $SPEC{$n}[2], "$n: requests_last_hour");
    is($k->{$n}{baseline_hourly}, $BASE{$n}, "$n: baseline_hourly");
}
is($k->{mid}{baseline_hourly}, 20, 'a 3-day-old key: the mean over its own 72 hours, not over 168');
ok(!defined $k->{young}{baseline_hourly}, 'under 24 h of history: baseline null');
ok(!defined $k->{admin}{baseline_hourly}, 'a key created now: null');
is_deeply(spiking($r->{json}), [qw(mid six)], 'spiking: 6x (six, mid); not 4x, not young, not under spike_min');
my @keys = @{ $r->{json}{keys} };
is(scalar(grep { JSON::PP::is_bool($_->{spike}) } @keys), scalar @keys, 'spike is a boolean on every key');



=== TEST 3: spike_min and spike_ratio
--- port: $TEST_APIKEY_API_PORT
--- check
is_deeply(spiking(api(lpath('?spike_min=10'))->{json}), [qw(mid six small)], 'spike_min=10: small spikes too');
is_deeply(spiking(api(lpath('?spike_min=121'))->{json}), [], 'spike_min=121: nothing');
is_deeply(spiking(api(lpath('?spike_ratio=3.5'))->{json}), [qw(four mid six)], 'spike_ratio=3.5: four spikes too');
is_deeply(spiking(api(lpath('?spike_ratio=6.01'))->{json}), [], 'spike_ratio=6.01: nothing');
is_deeply(spiking(api(lpath('?spike_ratio=6&spike_min=0'))->{json}), [qw(mid six small)],
          'spike_min=0: an hour of 12 spikes, an idle key never does');



=== TEST 4: spike=true|false filters by the same rule, with spike_ratio and spike_min
--- port: $TEST_APIKEY_API_PORT
--- check
is_deeply([ sort @{ names(api(lpath('?spike=true'))->{json}) } ], [qw(mid six)], 'spike=true');
is_deeply([ sort @{ names(api(lpath('?spike=false'))->{json}) } ], [qw(admin four idle small young)], 'spike=false');
is_deeply([ sort @{ names(api(lpath('?spike=true&spike_min=10&spike_ratio=3'))->{json}) } ],
          [qw(four mid six small)], 'spike=true&spike_min=10&spike_ratio=3');
is_deeply([ sort @{ walk('spike=true&sort=requests_last_hour') } ], [qw(mid six)],
          'spike=true, paged by 2: each spiking key once');



=== TEST 5: sort=requests_last_hour, paged by 2: every key exactly once, in order
--- port: $TEST_APIKEY_API_PORT
--- check
my $all = api(lpath('?limit=100'))->{json};
my %v = map { $_->{name} => $_->{requests_last_hour} } @{ $all->{keys} };
for my $order (qw(desc asc)) {
    my $names = walk("sort=requests_last_hour&order=$order");
    is_deeply([ sort @$names ], [ sort keys %v ], "order=$order: every key once");
    my @got = map { $v{$_} } @$names;
    my @want = numeric_order($order, @got);
    is_deeply(\@got, \@want, "order=$order: by requests_last_hour") or diag("@$names");
}
is(names(api(lpath('?sort=requests_last_hour&limit=1'))->{json})->[0], 'young', 'the busiest first by default');
my $p = api(lpath('?sort=requests_last_hour&limit=2&spike_min=5'))->{json};
is(api(lpath("?sort=requests_last_hour&limit=2&spike_min=6&cursor=$p->{next_cursor}"))->{status}, 400,
   'a cursor used with another spike_min: 400');
is(api(lpath("?sort=requests_last_hour&limit=2&spike_min=5&spike_ratio=4&cursor=$p->{next_cursor}"))->{status}, 400,
   'a cursor used with another spike_ratio: 400');
is(api(lpath("?sort=requests_last_hour&limit=2&spike_min=5&spike=false&cursor=$p->{next_cursor}"))->{status}, 400,
   'a cursor used with a spike filter: 400');
is(api(lpath("?sort=requests_last_hour&limit=2&spike_min=5&cursor=$p->{next_cursor}"))->{status}, 200,
   'the same listing: 200');



=== TEST 6: bad spike_ratio, spike_min and spike: 400 on the listing and the per-key view
--- port: $TEST_APIKEY_API_PORT
--- check
for my $q ('spike_ratio=1', 'spike_ratio=0.5', 'spike_ratio=abc', 'spike_ratio=1e3', 'spike_ratio=1000.5',
           'spike_ratio=-2', 'spike_ratio=', 'spike_ratio=5.', 'spike_ratio=inf', 'spike_min=-1',
           'spike_min=1.5', 'spike_min=x', 'spike_min=', 'spike_min=1000000000',
           'spike_ratio=5&spike_ratio=6', 'spike=maybe') {
    my $r = api(lpath("?$q"));
    is($r->{status}, 400, "listing ?$q: 400");
    like($r->{json}{error} // '', qr/spike/, "listing ?$q: the error names the parameter");
    next if $q =~ /^spike=/;
    is(api(kpath('six', "?$q"))->{status}, 400, "per-key view ?$q: 400");
}
is(api(lpath('?spike_ratio=1000&spike_min=999999999'))->{status}, 200, 'the bounds themselves: 200');
is(api(lpath('?spike_ratio=1.01&spike_min=0'))->{status}, 200, 'just above 1, and 0: 200');



=== TEST 7: the per-key view's spikes: hourly buckets of its range, each against its own baseline
--- port: $TEST_APIKEY_API_PORT
--- check
my $from = iso($H - 3 * 3600);
my $to = iso($H + 2 * 3600);
my $j = api(kpath('six', "?from=$from&to=$to&interval=hour"))->{json};
is_deeply($j->{spikes}, [ { t => iso($H), requests => 120, baseline_hourly => 20, ratio => 6 } ],
          'six: the hour H, 120 against 20');
ok($j->{key}{spike}, 'six: the key object says spike too');
is_deeply(api(kpath('six', "?from=$from&to=$to&interval=day"))->{json}{spikes}, $j->{spikes},
          'interval=day: the same hours');
is_deeply(api(kpath('four', "?from=$from&to=$to&interval=hour"))->{json}{spikes}, [], 'four: none (4x)');
is(scalar @{ api(kpath('four', "?from=$from&to=$to&interval=hour&spike_ratio=4"))->{json}{spikes} }, 1,
   'four with spike_ratio=4: the hour H');
is_deeply(api(kpath('young', "?from=$from&to=$to&interval=hour&spike_min=1"))->{json}{spikes}, [],
          'young: none, whatever its last hour');
is_deeply(api(kpath('six', '?from=' . iso($H + 3600) . "&to=$to&interval=hour"))->{json}{spikes}, [],
          'a range without H: none');
my $m = api(kpath('mid', "?from=$from&to=$to&interval=hour"))->{json}{spikes};
is_deeply($m, [ { t => iso($H), requests => 120, baseline_hourly => 20, ratio => 6 } ], 'mid: its own 72-hour mean');



=== TEST 8: the apikey_keys_spiking gauge
--- port: $TEST_APIKEY_API_PORT
--- check
my $body = apikeyd_get('/metrics')->{body};
is(apikeyd_metrics()->{apikey_keys_spiking}, 3, 'three keys spike in the last complete hour (six, mid, other org\'s)');
like($body, qr/^# TYPE apikey_keys_spiking gauge$/m, 'a gauge');



=== TEST 9: late rows of the last hour count at once
--- port: $TEST_APIKEY_API_PORT
--- check
psql(q{INSERT INTO api_key_usage_hourly (org_id, key_id, bucket, endpoint, method,
        requests, status_2xx, status_3xx, status_4xx, status_5xx, status_other,
        response_time_ms_sum, latency_hist)
        VALUES (:'org', :'id', to_timestamp(:'b'), '/late', 'GET', 60, 60, 0, 0, 0, 0, 1, '{1}')},
     { org => $S, id => $K{four}{key_id}, b => $H });
my $k = by_name(api(lpath())->{json})->{four};
is($k->{requests_last_hour}, 180, 'a late row of H: 120 + 60');
ok($k->{spike}, 'now 6x: spiking');
psql(q{UPDATE api_key_usage_hourly SET requests = 10 WHERE key_id = :'id' AND endpoint = '/late'},
     { id => $K{four}{key_id} });
is(by_name(api(lpath())->{json})->{four}{requests_last_hour}, 130, 'an updated row: the difference');
psql(q{DELETE FROM api_key_usage_hourly WHERE key_id = :'id' AND endpoint = '/late'},
     { id => $K{four}{key_id} });
is(by_name(api(lpath())->{json})->{four}{requests_last_hour}, 120, 'a deleted row: back to 120');



=== TEST 10: the self view names the key's org (the dashboard signs in with the key alone)
--- port: $TEST_APIKEY_API_PORT
--- check
my $r = api('/api/keys/self/usage', $K{six}{key});
is($r->{status}, 200, 'a key without scopes: 200');
is($r->{json}{key}{org_id}, $S, 'key.org_id is its org');
is($r->{json}{key}{key_id}, $K{six}{key_id}, 'its own key');
is(api("/api/orgs/$S/api-keys/usage", $K{six}{key})->{status}, 403, 'the org listing still needs usage:read');
