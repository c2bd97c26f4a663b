package AsyncDL::Race;

=head1 NAME

AsyncDL::Race - PostgreSQL sessions that race each other, for tests of the
schema's state changes

=head1 SYNOPSIS

    my $a = psql_bg("BEGIN; SELECT ...; SELECT pg_sleep(1); COMMIT;");
    psql_sleeping(1);                   # A holds its locks, asleep
    my $b = psql_bg("SELECT ...");
    my ($rc, $out) = psql_wait($a);

    my $t = psql_open("SELECT ...");    # A's transaction, left open
    ok(psql_in_transaction(1), "A's statement is done, not committed");
    ... B, then: ok(wait_until(sub { psql_lock_waiters() == 1 }));
    psql_commit($t);

Each session is its own psql process (its own connection) against the
stack's PostgreSQL; C<psql_wait> returns its exit code and its output
(stdout and stderr).  AsyncDL::Test's C<pg_log> is the server's log so
far, to look for "deadlock detected".  C<psql_sleeping($n)> waits (10 s at
most) until $n sessions sit in C<pg_sleep>: a session that got there has
run what came before it, whatever a loaded machine's psql start-up cost.

C<psql_open($sql)> runs C<BEGIN; $sql;> in a session of its own and leaves
the transaction open until C<psql_commit>: the test, not a sleep, says
when its locks go.  C<psql_in_transaction($n)> waits (10 s at most) until
$n sessions sit idle in a transaction; C<psql_lock_waiters($like)> counts
the statements waiting for a lock (whose text is LIKE $like, if given).

=cut

use strict;
use warnings;
use Exporter 'import';
use AsyncDL::Test;
use IO::Handle;

our @EXPORT = qw(psql_bg psql_wait psql_sleeping psql_open psql_commit
                 psql_in_transaction psql_lock_waiters);

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

sub psql_open {
    my ($sql) = @_;
    my $s = adl();
    open my $h, '|-', 'psql', '-X', '-q', '-o', '/dev/null', '-h', '127.0.0.1',
        '-p', $s->{pg_port}, '-U', 'postgres', '-d', 'postgres'
        or die "psql: $!";
    $h->autoflush(1);
    print $h "BEGIN; $sql;\n";
    return $h;
}

sub psql_commit {
    my ($h) = @_;
    print $h "COMMIT;\n";
    close $h;
}

sub psql_in_transaction {
    my ($n, $secs) = @_;
    return wait_until(sub {
        psql("SELECT count(*) FROM pg_stat_activity WHERE state = "
             . "'idle in transaction'") == $n
    }, $secs // 10, "$n session(s) idle in a transaction");
}

sub psql_lock_waiters {
    my ($like) = @_;
    return psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type "
                . "= 'Lock'" . (defined $like ? " AND query LIKE "
                                . AsyncDL::Stack::sql_literal($like) : ''));
}


1;
