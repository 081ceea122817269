# Usage capture end to end: requests with a key become exactly one
# api_key_usage row each, with the right fields; hourly and daily rollups
# and api_keys.request_count / last_used_* add up; requests without a usable
# key are counted on /metrics, never stored; `apikey_usage off` and
# `apikey off` locations record nothing; `--raw-events off` keeps rollups
# and counters but no raw rows.

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use Time::HiRes qw(time sleep);

# --- helpers --------------------------------------------------------------------

sub unrecorded {
    my ($m, $result) = @_;
    return $m->{qq(apikey_requests_unrecorded_total{result="$result"})} // 0;
}

# --- setup ----------------------------------------------------------------------

start_postgres();
start_apikeyd();

my $org  = apikeyctl('org', 'create', 'usage-rows');
my $k    = apikeyctl('key', 'create', '--org', $org->{org_id}, '--name', 'main', '--scopes', 'read');
my $rev  = apikeyctl('key', 'create', '--org', $org->{org_id}, '--name', 'to-revoke');
my $gone = apikeyctl('key', 'create', '--org', $org->{org_id}, '--name', 'deleted');
apikeyctl('key', 'revoke', $rev->{key_id});
psql(q{DELETE FROM api_keys WHERE id = :'id'}, { id => $gone->{key_id} });

my $html = $ENV{TEST_NGINX_HTML_DIR};
# endpoint labels cut to the record's 96 bytes (at configuration time): a
# long location name, and a constant label whose cut falls inside a UTF-8
# character (kept whole or dropped whole, never split)
my $LONG_LOC = '/long-' . ('0123456789' x 10) . '/';                 # 107 bytes
my $EURO_EP  = ('e' x 95) . "\xe2\x82\xac";                           # 98 bytes
my $up   = $ENV{TEST_NGINX_UPSTREAM_PORT};
my %conf = (
    http_config => apikey_http_config(usage => '4m',
                                      upstream => 'location / { return 500 "boom\n"; }'),
    config => <<"EOF",
location /static/ { apikey on; alias $html/; log_not_found off; add_header X-Result \$apikey_result always; }
location /up/     { apikey on; proxy_pass http://127.0.0.1:$up; }
location /admin/  { apikey on; apikey_scope admin; alias $html/; }
location /orders/ { apikey on; apikey_endpoint "orders"; alias $html/; }
location /var/    { apikey on; apikey_endpoint "v-\$request_method"; alias $html/; }
location ~ \\.json\$ { apikey on; }
location /nocap/  { apikey on; apikey_usage off; alias $html/; }
location /open/   { alias $html/; }
location $LONG_LOC { apikey on; alias $html/; }
location /euro/   { apikey on; apikey_endpoint "$EURO_EP"; alias $html/; }
EOF
);
start_nginx(%conf);

my $t = wait_until(sub { apikeyd_metrics()->{apikey_usage_segment_attached} == 1 }, 5,
                   'apikeyd attached the usage segment');
note(sprintf 'usage segment attached %.0f ms after nginx started', $t * 1000);
wait_until(sub { http_get('/static/t.txt', ["X-API-Key: $rev->{key}"])->{status} == 401 },
           5, 'key table published');    # this request is recorded under $rev (revoked)
my $rev_sent = 1;

# --- traffic with one key -------------------------------------------------------

my $KEY = $k->{key};
my $UA  = 't020-agent/1.0 (test)';
my $LONG_UA = 'L' x 50 . '0123456789' x 5;              # 100 bytes of ASCII
my $UTF_UA  = 'ab' . ("\xe2\x82\xac" x 30);              # "ab" + 30 x U+20AC: 92 bytes
my $BAD_UA  = "bad\xff\xfe\xc3(ua\x01\x7f\\N'\"end";     # not UTF-8, control bytes, COPY escapes
my $BAD_CUT_UA = ('c' x 62) . "\xe2\x82\xac\xe2\x82" . 'z' x 10;  # a 3-byte char across the 64-byte cut

# each: [method, path, status, endpoint, result, [extra headers]]
my @plan;
push @plan, ['GET', '/static/t.txt', 200, '/static/', 'ok'] for 1 .. 8;
push @plan, ['HEAD', '/static/t.txt', 200, '/static/', 'ok'];
push @plan, ['GET', '/static/missing.txt', 404, '/static/', 'ok'] for 1 .. 4;
push @plan, ['GET', '/up/x', 500, '/up/', 'ok'] for 1 .. 3;
push @plan, ['POST', '/up/y', 500, '/up/', 'ok'] for 1 .. 2;
push @plan, ['POST', '/static/t.txt', 405, '/static/', 'ok'];
push @plan, ['GET', '/admin/t.txt', 403, '/admin/', 'forbidden'] for 1 .. 3;
push @plan, ['GET', '/orders/t.txt', 200, 'orders', 'ok'] for 1 .. 3;
push @plan, ['GET', '/var/t.txt', 200, 'v-GET', 'ok'];
push @plan, ['GET', '/t.json', 200, '\\.json$', 'ok'] for 1 .. 2;
push @plan, ['DELETE', '/static/t.txt', 405, '/static/', 'ok'];
push @plan, ['PROPFIND', '/static/t.txt', 405, '/static/', 'ok'];
push @plan, ['GET', "${LONG_LOC}t.txt", 200, substr($LONG_LOC, 0, 96), 'ok'];
push @plan, ['GET', '/euro/t.txt', 200, 'e' x 95, 'ok'];
push @plan, ['GET', '/static/index.html', 200, '/static/', 'ok', ["User-Agent: $LONG_UA"]];
push @plan, ['GET', '/static/index.html', 200, '/static/', 'ok', ["User-Agent: $UTF_UA"]];
push @plan, ['GET', '/static/t.txt', 200, '/static/', 'ok', [], 'bearer'];
# poison: invalid UTF-8 and control bytes; and invalid bytes right at the cut
push @plan, ['GET', '/static/index.html', 200, '/static/', 'ok', ["User-Agent: $BAD_UA"]];
push @plan, ['GET', '/static/index.html', 200, '/static/', 'ok', ["User-Agent: $BAD_CUT_UA"]];

my %want;      # "endpoint method status result" => count
my $sent = 0;
my $last_sent;
sub send_one {
    my ($m, $path, $status, $ep, $res, $extra, $bearer) = @_;
    my @h = ($bearer ? "Authorization: Bearer $KEY" : "X-API-Key: $KEY");
    push @h, ($extra && grep { /^User-Agent:/ } @$extra) ? @$extra : ("User-Agent: $UA", @{ $extra || [] });
    my $r = http_request(build_request("$m $path", \@h, $m eq 'POST' ? 'data' : undef),
                         method => $m);
    $sent++;
    $last_sent = time;
    $want{"$ep $m $r->{status} $res"}++;
    return $r;
}

my @bad;
for my $p (@plan) {
    my $r = send_one(@$p);
    push @bad, "$p->[0] $p->[1]: $r->{status} (want $p->[2])" if $r->{status} != $p->[2];
}
ok(!@bad, "every planned request got its status") or diag(join "\n", @bad);

# The same key expires: its requests are still recorded, as 401 expired.
psql(q{UPDATE api_keys SET expires_at = now() - interval '1 minute' WHERE id = :'id'},
     { id => $k->{key_id} });
wait_until(sub {
    my $r = send_one('GET', '/static/t.txt', 0, '/static/', 'expired?');
    # re-file the probe under what it really was
    my $res = ($r->{headers}{'x-result'} // '');
    $want{"/static/ GET $r->{status} expired?"}--;
    $want{"/static/ GET $r->{status} $res"}++;
    $res eq 'expired';
}, 5, 'expiry published');
for (1 .. 2) {
    my $r = send_one('GET', '/static/t.txt', 401, '/static/', 'expired');
    is($r->{status}, 401, 'expired key: 401');
}
delete $want{$_} for grep { !$want{$_} } keys %want;
my $N = $sent;
diag("sent $N requests with one key");

# no rows: no key, malformed, unknown, capture off, apikey off
my $m0 = apikeyd_metrics();
my $tmpl = substr($KEY, 0, -1) . (substr($KEY, -1) eq 'A' ? 'B' : 'A');    # bad checksum
my @norow = (
    [ '/static/t.txt', [] ], [ '/static/t.txt', [] ], [ '/static/t.txt', ["X-API-Key:"] ],
    [ '/static/t.txt', ["X-API-Key: $tmpl"] ], [ '/static/t.txt', ["X-API-Key: ak_garbage"] ],
    [ '/static/t.txt', ["X-API-Key: $gone->{key}"] ], [ '/up/x', ["Authorization: Bearer $gone->{key}"] ],
);
my @st = map { http_get($_->[0], $_->[1])->{status} } @norow;
is_deeply(\@st, [ (401) x 7 ], 'no key / malformed / unknown: 401');

psql(q{UPDATE api_keys SET expires_at = NULL WHERE id = :'id'}, { id => $k->{key_id} });
wait_until(sub { http_get('/nocap/t.txt', ["X-API-Key: $KEY"])->{status} == 200 }, 5,
           'key valid again');    # /nocap/: not recorded
my @nc = map { http_get($_, ["X-API-Key: $KEY"])->{status} } ('/nocap/t.txt') x 3, ('/open/t.txt') x 2;
is_deeply(\@nc, [ (200) x 5 ], 'apikey_usage off and apikey off locations answer 200');

my $m1;
eval {
    wait_until(sub {
        $m1 = apikeyd_metrics();
        unrecorded($m1, 'missing') - unrecorded($m0, 'missing') >= 3
            && unrecorded($m1, 'malformed') - unrecorded($m0, 'malformed') >= 2
            && unrecorded($m1, 'unknown') - unrecorded($m0, 'unknown') >= 2;
    }, 5, 'unrecorded counters');
};
is(unrecorded($m1, 'missing') - unrecorded($m0, 'missing'), 3,
   'apikey_requests_unrecorded_total{result="missing"} +3');
is(unrecorded($m1, 'malformed') - unrecorded($m0, 'malformed'), 2,
   'apikey_requests_unrecorded_total{result="malformed"} +2');
is(unrecorded($m1, 'unknown') - unrecorded($m0, 'unknown'), 2,
   'apikey_requests_unrecorded_total{result="unknown"} +2');
is(unrecorded($m1, 'unavailable') - unrecorded($m0, 'unavailable'), 0,
   'apikey_requests_unrecorded_total{result="unavailable"} unchanged');

# --- the rows ------------------------------------------------------------------------

my $lag = eval { wait_usage_rows($k->{key_id}, $N, 10) };
ok(defined $lag, "$N rows arrived") or diag($@);
diag(sprintf 'all %d rows committed %.0f ms after the last request', $N,
             (time - $last_sent) * 1000) if defined $lag;

# a last sentinel request on the revoked key: when its row is in, everything
# sent before it on the same worker ring is in too
http_get('/static/t.txt', ["X-API-Key: $rev->{key}"]);
$rev_sent++;
wait_usage_rows($rev->{key_id}, $rev_sent, 10, 'sentinel row');

is(usage_rows($k->{key_id}), $N, "exactly $N api_key_usage rows for the key");
is(psql_one('SELECT count(*) FROM api_key_usage'), $N + $rev_sent,
   'no other rows at all (no key / malformed / unknown / capture off / apikey off)');
is(usage_rows($rev->{key_id}), $rev_sent, 'revoked key: one row per request');
is(psql_one(q{SELECT string_agg(DISTINCT result || ' ' || status_code, ',') FROM api_key_usage
              WHERE key_id = :'id'}, { id => $rev->{key_id} }), 'revoked 401',
   'revoked key rows: result revoked, status 401');

my %got = map { ("$_->[0] $_->[1] $_->[2] $_->[3]" => $_->[4]) } @{ psql(
    q{SELECT endpoint, method, status_code, result, count(*) FROM api_key_usage
       WHERE key_id = :'id' GROUP BY 1, 2, 3, 4}, { id => $k->{key_id} }) };
is_deeply(\%got, \%want, 'rows by endpoint, method, status and result')
    or diag(explain({ got => \%got, want => \%want }));

my $f = psql(q{SELECT count(*) FILTER (WHERE org_id <> :'org'),
                      count(*) FILTER (WHERE host(ip_address) <> '127.0.0.1' OR ip_address IS NULL),
                      count(*) FILTER (WHERE bytes_sent <= 0),
                      count(*) FILTER (WHERE response_time_ms < 0 OR response_time_ms > 5000),
                      count(*) FILTER (WHERE ts < now() - interval '2 minutes' OR ts > now() + interval '5 seconds'),
                      count(*) FILTER (WHERE node <> 'test')
                 FROM api_key_usage WHERE key_id = :'id'},
             { id => $k->{key_id}, org => $org->{org_id} })->[0];
is($f->[0], 0, 'org_id is the key\'s org on every row');
is($f->[1], 0, 'ip_address is 127.0.0.1 on every row');
is($f->[2], 0, 'bytes_sent > 0 on every row');
is($f->[3], 0, 'response_time_ms within [0, 5000] on every row');
is($f->[4], 0, 'ts is the request time on every row');
is($f->[5], 0, 'node is apikeyd\'s --node on every row');

is(psql_one(q{SELECT min(bytes_sent) FROM api_key_usage WHERE key_id = :'id' AND method = 'GET'
               AND status_code = 200 AND endpoint = '/static/'}, { id => $k->{key_id} }) > 6,
   1, 'bytes_sent of a 6-byte static file counts the header too');

# user agents
my %ua = map { ($_->[0] => $_->[1]) } @{ psql(
    q{SELECT user_agent, count(*) FROM api_key_usage WHERE key_id = :'id' GROUP BY 1},
    { id => $k->{key_id} }) };
is($ua{$UA}, $N - 4, 'user_agent as sent');
ok(exists $ua{ substr($LONG_UA, 0, 64) }, 'a 100-byte user agent is stored truncated to 64 bytes')
    or diag(explain([ keys %ua ]));
my $utf_want = 'ab' . ("\xe2\x82\xac" x 20);    # 62 bytes: the 21st euro sign would cut at 65
my $utf_got = psql_one(q{SELECT encode(convert_to(user_agent, 'UTF8'), 'hex') FROM api_key_usage
                          WHERE key_id = :'id' AND user_agent LIKE 'ab%'}, { id => $k->{key_id} });
is($utf_got, unpack('H*', $utf_want), 'UTF-8 user agent cut at a character boundary (62 bytes, not 64)');

my $bad = psql(q{SELECT user_agent, encode(convert_to(user_agent, 'UTF8'), 'hex') FROM api_key_usage
                  WHERE key_id = :'id' AND (user_agent LIKE 'bad%' OR user_agent LIKE 'ccc%') ORDER BY 1},
               { id => $k->{key_id} });
is(scalar @$bad, 2, 'user agents with invalid UTF-8 / control bytes: the rows are stored');
like($bad->[0][0] // '', qr/^bad.*ua.*end$/s, 'invalid bytes sanitised, the readable text kept')
    or diag("stored: $bad->[0][1]");
ok(($bad->[0][1] // '') !~ /^(?:..)*?00/, 'no NUL stored');
like($bad->[1][1] // '', qr/^(?:63){62}$/, 'a character cut at 64 bytes is dropped whole (62 bytes stored)')
    or diag("stored: $bad->[1][1]");

# idempotency keys
is_deeply(psql(q{SELECT node, slot, generation, sequence FROM api_key_usage
                  GROUP BY 1, 2, 3, 4 HAVING count(*) > 1}), [],
          'no duplicate (node, slot, generation, sequence)');

# --- rollups and the key's counters ------------------------------------------------------

my (%cls);
for my $g (keys %want) {
    my (undef, undef, $s) = split / /, $g;
    $cls{ int($s / 100) . 'xx' } += $want{$g};
}
diag(sprintf 'status classes sent: 2xx %d, 4xx %d, 5xx %d', map { $cls{$_} // 0 } qw(2xx 4xx 5xx));

for my $tbl (qw(api_key_usage_hourly api_key_usage_daily)) {
    my $r;
    eval { wait_until(sub {
        $r = psql(qq{SELECT coalesce(sum(requests), 0), coalesce(sum(status_2xx), 0),
                            coalesce(sum(status_3xx), 0), coalesce(sum(status_4xx), 0),
                            coalesce(sum(status_5xx), 0), coalesce(sum(status_other), 0)
                       FROM $tbl WHERE key_id = :'id'}, { id => $k->{key_id} })->[0];
        $r->[0] >= $N }, 5, $tbl) };
    is_deeply($r, [ $N, $cls{'2xx'} // 0, 0, $cls{'4xx'} // 0, $cls{'5xx'} // 0, 0 ],
              "$tbl: requests = $N, 2xx/3xx/4xx/5xx/other as sent");
}
is_deeply(psql(q{SELECT sum(requests), sum((SELECT sum(x) FROM unnest(latency_hist) x)),
                        round(sum(response_time_ms_sum)::numeric, 3)
                   FROM api_key_usage_hourly WHERE key_id = :'id'}, { id => $k->{key_id} })->[0],
          [ $N, $N, psql_one(q{SELECT round(sum(response_time_ms)::numeric, 3) FROM api_key_usage
                                WHERE key_id = :'id'}, { id => $k->{key_id} }) ],
          'hourly: latency histogram counts every request; latency sum = sum of raw rows');
is(psql_one(q{SELECT sum(requests) FROM api_key_usage_hourly WHERE key_id = :'id' AND endpoint = 'orders'},
            { id => $k->{key_id} }), 3, 'hourly rollup per endpoint label (orders: 3)');

my $kr = psql(q{SELECT request_count, extract(epoch FROM last_used_at), host(last_used_ip)
                  FROM api_keys WHERE id = :'id'}, { id => $k->{key_id} })->[0];
is($kr->[0], $N, "api_keys.request_count = $N");
ok($kr->[1] ne '' && abs($kr->[1] - $last_sent) < 2, 'last_used_at within 2 s of the last request')
    or diag("last_used_at $kr->[1], last request at $last_sent");
is($kr->[2], '127.0.0.1', 'last_used_ip = 127.0.0.1');

my $m2 = apikeyd_metrics();
is(metric_sum($m2, 'apikey_ring_dropped_total'), 0, 'no ring drops');
is(metric_sum($m2, 'apikey_records_duplicate_total'), 0, 'no duplicates at commit');
is($m2->{apikey_records_committed_total}, $N + $rev_sent, 'apikey_records_committed_total = rows');

# --- --raw-events off -----------------------------------------------------------------------------

restart_apikeyd(args => [ '--raw-events', 'off' ]);
my $raw_before = psql_one('SELECT count(*) FROM api_key_usage');
my $M = 10;
my @st2 = map { http_get('/static/t.txt', ["X-API-Key: $KEY"])->{status} } 1 .. $M;
is_deeply(\@st2, [ (200) x $M ], "--raw-events off: $M more requests 200");
my $ok = eval {
    wait_until(sub { key_request_count($k->{key_id}) >= $N + $M }, 10, 'request_count grows');
};
ok($ok, '--raw-events off: request_count catches up') or diag($@);
is(key_request_count($k->{key_id}), $N + $M, "--raw-events off: request_count = @{[ $N + $M ]}");
for my $tbl (qw(api_key_usage_hourly api_key_usage_daily)) {
    is(psql_one(qq{SELECT sum(requests) FROM $tbl WHERE key_id = :'id'}, { id => $k->{key_id} }),
       $N + $M, "--raw-events off: $tbl requests = @{[ $N + $M ]}");
}
is(psql_one('SELECT count(*) FROM api_key_usage'), $raw_before, '--raw-events off: no new raw rows');
is(psql_one('SELECT count(*) FROM usage_offsets WHERE node = \'test\' AND next_sequence > 0') > 0, 1,
   '--raw-events off: ring offsets still advance');

# back on: raw rows again, nothing from the off period replayed
restart_apikeyd(args => []);
http_get('/static/t.txt', ["X-API-Key: $KEY"]) for 1 .. 2;
wait_usage_rows($k->{key_id}, $N + 2, 10, 'raw rows again');
is(usage_rows($k->{key_id}), $N + 2, '--raw-events on again: only the new requests are raw rows');

stop_apikeyd();
stop_nginx();
unlike(nginx_error_log(), qr/\[(?:error|alert|crit|emerg)\]|exited on signal/,
       'no errors in nginx error.log');
unlike(apikeyd_log(), qr/\b(?:error|ERROR)\b/, 'no errors in apikeyd.log')
    or diag(join "\n", grep { /error/i } split /\n/, apikeyd_log());

done_testing();
