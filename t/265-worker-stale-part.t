# A multipart transfer whose origin starts over from byte 0 while a part
# is uploading (issue 9, the part numbering after a restart): the part in
# flight holds the old content and its number is the new content's.  When
# it fails, it must be dropped, not sent again (before the fix: as part 0,
# from a buffer of the old content, with its ETag recorded before the
# start of the ETag array).  The file completes with the right bytes.
#
# The origin is a small server here: no Content-Length, the first answer
# cut by a TCP reset after 5.5 MiB, later answers ignore Range and send
# the whole file.  In front of s3rver, a small proxy holds the first
# part's request until the origin started over, then answers it 500.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use AsyncDL::HTTPMsg;
use IO::Socket::INET;
use POSIX ();
use Socket qw(SOL_SOCKET SO_LINGER);
use Time::HiRes qw(time sleep);

my $s = adl();

my $SIZE = 11 * 1024 * 1024;
my $body = flaky_bytes('stale-part', $SIZE);
my $first = "$s->{dir}/stale-part.first";

my $origin = scripted_server(sub {
    my ($c) = @_;
    print $c "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
           . "Content-Type: application/octet-stream\r\n\r\n";
    my $cut = !-e $first;
    if ($cut) { open my $fh, '>', $first; close $fh }
    my $end = $cut ? int(5.5 * 1024 * 1024) : $SIZE;
    for (my $at = 0; $at < $end; $at += 256 * 1024) {
        my $n = $end - $at < 256 * 1024 ? $end - $at : 256 * 1024;
        printf $c "%x\r\n%s\r\n", $n, substr($body, $at, $n) or last;
    }
    if ($cut) {
        sleep 1.5;                  # the first part is uploading
        setsockopt($c, SOL_SOCKET, SO_LINGER, pack('ii', 1, 0));
    } else {
        print $c "0\r\n\r\n";
    }
}) . '/stale.bin';

# The storage proxy: forwards each request as sent (SigV4 still holds);
# the first request for part 1 is held until $fail_now exists, then
# answered 500 InternalError.
my $fail_now = "$s->{dir}/stale-part.fail";
my $held = "$s->{dir}/stale-part.held";

my $px = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                               Listen => 16, ReuseAddr => 1, Proto => 'tcp')
    or die "listen: $!";
my $ep = 'http://127.0.0.1:' . $px->sockport;
my $px_pid = fork // die "fork: $!";
if ($px_pid == 0) {
    $SIG{CHLD} = 'IGNORE';
    while (1) {
        my $c = $px->accept or next;
        my $k = fork;
        if (!defined $k || $k) { close $c; next }
        close $px;
        while (my ($head, $data) = read_message($c)) {
            if ($head =~ /partNumber=1&/ && !-e $held) {
                open my $fh, '>', $held; close $fh;
                sleep 0.05 until -e $fail_now;
                my $x = '<?xml version="1.0" encoding="UTF-8"?><Error>'
                      . '<Code>InternalError</Code><Message>held back, '
                      . 'then failed</Message></Error>';
                syswrite($c, "HTTP/1.1 500 Internal Server Error\r\n"
                         . "Content-Type: application/xml\r\n"
                         . "Content-Length: " . length($x) . "\r\n\r\n$x");
                next;
            }
            my $up = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                           PeerPort => $s->{s3_port},
                                           Proto => 'tcp') or last;
            syswrite($up, $head . $data) or last;
            my ($rhead, $rdata) = read_message($up) or last;
            close $up;
            syswrite($c, $rhead . $rdata) or last;
        }
        close $c;
        POSIX::_exit(0);
    }
}
close $px;
END { kill 'KILL', $px_pid if $px_pid }

start_worker(ASYNC_DL_S3_ENDPOINT => $ep, ASYNC_DL_PART_SIZE => '5m');
my $job = add_job([$origin]);
ok(wait_until(sub { worker_log() =~ /job=$job file=0 origin ignored the Range/ },
              30, 'the restart'), 'the origin started over while the first '
   . 'part was uploading');
ok(wait_until(sub { -e $held }, 10, 'the held part'),
   'the storage holds the first part');
like(worker_log(), qr/storage: UploadPart \S*partNumber=1&.*\n(?:.*\n)*.*job=$job file=0 origin ignored the Range/,
     'the first part was uploading when the origin started over');
# now the part in flight (the old content) fails
open my $fh, '>', $fail_now or die $!;
close $fh;
ok(wait_until(sub { worker_log() =~ /job=$job file=0 storage: UploadPart: .*; (?:retrying in|of the data before a restart: dropped)/ },
              10, 'the part to fail'), 'the part of the old content failed');
is(wait_ended($job, 60), 'completed', 'the file completed');
my $key = psql("SELECT object_key FROM async_dl_files WHERE job_id = '$job'");
is(sha256_hex(s3_object($key) // ''), sha256_hex($body),
   'with the right bytes');
unlike(worker_log(), qr/partNumber=0\b/, 'no part 0 was ever sent');
stop_worker('TERM');
done_testing();
