# A schema change under a running nginx (a migration that recreates an API
# function with another result type) invalidates the statements its
# connections prepared: PostgreSQL answers 0A000 "cached plan must not
# change result type" while the statement still exists on the server.
# Every route keeps answering as before, on the same connections (same
# backend pids), without a reload: the statement is deallocated, prepared
# again and run again.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;

# the status route's own statement is the subject: without the status cache
delete $ENV{ADL_STATUS_CACHE};

our %alice = ('X-User' => 'alice');

# the backends of nginx's pool (and its LISTEN connection)
sub backends {
    return psql("SELECT string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity"
                . " WHERE application_name = 'async-dl-nginx'");
}

# the route's answer $n times: every status and body must be the first's
sub same_answers {
    my ($n, $what, $method, $path, $want_status, $want_body) = @_;
    for my $i (1 .. $n) {
        my $r = request($method, $path, \%alice);
        is($r->{status}, $want_status, "$what #$i: $want_status")
            or diag($r->{content});
        is($r->{content}, $want_body, "$what #$i: the same body") if defined $want_body;
    }
}

run_tests();

__DATA__

=== TEST 1: a function recreated with another result type (text -> json): status recovers
--- http_config
async_dl_postgres_pool 2;
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
}
--- check
my $id = initiate({ files => [{ url => 'https://example.com/a' }] }, \%main::alice)->{json}{jobId};
my $before = request('GET', "/v1/download/status/$id", \%main::alice);
is($before->{status}, 200, 'status: 200');
main::same_answers(4, 'before', 'GET', "/v1/download/status/$id", 200, $before->{content});
my $pids = main::backends();
like($pids, qr/^\d+(,\d+)+$/, "nginx's backends: $pids");
is(psql("SELECT count(*) FROM pg_prepared_statements"), 0, '(psql sees its own session only)');

psql(q{ALTER FUNCTION async_dl_job_status(uuid, text, text) RENAME TO async_dl_job_status_v1;
       CREATE FUNCTION async_dl_job_status(p_job uuid, p_owner text, p_prefix text)
       RETURNS json LANGUAGE sql STABLE
       AS $$ SELECT async_dl_job_status_v1(p_job, p_owner, p_prefix)::json $$});

main::same_answers(6, 'after the change', 'GET', "/v1/download/status/$id", 200,
                   $before->{content});
is(main::backends(), $pids, 'the same connections: nothing was reconnected');
--- error_log
prepared again
--- no_error_log
[error]
42P05

=== TEST 2: a table function whose column changes type (text -> varchar): the file route recovers
--- http_config
async_dl_postgres_pool 2;
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
}
--- check
my $id = initiate({ files => [{ url => 'https://example.com/a' }] }, \%main::alice)->{json}{jobId};
my $before = request('GET', "/v1/download/$id/files/0", \%main::alice);
is($before->{status}, 409, 'a queued file: 409 NOT_READY');
main::same_answers(4, 'before', 'GET', "/v1/download/$id/files/0", 409, $before->{content});
my $pids = main::backends();

psql(q{ALTER FUNCTION async_dl_job_file(uuid, text, integer) RENAME TO async_dl_job_file_v1;
       CREATE FUNCTION async_dl_job_file(p_job uuid, p_owner text, p_idx integer)
       RETURNS TABLE (o_outcome varchar, o_key text, o_name text, o_message text, o_url text)
       LANGUAGE sql STABLE
       AS $$ SELECT * FROM async_dl_job_file_v1(p_job, p_owner, p_idx) $$});

main::same_answers(6, 'after the change', 'GET', "/v1/download/$id/files/0", 409,
                   $before->{content});
is(main::backends(), $pids, 'the same connections');

# and back: the statement changes again, and recovers again
psql(q{DROP FUNCTION async_dl_job_file(uuid, text, integer);
       ALTER FUNCTION async_dl_job_file_v1(uuid, text, integer) RENAME TO async_dl_job_file});
main::same_answers(6, 'changed back', 'GET', "/v1/download/$id/files/0", 409,
                   $before->{content});
is(main::backends(), $pids, 'still the same connections');
--- error_log
prepared again
--- no_error_log
[error]
42P05

=== TEST 3: a function that is gone for a while: 503, then the route comes back by itself
--- http_config
async_dl_postgres_pool 1;
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
}
--- check
my $id = initiate({ files => [{ url => 'https://example.com/a' }] }, \%main::alice)->{json}{jobId};
my $before = request('GET', "/v1/download/status/$id", \%main::alice);
is($before->{status}, 200, 'status: 200');
my $pids = main::backends();

psql(q{ALTER FUNCTION async_dl_job_status(uuid, text, text) RENAME TO async_dl_job_status_gone});
my $r = request('GET', "/v1/download/status/$id", \%main::alice);
is($r->{status}, 503, 'the function is missing: 503');
is($r->{json} && $r->{json}{error}{code}, 'DATABASE_UNAVAILABLE', 'DATABASE_UNAVAILABLE');

psql(q{CREATE FUNCTION async_dl_job_status(p_job uuid, p_owner text, p_prefix text)
       RETURNS varchar LANGUAGE sql STABLE
       AS $$ SELECT async_dl_job_status_gone(p_job, p_owner, p_prefix) $$});
main::same_answers(4, 'back with another type', 'GET', "/v1/download/status/$id", 200,
                   $before->{content});
is(main::backends(), $pids, 'the same connection');
--- no_error_log
42P05
