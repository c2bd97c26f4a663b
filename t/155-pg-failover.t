# A conninfo with several hosts: libpq closes the socket of a host it
# cannot reach and opens another for the next one, often under the same fd
# number.  The pool must follow it, at start and after every reconnect.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use Time::HiRes qw(sleep time);

my $s = adl();

# nothing listens on 127.0.0.2 at that port: libpq moves on to 127.0.0.1
my %failover = (
    pg_conninfo => 'host=127.0.0.2,127.0.0.1 port=$ADL_PG_PORT '
                 . 'dbname=postgres user=postgres connect_timeout=2',
    http_config => "async_dl_postgres_pool 2;\nasync_dl_postgres_timeout 3s;",
);

start_nginx("location /v1/download/ { async_dl; }", %failover);

ok(wait_until(sub { request('GET', '/v1/download/health')->{status} == 200 },
              5, 'first health'), 'connected through the second host');

for my $round (1 .. 3) {
    psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
         . "WHERE application_name = 'async-dl-nginx'");
    my $t0 = time;
    ok(wait_until(sub {
        request('GET', '/v1/download/health')->{status} == 200 }, 5,
        "health after termination $round"),
       "round $round: reconnected through the second host");
    cmp_ok(time - $t0, '<', 3, "round $round: within 3 s");
}

unlike(nginx_log(), qr/\[(alert|crit)\]/, 'nothing alarming logged');
done_testing();
