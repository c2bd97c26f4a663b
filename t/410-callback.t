# Completion callbacks: the final status document POSTed to callback_url by
# the real worker, signed with ASYNC_DL_CALLBACK_SECRET (HMAC checked here),
# retried after a 500, refused for a blocked address; the outcome in the
# status; one delivery with several workers.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use Digest::SHA qw(hmac_sha256_hex);

my $s = adl();
my $o = $s->{origin};
my $SECRET = 'callback-s3cret';

start_nginx(<<'EOF');
location /v1/download/ {
    async_dl;
    async_dl_urls on;
}
EOF
start_worker(ASYNC_DL_CALLBACK_SECRET => $SECRET);
start_worker(ASYNC_DL_CALLBACK_SECRET => $SECRET);

origin_file('cb.txt', 0, "called back\n");

# [ [signature header, body], ... ] the flaky origin recorded for $key
sub received {
    my ($key) = @_;
    open my $fh, '<', "$s->{dir}/flaky/cb-$key.log" or return [];
    return [map { chomp; [split /\t/, $_, 2] } <$fh>];
}

sub callback_settled {
    my ($id) = @_;
    my $j;
    wait_until(sub {
        $j = request('GET', "/v1/download/status/$id")->{json};
        return $j && $j->{callback} && $j->{callback}{status} ne 'pending';
    }, 60, "callback of $id");
    return $j;
}

sub signature_ok {
    my ($sig, $body) = @_;
    my ($t, $mac) = ($sig // '') =~ /^t=(\d+),sha256=([0-9a-f]{64})$/
        or return 0;
    return abs(time - $t) < 600 && $mac eq hmac_sha256_hex("$t.$body", $SECRET);
}

# --- delivered after a 500, signed ------------------------------------------

my $r = initiate({ files => [{ url => "$o/f/cb.txt" }],
                   callback_url => "$s->{flaky}/callback/c1?fail=1" });
is($r->{status}, 202, 'job with a callback accepted');
my $id = $r->{json}{jobId};
my $j = callback_settled($id);
is($j->{callback}{status}, 'delivered', 'callback delivered');
is($j->{callback}{attempts}, 2, 'on the second attempt (after a 500)');
ok(!defined $j->{callback}{lastError}, 'no error left once delivered');
like($j->{callback}{deliveredAt}, qr/^\d{4}-.*Z$/, 'deliveredAt');
is($j->{callback}{url}, "$s->{flaky}/callback/c1?fail=1", 'url shown');

my $got = received('c1');
is(scalar @$got, 2, 'the origin got two POSTs (one 500, one 200)');
ok(signature_ok(@{ $got->[-1] }), 'X-Async-DL-Signature is the HMAC of "t.body"');
ok(!signature_ok($got->[-1][0], $got->[-1][1] . ' '), 'and only of that body');
my $doc = eval { decode_json($got->[-1][1]) } || {};
is($doc->{jobId}, $id, 'the body is the job\'s status document')
    or diag(explain($got));
is($doc->{status}, 'completed', 'in its final state');
is($doc->{files}[0]{downloadUrl}, "/v1/download/$id/files/0",
   'with the API\'s links');
ok(exists $doc->{expiresAt} && defined $doc->{expiresAt}, 'and expiresAt');
is(scalar(grep { /callback delivered/ } split /\n/, worker_log()), 1,
   'delivered once, though two workers run');

# --- a multi-file job's callback waits for its bundle --------------------

$r = initiate({ files => [{ url => "$o/f/cb.txt" }, { url => "$o/status/404" }],
                callback_url => "$s->{flaky}/callback/c2" });
$id = $r->{json}{jobId};
$j = callback_settled($id);
is($j->{callback}{status}, 'delivered', 'multi-file job: delivered')
    or diag(explain($j));
$doc = decode_json(received('c2')->[-1][1]);
is($doc->{bundle}{status}, 'completed', 'after its bundle was built');
is($doc->{downloadUrl}, "/v1/download/$id", 'so its downloadUrl works');
is($doc->{files}[1]{error}{code}, 'HTTP_STATUS', 'the failed file says why');

# --- a failed job is called back too ----------------------------------------

$r = initiate({ files => [{ url => "$o/status/404" }],
                callback_url => "$s->{flaky}/callback/c3" });
$j = callback_settled($r->{json}{jobId});
is($j->{callback}{status}, 'delivered', 'failed job: delivered');
is(decode_json(received('c3')->[-1][1])->{status}, 'failed', 'saying failed');

# --- blocked addresses: never connected to ------------------------------------

$r = initiate({ files => [{ url => "$o/f/cb.txt" }],
                callback_url => 'http://10.255.255.1/hook' });
$j = callback_settled($r->{json}{jobId});
is($j->{callback}{status}, 'failed', 'private address: failed');
like($j->{callback}{lastError}, qr/BLOCKED_ADDRESS.*10\.255\.255\.1/,
     'BLOCKED_ADDRESS');
is($j->{callback}{attempts}, 1, 'at once, without retries');

$r = initiate({ files => [{ url => "$o/f/cb.txt" }],
                callback_url => "$o/redirect/private" });
$j = callback_settled($r->{json}{jobId});
is($j->{callback}{status}, 'failed', 'a redirect is not followed');
like($j->{callback}{lastError}, qr/HTTP 302/, 'the 302 is the error');

# --- bounded retries ------------------------------------------------------------

stop_worker('TERM', 1);
stop_worker('TERM', 0);
start_worker(ASYNC_DL_CALLBACK_SECRET => $SECRET, ASYNC_DL_RETRY_BASE => '1ms');
$r = initiate({ files => [{ url => "$o/f/cb.txt" }],
                callback_url => "$s->{flaky}/callback/c4?fail=100" });
$j = callback_settled($r->{json}{jobId});
is($j->{callback}{status}, 'failed', 'always 500: failed in the end');
is($j->{callback}{attempts}, 8, 'after 8 attempts');
is($j->{callback}{lastError}, 'HTTP 500', 'lastError');
is(scalar @{ received('c4') }, 8, 'the origin saw 8 POSTs');

# --- no secret, no signature -------------------------------------------------

stop_worker('TERM');
start_worker();
$r = initiate({ files => [{ url => "$o/f/cb.txt" }],
                callback_url => "$s->{flaky}/callback/c5" });
$j = callback_settled($r->{json}{jobId});
is($j->{callback}{status}, 'delivered', 'without a secret: delivered');
is(received('c5')->[-1][0], '', 'without a signature');

unlike(worker_log(), qr/\[error\]/, 'no error logged');

done_testing();
