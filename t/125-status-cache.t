# async_dl_status_cache: GET {p}status/{id} from shared memory.
#
# Two nginx worker processes share one cache.  The statements that reach
# PostgreSQL are counted in its log (log_statement = all): a cached job's
# polls (and their 304s) send none.  A cached document is the one
# PostgreSQL gives, byte for byte, with the same ETag as with the cache
# off; another owner gets the same 404 as for a missing job; a change
# committed by another session (a worker's calls, played here) is seen
# once its notification is in; cancel and DELETE through nginx are seen
# by the very next poll; an expired job is 404 at once; a lost LISTEN
# connection flushes the cache, and the first poll afterwards sees what
# changed meanwhile; a LISTEN connection that stops answering makes the
# polls go to PostgreSQL, then is closed; too large a document is never
# kept.  The directive's errors, and the counters against a recount.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;

# this test sets async_dl_status_cache itself
delete $ENV{ADL_STATUS_CACHE};
use Time::HiRes qw(time sleep);

my $s = adl();
my %alice = ('X-User' => 'alice');
my %bob = ('X-User' => 'bob');

# --- the directive --------------------------------------------------------

for my $bad (['10k', qr/is not a size of at least 256k/],
             ['1m lag=10ms', qr/lag is a time from 100ms to 60s/],
             ['1m max_entry=512', qr/max_entry is a size from 1k/],
             ['1m bogus=1', qr/unknown parameter "bogus=1"/],
             ['off lag=1s', qr/takes no parameters after "off"/])
{
    my $err = start_nginx("location / { return 204; }",
                          http_config => "async_dl_status_cache $bad->[0];",
                          expect_failure => 1);
    like($err // '', $bad->[1], "async_dl_status_cache $bad->[0]: refused");
}

# --- the stack ----------------------------------------------------------------

psql("ALTER ROLE postgres SET log_statement = 'all'");

my $loc = <<'EOF';
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
}
location /anon/ {
    async_dl;
}
location = /sc {
    return 200 "$async_dl_status_cache_hits $async_dl_status_cache_misses $async_dl_status_cache_stale $async_dl_status_cache_owner_misses $async_dl_status_cache_expired $async_dl_status_cache_fills $async_dl_status_cache_refused $async_dl_status_cache_too_large $async_dl_status_cache_invalidations $async_dl_status_cache_flushes $async_dl_status_cache_evictions $async_dl_status_cache_entries $async_dl_status_cache_bytes\n";
}
EOF
start_nginx($loc, workers => 2, http_config => <<'EOF');
    async_dl_status_cache 1m lag=400ms max_entry=4k;
    async_dl_postgres_timeout 2s;
EOF

my @names = qw(hits misses stale owner_misses expired fills refused too_large
               invalidations flushes evictions entries bytes);
sub counters {
    my @v = split ' ', request('GET', '/sc')->{content};
    return { map { $names[$_] => $v[$_] } 0 .. $#names };
}

# statements that reached PostgreSQL: status documents (cache on, or off)
sub fills { scalar(() = pg_log() =~ /execute async_dl_status_fill:/g) }
sub plain { scalar(() = pg_log() =~ /execute async_dl_status:/g) }

sub status { request('GET', "/v1/download/status/$_[0]", $_[1] || \%alice) }

# nginx's LISTEN connections are up, and their pings come back
ok(wait_until(sub { psql("SELECT count(*) FROM pg_stat_activity WHERE "
                         . "application_name = 'async-dl-nginx-listen'") == 2 },
              10, 'two LISTEN connections'), 'each worker process LISTENs');

my $id = initiate({ files => [{ url => "$s->{origin}/f/a.bin" },
                              { url => "$s->{origin}/f/b.bin" }] },
                  \%alice)->{json}{jobId};
ok($id, 'a job of two files');

# --- hits ----------------------------------------------------------------

my $first = status($id);
is($first->{status}, 200, 'the first poll: 200');
my $c0 = counters();
my $n0 = fills();
my @polls = map { status($id) } 1 .. 20;
is(scalar(grep { $_->{status} == 200 } @polls), 20, '20 more polls: 200');
my $c1 = counters();
cmp_ok($c1->{hits} - $c0->{hits}, '>=', 19, 'they are hits (at most one '
       . 'miss while the first ping comes back)');
cmp_ok(fills() - $n0, '<=', 1, 'and reach PostgreSQL at most once');
is(scalar(grep { $_->{content} ne $first->{content} } @polls), 0,
   'the same document each time');
is($polls[-1]{headers}{etag}, $first->{headers}{etag}, 'the same ETag');
is($polls[-1]{headers}{'cache-control'}, 'no-cache', 'Cache-Control: no-cache');
# the same without the cache, for the documents and ETags
start_nginx($loc, instance => 1);
my $o = request('GET', 'http://127.0.0.1:' . nginx_port(1)
                . "/v1/download/status/$id", \%alice);
stop_nginx(1);
is($polls[-1]{content}, $o->{content}, 'byte for byte what nginx without '
   . 'the cache answers');
is($polls[-1]{headers}{etag}, $o->{headers}{etag}, 'with its ETag');

$n0 = fills();
my $h0 = counters()->{hits};
my $r = request('GET', "/v1/download/status/$id",
                { %alice, 'If-None-Match' => $first->{headers}{etag} });
is($r->{status}, 304, 'If-None-Match on a hit: 304');
is(counters()->{hits}, $h0 + 1, 'a hit');
$r = request('HEAD', "/v1/download/status/$id", \%alice);
is($r->{status}, 200, 'HEAD: 200');
is(fills(), $n0, 'neither reached PostgreSQL');

# --- owners --------------------------------------------------------------

$n0 = fills();
my $om = counters()->{owner_misses};
$r = status($id, \%bob);
is($r->{status}, 404, "another owner: 404");
is($r->{json}{error}{code}, 'JOB_NOT_FOUND', 'JOB_NOT_FOUND, as for a '
   . 'missing job');
is(fills(), $n0 + 1, 'after asking PostgreSQL, as for any miss');
is(counters()->{owner_misses}, $om + 1, 'counted as an owner miss');
is(status($id)->{status}, 200, 'the owner still gets it');
my $missing = '00000000-0000-4000-8000-000000000000';
is(status($missing)->{status}, 404, 'a missing job: 404');

# --- changes from other sessions ----------------------------------------

# wait for the change (one notification, about a lag at most) and check
# every poll meanwhile is the old document or the new one
sub sees {
    my ($what, $check) = @_;
    my $t0 = time;
    my $seen;
    until ($seen) {
        my $j = status($id)->{json};
        $seen = $check->($j) ? time - $t0 : undef;
        last if time - $t0 > 3;
        sleep 0.02 unless $seen;
    }
    ok(defined $seen, "$what: seen" . (defined $seen
                                       ? sprintf(' after %.0f ms', $seen * 1000)
                                       : ' (never)'));
    cmp_ok($seen // 99, '<', 0.4 + 0.3, "$what: within the lag");
}

status($id);
is(claim_one(), 1, 'a worker claims file 0');
sees('the claim (the job starts)', sub {
    $_[0]{status} eq 'processing' && $_[0]{files}[0]{status} eq 'downloading' });
file_progress($id, 0, 1000, 5000);
sees('its progress', sub { $_[0]{bytesDone} == 1000 });

# a file that starts in a job already processing changes only the file's
# row: it is announced all the same
status($id);
is(claim_one(), 1, 'a worker claims file 1 of the processing job');
sees('the second claim', sub { $_[0]{files}[1]{status} eq 'downloading'
                               && $_[0]{files}[1]{attempts} == 1 });

# a try that fails before its first byte: status, error, no byte moved
psql("SELECT async_dl_file_finish('$id', 1, " . file_lease($id, 1) . ", 'pending', "
     . "NULL, NULL, NULL, NULL, 1, 'HTTP_STATUS', 'the origin answered 503', "
     . "now())");
sees('a retry without bytes', sub { $_[0]{files}[1]{status} eq 'pending'
          && ($_[0]{files}[1]{error}{code} // '') eq 'HTTP_STATUS' });

# every change of the document a worker function makes comes with a
# notification of a higher event_seq (the cache keeps what it has until
# then)
sub doc_seq {
    return split /\|/, psql("SELECT event_seq, md5(async_dl_job_status(id, "
                            . "owner, '/v1/download/')) FROM async_dl_jobs "
                            . "WHERE id = '$id'"), 2;
}
my @steps = (
    [claim => sub { claim_one() }],
    [progress => sub { file_progress($id, 1, 10, 20) }],
    ['attempts only' => sub {
        psql("SELECT async_dl_file_progress('$id', 1, " . file_lease($id, 1)
             . ", '1 minute', 10, 20, 3)") }],
    ['handed back' => sub {
        psql("SELECT async_dl_file_finish('$id', 1, " . file_lease($id, 1)
             . ", 'pending', NULL, NULL, NULL, NULL, 3, NULL, NULL, now())") }],
    ['claimed again' => sub { claim_one() }],
    [completed => sub {
        psql("SELECT async_dl_file_finish('$id', 1, " . file_lease($id, 1)
             . ", 'completed', 20, 'text/plain', repeat('b', 64), 'k', 4, "
             . "NULL, NULL, NULL)") }],
);
for my $st (@steps) {
    my ($seq0, $md50) = doc_seq();
    $st->[1]->();
    my ($seq1, $md51) = doc_seq();
    ok($md51 ne $md50 && $seq1 > $seq0,
       "$st->[0]: the document changed, and so did event_seq ($seq0 -> $seq1)");
}

# --- writes through this instance: the very next poll ------------------------

status($id);
status($id);
$r = request('POST', "/v1/download/$id/cancel", \%alice);
is($r->{status}, 200, 'cancel through nginx');
my @next = map { status($id)->{json}{status} } 1 .. 4;
is_deeply(\@next, [('canceled') x 4], 'the next polls (either process) say '
          . 'canceled, at once');

status($id);
is(request('DELETE', "/v1/download/$id", \%alice)->{status}, 204,
   'DELETE through nginx');
@next = map { status($id)->{status} } 1 .. 4;
is_deeply(\@next, [(404) x 4], 'the next polls: 404, at once');

# --- expiry ------------------------------------------------------------------

my $exp = initiate({ files => [{ url => "$s->{origin}/f/c.bin" }] },
                   \%alice)->{json}{jobId};
psql("UPDATE async_dl_jobs SET expires_at = now() + interval '2 seconds' "
     . "WHERE id = '$exp'");
sleep 0.5;
status($exp);
my $e0 = counters();
is(status($exp)->{status}, 200, 'a job that expires in 1.5 s: 200');
is(counters()->{hits}, $e0->{hits} + 1, 'from the cache');
sleep 1.6;
$r = status($exp);
is($r->{status}, 404, 'past its expiresAt: 404 (no notification needed)');
cmp_ok(counters()->{expired}, '>', $e0->{expired}, 'counted as expired');

# --- a lost LISTEN connection ---------------------------------------------------

my $job2 = initiate({ files => [{ url => "$s->{origin}/f/d.bin" }] },
                    \%alice)->{json}{jobId};
status($job2);
status($job2);
my $f0 = counters()->{flushes};
# the LISTEN connections go; the change is committed before they are back
psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
     . "application_name = 'async-dl-nginx-listen'");
psql("UPDATE async_dl_jobs SET callback_status = 'pending', "
     . "callback_url = 'http://127.0.0.1:9/cb' WHERE id = '$job2'");
ok(wait_until(sub { counters()->{flushes} >= $f0 + 4 }, 10,
              'lost, then ready, in both processes'),
   'the cache was flushed when LISTEN was lost and when it was back');
is(status($job2)->{json}{callback}{url}, 'http://127.0.0.1:9/cb',
   'the first poll afterwards sees the change');

# --- a LISTEN connection that stops answering -------------------------------

status($job2);
status($job2);
my @pids = split /\n/, psql("SELECT pid FROM pg_stat_activity WHERE "
                            . "application_name = 'async-dl-nginx-listen'");
is(scalar(@pids), 2, 'the LISTEN backends');
my $mark = error_log_mark();
kill 'STOP', @pids;
sleep 0.8;
my $st0 = counters();
$n0 = fills();
$r = status($job2);
is($r->{status}, 200, 'a poll while they are stopped: 200');
is(counters()->{stale}, $st0->{stale} + 1, 'not fresh: not from the cache');
is(fills(), $n0 + 1, 'but from PostgreSQL');
my $closed = wait_until(sub { error_log_since($mark) =~ /a ping did not come back in time/ },
                        8, 'the LISTEN connection closed');
kill 'CONT', @pids;
ok($closed, 'past async_dl_postgres_timeout, the connection is closed');
ok(wait_until(sub { my $c = counters(); status($job2); counters()->{hits} > $c->{hits} },
              10, 'hits again'), 'then hits again, once LISTEN is back');

# --- too large ----------------------------------------------------------------

my $big = initiate({ files => [map { { url => "$s->{origin}/f/big-$_.bin" } } 1 .. 40] },
                   \%alice)->{json}{jobId};
my $t0 = counters()->{too_large};
$n0 = fills();
is(status($big)->{status}, 200, 'a job of 40 files (a document over 4k): 200') for 1 .. 3;
is(counters()->{too_large}, $t0 + 3, 'never kept');
is(fills(), $n0 + 3, 'each poll asks PostgreSQL');

# --- without async_dl_owner: one shared (empty) owner -------------------------

my $anon = initiate({ files => [{ url => "$s->{origin}/f/e.bin" }] }, {},
                    '/anon/')->{json}{jobId};
my $a0 = counters()->{hits};
my @a = map { request('GET', "/anon/status/$anon")->{status} } 1 .. 5;
is_deeply(\@a, [(200) x 5], 'no owner: 200');
cmp_ok(counters()->{hits} - $a0, '>=', 3, 'from the cache');
is(request('GET', "/v1/download/status/$anon", \%alice)->{status}, 404,
   'an owner\'s poll of a job without one: 404');

# --- a migration's flush --------------------------------------------------------

$f0 = counters()->{flushes};
psql("NOTIFY async_dl_events, 'flush'");
ok(wait_until(sub { counters()->{flushes} == $f0 + 2 }, 5, 'two flushes'),
   'NOTIFY async_dl_events, \'flush\': each process flushes the cache');

# --- the counters against a recount --------------------------------------------

my $c = counters();
my $requests = () = AsyncDL::Stack::slurp("$s->{dir}/nginx/logs/access.log")
                    =~ m{"(?:GET|HEAD) /(?:v1/download|anon)/status/}g;
is($c->{hits} + $c->{misses}, $requests, "hits + misses = status requests "
   . "($requests)");
is($c->{misses}, $c->{fills}, 'each miss, one fill');
is($c->{fills}, fills(), 'each fill, one statement');
is(plain(), 1, 'the plain status statement: only the one request to the nginx without the cache');

done_testing();
