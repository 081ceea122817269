# Usage capture end to end: requests with a key become exactly one
# api_key_usage row each, with the right fields; hourly and daily rollups
# and api_keys.request_count / last_used_* add up; requests without a usable
# key are counted on /metrics, never stored; `apikey_usage off` and
# `apikey off` locations record nothing; `--raw-events off` keeps rollups
# and counters but no raw rows.

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;

start_postgres();
# Every apikeyd session talks UTF-8 whatever its conninfo says: with
# LATIN1 here, the UTF-8 user agents below would be stored as mojibake.
start_apikeyd(db => "$ENV{TEST_APIKEY_DB} client_encoding=LATIN1");

our $org  = apikeyctl('org', 'create', 'usage-rows');
our $k    = new_key($org->{org_id}, 'main', '--scopes', 'read');
our $rev  = new_key($org->{org_id}, 'to-revoke');
our $gone = new_key($org->{org_id}, 'deleted');
apikeyctl('key', 'revoke', $rev->{key_id});
psql(q{DELETE FROM api_keys WHERE id = :'id'}, { id => $gone->{key_id} });

%ENV = (%ENV,
    TEST_NGINX_KEY         => $k->{key},
    TEST_NGINX_KEY_ID      => $k->{key_id},
    TEST_NGINX_ORG_ID      => $org->{org_id},
    TEST_NGINX_REVOKED_KEY => $rev->{key},
    TEST_NGINX_GONE_KEY    => $gone->{key},
    TEST_NGINX_TYPO_KEY    => substr($k->{key}, 0, -1) . (substr($k->{key}, -1) eq 'A' ? 'B' : 'A'),
);
wait_key_results({ $k->{key} => 'ok', $rev->{key} => 'revoked', $gone->{key} => 'unknown' },
                 10, 'key table published');

# One server for every block (the same segment size, so the segment and its
# counters carry over from block to block). Endpoint labels are cut to the
# record's 96 bytes at configuration time: a long location name, and a
# constant label whose cut falls inside a UTF-8 character (kept whole or
# dropped whole, never split).
our $LONG_LOC = '/long-' . ('0123456789' x 10) . '/';                 # 107 bytes
our $EURO_EP  = ('e' x 95) . "\xe2\x82\xac";                           # 98 bytes
our $HTTP = apikey_http_config(usage => '4m',
                               upstream => 'location / { return 500 "boom\n"; }');
our $CONF = <<"EOF";
location /static/ { apikey on; alias $ENV{TEST_NGINX_HTML_DIR}/; log_not_found off; }
location /up/     { apikey on; proxy_pass http://127.0.0.1:$ENV{TEST_NGINX_UPSTREAM_PORT}; }
location /admin/  { apikey on; apikey_scope admin; alias $ENV{TEST_NGINX_HTML_DIR}/; }
location /orders/ { apikey on; apikey_endpoint "orders"; alias $ENV{TEST_NGINX_HTML_DIR}/; }
location /var/    { apikey on; apikey_endpoint "v-\$request_method"; alias $ENV{TEST_NGINX_HTML_DIR}/; }
location ~ \\.json\$ { apikey on; }
location /nocap/  { apikey on; apikey_usage off; alias $ENV{TEST_NGINX_HTML_DIR}/; }
location /open/   { alias $ENV{TEST_NGINX_HTML_DIR}/; }
location $LONG_LOC { apikey on; alias $ENV{TEST_NGINX_HTML_DIR}/; }
location /euro/   { apikey on; apikey_endpoint "$EURO_EP"; alias $ENV{TEST_NGINX_HTML_DIR}/; }
EOF
our $NO_ERRORS = qr/\[(?:error|alert|crit|emerg)\]/;

# --- the traffic of TEST 1: one key, every kind of request ---------------------------

our $UA         = 't020-agent/1.0 (test)';
our $LONG_UA    = 'L' x 50 . '0123456789' x 25;                     # 300 bytes of ASCII
our $FULL_UA    = 'F' x 6 . '0123456789' x 25;                      # 256 bytes: kept whole
our $UTF_UA     = 'ab' . ("\xe2\x82\xac" x 100);                    # "ab" + 100 x U+20AC: 302 bytes
our $BAD_UA     = "bad\xff\xfe\xc3(ua\x01\x7f\\N'\"end";            # not UTF-8, control bytes, COPY escapes
our $BAD_CUT_UA = ('c' x 254) . "\xe2\x82\xac\xe2\x82" . 'z' x 10;  # a 3-byte char across the 256-byte cut

# [method, path, status, endpoint, result, user agent sent, user agent stored, bearer]
our @PLAN;
sub plan_n { my ($n, @p) = @_; push @PLAN, ([@p]) x $n }
plan_n(8, 'GET', '/static/t.txt', 200, '/static/', 'ok');
plan_n(1, 'HEAD', '/static/t.txt', 200, '/static/', 'ok');
plan_n(4, 'GET', '/static/missing.txt', 404, '/static/', 'ok');
plan_n(3, 'GET', '/up/x', 500, '/up/', 'ok');
plan_n(2, 'POST', '/up/y', 500, '/up/', 'ok');
plan_n(1, 'POST', '/static/t.txt', 405, '/static/', 'ok');
plan_n(3, 'GET', '/admin/t.txt', 403, '/admin/', 'forbidden');
plan_n(3, 'GET', '/orders/t.txt', 200, 'orders', 'ok');
plan_n(1, 'GET', '/var/t.txt', 200, 'v-GET', 'ok');
plan_n(2, 'GET', '/t.json', 200, '\\.json$', 'ok');
plan_n(1, 'DELETE', '/static/t.txt', 405, '/static/', 'ok');
plan_n(1, 'PROPFIND', '/static/t.txt', 405, '/static/', 'ok');
plan_n(1, 'GET', "${LONG_LOC}t.txt", 200, substr($LONG_LOC, 0, 96), 'ok');
plan_n(1, 'GET', '/euro/t.txt', 200, 'e' x 95, 'ok');
plan_n(1, 'GET', '/static/index.html', 200, '/static/', 'ok', $LONG_UA, substr($LONG_UA, 0, 256));
plan_n(1, 'GET', '/static/index.html', 200, '/static/', 'ok', $FULL_UA, $FULL_UA);
# a UTF-8 user agent is cut at a character boundary: 254 bytes, not 256
plan_n(1, 'GET', '/static/index.html', 200, '/static/', 'ok', $UTF_UA, 'ab' . ("\xe2\x82\xac" x 84));
plan_n(1, 'GET', '/static/t.txt', 200, '/static/', 'ok', $UA, $UA, 'bearer');
# poison: invalid UTF-8 and control bytes (sanitised, the readable text
# kept, no NUL); a character cut at 256 bytes is dropped whole
plan_n(1, 'GET', '/static/index.html', 200, '/static/', 'ok', $BAD_UA,
       "bad\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd(ua\x01\x7f\\N'\"end");
plan_n(1, 'GET', '/static/index.html', 200, '/static/', 'ok', $BAD_CUT_UA, 'c' x 254);

sub plan_requests {
    return [ map {
        my ($m, $path, undef, undef, undef, $ua, undef, $bearer) = @$_;
        build_request("$m $path",
                      [ ($bearer ? "Authorization: Bearer $k->{key}" : "X-API-Key: $k->{key}"),
                        'User-Agent: ' . ($ua // $UA) ],
                      $m eq 'POST' ? 'data' : undef);
    } @PLAN ];
}

# usage_rows table: one line per distinct row of @PLAN (and @more), counted.
sub plan_table {
    my (@more) = @_;
    my %n;
    for (@PLAN, @more) {
        my ($m, undef, $st, $ep, $res, undef, $stored) = @$_;
        $n{ join ' | ', 'main', 'usage-rows', '127.0.0.1', 'test', $ep, $m, $st, $res,
                        $stored // $UA }++;
    }
    return join "\n", 'key | org | ip | node | endpoint | method | status | result | user_agent | count',
        map { "$_ | $n{$_}" } sort keys %n;
}

# requests and status classes of @PLAN plus the expired-key block's two 401s
sub totals {
    my %c = (all => @PLAN + 2, '4xx' => 2);
    $c{ int($_->[2] / 100) . 'xx' }++ for @PLAN;
    return join ' | ', map { $c{$_} // 0 } qw(all 2xx 3xx 4xx 5xx other);
}

run_tests();

__DATA__

=== TEST 1: requests with one key: one row each, with the endpoint, method, status, result and fields as sent
--- http_config eval: $HTTP
--- config eval: $CONF
--- raw_request eval: plan_requests()
--- error_code eval: [ map { $_->[2] } @PLAN ]
--- usage_rows eval: plan_table()
--- sql
SELECT count(*) FILTER (WHERE bytes_sent <= 0),
       count(*) FILTER (WHERE response_time_ms < 0 OR response_time_ms > 5000),
       count(*) FILTER (WHERE ts < now() - interval '2 minutes' OR ts > now() + interval '5 seconds')
  FROM api_key_usage WHERE key_id = :'TEST_NGINX_KEY_ID'
=> 0 | 0 | 0
SELECT min(bytes_sent) > 6 FROM api_key_usage WHERE key_id = :'TEST_NGINX_KEY_ID'
   AND method = 'GET' AND status_code = 200 AND endpoint = '/static/'
=> t
SELECT sum(requests) FROM api_key_usage_hourly WHERE key_id = :'TEST_NGINX_KEY_ID' AND endpoint = 'orders'
=> 3
--- metrics eval
"apikey_ring_dropped_total +0
apikey_records_duplicate_total +0
apikey_requests_unrecorded_total +0
apikey_records_committed_total +" . scalar(@PLAN)
--- no_error_log eval: $NO_ERRORS



=== TEST 2: the same key expired: its requests are still recorded, as 401 expired; rollups and the key's counters add up
--- init
psql(q{UPDATE api_keys SET expires_at = now() - interval '1 minute' WHERE id = :'id'},
     { id => $k->{key_id} });
wait_key_results({ $k->{key} => 'expired' }, 5, 'expiry published');
--- http_config eval: $HTTP
--- config eval: $CONF
--- request eval
["GET /static/t.txt", "GET /static/t.txt"]
--- more_headers
X-API-Key: $TEST_NGINX_KEY
User-Agent: t020-agent/1.0 (test)
--- error_code: 401
--- usage_rows
key  | endpoint | method | status | result  | count
main | /static/ | GET    | 401    | expired | 2
--- sql eval
my $t = totals();
my ($n) = $t =~ /^(\d+)/;
<<"EOF";
SELECT sum(requests), sum(status_2xx), sum(status_3xx), sum(status_4xx), sum(status_5xx), sum(status_other)
  FROM api_key_usage_hourly WHERE key_id = :'TEST_NGINX_KEY_ID'
=> $t
SELECT sum(requests), sum(status_2xx), sum(status_3xx), sum(status_4xx), sum(status_5xx), sum(status_other)
  FROM api_key_usage_daily WHERE key_id = :'TEST_NGINX_KEY_ID'
=> $t
SELECT sum((SELECT sum(x) FROM unnest(latency_hist) x)),
       round(sum(response_time_ms_sum)::numeric, 3) = (SELECT round(sum(response_time_ms)::numeric, 3)
                                                         FROM api_key_usage WHERE key_id = :'TEST_NGINX_KEY_ID')
  FROM api_key_usage_hourly WHERE key_id = :'TEST_NGINX_KEY_ID'
=> $n | t
SELECT request_count, host(last_used_ip),
       last_used_at = (SELECT max(ts) FROM api_key_usage WHERE key_id = k.id)
  FROM api_keys k WHERE id = :'TEST_NGINX_KEY_ID'
=> $n | 127.0.0.1 | t
EOF
--- apikeyctl eval
my ($n) = totals() =~ /^(\d+)/;
<<"EOF";
\$ --json key list --org $ENV{TEST_NGINX_ORG_ID}
json keys.0.name: main
json keys.0.request_count: $n
json keys.0.last_used_ip: 127.0.0.1
json keys.0.status: expired
EOF
--- no_error_log eval: $NO_ERRORS



=== TEST 3: no key, malformed or unknown: 401, counted on /metrics, never stored
--- http_config eval: $HTTP
--- config eval: $CONF
--- raw_request eval
[map { "GET $_\r\n" } "/static/t.txt HTTP/1.0\r\n", "/static/t.txt HTTP/1.0\r\n",
 "/static/t.txt HTTP/1.0\r\nX-API-Key:\r\n", "/static/t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_TYPO_KEY}\r\n",
 "/static/t.txt HTTP/1.0\r\nX-API-Key: ak_garbage\r\n", "/static/t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_GONE_KEY}\r\n",
 "/up/x HTTP/1.0\r\nAuthorization: Bearer $ENV{TEST_NGINX_GONE_KEY}\r\n"]
--- error_code: 401
--- usage_rows
--- metrics
apikey_requests_unrecorded_total{result="missing"} +3
apikey_requests_unrecorded_total{result="malformed"} +2
apikey_requests_unrecorded_total{result="unknown"} +2
apikey_requests_unrecorded_total{result="unavailable"} +0
apikey_records_committed_total +0
--- no_error_log eval: $NO_ERRORS



=== TEST 4: apikey_usage off and apikey off locations answer 200 and record nothing
--- init
psql(q{UPDATE api_keys SET expires_at = NULL WHERE id = :'id'}, { id => $k->{key_id} });
wait_key_results({ $k->{key} => 'ok' }, 5, 'key valid again');
--- http_config eval: $HTTP
--- config eval: $CONF
--- request eval
[("GET /nocap/t.txt") x 3, ("GET /open/t.txt") x 2]
--- more_headers
X-API-Key: $TEST_NGINX_KEY
--- error_code: 200
--- usage_rows
--- metrics
apikey_requests_unrecorded_total +0
apikey_records_committed_total +0
--- no_error_log eval: $NO_ERRORS



=== TEST 5: a revoked key: one row per request, result revoked, status 401
--- http_config eval: $HTTP
--- config eval: $CONF
--- request eval
["GET /static/t.txt", "GET /up/x"]
--- more_headers
X-API-Key: $TEST_NGINX_REVOKED_KEY
--- error_code: 401
--- usage_rows
key       | endpoint | method | status | result  | count
to-revoke | /static/ | GET    | 401    | revoked | 1
to-revoke | /up/     | GET    | 401    | revoked | 1
--- no_error_log eval: $NO_ERRORS



=== TEST 6: --raw-events off: no raw rows, but request_count, the rollups and the ring offsets advance
--- init
our ($count0, $hourly0, $daily0) = @{ psql(q{SELECT request_count,
    (SELECT sum(requests) FROM api_key_usage_hourly WHERE key_id = k.id),
    (SELECT sum(requests) FROM api_key_usage_daily WHERE key_id = k.id)
    FROM api_keys k WHERE id = :'id'}, { id => $k->{key_id} })->[0] };
our $offsets0 = psql_one(q{SELECT sum(next_sequence) FROM usage_offsets WHERE node = 'test'});
restart_apikeyd(args => [ '--raw-events', 'off' ]);
--- http_config eval: $HTTP
--- config eval: $CONF
--- request eval
[("GET /static/t.txt") x 10]
--- more_headers
X-API-Key: $TEST_NGINX_KEY
--- error_code: 200
--- usage_rows
--- sql eval
<<"EOF"
SELECT request_count - $count0 FROM api_keys WHERE id = :'TEST_NGINX_KEY_ID'
=> 10
SELECT sum(requests) - $hourly0 FROM api_key_usage_hourly WHERE key_id = :'TEST_NGINX_KEY_ID'
=> 10
SELECT sum(requests) - $daily0 FROM api_key_usage_daily WHERE key_id = :'TEST_NGINX_KEY_ID'
=> 10
SELECT sum(next_sequence) > $offsets0 FROM usage_offsets WHERE node = 'test'
=> t
EOF
--- no_error_log eval: $NO_ERRORS



=== TEST 7: --raw-events on again: raw rows for the new requests only, nothing from the off period replayed
--- init
restart_apikeyd(args => []);
--- http_config eval: $HTTP
--- config eval: $CONF
--- request eval
[("GET /static/t.txt") x 2]
--- more_headers
X-API-Key: $TEST_NGINX_KEY
User-Agent: t020-agent/1.0 (test)
--- error_code: 200
--- usage_rows
key  | endpoint | method | status | result | user_agent            | count
main | /static/ | GET    | 200    | ok     | t020-agent/1.0 (test) | 2
--- check
unlike(apikeyd_log(), qr/\b(?:error|ERROR)\b/, "$block->{name} - no errors in apikeyd.log")
    or diag(join "\n", grep { /error/i } split /\n/, apikeyd_log());
--- no_error_log eval: $NO_ERRORS
