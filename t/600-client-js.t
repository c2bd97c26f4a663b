# The browser client's own unit tests (clients/js/test/*.test.mjs, node's
# test runner): follow()'s choice of the stream or polling and its
# fallbacks, backoff, reconnects with the last event id, the requests of
# initiate/cancel/remove/list/download, the React hook.  Fake EventSource
# and fetch, no network, no stack.  Each of node's tests is one check here.
use strict;
use warnings;
use Test::More;

my @files = sort glob('clients/js/test/*.test.mjs');
ok(@files >= 3, 'the test files are there: ' . join(' ', @files));

my $out = `node --test --test-timeout=60000 --test-reporter=tap @files 2>&1`;
my $rc = $? >> 8;
my $n = 0;
for my $line (split /\n/, $out) {
    next unless $line =~ /^(not )?ok \d+ - (.*)$/;     # top-level tests only
    $n++;
    ok(!$1, "node: $2");
}
is($rc, 0, 'node --test exited 0') or diag($out);
cmp_ok($n, '>=', 25, "node ran the tests ($n)");
my ($fail) = $out =~ /^# fail (\d+)$/m;
is($fail, 0, 'none failed');

done_testing();
