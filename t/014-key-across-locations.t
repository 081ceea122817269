# The key and its verdict when a request moves between locations: a key
# rejected (or let through by `satisfy any`) never reaches an upstream; a
# request checked in one location is recorded once, wherever it ends after
# internal redirects (try_files, error_page, X-Accel-Redirect, rewrite
# ... last); a verdict read at server level, before the location is known,
# does not decide for a location with another apikey_header; a key-table
# slot left locked by a dead writer costs a request microseconds and a 503.

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use Digest::SHA qw(sha256);
use Time::HiRes ();

# --- keys -----------------------------------------------------------------------

start_postgres();
start_apikeyd();

my $org = apikeyctl('org', 'create', 'across');
sub key { new_key($org->{org_id}, @_) }

my $k1      = key('k1');
my $k2      = key('k2');
my $gone    = key('deleted');
my $expired = key('expired');
my $revoked = key('revoked');
my $u_rev   = key('usage-revoked');
our $S      = key('sentinel');    # one row per settle(): the ring is drained up to here
our %U      = map { ($_ => key("usage-$_")) } 1 .. 7;

psql(q{DELETE FROM api_keys WHERE id = :'id'}, { id => $gone->{key_id} });
psql(q{UPDATE api_keys SET expires_at = now() - interval '1 minute' WHERE id = :'id'},
     { id => $expired->{key_id} });
apikeyctl('key', 'revoke', $_->{key_id}) for $revoked, $u_rev;
$U{rev} = $u_rev;

%ENV = (%ENV,
    TEST_NGINX_KEY         => $k1->{key},
    TEST_NGINX_KEY_ID      => $k1->{key_id},
    TEST_NGINX_KEY2        => $k2->{key},
    TEST_NGINX_GONE_KEY    => $gone->{key},
    TEST_NGINX_EXPIRED_KEY => $expired->{key},
    TEST_NGINX_REVOKED_KEY => $revoked->{key},
    TEST_NGINX_MADEUP_KEY  => make_key(),
    TEST_NGINX_TYPO_KEY    => key_typo($k1->{key}, 5),
    TEST_NGINX_SENTINEL    => $S->{key},
    (map { ('TEST_NGINX_U' . uc($_) => $U{$_}{key}) } keys %U),
);

wait_key_results({ $k1->{key} => 'ok', $gone->{key} => 'unknown',
                   $expired->{key} => 'expired', $revoked->{key} => 'revoked',
                   $u_rev->{key} => 'revoked', $S->{key} => 'ok',
                   map { ($U{$_}{key} => 'ok') } 1 .. 7 },
                 10, 'key table has every test key in its final state');

# --- nginx configuration ------------------------------------------------------------

# http_config with an upstream that says which key headers reached it (and
# X-Foo, a header that must get through).
sub echo_http {
    return apikey_http_config(upstream =>
        'location / { return 200 "key=$up_key auth=$up_auth foo=$http_x_foo\n"; }')
        . qq{map \$http_x_api_key \$up_key { "" none; default present; }\n}
        . qq{map \$http_authorization \$up_auth { "" none; default present; }\n};
}

# http_config with usage capture (and an upstream, if given).
sub usage_http { return apikey_http_config(usage => '1m', upstream => $_[0]) }

# --- usage rows -----------------------------------------------------------------

# A request on the sentinel key (a /sentinel/ location in each usage block):
# once its row is in, every record the worker wrote before it is in too.
our $sentinel_rows = 0;
sub settle {
    my $st = http_get('/sentinel/t.txt', ["X-API-Key: $S->{key}"])->{status};
    die "sentinel request: $st\n" unless $st == 200;
    wait_usage_rows($S->{key_id}, ++$sentinel_rows, 10, 'sentinel row');
}

# rows($name) -> "endpoint status result" of each row of usage key $name
sub rows {
    my ($name) = @_;
    settle();
    return [ map { $_->[0] } @{ psql(
        q{SELECT endpoint || ' ' || status_code || ' ' || result FROM api_key_usage
           WHERE key_id = :'id' ORDER BY ts}, { id => $U{$name}{key_id} }) } ];
}

# --- the key table (shared/key_table.h) -------------------------------------------
# A 4 KiB header (capacity, a u64, at +16), then 256-byte slots: the seqlock
# counter (u32) at +0, the key's SHA-256 at +8; linear probing from the slot
# the hash's first 8 bytes (little-endian) pick.

# key_slot_offset($key) -> the file offset of the key's slot
sub key_slot_offset {
    my ($key) = @_;
    my $hash = sha256($key);
    open my $fh, '<:raw', $ENV{TEST_NGINX_APIKEY_KEYS} or die "open key table: $!\n";
    sysseek($fh, 16, 0) && sysread($fh, my $c, 8) == 8 or die "read key table header\n";
    my $cap = unpack('Q<', $c);
    my $i = unpack('Q<', substr($hash, 0, 8)) & ($cap - 1);
    for (1 .. $cap) {
        my $off = 4096 + $i * 256;
        sysseek($fh, $off, 0) && sysread($fh, my $s, 40) == 40 or die "read key table slot\n";
        return $off if substr($s, 8, 32) eq $hash;
        $i = ($i + 1) & ($cap - 1);
    }
    die "key not in the key table\n";
}

# flip_seq($offset): odd (a writer holds the slot) <-> even, in place
sub flip_seq {
    my ($off) = @_;
    open my $fh, '+<:raw', $ENV{TEST_NGINX_APIKEY_KEYS} or die "open key table: $!\n";
    sysseek($fh, $off, 0) && sysread($fh, my $s, 4) == 4 or die "read seq\n";
    sysseek($fh, $off, 0) && syswrite($fh, pack('V', unpack('V', $s) + 1)) == 4
        or die "write seq\n";
}

run_tests();

__DATA__

=== TEST 1: error_page 401 = @proxied: a rejected key never reaches the upstream
--- http_config eval
echo_http()
--- config
location /api/ { apikey on; error_page 401 = @proxied; }
location @proxied {
    add_header X-Result $apikey_result always;
    proxy_pass http://127.0.0.1:$TEST_NGINX_UPSTREAM_PORT;
}
--- raw_request eval
[map { "GET /api/x HTTP/1.0\r\nX-Foo: kept\r\n$_\r\n" }
 "X-API-Key: $ENV{TEST_NGINX_TYPO_KEY}\r\n",
 "Authorization: Bearer $ENV{TEST_NGINX_TYPO_KEY}\r\n",
 "X-API-Key: $ENV{TEST_NGINX_KEY}\r\nX-API-Key: $ENV{TEST_NGINX_KEY2}\r\n",
 "X-API-Key: $ENV{TEST_NGINX_KEY}\r\nx-api-key: $ENV{TEST_NGINX_KEY}\r\nAuthorization: Bearer $ENV{TEST_NGINX_KEY}\r\n",
 "X-API-Key: $ENV{TEST_NGINX_KEY}\r\nAuthorization: Bearer $ENV{TEST_NGINX_KEY2}\r\n",
 "X-API-Key: $ENV{TEST_NGINX_GONE_KEY}\r\n",
 "Authorization: Bearer $ENV{TEST_NGINX_MADEUP_KEY}\r\n",
 "X-API-Key: $ENV{TEST_NGINX_REVOKED_KEY}\r\n",
 "Authorization: Bearer $ENV{TEST_NGINX_EXPIRED_KEY}\r\n"]
--- error_code: 200
--- response_body
key=none auth=none foo=kept
--- response_headers eval
["X-Result: malformed", "X-Result: malformed", "X-Result: malformed", "X-Result: malformed",
 "X-Result: malformed", "X-Result: unknown", "X-Result: unknown", "X-Result: revoked",
 "X-Result: expired"]
--- no_error_log
[error]



=== TEST 2: error_page 403 = @proxied: a key without the scope never reaches the upstream
--- http_config eval
echo_http()
--- config
location /admin/ { apikey on; apikey_scope admin; error_page 403 = @proxied; }
location @proxied { proxy_pass http://127.0.0.1:$TEST_NGINX_UPSTREAM_PORT; }
--- raw_request eval
["GET /admin/x HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_KEY}\r\n\r\n",
 "GET /admin/x HTTP/1.0\r\nAuthorization: Bearer $ENV{TEST_NGINX_KEY}\r\n\r\n"]
--- error_code: 200
--- response_body
key=none auth=none foo=
--- no_error_log
[error]



=== TEST 3: positive control: with apikey_hide_key off the same upstream sees the rejected key
--- http_config eval
echo_http()
--- config
location /api/ { apikey on; apikey_hide_key off; error_page 401 = @proxied; }
location @proxied { proxy_pass http://127.0.0.1:$TEST_NGINX_UPSTREAM_PORT; }
--- raw_request eval
["GET /api/x HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_REVOKED_KEY}\r\n\r\n",
 "GET /api/x HTTP/1.0\r\nAuthorization: Bearer $ENV{TEST_NGINX_GONE_KEY}\r\n\r\n"]
--- error_code: 200
--- response_body eval
["key=present auth=none foo=\n", "key=none auth=present foo=\n"]
--- no_error_log
[error]



=== TEST 4: satisfy any + allow: whatever the verdict, the upstream never sees the key
--- http_config eval
echo_http()
--- config
location /api/ {
    satisfy any;
    allow 127.0.0.1;
    deny all;
    apikey on;
    add_header X-Result $apikey_result always;
    proxy_pass http://127.0.0.1:$TEST_NGINX_UPSTREAM_PORT;
}
--- raw_request eval
[map { "GET /api/x HTTP/1.0\r\n$_\r\n" }
 "X-API-Key: $ENV{TEST_NGINX_KEY}\r\n",
 "Authorization: Bearer $ENV{TEST_NGINX_KEY}\r\n",
 "X-API-Key: $ENV{TEST_NGINX_TYPO_KEY}\r\n",
 "X-API-Key: $ENV{TEST_NGINX_KEY}\r\nX-API-Key: $ENV{TEST_NGINX_KEY2}\r\n",
 "X-API-Key: $ENV{TEST_NGINX_GONE_KEY}\r\n",
 "Authorization: Bearer $ENV{TEST_NGINX_REVOKED_KEY}\r\n",
 "X-API-Key: $ENV{TEST_NGINX_EXPIRED_KEY}\r\n",
 ""]
--- error_code: 200
--- response_body
key=none auth=none foo=
--- response_headers eval
["X-Result: ok", "X-Result: ok", "X-Result: malformed", "X-Result: malformed",
 "X-Result: unknown", "X-Result: revoked", "X-Result: expired", "X-Result: missing"]
--- no_error_log
[error]



=== TEST 5: a server-level $apikey_* read does not pin the server's apikey_header for the location
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
set $early $apikey_result;
location /tok/ {
    apikey on;
    apikey_header X-Token;
    alias $TEST_NGINX_HTML_DIR/;
    add_header X-Result $apikey_result always;
    add_header X-Early $early always;
}
--- raw_request eval
["GET /tok/t.txt HTTP/1.0\r\nX-Token: $ENV{TEST_NGINX_KEY}\r\n\r\n",
 "GET /tok/t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_KEY}\r\n\r\n"]
--- error_code eval
[200, 401]
--- response_headers eval
["X-Result: ok\nX-Early: missing", "X-Result: missing\nX-Early: ok"]
--- no_error_log
[error]



=== TEST 6: the same with apikey_header set in the server and X-API-Key in the location
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
map $apikey_id $early_id { "" none; default known; }
--- config
apikey_header X-Token;
if ($early_id = never) { return 500; }
location /api/ {
    apikey on;
    apikey_header X-API-Key;
    alias $TEST_NGINX_HTML_DIR/;
    add_header X-Result $apikey_result always;
}
--- raw_request eval
["GET /api/t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_KEY}\r\n\r\n",
 "GET /api/t.txt HTTP/1.0\r\nX-Token: $ENV{TEST_NGINX_KEY}\r\n\r\n"]
--- error_code eval
[200, 401]
--- response_headers eval
["X-Result: ok", "X-Result: missing"]
--- no_error_log
[error]



=== TEST 7: after the check, an internal redirect keeps the checking location's verdict and hides the key
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
map $http_x_token $up_tok { "" none; default present; }
map $http_x_api_key $up_key { "" none; default present; }
server {
    listen 127.0.0.1:$TEST_NGINX_UPSTREAM_PORT;
    location / { return 200 "token=$up_tok key=$up_key id=$http_x_id\n"; }
}
--- config
location /tok/ { apikey on; apikey_header X-Token; error_page 404 = @api; log_not_found off; }
location @api {
    apikey on;
    proxy_set_header X-Id $apikey_id;
    proxy_pass http://127.0.0.1:$TEST_NGINX_UPSTREAM_PORT;
}
--- request
GET /tok/missing.txt
--- more_headers
X-Token: $TEST_NGINX_KEY
--- response_body eval
"token=none key=none id=$ENV{TEST_NGINX_KEY_ID}\n"
--- no_error_log
[error]



=== TEST 8: usage after try_files into a location without apikey: one row, under the checking location
--- http_config eval
usage_http()
--- config
location /sentinel/ { apikey on; alias $TEST_NGINX_HTML_DIR/; }
location /api/ { apikey on; try_files $uri /plain/t.txt; }
location /plain/ { alias $TEST_NGINX_HTML_DIR/; }
--- request
GET /api/nope
--- more_headers
X-API-Key: $TEST_NGINX_U1
--- response_body
hello
--- check
is_deeply(rows(1), ['/api/ 200 ok'], "$block->{name}: exactly one row");
--- no_error_log
[error]



=== TEST 9: usage after error_page into a proxied named location without apikey
--- http_config eval
usage_http('location / { return 200 "upstream\\n"; }')
--- config
location /sentinel/ { apikey on; alias $TEST_NGINX_HTML_DIR/; }
location /api/ { apikey on; log_not_found off; error_page 404 = @up; }
location @up { proxy_pass http://127.0.0.1:$TEST_NGINX_UPSTREAM_PORT; }
--- request
GET /api/missing.txt
--- more_headers
X-API-Key: $TEST_NGINX_U2
--- response_body
upstream
--- check
is_deeply(rows(2), ['/api/ 200 ok'], "$block->{name}: exactly one row");
--- no_error_log
[error]



=== TEST 10: usage after X-Accel-Redirect into an internal location without apikey
--- http_config eval
usage_http('location / { add_header X-Accel-Redirect /internal/t.txt; return 204; }')
--- config
location /sentinel/ { apikey on; alias $TEST_NGINX_HTML_DIR/; }
location /api/ { apikey on; proxy_pass http://127.0.0.1:$TEST_NGINX_UPSTREAM_PORT; }
location /internal/ { internal; alias $TEST_NGINX_HTML_DIR/; }
--- request
GET /api/x
--- more_headers
X-API-Key: $TEST_NGINX_U3
--- response_body
hello
--- check
is_deeply(rows(3), ['/api/ 200 ok'], "$block->{name}: exactly one row");
--- no_error_log
[error]



=== TEST 11: usage after try_files then rewrite ... last into a location without apikey
--- http_config eval
usage_http()
--- config
location /sentinel/ { apikey on; alias $TEST_NGINX_HTML_DIR/; }
location /api/ { apikey on; try_files $uri /r/; }
location /r/ { rewrite ^ /plain/t.txt last; }
location /plain/ { alias $TEST_NGINX_HTML_DIR/; }
--- request
GET /api/nope
--- more_headers
X-API-Key: $TEST_NGINX_U4
--- response_body
hello
--- check
is_deeply(rows(4), ['/api/ 200 ok'], "$block->{name}: exactly one row");
--- no_error_log
[error]



=== TEST 12: apikey_usage off where the request ends does not drop it: the checking location decides
--- http_config eval
usage_http()
--- config
location /sentinel/ { apikey on; alias $TEST_NGINX_HTML_DIR/; }
location /api/ { apikey on; apikey_endpoint "checked"; try_files $uri /quiet/t.txt; }
location /quiet/ { apikey_usage off; alias $TEST_NGINX_HTML_DIR/; }
--- request
GET /api/nope
--- more_headers
X-API-Key: $TEST_NGINX_U5
--- response_body
hello
--- check
is_deeply(rows(5), ['checked 200 ok'], "$block->{name}: exactly one row");
--- no_error_log
[error]



=== TEST 13: apikey_usage off in the checking location: no row, wherever the request ends
--- http_config eval
usage_http()
--- config
location /sentinel/ { apikey on; alias $TEST_NGINX_HTML_DIR/; }
location /nocap/ { apikey on; apikey_usage off; try_files $uri /plain/t.txt; }
location /plain/ { alias $TEST_NGINX_HTML_DIR/; }
--- request
GET /nocap/nope
--- more_headers
X-API-Key: $TEST_NGINX_U6
--- response_body
hello
--- check
is_deeply(rows(6), [], "$block->{name}: no row");
--- no_error_log
[error]



=== TEST 14: a redirect between two apikey locations: one row, under the last one that checked
--- http_config eval
usage_http()
--- config
location /sentinel/ { apikey on; alias $TEST_NGINX_HTML_DIR/; }
location /api/ { apikey on; try_files $uri /v2/t.txt; }
location /v2/ { apikey on; alias $TEST_NGINX_HTML_DIR/; }
--- request
GET /api/nope
--- more_headers
X-API-Key: $TEST_NGINX_U7
--- response_body
hello
--- check
is_deeply(rows(7), ['/v2/ 200 ok'], "$block->{name}: exactly one row");
--- no_error_log
[error]



=== TEST 15: a rejected key proxied by error_page 401 = @named: one row with its result
--- http_config eval
usage_http('location / { return 200 "upstream\\n"; }')
--- config
location /sentinel/ { apikey on; alias $TEST_NGINX_HTML_DIR/; }
location /api/ { apikey on; error_page 401 = @up; }
location @up { proxy_pass http://127.0.0.1:$TEST_NGINX_UPSTREAM_PORT; }
--- request
GET /api/x
--- more_headers
X-API-Key: $TEST_NGINX_UREV
--- response_body
upstream
--- check
is_deeply(rows('rev'), ['/api/ 200 revoked'], "$block->{name}: exactly one row");
--- no_error_log
[error]



=== TEST 16: a key-table slot stuck mid-update (its writer died): 503 unavailable at once, other keys unaffected
--- init
our $stuck = key_slot_offset($ENV{TEST_NGINX_KEY2});
flip_seq($stuck);
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location /t.txt { apikey on; add_header X-Result $apikey_result always; }
--- raw_request eval
["GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_KEY2}\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_KEY}\r\n\r\n"]
--- error_code eval
[503, 200]
--- response_headers eval
["X-Result: unavailable", "X-Result: ok"]
--- check
my (@ms, %st);
for (1 .. 21) {
    my $t0 = Time::HiRes::time();
    $st{ http_get('/t.txt', ["X-API-Key: $ENV{TEST_NGINX_KEY2}"])->{status} }++;
    push @ms, (Time::HiRes::time() - $t0) * 1000;
}
@ms = sort { $a <=> $b } @ms;
flip_seq($stuck);
is_deeply(\%st, { 503 => 21 }, "$block->{name}: 21 more requests, all 503");
ok($ms[10] < 50, "$block->{name}: the median request with the stuck slot took < 50 ms")
    or diag("median $ms[10] ms");
note(sprintf 'stuck slot: median request %.2f ms', $ms[10]);
is(http_get('/t.txt', ["X-API-Key: $ENV{TEST_NGINX_KEY2}"])->{status}, 200,
   "$block->{name}: the slot released, the key works again");
--- error_log
apikey: key table entry locked mid-update, rejecting request with 503
--- no_error_log
[error]
