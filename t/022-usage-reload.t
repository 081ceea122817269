# Usage capture across nginx reloads: a reload with the same layout during
# a stream of requests records every request exactly once (the segment is
# reused, new workers take new rings); a reload that changes size= makes a
# fresh segment and records from before and after both arrive; `nginx -t`
# and `nginx -s` never touch the live segment.

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw(time sleep);

# --- helpers --------------------------------------------------------------------

# every pid of @old has exited or stopped accepting ("is shutting down")
sub old_quiesced {
    my (@old) = @_;
    for my $pid (@old) {
        my $args = process_title($pid);
        return 0 if $args =~ /worker process/ && $args !~ /shutting down/;
    }
    return 1;
}

# A point on the clock of ring generations between rings claimed before and
# after it: a claim stamps nginx's cached time in whole milliseconds (taken
# when the master wakes up for the HUP, so possibly in the same millisecond),
# hence the current millisecond less 1 us rather than the time in us.
sub claim_time_now { return int(time * 1e3) * 1000 - 1 }

# The live segment as nginx and apikeyd see it: inode, the static header
# (magic, layout version, record size, slot count, ring capacity, file size,
# creation time), the superseded flag (at +64), and every slot's control line
# (state, owner pid, generation); undef when it cannot be read.
sub segment_state {
    my @st = stat $ENV{TEST_NGINX_APIKEY_USAGE} or return undef;
    return eval {
        my $head = usage_segment_read(0, 68);
        +{ inode => $st[1], header => unpack('H*', substr($head, 0, 64)),
           superseded => unpack('V', substr($head, 64, 4)),
           slots => [ map { unpack 'H*', usage_segment_read(usage_slot_offset($_), 16) }
                          0 .. usage_slot_count() - 1 ] };
    };
}

# --- setup ----------------------------------------------------------------------

start_postgres();
start_apikeyd();

my $org = apikeyctl('org', 'create', 'usage-reload');
my %K = map { ($_ => new_key($org->{org_id}, $_)) }
    qw(reload resize down check);

# /slow/ goes to a one-shot upstream (below) that answers after 2 s: a
# request in flight keeps an old worker alive across a reload.
my $slow_port = $ENV{TEST_NGINX_UPSTREAM_PORT};
sub conf {
    return usage_conf(size => $_[0], workers => 2,
                      config => "location /t.txt { apikey on; }\n"
                              . "location /slow/ { apikey on; proxy_pass http://127.0.0.1:$slow_port; }");
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

my %c4 = conf('4m');
start_nginx(%c4);
like(nginx_error_log(), qr/apikey: created usage segment/, 'nginx created the usage segment');
wait_until(sub { get_with_key($K{check}{key})->{status} == 200 }, 5, 'key table');
my $check_sent = 1;
wait_usage_rows($K{check}{key_id}, $check_sent, 5, 'apikeyd drains');

# --- reload with the same configuration during a stream ---------------------------------

{
    my $id = $K{reload}{key_id};
    my $file = "$ENV{TEST_NGINX_SERVROOT}/stream-reload";
    my @old = nginx_worker_pids();
    my $log0 = length nginx_error_log();
    my $child = request_stream(key => $K{reload}{key}, n => 100, after_go => 30, file => $file, pace => 0.004);
    eval { wait_until(sub { stream_progress($file) >= 50 }, 10, '50 requests sent') };
    my $at = stream_progress($file);
    my $t_reload = claim_time_now();
    reload_nginx(%c4);
    wait_until(sub { old_quiesced(@old) }, 10, 'old workers stop accepting');
    stream_go($file);
    my $st = wait_stream($child, $file, 30);
    my $n = status_total($st);
    is_deeply($st, { 200 => $n }, "reload during a stream: all $n requests answered 200")
        or diag(format_statuses($st));
    my $log = substr(nginx_error_log(), $log0);
    like($log, qr/apikey: reusing usage segment/, 'same layout: the segment is reused');
    unlike($log, qr/apikey: created usage segment/, 'same layout: no new segment');
    my $ok = eval { wait_usage_rows($id, $n, 10) };
    ok($ok, "reload: all $n rows arrived") or diag($@, 'rows: ', usage_rows($id));
    wait_until(sub { !grep { my $o = $_; grep { $_ == $o } nginx_worker_pids() } @old }, 10,
               'old workers gone');
    # no per-worker sentinel is possible (the kernel picks the worker): wait
    # until every ring is empty instead
    my $m;
    wait_until(sub { $m = apikeyd_metrics(); metric_sum($m, 'apikey_ring_depth') == 0 }, 5, 'rings drained');
    is(usage_rows($id), $n, "reload: exactly $n rows");
    is(usage_duplicates(), 0, 'reload: no duplicate idempotency keys');
    is_deeply(psql(q{SELECT count(*) FILTER (WHERE generation < :'t') > 0,
                            count(*) FILTER (WHERE generation > :'t') > 0
                       FROM api_key_usage WHERE key_id = :'id'}, { id => $id, t => $t_reload })->[0],
              [ 't', 't' ], 'reload: records from rings claimed before and after the reload');
    is(metric_sum($m, 'apikey_ring_dropped_total') + $m->{apikey_unslotted_drops_total}, 0,
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
    my ($rc3, $err3) = nginx_signal('reopen');
    is($rc3, 0, 'nginx -s reopen') or diag($err3);
    my $after = segment_state();
    is_deeply($after, $before, 'nginx -t (twice, one with another size=) and nginx -s: '
              . 'same inode, header, superseded flag and ring ownership');
    my $id = $K{check}{key_id};
    is_deeply(request_burst($K{check}{key}, 10), { 200 => 10 }, 'requests after nginx -t');
    $check_sent += 10;
    my $ok = eval { wait_usage_rows($id, $check_sent, 5, 'rows after nginx -t') };
    ok($ok, 'records keep flowing after nginx -t') or diag($@);
    is(usage_rows($id), $check_sent, 'exactly one row per request after nginx -t');
}

# --- a reload that changes size= during a stream: a fresh segment ----------------------

{
    my $id = $K{resize}{key_id};
    my $file = "$ENV{TEST_NGINX_SERVROOT}/stream-resize";
    my $inode = (stat $ENV{TEST_NGINX_APIKEY_USAGE})[1];
    my $log0 = length nginx_error_log();
    my $alog0 = length apikeyd_log();
    my $up = slow_upstream("$file.release");
    my $slow = request_stream(key => $K{resize}{key}, path => '/slow/x', file => "$file-slow");
    my $child = request_stream(key => $K{resize}{key}, n => 100, after_go => 30, file => $file, pace => 0.004);
    eval { wait_until(sub { stream_progress($file) >= 50 }, 10, '50 requests sent') };
    my $at = stream_progress($file);
    my @old = nginx_worker_pids();
    my $t_reload = claim_time_now();
    my %c2 = conf('2m');
    reload_nginx(%c2);
    wait_until(sub { old_quiesced(@old) }, 10, 'old workers stop accepting');
    stream_go($file);

    # an old worker still serves /slow/: apikeyd has both segments mapped
    my $both = eval { wait_until(sub { substr(apikeyd_log(), $alog0) =~ /draining usage segment/ }, 3,
                                 'new segment attached') };
    my $old_alive = grep { my $o = $_; grep { $_ == $o } nginx_worker_pids() } @old;
    ok(defined $both && $old_alive, 'size change: apikeyd drains the new segment while an old worker still runs');
    my $body = apikeyd_get('/metrics')->{body} // '';
    my %seen;
    my @dups = grep { $seen{$_}++ == 1 } map { /^(\S+)\s/ ? $1 : () } grep { !/^#/ } split /\n/, $body;
    is_deeply(\@dups, [], '/metrics has no duplicate series while two segments are mapped')
        or diag('duplicate series: ' . join(' ', @dups[0 .. ($#dups > 5 ? 5 : $#dups)]));

    spew("$file.release", '');
    my $st = wait_stream($child, $file, 30);
    my $n = status_total($st);
    is_deeply($st, { 200 => $n }, "size change during a stream: all $n requests answered 200")
        or diag(format_statuses($st));
    my $sst = wait_stream($slow, "$file-slow", 10);
    waitpid($up, 0);
    is_deeply($sst, { 200 => 1 }, 'the slow request on the old worker finished after the reload');
    $n++;    # it is recorded too, in the replaced segment
    my $log = substr(nginx_error_log(), $log0);
    like($log, qr/apikey: created usage segment/, 'size change: error.log says "created usage segment" again');
    isnt((stat $ENV{TEST_NGINX_APIKEY_USAGE})[1], $inode, 'size change: a new file (new inode)');
    my $ok = eval { wait_usage_rows($id, $n, 10) };
    ok($ok, "size change: all $n rows arrived") or diag($@, 'rows: ', usage_rows($id));
    my $fin = eval { wait_until(sub { substr(apikeyd_log(), $alog0) =~ /finished with replaced usage segment/ },
                                10, 'old segment released') };
    ok(defined $fin, 'apikeyd finished with the replaced segment once its rings were empty');
    my $m;
    wait_until(sub { $m = apikeyd_metrics(); metric_sum($m, 'apikey_ring_depth') == 0 }, 5, 'rings drained');
    is(usage_rows($id), $n, "size change: exactly $n rows");
    is(usage_duplicates(), 0, 'size change: no duplicate idempotency keys');
    is(psql(q{SELECT count(*) FILTER (WHERE generation < :'t'),
                            count(*) FILTER (WHERE generation > :'t'),
                            count(*) FILTER (WHERE generation < :'t' AND endpoint = '/slow/')
                       FROM api_key_usage WHERE key_id = :'id'}, { id => $id, t => $t_reload })->[0]
                  ->[2], 1, 'size change: the slow request, finished on the old segment after the reload, is recorded');
    is_deeply([ map { $_ > 0 ? 1 : 0 } @{ psql(q{SELECT count(*) FILTER (WHERE generation < :'t'),
                            count(*) FILTER (WHERE generation > :'t')
                       FROM api_key_usage WHERE key_id = :'id'}, { id => $id, t => $t_reload })->[0] } ],
              [ 1, 1 ], 'size change: records from rings of both segments');
    is(metric_sum($m, 'apikey_ring_dropped_total') + $m->{apikey_unslotted_drops_total}, 0,
       'size change: nothing dropped');
    diag("size change during a stream: reloaded after $at of @{[ $n - 1 ]} requests (+1 slow request)");
}

# --- a size change while apikeyd is down ---------------------------------------------------
# Records already in the old segment's rings when nginx replaces the file
# must not vanish: capture.md promises rows + counted drops = requests.

{
    my $id = $K{down}{key_id};
    stop_apikeyd();
    my @old = nginx_worker_pids();
    my $st1 = request_burst($K{down}{key}, 30);
    reload_nginx(conf('1m'));
    wait_until(sub { !grep { my $o = $_; grep { $_ == $o } nginx_worker_pids() } @old }, 10,
               'old workers gone');
    my $st2 = request_burst($K{down}{key}, 30);
    is_deeply([ $st1, $st2 ], [ { 200 => 30 }, { 200 => 30 } ],
              'apikeyd down: 30 requests before and 30 after a size-changing reload');
    start_apikeyd();
    get_with_key($K{check}{key});
    $check_sent++;
    wait_usage_rows($K{check}{key_id}, $check_sent, 10, 'sentinel');
    eval { wait_usage_rows($id, 60, 3, '60 rows') };
    my $m = apikeyd_metrics();
    my $rows = usage_rows($id);
    my $drops = metric_sum($m, 'apikey_ring_dropped_total') + $m->{apikey_unslotted_drops_total};
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
