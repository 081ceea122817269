# The shim's less travelled paths, end to end: the methods recorded by
# name from the shim's table, a request answered before the access phase
# (recorded by the location it ended in), $apikey_name without a key, a
# client over IPv6, the error log of a limit_except block, and an error log
# with a writer of its own (syslog): keys masked there too.

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use IO::Socket::INET;
use IO::Socket::IP;

start_postgres();
start_apikeyd();

our $org = apikeyctl('org', 'create', 'module-paths');
our $k   = new_key($org->{org_id}, 'main');

# A syslog "server": nginx sends each message as one UDP datagram.
our $SYSLOG = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                    Proto => 'udp')
    or die "udp socket: $!";

%ENV = (%ENV,
    TEST_NGINX_KEY         => $k->{key},
    TEST_NGINX_KEY_ID      => $k->{key_id},
    TEST_NGINX_SYSLOG_PORT => $SYSLOG->sockport,
);
wait_key_results({ $k->{key} => 'ok' }, 10, 'key table published');

our @SECRETS = key_secrets(main => $k->{key});
our $HINT    = substr($k->{key}, 0, 7);
our $HTTP    = apikey_http_config(usage => '4m');

# -> every datagram the syslog socket holds now
sub syslog_datagrams {
    my @got;
    $SYSLOG->blocking(0);
    while (defined $SYSLOG->recv(my $buf, 65536)) {
        last unless length $buf;
        push @got, $buf;
    }
    return @got;
}

run_tests();

__DATA__

=== TEST 1: PUT, OPTIONS and PATCH are recorded by name (the static handler answers 405)
--- http_config eval: $main::HTTP
--- config
location /m/ { apikey on; alias html/; }
--- request eval
["PUT /m/t.txt", "OPTIONS /m/t.txt", "PATCH /m/t.txt"]
--- more_headers
X-API-Key: $TEST_NGINX_KEY
--- error_code: 405
--- usage_rows
key  | endpoint | method  | status | result
main | /m/      | PUT     | 405    | ok
main | /m/      | OPTIONS | 405    | ok
main | /m/      | PATCH   | 405    | ok
--- no_error_log
[error]



=== TEST 2: answered before the access phase: a variable looked the key up, the location records the request
--- http_config eval: $main::HTTP
--- config
location /early/ { apikey on; return 200 "id=$apikey_id\n"; }
--- request
GET /early/x
--- more_headers
X-API-Key: $TEST_NGINX_KEY
--- response_body
id=$TEST_NGINX_KEY_ID
--- usage_rows
key  | endpoint | method | status | result
main | /early/  | GET    | 200    | ok
--- no_error_log
[error]



=== TEST 3: $apikey_name of a request without a key is empty; nothing is recorded
--- http_config eval: $main::HTTP
--- config
location /n/ { return 200 "name=[$apikey_name] result=$apikey_result\n"; }
--- request
GET /n/
--- response_body
name=[] result=missing
--- usage_rows
--- no_error_log
[error]



=== TEST 4: a client over IPv6: its address is recorded
--- http_config eval: $main::HTTP
--- config
listen [::1]:$TEST_NGINX_SERVER_PORT;
location /v6/ { apikey on; alias html/; }
--- request
GET /v6/t.txt
--- more_headers
X-API-Key: $TEST_NGINX_KEY
--- response_body
hello
--- check
my $sock = IO::Socket::IP->new(PeerHost => '::1',
                               PeerPort => $ENV{TEST_NGINX_SERVER_PORT},
                               Timeout => 5);
ok($sock, "$block->{name} - connected to [::1]") or diag("connect: $@");
my $answer = '';
if ($sock) {
    print $sock build_request('GET /v6/t.txt', ["X-API-Key: $ENV{TEST_NGINX_KEY}"]);
    local $/;
    $answer = <$sock> // '';
}
like($answer, qr{\AHTTP/1\.1 200 }, "$block->{name} - answered 200 over IPv6");
--- usage_rows
key  | endpoint | ip        | status | result
main | /v6/     | 127.0.0.1 | 200    | ok
main | /v6/     | ::1       | 200    | ok
--- no_error_log
[error]



=== TEST 5: a limit_except block logs into its location's error_log, keys masked
--- log_level: info
--- http_config eval: $main::HTTP
--- config
location /le/ {
    apikey on;
    alias html/;
    error_log logs/le.log info;
    limit_except GET { deny all; }
}
--- request eval
"POST /le/t.txt?api_key=$ENV{TEST_NGINX_KEY}"
--- more_headers
X-API-Key: $TEST_NGINX_KEY
--- error_code: 403
--- check
my $log = slurp(servroot_path('logs', 'le.log')) // '';
like($log, qr/access forbidden by rule.*request: "POST \/le\/t\.txt\?api_key=\Q$main::HINT\E\*{32} HTTP\/1\.1"/,
     "$block->{name} - the denial is logged, the key in its request line masked");
is_deeply([ secrets_in($log, @main::SECRETS) ], [], "$block->{name} - no secret in the location's log");
--- usage_rows
key  | endpoint | method | status | result
main | /le/     | POST   | 403    | ok



=== TEST 6: an error log with a writer of its own (syslog): masked before it is handed over
--- log_level: info
--- http_config eval: $main::HTTP
--- config
location /sl/ {
    apikey on;
    alias html/;
    error_log syslog:server=127.0.0.1:$TEST_NGINX_SYSLOG_PORT,tag=t015 info;
}
--- init
main::syslog_datagrams();    # drop what earlier blocks sent
--- request eval
"GET /sl/missing.txt?api_key=$ENV{TEST_NGINX_KEY}"
--- more_headers
X-API-Key: $TEST_NGINX_KEY
--- error_code: 404
--- check
my @got;
ok_eventually(sub { push @got, main::syslog_datagrams(); grep { /No such file/ } @got }, 5,
              "$block->{name} - the 404 reached syslog");
my $all = join "\n", @got;
like($all, qr/t015: .*open\(\) ".*missing\.txt" failed .*request: "GET \/sl\/missing\.txt\?api_key=\Q$main::HINT\E\*{32} HTTP\/1\.1"/,
     "$block->{name} - syslog got the message, the key in its request line masked");
is_deeply([ secrets_in($all, @main::SECRETS) ], [], "$block->{name} - no secret in what syslog got");
--- usage_rows
key  | endpoint | method | status | result
main | /sl/     | GET    | 404    | ok



=== TEST 7: redirected internally into an apikey location (no lookup before): the key is checked there
--- http_config eval: $main::HTTP
--- config
location /pre/ { try_files /nothing-here /post/t.txt; }
location /post/ { apikey on; alias html/; }
--- raw_request eval
[ build_request('GET /pre/x', ["X-API-Key: $ENV{TEST_NGINX_KEY}"]),
  build_request('GET /pre/x', []) ]
--- error_code eval
[200, 401]
--- usage_rows
key  | endpoint | status | result
main | /post/   | 200    | ok
--- no_error_log
[error]



=== TEST 8: the key header after 24 others (past the first part of nginx's header list)
--- http_config eval: $main::HTTP
--- config
location /t.txt { apikey on; }
--- request
GET /t.txt
--- more_headers eval
join('', map { "X-Filler-$_: $_\n" } 1 .. 24) . "X-API-Key: $ENV{TEST_NGINX_KEY}\n"
--- response_body
hello
--- no_error_log
[error]



=== TEST 9: a Bearer key followed by a tab (nginx keeps it in the value): the tab is trimmed
--- http_config eval: $main::HTTP
--- config
location /t.txt { apikey on; }
--- raw_request eval
"GET /t.txt HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: Bearer \t$ENV{TEST_NGINX_KEY}\t\r\n\r\n"
--- response_body
hello
--- no_error_log
[error]



=== TEST 10: a variable looked the key up at server level; a location with another header of the same length looks again
--- http_config eval: $main::HTTP
--- config
set $early $apikey_result;
location /tok/ { apikey on; apikey_header X-Token-K; alias html/; }
location /same/ { apikey on; alias html/; }
--- raw_request eval
[ build_request('GET /tok/t.txt', ["X-Token-K: $ENV{TEST_NGINX_KEY}"]),
  build_request('GET /tok/t.txt', ["X-API-Key: $ENV{TEST_NGINX_KEY}"]),
  build_request('GET /same/t.txt', ["X-API-Key: $ENV{TEST_NGINX_KEY}"]) ]
--- error_code eval
[200, 401, 200]
--- usage_rows
key  | endpoint | status | result
main | /tok/    | 200    | ok
main | /same/   | 200    | ok
--- no_error_log
[error]



=== TEST 11: $apikey_result in an http block without apikey_keys: a well-formed key is unavailable, a malformed one malformed
--- config
location /r/ { return 200 "$apikey_result\n"; }
--- raw_request eval
[ build_request('GET /r/', ["X-API-Key: $ENV{TEST_NGINX_KEY}"]),
  build_request('GET /r/', ["X-API-Key: not-a-key"]) ]
--- response_body eval
["unavailable\n", "malformed\n"]
--- no_error_log
[error]
