# nginx and apikeyd are independent processes: nginx fails closed (503)
# until a key table exists, picks it up without a reload, keeps using the
# last table while apikeyd (or PostgreSQL) is down, and catches up when
# they are back.

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use Time::HiRes qw(time sleep);

start_postgres();

my $org  = apikeyctl('org', 'create', 'availability');
my $good = apikeyctl('key', 'create', '--org', $org->{org_id}, '--name', 'good');
my $bad  = apikeyctl('key', 'create', '--org', $org->{org_id}, '--name', 'to-revoke');
my $pg_k = apikeyctl('key', 'create', '--org', $org->{org_id}, '--name', 'pg-outage');

ok(!-e $ENV{TEST_NGINX_APIKEY_KEYS}, 'no key table before apikeyd ever ran');

my %conf = (
    workers     => 2,
    http_config => "apikey_keys $ENV{TEST_NGINX_APIKEY_KEYS};",
    config      => 'location /t.txt { apikey on; add_header X-Result $apikey_result always; }',
);
start_nginx(%conf);

sub get    { http_get('/t.txt', ["X-API-Key: $_[0]"], timeout => 2) }
sub status { get(@_)->{status} }
sub result { get(@_)->{headers}{'x-result'} // '' }

# n requests in a row (fresh connections, so both workers get some)
sub all_status {
    my ($key, $want, $n) = @_;
    my @bad = grep { $_ != $want } map { status($key) } 1 .. $n;
    return !@bad;
}

# --- before apikeyd: fail closed ------------------------------------------------

{
    my $r = get($good->{key});
    is($r->{status}, 503, 'no key table yet: 503');
    is($r->{headers}{'x-result'}, 'unavailable', 'no key table yet: $apikey_result unavailable');
    ok(!exists $r->{headers}{'www-authenticate'}, 'no key table yet: no WWW-Authenticate');
    ok(all_status($good->{key}, 503, 10), 'no key table yet: every request 503');
    like(nginx_error_log(), qr/apikey: key table "\Q$ENV{TEST_NGINX_APIKEY_KEYS}\E" not readable/,
         'error.log says the key table is not readable');
}

# --- apikeyd starts: picked up without a reload ------------------------------------

{
    my $t0 = time;
    start_apikeyd();
    my $up = time - $t0;
    my $t = eval { wait_until(sub { status($good->{key}) == 200 }, 5, 'key accepted') };
    my $since = time - $t0;
    ok(defined $t && $since < 2 + $up, 'apikeyd started: the key works within 2 s, no reload')
        or diag(sprintf 'after %.2f s (apikeyd took %.2f s to be healthy)', $since, $up);
    diag(sprintf 'key table picked up %.0f ms after apikeyd was healthy', ($since - $up) * 1000);
    ok(eval { wait_until(sub { all_status($good->{key}, 200, 10) }, 3, 'both workers') },
       'apikeyd started: every worker accepts the key');
    like(nginx_error_log(), qr/apikey: key table "\Q$ENV{TEST_NGINX_APIKEY_KEYS}\E" mapped/,
         'error.log says the key table was mapped');
}

# --- apikeyd killed: the last table keeps working ------------------------------------

kill_apikeyd();
{
    ok(-e $ENV{TEST_NGINX_APIKEY_KEYS}, 'apikeyd killed: the key table file is still there');
    ok(all_status($good->{key}, 200, 10), 'apikeyd killed: keys keep working');
    sleep 1.2;    # past the workers' once-a-second re-map check
    ok(all_status($good->{key}, 200, 10), 'apikeyd killed: still working a second later');
    is(result($bad->{key}), 'ok', 'apikeyd killed: the other key works too');

    reload_nginx(%conf);
    ok(eval { wait_until(sub { all_status($good->{key}, 200, 10) }, 3, 'new workers') },
       'apikeyd killed, nginx reloaded: new workers map the last table');

    apikeyctl('key', 'revoke', $bad->{key_id});    # nobody publishes this yet
    note('revoked while apikeyd is down: ' . result($bad->{key}) . ' (stale table)');
}

# --- apikeyd back: catches up ----------------------------------------------------------

{
    restart_apikeyd();
    my $back = time;
    is(status($good->{key}), 200, 'apikeyd restarted: the good key still 200');
    my $t = eval { wait_until(sub { result($bad->{key}) eq 'revoked' }, 5, 'revocation published') };
    my $after = time - $back;
    ok(defined $t && $after < 2,
       sprintf('a key revoked while apikeyd was down is 401 %.0f ms after it is back', $after * 1000));
    ok(eval { wait_until(sub { all_status($bad->{key}, 401, 10) }, 3, 'all workers') },
       'revoked key: 401 on every worker');
    ok(all_status($good->{key}, 200, 10), 'the good key still works on every worker');
}

# --- apikeyd stopped cleanly: the table stays --------------------------------------------

stop_apikeyd();
{
    ok(-e $ENV{TEST_NGINX_APIKEY_KEYS}, 'apikeyd stopped (TERM): the key table file is still there');
    ok(all_status($good->{key}, 200, 10), 'apikeyd stopped (TERM): keys keep working');
    reload_nginx(%conf);
    ok(eval { wait_until(sub { all_status($good->{key}, 200, 10) }, 3, 'new workers') },
       'apikeyd stopped, nginx reloaded: still 200');
}
start_apikeyd();

# --- PostgreSQL down: apikeyd and nginx keep the last table ---------------------------------

{
    stop_postgres();
    ok(all_status($pg_k->{key}, 200, 10), 'PostgreSQL down: keys keep working');
    my $h;
    my $t = eval { wait_until(sub { $h = apikeyd_get('/healthz');
                                    $h->{json} && $h->{json}{database} eq 'unreachable' },
                              15, 'apikeyd notices') };
    ok(defined $t, '/healthz says the database is unreachable');
    is($h->{status}, 200, '/healthz still answers 200');
    ok($h->{json}{key_table}{ready}, '/healthz key_table.ready stays true');
    ok(all_status($pg_k->{key}, 200, 10), 'PostgreSQL down for a while: keys still work');

    start_postgres();
    my $back = time;
    apikeyctl('key', 'revoke', $pg_k->{key_id});
    my $r = eval { wait_until(sub { result($pg_k->{key}) eq 'revoked' }, 20, 'revocation after outage') };
    ok(defined $r, 'PostgreSQL back: a new revocation reaches nginx')
        or diag($@);
    diag(sprintf 'revocation after a PostgreSQL restart visible after %.1f s', time - $back);
    ok(all_status($good->{key}, 200, 10), 'PostgreSQL back: the good key still works');
}

stop_apikeyd();
stop_nginx();
unlike(nginx_error_log(), qr/\[(?:error|alert|crit|emerg)\]|exited on signal/,
       'no errors in nginx error.log');

done_testing();
