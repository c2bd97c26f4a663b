# A worker killed after the storage stored its upload, before it recorded
# it (issue 9, orphans): the claim recorded the key the transfer writes to
# (write_key), so whatever ends the file without its object (a cancel, a
# DELETE, WORKER_LOST after the last attempt, the deadline sweep) queues
# that key, and the next worker's janitor deletes it.  Before, no row named
# such an object and it stayed in the bucket for good.  The same for a
# zip: its claim records its key, and a cancel during the build queues it.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;

my $s = adl();
my $o = $s->{origin};

# --- the claim names the key, and a stored file is stored under it ------------

start_worker();
my $job = add_job(["$o/f/small.txt"], names => ['a b/c é.txt']);
is(wait_ended($job), 'completed', 'a job completes');
is(psql("SELECT object_key = write_key FROM async_dl_files WHERE "
        . "job_id = '$job'"), 't', 'it is stored under the key its claim recorded');
is(psql("SELECT object_key FROM async_dl_files WHERE job_id = '$job'"),
   "$job/0/c_.txt", 'the key: job/index/name, made safe');
is(s3_object("$job/0/c_.txt"), "hello from the origin\n", 'with its bytes');
stop_worker('TERM');

# --- four uploads stored, their worker killed before it could record them ----------

# the storage stores each PUT, then holds its answer 30 s
my $ep = s3_proxy();
s3_fault('delay', match => 'PUT ', delay => 30, when => 'response');
start_worker(ASYNC_DL_S3_ENDPOINT => $ep, ASYNC_DL_LEASE => '3s');
my %j = map { $_ => add_job(["$o/f/small.txt"]) } qw(cancel delete lost late);
my $list = join ',', map { "'$_'" } values %j;
ok(wait_until(sub {
    my %k = map { (split m{/})[0] => 1 } s3_keys();
    !grep { !$k{$_} } values %j
}, 20, 'the four objects to be stored'), 'the four objects are stored');
stop_worker('KILL');
s3_fault('pass');
is(psql("SELECT count(*) FROM async_dl_files WHERE job_id IN ($list) AND "
        . "status = 'downloading' AND object_key IS NULL AND "
        . "write_key IS NOT NULL"), 4,
   'no row records them; each claim recorded its key');

# a cancel, a DELETE, a deadline passed (the sweep)
is(psql("SELECT async_dl_job_cancel('$j{cancel}', '')"), 'canceled',
   'cancel: the job is canceled');
is(psql("SELECT async_dl_job_delete('$j{delete}', '')"), 't',
   'DELETE: the job is deleted');
psql("UPDATE async_dl_jobs SET deadline = now() - interval '1 second' "
     . "WHERE id = '$j{late}'");
psql("UPDATE async_dl_files SET lease_until = now() - interval '1 second' "
     . "WHERE job_id = '$j{late}'");
cmp_ok(psql("SELECT async_dl_sweep_deadlines()"), '>=', 1,
       'deadline: the sweep fails the file');
is(psql("SELECT count(*) FROM async_dl_deleted_objects WHERE job_id IN "
        . "($list)"), 3, 'the three keys are queued');

# the last one: a worker allowing one attempt finds its lease run out
start_worker(ASYNC_DL_MAX_ATTEMPTS => 1);
ok(wait_until(sub {
    psql("SELECT error_code FROM async_dl_files WHERE job_id = '$j{lost}'")
        eq 'WORKER_LOST'
}, 20, 'WORKER_LOST'), 'lost: the file fails WORKER_LOST');
is(psql("SELECT error_code FROM async_dl_files WHERE job_id = '$j{late}'"),
   'TIMEOUT', 'deadline: the file failed TIMEOUT');

ok(wait_until(sub {
    psql("SELECT count(*) FROM async_dl_deleted_objects WHERE job_id IN "
         . "($list)") == 0
}, 20, 'the janitor'), 'the janitor deleted what was queued');
my %gone = map { $_ => 1 } values %j;
is(join(' ', grep { $gone{(split m{/})[0]} } s3_keys()), '',
   'no object of the four jobs is left in the bucket');
unlike(worker_log(), qr/\[error\]/, 'no [error] in the worker log');
stop_worker('TERM');

# --- a zip stored, its builder killed before recording it, then a cancel ---------

s3_fault('delay', match => '.zip ', delay => 30, when => 'response');
start_worker(ASYNC_DL_S3_ENDPOINT => $ep, ASYNC_DL_LEASE => '3s');
my $zj = add_job(["$o/f/small.txt", "$o/f/small.txt"]);
my $zip = "$zj/$zj.zip";
ok(wait_until(sub { grep { $_ eq $zip } s3_keys() }, 30, 'the zip to be stored'),
   'the zip is stored, its answer held');
stop_worker('KILL');
s3_fault('pass');
is(psql("SELECT status || ' ' || bundle_status || ' ' || bundle_write_key "
        . "FROM async_dl_jobs WHERE id = '$zj'"), "processing building $zip",
   'the job waits for its zip; the claim recorded the zip\'s key');
is(psql("SELECT async_dl_job_cancel('$zj', '')"), 'canceled',
   'a cancel while the zip is being built');
start_worker();
ok(wait_until(sub { !grep { $_ eq $zip } s3_keys() }, 20, 'the zip to go'),
   'the zip nobody will record is deleted');
is(scalar(grep { m{^\Q$zj\E/} && !/\.zip$/ } s3_keys()), 2,
   'the stored files stay');
stop_worker('TERM');
done_testing();
