# The schema's state changes with two (or more) sessions racing for them
# (issue 9, defects 1, 2, 4, 5, 6, 9, 13, 18, 19): whatever the
# interleaving, a job's counters equal what its files say, the counts
# behind the limits equal the real counts, no claim deadlocks, a lease is
# one claim's, and a 202 survives a crash of PostgreSQL.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use AsyncDL::Race;
use Time::HiRes qw(sleep time);

my $s = adl();

sub lease_of {
    my ($job, $idx) = @_;
    return "(SELECT lease_owner FROM async_dl_files WHERE job_id = '$job' "
         . "AND idx = $idx)";
}

# the job's counters as kept, and as its files say they should be (every
# job's when no job is given)
sub counters_drift {
    my ($job) = @_;
    my $which = defined $job ? "j.id = '$job'" : 'true';
    return psql(<<"SQL");
SELECT concat_ws(' ',
    'completed', j.completed_files, c.completed,
    'failed', j.failed_files, c.failed,
    'sized', j.sized_files, c.sized,
    'done', j.bytes_done, c.done,
    'total', j.bytes_total, c.total)
  FROM async_dl_jobs j,
       LATERAL (SELECT count(*) FILTER (WHERE status = 'completed') completed,
                       count(*) FILTER (WHERE status IN ('failed', 'canceled'))
                           failed,
                       count(size) sized, coalesce(sum(bytes_done), 0) done,
                       coalesce(sum(size), 0) total
                  FROM async_dl_files WHERE job_id = j.id) c
 WHERE $which
   AND (j.completed_files, j.failed_files, j.sized_files, j.bytes_done,
        j.bytes_total) IS DISTINCT FROM
       (c.completed::integer, c.failed::integer, c.sized::integer, c.done,
        c.total)
SQL
}

sub counts_drift {
    my $q = psql("SELECT async_dl_queued_count() - count(*) FROM "
                 . "async_dl_jobs WHERE status = 'queued'");
    my $o = psql(<<'SQL');
SELECT count(*) FROM (
    SELECT owner, active FROM async_dl_owner_counts()
    EXCEPT
    SELECT owner, count(*) FROM async_dl_jobs
     WHERE status IN ('queued', 'processing') GROUP BY owner) d
SQL
    return "queued $q owners $o";
}

sub finish_sql {
    my ($job, $idx, $size) = @_;
    return "SELECT async_dl_file_finish('$job', $idx, " . lease_of($job, $idx)
         . ", 'completed', $size, 'text/plain', 'x', 'k/$job/$idx', 1, NULL, "
         . "NULL, NULL)";
}

# --- defect 4: two files of a job end at once --------------------------------

{
    my $job = add_job(['http://x/0', 'http://x/1', 'http://x/2']);
    psql("SELECT count(*) FROM async_dl_claim('w', 10, '1 min', 5)");
    psql("SELECT async_dl_file_progress('$job', $_, " . lease_of($job, $_)
         . ", '1 min', 500, 1000, 1)") for 0 .. 2;

    # A ends file 0 and holds the job's row a while; B ends file 1 meanwhile
    my $a = psql_bg('BEGIN; ' . finish_sql($job, 0, 1000)
                    . '; SELECT pg_sleep(2); COMMIT;');
    ok(psql_sleeping(1), 'A ended file 0 and holds the job');
    my $b = psql_bg(finish_sql($job, 1, 1000));
    my ($arc, $aout) = psql_wait($a);
    my ($brc, $bout) = psql_wait($b);
    is("$arc $brc", '0 0', 'both ends recorded') or diag("$aout $bout");
    is(counters_drift($job), '', 'two files ending at once: counters right');
    is(psql("SELECT bytes_done || '/' || bytes_total FROM async_dl_jobs "
            . "WHERE id = '$job'"), '2500/3000', 'bytes 2500 of 3000');

    psql(finish_sql($job, 2, 1000));
    is(psql("SELECT status || ' ' || completed_files || ' ' || bytes_done "
            . "|| ' ' || bundle_status FROM async_dl_jobs WHERE id = '$job'"),
       'processing 3 3000 pending',
       'the last file ends the files with the right figures; the zip next');
}

# --- issue 10: the zip's end completes the job; a cancel races it ------------------

for my $first (qw(finish cancel)) {
    my $job = add_job(['http://x/0', 'http://x/1']);
    psql("SELECT count(*) FROM async_dl_claim('w', 10, '1 min', 5)");
    psql(finish_sql($job, $_, 10)) for 0, 1;
    # its zip claimed by builder b (played: other jobs' zips wait too)
    psql("UPDATE async_dl_jobs SET bundle_status = 'building', "
         . "bundle_lease_owner = 'b', bundle_lease_until = now() + "
         . "interval '1 min', bundle_attempts = 1 WHERE id = '$job'");
    my $finish = "SELECT async_dl_bundle_finish('$job', 'b', 'completed', "
               . "'k/$job/$job.zip', 20, 'x', 2, NULL, NULL)";
    my $cancel = "SELECT async_dl_job_cancel('$job', '')";
    # the first holds the job's row a while; the other comes meanwhile
    my $a = psql_bg("BEGIN; " . ($first eq 'finish' ? $finish : $cancel)
                    . "; SELECT pg_sleep(2); COMMIT;");
    ok(psql_sleeping(1), "$first first: it holds the job");
    my $b = psql_bg($first eq 'finish' ? $cancel : $finish);
    my ($arc, $aout) = psql_wait($a);
    my ($brc, $bout) = psql_wait($b);
    is("$arc $brc", '0 0', "$first first: both went through")
        or diag("$aout $bout");
    is(psql("SELECT status || ' ' || coalesce(bundle_status, '-') || ' ' || "
            . "(completed_at IS NOT NULL) FROM async_dl_jobs WHERE id = '$job'"),
       $first eq 'finish' ? 'completed completed true' : 'canceled - true',
       "$first first: " . ($first eq 'finish'
                           ? 'completed with its zip, the cancel too late'
                           : 'canceled, the zip dropped, its finish refused'));
    like($bout, $first eq 'finish' ? qr/completed/ : qr/\bf\b/,
         "$first first: the other learnt it");
    is(counts_drift(), 'queued 0 owners 0', "$first first: the limits' counts");
}

# --- schema 10: two builders race for the same zip ---------------------------

{
    my $job = add_job(['http://x/0', 'http://x/1']);
    psql("SELECT count(*) FROM async_dl_claim('w', 10, '1 min', 5)");
    psql(finish_sql($job, $_, 10)) for 0, 1;
    # only this job's zip is to be built
    psql("UPDATE async_dl_jobs SET bundle_status = 'failed' WHERE "
         . "bundle_status IN ('pending', 'building') AND id <> '$job'");
    my @s = map {
        psql_bg("BEGIN; SELECT count(*) FROM async_dl_bundle_claim('r$_', "
                . "'1 min', 5, 'k') WHERE job_id = '$job'; "
                . "SELECT pg_sleep(0.5); COMMIT;")
    } 1, 2;
    my @got = map { (psql_wait($_))[1] } @s;
    s/\s+//g for @got;
    is(join(' ', sort @got), '0 2', 'zip race: one builder took it (both '
       . 'files), the other nothing') or diag("@got");
    like(psql("SELECT bundle_status || ' ' || bundle_lease_owner FROM "
              . "async_dl_jobs WHERE id = '$job'"), qr/^building r[12]$/,
         'zip race: held by the one that took it');
}

# --- defect 5: a hand-back, then the next claim ------------------------------

{
    my $job = add_job(['http://x/0', 'http://x/1']);
    psql("SELECT count(*) FROM async_dl_claim('w', 10, '1 min', 5)");
    psql("SELECT async_dl_file_progress('$job', $_, " . lease_of($job, $_)
         . ", '1 min', 700 + $_ * 300, NULL, 1)") for 0 .. 1;
    is(psql("SELECT bytes_done FROM async_dl_jobs WHERE id = '$job'"),
       1700, 'progress of two files');
    psql("SELECT async_dl_file_finish('$job', 1, " . lease_of($job, 1)
         . ", 'pending', NULL, NULL, NULL, NULL, 0, NULL, NULL, NULL)");
    is(psql("SELECT bytes_done FROM async_dl_jobs WHERE id = '$job'"),
       700, 'a hand-back takes its bytes off once');
    psql("SELECT count(*) FROM async_dl_claim('w', 10, '1 min', 5)");
    is(psql("SELECT bytes_done FROM async_dl_jobs WHERE id = '$job'"),
       700, 'and the next claim does not take them off again');
    is(counters_drift($job), '', 'hand-back and claim: counters right');
}

# --- defect 6: progress reports without a size -------------------------------

{
    my $job = add_job(['http://x/0']);
    psql("SELECT count(*) FROM async_dl_claim('w', 10, '1 min', 5)");
    psql("SELECT async_dl_file_progress('$job', 0, " . lease_of($job, 0)
         . ", '1 min', 100, 8000, 1)");
    psql("SELECT async_dl_file_progress('$job', 0, " . lease_of($job, 0)
         . ", '1 min', 100 * n, NULL, 1) FROM generate_series(2, 6) n");
    is(psql("SELECT bytes_total || ' ' || sized_files || ' ' || bytes_done "
            . "FROM async_dl_jobs WHERE id = '$job'"), '8000 1 600',
       'reports without a size keep the known size');
    is(psql("SELECT (async_dl_job_status('$job', '', '/p/')::json "
            . "->> 'progress')"), 7, 'and the progress by bytes');
}

# --- defect 2: a lease is one claim's ----------------------------------------

{
    my $job = add_job(['http://x/0']);
    my $first = psql("SELECT lease FROM async_dl_claim('w', 10, "
                     . "'200 milliseconds', 5) WHERE job_id = '$job'");
    like($first, qr{^w/\d+$}, 'a claim returns its lease token');
    sleep 0.4;
    my $second = psql("SELECT lease FROM async_dl_claim('w', 10, '1 min', 5) "
                      . "WHERE job_id = '$job'");
    like($second, qr{^w/\d+$}, 'the same worker claims its expired file');
    isnt($second, $first, 'under a new lease');
    is(psql("SELECT async_dl_file_progress('$job', 0, '$first', '1 min', 10, "
            . "NULL, 1)"), 'f', 'the old claim cannot renew');
    is(psql("SELECT async_dl_file_finish('$job', 0, '$first', 'completed', "
            . "1, NULL, NULL, 'k', 1, NULL, NULL, NULL)"), 'f',
       'nor record a result');
    is(psql("SELECT async_dl_file_progress('$job', 0, '$second', '1 min', 10, "
            . "NULL, 2)"), 't', 'the new claim can');
    is(psql("SELECT attempts FROM async_dl_files WHERE job_id = '$job'"), 2,
       'each claim counted an attempt');
}

# --- defect 19: what a crash costs -------------------------------------------

{
    my $job = add_job(['http://x/0', 'http://x/1']);
    for my $n (1 .. 3) {
        is(psql("SELECT count(*) FROM async_dl_claim('w$n', 10, "
                . "'100 milliseconds', 3) WHERE job_id = '$job'"), 2,
           "claim $n after a crash");
        sleep 0.2;
    }
    is(psql("SELECT count(*) FROM async_dl_claim('w4', 10, '1 min', 3) "
            . "WHERE job_id = '$job'"), 0,
       'no fourth claim with 3 attempts allowed');
    is(psql("SELECT string_agg(status || ' ' || error_code || ' ' || attempts,"
            . " ',' ORDER BY idx) FROM async_dl_files WHERE job_id = '$job'"),
       'failed WORKER_LOST 3,failed WORKER_LOST 3',
       'the files failed with WORKER_LOST');
    is(psql("SELECT status || ' ' || failed_files FROM async_dl_jobs "
            . "WHERE id = '$job'"), 'failed 2', 'and their job ended');

    # a shutdown hand-back gives the attempt back
    my $j2 = add_job(['http://x/0']);
    psql("SELECT count(*) FROM async_dl_claim('w', 10, '1 min', 3)");
    psql("SELECT async_dl_file_finish('$j2', 0, " . lease_of($j2, 0)
         . ", 'pending', NULL, NULL, NULL, NULL, 0, NULL, NULL, NULL)");
    is(psql("SELECT status || ' ' || attempts FROM async_dl_files "
            . "WHERE job_id = '$j2'"), 'pending 0',
       'a hand-back that is not the file\'s fault costs no attempt');
}

# --- a failed file names its key: what an earlier attempt stored goes -------

{
    my $job = add_job(['http://x/0']);
    psql("SELECT count(*) FROM async_dl_claim('w', 10, '1 min', 5) "
         . "WHERE job_id = '$job'");
    psql("SELECT async_dl_file_finish('$job', 0, " . lease_of($job, 0)
         . ", 'failed', NULL, NULL, NULL, '$job/0/f.bin', 2, 'HTTP_STATUS', "
         . "'404', NULL)");
    is(psql("SELECT coalesce(object_key, 'none') FROM async_dl_files "
            . "WHERE job_id = '$job'"), 'none', 'a failed file records no key');
    is(psql("SELECT object_key FROM async_dl_deleted_objects "
            . "WHERE job_id = '$job'"), "$job/0/f.bin",
       'its key is queued for the janitor');
}

# --- defect 1: concurrent claims, ends and the sweep do not deadlock ---------

{
    psql("DELETE FROM async_dl_jobs");
    my $files = join ',', map { "{\"url\":\"http://x/$_\"}" } 1 .. 2;
    psql("SELECT count(*) FROM (SELECT async_dl_job_create("
         . "'owner' || (n % 7), NULL, 'h', 600000, NULL, '[$files]', 0, 0, "
         . "'/p/') FROM generate_series(1, 240) n) c");
    # and jobs whose deadline passed, for the sweep
    psql("SELECT count(*) FROM (SELECT async_dl_job_create("
         . "'owner' || (n % 5), NULL, 'h', 1, NULL, '[$files]', 0, 0, "
         . "'/p/') FROM generate_series(1, 60) n) c");
    sleep 0.1;

    # each call its own transaction, as the worker and the API make them
    my @bg;
    for my $w (1 .. 3) {
        push @bg, psql_bg(
            "DO \$\$ DECLARE r record; BEGIN FOR n IN 1..25 LOOP "
          . "PERFORM async_dl_claim('w$w', 8, '1 min', 5, 'p/'); COMMIT; "
          . "FOR r IN SELECT job_id, idx, lease_owner FROM async_dl_files "
          . "WHERE lease_owner LIKE 'w$w/%' AND random() < 0.5 LOOP "
          . "PERFORM async_dl_file_progress(r.job_id, r.idx, r.lease_owner, "
          . "'1 min', 5, 10, 1); COMMIT; "
          . "PERFORM async_dl_file_finish(r.job_id, r.idx, r.lease_owner, "
          . "CASE WHEN r.idx = 0 THEN 'completed' ELSE 'failed' END, 10, "
          . "NULL, NULL, 'k', 1, NULL, NULL, NULL); COMMIT; "
          . "END LOOP; END LOOP; END \$\$");
    }
    push @bg, psql_bg("DO \$\$ BEGIN FOR n IN 1..40 LOOP "
                      . "PERFORM async_dl_sweep_deadlines(); COMMIT; "
                      . "PERFORM async_dl_counts_compact(); COMMIT; "
                      . "END LOOP; END \$\$");
    push @bg, psql_bg("DO \$\$ DECLARE r record; BEGIN FOR n IN 1..30 LOOP "
                      . "FOR r IN SELECT id, owner FROM async_dl_jobs WHERE "
                      . "status = 'processing' AND random() < 0.05 LOOP "
                      . "PERFORM async_dl_job_cancel(r.id, r.owner); COMMIT; "
                      . "END LOOP; END LOOP; END \$\$");
    my @out = map { [psql_wait($_)] } @bg;
    is(join(' ', map { $_->[0] } @out), '0 0 0 0 0',
       'three claimers, the sweep and cancels all went through')
        or diag(join "\n", map { $_->[1] } @out);
    unlike(join('', map { $_->[1] } @out) . pg_log(), qr/deadlock detected/,
           'no deadlock');
    is(counts_drift(), 'queued 0 owners 0', 'the limits\' counts are right');
    is(counters_drift(), '', 'no job\'s counters drifted');
    is(psql("SELECT count(*) FROM async_dl_jobs j WHERE status IN "
            . "('queued', 'processing') AND bundle_status IS NULL AND NOT "
            . "EXISTS (SELECT 1 FROM async_dl_files f WHERE f.job_id = j.id "
            . "AND f.status IN ('pending', 'downloading'))"), 0,
       'no unfinished job without unfinished files or a zip to build');
    # the keys queued by the trigger, against the file rows they come from
    my $w = psql("SELECT count(*) FROM async_dl_files WHERE write_key IS NOT NULL");
    cmp_ok($w, '>', 0, "the claims recorded their keys ($w)");
    is(psql(<<'SQL'), '0 0 0',
SELECT (SELECT count(*) FROM async_dl_files f
         WHERE f.status IN ('canceled', 'failed') AND f.write_key IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM async_dl_deleted_objects d
                            WHERE d.object_key = f.write_key))
       || ' ' ||
       (SELECT count(*) FROM async_dl_files f
         WHERE f.status NOT IN ('canceled', 'failed')
           AND EXISTS (SELECT 1 FROM async_dl_deleted_objects d
                        WHERE d.object_key = f.write_key))
       || ' ' ||
       (SELECT count(*) FROM (SELECT d.object_key FROM async_dl_deleted_objects d
                               JOIN async_dl_files f ON f.write_key = d.object_key
                              GROUP BY d.object_key HAVING count(*) > 1) x)
SQL
       'every key of a canceled or failed file queued once, none of a live '
       . 'or stored one');
}

# --- defect 9: the deadline sweep has an index -------------------------------

like(psql("SET enable_seqscan = off; EXPLAIN SELECT id FROM async_dl_jobs "
          . "WHERE deadline < now() AND status IN ('queued', 'processing')"),
     qr/async_dl_jobs_deadline/, 'the sweep\'s query can use an index');

# --- defect 13: progress updates are HOT -------------------------------------

{
    my $job = add_job(['http://x/0']);
    psql("SELECT count(*) FROM async_dl_claim('w', 1, '1 min', 5) "
         . "WHERE job_id = '$job'");
    my $hot = sub {
        psql("SELECT pg_stat_force_next_flush()");
        return psql("SELECT n_tup_hot_upd FROM pg_stat_user_tables "
                    . "WHERE relname = 'async_dl_files'");
    };
    my $h0 = $hot->();
    psql("SELECT async_dl_file_progress('$job', 0, " . lease_of($job, 0)
         . ", '1 min', n, 100000, 1) FROM generate_series(1, 100) n");
    cmp_ok($hot->() - $h0, '>=', 90, 'progress renews leases with HOT '
           . 'updates');
}

# --- defect 18: a 202 survives an immediate stop -----------------------------

{
    # the harness runs PostgreSQL with synchronous_commit=off; a slow WAL
    # writer leaves the last commits in memory until it runs; each initiate
    # is its own transaction, and its id printed once its commit returned
    psql("ALTER SYSTEM SET wal_writer_delay = '10s'");
    psql("SELECT pg_reload_conf()");
    my $sql = join '', map {
        "SELECT job_id FROM async_dl_job_create('durable', NULL, 'h', 60000, "
      . "NULL, '[{\"url\":\"http://x/$_\"}]', 0, 0, '/p/');\n"
    } 1 .. 3000;
    my $file = "$s->{dir}/logs/durable.sql";
    AsyncDL::Test::write_file($file, $sql);
    my $out = "$s->{dir}/logs/durable.out";
    my $pid = fork // die;
    if ($pid == 0) {
        open STDOUT, '>', $out or die;
        open STDERR, '>', '/dev/null' or die;
        exec 'psql', '-X', '-q', '-At', '-h', '127.0.0.1', '-p',
            $s->{pg_port}, '-U', 'postgres', '-d', 'postgres', '-f', $file;
        exit 127;
    }
    wait_until(sub { -s $out && -s $out > 37 * 300 }, 30, 'initiates');
    my $pgbin = $ENV{ADL_PGBIN} || '/usr/lib/postgresql/15/bin';
    AsyncDL::Test::run_quiet("$s->{dir}/logs/pg_ctl.log",
        AsyncDL::Test::as_postgres("$pgbin/pg_ctl", '-D', "$s->{dir}/pg/data",
                                   '-m', 'immediate', '-w', 'stop'));
    $s->{pg_running} = 0;
    waitpid($pid, 0);
    AsyncDL::Test::pg_start();
    psql("ALTER SYSTEM RESET wal_writer_delay");
    psql("SELECT pg_reload_conf()");
    my @told = grep { /^[0-9a-f-]{36}$/ } split /\n/, AsyncDL::Test::slurp($out);
    cmp_ok(scalar @told, '>', 300, scalar(@told) . ' jobs answered');
    my %have = map { $_ => 1 } split /\n/,
        psql("SELECT id FROM async_dl_jobs WHERE owner = 'durable'");
    my @lost = grep { !$have{$_} } @told;
    is(scalar @lost, 0, 'every answered job survived the crash')
        or diag("lost: @lost[0 .. ($#lost > 4 ? 4 : $#lost)]");
}

done_testing();
