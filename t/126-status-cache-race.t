# The status cache under a race: one session commits a job's progress 150
# times, in bursts of 5 with pauses longer than the lag, while three
# clients poll it through two nginx worker processes that share the
# cache.  (A fill that raced the last commit of a burst and were kept
# would stay wrong through the pause: nothing else would drop it.)  No client ever sees the bytes go back (nothing
# older than what this instance already answered), and every answer
# includes each commit made more than the lag before its poll was sent.
# A last poll, a lag after the last commit, sees the last value.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;

# this test sets async_dl_status_cache itself
delete $ENV{ADL_STATUS_CACHE};
use Time::HiRes qw(time sleep);
use HTTP::Tiny;

my $s = adl();
my $LAG = 0.2;
my $COMMITS = 150;

start_nginx(<<'EOF', workers => 2, http_config => 'async_dl_status_cache 1m lag=200ms;');
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
}
location = /sc {
    return 200 "$async_dl_status_cache_hits $async_dl_status_cache_misses $async_dl_status_cache_refused $async_dl_status_cache_invalidations\n";
}
EOF

my $id = initiate({ files => [{ url => "$s->{origin}/f/a.bin" }] },
                  { 'X-User' => 'alice' })->{json}{jobId};
is(psql("SELECT count(*) FROM async_dl_claim('w1', 1, '1 minute', 5)"), 1,
   'a worker claims the file');
my $lease = psql("SELECT lease_owner FROM async_dl_files WHERE job_id = '$id'");
psql('CREATE TABLE race_log (k integer, at double precision)');

# the session: each commit of k bytes logs k with the time (before the
# commit: the commit itself comes a moment later)
my $sql = join '', map {
    "BEGIN; SELECT async_dl_file_progress('$id', 0, '$lease', '1 minute', "
    . "$_, 1000000, 1); INSERT INTO race_log VALUES ($_, "
    . "extract(epoch FROM clock_timestamp())); COMMIT; SELECT pg_sleep("
    . ($_ % 5 ? '0.004' : '0.35') . ");\n"
} 1 .. $COMMITS;
my $sqlfile = "$s->{dir}/race.sql";
AsyncDL::Stack::write_file($sqlfile, $sql);

# the clients: "sent received bytesDone" per poll, until the session ends
my $url = 'http://127.0.0.1:' . nginx_port() . "/v1/download/status/$id";
my $stop = "$s->{dir}/race.stop";
my @kids;
for my $k (1 .. 3) {
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        my $http = HTTP::Tiny->new(keep_alive => 0, timeout => 10);
        open my $out, '>', "$s->{dir}/race-$k.log" or die;
        until (-e $stop) {
            my $t0 = time;
            my $r = $http->get($url, { headers => { 'X-User' => 'alice' } });
            my $t1 = time;
            my $b = $r->{content} =~ /"bytesDone":(\d+)/ ? $1 : -1;
            printf $out "%.6f %.6f %d %d\n", $t0, $t1, $r->{status}, $b;
        }
        close $out;
        exit 0;
    }
    push @kids, $pid;
}

my $c0 = request('GET', '/sc')->{content};
system('psql', '-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1', '-h', '127.0.0.1',
       '-p', $s->{pg_port}, '-U', 'postgres', '-d', 'postgres',
       '-o', '/dev/null', '-f', $sqlfile) == 0 or die "psql: $?";
my $ended = time;
sleep $LAG + 0.2;
AsyncDL::Stack::write_file($stop, '');
waitpid($_, 0) for @kids;
my $c1 = request('GET', '/sc')->{content};

my @commits = map { [split /\|/] } split /\n/, psql('SELECT k, at FROM race_log ORDER BY k');
is(scalar(@commits), $COMMITS, "$COMMITS commits");

my ($polls, $bad, $back, $late) = (0, 0, 0, 0);
my @late;
for my $k (1 .. 3) {
    my $prev = -1;
    open my $in, '<', "$s->{dir}/race-$k.log" or die;
    while (<$in>) {
        my ($t0, $t1, $st, $b) = split;
        $polls++;
        if ($st != 200 || $b < 0) { $bad++; next }
        $back++ if $b < $prev;
        $prev = $b;
        # every commit logged more than lag + 100 ms before the poll was sent
        my $must = 0;
        for my $c (@commits) {
            last if $c->[1] >= $t0 - $LAG - 0.1;
            $must = $c->[0];
        }
        if ($b < $must) { $late++; push @late, "$t0: $b < $must" }
    }
}
diag("$polls polls; cache before: $c0; after: $c1");
cmp_ok($polls, '>', 100, 'the clients polled all along');
is($bad, 0, 'every poll: 200 with the document');
is($back, 0, 'no client saw the bytes go back');
is($late, 0, 'every answer includes the commits older than the lag')
    or diag(join "\n", @late[0 .. ($#late < 9 ? $#late : 9)]);
my ($h0) = split ' ', $c0;
my ($h1) = split ' ', $c1;
cmp_ok($h1 - $h0, '>', 0, 'some polls were hits');

my $j = request('GET', "/v1/download/status/$id", { 'X-User' => 'alice' })->{json};
is($j->{bytesDone}, $COMMITS, 'a lag after the last commit: the last value');

done_testing();
