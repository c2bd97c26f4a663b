# DELETE of a multi-file job leaves nothing in the bucket, whenever it
# comes (issue 9, defect 3, the worker's side).  A zip being built when
# the job goes: the build learns it from its finish (or from a lease
# renewal) and queues the zip it may have stored for the janitor.  A zip
# stored before: the DELETE queues it.  Each time: no object of the job
# is left once the janitor ran.
#
# To land in the middle of a build, the job goes from inside PostgreSQL:
# a DO block waits for the bundle to be 'building', then deletes (by
# async_dl_job_delete, as the API's DELETE does; or by removing the row
# alone, so that the stored files stay readable and the build surely
# reaches its end after the job is gone).
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;

my $s = adl();
my $o = $s->{origin};
start_nginx(<<'EOF');
location /v1/download/ {
    async_dl;
    async_dl_urls on;
}
EOF

origin_file("big$_.bin", 12 * 1024 * 1024) for 0 .. 2;

sub job_keys {
    my ($id) = @_;
    return grep { m{^\Q$id\E/} } s3_keys();
}

sub zip_key { my ($id) = @_; return "$id/$id.zip" }

sub three_files {
    my $r = initiate({ files => [map { { url => "$o/f/big$_.bin" } } 0 .. 2] });
    is($r->{status}, 202, 'a 3-file job') or diag($r->{content});
    return $r->{json}{jobId};
}

# Deletes or cancels the job ($how: the API's DELETE, a cancel, or the row
# alone) as soon as its bundle is being built.
sub delete_while_building {
    my ($id, $how) = @_;
    my $del = $how eq 'api' ? "PERFORM async_dl_job_delete('$id', '')"
            : $how eq 'cancel' ? "PERFORM async_dl_job_cancel('$id', '')"
            : "DELETE FROM async_dl_jobs WHERE id = '$id'";
    return psql(<<"SQL");
DO \$\$
DECLARE st text;
BEGIN
    FOR i IN 1 .. 6000 LOOP
        SELECT bundle_status INTO st FROM async_dl_jobs WHERE id = '$id';
        EXIT WHEN st IS NOT NULL AND st <> 'pending';
        PERFORM pg_sleep(0.01);
    END LOOP;
    $del;
END \$\$;
SELECT 'ok';
SQL
}

sub gone {
    my ($what, @keys) = @_;
    my %want = map { $_ => 1 } @keys;
    ok(wait_until(sub { !grep { $want{$_} } s3_keys() }, 30, $what),
       "$what: gone from the bucket")
        or diag(join "\n", grep { $want{$_} } s3_keys());
}

# --- the row goes while the zip is built; the build stores it after -------

start_worker(ASYNC_DL_PART_SIZE => '5m');
my $id = three_files();
delete_while_building($id, 'row');
ok(wait_until(sub { worker_log() =~ /job=\Q$id\E bundle: (result not recorded|stopped)|job=\Q$id\E bundle stopped/ }, 60),
   'the build learnt that the job is gone');
ok(wait_until(sub { worker_log() =~ /job=\Q$id\E bundle: the job is gone or canceled, or its bundle failed: \S+ queued for deletion/ }, 30),
   'the zip it stored is queued for deletion');
gone('a zip finished after its job went', zip_key($id));
is(psql("SELECT count(*) FROM async_dl_deleted_objects WHERE job_id = '$id'"),
   0, 'the janitor took it');

# --- DELETE while the zip is built ------------------------------------------

$id = three_files();
delete_while_building($id, 'api');
ok(wait_until(sub { job_keys($id) == 0 }, 30, "$id to leave the bucket"),
   'DELETE during the build: no object of the job is left')
    or diag(join "\n", job_keys($id));

# --- a cancel while the zip is built (the job is still processing) ----------------

$id = three_files();
delete_while_building($id, 'cancel');
is(job_status($id), 'canceled', 'cancel during the build: the job is canceled');
is(psql("SELECT coalesce(bundle_status, 'none') FROM async_dl_jobs WHERE "
        . "id = '$id'"), 'none', 'its zip is dropped');
gone('cancel during the build: the zip', zip_key($id));
is(scalar(grep { !/\.zip$/ } job_keys($id)), 3, 'its stored files stay');

# --- DELETE after the zip was stored ------------------------------------------

$id = three_files();
my $j;
wait_until(sub {
    $j = request('GET', "/v1/download/status/$id")->{json};
    return $j && $j->{bundle} && $j->{bundle}{status} eq 'completed';
}, 60, 'the bundle');
is(scalar(job_keys($id)), 4, 'three files and a zip stored');
my $zip_link = request('GET', "/v1/download/$id")->{headers}{location};
is(request('GET', $zip_link)->{status}, 200, 'the zip link works');
is(request('DELETE', "/v1/download/$id")->{status}, 204, 'DELETE');
ok(wait_until(sub { job_keys($id) == 0 }, 30, "$id to leave the bucket"),
   'DELETE after the build: no object of the job is left')
    or diag(join "\n", job_keys($id));
is(request('GET', $zip_link)->{status}, 404, 'the old zip link: 404');

# --- a short lease: a renewal learns it, the multipart upload stops ----------

stop_worker();
start_worker(ASYNC_DL_PART_SIZE => '5m', ASYNC_DL_LEASE => '3s');
$id = three_files();
delete_while_building($id, 'row');
ok(wait_until(sub { worker_log(1) =~ /job=\Q$id\E bundle( stopped|: result not recorded)/ }, 60),
   'short lease: the build learnt that the job is gone');
gone('short lease: the zip', zip_key($id));

unlike(worker_log(), qr/\[error\]/, 'no error logged');

done_testing();
