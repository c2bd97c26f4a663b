# The API's changes to a job (cancel, DELETE) take the job's file rows
# before the job row, as the worker does (it holds a file, then updates its
# job): a worker mid-progress and a cancel must not deadlock.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use AsyncDL::Race;
use Time::HiRes qw(sleep);

adl();

for my $case (['cancel', "SELECT async_dl_job_cancel(%s, '')"],
              ['delete', "SELECT async_dl_job_delete(%s, '')"])
{
    my ($what, $api) = @$case;
    my $id = psql("INSERT INTO async_dl_jobs (total_files, timeout_ms, "
                  . "deadline) VALUES (2, 60000, now() + interval '1 h') "
                  . "RETURNING id");
    psql("INSERT INTO async_dl_files (job_id, idx, url) VALUES "
         . "('$id', 0, 'http://x/0'), ('$id', 1, 'http://x/1')");
    psql("SELECT count(*) FROM async_dl_claim('w1', 10, '1 min', 5)");

    # the worker: holds file 0 (as async_dl_file_progress does), then,
    # a moment later, updates the job
    my $w = psql_bg("BEGIN; SELECT 1 FROM async_dl_files WHERE job_id = "
                    . "'$id' AND idx = 0 FOR UPDATE; SELECT pg_sleep(2); "
                    . "UPDATE async_dl_jobs SET bytes_done = 10 WHERE id = "
                    . "'$id'; COMMIT;");
    ok(psql_sleeping(1), "$what: the worker holds file 0");
    my $a = psql_bg(sprintf $api, "'$id'");

    my ($wrc, $wout) = psql_wait($w);
    my ($arc, $aout) = psql_wait($a);
    is($wrc, 0, "$what: the worker's transaction commits") or diag($wout);
    is($arc, 0, "$what: the API's change goes through") or diag($aout);
    unlike($wout . $aout, qr/deadlock/, "$what: no deadlock");
}

unlike(pg_log(), qr/deadlock detected/, 'PostgreSQL saw no deadlock');

done_testing();
