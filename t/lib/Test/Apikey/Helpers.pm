package Test::Apikey::Helpers;

# Small helpers that several test files need: creating a key in an org,
# the nginx sections of a usage-capture server, and a percentile of
# measured figures.

use strict;
use warnings;

use Exporter qw(import);

use Test::Apikey::Daemon qw(apikeyctl);
use Test::Apikey::Nginx qw(apikey_http_config);

our @EXPORT_OK = qw(new_key usage_conf percentile);

# new_key($org_id, $name, @args) -> apikeyctl's JSON for
# `key create --org $org_id --name $name @args` ({ key, key_id, hint ... }).
sub new_key {
    my ($org, $name, @args) = @_;
    return apikeyctl('key', 'create', '--org', $org, '--name', $name, @args);
}

# usage_conf(size => S, workers => N, config => TEXT) -> start_nginx's
# sections for a server that publishes keys and records usage in a segment
# of size S ('' for the default), with N workers (default 1).
sub usage_conf {
    my (%o) = @_;
    return (
        workers     => $o{workers} // 1,
        http_config => apikey_http_config(usage => $o{size} // ''),
        config      => $o{config} // '',
    );
}

# percentile($p, @values) -> the value at rank $p % of the sorted values
# (nearest rank); 0 when there is none.
sub percentile {
    my ($p, @v) = @_;
    return 0 unless @v;
    @v = sort { $a <=> $b } @v;
    return $v[ int($p / 100 * $#v + 0.5) ];
}

1;
