# The usual gateway shape: TLS and HTTP/2 in front (`listen ... ssl http2`,
# a certificate the file makes with openssl). Over curl --http2: key checks
# (every rejection reason, several streams multiplexed on one connection),
# key hiding from an HTTP/1.1 upstream, a gRPC-style call (POST,
# content-type application/grpc, the key in a metadata header, grpc_pass to
# an h2c upstream) and the usage rows they leave.

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;

start_postgres();
start_apikeyd();

my $org = apikeyctl('org', 'create', 'tls-org');
my $main = new_key($org->{org_id}, 'main');
my $old  = new_key($org->{org_id}, 'old');
apikeyctl('key', 'revoke', $old->{key_id});
wait_key_results({ $main->{key} => 'ok', $old->{key} => 'revoked' }, 10,
                 'key table has the test keys');

# A self-signed certificate for localhost, made for this file.
my $cert = servroot_path('conf', 'tls-cert.pem');
my $pkey = servroot_path('conf', 'tls-key.pem');
my ($rc, undef, $err) = run_cmd([ 'openssl', 'req', '-x509', '-newkey', 'ec',
    '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2',
    '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost',
    '-keyout', $pkey, '-out', $cert ]);
die "openssl req failed (exit $rc): $err" if $rc != 0;

%ENV = (%ENV,
    TEST_NGINX_KEY        => $main->{key},
    TEST_NGINX_OLD_KEY    => $old->{key},
    TEST_NGINX_MADEUP_KEY => make_key(),
    TEST_NGINX_TYPO_KEY   => key_typo($main->{key}),
    TEST_NGINX_TLS_PORT   => free_port(),
    TEST_NGINX_TLS_CERT   => $cert,
);
# The TLS + HTTP/2 listener each block adds to the test server.
$ENV{TEST_NGINX_TLS_SERVER} = "listen 127.0.0.1:$ENV{TEST_NGINX_TLS_PORT} ssl http2;\n"
    . "ssl_certificate $cert;\nssl_certificate_key $pkey;";

# h2(path => P, headers => [...], method => M, data => BYTES, http => '2' |
# '1.1', n => N) -> one { status, version, headers => { lc name => value },
# body } per transfer. With n > 1 the same request N times in parallel over
# one connection (curl -Z: HTTP/2 streams); then each also has connects
# (the new connections that transfer made) and no headers or body.
our $CURL_N = 0;
sub h2 {
    my (%o) = @_;
    my $url = "https://localhost:$ENV{TEST_NGINX_TLS_PORT}" . ($o{path} // '/t.txt');
    my $tag = servroot_path('tmp', 'curl' . ++$CURL_N);
    my @req = (map({ ('-H', $_) } @{ $o{headers} || [] }),
               ($o{method} ? ('-X', $o{method}) : ()));
    if (defined $o{data}) {
        spew("$tag.data", $o{data});
        push @req, '--data-binary', "\@$tag.data";
    }
    my $n = $o{n} // 1;
    my @argv = ('curl', '-sS', '--cacert', $ENV{TEST_NGINX_TLS_CERT},
                '--resolve', "localhost:$ENV{TEST_NGINX_TLS_PORT}:127.0.0.1",
                ($o{http} // '2') eq '2' ? '--http2' : '--http1.1', @req,
                '-w', '%{http_version} %{response_code} %{num_connects}\n');
    push @argv, $n > 1
        ? ('-Z', map { ('-o', '/dev/null', $url) } 1 .. $n)
        : ('-D', "$tag.head", '-o', "$tag.body", $url);
    my ($rc, $out, $err) = run_cmd(\@argv, timeout => 20);
    die "curl exited $rc: $err\n" if $rc != 0;
    my @r = map { my ($v, $s, $c) = split ' '; { version => $v, status => $s, connects => $c } }
        split /\n/, $out;
    return @r if $n > 1;
    my %h;
    for (split /\r?\n/, slurp("$tag.head") // '') {
        $h{ lc $1 } = $2 if /^([^:\s]+):\s*(.*)$/;
    }
    return { %{ $r[0] }, headers => \%h, body => slurp("$tag.body") };
}

run_tests();

__DATA__

=== TEST 1: key checks over TLS and HTTP/2: a valid key in either header, every rejection, HTTP/1.1 on the same port
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
apikey_usage $TEST_NGINX_APIKEY_USAGE;
--- config
$TEST_NGINX_TLS_SERVER
location /t.txt { apikey on; add_header X-Result $apikey_result always; }
--- check
my %want = (
    "X-API-Key: $ENV{TEST_NGINX_KEY}"                 => [200, 'ok'],
    "Authorization: Bearer $ENV{TEST_NGINX_KEY}"      => [200, 'ok'],
    "X-API-Key: $ENV{TEST_NGINX_OLD_KEY}"             => [401, 'revoked'],
    "X-API-Key: $ENV{TEST_NGINX_MADEUP_KEY}"          => [401, 'unknown'],
    "X-API-Key: $ENV{TEST_NGINX_TYPO_KEY}"            => [401, 'malformed'],
    "X-Other: none"                                   => [401, 'missing'],
);
my $i = 0;
for my $h (sort keys %want) {
    my $r = h2(headers => [$h]);
    my $what = 'request ' . ++$i . " ($want{$h}[1])";
    is("$r->{version} $r->{status}", "2 $want{$h}[0]", "$what: HTTP/2, status");
    is($r->{headers}{'x-result'}, $want{$h}[1], "$what: \$apikey_result");
    is($r->{body}, "hello\n", "$what: body") if $want{$h}[0] == 200;
    is($r->{headers}{'www-authenticate'}, 'ApiKey', "$what: WWW-Authenticate")
        if $want{$h}[0] == 401 && $want{$h}[1] eq 'missing';
}
my $r = h2(headers => ["X-API-Key: $ENV{TEST_NGINX_KEY}"], http => '1.1');
is("$r->{version} $r->{status}", '1.1 200', 'HTTP/1.1 over TLS on the same port: 200');
ok(index(nginx_error_log(), $ENV{TEST_NGINX_KEY}) < 0, 'no key in error.log (debug level)');
--- usage_rows
key  | endpoint | method | status | result  | count
main | /t.txt   | GET    | 200    | ok      | 3
old  | /t.txt   | GET    | 401    | revoked | 1
--- no_error_log
[error]



=== TEST 2: twenty streams multiplexed on one HTTP/2 connection: each checked and recorded once
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
apikey_usage $TEST_NGINX_APIKEY_USAGE;
--- config
$TEST_NGINX_TLS_SERVER
location /t.txt { apikey on; }
--- check
my @r = h2(headers => ["X-API-Key: $ENV{TEST_NGINX_KEY}"], n => 20);
is(scalar @r, 20, 'twenty transfers');
is_deeply([ sort { $a cmp $b } map { "$_->{version} $_->{status}" } @r ], [ ('2 200') x 20 ],
          'each over HTTP/2, each 200');
my $connects = 0;
$connects += $_->{connects} for @r;
is($connects, 1, 'one connection for all of them');
--- usage_rows
key  | endpoint | method | status | result | count
main | /t.txt   | GET    | 200    | ok     | 20
--- no_error_log
[error]



=== TEST 3: key hiding over HTTP/2: the upstream sees neither key header; with apikey_hide_key off it does
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
apikey_usage $TEST_NGINX_APIKEY_USAGE;
map $http_x_api_key $up_key { "" none; "$TEST_NGINX_KEY" same; default other; }
map $http_authorization $up_auth { "" none; "Bearer $TEST_NGINX_KEY" same; default other; }
server {
    listen 127.0.0.1:$TEST_NGINX_UPSTREAM_PORT;
    location / { return 200 "key=$up_key auth=$up_auth other=$http_x_other\n"; }
}
--- config
$TEST_NGINX_TLS_SERVER
location /api/ { apikey on; proxy_pass http://127.0.0.1:$TEST_NGINX_UPSTREAM_PORT; }
location /shown/ {
    apikey on;
    apikey_hide_key off;
    proxy_pass http://127.0.0.1:$TEST_NGINX_UPSTREAM_PORT;
}
--- check
my @cases = (
    ['/api/x',   "X-API-Key: $ENV{TEST_NGINX_KEY}",            "key=none auth=none other=1\n"],
    ['/api/x',   "Authorization: Bearer $ENV{TEST_NGINX_KEY}", "key=none auth=none other=1\n"],
    ['/shown/x', "X-API-Key: $ENV{TEST_NGINX_KEY}",            "key=same auth=none other=1\n"],
    ['/shown/x', "Authorization: Bearer $ENV{TEST_NGINX_KEY}", "key=none auth=same other=1\n"],
);
for my $c (@cases) {
    my ($path, $h, $body) = @$c;
    my $r = h2(path => $path, headers => [$h, 'X-Other: 1']);
    my $what = "$path, " . ($h =~ /^X-API-Key/ ? 'X-API-Key' : 'Bearer');
    is("$r->{version} $r->{status}", '2 200', "$what: HTTP/2 200");
    is($r->{body}, $body, "$what: what the upstream saw");
}
--- usage_rows
key  | endpoint | method | status | result | count
main | /api/    | GET    | 200    | ok     | 2
main | /shown/  | GET    | 200    | ok     | 2
--- no_error_log
[error]



=== TEST 4: a gRPC-style call: POST application/grpc, the key in a metadata header, grpc_pass to an h2c upstream that never sees it
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
apikey_usage $TEST_NGINX_APIKEY_USAGE;
server {
    listen 127.0.0.1:$TEST_NGINX_UPSTREAM_PORT http2;
    location / {
        add_header grpc-status 0;
        return 200 "$request_method $uri proto=$server_protocol ct=$content_type key=[$http_x_api_key] auth=[$http_authorization] md=[$http_x_request_id]\n";
    }
}
--- config
$TEST_NGINX_TLS_SERVER
location /echo.Echo/ {
    apikey on;
    apikey_endpoint "grpc echo";
    grpc_pass grpc://127.0.0.1:$TEST_NGINX_UPSTREAM_PORT;
}
--- check
# one length-prefixed message: not compressed, 5 bytes
my @grpc = (path => '/echo.Echo/Say', method => 'POST', data => "\0\0\0\0\5hello");
my @meta = ('content-type: application/grpc', 'te: trailers', 'x-request-id: r1');
my $seen = "POST /echo.Echo/Say proto=HTTP/2.0 ct=application/grpc key=[] auth=[] md=[r1]\n";
for my $h ("x-api-key: $ENV{TEST_NGINX_KEY}", "authorization: Bearer $ENV{TEST_NGINX_KEY}") {
    my $r = h2(@grpc, headers => [@meta, $h]);
    my $what = $h =~ /^x-api-key/ ? 'x-api-key metadata' : 'authorization metadata';
    is("$r->{version} $r->{status}", '2 200', "$what: HTTP/2 200 through grpc_pass");
    is($r->{body}, $seen, "$what: the upstream got the call and its metadata, not the key");
}
for my $h ("x-api-key: $ENV{TEST_NGINX_OLD_KEY}", 'x-other: 1') {
    my $r = h2(@grpc, headers => [@meta, $h]);
    my $what = $h =~ /api-key/ ? 'a revoked' : 'no';
    is("$r->{version} $r->{status}", '2 401', "a gRPC call with $what key: 401");
}
--- usage_rows
key  | endpoint  | method | status | result  | count
main | grpc echo | POST   | 200    | ok      | 2
old  | grpc echo | POST   | 401    | revoked | 1
--- no_error_log
[error]
