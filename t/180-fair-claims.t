# Fair claims (15): each free slot goes to the owner that would then have
# the fewest files downloading, an owner's files go in priority order, at
# most N files download at once from one origin host and per owner (all
# workers together: claims take turns), and a host paused by Retry-After
# gives none until its pause ends.  Two sessions race for the same room.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use AsyncDL::Race;
use Time::HiRes qw(sleep);

adl();

sub reset_jobs {
    psql('SET client_min_messages = warning; TRUNCATE async_dl_jobs CASCADE; '
         . 'TRUNCATE async_dl_hosts');
}

# claim($n, $host_limit, $owner_limit): "owner url" of each file claimed
sub claim {
    my ($n, $host, $owner) = @_;
    return [ split /\n/, psql("SELECT j.owner || ' ' || c.url FROM "
        . "async_dl_claim('w', $n, '1 minute', 5, 'dl/', $host, $owner) c "
        . "JOIN async_dl_jobs j ON j.id = c.job_id ORDER BY 1") ];
}

sub jobs {
    my ($owner, $n, $url, %o) = @_;
    add_job([ "$url$_" ], owner => $owner, %o) for 1 .. $n;
}

# --- a newcomer's file goes first ------------------------------------------
reset_jobs();
jobs('A', 30, 'http://a.example/f');
jobs('B', 1, 'http://a.example/b');
my $got = claim(4, 0, 0);
is(scalar @$got, 4, 'four files claimed');
ok((grep { /^B / } @$got), "B's one file is in the first claim behind A's 30");

# A has 3 downloading now, B none: B's next file beats A's backlog
jobs('B', 1, 'http://a.example/b2-');
is_deeply(claim(1, 0, 0), ['B http://a.example/b2-1'],
          'the owner with fewer files downloading gets the slot');

# --- round robin --------------------------------------------------------
reset_jobs();
jobs($_, 10, "http://h$_.example/f") for qw(A B C);
my %per;
$per{ (split ' ', $_)[0] }++ for @{ claim(6, 0, 0) };
is_deeply(\%per, { A => 2, B => 2, C => 2 }, 'six slots, three owners: two each');

# --- priority within an owner, not across owners ---------------------------
reset_jobs();
jobs('A', 3, 'http://a.example/low', priority => -5);
jobs('A', 2, 'http://a.example/high', priority => 5);
jobs('B', 1, 'http://a.example/b', priority => -100);
is_deeply(claim(3, 0, 0), ['A http://a.example/high1', 'A http://a.example/high2',
                           'B http://a.example/b1'],
          "A's high-priority files first; B's low one still gets its turn");
is_deeply(claim(3, 0, 0), ['A http://a.example/low1', 'A http://a.example/low2',
                           'A http://a.example/low3'], "then A's low ones");

# --- per host limit ---------------------------------------------------------
reset_jobs();
jobs('A', 10, 'http://slow.example:8080/f');
jobs('A', 2, 'http://other.example/f');
$got = claim(16, 3, 0);
is(scalar(grep { m{slow\.example:8080} } @$got), 3, 'three of the slow host');
is(scalar(grep { m{other\.example} } @$got), 2, 'the other host goes on');
is_deeply(claim(16, 3, 0), [], 'no room on the slow host until one ends');
psql("UPDATE async_dl_files SET status = 'completed' WHERE url = "
     . "(SELECT min(url) FROM async_dl_files WHERE status = 'downloading' "
     . "AND url LIKE 'http://slow%')");
is(scalar @{ claim(16, 3, 0) }, 1, 'one ended, one more starts');
is(psql("SELECT count(DISTINCT host) FROM async_dl_files WHERE url LIKE "
        . "'%slow%'"), 1, 'one host key for one host:port');
is(psql("SELECT async_dl_url_host('HTTPS://user:pw\@Example.COM:8443/a?b#c')"),
   'example.com:8443', 'host key: lower case, port kept, user info dropped');
is(psql("SELECT string_agg(async_dl_url_host(u), ' ' ORDER BY n) FROM "
        . "unnest(ARRAY['http://example.com:80/a', 'https://example.com:443/', "
        . "'http://example.com.:8080/', 'https://example.com./x', "
        . "'http://a\@b\@c.example/x', 'http://[::1]:80/x', 'ftp:x', "
        . "'http://example.com:443/']) WITH ORDINALITY AS t (u, n)"),
   'example.com example.com example.com:8080 example.com c.example [::1]  '
   . 'example.com:443',
   'default ports and trailing dots dropped; user info up to the last @');

# --- per owner limit ----------------------------------------------------------
reset_jobs();
jobs('A', 10, 'http://a.example/f');
jobs('B', 10, 'http://b.example/f');
%per = ();
$per{ (split ' ', $_)[0] }++ for @{ claim(16, 0, 3) };
is_deeply(\%per, { A => 3, B => 3 }, 'at most three per owner');
is_deeply(claim(16, 0, 3), [], 'and no more while they run');

# --- a paused host ------------------------------------------------------------
reset_jobs();
jobs('A', 3, 'http://busy.example/f');
jobs('A', 1, 'http://calm.example/f');
psql("SELECT async_dl_host_pause('http://busy.example/x', now() + interval "
     . "'1 hour', 'HTTP 429')");
psql("SELECT async_dl_host_pause('http://BUSY.example/y', now() + interval "
     . "'1 second', 'HTTP 503')");
is(psql("SELECT reason FROM async_dl_hosts"), 'HTTP 429',
   'a shorter pause does not cut a longer one');
is_deeply(claim(16, 0, 0), ['A http://calm.example/f1'],
          'a paused host gives nothing; another goes on');
psql("UPDATE async_dl_hosts SET paused_until = now() - interval '1 second'");
is(scalar @{ claim(16, 0, 0) }, 3, 'its files go once the pause is over');

# --- two sessions race for one host's room ------------------------------------
reset_jobs();
jobs('A', 10, 'http://race.example/f');
my $sql = "SELECT count(*) FROM async_dl_claim('w', 5, '1 minute', 5, 'dl/', 3, 0)";
my $first = psql_bg("BEGIN; $sql; SELECT pg_sleep(2); COMMIT;");
ok(psql_sleeping(1), 'the first claim took its room and holds it');
# a file nobody holds a lock on: only the count of what the first claim
# took (once it commits) keeps the second from taking it
jobs('B', 1, 'http://race.example/b');
my $second = psql_bg($sql);
my ($rc1, $out1) = psql_wait($first);
my ($rc2, $out2) = psql_wait($second);
is($rc1 + $rc2, 0, 'both claims ran');
is((split /\n/, $out1)[0] + $out2, 3,
   'the later claim waited for the first and took no more than the room');
is($out2 + 0, 0, "... not even B's file, which no lock held");
is(psql("SELECT count(*) FROM async_dl_files WHERE status = 'downloading'"),
   3, 'three downloading from that host');

# --- more owners than one claim walks: each gets its turn -------------------
# (a claim walks at most max(16, 4 x its size) owner-host pairs, from where
# the last one stopped)
reset_jobs();
my $fill = join '', map {
    my $o = sprintf 'o%03d', $_;
    map { "SELECT outcome FROM async_dl_job_create('$o', NULL, NULL, 600000, "
          . "NULL, '[{\"url\": \"http://many.example/$o/$_\"}]'::json, 0, 0, "
          . "'/v1/download/');" } 1 .. 3
} 0 .. 99;
psql($fill);
my $claimed = 0;
$claimed += scalar @{ claim(8, 0, 0) } for 1 .. 12;
is($claimed, 96, 'twelve claims of eight');
cmp_ok(psql("SELECT count(DISTINCT owner) FROM async_dl_files WHERE status "
            . "= 'downloading'"), '>=', 90, 'nearly every one of 100 owners '
       . 'got a file (32 if each claim walked the same first 32)');
cmp_ok(psql("SELECT max(n) FROM (SELECT count(*) AS n FROM async_dl_files "
            . "WHERE status = 'downloading' GROUP BY owner) x"), '<=', 2,
       'and none more than two');
psql("SELECT count(*) FROM async_dl_claim('w', 1000, '1 minute', 5, 'dl/')");
is(psql("SELECT count(*) FROM async_dl_files WHERE status = 'pending'"), 0,
   'claims that walk past the end go round: every file is claimed');

# --- NULL limits are no limits ----------------------------------------------------
reset_jobs();
jobs('A', 3, 'http://null.example/f');
is(psql("SELECT count(*) FROM async_dl_claim('w', 16, '1 minute', 5, 'dl/', "
        . "NULL, NULL)"), 3, 'NULL limits claim as 0 does');

# --- a worker of version 14 (five arguments): fair, no limits -----------------
reset_jobs();
jobs('A', 5, 'http://one.example/f');
is(psql("SELECT count(*) FROM async_dl_claim('w', 16, '1 minute', 5, 'dl/')"),
   5, 'the old call takes every file');

unlike(pg_log(), qr/deadlock detected/, 'no deadlock');

done_testing();
