# Rollups and api_keys counters come from the workers' aggregates: for a
# mixed load (several keys, endpoints, methods, statuses) every rollup row
# holds exactly the requests served, and sum(hourly) = sum(daily) =
# request_count = raw rows = requests served with a known key; requests
# without a usable key count nowhere. A buffer whose label table is full
# aggregates the rest under "(other)", still counted (TEST 2: a buffer of
# aggregate=1024 holds 64 labels and is collected every 250 ms, so 600
# distinct labels overflow at least one buffer however the requests fall).

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;

start_postgres();
start_apikeyd();

our $org = apikeyctl('org', 'create', 'aggregates');
our %K = map { ($_ => new_key($org->{org_id}, $_)) } qw(k1 k2 revoked);
apikeyctl('key', 'revoke', $K{revoked}{key_id});
$ENV{TEST_NGINX_ORG_ID} = $org->{org_id};
wait_key_results({ $K{k1}{key} => 'ok', $K{k2}{key} => 'ok', $K{revoked}{key} => 'revoked' },
                 10, 'key table published');

our $HTML = $ENV{TEST_NGINX_HTML_DIR};
our $UP = <<'EOF';
location = /up/201 { return 201 "made\n"; }
location = /up/302 { return 302 /elsewhere; }
location = /up/404 { return 404; }
location = /up/503 { return 503; }
EOF

# raw($method, $path, $key) -> the request's bytes (its own key header).
sub raw {
    my ($method, $path, $key) = @_;
    return "$method $path HTTP/1.1\r\nHost: localhost\r\n"
        . (defined $key ? "X-API-Key: $key\r\n" : '')
        . "Connection: close\r\n\r\n";
}

# [method, path, key name or undef, status], in the order sent
our @MIXED = (
    (map { ['GET', '/a/t.txt', 'k1', 200] } 1 .. 3),
    ['HEAD', '/a/t.txt', 'k1', 200],
    (map { ['GET', '/up/201', 'k1', 201] } 1 .. 2),
    ['GET', '/up/302', 'k1', 302],
    (map { ['GET', '/up/404', 'k1', 404] } 1 .. 2),
    ['GET', '/up/503', 'k1', 503],
    (map { ['POST', '/up/201', 'k1', 201] } 1 .. 2),
    (map { ['GET', '/a/t.txt', 'k2', 200] } 1 .. 2),
    (map { ['GET', '/b/t.txt', 'k2', 200] } 1 .. 2),
    ['DELETE', '/up/404', 'k2', 404],
    (map { ['GET', '/a/t.txt', 'revoked', 401] } 1 .. 2),
    ['GET', '/a/t.txt', undef, 401],                  # no key: not aggregated
    ['GET', '/b/t.txt', 'nokey', 401],                # unknown key
);
our %KEYS = ((map { ($_ => $K{$_}{key}) } keys %K), nokey => make_key());

run_tests();

__DATA__

=== TEST 1: a mixed load: rollup rows, request_count and raw rows agree exactly
--- http_config eval
apikey_http_config(usage => '', upstream => $main::UP)
--- config eval
"location /a/ { apikey on; apikey_endpoint \"a\"; alias $main::HTML/; }\n"
. "location /b/ { apikey on; alias $main::HTML/; }\n"
. "location /up/ { apikey on; apikey_endpoint \"up\"; "
. "proxy_pass http://127.0.0.1:$ENV{TEST_NGINX_UPSTREAM_PORT}; }\n"
--- raw_request eval
[ map { main::raw($_->[0], $_->[1], defined $_->[2] ? $main::KEYS{ $_->[2] } : undef) } @main::MIXED ]
--- error_code eval
[ map { $_->[3] } @main::MIXED ]
--- sql
SELECT k.name, h.endpoint, h.method, sum(h.requests), sum(h.status_2xx),
       sum(h.status_3xx), sum(h.status_4xx), sum(h.status_5xx), sum(h.status_other)
  FROM api_key_usage_hourly h JOIN api_keys k ON k.id = h.key_id
 WHERE h.org_id = :'TEST_NGINX_ORG_ID'
 GROUP BY 1, 2, 3 ORDER BY 1, h.endpoint COLLATE "C", h.method COLLATE "C"
=> k1 | a | GET | 3 | 3 | 0 | 0 | 0 | 0
=> k1 | a | HEAD | 1 | 1 | 0 | 0 | 0 | 0
=> k1 | up | GET | 6 | 2 | 1 | 2 | 1 | 0
=> k1 | up | POST | 2 | 2 | 0 | 0 | 0 | 0
=> k2 | /b/ | GET | 2 | 2 | 0 | 0 | 0 | 0
=> k2 | a | GET | 2 | 2 | 0 | 0 | 0 | 0
=> k2 | up | DELETE | 1 | 0 | 0 | 1 | 0 | 0
=> revoked | a | GET | 2 | 0 | 0 | 2 | 0 | 0
SELECT k.name, k.request_count,
       (SELECT sum(requests) FROM api_key_usage_hourly WHERE key_id = k.id),
       (SELECT sum(requests) FROM api_key_usage_daily WHERE key_id = k.id),
       (SELECT sum(x) FROM api_key_usage_hourly h, unnest(h.latency_hist) x
         WHERE h.key_id = k.id),
       (SELECT count(*) FROM api_key_usage WHERE key_id = k.id),
       host(k.last_used_ip), k.last_used_at > now() - interval '1 minute'
  FROM api_keys k WHERE k.org_id = :'TEST_NGINX_ORG_ID' ORDER BY k.name
=> k1 | 12 | 12 | 12 | 12 | 12 | 127.0.0.1 | t
=> k2 | 5 | 5 | 5 | 5 | 5 | 127.0.0.1 | t
=> revoked | 2 | 2 | 2 | 2 | 2 | 127.0.0.1 | t
SELECT count(*) FROM usage_aggregate_offsets WHERE epoch > 0
=> 1
--- metrics
apikey_agg_requests_committed_total +19
apikey_agg_buffers_duplicate_total +0
apikey_agg_entries_rejected_total +0
apikey_agg_overflow_total +0
apikey_agg_label_overflow_total +0
apikey_agg_histogram_overflow_total +0
apikey_records_committed_total +19
--- no_error_log
[error]



=== TEST 2: a full label table: the rest is aggregated under "(other)", still counted
--- http_config eval
"apikey_keys $ENV{TEST_NGINX_APIKEY_KEYS};\n"
. "apikey_usage $ENV{TEST_NGINX_APIKEY_USAGE} size=4m aggregate=1024;\n"
--- config eval
"location /v/ { apikey on; apikey_endpoint \$request_uri; alias $main::HTML/; }\n"
--- raw_request eval
[ map { main::raw('GET', "/v/t.txt?n=$_", $main::KEYS{k2}) } 1 .. 600 ]
--- sql
SELECT sum(requests), count(*) FILTER (WHERE endpoint <> '(other)')
       + sum(requests) FILTER (WHERE endpoint = '(other)'),
       sum(requests) FILTER (WHERE endpoint = '(other)') > 0,
       bool_and(method = '(other)') FILTER (WHERE endpoint = '(other)'),
       bool_and(requests = 1) FILTER (WHERE endpoint <> '(other)')
  FROM api_key_usage_hourly WHERE endpoint LIKE '/v/%' OR endpoint = '(other)'
=> 600 | 600 | t | t | t
--- check
ok_eventually(sub {
    my $other = psql_one(q{SELECT coalesce(sum(requests), 0) FROM api_key_usage_hourly
                            WHERE endpoint = '(other)'});
    $other > 0 && metric_sum(apikeyd_metrics(), 'apikey_agg_label_overflow_total') == $other;
}, 10, 'TEST 2: apikey_agg_label_overflow_total = the requests under "(other)"');
--- no_error_log
[error]
