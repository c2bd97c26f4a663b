# Zip bundles of multi-file jobs: built by the real worker from the stored
# objects, unpacked (python3's zipfile) and compared with the origin's
# bytes; a failed file left out; hostile and duplicate names made safe and
# unique; ZIP64 headers (forced on a small case); {p}{id} redirects to the
# bundle, 409 NOT_READY + Retry-After before.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use File::Temp qw(tempdir);

my $s = adl();
my $o = $s->{origin};
my $PY = -x '/usr/bin/python3' ? '/usr/bin/python3' : 'python3';

start_nginx(<<'EOF');
location /v1/download/ {
    async_dl;
    async_dl_urls on;
}
EOF
start_worker(ASYNC_DL_PART_SIZE => '5m');

# The zip behind {p}{id}: fetched through the presigned redirect.
sub fetch_bundle {
    my ($id) = @_;
    my $r = request('GET', "/v1/download/$id");
    is($r->{status}, 302, "$id: {p}{id} redirects") or diag($r->{content});
    like($r->{headers}{location} // '', qr/response-content-disposition=/,
         'with a content disposition');
    like($r->{headers}{location} // '', qr/\Q$id\E\.zip/, 'named <job>.zip');
    my $z = request('GET', $r->{headers}{location});
    is($z->{status}, 200, 'the presigned link serves the zip');
    return $z->{content};
}

# { name => sha256 } of the zip's entries, and what python says of them
sub unzip_digests {
    my ($zip) = @_;
    my $dir = tempdir(CLEANUP => 1);
    open my $fh, '>:raw', "$dir/b.zip" or die $!;
    print $fh $zip;
    close $fh;
    my $out = `$PY - "$dir/b.zip" <<'PY'
import hashlib, json, struct, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
bad = z.testzip()
res = {"bad": bad, "entries": []}
raw = open(sys.argv[1], "rb").read()
for i in z.infolist():
    off = i.header_offset
    sig, ver, flags, meth, _, _, crc, csize, usize, nlen, xlen = \\
        struct.unpack("<IHHHHHIIIHH", raw[off:off + 30])
    extra = raw[off + 30 + nlen:off + 30 + nlen + xlen]
    ids, p = [], 0
    while p + 4 <= len(extra):
        hid, hlen = struct.unpack("<HH", extra[p:p + 4])
        ids.append(hid)
        p += 4 + hlen
    res["entries"].append({
        "name": i.filename, "sha256": hashlib.sha256(z.read(i)).hexdigest(),
        "method": meth, "version": ver, "utf8": bool(flags & 0x800),
        "local_sizes": [csize, usize], "zip64_extra": 1 in ids,
        "size": i.file_size})
print(json.dumps(res))
PY`;
    return decode_json($out);
}

sub bundle_ready {
    my ($id) = @_;
    my $j;
    wait_until(sub {
        $j = request('GET', "/v1/download/status/$id")->{json};
        return $j && $j->{bundle} && $j->{bundle}{status} =~ /^(completed|failed)$/;
    }, 60, "bundle of $id");
    return $j;
}

# --- three files: the zip holds the origin's bytes ------------------------

my %src = (
    'one.bin'   => origin_file('one.bin', 300_000),
    'two.bin'   => origin_file('two.bin', 6 * 1024 * 1024 + 17),  # > a part
    'three.txt' => origin_file('three.txt', 0, "three\n"),
);
origin_file('slow.bin', 40_000);

my $r = initiate({ files => [map { { url => "$o/f/$_" } } sort keys %src] });
is($r->{status}, 202, 'three-file job accepted');
my $id = $r->{json}{jobId};

# before the bundle exists: 409 NOT_READY with Retry-After
my $slow = initiate({ files => [{ url => "$o/f/one.bin" },
                                { url => "$o/slow/slow.bin?rate=20k" }] })
           ->{json}{jobId};
$r = request('GET', "/v1/download/$slow");
is($r->{status}, 409, 'unfinished multi-file job: 409');
is($r->{json}{error}{code}, 'NOT_READY', 'NOT_READY');
ok($r->{headers}{'retry-after'}, 'with Retry-After');

my $j = bundle_ready($id);
is($j->{status}, 'completed', 'job completed');
is($j->{bundle}{status}, 'completed', 'bundle completed');
is($j->{bundle}{files}, 3, 'bundle of 3 files');
is($j->{downloadUrl}, "/v1/download/$id", 'downloadUrl is the bundle');
is($j->{bundle}{downloadUrl}, "/v1/download/$id", 'bundle.downloadUrl too');
like($j->{bundle}{sha256}, qr/^[0-9a-f]{64}$/, 'bundle SHA-256 shown');

my $zip = fetch_bundle($id);
is(length $zip, $j->{bundle}{size}, 'bundle size as shown');
is(sha256_hex($zip), $j->{bundle}{sha256}, 'bundle SHA-256 as shown');
my $u = unzip_digests($zip);
ok(!defined $u->{bad}, 'every CRC checks');
is_deeply({ map { $_->{name} => $_->{sha256} } @{ $u->{entries} } },
          { map { $_ => file_sha256($src{$_}) } keys %src },
          'unpacked: the origin\'s bytes under the files\' names');
is_deeply([map { $_->{method} } @{ $u->{entries} }], [0, 0, 0],
          'entries are stored (no compression)');
ok(!(grep { $_->{zip64_extra} } @{ $u->{entries} }), 'no ZIP64 when small');
is(scalar(grep { m{^\Q$id\E/} } s3_keys()), 4, 'three objects + the bundle');

$j = bundle_ready($slow);
is($j->{bundle}{status}, 'completed', 'the slow job gets its bundle too');

# --- a failed file is left out ------------------------------------------

$r = initiate({ files => [{ url => "$o/f/one.bin" },
                          { url => "$o/status/404" },
                          { url => "$o/f/three.txt" }] });
my $partial = $r->{json}{jobId} or diag($r->{status}, $r->{content});
$j = bundle_ready($partial);
is($j->{status}, 'completed', 'one failed file among three: completed');
is($j->{failedFiles}, 1, 'with one failed file');
is($j->{bundle}{files}, 2, 'bundle of the 2 stored files');
$u = unzip_digests(fetch_bundle($partial));
is_deeply([sort map { $_->{name} } @{ $u->{entries} }],
          ['one.bin', 'three.txt'], 'the zip holds the two');

# --- hostile and duplicate names ----------------------------------------

$r = initiate(JSON::PP->new->utf8->canonical->encode({ files => [
    { url => "$o/f/one.bin", name => '../../etc/passwd' },
    { url => "$o/f/three.txt", name => "a\x01b\x7f.txt" },
    { url => "$o/f/one.bin", name => 'same.txt' },
    { url => "$o/f/three.txt", name => 'SAME.txt' },
    { url => "$o/f/three.txt", name => '..' },
    { url => "$o/f/three.txt", name => "r\x{e9}sum\x{e9}.pdf" },
] }));
is($r->{status}, 202, 'hostile names accepted') or diag($r->{content});
my $hostile = $r->{json}{jobId};
$j = bundle_ready($hostile);
is($j->{bundle}{status}, 'completed', 'bundle built');
$u = unzip_digests(fetch_bundle($hostile));
is_deeply([map { $_->{name} } @{ $u->{entries} }],
          ['passwd', 'a_b_.txt', 'same.txt', 'SAME (1).txt', 'file',
           "r\x{e9}sum\x{e9}.pdf"],
          'no paths, no control characters, no "..", unique ignoring case');
ok($u->{entries}[5]{utf8}, 'UTF-8 names are flagged as UTF-8');

# --- a single-file job: no bundle, {p}{id} is the file -----------------

$r = initiate({ files => [{ url => "$o/f/three.txt" }] });
my $single = $r->{json}{jobId};
$j = wait_job($single, qr/^completed$/);
ok(!defined $j->{bundle}, 'single-file job: no bundle');
$r = request('GET', "/v1/download/$single");
is($r->{status}, 302, 'redirects');
is(request('GET', $r->{headers}{location})->{content}, "three\n",
   'to the file itself');

# --- ZIP64, forced on a small case -------------------------------------

stop_worker('TERM');
start_worker(ASYNC_DL_PART_SIZE => '5m', ASYNC_DL_BUNDLE_ZIP64 => 'on');
$r = initiate({ files => [{ url => "$o/f/one.bin" },
                          { url => "$o/f/three.txt" }] });
my $z64 = $r->{json}{jobId};
$j = bundle_ready($z64);
is($j->{bundle}{status}, 'completed', 'ZIP64 bundle built');
$u = unzip_digests(fetch_bundle($z64));
ok(!defined $u->{bad}, 'ZIP64 bundle: every CRC checks');
for my $e (@{ $u->{entries} }) {
    ok($e->{zip64_extra}, "$e->{name}: local header has the ZIP64 extra field");
    is_deeply($e->{local_sizes}, [0xffffffff, 0xffffffff],
              "$e->{name}: 32-bit sizes say 'see ZIP64'");
    is($e->{version}, 45, "$e->{name}: version needed 4.5");
}
is($u->{entries}[0]{sha256}, file_sha256($src{'one.bin'}),
   'ZIP64 entries unpack to the origin\'s bytes');

my $log = worker_log();
like($log, qr/bundle stored/, 'the worker logs stored bundles');
unlike($log, qr/\[error\]/, 'and no error');

done_testing();
