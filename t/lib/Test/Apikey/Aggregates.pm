package Test::Apikey::Aggregates;

# The aggregation areas of the usage segment ($TEST_NGINX_APIKEY_USAGE) as
# the workers wrote them: shared/usage_agg.h's layout, read from the file.
# Only meaningful while nothing collects them (apikeyd stopped).

use strict;
use warnings;

use Exporter qw(import);

use Test::Apikey::Usage qw(usage_segment_read usage_slot_count usage_slot_offset);

our @EXPORT_OK = qw(usage_aggregates usage_agg_counters usage_agg_entries);

# The header's aggregation fields (at +128) and the tables' offsets in a
# buffer, as agg_layout_for() computes them.
sub _layout {
    my ($entries, $labels, $cells, undef, $offset, $area) =
        unpack 'V V V V Q< Q<', usage_segment_read(128, 32);
    my $pow2 = sub { my $p = 1; $p <<= 1 while $p < $_[0]; $p };
    my $line = sub { ($_[0] + 63) & ~63 };
    my %l = (entries => $entries, labels => $labels, cells => $cells,
             offset => $offset, area => $area);
    $l{label_index_at} = $line->(64 + 4 * $pow2->(2 * $entries));
    $l{entries_at} = $line->($l{label_index_at} + 4 * $pow2->(2 * $labels));
    $l{labels_at}  = $l{entries_at} + 128 * $entries;
    $l{cells_at}   = $l{labels_at} + 128 * $labels;
    $l{buffer}     = $area / 2;
    return \%l;
}

# usage_agg_entries() -> the header's entries per buffer (aggregate=N).
sub usage_agg_entries { return unpack 'V', usage_segment_read(128, 4) }

# usage_aggregates() -> a list of { slot, epoch, state, key_id, method,
# endpoint, hour, requests, s2xx, s3xx, s4xx, s5xx, other, rt_sum, bytes,
# last_used_us, ip, hist } for every entry of every buffer of every slot
# (state 1 active, 2 closed); key_id as UUID text, hour in hours since
# 1970, ip as text, hist the histogram's total count, offset where the
# entry is in the file (to forge it).
sub usage_aggregates {
    my $l = _layout();
    my @out;
    for my $slot (0 .. usage_slot_count() - 1) {
        for my $b (0, 1) {
            my $base = $l->{offset} + $slot * $l->{area} + $b * $l->{buffer};
            my ($state, $epoch, $n, $nl, $nc) =
                unpack 'V x4 Q< V V V', usage_segment_read($base, 28);
            next unless $n;
            my @labels = map {
                my ($ml, $el, $m, $e) = unpack 'x8 C C x6 a16 a96', $_;
                [ substr($m, 0, $ml), substr($e, 0, $el) ]
            } unpack '(a128)*', $nl ? usage_segment_read($base + $l->{labels_at}, 128 * $nl) : '';
            my %hist;
            for (unpack '(a16)*', $nc ? usage_segment_read($base + $l->{cells_at}, 16 * $nc) : '') {
                my ($eb, undef, $count) = unpack 'V V Q<', $_;
                $hist{ $eb >> 8 } += $count;
            }
            my $i = 0;
            for (unpack '(a128)*', usage_segment_read($base + $l->{entries_at}, 128 * $n)) {
                my ($key, $label, $hour, @s) = unpack 'a16 V l< Q<5', $_;
                my ($rt, $bytes, $last, $ip, $fam) = unpack 'x64 Q< Q< q< a16 C', $_;
                my ($m, $e) = $label ? @{ $labels[$label - 1] } : ('(other)', '(other)');
                my $h = unpack 'H32', $key;
                push @out, {
                    slot => $slot, epoch => $epoch, state => $state,
                    key_id => join('-', unpack 'A8 A4 A4 A4 A12', $h),
                    method => $m, endpoint => $e, hour => $hour,
                    requests => $s[0] + $s[1] + $s[2] + $s[3] + $s[4],
                    s2xx => $s[0], s3xx => $s[1], s4xx => $s[2], s5xx => $s[3], other => $s[4],
                    rt_sum => $rt, bytes => $bytes, last_used_us => $last,
                    ip => $fam == 4 ? join('.', unpack 'C4', $ip) : $fam == 6 ? 'v6' : '',
                    hist => $hist{$i} // 0,
                    offset => $base + $l->{entries_at} + 128 * $i,
                };
                $i++;
            }
        }
    }
    return @out;
}

# usage_agg_counters() -> { overflow, label_overflow, histogram_overflow }
# summed over every slot.
sub usage_agg_counters {
    my %c = (overflow => 0, label_overflow => 0, histogram_overflow => 0);
    for my $slot (0 .. usage_slot_count() - 1) {
        my @v = unpack 'Q<3', usage_segment_read(usage_slot_offset($slot) + 192, 24);
        $c{overflow} += $v[0];
        $c{label_overflow} += $v[1];
        $c{histogram_overflow} += $v[2];
    }
    return \%c;
}

1;
