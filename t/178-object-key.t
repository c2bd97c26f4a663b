# The object key of a job's file (async_dl_object_key, PL/pgSQL since 14):
# <prefix><job>/<idx>/<name>, the name being the file's name without
# folders, else the last segment of the URL's path; anything but
# [A-Za-z0-9._-] becomes '_', runs of '_' collapse, leading dots go, at
# most 160 characters, "download" when nothing is left.  And the claim that
# records it keeps its generic plans (14).
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;

adl();
my $job = '00000000-0000-0000-0000-00000000000a';

sub key_of {
    my ($name, $url) = @_;
    my $q = sub { defined $_[0] ? sql_q($_[0]) : 'NULL' };
    return psql("SELECT coalesce(async_dl_object_key('dl/', '$job', 2, "
                . $q->($name) . ', ' . $q->($url) . "), '<null>')");
}

sub sql_q { my ($v) = @_; $v =~ s/'/''/g; return "'$v'" }

my @cases = (
    # name, url, the key's last segment
    [undef, 'http://h/a/b.txt?q=1#f', 'b.txt'],
    ['', 'https://h/x%20y.bin', 'x_20y.bin'],
    [undef, 'http://h', 'download'],
    [undef, 'http://h/', 'download'],
    [undef, 'http://h/dir/', 'download'],
    [undef, 'http://h/a?x=/b', 'a'],
    [undef, 'http://h/a#/b', 'a'],
    [undef, 'h/no/scheme', 'scheme'],
    [undef, 'ftp://h/..x', 'x'],
    ['report.pdf', 'http://h/other', 'report.pdf'],
    ['a/b/', 'http://h/x', 'b'],
    ['a\\b', 'http://h/x', 'b'],
    ['dir/../x y.zip', 'http://h/x', 'x_y.zip'],
    ['é ü.txt', 'http://h/x', '_.txt'],
    ['a__b', 'http://h/x', 'a_b'],
    ['...', 'http://h/x', 'download'],
    ['_', 'http://h/x', 'download'],
    ['/', 'http://h/x', 'download'],
    ['z' x 300, 'http://h/x', 'z' x 160],
);
for my $c (@cases) {
    my ($name, $url, $want) = @$c;
    is(key_of($name, $url), "dl/$job/2/$want",
       'name ' . (defined $name ? "'" . substr($name, 0, 20) . "'" : 'NULL')
       . " and URL $url");
}
is(key_of('x', undef), "dl/$job/2/x", 'a name needs no URL');
is(key_of(undef, undef), '<null>', 'no name and no URL: no key');
is(psql("SELECT async_dl_object_key(NULL, '$job', 2, 'x', 'http://h/x') "
        . 'IS NULL'), 't', 'no prefix: no key (the claim keeps write_key)');

is(psql("SELECT array_to_string(proconfig, ',') FROM pg_proc WHERE proname "
        . "= 'async_dl_claim'"), 'plan_cache_mode=force_generic_plan',
   'the claim plans its statements once per session');

done_testing();
