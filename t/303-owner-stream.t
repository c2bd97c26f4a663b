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
use IO::Socket::INET;
use Time::HiRes qw(time sleep);

my $s = adl();
my $P = '/owned/';
my $SLOW = AsyncDL::Stack::free_port();     # a small send buffer

start_nginx(<<"EOF");
listen 127.0.0.1:$SLOW sndbuf=4096;
location /owned/ {
    async_dl;
    async_dl_owner \$http_x_user;
    async_dl_heartbeat 1s;
}
location /v1/download/ {
    async_dl;
}
location = /counters {
    return 200 "\$async_dl_stream_subscribers \$async_dl_stream_jobs\n";
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

sub finish_sql {
    my ($job, $idx) = @_;
    return "SELECT async_dl_file_finish('$job', $idx, " . lease($job, $idx)
         . ", 'completed', 1000, 'text/plain', '" . ('ab' x 32)
         . "', 'k/$job/$idx', 1, NULL, NULL, NULL)";
}

sub finish { psql(finish_sql(@_)) }

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
is(request('GET', "${P}stream", { %A, 'Last-Event-ID' => '9' x 30 })->{status},
   400, 'one past 64 bits: 400');
is($r->{json}{error}{code}, 'INVALID_REQUEST', 'INVALID_REQUEST');

# --- a multi-file job, completed with its zip, while away ----------------------
#
# Its end is recorded by the update that stores the zip (the worker's own
# async_dl_bundle_claim and _finish): a resume must bring it too.

my $mj = new_job(2, \%A);
claim($mj);
$st = sse_open("${P}stream", \%A);
my $mid0 = $st->next_event(5)->{id};
$st->close;
finish($mj, 0);
finish($mj, 1);
psql("SELECT count(*) FROM async_dl_bundle_claim('w', '1 hour', 5) "
     . "WHERE job_id = '$mj'");
psql("SELECT async_dl_bundle_finish('$mj', "
     . "(SELECT bundle_lease_owner FROM async_dl_jobs WHERE id = '$mj'), "
     . "'completed', 'k/$mj.zip', 100, '" . ('cd' x 32) . "', 2, NULL, NULL)");
is(psql("SELECT status FROM async_dl_jobs WHERE id = '$mj'"), 'completed',
   'the two-file job completed with its zip');
$st = sse_open("${P}stream", { %A, 'Last-Event-ID' => $mid0 });
@evs = read_until($st, 5, sub {
    grep { ($_->{json}{jobId} // '') eq $mj && $_->{event} eq 'completed' } @{ $_[0] } });
ok((grep { ($_->{json}{jobId} // '') eq $mj && $_->{event} eq 'completed' } @evs),
   'resumed: the end of the job the zip completed');
$st->close;

# --- commits out of order -----------------------------------------------------
#
# Transaction T1 ends job X and stays open; T2 changes job Y and commits;
# the stream sends Y and, after its next listing, an id.  The client leaves;
# T1 commits.  Resuming from that id must bring X's end (an id taken from
# the order of the changes, or their time, would have passed it).

my ($jx, $jy) = (new_job(1, \%A), new_job(1, \%A));
claim($jx);
claim($jy);
$st = sse_open("${P}stream", \%A);
$ev = $st->next_event(5);
is($ev->{event}, 'connected', 'a new stream');
read_until($st, 5, sub { 2 == grep { $_->{event} eq 'job' } @{ $_[0] } });

my $t1 = psql_bg('BEGIN; ' . progress_sql($jx, 0, 111) . '; '
                 . finish_sql($jx, 0) . '; SELECT pg_sleep(8); COMMIT;');
ok(psql_sleeping(1), "T1 changed X and stays open");
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
    grep { ($_->{json}{jobId} // '') eq $jx && $_->{event} eq 'completed' } @{ $_[0] } });
my ($x) = grep { ($_->{json}{jobId} // '') eq $jx && $_->{event} eq 'completed' } @evs;
ok($x, "resumed from that id: X's end, committed after, is there");
is($x && $x->{json}{data}{status}, 'completed', "X's final document");
ok(!(grep { ($_->{json}{jobId} // '') eq $jx && $_->{event} eq 'job' } @evs),
   'an ended job: its final event alone');
$st->close;

# --- PostgreSQL restarts under an open stream ----------------------------------
#
# The stream stays; a job created as soon as the database answers again
# (its notification may come before this nginx LISTENs again) still gets
# its "job" event: the listing after LISTEN is back finds it.

$st = sse_open("${P}stream", \%A);
is($st->next_event(5)->{event}, 'connected', 'a stream before the restart');
read_until($st, 5, sub { grep { $_->{event} eq 'job' } @{ $_[0] } });
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

# --- what a live stream says of jobs that change after their end ---------------
#
# A job that ended gets no second final event when its row changes later
# (a callback's retries), even after listings no longer name it; a job
# deleted while it runs ends with "deleted"; a stream that drops right
# after "connected" resumes from the id "connected" gave.

$st = sse_open("${P}stream", \%A);
$ev = $st->next_event(5);
is($ev->{event}, 'connected', 'a stream');
my $cid = $ev->{id};
like($cid // '', qr/^\d+$/, 'connected gives an id at once');
my ($je, $jd) = (new_job(1, \%A), new_job(1, \%A));
claim($je);
finish($je, 0);
my $del_live = request('DELETE', "${P}$jd", \%A);
is($del_live->{status}, 204, 'a queued job deleted');
@evs = read_until($st, 5, sub {
    my %f = map { ($_->{json}{jobId} // '') => $_->{event} }
            grep { $_->{event} =~ /^(completed|deleted)$/ } @{ $_[0] };
    return $f{$je} && $f{$jd};
});
is(scalar(grep { ($_->{json}{jobId} // '') eq $je && $_->{event} eq 'completed' } @evs),
   1, 'the ended job: completed, once');
is(scalar(grep { ($_->{json}{jobId} // '') eq $jd && $_->{event} eq 'deleted' } @evs),
   1, 'the deleted one: deleted');
# its row changes after its end, over several listings (1 s each)
for (1 .. 3) {
    psql("UPDATE async_dl_jobs SET callback_error = 'try $_' WHERE id = '$je'");
    sleep 1.1;
}
$st->{heartbeats} = 1;
@evs = read_until($st, 1.5, sub { 0 });
ok(!(grep { ($_->{json}{jobId} // '') eq $je } @evs),
   'no second final event for it, however often its row changes');
$st->close;

# dropped right after connected: resuming from its id finds the end of a
# job that was running then
my $jr = new_job(1, \%A);
claim($jr);
$st = sse_open("${P}stream", \%A);
$ev = $st->next_event(5);
$cid = $ev->{id};
$st->close;
finish($jr, 0);
$st = sse_open("${P}stream", { %A, 'Last-Event-ID' => $cid });
@evs = read_until($st, 5, sub {
    grep { ($_->{json}{jobId} // '') eq $jr && $_->{event} eq 'completed' } @{ $_[0] } });
ok((grep { ($_->{json}{jobId} // '') eq $jr && $_->{event} eq 'completed' } @evs),
   "resumed from connected's id: the end of a job that was running then");
$st->close;

# --- a final event in flight while the stream lists again ----------------------
#
# A client that reads slowly (nginx's send buffer 4 KB) while the final
# event of a job of 400 files (a document of ~100 KB) is being sent, and the
# stream lists again (every second): the event arrives whole.

my $long = 'z' x 200;
my $big = initiate({ files => [ map { { url => "$s->{origin}/f/$long$_" } }
                                1 .. 400 ] }, \%A, $P);
is($big->{status}, 202, 'a job of 400 files');
my $bid = $big->{json}{jobId};
$st = sse_open("${P}stream", \%A);
$ev = $st->next_event(5);
my $bcid = $ev->{id};
$st->close;
is(request('POST', "${P}$bid/cancel", \%A)->{status}, 200, 'canceled while away');
use Socket qw(SOL_SOCKET SO_RCVBUF);
my $slow = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $SLOW,
                                 Proto => 'tcp') or die "connect: $!";
setsockopt($slow, SOL_SOCKET, SO_RCVBUF, 4096);
print $slow "GET ${P}stream HTTP/1.1\r\nHost: localhost\r\n"
          . "Accept: text/event-stream\r\nX-User: alice\r\n"
          . "Last-Event-ID: $bcid\r\n\r\n";
sleep 3.5;      # not reading: three listings pass
$slow->blocking(0);
my $raw = '';
my $rd_until = time + 10;
while (time < $rd_until && $raw !~ /event: canceled\n.*?\n\n/s) {
    my $n = sysread($slow, my $buf, 65536);
    last if defined $n && $n == 0;
    if (defined $n) { $raw .= $buf } else { sleep 0.02 }
}
close $slow;
my ($cdata) = $raw =~ /event: canceled\n(?:id: \d+\n)?data: ([^\n]*)\n/;
my $cj = $cdata && eval { decode_json($cdata) };
ok($cj, 'the canceled event arrived whole: it parses ('
        . length($cdata // '') . ' bytes)');
is($cj && $cj->{jobId}, $bid, 'its job');
is($cj && scalar @{ $cj->{data}{files} }, 400, 'with its 400 files');

# --- the WebSocket, with the real worker --------------------------------------

origin_file('o1.bin', 48 * 1024);
origin_file('o2.bin', 32 * 1024);
start_worker();

is(AsyncDL::WS::handshake("${P}ws?lastEventId=x1", \%A)->{status}, 400,
   'a WebSocket lastEventId that is not an id: 400');
my $ws = AsyncDL::WS->open("${P}ws?lastEventId=null", \%A);
is($ws->{status}, 101, 'owner WebSocket: 101 (lastEventId=null: afresh)');
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
my $c;
wait_until(sub { ($c = request('GET', '/counters')->{content}) =~ /^0 0$/ }, 5);
like($c, qr/^0 0$/, 'every subscriber and job left the hub: ' . $c);

unlike(nginx_log(), qr/\[alert\]/, 'no [alert] in the error log');

done_testing();
