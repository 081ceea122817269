#!/usr/bin/perl
# Figures from callgrind output files, for tools/bench/gateway.
#
#   cg_stats.pl alloc FILE
#       instructions spent in glibc's allocator (malloc, free and their
#       internals, self cost): the part of a run that depends on the heap's
#       layout after start-up rather than on the request path
#   cg_stats.pl profile N1 FILE1 N2 FILE2
#       the module's functions (and nginx's request phases, for scale) by
#       inclusive instructions per request, from runs of N1 and N2
#       requests: (inclusive(FILE2) - inclusive(FILE1)) / (N2 - N1), so
#       start-up cancels
use strict;
use warnings;

# function => cost, from callgrind_annotate's function table
sub costs {
    my ($file, $inclusive) = @_;
    my %cost;
    chdir('/');    # callgrind_annotate names files relative to its cwd
    open(my $in, '-|', 'callgrind_annotate', '--auto=no',
         '--inclusive=' . ($inclusive ? 'yes' : 'no'), '--threshold=100',
         $file) or die "callgrind_annotate: $!\n";
    while (<$in>) {
        next unless /^\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S.*)$/;
        my ($n, $what) = ($1, $2);
        $n =~ tr/,//d;
        $what =~ s/\s+\[[^\]]*\]\s*$//;    # [object]
        if (!$inclusive) {
            $cost{$what} += $n;
            next;
        }
        $what =~ s/^(?:\?\?\?|[^:\s]*\.(?:c|cc|cpp|h)|[^:\s]*\/[^:\s]*):(?!:)//;
        $what =~ s/\(.*$//;                 # C++ parameters
        # a function can be listed more than once (code inlined from
        # other files); its own, largest entry is the inclusive cost
        $cost{$what} = $n if !defined $cost{$what} || $n > $cost{$what};
    }
    close($in);
    return \%cost;
}

my $mode = shift // '';

if ($mode eq 'alloc') {
    my $c = costs($ARGV[0], 0);
    my $sum = 0;
    for my $fn (keys %$c) {
        $sum += $c->{$fn} if $fn =~ m{^\./malloc/};
    }
    print "$sum\n";
    exit 0;
}

if ($mode eq 'profile') {
    my ($n1, $f1, $n2, $f2) = @ARGV;
    my $c1 = costs($f1, 1);
    my $c2 = costs($f2, 1);
    my $pat = qr/apikey|sha256|KeyTable|KeyHashMemo|UsageSegment|key_is_well_formed|copy_truncated|copy_cut|crc32|aes_cbc_mac|siphash|ngx_http_core_run_phases|ngx_http_process_request$|ngx_http_finalize_request|ngx_http_free_request/;
    my @rows;
    for my $fn (keys %$c2) {
        next unless $fn =~ $pat;
        my $d = ($c2->{$fn} - ($c1->{$fn} // 0)) / ($n2 - $n1);
        push @rows, [$d, $fn] if $d >= 1;
    }
    printf "%9.0f  %s\n", $_->[0], $_->[1]
        for sort { $b->[0] <=> $a->[0] } @rows;
    exit 0;
}

die "usage: cg_stats.pl alloc FILE | profile N1 FILE1 N2 FILE2\n";
