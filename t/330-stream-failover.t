# The LISTEN connection with a conninfo of several hosts: libpq closes the
# socket of a host it cannot reach and opens another for the next one,
# often under the same fd number.  The LISTEN connection must follow it, at
# start and after every reconnect, and a subscriber still gets its final
# event.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use AsyncDL::SSE;
use Time::HiRes qw(sleep time);

my $s = adl();
my $P = '/v1/download/';

# nothing listens on 127.0.0.2 at that port: libpq moves on to 127.0.0.1
my %failover = (
    pg_conninfo => 'host=127.0.0.2,127.0.0.1 port=$ADL_PG_PORT '
                 . 'dbname=postgres user=postgres connect_timeout=2',
    http_config => "async_dl_postgres_pool 2;\nasync_dl_postgres_timeout 3s;",
);

start_nginx(<<'EOF2', %failover);
location /v1/download/ {
    async_dl;
    async_dl_heartbeat 1s;
}
EOF2

sub listen_backends {
    return psql("SELECT count(*) FROM pg_stat_activity "
                . "WHERE application_name = 'async-dl-nginx-listen'");
}

ok(wait_until(sub { request('GET', "${P}health")->{status} == 200 },
              5, 'first health'), 'the pool connected through the 2nd host');
ok(wait_until(sub { listen_backends() >= 1 }, 5, 'first LISTEN'),
   'LISTEN connected through the second host');

my $r = initiate({ files => [ { url => "$s->{origin}/f/x" } ] });
is($r->{status}, 202, 'a job');
my $job = $r->{json}{jobId};

my @subs = map { sse_open("${P}stream/$job") } 1 .. 2;
is($_->next_event(5)->{event}, 'connected', 'connected') for @subs;

for my $round (1 .. 3) {
    my $mark = error_log_mark();
    cmp_ok(psql("SELECT count(pg_terminate_backend(pid)) "
                . "FROM pg_stat_activity "
                . "WHERE application_name = 'async-dl-nginx-listen'"),
           '>=', 1, "round $round: the LISTEN backend is terminated");
    my $t0 = time;
    ok(wait_until(sub { error_log_since($mark) =~ /LISTEN \S+ is back/ }, 5,
                  "LISTEN back $round"),
       "round $round: LISTEN is back through the second host");
    cmp_ok(time - $t0, '<', 3, "round $round: within 3 s");
}

# LISTEN is back and the streams fetched the job again: the final event
# can only come from a notification now
psql("SELECT count(*) FROM async_dl_claim('w', 1000, '1 hour', 5)");
psql("SELECT async_dl_file_finish('$job', 0, (SELECT lease_owner FROM async_dl_files WHERE job_id = '$job' AND idx = 0), 'completed', 10, "
     . "'text/plain', NULL, 'k/$job', 1, NULL, NULL, NULL)");
for my $c (@subs) {
    my @evs = $c->until_event(qr/^(completed|failed|canceled)$/, 10);
    is($evs[-1]{event}, 'completed', 'after the LISTEN drops: completed');
}

unlike(nginx_log(), qr/\[(alert|crit|emerg)\]/, 'nothing alarming logged');
done_testing();
