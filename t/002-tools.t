# apikeyd and apikeyctl as commands: help and flag errors, /healthz,
# idempotent migrations, and apikeyctl's error contract (non-zero exit,
# exactly one line on stderr, never a stack trace).

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use Test::Apikey::Util qw(run_cmd);
use Test::Apikey::Daemon qw(apikeyd_path apikeyctl_path);

my $APIKEYD   = apikeyd_path();
my $APIKEYCTL = apikeyctl_path();

# One line on stderr, starting with "<tool>: ", and nothing that looks like
# a crash (C++ exception text, abort, sanitizer or Perl trace).
sub one_line_error {
    my ($tool, $err, $name) = @_;
    my @lines = split /\n/, $err;
    is(scalar @lines, 1, "$name - exactly one line on stderr")
        or diag("stderr was:\n$err");
    like($lines[0] // '', qr/^\Q$tool\E: \S/, "$name - stderr starts with '$tool: '");
    unlike($err, qr/terminate called|what\(\)|Aborted|core dumped|std::|
                    AddressSanitizer|\bat \S+ line \d+|Traceback/x,
           "$name - no stack trace or exception dump");
}

# --- apikeyd: help and flags (no database needed) -------------------------

{
    my ($rc, $out, $err) = run_cmd([ $APIKEYD, '--help' ], timeout => 10);
    is($rc, 0, 'apikeyd --help exits 0');
    for my $flag (qw(--db --node --keys --usage --listen --spool --raw-events
                     --retention-months)) {
        like($out, qr/(?:^|\s)\Q$flag\E\b/m, "apikeyd --help mentions $flag");
    }
    is($err, '', 'apikeyd --help writes nothing to stderr');
}

for my $case (
    [ [ '--retention-months', 'abc' ], '--retention-months', 'abc' ],
    [ [ '--retention-months', '0' ],   '--retention-months', '0' ],
    [ [ '--raw-events', 'maybe' ],     '--raw-events',       'maybe' ],
    [ [ '--listen', 'nope' ],          '--listen',           'nope' ],
    [ [ '--listen', '127.0.0.1:99999' ], '--listen',         '99999' ],
) {
    my ($args, $flag, $value) = @$case;
    my $name = "apikeyd @$args";
    my ($rc, $out, $err) = run_cmd([ $APIKEYD, @$args ], timeout => 10);
    is($rc, 2, "$name - exits 2");
    one_line_error('apikeyd', $err, $name);
    like($err, qr/\Q$flag\E/, "$name - the error names $flag");
    like($err, qr/\Q$value\E/, "$name - the error names the value");
}

for my $args ([ '--no-such-flag', 'x' ], [ '--no-such-flag=x' ], [ '--no-such-flag' ]) {
    my $name = "apikeyd @$args";
    my ($rc, $out, $err) = run_cmd([ $APIKEYD, @$args ], timeout => 10);
    is($rc, 2, "$name - exits 2");
    one_line_error('apikeyd', $err, $name);
    like($err, qr/unknown option --no-such-flag/, "$name - says the option is unknown");
}

{
    my ($rc, $out, $err) = run_cmd([ $APIKEYD, '--db' ], timeout => 10);
    is($rc, 2, 'apikeyd --db without a value exits 2');
    one_line_error('apikeyd', $err, 'apikeyd --db without a value');
}

# --- apikeyd --check-config (no database needed) -------------------------

{
    my $dir = servroot_path('check-config');
    mkdir $dir, 0700 or die "mkdir $dir: $!\n";
    my $conf = "$dir/apikeyd.conf";
    spew($conf, "node = from-file\nretention-months = 5\nkeys = $dir/keys\n"
                . "usage = $dir/usage\ndb = host=db1,db2 password=s3cret\n");
    my ($rc, $out, $err) = run_cmd([ $APIKEYD, '--check-config', '--config', $conf,
                                     '--retention-months', '7' ], timeout => 10);
    is($rc, 0, 'apikeyd --check-config with a valid file exits 0');
    like($out, qr/^node = from-file$/m, '--check-config prints the file\'s node');
    like($out, qr/^retention-months = 7$/m, '... and the flag that overrides the file');
    like($out, qr/^db = password=\*{8} host=db1,db2$/m, '... and the db with its password masked');
    unlike("$out$err", qr/s3cret/, '... never the password itself');
    is($err, "apikeyd: the configuration file $conf syntax is ok\n"
             . "apikeyd: configuration test is successful\n", '... and says so on stderr, as nginx -t');

    ($rc, $out, $err) = run_cmd([ $APIKEYD, '--check-config', '--config', $conf,
                                  '--key-resync', '0' ], timeout => 10);
    is($rc, 2, 'apikeyd --check-config with a bad flag exits 2');
    is($out, '', '... prints no options');
    like($err, qr/\Aapikeyd: invalid --key-resync "0".*\napikeyd: configuration test failed\n\z/s,
         '... names the flag, then says the test failed');

    ($rc, $out, $err) = run_cmd([ $APIKEYD, '--check-config', '--keys', '/tmp/keys' ],
                                timeout => 10);
    is($rc, 2, 'apikeyd --check-config with a world-writable --keys directory exits 2');
    like($err, qr/refusing "\/tmp".*\napikeyd: configuration test failed\n\z/s,
         '... with the trust rule\'s reason');
}

# --- apikeyctl without a database ----------------------------------------

{
    my ($rc, $out, $err) = run_cmd(
        [ $APIKEYCTL, '--db', 'host=/nonexistent-apikey-test port=1 dbname=x', 'org', 'list' ],
        timeout => 30);
    isnt($rc, 0, 'apikeyctl with an unreachable --db exits non-zero');
    is($out, '', 'apikeyctl with an unreachable --db - stdout empty');
    one_line_error('apikeyctl', $err, 'apikeyctl with an unreachable --db');
    like($err, qr/connect|connection/i, 'apikeyctl with an unreachable --db - says it cannot connect');
    like($err, qr/failed: .+ Is the server running/,
         "apikeyctl with an unreachable --db - libpq's hint kept on the line");
}

{
    my ($rc, $out, $err) = run_cmd(
        [ $APIKEYCTL, '--db', 'host=/nonexistent-apikey-test port=1 dbname=x', '--json',
          'key', 'create', '--org', '00000000-0000-4000-8000-000000000000', '--name', 'x' ],
        timeout => 30);
    isnt($rc, 0, 'apikeyctl --json key create with an unreachable --db exits non-zero');
    is($out, '', 'apikeyctl --json with an unreachable --db - stdout empty');
    one_line_error('apikeyctl', $err, 'apikeyctl --json with an unreachable --db');
}

# --- with PostgreSQL ------------------------------------------------------

start_postgres();    # also runs `apikeyctl migrate` once

{
    my $m = apikeyctl('migrate');
    is_deeply($m->{applied}, [], 'apikeyctl migrate again applies nothing');
    like($m->{schema_version}, qr/^\d+$/, 'apikeyctl migrate reports schema_version');
    my $m2 = apikeyctl('migrate');
    is_deeply($m2->{applied}, [], 'apikeyctl migrate a third time applies nothing');
    is($m2->{schema_version}, $m->{schema_version}, '... same schema_version');

    my $rows = psql('select count(*), count(distinct version), max(version) from schema_migrations');
    my ($n, $distinct, $max) = @{ $rows->[0] };
    is($n, $distinct, 'schema_migrations has one row per version');
    is($max, $m->{schema_version}, 'schema_version is the highest applied version');
    my @files = glob(Test::Apikey::Util::repo_root() . '/tools/migrations/*.sql');
    is($n, scalar @files, 'one schema_migrations row per migration file')
        or diag("rows $n, files @files");

    my ($rc, $out, $err) = apikeyctl_raw('migrate');
    is($rc, 0, 'apikeyctl migrate (text) exits 0 when up to date');
    like($out, qr/up to date/i, 'apikeyctl migrate (text) says the schema is up to date');
}

my $org = apikeyctl('org', 'create', 'tools-test');
like($org->{org_id}, qr/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/,
     'org create returns a uuid');

for my $case (
    [ 'unknown org', 1,
      [ 'key', 'create', '--org', '00000000-0000-4000-8000-000000000000', '--name', 'x' ],
      qr/unknown org/ ],
    [ 'bad org id', 2,
      [ 'key', 'create', '--org', 'acme', '--name', 'x' ], qr/org/ ],
    [ 'bad scope (uppercase)', 2,
      [ 'key', 'create', '--org', $org->{org_id}, '--name', 'x', '--scopes', 'Orders:Write' ],
      qr/scope/ ],
    [ 'bad scope (leading dash)', 2,
      [ 'key', 'create', '--org', $org->{org_id}, '--name', 'x', '--scopes', 'a,-b' ],
      qr/scope/ ],
    [ 'too many scopes', 2,
      [ 'key', 'create', '--org', $org->{org_id}, '--name', 'x', '--scopes', join(',', 'a' .. 'i') ],
      qr/scope/ ],
    [ 'bad duration', 2,
      [ 'key', 'create', '--org', $org->{org_id}, '--name', 'x', '--expires-in', '3months' ],
      qr/duration/ ],
    [ 'bad grace', 2,
      [ 'key', 'rotate', '00000000-0000-4000-8000-000000000000', '--grace', 'soon' ],
      qr/duration/ ],
    [ 'bad prefix', 2,
      [ 'key', 'create', '--org', $org->{org_id}, '--name', 'x', '--prefix', 'AK' ],
      qr/prefix/ ],
    [ 'missing --name', 2,
      [ 'key', 'create', '--org', $org->{org_id} ], qr/--name/ ],
    [ 'unknown key', 1,
      [ 'key', 'revoke', '00000000-0000-4000-8000-000000000000' ], qr/key/ ],
    [ 'unknown command', 2, [ 'frobnicate' ], qr/frobnicate/ ],
    [ 'unknown option', 2, [ 'org', 'list', '--bogus' ], qr/--bogus/ ],
) {
    my ($name, $want_rc, $args, $re) = @$case;
    for my $json (0, 1) {
        my $label = "apikeyctl $name" . ($json ? ' (--json)' : '');
        my ($rc, $out, $err) = apikeyctl_raw(($json ? ('--json') : ()), @$args);
        is($rc, $want_rc, "$label - exit $want_rc");
        is($out, '', "$label - stdout empty");
        one_line_error('apikeyctl', $err, $label);
        like($err, $re, "$label - the message says what is wrong");
    }
}

is(psql(q{select count(*) from api_keys})->[0][0], 0, 'failed key creations left no rows');

{   # names go in and come out as UTF-8 whatever the conninfo or the
    # environment say about client_encoding
    my $name = "Z\xc3\xbcrich \xe2\x82\xac";    # "Zürich €" in UTF-8 bytes
    local $ENV{PGCLIENTENCODING} = 'LATIN1';
    my ($rc, $out, $err) = run_cmd(
        [ $APIKEYCTL, '--db', "$ENV{TEST_APIKEY_DB} client_encoding=LATIN1", '--json',
          'org', 'create', $name ], timeout => 30);
    is($rc, 0, 'apikeyctl org create with client_encoding=LATIN1 exits 0') or diag($err);
    my $created = eval { JSON::PP->new->decode($out) } // {};
    my $stored = psql_one(q{SELECT encode(convert_to(name, 'UTF8'), 'hex') FROM orgs
                             WHERE id = :'id'}, { id => $created->{org_id} // '' });
    is($stored, unpack('H*', $name), 'the org name is stored as the UTF-8 it was given');
    ($rc, $out, $err) = run_cmd(
        [ $APIKEYCTL, '--db', "$ENV{TEST_APIKEY_DB} client_encoding=LATIN1", 'org', 'list' ],
        timeout => 30);
    like($out, qr/\Q$name\E/, 'apikeyctl org list prints it back as UTF-8') or diag($err);
}

{   # a database without the schema: the error says to run migrate
    psql(q{CREATE DATABASE unmigrated});
    (my $db = $ENV{TEST_APIKEY_DB}) =~ s/dbname=\S+/dbname=unmigrated/;
    for my $args ([ 'org', 'list' ], [ 'org', 'create', 'x' ]) {
        my $label = "apikeyctl @$args on a database without the schema";
        my ($rc, $out, $err) = run_cmd([ $APIKEYCTL, '--db', $db, @$args ], timeout => 30);
        is($rc, 1, "$label - exit 1");
        one_line_error('apikeyctl', $err, $label);
        like($err, qr/apikeyctl migrate/, "$label - says to run apikeyctl migrate");
    }
}

# --- apikeyd /healthz ------------------------------------------------------

apikeyctl('key', 'create', '--org', $org->{org_id}, '--name', 'k1');
start_apikeyd();
{
    my $h;
    wait_until(sub { $h = apikeyd_get('/healthz'); $h->{json} && $h->{json}{key_table}{ready} },
               5, 'key table ready');
    is($h->{status}, 200, 'GET /healthz 200');
    like($h->{headers}{'content-type'} // '', qr{^application/json}, '/healthz is JSON');
    is($h->{json}{status}, 'ok', '/healthz status ok');
    ok(JSON::PP::is_bool($h->{json}{key_table}{ready}) && $h->{json}{key_table}{ready},
       '/healthz key_table.ready is true (a JSON boolean)');
    is($h->{json}{key_table}{keys}, 1, '/healthz key_table.keys counts the key');
    is($h->{json}{node}, 'test', '/healthz node is the --node name');
    ok(-f $ENV{TEST_NGINX_APIKEY_KEYS}, 'apikeyd wrote the key-table file');
    is(sprintf('%04o', (stat $ENV{TEST_NGINX_APIKEY_KEYS})[2] & 07777), '0644',
       'key-table file is mode 0644');
    is(apikeyd_get('/nope')->{status}, 404, 'unknown path 404');
}

{   # a second apikeyd on the same port must refuse (one line, exit != 0),
    # not share the port with the first one (SO_REUSEPORT would let the
    # kernel split requests between the two daemons)
    my ($rc, $out, $err);
    my $ok = eval {
        ($rc, $out, $err) = run_cmd([ $APIKEYD, '--db', $ENV{TEST_APIKEY_DB},
            '--keys', "$ENV{TEST_NGINX_SERVROOT}/other_keys",
            '--usage', "$ENV{TEST_NGINX_SERVROOT}/other_usage",
            '--spool', "$ENV{TEST_NGINX_SERVROOT}/spool2",
            '--listen', "127.0.0.1:$ENV{TEST_APIKEY_API_PORT}" ], timeout => 5);
        1;
    };
    ok($ok, 'second apikeyd on a busy --listen port exits (does not also listen there)')
        or diag("it was still running after 5 s: $@");
    SKIP: {
        skip 'second apikeyd did not exit', 3 unless $ok;
        isnt($rc, 0, 'second apikeyd on a busy port exits non-zero');
        unlike($err, qr/terminate called|what\(\)|Aborted|core dumped/,
               'second apikeyd on a busy port - no exception dump');
        like($err, qr/listen|address/i, 'second apikeyd on a busy port - says why');
    }
}

stop_apikeyd();

done_testing();
