package Test::Apikey::Http;

# A deliberately dumb HTTP/1.x client: it sends exactly the bytes it is given
# over a raw TCP socket and parses what comes back (status line, repeated
# headers, Content-Length / chunked / read-to-EOF bodies).

use strict;
use warnings;

use Exporter qw(import);
use IO::Select;
use IO::Socket::INET;
use Time::HiRes qw(time);

use Test::Apikey::Util qw(timeout_factor);

our @EXPORT_OK = qw(http_request http_get build_request parse_response);

# build_request("GET /t [HTTP/1.1]", [header lines], $body) -> raw bytes.
# Header lines are sent verbatim; Host: localhost, Connection: close and
# Content-Length are added only when the caller did not give them.
sub build_request {
    my ($line, $headers, $body) = @_;
    $headers ||= [];
    $line =~ s/\r?\n\z//;
    my ($method, $uri, $proto) = split ' ', $line, 3;
    die "bad request line '$line' (want: METHOD URI [PROTOCOL])\n"
        unless defined $uri;
    $proto //= 'HTTP/1.1';
    my $has = sub { my $re = shift; scalar grep { /^$re\s*:/i } @$headers };
    my @lines = ("$method $uri $proto");
    push @lines, 'Host: localhost'   unless $has->('Host');
    push @lines, 'Connection: close' unless $has->('Connection');
    if (defined $body && !$has->('Content-Length')
        && !$has->('Transfer-Encoding'))
    {
        push @lines, 'Content-Length: ' . length($body);
    }
    push @lines, map { s/\r\z//r } @$headers;
    return join('', map { "$_\r\n" } @lines) . "\r\n" . ($body // '');
}

# http_request($raw, port => P, host => H, local => A, timeout => S, method => M)
# -> { status, reason, protocol, status_line, headers => {lc name => value,
#      repeated values joined by ", "}, header_list => [[Name, value], ...],
#      body, raw, elapsed, error }   (status 0 and error set on failure)
sub http_request {
    my ($raw, %opt) = @_;
    my $port = $opt{port} // $ENV{TEST_NGINX_SERVER_PORT}
        // die "http_request: no port (TEST_NGINX_SERVER_PORT unset)\n";
    # x timeout_factor(): 10 under valgrind, else 1
    my $timeout = ($opt{timeout} // $ENV{TEST_NGINX_TIMEOUT} // 10) * timeout_factor();
    my $is_head = ($opt{method} // ($raw =~ /^(\S+)/ ? $1 : '')) eq 'HEAD';
    my $start = time;
    my $sock = IO::Socket::INET->new(
        PeerAddr => $opt{host} // '127.0.0.1', PeerPort => $port,
        Proto => 'tcp', Timeout => $timeout,
        # local => '127.0.0.2': another client address on loopback
        (defined $opt{local} ? (LocalAddr => $opt{local}) : ()),
    ) or return _failed("connect to port $port: $!", '', $start);
    binmode $sock;
    my $err = _send_all($sock, $raw, $start + $timeout);
    my ($data, $resp) = ('', undef);
    my $sel = IO::Select->new($sock);
    while (1) {
        $resp = parse_response($data, $is_head);
        last if $resp && $resp->{complete};
        my $left = $start + $timeout - time;
        if ($left <= 0 || !$sel->can_read($left)) {
            $err //= "timed out after ${timeout}s reading the response";
            last;
        }
        my $n = sysread($sock, my $buf, 65536);
        if (!defined $n) { $err //= "read: $!"; last }
        if ($n == 0) {
            $resp = parse_response($data, $is_head, 1);
            last;
        }
        $data .= $buf;
    }
    close $sock;
    return _failed($err // 'connection closed before a full status line and headers',
                   $data, $start)
        unless $resp && $resp->{headers_done};
    $resp->{error} = $err // ($resp->{complete} ? undef
                              : 'connection closed before the body was complete');
    $resp->{elapsed} = time - $start;
    delete @$resp{qw(headers_done complete)};
    return $resp;
}

# http_get($path, [header lines], %opt) -> same as http_request.
sub http_get {
    my ($path, $headers, %opt) = @_;
    return http_request(build_request("GET $path", $headers), %opt);
}

sub _send_all {
    my ($sock, $raw, $deadline) = @_;
    local $SIG{PIPE} = 'IGNORE';    # the server may close early (400, 413)
    my $sel = IO::Select->new($sock);
    my $off = 0;
    while ($off < length $raw) {
        my $left = $deadline - time;
        return "timed out sending the request" unless $left > 0 && $sel->can_write($left);
        my $n = syswrite($sock, $raw, 65536, $off);
        # The server may answer and close before reading everything (413...).
        return undef unless defined $n;
        $off += $n;
    }
    return undef;
}

sub _failed {
    my ($error, $raw, $start) = @_;
    return { status => 0, error => $error, headers => {}, header_list => [],
             body => undef, raw => $raw, elapsed => time - $start };
}

# parse_response($bytes, $is_head, $eof) -> undef until the headers are
# complete, then a response hash with complete => 1 once the body is.
sub parse_response {
    my ($data, $is_head, $eof) = @_;
    my $pos = 0;
    while (1) {
        my $end = index($data, "\r\n\r\n", $pos);
        return undef if $end < 0;
        my $head = substr($data, $pos, $end - $pos);
        my $resp = _parse_head($head) or return undef;
        $resp->{raw} = $data;
        my $rest = substr($data, $end + 4);
        if ($resp->{status} >= 100 && $resp->{status} < 200 && $resp->{status} != 101) {
            $pos = $end + 4;    # interim response (100 Continue): skip it
            next;
        }
        _parse_body($resp, $rest, $is_head, $eof);
        return $resp;
    }
}

sub _parse_head {
    my ($head) = @_;
    my ($status_line, @lines) = split /\r\n/, $head;
    my ($proto, $status, $reason) =
        ($status_line // '') =~ m{^(HTTP/\d\.\d)\s+(\d{3})(?:\s+(.*))?$}
        or return undef;
    my (%h, @list);
    for my $line (@lines) {
        my ($name, $value) = $line =~ /^([^:]+):\s*(.*?)\s*$/ or next;
        push @list, [ $name, $value ];
        my $k = lc $name;
        $h{$k} = exists $h{$k} ? "$h{$k}, $value" : $value;
    }
    return { status => $status + 0, reason => $reason // '', protocol => $proto,
             status_line => $status_line, headers => \%h, header_list => \@list,
             headers_done => 1 };
}

sub _parse_body {
    my ($resp, $rest, $is_head, $eof) = @_;
    my $h = $resp->{headers};
    if ($is_head || $resp->{status} == 204 || $resp->{status} == 304) {
        @$resp{qw(body complete)} = ('', 1);
    } elsif (($h->{'transfer-encoding'} // '') =~ /chunked/i) {
        my ($body, $done) = _dechunk($rest);
        @$resp{qw(body complete)} = ($body, $done);
    } elsif (defined $h->{'content-length'} && $h->{'content-length'} =~ /^\d+$/) {
        my $len = $h->{'content-length'};
        @$resp{qw(body complete)} = (substr($rest, 0, $len), length($rest) >= $len);
    } else {
        @$resp{qw(body complete)} = ($rest, $eof ? 1 : 0);
    }
}

# -> (decoded body so far, 1 if the last chunk and trailers were seen)
sub _dechunk {
    my ($data) = @_;
    my ($body, $pos) = ('', 0);
    while (1) {
        my $eol = index($data, "\r\n", $pos);
        return ($body, 0) if $eol < 0;
        my ($size) = substr($data, $pos, $eol - $pos) =~ /^([0-9a-fA-F]+)/
            or return ($body, 0);
        $size = hex $size;
        $pos = $eol + 2;
        if ($size == 0) {    # trailers end with an empty line
            return ($body, 1) if substr($data, $pos, 2) eq "\r\n";
            return ($body, index($data, "\r\n\r\n", $pos) >= 0 ? 1 : 0);
        }
        return ($body . substr($data, $pos), 0) if length($data) < $pos + $size + 2;
        $body .= substr($data, $pos, $size);
        $pos += $size + 2;
    }
}

1;
