# Long test (tools/test --long): apikeyd killed with -9 under full load (2
# workers, wrk, one key) and started again after 60 s: sum(hourly) =
# sum(daily) = request_count = the requests nginx served with the key (from
# its access log), raw rows + counted ring drops = the same. The fast suite
# runs this with a 15 s outage (t/025).

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use Test::Apikey::AggOutage;

start_postgres();
start_apikeyd();
my $org = apikeyctl('org', 'create', 'agg-outage-long');
my $k = new_key($org->{org_id}, 'outage');
wait_key_results({ $k->{key} => 'ok' }, 10, 'key table published');

start_nginx(agg_nginx_config());
agg_outage(key => $k, outage => 60, tag => '60 s outage:');

done_testing();
