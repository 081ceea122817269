# apikeyd does not take a ring's word for it: records written into a ring by
# someone else (here: the test, as root) for an unknown key or another org
# are not stored and are counted; a record that claims another identity
# (slot, generation, jumped sequence) cannot hide the genuine records after
# it; a record of a key written just after the key was deleted is stored
# (a request checked before the deletion). Also: keys that never expire
# ('infinity', the last timestamp PostgreSQL has) load; a second apikeyd
# with the same --node is refused, at start and after a reconnect;
# usage_offsets rows of finished rings are pruned past retention; a worker
# in another PID namespace keeps its ring.

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use Test::Apikey::Usage qw(usage_slot_generation usage_ring_forge);
use Test::Apikey::Nginx qw(nginx_conf_text);
use Test::Apikey::Util qw(spawn process_alive stop_process is_root);
use Test::Apikey::Daemon qw(apikeyd_path);

start_postgres();
start_apikeyd();

my $org_a = apikeyctl('org', 'create', 'integrity-a');
my $org_b = apikeyctl('org', 'create', 'integrity-b');
my $ka = apikeyctl('key', 'create', '--org', $org_a->{org_id}, '--name', 'a');

my $html = $ENV{TEST_NGINX_HTML_DIR};
my %CONF = (
    workers     => 1,
    http_config => apikey_http_config(usage => '4m'),
    config      => "location /t.txt { apikey on; }\nlocation /open/ { alias $html/; }",
);
start_nginx(%CONF);
wait_until(sub { get_with_key($ka->{key})->{status} == 200 }, 5, 'key table');
my $genuine = 1;
wait_usage_rows($ka->{key_id}, $genuine, 10);

# The one worker's ring.
my @owned = grep { usage_slot_state($_) == 1 } 0 .. usage_slot_count() - 1;
is(scalar @owned, 1, 'one owned ring (one worker)') or diag("owned: @owned");
my $slot = $owned[0] // 0;
my $gen  = usage_slot_generation($slot);

sub rows_at {
    my ($endpoint) = @_;
    return psql_one(q{SELECT count(*) FROM api_key_usage WHERE endpoint = :'e'}, { e => $endpoint });
}

sub rejected {
    my ($reason) = @_;
    return apikeyd_metrics()->{"apikey_usage_rejected_total{reason=\"$reason\"}"};
}

# A genuine request after a forged record: once its row is in, apikeyd has
# read past the forged one; once request_count counts it, its aggregate is
# committed too.
sub sentinel {
    my ($tag) = @_;
    is(get_with_key($ka->{key})->{status}, 200, "$tag sentinel request");
    $genuine++;
    ok(eval { wait_usage_rows($ka->{key_id}, $genuine, 10); 1 }, "$tag sentinel row arrived")
        or diag($@);
    eval { wait_request_count($ka->{key_id}, $genuine, 10) };
}

# --- forged records ---------------------------------------------------------------

{
    is(rejected('unknown_key'), 0, 'unknown_key: none rejected yet');
    my $pos = usage_ring_forge($slot, key_id => '0badc0de-0000-4000-8000-000000000001',
                               org_id => $org_a->{org_id}, endpoint => '/forged-unknown');
    sentinel('unknown key:');
    is(rows_at('/forged-unknown'), 0, 'unknown key: no row for the forged record');
    is(rejected('unknown_key'), 1, 'unknown key: apikey_usage_rejected_total{reason="unknown_key"} 1');
    like(apikeyd_log(), qr/rejected usage records not matching the key table: 1 of unknown keys/,
         'unknown key: apikeyd says so');
}

{
    is(rejected('org_mismatch'), 0, 'org mismatch: none rejected yet');
    usage_ring_forge($slot, key_id => $ka->{key_id}, org_id => $org_b->{org_id},
                     endpoint => '/forged-org');
    sentinel('org mismatch:');
    is(rows_at('/forged-org'), 0, 'org mismatch: no row for the forged record');
    is(rejected('org_mismatch'), 1, 'org mismatch: apikey_usage_rejected_total{reason="org_mismatch"} 1');
    is(key_request_count($ka->{key_id}), $genuine, 'org mismatch: request_count counts only the genuine requests');
}

{
    # A request checked before its key was deleted writes its record when it
    # ends: for a grace period after the removal, such records are stored,
    # although the drainer has read every ring to its head many times since.
    my $kd = apikeyctl('key', 'create', '--org', $org_a->{org_id}, '--name', 'deleted');
    wait_until(sub { get_with_key($kd->{key})->{status} == 200 }, 5, 'key to delete published');
    psql(q{DELETE FROM api_keys WHERE id = :'id'}, { id => $kd->{key_id} });
    my $gone = eval { wait_until(sub { get_with_key($kd->{key})->{status} == 401 }, 5, 'key removed'); 1 };
    ok($gone, 'deleted key: nginx refuses it') or diag($@);
    usage_ring_forge($slot, key_id => $kd->{key_id}, org_id => $org_a->{org_id},
                     endpoint => '/after-delete');
    sentinel('deleted key:');
    is(psql_one(q{SELECT count(*) FROM api_key_usage WHERE key_id = :'id' AND endpoint = '/after-delete'},
                { id => $kd->{key_id} }), 1, 'deleted key: its record written after the deletion is stored');
    is(rejected('unknown_key'), 1, 'deleted key: nothing more rejected');
}

{
    # A jump far ahead in the worker's own ring, and another ring's identity.
    my $far = 2**40;
    my $p1 = usage_ring_forge($slot, key_id => $ka->{key_id}, org_id => $org_a->{org_id},
                              endpoint => '/forged-jump', slot => $slot, generation => $gen,
                              sequence => $far);
    my $p2 = usage_ring_forge($slot, key_id => $ka->{key_id}, org_id => $org_a->{org_id},
                              endpoint => '/forged-other', slot => $slot + 1, generation => 12345,
                              sequence => 0);
    my $dup0 = apikeyd_metrics()->{apikey_records_duplicate_total};
    my $st = request_burst($ka->{key}, 20);
    is_deeply($st, { 200 => 20 }, 'identity: 20 genuine requests after the forged records');
    $genuine += 20;
    ok(eval { wait_usage_rows($ka->{key_id}, $genuine + 2, 10); 1 },
       'identity: every genuine request arrived as a row') or diag($@);
    is(psql_one(q{SELECT count(*) FROM api_key_usage WHERE key_id = :'id' AND endpoint = '/t.txt'},
                { id => $ka->{key_id} }), $genuine, 'identity: exactly one row per genuine request');
    is(usage_duplicates(), 0, 'identity: no duplicate idempotency keys');
    is(apikeyd_metrics()->{apikey_records_duplicate_total}, $dup0, 'identity: nothing taken for a duplicate');
    # Stored as what they are: records of this ring, at the position read.
    is(psql_one(q{SELECT slot || '/' || generation || '/' || sequence FROM api_key_usage
                  WHERE endpoint = '/forged-jump'}), "$slot/$gen/$p1",
       'identity: the jumped record got its ring position');
    is(psql_one(q{SELECT slot || '/' || generation || '/' || sequence FROM api_key_usage
                  WHERE endpoint = '/forged-other'}), "$slot/$gen/$p2",
       'identity: the record claiming another ring got this ring\'s identity');
    is(psql_one(q{SELECT count(*) FROM usage_offsets WHERE next_sequence > 1000000 OR generation = 12345}), 0,
       'identity: usage_offsets holds no forged position');
}

# --- expires_at / revoked_at at infinity -------------------------------------------

{
    my %k = map { ($_ => apikeyctl('key', 'create', '--org', $org_a->{org_id}, '--name', $_)) }
        qw(inf last rev neg);
    psql(q{UPDATE api_keys SET expires_at = 'infinity' WHERE id = :'id'}, { id => $k{inf}{key_id} });
    psql(q{UPDATE api_keys SET expires_at = '294276-12-31 23:59:59.999999+00' WHERE id = :'id'},
         { id => $k{last}{key_id} });
    psql(q{UPDATE api_keys SET revoked_at = 'infinity' WHERE id = :'id'}, { id => $k{rev}{key_id} });
    psql(q{UPDATE api_keys SET expires_at = '-infinity' WHERE id = :'id'}, { id => $k{neg}{key_id} });
    # Published after those rows: only if the notifications did not break
    # the publisher.
    my $new = apikeyctl('key', 'create', '--org', $org_a->{org_id}, '--name', 'after-inf');
    ok(eval { wait_until(sub { get_with_key($new->{key})->{status} == 200 }, 5, 'new key'); 1 },
       'infinity: a key created afterwards is published') or diag($@);
    my %st = map { ($_ => get_with_key($k{$_}{key})->{status}) } keys %k;
    is_deeply(\%st, { inf => 200, last => 200, rev => 200, neg => 401 },
              "infinity: 'infinity' and year-294276 expiry, 'infinity' revocation: accepted; '-infinity' expiry: not");

    restart_apikeyd();    # a full load at start
    my $new2 = apikeyctl('key', 'create', '--org', $org_a->{org_id}, '--name', 'after-restart');
    ok(eval { wait_until(sub { get_with_key($new2->{key})->{status} == 200 }, 5, 'new key'); 1 },
       'infinity: after a restart (full load) a new key is published') or diag($@);
    %st = map { ($_ => get_with_key($k{$_}{key})->{status}) } keys %k;
    is_deeply(\%st, { inf => 200, last => 200, rev => 200, neg => 401 }, 'infinity: same answers after the full load');
    is(apikeyd_metrics()->{apikey_postgres_errors_total}, 0, 'infinity: no PostgreSQL error in apikeyd');
}

# --- one apikeyd per --node ---------------------------------------------------------

# Another host's apikeyd misconfigured with our node name: its own files.
sub other_apikeyd_argv {
    my (@extra) = @_;
    mkdir servroot_path('spool2');
    return [ apikeyd_path(), '--db', $ENV{TEST_APIKEY_DB}, '--node', 'test',
             '--keys', servroot_path('keys2'), '--usage', servroot_path('usage2'),
             '--spool', servroot_path('spool2'), '--listen', '127.0.0.1:' . free_port(), @extra ];
}

{
    my ($rc, $out, $err) = run_cmd(other_apikeyd_argv(), timeout => 30);
    isnt($rc, 0, 'same node: a second apikeyd exits non-zero');
    like("$out$err", qr/node "test" is in use by another apikeyd connected to this database/,
         'same node: it says why, naming the node');
    is(get_with_key($ka->{key})->{status}, 200, 'same node: the first still answers');
    $genuine++;
    ok(eval { wait_usage_rows($ka->{key_id}, $genuine + 2, 10); 1 }, 'same node: the first still drains')
        or diag($@);
    is(apikeyd_metrics()->{apikey_node_in_use}, 0, 'same node: apikey_node_in_use 0 on the first');
}

{
    # The first loses its session; the other one starts meanwhile and takes
    # the node. The first must stop draining, then resume once it is gone.
    psql(q{SELECT pg_terminate_backend(l.pid) FROM pg_locks l
            WHERE l.locktype = 'advisory' AND l.granted});
    my $other = spawn(other_apikeyd_argv(), log => servroot_path('logs', 'apikeyd2.log'));
    my $ok = eval { wait_until(sub { (slurp(servroot_path('logs', 'apikeyd2.log')) // '')
                                         =~ /apikeyd starting/ }, 10, 'second apikeyd up'); 1 };
    ok($ok && process_alive($other), 'lost later: the other apikeyd took the node') or diag($@);

    request_burst($ka->{key}, 5);
    my $m;
    $ok = eval { wait_until(sub { ($m = apikeyd_metrics())->{apikey_node_in_use} == 1 }, 10, 'node in use'); 1 };
    ok($ok, 'lost later: apikey_node_in_use 1 on the first') or diag($@);
    like(apikeyd_log(), qr/node "test" is in use by another apikeyd .*not draining until it stops/,
         'lost later: the first says it stopped draining');
    is(usage_rows($ka->{key_id}), $genuine + 2, 'lost later: nothing stored meanwhile');

    ok(stop_process($other, TERM => 10, KILL => 5), 'lost later: the other apikeyd stopped');
    $genuine += 5;
    $ok = eval { wait_usage_rows($ka->{key_id}, $genuine + 2, 20); 1 };
    ok($ok, 'lost later: the first drains again once the other is gone') or diag($@);
    like(apikeyd_log(), qr/node "test" is ours again; draining/, 'lost later: and says so');
    is(usage_rows($ka->{key_id}), $genuine + 2, 'lost later: each record once');
    is(usage_duplicates(), 0, 'lost later: no duplicate idempotency keys');
}

# --- usage_offsets pruned with the retention ------------------------------------------

{
    my $live = "$slot/$gen";
    psql(q{INSERT INTO usage_offsets (node, slot, generation, next_sequence, updated_at) VALUES
           ('test', 900, 1, 5, '2001-01-01'), ('test', 901, 2, 5, now()),
           ('elsewhere', 902, 3, 5, '2001-01-01')});
    psql(q{UPDATE usage_offsets SET updated_at = '2001-01-01' WHERE node = 'test' AND slot = :'s'
           AND generation = :'g'}, { s => $slot, g => $gen });
    psql(q{INSERT INTO usage_aggregate_offsets (node, slot, generation, epoch, updated_at) VALUES
           ('test', 900, 1, 5, '2001-01-01'), ('test', 901, 2, 5, now()),
           ('elsewhere', 902, 3, 5, '2001-01-01'), ('test', :'s', :'g', 1, '2001-01-01')
           ON CONFLICT (node, slot, generation) DO UPDATE SET updated_at = '2001-01-01'},
         { s => $slot, g => $gen });
    restart_apikeyd();    # maintenance runs at start
    my $ok = eval { wait_until(sub { psql_one(q{SELECT count(*) FROM usage_offsets WHERE slot = 900}) == 0 },
                               10, 'old row pruned'); 1 };
    ok($ok, 'offsets: a finished ring\'s row last advanced before retention is pruned') or diag($@);
    is(psql_one(q{SELECT count(*) FROM usage_offsets WHERE node = 'test' AND slot = :'s' AND generation = :'g'},
                { s => $slot, g => $gen }), 1, 'offsets: the live ring\'s row stays, however old');
    is(psql_one(q{SELECT count(*) FROM usage_offsets WHERE slot = 901}), 1, 'offsets: a recent row stays');
    is(psql_one(q{SELECT count(*) FROM usage_offsets WHERE slot = 902}), 1, 'offsets: another node\'s row stays');
    is(psql_one(q{SELECT string_agg(node || ' ' || slot, ', ' ORDER BY slot)
                    FROM usage_aggregate_offsets WHERE slot >= 900 OR slot = :'s'}, { s => $slot }),
       "test $slot, test 901, elsewhere 902",
       'aggregate offsets: pruned by the same rule (the old finished one only)');
    like(apikeyd_log(), qr/pruned 2 offset rows of finished rings/, 'offsets: apikeyd says so');
    $genuine++;
    is(get_with_key($ka->{key})->{status}, 200, 'offsets: one more request');
    ok(eval { wait_usage_rows($ka->{key_id}, $genuine + 2, 10); 1 }, 'offsets: still recorded');
    is(usage_duplicates(), 0, 'offsets: no duplicate idempotency keys');
}

# --- a worker in another PID namespace ------------------------------------------------

SKIP: {
    my ($urc) = run_cmd([ 'unshare', '--pid', '--fork', 'true' ]);
    skip 'needs root and unshare --pid', 7 unless is_root() && $urc == 0;
    stop_nginx();
    # Inner pids that no process has out here: the old rule ("no such
    # process: the worker is dead") would retire the live ring.
    my $base = 20000 + int(rand(8000));
    $base += 10 while grep { -e "/proc/$_" } $base .. $base + 10;
    my $conf = nginx_conf_text(%CONF);
    $conf =~ s/^daemon on;$/daemon off;/m;
    $conf =~ s{^pid .*$}{'pid ' . servroot_path('logs', 'ns-nginx.pid') . ';'}me;
    spew(servroot_path('conf', 'ns-nginx.conf'), $conf);
    my $log0 = length apikeyd_log();
    my $ns = spawn([ 'unshare', '--pid', '--fork', '--kill-child', 'sh', '-c',
                     "echo $base > /proc/sys/kernel/ns_last_pid && exec "
                     . ($ENV{TEST_NGINX_BINARY} || '/usr/sbin/nginx')
                     . ' -p ' . servroot_path('') . ' -c ' . servroot_path('conf', 'ns-nginx.conf') ],
                   log => servroot_path('logs', 'ns-nginx.log'));
    my $ok = eval { wait_until(sub { get_with_key($ka->{key})->{status} == 200 }, 10, 'nginx in a PID namespace'); 1 };
    ok($ok, 'pid namespace: nginx in its own PID namespace answers') or diag($@, slurp(servroot_path('logs', 'ns-nginx.log')));
    $genuine++;
    my ($wslot) = grep { usage_slot_state($_) == 1 } 0 .. usage_slot_count() - 1;
    my $wpid = defined $wslot ? unpack('l<', usage_segment_read(usage_slot_offset($wslot) + 4, 4)) : -1;
    diag("pid namespace: the worker's ring $wslot, owner pid $wpid (inner)");
    # Which rule keeps it depends on whether apikeyd saw the first nginx's
    # worker (same namespace) alive: then the nested namespace is found.
    $ok = eval { wait_until(sub { substr(apikeyd_log(), $log0)
                                      =~ /seen in apikeyd's PID namespace|no process $wpid here, but one in a nested/ },
                            10, 'apikeyd looked at the owner'); 1 };
    ok($ok, 'pid namespace: apikeyd says why it keeps that ring') or diag($@);
    unlike(substr(apikeyd_log(), $log0), qr/worker $wpid of ring \d+ is gone/, 'pid namespace: the live ring was not retired');
    is(defined $wslot ? usage_slot_state($wslot) : -1, 1, 'pid namespace: the ring is still owned');
    my $st = request_burst($ka->{key}, 10);
    $genuine += 10;
    is_deeply($st, { 200 => 10 }, 'pid namespace: 10 more requests');
    ok(eval { wait_usage_rows($ka->{key_id}, $genuine + 2, 10); 1 }, 'pid namespace: recorded')
        or diag($@);
    is(usage_duplicates(), 0, 'pid namespace: no duplicate idempotency keys');
    # The master is the unshare's child: QUIT it, then the namespace ends.
    my ($master) = split ' ', slurp("/proc/$ns/task/$ns/children") // '';
    kill 'QUIT', $master if $master;
    stop_process($ns, TERM => 10, KILL => 5);
}

done_testing();
