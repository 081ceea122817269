package Test::Apikey::Valgrind;

# TEST_APIKEY_USE_VALGRIND=1: nginx (master and workers, nginx -t, nginx -s),
# apikeyd and apikeyctl run under valgrind's memcheck, each process writing
# <servroot>/logs/valgrind-<program>.<pid>.log. When the file is done (at
# done_testing, or at exit if it died first), once every process has exited,
# each log becomes two assertions: "valgrind: 0 errors" and "valgrind: 0
# definitely lost". See docs/testing.md, "Valgrind".

use strict;
use warnings;

use Exporter qw(import);
use Test::More ();

use Test::Apikey::Util qw(
    repo_root servroot_path use_valgrind slurp on_final stop_all process_alive
);

our @EXPORT_OK = qw(valgrind_argv valgrind_check parse_valgrind_log);

my $ARMED;

# valgrind_argv($program, $log_name) -> the valgrind command line to put in
# front of $program's (empty unless $program runs under valgrind). $log_name
# (default $program) names the logs: logs/valgrind-$log_name.%p.log.
sub valgrind_argv {
    my ($program, $log_name) = @_;
    return () unless use_valgrind($program);
    die "TEST_APIKEY_USE_VALGRIND is set but valgrind is not installed "
        . "(apt-get install valgrind)\n"
        unless grep { -x "$_/valgrind" } split /:/, $ENV{PATH} // '';
    _arm();
    my $supp = repo_root() . '/t/valgrind.supp';
    my @extra = split ' ', $ENV{TEST_APIKEY_VALGRIND_OPTS} // '';
    return ('valgrind', '--tool=memcheck', '--leak-check=full',
            '--errors-for-leak-kinds=definite', '--num-callers=40',
            (-f $supp ? "--suppressions=$supp" : ()),
            '--log-file=' . servroot_path('logs', 'valgrind-' . ($log_name // $program) . '.%p.log'),
            @extra);
}

# The check runs after the last test (done_testing) or, when the file died
# before that, at exit before the server root is removed; once.
sub _arm {
    return if $ARMED++;
    on_final('valgrind', \&valgrind_check);
    require Test2::API;
    Test2::API::test2_add_callback_testing_done(sub { stop_all() });
}

# parse_valgrind_log($text) -> { pid, ppid, command, complete, errors =>
# [paragraph, ...], definite_bytes, definite_blocks, leaks => [paragraph, ...],
# summary_contexts }
sub parse_valgrind_log {
    my ($text) = @_;
    my %r = (errors => [], leaks => [], definite_bytes => 0, definite_blocks => 0);
    my @lines = map { s/^==\d+== ?//r } grep { /^==\d+==/ } split /\n/, $text;
    ($r{pid}) = $text =~ /^==(\d+)==/m;
    ($r{ppid}) = $text =~ /^==\d+== Parent PID: (\d+)/m;
    ($r{command}) = $text =~ /^==\d+== Command: (.*)$/m;
    if ($text =~ /^==\d+== ERROR SUMMARY: (\d+) errors? from (\d+) contexts?/m) {
        $r{complete} = 1;
        $r{summary_errors} = $1;
        $r{summary_contexts} = $2;
    }
    my ($in_heap, @para) = (0);
    my $flush = sub {
        return unless @para;
        my @p = @para;
        @para = ();
        my $head = $p[0] =~ /^Thread \d+/ && @p > 1 ? $p[1] : $p[0];
        if ($head =~ /^HEAP SUMMARY:/) { $in_heap = 1; return }
        my $has_stack = grep { /^\s+(?:at|by) 0x/ } @p;
        if ($in_heap) {
            push @{ $r{leaks} }, join("\n", @p)
                if $head =~ /are definitely lost in loss record/;
            return;
        }
        return unless $has_stack;
        return if $head =~ /^(?:Warning:|Process terminating|Memcheck,|Command:)/;
        push @{ $r{errors} }, join("\n", @p);
    };
    for my $l (@lines) {
        if ($l =~ /^\s*$/) { $flush->(); next }
        push @para, $l;
    }
    $flush->();
    if ($text =~ /^==\d+==\s+definitely lost: ([\d,]+) bytes in ([\d,]+) blocks/m) {
        ($r{definite_bytes}, $r{definite_blocks}) = map { tr/,//dr } $1, $2;
    }
    return \%r;
}

# One "0 errors" and one "0 definitely lost" assertion per valgrind log of
# this file; the first error (or leak) stack goes to the diagnostics.
sub valgrind_check {
    my @logs = sort { _log_order($a) cmp _log_order($b) }
        glob(servroot_path('logs', 'valgrind-*.log'));
    Test::More::ok(scalar @logs, 'valgrind: logs written (TEST_APIKEY_USE_VALGRIND)')
        or Test::More::diag('no ' . servroot_path('logs', 'valgrind-*.log')
                            . ': nothing ran under valgrind');
    my %pids = map { (/valgrind-.*\.(\d+)\.log$/ ? ($1 => 1) : ()) } @logs;
    for my $path (@logs) {
        my ($prog, $pid) = $path =~ m{/valgrind-(.+)\.(\d+)\.log$} or next;
        my $r = parse_valgrind_log(slurp($path) // '');
        my $role = $prog eq 'nginx'
            ? ($r->{ppid} && $pids{ $r->{ppid} } ? 'worker' : 'master') : '';
        my $what = "$prog" . ($role ? " $role" : '') . " pid $pid";
        my $file = "logs/valgrind-$prog.$pid.log";
        # errors the log names but this parser did not take apart (a kind of
        # report it does not know) still count
        my $known = @{ $r->{errors} } + @{ $r->{leaks} };
        my $unknown = $r->{complete} && $r->{summary_contexts} > $known
            ? $r->{summary_contexts} - $known : 0;
        my $nerr = @{ $r->{errors} } + $unknown;
        Test::More::ok($nerr == 0, "valgrind: 0 errors ($what, $file)")
            or Test::More::diag(_first_stack($r, $path, 'errors', $unknown));
        if ($r->{complete}) {
            Test::More::ok($r->{definite_bytes} == 0,
                           "valgrind: 0 definitely lost ($what, $file)")
                or Test::More::diag(_first_stack($r, $path, 'leaks'));
        } elsif (process_alive($pid)) {
            Test::More::fail("valgrind: 0 definitely lost ($what, $file)");
            Test::More::diag("$file: pid $pid is still running, so valgrind has not "
                             . "checked for leaks");
        } else {
            Test::More->builder->skip("valgrind: 0 definitely lost ($what, $file): "
                . 'killed (SIGKILL) before exit, no leak check');
        }
    }
}

sub _log_order {
    my ($path) = @_;
    my ($prog, $pid) = $path =~ m{/valgrind-(.+)\.(\d+)\.log$} or return $path;
    return sprintf '%s.%010d', $prog, $pid;
}

sub _first_stack {
    my ($r, $path, $kind, $unknown) = @_;
    $unknown //= 0;
    my @what = @{ $r->{$kind} };
    my $n = @what;
    my $text = @what ? $what[0]
        : "ERROR SUMMARY: $r->{summary_errors} errors from $r->{summary_contexts} "
          . "contexts ($unknown not recognised by the harness; read the log)";
    my $head = $kind eq 'leaks'
        ? "definitely lost: $r->{definite_bytes} bytes in $r->{definite_blocks} blocks; "
          . "first of $n loss records"
        : "$n error context(s)" . ($unknown ? " + $unknown unrecognised" : '') . '; the first';
    return join "\n", "$path (" . ($r->{command} // 'no command line in the log') . ')',
        "$head:",
        map { "    $_" } split /\n/, $text;
}

1;
