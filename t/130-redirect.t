# GET {p}{id} and {p}{id}/files/{index}: 302 to a presigned link that the
# SigV4-checking S3 server accepts, and refuses once tampered with or
# expired; 409 NOT_READY + Retry-After until there is something to fetch.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use URI;
use URI::Escape qw(uri_unescape);

my $s = adl();

sub config {
    my ($extra) = @_;
    return <<"EOF2";
location /v1/download/ {
    async_dl;
    async_dl_owner \$http_x_user;
    $extra
}
EOF2
}

my %alice = ('X-User' => 'alice');

# a job whose files the worker would have stored: objects put in the bucket
# and the files finished the way the worker finishes them
sub stored_job {
    my ($files, $contents) = @_;
    my $r = initiate(ref $files ? { files => $files } : qq({"files":$files}),
                     \%alice);
    my $id = $r->{json}{jobId};
    psql("SELECT count(*) FROM async_dl_claim('w', 100, '1 minute', 5)");
    for my $i (0 .. $#$contents) {
        my $c = $contents->[$i];
        if (!defined $c) {
            psql("SELECT async_dl_file_finish('$id', $i, (SELECT lease_owner FROM async_dl_files WHERE job_id = '$id' AND idx = $i), 'failed', NULL, NULL, NULL, "
                 . "NULL, 2, 'HTTP_STATUS', 'the origin answered 404', NULL)");
            next;
        }
        my $key = "jobs/$id/$i";
        my $put = request('PUT', "$s->{s3_endpoint}/$s->{s3_bucket}/$key", {}, $c);
        die "put: $put->{status}" unless $put->{status} == 200;
        psql("SELECT async_dl_file_finish('$id', $i, (SELECT lease_owner FROM async_dl_files WHERE job_id = '$id' AND idx = $i), 'completed', " . length($c)
             . ", 'text/plain', NULL, '$key', 1, NULL, NULL, NULL)");
    }
    return $id;
}

start_nginx(config(''));

# --- a single-file job ------------------------------------------------------

my $r = initiate({ files => [{ url => 'https://example.com/x/My%20Report.pdf?sig=1' }] },
                 \%alice);
my $pending = $r->{json}{jobId};
$r = request('GET', "/v1/download/$pending", \%alice);
is($r->{status}, 409, 'not stored yet: 409');
is($r->{json}{error}{code}, 'NOT_READY', 'NOT_READY');
is($r->{headers}{'retry-after'}, 2, 'Retry-After');

psql("DELETE FROM async_dl_jobs WHERE id = '$pending'");
my $id = stored_job([{ url => 'https://example.com/x/My%20Report.pdf?sig=1' }],
                    ["hello, world\n"]);
$r = request('GET', "/v1/download/$id", \%alice);
is($r->{status}, 302, 'a stored file: 302');
my $loc = $r->{headers}{location};
like($loc, qr{^\Q$s->{s3_endpoint}/$s->{s3_bucket}/jobs/$id/0?\E}, 'to the object');
like($loc, qr/X-Amz-Expires=900&/, 'X-Amz-Expires: 15m by default');
like($loc, qr/X-Amz-Algorithm=AWS4-HMAC-SHA256/, 'SigV4');
my %q = URI->new($loc)->query_form;
is($q{'response-content-disposition'},
   q{attachment; filename="My Report.pdf"; filename*=UTF-8''My%20Report.pdf},
   'named after the URL when the file has no name');

my $get = request('GET', $loc);
is($get->{status}, 200, 'the S3 server accepts the link');
is($get->{content}, "hello, world\n", 'and serves the object');
like($get->{headers}{'content-disposition'}, qr/filename="My Report.pdf"/,
     'as an attachment with the name');

(my $tampered = $loc) =~ s/X-Amz-Expires=900/X-Amz-Expires=901/;
is(request('GET', $tampered)->{status}, 403, 'a tampered link is refused');
(my $other = $loc) =~ s{/jobs/$id/0}{/jobs/$id/1};
is(request('GET', $other)->{status}, 403, 'another key is refused');

$r = request('GET', "/v1/download/$id/files/0", \%alice);
is($r->{status}, 302, 'the file link redirects too');
is(request('GET', $r->{headers}{location})->{content}, "hello, world\n",
   'to the same object');
my $h = request('HEAD', "/v1/download/$id", \%alice);
is($h->{status}, 302, 'HEAD: 302');
my $hl = request('HEAD', $h->{headers}{location});
is($hl->{status}, 200, 'followed with HEAD: the link is signed for HEAD');
is($hl->{headers}{'content-length'}, 13, 'with the length');
is(request('GET', $h->{headers}{location})->{status}, 403,
   'and for HEAD only (SigV4 signs the method)');
is(request('GET', "/v1/download/$id", { 'X-User' => 'bob' })->{status}, 404,
   "another owner's job: 404");
is(request('GET', "/v1/download/$id/files/1", \%alice)->{json}{error}{code},
   'FILE_NOT_FOUND', 'no such index: 404 FILE_NOT_FOUND');
is(request('GET', "/v1/download/$id/files/x", \%alice)->{status}, 404,
   'a malformed index: 404');

# --- a file with a name, sanitised -----------------------------------------

my $named = stored_job('[{"url":"https://example.com/a","name":"r\\"e/p\\u00f6rt.txt"}]',
                       ["x"]);
$r = request('GET', "/v1/download/$named", \%alice);
%q = URI->new($r->{headers}{location})->query_form;
is($q{'response-content-disposition'},
   q{attachment; filename="rep_rt.txt"; filename*=UTF-8''rep%C3%B6rt.txt},
   'the name is sanitised');
is(request('GET', $r->{headers}{location})->{status}, 200, 'and accepted');

# --- a multi-file job -------------------------------------------------------------

my $multi = stored_job([{ url => 'https://example.com/1' }, { url => 'https://example.com/2' },
                        { url => 'https://example.com/3' }],
                       ["one", undef]);
$r = request('GET', "/v1/download/$multi", \%alice);
is($r->{status}, 409, 'multi-file job while unfinished: 409');
is($r->{json}{error}{code}, 'NOT_READY', 'NOT_READY');
is($r->{headers}{'retry-after'}, 2, 'with Retry-After');
$r = request('GET', "/v1/download/$multi/files/0", \%alice);
is($r->{status}, 302, 'its stored file redirects');
is(request('GET', $r->{headers}{location})->{content}, 'one', 'to its object');
$r = request('GET', "/v1/download/$multi/files/1", \%alice);
is($r->{status}, 409, 'a failed file: 409');
is($r->{json}{error}{code}, 'FILE_FAILED', 'FILE_FAILED');
like($r->{json}{error}{message}, qr/404/, 'with the reason');
$r = request('GET', "/v1/download/$multi/files/2", \%alice);
is($r->{json}{error}{code}, 'NOT_READY', 'a pending file: NOT_READY');
psql("SELECT async_dl_job_cancel('$multi', 'alice')");
$r = request('GET', "/v1/download/$multi", \%alice);
is($r->{status}, 409, 'ended multi-file job: 409 until its bundle exists');
like($r->{json}{error}{message}, qr/bundle/, 'saying the bundle is not built');

# --- expiry of a job ------------------------------------------------------------

psql("UPDATE async_dl_jobs SET expires_at = now() - interval '1 second' WHERE id = '$named'");
$r = request('GET', "/v1/download/$named", \%alice);
is($r->{status}, 404, 'an expired job: 404, as if gone');
is($r->{json}{error}{code}, 'JOB_NOT_FOUND', 'JOB_NOT_FOUND');

# --- async_dl_presign_expires: the S3 server enforces it --------------------------

start_nginx(config(''), http_config => '    async_dl_presign_expires 1s;');
$r = request('GET', "/v1/download/$id", \%alice);
like($r->{headers}{location}, qr/X-Amz-Expires=1&/, 'X-Amz-Expires=1');
sleep 2.2;
$get = request('GET', $r->{headers}{location});
is($get->{status}, 403, 'an expired link is refused');
like($get->{content}, qr/expired/i, 'as expired');

# --- public endpoint, virtual addressing ------------------------------------------

start_nginx(config(''), http_config => <<'EOF2');
    async_dl_s3_public_endpoint https://files.example.com:8443/store;
    async_dl_s3_addressing virtual;
EOF2
$r = request('GET', "/v1/download/$id", \%alice);
like($r->{headers}{location},
     qr{^https://async-dl\.files\.example\.com:8443/store/jobs/\Q$id\E/0\?},
     'virtual host on the public endpoint, its prefix kept');

# --- the same link as botocore for the same inputs and second ---------------------

{
    start_nginx(config(''));
    my $url = request('GET', "/v1/download/$id", \%alice)->{headers}{location};
    my %p = URI->new($url)->query_form;
    my ($y, $mo, $d, $h, $mi, $sec) =
        $p{'X-Amz-Date'} =~ /^(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)Z$/;
    require Time::Local;
    my $epoch = Time::Local::timegm($sec, $mi, $h, $d, $mo - 1, $y);
    # Debian's botocore (the pyenv python on PATH may carry another one)
    open my $py, '-|', '/usr/bin/python3', 't/tools/botocore_sign.py',
        'presign', '--endpoint', $s->{s3_endpoint}, '--bucket',
        $s->{s3_bucket}, '--region', 'us-east-1', '--access', 'S3RVER',
        '--secret', 'S3RVER', '--method', 'GET', '--key', "jobs/$id/0",
        '--time', $epoch, '--expires', 900, '--query',
        "response-content-disposition=$p{'response-content-disposition'}"
        or die "botocore_sign.py: $!";
    my $out = do { local $/; <$py> };
    close $py;
    my ($bu) = $out =~ /^url: (.*)$/m;
    is($url, $bu, 'byte for byte what botocore presigns') or diag($out);
}

unlike(nginx_log(), qr/\[(alert|crit)\]/, 'nothing alarming logged');

done_testing();
