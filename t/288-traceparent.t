# W3C trace context: the initiate's traceparent (or a new one when it is
# absent or malformed) is answered, stored with the job (schema 19),
# printed by $async_dl_traceparent, sent by the worker to the origin and to
# the callback, and on every worker log line of the job.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;

my $s = adl();
start_nginx(<<'EOF2', http_config => <<'EOF3');
location /v1/download/ {
    async_dl;
    access_log logs/traced.log traced;
}
EOF2
log_format traced '$request_method $uri $status tp=$async_dl_traceparent';
EOF3

my $seen = "$s->{dir}/seen.log";
my $server = scripted_server(sub {
    my ($c, $line, $h) = @_;
    open my $fh, '>>', $seen or die $!;
    my ($m, $path) = split ' ', $line;
    print $fh "$m $path " . ($h->{traceparent} // '-') . "\n";
    close $fh;
    my $body = $m eq 'GET' ? 'traced file' : '';
    print $c "HTTP/1.1 200 OK\r\nContent-Length: " . length($body)
           . "\r\nConnection: close\r\n\r\n$body";
});

my $TP = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
my $FORMAT = qr/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/;

sub start {
    my ($tp, %o) = @_;
    my %h = defined $tp ? (traceparent => $tp) : ();
    $h{'Idempotency-Key'} = $o{key} if $o{key};
    return initiate({ files => [{ url => "$server/f/$o{name}" }],
                      callback_url => "$server/cb/$o{name}" }, \%h);
}
sub stored { psql("SELECT traceparent FROM async_dl_jobs WHERE id = '$_[0]'") }

# --- a traceparent sent: answered, stored, passed on ----------------------
start_worker();
my $r = start($TP, name => 'one');
is($r->{status}, 202, 'initiate with a traceparent: 202');
is($r->{headers}{traceparent}, $TP, '... answered in the traceparent header');
my $id = $r->{json}{jobId};
is(stored($id), $TP, '... stored with the job');
is(wait_ended($id, 20), 'completed', 'the job completed');
ok(wait_until(sub { -e $seen && AsyncDL::Stack::slurp($seen) =~ m{^POST /cb/one }m }, 20),
   'its callback was delivered');
my $log = AsyncDL::Stack::slurp($seen);
like($log, qr{^GET /f/one \Q$TP\E$}m, 'the origin got the traceparent');
like($log, qr{^POST /cb/one \Q$TP\E$}m, 'the callback got it too');

my @lines = grep { /job=$id/ } split /\n/, worker_log();
cmp_ok(scalar @lines, '>=', 1, scalar(@lines) . ' worker log lines of the job');
is(scalar(grep { !/ trace=\Q$TP\E$/ } @lines), 0,
   '... every one with trace=<its traceparent>')
    or diag(join "\n", grep { !/ trace=/ } @lines);
like(AsyncDL::Stack::slurp("$s->{dir}/nginx/logs/traced.log"),
     qr{^POST /v1/download/initiate 202 tp=\Q$TP\E$}m,
     '$async_dl_traceparent in the access log');

# a job of two files: its zip's lines too
my $TP2 = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00';
$r = initiate({ files => [{ url => "$server/f/z1" }, { url => "$server/f/z2" }] },
              { traceparent => $TP2 });
my $zid = $r->{json}{jobId};
is(wait_ended($zid, 20), 'completed', 'a job of two files completed');
@lines = grep { /job=$zid/ } split /\n/, worker_log();
ok(scalar(grep { /bundle/ } @lines), 'the worker logged its zip');
is(scalar(grep { !/ trace=\Q$TP2\E$/ } @lines), 0,
   '... every line of the job, the zip\'s included, with its traceparent')
    or diag(join "\n", grep { !/ trace=/ } @lines);

# --- none sent, or a malformed one: a new one --------------------------------
$r = start(undef, name => 'two');
my $made = $r->{headers}{traceparent} // '';
like($made, $FORMAT, "none sent: a new one is answered ($made)");
is(stored($r->{json}{jobId}), $made, '... and stored');
my %bad = (
    'upper case' => '00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01',
    'a zero trace id' => '00-00000000000000000000000000000000-00f067aa0ba902b7-01',
    'a zero parent id' => '00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01',
    'version ff' => 'ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
    'version 00 with more' => '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x',
    'too short' => '00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01',
    'not hex' => '00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01',
);
for my $what (sort keys %bad) {
    $r = start($bad{$what}, name => 'bad');
    is($r->{status}, 202, "$what: still 202");
    my $got = $r->{headers}{traceparent} // '';
    ok($got =~ $FORMAT && $got ne $bad{$what} && $got ne $made,
       "... a new traceparent instead ($got)");
}

# a later version: read as version 00, passed on as 00
my $v1 = 'cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes';
$r = start($v1, name => 'v');
is($r->{headers}{traceparent},
   '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
   'a later version with more fields: its ids kept, as version 00');
$r = start('cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x',
           name => 'v');
isnt($r->{headers}{traceparent} // '', '',
     '... but not when the 56th character is not a dash');
unlike($r->{headers}{traceparent}, qr/4bf92f3577b34da6a3ce929d0e0e4736/,
       '... (a new trace then)');

# --- an idempotent replay keeps the job's first ----------------------------
$r = start($TP, name => 'key', key => 'k-trace');
my $kid = $r->{json}{jobId};
$r = start(undef, name => 'key', key => 'k-trace');
is($r->{status}, 200, 'a replay: 200');
is($r->{json}{jobId}, $kid, '... the same job');
is(stored($kid), $TP, "... which keeps its first traceparent");

done_testing();
