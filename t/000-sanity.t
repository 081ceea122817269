# Self-tests of the Test::Apikey harness: the module loads into a stock
# nginx, every block section works, the HTTP client parses what nginx sends,
# and PostgreSQL / apikeyd come up and are torn down.

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use Test::Apikey::Util qw(expand_vars run_cmd repo_root process_alive);
use Test::Apikey::Blocks qw(parse_blocks section);
use Test::Apikey::Http qw(parse_response);

# --- harness units -------------------------------------------------------

like((eval { expand_vars('x $TEST_NGINX_NOPE_UNSET y', 'here'); 1 } ? '' : $@),
     qr/here uses \$TEST_NGINX_NOPE_UNSET, which is not set/,
     'unset $TEST_NGINX_ variable dies with a clear message');
is(expand_vars('port $TEST_NGINX_SERVER_PORT.', 'here'),
   "port $ENV{TEST_NGINX_SERVER_PORT}.", '$TEST_NGINX_ variables are substituted');

{
    my ($b) = parse_blocks("=== T: x\n--- error_code: 401\n--- response_body\nhi\n\n\n"
                           . "--- error_log eval\nqr/a\\d/\n", 'inline', 1);
    is(section($b, 'error_code'), '401', 'inline section value');
    is(section($b, 'response_body'), "hi\n", 'trailing blank lines are trimmed');
    is(ref section($b, 'error_log'), 'Regexp', 'eval filter');
    like((eval { parse_blocks("=== T\n--- reponse_body\nx\n", 'f', 1); 1 } ? '' : $@),
         qr/f line 2 \('T'\): unknown section '--- reponse_body'/, 'typo in a section name dies');
}

{
    my $r = parse_response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
        . "Set-Cookie: a=1\r\nset-cookie: b=2\r\n\r\n3\r\nhel\r\n3;x=y\r\nlo\n\r\n0\r\n\r\n");
    ok($r->{complete}, 'chunked response is complete after the last chunk');
    is($r->{body}, "hello\n", 'chunked body decoded');
    is($r->{headers}{'set-cookie'}, 'a=1, b=2', 'repeated headers joined, names case-insensitive');
    is(scalar @{ $r->{header_list} }, 3, 'header_list keeps every header line');
    ok(!parse_response("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc")->{complete},
       'Content-Length body incomplete until all bytes arrived');
}

{
    my $t = wait_until(sub { 1 }, 1);
    ok($t >= 0 && $t < 0.5, 'wait_until returns the elapsed time');
    like((eval { wait_until(sub { 0 }, 0.2, 'never'); 1 } ? '' : $@),
         qr/wait_until: never not met within 0.2s/, 'wait_until dies on timeout');
}

isnt($ENV{TEST_NGINX_SERVER_PORT}, $ENV{TEST_NGINX_UPSTREAM_PORT}, 'two distinct ports');
is(sprintf('%04o', (stat $ENV{TEST_NGINX_SERVROOT})[2] & 07777), '0755',
   'server root is traversable by nginx workers');

# --- nginx from Perl ------------------------------------------------------

start_nginx(config => 'location = /v { return 200 "v1\n"; }');
is(http_get('/v')->{body}, "v1\n", 'start_nginx from Perl');
reload_nginx(config => 'location = /v { return 200 "v2\n"; }');
ok_eventually(sub { http_get('/v')->{body} eq "v2\n" }, 5, 'reload_nginx: the new config is served');
like((eval { reload_nginx(config => 'bogus_directive;'); 1 } ? '' : $@),
     qr/nginx rejected the reload:.*unknown directive "bogus_directive"/s,
     'reload_nginx dies with the [emerg] line');
stop_nginx();
my $down = http_get('/v');
is($down->{status}, 0, 'after stop_nginx, http_get reports status 0');
like($down->{error}, qr/connect to port \d+/, '... and the connect error');

# --- PostgreSQL ----------------------------------------------------------

my $pg = start_postgres();
is_deeply(psql('select 1'), [ [1] ], "psql('select 1') returns 1");
is_deeply(psql(q{select :'a', null, 'x y'}, { a => 'b' }), [ [ 'b', '', 'x y' ] ],
          'psql variables, NULL and columns');
restart_postgres();
is_deeply(psql('select 2'), [ [2] ], 'restart_postgres keeps the cluster usable');
stop_postgres();
ok(!eval { psql('select 1'); 1 }, 'psql fails while PostgreSQL is stopped');
start_postgres();
is_deeply(psql('select 3'), [ [3] ], 'start_postgres starts the same cluster again');

{   # a file that dies after start_postgres() leaves nothing behind
    my $lib = repo_root() . '/t/lib';
    my ($rc, $out, $err) = run_cmd([ $^X, "-I$lib", '-MTest::Apikey', '-e', q{
        my $pg = start_postgres();
        my ($pid) = `cat $pg->{data}/postmaster.pid` =~ /^(\d+)/;
        print "DIR=$ENV{TEST_NGINX_SERVROOT} PID=$pid\n";
        die "boom\n";
    } ], timeout => 120);
    my ($dir, $pid) = $out =~ /DIR=(\S+) PID=(\d+)/;
    ok($dir && $pid, 'child test started PostgreSQL') or diag("exit $rc\n$out$err");
    isnt($rc, 0, 'child test died');
    ok($pid && !process_alive($pid), 'postmaster of a dead test file is stopped');
    ok($dir && !-e $dir, 'server root of a dead test file is removed');
}

# --- apikeyd / apikeyctl (once they are built) ---------------------------

SKIP: {
    skip 'build/apikeyd or build/apikeyctl not built yet', 4
        unless -x Test::Apikey::Daemon::apikeyd_path()
            && -x Test::Apikey::Daemon::apikeyctl_path();
    my $d = start_apikeyd();
    is(apikeyd_get('/healthz')->{status}, 200, 'apikeyd answers /healthz');
    my $org = apikeyctl('org', 'create', 'sanity');
    like($org->{org_id}, qr/^[0-9a-f-]{36}$/, 'apikeyctl org create returns org_id');
    my $key = apikeyctl('key', 'create', '--org', $org->{org_id}, '--name', 'k1');
    like($key->{key}, qr/^ak_[0-9A-Za-z]{36}$/, 'apikeyctl key create returns the key');
    stop_apikeyd();
    ok(!process_alive($d->{pid} // 0), 'stop_apikeyd stops it');
}

$ENV{TEST_NGINX_LOADED} = $ENV{TEST_APIKEY_NO_MODULE} ? 'no module' : '';

run_tests();

__DATA__

=== TEST 1: static file through nginx with the module loaded
--- config
--- request
GET /
--- error_code: 200
--- response_body
hello
--- no_error_log
[error]



=== TEST 2: the module's directives are known
--- skip eval: $ENV{TEST_APIKEY_NO_MODULE} ? 'TEST_APIKEY_NO_MODULE=1' : ''
--- config
location /t.txt { apikey off; }
--- request
GET /t.txt
--- response_body
hello
--- no_error_log
[error]



=== TEST 3: response_headers and response_headers_like
--- config
location /t.txt {
    add_header X-Test "a b";
    add_header X-Dup one;
    add_header X-Dup two;
}
--- request
GET /t.txt
--- response_headers
X-Test: a b
x-dup: one, two
Content-Type: text/plain
!X-Nope
--- response_headers_like
Content-Length: ^6$
Last-Modified: GMT$
--- no_error_log
[error]



=== TEST 4: must_die on an unknown directive
--- config
foo_bar on;
--- must_die
--- error_log
unknown directive "foo_bar"



=== TEST 5: must_die with a regex error_log
--- http_config
server { listen 127.0.0.1:$TEST_NGINX_UPSTREAM_PORT; bogus_here 1; }
--- must_die
--- error_log eval
qr/\[emerg\] unknown directive "bogus_here" in \S+nginx\.conf:\d+/



=== TEST 6: more_headers are sent verbatim, the same header twice
--- config
location = /echo { return 200 "$http_cookie|$http_x_a|$http_host\n"; }
--- request
GET /echo
--- more_headers
Cookie: a=1
Cookie: b=2
X-A:   spaced
--- response_body
a=1; b=2|spaced|localhost
--- no_error_log
[error]



=== TEST 7: request_body through an upstream on TEST_NGINX_UPSTREAM_PORT
--- http_config
server {
    listen 127.0.0.1:$TEST_NGINX_UPSTREAM_PORT;
    location / { return 200 "upstream got '$http_x_body'\n"; }
}
--- config
location /echo {
    proxy_set_header X-Body $request_body;
    proxy_pass http://127.0.0.1:$TEST_NGINX_UPSTREAM_PORT;
}
--- request
POST /echo
--- request_body chomp
hello world
--- response_body
upstream got 'hello world'
--- no_error_log
[error]



=== TEST 8: chunked responses are decoded
--- config
location / { ssi on; }
--- request
GET /index.html
--- response_headers
Transfer-Encoding: chunked
!Content-Length
--- response_body
hello
--- no_error_log
[error]



=== TEST 9: raw_request is sent exactly as given
--- config
--- raw_request eval
"GET /t.txt HTTP/1.0\r\nHost: other\r\nX-A: 1\r\n\r\n"
--- response_headers
!Transfer-Encoding
Connection: close
--- response_body
hello
--- no_error_log
[error]



=== TEST 10: several requests in one block, regex error_log
--- config
--- request eval
["GET /t.txt", "GET /nope.txt", "HEAD /t.txt HTTP/1.1"]
--- error_code eval
[200, 404, 200]
--- response_body_like eval
[qr/^hello$/m, qr/404 Not Found/, qr/^$/]
--- error_log eval
qr/open\(\) "\S+\/html\/nope\.txt" failed \(2: No such file or directory\)/
--- no_error_log
[alert]
[crit]
[emerg]



=== TEST 11: init and check run Perl; http_get works in check
--- init
$ENV{TEST_NGINX_GREETING} = 'hi there';
--- config
location = /g { return 200 "$TEST_NGINX_GREETING\n"; }
--- request
GET /g
--- response_body
hi there
--- check
my $r = http_get('/t.txt', ['X-Foo: bar']);
is($r->{status}, 200, "$block->{name} - http_get in check");
is($responses->[0]{headers}{'content-type'}, 'text/plain', "$block->{name} - responses");
--- no_error_log
[error]



=== TEST 12: main_config, workers, wait and timeout
--- main_config
worker_rlimit_nofile 2048;
--- workers: 2
--- config
--- request
GET /big.txt
--- timeout: 5
--- wait: 0.1
--- response_body_like: ^x+\n\z
--- response_headers
Content-Length: 65536
--- check
# the master logs each worker's start as it forks it: poll, the request may
# have been answered by the first before the second is logged
ok_eventually(sub { (() = nginx_error_log() =~ /start worker process \d+/g) == 2 },
              5, "$block->{name} - two workers");
--- error_log
exiting
--- no_error_log
[error]



=== TEST 13: skip_nginx skips on an old nginx
--- skip_nginx: 2: < 99.0
--- config
--- request
GET /
--- response_body
never checked
