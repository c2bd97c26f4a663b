# The short fuzz run (bench/fuzz, 2,000 mutated requests) against the
# build under test: no 5xx, no body that is not JSON, no nginx worker exit
# or sanitizer report, no request body read as a request, no hung request.
# The seed is printed; ADL_FUZZ_SEED=N runs the same requests again, and
# ADL_FUZZ_REQUESTS changes their number.
use strict;
use warnings;
use FindBin;
use Test::More;

my $root = "$FindBin::Bin/..";
my $seed = $ENV{ADL_FUZZ_SEED} // int(rand 2**31);
my $n = $ENV{ADL_FUZZ_REQUESTS} // 2000;

diag("fuzz seed $seed (ADL_FUZZ_SEED=$seed to run it again)");

open my $fh, '-|', $^X, "$root/bench/fuzz", '--requests', $n, '--seed', $seed,
    '--no-worker'
    or die "bench/fuzz: $!";
my $out = do { local $/; <$fh> };
close $fh;
my $rc = $? >> 8;

my %got;
$got{requests} = $1 if $out =~ /^fuzz: (\d+) requests on/m;
$got{'5xx'} = $1 if $out =~ /^  5xx answers: (\d+)/m;
$got{nonjson} = $1 if $out =~ /^  non-JSON bodies: (\d+)/m;
@got{qw(exits reports)} = ($1, $2)
    if $out =~ /^  nginx worker exits: (\d+), sanitizer reports: (\d+)/m;
@got{qw(desync hung)} = ($1, $2) if $out =~ /^  desync: (\d+), hung: (\d+)/m;
$got{alive} = $1 if $out =~ /^  nginx serves afterwards: (\S+)/m;
my ($api) = $out =~ /^  API requests: (\d+)/m;

is($got{requests}, $n, "$n requests sent");
ok(($api // 0) > $n / 2, 'most of them reached the API (' . ($api // 0) . ')');
is($got{$_}, 0, "$_: 0") for qw(5xx nonjson exits reports desync hung);
is($got{alive}, 'yes', 'nginx serves afterwards');
is($rc, 0, 'bench/fuzz exits 0') or diag($out);

done_testing();
