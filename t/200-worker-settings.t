# async-dl-worker's settings: every one listed by --help with its default,
# each a flag too; a bad value stops the worker at start with a message
# naming the setting (exit 2); --migrate creates the schema, idempotently.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use Cwd qw(abs_path);
use File::Basename qw(dirname);

my $root = abs_path(dirname(__FILE__) . '/..');
my $worker = $ENV{ADL_WORKER} || ($ENV{ADL_BUILD} || "$root/build")
             . '/async-dl-worker';

# run(\%env, @args): (exit status, output); the environment is only %env
sub run {
    my ($env, @args) = @_;
    my $pid = open(my $fh, '-|') // die "fork: $!";
    if ($pid == 0) {
        open STDERR, '>&', \*STDOUT;
        %ENV = (PATH => $ENV{PATH}, %$env);
        exec $worker, @args or die "exec: $!";
    }
    local $/;
    my $out = <$fh> // '';
    close $fh;
    return ($? >> 8, $out);
}

my %ok = (ASYNC_DL_DATABASE_URL => 'postgresql://127.0.0.1:1/none',
          ASYNC_DL_S3_ENDPOINT => 'http://127.0.0.1:1',
          ASYNC_DL_S3_BUCKET => 'b', ASYNC_DL_S3_ACCESS_KEY_ID => 'k',
          ASYNC_DL_S3_SECRET_ACCESS_KEY => 's');

# --- --help -----------------------------------------------------------------

my ($rc, $out) = run({}, '--help');
is($rc, 0, '--help exits 0');
for my $name (qw(DATABASE_URL S3_ENDPOINT S3_BUCKET S3_REGION
                 S3_ACCESS_KEY_ID S3_SECRET_ACCESS_KEY S3_ADDRESSING S3_PREFIX
                 CONCURRENCY PART_SIZE MAX_FILE_SIZE MAX_ATTEMPTS RETRY_BASE
                 CONNECT_TIMEOUT ALLOW_PRIVATE_NETWORKS ALLOW_CIDRS LEASE
                 LOG_LEVEL LOG_FORMAT CALLBACK_SECRET TTL_COMPLETED
                 TTL_FAILED))
{
    my $flag = lc($name) =~ tr/_/-/r;
    like($out, qr/--\Q$flag\E, ASYNC_DL_$name\n.*default: /,
         "--help lists ASYNC_DL_$name as --$flag with its default");
}
like($out, qr/ASYNC_DL_TTL_COMPLETED\n.*default: 24h/, 'TTL_COMPLETED 24h');
like($out, qr/ASYNC_DL_TTL_FAILED\n.*default: 1h/, 'TTL_FAILED 1h');
like($out, qr/ASYNC_DL_ALLOW_PRIVATE_NETWORKS\n.*default: off/,
     'private networks off by default');

# --- bad values name the setting -------------------------------------------

my @bad = (
    [ {}, [], qr/ASYNC_DL_DATABASE_URL .*required/, 'no database URL' ],
    [ { ASYNC_DL_PART_SIZE => 'abc' }, [], qr/ASYNC_DL_PART_SIZE.*"abc"/,
      'bad size' ],
    [ { ASYNC_DL_PART_SIZE => '1m' }, [], qr/ASYNC_DL_PART_SIZE.*range/,
      'part size under the S3 minimum' ],
    [ { ASYNC_DL_CONCURRENCY => '0' }, [], qr/ASYNC_DL_CONCURRENCY/,
      'concurrency 0' ],
    [ { ASYNC_DL_CONCURRENCY => '-3' }, [], qr/ASYNC_DL_CONCURRENCY/,
      'negative concurrency' ],
    [ { ASYNC_DL_LEASE => '5 parsecs' }, [], qr/ASYNC_DL_LEASE/,
      'bad duration' ],
    [ { ASYNC_DL_RETRY_BASE => '1y' }, [], qr/ASYNC_DL_RETRY_BASE/,
      'unknown unit' ],
    [ { ASYNC_DL_LOG_FORMAT => 'xml' }, [], qr/ASYNC_DL_LOG_FORMAT.*xml/,
      'bad log format' ],
    [ { ASYNC_DL_LOG_LEVEL => 'loud' }, [], qr/ASYNC_DL_LOG_LEVEL/,
      'bad log level' ],
    [ { ASYNC_DL_S3_ADDRESSING => 'both' }, [],
      qr/ASYNC_DL_S3_ADDRESSING/, 'bad addressing' ],
    [ { ASYNC_DL_ALLOW_PRIVATE_NETWORKS => 'maybe' }, [],
      qr/ASYNC_DL_ALLOW_PRIVATE_NETWORKS/, 'bad boolean' ],
    [ { ASYNC_DL_ALLOW_CIDRS => '10.0.0.0/33' }, [],
      qr/ASYNC_DL_ALLOW_CIDRS.*33/, 'bad CIDR prefix' ],
    [ { ASYNC_DL_ALLOW_CIDRS => '127.0.0.1,nonsense' }, [],
      qr/ASYNC_DL_ALLOW_CIDRS.*nonsense/, 'bad CIDR address' ],
    [ { ASYNC_DL_S3_ENDPOINT => 'ftp://x' }, [], qr/ASYNC_DL_S3_ENDPOINT/,
      'bad endpoint' ],
    [ { ASYNC_DL_TTL_COMPLETED => 'soon' }, [], qr/ASYNC_DL_TTL_COMPLETED/,
      'bad TTL' ],
    [ { ASYNC_DL_MAX_FILE_SIZE => '1t', ASYNC_DL_PART_SIZE => '5m' }, [],
      qr/ASYNC_DL_PART_SIZE.*10000 parts/, 'file size beyond 10000 parts' ],
    [ { ASYNC_DL_PART_SIZE => '5242881' }, [],
      qr/ASYNC_DL_PART_SIZE.*5242881.*multiple of 64/, 'part size not a multiple of 64' ],
    [ { ASYNC_DL_METRICS_LISTEN => 'localhost:9464' }, [],
      qr/ASYNC_DL_METRICS_LISTEN.*localhost:9464/, 'metrics on a host name' ],
    [ { ASYNC_DL_METRICS_LISTEN => '127.0.0.1' }, [],
      qr/ASYNC_DL_METRICS_LISTEN/, 'metrics without a port' ],
    [ { ASYNC_DL_METRICS_LISTEN => '127.0.0.1:99999' }, [],
      qr/ASYNC_DL_METRICS_LISTEN/, 'metrics on a port out of range' ],
    [ {}, ['--concurrency=many'], qr/ASYNC_DL_CONCURRENCY \(--concurrency\)/,
      'bad flag value' ],
    [ {}, ['--no-such-thing=1'], qr/unknown option "--no-such-thing"/,
      'unknown flag' ],
    [ {}, ['--lease'], qr/ASYNC_DL_LEASE.*needs a value/, 'flag without value' ],
);
for my $b (@bad) {
    my ($env, $args, $re, $what) = @$b;
    my %e = (%ok, %$env);
    delete $e{ASYNC_DL_DATABASE_URL} if $what eq 'no database URL';
    ($rc, $out) = run(\%e, @$args);
    is($rc, 2, "$what: exit 2");
    like($out, $re, "$what: the message names the setting");
}

# flags win over the environment
($rc, $out) = run({ %ok, ASYNC_DL_CONCURRENCY => 'x' }, '--concurrency', '4',
                  '--migrate', '--database-url=postgresql://127.0.0.1:1/x',
                  '--log-format=json');
is($rc, 1, 'a flag overrides a bad environment value (then no database)');
like($out, qr/^\{"ts":"[^"]+","level":"error","msg":"database: cannot/m,
     'JSON log lines');

# --- --migrate ------------------------------------------------------------------

my $s = adl();      # the harness already ran --migrate once
for my $i (1 .. 2) {
    ($rc, $out) = run({ ASYNC_DL_DATABASE_URL => $s->{database_url} },
                      '--migrate');
    is($rc, 0, "--migrate again ($i): exit 0");
    like($out, qr/schema is current \(0 applied now\)/,
         "--migrate again ($i): nothing to do");
}
is(psql("SELECT string_agg(version::text, ',' ORDER BY version) FROM "
        . "async_dl_schema_migrations"), join(',', map { /^(\d+)_/ ? $1 + 0 : () }
        sort map { s{.*/}{}r } glob("$root/sql/*.sql")),
   'every migration recorded once');

# several workers migrating at once: the advisory lock serialises them
psql('DROP SCHEMA public CASCADE; CREATE SCHEMA public');
my @pids;
for (1 .. 4) {
    my $pid = fork // die;
    if ($pid == 0) {
        open STDOUT, '>', '/dev/null';
        open STDERR, '>&', \*STDOUT;
        %ENV = (PATH => $ENV{PATH},
                ASYNC_DL_DATABASE_URL => $s->{database_url});
        exec $worker, '--migrate' or exit 99;
    }
    push @pids, $pid;
}
my @st = map { waitpid($_, 0); $? >> 8 } @pids;
is("@st", '0 0 0 0', 'four concurrent --migrate all succeed');
is(psql('SELECT count(*) FROM async_dl_schema_migrations WHERE version = 1'),
   1, 'and the schema was created once');

done_testing();
