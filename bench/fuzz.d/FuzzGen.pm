package FuzzGen;

# The fuzz run's requests.  Each starts from what the async-dl API accepts
# (its routes, methods, owners, headers and initiate bodies) and is then
# bent: odd methods, bytes and percent-escapes in paths, invalid or huge
# owners, wrong Content-Types and Idempotency-Keys, JSON with wrong types,
# extreme numbers, escapes PostgreSQL refuses, invalid UTF-8, NULs, deep
# nesting and large arrays, byte-level damage, chunked framing, and
# framing that lies.  Every choice comes from Perl's rand(): srand(seed)
# once gives the same sequence of requests.

use strict;
use warnings;

use MIME::Base64 qw(encode_base64);

# --- choices -----------------------------------------------------------------

sub pick { return $_[int rand @_] }
sub chance { return rand() < $_[0] }

# pick from (weight => value, ...)
sub weighted {
    my @wv = @_;
    my $total = 0;
    $total += $wv[$_] for grep { $_ % 2 == 0 } 0 .. $#wv;
    my $r = rand $total;
    for (my $i = 0; $i < @wv; $i += 2) {
        return $wv[$i + 1] if ($r -= $wv[$i]) < 0;
    }
    return $wv[-1];
}

# bytes that break parsers: NUL, stray UTF-8, overlong and surrogate forms,
# characters beyond the BMP, controls, quoting and path characters
my @ODD = ("\x00", "\xff", "\xfe", "\xc0", "\xc1", "\x80", "\xbf", "\xe9",
           "\xc3\xa9", "\xe2\x82", "\xc0\xae", "\xed\xa0\x80",
           "\xf4\x90\x80\x80", "\xf0\x9f\x93\xa6", "\xef\xbb\xbf", "\x7f",
           "\x01", "\x1b", "\t", " ", '"', "\\", "'", '%', '/', '?', '#', ';',
           '{', '}', '[', ']', ',', ':', "\xe2\x80\xae", "\xef\xbf\xbf");

my @PCT = ('%00', '%ff', '%c0%ae', '%2f', '%2e%2e', '%25', '%', '%g1', '%e2%82',
           '%ed%a0%80', '%f0%9f%93%a6', '%0a', '%0d', '%20', '%22', '%5c', '%7f',
           '%c3%a9', '%2e', '%3f', '%23');

sub random_bytes {
    my ($n, %o) = @_;
    my $s = '';
    while (length $s < $n) {
        my $c = chance(0.3) ? pick(@ODD) : chr(int rand 256);
        $c =~ s/[\x00\r\n]//g if $o{header};
        $s .= $c;
    }
    return $s;
}

# a few byte-level edits: flips, inserts, deletions, duplication, truncation
sub mutate_bytes {
    my ($s) = @_;
    for (1 .. 1 + int rand 4) {
        my $len = length $s;
        my $at = $len ? int rand $len : 0;
        my $op = weighted(3 => 'flip', 4 => 'insert', 2 => 'delete',
                          1 => 'dup', 1 => 'truncate', 1 => 'replace');
        if ($op eq 'flip' && $len) {
            substr($s, $at, 1) = chr(ord(substr($s, $at, 1)) ^ (1 << int rand 8));
        } elsif ($op eq 'insert') {
            substr($s, $at, 0) = chance(0.7) ? pick(@ODD) : random_bytes(1 + int rand 8);
        } elsif ($op eq 'delete' && $len) {
            substr($s, $at, 1 + int rand 16) = '';
        } elsif ($op eq 'dup' && $len) {
            my $part = substr($s, $at, 1 + int rand 32);
            substr($s, $at, 0) = $part x (1 + int rand 4);
        } elsif ($op eq 'truncate' && $len) {
            $s = substr($s, 0, $at);
        } elsif ($op eq 'replace') {
            substr($s, $at, 1 + int rand 8) = random_bytes(1 + int rand 8);
        }
    }
    return $s;
}

sub uuid {
    return sprintf('%08x-%04x-4%03x-%04x-%012x', int rand 2**32, int rand 2**16,
                   int rand 2**12, 0x8000 | int rand 2**14, int rand 2**48);
}

# --- the generator --------------------------------------------------------------

# new(prefixes => { prefix => 'header' | 'basic' | 'none' }, owners => [..],
#     origin => url)
sub new {
    my ($class, %o) = @_;
    return bless { %o, ids => [], keys => [], cursors => [], n => 0 }, $class;
}

# what answers taught: job ids (with their owner), cursors
sub learn_job { my ($self, $id, $prefix, $owner) = @_;
                push @{ $self->{ids} }, [$id, $prefix, $owner];
                shift @{ $self->{ids} } if @{ $self->{ids} } > 500 }
sub learn_cursor { my ($self, $c) = @_;
                   push @{ $self->{cursors} }, $c;
                   shift @{ $self->{cursors} } if @{ $self->{cursors} } > 50 }

sub job_id {
    my ($self) = @_;
    my @ids = @{ $self->{ids} };
    my $known = @ids ? pick(@ids)->[0] : uuid();
    return weighted(60 => $known, 15 => uuid(), 5 => uc $known,
                    3 => substr($known, 0, 35), 3 => "$known" . 'a',
                    3 => ($known =~ tr/-//dr), 3 => ($known =~ s/[0-9a-f]/g/r),
                    2 => '', 2 => '00000000-0000-0000-0000-000000000000',
                    2 => random_bytes(36), 2 => join('', map { pick(@PCT) } 1 .. 12));
}

sub owner_value {
    my ($self) = @_;
    my $o = pick(@{ $self->{owners} });
    return $o unless chance(0.25);
    return weighted(3 => '', 3 => "\xe9", 2 => "caf\xe9", 4 => mutate_bytes($o),
                    2 => 'o' x pick(1023, 1024, 1025, 2000, 2704, 4000, 7000),
                    3 => random_bytes(1 + int rand 64, header => 1),
                    1 => "\xc0\xae", 1 => "\xed\xa0\x80", 1 => "\xf4\x90\x80\x80",
                    1 => "  $o  ", 1 => "\xf0\x9f\x93\xa6" x (1 + int rand 400),
                    1 => 'x' x (1 + int rand 8000));
}

sub basic_auth {
    my ($self) = @_;
    my $user = $self->owner_value;
    $user = pick("$user\0evil", "\0", "a\0") if chance(0.1);
    my $cred = chance(0.05) ? $user : "$user:" . pick('pw', '', ':', "\xff");
    return weighted(90 => 'Basic ' . encode_base64($cred, ''),
                    3 => 'Basic !!!*', 2 => 'Basic', 2 => 'Bearer abc',
                    3 => 'Basic ' . encode_base64(random_bytes(1 + int rand 40), ''));
}

sub int_text {
    return weighted(50 => 70000 + int rand 10, 5 => 1, 4 => 0, 4 => -1,
                    3 => 2147483648, 3 => 9007199254740993,
                    3 => '9223372036854775807', 3 => '9223372036854775808',
                    3 => '-9223372036854775809', 2 => '1e3', 2 => '1.0',
                    2 => '-0', 2 => '1e400', 2 => '"70000"', 2 => 'null',
                    2 => 'true', 1 => '[]', 1 => '{}', 1 => '0x10',
                    1 => '01', 1 => ('9' x 400));
}

# a JSON string from raw bytes: quotes, backslashes and controls escaped,
# every other byte as it is (so invalid UTF-8 stays invalid)
sub str_text {
    my ($raw) = @_;
    $raw =~ s/(["\\])/\\$1/g;
    $raw =~ s/([\x00-\x1f])/sprintf('\\u%04x', ord $1)/ge;
    return "\"$raw\"";
}

# JSON escapes that decoders and PostgreSQL treat differently
sub odd_escape {
    return pick('\u0000', '\ud800', '\udc00', '\udc00\ud800', '\ud83d\udce6',
                '\u00e9', '\/', '\uffff', '\ufffe', '\u0001', '\u001f', '\u2028',
                '\u', '\u12', '\x41', '\U00E9', '\\');
}

sub name_text {
    my $raw = weighted(10 => "r\xc3\xa9sum\xc3\xa9 \xe2\x9c\x93.pdf", 4 => "a\"b\\c.txt",
                       4 => '../../etc/passwd', 3 => '', 3 => 'n' x 1024,
                       3 => 'n' x 1025, 2 => 'CON', 2 => ' ', 3 => "na\r\nme.txt",
                       3 => "\xf0\x9f\x93\xa6.bin", 2 => "\xe2\x80\xaeexe.txt",
                       2 => "\xef\xbf\xbf", 5 => random_bytes(1 + int rand 40),
                       3 => 'file;name="x".txt', 2 => "%2e%2e%2f", 2 => "a/b\\c",
                       2 => "\xc3" . 'x' x 10);
    my $t = str_text($raw);
    substr($t, 1 + int rand(length($t) - 1), 0) = odd_escape() if chance(0.2);
    return chance(0.05) ? pick('null', '1', '[]', '{}', 'true') : $t;
}

sub url_text {
    my ($self) = @_;
    my $o = $self->{origin};
    my $raw = weighted(20 => "$o/files/" . (70000 + int rand 10),
                       10 => 'http://127.0.0.1:1/x', 5 => 'https://example.com/a',
                       3 => 'https://example.com/a b', 3 => 'ftp://example.com/x',
                       3 => 'http://[::1]:8080/y', 3 => 'http://user:pw@example.com/z',
                       2 => 'http://example.com:0/', 2 => 'http://example.com:65536/',
                       2 => 'http://', 2 => 'https://', 2 => 'https://' . ('a' x 9000),
                       2 => "http://example.com/\xc3\xa9", 2 => 'http://example.com/%00',
                       2 => 'HTTP://EXAMPLE.COM/', 2 => 'http://example.com:/',
                       2 => 'http://[/', 2 => "http://example.com/\x7f",
                       2 => 'http://[fe80::1%25eth0]/', 2 => 'http://0x7f.1/',
                       2 => 'http://example.com/' . ('a' x 8170),
                       3 => random_bytes(1 + int rand 60));
    my $t = str_text($raw);
    substr($t, 1 + int rand(length($t) - 1), 0) = odd_escape() if chance(0.1);
    return chance(0.05) ? pick('null', '1', '[]', '{}') : $t;
}

sub timeout_text {
    return weighted(4 => '"90s"', 3 => '"5m"', 2 => '"1h"', 2 => '"2h"', 2 => '0',
                    2 => '-1', 3 => '3600', 2 => '3601', 2 => '1.5', 2 => '"1y"',
                    2 => '""', 2 => '"abc"', 2 => '"10ms"', 2 => '"999999999999d"',
                    1 => 'true', 2 => 'null', 1 => '31536000', 1 => '31536001',
                    1 => '"5m5m"', 1 => '" 5m"', 1 => '"5 m"',
                    1 => str_text(random_bytes(1 + int rand 10)));
}

sub array_of {
    my ($n, $gen) = @_;
    return '[' . join(',', map { $gen->() } 1 .. $n) . ']';
}

sub count {
    return weighted(40 => 1, 25 => 2 + int rand 3, 10 => 5 + int rand 16,
                    3 => pick(20, 21, 999, 1000, 1001), 2 => 2000 + int rand 3000,
                    3 => 0);
}

# an initiate body, usually close to valid
sub json_body {
    my ($self) = @_;
    my @kv;
    my $source = weighted(35 => 'file_ids', 10 => 'file_id', 45 => 'files',
                          5 => 'none', 5 => 'two');

    if ($source eq 'file_ids' || $source eq 'two') {
        push @kv, ['file_ids', chance(0.9) ? array_of(count(), \&int_text) : int_text()];
    }
    if ($source eq 'file_id' || ($source eq 'two' && chance(0.5))) {
        push @kv, ['file_id', int_text()];
    }
    if ($source eq 'files' || ($source eq 'two' && !grep { $_->[0] eq 'file_id' } @kv)) {
        my $file = sub {
            my @f = (['url', $self->url_text]);
            push @f, ['name', name_text()] if chance(0.5);
            push @f, [pick('x', 'URL', 'size'), '1'] if chance(0.03);
            @f = reverse @f if chance(0.2);
            @f = grep { $_->[0] ne 'url' } @f if chance(0.03);
            return '{' . join(',', map { str_text($_->[0]) . ':' . $_->[1] } @f) . '}';
        };
        push @kv, ['files', chance(0.95) ? array_of(count(), $file)
                                          : pick('{}', '"x"', 'null', $file->())];
    }
    push @kv, ['timeout', timeout_text()] if chance(0.3);
    push @kv, ['callback_url', chance(0.8) ? $self->url_text : 'null'] if chance(0.15);
    push @kv, [pick('x', 'FILES', 'file_ids', "caf\xc3\xa9", "\xff", '', 'a' x 600),
               int_text()] if chance(0.05);

    @kv = sort { rand() <=> 0.5 } @kv if chance(0.3);

    my $body = '{' . join(',', map { str_text($_->[0]) . ':' . $_->[1] } @kv) . '}';

    if (chance(0.01)) {
        my $d = pick(100, 2047, 2048, 2049, 5000);
        $body = '{"files":' . ('[' x $d) . (']' x $d) . '}';
    }
    $body = pick('[]', '""', 'null', '1', '{}', "\xef\xbb\xbf$body", "$body$body",
                 "$body ", " \n$body", "$body\x00", "$body garbage")
        if chance(0.05);
    $body = mutate_bytes($body) if chance(0.2);
    return $body;
}

sub jobs_query {
    my ($self) = @_;
    my @cur = @{ $self->{cursors} };
    my @args;
    for (1 .. int rand 4) {
        my $k = weighted(4 => 'limit', 3 => 'offset', 4 => 'status', 4 => 'cursor',
                         1 => 'x', 1 => "st\xe9", 1 => '');
        my $v = weighted(
            3 => pick('', '0', '1', '20', '100', '101', '-1', '99999999999', '1e2',
                      '%00', '%ff', "\xff", ' 1', '1 '),
            3 => pick('queued', 'processing', 'completed', 'failed', 'canceled',
                      'QUEUED', 'queued%00', "qu\xc3\xa9ued", 'deleted'),
            3 => (@cur ? pick(@cur) : '1.' . uuid()),
            2 => pick('999999999999999999.' . uuid(), '1234567890123456789.' . uuid(),
                      '.' . uuid(), 'a.b', '-1.' . uuid(), '1..' . uuid(), '%ff.%00'),
            1 => random_bytes(1 + int rand 20));
        push @args, "$k=$v";
    }
    return join '&', @args;
}

sub method_for {
    my ($natural) = @_;
    return $natural if chance(0.85);
    return weighted(20 => 'GET', 20 => 'POST', 10 => 'DELETE', 10 => 'HEAD',
                    5 => 'PUT', 5 => 'PATCH', 4 => 'OPTIONS', 2 => 'TRACE',
                    2 => 'PROPFIND', 2 => 'FOO', 1 => 'get', 1 => 'G-E_T',
                    1 => 'X' x 100, 1 => 'CONNECT');
}

# path (after the prefix), natural method, and what kind of route it is
sub route {
    my ($self, %o) = @_;
    my $id = $self->job_id;
    my $r = weighted(3 => 'health', 25 => 'initiate', 10 => 'jobs', 20 => 'status',
                     ($o{no_stream} ? () : (5 => 'stream')), 10 => 'job',
                     8 => 'cancel', 12 => 'file', 7 => 'other');
    my %r = (
        health => ['health', 'GET'], initiate => ['initiate', 'POST'],
        jobs => ['jobs', 'GET'], status => ["status/$id", 'GET'],
        stream => ["stream/$id", 'GET'], job => [$id, chance(0.3) ? 'DELETE' : 'GET'],
        cancel => ["$id/cancel", 'POST'],
        file => ["$id/files/" . weighted(10 => 0, 5 => 1, 3 => 2, 1 => -1, 1 => 999999999,
                                         1 => 1000000000, 1 => '1e3', 1 => '00',
                                         1 => '+1', 1 => '', 1 => '0x1', 1 => '٣'),
                 'GET'],
        other => [pick('', 'x', 'initiate/', 'jobs/', 'status/', 'stream/', "$id/",
                       "$id/files", "$id/files/", "$id/cancel/x", "$id/x", 'HEALTH',
                       "status/$id/x", "$id//cancel", '..', '%2e%2e/health'),
                  'GET'],
    );
    my ($path, $method) = @{ $r{$r} };
    my $query = '';
    if ($r eq 'jobs' && chance(0.6)) {
        $query = $self->jobs_query;
    } elsif ($r eq 'stream' && chance(0.2)) {
        $query = 'lastEventId=' . pick('1', '-1', '999999999999999999999', "\xff", '%00');
    } elsif (chance(0.05)) {
        $query = $self->jobs_query;
    }

    if (chance(0.2)) {
        my $op = weighted(4 => 'raw', 4 => 'pct', 2 => 'slashes', 2 => 'dots',
                          1 => 'long', 1 => 'case');
        my $at = int rand(length($path) + 1);
        if ($op eq 'raw') {
            substr($path, $at, 0) = random_bytes(1 + int rand 4, header => 1) =~ s/[ ?#]//gr;
        } elsif ($op eq 'pct') {
            substr($path, $at, 0) = join '', map { pick(@PCT) } 1 .. 1 + int rand 3;
        } elsif ($op eq 'slashes') {
            substr($path, $at, 0) = '//';
        } elsif ($op eq 'dots') {
            substr($path, $at, 0) = pick('/./', '/../', '/.', '%2e/');
        } elsif ($op eq 'long') {
            $path .= '/' . ('a' x pick(1000, 4000, 8200, 9000));
        } else {
            $path = uc $path;
        }
    }
    return ($path, $method, $r, $query);
}

# One request: { raw, method, route, prefix, head (a HEAD request),
# stream (may answer an event stream), summary }.  %o: mode => 'close'
# (any framing, Connection: close), 'keepalive' (honest framing)
sub request {
    my ($self, %o) = @_;
    my $n = ++$self->{n};
    my $keep = ($o{mode} // 'close') ne 'close';
    my @prefixes = sort keys %{ $self->{prefixes} };
    my $prefix = weighted(70 => '/v1/download/', 15 => '/v2/', 10 => '/v3/',
                          5 => pick('/', '/v1/', '/v1/downloadx/', '/V1/download/',
                                    '/v1//download/', '/other/'));
    my $auth = $self->{prefixes}{$prefix} // 'header';

    my ($path, $natural, $route, $query) = $self->route(no_stream => $keep);
    my $method = method_for($natural);
    my $target = $prefix . $path . (length $query ? "?$query" : '');
    $target = pick('*', '', 'http://localhost' . $target, "$target#frag",
                   "$target\t") if chance(0.01);

    my @h = ('Host: localhost', "X-Fuzz: $n");

    if ($auth eq 'header' && chance(0.97)) {
        push @h, 'X-User: ' . $self->owner_value;
    } elsif ($auth eq 'basic' && chance(0.97)) {
        push @h, 'Authorization: ' . $self->basic_auth;
    }

    my $body;
    if ($method eq 'POST' || chance(0.05)) {
        $body = $route eq 'initiate' || chance(0.3)
              ? (chance(0.95) ? $self->json_body : random_bytes(int rand 200))
              : (chance(0.5) ? '' : $self->json_body);
        $body = '' if chance(0.02);
        if (chance(0.003)) {                       # over client_max_body_size
            $body = '{"files":[' . join(',', ('{"url":"https://example.com/' . ('a' x 5000) . '"}') x 450) . ']}';
        }
    }

    if (defined $body || chance(0.05)) {
        push @h, 'Content-Type: ' . weighted(
            85 => 'application/json', 3 => 'application/json; charset=utf-8',
            2 => 'APPLICATION/JSON', 2 => 'application/jsonx', 2 => 'text/plain',
            1 => "application/json\t;x=1", 1 => '', 1 => 'application/json,text/html',
            1 => 'a' x 5000, 1 => "application/json\xff") if chance(0.95);
    }

    if ($route eq 'initiate' && chance(0.2)) {
        my @k = @{ $self->{keys} };
        my $key = weighted(6 => join('', map { chr(0x21 + int rand 94) } 1 .. 1 + int rand 40),
                           4 => (@k ? pick(@k) : 'k1'), 1 => '', 1 => 'k' x 255,
                           1 => 'k' x 256, 1 => 'a b', 1 => "k\xe9",
                           1 => random_bytes(1 + int rand 20, header => 1));
        push @{ $self->{keys} }, $key if @k < 20;
        push @h, "Idempotency-Key: $key";
    }

    if (chance(0.1)) {
        push @h, weighted(3 => 'If-None-Match: ' . pick('*', '"abc"', '"' . ('0' x 32) . '"', 'W/"x"'),
                          2 => 'Last-Event-ID: ' . pick('1', '-1', "\xff", 'x' x 300),
                          2 => 'Range: bytes=0-1', 1 => 'Expect: 100-continue',
                          2 => 'Accept: text/event-stream', 1 => 'Cookie: a=b',
                          1 => 'X-User: second', 1 => 'Content-Type: text/plain',
                          1 => 'Accept-Encoding: gzip', 1 => 'Origin: http://evil',
                          1 => 'X-Forwarded-For: 1.2.3.4');
    }

    # framing of the body
    my $framing = !defined $body ? 'none'
                : weighted(75 => 'length', 20 => 'chunked');
    if (!$keep && chance(0.04)) {
        $framing = weighted(3 => 'length-short', 2 => 'length-long', 2 => 'chunked-bad',
                            1 => 'length-and-chunked', 1 => 'length-negative',
                            1 => 'length-twice', 1 => 'te-gzip', 1 => 'chunked-ext',
                            1 => 'nul-header', 1 => 'http10', 1 => 'http20',
                            1 => 'bare-lf');
        $body //= $self->json_body;
    }

    my $version = 'HTTP/1.1';
    my $send = $body // '';
    my $eol = "\r\n";
    my $half_close = 0;

    if ($framing eq 'length') {
        push @h, 'Content-Length: ' . length $send;
    } elsif ($framing eq 'chunked' || $framing eq 'chunked-ext') {
        push @h, 'Transfer-Encoding: chunked';
        $send = chunk($send, $framing eq 'chunked-ext');
    } elsif ($framing eq 'length-short') {
        push @h, 'Content-Length: ' . int(length($send) / 2);
    } elsif ($framing eq 'length-long') {
        push @h, 'Content-Length: ' . (length($send) + 1 + int rand 100);
        $half_close = 1;
    } elsif ($framing eq 'chunked-bad') {
        push @h, 'Transfer-Encoding: chunked';
        $send = pick("zz\r\n$send\r\n0\r\n\r\n", "-1\r\n", "ffffffffffffffffff\r\n",
                     sprintf("%x\r\n%s0\r\n\r\n", length $send, $send),
                     sprintf("%x;%s\r\n%s\r\n0\r\n\r\n", length $send, 'e' x 5000, $send));
        $half_close = 1;
    } elsif ($framing eq 'length-and-chunked') {
        push @h, 'Content-Length: ' . length $send, 'Transfer-Encoding: chunked';
    } elsif ($framing eq 'length-negative') {
        push @h, 'Content-Length: -1';
    } elsif ($framing eq 'length-twice') {
        push @h, 'Content-Length: ' . length $send, 'Content-Length: 1';
    } elsif ($framing eq 'te-gzip') {
        push @h, 'Transfer-Encoding: gzip', 'Content-Length: ' . length $send;
    } elsif ($framing eq 'nul-header') {
        push @h, "X-Nul: a\0b", 'Content-Length: ' . length $send;
    } elsif ($framing eq 'http10') {
        $version = 'HTTP/1.0';
        push @h, 'Content-Length: ' . length $send;
    } elsif ($framing eq 'http20') {
        $version = 'HTTP/2.0';
        push @h, 'Content-Length: ' . length $send;
    } elsif ($framing eq 'bare-lf') {
        $eol = "\n";
        push @h, 'Content-Length: ' . length $send;
    }

    push @h, $keep ? 'Connection: keep-alive' : 'Connection: close';
    my @fixed = splice @h, 0, 2;
    @h = sort { rand() <=> 0.5 } @h if chance(0.2);

    my $raw = "$method $target $version$eol"
            . join('', map { "$_$eol" } @fixed, @h) . $eol . $send;

    my ($owner) = grep { /^X-User: / } @h;
    my $printable = "$method $target" =~ s/([^\x21-\x7e ])/sprintf('\\x%02x', ord $1)/ger;
    return { raw => $raw, n => $n, method => $method, route => $route,
             prefix => $prefix, head => $method eq 'HEAD',
             owner => $owner,
             half_close => $half_close, framing => $framing,
             summary => substr($printable, 0, 160) . " [$framing, "
                        . length($send) . ' body bytes]' };
}

sub chunk {
    my ($body, $ext) = @_;
    my $out = '';
    my $max = weighted(3 => 1, 3 => 7, 3 => 100, 2 => 4096, 1 => 70000);
    for (my $i = 0; $i < length $body; ) {
        my $n = 1 + int rand $max;
        my $part = substr($body, $i, $n);
        $out .= sprintf('%x', length $part) . ($ext ? ';ext=' . int(rand 9) : '')
              . "\r\n$part\r\n";
        $i += length $part;
    }
    return $out . "0\r\n" . ($ext && chance(0.5) ? "X-Trailer: 1\r\n" : '') . "\r\n";
}

1;
