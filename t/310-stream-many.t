# The stream with the real worker: 100 concurrent subscribers of one job
# all get every file event and "completed"; a job that ended before its
# client connected; the job's files through the stream, then the status.
# Subscribers that arrive one by one at a job that does not change are
# each told once ($async_dl_stream_tells): an arrival costs O(1), not a
# walk over the job's other subscribers.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use AsyncDL::SSE;
use Time::HiRes qw(time sleep);

my $s = adl();
my $P = '/v1/download/';

start_nginx(<<'EOF2');
location /v1/download/ {
    async_dl;
}
location = /counters {
    return 200 "$async_dl_stream_subscribers $async_dl_stream_jobs $async_dl_stream_queries $async_dl_stream_tells\n";
}
EOF2

origin_file("m$_.bin", 256 * 1024) for 1 .. 3;
start_worker();

my $r = initiate({ files => [ map { { url => "$s->{origin}/slow/m$_.bin?rate=256k" } }
                              1 .. 3 ] });
is($r->{status}, 202, 'a job of 3 slow files');
my $job = $r->{json}{jobId};

my $q0 = (split ' ', request('GET', '/counters')->{content})[2];
my @subs = map { sse_open("${P}stream/$job") } 1 .. 100;
is(scalar(grep { $_->{status} == 200 } @subs), 100, '100 subscribers: 200');

my (%ok, %files, %order);
for my $i (0 .. $#subs) {
    my @evs = $subs[$i]->until_event(qr/^(completed|failed|canceled)$/, 60);
    my @names = map { $_->{event} } @evs;
    $ok{$i} = 1 if @names && $names[-1] eq 'completed';
    $files{$i} = scalar grep { $_ eq 'file' } @names;
    $order{$i} = $names[0] eq 'connected' ? 1 : 0;
    my @ids = map { $_->{id} } grep { $_->{event} ne 'heartbeat' } @evs;
    $order{$i} = 0 if grep { $ids[$_] < $ids[$_ - 1] } 1 .. $#ids;
}
is(scalar keys %ok, 100, 'all 100 got completed');
is(scalar(grep { $files{$_} == 3 } keys %files), 100,
   'all 100 got the 3 file events');
is(scalar(grep { $order{$_} } keys %order), 100,
   'all 100 started with connected, ids never went back');
is(scalar(grep { $_->wait_closed(2) } @subs), 100, 'all 100 streams ended');
my $q1 = (split ' ', request('GET', '/counters')->{content})[2];
cmp_ok($q1 - $q0, '<', 60,
       ($q1 - $q0) . ' state queries served the 100 subscribers');
is(wait_job($job, qr/^completed$/, 5)->{status}, 'completed',
   'the status route agrees');

# an ended job: connected and completed at once, then closed
my $t0 = time;
my $st = sse_open("${P}stream/$job");
my @evs = $st->until_event(qr/^completed$/, 5);
is(join(' ', map { $_->{event} } @evs), 'connected completed',
   'ended before the client came: connected, completed');
ok($st->wait_closed(3) && time - $t0 < 3, 'and closed at once');

# a job nobody works on: 200 subscribers, one after the other
stop_worker();
my $idle = initiate({ files => [{ url => "$s->{origin}/f/m1.bin" }] })->{json}{jobId};
my $t1 = (split ' ', request('GET', '/counters')->{content})[3];
my @idle;
for (1 .. 200) {
    my $sub = sse_open("${P}stream/$idle");
    my @e = $sub->until_event(qr/^connected$/, 5);
    push @idle, $sub if @e && $e[-1]{event} eq 'connected';
}
is(scalar(@idle), 200, '200 subscribers of an idle job, one by one: connected');
my $t2 = (split ' ', request('GET', '/counters')->{content})[3];
cmp_ok($t2 - $t1, '<=', 200 + 1, 'each was told once (' . ($t2 - $t1)
       . ' tells; a walk over the others would take about 20,000)');
$_->close for @idle;

ok(wait_until(sub { request('GET', '/counters')->{content} =~ /^0 0 / }, 3),
   'nothing left behind');
unlike(nginx_log(), qr/\[(error|alert|crit|emerg)\]/, 'no error logged');
done_testing();
