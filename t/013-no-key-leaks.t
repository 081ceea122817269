# A key secret is shown once (apikeyctl's stdout) and never again: not in
# nginx's error.log at any level, not in apikeyd's log, not in apikeyctl's
# error messages, not in the PostgreSQL log (log_statement = all), not in the
# key table nor the database. Neither the key, nor its random part, nor the
# hex SHA-256 of it.

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use Digest::SHA qw(sha256_hex);

start_postgres();
psql(q{ALTER SYSTEM SET log_statement = 'all'});
psql(q{ALTER SYSTEM SET log_min_duration_statement = 0});
psql(q{ALTER SYSTEM SET log_min_error_statement = 'debug5'});
psql(q{SELECT pg_reload_conf()});
ok_eventually(sub { psql('SHOW log_statement')->[0][0] eq 'all' }, 5, 'PostgreSQL logs every statement');

start_apikeyd();

our $org = apikeyctl('org', 'create', 'leaks');
our %K;    # name -> { key, key_id, ... }
sub mk { my $n = shift; $K{$n} = new_key($org->{org_id}, $n, @_) }
mk('valid');
mk('bearer');
mk('scoped');
mk('deleted');
mk('revoked');
mk('expired');
mk('rotated', '--scopes', 'a,b');
mk('text');
$K{rotated_new} = apikeyctl('key', 'rotate', $K{rotated}{key_id}, '--grace', '1h');

{   # a key created through the text output (stdout is where it belongs)
    my ($rc, $out, $err) = apikeyctl_raw('key', 'create', '--org', $org->{org_id}, '--name', 'text2');
    is($rc, 0, 'key create (text output) exits 0');
    my ($key) = $out =~ /^key\s+(\S+)$/m;
    ok($key, 'the text output shows the key once');
    is($err, '', 'key create (text output): nothing on stderr');
    $K{text2} = { key => $key };
}

psql(q{DELETE FROM api_keys WHERE id = :'id'}, { id => $K{deleted}{key_id} });
psql(q{UPDATE api_keys SET expires_at = now() - interval '1 minute' WHERE id = :'id'},
     { id => $K{expired}{key_id} });
apikeyctl('key', 'revoke', $K{revoked}{key_id});

# Everything that must never show up: per key, the key, its random part
# (30 characters after "prefix_") and the hex SHA-256 (lower and upper case).
our @SECRETS = key_secrets(map { ($_ => $K{$_}{key}) } sort keys %K);

# -> names of the secrets found in $text (empty list: clean)
sub leaks { return secrets_in($_[0], @SECRETS) }

%ENV = (%ENV,
    TEST_NGINX_VALID   => $K{valid}{key},
    TEST_NGINX_BEARER  => $K{bearer}{key},
    TEST_NGINX_SCOPED  => $K{scoped}{key},
    TEST_NGINX_DELETED => $K{deleted}{key},
    TEST_NGINX_REVOKED => $K{revoked}{key},
    TEST_NGINX_EXPIRED => $K{expired}{key},
    TEST_NGINX_ROT_OLD => $K{rotated}{key},
    TEST_NGINX_ROT_NEW => $K{rotated_new}{key},
    TEST_NGINX_TEXT2   => $K{text2}{key},
    TEST_NGINX_TYPO    => key_typo($K{valid}{key}),
);

# wait until the key table has the final state of every key
wait_key_results({ $K{valid}{key} => 'ok', $K{deleted}{key} => 'unknown',
                   $K{revoked}{key} => 'revoked', $K{expired}{key} => 'expired',
                   $K{rotated_new}{key} => 'ok' }, 10, 'key table settled');

# --- the key table and the database hold no secret ------------------------------

{
    my $table = slurp($ENV{TEST_NGINX_APIKEY_KEYS}) // '';
    ok(length $table, 'key table file read');
    my @raw_secrets = grep { $_->[0] !~ /sha256$/i } @SECRETS;
    my @found = secrets_in($table, @raw_secrets);
    is_deeply(\@found, [], 'the key table file holds no key and no random part');

    my $dump = join "\n", map { join '|', @$_ } @{ psql(q{SELECT * FROM api_keys}) };
    is_deeply([ grep { !/sha256$/i } leaks($dump) ], [],
              'api_keys rows hold no key and no random part');
    my $hashes = psql(q{SELECT encode(key_hash, 'hex') FROM api_keys WHERE id = :'id'},
                      { id => $K{valid}{key_id} });
    is($hashes->[0][0], sha256_hex($K{valid}{key}), 'api_keys.key_hash is SHA-256(key)');
    my $hint = psql(q{SELECT hint FROM api_keys WHERE id = :'id'}, { id => $K{valid}{key_id} })->[0][0];
    is($hint, substr($K{valid}{key}, 0, 7), 'hint is prefix_ + 4 characters');
}

# The same requests in every block: each kind of key, both headers.
our @REQ = (
    "GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_VALID}\r\n\r\n",
    "GET /t.txt HTTP/1.0\r\nAuthorization: Bearer $ENV{TEST_NGINX_BEARER}\r\n\r\n",
    "GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_TYPO}\r\n\r\n",
    "GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_DELETED}\r\n\r\n",
    "GET /t.txt HTTP/1.0\r\nAuthorization: Bearer $ENV{TEST_NGINX_REVOKED}\r\n\r\n",
    "GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_EXPIRED}\r\n\r\n",
    "GET /scoped/t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_SCOPED}\r\n\r\n",
    "GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_ROT_OLD}\r\n\r\n",
    "GET /t.txt HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_ROT_NEW}\r\nAuthorization: Bearer $ENV{TEST_NGINX_TEXT2}\r\n\r\n",
    "GET /api/x HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_VALID}\r\n\r\n",
    "GET /api/x HTTP/1.0\r\nAuthorization: Bearer $ENV{TEST_NGINX_BEARER}\r\n\r\n",
    "GET /api/x HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_REVOKED}\r\n\r\n",
);
our @CODES = (200, 200, 401, 401, 401, 401, 403, 200, 401, 200, 200, 401);

# nginx core (not the module) dumps every request header at debug level:
# `http header: "X-API-Key: ..."`; the module's error-log writer masks the
# key there to its hint: `X-API-Key: ak_AbCd********************************`.
sub core_header_dump { $_[0] =~ /\[debug\] .*http header: "(?:X-API-Key|Authorization): / }

# --- apikeyd's log -------------------------------------------------------------------


# --- apikeyctl's error messages -----------------------------------------------------------

{
    my $k = $K{valid}{key};
    my $id = $K{valid}{key_id};
    for my $case (
        [ 'key revoke KEY',                  'key', 'revoke', $k ],
        [ 'key rotate KEY',                  'key', 'rotate', $k ],
        [ 'key list --org KEY',              'key', 'list', '--org', $k ],
        [ 'key create --org KEY',            'key', 'create', '--org', $k, '--name', 'x' ],
        [ 'key revoke ID KEY (extra argument)', 'key', 'revoke', $id, $k ],
        [ 'KEY as a command',                $k ],
        [ 'key create --scopes KEY',         'key', 'create', '--org', $org->{org_id}, '--name', 'x', '--scopes', $k ],
        [ 'key create --prefix KEY',         'key', 'create', '--org', $org->{org_id}, '--name', 'x', '--prefix', $k ],
        [ 'key create --expires-in KEY',     'key', 'create', '--org', $org->{org_id}, '--name', 'x', '--expires-in', $k ],
        [ 'key rotate ID --grace KEY',       'key', 'rotate', $id, '--grace', $k ],
        [ 'key list --dormant-days KEY',     'key', 'list', '--org', $org->{org_id}, '--dormant-days', $k ],
        [ '--KEY as an option',              'org', 'list', "--$k" ],
    ) {
        my ($name, @args) = @$case;
        for my $json (0, 1) {
            my $label = "apikeyctl $name" . ($json ? ' --json' : '');
            my ($rc, $out, $err) = apikeyctl_raw(($json ? '--json' : ()), @args);
            isnt($rc, 0, "$label - fails");
            is_deeply([ leaks("$out$err") ], [], "$label - the key is not repeated")
                or diag('stderr (key masked): ' . ($err =~ s/\Q$k\E/<KEY>/gr =~ s/\Q${\ substr($k, 3, 30)}\E/<RANDOM>/gr));
        }
    }
    my ($rc, $out, $err) = apikeyctl_raw('key', 'revoke', $k);
    like($err, qr/not an API key|API key/i, 'key revoke KEY: the error says a key was given');
}

{   # listings never show a key again
    for my $json (0, 1) {
        my ($rc, $out, $err) = apikeyctl_raw(($json ? '--json' : ()), 'key', 'list', '--org', $org->{org_id});
        is($rc, 0, 'key list' . ($json ? ' --json' : '') . ' exits 0');
        is_deeply([ leaks("$out$err") ], [], 'key list' . ($json ? ' --json' : '') . ' shows no secret');
    }
}

# --- apikeyd's HTTP endpoints ----------------------------------------------------------------

for my $path ('/healthz', '/metrics', '/') {
    my $r = apikeyd_get($path);
    is_deeply([ leaks($r->{raw} // '') ], [], "apikeyd GET $path shows no key, random part or hash");
}
{
    my $r = apikeyd_get("/api/orgs/$org->{org_id}/api-keys/usage",
                        ["Authorization: Bearer $K{valid}{key}"]);
    is_deeply([ leaks($r->{raw} // '') ], [], 'usage API answer (any status) shows no secret');
}
stop_apikeyd();
is_deeply([ leaks(apikeyd_log()) ], [], "apikeyd's log holds no key, random part or hash");

# --- the PostgreSQL log -----------------------------------------------------------------------------

{
    my $log = postgres_log();
    like($log, qr/statement: /, 'the PostgreSQL log has statements (log_statement = all works)');
    my @found = leaks($log);
    is_deeply([ grep { !/sha256$/i } @found ], [],
              'PostgreSQL log (log_statement = all): no key and no random part');
    # SHA-256(key) is what api_keys stores, so apikeyctl's INSERT binds it
    # and log_statement = all logs it: allowed there (as in t/044), and
    # nowhere else in the log.
    my @hashes = map { $_->[1] } grep { $_->[0] =~ /sha256$/i } @SECRETS;
    my @hash_lines = grep { my $l = $_; grep { index($l, $_) >= 0 } @hashes } split /\n/, $log;
    ok(scalar @hash_lines, 'PostgreSQL log: key hashes show up as bound parameters (the check can see them)');
    is_deeply([ grep { !/DETAIL:  parameters: / } @hash_lines ], [],
              'PostgreSQL log: a key hash only as a bound parameter, never in a statement or message');
}

# --- nginx's error.log (blocks below) ---------------------------------------------

run_tests();

__DATA__

=== TEST 1: error.log at info: no secret at all, for every kind of request
--- log_level: info
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
server {
    listen 127.0.0.1:$TEST_NGINX_UPSTREAM_PORT;
    location / { return 200 "upstream\n"; }
}
--- config
location /t.txt { apikey on; }
location /scoped/ { apikey on; apikey_scope admin; alias html/; }
location /api/ { apikey on; proxy_pass http://127.0.0.1:$TEST_NGINX_UPSTREAM_PORT; }
--- raw_request eval
\@main::REQ
--- error_code eval
\@main::CODES
--- check
my $log = nginx_error_log();
like($log, qr/\[info\] .*apikey: /, "$block->{name} - the module logged at info");
is_deeply([ main::leaks($log) ], [], "$block->{name} - no key, random part or hash in error.log");
--- no_error_log
[error]



=== TEST 2: error.log at debug: no secret anywhere, nginx core's own request-header dump masked
--- log_level: debug
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
server {
    listen 127.0.0.1:$TEST_NGINX_UPSTREAM_PORT;
    location / { return 200 "upstream\n"; }
}
--- config
location /t.txt { apikey on; }
location /scoped/ { apikey on; apikey_scope admin; alias html/; }
location /api/ { apikey on; proxy_pass http://127.0.0.1:$TEST_NGINX_UPSTREAM_PORT; }
--- raw_request eval
\@main::REQ
--- error_code eval
\@main::CODES
--- check
my @lines = split /\n/, nginx_error_log();
is_deeply([ main::leaks(join "\n", @lines) ], [], "$block->{name} - no secret in any line")
    or diag(join "\n", map { s/[0-9A-Za-z]{30,}/<REDACTED>/gr } grep { main::leaks($_) } @lines);
my @core = grep { main::core_header_dump($_) } @lines;
ok(@core >= 13, "$block->{name} - nginx core dumped the key headers (" . scalar(@core) . " lines)");
is(scalar(grep { /: (?:Bearer )?[a-z0-9]{1,8}_[0-9A-Za-z]{4}\*{32}"$/ } @core), scalar(@core),
   "$block->{name} - each dumped key is its hint followed by 32 '*'");
my $hint = substr($main::K{valid}{key}, 0, 7);
ok((grep { /X-API-Key: \Q$hint\E\*{32}"$/ } @core), "$block->{name} - the hint stays readable");
my @apikey = grep { /apikey/ } @lines;
ok(@apikey > 0, "$block->{name} - the module logged something");
my @proxy = grep { /http proxy header/ } @lines;
ok(@proxy > 0, "$block->{name} - proxied requests dumped at debug");
--- no_error_log
[error]



=== TEST 3: a location's own error_log and the request line: keys masked there too
--- log_level: info
--- http_config
apikey_keys $TEST_NGINX_APIKEY_KEYS;
--- config
location /t.txt {
    apikey on;
    error_log logs/location.log debug;
}
--- raw_request eval
[ "GET /t.txt?api_key=$ENV{TEST_NGINX_VALID} HTTP/1.0\r\nX-API-Key: $ENV{TEST_NGINX_TYPO}\r\n\r\n",
  "GET /t.txt?api_key=$ENV{TEST_NGINX_VALID} HTTP/1.0\r\n\r\n" ]
--- error_code eval
[ 401, 401 ]
--- check
my $log = slurp(servroot_path('logs', 'location.log')) // '';
like($log, qr/\[debug\]/, "$block->{name} - the location's log has debug lines");
like($log, qr/request: "GET \/t\.txt\?api_key=\Q${\ substr($ENV{TEST_NGINX_VALID}, 0, 7)}\E\*{32} HTTP\/1\.0"/,
     "$block->{name} - the request line in the log context is masked");
is_deeply([ main::leaks($log) ], [], "$block->{name} - no key, random part or hash in the location's log");
is_deeply([ main::leaks(nginx_error_log()) ], [], "$block->{name} - nor in the main error.log");
--- no_error_log
[error]
