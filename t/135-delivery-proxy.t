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
use Time::HiRes qw(sleep time);

my $s = adl();
my $o = $s->{origin};

# the configuration of README.md's "Delivery through nginx"
sub config {
    my (%o) = @_;
    my $delivery = $o{delivery} // 'async_dl_delivery proxy @async_dl_storage;';
    return <<"EOF";
location /v1/download/ {
    async_dl;
    async_dl_owner \$http_x_user;
    $delivery
}
location \@async_dl_storage {
    proxy_pass \$async_dl_storage_url;
    proxy_pass_request_headers off;
    proxy_pass_request_body off;
    proxy_set_header Range \$async_dl_storage_range;
    proxy_max_temp_file_size 0;
    add_header Cache-Control "private, no-cache";
    proxy_connect_timeout 2s;
    proxy_read_timeout 2s;
}
EOF
}

my %alice = ('X-User' => 'alice');

start_nginx(config());
start_worker(ASYNC_DL_PART_SIZE => '8m');

sub stored {
    my ($files) = @_;
    my $r = initiate({ files => $files }, \%alice);
    is($r->{status}, 202, 'job accepted') or diag($r->{content});
    my $id = $r->{json}{jobId};
    my $j = wait_job($id, qr/^(completed|failed)$/, 60, \%alice);
    is($j->{status}, 'completed', "$id completed");
    return ($id, $j);
}

# --- a single file: bytes and headers ---------------------------------------

my $path = origin_file('report.bin', 300_000);
my $bytes = do { local $/; open my $fh, '<:raw', $path or die; <$fh> };
my $sha = sha256_hex($bytes);
my ($id, $j) = stored([{ url => "$o/f/report.bin", name => 'Report 2024.bin' }]);

# the same bytes again, with metadata the storage sends back as x-amz-meta-*
my ($key) = grep { m{\Q$id\E/} } s3_keys();
my $put = request('PUT', "$s->{s3_endpoint}/$s->{s3_bucket}/$key",
                  { 'Content-Type' => 'application/octet-stream',
                    'x-amz-meta-origin' => 'internal' }, $bytes);
is($put->{status}, 200, 'the object stored again with metadata');
is(request('GET', "$s->{s3_endpoint}/$s->{s3_bucket}/$key")
       ->{headers}{'x-amz-meta-origin'}, 'internal',
   'which the storage itself sends back');

my $r = request('GET', "/v1/download/$id", \%alice);
is($r->{status}, 200, 'proxy: GET answers 200, no redirect');
ok($r->{content} eq $bytes, 'the exact bytes') or diag(length $r->{content});
is($r->{headers}{'content-length'}, 300_000, 'Content-Length');
is($r->{headers}{'content-type'}, 'application/octet-stream',
   "Content-Type: the origin's, as stored");
like($r->{headers}{'content-disposition'} // '',
     qr/^attachment; filename="Report 2024.bin"; filename\*=UTF-8''Report%202024.bin$/,
     'Content-Disposition with the name');
is($r->{headers}{etag}, "\"$sha\"", 'ETag: the SHA-256 of the bytes');
is($r->{headers}{'accept-ranges'}, 'bytes', 'Accept-Ranges');
ok(!(grep { /^x-amz-/i } keys %{ $r->{headers} }), 'no x-amz-* header')
    or diag(explain($r->{headers}));
ok(!exists $r->{headers}{location}, 'no Location');
is($r->{headers}{'cache-control'}, 'private, no-cache', 'Cache-Control');

$r = request('GET', "/v1/download/$id/files/0", \%alice);
ok($r->{status} == 200 && $r->{content} eq $bytes, 'files/0: the same bytes');

# --- HEAD ---------------------------------------------------------------------

$r = request('HEAD', "/v1/download/$id", \%alice);
is($r->{status}, 200, 'HEAD: 200 (a link signed for HEAD)');
is($r->{headers}{'content-length'}, 300_000, 'HEAD: Content-Length');
is($r->{headers}{etag}, "\"$sha\"", 'HEAD: ETag');
like($r->{headers}{'content-disposition'} // '', qr/Report 2024\.bin/,
     'HEAD: Content-Disposition');
is($r->{content}, '', 'HEAD: no body');

# --- Range --------------------------------------------------------------------

$r = request('GET', "/v1/download/$id", { %alice, Range => 'bytes=1000-1999' });
is($r->{status}, 206, 'Range: 206');
ok($r->{content} eq substr($bytes, 1000, 1000), 'exactly those bytes');
is($r->{headers}{'content-range'}, 'bytes 1000-1999/300000', 'Content-Range');
is($r->{headers}{'content-length'}, 1000, 'Content-Length of the range');
is($r->{headers}{etag}, "\"$sha\"", 'the same ETag');

# (no suffix range "bytes=-N": s3rver reads it as 0-N, where S3 does not)

$r = request('GET', "/v1/download/$id", { %alice, Range => 'bytes=400000-' });
is($r->{status}, 416, 'a range past the end: 416');
is($r->{json}{error}{code}, 'RANGE_NOT_SATISFIABLE', 'as JSON');

# --- If-Range -----------------------------------------------------------------

$r = request('GET', "/v1/download/$id",
             { %alice, Range => 'bytes=100-199', 'If-Range' => "\"$sha\"" });
is($r->{status}, 206, 'If-Range with the ETag: 206');
ok($r->{content} eq substr($bytes, 100, 100), 'the range');

$r = request('GET', "/v1/download/$id",
             { %alice, Range => 'bytes=100-199', 'If-Range' => '"stale"' });
is($r->{status}, 200, 'If-Range with another ETag: the whole file, 200');
ok($r->{content} eq $bytes, 'all of it');
ok(!exists $r->{headers}{'content-range'}, 'no Content-Range');

$r = request('GET', "/v1/download/$id",
             { %alice, Range => 'bytes=100-199',
               'If-Range' => 'Thu, 01 Jan 2015 00:00:00 GMT' });
is($r->{status}, 200, 'If-Range with a date: the whole file');

# --- hostile ranges: whatever the storage makes of them, nginx stays up -----

for my $h ({ Range => 'bytes=abc' }, { Range => 'bytes=5-1' },
           { Range => 'bytes=0-1,5-6' }, { Range => 'bytes=' . ('9' x 4000) },
           { Range => 'bytes=0-1', 'If-Range' => '"' . ('x' x 6000) . '"' },
           { Range => "bytes=0-1", 'If-Range' => "W/\"$sha\"" }) {
    my $what = join ' ', map { "$_: " . substr($h->{$_}, 0, 20) } sort keys %$h;
    $r = request('GET', "/v1/download/$id", { %alice, %$h });
    ok($r->{status} =~ /^(200|206|416|502)$/, "$what: $r->{status}")
        or diag(substr($r->{content}, 0, 300));
    ok($r->{status} < 400 || $r->{json}{error}{code}, '  JSON when an error');
    ok($r->{status} != 206 || !$h->{'If-Range'}, '  a weak If-Range never ranges');
}
is(request('GET', "/v1/download/$id", \%alice)->{content}, $bytes,
   'then a download as usual');

# --- conditional requests, answered by nginx against the ETag ----------------

$r = request('GET', "/v1/download/$id", { %alice, 'If-None-Match' => "\"$sha\"" });
is($r->{status}, 304, 'If-None-Match with the ETag: 304');
is($r->{content}, '', 'no body');
$r = request('GET', "/v1/download/$id", { %alice, 'If-None-Match' => '"other"' });
is($r->{status}, 200, 'If-None-Match with another: 200');
$r = request('GET', "/v1/download/$id", { %alice, 'If-Match' => '"other"' });
is($r->{status}, 412, 'If-Match with another: 412');
is($r->{json}{error}{code}, 'PRECONDITION_FAILED', 'as JSON');

# --- a download cut at 50%, resumed with Range and If-Range ------------------

{
    my $half;
    {
        # read the headers and half the body, then drop the connection
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
        $half = substr($body, 0, 150_000);
        close $sock;
    }
    $r = request('GET', "/v1/download/$id",
                 { %alice, Range => 'bytes=150000-', 'If-Range' => "\"$sha\"" });
    is($r->{status}, 206, 'resumed: 206');
    is($r->{headers}{'content-range'}, 'bytes 150000-299999/300000',
       'from the cut');
    is(sha256_hex($half . $r->{content}), $sha, 'the whole file: its SHA-256');
}

# --- owner scoping, not ready ------------------------------------------------

$r = request('GET', "/v1/download/$id", { 'X-User' => 'bob' });
is($r->{status}, 404, "another owner's job: 404");
is($r->{json}{error}{code}, 'JOB_NOT_FOUND', 'JOB_NOT_FOUND');
$r = request('GET', "/v1/download/$id/files/1", \%alice);
is($r->{json}{error}{code}, 'FILE_NOT_FOUND', 'no such file: 404 FILE_NOT_FOUND');

origin_file('slow.bin', 200_000);
my $slow = initiate({ files => [{ url => "$o/slow/slow.bin?rate=20k" }] }, \%alice)
           ->{json}{jobId};
$r = request('GET', "/v1/download/$slow", \%alice);
is($r->{status}, 409, 'not stored yet: 409');
is($r->{json}{error}{code}, 'NOT_READY', 'NOT_READY');
is($r->{headers}{'retry-after'}, 2, 'Retry-After');

# --- a multi-file job: the zip ------------------------------------------------

origin_file('a.txt', 0, "first\n");
origin_file('b.txt', 0, "second\n");
my ($multi) = stored([{ url => "$o/f/a.txt" }, { url => "$o/f/b.txt" }]);
my $mj;
wait_until(sub {
    $mj = request('GET', "/v1/download/status/$multi", \%alice)->{json};
    ($mj->{bundle}{status} // '') =~ /^(completed|failed)$/;
}, 60, 'the bundle');
is($mj->{bundle}{status}, 'completed', 'the zip is built');
$r = request('GET', "/v1/download/$multi", \%alice);
is($r->{status}, 200, 'the zip through nginx: 200');
is(length $r->{content}, $mj->{bundle}{size}, 'its size');
is(sha256_hex($r->{content}), $mj->{bundle}{sha256}, 'its SHA-256');
is($r->{headers}{etag}, "\"$mj->{bundle}{sha256}\"", 'ETag: its SHA-256');
like($r->{headers}{'content-disposition'} // '', qr/filename="\Q$multi\E\.zip"/,
     'named <job>.zip');
is($r->{headers}{'content-type'}, 'application/zip', 'Content-Type');
is(substr($r->{content}, 0, 4), "PK\x03\x04", 'a zip');
$r = request('GET', "/v1/download/$multi/files/1", \%alice);
is($r->{content}, "second\n", 'a file of it, through nginx');

# --- the storage failing: JSON errors ----------------------------------------

{
    # an object the database says is there, gone from the bucket
    my ($gone) = stored([{ url => "$o/f/a.txt" }]);
    my ($key) = grep { m{\Q$gone\E/} } s3_keys();
    unlink "$s->{dir}/s3/$s->{s3_bucket}/$key._S3rver_object";
    $r = request('GET', "/v1/download/$gone", \%alice);
    is($r->{status}, 502, 'the storage lost the object: 502');
    is($r->{json}{error}{code}, 'STORAGE_ERROR', 'STORAGE_ERROR');
    like($r->{json}{error}{message}, qr/404/, 'saying what the storage said');
    ok(!(grep { /^x-amz-/i } keys %{ $r->{headers} }), 'no x-amz-* header');
    is(request('GET', "/v1/download/$id", \%alice)->{status}, 200,
       'the next download is served');

    # the storage unreachable
    start_nginx(config(), s3_endpoint => 'http://127.0.0.1:1');
    $r = request('GET', "/v1/download/$id", \%alice);
    is($r->{status}, 502, 'the storage unreachable: 502');
    is($r->{json}{error}{code}, 'STORAGE_UNAVAILABLE', 'STORAGE_UNAVAILABLE');
    like($r->{headers}{'content-type'}, qr{application/json}, 'JSON');

    # through the S3 fault proxy: late, then cut short
    s3_proxy();
    start_nginx(config(), s3_endpoint => '$ADL_S3_PROXY');
    is(request('GET', "/v1/download/$id", \%alice)->{content}, $bytes,
       'through the fault proxy: the bytes');
    s3_fault('delay', delay => 4);
    $r = request('GET', "/v1/download/$id", \%alice);
    is($r->{status}, 504, 'the storage late (proxy_read_timeout): 504');
    is($r->{json}{error}{code}, 'STORAGE_TIMEOUT', 'STORAGE_TIMEOUT');
    s3_fault('reset');
    $r = request('GET', "/v1/download/$id", \%alice);
    ok(!($r->{status} == 200 && $r->{content} eq $bytes),
       "the storage cut mid-answer: no whole answer ($r->{status})");
    s3_fault('pass');
    sleep 0.2;
    is(request('GET', "/v1/download/$id", \%alice)->{content}, $bytes,
       'then the bytes again');
    start_nginx(config());
}

# --- a large file: nginx's memory stays flat ---------------------------------

{
    my $size = 200 * 1024 * 1024;
    my $big = sparse_file('big.bin', $size);
    # not all zeros: a few marks along it
    open my $fh, '+<:raw', $big or die $!;
    for my $at (0, $size / 2, $size - 8) { seek $fh, $at, 0; print $fh 'MARK' . pack('N', $at) }
    close $fh;
    my $bsha = file_sha256($big);
    my ($bid) = stored([{ url => "$o/f/big.bin", name => 'big.bin' }]);

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

# --- redirect mode: the default, as it was -----------------------------------

start_nginx(config(delivery => ''));
$r = request('GET', "/v1/download/$id", \%alice);
is($r->{status}, 302, 'without async_dl_delivery: 302');
like($r->{headers}{location}, qr{^\Q$s->{s3_endpoint}/\E}, 'to the storage');
is(request('GET', $r->{headers}{location})->{content}, $bytes,
   'whose link serves the object');
start_nginx(config(delivery => 'async_dl_delivery redirect;'));
is(request('GET', "/v1/download/$id", \%alice)->{status}, 302,
   'async_dl_delivery redirect: 302');

unlike(nginx_log(), qr/\[(alert|crit|emerg)\]|AddressSanitizer|runtime error/,
       'nothing alarming logged');

# --- configuration errors -----------------------------------------------------

my $err = start_nginx(<<'EOF', expect_failure => 1);
location /v1/download/ { async_dl; async_dl_delivery proxy @nowhere; }
EOF
like($err // '', qr/no location "\@nowhere"/, 'a missing named location: nginx -t fails');
$err = start_nginx(<<'EOF', expect_failure => 1);
location /v1/download/ { async_dl; async_dl_delivery proxy; }
EOF
like($err // '', qr/must be "redirect" or "proxy \@location"/, 'proxy needs a location');
$err = start_nginx(<<'EOF', expect_failure => 1);
location /v1/download/ { async_dl; async_dl_delivery stream @x; }
EOF
like($err // '', qr/must be "redirect"/, 'an unknown mode');

done_testing();
