# A paused file keeps what it stored: a 50 MiB download going up as a
# multipart upload (ASYNC_DL_STREAM_PUT=off) is paused, stops growing (its
# bytes in the status, its parts in the bucket), is resumed by ANOTHER
# worker, which asks the origin for the rest with Range and If-Range, and
# ends with the origin's SHA-256.  An origin that ignores Range sends the
# whole file again: the file says so (resumedFrom 0) and still ends right.
# A paused file whose job is deleted has its kept upload aborted.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use File::Find;
use Time::HiRes qw(time sleep);

my $s = adl();
my $o = $s->{origin};
my %alice = ('X-User' => 'alice');
my $P = '/v1/download/';
my $MIB = 1024 * 1024;
my $PART = 5 * $MIB;

start_nginx(<<'EOF2');
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
}
EOF2

origin_file('fifty.bin', 50 * $MIB);
my $want = file_sha256("$s->{dir}/origin/f/fifty.bin");
my %w = (ASYNC_DL_STREAM_PUT => 'off', ASYNC_DL_PART_SIZE => '5m');
start_worker(%w, ASYNC_DL_WORKER_ID => 'w-one');

sub bucket_bytes {
    my $n = 0;
    find(sub { $n += -s $_ if -f $_ }, "$s->{dir}/s3") if -d "$s->{dir}/s3";
    return $n;
}
sub doc { return request('GET', "${P}status/$_[0]", \%alice)->{json} }
# the job's bytes, kept incrementally, against its files' recomputed
sub bytes_agree {
    my ($job) = @_;
    return psql("SELECT j.bytes_done || ' ' || (SELECT sum(f.bytes_done) FROM async_dl_files f "
                . "WHERE f.job_id = j.id) FROM async_dl_jobs j WHERE j.id = '$job'");
}
sub post { my ($what, $job) = @_; return request('POST', "$P$job/$what", \%alice) }
sub ranges {
    my ($path) = @_;
    return map { /"(bytes=[^"]*)"$/ ? $1 : () }
           grep { index($_, $path) >= 0 } split /\n/, origin_log();
}

# --- pause, kept parts, resume by another worker ----------------------------
my $job = initiate({ files => [{ url => "$o/slow/fifty.bin?rate=6m" }], timeout => 300 },
                   \%alice)->{json}{jobId};
ok(wait_until(sub { (doc($job)->{bytesDone} // 0) > 18 * $MIB }, 30), 'more than 18 MiB downloaded');
is(post('pause', $job)->{status}, 200, 'paused');
ok(wait_until(sub { worker_log() =~ /job=$job file=0 handed back keeping (\d+) part\(s\), (\d+) bytes/ }, 5),
   'the worker kept the parts it stored');
my ($nparts, $kept) = worker_log() =~ /job=$job file=0 handed back keeping (\d+) part\(s\), (\d+) bytes/;
cmp_ok($nparts, '>=', 3, "$nparts parts kept");
is($kept, $nparts * $PART, "  $kept bytes, whole parts");
ok(wait_until(sub { psql("SELECT status FROM async_dl_files WHERE job_id = '$job'") eq 'pending' }, 5),
   'the file was handed back');
my $d1 = doc($job);
is($d1->{status}, 'paused', 'the job is paused');
is($d1->{bytesDone}, $kept, 'bytesDone: the bytes its kept parts hold');
is(bytes_agree($job), "$kept $kept", "  the job's counter equals its files' recomputed sum");
my $rec = psql("SELECT resume::text FROM async_dl_files WHERE job_id = '$job'");
like($rec, qr/"uploadId"/, 'the file records its upload');
my $b1 = bucket_bytes();
cmp_ok($b1, '>=', $kept, "the bucket holds the kept parts ($b1 bytes)");
sleep 2;
is(doc($job)->{bytesDone}, $kept, 'paused: bytesDone does not grow');
is(bucket_bytes(), $b1, 'paused: the bucket does not grow');

# another worker takes it up
stop_worker('TERM', 0);
start_worker(%w, ASYNC_DL_WORKER_ID => 'w-two');
is(post('resume', $job)->{status}, 200, 'resumed');
ok(wait_until(sub { worker_log() =~ /job=$job file=0 resuming after/ }, 10),
   'the second worker took the parts up');
sleep 0.3;
# paused again before a new part is stored: what it took up is kept
is(post('pause', $job)->{status}, 200, 'paused again at once');
ok(wait_until(sub { my @k = worker_log() =~ /job=$job file=0 handed back keeping (\d+) part/g; @k == 2 }, 5),
   'the parts are kept again');
my ($n2) = (worker_log() =~ /job=$job file=0 handed back keeping (\d+) part/g)[1];
cmp_ok($n2, '>=', $nparts, "  $n2 parts, none lost");
my $kept2 = $n2 * $PART;
ok(wait_until(sub { psql("SELECT status FROM async_dl_files WHERE job_id = '$job'") eq 'pending' }, 5),
   '  handed back');
is(doc($job)->{bytesDone}, $kept2, "  bytesDone $kept2");
is(bytes_agree($job), "$kept2 $kept2", "  the counter equals the recomputed sum again");
is(post('resume', $job)->{status}, 200, 'resumed again');
my $st = wait_ended($job, 60);
is($st, 'completed', 'the job completes');
my $f = doc($job)->{files}[0];
is($f->{sha256}, $want, "the recorded SHA-256 is the origin's");
is($f->{resumedFrom}, $kept2, "resumedFrom: $kept2");
my $whole = 50 * $MIB;
is(bytes_agree($job), "$whole $whole", 'completed: counter and recomputed sum agree');
my $key = psql("SELECT object_key FROM async_dl_files WHERE job_id = '$job'");
is(sha256_hex(s3_object($key) // ''), $want, "the stored object is the origin's file");
like(worker_log(), qr/job=$job file=0 resuming after $nparts stored part\(s\) of upload \S+: from byte $kept/,
     'the second worker went on after the kept parts');
is_deeply([ranges('/slow/fifty.bin')], ["bytes=$kept-", "bytes=$kept2-"],
          "the origin was asked for the rest each time: Range bytes=$kept-, then bytes=$kept2-");
is(psql("SELECT resume IS NULL FROM async_dl_files WHERE job_id = '$job'"), 't',
   'no record left once completed');

# --- a kept upload the storage lost (a lifecycle rule) -----------------------
my $j9 = initiate({ files => [{ url => "$o/slow/fifty.bin?rate=6m&gone" }] }, \%alice)->{json}{jobId};
ok(wait_until(sub { (doc($j9)->{bytesDone} // 0) > 12 * $MIB }, 30), 'a job under way');
is(post('pause', $j9)->{status}, 200, 'paused');
ok(wait_until(sub { psql("SELECT resume IS NOT NULL FROM async_dl_files WHERE job_id = '$j9'") eq 't' }, 10),
   'its parts are recorded');
my $up9 = psql("SELECT resume ->> 'uploadId' FROM async_dl_files WHERE job_id = '$j9'");
my $dir9 = "$s->{dir}/s3/$s->{s3_bucket}/._S3rver_uploads/$up9";
ok(-d $dir9, 'the storage holds the upload');
system('rm', '-rf', $dir9);
ok(!-d $dir9, 'the storage loses it (as a lifecycle rule would abort it)');
is(post('resume', $j9)->{status}, 200, 'resumed');
is(wait_ended($j9, 60), 'completed', 'the job completes all the same');
like(worker_log(), qr/job=$j9 file=0 storage: .*NoSuchUpload.*the kept upload is gone; starting again from byte 0/,
     'the worker found the upload gone and started again in a new one');
my $f9 = doc($j9)->{files}[0];
is($f9->{resumedFrom}, 0, '  resumedFrom 0');
is($f9->{sha256}, $want, "  the origin's SHA-256");
is(sha256_hex(s3_object(psql("SELECT object_key FROM async_dl_files WHERE job_id = '$j9'")) // ''),
   $want, "  and the origin's bytes");

# --- a worker shutting down keeps the parts too ------------------------------
stop_worker('TERM');
start_worker(%w, ASYNC_DL_SHUTDOWN_GRACE => '1s');
my $j5 = initiate({ files => [{ url => "$o/slow/fifty.bin?rate=6m&sd" }] }, \%alice)->{json}{jobId};
ok(wait_until(sub { (doc($j5)->{bytesDone} // 0) > 12 * $MIB }, 30), 'a job under way');
is(stop_worker('TERM'), 0, 'its worker shut down (SIGTERM, 1 s of grace): exit 0');
my ($n5) = worker_log() =~ /job=$j5 file=0 handed back keeping (\d+) part/;
ok($n5, "its file was handed back keeping $n5 parts");
is(psql("SELECT status FROM async_dl_files WHERE job_id = '$j5'"), 'pending', '  pending');
start_worker(%w);
is(wait_ended($j5, 60), 'completed', 'the next worker completes it');
my $f5 = doc($j5)->{files}[0];
is($f5->{resumedFrom}, $n5 * $PART, '  from the byte after the kept parts');
is($f5->{sha256}, $want, "  with the origin's SHA-256");
is(sha256_hex(s3_object(psql("SELECT object_key FROM async_dl_files WHERE job_id = '$j5'")) // ''),
   $want, '  and the origin\'s bytes in the bucket');

# --- an origin that ignores Range: the whole file again ---------------------
origin_file('norange.bin', 20 * $MIB);
my $want2 = file_sha256("$s->{dir}/origin/f/norange.bin");
# /trickle/: fast for the first 11 MiB, then slow; /noranges/ is used by the
# resume (the URL is the same file: the path is switched below)
my $j2 = initiate({ files => [{ url => "$o/trickle/norange.bin?after=11m&rate=500k" }] },
                  \%alice)->{json}{jobId};
ok(wait_until(sub { (doc($j2)->{bytesDone} // 0) > 11 * $MIB }, 30), 'the second job passed 11 MiB');
is(post('pause', $j2)->{status}, 200, 'paused');
ok(wait_until(sub { worker_log() =~ /job=$j2 file=0 handed back keeping 2 part\(s\)/ }, 5),
   'two parts kept');
ok(wait_until(sub { psql("SELECT status FROM async_dl_files WHERE job_id = '$j2'") eq 'pending' }, 5),
   'handed back');
psql("UPDATE async_dl_files SET url = '$o/noranges/norange.bin' WHERE job_id = '$j2'");
is(post('resume', $j2)->{status}, 200, 'resumed');
is(wait_ended($j2, 60), 'completed', 'completed');
my $f2 = doc($j2)->{files}[0];
is($f2->{resumedFrom}, 0, 'resumedFrom 0: the origin sent the whole file again');
is($f2->{sha256}, $want2, "the SHA-256 is the origin's");
is(sha256_hex(s3_object(psql("SELECT object_key FROM async_dl_files WHERE job_id = '$j2'")) // ''),
   $want2, 'the stored object is the whole file, once');
like(worker_log(), qr/job=$j2 file=0 \S*.*origin ignored the Range request/,
     'the worker logged that the origin ignored the Range request');

# --- a hand-back that waits for a slow part renews its lease meanwhile ------
stop_worker('TERM');
s3_faults({ fault => 'delay', match => 'partNumber=2&', delay => 7 });
start_worker(%w, ASYNC_DL_S3_ENDPOINT => s3_proxy(), ASYNC_DL_LEASE => '3s',
             ASYNC_DL_POLL_INTERVAL => '300ms');
my $j6 = initiate({ files => [{ url => "$o/slow/fifty.bin?rate=6m&slowpart" }] }, \%alice)->{json}{jobId};
ok(wait_until(sub { worker_log() =~ /UploadPart \S*\Q$j6\E\S*partNumber=2&/ }, 30),
   'part 2 is on its way to a storage that holds it 7 s');
is(post('pause', $j6)->{status}, 200, 'paused');
ok(wait_until(sub { psql("SELECT status FROM async_dl_files WHERE job_id = '$j6'") eq 'pending' }, 15),
   'handed back once part 2 answered');
like(worker_log(), qr/job=$j6 file=0 handed back keeping 2 part\(s\)/, '  keeping 2 parts');
is(psql("SELECT resume ->> 'offset' FROM async_dl_files WHERE job_id = '$j6'"), 2 * $PART,
   '  recorded: the lease (3 s) was renewed while the part took 7 s');
is(request('DELETE', "$P$j6", \%alice)->{status}, 204, 'deleted');
s3_faults();

# --- a part the storage holds: the hand-back waits a lease at most ----------
# (libcurl's low-speed check would end the part too, but only once its
# speed over the last seconds, its own upload included, falls under a byte
# a second: some 7 s here; the wait's bound, 3 s, comes first)
stop_worker('TERM');
s3_faults({ fault => 'delay', when => 'response', match => 'partNumber=2&', delay => 30 });
start_worker(%w, ASYNC_DL_S3_ENDPOINT => s3_proxy(), ASYNC_DL_LEASE => '3s',
             ASYNC_DL_IDLE_TIMEOUT => '2s', ASYNC_DL_POLL_INTERVAL => '300ms');
my $j10 = initiate({ files => [{ url => "$o/slow/fifty.bin?rate=6m&held" }] }, \%alice)->{json}{jobId};
ok(wait_until(sub { worker_log() =~ /UploadPart \S*\Q$j10\E\S*partNumber=2&/ }, 30),
   'part 2 is on its way to a storage that holds its answer 30 s');
my $t10 = time;
is(post('pause', $j10)->{status}, 200, 'paused');
ok(wait_until(sub { psql("SELECT status FROM async_dl_files WHERE job_id = '$j10'") eq 'pending' }, 20),
   'handed back');
my $took10 = time - $t10;
cmp_ok($took10, '>=', 2.5, sprintf('  after waiting for the part (%.1f s) ...', $took10));
cmp_ok($took10, '<', 12, '  ... a lease (3 s) at most, not the 30 s the storage holds it');
like(worker_log(), qr/job=$j10 file=0 .*the part under way did not answer within 3000 ms of the stop: cancelled/,
     '  the part was cancelled, and the log says why');
like(worker_log(), qr/job=$j10 file=0 handed back keeping 1 part\(s\)/, '  keeping the part before it');
is(psql("SELECT resume ->> 'offset' FROM async_dl_files WHERE job_id = '$j10'"), $PART,
   '  recorded: one part');
is(request('DELETE', "$P$j10", \%alice)->{status}, 204, 'deleted');
s3_faults();

# --- a shutdown while a pause waits for its part: it waits no longer --------
stop_worker('TERM');
s3_faults({ fault => 'delay', when => 'response', match => 'partNumber=2&', delay => 30 });
start_worker(%w, ASYNC_DL_S3_ENDPOINT => s3_proxy(), ASYNC_DL_SHUTDOWN_GRACE => '1s');
my $j11 = initiate({ files => [{ url => "$o/slow/fifty.bin?rate=6m&sdwait" }] }, \%alice)->{json}{jobId};
ok(wait_until(sub { worker_log() =~ /UploadPart \S*\Q$j11\E\S*partNumber=2&/ }, 30),
   'part 2 is on its way to a storage that holds its answer 30 s');
is(post('pause', $j11)->{status}, 200, 'paused: the hand-back waits for part 2 (60 s at most)');
ok(wait_until(sub { worker_log() =~ /job=$j11 file=0 handed back: the job was paused/ }, 10),
   '  the worker stopped the download');
my $t11 = time;
is(stop_worker('TERM'), 0, 'SIGTERM (1 s of grace): exit 0');
my $took11 = time - $t11;
cmp_ok($took11, '<', 8, sprintf('  in %.1f s: the pause\'s wait ended with the grace', $took11));
like(worker_log(), qr/job=$j11 file=0 .*the part under way is not waited for \(shutting down\)/,
     '  the part was cancelled, and the log says why');
like(worker_log(), qr/job=$j11 file=0 handed back keeping 1 part\(s\)/, '  keeping the part before it');
is(psql("SELECT status || ' ' || (resume ->> 'offset') FROM async_dl_files WHERE job_id = '$j11'"),
   "pending $PART", '  and recorded');
s3_faults();
start_worker(%w, ASYNC_DL_S3_ENDPOINT => s3_proxy());
is(request('DELETE', "$P$j11", \%alice)->{status}, 204, 'deleted');

# --- a shutdown does not wait for a part under way --------------------------
stop_worker('TERM');
s3_faults({ fault => 'delay', match => 'partNumber=3&', delay => 30 });
start_worker(%w, ASYNC_DL_S3_ENDPOINT => s3_proxy(), ASYNC_DL_SHUTDOWN_GRACE => '1s');
my $j7 = initiate({ files => [{ url => "$o/slow/fifty.bin?rate=6m&sdpart" }] }, \%alice)->{json}{jobId};
ok(wait_until(sub { worker_log() =~ /UploadPart \S*\Q$j7\E\S*partNumber=3&/ }, 30),
   'part 3 is on its way to a storage that holds it 30 s');
my $t7 = time;
is(stop_worker('TERM'), 0, 'SIGTERM (1 s of grace): exit 0');
cmp_ok(time - $t7, '<', 8, sprintf('  in %.1f s: the part under way was not waited for', time - $t7));
like(worker_log(), qr/job=$j7 file=0 handed back keeping 2 part\(s\)/, '  the 2 parts stored are kept');
is(psql("SELECT status || ' ' || (resume ->> 'offset') FROM async_dl_files WHERE job_id = '$j7'"),
   'pending ' . 2 * $PART, '  and recorded');
is(request('DELETE', "$P$j7", \%alice)->{status}, 204, 'deleted');

# --- a shutdown while the upload completes: recorded as completed ------------
origin_file('twelve2.bin', 12 * $MIB);
my $want8 = file_sha256("$s->{dir}/origin/f/twelve2.bin");
s3_faults({ fault => 'delay', match => '?uploadId=', delay => 4 });
start_worker(%w, ASYNC_DL_S3_ENDPOINT => s3_proxy(), ASYNC_DL_SHUTDOWN_GRACE => '1s');
my $j8 = initiate({ files => [{ url => "$o/f/twelve2.bin" }] }, \%alice)->{json}{jobId};
ok(wait_until(sub { worker_log() =~ /CompleteMultipartUpload \S*\Q$j8\E/ }, 30),
   'the upload is completing (the storage holds the answer 4 s)');
is(stop_worker('TERM'), 0, 'SIGTERM (1 s of grace): exit 0');
is(psql("SELECT status FROM async_dl_files WHERE job_id = '$j8'"), 'completed',
   'the file stored as it was handed back is recorded completed, not downloaded again');
is(doc($j8)->{files}[0]{sha256}, $want8, "  with the origin's SHA-256");
like(worker_log(), qr/job=$j8 file=0 stored \S+ as it was handed back: recorded as completed/,
     '  (it was handed back at the end of the grace, while its upload completed)');
s3_faults();
start_worker(%w, ASYNC_DL_S3_ENDPOINT => s3_proxy());

# --- paused while its last part goes up: stored all the same ----------------
origin_file('twelve.bin', 12 * $MIB);
my $want3 = file_sha256("$s->{dir}/origin/f/twelve.bin");
s3_faults({ fault => 'delay', match => 'partNumber=3', delay => 3 });
stop_worker('TERM');
start_worker(%w, ASYNC_DL_S3_ENDPOINT => s3_proxy());
my $j4 = initiate({ files => [{ url => "$o/f/twelve.bin" }] }, \%alice)->{json}{jobId};
ok(wait_until(sub { worker_log() =~ /job=$j4 file=0 downloaded \d+ bytes/ }, 30),
   'a file downloaded whole, its last part held up by the storage');
is(post('pause', $j4)->{status}, 200, 'paused while its last part goes up');
ok(wait_until(sub { psql("SELECT status FROM async_dl_files WHERE job_id = '$j4'") eq 'completed' }, 15),
   'the file is stored all the same');
is(doc($j4)->{files}[0]{sha256}, $want3, "  with the origin's SHA-256");
is(wait_ended($j4, 20), 'completed', '  and the job, whose only file it is, completes');
s3_faults();

# --- a paused file's job deleted: its upload is aborted -----------------------
my $j3 = initiate({ files => [{ url => "$o/slow/fifty.bin?rate=6m&j3" }] }, \%alice)->{json}{jobId};
ok(wait_until(sub { (doc($j3)->{bytesDone} // 0) > 6 * $MIB }, 30), 'a third job under way');
is(post('pause', $j3)->{status}, 200, 'paused');
ok(wait_until(sub { psql("SELECT resume IS NOT NULL FROM async_dl_files WHERE job_id = '$j3'") eq 't' }, 5),
   'its parts are recorded');
my $up = psql("SELECT resume ->> 'uploadId' FROM async_dl_files WHERE job_id = '$j3'");
is(request('DELETE', "$P$j3", \%alice)->{status}, 204, 'deleted');
ok(wait_until(sub { worker_log() =~ /job=$j3 aborted upload \Q$up\E of / }, 10),
   "the janitor aborted its upload $up");
# (the log line comes with the storage's answer; the queue's row goes after)
ok(wait_until(sub { psql("SELECT count(*) FROM async_dl_deleted_objects WHERE job_id = '$j3'") == 0 }, 10),
   'nothing left in the queue');

unlike(nginx_log(), qr/\[alert\]|\[emerg\]/, 'no [alert] in nginx');
unlike(worker_log(), qr/AddressSanitizer|runtime error/, 'no sanitizer report');
done_testing();
