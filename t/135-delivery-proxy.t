# async_dl_delivery proxy: GET {p}{id} and {p}{id}/files/{n} stream the
# stored object through nginx (a named location proxying the presigned
# link on the internal endpoint), with the real worker storing the files
# in the SigV4-checking S3 server: exact bytes and headers, HEAD, Range,
# a resume with If-Range, a stale If-Range, the zip of a multi-file job,
# owner scoping, the storage's failures as JSON, and nginx's memory staying
# flat while a large file goes through.  The redirect mode stays as it was.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use AsyncDL::Transfer qw(child_pids watch_download);
use IO::Socket::INET;

my $s = adl();
my $o = $s->{origin};
my %alice = ('X-User' => 'alice');

# a job of $files, initiated and waited for until the worker stored it
sub stored {
    my ($files) = @_;
    my $r = initiate({ files => $files }, \%alice);
    is($r->{status}, 202, 'job accepted') or diag($r->{content});
    my $id = $r->{json}{jobId};
    my $j = wait_job($id, qr/^(completed|failed)$/, 60, \%alice);
    is($j->{status}, 'completed', "$id completed");
    return $id;
}

# the stored object of job $id (its one file)
sub object_key { my ($id) = @_; return (grep { m{\Q$id\E/} } s3_keys())[0] }

# hostile ranges: whatever the storage makes of them, nginx stays up
sub hostile_ranges {
    my ($id, $sha) = @_;
    for my $h ({ Range => 'bytes=abc' }, { Range => 'bytes=5-1' },
               { Range => 'bytes=0-1,5-6' }, { Range => 'bytes=' . ('9' x 4000) },
               { Range => 'bytes=0-1', 'If-Range' => '"' . ('x' x 6000) . '"' },
               { Range => "bytes=0-1", 'If-Range' => "W/\"$sha\"" }) {
        my $what = join ' ', map { "$_: " . substr($h->{$_}, 0, 20) } sort keys %$h;
        my $r = request('GET', "/v1/download/$id", { %alice, %$h });
        ok($r->{status} =~ /^(200|206|416|502)$/, "$what: $r->{status}")
            or diag(substr($r->{content}, 0, 300));
        ok($r->{status} < 400 || $r->{json}{error}{code}, '  JSON when an error');
        ok($r->{status} != 206 || !$h->{'If-Range'}, '  a weak If-Range never ranges');
    }
}

# reads the headers and half the body of job $id's download, then drops
# the connection; returns the half
sub cut_download {
    my ($id, $sha) = @_;
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                     PeerPort => $s->{port}) or die $!;
    print $sock "GET /v1/download/$id HTTP/1.1\r\nHost: x\r\n"
                . "X-User: alice\r\nConnection: close\r\n\r\n";
    my $buf = '';
    while ($buf !~ /\r\n\r\n/) {
        sysread($sock, $buf, 65536, length $buf) or last;
    }
    my ($head, $body) = split /\r\n\r\n/, $buf, 2;
    my ($etag) = $head =~ /^ETag: (.*?)\r?$/mi;
    is($etag, "\"$sha\"", 'the cut download had the ETag');
    while (length $body < 150_000) {
        sysread($sock, $body, 65536, length $body) or last;
    }
    close $sock;
    return substr($body, 0, 150_000);
}

# a 200 MiB file through nginx: the right bytes, the workers' memory flat
sub large_download {
    my $size = 200 * 1024 * 1024;
    my $big = sparse_file('big.bin', $size);
    # not all zeros: a few marks along it
    open my $fh, '+<:raw', $big or die $!;
    for my $at (0, $size / 2, $size - 8) { seek $fh, $at, 0; print $fh 'MARK' . pack('N', $at) }
    close $fh;
    my $bsha = file_sha256($big);
    my $bid = stored([{ url => "$o/f/big.bin", name => 'big.bin' }]);

    my @workers = child_pids($s->{nginx_pid});
    ok(@workers, 'the nginx worker processes found');
    my $out = "$s->{dir}/big.out";
    my $t = watch_download("http://127.0.0.1:$s->{port}/v1/download/$bid",
                           \@workers, headers => ['X-User: alice'],
                           out => $out, rate => '200m');
    is($t->{status}, 0, 'curl fetched it');
    is(-s $out, $size, 'all 200 MiB');
    is(file_sha256($out), $bsha, 'the right SHA-256');
    my $growth = ($t->{rss_peak} - $t->{rss_before}) / 1024;
    cmp_ok($growth, '<', 64,
           sprintf('nginx workers grew by %.1f MiB (< 64)', $growth));
    diag(sprintf('RSS of the nginx workers: %d KiB before, %d KiB at most; '
                 . '%.0f MiB/s', $t->{rss_before}, $t->{rss_peak},
                 $size / 1048576 / $t->{seconds}));
    unlink $out;
}

our $bytes = do {
    my $path = origin_file('report.bin', 300_000);
    local $/;
    open my $fh, '<:raw', $path or die "$path: $!";
    <$fh>;
};
our $sha = sha256_hex($bytes);
origin_file('slow.bin', 200_000);
origin_file('a.txt', 0, "first\n");
origin_file('b.txt', 0, "second\n");
s3_proxy();
start_worker(ASYNC_DL_PART_SIZE => '8m');

# the configuration of the README's "Delivery through nginx"
run_tests(config => <<'EOF', more_headers => 'X-User: alice');
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_delivery proxy @async_dl_storage;
}
location @async_dl_storage {
    proxy_pass $async_dl_storage_url;
    proxy_pass_request_headers off;
    proxy_pass_request_body off;
    proxy_set_header Range $async_dl_storage_range;
    proxy_max_temp_file_size 0;
    add_header Cache-Control "private, no-cache";
    proxy_connect_timeout 2s;
    proxy_read_timeout 2s;
}
location = /metrics {
    async_dl_metrics;
}
EOF

__DATA__

=== TEST 1: a single file stored, then stored again with metadata the storage sends back as x-amz-meta-*
--- setup
$::id = main::stored([{ url => adl()->{origin} . '/f/report.bin', name => 'Report 2024.bin' }]);
$::key = main::object_key($::id);
--- request
PUT $ADL_S3_ENDPOINT/$ADL_S3_BUCKET/$::key
$::bytes
--- more_headers
Content-Type: application/octet-stream
x-amz-meta-origin: internal
--- error_code: 200

=== TEST 2: which the storage itself sends back
--- request
GET $ADL_S3_ENDPOINT/$ADL_S3_BUCKET/$::key
--- more_headers
--- response_headers
x-amz-meta-origin: internal

=== TEST 3: proxy: GET answers 200, no redirect: the exact bytes, the origin's Content-Type, the name, the SHA-256 as ETag, no x-amz-* header
--- request
GET /v1/download/$::id
--- error_code: 200
--- response_headers
Content-Length: 300000
Content-Type: application/octet-stream
ETag: "$::sha"
Accept-Ranges: bytes
!Location
Cache-Control: private, no-cache
--- response_headers_like
Content-Disposition: ^attachment; filename="Report 2024.bin"; filename\*=UTF-8''Report%202024.bin$
--- check
ok($res->{content} eq $::bytes, 'the exact bytes') or diag(length $res->{content});
ok(!(grep { /^x-amz-/i } keys %{ $res->{headers} }), 'no x-amz-* header')
    or diag(explain($res->{headers}));

=== TEST 4: files/0: the same bytes
--- request
GET /v1/download/$::id/files/0
--- check
ok($res->{status} == 200 && $res->{content} eq $::bytes, 'files/0: the same bytes');

=== TEST 4a: the two downloads delivered through nginx are in the metrics (their module context is gone by the log phase)
--- request
GET /metrics
--- check
my ($ok, $v) = AsyncDL::Client::prometheus_samples($res->{content});
ok($ok, 'the metrics parse');
cmp_ok($v->{'async_dl_requests_total{code=2xx,route=delivery}'} // 0, '>=', 2,
       'delivered: 2xx counted under route "delivery"');

=== TEST 5: HEAD: 200 (a link signed for HEAD), the headers, no body
--- request
HEAD /v1/download/$::id
--- error_code: 200
--- response_headers
Content-Length: 300000
ETag: "$::sha"
--- response_headers_like
Content-Disposition: Report 2024\.bin
--- response_body:

=== TEST 6: Range: 206, exactly those bytes, the same ETag
--- request
GET /v1/download/$::id
--- more_headers
X-User: alice
Range: bytes=1000-1999
--- error_code: 206
--- response_headers
Content-Range: bytes 1000-1999/300000
Content-Length: 1000
ETag: "$::sha"
--- check
ok($res->{content} eq substr($::bytes, 1000, 1000), 'exactly those bytes');

=== TEST 7: a range past the end: 416 as JSON
--- request
GET /v1/download/$::id
--- more_headers
X-User: alice
Range: bytes=400000-
--- error_code: 416
--- response_json
{ error => { code => 'RANGE_NOT_SATISFIABLE' } }

=== TEST 8: If-Range with the ETag: 206, the range
--- request
GET /v1/download/$::id
--- more_headers
X-User: alice
Range: bytes=100-199
If-Range: "$::sha"
--- error_code: 206
--- check
ok($res->{content} eq substr($::bytes, 100, 100), 'the range');

=== TEST 9: If-Range with another ETag: the whole file, 200, no Content-Range
--- request
GET /v1/download/$::id
--- more_headers
X-User: alice
Range: bytes=100-199
If-Range: "stale"
--- error_code: 200
--- response_headers
!Content-Range
--- check
ok($res->{content} eq $::bytes, 'all of it');

=== TEST 10: If-Range with a date: the whole file
--- request
GET /v1/download/$::id
--- more_headers
X-User: alice
Range: bytes=100-199
If-Range: Thu, 01 Jan 2015 00:00:00 GMT
--- error_code: 200

=== TEST 11: hostile ranges: whatever the storage makes of them, nginx stays up
--- check
main::hostile_ranges($::id, $::sha);

=== TEST 12: then a download as usual
--- request
GET /v1/download/$::id
--- check
is($res->{content}, $::bytes, 'then a download as usual');

=== TEST 13: conditional requests, answered by nginx against the ETag: If-None-Match with it, 304 without a body
--- request
GET /v1/download/$::id
--- more_headers
X-User: alice
If-None-Match: "$::sha"
--- error_code: 304
--- response_body:

=== TEST 14: If-None-Match with another: 200
--- request
GET /v1/download/$::id
--- more_headers
X-User: alice
If-None-Match: "other"
--- error_code: 200

=== TEST 15: If-Match with another: 412 as JSON
--- request
GET /v1/download/$::id
--- more_headers
X-User: alice
If-Match: "other"
--- error_code: 412
--- response_json
{ error => { code => 'PRECONDITION_FAILED' } }

=== TEST 16: a download cut at 50%, resumed with Range and If-Range from the cut
--- setup
$::half = main::cut_download($::id, $::sha);
--- request
GET /v1/download/$::id
--- more_headers
X-User: alice
Range: bytes=150000-
If-Range: "$::sha"
--- error_code: 206
--- response_headers
Content-Range: bytes 150000-299999/300000
--- check
is(sha256_hex($::half . $res->{content}), $::sha, 'the whole file: its SHA-256');

=== TEST 17: another owner's job: 404 JOB_NOT_FOUND
--- request
GET /v1/download/$::id
--- more_headers
X-User: bob
--- error_code: 404
--- response_json
{ error => { code => 'JOB_NOT_FOUND' } }

=== TEST 18: no such file: 404 FILE_NOT_FOUND
--- request
GET /v1/download/$::id/files/1
--- response_json
{ error => { code => 'FILE_NOT_FOUND' } }

=== TEST 19: a job still downloading
--- request
POST /v1/download/initiate
{"files":[{"url":"$ADL_ORIGIN/slow/slow.bin?rate=20k"}]}
--- more_headers
X-User: alice
Content-Type: application/json
--- capture
slow: json.jobId

=== TEST 20: not stored yet: 409 NOT_READY, Retry-After
--- request
GET /v1/download/$::slow
--- error_code: 409
--- response_json
{ error => { code => 'NOT_READY' } }
--- response_headers
Retry-After: 2

=== TEST 21: a multi-file job: the zip is built
--- setup
$::multi = main::stored([{ url => adl()->{origin} . '/f/a.txt' },
                         { url => adl()->{origin} . '/f/b.txt' }]);
wait_bundle($::multi, 60, { 'X-User' => 'alice' });
--- request
GET /v1/download/status/$::multi
--- response_json
{ bundle => { status => 'completed' } }
--- capture
bundle_size: json.bundle.size
bundle_sha256: json.bundle.sha256

=== TEST 22: the zip through nginx: 200, its size, its SHA-256 as ETag, named <job>.zip, a zip
--- request
GET /v1/download/$::multi
--- error_code: 200
--- response_headers
ETag: "$::bundle_sha256"
Content-Type: application/zip
--- response_headers_like
Content-Disposition: filename="$::multi\.zip"
--- check
is(length $res->{content}, $::bundle_size, 'its size');
is(sha256_hex($res->{content}), $::bundle_sha256, 'its SHA-256');
is(substr($res->{content}, 0, 4), "PK\x03\x04", 'a zip');

=== TEST 23: a file of it, through nginx
--- request
GET /v1/download/$::multi/files/1
--- response_body
second

=== TEST 24: the storage lost the object the database says is there: 502 STORAGE_ERROR saying what the storage said
--- setup
$::gone = main::stored([{ url => adl()->{origin} . '/f/a.txt' }]);
unlink adl()->{dir} . '/s3/' . adl()->{s3_bucket} . '/' . main::object_key($::gone)
       . '._S3rver_object';
--- request
GET /v1/download/$::gone
--- error_code: 502
--- response_json
{ error => { code => 'STORAGE_ERROR', message => qr/404/ } }
--- check
ok(!(grep { /^x-amz-/i } keys %{ $res->{headers} }), 'no x-amz-* header');

=== TEST 25: the next download is served
--- request
GET /v1/download/$::id
--- error_code: 200

=== TEST 26: the storage unreachable: 502 STORAGE_UNAVAILABLE as JSON
--- s3_endpoint: http://127.0.0.1:1
--- request
GET /v1/download/$::id
--- error_code: 502
--- response_json
{ error => { code => 'STORAGE_UNAVAILABLE' } }
--- response_headers_like
Content-Type: application/json

=== TEST 27: through the S3 fault proxy: the bytes
--- s3_endpoint: $ADL_S3_PROXY
--- request
GET /v1/download/$::id
--- check
is($res->{content}, $::bytes, 'through the fault proxy: the bytes');

=== TEST 28: the storage late (proxy_read_timeout): 504 STORAGE_TIMEOUT
--- s3_endpoint: $ADL_S3_PROXY
--- setup
s3_fault('delay', delay => 4);
--- request
GET /v1/download/$::id
--- error_code: 504
--- response_json
{ error => { code => 'STORAGE_TIMEOUT' } }

=== TEST 29: the storage cut mid-answer: no whole answer
--- s3_endpoint: $ADL_S3_PROXY
--- setup
s3_fault('reset');
--- request
GET /v1/download/$::id
--- check
ok(!($res->{status} == 200 && $res->{content} eq $::bytes),
   "the storage cut mid-answer: no whole answer ($res->{status})");

=== TEST 30: then the bytes again
--- s3_endpoint: $ADL_S3_PROXY
--- setup
s3_fault('pass');
sleep 0.2;
--- request
GET /v1/download/$::id
--- check
is($res->{content}, $::bytes, 'then the bytes again');

=== TEST 31: a large file: nginx's memory stays flat
--- check
main::large_download();

=== TEST 32: redirect mode, the default, as it was: 302 to the storage
--- config
location /v1/download/ { async_dl; async_dl_owner $http_x_user; }
--- request
GET /v1/download/$::id
--- error_code: 302
--- capture
link: header.location
--- check
like($res->{headers}{location}, qr{^\Q${\ adl()->{s3_endpoint}}/\E}, 'to the storage');

=== TEST 33: whose link serves the object
--- config
location /v1/download/ { async_dl; async_dl_owner $http_x_user; }
--- request
GET $::link
--- more_headers
--- check
is($res->{content}, $::bytes, 'whose link serves the object');

=== TEST 34: async_dl_delivery redirect: 302
--- config
location /v1/download/ { async_dl; async_dl_owner $http_x_user; async_dl_delivery redirect; }
--- request
GET /v1/download/$::id
--- error_code: 302

=== TEST 35: nothing alarming logged
--- check
unlike(nginx_log(), qr/\[(alert|crit|emerg)\]|AddressSanitizer|runtime error/,
       'nothing alarming logged');

=== TEST 36: configuration errors: a missing named location
--- config
location /v1/download/ { async_dl; async_dl_delivery proxy @nowhere; }
--- must_die
--- error_log
no location "@nowhere"

=== TEST 37: proxy needs a location
--- config
location /v1/download/ { async_dl; async_dl_delivery proxy; }
--- must_die
--- error_log
must be "redirect" or "proxy @location"

=== TEST 38: an unknown mode
--- config
location /v1/download/ { async_dl; async_dl_delivery stream @x; }
--- must_die
--- error_log
must be "redirect"
