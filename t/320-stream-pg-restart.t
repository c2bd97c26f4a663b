# PostgreSQL restarts while jobs are streamed: the LISTEN connection comes
# back, every followed job is fetched again, and each subscriber still gets
# its final event, also for a job that ended while LISTEN was down.  The
# LISTEN backend killed alone: the same.
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
    async_dl_heartbeat 1s;
}
EOF2

sub new_job {
    my $r = initiate({ files => [ { url => "$s->{origin}/f/x" } ] });
    is($r->{status}, 202, 'a job');
    return $r->{json}{jobId};
}

sub claim_finish {
    my ($job) = @_;
    psql("SELECT count(*) FROM async_dl_claim('w', 1000, '1 hour', 5)");
    psql("SELECT async_dl_file_finish('$job', 0, (SELECT lease_owner FROM async_dl_files WHERE job_id = '$job' AND idx = 0), 'completed', 10, "
         . "'text/plain', NULL, 'k/$job', 1, NULL, NULL, NULL)");
}

# --- PostgreSQL stopped and started mid-stream ----------------------------

my @jobs = map { new_job() } 1 .. 2;
my %st;
for my $j (@jobs) {
    $st{$j} = [ map { sse_open("${P}stream/$j") } 1 .. 3 ];
}
for my $j (@jobs) {
    is($_->next_event(5)->{event}, 'connected', 'connected') for @{ $st{$j} };
}

my $mark = error_log_mark();
pg_stop();
ok(wait_until(sub { error_log_since($mark) =~ /LISTEN connection lost/ }, 5),
   'nginx noticed the LISTEN connection drop');
$st{$jobs[0]}[0]{heartbeats} = 1;
my @hb = $st{$jobs[0]}[0]->until_event(qr/^heartbeat$/, 3);
$st{$jobs[0]}[0]{heartbeats} = 0;
is($hb[-1]{event}, 'heartbeat', 'streams stay up (heartbeats) meanwhile');
sleep 1;
pg_start();

# the first job ends right after the restart, maybe before LISTEN is back
claim_finish($jobs[0]);
for my $c (@{ $st{$jobs[0]} }) {
    my @evs = $c->until_event(qr/^(completed|failed|canceled)$/, 15);
    is($evs[-1]{event}, 'completed',
       'a job that ended across the restart: completed');
}
ok(wait_until(sub { error_log_since($mark) =~ /LISTEN \S+ is back/ }, 5),
   'LISTEN is back');

# the second job ends once LISTEN is back
claim_finish($jobs[1]);
for my $c (@{ $st{$jobs[1]} }) {
    my @evs = $c->until_event(qr/^(completed|failed|canceled)$/, 10);
    is($evs[-1]{event}, 'completed', 'a job that ended later: completed');
}

# --- the LISTEN backend alone is killed -------------------------------------

my $job = new_job();
my @subs = map { sse_open("${P}stream/$job") } 1 .. 3;
$_->next_event(5) for @subs;
$mark = error_log_mark();
is(psql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        . "WHERE application_name = 'async-dl-nginx-listen'"), 1,
   'the LISTEN backend is terminated');
claim_finish($job);
for my $c (@subs) {
    my @evs = $c->until_event(qr/^(completed|failed|canceled)$/, 10);
    is($evs[-1]{event}, 'completed', 'after the LISTEN drop: completed');
}
like(error_log_since($mark), qr/LISTEN connection lost/, 'the drop was logged');
unlike(nginx_log(), qr/\[(alert|crit|emerg)\]/, 'nothing alarming logged');
done_testing();
