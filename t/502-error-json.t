# Every error body is valid JSON, valid UTF-8, whatever the request held:
# messages that quote the client (the URI of an unknown route, a JSON key,
# jansson's "near" text) escape quotes and control characters, keep UTF-8,
# turn every stray byte into U+FFFD, and stay valid when cut short.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use Encode ();
use IO::Socket::INET;

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

# a request written by hand: any byte in the request line; {status, content, json}
sub raw_http {
    my ($line, $headers, $body, $raw) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => adl()->{port}, Proto => 'tcp',
                                  Timeout => 30)
        or die "connect: $!";
    my $req = "$line HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n";
    $req .= "$_\r\n" for @{ $headers || [] };
    $req .= "Content-Length: " . length($body) . "\r\n" if defined $body;
    $req .= "\r\n" . ($body // '') . ($raw // '');
    print $s $req;
    local $/;
    my $resp = <$s> // '';
    close $s;
    my ($h, $content) = split /\r\n\r\n/, $resp, 2;
    my ($status) = ($h // '') =~ m{^HTTP/1\.[01] (\d+)};
    my ($ct) = ($h // '') =~ m{^Content-Type:\s*(\S+)}mi;
    return { status => $status // 0, content => $content // '',
             type => $ct // '', json => scalar strict_json($content // '') };
}

# a 4xx in valid JSON with that code; returns its message
sub json_error {
    my ($r, $status, $code, $what) = @_;
    is($r->{status}, $status, "$what: $status");
    is($r->{type}, 'application/json', "$what: JSON");
    ok($r->{json}, "$what: valid UTF-8 JSON")
        or diag(unpack('H*', substr($r->{content}, 0, 400)));
    is($r->{json} && $r->{json}{error}{code}, $code, "$what: $code");
    return $r->{json} ? $r->{json}{error}{message} : undef;
}

sub body_error {
    my ($body, $what) = @_;
    return json_error(raw_http('POST /v1/download/initiate',
                               ['Content-Type: application/json'], $body),
                      400, 'INVALID_REQUEST', $what);
}

run_tests();

__DATA__

=== TEST 1: unknown routes quote the URI as valid JSON: stray bytes become U+FFFD
--- config
location /v1/download/ { async_dl; }
--- check
my %want = ('%ff' => "\x{fffd}", '%c0%ae' => "\x{fffd}\x{fffd}",
            '%ed%a0%80' => "\x{fffd}\x{fffd}\x{fffd}", "\xff\xfe" => "\x{fffd}\x{fffd}",
            'caf%c3%a9' => "caf\x{e9}", '%f0%9f%93%a6' => "\x{1f4e6}",
            '%e2%82' => "\x{fffd}\x{fffd}", '%22%5c%01%7f' => "\"\\\x01\x7f");
for my $path (sort keys %want) {
    my $msg = main::json_error(main::raw_http("GET /v1/download/x/$path/y"), 404,
                               'NOT_FOUND', "route $path");
    is($msg, "no such route: \"/v1/download/x/$want{$path}/y\"", "route $path: message");
}
--- no_error_log
[error]

=== TEST 2: a long URI cut short inside a character is still valid JSON
--- config
location /v1/download/ { async_dl; }
--- check
for my $pad ('', 'a', 'aa') {
    my $path = "/v1/download/x/$pad" . ('%c3%a9' x 700) . '/y';
    my $msg = main::json_error(main::raw_http("GET $path"), 404, 'NOT_FOUND',
                               "long URI +" . length $pad);
    like($msg // '', qr/^no such route: "\/v1\/download\/x\/a*\x{e9}+\x{fffd}?$/,
         'the message is cut, with no stray byte');
}
--- no_error_log
[error]

=== TEST 3: initiate: keys and jansson's messages quote the body as valid JSON
--- config
location /v1/download/ {
    async_dl;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
}
--- check
my $msg = main::body_error('{"k\u00e9y\"\n":1}', 'odd key');
is($msg, "k\x{e9}y\"\n: unknown field", 'the key quoted, escaped');
$msg = main::body_error('{"' . ("\xc3\xa9" x 600) . '":1}', 'long key');
like($msg // '', qr/^\x{e9}+\x{fffd}?$/, 'a key cut short mid-character');
$msg = main::body_error('{"files":[{"url":"https://example.com/a","' . ("\xe2\x9c\x93" x 300) . '":1}]}',
                        'long key in a file');
like($msg // '', qr/^files\[0\]\.\x{2713}+\x{fffd}*$/, 'cut short in a file');
for my $body ("\xc3", "{\"a\":tr\xc3\xa9}", "{\"a\":\"\xff\"}", "\xef\xbb\xbf{}",
              '{"a":' . ("\xe2\x9c\x93" x 200) . '}', "{\"a\x01\":1}", "{\"a\":\"\x01\"}",
              '{"a":"' . ('x' x 5000) . "\xe9\"}", "[\x00]") {
    main::body_error($body, 'body ' . unpack('H*', substr($body, 0, 12)));
}
--- no_error_log
[error]

=== TEST 4: nginx's own errors in the location are JSON too
--- config
location /v1/download/ { async_dl; }
--- check
main::json_error(main::raw_http('PUT /v1/download/initiate'), 405, 'METHOD_NOT_ALLOWED', 'PUT');
# a bad chunked body is refused by nginx inside the location: JSON
my $r = main::raw_http('POST /v1/download/initiate',
                       ['Content-Type: application/json', 'Transfer-Encoding: chunked'],
                       undef, "zz\r\n");
main::json_error($r, 400, 'BAD_REQUEST', 'bad chunked body');
# (a URI with %00 is refused while nginx reads the request line, before
# any location: its answer is the server's, not the API's)
is(main::raw_http('GET /v1/download/a%00b')->{status}, 400, '%00: 400');
--- error_log
client sent invalid chunked body
