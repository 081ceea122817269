# Self-tests of the block sections checked after nginx stopped
# (--- usage_rows, --- metrics, --- sql, --- apikeyctl) and of --- port:
# a child .t file runs the same requests twice, once with the right
# expectations (every check passes) and once with wrong ones (each check
# named below fails); a misspelt table, metrics line, query or transcript
# dies with the place named.

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use Test::Apikey::Util qw(run_cmd repo_root);
use Test::Apikey::Outcome qw(parse_table parse_metric_lines parse_sql_queries
                             parse_transcript);

# --- parsers ------------------------------------------------------------------------

{
    my $t = parse_table("key | status | count\n# a comment\na | 200 | 2\na | 200 | 1\nb|401|0\n", 'w');
    is_deeply($t, { columns => [qw(key status)], rows => { "a\0" . '200' => 3 } },
              'usage_rows table: header, cells trimmed, counts summed, 0 rows left out');
    is_deeply(parse_table("key | status\nk | 200\nk | 200\n", 'w')->{rows}, { "k\0" . '200' => 2 },
              'usage_rows table without count: one line per row');
    is_deeply(parse_table('', 'w'), { columns => [], rows => {} }, 'an empty table: no rows');
    like((eval { parse_table("key | sttaus\n", 'here'); 1 } ? '' : $@),
         qr/^here: unknown column 'sttaus'/, 'a misspelt column dies');
    like((eval { parse_table("key | status\nk\n", 'here'); 1 } ? '' : $@),
         qr/^here: 1 cells in 'k', the header has 2/, 'a short line dies');
    is_deeply(parse_metric_lines("a_total +3\nb{x=\"y\"} 1.5\n", 'w'),
              [ { metric => 'a_total', delta => 1, value => 3 },
                { metric => 'b{x="y"}', delta => '', value => 1.5 } ], 'metrics lines');
    like((eval { parse_metric_lines("a_total three\n", 'here'); 1 } ? '' : $@),
         qr/^here: bad metrics line 'a_total three'/, 'a bad metrics line dies');
    is_deeply(parse_sql_queries("SELECT 1,\n 2\n=> 1 | 2\nSELECT 3 WHERE false\n=> (no rows)\n", 'w'),
              [ { sql => "SELECT 1,\n 2\n", rows => [ [ 1, 2 ] ], expected => 1 },
                { sql => "SELECT 3 WHERE false\n", rows => [], expected => 1 } ], 'sql queries');
    like((eval { parse_sql_queries("SELECT 1\n", 'here'); 1 } ? '' : $@),
         qr/^here: query without '=> \.\.\.' rows/, 'a query without expected rows dies');
    my $c = parse_transcript(qq{\$ key list --org "a b"\nexit 1\nstderr like: x+\njson keys.0.name: n\n}, 'w');
    is_deeply($c->[0]{args}, [ 'key', 'list', '--org', 'a b' ], 'apikeyctl: shell-like quoting');
    is_deeply([ map { $_->{kind} } @{ $c->[0]{expect} } ], [qw(exit like json)],
              'apikeyctl: exit, stderr like, json');
    like((eval { parse_transcript("\$ x\nexits 1\n", 'here'); 1 } ? '' : $@),
         qr/^here: bad apikeyctl expectation 'exits 1'/, 'a misspelt expectation dies');
    like((eval { parse_blocks_dies("=== T\n--- usage_row\nx\n"); 1 } ? '' : $@),
         qr/unknown section '--- usage_row'/, 'a misspelt section name dies');
}

sub parse_blocks_dies { Test::Apikey::Blocks::parse_blocks($_[0], 'f', 1) }

# --- the sections, right and wrong, in a child file -----------------------------------

my $child = servroot_path('outcome-child.t');
spew($child, <<'EOF' . do { local $/; <DATA> });
use strict;
use warnings;
use Test::Apikey;
start_postgres();
start_apikeyd();
my $org = apikeyctl('org', 'create', 'outcome');
my $k = new_key($org->{org_id}, 'probe');
%ENV = (%ENV, TEST_NGINX_KEY => $k->{key}, TEST_NGINX_KEY_ID => $k->{key_id},
        TEST_NGINX_ORG_ID => $org->{org_id});
wait_key_results({ $k->{key} => 'ok' }, 10, 'key published');
our $HTTP = apikey_http_config(usage => '1m');
# TEST 1 and 2: two requests with the key (rows), one without (counted)
sub probe_requests {
    return [ ("GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_KEY}\r\n\r\n") x 2,
             "GET /t.txt HTTP/1.0\r\n\r\n" ];
}
run_tests();
__DATA__
EOF

my ($rc, $out, $err) = run_cmd([ $^X, '-I' . repo_root() . '/t/lib', $child ], timeout => 300);
my %result;    # test name (an org id as "...") -> 'ok' / 'not ok'
for (split /\n/, $out) {
    my ($verdict, $name) = /^(ok|not ok) \d+ - (.*)$/ or next;
    $result{ $name =~ s/ --org [0-9a-f-]{36}/ --org .../r } = $verdict;
}
isnt($rc, 0, 'the child file fails (its wrong expectations)');

my @right = grep { /^TEST [14]:/ } sort keys %result;
ok(@right >= 14, scalar(@right) . ' checks of the right expectations ran')
    or diag("exit $rc\n$out$err");
is_deeply([ grep { $result{$_} ne 'ok' } @right ], [],
          'every check of the right expectations passes')
    or diag("$out$err");

my $W = 'TEST 2: wrong expectations';
for my $name (
    "$W - usage rows: exactly the expected ones, no more",
    "$W - metric apikey_requests_unrecorded_total{result=\"missing\"} +2",
    "$W - metric apikey_records_committed_total +3",
    "$W - sql: SELECT request_count FROM api_keys WHERE id = :'TEST_NGINX_KEY_ID'",
    "$W - apikeyctl --json key list --org ...: json keys.0.request_count",
    "$W - apikeyctl key list --org not-a-uuid: exit code",
    "$W - apikeyctl key list --org not-a-uuid: stderr like /no such thing/",
    'TEST 3: a row too few - usage rows: exactly the expected ones, no more',
    'TEST 5: --- port, wrong body - response body',
) {
    is($result{$name} // 'missing', 'not ok', "fails on a wrong expectation: $name");
}

done_testing();

__DATA__

=== TEST 1: right expectations
--- http_config eval: $HTTP
--- config: location /t.txt { apikey on; }
--- raw_request eval: probe_requests()
--- error_code eval: [200, 200, 401]
--- usage_rows
key   | endpoint | method | status | result | count
probe | /t.txt   | GET    | 200    | ok     | 2
--- metrics
apikey_requests_unrecorded_total{result="missing"} +1
apikey_records_committed_total +2
apikey_usage_segment_attached 1
--- sql
SELECT request_count FROM api_keys WHERE id = :'TEST_NGINX_KEY_ID'
=> 2
SELECT endpoint, status_code FROM api_key_usage WHERE key_id = :'TEST_NGINX_KEY_ID'
 GROUP BY 1, 2
=> /t.txt | 200
SELECT 1 WHERE false
=> (no rows)
--- apikeyctl
$ --json key list --org $TEST_NGINX_ORG_ID
json keys.0.request_count: 2
json keys.0.name: probe
json keys.0.expires_at: null
stdout like: "status"\s*:\s*"active"
$ key list --org not-a-uuid
exit 2
stderr like: invalid org id
--- no_error_log
[error]



=== TEST 2: wrong expectations
--- http_config eval: $HTTP
--- config: location /t.txt { apikey on; }
--- raw_request eval: probe_requests()
--- error_code eval: [200, 200, 401]
--- usage_rows
key   | endpoint | method | status | result | count
probe | /t.txt   | GET    | 200    | ok     | 1
--- metrics
apikey_requests_unrecorded_total{result="missing"} +2
apikey_records_committed_total +3
--- sql
SELECT request_count FROM api_keys WHERE id = :'TEST_NGINX_KEY_ID'
=> 3
--- apikeyctl
$ --json key list --org $TEST_NGINX_ORG_ID
json keys.0.request_count: 5
$ key list --org not-a-uuid
exit 0
stderr like: no such thing



=== TEST 3: a row too few
--- http_config eval: $HTTP
--- config: location /t.txt { apikey on; }
--- request
GET /t.txt
--- more_headers
X-API-Key: $TEST_NGINX_KEY
--- usage_rows
key   | endpoint | method | status | result
probe | /t.txt   | GET    | 200    | ok
probe | /t.txt   | GET    | 200    | ok



=== TEST 4: --- port: the requests go to apikeyd, no nginx
--- port: $TEST_APIKEY_API_PORT
--- request
GET /healthz
--- response_headers
Content-Type: application/json
--- response_body_like: "status":\s*"ok"
--- check
is($responses->[0]{json}{database}, 'connected', "$block->{name} - JSON decoded");
is(scalar(all_responses()), 8, "$block->{name} - all_responses() has every response so far");



=== TEST 5: --- port, wrong body
--- port: $TEST_APIKEY_API_PORT
--- request
GET /healthz
--- response_body
nope
