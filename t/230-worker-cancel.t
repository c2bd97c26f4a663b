# Cancel and DELETE stop a job's transfers within a second; DELETE also
# removes the stored objects.  SIGTERM: no new claims, in-flight work
# finishes or is handed back within the grace period, exit 0.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use Time::HiRes qw(time sleep);

my $s = adl();
my $o = $s->{origin};

# A transfer of a canceled job stops on the NOTIFY ("stopped: the job was
# canceled"), or on the answer of a progress write that was in flight
# across the cancel ("stopped: the file is no longer ours"), whichever the
# worker reads first.
sub stopped_lines {
    my ($job) = @_;
    my @ts = worker_log() =~ /^(\S+) \[info\] job=$job file=\d+ stopped: /mg;
    return @ts;                     # their times; their number in scalar
}

# seconds from the database's clock at the cancel to the worker's log line
# saying it stopped the last of the transfers (both clocks are this
# machine's)
sub stop_delay {
    my ($job, $at) = @_;
    my @ts = stopped_lines($job) or return 99;
    my $ts = $ts[-1];
    return psql("SELECT extract(epoch FROM '$ts'::timestamptz - "
                . "'$at'::timestamptz)");
}

sub under_way {
    my ($job) = @_;
    return wait_until(sub {
        psql("SELECT coalesce(sum(bytes_done), 0) FROM async_dl_files WHERE "
             . "job_id = '$job'") > 0
    }, 10, "job $job to make progress");
}

origin_file('long.bin', 8 * 1024 * 1024);
start_worker();

# --- cancel ---------------------------------------------------------------------

my $job = add_job(["$o/slow/long.bin?rate=200k", "$o/slow/long.bin?rate=200k"]);
ok(under_way($job), 'cancel: transfers under way');
my ($st, $at) = split /\|/, psql("SELECT async_dl_job_cancel('$job', ''), "
                                 . "clock_timestamp()");
is($st, 'canceled', 'canceled');
ok(wait_until(sub { stopped_lines($job) == 2 }, 2),
   'cancel: the worker stopped both transfers');
cmp_ok(stop_delay($job, $at), '<', 1, 'cancel: within a second');
sleep 0.5;
is(psql("SELECT string_agg(status, ',') FROM async_dl_files WHERE job_id = "
        . "'$job'"), 'canceled,canceled', 'cancel: files stay canceled');
is(scalar(grep { index($_, $job) == 0 } s3_keys()), 0,
   'cancel: nothing stored');

# --- DELETE: transfers stopped, stored objects removed -----------------------

{
    my $done = add_job(["$o/files/70001", "$o/files/70002"]);
    ok(wait_until(sub { job_status($done) eq 'completed' }, 10),
       'delete: a completed job');
    my @keys = grep { m{^\Q$done\E/\d+/} } s3_keys();
    is(scalar @keys, 2, 'delete: with two stored files (and maybe its zip)');
    psql("SELECT async_dl_job_delete('$done', '')");
    ok(wait_until(sub { !grep { index($_, $done) == 0 } s3_keys() }, 5),
       'delete: the worker removed the stored objects');

    $job = add_job(["$o/slow/long.bin?rate=200k"]);
    ok(under_way($job), 'delete: a transfer under way');
    my $when = psql("SELECT async_dl_job_delete('$job', ''), "
                    . "clock_timestamp()");
    $when =~ s/^[^|]*\|//;
    ok(wait_until(sub { stopped_lines($job) == 1 }, 2)
       && stop_delay($job, $when) < 1,
       'delete: its transfer stopped within a second');
}

# --- SIGTERM: a short transfer finishes within the grace ------------------------

stop_worker('TERM');
start_worker(ASYNC_DL_SHUTDOWN_GRACE => '10s');
origin_file('short.bin', 1024 * 1024);
$job = add_job(["$o/slow/short.bin?rate=1m"]);
ok(wait_until(sub { job_status($job) eq 'processing' }, 10), 'TERM: claimed');
$st = stop_worker('TERM');
is($st, 0, 'TERM: exit 0');
is(job_status($job), 'completed', 'TERM: the transfer finished first');

# --- SIGTERM: a long one is handed back after the grace --------------------------

start_worker(ASYNC_DL_SHUTDOWN_GRACE => '1s');
$job = add_job(["$o/slow/long.bin?rate=1m"]);
ok(under_way($job), 'TERM: a long transfer under way');
my $t0 = time;
$st = stop_worker('TERM');
is($st, 0, 'TERM: exit 0');
cmp_ok(time - $t0, '<', 6, 'TERM: within the grace period (and a bit)');
is(psql("SELECT status || ' ' || (lease_owner IS NULL)::text FROM "
        . "async_dl_files WHERE job_id = '$job'"), 'pending true',
   'TERM: the file was handed back');
like(worker_log(2), qr/job=$job file=0 handed back/, 'TERM: logged');

my $new = add_job(["$o/f/long.bin"]);
start_worker();
ok(wait_until(sub { job_status($job) eq 'completed' }, 20),
   'TERM: the next worker did the handed-back file');
ok(wait_until(sub { job_status($new) eq 'completed' }, 10),
   'TERM: and what was queued meanwhile');

unlike(worker_log(), qr/\[error\]/, 'no [error] in the worker logs');
done_testing();
