# GET {p}{id}/links: the presigned links of what a job stored, as JSON:
# every link fetches the right bytes from the SigV4-checking S3 server,
# expiresAt is when async_dl_presign_expires makes them stop working,
# only stored files (and the zip once built) are listed, another owner's
# job is 404, a job with nothing stored yet 409 NOT_READY.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use Time::Local qw(timegm);
use URI;

my $s = adl();
my $o = $s->{origin};
my %alice = ('X-User' => 'alice');

sub config {
    return <<'EOF2';
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
}
EOF2
}

start_nginx(config(), http_config => '    async_dl_presign_expires 10m;');
start_worker(ASYNC_DL_PART_SIZE => '5m');

sub iso_epoch {
    my ($iso) = @_;
    my ($y, $mo, $d, $h, $mi, $sec, $ms) =
        $iso =~ /^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\.(\d{3})Z$/
        or return undef;
    return timegm($sec, $mi, $h, $d, $mo - 1, $y) + $ms / 1000;
}

my %src = (
    'one.bin' => origin_file('one.bin', 100_000),
    'two.txt' => origin_file('two.txt', 0, "two\n"),
);
my $r = initiate({ files => [{ url => "$o/f/one.bin", name => 'First "one".bin' },
                             { url => "$o/f/two.txt" },
                             { url => "$o/status/404" }] }, \%alice);
my $id = $r->{json}{jobId};
my $j;
wait_until(sub {
    $j = request('GET', "/v1/download/status/$id", \%alice)->{json};
    ($j->{bundle}{status} // '') =~ /^(completed|failed)$/;
}, 60, 'the bundle');
is($j->{bundle}{status}, 'completed', 'two of three stored, zip built');

my $t0 = time;
$r = request('GET', "/v1/download/$id/links", \%alice);
is($r->{status}, 200, 'links: 200');
like($r->{headers}{'content-type'}, qr{^application/json}, 'JSON');
is($r->{headers}{'cache-control'}, 'no-store', 'not stored by caches');
my $l = $r->{json};
is($l->{jobId}, $id, 'jobId');
my $exp = iso_epoch($l->{expiresAt});
ok(defined $exp, "expiresAt is ISO UTC with ms: $l->{expiresAt}");
ok(abs($exp - ($t0 + 600)) <= 2, 'expiresAt: now + async_dl_presign_expires');
is(scalar @{ $l->{files} }, 2, 'the two stored files, not the failed one');
is_deeply([map { $_->{index} } @{ $l->{files} }], [0, 1], 'by index');
is($l->{files}[0]{name}, 'First "one".bin', 'a name as given');
is($l->{files}[1]{name}, 'two.txt', "a file without one: its URL's");
is($l->{files}[0]{size}, 100_000, 'size');
for my $f (@{ $l->{files} }) {
    my %q = URI->new($f->{url})->query_form;
    like($f->{url}, qr{^\Q$s->{s3_endpoint}/$s->{s3_bucket}/\E}, "file $f->{index}: on the public endpoint");
    is($q{'X-Amz-Expires'}, 600, 'X-Amz-Expires');
    my $g = request('GET', $f->{url});
    is($g->{status}, 200, "file $f->{index}: the S3 server accepts the link");
    is(sha256_hex($g->{content}),
       file_sha256($src{$f->{index} ? 'two.txt' : 'one.bin'}), 'the right bytes');
    like($g->{headers}{'content-disposition'} // '', qr/attachment; filename=/,
         'as an attachment');
    # X-Amz-Date + X-Amz-Expires is expiresAt
    my ($y, $mo, $d, $h, $mi, $sec) =
        $q{'X-Amz-Date'} =~ /^(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)Z$/;
    is(timegm($sec, $mi, $h, $d, $mo - 1, $y) + $q{'X-Amz-Expires'}, $exp,
       'signed to expire at expiresAt');
}
ok($l->{bundle}, 'the zip');
is($l->{bundle}{name}, "$id.zip", 'named <job>.zip');
is($l->{bundle}{size}, $j->{bundle}{size}, 'its size');
ok(!exists $l->{bundle}{index}, 'without an index');
my $z = request('GET', $l->{bundle}{url});
is($z->{status}, 200, 'its link works');
is(sha256_hex($z->{content}), $j->{bundle}{sha256}, 'the zip');

# --- a single-file job: no bundle ---------------------------------------------

$r = initiate({ files => [{ url => "$o/f/two.txt" }] }, \%alice);
my $single = $r->{json}{jobId};
wait_job($single, qr/^completed$/, 30, \%alice);
$l = request('GET', "/v1/download/$single/links", \%alice)->{json};
is(scalar @{ $l->{files} }, 1, 'one file');
ok(exists $l->{bundle} && !defined $l->{bundle}, 'bundle: null');
is(request('GET', $l->{files}[0]{url})->{content}, "two\n", 'its link works');
is(request('HEAD', "/v1/download/$single/links", \%alice)->{status}, 200, 'HEAD');

# --- not yours, not yet, not at all -------------------------------------------

$r = request('GET', "/v1/download/$id/links", { 'X-User' => 'bob' });
is($r->{status}, 404, "another owner's job: 404");
is($r->{json}{error}{code}, 'JOB_NOT_FOUND', 'JOB_NOT_FOUND');
$r = request('GET', '/v1/download/00000000-0000-4000-8000-000000000000/links', \%alice);
is($r->{status}, 404, 'no such job: 404');
is(request('GET', "/v1/download/nope/links", \%alice)->{json}{error}{code},
   'JOB_NOT_FOUND', 'a malformed id: JOB_NOT_FOUND');
is(request('POST', "/v1/download/$id/links", \%alice)->{status}, 405,
   'POST: 405');

origin_file('slow.bin', 100_000);
my $slow = initiate({ files => [{ url => "$o/slow/slow.bin?rate=20k" }] }, \%alice)
           ->{json}{jobId};
$r = request('GET', "/v1/download/$slow/links", \%alice);
is($r->{status}, 409, 'nothing stored yet: 409');
is($r->{json}{error}{code}, 'NOT_READY', 'NOT_READY');
is($r->{headers}{'retry-after'}, 2, 'Retry-After');

$r = initiate({ files => [{ url => "$o/status/404" }] }, \%alice);
my $failed = $r->{json}{jobId};
wait_job($failed, qr/^failed$/, 30, \%alice);
$r = request('GET', "/v1/download/$failed/links", \%alice);
is($r->{status}, 409, 'a failed job: 409');
is($r->{json}{error}{code}, 'NOTHING_STORED', 'NOTHING_STORED');

psql("UPDATE async_dl_jobs SET expires_at = now() - interval '1 second' WHERE id = '$single'");
is(request('GET', "/v1/download/$single/links", \%alice)->{status}, 404,
   'an expired job: 404');

# --- the links expire when expiresAt says ------------------------------------

start_nginx(config(), http_config => '    async_dl_presign_expires 1s;');
$l = request('GET', "/v1/download/$id/links", \%alice)->{json};
ok(abs(iso_epoch($l->{expiresAt}) - time - 1) <= 1.5, 'expiresAt: 1 s ahead');
sleep 2.2;
is(request('GET', $l->{files}[0]{url})->{status}, 403, 'after it, refused');

unlike(nginx_log(), qr/\[(alert|crit)\]/, 'nothing alarming logged');

done_testing();
