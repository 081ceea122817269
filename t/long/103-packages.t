# Long test (tools/test --long): the Debian packages, built by
# tools/package, installed on this machine and run the way Debian runs
# them, then upgraded to a rebuilt version and purged.
#
# 1. tools/package builds libnginx-mod-http-apikey, apikeyd and apikeyctl
#    (lintian included: only the tags docs/packaging.md explains may stay).
# 2. `apt-get install ./*.deb`: the module is enabled in Debian's own
#    /etc/nginx (modules-enabled), the apikeyd user, the runtime directory
#    (0750 apikeyd:www-data, the trust rule of docs/security.md), the spool
#    and the config file (0640 root:apikeyd, a conffile) exist.
#    `systemd-analyze verify` accepts the unit.
# 3. PostgreSQL (the harness's own cluster, migrated by the packaged
#    apikeyctl); the test edits /etc/apikey/apikeyd.conf as an operator
#    would (db, node, listen) and starts apikeyd as the unit does: its User
#    and Group, its UMask, a clean environment plus its Environment=, its
#    ExecStartPre (--check-config) and ExecStart lines, read from the
#    installed unit (this machine may run no systemd; the unit's sandboxing
#    is then not applied, only checked by systemd-analyze).
# 4. Debian's nginx (/usr/sbin/nginx with /etc/nginx/nginx.conf, a server
#    in conf.d) answers a keyed request 200 and a keyless one 401; the
#    keyed requests become rows in PostgreSQL, exactly one each, under the
#    configured node.
# 5. Upgrade: tools/package --version <version>+pkgtest1, `apt-get install`
#    again: the edited conffile is kept, the module stays enabled, nginx
#    reloads with the new module, apikeyd restarts (as the unit's restart
#    after an upgrade would) and logs the new version; keyed requests still
#    become rows.
# 6. Purge: no file of `dpkg -L` (taken before the purge) that was not on
#    the machine before the install is left, nor the runtime directory, the
#    spool, /etc/apikey, the modules-enabled link or systemd's enablement
#    links; `find` sees no file owned by the apikeyd user. /etc/nginx and
#    the state of the system nginx (running or not) are as before.
#
# The t/ harness runs its own nginx (/usr/sbin/nginx -p <servroot> -c
# <its conf>), which never reads /etc/nginx: the rest of the suite is
# unaffected while the packages are installed. If the test dies midway, an
# END block stops what it started, restores /etc/nginx and purges the
# packages.
#
# Root only (apt-get, dpkg, /etc/nginx). Takes two package builds plus
# about a minute: 597 s in all on the 2-core machine under a load of 10
# (the builds 304 s with lintian and 231 s without).

use strict;
use warnings;
use lib 't/lib';
use Test::Apikey;
use Test::Apikey::Util qw(repo_root);
use POSIX ();
use Time::HiRes qw(time sleep);

plan(skip_all => 'needs root: installs packages and edits /etc/nginx') if $> != 0;

my @PKGS = qw(libnginx-mod-http-apikey apikeyd apikeyctl);
my $UNIT = '/lib/systemd/system/apikeyd.service';
my $CONF = '/etc/apikey/apikeyd.conf';
my $SITE = '/etc/nginx/conf.d/apikey-pkgtest.conf';
my $ENABLED = '/etc/nginx/modules-enabled/50-mod-http-apikey.conf';
my $NGINX_PID = '/run/nginx.pid';
my $REPO = repo_root();

my (%cleanup, $unit_pid);

sub sh {
    my ($argv, %opt) = @_;
    return run_cmd($argv, timeout => 600, %opt);
}

sub tail_of { my @l = split /\n/, $_[0] // ''; join("\n", @l > 30 ? @l[-30 .. -1] : @l) }

sub installed_version {
    my ($pkg) = @_;
    my ($rc, $out) = sh(['dpkg-query', '-W', '-f', '${Status} ${Version}', $pkg]);
    return '' if $rc != 0;
    return $out =~ /^install ok installed (\S+)$/ ? $1 : "($out)";
}

sub system_nginx_running {
    my $pid = slurp($NGINX_PID) // '';
    return $pid =~ /^(\d+)$/ && kill(0, $1) ? $1 : 0;
}

# Every path under /etc/nginx with its type, link target and mode.
sub etc_nginx_listing {
    my ($rc, $out) = sh(['find', '/etc/nginx', '-printf', '%p %y %l %m\n']);
    return join "\n", sort split /\n/, $out;
}

sub build_packages {
    my ($dir, @args) = @_;
    my $t0 = time;
    my ($rc, $out, $err) = sh([ "$REPO/tools/package", @args ],
                              env => { APIKEY_PACKAGE_DIR => $dir }, timeout => 3600);
    my $cmd = join ' ', 'tools/package', @args;
    is($rc, 0, "$cmd builds the packages") or diag(tail_of("$out$err"));
    diag(sprintf('%s took %.0f s', $cmd, time - $t0));
}

sub apt_get {
    my (@args) = @_;
    my ($rc, $out, $err) = sh([ 'apt-get', '-y', '-q', @args ],
                              env => { DEBIAN_FRONTEND => 'noninteractive' });
    is($rc, 0, "apt-get @args[0 .. ($#args > 1 ? 1 : $#args)]") or diag(tail_of("$out$err"));
}

# The installed unit's settings that say how it starts apikeyd.
sub read_unit {
    my $text = slurp($UNIT) // die "cannot read $UNIT\n";
    my %unit = (Environment => []);
    for (split /\n/, $text) {
        next unless /^(User|Group|UMask|ExecStartPre|ExecStart|Environment)=(.*)$/;
        if ($1 eq 'Environment') { push @{ $unit{Environment} }, $2 }
        else { $unit{$1} = $2 }
    }
    return \%unit;
}

# A unit command line as argv: plain words only (no quoting, no
# specifiers, no prefixes such as "-" or "+"), which the test checks.
sub unit_argv {
    my ($line) = @_;
    die "unit command line needs quoting or specifiers: $line\n" if $line =~ /["'%\\]|^[-+@!:]/;
    return split ' ', $line;
}

# What systemd gives a unit with User=: a clean environment, the user's
# HOME, SHELL, USER, LOGNAME, plus Environment=.
sub unit_env {
    my ($unit) = @_;
    my @pw = getpwnam($unit->{User});
    my %env = (PATH => '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
               HOME => $pw[7], SHELL => $pw[8], USER => $unit->{User},
               LOGNAME => $unit->{User});
    for (@{ $unit->{Environment} }) { my ($k, $v) = split /=/, $_, 2; $env{$k} = $v }
    return %env;
}

# argv running `line` as the unit's User and Group with its environment.
sub as_unit {
    my ($unit, $line) = @_;
    my %env = unit_env($unit);
    return ('/usr/bin/setpriv', "--reuid=$unit->{User}", "--regid=$unit->{Group}",
            '--init-groups', '--no-new-privs', '/usr/bin/env', '-i',
            (map { "$_=$env{$_}" } sort keys %env), unit_argv($line));
}

sub start_unit {
    my ($unit, $api_port, $log) = @_;
    my ($rc, $out, $err) = run_cmd([ as_unit($unit, $unit->{ExecStartPre}) ]);
    is($rc, 0, 'ExecStartPre (apikeyd --check-config) passes as the unit runs it')
        or diag("$out$err");
    $unit_pid = fork // die "fork: $!\n";
    if (!$unit_pid) {
        POSIX::setsid();
        umask(oct $unit->{UMask}) if defined $unit->{UMask};
        open STDOUT, '>>', $log or POSIX::_exit(126);
        open STDERR, '>&', \*STDOUT or POSIX::_exit(126);
        exec(as_unit($unit, $unit->{ExecStart})) or POSIX::_exit(127);
    }
    ok_eventually(sub {
        http_get('/healthz', [], port => $api_port, timeout => 1)->{status} == 200
    }, 15, 'apikeyd, started as the unit does, answers /healthz');
}

sub stop_unit {
    return unless $unit_pid;
    kill 'TERM', $unit_pid;
    my $deadline = time + 30;
    my $done = 0;
    while (time < $deadline) {
        $done = waitpid($unit_pid, POSIX::WNOHANG());
        last if $done;
        sleep 0.1;
    }
    my $status = $done ? $? : -1;
    if (!$done) { kill 'KILL', $unit_pid; waitpid($unit_pid, 0) }
    $unit_pid = undef;
    return $status;
}

sub nginx_cmd {
    my (@args) = @_;
    my ($rc, $out, $err) = sh([ '/usr/sbin/nginx', @args ]);
    return ($rc, "$out$err");
}

sub start_or_reload_system_nginx {
    my ($rc, $out) = nginx_cmd('-t');
    is($rc, 0, "Debian's nginx accepts /etc/nginx with the module (nginx -t)") or diag($out);
    if (my $pid = system_nginx_running()) {
        ($rc, $out) = nginx_cmd('-s', 'reload');
    } else {
        ($rc, $out) = nginx_cmd();
        $cleanup{stop_nginx} = 1;
    }
    is($rc, 0, "Debian's nginx runs /etc/nginx") or diag($out);
}

sub stop_system_nginx {
    my $pid = system_nginx_running() or return;
    nginx_cmd('-s', 'quit');
    wait_until(sub { !kill(0, $pid) }, 15, 'the system nginx stopped');
}

# Keyed requests through the system nginx until one is answered 200 (the
# key table is published), then `more` others; returns how many got 200.
sub keyed_requests {
    my ($key, $port, $more) = @_;
    my $ok = 0;
    my $first = eval {
        wait_until(sub { get_with_key($key, '/pkgtest.txt', port => $port)->{status} == 200 },
                   15, 'a keyed request answered 200');
    };
    $ok++ if defined $first;
    for (1 .. $more) {
        my $r = get_with_key($key, '/pkgtest.txt', port => $port);
        $ok++ if $r->{status} == 200 && $r->{body} eq "hello\n";
    }
    is($ok, $more + 1, 'every keyed request through the system nginx is answered 200 "hello"');
    return $ok;
}

sub rows_of_key { psql_one('SELECT count(*) FROM api_key_usage WHERE key_id = :\'k\'', { k => $_[0] }) }

sub restore_machine {
    stop_unit();
    unlink $SITE;
    if ($cleanup{stop_nginx}) { stop_system_nginx() }
    elsif (system_nginx_running()) { nginx_cmd('-s', 'reload') }
    if ($cleanup{purge}) {
        sh([ 'apt-get', '-y', '-q', 'purge', @PKGS ],
           env => { DEBIAN_FRONTEND => 'noninteractive' });
    }
    %cleanup = ();
}

END { restore_machine() if %cleanup || $unit_pid }

# --- 0. the machine before ---------------------------------------------------

my @preinstalled = grep { installed_version($_) ne '' } @PKGS;
is_deeply(\@preinstalled, [], 'no apikey package is installed before the test')
    or BAIL_OUT('apikey packages are installed on this machine; purge them first');
my $nginx_was_running = system_nginx_running() ? 1 : 0;
my $etc_nginx_before = etc_nginx_listing();
my ($rc, $out, $err) = sh([ 'dpkg-parsechangelog', '-l', "$REPO/debian/changelog", '-S', 'Version' ]);
chomp(my $version = $out);
like($version, qr/^\d+\.\d+\.\d+/, "the version, from debian/changelog: $version");
my $upgrade = "$version+pkgtest1";

# --- 1. build ------------------------------------------------------------------

build_packages(servroot_path('deb1'));
my @debs = map { servroot_path('deb1', "${_}_${version}_amd64.deb") } @PKGS;
ok(-f $_, "built $_") for @debs;

($rc, $out) = sh([ 'dpkg-deb', '-f', $debs[0], 'Depends' ]);
like($out, qr/\bnginx-abi-[\d.]+-\d+\b/, 'the module depends on the nginx ABI it was built for');
my %contents;
for my $deb (@debs) {
    ($rc, $out) = sh([ 'sh', '-c', 'dpkg-deb --fsys-tarfile "$1" | tar -t', 'sh', $deb ]);
    for (split /\n/, $out) { s{^\./?}{/}; s{(.)/$}{$1}; $contents{$_} = 1 }
}
for my $path ('/usr/lib/nginx/modules/ngx_http_apikey_module.so',
              '/usr/share/nginx/modules-available/mod-http-apikey.conf',
              '/usr/sbin/apikeyd', $UNIT, $CONF, '/usr/lib/tmpfiles.d/apikeyd.conf',
              '/usr/lib/sysusers.d/apikeyd.conf', '/usr/bin/apikeyctl',
              '/usr/share/man/man8/apikeyd.8.gz', '/usr/share/man/man1/apikeyctl.1.gz') {
    ok($contents{$path}, "a package ships $path");
}
($rc, $out) = sh([ 'dpkg-deb', '-I', $debs[1], 'conffiles' ]);
is($out, "$CONF\n", "apikeyd's conffiles: $CONF");
# What was on the machine before, to tell the packages' files from others.
my %existed = map { $_ => (-e $_ || -l $_) ? 1 : 0 } keys %contents;

# --- 2. install ------------------------------------------------------------------

$cleanup{purge} = 1;
apt_get('install', '--no-install-recommends', @debs);
is(installed_version($_), $version, "$_ $version installed") for @PKGS;
is(readlink($ENABLED), '/usr/share/nginx/modules-available/mod-http-apikey.conf',
   'the module is enabled the Debian way (modules-enabled link)');
is(slurp($ENABLED), "load_module modules/ngx_http_apikey_module.so;\n",
   'mod-http-apikey.conf loads the module');

my @pw = getpwnam('apikeyd');
ok(@pw, 'the apikeyd system user exists');
my ($uid, $gid) = @pw[2, 3];
ok(defined $uid && $uid < 1000 && $uid != 0, 'apikeyd is a system user, not root');
like($pw[8] // '', qr{/nologin$}, 'apikeyd has no login shell');
my $www = getgrnam('www-data');
sub owner_mode {
    my @st = lstat($_[0]) or return 'missing';
    return sprintf('%s:%s %04o', scalar(getpwuid($st[4])) // $st[4],
                   scalar(getgrgid($st[5])) // $st[5], $st[2] & 07777);
}
is(owner_mode('/run/apikey'), 'apikeyd:www-data 0750', '/run/apikey: the trust rule\'s private directory');
is(owner_mode('/var/spool/apikeyd'), 'apikeyd:apikeyd 0700', 'the spool is apikeyd\'s only');
is(owner_mode($CONF), 'root:apikeyd 0640', "$CONF: root and apikeyd's group only");

SKIP: {
    skip 'no systemd-analyze', 1 unless -x '/usr/bin/systemd-analyze';
    ($rc, $out, $err) = sh([ 'systemd-analyze', 'verify', $UNIT ]);
    is("$rc $out$err", '0 ', 'systemd-analyze verify accepts the unit, silently');
}

my $unit = read_unit();
is_deeply([ @$unit{qw(User Group)} ], [ 'apikeyd', 'apikeyd' ], 'the unit runs as apikeyd:apikeyd');
like($unit->{ExecStart} // '', qr{^/usr/sbin/apikeyd --config \Q$CONF\E$}, 'ExecStart reads the config file');

# --- 3. PostgreSQL, the config file, apikeyd ----------------------------------

$ENV{TEST_APIKEY_CTL} = '/usr/bin/apikeyctl';    # the packaged one, from here on
start_postgres();                                  # migrated by it
my $org = apikeyctl('org', 'create', 'pkg');
my $k = apikeyctl('key', 'create', '--org', $org->{org_id}, '--name', 'pkg-key');
my $api_port = free_port();
my $conf = slurp($CONF);
spew($CONF, $conf . "\n# t/long/103-packages.t, as an operator would\n"
            . "db = $ENV{TEST_APIKEY_DB_TCP}\nnode = pkgtest\nlisten = 127.0.0.1:$api_port\n");
my $log = servroot_path('logs', 'apikeyd-unit.log');
start_unit($unit, $api_port, $log);
like(slurp($log) // '', qr/apikeyd starting \(version \Q$version\E\): node pkgtest/,
     "apikeyd $version started with the config file's node");

# --- 4. Debian's nginx -----------------------------------------------------------

my $port = free_port();
my $html = servroot_path('html', 't.txt');
spew($SITE, <<"EOF");
# t/long/103-packages.t
apikey_keys /run/apikey/keys;
apikey_usage /run/apikey/usage;
server {
    listen 127.0.0.1:$port;
    location = /pkgtest.txt { apikey on; alias $html; }
}
EOF
start_or_reload_system_nginx();
my $sent = keyed_requests($k->{key}, $port, 4);
is(http_get('/pkgtest.txt', [], port => $port)->{status}, 401, 'a request without a key: 401');
ok_eventually(sub { $sent > 0 && rows_of_key($k->{key_id}) == $sent }, 15,
              "the $sent keyed requests are $sent rows in PostgreSQL");
is(psql_one('SELECT string_agg(DISTINCT node, \',\') FROM api_key_usage WHERE key_id = :\'k\'',
            { k => $k->{key_id} }), 'pkgtest', 'under the node of the config file');

# --- 5. upgrade ------------------------------------------------------------------

build_packages(servroot_path('deb2'), '--version', $upgrade, '--no-lintian');
apt_get('install', '--no-install-recommends',
        map { servroot_path('deb2', "${_}_${upgrade}_amd64.deb") } @PKGS);
is(installed_version($_), $upgrade, "$_ upgraded to $upgrade") for @PKGS;
like(slurp($CONF) // '', qr/^node = pkgtest$/m, 'the edited conffile is kept');
my @beside = glob('/etc/apikey/*.dpkg-*');
is_deeply(\@beside, [], 'no .dpkg-dist or .dpkg-new beside it');
is(readlink($ENABLED), '/usr/share/nginx/modules-available/mod-http-apikey.conf',
   'the module is still enabled');
is(stop_unit(), 0, 'apikeyd stops on SIGTERM with exit 0');
start_unit($unit, $api_port, $log);
like(slurp($log) // '', qr/apikeyd starting \(version \Q$upgrade\E\)/, "apikeyd $upgrade started");
start_or_reload_system_nginx();
$sent += keyed_requests($k->{key}, $port, 2);
ok_eventually(sub { $sent > 5 && rows_of_key($k->{key_id}) == $sent }, 15,
              "after the upgrade: $sent rows for $sent keyed requests");

# --- 6. purge ----------------------------------------------------------------------

is(stop_unit(), 0, 'apikeyd stops with exit 0 before the purge');
unlink $SITE;
if ($nginx_was_running) { nginx_cmd('-s', 'reload') } else { stop_system_nginx() }
delete $cleanup{stop_nginx};
my @listed;
for my $pkg (@PKGS) {
    ($rc, $out) = sh([ 'dpkg', '-L', $pkg ]);
    push @listed, map { $_ eq '/.' ? '/' : $_ } grep { m{^/} } split /\n/, $out;
}
ok(scalar(@listed) >= scalar(keys %contents) - 1, 'dpkg -L lists the installed files');
apt_get('purge', @PKGS);
delete $cleanup{purge};
is(installed_version($_), '', "$_ purged") for @PKGS;
my @left = grep { !$existed{$_} && (-e $_ || -l $_) } @listed;
push @left, grep { -e $_ || -l $_ } (
    '/etc/apikey', '/run/apikey', '/var/spool/apikeyd', $ENABLED, "$ENABLED.removed",
    '/etc/systemd/system/multi-user.target.wants/apikeyd.service',
    '/var/lib/systemd/deb-systemd-helper-enabled/apikeyd.service.dsh-also',
    '/var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/apikeyd.service');
is_deeply(\@left, [], 'no file of the packages is left after the purge');
($rc, $out, $err) = sh([ 'find', '/etc', '/usr', '/var', '/run', '/opt', '/srv', '-xdev',
                         '(', '-user', $uid, '-o', '-group', $gid, ')', '-print' ]);
is("$rc $out", '0 ', 'find: no file owned by the apikeyd user or group is left')
    or diag($err);
is(etc_nginx_listing(), $etc_nginx_before, '/etc/nginx is as it was before the test');
is(system_nginx_running() ? 1 : 0, $nginx_was_running, 'the system nginx runs as before (or not)');

done_testing();
