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
use AsyncDL::Race;
use AsyncDL::SSE;
use JSON::PP;
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

ok(wait_until(sub { worker_log() =~ /job=$job file=0 handed back: the job was paused/ }, 10),
   'the worker handed the transfer back');
# timed on the server's clocks: the database's at the pause, the worker's
# log line's at the hand-back (both this machine's)
my ($back_at) = worker_log() =~ /^(\S+) \[\w+\] job=$job file=0 handed back: the job was paused/m;
my $pause_delay = psql("SELECT extract(epoch FROM '$back_at'::timestamptz - "
                       . "'$r->{json}{pausedAt}'::timestamptz)");
cmp_ok($pause_delay, '<', 1, sprintf('within a second of the pause (%.3f s)', $pause_delay));
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

# the list filters on the status it shows
sub listed {
    my ($status, $h) = @_;
    my $l = request('GET', "${P}jobs?status=$status", $h || \%alice);
    return $l->{status} == 200
        ? join(',', map { "$_->{jobId} $_->{status}" } @{ $l->{json}{jobs} }) . " total $l->{json}{total}"
        : "HTTP $l->{status}";
}
is(listed('paused'), "$job paused total 1", 'list ?status=paused: the paused job, shown paused');
is(listed('processing'), ' total 0', 'list ?status=processing: not the paused job');
is(listed('queued'), ' total 0', 'list ?status=queued: nor there');
is(listed('paused', \%bob), ' total 0', "list ?status=paused: not another owner's");
$r = request('GET', "${P}jobs?status=pausedx", \%alice);
is($r->{status}, 400, 'list ?status=pausedx: 400');
like($r->{json}{error}{message} // '', qr/paused/, '  the message names paused');

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
is(listed('paused'), ' total 0', 'list ?status=paused: none once resumed');
is(listed('processing'), "$job processing total 1", '  listed as processing again');
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

# --- pauses racing claims and workers: two sessions -------------------------
stop_worker();
sub files_of {
    my ($j) = @_;
    return psql("SELECT string_agg(status || ' ' || attempts || ' ' "
                . "|| (next_attempt_at = 'infinity'), ',' ORDER BY idx) "
                . "FROM async_dl_files WHERE job_id = '$j'");
}

# a pause that commits after a claim picked the file and before it locked
# it: the claim's pick is made to sleep after it picked
my $j4 = add_job(["$o/f/big.bin"], owner => 'carol');
psql("ALTER FUNCTION async_dl_claim_pick(integer, integer, integer) "
     . "RENAME TO async_dl_claim_pick_real");
psql("CREATE TABLE claim_picked (j uuid, i integer)");
psql(q{CREATE FUNCTION async_dl_claim_pick(p_n integer, p_host_limit integer,
                                          p_owner_limit integer)
RETURNS TABLE (job_id uuid, idx integer) LANGUAGE plpgsql ROWS 16 AS $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT * FROM async_dl_claim_pick_real(p_n, p_host_limit,
                                                    p_owner_limit)
    LOOP
        INSERT INTO claim_picked VALUES (r.job_id, r.idx);
        job_id := r.job_id;
        idx := r.idx;
        RETURN NEXT;
    END LOOP;
    PERFORM pg_sleep(5);
END $$});
my $pid = fork // die;
if ($pid == 0) {
    my $n = psql("SELECT count(*) FROM async_dl_claim('w1', 5, '1 minute', 5)");
    open my $fh, '>', "$s->{dir}/claim.out" or die;
    print $fh $n;
    close $fh;
    POSIX::_exit(0);
}
ok(wait_until(sub { psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
                         . "AND query LIKE '%async_dl_claim(%'") == 1 }, 5),
   "session B's claim has picked and sleeps before its lock");
is(psql("SELECT async_dl_job_pause('$j4', 'carol', true)"), 'paused',
   'session A pauses while session B\'s claim sits between its pick and its lock');
waitpid $pid, 0;
is(psql("SELECT count(*) FROM claim_picked WHERE j = '$j4'"), 1, "session B had picked the file");
is(AsyncDL::Stack::slurp("$s->{dir}/claim.out"), '0', 'session B claims nothing');
is(files_of($j4), 'pending 0 true', 'the file stays pending, held');
psql("DROP FUNCTION async_dl_claim_pick(integer, integer, integer)");
psql("ALTER FUNCTION async_dl_claim_pick_real(integer, integer, integer) "
     . "RENAME TO async_dl_claim_pick");
psql("DROP TABLE claim_picked");
is(psql("SELECT count(*) FROM async_dl_claim('w1', 5, '1 minute', 5) WHERE job_id = '$j4'"), 0,
   'a claim after the pause takes nothing of the job');
is(psql("SELECT async_dl_job_pause('$j4', 'carol', false)"), 'resumed', 'resumed');
is(psql("SELECT count(*) FROM async_dl_claim('w1', 5, '1 minute', 5) WHERE job_id = '$j4'"), 1,
   'a claim after the resume takes the file');

# pause, then resume at once, before the live worker's hand-back lands:
# the hand-back is taken (its attempt not counted), nothing fails
my $lease = psql("SELECT lease_owner FROM async_dl_files WHERE job_id = '$j4'");
is(psql("SELECT async_dl_job_pause('$j4', 'carol', true)"), 'paused', 'paused while claimed');
is(psql("SELECT coalesce(async_dl_file_progress('$j4', 0, '$lease', '1 minute', 10, 100, 1)::text, 'null')"),
   'null', 'a progress report while paused renews, and answers NULL: paused (a worker that '
   . 'missed the notification hands the file back)');
is(psql("SELECT async_dl_job_pause('$j4', 'carol', false)"), 'resumed', 'resumed at once');
is(psql("SELECT count(*) FROM async_dl_claim('w2', 5, '1 minute', 5) WHERE job_id = '$j4'"), 0,
   'a claim does not take over the live lease');
is(psql("SELECT async_dl_file_finish('$j4', 0, '$lease', 'pending', NULL, NULL, NULL, "
        . "NULL, 0, NULL, NULL, now())"), 't', "the worker's late hand-back is taken");
is(files_of($j4), 'pending 0 false', '  pending and due, not held');
is(psql("SELECT status FROM async_dl_jobs WHERE id = '$j4'"), 'processing', '  the job goes on');

# a worker that died holding a paused job's file: its lease runs out, the
# claim holds the file (not passed on, the attempt not counted) and frees
# its host's slot for another owner
my $c1 = add_job(["$o/f/big.bin?c1"], owner => 'carol');
psql("DELETE FROM async_dl_jobs WHERE id = '$j4'");
is(psql("SELECT count(*) FROM async_dl_claim('w1', 1, '1 minute', 5, NULL, 1) WHERE job_id = '$c1'"), 1,
   "carol's file claimed (1 a host)");
my $l1 = psql("SELECT lease_owner FROM async_dl_files WHERE job_id = '$c1'");
psql("SELECT async_dl_file_progress('$c1', 0, '$l1', '1 minute', 4096, NULL, 1)");
is(psql("SELECT bytes_done FROM async_dl_jobs WHERE id = '$c1'"), 4096, 'it reported 4096 bytes');
is(psql("SELECT async_dl_job_pause('$c1', 'carol', true)"), 'paused', 'paused; its worker died');
my $c2 = add_job(["$o/f/big.bin?c2"], owner => 'dave');
is(psql("SELECT count(*) FROM async_dl_claim('w2', 1, '1 minute', 5, NULL, 1)"), 0,
   "dave's file on the same host waits while the lease runs");
psql("UPDATE async_dl_files SET lease_until = now() - interval '1 second' WHERE job_id = '$c1'");
is(psql("SELECT string_agg(job_id::text, ',') FROM async_dl_claim('w2', 1, '1 minute', 5, NULL, 1)"), $c2,
   "once it ran out, the next claim takes dave's file, not carol's");
is(files_of($c1), 'pending 0 true', "carol's file is pending, held, the attempt not counted");
is(psql("SELECT bytes_done FROM async_dl_jobs WHERE id = '$c1'"), 0, '  and its bytes are back to 0');
psql("DELETE FROM async_dl_jobs WHERE id IN ('$c1', '$c2')");

# a file waiting out a retry's backoff keeps it across a pause: the resume
# makes it due when it would have been, whichever of the worker's failed
# attempt and the resume commits first (two sessions)
sub due_in {
    my ($j) = @_;
    return psql("SELECT CASE WHEN next_attempt_at = 'infinity' THEN 'held' "
                . "ELSE round(extract(epoch FROM next_attempt_at - now()))::text END "
                . "FROM async_dl_files WHERE job_id = '$j'");
}
for my $first ('failure', 'resume') {
    # failure first: the hand-back is held (keeping its due time), and the
    # resume, waiting for it, makes it due then.  resume first: the
    # hand-back, waiting for the resume, is not held (it would wait for
    # ever) and is due when its backoff ends.
    my $b = add_job(["$o/f/big.bin?b$first"], owner => 'carol');
    is(psql("SELECT count(*) FROM async_dl_claim('w1', 1, '1 minute', 5) WHERE job_id = '$b'"), 1,
       "backoff ($first first): claimed");
    my $l = psql("SELECT lease_owner FROM async_dl_files WHERE job_id = '$b'");
    is(psql("SELECT async_dl_job_pause('$b', 'carol', true)"), 'paused', '  paused');
    my $fail = "SELECT async_dl_file_finish('$b', 0, '$l', 'pending', NULL, NULL, NULL, "
             . "NULL, 1, 'ORIGIN_503', 'busy', now() + interval '30 seconds')";
    my $resume = "SELECT async_dl_job_pause('$b', 'carol', false)";
    my $a = psql_open($first eq 'failure' ? $fail : $resume);
    ok(psql_in_transaction(1, 5), "  session A's \u$first is done, not committed");
    my $kid = fork // die;
    if ($kid == 0) {
        psql($first eq 'failure' ? $resume : $fail);
        POSIX::_exit(0);
    }
    ok(wait_until(sub { psql_lock_waiters('%async_dl_%') == 1 }, 5),
       "  session B waits for A's lock");
    psql_commit($a);
    waitpid $kid, 0;
    is(psql("SELECT paused_at IS NULL FROM async_dl_jobs WHERE id = '$b'"), 't', '  resumed');
    is(files_of($b), 'pending 1 false', '  the file pending, not held');
    like(due_in($b), qr/^(1\d|2\d|30)$/, '  due when its backoff ends, 30 s on, not at the resume');
    my $doc = JSON::PP->new->decode(psql("SELECT async_dl_job_status('$b', 'carol', '/p/')"));
    is($doc->{files}[0]{waiting}, 'retry', '  its document says it waits for a retry');
    is(psql("SELECT count(*) FROM async_dl_claim('w2', 5, '1 minute', 5) WHERE job_id = '$b'"), 0,
       '  no claim takes it before then');
    psql("DELETE FROM async_dl_jobs WHERE id = '$b'");
}

# a file already waiting out its backoff when the job is paused keeps it:
# resumed before it ends, due when it ends; resumed after, due at once
my $b2 = add_job(["$o/f/big.bin?b2"], owner => 'carol');
psql("SELECT count(*) FROM async_dl_claim('w1', 1, '1 minute', 5) WHERE job_id = '$b2'");
my $l2 = psql("SELECT lease_owner FROM async_dl_files WHERE job_id = '$b2'");
psql("SELECT async_dl_file_finish('$b2', 0, '$l2', 'pending', NULL, NULL, NULL, "
     . "NULL, 1, 'ORIGIN_503', 'busy', now() + interval '30 seconds')");
is(psql("SELECT async_dl_job_pause('$b2', 'carol', true)"), 'paused', 'a file in its backoff paused');
is(due_in($b2), 'held', '  held');
like(psql("SELECT round(extract(epoch FROM held_due - now())) FROM async_dl_files "
          . "WHERE job_id = '$b2'"), qr/^(2[789]|30)$/, '  keeping when it is due');
is(psql("SELECT async_dl_job_pause('$b2', 'carol', false)"), 'resumed', '  resumed before then');
like(due_in($b2), qr/^(2[789]|30)$/, '  due when its backoff ends');
is(psql("SELECT async_dl_job_pause('$b2', 'carol', true)"), 'paused', '  paused again');
psql("UPDATE async_dl_files SET held_due = now() - interval '1 second' WHERE job_id = '$b2'");
is(psql("SELECT async_dl_job_pause('$b2', 'carol', false)"), 'resumed', '  resumed after its backoff ended');
is(due_in($b2), '0', '  due at once');
is(psql("SELECT count(*) FROM async_dl_claim('w2', 5, '1 minute', 5) WHERE job_id = '$b2'"), 1,
   '  and claimed');
psql("DELETE FROM async_dl_jobs WHERE id = '$b2'");

# the list's filter on a paused job still queued (no worker has claimed it)
my $q = add_job(["$o/f/big.bin?q"], owner => 'erin');
sub erin_list {
    my ($status) = @_;
    my $l = JSON::PP->new->decode(psql("SELECT async_dl_job_list('erin', '/p/', '$status', 20, 0, NULL)"));
    return join(',', map { "$_->{jobId} $_->{status}" } @{ $l->{jobs} }) . " total $l->{total}";
}
is(erin_list('queued'), "$q queued total 1", 'a queued job is listed as queued');
is(psql("SELECT async_dl_job_pause('$q', 'erin', true)"), 'paused', '  paused');
is(erin_list('queued'), ' total 0', '  not listed as queued once paused');
is(erin_list('paused'), "$q paused total 1", '  listed as paused');
psql("DELETE FROM async_dl_jobs WHERE id = '$q'");

# a multi-file job whose files all end while paused is not shown paused
my $d = add_job(["$o/f/big.bin?d0", "$o/f/big.bin?d1"], owner => 'carol');
is(psql("SELECT count(*) FROM async_dl_claim('w1', 2, '1 minute', 5) WHERE job_id = '$d'"), 2,
   'both files of a job claimed');
is(psql("SELECT async_dl_job_pause('$d', 'carol', true)"), 'paused', 'paused');
for my $i (0, 1) {
    my $l = psql("SELECT lease_owner FROM async_dl_files WHERE job_id = '$d' AND idx = $i");
    psql("SELECT async_dl_file_finish('$d', $i, '$l', 'completed', 5, 'x/y', '"
         . ('ab' x 32) . "', 'k$i', 1, NULL, NULL, NULL)");
}
my $doc = JSON::PP->new->decode(psql("SELECT async_dl_job_status('$d', 'carol', '/p/')"));
is($doc->{status}, 'processing', 'its files ended while paused: processing (its zip is due), not paused');
is($doc->{pausedAt}, undef, '  no pausedAt');

# pause and cancel racing: whichever commits first, the job ends canceled
# and nothing is left held
my $j5 = add_job(["$o/f/big.bin"], owner => 'carol');
my $a = psql_open("SELECT async_dl_job_pause('$j5', 'carol', true)");
ok(psql_in_transaction(1, 5), "session A's pause is done, not committed");
$pid = fork // die;
if ($pid == 0) { psql("SELECT async_dl_job_cancel('$j5', 'carol')"); POSIX::_exit(0) }
ok(wait_until(sub { psql_lock_waiters('%async_dl_%') == 1 }, 5),
   "  session B's cancel waits for it");
psql_commit($a);
waitpid $pid, 0;
is(psql("SELECT status FROM async_dl_jobs WHERE id = '$j5'"), 'canceled',
   'a cancel waiting on a pause cancels after it');
is(psql("SELECT string_agg(status, ',') FROM async_dl_files WHERE job_id = '$j5'"), 'canceled',
   '  its file canceled');
is(psql("SELECT async_dl_job_pause('$j5', 'carol', false)"), 'canceled', 'resume of it: its status');

unlike(nginx_log(), qr/\[alert\]|\[emerg\]/, 'no [alert] in nginx');
done_testing();
