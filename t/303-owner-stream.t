# GET {p}stream and GET {p}ws without a job id: the events of all the
# owner's jobs, those created after the stream opened too, each naming its
# job; ids that hold across jobs, so that a client resuming with
# Last-Event-ID misses the change of no job: while it was away, and when
# transactions commit in another order than they began.  Jobs are driven
# with the worker's own SQL functions under a fake worker name (as in
# t/300), then by the real worker.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use AsyncDL::SSE;
use AsyncDL::WS;
use AsyncDL::Race;
use JSON::PP;
use Time::HiRes qw(time sleep);

my $s = adl();
my $P = '/owned/';

start_nginx(<<'EOF');
location /owned/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_heartbeat 1s;
}
location /v1/download/ {
    async_dl;
}
location = /counters {
    return 200 "$async_dl_stream_subscribers $async_dl_stream_jobs\n";
}
EOF

my %A = ('X-User' => 'alice');
my %B = ('X-User' => 'bob');

sub new_job {
    my ($n, $h) = @_;
    my $r = initiate({ files => [ map { { url => "$s->{origin}/f/x$_" } }
                                  1 .. $n ] }, $h, $P);
    is($r->{status}, 202, "job of $n files created") or diag($r->{content});
    return $r->{json}{jobId};
}

sub claim {
    my ($job) = @_;
    psql("SELECT count(*) FROM async_dl_claim('w', 1000, '1 hour', 5) "
         . "WHERE job_id = '$job'");
}

sub lease { my ($job, $idx) = @_; "(SELECT lease_owner FROM async_dl_files WHERE job_id = '$job' AND idx = $idx)" }

sub progress_sql {
    my ($job, $idx, $bytes) = @_;
    return "SELECT async_dl_file_progress('$job', $idx, " . lease($job, $idx)
         . ", '1 hour', $bytes, 1000, 1)";
}

sub finish {
    my ($job, $idx) = @_;
    psql("SELECT async_dl_file_finish('$job', $idx, " . lease($job, $idx)
         . ", 'completed', 1000, 'text/plain', '" . ('ab' x 32)
         . "', 'k/$job/$idx', 1, NULL, NULL, NULL)");
}

# what the events say of each job: its last status
sub fold {
    my ($state, @evs) = @_;
    for my $ev (@evs) {
        next unless $ev->{json} && $ev->{json}{jobId} && $ev->{json}{data};
        my $d = $ev->{json}{data};
        my $st = $ev->{event} eq 'file' ? undef : $d->{status};
        $state->{ $ev->{json}{jobId} } = $st if defined $st;
    }
    return $state;
}

sub read_until {
    my ($st, $secs, $done) = @_;
    my @evs;
    my $until = time + $secs;
    while (time < $until) {
        my $ev = $st->next_event($until - time) or last;
        push @evs, $ev;
        last if $done->(\@evs);
    }
    return @evs;
}

# --- a stream opened before any job ----------------------------------------

my $st = sse_open("${P}stream", \%A);
is($st->{status}, 200, 'owner stream: 200');
like($st->{headers}{'content-type'}, qr{^text/event-stream}, 'event stream');
my $ev = $st->next_event(5);
is($ev->{event}, 'connected', 'first event: connected');
is($ev->{json}{jobs}, 0, 'no job to follow yet');
like($ev->{id} // '', qr/^\d+$/, 'connected has an id (a horizon)');
my $id0 = $ev->{id};

my $bobs = sse_open("${P}stream", \%B);
is($bobs->next_event(5)->{event}, 'connected', "bob's stream: connected");

# ten jobs created after it opened, and one of bob's
my @jobs = map { new_job(1, \%A) } 1 .. 10;
my $bobjob = new_job(1, \%B);
my %mine = map { $_ => 1 } @jobs;

my %seen;
my @evs = read_until($st, 10, sub {
    $seen{ $_->{json}{jobId} // '' }++ for grep { $_->{event} eq 'job' } @{ $_[0] };
    return keys(%seen) >= 10;
});
is(scalar(grep { $mine{$_} } keys %seen), 10,
   'a "job" event for each of the 10 jobs created after the stream opened');
ok(!$seen{$bobjob}, "not bob's job");
my @jobevs = grep { $_->{event} eq 'job' } @evs;
is($jobevs[0]{json}{data}{status}, 'queued', 'its data: the status document');
is($jobevs[0]{json}{data}{jobId}, $jobevs[0]{json}{jobId},
   'named by jobId, around the document of that job');

my @b = read_until($bobs, 5, sub { grep { $_->{event} eq 'job' } @{ $_[0] } });
is(scalar(grep { $_->{event} eq 'job' && $_->{json}{jobId} eq $bobjob } @b), 1,
   "bob's stream: his job alone");
ok(!(grep { $mine{ $_->{json}{jobId} // '' } } @b), "and none of alice's");

# the jobs progress and end: events of every job, in one stream
my %state;
fold(\%state, @evs);
claim($_) for @jobs;
psql(progress_sql($_, 0, 300)) for @jobs;
finish($_, 0) for @jobs[0 .. 4];

@evs = read_until($st, 15, sub {
    my %end;
    for (@{ $_[0] }) { $end{ $_->{json}{jobId} } = 1 if $_->{event} eq 'completed' }
    return keys(%end) >= 5;
});
fold(\%state, @evs);
is(scalar(grep { ($state{$_} // '') eq 'completed' } @jobs[0 .. 4]), 5,
   'the five ended jobs: their completed events');
ok((grep { $_->{event} eq 'file' && $_->{json}{data}{index} == 0 } @evs),
   'file events, named by job');
ok((grep { $_->{event} eq 'progress' } @evs), 'progress events');
my @ids = map { $_->{id} } grep { defined $_->{id} } @evs;
is_deeply([ sort { $a <=> $b } @ids ], \@ids, 'ids never go back');
my $last = $ids[-1];
cmp_ok($last, '>=', $id0, 'ids grow from the first');

# --- away: jobs end and one is deleted; the reconnect misses none ------------

$st->close;
finish($_, 0) for @jobs[5 .. 8];
my $r = request('DELETE', "${P}$jobs[9]", \%A);
is($r->{status}, 204, 'one job deleted while the client is away')
    or diag($r->{content});

$st = sse_open("${P}stream", { %A, 'Last-Event-ID' => $last });
is($st->{status}, 200, 'reconnect with Last-Event-ID');
$ev = $st->next_event(5);
is($ev->{event}, 'connected', 'connected');
@evs = read_until($st, 10, sub {
    my %end;
    for (@{ $_[0] }) {
        $end{ $_->{json}{jobId} } = 1
            if $_->{event} =~ /^(completed|deleted)$/;
    }
    return 5 == grep { $end{$_} } @jobs[5 .. 9];
});
fold(\%state, @evs);
for my $j (@evs) { $state{ $j->{json}{jobId} } = 'deleted' if $j->{event} eq 'deleted' }
is(scalar(grep { ($state{$_} // '') eq 'completed' } @jobs[0 .. 8]), 9,
   'after the reconnect, every job that ended is known to have ended');
is($state{ $jobs[9] }, 'deleted', 'and the deleted one as deleted');
my ($del) = grep { $_->{event} eq 'deleted' } @evs;
is($del && $del->{json}{data}{error}{code}, 'JOB_DELETED', 'deleted: its document');
$st->close;

# a Last-Event-ID this stream does not give
$r = request('GET', "${P}stream", { %A, 'Last-Event-ID' => 'abc' });
is($r->{status}, 400, 'a Last-Event-ID that is not a horizon: 400');
is($r->{json}{error}{code}, 'INVALID_REQUEST', 'INVALID_REQUEST');

# --- commits out of order -----------------------------------------------------
#
# Transaction T1 changes job X and stays open; T2 changes job Y and commits;
# the stream sends Y and, after its next listing, an id.  The client leaves;
# T1 commits.  Resuming from that id must bring X's change.

my ($jx, $jy) = (new_job(1, \%A), new_job(1, \%A));
claim($jx);
claim($jy);
$st = sse_open("${P}stream", \%A);
$ev = $st->next_event(5);
is($ev->{event}, 'connected', 'a new stream');
read_until($st, 5, sub { 2 == grep { $_->{event} eq 'job' } @{ $_[0] } });

my $t1 = psql_bg('BEGIN; ' . progress_sql($jx, 0, 111)
                 . '; SELECT pg_sleep(8); COMMIT;');
sleep 0.5;
psql(progress_sql($jy, 0, 222));
@evs = read_until($st, 5, sub {
    grep { $_->{event} eq 'progress' && $_->{json}{jobId} eq $jy } @{ $_[0] } });
ok((grep { $_->{json}{jobId} eq $jy } @evs), "Y's change, committed second, is sent");
# the listings every heartbeat (1 s) give an id while T1 is open
my $hb_until = time + 3.5;
my $mid;
while (time < $hb_until) {
    $st->{heartbeats} = 1;
    my $e = $st->next_event($hb_until - time) or last;
    $mid = $e->{id} if defined $e->{id};
}
ok(defined $mid, 'an id while T1 is open: ' . ($mid // 'none'));
$st->close;
my ($rc) = psql_wait($t1);
is($rc, 0, 'T1 committed, after the client left');

$st = sse_open("${P}stream", { %A, 'Last-Event-ID' => $mid });
@evs = read_until($st, 5, sub {
    grep { ($_->{json}{jobId} // '') eq $jx && $_->{event} eq 'job' } @{ $_[0] } });
my ($x) = grep { ($_->{json}{jobId} // '') eq $jx && $_->{event} eq 'job' } @evs;
ok($x, "resumed from that id: X's change, committed after, is there");
is($x && $x->{json}{data}{bytesDone}, 111, "with X's bytes");
$st->close;

# --- PostgreSQL restarts under an open stream ----------------------------------
#
# The stream stays; a job created as soon as the database answers again
# (its notification may come before this nginx LISTENs again) still gets
# its "job" event: the listing after LISTEN is back finds it.

$st = sse_open("${P}stream", \%A);
is($st->next_event(5)->{event}, 'connected', 'a stream before the restart');
read_until($st, 5, sub { 2 == grep { $_->{event} eq 'job' } @{ $_[0] } });
pg_stop('immediate');
pg_start();
my $late;
for (1 .. 100) {
    my $rr = initiate({ files => [{ url => "$s->{origin}/f/late" }] }, \%A, $P);
    if ($rr->{status} == 202) { $late = $rr->{json}{jobId}; last }
    sleep 0.05;
}
ok($late, 'a job created right after the restart');
@evs = read_until($st, 10, sub {
    grep { $_->{event} eq 'job' && $_->{json}{jobId} eq ($late // '') } @{ $_[0] } });
ok((grep { $_->{event} eq 'job' && $_->{json}{jobId} eq ($late // '') } @evs),
   'the stream, still open, carries it');
$st->close;

# --- the WebSocket, with the real worker --------------------------------------

origin_file('o1.bin', 48 * 1024);
origin_file('o2.bin', 32 * 1024);
start_worker();

my $ws = AsyncDL::WS->open("${P}ws", \%A);
is($ws->{status}, 101, 'owner WebSocket: 101');
my $f = $ws->read_frame(5);
my $msg = $f && decode_json($f->{payload});
is($msg && $msg->{event}, 'connected', 'first frame: connected');
ok($msg && exists $msg->{id}, 'with its id (null until the jobs it follows are sent)');

my @real;
for (1 .. 3) {
    my $rr = initiate({ files => [{ url => "$s->{origin}/slow/o1.bin?rate=64k" },
                                  { url => "$s->{origin}/f/o2.bin" }] }, \%A, $P);
    is($rr->{status}, 202, 'a real job');
    push @real, $rr->{json}{jobId};
}
my %done;
my %kinds;
my $until = time + 30;
while (time < $until && keys(%done) < 3) {
    my $fr = $ws->read_frame($until - time) or last;
    next unless $fr->{opcode} == 1;
    my $m = decode_json($fr->{payload});
    $kinds{ $m->{event} }++;
    $done{ $m->{jobId} } = $m->{data}{status} if $m->{event} eq 'completed';
}
is(scalar(grep { ($done{$_} // '') eq 'completed' } @real), 3,
   'the WebSocket carried all three real jobs to completed')
    or diag(explain(\%kinds, \%done));
ok($kinds{job} && $kinds{file} && $kinds{progress},
   'job, file and progress frames on the way');
$ws->close;

# --- nothing left behind ------------------------------------------------------

$bobs->close;
sleep 0.5;
my $c = request('GET', '/counters')->{content};
like($c, qr/^0 0$/, 'every subscriber and job left the hub: ' . $c);

unlike(nginx_log(), qr/\[alert\]/, 'no [alert] in the error log');

done_testing();
