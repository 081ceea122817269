package Test::Apikey::Usage;

# Usage capture as the tests observe it: apikeyd's /metrics as a hash, the
# api_key_usage rows and api_keys counters in PostgreSQL, and the usage
# segment file that nginx's workers and apikeyd share.

use strict;
use warnings;

use Exporter qw(import);
use Time::HiRes ();

use Test::Apikey::Util qw(wait_until);
use Test::Apikey::Daemon qw(apikeyd_get);
use Test::Apikey::Postgres qw(psql_one);

our @EXPORT_OK = qw(
    apikeyd_metrics metric_sum metrics_values
    usage_rows wait_usage_rows usage_duplicates key_request_count wait_request_count
    usage_segment_read usage_segment_u64 usage_slot_count usage_slot_offset
    usage_slot_state usage_ring_head usage_ring_tail
    usage_slot_generation usage_ring_forge
);

# --- /metrics ---------------------------------------------------------------------

# apikeyd_metrics(%opt) -> { 'name{labels}' => value } from apikeyd's
# GET /metrics (comments and blank lines skipped). %opt goes to apikeyd_get
# (timeout: 3 s unless given). Dies unless the answer is 200, so that it can
# be polled with wait_until.
sub apikeyd_metrics {
    my (%opt) = @_;
    my $r = apikeyd_get('/metrics', [], timeout => 3, %opt);
    die "GET /metrics: status $r->{status}\n" unless $r->{status} == 200;
    return metrics_values($r->{body});
}

# metrics_values($text) -> { 'name{labels}' => value } of Prometheus text
# (comments and blank lines skipped).
sub metrics_values {
    my ($text) = @_;
    my %m;
    for (split /\n/, $text) {
        next if /^#/ || !/\S/;
        $m{$1} = $2 if /^(\S+)\s+(\S+)$/;
    }
    return \%m;
}

# metric_sum($metrics, $family) -> the sum of every sample of the family
# (all label sets; 0 when there is none).
sub metric_sum {
    my ($m, $name) = @_;
    my $s = 0;
    $s += $m->{$_} for grep { /^\Q$name\E(?:\{|$)/ } keys %$m;
    return $s;
}

# --- rows and counters in PostgreSQL ------------------------------------------------

# usage_rows($key_id) -> the number of api_key_usage rows of the key.
sub usage_rows {
    my ($key_id) = @_;
    return psql_one(q{SELECT count(*) FROM api_key_usage WHERE key_id = :'id'},
                    { id => $key_id });
}

# wait_usage_rows($key_id, $n, $timeout_s [, $what]) -> elapsed seconds once
# the key has at least $n rows; dies like wait_until ("$n rows" by default).
sub wait_usage_rows {
    my ($key_id, $n, $timeout, $what) = @_;
    return wait_until(sub { usage_rows($key_id) >= $n }, $timeout, $what // "$n rows");
}

# usage_duplicates() -> how many (node, slot, generation, sequence)
# idempotency keys occur more than once in api_key_usage (0 is right).
sub usage_duplicates {
    return psql_one(q{SELECT count(*) FROM (SELECT 1 FROM api_key_usage
                      GROUP BY node, slot, generation, sequence HAVING count(*) > 1) d});
}

# key_request_count($key_id) -> api_keys.request_count of the key.
sub key_request_count {
    my ($key_id) = @_;
    return psql_one(q{SELECT request_count FROM api_keys WHERE id = :'id'}, { id => $key_id });
}

# wait_request_count($key_id, $n, $timeout_s [, $what]) -> elapsed seconds
# once the key's request_count is at least $n; dies like wait_until. The
# rollups and request_count come from the workers' aggregates, committed
# apart from the raw rows (every 250 ms): a row being in says nothing about
# them.
sub wait_request_count {
    my ($key_id, $n, $timeout, $what) = @_;
    return wait_until(sub { (key_request_count($key_id) // 0) >= $n }, $timeout,
                      $what // "request_count $n");
}

# --- the usage segment ($TEST_NGINX_APIKEY_USAGE) ------------------------------------
# shared/usage_ring.h: a 4 KiB header (slot_count, a u32, at +16), then one
# 256-byte UsageSlot per ring: state (u32) at +0, head (u64) at +64, tail
# (u64) at +128.

my $HEADER_SIZE = 4096;
my $SLOT_SIZE   = 256;

# usage_segment_read($offset, $length) -> bytes of the segment file.
sub usage_segment_read {
    my ($off, $len) = @_;
    open my $fh, '<:raw', $ENV{TEST_NGINX_APIKEY_USAGE} or die "open usage segment: $!\n";
    sysseek($fh, $off, 0) or die "seek usage segment: $!\n";
    my $n = sysread($fh, my $b, $len) // die "read usage segment: $!\n";
    close $fh;
    die "usage segment: $n of $len bytes at $off\n" if $n != $len;
    return $b;
}

# usage_segment_u64($offset [, $new]) -> the little-endian u64 at $offset;
# with $new, writes $new there too (returning the value it had).
sub usage_segment_u64 {
    my ($off, $new) = @_;
    open my $fh, '+<:raw', $ENV{TEST_NGINX_APIKEY_USAGE} or die "open usage segment: $!\n";
    sysseek($fh, $off, 0) or die "seek usage segment: $!\n";
    sysread($fh, my $b, 8) == 8 or die "read usage segment: $!\n";
    if (defined $new) {
        sysseek($fh, $off, 0);
        syswrite($fh, pack('Q<', $new)) == 8 or die "write usage segment: $!\n";
    }
    close $fh;
    return unpack 'Q<', $b;
}

sub usage_slot_count  { return unpack 'V', usage_segment_read(16, 4) }
sub usage_slot_offset { return $HEADER_SIZE + $SLOT_SIZE * $_[0] }

# usage_slot_state($slot) -> SlotOwnership: 0 free, 1 owned, 2 retired.
sub usage_slot_state { return unpack 'V', usage_segment_read(usage_slot_offset($_[0]), 4) }

sub usage_ring_head { return usage_segment_u64(usage_slot_offset($_[0]) + 64) }

# usage_ring_tail($slot [, $new]): the consumer position (apikeyd's); $new
# moves it (for crash simulations, with apikeyd stopped).
sub usage_ring_tail { return usage_segment_u64(usage_slot_offset($_[0]) + 128, $_[1]) }

# usage_slot_generation($slot) -> the generation of the slot's current claim
# (u64 at +8).
sub usage_slot_generation { return usage_segment_u64(usage_slot_offset($_[0]) + 8) }

# usage_ring_forge($slot, key_id => UUID, org_id => UUID, %fields) -> the
# ring position written: what a process able to write the segment can do.
# Writes one record (shared/usage_record.h) at the slot's head and moves
# the head past it, as the producer does; only while that ring's worker is
# idle. %fields: slot, generation, sequence (the record's claimed identity,
# default 0), endpoint ('/forged'), method (GET), status (200), result (0 =
# ok), time_us (now).
sub usage_ring_forge {
    my ($slot, %f) = @_;
    my $uuid = sub { my $h = $_[0] =~ tr/-//dr; die "bad uuid $_[0]\n" unless $h =~ /^[0-9a-f]{32}$/i;
                     return pack 'H32', $h };
    my $endpoint = $f{endpoint} // '/forged';
    my $method   = $f{method}   // 'GET';
    my $rec = pack 'v C C v C C C x7 V x4 Q< Q< q< Q< Q< a16 a16 a16 a16 a96 a64',
        1, $f{result} // 0, 0, $f{status} // 200, length $method, length $endpoint, 0,
        $f{slot} // 0, $f{generation} // 0, $f{sequence} // 0,
        $f{time_us} // int(Time::HiRes::time() * 1e6), 1000, 6,
        $uuid->($f{key_id}), $uuid->($f{org_id}), '', $method, $endpoint, '';
    die "record is " . length($rec) . " bytes\n" unless length $rec == 288;
    my $slots = usage_slot_count();
    my $cap   = usage_segment_u64(24);
    my $head  = usage_ring_head($slot);
    my $at    = $HEADER_SIZE + $SLOT_SIZE * $slots + ($slot * $cap + ($head & ($cap - 1))) * 288;
    open my $fh, '+<:raw', $ENV{TEST_NGINX_APIKEY_USAGE} or die "open usage segment: $!\n";
    sysseek($fh, $at, 0) or die "seek usage segment: $!\n";
    syswrite($fh, $rec) == 288 or die "write usage segment: $!\n";
    close $fh;
    usage_segment_u64(usage_slot_offset($slot) + 64, $head + 1);
    return $head;
}

1;
