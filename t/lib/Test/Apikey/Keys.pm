package Test::Apikey::Keys;

# API keys as the tests make and look for them: the key format
# (docs: prefix_ + 30 random base62 + 6 base62 CRC32 of what precedes),
# keys that are well-formed but in no table, one-character typos, the
# strings that must never leak (and a scanner that finds them in any bytes
# without ever printing them), and waiting until nginx's key table shows
# each key in its final state.

use strict;
use warnings;

use Digest::SHA qw(sha256_hex);
use Exporter qw(import);

use Test::Apikey::Util qw(wait_until);
use Test::Apikey::Http qw(http_get);
use Test::Apikey::Nginx qw(start_nginx stop_nginx apikey_http_config);

our @EXPORT_OK = qw(
    key_checksum make_key key_typo key_secrets secrets_in wait_key_results
    key_hint secret_windows key_material_in key_hit_text
);

my @B62 = ('0' .. '9', 'A' .. 'Z', 'a' .. 'z');
my $B62 = join '', @B62;

sub _crc32 {
    my $c = 0xffffffff;
    for my $b (unpack 'C*', shift) {
        $c ^= $b;
        $c = ($c & 1) ? (($c >> 1) ^ 0xedb88320) : ($c >> 1) for 1 .. 8;
    }
    return $c ^ 0xffffffff;
}

# key_checksum($body) -> the 6 base62 characters of CRC32($body), the end of
# a key whose first part ("prefix_" + 30 random characters) is $body.
sub key_checksum {
    my ($body) = @_;
    my ($v, $sum) = (_crc32($body), '');
    for (1 .. 6) { $sum = $B62[$v % 62] . $sum; $v = int($v / 62) }
    return $sum;
}

# make_key([$prefix]) -> a well-formed key (right checksum; prefix "ak"
# unless given) that no key table holds.
sub make_key {
    my ($prefix) = @_;
    my $body = ($prefix // 'ak') . '_' . join('', map { $B62[int rand 62] } 1 .. 30);
    return $body . key_checksum($body);
}

# key_typo($key [, $pos]) -> the key with the character $pos places after
# the "_" (default 5; 30..35 are in the checksum) replaced by the next base62
# character: still well-formed, but the checksum no longer matches.
sub key_typo {
    my ($key, $pos) = @_;
    my $i = index($key, '_') + 1 + ($pos // 5);
    my $c = substr($key, $i, 1);
    substr($key, $i, 1, $B62[(index($B62, $c) + 1) % 62]);
    return $key;
}

# key_secrets($name => $key, ...) -> ([label, text], ...): per key what must
# never be shown again: "NAME key", "NAME random part" (the 30 characters
# after "_"), "NAME sha256" and "NAME SHA256" (hex SHA-256 of the key, lower
# and upper case).
sub key_secrets {
    my (@pairs) = @_;
    my @s;
    while (my ($name, $key) = splice @pairs, 0, 2) {
        push @s, [ "$name key", $key ],
                 [ "$name random part", substr($key, index($key, '_') + 1, 30) ],
                 [ "$name sha256", sha256_hex($key) ],
                 [ "$name SHA256", uc sha256_hex($key) ];
    }
    return @s;
}

# secrets_in($text, @secrets) -> the labels of the secrets found in $text
# (empty: clean).
sub secrets_in {
    my ($text, @secrets) = @_;
    return map { $_->[0] } grep { index($text, $_->[1]) >= 0 } @secrets;
}

# key_hint($key) -> what the API may show of a key: the prefix, "_" and the
# first 4 random characters.
sub key_hint {
    my ($key) = @_;
    return substr($key, 0, index($key, '_') + 5);
}

# secret_windows($key) -> every 8-character window of the part of the key
# after its hint (26 random characters and the 6 checksum characters): each
# is a piece of the secret that must never be shown.
sub secret_windows {
    my ($key) = @_;
    my $rest = substr($key, length key_hint($key));
    return map { substr($rest, $_, 8) } 0 .. length($rest) - 8;
}

# key_material_in($bytes, @keys) -> hits, where each of @keys is
# { name, key, key_id }: every place where a key, or 8 or more characters of
# its secret beyond the hint (secret_windows), occur in $bytes (text or
# binary). One hit per key per run of base62 characters:
# { name, key_id, hint, kind ('full key' or 'secret fragment'), offset (byte),
# line (1-based) }, in order of offset. A one-character typo of a key still
# leaks most of it and is found too. The hits hold no key material.
sub key_material_in {
    my ($bytes, @keys) = @_;
    my %window;    # 8 characters -> [key, ...]
    for my $k (@keys) {
        push @{ $window{$_} }, $k for secret_windows($k->{key});
    }
    my @hits;
    while ($bytes =~ /([0-9A-Za-z]{8,})/g) {
        my ($run, $start) = ($1, $-[1]);
        my %seen;
        for my $i (0 .. length($run) - 8) {
            my $ks = $window{ substr($run, $i, 8) } or next;
            for my $k (grep { !$seen{ $_->{name} }++ } @$ks) {
                # a run is maximal, so a whole key starts at its "prefix_" just before it
                my $from = $start - index($k->{key}, '_') - 1;
                my $full = $from >= 0 && substr($bytes, $from, length $k->{key}) eq $k->{key};
                push @hits, {
                    name => $k->{name}, key_id => $k->{key_id} // '',
                    hint => key_hint($k->{key}),
                    kind => $full ? 'full key' : 'secret fragment',
                    offset => $start + $i,
                    line => 1 + (substr($bytes, 0, $start + $i) =~ tr/\n//),
                };
            }
        }
    }
    return @hits;
}

# key_hit_text($hit) -> 'line 12 (byte 345): full key of "NAME" (hint
# ak_Xb3k, id UUID)': where and whose, never the key itself.
sub key_hit_text {
    my ($h) = @_;
    return sprintf 'line %d (byte %d): %s of "%s" (hint %s%s)', $h->{line}, $h->{offset},
        $h->{kind}, $h->{name}, $h->{hint}, length $h->{key_id} ? ", id $h->{key_id}" : '';
}

# wait_key_results({ $key => RESULT, ... }, $timeout_s [, $what]) -> elapsed
# seconds once nginx's $apikey_result is RESULT (ok, unknown, expired,
# revoked ...) for every key: runs its own nginx (apikey_keys
# $TEST_NGINX_APIKEY_KEYS) and stops it again, so call it while no nginx of
# the file runs. Dies like wait_until.
sub wait_key_results {
    my ($want, $timeout, $what) = @_;
    start_nginx(http_config => apikey_http_config(),
                config => 'location /t.txt { apikey on; add_header X-Result $apikey_result always; }');
    my $result = sub { http_get('/t.txt', ["X-API-Key: $_[0]"])->{headers}{'x-result'} // '' };
    my $t = eval {
        wait_until(sub { !grep { $result->($_) ne $want->{$_} } sort keys %$want },
                   $timeout, $what // 'key table');
    };
    my $err = $@;
    stop_nginx();
    die $err unless defined $t;
    return $t;
}

1;
