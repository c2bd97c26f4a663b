# Content-encoded origin answers (issue 9, defect 12): the worker asks for
# the file as it is (Accept-Encoding: identity) and decodes an answer
# encoded all the same.  What is stored, its size and its SHA-256 are the
# decoded file's, whatever its size (one PUT or multipart: the encoded
# Content-Length says nothing of the decoded size).  A range of encoded
# bytes cannot continue decoded ones: an interrupted encoded download
# starts again from byte 0.  An encoding curl cannot decode fails the file
# (DOWNLOAD_FAILED); nothing encoded is ever stored as if it were the file.
#
# The origin is a small server here (the harness's origin nginx sends no
# encoding unless asked for one): gzip with a Content-Length, Range served
# on the gzip bytes as nginx's gzip_static would, a first answer cut by a
# TCP reset, and an encoding nobody knows.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use IO::Compress::Gzip qw(gzip $GzipError);
use Socket qw(SOL_SOCKET SO_LINGER);

my $s = adl();

sub text_of {
    my ($n) = @_;
    my $t = '';
    my $i = 0;
    $t .= "line " . $i . ": " . sha256_hex($i++) . "\n" while length $t < $n;
    return substr($t, 0, $n);
}
my %plain = (small => text_of(300 * 1024), big => text_of(6 * 1024 * 1024));
my %gz;
for (keys %plain) { gzip(\$plain{$_} => \$gz{$_}) or die $GzipError }
my $state = "$s->{dir}/gzorigin";
mkdir $state;

my $origin = scripted_server(\&serve);

sub serve {
    my ($c, $line, $hh) = @_;
    my ($path) = (split ' ', $line)[1];
    my %h = %$hh;
    my ($route, $name) = $path =~ m{^/(\w+)/(\w+)$} or return;
    open my $log, '>>', "$state/$route-$name.log";
    print $log join(' ', $h{range} // 'none',
                    $h{'accept-encoding'} // 'none'), "\n";
    close $log;
    my $body = $gz{$name} // return;
    my $enc = $route eq 'unknown' ? 'x-unknown' : 'gzip';
    my ($from, $status) = (0, '200 OK');
    if (($h{range} // '') =~ /^bytes=(\d+)-$/ && $1 < length $body) {
        ($from, $status) = ($1, '206 Partial Content');
    }
    my $part = substr($body, $from);
    my $cut = $route eq 'cut' && !-e "$state/cut-$name.once";
    if ($cut) { open my $fh, '>', "$state/cut-$name.once"; close $fh }
    print $c "HTTP/1.1 $status\r\nContent-Type: text/plain\r\n"
           . "Content-Encoding: $enc\r\nAccept-Ranges: bytes\r\n"
           . "ETag: \"gz-$name\"\r\nContent-Length: " . length($part) . "\r\n"
           . ($from ? "Content-Range: bytes $from-" . (length($body) - 1)
                      . "/" . length($body) . "\r\n" : '')
           . "Connection: close\r\n\r\n";
    if ($cut) {
        print $c substr($part, 0, int(length($part) / 2));
        sleep 0.3;
        setsockopt($c, SOL_SOCKET, SO_LINGER, pack('ii', 1, 0));
        return;
    }
    print $c $part;
}

sub requests {
    my ($route, $name) = @_;
    open my $fh, '<', "$state/$route-$name.log" or return ();
    return map { chomp; $_ } <$fh>;
}

sub stored {
    my ($job) = @_;
    my ($key, $size, $sha, $ct) = split /\|/, psql(
        "SELECT object_key, size, sha256, content_type FROM async_dl_files "
        . "WHERE job_id = '$job'");
    return { key => $key, size => $size, sha => $sha, ct => $ct,
             bytes => $key ? s3_object($key) : undef };
}

start_worker(ASYNC_DL_PART_SIZE => '5m');

for my $name (qw(small big)) {
    my $job = add_job(["$origin/gz/$name"]);
    is(wait_ended($job, 60), 'completed', "$name: completed");
    my $f = stored($job);
    ok(defined $f->{bytes} && $f->{bytes} eq $plain{$name},
       "$name: the decoded file was stored (" . length($gz{$name})
       . " bytes encoded, " . length($plain{$name}) . " decoded)");
    is($f->{size}, length $plain{$name}, "$name: its size is the decoded one");
    is($f->{sha}, sha256_hex($plain{$name}),
       "$name: its SHA-256 is the decoded file's");
    is($f->{ct}, 'text/plain', "$name: its content type");
    is((requests('gz', $name))[0], 'none identity',
       "$name: asked for the file as it is");
}

# cut in the middle: the next attempt starts over, without a Range
my $job = add_job(["$origin/cut/small"]);
is(wait_ended($job, 60), 'completed', 'cut: completed');
my $f = stored($job);
ok(defined $f->{bytes} && $f->{bytes} eq $plain{small},
   'cut: the decoded file was stored');
is($f->{sha}, sha256_hex($plain{small}), 'cut: with the decoded SHA-256');
my @r = requests('cut', 'small');
is(scalar @r, 2, 'cut: two requests');
is($r[1], 'none identity', 'cut: the second one from byte 0 (no Range)');
like(worker_log(), qr/job=$job file=0 the answer was content-encoded \(gzip\): starting again from byte 0/,
     'cut: the worker says why');

# an encoding curl does not know
$job = add_job(["$origin/unknown/small"]);
is(wait_ended($job, 60), 'failed', 'unknown encoding: failed');
like(psql("SELECT error_code || ' ' || error_message FROM async_dl_files "
          . "WHERE job_id = '$job'"), qr/^DOWNLOAD_FAILED .*encoding/i,
     'unknown encoding: DOWNLOAD_FAILED, saying so');
is(scalar(grep { index($_, $job) == 0 } s3_keys()), 0,
   'unknown encoding: nothing stored');

stop_worker('TERM');
done_testing();
