package AsyncDL::Race;

=head1 NAME

AsyncDL::Race - PostgreSQL sessions that race each other, for tests of the
schema's state changes

=head1 SYNOPSIS

    my $a = psql_bg("BEGIN; SELECT ...; SELECT pg_sleep(1); COMMIT;");
    psql_sleeping(1);                   # A holds its locks, asleep
    my $b = psql_bg("SELECT ...");
    my ($rc, $out) = psql_wait($a);

Each session is its own psql process (its own connection) against the
stack's PostgreSQL; C<psql_wait> returns its exit code and its output
(stdout and stderr).  AsyncDL::Test's C<pg_log> is the server's log so
far, to look for "deadlock detected".  C<psql_sleeping($n)> waits (10 s at
most) until $n sessions sit in C<pg_sleep>: a session that got there has
run what came before it, whatever a loaded machine's psql start-up cost.

=cut

use strict;
use warnings;
use Exporter 'import';
use AsyncDL::Test;

our @EXPORT = qw(psql_bg psql_wait psql_sleeping);

sub psql_bg {
    my ($sql) = @_;
    my $s = adl();
    my $out = "$s->{dir}/logs/psql-" . int(rand(1e9)) . '.out';
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        open STDOUT, '>', $out or die "$out: $!";
        open STDERR, '>&', \*STDOUT or die "dup: $!";
        exec 'psql', '-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1', '-h',
            '127.0.0.1', '-p', $s->{pg_port}, '-U', 'postgres', '-d',
            'postgres', '-c', $sql;
        exit 127;
    }
    return [$pid, $out];
}

sub psql_wait {
    my ($bg) = @_;
    my ($pid, $out) = @$bg;
    waitpid($pid, 0);
    my $rc = $? >> 8;
    open my $fh, '<', $out or return ($rc, '');
    local $/;
    return ($rc, <$fh> // '');
}

sub psql_sleeping {
    my ($n, $secs) = @_;
    return wait_until(sub {
        psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = "
             . "'PgSleep' AND pid <> pg_backend_pid()") >= $n
    }, $secs // 10, "$n session(s) in pg_sleep");
}


1;
