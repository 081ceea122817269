# Fault storms on the capture path, with worker_processes 2 and a steady
# stream of keyed requests throughout:
#
# (a) an nginx worker killed with -9, again and again (each time after the
#     master respawned one that owns a ring): the master survives, every
#     answered request is recorded exactly once (or counted as a drop), no
#     torn record is ingested, and the dead workers' rings are retired and
#     reclaimed.
# (b) a reload storm (50 `nginx -s reload` within 30 s): every request is
#     recorded exactly once, nothing at [alert]/[emerg]; then one reload that
#     changes `apikey_usage size=`: a new segment, records from before and
#     after it all arrive.
#
# Every request carries its own User-Agent ("kill1-42"), which is stored
# with its row, so the test checks each request, not only the totals; the
# X-Worker header says which worker answered it.
# Settings: TEST_APIKEY_STORM_KILLS (default 20), TEST_APIKEY_STORM_RELOADS
# (default 50).

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use IO::Handle;
use POSIX ();
use Time::HiRes qw(time sleep);

my $KILLS   = $ENV{TEST_APIKEY_STORM_KILLS}   || 20;
my $RELOADS = $ENV{TEST_APIKEY_STORM_RELOADS} || 50;

# info, not the harness's debug: thousands of requests a second at debug
# level write ~100 MB of error.log and slow nginx down more than the storm.
log_level('info');

# --- helpers --------------------------------------------------------------------

# A forked child that sends GET /t.txt with the key, one after another,
# with "User-Agent: TAG-N", $pace s apart (default 0.5 ms: about as many
# requests as the client can make, leaving some CPU to the rest), until
# "FILE.stop" exists (at most $max). Each answer is appended to FILE as
# "N STATUS WORKER_PID TIME" (the worker from the X-Worker: $pid header).
# -> its pid.
sub tagged_stream {
    my (%o) = @_;
    my $file = $o{file};
    my $pid = fork // die "fork: $!\n";
    return $pid if $pid;
    eval {
        open my $log, '>>', $file or die "open $file: $!\n";
        $log->autoflush(1);
        my $n = 0;
        while (!-e "$file.stop" && $n < ($o{max} // 20000)) {
            $n++;
            my $r = http_get('/t.txt', [ "X-API-Key: $o{key}", "User-Agent: $o{tag}-$n" ],
                             timeout => 5);
            printf {$log} "%d %d %d %.6f\n", $n, $r->{status},
                $r->{headers}{'x-worker'} // 0, time;
            sleep($o{pace} // 0.0005);
        }
        1;
    };
    POSIX::_exit(0);
}

# Stops the streams and waits for them. -> { n => { status, worker, t } }
# keyed by the User-Agent ("TAG-N") of each request.
sub finish_streams {
    my (@s) = @_;    # [pid, file, tag]
    for (@s) { open my $fh, '>', "$_->[1].stop"; close $fh }
    for my $s (@s) {
        wait_until(sub { waitpid($s->[0], POSIX::WNOHANG()) == $s->[0] || !kill(0, $s->[0]) },
                   15, 'request stream finished');
    }
    my %req;
    for my $s (@s) {
        for (split /\n/, slurp($s->[1]) // '') {
            my ($n, $status, $worker, $t) = split ' ';
            $req{"$s->[2]-$n"} = { status => $status, worker => $worker, t => $t };
        }
    }
    return \%req;
}

sub stream_count { my $t = slurp($_[0]) // ''; return $t =~ tr/\n// }

# Workers that are not shutting down (a reload's old ones are).
sub live_workers { grep { process_title($_) !~ /shutting down/ } nginx_worker_pids() }

# pid => slot of every owned ring of the live segment.
sub ring_owners {
    my %o;
    for my $s (0 .. usage_slot_count() - 1) {
        my ($state, $pid) = unpack 'V l<', usage_segment_read(usage_slot_offset($s), 8);
        $o{$pid} = $s if $state == 1 && $pid > 0;
    }
    return \%o;
}

# { owned => n, retired => n, free => n, depth => records waiting }
sub ring_states {
    my ($m) = @_;
    my %c = (owned => 0, retired => 0, free => 0, depth => 0);
    for (grep { /^apikey_ring_depth\{/ } keys %$m) {
        $c{$1}++ if /state="(\w+)"/;
        $c{depth} += $m->{$_};
    }
    return \%c;
}

sub drop_breakdown {
    my ($m0, $m) = @_;
    return join "\n", 'drops by series (before -> after):',
        map { sprintf '    %s %s -> %s', $_, $m0->{$_} // 0, $m->{$_} }
        grep { /^apikey_(?:ring_dropped_total|unslotted_drops_total|records_spool_dropped_total)/
               && ($m->{$_} != ($m0->{$_} // 0)) } sort keys %$m;
}

# The ring counters live in the segment (metrics.md): a replaced segment's
# series vanish once apikeyd lets it go. metrics() remembers the last value
# of every drop series it saw, and drops() sums those.
my %LAST_DROP;

sub metrics {
    my $m = apikeyd_metrics();
    $LAST_DROP{$_} = $m->{$_}
        for grep { /^apikey_(?:ring_dropped_total|unslotted_drops_total|records_spool_dropped_total)/ }
            keys %$m;
    return $m;
}

sub drops {
    my ($m) = @_;
    my $s = 0;
    $s += $m->{$_} for grep { /^apikey_(?:ring_dropped_total|unslotted_drops_total|records_spool_dropped_total)/ }
        keys %$m;
    return $s;
}

# Drops counted since the snapshot $m0, including series gone since.
sub drops_since {
    my ($m0) = @_;
    my $s = 0;
    $s += $LAST_DROP{$_} - ($m0->{$_} // 0) for keys %LAST_DROP;
    return $s;
}

# Waits until apikeyd has everything: every ring empty, nothing spooled and
# no retired ring left; -> the metrics then.
sub wait_drained {
    my ($what) = @_;
    my $m;
    my $ok = eval {
        wait_until(sub {
            $m = metrics();
            my $c = ring_states($m);
            $c->{depth} == 0 && $c->{retired} == 0 && $m->{apikey_spool_bytes} == 0
                && metric_sum($m, 'apikey_agg_pending') == 0;
        }, 15, $what);
        1;
    };
    ok($ok, "$what: every ring drained and reclaimed, every aggregate committed") or diag($@);
    return $m;
}

# user_agent => rows, for the key's rows whose user agent starts with $tag
# (the streams' tags are $tag1, $tag2).
sub rows_by_agent {
    my ($key_id, $tag) = @_;
    my %rows = map { ($_->[0] => $_->[1]) } @{ psql(
        q{SELECT user_agent, count(*) FROM api_key_usage
           WHERE key_id = :'id' AND user_agent LIKE :'like' GROUP BY 1},
        { id => $key_id, like => "$tag%" }) };
    return \%rows;
}

# Rows that could only come from a torn or garbage record: with the user
# agent of this test's requests, anything but what nginx answered them.
sub torn_rows {
    my ($k, $tag, $t0) = @_;
    return psql_one(q{
        SELECT count(*) FROM api_key_usage
         WHERE user_agent LIKE :'like'
           AND (key_id <> :'id' OR org_id <> :'org'
                OR status_code NOT BETWEEN 100 AND 599 OR method = '' OR method <> 'GET'
                OR endpoint <> '/t.txt' OR result <> 'ok' OR user_agent !~ :'re'
                OR bytes_sent <= 0 OR ip_address <> '127.0.0.1'
                OR ts < to_timestamp(:'t0') - interval '1 minute'
                OR ts > now() + interval '1 minute')},
        { like => "$tag%", id => $k->{key_id}, org => $k->{org_id},
          re => "^${tag}[0-9]-[0-9]+\$", t0 => $t0 });
}

# --- setup ----------------------------------------------------------------------

start_postgres();
start_apikeyd();

my $org = apikeyctl('org', 'create', 'fault-storms');
my %K = map { ($_ => new_key($org->{org_id}, $_)) }
    qw(kill reload resize);

sub conf {
    return usage_conf(size => $_[0], workers => 2,
                      config => 'location /t.txt { apikey on; add_header X-Worker $pid always; }');
}
# 16m: 8 rings of 4096 records, about a second of the streams below per
# ring even if apikeyd stalls
start_nginx(conf('16m'));
wait_until(sub { get_with_key($K{kill}{key})->{status} == 200 }, 5, 'key table');
wait_until(sub { scalar(live_workers()) == 2 && keys %{ ring_owners() } == 2 }, 5,
           'both workers own a ring');
# apikeyd maps a new segment within a second (it retries once a second):
# until then the rings only fill up
wait_until(sub { metrics()->{apikey_usage_segment_attached} == 1 }, 5, 'segment attached');
wait_usage_rows($K{kill}{key_id}, 1, 5, 'the first request recorded');
wait_drained('start');
my $root = $ENV{TEST_NGINX_SERVROOT};
my $master = nginx_pid();

# --- (a) kill -9 storm -----------------------------------------------------------------

{
    my $k = $K{kill};
    my $t0 = time;
    my $m0 = metrics();
    my $alog0 = length apikeyd_log();
    my @s = map { [ tagged_stream(key => $k->{key}, tag => "kill$_", file => "$root/kill$_"),
                    "$root/kill$_", "kill$_" ] } 1, 2;
    wait_until(sub { stream_count("$root/kill1") >= 20 && stream_count("$root/kill2") >= 20 }, 10,
               'streams running');

    my (@killed, @respawn, %ring_of);
    my $storm_ok = eval {
        for my $i (1 .. $KILLS) {
            # a victim that owns a ring (claimed at worker start)
            my ($victim, $owners);
            wait_until(sub {
                my @w = live_workers();
                $owners = ring_owners();
                return 0 unless @w == 2 && (grep { defined $owners->{$_} } @w) == 2;
                $victim = $w[ $i % 2 ];
                return 1;
            }, 5, "kill $i: two live workers owning rings");
            $ring_of{$victim} = $owners->{$victim};
            my $at = time;
            kill 'KILL', $victim or die "kill $victim: $!\n";
            push @killed, $victim;
            wait_until(sub {
                my @w = live_workers();
                @w == 2 && !grep { $_ == $victim } @w;
            }, 5, "kill $i: the master respawned a worker");
            push @respawn, time - $at;
            sleep 0.1;    # let the new worker serve a little
        }
        1;
    };
    ok($storm_ok, "(a) $KILLS workers killed with -9, each one respawned") or diag($@);
    my $req = finish_streams(@s);
    my $elapsed = time - $t0;

    ok(process_alive_master(), '(a) the nginx master survived');
    my @w = live_workers();
    is(scalar @w, 2, '(a) two workers after the storm') or diag("workers: @w");
    # (no User-Agent: not one of the tagged requests counted below)
    is(get_with_key($k->{key})->{status}, 200, '(a) nginx still answers 200');

    my $m = wait_drained('(a)');
    my $rows = rows_by_agent($k->{key_id}, 'kill');
    my @answered = grep { $req->{$_}{status} == 200 } keys %$req;
    my @failed   = grep { $req->{$_}{status} == 0 } keys %$req;
    my @odd      = grep { $req->{$_}{status} != 200 && $req->{$_}{status} != 0 } keys %$req;
    is(scalar @odd, 0, '(a) every request answered 200 or cut by a kill (no 5xx, no 401/503)')
        or diag(join ' ', map { "$_:$req->{$_}{status}" } @odd[0 .. ($#odd > 9 ? 9 : $#odd)]);

    # Answered but not recorded: only allowed for the one response a worker
    # had written when it was killed, before its log phase ran (the kill
    # window, a few microseconds): at most one per killed worker.
    my %is_killed = map { ($_ => 1) } @killed;
    my @missing = grep { !$rows->{$_} } @answered;
    my %window;
    my @unexplained = grep { !($is_killed{ $req->{$_}{worker} } && !$window{ $req->{$_}{worker} }++) }
        @missing;
    my $drops = drops_since($m0);
    my @dup = grep { $rows->{$_} > 1 } keys %$rows;
    my @phantom = grep { !exists $req->{$_} } keys %$rows;
    my @cut_recorded = grep { $rows->{$_} } @failed;
    my $nrows = 0;
    $nrows += $_ for values %$rows;
    my %last;    # worker => the last answer it gave
    for (@answered) {
        my $w = $req->{$_}{worker};
        $last{$w} = $_ if !defined $last{$w} || $req->{$_}{t} > $req->{ $last{$w} }{t};
    }
    diag(join "\n", 'answered but not recorded:', map {
        sprintf '    %s from worker %d (%s, %s)', $_, $req->{$_}{worker},
            $is_killed{ $req->{$_}{worker} } ? 'killed' : 'not killed',
            $last{ $req->{$_}{worker} } eq $_ ? 'its last answer' : 'not its last answer'
    } @missing[0 .. ($#missing > 9 ? 9 : $#missing)]) if @missing;

    ok(@unexplained <= $drops, '(a) every answered request is recorded, or counted as a drop '
       . '(or was the one response in flight when its worker was killed)')
        or diag(scalar(@unexplained) . " answered requests missing, $drops counted drops: "
                . join(' ', map { "$_(worker $req->{$_}{worker})" } @unexplained[0 .. ($#unexplained > 9 ? 9 : $#unexplained)]));
    is($drops, 0, '(a) nothing dropped (8 rings for 2 workers: dead ones are reclaimed in time)')
        or diag(drop_breakdown($m0, $m));
    is(scalar @dup, 0, '(a) no request recorded twice') or diag("@dup[0 .. ($#dup > 9 ? 9 : $#dup)]");
    is(usage_duplicates(), 0, '(a) no duplicate (node, slot, generation, sequence)');
    is(scalar @phantom, 0, '(a) every row belongs to a request that was sent') or diag("@phantom");
    is(torn_rows($k, 'kill', $t0), 0,
       '(a) no torn record: every row has status 100..599, method GET, endpoint /t.txt, '
       . 'the test key and org, result ok, a sane time, address and size');
    is($nrows, @answered - @missing + @cut_recorded,
       '(a) rows = answered requests - kill-window misses + cut requests that were logged');
    is(key_request_count($k->{key_id}), psql_one(q{SELECT count(*) FROM api_key_usage WHERE key_id = :'id'},
                                                 { id => $k->{key_id} }),
       '(a) api_keys.request_count = rows');

    # rings: each killed worker's ring retired by apikeyd, then freed
    my $alog = substr(apikeyd_log(), $alog0);
    my @not_retired = grep { $alog !~ /worker $_ of ring \d+ is gone; ring retired/ } @killed;
    is(scalar @not_retired, 0, "(a) apikeyd: 'worker <pid> of ring N is gone; ring retired' "
       . "for each of the $KILLS killed workers") or diag("not retired: @not_retired");
    my $c = ring_states($m);
    ok($c->{owned} <= 2, "(a) at most worker_processes (2) rings owned at the end")
        or diag(explain($c));
    is($c->{retired}, 0, '(a) no retired ring left');
    is_deeply([ sort { $a <=> $b } keys %{ ring_owners() } ], [ sort { $a <=> $b } live_workers() ],
              '(a) the owned rings are exactly those of the live workers');
    my @sig = nginx_error_log() =~ /exited on signal (\d+)/g;
    is_deeply([ grep { $_ != 9 } @sig ], [], '(a) no worker died of anything but our SIGKILL');
    is(scalar @sig, $KILLS, "(a) error.log: $KILLS 'exited on signal 9'");

    @respawn = sort { $a <=> $b } @respawn;
    diag(sprintf '(a) %d kills in %.1f s; %d requests: %d answered 200, %d cut by a kill '
                 . '(%d of those logged anyway); %d rows; %d kill-window misses; %d drops; %d duplicates; '
                 . 'respawn median %.0f ms, max %.0f ms',
                 scalar @killed, $elapsed, scalar keys %$req, scalar @answered, scalar @failed,
                 scalar @cut_recorded, $nrows, scalar @missing, $drops, scalar @dup,
                 1000 * ($respawn[ $#respawn / 2 ] // 0), 1000 * ($respawn[-1] // 0));
}

sub process_alive_master { return kill(0, $master) && nginx_pid() == $master }

# --- (b) reload storm --------------------------------------------------------------------

{
    my $k = $K{reload};
    my $t0 = time;
    my $log0 = length nginx_error_log();
    my $m0 = metrics();
    my $maps0 = segment_mappings($master);
    my $rss0 = rss_kb($master);
    my @s = map { [ tagged_stream(key => $k->{key}, tag => "reload$_", file => "$root/reload$_"),
                    "$root/reload$_", "reload$_" ] } 1, 2;
    wait_until(sub { stream_count("$root/reload1") >= 20 }, 10, 'streams running');

    my $ts = time;
    my @rc;
    for my $i (1 .. $RELOADS) {
        my ($rc, $err) = nginx_signal('reload');
        push @rc, "$i: exit $rc $err" if $rc != 0;
        sleep 0.25;
    }
    my $storm = time - $ts;
    is_deeply(\@rc, [], "(b) $RELOADS x nginx -s reload exit 0");
    ok($storm < 30, sprintf '(b) %d reloads within 30 s (%.1f s)', $RELOADS, $storm);
    # let the last reload settle while the stream goes on
    my $settled = eval {
        wait_until(sub { my @w = nginx_worker_pids(); @w == 2 && live_workers() == 2 }, 15,
                   'old workers gone');
        1;
    };
    ok($settled, '(b) after the storm: two workers, every old one exited') or diag($@);
    sleep 0.3;
    my $req = finish_streams(@s);
    ok(process_alive_master(), '(b) the nginx master survived');

    my $m = wait_drained('(b)');
    my $rows = rows_by_agent($k->{key_id}, 'reload');
    my @answered = grep { $req->{$_}{status} == 200 } keys %$req;
    my @other = grep { $req->{$_}{status} != 200 } keys %$req;
    is(scalar @other, 0, '(b) every request answered 200 during the reload storm')
        or diag(join ' ', map { "$_:$req->{$_}{status}" } @other[0 .. ($#other > 9 ? 9 : $#other)]);
    my @missing = grep { !$rows->{$_} } @answered;
    my @dup = grep { $rows->{$_} > 1 } keys %$rows;
    my @phantom = grep { !exists $req->{$_} } keys %$rows;
    my $drops = drops_since($m0);
    my $nrows = 0;
    $nrows += $_ for values %$rows;
    is(scalar @missing, 0, '(b) every answered request is recorded') or diag("missing: @missing[0 .. ($#missing > 9 ? 9 : $#missing)]");
    is($drops, 0, '(b) nothing dropped');
    is(scalar @dup, 0, '(b) no request recorded twice');
    is(scalar @phantom, 0, '(b) every row belongs to a request that was sent');
    is(usage_duplicates(), 0, '(b) no duplicate (node, slot, generation, sequence)');
    is(torn_rows($k, 'reload', $t0), 0, '(b) every row has valid fields');
    is($nrows + $drops, scalar @answered, '(b) rows + counted drops = requests');
    my $gens = psql_one(q{SELECT count(DISTINCT (slot, generation)) FROM api_key_usage WHERE key_id = :'id'},
                        { id => $k->{key_id} });
    ok($gens > 2, "(b) records came from many worker generations ($gens rings)");

    my $log = substr(nginx_error_log(), $log0);
    my @bad = grep { /\[(?:alert|emerg|crit)\]|exited on signal/ } split /\n/, $log;
    is_deeply(\@bad, [], '(b) error.log: no [alert], [crit] or [emerg] during the storm');
    my $no_ring = () = $log =~ /no free usage ring slot/g;
    is($no_ring, 0, '(b) no worker started without a usage ring');
    my $c = ring_states($m);
    is($c->{owned}, 2, '(b) two rings owned at the end (the live workers)') or diag(explain($c));
    my ($maps, $rss) = (segment_mappings($master), rss_kb($master));
    ok($maps <= $maps0, "(b) the master maps the usage segment no more often after $RELOADS reloads "
       . "($maps0 before, $maps after)");
    diag(sprintf '(b) %d reloads in %.1f s; %d requests answered, %d rows, %d missing, %d drops, '
                 . '%d duplicates; %d ring generations; master RSS %d -> %d kB',
                 $RELOADS, $storm, scalar @answered, $nrows, scalar @missing, $drops, scalar @dup,
                 $gens, $rss0, $rss);
}

# Mappings of the usage segment file in a process (by inode of the path).
sub segment_mappings {
    my ($pid) = @_;
    my $maps = slurp("/proc/$pid/maps") // '';
    return scalar grep { m{\Q$ENV{TEST_NGINX_APIKEY_USAGE}\E} } split /\n/, $maps;
}

sub rss_kb {
    my ($pid) = @_;
    my ($kb) = (slurp("/proc/$pid/status") // '') =~ /^VmRSS:\s+(\d+)/m;
    return $kb // 0;
}

# --- (b2) a reload that changes size= during a stream ---------------------------------------

{
    my $k = $K{resize};
    my $t0 = time;
    my $log0 = length nginx_error_log();
    my $alog0 = length apikeyd_log();
    my $m0 = metrics();
    my $inode = (stat $ENV{TEST_NGINX_APIKEY_USAGE})[1];
    my @s = map { [ tagged_stream(key => $k->{key}, tag => "resize$_", file => "$root/resize$_"),
                    "$root/resize$_", "resize$_" ] } 1, 2;
    wait_until(sub { stream_count("$root/resize1") >= 50 }, 10, 'streams running');
    my $before = stream_count("$root/resize1") + stream_count("$root/resize2");
    reload_nginx(conf('8m'));
    my $log = substr(nginx_error_log(), $log0);
    like($log, qr/apikey: created usage segment/, "(b2) size=8m: error.log 'created usage segment'");
    isnt((stat $ENV{TEST_NGINX_APIKEY_USAGE})[1], $inode, '(b2) a new segment file');
    wait_until(sub { my @w = nginx_worker_pids(); @w == 2 && live_workers() == 2 }, 10, 'old workers gone');
    my $n0 = stream_count("$root/resize1") + stream_count("$root/resize2");
    wait_until(sub { stream_count("$root/resize1") + stream_count("$root/resize2") >= $n0 + 100 }, 10,
               '100 more requests');
    my $req = finish_streams(@s);

    my $fin = eval { wait_until(sub { substr(apikeyd_log(), $alog0) =~ /finished with replaced usage segment/ },
                                10, 'old segment released'); 1 };
    ok($fin, '(b2) apikeyd drained the replaced segment and let it go');
    my $m = wait_drained('(b2)');
    my $rows = rows_by_agent($k->{key_id}, 'resize');
    my @answered = grep { $req->{$_}{status} == 200 } keys %$req;
    is(scalar(@answered), scalar(keys %$req), '(b2) every request answered 200');
    my @missing = grep { !$rows->{$_} } @answered;
    my @dup = grep { $rows->{$_} > 1 } keys %$rows;
    my $drops = drops_since($m0);
    my $nrows = 0;
    $nrows += $_ for values %$rows;
    is(scalar @missing, 0, '(b2) every request from before and after the size change is recorded')
        or diag("missing: @missing[0 .. ($#missing > 9 ? 9 : $#missing)]");
    is(scalar @dup, 0, '(b2) no request recorded twice');
    is(usage_duplicates(), 0, '(b2) no duplicate (node, slot, generation, sequence)');
    is(torn_rows($k, 'resize', $t0), 0, '(b2) every row has valid fields');
    is($nrows + $drops, scalar @answered, '(b2) rows + counted drops = requests');
    my @old_files = glob("$ENV{TEST_NGINX_APIKEY_USAGE}.old.*");
    is_deeply(\@old_files, [], '(b2) the replaced segment file (PATH.old.*) was deleted');
    diag(sprintf '(b2) size change after %d of %d requests: %d rows, %d missing, %d drops',
                 $before, scalar @answered, $nrows, scalar @missing, $drops);
}

stop_apikeyd();
stop_nginx();
my @tmp = glob("$root/*.tmp");
is_deeply(\@tmp, [], 'no *.tmp file left in the server root');

done_testing();
