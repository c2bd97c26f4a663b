# "completed" means downloadable (issue 10): a client that reacts to the
# final event (or to a poll saying completed) with GET {p}{id} gets the
# 302 every time, also for multi-file jobs, whose zip is built before the
# job completes.  200 multi-file jobs followed by 4 clients, half over the
# stream, half by polling; some with a file that fails (their zip holds
# the rest).  And a zip that cannot be built: the job completes all the
# same, the final event and the status say the zip failed, {p}{id}
# answers 409 with the reason, and the files stay downloadable.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use AsyncDL::SSE;
use JSON::PP;
use POSIX ();
use Time::HiRes qw(time sleep);

my $s = adl();
my $o = $s->{origin};
my $P = '/v1/download/';
start_nginx(<<'EOF');
location /v1/download/ {
    async_dl;
    async_dl_urls on;
}
EOF
start_worker();
origin_file("r$_.bin", 4096 * ($_ + 1)) for 0 .. 2;

my $JOBS = 200;
my $CLIENTS = 4;
my $dir = $s->{dir};
my $J = JSON::PP->new->canonical;

# One client: its share of the jobs, one after another; a line of JSON
# each: how it learnt the end, the final status, what {p}{id} answered.
sub client {
    my ($n) = @_;
    open my $out, '>', "$dir/ready.$n" or die "$dir/ready.$n: $!";
    for my $i (0 .. $JOBS / $CLIENTS - 1) {
        my $k = $n * ($JOBS / $CLIENTS) + $i;
        my @urls = map { "$o/f/r$_.bin" } 0 .. ($k % 2 ? 2 : 1);
        push @urls, "$o/status/404" if $k % 5 == 0;
        my $r = initiate({ files => [map { { url => $_ } } @urls] });
        my $id = $r->{json}{jobId};
        my %rec = (k => $k, id => $id, initiate => $r->{status});
        if ($k % 2) {
            my $st = sse_open("${P}stream/$id");
            my @evs = $st->until_event(qr/^(completed|failed|canceled)$/, 60);
            my $fin = $evs[-1] || {};
            $rec{how} = 'stream';
            $rec{final} = $fin->{event} // 'none';
            $rec{bundle} = $fin->{json}{bundle}{status} // '';
        } else {
            my $until = time + 60;
            my $st = '';
            while (time < $until) {
                my $p = request('GET', "${P}status/$id");
                $st = $p->{json}{status} // '';
                last if $st =~ /^(completed|failed|canceled)$/;
                sleep 0.02;
            }
            $rec{how} = 'poll';
            $rec{final} = $st;
        }
        my $d = request('GET', "$P$id");
        $rec{get} = $d->{status};
        if ($d->{status} == 302) {
            my $z = request('GET', $d->{headers}{location});
            $rec{zip} = $z->{status} == 200 && substr($z->{content}, 0, 2) eq 'PK'
                        ? 'ok' : "link answered $z->{status}";
        } else {
            $rec{body} = $d->{content};
        }
        print $out $J->encode(\%rec), "\n";
    }
    close $out;
}

my @kids;
for my $n (0 .. $CLIENTS - 1) {
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        eval { client($n) };
        print STDERR "client $n: $@" if $@;
        POSIX::_exit($@ ? 1 : 0);
    }
    push @kids, $pid;
}
waitpid($_, 0) for @kids;

my @recs = map { $J->decode($_) }
           map { split /\n/, AsyncDL::Test::slurp("$dir/ready.$_") } 0 .. $CLIENTS - 1;
is(scalar @recs, $JOBS, "$JOBS multi-file jobs followed to their end");
is(scalar(grep { $_->{initiate} != 202 } @recs), 0, 'every one accepted');
my @done = grep { $_->{final} eq 'completed' } @recs;
is(scalar @done, $JOBS, 'every one completed');
my @bad = grep { $_->{get} != 302 || ($_->{zip} // '') ne 'ok' } @done;
is(scalar @bad, 0, 'GET {p}{id} right after "completed": 302 to the zip, '
   . 'every time (' . scalar(grep { $_->{how} eq 'stream' } @done)
   . ' over the stream, ' . scalar(grep { $_->{how} eq 'poll' } @done)
   . ' by polling)')
    or diag(join "\n", map { $J->encode($_) } @bad[0 .. ($#bad < 4 ? $#bad : 4)]);
is(scalar(grep { $_->{how} eq 'stream' && $_->{bundle} ne 'completed' }
          @done), 0, 'the final event names the zip as stored');

# --- a zip that cannot be built -------------------------------------------------

# files "stored" by a worker played here (no worker runs meanwhile): one
# names a real object, the other an object that is not in the bucket
stop_worker('TERM');
my $r = initiate({ files => [{ url => "$o/f/r0.bin" }, { url => "$o/f/r1.bin" }] });
my $id = $r->{json}{jobId};
my ($key0, $size0) = split /\|/, psql("SELECT object_key, size FROM "
    . "async_dl_files WHERE status = 'completed' AND url LIKE '%/r0.bin' "
    . "LIMIT 1");
is(psql("SELECT count(*) FROM async_dl_claim('w', 10, '30 seconds', 5)"), 2,
   'its two files claimed');
for my $f ([0, $key0, $size0], [1, "missing/$id/1/r1.bin", 8192]) {
    my ($idx, $key, $size) = @$f;
    psql("SELECT async_dl_file_finish('$id', $idx, (SELECT lease_owner FROM "
         . "async_dl_files WHERE job_id = '$id' AND idx = $idx), "
         . "'completed', $size, 'application/octet-stream', '"
         . ('ab' x 32) . "', '$key', 1, NULL, NULL, NULL)");
}
is(job_status($id), 'processing', 'both stored: the job waits for its zip');
my $st = sse_open("${P}stream/$id");
start_worker();
my @evs = $st->until_event(qr/^(completed|failed|canceled)$/, 60);
my $fin = $evs[-1] || {};
is($fin->{event}, 'completed', 'the zip failed: the job completes all the same');
is($fin->{json}{bundle}{status}, 'failed', 'the final event says the zip failed');
like($fin->{json}{bundle}{error} // '', qr/\S/, 'with the reason');
my $d = request('GET', "$P$id");
is($d->{status}, 409, '{p}{id}: 409');
like($d->{json}{error}{message} // '', qr/zip bundle could not be built/,
     'saying the zip could not be built');
is(request('GET', "$P$id/files/0")->{status}, 302,
   'the stored file stays downloadable');
done_testing();
