# Why a file waits (16): a pending file's "waiting" in the status document
# is "retry", "host_paused", "host_limit", "owner_limit" or "queue"; null
# for a file that does not wait.  The workers store their limits at start.
# A status cache keeps a document with a waiting file for at most 2 s, so
# a reason that changed without an event of the job shows within that.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use Time::HiRes qw(sleep time);

delete $ENV{ADL_STATUS_CACHE};
my $s = adl();

sub waiting {
    my ($job, $idx) = @_;
    return psql("SELECT coalesce(async_dl_job_status('$job', 'w', '/v1/download/')"
                . "::json -> 'files' -> " . ($idx // 0) . " ->> 'waiting', 'null')");
}
sub reset_jobs {
    psql('SET client_min_messages = warning; TRUNCATE async_dl_jobs CASCADE; '
         . 'TRUNCATE async_dl_hosts');
}

my $q = add_job(['http://a.example/1'], owner => 'w');
is(waiting($q), 'queue', 'a fresh file waits its turn: queue');
psql("UPDATE async_dl_files SET next_attempt_at = now() + interval '1 hour' "
     . "WHERE job_id = '$q'");
is(waiting($q), 'retry', 'after a failed attempt, before the next: retry');
psql("UPDATE async_dl_files SET next_attempt_at = now() WHERE job_id = '$q'");
psql("SELECT async_dl_host_pause('http://a.example/x', now() + interval "
     . "'1 hour', 'HTTP 429')");
is(waiting($q), 'host_paused', 'its host asked to wait: host_paused');

reset_jobs();
psql("SELECT async_dl_claim_limits_set(1, 2)");
my $run = add_job(['http://h.example/1', 'http://h.example/2',
                   'http://o.example/3', 'http://p.example/4'], owner => 'w');
psql("UPDATE async_dl_files SET status = 'downloading' WHERE job_id = '$run' "
     . "AND idx IN (0, 2)");
is(waiting($run, 0), 'null', 'a downloading file does not wait');
is(waiting($run, 1), 'host_limit', "its host has its limit's files "
   . 'downloading: host_limit');
psql("SELECT async_dl_claim_limits_set(0, 2)");
is(waiting($run, 3), 'owner_limit', "its owner has its limit's files "
   . 'downloading: owner_limit');
psql("SELECT async_dl_claim_limits_set(0, 0)");
is(waiting($run, 1), 'queue', 'no limits: queue');

# --- the worker stores its limits ------------------------------------------
reset_jobs();
start_worker(ASYNC_DL_PER_HOST_CONCURRENCY => 3,
             ASYNC_DL_PER_OWNER_CONCURRENCY => 5);
ok(wait_until(sub { psql("SELECT host_limit || ' ' || owner_limit FROM "
                         . "async_dl_claim_limits") eq '3 5' }, 20),
   'a worker stores its limits at start');
stop_worker('TERM');

# --- through nginx, with the status cache ------------------------------------
reset_jobs();
start_nginx(<<'EOF2', http_config => 'async_dl_status_cache 1m;');
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
}
location = /sc { return 200 "$async_dl_status_cache_hits\n"; }
EOF2
my $id = initiate({ files => [{ url => 'http://slow.example/f' }] },
                  { 'X-User' => 'w' })->{json}{jobId};
my $doc = sub {
    request('GET', "/v1/download/status/$id", { 'X-User' => 'w' })->{json};
};
sub hits {
    return (split ' ', request('GET', '/sc')->{content})[0];
}
is($doc->()->{files}[0]{waiting}, 'queue', 'the document says queue');
ok(wait_until(sub { my $h = hits(); $doc->(); hits() > $h }, 10),
   'a poll soon comes from the cache');
my $t0 = time;
psql("SELECT async_dl_host_pause('http://slow.example/', now() + interval "
     . "'1 hour', 'HTTP 503')");
ok(wait_until(sub { ($doc->()->{files}[0]{waiting} // '') eq 'host_paused' },
              10), 'a pause, which is no event of the job, shows');
cmp_ok(time - $t0, '<', 5, '... within the 2 s a cached document with a '
       . 'waiting file is kept (and a poll)');

# without limits, a queued job's document stays in the cache past 2 s
psql("SELECT async_dl_claim_limits_set(0, 0)");
my $id2 = initiate({ files => [{ url => 'http://quiet.example/f' }] },
                   { 'X-User' => 'w' })->{json}{jobId};
my $doc2 = sub {
    request('GET', "/v1/download/status/$id2", { 'X-User' => 'w' })->{json};
};
is($doc2->()->{files}[0]{waiting}, 'queue', 'a queued job, no limits: queue');
ok(wait_until(sub { my $h = hits(); $doc2->(); hits() > $h }, 10),
   'its document is cached');
sleep 2.5;
my $h0 = hits();
$doc2->();
is(hits(), $h0 + 1, '... and still is after 2.5 s (nothing can change its '
   . 'reason but an event or a pause, which empties the cache)');

done_testing();
