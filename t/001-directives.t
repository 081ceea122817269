# The module's directives: good values are accepted, bad ones are refused
# with an [emerg] naming the directive and the value, and a missing key table
# fails closed (503). No PostgreSQL and no apikeyd here.

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use Digest::SHA ();

# A path that never exists: nginx starts before apikeyd has published.
$ENV{TEST_NGINX_NO_KEYS} = "$ENV{TEST_NGINX_SERVROOT}/no-such-dir/apikey_keys";

# A well-formed key (right checksum) that no table knows: the module gets
# past the format check to the table, which is not there.
$ENV{TEST_NGINX_WELLFORMED} = make_key();

sub file_sha {
    my ($path) = @_;
    return undef unless -e $path;
    return Digest::SHA->new(256)->addfile($path)->hexdigest;
}

run_tests();

__DATA__

=== TEST 1: the module loads; every directive with good values
--- http_config
apikey_keys $TEST_NGINX_NO_KEYS;
apikey_usage $TEST_NGINX_APIKEY_USAGE size=1m;
apikey off;
apikey_header X-API-Key;
apikey_hide_key on;
apikey_usage_raw errors;
--- config
apikey_header X-Other-Key;
apikey_hide_key off;
apikey_usage off;
apikey_usage_raw sample=1000000000;
location /t.txt {
    apikey off;
    apikey_usage_raw off;
    apikey_header x_key-2;
    apikey_hide_key on;
    apikey_usage off;
    apikey_scope usage:read orders.write a b-c d_e 0 z9:x.y_z-w;
    apikey_endpoint "$request_method $uri";
}
location ~ ^/re/ {
    apikey off;
    apikey_scope aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa;
    apikey_endpoint static-label;
}
--- request
GET /t.txt
--- response_body
hello
--- no_error_log
[error]
[emerg]
[alert]



=== TEST 2: apikey_usage with the default size, apikey_keys relative to the prefix
--- http_config
apikey_keys relative_keys_file;
apikey_usage $TEST_NGINX_APIKEY_USAGE;
--- config
location /t.txt { apikey on; }
--- request
GET /t.txt
--- more_headers
X-API-Key: $TEST_NGINX_WELLFORMED
--- error_code: 503
--- error_log eval
qr{key table "\Q$ENV{TEST_NGINX_SERVROOT}\E/relative_keys_file" not readable}
--- no_error_log
[emerg]
[alert]



=== TEST 3: apikey_keys after a server {} that uses apikey on is fine (checked at the end of http)
--- http_config
server {
    listen 127.0.0.1:$TEST_NGINX_UPSTREAM_PORT;
    location / { apikey on; }
}
apikey_keys $TEST_NGINX_NO_KEYS;
--- config
location /t.txt { apikey off; }
--- request
GET /t.txt
--- response_body
hello
--- no_error_log
[error]
[emerg]



=== TEST 4: apikey maybe
--- config
location / { apikey maybe; }
--- must_die
--- error_log eval
qr/\[emerg\] invalid value "maybe" in "apikey" directive/



=== TEST 5: apikey without a value
--- config
location / { apikey; }
--- must_die
--- error_log eval
qr/\[emerg\] invalid number of arguments in "apikey" directive/



=== TEST 6: apikey_keys twice
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
apikey_keys /tmp/other_keys;
--- must_die
--- error_log eval
qr/\[emerg\] "apikey_keys" directive is duplicate/



=== TEST 7: apikey_keys in server context
--- config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- must_die
--- error_log eval
qr/\[emerg\] "apikey_keys" directive is not allowed here/



=== TEST 8: apikey_keys in location context
--- config
location / { apikey_keys $TEST_NGINX_APIKEY_KEYS; }
--- must_die
--- error_log eval
qr/\[emerg\] "apikey_keys" directive is not allowed here/



=== TEST 9: apikey on in a location without apikey_keys
--- config
location /t.txt { apikey on; }
--- must_die
--- error_log eval
qr/\[emerg\] "apikey on" requires "apikey_keys"/



=== TEST 10: apikey on at http level without apikey_keys
--- http_config
apikey on;
--- must_die
--- error_log eval
qr/\[emerg\] "apikey on" requires "apikey_keys"/



=== TEST 11: apikey_usage size=abc
--- http_config
apikey_usage /x size=abc;
--- must_die
--- error_log eval
qr/\[emerg\] invalid apikey_usage size "size=abc"/



=== TEST 12: apikey_usage size=10k (below 1m)
--- http_config
apikey_usage /x size=10k;
--- must_die
--- error_log eval
qr/\[emerg\] invalid apikey_usage size "size=10k": at least 1m/



=== TEST 13: apikey_usage size= (empty)
--- http_config
apikey_usage /x size=;
--- must_die
--- error_log eval
qr/\[emerg\] invalid apikey_usage size "size="/



=== TEST 14: apikey_usage bogus=1
--- http_config
apikey_usage /x bogus=1;
--- must_die
--- error_log eval
qr/\[emerg\] invalid apikey_usage parameter "bogus=1"/



=== TEST 15: apikey_usage PATH inside a location (only off is allowed there)
--- config
location / { apikey_usage /path; }
--- must_die
--- error_log eval
qr/\[emerg\] invalid apikey_usage value "\/path": only "off" is allowed here/



=== TEST 16: apikey_usage PATH inside a server
--- config
apikey_usage /path;
--- must_die
--- error_log eval
qr/\[emerg\] invalid apikey_usage value "\/path": only "off" is allowed here/



=== TEST 17: apikey_usage twice in http
--- http_config
apikey_usage $TEST_NGINX_APIKEY_USAGE;
apikey_usage /tmp/other_usage;
--- must_die
--- error_log eval
qr/\[emerg\] "apikey_usage" directive is duplicate/



=== TEST 18: apikey_usage with three arguments
--- http_config
apikey_usage /x size=1m aggregate=1024 extra;
--- must_die
--- error_log eval
qr/\[emerg\] invalid number of arguments in "apikey_usage" directive/



=== TEST 19: apikey_header "Bad Header"
--- config
location / { apikey_header "Bad Header"; }
--- must_die
--- error_log eval
qr/\[emerg\] invalid apikey_header name "Bad Header"/



=== TEST 20: apikey_header Authorization (any case)
--- config
location / { apikey_header authorization; }
--- must_die
--- error_log eval
qr/\[emerg\] invalid apikey_header name "authorization"/



=== TEST 21: apikey_header Authorization
--- http_config
apikey_header Authorization;
--- must_die
--- error_log eval
qr/\[emerg\] invalid apikey_header name "Authorization"/



=== TEST 22: apikey_header "" (empty)
--- config
apikey_header "";
--- must_die
--- error_log eval
qr/\[emerg\] invalid apikey_header name ""/



=== TEST 23: apikey_header X-Key: (colon)
--- config
apikey_header "X-Key:";
--- must_die
--- error_log eval
qr/\[emerg\] invalid apikey_header name "X-Key:"/



=== TEST 24: apikey_header twice in one context
--- config
location / { apikey_header X-A; apikey_header X-B; }
--- must_die
--- error_log eval
qr/\[emerg\] "apikey_header" directive is duplicate/



=== TEST 25: apikey_scope Admin (uppercase)
--- config
location / { apikey_scope read Admin; }
--- must_die
--- error_log eval
qr/\[emerg\] invalid apikey_scope scope "Admin"/



=== TEST 26: apikey_scope -x (leading punctuation)
--- config
location / { apikey_scope -x; }
--- must_die
--- error_log eval
qr/\[emerg\] invalid apikey_scope scope "-x"/



=== TEST 27: apikey_scope :x
--- config
location / { apikey_scope ok :x; }
--- must_die
--- error_log eval
qr/\[emerg\] invalid apikey_scope scope ":x"/



=== TEST 28: apikey_scope with a space inside
--- config
location / { apikey_scope "a b"; }
--- must_die
--- error_log eval
qr/\[emerg\] invalid apikey_scope scope "a b"/



=== TEST 29: apikey_scope "" (empty)
--- config
location / { apikey_scope ""; }
--- must_die
--- error_log eval
qr/\[emerg\] invalid apikey_scope scope ""/



=== TEST 30: apikey_scope of 65 characters
--- config
location / { apikey_scope aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa; }
--- must_die
--- error_log eval
qr/\[emerg\] invalid apikey_scope scope "a{65}"/



=== TEST 31: apikey_scope with 9 scopes (at most 8)
--- config
location / { apikey_scope a b c d e f g h i; }
--- must_die
--- error_log eval
qr/\[emerg\] too many scopes in apikey_scope: at most 8/



=== TEST 32: apikey_scope without arguments
--- config
location / { apikey_scope; }
--- must_die
--- error_log eval
qr/\[emerg\] invalid number of arguments in "apikey_scope" directive/



=== TEST 33: apikey_scope in server context
--- config
apikey_scope admin;
--- must_die
--- error_log eval
qr/\[emerg\] "apikey_scope" directive is not allowed here/



=== TEST 34: apikey_scope twice in one location
--- config
location / { apikey_scope a; apikey_scope b; }
--- must_die
--- error_log eval
qr/\[emerg\] "apikey_scope" directive is duplicate/



=== TEST 35: apikey_endpoint in server context
--- config
apikey_endpoint "x";
--- must_die
--- error_log eval
qr/\[emerg\] "apikey_endpoint" directive is not allowed here/



=== TEST 36: apikey_endpoint in http context
--- http_config
apikey_endpoint "x";
--- must_die
--- error_log eval
qr/\[emerg\] "apikey_endpoint" directive is not allowed here/



=== TEST 37: apikey_endpoint with an unknown variable
--- config
location / { apikey_endpoint "$no_such_variable_here"; }
--- must_die
--- error_log eval
qr/\[emerg\] unknown "no_such_variable_here" variable/



=== TEST 38: apikey_hide_key maybe
--- config
location / { apikey_hide_key maybe; }
--- must_die
--- error_log eval
qr/\[emerg\] invalid value "maybe" in "apikey_hide_key" directive/



=== TEST 39: apikey_keys file does not exist: nginx starts, apikey on fails closed (503)
--- http_config
apikey_keys $TEST_NGINX_NO_KEYS;
--- config
location /t.txt {
    apikey on;
    add_header X-Result $apikey_result always;
    add_header X-Id "[$apikey_id]" always;
}
location /open.txt { alias $TEST_NGINX_HTML_DIR/t.txt; }
--- request eval
["GET /t.txt", "GET /t.txt", "GET /open.txt"]
--- more_headers
X-API-Key: $TEST_NGINX_WELLFORMED
--- error_code eval
[503, 503, 200]
--- response_headers eval
["X-Result: unavailable\nX-Id: []\n!WWW-Authenticate", "X-Result: unavailable", ""]
--- error_log eval
[qr{\[warn\] .*apikey: key table "\Q$ENV{TEST_NGINX_NO_KEYS}\E" not readable},
 qr{\[info\] .*apikey: no key table is readable, rejecting request with 503}]
--- no_error_log
[emerg]
[alert]
[crit]



=== TEST 40: no key table: a Bearer key is also 503; no key / a malformed key are still 401
--- http_config
apikey_keys $TEST_NGINX_NO_KEYS;
--- config
location /t.txt { apikey on; add_header X-Result $apikey_result always; }
--- raw_request eval
["GET /t.txt HTTP/1.0\r\nAuthorization: Bearer $ENV{TEST_NGINX_WELLFORMED}\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nX-API-Key: ak_000000000000000000000000000000000000\r\n\r\n"]
--- error_code eval
[503, 401, 401]
--- response_headers eval
["X-Result: unavailable", "X-Result: missing", "X-Result: malformed"]
--- no_error_log
[emerg]
[alert]



=== TEST 41: a missing key table is retried at most once a second (no warn per request)
--- http_config
apikey_keys $TEST_NGINX_NO_KEYS;
--- config
location /t.txt { apikey on; }
--- request eval
[("GET /t.txt") x 20]
--- more_headers
X-API-Key: $TEST_NGINX_WELLFORMED
--- error_code: 503
--- check
my @warn = nginx_error_log() =~ /not readable/g;
ok(@warn >= 1 && @warn <= 4,
   "$block->{name} - 20 requests, " . scalar(@warn) . " mapping attempts logged");
--- no_error_log
[alert]



=== TEST 42: nginx -t with apikey_usage does not create the usage file, nor touch a live one
--- http_config
apikey_keys $TEST_NGINX_NO_KEYS;
apikey_usage $TEST_NGINX_APIKEY_USAGE size=1m;
--- config
location /t.txt { apikey off; }
--- request
GET /t.txt
--- check
my $root = $ENV{TEST_NGINX_SERVROOT};
ok(-e $ENV{TEST_NGINX_APIKEY_USAGE}, "$block->{name} - running nginx created its usage segment");

# a config naming a usage file that does not exist yet
my $fresh = "$root/tmp/usage-from-nginx-t";
unlink $fresh;
my ($rc, $err) = nginx_test_config(http_config => "apikey_usage $fresh size=1m;\n"
                                           . "apikey_keys $ENV{TEST_NGINX_NO_KEYS};");
is($rc, 0, "$block->{name} - nginx -t accepts the config") or diag($err);
ok(!-e $fresh, "$block->{name} - nginx -t did not create the usage file");

# the live segment: same bytes and same inode after nginx -t with another size
my @st = stat $ENV{TEST_NGINX_APIKEY_USAGE};
my $sha = main::file_sha($ENV{TEST_NGINX_APIKEY_USAGE});
($rc, $err) = nginx_test_config(http_config => "apikey_usage $ENV{TEST_NGINX_APIKEY_USAGE} size=2m;\n"
                                        . "apikey_keys $ENV{TEST_NGINX_NO_KEYS};");
is($rc, 0, "$block->{name} - nginx -t on the live segment path succeeds") or diag($err);
my @st2 = stat $ENV{TEST_NGINX_APIKEY_USAGE};
is("$st2[1]/$st2[7]", "$st[1]/$st[7]", "$block->{name} - live segment: same inode and size");
is(main::file_sha($ENV{TEST_NGINX_APIKEY_USAGE}), $sha,
   "$block->{name} - live segment: same bytes after nginx -t");
--- no_error_log
[error]
[emerg]
[alert]



=== TEST 43: unusable apikey_usage path: nginx refuses to start and says why
--- http_config
apikey_usage $TEST_NGINX_SERVROOT/no-such-dir/usage size=1m;
--- must_die
--- error_log eval
qr{\[emerg\] .*apikey_usage "\Q$ENV{TEST_NGINX_SERVROOT}\E/no-such-dir/usage"}



=== TEST 44: apikey_keys "" (empty)
--- http_config
apikey_keys "";
--- must_die
--- error_log eval
qr/\[emerg\] invalid apikey_keys path ""/



=== TEST 45: apikey_usage "" (empty path)
--- http_config
apikey_usage "";
--- must_die
--- error_log eval
qr/\[emerg\] invalid apikey_usage path ""/



=== TEST 46: apikey_usage off twice in one location
--- config
location / { apikey_usage off; apikey_usage off; }
--- must_die
--- error_log eval
qr/\[emerg\] "apikey_usage" directive is duplicate/



=== TEST 47: a usage segment too small for one chunk: nginx refuses to start and says why
--- main_config
worker_processes 1024;
--- http_config
apikey_usage $TEST_NGINX_APIKEY_USAGE size=1m;
--- must_die
--- error_log eval
qr{\[emerg\] .*apikey_usage "\Q$ENV{TEST_NGINX_APIKEY_USAGE}\E": size too small for 4096 streams}



=== TEST 48: apikey_usage aggregate=N with size=, in either order; the header records N
--- http_config
apikey_keys $TEST_NGINX_NO_KEYS;
apikey_usage $TEST_NGINX_APIKEY_USAGE aggregate=2048 size=1m;
--- config
location /t.txt { apikey off; }
--- request
GET /t.txt
--- response_body
hello
--- error_log eval
qr/apikey: (?:created|reusing) usage segment "\Q$ENV{TEST_NGINX_APIKEY_USAGE}\E": \d+ streams over \d+ chunks of 64k, aggregates of 2048 entries, \d+ bytes/
--- check
is(unpack('V', usage_segment_read(128, 4)), 2048, "$block->{name} - agg_entries in the header");
--- no_error_log
[error]
[emerg]



=== TEST 49: apikey_usage without aggregate= holds 65536 entries per buffer
--- http_config
apikey_keys $TEST_NGINX_NO_KEYS;
apikey_usage $TEST_NGINX_APIKEY_USAGE size=1m;
--- config
location /t.txt { apikey off; }
--- request
GET /t.txt
--- response_body
hello
--- check
is(unpack('V', usage_segment_read(128, 4)), 65536, "$block->{name} - agg_entries in the header");
--- no_error_log
[error]
[emerg]



=== TEST 50: apikey_usage aggregate=abc
--- http_config
apikey_usage /x aggregate=abc;
--- must_die
--- error_log eval
qr/\[emerg\] invalid apikey_usage aggregate "aggregate=abc": entries per buffer, from 1024 to 16777216/



=== TEST 51: apikey_usage aggregate=1023 (below the minimum)
--- http_config
apikey_usage /x size=1m aggregate=1023;
--- must_die
--- error_log eval
qr/\[emerg\] invalid apikey_usage aggregate "aggregate=1023": entries per buffer, from 1024 to 16777216/



=== TEST 52: apikey_usage aggregate=16777217 (above the maximum)
--- http_config
apikey_usage /x aggregate=16777217;
--- must_die
--- error_log eval
qr/\[emerg\] invalid apikey_usage aggregate "aggregate=16777217"/



=== TEST 53: apikey_usage aggregate= (empty)
--- http_config
apikey_usage /x aggregate=;
--- must_die
--- error_log eval
qr/\[emerg\] invalid apikey_usage aggregate "aggregate="/



=== TEST 54: apikey_usage aggregate= twice
--- http_config
apikey_usage /x aggregate=2048 aggregate=4096;
--- must_die
--- error_log eval
qr/\[emerg\] duplicate apikey_usage parameter "aggregate=4096"/



=== TEST 55: apikey_usage size= twice
--- http_config
apikey_usage /x size=1m size=2m;
--- must_die
--- error_log eval
qr/\[emerg\] duplicate apikey_usage parameter "size=2m"/



=== TEST 56: apikey_usage aggregate=-5
--- http_config
apikey_usage /x aggregate=-5;
--- must_die
--- error_log eval
qr/\[emerg\] invalid apikey_usage aggregate "aggregate=-5"/



=== TEST 57: apikey_usage_raw with a value it does not know
--- config
location / { apikey_usage_raw sometimes; }
--- must_die
--- error_log eval
qr/\[emerg\] invalid apikey_usage_raw "sometimes": all, errors, sample=N or off/



=== TEST 58: apikey_usage_raw sample=0
--- config
location / { apikey_usage_raw sample=0; }
--- must_die
--- error_log eval
qr/\[emerg\] invalid apikey_usage_raw "sample=0": sample=N takes N from 1 to 1000000000/



=== TEST 59: apikey_usage_raw sample= (empty)
--- config
location /a { apikey_usage_raw sample=; }
--- must_die
--- error_log eval
qr/\[emerg\] invalid apikey_usage_raw "sample=": all, errors, sample=N or off/



=== TEST 60: apikey_usage_raw sample=abc
--- config
location / { apikey_usage_raw sample=abc; }
--- must_die
--- error_log eval
qr/\[emerg\] invalid apikey_usage_raw "sample=abc": sample=N takes N from 1 to 1000000000/



=== TEST 61: apikey_usage_raw sample above a billion
--- config
location / { apikey_usage_raw sample=1000000001; }
--- must_die
--- error_log eval
qr/\[emerg\] invalid apikey_usage_raw "sample=1000000001": sample=N takes N from 1 to 1000000000/



=== TEST 62: apikey_usage_raw twice in one location
--- config
location / { apikey_usage_raw all; apikey_usage_raw off; }
--- must_die
--- error_log eval
qr/\[emerg\] "apikey_usage_raw" directive is duplicate/
