# A database at version 14 with files queued and downloading, upgraded by
# the real worker to the current version: the files get their owner and
# host (15), the downloading ones count against their host's limit, and
# the calls of version-14 workers and modules (a claim of five arguments,
# an initiate of nine) still work.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use Cwd qw(abs_path);
use File::Basename qw(dirname);

my $s = adl();
my $ROOT = abs_path(dirname(__FILE__) . '/..');
my $WORKER = $ENV{ADL_WORKER}
    || ($ENV{ADL_BUILD} || "$ROOT/build") . '/async-dl-worker';
my $DB = 'adl_fair_upgrade';
my @SQL = sort glob("$ROOT/sql/[0-9][0-9][0-9]_*.sql");

sub db {
    my ($sql) = @_;
    open my $fh, '-|', 'psql', '-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1',
        '-h', '127.0.0.1', '-p', $s->{pg_port}, '-U', 'postgres', '-d', $DB,
        '-c', 'SET client_min_messages = warning', '-c', $sql
        or die "psql: $!";
    local $/;
    my $out = <$fh> // '';
    close $fh or die "psql failed ($?) on: $sql\n";
    $out =~ s/\n\z//;
    return $out;
}

psql("CREATE DATABASE $DB");
db("CREATE TABLE async_dl_schema_migrations (version integer PRIMARY KEY, "
   . "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())");
for my $f (grep { m{/0(0\d|1[0-4])_[^/]*$} } @SQL) {
    my ($name, $v) = $f =~ m{/((\d+)_[^/]*)\.sql$};
    system('psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', '127.0.0.1',
           '-p', $s->{pg_port}, '-U', 'postgres', '-d', $DB, '-1', '-c',
           'SET client_min_messages = warning', '-f', $f, '-c',
           "INSERT INTO async_dl_schema_migrations VALUES ($v, '$name')") == 0
        or die "migration $name failed\n";
}
is(db("SELECT max(version) FROM async_dl_schema_migrations"), 14,
   'the database is at version 14');

sub create9 {
    my ($owner, $url) = @_;
    return db("SELECT job_id FROM async_dl_job_create('$owner', NULL, NULL, "
              . "60000, NULL, '[{\"url\":\"$url\"}]', 0, 0, '/v1/download/')");
}
create9('A', "http://busy.example/a$_") for 1 .. 4;
create9('B', 'http://busy.example/b1');
create9('B', 'http://calm.example/b2');
is(db("SELECT count(*) FROM async_dl_claim('w14', 2, '1 hour', 5, 'dl/')"),
   2, 'a version-14 claim holds two files of busy.example');

system("'$WORKER' --migrate --database-url=postgresql://postgres\@127.0.0.1:"
       . "$s->{pg_port}/$DB >'$s->{dir}/logs/migrate-15.log' 2>&1");
is($?, 0, 'async-dl-worker --migrate upgrades it');
is(db("SELECT max(version) FROM async_dl_schema_migrations"),
   (map { m{/(\d+)_[^/]*$} && $1 + 0 } $SQL[-1])[0], 'to the last version');

is(db("SELECT count(*) FROM async_dl_files WHERE owner IS NULL OR host IS "
      . "NULL"), 0, 'queued and downloading files have their owner and host');
is(db("SELECT string_agg(DISTINCT host, ',' ORDER BY host) FROM "
      . "async_dl_files"), 'busy.example,calm.example', 'hosts from the URLs');

# busy.example already has 2 downloading: a limit of 3 leaves room for one
is(db("SELECT string_agg(url, ',' ORDER BY url) FROM async_dl_claim('w15', "
      . "16, '1 hour', 5, 'dl/', 3, 0)"),
   'http://busy.example/b1,http://calm.example/b2',
   "the inherited downloads count: one more of busy.example (B's, the "
   . 'owner with none downloading), and calm.example');
is(db("SELECT count(*) FROM async_dl_files WHERE status = 'downloading' AND "
      . "host = 'busy.example'"), 3, 'three downloading from busy.example');

my $new = create9('C', 'http://new.example/c');
ok($new, 'an initiate of nine arguments (a version-14 module) still works');
is(db("SELECT priority || ' ' || owner || ' ' || host FROM async_dl_files "
      . "WHERE job_id = '$new'"), '0 C new.example', 'with priority 0');
is(db("SELECT count(*) FROM async_dl_claim('w14', 16, '1 hour', 5, 'dl/')"),
   3, 'a claim of five arguments takes what is left, with no limits');

done_testing();
