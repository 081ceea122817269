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
    usage_slot_generation usage_ring_forge usage_ring_rewind
    usage_stream_chunk_offset usage_ring_records
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

# The stream area (shared/usage_stream.h): from the page after the slot
# descriptors, a 64-byte pool line, 128 bytes of state per slot, then each
# slot's chunk table (table_size u32 entries, the chunk count rounded up to
# a power of two), the pool links, and from the next page the 64 KiB chunks.
my $CHUNK = 65536;
sub _page_up { my $n = shift; return ($n + 4095) & ~4095 }

# usage_stream_chunk_offset($slot, $position) -> the file offset of the
# stream position (its chunk must be the slot's).
sub usage_stream_chunk_offset {
    my ($slot, $pos) = @_;
    my $slots  = usage_slot_count();
    my $chunks = usage_segment_u64(24);
    my $table  = 1;
    $table *= 2 while $table < $chunks;
    my $area   = _page_up($HEADER_SIZE + $SLOT_SIZE * $slots);
    my $tables = $area + 64 + 128 * $slots;
    my $seq    = int($pos / $CHUNK);
    my $entry  = unpack 'V', usage_segment_read($tables + 4 * ($slot * $table + ($seq & ($table - 1))), 4);
    die "chunk table entry $entry out of range\n" if $entry >= $chunks;
    my $data   = $area + _page_up(64 + 128 * $slots + 4 * $slots * $table + 4 * $chunks);
    return $data + $entry * $CHUNK + $pos % $CHUNK;
}

sub _varint {
    my $v = shift;
    my $out = '';
    while ($v >= 0x80) { $out .= chr(($v & 0x7f) | 0x80); $v >>= 7 }
    return $out . chr($v);
}

# usage_ring_records($slot) -> how many records the slot's stream holds
# between its tail and its head, by the records' lengths
# (shared/usage_record.h: flags, then a u16 body length; 0x00 ends the
# chunk). With the slot's worker idle.
sub usage_ring_records {
    my ($slot) = @_;
    my ($pos, $head) = (usage_ring_tail($slot), usage_ring_head($slot));
    my $n = 0;
    while ($pos < $head) {
        my $end = $pos - $pos % $CHUNK + $CHUNK;
        my ($flags, $len) = unpack 'C v', usage_segment_read(usage_stream_chunk_offset($slot, $pos), 3);
        if ($flags == 0) { $pos = $end; next }
        $pos += 3 + $len;
        die "record past its chunk at $pos\n" if $pos > $end;
        $n++;
    }
    return $n;
}

# usage_ring_forge($slot, key_id => UUID, org_id => UUID, %fields) -> the
# stream position of the record's last byte (its sequence once stored):
# what a process able to write the segment can do. Writes one
# self-contained record (shared/usage_record.h: absolute time, no
# reference to the record before) at the slot's head, inside the chunk the
# worker is writing, and moves the head past it, as the producer does;
# only while that ring's worker is idle. %fields: endpoint ('/forged'),
# method (GET), status (200), result (0 = ok), time_us (now). A record
# carries no identity: slot, generation and sequence, if given, are
# ignored, as apikeyd would ignore them.
sub usage_ring_forge {
    my ($slot, %f) = @_;
    my $uuid = sub { my $h = $_[0] =~ tr/-//dr; die "bad uuid $_[0]\n" unless $h =~ /^[0-9a-f]{32}$/i;
                     return pack 'H32', $h };
    my $endpoint = $f{endpoint} // '/forged';
    my $method   = $f{method}   // 'GET';
    my $time     = $f{time_us} // int(Time::HiRes::time() * 1e6);
    my $body = chr($f{result} // 0) . pack('v', $f{status} // 200) . _varint(2 * $time)
        . _varint(1000) . _varint(6) . $uuid->($f{key_id}) . $uuid->($f{org_id})
        . chr(0) . chr(length $method) . $method . chr(length $endpoint) . $endpoint . chr(0);
    my $rec  = chr(0x80 | 0x20) . pack('v', length $body) . $body;
    my $head = usage_ring_head($slot);
    die "no chunk in use at the head ($head)\n" if $head % $CHUNK == 0;
    die "record does not fit in the chunk\n" if $head % $CHUNK + length($rec) > $CHUNK;
    my $at = usage_stream_chunk_offset($slot, $head);
    open my $fh, '+<:raw', $ENV{TEST_NGINX_APIKEY_USAGE} or die "open usage segment: $!\n";
    sysseek($fh, $at, 0) or die "seek usage segment: $!\n";
    syswrite($fh, $rec) == length $rec or die "write usage segment: $!\n";
    close $fh;
    usage_segment_u64(usage_slot_offset($slot) + 64, $head + length $rec);
    return $head + length($rec) - 1;
}

# usage_ring_rewind($slot, $n) -> how many records the slot's tail was put
# back by: $n, or fewer when the chunk the tail is in starts sooner (the
# chunks before it went back to the pool). Record boundaries come from the
# stored rows (a row's sequence is its record's last byte). With apikeyd
# stopped (a crash simulation).
sub usage_ring_rewind {
    my ($slot, $n) = @_;
    my $tail  = usage_ring_tail($slot);
    my $start = $tail - $tail % $CHUNK;
    my $gen   = usage_slot_generation($slot);
    my $ends  = psql_one(q{SELECT string_agg(sequence::text, ',' ORDER BY sequence DESC)
                           FROM (SELECT sequence FROM api_key_usage
                                 WHERE slot = :'slot' AND generation = :'gen'
                                   AND sequence >= :'start' AND sequence < :'tail'
                                 ORDER BY sequence DESC LIMIT :'lim') s},
                         { slot => $slot, gen => $gen, start => $start, tail => $tail,
                           lim => $n + 1 }) // '';
    my @ends = split /,/, $ends;
    my ($to, $back) = @ends > $n ? ($ends[$n] + 1, $n) : ($start, scalar @ends);
    usage_ring_tail($slot, $to);
    return $back;
}

1;
