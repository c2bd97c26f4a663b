package AsyncDL::Transfer;

=head1 NAME

AsyncDL::Transfer - a large download watched from /proc: its time, and the
resident memory of the processes serving it

=head1 SYNOPSIS

    use AsyncDL::Transfer qw(child_pids rss_kib watch_download);
    my @workers = child_pids($nginx_master_pid);
    my $t = watch_download($url, \@workers, headers => ['X-User: alice'],
                           out => '/dev/null');
    # $t->{status} (curl's exit status), $t->{seconds}, $t->{bytes},
    # $t->{rss_before} and $t->{rss_peak} (KiB, summed over @workers)

=head1 DESCRIPTION

C<watch_download> runs curl in a child process and samples the VmRSS of
the given processes every 20 ms until it ends: a memory bound, not a
timing (the samples are cheap and never slow the transfer down).
C<--limit-rate> is passed when C<rate> is given.

=cut

use strict;
use warnings;
use Exporter qw(import);
use POSIX qw(:sys_wait_h);
use Time::HiRes qw(sleep time);

our @EXPORT_OK = qw(child_pids rss_kib watch_download);

# the processes whose parent is $ppid (an nginx master's workers)
sub child_pids {
    my ($ppid) = @_;
    opendir my $d, '/proc' or die "/proc: $!";
    my @pids;
    for my $pid (grep { /^\d+$/ } readdir $d) {
        open my $fh, '<', "/proc/$pid/stat" or next;
        my ($parent) = (<$fh> // '') =~ /^\d+ \(.*\) \S (\d+)/;
        push @pids, $pid if ($parent // 0) == $ppid;
    }
    return @pids;
}

# VmRSS of these processes, KiB, summed
sub rss_kib {
    my $sum = 0;
    for my $pid (@_) {
        open my $fh, '<', "/proc/$pid/status" or next;
        while (<$fh>) { $sum += $1 if /^VmRSS:\s+(\d+)/ }
    }
    return $sum;
}

sub watch_download {
    my ($url, $pids, %o) = @_;
    my $out = $o{out} // '/dev/null';
    my @cmd = ('curl', '-sS', '-o', $out, '-w', '%{size_download}',
               (map { ('-H', $_) } @{ $o{headers} || [] }),
               ($o{rate} ? ('--limit-rate', $o{rate}) : ()), $url);
    pipe my $r, my $w or die "pipe: $!";
    my $before = rss_kib(@$pids);
    my $t0 = time;
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        close $r;
        open STDOUT, '>&', $w or die $!;
        exec @cmd or die "exec curl: $!";
    }
    close $w;
    my $peak = $before;
    while (waitpid($pid, WNOHANG) == 0) {
        my $now = rss_kib(@$pids);
        $peak = $now if $now > $peak;
        sleep 0.02;
    }
    my $status = $?;
    my $seconds = time - $t0;
    my $bytes = do { local $/; <$r> } // 0;
    close $r;
    return { status => $status, seconds => $seconds, bytes => $bytes + 0,
             rss_before => $before, rss_peak => $peak };
}

1;
