# async_dl_metrics: the module's metrics in the Prometheus text format,
# summed over nginx's worker processes (two here), parsed with the
# reference parser (Debian's python3-prometheus-client).  Requests by
# route and status class; the PostgreSQL pool; subscribers and events by
# transport; LISTEN reconnects after a database restart; the queue as the
# database sees it, compared with a count made here, read at most once a
# second however often (60 scrapes at once) it is scraped; the gauges
# across a reload and a killed worker process.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use AsyncDL::SSE;
use AsyncDL::WS;
use Time::HiRes qw(time sleep);
use IO::Socket::INET;

my $s = adl();
my $P = '/v1/download/';

start_nginx(<<'EOF', workers => 2);
location /v1/download/ {
    async_dl;
    async_dl_heartbeat 1s;
}
location = /metrics {
    async_dl_metrics;
    allow 127.0.0.1;
    deny all;
}
location = /metrics-closed {
    async_dl_metrics;
    deny all;
}
EOF

sub parsed {
    my $r = request('GET', '/metrics');
    return (prometheus_samples($r->{content}), $r);
}

# (the second process may start a moment after the port answers)
wait_until(sub { ((parsed())[1]{'async_dl_worker_processes'} // 0) == 2 }, 5);
my ($ok, $v, $r) = parsed();
is($r->{status}, 200, 'metrics: 200');
like($r->{headers}{'content-type'}, qr{^text/plain; version=0\.0\.4}, 'the format\'s content type');
ok($ok, 'the text parses with the reference parser') or diag($r->{content});
cmp_ok($v->{'async_dl_worker_processes'}, '==', 2, 'both worker processes report');
is($v->{'async_dl_requests_total{code=2xx,route=health}:type'}, 'counter',
   'requests: a counter');
is($v->{'async_dl_postgres_query_seconds_count:type'}, 'histogram',
   'query time: a histogram');

# requests, over both processes (each its own connection)
my $base = $v->{'async_dl_requests_total{code=2xx,route=health}'} // 0;
my $base4 = $v->{'async_dl_requests_total{code=4xx,route=status/{id}}'} // 0;
my $basenone = $v->{'async_dl_requests_total{code=4xx,route=none}'} // 0;
request('GET', "${P}health") for 1 .. 20;
request('GET', "${P}status/00000000-0000-0000-0000-000000000000") for 1 .. 3;
request('GET', "${P}nowhere/at/all") for 1 .. 2;
# A request is counted at its log phase, which runs after the client has
# its response: a read served by the other process may come first. Wait
# for the counts to arrive, then check that none is over.
wait_until(sub {
    ($ok, $v) = parsed();
    ($v->{'async_dl_requests_total{code=2xx,route=health}'} // 0) - $base >= 20
        && ($v->{'async_dl_requests_total{code=4xx,route=status/{id}}'} // 0) - $base4 >= 3
        && ($v->{'async_dl_requests_total{code=4xx,route=none}'} // 0) - $basenone >= 2;
}, 5, 'the requests to be counted');
sleep 0.2;
($ok, $v) = parsed();
is($v->{'async_dl_requests_total{code=2xx,route=health}'} - $base, 20,
   '20 health requests counted, whichever process answered');
is($v->{'async_dl_requests_total{code=4xx,route=status/{id}}'} - $base4, 3,
   '3 status 404s: 4xx of status/{id}');
is($v->{'async_dl_requests_total{code=4xx,route=none}'} - $basenone, 2,
   '2 requests of no route');

# the pool
cmp_ok($v->{'async_dl_postgres_connections'}, '>=', 1, 'connections up');
cmp_ok($v->{'async_dl_postgres_query_seconds_count'}, '>=', 23,
       'every query counted in the histogram');
is($v->{'async_dl_postgres_query_seconds_bucket{le=+Inf}'},
   $v->{'async_dl_postgres_query_seconds_count'}, '+Inf bucket == count');
my $prev = 0;
my $mono = 1;
for my $le (qw(0.001 0.002 0.005 0.01 0.025 0.05 0.1 0.25 0.5 1 2.5 5)) {
    my $b = $v->{"async_dl_postgres_query_seconds_bucket{le=$le}"};
    $mono = 0 unless defined $b && $b >= $prev;
    $prev = $b // $prev;
}
ok($mono, 'the buckets are cumulative');

# the queue, compared with a count made here
for (1 .. 3) {
    my $j = initiate({ files => [{ url => "$s->{origin}/f/a" },
                                 { url => "$s->{origin}/f/b" }] });
    is($j->{status}, 202, 'a job queued (no worker runs)');
}
my $queued = psql("SELECT count(*) FROM async_dl_jobs WHERE status = 'queued'");
my $pending = psql("SELECT count(*) FROM async_dl_files WHERE status = 'pending'");
# a scrape answers at once with the figures last read, and starts a read
# when those are a second old: the next scrapes see it
ok(wait_until(sub {
    (undef, $v) = parsed();
    return ($v->{'async_dl_jobs{status=queued}'} // -1) == $queued;
}, 5), 'the queue figures follow the database within a few scrapes');
sleep 1.1;
($ok, $v) = parsed();
sleep 0.3;
($ok, $v) = parsed();
cmp_ok($v->{'async_dl_jobs{status=queued}'}, '==', $queued, "queued jobs: $queued, as counted here");
cmp_ok($v->{'async_dl_files{status=pending}'}, '==', $pending, "pending files: $pending");
cmp_ok($v->{'async_dl_files{status=downloading}'}, '==', 0, 'none downloading');
cmp_ok($v->{'async_dl_queue_oldest_seconds'}, '>=', 1, 'the oldest queued job: over a second');
cmp_ok($v->{'async_dl_queue_read_age_seconds'}, '<', 2.5, 'read just now (not kept from an old read)');

# a paused job, and its files held, are counted as paused, not as waiting
my ($pj, $powner) = split /\|/, psql("SELECT id, owner FROM async_dl_jobs WHERE status = 'queued' "
                                      . "ORDER BY created_at LIMIT 1"), -1;
is(psql("SELECT async_dl_job_pause('$pj', '$powner', true)"), 'paused', 'one queued job paused');
ok(wait_until(sub {
    (undef, $v) = parsed();
    return ($v->{'async_dl_jobs{status=paused}'} // -1) == 1;
}, 5), 'the paused job is counted');
cmp_ok($v->{'async_dl_jobs{status=queued}'}, '==', $queued - 1, '  no longer as queued');
cmp_ok($v->{'async_dl_files{status=paused}'}, '==', 2, '  its 2 files held');
cmp_ok($v->{'async_dl_files{status=pending}'}, '==', $pending - 2, '  no longer as pending');
cmp_ok($v->{'async_dl_files{status=paused}'} + $v->{'async_dl_files{status=pending}'}, '==',
   psql("SELECT count(*) FROM async_dl_files WHERE status = 'pending'"),
   '  paused and pending files: every pending row');
is(psql("SELECT async_dl_job_pause('$pj', '$powner', false)"), 'resumed', '  resumed');

# 60 scrapes at once, over both processes: the queue is read once or twice
my $reads0 = $v->{'async_dl_queue_reads_total'};
my $t0 = time;
my @socks = map {
    my $c = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $s->{port}) or die $!;
    print $c "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    $c;
} 1 .. 60;
my $answered = 0;
for my $c (@socks) {
    local $/;
    my $raw = <$c> // '';
    $answered++ if $raw =~ m{^HTTP/1\.1 200};
    close $c;
}
my $secs = time - $t0;
is($answered, 60, sprintf('60 scrapes at once answered in %.2f s', $secs));
sleep 0.3;
($ok, $v) = parsed();
my $reads = $v->{'async_dl_queue_reads_total'} - $reads0;
cmp_ok($reads, '<=', 2 + int($secs),
       sprintf('they read the queue %d time(s)', $reads));

# subscribers and events, by transport
my $j = initiate({ files => [{ url => "$s->{origin}/f/c" }] })->{json}{jobId};
my @st = map { sse_open("${P}stream/$j") } 1 .. 3;
$_->next_event(5) for @st;
my $ws = AsyncDL::WS->open("${P}ws/$j");
my $f = $ws->read_frame(5);
# the gauges of the other process are written every second
wait_until(sub {
    ($ok, $v) = parsed();
    ($v->{'async_dl_stream_subscribers{transport=sse}'} // 0) >= 3
        && ($v->{'async_dl_stream_subscribers{transport=websocket}'} // 0) >= 1;
}, 5, 'the subscribers to be reported');
sleep 1.2;
($ok, $v) = parsed();
cmp_ok($v->{'async_dl_stream_subscribers{transport=sse}'}, '==', 3, '3 event stream subscribers');
cmp_ok($v->{'async_dl_stream_subscribers{transport=websocket}'}, '==', 1, '1 WebSocket subscriber');
cmp_ok($v->{'async_dl_stream_events_total{transport=sse}'}, '>=', 3, 'their events counted');
cmp_ok($v->{'async_dl_stream_events_total{transport=websocket}'}, '>=', 1, 'and the frame');
$_->close for @st;
$ws->close;
wait_until(sub {
    ($ok, $v) = parsed();
    ($v->{'async_dl_stream_subscribers{transport=sse}'} // -1) == 0
        && ($v->{'async_dl_stream_subscribers{transport=websocket}'} // -1) == 0;
}, 5, 'the subscribers to be gone');
cmp_ok($v->{'async_dl_stream_subscribers{transport=sse}'}, '==', 0, 'gone: 0 subscribers');
cmp_ok($v->{'async_dl_stream_subscribers{transport=websocket}'}, '==', 0, 'and 0 WebSockets');

# LISTEN reconnects, and failures, after a database restart
my $lr = $v->{'async_dl_listen_reconnects_total'};
pg_stop('fast');
request('GET', "${P}status/$j") for 1 .. 4;
pg_start();
ok(wait_until(sub {
    my (undef, $w) = parsed();
    return ($w->{'async_dl_listen_reconnects_total'} // 0) >= $lr + 2;
}, 15), 'LISTEN reconnected in both processes: counted');
($ok, $v) = parsed();
cmp_ok($v->{'async_dl_postgres_errors_total{kind=unavailable}'}, '>=', 1,
       'queries without a database: counted as unavailable');

# a reload: the old processes leave their slots, the new ones report
my $pid = AsyncDL::Stack::adl()->{nginx_pid};
kill 'HUP', $pid;
ok(wait_until(sub {
    my (undef, $w) = parsed();
    return ($w->{'async_dl_worker_processes'} // 0) == 2
        && ($w->{'async_dl_postgres_connections'} // 0) >= 1
        && (join ' ', grep { /^\d+$/ } split /\n/, `pgrep -P $pid`) ne ''
        && scalar(split /\n/, `pgrep -P $pid`) == 2;
}, 15), 'after a reload: two processes report, their pools are up');
($ok, $v) = parsed();
cmp_ok($v->{'async_dl_stream_subscribers{transport=sse}'}, '<', 1e6,
       'gauges stay sane across the reload');

# a worker process killed: the one that replaces it takes its slot
my ($victim) = split /\n/, `pgrep -P $pid`;
AsyncDL::Stack::expect_log(qr/worker process $victim exited on signal 9/);
kill 'KILL', $victim;
ok(wait_until(sub {
    my @kids = split /\n/, `pgrep -P $pid`;
    return @kids == 2 && !grep { $_ == $victim } @kids;
}, 10), 'a worker process killed, and replaced');
ok(wait_until(sub {
    my (undef, $w) = parsed();
    return ($w->{'async_dl_worker_processes'} // 0) == 2;
}, 5), 'two processes report again');

is(request('HEAD', '/metrics')->{status}, 200, 'HEAD: 200');

# access: the operator's allow/deny
is(request('GET', '/metrics-closed')->{status}, 403,
   'access is the operator\'s: deny all answers 403');
is(request('POST', '/metrics')->{status}, 405, 'GET and HEAD only');

unlike(join("\n", grep { !/exited on signal 9/ } split /\n/, nginx_log()),
       qr/\[alert\]/, 'no [alert] in the error log (but the kill\'s)');

done_testing();
