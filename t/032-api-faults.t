# apikeyd's analytics API and key publisher when what they read is not
# what they expect, with real faults in a real PostgreSQL:
#   - a stored histogram that is not one (500, the session stays usable);
#   - a column renamed under the API (500, the SQLSTATE logged);
#   - a query blocked by a lock past statement_timeout (503, Retry-After);
#   - no key table yet (503, Retry-After);
#   - a notification that names no key, a key row the table cannot hold
#     (skipped, the others kept), a key whose hash changes in place (the
#     old secret stops working, the new one works), and more keys than
#     the table has room for (it grows, every key still found).
# Nothing of any key reaches apikeyd's log.

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use Test::Apikey::Util qw(build_path);
use Digest::SHA qw(sha256_hex);
use POSIX ();

start_postgres();
start_apikeyd();

my $org   = apikeyctl('org', 'create', 'api-faults')->{org_id};
my $admin = new_key($org, 'admin', '--scopes', 'usage:read');
my $other = new_key($org, 'other');
my %keys  = (admin => $admin->{key}, other => $other->{key});

my $list = "/api/orgs/$org/api-keys/usage";
my $one  = "/api/orgs/$org/api-keys/$other->{key_id}/usage?interval=hour";

sub api {
    my ($path, $key) = @_;
    return apikeyd_get($path, ["Authorization: Bearer $key"]);
}

sub log_count {
    my ($re) = @_;
    my @hits = apikeyd_log() =~ /$re/g;
    return scalar @hits;
}

ok_eventually(sub { api($list, $admin->{key})->{status} == 200 }, 10,
              'the admin key is published');

# --- a stored histogram that is not one -------------------------------------

psql(q{INSERT INTO api_key_usage_hourly (org_id, key_id, bucket, endpoint,
           method, requests, status_2xx, status_3xx, status_4xx, status_5xx,
           status_other, response_time_ms_sum, latency_hist)
       VALUES (:'org', :'key', date_trunc('hour', now()), '/x', 'GET',
               1, 1, 0, 0, 0, 0, 1.5, '{-1}')},
     { org => $org, key => $other->{key_id} });
{
    my $r = api($one, $admin->{key});
    is($r->{status}, 500, 'a broken histogram row: 500');
    is($r->{json}{error}, 'internal error', 'a broken histogram row: says no more');
    like(apikeyd_log(), qr/\[error\] api: stored latency_hist is not a histogram/,
         'a broken histogram row: logged');
    is(api($list, $admin->{key})->{status}, 200,
       'a broken histogram row: the next request is served');
}
psql(q{DELETE FROM api_key_usage_hourly WHERE key_id = :'key'},
     { key => $other->{key_id} });
is(api($one, $admin->{key})->{status}, 200, 'the row gone: 200 again');

# --- a column renamed under the API -------------------------------------------

# The listing reads api_keys and api_key_listing (not the rollups).
psql('ALTER TABLE api_key_listing RENAME COLUMN requests_day TO requests_moved');
{
    my $r = api($list, $admin->{key});
    is($r->{status}, 500, 'a renamed column: 500');
    is($r->{json}{error}, 'internal error', 'a renamed column: says no more');
    like(apikeyd_log(), qr/\[error\] api: database error 42703: /,
         'a renamed column: the SQLSTATE is logged');
}
psql('ALTER TABLE api_key_listing RENAME COLUMN requests_moved TO requests_day');
is(api($list, $admin->{key})->{status}, 200, 'the column back: 200 again');

# --- a query blocked past statement_timeout -----------------------------------

{
    my $pid = fork() // die "fork: $!";
    if ($pid == 0) {
        my $rc = eval {
            psql('BEGIN; LOCK TABLE api_key_listing IN ACCESS EXCLUSIVE MODE;'
                 . ' SELECT pg_sleep(8); COMMIT;');
            0;
        } // 1;
        POSIX::_exit($rc);    # no END blocks: they belong to the parent
    }
    wait_until(sub {
        psql_one(q{SELECT count(*) FROM pg_locks
                   WHERE relation = 'api_key_listing'::regclass
                   AND mode = 'AccessExclusiveLock' AND granted}) == 1
    }, 10, 'the lock is taken');
    my $r = api($list, $admin->{key});
    is($r->{status}, 503, 'blocked past statement_timeout: 503');
    is($r->{json}{error}, 'query timed out', 'blocked past statement_timeout: says so');
    is($r->{headers}{'retry-after'}, '1', 'blocked past statement_timeout: Retry-After');
    like(apikeyd_log(), qr/\[warn\] api: query timed out/,
         'blocked past statement_timeout: logged');
    waitpid($pid, 0);
    is($?, 0, 'the lock holder finished');
    is(api($list, $admin->{key})->{status}, 200, 'the lock released: 200 again');
}

# --- no key table yet ------------------------------------------------------------

{
    # A daemon that cannot reach the database and has never published to
    # this path.
    local $ENV{TEST_NGINX_APIKEY_KEYS} = "$ENV{TEST_NGINX_SERVROOT}/apikey_keys_never";
    start_apikeyd(db => 'host=/nonexistent-apikey-dir dbname=postgres user=postgres',
                  node => "caf\xc3\xa9");
    my $r = api($list, $admin->{key});
    is($r->{status}, 503, 'no key table: 503');
    is($r->{json}{error}, 'key table not available yet; retry', 'no key table: says so');
    is($r->{headers}{'retry-after'}, '1', 'no key table: Retry-After');

    # A node name beyond ASCII: /healthz shows it as it is.
    my $h = apikeyd_get('/healthz');
    is($h->{status}, 200, 'a UTF-8 node name: /healthz 200');
    is($h->{json}{node}, "caf\xc3\xa9", 'a UTF-8 node name: shown as given');
}
{
    # One that is not UTF-8 would be refused by PostgreSQL on every commit
    # (usage_offsets.node): apikeyd refuses it at start.
    my ($rc, undef, $err) = run_cmd([ build_path('apikeyd'), '--node', "caf\xe9",
                                      '--listen', '127.0.0.1:' . free_port() ], timeout => 10);
    is($rc, 2, 'a node name that is not UTF-8: apikeyd exits 2');
    like($err, qr/invalid --node: must be UTF-8 text without NUL bytes/, '... and says why');
}
start_apikeyd();
ok_eventually(sub { api($list, $admin->{key})->{status} == 200 }, 10,
              'with the database back in reach: 200 again');

# --- a method cpp-httplib does not know ---------------------------------------

{
    my $r = http_request("FOO /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
                         port => $ENV{TEST_APIKEY_API_PORT});
    is($r->{status}, 400, 'an unknown method: 400');
    is($r->{body}, '{"error":"bad request"}', 'an unknown method: a JSON error');
}

# --- a notification that names no key ------------------------------------------

psql(q{NOTIFY apikey_keys, 'not-a-key-id'});
ok_eventually(sub { log_count(qr/ignoring malformed notification/) == 1 }, 10,
              'a notification that names no key is logged and ignored');

# --- a key row the table cannot hold ---------------------------------------------

# Nine scopes: the key table holds eight. The schema refuses them too, so
# the check goes first, as a hand-edited database might have it.
my $wide_key = make_key();
$keys{wide} = $wide_key;
psql('ALTER TABLE api_keys DROP CONSTRAINT api_keys_scopes_check');
my $wide_id = psql_one(q{INSERT INTO api_keys (org_id, name, prefix, hint,
        key_hash, scopes)
    VALUES (:'org', 'wide', 'ak', 'ak_wide', decode(:'hash', 'hex'),
            '{a,b,c,d,e,f,g,h,i}') RETURNING id},
    { org => $org, hash => sha256_hex($wide_key) });
ok_eventually(sub { log_count(qr/skipping key \Q$wide_id\E: /) == 1 }, 10,
              'a notified row the table cannot hold is skipped');
is(api($list, $wide_key)->{json}{error}, 'unknown API key',
   'the skipped key is not accepted');
restart_apikeyd();
ok_eventually(sub { log_count(qr/skipping key \Q$wide_id\E: /) == 2 }, 10,
              'the full load at start skips it too');
ok_eventually(sub { api($list, $admin->{key})->{status} == 200 }, 10,
              'the other keys are published');
psql(q{DELETE FROM api_keys WHERE id = :'id'}, { id => $wide_id });
psql(q{ALTER TABLE api_keys ADD CONSTRAINT api_keys_scopes_check
       CHECK (cardinality(scopes) <= 8)});

# --- a key whose hash changes in place --------------------------------------------

my $rehashed = new_key($org, 'rehashed', '--scopes', 'usage:read');
$keys{rehashed} = $rehashed->{key};
ok_eventually(sub { api($list, $rehashed->{key})->{status} == 200 }, 10,
              'the key to rehash is published');
my $new_secret = make_key();
$keys{new_secret} = $new_secret;
psql(q{UPDATE api_keys SET key_hash = decode(:'hash', 'hex') WHERE id = :'id'},
     { hash => sha256_hex($new_secret), id => $rehashed->{key_id} });
ok_eventually(sub {
    api($list, $new_secret)->{status} == 200
        && (api($list, $rehashed->{key})->{json}{error} // '') eq 'unknown API key'
}, 10, 'a new hash in place: the new secret works, the old one is unknown');

# --- more keys than the table has room for -----------------------------------------

# 3000 keys load a 4096-slot table past 0.7: it is rebuilt twice as big.
psql(q{INSERT INTO api_keys (org_id, name, prefix, hint, key_hash)
       SELECT :'org', 'bulk' || i, 'ak', 'ak_bulk',
              decode(md5(i::text) || md5((-i)::text), 'hex')
       FROM generate_series(1, 3000) i}, { org => $org });
ok_eventually(sub { apikeyd_log() =~ /key table grown to (\d+) slots/ && $1 > 4096 },
              60, 'the key table grows past 4096 slots');
ok_eventually(sub { (apikeyd_get('/healthz')->{json}{key_table}{keys} // 0) >= 3003 },
              30, 'every key is in the grown table');
is(api($list, $admin->{key})->{status}, 200, 'a key from before is still found');
is(api($list, $new_secret)->{status}, 200, 'the rehashed key is still found');

# --- nothing of any key in the log -------------------------------------------------

is_deeply([ secrets_in(apikeyd_log(), key_secrets(%keys)) ], [],
          'no key material in apikeyd.log');

done_testing();
