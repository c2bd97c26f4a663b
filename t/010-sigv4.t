#!/usr/bin/perl
# Cross-checks common/adl_sigv4.c (via the sigv4_tool binary) against
# botocore byte for byte: presigned URLs and Authorization headers.
#
# Needs the tool built first (the test builds nothing):
#   gcc -std=c99 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Werror -O2 \
#       -Icommon common/adl_sigv4.c t/tools/sigv4_tool.c -lcrypto \
#       -o build/sigv4_tool
# or point ADL_SIGV4_TOOL at one.  Reference: Debian's /usr/bin/python3
# with python3-boto3.  A missing tool or botocore is a failure, not a skip.

use strict;
use warnings;
use FindBin;
use Digest::SHA qw(sha256_hex);
use Test::More;

my $root = "$FindBin::Bin/..";
my $tool = $ENV{ADL_SIGV4_TOOL}
    // ($ENV{ADL_BUILD} || "$root/build") . "/sigv4_tool";
my $python = '/usr/bin/python3';
my $boto = "$root/t/tools/botocore_sign.py";

sub run {
    open(my $fh, '-|', @_) or return (-1, '');
    local $/;
    my $out = <$fh> // '';
    close $fh;
    return ($? >> 8, $out);
}

sub run_quiet {
    open(my $saved, '>&', \*STDERR) or die "dup stderr: $!";
    open(STDERR, '>', '/dev/null') or die "/dev/null: $!";
    my @r = run(@_);
    open(STDERR, '>&', $saved) or die "restore stderr: $!";
    return @r;
}

if (!-x $tool) {
    fail("sigv4 tool $tool is missing: build it, see the top of $0");
    done_testing();
    exit 1;
}
if ((run($python, '-c', 'import botocore'))[0] != 0) {
    fail("$python cannot import botocore: apt-get install python3-boto3");
    done_testing();
    exit 1;
}

my @base = (qw(--access AKIDEXAMPLE --secret wJalrXUtnFEMI/K7MDENG+bPxRfiCY),
            qw(--time 1704164645));
my $ep = 'http://127.0.0.1:9000';

sub printable { $_[0] =~ s/([^\x20-\x7e])/sprintf('\\x%02x', ord $1)/ger }

sub disposition { (run($tool, 'disposition', $_[0]))[1] =~ s/\n\z//r }

# [name, via (botocore path expected), mode, args...]
my @cases = (
    ['get, path style', 'client get_object', 'presign',
     '--endpoint', $ep, '--bucket', 'bkt', '--key', 'plain.bin',
     '--region', 'us-east-1', '--method', 'GET'],
    ['get, odd key, disposition, expires 1', 'client get_object', 'presign',
     '--endpoint', $ep, '--bucket', 'bkt',
     '--key', 'dir one/sub/ü+=~%20&;,$@!*\'()[]{}"#?<>|^`\\x y.txt',
     '--region', 'eu-west-1', '--method', 'GET', '--expires', 1,
     '--query', 'response-content-disposition='
         . disposition("Quarterly \"report\" ü 日本.pdf")],
    ['get, virtual, expires 604800', 'client get_object', 'presign',
     '--endpoint', 'http://s3.local:9000', '--bucket', 'bkt', '--virtual',
     '--key', 'a b/c+d.txt', '--region', 'eu-central-1', '--method', 'GET',
     '--expires', 604800],
    ['get, virtual falls back for dotted bucket', 'client get_object',
     'presign', '--endpoint', 'http://s3.local:9000', '--bucket', 'my.bkt',
     '--virtual', '--key', 'k', '--region', 'us-west-2', '--method', 'GET'],
    ['get, endpoint path prefix', 'client get_object', 'presign',
     '--endpoint', "$ep/pre fix/", '--bucket', 'bkt', '--key', 'k/',
     '--region', 'ap-southeast-2', '--method', 'GET'],
    ['get, virtual + prefix', 'client get_object', 'presign',
     '--endpoint', 'https://s3.example.com/pre', '--bucket', 'b-1',
     '--virtual', '--key', 'x', '--region', 'us-east-1', '--method', 'GET'],
    ['get, ipv6 endpoint', 'client get_object', 'presign',
     '--endpoint', 'http://[::1]:9000', '--bucket', 'bkt', '--key', '~a',
     '--region', 'us-east-1', '--method', 'GET'],
    ['get, dot segments and slashes are not normalized', 'client get_object',
     'presign', '--endpoint', $ep, '--bucket', 'bkt',
     '--key', '/lead//./x/../', '--region', 'us-east-1', '--method', 'GET'],
    ['get, two response params in caller order', 'client get_object',
     'presign', '--endpoint', $ep, '--bucket', 'bkt', '--key', 'k',
     '--region', 'us-east-1', '--method', 'GET',
     '--query', 'response-content-type=text/plain; charset=utf-8',
     '--query', 'response-content-disposition=' . disposition('""/'),
     '--query', 'response-cache-control=no-cache'],
    ['get, session token', 'client get_object', 'presign',
     '--endpoint', $ep, '--bucket', 'bkt', '--key', 'k', '--token',
     'FQoGZXIvYXdzE+/=token', '--region', 'us-east-1', '--method', 'GET'],
    ['head', 'client head_object', 'presign', '--endpoint', $ep,
     '--bucket', 'bkt', '--key', 'k', '--region', 'us-east-1',
     '--method', 'HEAD'],
    ['put with signed content-type', 'client put_object', 'presign',
     '--endpoint', $ep, '--bucket', 'bkt', '--key', 'up/ü.bin',
     '--region', 'us-east-1', '--method', 'PUT',
     '--header', 'Content-Type: application/octet-stream'],
    ['multipart create', 'client create_multipart_upload', 'presign',
     '--endpoint', $ep, '--bucket', 'bkt', '--key', 'big file.iso',
     '--region', 'us-east-1', '--method', 'POST', '--query', 'uploads='],
    ['multipart upload part', 'client upload_part', 'presign',
     '--endpoint', $ep, '--bucket', 'bkt', '--key', 'big file.iso',
     '--region', 'us-east-1', '--method', 'PUT', '--query', 'partNumber=1',
     '--query', 'uploadId=2~Zx/y+z=='],
    ['multipart upload part, uploadId first', 'client upload_part',
     'presign', '--endpoint', $ep, '--bucket', 'bkt', '--key', 'k',
     '--region', 'us-east-1', '--method', 'PUT', '--query', 'uploadId=u',
     '--query', 'partNumber=10000'],
    ['multipart complete', 'client complete_multipart_upload', 'presign',
     '--endpoint', $ep, '--bucket', 'bkt', '--key', 'k',
     '--region', 'us-east-1', '--method', 'POST', '--query', 'uploadId=u'],
    ['multipart abort', 'client abort_multipart_upload', 'presign',
     '--endpoint', $ep, '--bucket', 'bkt', '--key', 'k',
     '--region', 'us-east-1', '--method', 'DELETE', '--query', 'uploadId=u'],
    ['bucket listing, odd params', 'S3SigV4QueryAuth', 'presign',
     '--endpoint', $ep, '--bucket', 'bkt', '--region', 'us-east-1',
     '--method', 'GET', '--query', 'list-type=2', '--query', 'prefix=a b/ü',
     '--query', 'a-b=1', '--query', 'a=2', '--query', 'Z=', '--query',
     '~x=%2F'],
    ['https default port dropped', 'client get_object', 'presign',
     '--endpoint', 'https://S3.Example.COM:443', '--bucket', 'bkt',
     '--key', 'k', '--region', 'us-east-1', '--method', 'GET'],
    ['http :80 dropped, virtual', 'client get_object', 'presign',
     '--endpoint', 'http://s3.example.com:80', '--bucket', 'bkt',
     '--virtual', '--key', 'k', '--region', 'us-east-1', '--method', 'GET'],

    ['sign: PUT unsigned payload + content-type', 'S3SigV4Auth', 'sign',
     '--endpoint', $ep, '--bucket', 'bkt', '--key', 'dl/ü file+1.bin',
     '--region', 'us-east-1', '--method', 'PUT', '--payload',
     'UNSIGNED-PAYLOAD', '--header', 'Content-Type: application/pdf'],
    ['sign: PUT body, virtual', 'S3SigV4Auth', 'sign',
     '--endpoint', 'http://s3.local:9000', '--bucket', 'bkt', '--virtual',
     '--key', 'a/b c', '--region', 'eu-west-1', '--method', 'PUT',
     '--body', "hello\n"],
    ['sign: GET empty body', 'S3SigV4Auth', 'sign', '--endpoint', $ep,
     '--bucket', 'bkt', '--key', '%~=+', '--region', 'sa-east-1',
     '--method', 'GET', '--body', ''],
    ['sign: multipart create', 'S3SigV4Auth', 'sign', '--endpoint', $ep,
     '--bucket', 'bkt', '--key', 'k', '--region', 'us-east-1',
     '--method', 'POST', '--query', 'uploads=', '--payload',
     'UNSIGNED-PAYLOAD', '--header', 'content-type: video/mp4'],
    ['sign: multipart part', 'S3SigV4Auth', 'sign', '--endpoint', $ep,
     '--bucket', 'bkt', '--key', 'k', '--region', 'us-east-1',
     '--method', 'PUT', '--query', 'partNumber=3', '--query',
     'uploadId=a/b+c', '--body', 'x' x 1000],
    ['sign: messy and repeated headers', 'S3SigV4Auth', 'sign',
     '--endpoint', $ep, '--bucket', 'bkt', '--key', 'k',
     '--region', 'us-east-1', '--method', 'PUT', '--payload',
     'UNSIGNED-PAYLOAD', '--header', "X-Amz-Meta-B:  two \t words  ",
     '--header', 'x-amz-meta-a: 1', '--header', 'X-AMZ-META-B: again',
     '--header', 'Content-Disposition: ' . disposition('naïve "x".txt')],
    ['sign: query sorting, duplicates', 'S3SigV4Auth', 'sign',
     '--endpoint', $ep, '--bucket', 'bkt', '--key', 'k',
     '--region', 'us-east-1', '--method', 'GET', '--body', '',
     '--query', 'b=2', '--query', 'a=z', '--query', 'a=y', '--query',
     'a b=~', '--query', 'a-b=', '--query', 'ü=ü', '--query', 'A=1'],
    ['sign: session token, https default port', 'S3SigV4Auth', 'sign',
     '--endpoint', 'https://S3.Example.com:443', '--bucket', 'bkt',
     '--key', 'k', '--token', 'tok/en+=', '--region', 'us-east-1',
     '--method', 'DELETE', '--body', ''],
    ['sign: bucket level, virtual', 'S3SigV4Auth', 'sign',
     '--endpoint', 'http://s3.local:9000', '--bucket', 'bkt', '--virtual',
     '--region', 'us-east-1', '--method', 'GET', '--query', 'list-type=2',
     '--body', ''],
);

for my $case (@cases) {
    my ($name, $via, @args) = @$case;
    push @args, @base;
    my ($rc1, $ours) = run($tool, @args);
    my ($rc2, $boto_out) = run($python, $boto, @args);
    is($rc1, 0, "$name: sigv4_tool exit status");
    is($rc2, 0, "$name: botocore exit status");
    my %ours = $ours =~ /^([\w-]+): (.*)$/mg;
    my %ref = $boto_out =~ /^([\w-]+): (.*)$/mg;
    is(delete $ref{via}, $via, "$name: botocore path");
    # botocore keeps the endpoint's spelling in the URL (e.g. ":443");
    # what is signed is the Host value, compared on its own line.
    my ($endpoint) = map { $args[$_ + 1] } grep { $args[$_] eq '--endpoint' }
        0 .. $#args;
    if ($endpoint =~ /[A-Z]|:(?:80|443)(?:\/|$)/) {
        s{^https?://[^/]+}{} for grep { defined } $ours{url}, $ref{url};
    }
    ok(scalar(keys %ours) >= 2, "$name: output parsed") or diag $ours;
    is(join("\n", map { "$_: $ours{$_}" } sort keys %ours),
       join("\n", map { "$_: $ref{$_}" } sort keys %ref), "$name: identical");
}

# helpers; the expected values omit the constant 'attachment; filename='
my @disp = (
    ['report "final".pdf',
     q{"report final.pdf"; filename*=UTF-8''report%20final.pdf}],
    ["\xc3\xbc.txt", q{"_.txt"; filename*=UTF-8''%C3%BC.txt}],
    ['../..\\etc/passwd', q{"....etcpasswd"; filename*=UTF-8''....etcpasswd}],
    ["a\tb\x7fc\r\n;d", q{"abc;d"; filename*=UTF-8''abc%3Bd}],
    ['""/', q{"download"}],
    ["\xe6\x97\xa5\xe6\x9c\xac.pdf",
     q{"__.pdf"; filename*=UTF-8''%E6%97%A5%E6%9C%AC.pdf}],
);
for (@disp) {
    is(disposition($_->[0]), "attachment; filename=$_->[1]",
       'disposition of ' . printable($_->[0]));
}

for my $s ('', 'abc', 'x' x 1001, "\xc3\xbc\n") {
    is((run($tool, 'sha256', $s))[1], sha256_hex($s) . "\n",
       'sha256 of ' . length($s) . ' bytes');
}
is((run($tool, 'encode', "a b/\xc3\xbc~-._+%"))[1],
   "a%20b%2F%C3%BC~-._%2B%25\n", 'uri encode');
is((run($tool, 'encode', '--slash', "/a b/\xc3\xbc/"))[1],
   "/a%20b/%C3%BC/\n", 'uri encode keeping slashes');

my ($rc, $out) = run($tool, 'selftest');
is($rc, 0, 'every writer fails cleanly on short buffers') or diag $out;

# rejected input
my @get = ('--endpoint', $ep, '--bucket', 'b', '--key', 'k',
           '--region', 'us-east-1', '--method', 'GET', @base);
my @bad = (
    ['presign', '--expires', 0],
    ['presign', '--expires', 604801],
    ['presign', '--query', 'X-Amz-Date=20240101T000000Z'],
    ['presign', '--header', 'Host: evil'],
    ['sign', '--body', '', '--header', 'x-amz-date: 1'],
    ['sign', '--body', '', '--header', "x-a: b\r\nInjected: 1"],
    ['sign', '--body', '', '--header', 'bad name: 1'],
    ['sign'],
);
for my $b (@bad) {
    my ($mode, @extra) = @$b;
    isnt((run_quiet($tool, $mode, @get, @extra))[0], 0,
         "rejects $mode " . printable("@extra"));
}
for my $e ('ftp://h', 'http://u:p@h', 'http://h:99999', 'http://h:x',
           'http://h?x', 'http://', 'http://[::1') {
    isnt((run_quiet($tool, 'presign', @get, '--endpoint', $e))[0], 0,
         "rejects endpoint $e");
}

done_testing();
