# Shutdown (issue 9, defect 8): a claim whose answer arrives while the
# worker stops (during the grace, or after a second SIGTERM) starts no
# transfer: the file is handed back at once, its claim not counted.  A
# multipart transfer interrupted by the shutdown has its upload aborted.
# The worker exits 0 with everything recorded: no file is left
# 'downloading' under a lease nobody holds.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use POSIX qw(:sys_wait_h);
use Time::HiRes qw(time sleep);

my $s = adl();
my $o = $s->{origin};

sub backend {
    my $pid;
    wait_until(sub {
        $pid = psql("SELECT pid FROM pg_stat_activity WHERE "
                    . "application_name = 'async-dl-worker'");
        $pid =~ /^\d+$/;
    }, 10, 'the worker\'s backend');
    return $pid;
}

sub file_row {
    my ($job) = @_;
    return psql("SELECT status || ' ' || coalesce(lease_owner, '-') || ' ' "
                . "|| attempts FROM async_dl_files WHERE job_id = '$job' "
                . "ORDER BY idx");
}

sub wait_exit {
    my ($pid, $secs) = @_;
    my $st;
    wait_until(sub { my $r = waitpid($pid, WNOHANG); $st = $? if $r == $pid;
                     $r == $pid }, $secs, 'the worker to exit');
    return $st;
}

sub requests_for {
    my ($name) = @_;
    return scalar grep { / \/\S*\Q$name\E/ } split /\n/, origin_log();
}

origin_file('sd-claim.bin', 1024 * 1024);
origin_file('sd-multi.bin', 12 * 1024 * 1024);
my %env = (ASYNC_DL_POLL_INTERVAL => '300ms', ASYNC_DL_PART_SIZE => '5m');

# --- a claim answered after a second SIGTERM -------------------------------------

for my $case ('grace', 'second SIGTERM') {
    my $n = scalar @{ $s->{workers} || [] };
    my $pid = start_worker(%env, ASYNC_DL_SHUTDOWN_GRACE => '20s');
    wait_until(sub { worker_log($n) =~ /connected, listening/ }, 10);
    my $be = backend();
    # the worker's backend stops answering: the next poll's claim waits
    kill 'STOP', $be;
    my $name = "sd-claim.bin?case=" . ($case =~ s/ /-/r);
    my $job = add_job(["$o/slow/$name&rate=64k"]);
    sleep 1.5;                                  # a few polls
    kill 'TERM', $pid;
    if ($case eq 'second SIGTERM') {
        sleep 0.3;
        kill 'TERM', $pid;
        wait_until(sub { worker_log($n) =~ /SIGTERM again/ }, 5);
    }
    sleep 0.5;
    kill 'CONT', $be;
    my $st = wait_exit($pid, 30);
    $s->{workers}[$n]{pid} = 0;
    is($st, 0, "$case: the worker exits 0");
    like(worker_log($n), qr/job=$job file=0 claimed \(attempt 1\)/,
         "$case: the claim answered while stopping");
    like(worker_log($n), qr/job=$job file=0 handed back: shutting down: not started/,
         "$case: the file was handed back at once");
    is(file_row($job), 'pending - 0', "$case: pending, no lease, the claim "
       . 'not counted');
    is(requests_for($name), 0, "$case: no transfer was started");
    unlike(worker_log($n), qr/not recorded/, "$case: everything recorded");
}

# --- a multipart transfer under way, two SIGTERMs ---------------------------------

my $n = scalar @{ $s->{workers} };
my $pid = start_worker(%env, ASYNC_DL_SHUTDOWN_GRACE => '20s');
# without Content-Length, slowly: multipart, still running at the shutdown
my $job = add_job(["$o/slowchunked/sd-multi.bin?rate=2m"]);
ok(wait_until(sub { worker_log($n) =~ /storage: UploadPart .*partNumber=1/ },
              30, 'the first part'), 'multipart: a part is uploading');
kill 'TERM', $pid;
sleep 0.3;
kill 'TERM', $pid;
my $st = wait_exit($pid, 30);
$s->{workers}[$n]{pid} = 0;
is($st, 0, 'multipart: the worker exits 0');
is(file_row($job), 'pending - 0', 'multipart: handed back, the interrupted '
   . 'attempt not counted');
my ($upload) = worker_log($n) =~ /storage: UploadPart \S*uploadId=([^&\s]+)/;
ok($upload, 'multipart: an upload was created');
like(worker_log($n), qr/storage: AbortMultipartUpload \S*uploadId=\Q$upload\E/,
     'multipart: and aborted');
unlike(worker_log($n), qr/not recorded|left unaborted/,
       'multipart: everything recorded and aborted');

# every upload the S3 server has seen was completed or aborted
my @uploads = map { s{.*/}{}r } glob("$s->{dir}/s3/$s->{s3_bucket}/._S3rver_uploads/*");
my $log = worker_log();
my @left = grep { $log !~ /(?:AbortMultipartUpload|CompleteMultipartUpload) \S*uploadId=\Q$_\E/ }
           @uploads;
is("@left", '', 'no multipart upload left behind (of ' . scalar(@uploads)
   . ')');

# nothing left under a lease nobody holds
is(psql("SELECT count(*) FROM async_dl_files WHERE status = 'downloading'"),
   0, 'no file left downloading');

# the next worker does all of it
start_worker(%env);
is(wait_ended($job, 90), 'completed', 'the next worker did the handed-back '
   . 'multipart file');
is(psql("SELECT attempts FROM async_dl_files WHERE job_id = '$job'"), 1,
   'as its attempt 1');
stop_worker('TERM');
done_testing();
