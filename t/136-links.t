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
my %alice = ('X-User' => 'alice');

sub iso_epoch {
    my ($iso) = @_;
    my ($y, $mo, $d, $h, $mi, $sec, $ms) =
        $iso =~ /^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\.(\d{3})Z$/
        or return undef;
    return timegm($sec, $mi, $h, $d, $mo - 1, $y) + $ms / 1000;
}

# A file's link as /links lists it: on the public endpoint, for
# async_dl_presign_expires (600 s), X-Amz-Date + X-Amz-Expires being the
# expiresAt of the list.
sub link_checks {
    my ($url, $index, $expires_at) = @_;
    my %q = URI->new($url)->query_form;
    like($url, qr{^\Q$s->{s3_endpoint}/$s->{s3_bucket}/\E},
         "file $index: on the public endpoint");
    is($q{'X-Amz-Expires'}, 600, 'X-Amz-Expires');
    my ($y, $mo, $d, $h, $mi, $sec) =
        $q{'X-Amz-Date'} =~ /^(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)Z$/;
    is(timegm($sec, $mi, $h, $d, $mo - 1, $y) + $q{'X-Amz-Expires'},
       iso_epoch($expires_at), 'signed to expire at expiresAt');
}

our $one = origin_file('one.bin', 100_000);
our $two = origin_file('two.txt', 0, "two\n");
origin_file('slow.bin', 100_000);
start_worker(ASYNC_DL_PART_SIZE => '5m');

run_tests(config => <<'EOF2', http_config => '    async_dl_presign_expires 10m;',
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
}
EOF2
          more_headers => "X-User: alice\nContent-Type: application/json");

__DATA__

=== TEST 1: a job of three files, one of them not found
--- request
POST /v1/download/initiate
{"files":[{"url":"$ADL_ORIGIN/f/one.bin","name":"First \"one\".bin"},{"url":"$ADL_ORIGIN/f/two.txt"},{"url":"$ADL_ORIGIN/status/404"}]}
--- error_code: 202
--- capture
id: json.jobId

=== TEST 2: two of three stored, zip built
--- setup
wait_bundle($::id, 60, { 'X-User' => 'alice' });
--- request
GET /v1/download/status/$::id
--- error_code: 200
--- response_json
{ bundle => { status => 'completed' } }
--- capture
bundle_size: json.bundle.size
bundle_sha256: json.bundle.sha256

=== TEST 3: links: JSON, not stored by caches, the stored files by index, a name as given, a file without one its URL's, the zip named <job>.zip
--- setup
$::t0 = time;
--- request
GET /v1/download/$::id/links
--- error_code: 200
--- response_headers_like
Content-Type: ^application/json
--- response_headers
Cache-Control: no-store
--- response_json
# the two stored files, not the failed one
{ jobId => $::id,
  expiresAt => qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/,
  files => [{ index => 0, name => 'First "one".bin', size => 100_000 },
            { index => 1, name => 'two.txt' }],
  bundle => { name => "$::id.zip", size => $::bundle_size } }
--- capture
expires_at: json.expiresAt
link_0: json.files.0.url
link_1: json.files.1.url
zip_link: json.bundle.url
--- check
ok(abs(main::iso_epoch($::expires_at) - ($::t0 + 600)) <= 2,
   'expiresAt: now + async_dl_presign_expires');
ok(!exists $res->{json}{bundle}{index}, 'the zip without an index');

=== TEST 4: file 0: the S3 server accepts the link, the right bytes, as an attachment
--- request
GET $::link_0
--- more_headers
--- error_code: 200
--- response_headers_like
Content-Disposition: attachment; filename=
--- check
is(sha256_hex($res->{content}), file_sha256($::one), 'the right bytes');
main::link_checks($::link_0, 0, $::expires_at);

=== TEST 5: file 1: the S3 server accepts the link, the right bytes, as an attachment
--- request
GET $::link_1
--- more_headers
--- error_code: 200
--- response_headers_like
Content-Disposition: attachment; filename=
--- check
is(sha256_hex($res->{content}), file_sha256($::two), 'the right bytes');
main::link_checks($::link_1, 1, $::expires_at);

=== TEST 6: the zip's link works
--- request
GET $::zip_link
--- more_headers
--- error_code: 200
--- check
is(sha256_hex($res->{content}), $::bundle_sha256, 'the zip');

=== TEST 7: a single-file job
--- request
POST /v1/download/initiate
{"files":[{"url":"$ADL_ORIGIN/f/two.txt"}]}
--- error_code: 202
--- capture
single: json.jobId

=== TEST 8: a single-file job: one file, bundle null
--- setup
wait_job($::single, qr/^completed$/, 30, { 'X-User' => 'alice' });
--- request
GET /v1/download/$::single/links
--- error_code: 200
--- response_json
{ files => [{}], bundle => undef }
--- capture
single_link: json.files.0.url

=== TEST 9: its link works
--- request
GET $::single_link
--- more_headers
--- response_body
two

=== TEST 10: HEAD
--- request
HEAD /v1/download/$::single/links
--- error_code: 200

=== TEST 11: another owner's job: 404 JOB_NOT_FOUND
--- request
GET /v1/download/$::id/links
--- more_headers
X-User: bob
--- error_code: 404
--- response_json
{ error => { code => 'JOB_NOT_FOUND' } }

=== TEST 12: no such job: 404
--- request
GET /v1/download/00000000-0000-4000-8000-000000000000/links
--- error_code: 404

=== TEST 13: a malformed id: JOB_NOT_FOUND
--- request
GET /v1/download/nope/links
--- response_json
{ error => { code => 'JOB_NOT_FOUND' } }

=== TEST 14: POST: 405
--- request
POST /v1/download/$::id/links
--- error_code: 405

=== TEST 15: a job still downloading
--- request
POST /v1/download/initiate
{"files":[{"url":"$ADL_ORIGIN/slow/slow.bin?rate=20k"}]}
--- error_code: 202
--- capture
slow: json.jobId

=== TEST 16: nothing stored yet: 409 NOT_READY, Retry-After
--- request
GET /v1/download/$::slow/links
--- error_code: 409
--- response_json
{ error => { code => 'NOT_READY' } }
--- response_headers
Retry-After: 2

=== TEST 17: a job that fails
--- request
POST /v1/download/initiate
{"files":[{"url":"$ADL_ORIGIN/status/404"}]}
--- error_code: 202
--- capture
failed: json.jobId

=== TEST 18: a failed job: 409 NOTHING_STORED
--- setup
wait_job($::failed, qr/^failed$/, 30, { 'X-User' => 'alice' });
--- request
GET /v1/download/$::failed/links
--- error_code: 409
--- response_json
{ error => { code => 'NOTHING_STORED' } }

=== TEST 19: an expired job: 404
--- setup
psql("UPDATE async_dl_jobs SET expires_at = now() - interval '1 second' WHERE id = '$::single'");
--- request
GET /v1/download/$::single/links
--- error_code: 404

=== TEST 20: the links expire when expiresAt says: 1 s ahead
--- http_config
    async_dl_presign_expires 1s;
--- request
GET /v1/download/$::id/links
--- error_code: 200
--- capture
short_link: json.files.0.url
--- check
ok(abs(main::iso_epoch($res->{json}{expiresAt}) - time - 1) <= 1.5, 'expiresAt: 1 s ahead');

=== TEST 21: after it, refused
--- http_config
    async_dl_presign_expires 1s;
--- setup
sleep 2.2;
--- request
GET $::short_link
--- more_headers
--- error_code: 403

=== TEST 22: nothing alarming logged
--- check
unlike(nginx_log(), qr/\[(alert|crit)\]/, 'nothing alarming logged');
