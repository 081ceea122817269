# Authentication in the access phase: where the key may come from, every
# rejection reason (401 missing / malformed / unknown / expired / revoked,
# 403 forbidden), the variables, hiding the key from upstreams, and the
# documented traps (return, internal redirects, per-key limit_req).

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;

# --- keys ---------------------------------------------------------------------

start_postgres();
start_apikeyd();

my $org = apikeyctl('org', 'create', 'acme');
sub key { apikeyctl('key', 'create', '--org', $org->{org_id}, @_) }

my $k1      = key('--name', 'k1');
my $k2      = key('--name', 'k2');
my $admin   = key('--name', 'admin-key', '--scopes', 'admin,read');
my $adm1    = key('--name', 'admin-only', '--scopes', 'admin');
my $read    = key('--name', 'reader', '--scopes', 'read');
my $pfx     = key('--name', 'prefixed', '--prefix', 'test1');
my $pfx8    = key('--name', 'prefixed8', '--prefix', 'abcd1234');
my $eight   = key('--name', 'eight', '--scopes', 's1,s2,s3,s4,s5,s6,s7,s8');
my $seven   = key('--name', 'seven', '--scopes', 's1,s2,s3,s4,s5,s6,s7,other');
my $gone    = key('--name', 'deleted');
my $expired = key('--name', 'expired');
my $revoked = key('--name', 'revoked');
my $both    = key('--name', 'expired-then-revoked');
# names around the verdict's short block (32 bytes) and at the maximum
my $n32     = key('--name', ('a' x 31) . 'Z', '--scopes', 'read');
my $n33     = key('--name', ('b' x 32) . 'Y');
my $n100    = key('--name', ('c' x 99) . 'X', '--scopes', 's1,s2,s3,s4,s5,s6,s7,s8');

# the harness's key generator (make_key, key_typo) agrees with apikeyctl on
# the checksum
is(key_checksum(substr($k1->{key}, 0, -6)), substr($k1->{key}, -6),
   'the test checksum matches apikeyctl keys');

psql(q{DELETE FROM api_keys WHERE id = :'id'}, { id => $gone->{key_id} });
psql(q{UPDATE api_keys SET expires_at = now() - interval '1 minute' WHERE id = :'id'},
     { id => $expired->{key_id} });
apikeyctl('key', 'revoke', $revoked->{key_id});
psql(q{UPDATE api_keys SET expires_at = now() - interval '2 minutes' WHERE id = :'id'},
     { id => $both->{key_id} });
apikeyctl('key', 'revoke', $both->{key_id});

%ENV = (%ENV,
    TEST_NGINX_ORG          => $org->{org_id},
    TEST_NGINX_KEY          => $k1->{key},
    TEST_NGINX_KEY_ID       => $k1->{key_id},
    TEST_NGINX_KEY2         => $k2->{key},
    TEST_NGINX_KEY2_ID      => $k2->{key_id},
    TEST_NGINX_ADMIN_KEY    => $admin->{key},
    TEST_NGINX_ADMIN1_KEY   => $adm1->{key},
    TEST_NGINX_READ_KEY     => $read->{key},
    TEST_NGINX_PREFIX_KEY   => $pfx->{key},
    TEST_NGINX_PREFIX8_KEY  => $pfx8->{key},
    TEST_NGINX_EIGHT_KEY    => $eight->{key},
    TEST_NGINX_SEVEN_KEY    => $seven->{key},
    TEST_NGINX_N32_KEY      => $n32->{key},
    TEST_NGINX_N33_KEY      => $n33->{key},
    TEST_NGINX_N100_KEY     => $n100->{key},
    TEST_NGINX_GONE_KEY     => $gone->{key},
    TEST_NGINX_EXPIRED_KEY  => $expired->{key},
    TEST_NGINX_EXPIRED_ID   => $expired->{key_id},
    TEST_NGINX_REVOKED_KEY  => $revoked->{key},
    TEST_NGINX_REVOKED_ID   => $revoked->{key_id},
    TEST_NGINX_BOTH_KEY     => $both->{key},
    TEST_NGINX_MADEUP_KEY   => make_key(),
    TEST_NGINX_TYPO_KEY     => key_typo($k1->{key}, 5),     # in the random part
    TEST_NGINX_TYPO_SUM_KEY => key_typo($k1->{key}, 33),    # in the checksum
    TEST_NGINX_SHORT_KEY    => substr($k1->{key}, 0, -1),
    TEST_NGINX_LONG_KEY     => $k1->{key} . 'A',
    TEST_NGINX_NONB62_KEY   => substr($k1->{key}, 0, 10) . '-' . substr($k1->{key}, 11),
    TEST_NGINX_UPPER_PFX    => 'AK' . substr($k1->{key}, 2),
    TEST_NGINX_GARBAGE      => join('', map { chr(33 + int rand 94) } 1 .. 4096) =~ s/[\$\\]/x/gr,
);

# Wait until the key table reflects all of the above (deleted row dropped,
# expiry and revocation published), through a real nginx.
my $t = wait_key_results({ $k1->{key} => 'ok', $gone->{key} => 'unknown',
                           $expired->{key} => 'expired', $revoked->{key} => 'revoked',
                           $both->{key} => 'revoked' },
                         10, 'key table has every test key in its final state');
note(sprintf 'key table settled after %.0f ms', $t * 1000);

run_tests();

__DATA__

=== TEST 1: a valid key in X-API-Key: 200 and $apikey_result ok
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location /t.txt { apikey on; add_header X-Result $apikey_result always; }
--- request
GET /t.txt
--- more_headers
X-API-Key: $TEST_NGINX_KEY
--- response_body
hello
--- response_headers
X-Result: ok
!WWW-Authenticate
--- no_error_log
[error]
rejected



=== TEST 2: header name is case-insensitive
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location /t.txt { apikey on; }
--- request
GET /t.txt
--- more_headers
x-api-key: $TEST_NGINX_KEY
--- response_body
hello
--- no_error_log
[error]



=== TEST 3: Authorization: Bearer <key>
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location /t.txt { apikey on; add_header X-Result $apikey_result always; }
--- request
GET /t.txt
--- more_headers
Authorization: Bearer $TEST_NGINX_KEY
--- response_body
hello
--- response_headers
X-Result: ok
--- no_error_log
[error]



=== TEST 4: lowercase "bearer" and upper case "BEARER" are accepted
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location /t.txt { apikey on; }
--- raw_request eval
["GET /t.txt HTTP/1.0\r\nAuthorization: bearer $ENV{TEST_NGINX_KEY}\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nAuthorization: BEARER $ENV{TEST_NGINX_KEY}\r\n\r\n"]
--- error_code: 200
--- response_body
hello
--- no_error_log
[error]



=== TEST 5: "Bearer   <key>  " (extra spaces) and a tab are accepted
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location /t.txt { apikey on; }
--- raw_request eval
["GET /t.txt HTTP/1.0\r\nAuthorization: Bearer   $ENV{TEST_NGINX_KEY}  \r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nAuthorization:Bearer\t$ENV{TEST_NGINX_KEY}\r\n\r\n"]
--- error_code: 200
--- response_body
hello
--- no_error_log
[error]



=== TEST 6: "Bearer<key>" without a space is not a bearer key: 401
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location /t.txt { apikey on; add_header X-Result $apikey_result always; }
--- request
GET /t.txt
--- more_headers
Authorization: Bearer$TEST_NGINX_KEY
--- error_code: 401
--- response_headers
WWW-Authenticate: ApiKey
--- response_headers_like
X-Result: ^(missing|malformed)$
--- no_error_log
[error]



=== TEST 7: other Authorization schemes are not keys: 401 missing
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location /t.txt { apikey on; add_header X-Result $apikey_result always; }
--- raw_request eval
["GET /t.txt HTTP/1.0\r\nAuthorization: Basic dXNlcjpwYXNz\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nAuthorization: Bearer\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nAuthorization: Bearer    \r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nAuthorization: $ENV{TEST_NGINX_KEY}\r\n\r\n"]
--- error_code: 401
--- response_headers
X-Result: missing
WWW-Authenticate: ApiKey
--- no_error_log
[error]



=== TEST 8: custom apikey_header: the key in that header works, X-API-Key does not; Bearer still does
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location /t.txt {
    apikey on;
    apikey_header X-Token;
    add_header X-Result $apikey_result always;
}
--- raw_request eval
["GET /t.txt HTTP/1.0\r\nX-Token: $ENV{TEST_NGINX_KEY}\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nx-token: $ENV{TEST_NGINX_KEY}\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_KEY}\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nAuthorization: Bearer $ENV{TEST_NGINX_KEY}\r\n\r\n"]
--- error_code eval
[200, 200, 401, 200]
--- response_headers eval
["X-Result: ok", "X-Result: ok", "X-Result: missing", "X-Result: ok"]
--- no_error_log
[error]



=== TEST 9: apikey_header set at http level is inherited
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
apikey_header X-Token;
--- config
location /t.txt { apikey on; }
--- request
GET /t.txt
--- more_headers
X-Token: $TEST_NGINX_KEY
--- response_body
hello
--- no_error_log
[error]



=== TEST 10: no key: 401 missing with WWW-Authenticate: ApiKey, reason at info
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location /t.txt { apikey on; add_header X-Result $apikey_result always; }
--- request
GET /t.txt
--- error_code: 401
--- response_headers
WWW-Authenticate: ApiKey
X-Result: missing
--- error_log eval
qr/\[info\] .*apikey: request rejected, key missing/
--- no_error_log
[error]



=== TEST 11: empty X-API-Key header: 401 missing
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location /t.txt { apikey on; add_header X-Result $apikey_result always; }
--- raw_request eval
["GET /t.txt HTTP/1.0\r\nX-API-Key:\r\n\r\n", "GET /t.txt HTTP/1.0\r\nX-API-Key:    \r\n\r\n"]
--- error_code: 401
--- response_headers
WWW-Authenticate: ApiKey
X-Result: missing
--- no_error_log
[error]



=== TEST 12: the key in the query string is never looked at
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location /t.txt { apikey on; add_header X-Result $apikey_result always; }
--- request eval
["GET /t.txt?api_key=$ENV{TEST_NGINX_KEY}", "GET /t.txt?key=$ENV{TEST_NGINX_KEY}&apikey=$ENV{TEST_NGINX_KEY}"]
--- error_code: 401
--- response_headers
X-Result: missing
--- no_error_log
[error]



=== TEST 13: one-character typo in the random part: 401 malformed, never looked up
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location /t.txt { apikey on; add_header X-Result $apikey_result always; add_header X-Id "[$apikey_id]" always; }
--- request
GET /t.txt
--- more_headers
X-API-Key: $TEST_NGINX_TYPO_KEY
--- error_code: 401
--- response_headers
WWW-Authenticate: ApiKey
X-Result: malformed
X-Id: []
--- error_log eval
qr/\[info\] .*apikey: request rejected, key malformed/
--- no_error_log
[error]
key unknown



=== TEST 14: typo in the checksum, typo via Bearer: 401 malformed
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location /t.txt { apikey on; add_header X-Result $apikey_result always; }
--- raw_request eval
["GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_TYPO_SUM_KEY}\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nAuthorization: Bearer $ENV{TEST_NGINX_TYPO_KEY}\r\n\r\n"]
--- error_code: 401
--- response_headers
X-Result: malformed
--- no_error_log
[error]
key unknown



=== TEST 15: wrong length, non-base62, wrong prefix case, bare prefix: 401 malformed
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location /t.txt { apikey on; add_header X-Result $apikey_result always; }
--- raw_request eval
[map { "GET /t.txt HTTP/1.0\r\nX-API-Key: $_\r\n\r\n" }
 $ENV{TEST_NGINX_SHORT_KEY}, $ENV{TEST_NGINX_LONG_KEY}, $ENV{TEST_NGINX_NONB62_KEY},
 $ENV{TEST_NGINX_UPPER_PFX}, "ak_", "ak", "_", "x", "ak_" . ("0" x 36),
 "toolongpfx_" . substr($ENV{TEST_NGINX_KEY}, 3)]
--- error_code: 401
--- response_headers
X-Result: malformed
WWW-Authenticate: ApiKey
--- no_error_log
[error]
key unknown



=== TEST 16: 4 KB of garbage in X-API-Key and in Bearer: 401 malformed, not 400/500
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location /t.txt { apikey on; add_header X-Result $apikey_result always; }
--- raw_request eval
["GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_GARBAGE}\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nAuthorization: Bearer $ENV{TEST_NGINX_GARBAGE}\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nX-API-Key: " . ("\x80\xff" x 2048) . "\r\n\r\n"]
--- error_code: 401
--- response_headers
X-Result: malformed
--- no_error_log
[error]
[alert]
[crit]



=== TEST 17: two X-API-Key headers with different keys: 401 malformed
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location /t.txt { apikey on; add_header X-Result $apikey_result always; }
--- request
GET /t.txt
--- more_headers
X-API-Key: $TEST_NGINX_KEY
X-API-Key: $TEST_NGINX_KEY2
--- error_code: 401
--- response_headers
X-Result: malformed
WWW-Authenticate: ApiKey
--- no_error_log
[error]



=== TEST 18: the key header twice, even with the same key: 401 malformed (documented)
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location /t.txt { apikey on; add_header X-Result $apikey_result always; }
--- request
GET /t.txt
--- more_headers
X-API-Key: $TEST_NGINX_KEY
x-api-key: $TEST_NGINX_KEY
--- error_code: 401
--- response_headers
X-Result: malformed
--- no_error_log
[error]



=== TEST 19: X-API-Key and Bearer: the same key is fine, different keys are malformed
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location /t.txt { apikey on; add_header X-Result $apikey_result always; }
--- raw_request eval
["GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_KEY}\r\nAuthorization: Bearer $ENV{TEST_NGINX_KEY}\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_KEY}\r\nAuthorization: Bearer $ENV{TEST_NGINX_KEY2}\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nAuthorization: Bearer $ENV{TEST_NGINX_KEY2}\r\nX-API-Key: $ENV{TEST_NGINX_KEY}\r\n\r\n"]
--- error_code eval
[200, 401, 401]
--- response_headers eval
["X-Result: ok", "X-Result: malformed", "X-Result: malformed"]
--- no_error_log
[error]



=== TEST 20: well-formed key whose row was deleted: 401 unknown
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location /t.txt { apikey on; add_header X-Result $apikey_result always; add_header X-Id "[$apikey_id]" always; }
--- request
GET /t.txt
--- more_headers
X-API-Key: $TEST_NGINX_GONE_KEY
--- error_code: 401
--- response_headers
WWW-Authenticate: ApiKey
X-Result: unknown
X-Id: []
--- error_log eval
qr/\[info\] .*apikey: request rejected, key unknown/
--- no_error_log
[error]



=== TEST 21: well-formed key that never existed (right checksum), also via Bearer: 401 unknown
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location /t.txt { apikey on; add_header X-Result $apikey_result always; }
--- raw_request eval
["GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_MADEUP_KEY}\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nAuthorization: Bearer $ENV{TEST_NGINX_MADEUP_KEY}\r\n\r\n"]
--- error_code: 401
--- response_headers
X-Result: unknown
--- no_error_log
[error]



=== TEST 22: expired key: 401 expired, the log names the key id
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location /t.txt { apikey on; add_header X-Result $apikey_result always; add_header X-Id $apikey_id always; }
--- request
GET /t.txt
--- more_headers
X-API-Key: $TEST_NGINX_EXPIRED_KEY
--- error_code: 401
--- response_headers
WWW-Authenticate: ApiKey
X-Result: expired
X-Id: $TEST_NGINX_EXPIRED_ID
--- error_log eval
qr/\[info\] .*apikey: key \Q$ENV{TEST_NGINX_EXPIRED_ID}\E is expired/
--- no_error_log
[error]



=== TEST 23: revoked key: 401 revoked, the log names the key id
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location /t.txt { apikey on; add_header X-Result $apikey_result always; }
--- request
GET /t.txt
--- more_headers
Authorization: Bearer $TEST_NGINX_REVOKED_KEY
--- error_code: 401
--- response_headers
WWW-Authenticate: ApiKey
X-Result: revoked
--- error_log eval
qr/\[info\] .*apikey: key \Q$ENV{TEST_NGINX_REVOKED_ID}\E is revoked/
--- no_error_log
[error]



=== TEST 24: keys with a custom prefix (5 and 8 characters) work
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location /t.txt { apikey on; }
--- raw_request eval
["GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_PREFIX_KEY}\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nAuthorization: Bearer $ENV{TEST_NGINX_PREFIX8_KEY}\r\n\r\n"]
--- response_body
hello
--- no_error_log
[error]



=== TEST 25: apikey_scope admin: a key without it 403 forbidden, with it 200
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location /t.txt {
    apikey on;
    apikey_scope admin;
    add_header X-Result $apikey_result always;
}
--- raw_request eval
["GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_KEY}\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_READ_KEY}\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_ADMIN1_KEY}\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nAuthorization: Bearer $ENV{TEST_NGINX_ADMIN_KEY}\r\n\r\n"]
--- error_code eval
[403, 403, 200, 200]
--- response_headers eval
["X-Result: forbidden\n!WWW-Authenticate", "X-Result: forbidden", "X-Result: ok", "X-Result: ok"]
--- error_log eval
qr/\[info\] .*apikey: key \Q$ENV{TEST_NGINX_KEY_ID}\E lacks a required scope/
--- no_error_log
[error]



=== TEST 26: apikey_scope with two scopes needs both
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location /t.txt {
    apikey on;
    apikey_scope admin read;
    add_header X-Result $apikey_result always;
}
--- raw_request eval
["GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_ADMIN_KEY}\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_ADMIN1_KEY}\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_READ_KEY}\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_KEY}\r\n\r\n"]
--- error_code eval
[200, 403, 403, 403]
--- no_error_log
[error]



=== TEST 27: apikey_scope with 8 scopes: all 8 needed
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location /t.txt { apikey on; apikey_scope s1 s2 s3 s4 s5 s6 s7 s8; }
--- raw_request eval
["GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_EIGHT_KEY}\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_SEVEN_KEY}\r\n\r\n"]
--- error_code eval
[200, 403]
--- no_error_log
[error]



=== TEST 28: an invalid key in a scoped location is still 401, not 403
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location /t.txt { apikey on; apikey_scope admin; add_header X-Result $apikey_result always; }
--- raw_request eval
["GET /t.txt HTTP/1.0\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_TYPO_KEY}\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_REVOKED_KEY}\r\n\r\n"]
--- error_code: 401
--- response_headers eval
["X-Result: missing", "X-Result: malformed", "X-Result: revoked"]
--- no_error_log
[error]



=== TEST 29: $apikey_org, $apikey_id, $apikey_name reach the upstream; the key does not
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
map $http_x_api_key $up_key { "" none; "$TEST_NGINX_KEY" same; default other; }
map $http_authorization $up_auth { "" none; default present; }
server {
    listen 127.0.0.1:$TEST_NGINX_UPSTREAM_PORT;
    location / { return 200 "org=$http_x_org id=$http_x_id name=$http_x_name key=$up_key auth=$up_auth\n"; }
}
--- config
location /api/ {
    apikey on;
    proxy_set_header X-Org $apikey_org;
    proxy_set_header X-Id $apikey_id;
    proxy_set_header X-Name $apikey_name;
    proxy_pass http://127.0.0.1:$TEST_NGINX_UPSTREAM_PORT;
}
--- request
GET /api/x
--- more_headers
X-API-Key: $TEST_NGINX_KEY
--- response_body
org=$TEST_NGINX_ORG id=$TEST_NGINX_KEY_ID name=k1 key=none auth=none
--- no_error_log
[error]



=== TEST 30: the Bearer header is hidden from the upstream too; other headers are kept
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
map $http_x_api_key $up_key { "" none; "$TEST_NGINX_KEY" same; default other; }
map $http_authorization $up_auth { "" none; "Bearer $TEST_NGINX_KEY" same; default other; }
server {
    listen 127.0.0.1:$TEST_NGINX_UPSTREAM_PORT;
    location / { return 200 "key=$up_key auth=$up_auth foo=$http_x_foo host=$http_host\n"; }
}
--- config
location /api/ {
    apikey on;
    proxy_set_header Host $host;
    proxy_pass http://127.0.0.1:$TEST_NGINX_UPSTREAM_PORT;
}
--- request
GET /api/x
--- more_headers
X-Foo: before
Authorization: Bearer $TEST_NGINX_KEY
X-Foo2: after
--- response_body
key=none auth=none foo=before host=localhost
--- no_error_log
[error]



=== TEST 31: with the key in X-API-Key, an unrelated Authorization header reaches the upstream
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
map $http_x_api_key $up_key { "" none; "$TEST_NGINX_KEY" same; default other; }
server {
    listen 127.0.0.1:$TEST_NGINX_UPSTREAM_PORT;
    location / { return 200 "key=$up_key auth=$http_authorization\n"; }
}
--- config
location /api/ {
    apikey on;
    proxy_pass http://127.0.0.1:$TEST_NGINX_UPSTREAM_PORT;
}
--- request
GET /api/x
--- more_headers
Authorization: Basic dXNlcjpwYXNz
X-API-Key: $TEST_NGINX_KEY
--- response_body
key=none auth=Basic dXNlcjpwYXNz
--- no_error_log
[error]



=== TEST 32: apikey_hide_key off: the upstream sees the key header and the Bearer header
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
map $http_x_api_key $up_key { "" none; "$TEST_NGINX_KEY" same; default other; }
map $http_authorization $up_auth { "" none; "Bearer $TEST_NGINX_KEY" same; default other; }
server {
    listen 127.0.0.1:$TEST_NGINX_UPSTREAM_PORT;
    location / { return 200 "key=$up_key auth=$up_auth\n"; }
}
--- config
location /api/ {
    apikey on;
    apikey_hide_key off;
    proxy_pass http://127.0.0.1:$TEST_NGINX_UPSTREAM_PORT;
}
--- raw_request eval
["GET /api/x HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_KEY}\r\n\r\n",
 "GET /api/x HTTP/1.0\r\nAuthorization: Bearer $ENV{TEST_NGINX_KEY}\r\n\r\n"]
--- response_body eval
["key=same auth=none\n", "key=none auth=same\n"]
--- no_error_log
[error]



=== TEST 33: apikey_hide_key off at server level, on again in a location
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
map $http_x_api_key $up_key { "" none; "$TEST_NGINX_KEY" same; default other; }
server {
    listen 127.0.0.1:$TEST_NGINX_UPSTREAM_PORT;
    location / { return 200 "key=$up_key\n"; }
}
--- config
apikey_hide_key off;
location /off/ { apikey on; proxy_pass http://127.0.0.1:$TEST_NGINX_UPSTREAM_PORT; }
location /on/ { apikey on; apikey_hide_key on; proxy_pass http://127.0.0.1:$TEST_NGINX_UPSTREAM_PORT; }
--- request eval
["GET /off/x", "GET /on/x"]
--- more_headers
X-API-Key: $TEST_NGINX_KEY
--- response_body eval
["key=same\n", "key=none\n"]
--- no_error_log
[error]



=== TEST 34: a custom apikey_header is hidden too
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
server {
    listen 127.0.0.1:$TEST_NGINX_UPSTREAM_PORT;
    location / { return 200 "token=[$http_x_token] id=$http_x_id\n"; }
}
--- config
location /api/ {
    apikey on;
    apikey_header X-Token;
    proxy_set_header X-Id $apikey_id;
    proxy_pass http://127.0.0.1:$TEST_NGINX_UPSTREAM_PORT;
}
--- request
GET /api/x
--- more_headers
X-Token: $TEST_NGINX_KEY
--- response_body
token=[] id=$TEST_NGINX_KEY_ID
--- no_error_log
[error]



=== TEST 35: variables work in preaccess: limit_req per $apikey_id
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
limit_req_zone $apikey_id zone=k:1m rate=1r/m;
--- config
location /t.txt {
    apikey on;
    limit_req zone=k;
    add_header X-Result $apikey_result always;
}
--- raw_request eval
["GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_KEY}\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_KEY}\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nAuthorization: Bearer $ENV{TEST_NGINX_KEY}\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_KEY2}\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_TYPO_KEY}\r\n\r\n"]
--- error_code eval
[200, 503, 503, 200, 401, 401, 401]
--- error_log
limiting requests
--- no_error_log
[alert]



=== TEST 36: variables work in the rewrite phase (if / map)
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
map $apikey_result $teapot { malformed 1; default 0; }
--- config
location /t.txt {
    apikey on;
    if ($teapot) { return 418; }
    set $who $apikey_name;
    add_header X-Who $who always;
}
--- raw_request eval
["GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_TYPO_KEY}\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_KEY2}\r\n\r\n"]
--- error_code eval
[418, 200]
--- response_headers eval
["", "X-Who: k2"]
--- no_error_log
[error]



=== TEST 37: documented trap: apikey on + return answers before the access phase (200 without a key)
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location = /r { apikey on; return 200 "not protected\n"; }
--- request
GET /r
--- error_code: 200
--- response_body
not protected
--- no_error_log
[error]



=== TEST 38: internal redirect after auth (try_files fallback) still 200 with hide on
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location / {
    apikey on;
    try_files $uri /t.txt;
    add_header X-Result $apikey_result always;
}
--- raw_request eval
["GET /nope HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_KEY}\r\n\r\n",
 "GET /nope HTTP/1.0\r\nAuthorization: Bearer $ENV{TEST_NGINX_KEY}\r\n\r\n",
 "GET /nope HTTP/1.0\r\n\r\n"]
--- error_code eval
[200, 200, 401]
--- response_body_like eval
[qr/^hello\n\z/, qr/^hello\n\z/, qr/401/]
--- no_error_log
[error]



=== TEST 39: error_page to a proxied named location: key stays hidden, variables still set
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
map $http_x_api_key $up_key { "" none; "$TEST_NGINX_KEY" same; default other; }
server {
    listen 127.0.0.1:$TEST_NGINX_UPSTREAM_PORT;
    location / { return 200 "key=$up_key id=$http_x_id\n"; }
}
--- config
location /api/ {
    apikey on;
    log_not_found off;
    error_page 404 = @fallback;
}
location @fallback {
    apikey on;
    proxy_set_header X-Id $apikey_id;
    proxy_pass http://127.0.0.1:$TEST_NGINX_UPSTREAM_PORT;
}
--- request
GET /api/missing.txt
--- more_headers
X-API-Key: $TEST_NGINX_KEY
--- response_body
key=none id=$TEST_NGINX_KEY_ID
--- no_error_log
[error]



=== TEST 40: internal redirect into a scoped location re-checks the scope
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location /pub/ {
    apikey on;
    try_files $uri /admin/t.txt;
}
location /admin/ {
    apikey on;
    apikey_scope admin;
    alias $TEST_NGINX_HTML_DIR/;
}
--- raw_request eval
["GET /pub/x HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_KEY}\r\n\r\n",
 "GET /pub/x HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_ADMIN_KEY}\r\n\r\n"]
--- error_code eval
[403, 200]
--- no_error_log
[error]



=== TEST 41: apikey off in a location under apikey on in the server
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
apikey on;
location /t.txt { }
location /t.json { apikey off; }
--- request eval
["GET /t.txt", "GET /t.json"]
--- error_code eval
[401, 200]
--- no_error_log
[error]



=== TEST 42: POST with a body and a valid key reaches the upstream with its body
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
server {
    listen 127.0.0.1:$TEST_NGINX_UPSTREAM_PORT;
    location / { return 200 "$request_method len=$http_content_length name=$http_x_name\n"; }
}
--- config
location /api/ {
    apikey on;
    proxy_set_header X-Name $apikey_name;
    proxy_pass http://127.0.0.1:$TEST_NGINX_UPSTREAM_PORT;
}
--- request
POST /api/x
--- more_headers
X-API-Key: $TEST_NGINX_KEY2
--- request_body chomp
hello world
--- response_body
POST len=11 name=k2
--- no_error_log
[error]



=== TEST 43: the same key in X-API-Key and Bearer: neither header reaches the upstream
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
map $http_x_api_key $up_key { "" none; "$TEST_NGINX_KEY" same; default other; }
map $http_authorization $up_auth { "" none; "Bearer $TEST_NGINX_KEY" same; default other; }
server {
    listen 127.0.0.1:$TEST_NGINX_UPSTREAM_PORT;
    location / { return 200 "key=$up_key auth=$up_auth\n"; }
}
--- config
location /api/ {
    apikey on;
    proxy_pass http://127.0.0.1:$TEST_NGINX_UPSTREAM_PORT;
}
--- raw_request eval
["GET /api/x HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_KEY}\r\nAuthorization: Bearer $ENV{TEST_NGINX_KEY}\r\n\r\n",
 "GET /api/x HTTP/1.0\r\nAuthorization: Bearer $ENV{TEST_NGINX_KEY}\r\nX-API-Key: $ENV{TEST_NGINX_KEY}\r\n\r\n"]
--- response_body eval
["key=none auth=none\n", "key=none auth=none\n"]
--- no_error_log
[error]



=== TEST 44: error_page 401 to an open location: custom body, one WWW-Authenticate
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location /t.txt { apikey on; error_page 401 /t.json; }
location = /t.json { apikey off; }
--- request
GET /t.txt
--- error_code: 401
--- response_body
{"ok":true}
--- response_headers
WWW-Authenticate: ApiKey
--- no_error_log
[error]



=== TEST 45: error_page 401 = @named with return: custom JSON body, WWW-Authenticate kept
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location /t.txt { apikey on; error_page 401 = @unauth; }
location @unauth { default_type application/json; return 401 '{"error":"$apikey_result"}\n'; }
--- request
GET /t.txt
--- more_headers
X-API-Key: $TEST_NGINX_TYPO_KEY
--- error_code: 401
--- response_body
{"error":"malformed"}
--- response_headers
WWW-Authenticate: ApiKey
--- no_error_log
[error]



=== TEST 46: server-wide apikey on with error_page 401 to a path under it: still one 401
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
apikey on;
error_page 401 /t.json;
location / { }
--- request
GET /t.txt
--- error_code: 401
--- response_headers
WWW-Authenticate: ApiKey
--- no_error_log
[error]
[alert]



=== TEST 47: with usage capture on, every auth result is unchanged
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
apikey_usage $TEST_NGINX_APIKEY_USAGE size=1m;
--- config
location /t.txt { apikey on; add_header X-Result $apikey_result always; }
location /admin/ { apikey on; apikey_scope admin; alias html/; add_header X-Result $apikey_result always; }
--- raw_request eval
["GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_KEY}\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nAuthorization: Bearer $ENV{TEST_NGINX_KEY2}\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_TYPO_KEY}\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_GONE_KEY}\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_EXPIRED_KEY}\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_REVOKED_KEY}\r\n\r\n",
 "GET /admin/t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_KEY}\r\n\r\n",
 "GET /admin/t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_ADMIN_KEY}\r\n\r\n"]
--- error_code eval
[200, 200, 401, 401, 401, 401, 401, 403, 200]
--- response_headers eval
["X-Result: ok", "X-Result: ok", "X-Result: missing", "X-Result: malformed", "X-Result: unknown",
 "X-Result: expired", "X-Result: revoked", "X-Result: forbidden", "X-Result: ok"]
--- no_error_log
[error]
[alert]
[crit]



=== TEST 48: an empty X-API-Key next to a valid Bearer key: the Bearer key is used
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location /t.txt { apikey on; add_header X-Result $apikey_result always; }
--- raw_request eval
"GET /t.txt HTTP/1.0\r\nX-API-Key:\r\nAuthorization: Bearer $ENV{TEST_NGINX_KEY}\r\n\r\n"
--- error_code: 200
--- response_headers
X-Result: ok
--- no_error_log
[error]



=== TEST 49: the key header is matched by its name, not by nginx's hash of it (X-Token-c0 hashes as X-Token-an); short and long names too
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location /t.txt {
    apikey on;
    apikey_header X-Token-an;
    add_header X-Result $apikey_result always;
}
location /long/ {
    apikey on;
    apikey_header X-Gateway-Api-Key-Long;
    add_header X-Result $apikey_result always;
    alias html/;
}
--- raw_request eval
["GET /t.txt HTTP/1.0\r\nX-Token-an: $ENV{TEST_NGINX_KEY}\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nX-Token-c0: $ENV{TEST_NGINX_KEY}\r\n\r\n",
 "GET /t.txt HTTP/1.0\r\nX-Token-am: $ENV{TEST_NGINX_KEY}\r\n\r\n",
 "GET /long/t.txt HTTP/1.0\r\nx-gateway-api-key-long: $ENV{TEST_NGINX_KEY}\r\n\r\n",
 "GET /long/t.txt HTTP/1.0\r\nX-Gateway-Api-Key-Lonf: $ENV{TEST_NGINX_KEY}\r\n\r\n"]
--- error_code eval
[200, 401, 401, 200, 401]
--- response_headers eval
["X-Result: ok", "X-Result: missing", "X-Result: missing", "X-Result: ok", "X-Result: missing"]
--- no_error_log
[error]



=== TEST 50: hiding the key header wherever it comes (first, second, middle, last, among many): every other header keeps its value, on both sides, and the Cookie headers their order
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
map $http_x_api_key $up_key { "" none; default present; }
server {
    listen 127.0.0.1:$TEST_NGINX_UPSTREAM_PORT;
    location / { return 200 "key=$up_key cookie=$http_cookie ua=$http_user_agent a=$http_x_a z=$http_x_z front=$http_x_front\n"; }
}
--- config
location /api/ {
    apikey on;
    proxy_set_header X-Front "$http_cookie|$http_user_agent|$http_x_a|$http_x_api_key";
    proxy_pass http://127.0.0.1:$TEST_NGINX_UPSTREAM_PORT;
}
--- raw_request eval
my $k = "X-API-Key: $ENV{TEST_NGINX_KEY}\r\n";
my $many = join '', map { "X-Pad-$_: $_\r\n" } 1 .. 12;
["GET /api/x HTTP/1.0\r\n${k}Cookie: a=1\r\nUser-Agent: ua1\r\nX-A: 1\r\nCookie: b=2\r\nX-Z: z\r\n\r\n",
 "GET /api/x HTTP/1.0\r\nCookie: a=1\r\n${k}User-Agent: ua1\r\nX-A: 1\r\nCookie: b=2\r\nX-Z: z\r\n\r\n",
 "GET /api/x HTTP/1.0\r\nCookie: a=1\r\nUser-Agent: ua1\r\n${k}X-A: 1\r\nCookie: b=2\r\nX-Z: z\r\n\r\n",
 "GET /api/x HTTP/1.0\r\nCookie: a=1\r\nUser-Agent: ua1\r\nX-A: 1\r\nCookie: b=2\r\nX-Z: z\r\n$k\r\n",
 "GET /api/x HTTP/1.0\r\nCookie: a=1\r\nUser-Agent: ua1\r\n${many}X-A: 1\r\n${k}Cookie: b=2\r\nX-Z: z\r\n\r\n",
 "GET /api/x HTTP/1.0\r\nCookie: a=1\r\nUser-Agent: ua1\r\n${many}${many}X-A: 1\r\n${k}Cookie: b=2\r\nX-Z: z\r\n\r\n"]
--- error_code eval
[200, 200, 200, 200, 200, 200]
--- response_body eval
[("key=none cookie=a=1; b=2 ua=ua1 a=1 z=z front=a=1; b=2|ua1|1|\n") x 6]
--- no_error_log
[error]



=== TEST 51: a remembered key's verdict is whole: names of 32, 33 and 100 bytes, scopes or none, on the first request and again from the memo
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location /t.txt { apikey on; add_header X-Name "$apikey_name." always; }
location /s8.txt { apikey on; apikey_scope s8; alias html/t.txt; add_header X-Name "$apikey_name." always; }
--- raw_request eval
my @r;
for my $k ([N32 => '/t.txt'], [N33 => '/t.txt'], [N100 => '/s8.txt'], [N32 => '/s8.txt'], [N33 => '/s8.txt']) {
    push @r, ("GET $k->[1] HTTP/1.0\r\nX-API-Key: $ENV{\"TEST_NGINX_$k->[0]_KEY\"}\r\n\r\n") x 2;
}
\@r
--- error_code eval
[200, 200, 200, 200, 200, 200, 403, 403, 403, 403]
--- response_headers eval
[("X-Name: " . ("a" x 31) . "Z.") x 2, ("X-Name: " . ("b" x 32) . "Y.") x 2,
 ("X-Name: " . ("c" x 99) . "X.") x 2, ("X-Name: " . ("a" x 31) . "Z.") x 2,
 ("X-Name: " . ("b" x 32) . "Y.") x 2]
--- no_error_log
[error]



=== TEST 52: expired and revoked keys, asked again (from the memo): the same 401 and result every time; a key that expired and was revoked later is revoked
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location /t.txt { apikey on; add_header X-Result $apikey_result always; }
--- raw_request eval
[map { ("GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{\"TEST_NGINX_$_\"}\r\n\r\n") x 3 }
     qw(EXPIRED_KEY REVOKED_KEY BOTH_KEY KEY)]
--- error_code eval
[(401) x 9, (200) x 3]
--- response_headers eval
[("X-Result: expired") x 3, ("X-Result: revoked") x 6, ("X-Result: ok") x 3]
--- no_error_log
[error]
