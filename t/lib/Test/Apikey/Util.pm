package Test::Apikey::Util;

# Process, file and port plumbing shared by the rest of the harness:
# the per-file server root, free ports, running commands with captured output,
# spawning and stopping background processes, polling, and END-time cleanup.

use strict;
use warnings;

use Cwd qw(abs_path);
use Exporter qw(import);
use File::Basename qw(dirname);
use File::Path qw(make_path remove_tree);
use File::Spec;
use File::Temp qw(tempdir tempfile);
use IO::Socket::INET;
use POSIX qw(WNOHANG);
use Time::HiRes qw(sleep time);

our @EXPORT_OK = qw(
    repo_root build_path servroot servroot_path free_port
    is_root run_cmd spawn process_alive stop_process process_title
    wait_until ok_eventually slurp spew on_cleanup expand_vars
    make_world_readable_dir make_runtime_dir
    valgrind_programs use_valgrind timeout_factor on_final stop_all
    add_title_hook
);

my $MAIN_PID = $$;
my $SERVROOT;
my %PORTS_TAKEN;
my @CLEANUPS;    # LIFO list of [name, coderef]
my @FINALS;      # run once after every cleanup, before the server root goes
my @TITLE_HOOKS; # process_title() of a process that runs under valgrind

# TEST_APIKEY_USE_VALGRIND: 1 (nginx, apikeyd and apikeyctl) or a comma list
# of those names. -> the set of programs to run under valgrind (a hash ref,
# empty when unset or 0).
sub valgrind_programs {
    my $v = $ENV{TEST_APIKEY_USE_VALGRIND} // '';
    return {} if $v eq '' || $v eq '0';
    my @all = qw(nginx apikeyd apikeyctl);
    return { map { $_ => 1 } @all } if $v eq '1';
    my %want = map { $_ => 1 } grep { length } split /[,\s]+/, $v;
    my @bad = grep { my $w = $_; !grep { $_ eq $w } @all } sort keys %want;
    die "TEST_APIKEY_USE_VALGRIND=$v: unknown program(s) @bad "
        . "(want 1, or a comma list of: @all)\n" if @bad;
    return \%want;
}

# use_valgrind([$program]) -> true when the suite runs under valgrind (any
# program), or when $program does.
sub use_valgrind {
    my ($program) = @_;
    my $set = valgrind_programs();
    return defined $program ? $set->{$program} : scalar %$set;
}

# Every timeout of the harness is multiplied by this: 1 normally, 10 under
# valgrind (programs run 20-50 times slower, but most of a test's waiting is
# not inside them); TEST_APIKEY_TIMEOUT_FACTOR overrides both.
sub timeout_factor {
    my $f = $ENV{TEST_APIKEY_TIMEOUT_FACTOR};
    return $f if defined $f && $f =~ /^\d+(?:\.\d+)?$/ && $f > 0;
    return use_valgrind() ? 10 : 1;
}

sub is_root { return $> == 0 }

sub repo_root {
    # t/lib/Test/Apikey/Util.pm -> repository root
    return abs_path(dirname(__FILE__) . '/../../../..');
}

sub build_path {
    my ($name) = @_;
    my $dir = $ENV{TEST_APIKEY_BUILD_DIR} || repo_root() . '/build';
    return "$dir/$name";
}

sub slurp {
    my ($path) = @_;
    open my $fh, '<:raw', $path or return undef;
    local $/;
    my $text = <$fh>;
    close $fh;
    return defined $text ? $text : '';
}

sub spew {
    my ($path, $text, $mode) = @_;
    open my $fh, '>:raw', $path or die "cannot write $path: $!\n";
    print {$fh} $text;
    close $fh or die "cannot write $path: $!\n";
    chmod($mode // 0644, $path);
    return $path;
}

sub make_world_readable_dir {
    my ($dir) = @_;
    make_path($dir) unless -d $dir;
    chmod 0755, $dir or die "chmod 0755 $dir: $!\n";
    return $dir;
}

# The segments' directory as an operator makes /run/apikey: owned by the
# suite's user (apikeyd's), group nginx's workers (nobody's group when root),
# mode 0750, so only its owner may create files in it.
sub make_runtime_dir {
    my ($dir) = @_;
    make_path($dir) unless -d $dir;
    if (is_root()) {
        my $gid = (getpwnam('nobody'))[3];
        chown 0, $gid, $dir or die "chown $dir: $!\n" if defined $gid;
    }
    chmod 0750, $dir or die "chmod 0750 $dir: $!\n";
    return $dir;
}

# Every directory above $dir must be traversable by nginx's workers (nobody)
# and by the postgres OS user when the suite runs as root.
sub check_traversable {
    my ($dir) = @_;
    my @parts = File::Spec->splitdir($dir);
    for my $i (1 .. $#parts) {
        my $d = File::Spec->catdir(@parts[0 .. $i - 1]) || '/';
        my $mode = (stat $d)[2];
        next unless defined $mode;
        die "Test::Apikey: $d is not traversable by other users (mode "
            . sprintf('%04o', $mode & 07777)
            . "); nginx workers run as nobody when the suite runs as root. "
            . "Set TMPDIR to a world-traversable directory.\n"
            unless $mode & 0001;
    }
}

# One server root per .t file: conf/, logs/, html/, tmp/, spool/, pg/.
sub servroot {
    return $SERVROOT if $SERVROOT;
    my $base = File::Spec->tmpdir;
    $SERVROOT = tempdir('apikey-t-XXXXXX', DIR => $base, CLEANUP => 0);
    $SERVROOT = abs_path($SERVROOT);
    chmod 0755, $SERVROOT or die "chmod $SERVROOT: $!\n";
    check_traversable($SERVROOT) if is_root();
    make_world_readable_dir("$SERVROOT/$_") for qw(conf logs html tmp spool);
    return $SERVROOT;
}

sub servroot_path { return servroot() . '/' . join('/', @_) }

# A port nobody listens on, outside the kernel's ephemeral range so that our
# own client connections cannot grab it before the server binds it.
sub free_port {
    for (1 .. 500) {
        my $port = 20000 + int(rand(12000));
        next if $PORTS_TAKEN{$port};
        my $sock = IO::Socket::INET->new(
            LocalAddr => '127.0.0.1', LocalPort => $port,
            Proto => 'tcp', Listen => 1, ReuseAddr => 1,
        ) or next;
        close $sock;
        $PORTS_TAKEN{$port} = 1;
        return $port;
    }
    die "Test::Apikey: no free TCP port found on 127.0.0.1\n";
}

# $ENV-substitution of $TEST_NGINX_FOO / $TEST_APIKEY_FOO; dies on unset.
sub expand_vars {
    my ($text, $where) = @_;
    return $text unless defined $text;
    $text =~ s{\$(TEST_(?:NGINX|APIKEY)_\w+)}{
        defined $ENV{$1} ? $ENV{$1}
            : die "$where uses \$$1, which is not set in %ENV "
                . "(set \$ENV{$1} in the file's preamble or an --- init section)\n"
    }ge;
    return $text;
}

sub _child_exec {
    my ($argv, %opt) = @_;
    $SIG{$_} = 'DEFAULT' for qw(INT TERM HUP QUIT PIPE);
    if (defined $opt{stdin_file}) {
        open STDIN, '<', $opt{stdin_file} or POSIX::_exit(126);
    } else {
        open STDIN, '<', '/dev/null';
    }
    open STDOUT, '>&', $opt{stdout} or POSIX::_exit(126) if $opt{stdout};
    open STDERR, '>&', $opt{stderr} or POSIX::_exit(126) if $opt{stderr};
    setpgrp(0, 0) if $opt{own_group};
    chdir $opt{cwd} if $opt{cwd};
    %ENV = (%ENV, %{ $opt{env} }) if $opt{env};
    { no warnings 'exec'; exec { $argv->[0] } @$argv; }
    print STDERR "exec $argv->[0] failed: $!\n";
    POSIX::_exit(127);
}

sub _as_user {
    my ($argv, $user) = @_;
    return $argv unless defined $user;
    return [ '/usr/sbin/runuser', '-u', $user, '--', @$argv ];
}

# run_cmd([argv...], stdin => STR, timeout => S, user => NAME, env => {})
# returns (exit_code, stdout, stderr); exit code 128+N for a signal.
sub run_cmd {
    my ($argv, %opt) = @_;
    $argv = _as_user($argv, $opt{user});
    my $timeout = ($opt{timeout} // 60) * timeout_factor();
    my ($out_fh, $out_path) = tempfile(UNLINK => 1);
    my ($err_fh, $err_path) = tempfile(UNLINK => 1);
    my $in_path;
    if (defined $opt{stdin}) {
        (my $in_fh, $in_path) = tempfile(UNLINK => 1);
        binmode $in_fh;
        print {$in_fh} $opt{stdin};
        close $in_fh;
    }
    my $pid = fork // die "fork: $!\n";
    if (!$pid) {
        _child_exec($argv, %opt, stdout => $out_fh, stderr => $err_fh,
                    stdin_file => $in_path);
    }
    my $deadline = time + $timeout;
    while (1) {
        my $r = waitpid($pid, WNOHANG);
        last if $r == $pid;
        if (time > $deadline) {
            kill 'KILL', $pid;
            waitpid($pid, 0);
            die "command timed out after ${timeout}s: @$argv\n";
        }
        sleep 0.01;
    }
    my $status = $?;
    my $rc = ($status & 127) ? 128 + ($status & 127) : $status >> 8;
    my ($out, $err) = (slurp($out_path), slurp($err_path));
    unlink grep { defined } $out_path, $err_path, $in_path;
    return ($rc, $out, $err);
}

# spawn([argv...], log => PATH) -> pid of a background child whose
# stdout and stderr are appended to PATH.
sub spawn {
    my ($argv, %opt) = @_;
    open my $log, '>>', $opt{log} or die "cannot open $opt{log}: $!\n";
    my $pid = fork // die "fork: $!\n";
    _child_exec($argv, %opt, stdout => $log, stderr => $log) unless $pid;
    close $log;
    return $pid;
}

sub _is_zombie {
    my ($pid) = @_;
    my $stat = slurp("/proc/$pid/stat") // return 0;
    return $stat =~ /^\d+ \(.*\) Z/s;
}

# True while $pid runs. Reaps it if it is our child; a zombie whose parent
# never reaps it (PID 1 in some containers) counts as gone.
sub process_alive {
    my ($pid) = @_;
    return 0 unless $pid && $pid > 0;
    my $r = waitpid($pid, WNOHANG);
    return 0 if $r == $pid;
    return 0 unless kill 0, $pid;
    return !_is_zombie($pid);
}

# process_title($pid) -> its command line as ps shows it (NULs as spaces;
# nginx rewrites it to "nginx: worker process" ...), or '' once it is gone.
sub process_title {
    my ($pid) = @_;
    my $c = slurp("/proc/$pid/cmdline") // return '';
    $c =~ tr/\0/ /;
    $c =~ s/\s+\z//;
    # Under valgrind the kernel shows valgrind's own command line, and a title
    # the program sets (nginx's "worker process") lives in memory valgrind
    # does not show: ask the hooks, else show the program's command line.
    if ($c =~ m{^\S*valgrind\S* }) {
        for my $hook (@TITLE_HOOKS) {
            my $t = $hook->($pid);
            return $t if defined $t;
        }
        $c =~ s{^\S*valgrind\S*(?: --\S+)* }{};
    }
    return $c;
}

# add_title_hook(sub { my ($pid) = @_; ... }): process_title() of a process
# that runs under valgrind asks the hook first (undef: no answer).
sub add_title_hook { push @TITLE_HOOKS, @_ }

# stop_process($pid, [SIG => seconds, ...]): send each signal in turn until
# the process is gone. Returns 1 if it stopped.
sub stop_process {
    my ($pid, @steps) = @_;
    @steps = (TERM => 10, KILL => 5) unless @steps;
    while (my ($sig, $wait) = splice @steps, 0, 2) {
        return 1 unless process_alive($pid);
        kill $sig, $pid;
        my $deadline = time + $wait * timeout_factor();
        while (time < $deadline) {
            return 1 unless process_alive($pid);
            sleep 0.02;
        }
    }
    return !process_alive($pid);
}

# wait_until(sub { ... }, $timeout_s [, $what]) -> elapsed seconds; dies on
# timeout. The sub is called every 50 ms until it returns true. The timeout
# is multiplied by timeout_factor() (10 under valgrind).
sub wait_until {
    my ($cond, $timeout, $what) = @_;
    $timeout //= 10;
    my $factor = timeout_factor();
    my $limit = $timeout * $factor;
    my $start = time;
    while (1) {
        my $ok = eval { $cond->() };
        return time - $start if $ok;
        if (time - $start > $limit) {
            my $why = $@ ? " (last error: $@)" : '';
            chomp $why;
            die "wait_until: " . ($what // 'condition')
                . " not met within ${timeout}s"
                . ($factor == 1 ? '' : " (x$factor: ${limit}s)") . "$why\n";
        }
        sleep 0.05;
    }
}

# ok_eventually(sub { ... }, $timeout_s, $name) -> a test that passes once
# the sub returns true within the timeout (wait_until's polling), and fails
# with wait_until's reason otherwise, so the file goes on.
sub ok_eventually {
    my ($cond, $timeout, $name) = @_;
    my $ok = eval { wait_until($cond, $timeout, $name); 1 };
    return Test::More::ok($ok, $name) || Test::More::diag($@);
}

# on_cleanup(NAME, CODE): run CODE at END (last registered runs first).
sub on_cleanup {
    my ($name, $code) = @_;
    @CLEANUPS = grep { $_->[0] ne $name } @CLEANUPS;
    push @CLEANUPS, [ $name, $code ];
}

# on_final(NAME, CODE): run CODE once, after every cleanup (nginx, apikeyd
# and PostgreSQL stopped) and before the server root is removed.
sub on_final {
    my ($name, $code) = @_;
    @FINALS = grep { $_->[0] ne $name } @FINALS;
    push @FINALS, [ $name, $code ];
}

# stop_all(): run the cleanups (stop every process the file started), then
# the on_final code; the server root stays.
sub stop_all {
    return unless $$ == $MAIN_PID;
    while (my $c = pop @CLEANUPS) {
        eval { $c->[1]->(); 1 } or warn "cleanup $c->[0]: $@";
    }
    while (my $f = shift @FINALS) {
        eval { $f->[1]->(); 1 } or warn "$f->[0]: $@";
    }
}

sub run_cleanups {
    return unless $$ == $MAIN_PID;
    stop_all();
    return unless $SERVROOT && -d $SERVROOT;
    if ($ENV{TEST_APIKEY_KEEP}) {
        print STDERR "# TEST_APIKEY_KEEP: server root kept at $SERVROOT\n";
    } else {
        remove_tree($SERVROOT);
    }
}

# SIGPIPE too: `prove ... | head` must not leave nginx or PostgreSQL behind.
my %SIGNUM = (HUP => 1, INT => 2, PIPE => 13, TERM => 15);
for my $sig (keys %SIGNUM) {
    $SIG{$sig} = sub {
        $SIG{PIPE} = 'IGNORE';    # END may still print to a closed pipe
        print STDERR "# caught SIG$sig, cleaning up\n" unless $sig eq 'PIPE';
        exit 128 + $SIGNUM{$sig};
    };
}

END {
    local ($?, $!, $@);
    run_cleanups();
}

1;
