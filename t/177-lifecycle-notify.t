# A job that ends wakes the workers' claimers (NOTIFY async_dl_lifecycle)
# only when there is something to claim: its callback, or its zip queued.
# A one-file job without a callback ends without a NOTIFY; one with a
# callback sends one; a multi-file job's zip sends one when it is queued,
# and its callback one more when the zip completes the job.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;

my $s = adl();

# one session: LISTEN, then the statements; the notifications it got
# (its own, delivered at each commit) by channel and payload
sub notified {
    my ($sql) = @_;
    my @cmd = ('psql', '-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1', '-h',
               '127.0.0.1', '-p', $s->{pg_port}, '-U', 'postgres', '-d',
               'postgres');
    open my $fh, '-|', @cmd, '-c', 'LISTEN async_dl_lifecycle', '-c', $sql,
         '-c', 'SELECT 1'
        or die "psql: $!";
    local $/;
    my $out = <$fh> // '';
    close $fh or die "psql failed ($?)\n";
    return [ $out =~ /Asynchronous notification "async_dl_lifecycle" with payload "([^"]+)"/g ];
}

sub new_job {
    my ($n, $callback) = @_;
    my $job = add_job([ map { "http://127.0.0.1:9/f/$_" } 1 .. $n ]);
    psql("UPDATE async_dl_jobs SET callback_url = 'http://127.0.0.1:9/cb' "
         . "WHERE id = '$job'") if $callback;
    return $job;
}

# every file of the job claimed and finished as the worker does
sub finish_all {
    my ($job) = @_;
    return "SELECT count(async_dl_file_finish(c.job_id, c.idx, c.lease, "
         . "'completed', 10, 'application/octet-stream', repeat('a', 64), "
         . "c.write_key, c.attempts, NULL, NULL, NULL)) FROM "
         . "async_dl_claim('w', 100, '1 minute', 5, 'dl/') c "
         . "WHERE c.job_id = '$job'";
}

psql('DELETE FROM async_dl_jobs');

my $plain = new_job(1, 0);
is_deeply(notified(finish_all($plain)), [], 'a one-file job without a '
          . 'callback ends without waking anyone');
is(job_status($plain), 'completed', '(it completed)');

my $cb = new_job(1, 1);
is_deeply(notified(finish_all($cb)), [$cb], 'with a callback: one NOTIFY, '
          . 'its job id');
is(psql("SELECT callback_status FROM async_dl_jobs WHERE id = '$cb'"),
   'pending', 'and its callback is due');

my $failed = new_job(1, 0);
is_deeply(notified("SELECT count(async_dl_file_finish(c.job_id, c.idx, "
                   . "c.lease, 'failed', NULL, NULL, NULL, NULL, c.attempts, "
                   . "'HTTP_STATUS', 'the origin answered HTTP 404', NULL)) "
                   . "FROM async_dl_claim('w', 100, '1 minute', 5, 'dl/') c "
                   . "WHERE c.job_id = '$failed'"), [],
          'a failed job without a callback: none either');
is(job_status($failed), 'failed', '(it failed)');

my $multi = new_job(3, 1);
is_deeply(notified(finish_all($multi)), [$multi], 'a multi-file job: its '
          . 'zip queued wakes the builders');
is(psql("SELECT status || ' ' || bundle_status FROM async_dl_jobs "
        . "WHERE id = '$multi'"), 'processing pending', '(zip pending)');
my $tok = psql("SELECT job_id FROM async_dl_bundle_claim('b', "
               . "'1 minute', 3, 'dl/') LIMIT 1");
is($tok, $multi, 'the zip is claimed');
is_deeply(notified("SELECT async_dl_bundle_finish('$multi', 'b', "
                   . "'completed', 'dl/$multi.zip', 100, repeat('b', 64), 3, "
                   . "NULL, NULL)"), [$multi],
          'the zip stored ends the job: its callback wakes the deliverers');
is(psql("SELECT status || ' ' || callback_status FROM async_dl_jobs "
        . "WHERE id = '$multi'"), 'completed pending', '(callback due)');

done_testing();
