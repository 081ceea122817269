# apikeyd's HTTP server against hostile local clients (docs/apikeyd.md,
# "HTTP"): bodies refused from the head alone; 200 slow-header connections
# plus 32 clients streaming large bodies while /healthz is probed (p99 <=
# 50 ms, RSS growth < 10 MB, analytics answers unchanged); slow heads cut
# at the 5 s header timeout with a 408; the connection cap; a full
# analytics queue answering 503 + Retry-After while /healthz stays fast.
# Not for valgrind: its figures are speeds.

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use Errno qw(EAGAIN EWOULDBLOCK EINTR);
use IO::Select;
use IO::Socket::INET;
use JSON::PP ();
use POSIX ();
use Time::HiRes qw(time sleep);

my $SLOW_CLIENTS = 200;
my $BODY_CLIENTS = 32;
my $STORM_SECONDS = 8;       # longer than the header timeout
my $HEADER_TIMEOUT = 5;      # FrontLimits::header_timeout
my $MAX_CONNECTIONS = 512;   # FrontLimits::max_connections
my $API_WORKERS = 4;         # FrontLimits::slow_workers
my $API_QUEUE = 128;         # FrontLimits::slow_queue

sub rss_kb {
    my $s = slurp('/proc/' . Test::Apikey::Daemon::apikeyd_pid() . '/status') // return 0;
    return $s =~ /^VmRSS:\s+(\d+)/m ? $1 : 0;
}

sub connect_api {
    return IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $ENV{TEST_APIKEY_API_PORT},
                                 Proto => 'tcp', Timeout => 5);
}

# What the server sent until EOF or $limit seconds (nothing on a reset).
sub read_all {
    my ($sock, $limit) = @_;
    my ($data, $end, $sel) = ('', time + $limit, IO::Select->new($sock));
    while ((my $left = $end - time) > 0) {
        last unless $sel->can_read($left);
        my $n = sysread($sock, my $buf, 65536);
        last unless $n;
        $data .= $buf;
    }
    return $data;
}

sub status_of { return $_[0] =~ m{^HTTP/1\.1 (\d{3}) } ? $1 : 0 }

# The status of the last answer in $bytes (0: none).
sub last_status {
    my @s = $_[0] =~ m{(?:^|\n)HTTP/1\.1 (\d{3}) }g;
    return @s ? $s[-1] : 0;
}

# --- setup: an org, a usage:read key, two months of daily rollups -------------------

start_postgres();
my $org = apikeyctl('org', 'create', 'http-limits');
my $k = apikeyctl('key', 'create', '--org', $org->{org_id}, '--name', 'traffic');
my $reader = apikeyctl('key', 'create', '--org', $org->{org_id}, '--name', 'reader',
                       '--scopes', 'usage:read');
psql(q{
    INSERT INTO api_key_usage_daily (org_id, key_id, bucket, endpoint, method, requests,
                                     status_2xx, status_3xx, status_4xx, status_5xx, status_other,
                                     response_time_ms_sum, latency_hist)
    SELECT :'org', :'key', timestamptz '2024-01-01 00:00:00+00' + d * interval '1 day',
           '/seed/' || e, 'GET', 10 + d, 7 + d, 0, 2, 1, 0, 55.5, '[40:42]={3,5,2}'
      FROM generate_series(0, 59) d, generate_series(1, 5) e;
}, { org => $org->{org_id}, key => $k->{key_id} });
start_apikeyd();

my @auth = ("Authorization: Bearer $reader->{key}");
my $key_path = "/api/orgs/$org->{org_id}/api-keys/$k->{key_id}/usage"
             . '?from=2024-01-01&to=2024-03-01&interval=day&top=5';
my $org_path = "/api/orgs/$org->{org_id}/api-keys/usage";
my $json = JSON::PP->new->canonical;
# The answer without complete_until (the time of the answer).
sub analytics {
    my ($path) = @_;
    my $r = apikeyd_get($path, \@auth, timeout => 10);
    return "status $r->{status}" unless $r->{status} == 200 && $r->{json};
    delete $r->{json}{complete_until};
    return $json->encode($r->{json});
}
wait_until(sub { analytics($key_path) =~ /^\{/ }, 10, 'the reader key is published');
my %before = (key => analytics($key_path), org => analytics($org_path));
like($before{key}, qr/"requests":/, 'per-key usage before the storm: a series with requests');
like($before{org}, qr/"name":"reader"/, 'org listing before the storm: both keys');

# --- bodies and heads refused from the head alone ------------------------------------

{
    my $h = "Host: x\r\nConnection: close\r\n";
    my @cases = (
        [ 'declared 1 GiB body on the per-key usage GET', "GET $key_path HTTP/1.1\r\n$h"
          . "Authorization: Bearer $reader->{key}\r\nContent-Length: 1073741824\r\n\r\n" . ('x' x 1000),
          413, 'request body too large' ],
        [ '2 KiB body on the org listing', "GET $org_path HTTP/1.1\r\n${h}Content-Length: 2048\r\n\r\n",
          413, 'request body too large' ],
        [ 'body on the dashboard', "GET / HTTP/1.1\r\n${h}Content-Length: 5000\r\n\r\n", 413,
          'request body too large' ],
        [ 'POST with a large body to /healthz', "POST /healthz HTTP/1.1\r\n${h}Content-Length: 100000\r\n\r\n",
          413, 'request body too large' ],
        [ 'chunked body', "POST $org_path HTTP/1.1\r\n${h}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
          411, 'request body needs Content-Length' ],
        [ 'chunked and a length', "GET $org_path HTTP/1.1\r\n${h}Transfer-Encoding: chunked\r\n"
          . "Content-Length: 5\r\n\r\nhello", 400, 'bad request' ],
        [ 'two different lengths', "GET /healthz HTTP/1.1\r\n${h}Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
          400, 'bad request' ],
        [ 'malformed length', "GET /healthz HTTP/1.1\r\n${h}Content-Length: 1e3\r\n\r\n", 400, 'bad request' ],
        [ '9 KB head', "GET /healthz HTTP/1.1\r\n${h}X-Big: " . ('a' x 9000) . "\r\n\r\n", 431,
          'request header too large' ],
    );
    for my $c (@cases) {
        my ($name, $raw, $status, $error) = @$c;
        my $r = http_request($raw, port => $ENV{TEST_APIKEY_API_PORT}, timeout => 5);
        is($r->{status}, $status, "$name: $status") or diag($r->{error} // $r->{raw});
        is($r->{body}, qq({"error":"$error"}), "$name: JSON error");
        is($r->{headers}{connection}, 'close', "$name: connection closed");
    }
    my $r = http_request("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 4\r\n\r\nabcd",
                         port => $ENV{TEST_APIKEY_API_PORT}, timeout => 5);
    is($r->{status}, 200, 'a 4-byte body on GET /healthz is read and ignored');
    my $m = apikeyd_metrics();
    is($m->{'apikey_http_refused_total{status="413"}'}, 4, 'apikey_http_refused_total{status="413"} counts them');
    is($m->{'apikey_http_refused_total{status="411"}'}, 1, '... and {status="411"}');
    is($m->{'apikey_http_refused_total{status="431"}'}, 1, '... and {status="431"}');
}

# --- the storm ------------------------------------------------------------------------

my $root = $ENV{TEST_NGINX_SERVROOT};
my $stop = "$root/storm-stop";
my $port = $ENV{TEST_APIKEY_API_PORT};

# 200 connections that send a partial head and then one byte per 0.5 s;
# each one the server closes is replaced. Writes "OPENED CLOSED C408
# MIN_LIFE MAX_LIFE" (lifetimes of the 408 ones, connect to EOF).
sub slow_heads {
    my ($out) = @_;
    local $SIG{PIPE} = 'IGNORE';
    my (%c, @life);
    my ($opened, $closed, $c408) = (0, 0, 0);
    my $open = sub {
        my $s = connect_api() or return;
        $s->blocking(0);
        syswrite($s, "GET /healthz HTTP/1.1\r\nHost: slow\r\n");
        $c{ fileno $s } = { sock => $s, t0 => time, last => time, buf => '' };
        $opened++;
    };
    $open->() for 1 .. $SLOW_CLIENTS;
    my $end = time + 3 * $STORM_SECONDS;
    while (!-e $stop && time < $end) {
        for my $e (values %c) {
            next if time - $e->{last} < 0.5;
            syswrite($e->{sock}, 'X');
            $e->{last} = time;
        }
        my @r = IO::Select->new(map { $_->{sock} } values %c)->can_read(0.05);
        for my $s (@r) {
            my $e = $c{ fileno $s } // next;
            my $n = sysread($s, my $buf, 4096);
            next if !defined $n && ($! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR);
            if ($n) { $e->{buf} .= $buf; next }
            $closed++;
            if (status_of($e->{buf}) == 408) {
                $c408++;
                push @life, time - $e->{t0};
            }
            delete $c{ fileno $s };
            close $s;
            $open->();
        }
    }
    @life = sort { $a <=> $b } @life;
    spew($out, sprintf "%d %d %d %.3f %.3f\n", $opened, $closed, $c408, $life[0] // 0, $life[-1] // 0);
}

# 32 connections streaming bodies as fast as the socket takes them: a
# declared 1 GiB Content-Length, a chunked body, or bytes with no length
# at all (which the server reads as a request without a body, 404, and
# then as a head that never ends, 431); each is reconnected once the
# server answers and closes. Writes "MB_SENT LAST_STATUS:COUNT ...".
sub body_floods {
    my ($out) = @_;
    local $SIG{PIPE} = 'IGNORE';
    my $chunk = 'x' x 65536;
    my (%c, %status, $sent);
    my $open = sub {
        my ($i) = @_;
        my $s = connect_api() or return;
        $s->blocking(0);
        my $head = $i % 3 == 0 ? "GET $key_path HTTP/1.1\r\nHost: big\r\nContent-Length: 1073741824\r\n\r\n"
                 : $i % 3 == 1 ? "POST $org_path HTTP/1.1\r\nHost: big\r\nTransfer-Encoding: chunked\r\n\r\n"
                 :               "POST $org_path HTTP/1.1\r\nHost: big\r\n\r\n";
        syswrite($s, $head);
        $c{ fileno $s } = { sock => $s, i => $i, buf => '' };
    };
    $open->($_) for 1 .. $BODY_CLIENTS;
    my $end = time + 3 * $STORM_SECONDS;
    while (!-e $stop && time < $end) {
        my $sel = IO::Select->new(map { $_->{sock} } values %c);
        my ($r, $w) = IO::Select->select($sel, $sel, undef, 0.05);
        my %done;
        for my $s (@{ $w || [] }) {
            my $n = syswrite($s, $chunk);
            if (defined $n) { $sent += $n; next }
            $done{ fileno $s } = 1 unless $! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR;
        }
        for my $s (@{ $r || [] }) {
            my $e = $c{ fileno $s } // next;
            my $n = sysread($s, my $buf, 65536);
            if ($n) { $e->{buf} .= $buf; next }
            $done{ fileno $s } = 1 unless !defined $n && ($! == EAGAIN || $! == EWOULDBLOCK);
        }
        for my $fd (keys %done) {
            my $e = delete $c{$fd};
            $status{ last_status($e->{buf}) || 'reset' }++;
            close $e->{sock};
            $open->($e->{i});
        }
    }
    spew($out, sprintf "%.1f %s\n", ($sent // 0) / 1e6,
         join ' ', map { "$_:$status{$_}" } sort keys %status);
}

sub in_child {
    my ($code, @args) = @_;
    my $pid = fork // die "fork: $!\n";
    return $pid if $pid;
    eval { $code->(@args); 1 } or print STDERR "child: $@";
    POSIX::_exit(0);
}

# warm the paths the storm takes, then the reference figures
apikeyd_get('/healthz') for 1 .. 20;
my $rss0 = rss_kb();
my $m0 = apikeyd_metrics();

my @kids = (in_child(\&slow_heads, "$root/slow.out"), in_child(\&body_floods, "$root/body.out"));
wait_until(sub { apikeyd_metrics()->{apikey_http_connections} >= $SLOW_CLIENTS + $BODY_CLIENTS / 2 },
           10, 'the storm connected');
my $peak_conns = apikeyd_metrics()->{apikey_http_connections};

# one slow head of our own, timed from connect
my $timed = connect_api() or die "connect: $!\n";
my $t_timed = time;
syswrite($timed, "GET /healthz HTTP/1.1\r\nHost: timed\r\n");
my ($timed_buf, $timed_life) = ('', undef);

my (@health, @bad_health, @answers, @rss);
my $t_start = time;
my $next_analytics = $t_start;
my $next_rss = $t_start;
while (time - $t_start < $STORM_SECONDS) {
    my $h = apikeyd_get('/healthz', [], timeout => 5);
    push @health, $h->{elapsed};
    push @bad_health, "$h->{status} " . ($h->{error} // '') unless $h->{status} == 200;
    if (time >= $next_analytics) {
        push @answers, [ key => analytics($key_path) ], [ org => analytics($org_path) ];
        $next_analytics = time + 1;
    }
    if (time >= $next_rss) {
        push @rss, rss_kb();
        $next_rss = time + 0.5;
    }
    if (!defined $timed_life && IO::Select->new($timed)->can_read(0)) {
        my $n = sysread($timed, my $buf, 4096);
        if ($n) { $timed_buf .= $buf } else { $timed_life = time - $t_timed }
    }
    sleep 0.02;
}
push @rss, rss_kb();
if (!defined $timed_life) {
    $timed_buf .= read_all($timed, 2);
    $timed_life = time - $t_timed;
}
spew($stop, '');
waitpid($_, 0) for @kids;
my $t_storm = time - $t_start;

my ($opened, $closed, $c408, $min_life, $max_life) = split ' ', slurp("$root/slow.out") // '0 0 0 0 0';
my ($mb_sent, @body_status) = split ' ', slurp("$root/body.out") // '0';
my %body_status = map { split /:/ } @body_status;

my $p99 = percentile(99, @health);
is_deeply(\@bad_health, [], sprintf '/healthz answered 200 throughout the storm (%d probes)', scalar @health);
ok(@health >= 50, 'the probe ran through the storm') or diag(scalar @health . ' probes');
ok($p99 <= 0.050, sprintf '/healthz p99 %.1f ms <= 50 ms under %d slow heads and %d body floods',
   1000 * $p99, $SLOW_CLIENTS, $BODY_CLIENTS);
my $rss_max = (sort { $b <=> $a } @rss)[0];
ok($rss_max - $rss0 < 10 * 1024, sprintf 'apikeyd RSS growth %.1f MB < 10 MB (%.1f MB before, %.1f MB max)',
   ($rss_max - $rss0) / 1024, $rss0 / 1024, $rss_max / 1024);
ok(@answers >= 4, sprintf '%d analytics answers taken during the storm', scalar @answers);
is_deeply([ grep { $_->[1] ne $before{ $_->[0] } } @answers ], [],
          'every analytics answer during the storm equals the one before it');
is(status_of($timed_buf), 408, 'a slow head gets 408 at the header timeout');
ok($timed_life >= $HEADER_TIMEOUT - 0.1 && $timed_life < $HEADER_TIMEOUT + 1.5,
   sprintf '... and is closed %.2f s after connecting (timeout %d s)', $timed_life, $HEADER_TIMEOUT);
ok($c408 >= $SLOW_CLIENTS, "every first-round slow head was closed with a 408 ($c408 of $closed closed)");
ok($min_life >= $HEADER_TIMEOUT - 0.1 && $max_life < $HEADER_TIMEOUT + 1.5,
   sprintf '... each %.2f..%.2f s after connecting', $min_life, $max_life);
ok(($body_status{413} // 0) + ($body_status{411} // 0) + ($body_status{431} // 0) >= $BODY_CLIENTS,
   'the body floods were refused (' . join(', ', @body_status) . ')');
is_deeply([ grep { $_ ne 'reset' && !/^4(?:04|11|13|31)$/ } sort keys %body_status ], [],
          '... and never answered otherwise (last answer 404, 411, 413 or 431)');

my $m = apikeyd_metrics();
ok($m->{'apikey_http_refused_total{status="408"}'} - $m0->{'apikey_http_refused_total{status="408"}'} >= $c408,
   'apikey_http_refused_total{status="408"} counts the slow heads');
ok_eventually(sub { apikeyd_metrics()->{apikey_http_connections} <= 1 }, 5,
              'every storm connection closed after the storm');
diag(sprintf 'storm %.1f s: /healthz %d probes p50 %.1f ms p95 %.1f ms p99 %.1f ms max %.1f ms; '
             . '%d connections at the start; slow heads: %d opened, %d closed (%d with 408, %.2f..%.2f s); '
             . 'bodies: %s MB sent, answers %s; RSS %.1f MB before, %.1f MB max, %.1f MB after',
             $t_storm, scalar @health, map({ 1000 * percentile($_, @health) } 50, 95, 99, 100),
             $peak_conns, $opened, $closed, $c408, $min_life, $max_life, $mb_sent, join(' ', @body_status),
             $rss0 / 1024, $rss_max / 1024, rss_kb() / 1024);

# --- the connection cap --------------------------------------------------------------

{
    my $refused0 = apikeyd_metrics()->{apikey_http_connections_refused_total};
    my @held = grep { defined } map { connect_api() } 1 .. $MAX_CONNECTIONS + 8;
    my @full;
    my $sel = IO::Select->new(@held);
    my $end = time + 3;
    while (@full < 8 && time < $end) {
        for my $s ($sel->can_read(0.2)) {
            my $data = read_all($s, 1);
            push @full, $data if $data =~ /too many connections/;
            $sel->remove($s);
        }
    }
    is(scalar @full, 8, 'the 8 connections over the cap of 512 are refused at once');
    like($full[0] // '', qr{^HTTP/1\.1 503 .*\r\nRetry-After: 1\r\n}s, '... with 503 and Retry-After');
    close $_ for @held;
    wait_until(sub { apikeyd_get('/healthz', [], timeout => 2)->{status} == 200 }, 5, 'healthz');
    is(apikeyd_metrics()->{apikey_http_connections_refused_total} - $refused0, 8,
       'apikey_http_connections_refused_total counts them');
}

# --- a full analytics queue: 503 + Retry-After, /healthz unaffected ------------------

{
    # Every analytics query waits on this lock; /healthz reads no table.
    my $locker = fork // die "fork: $!\n";
    if (!$locker) {
        $ENV{PGAPPNAME} = 't045-locker';
        exec(Test::Apikey::Postgres::pg_bindir() . '/psql', '-X', '-q', '-d', $ENV{TEST_APIKEY_DB}, '-c',
             'BEGIN; LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60); COMMIT;')
            or POSIX::_exit(1);
    }
    wait_until(sub { psql_one(q{SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
                                 WHERE c.relname = 'api_keys' AND l.mode = 'AccessExclusiveLock'
                                   AND l.granted}) == 1 }, 10, 'api_keys locked');
    my $n = $API_WORKERS + $API_QUEUE + 18;
    my @socks = map { connect_api() // die "connect: $!\n" } 1 .. $n;
    syswrite($_, "GET $org_path HTTP/1.1\r\nHost: q\r\nConnection: close\r\n$auth[0]\r\n\r\n") for @socks;
    # the overflow is answered at once; the others wait for the lock
    my (%answer, @busy);
    my $sel = IO::Select->new(@socks);
    # until the overflow has all been answered (the loop may take a while
    # to read 150 requests on a loaded machine), and a moment more
    my $overflow = $n - $API_WORKERS - $API_QUEUE;
    my $end = time + 10 * timeout_factor();
    my $settle;
    while (time < $end && (!$settle || time < $settle)) {
        for my $s ($sel->can_read(0.2)) {
            $answer{ fileno $s } = read_all($s, 1);
            push @busy, $answer{ fileno $s };
            $sel->remove($s);
        }
        $settle //= time + 0.5 if @busy >= $overflow;
    }
    my $queued = apikeyd_metrics()->{apikey_http_api_queued};
    my @h = map { apikeyd_get('/healthz', [], timeout => 5) } 1 .. 10;
    my @slow_h = grep { $_->{status} != 200 || $_->{elapsed} > 0.050 } @h;
    psql(q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 't045-locker'});
    waitpid($locker, 0);
    my @rest = grep { !exists $answer{ fileno $_ } } @socks;
    my %rest_status;
    for my $s (@rest) {
        my $a = read_all($s, 20);
        my $body = $a =~ /\r\n\r\n(.*)\z/s ? $1 : '';
        my $j = eval { JSON::PP->new->decode($body) };
        delete $j->{complete_until} if $j;
        $rest_status{ status_of($a) . ($j && $json->encode($j) eq $before{org} ? ' same' : '') }++;
    }
    close $_ for @socks;

    ok(@busy >= 1 && @busy <= $n - $API_QUEUE,
       sprintf '%d concurrent analytics requests for %d workers and a queue of %d: %d answered at once',
       $n, $API_WORKERS, $API_QUEUE, scalar @busy);
    is_deeply([ grep { !m{^HTTP/1\.1 503 .*\r\nRetry-After: 1\r\n.*\{"error":"busy; retry"\}\z}s } @busy ], [],
              '... each with 503, Retry-After: 1 and {"error":"busy; retry"}');
    # The queue refuses at 128 waiting jobs; a worker thread that was slow
    # to take its first job (a loaded machine) took it after the queue had
    # filled, so the gauge then shows 128 less those late takes. Each
    # request is running (one per worker), waiting or refused.
    is($queued, $n - $API_WORKERS - @busy,
       "apikey_http_api_queued: every request not running nor refused waits ($queued)");
    cmp_ok($queued, '>=', $API_QUEUE - $API_WORKERS, '... and the queue had filled');
    is_deeply([ map { sprintf '%d %.0f ms', $_->{status}, 1000 * $_->{elapsed} } @slow_h ], [],
              '/healthz answered 200 within 50 ms while the queue was full');
    is_deeply(\%rest_status, { '200 same' => $n - @busy },
              'once the lock went, every queued request was answered 200 with the same listing');
}

my @errors = grep { /\[error\]/ } split /\n/, apikeyd_log();
is_deeply(\@errors, [], "apikeyd's log: no error");

stop_apikeyd();
done_testing();
