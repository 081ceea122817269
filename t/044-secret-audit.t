# Secret audit of a full run. A key is shown once (apikeyctl key create /
# key rotate) and never again (DESIGN.md, docs/keys.md). This file does one
# realistic run with everything turned up to its most talkative setting:
#
#   - PostgreSQL logging every statement with its bound parameters in full,
#     and every connection;
#   - nginx with 2 workers, error_log at debug, an access_log in the default
#     combined format, `apikey on` on a static location and on a proxied one
#     (proxy_pass to an upstream server {} of the same nginx), usage capture on;
#   - apikeyd draining, publishing, serving the API, the dashboard and
#     /metrics, and spooling through a short PostgreSQL outage;
#   - apikeyctl: an org, an admin key (usage:read), client keys (one with its
#     own prefix), a rotation (--grace 0: the old key expires at once), a
#     revocation, listings, and a key pasted where an id belongs;
#   - traffic with keys in X-API-Key and in Authorization: Bearer, one-
#     character typos of real keys, a key in the query string (never
#     accepted), revoked and expired keys; every analytics endpoint with the
#     admin key and with wrong keys; the dashboard; /metrics.
#
# Then, with everything stopped cleanly, it reads every artefact of the run
# and asserts, one test per artefact, that none holds a key: neither a whole
# key nor any 8 characters of its secret beyond the hint (the hint, prefix_
# plus 4 characters, is what the API shows). PostgreSQL's log may hold
# SHA-256(key) as a bound parameter: a hash, not the key, and not searched.
#
# Exceptions, by design: apikeyctl's stdout of `key create` / `key rotate`
# prints the new key once (its other keys are still searched); the access
# log is nginx's own `$request` line, which holds the query string, so the
# key sent only in a query string is not searched there (noted instead).
#
# A failing assertion names the artefact, the line (and byte offset), the
# key's name, hint and id, and a context line with every key masked: test
# output is a log too, so it never prints key material itself. Positive
# controls show the search does find keys, and that each log is non-trivial.

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use Test::Apikey::Postgres qw(pg_dump_sql);
use Test::Apikey::Keys qw(key_hint secret_windows key_material_in key_hit_text);
use Digest::SHA qw(sha256 sha256_hex);
use File::Find qw(find);
use JSON::PP ();

my $UA = 'User-Agent: t044-audit/1.0';

my %K;       # name -> { name, key, key_id }: every key this file created
my @CTL;     # every apikeyctl call: { label, rc, out, err, prints }
my @API;     # every apikeyd answer: [ label, status, wanted, raw bytes ]
my @SENT;    # every request sent to nginx: [ label, status, wanted ]

sub all_keys { return map { $K{$_} } sort keys %K }

# --- apikeyctl, every call recorded ------------------------------------------------

# ctl_call($label, $json, @args) -> { label, rc, out, err }: runs apikeyctl
# (with --json when $json) and records the call for the audit. $label names
# the call in reports, so it never holds a key.
sub ctl_call {
    my ($label, $json, @args) = @_;
    my ($rc, $out, $err) = apikeyctl_raw(($json ? '--json' : ()), @args);
    my $call = { label => $label, rc => $rc, out => $out, err => $err };
    push @CTL, $call;
    return $call;
}

# ctl($label, @args) -> the decoded JSON of a call that must succeed.
sub ctl {
    my ($label, @args) = @_;
    my $c = ctl_call($label, 1, @args);
    die "apikeyctl $label failed (exit $c->{rc})\n" if $c->{rc} != 0;
    return $c->{out} =~ /\S/ ? JSON::PP->new->decode($c->{out}) : undef;
}

# mk_key($name, $label, @args): `key create` / `key rotate`, which print the
# new key once on stdout by design; the call is marked as printing it, so
# the audit of that stdout looks for every other key.
sub mk_key {
    my ($name, $label, @args) = @_;
    my $j = ctl($label, @args);
    $CTL[-1]{prints} = $name;
    $K{$name} = { name => $name, key => $j->{key}, key_id => $j->{key_id} };
    return $K{$name};
}

# --- requests ----------------------------------------------------------------------

# send_nginx / send_api($label, $path, \@headers, $wanted_status): one request,
# recorded with its status (and, for apikeyd, the answer for the audit).
sub send_nginx {
    my ($label, $path, $headers, $want) = @_;
    my $r = http_get($path, [ @$headers, $UA ], timeout => 5);
    push @SENT, [ $label, $r->{status}, $want ];
    return $r;
}

sub send_api {
    my ($label, $path, $headers, $want) = @_;
    my $r = apikeyd_get($path, [ @{ $headers // [] }, $UA ], timeout => 5);
    push @API, [ $label, $r->{status}, $want, $r->{raw} // '' ];
    return $r;
}

sub bearer { return ["Authorization: Bearer $K{$_[0]}{key}"] }
sub xkey   { return ["X-API-Key: $K{$_[0]}{key}"] }

# unplanned([label, status, wanted, ...], ...) -> "label: status (want N)" of the misses
sub unplanned {
    return map { "$_->[0]: $_->[1] (want $_->[2])" } grep { $_->[1] != $_->[2] } @_;
}

# --- the audit ----------------------------------------------------------------------

# A context for a hit with every key masked: the line (text) or 100 bytes
# around it (binary, non-printable bytes as "."), every base62 run that holds
# key material replaced by <key NAME>. Withheld if anything still matched.
sub masked_context {
    my ($bytes, $offset, $binary) = @_;
    my $ctx;
    if ($binary) {
        my $from = $offset < 40 ? 0 : $offset - 40;
        ($ctx = substr($bytes, $from, 100)) =~ s/[^\x20-\x7e]/./g;
    } else {
        my $from = rindex($bytes, "\n", $offset) + 1;
        my $to = index($bytes, "\n", $offset);
        $ctx = substr($bytes, $from, ($to < 0 ? length $bytes : $to) - $from);
    }
    $ctx =~ s{([0-9A-Za-z]{8,})}{
        my $run = $1;
        my ($h) = key_material_in($run, all_keys());
        $h ? "<key $h->{name}>" : $run
    }ge;
    $ctx = substr($ctx, 0, 240) . '...' if length $ctx > 240;
    return key_material_in($ctx, all_keys()) ? '(context withheld)' : $ctx;
}

# What kind of line a hit is in: its masked context without time, pid and
# connection number, up to the first quote, "?" or masked key
# ('[debug] http header: ', 'GET /items').
sub line_kind {
    my ($ctx) = @_;
    $ctx =~ s{^\d{4}[-/]\d\d[-/]\d\d[ T]\S+ (?:UTC )?}{};
    $ctx =~ s/^(\[\w+\]) \d+#\d+: (?:\*\d+ )?/$1 /;
    $ctx =~ s/^"//;    # a continuation line of a quoted dump (http proxy header)
    $ctx =~ s/(?:["'?]|<key ).*//s;
    return substr($ctx, 0, 60);
}

# report_lines($artefact, \@found, $binary) -> the failure report: a summary
# per key and (text) per kind of line, then the first 15 hits with a masked
# context. No key material.
sub report_lines {
    my ($artefact, $found, $binary) = @_;
    my (%per, %kind, @lines);
    $per{"$_->[2]{name} ($_->[2]{hint})"}{ $_->[2]{kind} }++ for @$found;
    push @lines, sprintf '%s: %d occurrence(s) of key material', $artefact, scalar @$found;
    push @lines, map { my $k = $_; "  key $k: " . join(', ', map { "$per{$k}{$_} $_" } sort keys %{ $per{$k} }) }
        sort keys %per;
    unless ($binary) {
        $kind{ line_kind(masked_context($_->[1], $_->[2]{offset})) }++ for @$found;
        push @lines, map { "  in $kind{$_} line(s): $_" } sort { $kind{$b} <=> $kind{$a} || $a cmp $b } keys %kind;
    }
    for my $f (grep { defined } @$found[0 .. 14]) {
        my ($part, $bytes, $hit) = @$f;
        push @lines, sprintf '  %s%s', (defined $part ? "$part, " : ''), key_hit_text($hit);
        push @lines, '      ' . masked_context($bytes, $hit->{offset}, $binary);
    }
    push @lines, sprintf '  ... and %d more', @$found - 15 if @$found > 15;
    return @lines;
}

# audit($artefact, \@parts, except => [names], binary => 1) -> hits.
# One assertion: no key (of all but `except`) in any part. A part is
# [label or undef, bytes, name of the key it prints by design or undef].
sub audit {
    my ($artefact, $parts, %opt) = @_;
    my %skip = map { $_ => 1 } @{ $opt{except} || [] };
    my @found;
    for my $p (@$parts) {
        my ($label, $bytes, $own) = @$p;
        my @keys = grep { !$skip{ $_->{name} } && !(defined $own && $_->{name} eq $own) } all_keys();
        push @found, map { [ $label, $bytes, $_ ] } key_material_in($bytes // '', @keys);
    }
    ok(!@found, "no key material in $artefact")
        or diag(join "\n", report_lines($artefact, \@found, $opt{binary}));
    return \@found;
}

# read_tree($dir) -> ([relative path, bytes], ...) of every file under $dir.
sub read_tree {
    my ($dir) = @_;
    my @files;
    find({ no_chdir => 1, wanted => sub { push @files, $_ if -f $_ } }, $dir) if -d $dir;
    return map { [ substr($_, length($dir) + 1), slurp($_) // '' ] } sort @files;
}

# =====================================================================================
# The run
# =====================================================================================

start_postgres(log_statements => 1);
start_apikeyd();

my $org = ctl('org create', 'org', 'create', 'secret-audit')->{org_id};
mk_key('admin',  'key create admin',  'key', 'create', '--org', $org, '--name', 'admin', '--scopes', 'usage:read');
mk_key('client', 'key create client', 'key', 'create', '--org', $org, '--name', 'client', '--scopes', 'orders.read');
mk_key('bearer', 'key create bearer', 'key', 'create', '--org', $org, '--name', 'bearer', '--prefix', 'live');
mk_key('query',  'key create query',  'key', 'create', '--org', $org, '--name', 'query');
mk_key('rev',    'key create rev',    'key', 'create', '--org', $org, '--name', 'rev');
mk_key('rot',    'key create rot',    'key', 'create', '--org', $org, '--name', 'rot', '--expires-in', '90d');
mk_key('rot_new', 'key rotate rot', 'key', 'rotate', $K{rot}{key_id}, '--grace', '0');
ctl('key revoke rev', 'key', 'revoke', $K{rev}{key_id});
ctl('key list --json', 'key', 'list', '--org', $org);
ctl_call('key list (text)', 0, 'key', 'list', '--org', $org);
ctl_call('org list (text)', 0, 'org', 'list');
{   # an operator pastes a key where the key id belongs: refused, not echoed
    my $c = ctl_call('key revoke <a key instead of its id>', 1, 'key', 'revoke', $K{client}{key});
    isnt($c->{rc}, 0, 'apikeyctl key revoke with a key instead of an id fails');
}
my %TYPO = (client => key_typo($K{client}{key}), bearer => key_typo($K{bearer}{key}),
            admin => key_typo($K{admin}{key}));

wait_key_results({ $K{client}{key} => 'ok', $K{bearer}{key} => 'ok', $K{rev}{key} => 'revoked',
                   $K{rot}{key} => 'expired', $K{rot_new}{key} => 'ok', $TYPO{client} => 'malformed' },
                 10, 'key table settled');

# --- nginx: 2 workers, debug, access log, static + proxied, capture on ----------------

my $ACCESS_LOG = servroot_path('logs', 'access.log');
start_nginx(
    workers     => 2,
    log_level   => 'debug',
    http_config => apikey_http_config(usage => '4m',
                                      upstream => 'location / { return 200 "upstream\n"; }'),
    config      => <<"EOF",
access_log $ACCESS_LOG;
location /t.txt { apikey on; }
location /api/  { apikey on; proxy_pass http://127.0.0.1:$ENV{TEST_NGINX_UPSTREAM_PORT}/; }
EOF
);
wait_until(sub { apikeyd_metrics()->{apikey_usage_segment_attached} == 1 }, 10,
           'apikeyd attached the usage segment');

my $Q = $K{query}{key};
my @ROUND = (
    [ 'client, X-API-Key, static',           '/t.txt',               xkey('client'),   200 ],
    [ 'client, X-API-Key, proxied',          '/api/items',           xkey('client'),   200 ],
    [ 'bearer, Authorization, static',       '/t.txt',               bearer('bearer'), 200 ],
    [ 'bearer, Authorization, proxied',      '/api/items?page=2',    bearer('bearer'), 200 ],
    [ 'typo of client, X-API-Key',           '/api/items',           ["X-API-Key: $TYPO{client}"], 401 ],
    [ 'typo of bearer, Authorization',       '/t.txt',               ["Authorization: Bearer $TYPO{bearer}"], 401 ],
    [ 'key in the query string, static',     "/t.txt?api_key=$Q",    [], 401 ],
    [ 'key in the query string, proxied',    "/api/items?api_key=$Q", [], 401 ],
    [ 'query-string key beside a header key', "/api/items?api_key=$Q", xkey('client'), 200 ],
    [ 'revoked key, X-API-Key',              '/api/items',           xkey('rev'),      401 ],
    [ 'expired (rotated) key, Authorization', '/t.txt',              bearer('rot'),    401 ],
    [ 'rotated-in key, X-API-Key, proxied',  '/api/items',           xkey('rot_new'),  200 ],
);
send_nginx(@$_) for (@ROUND) x 3;

# A short PostgreSQL outage: records go to the spool (read while they are there).
my @SPOOL;
{
    wait_usage_rows($K{client}{key_id}, 9, 15, 'usage of client committed');
    wait_usage_rows($K{rot_new}{key_id}, 3, 15, 'usage of rot_new committed');
    stop_postgres();
    send_nginx(@$_) for @ROUND[0 .. 3];
    my $spooled = eval { wait_until(sub { apikeyd_metrics()->{apikey_spool_bytes} > 0 }, 15,
                                    'records spooled'); 1 };
    @SPOOL = read_tree(servroot_path('spool'));
    start_postgres();
    ok($spooled && @SPOOL, 'during the PostgreSQL outage apikeyd spooled records to disk');
    eval { wait_until(sub { apikeyd_metrics()->{apikey_spool_bytes} == 0 }, 20, 'spool replayed') }
        or diag($@);
    push @SPOOL, read_tree(servroot_path('spool'));
}
wait_usage_rows($K{client}{key_id}, 11, 15, 'usage after the outage committed');
ok(!unplanned(@SENT), 'nginx answered every request as planned')
    or diag(join "\n", unplanned(@SENT));

# --- apikeyd: every analytics endpoint, wrong keys, dashboard, metrics ------------------

{
    my $base = "/api/orgs/$org/api-keys";
    send_api('org listing', "$base/usage", bearer('admin'), 200);
    send_api('org listing, dormant_days=0', "$base/usage?dormant_days=0", bearer('admin'), 200);
    send_api("key usage of $_", "$base/$K{$_}{key_id}/usage", bearer('admin'), 200) for sort keys %K;
    send_api('client, hourly, top 3', "$base/$K{client}{key_id}/usage?interval=hour&top=3", bearer('admin'), 200);
    send_api('client, May 2024', "$base/$K{client}{key_id}/usage?from=2024-05-01&to=2024-06-01&interval=day",
             bearer('admin'), 200);
    send_api('bad top', "$base/$K{client}{key_id}/usage?top=0", bearer('admin'), 400);
    send_api('org id not a UUID', '/api/orgs/not-a-uuid/api-keys/usage', bearer('admin'), 400);
    send_api('no key', "$base/usage", [], 401);
    send_api('admin key in X-API-Key', "$base/usage", xkey('admin'), 401);
    send_api('admin key in the query string', "$base/usage?api_key=$K{admin}{key}", [], 401);
    send_api('typo of admin', "$base/usage", ["Authorization: Bearer $TYPO{admin}"], 401);
    send_api('revoked key', "$base/usage", bearer('rev'), 401);
    send_api('expired key', "$base/usage", bearer('rot'), 401);
    send_api('key without usage:read', "$base/usage", bearer('client'), 403);
    send_api("dashboard $_", $_, [], 200) for qw(/ /app.js /chart.js /util.js /style.css /favicon.svg);
    send_api('healthz', '/healthz', [], 200);
}
my $metrics = send_api('metrics', '/metrics', [], 200)->{body} // '';
ok(!unplanned(@API), 'apikeyd answered every request as planned')
    or diag(join "\n", unplanned(@API));

# --- stop cleanly, collect -------------------------------------------------------------

my $key_table = slurp($ENV{TEST_NGINX_APIKEY_KEYS}) // '';
my $usage_seg = slurp($ENV{TEST_NGINX_APIKEY_USAGE}) // '';
stop_nginx();
stop_apikeyd();
push @SPOOL, read_tree(servroot_path('spool'));
my $dump = pg_dump_sql();
stop_postgres();

my %LOG = (
    error   => nginx_error_log(),
    access  => slurp($ACCESS_LOG) // '',
    apikeyd => apikeyd_log(),
    pg      => postgres_log(),
);

# =====================================================================================
# Positive controls: the search finds keys and fragments, reports without them
# =====================================================================================

{
    my $c = $K{client};
    my $scratch = servroot_path('scratch.txt');
    spew($scratch, join "\n", 'a first line', "GET /t.txt?api_key=$c->{key} HTTP/1.1",
         'piece: ' . (secret_windows($c->{key}))[10] . '.', "typo: $TYPO{bearer}",
         'hints: ' . join(' ', map { key_hint($_->{key}) } all_keys()), '');
    my $text = slurp($scratch);
    my @hits = key_material_in($text, all_keys());
    is_deeply([ map { "$_->{line} $_->{name} $_->{kind}" } @hits ],
              [ '2 client full key', '3 client secret fragment', '4 bearer secret fragment' ],
              'control: a key, 8 characters of a secret and a typo are found, with their line; hints alone are not');
    my $bin = ("\0" x 100) . "x\x01$c->{key}\xff" . ("\0" x 100);
    my ($bh) = key_material_in($bin, all_keys());
    is($bh && "$bh->{name} $bh->{kind} $bh->{offset}", 'client full key ' . (102 + length key_hint($c->{key})),
       'control: a key between binary bytes is found, at its byte offset');
    my @report = report_lines('scratch.txt', [ map { [ undef, $text, $_ ] } @hits ], 0);
    like($report[0], qr/^scratch\.txt: 3 occurrence/, 'control: the report names the artefact and counts');
    is_deeply([ key_material_in(join("\n", @report), all_keys()) ], [],
              'control: the report itself holds no key material (it names keys by hint and id)');
}

# =====================================================================================
# The logs are not trivially clean
# =====================================================================================

like($LOG{pg}, qr/LOG:  statement: /, 'PostgreSQL log: statements are logged');
like($LOG{pg}, qr/DETAIL:  parameters: \$1 = /, 'PostgreSQL log: bound parameters are logged');
like($LOG{pg}, qr/connection authorized: /, 'PostgreSQL log: connections are logged');
ok(index($LOG{pg}, '\\x' . sha256_hex($K{client}{key})) >= 0,
   "PostgreSQL log: parameters in full (client's key_hash, a SHA-256, which is allowed)");
ok(   $LOG{error} =~ /\[debug\] .*http header: "X-API-Key: /
   && $LOG{error} =~ /\[debug\] .*http header: "Authorization: Bearer /
   && $LOG{error} =~ /\[debug\] .*http request line: "GET \/t\.txt\?api_key=/,
   'nginx error.log: the debug lines where keys would be are there (X-API-Key, Authorization, ?api_key=)');
like($LOG{error}, qr/\[debug\] .*http proxy header:/, 'nginx error.log: debug lines of the proxy module');
like($LOG{error}, qr/\[info\] .*apikey/, 'nginx error.log: the module logged at info');
{
    my %pids = map { $_ => 1 } $LOG{error} =~ /\[debug\] (\d+)#\d+: \*\d+ /g;
    ok(keys %pids >= 2, 'nginx error.log: debug lines from 2 worker processes')
        or diag('worker pids seen: ' . join(' ', sort keys %pids));
}
{
    my @lines = split /\n/, $LOG{access};
    my $to_nginx = grep { $_->[1] } @SENT;    # answered requests (status 0: none)
    is(scalar(grep { m{"GET /(?:t\.txt|api/)} } @lines), $to_nginx,
       'nginx access.log: one line per request sent (the upstream server has no access log)');
    ok((grep { /" 200 / } @lines) && (grep { /" 401 / } @lines), 'nginx access.log: 200s and 401s');
}
like($LOG{apikeyd}, qr/\S/, "apikeyd's log is not empty");
like($metrics, qr/^apikey_\w+/m, '/metrics has apikey_ samples');
like($dump, qr/^COPY public\.api_keys /m, 'pg_dump has the api_keys data');
is(scalar(grep { index($dump, "\t" . key_hint($_->{key}) . "\t") >= 0 } all_keys()), scalar(keys %K),
   "pg_dump has every key's hint");
ok(index($key_table, sha256($K{client}{key})) >= 0, "the key-table segment holds client's SHA-256");
ok(index($usage_seg, '/api/') >= 0, 'the usage segment holds records (endpoint /api/)');

# =====================================================================================
# The audit: one assertion per artefact
# =====================================================================================

audit('nginx error.log (debug, 2 workers, static + proxied)', [ [ undef, $LOG{error} ] ]);
audit('nginx access.log (keys sent in headers)', [ [ undef, $LOG{access} ] ], except => ['query']);
audit("apikeyd's log", [ [ undef, $LOG{apikeyd} ] ]);
audit("PostgreSQL's log (log_statement = all, parameters in full)", [ [ undef, $LOG{pg} ] ]);
audit("apikeyctl's stderr and stdout (" . scalar(@CTL) . ' calls)',
      [ map { ([ "$_->{label}: stderr", $_->{err} ], [ "$_->{label}: stdout", $_->{out}, $_->{prints} ]) } @CTL ]);
audit("apikeyd's API, dashboard and health answers (" . scalar(@API) . ')',
      [ map { [ $_->[0], $_->[3] ] } @API ]);
audit('/metrics text', [ [ undef, $metrics ] ]);
audit('pg_dump of the database', [ [ undef, $dump ] ]);
audit('key-table segment file', [ [ undef, $key_table ] ], binary => 1);
audit('usage-ring segment file', [ [ undef, $usage_seg ] ], binary => 1);
audit('spool directory (' . scalar(@SPOOL) . ' file reads)', [ map { [ "spool/$_->[0]", $_->[1] ] } @SPOOL ],
      binary => 1);

{   # A control on a real artefact: nginx's own $request in the access log
    # carries the query string, so the key sent there is found (keys in query
    # strings are never accepted, and end up in access logs).
    my @q = grep { key_material_in($_, $K{query}) } split /\n/, $LOG{access};
    is(scalar @q, 9, 'control: the audit finds the query-string key in nginx access.log ($request), '
                     . 'on each of the 9 requests that sent it');
}

done_testing();
