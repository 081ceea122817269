# Monthly partitions of api_key_usage: apikeyd creates the current month's
# and the next two at start, drops the ones past --retention-months (and
# only those: a month within retention, tables that are not its partitions,
# and partitions named otherwise stay), and rows land in the partition of
# their month.

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;

# names of api_key_usage's partitions
sub partitions {
    return [ map { $_->[0] } @{ psql(q{SELECT c.relname FROM pg_inherits i
                                         JOIN pg_class c ON c.oid = i.inhrelid
                                        WHERE i.inhparent = 'api_key_usage'::regclass
                                        ORDER BY 1}) } ];
}
sub has_partition { my $n = shift; return scalar grep { $_ eq $n } @{ partitions() } }
sub table_exists  { psql_one(q{SELECT count(*) FROM pg_class WHERE relname = :'n' AND relkind IN ('r', 'p')},
                             { n => $_[0] }) }

# month offset from the current UTC month -> [name, first day, first day of the next]
sub month {
    my ($off) = @_;
    return psql(q{SELECT to_char(m, '"api_key_usage_y"YYYY"m"MM'), to_char(m, 'YYYY-MM-DD'),
                         to_char(m + interval '1 month', 'YYYY-MM-DD')
                    FROM (SELECT date_trunc('month', now() AT TIME ZONE 'UTC')
                                 + :'off'::int * interval '1 month' AS m) x}, { off => $off })->[0];
}

sub create_partition {
    my ($name, $from, $to) = @_;
    psql(q{CREATE TABLE :"n" PARTITION OF api_key_usage
           FOR VALUES FROM (:'f') TO (:'t')}, { n => $name, f => "$from 00:00:00+00", t => "$to 00:00:00+00" });
}

start_postgres();
is_deeply(partitions(), [], 'before apikeyd ever ran: no partitions (migrations create none)');

start_apikeyd();
my @want = map { month($_)->[0] } 0 .. 2;
my $t = eval { wait_until(sub { my $p = partitions(); !grep { my $w = $_; !grep { $_ eq $w } @$p } @want },
                          5, 'partitions created') };
ok(defined $t, "apikeyd created partitions for this month and the next two (@want)")
    or diag('partitions: ' . join(' ', @{ partitions() }));
diag(sprintf 'partitions created %.0f ms after apikeyd was healthy', 1000 * ($t // 0));
is_deeply(partitions(), \@want, 'and no others');
like(apikeyd_log(), qr/created $want[0]/, 'apikeyd.log names the partitions it created');

# bounds in UTC
my $b = month(0);
is(psql_one(q{SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_class c WHERE relname = :'n'}, { n => $want[0] }),
   "FOR VALUES FROM ('$b->[1] 00:00:00+00') TO ('$b->[2] 00:00:00+00')",
   'the current month\'s bounds are [first day, first day of next month) in UTC');

# --- a row lands in the partition of its month -----------------------------------------------

my $org = apikeyctl('org', 'create', 'partitions');
my $k = apikeyctl('key', 'create', '--org', $org->{org_id}, '--name', 'p');
start_nginx(
    http_config => "apikey_keys $ENV{TEST_NGINX_APIKEY_KEYS};\n"
                 . "apikey_usage $ENV{TEST_NGINX_APIKEY_USAGE} size=1m;",
    config => 'location /t.txt { apikey on; }',
);
wait_until(sub { http_get('/t.txt', ["X-API-Key: $k->{key}"])->{status} == 200 }, 5, 'key published');
wait_until(sub { psql_one('SELECT count(*) FROM api_key_usage') >= 1 }, 5, 'a usage row');
is(psql_one(q{SELECT DISTINCT tableoid::regclass::text FROM api_key_usage}), $want[0],
   'usage rows land in the current month\'s partition');

# --- retention ------------------------------------------------------------------------------

# With --retention-months 13 (the default), month -13 is kept (part of it
# is younger than 13 months), month -14 and January 2000 are dropped.
my ($m13, $m14) = (month(-13), month(-14));
create_partition('api_key_usage_y2000m01', '2000-01-01', '2000-02-01');
create_partition($m13->[0], $m13->[1], $m13->[2]);
create_partition($m14->[0], $m14->[1], $m14->[2]);
create_partition('api_key_usage_archive1999', '1999-01-01', '1999-02-01');  # not named by apikeyd
psql(q{CREATE TABLE api_key_usage_y1999m02 (x int)});                       # not a partition
psql(q{INSERT INTO api_key_usage (ts, org_id, key_id, endpoint, method, status_code, response_time_ms,
                                  user_agent, bytes_sent, result, node, slot, generation, sequence)
       VALUES ('2000-01-15 12:00:00+00', :'o', :'k', '/old', 'GET', 200, 1, '', 1, 'ok', 'manual', 0, 1, 0),
              (:'t13', :'o', :'k', '/kept', 'GET', 200, 1, '', 1, 'ok', 'manual', 0, 1, 1)},
     { o => $org->{org_id}, k => $k->{key_id}, t13 => "$m13->[1] 12:00:00+00" });
# traffic before the restart: ingestion goes on across the maintenance
http_get('/t.txt', ["X-API-Key: $k->{key}"]) for 1 .. 5;

restart_apikeyd(args => [ '--retention-months', '13' ]);
my $gone = eval { wait_until(sub { !has_partition('api_key_usage_y2000m01') && !has_partition($m14->[0]) },
                             5, 'old partitions dropped') };
ok(defined $gone, '--retention-months 13: api_key_usage_y2000m01 and month -14 dropped within 5 s')
    or diag('partitions: ' . join(' ', @{ partitions() }));
diag(sprintf 'old partitions dropped %.0f ms after apikeyd was healthy', 1000 * ($gone // 0));
ok(!table_exists('api_key_usage_y2000m01'), 'the dropped partition is gone as a table too');
like(apikeyd_log(), qr/dropped api_key_usage_y2000m01/, 'apikeyd.log names the dropped partition');
ok(has_partition($m13->[0]), "month -13 ($m13->[0]) is within retention and stays");
is(psql_one(q{SELECT count(*) FROM api_key_usage WHERE endpoint = '/kept'}), 1, 'its row stays');
is(psql_one(q{SELECT count(*) FROM api_key_usage WHERE endpoint = '/old'}), 0, 'the 2000-01 row went with its partition');
ok(has_partition('api_key_usage_archive1999'), 'a partition with another name is never dropped');
ok(table_exists('api_key_usage_y1999m02'), 'a table that is not a partition of api_key_usage is never dropped');
ok(has_partition($_), "$_ still there") for @want;
is(psql_one(q{SELECT count(*) FROM api_key_usage WHERE key_id = :'k' AND node = 'test'}, { k => $k->{key_id} }), 6,
   'ingestion went on: 6 rows from nginx');

# A shorter retention drops more; a missing future partition is re-created.
psql(qq{DROP TABLE $want[2]});
my $m1 = month(-1);
create_partition($m1->[0], $m1->[1], $m1->[2]);
restart_apikeyd(args => [ '--retention-months', '1' ]);
my $ok = eval { wait_until(sub { !has_partition($m13->[0]) && has_partition($want[2]) }, 5, 'retention 1') };
ok($ok, '--retention-months 1: month -13 dropped, the missing month +2 re-created')
    or diag('partitions: ' . join(' ', @{ partitions() }));
ok(has_partition($m1->[0]), '--retention-months 1: month -1 stays');
is_deeply(partitions(), [ sort('api_key_usage_archive1999', $m1->[0], @want) ],
          '--retention-months 1: exactly months -1 .. +2 (plus the foreign partition)');

stop_apikeyd();
stop_nginx();

done_testing();
