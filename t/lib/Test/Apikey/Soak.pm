package Test::Apikey::Soak;

# What the long-running memory tests (t/long/) share: a keyed traffic mix
# sent by wrk (Debian's `wrk`, driven by a generated Lua script), with exact
# counts of what was sent and answered; key-table changes (a new key, a
# rebuilt table); memory samples of a process from /proc/PID/status; and
# apikeyd's ingest totals from /metrics.
#
# The traffic mix is a cycle of 100 requests, each GET with an X-API-Key
# header: 90 with three valid keys (200, one usage row each), 2 with a
# revoked key (401, recorded as result "revoked"), 4 with an unknown and 4
# with a malformed key (401, counted on /metrics only). They go to four
# endpoints: /t.txt, /t.json, /index.html and /orders/t.txt.
#
# wrk has no request-count option, and a run stopped by its -d timer leaves
# requests in flight that nginx answers and records but wrk never counts.
# So the Lua script sends exactly its quota of keyed requests (or keyed
# requests until a wall-clock deadline), then only GET /stop (a location
# that returns 204 before the access phase: no key, nothing recorded),
# until every keyed request it sent has been answered. Then it writes its
# counts to a file and stops its thread; start_wrk()'s caller sees the file
# and finish_wrk() interrupts wrk (SIGINT) for its summary. Every number in
# the result is therefore exact: issued = answered = the requests nginx
# served with a key.
#
# Not exported by Test::Apikey: `use Test::Apikey::Soak;` after it.

use strict;
use warnings;

use Exporter qw(import);
use Time::HiRes qw(time);

use Test::Apikey::Util qw(
    servroot_path spew slurp spawn process_alive stop_process wait_until
    make_world_readable_dir on_cleanup
);
use Test::Apikey::Daemon qw(apikeyctl);
use Test::Apikey::Keys qw(make_key key_typo);
use Test::Apikey::Usage qw(apikeyd_metrics metric_sum);
use Test::Apikey::Postgres qw(psql);
use Test::Apikey::Http qw(http_get);

our @EXPORT = qw(
    proc_mapping_rss grow_key_table
    wrk_path soak_nginx_config make_traffic plan_traffic churn_key rebuild_key_table
    expected_kinds start_wrk wrk_finished finish_wrk proc_status proc_fds
    proc_maps format_kib unrecorded ingest_totals wait_ingested rows_by_key
);

# soak_nginx_config(usage => SIZE, keepalive_requests => N) -> the nginx
# side of the mix: http_config and config for start_nginx. nginx closes a
# connection after N requests (default 1000, nginx's own default), so wrk
# reopens it and connection set-up and teardown run too. /stop answers
# before the access phase; /probe checks a key without capture (no row, no
# /metrics counter), for churn_key.
sub soak_nginx_config {
    my (%o) = @_;
    my $keepalive = $o{keepalive_requests} // 1000;
    my $html = $ENV{TEST_NGINX_HTML_DIR};
    my $usage = $o{usage} // '';
    return (
        http_config => "apikey_keys $ENV{TEST_NGINX_APIKEY_KEYS};\n"
            . "apikey_usage $ENV{TEST_NGINX_APIKEY_USAGE}"
            . (length $usage ? " size=$usage" : '') . ";\n"
            . "keepalive_requests $keepalive;\n",
        config => <<"EOF",
location = /stop { return 204; }
location = /probe { apikey on; apikey_usage off; alias $html/t.txt; }
location /orders/ { apikey on; apikey_endpoint "orders"; alias $html/; }
location / { apikey on; }
EOF
    );
}

sub wrk_path {
    my $w = $ENV{TEST_APIKEY_WRK} || '/usr/bin/wrk';
    die "wrk not found at $w: apt-get install wrk (or set TEST_APIKEY_WRK)\n" unless -x $w;
    return $w;
}

my @PATHS = ('/t.txt', '/t.json', '/index.html', '/orders/t.txt');

# make_traffic($org_id) -> { keys => { k1, k2, k3, revoked => apikeyctl's
# key objects }, unknown => KEY, malformed => KEY, cycle => [ [kind, path],
# ... ] (100), plan => path of the Lua plan file }. Creates the keys and
# revokes one; the caller waits for the key table (wait_key_results).
sub make_traffic {
    my ($org) = @_;
    my %k = map { ($_ => apikeyctl('key', 'create', '--org', $org, '--name', "long-$_")) }
        qw(k1 k2 k3 revoked);
    apikeyctl('key', 'revoke', $k{revoked}{key_id});
    my $t = { keys => \%k, unknown => make_key(), malformed => key_typo($k{k1}{key}) };
    my @cycle;
    my $v = 0;
    for my $i (0 .. 99) {
        my $kind = $i % 25 == 3  ? 'unknown'
                 : $i % 25 == 11 ? 'malformed'
                 : $i % 50 == 19 ? 'revoked'
                 :                 'k' . (1 + $v++ % 3);
        push @cycle, [ $kind, $PATHS[ $i % @PATHS ] ];
    }
    $t->{cycle} = \@cycle;
    my %key_of = ((map { ($_ => $k{$_}{key}) } keys %k),
                  unknown => $t->{unknown}, malformed => $t->{malformed});
    my $files = plan_traffic([ map { [ @$_, $key_of{ $_->[0] } ] } @cycle ]);
    return { %$t, %$files };
}

# plan_traffic([ [kind, path, key, method], ... ]) -> { cycle => [ [kind,
# path], ... ], plan, script }: the files start_wrk sends a cycle of
# requests from (method default GET), for a traffic shape of the caller's
# own; expected_kinds() counts its kinds.
sub plan_traffic {
    my ($requests) = @_;
    my $dir = make_world_readable_dir(servroot_path('wrk'));
    my $plan = join '',
        "-- the request cycle of Test::Apikey::Soak (holds keys: never print it)\n",
        "return {\n  stop_path = \"/stop\",\n  requests = {\n",
        (map { sprintf qq(    { kind = "%s", path = "%s", key = "%s", method = "%s" },\n),
                   $_->[0], $_->[1], $_->[2], $_->[3] // 'GET' } @$requests),
        "  },\n}\n";
    return { cycle => [ map { [ @$_[0, 1] ] } @$requests ],
             plan => spew("$dir/plan.lua", $plan, 0600),
             script => spew("$dir/keyed.lua", _lua(), 0644) };
}

# churn_key($org_id, $name [, $previous]) -> (seconds, key object): creates
# a key (apikeyd adds it to the published key table in place), waits until
# nginx's GET /probe answers 200 for it (the probes are not captured), then
# deletes $previous (an earlier churn_key's key object), so that the number
# of keys stays the same: more keys legitimately take more memory (the org
# listing grows, and every HTTP thread's arena with it).
sub churn_key {
    my ($org, $name, $previous) = @_;
    my $k = apikeyctl('key', 'create', '--org', $org, '--name', $name);
    my $t = wait_until(sub { http_get('/probe', ["X-API-Key: $k->{key}"], timeout => 5)->{status} == 200 },
                       10, "key $name published");
    psql(q{DELETE FROM api_keys WHERE id = :'id'}, { id => $previous->{key_id} }) if $previous;
    return ($t, $k);
}

# rebuild_key_table($org_id, $n) -> seconds: deletes the keys an earlier
# call added, adds $n new ones (straight into api_keys: names "bulk N", no
# usable key) and waits until apikeyd's table holds every key of the
# database. $n tombstones plus $n new entries make apikeyd build a new
# key-table file and rename it over the old one, which the workers remap
# (architecture.md, "Key table publication").
sub rebuild_key_table {
    my ($org, $n) = @_;
    my $t0 = time;
    psql(q{DELETE FROM api_keys WHERE name LIKE 'bulk %';} . _insert_keys_sql('bulk'),
         { org => $org, n => $n });
    _wait_table_matches_db();
    return time - $t0;
}

# SQL that adds :n keys of org :org named "$label N" (no usable key: only a
# hash of a random string), straight into api_keys.
sub _insert_keys_sql {
    my ($label) = @_;
    return qq{INSERT INTO api_keys (org_id, name, prefix, hint, key_hash)
              SELECT :'org', '$label ' || i, 'ak', 'ak_$label',
                     sha256(convert_to('$label ' || i || ' ' || random(), 'UTF8'))
                FROM generate_series(1, :n) i};
}

# Waits until apikeyd's key table holds as many keys as the database.
sub _wait_table_matches_db {
    my $want = psql(q{SELECT count(*) FROM api_keys})->[0][0];
    wait_until(sub { (apikeyd_metrics()->{apikey_keys} // -1) == $want }, 30,
               "apikeyd's key table holds all $want keys");
}

# expected_kinds($traffic, @issued) -> { kind => requests } for threads that
# sent @issued keyed requests each (every thread starts at the cycle's top).
sub expected_kinds {
    my ($t, @issued) = @_;
    my %want = map { ($_->[0] => 0) } @{ $t->{cycle} };
    my $n = @{ $t->{cycle} };
    for my $issued (@issued) {
        my $full = int($issued / $n);
        my $i = 0;
        for my $c (@{ $t->{cycle} }) {
            $want{ $c->[0] } += $full + ($i++ < $issued % $n ? 1 : 0);
        }
    }
    return \%want;
}

sub _lua {
    return <<'LUA';
-- Test::Apikey::Soak: keyed requests from a plan file, counted exactly.
-- args (after "--"): PLAN OUT QUOTA END_AT DELAY_MS THREADS
--   QUOTA     keyed requests for all threads together (0: no limit)
--   END_AT    epoch seconds after which no keyed request is sent (0: none)
--   DELAY_MS  think time before each request on a connection (0: none)
-- Each thread writes OUT.<thread> once all its keyed requests were answered.
local threads_seen = 0
function setup(thread)          -- in wrk's setup state, once per thread
  threads_seen = threads_seen + 1
  thread:set("tid", threads_seen)
end

local reqs, kinds, n = {}, {}, 0
local stop_req, out
local quota, end_at, pause = -1, 0, 0
local idx, issued, answered, stops = 0, 0, 0, 0
local issued_by, status_by = {}, {}
local finished = false
local verify_pending = false

function init(args)
  local plan = dofile(args[1])
  out = args[2] .. "." .. tid
  local q, threads = tonumber(args[3]), tonumber(args[6])
  if q > 0 then
    quota = math.floor(q / threads) + ((tid <= q % threads) and 1 or 0)
  end
  end_at = tonumber(args[4])
  pause = tonumber(args[5])
  for i, r in ipairs(plan.requests) do
    reqs[i] = wrk.format(r.method, r.path,
      { ["X-API-Key"] = r.key, ["User-Agent"] = "apikey-long/" .. r.kind })
    kinds[i] = r.kind
    issued_by[r.kind] = 0
  end
  n = #reqs
  stop_req = wrk.format("GET", plan.stop_path)
  if pause <= 0 then delay = nil end
  -- wrk 4.1 calls request() once on the first thread's state to check the
  -- request parses; that one is never sent, so it must not count
  verify_pending = (tid == 1)
end

local function sending()
  return (quota < 0 or issued < quota) and (end_at <= 0 or os.time() < end_at)
end

function delay()
  return pause
end

function request()
  if verify_pending then
    verify_pending = false
    return stop_req
  end
  if finished or not sending() then
    return stop_req
  end
  idx = idx % n + 1
  issued = issued + 1
  local k = kinds[idx]
  issued_by[k] = issued_by[k] + 1
  return reqs[idx]
end

function response(status, headers, body)
  if status == 204 then
    stops = stops + 1
  else
    answered = answered + 1
    status_by[status] = (status_by[status] or 0) + 1
  end
  if not finished and answered >= issued and not sending() then
    finished = true
    local f = assert(io.open(out .. ".tmp", "w"))
    f:write(string.format("issued %d\nanswered %d\nstops %d\nquota %d\n",
                          issued, answered, stops, quota))
    for k, v in pairs(issued_by) do f:write(string.format("kind %s %d\n", k, v)) end
    for s, v in pairs(status_by) do f:write(string.format("status %d %d\n", s, v)) end
    f:close()
    os.rename(out .. ".tmp", out)
    wrk.thread:stop()
  end
end
LUA
}

my $RUN = 0;
my %LIVE;    # pid => 1 of wrk processes still running

# start_wrk($traffic, quota => N, seconds => S, delay_ms => D, threads => T,
#           connections => C, port => P) -> a handle for wrk_finished and
# finish_wrk. quota: keyed requests in all; seconds: send keyed requests
# for this long (the deadline is whole epoch seconds). One of them is needed.
sub start_wrk {
    my ($t, %o) = @_;
    my $quota = $o{quota} // 0;
    my $secs = $o{seconds} // 0;
    die "start_wrk: quota => N or seconds => S\n" unless $quota > 0 || $secs > 0;
    my $threads = $o{threads} // 1;
    my $conns = $o{connections} // 16;
    my $port = $o{port} // $ENV{TEST_NGINX_SERVER_PORT};
    my $tag = servroot_path('wrk', 'run' . ++$RUN);
    my $t0 = time;
    my $end_at = $secs > 0 ? int($t0 + $secs + 0.5) : 0;
    # wrk's own timer only bounds a run that never finishes
    my $duration = $o{max_seconds} // ($secs > 0 ? $secs + 300 : 3600);
    my @argv = (wrk_path(), '-t', $threads, '-c', $conns, '-d', "${duration}s",
                '--timeout', '10s', '-s', $t->{script}, "http://127.0.0.1:$port/", '--',
                $t->{plan}, $tag, $quota, $end_at, $o{delay_ms} // 0, $threads);
    my $pid = spawn(\@argv, log => "$tag.log");
    $LIVE{$pid} = 1;
    on_cleanup('wrk', sub { stop_process($_, INT => 5, KILL => 5) for keys %LIVE });
    return { pid => $pid, tag => $tag, threads => $threads, t0 => $t0,
             quota => $quota, end_at => $end_at, duration => $duration };
}

# wrk_finished($h) -> true once every thread wrote its counts (it sets
# $h->{t_done}, the wall time it first saw them), or wrk exited.
sub wrk_finished {
    my ($h) = @_;
    return 1 if $h->{t_done};
    if (!grep { !-e "$h->{tag}.$_" } 1 .. $h->{threads}) {
        $h->{t_done} = time;
        return 1;
    }
    return !process_alive($h->{pid}) ? ($h->{exited} = 1) : 0;
}

# finish_wrk($h, $timeout_s) -> { issued, answered, stops, kinds => { kind
# => n }, status => { code => n }, per_thread => [issued ...], elapsed (s,
# start to the last thread's counts), rps (issued / elapsed), wrk => {
# requests, non2xx, connect, read, write, timeout, rps, seconds }, log,
# error }. Waits for the counts (up to $timeout_s), then SIGINT.
sub finish_wrk {
    my ($h, $timeout) = @_;
    my $r = { issued => 0, answered => 0, stops => 0, kinds => {}, status => {},
              per_thread => [] };
    eval { wait_until(sub { wrk_finished($h) }, $timeout // 600, 'wrk finished'); 1 }
        or $r->{error} = $@;
    $r->{error} //= "wrk exited before every thread wrote its counts\n" if $h->{exited};
    stop_process($h->{pid}, INT => 10, KILL => 5);
    delete $LIVE{ $h->{pid} };
    $r->{elapsed} = ($h->{t_done} // time) - $h->{t0};
    for my $i (1 .. $h->{threads}) {
        my $text = slurp("$h->{tag}.$i") // '';
        for (split /\n/, $text) {
            my @f = split ' ';
            if ($f[0] eq 'kind')      { $r->{kinds}{ $f[1] } += $f[2] }
            elsif ($f[0] eq 'status') { $r->{status}{ $f[1] } += $f[2] }
            else                      { $r->{ $f[0] } += $f[1] }
        }
        push @{ $r->{per_thread} }, $text =~ /^issued (\d+)/m ? $1 : 0;
    }
    delete $r->{quota};
    $r->{rps} = $r->{elapsed} > 0 ? $r->{issued} / $r->{elapsed} : 0;
    my $log = slurp("$h->{tag}.log") // '';
    $r->{log} = $log;
    my %w = (requests => undef, non2xx => 0, connect => 0, read => 0, write => 0,
             timeout => 0, rps => undef, seconds => undef);
    ($w{requests}, $w{seconds}) = ($1, $2) if $log =~ /^\s*(\d+) requests in ([\d.]+)(\w+),/m;
    $w{seconds} *= { us => 1e-6, ms => 1e-3, s => 1, m => 60, h => 3600 }->{$3} // 1
        if defined $w{seconds};
    @w{qw(connect read write timeout)} = ($1, $2, $3, $4)
        if $log =~ /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/;
    $w{non2xx} = $1 if $log =~ /Non-2xx or 3xx responses: (\d+)/;
    $w{rps} = $1 if $log =~ /^Requests\/sec:\s*([\d.]+)/m;
    $r->{wrk} = \%w;
    $r->{error} //= "no wrk summary in its output:\n$log" unless defined $w{requests};
    return $r;
}

# proc_status($pid) -> { VmRSS, RssAnon, RssFile, RssShmem, VmHWM, VmSize,
# VmData, Threads } from /proc/PID/status (kB; Threads a count); undef once
# the process is gone.
sub proc_status {
    my ($pid) = @_;
    my $text = slurp("/proc/$pid/status") // return undef;
    my %s = $text =~ /^(VmRSS|RssAnon|RssFile|RssShmem|VmHWM|VmSize|VmData|Threads):\s+(\d+)/mg;
    return \%s;
}

# proc_fds($pid) -> open file descriptors (readable for our own children and
# as root); proc_maps($pid) -> the number of mappings.
sub proc_fds {
    my ($pid) = @_;
    opendir(my $d, "/proc/$pid/fd") or return undef;
    my $n = grep { /^\d+$/ } readdir $d;
    closedir $d;
    return $n;
}

sub proc_maps {
    my ($pid) = @_;
    my $t = slurp("/proc/$pid/maps") // return undef;
    return $t =~ tr/\n//;
}

# proc_mapping_rss($pid, $path) -> kB resident in $pid's mappings of $path
# (a replaced file still mapped shows as "$path (deleted)"): the key table,
# whose size follows the number of keys, not a leak.
sub proc_mapping_rss {
    my ($pid, $path) = @_;
    my $t = slurp("/proc/$pid/smaps") // return undef;
    my ($kb, $mine) = (0, 0);
    for my $line (split /\n/, $t) {
        if ($line =~ /^[0-9a-f]+-[0-9a-f]+ /) {
            $mine = $line =~ m{ \Q$path\E(?: \(deleted\))?$} ? 1 : 0;
        } elsif ($mine && $line =~ /^Rss:\s+(\d+) kB/) {
            $kb += $1;
        }
    }
    return $kb;
}

# grow_key_table($org_id, $n): adds $n keys of the bulk org before taking
# them away again, so that apikeyd's key table and its index of keys reach
# the largest size that rebuild_key_table($org_id, $n) (a delete and an
# insert in one statement, seen by apikeyd one key at a time) can make them
# need; a soak does this before its reference sample.
sub grow_key_table {
    my ($org, $n) = @_;
    psql(_insert_keys_sql('grow'), { org => $org, n => $n });
    _wait_table_matches_db();
    psql(q{DELETE FROM api_keys WHERE name LIKE 'grow %'});
    _wait_table_matches_db();
}

# format_kib($kb) -> "12345 kB" with a sign for differences ("+12 kB").
sub format_kib {
    my ($kb, $signed) = @_;
    return sprintf($signed ? '%+d kB' : '%d kB', $kb);
}

# unrecorded($metrics, $result) -> apikey_requests_unrecorded_total{result}
sub unrecorded {
    my ($m, $result) = @_;
    return $m->{qq(apikey_requests_unrecorded_total{result="$result"})} // 0;
}

# ingest_totals($metrics) -> { committed, drops, depth, spool } from
# apikeyd's /metrics (drops: ring + unslotted + spool drops).
sub ingest_totals {
    my ($m) = @_;
    my $depth = 0;
    $depth += $m->{$_} for grep { /^apikey_ring_depth\{/ } keys %$m;
    return {
        committed => $m->{apikey_records_committed_total} // 0,
        drops => metric_sum($m, 'apikey_ring_dropped_total')
            + ($m->{apikey_unslotted_drops_total} // 0)
            + ($m->{apikey_records_spool_dropped_total} // 0),
        depth => $depth,
        spool => $m->{apikey_spool_bytes} // 0,
    };
}

# wait_ingested($before, $n, $timeout_s) -> (seconds, totals now): waits
# until apikeyd has committed or counted as dropped $n records since the
# ingest_totals $before, with every ring empty and nothing spooled. Dies
# like wait_until.
sub wait_ingested {
    my ($before, $n, $timeout) = @_;
    my $now;
    my $t = wait_until(sub {
        $now = ingest_totals(apikeyd_metrics());
        return $now->{committed} - $before->{committed} + $now->{drops} - $before->{drops} >= $n
            && $now->{depth} == 0 && $now->{spool} == 0;
    }, $timeout, "$n records committed or dropped");
    return ($t, $now);
}

# rows_by_key() -> { key_id => api_key_usage rows }.
sub rows_by_key {
    return { map { ($_->[0] => $_->[1]) }
             @{ psql('SELECT key_id, count(*) FROM api_key_usage GROUP BY 1') } };
}

1;
