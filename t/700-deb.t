# The Debian packages on this machine: `make deb` builds them; both are
# installed with apt-get; the module's packaged snippet is enabled in
# /etc/nginx/modules-enabled and depends on the ABI of the nginx installed;
# nginx -t passes with the system's configuration and with a private one
# that includes the enabled snippets; a job runs end to end through the
# INSTALLED module (loaded by the packaged load_module line) and the
# INSTALLED worker (which also migrated the schema); the worker's unit,
# settings file and manual page are checked; then the module is removed
# (its link set aside the Debian way) and both are purged: nothing is left.
#
# Installing packages needs root (CI runs as root).  One run at a time on a
# machine: a lock serialises test runs of several checkouts.  A machine
# that has either package installed by someone else, or a system nginx
# running (the module package reloads it), is left alone: the test skips,
# saying why.  What it installed is recorded in a stamp file, so that only
# its own installation is ever purged (also one left by a run that died).
use strict;
use warnings;
use Cwd qw(abs_path);
use File::Basename qw(dirname);
use Fcntl qw(:flock);
use File::Temp ();
use Test::More;

my $ROOT;
BEGIN {
    $ROOT = abs_path(dirname(__FILE__) . '/..');
    if ($> != 0) {
        plan skip_all => 'installing the packages needs root (dpkg); '
                       . 'CI runs the suite as root';
    }
    if (($ENV{ADL_BUILD} // '') =~ /-san\b/ || $ENV{ADL_SANITIZE}) {
        plan skip_all => 'the packages are built without sanitizers: '
                       . 'the plain `make test` run checks them';
    }
    # the stack's schema (async-dl-worker --migrate) and workers: the
    # installed binary
    $ENV{ADL_WORKER} = '/usr/sbin/async-dl-worker';
}
use lib 't/lib';
use AsyncDL::Test;

my $MOD_PKG = 'libnginx-mod-http-async-dl';
my $WRK_PKG = 'async-dl-worker';
my $SO = '/usr/lib/nginx/modules/ngx_http_async_dl_module.so';
my $AVAILABLE = '/usr/share/nginx/modules-available/mod-http-async-dl.conf';
my $ENABLED = '/etc/nginx/modules-enabled/50-mod-http-async-dl.conf';
my $UNIT = '/lib/systemd/system/async-dl-worker.service';
my $ENVFILE = '/etc/async-dl/worker.env';
my $MAN = '/usr/share/man/man8/async-dl-worker.8.gz';
my @APT = ('apt-get', '-y', '-q', '-o', 'DPkg::Lock::Timeout=300');
$ENV{DEBIAN_FRONTEND} = 'noninteractive';

open my $lock, '>', '/run/lock/async-dl-deb-test.lock' or die "lock: $!";
flock $lock, LOCK_EX or die "flock: $!";

my $STAMP = '/var/lib/async-dl-deb-test.stamp';

my $tmp = File::Temp::tempdir('adl-deb-XXXXXX', TMPDIR => 1, CLEANUP => 1);

# run(@cmd): its exit status and its output (stdout and stderr)
sub run {
    my (@cmd) = @_;
    my $pid = AsyncDL::Stack::spawn("$tmp/out", {}, @cmd);
    waitpid($pid, 0);
    my $rc = $? >> 8;
    my $out = AsyncDL::Stack::slurp("$tmp/out");
    unlink "$tmp/out";
    return ($rc, $out);
}

sub installed {
    my ($pkg) = @_;
    my ($rc, $st) = run('dpkg-query', '-W', '-f=${db:Status-Status}', $pkg);
    return $rc == 0 ? $st : 'unknown';     # never heard of: never installed
}

sub purge_all {
    my @here = grep { installed($_) !~ /^(unknown|not-installed)$/ }
                    $MOD_PKG, $WRK_PKG;
    return (0, '') unless @here;
    return run(@APT, 'purge', @here);
}

# a machine where someone installed them, or runs nginx, is not ours
for my $pkg ($MOD_PKG, $WRK_PKG) {
    next if installed($pkg) =~ /^(unknown|not-installed|config-files)$/;
    next if -e $STAMP;              # an earlier run of this test's
    plan skip_all => "$pkg is installed on this machine, not by this test: "
                   . 'it is left alone';
}
if (open my $pf, '<', '/run/nginx.pid') {
    my $pid = <$pf> // '';
    chomp $pid;
    plan skip_all => "a system nginx runs here (pid $pid): installing the "
                   . 'module would reload it'
        if $pid =~ /^\d+$/ && kill(0, $pid);
}

# whatever happens, the machine is left without what this test installed
my $owner = $$;
END {
    local $?;
    if ($$ == $owner && -e $STAMP) {
        my ($rc, $out) = purge_all();
        if ($rc) { diag("purging what the test installed failed:\n$out") }
        else { unlink $STAMP }
    }
}

# --- make deb -------------------------------------------------------------

my $t0 = time;
{
    local $ENV{MAKEFLAGS};
    local $ENV{MFLAGS};
    local $ENV{MAKELEVEL};
    my ($rc, $out) = run('make', '-s', '-C', $ROOT, 'deb');
    is($rc, 0, 'make deb') or BAIL_OUT("make deb failed:\n$out");
}
my @debs = grep { !/-dbgsym_/ } split /\n/,
           AsyncDL::Stack::slurp("$ROOT/build/deb/built");
my ($mod_deb) = grep { m{/\Q$MOD_PKG\E_[^/]+\.deb$} } @debs;
my ($wrk_deb) = grep { m{/\Q$WRK_PKG\E_[^/]+\.deb$} } @debs;
ok($mod_deb && $wrk_deb, 'both packages built') or BAIL_OUT("debs: @debs");
diag(sprintf 'make deb: %d s', time - $t0);

# --- install ----------------------------------------------------------------

{
    my ($rc, $out) = (0, '');
    ($rc, $out) = purge_all() if -e $STAMP;     # a run that died
    is($rc, 0, 'no earlier installation of this test left') or diag($out);
    open my $st, '>', $STAMP or die "$STAMP: $!";
    print $st "installed by t/700-deb.t\n";
    close $st;
    ($rc, $out) = run(@APT, 'install', '--no-install-recommends', $mod_deb,
                      $wrk_deb);
    is($rc, 0, 'apt-get install of both packages') or diag($out);
}
is(installed($MOD_PKG), 'installed', "$MOD_PKG is installed");
is(installed($WRK_PKG), 'installed', "$WRK_PKG is installed");

# the module: the Debian layout of libnginx-mod-* packages
ok(-f $SO, "the module in $SO");
is(AsyncDL::Stack::slurp($AVAILABLE),
   "load_module modules/ngx_http_async_dl_module.so;\n",
   "$AVAILABLE loads it");
ok(-l $ENABLED, "$ENABLED is a link");
is(readlink($ENABLED) // '', $AVAILABLE, '... to the packaged snippet');

# it depends on the ABI the installed nginx provides, which is the one
# nginx-dev (the build's tree) names
my (undef, $provides) = run('dpkg-query', '-W', '-f=${Provides}', 'nginx');
my ($abi) = $provides =~ /(nginx-abi-[0-9][^,\s]*)/;
ok($abi, "the installed nginx provides $abi");
my (undef, $depends) = run('dpkg-query', '-W', '-f=${Depends}', $MOD_PKG);
like($depends, qr/(^|, )\Q$abi\E(,|$)/, "$MOD_PKG depends on $abi");
like(AsyncDL::Stack::slurp('/usr/share/nginx/src/debian/libnginx-mod.abisubstvars'),
     qr/^nginx:abi=\Q$abi\E$/m, "... the ABI of nginx-dev's tree");

# the system's own configuration, which includes modules-enabled, still
# passes with the module loaded
{
    my ($rc, $out) = run('/usr/sbin/nginx', '-t', '-c', '/etc/nginx/nginx.conf');
    is($rc, 0, 'nginx -t of /etc/nginx/nginx.conf with the module enabled')
        or diag($out);
}

# the worker: binary, unit, settings, manual page
ok(-x '/usr/sbin/async-dl-worker', 'the worker in /usr/sbin');
my $unit = AsyncDL::Stack::slurp($UNIT);
like($unit, qr{^ExecStart=/usr/sbin/async-dl-worker$}m, 'its unit runs it');
like($unit, qr{^EnvironmentFile=\Q$ENVFILE\E$}m, "... with $ENVFILE");
for my $opt ('DynamicUser=yes', 'ProtectSystem=strict', 'PrivateTmp=yes',
             'NoNewPrivileges=yes',
             'RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX',
             'CapabilityBoundingSet=')
{
    like($unit, qr/^\Q$opt\E$/m, "... sandboxed: $opt");
}
SKIP: {
    skip 'no systemd-analyze', 2 unless -x '/usr/bin/systemd-analyze';
    my ($rc, $out) = run('systemd-analyze', 'verify', '--man=no', $UNIT);
    ok($rc == 0 && $out !~ /\S/, 'systemd-analyze verify finds nothing')
        or diag($out);
    # its exposure score, 0 to 10: 1.2 for this unit ("OK"; 9.6 without
    # any sandboxing)
    ($rc, $out) = run('systemd-analyze', 'security', '--offline=true',
                      '--threshold=20', $UNIT);
    my ($score) = $out =~ /Overall exposure level for \S+: ([0-9.]+)/;
    ok($rc == 0 && defined $score,
       'systemd-analyze security: exposure ' . ($score // '?') . ' (at most 2)')
        or diag($out);
}
ok(!-e '/etc/systemd/system/multi-user.target.wants/async-dl-worker.service',
   'the unit is not enabled before it is configured');

my @mode = stat $ENVFILE;
is(@mode ? sprintf('%04o', $mode[2] & 07777) : 'missing', '0600',
   "$ENVFILE is readable by root only");
my (undef, $conffiles) = run('dpkg-query', '-W', '-f=${Conffiles}', $WRK_PKG);
like($conffiles, qr{^ \Q$ENVFILE\E [0-9a-f]{32}$}m, '... and a conffile');
my (undef, $help) = run('/usr/sbin/async-dl-worker', '--help');
my @settings = $help =~ /^  --[a-z0-9-]+, (ASYNC_DL_[A-Z0-9_]+)$/mg;
cmp_ok(scalar @settings, '>=', 20, scalar(@settings) . ' settings in --help');
my $envfile = AsyncDL::Stack::slurp($ENVFILE);
my $example = AsyncDL::Stack::slurp(
    '/usr/share/doc/async-dl-worker/examples/worker.env');
my (undef, $man) = run('zcat', $MAN);
is_deeply([grep { $example !~ /^#\Q$_\E=/m } @settings], [],
          'the example settings file lists every setting');
my @required = $help =~ /^  --[a-z0-9-]+, (ASYNC_DL_[A-Z0-9_]+)\n {6}[^\n]*\(required/mg;
cmp_ok(scalar @required, '>=', 5, scalar(@required) . ' required settings');
is_deeply([sort($envfile =~ /^#(ASYNC_DL_[A-Z0-9_]+)=/mg)], [sort @required],
          "$ENVFILE: the required settings alone (a conffile that new "
          . 'settings do not change)');
is_deeply([grep { $man !~ /\Q$_\E/ } @settings], [],
          'the manual page describes every setting');
is(scalar(grep { /^[^#\s]/ } split /\n/, $envfile . $example), 0,
   '... all commented out: the defaults');

# --- a job end to end through the installed files -------------------------

my $s = adl();          # PostgreSQL, migrated by the installed worker
my @sql = glob("$ROOT/sql/*.sql");
is(psql('SELECT count(*) FROM async_dl_schema_migrations'), scalar @sql,
   'the installed worker applied the ' . scalar(@sql) . ' migrations of sql/');

# nginx with the system's prefix (where "modules/" is), loading whatever
# modules-enabled holds, as /etc/nginx/nginx.conf does
start_nginx(<<'EOF', modules => 'include /etc/nginx/modules-enabled/*.conf;',
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
}
EOF
            prefix => '/usr/share/nginx/');
pass('nginx -t with the packaged snippet and an async_dl location');
my $maps = AsyncDL::Stack::slurp("/proc/$s->{nginx_pid}/maps");
like($maps, qr{\Q$SO\E$}m, "nginx mapped the installed $SO");

my $wpid = start_worker();
wait_until(sub { (readlink("/proc/$wpid/exe") // '') =~ /async-dl/ }, 5);
is(readlink("/proc/$wpid/exe") // '', '/usr/sbin/async-dl-worker',
   'the worker running is the installed one');

my %me = ('X-User' => 'debian');
my $path = origin_file('packaged.bin', 3 * 1024 * 1024 + 17);
my $r = initiate({ files => [{ url => "$s->{origin}/files/70002" },
                             { url => "$s->{origin}/f/packaged.bin" }] },
                 \%me);
is($r->{status}, 202, 'initiate: 202') or diag($r->{content});
my $id = $r->{json}{jobId} // '';
my $j = wait_job($id, qr/^(completed|failed|canceled)$/, 60, \%me);
is($j->{status}, 'completed', 'the job completed');
is($j->{bundle}{status}, 'completed', '... with its zip');

my $f = request('GET', "/v1/download/$id/files/1", \%me);
is($f->{status}, 302, 'file 1: 302 to the storage');
my $bytes = request('GET', $f->{headers}{location} // '/none');
is($bytes->{status}, 200, '... which serves it');
is(sha256_hex($bytes->{content}), file_sha256($path),
   '... with the origin\'s bytes');
my $z = request('GET', "/v1/download/$id", \%me);
is($z->{status}, 302, 'the job: 302 to its zip');
my $zip = request('GET', $z->{headers}{location} // '/none');
is(substr($zip->{content}, 0, 4), "PK\x03\x04", '... a zip');
like($zip->{content}, qr/packaged\.bin/, '... holding the file');

my $h = request('GET', '/v1/download/health');
is_deeply($h->{json}, { status => 'ok', workers => 1 },
          'health: the worker is alive');
is(stop_worker('TERM'), 0, 'the worker stops cleanly on SIGTERM');
stop_nginx();

# --- removal and purge ------------------------------------------------------

{
    my ($rc, $out) = run(@APT, 'remove', $MOD_PKG);
    is($rc, 0, "apt-get remove $MOD_PKG") or diag($out);
}
ok(!-e $ENABLED, 'removed: the module is no longer enabled');
ok(-l "$ENABLED.removed",
   '... its link set aside (a reinstall enables it again)');
ok(!-e $SO, "... $SO is gone");
{
    my ($rc, $out) = run('/usr/sbin/nginx', '-t', '-c', '/etc/nginx/nginx.conf');
    is($rc, 0, 'nginx -t of /etc/nginx/nginx.conf after the removal') or diag($out);
}

{
    my ($rc, $out) = run(@APT, 'purge', $MOD_PKG, $WRK_PKG);
    is($rc, 0, 'apt-get purge of both') or diag($out);
}
for my $p ($MOD_PKG, $WRK_PKG) {
    like(installed($p), qr/^(unknown|not-installed)$/, "$p: not installed");
}
for my $gone ($ENABLED, "$ENABLED.removed", $SO, $AVAILABLE, $UNIT,
              $ENVFILE, '/etc/async-dl', '/usr/sbin/async-dl-worker', $MAN,
              "/usr/share/doc/$MOD_PKG", "/usr/share/doc/$WRK_PKG")
{
    ok(!-e $gone && !-l $gone, "purged: no $gone");
}
my @left = grep { /async.dl/ } glob('/etc/nginx/modules-enabled/*');
is("@left", '', 'nothing of async-dl in /etc/nginx/modules-enabled');

done_testing();
