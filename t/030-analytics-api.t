# The org usage analytics API (docs/api.md), end to end:
#   GET /api/orgs/{org_id}/api-keys/usage
#   GET /api/orgs/{org_id}/api-keys/{key_id}/usage
# Real traffic through nginx (rings -> apikeyd -> rollups -> API) for the
# listing and the per-key view; exact synthetic rollup rows for series,
# top endpoints, error rates, averages and p95 from summed histograms;
# the auth matrix (401 / 403 / 404 with one body for every "not yours");
# every bad parameter a 400 with a JSON error; no key material anywhere.

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use Digest::SHA qw(sha256 sha256_hex);
use MIME::Base64 qw(encode_base64);
use POSIX qw(strftime);
use Time::HiRes qw(time);
use Time::Local qw(timegm);


# --- setup ----------------------------------------------------------------------

start_postgres();
start_apikeyd();

our $A = apikeyctl('org', 'create', 'analytics-a')->{org_id};
our $B = apikeyctl('org', 'create', 'analytics-b')->{org_id};

our %K;    # name -> { key, key_id, org }
sub mk {
    my ($name, $org, @args) = @_;
    $K{$name} = new_key($org, $name, @args);
    $K{$name}{org} = $org;
    return $K{$name};
}
mk('adminA',   $A, '--scopes', 'usage:read');
mk('clientA',  $A, '--scopes', 'orders.read');
mk('idleA',    $A);
mk('synthA',   $A, '--scopes', 'usage:read,other');
mk('oldA',     $A);
mk('revokedA', $A, '--scopes', 'usage:read');
mk('expiredA', $A, '--scopes', 'usage:read');
mk('goneA',    $A, '--scopes', 'usage:read');
mk('adminB',   $B, '--scopes', 'usage:read');
mk('clientB',  $B);

apikeyctl('key', 'revoke', $K{revokedA}{key_id});
psql(q{UPDATE api_keys SET expires_at = now() - interval '1 minute' WHERE id = :'id'},
     { id => $K{expiredA}{key_id} });
psql(q{DELETE FROM api_keys WHERE id = :'id'}, { id => $K{goneA}{key_id} });
# Used 40 days ago, from an IPv6 address (ingest never touches this key).
psql(q{UPDATE api_keys SET last_used_at = now() - interval '40 days',
       last_used_ip = '2001:db8::7', request_count = 5 WHERE id = :'id'},
     { id => $K{oldA}{key_id} });

our @ALL_BODIES;    # every API response, for the leak check at the end

sub auth { return ["Authorization: Bearer $_[0]"] }

sub api {
    my ($path, $key, @more) = @_;
    my @h = defined $key ? @{ auth($key) } : ();
    my $r = apikeyd_get($path, [ @h, @more ]);
    push @ALL_BODIES, [ $path, $r->{raw} // '' ];
    return $r;
}

sub org_path { "/api/orgs/$_[0]/api-keys/usage" . ($_[1] // '') }
sub key_path { "/api/orgs/$_[0]/api-keys/$_[1]/usage" . ($_[2] // '') }

# The key table reflects every change above (revoked, expired, deleted).
ok_eventually(sub {
    api(org_path($A), $K{adminA}{key})->{status} == 200
        && api(org_path($A), $K{revokedA}{key})->{status} == 401
        && (api(org_path($A), $K{expiredA}{key})->{json}{error} // '') =~ /expired/
        && (api(org_path($A), $K{goneA}{key})->{json}{error} // '') =~ /unknown/
}, 10, 'the API authenticates against the published key table');

# request bytes for apikeyd, as $who (a key name of %K; undef: no header)
sub get_as {
    my ($who, $path) = @_;
    return build_request("GET $path", defined $who ? auth($K{$who}{key}) : []);
}

# Every way of presenting no usable Bearer key: [name, header lines].
sub no_usable_key {
    return (
        [ 'no Authorization header',     [] ],
        [ 'X-API-Key instead of Bearer', [ "X-API-Key: $K{adminA}{key}" ] ],
        [ 'Basic scheme',                [ 'Authorization: Basic YWRtaW46YWRtaW4=' ] ],
        [ 'empty Bearer',                [ 'Authorization: Bearer ' ] ],
        [ 'garbage key',                 auth('ak_garbage') ],
        [ 'checksum typo',               auth(key_typo($K{adminA}{key})) ],
        [ 'deleted (unknown) key',       auth($K{goneA}{key}) ],
        [ 'revoked admin key',           auth($K{revokedA}{key}) ],
        [ 'expired admin key',           auth($K{expiredA}{key}) ],
        [ 'two Authorization headers',   [ @{ auth($K{adminA}{key}) }, @{ auth($K{adminA}{key}) } ] ],
    );
}

our $nobody = 'f0f0f0f0-0000-4000-8000-00000000abcd';
our ($S, $s_today, $s_month);    # set by insert_synthetic()

# "not yours" in every shape, from both orgs: [who, path]
sub not_yours {
    my @m;
    for my $side ([ 'adminA', $A, $B, 'clientA', 'clientB' ], [ 'adminB', $B, $A, 'clientB', 'clientA' ]) {
        my ($admin, $own, $other, $own_key, $other_key) = @$side;
        my ($ok_id, $their_id) = ($K{$own_key}{key_id}, $K{$other_key}{key_id});
        push @m, [ $admin, org_path($other) ], [ $admin, key_path($other, $their_id) ],
            [ $admin, key_path($own, $their_id) ], [ $admin, key_path($other, $ok_id) ],
            [ $admin, org_path($other, '?dormant_days=5') ], [ $admin, org_path($nobody) ],
            [ $admin, key_path($own, $nobody) ], [ $admin, key_path($other, $nobody) ],
            [ $own_key, org_path($other) ], [ $own_key, key_path($other, $their_id) ];
    }
    return (@m, [ 'adminA', key_path($A, $K{goneA}{key_id}) ], [ 'adminA', '/api/nothing/here' ]);
}

# Every bad parameter (the key path is synthA's).
sub bad_parameters {
    my $KP = sub { key_path($A, $S, $_[0]) };
    return ("/api/orgs/not-a-uuid/api-keys/usage", "/api/orgs/not-a-uuid/api-keys/$S/usage",
        "/api/orgs/$A/api-keys/1234/usage",
        org_path($A, '?dormant_days=-1'), org_path($A, '?dormant_days=3651'),
        org_path($A, '?dormant_days=abc'), org_path($A, '?dormant_days='),
        org_path($A, '?dormant_days=5&dormant_days=5'),
        map { $KP->($_) } '?from=yesterday', '?to=2024-02-30', '?from=2024-03-01T00:00:00',
        '?from=2024-03-05&to=2024-03-01', '?from=2024-03-05&to=2024-03-05', '?from=2999-01-01',
        '?from=2023-01-01&to=2024-03-01', '?interval=hour&from=2024-01-01&to=2024-03-01',
        '?interval=week', '?interval=Day', '?top=0', '?top=101', '?top=x', '?top=5&top=5',
        '?from=2024-03-01&from=2024-03-02', '?from=%zz', '?dormant_days=-1');
}

# --- real traffic through nginx (TEST 1) ---------------------------------------------

our $HTTP = apikey_http_config(usage => '1m', upstream => 'location / { return 500 "boom\n"; }');
our $CONF = <<"EOF";
location /orders/ { apikey on; apikey_endpoint "orders"; alias $ENV{TEST_NGINX_HTML_DIR}/; log_not_found off; }
location /up/     { apikey on; proxy_pass http://127.0.0.1:$ENV{TEST_NGINX_UPSTREAM_PORT}; }
EOF
# [key, method, path, status]
our @TRAFFIC = ((['clientA', 'GET', '/orders/t.txt', 200]) x 6,
                (['clientA', 'GET', '/orders/missing.txt', 404]) x 3,
                (['clientA', 'GET', '/up/x', 500]) x 2, ['clientA', 'POST', '/up/y', 500],
                (['clientB', 'GET', '/orders/t.txt', 200]) x 4);
our $day0 = strftime('%Y-%m-%d', gmtime);
our ($last_sent, $same_day);

# --- synthetic rollup rows (exact control) ------------------------------------------

# Latency bucket bounds as rollup.h defines them: bound(j) = round(64 * 2^(j/8)) us.
sub bound { my $j = shift; return int((64 << int($j / 8)) * 2**(($j % 8) / 8) + 0.5) }
sub lower_ms { my $b = shift; return $b == 0 ? 0 : bound($b - 1) / 1000 }
sub upper_ms { my $b = shift; return bound($b) / 1000 }
# latency_percentile_ms: log-linear inside the bucket holding the rank.
sub interp_ms { my ($b, $frac) = @_; return lower_ms($b) * (upper_ms($b) / lower_ms($b))**$frac }

# A histogram literal from { bucket => count } (subscript = bucket + 1).
sub hist {
    my (%c) = @_;
    my @b = sort { $a <=> $b } keys %c;
    my @v = map { $c{$_} // 0 } $b[0] .. $b[-1];
    return sprintf '[%d:%d]={%s}', $b[0] + 1, $b[-1] + 1, join ',', @v;
}

sub rollup {
    my ($table, $org, $key, $bucket, $ep, $m, $req, $s4, $s5, $ms, $hist) = @_;
    psql(qq{INSERT INTO $table (org_id, key_id, bucket, endpoint, method, requests,
            status_2xx, status_3xx, status_4xx, status_5xx, status_other,
            response_time_ms_sum, latency_hist)
            VALUES (:'org', :'key', $bucket, :'ep', :'m', :'req', :'s2', 0, :'s4', :'s5', 0,
                    :'ms', :'hist')},
         { org => $org, key => $key, ep => $ep, m => $m, req => $req,
           s2 => $req - $s4 - $s5, s4 => $s4, s5 => $s5, ms => $ms, hist => $hist });
}

# The synthetic rows, inserted once the real traffic is in.
sub insert_synthetic {
    our $S = $K{synthA}{key_id};
    my $daily = 'api_key_usage_daily';
    rollup($daily, $A, $S, q{'2024-03-01T00:00:00Z'}, '/orders', 'GET', 100, 6, 4, 6200, hist(80 => 100));
    rollup($daily, $A, $S, q{'2024-03-02T00:00:00Z'}, '/orders', 'GET', 15, 0, 0, 45, hist(40 => 15));
    rollup($daily, $A, $S, q{'2024-03-02T00:00:00Z'}, '/orders', 'POST', 5, 1, 1, 2005, hist(40 => 3, 120 => 2));
    rollup($daily, $A, $S, q{'2024-03-04T00:00:00Z'}, '/users', 'DELETE', 1, 0, 1, 900, hist(129 => 1));
    rollup($daily, $A, $S, q{'2024-03-05T00:00:00Z'}, '/orders', 'GET', 50, 0, 0, 50, hist(40 => 50));  # at `to`: out
    rollup($daily, $A, $S, q{'2024-02-29T00:00:00Z'}, '/orders', 'GET', 70, 0, 0, 70, hist(40 => 70));  # before from
    my $hourly = 'api_key_usage_hourly';
    rollup($hourly, $A, $S, q{'2024-03-01T10:00:00Z'}, '/orders', 'GET', 60, 6, 0, 3000, hist(80 => 60));
    rollup($hourly, $A, $S, q{'2024-03-01T12:00:00Z'}, '/orders', 'GET', 40, 0, 4, 3200, hist(80 => 40));
    # Another org's key, same days: must never show up in org A's numbers.
    rollup($daily, $B, $K{clientB}{key_id}, q{'2024-03-01T00:00:00Z'}, '/orders', 'GET', 999, 9, 9, 999, hist(1 => 999));
    rollup($hourly, $B, $K{clientB}{key_id}, q{'2024-03-01T10:00:00Z'}, '/orders', 'GET', 999, 9, 9, 999, hist(1 => 999));

    # Today, the first of this month, and the last day of the previous month.
    my $today = q{(date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')};
    my $month = q{(date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')};
    rollup($daily, $A, $S, $today, '/today', 'GET', 7, 0, 0, 7, hist(40 => 7));
    rollup($daily, $A, $S, $month, '/month', 'GET', 3, 0, 0, 3, hist(40 => 3));
    rollup($daily, $A, $S, "$month - interval '1 day'", '/before', 'GET', 1000, 0, 0, 1000, hist(40 => 1000));
    my $first_of_month = psql("SELECT $today = $month")->[0][0] eq 't';
    our ($s_today, $s_month) = ($first_of_month ? 10 : 7, 10);
}

# --- checks ---------------------------------------------------------------------

sub near { my ($got, $want, $name, $tol) = @_;
    ok(defined $got && abs($got - $want) <= ($tol // 0.0015), $name)
        or diag('got ' . ($got // 'null') . ", want $want") }

sub rfc3339_epoch {
    my ($s) = @_;
    my ($Y, $M, $D, $h, $m, $sec, $frac) =
        ($s // '') =~ /^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(\.\d+)?Z$/ or return undef;
    return timegm($sec, $m, $h, $D, $M - 1, $Y) + ($frac // 0);
}

sub sum_of { my ($list, $f) = @_; my $s = 0; $s += $_->{$f} for @$list; return $s }

run_tests();

__DATA__

=== TEST 1: real traffic through nginx: every request as planned, one row each
--- http_config eval: $HTTP
--- config eval: $CONF
--- raw_request eval
[ map { my ($who, $m, $path) = @$_;
        build_request("$m $path", ["X-API-Key: $K{$who}{key}"], $m eq 'POST' ? 'data' : undef) } @TRAFFIC ]
--- error_code eval: [ map { $_->[3] } @TRAFFIC ]
--- check
$last_sent = time;
--- usage_rows
key     | endpoint | method | status | result | count
clientA | orders   | GET    | 200    | ok     | 6
clientA | orders   | GET    | 404    | ok     | 3
clientA | /up/     | GET    | 500    | ok     | 2
clientA | /up/     | POST   | 500    | ok     | 1
clientB | orders   | GET    | 200    | ok     | 4
--- no_error_log
[error]



=== TEST 2: GET /api/orgs/{org_id}/api-keys/usage: every key of the org with its usage
--- init
insert_synthetic();
$same_day = strftime('%Y-%m-%d', gmtime) eq $day0;
--- port: $TEST_APIKEY_API_PORT
--- raw_request eval: get_as('adminA', org_path($A))
--- error_code: 200
--- response_headers
Content-Type: application/json
Cache-Control: no-store
--- check
my $r = $responses->[0];
my $j = $r->{json};
is($j->{org_id}, $A, 'org listing: org_id');
my %by = map { $_->{key_id} => $_ } @{ $j->{keys} };
my @names = map { $_->{name} } @{ $j->{keys} };
is_deeply(\@names, [qw(adminA clientA idleA synthA oldA revokedA expiredA)],
          'org listing: every key of the org (deleted one gone), oldest first');
ok(!(grep { $_->{key_id} eq $K{clientB}{key_id} || $_->{key_id} eq $K{adminB}{key_id} }
     @{ $j->{keys} }), "org listing: no key of the other org");
is_deeply([ sort keys %{ $j->{keys}[0] } ],
          [ sort qw(key_id name hint scopes status created_at expires_at last_used_at
                    last_used_ip request_count requests_today requests_this_month dormant
                    requests_last_hour baseline_hourly spike
                    distinct_ips_today distinct_ips_7d) ],
          'org listing: each key has exactly the contract fields');

my $c = $by{ $K{clientA}{key_id} };
is($c->{name}, 'clientA', 'clientA: name');
is($c->{hint}, $K{clientA}{hint}, 'clientA: hint');
is_deeply($c->{scopes}, ['orders.read'], 'clientA: scopes');
is($c->{status}, 'active', 'clientA: active');
is($c->{request_count}, 12, 'clientA: request_count = the 12 requests sent');
SKIP: {
    skip 'the UTC day changed during the test', 2 unless $same_day;
    is($c->{requests_today}, 12, 'clientA: requests_today 12');
    is($c->{requests_this_month}, 12, 'clientA: requests_this_month 12');
}
is($c->{last_used_ip}, '127.0.0.1', 'clientA: last_used_ip');
my $lu = rfc3339_epoch($c->{last_used_at});
ok(defined $lu && abs($lu - $last_sent) < 30, 'clientA: last_used_at is RFC 3339 and recent')
    or diag($c->{last_used_at});
ok(defined rfc3339_epoch($c->{created_at}), 'clientA: created_at is RFC 3339');
is($c->{expires_at}, undef, 'clientA: expires_at null');
ok(!$c->{dormant}, 'clientA: not dormant (used just now)');

my $i = $by{ $K{idleA}{key_id} };
ok(!$i->{dormant}, 'idleA: not dormant (never used, but created just now)');
is($i->{last_used_at}, undef, 'idleA: last_used_at null');
is($i->{last_used_ip}, undef, 'idleA: last_used_ip null');
is($i->{request_count}, 0, 'idleA: request_count 0');
is($i->{requests_today}, 0, 'idleA: requests_today 0');
is($i->{requests_this_month}, 0, 'idleA: requests_this_month 0');
is_deeply($i->{scopes}, [], 'idleA: scopes []');

my $o = $by{ $K{oldA}{key_id} };
ok($o->{dormant}, 'oldA: dormant (last used 40 days ago > 30)');
is($o->{last_used_ip}, '2001:db8::7', 'oldA: IPv6 last_used_ip');
is($o->{request_count}, 5, 'oldA: request_count');

my $s = $by{ $K{synthA}{key_id} };
is($s->{requests_today}, $s_today, 'synthA: requests_today = today\'s daily bucket');
is($s->{requests_this_month}, $s_month, 'synthA: requests_this_month = this month\'s buckets only');
is_deeply($s->{scopes}, [ 'usage:read', 'other' ], 'synthA: scopes in order');

is($by{ $K{revokedA}{key_id} }{status}, 'revoked', 'revokedA: status revoked');
is($by{ $K{expiredA}{key_id} }{status}, 'expired', 'expiredA: status expired');
ok(defined rfc3339_epoch($by{ $K{expiredA}{key_id} }{expires_at}), 'expiredA: expires_at RFC 3339');
is($by{ $K{adminA}{key_id} }{status}, 'active', 'adminA: active');

my $cu = rfc3339_epoch($j->{complete_until});
ok(defined $cu && $cu >= $last_sent - 1 && $cu <= time + 1,
   'complete_until: RFC 3339, not before the last request (nothing held back)')
    or diag('complete_until ' . ($j->{complete_until} // 'null'));



=== TEST 3: dormant_days
--- port: $TEST_APIKEY_API_PORT
--- check
my $j = api(org_path($A, '?dormant_days=60'), $K{adminA}{key})->{json};
my %by = map { $_->{key_id} => $_ } @{ $j->{keys} };
ok(!$by{ $K{oldA}{key_id} }{dormant}, 'dormant_days=60: a key used 40 days ago is not dormant');
ok(!$by{ $K{idleA}{key_id} }{dormant}, 'dormant_days=60: a never-used key counts from its creation');
$j = api(org_path($A, '?dormant_days=0'), $K{adminA}{key})->{json};
%by = map { $_->{key_id} => $_ } @{ $j->{keys} };
ok($by{ $K{clientA}{key_id} }{dormant}, 'dormant_days=0: every key is dormant');
$j = api(org_path($A, '?dormant_days=3650&unknown=1'), $K{adminA}{key})->{json};
ok($j && $j->{keys}, 'unknown parameters are ignored');



=== TEST 4: org B's listing: its two keys
--- port: $TEST_APIKEY_API_PORT
--- check
my $j = api(org_path($B), $K{adminB}{key})->{json};
my %by = map { $_->{key_id} => $_ } @{ $j->{keys} };
is_deeply([ map { $_->{name} } @{ $j->{keys} } ], [qw(adminB clientB)], 'org B listing: its two keys');
is($by{ $K{clientB}{key_id} }{request_count}, 4, 'clientB: request_count 4');
SKIP: {
    skip 'the UTC day changed during the test', 1 unless $same_day;
    is($by{ $K{clientB}{key_id} }{requests_today}, 4, 'clientB: requests_today 4');
}



=== TEST 5: GET /api/orgs/{org_id}/api-keys/{key_id}/usage on the real traffic
--- port: $TEST_APIKEY_API_PORT
--- raw_request eval: get_as('adminA', key_path($A, $K{clientA}{key_id}))
--- error_code: 200
--- response_headers
Content-Type: application/json
Cache-Control: no-store
--- check
my $r = $responses->[0];
my $j = $r->{json};
is_deeply([ sort keys %$j ],
          [ sort qw(key requests_today requests_this_month series top_endpoints error_rate
                    avg_ms p95_ms spikes complete_until) ], 'key usage: exactly the contract fields');
is($j->{key}{key_id}, $K{clientA}{key_id}, 'key usage: key.key_id');
is($j->{key}{request_count}, 12, 'key usage: key.request_count');
SKIP: {
    skip 'the UTC day changed during the test', 3 unless $same_day;
    is($j->{requests_today}, 12, 'key usage: requests_today');
    is($j->{requests_this_month}, 12, 'key usage: requests_this_month');
    is($j->{series}[-1]{requests}, 12, 'key usage: today is the last daily bucket, with all 12');
}
is(scalar @{ $j->{series} }, 30, 'key usage: 30 daily buckets by default');
is($j->{series}[-1]{t}, strftime('%Y-%m-%dT00:00:00Z', gmtime), 'key usage: last bucket is today (UTC)');
is(sum_of($j->{series}, 'requests'), 12, 'series: 12 requests');
is(sum_of($j->{series}, 'errors_4xx'), 3, 'series: 3 4xx');
is(sum_of($j->{series}, 'errors_5xx'), 3, 'series: 3 5xx');
my @t = map { $_->{t} } @{ $j->{series} };
is_deeply(\@t, [ sort @t ], 'series: ascending');
is_deeply([ map { my %e = %$_; delete $e{avg_ms}; \%e } @{ $j->{top_endpoints} } ],
          [ { endpoint => 'orders', method => 'GET', requests => 9, errors_4xx => 3, errors_5xx => 0 },
            { endpoint => '/up/', method => 'GET', requests => 2, errors_4xx => 0, errors_5xx => 2 },
            { endpoint => '/up/', method => 'POST', requests => 1, errors_4xx => 0, errors_5xx => 1 } ],
          'top endpoints: orders GET 9, /up/ GET 2, /up/ POST 1');
# avg_ms against the raw rows' own response times
my %raw_avg = map { ("$_->[0] $_->[1]" => $_->[2]) } @{ psql(
    q{SELECT endpoint, method, avg(response_time_ms) FROM api_key_usage
       WHERE key_id = :'key' GROUP BY endpoint, method}, { key => $K{clientA}{key_id} }) };
near($_->{avg_ms}, $raw_avg{"$_->{endpoint} $_->{method}"} // -1,
     "top endpoints: avg_ms of $_->{method} $_->{endpoint} = the raw rows' mean", 0.0015)
    for @{ $j->{top_endpoints} };
near($j->{error_rate}{'4xx'}, 3 / 12, 'error_rate 4xx = 3/12', 1e-9);
near($j->{error_rate}{'5xx'}, 3 / 12, 'error_rate 5xx = 3/12', 1e-9);
ok(defined $j->{avg_ms} && $j->{avg_ms} >= 0, 'avg_ms is a number');
ok(defined $j->{p95_ms} && $j->{p95_ms} >= 0, 'p95_ms is a number');

my $h = api(key_path($A, $K{clientA}{key_id}, '?interval=hour&top=1'), $K{adminA}{key})->{json};
is(scalar @{ $h->{series} }, 24, 'interval=hour: 24 hourly buckets by default');
is(sum_of($h->{series}, 'requests'), 12, 'interval=hour: 12 requests');
is(scalar @{ $h->{top_endpoints} }, 1, 'top=1: one endpoint');
is($h->{top_endpoints}[0]{endpoint}, 'orders', 'top=1: the busiest');



=== TEST 6: per key usage on exact synthetic rollup rows
--- port: $TEST_APIKEY_API_PORT
--- check
my $j = api(key_path($A, $S, '?from=2024-03-01&to=2024-03-05'), $K{adminA}{key})->{json};
is($j->{requests_today}, $s_today, 'synthA: requests_today');
is($j->{requests_this_month}, $s_month, 'synthA: requests_this_month');
is($j->{key}{requests_today}, $s_today, 'synthA: key.requests_today');
my @series = map { [ $_->{t}, $_->{requests}, $_->{errors_4xx}, $_->{errors_5xx} ] } @{ $j->{series} };
is_deeply(\@series, [ [ '2024-03-01T00:00:00Z', 100, 6, 4 ],
                      [ '2024-03-02T00:00:00Z', 20, 1, 1 ],
                      [ '2024-03-03T00:00:00Z', 0, 0, 0 ],
                      [ '2024-03-04T00:00:00Z', 1, 0, 1 ] ],
          'synthA daily series: 4 buckets [from, to), the empty one as zeros, other org excluded');
my $s = $j->{series};
near($s->[0]{avg_ms}, 62, 'day 1 avg_ms = 6200 / 100');
near($s->[1]{avg_ms}, 102.5, 'day 2 avg_ms = (45 + 2005) / 20');
is($s->[2]{avg_ms}, undef, 'empty day: avg_ms null');
is($s->[2]{p95_ms}, undef, 'empty day: p95_ms null');
near($s->[3]{avg_ms}, 900, 'day 4 avg_ms = 900');
near($s->[0]{p95_ms}, interp_ms(80, 0.95), 'day 1 p95: 95% into bucket 80');
ok($s->[0]{p95_ms} >= lower_ms(80) && $s->[0]{p95_ms} <= upper_ms(80), 'day 1 p95 inside bucket 80');
# day 2 summed over both endpoints: 18 in bucket 40, 2 in bucket 120;
# rank 19 falls halfway into bucket 120.
near($s->[1]{p95_ms}, interp_ms(120, 0.5), 'day 2 p95 from the summed histograms (bucket 120)');
near($s->[3]{p95_ms}, interp_ms(129, 0.95), 'day 4 p95');

is_deeply([ map { [ @$_{qw(endpoint method requests errors_4xx errors_5xx)} ] } @{ $j->{top_endpoints} } ],
          [ [ '/orders', 'GET', 115, 6, 4 ], [ '/orders', 'POST', 5, 1, 1 ], [ '/users', 'DELETE', 1, 0, 1 ] ],
          'synthA top endpoints: by requests');
near($j->{top_endpoints}[0]{avg_ms}, 6245 / 115, '/orders GET avg_ms');
near($j->{top_endpoints}[1]{avg_ms}, 401, '/orders POST avg_ms');
near($j->{error_rate}{'4xx'}, 7 / 121, 'error_rate 4xx = 7/121', 1e-9);
near($j->{error_rate}{'5xx'}, 6 / 121, 'error_rate 5xx = 6/121', 1e-9);
near($j->{avg_ms}, 9150 / 121, 'avg_ms = 9150 / 121');
# Over the range: 18 in bucket 40, 100 in bucket 80, 2 in 120, 1 in 129;
# rank 0.95 * 121 = 114.95 lies (114.95 - 18) / 100 into bucket 80.
near($j->{p95_ms}, interp_ms(80, (114.95 - 18) / 100), 'p95_ms from the summed histograms');

my $t2 = api(key_path($A, $S, '?from=2024-03-01&to=2024-03-05&top=2'), $K{adminA}{key})->{json};
is(scalar @{ $t2->{top_endpoints} }, 2, 'top=2: two endpoints');

my $h = api(key_path($A, $S, '?interval=hour&from=2024-03-01T10:00:00%2B01:00&to=2024-03-01T13:00:00Z'),
            $K{adminA}{key})->{json};
is_deeply([ map { [ $_->{t}, $_->{requests}, $_->{errors_4xx}, $_->{errors_5xx} ] } @{ $h->{series} } ],
          [ [ '2024-03-01T09:00:00Z', 0, 0, 0 ], [ '2024-03-01T10:00:00Z', 60, 6, 0 ],
            [ '2024-03-01T11:00:00Z', 0, 0, 0 ], [ '2024-03-01T12:00:00Z', 40, 0, 4 ] ],
          'hourly series from the hourly rollup (from with a +01:00 offset)');
near($h->{series}[1]{avg_ms}, 50, 'hour 10 avg_ms');
near($h->{series}[3]{avg_ms}, 80, 'hour 12 avg_ms');
near($h->{avg_ms}, 62, 'hourly avg_ms over the range');
my $hd = api(key_path($A, $S, '?interval=hour&from=2024-03-01&to=2024-03-02'), $K{adminA}{key})->{json};
is(scalar @{ $hd->{series} }, 24, 'interval=hour over one day: 24 buckets');
is(sum_of($hd->{series}, 'requests'), 100, '... holding the day\'s 100 requests');

my $none = api(key_path($A, $S, '?from=2023-01-01&to=2023-01-03'), $K{adminA}{key})->{json};
is_deeply([ map { $_->{requests} } @{ $none->{series} } ], [ 0, 0 ], 'no usage: zero buckets');
is_deeply($none->{top_endpoints}, [], 'no usage: no top endpoints');
is_deeply($none->{error_rate}, { '4xx' => 0, '5xx' => 0 }, 'no usage: error rates 0');
is($none->{avg_ms}, undef, 'no usage: avg_ms null');
is($none->{p95_ms}, undef, 'no usage: p95_ms null');



=== TEST 7: no usable Bearer key: 401, a Bearer challenge and a JSON error (org listing and key usage)
--- port: $TEST_APIKEY_API_PORT
--- raw_request eval
[ map { my $p = $_; map { build_request("GET $p", $_->[1]) } no_usable_key() }
      org_path($A), key_path($A, $K{clientA}{key_id}) ]
--- error_code: 401
--- response_headers_like
WWW-Authenticate: ^Bearer\b
Content-Type: ^application/json$
--- response_body_like: ^\{"error":"[^"]+"\}$



=== TEST 8: a revoked key is told so (invalid_token); a missing one gets a plain challenge
--- port: $TEST_APIKEY_API_PORT
--- raw_request eval: [ get_as('revokedA', org_path($A)), get_as(undef, org_path($A)) ]
--- error_code: 401
--- response_headers_like eval
[ 'WWW-Authenticate: error="invalid_token"', 'WWW-Authenticate: ^Bearer realm="apikeyd"$' ]
--- response_body_like eval
[ '^\{"error":"revoked API key"\}$', '^\{"error":"[^"]+"\}$' ]



=== TEST 9: a key without usage:read on its own org: 403, insufficient_scope
--- port: $TEST_APIKEY_API_PORT
--- raw_request eval
[ get_as('clientA', org_path($A)), get_as('clientA', key_path($A, $K{clientA}{key_id})),
  get_as('clientA', key_path($A, $K{adminA}{key_id})), get_as('clientB', org_path($B)) ]
--- error_code: 403
--- response_headers_like
WWW-Authenticate: insufficient_scope
--- response_body chomp
{"error":"missing scope usage:read"}



=== TEST 10: whatever is not yours (another org, its keys, nothing at all, an unknown route): 404 with one body
--- port: $TEST_APIKEY_API_PORT
--- raw_request eval: [ map { get_as(@$_) } not_yours() ]
--- error_code: 404
--- response_headers
Content-Type: application/json
--- response_body chomp
{"error":"not found"}



=== TEST 11: every bad parameter: 400 with a JSON error
--- port: $TEST_APIKEY_API_PORT
--- raw_request eval: [ map { get_as('adminA', $_) } bad_parameters() ]
--- error_code: 400
--- response_headers
Content-Type: application/json
--- response_body_like: ^\{"error":"[^"]+"\}$



=== TEST 12: a key pasted into from: 400, and the error does not echo it
--- port: $TEST_APIKEY_API_PORT
--- raw_request eval: get_as('adminA', key_path($A, $S, '?from=' . $K{adminA}{key}))
--- error_code: 400
--- check
unlike($responses->[0]{body}, qr/\Q$K{adminA}{key}\E/, "$block->{name} - no key in the answer");



=== TEST 13: an unescaped + in the offset (decoded as a space) and unknown parameters are accepted
--- port: $TEST_APIKEY_API_PORT
--- raw_request eval
[ get_as('adminA', key_path($A, $S, '?from=2024-03-01T00:00:00+01:00&to=2024-03-02')),
  get_as('adminA', key_path($A, $S, '?foo=bar&from=2024-03-01&to=2024-03-02')) ]
--- error_code: 200



=== TEST 14: PostgreSQL down: 503 with a JSON error, auth still answers from the key table; back: the next request succeeds
--- init
stop_postgres();
--- port: $TEST_APIKEY_API_PORT
--- raw_request eval: [ get_as('adminA', org_path($A)), get_as(undef, org_path($A)) ]
--- error_code eval: [ 503, 401 ]
--- response_body_like eval: [ '^\{"error":"database unavailable"\}$', '^\{"error":' ]
--- check
start_postgres();
is(api(org_path($A), $K{adminA}{key})->{status}, 200,
   "$block->{name} - PostgreSQL back: 200 (dead pooled sessions replaced)");



=== TEST 15: no key material in any API answer; no API error in apikeyd's log
--- port: $TEST_APIKEY_API_PORT
--- check
# the key, its random part and hex SHA-256 (key_secrets), and the hash as
# base64, base64url and a bytea literal
my @secrets;
for my $name (sort keys %K) {
    my $key = $K{$name}{key};
    my $b64 = encode_base64(sha256($key), '');
    (my $b64url = $b64) =~ tr{+/}{-_};
    (my $b64bare = $b64url) =~ s/=+$//;
    push @secrets, key_secrets($name => $key),
        [ "$name sha256 base64", $b64 ], [ "$name sha256 base64url", $b64bare ],
        [ "$name sha256 bytea", '\\\\x' . sha256_hex($key) ];
}
my @answers = (@ALL_BODIES, map { [ $_->[0], $_->[1]{raw} // '' ] } all_responses());
my @leaks = map { my ($where, $raw) = @$_; map { "$_ in an answer ($where)" } secrets_in($raw, @secrets) }
    @answers;
ok(@answers >= 100, scalar(@answers) . ' API answers checked for key material');
is_deeply(\@leaks, [], 'no key, random part or hash (hex, base64, bytea) in any API answer');
is_deeply([ grep { /\[error\] api:/ } split /\n/, apikeyd_log() ], [],
          "apikeyd's log has no API error (only 503s while PostgreSQL was down)");
