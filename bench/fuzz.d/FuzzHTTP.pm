package FuzzHTTP;

# The fuzz run's HTTP client: sends requests byte for byte as generated
# (nothing is validated or fixed up on the way), and reads answers framed
# the way HTTP/1.1 frames them (Content-Length, chunked, or up to the
# close), so that several requests can share a connection, pipelined or
# not.  An event stream is read up to its first event, then left.

use strict;
use warnings;

use IO::Select;
use IO::Socket::INET;
use Socket qw(IPPROTO_TCP TCP_NODELAY SHUT_WR);
use Time::HiRes qw(time);

sub connect_to {
    my ($port) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                  Proto => 'tcp', Timeout => 5)
        or return undef;
    setsockopt($s, IPPROTO_TCP, TCP_NODELAY, 1);
    binmode $s;
    return $s;
}

# Writes all of $bytes (the peer may close early: that is not an error
# here, the answer or its absence says what happened).
sub send_all {
    my ($s, $bytes) = @_;
    local $SIG{PIPE} = 'IGNORE';
    my $off = 0;
    while ($off < length $bytes) {
        my $n = syswrite($s, $bytes, 65536, $off);
        return 0 unless defined $n && $n > 0;
        $off += $n;
    }
    return 1;
}

sub half_close { shutdown($_[0], SHUT_WR) }

# more bytes into $$buf: the count, 0 at EOF (or reset), undef at $deadline
sub fill {
    my ($s, $buf, $deadline) = @_;
    my $left = $deadline - time;
    return undef if $left <= 0;
    return undef unless IO::Select->new($s)->can_read($left);
    my $n = sysread($s, $$buf, 65536, length $$buf);
    return defined $n ? $n : 0;
}

# One answer from the connection, reading into $$buf as needed; what is
# left in $$buf belongs to the next answer.  Returns
#   { status, head, headers => { lc name => value }, body, stream }
# or { closed => 1 } (EOF before a whole answer; partial => bytes seen) or
# { timeout => 1 }.  %o: head => 1 for a HEAD request (no body),
# stream_wait => seconds to wait for an event stream's first event.
sub read_answer {
    my ($s, $buf, $deadline, %o) = @_;

    for (;;) {
        my $end;
        while (($end = index($$buf, "\r\n\r\n")) < 0) {
            my $n = fill($s, $buf, $deadline);
            return { timeout => 1, partial => length $$buf } unless defined $n;
            return { closed => 1, partial => length $$buf } if $n == 0;
        }

        my $head = substr($$buf, 0, $end);
        substr($$buf, 0, $end + 4) = '';

        my ($status) = $head =~ m{^HTTP/\d\.\d (\d{3})};
        return { closed => 1, garbage => $head } unless defined $status;

        my %h;
        for my $l (split /\r\n/, $head) {
            next unless $l =~ /^([^:\s]+):\s*(.*?)\s*$/;
            my $k = lc $1;
            $h{$k} = exists $h{$k} ? "$h{$k}, $2" : $2;
        }

        next if $status >= 100 && $status < 200;      # 100 Continue

        my $a = { status => $status, head => $head, headers => \%h,
                  body => '' };

        return $a if $o{head} || $status == 204 || $status == 304;

        my $stream = ($h{'content-type'} // '') =~ m{^text/event-stream};
        my $until = $stream ? time + ($o{stream_wait} // 1) : $deadline;
        $until = $deadline if $until > $deadline;

        if (($h{'transfer-encoding'} // '') =~ /chunked/i) {
            for (;;) {
                my $nl;
                while (($nl = index($$buf, "\r\n")) < 0) {
                    return stream_end($a) if $stream && event_seen($a);
                    my $n = fill($s, $buf, $until);
                    return $stream ? stream_end($a) : { timeout => 1 }
                        unless defined $n;
                    return { %$a, closed => 1 } if $n == 0;
                }
                my ($size) = substr($$buf, 0, $nl) =~ /^([0-9a-fA-F]+)/;
                return { %$a, bad_chunk => 1 } unless defined $size;
                $size = hex $size;
                if ($size == 0) {
                    # the trailer, up to an empty line
                    my $t;
                    while (($t = index($$buf, "\r\n\r\n", $nl)) < 0) {
                        my $n = fill($s, $buf, $until);
                        return { %$a, closed => 1 } unless $n;
                    }
                    substr($$buf, 0, $t + 4) = '';
                    return $a;
                }
                while (length($$buf) < $nl + 2 + $size + 2) {
                    my $n = fill($s, $buf, $until);
                    return $stream ? stream_end($a) : { timeout => 1 }
                        unless defined $n;
                    return { %$a, closed => 1 } if $n == 0;
                }
                $a->{body} .= substr($$buf, $nl + 2, $size);
                substr($$buf, 0, $nl + 2 + $size + 2) = '';
                return stream_end($a) if $stream && event_seen($a);
            }
        }

        if (defined $h{'content-length'} && $h{'content-length'} =~ /^\d+$/) {
            my $len = $h{'content-length'};
            while (length $$buf < $len) {
                my $n = fill($s, $buf, $until);
                return { timeout => 1 } unless defined $n;
                return { %$a, closed => 1 } if $n == 0;
            }
            $a->{body} = substr($$buf, 0, $len);
            substr($$buf, 0, $len) = '';
            return $a;
        }

        # up to the close
        for (;;) {
            return stream_end($a) if $stream && event_seen($a);
            my $n = fill($s, $buf, $until);
            if (!defined $n) {
                return stream_end($a) if $stream;
                return { timeout => 1 };
            }
            $a->{body} .= $$buf;
            $$buf = '';
            return $a if $n == 0;
        }
    }
}

sub event_seen { return index($_[0]{body}, "\n\n") >= 0 }

sub stream_end {
    my ($a) = @_;
    $a->{stream} = 1;
    return $a;
}

1;
