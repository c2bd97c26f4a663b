# Wrong directive values: nginx -t fails with a message that names the
# directive, the value and what the directive accepts, for every kind of
# directive (enum, flag, number, time, URL, the delivery, a duplicate).
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;

run_tests();

__DATA__

=== TEST 1: an enum names its directive and its values
--- http_config
    async_dl_s3_addressing sideways;
--- config
location /v1/download/ { async_dl; }
--- must_die
--- error_log
invalid value "sideways" in "async_dl_s3_addressing" directive, it must be "path" or "virtual"

=== TEST 2: a flag
--- config
location /v1/download/ { async_dl; async_dl_urls maybe; }
--- must_die
--- error_log
invalid value "maybe" in "async_dl_urls" directive, it must be "on" or "off"

=== TEST 3: a number that is not one
--- config
location /v1/download/ { async_dl; async_dl_max_pending lots; }
--- must_die
--- error_log
invalid "async_dl_max_pending" value "lots": must be between 0 and 2147483647

=== TEST 4: a number out of its bounds, at http level
--- http_config
    async_dl_postgres_pool 0;
--- config
location /v1/download/ { async_dl; }
--- must_die
--- error_log
invalid "async_dl_postgres_pool" value "0": must be between 1 and 1024

=== TEST 5: a time that is not one
--- config
location /v1/download/ { async_dl; async_dl_heartbeat soon; }
--- must_die
--- error_log
invalid "async_dl_heartbeat" value "soon": must be between 1000 ms and 3600000 ms

=== TEST 6: a time out of its bounds
--- http_config
    async_dl_postgres_timeout 2h;
--- config
location /v1/download/ { async_dl; }
--- must_die
--- error_log
invalid "async_dl_postgres_timeout" value "2h": must be between 10 ms and 3600000 ms

=== TEST 7: a time in a location
--- config
location /v1/download/ { async_dl; async_dl_default_timeout forever; }
--- must_die
--- error_log
invalid "async_dl_default_timeout" value "forever": must be between 1000 ms and 604800000 ms

=== TEST 8: a source URL without its placeholder
--- config
location /v1/download/ { async_dl; async_dl_source_url ftp://files/x; }
--- must_die
--- error_log
invalid "async_dl_source_url" value "ftp://files/x": must be an http or https URL with "{file_id}"

=== TEST 9: the delivery
--- config
location /v1/download/ { async_dl; async_dl_delivery sideways; }
--- must_die
--- error_log
"async_dl_delivery" directive must be "redirect" or "proxy @location"

=== TEST 10: a directive given twice
--- config
location /v1/download/ { async_dl; async_dl_max_files 5; async_dl_max_files 6; }
--- must_die
--- error_log
"async_dl_max_files" directive is duplicate

=== TEST 11: the values that are right still pass
--- http_config
    async_dl_s3_addressing VIRTUAL;
    async_dl_postgres_pool 2;
    async_dl_postgres_timeout 2s;
--- config
location /v1/download/ {
    async_dl;
    async_dl_urls off;
    async_dl_max_pending 0;
    async_dl_heartbeat 5s;
}
--- request
GET /v1/download/health
--- error_code: 200
--- response_body
{"status":"ok","workers":0}
--- no_error_log
[error]
