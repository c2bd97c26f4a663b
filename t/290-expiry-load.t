# Expiry keeps up under a steady load (issue 9, defect 20): two workers
# with short TTLs, a steady stream of initiates (single files, 3-file jobs
# with a bundle, failing files), status polls and event streams for
# ADL_LOAD_SECONDS (60 by default).  Sampled all along: job rows, bucket
# objects, and jobs left well past their expiry.  Asserted: no job stays
# long past its expiresAt at any sample (sweeps never stall), the row and
# object counts plateau (the last third of the run holds no more than the
# middle third, with slack) rather than grow with the run, the sweepers
# log what they remove all along, and everything is gone once the load
# stops.  The long soak with faults is `make chaos`.
#
# The stall it found: the worker's tick timer was re-armed (its countdown
# restarted) each time the loop turned busy or idle, so a loop doing so
# more often than a tick never ticked, and nothing run from the tick
# (expiry among the rest) ran until the load stopped.  Expiry now says
# when its tick comes late.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use HTTP::Tiny;
use POSIX qw(_exit);
use Time::HiRes qw(sleep time);

my $SECONDS = $ENV{ADL_LOAD_SECONDS} || 60;
my $s = adl();
my $o = $s->{origin};

start_nginx(<<'EOF');
location /v1/download/ {
    async_dl;
    async_dl_urls on;
}
EOF
my %env = (ASYNC_DL_TTL_COMPLETED => '2s', ASYNC_DL_TTL_FAILED => '1s',
           ASYNC_DL_POLL_INTERVAL => '1s', ASYNC_DL_LOG_LEVEL => 'info',
           ASYNC_DL_CONCURRENCY => '32');
start_worker(%env);
start_worker(%env);

origin_file("l$_.bin", 2000 + $_ * 700) for 0 .. 9;

my $base = "http://127.0.0.1:$s->{port}/v1/download/";

# One load process: initiates about every $pace seconds, polls the status
# of its recent jobs in between, and (when $sse) follows an event stream
# of each new job to its end.
sub load_child {
    my ($n, $pace, $sse, $until) = @_;
    my $http = HTTP::Tiny->new(timeout => 10, keep_alive => 1);
    my $stream = HTTP::Tiny->new(timeout => 10);
    my (@recent, $i);
    srand($$);
    while (time < $until) {
        my $t0 = time;
        my $k = $i++ % 10;
        my @files = ({ url => "$o/f/l$k.bin" });
        if ($k == 3) {           # a bundle
            push @files, { url => "$o/f/l4.bin" }, { url => "$o/f/l5.bin" };
        } elsif ($k == 7) {      # a failure
            @files = ({ url => "$o/status/404" });
        }
        my $r = $http->request('POST', "${base}initiate", {
            headers => { 'Content-Type' => 'application/json' },
            content => encode_json({ files => \@files }) });
        if ($r->{status} == 202 && $r->{content} =~ /"jobId":"([^"]+)"/) {
            push @recent, $1;
            shift @recent if @recent > 20;
            if ($sse && $i % 3 == 0) {
                $stream->request('GET', "${base}stream/$1");
            }
        }
        while (time - $t0 < $pace) {
            $http->request('GET', "${base}status/$recent[rand @recent]")
                if @recent;
            sleep 0.05;
        }
    }
    _exit(0);
}

my $start = time;
my $until = $start + $SECONDS;
my @kids;
for my $n (0 .. 2) {
    my $pid = fork // die "fork: $!";
    load_child($n, 0.25, $n == 0, $until) if $pid == 0;
    push @kids, $pid;
}

# samples: [seconds since start, job rows, bucket objects, overdue jobs]
my @samples;
while (time < $until) {
    sleep 2;
    my ($rows, $overdue) = split /\|/, psql(
        "SELECT count(*), count(*) FILTER (WHERE expires_at < now() "
        . "- interval '10 seconds') FROM async_dl_jobs");
    push @samples, [time - $start, $rows, scalar(my @k = s3_keys()),
                    $overdue];
}
waitpid($_, 0) for @kids;

diag(sprintf("t=%3.0fs jobs=%4d objects=%4d overdue=%d", @$_))
    for @samples;

ok(@samples >= 10, scalar(@samples) . ' samples taken');

# never a job long past its expiry: sweeps did not stall
my @late = grep { $_->[3] > 0 } @samples;
is(scalar(@late), 0, 'no sample found a job 10 s past its expiresAt')
    or diag(explain(\@late));

# a plateau: the last third holds no more than the middle third (+ slack)
my $third = int(@samples / 3);
my @mid = @samples[$third .. 2 * $third - 1];
my @last = @samples[2 * $third .. $#samples];
sub maxcol { my ($c, @s) = @_; my $m = 0; $m = $_->[$c] > $m ? $_->[$c] : $m for @s; $m }
for my $c ([1, 'job rows'], [2, 'bucket objects']) {
    my ($mid, $last) = (maxcol($c->[0], @mid), maxcol($c->[0], @last));
    ok($last <= $mid * 1.3 + 30,
       "$c->[1] plateau: last third at most $last, middle third $mid");
}

# the sweepers said what they did, all along the run
my $log = worker_log();
my @late_ticks = $log =~ /(expiry: not run for \d+ ms)/g;
is(scalar(@late_ticks), 0, 'the sweepers were run on time')
    or diag(join "\n", @late_ticks);
my @removed = $log =~ /expiry: removed (\d+) expired job/g;
my $sum = 0;
$sum += $_ for @removed;
ok($sum > 0, "expiry logged its removals ($sum jobs in " . scalar(@removed)
   . ' sweeps)');
my $initiated = psql("SELECT count(*) FROM async_dl_jobs") + $sum;
ok($sum >= $initiated / 2, "most jobs were removed during the run "
   . "($sum of about $initiated)");

# once the load stops, everything goes
ok(wait_until(sub { psql("SELECT count(*) FROM async_dl_jobs") == 0 }, 60,
              'all jobs to expire'), 'every job expired after the load');
ok(wait_until(sub { scalar(my @k = s3_keys()) == 0 }, 30,
              'the bucket to empty'), 'and every object is gone')
    or diag(join "\n", s3_keys());

unlike($log, qr/\[error\]/, 'no error logged') or diag(
    join "\n", grep { /\[error\]/ } split /\n/, $log);

done_testing();
