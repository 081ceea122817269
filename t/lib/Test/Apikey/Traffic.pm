package Test::Apikey::Traffic;

# Requests with an API key, for the files that count what nginx recorded:
# one request, a burst of them, and streams sent from a forked child while
# the test restarts apikeyd, reloads nginx or kills a worker.

use strict;
use warnings;

use Exporter qw(import);
use POSIX ();
use Time::HiRes qw(sleep);

use Test::Apikey::Util qw(wait_until slurp);
use Test::Apikey::Http qw(http_get);

our @EXPORT_OK = qw(
    get_with_key request_burst format_statuses status_total
    request_stream stream_progress stream_go wait_stream
);

# get_with_key($key [, $path, %opt]) -> http_get($path, ["X-API-Key: $key"],
# timeout => 5, %opt); $path defaults to /t.txt.
sub get_with_key {
    my ($key, $path, %opt) = @_;
    return http_get($path // '/t.txt', ["X-API-Key: $key"], timeout => 5, %opt);
}

# request_burst($key, $n, path => P, pace => S) -> { status => count } of $n
# sequential get_with_key requests, $pace seconds apart.
sub request_burst {
    my ($key, $n, %o) = @_;
    my %st;
    for (1 .. $n) {
        $st{ get_with_key($key, $o{path})->{status} }++;
        sleep $o{pace} if $o{pace};
    }
    return \%st;
}

# format_statuses({ status => count }) -> "200:5 401:1" (sorted; for diag).
sub format_statuses {
    my ($h) = @_;
    return join ' ', map { "$_:$h->{$_}" } sort keys %$h;
}

# status_total({ status => count }) -> the number of requests.
sub status_total {
    my ($h) = @_;
    my $n = 0;
    $n += $_ for values %$h;
    return $n;
}

sub _write_atomic {
    my ($file, $text) = @_;
    open my $fh, '>', "$file.tmp" or return;
    print {$fh} $text;
    close $fh;
    rename "$file.tmp", $file;
}

# request_stream(key => KEY, file => PATH, n => N, after_go => M,
#                pace => S, path => P, long_agents => 1) -> pid of a forked
# child that sends get_with_key requests one after another (with
# long_agents, each with a different 256-byte User-Agent, so that no
# record can refer to the one before for it), $pace seconds apart: N of them,
# or with after_go, at least N and also at least M once "PATH.go" exists
# (stream_go), 5000 at most. As it goes it writes how many it has sent to
# "PATH.n" (stream_progress); at the end "status:count ..." to PATH
# (wait_stream), with "error:1" if a request died.
sub request_stream {
    my (%o) = @_;
    my ($file, $n_min, $after) = ($o{file}, $o{n} // 1, $o{after_go} // 0);
    die "request_stream: file => PATH is required\n" unless defined $file;
    my $pid = fork // die "fork: $!\n";
    return $pid if $pid;
    my (%st, $n, $extra);
    eval {
        while (1) {
            my @agent = $o{long_agents}
                ? ('User-Agent: ' . sprintf('%06d-%05d', $$ % 1000000, ($n // 0) + 1) . 'a' x 243) : ();
            $st{ http_get($o{path} // '/t.txt', [ "X-API-Key: $o{key}", @agent ], timeout => 5)->{status} }++;
            _write_atomic("$file.n", ++$n);
            $extra++ if $o{after_go} && -e "$file.go";
            last if $n >= $n_min && ($extra // 0) >= $after;
            last if $n >= 5000;
            sleep $o{pace} if $o{pace};
        }
        1;
    } or $st{error} = 1;
    _write_atomic($file, format_statuses(\%st));
    POSIX::_exit(0);
}

# stream_progress($file) -> how many requests the stream has sent so far.
sub stream_progress {
    my ($file) = @_;
    return slurp("$file.n") || 0;
}

# stream_go($file): from now on the stream counts its after_go requests.
sub stream_go {
    my ($file) = @_;
    open my $fh, '>', "$file.go" or die "create $file.go: $!\n";
    close $fh;
}

# wait_stream($pid, $file, $timeout_s) -> { status => count } once the
# child has exited (dies like wait_until when it does not within $timeout_s).
sub wait_stream {
    my ($pid, $file, $timeout) = @_;
    wait_until(sub { waitpid($pid, POSIX::WNOHANG()) == $pid || !kill(0, $pid) }, $timeout,
               'request stream finished');
    my $t = slurp($file) // '';
    return { map { split /:/ } split ' ', $t };
}

1;
