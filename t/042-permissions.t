# File permissions of what apikeyd and nginx share or keep on disk:
#
# - the key table (TEST_NGINX_APIKEY_KEYS): mode 0644 exactly, owned by
#   apikeyd's user; nginx's workers (nobody when the suite runs as root) can
#   read it (a valid key gets 200) but not write it;
# - the runtime directory holding both: 0750, so only its owner (apikeyd's
#   user) may create files there;
# - the usage segment: mode 0600, owned by the runtime directory's owner
#   (apikeyd's user), also after a reload that replaces it; the workers use
#   the master's mapping, so no other user, the worker user included, can
#   open it (it holds client addresses and user agents, and a writer could
#   forge usage);
# - the spool: a directory apikeyd creates is 0700, spool files are 0600
#   and gone once replayed;
# - no *.tmp file lingers after publishing, creating or replacing.
#
# The owner checks need root (nginx only switches to `user` as root); as a
# normal user they are skipped.

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use Time::HiRes qw(time sleep);

my $ROOT = $> == 0;

# --- helpers --------------------------------------------------------------------

sub mode_of  { my @st = stat $_[0]; return @st ? sprintf('%04o', $st[2] & 07777) : 'missing' }

# "uid:gid" (effective) of a running process.
sub process_ids {
    my ($pid) = @_;
    my $s = slurp("/proc/$pid/status") // return 'gone';
    my ($uid) = $s =~ /^Uid:\s+\d+\s+(\d+)/m;
    my ($gid) = $s =~ /^Gid:\s+\d+\s+(\d+)/m;
    return "$uid:$gid";
}

# Exit code of `test $op $path` run as $user (0: true).
sub test_as {
    my ($user, $op, $path) = @_;
    my ($rc) = run_cmd([ '/usr/sbin/runuser', '-u', $user, '--', 'test', $op, $path ]);
    return $rc;
}

sub leftovers {
    return [ map { s{.*/}{}r } glob("$ENV{TEST_NGINX_SERVROOT}/*.tmp $ENV{TEST_NGINX_RUNTIME_DIR}/*.tmp") ];
}

# --- setup ----------------------------------------------------------------------

start_postgres();
my $root  = $ENV{TEST_NGINX_SERVROOT};
my $keys  = $ENV{TEST_NGINX_APIKEY_KEYS};
my $usage = $ENV{TEST_NGINX_APIKEY_USAGE};
# The harness makes <servroot>/spool itself (0755, for the other files);
# here apikeyd gets a directory it has to create (the later --spool wins).
my $spool = "$root/var/spool/apikeyd";
my $d = start_apikeyd(args => [ '--spool', $spool ]);
my $daemon_ids = process_ids($d->{pid});
my ($daemon_uid) = split /:/, $daemon_ids;

my $org = apikeyctl('org', 'create', 'permissions');
my $k = apikeyctl('key', 'create', '--org', $org->{org_id}, '--name', 'perm');

# --- the key table ----------------------------------------------------------------

wait_until(sub { -e $keys }, 5, 'key table published');
is(mode_of($keys), '0644', 'key table: mode 0644 (readable by the workers, writable by apikeyd only)');
is((stat $keys)[4], $daemon_uid, "key table: owned by apikeyd's user (uid $daemon_uid)");
ok(!((stat $keys)[2] & 0022), 'key table: neither group- nor world-writable');

my %conf = (
    workers     => 2,
    http_config => apikey_http_config(usage => '4m'),
    config      => 'location /t.txt { apikey on; }',
);
start_nginx(%conf);
my $ok = eval { wait_until(sub { get_with_key($k->{key})->{status} == 200 }, 5, 'a valid key gets 200'); 1 };
ok($ok, 'a valid key gets 200: the workers read the key table') or diag($@);
my @w;
wait_until(sub { (@w = nginx_worker_pids()) == 2 }, 5, 'two workers');
SKIP: {
    skip 'not root: nginx does not switch its workers to another user', 4 unless $ROOT;
    my (undef, undef, $uid, $gid) = getpwnam('nobody');
    is_deeply([ map { process_ids($_) } @w ], [ ("$uid:$gid") x 2 ],
              "the workers run as nobody ($uid:$gid), and got 200 from the key table above");
    is(test_as('nobody', '-r', $keys), 0, 'nobody can read the key table');
    isnt(test_as('nobody', '-w', $keys), 0, 'nobody cannot write the key table');
    is(test_as('nobody', '-w', $ENV{TEST_NGINX_RUNTIME_DIR}), 1, 'nobody cannot write the directory holding it '
       . '(so it cannot replace the file either)');
}

# revocation and a new key are written in place; a full rebuild replaces the file
apikeyctl('key', 'revoke', $k->{key_id});
my $k2 = apikeyctl('key', 'create', '--org', $org->{org_id}, '--name', 'perm2');
wait_until(sub { get_with_key($k2->{key})->{status} == 200 && get_with_key($k->{key})->{status} == 401 },
           5, 'changes published');
is(mode_of($keys), '0644', 'key table after updates: still 0644');

# --- the usage segment --------------------------------------------------------------------

is(mode_of($ENV{TEST_NGINX_RUNTIME_DIR}), '0750', 'runtime directory: mode 0750');
is(mode_of($usage), '0600', 'usage segment: mode 0600 (no access for other users)');
is((stat $usage)[4], (stat $ENV{TEST_NGINX_RUNTIME_DIR})[4],
   "usage segment: owned by the runtime directory's owner (apikeyd's user)");
SKIP: {
    skip 'not root: workers run as the same user', 2 unless $ROOT;
    isnt(test_as('postgres', '-r', $usage), 0, 'another user (postgres) cannot read the usage segment');
    isnt(test_as('nobody', '-r', $usage), 0, 'the worker user cannot open it either (workers use the master\'s mapping)');
}
is_deeply(leftovers(), [], 'no *.tmp left after apikeyd published and nginx created the segment');

# a reload that changes size= replaces the file: the new one gets the same
{
    my $inode = (stat $usage)[1];
    reload_nginx(%conf, http_config => apikey_http_config(usage => '2m'));
    my $created = () = nginx_error_log() =~ /apikey: created usage segment/g;
    is($created, 2, 'size change: nginx created a new usage segment');
    isnt((stat $usage)[1], $inode, 'size change: a new file');
    is(mode_of($usage), '0600', 'the new segment: mode 0600');
    is((stat $usage)[4], (stat $ENV{TEST_NGINX_RUNTIME_DIR})[4],
       "the new segment: owned by the runtime directory's owner");
    is_deeply(leftovers(), [], 'no *.tmp left after the segment was replaced');
    # PATH.old.* is a hard link to the replaced file (same inode, same
    # mode), there until apikeyd has drained it
    my @kept = glob("$usage.old.*");
    is_deeply([ map { mode_of($_) } @kept ], [ ('0600') x @kept ],
              'the replaced file kept for apikeyd (PATH.old.*), while there, is still 0600');
    $ok = eval { wait_until(sub { !glob("$usage.old.*") }, 10, 'old segment deleted'); 1 };
    ok($ok, 'apikeyd deletes the replaced segment once drained') or diag($@);
}

# --- the spool ------------------------------------------------------------------------------

is(mode_of($spool), '0700', 'spool directory created by apikeyd: mode 0700');
is((stat $spool)[4], $daemon_uid, "spool directory: owned by apikeyd's user");
{
    stop_postgres();
    my $st = request_burst($k2->{key}, 20);
    is_deeply($st, { 200 => 20 }, '20 requests with PostgreSQL down');
    my @files;
    $ok = eval { wait_until(sub { @files = glob("$spool/spool-*.bin") }, 10, 'spool file'); 1 };
    ok($ok, 'apikeyd spooled them') or diag($@, apikeyd_log());
    is_deeply([ map { mode_of($_) } @files ], [ ('0600') x @files ], 'spool files: mode 0600')
        or diag(join ' ', map { "$_ " . mode_of($_) } @files);
    is_deeply([ map { (stat $_)[4] } @files ], [ ($daemon_uid) x @files ],
              "spool files: owned by apikeyd's user");
    SKIP: {
        skip 'not root', 1 unless $ROOT;
        isnt(test_as('nobody', '-r', $files[0] // $spool), 0, 'another user (nobody) cannot read a spool file');
    }
    start_postgres();
    $ok = eval { wait_until(sub { apikeyd_metrics()->{apikey_spool_bytes} == 0 }, 15, 'replayed'); 1 };
    ok($ok, 'the spool replayed') or diag($@);
    my @left = glob("$spool/*");
    is_deeply(\@left, [], 'no spool file (and no *.tmp) lingers after the replay');
    wait_usage_rows($k2->{key_id}, 21, 5, 'rows');
}

stop_apikeyd();
stop_nginx();
is_deeply(leftovers(), [], 'no *.tmp in the server root at the end');

done_testing();
