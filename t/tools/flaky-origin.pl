#!/usr/bin/env perl
# The misbehaving origin of the test harness: failures that need memory
# across requests, which a static nginx cannot give.  One process a
# connection; what each key has seen is kept in files under STATEDIR.
#
# usage: flaky-origin.pl PORT STATEDIR   (routes: see AsyncDL::Test, ORIGIN)
use strict;
use warnings;

use Digest::SHA qw(sha256);
use Fcntl qw(:flock);
use IO::Socket::INET;
use POSIX qw(:sys_wait_h);
use Socket qw(SOL_SOCKET SO_LINGER);

my ($port, $state) = @ARGV;
die "usage: $0 PORT STATEDIR\n" unless $port && $state && -d $state;

my $srv = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $port,
                                Listen => 128, ReuseAddr => 1, Proto => 'tcp')
    or die "listen 127.0.0.1:$port: $!\n";

# children serving /hang sleep for an hour: they go when the server does
my %kids;
my $parent = $$;
$SIG{CHLD} = sub {
    while ((my $k = waitpid(-1, WNOHANG)) > 0) { delete $kids{$k} }
};
$SIG{TERM} = sub {
    kill 'KILL', keys %kids if $$ == $parent;
    exit 0;
};

while (1) {
    my $c = $srv->accept or next;
    my $pid = fork;
    if (!defined $pid) { close $c; next }
    if ($pid == 0) {
        close $srv;
        %kids = ();
        $SIG{TERM} = 'DEFAULT';
        serve($c);
        exit 0;
    }
    $kids{$pid} = 1;
    close $c;
}

# Counts one more request for $key and returns how many came before.
sub bump {
    my ($key) = @_;
    $key =~ s/[^\w.-]/_/g;
    open my $fh, '+>>', "$state/$key.count" or die $!;
    flock $fh, LOCK_EX;
    seek $fh, 0, 0;
    my $n = <$fh> // 0;
    chomp $n;
    truncate $fh, 0;
    print $fh $n + 1, "\n";
    close $fh;
    return $n;
}

sub count_of {
    my ($key) = @_;
    $key =~ s/[^\w.-]/_/g;
    open my $fh, '<', "$state/$key.count" or return 0;
    my $n = <$fh> // 0;
    chomp $n;
    return $n;
}

sub bytes_for {
    my ($key, $from, $len) = @_;
    my $out = '';
    my $block = int($from / 32);
    my $skip = $from % 32;
    while (length($out) < $len + $skip) {
        $out .= sha256("$key:" . $block++);
    }
    return substr($out, $skip, $len);
}

sub respond {
    my ($c, $code, $headers, $body) = @_;
    my %reason = (200 => 'OK', 206 => 'Partial Content', 404 => 'Not Found',
                  429 => 'Too Many Requests', 500 => 'Internal Server Error',
                  502 => 'Bad Gateway', 503 => 'Service Unavailable');
    $body //= '';
    my $h = "HTTP/1.1 $code " . ($reason{$code} // 'Status') . "\r\n"
          . "Connection: close\r\n";
    $h .= "$_: $headers->{$_}\r\n" for sort keys %$headers;
    $h .= "Content-Length: " . length($body) . "\r\n"
        unless exists $headers->{'Content-Length'};
    print $c $h, "\r\n", $body;
}

sub send_content {
    my ($c, $key, $size, $range) = @_;
    my %h = ('Content-Type' => 'application/octet-stream',
             'Accept-Ranges' => 'bytes');
    my ($from, $to) = (0, $size - 1);
    my $code = 200;
    if ($range && $range =~ /^bytes=(\d+)-(\d*)$/ && $1 < $size) {
        ($from, $to) = ($1, length $2 && $2 < $size ? $2 : $size - 1);
        $code = 206;
        $h{'Content-Range'} = "bytes $from-$to/$size";
    }
    $h{'Content-Length'} = $to - $from + 1;
    respond($c, $code, \%h, '');
    my $at = $from;
    while ($at <= $to) {
        my $n = $to - $at + 1 > 65536 ? 65536 : $to - $at + 1;
        print $c bytes_for($key, $at, $n) or return;
        $at += $n;
    }
}

sub serve {
    my ($c) = @_;
    $c->autoflush(1);
    my $line = <$c> // return;
    my ($method, $target) = split ' ', $line;
    my %h;
    while (my $l = <$c>) {
        last if $l =~ /^\r?\n$/;
        $h{lc $1} = $2 if $l =~ /^([^:]+):\s*(.*?)\r?$/;
    }
    my $body = '';
    read($c, $body, $h{'content-length'}) if $h{'content-length'};
    my ($path, $query) = split /\?/, $target, 2;
    my %q = map { split /=/, $_, 2 } split /&/, $query // '';

    if ($path =~ m{^/fail/([\w.-]+)$}) {
        my $key = $1;
        if (bump("fail-$key") < ($q{n} // 1)) {
            return respond($c, $q{code} // 500, {}, "failing on purpose\n");
        }
        return send_content($c, $key, $q{size} // 1024, $h{range});
    }
    if ($path =~ m{^/retry-after/([\w.-]+)$}) {
        my $key = $1;
        if (bump("ra-$key") < ($q{n} // 1)) {
            return respond($c, 429, { 'Retry-After' => $q{after} // 1 },
                           "slow down\n");
        }
        return send_content($c, $key, $q{size} // 1024, $h{range});
    }
    if ($path =~ m{^/reset/([\w.-]+)$}) {
        my $key = $1;
        my $size = $q{size} // 1 << 20;
        if (bump("reset-$key") == 0) {
            my $at = $q{at} // int($size / 2);
            print $c "HTTP/1.1 200 OK\r\nConnection: close\r\n"
                   . "Accept-Ranges: bytes\r\nContent-Length: $size\r\n"
                   . "Content-Type: application/octet-stream\r\n\r\n";
            print $c bytes_for($key, 0, $at);
            # abortive close: the peer sees a reset, not a clean end
            setsockopt($c, SOL_SOCKET, SO_LINGER, pack('ii', 1, 0));
            close $c;
            return;
        }
        open my $log, '>>', "$state/reset-$key.ranges";
        print $log ($h{range} // 'none'), "\n";
        close $log;
        # resize=N: the file changed between the two requests
        return send_content($c, $q{resize} ? "$key-v2" : $key,
                            $q{resize} // $size, $h{range});
    }
    if ($path eq '/hang') {
        sleep 3600;
        return;
    }
    if ($path =~ m{^/callback/([\w.-]+)$}) {
        my $key = $1;
        my $n = bump("cb-$key");
        open my $log, '>>', "$state/cb-$key.log";
        my $sig = $h{'x-async-dl-signature'} // '';
        print $log "$sig\t$body\n";
        close $log;
        return respond($c, 500, {}, "not now\n") if $n < ($q{fail} // 0);
        return respond($c, 200, {}, "ok\n");
    }
    if ($path =~ m{^/requests/([\w.-]+)$}) {
        my $key = $1;
        my $n = 0;
        $n += count_of("$_-$key") for qw(fail ra reset cb);
        return respond($c, 200, { 'Content-Type' => 'text/plain' }, "$n\n");
    }
    respond($c, 404, {}, "no such route\n");
}
