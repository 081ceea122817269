package Test::Apikey;

# Test::Nginx-style integration harness for the apikey module.
# See docs/testing.md for the file format, the sections and the helpers.

use strict;
use warnings;

use Exporter qw(import);
use File::Copy qw(copy);
use Test::More ();
use Time::HiRes qw(sleep);

# What `use Test::Apikey` exports besides Test::More and the block runner,
# by the module that defines it (docs/testing.md, "Perl helpers"). The rest
# of t/lib/Test/Apikey/*.pm is internal.
our %PUBLIC;

BEGIN {
    %PUBLIC = (
        'Test::Apikey::Util'     => [qw(
            wait_until ok_eventually free_port run_cmd slurp spew servroot_path
            process_title
            timeout_factor
        )],
        'Test::Apikey::Http'     => [qw(http_get http_request build_request)],
        'Test::Apikey::Nginx'    => [qw(
            workers log_level start_nginx stop_nginx reload_nginx nginx_pid
            nginx_error_log nginx_test_config nginx_signal nginx_worker_pids
            apikey_http_config
        )],
        'Test::Apikey::Postgres' => [qw(
            start_postgres stop_postgres restart_postgres psql psql_one postgres_log
            psql_at psql_target
        )],
        'Test::Apikey::Daemon'   => [qw(
            start_apikeyd stop_apikeyd kill_apikeyd restart_apikeyd apikeyd_log
            apikeyd_get apikeyctl apikeyctl_raw
        )],
        'Test::Apikey::Usage'    => [qw(
            apikeyd_metrics metric_sum usage_rows wait_usage_rows usage_duplicates
            key_request_count wait_request_count usage_segment_read usage_segment_u64 usage_slot_count
            usage_slot_offset usage_slot_state usage_ring_head usage_ring_tail
            usage_ring_rewind usage_ring_records
        )],
        'Test::Apikey::Traffic'  => [qw(
            get_with_key request_burst format_statuses status_total
            request_stream stream_progress stream_go wait_stream
        )],
        'Test::Apikey::Aggregates' => [qw(
            usage_aggregates usage_agg_counters usage_agg_entries
        )],
        'Test::Apikey::Helpers'  => [qw(new_key usage_conf percentile)],
        'Test::Apikey::Outcome'  => [qw(usage_settle)],
        'Test::Apikey::Keys'     => [qw(
            key_checksum make_key key_typo key_secrets secrets_in wait_key_results
        )],
    );
    for my $module (sort keys %PUBLIC) {
        (my $file = "$module.pm") =~ s{::}{/}g;
        require $file;
        $module->import(@{ $PUBLIC{$module} });
    }
}

# internal
use Test::Apikey::Util qw(servroot make_runtime_dir);
use Test::Apikey::Blocks qw(parse_blocks section has_section);
use Test::Apikey::Nginx qw(nginx_version module_path truncate_error_log);
use Test::Apikey::Outcome qw(outcome_baseline outcome_check);
use JSON::PP ();

BEGIN { Test::More->import }    # so that Exporter can re-export them

# Test::More's functions, its $TODO (so that `TODO: { local $TODO = ...; }`
# needs no `our $TODO`), the block runner, then %PUBLIC.
our @EXPORT = (
    (grep { !/^\$/ } @Test::More::EXPORT), '$TODO',
    qw(run_tests blocks repeat_each no_long_string no_shuffle all_responses),
    map { @$_ } @PUBLIC{ sort keys %PUBLIC },
);

my $REPEAT = 1;
my @BLOCKS;
my $PARSED;
my @ALL_RESPONSES;
# checked after nginx stopped (Test::Apikey::Outcome)
my @OUTCOME = qw(usage_rows metrics sql apikeyctl);

sub repeat_each    { $REPEAT = shift if @_; return $REPEAT }
sub no_long_string { }    # Test::Nginx compatibility; nothing to do
sub no_shuffle     { }    # blocks always run in file order

_init_env();

# Per-file environment: server root, ports, static files, segment paths (in a
# private runtime directory, as /run/apikey is in production).
sub _init_env {
    my $root = servroot();
    $ENV{TEST_NGINX_SERVROOT}      = $root;
    $ENV{TEST_NGINX_HTML_DIR}      = "$root/html";
    $ENV{TEST_NGINX_SERVER_PORT}   = free_port();
    $ENV{TEST_NGINX_UPSTREAM_PORT} = free_port();
    my $run = make_runtime_dir("$root/run");
    $ENV{TEST_NGINX_RUNTIME_DIR}   = $run;
    $ENV{TEST_NGINX_APIKEY_KEYS}   = "$run/apikey_keys";
    $ENV{TEST_NGINX_APIKEY_USAGE}  = "$run/apikey_usage";
    my %html = (
        'index.html' => "hello\n",
        't.txt'      => "hello\n",
        't.json'     => qq({"ok":true}\n),
        'empty.txt'  => '',
        'big.txt'    => ('x' x 65535) . "\n",
    );
    spew("$root/html/$_", $html{$_}) for keys %html;
}

# blocks() -> the parsed blocks (list context) or their number (scalar).
sub blocks {
    _parse() unless $PARSED;
    return wantarray ? @BLOCKS : scalar @BLOCKS;
}

sub _parse {
    $PARSED = 1;
    my $text = do { no warnings 'once'; local $/; my $fh = \*main::DATA; <$fh> };
    return unless defined $text;
    my $first = 1;
    if (my $src = slurp($0)) {
        my $pre = $src =~ /^__(?:DATA|END)__\r?\n/m ? substr($src, 0, $-[0]) : '';
        $first = ($pre =~ tr/\n//) + 2;
    }
    @BLOCKS = parse_blocks($text, $0, $first);
}

sub run_tests {
    my @blocks = blocks();
    if (@blocks && !eval { module_path(); 1 }) {
        Test::More::fail('nginx module available');
        Test::More::diag($@);
    } else {
        my $i = 0;
        _run_block($_, ++$i) for @blocks;
    }
    my $plan = Test::More->builder->has_plan;
    Test::More::done_testing() unless defined $plan && $plan =~ /^\d+$/;
}

sub _run_block {
    my ($b, $index) = @_;
    my $skipped;
    my $ok = eval {
        return $skipped = 1 if _skipped($b);
        _run_code($b, 'init');
        has_section($b, 'must_die') ? _run_must_die($b) : _run_requests($b);
        1;
    };
    my $err = $@;
    eval { stop_nginx() };
    copy(servroot_path('logs', 'error.log'), servroot_path('logs', "error.log.$index"))
        unless $skipped;
    return if $ok;
    Test::More::fail("$b->{name} - harness");
    Test::More::diag(index($err, $b->{name}) == 0 ? $err : "$b->{name}: $err");
}

sub _nginx_sections {
    my ($b) = @_;
    return map { has_section($b, $_) ? ($_ => section($b, $_)) : () }
        qw(main_config http_config config workers log_level);
}

sub _run_requests {
    my ($b) = @_;
    my %conf = _nginx_sections($b);
    my $nginx = _needs_nginx($b);
    my @requests = _requests($b);
    my $outcome = outcome_baseline($b->{name},
        { map { ($_ => section($b, $_)) } grep { has_section($b, $_) } @OUTCOME });
    if ($nginx && !eval { start_nginx(%conf); 1 }) {
        Test::More::fail("$b->{name} - nginx started");
        Test::More::diag($@);
        return;
    }
    my @responses;
    for my $rep (1 .. $REPEAT) {
        for my $i (0 .. $#requests) {
            my $r = http_request($requests[$i]{raw}, method => $requests[$i]{method},
                                 timeout => section($b, 'timeout'),
                                 (has_section($b, 'port') ? (port => section($b, 'port')) : ()));
            _decode_json($r);
            push @responses, $r;
            push @ALL_RESPONSES, [ $b->{name}, $r ];
            my $label = $b->{name}
                . (@requests > 1 ? ' (req ' . ($i + 1) . ')' : '')
                . ($REPEAT > 1 ? " (repeat $rep)" : '');
            _check_response($b, $r, $i, $label);
        }
    }
    _run_code($b, 'check', \@responses);
    sleep(section($b, 'wait')) if has_section($b, 'wait');
    stop_nginx();
    outcome_check($b->{name}, $outcome);
    _check_logs($b, nginx_error_log(), 'error.log') if $nginx;
}

# A block with --- port and no nginx configuration sends its requests
# elsewhere (apikeyd's API) and starts no nginx.
sub _needs_nginx {
    my ($b) = @_;
    return 1 unless has_section($b, 'port');
    return 1 if grep { has_section($b, $_) } qw(main_config http_config config);
    die "$b->{name}: error_log and no_error_log need nginx (a --- config), "
        . "and this block has --- port and none\n"
        if grep { has_section($b, $_) } qw(error_log no_error_log);
    return 0;
}

sub _decode_json {
    my ($r) = @_;
    return unless ($r->{headers}{'content-type'} // '') =~ m{^application/json}
        && defined $r->{body};
    $r->{json} = eval { JSON::PP->new->decode($r->{body}) };
}

# all_responses() -> [block name, response] of every request the blocks sent
# so far, in order (for checks over a whole file, e.g. no key material).
sub all_responses { return @ALL_RESPONSES }

# must_die: `nginx -t` must fail, or else starting nginx must fail. The
# error_log sections then match nginx's stderr plus its error.log.
sub _run_must_die {
    my ($b) = @_;
    my %conf = _nginx_sections($b);
    truncate_error_log();
    my ($rc, $output) = nginx_test_config(%conf);
    my $died = $rc != 0;
    my $started = 0;
    if (!$died) {
        $started = eval { start_nginx(%conf); 1 };
        $output .= $@ unless $started;
        stop_nginx();
        $died = !$started;
    }
    $output .= nginx_error_log();
    Test::More::ok($died, "$b->{name} - nginx refused the config (must_die)")
        or Test::More::diag(_log_tail($output, 30,
               'nginx -t exited 0 and nginx started; its output'));
    _check_logs($b, $output, 'nginx output');
}

# -> list of { raw => bytes, method => M } for the block's request(s).
sub _requests {
    my ($b) = @_;
    if (has_section($b, 'raw_request')) {
        my $v = section($b, 'raw_request');
        return map { { raw => $_, method => (/^(\S+)/ ? $1 : '') } }
            ref $v eq 'ARRAY' ? @$v : ($v);
    }
    return () unless has_section($b, 'request');
    my $v = section($b, 'request');
    my $h = section($b, 'more_headers') // '';
    my @headers = grep { /\S/ } ref $h eq 'ARRAY' ? @$h : split /\n/, $h;
    my $body = section($b, 'request_body');
    return map { _build_one($_, \@headers, $body) } ref $v eq 'ARRAY' ? @$v : ($v);
}

sub _build_one {
    my ($text, $headers, $body) = @_;
    $text =~ s/^\s+//;
    my ($line, $rest) = split /\n/, $text, 2;
    if (!defined $body && defined $rest && length $rest) {
        $body = $rest;
        $body =~ s/\n\z//;
    }
    my ($method) = $line =~ /^(\S+)/;
    return { raw => build_request($line, $headers, $body), method => $method };
}

sub _pick {
    my ($v, $i) = @_;
    return ref $v eq 'ARRAY' ? $v->[$i] : $v;
}

sub _check_response {
    my ($b, $r, $i, $label) = @_;
    my $code = _pick(section($b, 'error_code'), $i) // 200;
    $code =~ s/^\s+|\s+$//g;
    Test::More::is($r->{status}, $code, "$label - status code")
        or _diag_response($r);
    if (defined(my $hs = _pick(section($b, 'response_headers'), $i))) {
        _check_header_line($r, $_, $label, 0) for grep { /\S/ } split /\n/, $hs;
    }
    if (defined(my $hs = _pick(section($b, 'response_headers_like'), $i))) {
        _check_header_line($r, $_, $label, 1) for grep { /\S/ } split /\n/, $hs;
    }
    if (has_section($b, 'response_body')) {
        Test::More::is($r->{body}, _pick(section($b, 'response_body'), $i),
                       "$label - response body");
    }
    if (has_section($b, 'response_body_like')) {
        my $re = _pick(section($b, 'response_body_like'), $i);
        $re = qr/$re/s unless ref $re eq 'Regexp';
        Test::More::like($r->{body} // '', $re, "$label - response body like");
    }
}

# "Name: value" (exact; repeated headers are joined with ", "), "!Name"
# (absent); with $like, "Name: regex".
sub _check_header_line {
    my ($r, $line, $label, $like) = @_;
    $line =~ s/^\s+|\s+$//g;
    if ($line =~ /^!\s*(\S+)$/) {
        my $name = $1;
        Test::More::ok(!exists $r->{headers}{ lc $name }, "$label - header $name absent")
            or Test::More::diag("got $name: $r->{headers}{lc $name}");
        return;
    }
    my ($name, $want) = $line =~ /^([^:\s]+)\s*:\s?(.*)$/
        or die "$label: bad response_headers line '$line' (want 'Name: value' or '!Name')\n";
    my $got = $r->{headers}{ lc $name };
    return Test::More::like($got // '(absent)', qr/$want/, "$label - header $name like")
        if $like;
    return Test::More::is($got, $want, "$label - header $name");
}

sub _diag_response {
    my ($r) = @_;
    my $head = $r->{raw} // '';
    $head = substr($head, 0, index($head, "\r\n\r\n")) if index($head, "\r\n\r\n") >= 0;
    $head = substr($head, 0, 2000);
    my @err = grep { /\[(?:warn|error|crit|alert|emerg)\]/ } split /\n/, nginx_error_log();
    @err = @err[-10 .. -1] if @err > 10;
    Test::More::diag(join "\n",
        ($r->{error} ? "client error: $r->{error}" : ()),
        (length $head ? ('response head:', map { "    $_" } split /\r?\n/, $head)
                      : 'nothing received'),
        (@err ? ('error.log (warn and above, last 10):', map { "    $_" } @err) : ()));
}

# -> list of patterns: strings (one per non-empty line) or qr// objects.
sub _patterns {
    my ($v) = @_;
    return () unless defined $v;
    return @$v if ref $v eq 'ARRAY';
    return ($v) if ref $v eq 'Regexp';
    return grep { length } map { s/^\s+|\s+$//gr } split /\n/, $v;
}

sub _matches {
    my ($log, $p) = @_;
    return ref $p eq 'Regexp' ? $log =~ $p : index($log, $p) >= 0;
}

sub _check_logs {
    my ($b, $log, $what) = @_;
    for my $p (_patterns(section($b, 'error_log'))) {
        Test::More::ok(_matches($log, $p), "$b->{name} - $what contains '$p'")
            or Test::More::diag(_log_tail($log, 15, $what));
    }
    for my $p (_patterns(section($b, 'no_error_log'))) {
        Test::More::ok(!_matches($log, $p), "$b->{name} - $what lacks '$p'")
            or Test::More::diag(join "\n", "matching lines:",
                map { "    $_" } grep { _matches($_, $p) } split /\n/, $log);
    }
    _check_no_crash($b, $log) if $what eq 'error.log';
}

# Fails the block when a worker died on a signal, unless its --- error_log
# expects exactly that ("exited on signal" in a line or a regex).
sub _check_no_crash {
    my ($b, $log) = @_;
    my @crash = grep { /exited on signal/ } split /\n/, $log;
    return unless @crash;
    return if grep { "$_" =~ /exited on signal/ } _patterns(section($b, 'error_log'));
    Test::More::fail("$b->{name} - a worker crashed");
    Test::More::diag(join "\n", @crash);
}

sub _log_tail {
    my ($log, $n, $what) = @_;
    my @l = grep { !/\[debug\]/ } split /\n/, $log;
    @l = @l[-$n .. -1] if @l > $n;
    return join "\n", "$what (last $n lines, without [debug]):", map { "    $_" } @l;
}

# --- skip: REASON  (skips when the value is true; eval allowed)
# --- skip_nginx: [N:] OP VERSION  (e.g. "< 1.23": skip on older nginx)
sub _skipped {
    my ($b) = @_;
    my ($reason, $count) = (undef, 1);
    if (has_section($b, 'skip') and my $v = section($b, 'skip')) {
        $reason = $v eq '1' ? 'skipped' : $v;
    }
    if (has_section($b, 'skip_nginx')) {
        my $spec = section($b, 'skip_nginx');
        my ($n, $op, $ver) = $spec =~ /^\s*(?:(\d+)\s*:)?\s*(<=|>=|<|>|==|!=)\s*([\d.]+)\s*$/
            or die "$b->{name}: bad --- skip_nginx '$spec' (want '[N:] OP VERSION')\n";
        my $cmp = _vcmp(nginx_version(), $ver);
        my %op = ('<' => $cmp < 0, '<=' => $cmp <= 0, '>' => $cmp > 0,
                  '>=' => $cmp >= 0, '==' => $cmp == 0, '!=' => $cmp != 0);
        ($reason, $count) = ("nginx " . nginx_version() . " $op $ver", $n // 1)
            if $op{$op};
    }
    return 0 unless defined $reason;
    Test::More->builder->skip("$b->{name}: $reason") for 1 .. $count;
    return 1;
}

sub _vcmp {
    my @a = split /\./, shift;
    my @b = split /\./, shift;
    while (@a || @b) {
        my $c = (shift(@a) // 0) <=> (shift(@b) // 0);
        return $c if $c;
    }
    return 0;
}

# --- init / --- check: Perl code run in package main as
# sub { my ($block, $responses) = @_; ... }
sub _run_code {
    my ($b, $name, @args) = @_;
    return unless has_section($b, $name);
    my $sec = $b->{sections}{$name};
    my $line = $sec->{line} + 1;
    my $sub = eval "package main; no strict; no warnings;\n"
        . "sub { my (\$block, \$responses) = \@_;\n#line $line \"$b->{file}\"\n"
        . "$sec->{text}\n}";
    die "--- $name does not compile: $@" unless $sub;
    eval { $sub->($b, @args); 1 } or die "--- $name died: $@";
}

1;
