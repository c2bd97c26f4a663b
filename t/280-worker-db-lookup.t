# The worker's database host names are looked up off its event loop
# (issue 9, defect 11): a reconnect looks the names of the URL's host list
# up on threads of its own, then hands libpq host= with hostaddr=, so
# PQconnectPoll() never calls getaddrinfo() on the loop.  Checked with
# strace attached to a running worker: across a PostgreSQL restart, the
# lookups of "localhost" (glibc reads /etc/hosts for it) happen on other
# threads, never on the loop's.  Also: several hosts with their own ports
# (the first refusing), a name that does not resolve beside one that does,
# a socket path beside an IP literal.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use POSIX qw(WNOHANG);
use Time::HiRes qw(sleep);

my $s = adl();
my $o = $s->{origin};
my $port = $s->{pg_port};
origin_file('a.txt', 5000);

sub connects {
    my ($n) = @_;
    my @c = worker_log($n) =~ /database: connected, listening/g;
    return scalar @c;
}

sub job_done {
    my ($what) = @_;
    my $job = add_job(["$o/f/a.txt"]);
    is(wait_ended($job, 30), 'completed', "$what: a job completes");
}

# --- by name, across a restart, under strace -------------------------------

my $w = start_worker(ASYNC_DL_DATABASE_URL =>
                     "postgresql://postgres\@localhost:$port/postgres");
ok(wait_until(sub { connects(0) >= 1 }, 30), 'connected to localhost');

my $trace = "$s->{dir}/logs/strace.log";
my $strace = fork // die "fork: $!";
if ($strace == 0) {
    open STDERR, '>>', "$s->{dir}/logs/strace.err";
    exec 'strace', '-f', '-e', 'trace=openat', '-o', $trace, '-p', $w
        or POSIX::_exit(127);
}
sub traced {
    open my $fh, '<', "/proc/$w/status" or return 0;
    local $/;
    return (<$fh> // '') =~ /^TracerPid:\s*[1-9]/m;
}
my $traced = wait_until(\&traced, 20, 'strace to attach');

SKIP: {
    skip 'strace cannot attach here', 5 unless $traced;

    job_done('by name');
    pg_stop();
    ok(wait_until(sub { worker_log(0) =~ /database: connection lost/ }, 30),
       'the worker saw PostgreSQL go');
    sleep 1;                    # a few reconnects (and lookups) fail
    pg_start();
    ok(wait_until(sub { connects(0) >= 2 }, 30),
       'it reconnected by name after the restart');
    job_done('after the restart');

    kill 'TERM', $strace;
    waitpid($strace, 0);

    # "<tid> openat(AT_FDCWD, "/etc/hosts", ...)": who looked localhost up
    my (%by, $lines);
    open my $fh, '<', $trace or die "$trace: $!";
    while (<$fh>) {
        $lines++;
        $by{$1}++ if /^(\d+)\s+openat\(.*"\/etc\/hosts"/;
    }
    my @threads = grep { $_ != $w } keys %by;
    ok(@threads >= 1, "the reconnects looked the name up on other threads ("
       . join(', ', map { "$_: $by{$_}" } sort keys %by) . ")")
        or diag("$lines lines traced");
    ok(!$by{$w}, 'never on the event loop\'s thread');
}
if ($traced) {
    kill 'TERM', $strace;
    waitpid($strace, 0);
}

# --- host lists ------------------------------------------------------------

# several hosts, their own ports: the first refuses, the second answers
start_worker(ASYNC_DL_DATABASE_URL =>
             "postgresql://postgres\@localhost:1,localhost:$port/postgres");
ok(wait_until(sub { connects(1) >= 1 }, 30),
   'host list: the second host after the first refused');

# a name that does not resolve beside one that does
start_worker(ASYNC_DL_DATABASE_URL => "postgresql://postgres\@"
             . "no-such-host.invalid:$port,localhost:$port/postgres");
ok(wait_until(sub { connects(2) >= 1 }, 30),
   'a name that does not resolve is passed over');
like(worker_log(2), qr/could not translate host name "no-such-host\.invalid"/,
     'and said so');

# a socket path beside an IP literal: libpq takes the socket, no lookup
start_worker(ASYNC_DL_DATABASE_URL => "host=$s->{dir}/pgsock,127.0.0.1 "
             . "port=$port dbname=postgres user=postgres");
ok(wait_until(sub { connects(3) >= 1 }, 30), 'socket path and IP literal');
ok(wait_until(sub {
       psql("SELECT count(*) FROM pg_stat_activity WHERE application_name "
            . "= 'async-dl-worker' AND client_addr IS NULL") >= 1 }, 10),
   'a worker is connected over the socket');

# all of them restart and work on
stop_worker('TERM', $_) for 1 .. 3;
pg_stop();
pg_start();
ok(wait_until(sub { connects(0) >= 3 }, 30), 'the first worker again');
job_done('at the end');

stop_worker('TERM', 0);
my $log = worker_log();
unlike($log, qr/AddressSanitizer|runtime error/, 'no sanitizer report');

done_testing();
