#!/usr/bin/env perl
# An HTTP/1.1 proxy in front of the test S3 server (s3rver) that fails on
# demand, the ways storage fails: refused connections, 503 SlowDown, 500
# InternalError, a connection reset in the middle of an answer, a slow
# answer.  One process a connection, so one stuck or slow connection never
# holds up another.
#
# usage: s3-fault-proxy.pl LISTEN_PORT UPSTREAM_PORT CONTROL_FILE FAULT_LOG
#
# Requests are forwarded byte for byte as the client sent them (Host header
# included), so SigV4 signatures still verify upstream.  The proxy parses
# just enough of each request and answer (Content-Length, chunked, 1xx,
# HEAD) to know where one ends and the next begins on a kept-alive
# connection, and decides the fault of every request on its own.
#
# CONTROL_FILE (JSON, re-read for every request, written by AsyncDL::Test's
# s3_fault) holds a list of rules; the first rule that applies to a request
# decides its fate, no rule means "pass":
#
#   {"rules":[{"fault":"slowdown","match":"partNumber","count":5,
#              "used":0,"rate":1,"retry_after":1,"delay":0,"when":"response"}]}
#
#   fault        pass | down | slowdown | error500 | reset | delay
#   match        substring of the request line ("PUT /bucket/key?x HTTP/1.1");
#                absent: every request
#   count        apply to that many requests, then no more (absent: no limit);
#                "used" counts them (the proxy updates it under flock)
#   rate         fraction of the matching requests that get the fault (1)
#   retry_after  slowdown/error500: a Retry-After header with these seconds
#   delay        delay: seconds to wait before forwarding (when "request",
#                the default), or to hold the answer once the storage has
#                given it (when "response": the request is done upstream,
#                the client waits, and can be killed meanwhile)
#   when         reset: "response" (default; forward the request, send half
#                of the answer's first bytes, then a TCP reset) or "request"
#                (reset after the request head, before anything is forwarded)
#
# "down" without match and count closes the listening socket (new
# connections are refused) and resets the connections in flight; with a
# match or a count it resets the matching requests' connections.
#
# Every fault given is appended to FAULT_LOG as "epoch fault request-line".
use strict;
use warnings;

use Fcntl qw(:flock O_WRONLY O_APPEND O_CREAT);
use IO::Select;
use IO::Socket::INET;
use JSON::PP;
use POSIX qw(:sys_wait_h);
use Socket qw(SOL_SOCKET SO_LINGER IPPROTO_TCP TCP_NODELAY);
use Time::HiRes qw(time sleep);

my ($port, $up_port, $control, $fault_log) = @ARGV;
die "usage: $0 LISTEN_PORT UPSTREAM_PORT CONTROL_FILE FAULT_LOG\n"
    unless $port && $up_port && $control && $fault_log;

my $JSON = JSON::PP->new->canonical;
my $IDLE = 300;           # a connection idle that long is dropped
my %kids;
my $parent = $$;

$SIG{PIPE} = 'IGNORE';
$SIG{CHLD} = sub {
    while ((my $k = waitpid(-1, WNOHANG)) > 0) { delete $kids{$k} }
};
$SIG{TERM} = $SIG{INT} = sub {
    if ($$ == $parent) { kill 'KILL', keys %kids }
    POSIX::_exit(0);
};

sub listener {
    my $until = time + 10;
    while (1) {
        my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
                                      LocalPort => $port, Listen => 256,
                                      ReuseAddr => 1, Proto => 'tcp');
        return $s if $s;
        die "listen 127.0.0.1:$port: $!\n" if time > $until;
        sleep 0.05;
    }
}

# --- the control file ---------------------------------------------------------

sub read_rules {
    my ($fh) = @_;
    seek $fh, 0, 0;
    local $/;
    my $text = <$fh> // '';
    my $c = length $text ? eval { $JSON->decode($text) } : undef;
    return $c && ref $c->{rules} eq 'ARRAY' ? $c : { rules => [] };
}

# Whether the rules say "down" for everything (the listener closes).
sub globally_down {
    open my $fh, '<', $control or return 0;
    flock $fh, LOCK_SH;
    my $c = read_rules($fh);
    for my $r (@{ $c->{rules} }) {
        next if defined $r->{match} && length $r->{match};
        return ($r->{fault} // '') eq 'down' && !defined $r->{count} ? 1 : 0;
    }
    return 0;
}

sub log_fault {
    my ($what, $line) = @_;
    sysopen my $fh, $fault_log, O_WRONLY | O_APPEND | O_CREAT or return;
    syswrite $fh, sprintf("%.3f %s %s\n", time, $what, $line // '-');
    close $fh;
}

# The rule that decides this request (counted), or undef: pass.
sub take_rule {
    my ($line) = @_;
    open my $fh, '+<', $control or return undef;
    flock $fh, LOCK_EX;
    my $c = read_rules($fh);
    my $hit;
    for my $r (@{ $c->{rules} }) {
        next if defined $r->{match} && length $r->{match}
                && index($line, $r->{match}) < 0;
        next if defined $r->{count} && ($r->{used} // 0) >= $r->{count};
        next if defined $r->{rate} && $r->{rate} < 1 && rand() >= $r->{rate};
        $r->{used} = ($r->{used} // 0) + 1;
        $hit = { %$r };
        last;
    }
    if ($hit) {
        seek $fh, 0, 0;
        truncate $fh, 0;
        print $fh $JSON->encode($c);
    }
    close $fh;
    return $hit && ($hit->{fault} // 'pass') ne 'pass' ? $hit : undef;
}

# --- framing ------------------------------------------------------------------

# A body framer: how many bytes of a buffer belong to the current body, and
# whether it is complete.  Kinds: none, length (left), chunked, close.
sub framer_for {
    my (%h) = @_;
    my $te = $h{'transfer-encoding'} // '';
    return { kind => 'chunked', state => 'size', left => 0, line => '' }
        if $te =~ /chunked/i;
    return { kind => 'length', left => $h{'content-length'} + 0 }
        if defined $h{'content-length'} && $h{'content-length'} =~ /^\d+$/;
    return undef;
}

# consume($f, $buf): (bytes of $buf that are body, done)
sub consume {
    my ($f, $buf) = @_;
    my $len = length $buf;
    return (0, 1) if $f->{kind} eq 'none';
    return ($len, 0) if $f->{kind} eq 'close';
    if ($f->{kind} eq 'length') {
        my $n = $len < $f->{left} ? $len : $f->{left};
        $f->{left} -= $n;
        return ($n, $f->{left} == 0);
    }
    my $at = 0;                       # chunked
    while ($at < $len) {
        if ($f->{state} eq 'data') {
            my $n = $len - $at < $f->{left} ? $len - $at : $f->{left};
            $at += $n;
            $f->{left} -= $n;
            $f->{state} = 'crlf' if $f->{left} == 0;
            next;
        }
        # size line, the CRLF after data, trailer lines: read a line
        my $nl = index($buf, "\n", $at);
        if ($nl < 0) { $f->{line} .= substr($buf, $at); return ($len, 0) }
        my $l = $f->{line} . substr($buf, $at, $nl - $at);
        $f->{line} = '';
        $at = $nl + 1;
        $l =~ s/\r$//;
        if ($f->{state} eq 'size') {
            my ($hex) = $l =~ /^([0-9a-fA-F]+)/;
            $f->{left} = hex($hex // 0);
            $f->{state} = $f->{left} ? 'data' : 'trailer';
        } elsif ($f->{state} eq 'crlf') {
            $f->{state} = 'size';
        } else {                      # trailer: ends at an empty line
            return ($at, 1) if $l eq '';
        }
    }
    return ($at, 0);
}

sub parse_head {
    my ($head) = @_;
    my ($first, @lines) = split /\r?\n/, $head;
    my %h;
    for (@lines) {
        $h{lc $1} = $2 if /^([^:]+):\s*(.*?)\s*$/;
    }
    return ($first // '', %h);
}

# --- one connection ---------------------------------------------------------

sub reset_close {
    my ($s) = @_;
    return unless $s;
    setsockopt($s, SOL_SOCKET, SO_LINGER, pack('ii', 1, 0));
    close $s;
}

my ($client, $upstream, $cbuf, $down_checked);

sub bye {
    my ($how) = @_;
    if (($how // '') eq 'reset') { reset_close($client); reset_close($upstream) }
    else { close $client if $client; close $upstream if $upstream }
    POSIX::_exit(0);
}

# reads more from $sock into $$buf; 0 on EOF/error; dies of idleness
sub fill {
    my ($sock, $buf) = @_;
    my $sel = IO::Select->new($sock);
    my $until = time + $IDLE;
    while (1) {
        check_down();
        if ($sel->can_read(0.5)) {
            my $n = sysread($sock, $$buf, 65536, length $$buf);
            return $n ? $n : 0;
        }
        bye() if time > $until;
    }
}

sub check_down {
    return if time - ($down_checked // 0) < 0.5;
    $down_checked = time;
    bye('reset') if globally_down();
}

sub write_all {
    my ($sock, $data) = @_;
    my $off = 0;
    while ($off < length $data) {
        my $n = syswrite($sock, $data, length($data) - $off, $off);
        return 0 unless defined $n && $n > 0;
        $off += $n;
    }
    return 1;
}

sub error_answer {
    my ($code, $reason, $s3code, $msg, $rule) = @_;
    my $body = qq{<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>$s3code}
             . qq{</Code><Message>$msg</Message><RequestId>fault-proxy}
             . qq{</RequestId></Error>};
    my $h = "HTTP/1.1 $code $reason\r\nContent-Type: application/xml\r\n"
          . "Content-Length: " . length($body) . "\r\n";
    $h .= "Retry-After: $rule->{retry_after}\r\n"
        if defined $rule->{retry_after};
    return "$h\r\n$body";
}

# Reads and drops the request body the framer describes (from $cbuf on).
sub drain_body {
    my ($f) = @_;
    return 1 unless $f;
    while (1) {
        my ($n, $done) = consume($f, $cbuf);
        substr($cbuf, 0, $n, '');
        return 1 if $done;
        return 0 unless fill($client, \$cbuf);
    }
}

# The kept-alive upstream connection, or a new one.  s3rver (Node) closes
# a connection idle for 5 s: one that is readable between answers has been
# closed (or sent something unasked) and is not used again, as a proxy
# would not, or the next request would be answered with a reset.
sub upstream_connect {
    if ($upstream && IO::Select->new($upstream)->can_read(0)) {
        close $upstream;
        undef $upstream;
    }
    return $upstream if $upstream;
    $upstream = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => $up_port, Proto => 'tcp',
                                      Timeout => 10);
    setsockopt($upstream, IPPROTO_TCP, TCP_NODELAY, 1) if $upstream;
    return $upstream;
}

# Forwards one request (head already read) and relays its answer.  Returns
# whether the connection may carry another request.  $reset: send only half
# of the answer's first bytes, then reset both sides.
sub relay {
    my ($head, $method, $req_f, $req_h, $reset, $hold) = @_;
    upstream_connect() or bye('reset');
    write_all($upstream, $head) or bye('reset');

    my $req_done = $req_f ? 0 : 1;
    my $resp = '';               # bytes from upstream not yet parsed
    my $resp_f;                  # body framer, once the final head is seen
    my $resp_done = 0;
    my $keep = !(($req_h->{connection} // '') =~ /close/i);
    my $sel = IO::Select->new($client, $upstream);
    my $sent = 0;                # answer bytes sent (for reset)
    my $until = time + $IDLE;

    while (!$resp_done || !$req_done) {
        # request body bytes already buffered
        if (!$req_done && length $cbuf) {
            my ($n, $done) = consume($req_f, $cbuf);
            write_all($upstream, substr($cbuf, 0, $n, '')) or bye('reset');
            $req_done = $done;
            next;
        }
        check_down();
        bye() if time > $until;
        my @r = $sel->can_read(0.5) or next;
        $until = time + $IDLE;
        for my $s (@r) {
            if ($s == $client) {
                my $n = sysread($client, $cbuf, 65536, length $cbuf);
                bye() unless $n;          # the client went away
                next;
            }
            my $got = '';
            my $n = sysread($upstream, $got, 65536);
            if (!$n && $reset) {
                write_all($client, substr($resp, 0, int(length($resp) / 2)));
                bye('reset');
            }
            if (!$n) {
                # upstream closed: the end of a close-delimited answer, or
                # a broken one; either way the client connection ends too
                write_all($client, $got) if length $got;
                bye();
            }
            if ($reset) {
                $resp .= $got;
                if (length $resp >= 64 || $resp =~ /\r\n\r\n/) {
                    write_all($client, substr($resp, 0, int(length($resp) / 2)));
                    bye('reset');
                }
                next;
            }
            # relay as is; parse to find the end of the answer
            if ($hold) { sleep $hold; $hold = 0 }
            write_all($client, $got) or bye();
            $resp .= $got;
            while (length $resp && !$resp_done) {
                if (!$resp_f) {
                    my $e = index($resp, "\r\n\r\n");
                    last if $e < 0;
                    my ($status, %h) = parse_head(substr($resp, 0, $e));
                    substr($resp, 0, $e + 4, '');
                    my ($code) = $status =~ /^HTTP\/\S+\s+(\d+)/;
                    $code //= 0;
                    next if $code >= 100 && $code < 200;
                    $keep = 0 if ($h{connection} // '') =~ /close/i
                              || $status =~ /^HTTP\/1\.0/;
                    if ($method eq 'HEAD' || $code == 204 || $code == 304) {
                        $resp_f = { kind => 'none' };
                    } else {
                        $resp_f = framer_for(%h);
                        if (!$resp_f) { $resp_f = { kind => 'close' }; $keep = 0 }
                    }
                }
                my ($used, $done) = consume($resp_f, $resp);
                substr($resp, 0, $used, '');
                $resp_done = $done;
                last unless length $resp;
            }
            # an answer that ended before the request body did (an early
            # error): the rest of the body is the server's business
            if ($resp_done && !$req_done) { $keep = 0; $req_done = 1 }
        }
    }
    return $keep;
}

sub serve {
    ($client) = @_;
    $cbuf = '';
    setsockopt($client, IPPROTO_TCP, TCP_NODELAY, 1);
    while (1) {
        my $e;
        while (($e = index($cbuf, "\r\n\r\n")) < 0) {
            bye() unless fill($client, \$cbuf);
        }
        my $head = substr($cbuf, 0, $e + 4, '');
        my ($line, %h) = parse_head($head);
        my ($method) = split ' ', $line;
        $method //= '';
        my $req_f = framer_for(%h);

        my $rule = take_rule($line);
        my $fault = $rule ? $rule->{fault} : 'pass';
        log_fault($fault, $line) if $rule;

        if ($fault eq 'down'
            || ($fault eq 'reset' && ($rule->{when} // '') eq 'request'))
        {
            bye('reset');
        }
        if ($fault eq 'slowdown' || $fault eq 'error500') {
            drain_body($req_f) or bye();
            my $a = $fault eq 'slowdown'
                ? error_answer(503, 'Slow Down', 'SlowDown',
                               'Please reduce your request rate.', $rule)
                : error_answer(500, 'Internal Server Error', 'InternalError',
                               'We encountered an internal error. Please try '
                               . 'again.', $rule);
            write_all($client, $a) or bye();
            next;
        }
        my $hold = 0;
        if ($fault eq 'delay') {
            if (($rule->{when} // '') eq 'response') {
                $hold = $rule->{delay} // 1;
            } else {
                sleep $rule->{delay} // 1;
            }
        }
        relay($head, $method, $req_f, \%h, $fault eq 'reset', $hold) or bye();
    }
}

# --- the listener ---------------------------------------------------------------

my $srv = listener();
my $sel = IO::Select->new($srv);
my $last_check = 0;
while (1) {
    if (time - $last_check >= 0.1) {
        $last_check = time;
        my $down = globally_down();
        if ($down && $srv) {
            log_fault('down-start', '-');
            close $srv;
            undef $srv;
            $sel = IO::Select->new;
        } elsif (!$down && !$srv) {
            log_fault('down-end', '-');
            $srv = listener();
            $sel = IO::Select->new($srv);
        }
    }
    if (!$srv) { sleep 0.1; next }
    $sel->can_read(0.1) or next;
    my $c = $srv->accept or next;
    my $pid = fork;
    if (!defined $pid) { close $c; next }
    if ($pid == 0) {
        close $srv;
        %kids = ();
        $SIG{CHLD} = 'DEFAULT';
        srand($$ ^ int(time * 1000));
        serve($c);
        POSIX::_exit(0);
    }
    $kids{$pid} = 1;
    close $c;
}
