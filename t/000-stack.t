# The stack every test stands on behaves as AsyncDL::Test documents it:
# PostgreSQL with the schema, the origin's failure modes, the flaky
# origin's memory, and an S3 server that checks signatures.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use IO::Socket::INET;

my $s = adl();

is(psql("SELECT count(*) FROM pg_tables WHERE tablename IN "
        . "('async_dl_jobs', 'async_dl_files')"), 2, 'schema is applied');

my $r = request('GET', "$s->{origin}/files/70000");
is($r->{status}, 200, 'origin serves file ids');
is(length $r->{content}, 1024, 'file 70000 is 1 KiB');

$r = request('GET', "$s->{origin}/files/70009");
is(length $r->{content}, 1024 + 81 * 32 * 1024, 'file 70009 is larger');

is(request('GET', "$s->{origin}/status/404")->{status}, 404, 'origin 404');
is(request('GET', "$s->{origin}/status/500")->{status}, 500, 'origin 500');
$r = request('GET', "$s->{origin}/status/429");
is($r->{status}, 429, 'origin 429');
is($r->{headers}{'retry-after'}, 1, '429 carries Retry-After');

$r = request('GET', "$s->{origin}/redirect/3");
is($r->{status}, 301, 'a redirect chain starts');
is($r->{headers}{location}, "$s->{origin}/redirect/2", 'and goes on');
is(request('GET', "$s->{origin}/redirect/loop")->{headers}{location},
   "$s->{origin}/redirect/loop", 'the loop points at itself');
is(request('GET', "$s->{origin}/redirect/private")->{headers}{location},
   'http://10.255.255.1/x', 'a redirect to a private address');

my $path = origin_file('stack.bin', 300_000);
$r = request('GET', "$s->{origin}/chunked/stack.bin");
is($r->{status}, 200, 'chunked location answers');
ok(!defined $r->{headers}{'content-length'}, 'without Content-Length');
is(sha256_hex($r->{content}), file_sha256($path), 'with the same bytes');

$r = request('GET', "$s->{origin}/f/stack.bin", { Range => 'bytes=10-19' });
is($r->{status}, 206, 'files honour Range');
$r = request('GET', "$s->{origin}/noranges/stack.bin",
             { Range => 'bytes=10-19' });
is($r->{status}, 200, '/noranges/ ignores Range');

# flaky origin: fails twice, then serves
is(request('GET', "$s->{flaky}/fail/k1?n=2&size=100")->{status}, 500, 'fail 1');
is(request('GET', "$s->{flaky}/fail/k1?n=2&size=100")->{status}, 500, 'fail 2');
$r = request('GET', "$s->{flaky}/fail/k1?n=2&size=100");
is($r->{status}, 200, 'then 200');
is($r->{content}, flaky_bytes('k1', 100), 'with the documented bytes');
is(request('GET', "$s->{flaky}/requests/k1")->{content}, "3\n", 'counted');

# reset mid-body, then Range
my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => ($s->{flaky} =~ /:(\d+)$/)[0]);
print $sock "GET /reset/r1?size=200000&at=50000 HTTP/1.1\r\nHost: x\r\n\r\n";
my $got = '';
while (1) {
    my $n = sysread($sock, my $buf, 65536);
    last unless $n;
    $got .= $buf;
}
my ($head, $body) = split /\r\n\r\n/, $got, 2;
like($head, qr/Content-Length: 200000/, 'reset: announces the full size');
# the reset comes after 50000 bytes; it drops what this client had not read
# yet (under load, some), so the rest is asked from what arrived
my $have = length $body;
ok($have > 0 && $have <= 50000, 'but sends only part of it')
    or diag("received $have bytes");
$r = request('GET', "$s->{flaky}/reset/r1?size=200000",
             { Range => "bytes=$have-" });
is($r->{status}, 206, 'then resumes with Range');
is($body . $r->{content}, flaky_bytes('r1', 200000), 'to the right bytes');

# S3: signatures are checked (unsigned requests are let through by this
# server, so each signing test must also prove a refusal)
$r = request('PUT', "$s->{s3_endpoint}/async-dl/stack/bad",
             { Authorization => 'AWS4-HMAC-SHA256 Credential=S3RVER/20260101/'
                 . 'us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, '
                 . 'Signature=' . ('0' x 64),
               'x-amz-date' => '20260101T000000Z',
               'x-amz-content-sha256' => 'UNSIGNED-PAYLOAD' }, 'x');
is($r->{status}, 403, 'S3 refuses a wrong signature');
ok(!defined s3_object('stack/bad'), 'and stores nothing');

done_testing();
