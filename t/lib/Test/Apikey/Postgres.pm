package Test::Apikey::Postgres;

# A private PostgreSQL cluster per .t file: initdb into the server root,
# trust auth, unix socket in that directory plus TCP on 127.0.0.1, fsync off.
# When the suite runs as root, every PostgreSQL binary runs as the `postgres`
# OS user. The cluster is stopped (immediate) and removed at END.
# start_postgres(log_statements => 1) also logs every statement with its
# bound parameters in full, and every connection (for audits of the log).

use strict;
use warnings;

use Exporter qw(import);
use File::Path qw(make_path);

use Test::Apikey::Util qw(
    servroot_path is_root run_cmd free_port process_alive stop_process
    slurp on_cleanup
);
use Test::Apikey::Daemon qw(apikeyctl_path apikeyctl_raw);

our @EXPORT_OK = qw(
    start_postgres stop_postgres restart_postgres psql psql_one postgres_log
    pg_bindir pg_dump_sql psql_at psql_target
);

my $PG;    # { dir, data, port, conninfo, tcp_conninfo, running, log_statements }
my $TARGET;    # psql_target()

# What start_postgres(log_statements => 1) adds to postgresql.conf.
my @LOG_STATEMENTS = (
    "log_statement = 'all'",
    'log_min_duration_statement = 0',
    'log_parameter_max_length = -1',
    'log_parameter_max_length_on_error = -1',
    'log_connections = on',
    "log_line_prefix = '%m [%p] %q%u@%d %a '",
);

sub pg_bindir {
    return $ENV{TEST_APIKEY_PG_BINDIR} if $ENV{TEST_APIKEY_PG_BINDIR};
    my (undef, $out) = eval { run_cmd([ 'pg_config', '--bindir' ]) };
    chomp(my $dir = $out // '');
    return $dir if $dir && -x "$dir/initdb";
    my ($best) = sort { $b <=> $a } map { m{/(\d+)/bin$} ? $1 : () }
        glob('/usr/lib/postgresql/*/bin');
    return "/usr/lib/postgresql/$best/bin" if $best;
    die "PostgreSQL server binaries (initdb, pg_ctl) not found: "
        . "apt-get install postgresql, or set TEST_APIKEY_PG_BINDIR\n";
}

sub _pg_user { return is_root() ? 'postgres' : undef }

# Runs a PostgreSQL server binary (as postgres when root); dies on failure.
sub _pg_run {
    my ($what, @argv) = @_;
    my ($rc, $out, $err) = run_cmd([ pg_bindir() . "/$argv[0]", @argv[1 .. $#argv] ],
        user => _pg_user(), cwd => $PG->{dir}, timeout => 120);
    die "$what failed (exit $rc):\n$out$err" . _log_tail() if $rc != 0;
    return $out;
}

sub _log_tail {
    my $log = slurp("$PG->{dir}/postgres.log") // return '';
    my @l = split /\n/, $log;
    @l = @l[-15 .. -1] if @l > 15;
    return join '', map { "    $_\n" } '--- postgres.log (last lines):', @l;
}

sub _init_cluster {
    my $dir = servroot_path('pg');
    make_path($dir);
    chmod 0755, $dir;
    if (is_root()) {
        my (undef, undef, $uid, $gid) = getpwnam('postgres')
            or die "OS user postgres not found (PostgreSQL refuses to run as root)\n";
        chown $uid, $gid, $dir or die "chown postgres $dir: $!\n";
    }
    my $port = free_port();
    $PG = {
        dir => $dir, data => "$dir/data", port => $port,
        conninfo     => "host=$dir port=$port dbname=postgres user=postgres",
        tcp_conninfo => "host=127.0.0.1 port=$port dbname=postgres user=postgres",
    };
    _pg_run('initdb', 'initdb', '-D', $PG->{data}, '-A', 'trust', '-U', 'postgres',
            '-E', 'UTF8', '--locale=C', '--no-sync');
    my $conf = "$PG->{data}/postgresql.conf";
    open my $fh, '>>', $conf or die "cannot append to $conf: $!\n";
    print {$fh} join("\n", '', '# Test::Apikey',
        "port = $port",
        "listen_addresses = '127.0.0.1'",
        "unix_socket_directories = '$dir'",
        'fsync = off', 'synchronous_commit = off', 'full_page_writes = off',
        "timezone = 'UTC'", "log_timezone = 'UTC'", ''), "\n";
    close $fh;
    on_cleanup('postgres', \&_teardown);
}

sub _append_conf {
    my (@lines) = @_;
    my $conf = "$PG->{data}/postgresql.conf";
    open my $fh, '>>', $conf or die "cannot append to $conf: $!\n";
    print {$fh} join("\n", '', @lines, ''), "\n";
    close $fh;
}

# Statement logging is set in postgresql.conf, so that it holds from the
# first statement on (migrations included) and across restarts. On a running
# cluster it takes effect with a reload.
sub _enable_statement_log {
    return if $PG->{log_statements};
    _append_conf('# Test::Apikey: start_postgres(log_statements => 1)', @LOG_STATEMENTS);
    $PG->{log_statements} = 1;
    _pg_run('pg_ctl reload', 'pg_ctl', '-D', $PG->{data}, 'reload') if $PG->{running};
}

sub _pg_start {
    _pg_run('pg_ctl start', 'pg_ctl', '-D', $PG->{data}, '-l', "$PG->{dir}/postgres.log",
            '-w', '-t', '60', 'start');
    $PG->{running} = 1;
}

sub _migrate {
    return unless -x apikeyctl_path();
    my ($rc, $out, $err) = apikeyctl_raw('migrate');
    die "apikeyctl migrate failed (exit $rc):\n$out$err" if $rc != 0;
}

# start_postgres(%opt) -> { conninfo, tcp_conninfo, port, dir, data }.
# The first call creates the cluster and runs `apikeyctl migrate` (when
# build/apikeyctl exists); later calls start the same cluster again.
# log_statements => 1: log_statement = 'all', log_min_duration_statement = 0,
# bound parameters in full (log_parameter_max_length = -1) and
# log_connections = on; postgres_log() returns that log. Once set, it stays
# set for the rest of the file.
sub start_postgres {
    my (%opt) = @_;
    my $fresh = !$PG;
    _init_cluster() if $fresh;
    _enable_statement_log() if $opt{log_statements};
    _pg_start() unless $PG->{running};
    $ENV{TEST_APIKEY_DB}     = $PG->{conninfo};
    $ENV{TEST_APIKEY_DB_TCP} = $PG->{tcp_conninfo};
    $ENV{TEST_APIKEY_PG_PORT} = $PG->{port};
    _migrate() if $fresh;
    return $PG;
}

# stop_postgres(): fast shutdown; data and port are kept for start_postgres().
sub stop_postgres {
    die "stop_postgres: start_postgres() was not called\n" unless $PG;
    return unless $PG->{running};
    _pg_run('pg_ctl stop', 'pg_ctl', '-D', $PG->{data}, '-m', 'fast', '-w', 'stop');
    $PG->{running} = 0;
}

sub restart_postgres {
    stop_postgres();
    return start_postgres();
}

sub postgres_log { return $PG ? slurp("$PG->{dir}/postgres.log") // '' : '' }

# pg_dump_sql(@args) -> the plain-SQL pg_dump of the database (schema and
# data, every table), with extra pg_dump @args. Runs as the postgres OS user
# when root, like the server binaries; dies with pg_dump's stderr.
sub pg_dump_sql {
    my (@args) = @_;
    die "pg_dump_sql: start_postgres() was not called\n" unless $PG && $PG->{running};
    return _pg_run('pg_dump', 'pg_dump', '--no-password', @args, '-d', $PG->{conninfo});
}

# psql($sql [, {var => value}]) -> [[col, ...], ...] (NULL reads as '').
# Several statements are fine; rows of all of them are returned. Variables
# are psql variables: use them as :'var' (literal) or :"var" (identifier).
sub psql {
    my ($sql, $vars) = @_;
    return psql_at($TARGET, $sql, $vars) if defined $TARGET;
    die "psql: start_postgres() was not called\n" unless $PG && $PG->{running};
    return psql_at($PG->{conninfo}, $sql, $vars);
}

# psql_target($conninfo): from now on psql() and every helper built on it
# query $conninfo instead of the file's cluster (after a failover: the
# promoted standby); psql_target(undef) goes back.
sub psql_target { ($TARGET) = @_ }

# psql_at($conninfo, $sql [, {var => value}]) -> psql()'s rows, from the
# server $conninfo names (a standby, a multi-host conninfo after failover).
sub psql_at {
    my ($conninfo, $sql, $vars) = @_;
    my @v = map { ('-v', "$_=$vars->{$_}") } sort keys %{ $vars || {} };
    my ($rc, $out, $err) = run_cmd(
        [ pg_bindir() . '/psql', '-X', '-A', '-t', '-q', '-F', "\t",
          '-v', 'ON_ERROR_STOP=1', @v, '-d', $conninfo, '-f', '-' ],
        stdin => $sql, timeout => 120);
    die "psql failed (exit $rc): $err  SQL: $sql\n" if $rc != 0;
    return [ map { [ split /\t/, $_, -1 ] } grep { length } split /\n/, $out ];
}

# psql_one($sql [, {var => value}]) -> the first column of the first row
# (undef when there is no row).
sub psql_one {
    my ($sql, $vars) = @_;
    return psql($sql, $vars)->[0][0];
}

sub _postmaster_pid {
    my $t = slurp("$PG->{data}/postmaster.pid") // return undef;
    return $t =~ /^(\d+)/ ? $1 : undef;
}

sub _teardown {
    return unless $PG;
    my $pid = _postmaster_pid();
    if ($pid && process_alive($pid)) {
        eval { _pg_run('pg_ctl stop', 'pg_ctl', '-D', $PG->{data}, '-m', 'immediate',
                       '-w', 'stop'); 1 }
            or stop_process($pid, QUIT => 5, KILL => 5);
    }
    $PG->{running} = 0;
}

1;
