package AsyncDL::Blocks;

=head1 NAME

AsyncDL::Blocks - run a test file's Test::Nginx-style blocks

=head1 SYNOPSIS

    use lib 't/lib';
    use AsyncDL::Test;

    run_tests(config => <<'EOF', more_headers => 'X-User: alice');
    location /v1/download/ {
        async_dl;
        async_dl_owner $http_x_user;
        async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    }
    EOF

    __DATA__

    === TEST 1: a job is created
    --- more_headers
    X-User: alice
    Content-Type: application/json
    --- request
    POST /v1/download/initiate
    {"file_ids":[70000]}
    --- error_code: 202
    --- capture
    id: json.jobId

    === TEST 2: and answers its status
    --- request
    GET /v1/download/status/$::id
    --- error_code: 200
    --- response_json
    { jobId => $::id, status => 'queued' }
    --- no_error_log
    [error]

=head1 BLOCKS

The blocks are read from the test file's C<__DATA__> and run in order, on
one stack (L<AsyncDL::Stack>).  C<=== TEST name> starts a block;
C<--- section> (its value on the lines below) or C<--- section: value>
(on the same line) its sections:

    config               server{} contents (placeholders below)
    http_config          extra http{} contents
    adl_http_config      replaces the default async_dl_* http directives
    main_config          top-level nginx.conf contents
    pg_conninfo          the default async_dl_* http directives, another
                         libpq conninfo (placeholders expanded)
    s3_endpoint          the same, another S3 endpoint (e.g. $ADL_S3_PROXY)
    setup                Perl code run before the request (may set $::x)
    request              "METHOD /path" (or a full URL), then an optional
                         body
    more_headers         "Name: value" lines
    error_code           expected status
    response_body        expected body, exact
    response_body_like   regex the body must match
    response_headers     "Name: value" exact, "!Name" absent
    response_headers_like  "Name: regex"
    response_json        Perl hash/array expression; every key given must
                         match (values are regexes when written qr//, undef
                         wants null); arrays must have the length given
    capture              "name: source" lines: after the checks, the
                         response's value at source is kept in $::name for
                         the blocks after this one (see below)
    error_log            lines (substrings) the error log must show
    no_error_log         lines it must not show
    must_die             nginx -t must fail; error_log lists expected text
    check                Perl code run after, with $res (the response)

A block runs in this order: nginx is (re)started if the configuration it
asks for differs from the running one; setup; the request; the response
sections, captures included; check; the error log sections.  A block
without a request runs its setup and check only (a procedural case: a
fault, a race, a measure, written as a sub of the test file that check
calls).  What all blocks stand on (a worker, origin files) is started by
the file's code before C<run_tests>.  C<run_tests(%defaults)> gives every
block the sections it does not give itself (a block that gives one empty,
C<--- more_headers> with no lines, gives none).

Every block also checks that nothing at [alert], [crit] or [emerg] and no
sanitizer report was logged during it.  Placeholders in configs and
requests: C<$ADL_PG> (libpq conninfo), C<$ADL_S3_ENDPOINT>,
C<$ADL_S3_BUCKET>, C<$ADL_ORIGIN> (http://127.0.0.1:port of the origin
nginx), C<$ADL_FLAKY> (the flaky origin), C<$ADL_PORT> (this nginx),
C<$ADL_DIR> (the stack's folder), C<$ADL_S3_PROXY> (the S3 fault proxy,
once started).

=head2 Values carried from block to block

A value one block learns (a job's id, an ETag, a link) is carried to the
next ones in a Perl variable of package main, C<$::name>:

=over

=item C<--- capture> lines C<name: source> set C<$::name> from the
response, source being C<status>, C<body>, C<header.NAME> (a response
header, any case) or C<json.a.b.0.c> (a path into the JSON body, numbers
indexing arrays).  Each capture is an assertion: the value must be there.

=item C<--- setup> and C<--- check> code may set C<$::name> itself (e.g.
from C<initiate()> or C<psql()>); the test file's own subs are called as
C<main::name()>.

=back

C<$::name> is replaced by its value in the request line and body,
more_headers, response_body, response_body_like, and the values of
response_headers and response_headers_like; response_json, setup and
check are Perl and read C<$::name> as any variable.  A C<$::name> that
nothing set is an error: the file dies, rather than send a request that
would fail for another reason than the one the block names.

=cut

use strict;
use warnings;

use Exporter qw(import);
use JSON::PP;
use Time::HiRes qw(sleep);
use Test::More;
use AsyncDL::Stack qw(adl start_nginx nginx_conf expand error_log_mark
                      error_log_since);
use AsyncDL::Client qw(request);

our @EXPORT = qw(run_tests);
our @EXPORT_OK = qw(parse_blocks run_block json_contains);
our %EXPORT_TAGS = (all => [@EXPORT, @EXPORT_OK]);

my $JSON = JSON::PP->new->canonical->allow_nonref;

my @ALWAYS_BAD = ('[alert]', '[crit]', '[emerg]', 'AddressSanitizer',
                  'runtime error:', 'LeakSanitizer');

# run_tests(%defaults): every block of main's __DATA__, then done_testing.
sub run_tests {
    my (%defaults) = @_;
    adl();
    for my $b (parse_blocks()) {
        exists $b->{$_} or $b->{$_} = $defaults{$_} for keys %defaults;
        run_block($b);
    }
    done_testing();
}

sub parse_blocks {
    no strict 'refs';
    my $fh = \*{'main::DATA'};
    local $/;
    my $data = <$fh> // '';
    my @blocks;
    for my $chunk (split /^===\s*/m, $data) {
        next unless $chunk =~ /\S/;
        my ($name, $rest) = split /\n/, $chunk, 2;
        my %b = (name => $name);
        $rest //= '';
        my @parts = split /^---\s*/m, $rest;
        shift @parts;
        for my $p (@parts) {
            my ($head, $body) = split /\n/, $p, 2;
            $body //= '';
            if ($head =~ /^(\w+)\s*:\s*(.*?)\s*$/) {
                $b{$1} = $2;
            } else {
                $head =~ s/\s+$//;
                $body =~ s/\s+\z/\n/;
                $body =~ s/\A\n+//;
                $b{$head} = $body;
            }
        }
        push @blocks, \%b;
    }
    return @blocks;
}

sub lines {
    my ($s) = @_;
    return grep { length } map { s/^\s+|\s+$//gr } split /\n/, $s // '';
}

# Deep "contains": every key of $want is in $got with a matching value.
sub json_contains {
    my ($got, $want, $path) = @_;
    if (ref $want eq 'HASH') {
        return "$path is not an object" unless ref $got eq 'HASH';
        for my $k (sort keys %$want) {
            return "$path.$k is missing" unless exists $got->{$k};
            my $e = json_contains($got->{$k}, $want->{$k}, "$path.$k");
            return $e if $e;
        }
        return '';
    }
    if (ref $want eq 'ARRAY') {
        return "$path is not an array" unless ref $got eq 'ARRAY';
        return "$path has " . @$got . " items, want " . @$want
            unless @$got == @$want;
        for my $i (0 .. $#$want) {
            my $e = json_contains($got->[$i], $want->[$i], "$path\[$i]");
            return $e if $e;
        }
        return '';
    }
    if (ref $want eq 'Regexp') {
        return "$path = " . ($got // 'null') . " does not match $want"
            unless defined $got && !ref $got && $got =~ $want;
        return '';
    }
    if (!defined $want) {
        return defined $got ? "$path is " . $JSON->encode($got) . ", want null"
                            : '';
    }
    if (JSON::PP::is_bool($got)) {
        return ($got ? 1 : 0) == ($want ? 1 : 0) ? '' : "$path is $got";
    }
    return "$path is " . ($got // 'null') . ", want $want"
        unless defined $got && !ref $got && $got eq $want;
    return '';
}

# $::name (a variable of package main) replaced by its value
sub expand_perl {
    my ($s) = @_;
    return $s unless defined $s && $s =~ /\$::\w/;
    no strict 'refs';
    $s =~ s{\$::(\w+)}{
        ${"main::$1"} // die "$::block->{name}: \$::$1 is not set\n"
    }ge;
    return $s;
}

# The value at $source in response $res: status, body, header.NAME or
# json.a.0.b (see "Values carried from block to block").
sub response_value {
    my ($res, $source) = @_;
    return $res->{status} if $source eq 'status';
    return $res->{content} if $source eq 'body';
    return $res->{headers}{lc $1} if $source =~ /^header\.(.+)$/;
    my ($json, $path) = $source =~ /^(json)(?:\.(.*))?$/
        or die "capture: unknown source \"$source\"\n";
    my $v = $res->{json};
    for my $k (split /\./, $path // '') {
        if (ref $v eq 'ARRAY' && $k =~ /^\d+$/) { $v = $v->[$k] }
        elsif (ref $v eq 'HASH') { $v = $v->{$k} }
        else { return undef }
    }
    return $v;
}

sub send_request {
    my ($b) = @_;
    my ($line, $body) = split /\n/, expand($b->{request}), 2;
    my ($method, $path) = split ' ', expand_perl($line);
    my %h;
    for my $l (lines(expand_perl(expand($b->{more_headers})))) {
        my ($k, $v) = split /:\s*/, $l, 2;
        $h{$k} = $v;
    }
    $body = undef if defined $body && $body !~ /\S/;
    chomp $body if defined $body;
    return request($method, $path, \%h, expand_perl($body));
}

sub check_response {
    my ($b, $res) = @_;
    my $name = $b->{name};
    if (defined $b->{error_code}) {
        is($res->{status}, $b->{error_code}, "$name - status")
            or diag($res->{content});
    }
    if (defined $b->{response_body}) {
        my $want = expand_perl($b->{response_body});
        is($res->{content}, $want =~ s/\n\z//r eq $res->{content}
                            ? $res->{content} : $want, "$name - body");
    }
    if (defined $b->{response_body_like}) {
        my $re = expand_perl($b->{response_body_like}) =~ s/\n\z//r;
        like($res->{content}, qr/$re/s, "$name - body like");
    }
    for my $l (lines($b->{response_headers})) {
        if ($l =~ /^!\s*(\S+)/) {
            ok(!exists $res->{headers}{lc $1}, "$name - no $1 header");
            next;
        }
        my ($k, $v) = split /:\s*/, $l, 2;
        is($res->{headers}{lc $k}, expand_perl($v), "$name - header $k");
    }
    for my $l (lines($b->{response_headers_like})) {
        my ($k, $v) = split /:\s*/, $l, 2;
        $v = expand_perl($v);
        like($res->{headers}{lc $k} // '', qr/$v/, "$name - header $k like");
    }
    if (defined $b->{response_json}) {
        my $want = eval "package main; no strict; $b->{response_json}";
        die "$name: response_json: $@" if $@;
        my $err = defined $res->{json} ? json_contains($res->{json}, $want, '')
                                       : 'the body is not JSON';
        is($err, '', "$name - json") or diag($res->{content});
    }
    for my $l (lines($b->{capture})) {
        my ($var, $source) = $l =~ /^(\w+)\s*:\s*(\S+)$/
            or die "$name: capture: \"$l\" is not \"name: source\"\n";
        my $v = response_value($res, $source);
        no strict 'refs';
        ${"main::$var"} = $v;
        ok(defined $v, "$name - $source is there (\$::$var)")
            or diag($res->{content});
    }
}

sub run_block {
    my ($b) = @_;
    my $name = $b->{name};
    local $::block = $b;

    my %opt = map { $_ => $b->{$_} } grep { defined $b->{$_} }
              qw(http_config adl_http_config main_config pg_conninfo
                 s3_endpoint);
    my $config = $b->{config} // '';

    if (defined $b->{must_die}) {
        my $err = start_nginx($config, %opt, expect_failure => 1);
        ok(defined $err, "$name - nginx -t fails");
        for my $l (lines($b->{error_log})) {
            like($err // '', qr/\Q$l\E/, "$name - nginx -t says \"$l\"");
        }
        return;
    }

    my $s = adl();
    my $want_conf = nginx_conf($config, %opt);
    start_nginx($config, %opt)
        if !$s->{nginx_pid} || ($s->{nginx_conf} // '') ne $want_conf;

    my $mark = error_log_mark();
    if (defined $b->{setup}) {
        eval "package main; no strict; $b->{setup}; 1"
            or die "$name: setup died: $@";
    }

    if (defined $b->{request}) {
        $::res = send_request($b);
        check_response($b, $::res);
    }
    if (defined $b->{check}) {
        eval "package main; no strict; $b->{check}; 1"
            or fail("$name - check died: $@");
    }

    # give the worker process a moment to log what it does after the answer
    sleep 0.05 if defined $b->{error_log} || defined $b->{no_error_log};
    my $log = error_log_since($mark);
    for my $l (lines($b->{error_log})) {
        like($log, qr/\Q$l\E/, "$name - error log has \"$l\"");
    }
    for my $l (lines($b->{no_error_log})) {
        unlike($log, qr/\Q$l\E/, "$name - error log has no \"$l\"");
    }
    my @bad = grep { index($log, $_) >= 0 } @ALWAYS_BAD;
    is("@bad", '', "$name - nothing alarming logged") or diag($log);
}

1;
