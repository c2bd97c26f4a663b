# Fair and polite with real workers: two workers share one origin host's
# limit (ASYNC_DL_PER_HOST_CONCURRENCY), counted at the origin; owner B's
# job does not wait behind owner A's backlog on that host, and a job on
# another host starts at once.  ASYNC_DL_MAX_TRANSFER_RATE paces each
# download.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use Time::HiRes qw(sleep time);

my $s = adl();
my $o = $s->{origin};
origin_file('fair.bin', 24 * 1024);      # 2 s each at 12 KB/s
origin_file('tiny.bin', 1024);
my $other = scripted_server(sub {
    my ($c) = @_;
    print $c "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n"
           . "\r\nhello";
});

my @ajobs = map { add_job(["$o/slow/fair.bin?rate=12k&a=$_"], owner => 'A',
                      timeout => 120) } 1 .. 24;
# two slots each: the third file at once on the host needs the other worker
start_worker(ASYNC_DL_CONCURRENCY => 2, ASYNC_DL_PER_HOST_CONCURRENCY => 3)
    for 1 .. 2;
sleep 1.5;

my $left = sub {
    psql("SELECT count(*) FROM async_dl_files f JOIN async_dl_jobs j ON "
         . "j.id = f.job_id WHERE j.owner = 'A' AND f.status = 'pending'");
};
my $c = add_job(["$other/c"], owner => 'A');
is(wait_ended($c, 20), 'completed', "A's job on another host completed");
cmp_ok($left->(), '>=', 12, '... while most of its backlog on the slow host waits');

my $jb = add_job(["$o/f/tiny.bin?b=1"], owner => 'B');
is(wait_ended($jb, 20), 'completed', "B's job completed");
cmp_ok($left->(), '>=', 8, "... before A's backlog on the same host, at its "
       . 'next free slot');

is(wait_ended($_, 90), 'completed', 'an A job completed') for @ajobs;

# at most 3 at once at the origin, from both workers together
my @ev;
for (split /\n/, origin_log()) {
    my ($msec, $rt, $st, $uri) = split ' ';
    next unless $uri =~ m{^/(slow|f)/(fair|tiny)};
    push @ev, [$msec - $rt, 1], [$msec, -1];
}
my ($now, $max) = (0, 0);
for (sort { $a->[0] <=> $b->[0] || $a->[1] <=> $b->[1] } @ev) {
    $now += $_->[1];
    $max = $now if $now > $max;
}
is($max, 3, 'the origin saw at most 3 requests at once, and 3 were reached '
   . '(two workers of two slots each)');
my %by = map { $_ => scalar(() = worker_log($_) =~ /stored/g) } 0, 1;
ok($by{0} && $by{1}, "both workers took part ($by{0} and $by{1} files)");

# --- a bandwidth cap per download -------------------------------------------
stop_worker('TERM', $_) for 0, 1;
origin_file('capped.bin', 1024 * 1024);
start_worker(ASYNC_DL_MAX_TRANSFER_RATE => '256k');
my $capped = add_job(["$o/f/capped.bin"], owner => 'A');
is(wait_ended($capped, 30), 'completed', 'a capped download completed');
# (not the origin's log: its bytes wait in the socket buffers)
my $took = psql("SELECT round(extract(epoch FROM completed_at - started_at), 1) "
                . "FROM async_dl_files WHERE job_id = '$capped'");
cmp_ok($took, '>=', 3.5, "1 MiB at 256 KiB/s took the worker $took s "
       . '(4 s; unlimited, a few ms)');
is(psql("SELECT size FROM async_dl_files WHERE job_id = '$capped'"),
   1024 * 1024, 'all of it, with the right size');

done_testing();
