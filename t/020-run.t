# README's first command: scripts/run.sh (what `make run` starts after
# installing and building) brings up the whole stack from
# nginx.conf.example, serves health and a real job end to end, and stops
# everything it started on Ctrl-C.  And nginx.conf.example passes nginx -t.
# The demo page's parts (its adl_user cookie as the owner, its CSRF guard,
# the page at /) are make run's alone: nginx.conf.example itself, run on
# the same stack, takes X-User only.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use File::Temp qw(tempdir);
use IO::Socket::INET;
use POSIX qw(:sys_wait_h);
use Time::HiRes qw(sleep time);

my $build = $ENV{ADL_BUILD} || 'build';
my $module = $ENV{ADL_MODULE} || "$build/nginx/ngx_http_async_dl_module.so";
my $dir = tempdir('adl-run-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0755, $dir;

sub port {
    my $s = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1',
                                  LocalPort => 0) or die $!;
    return $s->sockport;
}

my @env = `ldd $module` =~ /libasan/
    ? ('env', 'LD_PRELOAD=' . `gcc -print-file-name=libasan.so` =~ s/\n//r,
       'ASAN_OPTIONS=detect_leaks=0')
    : ();

# --- nginx -t on the example, paths adjusted --------------------------------
{
    mkdir "$dir/t";
    mkdir "$dir/t/$_" for qw(logs tmp www);
    open my $in, '<', 'nginx.conf.example' or die $!;
    my $conf = do { local $/; <$in> };
    $conf =~ s{/usr/lib/nginx/modules/ngx_http_async_dl_module\.so}{$module};
    $conf =~ s{/var/lib/async-dl}{$dir/t}g;
    open my $out, '>', "$dir/t/nginx.conf" or die $!;
    print $out $conf;
    close $out;
    my $log = `@env /usr/sbin/nginx -t -p $dir/t/ -c $dir/t/nginx.conf 2>&1`;
    is($?, 0, 'nginx -t accepts nginx.conf.example with the module')
        or diag($log);
    unlike($conf, qr/cookie_adl_user|async_dl_demo/,
           'nginx.conf.example has none of the demo\'s cookie owner');
    like($conf, qr/^\s*async_dl_owner \$http_x_user;/m, '... its owner is X-User');
}

# --- the stack ---------------------------------------------------------------
my ($port, $pg_port, $s3_port) = (port(), port(), port());
my $pid = fork;
die "fork: $!" unless defined $pid;
if ($pid == 0) {
    setpgrp(0, 0);
    open STDOUT, '>', "$dir/run.out";
    open STDERR, '>&', \*STDOUT;
    $ENV{PORT} = $port;
    $ENV{PG_PORT} = $pg_port;
    $ENV{S3_PORT} = $s3_port;
    $ENV{BUILD} = $build;
    $ENV{RUN_DIR} = "$dir/run";
    exec 'scripts/run.sh' or die "exec: $!";
}

my $base = "http://127.0.0.1:$port/v1/download";
my %user = ('X-User' => 'demo');
ok(wait_until(sub { request('GET', "$base/health")->{status} == 200 }, 60,
              'health'), 'make run serves health with 200')
    or diag(join "\n", map { "== $_\n" . (do { local $/; open my $fh, '<', $_;
                                               <$fh> // '' }) }
                      "$dir/run.out", glob("$dir/run/logs/*"));

my $out = '';
wait_until(sub {
    $out = do { local $/; open my $fh, '<', "$dir/run.out"; <$fh> // '' };
    return $out =~ /Ctrl-C/;
}, 20);
like($out, qr/curl .*initiate/, 'and prints a curl line to try');

my $r = request('POST', "$base/initiate",
                { %user, 'Content-Type' => 'application/json' },
                '{"file_ids":[70000,70001]}');
is($r->{status}, 202, 'a job of sample file ids is accepted');
my $id = $r->{json}{jobId};
my $st;
wait_until(sub {
    $st = request('GET', "$base/status/$id", \%user)->{json};
    return $st && $st->{status} eq 'completed' && $st->{bundle}
        && ($st->{bundle}{status} // '') eq 'completed';
}, 60, 'the job and its zip');
is($st->{status}, 'completed', 'the worker downloads the sample files');

$r = request('GET', "$base/$id/files/1", \%user);
is($r->{status}, 302, 'a stored file redirects');
my $file = request('GET', $r->{headers}{location});
is($file->{status}, 200, 'to a link the S3 store serves');
is(length $file->{content}, 1024 * 1024, 'with the sample file');

# the demo page at /, its client module as JavaScript (a module script
# needs the type), and the owner from the page's cookie (EventSource sends
# no headers)
$r = request('GET', "http://127.0.0.1:$port/");
is($r->{status}, 200, 'make run serves the demo page at /');
like($r->{content}, qr{<script type="module" src="app.js">}, '... the page on app.js');
$r = request('GET', "http://127.0.0.1:$port/js/async-dl.js");
is($r->{status}, 200, '... and the client module');
like($r->{headers}{'content-type'} // '', qr{^text/javascript}, '... as JavaScript');
$r = request('GET', "$base/status/$id", { Cookie => 'adl_user=demo' });
is($r->{status}, 200, "the adl_user cookie is the owner where X-User is absent");
is(request('GET', "$base/status/$id", { Cookie => 'adl_user=other' })->{status}, 404,
   "... another owner's cookie sees no job");

# the demo's CSRF guard: a POST or DELETE only the cookie owns needs
# X-Requested-With; X-User requests (curl) and the client (which sends it)
# pass
$r = request('POST', "$base/$id/cancel", { Cookie => 'adl_user=demo' });
is($r->{status}, 403, 'a cookie-owned POST without X-Requested-With is refused (CSRF)');
is($r->{json} && $r->{json}{error}{code}, 'CSRF_REFUSED', '... saying why, in JSON');
is(request('DELETE', "$base/$id", { Cookie => 'adl_user=demo' })->{status}, 403,
   '... and so is a DELETE');
$r = request('POST', "$base/$id/cancel",
             { Cookie => 'adl_user=demo', 'X-Requested-With' => 'XMLHttpRequest' });
ok($r->{status} != 403 && $r->{status} != 401,
   "with X-Requested-With the cookie's POST reaches the API ($r->{status})");
$r = request('POST', "$base/$id/cancel", \%user);
ok($r->{status} != 403 && $r->{status} != 401, "an X-User POST needs no more ($r->{status})");
is(request('GET', "$base/status/$id", \%user)->{json}{status}, 'completed',
   '... and the job is still there');

# --- nginx.conf.example itself, on the same stack: X-User only --------------
{
    my $ex = "$dir/example";
    mkdir $ex;
    mkdir "$ex/$_" for qw(logs tmp www);
    chmod 0777, "$ex/logs", "$ex/tmp";
    my $ex_port = port();
    open my $in, '<', 'nginx.conf.example' or die $!;
    my $conf = do { local $/; <$in> };
    $conf =~ s{/usr/lib/nginx/modules/ngx_http_async_dl_module\.so}{$module};
    $conf =~ s{127\.0\.0\.1:8080}{127.0.0.1:$ex_port}g;
    $conf =~ s{port=5432}{port=$pg_port};
    $conf =~ s{127\.0\.0\.1:9000}{127.0.0.1:$s3_port}g;
    $conf =~ s{/var/lib/async-dl}{$ex}g;
    open my $out, '>', "$ex/nginx.conf" or die $!;
    print $out $conf;
    close $out;
    my $log = `@env /usr/sbin/nginx -p $ex/ -c $ex/nginx.conf 2>&1`;
    is($?, 0, 'nginx.conf.example runs on the stack') or diag($log);
    my $eb = "http://127.0.0.1:$ex_port/v1/download";
    ok(wait_until(sub { request('GET', "$eb/health")->{status} == 200 }, 20, 'example health'),
       '... and serves health');
    is(request('GET', "$eb/status/$id", \%user)->{status}, 200, '... the job by X-User');
    $r = request('GET', "$eb/status/$id", { Cookie => 'adl_user=demo' });
    is($r->{status}, 401, 'nginx.conf.example does not take the adl_user cookie as the owner');
    is(request('GET', "http://127.0.0.1:$ex_port/")->{status}, 404,
       '... nor serve the demo page');
    my $expid = do { local $/; open my $fh, '<', "$ex/logs/nginx.pid"; <$fh> // '' };
    chomp $expid;
    if ($expid) {
        kill 'QUIT', $expid;
        my $t = time + 10;
        sleep 0.1 while kill(0, $expid) && time < $t;
    }
}

kill 'INT', $pid;
my $until = time + 30;
sleep 0.1 while waitpid($pid, WNOHANG) == 0 && time < $until;
ok(time < $until, 'Ctrl-C stops make run');
my @left = grep { /\Q$dir\E/ } `ps -eo args`;
is("@left", '', 'and leaves no process of the stack behind');
kill 'KILL', -$pid;

done_testing();
