# Files a local user or a stray process plants where nginx and apikeyd look
# for their segments. Done as the unprivileged user nobody (nginx's worker
# user here) where the system lets nobody do it at all; where it does not,
# as root handing the file to nobody, to show the check behind the
# directory's permissions:
#
# - the private runtime directory (0750, its owner alone may write) lets
#   nobody create no key table, no .tmp, no .old segment and no symlink;
# - nginx refuses a key table that a world-writable directory holds, that
#   another user owns, that others may write, or that a symlink names: 503
#   and a log line, even for a key the table really holds;
# - nginx refuses to start on a usage segment in a world-writable directory;
# - apikeyd refuses to start on such a directory, and publishes through a
#   planted .tmp (a symlink) without following it;
# - a planted PATH.old.* segment holding forged records adds no row, while
#   the same file owned by root is drained (the positive control).

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use Test::Apikey::Util qw(build_path is_root);

plan skip_all => 'needs root: runs nginx workers and the planting as nobody'
    unless is_root();

my $root  = $ENV{TEST_NGINX_SERVROOT};
my $run   = $ENV{TEST_NGINX_RUNTIME_DIR};
my $keys  = $ENV{TEST_NGINX_APIKEY_KEYS};
my $usage = $ENV{TEST_NGINX_APIKEY_USAGE};
my (undef, undef, $nobody) = getpwnam('nobody');

# Exit code of @cmd run as nobody.
sub as_nobody { my ($rc) = run_cmd([@_], user => 'nobody'); return $rc }

start_postgres();
start_apikeyd();
my $org = apikeyctl('org', 'create', 'planted');
my $k   = apikeyctl('key', 'create', '--org', $org->{org_id}, '--name', 'real');
wait_key_results({ $k->{key} => 'ok' }, 10, 'the key is published');

# --- the private runtime directory ------------------------------------------------

for my $case (
    [ 'a key table',  [ 'cp', $keys, "$run/planted_keys" ], "$run/planted_keys" ],
    [ 'a .tmp',       [ 'touch', "$keys.tmp" ],            "$keys.tmp" ],
    [ 'an .old segment', [ 'cp', $keys, "$usage.old.1" ],  "$usage.old.1" ],
    [ 'a symlink',    [ 'ln', '-s', '/etc/passwd', "$run/link" ], "$run/link" ],
) {
    my ($what, $cmd, $path) = @$case;
    isnt(as_nobody(@$cmd), 0, "nobody cannot plant $what in the runtime directory");
    ok(!-e $path && !-l $path, "... and there is none: $path");
}
is(as_nobody('test', '-r', $keys), 0,
   'positive control: nobody (the worker user) can read the key table there');

# --- planted key tables, for the blocks below ----------------------------------------

# A world-writable directory (as /dev/shm): nobody copies the real table in,
# so the planted file holds the real key and only its place is wrong.
my $ww = "$root/shm";
mkdir $ww or die "mkdir $ww: $!";
chmod 01777, $ww or die;
is(as_nobody('cp', $keys, "$ww/keys"), 0, 'nobody plants a copy of the table in a world-writable directory');

# Trusted directories (root's, 0755) holding a file that fails the check.
sub trusted_dir {
    my $d = "$root/$_[0]";
    mkdir $d or die "mkdir $d: $!";
    chmod 0755, $d or die;
    return $d;
}
sub copy_keys {
    my ($to, $mode, $uid) = @_;
    my ($rc) = run_cmd([ 'cp', $keys, $to ]);
    die "cp $keys $to failed\n" if $rc;
    chmod $mode, $to or die;
    chown $uid, -1, $to or die if defined $uid;
    return $to;
}
my $owned = trusted_dir('owned');
copy_keys("$owned/keys", 0644, $nobody);
my $loose = trusted_dir('loose');
copy_keys("$loose/keys", 0666);
my $linked = trusted_dir('linked');
symlink copy_keys("$root/real-keys-copy", 0644), "$linked/keys" or die;
my $good = trusted_dir('good');
copy_keys("$good/keys", 0644);

$ENV{TEST_NGINX_KEY}          = $k->{key};
$ENV{TEST_NGINX_WW_KEYS}      = "$ww/keys";
$ENV{TEST_NGINX_OWNED_KEYS}   = "$owned/keys";
$ENV{TEST_NGINX_LOOSE_KEYS}   = "$loose/keys";
$ENV{TEST_NGINX_LINKED_KEYS}  = "$linked/keys";
$ENV{TEST_NGINX_GOOD_KEYS}    = "$good/keys";
$ENV{TEST_NGINX_WW_USAGE}     = "$ww/usage";

# --- apikeyd ------------------------------------------------------------------------

{
    my ($rc, undef, $err) = run_cmd([ build_path('apikeyd'), '--db', $ENV{TEST_APIKEY_DB},
        '--keys', "$ww/apikeyd_keys", '--usage', $usage, '--listen', '127.0.0.1:' . free_port() ],
        timeout => 10);
    is($rc, 2, 'apikeyd refuses to start on a world-writable directory (exit 2)');
    like($err, qr/refusing ".*shm": runtime directory writable by its group or others/,
         '... and says why');
    ok(!-e "$ww/apikeyd_keys", '... and wrote nothing there');
}

{
    # A stale or planted .tmp that is a symlink: apikeyd's next build
    # replaces the name instead of writing through it.
    my $victim = "$root/victim";
    spew($victim, "untouched\n");
    symlink $victim, "$keys.tmp" or die "symlink: $!";
    restart_apikeyd();
    wait_key_results({ $k->{key} => 'ok' }, 10, 'published again after the restart');
    is(slurp($victim), "untouched\n", 'apikeyd did not write through a symlink planted at .tmp');
    ok(!-e "$keys.tmp" && !-l "$keys.tmp", 'no .tmp left behind');
}

# --- a planted .old segment with forged records -------------------------------------

# The live segment with a new generation on every ring: as far as apikeyd's
# exactly-once check goes, records it has never seen (a record carries no
# identity of its own: apikeyd takes it from the ring it reads).
sub forged_segment {
    my ($shift) = @_;
    my $bytes = slurp($usage) // die "read $usage\n";
    my $slots = unpack('V', substr($bytes, 16, 4));
    for my $s (0 .. $slots - 1) {
        my $slot = 4096 + 256 * $s;
        my ($head, $tail) = (unpack('Q<', substr($bytes, $slot + 64, 8)),
                             unpack('Q<', substr($bytes, $slot + 128, 8)));
        next if $head == $tail;
        substr($bytes, $slot + 4, 4) = pack('l<', 999999);    # a dead owner
        substr($bytes, $slot + 8, 8) = pack('Q<', unpack('Q<', substr($bytes, $slot + 8, 8)) + $shift);
    }
    return $bytes;
}

{
    start_nginx(http_config => apikey_http_config(usage => '1m', aggregate => 1024),
                config      => 'location /t.txt { apikey on; }');
    my $n = 20;
    stop_apikeyd();
    is_deeply(request_burst($k->{key}, $n), { 200 => $n }, "$n requests while apikeyd is stopped");
    # The log phase runs after the response: one more request (without a
    # key: counted, not recorded) to the one worker, and once it is
    # answered the log phase of every earlier one has run.
    is(http_get('/t.txt', [], timeout => 5)->{status}, 401, 'a request without a key after them');
    my $depth = 0;
    $depth += usage_ring_head($_) - usage_ring_tail($_) for 0 .. usage_slot_count() - 1;
    ok($depth > 0, "the rings hold the $n records ($depth bytes)");

    my $forged  = forged_segment(1000);
    my $control = forged_segment(2000);    # taken now: the rings still hold the records
    spew("$usage.old.1", $forged);                       # another user's
    chown $nobody, -1, "$usage.old.1" or die;
    chmod 0600, "$usage.old.1" or die;
    spew("$usage.old.2", $forged);                       # writable by others
    chmod 0666, "$usage.old.2" or die;
    spew("$root/forged", $forged);                       # through a symlink
    chmod 0600, "$root/forged" or die;
    symlink "$root/forged", "$usage.old.3" or die;

    start_apikeyd();
    wait_usage_rows($k->{key_id}, $n, 15, "the $n genuine rows");
    wait_until(sub { metric_sum(apikeyd_metrics(), 'apikey_ring_depth') == 0 }, 10, 'rings drained');
    my $log = apikeyd_log();
    for my $i (1 .. 3) {
        like($log, qr/usage segment not usable: refusing "\Q$usage.old.$i\E"/,
             "apikeyd refused the planted $usage.old.$i");
    }
    is(usage_rows($k->{key_id}), $n, 'the forged records added no row');

    # Positive control: the same forged file, owned by root and private, is
    # drained like any segment nginx left behind.
    stop_apikeyd();
    unlink "$usage.old.$_" for 1 .. 3;
    spew("$usage.old.4", $control);
    chmod 0600, "$usage.old.4" or die;
    start_apikeyd();
    my $ok = eval { wait_usage_rows($k->{key_id}, 2 * $n, 15, 'forged rows'); 1 };
    ok($ok, 'positive control: a trusted copy of the forged file is imported') or diag($@, apikeyd_log());
    unlink "$usage.old.4";
    stop_nginx();
}

run_tests();

__DATA__

=== TEST 1: positive control: a copy of the table in a trusted directory serves the key
--- http_config
apikey_keys $TEST_NGINX_GOOD_KEYS;
--- config
location /t.txt { apikey on; }
--- request
GET /t.txt
--- more_headers
X-API-Key: $TEST_NGINX_KEY
--- error_code: 200
--- no_error_log
[error]
refusing



=== TEST 2: a key table planted by nobody in a world-writable directory: 503
--- http_config
apikey_keys $TEST_NGINX_WW_KEYS;
--- config
location /t.txt { apikey on; }
--- request
GET /t.txt
--- more_headers
X-API-Key: $TEST_NGINX_KEY
--- error_code: 503
--- error_log eval
qr/not readable: refusing ".*\/shm": runtime directory writable by its group or others/



=== TEST 3: a key table owned by another user: 503
--- http_config
apikey_keys $TEST_NGINX_OWNED_KEYS;
--- config
location /t.txt { apikey on; }
--- request
GET /t.txt
--- more_headers
X-API-Key: $TEST_NGINX_KEY
--- error_code: 503
--- error_log eval
qr/refusing ".*\/owned\/keys": owned neither by root nor by the runtime directory's owner: uid \d+/



=== TEST 4: a key table that others may write: 503
--- http_config
apikey_keys $TEST_NGINX_LOOSE_KEYS;
--- config
location /t.txt { apikey on; }
--- request
GET /t.txt
--- more_headers
X-API-Key: $TEST_NGINX_KEY
--- error_code: 503
--- error_log eval
qr/refusing ".*\/loose\/keys": writable by its group or others/



=== TEST 5: a symlink at the key table's path, to a valid table: 503
--- http_config
apikey_keys $TEST_NGINX_LINKED_KEYS;
--- config
location /t.txt { apikey on; }
--- request
GET /t.txt
--- more_headers
X-API-Key: $TEST_NGINX_KEY
--- error_code: 503
--- error_log eval
qr/refusing ".*\/linked\/keys": a symlink/



=== TEST 6: a usage segment in a world-writable directory: nginx does not start
--- http_config
apikey_keys $TEST_NGINX_GOOD_KEYS;
apikey_usage $TEST_NGINX_WW_USAGE size=1m;
--- config
location /t.txt { apikey on; }
--- must_die
--- error_log eval
qr/\[emerg\] apikey_usage ".*\/shm\/usage": refusing ".*\/shm": runtime directory writable/
