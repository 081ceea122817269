# The aggregates through apikeyd faults: (a) apikeyd killed with -9 under
# full load and started again 15 s later (t/long/ does 60 s): rollups and
# request_count equal the requests nginx served with the key, exactly;
# (b) apikeyd killed after an aggregate COMMIT reached PostgreSQL but before
# it cleared the buffer: the restart finds the buffer committed (a
# duplicate) and counts nothing twice; (c) aggregate entries forged in the
# segment (an impossible time, a key id no key has) are not stored, and
# counted by reason.

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use Test::Apikey::AggOutage;
use Test::Apikey::Aggregates qw(usage_aggregates);
use Time::HiRes qw(time sleep);

start_postgres();
start_apikeyd();
my $org = apikeyctl('org', 'create', 'agg-faults');
my %K = map { ($_ => new_key($org->{org_id}, $_)) } qw(outage commit corrupt unknown);
wait_key_results({ map { ($K{$_}{key} => 'ok') } keys %K }, 10, 'key table published');

# --- (a) 15 s outage under load ----------------------------------------------------

start_nginx(agg_nginx_config());
agg_outage(key => $K{outage}, outage => 15, tag => '(a)');

# --- (b) killed between COMMIT and clearing the buffer ------------------------------
# The COMMIT of an aggregate transaction is held for 4 s by a deferred
# trigger on usage_aggregate_offsets (it runs at COMMIT); apikeyd is killed
# while it waits. The server finishes the COMMIT (a backend notices a
# vanished client only when it next talks to it): the buffer's epoch is
# stored, and the buffer is still closed in the segment.

psql(<<'SQL');
CREATE FUNCTION t_slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('t.slept', true) IS DISTINCT FROM 'yes' THEN
        PERFORM set_config('t.slept', 'yes', true);
        PERFORM pg_sleep(4);
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER t_slow_commit AFTER INSERT OR UPDATE ON usage_aggregate_offsets
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION t_slow_commit();
SQL

{
    my $id = $K{commit}{key_id};
    start_nginx(agg_nginx_config());
    my $m0 = apikeyd_metrics();
    my $st = request_burst($K{commit}{key}, 50);
    is_deeply($st, { 200 => 50 }, '(b) 50 requests answered 200') or diag(format_statuses($st));
    my $commit_waits = sub {
        psql_one(q{SELECT count(*) FROM pg_stat_activity
                    WHERE wait_event = 'PgSleep' AND query = 'COMMIT'});
    };
    my $held = eval { wait_until(sub { $commit_waits->() > 0 }, 10, 'an aggregate COMMIT held'); 1 };
    ok($held, '(b) an aggregate COMMIT is in progress') or diag($@);
    kill_apikeyd();
    eval { wait_until(sub { $commit_waits->() == 0 }, 15, 'the held COMMIT finished') };
    my $committed = psql_one(q{SELECT coalesce(sum(requests), 0) FROM api_key_usage_hourly
                               WHERE key_id = :'id'}, { id => $id });
    # the burst may have been split between two buffers: the held one has
    # some of it
    ok($committed >= 1 && $committed <= 50,
       '(b) the held COMMIT went through after apikeyd was killed (the crafted moment)')
        or diag("hourly requests after the kill: $committed");
    psql(q{DROP TRIGGER t_slow_commit ON usage_aggregate_offsets});

    start_apikeyd();
    my $more = request_burst($K{commit}{key}, 10);
    is_deeply($more, { 200 => 10 }, '(b) 10 more requests answered 200');
    stop_nginx();
    my $settled = eval { usage_settle(30) };
    ok($settled, '(b) apikeyd committed everything after the restart') or diag($@);
    my $served = served_with_key($id);
    is($served, 60, '(b) nginx served 60 requests with the key');
    is(psql_one(q{SELECT sum(requests) FROM api_key_usage_hourly WHERE key_id = :'id'}, { id => $id }),
       60, '(b) sum(hourly requests) = 60: the committed buffer was not counted again');
    is(psql_one(q{SELECT sum(requests) FROM api_key_usage_daily WHERE key_id = :'id'}, { id => $id }),
       60, '(b) sum(daily requests) = 60');
    is(key_request_count($id), 60, '(b) request_count = 60');
    ok(metric_sum(apikeyd_metrics(), 'apikey_agg_buffers_duplicate_total') >= 1,
       '(b) apikey_agg_buffers_duplicate_total counts the buffer found committed');
}

# --- (c) forged aggregate entries --------------------------------------------------
# With apikeyd stopped, the workers' entries of two keys are rewritten in
# the segment: one key's with a last use in 1970 (a corrupt entry), the
# other's with a key id no key has (what a process able to write the
# segment could do).

{
    stop_apikeyd();
    start_nginx(agg_nginx_config());
    my @st = (request_burst($K{corrupt}{key}, 5), request_burst($K{unknown}{key}, 5));
    is_deeply(\@st, [ { 200 => 5 }, { 200 => 5 } ], '(c) 10 requests answered 200')
        or diag(join ' / ', map { format_statuses($_) } @st);
    # The log phase runs after the response: both keys' 5 requests must be
    # in the active buffers before their entries are rewritten, or a late
    # one makes a fresh entry under the real key.
    my @e;
    my $counted = sub {
        my ($id) = @_;
        my $n = 0;
        $n += $_->{requests} for grep { $_->{key_id} eq $id } @e;
        return $n;
    };
    eval {
        wait_until(sub {
            @e = grep { $_->{state} == 1 } usage_aggregates();
            $counted->($K{corrupt}{key_id}) == 5 && $counted->($K{unknown}{key_id}) == 5;
        }, 5, '(c) both keys\' requests aggregated');
    };
    my @corrupt = grep { $_->{key_id} eq $K{corrupt}{key_id} } @e;
    my @unknown = grep { $_->{key_id} eq $K{unknown}{key_id} } @e;
    ok(@corrupt && @unknown, '(c) the workers aggregated both keys')
        or diag(scalar(@e) . ' entries in active buffers');
    usage_segment_u64($_->{offset} + 80, 0) for @corrupt;    # last_used_us
    for (@unknown) {
        usage_segment_u64($_->{offset}, 0x0123456789abcdef);  # key_id
        usage_segment_u64($_->{offset} + 8, 0x0123456789abcdef);
    }
    start_apikeyd();
    stop_nginx();
    my $settled = eval { usage_settle(30) };
    ok($settled, '(c) apikeyd committed everything after the restart') or diag($@);
    my $m = apikeyd_metrics();
    is($m->{'apikey_agg_entries_rejected_total{reason="corrupt"}'}, scalar @corrupt,
       '(c) the corrupt entries counted in apikey_agg_entries_rejected_total{reason="corrupt"}');
    is($m->{'apikey_agg_entries_rejected_total{reason="unknown_key"}'}, scalar @unknown,
       '(c) the unknown key\'s entries counted in ...{reason="unknown_key"}');
    for my $k (qw(corrupt unknown)) {
        my $id = $K{$k}{key_id};
        is(psql_one(q{SELECT count(*) FROM api_key_usage_hourly WHERE key_id = :'id'}, { id => $id }),
           0, "(c) $k: no rollup row");
        is(key_request_count($id), 0, "(c) $k: request_count 0");
        is(usage_rows($id), 5, "(c) $k: the 5 raw records are stored (the records were not forged)");
    }
    like(apikeyd_log(), qr/\d+ aggregate entries of unknown keys/,
         '(c) apikeyd says it rejected aggregate entries');
}

done_testing();
