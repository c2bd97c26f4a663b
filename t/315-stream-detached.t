# A live event stream gives its request back: once "connected" is out, an
# HTTP/1.x stream frees its request (the access log line is written then)
# and its header buffers, and goes on over the bare connection with its own
# chunked framing.  Checked: the log line while the stream is still open;
# progress, heartbeats and the final event after that, the body ending
# with its last chunk and the connection closed; HTTP/1.0 (no chunks, the
# close ends it); a client that leaves is let go; nginx's graceful stop
# ends the detached streams; a stream with limit_rate or limit_conn keeps
# its request.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use AsyncDL::SSE;
use Time::HiRes qw(time sleep);

my $s = adl();
my $P = '/v1/download/';

start_nginx(<<'EOF2', http_config => 'limit_conn_zone $binary_remote_addr zone=per_ip:1m;');
location /v1/download/ {
    async_dl;
    async_dl_heartbeat 1s;
}
location /slow/ {
    async_dl;
    limit_rate 100k;
}
location /lc/ {
    async_dl;
    limit_conn per_ip 100;
}
location = /counters {
    return 200 "$async_dl_stream_subscribers $async_dl_stream_jobs\n";
}
EOF2

my $log = "$s->{dir}/nginx/logs/access.log";
sub logged {
    my ($path) = @_;
    return scalar(() = AsyncDL::Stack::slurp($log) =~ m{"GET \Q$path\E HTTP}g);
}
sub lease { "(SELECT lease_owner FROM async_dl_files WHERE job_id = '$_[0]' AND idx = 0)" }

my $id = initiate({ files => [{ url => "$s->{origin}/f/a.bin" }] })->{json}{jobId};
my $path = "${P}stream/$id";

# --- detached, HTTP/1.1 -------------------------------------------------------

my $st = sse_open($path);
is($st->{status}, 200, 'the stream: 200');
is($st->{headers}{'transfer-encoding'}, 'chunked', 'chunked');
is(($st->next_event(5) // {})->{event}, 'connected', 'connected');
ok(wait_until(sub { logged($path) == 1 }, 3, 'the access log line'),
   'the request is logged while the stream goes on: it gave its request back');

is(psql("SELECT count(*) FROM async_dl_claim('w1', 1, '1 minute', 5)"), 1,
   'a worker claims the file');
psql("SELECT async_dl_file_progress('$id', 0, " . lease($id) . ", "
     . "'1 minute', 500, 1000, 1)");
my $seen;
while (my $ev = $st->next_event(5)) {
    last if $ev->{event} eq 'progress' && ($seen = $ev->{json}{bytesDone}) == 500;
}
is($seen, 500, 'progress after it: framed and sent by the stream itself');
my @evs;

$st->{heartbeats} = 1;
@evs = $st->until_event(qr/^heartbeat$/, 3);
is(@evs ? $evs[-1]{event} : '', 'heartbeat', 'heartbeats too');

is(request('POST', "${P}$id/cancel")->{status}, 200, 'the job is canceled');
@evs = $st->until_event(qr/^canceled$/, 5);
is(@evs ? $evs[-1]{event} : '', 'canceled', 'the final event');
ok($st->wait_closed(2), 'then the body ends');
ok($st->{last_chunk}, 'with its last chunk');
ok(wait_until(sub { $st->_read(0.2); $st->{eof} }, 3, 'EOF'),
   'and the connection is closed');
is(length($st->{body_buf}), 0, 'nothing after the final event');

# --- HTTP/1.0: no chunks, the close ends it -----------------------------------

my $id2 = initiate({ files => [{ url => "$s->{origin}/f/b.bin" }] })->{json}{jobId};
my $path2 = "${P}stream/$id2";
$st = sse_open($path2, {}, http10 => 1);
is($st->{status}, 200, 'HTTP/1.0: 200');
ok(!defined $st->{headers}{'transfer-encoding'}, 'no chunks');
is(($st->next_event(5) // {})->{event}, 'connected', 'connected');
ok(wait_until(sub { logged($path2) == 1 }, 3, 'its access log line'),
   'it gave its request back too');
is(request('DELETE', "${P}$id2")->{status}, 204, 'the job is deleted');
@evs = $st->until_event(qr/^deleted$/, 5);
is(@evs ? $evs[-1]{event} : '', 'deleted', 'the final event');
ok($st->wait_closed(2) && $st->{eof}, 'then the connection is closed');

# --- a client that leaves ---------------------------------------------------------

my $id3 = initiate({ files => [{ url => "$s->{origin}/f/c.bin" }] })->{json}{jobId};
my @subs = map { sse_open("${P}stream/$id3") } 1 .. 20;
is(scalar(grep { ($_->next_event(5) // {})->{event} eq 'connected' } @subs), 20,
   '20 streams connected');
ok(wait_until(sub { logged("${P}stream/$id3") == 20 }, 3, 'detached'),
   'all 20 detached');
is((split ' ', request('GET', '/counters')->{content})[0], 20, '20 subscribers');
$_->close for @subs[0 .. 9];
ok(wait_until(sub { (split ' ', request('GET', '/counters')->{content})[0] == 10 },
              3, 'ten left'), 'the ten clients that left are let go');

# --- limit_rate: the request stays -------------------------------------------------

my $slow = sse_open("/slow/stream/$id3");
is(($slow->next_event(5) // {})->{event}, 'connected', 'a stream with limit_rate');
sleep 0.5;
is(logged("/slow/stream/$id3"), 0, 'keeps its request (not logged yet)');
$slow->close;
my $lc = sse_open("/lc/stream/$id3");
is(($lc->next_event(5) // {})->{event}, 'connected', 'a stream under limit_conn');
sleep 0.5;
is(logged("/lc/stream/$id3"), 0, 'keeps its request (its slot goes with it)');
$lc->close;

# --- graceful stop ----------------------------------------------------------------

my $t0 = time;
stop_nginx();
ok(time - $t0 < 5, sprintf('nginx stops gracefully in %.1f s with ten '
                           . 'detached streams open', time - $t0));
is(scalar(grep { $_->wait_closed(2) } @subs[10 .. 19]), 10,
   'their connections are closed');

unlike(nginx_log(), qr/\[(alert|crit|emerg)\]/, 'no alert logged');
done_testing();
