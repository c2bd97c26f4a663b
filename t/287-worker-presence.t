# Worker liveness: each worker writes a heartbeat row (schema 18) when its
# database connection comes up and every poll interval; GET {p}health says
# how many are alive, and "degraded" (NO_WORKERS; 503 with ?strict) when
# files wait and none is.  A killed worker stops counting after three of
# its intervals; one that stops removes its row.  Two sessions beating for
# one worker leave one row.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use AsyncDL::Race;
use Time::HiRes qw(sleep time);

my $s = adl();
start_nginx(<<'EOF2');
location /v1/download/ {
    async_dl;
}
EOF2
my $H = '/v1/download/health';
sub health { my $r = request('GET', $_[0] // $H); return ($r->{status}, $r->{json}) }

my ($st, $j) = health();
is($st, 200, 'no worker, nothing waiting: 200');
is_deeply($j, { status => 'ok', workers => 0 }, '... ok, 0 workers');

my $job = add_job(["$s->{origin}/f/nope"]);
($st, $j) = health();
is($st, 200, 'a file waits and no worker is alive: still 200');
is($j->{status}, 'degraded', '... degraded');
is($j->{workers}, 0, '... 0 workers');
is($j->{error}{code}, 'NO_WORKERS', '... NO_WORKERS');
($st, $j) = health("$H?strict");
is($st, 503, '?strict: 503');
is($j->{error}{code}, 'NO_WORKERS', '... NO_WORKERS');
is((health("$H?a=b&strict=1"))[0], 503, '?a=b&strict=1: 503');
psql("DELETE FROM async_dl_jobs");

my %W = (ASYNC_DL_POLL_INTERVAL => '1s');
start_worker(%W, ASYNC_DL_WORKER_ID => 'w-one');
ok(wait_until(sub { (health())[1]{workers} == 1 }, 5), 'a worker: 1 alive');
start_worker(%W, ASYNC_DL_WORKER_ID => 'w-two');
ok(wait_until(sub { (health())[1]{workers} == 2 }, 5), 'two workers: 2 alive');
is(psql("SELECT string_agg(id || ' ' || concurrency, ',' ORDER BY id) FROM "
        . "async_dl_workers"), 'w-one 16,w-two 16', 'their rows, with their '
   . 'concurrency');
my $seen = psql("SELECT seen_at FROM async_dl_workers WHERE id = 'w-one'");
ok(wait_until(sub { psql("SELECT seen_at FROM async_dl_workers WHERE id = 'w-one'") ne $seen }, 5),
   'the row is written again every poll interval');

$job = add_job(["$s->{origin}/f/nope2"]);
($st, $j) = health("$H?strict");
is($st, 200, 'files wait and workers are alive: 200 even with ?strict');

stop_worker('KILL', 0);
my $t0 = time;
ok(wait_until(sub { (health())[1]{workers} == 1 }, 6),
   sprintf('a killed worker stops counting (%.1f s; 3 intervals of 1 s)',
           time - $t0));
cmp_ok(time - $t0, '>=', 1, '... not before its row is stale');

stop_worker('TERM', 1);
is(psql("SELECT count(*) FROM async_dl_workers WHERE id = 'w-two'"), 0,
   'a worker that stops removes its row');
psql("DELETE FROM async_dl_jobs");
($st, $j) = health();
is($j->{workers}, 0, 'health: 0 workers at once');
is($j->{status}, 'ok', '... ok once nothing waits');

# a poll interval under a second: beats once a second, never seen as dead
start_worker(ASYNC_DL_POLL_INTERVAL => '200ms', ASYNC_DL_WORKER_ID => 'w-fast');
ok(wait_until(sub { (health())[1]{workers} == 1 }, 5), 'a worker polling every 200 ms: alive');
my @n;
for (1 .. 20) { push @n, (health())[1]{workers}; sleep 0.2 }
is(join('', @n), '1' x 20, 'counted alive at each of 20 probes over 4 s');
is(psql("SELECT extract(epoch FROM beat) FROM async_dl_workers WHERE id = 'w-fast'"),
   '1.000000', '... its row says it beats every second');
stop_worker('TERM');

# two sessions beat for one worker at once: one row, no error
my @b = map { psql_bg("SELECT count(*) FROM (SELECT async_dl_worker_beat("
                      . "'w-race', '1 second', 4) FROM generate_series(1, "
                      . "300)) x") } 1 .. 2;
my @rc = map { [psql_wait($_)] } @b;
is(join(' ', map { $_->[0] } @rc), '0 0', 'two racing sessions: both succeed')
    or diag(join "\n", map { $_->[1] } @rc);
is(psql("SELECT count(*) FROM async_dl_workers WHERE id = 'w-race'"), 1,
   '... one row');

# a day without a beat: the next beat of any worker removes the row
psql("UPDATE async_dl_workers SET seen_at = now() - interval '2 days' "
     . "WHERE id = 'w-race'");
psql("SELECT async_dl_worker_beat('w-other', '1 second', 4)");
is(psql("SELECT count(*) FROM async_dl_workers WHERE id = 'w-race'"), 0,
   "a row a day old goes with the next beat");
is(psql("SELECT count(*) FROM async_dl_workers WHERE id = 'w-one'"), 1,
   '... the killed worker\'s row (not a day old) stays, not counted');

done_testing();
