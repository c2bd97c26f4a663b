# GET {p}stream/{id}: Server-Sent Events fed by LISTEN/NOTIFY.  The job's
# state is driven here with the worker's own SQL functions under a fake
# worker name, so the order of events is known: connected, file, progress,
# completed; reconnects with Last-Event-ID; an ended job; owner scoping; a
# deleted job; throttled progress; a client that leaves; heartbeats; the
# stream behind a proxying nginx.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use AsyncDL::SSE;
use Time::HiRes qw(time sleep);

my $s = adl();
my $P = '/v1/download/';

start_nginx(<<'EOF');
location /v1/download/ {
    async_dl;
    async_dl_heartbeat 1s;
}
location /owned/ {
    async_dl;
    async_dl_owner $http_x_user;
}
location = /counters {
    return 200 "$async_dl_stream_subscribers $async_dl_stream_jobs $async_dl_stream_queries\n";
}
# (behind the proxy, heartbeats are rare: none flushes an event held back)
location /quiet/ {
    async_dl;
    async_dl_heartbeat 30s;
}
location /proxied/ {
    proxy_pass http://127.0.0.1:$ADL_PORT/quiet/;
    proxy_read_timeout 1h;
}
EOF

sub counters {
    my $r = request('GET', '/counters');
    return [split ' ', $r->{content}];
}

sub q_ { my ($v) = @_; $v =~ s/'/''/g; return "'$v'" }

# a job of $n files (or $files urls), claimed by the fake worker "w"
sub new_job {
    my ($n, $headers, $prefix) = @_;
    my $r = initiate({ files => [ map { { url => "$s->{origin}/f/x$_" } }
                                  1 .. $n ] }, $headers, $prefix);
    is($r->{status}, 202, "job of $n files created") or diag($r->{content});
    return $r->{json}{jobId};
}

sub claim {
    my ($job) = @_;
    psql("SELECT count(*) FROM async_dl_claim('w', 1000, '1 hour', 5) "
         . "WHERE job_id = '$job'");
}

sub progress {
    my ($job, $idx, $bytes, $size) = @_;
    psql("SELECT async_dl_file_progress('$job', $idx, (SELECT lease_owner FROM async_dl_files WHERE job_id = '$job' AND idx = $idx), '1 hour', "
         . "$bytes, $size, 1)");
}

sub finish {
    my ($job, $idx, $status, $size) = @_;
    my $err = $status eq 'failed' ? "'HTTP_STATUS', 'origin answered 404'"
                                  : 'NULL, NULL';
    psql("SELECT async_dl_file_finish('$job', $idx, (SELECT lease_owner FROM async_dl_files WHERE job_id = '$job' AND idx = $idx), '$status', "
         . "$size, 'text/plain', " . q_('ab' x 32) . ", 'k/$job/$idx', 1, "
         . "$err, NULL)");
}

sub names { return join ' ', map { $_->{event} // '?' } @_ }

# --- headers, connected, then events in order ----------------------------

my $job = new_job(3);
my $st = sse_open("${P}stream/$job");
is($st->{status}, 200, 'stream: 200');
like($st->{headers}{'content-type'}, qr{^text/event-stream}, 'content type');
is($st->{headers}{'cache-control'}, 'no-cache', 'Cache-Control: no-cache');
is($st->{headers}{'x-accel-buffering'}, 'no', 'X-Accel-Buffering: no');
like($st->{headers}{'transfer-encoding'} // '', qr/chunked/, 'chunked');

my $ev = $st->next_event(5);
is($ev->{event}, 'connected', 'first event: connected');
like($ev->{retry} // '', qr/^\d+$/, 'with a retry: line');
like($ev->{id} // '', qr/^\d+$/, 'and an id');
is($ev->{json}{jobId}, $job, 'the full status: jobId');
is($ev->{json}{status}, 'queued', 'status queued');
is(scalar @{ $ev->{json}{files} }, 3, 'with its 3 files');
my $status = request('GET', "${P}status/$job")->{json};
is_deeply($ev->{json}, $status, 'connected is the status document');

claim($job);
$ev = $st->next_event(5);
is($ev->{event}, 'progress', 'claimed: progress');
is($ev->{json}{status}, 'processing', 'processing');
ok(!exists $ev->{json}{files}, 'progress carries no file list');
my $last_id = $ev->{id};

progress($job, 0, 500, 1000);
$ev = $st->next_event(5);
is($ev->{event}, 'progress', 'bytes: progress');
is($ev->{json}{bytesDone}, 500, 'bytesDone 500');
cmp_ok($ev->{id}, '>', $last_id, 'ids grow');

finish($job, 0, 'completed', 1000);
my @evs = $st->until_event(qr/^progress$/, 5);
is(names(@evs), 'file progress', 'file 0 ended: file, then progress');
is($evs[0]{json}{index}, 0, 'file event: index 0');
is($evs[0]{json}{status}, 'completed', 'file event: completed');
is($evs[0]{json}{downloadUrl}, "${P}$job/files/0", 'with its link');
is($evs[1]{json}{completedFiles}, 1, 'progress: completedFiles 1');

finish($job, 1, 'failed', 'NULL');
@evs = $st->until_event(qr/^progress$/, 5);
is(names(@evs), 'file progress', 'file 1 failed: file, then progress');
is($evs[0]{json}{error}{code}, 'HTTP_STATUS', 'file event: its error');

finish($job, 2, 'completed', 2000);
@evs = $st->until_event(qr/^progress$/, 5);
is(names(@evs), 'file progress', 'last file: file, then progress');
is($evs[0]{json}{index}, 2, 'file event: index 2');
is($evs[1]{json}{status}, 'processing', 'still processing: its zip first');
is($evs[1]{json}{progress}, 99, 'at 99%');

# a builder (played here) stores the zip: then, and only then, completed
psql("SELECT count(*) FROM async_dl_bundle_claim('b', '30 seconds', 3)");
psql("SELECT async_dl_bundle_finish('$job', 'b', 'completed', "
     . "'k/$job/$job.zip', 3000, " . q_('cd' x 32) . ", 2, NULL, NULL)");
@evs = $st->until_event(qr/^(completed|failed|canceled)$/, 5);
like(names(@evs), qr/^(progress )?completed$/,
     'zip stored: completed (after a progress for "building", or not)');
my $fin = $evs[-1];
is($fin->{json}{status}, 'completed', 'completed: full status');
is(scalar @{ $fin->{json}{files} }, 3, 'with its files');
is($fin->{json}{bundle}{status}, 'completed', 'and its zip, stored');
is($fin->{json}{progress}, 100, 'at 100%');
ok($st->wait_closed(2), 'the server ends the stream after completed');
ok(!grep({ !defined $_->{id} } @{ $st->{events} }), 'every event had an id');
my $final_id = $fin->{id};

# --- reconnects and an ended job --------------------------------------------

for my $how (['header', { 'Last-Event-ID' => $last_id }, ''],
             ['query', {}, "?lastEventId=$last_id"])
{
    my ($what, $h, $q) = @$how;
    my $t0 = time;
    my $r = sse_open("${P}stream/$job$q", $h);
    @evs = $r->until_event(qr/^completed$/, 5);
    is(names(@evs), 'connected completed',
       "ended job, Last-Event-ID by $what: connected and completed at once");
    is($evs[0]{json}{status}, 'completed', "$what: connected is current");
    is($evs[1]{id}, $final_id, "$what: the final event's id");
    ok($r->wait_closed(2) && time - $t0 < 2, "$what: closed at once");
}

# --- owner scoping, unknown ids ---------------------------------------------

my $mine = new_job(1, { 'X-User' => 'alice' }, '/owned/');
my $r = sse_open("/owned/stream/$mine", { 'X-User' => 'bob' });
is($r->{status}, 404, "another owner's job: 404");
is($r->{json}{error}{code}, 'JOB_NOT_FOUND', 'JOB_NOT_FOUND');
$r = sse_open("/owned/stream/$mine");
is($r->{status}, 401, 'no owner: 401');
$r = sse_open("/owned/stream/$mine", { 'X-User' => 'alice' });
is($r->{status}, 200, 'the owner: 200');
is($r->next_event(5)->{event}, 'connected', 'the owner: connected');
my $other = sse_open("/owned/stream/$mine", { 'X-User' => 'bob' });
is($other->{status}, 404,
   "another owner while the job is followed (cached state): 404");
$r->close;
$r = sse_open("${P}stream/00000000-0000-4000-8000-000000000000");
is($r->{status}, 404, 'unknown job: 404');
is($r->{json}{error}{code}, 'JOB_NOT_FOUND', 'unknown job: JOB_NOT_FOUND');
$r = sse_open("${P}stream/not-a-uuid");
is($r->{status}, 404, 'malformed id: 404');
is(request('POST', "${P}stream/$job")->{status}, 405, 'POST: 405');

# --- canceled, deleted ------------------------------------------------------

$job = new_job(2);
$st = sse_open("${P}stream/$job");
is($st->next_event(5)->{event}, 'connected', 'cancel: connected');
is(request('POST', "${P}$job/cancel")->{status}, 200, 'cancel');
@evs = $st->until_event(qr/^(completed|failed|canceled)$/, 5);
is($evs[-1]{event}, 'canceled', 'a canceled job ends with canceled');
is($evs[-1]{json}{status}, 'canceled', 'with its status');
ok($st->wait_closed(2), 'and the stream ends');

$job = new_job(1);
$st = sse_open("${P}stream/$job");
is($st->next_event(5)->{event}, 'connected', 'delete: connected');
is(request('DELETE', "${P}$job")->{status}, 204, 'DELETE');
@evs = $st->until_event(qr/^(completed|failed|canceled|deleted)$/, 5);
is($evs[-1]{event}, 'deleted', 'a deleted job ends with deleted');
is($evs[-1]{json}{error}{code}, 'JOB_DELETED', 'JOB_DELETED');
ok($st->wait_closed(2), 'and the stream ends');

# --- throttling: a storm of progress costs a few queries ------------------

$job = new_job(1);
claim($job);
my @streams = map { sse_open("${P}stream/$job") } 1 .. 5;
$_->next_event(5) for @streams;
my $q0 = counters()->[2];
my $t0 = time;
psql("SELECT async_dl_file_progress('$job', 0, (SELECT lease_owner FROM async_dl_files WHERE job_id = '$job' AND idx = 0), '1 hour', n * 10, "
     . "100000, 1) FROM generate_series(1, 400) n");
psql("DO \$\$ BEGIN FOR n IN 1..300 LOOP PERFORM "
     . "async_dl_file_progress('$job', 0, (SELECT lease_owner FROM async_dl_files WHERE job_id = '$job' AND idx = 0), '1 hour', 4000 + n, 100000, 1);"
     . " PERFORM pg_sleep(0.005); COMMIT; END LOOP; END \$\$");
my $storm = time - $t0;
sleep 0.6;
my $queries = counters()->[2] - $q0;
cmp_ok($queries, '<=', 3 + $storm / 0.25 + 2,
       sprintf('700 progress updates in %.1f s: %d queries', $storm,
               $queries));
@evs = $streams[0]->until_event(qr/^never$/, 0.3);
my @prog = grep { $_->{event} eq 'progress' } @evs;
cmp_ok(scalar @prog, '<=', 2 + $storm / 0.25 + 2,
       scalar(@prog) . ' progress events reached a client');
is($prog[-1]{json}{bytesDone}, 4300, 'the last one has the latest bytes');
finish($job, 0, 'completed', 100000);
for my $c (@streams) {
    @evs = $c->until_event(qr/^completed$/, 5);
    is($evs[-1]{event}, 'completed', 'every subscriber: completed')
        or diag(names(@evs));
}

# --- a client that leaves leaves nothing -----------------------------------

ok(wait_until(sub { counters()->[0] == 0 }, 5), 'no subscriber left');
$job = new_job(1);
my @leaving = map { sse_open("${P}stream/$job") } 1 .. 10;
$_->next_event(5) for @leaving;
is_deeply([ @{ counters() }[0, 1] ], [10, 1], '10 subscribers of 1 job');
$_->close for @leaving;
ok(wait_until(sub { counters()->[0] == 0 && counters()->[1] == 0 }, 3),
   'clients gone: no subscriber, no job left');

# --- heartbeats --------------------------------------------------------------

$st = sse_open("${P}stream/$job");
$st->{heartbeats} = 1;
$st->next_event(5);
$t0 = time;
@evs = $st->until_event(qr/^never$/, 2.6);
my @hb = grep { $_->{event} eq 'heartbeat' } @evs;
cmp_ok(scalar @hb, '>=', 2, scalar(@hb) . ' heartbeats in 2.6 s (1 s)');
ok(!grep({ !defined $_->{id} } @hb), 'heartbeats carry an id');
$st->close;

# --- behind a proxy -------------------------------------------------------------

$st = sse_open("/proxied/stream/$job");
is($st->{status}, 200, 'proxied: 200');
is($st->next_event(5)->{event}, 'connected', 'proxied: connected');
claim($job);
is($st->next_event(5)->{event}, 'progress', 'proxied: claimed');
sleep 0.3;                                  # past the progress throttle
$t0 = time;
progress($job, 0, 10, 100);
my $t1 = time;                              # psql itself is slow under load
$ev = $st->next_event(5);
my $dt = $ev ? $ev->{at} - $t1 : 99;
ok($ev && $ev->{event} eq 'progress' && $dt < 3,
   sprintf('proxied: progress arrives at once (%.0f ms after psql ended)',
           1000 * $dt));
finish($job, 0, 'completed', 100);
@evs = $st->until_event(qr/^completed$/, 5);
is($evs[-1]{event}, 'completed', 'proxied: completed');
ok($st->wait_closed(2), 'proxied: the stream ends');

unlike(nginx_log(), qr/\[(alert|crit|emerg)\]/, 'nothing alarming logged');
unlike(nginx_log(), qr/\[error\]/, 'no [error] logged');

done_testing();
