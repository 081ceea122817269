# Two gateway hosts on one PostgreSQL: two nginx (2 workers each, auth +
# capture) and two apikeyd, each pair with its own runtime directory, ports,
# spool and --node, as two hosts would have. wrk sends the traffic mix of
# Test::Apikey::Soak (three valid keys, a revoked, an unknown and a malformed
# key; exact counts) to both at once, about 700 requests/s each, for
# TEST_APIKEY_GW_SECONDS (default 12). Meanwhile:
#
#  - a new key is published on both, then revoked: both answer 401 within
#    1 s of the revocation (measured from before apikeyctl starts);
#  - gateway a's apikeyd is restarted (TERM, start) under load.
#
# Then, with the traffic over and both apikeyd settled: the rows of each
# node are exactly that gateway's keyed requests per key (nothing lost,
# nothing doubled, nothing taken by the other node), request_count is the
# sum of both, no idempotency key twice, nothing dropped; and both apikeyd
# answer the analytics API (listing and per-key view) with the same JSON.

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use Test::Apikey::Soak;
use Test::Apikey::Gateway;
use JSON::PP ();
use POSIX qw(strftime);
use Time::HiRes qw(time sleep);

my $SECONDS = $ENV{TEST_APIKEY_GW_SECONDS} || 12;

start_postgres();
my $org = apikeyctl('org', 'create', 'two-gateways');
my $reader = new_key($org->{org_id}, 'reader', '--scopes', 'usage:read');
my $traffic = make_traffic($org->{org_id});

# The nginx side of the traffic mix, with the gateway's own segment paths.
sub gateway_conf {
    my ($gw) = @_;
    local $ENV{TEST_NGINX_APIKEY_KEYS}  = $gw->{keys};
    local $ENV{TEST_NGINX_APIKEY_USAGE} = $gw->{usage};
    return soak_nginx_config();
}

my @gws = map { start_gateway(name => $_, node => "gw-$_", workers => 2,
                              conf => \&gateway_conf) } qw(a b);
my ($ga, $gb) = @gws;

sub probe { my ($gw, $key) = @_; return gateway_get($gw, '/probe', ["X-API-Key: $key"])->{status} }

for my $gw (@gws) {
    ok_eventually(sub { probe($gw, $traffic->{keys}{k1}{key}) == 200 }, 10,
                  "gateway $gw->{name}: the traffic keys are published");
}

my %wrk = map { ($_->{name} => start_wrk($traffic, seconds => $SECONDS, port => $_->{port},
                                         connections => 4, delay_ms => 5)) } @gws;
my $t_start = time;

# Revocation on both gateways under load.
sleep 2;
my $victim = new_key($org->{org_id}, 'victim');
for my $gw (@gws) {
    ok_eventually(sub { probe($gw, $victim->{key}) == 200 }, 5,
                  "gateway $gw->{name}: a new key is published under load");
}
my $t0 = time;
apikeyctl('key', 'revoke', $victim->{key_id});
my %seen;
while (keys %seen < @gws && time - $t0 < 5) {
    for my $gw (@gws) {
        $seen{ $gw->{name} } //= time - $t0 if probe($gw, $victim->{key}) == 401;
    }
    sleep 0.01;
}
for my $gw (@gws) {
    my $t = $seen{ $gw->{name} };
    ok(defined $t && $t <= 1, "gateway $gw->{name}: the revoked key gets 401 within 1 s")
        or diag(defined $t ? sprintf('after %.3f s', $t) : 'not within 5 s');
}
diag(sprintf 'revocation seen on a after %.0f ms, on b after %.0f ms',
     map { 1000 * ($seen{$_} // 5) } qw(a b));

# One apikeyd restarted while its nginx records.
sleep 1 while time - $t_start < $SECONDS / 2;
my $pid_before = $ga->{apikeyd_pid};
ok(eval { gateway_start_apikeyd($ga); 1 }, 'gateway a: apikeyd restarted under load')
    or diag($@);
isnt($ga->{apikeyd_pid}, $pid_before, 'gateway a: a new apikeyd process');

my %res = map { ($_ => finish_wrk($wrk{$_}, $SECONDS + 60)) } sort keys %wrk;
for my $name (sort keys %res) {
    my $r = $res{$name};
    is($r->{error}, undef, "gateway $name: wrk counted every request");
    is($r->{answered}, $r->{issued}, "gateway $name: every keyed request answered");
    diag(sprintf 'gateway %s: %d keyed requests in %.1f s (%.0f/s), statuses %s',
         $name, $r->{issued}, $r->{elapsed}, $r->{rps}, format_statuses($r->{status}));
}

gateway_settle($_, 30) for @gws;

# Exactly once per node.
my %name_of = map { ($traffic->{keys}{$_}{key_id} => $_) } keys %{ $traffic->{keys} };
my %got;
for my $row (@{ psql(q{SELECT node, key_id, count(*) FROM api_key_usage
                        WHERE key_id <> ALL (ARRAY[:'victim', :'reader']::uuid[])
                        GROUP BY 1, 2},
                     { victim => $victim->{key_id}, reader => $reader->{key_id} }) }) {
    $got{ $row->[0] }{ $name_of{ $row->[1] } // $row->[1] } = $row->[2];
}
my %want;
for my $gw (@gws) {
    my $k = $res{ $gw->{name} }{kinds};
    $want{ $gw->{node} } = { map { ($_ => $k->{$_}) } grep { $k->{$_} } qw(k1 k2 k3 revoked) };
}
is_deeply(\%got, \%want, 'rows per node and key = the keyed requests each gateway served');
is(usage_duplicates(), 0, 'no idempotency key twice');
for my $kind (qw(k1 k2 k3 revoked)) {
    my $sum = 0;
    $sum += $res{$_}{kinds}{$kind} // 0 for keys %res;
    is(key_request_count($traffic->{keys}{$kind}{key_id}), $sum,
       "request_count of $kind = its requests through both gateways");
}
for my $gw (@gws) {
    my $m = gateway_metrics($gw);
    is(metric_sum($m, 'apikey_ring_dropped_total') + ($m->{apikey_unslotted_drops_total} // 0)
       + ($m->{apikey_records_spool_dropped_total} // 0), 0,
       "gateway $gw->{name}: no record dropped");
}
# The same analytics from either apikeyd.
my $to = strftime('%Y-%m-%d', gmtime(time + 86400));
my $from = strftime('%Y-%m-%d', gmtime(time - 86400));
my @paths = ("/api/orgs/$org->{org_id}/api-keys/usage",
             "/api/orgs/$org->{org_id}/api-keys/$traffic->{keys}{k1}{key_id}/usage"
             . "?interval=hour&from=$from&to=$to");
my $json = JSON::PP->new->canonical;
my $k1_total = 0;
$k1_total += $res{$_}{kinds}{k1} // 0 for keys %res;
for my $path (@paths) {
    my @bodies;
    for my $gw (@gws) {
        my $r = gateway_api_get($gw, $path, ["Authorization: Bearer $reader->{key}"]);
        is($r->{status}, 200, "gateway $gw->{name}: analytics answered 200");
        my $j = ref $r->{json} eq 'HASH' ? $r->{json} : {};
        delete $j->{complete_until};
        my ($k1) = grep { $_->{key_id} eq $traffic->{keys}{k1}{key_id} }
            @{ $j->{keys} || [ $j->{key} || () ] };
        is($k1 && $k1->{request_count}, $k1_total,
           "gateway $gw->{name}: the analytics count k1's requests through both");
        push @bodies, $json->encode($j);
    }
    my $what = $path =~ m{/api-keys/usage$} ? 'listing' : 'per key';
    is($bodies[0], $bodies[1], "the same analytics from both apikeyd ($what)");
}

# PostgreSQL sessions of the two apikeyd after the analytics: per apikeyd
# one key publisher (LISTEN), one drainer, analytics sessions kept idle
# (at most as many as its analytics lane has workers, 4).
my %sessions = map { ($_->[0] => $_->[1]) } @{ psql(q{SELECT application_name, count(*)
    FROM pg_stat_activity WHERE application_name LIKE 'apikeyd%' GROUP BY 1}) };
is_deeply([ @sessions{qw(apikeyd-keys apikeyd)} ], [2, 2],
          'one key publisher and one drainer session per apikeyd');
ok(($sessions{'apikeyd-api'} // 0) >= 2 && $sessions{'apikeyd-api'} <= 8,
   'analytics sessions: at least one, at most 4 per apikeyd')
    or diag("apikeyd-api sessions: " . ($sessions{'apikeyd-api'} // 0));
diag('PostgreSQL sessions of 2 apikeyd: '
     . join(', ', map { "$_ $sessions{$_}" } sort keys %sessions));

done_testing();
