# The transactions that make a promise commit durably on a server with
# synchronous_commit = off (as the test stack runs): a crash right after
# them loses none.  The crash is made deterministic: the WAL writer is
# frozen (SIGSTOP) before the transaction, PostgreSQL is stopped with
# "immediate" (its processes quit without writing the WAL buffers), and
# only then is the WAL writer let go, to die of that stop.  A commit that
# did not write its WAL itself is then lost, as the control shows.  (The
# initiate, cancel and DELETE functions set synchronous_commit themselves
# since schemas 5, 6 and 15; the claim, the stored result and the queued
# deletions rely on schema 21's triggers.)
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use AsyncDL::Stack qw(run_quiet as_postgres);

my $s = adl();
my %alice = ('X-User' => 'alice');

start_nginx(<<'EOF2', http_config => "    async_dl_postgres_timeout 2s;\n");
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
}
EOF2

is(psql('SHOW synchronous_commit'), 'off', 'the stack runs synchronous_commit = off');

sub walwriter_pid {
    return psql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter'");
}

sub healthy {
    return wait_until(sub { request('GET', '/v1/download/health')->{status} == 200 }, 20);
}

# runs $action with the WAL writer frozen, then crashes PostgreSQL and
# starts it again; returns what $action returned
sub crash_after {
    my ($action) = @_;
    my $ww = walwriter_pid();
    die "no WAL writer\n" unless $ww =~ /^\d+$/;
    kill 'STOP', $ww or die "SIGSTOP $ww: $!";
    my @r = eval { $action->() };
    my $err = $@;
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        pg_stop('immediate');
        POSIX::_exit(0);
    }
    # the postmaster has sent SIGQUIT to every process; the WAL writer
    # gets it when it runs again, before anything else
    select(undef, undef, undef, 0.5);
    kill 'CONT', $ww;
    waitpid $pid, 0;
    # this process forked the stop: tell the stack it is down
    pg_stop('immediate');
    pg_start();
    die $err if $err;
    return wantarray ? @r : $r[0];
}

# --- the control: an ordinary commit is lost --------------------------------
psql('CREATE TABLE durable_control (v integer)');
psql('CHECKPOINT');
crash_after(sub { psql('INSERT INTO durable_control VALUES (1)') });
is(psql('SELECT count(*) FROM durable_control'), 0,
   'control: a commit with synchronous_commit = off is lost by the crash');
ok(healthy(), 'nginx is back after the crash');

# --- initiate: the 202 holds -------------------------------------------------
my $r = crash_after(sub {
    initiate({ files => [{ url => 'https://example.com/a.bin' },
                         { url => 'https://example.com/b.bin' }] }, \%alice);
});
is($r->{status}, 202, 'initiate answered 202 before the crash');
my $id = $r->{json}{jobId};
is(psql("SELECT status || ' ' || (SELECT count(*) FROM async_dl_files WHERE job_id = '$id') "
        . "FROM async_dl_jobs WHERE id = '$id'"), 'queued 2',
   'the accepted job and its 2 files survive the crash');
ok(healthy(), 'nginx is back');

# --- a claim: the write key holds --------------------------------------------
my $claimed = crash_after(sub {
    psql("SELECT string_agg(idx || ' ' || write_key, ',' ORDER BY idx) "
         . "FROM async_dl_claim('w1', 1, '1 minute', 5, 'pre/')");
});
like($claimed, qr{^0 pre/\Q$id\E/0/a\.bin$}, 'the claim recorded a write key');
is(psql("SELECT status || ' ' || write_key FROM async_dl_files WHERE job_id = '$id' AND idx = 0"),
   "downloading pre/$id/0/a.bin",
   'the claim and its write key survive the crash (a stored object stays named)');

# --- progress keeps the server's setting -------------------------------------
psql('CHECKPOINT');
my $lease = psql("SELECT lease_owner FROM async_dl_files WHERE job_id = '$id' AND idx = 0");
crash_after(sub {
    psql("SELECT async_dl_file_progress('$id', 0, '$lease', '1 minute', 1000, 5000, 1)");
});
is(psql("SELECT bytes_done FROM async_dl_files WHERE job_id = '$id' AND idx = 0"), 0,
   'a progress report is not forced to disk: the crash loses it');

# --- the stored result holds -------------------------------------------------
crash_after(sub {
    psql("SELECT async_dl_file_finish('$id', 0, '$lease', 'completed', 5000, "
         . "'application/octet-stream', '" . ('ab' x 32) . "', 'pre/$id/0/a.bin', 1, "
         . "NULL, NULL, now())");
});
is(psql("SELECT status || ' ' || object_key FROM async_dl_files WHERE job_id = '$id' AND idx = 0"),
   "completed pre/$id/0/a.bin", 'a stored result survives the crash');

# --- a cancel, then a DELETE -------------------------------------------------
ok(healthy(), 'nginx is back');
$r = crash_after(sub { request('POST', "/v1/download/$id/cancel", \%alice) });
ok($r->{status} == 200 || $r->{status} == 202, "cancel answered $r->{status}");
is(psql("SELECT status FROM async_dl_jobs WHERE id = '$id'"), 'canceled',
   'the cancel survives the crash');
ok(healthy(), 'nginx is back');
$r = crash_after(sub { request('DELETE', "/v1/download/$id", \%alice) });
is($r->{status}, 204, 'DELETE answered 204');
is(psql("SELECT count(*) FROM async_dl_jobs WHERE id = '$id'"), 0,
   'the deleted job stays deleted after the crash');
is(psql("SELECT string_agg(object_key, ',' ORDER BY object_key) FROM async_dl_deleted_objects "
        . "WHERE job_id = '$id'"), "pre/$id/0/a.bin",
   'its stored object is still queued for the janitor');

# --- an orphan check queues its key durably ----------------------------------
my $id2 = add_job(['https://example.com/c.bin']);
psql("UPDATE async_dl_files SET status = 'canceled' WHERE job_id = '$id2'");
psql('CHECKPOINT');
crash_after(sub { psql("SELECT async_dl_file_orphan('$id2', 0, 'pre/$id2/0/c.bin')") });
is(psql("SELECT count(*) FROM async_dl_deleted_objects WHERE job_id = '$id2'"), 1,
   "an orphan check's queued key survives the crash");

unlike(nginx_log(), qr/\[alert\]|\[emerg\]/, 'no [alert] in nginx');
done_testing();
