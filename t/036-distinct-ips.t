# Distinct client addresses per key (docs/api.md distinct_ips_today,
# distinct_ips_7d, series[].distinct_ips), end to end: real nginx traffic
# from three loopback addresses (127.0.0.1-3) counts 3, under the default
# raw-event policy and under `apikey_usage_raw off` alike (the count comes
# from the aggregates, not the raw rows); the same addresses again in
# later buffers count nothing more and leave the sketch row unwritten;
# days inserted by the test (a sketch of 5 other addresses yesterday, a
# pruned day 10 days ago) show in the 7-day union and the day series;
# sketches older than 8 days are pruned with their estimate kept.

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use POSIX qw(strftime);

start_postgres();
start_apikeyd();

my $org = apikeyctl('org', 'create', 'distinct-ips')->{org_id};
my %K = map { ($_ => new_key($org, $_, '--scopes', 'usage:read')) } qw(all off);

wait_key_results({ $K{all}{key} => 'ok', $K{off}{key} => 'ok' }, 10, 'key table published');
my $html = $ENV{TEST_NGINX_HTML_DIR};
start_nginx(usage_conf(config => <<"CONF"));
location /all/ { apikey on; alias $html/; }
location /off/ { apikey on; apikey_usage_raw off; alias $html/; }
CONF

my @CLIENTS = map { "127.0.0.$_" } 1 .. 3;

# $n requests of each key from each client address.
sub traffic {
    my ($n) = @_;
    my %st;
    for my $round (1 .. $n) {
        for my $ip (@CLIENTS) {
            $st{ get_with_key($K{all}{key}, '/all/t.txt', local => $ip)->{status} }++;
            $st{ get_with_key($K{off}{key}, '/off/t.txt', local => $ip)->{status} }++;
        }
    }
    return \%st;
}

sub api {
    my ($path, $key) = @_;
    my $r = apikeyd_get($path, ["Authorization: Bearer $key"]);
    die "GET $path: $r->{status} $r->{body}\n" unless $r->{status} == 200;
    return $r->{json};
}

sub listed {
    my ($name) = @_;
    my $list = api("/api/orgs/$org/api-keys/usage", $K{all}{key});
    my ($k) = grep { $_->{key_id} eq $K{$name}{key_id} } @{ $list->{keys} };
    return $k;
}

my $today = strftime('%Y-%m-%d', gmtime);

is_deeply(traffic(3), { 200 => 18 }, '3 requests of each key from each of 3 addresses: 200') or diag(explain(traffic(1)));
wait_request_count($K{$_}{key_id}, 9, 10, "$_: request_count 9") for qw(all off);

for my $name (qw(all off)) {
    my $k = listed($name);
    is($k->{distinct_ips_today}, 3, "$name: the listing's distinct_ips_today is 3");
    is($k->{distinct_ips_7d}, 3, "$name: distinct_ips_7d is 3");
    like($k->{last_used_ip}, qr/^127\.0\.0\.[123]$/, "$name: last_used_ip is one of them");
}
is(usage_rows($K{off}{key_id}), 0, 'off: no raw row, yet its addresses are counted');

# The same addresses in later buffers: nothing grows, nothing is written.
my $row = sub {
    psql(q{SELECT ips, xmin::text FROM api_key_distinct_ips WHERE key_id = :'id' AND day = :'d'},
         { id => $K{all}{key_id}, d => $today })->[0];
};
my ($ips0, $xmin0) = @{ $row->() };
is($ips0, 3, 'the day row holds 3');
is_deeply(traffic(2), { 200 => 12 }, 'the same 3 addresses again');
wait_request_count($K{$_}{key_id}, 15, 10, "$_: request_count 15") for qw(all off);
my ($ips1, $xmin1) = @{ $row->() };
is($ips1, 3, 'the same addresses committed again: still 3');
is($xmin1, $xmin0, 'the row was not rewritten (no register grew)');

# --- days of the past, inserted -------------------------------------------------
# Yesterday: a sparse sketch of 5 registers (indexes 100-104, value 1) =
# 5 other addresses. 10 days ago: a pruned day (no sketch, 40 kept).
# 9 days ago: a sketch the next prune drops.
my $five = '01' . join('', map { sprintf '%04x01', $_ } 100 .. 104);
psql(q{INSERT INTO api_key_distinct_ips (key_id, day, org_id, ips, sketch) VALUES
       (:'id', :'d'::date - 1, :'org', 5, decode(:'five', 'hex')),
       (:'id', :'d'::date - 10, :'org', 40, NULL),
       (:'id', :'d'::date - 9, :'org', 6, decode(:'five', 'hex'))},
     { id => $K{all}{key_id}, org => $org, five => $five, d => $today });

{
    my $k = listed('all');
    is($k->{distinct_ips_today}, 3, 'with past days: distinct_ips_today still 3');
    is($k->{distinct_ips_7d}, 8, 'distinct_ips_7d is the union of today and yesterday: 8');
    is(listed('off')->{distinct_ips_7d}, 3, 'another key is not affected');
}

{
    my $from = strftime('%Y-%m-%d', gmtime(time - 11 * 86400));
    my $v = api("/api/orgs/$org/api-keys/$K{all}{key_id}/usage?interval=day&from=$from", $K{all}{key});
    my @ips = map { $_->{distinct_ips} } @{ $v->{series} };
    is(scalar @ips, 12, 'the day series has 12 points');
    is_deeply(\@ips, [0, 40, 6, 0, 0, 0, 0, 0, 0, 0, 5, 3],
              'series[].distinct_ips: 40 (pruned day), 6, 5 yesterday, 3 today, 0 elsewhere');
    is($v->{key}{distinct_ips_7d}, 8, 'the per-key view\'s key has distinct_ips_7d');
    my $h = api("/api/orgs/$org/api-keys/$K{all}{key_id}/usage?interval=hour", $K{all}{key});
    ok(!grep({ exists $_->{distinct_ips} } @{ $h->{series} }), 'no distinct_ips in an hourly series');

    my $self = api('/api/keys/self/usage?interval=day', $K{off}{key});
    is($self->{key}{distinct_ips_today}, 3, 'self-serve view: distinct_ips_today 3');
    is($self->{series}[-1]{distinct_ips}, 3, 'self-serve view: today\'s point has distinct_ips 3');
}

# apikeyd prunes sketches older than 8 days when it maintains partitions (at
# start, then hourly); the estimate stays.
kill_apikeyd();
start_apikeyd();
wait_until(sub {
    psql_one(q{SELECT sketch IS NULL FROM api_key_distinct_ips WHERE key_id = :'id'
               AND day = :'d'::date - 9}, { id => $K{all}{key_id}, d => $today }) eq 't'
}, 10, 'the 9-day-old sketch pruned');
is(psql_one(q{SELECT ips FROM api_key_distinct_ips WHERE key_id = :'id' AND day = :'d'::date - 9},
            { id => $K{all}{key_id}, d => $today }), 6, 'the pruned day keeps its estimate');
is(psql_one(q{SELECT count(*) FROM api_key_distinct_ips WHERE key_id = :'id'
              AND day >= :'d'::date - 8 AND sketch IS NULL}, { id => $K{all}{key_id}, d => $today }), 0,
   'sketches of the last 8 days are kept');

done_testing();
