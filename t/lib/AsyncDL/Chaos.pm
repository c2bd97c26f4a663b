package AsyncDL::Chaos;

=head1 NAME

AsyncDL::Chaos - the fault-injection run of bench/chaos and
t/900-chaos-short.t: mixed load on two nginx instances and two workers,
faults injected, invariants checked against PostgreSQL, the bucket and the
origin

=head1 SYNOPSIS

    use AsyncDL::Chaos qw(chaos_run soak_run);

    my $r = chaos_run(jobs => 80, load => 40, worker_kills => 2, ...);
    # $r->{violations}{lost} = [ "job ... : why", ... ], every list empty
    # when the promise held; $r->{figures} the numbers printed

    my $s = soak_run(duration => 300, rate => 15, ttl => 60);

=head1 THE RUN

C<chaos_run(%opt)> builds its own stack with L<AsyncDL::Test>: PostgreSQL,
s3rver behind the fault proxy (L<AsyncDL::Test/S3 FAULT PROXY>), the origin
nginx and the flaky origin, B<two> nginx instances with the module and
B<two> workers (the second with C<ASYNC_DL_STREAM_PUT=off>: files of
known size above a part go up as multipart uploads there too), all on one
database and one bucket.  An audit trigger
(test instrumentation, table C<chaos_audit>) records every change of a
job's status and every job deletion, so that a job which vanished can be
told apart from one that expired or was deleted by the run.

Load (a plan drawn from C<seed>): C<jobs> jobs initiated evenly over
C<load> seconds by C<clients> client processes, each with an
Idempotency-Key and retried on 5xx; owners C<owner-0..>; most one small
file, C<multi_share> three files (a zip each), C<wide_share> 6 to 10
files (spread over both workers, ending at once), C<big_share> one file of
C<big_min>..C<big_max> MiB sent at C<big_rate> (two in three without
Content-Length, so that they go up as multipart uploads that get killed
and resumed; some with a short job timeout), C<fail_share> failing or
flaky origins (404, 500, reset mid-body then Range, 500 twice then 200),
C<callback> with a callback URL.  C<cancel> of the jobs are canceled and
C<delete> deleted (mid-transfer, right after completion, while the zip is
built), C<pause> paused and resumed 0.5 to 3 s later, and besides the
draw C<pause_min> big jobs, started away from the storage's faults, are
paused while they transfer (every other
one after its first part), so that every run pauses transfers in
flight; every job is polled until it ends (on either instance), C<sse> of
them followed by an SSE subscriber on the other instance, which reconnects
with Last-Event-ID like EventSource.  Expiry runs throughout
(C<ttl_completed>, C<ttl_failed>).

Faults: C<worker_kills> SIGKILLs of a worker (restarted after up to 2 s);
C<pg_restarts> PostgreSQL restarts (immediate and fast stop, alternately;
the last one fast, so that the table statistics printed survive),
C<pg_long> outages longer than the lease (C<lease> x 3 + 1 s); S3 down
for C<s3_down> seconds (connections refused and reset); S3 answering 503
SlowDown to half of the requests for C<s3_slowdown> seconds; and
throughout, C<s3_noise> of the requests reset or answered 500.  After each
fault ends a probe job measures the recovery: fault end to probe job
completed.

Then faults stop, everything is restarted that is down, the run waits for
every job to end (C<settle> s) and for the janitor and the expiry sweeper
to empty their queues (C<janitor_wait> s), and checks:

    lost        every 202 job ended, or was deleted (by the run or expiry
                after it ended); none vanished unended, none ended twice
    wrong_bytes every stored file's object has the origin's SHA-256 (and
                the recorded sha256 and size); every bundle's object the
                recorded sha256 (checked while running too, before expiry)
    duplicates  no file transferred twice at once by one worker process
                (worker logs); no job ended twice (audit)
    orphans     no object in the bucket that no row references
    counters    every job's completed_files, failed_files, bytes_done,
                bytes_total, sized_files and progress equal what its files
                say (sampled every 3 s while running, and at the end), and
                so do the counters of the final status document each
                poller and SSE subscriber got
    counts      the counts behind QUEUE_FULL / TOO_MANY_JOBS equal
                recomputed values
    leases      no lease (file or bundle) held by a dead worker past its
                lease (sampled while running, and at the end)
    deadlocks   no "deadlock detected" in PostgreSQL's log
    hung        every HTTP answer (SSE: its head) within
                async_dl_postgres_timeout + 1 s
    sse         every SSE subscription of an ended job got its final
                event (completed, failed, canceled or deleted); a job
                deleted while its subscriber was away may answer 404
    owner       every ended job's final event reached its owner's stream
                (GET {p}stream, one per owner, dropped every 2 to 8 s and
                resumed with Last-Event-ID, through every fault), with its
                status

Every list of C<< $r->{violations} >> must be empty.  Figures: jobs,
faults by kind, outcomes, recovery times, requests, dead tuples and index
sizes of the hot tables.

=head1 THE SOAK

C<soak_run(%opt)>: steady initiates (C<rate>/s), status polls (C<polls>/s)
and C<subscribers> SSE subscribers for C<duration> seconds with both TTLs
at C<ttl>; every C<every> seconds it prints the job rows, the expired rows
not yet removed, the objects in the bucket and the janitor's queue.  They
must plateau: the violations are an expiry lag (the oldest expired row
still there) over C<max_lag> seconds, a pause of more than C<max_pause>
seconds between two sweeps that found expired jobs (the workers' logs;
they are due every poll interval, 1 s), and rows or objects growing by
more than C<max_growth> between the second and the last third of the
run.

=cut

use strict;
use warnings;

use AsyncDL::Test;
use AsyncDL::SSE ();
use Digest::SHA ();
use Exporter qw(import);
use Fcntl qw(:flock O_WRONLY O_APPEND O_CREAT);
use File::Path qw(make_path);
use HTTP::Tiny;
use IO::Select;
use IO::Socket::INET;
use JSON::PP;
use List::Util qw(shuffle sum max min first);
use POSIX qw(:sys_wait_h);
use Time::HiRes qw(time sleep);

our @EXPORT_OK = qw(chaos_run soak_run chaos_defaults short_defaults
                    soak_defaults report);

my $JSON = JSON::PP->new->canonical->allow_nonref;
my $API = '/v1/download/';
my $MIB = 1 << 20;

sub chaos_defaults {
    return (
        jobs => 1000, load => 360, seed => int(time) % 100000, clients => 4,
        owners => 10,
        worker_kills => 20, pg_restarts => 5, pg_long => 1,
        s3_down => 30, s3_slowdown => 30, s3_noise => 0.003,
        big_share => 0.03, big_min => 20, big_max => 50, big_rate => '1m',
        big_timeout_share => 0.15,
        multi_share => 0.12, wide_share => 0.03, fail_share => 0.12,
        callback => 0.05,
        cancel => 0.2, delete => 0.1, pause => 0.08, pause_min => 4,
        sse => 0.3,
        ttl_completed => 60, ttl_failed => 30,
        lease => 3, poll_interval => 1, concurrency => 12,
        pg_timeout => 2, settle => 240, janitor_wait => 90,
        say => sub { print STDOUT @_, "\n" },
    );
}

sub short_defaults {
    return (
        chaos_defaults(),
        jobs => 80, load => 45, clients => 2, pause => 0.12, pause_min => 3,
        worker_kills => 2, pg_restarts => 1, pg_long => 0,
        s3_down => 4, s3_slowdown => 6,
        big_share => 0.05, big_min => 6, big_max => 8, big_rate => '1m',
        ttl_completed => 20, ttl_failed => 10,
        settle => 120, janitor_wait => 60,
    );
}

sub soak_defaults {
    return (
        duration => 300, rate => 15, polls => 140, subscribers => 40,
        ttl => 60, every => 15, seed => int(time) % 100000,
        max_lag => 30, max_growth => 1.3, max_pause => 10, pg_timeout => 2,
        say => sub { print STDOUT @_, "\n" },
    );
}

# --- small tools ------------------------------------------------------------

my %O;            # the options of this run
my $DIR;          # $ADL_DIR/chaos
my $T0;           # when the load started (epoch)

sub say_ { $O{say}->(sprintf('[%6.1f] ', time - ($T0 // time)) . join '', @_) }

# rows of a query, tab-separated columns; undef when PostgreSQL is away
# (while running), a die at the end ($MUST: a check that cannot run must
# not pass silently)
our $MUST = 0;

sub rows {
    my ($sql) = @_;
    my $s = adl();
    my $err = "$DIR/psql.err";
    my $pid = open my $fh, '-|';
    die "fork: $!" unless defined $pid;
    if (!$pid) {
        open STDERR, '>', $err;
        { exec 'psql', '-X', '-q', '-At', '-F', "\t", '-v', 'ON_ERROR_STOP=1',
               '-h', '127.0.0.1', '-p', $s->{pg_port}, '-U', 'postgres',
               '-d', 'postgres', '-c', $sql }
        POSIX::_exit(1);
    }
    local $/;
    my $out = <$fh>;
    if (!close $fh) {
        die "chaos: a check's query failed: " . slurp_file($err) . "on: $sql\n"
            if $MUST;
        return undef;
    }
    return [map { [split /\t/, $_, -1] } grep { length } split /\n/, $out // ''];
}

sub row1 { my $r = rows($_[0]); return $r && @$r ? $r->[0] : undef }

sub append_line {
    my ($file, $line) = @_;
    sysopen my $fh, $file, O_WRONLY | O_APPEND | O_CREAT or die "$file: $!";
    syswrite $fh, "$line\n";
    close $fh;
}

sub read_lines {
    my ($file) = @_;
    open my $fh, '<', $file or return ();
    chomp(my @l = <$fh>);
    return @l;
}

sub slurp_file {
    my ($f) = @_;
    open my $fh, '<:raw', $f or return '';
    local $/;
    return scalar(<$fh>) // '';
}

# the counters of a status document, as one string
sub doc_counts {
    my ($d) = @_;
    return join ',', map { $d->{$_} // 'null' }
        qw(completedFiles failedFiles bytesDone bytesTotal progress);
}

sub pct {
    my ($p, @v) = @_;
    return 0 unless @v;
    @v = sort { $a <=> $b } @v;
    return $v[int($p / 100 * $#v + 0.5)];
}

sub pid_alive { my ($pid) = @_; return $pid && kill(0, $pid) ? 1 : 0 }

sub size_bytes {
    my ($s) = @_;
    my %m = (k => 1 << 10, m => 1 << 20, g => 1 << 30);
    return $s =~ /^(\d+)([kmg]?)$/i ? $1 * ($2 ? $m{lc $2} : 1) : $s;
}

# --- the stack ------------------------------------------------------------

sub nginx_config {
    return <<"EOF";
location $API {
    async_dl;
    async_dl_owner \$http_x_user;
    async_dl_max_pending 100000;
    async_dl_max_active_per_owner 100000;
    async_dl_heartbeat 5s;
}
EOF
}

sub worker_settings {
    my (%extra) = @_;
    return (
        ASYNC_DL_S3_ENDPOINT => $O{no_proxy} ? adl()->{s3_endpoint}
                                             : s3_proxy(),
        ASYNC_DL_LEASE => "$O{lease}s",
        ASYNC_DL_POLL_INTERVAL => ($O{poll_interval} * 1000) . 'ms',
        ASYNC_DL_RETRY_BASE => '200ms',
        ASYNC_DL_CONCURRENCY => $O{concurrency} // 32,
        ASYNC_DL_PART_SIZE => '5m',
        ASYNC_DL_CONNECT_TIMEOUT => '3s',
        ASYNC_DL_IDLE_TIMEOUT => '20s',
        ASYNC_DL_SHUTDOWN_GRACE => '5s',
        ASYNC_DL_TTL_COMPLETED => "$O{ttl_completed}s",
        ASYNC_DL_TTL_FAILED => "$O{ttl_failed}s",
        ASYNC_DL_LOG_LEVEL => 'info',
        %extra,
    );
}

# Records status changes and deletions of jobs (the run's own
# instrumentation, not part of the product).
sub install_audit {
    psql(<<'EOF');
SET client_min_messages = warning;
CREATE TABLE IF NOT EXISTS chaos_audit (
    job_id      uuid NOT NULL,
    op          text NOT NULL,
    old_status  text,
    new_status  text,
    old_expires timestamptz,
    at          timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE OR REPLACE FUNCTION chaos_audit_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO chaos_audit (job_id, op, old_status, old_expires)
        VALUES (OLD.id, 'D', OLD.status, OLD.expires_at);
    ELSE
        INSERT INTO chaos_audit (job_id, op, old_status, new_status)
        VALUES (NEW.id, 'U', OLD.status, NEW.status);
    END IF;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS chaos_audit_update ON async_dl_jobs;
CREATE TRIGGER chaos_audit_update AFTER UPDATE OF status ON async_dl_jobs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION chaos_audit_jobs();
DROP TRIGGER IF EXISTS chaos_audit_delete ON async_dl_jobs;
CREATE TRIGGER chaos_audit_delete AFTER DELETE ON async_dl_jobs
    FOR EACH ROW EXECUTE FUNCTION chaos_audit_jobs();
EOF
}

my (@PORTS, %FILES, %SHA_CACHE);

# the origin's files: name => size
sub make_origin_files {
    srand($O{seed});
    for my $i (0 .. 39) {
        my $size = int(1024 + rand(rand() < 0.8 ? 64 * 1024 : 256 * 1024));
        $FILES{"s$i.bin"} = $size;
    }
    for my $i (0 .. 5) {
        $FILES{"m$i.bin"} = int((1 + rand 3) * $MIB);
    }
    for my $i (0 .. 3) {
        my $mib = $O{big_min} + ($O{big_max} - $O{big_min}) * $i / 3;
        $FILES{"b$i.bin"} = int($mib * $MIB) + int(rand 4096);
    }
    origin_file($_, $FILES{$_}) for sort keys %FILES;
}

sub setup_stack {
    my (%opt) = @_;
    my $s = adl();
    $DIR = "$s->{dir}/chaos";
    make_path($DIR);
    s3_proxy() unless $O{no_proxy};
    install_audit();
    my $http = "    async_dl_postgres_timeout $O{pg_timeout}s;\n";
    for my $n (0, 1) {
        start_nginx(nginx_config(), instance => $n, http_config => $http,
                    $O{no_proxy} ? () : (s3_endpoint => '$ADL_S3_PROXY'));
        $PORTS[$n] = nginx_port($n);
    }
    # the second worker uploads every file above a part as a multipart
    # upload (ASYNC_DL_STREAM_PUT=off), whose parts a pause keeps
    start_worker(worker_settings(%{ $opt{worker} || {} },
                                 $_ ? (ASYNC_DL_STREAM_PUT => 'off') : ()))
        for 0, 1;
    return $s;
}

# --- the plan ---------------------------------------------------------------

sub make_plan {
    my $s = adl();
    my ($o, $f) = ($s->{origin}, $s->{flaky});
    srand($O{seed} + 1);
    my @small = grep { /^s/ } sort keys %FILES;
    my @med = grep { /^m/ } sort keys %FILES;
    my @big = grep { /^b/ } sort keys %FILES;
    my @plan;
    for my $n (0 .. $O{jobs} - 1) {
        my %j = (n => $n, owner => 'owner-' . int(rand $O{owners}),
                 inst => int(rand 2));
        my $r = rand;
        my $small = sub { my $x = $small[rand @small];
                          { url => "$o/f/$x?j=$n", kind => 'small' } };
        if ($r < $O{big_share}) {
            my $b = $big[rand @big];
            my $loc = rand() < 2 / 3 ? 'slowchunked' : 'slow';
            $j{files} = [{ url => "$o/$loc/$b?rate=$O{big_rate}&j=$n",
                           kind => "big-$loc" }];
            $j{timeout} = '10s' if rand() < $O{big_timeout_share};
            $j{kind} = "big-$loc";
        } elsif ($r < $O{big_share} + $O{multi_share}) {
            my @fs = map { $small->() } 1 .. 3;
            $fs[1] = { url => "$o/f/$med[rand @med]?j=$n", kind => 'medium' }
                if rand() < 0.5;
            $fs[2] = fail_file($n, 'x') if rand() < 0.2;
            $j{files} = \@fs;
            $j{kind} = 'multi';
        } elsif ($r < $O{big_share} + $O{multi_share} + $O{wide_share}) {
            # many files: the two workers share them and end them at once
            $j{files} = [map { $small->() } 1 .. 6 + int rand 5];
            $j{kind} = 'wide';
        } elsif ($r < $O{big_share} + $O{multi_share} + $O{wide_share}
                      + $O{fail_share}) {
            $j{files} = [fail_file($n, '')];
            $j{kind} = $j{files}[0]{kind};
        } else {
            $j{files} = [$small->()];
            $j{kind} = 'small';
        }
        $j{callback} = "$f/callback/cb$n?fail=1" if rand() < $O{callback};

        my $a = rand;
        my $big = $j{kind} =~ /^big/;
        my $delay = $big ? 2 + rand 15 : rand 1.5;
        if ($a < $O{cancel}) {
            $j{action} = 'cancel';
            $j{delay} = $delay;
        } elsif ($a < $O{cancel} + $O{delete}) {
            my $d = rand;
            $j{action} = $d < 0.4 ? 'delete_after'
                       : $d < 0.7 ? ($j{kind} =~ /^(multi|wide)$/ ? 'delete_bundle'
                                                         : 'delete_after')
                       : 'delete_mid';
            $j{delay} = $delay;
        } elsif ($a < $O{cancel} + $O{delete} + $O{pause}) {
            # paused after the delay, resumed 0.5 to 3 s later
            $j{action} = 'pause';
            $j{delay} = $delay;
        } else {
            $j{action} = 'none';
        }
        $j{sse} = rand() < $O{sse} ? 1 : 0;
        $j{at} = $O{load} * $n / $O{jobs};
        push @plan, \%j;
    }
    return \@plan;
}

# A few big jobs are paused mid-transfer whatever the draw said: a drawn
# pause of a small job usually meets a job already ended (409), and a run
# with no pause at all would prove nothing about pausing.  They start away
# from the storage's faults (a transfer the outage fails before its pause
# would pause nothing): 14 s before one begins to 2 s after it ends.
sub force_pauses {
    my ($plan, $events) = @_;
    srand($O{seed} + 3);
    my $o = adl()->{origin};
    my @big = grep { /^b/ } sort keys %FILES;
    my @storage = map { [$_->[0] - 14, $_->[0] + $_->[2] + 2] }
                  grep { $_->[1] =~ /^s3_/ } @$events;
    my @none = grep { $_->{action} eq 'none' } @$plan;
    my @away = grep { my $at = $_->{at};
                      !grep { $at > $_->[0] && $at < $_->[1] } @storage } @none;
    @none = @away if @away >= ($O{pause_min} // 0);
    for my $i (1 .. min($O{pause_min} // 0, scalar @none)) {
        my $j = splice(@none, int rand @none, 1);
        # sent at 512 KiB/s so that the pause lands mid-transfer (nginx
        # sends a second's worth at once; the client acts at its next
        # poll, up to a second late): every other one on the largest file
        # once its status shows 5.5 MiB, past its first 5 MiB part, so that
        # on the second worker (a multipart upload) it keeps that part
        # (seen in the status, not timed: a loaded machine's claim or client
        # may lag; 40 s is only the backstop); the others within 2.5 s
        my $late = $i % 2 && $FILES{$big[-1]} >= 8 * $MIB;
        my $b = $late ? $big[-1] : $big[rand @big];
        $j->{files} = [{ url => "$o/slow/$b?rate=512k&j=$j->{n}",
                         kind => 'big-slow' }];
        $j->{kind} = 'big-slow';
        delete $j->{timeout};
        $j->{action} = 'pause';
        $j->{delay} = $late ? 40 : 0.5 + rand 2;
        $j->{pause_at_bytes} = int(5.5 * $MIB) if $late;
    }
}

sub fail_file {
    my ($n, $sfx) = @_;
    my $s = adl();
    my ($o, $f) = ($s->{origin}, $s->{flaky});
    my $r = rand;
    my $size = int(64 * 1024 + rand(512 * 1024));
    return { url => "$o/status/404?j=$n$sfx", kind => 'origin-404',
             fails => 1 } if $r < 0.25;
    return { url => "$o/status/500?j=$n$sfx", kind => 'origin-500',
             fails => 1 } if $r < 0.5;
    return { url => "$f/reset/r$n$sfx?size=$size&at=" . int($size / 3),
             kind => 'origin-reset' } if $r < 0.8;
    return { url => "$f/fail/f$n$sfx?n=2&size=$size", kind => 'origin-flaky' };
}

# The SHA-256 the origin serves at $url; undef: it serves no file.
sub expected_sha {
    my ($url) = @_;
    return $SHA_CACHE{$url} if exists $SHA_CACHE{$url};
    my $s = adl();
    my $sha;
    if ($url =~ m{/(?:f|slow|slowchunked|chunked)/([^/?]+)}) {
        my $p = "$s->{dir}/origin/f/$1";
        $sha = -f $p ? file_sha256($p) : undef;
    } elsif ($url =~ m{/(?:reset|fail)/([\w.-]+)\?.*\bsize=(\d+)}) {
        $sha = sha256_hex(flaky_bytes($1, $2));
    }
    return $SHA_CACHE{$url} = $sha;
}

# --- the clients ------------------------------------------------------------

# One client process: initiates its share of the plan when due, then follows
# each job (polls on either instance), cancels and deletes as planned.
# Logs every request (req-K.log: start dt status method instance path) and
# every job (jobs-K.log, one JSON line when it stops following it).
sub client_main {
    my ($k, $plan, $stop_at) = @_;
    srand($O{seed} * 7 + $k);
    my @mine = grep { $_->{n} % $O{clients} == $k } @$plan;
    my @http = map { HTTP::Tiny->new(keep_alive => 1, timeout => 20,
                                      max_redirect => 0) } 0, 1;
    my $rq = "$DIR/req-$k.log";
    my $jl = "$DIR/jobs-$k.log";
    open my $rqh, '>>', $rq or die "$rq: $!";
    $rqh->autoflush(1);
    my %active;

    my $call = sub {
        my ($j, $method, $path, $inst, $body, $extra) = @_;
        my %h = ('X-User' => $j->{owner}, %{ $extra || {} });
        my %o = (headers => \%h);
        if (defined $body) {
            $o{content} = $JSON->encode($body);
            $h{'Content-Type'} = 'application/json';
        }
        my $t = time;
        my $r = $http[$inst]->request($method,
                                      "http://127.0.0.1:$PORTS[$inst]$API$path",
                                      \%o);
        my $dt = time - $t;
        printf $rqh "%.3f %.3f %d %s %d %s\n", $t, $dt, $r->{status}, $method,
               $inst, $path;
        my $json = eval { $JSON->decode($r->{content}) }
            if ($r->{headers}{'content-type'} // '') =~ /json/;
        return ($r->{status}, $json);
    };

    my $finish = sub {
        my ($st) = @_;
        my $rec = { map { $_ => $st->{$_} } grep { $_ ne 'p' } keys %$st };
        append_line($jl, $JSON->encode($rec));
        delete $active{$st->{n}};
    };

    while (1) {
        my $now = time;
        last if $now > $stop_at;
        # initiates that are due
        while (@mine && $T0 + $mine[0]{at} <= $now) {
            my $p = shift @mine;
            $active{$p->{n}} = { n => $p->{n}, kind => $p->{kind},
                                 action => $p->{action}, owner => $p->{owner},
                                 inst => $p->{inst}, phase => 'init',
                                 first => $now, next => $now, p => $p };
        }
        my @due = sort { $a->{next} <=> $b->{next} }
                  grep { $_->{next} <= $now } values %active;
        for my $st (@due) {
            my $p = $st->{p};
            if ($st->{phase} eq 'init') {
                my $body = { files => [map { { url => $_->{url} } }
                                       @{ $p->{files} }] };
                $body->{timeout} = $p->{timeout} if $p->{timeout};
                $body->{callback_url} = $p->{callback} if $p->{callback};
                my ($code, $json) = $call->($st, 'POST', 'initiate',
                    $st->{inst}, $body,
                    { 'Idempotency-Key' => "chaos-$O{seed}-$p->{n}" });
                $st->{init_tries}++;
                if ($code =~ /^20[012]$/ && $json && $json->{jobId}) {
                    $st->{id} = $json->{jobId};
                    $st->{accepted} = $code;
                    $st->{accepted_at} = time;
                    $st->{phase} = 'track';
                    $st->{next} = time + 0.2;
                    $st->{act_at} = time + ($p->{delay} // 0)
                        if $p->{action} =~ /^(cancel|delete_mid|pause)$/;
                    append_line("$DIR/announce.log",
                                "$p->{n} $st->{id} $st->{inst}");
                } elsif ($code =~ /^(5\d\d)$/ && time - $st->{first} < 90) {
                    $st->{init_errors}{$code}++;
                    $st->{next} = time + 0.5;
                } else {
                    $st->{refused} = $code;
                    $st->{refused_code} = $json && $json->{error}
                                        ? $json->{error}{code} : '';
                    $finish->($st);
                }
                next;
            }
            my $id = $st->{id};
            my $inst = int rand 2;
            if ($st->{act_at} && time >= $st->{act_at}) {
                if ($p->{action} eq 'pause') {
                    # pause, then resume; an ended job (409) needs neither
                    my $what = $st->{paused} ? 'resume' : 'pause';
                    my ($code) = $call->($st, 'POST', "$id/$what", $inst);
                    $st->{"${what}_sent"}++;
                    $st->{act_at} = time + 0.5;
                    if ($code == 200 && $what eq 'pause') {
                        $st->{paused} = time;
                        $st->{act_at} = time + 0.5 + rand 2.5;
                    } elsif ($code == 200 || $code == 409) {
                        $st->{resumed} = time if $code == 200;
                        delete $st->{act_at};
                    } elsif ($code == 404) {
                        $st->{gone} = time; $finish->($st); next;
                    }
                } elsif ($p->{action} eq 'cancel') {
                    my ($code) = $call->($st, 'POST', "$id/cancel", $inst);
                    $st->{cancel_sent}++;
                    $st->{cancel_code} = $code;
                    delete $st->{act_at} if $code !~ /^5/;
                    $st->{act_at} = time + 0.5 if $code =~ /^5/;
                    if ($code == 404) { $st->{gone} = time; $finish->($st); next }
                } else {
                    my ($code) = $call->($st, 'DELETE', $id, $inst);
                    $st->{delete_sent}++;
                    $st->{delete_code} = $code;
                    if ($code == 204) { $st->{deleted} = time; $finish->($st); next }
                    if ($code == 404) { $st->{gone} = time; $finish->($st); next }
                    $st->{act_at} = time + 0.5;
                }
            }
            my ($code, $json) = $call->($st, 'GET', "status/$id", $inst);
            if ($code == 404) {
                $st->{gone} = time;
                $finish->($st);
                next;
            }
            if ($code != 200 && $code != 304 || !$json) {
                $st->{poll_errors}{$code}++;
                $st->{next} = time + 1;
                next;
            }
            $st->{status} = $json->{status};
            if ($p->{pause_at_bytes} && !$st->{pause_sent}
                && ($json->{bytesDone} // 0) >= $p->{pause_at_bytes})
            {
                $st->{act_at} = time;           # the forced late pause: now
            }
            if ($json->{status} =~ /^(completed|failed|canceled)$/) {
                $st->{ended} //= time;
                $st->{final_counts} = doc_counts($json);
                my $b = $json->{bundle} ? $json->{bundle}{status} // '' : '';
                my $del = $p->{action} eq 'delete_after'
                       || ($p->{action} eq 'delete_bundle'
                           && ($b =~ /^(pending|building)$/ || $b eq ''
                               || $json->{status} ne 'completed'));
                if ($p->{action} eq 'delete_bundle' && !$del) {
                    $st->{delete_late} = $b;     # the zip was already done
                    $del = 1;
                }
                if ($del) {
                    $st->{delete_bundle_state} = $b if $b;
                    my ($dc) = $call->($st, 'DELETE', $id, $inst);
                    $st->{delete_sent}++;
                    $st->{delete_code} = $dc;
                    if ($dc == 204 || $dc == 404) {
                        $st->{$dc == 204 ? 'deleted' : 'gone'} = time;
                        $finish->($st);
                    } else {
                        $st->{next} = time + 0.5;
                    }
                    next;
                }
                # a completed job's link, now and then
                if ($json->{status} eq 'completed' && rand() < 0.3) {
                    my ($lc) = $call->($st, 'GET', $id, $inst);
                    $st->{link_code} = $lc;
                }
                $finish->($st);
                next;
            }
            $st->{next} = time + 0.3 + rand 0.7;
        }
        last if !@mine && !%active;
        my $next = min(($T0 + ($mine[0] ? $mine[0]{at} : 1e12)),
                       map { $_->{next} } values %active) // time + 0.05;
        my $wait = $next - time;
        sleep($wait > 0.05 ? 0.05 : $wait) if $wait > 0;
    }
    # whatever is still followed at the deadline
    for my $st (values %active) {
        $st->{unfinished_at_stop} = 1;
        $finish->($st);
    }
}

# --- SSE subscribers --------------------------------------------------------

# One process following the announced jobs of the plan marked sse, each on
# the other nginx instance than the one that accepted it, reconnecting with
# Last-Event-ID as EventSource does; and one owner stream (GET {p}stream)
# per owner, opened before any job, alternately on each instance, which
# drops every few seconds and reconnects with its Last-Event-ID, and keeps
# each job's last final event.
# Writes sse.json and owners.json at the end.
sub sse_main {
    my ($plan, $stop_file) = @_;
    my %plan = map { $_->{n} => $_ } @$plan;
    my $announce = "$DIR/announce.log";
    my $pos = 0;
    my %subs;
    my %announced;                          # job id => owner
    my %owners = map { $_->{owner} => 1 } @$plan;
    my $k = 0;
    for my $o (sort keys %owners) {
        $subs{"owner:$o"} = { id => "owner:$o", owner => $o, inst => $k++ % 2,
                              owner_stream => 1, due => time, finals => {} };
    }
    my $rq = "$DIR/req-sse.log";
    open my $rqh, '>>', $rq or die "$rq: $!";
    $rqh->autoflush(1);
    my $stop_seen;
    my $sel = IO::Select->new;

    my $open = sub {
        my ($sub) = @_;
        my $inst = $sub->{inst};
        my $t = time;
        my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                         PeerPort => $PORTS[$inst],
                                         Proto => 'tcp', Timeout => 3);
        if (!$sock) {
            $sub->{due} = time + 1;
            $sub->{connect_errors}++;
            return;
        }
        $sock->blocking(0);
        my $path = $sub->{owner_stream} ? 'stream' : "stream/$sub->{id}";
        my $req = "GET ${API}$path HTTP/1.1\r\nHost: localhost\r\n"
                . "Accept: text/event-stream\r\nX-User: $sub->{owner}\r\n"
                . (defined $sub->{last_id}
                   ? "Last-Event-ID: $sub->{last_id}\r\n" : '')
                . "\r\n";
        syswrite($sock, $req);
        %$sub = (%$sub, sock => $sock, raw => '', body => '', head => 0,
                 chunk_left => 0, need_crlf => 0, started => $t,
                 last_byte => $t, opens => ($sub->{opens} // 0) + 1);
        delete $sub->{due};
        $sel->add($sock);
    };
    my $close = sub {
        my ($sub, $again) = @_;
        if ($sub->{sock}) { $sel->remove($sub->{sock}); close $sub->{sock} }
        delete $sub->{sock};
        if ($again) { $sub->{due} = time + $again; $sub->{reconnects}++ }
        else { $sub->{done} = time }
    };
    my $event = sub {
        my ($sub, $block) = @_;
        my %ev;
        for my $l (split /\n/, $block) {
            next if $l =~ /^:/;
            my ($k, $v) = $l =~ /^([^:]+):\s?(.*)$/ or next;
            $ev{$k} = defined $ev{$k} && $k eq 'data' ? "$ev{$k}\n$v" : $v;
        }
        return unless defined $ev{event};
        $sub->{last_id} = $ev{id} if defined $ev{id};
        $sub->{events}{$ev{event}}++;
        if ($sub->{owner_stream}) {
            # {"jobId":..,"data":..}: a job's final event, kept
            my $d = eval { $JSON->decode($ev{data} // '') };
            if ($d && $d->{jobId}
                && $ev{event} =~ /^(completed|failed|canceled|deleted)$/)
            {
                $sub->{finals}{ $d->{jobId} } = $ev{event};
                $sub->{final_counts}{ $d->{jobId} } = doc_counts($d->{data})
                    if $ev{event} ne 'deleted' && ref $d->{data};
            }
            return;
        }
        if ($ev{event} =~ /^(completed|failed|canceled|deleted)$/) {
            $sub->{final} = $ev{event};
            $sub->{final_at} = time;
            my $d = eval { $JSON->decode($ev{data}) };
            $sub->{final_status} = $d->{status} if $d;
            $sub->{final_counts} = doc_counts($d)
                if $d && $ev{event} ne 'deleted';
            $close->($sub);
        }
    };
    my $input = sub {
        my ($sub) = @_;
        my $n = sysread($sub->{sock}, my $buf, 65536);
        if (!defined $n && ($!{EAGAIN} || $!{EWOULDBLOCK})) { return }
        if (!$n) {
            # the server ended the stream without a final event
            $sub->{eofs}++;
            $close->($sub, 0.3);
            return;
        }
        $sub->{last_byte} = time;
        $sub->{raw} .= $buf;
        if (!$sub->{head}) {
            my $e = index($sub->{raw}, "\r\n\r\n");
            return if $e < 0;
            my $head = substr($sub->{raw}, 0, $e + 4, '');
            my ($code) = $head =~ m{^HTTP/\d\.\d (\d+)};
            $sub->{head} = 1;
            $sub->{status} = $code;
            $sub->{chunked} = $head =~ /^Transfer-Encoding:\s*chunked/mi;
            my $dt = time - $sub->{started};
            printf $rqh "%.3f %.3f %d GET %d stream/%s\n", $sub->{started},
                   $dt, $code // 0, $sub->{inst}, $sub->{id};
            $sub->{codes}{$code // 0}++;
            if (($code // 0) == 404) { $sub->{gone} = 1; $close->($sub); return }
            if (($code // 0) != 200) { $close->($sub, 1); return }
        }
        # de-chunk into body
        if ($sub->{chunked}) {
            while (1) {
                if ($sub->{chunk_left}) {
                    my $k = min(length $sub->{raw}, $sub->{chunk_left});
                    last unless $k;
                    $sub->{body} .= substr($sub->{raw}, 0, $k, '');
                    $sub->{chunk_left} -= $k;
                    $sub->{need_crlf} = 1 unless $sub->{chunk_left};
                    next;
                }
                if ($sub->{need_crlf}) {
                    last if length $sub->{raw} < 2;
                    substr($sub->{raw}, 0, 2, '');
                    $sub->{need_crlf} = 0;
                    next;
                }
                last unless $sub->{raw} =~ s/\A([0-9a-fA-F]+)[^\r\n]*\r\n//;
                $sub->{chunk_left} = hex $1;
                if (!$sub->{chunk_left}) {       # the last chunk
                    $sub->{raw} = '';
                    $sub->{last_chunk} = 1;
                    last;
                }
            }
        } else {
            $sub->{body} .= $sub->{raw};
            $sub->{raw} = '';
        }
        while ($sub->{sock} && $sub->{body} =~ s/\A(.*?)\n\n//s) {
            $event->($sub, $1);
        }
        if ($sub->{sock} && $sub->{last_chunk}) {
            $sub->{eofs}++;
            $close->($sub, 0.3);
        }
    };

    while (1) {
        # newly announced jobs
        if (open my $fh, '<', $announce) {
            seek $fh, $pos, 0;
            while (my $l = <$fh>) {
                last unless $l =~ /\n\z/;
                $pos = tell $fh;
                my ($n, $id, $inst) = split ' ', $l;
                my $p = $plan{$n} or next;
                $announced{$id} = $p->{owner};
                next unless $p->{sse};
                $subs{$id} = { id => $id, n => $n, owner => $p->{owner},
                               inst => 1 - $inst, due => time };
            }
        }
        my $now = time;
        for my $sub (values %subs) {
            next if $sub->{done};
            $open->($sub) if !$sub->{sock} && $sub->{due} && $sub->{due} <= $now;
            # a silent stream (heartbeats are every 5 s) is dead
            if ($sub->{sock} && $now - $sub->{last_byte} > 20) {
                $sub->{stalls}++;
                $close->($sub, 0.3);
            }
            # an owner stream drops every 2 to 8 s and resumes from its
            # Last-Event-ID, whatever the faults are doing meanwhile
            if ($sub->{owner_stream} && $sub->{sock} && $sub->{head}
                && $now - $sub->{started} > ($sub->{drop_after} //= 2 + rand 6))
            {
                delete $sub->{drop_after};
                $sub->{drops}++;
                $close->($sub, 0.2 + rand 1);
            }
        }
        for my $sock ($sel->can_read(0.1)) {
            my $sub = first { $_->{sock} && $_->{sock} == $sock } values %subs;
            $input->($sub) if $sub;
        }
        if (-e $stop_file) {
            $stop_seen //= time;
            my $open_n = grep { !$_->{done} && !$_->{owner_stream} } values %subs;
            # the owner streams: until each has the end of all its jobs
            my $owed = grep {
                my $o = $subs{"owner:$announced{$_}"};
                !($o && $o->{finals}{$_});
            } keys %announced;
            last if (!$open_n && !$owed) || time - $stop_seen > 20;
        }
    }
    my %out;
    for my $sub (values %subs) {
        $out{$sub->{id}} = { map { $_ => $sub->{$_} }
                             grep { !/^(sock|raw|body)$/ } keys %$sub };
    }
    my %own = map { $_ => delete $out{$_} } grep { /^owner:/ } keys %out;
    open my $o, '>', "$DIR/sse.json" or die $!;
    print $o $JSON->encode(\%out);
    close $o;
    open $o, '>', "$DIR/owners.json" or die $!;
    print $o $JSON->encode({ streams => \%own, announced => \%announced });
    close $o;
}

# --- probes: how long until a fault is behind us ----------------------------

my $PROBES = 0;

# A child that initiates one small job as soon as it can and follows it to
# its end: recovery = fault end -> the probe job ended.
sub probe {
    my ($kind, $fault_end) = @_;
    my $k = ++$PROBES;
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    return $pid if $pid;
    my $s = adl();
    my $http = HTTP::Tiny->new(timeout => 20, keep_alive => 1);
    my %h = ('X-User' => 'probe', 'Content-Type' => 'application/json',
             'Idempotency-Key' => "probe-$O{seed}-$k");
    my $body = $JSON->encode({ files => [{ url => "$s->{origin}/f/s0.bin?probe=$k" }] });
    my $url = "http://127.0.0.1:$PORTS[0]$API";
    my %rec = (n => "probe-$k", kind => "probe-$kind", owner => 'probe',
               action => 'none');
    my $log = sub {
        my ($t, $dt, $code, $m, $path) = @_;
        append_line("$DIR/req-probe.log",
                    sprintf("%.3f %.3f %d %s 0 %s", $t, $dt, $code, $m, $path));
    };
    my $until = time + 180;
    while (time < $until) {
        my $t = time;
        my $r = $http->request('POST', "${url}initiate",
                               { headers => \%h, content => $body });
        $log->($t, time - $t, $r->{status}, 'POST', 'initiate');
        if ($r->{status} =~ /^20[012]$/) {
            my $j = eval { $JSON->decode($r->{content}) } || {};
            $rec{id} = $j->{jobId};
            $rec{accepted} = $r->{status};
            $rec{accepted_at} = time;
            last;
        }
        sleep 0.2;
    }
    while ($rec{id} && time < $until) {
        my $t = time;
        my $r = $http->request('GET', "${url}status/$rec{id}",
                               { headers => { 'X-User' => 'probe' } });
        $log->($t, time - $t, $r->{status}, 'GET', "status/$rec{id}");
        if ($r->{status} == 404) { $rec{gone} = time; last }
        my $j = $r->{status} == 200 ? eval { $JSON->decode($r->{content}) } : undef;
        if ($j && $j->{status} =~ /^(completed|failed|canceled)$/) {
            $rec{status} = $j->{status};
            $rec{ended} = time;
            last;
        }
        sleep 0.1;
    }
    $rec{unfinished_at_stop} = 1 unless $rec{ended} || $rec{gone};
    append_line("$DIR/jobs-probe.log", $JSON->encode(\%rec));
    append_line("$DIR/probes.log", join ' ', $kind, $fault_end,
                $rec{ended} // -1, $rec{status} // 'none');
    POSIX::_exit(0);
}

# --- while it runs: bytes, leases, counters ----------------------------------

my (%VERIFIED, %V);

sub violation {
    my ($what, $key, $text) = @_;
    $V{$what}{$key} //= $text;
}

sub obj_path {
    my ($key) = @_;
    my $s = adl();
    return "$s->{dir}/s3/$s->{s3_bucket}/$key._S3rver_object";
}

# The object's SHA-256 and size, both of the file opened once: expiry may
# delete the object meanwhile (the size of its path would then be undef).
sub obj_sha {
    my ($key) = @_;
    open my $fh, '<:raw', obj_path($key) or return undef;
    my $len = -s $fh;
    my $d = Digest::SHA->new(256);
    $d->addfile($fh);
    return ($d->hexdigest, $len);
}

# Where an object differs from the origin's file (kept in
# $DIR/evidence/ for a look).
sub diff_object {
    my ($key, $url, $id) = @_;
    my $s = adl();
    my $obj = obj_path($key);
    make_path("$DIR/evidence");
    (my $copy = $id) =~ s{/}{_}g;
    system('cp', $obj, "$DIR/evidence/$copy") == 0
        or return 'could not keep a copy';
    my $want;
    if ($url =~ m{/(?:f|slow|slowchunked|chunked)/([^/?]+)}) {
        $want = slurp_file("$s->{dir}/origin/f/$1");
    } elsif ($url =~ m{/(?:reset|fail)/([\w.-]+)\?.*\bsize=(\d+)}) {
        $want = flaky_bytes($1, $2);
    }
    return "kept in $DIR/evidence/$copy" unless defined $want;
    my $got = slurp_file("$DIR/evidence/$copy");
    my $at = 0;
    my $n = min(length $got, length $want);
    # first differing byte, 64 KiB at a time then byte by byte
    $at += 65536 while $at + 65536 <= $n
                       && substr($got, $at, 65536) eq substr($want, $at, 65536);
    $at++ while $at < $n && substr($got, $at, 1) eq substr($want, $at, 1);
    my $same_at = index($want, substr($got, $at, 64));
    return sprintf("object %d bytes, origin %d; first difference at byte %d "
                   . "(part size 5 MiB: part %d, +%d); the object's bytes "
                   . "there are the origin's from byte %s; kept in %s",
                   length $got, length $want, $at, int($at / (5 * $MIB)) + 1,
                   $at % (5 * $MIB), $same_at, "$DIR/evidence/$copy");
}

# Every stored file and bundle not checked yet: its object against the
# origin (files) or the recorded sha256 (bundles).
sub verify_objects {
    my $files = rows("SELECT f.job_id, f.idx, coalesce(f.object_key, ''), "
        . "coalesce(f.sha256, ''), coalesce(f.size, -1), f.url, "
        . "(j.expires_at <= now())::int FROM async_dl_files f "
        . "JOIN async_dl_jobs j ON j.id = f.job_id "
        . "WHERE f.status = 'completed'") or return;
    for my $r (@$files) {
        my ($job, $idx, $key, $sha, $size, $url, $expired) = @$r;
        my $id = "$job/$idx";
        next if $VERIFIED{$id};
        if ($key eq '') {
            violation('wrong_bytes', $id, "file $id completed without an object key");
            $VERIFIED{$id} = 1;
            next;
        }
        my ($got, $len) = obj_sha($key);
        next unless defined $got;    # being expired, or checked at the end
        my $want = expected_sha($url);
        $VERIFIED{$id} = 1;
        if (!defined $want) {
            violation('wrong_bytes', $id, "file $id ($url) completed, but the "
                      . "origin serves no file there");
        } elsif ($got ne $want) {
            violation('wrong_bytes', $id, "file $id: object $key has sha256 "
                      . "$got, the origin's is $want ($url); "
                      . diff_object($key, $url, $id));
        } elsif ($sha ne $want) {
            violation('wrong_bytes', $id, "file $id: recorded sha256 $sha, the "
                      . "origin's is $want");
        } elsif ($size != $len) {
            violation('wrong_bytes', $id, "file $id: recorded size $size, the "
                      . "object has $len bytes");
        }
    }
    my $b = rows("SELECT id, coalesce(bundle_key, ''), coalesce(bundle_sha256, ''), "
        . "coalesce(bundle_size, -1) FROM async_dl_jobs "
        . "WHERE bundle_status = 'completed'") or return;
    for my $r (@$b) {
        my ($job, $key, $sha, $size) = @$r;
        next if $VERIFIED{"$job/zip"};
        my ($got, $len) = obj_sha($key);
        next unless defined $got;
        $VERIFIED{"$job/zip"} = 1;
        violation('wrong_bytes', "$job/zip", "bundle of $job: object $key has "
                  . "sha256 $got ($len bytes), recorded $sha ($size bytes)")
            if $got ne $sha || $len != $size;
    }
}

# Leases past their end whose holder is a dead process.  $slack: how long
# after its end a lease may still be there (the next claim takes it).
sub check_leases {
    my ($slack) = @_;
    my $r = rows("SELECT job_id || '/' || idx, coalesce(lease_owner, ''), "
        . "extract(epoch FROM now() - lease_until) FROM async_dl_files "
        . "WHERE status = 'downloading' AND lease_until < now() - "
        . "interval '$slack seconds' UNION ALL "
        . "SELECT id || '/zip', coalesce(bundle_lease_owner, ''), "
        . "extract(epoch FROM now() - bundle_lease_until) FROM async_dl_jobs "
        . "WHERE bundle_status = 'building' AND bundle_lease_until < now() - "
        . "interval '$slack seconds'") or return;
    for my $l (@$r) {
        my ($what, $owner, $past) = @$l;
        my ($pid) = $owner =~ /:(\d+)/;
        next if $pid && pid_alive($pid);
        violation('leases', $what, sprintf("%s: lease of %s (dead) ran out "
                  . "%.1f s ago and nobody took it", $what, $owner, $past));
    }
}

# Jobs whose counters disagree with their files (one statement, one
# snapshot).
my $DRIFT_SQL = <<'EOF';
SELECT j.id, j.status, j.total_files, a.n,
       j.completed_files, a.completed, j.failed_files, a.failed,
       j.bytes_done, a.bytes_done, j.bytes_total, a.bytes_total,
       j.sized_files, a.sized, async_dl_job_progress(j),
       CASE WHEN j.status IN ('completed', 'failed') THEN 100
            WHEN j.status = 'canceled'
                THEN (a.completed * 100 / j.total_files)::integer
            WHEN a.sized = j.total_files AND a.bytes_total > 0
                THEN least(99, a.bytes_done * 100 / a.bytes_total)::integer
            ELSE least(99, (a.completed + a.failed) * 100
                           / j.total_files)::integer END
  FROM async_dl_jobs j
 CROSS JOIN LATERAL (
       SELECT count(*) AS n,
              count(*) FILTER (WHERE f.status = 'completed') AS completed,
              count(*) FILTER (WHERE f.status IN ('failed', 'canceled'))
                  AS failed,
              coalesce(sum(f.bytes_done), 0)::bigint AS bytes_done,
              coalesce(sum(f.size), 0)::bigint AS bytes_total,
              count(f.size) AS sized
         FROM async_dl_files f WHERE f.job_id = j.id) a
EOF

# What each job's status document should say, from its files.
sub recomputed_counts {
    my $r = rows(<<'EOF') or return {};
SELECT j.id, a.completed, a.failed, a.bytes_done,
       CASE WHEN a.sized = j.total_files THEN a.bytes_total::text
            ELSE 'null' END,
       CASE WHEN j.status IN ('completed', 'failed') THEN 100
            WHEN j.status = 'canceled'
                THEN (a.completed * 100 / j.total_files)::integer
            WHEN a.sized = j.total_files AND a.bytes_total > 0
                THEN least(99, a.bytes_done * 100 / a.bytes_total)::integer
            ELSE least(99, (a.completed + a.failed) * 100
                           / j.total_files)::integer END
  FROM async_dl_jobs j
 CROSS JOIN LATERAL (
       SELECT count(*) FILTER (WHERE f.status = 'completed') AS completed,
              count(*) FILTER (WHERE f.status IN ('failed', 'canceled'))
                  AS failed,
              coalesce(sum(f.bytes_done), 0)::bigint AS bytes_done,
              coalesce(sum(f.size), 0)::bigint AS bytes_total,
              count(f.size) AS sized
         FROM async_dl_files f WHERE f.job_id = j.id) a
 WHERE j.status IN ('completed', 'failed', 'canceled')
EOF
    return { map { my ($id, @v) = @$_; ($id => join ',', @v) } @$r };
}

# Every job, running or ended: a job's counters and its files change in one
# transaction, so any snapshot must show them equal.
sub check_counters {
    my $r = rows($DRIFT_SQL) or return;
    my @names = qw(total_files completed_files failed_files bytes_done
                   bytes_total sized_files progress);
    for my $l (@$r) {
        my ($id, $st, @v) = @$l;
        my @bad;
        for my $i (0 .. $#names) {
            my ($got, $want) = @v[2 * $i, 2 * $i + 1];
            push @bad, "$names[$i] $got (files say $want)" if $got != $want;
        }
        violation('counters', $id, "job $id ($st): " . join ', ', @bad) if @bad;
    }
}

# The counts behind QUEUE_FULL and TOO_MANY_JOBS against recomputed ones.
sub check_counts {
    my $have = row1("SELECT to_regproc('async_dl_queued_count') IS NOT NULL, "
                    . "to_regproc('async_dl_owner_counts') IS NOT NULL")
        or return;
    my ($newq, $newo) = map { $_ eq 't' } @$have;
    my $q = row1("SELECT (SELECT "
        . ($newq ? "async_dl_queued_count()"
                 : "coalesce(sum(queued), 0) FROM async_dl_queue_shards")
        . "), (SELECT count(*) FROM async_dl_jobs WHERE status = 'queued')")
        or return;
    violation('counts', 'queued', "queued count $q->[0], queued jobs $q->[1]")
        if $q->[0] != $q->[1];
    my $o = rows("WITH c AS (SELECT owner, active FROM "
        . ($newo ? "async_dl_owner_counts()" : "async_dl_owner_active")
        . "), r AS (SELECT owner, count(*) AS active FROM async_dl_jobs "
        . "WHERE status IN ('queued', 'processing') GROUP BY owner) "
        . "SELECT coalesce(c.owner, r.owner), coalesce(c.active, 0), "
        . "coalesce(r.active, 0) FROM c FULL JOIN r ON r.owner = c.owner "
        . "WHERE coalesce(c.active, 0) <> coalesce(r.active, 0)") or return;
    violation('counts', "owner $_->[0]", "owner $_->[0]: active count "
              . "$_->[1], unfinished jobs $_->[2]") for @$o;
}

# --- the run ------------------------------------------------------------------

sub timeline {
    my $L = $O{load};
    my @ev;
    for my $i (0 .. $O{worker_kills} - 1) {
        my $t = $L * ($i + 0.5 + (rand() - 0.5) * 0.6) / $O{worker_kills};
        push @ev, [$t, 'kill', $i % 2];
    }
    my @major;
    push @major, ['pg', $_ % 2 ? 'fast' : 'immediate', 1 + rand 2, 'restart']
        for 0 .. $O{pg_restarts} - 1;
    push @major, ['pg', 'fast', $O{lease} * 3 + 1, 'long']
        for 1 .. $O{pg_long};
    push @major, ['s3_down', $O{s3_down}] if $O{s3_down};
    push @major, ['s3_slowdown', $O{s3_slowdown}] if $O{s3_slowdown};
    @major = shuffle @major;
    # the last stop is a fast one: an immediate stop discards the statistics
    # (dead tuples) printed at the end
    my @pg = grep { $_->[0] eq 'pg' } @major;
    if (@pg && $pg[-1][1] eq 'immediate') {
        my $fast = first { $_->[1] eq 'fast' && $_->[3] eq 'restart' } @pg;
        ($fast->[1], $pg[-1][1]) = ('immediate', 'fast') if $fast;
    }
    for my $i (0 .. $#major) {
        push @ev, [$O{load} * ($i + 0.5) / @major, @{ $major[$i] }];
    }
    return sort { $a->[0] <=> $b->[0] } @ev;
}

sub noise_rules {
    return () unless $O{s3_noise};
    return ({ fault => 'reset', rate => $O{s3_noise}, match => 'PUT' },
            { fault => 'error500', rate => $O{s3_noise} });
}

my %FAULTS;
my @KIDS;

sub reap { @KIDS = grep { waitpid($_, WNOHANG) == 0 } @KIDS }

sub chaos_run {
    %O = (chaos_defaults(), @_);
    %V = (); %VERIFIED = (); %FAULTS = (); @KIDS = ();
    my $s = adl();              # before the seed: its temporary directory
    srand($O{seed});            # must differ between runs of one seed
    say_("chaos: seed $O{seed}, $O{jobs} jobs over $O{load} s, stack in $s->{dir}");
    make_origin_files();
    setup_stack();
    my $plan = make_plan();
    srand($O{seed} + 2);
    my @events = timeline();
    force_pauses($plan, \@events);
    say_(sprintf "plan: %d faults scheduled: %s", scalar @events,
         join ', ', map { sprintf '%.0fs %s', $_->[0],
                          join ' ', map { /^\d+\.\d+$/ ? sprintf('%.1f', $_) : $_ }
                                    @$_[1 .. $#$_] }
                    grep { $_->[1] ne 'kill' } @events);

    $T0 = time + 1;
    my $stop_at = $T0 + $O{load} + $O{settle};
    my @clients;
    for my $k (0 .. $O{clients} - 1) {
        my $pid = fork // die "fork: $!";
        if (!$pid) { client_main($k, $plan, $stop_at); POSIX::_exit(0) }
        push @clients, $pid;
    }
    my $stop_file = "$DIR/stop";
    my $sse = fork // die "fork: $!";
    if (!$sse) { sse_main($plan, $stop_file); POSIX::_exit(0) }

    s3_faults(noise_rules());
    my (@restart, $s3_end);
    my $pg_up_since = time;
    my $next_check = time + 3;
    my $next_say = time + 15;

    while (time < $T0 + $O{load} || @restart || $s3_end) {
        if (@events && $T0 + $events[0][0] <= time) {
            my $e = shift @events;
            my ($kind, @a) = @$e[1 .. $#$e];
            if ($kind eq 'kill') {
                if (worker_pid($a[0])) {
                    stop_worker('KILL', $a[0], 5);
                    $FAULTS{'worker SIGKILL'}++;
                    push @restart, [time + 0.3 + rand 1.7, $a[0]];
                }
            } elsif ($kind eq 'pg') {
                my ($mode, $dur, $what) = @a;
                say_(sprintf "PostgreSQL: stop -m %s, down %.1f s%s", $mode,
                     $dur, $what eq 'long' ? ' (longer than the lease)' : '');
                pg_stop($mode);
                sleep $dur;
                pg_start();
                $pg_up_since = time;
                $FAULTS{$what eq 'long' ? "PostgreSQL down > lease (fast stop)"
                                        : "PostgreSQL restart ($mode stop)"}++;
                push @KIDS, probe("pg-$what-$mode", time);
            } elsif ($kind eq 's3_down') {
                say_("S3: down for $a[0] s");
                s3_fault('down');
                $s3_end = [time + $a[0], 's3-down'];
                $FAULTS{"S3 down ($a[0] s)"}++;
            } elsif ($kind eq 's3_slowdown') {
                say_("S3: 503 SlowDown to half of the requests for $a[0] s");
                s3_faults({ fault => 'slowdown', rate => 0.5, retry_after => 1 },
                          noise_rules());
                $s3_end = [time + $a[0], 's3-slowdown'];
                $FAULTS{"S3 SlowDown period ($a[0] s)"}++;
            }
        }
        if (@restart && $restart[0][0] <= time) {
            my $r = shift @restart;
            restart_worker($r->[1]);
            push @KIDS, probe('worker', time);
        }
        if ($s3_end && $s3_end->[0] <= time) {
            s3_faults(noise_rules());
            say_('S3: back');
            push @KIDS, probe($s3_end->[1], time);
            undef $s3_end;
        }
        if (time >= $next_check) {
            verify_objects();
            check_leases($O{lease} + $O{poll_interval} + 5)
                if time - $pg_up_since > $O{lease} + $O{poll_interval} + 5;
            check_counters();
            $next_check = time + 3;
        }
        if (time >= $next_say) {
            my $c = rows("SELECT status, count(*) FROM async_dl_jobs GROUP BY 1 ORDER BY 1");
            my @a = read_lines("$DIR/announce.log");
            say_(sprintf "%d accepted; rows: %s; violations so far: %s",
                 scalar @a, $c ? join(' ', map { "$_->[0] $_->[1]" } @$c) : '(db down)',
                 join(' ', map { "$_ " . keys %{ $V{$_} } } sort keys %V) || 'none');
            $next_say = time + 15;
        }
        reap();
        sleep 0.05;
    }

    # --- settle: no more faults, every job to its end -------------------------
    say_('load over: faults off, waiting for every job to end');
    s3_fault('pass');
    pg_start() unless adl()->{pg_running};
    for my $n (0, 1) { restart_worker($n) unless worker_pid($n) }
    while (grep { waitpid($_, WNOHANG) == 0 } @clients) {
        sleep 0.5;
        if (time >= $next_check) {
            verify_objects();
            check_counters();
            $next_check = time + 3;
        }
    }
    my $open;
    wait_until(sub {
        my $r = row1("SELECT count(*) FILTER (WHERE status IN ('queued', "
            . "'processing')), count(*) FILTER (WHERE bundle_status IN "
            . "('pending', 'building')), (SELECT count(*) FROM "
            . "async_dl_deleted_objects), count(*) FILTER (WHERE expires_at "
            . "< now() - interval '5 seconds') FROM async_dl_jobs") or return 0;
        $open = $r;
        return !grep { $_ } @$r;
    }, $O{janitor_wait});
    say_(sprintf "settled: unfinished %d, bundles to build %d, objects to "
         . "delete %d, expired rows %d", @{ $open || [0, 0, 0, 0] });
    verify_objects();
    waitpid($_, 0) for @KIDS;
    append_line($stop_file, 'stop');
    waitpid($sse, 0);
    # a frozen state for the checks: nothing expires or moves any more
    stop_worker('TERM', $_, 20) for 0, 1;
    return finish_checks($plan, $open);
}

# --- the end: checks and figures ---------------------------------------------

sub epoch_of {
    my ($iso) = @_;
    my @t = $iso =~ /^(\d+)-(\d+)-(\d+)T(\d+):(\d+):(\d+)(\.\d+)?Z/ or return undef;
    require Time::Local;
    return Time::Local::timegm($t[5], $t[4], $t[3], $t[2], $t[1] - 1, $t[0])
         + ($t[6] // 0);
}

# Transfers as the worker logs tell them: per file, [process, claimed at,
# ended at, how]; a process's transfers without an end line end when it
# did (SIGKILL).
my %OUTCOMES;
my $TAKEN_UP;      # transfers that went on from a kept upload's parts
my $PAUSE_HANDED;  # transfers handed back because their job was paused

sub worker_transfers {
    my (@logs) = @_;
    %OUTCOMES = ();
    $TAKEN_UP = $PAUSE_HANDED = 0;
    my (%xfer, @attempts);
    my $proc = 0;
    for my $log (@logs) {
        my %open;
        my $last_t;
        my $close_all = sub {
            my ($t, $how) = @_;
            for my $k (keys %open) {
                my $x = delete $open{$k};
                @$x[2, 3] = ($t, $how);
            }
        };
        for my $l (split /\n/, $log) {
            my ($ts) = $l =~ /^(\S+Z) \[/ or next;
            my $t = epoch_of($ts) // next;
            $last_t = $t;
            if ($l =~ /\] worker (\S+) started/) {
                $close_all->($t, 'process ended');
                $proc++;
                next;
            }
            my ($job, $idx, $rest) = $l =~ /job=(\S+) file=(\d+) (.*)$/ or next;
            my $k = "$job/$idx";
            if ($rest =~ /^claimed \(attempt (\d+)\)/) {
                push @attempts, [$k, $1, $ts];
                my $x = [$proc, $t, undef, undef, $1, $ts];
                if (my $o = $open{$k}) {
                    violation('duplicates', "xfer $k $ts",
                              "file $k claimed again (attempt $1) at $ts by "
                              . "the process that still transfers it "
                              . "(attempt $o->[4], claimed $o->[5])");
                }
                push @{ $xfer{$k} }, $x;
                $open{$k} = $x;
            } elsif ($rest =~ /^resuming after \d+ stored part/) {
                $TAKEN_UP++;
            } elsif ($rest =~ /^(stored|failed [A-Z_]+:|handed back|stopped|result not recorded|recording the result failed)/) {
                my $how = $1;
                $PAUSE_HANDED++ if $rest =~ /^handed back: the job was paused/;
                $how =~ s/:$//;
                $OUTCOMES{$how}++;
                $how =~ s/ [A-Z_]+$//;
                if (my $x = delete $open{$k}) { @$x[2, 3] = ($t, $how) }
            }
        }
        $close_all->($last_t // 0, 'process ended');
    }
    # two transfers of one file that both stored it while both ran
    for my $k (sort keys %xfer) {
        my @st = sort { $a->[1] <=> $b->[1] }
                 grep { ($_->[3] // '') eq 'stored' } @{ $xfer{$k} };
        for my $i (1 .. $#st) {
            my ($p, $q) = @st[$i - 1, $i];
            next unless $q->[1] < $p->[2] && $p->[0] != $q->[0];
            violation('duplicates', "xfer2 $k",
                      "file $k stored twice by two transfers that ran at once "
                      . "(claimed $p->[5] and $q->[5])");
        }
    }
    return \@attempts;
}

sub fmt_t { return sprintf '%.1f s', $_[0] - $T0 }

sub finish_checks {
    my ($plan, $open) = @_;
    my $s = adl();
    local $MUST = 1;
    my %F;                                   # figures
    my %plan = map { $_->{n} => $_ } @$plan;

    my @recs = map { $JSON->decode($_) }
               map { read_lines($_) } sort glob("$DIR/jobs-*.log");
    my %acc = map { $_->{id} => $_ } grep { $_->{id} } @recs;
    my $jobs = rows("SELECT id, status, owner, total_files, "
        . "coalesce(bundle_status, ''), coalesce(bundle_key, ''), "
        . "(coalesce(expires_at, 'infinity') <= now())::int FROM async_dl_jobs")
        or die "PostgreSQL does not answer at the end\n";
    my %db = map { $_->[0] => $_ } @$jobs;
    my $files = rows("SELECT job_id, idx, status, coalesce(object_key, ''), "
        . "coalesce(error_code, ''), attempts FROM async_dl_files") || [];
    my $audit = rows("SELECT job_id, op, coalesce(old_status, ''), "
        . "coalesce(new_status, '') FROM chaos_audit ORDER BY at") || [];
    my (%ends, %del, %back);
    for my $a (@$audit) {
        my ($id, $op, $old, $new) = @$a;
        if ($op eq 'D') { $del{$id} = $old; next }
        push @{ $ends{$id} }, $new
            if $old =~ /^(queued|processing)$/
               && $new =~ /^(completed|failed|canceled)$/;
        $back{$id} = "$old -> $new" if $old =~ /^(completed|failed|canceled)$/;
    }

    # every 202 job ended, or was deleted; none twice
    my %outcome;
    for my $id (sort keys %acc) {
        my $r = $acc{$id};
        my $what = "job $id (n=$r->{n} $r->{kind} $r->{owner} $r->{action})";
        if (my $j = $db{$id}) {
            if ($j->[1] =~ /^(queued|processing)$/) {
                violation('lost', $id, "$what: still $j->[1] at the end");
                $outcome{unended}++;
            } else {
                $outcome{$j->[1]}++;
            }
            violation('lost', "404 $id", "$what: answered 404 at "
                      . fmt_t($r->{gone}) . " though its row exists")
                if $r->{gone} && !$j->[6];
        } elsif (exists $del{$id}) {
            my $ended = $del{$id} =~ /^(completed|failed|canceled)$/;
            if ($r->{delete_sent}) { $outcome{'deleted by the run'}++ }
            elsif ($ended) { $outcome{'expired'}++ }
            else {
                violation('lost', $id, "$what: deleted while $del{$id}, not "
                          . "by the run");
                $outcome{vanished}++;
            }
        } else {
            violation('lost', $id, "$what: answered $r->{accepted} at "
                      . fmt_t($r->{accepted_at}) . ", then no row and no "
                      . "deletion ("
                      . ($r->{gone} ? '404 from ' . fmt_t($r->{gone})
                                    : 'never seen again') . ')');
            $outcome{lost}++;
        }
        violation('duplicates', "end $id", "$what ended "
                  . @{ $ends{$id} } . " times: @{ $ends{$id} }")
            if $ends{$id} && @{ $ends{$id} } > 1;
        violation('duplicates', "back $id", "$what went from $back{$id}")
            if $back{$id};
    }
    $F{outcomes} = \%outcome;

    # bytes: everything still stored, now that nothing moves
    verify_objects();
    for my $f (@$files) {
        my ($job, $idx, $st, $key) = @$f;
        next unless $st eq 'completed' && !$VERIFIED{"$job/$idx"};
        next if $db{$job} && $db{$job}[6];        # expired: objects go first
        violation('wrong_bytes', "$job/$idx", "file $job/$idx completed, its "
                  . "object " . ($key || '(no key)') . " is not in the bucket");
    }
    for my $j (@$jobs) {
        next unless $j->[4] eq 'completed' && !$VERIFIED{"$j->[0]/zip"}
                    && !$j->[6];
        violation('wrong_bytes', "$j->[0]/zip", "bundle of $j->[0] completed, "
                  . "its object $j->[5] is not in the bucket");
    }

    # orphans
    my %ref = map { $_->[3] => 1 } grep { $_->[3] ne '' } @$files;
    $ref{$_->[5]} = 1 for grep { $_->[5] ne '' } @$jobs;
    my @keys = s3_keys();
    $F{objects} = scalar @keys;
    for my $k (@keys) {
        next if $ref{$k};
        my ($job) = split m{/}, $k;
        my $r = $acc{$job};
        my $why = $db{$job} ? "its job exists ($db{$job}[1])"
                : exists $del{$job} ? "its job was deleted ("
                    . ($r && $r->{delete_sent} ? 'DELETE by the run'
                                               : 'expired')
                    . ", was $del{$job})"
                : 'no job of that id was ever seen';
        $why .= ", plan n=$r->{n} $r->{kind} action $r->{action}" if $r;
        violation('orphans', $k, "object $k: no row references it; $why");
    }

    # counters (ended jobs), and what the final documents said (the last
    # status poll, the SSE final event)
    check_counters();
    my $want = recomputed_counts();
    my $fields = 'completedFiles,failedFiles,bytesDone,bytesTotal,progress';
    for my $r (values %acc) {
        next unless $r->{final_counts} && $want->{$r->{id}};
        violation('counters', "doc $r->{id}", "job $r->{id}: its final status "
                  . "document said $fields = $r->{final_counts}, its files "
                  . "say $want->{$r->{id}}")
            if $r->{final_counts} ne $want->{$r->{id}};
    }
    my $ssej = eval { local $/; open my $fh, '<', "$DIR/sse.json" or die;
                      $JSON->decode(<$fh>) } || {};
    for my $id (sort keys %$ssej) {
        my $c = $ssej->{$id}{final_counts};
        next unless $c && $want->{$id} && $c ne $want->{$id};
        violation('counters', "sse $id", "job $id: its final SSE event said "
                  . "$fields = $c, its files say $want->{$id}");
    }
    check_counts();

    # leases: nothing may still be held now that the workers are stopped
    check_leases(0);

    # deadlocks
    my @pg = split /\n/, pg_log();
    for my $i (0 .. $#pg) {
        next unless $pg[$i] =~ /deadlock detected/;
        violation('deadlocks', "pg $i", join "\n      ",
                  grep { defined } @pg[$i .. min($i + 5, $#pg)]);
    }

    # hung requests
    my $limit = $O{pg_timeout} + 1;
    my (@dt, %codes);
    for my $f (sort glob("$DIR/req-*.log")) {
        for my $l (read_lines($f)) {
            my ($t, $dt, $code, $m, $inst, $path) = split ' ', $l;
            push @dt, $dt;
            $codes{$code}++;
            violation('hung', "$t $m $path", sprintf "%s %s on nginx %d at "
                      . "%s: %d after %.2f s", $m, $path, $inst, fmt_t($t),
                      $code, $dt)
                if $dt > $limit;
        }
    }
    $F{requests} = { n => scalar @dt, codes => \%codes, p50 => pct(50, @dt),
                     p99 => pct(99, @dt), max => max(@dt, 0) };

    # SSE
    my $sse = eval { local $/; open my $fh, '<', "$DIR/sse.json" or die;
                     $JSON->decode(<$fh>) } || {};
    my %sf = (subscriptions => scalar keys %$sse);
    for my $id (sort keys %$sse) {
        my $x = $sse->{$id};
        $sf{reconnects} += $x->{reconnects} // 0;
        $sf{stalls} += $x->{stalls} // 0;
        $sf{'final events'}++ if $x->{final};
        $sf{'404 (job gone)'}++ if $x->{gone} && !$x->{final};
        my $j = $db{$id};
        my $ended = ($j && $j->[1] =~ /^(completed|failed|canceled)$/)
                 || $ends{$id} || exists $del{$id};
        next unless $ended;
        if (!$x->{final} && !$x->{gone}) {
            violation('sse', $id, "stream of job $id got no final event ("
                      . ($j ? "job $j->[1]" : "job deleted, was "
                                              . ($del{$id} // '?'))
                      . "); events " . $JSON->encode($x->{events} || {})
                      . ", opens " . ($x->{opens} // 0) . ", stalls "
                      . ($x->{stalls} // 0) . ', answers '
                      . $JSON->encode($x->{codes} || {}));
        } elsif ($x->{final} && $x->{final} ne 'deleted' && $j
                 && $x->{final} ne $j->[1]) {
            violation('sse', $id, "stream of job $id ended with '$x->{final}' "
                      . "but the job is $j->[1]");
        }
    }
    $F{sse} = \%sf;

    # the owner streams: each announced job's end, on its owner's stream
    my $ow = eval { local $/; open my $fh, '<', "$DIR/owners.json" or die;
                    $JSON->decode(<$fh>) } || {};
    my %of = (streams => scalar keys %{ $ow->{streams} || {} });
    for my $st (values %{ $ow->{streams} || {} }) {
        $of{opens} += $st->{opens} // 0;
        $of{reconnects} += $st->{reconnects} // 0;
        $of{stalls} += $st->{stalls} // 0;
        $of{drops} += $st->{drops} // 0;
        $of{'final events'} += scalar keys %{ $st->{finals} || {} };
    }
    for my $id (sort keys %{ $ow->{announced} || {} }) {
        my $owner = $ow->{announced}{$id};
        my $st = $ow->{streams}{"owner:$owner"} || {};
        my $fin = $st->{finals}{$id};
        my $j = $db{$id};
        my $ended = ($j && $j->[1] =~ /^(completed|failed|canceled)$/)
                 || $ends{$id} || exists $del{$id};
        next unless $ended;
        if (!$fin) {
            violation('owner', $id, "owner stream of $owner: no final event "
                      . "for job $id (" . ($j ? "job $j->[1]" : 'deleted')
                      . "); opens " . ($st->{opens} // 0) . ', answers '
                      . $JSON->encode($st->{codes} || {}));
        } elsif ($fin ne 'deleted' && $j && $fin ne $j->[1]) {
            violation('owner', $id, "owner stream of $owner: job $id ended "
                      . "'$fin' but the job is $j->[1]");
        } elsif (my $c = $st->{final_counts}{$id}) {
            violation('counters', "owner $id", "owner stream: job ${id}'s "
                      . "final event said $c, its files say $want->{$id}")
                if $want->{$id} && $c ne $want->{$id};
        }
    }
    $F{owners} = \%of;

    # the worker logs: transfers of one file at once, attempts
    my @wlogs = map { slurp_file($_->{log}) } @{ $s->{workers} || [] };
    my $att = worker_transfers(@wlogs);
    my $maxatt = 5;
    my @over = grep { $_->[1] > $maxatt } @$att;
    $F{worker} = {
        'claims' => scalar @$att,
        'claims over ASYNC_DL_MAX_ATTEMPTS' => scalar @over,
        'highest attempt' => max(0, map { $_->[1] } @$att),
        '"not recorded" at exit' => scalar(() = join('', @wlogs)
                                            =~ /transfer\(s\) not recorded/g),
    };
    $F{transfers} = { %OUTCOMES };

    # files by error
    my %err;
    $err{$_->[4] || $_->[2]}++ for @$files;
    $F{files} = \%err;

    # faults
    my $pc = s3_fault_counts();
    my %faults = %FAULTS;
    $faults{"S3 $_ (requests)"} = $pc->{$_}
        for grep { !/^down-(start|end)$/ } keys %$pc;
    $faults{"origin $_ (files)"}++
        for map { $_->{kind} } grep { $_->{kind} =~ /^origin-/ }
            map { @{ $plan{$_->{n}}{files} } }
            grep { $_->{n} =~ /^\d+$/ } values %acc;
    $F{faults} = \%faults;

    # recovery
    my %rec;
    for my $l (read_lines("$DIR/probes.log")) {
        my ($kind, $end, $done, $st) = split ' ', $l;
        my $t = $done < 0 ? 1e9 : $done - $end;
        $rec{$kind} = $t if !defined $rec{$kind} || $t > $rec{$kind};
    }
    $F{recovery} = \%rec;
    $F{'worst recovery'} = max(0, values %rec);

    # jobs
    my %kinds;
    $kinds{$_->{kind}}++ for grep { $_->{id} } @recs;
    $F{jobs} = {
        planned => scalar @$plan,
        accepted => scalar(grep { $_->{id} && $_->{n} =~ /^\d/ } @recs),
        probes => scalar(grep { $_->{id} && $_->{n} =~ /^probe/ } @recs),
        refused => scalar(grep { $_->{refused} } @recs),
        kinds => \%kinds,
        'cancels sent' => scalar(grep { $_->{cancel_sent} } @recs),
        'paused, then resumed' => scalar(grep { $_->{paused} && $_->{resumed} }
                                          @recs),
        'transfers handed back on a pause' => $PAUSE_HANDED,
        'kept parts taken up' => $TAKEN_UP,
        'deletes sent' => scalar(grep { $_->{delete_sent} } @recs),
        'deleted while the zip was pending/building'
            => scalar(grep { $_->{delete_bundle_state} } @recs),
    };
    $F{settle} = $open;

    # the hot tables after the run
    $F{tables} = rows("SELECT relname, n_live_tup, n_dead_tup, "
        . "pg_relation_size(relid), pg_indexes_size(relid), n_tup_upd, "
        . "n_tup_hot_upd "
        . "FROM pg_stat_user_tables WHERE relname LIKE 'async_dl_%' "
        . "ORDER BY relname") || [];
    $F{indexes} = rows("SELECT indexrelname, pg_relation_size(indexrelid) "
        . "FROM pg_stat_user_indexes WHERE relname LIKE 'async_dl_%' "
        . "ORDER BY relname, indexrelname") || [];

    my %viol = map { my $c = $_; $c => [map { $V{$c}{$_} } sort keys %{ $V{$c} || {} }] }
               qw(lost wrong_bytes duplicates orphans counters counts leases
                  deadlocks hung sse owner);
    return { violations => \%viol, figures => \%F, dir => $DIR,
             seed => $O{seed} };
}

my @ORDER = (
    [lost => 'lost (202 not ended / vanished)'],
    [wrong_bytes => 'wrong bytes'],
    [duplicates => 'duplicates'],
    [orphans => 'orphans'],
    [counters => 'counter drift'],
    [counts => 'count drift (limits)'],
    [leases => 'stale leases'],
    [deadlocks => 'deadlocks'],
    [hung => 'hung requests'],
    [sse => 'SSE without final event'],
    [owner => 'owner stream without a job\'s end'],
);

sub human {
    my ($n) = @_;
    return $n >= $MIB ? sprintf('%.1f MiB', $n / $MIB)
         : $n >= 1024 ? sprintf('%.0f KiB', $n / 1024) : "$n B";
}

# The report as lines; $max: offending ids printed per invariant.
sub report {
    my ($r, $max) = @_;
    $max //= 40;
    my $F = $r->{figures};
    my @out;
    push @out, "== invariants (each must be 0)";
    for my $o (@ORDER) {
        push @out, sprintf "  %-32s %d", $o->[1], scalar @{ $r->{violations}{$o->[0]} };
    }
    push @out, "== jobs";
    my $j = $F->{jobs};
    push @out, sprintf "  planned %d, accepted %d, probes %d, refused %d; "
        . "cancels sent %d, deletes sent %d (%d while the zip was pending "
        . "or building), paused then resumed %d (transfers handed back on a "
        . "pause %d, kept parts taken up %d)",
        $j->{planned},
        $j->{accepted}, $j->{probes}, $j->{refused}, $j->{'cancels sent'},
        $j->{'deletes sent'},
        $j->{'deleted while the zip was pending/building'},
        $j->{'paused, then resumed'} // 0,
        $j->{'transfers handed back on a pause'} // 0,
        $j->{'kept parts taken up'} // 0;
    push @out, '  kinds: ' . join ', ', map { "$_ $j->{kinds}{$_}" }
        sort keys %{ $j->{kinds} };
    push @out, '  outcomes: ' . join ', ', map { "$_ $F->{outcomes}{$_}" }
        sort keys %{ $F->{outcomes} };
    push @out, '  transfers ended (worker logs): ' . join ', ',
        map { "$_ $F->{transfers}{$_}" } sort keys %{ $F->{transfers} };
    push @out, '  files still recorded, by status/error: ' . join ', ',
        map { "$_ $F->{files}{$_}" } sort keys %{ $F->{files} };
    push @out, "== faults";
    push @out, map { sprintf "  %-40s %d", $_, $F->{faults}{$_} }
        sort keys %{ $F->{faults} };
    push @out, "== recovery (fault end -> a new job completed)";
    push @out, map { sprintf "  %-28s %s", $_, $F->{recovery}{$_} >= 1e9
                        ? 'never' : sprintf('%.1f s', $F->{recovery}{$_}) }
        sort keys %{ $F->{recovery} };
    push @out, sprintf "  %-28s %s", 'worst', $F->{'worst recovery'} >= 1e9
        ? 'never' : sprintf('%.1f s', $F->{'worst recovery'});
    my $q = $F->{requests};
    push @out, "== requests";
    push @out, sprintf "  %d, p50 %.1f ms, p99 %.1f ms, max %.2f s; by status: %s",
        $q->{n}, $q->{p50} * 1000, $q->{p99} * 1000, $q->{max},
        join ', ', map { "$_ $q->{codes}{$_}" } sort keys %{ $q->{codes} };
    push @out, '  SSE: ' . join ', ', map { "$_ $F->{sse}{$_}" }
        sort keys %{ $F->{sse} };
    push @out, '  owner streams: ' . join ', ', map { "$_ $F->{owners}{$_}" }
        sort keys %{ $F->{owners} || {} };
    push @out, '  worker: ' . join ', ', map { "$_ $F->{worker}{$_}" }
        sort keys %{ $F->{worker} };
    push @out, sprintf "  bucket objects at the end: %d", $F->{objects};
    push @out, "== hot tables after the run (statistics since the last "
             . "immediate stop)";
    push @out, sprintf "  %-28s %8s %8s %10s %10s %9s %9s", 'table', 'live',
        'dead', 'heap', 'indexes', 'updates', 'HOT';
    push @out, map { sprintf "  %-28s %8d %8d %10s %10s %9d %9d", $_->[0],
                     $_->[1], $_->[2], human($_->[3]), human($_->[4]),
                     $_->[5], $_->[6] }
        @{ $F->{tables} };
    push @out, map { sprintf "    %-40s %10s", $_->[0], human($_->[1]) }
        @{ $F->{indexes} };
    my $any = 0;
    for my $o (@ORDER) {
        my @v = @{ $r->{violations}{$o->[0]} } or next;
        $any = 1;
        push @out, "== $o->[1]: " . @v;
        push @out, map { "  $_" } @v[0 .. min($#v, $max - 1)];
        push @out, "  ... and " . (@v - $max) . " more" if @v > $max;
    }
    return @out;
}

# --- the expiry soak (defect 20) -----------------------------------------------

# A paced loop: calls $fn about $rate times a second until $until.
sub paced {
    my ($rate, $until, $fn) = @_;
    my $n = 0;
    my $start = time;
    while (time < $until) {
        $fn->();
        $n++;
        my $wait = $start + $n / $rate - time;
        sleep $wait if $wait > 0;
    }
}

sub soak_stats {
    my ($name, %c) = @_;
    open my $fh, '>', "$DIR/stats-$name.tmp" or return;
    print $fh $JSON->encode(\%c);
    close $fh;
    rename "$DIR/stats-$name.tmp", "$DIR/stats-$name.json";
}

sub recent_ids {
    my ($pos, $ids) = @_;
    open my $fh, '<', "$DIR/soak-ids.log" or return;
    seek $fh, $$pos, 0;
    while (my $l = <$fh>) {
        last unless $l =~ /\n\z/;
        $$pos = tell $fh;
        chomp $l;
        push @$ids, [split ' ', $l];
    }
    splice @$ids, 0, @$ids - 3000 if @$ids > 3000;
}

sub soak_load {
    my ($kind, $k, $until) = @_;
    my $s = adl();
    srand($O{seed} * 13 + $k);
    my @http = map { HTTP::Tiny->new(keep_alive => 1, timeout => 20) } 0, 1;
    my @small = grep { /^s/ } sort keys %FILES;
    my %c;
    my $last = 0;
    my $log = "$DIR/req-$kind-$k.log";
    open my $rqh, '>>', $log or die $!;
    $rqh->autoflush(1);
    my $req = sub {
        my ($inst, $m, $path, $owner, $body) = @_;
        my %h = ('X-User' => $owner);
        my %o = (headers => \%h);
        if ($body) { $h{'Content-Type'} = 'application/json';
                     $o{content} = $JSON->encode($body) }
        my $t = time;
        my $r = $http[$inst]->request($m, "http://127.0.0.1:$PORTS[$inst]$API$path", \%o);
        my $dt = time - $t;
        # only the slow ones: the soak makes too many for a full log
        printf $rqh "%.3f %.3f %d %s %d %s\n", $t, $dt, $r->{status}, $m,
               $inst, $path if $dt > $O{pg_timeout} + 1;
        $c{$r->{status}}++;
        $c{n}++;
        $c{slow}++ if $dt > $O{pg_timeout} + 1;
        if (time - $last > 1) { soak_stats("$kind-$k", %c); $last = time }
        return $r;
    };
    if ($kind eq 'init') {
        my $n = 0;
        paced($O{rate} / $O{initiators}, $until, sub {
            my $owner = 'owner-' . int(rand 10);
            my @f = map { { url => "$s->{origin}/f/$small[rand @small]?k=$k-$n" } }
                    1 .. (rand() < 0.1 ? 3 : 1);
            $n++;
            my $inst = int rand 2;
            my $r = $req->($inst, 'POST', 'initiate', $owner, { files => \@f });
            if ($r->{status} == 202) {
                my $id = eval { $JSON->decode($r->{content})->{jobId} } or return;
                append_line("$DIR/soak-ids.log", "$id $owner");
            }
        });
    } else {
        my ($pos, @ids) = (0);
        paced($O{polls} / $O{pollers}, $until, sub {
            recent_ids(\$pos, \@ids) if !@ids || rand() < 0.05;
            return unless @ids;
            # mostly recent jobs, as clients follow what they started
            my $i = @ids - 1 - int(rand(rand() < 0.8 ? min(200, scalar @ids)
                                                     : scalar @ids));
            my ($id, $owner) = @{ $ids[$i] };
            $req->(int rand 2, 'GET', "status/$id", $owner);
        });
    }
    soak_stats("$kind-$k", %c);
}

# subscribers: each follows a recent job to its end, then another
sub soak_sse {
    my ($until) = @_;
    my ($pos, @ids) = (0);
    my @subs;
    my %c;
    my $last = 0;
    while (time < $until) {
        recent_ids(\$pos, \@ids);
        while (@subs < $O{subscribers} && @ids) {
            my ($id, $owner) = @{ $ids[-1 - int rand min(50, scalar @ids)] };
            my $x = eval { AsyncDL::SSE::sse_open("${API}stream/$id",
                               { 'X-User' => $owner },
                               port => $PORTS[int rand 2], timeout => 5) };
            $c{opened}++;
            if (!$x || $x->{status} != 200) { $c{refused}++; last }
            push @subs, $x;
        }
        my @keep;
        for my $x (@subs) {
            my $ev = $x->next_event(0.001);
            if ($ev && ($ev->{event} // '') =~ /^(completed|failed|canceled|deleted)$/) {
                $c{final}++;
                $x->close;
                next;
            }
            if (!$ev && ($x->{eof} || $x->{last_chunk})) {
                $c{'closed without final'}++;
                $x->close;
                next;
            }
            push @keep, $x;
        }
        @subs = @keep;
        if (time - $last > 1) { soak_stats('sse', %c); $last = time }
        sleep 0.05;
    }
    soak_stats('sse', %c);
}

sub count_objects {
    my $s = adl();
    my $n = 0;
    my @todo = ("$s->{dir}/s3/$s->{s3_bucket}");
    while (my $d = shift @todo) {
        opendir my $dh, $d or next;
        for my $e (readdir $dh) {
            next if $e eq '.' || $e eq '..';
            if (-d "$d/$e") { push @todo, "$d/$e" }
            elsif ($e =~ /\._S3rver_object$/) { $n++ }
        }
    }
    return $n;
}

sub soak_run {
    %O = (chaos_defaults(), soak_defaults(), initiators => 2, pollers => 2,
          @_);
    $O{ttl_completed} = $O{ttl_failed} = $O{ttl};
    $O{no_proxy} = 1;
    $O{lease} = 10;
    my $s = adl();              # before the seed, as in chaos_run
    srand($O{seed});
    $T0 = time;
    say_("soak: $O{rate} initiates/s, $O{polls} polls/s, $O{subscribers} "
         . "SSE subscribers, TTL $O{ttl} s, for $O{duration} s; stack in $s->{dir}");
    %FILES = ();
    for my $i (0 .. 19) { $FILES{"s$i.bin"} = 1024 + int rand 32768 }
    origin_file($_, $FILES{$_}) for sort keys %FILES;
    setup_stack();
    $T0 = time;
    my $until = $T0 + $O{duration};
    my @kids;
    for my $spec ((map { ['init', $_] } 1 .. $O{initiators}),
                  (map { ['poll', $_] } 1 .. $O{pollers}), ['sse', 0]) {
        my $pid = fork // die "fork: $!";
        if (!$pid) {
            $spec->[0] eq 'sse' ? soak_sse($until) : soak_load(@$spec, $until);
            POSIX::_exit(0);
        }
        push @kids, $pid;
    }
    my @samples;
    say_(sprintf "%7s %7s %7s %8s %8s %7s %9s %7s %7s", 'time', 'jobs',
         'expired', 'oldest', 'objects', 'to-del', 'init/s', 'poll/s', 'sse');
    my ($prev_t, %prev) = (time);
    while (time < $until + 1) {
        my $next = time + $O{every};
        my $r = row1("SELECT count(*), count(*) FILTER (WHERE expires_at <= now()), "
            . "coalesce(extract(epoch FROM now() - min(expires_at) FILTER "
            . "(WHERE expires_at <= now())), 0), (SELECT count(*) FROM "
            . "async_dl_deleted_objects) FROM async_dl_jobs");
        my $objects = count_objects();
        my %st;
        for my $f (glob "$DIR/stats-*.json") {
            my $c = eval { local $/; open my $fh, '<', $f or die; $JSON->decode(<$fh>) } or next;
            my ($kind) = $f =~ /stats-(\w+)/;
            $st{$kind} += $c->{n} // 0;
            $st{sse_final} += $c->{final} // 0 if $kind eq 'sse';
            $st{slow} += $c->{slow} // 0;
        }
        my $dt = time - $prev_t;
        my $smp = { t => time - $T0, jobs => $r ? $r->[0] : -1,
                    expired => $r ? $r->[1] : -1, lag => $r ? $r->[2] : -1,
                    objects => $objects, todel => $r ? $r->[3] : -1,
                    init => (($st{init} // 0) - ($prev{init} // 0)) / $dt,
                    poll => (($st{poll} // 0) - ($prev{poll} // 0)) / $dt,
                    sse => $st{sse_final} // 0, slow => $st{slow} // 0 };
        push @samples, $smp;
        say_(sprintf "%6.0fs %7d %7d %7.1fs %8d %7d %9.1f %7.1f %7d",
             @$smp{qw(t jobs expired lag objects todel init poll sse)});
        ($prev_t, %prev) = (time, %st);
        my $w = $next - time;
        sleep $w if $w > 0;
    }
    waitpid($_, 0) for @kids;

    # verdict: the tables plateau, expiry never stalls
    my @v;
    my $n = @samples;
    my @mid = @samples[int($n / 3) .. int(2 * $n / 3) - 1];
    my @end = @samples[int(2 * $n / 3) .. $n - 1];
    my $avg = sub { my ($k, @s) = @_; @s ? sum(map { $_->{$k} } @s) / @s : 0 };
    my %growth;
    for my $k (qw(jobs objects)) {
        my ($m, $e) = ($avg->($k, @mid), $avg->($k, @end));
        $growth{$k} = $m ? $e / $m : 0;
        push @v, sprintf("%s grow: %.0f on average in the middle third, %.0f "
                         . "in the last (x%.2f)", $k, $m, $e, $growth{$k})
            if $m && $e / $m > $O{max_growth};
    }
    my $worst = (sort { $b->{lag} <=> $a->{lag} } @samples)[0];
    push @v, sprintf("expiry stalled: the oldest expired job was %.0f s past "
                     . "its expiresAt at %.0f s (%d expired rows, %d objects)",
                     $worst->{lag}, $worst->{t}, $worst->{expired},
                     $worst->{objects})
        if $worst && $worst->{lag} > $O{max_lag};
    my $slow = $samples[-1]{slow} // 0;
    push @v, "$slow request(s) answered after more than "
             . ($O{pg_timeout} + 1) . " s" if $slow;
    # the sweeps, once a poll interval while something is expired: the
    # longest pauses between two (either worker; one sweeps at a time)
    my @wl = map { slurp_file($_->{log}) } @{ $s->{workers} || [] };
    my @at = sort { $a <=> $b } grep { defined }
             map { epoch_of($_) } join("\n", @wl)
                 =~ /^(\S+Z) \[\w+\] expiry: (?:removed|\d+ expired)/mg;
    my $from = $T0 + $O{ttl} + 5;
    @at = grep { $_ >= $from && $_ <= $until } @at;
    my @gaps = sort { $b->[0] <=> $a->[0] }
               map { [$at[$_] - $at[$_ - 1], $at[$_ - 1] - $T0] } 1 .. $#at;
    push @v, sprintf("expiry paused for %.1f s from %.0f s on (sweeps are "
                     . "due every %g s)", $gaps[0][0], $gaps[0][1],
                     $O{poll_interval})
        if @gaps && $gaps[0][0] > $O{max_pause};
    return { violations => \@v, samples => \@samples, growth => \%growth,
             worst_lag => $worst ? $worst->{lag} : 0, sweeps => scalar @at,
             pauses => [@gaps[0 .. min(2, $#gaps)]], seed => $O{seed} };
}

sub soak_report {
    my ($r) = @_;
    my @out = ('== soak');
    my $s = $r->{samples};
    push @out, sprintf "  jobs rows: max %d, last %d; objects: max %d, last %d",
        max(map { $_->{jobs} } @$s), $s->[-1]{jobs},
        max(map { $_->{objects} } @$s), $s->[-1]{objects};
    push @out, sprintf "  growth last third / middle third: jobs x%.2f, "
        . "objects x%.2f", $r->{growth}{jobs} // 0, $r->{growth}{objects} // 0;
    push @out, sprintf "  worst expiry lag %.1f s; sweeps that found expired "
        . "jobs: %d; longest pauses between them: %s", $r->{worst_lag},
        $r->{sweeps}, join(', ', map { sprintf '%.1f s (at %.0f s)', @$_ }
                                 @{ $r->{pauses} || [] }) || 'none';
    push @out, '== soak verdict: ' . (@{ $r->{violations} }
        ? scalar(@{ $r->{violations} }) . ' problem(s)' : 'plateau, no stall');
    push @out, map { "  $_" } @{ $r->{violations} };
    return @out;
}

1;
