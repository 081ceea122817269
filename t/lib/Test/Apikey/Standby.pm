package Test::Apikey::Standby;

# A streaming standby of the file's PostgreSQL cluster, for failover tests:
# pg_basebackup -R of the running primary into <servroot>/pg-standby, its
# own port and socket directory, started and streaming; promoted on demand.
# Stopped (immediate) at END like the primary.
#
# Not exported by Test::Apikey: `use Test::Apikey::Standby;` after it.

use strict;
use warnings;

use Exporter qw(import);
use File::Path qw(make_path);

use Test::Apikey::Util qw(
    servroot_path is_root run_cmd free_port wait_until on_cleanup slurp
);
use Test::Apikey::Postgres qw(pg_bindir psql psql_at);

our @EXPORT = qw(start_standby promote_standby stop_standby standby_log);

my $S;    # { dir, data, port, conninfo, tcp_conninfo, running }

sub _run {
    my ($what, @argv) = @_;
    my ($rc, $out, $err) = run_cmd([ pg_bindir() . "/$argv[0]", @argv[1 .. $#argv] ],
        user => (is_root() ? 'postgres' : undef), cwd => $S->{dir}, timeout => 120);
    die "$what failed (exit $rc):\n$out$err" . standby_log() if $rc != 0;
    return $out;
}

# start_standby() -> { conninfo, tcp_conninfo, port, dir, data }: after
# start_postgres(); returns once the primary reports it streaming.
sub start_standby {
    die "start_standby: TEST_APIKEY_DB is not set: call start_postgres() first\n"
        unless $ENV{TEST_APIKEY_DB};
    my $dir = servroot_path('pg-standby');
    make_path($dir);
    chmod 0755, $dir;
    if (is_root()) {
        my (undef, undef, $uid, $gid) = getpwnam('postgres')
            or die "OS user postgres not found\n";
        chown $uid, $gid, $dir or die "chown postgres $dir: $!\n";
    }
    my $port = free_port();
    $S = { dir => $dir, data => "$dir/data", port => $port,
           conninfo     => "host=$dir port=$port dbname=postgres user=postgres",
           tcp_conninfo => "host=127.0.0.1 port=$port dbname=postgres user=postgres" };
    on_cleanup('standby', \&_teardown);
    _run('pg_basebackup', 'pg_basebackup', '-D', $S->{data}, '-R', '-X', 'stream',
         '--no-sync', '-c', 'fast', '-d', $ENV{TEST_APIKEY_DB});
    open my $fh, '>>', "$S->{data}/postgresql.conf" or die "postgresql.conf: $!\n";
    print {$fh} "\n# Test::Apikey::Standby\nport = $port\n",
                "unix_socket_directories = '$dir'\n";
    close $fh;
    _run('pg_ctl start', 'pg_ctl', '-D', $S->{data}, '-l', "$dir/postgres.log",
         '-w', '-t', '60', 'start');
    $S->{running} = 1;
    wait_until(sub {
        (psql(q{SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'})->[0][0]
         // 0) >= 1;
    }, 30, 'the standby streams from the primary');
    return $S;
}

# promote_standby(): pg_ctl promote -w: returns once it accepts writes.
sub promote_standby {
    _run('pg_ctl promote', 'pg_ctl', '-D', $S->{data}, '-w', '-t', '60', 'promote');
    wait_until(sub { psql_at($S->{conninfo}, 'SELECT pg_is_in_recovery()')->[0][0] eq 'f' },
               10, 'the promoted standby out of recovery');
}

# stop_standby(): fast shutdown.
sub stop_standby {
    return unless $S && $S->{running};
    _run('pg_ctl stop', 'pg_ctl', '-D', $S->{data}, '-m', 'fast', '-w', 'stop');
    $S->{running} = 0;
}

sub standby_log {
    my $log = $S ? slurp("$S->{dir}/postgres.log") // '' : '';
    my @l = split /\n/, $log;
    @l = @l[-15 .. -1] if @l > 15;
    return join '', map { "    $_\n" } '--- standby postgres.log (last lines):', @l;
}

sub _teardown {
    return unless $S && $S->{running};
    eval { _run('pg_ctl stop', 'pg_ctl', '-D', $S->{data}, '-m', 'immediate', '-w', 'stop'); 1 };
    $S->{running} = 0;
}

1;
