package AsyncDL::Test;

=head1 NAME

AsyncDL::Test - the async-dl test harness: real components, Test::Nginx-style blocks

=head1 SYNOPSIS

    use lib 't/lib';
    use AsyncDL::Test;

    run_tests();

    __DATA__

    === TEST 1: health answers when the database does
    --- config
    location /v1/download/ { async_dl; }
    --- request
    GET /v1/download/health
    --- error_code: 200
    --- response_body_like: "status":"ok"
    --- no_error_log
    [error]

=head1 DESCRIPTION

One C<use> for a test file: Test::More, and every function of

=over

=item L<AsyncDL::Stack> - the stack a file stands on: PostgreSQL, the S3
server, the origins, the worker, the nginx under test; their ports,
configurations and logs; jobs, files and objects.

=item L<AsyncDL::Client> - requests to nginx: C<request>, C<initiate>,
C<wait_job>.

=item L<AsyncDL::Blocks> - C<run_tests>: the file's C<__DATA__> blocks,
their sections, values carried from block to block.

=back

Their internals (C<slurp>, C<spawn>, C<nginx_conf>, C<worker_env>...) can
be called as C<AsyncDL::Test::name> too.

=cut

use strict;
use warnings;

use Exporter qw(import);
use Test::More;
use AsyncDL::Stack qw(:all);
use AsyncDL::Client qw(:all);
use AsyncDL::Blocks qw(:all);

our @EXPORT = (@Test::More::EXPORT, @AsyncDL::Stack::EXPORT,
               @AsyncDL::Client::EXPORT, @AsyncDL::Blocks::EXPORT);

1;
