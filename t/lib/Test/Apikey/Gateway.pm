package Test::Apikey::Gateway;

# Gateway hosts for the multi-gateway and failover files: each one an nginx
# (master + workers, the module loaded) and an apikeyd with its own --node,
# runtime directory, ports, logs and spool, all in <servroot>/gw-NAME, as
# separate hosts would have. Any number of them run beside each other and
# beside the harness's own nginx and apikeyd, on one PostgreSQL.
#
# Not exported by Test::Apikey: `use Test::Apikey::Gateway;` after it.

use strict;
use warnings;

use Exporter qw(import);
use JSON::PP ();

use Test::Apikey::Util qw(
    servroot_path make_world_readable_dir make_runtime_dir is_root spawn
    run_cmd process_alive stop_process wait_until slurp spew on_cleanup
    free_port
);
use Test::Apikey::Http qw(http_get);
use Test::Apikey::Nginx qw(nginx_binary module_path);
use Test::Apikey::Daemon qw(apikeyd_path);
use Test::Apikey::Usage qw(metric_sum metrics_values);

our @EXPORT = qw(
    start_gateway stop_gateway gateway_start_apikeyd gateway_stop_apikeyd
    gateway_get gateway_api_get gateway_metrics gateway_settle gateway_log
);

# start_gateway(name => NAME, node => NODE, db => CONNINFO, workers => N,
#               conf => sub { my ($gw) = @_; (http_config => ..., config
#               => ...) }, apikeyd_args => [...]) -> $gw: { name, node,
# dir, run, keys, usage, port, api_port, url }. The conf sub sees $gw's
# paths ($gw->{keys}, $gw->{usage}) and returns the text inside http {}
# (before the server) and inside the server {} on $gw->{port}. apikeyd
# starts first and must answer /healthz; db defaults to TEST_APIKEY_DB.
sub start_gateway {
    my (%o) = @_;
    my $name = $o{name} // die "start_gateway: name => NAME is required\n";
    my $dir = make_world_readable_dir(servroot_path("gw-$name"));
    make_world_readable_dir("$dir/$_") for qw(conf logs tmp spool);
    my $run = make_runtime_dir("$dir/run");
    my $gw = {
        %o, dir => $dir, run => $run, node => $o{node} // $name,
        keys => "$run/apikey_keys", usage => "$run/apikey_usage",
        port => free_port(), api_port => free_port(),
        db => $o{db} // $ENV{TEST_APIKEY_DB},
    };
    $gw->{url} = "http://127.0.0.1:$gw->{api_port}";
    on_cleanup("gateway-$name", sub { stop_gateway($gw) });
    gateway_start_apikeyd($gw);
    _start_nginx($gw);
    return $gw;
}

sub _conf_text {
    my ($gw) = @_;
    my %s = $gw->{conf} ? $gw->{conf}->($gw) : ();
    my $dir = $gw->{dir};
    my $user = '';
    if (is_root()) {
        my $gid = (getpwnam('nobody'))[3];
        $user = 'user nobody ' . (defined $gid ? (getgrgid($gid))[0] : 'nogroup') . ';';
    }
    return join "\n",
        'load_module ' . module_path() . ';', $user, 'daemon on;',
        'worker_processes ' . ($gw->{workers} // 1) . ';',
        "error_log $dir/logs/error.log info;", "pid $dir/logs/nginx.pid;",
        'events { worker_connections 1024; }',
        'http {', '    access_log off;', '    default_type text/plain;',
        '    types { text/html html; text/plain txt; application/json json; }',
        (map { "    ${_}_temp_path $dir/tmp/$_;" } qw(client_body proxy fastcgi uwsgi scgi)),
        $s{http_config} // '',
        '    server {', "        listen 127.0.0.1:$gw->{port};",
        "        root $ENV{TEST_NGINX_HTML_DIR};",
        $s{config} // '', '    }', '}', '';
}

sub _start_nginx {
    my ($gw) = @_;
    my $conf = spew("$gw->{dir}/conf/nginx.conf", _conf_text($gw));
    my ($rc, undef, $err) = run_cmd([ nginx_binary(), '-p', "$gw->{dir}/", '-c', $conf,
                                      '-e', "$gw->{dir}/logs/error.log" ], timeout => 30);
    die "gateway $gw->{name}: nginx failed to start (exit $rc):\n$err" if $rc != 0;
    wait_until(sub {
        my ($pid) = (slurp("$gw->{dir}/logs/nginx.pid") // '') =~ /^(\d+)/;
        return $pid && process_alive($pid) && ($gw->{nginx_pid} = $pid);
    }, 5, "gateway $gw->{name}: nginx pid");
}

# gateway_start_apikeyd($gw): starts its apikeyd (stopped before, if it
# runs) with the gateway's node, paths and port; waits for /healthz 200.
sub gateway_start_apikeyd {
    my ($gw) = @_;
    gateway_stop_apikeyd($gw);
    my @argv = (apikeyd_path(), '--db', $gw->{db}, '--node', $gw->{node},
                '--keys', $gw->{keys}, '--usage', $gw->{usage},
                '--listen', "127.0.0.1:$gw->{api_port}", '--spool', "$gw->{dir}/spool",
                @{ $gw->{apikeyd_args} || [] });
    my $log = "$gw->{dir}/logs/apikeyd.log";
    $gw->{apikeyd_pid} = spawn(\@argv, log => $log);
    my $pid = $gw->{apikeyd_pid};
    wait_until(sub {
        die "apikeyd exited\n" unless process_alive($pid);
        return http_get('/healthz', [], port => $gw->{api_port}, timeout => 2)->{status} == 200;
    }, 10, "gateway $gw->{name}: apikeyd /healthz 200");
    return $pid;
}

# gateway_stop_apikeyd($gw): TERM (apikeyd commits what it drained), then KILL.
sub gateway_stop_apikeyd {
    my ($gw) = @_;
    my $pid = delete $gw->{apikeyd_pid} or return;
    stop_process($pid, TERM => 10, KILL => 5);
}

# stop_gateway($gw): nginx (QUIT, then TERM), then apikeyd.
sub stop_gateway {
    my ($gw) = @_;
    if (my $pid = delete $gw->{nginx_pid}) {
        stop_process($pid, QUIT => 10, TERM => 5, KILL => 5);
    }
    gateway_stop_apikeyd($gw);
}

# gateway_get($gw, $path, \@headers, %opt) -> http_get to the gateway's nginx.
sub gateway_get {
    my ($gw, $path, $headers, %opt) = @_;
    return http_get($path, $headers // [], port => $gw->{port}, timeout => 5, %opt);
}

# gateway_api_get($gw, $path, \@headers) -> http_get to its apikeyd, plus
# json (the decoded body) when the body is JSON.
sub gateway_api_get {
    my ($gw, $path, $headers) = @_;
    my $r = http_get($path, $headers // [], port => $gw->{api_port}, timeout => 10);
    $r->{json} = eval { JSON::PP->new->decode($r->{body}) } if defined $r->{body};
    return $r;
}

# gateway_metrics($gw) -> its apikeyd's /metrics as { 'name{labels}' =>
# value }; dies unless 200.
sub gateway_metrics {
    my ($gw) = @_;
    my $r = http_get('/metrics', [], port => $gw->{api_port}, timeout => 3);
    die "gateway $gw->{name}: /metrics answered $r->{status}\n" unless $r->{status} == 200;
    return metrics_values($r->{body});
}

# gateway_settle($gw, $timeout_s): waits until its apikeyd has every ring,
# its spool and every aggregation buffer empty (a ring's read position
# moves, and a buffer is cleared, only after a commit). Meant for after the
# traffic stopped.
sub gateway_settle {
    my ($gw, $timeout) = @_;
    wait_until(sub {
        my $m = gateway_metrics($gw);
        return 0 unless grep { /^apikey_ring_depth\{/ } keys %$m;    # segment mapped
        return metric_sum($m, 'apikey_ring_depth') == 0 && ($m->{apikey_spool_bytes} // 0) == 0
            && metric_sum($m, 'apikey_agg_pending') == 0;
    }, $timeout // 20, "gateway $gw->{name}: rings, spool and aggregation buffers empty");
}

# gateway_log($gw, 'apikeyd' | 'error') -> that log's text.
sub gateway_log {
    my ($gw, $which) = @_;
    return slurp("$gw->{dir}/logs/" . ($which eq 'apikeyd' ? 'apikeyd.log' : 'error.log')) // '';
}

1;
