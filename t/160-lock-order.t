# The API's changes to a job (cancel, DELETE) take the job's file rows
# before the job row, as the worker does (it holds a file, then updates its
# job): a worker mid-progress and a cancel must not deadlock.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use Time::HiRes qw(sleep);

my $s = adl();

sub psql_bg {
    my ($sql) = @_;
    my $out = "$s->{dir}/logs/psql-" . rand() . '.out';
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        open STDOUT, '>', $out;
        open STDERR, '>&', \*STDOUT;
        exec 'psql', '-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1', '-h',
            '127.0.0.1', '-p', $s->{pg_port}, '-U', 'postgres', '-d',
            'postgres', '-c', $sql;
    }
    return ($pid, $out);
}

sub finish {
    my ($pid, $out) = @_;
    waitpid($pid, 0);
    my $rc = $? >> 8;
    open my $fh, '<', $out;
    return ($rc, do { local $/; <$fh> // '' });
}

for my $case (['cancel', "SELECT async_dl_job_cancel(%s, '')"],
              ['delete', "SELECT async_dl_job_delete(%s, '')"])
{
    my ($what, $api) = @$case;
    my $id = psql("INSERT INTO async_dl_jobs (total_files, timeout_ms, "
                  . "deadline) VALUES (2, 60000, now() + interval '1 h') "
                  . "RETURNING id");
    psql("INSERT INTO async_dl_files (job_id, idx, url) VALUES "
         . "('$id', 0, 'http://x/0'), ('$id', 1, 'http://x/1')");
    psql("SELECT count(*) FROM async_dl_claim('w1', 10, '1 min')");

    # the worker: holds file 0 (as async_dl_file_progress does), then,
    # a moment later, updates the job
    my @w = psql_bg("BEGIN; SELECT 1 FROM async_dl_files WHERE job_id = "
                    . "'$id' AND idx = 0 FOR UPDATE; SELECT pg_sleep(1); "
                    . "UPDATE async_dl_jobs SET bytes_done = 10 WHERE id = "
                    . "'$id'; COMMIT;");
    sleep 0.3;
    my @a = psql_bg(sprintf $api, "'$id'");

    my ($wrc, $wout) = finish(@w);
    my ($arc, $aout) = finish(@a);
    is($wrc, 0, "$what: the worker's transaction commits") or diag($wout);
    is($arc, 0, "$what: the API's change goes through") or diag($aout);
    unlike($wout . $aout, qr/deadlock/, "$what: no deadlock");
}

my $pglog = do { local $/; open my $fh, '<', "$s->{dir}/logs/postgresql.log";
                 <$fh> // '' };
unlike($pglog, qr/deadlock detected/, 'PostgreSQL saw no deadlock');

done_testing();
