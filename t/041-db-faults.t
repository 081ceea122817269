# PostgreSQL faults under traffic:
#
# (a) every apikeyd connection killed with pg_terminate_backend, several
#     times, during a stream of keyed requests: apikeyd reconnects (the
#     drainer, the key publisher and the API's pool), no partial commit of
#     aggregates is ever visible (the rollups and request_count always
#     agree), and in the end rows = rollups = requests exactly, without
#     duplicates; a key revoked
#     right after the last round is 401 within 2 s.
# (b) PostgreSQL stopped for TEST_APIKEY_PG_OUTAGE_SECONDS (default 20; the
#     reliability issue says 60, shortened to keep CI fast) with traffic
#     throughout: nginx keeps answering, apikeyd spools, and everything
#     arrives once PostgreSQL is back; revocation works again within 2 s.
# (c) the spool full: apikeyd --spool-max-mb 1, PostgreSQL stopped, more
#     records than 1 MiB holds: rows + apikey_records_spool_dropped_total =
#     requests, an error line "spool full" in apikeyd's log.

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use Time::HiRes qw(time sleep);

my $OUTAGE = $ENV{TEST_APIKEY_PG_OUTAGE_SECONDS} || 20;

# --- helpers --------------------------------------------------------------------

# Raw rows, daily and hourly rollup sums and api_keys.request_count of a key,
# read in one statement (one snapshot). The last three come from the
# workers' aggregates, each collection one transaction, so they agree at
# every instant; raw rows are committed apart (records).
sub counts {
    my ($id) = @_;
    return psql(q{SELECT (SELECT count(*) FROM api_key_usage WHERE key_id = :'id'),
                         (SELECT coalesce(sum(requests), 0) FROM api_key_usage_daily WHERE key_id = :'id'),
                         (SELECT coalesce(sum(requests), 0) FROM api_key_usage_hourly WHERE key_id = :'id'),
                         (SELECT request_count FROM api_keys WHERE id = :'id')},
                { id => $id })->[0];
}

# Client sessions other than this psql, by application_name ('' = none).
sub sessions {
    my %s = map { ($_->[0] => $_->[1]) } @{ psql(
        q{SELECT application_name, count(*) FROM pg_stat_activity
           WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() GROUP BY 1}) };
    return \%s;
}

sub terminate_all {
    return psql_one(q{SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                       WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()) t});
}

sub drainer_pids {
    return join ',', map { $_->[0] } @{ psql(
        q{SELECT pid FROM pg_stat_activity WHERE application_name = 'apikeyd' ORDER BY pid}) };
}

sub sessions_text {
    my ($s) = @_;
    return join ', ', map { ($_ eq '' ? '(no name)' : $_) . " $s->{$_}" } sort keys %$s;
}

# Polls (every 5 ms) until the key gets $status; -> seconds since $t0, or
# undef after $max.
sub until_status {
    my ($key, $status, $t0, $max) = @_;
    while (time - $t0 < $max) {
        return time - $t0 if get_with_key($key, '/t.txt', timeout => 2)->{status} == $status;
        sleep 0.005;
    }
    return undef;
}

# The sentinel: once its row is in, every earlier record of the (single)
# worker is in too, and once request_count reaches $want, every aggregate.
# Then rows = $want exactly, no duplicate, rollups and request_count agree.
sub exact {
    my ($tag, $k, $want, $timeout) = @_;
    get_with_key($k->{key});
    $want++;
    my $ok = eval { wait_usage_rows($k->{key_id}, $want, $timeout // 15, 'sentinel row'); 1 };
    ok($ok, "$tag every record arrived") or diag($@, ' rows: ', usage_rows($k->{key_id}), " want $want");
    eval { wait_request_count($k->{key_id}, $want, $timeout // 15) };
    is_deeply(counts($k->{key_id}), [ ($want) x 4 ],
              "$tag raw rows, daily and hourly rollups and request_count = requests ($want)");
    is(usage_duplicates(), 0, "$tag no duplicate (node, slot, generation, sequence)");
}

# --- setup ----------------------------------------------------------------------

start_postgres();
start_apikeyd();

my $org = apikeyctl('org', 'create', 'db-faults');
my %K = map { ($_ => apikeyctl('key', 'create', '--org', $org->{org_id}, '--name', $_)) }
    qw(term revoke outage outage_revoke spool);
my $reader = apikeyctl('key', 'create', '--org', $org->{org_id}, '--name', 'reader',
                       '--scopes', 'usage:read');

start_nginx(workers => 1, http_config => apikey_http_config(usage => '16m'),
            config => 'location /t.txt { apikey on; }');
wait_until(sub { get_with_key($reader->{key})->{status} == 200 }, 5, 'key table');
wait_until(sub { apikeyd_metrics()->{apikey_usage_segment_attached} == 1 }, 5, 'segment attached');
my $root = $ENV{TEST_NGINX_SERVROOT};
my $api_path = "/api/orgs/$org->{org_id}/api-keys/$K{term}{key_id}/usage";
sub api_status { apikeyd_get($api_path, ["Authorization: Bearer $reader->{key}"], timeout => 10)->{status} }

# --- (a) pg_terminate_backend of every apikeyd session, during traffic --------------------

{
    my $k = $K{term};
    my $rounds = 5;
    is(api_status(), 200, '(a) the API answers (its pool now holds a session)');
    my $seen = sessions();
    my $total = 0;
    $total += $_ for values %$seen;
    ok(exists $seen->{apikeyd} && exists $seen->{'apikeyd-api'}
           && exists $seen->{'apikeyd-keys'} && $total >= 3,
       '(a) sessions of the drainer (apikeyd), the API pool (apikeyd-api) and the key publisher')
        or diag(sessions_text($seen));
    diag('(a) sessions before: ' . sessions_text($seen));

    my $m0 = apikeyd_metrics();
    my $file = "$root/stream-a";
    my $child = request_stream(key => $k->{key}, n => 1, after_go => 50, file => $file, pace => 0.002);
    wait_until(sub { stream_progress($file) >= 50 }, 10, 'stream running');

    my (@drainer_back, @publisher_back, @api, $samples, @torn, $killed);
    for my $round (1 .. $rounds) {
        my $m1 = apikeyd_metrics();
        my $old = drainer_pids();
        my $t0 = time;
        $killed += terminate_all();
        # until the drainer has a new session and the publisher resynced,
        # check what is visible: never part of a batch
        my ($d, $p);
        while (time - $t0 < 10 && !(defined $d && defined $p)) {
            my $c = counts($k->{key_id});
            $samples++;
            push @torn, "@$c" unless $c->[1] == $c->[2] && $c->[2] == $c->[3];
            my $now = drainer_pids();
            $d //= time - $t0 if length $now && $now ne $old;
            my $m = eval { apikeyd_metrics() } or next;
            $p //= time - $t0
                if $m->{apikey_key_full_syncs_total} > $m1->{apikey_key_full_syncs_total};
        }
        push @drainer_back, $d // 99;
        push @publisher_back, $p // 99;
        push @api, api_status();
        sleep 0.5;
    }
    my $t_last = time;
    terminate_all();
    my ($rc, undef, $err) = apikeyctl_raw('key', 'revoke', $K{revoke}{key_id});
    my $t_rev = until_status($K{revoke}{key}, 401, $t_last, 10);

    stream_go($file);
    my $st = wait_stream($child, $file, 60);
    my $n = status_total($st);
    is_deeply($st, { 200 => $n }, "(a) all $n requests answered 200 while sessions were killed")
        or diag(format_statuses($st));
    ok(!grep({ $_ > 5 } @drainer_back), "(a) the drainer reconnected after each of $rounds rounds")
        or diag("@drainer_back");
    ok(!grep({ $_ > 5 } @publisher_back), "(a) the key publisher reconnected and resynced after each round")
        or diag("@publisher_back");
    is_deeply(\@api, [ (200) x $rounds ], '(a) the API answers 200 after each round (fresh pool session)');
    is_deeply(\@torn, [], "(a) no partial commit visible in $samples snapshots (daily = hourly "
              . '= request_count)');
    is($rc, 0, '(a) key revoked right after the last round') or diag($err);
    ok(defined $t_rev && $t_rev < 2, '(a) ... and 401 within 2 s: the key publisher is back')
        or diag(defined $t_rev ? sprintf('%.2f s', $t_rev) : 'not within 10 s');
    exact('(a)', $k, $n);
    my $m = apikeyd_metrics();
    is(metric_sum($m, 'apikey_ring_dropped_total') - metric_sum($m0, 'apikey_ring_dropped_total')
       + $m->{apikey_records_spool_dropped_total}, 0, '(a) nothing dropped');
    my $max = sub { (sort { $b <=> $a } @_)[0] };
    diag(sprintf '(a) %d rounds, %d sessions killed; %d requests, %d rows; reconnect (max): drainer '
                 . '%.0f ms, key publisher %.0f ms; revocation after the last round %s; %d snapshots, '
                 . '%d partial; spooled %d, duplicates skipped %d, PostgreSQL errors %d',
                 $rounds, $killed, $n, usage_rows($k->{key_id}), 1000 * $max->(@drainer_back),
                 1000 * $max->(@publisher_back),
                 defined $t_rev ? sprintf('%.0f ms', 1000 * $t_rev) : '> 10 s', $samples, scalar @torn,
                 $m->{apikey_records_spooled_total} - $m0->{apikey_records_spooled_total},
                 $m->{apikey_records_duplicate_total} - $m0->{apikey_records_duplicate_total},
                 $m->{apikey_postgres_errors_total} - $m0->{apikey_postgres_errors_total});
}

# --- (b) PostgreSQL down for a while, traffic throughout ---------------------------------

{
    my $k = $K{outage};
    my $m0 = apikeyd_metrics();
    my $file = "$root/stream-b";
    # at most 5000 requests per stream: about 3000 of them during the outage
    my $pace = $OUTAGE / 3000 > 0.005 ? $OUTAGE / 3000 : 0.005;
    my $child = request_stream(key => $k->{key}, n => 1, after_go => 50, file => $file, pace => $pace);
    wait_until(sub { stream_progress($file) >= 50 }, 10, 'stream running');
    my $t_stop = time;
    stop_postgres();
    my $at_stop = stream_progress($file);
    my (%during, $max_spool, @up_late);
    my $t_end = $t_stop + $OUTAGE;
    while (time < $t_end) {
        my $m = eval { apikeyd_metrics() };
        if ($m) {
            # from 2 s into the outage on, both of apikeyd's connections know
            push @up_late, $m->{apikey_postgres_up} if time - $t_stop > 2;
            $max_spool = $m->{apikey_spool_bytes} if ($m->{apikey_spool_bytes} // 0) > ($max_spool // 0);
        }
        my $r = get_with_key($K{outage_revoke}{key});
        $during{ $r->{status} }++;
        sleep 0.2;
    }
    my $sent_down = stream_progress($file) - $at_stop;
    my $t_start = time;
    start_postgres();
    my $t_up = time;

    # revocation once PostgreSQL is back; meanwhile the spool replays
    my ($rc, undef, $err) = apikeyctl_raw('key', 'revoke', $K{outage_revoke}{key_id});
    my $t_committed = time;
    my ($t_rev, $t_replay);
    while (time - $t_committed < 40 && !(defined $t_rev && defined $t_replay)) {
        $t_rev //= time - $t_committed
            if get_with_key($K{outage_revoke}{key}, '/t.txt', timeout => 2)->{status} == 401;
        my $m = eval { apikeyd_metrics() };
        $t_replay //= time - $t_up if $m && $m->{apikey_spool_bytes} == 0;
        sleep 0.005;
    }
    sleep 1;
    stream_go($file);
    my $st = wait_stream($child, $file, 60);
    my $n = status_total($st);
    is_deeply($st, { 200 => $n }, "(b) all $n requests answered 200 (PostgreSQL down for ${OUTAGE} s)")
        or diag(format_statuses($st));
    is_deeply([ keys %during ], [ 200 ],
              '(b) the key table stays served while PostgreSQL is down (polled every 0.2 s: all 200)')
        or diag(format_statuses(\%during));
    ok(@up_late && !grep({ $_ != 0 } @up_late), '(b) apikey_postgres_up 0 while down')
        or diag("samples: @up_late");
    ok(($max_spool // 0) > 0, '(b) records spooled while down') or diag('max spool bytes: ', $max_spool // 'n/a');
    ok(defined $t_replay, '(b) the spool is replayed once PostgreSQL is back');
    exact('(b)', $k, $n);
    is($rc, 0, '(b) a key revoked right after PostgreSQL is back') or diag($err);
    ok(defined $t_rev && $t_rev < 2, '(b) ... is 401 within 2 s of the commit')
        or diag(defined $t_rev ? sprintf('took %.1f s: the key publisher reconnects on a backoff that '
                                         . 'has grown to %s during the outage', $t_rev, 'up to 30 s')
                               : 'not within 40 s');
    my $m = apikeyd_metrics();
    is(metric_sum($m, 'apikey_ring_dropped_total') - metric_sum($m0, 'apikey_ring_dropped_total')
       + $m->{apikey_records_spool_dropped_total} - $m0->{apikey_records_spool_dropped_total}, 0,
       '(b) nothing dropped');
    diag(sprintf '(b) PostgreSQL down %.1f s (start took %.1f s); %d requests (%d while down), %d rows; '
                 . 'spool peak %d bytes; spool empty %.1f s after PostgreSQL was back; revocation %s after '
                 . 'the commit',
                 $t_start - $t_stop, $t_up - $t_start, $n, $sent_down, usage_rows($k->{key_id}) - 1,
                 $max_spool // 0, $t_replay // -1,
                 defined $t_rev ? sprintf('%.1f s', $t_rev) : '> 40 s');
}

# --- (c) the spool full -------------------------------------------------------------------

{
    my $k = $K{spool};
    restart_apikeyd(args => [ '--spool-max-mb', '1' ]);
    wait_until(sub { apikeyd_metrics()->{apikey_usage_segment_attached} == 1 }, 5, 'segment attached');
    my $alog0 = length apikeyd_log();
    my $m0 = apikeyd_metrics();
    stop_postgres();
    # 1 MiB of ~290-byte records (a different 256-byte user agent each) in
    # the spool is ~3600: send 4500, from three clients at once
    my @s = map { my $f = "$root/stream-c$_";
                  [ request_stream(key => $k->{key}, n => 1500, file => $f, long_agents => 1), $f ] } 1 .. 3;
    my %st;
    for (@s) {
        my $r = wait_stream($_->[0], $_->[1], 120);
        $st{$_} += $r->{$_} for keys %$r;
    }
    my $n = status_total(\%st);
    is_deeply(\%st, { 200 => 4500 }, '(c) 4500 requests answered 200 with PostgreSQL down')
        or diag(format_statuses(\%st));
    my $m;
    my $ok = eval { wait_until(sub { $m = apikeyd_metrics(); $m->{apikey_records_drained_total}
                                     - $m0->{apikey_records_drained_total} >= $n }, 10, 'all drained') };
    ok($ok, '(c) apikeyd drained every record from the rings') or diag($@);
    my $spooled = $m->{apikey_spool_bytes};
    start_postgres();
    my $t = eval { wait_until(sub { apikeyd_metrics()->{apikey_spool_bytes} == 0 }, 30, 'spool replayed') };
    ok(defined $t, '(c) the spool replayed') or diag($@);
    # a sentinel: once it is in, everything before it is
    {
        get_with_key($k->{key});
        my $m2;
        my $settled = eval {
            wait_until(sub {
                $m2 = apikeyd_metrics();
                my $dropped = $m2->{apikey_records_spool_dropped_total};
                usage_rows($k->{key_id}) + $dropped >= $n + 1;
            }, 15, 'rows + drops');
            1;
        };
        my $rows = usage_rows($k->{key_id});
        my $dropped = $m2->{apikey_records_spool_dropped_total};
        my $ring = metric_sum($m2, 'apikey_ring_dropped_total') - metric_sum($m0, 'apikey_ring_dropped_total');
        is($rows + $dropped + $ring, $n + 1,
           '(c) rows + apikey_records_spool_dropped_total (+ ring drops) = requests');
        is($ring, 0, '(c) no ring drops (apikeyd kept draining into the spool)');
        ok($dropped > 0, '(c) apikey_records_spool_dropped_total > 0');
        is(usage_duplicates(), 0, '(c) no duplicate (node, slot, generation, sequence)');
        # the aggregates are not spooled (they wait in the segment): none dropped
        eval { wait_request_count($k->{key_id}, $n + 1, 15) };
        is(key_request_count($k->{key_id}), $n + 1,
           '(c) request_count = requests, those the full spool dropped included');
        my @lines = grep { /spool full/ } split /\n/, substr(apikeyd_log(), $alog0);
        ok(@lines && $lines[0] =~ /\[error\]/, "(c) apikeyd's log: an [error] line 'spool full'")
            or diag(substr(apikeyd_log(), $alog0, 2000));
        diag("(c) first of @{[ scalar @lines ]} such lines: $lines[0]") if @lines;
        diag(sprintf '(c) --spool-max-mb 1: %d requests, spool peak %d bytes, %d rows, %d dropped (spool '
                     . 'full), %d ring drops; replayed in %.1f s',
                     $n, $spooled, $rows - 1, $dropped, $ring, $t // -1);
    }
}

stop_apikeyd();
stop_nginx();
my @bad = grep { /\[(?:alert|crit|emerg)\]|exited on signal/ } split /\n/, nginx_error_log();
is_deeply(\@bad, [], 'nginx error.log: nothing at [alert], [crit], [emerg]');

done_testing();
