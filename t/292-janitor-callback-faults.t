# The janitor and the callbacks under lost answers and storage trouble
# (issue 9, the class of defects 2, 3 and 20):
# - the janitor's take committed, its answer lost (the worker gave up on
#   the query): the objects are deleted all the same, once the rows' lease
#   ends (before: the rows were gone with the answer, the objects stayed);
# - a storage delete that fails: its row is due again after a backoff, not
#   at once; deleted once the storage answers;
# - a long queue through a storage outage backs off with the time the
#   storage has been down, not with the number of batches it failed (100
#   rows fail in 4 batches a round: that put rows off for 10 minutes),
#   and rows that fail while others succeed (SlowDown) are tried again
#   soon: the queue is empty a few seconds after the storage is back;
# - a callback delivered, its outcome's query lost before it was applied
#   (the worker's backend terminated): recorded as delivered on the next
#   connection, without waiting for the claim's lease, POSTed once.
# Faults are injected in PostgreSQL: a trigger that sleeps once in the
# statement to disturb (a flag row says when).
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use Time::HiRes qw(sleep time);

my $s = adl();
my $o = $s->{origin};
start_nginx(<<'EOF');
location /v1/download/ {
    async_dl;
    async_dl_urls on;
}
EOF
origin_file('j.bin', 4000);

psql(<<'SQL');
CREATE TABLE test_stall (what text PRIMARY KEY, secs float8 NOT NULL);
CREATE FUNCTION test_stall() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE s float8;
BEGIN
    DELETE FROM test_stall WHERE what = TG_ARGV[0] RETURNING secs INTO s;
    IF s IS NOT NULL THEN
        PERFORM pg_sleep(s);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER test_stall_janitor
    AFTER UPDATE OR DELETE ON async_dl_deleted_objects
    FOR EACH STATEMENT EXECUTE FUNCTION test_stall('janitor');
CREATE TRIGGER test_stall_callback
    AFTER UPDATE ON async_dl_jobs FOR EACH ROW
    WHEN (OLD.callback_status = 'pending'
          AND NEW.callback_status = 'delivered')
    EXECUTE FUNCTION test_stall('callback');
SQL

sub job_keys {
    my ($id) = @_;
    return grep { m{^\Q$id\E/} } s3_keys();
}

sub stored_job {
    my $r = initiate({ files => [{ url => "$o/f/j.bin" }] });
    my $id = $r->{json}{jobId};
    wait_job($id, qr/^completed$/);
    is(scalar(job_keys($id)), 1, 'a job stored its file');
    return $id;
}

# --- the janitor's take: committed, answer lost -------------------------------

# a 3 s lease: the worker gives a query up after 1.5 s, the trigger holds
# the take for 4 s, then it commits
start_worker(ASYNC_DL_LEASE => '3s', ASYNC_DL_POLL_INTERVAL => '300ms');
my $id = stored_job();
psql("INSERT INTO test_stall VALUES ('janitor', 4)");
is(request('DELETE', "/v1/download/$id")->{status}, 204, 'DELETE');
ok(wait_until(sub { worker_log() =~ /connection lost: no answer to a query in time/ }, 20),
   'the worker lost the answer of the take');
ok(wait_until(sub { psql("SELECT count(*) FROM test_stall") == 0 }, 10),
   'the take ran on, and committed');
ok(wait_until(sub { job_keys($id) == 0 }, 30, 'the object to go'),
   'the object is deleted all the same');
ok(wait_until(sub { psql("SELECT count(*) FROM async_dl_deleted_objects") == 0 }, 10),
   'and its row removed');

# --- a storage delete that fails: backoff ---------------------------------------

stop_worker();
start_worker(ASYNC_DL_RETRY_BASE => '6s', ASYNC_DL_POLL_INTERVAL => '300ms',
             ASYNC_DL_IDLE_TIMEOUT => '2s');
$id = stored_job();
kill 'STOP', $s->{s3_pid};
is(request('DELETE', "/v1/download/$id")->{status}, 204, 'DELETE');
ok(wait_until(sub { worker_log(1) =~ /janitor: 1 of 1 object\(s\) not deleted: tried again in \d+ ms/ }, 30),
   'the failed delete is to be tried again later');
is(psql("SELECT (deleted_at > now())::text FROM async_dl_deleted_objects "
        . "WHERE job_id = '$id'"), 'true', 'its row is not due before then');
kill 'CONT', $s->{s3_pid};
ok(wait_until(sub { job_keys($id) == 0 }, 40, 'the object to go'),
   'deleted once the storage answers');
ok(wait_until(sub { psql("SELECT count(*) FROM async_dl_deleted_objects") == 0 }, 10),
   'and its row removed');

# --- a long queue through an outage, then SlowDown ----------------------------------

stop_worker();
my $ep = s3_proxy();
start_worker(ASYNC_DL_S3_ENDPOINT => $ep, ASYNC_DL_RETRY_BASE => '200ms',
             ASYNC_DL_POLL_INTERVAL => '300ms');
s3_fault('down');
# objects that are not there: a DeleteObject of them succeeds
psql("INSERT INTO async_dl_deleted_objects (job_id, object_key) SELECT "
     . "gen_random_uuid(), 'gone/' || g FROM generate_series(1, 100) g");
psql("NOTIFY async_dl_deleted");
sleep 8;
ok(psql("SELECT count(*) FROM async_dl_deleted_objects") == 100,
   '100 objects queued while the storage is down');
my $max = psql("SELECT extract(epoch FROM max(deleted_at) - now()) FROM "
               . "async_dl_deleted_objects");
cmp_ok($max, '<', 15, sprintf('after 8 s down, none is put off for more '
                              . 'than 15 s (%.1f s)', $max));
s3_faults({ fault => 'slowdown', rate => 0.5, retry_after => 0 });
# (the bound leaves room for a machine busy with other test files: a pass
# with any failure doubles the next wait, up to the lease)
my $t0 = time;
ok(wait_until(sub { psql("SELECT count(*) FROM async_dl_deleted_objects") == 0 },
              $max + 45, 'the queue to empty'),
   'the storage back, half its answers SlowDown: the queue empties soon');
diag(sprintf('emptied in %.1f s', time - $t0));
s3_fault('pass');

# --- a callback's outcome lost before it was applied -----------------------------

stop_worker();
start_worker(ASYNC_DL_POLL_INTERVAL => '300ms');
psql("INSERT INTO test_stall VALUES ('callback', 10)");
my $r = initiate({ files => [{ url => "$o/f/j.bin" }],
                   callback_url => "$s->{flaky}/callback/lost" });
$id = $r->{json}{jobId};
my $pid;
ok(wait_until(sub {
       $pid = psql("SELECT pid FROM pg_stat_activity WHERE application_name "
                   . "= 'async-dl-worker' AND wait_event = 'PgSleep'");
       return $pid =~ /^\d+$/;
   }, 30), 'the outcome is being recorded (and held)');
is(psql("SELECT pg_terminate_backend($pid)"), 't',
   'its backend is terminated: the outcome is not applied');
ok(wait_until(sub { psql("SELECT callback_status FROM async_dl_jobs WHERE "
                         . "id = '$id'") eq 'delivered' }, 15),
   'recorded as delivered on the next connection');
my $posts = request('GET', "$s->{flaky}/requests/lost")->{content};
is($posts =~ s/\s+//gr, '1', 'POSTed once');

my @errors = grep { /\[error\]/ && !/database: connection lost/ }
             split /\n/, worker_log();
is(scalar(@errors), 0, 'no error logged but the connections lost')
    or diag(join "\n", @errors);

done_testing();
