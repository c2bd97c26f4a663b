package AsyncDL::Client;

=head1 NAME

AsyncDL::Client - requests to the nginx under test, as a client sends them

=head1 SYNOPSIS

    use lib 't/lib';
    use AsyncDL::Client;

    my $r = initiate({ file_ids => [70000] }, { 'X-User' => 'alice' });
    my $j = wait_job($r->{json}{jobId}, qr/^completed$/, 30,
                     { 'X-User' => 'alice' });

=head1 FUNCTIONS

C<request($method, $path, \%headers, $body)> sends one request (a path
goes to nginx instance 0 of L<AsyncDL::Stack>; a full URL anywhere), never
following redirects, and returns {status, headers, content, json, reason}:
headers by lower-case name, json the decoded body when the answer says it
is JSON.

C<initiate($body, \%headers, $prefix)> POSTs C<$body> (a reference is
encoded as JSON; a string is sent as it is) to C<${prefix}initiate>
(C</v1/download/> by default) with Content-Type: application/json.

C<wait_job($id, $status_re, $seconds, \%headers, $prefix)> polls the job's
status document until its status matches (30 s by default) and returns
the last document.  C<wait_bundle($id, $seconds, \%headers, $prefix)>
likewise until the job's zip is built or failed.

C<encode_json>, C<decode_json>: JSON::PP's.

=cut

use strict;
use warnings;

use Exporter qw(import);
use HTTP::Tiny;
use IPC::Open2 ();
use JSON::PP qw(encode_json decode_json);
use Test::More ();
use AsyncDL::Stack qw(adl wait_until);

our @EXPORT = qw(request initiate wait_job wait_bundle encode_json decode_json
                 prometheus_samples);
our %EXPORT_TAGS = (all => [@EXPORT]);

my $JSON = JSON::PP->new->canonical->allow_nonref;
my $HTTP = HTTP::Tiny->new(max_redirect => 0, timeout => 30,
                           keep_alive => 0);

sub request {
    my ($method, $path, $headers, $body) = @_;
    my $url = $path =~ m{^https?://} ? $path
                                     : 'http://127.0.0.1:' . adl()->{port} . $path;
    my %o = (headers => $headers || {});
    $o{content} = $body if defined $body;
    my $r = $HTTP->request($method, $url, \%o);
    my $json;
    if (($r->{headers}{'content-type'} // '') =~ m{json}
        && length($r->{content} // ''))
    {
        $json = eval { $JSON->decode($r->{content}) };
    }
    return { status => $r->{status}, headers => $r->{headers},
             content => $r->{content} // '', json => $json,
             reason => $r->{reason} };
}

sub initiate {
    my ($body, $headers, $prefix) = @_;
    $prefix //= '/v1/download/';
    $body = $JSON->encode($body) if ref $body;
    return request('POST', "${prefix}initiate",
                   { 'Content-Type' => 'application/json',
                     %{ $headers || {} } }, $body);
}

# polls job $id's status document until $done->(document) is true
sub wait_document {
    my ($id, $done, $what, $secs, $headers, $prefix) = @_;
    $prefix //= '/v1/download/';
    my $last;
    wait_until(sub {
        $last = request('GET', "${prefix}status/$id", $headers);
        return $last->{json} && $done->($last->{json});
    }, $secs // 30, "job $id: $what")
        or Test::More::diag(Test::More::explain($last->{json} // $last->{content}));
    return $last->{json};
}

sub wait_job {
    my ($id, $re, @opt) = @_;
    return wait_document($id, sub { ($_[0]{status} // '') =~ $re },
                         "its status to match $re", @opt);
}

sub wait_bundle {
    my ($id, @opt) = @_;
    return wait_document($id,
                         sub { ($_[0]{bundle}{status} // '') =~ /^(completed|failed)$/ },
                         'its zip to be built or fail', @opt);
}

# Prometheus text through the reference parser (t/tools/prom_parse.py):
# (parsed, { 'name{label=value,...}' => value, 'name{...}:type' => type })
sub prometheus_samples {
    my ($text) = @_;
    my $pid = IPC::Open2::open2(my $out, my $in, '/usr/bin/python3',
                                't/tools/prom_parse.py');
    print $in $text // '';
    close $in;
    my %v;
    while (<$out>) {
        my ($type, $name, $value) = /^(\S+) (\S+) (\S+)$/ or next;
        $v{$name} = $value;
        $v{"$name:type"} = $type;
    }
    waitpid($pid, 0);
    return ($? == 0, \%v);
}

1;
