package Test::Apikey::Blocks;

# Parses the __DATA__ part of a .t file into blocks:
#
#   === TEST 1: what it shows
#   --- name [filter ...][: inline value]
#   section text ...
#
# and evaluates a section on demand: $TEST_NGINX_* / $TEST_APIKEY_*
# substitution first, then the filters (eval, chomp) in the order given.

use strict;
use warnings;

use Exporter qw(import);

use Test::Apikey::Util qw(expand_vars);

our @EXPORT_OK = qw(parse_blocks section has_section);

my %KNOWN = map { $_ => 1 } qw(
    main_config http_config config workers log_level
    request raw_request more_headers request_body timeout
    error_code response_body response_body_like
    response_headers response_headers_like
    error_log no_error_log must_die wait
    init check skip skip_nginx
    port usage_rows metrics sql apikeyctl
);
my %PERL_CODE = map { $_ => 1 } qw(init check);    # no substitution, no filters
my %FILTERS   = map { $_ => 1 } qw(eval chomp);

# parse_blocks($text, $file, $first_line) -> list of blocks:
# { name, line, sections => { name => { text, filters, line } } }
sub parse_blocks {
    my ($text, $file, $first_line) = @_;
    my (@blocks, $block, $sec);
    my $lineno = ($first_line // 1) - 1;
    for my $line (split /^/, $text) {
        $lineno++;
        if ($line =~ /^===\s+(.*?)\s*$/) {
            push @blocks, $block = { name => $1, line => $lineno, file => $file,
                                     sections => {} };
            undef $sec;
        } elsif ($block && $line =~ /^---\s+(\w+)((?:[ \t]+\w+)*)[ \t]*(?::[ \t]*(.*?))?[ \t]*$/) {
            $sec = _new_section($block, $1, $2, $3, $lineno);
        } elsif ($sec && $sec->{inline}) {
            die "$file line $lineno: text after the one-line section "
                . "'--- $sec->{name}: ...' in '$block->{name}'\n" if $line =~ /\S/;
        } elsif ($sec) {
            $sec->{text} .= $line;
        } elsif ($block && $line =~ /\S/) {
            die "$file line $lineno: text outside a --- section in '$block->{name}'\n";
        }
    }
    _trim_trailing_blank_lines($_) for map { values %{ $_->{sections} } } @blocks;
    return @blocks;
}

sub _new_section {
    my ($block, $name, $filters, $inline, $lineno) = @_;
    my $where = "$block->{file} line $lineno ('$block->{name}')";
    die "$where: unknown section '--- $name'\n" unless $KNOWN{$name};
    die "$where: section '--- $name' given twice\n" if $block->{sections}{$name};
    my @filters = split ' ', $filters // '';
    for my $f (@filters) {
        die "$where: unknown filter '$f' on '--- $name' (known: eval, chomp)\n"
            unless $FILTERS{$f};
    }
    return $block->{sections}{$name} = {
        name => $name, filters => \@filters, line => $lineno,
        text => defined $inline ? $inline : '', inline => defined $inline,
    };
}

sub _trim_trailing_blank_lines {
    my ($sec) = @_;
    return if $sec->{inline};
    $sec->{text} =~ s/(?:^[ \t]*\r?\n)+\z//m;
}

sub has_section { return exists $_[0]{sections}{ $_[1] } }

# section($block, $name) -> the section's value (undef when absent).
# Evaluated once per block, on first use (so after --- init has run).
sub section {
    my ($block, $name) = @_;
    my $sec = $block->{sections}{$name} or return undef;
    return $sec->{text} if $PERL_CODE{$name};
    $sec->{value} = _evaluate($block, $sec) unless exists $sec->{value};
    return $sec->{value};
}

sub _evaluate {
    my ($block, $sec) = @_;
    my $name = $sec->{name};
    my $where = "$block->{name}: --- $name";
    my $value = expand_vars($sec->{text}, $where);
    for my $f (@{ $sec->{filters} }) {
        if ($f eq 'chomp') {
            chomp $value unless ref $value;
        } elsif ($f eq 'eval') {
            $value = _eval_perl($value, $block, $sec);
        }
    }
    return $value;
}

sub _eval_perl {
    my ($code, $block, $sec) = @_;
    my $file = $block->{file} // 'DATA';
    my $line = $sec->{line} + ($sec->{inline} ? 0 : 1);
    my $value = eval "package main; no strict; no warnings;\n#line $line \"$file\"\n$code";
    die "$block->{name}: --- $sec->{name} eval failed: $@" if $@;
    return $value;
}

1;
