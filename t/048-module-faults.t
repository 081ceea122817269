# The module under conditions a block cannot set up:
#  (a) loaded by an nginx with no http block at all: it checks, starts and
#      stops cleanly;
#  (b) every ring of the usage segment taken (no apikeyd to free the rings
#      of retired workers): the new worker says so, its requests are still
#      answered and counted as unslotted drops, and once apikeyd frees the
#      rings the worker claims one (retrying at most once a second) and
#      records again;
#  (c) an OpenSSL that offers no SHA-256: keys are refused 503;
#  (d) an error log on a full file system (a tiny tmpfs, root only): the
#      requests are still answered, and the log resumes once there is room.

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use Test::Apikey::Nginx qw(module_path nginx_binary);
use Test::Apikey::Util qw(is_root);

my $ROOT = $ENV{TEST_NGINX_SERVROOT};

# --- (a) no http block -------------------------------------------------------

{
    my $log = "$ROOT/logs/no-http.log";
    my $pidfile = "$ROOT/logs/no-http.pid";
    my $conf = "$ROOT/conf/no-http.conf";
    my $module = module_path();
    my $user = is_root() ? "user nobody " . ((getgrgid((getpwnam('nobody'))[3]))[0] // 'nogroup') . ";\n" : '';
    spew($conf, <<"EOF");
load_module $module;
${user}daemon on;
master_process on;
worker_processes 1;
error_log $log notice;
pid $pidfile;
events { worker_connections 64; }
EOF
    my @cmd = (nginx_binary(), '-p', "$ROOT/", '-c', $conf, '-e', $log);
    my ($rc, undef, $err) = run_cmd([@cmd, '-t']);
    is($rc, 0, '(a) nginx -t passes with the module and no http block')
        or diag($err);
    like($err, qr/test is successful/, '(a) nginx -t says so');

    ($rc, undef, $err) = run_cmd(\@cmd);
    is($rc, 0, '(a) nginx starts with the module and no http block') or diag($err);
    my $master;
    ok_eventually(sub { ($master) = (slurp($pidfile) // '') =~ /^(\d+)/; $master }, 5,
                  '(a) the master wrote its pid');
    ok_eventually(sub { (slurp($log) // '') =~ /start worker process \d+/ }, 5,
                  '(a) a worker started');
    kill 'QUIT', $master if $master;
    ok_eventually(sub { !kill(0, $master) }, 10, '(a) nginx exits on QUIT') if $master;
    my $text = slurp($log) // '';
    like($text, qr/worker process \d+ exited with code 0/, '(a) the worker exited with code 0');
    unlike($text, qr/\[(?:alert|crit|emerg)\]|exited on signal/, '(a) no alert, crit or emerg');
}

# --- (b) no free usage ring ---------------------------------------------------

start_postgres();
start_apikeyd();
my $org = apikeyctl('org', 'create', 'module-faults');
my $k = new_key($org->{org_id}, 'main');
wait_key_results({ $k->{key} => 'ok' }, 10, 'key table published');
stop_apikeyd();    # nobody frees the rings of retired workers now

{
    # 1 worker: max(8, 4 x 1) = 8 rings; the first worker and 7 reloads
    # take them all, the 8th reload's worker finds none (a few reloads more
    # are allowed: the count is not the point here).
    my %conf = usage_conf(size => '1m', config => 'location /t.txt { apikey on; }');
    start_nginx(%conf);
    my $reloads = 0;
    while ($reloads < 16 && nginx_error_log() !~ /no free usage ring slot/) {
        reload_nginx(%conf);
        $reloads++;
    }
    ok(nginx_error_log() =~ /no free usage ring slot/,
       "(b) after $reloads reloads a worker says it has no usage ring")
        or diag(join '', grep { /apikey: |reconfiguring|exited/ && !/\[debug\]/ }
                         split /^/, nginx_error_log());
    # The old workers (which hold rings) must not take the requests below.
    ok_eventually(sub { nginx_worker_pids() == 1 }, 10, '(b) the old workers are gone');

    my $sent = 0;
    my %st;
    for (1 .. 3) {
        $st{ get_with_key($k->{key})->{status} }++;
        $sent++;
    }
    is_deeply(\%st, { 200 => 3 }, '(b) requests without a ring are answered')
        or diag(format_statuses(\%st));

    restart_apikeyd();
    my $offset = length nginx_error_log();
    ok_eventually(sub {
        $sent++;
        get_with_key($k->{key})->{status} == 200 && usage_rows($k->{key_id}) > 0;
    }, 15, '(b) once apikeyd freed the rings, the worker records again');
    like(substr(nginx_error_log(), $offset), qr/apikey: worker claimed usage ring slot \d+/,
         '(b) the worker claimed a ring on a request');

    stop_nginx();
    usage_settle();
    my $rows = usage_rows($k->{key_id});
    my $m = apikeyd_metrics();
    ok($rows >= 1 && $rows < $sent, "(b) some requests recorded, not all ($rows of $sent)");
    is($m->{apikey_unslotted_drops_total}, $sent - $rows,
       '(b) every request not recorded is counted as an unslotted drop');
}

# --- (c) an OpenSSL without SHA-256 ------------------------------------------

{
    # Only OpenSSL's null provider (as a broken or FIPS-only configuration
    # would leave it): the master loads this configuration at start, the
    # workers inherit it. A key cannot be hashed, so it cannot be checked.
    my $cnf = "$ROOT/conf/null-provider.cnf";
    spew($cnf, join "\n", 'openssl_conf = openssl_init', '[openssl_init]',
         'providers = provider_sect', '[provider_sect]', 'null = null_sect',
         '[null_sect]', 'activate = 1', '');
    {
        local $ENV{OPENSSL_CONF} = $cnf;
        start_nginx(http_config => apikey_http_config(),
                    config => 'location /t.txt { apikey on; }');
    }
    is(get_with_key($k->{key})->{status}, 503, '(c) a valid key is refused 503 (fail closed)');
    is(get_with_key(key_typo($k->{key}))->{status}, 401, '(c) a malformed key is still 401');
    stop_nginx();
    unlike(nginx_error_log(), qr/exited on signal/, '(c) no worker crashed');
}

# --- (d) an error log on a full file system ----------------------------------

SKIP: {
    skip '(d) mounting a tmpfs needs root', 5 unless is_root();
    my $mnt = "$ROOT/full";
    mkdir $mnt or die "mkdir $mnt: $!";
    my ($rc, undef, $err) = run_cmd(['mount', '-t', 'tmpfs', '-o', 'size=64k,mode=0755', 'tmpfs', $mnt]);
    skip "(d) mount failed: $err", 5 if $rc != 0;
    our $MOUNTED = $mnt;

    start_nginx(http_config => apikey_http_config(),
                config => "location /full/ { apikey on; alias html/; error_log $mnt/full.log debug; }");

    # Fill what is left of the file system.
    open my $fill, '>', "$mnt/filler" or die "filler: $!";
    my $block = 'x' x 4096;
    1 while syswrite($fill, $block);
    close $fill;

    my %st;
    $st{ get_with_key($k->{key}, "/full/t.txt?during-$_")->{status} }++ for 1 .. 5;
    is_deeply(\%st, { 200 => 5 }, '(d) requests are answered while their log cannot be written')
        or diag(format_statuses(\%st));
    unlike(slurp("$mnt/full.log") // '', qr/during-5/, '(d) the file system was full indeed');

    unlink "$mnt/filler";
    # nginx skips writing for the rest of the second the disk filled: the
    # log resumes with a later request.
    my ($n, $answered) = (0, 0);
    ok_eventually(sub {
        $n++;
        $answered++ if get_with_key($k->{key}, "/full/t.txt?after-room-$n")->{status} == 200;
        (slurp("$mnt/full.log") // '') =~ /after-room-/;
    }, 5, '(d) once there is room, the log resumes');
    is($answered, $n, '(d) every request after room was made is answered');
    stop_nginx();
    unlike(nginx_error_log(), qr/exited on signal/, '(d) no worker crashed');
    run_cmd(['umount', $mnt]);
    undef $MOUNTED;
}

END {
    our $MOUNTED;
    system('umount', '-l', $MOUNTED) if $MOUNTED;
}

done_testing();
