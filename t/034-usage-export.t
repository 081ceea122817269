# The usage export and the self-serve view (docs/api.md, docs/cli.md):
#   GET /api/orgs/{org_id}/api-keys/usage/export?from&to&interval&format
#   GET /api/keys/self/usage
#   apikeyctl usage export --org --from --to [--interval] [--format]
# Real traffic through nginx plus rollup rows of past days inserted here;
# the export's totals against the per-key view's for the same range, CSV
# (read by an RFC 4180 reading written here) and NDJSON, byte equality with
# apikeyctl, the auth matrix, bad parameters, and a self-serve key that
# can read its own usage only.

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use POSIX qw(strftime);

start_postgres();
start_apikeyd();

our $A = apikeyctl('org', 'create', 'export-a')->{org_id};
our $B = apikeyctl('org', 'create', 'export-b')->{org_id};
our %K;
sub mk { my ($n, $org, @a) = @_; $K{$n} = new_key($org, $n, @a); $K{$n}{org} = $org }
mk('adminA',   $A, '--scopes', 'usage:read');
mk('clientA',  $A);
mk('otherA',   $A, '--scopes', 'orders.read');
mk('revokedA', $A);
mk('adminB',   $B, '--scopes', 'usage:read');
mk('clientB',  $B);
apikeyctl('key', 'revoke', $K{revokedA}{key_id});

sub auth { return defined $_[0] ? ["Authorization: Bearer $_[0]"] : [] }
sub api { my ($path, $key) = @_; return apikeyd_get($path, auth($key)) }
sub export_path { "/api/orgs/$_[0]/api-keys/usage/export" . ($_[1] // '') }
sub key_path { "/api/orgs/$_[0]/api-keys/$_[1]/usage" . ($_[2] // '') }

our $day = 86400;
sub date_at { strftime('%Y-%m-%d', gmtime($_[0])) }
our $today = date_at(time);
our $from_d = date_at(time - 10 * $day);
our $to_d   = date_at(time + $day);
our $from_h = date_at(time - 3 * $day);

# Rollup rows of past days and hours, endpoint labels CSV must quote.
sub rollup {
    my ($table, $org, $key, $bucket, $ep, $m, $s2, $s4, $s5, $other, $ms, $hist) = @_;
    psql(qq{INSERT INTO $table (org_id, key_id, bucket, endpoint, method, requests,
            status_2xx, status_3xx, status_4xx, status_5xx, status_other,
            response_time_ms_sum, latency_hist)
            VALUES (:'org', :'key', :'b', :'ep', :'m', :'req', :'s2', 1, :'s4', :'s5',
                    :'o', :'ms', :'hist')},
         { org => $org, key => $key, b => $bucket, ep => $ep, m => $m,
           req => $s2 + 1 + $s4 + $s5 + $other, s2 => $s2, s4 => $s4, s5 => $s5,
           o => $other, ms => $ms, hist => $hist });
}
sub insert_past {
    my $d2 = date_at(time - 2 * $day) . 'T00:00:00Z';
    my $d3 = date_at(time - 3 * $day) . 'T00:00:00Z';
    my $h2 = date_at(time - 2 * $day) . 'T10:00:00Z';
    my $old = date_at(time - 20 * $day) . 'T00:00:00Z';    # before from
    for my $t (['api_key_usage_daily', $d2], ['api_key_usage_hourly', $h2]) {
        rollup($t->[0], $A, $K{clientA}{key_id}, $t->[1], 'a,b', 'GET', 10, 2, 1, 1, 150.5, '[41:42]={10,5}');
        rollup($t->[0], $A, $K{clientA}{key_id}, $t->[1], qq{say "hi"\nbye}, 'POST', 3, 0, 0, 0, 9.25, '[41:41]={4}');
        rollup($t->[0], $A, $K{otherA}{key_id}, $t->[1], '/plain', 'GET', 7, 0, 0, 0, 8, '[41:41]={8}');
        rollup($t->[0], $B, $K{clientB}{key_id}, $t->[1], '/b-only', 'GET', 99, 0, 0, 0, 100, '[41:41]={100}');
    }
    rollup('api_key_usage_daily', $A, $K{clientA}{key_id}, $d3, '/orders', 'GET', 20, 0, 0, 0, 21, '[41:41]={21}');
    rollup('api_key_usage_daily', $A, $K{clientA}{key_id}, $old, '/orders', 'GET', 500, 0, 0, 0, 501, '[41:41]={501}');
}

# RFC 4180, read independently of the C++: -> [ [field, ...], ... ]
sub parse_csv {
    my ($text) = @_;
    my (@rows, @row, $field);
    my $i = 0;
    my $n = length $text;
    while ($i < $n) {
        my $c = substr($text, $i, 1);
        if ($c eq '"') {
            $field = '';
            $i++;
            while (1) {
                die "unterminated quote\n" if $i >= $n;
                my $q = index($text, '"', $i);
                die "unterminated quote\n" if $q < 0;
                $field .= substr($text, $i, $q - $i);
                if (substr($text, $q + 1, 1) eq '"') { $field .= '"'; $i = $q + 2; next }
                $i = $q + 1;
                last;
            }
        } else {
            my ($plain) = substr($text, $i) =~ /^([^,\n"]*)/;
            $field = $plain;
            $i += length $plain;
        }
        push @row, $field;
        my $sep = substr($text, $i, 1);
        $i++;
        if ($sep eq "\n") { push @rows, [@row]; @row = () }
        elsif ($sep ne ',') { die "bad character after a field at $i\n" }
    }
    die "last line not terminated\n" if @row;
    return \@rows;
}

our @COLS = qw(bucket key_id key_name endpoint method requests status_2xx status_3xx
               status_4xx status_5xx status_other response_time_ms_sum avg_ms p95_ms);

# CSV text -> list of hashes (header checked)
sub csv_records {
    my ($text) = @_;
    my $rows = parse_csv($text);
    my $head = shift @$rows;
    is_deeply($head, \@COLS, 'CSV header: the documented columns in order');
    return map { my %h; @h{@COLS} = @$_; \%h } @$rows;
}

# {key_id => {requests, errors_4xx, errors_5xx}} of a list of export lines
sub totals_by_key {
    my %t;
    for my $r (@_) {
        $t{ $r->{key_id} }{requests}   += $r->{requests};
        $t{ $r->{key_id} }{errors_4xx} += $r->{status_4xx};
        $t{ $r->{key_id} }{errors_5xx} += $r->{status_5xx};
    }
    return \%t;
}

# the per-key view's totals over the same range
sub view_totals {
    my ($key_id, $q) = @_;
    my $j = api(key_path($A, $key_id, $q), $K{adminA}{key})->{json};
    my %t = (requests => 0, errors_4xx => 0, errors_5xx => 0);
    for my $p (@{ $j->{series} }) { $t{$_} += $p->{$_} for keys %t }
    return \%t;
}

# (outside the blocks: their code sees the harness's lexical $b)
sub by_export_order {
    $a->{bucket} cmp $b->{bucket} or $a->{key_id} cmp $b->{key_id}
        or $a->{endpoint} cmp $b->{endpoint} or $a->{method} cmp $b->{method}
}

sub dec { my $r = shift; return { %$r, map { $_ => ($r->{$_} eq '' ? undef : $r->{$_} + 0) }
    qw(requests status_2xx status_3xx status_4xx status_5xx status_other
       response_time_ms_sum avg_ms p95_ms) } }

our $HTTP = apikey_http_config(usage => '1m');
our $CONF = <<"EOF";
location /orders/ { apikey on; apikey_endpoint "orders"; alias $ENV{TEST_NGINX_HTML_DIR}/; log_not_found off; }
EOF
our @TRAFFIC = ((['clientA', '/orders/t.txt', 200]) x 5, (['clientA', '/orders/missing.txt', 404]) x 2,
                (['otherA', '/orders/t.txt', 200]) x 3, (['clientB', '/orders/t.txt', 200]) x 4);

run_tests();

__DATA__

=== TEST 1: real traffic through nginx
--- http_config eval: $HTTP
--- config eval: $CONF
--- raw_request eval
[ map { build_request("GET $_->[1]", ["X-API-Key: $K{ $_->[0] }{key}"]) } @TRAFFIC ]
--- error_code eval: [ map { $_->[2] } @TRAFFIC ]
--- check
insert_past();
# The rollups hold the traffic (the per-key view sees it).
ok_eventually(sub { view_totals($K{clientA}{key_id}, "?from=$today&to=$to_d")->{requests} == 7
                    && view_totals($K{otherA}{key_id}, "?from=$today&to=$to_d")->{requests} == 3 },
              10, 'the traffic reached the daily rollup');



=== TEST 2: CSV export, day interval: the org's lines, totals equal to the per-key view's
--- port: $TEST_APIKEY_API_PORT
--- raw_request eval: build_request('GET ' . export_path($A, "?from=$from_d&to=$to_d"), auth($K{adminA}{key}))
--- error_code: 200
--- response_headers
Content-Type: text/csv; charset=utf-8
Transfer-Encoding: chunked
Cache-Control: no-store
--- check
my $r = $responses->[0];
ok(!defined $r->{error}, 'the chunked body ends with its last chunk');
my @lines = map { dec($_) } csv_records($r->{body});
my %keys = map { $_->{key_id} => 1 } @lines;
is_deeply([ sort keys %keys ], [ sort map { $K{$_}{key_id} } qw(clientA otherA) ],
          'only org A keys with usage in the range');
ok(!(grep { $_->{endpoint} eq '/b-only' } @lines), "org B's rows never appear");
ok(!(grep { $_->{requests} == 501 + 0 || $_->{requests} == 500 } @lines), 'a row before from is out');
for my $k (qw(clientA otherA)) {
    my $want = view_totals($K{$k}{key_id}, "?from=$from_d&to=$to_d&interval=day");
    is_deeply(totals_by_key(@lines)->{ $K{$k}{key_id} }, $want,
              "$k: export totals == per-key view totals (requests, 4xx, 5xx)");
}
ok(!(grep { $_->{requests} != $_->{status_2xx} + $_->{status_3xx} + $_->{status_4xx}
            + $_->{status_5xx} + $_->{status_other} } @lines), 'requests = 2xx+3xx+4xx+5xx+other on every line');
my @sorted = sort by_export_order @lines;
is_deeply(\@lines, \@sorted, 'ordered by bucket, key, endpoint, method');
my ($q) = grep { $_->{method} eq 'POST' } @lines;
is($q->{endpoint}, qq{say "hi"\nbye}, 'a label with quotes and a newline round-trips through CSV');
my ($c) = grep { $_->{endpoint} eq 'a,b' } @lines;
ok($c, 'a label with a comma round-trips through CSV');
is($c->{key_name}, 'clientA', 'key_name');
is($c->{bucket}, date_at(time - 2 * $day) . 'T00:00:00Z', 'bucket: RFC 3339 UTC');
is_deeply([ @$c{qw(requests status_2xx status_3xx status_4xx status_5xx status_other)} ],
          [ 15, 10, 1, 2, 1, 1 ], 'the row counts as stored');
is($c->{response_time_ms_sum}, 150.5, 'latency sum (ms)');
is($c->{avg_ms}, 10.033, 'avg_ms = sum / requests, to the microsecond');
# 15 latencies: 10 in bucket 40, 5 in bucket 41; rank 14.25 is in bucket 41.
my $lo = int((64 << 5) * 2**(0 / 8) + 0.5) / 1000;    # bound(40)
my $hi = int((64 << 5) * 2**(1 / 8) + 0.5) / 1000;    # bound(41)
my $p95 = $lo * ($hi / $lo)**((14.25 - 10) / 5);
ok(abs($c->{p95_ms} - $p95) < 0.0015, 'p95_ms from the row\'s histogram') or diag("$c->{p95_ms} vs $p95");
my ($today_line) = grep { $_->{key_id} eq $K{clientA}{key_id} && $_->{bucket} eq "${today}T00:00:00Z" } @lines;
is($today_line->{requests}, 7, "today's real traffic: one line, 7 requests");
is($today_line->{status_4xx}, 2, "today's real traffic: the two 404s");
is($today_line->{endpoint}, 'orders', "today's real traffic: the endpoint label");



=== TEST 3: NDJSON and hour interval: the same lines, totals equal to the hourly view's
--- port: $TEST_APIKEY_API_PORT
--- check
my $csv = api(export_path($A, "?from=$from_d&to=$to_d"), $K{adminA}{key});
my $nd = api(export_path($A, "?from=$from_d&to=$to_d&format=ndjson"), $K{adminA}{key});
is($nd->{headers}{'content-type'}, 'application/x-ndjson', 'NDJSON content type');
my @csv = map { dec($_) } csv_records($csv->{body});
my @nd = map { JSON::PP->new->decode($_) } split /\n/, $nd->{body};
is(scalar @nd, scalar @csv, 'as many NDJSON lines as CSV lines');
is_deeply([ keys %{ $nd[0] } ] && [ sort keys %{ $nd[0] } ], [ sort @COLS ], 'NDJSON fields: the CSV columns');
is_deeply(\@nd, \@csv, 'every NDJSON line equals its CSV line');
my $h = api(export_path($A, "?from=$from_h&to=$to_d&interval=hour&format=ndjson"), $K{adminA}{key});
is($h->{status}, 200, 'interval=hour: 200');
my @hl = map { JSON::PP->new->decode($_) } split /\n/, $h->{body};
ok(!(grep { $_->{bucket} !~ /T\d\d:00:00Z$/ } @hl), 'hourly buckets');
for my $k (qw(clientA otherA)) {
    my $want = view_totals($K{$k}{key_id}, "?from=$from_h&to=$to_d&interval=hour");
    is_deeply(totals_by_key(@hl)->{ $K{$k}{key_id} }, $want, "$k: hourly export totals == hourly view totals");
}
my $empty = api(export_path($A, '?from=2001-01-01&to=2001-01-02'), $K{adminA}{key});
is($empty->{body}, join(',', @COLS) . "\n", 'no rows: the header alone');
is(api(export_path($A, '?from=2001-01-01&to=2001-01-02&format=ndjson'), $K{adminA}{key})->{body}, '',
   'no rows, NDJSON: an empty body');



=== TEST 4: apikeyctl usage export prints the API's bytes
--- port: $TEST_APIKEY_API_PORT
--- check
for my $q (["day", "csv", $from_d], ["day", "ndjson", $from_d], ["hour", "csv", $from_h], ["hour", "ndjson", $from_h]) {
    my ($iv, $fmt, $from) = @$q;
    my $api = api(export_path($A, "?from=$from&to=$to_d&interval=$iv&format=$fmt"), $K{adminA}{key});
    my ($rc, $out, $err) = apikeyctl_raw('usage', 'export', '--org', $A, '--from', $from, '--to', $to_d,
                                         '--interval', $iv, '--format', $fmt);
    is($rc, 0, "apikeyctl usage export ($iv, $fmt): exit 0") or diag($err);
    ok(length $out > 100, "($iv, $fmt): lines printed");
    is($out, $api->{body}, "($iv, $fmt): byte for byte the API's body");
}
my ($rc, $out) = apikeyctl_raw('usage', 'export', '--org', $A, '--from', $from_d, '--to', $to_d);
is($out, api(export_path($A, "?from=$from_d&to=$to_d"), $K{adminA}{key})->{body},
   'defaults: day and csv, as the API');
($rc, $out) = apikeyctl_raw('usage', 'export', '--org', $B, '--from', $from_d, '--to', $to_d);
unlike($out, qr/\Q$K{clientA}{key_id}\E/, "org B's export has none of org A's keys");
like($out, qr{/b-only}, "org B's export has its own rows");



=== TEST 5: apikeyctl usage export: bad command lines and an unknown org
--- check
for my $c ([ [ '--org', $A, '--from', $from_d ], qr/missing --to/ ],
           [ [ '--org', $A, '--from', $from_d, '--to', $to_d, '--format', 'xml' ], qr/format must be csv or ndjson/ ],
           [ [ '--org', $A, '--from', $from_d, '--to', $to_d, '--interval', 'week' ], qr/interval must be hour or day/ ],
           [ [ '--org', $A, '--from', '2024-01-01', '--to', '2024-03-01', '--interval', 'hour' ], qr/31 days/ ],
           [ [ '--org', $A, '--from', 'yesterday', '--to', $to_d ], qr/from must be an RFC 3339/ ],
           [ [ '--org', $A, '--from', $to_d, '--to', $from_d ], qr/from must be before to/ ]) {
    my ($rc, $out, $err) = apikeyctl_raw('usage', 'export', @{ $c->[0] });
    is($rc, 2, "usage error exit 2: @{ $c->[0] }[2..$#{ $c->[0] }]");
    like($err, $c->[1], 'the message says why');
    is($out, '', 'nothing on stdout');
}
my ($rc, $out, $err) = apikeyctl_raw('--json', 'usage', 'export', '--org', $A, '--from', $from_d, '--to', $to_d);
is($rc, 2, '--json does not apply (exit 2)');
($rc, $out, $err) = apikeyctl_raw('usage', 'export', '--org', 'f0f0f0f0-0000-4000-8000-00000000abcd',
                                  '--from', $from_d, '--to', $to_d);
is($rc, 1, 'unknown org: exit 1');
like($err, qr/unknown org/, 'unknown org: said so');



=== TEST 6: export: the analytics routes' auth and org isolation, 400 for bad parameters
--- port: $TEST_APIKEY_API_PORT
--- check
my $q = "?from=$from_d&to=$to_d";
is(api(export_path($A, $q))->{status}, 401, 'no key: 401');
is(api(export_path($A, $q), 'ak_garbage')->{status}, 401, 'garbage key: 401');
is(api(export_path($A, $q), $K{revokedA}{key})->{status}, 401, 'revoked key: 401');
is(api(export_path($A, $q), $K{clientA}{key})->{status}, 403, 'a key without usage:read: 403');
my $other = api(export_path($A, $q), $K{adminB}{key});
is($other->{status}, 404, "another org's admin: 404");
is($other->{body}, api(export_path('f0f0f0f0-0000-4000-8000-00000000abcd', $q), $K{adminB}{key})->{body},
   "another org's id answers as a nonexistent one");
unlike(api(export_path($B, $q), $K{adminB}{key})->{body}, qr/\Q$K{clientA}{key_id}\E/,
       "org B's export never has org A's keys");
for my $bad ('?from=yesterday', '?interval=week', '?format=xml', '?format=csv&format=csv',
             '?from=2023-01-01&to=2024-03-01', '?interval=hour&from=2024-01-01&to=2024-03-01',
             '?from=2024-03-05&to=2024-03-01', '?from=%zz') {
    my $r = api(export_path($A, $bad), $K{adminA}{key});
    is($r->{status}, 400, "bad parameter $bad: 400");
    ok(defined $r->{json}{error}, "bad parameter $bad: a JSON error");
}
is(api("/api/orgs/not-a-uuid/api-keys/usage/export", $K{adminA}{key})->{status}, 400, 'org id not a UUID: 400');



=== TEST 7: GET /api/keys/self/usage: the caller's own key, no scope needed
--- port: $TEST_APIKEY_API_PORT
--- check
my $q = "?from=$from_d&to=$to_d&interval=day";
for my $k (qw(clientA otherA adminA)) {
    my $r = api("/api/keys/self/usage$q", $K{$k}{key});
    is($r->{status}, 200, "$k: 200");
    is($r->{json}{key}{key_id}, $K{$k}{key_id}, "$k: its own key");
    my $view = api(key_path($A, $K{$k}{key_id}, $q), $K{adminA}{key})->{json};
    is(delete $r->{json}{key}{org_id}, $A, "$k: key.org_id names its org");
    delete $_->{complete_until} for $view, $r->{json};
    is_deeply($r->{json}, $view, "$k: the per-key view of that key");
}
my $r = api("/api/keys/self/usage?key_id=$K{otherA}{key_id}&org_id=$B", $K{clientA}{key});
is($r->{json}{key}{key_id}, $K{clientA}{key_id}, 'query parameters cannot name another key');
is(api("/api/keys/$K{otherA}{key_id}/usage", $K{clientA}{key})->{status}, 404,
   'no route takes another key id (404)');
is(api("/api/keys/self/usage", $K{clientB}{key})->{json}{key}{key_id}, $K{clientB}{key_id},
   "org B's key reads its own usage only");
is(api("/api/keys/self/usage")->{status}, 401, 'no key: 401');
is(api("/api/keys/self/usage", $K{revokedA}{key})->{status}, 401, 'revoked key: 401');
is(api("/api/keys/self/usage", 'ak_garbage')->{status}, 401, 'unknown key: 401');
is(api("/api/keys/self/usage?interval=week", $K{clientA}{key})->{status}, 400, 'bad parameter: 400');
