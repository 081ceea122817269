# The org key listing's paging, sorts and filters (docs/api.md):
#   GET /api/orgs/{org_id}/api-keys/usage?limit&cursor&sort&order&status&dormant&q
# over an org whose keys differ in every sort key (created_at, name,
# last_used_at, requests today and this month from daily rollup rows), with
# - each sort x order: the order, and the same keys once each when paged;
# - each filter alone and combined;
# - cursors: tampered, reused with another sort, order, filter or org: 400,
#   never another org's data;
# - every key exactly once across pages while keys are being created;
# - ETag / If-None-Match -> 304 on the listing and the per-key view;
# - apikeyd with one database session (--api-db-sessions 1) answering
#   concurrent requests.

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use POSIX qw(strftime);

start_postgres();
start_apikeyd(args => [ '--api-db-sessions', '1' ]);

our $L = apikeyctl('org', 'create', 'listing-l')->{org_id};
our $M = apikeyctl('org', 'create', 'listing-m')->{org_id};

# name => [created order, minutes since last use (undef: never), requests
# today, on the first of this month, on the day before it, status]
our %SPEC = (
    'a-admin'    => [ 3, undef, 0,  0,   0,   'active' ],
    'b-busy'     => [ 5, 1,     50, 30,  0,   'active' ],
    'c-calm'     => [ 6, 120,   5,  100, 0,   'active' ],
    'd-dormant'  => [ 2, 57600, 0,  0,   500, 'active' ],
    'e-revoked'  => [ 7, 60,    7,  7,   0,   'revoked' ],
    'f-expired'  => [ 4, 4320,  0,  3,   0,   'expired' ],
    'svc-orders' => [ 1, 10,    1,  0,   0,   'active' ],
);
our @NAMES = sort keys %SPEC;
our %K;
for my $n (sort { $SPEC{$a}[0] <=> $SPEC{$b}[0] } @NAMES) {
    $K{$n} = new_key($L, $n, $n eq 'a-admin' ? ('--scopes', 'usage:read') : ());
}
our $adminM = new_key($M, 'm-admin', '--scopes', 'usage:read');
our $otherM = new_key($M, 'm-other');
apikeyctl('key', 'revoke', $K{'e-revoked'}{key_id});

my $today = q{(date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')};
my $month = q{(date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')};
our $first_of_month = psql("SELECT $today = $month")->[0][0] eq 't';
for my $n (@NAMES) {
    my ($order, $minutes, $t, $m, $before) = @{ $SPEC{$n} };
    my $id = $K{$n}{key_id};
    psql(q{UPDATE api_keys SET created_at = now() - make_interval(hours => 100 - :'o'),
                  last_used_at = now() - make_interval(mins => nullif(:'m', '')::int),
                  expires_at = CASE WHEN :'n' = 'f-expired' THEN now() - interval '1 minute' END
            WHERE id = :'id'},
         { o => $order, m => $minutes // '', n => $n, id => $id });
    for ([ $today, '/today', $t ], [ $month, '/month', $m ],
         [ "$month - interval '1 day'", '/before', $before ]) {
        my ($bucket, $ep, $req) = @$_;
        next unless $req;
        psql(qq{INSERT INTO api_key_usage_daily (org_id, key_id, bucket, endpoint, method,
                requests, status_2xx, status_3xx, status_4xx, status_5xx, status_other,
                response_time_ms_sum, latency_hist)
                VALUES (:'org', :'id', $bucket, :'ep', 'GET', :'r', :'r', 0, 0, 0, 0, 1, '{1}')},
             { org => $L, id => $id, ep => $ep, r => $req });
    }
}
# The other org's key, busier than any: never in org L's pages.
psql(qq{INSERT INTO api_key_usage_daily (org_id, key_id, bucket, endpoint, method,
        requests, status_2xx, status_3xx, status_4xx, status_5xx, status_other,
        response_time_ms_sum, latency_hist)
        VALUES (:'org', :'id', $today, '/x', 'GET', 9999, 9999, 0, 0, 0, 0, 1, '{1}')},
     { org => $M, id => $otherM->{key_id} });

# What the API must say for each key.
our %WANT;
for my $n (@NAMES) {
    my ($order, $minutes, $t, $m, $before, $status) = @{ $SPEC{$n} };
    $WANT{$n} = {
        requests_today      => $t + ($first_of_month ? $m : 0),
        requests_this_month => $t + $m,
        minutes             => $minutes,
        created             => $order,
        status              => $status,
    };
}

sub auth { return ["Authorization: Bearer $_[0]"] }
sub lpath { "/api/orgs/$L/api-keys/usage" . ($_[0] // '') }
sub get_l { return build_request('GET ' . lpath($_[0]), auth($K{'a-admin'}{key}), undef) }
sub api_l { return apikeyd_get(lpath($_[0]), auth($K{'a-admin'}{key})) }
sub names { return [ map { $_->{name} } @{ $_[0]{keys} // [] } ] }

# Names in the order `sort` must give (ties: any order, so compared by value).
sub value_of {
    my ($sort, $n) = @_;
    return $WANT{$n}{created} if $sort eq 'created_at';
    return $n if $sort eq 'name';
    return defined $WANT{$n}{minutes} ? -$WANT{$n}{minutes} : -1e12 if $sort eq 'last_used_at';
    return $WANT{$n}{$sort};
}
sub expected_values {
    my ($sort, $order, @names) = @_;
    my @v = map { value_of($sort, $_) } @names;
    my $num = $sort ne 'name';
    @v = $num ? sort { $a <=> $b } @v : sort @v;
    return [ $order eq 'desc' ? reverse @v : @v ];
}

# check_order($json, sort, order, names expected in the page)
sub check_order {
    my ($j, $sort, $order, @names) = @_;
    my $got = names($j);
    is_deeply([ sort @$got ], [ sort @names ], "sort=$sort&order=$order: the keys");
    is_deeply([ map { value_of($sort, $_) } @$got ], expected_values($sort, $order, @names),
              "sort=$sort&order=$order: in order") or diag("@$got");
    is($j->{next_cursor}, undef, "sort=$sort&order=$order: one page, next_cursor null");
}

# Every page of a listing, limit $limit: (names in order, pages).
sub walk {
    my ($query, $limit, $max) = @_;
    my (@names, $cursor, $pages);
    while (1) {
        my $q = "?limit=$limit" . ($query ? "&$query" : '')
              . (defined $cursor ? "&cursor=$cursor" : '');
        my $r = api_l($q);
        die "page $q: $r->{status} $r->{body}\n" unless $r->{status} == 200;
        push @names, @{ names($r->{json}) };
        ++$pages;
        $cursor = $r->{json}{next_cursor} // last;
        die "more than $max pages\n" if $pages > ($max // 1000);
    }
    return (\@names, $pages);
}

# Names by requests_today, descending (outside the blocks: their code sees
# the harness's own $b).
sub busiest_first {
    return sort { $WANT{$b}{requests_today} <=> $WANT{$a}{requests_today} } @_;
}

our @ALL_BODIES;
sub tamper {
    my ($c) = @_;
    my $i = int(length($c) / 3);
    my $ch = substr($c, $i, 1) eq 'A' ? 'B' : 'A';
    substr($c, $i, 1) = $ch;
    return $c;
}

# Answers that must be 400 "cursor is not valid for this listing".
sub bad_cursor_cases {
    my ($c) = @_;    # a cursor of ?limit=2&sort=name
    return (
        [ 'tampered',            lpath("?limit=2&sort=name&cursor=" . tamper($c)) ],
        [ 'truncated',           lpath("?limit=2&sort=name&cursor=" . substr($c, 0, -2)) ],
        [ 'garbage',             lpath('?sort=name&cursor=abc') ],
        [ 'another sort',        lpath("?limit=2&sort=created_at&cursor=$c") ],
        [ 'another order',       lpath("?limit=2&sort=name&order=desc&cursor=$c") ],
        [ 'a filter added',      lpath("?limit=2&sort=name&status=active&cursor=$c") ],
        [ 'another dormant_days',lpath("?limit=2&sort=name&dormant_days=5&cursor=$c") ],
        [ 'a q added',           lpath("?limit=2&sort=name&q=b&cursor=$c") ],
    );
}

run_tests();

__DATA__

=== TEST 1: the default listing: created_at ascending, limit 100, next_cursor null
--- port: $TEST_APIKEY_API_PORT
--- raw_request eval: get_l('')
--- error_code: 200
--- response_headers
Content-Type: application/json
Cache-Control: no-store
--- response_headers_like
ETag: ^"[0-9a-f]{32}"$
--- check
my $j = $responses->[0]{json};
is_deeply([ sort keys %$j ], [ sort qw(org_id keys next_cursor complete_until) ],
          'the answer has org_id, keys, next_cursor, complete_until');
check_order($j, 'created_at', 'asc', @NAMES);
my %by = map { $_->{name} => $_ } @{ $j->{keys} };
for my $n (@NAMES) {
    is($by{$n}{requests_today}, $WANT{$n}{requests_today}, "$n: requests_today");
    is($by{$n}{requests_this_month}, $WANT{$n}{requests_this_month}, "$n: requests_this_month");
    is($by{$n}{status}, $WANT{$n}{status}, "$n: status");
}



=== TEST 2: sort=created_at&order=desc
--- port: $TEST_APIKEY_API_PORT
--- raw_request eval: get_l('?sort=created_at&order=desc')
--- check
check_order($responses->[0]{json}, 'created_at', 'desc', @NAMES);



=== TEST 3: sort=name (ascending by default)
--- port: $TEST_APIKEY_API_PORT
--- raw_request eval: get_l('?sort=name')
--- check
is_deeply(names($responses->[0]{json}), [ sort @NAMES ], 'name ascending');



=== TEST 4: sort=name&order=desc
--- port: $TEST_APIKEY_API_PORT
--- raw_request eval: get_l('?sort=name&order=desc')
--- check
is_deeply(names($responses->[0]{json}), [ reverse sort @NAMES ], 'name descending');



=== TEST 5: sort=last_used_at (descending by default: most recent first, never used last)
--- port: $TEST_APIKEY_API_PORT
--- raw_request eval: get_l('?sort=last_used_at')
--- check
is_deeply(names($responses->[0]{json}),
          [ qw(b-busy svc-orders e-revoked c-calm f-expired d-dormant a-admin) ],
          'last_used_at descending');



=== TEST 6: sort=last_used_at&order=asc (never used first)
--- port: $TEST_APIKEY_API_PORT
--- raw_request eval: get_l('?sort=last_used_at&order=asc')
--- check
is_deeply(names($responses->[0]{json}),
          [ qw(a-admin d-dormant f-expired c-calm e-revoked svc-orders b-busy) ],
          'last_used_at ascending');



=== TEST 7: sort=requests_today (descending by default; the other org's busier key absent)
--- port: $TEST_APIKEY_API_PORT
--- raw_request eval: get_l('?sort=requests_today')
--- check
check_order($responses->[0]{json}, 'requests_today', 'desc', @NAMES);



=== TEST 8: sort=requests_today&order=asc
--- port: $TEST_APIKEY_API_PORT
--- raw_request eval: get_l('?sort=requests_today&order=asc')
--- check
check_order($responses->[0]{json}, 'requests_today', 'asc', @NAMES);



=== TEST 9: sort=requests_this_month
--- port: $TEST_APIKEY_API_PORT
--- raw_request eval: get_l('?sort=requests_this_month')
--- check
check_order($responses->[0]{json}, 'requests_this_month', 'desc', @NAMES);
is(names($responses->[0]{json})->[0], 'c-calm', 'the busiest key this month first');



=== TEST 10: sort=requests_this_month&order=asc
--- port: $TEST_APIKEY_API_PORT
--- raw_request eval: get_l('?sort=requests_this_month&order=asc')
--- check
check_order($responses->[0]{json}, 'requests_this_month', 'asc', @NAMES);



=== TEST 11: every sort x order paged by 2 and by 3 gives the one-page order, each key once
--- port: $TEST_APIKEY_API_PORT
--- check
for my $sort (qw(created_at name last_used_at requests_today requests_this_month)) {
    for my $order (qw(asc desc)) {
        my $one = names(api_l("?sort=$sort&order=$order")->{json});
        for my $limit (2, 3) {
            my ($paged, $pages) = walk("sort=$sort&order=$order", $limit);
            is_deeply($paged, $one, "sort=$sort&order=$order&limit=$limit: same keys, same order");
            is($pages, int((@NAMES + $limit - 1) / $limit), "... in ceil(7 / $limit) pages");
        }
    }
}



=== TEST 12: limit=1 pages carry next_cursor until the last key
--- port: $TEST_APIKEY_API_PORT
--- raw_request eval: get_l('?limit=1')
--- check
my $j = $responses->[0]{json};
is(scalar @{ $j->{keys} }, 1, 'one key');
like($j->{next_cursor} // '', qr/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/, 'an opaque URL-safe cursor');
my ($all, $pages) = walk('', 1);
is($pages, 7, 'seven pages of one');
is_deeply($all, names(api_l('')->{json}), 'the default order');



=== TEST 13: status=active
--- port: $TEST_APIKEY_API_PORT
--- raw_request eval: get_l('?status=active&sort=name')
--- check
is_deeply(names($responses->[0]{json}), [qw(a-admin b-busy c-calm d-dormant svc-orders)], 'active keys only');



=== TEST 14: status=revoked
--- port: $TEST_APIKEY_API_PORT
--- raw_request eval: get_l('?status=revoked')
--- check
is_deeply(names($responses->[0]{json}), ['e-revoked'], 'revoked keys only');



=== TEST 15: status=expired
--- port: $TEST_APIKEY_API_PORT
--- raw_request eval: get_l('?status=expired')
--- check
is_deeply(names($responses->[0]{json}), ['f-expired'], 'expired keys only');



=== TEST 16: dormant=true (30 days: last used 40 days ago; the key never used, created 4 days ago, is not)
--- port: $TEST_APIKEY_API_PORT
--- raw_request eval: get_l('?dormant=true&sort=name')
--- check
my $j = $responses->[0]{json};
is_deeply(names($j), [qw(d-dormant)], 'dormant keys only');
ok(!(grep { !$_->{dormant} } @{ $j->{keys} }), 'each says dormant: true');



=== TEST 17: dormant=true&dormant_days=1 (the key last used 3 days ago, and the one never used since its creation 4 days ago, too)
--- port: $TEST_APIKEY_API_PORT
--- raw_request eval: get_l('?dormant=true&dormant_days=1&sort=name')
--- check
is_deeply(names($responses->[0]{json}), [qw(a-admin d-dormant f-expired)], 'dormant for a day');



=== TEST 18: dormant=false
--- port: $TEST_APIKEY_API_PORT
--- raw_request eval: get_l('?dormant=false&sort=name')
--- check
is_deeply(names($responses->[0]{json}), [qw(a-admin b-busy c-calm e-revoked f-expired svc-orders)],
          'keys in use only');



=== TEST 19: q= a name prefix in any case
--- port: $TEST_APIKEY_API_PORT
--- raw_request eval: [ get_l('?q=svc'), get_l('?q=SVC-Or'), get_l('?q=s'), get_l('?q=orders') ]
--- error_code eval: [ (200) x 4 ]
--- check
is_deeply(names($responses->[0]{json}), ['svc-orders'], 'q=svc');
is_deeply(names($responses->[1]{json}), ['svc-orders'], 'q=SVC-Or: names match in any case');
is_deeply(names($responses->[2]{json}), ['svc-orders'], 'q=s');
is_deeply(names($responses->[3]{json}), [], 'q=orders: a prefix, not a substring');



=== TEST 20: q= a hint prefix
--- port: $TEST_APIKEY_API_PORT
--- raw_request eval: get_l('?q=' . $K{'c-calm'}{hint})
--- check
my @got = @{ names($responses->[0]{json}) };
ok((grep { $_ eq 'c-calm' } @got), 'the key whose hint it is');
ok(@got < @NAMES, 'not every key');



=== TEST 21: q= LIKE's special characters are plain text
--- port: $TEST_APIKEY_API_PORT
--- raw_request eval: [ get_l('?q=%25'), get_l('?q=_'), get_l('?q=%5C'), get_l('?q=b%25') ]
--- error_code eval: [ (200) x 4 ]
--- check
is_deeply(names($responses->[$_]{json}), [], "special-character query $_ matches no key")
    for 0 .. 3;



=== TEST 22: filters combine, with a sort and paging
--- port: $TEST_APIKEY_API_PORT
--- raw_request eval: get_l('?status=active&dormant=false&sort=requests_today')
--- check
my @want = busiest_first(qw(b-busy c-calm svc-orders a-admin));
is_deeply(names($responses->[0]{json}), \@want, 'active, not dormant, busiest first');
my ($paged) = walk('status=active&dormant=false&sort=requests_today', 1);
is_deeply($paged, \@want, 'the same, one key a page');



=== TEST 23: bad values are 400 with a JSON error naming the parameter
--- port: $TEST_APIKEY_API_PORT
--- raw_request eval
[ map { get_l($_) } '?limit=0', '?limit=1001', '?limit=x', '?sort=id', '?order=up',
  '?status=all', '?dormant=yes', '?q=', '?cursor=', '?limit=5&limit=5' ]
--- error_code eval: [ (400) x 10 ]
--- check
my @want = (qr/^limit must be/, qr/^limit must be/, qr/^limit must be/, qr/^sort must be/,
            qr/^order must be/, qr/^status must be/, qr/^dormant must be/, qr/^q must be/,
            qr/^cursor is not valid/, qr/given more than once/);
like($responses->[$_]{json}{error} // '', $want[$_], "error $_") for 0 .. $#want;



=== TEST 24: a cursor edited, or used with another sort, order or filter: 400, nothing listed
--- port: $TEST_APIKEY_API_PORT
--- check
my $c = api_l('?limit=2&sort=name')->{json}{next_cursor};
ok($c, 'a cursor to play with');
is(api_l("?limit=2&sort=name&cursor=$c")->{status}, 200, 'unchanged, it works');
is(api_l("?limit=5&sort=name&cursor=$c")->{status}, 200, 'with another limit too');
for my $case (bad_cursor_cases($c)) {
    my ($what, $path) = @$case;
    my $r = apikeyd_get($path, auth($K{'a-admin'}{key}));
    push @ALL_BODIES, $r->{body};
    is($r->{status}, 400, "$what: 400");
    is($r->{json}{error}, 'cursor is not valid for this listing', "$what: the one message");
    unlike($r->{body} // '', qr/key_id/, "$what: no key listed");
}



=== TEST 25: org A's cursor in org B: 400 for B's admin, 404 for A's admin on B's path
--- port: $TEST_APIKEY_API_PORT
--- check
my $c = api_l('?limit=2')->{json}{next_cursor};
my $mpath = "/api/orgs/$M/api-keys/usage?limit=2&cursor=$c";
my $r = apikeyd_get($mpath, auth($adminM->{key}));
is($r->{status}, 400, "org M's admin with org L's cursor: 400");
is($r->{json}{error}, 'cursor is not valid for this listing', '... the one message');
unlike($r->{body}, qr/\Q$_\E/, "... nothing of org L ($_)") for $L, @NAMES;
$r = apikeyd_get($mpath, auth($K{'a-admin'}{key}));
is($r->{status}, 404, "org L's admin on org M's path: 404");
unlike($r->{body}, qr/\Q$_\E/, "... nothing of org M ($_)") for $M, 'm-admin', 'm-other';
my $own = apikeyd_get("/api/orgs/$M/api-keys/usage?limit=1", auth($adminM->{key}))->{json};
$r = apikeyd_get(lpath("?limit=1&cursor=$own->{next_cursor}"), auth($K{'a-admin'}{key}));
is($r->{status}, 400, "org L's admin with org M's cursor: 400");
unlike($r->{body}, qr/m-admin|m-other/, '... nothing of org M');



=== TEST 26: ETag / If-None-Match on the listing: 304 while unchanged, 200 after a change
--- port: $TEST_APIKEY_API_PORT
--- check
my $r = api_l('?sort=name&limit=3');
my $tag = $r->{headers}{etag};
like($tag // '', qr/^"[0-9a-f]{32}"$/, 'a strong ETag');
my $again = apikeyd_get(lpath('?sort=name&limit=3'), [ @{ auth($K{'a-admin'}{key}) }, "If-None-Match: $tag" ]);
is($again->{status}, 304, 'If-None-Match with it: 304');
is($again->{body} // '', '', '... without a body');
is($again->{headers}{etag}, $tag, '... and the same ETag');
$again = apikeyd_get(lpath('?sort=name&limit=3'), [ @{ auth($K{'a-admin'}{key}) }, qq{If-None-Match: "x", W/$tag} ]);
is($again->{status}, 304, 'in a list, weak: 304');
$again = apikeyd_get(lpath('?sort=name&limit=3'), [ @{ auth($K{'a-admin'}{key}) }, 'If-None-Match: "0123"' ]);
is($again->{status}, 200, 'another tag: 200');
$again = apikeyd_get(lpath('?sort=name&limit=4'), [ @{ auth($K{'a-admin'}{key}) }, "If-None-Match: $tag" ]);
is($again->{status}, 200, 'another page: 200');
psql(q{UPDATE api_keys SET name = 'b-busier' WHERE id = :'id'}, { id => $K{'b-busy'}{key_id} });
$again = apikeyd_get(lpath('?sort=name&limit=3'), [ @{ auth($K{'a-admin'}{key}) }, "If-None-Match: $tag" ]);
is($again->{status}, 200, 'after a change: 200');
isnt($again->{headers}{etag}, $tag, '... with a new ETag');
psql(q{UPDATE api_keys SET name = 'b-busy' WHERE id = :'id'}, { id => $K{'b-busy'}{key_id} });
$again = apikeyd_get(lpath('?sort=name&limit=3'), [ "If-None-Match: $tag" ]);
is($again->{status}, 401, 'no key: 401 whatever the ETag');



=== TEST 27: ETag / If-None-Match on the per-key view
--- port: $TEST_APIKEY_API_PORT
--- check
my $path = "/api/orgs/$L/api-keys/$K{'b-busy'}{key_id}/usage";
my $r = apikeyd_get($path, auth($K{'a-admin'}{key}));
is($r->{status}, 200, 'per-key view: 200');
my $tag = $r->{headers}{etag};
like($tag // '', qr/^"[0-9a-f]{32}"$/, 'a strong ETag');
my $again = apikeyd_get($path, [ @{ auth($K{'a-admin'}{key}) }, "If-None-Match: $tag" ]);
is($again->{status}, 304, 'If-None-Match: 304');
psql(qq{UPDATE api_key_usage_daily SET requests = requests + 1, status_2xx = status_2xx + 1
        WHERE key_id = :'id' AND endpoint = '/today'}, { id => $K{'b-busy'}{key_id} });
$again = apikeyd_get($path, [ @{ auth($K{'a-admin'}{key}) }, "If-None-Match: $tag" ]);
is($again->{status}, 200, 'after new usage: 200');
is($again->{json}{requests_today}, $WANT{'b-busy'}{requests_today} + 1,
   '... requests_today follows an UPDATE of the rollup');
psql(qq{UPDATE api_key_usage_daily SET requests = requests - 1, status_2xx = status_2xx - 1
        WHERE key_id = :'id' AND endpoint = '/today'}, { id => $K{'b-busy'}{key_id} });



=== TEST 28: every key exactly once across pages while keys are being created
--- port: $TEST_APIKEY_API_PORT
--- check
# 300 keys in a third org, then pages of 7 while a session adds 150 more.
my $P = apikeyctl('org', 'create', 'listing-p')->{org_id};
my $admin = new_key($P, 'p-admin', '--scopes', 'usage:read');
my $make = sub {
    my ($n, $tag) = @_;
    return qq{INSERT INTO api_keys (org_id, name, prefix, hint, key_hash, last_used_at)
              SELECT '$P', '$tag-' || lpad(g::text, 4, '0'), 'ak', 'ak_' || substr(md5(g::text || '$tag'), 1, 4),
                     sha256(('$tag' || g || random())::bytea),
                     CASE WHEN g % 3 = 0 THEN now() - g * interval '1 minute' END
                FROM generate_series(1, $n) g};
};
psql($make->(300, 'pre'));
my %pre = map { $_->[0] => 1 } @{ psql(qq{SELECT name FROM api_keys WHERE org_id = '$P'}) };
ok_eventually(sub { apikeyd_get("/api/orgs/$P/api-keys/usage?limit=1", auth($admin->{key}))->{status} == 200 },
              10, 'org P admin key published');
for my $q ('sort=created_at', 'sort=created_at&order=desc', 'sort=name', 'sort=name&order=desc',
           'sort=last_used_at', 'sort=requests_today&order=asc', 'status=active&sort=name') {
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        # One key every 5 ms or so, each its own transaction.
        eval { psql(qq{DO \$\$ BEGIN FOR i IN 1..150 LOOP
                          INSERT INTO api_keys (org_id, name, prefix, hint, key_hash)
                          VALUES ('$P', 'new-' || md5(random()::text), 'ak', 'ak_zzzz',
                                  sha256(random()::text::bytea));
                          COMMIT; PERFORM pg_sleep(0.005); END LOOP; END \$\$}) };
        POSIX::_exit(0);
    }
    # Page only once the creation is under way.
    wait_until(sub { psql_one(qq{SELECT count(*) FROM api_keys WHERE org_id = '$P'
                                  AND name LIKE 'new-%'}) > 0 }, 10, 'keys being created');
    my (%seen, @dups, $cursor, $pages);
    while (1) {
        my $r = apikeyd_get("/api/orgs/$P/api-keys/usage?limit=7&$q"
                            . (defined $cursor ? "&cursor=$cursor" : ''), auth($admin->{key}));
        last unless $r->{status} == 200;
        ++$pages;
        for (@{ names($r->{json}) }) { push @dups, $_ if $seen{$_}++ }
        $cursor = $r->{json}{next_cursor} // last;
    }
    waitpid($pid, 0);
    my @missed = grep { !$seen{$_} } sort keys %pre;
    is(scalar @missed, 0, "$q: every key that existed before, in $pages pages") or diag("missed @missed[0..4]");
    is(scalar @dups, 0, "$q: no key twice") or diag("twice: @dups[0..4]");
    my $new = grep { /^new-/ } keys %seen;
    my $made = psql_one(qq{SELECT count(*) FROM api_keys WHERE org_id = '$P' AND name LIKE 'new-%'});
    # Oldest first, the keys made meanwhile come last: some are listed.
    ok($new > 0, "$q: $new of the $made keys created meanwhile listed") if $q eq 'sort=created_at';
    psql(qq{DELETE FROM api_keys WHERE org_id = '$P' AND name LIKE 'new-%'});
}



=== TEST 29: one database session (--api-db-sessions 1): 12 requests at once all answered
--- port: $TEST_APIKEY_API_PORT
--- check
my @kids;
for my $i (1 .. 12) {
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        my $r = apikeyd_get(lpath($i % 2 ? '?sort=requests_today' : '?sort=name'), auth($K{'a-admin'}{key}));
        POSIX::_exit($r->{status} == 200 ? 0 : 1);
    }
    push @kids, $pid;
}
my $ok = 0;
for (@kids) { waitpid($_, 0); ++$ok if $? == 0 }
is($ok, 12, 'all 12 answered 200 through the one session');
my $n = psql_one(q{SELECT count(*) FROM pg_stat_activity WHERE application_name = 'apikeyd-api'});
ok($n <= 1, "at most one analytics session open ($n)");



=== TEST 30: no key material in any answer
--- port: $TEST_APIKEY_API_PORT
--- check
my @bodies = (@ALL_BODIES, map { $_->[1]{body} // '' } all_responses());
ok(@bodies > 20, 'answers to check: ' . scalar @bodies);
my @keys = map { $_->{key} } values %K;
my $leaks = grep { my $b = $_; grep { index($b, $_) >= 0 } @keys } @bodies;
is($leaks, 0, 'no answer holds a key');
