# Client bytes that PostgreSQL would refuse as text (invalid UTF-8, NUL) or
# could not index (a huge owner) never reach it: every route answers a 4xx
# whose JSON code says which value, never 500, and nothing is written.
# The owner is checked on every route, whatever variable async_dl_owner
# reads ($http_x_user, $remote_user decoded from Basic credentials, which
# may hold a NUL that would cut the owner short into another one).
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use Encode ();
use IO::Socket::INET;
use MIME::Base64 qw(encode_base64);

sub jobs { psql("SELECT count(*) FROM async_dl_jobs") }

# valid UTF-8, then JSON
sub strict_json {
    my ($bytes) = @_;
    # UTF-8 as RFC 3629 has it: no overlong form, surrogate or stray byte
    my $chars = eval { Encode::decode('utf8', $bytes,
                                      Encode::FB_CROAK | Encode::LEAVE_SRC) };
    return undef unless defined $chars
                        && $chars !~ /[\x{D800}-\x{DFFF}]|[^\x{0}-\x{10FFFF}]/;
    return eval { JSON::PP->new->decode($chars) };
}

# A request written by hand, so that any byte can be in the request line
# and the headers.  Returns {status, content, json}.
sub raw_http {
    my ($line, $headers, $body) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => adl()->{port}, Proto => 'tcp',
                                  Timeout => 30)
        or die "connect: $!";
    my $req = "$line HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n";
    $req .= "$_\r\n" for @{ $headers || [] };
    $req .= "Content-Length: " . length($body) . "\r\n" if defined $body;
    $req .= "\r\n" . ($body // '');
    print $s $req;
    local $/;
    my $resp = <$s> // '';
    close $s;
    my ($h, $content) = split /\r\n\r\n/, $resp, 2;
    my ($status) = ($h // '') =~ m{^HTTP/1\.[01] (\d+)};
    return { status => $status // 0, content => $content // '',
             json => scalar strict_json($content // '') };
}

# a 4xx with that code and a message like $re, in valid JSON
sub refused {
    my ($r, $status, $code, $re, $what) = @_;
    is($r->{status}, $status, "$what: $status") or diag($r->{content});
    ok($r->{json}, "$what: valid JSON") or diag($r->{content});
    is($r->{json} && $r->{json}{error}{code}, $code, "$what: $code");
    like($r->{json} && $r->{json}{error}{message}, $re, "$what: message")
        if $re;
}

our $ID = '00000000-0000-4000-8000-000000000000';

# every route that has an owner, as [method, path, body]
sub routes {
    my ($id) = @_;
    return (['POST', '/v1/download/initiate', '{"files":[{"url":"https://example.com/a"}]}'],
            ['GET', "/v1/download/status/$id"],
            ['GET', "/v1/download/stream/$id"],
            ['GET', '/v1/download/jobs'],
            ['GET', "/v1/download/$id"],
            ['GET', "/v1/download/$id/files/0"],
            ['POST', "/v1/download/$id/cancel"],
            ['DELETE', "/v1/download/$id"]);
}

sub basic { return 'Authorization: Basic ' . encode_base64($_[0], '') }

run_tests();

__DATA__

=== TEST 1: an owner in UTF-8 beyond ASCII is fine, stored as sent
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
}
--- check
for my $owner ("zo\xc3\xab", "\xf0\x9f\x93\xa6 box", "\xf4\x8f\xbf\xbf", "\xe0\xa0\x80") {
    my $r = main::raw_http('POST /v1/download/initiate',
                           ["X-User: $owner", 'Content-Type: application/json'],
                           '{"files":[{"url":"https://example.com/a"}]}');
    is($r->{status}, 202, 'owner ' . unpack('H*', $owner) . ': 202') or diag($r->{content});
    my $id = $r->{json}{jobId};
    is(psql("SELECT encode(convert_to(owner, 'UTF8'), 'hex') FROM async_dl_jobs WHERE id = '$id'"),
       unpack('H*', $owner), 'stored byte for byte');
    $r = main::raw_http("GET /v1/download/status/$id", ["X-User: $owner"]);
    is($r->{status}, 200, 'its status: 200');
}
--- no_error_log
[error]

=== TEST 2: an owner that is not UTF-8 on initiate: 400 INVALID_OWNER, nothing written
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
}
--- setup
$::before = main::jobs();
--- check
my $r = main::raw_http('POST /v1/download/initiate',
                       ["X-User: \xe9", 'Content-Type: application/json'],
                       '{"files":[{"url":"https://example.com/a"}]}');
main::refused($r, 400, 'INVALID_OWNER', qr/async_dl_owner/, 'owner \xe9');
is(main::jobs(), $::before, 'nothing written');
--- no_error_log
[error]

=== TEST 3: the same owner on every route: 400 INVALID_OWNER
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
}
--- check
my $id = initiate({ files => [{ url => 'https://example.com/a' }] }, { 'X-User' => 'alice' })->{json}{jobId};
for my $route (main::routes($id)) {
    my ($m, $path, $body) = @$route;
    my $r = main::raw_http("$m $path", ["X-User: caf\xe9",
                                        $body ? ('Content-Type: application/json') : ()],
                           $body);
    main::refused($r, 400, 'INVALID_OWNER', undef, "$m $path");
}
is(psql("SELECT status FROM async_dl_jobs WHERE id = '$id'"), 'queued', 'the job is untouched');
--- no_error_log
[error]

=== TEST 4: every malformed UTF-8 form: 400 INVALID_OWNER
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
}
--- check
my %bad = ('overlong /' => "\xc0\xae", 'overlong 3-byte' => "\xe0\x80\xaf",
           'overlong 4-byte' => "\xf0\x80\x80\xaf", 'surrogate' => "\xed\xa0\x80",
           'above U+10FFFF' => "\xf4\x90\x80\x80", 'f5' => "\xf5\x80\x80\x80",
           'ff' => "a\xffb", 'lone continuation' => "\x80", 'cut short' => "ab\xe2\x82",
           'cut short 4-byte' => "\xf0\x9f\x93", 'latin-1' => "Jos\xe9",
           'continuation missing' => "\xc3a");
for my $what (sort keys %bad) {
    my $r = main::raw_http("GET /v1/download/status/$main::ID", ["X-User: $bad{$what}"]);
    main::refused($r, 400, 'INVALID_OWNER', undef, $what);
}
--- no_error_log
[error]

=== TEST 5: a NUL in the owner ($remote_user) is refused, not cut short into another owner
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $remote_user;
}
--- check
my $r = main::raw_http('POST /v1/download/initiate',
                       [main::basic('carol:pw'), 'Content-Type: application/json'],
                       '{"files":[{"url":"https://example.com/a"}]}');
is($r->{status}, 202, 'carol: 202');
my $id = $r->{json}{jobId};
for my $route (main::routes($id)) {
    my ($m, $path, $body) = @$route;
    $r = main::raw_http("$m $path", [main::basic("carol\0mallory:pw"),
                                     $body ? ('Content-Type: application/json') : ()],
                        $body);
    main::refused($r, 400, 'INVALID_OWNER', undef, "NUL owner: $m $path");
}
$r = main::raw_http("GET /v1/download/status/$id", [main::basic("carol\xff:pw")]);
main::refused($r, 400, 'INVALID_OWNER', undef, 'Basic owner not UTF-8');
is(psql("SELECT count(*) FROM async_dl_jobs WHERE owner = 'carol'"), 1, 'only carol\'s job');
is(psql("SELECT status FROM async_dl_jobs WHERE id = '$id'"), 'queued', 'untouched');
--- no_error_log
[error]

=== TEST 6: an owner too large to index: 400 INVALID_OWNER; 1024 bytes pass
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
}
--- setup
$::before = main::jobs();
--- check
srand(9);
my $huge = join '', map { ('a' .. 'z', 'A' .. 'Z', 0 .. 9)[rand 62] } 1 .. 3000;
my $body = '{"files":[{"url":"https://example.com/a"}]}';
for my $route (main::routes($main::ID)) {
    my ($m, $path, $b) = @$route;
    my $r = main::raw_http("$m $path", ["X-User: $huge",
                                        $b ? ('Content-Type: application/json') : ()], $b);
    main::refused($r, 400, 'INVALID_OWNER', qr/1024 bytes/, "3000-byte owner: $m $path");
}
my $r = main::raw_http('POST /v1/download/initiate',
                       ['X-User: ' . substr($huge, 0, 1025), 'Content-Type: application/json'], $body);
main::refused($r, 400, 'INVALID_OWNER', undef, '1025 bytes');
is(main::jobs(), $::before, 'nothing written');
$r = main::raw_http('POST /v1/download/initiate',
                    ['X-User: ' . substr($huge, 0, 1024), 'Content-Type: application/json'], $body);
is($r->{status}, 202, '1024 bytes: 202');
--- no_error_log
[error]

=== TEST 7: Idempotency-Key beyond visible ASCII: 400 naming it
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
}
--- check
for my $key ("k\xe9y", "\xc3\xa9t\xc3\xa9", 'k' x 256) {
    my $r = main::raw_http('POST /v1/download/initiate',
                           ['X-User: alice', 'Content-Type: application/json',
                            "Idempotency-Key: $key"],
                           '{"files":[{"url":"https://example.com/a"}]}');
    main::refused($r, 400, 'INVALID_REQUEST', qr/^Idempotency-Key: /,
                  'key ' . substr(unpack('H*', $key), 0, 16));
}
--- no_error_log
[error]

=== TEST 8: body text: invalid UTF-8, NUL, lone surrogates, non-ASCII URLs: 400 naming the field
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
}
--- setup
$::before = main::jobs();
--- check
my @cases = (
    ['{"files":[{"url":"https://example.com/a","name":"caf' . "\xe9" . '"}]}', qr/^body: invalid JSON/],
    ['{"files":[{"url":"https://example.com/a","name":"' . "\xc0\xae" . '"}]}', qr/^body: invalid JSON/],
    ['{"files":[{"url":"https://example.com/a","name":"a\u0000b"}]}', qr/^body: invalid JSON/],
    ['{"files":[{"url":"https://example.com/a","name":"\ud800"}]}', qr/^body: invalid JSON/],
    ['{"files":[{"url":"https://example.com/a","name":"\udc00\ud800"}]}', qr/^body: invalid JSON/],
    ['{"files":[{"url":"https://example.com/' . "\xc3\xa9" . '"}]}', qr/^files\[0\]\.url: /],
    ['{"files":[{"url":"https://example.com/\u00e9"}]}', qr/^files\[0\]\.url: /],
    ['{"files":[{"url":"https://example.com/a\u0000b"}]}', qr/^body: invalid JSON/],
    ['{"files":[{"url":"https://example.com/a"}],"callback_url":"https://h/\u00e9"}', qr/^callback_url: /],
    ['{"files":[{"url":"https://example.com/a"}],"timeout":"5' . "\xe9" . '"}', qr/^body: invalid JSON/],
    ['{"files":[{"url":"https://example.com/a"}],"timeout":"5\u00e9"}', qr/^timeout: /],
    ['{"fil' . "\xff" . 'es":[]}', qr/^body: invalid JSON/],
    ['{"caf\u00e9":1,"files":[{"url":"https://example.com/a"}]}', qr/^caf\x{e9}: unknown field/],
);
for my $c (@cases) {
    my $r = main::raw_http('POST /v1/download/initiate',
                           ['X-User: alice', 'Content-Type: application/json'], $c->[0]);
    main::refused($r, 400, 'INVALID_REQUEST', $c->[1], 'body ' . $c->[0]);
}
is(main::jobs(), $::before, 'nothing written');
my $name = "r\xc3\xa9sum\xc3\xa9 \xe2\x9c\x93.pdf";
my $r = main::raw_http('POST /v1/download/initiate',
                       ['X-User: alice', 'Content-Type: application/json'],
                       '{"files":[{"url":"https://example.com/a","name":"' . $name . '"}]}');
is($r->{status}, 202, 'a name in UTF-8: 202');
is(psql("SELECT encode(convert_to(name, 'UTF8'), 'hex') FROM async_dl_files WHERE job_id = '$r->{json}{jobId}'"),
   unpack('H*', $name), 'the name stored as sent');
--- no_error_log
[error]

=== TEST 9: query arguments: raw and percent-encoded bytes: 400 naming the argument
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
}
--- check
my @cases = (['status=%ff', qr/^status: /], ["status=\xff", qr/^status: /],
             ["status=qu\xc3\xa9ued", qr/^status: /], ['status=queued%00', qr/^status: /],
             ['cursor=%ff.%00', qr/^cursor: /], ["cursor=1\xe9.$main::ID", qr/^cursor: /],
             ['cursor=999999999999999999.' . $main::ID, undef],
             ["limit=\xff", qr/^limit: /], ['limit=1%00', qr/^limit: /],
             ["offset=1\xe9", qr/^offset: /]);
for my $c (@cases) {
    my $r = main::raw_http("GET /v1/download/jobs?$c->[0]", ['X-User: alice']);
    if ($c->[1]) {
        main::refused($r, 400, 'INVALID_REQUEST', $c->[1], "jobs?$c->[0]");
    } else {
        is($r->{status}, 200, "jobs?$c->[0]: 200") or diag($r->{content});
    }
}
--- no_error_log
[error]
