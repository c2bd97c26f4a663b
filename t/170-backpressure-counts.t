# The counts behind QUEUE_FULL and the per-owner limit are kept by a
# trigger, not counted on each initiate: whatever path a job takes
# (claimed, ended, canceled, deleted, timed out), they must equal the
# real counts.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;

adl();

sub create {
    my ($owner, $n) = @_;
    my $files = encode_json([map { { url => "http://x/$_" } } 1 .. $n]);
    return psql("SELECT job_id FROM async_dl_job_create('$owner', NULL, "
                . "'h', 60000, NULL, '$files', 0, 0, '/p/')");
}

sub check {
    my ($what) = @_;
    is(psql('SELECT async_dl_queued_count()'),
       psql("SELECT count(*) FROM async_dl_jobs WHERE status = 'queued'"),
       "$what: queued count");
    is(psql("SELECT string_agg(owner || '=' || active, ',' ORDER BY owner) "
            . 'FROM async_dl_owner_counts()'),
       psql("SELECT string_agg(owner || '=' || n, ',' ORDER BY owner) FROM "
            . "(SELECT owner, count(*) n FROM async_dl_jobs WHERE status IN "
            . "('queued', 'processing') GROUP BY owner) c"),
       "$what: unfinished per owner");
}

my @a = map { create('alice', 2) } 1 .. 5;
my @b = map { create('bob', 1) } 1 .. 3;
check('created');

psql("SELECT count(*) FROM async_dl_claim('w', 3, '1 min', 5)");
check('claimed');

my ($job, $idx) = split /\|/,
    psql("SELECT job_id, idx FROM async_dl_files WHERE status = "
         . "'downloading' ORDER BY job_id, idx LIMIT 1");
psql("SELECT async_dl_file_finish('$job', $idx, (SELECT lease_owner FROM async_dl_files WHERE job_id = '$job' AND idx = $idx), 'completed', 10, "
     . "'text/plain', 'x', 'k', 1, NULL, NULL, NULL)");
psql("SELECT async_dl_file_finish(job_id, idx, lease_owner, 'failed', NULL, NULL, "
     . "NULL, NULL, 1, 'HTTP_STATUS', '404', NULL) FROM async_dl_files "
     . "WHERE status = 'downloading'");
check('files ended');

psql("SELECT async_dl_job_cancel('$a[4]', 'alice')");
psql("SELECT async_dl_job_delete('$b[2]', 'bob')");
check('canceled and deleted');

psql("UPDATE async_dl_jobs SET deadline = now() - interval '1 s' "
     . "WHERE id = '$a[3]'");
psql('SELECT async_dl_sweep_deadlines()');
check('timed out');

# the limits answer from those counts
is(psql("SELECT outcome FROM async_dl_job_create('bob', NULL, 'h', 60000, "
        . "NULL, '[{\"url\":\"http://x/\"}]', 0, 1, '/p/')"),
   'owner_limit', 'the per-owner limit reads the count');
my $queued = psql('SELECT async_dl_queued_count()');
is(psql("SELECT outcome FROM async_dl_job_create('carol', NULL, 'h', 60000, "
        . "NULL, '[{\"url\":\"http://x/\"}]', $queued, 0, '/p/')"),
   'queue_full', 'QUEUE_FULL reads the count');
is(psql("SELECT outcome FROM async_dl_job_create('carol', NULL, 'h', 60000, "
        . "NULL, '[{\"url\":\"http://x/\"}]', " . ($queued + 1) . ", 0, "
        . "'/p/')"), 'created', 'below the limit a job is created');
check('after the limits');

# folding the deltas changes no count, and drops the owners left at zero
psql("SELECT async_dl_job_cancel(id, owner) FROM async_dl_jobs "
     . "WHERE owner = 'bob'");
psql("SELECT async_dl_file_finish(job_id, idx, lease_owner, 'failed', NULL, "
     . "NULL, NULL, NULL, 1, 'HTTP_STATUS', '404', NULL) FROM "
     . "async_dl_files WHERE status = 'downloading'");
check('before folding');
cmp_ok(psql('SELECT async_dl_counts_compact()'), '>', 0, 'deltas folded');
is(psql('SELECT count(*) FROM async_dl_count_deltas'), 0, 'none left');
check('after folding');
is(psql("SELECT count(*) FROM async_dl_owner_active WHERE owner = 'bob'"), 0,
   'an owner without unfinished jobs has no row');

done_testing();
