# The aggregates through apikeyd faults: (a) apikeyd killed with -9 under
# full load and started again 15 s later (t/long/ does 60 s): rollups and
# request_count equal the requests nginx served with the key, exactly;
# (b) apikeyd killed after an aggregate COMMIT reached PostgreSQL but before
# it cleared the buffer: the restart finds the buffer committed (a
# duplicate) and counts nothing twice.

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use Test::Apikey::AggOutage;
use Time::HiRes qw(time sleep);

start_postgres();
start_apikeyd();
my $org = apikeyctl('org', 'create', 'agg-faults');
my %K = map { ($_ => new_key($org->{org_id}, $_)) } qw(outage commit);
wait_key_results({ $K{outage}{key} => 'ok', $K{commit}{key} => 'ok' }, 10, 'key table published');

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

done_testing();
