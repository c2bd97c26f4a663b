# Pause and resume: POST {p}{id}/pause stops the job's transfers within a
# second (the worker hands them back; their files wait, not due, until the
# resume), its deadline stops running, the documents and the streams say
# "paused"; POST {p}{id}/resume lets them go on, and the job ends with the
# origin's bytes.  Idempotent both ways; owner-scoped; a paused job can be
# canceled and deleted.  A pause racing a claim and a cancel, driven with
# two PostgreSQL sessions.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use AsyncDL::SSE;
use IO::Handle;
use Time::HiRes qw(time sleep);

my $s = adl();
my $o = $s->{origin};
my %alice = ('X-User' => 'alice');
my %bob = ('X-User' => 'bob');
my $P = '/v1/download/';

start_nginx(<<'EOF2');
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
}
EOF2

my $size = 24 * 1024 * 1024;
origin_file('big.bin', $size);
my $want = file_sha256("$s->{dir}/origin/f/big.bin");
start_worker();

sub done_bytes {
    my ($job) = @_;
    return psql("SELECT coalesce(sum(bytes_done), 0) FROM async_dl_files WHERE job_id = '$job'");
}

sub post { my ($what, $job, $h) = @_; return request('POST', "$P$job/$what", $h || \%alice) }

# --- a running job: pause, wait, resume, complete ---------------------------
my $r = initiate({ files => [{ url => "$o/slow/big.bin?rate=4m", name => 'big.bin' }],
                   timeout => 120 }, \%alice);
is($r->{status}, 202, 'initiated');
my $job = $r->{json}{jobId};
my $st = sse_open("${P}stream/$job", \%alice);
is($st->next_event(5)->{event}, 'connected', 'stream: connected');

ok(wait_until(sub { done_bytes($job) > 2 * 1024 * 1024 }, 20), 'the transfer is under way');
my $left0 = psql("SELECT extract(epoch FROM deadline - now()) FROM async_dl_jobs WHERE id = '$job'");
my $t0 = time;
$r = post('pause', $job);
is($r->{status}, 200, 'pause: 200');
is($r->{json}{status}, 'paused', 'pause: the document says paused');
like($r->{json}{pausedAt} // '', qr/^\d{4}-\d\d-\d\dT/, 'pause: pausedAt');
is($r->{json}{files}[0]{status}, 'paused', 'pause: its file is paused');
is($r->{json}{files}[0]{waiting}, undef, 'pause: a paused file waits for nothing else');

ok(wait_until(sub { worker_log() =~ /job=$job file=0 handed back: the job was paused/ }, 2),
   'the worker handed the transfer back');
cmp_ok(time - $t0, '<', 1.5, 'within a second of the answer (and the poll)');
ok(wait_until(sub {
    psql("SELECT status || ' ' || (next_attempt_at = 'infinity') FROM async_dl_files "
         . "WHERE job_id = '$job'") eq 'pending true' }, 3),
   'the file waits, not due');
my $b1 = done_bytes($job);
sleep 1.5;
is(done_bytes($job), $b1, 'nothing moves while paused');
is(psql("SELECT deadline = 'infinity' FROM async_dl_jobs WHERE id = '$job'"), 't',
   'the deadline does not run while paused');
is(psql("SELECT async_dl_sweep_deadlines()"), 0, 'the deadline sweep leaves it');

$r = post('pause', $job);
is($r->{status}, 200, 'pause again: 200 (idempotent)');
is($r->{json}{status}, 'paused', '  still paused');
is(request('GET', "${P}status/$job", \%alice)->{json}{status}, 'paused', 'status: paused');
is(post('pause', $job, \%bob)->{status}, 404, "another owner's pause: 404");
is(post('resume', $job, \%bob)->{status}, 404, "another owner's resume: 404");
is(post('pause', '00000000-0000-4000-8000-000000000000')->{status}, 404, 'no such job: 404');

my @evs = $st->until_event(qr/^paused$/, 5);
ok(@evs && $evs[-1]{event} eq 'paused', 'stream: a "paused" event');
is($evs[-1]{json}{status}, 'paused', '  with the job paused');

my $paused_for = time - $t0;
$r = post('resume', $job);
is($r->{status}, 200, 'resume: 200');
isnt($r->{json}{status}, 'paused', "resume: the job is $r->{json}{status}");
is($r->{json}{pausedAt}, undef, 'resume: no pausedAt');
my $left1 = psql("SELECT extract(epoch FROM deadline - now()) FROM async_dl_jobs WHERE id = '$job'");
cmp_ok(abs($left1 - $left0), '<', 2,
       sprintf('the deadline moved by the pause: %.1f s left before, %.1f s after %.1f s paused',
               $left0, $left1, $paused_for));
is(post('resume', $job)->{status}, 200, 'resume again: 200 (idempotent)');
@evs = $st->until_event(qr/^(resumed|completed|failed)$/, 5);
ok(@evs && $evs[-1]{event} eq 'resumed', 'stream: a "resumed" event');

@evs = $st->until_event(qr/^(completed|failed|canceled)$/, 60);
is(@evs ? $evs[-1]{event} : '', 'completed', 'the job completes after the resume');
my ($key, $sha) = split /\|/, psql("SELECT object_key, sha256 FROM async_dl_files WHERE job_id = '$job'");
is($sha, $want, "the recorded SHA-256 is the origin's");
is(sha256_hex(s3_object($key) // ''), $want, "the stored object is the origin's file");

# --- an ended job: 409; a paused job can be canceled and deleted -------------
$r = post('pause', $job);
is($r->{status}, 409, 'pause of a completed job: 409');
is($r->{json}{error}{code}, 'JOB_FINISHED', '  JOB_FINISHED');
is(post('resume', $job)->{status}, 409, 'resume of a completed job: 409');

my $j2 = initiate({ files => [{ url => "$o/slow/big.bin?rate=1m" }] }, \%alice)->{json}{jobId};
ok(wait_until(sub { done_bytes($j2) > 0 }, 20), 'a second job under way');
is(post('pause', $j2)->{status}, 200, 'paused');
$r = post('cancel', $j2);
is($r->{status}, 200, 'a paused job can be canceled');
is($r->{json}{status}, 'canceled', '  canceled (not paused)');
is($r->{json}{files}[0]{status}, 'canceled', '  its file canceled');
is($r->{json}{pausedAt}, undef, '  no pausedAt once ended');

my $j3 = initiate({ files => [{ url => "$o/slow/big.bin?rate=1m" }] }, \%alice)->{json}{jobId};
is(post('pause', $j3)->{status}, 200, 'a queued job paused');
is(request('DELETE', "$P$j3", \%alice)->{status}, 204, 'a paused job can be deleted');

# --- a pause racing a claim: two sessions ------------------------------------
stop_worker();
my $j4 = add_job(["$o/f/big.bin"], owner => 'carol');
open my $a, '|-', 'psql', '-X', '-q', '-h', '127.0.0.1', '-p', $s->{pg_port}, '-U', 'postgres',
    '-d', 'postgres' or die;
$a->autoflush(1);
print $a "BEGIN; SELECT async_dl_job_pause('$j4', 'carol', true);\n";
ok(wait_until(sub {
    psql("SELECT count(*) FROM pg_locks l JOIN async_dl_jobs j ON true WHERE j.id = '$j4' "
         . "AND l.relation = 'async_dl_jobs'::regclass AND l.mode = 'RowShareLock' "
         . "AND l.pid <> pg_backend_pid()") > 0 }, 5), 'session A holds the pause open');
is(psql("SELECT count(*) FROM async_dl_claim('w1', 5, '1 minute', 5) WHERE job_id = '$j4'"), 0,
   'session B: a claim during the pause takes nothing of the job');
print $a "COMMIT;\n";
close $a;
is(psql("SELECT paused_at IS NOT NULL FROM async_dl_jobs WHERE id = '$j4'"), 't', 'the pause committed');
is(psql("SELECT count(*) FROM async_dl_claim('w1', 5, '1 minute', 5) WHERE job_id = '$j4'"), 0,
   'a claim after the pause takes nothing of the job');
is(psql("SELECT async_dl_job_pause('$j4', 'carol', false)"), 'resumed', 'resumed');
is(psql("SELECT count(*) FROM async_dl_claim('w1', 5, '1 minute', 5) WHERE job_id = '$j4'"), 1,
   'a claim after the resume takes the file');

# a claimed file whose job is paused: its lease does not run out (its
# worker may have died), renewals keep it so, and no claim takes it over;
# the resume lets it run out and a claim takes it over
is(psql("SELECT async_dl_job_pause('$j4', 'carol', true)"), 'paused', 'paused while claimed');
is(psql("SELECT lease_until = 'infinity' FROM async_dl_files WHERE job_id = '$j4'"), 't',
   'the lease of a paused job does not run out');
my $lease = psql("SELECT lease_owner FROM async_dl_files WHERE job_id = '$j4'");
is(psql("SELECT async_dl_file_progress('$j4', 0, '$lease', '1 minute', 10, 100, 1)"), 't',
   'its worker renews it');
is(psql("SELECT lease_until = 'infinity' FROM async_dl_files WHERE job_id = '$j4'"), 't',
   '  and it still does not run out');
is(psql("SELECT count(*) FROM async_dl_claim('w2', 5, '1 minute', 5) WHERE job_id = '$j4'"), 0,
   'no claim takes it over while paused');
is(psql("SELECT async_dl_job_pause('$j4', 'carol', false)"), 'resumed', 'resumed');
is(psql("SELECT lease_until <= now() FROM async_dl_files WHERE job_id = '$j4'"), 't',
   'the resume lets the lease run out');
is(psql("SELECT count(*) FROM async_dl_claim('w2', 5, '1 minute', 5) WHERE job_id = '$j4'"), 1,
   'a claim takes it over');
is(psql("SELECT lease_until < 'infinity' FROM async_dl_files WHERE job_id = '$j4'"), 't',
   '  with a lease that runs');

# pause and cancel racing: whichever commits first, the job ends canceled
# and nothing is left held
my $j5 = add_job(["$o/f/big.bin"], owner => 'carol');
open $a, '|-', 'psql', '-X', '-q', '-h', '127.0.0.1', '-p', $s->{pg_port}, '-U', 'postgres',
    '-d', 'postgres' or die;
$a->autoflush(1);
print $a "BEGIN; SELECT async_dl_job_pause('$j5', 'carol', true);\n";
sleep 0.3;
my $pid = fork // die;
if ($pid == 0) { psql("SELECT async_dl_job_cancel('$j5', 'carol')"); POSIX::_exit(0) }
sleep 0.3;
print $a "COMMIT;\n";
close $a;
waitpid $pid, 0;
is(psql("SELECT status FROM async_dl_jobs WHERE id = '$j5'"), 'canceled',
   'a cancel waiting on a pause cancels after it');
is(psql("SELECT string_agg(status, ',') FROM async_dl_files WHERE job_id = '$j5'"), 'canceled',
   '  its file canceled');
is(psql("SELECT async_dl_job_pause('$j5', 'carol', false)"), 'canceled', 'resume of it: its status');

unlike(nginx_log(), qr/\[alert\]|\[emerg\]/, 'no [alert] in nginx');
done_testing();
