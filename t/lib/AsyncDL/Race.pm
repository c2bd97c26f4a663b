package AsyncDL::Race;

=head1 NAME

AsyncDL::Race - PostgreSQL sessions that race each other, for tests of the
schema's state changes

=head1 SYNOPSIS

    my $a = psql_bg("BEGIN; SELECT ...; SELECT pg_sleep(1); COMMIT;");
    my $b = psql_bg("SELECT ...");
    my ($rc, $out) = psql_wait($a);

Each session is its own psql process (its own connection) against the
stack's PostgreSQL; C<psql_wait> returns its exit code and its output
(stdout and stderr).  AsyncDL::Test's C<pg_log> is the server's log so
far, to look for "deadlock detected".

=cut

use strict;
use warnings;
use Exporter 'import';
use AsyncDL::Test;

our @EXPORT = qw(psql_bg psql_wait);

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


1;
