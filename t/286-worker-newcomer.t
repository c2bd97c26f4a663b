# A newcomer's job starts at once even when a backlog of long downloads
# holds every slot: the notification of a new job says whether its owner
# has nothing downloading ("<id> idle", schema 17), and a worker whose
# ASYNC_DL_CONCURRENCY slots are taken claims one file beyond them for such
# owners only (ASYNC_DL_NEWCOMER_SLOTS, default 1).  Counted at the origin.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use Time::HiRes qw(sleep time);

my $s = adl();
my $o = $s->{origin};
origin_file('long.bin', 64 * 1024);     # 16 s at 4 KB/s, 4 s at 16 KB/s
origin_file('tiny.bin', 1024);

# --- the payload, from PostgreSQL itself ---------------------------------
sub notified {
    my ($owner) = @_;
    my $out = `psql -X -q -At -h 127.0.0.1 -p $s->{pg_port} -U postgres -c "LISTEN async_dl_jobs" -c "SELECT outcome FROM async_dl_job_create('$owner', NULL, NULL, 60000, NULL, '[{\\"url\\": \\"$o/f/tiny.bin?n=1\\"}]'::json, 0, 0, '/v1/download/')" 2>&1`;
    return $out =~ /payload "([^"]*)"/ ? $1 : "none in: $out";
}
my $p = notified('P');
like($p, qr/^[0-9a-f-]{36} idle$/, "an owner with nothing downloading: "
     . "'<id> idle' ($p)");
psql("SELECT count(*) FROM async_dl_claim('w-test', 1, '1 minute', 5)");
is(psql("SELECT count(*) FROM async_dl_files WHERE owner = 'P' AND status "
        . "= 'downloading'"), 1, "P's file is downloading (claimed here)");
$p = notified('P');
like($p, qr/^[0-9a-f-]{36}$/, "then P's next job's notification is the id "
     . "alone ($p)");
psql("DELETE FROM async_dl_jobs WHERE owner = 'P'");

# --- the claim beyond the slots, from PostgreSQL itself --------------------
my $a1 = add_job(["$o/f/tiny.bin?a1"], owner => 'A');
psql("SELECT count(*) FROM async_dl_claim('w-test', 1, '1 minute', 5)");
my $a2 = add_job(["$o/f/tiny.bin?a2"], owner => 'A');
my $b1 = add_job(["$o/f/tiny.bin?b1"], owner => 'B');
sub newcomer_claim {
    my ($job) = @_;
    return psql("SELECT string_agg(job_id::text, ' ') FROM "
                . "async_dl_claim_newcomer('$job', 'w-test', 4, '1 minute', 5, "
                . "'', 0)");
}
is(newcomer_claim($a2), $b1, "a newcomer claim of 4 (heard of A's job) takes "
   . "B's file alone: A has a file downloading");
is(newcomer_claim($a2), '', '... then nothing: every owner has one');
is(newcomer_claim($b1), '', "... nor for B's job, taken already");
is(psql("SELECT status FROM async_dl_files WHERE job_id = '$a2'"), 'pending',
   "A's second job still waits");
psql("DELETE FROM async_dl_jobs WHERE owner IN ('A', 'B')");

# --- with a worker -----------------------------------------------------------
sub at_once {
    my ($re) = @_;
    my @ev;
    for (split /\n/, origin_log()) {
        my ($msec, $rt, $st, $uri) = split ' ';
        push @ev, [$msec - $rt, 1], [$msec, -1] if $uri =~ $re;
    }
    my ($now, $max) = (0, 0);
    for (sort { $a->[0] <=> $b->[0] || $a->[1] <=> $b->[1] } @ev) {
        $now += $_->[1];
        $max = $now if $now > $max;
    }
    return $max;
}
my $downloading = sub {
    psql("SELECT count(*) FROM async_dl_files WHERE owner = '$_[0]' AND "
         . "status = 'downloading'");
};

# A's files take 16 s each, long beside everything the checks below wait for
my @a = map { add_job(["$o/slow/long.bin?rate=4k&a=$_"], owner => 'A',
                      timeout => 120) } 1 .. 6;
start_worker(ASYNC_DL_CONCURRENCY => 2);
ok(wait_until(sub { $downloading->('A') == 2 }, 10),
   "A's backlog takes both slots");

my $t0 = time;
my $b = add_job(["$o/f/tiny.bin?b=1"], owner => 'B');
is(wait_ended($b, 10), 'completed', "B's job completed");
my $took = time - $t0;
cmp_ok($took, '<', 5, sprintf("... in %.2f s, with no slot free (A's take 16 s)",
                              $took));
is(psql("SELECT count(*) FROM async_dl_files WHERE owner = 'A' AND status "
        . "= 'completed'"), 0, "... while none of A's had ended");

# A has files downloading: its new job does not take the slot beyond
my $a_new = add_job(["$o/f/tiny.bin?a=new"], owner => 'A');
sleep 1;
is($downloading->('A'), 2, "A's new job takes no slot beyond the two (A has "
   . 'files downloading)');

# two newcomers at once: one slot beyond, so one of them waits for it
my @cd = map { add_job(["$o/slow/long.bin?rate=16k&n=$_"], owner => $_) }
             qw(C D);
ok(wait_until(sub {
    psql("SELECT count(*) FROM async_dl_files WHERE owner IN ('C', 'D') AND "
         . "status = 'downloading'") >= 1;
}, 10), 'a newcomer started');
sleep 1;
is(psql("SELECT count(*) FROM async_dl_files WHERE owner IN ('C', 'D') AND "
        . "status = 'downloading'"), 1,
   'of two newcomers at once, one starts beyond the slots, the other waits');
is(wait_ended($_, 60), 'completed', 'a newcomer completed') for @cd;
is(wait_ended($_, 90), 'completed', 'an A job completed') for @a, $a_new;
is(at_once(qr{^/(slow|f)/}), 3, 'the origin saw at most 3 requests at once '
   . '(2 slots and 1 beyond them), and 3 were reached');

# --- ASYNC_DL_NEWCOMER_SLOTS=0: the newcomer waits for a slot ---------------
stop_worker('TERM');
@a = map { add_job(["$o/slow/long.bin?rate=8k&z=$_"], owner => 'A',
                   timeout => 120) } 1 .. 6;
start_worker(ASYNC_DL_CONCURRENCY => 2, ASYNC_DL_NEWCOMER_SLOTS => 0);
ok(wait_until(sub { $downloading->('A') == 2 }, 10),
   "A's backlog takes both slots again");
$b = add_job(["$o/f/tiny.bin?b=2"], owner => 'B');
sleep 1;
is(psql("SELECT status FROM async_dl_files WHERE job_id = '$b'"), 'pending',
   "with ASYNC_DL_NEWCOMER_SLOTS=0, B's job waits for a slot");
is(wait_ended($b, 20), 'completed', '... and gets the next one (fair claims)');
cmp_ok(psql("SELECT count(*) FROM async_dl_files WHERE owner = 'A' AND url "
            . "LIKE '%z=%' AND (status = 'pending' OR started_at > (SELECT "
            . "started_at FROM async_dl_files WHERE job_id = '$b'))"), '>=', 2,
       "... ahead of A's backlog (A's files that started after it)");
is(wait_ended($_, 90), 'completed', 'an A job completed') for @a;

done_testing();
