package AsyncDL::HTTPMsg;

=head1 NAME

AsyncDL::HTTPMsg - read one HTTP/1.1 message (head and body) from a socket,
for the small proxies that tests put between the worker and the S3 server

=head1 SYNOPSIS

    while (my ($head, $body) = read_message($client)) { ... }

The body is read by Content-Length, or to the last chunk of a chunked one
(kept as sent); an empty list when the peer closed first.

=cut

use strict;
use warnings;
use Exporter 'import';

our @EXPORT = qw(read_message);

sub read_message {
    my ($fh) = @_;
    my $head = '';
    while ($head !~ /\r\n\r\n\z/) {
        sysread($fh, my $b, 1) or return;
        $head .= $b;
    }
    my $body = '';
    if ($head =~ /^Transfer-Encoding:\s*chunked/mi) {
        while ($body !~ /(?:^|\r\n)0\r\n\r\n\z/) {
            sysread($fh, my $b, 1) or return;
            $body .= $b;
        }
    } elsif (my ($len) = $head =~ /^Content-Length:\s*(\d+)/mi) {
        while (length $body < $len) {
            sysread($fh, my $b, $len - length $body) or return;
            $body .= $b;
        }
    }
    return ($head, $body);
}

1;
