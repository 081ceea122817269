package Test::Apikey::Nginx;

# Writes nginx.conf into the per-file server root, starts, reloads and stops
# nginx (daemon, master + workers), and gives access to its error.log.
# Under valgrind (TEST_APIKEY_USE_VALGRIND) nginx runs with `daemon off` as a
# child of the test in its own process group, so that valgrind never has to
# follow the daemonizing fork and the master's exit status is seen.

use strict;
use warnings;

use Cwd qw(abs_path);
use Exporter qw(import);
use POSIX ();
use Time::HiRes qw(sleep time);

use Test::Apikey::Util qw(
    build_path servroot servroot_path is_root run_cmd process_alive
    stop_process process_title wait_until slurp spew on_cleanup
    make_world_readable_dir spawn use_valgrind add_title_hook timeout_factor
);
use Test::Apikey::Valgrind qw(valgrind_argv);

our @EXPORT_OK = qw(
    nginx_binary nginx_version module_path nginx_conf_text write_nginx_conf
    start_nginx stop_nginx reload_nginx nginx_pid nginx_test_config
    nginx_signal nginx_worker_pids apikey_http_config
    nginx_error_log error_log_path truncate_error_log workers log_level
);

my $PID;
my $WORKERS   = 1;
my $LOG_LEVEL = 'debug';

sub workers   { $WORKERS   = shift if @_; return $WORKERS }
sub log_level { $LOG_LEVEL = shift if @_; return $LOG_LEVEL }
sub nginx_pid { return $PID }

sub nginx_binary { return $ENV{TEST_NGINX_BINARY} || '/usr/sbin/nginx' }

sub nginx_version {
    my (undef, undef, $err) = run_cmd([ nginx_binary(), '-v' ]);
    return $err =~ m{nginx/(\d+(?:\.\d+)*)} ? $1 : '0';
}

# Absolute path of the module to load, or undef with TEST_APIKEY_NO_MODULE=1.
sub module_path {
    return undef if $ENV{TEST_APIKEY_NO_MODULE};
    my $path = $ENV{TEST_APIKEY_MODULE} || build_path('ngx_http_apikey_module.so');
    die "nginx module $path not found: build it (cmake -S . -B build && "
        . "cmake --build build), or set TEST_APIKEY_MODULE=/path/to/module.so "
        . "(TEST_APIKEY_NO_MODULE=1 runs plain nginx, for harness self-tests only)\n"
        unless -f $path;
    return abs_path($path);
}

sub error_log_path { return servroot_path('logs', 'error.log') }
sub nginx_error_log { return slurp(error_log_path()) // '' }
sub truncate_error_log { spew(error_log_path(), '') }

sub _worker_user_line {
    my ($main) = @_;
    return () unless is_root() && $main !~ /^\s*user\s/m;
    my $gid = (getpwnam('nobody'))[3];
    my $group = defined $gid ? (getgrgid($gid))[0] : 'nogroup';
    return ("user nobody $group;");
}

# nginx_conf_text(main_config => ..., http_config => ..., config => ...,
#                 workers => N, log_level => L)
sub nginx_conf_text {
    my (%s) = @_;
    my $root  = servroot();
    my $main  = $s{main_config} // '';
    my $http  = $s{http_config} // '';
    my $cfg   = $s{config}      // '';
    my $port  = $ENV{TEST_NGINX_SERVER_PORT};
    my $nwork = $s{workers}   // $WORKERS;
    my $level = $s{log_level} // $LOG_LEVEL;
    my $module = module_path();
    my @main = (
        ($module ? "load_module $module;" : ()),
        _worker_user_line($main),
        (use_valgrind('nginx') ? 'daemon off;' : 'daemon on;'),
        'master_process on;',
        ($main =~ /^\s*worker_processes\s/m ? () : "worker_processes $nwork;"),
        "error_log $root/logs/error.log $level;",
        "pid $root/logs/nginx.pid;",
    );
    my @temp = map { "${_}_temp_path $root/tmp/$_;" }
        qw(client_body proxy fastcgi uwsgi scgi);
    return join("\n",
        @main, '', $main, '',
        'events {', '    worker_connections 1024;', '}', '',
        'http {',
        '    access_log off;',
        '    default_type text/plain;',
        '    types { text/html html; text/plain txt; application/json json; }',
        (map { "    $_" } @temp),
        '', $http, '',
        '    server {',
        "        listen 127.0.0.1:$port;",
        '        server_name localhost;',
        "        root $root/html;",
        '', $cfg, '',
        '    }',
        '}', '');
}

# apikey_http_config(usage => SIZE, aggregate => N, upstream => TEXT) ->
# http_config text: apikey_keys $TEST_NGINX_APIKEY_KEYS; with usage,
# apikey_usage $TEST_NGINX_APIKEY_USAGE size=SIZE (usage => '' for the
# default size) [aggregate=N]; with upstream, a server {} on
# $TEST_NGINX_UPSTREAM_PORT holding TEXT.
sub apikey_http_config {
    my (%o) = @_;
    my @l = ("apikey_keys $ENV{TEST_NGINX_APIKEY_KEYS};");
    push @l, "apikey_usage $ENV{TEST_NGINX_APIKEY_USAGE}"
        . (length $o{usage} ? " size=$o{usage}" : '')
        . ($o{aggregate} ? " aggregate=$o{aggregate}" : '') . ';' if defined $o{usage};
    push @l, 'server {', "    listen 127.0.0.1:$ENV{TEST_NGINX_UPSTREAM_PORT};",
             "    $o{upstream}", '}' if defined $o{upstream};
    return join("\n", @l) . "\n";
}

sub _conf_path { return servroot_path('conf', 'nginx.conf') }

# `nginx -t` checks a config of its own, conf/test/nginx.conf (the same base
# name, so that messages still say "nginx.conf:LINE"): the running nginx's
# conf/nginx.conf is left alone.
sub _test_conf_path {
    make_world_readable_dir(servroot_path('conf', 'test'));
    return servroot_path('conf', 'test', 'nginx.conf');
}

sub write_nginx_conf {
    my (%s) = @_;
    return spew(_conf_path(), nginx_conf_text(%s));
}

# -> argv of nginx with the server root's paths; under valgrind prefixed
# with valgrind, logging as valgrind-$log_name.<pid>.log.
sub _nginx_cmd {
    my ($conf, $log_name, @extra) = @_;
    my $root = servroot();
    return [ valgrind_argv('nginx', $log_name),
             nginx_binary(), '-p', "$root/", '-c', $conf // _conf_path(),
             '-e', error_log_path(), @extra ];
}

# nginx_test_config(%sections) -> (exit code, stderr of nginx -t) for the
# config those sections make; a running nginx and its conf are not touched.
sub nginx_test_config {
    my (%s) = @_;
    my $conf = spew(_test_conf_path(), nginx_conf_text(%s));
    my ($rc, undef, $err) = run_cmd(_nginx_cmd($conf, 'nginx-t', '-t'), timeout => 30);
    return ($rc, $err);
}

# nginx_signal(SIGNAL) -> (exit code, stderr) of `nginx -s SIGNAL` (reopen,
# reload, quit, stop) against the running nginx's conf and pid file.
sub nginx_signal {
    my ($signal) = @_;
    my ($rc, undef, $err) = run_cmd(_nginx_cmd(undef, 'nginx-s', '-s', $signal),
                                    timeout => 30);
    return ($rc, $err);
}

# nginx_worker_pids() -> the pids of the running master's worker processes,
# ascending; after a reload, old workers that are still shutting down are
# among them (process_title($pid) says "... is shutting down").
sub nginx_worker_pids {
    my $master = $PID or return ();
    my @pids;
    for my $stat (glob '/proc/[0-9]*/stat') {
        my ($pid, $ppid) = (slurp($stat) // '') =~ /^(\d+) \(.*\) \S+ (\d+) /s or next;
        push @pids, $pid if $ppid == $master && process_title($pid) =~ /worker process/;
    }
    my @sorted = sort { $a <=> $b } @pids;
    return @sorted;    # in scalar context: how many (sort's would be undef)
}

sub _wait_for_pid {
    my $pidfile = servroot_path('logs', 'nginx.pid');
    my $pid;
    eval {
        wait_until(sub {
            my $t = slurp($pidfile);
            ($pid) = ($t // '') =~ /^(\d+)/;
            return $pid && process_alive($pid);
        }, 5);
        1;
    } or return undef;
    return $pid;
}

# start_nginx(%sections): stops a running nginx, writes a fresh conf,
# truncates error.log and starts nginx. Dies with nginx's stderr on failure.
sub start_nginx {
    my (%s) = @_;
    stop_nginx();
    write_nginx_conf(%s);
    truncate_error_log();
    unlink servroot_path('logs', 'nginx.pid');
    if (use_valgrind('nginx')) {
        $PID = _start_foreground();
    } else {
        my ($rc, undef, $err) = run_cmd(_nginx_cmd(), timeout => 30);
        die "nginx failed to start (exit $rc):\n$err" if $rc != 0;
        $PID = _wait_for_pid()
            or die "nginx did not write a live pid within 5s:\n$err"
                 . _log_tail(20);
    }
    # The master opened its listening sockets before it wrote the pid file,
    # so connections are accepted from here on (no probe request needed).
    on_cleanup('nginx', \&stop_nginx);
    return $PID;
}

# Under valgrind: `daemon off`, the master is our child (in its own process
# group, as a daemon would be); it has started once it wrote its own pid to
# the pid file. -> the pid; dies with nginx's stderr when it exits instead.
sub _start_foreground {
    my $stderr = servroot_path('logs', 'nginx.stderr');
    spew($stderr, '');
    my $pid = spawn(_nginx_cmd(undef, 'nginx'), log => $stderr, own_group => 1);
    my $pidfile = servroot_path('logs', 'nginx.pid');
    my $status;
    my $started = eval {
        wait_until(sub {
            if (waitpid($pid, POSIX::WNOHANG()) == $pid) {
                $status = $?;
                die "exited\n";
            }
            my ($p) = (slurp($pidfile) // '') =~ /^(\d+)/;
            return $p && $p == $pid;
        }, 5);
        1;
    };
    return $pid if $started;
    my $how = defined $status ? 'exit ' . ($status >> 8)
        : "no pid in the pid file within ${\ (5 * timeout_factor())}s";
    stop_process($pid, TERM => 5, KILL => 5) if process_alive($pid);
    die "nginx failed to start ($how):\n" . (slurp($stderr) // '') . _log_tail(20);
}

# stop_nginx(): graceful QUIT, then TERM, then KILL of the process group.
sub stop_nginx {
    return unless $PID;
    my $pid = $PID;
    undef $PID;
    return if stop_process($pid, QUIT => 10, TERM => 5);
    kill 'KILL', -$pid;
    stop_process($pid, KILL => 5)
        or die "nginx master $pid did not exit\n";
}

# reload_nginx(%sections): rewrites the conf and sends HUP; waits until the
# master started new workers. Dies (with the [emerg] lines) if it refused.
sub reload_nginx {
    my (%s) = @_;
    die "reload_nginx: nginx is not running\n" unless $PID && process_alive($PID);
    write_nginx_conf(%s);
    my $offset = length nginx_error_log();
    kill 'HUP', $PID;
    my $new = '';
    wait_until(sub {
        $new = substr(nginx_error_log(), $offset);
        return $new =~ /start worker process|\[emerg\]/;
    }, 10, 'nginx reload');
    die "nginx rejected the reload:\n" . join('', $new =~ /^(.*\[emerg\].*\n)/mg)
        if $new =~ /\[emerg\]/;
    return 1;
}

# Under valgrind /proc shows valgrind's command line, not the title nginx sets,
# so process_title() of the master and its workers is rebuilt: the master's
# from its command line, "worker process is shutting down" once error.log
# has the worker's "gracefully shutting down" (logged at notice, together
# with the title change), else "worker process".
my %SHUTTING;     # worker pid -> 1
my $SCANNED = 0;  # bytes of error.log read for it

sub _scan_shutting_down {
    my $size = -s error_log_path() // 0;
    ($SCANNED, %SHUTTING) = (0) if $size < $SCANNED;    # truncated: a new nginx
    return if $size == $SCANNED;
    open my $fh, '<:raw', error_log_path() or return;
    seek $fh, $SCANNED, 0;
    local $/ = "\n";
    while (my $line = <$fh>) {
        if ($line !~ /\n\z/) { last }    # a line still being written
        $SCANNED += length $line;
        $SHUTTING{$1} = 1 if $line =~ /\] (\d+)#\d+: gracefully shutting down/;
    }
    close $fh;
}

sub _valgrind_title {
    my ($pid) = @_;
    my $master = $PID or return undef;
    if ($pid == $master) {
        my $cmd = slurp("/proc/$pid/cmdline") // return undef;
        $cmd =~ tr/\0/ /;
        $cmd =~ s/\s+\z//;
        $cmd =~ s{^\S*valgrind\S*(?: --\S+)* }{};
        return "nginx: master process $cmd";
    }
    my ($ppid) = (slurp("/proc/$pid/stat") // '') =~ /^\d+ \(.*\) \S+ (\d+) /s;
    return undef unless $ppid && $ppid == $master;
    _scan_shutting_down();
    return 'nginx: worker process' . ($SHUTTING{$pid} ? ' is shutting down' : '');
}

add_title_hook(\&_valgrind_title) if use_valgrind('nginx');

sub _log_tail {
    my ($n) = @_;
    my @lines = split /\n/, nginx_error_log();
    @lines = @lines[-$n .. -1] if @lines > $n;
    return join('', map { "    $_\n" } "--- error.log (last $n lines):", @lines);
}

1;
