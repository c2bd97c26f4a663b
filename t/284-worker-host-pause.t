# An origin that answers 429 (or 503) with Retry-After pauses its host for
# every worker: no worker starts another of its files before the pause
# ends, while files of other hosts go on; the file that met the answer is
# retried after it.  A worker that stops while it waits to retry a file
# hands it back with the rest of that wait ("waiting": "retry").
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use Time::HiRes qw(sleep time);

my $s = adl();
my $o = $s->{origin};
origin_file('calm.bin', 2048);
my $dir = $s->{dir};
my $busy = scripted_server(sub {
    my ($c, $line) = @_;
    my ($path) = $line =~ m{^GET (\S+)};
    open my $log, '>>', "$dir/busy.log" or die;
    printf $log "%.3f %s\n", time, $path;
    close $log;
    if (mkdir "$dir/busy.once") {
        print $c "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 10\r\n"
               . "Content-Length: 0\r\nConnection: close\r\n\r\n";
        return;
    }
    print $c "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n"
           . "\r\nbusy";
});

start_worker(ASYNC_DL_POLL_INTERVAL => '300ms') for 1 .. 2;
my $first = add_job(["$busy/x0"], owner => 'A');
ok(wait_until(sub { psql("SELECT count(*) FROM async_dl_hosts") == 1 }, 20),
   'the 429 paused the host');
my $until = psql("SELECT extract(epoch FROM paused_until) FROM async_dl_hosts");
my ($host, $reason) = split /\|/, psql("SELECT host, reason FROM async_dl_hosts");
is($host, substr($busy, 7), 'the host key is its host:port');
is($reason, 'HTTP 429', 'with the answer that paused it');

# (a pause of 10 s: the files of another host end well within it, however
# loaded the machine)
my @more = map { add_job(["$busy/x$_"], owner => 'A') } 1 .. 3;
my @calm = map { add_job(["$o/f/calm.bin?c=$_"], owner => 'A') } 1 .. 3;
for (@calm) {
    is(wait_ended($_, 20), 'completed', 'a file of another host went on');
}
cmp_ok(time, '<', $until, '... within the pause');
is(wait_ended($_, 30), 'completed', 'a file of the paused host completed')
    for $first, @more;

my @req = map { [split ' '] } split /\n/, slurp_file("$dir/busy.log");
my @early = grep { $_->[1] ne '/x0' && $_->[0] < $until - 0.05 } @req;
is(scalar @early, 0, 'no worker asked the paused host for another file '
   . 'before the pause ended');
my ($retry) = grep { $_->[1] eq '/x0' } @req[1 .. $#req];
ok($retry && $retry->[0] >= $req[0][0] + 9.9, 'the file that met the 429 '
   . 'was retried after its Retry-After (10 s)');
like(worker_log(), qr/the origin answered HTTP 429 with Retry-After: its host is paused for \d+ ms/,
     'the worker says so');

# --- a worker that stops while it waits to retry hands the wait on --------
my $late = scripted_server(sub {
    my ($c) = @_;
    print $c "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 30\r\n"
           . "Content-Length: 0\r\nConnection: close\r\n\r\n";
});
my $held = add_job(["$late/y"], owner => 'A');
ok(wait_until(sub { worker_log() =~ /job=$held file=0 attempt 1 failed.*retrying in/ },
              20), 'a worker waits to retry after a 503 with Retry-After: 30');
stop_worker('TERM', $_) for 0, 1;
is(psql("SELECT status || ' ' || (next_attempt_at > now() + interval '20 "
        . "seconds') FROM async_dl_files WHERE job_id = '$held'"),
   'pending true', 'stopped, it handed the file back with that wait');
is(psql("SELECT async_dl_job_status('$held', 'A', '/v1/download/')::json "
        . "-> 'files' -> 0 ->> 'waiting'"), 'retry',
   'and the status says the file waits to retry');

sub slurp_file { local (@ARGV, $/) = @_; return <> }

done_testing();
