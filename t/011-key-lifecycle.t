# Key lifecycle as nginx sees it: a new key works within a second, a
# revocation reaches every worker within a second of the commit, rotation
# keeps the old key for the grace period (or not, with --grace 0), and
# expiry is enforced by the clock without any database change.

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use Time::HiRes qw(time sleep);

start_postgres();
start_apikeyd();

my $org = apikeyctl('org', 'create', 'lifecycle');
sub key { apikeyctl('key', 'create', '--org', $org->{org_id}, @_) }

# Two workers; the second listener uses reuseport so that connections from
# different client ports are spread over both workers, and X-Pid says which
# worker answered.
my $port2 = $ENV{TEST_NGINX_UPSTREAM_PORT};
start_nginx(
    workers     => 2,
    http_config => <<"EOF",
apikey_keys $ENV{TEST_NGINX_APIKEY_KEYS};
server {
    listen 127.0.0.1:$port2 reuseport;
    location /t.txt { apikey on; add_header X-Result \$apikey_result always; add_header X-Pid \$pid always; }
}
EOF
    config => <<'EOF',
location /t.txt { apikey on; add_header X-Result $apikey_result always; add_header X-Pid $pid always; }
location /admin/ {
    apikey on;
    apikey_scope admin;
    alias html/;
    add_header X-Result $apikey_result always;
}
EOF
);

sub get {
    my ($key, %o) = @_;
    my $path = delete $o{path} // '/t.txt';
    return http_get($path, ["X-API-Key: $key"], timeout => 2, %o);
}
sub status { get(@_)->{status} }
sub result { get(@_)->{headers}{'x-result'} // '' }

# Polls (every 5 ms) until $cond->() holds; -> seconds, or undef after $max.
sub poll {
    my ($cond, $max) = @_;
    my $t0 = time;
    while (time - $t0 < $max) {
        return time - $t0 if $cond->();
        sleep 0.005;
    }
    return undef;
}

# Until every worker answered $want for the key (via the reuseport listener):
# -> seconds since $t0, or undef after $max.
sub poll_all_workers {
    my ($key, $want, $t0, $max) = @_;
    my (%seen, %done);
    while (time - $t0 < $max) {
        my $r = get($key, port => $port2);
        my $pid = $r->{headers}{'x-pid'} // '';
        $seen{$pid} = 1;
        $done{$pid} = 1 if $r->{status} == $want;
        delete $done{$pid} if $r->{status} != $want;
        return time - $t0 if keys %seen >= 2 && keys %done == keys %seen
            && keys %done >= 2;
        sleep 0.002;
    }
    return undef;
}

# --- a key created after nginx started ------------------------------------

{
    my $t0 = time;
    my $k = key('--name', 'late');
    my $created = time;
    my $t = poll(sub { status($k->{key}) == 200 }, 3);
    ok(defined $t && $t < 1, 'a key created after nginx started works within 1 s')
        or diag('not accepted within 3 s');
    diag(sprintf 'new key usable after %.0f ms (apikeyctl took %.0f ms)',
                 ($t // 3) * 1000, ($created - $t0) * 1000);
    my $w = poll_all_workers($k->{key}, 200, time, 3);
    ok(defined $w, '... and on both workers');
}

# --- revocation -------------------------------------------------------------

my @delays;
for my $i (1 .. 3) {
    my $k = key('--name', "rev$i");
    poll(sub { status($k->{key}) == 200 }, 3);
    is(status($k->{key}), 200, "revocation $i: key works before");
    poll_all_workers($k->{key}, 200, time, 3);

    my ($rc, $out, $err) = apikeyctl_raw('--json', 'key', 'revoke', $k->{key_id});
    my $committed = time;    # apikeyctl has returned: the revocation is committed
    is($rc, 0, "revocation $i: apikeyctl key revoke exits 0") or diag($err);

    my $t = poll_all_workers($k->{key}, 401, $committed, 3);
    ok(defined $t && $t < 1, "revocation $i: 401 on every worker within 1 s of the commit")
        or diag(defined $t ? sprintf('took %.0f ms', $t * 1000) : 'not within 3 s');
    push @delays, $t // 3;
    is(result($k->{key}), 'revoked', "revocation $i: \$apikey_result revoked");
}
my ($max) = sort { $b <=> $a } @delays;
diag(sprintf 'revocation visible after %s ms (on both workers; max %.0f ms)',
             join('/', map { sprintf '%.0f', $_ * 1000 } @delays), $max * 1000);

{
    my $k = key('--name', 'twice');
    my $first = apikeyctl('key', 'revoke', $k->{key_id});
    ok(!$first->{already_revoked}, 'first revoke: already_revoked false');
    my $again = apikeyctl('key', 'revoke', $k->{key_id});
    ok($again->{already_revoked}, 'revoking again: exit 0, already_revoked true');
    is($again->{revoked_at}, $first->{revoked_at}, 'revoking again keeps the original time');

    my ($rc, $out, $err) = apikeyctl_raw('key', 'rotate', $k->{key_id});
    is($rc, 1, 'rotating a revoked key exits 1');
    is(scalar(my @l = split /\n/, $err), 1, 'rotating a revoked key: one line on stderr');
    like($err, qr/revoked/, 'rotating a revoked key: says it is revoked');
}

# --- rotation with a grace period ----------------------------------------------

{
    my $old = key('--name', 'rot-grace', '--scopes', 'admin');
    poll(sub { status($old->{key}) == 200 }, 3);
    my $new = apikeyctl('key', 'rotate', $old->{key_id}, '--grace', '1h');
    is($new->{rotated_from}, $old->{key_id}, 'rotate: rotated_from is the old key');
    isnt($new->{key_id}, $old->{key_id}, 'rotate: a new key id');
    my $t = poll(sub { status($new->{key}) == 200 }, 3);
    ok(defined $t && $t < 1, 'rotate --grace 1h: the new key works within 1 s');
    is(status($old->{key}), 200, 'rotate --grace 1h: the old key still works');
    is(result($old->{key}), 'ok', 'rotate --grace 1h: old key result ok');
    is(status($new->{key}, path => '/admin/t.txt'), 200, 'the new key keeps the scopes');
    is(status($old->{key}, path => '/admin/t.txt'), 200, 'the old key keeps working in scoped locations');
    my $left = psql(q{select extract(epoch from expires_at - now())::int from api_keys where id = :'id'},
                    { id => $old->{key_id} })->[0][0];
    ok($left > 3500 && $left <= 3600, "old key expires in about 1 h ($left s)");
    is(psql(q{select count(*) from api_keys where rotated_from = :'id'}, { id => $old->{key_id} })->[0][0],
       1, 'one replacement row');
}

# --- rotation with --grace 0 ------------------------------------------------------

{
    my $old = key('--name', 'rot-now');
    poll(sub { status($old->{key}) == 200 }, 3);
    poll_all_workers($old->{key}, 200, time, 3);
    my $new = apikeyctl('key', 'rotate', $old->{key_id}, '--grace', '0');
    my $committed = time;
    my $t = poll_all_workers($old->{key}, 401, $committed, 3);
    ok(defined $t && $t < 1, 'rotate --grace 0: the old key is 401 on every worker within 1 s')
        or diag(defined $t ? sprintf('took %.0f ms', $t * 1000) : 'not within 3 s');
    is(result($old->{key}), 'expired', 'rotate --grace 0: old key result expired');
    my $n = poll(sub { status($new->{key}) == 200 }, 3);
    ok(defined $n && $n < 1, 'rotate --grace 0: the new key works');
    poll_all_workers($new->{key}, 200, time, 3);
    is(status($new->{key}, port => $port2), 200, 'rotate --grace 0: new key 200');
}

# --- expiry by the clock alone ---------------------------------------------------

{
    my $k = key('--name', 'short-lived', '--expires-in', '2s');
    my $created = time;
    poll(sub { status($k->{key}) == 200 }, 1.5);
    is(status($k->{key}), 200, '--expires-in 2s: works at first');
    my $t = poll(sub { result($k->{key}) eq 'expired' }, 4);
    ok(defined $t, '--expires-in 2s: expired afterwards, without any database change');
    my $at = time - $created;
    ok($at >= 1 && $at < 3.5, sprintf('--expires-in 2s: expired after %.1f s', $at));
    is(status($k->{key}), 401, '--expires-in 2s: then 401');
}

# --- deleting the org drops its keys ------------------------------------------------

{
    my $org2 = apikeyctl('org', 'create', 'doomed');
    my $k = apikeyctl('key', 'create', '--org', $org2->{org_id}, '--name', 'k');
    poll(sub { status($k->{key}) == 200 }, 3);
    is(status($k->{key}), 200, 'key of a second org works');
    psql(q{DELETE FROM orgs WHERE id = :'id'}, { id => $org2->{org_id} });
    my $t = poll(sub { result($k->{key}) eq 'unknown' }, 3);
    ok(defined $t && $t < 1, 'deleting the org: its key is unknown within 1 s');
}

# --- scopes changed in the database are published -----------------------------------

{
    my $k = key('--name', 'promoted');
    poll(sub { status($k->{key}) == 200 }, 3);
    is(status($k->{key}, path => '/admin/t.txt'), 403, 'no admin scope: 403');
    psql(q{UPDATE api_keys SET scopes = '{admin}' WHERE id = :'id'}, { id => $k->{key_id} });
    my $t = poll(sub { status($k->{key}, path => '/admin/t.txt') == 200 }, 3);
    ok(defined $t && $t < 1, 'scope added in the database: 200 within 1 s');
}

stop_nginx();
unlike(nginx_error_log(), qr/\[(?:error|alert|crit|emerg)\]|exited on signal/,
       'no errors in nginx error.log');
unlike(apikeyd_log(), qr/\berror\b|exception/i, 'no errors in apikeyd.log');

done_testing();
