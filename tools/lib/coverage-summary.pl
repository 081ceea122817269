#!/usr/bin/env perl
# Line coverage per directory from gcovr's --json-summary, the total against
# the gate and the goals, and the weakest files. Exit 1 when the total is
# under the gate (not for a subset run, whose total means nothing).
#
#   coverage-summary.pl SUMMARY.json MIN GOAL DIR_GOAL SUBSET DIR...
use strict;
use warnings;
use JSON::PP;

my ($json, $min, $goal, $dir_goal, $subset, @dirs) = @ARGV;
open(my $fh, '<', $json) or die "coverage-summary: $json: $!\n";
my $summary = decode_json(do { local $/; <$fh> });

my (%covered, %total);
my @files;
for my $f (@{ $summary->{files} }) {
    my ($dir) = grep { index($f->{filename}, "$_/") == 0 } @dirs;
    die "coverage-summary: $f->{filename} is in none of @dirs\n" unless $dir;
    $covered{$dir} += $f->{line_covered};
    $total{$dir}   += $f->{line_total};
    push @files, $f if $f->{line_total};
}

sub pct { my ($c, $t) = @_; return $t ? 100 * $c / $t : 0 }

# Truncated, not rounded, so that 94.96% never prints as 95.0%.
sub show { my ($c, $t) = @_; return sprintf('%5.1f%%', int(pct($c, $t) * 10) / 10) }

print "==> line coverage (gcovr: lines run / lines)\n";
my ($c_all, $t_all) = (0, 0);
for my $dir (@dirs) {
    my ($c, $t) = ($covered{$dir} // 0, $total{$dir} // 0);
    ($c_all, $t_all) = ($c_all + $c, $t_all + $t);
    my $note = pct($c, $t) < $dir_goal ? "   under the ${dir_goal}% goal" : '';
    printf "    %-18s %s  %5d / %5d%s\n", "$dir/", show($c, $t), $c, $t, $note;
}
printf "    %-18s %s  %5d / %5d\n", 'total', show($c_all, $t_all), $c_all, $t_all;

my $short = int($goal * $t_all / 100 + 0.999999) - $c_all;
if ($short > 0) {
    printf "    goal %d%%: %.1f points (%d lines) to go\n",
        $goal, $goal - pct($c_all, $t_all), $short;
} else {
    print "    goal $goal%: reached\n";
}

print "    weakest files:\n";
my @weak = sort { pct($a->{line_covered}, $a->{line_total})
                  <=> pct($b->{line_covered}, $b->{line_total}) } @files;
splice(@weak, 20) if @weak > 20;
printf "      %s  %5d / %5d  %s\n", show($_->{line_covered}, $_->{line_total}),
    $_->{line_covered}, $_->{line_total}, $_->{filename} for @weak;

if ($subset) {
    print "    gate: not applied (only some .t files ran)\n";
    exit 0;
}
# Whole lines: covered / total >= min / 100, without rounding.
if ($c_all * 100 >= $min * $t_all) {
    print "    gate: ${min}% passed\n";
    exit 0;
}
printf "    gate: FAILED, %s is under %d%%\n", show($c_all, $t_all) =~ s/^ +//r, $min;
exit 1;
