package Test::Apikey::Outcome;

# What a block's requests left behind, checked once nginx has stopped and
# apikeyd has committed every record: the api_key_usage rows they made
# (--- usage_rows), apikeyd's /metrics (--- metrics), SQL results
# (--- sql) and apikeyctl transcripts (--- apikeyctl). Each section is
# parsed here, baselined before the block's nginx starts and checked after.

use strict;
use warnings;

use Exporter qw(import);
use JSON::PP ();
use Text::ParseWords qw(shellwords);

use Test::Apikey::Util qw(wait_until);
use Test::Apikey::Daemon qw(apikeyctl_raw apikeyd_pid);
use Test::Apikey::Postgres qw(psql);
use Test::Apikey::Usage qw(apikeyd_metrics metric_sum usage_duplicates);

our @EXPORT_OK = qw(
    usage_settle parse_table parse_metric_lines parse_sql_queries
    parse_transcript outcome_baseline outcome_check
);

# --- settling ---------------------------------------------------------------------

sub _segment_created_at {
    open my $fh, '<:raw', $ENV{TEST_NGINX_APIKEY_USAGE} or return undef;
    sysseek($fh, 40, 0) && sysread($fh, my $b, 8) == 8 or return undef;
    return unpack 'q<', $b;
}

# usage_settle([$timeout_s]): with nginx stopped (or idle), waits until
# apikeyd maps the current usage segment, every ring of it is empty, the
# spool too, and no slot's aggregation buffers hold anything uncommitted. A
# ring's read position moves only after its records are committed, and a
# buffer is cleared only after its aggregates are, so from then on every
# record nginx wrote is a row and every request is in the rollups.
# Returns at once when there is no usage segment.
sub usage_settle {
    my ($timeout) = @_;
    return 0 unless -e $ENV{TEST_NGINX_APIKEY_USAGE};
    return wait_until(sub {
        my $created = _segment_created_at() // return 0;
        my $m = apikeyd_metrics();
        return 0 unless grep { /^apikey_ring_depth\{.*segment="$created"/ } keys %$m;
        return metric_sum($m, 'apikey_ring_depth') == 0
            && ($m->{apikey_spool_bytes} // 0) == 0
            && metric_sum($m, 'apikey_agg_pending') == 0;
    }, $timeout // 10, 'apikeyd committed every usage record and aggregate '
                       . '(rings, spool and aggregation buffers empty)');
}

# --- --- usage_rows ---------------------------------------------------------------
# A table: a header naming columns, then one line per expected row (or per
# group with a `count` column), cells separated by `|`.

my %COLUMN = (
    key        => 'k.name',
    org        => 'o.name',
    endpoint   => 'u.endpoint',
    method     => 'u.method',
    status     => 'u.status_code',
    result     => 'u.result',
    user_agent => 'u.user_agent',
    ip         => 'host(u.ip_address)',
    node       => 'u.node',
);

# parse_table($text, $where) -> { columns => [...], rows => { "c1\0c2..." => n } }
sub parse_table {
    my ($text, $where) = @_;
    my @lines = grep { /\S/ && !/^\s*#/ } split /\n/, $text // '';
    my ($head, @body) = @lines;
    return { columns => [], rows => {} } unless defined $head;
    my @cols = _cells($head);
    for my $c (@cols) {
        die "$where: unknown column '$c' (known: count, "
            . join(', ', sort keys %COLUMN) . ")\n" unless $COLUMN{$c} || $c eq 'count';
    }
    my ($ci) = grep { $cols[$_] eq 'count' } 0 .. $#cols;
    my @keys = grep { $_ ne 'count' } @cols;
    die "$where: no column besides count\n" unless @keys;
    my %rows;
    for my $line (@body) {
        my @v = _cells($line);
        die "$where: " . scalar(@v) . " cells in '$line', the header has "
            . scalar(@cols) . "\n" if @v != @cols;
        my $n = defined $ci ? splice(@v, $ci, 1) : 1;
        die "$where: count '$n' in '$line' is not a number\n" unless $n =~ /^\d+$/;
        $rows{ join "\0", @v } += $n;
    }
    delete $rows{$_} for grep { !$rows{$_} } keys %rows;
    return { columns => \@keys, rows => \%rows };
}

sub _cells { return map { s/^\s+|\s+$//gr } split /\|/, $_[0], -1 }

# -> { "c1\0c2..." => n } of every api_key_usage row, by the given columns
# (fetched as hex, so that any byte compares exactly).
sub _row_counts {
    my ($cols) = @_;
    my @expr = map { "encode(convert_to(coalesce(($COLUMN{$_})::text, '(null)'), 'UTF8'), 'hex')" }
        @$cols;
    # no column (an empty table): the number of rows alone
    my $rows = psql('SELECT ' . join('', map { "$_, " } @expr) . 'count(*) FROM api_key_usage u '
        . 'LEFT JOIN api_keys k ON k.id = u.key_id LEFT JOIN orgs o ON o.id = u.org_id'
        . (@expr ? ' GROUP BY ' . join(', ', 1 .. @expr) : ''));
    my %n;
    for my $r (@$rows) {
        my $count = pop @$r;
        $n{ join "\0", map { pack 'H*', $_ } @$r } = $count;
    }
    return \%n;
}

sub _table_text {
    my ($cols, $rows) = @_;
    my @l = map { "    $_ x $rows->{$_}" =~ s/\0/ | /gr } sort keys %$rows;
    return join "\n", '    ' . join(' | ', @$cols) . ' x count', (@l ? @l : '    (no rows)');
}

sub _check_usage_rows {
    my ($name, $want, $before) = @_;
    my $after = _row_counts($want->{columns});
    my %got;
    for my $k (keys %$after, keys %$before) {
        my $d = ($after->{$k} // 0) - ($before->{$k} // 0);
        $got{$k} = $d if $d;
    }
    Test::More::is_deeply(\%got, $want->{rows},
        "$name - usage rows: exactly the expected ones, no more")
        or Test::More::diag(join "\n", 'rows the block made:',
            _table_text($want->{columns}, \%got), 'expected:',
            _table_text($want->{columns}, $want->{rows}));
    Test::More::is(usage_duplicates(), 0,
        "$name - usage rows: no duplicate (node, slot, generation, sequence)");
}

# --- --- metrics ------------------------------------------------------------------
# One line per value: `name VALUE` (the family's sum over every label set),
# `name{labels} VALUE` (one series), VALUE `+N` for a change since the block
# started.

sub parse_metric_lines {
    my ($text, $where) = @_;
    my @want;
    for my $line (grep { /\S/ && !/^\s*#/ } split /\n/, $text // '') {
        my ($metric, $delta, $value) =
            $line =~ /^\s*([a-z_:][a-z0-9_:]*(?:\{.*\})?)\s+(\+?)(-?\d+(?:\.\d+)?)\s*$/i
            or die "$where: bad metrics line '$line' (want 'name[{labels}] [+]NUMBER')\n";
        push @want, { metric => $metric, delta => $delta eq '+', value => $value };
    }
    return \@want;
}

sub _metric_value {
    my ($m, $metric) = @_;
    return $metric =~ /\{/ ? $m->{$metric} // 0 : metric_sum($m, $metric);
}

sub _check_metrics {
    my ($name, $want, $before) = @_;
    my $m = apikeyd_metrics();
    for my $w (@$want) {
        my $got = _metric_value($m, $w->{metric});
        my $base = $w->{delta} ? _metric_value($before, $w->{metric}) : 0;
        Test::More::is($got - $base, $w->{value},
            "$name - metric $w->{metric} " . ($w->{delta} ? "+$w->{value}" : $w->{value}))
            or Test::More::diag("now $got" . ($w->{delta} ? ", before the block $base" : ''));
    }
}

# --- --- sql ----------------------------------------------------------------------
# Queries, each followed by its expected rows: `=> a | b` per row, or
# `=> (no rows)`. psql variables :'TEST_NGINX_...' / :'TEST_APIKEY_...' hold
# %ENV's values (bound by psql as literals).

sub parse_sql_queries {
    my ($text, $where) = @_;
    my (@q, $cur);
    for my $line (split /\n/, $text // '') {
        if ($line =~ /^\s*=>\s?(.*?)\s*$/) {
            die "$where: '=>' before any query\n" unless $cur;
            push @{ $cur->{rows} }, [ _cells($1) ] unless $1 eq '(no rows)';
            $cur->{expected} = 1;
        } elsif ($line =~ /\S/) {
            push @q, $cur = { sql => '', rows => [] } if !$cur || $cur->{expected};
            $cur->{sql} .= "$line\n";
        }
    }
    for (@q) {
        die "$where: query without '=> ...' rows: $_->{sql}" unless $_->{expected};
    }
    return \@q;
}

sub _check_sql {
    my ($name, $queries) = @_;
    my %vars = map { ($_ => $ENV{$_}) } grep { /^TEST_(?:NGINX|APIKEY)_/ } keys %ENV;
    for my $q (@$queries) {
        (my $label = $q->{sql}) =~ s/\s+/ /g;
        $label =~ s/^ | $//g;
        $label = substr($label, 0, 70) . '...' if length $label > 73;
        my $got = psql($q->{sql}, \%vars);
        Test::More::is_deeply($got, $q->{rows}, "$name - sql: $label")
            or Test::More::diag(join "\n", 'got:',
                (map { '    => ' . join(' | ', @$_) } @$got), 'expected:',
                (map { '    => ' . join(' | ', @$_) } @{ $q->{rows} }));
    }
}

# --- --- apikeyctl ----------------------------------------------------------------
# A transcript: `$ ARGS` runs apikeyctl (--db added) with shell-like quoting;
# the lines after it say what to expect: `exit N` (0 unless given),
# `stdout: TEXT` / `stderr: TEXT` (contains), `stdout like: RE`,
# `stdout unlike: RE` (and stderr), `json PATH: VALUE` (stdout as JSON,
# PATH dotted, array indexes as numbers; null for JSON null).

sub parse_transcript {
    my ($text, $where) = @_;
    my @cmds;
    for my $line (grep { /\S/ } split /\n/, $text // '') {
        $line =~ s/^\s+|\s+$//g;
        if ($line =~ /^\$\s+(.*)$/) {
            push @cmds, { args => [ shellwords($1) ], line => $1, expect => [] };
            next;
        }
        die "$where: '$line' before any '\$ command'\n" unless @cmds;
        my $e;
        if ($line =~ /^exit\s+(\d+)$/) {
            $e = { kind => 'exit', value => $1 };
        } elsif ($line =~ /^(stdout|stderr)(?:\s+(like|unlike))?:\s?(.*)$/) {
            $e = { kind => $2 // 'contains', stream => $1, value => $3 };
        } elsif ($line =~ /^json\s+([\w.]+):\s?(.*)$/) {
            $e = { kind => 'json', path => $1, value => $2 };
        } else {
            die "$where: bad apikeyctl expectation '$line' (want exit N, stdout: ..., "
                . "stderr like: ..., json PATH: VALUE)\n";
        }
        push @{ $cmds[-1]{expect} }, $e;
    }
    return \@cmds;
}

sub _json_at {
    my ($data, $path) = @_;
    for my $p (split /\./, $path) {
        return '(absent)' unless ref $data;
        $data = ref $data eq 'ARRAY' ? $data->[$p] : $data->{$p};
    }
    return 'null' unless defined $data;
    return ref $data ? JSON::PP->new->canonical->encode($data) : "$data";
}

sub _check_apikeyctl {
    my ($name, $cmds) = @_;
    for my $c (@$cmds) {
        my ($rc, $out, $err) = apikeyctl_raw(@{ $c->{args} });
        my $label = "$name - apikeyctl $c->{line}";
        my %stream = (stdout => $out, stderr => $err);
        my ($exit) = grep { $_->{kind} eq 'exit' } @{ $c->{expect} };
        Test::More::is($rc, $exit ? $exit->{value} : 0, "$label: exit code")
            or Test::More::diag("stdout: $out\nstderr: $err");
        my $json;
        for my $e (grep { $_->{kind} ne 'exit' } @{ $c->{expect} }) {
            if ($e->{kind} eq 'json') {
                $json //= eval { JSON::PP->new->decode($out) } // {};
                Test::More::is(_json_at($json, $e->{path}), $e->{value},
                               "$label: json $e->{path}");
            } elsif ($e->{kind} eq 'contains') {
                Test::More::ok(index($stream{ $e->{stream} }, $e->{value}) >= 0,
                               "$label: $e->{stream} has '$e->{value}'")
                    or Test::More::diag("$e->{stream}: $stream{ $e->{stream} }");
            } else {
                my $hit = $stream{ $e->{stream} } =~ /$e->{value}/;
                Test::More::ok($e->{kind} eq 'like' ? $hit : !$hit,
                               "$label: $e->{stream} $e->{kind} /$e->{value}/")
                    or Test::More::diag("$e->{stream}: $stream{ $e->{stream} }");
            }
        }
    }
}

# --- the runner's entry points ----------------------------------------------------

my @USAGE_SECTIONS = qw(usage_rows metrics sql);

# outcome_baseline($name, \%values) -> what the checks compare against, taken before
# the block's nginx starts. %values: section name => evaluated text.
sub outcome_baseline {
    my ($name, $v) = @_;
    my %o = (values => $v);
    $o{ctl} = parse_transcript($v->{apikeyctl}, "$name: --- apikeyctl")
        if defined $v->{apikeyctl};
    return \%o unless grep { defined $v->{$_} } @USAGE_SECTIONS;
    die "$name: usage_rows, metrics and sql need apikeyd (start_apikeyd())\n"
        unless apikeyd_pid();
    usage_settle();
    if (defined $v->{usage_rows}) {
        $o{rows} = parse_table($v->{usage_rows}, "$name: --- usage_rows");
        $o{rows_before} = _row_counts($o{rows}{columns});
    }
    if (defined $v->{metrics}) {
        $o{metrics} = parse_metric_lines($v->{metrics}, "$name: --- metrics");
        $o{metrics_before} = apikeyd_metrics();
    }
    $o{sql} = parse_sql_queries($v->{sql}, "$name: --- sql") if defined $v->{sql};
    return \%o;
}

# outcome_check($name, $baseline): after nginx stopped.
sub outcome_check {
    my ($name, $o) = @_;
    if (grep { defined $o->{values}{$_} } @USAGE_SECTIONS) {
        my $ok = eval { usage_settle(); 1 };
        Test::More::ok($ok, "$name - usage settled") or Test::More::diag($@);
    }
    _check_usage_rows($name, $o->{rows}, $o->{rows_before}) if $o->{rows};
    _check_metrics($name, $o->{metrics}, $o->{metrics_before}) if $o->{metrics};
    _check_sql($name, $o->{sql}) if $o->{sql};
    _check_apikeyctl($name, $o->{ctl}) if $o->{ctl};
}

1;
