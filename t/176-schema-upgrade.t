# A database made by the migrations up to version 8, with zips and
# callbacks caught in every held or waiting state, upgraded by the real
# worker (async-dl-worker --migrate) to the current version: each job keeps
# its zip's and its callback's state (10 moved the lease ends and retry
# times to columns of their own), no job sees a change (no event, same
# updated_at), and the claims honour the leases and retry times they
# inherited.  Initiate keeps {p} with the job for its callback, through
# nginx on a new database and on the upgraded one.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use Cwd qw(abs_path);
use File::Basename qw(dirname);

my $s = adl();
my $ROOT = abs_path(dirname(__FILE__) . '/..');
my $WORKER = $ENV{ADL_WORKER}
    || ($ENV{ADL_BUILD} || "$ROOT/build") . '/async-dl-worker';
my $DB = 'adl_upgrade';
my @SQL = sort glob("$ROOT/sql/[0-9][0-9][0-9]_*.sql");

# psql on the upgraded database: its output, or a test failure
sub db_run {
    my (@args) = @_;
    open my $fh, '-|', 'psql', '-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1',
        '-h', '127.0.0.1', '-p', $s->{pg_port}, '-U', 'postgres', '-d', $DB,
        @args or die "psql: $!";
    local $/;
    my $out = <$fh>;
    close $fh or die "psql failed ($?) on: @args\n";
    $out =~ s/\n\z// if defined $out;
    return $out // '';
}
sub db { return db_run('-c', $_[0]) }

# --- a database at version 8, as a worker of version 8 left it -------------

psql("CREATE DATABASE $DB");
db("CREATE TABLE async_dl_schema_migrations (version integer PRIMARY KEY, "
   . "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())");
for my $f (grep { m{/00[1-8]_[^/]*$} } @SQL) {
    my ($v, $name) = $f =~ m{/((\d+)_[^/]*)\.sql$} ? ($2 + 0, $1) : ();
    db_run('-1', '-c', 'SET client_min_messages = warning', '-f', $f, '-c',
           "INSERT INTO async_dl_schema_migrations VALUES ($v, '$name')");
}
is(db("SELECT max(version) FROM async_dl_schema_migrations"), 8,
   'the database is at version 8');

# a job of two files, both stored: its zip queued (processing, pending)
sub zip_job {
    my $id = db("SELECT job_id FROM async_dl_job_create('o', NULL, NULL, "
                . "60000, NULL, '[{\"url\":\"http://x/a\"},"
                . "{\"url\":\"http://x/b\"}]', 0, 0, '/v1/z/')");
    db("SELECT async_dl_file_finish(job_id, idx, lease, 'completed', 10, "
       . "'x/y', NULL, 'k/' || job_id || '/' || idx, 1, NULL, NULL, NULL) "
       . "FROM async_dl_claim('w', 10, '1 hour', 5)");
    return $id;
}

# a job of one file with a callback, stored: completed, its callback due
sub callback_job {
    my ($name) = @_;
    my $id = db("SELECT job_id FROM async_dl_job_create('o', NULL, NULL, "
                . "60000, 'http://cb/$name', '[{\"url\":\"http://x/a\"}]', "
                . "0, 0, '/v1/c/')");
    db("SELECT async_dl_file_finish(job_id, idx, lease, 'completed', 10, "
       . "'x/y', NULL, 'k/' || job_id || '/0', 1, NULL, NULL, NULL) "
       . "FROM async_dl_claim('w', 10, '1 hour', 5)");
    return $id;
}

# building, its builder's lease running for an hour
my $building = zip_job();
is(db("SELECT count(DISTINCT job_id) FROM "
      . "async_dl_bundle_claim('b/1', '1 hour', 5)"), 1, 'zip 1 claimed');
# pending, its next attempt in an hour (the build failed once)
my $waiting = zip_job();
is(db("SELECT count(DISTINCT job_id) FROM "
      . "async_dl_bundle_claim('b/2', '1 hour', 5)"), 1, 'zip 2 claimed');
is(db("SELECT async_dl_bundle_finish('$waiting', 'b/2', 'failed', NULL, "
      . "NULL, NULL, NULL, 'storage down', now() + interval '1 hour')"),
   't', 'zip 2 to be tried again in an hour');
# a callback whose next attempt is in an hour (the first one failed)
my $retry = callback_job('retry');
is(db("SELECT string_agg(job_id::text, ',') FROM "
      . "async_dl_callback_claim('c/1', 10, '1 hour')"), $retry,
   'callback 1 claimed');
is(db("SELECT async_dl_callback_finish('$retry', 'c/1', false, 'HTTP 500', "
      . "now() + interval '1 hour')"), 't',
   'callback 1 to be tried again in an hour');
# a callback being delivered, its deliverer's lease running for an hour
my $held = callback_job('held');
is(db("SELECT string_agg(job_id::text, ',') FROM "
      . "async_dl_callback_claim('c/2', 10, '1 hour')"), $held,
   'callback 2 claimed');

my @jobs = ($building, $waiting, $retry, $held);
my $ids = join ',', map { "'$_'" } @jobs;
sub rows_of {
    my ($cols) = @_;
    return db("SELECT string_agg(concat_ws(' ', $cols), E'\\n' "
              . "ORDER BY array_position(ARRAY[$ids]::uuid[], id)) "
              . "FROM async_dl_jobs WHERE id IN ($ids)");
}
# each column as text, '-' for NULL
sub cols { return join ', ', map { "coalesce(($_)::text, '-')" } @_ }
my $common = cols(qw(status bundle_status bundle_attempts bundle_error
                     callback_status callback_attempts callback_error
                     api_prefix event_seq updated_at));
my $kept = rows_of($common);
# each job's lease owner, lease end and next attempt, zip then callback
my $v8 = rows_of(cols('bundle_lease_owner',
    "CASE WHEN bundle_status = 'building' THEN bundle_lease_until END",
    "CASE WHEN bundle_status = 'pending' THEN bundle_lease_until END",
    'callback_owner',
    'CASE WHEN callback_owner IS NOT NULL THEN callback_next_at END',
    'CASE WHEN callback_owner IS NULL THEN callback_next_at END'));
my @v8 = split /\n/, $v8;
my $T = qr/\d{4}-\S+ \S+/;       # a timestamp
is(scalar @v8, 4, 'four jobs at version 8');
like($v8[0], qr/^b\/1 $T - - - -$/, 'zip 1: held by b/1');
like($v8[1], qr/^- - $T - - -$/, 'zip 2: waiting for its next attempt');
like($v8[2], qr/^- - - - - $T$/, 'callback 1: waiting for its next attempt');
like($v8[3], qr/^- - - c\/2 $T -$/, 'callback 2: held by c/2');

# --- the upgrade ----------------------------------------------------------

my $log = "$s->{dir}/logs/migrate-upgrade.log";
system("'$WORKER' --migrate "
       . "--database-url=postgresql://postgres\@127.0.0.1:$s->{pg_port}/$DB "
       . ">'$log' 2>&1");
is($?, 0, 'async-dl-worker --migrate upgrades it') or diag(`cat '$log'`);
is(db("SELECT string_agg(version::text, ',' ORDER BY version) "
      . "FROM async_dl_schema_migrations"),
   join(',', map { m{/(\d+)_[^/]*$} && $1 + 0 } @SQL),
   'every migration is recorded');
is(db("SELECT string_agg(column_name, ',' ORDER BY column_name) "
      . "FROM information_schema.columns WHERE table_name = 'async_dl_jobs' "
      . "AND column_name ~ '^(bundle|callback)_(lease|next|owner)'"),
   'bundle_lease_owner,bundle_lease_until,bundle_next_attempt_at,'
   . 'callback_lease_owner,callback_lease_until,callback_next_attempt_at',
   "the zip's and the callback's lease columns, named alike");

is(rows_of($common), $kept,
   'every job keeps its state, its {p}, its event number and updated_at');
is(rows_of(cols(qw(bundle_lease_owner bundle_lease_until
                   bundle_next_attempt_at callback_lease_owner
                   callback_lease_until callback_next_attempt_at))), $v8,
   'each lease end and each next attempt in its own column');

# --- the claims on what was inherited -------------------------------------

is(db("SELECT count(*) FROM async_dl_bundle_claim('b/3', '1 hour', 5)"), 0,
   'no zip to claim: one is held, the other not due');
is(db("SELECT count(*) FROM async_dl_callback_claim('c/3', 10, '1 hour')"),
   0, 'no callback to claim: one is held, the other not due');

db("UPDATE async_dl_jobs SET bundle_lease_until = now() - interval '1 s' "
   . "WHERE id = '$building'");
is(db("SELECT string_agg(DISTINCT job_id::text, ',') FROM "
      . "async_dl_bundle_claim('b/4', '1 hour', 5)"), $building,
   'zip 1 claimed again once its lease ran out');
is(db("SELECT async_dl_bundle_renew('$building', 'b/1', '1 hour')"), 'f',
   'zip 1: its first builder lost the lease');
db("UPDATE async_dl_jobs SET bundle_next_attempt_at = now() - interval '1 s' "
   . "WHERE id = '$waiting'");
is(db("SELECT string_agg(DISTINCT job_id::text || ' ' || attempts, ',') "
      . "FROM async_dl_bundle_claim('b/5', '1 hour', 5)"), "$waiting 2",
   'zip 2 claimed once due, its second attempt');
is(db("SELECT async_dl_bundle_finish('$waiting', 'b/5', 'completed', "
      . "'k/$waiting.zip', 20, 'ab', 2, NULL, NULL)"), 't', 'zip 2 stored');
is(db("SELECT status || ' ' || bundle_status || ' ' "
      . "|| (bundle_lease_owner IS NULL) FROM async_dl_jobs "
      . "WHERE id = '$waiting'"), 'completed completed true',
   'zip 2: the job completed, the lease given up');

db("UPDATE async_dl_jobs SET callback_lease_until = now() - "
   . "interval '1 s' WHERE id = '$held'");
my $body = db("SELECT attempts || ' ' || body FROM "
              . "async_dl_callback_claim('c/4', 10, '1 hour')");
like($body, qr/^2 \{/, 'callback 2 claimed again once its lease ran out');
like($body, qr{"downloadUrl" : "/v1/c/$held"},
     'its document names the job under the {p} of its initiate');
is(db("SELECT async_dl_callback_finish('$held', 'c/2', true, NULL, NULL)"),
   'f', 'callback 2: its first deliverer lost the lease');
is(db("SELECT async_dl_callback_finish('$held', 'c/4', true, NULL, NULL)"),
   't', 'callback 2 delivered by its new holder');
db("UPDATE async_dl_jobs SET callback_next_attempt_at = now() - "
   . "interval '1 s' WHERE id = '$retry'");
is(db("SELECT attempts FROM async_dl_callback_claim('c/5', 10, '1 hour')"),
   2, 'callback 1 claimed once due, its second attempt');
is(db("SELECT async_dl_callback_finish('$retry', 'c/5', false, 'HTTP 503', "
      . "NULL)"), 't', 'callback 1 failed for good');
is(rows_of(cols(qw(callback_status callback_lease_owner
                   callback_lease_until callback_next_attempt_at))),
   "- - - -\n- - - -\nfailed - - -\ndelivered - - -",
   'ended callbacks hold no lease and wait for nothing');

# --- {p} kept by initiate itself -------------------------------------------

is(db("SELECT count(*) FROM pg_trigger WHERE tgname = 'async_dl_jobs_prefix'"),
   0, 'no trigger reads a setting into the job');
for my $p (['/v1/new/', '/v1/new/'], ['', '-']) {
    my $id = db("SELECT job_id FROM async_dl_job_create('o', NULL, NULL, "
                . "60000, 'http://cb/new', '[{\"url\":\"http://x/a\"}]', "
                . "0, 0, '$p->[0]')");
    is(db("SELECT coalesce(api_prefix, '-') FROM async_dl_jobs "
          . "WHERE id = '$id'"), $p->[1],
       "initiate under '$p->[0]': api_prefix $p->[1]");
}

start_nginx(<<'EOF');
location /v1/download/ {
    async_dl;
}
EOF
my $r = initiate({ files => [{ url => "$s->{origin}/f/a" }],
                   callback_url => "$s->{flaky}/callback/p" });
is($r->{status}, 202, 'a job with a callback, through nginx');
is(psql("SELECT api_prefix FROM async_dl_jobs WHERE id = "
        . "'$r->{json}{jobId}'"), '/v1/download/',
   'its {p} kept with it for the callback');
$r = initiate({ files => [{ url => "$s->{origin}/f/a" }] });
is($r->{status}, 202, 'a job without a callback, through nginx');
is(psql("SELECT api_prefix FROM async_dl_jobs WHERE id = "
        . "'$r->{json}{jobId}'"), '/v1/download/', 'its {p} too, as before');

psql("DROP DATABASE $DB");
done_testing();
