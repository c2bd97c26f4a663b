# The short fault-injection run (issue 9; bench/chaos is the long one):
# two nginx instances and two workers on one database and bucket, about 80
# jobs (small, three-file, large without Content-Length so that multipart
# uploads get killed, failing and flaky origins, callbacks), cancels,
# deletes (some while the zip is built), pauses each followed by a resume, SSE subscribers and pollers, short
# TTLs; meanwhile two worker SIGKILLs, a PostgreSQL crash (immediate stop),
# S3 down for a few seconds and answering 503 SlowDown for a while, a little
# S3 noise throughout.  Then every invariant of AsyncDL::Chaos must hold:
# nothing lost, no wrong byte, no duplicate, no orphan object, no counter
# or count drift, no stale lease, no deadlock, no hung request, every SSE
# stream of an ended job got its final event, and so did each owner's
# stream (GET {p}stream) for every one of the owner's jobs.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use AsyncDL::Chaos qw(chaos_run short_defaults report);

my %o = (short_defaults(), say => sub { note(@_) });
$o{seed} = $ENV{ADL_CHAOS_SEED} if $ENV{ADL_CHAOS_SEED};
my $r = chaos_run(%o);
my $F = $r->{figures};
my @report = report($r, 20);

# the run did what it says, else the invariants prove nothing
cmp_ok($F->{jobs}{accepted}, '>=', 0.9 * $F->{jobs}{planned},
       'most planned jobs were accepted');
is($F->{faults}{'worker SIGKILL'}, $o{worker_kills}, 'workers were killed');
cmp_ok($F->{jobs}{'paused, then resumed'}, '>=', $o{pause_min},
       'jobs were paused (and resumed)') or diag("seed $r->{seed}");
is($F->{faults}{'PostgreSQL restart (immediate stop)'}, 1,
   'PostgreSQL was crashed');
cmp_ok($F->{faults}{'S3 slowdown (requests)'} // 0, '>', 0,
       'S3 answered SlowDown');
cmp_ok($F->{sse}{subscriptions} // 0, '>', 0, 'jobs were followed over SSE');
cmp_ok($F->{owners}{streams} // 0, '>', 0, 'and every owner over its owner stream');
ok(!grep({ $_ >= 1e9 } values %{ $F->{recovery} }),
   'after every fault a new job completed');

my %names = (lost => 'every accepted job ended or was deleted',
             wrong_bytes => 'every stored object has the origin\'s bytes',
             duplicates => 'no file transferred twice at once, no job ended twice',
             orphans => 'no object that no row references',
             counters => 'every job\'s counters match its files',
             counts => 'the counts behind the limits match the jobs',
             leases => 'no lease of a dead worker left past its end',
             deadlocks => 'no deadlock in PostgreSQL',
             hung => 'every request answered within async_dl_postgres_timeout + 1 s',
             sse => 'every SSE stream of an ended job got its final event',
             owner => 'every ended job\'s end reached its owner\'s stream');
for my $k (sort keys %names) {
    my @v = @{ $r->{violations}{$k} };
    is(scalar @v, 0, $names{$k})
        or diag(join "\n", "seed $r->{seed}:", @v[0 .. ($#v < 19 ? $#v : 19)]);
}
note($_) for @report;
done_testing();
