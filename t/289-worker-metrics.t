# ASYNC_DL_METRICS_LISTEN: the worker's counters in the Prometheus text
# format, parsed by the reference parser (python3-prometheus-client), and
# checked against what the worker was made to do: files completed, failed
# and retried (by reason), bytes, claims, pickup, a zip, a callback, a
# lost PostgreSQL connection.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use IO::Socket::INET;
use IO::Socket::IP;

my $s = adl();
start_nginx(<<'EOF2');
location /v1/download/ {
    async_dl;
}
EOF2
my $port = AsyncDL::Stack::free_port();

sub scrape {
    my ($method) = @_;
    my $c = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port", Timeout => 5)
        or return (undef, "connect: $!");
    print $c ($method // 'GET') . " /metrics HTTP/1.1\r\nHost: w\r\n\r\n";
    local $/;
    my $raw = <$c>;
    my ($head, $body) = split /\r\n\r\n/, $raw // '', 2;
    return ($head, $body);
}

sub parsed {
    my ($head, $body) = scrape();
    return (prometheus_samples($body), $head);
}

start_worker(ASYNC_DL_METRICS_LISTEN => "127.0.0.1:$port",
             ASYNC_DL_RETRY_BASE => '100ms', ASYNC_DL_WORKER_ID => 'w-met');
ok(wait_until(sub { (scrape())[0] }, 10), 'the worker serves its metrics');

my ($ok, $v, $head) = parsed();
ok($ok, 'the text parses with the reference parser');
like($head, qr{^HTTP/1\.1 200}, 'answered 200');
like($head, qr{Content-Type: text/plain; version=0\.0\.4}i, 'the format\'s content type');
is($v->{'async_dl_worker_transfers_in_flight:type'}, 'gauge',
   'transfers in flight: a gauge');
is($v->{'async_dl_worker_claim_seconds_count:type'}, 'histogram',
   'claim seconds: a histogram');
cmp_ok($v->{'async_dl_worker_ended_total{kind=files,outcome=completed}'} // -1,
       '==', 0, 'nothing ended yet');
my ($h2) = scrape('POST');
like($h2, qr{^HTTP/1\.1 405}, 'POST: 405');

origin_file('m1.bin', 100_000);
origin_file('m2.bin', 50_000);
my @ok = map { add_job(["$s->{origin}/f/m$_.bin"]) } 1 .. 2;
my $bad = add_job(["$s->{origin}/status/404"]);
my $retried = add_job(["$s->{flaky}/fail/metrics?n=2&size=1000&code=500"]);
my $zip = add_job(["$s->{origin}/f/m1.bin", "$s->{origin}/f/m2.bin"]);
is(wait_ended($_, 30), 'completed', 'a job completed') for @ok, $retried, $zip;
is(wait_ended($bad, 30), 'failed', 'the 404 failed');
my $cb = initiate({ files => [{ url => "$s->{origin}/f/m2.bin" }],
                    callback_url => "$s->{flaky}/callback/metrics" })->{json}{jobId};
is(wait_ended($cb, 30), 'completed', 'a job with a callback completed');
ok(wait_until(sub { psql("SELECT callback_status FROM async_dl_jobs WHERE id = '$cb'")
                    eq 'delivered' }, 20), '... and its callback delivered');

($ok, $v) = parsed();
ok($ok, 'parses after the work');
my $m = sub { $v->{"async_dl_worker_$_[0]"} // 'missing' };
cmp_ok($m->('ended_total{kind=files,outcome=completed}'), '==', 6, '6 files completed');
cmp_ok($m->('ended_total{kind=files,outcome=failed}'), '==', 1, '1 file failed');
cmp_ok($m->('retries_total{reason=HTTP_STATUS}'), '==', 2, '2 retries, reason HTTP_STATUS');
cmp_ok($m->('download_bytes_total'), '>=', 100_000 * 2 + 50_000 * 3 + 1000,
       'download bytes: at least the files\' sizes');
cmp_ok($m->('upload_bytes_total'), '>', 100_000 * 2 + 50_000 * 3 + 1000,
       'upload bytes: the files and the zip');
cmp_ok($m->('ended_total{kind=bundles,outcome=completed}'), '==', 1, 'one zip stored');
cmp_ok($m->('ended_total{kind=callbacks,outcome=completed}'), '==', 1, 'one callback delivered');
cmp_ok($m->('claimed_total{kind=files}'), '>=', 7, 'the files\' claims took them');
cmp_ok($m->('claims_total{kind=files}'), '>=', 1, 'claim queries counted');
cmp_ok($m->('claim_seconds_count'), '>=', 1, 'claim round trips observed');
cmp_ok($m->('pickup_seconds_count'), '==', 7, 'a pickup for each file\'s first attempt');
cmp_ok($m->('transfers_in_flight'), '==', 0, 'nothing in flight at the end');
cmp_ok($m->('db_reconnects_total'), '==', 0, 'no connection lost yet');

# the gauge kept by hand against a recomputation: the files this worker
# holds downloading, as PostgreSQL has them
my @slow = map { add_job(["$s->{origin}/slow/m2.bin?rate=16k&g=$_"]) } 1 .. 3;
ok(wait_until(sub { psql("SELECT count(*) FROM async_dl_files WHERE status = "
                         . "'downloading' AND lease_owner LIKE 'w-met/%'") == 3 }, 10),
   'three slow downloads under way');
($ok, $v) = parsed();
cmp_ok($v->{async_dl_worker_transfers_in_flight}, '==',
       psql("SELECT count(*) FROM async_dl_files WHERE status = 'downloading' "
            . "AND lease_owner LIKE 'w-met/%'"),
       'transfers in flight = the files it holds downloading, recomputed');
is(wait_ended($_, 30), 'completed', 'a slow job completed') for @slow;
ok(wait_until(sub { ((parsed())[1]{async_dl_worker_transfers_in_flight} // -1) == 0 }, 5),
   '... and the gauge is back to 0');

# IPv6 loopback
my $p6 = AsyncDL::Stack::free_port();
start_worker(ASYNC_DL_METRICS_LISTEN => "[::1]:$p6");
ok(wait_until(sub {
       my $c = IO::Socket::IP->new(PeerHost => '::1', PeerPort => $p6,
                                   Timeout => 2) or return 0;
       print $c "GET /metrics HTTP/1.1\r\nHost: w\r\n\r\n";
       local $/;
       my $raw = <$c> // '';
       return $raw =~ /^HTTP\/1\.1 200/ && $raw =~ /async_dl_worker_claims_total/;
   }, 10), 'a second worker serves its metrics on [::1]');
stop_worker('TERM', 1);

# a lost PostgreSQL connection
psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
     . "application_name = 'async-dl-worker'");
ok(wait_until(sub { ((parsed())[1]{'async_dl_worker_db_reconnects_total'} // 0) >= 1 }, 15),
   'a lost PostgreSQL connection is counted');
sleep 2;
cmp_ok((parsed())[1]{'async_dl_worker_db_reconnects_total'}, '==', 1,
       '... once (the reconnect is not another)');

done_testing();
