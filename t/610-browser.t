# The demo page (clients/demo, on the client module clients/js) in headless
# Chromium against the whole stack: nginx with the module serving the page
# and the API, PostgreSQL, the S3 server, the real worker, the origin.
# t/browser/demo.mjs drives the browser (Debian's chromium through npm's
# playwright-core) and reports what the page showed; this file passes its
# checks on and verifies the rest against the stack: the downloaded zip
# holds the origin's bytes, the jobs ended as the page said, polling went
# through the buffering proxy, a reload made no second job.
#
# ADL_SCREENSHOT=docs/demo.png keeps a picture of the finished 3-file job.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use Cwd qw(abs_path);
use File::Temp qw(tempdir);
use Time::HiRes qw(time);

my $ROOT = abs_path('.');
my $CHROMIUM = $ENV{ADL_CHROMIUM} || '/usr/bin/chromium';
# missing pieces fail this file (never a skip: the suite must run it)
-x $CHROMIUM or die "no $CHROMIUM: run scripts/install-deps.sh\n";
-d "$ROOT/t/browser/node_modules/playwright-core"
    or die "no playwright-core in t/browser: run scripts/install-deps.sh\n";

my $s = adl();
my $o = $s->{origin};

start_nginx(<<"EOF", http_config => <<'EOF2');
location /v1/download/ {
    async_dl;
    async_dl_owner \$adl_owner;
    async_dl_source_url "\$ADL_ORIGIN/files/{file_id}";
    async_dl_heartbeat 2s;
}
# the same API behind a proxy that holds the stream back: it ignores
# X-Accel-Buffering and compresses event streams (gzip keeps what it
# compresses until a buffer fills), as misconfigured proxies do
location /buffered/v1/download/ {
    proxy_pass http://127.0.0.1:\$ADL_PORT/v1/download/;
    proxy_http_version 1.1;
    proxy_buffering on;
    proxy_ignore_headers X-Accel-Buffering;
    gzip on;
    gzip_types text/event-stream;
    gzip_min_length 0;
}
location / {
    root $ROOT/clients/demo;
    types { text/html html; text/css css; text/javascript js; }
}
location /js/ {
    alias $ROOT/clients/js/;
    types { text/javascript js; }
}
EOF
map $http_x_user $adl_owner {
    ""      $cookie_adl_user;
    default $http_x_user;
}
EOF2
start_worker();

my %sha;
my %size = ('a.bin' => 300_000, 'b.bin' => 200_000, 'c.bin' => 100_001,
            'slow1.bin' => 640 * 1024, 'slow2.bin' => 512 * 1024,
            'slow3.bin' => 512 * 1024, 'slow4.bin' => 1024 * 1024);
for my $n (sort keys %size) {
    $sha{$n} = file_sha256(origin_file($n, $size{$n}));
}

# --- the browser ------------------------------------------------------------
my $out = tempdir(CLEANUP => 1);
my $shot = $ENV{ADL_SCREENSHOT} ? abs_path('.') . "/$ENV{ADL_SCREENSHOT}" : '';
$shot = $ENV{ADL_SCREENSHOT} if ($ENV{ADL_SCREENSHOT} // '') =~ m{^/};
local $ENV{ADL_URL} = "http://127.0.0.1:$s->{port}";
local $ENV{ADL_ORIGIN} = $o;
local $ENV{ADL_OUT} = $out;
local $ENV{ADL_SCREENSHOT} = $shot;
local $ENV{ADL_CHROMIUM} = $CHROMIUM;

my (%fact, $checks);
my $t0 = time;
my $pid = open(my $node, '-|', 'node', "$ROOT/t/browser/demo.mjs")
    or die "node: $!";
{
    local $SIG{ALRM} = sub { kill 'TERM', $pid; die "the browser run took over 300 s\n" };
    alarm 300;
    while (my $line = <$node>) {
        chomp $line;
        my $r = eval { decode_json($line) };
        if (!$r) { diag("demo.mjs: $line"); next }
        if (exists $r->{check}) {
            $checks++;
            ok($r->{ok}, "page: $r->{check}")
                or diag(explain($r->{diag}));
        } elsif (exists $r->{fact}) {
            $fact{$r->{fact}} = $r->{value};
        }
    }
    alarm 0;
}
close $node;
is($?, 0, 'the browser run exited 0');
ok($checks >= 30, "the browser run made its checks ($checks)");
diag(sprintf 'browser run: %.1f s (%s)', time - $t0,
     join(', ', map { "$_ $fact{$_} ms" } grep { /^ms_|fallback/ } sort keys %fact));

my %A = ('X-User' => 'alice');
sub doc { request('GET', "/v1/download/status/$_[0]", \%A)->{json} // {} }

# --- the zip and the file the browser downloaded ------------------------------
SKIP: {
    skip 'no zip downloaded', 4 unless $fact{zip} && -s $fact{zip};
    my $PY = -x '/usr/bin/python3' ? '/usr/bin/python3' : 'python3';
    my $json = `$PY - "$fact{zip}" <<'PY'
import hashlib, json, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
print(json.dumps({"bad": z.testzip(), "entries": {i.filename: hashlib.sha256(z.read(i)).hexdigest() for i in z.infolist()}}))
PY`;
    my $z = eval { decode_json($json) } || {};
    is($z->{bad}, undef, 'the downloaded zip tests clean');
    is_deeply([sort keys %{ $z->{entries} || {} }], [qw(a.bin b.bin c.bin)],
              'it holds the three files by name');
    is_deeply($z->{entries}, { map { $_ => $sha{$_} } qw(a.bin b.bin c.bin) },
              "... with the origin's bytes");
    is(file_sha256($fact{file1}), $sha{'b.bin'},
       "the file downloaded alone is the origin's b.bin");
}

# --- what the stack says of the jobs the page ran ----------------------------
is(doc($fact{job_stream})->{status}, 'completed', 'the streamed job completed');
my $p = doc($fact{job_poll});
is($p->{status}, 'completed', 'the polled job completed');
is_deeply([map { $_->{fileId} } @{ $p->{files} || [] }], [70001, 70002, 70003],
          '... with the sample file ids picked');
is(doc($fact{job_buffered})->{status}, 'completed', 'the job behind the buffering proxy completed');
is(doc($fact{job_reload})->{status}, 'completed', 'the reloaded job completed');
my $f = doc($fact{job_failing});
is($f->{files}[1]{error}{code}, 'HTTP_STATUS', 'the failing file failed with HTTP_STATUS');
is(doc($fact{job_cancel})->{status}, 'canceled', 'the canceled job is canceled');
is(request('GET', '/v1/download/jobs?limit=100', \%A)->{json}{total}, 6,
   "alice has the six jobs the page started: the reload made none");

my $access = AsyncDL::Stack::slurp("$s->{dir}/nginx/logs/access.log");
my $n_stream = () = $access =~ m{GET /v1/download/stream/\Q$fact{job_poll}\E}g;
is($n_stream, 0, 'without EventSource no stream was opened');
my $n_polls = () = $access =~ m{GET /v1/download/status/\Q$fact{job_poll}\E}g;
cmp_ok($n_polls, '>=', 1, "... but the status was polled ($n_polls times)");
ok($access =~ m{GET /buffered/v1/download/stream/\Q$fact{job_buffered}\E},
   'the buffered page tried the stream through the proxy');
my $n_bpolls = () = $access =~ m{GET /buffered/v1/download/status/\Q$fact{job_buffered}\E}g;
cmp_ok($n_bpolls, '>=', 2, "... then polled through it ($n_bpolls times)");
my $n_reload = () = $access =~ m{GET /v1/download/stream/\Q$fact{job_reload}\E}g;
# twice at least (EventSource may reconnect on its own under load)
cmp_ok($n_reload, '>=', 2, "the reloaded page opened the stream of the same job again ($n_reload)");
is(request('GET', "/v1/download/status/$fact{job_deleted}", \%A)->{status}, 404,
   'the job the page deleted is gone');
ok(-s $shot, "the screenshot is in $shot") if $shot;

done_testing();
