# POST {p}initiate with a body that does not arrive as one buffer in memory:
# chunked (Transfer-Encoding: chunked) in many small chunks, sent at once or
# trickled, and bodies that nginx keeps in a temporary file (past
# client_body_buffer_size with client_max_body_size 0, or
# client_body_in_file_only).  Each is parsed exactly as sent: the stored
# URLs equal those of the body.  Under the sanitizer build, a NULL or
# out-of-bounds copy aborts the nginx worker and fails the block.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use IO::Socket::INET;
use Socket qw(IPPROTO_TCP TCP_NODELAY);
use Time::HiRes qw(sleep);

# An HTTP/1.1 request written by hand: $head (request line and headers,
# without the blank line), then the pieces of the body, each its own
# write() when $pause is set.  Returns {status, headers, content, json}.
sub raw_http {
    my ($head, $pieces, $pause) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => adl()->{port}, Proto => 'tcp',
                                  Timeout => 30)
        or die "connect: $!";
    setsockopt($s, IPPROTO_TCP, TCP_NODELAY, 1);
    $s->autoflush(1);
    print $s "$head\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    for my $p (@{ $pieces || [] }) {
        print $s $p;
        sleep $pause if $pause;
    }
    local $/;
    my $resp = <$s> // '';
    close $s;
    my ($h, $body) = split /\r\n\r\n/, $resp, 2;
    my ($status) = ($h // '') =~ m{^HTTP/1\.[01] (\d+)};
    my %hdr;
    for my $l (split /\r\n/, $h // '') {
        $hdr{lc $1} = $2 if $l =~ /^([^:]+):\s*(.*)$/;
    }
    my $json = eval { decode_json($body // '') };
    return { status => $status // 0, headers => \%hdr,
             content => $body // '', json => $json };
}

# the body in chunks of $size bytes (the last one shorter), then the end
sub chunked {
    my ($body, $size) = @_;
    my @c;
    for (my $i = 0; $i < length $body; $i += $size) {
        my $part = substr($body, $i, $size);
        push @c, sprintf("%x\r\n%s\r\n", length $part, $part);
    }
    push @c, "0\r\n\r\n";
    return \@c;
}

sub initiate_chunked {
    my ($body, $size, $pause) = @_;
    return raw_http("POST /v1/download/initiate HTTP/1.1\r\n"
                    . "Content-Type: application/json\r\n"
                    . "Transfer-Encoding: chunked",
                    chunked($body, $size), $pause);
}

# a body of $n files whose URLs are all different
sub files_body {
    my ($n, $pad) = @_;
    my @urls = map { "https://example.com/f/$_/" . ('x' x ($pad // 40)) . "?n=$_" }
               0 .. $n - 1;
    return (encode_json({ files => [map { { url => $_ } } @urls] }), \@urls);
}

sub stored_urls {
    my ($id) = @_;
    return [split / /, psql("SELECT string_agg(url, ' ' ORDER BY idx)"
                            . " FROM async_dl_files WHERE job_id = '$id'")];
}

sub check_job {
    my ($res, $urls, $what) = @_;
    is($res->{status}, 202, "$what: 202") or diag($res->{content});
    my $id = $res->{json} && $res->{json}{jobId};
    ok($id, "$what: a job id") or return;
    is_deeply(stored_urls($id), $urls, "$what: every URL stored as sent");
}

run_tests();

__DATA__

=== TEST 1: chunked, one byte a chunk, all in one write
--- config
location /v1/download/ { async_dl; }
--- check
my ($body, $urls) = main::files_body(3);
main::check_job(main::initiate_chunked($body, 1), $urls, '1-byte chunks');
--- no_error_log
[error]

=== TEST 2: chunked, 7-byte chunks trickled one write at a time
--- config
location /v1/download/ { async_dl; }
--- check
my ($body, $urls) = main::files_body(4, 10);
main::check_job(main::initiate_chunked($body, 7, 0.002), $urls,
                'trickled 7-byte chunks');
--- no_error_log
[error]

=== TEST 3: chunked, chunks of several sizes, a larger body
--- config
location /v1/download/ { async_dl; }
--- check
my ($body, $urls) = main::files_body(200);
for my $size (3, 64, 1000, 4096) {
    main::check_job(main::initiate_chunked($body, $size), $urls,
                    "$size-byte chunks");
}
--- no_error_log
[error]

=== TEST 4: over 1m: the body is in a temporary file
--- config
location /v1/download/ {
    async_dl;
    client_max_body_size 4m;
}
--- check
my ($body, $urls) = main::files_body(300, 5000);
ok(length($body) > 1024 * 1024, 'the body is larger than the buffer');
main::check_job(main::initiate_chunked($body, 1000), $urls, 'in a file, chunked');
main::check_job(main::initiate_chunked($body, 5), $urls, 'in a file, 5-byte chunks');
main::check_job(main::initiate_chunked($body, 9000, 0.001), $urls,
                'in a file, trickled chunks');
main::check_job(initiate($body), $urls, 'in a file, Content-Length');
--- error_log
a client request body is buffered to a temporary file
--- no_error_log
[error]

=== TEST 5: client_body_in_file_only: a small body read back from its file
--- config
location /v1/download/ {
    async_dl;
    client_body_in_file_only clean;
}
--- check
my ($body, $urls) = main::files_body(2);
main::check_job(initiate($body), $urls, 'file only, Content-Length');
main::check_job(main::initiate_chunked($body, 2), $urls, 'file only, chunked');
--- no_error_log
[error]

=== TEST 6: chunked with no data: 400 body is empty
--- config
location /v1/download/ { async_dl; }
--- check
my $r = main::raw_http("POST /v1/download/initiate HTTP/1.1\r\n"
                       . "Content-Type: application/json\r\n"
                       . "Transfer-Encoding: chunked", ["0\r\n\r\n"]);
is($r->{status}, 400, 'empty chunked body: 400');
is($r->{json} && $r->{json}{error}{code}, 'INVALID_REQUEST', 'INVALID_REQUEST');
like($r->{json} && $r->{json}{error}{message}, qr/^body: is empty/, 'names the body');

=== TEST 7: chunked, not JSON across chunks: 400 that names the body
--- config
location /v1/download/ { async_dl; }
--- check
my $r = main::initiate_chunked('{"files":[{"url":"https://example.com/a"}]', 3);
is($r->{status}, 400, 'truncated JSON: 400');
like($r->{json} && $r->{json}{error}{message}, qr/^body: invalid JSON/, 'invalid JSON');

=== TEST 8: chunked over client_max_body_size: 413 in JSON
--- config
location /v1/download/ {
    async_dl;
    client_max_body_size 2k;
}
--- check
my ($body) = main::files_body(100);
my $r = main::initiate_chunked($body, 100);
is($r->{status}, 413, 'chunked body over the limit: 413');
is($r->{json} && $r->{json}{error}{code}, 'PAYLOAD_TOO_LARGE', 'PAYLOAD_TOO_LARGE');

=== TEST 9: client_max_body_size 0 still has a bound: 16m
--- config
location /v1/download/ {
    async_dl;
    client_max_body_size 0;
}
--- check
my $big = '{"files":[{"url":"https://example.com/a","name":"'
          . ('n' x (16 * 1024 * 1024)) . '"}]}';
my $r = initiate($big);
is($r->{status}, 413, 'a 16 MiB body with no client_max_body_size: 413');
is($r->{json} && $r->{json}{error}{code}, 'PAYLOAD_TOO_LARGE', 'PAYLOAD_TOO_LARGE');
$r = main::initiate_chunked($big, 65536);
is($r->{status}, 413, 'the same, chunked: 413');
my ($body, $urls) = main::files_body(2);
main::check_job(initiate($body), $urls, 'a small body still passes');
