#!/usr/bin/env perl
# tools/lib/coverage-summary.pl on made-up gcovr summaries: the sums per
# directory, the distance to the goal, and the gate's exit code at and
# around its threshold.
#
#   perl tests/coverage_summary_test.pl tools/lib/coverage-summary.pl
use strict;
use warnings;
use File::Temp qw(tempdir);
use JSON::PP;
use Test::More;

my $script = shift // 'tools/lib/coverage-summary.pl';
my $dir = tempdir(CLEANUP => 1);

# Runs the script on FILES ([name, covered, total] ...); returns (exit, out).
sub summary {
    my ($files, $min, $subset) = @_;
    my $json = "$dir/summary.json";
    open(my $fh, '>', $json) or die "$json: $!";
    print $fh encode_json({ files => [ map {
        { filename => $_->[0], line_covered => $_->[1], line_total => $_->[2] }
    } @$files ] });
    close $fh;
    my $out = qx{perl "$script" "$json" $min 95 90 $subset a b/c 2>&1};
    return ($? >> 8, $out);
}

my @files = ([ 'a/x.cpp', 90, 100 ], [ 'a/y.h', 0, 0 ], [ 'b/c/z.cpp', 189, 200 ]);
my ($rc, $out) = summary(\@files, 93, 0);
is($rc, 0, '93% of lines run (279 / 300): the 93% gate passes');
like($out, qr{^\s+a/\s+90\.0%\s+90 /\s+100\s*$}m, 'a/: 90 of 100, at the directory goal');
like($out, qr{^\s+b/c/\s+94\.5%\s+189 /\s+200\s*$}m, 'b/c/: 189 of 200');
like($out, qr{^\s+total\s+93\.0%\s+279 /\s+300\s*$}m, 'total: 279 of 300');
like($out, qr{goal 95%: 2\.0 points \(6 lines\) to go}, '6 lines short of 95%');
like($out, qr{gate: 93% passed}, 'the gate says it passed');
unlike($out, qr{a/y\.h}, 'a file without lines is not among the weakest');

($rc, $out) = summary(\@files, 94, 0);
is($rc, 1, '93% against a 94% gate: exit 1');
like($out, qr{gate: FAILED, 93\.0% is under 94%}, 'the gate says why');

# 94.96% must neither print as 95.0% nor pass a 95% gate.
($rc, $out) = summary([ [ 'a/x.cpp', 9496, 10000 ] ], 95, 0);
is($rc, 1, '94.96% against a 95% gate: exit 1');
like($out, qr{total\s+94\.9%}, '94.96% prints as 94.9%');
like($out, qr{under the 90% goal}, 'b/c/ without lines is under the directory goal');

($rc, $out) = summary([ [ 'a/x.cpp', 1, 100 ], [ 'b/c/z.cpp', 1, 100 ] ], 92, 1);
is($rc, 0, 'a subset run: no gate');
like($out, qr{gate: not applied}, 'and it says so');

($rc, $out) = summary([ [ 'elsewhere/z.cpp', 1, 1 ] ], 92, 0);
isnt($rc, 0, 'a file outside the measured directories fails the run');
like($out, qr{elsewhere/z\.cpp is in none of}, 'and names the file');

done_testing();
