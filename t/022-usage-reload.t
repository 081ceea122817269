# Usage capture across nginx reloads: a reload with the same layout during
# a stream of requests records every request exactly once (the segment is
# reused, new workers take new rings); a reload that changes size= makes a
# fresh segment and records from before and after both arrive; `nginx -t`
# and `nginx -s` never touch the live segment.

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use Test::Apikey::Nginx qw(nginx_test_config nginx_binary write_nginx_conf);
use Test::Apikey::Util qw(run_cmd);
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw(time sleep);

# --- helpers --------------------------------------------------------------------

sub metrics {
    my $r = apikeyd_get('/metrics', [], timeout => 3);
    die "GET /metrics: status $r->{status}\n" unless $r->{status} == 200;
    my %m;
    for (split /\n/, $r->{body}) {
        next if /^#/ || !/\S/;
        $m{$1} = $2 if /^(\S+)\s+(\S+)$/;
    }
    return \%m;
}

sub msum {
    my ($m, $name) = @_;
    my $s = 0;
    $s += $m->{$_} for grep { /^\Q$name\E(?:\{|$)/ } keys %$m;
    return $s;
}

sub one { my ($sql, $v) = @_; return psql($sql, $v)->[0][0] }
sub rows_of { one(q{SELECT count(*) FROM api_key_usage WHERE key_id = :'id'}, { id => $_[0] }) }
sub dup_keys {
    return one(q{SELECT count(*) FROM (SELECT 1 FROM api_key_usage
                 GROUP BY node, slot, generation, sequence HAVING count(*) > 1) d});
}

sub get { http_get($_[1] // '/t.txt', ["X-API-Key: $_[0]"], timeout => 5) }

sub burst {
    my ($key, $n, $pace) = @_;
    my %st;
    for (1 .. $n) {
        $st{ get($key)->{status} }++;
        sleep $pace if $pace;
    }
    return \%st;
}

sub fmt_st { my $h = shift; join ' ', map { "$_:$h->{$_}" } sort keys %$h }

# Requests from a forked child, $pace seconds apart: at least $min, and
# at least $after once "$file.go" exists. It writes how many it has sent to
# "$file.n" as it goes, and "status:count ..." to $file at the end.
sub stream_in_child {
    my ($key, $min, $after, $file, $pace) = @_;
    my $pid = fork // die "fork: $!\n";
    if (!$pid) {
        my (%st, $n);
        my $extra = 0;
        eval {
            while (1) {
                $st{ get($key)->{status} }++;
                $n++;
                if (open my $p, '>', "$file.n.tmp") { print {$p} $n; close $p; rename "$file.n.tmp", "$file.n" }
                $extra++ if -e "$file.go";
                last if $n >= $min && $extra >= $after;
                last if $n >= 5000;
                sleep $pace;
            }
            1;
        } or $st{error} = 1;
        my $st = \%st;
        if (open my $fh, '>', "$file.tmp") {
            print {$fh} fmt_st($st);
            close $fh;
            rename "$file.tmp", $file;
        }
        POSIX::_exit(0);
    }
    return $pid;
}

sub progress { open my $fh, '<', "$_[0].n" or return 0; local $/; my $t = <$fh>; return $t || 0 }
sub touch { open my $fh, '>', $_[0] or die "touch $_[0]: $!\n"; close $fh }
sub go { touch("$_[0].go") }
sub total { my $st = shift; my $n = 0; $n += $_ for values %$st; return $n }

sub wait_child {
    my ($pid, $file, $timeout) = @_;
    wait_until(sub { waitpid($pid, POSIX::WNOHANG()) == $pid || !kill(0, $pid) }, $timeout,
               'request stream finished');
    my $t = do { local (@ARGV, $/) = ($file); <> } // '';
    return { map { split /:/ } split ' ', $t };
}

sub worker_pids {
    my $master = nginx_pid();
    my @p = grep { /\d/ } split /\s+/, `ps -o pid= --ppid $master`;
    return grep { (`ps -o args= -p $_ 2>/dev/null` // '') =~ /worker process/ } @p;
}

# every pid of @old has exited or stopped accepting ("is shutting down")
sub old_quiesced {
    my (@old) = @_;
    for my $pid (@old) {
        my $args = `ps -o args= -p $pid 2>/dev/null` // '';
        return 0 if $args =~ /worker process/ && $args !~ /shutting down/;
    }
    return 1;
}

sub count_of { my ($text, $re) = @_; my $n = () = $text =~ /$re/g; return $n }

# The live segment as nginx and apikeyd see it: inode, the static header
# (magic, layout version, record size, slot count, ring capacity, file size,
# creation time), the superseded flag, and every slot's control line (state,
# owner pid, generation). shared/usage_ring.h: 4 KiB header, 192-byte slots.
sub segment_state {
    my $path = $ENV{TEST_NGINX_APIKEY_USAGE};
    my @st = stat $path or return undef;
    open my $fh, '<:raw', $path or return undef;
    sysread($fh, my $head, 4096);
    my $slots = unpack 'V', substr($head, 16, 4);
    my @ctl;
    for my $i (0 .. $slots - 1) {
        sysseek($fh, 4096 + 192 * $i, 0);
        sysread($fh, my $c, 16);
        push @ctl, unpack 'H*', $c;
    }
    close $fh;
    return { inode => $st[1], header => unpack('H*', substr($head, 0, 64)),
             superseded => unpack('V', substr($head, 64, 4)), slots => \@ctl };
}

# --- setup ----------------------------------------------------------------------

start_postgres();
start_apikeyd();

my $org = apikeyctl('org', 'create', 'usage-reload');
my %K = map { ($_ => apikeyctl('key', 'create', '--org', $org->{org_id}, '--name', $_)) }
    qw(reload resize down check);

# /slow/ goes to a one-shot upstream (below) that answers after 2 s: a
# request in flight keeps an old worker alive across a reload.
my $slow_port = $ENV{TEST_NGINX_UPSTREAM_PORT};
sub conf {
    my ($size) = @_;
    return (
        workers     => 2,
        http_config => "apikey_keys $ENV{TEST_NGINX_APIKEY_KEYS};\n"
                     . "apikey_usage $ENV{TEST_NGINX_APIKEY_USAGE} size=$size;",
        config      => "location /t.txt { apikey on; }\n"
                     . "location /slow/ { apikey on; proxy_pass http://127.0.0.1:$slow_port; }",
    );
}

# A forked upstream that answers one request once the file $release exists
# (at most 10 s after it got the request).
sub slow_upstream {
    my ($release) = @_;
    my $srv = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $slow_port,
                                    Listen => 5, ReuseAddr => 1, Proto => 'tcp')
        or die "slow upstream: $!\n";
    my $pid = fork // die "fork: $!\n";
    if (!$pid) {
        if (my $c = $srv->accept) {
            my $req = '';
            while ($req !~ /\r\n\r\n/) { sysread($c, $req, 4096, length $req) or last }
            for (1 .. 1000) { last if -e $release; sleep 0.01 }
            syswrite($c, "HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nslow\n");
            close $c;
        }
        POSIX::_exit(0);
    }
    close $srv;
    return $pid;
}

# One request in a forked child; its status is written to $file.
sub request_in_child {
    my ($key, $path, $file) = @_;
    my $pid = fork // die "fork: $!\n";
    if (!$pid) {
        my $r = get($key, $path);
        if (open my $fh, '>', "$file.tmp") { print {$fh} "$r->{status}:1"; close $fh; rename "$file.tmp", $file }
        POSIX::_exit(0);
    }
    return $pid;
}
my %c4 = conf('4m');
start_nginx(%c4);
like(nginx_error_log(), qr/apikey: created usage segment/, 'nginx created the usage segment');
wait_until(sub { get($K{check}{key})->{status} == 200 }, 5, 'key table');
my $check_sent = 1;
wait_until(sub { rows_of($K{check}{key_id}) >= $check_sent }, 5, 'apikeyd drains');

# --- reload with the same configuration during a stream ---------------------------------

{
    my $id = $K{reload}{key_id};
    my $file = "$ENV{TEST_NGINX_SERVROOT}/stream-reload";
    my @old = worker_pids();
    my $log0 = length nginx_error_log();
    my $child = stream_in_child($K{reload}{key}, 100, 30, $file, 0.004);
    eval { wait_until(sub { progress($file) >= 50 }, 10, '50 requests sent') };
    my $at = progress($file);
    my $t_reload = int(time * 1e6);
    reload_nginx(%c4);
    wait_until(sub { old_quiesced(@old) }, 10, 'old workers stop accepting');
    go($file);
    my $st = wait_child($child, $file, 30);
    my $n = total($st);
    is_deeply($st, { 200 => $n }, "reload during a stream: all $n requests answered 200")
        or diag(fmt_st($st));
    my $log = substr(nginx_error_log(), $log0);
    like($log, qr/apikey: reusing usage segment/, 'same layout: the segment is reused');
    unlike($log, qr/apikey: created usage segment/, 'same layout: no new segment');
    my $ok = eval { wait_until(sub { rows_of($id) >= $n }, 10, "$n rows") };
    ok($ok, "reload: all $n rows arrived") or diag($@, 'rows: ', rows_of($id));
    wait_until(sub { !grep { my $o = $_; grep { $_ == $o } worker_pids() } @old }, 10,
               'old workers gone');
    # no per-worker sentinel is possible (the kernel picks the worker): wait
    # until every ring is empty instead
    my $m;
    wait_until(sub { $m = metrics(); msum($m, 'apikey_ring_depth') == 0 }, 5, 'rings drained');
    is(rows_of($id), $n, "reload: exactly $n rows");
    is(dup_keys(), 0, 'reload: no duplicate idempotency keys');
    is_deeply(psql(q{SELECT count(*) FILTER (WHERE generation < :'t') > 0,
                            count(*) FILTER (WHERE generation > :'t') > 0
                       FROM api_key_usage WHERE key_id = :'id'}, { id => $id, t => $t_reload })->[0],
              [ 't', 't' ], 'reload: records from rings claimed before and after the reload');
    is(msum($m, 'apikey_ring_dropped_total') + $m->{apikey_unslotted_drops_total}, 0,
       'reload: nothing dropped');
    my @owned = grep { /^apikey_ring_depth\{.*state="owned"/ } keys %$m;
    my @retired = grep { /^apikey_ring_depth\{.*state="retired"/ } keys %$m;
    is(scalar @owned, 2, 'reload: two rings owned (the new workers)');
    is(scalar @retired, 0, 'reload: the old workers\' rings were freed');
    diag("reload during a stream: reloaded after $at of $n requests");
}

# --- nginx -t and nginx -s leave the live segment alone ---------------------------------

{
    my $before = segment_state();
    ok($before && $before->{header} =~ /^414b4559524e4731/, 'segment header has the magic "AKEYRNG1"');
    my ($rc, $err) = nginx_test_config(%c4);
    is($rc, 0, 'nginx -t (same configuration) passes') or diag($err);
    my ($rc2, $err2) = nginx_test_config(conf('2m'));
    is($rc2, 0, 'nginx -t with a different size= passes') or diag($err2);
    write_nginx_conf(%c4);
    my $root = $ENV{TEST_NGINX_SERVROOT};
    my ($rc3, undef, $err3) = run_cmd([ nginx_binary(), '-p', "$root/", '-c', "$root/conf/nginx.conf",
                                        '-s', 'reopen' ]);
    is($rc3, 0, 'nginx -s reopen') or diag($err3);
    my $after = segment_state();
    is_deeply($after, $before, 'nginx -t (twice, one with another size=) and nginx -s: '
              . 'same inode, header, superseded flag and ring ownership');
    my $id = $K{check}{key_id};
    is_deeply(burst($K{check}{key}, 10), { 200 => 10 }, 'requests after nginx -t');
    $check_sent += 10;
    my $ok = eval { wait_until(sub { rows_of($id) >= $check_sent }, 5, 'rows after nginx -t') };
    ok($ok, 'records keep flowing after nginx -t') or diag($@);
    is(rows_of($id), $check_sent, 'exactly one row per request after nginx -t');
}

# --- a reload that changes size= during a stream: a fresh segment ----------------------

{
    my $id = $K{resize}{key_id};
    my $file = "$ENV{TEST_NGINX_SERVROOT}/stream-resize";
    my $inode = (stat $ENV{TEST_NGINX_APIKEY_USAGE})[1];
    my $log0 = length nginx_error_log();
    my $alog0 = length apikeyd_log();
    my $up = slow_upstream("$file.release");
    my $slow = request_in_child($K{resize}{key}, '/slow/x', "$file-slow");
    my $child = stream_in_child($K{resize}{key}, 100, 30, $file, 0.004);
    eval { wait_until(sub { progress($file) >= 50 }, 10, '50 requests sent') };
    my $at = progress($file);
    my @old = worker_pids();
    my $t_reload = int(time * 1e6);
    my %c2 = conf('2m');
    reload_nginx(%c2);
    wait_until(sub { old_quiesced(@old) }, 10, 'old workers stop accepting');
    go($file);

    # an old worker still serves /slow/: apikeyd has both segments mapped
    my $both = eval { wait_until(sub { substr(apikeyd_log(), $alog0) =~ /draining usage segment/ }, 3,
                                 'new segment attached') };
    my $old_alive = grep { my $o = $_; grep { $_ == $o } worker_pids() } @old;
    ok(defined $both && $old_alive, 'size change: apikeyd drains the new segment while an old worker still runs');
    my $body = apikeyd_get('/metrics')->{body} // '';
    my %seen;
    my @dups = grep { $seen{$_}++ == 1 } map { /^(\S+)\s/ ? $1 : () } grep { !/^#/ } split /\n/, $body;
    is_deeply(\@dups, [], '/metrics has no duplicate series while two segments are mapped')
        or diag('duplicate series: ' . join(' ', @dups[0 .. ($#dups > 5 ? 5 : $#dups)]));

    touch("$file.release");
    my $st = wait_child($child, $file, 30);
    my $n = total($st);
    is_deeply($st, { 200 => $n }, "size change during a stream: all $n requests answered 200")
        or diag(fmt_st($st));
    my $sst = wait_child($slow, "$file-slow", 10);
    waitpid($up, 0);
    is_deeply($sst, { 200 => 1 }, 'the slow request on the old worker finished after the reload');
    $n++;    # it is recorded too, in the replaced segment
    my $log = substr(nginx_error_log(), $log0);
    like($log, qr/apikey: created usage segment/, 'size change: error.log says "created usage segment" again');
    isnt((stat $ENV{TEST_NGINX_APIKEY_USAGE})[1], $inode, 'size change: a new file (new inode)');
    my $ok = eval { wait_until(sub { rows_of($id) >= $n }, 10, "$n rows") };
    ok($ok, "size change: all $n rows arrived") or diag($@, 'rows: ', rows_of($id));
    my $fin = eval { wait_until(sub { substr(apikeyd_log(), $alog0) =~ /finished with replaced usage segment/ },
                                10, 'old segment released') };
    ok(defined $fin, 'apikeyd finished with the replaced segment once its rings were empty');
    my $m;
    wait_until(sub { $m = metrics(); msum($m, 'apikey_ring_depth') == 0 }, 5, 'rings drained');
    is(rows_of($id), $n, "size change: exactly $n rows");
    is(dup_keys(), 0, 'size change: no duplicate idempotency keys');
    is(psql(q{SELECT count(*) FILTER (WHERE generation < :'t'),
                            count(*) FILTER (WHERE generation > :'t'),
                            count(*) FILTER (WHERE generation < :'t' AND endpoint = '/slow/')
                       FROM api_key_usage WHERE key_id = :'id'}, { id => $id, t => $t_reload })->[0]
                  ->[2], 1, 'size change: the slow request, finished on the old segment after the reload, is recorded');
    is_deeply([ map { $_ > 0 ? 1 : 0 } @{ psql(q{SELECT count(*) FILTER (WHERE generation < :'t'),
                            count(*) FILTER (WHERE generation > :'t')
                       FROM api_key_usage WHERE key_id = :'id'}, { id => $id, t => $t_reload })->[0] } ],
              [ 1, 1 ], 'size change: records from rings of both segments');
    is(msum($m, 'apikey_ring_dropped_total') + $m->{apikey_unslotted_drops_total}, 0,
       'size change: nothing dropped');
    diag("size change during a stream: reloaded after $at of @{[ $n - 1 ]} requests (+1 slow request)");
}

# --- a size change while apikeyd is down ---------------------------------------------------
# Records already in the old segment's rings when nginx replaces the file
# must not vanish: capture.md promises rows + counted drops = requests.

{
    my $id = $K{down}{key_id};
    stop_apikeyd();
    my @old = worker_pids();
    my $st1 = burst($K{down}{key}, 30);
    reload_nginx(conf('1m'));
    wait_until(sub { !grep { my $o = $_; grep { $_ == $o } worker_pids() } @old }, 10,
               'old workers gone');
    my $st2 = burst($K{down}{key}, 30);
    is_deeply([ $st1, $st2 ], [ { 200 => 30 }, { 200 => 30 } ],
              'apikeyd down: 30 requests before and 30 after a size-changing reload');
    start_apikeyd();
    get($K{check}{key});
    $check_sent++;
    wait_until(sub { rows_of($K{check}{key_id}) >= $check_sent }, 10, 'sentinel');
    eval { wait_until(sub { rows_of($id) >= 60 }, 3, '60 rows') };
    my $m = metrics();
    my $rows = rows_of($id);
    my $drops = msum($m, 'apikey_ring_dropped_total') + $m->{apikey_unslotted_drops_total};
    diag("size change while apikeyd was down: $rows rows of 60 requests, $drops counted drops");
    is($rows + $drops, 60,
       'size change while apikeyd is down: rows + counted drops = requests (records in the '
       . 'replaced segment are not lost silently)');
}

stop_apikeyd();
stop_nginx();
my @bad = grep { /\[(?:error|alert|crit|emerg)\]|exited on signal/ } split /\n/, nginx_error_log();
ok(!@bad, 'no errors in nginx error.log') or diag(join "\n", @bad);

done_testing();
