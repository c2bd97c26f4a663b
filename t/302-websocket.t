# GET {p}ws/{id}: the job's events over a WebSocket (RFC 6455).  An
# independent client (Debian's python3-websockets) follows a job from
# connected to completed and a clean close, directly and behind a proxying
# nginx; a client on a plain socket checks the handshake's answer, ping and
# pong, the heartbeat, and the close codes for bad frames; nginx logs no
# alert.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use AsyncDL::WS;
use JSON::PP;
use Time::HiRes qw(time sleep);

my $s = adl();
my $P = '/v1/download/';
my $PY = '/usr/bin/python3';

start_nginx(<<'EOF');
location /v1/download/ {
    async_dl;
    async_dl_heartbeat 1s;
}
location /owned/ {
    async_dl;
    async_dl_owner $http_x_user;
}
location /limited/ {
    async_dl;
    async_dl_heartbeat 1s;
    limit_rate 1m;
}
location /proxied/ {
    proxy_pass http://127.0.0.1:$ADL_PORT/v1/download/;
    proxy_http_version 1.1;
    proxy_set_header Upgrade $http_upgrade;
    proxy_set_header Connection "upgrade";
    proxy_read_timeout 1h;
}
EOF
my $mark = error_log_mark();

sub queued_job {
    my ($headers, $prefix) = @_;
    my $r = initiate({ files => [{ url => "$s->{origin}/f/q" }] }, $headers,
                     $prefix);
    is($r->{status}, 202, 'a job created') or diag($r->{content});
    return $r->{json}{jobId};
}

my %H = AsyncDL::WS::default_headers(AsyncDL::WS::new_key());

# --- handshakes that are refused, as JSON ----------------------------------
my $job = queued_job();
my $r = AsyncDL::WS::handshake("${P}ws/$job", { %H, Upgrade => undef });
is($r->{status}, 400, 'no Upgrade: 400');
is($r->{json}{error}{code}, 'INVALID_REQUEST', '... INVALID_REQUEST');
$r = AsyncDL::WS::handshake("${P}ws/$job", { %H, Connection => 'keep-alive' });
is($r->{status}, 400, 'Connection without upgrade: 400');
$r = AsyncDL::WS::handshake("${P}ws/$job", { %H, 'Sec-WebSocket-Version' => 8 });
is($r->{status}, 426, 'version 8: 426 Upgrade Required');
is($r->{headers}{'sec-websocket-version'}, '13', '... naming version 13');
is($r->{json}{error}{code}, 'UPGRADE_REQUIRED', '... UPGRADE_REQUIRED');
$r = AsyncDL::WS::handshake("${P}ws/$job", { %H, 'Sec-WebSocket-Key' => 'c2hvcnQ=' });
is($r->{status}, 400, 'a key that is not 16 bytes: 400');
$r = AsyncDL::WS::handshake("${P}ws/00000000-0000-4000-8000-000000000000", \%H);
is($r->{status}, 404, 'no such job: 404 before any upgrade');
is($r->{json}{error}{code}, 'JOB_NOT_FOUND', '... JOB_NOT_FOUND');
my $owned = queued_job({ 'X-User' => 'alice' }, '/owned/');
$r = AsyncDL::WS::handshake("/owned/ws/$owned", { %H, 'X-User' => 'bob' });
is($r->{status}, 404, "another owner's job: 404");
$r = request('POST', "${P}ws/$job");
is($r->{status}, 405, 'POST: 405');
$r = AsyncDL::WS::handshake("${P}ws/$job", { %H, 'Content-Length' => 0,
                                             'Transfer-Encoding' => 'chunked' });
is($r->{status}, 400, 'a handshake with a body: 400');

# --- the upgrade, "connected", ping and pong ------------------------------
my $ws = AsyncDL::WS->open("/owned/ws/$owned", { 'X-User' => 'alice' });
is($ws->{status}, 101, "the owner's handshake: 101");
ok($ws->{accept_ok}, 'Sec-WebSocket-Accept is the key\'s');
is(lc $ws->{headers}{upgrade}, 'websocket', 'Upgrade: websocket');
like($ws->{headers}{connection}, qr/upgrade/i, 'Connection: upgrade');
my $f = $ws->next_frame(5);
is($f->{opcode}, 1, 'a text frame');
ok(!$f->{masked}, 'unmasked (a server\'s)');
my $ev = decode_json($f->{payload});
is($ev->{event}, 'connected', 'first event: connected');
like($ev->{id}, qr/^\d+$/, 'with an id');
is($ev->{data}{jobId}, $owned, 'data: the status document');
is_deeply($ev->{data}, request('GET', "/owned/status/$owned",
                               { 'X-User' => 'alice' })->{json},
          'connected carries the status document');
$ws->send_frame(9, 'are you there');
$f = $ws->next_frame(3);
is($f->{opcode}, 10, 'a ping is answered with a pong');
is($f->{payload}, 'are you there', '... with its payload');
# a fragmented text message (dropped) and a ping between its fragments
$ws->send_frame(1, 'hel', fin => 0);
$ws->send_frame(9, 'mid');
$ws->send_frame(0, "lo \xc3\xa9", fin => 1);
$f = $ws->next_frame(3);
is($f->{opcode}, 10, 'fragments with a ping between them: the pong');
is($f->{payload}, 'mid', '... of that ping');
$ws->send_frame(8, pack('n', 1000) . 'bye');
$f = $ws->next_frame(3);
is($f->{opcode}, 8, 'a close is answered with a close');
is($f->{code}, 1000, '... with its code');
ok($ws->closed(3), 'then the server closes the connection');

# Connection in two header lines; a ping sent with the handshake, before
# the 101 (read once the connection is open)
my $early = AsyncDL::WS->open("${P}ws/$job",
    { Connection => ['keep-alive', 'Upgrade'] },
    AsyncDL::WS::frame(9, 'early'));
is($early->{status}, 101, 'Connection: keep-alive and Connection: Upgrade '
   . 'in two lines: 101');
my @got = map { $early->read_frame(3) } 1 .. 2;
is(join(' ', map { $_ ? $_->{opcode} : 'none' } @got), '1 10',
   'a ping sent with the handshake: "connected", then its pong');
is($got[1] && $got[1]{payload}, 'early', '... with its payload');
$early->close;

# --- bad frames: the right close code, the connection closed ---------------
my @bad = (
    [ 'an unmasked frame', 1002, sub { $_[0]->send_frame(1, 'x', mask => 0) } ],
    [ 'a reserved bit', 1002, sub { $_[0]->send_frame(1, 'x', rsv => 1) } ],
    [ 'a reserved opcode', 1002, sub { $_[0]->send_frame(3, 'x') } ],
    [ 'a continuation with no message', 1002, sub { $_[0]->send_frame(0, 'x') } ],
    [ 'a new message inside one', 1002, sub {
          $_[0]->send_frame(1, 'a', fin => 0); $_[0]->send_frame(1, 'b') } ],
    [ 'a fragmented ping', 1002, sub { $_[0]->send_frame(9, 'x', fin => 0) } ],
    [ 'a ping of 126 bytes', 1002, sub { $_[0]->send_frame(9, 'x' x 126) } ],
    [ 'a message of 5,000 bytes', 1009, sub { $_[0]->send_frame(2, 'x' x 5000) } ],
    [ 'a message of 5,000 bytes in fragments', 1009, sub {
          $_[0]->send_frame(1, 'x' x 3000, fin => 0);
          $_[0]->send_frame(0, 'x' x 2000) } ],
    [ 'a frame claiming 2^62 bytes', 1009, sub {
          $_[0]->send_raw("\x82\xff" . pack('Q>', 1 << 62) . "abcd") } ],
    [ 'text that is not UTF-8', 1007, sub { $_[0]->send_frame(1, "ab\xff") } ],
    [ 'an overlong UTF-8 form', 1007, sub { $_[0]->send_frame(1, "\xc0\xaf") } ],
    [ 'a UTF-16 surrogate', 1007, sub { $_[0]->send_frame(1, "\xed\xa0\x80") } ],
    [ 'UTF-8 cut at the end of a message', 1007, sub {
          $_[0]->send_frame(1, "a\xe2\x82") } ],
    [ 'a close code of 999', 1002, sub { $_[0]->send_frame(8, pack('n', 999)) } ],
    [ 'a close of one byte', 1002, sub { $_[0]->send_frame(8, 'x') } ],
    [ 'a close reason not UTF-8', 1007, sub {
          $_[0]->send_frame(8, pack('n', 1000) . "\xff") } ],
);
for my $b (@bad) {
    my ($what, $code, $send) = @$b;
    my $w = AsyncDL::WS->open("${P}ws/$job");
    my $c = $w->next_frame(5);
    is(decode_json($c->{payload})->{event}, 'connected', "$what: connected first");
    $send->($w);
    $c = $w->next_frame(5);
    is($c && $c->{opcode}, 8, "$what: a close frame");
    is($c && $c->{code}, $code, "... with $code");
    ok($w->closed(3), '... and the connection closed');
}

# --- an open connection gives its request back; one that cannot keeps it --
sub access_lines {
    my ($path) = @_;
    my $log = AsyncDL::Stack::slurp("$s->{dir}/nginx/logs/access.log");
    return scalar(() = $log =~ m{"GET \Q$path\E HTTP/1\.1" 101}g);
}
for my $case (["${P}ws/$job", 1, 'detached'], ["/limited/ws/$job", 0,
              'kept its request (limit_rate)'])
{
    my ($path, $gives, $what) = @$case;
    my $before = access_lines($path);
    my $w = AsyncDL::WS->open($path);
    is(decode_json($w->next_frame(5)->{payload})->{event}, 'connected',
       "$what: connected");
    # (a line written may take a moment on a loaded machine; one not
    # written is looked for after half a second)
    wait_until(sub { access_lines($path) - $before >= 1 }, $gives ? 5 : 0.5);
    sleep 0.2;
    is(access_lines($path) - $before, $gives, "$what: the access log line is "
       . ($gives ? 'written while the connection stays' : 'not written yet'));
    $w->send_frame(9, 'p1');
    my $c = $w->next_frame(3);
    is($c && $c->{payload}, 'p1', "$what: ping, pong");
    $w->send_frame(1, "\xff");
    $c = $w->next_frame(3);
    is($c && $c->{code}, 1007, "$what: a bad frame, 1007");
    ok($w->closed(3), "$what: closed (our side shut down)");
    $w->close;
    wait_until(sub { access_lines($path) - $before >= 1 }, 5);
    sleep 0.2;
    is(access_lines($path) - $before, 1, "$what: one access log line");
}

# --- the heartbeat: pings; a client that never answers is closed ----------
$ws = AsyncDL::WS->open("${P}ws/$job");
$ws->next_frame(5);
my @pings;
my $t0 = time;
while (time - $t0 < 3.5) {
    my $p = $ws->read_frame(0.5) or next;
    push @pings, $p if $p->{opcode} == 9;
    $ws->send_frame(10, $p->{payload}) if $p->{opcode} == 9;
}
cmp_ok(scalar @pings, '>=', 2, scalar(@pings) . ' pings in 3.5 s (async_dl_heartbeat 1s), answered');
ok(!$ws->{eof}, '... and the connection stays');
$t0 = time;
1 while $ws->read_frame(0.5) || (!$ws->{eof} && time - $t0 < 5);
ok($ws->{eof}, sprintf('a client that stops answering is closed (%.1f s)', time - $t0));

# --- an independent client follows a job to its end -----------------------
origin_file('ws1.bin', 96 * 1024);
origin_file('ws2.bin', 64 * 1024);
start_worker();
for my $via ($P, '/proxied/') {
    my $r = initiate({ files => [{ url => "$s->{origin}/slow/ws1.bin?rate=64k" },
                                 { url => "$s->{origin}/slow/ws2.bin?rate=64k" }] });
    my $id = $r->{json}{jobId};
    my $url = "ws://127.0.0.1:$s->{port}${via}ws/$id";
    my @lines = `$PY t/tools/ws_follow.py '$url' 2>&1`;
    chomp @lines;
    my $close = pop @lines;
    my @evs = map { eval { decode_json($_) } // { bad => $_ } } @lines;
    my $names = join ' ', map { $_->{event} // "?$_->{bad}" } @evs;
    like($names, qr/^connected( (progress|file))* completed$/,
         "$via: connected .. completed ($names)");
    is((grep { ($_->{event} // '') eq 'file' } @evs), 2, '... a file event for each file');
    my @ids = map { $_->{id} } @evs;
    ok(!grep({ $ids[$_] < $ids[$_ - 1] } 1 .. $#ids), '... ids never go back');
    is($evs[-1]{data}{status}, 'completed', '... the final data: completed');
    is($evs[-1]{data}{completedFiles}, 2, '... with both files');
    is($close, 'CLOSE 1000', '... then a clean close (1000)');
}

# a job that has ended: connected, the final event, close
my $done = (grep { $_ } map { psql("SELECT id FROM async_dl_jobs WHERE status = 'completed' LIMIT 1") } 1)[0];
my @lines = `$PY t/tools/ws_follow.py 'ws://127.0.0.1:$s->{port}${P}ws/$done' 2>&1`;
chomp @lines;
is(join(' ', map { /"event":"(\w+)"/ ? $1 : $_ } @lines),
   'connected completed CLOSE 1000', 'an ended job: connected, completed, close');

my $log = error_log_since($mark);
unlike($log, qr/\[(alert|crit|emerg)\]/, 'nginx logged no alert')
    or diag(join "\n", grep { /\[(alert|crit|emerg)\]/ } split /\n/, $log);
like($log, qr/broke the protocol, closing with 1009/, 'bad frames are logged at info');

done_testing();
