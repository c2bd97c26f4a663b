# An initiate that asks for the event stream (Accept: text/event-stream,
# one request that creates the job and follows it): the job is created and
# answered 202 as its stream, Location as usual, starting with the job's
# id ("connected", the status document), ending with the final event.
# Refusals (validation, the limits, idempotency conflicts) are the usual
# JSON answers before any stream starts; a replayed Idempotency-Key
# streams the same job (200).
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use AsyncDL::SSE;
use JSON::PP;

my $s = adl();
my $o = $s->{origin};
my $P = '/v1/download/';
start_nginx(<<'CONF');
location /v1/download/ {
    async_dl;
    async_dl_urls on;
    async_dl_owner $http_x_user;
    async_dl_max_active_per_owner 2;
}
CONF
start_worker();
origin_file("s$_.bin", 10000 + $_) for 0 .. 1;
my %alice = ('X-User' => 'alice', 'Content-Type' => 'application/json');
my $J = JSON::PP->new->canonical;

sub stream_initiate {
    my ($body, %h) = @_;
    return sse_open("${P}initiate", { %alice, %h }, method => 'POST',
                    body => ref $body ? $J->encode($body) : $body);
}

my $body = { files => [{ url => "$o/f/s0.bin" }, { url => "$o/f/s1.bin" }] };
my $st = stream_initiate($body, 'Idempotency-Key' => 'k1');
is($st->{status}, 202, 'initiate with Accept: text/event-stream: 202');
like($st->{headers}{'content-type'}, qr{^text/event-stream}, 'as a stream');
like($st->{headers}{location} // '', qr{^\Q${P}\Estatus/[0-9a-f-]{36}$},
     'Location as usual');
my $ev = $st->next_event(5);
is($ev->{event}, 'connected', 'first: connected');
my $id = $ev->{json}{jobId};
like($id // '', qr/^[0-9a-f-]{36}$/, 'naming the new job');
is($st->{headers}{location}, "${P}status/$id", 'the one in Location');
my @evs = $st->until_event(qr/^(completed|failed|canceled)$/, 30);
is($evs[-1]{event}, 'completed', 'then its events, to the final one');
is($evs[-1]{json}{bundle}{status}, 'completed', 'its zip there');
ok($st->wait_closed(2), 'and the stream ends');
is(request('GET', "$P$id", \%alice)->{status}, 302, 'the download is there');

# a replay of the same key: the same job, streamed (it ended: at once)
$st = stream_initiate($body, 'Idempotency-Key' => 'k1');
is($st->{status}, 200, 'replayed: 200');
is($st->{headers}{'idempotent-replayed'}, 'true', 'Idempotent-Replayed');
@evs = $st->until_event(qr/^(completed|failed|canceled)$/, 5);
is(join(' ', map { $_->{event} } @evs), 'connected completed',
   'the ended job: connected and completed at once');
is($evs[0]{json}{jobId}, $id, 'the same job');

# refusals are JSON, before any stream
my $r = stream_initiate({ files => [] });
is($r->{status}, 400, 'an empty file list: 400');
is($r->{json}{error}{code}, 'INVALID_REQUEST', 'INVALID_REQUEST, as JSON');
$r = stream_initiate('{not json');
is($r->{status}, 400, 'bad JSON: 400');
$r = stream_initiate({ files => [{ url => "$o/f/s1.bin" }] },
                     'Idempotency-Key' => 'k1');
is($r->{status}, 422, 'the key with another body: 422');
is($r->{json}{error}{code}, 'IDEMPOTENCY_CONFLICT', 'IDEMPOTENCY_CONFLICT');
stop_worker('TERM');
my @held = map { stream_initiate({ files => [{ url => "$o/f/s0.bin" }] }) }
           1 .. 2;
is(join(' ', map { $_->{status} } @held), '202 202', 'two jobs held open');
$r = stream_initiate({ files => [{ url => "$o/f/s0.bin" }] });
is($r->{status}, 429, 'over the owner\'s limit: 429');
is($r->{json}{error}{code}, 'TOO_MANY_JOBS', 'TOO_MANY_JOBS, as JSON');

# another owner cannot follow alice's job
my $b = sse_open("${P}stream/$id", { 'X-User' => 'bob' });
is($b->{status}, 404, "another owner: 404 on alice's job");

# the job is created but its stream cannot start (its state cannot be
# read): the answer is the JSON one, never a refusal a client would retry
# with a second job
my $def = psql("SELECT pg_get_functiondef('async_dl_job_events_state'::regproc)");
psql("CREATE OR REPLACE FUNCTION async_dl_job_events_state(p_job uuid, "
     . "p_prefix text, p_shown boolean DEFAULT false) RETURNS TABLE (o_owner text, o_seq bigint, o_status "
     . "text, o_states text, o_summary text, o_files text, o_full text) "
     . "LANGUAGE plpgsql STABLE AS \$\$ BEGIN RAISE EXCEPTION 'unreadable'; "
     . "END \$\$");
my $before = psql("SELECT count(*) FROM async_dl_jobs WHERE owner = 'dave'");
$r = sse_open("${P}initiate", { 'X-User' => 'dave',
                                'Content-Type' => 'application/json' },
              method => 'POST',
              body => $J->encode({ files => [{ url => "$o/f/s0.bin" }] }));
psql($def);
is($r->{status}, 202, 'a stream that cannot start: still 202');
like($r->{headers}{'content-type'}, qr{^application/json}, 'as JSON');
like($r->{json}{jobId} // '', qr/^[0-9a-f-]{36}$/, 'naming the job');
is(psql("SELECT count(*) FROM async_dl_jobs WHERE owner = 'dave'"),
   $before + 1, 'one job created');

# a plain initiate still answers JSON
my $plain = initiate({ files => [{ url => "$o/f/s0.bin" }] },
                     { 'X-User' => 'carol' });
is($plain->{status}, 202, 'without the Accept header: 202');
like($plain->{headers}{'content-type'}, qr{^application/json}, 'as JSON');
done_testing();
