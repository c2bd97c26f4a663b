# Two (or more) sessions racing to claim the same due callback
# (async_dl_callback_claim, FOR UPDATE SKIP LOCKED, a lease per claim): the
# callback is claimed once, its attempt counted once, and delivered once.
#
# - interleaved: A claims and holds its transaction open, B claims
#   meanwhile: B skips it (without waiting for A), and after A's commit
#   the lease keeps it A's, also for a B whose transaction began earlier;
# - two sessions released by the same lock at once, 20 rounds: each
#   round's callback claimed by exactly one of them;
# - a claim whose lease ran out is claimed again (the attempt counted
#   again); the first claim's late outcome is refused, the second's
#   recorded;
# - many sessions claiming in a loop, each claim its own transaction:
#   every callback claimed by exactly one of them, once, no deadlock;
# - three real workers, listening, woken at once by the commit that makes
#   20 callbacks due (each answered 500 once, then 200): each hook gets
#   exactly two POSTs, and each callback is recorded delivered once.
# (Each claim takes any due callback up to its limit: a race is set up
# with only its own callbacks due.)
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use AsyncDL::Race;
use Time::HiRes qw(sleep time);

my $s = adl();

# $n single-file jobs, canceled in the same transaction: each gets its
# callback, all due at once (and the workers woken) at the commit.  {n} in
# $url is the job's number.  Returns their ids.
my $batch = 0;
sub due_callbacks {
    my ($n, $url) = @_;
    my $owner = 'race-' . ++$batch;
    my $ids = psql(<<"SQL");
BEGIN;
WITH j AS (
    INSERT INTO async_dl_jobs (owner, total_files, timeout_ms, deadline,
                               callback_url)
    SELECT '$owner', 1, 60000, now() + interval '60 seconds',
           replace('$url', '{n}', n::text)
      FROM generate_series(1, $n) n
    RETURNING id)
INSERT INTO async_dl_files (job_id, idx, url) SELECT id, 0, 'http://x/0' FROM j;
SELECT j.id FROM async_dl_jobs j,
       LATERAL async_dl_job_cancel(j.id, j.owner) c
 WHERE j.owner = '$owner' AND c = 'canceled'
 ORDER BY j.created_at, j.id;
COMMIT;
SQL
    my @ids = grep { /^[0-9a-f-]{36}$/ } split /\n/, $ids;
    die "due_callbacks: " . scalar(@ids) . " of $n jobs canceled\n"
        unless @ids == $n;
    return @ids;
}

# the session whose statement names $token is in its pg_sleep
sub asleep {
    my ($token) = @_;
    return wait_until(sub {
        psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = "
             . "'PgSleep' AND query LIKE '%''$token''%'") == 1
    }, 10, "the session of $token");
}

sub cb_row {
    my ($job) = @_;
    return psql("SELECT callback_status || ' ' || callback_attempts || ' ' "
                . "|| coalesce(callback_lease_owner, '-') FROM async_dl_jobs "
                . "WHERE id = '$job'");
}

sub claim_sql {
    my ($token, $job, $lease) = @_;
    $lease //= '1 min';
    return "SELECT count(*) FROM async_dl_callback_claim('$token', 10, "
         . "'$lease') WHERE job_id = '$job'";
}

sub finish_sql {
    my ($job, $token) = @_;
    return "SELECT async_dl_callback_finish('$job', '$token', true, NULL, "
         . "NULL)";
}

# --- interleaved: A holds its claim open, B comes meanwhile ----------------------

{
    my ($job) = due_callbacks(1, 'http://127.0.0.1:9/i{n}');
    is(cb_row($job), 'pending 0 -', 'interleaved: the callback is due');
    my $a = psql_bg("BEGIN; " . claim_sql('A/1', $job)
                    . "; SELECT pg_sleep(3); COMMIT;");
    ok(asleep('A/1'), 'interleaved: A claimed, its transaction open');
    # B's count, and how long its claim took in the server
    my $b = psql_bg("SELECT count(*) || ' ' || round(extract(epoch FROM "
                    . "clock_timestamp() - statement_timestamp()), 2) FROM "
                    . "async_dl_callback_claim('B/1', 10, '1 min') WHERE "
                    . "job_id = '$job'");
    my ($brc, $bout) = psql_wait($b);
    my ($arc, $aout) = psql_wait($a);
    is("$arc $brc", '0 0', 'interleaved: both claims ran')
        or diag("$aout $bout");
    is($aout =~ s/\s+//gr, '1', 'interleaved: A claimed it');
    my ($bn, $bt) = split ' ', $bout;
    is($bn, '0', 'interleaved: B did not');
    cmp_ok($bt, '<', 0.5, "interleaved: B skipped it without waiting for A "
           . "($bt s)");
    is(cb_row($job), 'pending 1 A/1', 'interleaved: one attempt, A\'s lease');
    is(psql(claim_sql('B/2', $job)), 0,
       'interleaved: after A\'s commit, A\'s lease keeps it from B');

    # B's transaction began before A's claim committed (its now() is older)
    my ($job2) = due_callbacks(1, 'http://127.0.0.1:9/j{n}');
    my $b2 = psql_bg("BEGIN; SELECT now(); SELECT pg_sleep(3); "
                     . claim_sql('B/3', $job2) . "; COMMIT;");
    ok(asleep('B/3'), 'older transaction: B\'s began');
    is(psql(claim_sql('A/2', $job2)), 1, 'older transaction: A claimed '
       . 'it (committed)');
    my ($b2rc, $b2out) = psql_wait($b2);
    is($b2rc, 0, 'older transaction: B\'s claim ran') or diag($b2out);
    like($b2out, qr/\n0\s*\z/, 'older transaction: B got nothing');
    is(cb_row($job2), 'pending 1 A/2', 'older transaction: one attempt, '
       . 'A\'s lease');

    # both deliver: only the lease holder's outcome counts
    is(psql(finish_sql($job, 'B/1')), 'f', 'an outcome without the lease '
       . 'is refused');
    is(psql(finish_sql($job, 'A/1')), 't', 'the holder\'s is recorded');
    is(cb_row($job), 'delivered 1 -', 'delivered, once');
    is(psql(claim_sql('B/4', $job)), 0, 'a delivered callback is not '
       . 'claimed again');
    is(psql(finish_sql($job, 'A/1')), 'f', 'nor recorded twice');
}

# --- two claims released at the same instant, 20 rounds -----------------------------

# Three sessions in lock-step on advisory locks (293, round): the holder
# takes every round's lock, then for each round waits until both claimers
# wait on the round's lock (so the round before is over), makes the
# round's callback due and releases the lock: both claim at once, each in
# a transaction begun after the release.
{
    my $R = 20;
    my @jobs = due_callbacks($R, 'http://127.0.0.1:9/s{n}');
    my $in = join(',', map { "'$_'" } @jobs);
    psql("UPDATE async_dl_jobs SET callback_next_attempt_at = now() + "
         . "interval '1 hour' WHERE id IN ($in)");
    psql("CREATE TABLE test_instant (round integer, session text, job uuid)");
    my $arr = 'ARRAY[' . join(',', map { "'$_'::uuid" } @jobs) . ']';
    my $holder = psql_bg(<<"SQL");
DO \$\$
DECLARE jobs uuid[] := $arr; w integer;
BEGIN
    FOR i IN 1..$R LOOP PERFORM pg_advisory_lock(293, i); END LOOP;
    FOR i IN 1..$R LOOP
        -- both wait on the round's lock: the round before is over
        FOR t IN 1..500 LOOP
            SELECT count(*) INTO w FROM pg_locks
             WHERE locktype = 'advisory' AND classid = 293 AND objid = i
               AND objsubid = 2 AND NOT granted;
            EXIT WHEN w >= 2;
            PERFORM pg_sleep(0.01);
        END LOOP;
        UPDATE async_dl_jobs
           SET callback_next_attempt_at = clock_timestamp() - interval '1 second'
         WHERE id = jobs[i];
        COMMIT;
        PERFORM pg_advisory_unlock(293, i);
    END LOOP;
END \$\$
SQL
    # the claimers only once the holder has every round's lock
    ok(wait_until(sub {
        psql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
             . "AND classid = 293 AND objsubid = 2 AND granted AND mode = "
             . "'ExclusiveLock'") == $R
    }, 20, 'the holder\'s locks'), 'same instant: the holder holds the '
       . "$R rounds' locks");
    my @claimers = map {
        psql_bg(<<"SQL")
DO \$\$
BEGIN
    FOR i IN 1..$R LOOP
        PERFORM pg_advisory_lock_shared(293, i);
        COMMIT;
        INSERT INTO test_instant
        SELECT i, 'S$_', c.job_id
          FROM async_dl_callback_claim('S$_/' || i, 1, '1 min') c;
        COMMIT;
        PERFORM pg_advisory_unlock_shared(293, i);
    END LOOP;
END \$\$
SQL
    } 1, 2;
    my @rc = map { (psql_wait($_))[0] } $holder, @claimers;
    is("@rc", '0 0 0', 'same instant: the three sessions ran');
    my %won = map { split /\|/ } split /\n/,
        psql("SELECT round || '|' || count(*) FROM test_instant GROUP BY round");
    is(join(' ', map { $won{$_} // 0 } 1 .. $R), join(' ', (1) x $R),
       "same instant, $R rounds: each callback claimed by exactly one of "
       . 'the two');
    is(psql("SELECT count(*) FROM test_instant t JOIN async_dl_jobs j ON "
            . "j.id = t.job WHERE j.id = (ARRAY[$in]::uuid[])[t.round] AND "
            . "j.callback_attempts = 1 AND j.callback_lease_owner = "
            . "t.session || '/' || t.round"), $R,
       'same instant: the round\'s callback, one attempt counted, under the '
       . 'winner\'s lease');
    note('rounds won: ' . psql("SELECT string_agg(session || ' ' || n, ', ') "
                               . "FROM (SELECT session, count(*) n FROM "
                               . "test_instant GROUP BY session) x"));
}

# --- a lease that ran out: claimed again, the late outcome refused ----------------

{
    my ($job) = due_callbacks(1, 'http://127.0.0.1:9/l{n}');
    is(psql(claim_sql('A/9', $job, '3 seconds')), 1,
       'lease: A claims with a short lease');
    my $t0 = time;          # (after the claim's now(): its lease ends before $t0 + 3)
    is(psql(claim_sql('B/9', $job)), 0, 'lease: not B\'s while A\'s runs');
    my $left = $t0 + 3.3 - time;
    sleep $left if $left > 0;
    is(psql(claim_sql('B/9', $job)), 1, 'lease: run out, B claims it');
    is(cb_row($job), 'pending 2 B/9', 'lease: the second attempt, B\'s');
    is(psql(finish_sql($job, 'A/9')), 'f', 'lease: A\'s late outcome is '
       . 'refused');
    is(cb_row($job), 'pending 2 B/9', 'lease: and changed nothing');
    is(psql(finish_sql($job, 'B/9')), 't', 'lease: B\'s is recorded');
    is(cb_row($job), 'delivered 2 -', 'lease: delivered');
}

# --- many sessions claiming in a loop ------------------------------------------------

{
    my $N = 300;
    my @jobs = due_callbacks($N, 'http://127.0.0.1:9/m{n}');
    psql("CREATE TABLE test_claims (session text, token text, job uuid)");
    my @bg = map {
        my $w = "m$_";
        psql_bg("DO \$\$ DECLARE t text; BEGIN FOR n IN 1..80 LOOP "
              . "t := '$w/' || n; "
              . "INSERT INTO test_claims SELECT '$w', t, c.job_id FROM "
              . "async_dl_callback_claim(t, 1 + n % 3, '1 min') c "
              . "WHERE c.url LIKE 'http://127.0.0.1:9/m%'; "
              . "COMMIT; END LOOP; END \$\$")
    } 1 .. 6;
    my @out = map { [psql_wait($_)] } @bg;
    is(join(' ', map { $_->[0] } @out), '0 0 0 0 0 0',
       'many sessions: all six ran') or diag(join "\n", map { $_->[1] } @out);
    unlike(join('', map { $_->[1] } @out) . pg_log(), qr/deadlock detected/,
           'many sessions: no deadlock');
    is(psql("SELECT count(*) || ' ' || count(DISTINCT job) FROM test_claims"),
       "$N $N", "many sessions: $N claims, of $N distinct callbacks");
    my $spread = psql("SELECT count(DISTINCT session) FROM test_claims");
    cmp_ok($spread, '>=', 2, "many sessions: $spread sessions took some");
    is(psql("SELECT count(*) FROM async_dl_jobs j JOIN test_claims c ON "
            . "c.job = j.id WHERE j.callback_attempts = 1 AND "
            . "j.callback_lease_owner = c.token"), $N,
       'many sessions: each attempt counted once, under its claim\'s lease');
}

# --- three workers started at once --------------------------------------------------

{
    # the callbacks above are not for workers: out of the way
    psql("UPDATE async_dl_jobs SET callback_status = 'failed' WHERE "
         . "callback_status = 'pending'");
    # the workers up and listening first: the commit that makes the
    # callbacks due wakes the three at once
    start_worker(ASYNC_DL_POLL_INTERVAL => '200ms',
                 ASYNC_DL_RETRY_BASE => '100ms') for 1 .. 3;
    for my $n (0 .. 2) {
        ok(wait_until(sub { worker_log($n) =~ /database: connected, listening/ },
                      20, "worker $n"), "workers: worker $n listens");
    }
    my $N = 20;
    my @jobs = due_callbacks($N, "$s->{flaky}/callback/w{n}?fail=1");
    # each job's hook key (w1 .. w20)
    my %key = map { my ($id, $k) = split /\|/; ($id => $k) } split /\n/,
        psql("SELECT id || '|' || substring(callback_url from "
             . "'/callback/(w\\d+)') FROM async_dl_jobs WHERE id IN ("
             . join(',', map { "'$_'" } @jobs) . ")");
    ok(wait_until(sub {
        psql("SELECT count(*) FROM async_dl_jobs WHERE id IN ("
             . join(',', map { "'$_'" } @jobs) . ") AND callback_status "
             . "<> 'pending'") == $N
    }, 40, 'the callbacks'), 'workers: every callback settled');
    is(psql("SELECT st || ' ' || count(*) FROM (SELECT callback_status "
            . "|| ' ' || callback_attempts st FROM async_dl_jobs WHERE id IN ("
            . join(',', map { "'$_'" } @jobs) . ")) x GROUP BY st"),
       "delivered 2 $N", 'workers: all delivered, on the second attempt');
    my (@posts, @bad);
    for my $job (@jobs) {
        open my $fh, '<', "$s->{dir}/flaky/cb-$key{$job}.log" or next;
        my @l = <$fh>;
        push @bad, "$key{$job}: " . scalar(@l) if @l != 2;
        push @posts, scalar @l;
    }
    is(scalar(@bad), 0, 'workers: each hook got exactly two POSTs (a 500, '
       . 'then the 200)') or diag("@bad");
    my $log = worker_log();
    my %delivered;
    $delivered{$1}++ while $log =~ /job=(\S+) callback delivered to /g;
    is(scalar(grep { ($delivered{$_} // 0) == 1 } @jobs), $N,
       'workers: each delivered once, by one worker');
    my @by = grep { worker_log($_) =~ /callback (?:delivered|to \S+ failed)/ }
             0 .. 2;
    cmp_ok(scalar @by, '>=', 2, scalar(@by) . ' of the 3 workers '
           . 'delivered some: they raced');
    unlike($log, qr/outcome not recorded/, 'workers: no outcome was '
           . 'refused (no claim lost its lease)');
    stop_worker('TERM', $_) for 0 .. 2;
}

done_testing();
