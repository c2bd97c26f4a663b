package AsyncDL::WS;

# A WebSocket client on a plain socket, for the frames an ordinary client
# library would never send (unmasked, oversized, bad UTF-8, reserved bits).
#
#   my $ws = AsyncDL::WS->open($path, \%headers, $early);
#                                  # handshake (and bytes right after it)
#   $ws->{status}, $ws->{headers}, $ws->{accept_ok}
#   $ws->send_frame($opcode, $payload, %o)  # o: fin => 0, mask => 0, rsv => 1
#   $ws->send_raw($bytes)
#   my $f = $ws->read_frame($seconds)       # {fin, opcode, payload, code}
#                                           # or undef (timeout, closed)
#   $ws->closed($seconds)                   # the server closed the TCP
#   AsyncDL::WS::handshake($path, \%headers)  # the answer to any handshake:
#                                           # {status, headers, content}
use strict;
use warnings;
use IO::Socket::INET;
use IO::Select;
use Digest::SHA qw(sha1);
use MIME::Base64 qw(encode_base64 decode_base64);
use Time::HiRes qw(time);
use JSON::PP ();
use AsyncDL::Stack ();
use AsyncDL::HTTPMsg qw(read_message);

sub _connect {
    my $port = AsyncDL::Stack::adl()->{port};
    my $sock = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port",
                                     Timeout => 5);
    return $sock || die "connect: $!";
}

# a header's value may be a list (one line each); $early: bytes sent in the
# same write, right after the request (frames before the 101)
sub _request {
    my ($sock, $path, $headers, $early) = @_;
    my %h = (Host => 'localhost', %$headers);
    my $req = "GET $path HTTP/1.1\r\n";
    for my $k (grep { defined $h{$_} } sort keys %h) {
        $req .= "$k: $_\r\n" for ref $h{$k} ? @{ $h{$k} } : $h{$k};
    }
    syswrite($sock, "$req\r\n" . ($early // ''));
}

sub default_headers {
    my ($key) = @_;
    return (Upgrade => 'websocket', Connection => 'Upgrade',
            'Sec-WebSocket-Version' => 13, 'Sec-WebSocket-Key' => $key);
}

sub new_key { return encode_base64(join('', map { chr int rand 256 } 1 .. 16), '') }

# any answer to a handshake (a refusal has a body)
sub handshake {
    my ($path, $headers) = @_;
    my $sock = _connect();
    _request($sock, $path, $headers);
    my ($head, $body) = read_message($sock);
    close $sock;
    defined $head or return { status => 0 };
    my ($line, @h) = split /\r\n/, $head;
    my ($status) = $line =~ m{^HTTP/1\.1 (\d+)};
    my %h = map { /^([^:]+):\s*(.*)$/ ? (lc $1 => $2) : () } @h;
    my $json = eval { JSON::PP->new->decode($body) };
    return { status => $status, headers => \%h, content => $body,
             json => $json };
}

sub open {
    my ($class, $path, $extra, $early) = @_;
    my $key = new_key();
    my $sock = _connect();
    _request($sock, $path, { default_headers($key), %{ $extra || {} } },
             $early);
    # the head only: frames may follow at once
    my $head = '';
    my $sel = IO::Select->new($sock);
    while ($head !~ /\r\n\r\n/) {
        $sel->can_read(5) or die "no answer to the handshake\n";
        sysread($sock, my $c, 1) or die "closed during the handshake\n";
        $head .= $c;
    }
    my ($line, @h) = split /\r\n/, $head;
    my ($status) = $line =~ m{^HTTP/1\.1 (\d+)} or die "bad status: $line\n";
    my %h = map { /^([^:]+):\s*(.*)$/ ? (lc $1 => $2) : () } @h;
    my $self = bless { sock => $sock, sel => $sel, status => $status,
                       headers => \%h, buf => '' }, $class;
    $self->{accept_ok} = ($h{'sec-websocket-accept'} // '') eq
        encode_base64(sha1($key . '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'), '');
    return $self;
}

sub send_raw { my ($self, $b) = @_; syswrite($self->{sock}, $b) }

sub frame {
    my ($op, $payload, %o) = @_;
    my $fin = exists $o{fin} ? $o{fin} : 1;
    my $mask = exists $o{mask} ? $o{mask} : 1;
    my $len = length $payload;
    my $b = chr(($fin ? 0x80 : 0) | ($o{rsv} ? 0x40 : 0) | $op);
    my $m = $mask ? 0x80 : 0;
    if ($len < 126) { $b .= chr($m | $len) }
    elsif ($len < 65536) { $b .= chr($m | 126) . pack('n', $len) }
    else { $b .= chr($m | 127) . pack('Q>', $len) }
    if ($mask) {
        my $k = join '', map { chr int rand 256 } 1 .. 4;
        $b .= $k;
        my $x = $payload ^ substr($k x (int($len / 4) + 1), 0, $len);
        $b .= $x;
    } else {
        $b .= $payload;
    }
    return $b;
}

sub send_frame {
    my ($self, @a) = @_;
    $self->send_raw(frame(@a));
}

sub _fill {
    my ($self, $n, $deadline) = @_;
    while (length $self->{buf} < $n) {
        my $left = $deadline - time;
        return 0 if $left <= 0 || !$self->{sel}->can_read($left);
        my $got = sysread($self->{sock}, my $c, 65536);
        if (!$got) { $self->{eof} = 1; return 0 }
        $self->{buf} .= $c;
    }
    return 1;
}

sub read_frame {
    my ($self, $secs) = @_;
    my $deadline = time + ($secs // 5);
    $self->_fill(2, $deadline) or return undef;
    my ($b0, $b1) = unpack 'CC', $self->{buf};
    my $len = $b1 & 0x7f;
    my $hl = 2;
    if ($len == 126) { $self->_fill(4, $deadline) or return undef;
                       $len = unpack 'n', substr($self->{buf}, 2, 2); $hl = 4 }
    elsif ($len == 127) { $self->_fill(10, $deadline) or return undef;
                          $len = unpack 'Q>', substr($self->{buf}, 2, 8); $hl = 10 }
    my $masked = $b1 & 0x80;
    $hl += 4 if $masked;
    $self->_fill($hl + $len, $deadline) or return undef;
    my $payload = substr($self->{buf}, $hl, $len);
    $self->{buf} = substr($self->{buf}, $hl + $len);
    my $f = { fin => ($b0 & 0x80) ? 1 : 0, rsv => $b0 & 0x70,
              opcode => $b0 & 0x0f, payload => $payload, masked => $masked };
    $f->{code} = unpack 'n', $payload if $f->{opcode} == 8 && $len >= 2;
    return $f;
}

# the next frame that is not a ping (pings are answered)
sub next_frame {
    my ($self, $secs) = @_;
    my $deadline = time + ($secs // 5);
    while (my $f = $self->read_frame($deadline - time)) {
        if ($f->{opcode} == 9) { $self->send_frame(10, $f->{payload}); next }
        return $f;
    }
    return undef;
}

sub closed {
    my ($self, $secs) = @_;
    my $deadline = time + ($secs // 5);
    while (!$self->{eof}) {
        my $left = $deadline - time;
        return 0 if $left <= 0 || !$self->{sel}->can_read($left);
        my $got = sysread($self->{sock}, my $c, 65536);
        $self->{eof} = 1 unless $got;
    }
    return 1;
}

sub close { my ($self) = @_; close $self->{sock} }

1;
