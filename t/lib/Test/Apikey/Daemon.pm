package Test::Apikey::Daemon;

# apikeyd as a foreground child of the test, and apikeyctl as a command.

use strict;
use warnings;

use Exporter qw(import);
use JSON::PP ();

use Test::Apikey::Util qw(
    build_path servroot servroot_path make_world_readable_dir run_cmd spawn
    process_alive stop_process wait_until slurp on_cleanup free_port
);
use Test::Apikey::Http qw(http_get);
use Test::Apikey::Valgrind qw(valgrind_argv);

our @EXPORT_OK = qw(
    start_apikeyd stop_apikeyd kill_apikeyd restart_apikeyd apikeyd_log
    apikeyd_pid apikeyd_get apikeyctl apikeyctl_raw apikeyctl_path
    apikeyd_path
);

my $D;    # { pid, opts, port }

sub apikeyd_path   { return $ENV{TEST_APIKEY_DAEMON} || build_path('apikeyd') }
sub apikeyctl_path { return $ENV{TEST_APIKEY_CTL}    || build_path('apikeyctl') }
sub apikeyd_pid    { return $D && $D->{pid} }

sub _log_path { return servroot_path('logs', 'apikeyd.log') }
sub apikeyd_log { return slurp(_log_path()) // '' }

sub _argv {
    my (%o) = @_;
    my $db = $o{db} // $ENV{TEST_APIKEY_DB}
        // die "start_apikeyd: TEST_APIKEY_DB is not set: call start_postgres() first\n";
    return [ valgrind_argv('apikeyd'), apikeyd_path(),
        '--db', $db, '--node', $o{node} // 'test',
        '--keys', $ENV{TEST_NGINX_APIKEY_KEYS},
        '--usage', $ENV{TEST_NGINX_APIKEY_USAGE},
        '--listen', "127.0.0.1:$D->{port}",
        '--spool', servroot_path('spool'),
        @{ $o{args} || [] } ];
}

# start_apikeyd(node => NAME, args => [extra flags], db => CONNINFO,
#               wait => 0) -> { pid, port, url }
# Waits up to 10 s for GET /healthz to answer 200 (unless wait => 0).
sub start_apikeyd {
    my (%o) = @_;
    my $bin = apikeyd_path();
    die "apikeyd binary $bin not found: build it (cmake --build build) "
        . "or set TEST_APIKEY_DAEMON\n" unless -x $bin;
    stop_apikeyd() if $D && $D->{pid};
    my $port = $D ? $D->{port} : free_port();
    $D = { port => $port, opts => \%o, url => "http://127.0.0.1:$port" };
    $ENV{TEST_APIKEY_API_PORT} = $port;
    make_world_readable_dir(servroot_path('spool'));
    my $argv = _argv(%o);
    open my $log, '>>', _log_path() or die "cannot open apikeyd.log: $!\n";
    print {$log} "=== start: @$argv\n";
    close $log;
    $D->{pid} = spawn($argv, log => _log_path());
    on_cleanup('apikeyd', \&stop_apikeyd);
    _wait_healthy() unless defined $o{wait} && !$o{wait};
    return $D;
}

sub _wait_healthy {
    my $last = '';
    eval {
        wait_until(sub {
            die "apikeyd exited\n" unless process_alive($D->{pid});
            my $r = http_get('/healthz', [], port => $D->{port}, timeout => 2);
            $last = $r->{error} // "status $r->{status}";
            return $r->{status} == 200;
        }, 10, 'apikeyd GET /healthz 200');
        1;
    } and return;
    my $why = $@;
    my @l = split /\n/, apikeyd_log();
    @l = @l[-20 .. -1] if @l > 20;
    die "apikeyd did not become healthy: $why(last answer: $last)\n"
        . join('', map { "    $_\n" } '--- apikeyd.log (last lines):', @l);
}

# stop_apikeyd(): TERM, wait up to 10 s, then KILL.
sub stop_apikeyd {
    return unless $D && $D->{pid};
    my $pid = delete $D->{pid};
    stop_process($pid, TERM => 10, KILL => 5);
}

sub kill_apikeyd {
    return unless $D && $D->{pid};
    my $pid = delete $D->{pid};
    stop_process($pid, KILL => 5);
}

# restart_apikeyd(%opts): stop, then start with the previous options
# (overridden by %opts); same port.
sub restart_apikeyd {
    my (%o) = @_;
    my %prev = $D ? %{ $D->{opts} } : ();
    stop_apikeyd();
    return start_apikeyd(%prev, %o);
}

# apikeyd_get($path, [header lines]) -> http response, plus json => decoded
# body when the body parses as JSON.
sub apikeyd_get {
    my ($path, $headers, %opt) = @_;
    die "apikeyd_get: start_apikeyd() was not called\n" unless $D;
    my $r = http_get($path, $headers, port => $D->{port}, %opt);
    $r->{json} = eval { JSON::PP->new->decode($r->{body}) } if defined $r->{body};
    return $r;
}

# apikeyctl_raw(@args) -> (exit code, stdout, stderr). Adds --db
# $TEST_APIKEY_DB (when set) in front of @args; nothing else.
sub apikeyctl_raw {
    my (@args) = @_;
    my $bin = apikeyctl_path();
    die "apikeyctl binary $bin not found: build it (cmake --build build) "
        . "or set TEST_APIKEY_CTL\n" unless -x $bin;
    my @db = defined $ENV{TEST_APIKEY_DB} ? ('--db', $ENV{TEST_APIKEY_DB}) : ();
    return run_cmd([ valgrind_argv('apikeyctl'), $bin, @db, @args ], timeout => 60);
}

# apikeyctl(@args) -> decoded JSON of `apikeyctl --db ... --json @args`.
# Dies with stderr on a non-zero exit or non-JSON output.
sub apikeyctl {
    my (@args) = @_;
    my ($rc, $out, $err) = apikeyctl_raw('--json', @args);
    die "apikeyctl @args failed (exit $rc): $err$out" if $rc != 0;
    return undef if $out !~ /\S/;
    my $json = eval { JSON::PP->new->decode($out) };
    die "apikeyctl @args printed no valid JSON ($@): $out\n" unless defined $json;
    return $json;
}

1;
