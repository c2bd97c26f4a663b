package AsyncDL::SSE;

=head1 NAME

AsyncDL::SSE - a Server-Sent Events client for the tests: raw sockets,
events read one at a time, with deadlines

=head1 SYNOPSIS

    use AsyncDL::SSE;

    my $s = sse_open("/v1/download/stream/$id", { 'Last-Event-ID' => 3 });
    is($s->{status}, 200);
    my $ev = $s->next_event(5);     # {event, id, data, json, retry, at}
    my @evs = $s->until_event(qr/^(completed|failed|canceled)$/, 30);
    ok($s->wait_closed(2), 'the server ended the stream');

C<sse_open($path_or_url, \%headers, %opt)> connects (to the harness's
nginx unless given a full URL), sends a GET (or C<$opt{method}> with
C<$opt{body}>: a streaming initiate), reads the status line and the
headers (chunked bodies are decoded).  C<$opt{port}> overrides the port;
C<$opt{http10}> sends an HTTP/1.0 request.
An answer that is not an event stream keeps its body in C<{body}> (and
C<{json}>).
Heartbeat events are skipped unless C<< $s->{heartbeats} >> is set (they
are still kept in C<< $s->{events} >>).

=cut

use strict;
use warnings;

use Exporter qw(import);
use IO::Select;
use IO::Socket::INET;
use JSON::PP;
use Time::HiRes qw(time);
use AsyncDL::Test ();

our @EXPORT = qw(sse_open);

my $JSON = JSON::PP->new->allow_nonref;

sub sse_open {
    my ($path, $headers, %opt) = @_;
    my ($host, $port) = ('127.0.0.1', $opt{port} // AsyncDL::Test::adl()->{port});
    if ($path =~ m{^http://([^/:]+):(\d+)(/.*)$}) {
        ($host, $port, $path) = ($1, $2, $3);
    }
    my $sock = IO::Socket::INET->new(PeerAddr => $host, PeerPort => $port,
                                     Proto => 'tcp', Timeout => 5)
        or die "connect $host:$port: $!";
    $sock->blocking(0);
    my $method = $opt{method} // 'GET';
    my $req = "$method $path HTTP/" . ($opt{http10} ? '1.0' : '1.1')
            . "\r\nHost: localhost\r\n"
            . "Accept: text/event-stream\r\n";
    $req .= "$_: $headers->{$_}\r\n" for sort keys %{ $headers || {} };
    $req .= "Content-Length: " . length($opt{body}) . "\r\n"
        if defined $opt{body};
    $req .= "\r\n" . ($opt{body} // '');
    syswrite($sock, $req) == length $req or die "write: $!";

    my $self = bless { sock => $sock, raw => '', body_buf => '',
                       sel => IO::Select->new($sock), eof => 0,
                       headers => {}, events => [] }, __PACKAGE__;

    # the head
    my $until = time + ($opt{timeout} // 10);
    while ($self->{raw} !~ /\r\n\r\n/) {
        $self->_read($until - time) or last;
    }
    my ($head, $rest) = split /\r\n\r\n/, $self->{raw}, 2;
    die "no answer from $path\n" unless defined $head && length $head;
    my @lines = split /\r\n/, $head;
    ($self->{status}) = $lines[0] =~ m{^HTTP/\d\.\d (\d+)};
    for (@lines[1 .. $#lines]) {
        my ($k, $v) = split /:\s*/, $_, 2;
        $self->{headers}{lc $k} = $v;
    }
    $self->{raw} = $rest // '';
    $self->{chunked} = ($self->{headers}{'transfer-encoding'} // '')
                       =~ /chunked/i;
    $self->_decode;

    if ($self->{status} !~ /^20[02]$/
        || ($self->{headers}{'content-type'} // '') !~ m{^text/event-stream})
    {
        $self->wait_closed($opt{timeout} // 5)
            if !defined $self->{headers}{'content-length'}
               || length($self->{body_buf}) < $self->{headers}{'content-length'};
        $self->{body} = $self->{body_buf};
        $self->{json} = eval { $JSON->decode($self->{body}) };
    }
    return $self;
}

# reads what is there within $timeout; false on EOF or timeout
sub _read {
    my ($self, $timeout) = @_;
    return 0 if $self->{eof};
    $timeout = 0 if $timeout < 0;
    return 0 unless $self->{sel}->can_read($timeout);
    my $n = sysread($self->{sock}, my $buf, 65536);
    if (!defined $n) {
        return 1 if $!{EAGAIN} || $!{EWOULDBLOCK};
        $self->{eof} = 1;
        return 0;
    }
    if ($n == 0) {
        $self->{eof} = 1;
        return 0;
    }
    $self->{raw} .= $buf;
    return 1;
}

# body bytes from raw (chunked or not) into body_buf
sub _decode {
    my ($self) = @_;
    if (!$self->{chunked}) {
        $self->{body_buf} .= $self->{raw};
        $self->{raw} = '';
        return;
    }
    while (1) {
        if ($self->{chunk_left}) {
            my $n = length $self->{raw};
            last unless $n;
            $n = $self->{chunk_left} if $n > $self->{chunk_left};
            $self->{body_buf} .= substr($self->{raw}, 0, $n, '');
            $self->{chunk_left} -= $n;
            $self->{need_crlf} = 1 if $self->{chunk_left} == 0;
            next;
        }
        if ($self->{need_crlf}) {
            last if length $self->{raw} < 2;
            substr($self->{raw}, 0, 2, '');
            $self->{need_crlf} = 0;
            next;
        }
        last unless $self->{raw} =~ s/\A([0-9a-fA-F]+)[^\r\n]*\r\n//;
        my $size = hex $1;
        if ($size == 0) {
            $self->{last_chunk} = 1;
            $self->{raw} = '';
            last;
        }
        $self->{chunk_left} = $size;
    }
}

# the next event, or undef (timeout, end of stream)
sub next_event {
    my ($self, $timeout) = @_;
    my $until = time + ($timeout // 10);
    while (1) {
        if ($self->{body_buf} =~ s/\A(.*?)\n\n//s) {
            my $block = $1;
            my %ev = (at => time);
            for my $l (split /\n/, $block) {
                if ($l =~ /^:/) { $ev{comment} = $l; next }
                my ($k, $v) = $l =~ /^([^:]+):\s?(.*)$/ or next;
                if ($k eq 'data') {
                    $ev{data} = defined $ev{data} ? "$ev{data}\n$v" : $v;
                } else {
                    $ev{$k} = $v;
                }
            }
            $ev{json} = eval { $JSON->decode($ev{data}) } if defined $ev{data};
            push @{ $self->{events} }, \%ev;
            next if ($ev{event} // '') eq 'heartbeat' && !$self->{heartbeats};
            return \%ev;
        }
        return undef if $self->{last_chunk} || $self->{eof};
        my $left = $until - time;
        return undef if $left <= 0;
        $self->_read($left);
        $self->_decode;
    }
}

# events up to and including the first whose name matches $re
sub until_event {
    my ($self, $re, $timeout) = @_;
    my $until = time + ($timeout // 10);
    my @got;
    while (my $ev = $self->next_event($until - time)) {
        push @got, $ev;
        last if ($ev->{event} // '') =~ $re;
    }
    return @got;
}

# true once the server ended the response (last chunk or EOF)
sub wait_closed {
    my ($self, $timeout) = @_;
    my $until = time + ($timeout // 5);
    while (!$self->{last_chunk} && !$self->{eof}) {
        my $left = $until - time;
        return 0 if $left <= 0;
        $self->_read($left);
        $self->_decode;
    }
    return 1;
}

sub close {
    my ($self) = @_;
    close $self->{sock} if $self->{sock};
    delete $self->{sock};
}

1;
