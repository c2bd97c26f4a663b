# An answer given before the request body was read (401 for an empty
# owner, 400 for an invalid one, 415, 405, 404) discards that body: on a
# keep-alive connection the body must never be read as the next request
# (a proxy that shares upstream connections would hand its answer to
# another client).  Each case sends one request whose body is itself a
# request, then a real second request: exactly two answers must come, the
# second one to the second request.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use IO::Socket::INET;
use IO::Select;
use Time::HiRes qw(time);

# every answer on the connection until it is quiet for a moment or closed:
# [status, ...]
sub answers {
    my ($bytes) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => adl()->{port}, Proto => 'tcp',
                                  Timeout => 10)
        or die "connect: $!";
    print $s $bytes;
    my $buf = '';
    my $quiet = time + 2;
    while (time < $quiet) {
        last unless IO::Select->new($s)->can_read($quiet - time);
        my $n = sysread($s, $buf, 65536, length $buf);
        last unless $n;
        $quiet = time + 0.5;
    }
    close $s;
    return [$buf =~ m{^HTTP/1\.1 (\d{3}) }mg], $buf;
}

# a request whose body is a whole request of its own
sub smuggling {
    my ($line, @headers) = @_;
    my $inner = "GET /v1/download/health HTTP/1.1\r\nHost: localhost\r\n\r\n";
    return "$line HTTP/1.1\r\nHost: localhost\r\n" . join('', map { "$_\r\n" } @headers)
         . 'Content-Length: ' . length($inner) . "\r\n\r\n$inner"
         . "GET /v1/download/jobs HTTP/1.1\r\nHost: localhost\r\nX-User: bob\r\n"
         . "Connection: close\r\n\r\n";
}

run_tests();

__DATA__

=== TEST 1: bodies answered early are discarded, never read as a request
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
}
--- check
my @cases = (
    [401, 'POST /v1/download/initiate', 'Content-Type: application/json'],
    [400, 'POST /v1/download/initiate', "X-User: caf\xe9", 'Content-Type: application/json'],
    [400, 'POST /v1/download/initiate', 'X-User: ' . ('o' x 1100), 'Content-Type: application/json'],
    [415, 'POST /v1/download/initiate', 'X-User: bob', 'Content-Type: text/plain'],
    [405, 'PUT /v1/download/initiate', 'X-User: bob'],
    [404, 'POST /v1/download/no/such/route', 'X-User: bob'],
    [401, 'POST /v1/download/00000000-0000-4000-8000-000000000000/cancel'],
    [400, "POST /v1/download/00000000-0000-4000-8000-000000000000/cancel", "X-User: \xff"],
);
for my $c (@cases) {
    my ($status, $line, @h) = @$c;
    my ($got, $raw) = main::answers(main::smuggling($line, @h));
    is("@$got", "$status 200", "$line (" . join(', ', map { substr($_, 0, 20) } @h)
                               . "): $status, then the second request's 200")
        or diag($raw);
    like($raw, qr/"jobs":\[/, 'the second answer is the second request\'s');
}
--- no_error_log
[error]
