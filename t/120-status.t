# GET {p}status/{id} and GET {p}jobs: the documents, owner isolation, the
# ETag and If-None-Match, keyset paging, $async_dl_job_id.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;

my $s = adl();
start_nginx(<<'EOF2', http_config => <<'EOF3');
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    access_log $ADL_DIR/nginx/logs/jobs.log jobs;
}
EOF2
    log_format jobs '$request_method $status job=$async_dl_job_id';
EOF3

my %alice = ('X-User' => 'alice');
my %bob = ('X-User' => 'bob');

my $r = initiate({ files => [{ url => "$s->{origin}/files/70000", name => 'a.bin' },
                             { url => "$s->{origin}/files/70001" }] }, \%alice);
is($r->{status}, 202, 'job created');
my $id = $r->{json}{jobId};

# --- the document ---------------------------------------------------------

$r = request('GET', "/v1/download/status/$id", \%alice);
is($r->{status}, 200, 'status 200');
is($r->{headers}{'cache-control'}, 'no-cache', 'revalidated, not stored');
like($r->{headers}{etag}, qr/^"[0-9a-f]{32}"$/, 'ETag');
my $j = $r->{json};
is_deeply([sort keys %$j],
          [sort qw(jobId status progress totalFiles completedFiles failedFiles
                   bytesDone bytesTotal downloadUrl error createdAt updatedAt
                   startedAt completedAt expiresAt bundle callback files)],
          'exactly the fields');
is($j->{jobId}, $id, 'jobId');
is($j->{status}, 'queued', 'queued');
is($j->{progress}, 0, 'progress 0');
is($j->{totalFiles}, 2, 'totalFiles');
ok(!defined $j->{downloadUrl}, 'nothing to download yet');
ok(!defined $j->{startedAt}, 'not started');
like($j->{createdAt}, qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/, 'ISO 8601 UTC');
is(scalar @{ $j->{files} }, 2, 'two files');
is_deeply([sort keys %{ $j->{files}[0] }],
          [sort qw(index fileId url name status size contentType sha256
                   attempts error downloadUrl)], 'file fields');
is($j->{files}[0]{name}, 'a.bin', 'name');
is($j->{files}[1]{index}, 1, 'index');
is($j->{files}[1]{status}, 'pending', 'pending');

# --- ETag / If-None-Match -----------------------------------------------------

my $etag = $r->{headers}{etag};
$r = request('GET', "/v1/download/status/$id", { %alice, 'If-None-Match' => $etag });
is($r->{status}, 304, 'If-None-Match that matches: 304');
is($r->{content}, '', 'without a body');
$r = request('GET', "/v1/download/status/$id", { %alice, 'If-None-Match' => '"other"' });
is($r->{status}, 200, 'another ETag: 200');

# a worker claims one file and reports bytes: the document changes
psql("SELECT count(*) FROM async_dl_claim('w1', 1, '1 minute', 5)");
psql("SELECT async_dl_file_progress('$id', 0, (SELECT lease_owner FROM async_dl_files WHERE job_id = '$id' AND idx = 0), '1 minute', 512, 1024, 1)");
$r = request('GET', "/v1/download/status/$id", { %alice, 'If-None-Match' => $etag });
is($r->{status}, 200, 'after a change the old ETag no longer matches');
isnt($r->{headers}{etag}, $etag, 'new ETag');
is($r->{json}{status}, 'processing', 'processing');
ok(defined $r->{json}{startedAt}, 'startedAt set');
is($r->{json}{files}[0]{status}, 'downloading', 'file downloading');
is($r->{json}{progress}, 0, 'progress by files while a size is unknown');

psql("SELECT count(*) FROM async_dl_claim('w1', 1, '1 minute', 5)");
psql("SELECT async_dl_file_progress('$id', 1, (SELECT lease_owner FROM async_dl_files WHERE job_id = '$id' AND idx = 1), '1 minute', 0, 1024, 1)");
$r = request('GET', "/v1/download/status/$id", \%alice);
is($r->{json}{bytesTotal}, 2048, 'bytesTotal once all sizes are known');
is($r->{json}{progress}, 25, 'progress by bytes: 512 of 2048');

psql("SELECT async_dl_file_finish('$id', 0, (SELECT lease_owner FROM async_dl_files WHERE job_id = '$id' AND idx = 0), 'completed', 1024, 'application/octet-stream', "
     . "'ab', 'k/0', 1, NULL, NULL, NULL)");
psql("SELECT async_dl_file_finish('$id', 1, (SELECT lease_owner FROM async_dl_files WHERE job_id = '$id' AND idx = 1), 'failed', NULL, NULL, NULL, NULL, 3, "
     . "'HTTP_STATUS', 'the origin answered 404', NULL)");
$r = request('GET', "/v1/download/status/$id", \%alice);
$j = $r->{json};
is($j->{status}, 'processing', 'files ended, one stored: processing, its zip first');
is($j->{progress}, 99, 'progress 99');
is($j->{bundle}{status}, 'pending', 'the zip is pending');
ok(!defined $j->{completedAt}, 'no completedAt yet');

# a builder (played here) fails to make the zip: the job completes
psql("SELECT count(*) FROM async_dl_bundle_claim('b', '1 minute', 3)");
psql("SELECT async_dl_bundle_finish('$id', 'b', 'failed', NULL, NULL, NULL, "
     . "NULL, 'reading k/0: HTTP 404', NULL)");
$r = request('GET', "/v1/download/status/$id", \%alice);
$j = $r->{json};
is($j->{status}, 'completed', 'completed: one file stored');
is($j->{progress}, 100, 'progress 100');
is($j->{completedFiles}, 1, 'completedFiles');
is($j->{failedFiles}, 1, 'failedFiles');
ok(defined $j->{completedAt}, 'completedAt');
ok(!defined $j->{downloadUrl}, 'a zip that failed: no bundle link');
is($j->{bundle}{status}, 'failed', 'the zip failed');
is($j->{files}[0]{downloadUrl}, "/v1/download/$id/files/0", 'file link');
is($j->{files}[0]{contentType}, 'application/octet-stream', 'contentType');
is($j->{files}[0]{size}, 1024, 'size');
ok(!defined $j->{files}[1]{downloadUrl}, 'no link for a failed file');
is_deeply($j->{files}[1]{error}, { code => 'HTTP_STATUS',
                                   message => 'the origin answered 404' },
          'file error');

# --- owner isolation, unknown and malformed ids: one 404 ------------------------

my $nf = request('GET', "/v1/download/status/$id", \%bob);
is($nf->{status}, 404, "another owner's job: 404");
is($nf->{json}{error}{code}, 'JOB_NOT_FOUND', 'JOB_NOT_FOUND');
for my $other ('00000000-0000-4000-8000-000000000000', 'not-a-uuid', "$id-x",
               uc $id =~ s/-/_/gr)
{
    my $x = request('GET', "/v1/download/status/$other", \%alice);
    is($x->{status}, 404, "$other: 404");
    is($x->{content}, $nf->{content}, "$other: the same answer");
}
is(request('GET', "/v1/download/status/" . uc($id), \%alice)->{status}, 200,
   'an id in capitals is the same id');
is(request('GET', "/v1/download/status/$id", {})->{status}, 401, 'no owner: 401');
is(request('HEAD', "/v1/download/status/$id", \%alice)->{status}, 200, 'HEAD');

# --- the list -------------------------------------------------------------------

my %carol = ('X-User' => 'carol');
my @ids;
for my $n (1 .. 5) {
    push @ids, initiate({ file_id => 70000 + $n }, \%carol)->{json}{jobId};
}
@ids = reverse @ids;    # newest first
$r = request('GET', '/v1/download/jobs', \%carol);
is($r->{status}, 200, 'jobs 200');
is($r->{json}{total}, 5, 'total');
is($r->{json}{limit}, 20, 'default limit');
is($r->{json}{offset}, 0, 'default offset');
is_deeply([map { $_->{jobId} } @{ $r->{json}{jobs} }], \@ids, 'newest first');
ok(!defined $r->{json}{nextCursor}, 'one page: no cursor');
ok(!exists $r->{json}{jobs}[0]{files}, 'summaries have no files');

my @seen;
my $cursor;
for my $page (1 .. 3) {
    my $q = '/v1/download/jobs?limit=2' . ($cursor ? "&cursor=$cursor" : '');
    $r = request('GET', $q, \%carol);
    is($r->{status}, 200, "page $page");
    push @seen, map { $_->{jobId} } @{ $r->{json}{jobs} };
    $cursor = $r->{json}{nextCursor};
    last unless $cursor;
}
is_deeply(\@seen, \@ids, 'keyset pages cover the list once, in order');
ok(!defined $cursor, 'the last page has no nextCursor');

$r = request('GET', '/v1/download/jobs?limit=2&offset=2', \%carol);
is_deeply([map { $_->{jobId} } @{ $r->{json}{jobs} }], [@ids[2, 3]], 'offset');
is(request('GET', '/v1/download/jobs', \%bob)->{json}{total}, 0,
   "bob does not see others' jobs");
$r = request('GET', '/v1/download/jobs?status=completed', \%alice);
is_deeply([map { $_->{jobId} } @{ $r->{json}{jobs} }], [$id], 'status filter');
is(request('GET', '/v1/download/jobs?status=queued', \%alice)->{json}{total},
   0, 'status filter: total follows');
for my $bad ('limit=0', 'limit=101', 'limit=x', 'offset=-1', 'status=done',
             'cursor=nope', "cursor=1.$id&offset=1")
{
    $r = request('GET', "/v1/download/jobs?$bad", \%carol);
    is($r->{status}, 400, "$bad: 400");
    my ($field) = $bad =~ /^(\w+)/;
    $field = 'offset' if $bad =~ /&offset/;
    like($r->{json}{error}{message}, qr/^$field:/, "$bad: names $field");
}

# --- $async_dl_job_id -----------------------------------------------------------

my $log = do { local $/; open my $fh, '<', "$s->{dir}/nginx/logs/jobs.log"; <$fh> };
like($log, qr/^POST 202 job=[0-9a-f-]{36}$/m, 'initiate logs the new job id');
like($log, qr/^GET 200 job=\Q$id\E$/m, 'status logs the job id');
like($log, qr/^GET 200 job=-$/m, 'the list has none');

unlike(nginx_log(), qr/\[(error|alert|crit)\]/, 'no errors logged');

done_testing();
