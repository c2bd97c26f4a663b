# PostgreSQL faults: stopped (every route 503 + Retry-After within
# async_dl_postgres_timeout, then back within 2 s without a reload); a
# statement stuck on a lock while the same nginx worker answers everything
# else at once; clients that go away mid-statement; a full pool.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use AsyncDL::Race;
use IO::Socket::INET;
use Time::HiRes qw(time sleep);

my $s = adl();

sub config {
    return <<'EOF2';
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
}
location /static { return 200 "static\n"; }
EOF2
}

my %alice = ('X-User' => 'alice');

# a session holding the job's row lock until psql_commit(): the test, not
# a sleep, says when it ends
sub hold_row {
    my ($id) = @_;
    my $h = psql_open("SELECT id FROM async_dl_jobs WHERE id = '$id' FOR UPDATE");
    psql_in_transaction(1) or die "the row lock was not taken\n";
    return $h;
}

# a request in a child process; returns its pid, the result lands in $file
sub request_bg {
    my ($file, @args) = @_;
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        my $t0 = time;
        my $r = request(@args);
        open my $fh, '>', $file;
        printf $fh "%d %.3f\n", $r->{status}, time - $t0;
        close $fh;
        POSIX::_exit(0);
    }
    return $pid;
}

sub slurp_file { open my $fh, '<', $_[0] or return ''; local $/; <$fh> }

start_nginx(config(), http_config => "    async_dl_postgres_timeout 1s;\n"
                                     . "    async_dl_postgres_pool 2;");

my $id = initiate({ files => [{ url => 'https://example.com/a' }] }, \%alice)->{json}{jobId};
ok($id, 'a job');

# --- a statement stuck on a row lock ---------------------------------------

my $locker = hold_row($id);
my $f = "$s->{dir}/cancel.out";
my $bg = request_bg($f, 'POST', "/v1/download/$id/cancel", \%alice);
ok(wait_until(sub { psql_lock_waiters() == 1 }, 5), 'lock: the cancel waits for the row');
for my $n (1 .. 5) {
    my $t0 = time;
    my $st = request('GET', "/v1/download/status/$id", \%alice)->{status};
    my $dt = time - $t0;
    is($st, 200, "lock: status poll $n answered");
    cmp_ok($dt, '<', 0.9, "lock: status poll $n at once (not after the 1 s timeout)");
    $t0 = time;
    is(request('GET', '/static')->{status}, 200, "lock: static location $n");
    cmp_ok(time - $t0, '<', 0.9, "lock: static $n at once");
}
waitpid($bg, 0);
my ($code, $secs) = split ' ', slurp_file($f);
is($code, 503, 'lock: the stuck statement gets 503 at the timeout');
cmp_ok($secs, '>=', 0.9, 'lock: not before it');
cmp_ok($secs, '<', 3.0, 'lock: not long after it');
ok(wait_until(sub { psql_lock_waiters() == 0 }, 5),
   'lock: the server canceled the statement too (statement_timeout)');
psql_commit($locker);
is(psql("SELECT status FROM async_dl_jobs WHERE id = '$id'"), 'queued',
   'lock: the cancel did not happen');
is(request('GET', "/v1/download/status/$id", \%alice)->{status}, 200,
   'lock: the pool works afterwards');
like(nginx_log(), qr/postgres query "async_dl_cancel" timed out after 1000 ms/,
     'lock: the timeout is logged');
unlike(nginx_log(), qr/connection #\d+ lost/, 'lock: no connection was lost');

# --- a client that goes away mid-statement ----------------------------------

$locker = hold_row($id);
my $port = $s->{port};
my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port)
    or die "connect: $!";
print $sock "POST /v1/download/$id/cancel HTTP/1.1\r\nHost: x\r\nX-User: alice\r\n"
          . "Content-Length: 0\r\n\r\n";
ok(wait_until(sub { psql_lock_waiters() == 1 }, 5), 'abort: the cancel waits for the row');
is(request('GET', "/v1/download/status/$id", \%alice)->{status}, 200,
   'abort: others are served meanwhile');
close $sock;
sleep 0.1;
psql_commit($locker);               # (within the statement's 1 s)
ok(wait_until(sub { psql("SELECT status FROM async_dl_jobs WHERE id = '$id'") eq 'canceled' }, 3),
   'abort: the statement still ran to its end');
for my $n (1 .. 6) {
    is(request('GET', "/v1/download/status/$id", \%alice)->{status}, 200,
       "abort: the connections are clean ($n)");
}
ok(wait_until(sub { nginx_log() =~ /client prematurely closed connection/ }, 3), 'abort: noticed');
ok(wait_until(sub {
    do { local $/; open my $fh, '<', "$s->{dir}/nginx/logs/access.log"; <$fh> }
        =~ qr{"POST /v1/download/$id/cancel HTTP/1.1" 499} }, 3), 'abort: 499 logged');

# --- a full pool: queries wait for a connection, within the timeout -------------

$locker = hold_row($id);
my @bgs;
for my $n (1 .. 2) {
    push @bgs, request_bg("$s->{dir}/del$n.out", 'POST', "/v1/download/$id/cancel", \%alice);
}
ok(wait_until(sub { psql_lock_waiters() == 2 }, 5), 'pool: both connections wait for the row');
my $pf = "$s->{dir}/pool-status.out";
push @bgs, request_bg($pf, 'GET', "/v1/download/status/$id", \%alice);
sleep 0.3;
psql_commit($locker);
waitpid($_, 0) for @bgs;
my ($st, $pt) = split ' ', slurp_file($pf);
is($st, 200, 'pool: a query waits for a busy connection and is answered');
cmp_ok($pt, '<', 1.5, sprintf('pool: about within the timeout (%.2f s)', $pt));

# --- PostgreSQL stopped ---------------------------------------------------------

pg_stop();
my @routes = (['GET', '/v1/download/health'],
              ['GET', "/v1/download/status/$id"],
              ['GET', '/v1/download/jobs'],
              ['GET', "/v1/download/$id"],
              ['GET', "/v1/download/$id/files/0"],
              ['POST', "/v1/download/$id/cancel"],
              ['DELETE', "/v1/download/$id"]);
sleep 0.3;
for my $rt (@routes) {
    my $t = time;
    my $r = request($rt->[0], $rt->[1], \%alice);
    my $dt = time - $t;
    is($r->{status}, 503, "down: $rt->[0] $rt->[1]: 503");
    is($r->{json}{error}{code}, 'DATABASE_UNAVAILABLE', "down: $rt->[1]: DATABASE_UNAVAILABLE");
    is($r->{headers}{'retry-after'}, 1, "down: $rt->[1]: Retry-After");
    cmp_ok($dt, '<', 1.5, "down: $rt->[1]: about within async_dl_postgres_timeout");
}
my $r = initiate({ files => [{ url => 'https://example.com/b' }] }, \%alice);
is($r->{status}, 503, 'down: initiate: 503');
is($r->{json}{error}{code}, 'DATABASE_UNAVAILABLE', 'down: initiate: DATABASE_UNAVAILABLE');

pg_start();
my $t0 = time;
ok(wait_until(sub { request('GET', "/v1/download/status/$id", \%alice)->{status} == 200 }, 5),
   'back: status answers again');
cmp_ok(time - $t0, '<', 3, 'back: within a few s, without a reload');
is(initiate({ files => [{ url => 'https://example.com/b' }] }, \%alice)->{status}, 202,
   'back: initiate works');
is(request('GET', '/v1/download/health')->{status}, 200, 'back: health');

# --- a host name in the conninfo, resolved when the configuration is read -----

start_nginx(config(), adl_http_config => <<"EOF2");
    async_dl_postgres "host=localhost port=$s->{pg_port} dbname=postgres user=postgres";
    async_dl_s3_endpoint $s->{s3_endpoint};
    async_dl_s3_bucket $s->{s3_bucket};
    async_dl_s3_access_key S3RVER;
    async_dl_s3_secret_key S3RVER;
EOF2
ok(wait_until(sub { request('GET', '/v1/download/health')->{status} == 200 }, 3),
   'host=localhost works');

unlike(nginx_log(), qr/\[(alert|crit)\]|exited on signal/, 'no crash');

done_testing();
