# The workers' aggregates in the usage segment, read from the file with
# nothing collecting them (apikeyd stopped once the keys are published):
# every request with a known key (ok, expired, revoked, forbidden) is added
# up per (key, method, endpoint label, hour), with the same status classes
# and latency buckets the rollups use, and also still gets its raw record;
# requests without a usable key and `apikey_usage off` locations add
# nothing; a full label table aggregates under "(other)" and counts it.

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;

start_postgres();
start_apikeyd();

our $org = apikeyctl('org', 'create', 'usage-aggregates');
our %K = map { $_ => new_key($org->{org_id}, $_, '--scopes', 'read') }
    qw(main quiet expired revoked labels);
apikeyctl('key', 'revoke', $K{revoked}{key_id});
psql(q{UPDATE api_keys SET expires_at = now() - interval '1 minute' WHERE id = :'id'},
     { id => $K{expired}{key_id} });
wait_key_results({ $K{main}{key} => 'ok', $K{expired}{key} => 'expired',
                   $K{revoked}{key} => 'revoked' }, 10, 'key table published');
# From here on nothing collects: what the workers wrote stays in the file.
stop_apikeyd();

$ENV{"TEST_NGINX_KEY_\U$_"} = $K{$_}{key} for keys %K;

our $HTTP = apikey_http_config(usage => '4m');
our $CONF = <<'EOF';
location /a/     { apikey on; alias html/; log_not_found off; }
location /b/     { apikey on; alias html/; }
location /admin/ { apikey on; apikey_scope admin; alias html/; }
location /off/   { apikey on; apikey_usage off; alias html/; }
location /v/     { apikey on; apikey_endpoint $uri; alias html/; log_not_found off; }
EOF
our $NO_ERRORS = qr/\[(?:error|alert|crit|emerg)\]/;

# agg_table($key) -> "method | endpoint | requests | 2xx | 3xx | 4xx | 5xx |
# other | in histogram" per entry of the key (summed over slots and
# buffers), sorted.
sub agg_table {
    my ($name) = @_;
    my %row;
    for my $e (grep { $_->{key_id} eq $K{$name}{key_id} } usage_aggregates()) {
        my $r = $row{"$e->{method} | $e->{endpoint}"} //= [ (0) x 7 ];
        my $i = 0;
        $r->[ $i++ ] += $e->{$_} for qw(requests s2xx s3xx s4xx s5xx other hist);
    }
    return join "\n", map { join ' | ', $_, @{ $row{$_} } } sort keys %row;
}

# Every aggregated request also has its raw record: with nothing draining,
# the rings hold exactly as many records as the aggregates count requests.
sub records_match_aggregates {
    my $records = 0;
    $records += usage_ring_records($_) for 0 .. usage_slot_count() - 1;
    my $aggregated = 0;
    $aggregated += $_->{requests} for usage_aggregates();
    return $records == $aggregated;
}

our $TOTAL_BEFORE;
sub aggregated_total {
    return 0 unless -e $ENV{TEST_NGINX_APIKEY_USAGE};
    my $n = 0;
    $n += $_->{requests} for usage_aggregates();
    return $n;
}

run_tests();

__DATA__

=== TEST 1: one key: an entry per (method, endpoint label) with exact status classes, histogram, bytes, hour, last use and address
--- http_config eval: $main::HTTP
--- config eval: $main::CONF
--- init
$main::T0 = time;
--- request eval
[ ("GET /a/t.txt") x 5, "GET /a/missing.txt", "GET /a/missing.txt",
  "POST /a/t.txt", "HEAD /b/t.txt" ]
--- more_headers
X-API-Key: $TEST_NGINX_KEY_MAIN
--- error_code eval
[ (200) x 5, 404, 404, 405, 200 ]
--- check
my $want = join "\n",
    'GET | /a/ | 7 | 5 | 0 | 2 | 0 | 0 | 7',
    'HEAD | /b/ | 1 | 1 | 0 | 0 | 0 | 0 | 1',
    'POST | /a/ | 1 | 0 | 0 | 1 | 0 | 0 | 1';
ok_eventually(sub { main::agg_table('main') eq $want }, 5, "$block->{name} - the key's aggregates")
    or diag("got:\n" . main::agg_table('main') . "\nwant:\n$want");
my @e = grep { $_->{key_id} eq $main::K{main}{key_id} } usage_aggregates();
my $now = time;
is(scalar(grep { $_->{hour} < int($main::T0 / 3600) || $_->{hour} > int($now / 3600) } @e), 0,
   "$block->{name} - the hour of each entry is this UTC hour");
is(scalar(grep { $_->{last_used_us} < ($main::T0 - 1) * 1e6 || $_->{last_used_us} > ($now + 1) * 1e6 } @e), 0,
   "$block->{name} - last use within the test's requests");
is(scalar(grep { $_->{ip} ne '127.0.0.1' } @e), 0, "$block->{name} - the client's address");
my ($get) = grep { $_->{method} eq 'GET' } @e;
ok($get && $get->{bytes} > 7 * 100, "$block->{name} - bytes sent add up (" . ($get ? $get->{bytes} : '?') . ')');
ok(main::records_match_aggregates(), "$block->{name} - one raw record per aggregated request");
is_deeply(usage_agg_counters(), { overflow => 0, label_overflow => 0, histogram_overflow => 0 },
          "$block->{name} - no overflow");
--- no_error_log eval: $main::NO_ERRORS



=== TEST 2: requests without a usable key add nothing
--- http_config eval: $main::HTTP
--- config eval: $main::CONF
--- init
$main::TOTAL_BEFORE = main::aggregated_total();
--- raw_request eval
[ build_request('GET /a/t.txt'),
  build_request('GET /a/t.txt', ['X-API-Key: not-a-key']),
  build_request('GET /a/t.txt', ['X-API-Key: ' . make_key()]) ]
--- error_code: 401
--- check
# the log phase runs after the response: give it the time a recorded
# request would need
sleep 0.3;
is(main::aggregated_total(), $main::TOTAL_BEFORE, "$block->{name} - nothing aggregated");
ok(main::records_match_aggregates(), "$block->{name} - and no record either");



=== TEST 3: expired, revoked and forbidden keys are aggregated under the key, with the status sent
--- http_config eval: $main::HTTP
--- config eval: $main::CONF
--- raw_request eval
[ build_request('GET /a/t.txt', ["X-API-Key: $main::K{expired}{key}"]),
  build_request('GET /a/t.txt', ["X-API-Key: $main::K{revoked}{key}"]),
  (build_request('GET /admin/t.txt', ["X-API-Key: $main::K{quiet}{key}"])) x 2 ]
--- error_code eval
[ 401, 401, 403, 403 ]
--- check
ok_eventually(sub {
    main::agg_table('expired') eq 'GET | /a/ | 1 | 0 | 0 | 1 | 0 | 0 | 1'
        && main::agg_table('revoked') eq 'GET | /a/ | 1 | 0 | 0 | 1 | 0 | 0 | 1'
        && main::agg_table('quiet') eq 'GET | /admin/ | 2 | 0 | 0 | 2 | 0 | 0 | 2'
}, 5, "$block->{name} - aggregated as recorded")
    or diag(join "\n", map { "$_:\n" . main::agg_table($_) } qw(expired revoked quiet));
ok(main::records_match_aggregates(), "$block->{name} - one raw record per aggregated request");



=== TEST 4: apikey_usage off adds nothing
--- http_config eval: $main::HTTP
--- config eval: $main::CONF
--- init
$main::TOTAL_BEFORE = main::aggregated_total();
--- request
GET /off/t.txt
--- more_headers
X-API-Key: $TEST_NGINX_KEY_MAIN
--- error_code: 200
--- check
sleep 0.3;
is(main::aggregated_total(), $main::TOTAL_BEFORE, "$block->{name} - nothing aggregated");



=== TEST 5: aggregate=1024 holds 64 labels a buffer: the 65th distinct endpoint on is aggregated under "(other)" and counted
--- http_config eval: apikey_http_config(usage => '4m', aggregate => 1024)
--- config eval: $main::CONF
--- request eval
[ map { "GET /v/$_" } 1 .. 70 ]
--- more_headers
X-API-Key: $TEST_NGINX_KEY_LABELS
--- error_code: 404
--- check
is(usage_agg_entries(), 1024, "$block->{name} - a segment of 1024 entries per buffer");
my @labelled = map { "GET | /v/$_ | 1 | 0 | 0 | 1 | 0 | 0 | 1" } 1 .. 64;
my $want = join "\n", '(other) | (other) | 6 | 0 | 0 | 6 | 0 | 0 | 6', sort @labelled;
ok_eventually(sub { main::agg_table('labels') eq $want }, 5,
              "$block->{name} - 64 labels, then (other)")
    or diag("got:\n" . main::agg_table('labels'));
is(usage_agg_counters()->{label_overflow}, 6, "$block->{name} - 6 label overflows counted");
ok(main::records_match_aggregates(), "$block->{name} - every request still has its record");
--- no_error_log eval: $main::NO_ERRORS
