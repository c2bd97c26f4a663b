# GET {p}{id} and {p}{id}/files/{index}: 302 to a presigned link that the
# SigV4-checking S3 server accepts, and refuses once tampered with or
# expired; 409 NOT_READY + Retry-After until there is something to fetch.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use URI;
use Time::Local qw(timegm);

my $s = adl();
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

# the response-content-disposition a presigned link asks the storage for
sub disposition { return { URI->new($_[0])->query_form }->{'response-content-disposition'} }

# What botocore presigns for the same object, method, second and query as
# $url (Debian's botocore: the pyenv python on PATH may carry another one).
sub botocore_presign {
    my ($url, $key) = @_;
    my %p = URI->new($url)->query_form;
    my ($y, $mo, $d, $h, $mi, $sec) =
        $p{'X-Amz-Date'} =~ /^(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)Z$/;
    my $epoch = timegm($sec, $mi, $h, $d, $mo - 1, $y);
    open my $py, '-|', '/usr/bin/python3', 't/tools/botocore_sign.py',
        'presign', '--endpoint', $s->{s3_endpoint}, '--bucket',
        $s->{s3_bucket}, '--region', 'us-east-1', '--access', 'S3RVER',
        '--secret', 'S3RVER', '--method', 'GET', '--key', $key,
        '--time', $epoch, '--expires', 900, '--query',
        "response-content-disposition=$p{'response-content-disposition'}"
        or die "botocore_sign.py: $!";
    my $out = do { local $/; <$py> };
    close $py;
    my ($bu) = $out =~ /^url: (.*)$/m;
    diag($out) unless defined $bu && $bu eq $url;
    return $bu;
}

run_tests(config => <<'EOF2', more_headers => "X-User: alice\nContent-Type: application/json");
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
}
EOF2

__DATA__

=== TEST 1: a single-file job
--- request
POST /v1/download/initiate
{"files":[{"url":"https://example.com/x/My%20Report.pdf?sig=1"}]}
--- error_code: 202
--- capture
pending: json.jobId

=== TEST 2: not stored yet: 409 NOT_READY, Retry-After
--- request
GET /v1/download/$::pending
--- error_code: 409
--- response_json
{ error => { code => 'NOT_READY' } }
--- response_headers
Retry-After: 2

=== TEST 3: a stored file: 302 to the object, X-Amz-Expires 15m by default, SigV4, named after the URL when the file has no name
--- setup
psql("DELETE FROM async_dl_jobs WHERE id = '$::pending'");
$::id = main::stored_job([{ url => 'https://example.com/x/My%20Report.pdf?sig=1' }],
                         ["hello, world\n"]);
--- request
GET /v1/download/$::id
--- error_code: 302
--- response_headers_like
Location: X-Amz-Expires=900&
Location: X-Amz-Algorithm=AWS4-HMAC-SHA256
--- capture
link: header.location
--- check
my $s = adl();
like($res->{headers}{location}, qr{^\Q$s->{s3_endpoint}/$s->{s3_bucket}/jobs/$::id/0?\E},
     'to the object');
is(main::disposition($res->{headers}{location}),
   q{attachment; filename="My Report.pdf"; filename*=UTF-8''My%20Report.pdf},
   'named after the URL when the file has no name');

=== TEST 4: the S3 server accepts the link and serves the object, as an attachment with the name
--- request
GET $::link
--- more_headers
--- error_code: 200
--- response_body
hello, world
--- response_headers_like
Content-Disposition: filename="My Report.pdf"

=== TEST 5: a tampered link is refused
--- setup
($::tampered = $::link) =~ s/X-Amz-Expires=900/X-Amz-Expires=901/;
--- request
GET $::tampered
--- more_headers
--- error_code: 403

=== TEST 6: another key is refused
--- setup
($::other = $::link) =~ s{/jobs/$::id/0}{/jobs/$::id/1};
--- request
GET $::other
--- more_headers
--- error_code: 403

=== TEST 7: the file link redirects too
--- request
GET /v1/download/$::id/files/0
--- error_code: 302
--- capture
file_link: header.location

=== TEST 8: to the same object
--- request
GET $::file_link
--- more_headers
--- response_body
hello, world

=== TEST 9: HEAD: 302
--- request
HEAD /v1/download/$::id
--- error_code: 302
--- capture
head_link: header.location

=== TEST 10: followed with HEAD: the link is signed for HEAD, with the length
--- request
HEAD $::head_link
--- more_headers
--- error_code: 200
--- response_headers
Content-Length: 13

=== TEST 11: and for HEAD only (SigV4 signs the method)
--- request
GET $::head_link
--- more_headers
--- error_code: 403

=== TEST 12: another owner's job: 404
--- request
GET /v1/download/$::id
--- more_headers
X-User: bob
--- error_code: 404

=== TEST 13: no such index: 404 FILE_NOT_FOUND
--- request
GET /v1/download/$::id/files/1
--- error_code: 404
--- response_json
{ error => { code => 'FILE_NOT_FOUND' } }

=== TEST 14: a malformed index: 404
--- request
GET /v1/download/$::id/files/x
--- error_code: 404

=== TEST 15: a file with a name: the name is sanitised
--- setup
$::named = main::stored_job('[{"url":"https://example.com/a","name":"r\\"e/p\\u00f6rt.txt"}]',
                            ["x"]);
--- request
GET /v1/download/$::named
--- error_code: 302
--- capture
named_link: header.location
--- check
is(main::disposition($res->{headers}{location}),
   q{attachment; filename="rep_rt.txt"; filename*=UTF-8''rep%C3%B6rt.txt},
   'the name is sanitised');

=== TEST 16: and accepted
--- request
GET $::named_link
--- more_headers
--- error_code: 200

=== TEST 17: a multi-file job while unfinished: 409 NOT_READY with Retry-After
--- setup
$::multi = main::stored_job([{ url => 'https://example.com/1' }, { url => 'https://example.com/2' },
                             { url => 'https://example.com/3' }],
                            ["one", undef]);
--- request
GET /v1/download/$::multi
--- error_code: 409
--- response_json
{ error => { code => 'NOT_READY' } }
--- response_headers
Retry-After: 2

=== TEST 18: its stored file redirects
--- request
GET /v1/download/$::multi/files/0
--- error_code: 302
--- capture
multi_link: header.location

=== TEST 19: to its object
--- request
GET $::multi_link
--- more_headers
--- response_body
one

=== TEST 20: a failed file: 409 FILE_FAILED with the reason
--- request
GET /v1/download/$::multi/files/1
--- error_code: 409
--- response_json
{ error => { code => 'FILE_FAILED', message => qr/404/ } }

=== TEST 21: a pending file: NOT_READY
--- request
GET /v1/download/$::multi/files/2
--- response_json
{ error => { code => 'NOT_READY' } }

=== TEST 22: an ended multi-file job: 409 until its bundle exists
--- setup
psql("SELECT async_dl_job_cancel('$::multi', 'alice')");
--- request
GET /v1/download/$::multi
--- error_code: 409
--- response_json
# saying the bundle is not built
{ error => { message => qr/bundle/ } }

=== TEST 23: an expired job: 404 JOB_NOT_FOUND, as if gone
--- setup
psql("UPDATE async_dl_jobs SET expires_at = now() - interval '1 second' WHERE id = '$::named'");
--- request
GET /v1/download/$::named
--- error_code: 404
--- response_json
{ error => { code => 'JOB_NOT_FOUND' } }

=== TEST 24: async_dl_presign_expires: X-Amz-Expires=1
--- http_config
    async_dl_presign_expires 1s;
--- request
GET /v1/download/$::id
--- response_headers_like
Location: X-Amz-Expires=1&
--- capture
short_link: header.location

=== TEST 25: the S3 server refuses the link once expired, as expired
--- http_config
    async_dl_presign_expires 1s;
--- setup
sleep 2.2;
--- request
GET $::short_link
--- more_headers
--- error_code: 403
--- response_body_like
(?i)expired

=== TEST 26: a public endpoint, virtual addressing: the host on the public endpoint, its prefix kept
--- http_config
    async_dl_s3_public_endpoint https://files.example.com:8443/store;
    async_dl_s3_addressing virtual;
--- request
GET /v1/download/$::id
--- response_headers_like
Location: ^https://async-dl\.files\.example\.com:8443/store/jobs/$::id/0\?

=== TEST 27: the same link as botocore for the same inputs and second
--- request
GET /v1/download/$::id
--- error_code: 302
--- check
is($res->{headers}{location},
   main::botocore_presign($res->{headers}{location}, "jobs/$::id/0"),
   'byte for byte what botocore presigns');

=== TEST 28: nothing alarming logged
--- check
unlike(nginx_log(), qr/\[(alert|crit)\]/, 'nothing alarming logged');
