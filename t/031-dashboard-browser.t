# The dashboard (GET /) in a real browser: Debian's chromium, headless,
# driven by tools/browser-test/dashboard-check.js (playwright-core).
#
# Setup: an org with an admin key (usage:read) and client keys in every
# state; exact usage for "checkout-web" as rollup rows (35 days of hourly
# rows, daily rows summed from them), real traffic through nginx for a
# second key; 60 more keys so that the list has two pages. The browser
# signs in, reads the key table, opens checkout-web (24 h, 7 d, 30 d, a
# custom 60-day range), and checks every number, bar and row against the
# API answer it got; back on the list it pages forwards and back (a refresh
# of an unchanged page is a 304), sorts by clicking column headers, filters
# by status and dormancy and searches, each time checking what it asked
# the API and that the rows are its answer; this file then fetches
# the same URLs itself and compares, and checks the API's numbers against
# the rollup rows. Also: the pages' security headers, no inline script, the
# key only in sessionStorage and Authorization headers, error messages.
#
# Needs chromium, node and tools/browser-test/node_modules (tools/test
# installs them); without them this file fails, it does not skip.
#
#   TEST_APIKEY_CHROMIUM    browser (default /usr/bin/chromium)
#   TEST_APIKEY_NODE        node (default: node on PATH)
#   TEST_APIKEY_SCREENSHOT  where the 1280 px screenshot goes (default
#                           build/dashboard-screenshot.png; the 390 px one
#                           next to it, *-narrow.png; the key list,
#                           *-keys.png)

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use Test::Apikey::Util qw(repo_root build_path);
use Test::Apikey::Usage qw(apikeyd_metrics);
use JSON::PP ();
use File::Path qw(make_path);
use POSIX qw(strftime);

my $ROOT     = repo_root();
my $CHROMIUM = $ENV{TEST_APIKEY_CHROMIUM} || '/usr/bin/chromium';
my $NODE     = $ENV{TEST_APIKEY_NODE} || (grep { -x } map { "$_/node" } split /:/, $ENV{PATH})[0];
my $DRIVER   = "$ROOT/tools/browser-test/dashboard-check.js";
my $SHOT     = $ENV{TEST_APIKEY_SCREENSHOT} || build_path('dashboard-screenshot.png');

# The checks read "the last complete hour" more than once: stay in one.
my $left = 3600 - time % 3600;
sleep($left + 10) if $left < 240;

# --- prerequisites: missing ones fail the file -------------------------------------

my @missing;
push @missing, "$CHROMIUM (apt-get install chromium)" unless -x $CHROMIUM;
push @missing, 'node (apt-get install nodejs npm)' unless $NODE;
push @missing, 'tools/browser-test/node_modules/playwright-core (npm ci --prefix tools/browser-test)'
    unless -f "$ROOT/tools/browser-test/node_modules/playwright-core/package.json";
if (!ok(!@missing, 'chromium, node and playwright-core are there')) {
    diag("missing: $_") for @missing;
    diag('tools/test installs them');
    done_testing();
    exit;
}

# --- the pages: headers, bodies, no inline code --------------------------------------

start_postgres();
start_apikeyd();

my %ASSETS = ('/' => ['index.html', 'text/html; charset=utf-8'],
              '/app.js' => ['app.js', 'text/javascript; charset=utf-8'],
              '/chart.js' => ['chart.js', 'text/javascript; charset=utf-8'],
              '/util.js' => ['util.js', 'text/javascript; charset=utf-8'],
              '/style.css' => ['style.css', 'text/css; charset=utf-8'],
              '/favicon.svg' => ['favicon.svg', 'image/svg+xml']);
for my $path (sort keys %ASSETS) {
    my ($file, $type) = @{ $ASSETS{$path} };
    my $r = apikeyd_get($path);
    is($r->{status}, 200, "GET $path: 200");
    is($r->{headers}{'content-type'}, $type, "GET $path: $type");
    is($r->{body}, slurp("$ROOT/tools/apikeyd/dashboard/$file"), "GET $path: the embedded $file, byte for byte");
    my $h = $r->{headers};
    is($h->{'cache-control'}, 'no-cache', "GET $path: Cache-Control: no-cache");
    is($h->{'x-content-type-options'}, 'nosniff', "GET $path: nosniff");
    is($h->{'referrer-policy'}, 'no-referrer', "GET $path: Referrer-Policy");
    is($h->{'x-frame-options'}, 'DENY', "GET $path: X-Frame-Options");
    like($h->{'content-security-policy'} // '', qr/^default-src 'self';/, "GET $path: CSP default-src 'self'");
    unlike($h->{'content-security-policy'} // '', qr/unsafe|https?:|\*/, "GET $path: CSP allows no inline code, no other origin");
}
is(apikeyd_get('/app.jsx')->{status}, 404, 'route patterns are exact (/app.jsx is 404)');
{
    my $html = slurp("$ROOT/tools/apikeyd/dashboard/index.html");
    my @inline = ($html =~ /<script(?![^>]*\bsrc=)[^>]*>/g, $html =~ /\son\w+\s*=/g, $html =~ /\sstyle\s*=/g);
    is_deeply(\@inline, [], 'index.html: no inline script, handler or style');
    unlike($html, qr/<(?:input|select|textarea)\b[^>]*\bname\s*=/, 'index.html: form fields have no name (nothing to submit)');
    for my $file (qw(app.js chart.js util.js)) {
        my $js = slurp("$ROOT/tools/apikeyd/dashboard/$file");
        unlike($js, qr/innerHTML|outerHTML|insertAdjacentHTML|document\.write|localStorage\.setItem|document\.cookie\s*=/,
               "$file: no HTML injection sinks, no localStorage writes, no cookies");
    }
}

# --- org, keys, usage --------------------------------------------------------------------

my $ORG   = apikeyctl('org', 'create', 'Acme Retail')->{org_id};
my $OTHER = apikeyctl('org', 'create', 'Someone Else')->{org_id};
my %K;
sub mk { my ($name, @args) = @_; return $K{$name} = new_key($ORG, $name, @args) }
mk('dashboard admin', '--scopes', 'usage:read');
mk('checkout-web', '--scopes', 'orders.read,orders.write,payments');
mk('batch <b>nightly</b> & "export"', '--scopes', 'orders.read');
mk('partner-sandbox', '--scopes', 'orders.read', '--expires-in', '10d');
mk('legacy-mobile', '--scopes', 'orders.read');
mk('old-ci');
apikeyctl('key', 'create', '--org', $OTHER, '--name', 'theirs');
my $CHECKOUT = $K{'checkout-web'}{key_id};
my $BATCH    = 'batch <b>nightly</b> & "export"';

# 60 more keys, newer than the six: the list (50 a page) has a second page.
psql(q{INSERT INTO api_keys (org_id, name, prefix, hint, key_hash, created_at)
       SELECT :'org', 'filler-' || lpad(g::text, 2, '0'), 'ak', 'ak_f' || lpad(g::text, 3, '0'),
              sha256(('filler' || g || random())::bytea), now() + g * interval '1 second'
         FROM generate_series(1, 60) g}, { org => $ORG });
apikeyctl('key', 'revoke', $K{'legacy-mobile'}{key_id});
psql(q{UPDATE api_keys SET last_used_at = now() - interval '90 days', last_used_ip = '2001:db8:41::9',
       request_count = 48211 WHERE id = :'id'}, { id => $K{'legacy-mobile'}{key_id} });
psql(q{UPDATE api_keys SET expires_at = now() - interval '2 days', last_used_at = now() - interval '3 days',
       last_used_ip = '10.20.0.7', request_count = 310 WHERE id = :'id'}, { id => $K{'old-ci'}{key_id} });

# checkout-web: hourly rows for the last 35 days (this hour included) x 4
# endpoints, a daily cycle, 4xx/5xx, latencies in three histogram buckets
# (base, base + 6, base + 14); daily rows are their sums.
psql(<<'SQL', { org => $ORG, key => $CHECKOUT });
WITH ep(endpoint, method, weight, base, err5) AS (
    VALUES ('orders', 'GET', 0.55, 62, 0.02), ('orders', 'POST', 0.2, 66, 0.05),
           ('payments', 'POST', 0.15, 70, 0.12), ('users/{id}', 'GET', 0.1, 58, 0.0)
), h AS (
    SELECT g AS bucket, extract(epoch FROM g)::bigint / 3600 AS n
      FROM generate_series(date_trunc('hour', now()) - interval '35 days',
                           date_trunc('hour', now()), interval '1 hour') g
), r AS (
    SELECT h.bucket, h.n, ep.*,
           round(ep.weight * (140 + 110 * sin(2 * pi() * ((h.n % 24) - 8) / 24)
                              + 25 * ((h.n / 24) % 3)))::bigint AS req
      FROM h CROSS JOIN ep
), c AS (
    SELECT r.*,
           round(req * 0.035)::bigint + CASE WHEN n % 7 = 0 THEN 4 ELSE 0 END AS s4,
           CASE WHEN n % 9 = 0 THEN round(req * err5 * 4)::bigint ELSE 0 END AS s5,
           round(req * 0.15)::bigint AS c2, round(req * 0.05)::bigint AS c3
      FROM r
)
INSERT INTO api_key_usage_hourly (org_id, key_id, bucket, endpoint, method, requests,
        status_2xx, status_3xx, status_4xx, status_5xx, status_other,
        response_time_ms_sum, latency_hist)
SELECT :'org', :'key', bucket, endpoint, method, req,
       req - least(req, s4 + s5), 0, least(req, s4), least(req - least(req, s4), s5), 0,
       round((req - c2 - c3) * 0.064 * power(2, (base - 0.5) / 8.0)
             + c2 * 0.064 * power(2, (base + 5.5) / 8.0)
             + c3 * 0.064 * power(2, (base + 13.5) / 8.0)),
       format('[%s:%s]={%s,0,0,0,0,0,%s,0,0,0,0,0,0,0,%s}', base + 1, base + 15,
              req - c2 - c3, c2, c3)::bigint[]
  FROM c WHERE req > 0;

INSERT INTO api_key_usage_daily (org_id, key_id, bucket, endpoint, method, requests,
        status_2xx, status_3xx, status_4xx, status_5xx, status_other,
        response_time_ms_sum, latency_hist)
SELECT org_id, key_id, date_trunc('day', bucket), endpoint, method, sum(requests),
       sum(status_2xx), sum(status_3xx), sum(status_4xx), sum(status_5xx), sum(status_other),
       sum(response_time_ms_sum), apikey_latency_hist_sum(latency_hist)
  FROM api_key_usage_hourly WHERE key_id = :'key'
 GROUP BY org_id, key_id, date_trunc('day', bucket), endpoint, method;

UPDATE api_keys SET last_used_at = now() - interval '2 minutes', last_used_ip = '198.51.100.23',
       request_count = (SELECT sum(requests) FROM api_key_usage_hourly WHERE key_id = :'key')
 WHERE id = :'key';
SQL
cmp_ok(psql_one(q{SELECT count(DISTINCT date_trunc('day', bucket)) FROM api_key_usage_daily WHERE key_id = :'key'},
                { key => $CHECKOUT }), '>=', 35, 'checkout-web: 35 days of rollup rows');

# checkout-web spikes in the last complete hour: its orders GET row there
# gets 5000 more requests (latency histogram and sum alike) on top of a
# 7-day mean near 160/h; the six named keys were made 10 days ago, in the
# same order, so that they have a baseline.
psql(q{UPDATE api_keys SET created_at = created_at - interval '10 days'
        WHERE org_id = :'org' AND name NOT LIKE 'filler-%'}, { org => $ORG });
psql(<<'SQL', { key => $CHECKOUT });
UPDATE api_key_usage_hourly
   SET requests = requests + 5000, status_2xx = status_2xx + 5000,
       latency_hist[63] = latency_hist[63] + 5000,
       response_time_ms_sum = response_time_ms_sum + 5000 * 0.064 * power(2, 61.5 / 8.0)
 WHERE key_id = :'key' AND endpoint = 'orders' AND method = 'GET'
   AND bucket = date_trunc('hour', now()) - interval '1 hour';
UPDATE api_key_usage_daily d
   SET requests = h.requests, status_2xx = h.status_2xx, latency_hist = h.latency_hist,
       response_time_ms_sum = h.response_time_ms_sum
  FROM (SELECT date_trunc('day', bucket) AS day, sum(requests) AS requests,
               sum(status_2xx) AS status_2xx, apikey_latency_hist_sum(latency_hist) AS latency_hist,
               sum(response_time_ms_sum) AS response_time_ms_sum
          FROM api_key_usage_hourly
         WHERE key_id = :'key' AND endpoint = 'orders' AND method = 'GET'
         GROUP BY 1) h
 WHERE d.key_id = :'key' AND d.endpoint = 'orders' AND d.method = 'GET' AND d.bucket = h.day;
SQL
# checkout-web's client addresses: sparse sketches (docs/api.md) of 12
# addresses today and 9 yesterday, 5 of them the same: 16 in 7 days.
my $sketch = sub { '01' . join('', map { sprintf '%04x01', $_ } @_) };
psql(q{INSERT INTO api_key_distinct_ips (key_id, day, org_id, ips, sketch) VALUES
       (:'key', (now() AT TIME ZONE 'UTC')::date, :'org', 12, decode(:'today', 'hex')),
       (:'key', (now() AT TIME ZONE 'UTC')::date - 1, :'org', 9, decode(:'yesterday', 'hex'))},
     { key => $CHECKOUT, org => $ORG, today => $sketch->(1 .. 12), yesterday => $sketch->(8 .. 16) });

# The batch key: real requests through nginx (3 x 200, 2 x 404).
my $html = $ENV{TEST_NGINX_HTML_DIR};
start_nginx(
    http_config => apikey_http_config(usage => '1m'),
    config => "location /orders/ { apikey on; apikey_endpoint \"orders\"; alias $html/; log_not_found off; }\n",
);
my @statuses = map {
    http_get($_, ["X-API-Key: $K{$BATCH}{key}"])->{status}
} ('/orders/t.txt') x 3, ('/orders/nope.txt') x 2;
is_deeply(\@statuses, [200, 200, 200, 404, 404], 'batch key: real traffic through nginx');

my @ADMIN = ("Authorization: Bearer $K{'dashboard admin'}{key}");
my $LIST = "/api/orgs/$ORG/api-keys/usage?dormant_days=30";
ok_eventually(sub {
    my ($k) = grep { $_->{name} eq $BATCH } @{ apikeyd_get($LIST, \@ADMIN)->{json}{keys} };
    $k && $k->{request_count} == 5;
}, 15, 'batch traffic visible through the API');
{
    my ($k) = grep { $_->{key_id} eq $CHECKOUT } @{ apikeyd_get($LIST, \@ADMIN)->{json}{keys} };
    is_deeply([ @$k{qw(distinct_ips_today distinct_ips_7d)} ], [ 12, 16 ],
              'checkout-web: 12 distinct IPs today, 16 in 7 days');
}
stop_nginx();
# The spike refresh runs when apikeyd starts (then hourly).
restart_apikeyd();
wait_until(sub { defined apikeyd_metrics()->{apikey_keys_spiking} }, 20, 'the spike refresh');
is(apikeyd_metrics()->{apikey_keys_spiking}, 1, 'one key spikes (checkout-web)');

# --- the browser ---------------------------------------------------------------------

make_path(($SHOT =~ m{^(.*)/[^/]+$})[0]);
my $report_path = servroot_path('dashboard-report.json');
my $profile = servroot_path('chromium-profile');
make_path($profile);
my ($rc, $out, $err) = run_cmd([ $NODE, $DRIVER ], timeout => 180, env => {
    DASHBOARD_URL => "http://127.0.0.1:$ENV{TEST_APIKEY_API_PORT}",
    DASHBOARD_ORG => $ORG,
    DASHBOARD_KEY => $K{'dashboard admin'}{key},
    DASHBOARD_KEY_ID => $CHECKOUT,
    DASHBOARD_SELF_KEY => $K{'checkout-web'}{key},
    DASHBOARD_REPORT => $report_path,
    DASHBOARD_SCREENSHOT => $SHOT,
    DASHBOARD_PROFILE => $profile,
    CHROMIUM => $CHROMIUM,
});
my $report = eval { JSON::PP->new->decode(slurp($report_path) // '') };
ok($report && !$report->{error}, 'the browser run completed')
    or diag("exit $rc\n$err$out" . ($report && $report->{error} ? $report->{error} : ''));
$report ||= { checks => [], api => {} };
for my $c (@{ $report->{checks} }) {
    ok($c->{ok}, "browser: $c->{name}")
        or diag(JSON::PP->new->canonical->encode({ got => $c->{got}, want => $c->{want} }));
}
cmp_ok(scalar @{ $report->{checks} }, '>=', 40, 'the browser ran every check');
ok(-s $SHOT, "screenshot saved: $SHOT");
diag("screenshot: $SHOT");

# --- the browser's API answers = this file's, = the rollup rows -----------------------

# Refetches what the browser fetched; complete_until moves, the rest must not.
sub same_answer {
    my ($what) = @_;
    my $seen = $report->{api}{$what};
    if (!$seen) {
        fail("the browser fetched the $what view");
        return undef;
    }
    my $now = apikeyd_get($seen->{path}, \@ADMIN);
    is($now->{status}, 200, "$what: GET $seen->{path} from Perl");
    delete $_->{complete_until} for $now->{json}, $seen->{json};
    is_deeply($now->{json}, $seen->{json}, "$what: the browser saw exactly what the API returns");
    return $seen;
}

my $list = same_answer('list') || { json => { keys => [] } };
my ($checkout) = grep { $_->{key_id} eq $CHECKOUT } @{ $list->{json}{keys} || [] };
$checkout ||= {};
my $today = psql(q{SELECT coalesce(sum(requests), 0) FROM api_key_usage_daily
                    WHERE key_id = :'k' AND bucket = date_trunc('day', now())}, { k => $CHECKOUT })->[0][0];
my $month = psql(q{SELECT coalesce(sum(requests), 0) FROM api_key_usage_daily
                    WHERE key_id = :'k' AND bucket >= date_trunc('month', now())}, { k => $CHECKOUT })->[0][0];
is($checkout->{requests_today}, $today, "checkout-web: requests today = the rollup rows ($today)");
is($checkout->{requests_this_month}, $month, "checkout-web: requests this month = the rollup rows ($month)");
is_deeply([ map { $_->{name} } @{ $list->{json}{keys} || [] } ],
          [ 'dashboard admin', 'checkout-web', $BATCH, 'partner-sandbox', 'legacy-mobile', 'old-ci',
            map { sprintf 'filler-%02d', $_ } 1 .. 44 ],
          'the first page: the oldest 50 keys of the org, oldest first, none of the other');

for my $what (qw(day week month)) {
    my $seen = same_answer($what) or next;
    my ($from, $to, $interval) = map { $seen->{path} =~ /[?&]$_=([^&]+)/ ? $1 : undef } qw(from to interval);
    s/%3A/:/gi for $from, $to;
    my $table = $interval eq 'hour' ? 'api_key_usage_hourly' : 'api_key_usage_daily';
    my $rows = psql(qq{SELECT coalesce(sum(requests), 0), coalesce(sum(status_4xx), 0), coalesce(sum(status_5xx), 0)
                         FROM $table WHERE key_id = :'k' AND bucket >= :'f' AND bucket < :'t'},
                    { k => $CHECKOUT, f => $from, t => $to })->[0];
    my $j = $seen->{json};
    my $sum = 0;
    $sum += $_->{requests} for @{ $j->{series} };
    is($sum, $rows->[0], "$what ($interval, $from .. $to): series sums to the rollup rows ($rows->[0])");
    my $rate4 = $rows->[0] ? $rows->[1] / $rows->[0] : 0;
    ok(abs($j->{error_rate}{'4xx'} - $rate4) < 1e-4, "$what: 4xx rate = rollup rows") or diag("$j->{error_rate}{'4xx'} vs $rate4");
    is(scalar @{ $j->{top_endpoints} }, 4, "$what: top endpoints: the 4 endpoint x method pairs");
}

done_testing();
