package AsyncDL::Stack;

=head1 NAME

AsyncDL::Stack - the real components a test file stands on

=head1 SYNOPSIS

    use lib 't/lib';
    use AsyncDL::Stack;

    my $s = adl();                      # starts the stack on first use
    start_nginx('location /v1/download/ { async_dl; }');
    start_worker();
    my $id = add_job(["$s->{origin}/files/70000"]);
    is(wait_ended($id), 'completed');

=head1 DESCRIPTION

Each test file gets its own stack, every piece on a free loopback port and
under one temporary folder, started on first use and stopped when the file
ends, also when a test dies:

=over

=item PostgreSQL - a private cluster (initdb), schema applied by the real
C<async-dl-worker --migrate>.

=item S3 - C<@20minutes/s3rver> (t/s3), which verifies SigV4 signatures;
bucket C<async-dl>, credentials C<S3RVER>/C<S3RVER>, region C<us-east-1>.

=item origin - an nginx serving generated files, with locations that fail
the ways origins fail (see L</ORIGIN>), plus C<t/tools/flaky-origin.pl>
for failures that need memory (500 then 200, reset mid-body then Range).

=item worker - the built C<async-dl-worker>, started by C<start_worker>.

=item nginx - the system nginx with the built module loaded, configured
per block.

=back

Placeholders in nginx configs (C<expand>): C<$ADL_PG> (libpq conninfo),
C<$ADL_PG_PORT>, C<$ADL_S3_ENDPOINT>, C<$ADL_S3_BUCKET>, C<$ADL_ORIGIN>
(http://127.0.0.1:port of the origin nginx), C<$ADL_FLAKY> (the flaky
origin), C<$ADL_PORT> (this nginx), C<$ADL_DIR> (the stack's folder),
C<$ADL_S3_PROXY> (once L</S3 FAULT PROXY> runs).

When the file ends, a crash or a sanitizer report in any log of nginx or
of a worker fails it, whatever its tests said.

=head1 FUNCTIONS

C<adl()> the stack's facts (pg_port, pg_conninfo, database_url,
s3_endpoint, s3_port, origin, flaky, port, dir); C<start_nginx($config,
%opt)>, C<stop_nginx()>; C<psql($sql)>;
C<start_worker(%env)>, C<stop_worker($signal)>, C<worker_log()>;
C<pg_stop()>, C<pg_start()>; C<s3_object($key)> (bytes or undef);
C<s3_keys()>; C<origin_file($name, $size)> creates a random file served at
$ADL_ORIGIN/f/$name and returns its path; C<sparse_file($name, $size)>;
C<flaky_bytes($key, $size)>; C<sha256_hex($bytes)>, C<file_sha256($path)>;
C<wait_until($sub, $seconds, $what)>; C<error_log_mark()>,
C<error_log_since($mark)>; C<origin_log()> the origin's access log, lines of
"$msec $request_time $status $request_uri".

Jobs queued straight into PostgreSQL, as the module does (the worker
tests): C<add_job(\@urls, timeout =E<gt> $seconds, names =E<gt> \@names)>
inserts a pending job of those files (timeout 60 by default, names NULL
where not given) and returns its id; C<job_status($id)>;
C<wait_ended($id, $seconds)> waits (30 s by default) for the job to be
completed, failed or canceled and returns its status.

A worker's calls played by hand: C<claim_one()> claims the next file as
worker "w1" (returns how many were claimed); C<file_lease($id, $idx)> is
the SQL for that file's lease token; C<file_progress($id, $idx, $done,
$total)> reports its bytes under that lease.

Several instances: C<start_nginx($config, instance =E<gt> $n)> starts
nginx instance C<$n> (0, the default, is the one blocks and
L<AsyncDL::Client/request> use) with its own folder
(C<$ADL_DIR/nginx-$n>) and port (C<nginx_port($n)>; C<request> takes a
full URL);
C<stop_nginx($n)>; C<nginx_log($n)> (all instances without C<$n>).
C<restart_worker($n, %env)> starts worker C<$n> again with its settings
(after C<stop_worker('KILL', $n)>, say), appending to its log.
C<pg_stop('immediate')> crashes PostgreSQL (C<'fast'> by default);
C<pg_log()> is its log.

C<start_nginx($config, modules =E<gt> $text, prefix =E<gt> $dir)>: $text
in place of the C<load_module> line of the built module (e.g. the
packaged C<include /etc/nginx/modules-enabled/*.conf;>), and nginx's
prefix (C<-p>; the instance's folder by default), against which relative
C<load_module> paths resolve.

C<start_nginx($config, pg_conninfo =E<gt> $conninfo)> keeps the default
async_dl_* http directives but with another libpq conninfo (placeholders
such as C<$ADL_PG_PORT> are expanded); C<s3_endpoint =E<gt> $url> likewise
for the S3 endpoint (e.g. C<'$ADL_S3_PROXY'>, see L</S3 FAULT PROXY>).

=head1 S3 FAULT PROXY

C<s3_proxy()> starts C<t/tools/s3-fault-proxy.pl> (once) on a free port
in front of the stack's s3rver and returns its endpoint
(C<http://127.0.0.1:port>; C<$ADL_S3_PROXY> in configs).  Point a worker
at it with C<start_worker(ASYNC_DL_S3_ENDPOINT =E<gt> s3_proxy())> and
nginx with C<start_nginx($config, s3_endpoint =E<gt> '$ADL_S3_PROXY')>
(presigned links then go through it too).  It forwards the bytes as sent,
Host header included, so SigV4 signatures still verify; one process a
connection, so a stalled connection never holds up another.

C<s3_fault($fault, %opt)> switches what it does from now on, for new
requests and kept-alive connections alike:

    s3_fault('pass')                  forward everything (the default)
    s3_fault('down')                  refuse connections, reset those open
    s3_fault('slowdown', retry_after => 1)   503 <Code>SlowDown</Code>
    s3_fault('error500')              500 <Code>InternalError</Code>
    s3_fault('reset')                 forward, then reset mid-answer
    s3_fault('reset', when => 'request')     reset before forwarding
    s3_fault('delay', delay => 2)     wait 2 s, then forward
    s3_fault('delay', delay => 2, when => 'response')
                                      forward, hold the answer 2 s

Options: C<match =E<gt> 'partNumber'> only requests whose request line
("PUT /bucket/key?partNumber=1&uploadId=... HTTP/1.1") contains that
substring ("uploads", "PUT", "DELETE", a key...); C<count =E<gt> 5> only
that many of them, then pass again; C<rate =E<gt> 0.3> that fraction of
them.  C<down> with a match or a count resets the matching requests'
connections instead of refusing all.  C<s3_faults(\%rule, ...)> sets
several rules at once (the first that applies to a request decides; a
C<pass> rule can carve out exceptions); C<s3_fault_rules()> returns them
with C<used>, how many requests each hit; C<s3_fault_log()> every fault
given as [epoch, fault, request line] (and down-start / down-end);
C<s3_fault_counts()> a hash fault =E<gt> count.  C<s3_proxy_stop()>.

    my $ep = s3_proxy();
    start_worker(ASYNC_DL_S3_ENDPOINT => $ep);
    s3_fault('slowdown', match => 'partNumber', count => 5);
    ... # the next 5 UploadPart requests get 503 SlowDown
    is(s3_fault_rules()->[0]{used}, 5, 'the parts were slowed down');

L<AsyncDL::Chaos> (bench/chaos, t/900-chaos-short.t) builds its
fault-injection run on these: two nginx instances, two workers, the
proxy, PostgreSQL crashes.

=head1 ORIGIN

    /files/<id>        generated files for ids 70000..70009
    /f/<name>          files made with origin_file() / sparse_file()
    /slow/<name>?rate=N   the same, sent at N bytes/s (default 16k)
    /chunked/<name>    the same, without Content-Length
    /slowchunked/<name>?rate=N   without Content-Length, at N bytes/s
    /noranges/<name>   the same, Range ignored
    /status/<code>     404 403 408 429 500 502 503 (429/503: Retry-After: 1)
    /redirect/1 .. /redirect/6   a chain of N redirects ending at /f/small.txt
    /redirect/loop     redirects to itself forever
    /redirect/private  to http://10.255.255.1/x
    /redirect/metadata to http://169.254.169.254/latest/meta-data/
    /redirect/loopback to http://127.0.0.1:<origin>/f/small.txt
    /redirect/ftp      to ftp://127.0.0.1/x
    /sleep             never sends a byte (a proxy to the flaky origin's /hang)

flaky origin ($ADL_FLAKY):

    /fail/<key>?n=N&size=S&code=C   C (500) N times, then 200 with S bytes
    /reset/<key>?size=S&at=A        first time: Content-Length S, A bytes,
                                    then a TCP reset; later: honours Range
                                    (&resize=N: later it is another file,
                                    flaky_bytes("<key>-v2", N))
    /retry-after/<key>?n=N&after=T  429 + Retry-After: T, N times, then 200
    /hang                           accepts, never answers
    /callback/<key>?fail=N          records POSTs; answers 500 N times first
    /requests/<key>                 how many requests <key> got (text)


Requests to the stack's nginx are L<AsyncDL::Client>'s; the blocks of a
test file are run by L<AsyncDL::Blocks>.

=cut

use strict;
use warnings;

use Cwd qw(abs_path);
use Digest::SHA qw(sha256_hex);
use Exporter qw(import);
use File::Basename qw(dirname);
use File::Path qw(make_path);
use File::Temp qw(tempdir);
use Fcntl qw(O_WRONLY O_CREAT O_EXCL);
use IO::Socket::INET;
use JSON::PP;
use POSIX qw(:sys_wait_h);
use Time::HiRes qw(sleep time);
use Test::More ();

our @EXPORT = qw(
    adl start_nginx stop_nginx nginx_port psql start_worker stop_worker
    restart_worker worker_log worker_pid pg_stop pg_start pg_log s3_object
    s3_keys origin_file sparse_file flaky_bytes sha256_hex file_sha256
    wait_until error_log_mark error_log_since nginx_log origin_log add_job
    job_status wait_ended s3_proxy s3_proxy_start s3_proxy_stop s3_fault
    s3_faults s3_fault_rules s3_fault_log s3_fault_counts scripted_server
    claim_one file_lease file_progress
);
# the pieces some tests and benchmarks drive by hand
our @EXPORT_OK = qw(
    free_port wait_port spawn stop_pid run_quiet as_postgres nginx_conf
    expand worker_env sql_literal slurp write_file
);
our %EXPORT_TAGS = (all => [@EXPORT, @EXPORT_OK]);

my $ROOT = abs_path(dirname(__FILE__) . '/../../..');
my $BUILD = $ENV{ADL_BUILD} || "$ROOT/build";
my $MODULE = $ENV{ADL_MODULE} || "$BUILD/nginx/ngx_http_async_dl_module.so";
my $WORKER = $ENV{ADL_WORKER} || "$BUILD/async-dl-worker";
my $NGINX = $ENV{ADL_NGINX} || '/usr/sbin/nginx';     # under test
my $ORIGIN_NGINX = '/usr/sbin/nginx';                 # a fixture (sub_filter)
my $PGBIN = $ENV{ADL_PGBIN} || '/usr/lib/postgresql/15/bin';
my $SANITIZE = $BUILD =~ /-san\b/ ? 1 : ($ENV{ADL_SANITIZE} || 0);
my $JSON = JSON::PP->new->canonical->allow_nonref;

my %S;            # the stack: ports, folders, pids
my $OWNER_PID = $$;

# --- processes ------------------------------------------------------------

# A port below the kernel's ephemeral range (32768-60999 by default): the
# tests' own outbound connections take their local ports from that range, so
# a port chosen there can be taken between this check and the server's bind
# (PostgreSQL "did not start" under prove -j).  Random, so that test files
# starting stacks at once rarely try the same one; bound to check it is free.
# Ports free_port handed out, reserved across the test processes running
# at once (prove -j2): a port is chosen long before its server binds it,
# and another test choosing it meanwhile would find the first one's server
# there.  A reservation is a file naming its process; one whose process is
# gone is stale.
my $PORTS = '/tmp/adl-ports';
my @RESERVED;

sub reserve_port {
    my ($port) = @_;
    make_path($PORTS) unless -d $PORTS;
    my $f = "$PORTS/$port";
    for (1 .. 2) {
        if (sysopen my $fh, $f, O_WRONLY | O_CREAT | O_EXCL) {
            print $fh $$;
            close $fh;
            push @RESERVED, $f;
            return 1;
        }
        open my $in, '<', $f or next;       # gone meanwhile: try again
        my $pid = <$in> // '';
        close $in;
        return 0 unless $pid =~ /^\d+$/ && !kill(0, $pid);
        unlink $f;                          # its process is gone
    }
    return 0;
}

END { unlink @RESERVED if $$ == $OWNER_PID }

sub free_port {
    my ($lo, $hi) = (20000, 32000);
    if (open my $fh, '<', '/proc/sys/net/ipv4/ip_local_port_range') {
        my ($elo) = split ' ', scalar <$fh>;
        $hi = $elo - 1 if $elo && $elo - 1 < $hi && $elo - 1 > $lo + 1000;
    }
    for (1 .. 200) {
        my $port = $lo + int rand($hi - $lo);
        my $s = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1',
                                      LocalPort => $port, Proto => 'tcp')
            or next;
        close $s;
        next unless reserve_port($port);
        return $port;
    }
    die "no free port in $lo-$hi\n";
}

sub wait_port {
    my ($port, $what, $pid) = @_;
    my $until = time + 20;
    while (time < $until) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                      Proto => 'tcp', Timeout => 1);
        if ($s) { close $s; return 1 }
        if ($pid && waitpid($pid, WNOHANG) == $pid) {
            die "$what exited at start (status $?)\n";
        }
        sleep 0.02;
    }
    die "$what did not listen on 127.0.0.1:$port within 20 s\n";
}

# Starts a child with its stdout and stderr in $log; returns its pid.
sub spawn {
    my ($log, $env, @cmd) = @_;
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', $log or die "$log: $!";
        open STDERR, '>&', \*STDOUT;
        %ENV = (%ENV, %$env);
        exec @cmd or die "exec $cmd[0]: $!";
    }
    return $pid;
}

sub stop_pid {
    my ($pid, $sig, $grace) = @_;
    return unless $pid;
    kill $sig // 'TERM', $pid;
    my $until = time + ($grace // 10);
    while (time < $until) {
        return $? if waitpid($pid, WNOHANG) == $pid;
        sleep 0.02;
    }
    kill 'KILL', $pid;
    waitpid($pid, 0);
    return $?;
}

sub run_quiet {
    my ($log, @cmd) = @_;
    my $pid = spawn($log, {}, @cmd);
    waitpid($pid, 0);
    return $? >> 8;
}

sub as_postgres {
    return $> == 0 ? ('runuser', '-u', 'postgres', '--', @_) : @_;
}

# --- the stack --------------------------------------------------------------

sub adl {
    stack_up() unless $S{up};
    return \%S;
}

sub stack_up {
    return if $S{up};
    $S{up} = 1;
    $S{dir} = tempdir('adl-test-XXXXXX', TMPDIR => 1,
                      CLEANUP => !$ENV{ADL_KEEP});
    chmod 0755, $S{dir};
    make_path(map { "$S{dir}/$_" } qw(logs pg pgsock s3 origin/files origin/f
                                       origin/logs origin/tmp nginx/logs
                                       nginx/tmp flaky));
    chmod 0777, "$S{dir}/logs";
    Test::More::diag("stack in $S{dir}") if $ENV{ADL_KEEP};

    $S{port} = free_port();
    pg_init();
    pg_start();
    migrate();
    s3_start();
    origin_start();
    flaky_start();
}

sub pg_init {
    $S{pg_port} = free_port();
    if ($> == 0) {
        system('chown', '-R', 'postgres', "$S{dir}/pg", "$S{dir}/pgsock") == 0
            or die "chown: $?";
    }
    run_quiet("$S{dir}/logs/initdb.log",
              as_postgres("$PGBIN/initdb", '-D', "$S{dir}/pg/data", '-U',
                          'postgres', '-A', 'trust', '--no-sync', '-E', 'UTF8',
                          '--locale=C.UTF-8')) == 0
        or die "initdb failed: see $S{dir}/logs/initdb.log\n";
    $S{pg_conninfo} = "host=127.0.0.1 port=$S{pg_port} dbname=postgres "
                    . "user=postgres";
    $S{database_url} = "postgresql://postgres\@127.0.0.1:$S{pg_port}/postgres";
}

sub pg_start {
    run_quiet("$S{dir}/logs/pg_ctl.log",
              as_postgres("$PGBIN/pg_ctl", '-D', "$S{dir}/pg/data", '-l',
                          "$S{dir}/logs/postgresql.log", '-w', '-o',
                          "-k $S{dir}/pgsock -p $S{pg_port} "
                          . '-c listen_addresses=127.0.0.1 -c fsync=off '
                          . '-c max_connections=300 '
                          . '-c synchronous_commit=off', 'start')) == 0
        or die "PostgreSQL did not start: see $S{dir}/logs/postgresql.log\n";
    $S{pg_running} = 1;
}

# pg_stop($mode): 'fast' (the default), 'immediate' (a crash: no
# checkpoint, recovery at the next start) or 'smart'.
sub pg_stop {
    my ($mode) = @_;
    return unless $S{pg_running};
    run_quiet("$S{dir}/logs/pg_ctl.log",
              as_postgres("$PGBIN/pg_ctl", '-D', "$S{dir}/pg/data", '-m',
                          $mode // 'fast', '-w', 'stop'));
    $S{pg_running} = 0;
}

sub pg_log { return slurp("$S{dir}/logs/postgresql.log") }

sub migrate {
    -x $WORKER or die "no worker binary at $WORKER: run make first\n";
    my $rc = run_quiet("$S{dir}/logs/migrate.log", $WORKER, '--migrate',
                       "--database-url=$S{database_url}");
    $rc == 0 or die "async-dl-worker --migrate failed ($rc): "
                    . slurp("$S{dir}/logs/migrate.log");
}

sub s3_start {
    $S{s3_port} = free_port();
    $S{s3_endpoint} = "http://127.0.0.1:$S{s3_port}";
    $S{s3_bucket} = 'async-dl';
    -d "$ROOT/t/s3/node_modules/\@20minutes/s3rver"
        or die "the S3 server is not installed: run scripts/install-deps.sh\n";
    $S{s3_pid} = spawn("$S{dir}/logs/s3.log", {}, 'node',
                       "$ROOT/t/s3/server.js", '-d', "$S{dir}/s3", '-a',
                       '127.0.0.1', '-p', $S{s3_port}, '--silent',
                       '--configure-bucket', $S{s3_bucket});
    wait_port($S{s3_port}, 'the S3 server', $S{s3_pid});
}

sub origin_start {
    $S{origin_port} = free_port();
    $S{flaky_port} = free_port();
    $S{origin} = "http://127.0.0.1:$S{origin_port}";
    $S{flaky} = "http://127.0.0.1:$S{flaky_port}";
    my $d = "$S{dir}/origin";

    # file ids 70000..70009: 1 KiB to 2.5 MiB of random bytes
    for my $i (0 .. 9) {
        write_random("$d/files/" . (70000 + $i), 1024 + $i * $i * 32 * 1024);
    }
    origin_file('small.txt', 0, "hello from the origin\n");

    my $conf = <<"EOF";
daemon off;
worker_processes 1;
error_log $d/logs/error.log warn;
pid $d/nginx.pid;
events { worker_connections 1024; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    # when each request started (\$msec is when it ended): for benchmarks;
    # then the Range it asked for ("-": none)
    log_format adl '\$msec \$request_time \$status \$request_uri '
                   '"\$http_range"';
    access_log $d/logs/access.log adl;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
    server {
        listen 127.0.0.1:$S{origin_port};
        server_name origin;
        location /files/ { alias $d/files/; default_type application/octet-stream; }
        location /f/ { alias $d/f/; }
        location /slow/ {
            alias $d/f/;
            set \$rate 16k;
            if (\$arg_rate) { set \$rate \$arg_rate; }
            limit_rate \$rate;
        }
        location /chunked/ {
            alias $d/f/;
            sub_filter_types *;
            sub_filter '\\0' '\\0';
            sub_filter_once on;
        }
        location /noranges/ { alias $d/f/; max_ranges 0; }
        # fast for ?after= bytes, then ?rate= bytes a second
        location /trickle/ {
            alias $d/f/;
            limit_rate_after \$arg_after;
            limit_rate \$arg_rate;
        }
        location /slowchunked/ {
            alias $d/f/;
            set \$rate 16k;
            if (\$arg_rate) { set \$rate \$arg_rate; }
            limit_rate \$rate;
            sub_filter_types *;
            sub_filter '\\0' '\\0';
            sub_filter_once on;
        }
        location = /status/404 { return 404; }
        location = /status/403 { return 403; }
        location = /status/408 { return 408; }
        location = /status/500 { return 500; }
        location = /status/502 { return 502; }
        location = /status/429 { add_header Retry-After 1 always; return 429; }
        location = /status/503 { add_header Retry-After 1 always; return 503; }
        location = /redirect/1 { return 302 /f/small.txt; }
        location = /redirect/2 { return 302 /redirect/1; }
        location = /redirect/3 { return 301 /redirect/2; }
        location = /redirect/4 { return 307 /redirect/3; }
        location = /redirect/5 { return 308 /redirect/4; }
        location = /redirect/6 { return 302 /redirect/5; }
        location = /redirect/loop { return 302 /redirect/loop; }
        location = /redirect/private { return 302 http://10.255.255.1/x; }
        location = /redirect/metadata {
            return 302 http://169.254.169.254/latest/meta-data/;
        }
        location = /redirect/loopback { return 302 $S{origin}/f/small.txt; }
        location = /redirect/ftp { return 302 ftp://127.0.0.1/x; }
        location = /sleep {
            proxy_pass $S{flaky}/hang;
            proxy_read_timeout 1h;
        }
    }
}
EOF
    write_file("$d/nginx.conf", $conf);
    $S{origin_pid} = spawn("$d/logs/stderr.log", {}, $ORIGIN_NGINX, '-p', "$d/",
                           '-c', "$d/nginx.conf");
    wait_port($S{origin_port}, 'the origin nginx', $S{origin_pid});
}

sub flaky_start {
    $S{flaky_pid} = spawn("$S{dir}/logs/flaky.log", {}, $^X,
                          "$ROOT/t/tools/flaky-origin.pl", $S{flaky_port},
                          "$S{dir}/flaky");
    wait_port($S{flaky_port}, 'the flaky origin', $S{flaky_pid});
}

# --- the S3 fault proxy -----------------------------------------------------

# s3_proxy_start(): starts t/tools/s3-fault-proxy.pl on a free port in front
# of the stack's s3rver (once; later calls return the same) and returns its
# endpoint, http://127.0.0.1:port.
sub s3_proxy_start {
    adl();
    return $S{s3_proxy} if $S{s3_proxy_pid};
    $S{s3_proxy_port} = free_port();
    $S{s3_proxy} = "http://127.0.0.1:$S{s3_proxy_port}";
    $S{s3_fault_control} = "$S{dir}/s3-faults.json";
    $S{s3_fault_log} = "$S{dir}/logs/s3-faults.log";
    write_file($S{s3_fault_control}, '{"rules":[]}');
    $S{s3_proxy_pid} = spawn("$S{dir}/logs/s3-proxy.log", {}, $^X,
                             "$ROOT/t/tools/s3-fault-proxy.pl",
                             $S{s3_proxy_port}, $S{s3_port},
                             $S{s3_fault_control}, $S{s3_fault_log});
    wait_port($S{s3_proxy_port}, 'the S3 fault proxy', $S{s3_proxy_pid});
    return $S{s3_proxy};
}

sub s3_proxy { return s3_proxy_start() }

sub s3_proxy_stop {
    return unless $S{s3_proxy_pid};
    stop_pid($S{s3_proxy_pid}, 'TERM', 5);
    delete $S{s3_proxy_pid};
}

# s3_faults(\%rule, ...): replaces the proxy's rules (none: pass all).
sub s3_faults {
    my (@rules) = @_;
    s3_proxy_start();
    for my $r (@rules) {
        die "s3_fault: unknown fault $r->{fault}\n"
            unless ($r->{fault} // '') =~ /^(pass|down|slowdown|error500|reset|delay)$/;
        $r->{used} //= 0;
    }
    open my $fh, '>>', $S{s3_fault_control} or die "$S{s3_fault_control}: $!";
    flock $fh, 2;                               # LOCK_EX
    truncate $fh, 0;
    print $fh $JSON->encode({ rules => \@rules });
    close $fh or die "$S{s3_fault_control}: $!";
    if (grep { $_->{fault} eq 'down' && !defined $_->{match}
               && !defined $_->{count} } @rules) {
        sleep 0.3;                  # the proxy closes its listener within 0.1 s
    }
}

# s3_fault($fault, match => $substring, count => $n, rate => $fraction,
#          retry_after => $seconds, delay => $seconds, when => 'request')
sub s3_fault {
    my ($fault, %o) = @_;
    return s3_faults() if $fault eq 'pass' && !%o;
    return s3_faults({ %o, fault => $fault });
}

# The rules as the proxy left them ("used" counts the requests they hit).
sub s3_fault_rules {
    open my $fh, '<', $S{s3_fault_control} or return [];
    flock $fh, 1;                               # LOCK_SH
    local $/;
    my $c = eval { $JSON->decode(<$fh> // '') };
    return $c ? $c->{rules} : [];
}

# [[epoch, fault, request line], ...] of every fault given so far
sub s3_fault_log {
    return [map { [split / /, $_, 3] } grep { length }
            split /\n/, slurp($S{s3_fault_log} // '')];
}

# { fault => how many requests got it }
sub s3_fault_counts {
    my %n;
    $n{$_->[1]}++ for @{ s3_fault_log() };
    return \%n;
}

# --- the nginx under test ---------------------------------------------------

sub default_http_config {
    my ($conninfo, $s3) = @_;
    $conninfo //= $S{pg_conninfo};
    $s3 //= $S{s3_endpoint};
    return <<"EOF";
    async_dl_postgres "$conninfo";
    async_dl_s3_endpoint $s3;
    async_dl_s3_bucket $S{s3_bucket};
    async_dl_s3_region us-east-1;
    async_dl_s3_access_key S3RVER;
    async_dl_s3_secret_key S3RVER;
    ${\ ($ENV{ADL_STATUS_CACHE} ? "async_dl_status_cache $ENV{ADL_STATUS_CACHE};" : '')}
EOF
}

sub expand {
    my ($text) = @_;
    return '' unless defined $text;
    my %v = (ADL_PG => $S{pg_conninfo}, ADL_PG_PORT => $S{pg_port},
             ADL_S3_ENDPOINT => $S{s3_endpoint},
             ADL_S3_BUCKET => $S{s3_bucket}, ADL_ORIGIN => $S{origin},
             ADL_FLAKY => $S{flaky}, ADL_PORT => $S{port},
             ADL_DIR => $S{dir},
             ($S{s3_proxy} ? (ADL_S3_PROXY => $S{s3_proxy}) : ()));
    $text =~ s/\$(ADL_[A-Z0-9_]+)\b/exists $v{$1} ? $v{$1} : "\$$1"/ge;
    return $text;
}

# The folder and port of nginx instance $n (0: the one the blocks use).
sub nginx_instance {
    my ($n) = @_;
    $n //= 0;
    my $i = $S{ngx}[$n] ||= {};
    $i->{dir} //= $n ? "$S{dir}/nginx-$n" : "$S{dir}/nginx";
    $i->{port} //= $n ? free_port() : $S{port};
    if (!-d "$i->{dir}/logs") {
        make_path("$i->{dir}/logs", "$i->{dir}/tmp");
    }
    return $i;
}

sub nginx_port { adl(); return nginx_instance($_[0])->{port} }

sub nginx_conf {
    my ($config, %opt) = @_;
    my $inst = nginx_instance($opt{instance});
    my $d = $inst->{dir};
    my $http = defined $opt{adl_http_config}
             ? $opt{adl_http_config}
             : default_http_config(expand($opt{pg_conninfo}) || undef,
                                   expand($opt{s3_endpoint}) || undef);
    my $level = $ENV{ADL_DEBUG} ? 'debug' : 'info';
    return expand(<<"EOF");
daemon off;
master_process on;
worker_processes ${\ ($opt{workers} // 1)};
${\ ($opt{modules} // "load_module $MODULE;")}
error_log $d/logs/error.log $level;
pid $d/logs/nginx.pid;
${\ ($opt{main_config} // '')}
events { worker_connections 4096; }
http {
    access_log $d/logs/access.log;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
$http
${\ ($opt{http_config} // '')}
    server {
        listen 127.0.0.1:$inst->{port};
        server_name localhost;
$config
    }
}
EOF
}

sub sanitizer_env {
    return () unless $SANITIZE;
    # the module is instrumented, nginx itself is not: the runtime must be
    # loaded first.  nginx frees nothing at exit, so leak checks are off
    # for it (the worker keeps them).
    my $asan = `gcc -print-file-name=libasan.so`;
    chomp $asan;
    return (LD_PRELOAD => $asan,
            ASAN_OPTIONS => 'detect_leaks=0:abort_on_error=1',
            UBSAN_OPTIONS => 'print_stacktrace=1:halt_on_error=1');
}

# Writes the config, checks it with nginx -t, (re)starts nginx.  Returns
# the output of nginx -t when it fails and $opt{expect_failure} is set.
sub start_nginx {
    my ($config, %opt) = @_;
    adl();
    my $n = $opt{instance} // 0;
    stop_nginx($n);

    my $inst = nginx_instance($n);
    my $d = $inst->{dir};
    my $conf = nginx_conf($config, %opt);
    write_file("$d/nginx.conf", $conf);
    $inst->{conf} = $conf;
    $S{nginx_conf} = $conf unless $n;

    my $t = "$S{dir}/logs/nginx-t" . ($n ? "-$n" : '') . '.log';
    unlink $t;
    my $prefix = $opt{prefix} // "$d/";
    my $pid = spawn($t, {sanitizer_env()}, $NGINX, '-t', '-p', $prefix, '-c',
                    "$d/nginx.conf");
    waitpid($pid, 0);
    my $ok = $? == 0;
    if ($opt{expect_failure}) {
        return $ok ? undef : slurp($t);
    }
    $ok or die "nginx -t failed:\n" . slurp($t);

    $inst->{pid} = spawn("$d/logs/stderr.log", {sanitizer_env()}, $NGINX,
                         '-p', $prefix, '-c', "$d/nginx.conf");
    $S{nginx_pid} = $inst->{pid} unless $n;
    wait_port($inst->{port}, $n ? "nginx $n" : 'nginx', $inst->{pid});
    return undef;
}

# stop_nginx($n): instance $n (0 by default)
sub stop_nginx {
    my ($n) = @_;
    $n //= 0;
    my $inst = $S{ngx} && $S{ngx}[$n];
    return unless $inst && $inst->{pid};
    stop_pid($inst->{pid}, 'QUIT', 10);
    delete $inst->{pid};
    delete $S{nginx_pid} unless $n;
}

sub origin_log {
    return slurp("$S{dir}/origin/logs/access.log");
}

# nginx_log($n): the error log (and stderr) of instance $n; of every
# instance started when $n is not given.
sub nginx_log {
    my ($n) = @_;
    my @i = defined $n ? ($n) : (0 .. $#{ $S{ngx} || [] });
    @i = (0) unless @i;
    return join '', map {
        my $d = $_ ? "$S{dir}/nginx-$_" : "$S{dir}/nginx";
        slurp("$d/logs/error.log") . slurp("$d/logs/stderr.log")
    } @i;
}

sub error_log_mark {
    return [(-s "$S{dir}/nginx/logs/error.log") || 0,
            (-s "$S{dir}/nginx/logs/stderr.log") || 0];
}

sub error_log_since {
    my ($mark) = @_;
    return slurp("$S{dir}/nginx/logs/error.log", $mark->[0])
         . slurp("$S{dir}/nginx/logs/stderr.log", $mark->[1]);
}

# --- the worker -------------------------------------------------------------

sub worker_env {
    return (
        ASYNC_DL_DATABASE_URL => $S{database_url},
        ASYNC_DL_S3_ENDPOINT => $S{s3_endpoint},
        ASYNC_DL_S3_BUCKET => $S{s3_bucket},
        ASYNC_DL_S3_REGION => 'us-east-1',
        ASYNC_DL_S3_ACCESS_KEY_ID => 'S3RVER',
        ASYNC_DL_S3_SECRET_ACCESS_KEY => 'S3RVER',
        ASYNC_DL_ALLOW_CIDRS => '127.0.0.1/32',
        ASYNC_DL_LOG_LEVEL => 'debug',
        ASYNC_DL_RETRY_BASE => '100ms',
        ($SANITIZE ? (ASAN_OPTIONS => 'abort_on_error=1',
                      UBSAN_OPTIONS => 'print_stacktrace=1:halt_on_error=1')
                   : ()),
    );
}

# start_worker(%env): one more worker process (a test may run several);
# returns its pid.  Settings given as undef are removed from the defaults.
sub start_worker {
    my (%env) = @_;
    adl();
    my %e = (worker_env(), %env);
    my @unset = grep { !defined $e{$_} } keys %e;
    delete @e{@unset};
    my $n = scalar @{ $S{workers} ||= [] };
    my $log = "$S{dir}/logs/worker-$n.log";
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        delete @ENV{@unset};
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', $log or die "$log: $!";
        open STDERR, '>&', \*STDOUT;
        %ENV = (%ENV, %e);
        exec $WORKER or die "exec $WORKER: $!";
    }
    push @{ $S{workers} }, { pid => $pid, log => $log, env => \%env };
    return $pid;
}

# restart_worker($n, %env): starts worker $n again (the same settings, plus
# %env; the same log file), stopping it first with TERM if it still runs.
# Returns the new pid.
sub restart_worker {
    my ($n, %env) = @_;
    my $w = $S{workers}[$n] or die "no worker $n\n";
    stop_worker('TERM', $n) if $w->{pid};
    my %e = (worker_env(), %{ $w->{env} || {} }, %env);
    my @unset = grep { !defined $e{$_} } keys %e;
    delete @e{@unset};
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        delete @ENV{@unset};
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', $w->{log} or die "$w->{log}: $!";
        open STDERR, '>&', \*STDOUT;
        %ENV = (%ENV, %e);
        exec $WORKER or die "exec $WORKER: $!";
    }
    $w->{pid} = $pid;
    $w->{env} = { %{ $w->{env} || {} }, %env };
    $w->{starts}++;
    return $pid;
}

sub worker_pid {
    my ($n) = @_;
    my $w = $S{workers} && $S{workers}[$n // -1];
    return $w && $w->{pid};
}

# stop_worker($signal, $n): the last started by default; returns the exit
# status as waitpid gives it.
sub stop_worker {
    my ($sig, $n, $grace) = @_;
    my $w = $S{workers} && $S{workers}[$n // -1] or return;
    return undef unless $w->{pid};
    my $st = stop_pid($w->{pid}, $sig // 'TERM', $grace // 30);
    $w->{pid} = 0;
    $w->{status} = $st;
    return $st;
}

sub worker_log {
    my ($n) = @_;
    return join '', map { slurp($_->{log}) }
        defined $n ? ($S{workers}[$n]) : @{ $S{workers} || [] };
}

# --- data -------------------------------------------------------------------

# A server of the test's own on 127.0.0.1, for answers the origin's
# locations cannot give (a reset at a chosen byte, pauses, a Range ignored
# on the second request only): each connection in a process of its own,
# handed to $serve->($socket, $request_line, \%headers) once the request's
# head is read (header names in lower case); the connection is closed when
# it returns.  Returns http://127.0.0.1:<port>; killed at exit.
my @SCRIPTED;

sub scripted_server {
    my ($serve) = @_;
    my $srv = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                    Listen => 64, ReuseAddr => 1,
                                    Proto => 'tcp') or die "listen: $!";
    my $url = 'http://127.0.0.1:' . $srv->sockport;
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        $SIG{CHLD} = 'IGNORE';
        while (1) {
            my $c = $srv->accept or next;
            my $k = fork;
            if (!defined $k || $k) { close $c; next }
            close $srv;
            $c->autoflush(1);
            my $line = <$c>;
            my %h;
            while (defined $line && defined(my $l = <$c>)) {
                last if $l =~ /^\r?\n$/;
                $h{lc $1} = $2 if $l =~ /^([^:]+):\s*(.*?)\r?$/;
            }
            $serve->($c, $line, \%h) if defined $line;
            close $c;
            POSIX::_exit(0);
        }
    }
    close $srv;
    push @SCRIPTED, $pid;
    return $url;
}

END { kill 'KILL', @SCRIPTED if @SCRIPTED }

sub psql {
    my ($sql) = @_;
    adl();
    open my $fh, '-|', 'psql', '-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1',
        '-h', '127.0.0.1', '-p', $S{pg_port}, '-U', 'postgres', '-d',
        'postgres', '-c', $sql or die "psql: $!";
    local $/;
    my $out = <$fh>;
    close $fh or die "psql failed ($?) on: $sql\n";
    $out =~ s/\n\z// if defined $out;
    return $out // '';
}

sub sql_literal { my ($v) = @_; $v =~ s/'/''/g; return "'$v'" }

# add_job([urls], timeout => seconds, names => [names], owner => text,
#         priority => -100..100): the job's id
sub add_job {
    my ($urls, %o) = @_;
    my $t = $o{timeout} // 60;
    my $n = @$urls;
    my @names = @{ $o{names} || [] };
    my $vals = join ',', map {
        "($_, " . sql_literal($urls->[$_]) . ", "
        . (defined $names[$_] ? sql_literal($names[$_]) : 'NULL') . ")"
    } 0 .. $#$urls;
    # owner and priority only when given: older schemas lack priority
    my ($cols, $given) = ('', '');
    for my $c (grep { defined $o{$_} } qw(owner priority)) {
        $cols .= "$c, ";
        $given .= sql_literal($o{$c}) . ', ';
    }
    my $out = psql("WITH j AS (INSERT INTO async_dl_jobs (${cols}total_files, "
        . "timeout_ms, deadline) VALUES ($given$n, ${t}000, now() + "
        . "interval '$t seconds') RETURNING id) "
        . "INSERT INTO async_dl_files (job_id, "
        . "idx, url, name) SELECT j.id, v.i, v.u, v.n FROM j, (VALUES $vals) "
        . "v(i, u, n) "
        . "RETURNING job_id");
    return (split /\n/, $out)[0];
}

sub file_lease {
    my ($id, $idx) = @_;
    return "(SELECT lease_owner FROM async_dl_files WHERE job_id = '$id' "
         . "AND idx = $idx)";
}

sub claim_one {
    return psql("SELECT count(*) FROM async_dl_claim('w1', 1, '1 minute', 5)");
}

sub file_progress {
    my ($id, $idx, $done, $total) = @_;
    return psql("SELECT async_dl_file_progress('$id', $idx, "
                . file_lease($id, $idx) . ", '1 minute', $done, $total, 1)");
}

sub job_status {
    my ($job) = @_;
    return psql("SELECT status FROM async_dl_jobs WHERE id = '$job'");
}

sub wait_ended {
    my ($job, $secs) = @_;
    wait_until(sub { job_status($job) =~ /^(completed|failed|canceled)$/ },
               $secs // 30, "job $job to end");
    return job_status($job);
}

# s3rver keeps each object as <dir>/<bucket>/<key>._S3rver_object
sub s3_object {
    my ($key) = @_;
    my $f = "$S{dir}/s3/$S{s3_bucket}/$key._S3rver_object";
    return -f $f ? slurp($f) : undef;
}

sub s3_keys {
    my $base = "$S{dir}/s3/$S{s3_bucket}/";
    my @keys;
    my @todo = ($base);
    while (my $d = shift @todo) {
        opendir my $dh, $d or next;
        for my $e (readdir $dh) {
            next if $e eq '.' || $e eq '..';
            if (-d "$d$e") { push @todo, "$d$e/"; next }
            push @keys, substr("$d$e", length $base) =~ s/\._S3rver_object$//r
                if $e =~ /\._S3rver_object$/;
        }
    }
    return sort @keys;
}

sub write_random {
    my ($path, $size) = @_;
    open my $in, '<:raw', '/dev/urandom' or die $!;
    open my $out, '>:raw', $path or die "$path: $!";
    while ($size > 0) {
        my $n = $size > 1 << 20 ? 1 << 20 : $size;
        read($in, my $buf, $n) == $n or die "urandom: $!";
        print $out $buf;
        $size -= $n;
    }
    close $out or die "$path: $!";
    chmod 0644, $path;
}

# origin_file($name, $size [, $content]): a file at $ADL_ORIGIN/f/$name
sub origin_file {
    my ($name, $size, $content) = @_;
    adl() unless $S{dir};
    my $path = "$S{dir}/origin/f/$name";
    if (defined $content) { write_file($path, $content) }
    else { write_random($path, $size) }
    chmod 0644, $path;
    return $path;
}

sub sparse_file {
    my ($name, $size) = @_;
    my $path = "$S{dir}/origin/f/$name";
    open my $fh, '>', $path or die "$path: $!";
    truncate $fh, $size or die "truncate: $!";
    close $fh;
    chmod 0644, $path;
    return $path;
}

# The bytes the flaky origin sends for $key: sha256 blocks of "key:n".
sub flaky_bytes {
    my ($key, $size) = @_;
    my $out = '';
    my $n = 0;
    while (length $out < $size) {
        $out .= Digest::SHA::sha256("$key:" . $n++);
    }
    return substr($out, 0, $size);
}

sub file_sha256 {
    my ($path) = @_;
    my $d = Digest::SHA->new(256);
    $d->addfile($path, 'b');
    return $d->hexdigest;
}

sub wait_until {
    my ($cond, $secs, $what) = @_;
    my $until = time + ($secs // 10);
    while (time < $until) {
        return 1 if $cond->();
        sleep 0.05;
    }
    return $cond->() ? 1 : do { Test::More::diag("timed out waiting for $what") if $what; 0 };
}

sub slurp {
    my ($path, $offset) = @_;
    open my $fh, '<:raw', $path or return '';
    seek $fh, $offset, 0 if $offset;
    local $/;
    my $s = <$fh>;
    return $s // '';
}

sub write_file {
    my ($path, $content) = @_;
    open my $fh, '>:raw', $path or die "$path: $!";
    print $fh $content;
    close $fh or die "$path: $!";
}

# --- stopping everything ------------------------------------------------

sub stack_down {
    return unless $$ == $OWNER_PID && $S{up};
    stop_nginx($_) for reverse 0 .. $#{ $S{ngx} || [] };
    for my $w (@{ $S{workers} || [] }) {
        stop_pid($w->{pid}, 'TERM', 15) if $w->{pid};
    }
    stop_pid($S{origin_pid}, 'QUIT', 5);
    stop_pid($S{flaky_pid}, 'TERM', 5);
    s3_proxy_stop();
    stop_pid($S{s3_pid}, 'TERM', 5);
    pg_stop();
    if ($ENV{ADL_KEEP}) { Test::More::diag("kept $S{dir}") }
    $S{up} = 0;
}

# Lines a test caused on purpose (a process it killed), left out of the
# check below: expect_log(qr/worker process 123 exited on signal 9/).
my @EXPECTED_LOG;
sub expect_log { push @EXPECTED_LOG, @_ }

# After everything stopped: a crash or a sanitizer report in any log of
# nginx or of a worker fails the file, whatever its tests said.
sub final_log_check {
    return 0 unless $$ == $OWNER_PID && $S{dir};
    my %logs = (nginx => nginx_log(), worker => worker_log());
    for my $re (@EXPECTED_LOG) {
        $logs{$_} = join "\n", grep { $_ !~ $re } split /\n/, $logs{$_}
            for keys %logs;
    }
    my $bad = 0;
    for my $what (sort keys %logs) {
        for my $l ('AddressSanitizer', 'runtime error:', 'LeakSanitizer',
                   'exited on signal')
        {
            next if index($logs{$what}, $l) < 0;
            Test::More::diag("the $what log shows \"$l\":\n$logs{$what}");
            $bad = 1;
        }
    }
    return $bad;
}

$SIG{INT} = $SIG{TERM} = sub { exit 1 };

END {
    my $rc = $?;
    stack_down();
    $rc ||= 1 if final_log_check();
    $? = $rc;
}

1;
