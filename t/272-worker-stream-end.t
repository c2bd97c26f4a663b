# The streamed PUT (the origin's Content-Length above a part, at most
# 5 GiB) around the end of its download, pinned before the transfer code
# is refactored:
#
# a. unpause on end: the PUT has taken every byte it had and waits for the
#    origin (paused) when the download ends with its last few KiB (fewer
#    than the 128 KiB that unpause it while the download runs): the end
#    itself must unpause it.  Stored once, with the right bytes, and no
#    watchdog: a PUT waiting for its origin, longer than the idle timeout,
#    is not a stalled storage.
# b. a cancel while the streamed PUT has every byte in flight (the
#    download is done, the storage has not answered): nothing is left in
#    the bucket, whether the storage stored the object before the cancel
#    (its answer held back) or only after it (the request held back, so
#    the janitor's delete at the cancel found nothing).  The object is not
#    recorded (the file is canceled): it is queued for deletion once the
#    PUT answered, and the janitor deletes it.
#    (A PUT answered 2xx before its download is marked done cannot be
#    forced: libcurl reports a PUT done only once its whole body is sent,
#    and the download's done callback runs in the same socket_action as
#    its last write; so this pins the cancel instead.)
# c. the origin starts over during a stream: reset mid-body, then the
#    resume's Range ignored (200 with the whole body): the PUT of what was
#    sent before is cancelled (not failed, not watched), a new one streams
#    the file from byte 0, and the object has the right bytes.
#
# The origin of a and c is a small server here (exact control of when
# which bytes go); b goes through the S3 fault proxy.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use POSIX ();
use Socket qw(SOL_SOCKET SO_LINGER);
use Time::HiRes qw(time sleep);

my $s = adl();
my $o = $s->{origin};
my $KiB = 1024;
my $MiB = 1024 * $KiB;

sub random_bytes {
    my ($n) = @_;
    open my $fh, '<:raw', '/dev/urandom' or die $!;
    read($fh, my $b, $n) == $n or die "urandom: $!";
    return $b;
}

my %body = (
    a1 => random_bytes(6 * $MiB),
    a2 => random_bytes(6 * $MiB + 100 * $KiB),
    c  => random_bytes(8 * $MiB),
);

# --- the origin ----------------------------------------------------------
#
#   /a1   Content-Length; all but the last 8 KiB at once, 1.5 s of nothing
#         (under the idle timeout), then the last 8 KiB and the end
#   /a2   Content-Length; all but the last 20 KiB at once, then 512 bytes
#         every 0.5 s for 5 s (the download alive, the PUT starved for
#         more than the idle timeout), then the last 15 KiB and the end
#   /c    first request: Content-Length, 3 MiB, then a TCP reset; later
#         requests: Range ignored, 200 with the whole body
# Every request is logged as "path range" to $reqlog.

my $reqlog = "$s->{dir}/origin-272.log";
my $cfirst = "$s->{dir}/origin-272.c-first";

my $origin = scripted_server(sub {
    my ($c, $line, $h) = @_;
    my $range = $h->{range} // 'none';
    my ($path) = $line =~ m{^GET (/\w+)};
    $path //= '';
    if (open my $log, '>>', $reqlog) {
        print $log "$path $range\n";
        close $log;
    }
    my ($name) = $path =~ m{^/(\w+)$};
    my $b = defined $name ? $body{$name} : undef;
    if (!defined $b) {
        print $c "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n"
               . "Connection: close\r\n\r\n";
        return;
    }
    my $len = length $b;
    print $c "HTTP/1.1 200 OK\r\nContent-Length: $len\r\n"
           . "Content-Type: application/octet-stream\r\n"
           . "Accept-Ranges: bytes\r\nConnection: close\r\n\r\n";
    my $send = sub {
        my ($from, $to) = @_;
        for (my $at = $from; $at < $to; $at += 64 * $KiB) {
            my $n = $to - $at < 64 * $KiB ? $to - $at : 64 * $KiB;
            print $c substr($b, $at, $n) or POSIX::_exit(0);
        }
    };
    if ($name eq 'a1') {
        $send->(0, $len - 8 * $KiB);
        sleep 1.5;
        print $c substr($b, $len - 8 * $KiB);
    } elsif ($name eq 'a2') {
        my $at = $len - 20 * $KiB;
        $send->(0, $at);
        for (1 .. 10) {
            sleep 0.5;
            print $c substr($b, $at, 512);
            $at += 512;
        }
        print $c substr($b, $at);
    } elsif ($name eq 'c' && !-e $cfirst) {
        open my $fh, '>', $cfirst; close $fh;
        $send->(0, 3 * $MiB);
        sleep 0.3;
        setsockopt($c, SOL_SOCKET, SO_LINGER, pack('ii', 1, 0));
    } else {
        $send->(0, $len);
    }
});

sub requests_for {
    my ($path) = @_;
    open my $fh, '<', $reqlog or return ();
    return map { (split ' ')[1] } grep { /^\Q$path\E / } <$fh>;
}

sub file_row {
    my ($job) = @_;
    return psql("SELECT status || ' ' || attempts || ' ' || "
                . "coalesce(object_key, '-') || ' ' || coalesce(size, -1) "
                . "FROM async_dl_files WHERE job_id = '$job' AND idx = 0");
}

sub object_sha {
    my ($job) = @_;
    my $key = psql("SELECT object_key FROM async_dl_files WHERE job_id = "
                   . "'$job' AND idx = 0");
    return $key ne '' ? sha256_hex(s3_object($key) // '') : 'no key';
}

# the job's log lines, one string
sub job_log {
    my ($job) = @_;
    return join "\n", grep { /\Q$job\E/ } split /\n/, worker_log();
}

my $ep = s3_proxy();

# --- a. unpause on end ---------------------------------------------------------

start_worker(ASYNC_DL_S3_ENDPOINT => $ep, ASYNC_DL_PART_SIZE => '5m',
             ASYNC_DL_IDLE_TIMEOUT => '2s', ASYNC_DL_POLL_INTERVAL => '500ms');

for my $case (qw(a1 a2)) {
    s3_fault('pass', match => 'PUT ');          # counts the PUTs
    my $len = length $body{$case};
    my $t0 = time;
    my $job = add_job(["$origin/$case"], timeout => 40);
    is(wait_ended($job, 35), 'completed', "$case: the file completed");
    my $took = time - $t0;
    is(object_sha($job), sha256_hex($body{$case}), "$case: with the right "
       . 'bytes');
    my $key = psql("SELECT object_key FROM async_dl_files WHERE job_id = "
                   . "'$job'");
    is(file_row($job), "completed 1 $key $len", "$case: one attempt, the "
       . 'size recorded');
    my $log = job_log($job);
    my ($dl, $st) = (-1, -1);
    my @lines = split /\n/, $log;
    for my $i (0 .. $#lines) {
        $dl = $i if $lines[$i] =~ /file=0 downloaded $len bytes/;
        $st = $i if $lines[$i] =~ /file=0 stored \Q$key\E \($len bytes/;
    }
    ok($dl >= 0 && $st > $dl, "$case: the download ended, then the PUT "
       . 'stored the file') or diag($log);
    unlike($log, qr/took nothing|no progress|did not answer|starting again/,
           "$case: no watchdog, no second PUT");
    is(s3_fault_rules()->[0]{used}, 1, "$case: one PutObject");
    is(scalar(requests_for("/$case")), 1, "$case: one GET");
    # the slow end: 1.5 s (a1), 5 s (a2); not until the deadline
    cmp_ok($took, '<', $case eq 'a1' ? 12 : 15, sprintf("$case: stored in "
           . '%.1f s, at the end of the download', $took));
}

# --- c. the origin starts over during a stream -------------------------------------

{
    s3_fault('pass', match => 'PUT ');
    my $len = length $body{c};
    my $job = add_job(["$origin/c"], timeout => 40);
    is(wait_ended($job, 35), 'completed', 'c: the file completed');
    is(object_sha($job), sha256_hex($body{c}), 'c: with the right bytes');
    my $key = psql("SELECT object_key FROM async_dl_files WHERE job_id = "
                   . "'$job'");
    is(file_row($job), "completed 2 $key $len", 'c: two attempts (the '
       . 'reset one counted), the size recorded');
    my @r = requests_for('/c');
    is(scalar @r, 2, 'c: two GETs');
    like($r[1] // '', qr/^bytes=[1-9]\d*-$/, 'c: the second asked for the '
         . "rest ($r[1])");
    my $log = job_log($job);
    like($log, qr/file=0 attempt 1 failed: .*; retrying in/,
         'c: the reset failed the first attempt, retried');
    like($log, qr/file=0 origin ignored the Range request: starting again from byte 0/,
         'c: the origin started over');
    is(s3_fault_rules()->[0]{used}, 2, 'c: two PutObjects: the stale one '
       . 'and the new one');
    my @puts = $log =~ m{(storage: PutObject \S+)}g;
    is(scalar @puts, 2, 'c: the worker started two');
    unlike($log, qr/took nothing|no progress|did not answer/,
           'c: no watchdog on the stale PUT (nor on the new one)');
    unlike($log, qr/storage: PutObject: .*starting again from byte 0/,
           'c: the stale PUT was cancelled, not failed');
    is(scalar(grep { m{^\Q$job\E/} } s3_keys()), 1,
       'c: one object for the job in the bucket');
}
stop_worker('TERM');

# --- b. a cancel with every byte in flight ------------------------------------------

# the idle timeout well above the storage's hold: the settling PUT is
# waited for, not given up (t/271 pins that)
start_worker(ASYNC_DL_S3_ENDPOINT => $ep, ASYNC_DL_PART_SIZE => '5m',
             ASYNC_DL_IDLE_TIMEOUT => '15s', ASYNC_DL_POLL_INTERVAL => '300ms');

for my $case (['b1', 'response', 'stored before the cancel, its answer held'],
              ['b2', 'request', 'stored after the cancel'])
{
    my ($name, $when, $what) = @$case;
    # just above a part: the download ends while the storage holds the
    # PUT (the ring takes a part, the sockets the rest)
    my $len = 5 * $MiB + 64 * $KiB;
    origin_file("$name.bin", $len);
    s3_fault('delay', match => 'PUT ', count => 1, delay => 4,
             when => $when);
    my $job = add_job(["$o/f/$name.bin"], timeout => 60);
    ok(wait_until(sub { worker_log() =~ /job=$job file=0 downloaded $len bytes/ },
                  20, "$name: the download"), "$name: the download ended");
    my $key = "$job/0/$name.bin";
    if ($when eq 'response') {
        ok(wait_until(sub { length(s3_object($key) // '') == $len }, 10,
                      "$name: the object"),
           "$name: the storage has the whole object, its answer is held");
    } else {
        is(s3_object($key), undef, "$name: the storage has nothing yet");
    }
    my $answered = s3_fault_rules()->[0]{used};
    is($answered, 1, "$name: the PUT is held");
    psql("SELECT async_dl_job_cancel('$job', '')");
    is(job_status($job), 'canceled', "$name: canceled");
    ok(wait_until(sub { job_log($job) =~ /file=0 the file is canceled: \Q$key\E queued for deletion/ },
                  20, "$name: the orphan check"),
       "$name: once the PUT answered, its object is queued for deletion");
    my $log = job_log($job);
    like($log, qr/file=0 waiting for the storage request under way to answer/,
         "$name: the cancel waited for the PUT");
    like($log, qr/file=0 stored \Q$key\E as the transfer stopped/,
         "$name: which stored the object");
    unlike($log, qr/did not answer for|took nothing/,
           "$name: answered within the idle timeout, not given up");
    if ($when eq 'request') {
        like($log, qr/deleted object \Q$key\E\n(?:.*\n)*.*stored \Q$key\E as the transfer stopped/,
             "$name: the janitor's delete at the cancel came before the "
             . 'object was stored');
    }
    ok(wait_until(sub { !grep { m{^\Q$job\E/} } s3_keys() }, 20,
                  "$name: the bucket"), "$name: nothing of the job is left "
       . "in the bucket ($what)");
    ok(wait_until(sub { psql("SELECT count(*) FROM async_dl_deleted_objects "
                             . "WHERE job_id = '$job'") == 0 }, 20,
                  "$name: the janitor's rows"),
       "$name: the janitor's queue is empty");
    is(psql("SELECT status || ' ' || coalesce(object_key, '-') FROM "
            . "async_dl_files WHERE job_id = '$job'"), 'canceled -',
       "$name: the file row is canceled and records no object");
    sleep 1;        # nothing comes back
    is(scalar(grep { m{^\Q$job\E/} } s3_keys()), 0,
       "$name: and it stays empty");
}
s3_fault('pass');

is(stop_worker('TERM') >> 8, 0, 'the worker exits 0');
unlike(worker_log(), qr/\[(?:error|alert)\]/,
       'no [error] or [alert] in the worker logs');
done_testing();
