#!/usr/bin/env bash
# `make run`: the whole service on loopback, in the foreground.
# PostgreSQL (a private cluster), the S3-compatible store, the worker and
# nginx with the module on 127.0.0.1:$PORT, configured from
# nginx.conf.example plus the demo page's parts (below), and sample files
# served by the same nginx.
# Ctrl-C stops everything this script started.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
PORT=${PORT:-8080}
BUILD=${BUILD:-build}
case $BUILD in /*) ;; *) BUILD=$top/$BUILD ;; esac
RUN=${RUN_DIR:-$top/tmp/run}
PGBIN=/usr/lib/postgresql/15/bin
PG_PORT=${PG_PORT:-$((PORT + 1))}
S3_PORT=${S3_PORT:-$((PORT + 2))}
MODULE=$BUILD/nginx/ngx_http_async_dl_module.so
WORKER=$BUILD/async-dl-worker

pids=()
cleanup() {
    trap - EXIT INT TERM
    echo
    echo "stopping..."
    [ -f "$RUN/logs/nginx.pid" ] && kill -QUIT "$(cat "$RUN/logs/nginx.pid")" 2>/dev/null || true
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    as_pg "$PGBIN/pg_ctl" -D "$RUN/pg" -m fast -w stop >/dev/null 2>&1 || true
}
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
trap cleanup EXIT INT TERM

mkdir -p "$RUN"/{pgsock,s3,logs}
chmod 755 "$RUN"
[ "$(id -u)" -eq 0 ] && chown postgres "$RUN" "$RUN/pgsock" && chmod 777 "$RUN/logs"

# PostgreSQL: a private cluster, kept between runs
if [ ! -f "$RUN/pg/PG_VERSION" ]; then
    mkdir -p "$RUN/pg" && { [ "$(id -u)" -ne 0 ] || chown postgres "$RUN/pg"; }
    as_pg "$PGBIN/initdb" -D "$RUN/pg" -U postgres -A trust -E UTF8 \
        --locale=C.UTF-8 >"$RUN/logs/initdb.log"
fi
as_pg "$PGBIN/pg_ctl" -D "$RUN/pg" -l "$RUN/logs/postgresql.log" -w \
    -o "-k $RUN/pgsock -p $PG_PORT -c listen_addresses=127.0.0.1" start >/dev/null
DB_URL="postgresql://postgres@127.0.0.1:$PG_PORT/postgres"
"$WORKER" --migrate --database-url="$DB_URL"

# The S3-compatible store (verifies SigV4), bucket async-dl
node "$top/t/s3/server.js" -d "$RUN/s3" -a 127.0.0.1 -p "$S3_PORT" --silent \
    --configure-bucket async-dl >"$RUN/logs/s3.log" 2>&1 &
pids+=($!)

# nginx.conf.example with this machine's ports and paths: its
# /var/lib/async-dl becomes $RUN
mkdir -p "$RUN"/{logs,tmp,www/files}
chmod 755 "$RUN/www" "$RUN/www/files"

# Sample files for file ids 70000..70004, served by the same nginx
for i in 0 1 2 3 4; do
    f="$RUN/www/files/$((70000 + i))"
    [ -f "$f" ] || head -c $(( (i + 1) * 512 * 1024 )) /dev/urandom >"$f"
    chmod 644 "$f"
done

# --- the demo page's parts: `make run` only, never nginx.conf.example ---
# The page (clients/demo at /, the client module clients/js at /js/) and an
# owner for its event streams: EventSource sends cookies but no headers, so
# where X-User is absent the adl_user cookie the page sets is the owner.
# That cookie is whatever the browser claims, with no login behind it: a
# stand-in for one on loopback.  A real deployment sets the owner from its
# login (README, "The browser client").
cat >"$RUN/demo-http.conf" <<'DEMO'
# the demo's owner: X-User, else the adl_user cookie (an unauthenticated claim)
map $http_x_user $async_dl_demo_owner {
    ""      $cookie_adl_user;
    default $http_x_user;
}
# the demo's CSRF guard: a POST or DELETE that only the cookie owns must
# carry X-Requested-With (the client sends it), which a cross-site form or
# a simple cross-site fetch (POST {id}/cancel has no body) cannot send
map "$http_x_user:$request_method:$http_x_requested_with:$cookie_adl_user" $async_dl_demo_csrf {
    default                           0;
    "~^:(POST|PUT|PATCH|DELETE)::."   1;
}
DEMO
cat >"$RUN/demo-api.conf" <<'DEMO'
# the demo's owner, instead of nginx.conf.example's `async_dl_owner $http_x_user;`
async_dl_owner $async_dl_demo_owner;
if ($async_dl_demo_csrf) {
    error_page 418 = @async_dl_demo_csrf;
    return 418;
}
DEMO
cat >"$RUN/demo-server.conf" <<DEMO
# the demo page, and the client module it imports (module scripts need
# their JavaScript type)
location / {
    root $top/clients/demo;
    types { text/html html; text/css css; text/javascript js; }
}
location /js/ {
    alias $top/clients/js/;
    types { text/javascript js; text/plain ts; }
}
# the CSRF guard's answer (demo-api.conf), in the API's JSON
location @async_dl_demo_csrf {
    default_type application/json;
    return 403 '{"error":{"code":"CSRF_REFUSED","message":"a POST or DELETE owned by the adl_user cookie needs an X-Requested-With header"}}\n';
}
DEMO

sed -e "s|/usr/lib/nginx/modules/ngx_http_async_dl_module.so|$MODULE|" \
    -e "s|127\.0\.0\.1:8080|127.0.0.1:$PORT|g" \
    -e "s|port=5432|port=$PG_PORT|" \
    -e "s|127\.0\.0\.1:9000|127.0.0.1:$S3_PORT|g" \
    -e "s|/var/lib/async-dl|$RUN|g" \
    -e "0,/^    server {/s||    include $RUN/demo-http.conf;      # the demo's (scripts/run.sh)\n\n    server {|" \
    -e "s|^\( *\)async_dl_owner \$http_x_user;|\1include $RUN/demo-api.conf;      # the demo's (scripts/run.sh)|" \
    -e "s|^\( *\)# (.make run. adds the demo page here.*|\1include $RUN/demo-server.conf;   # the demo's (scripts/run.sh)|" \
    "$top/nginx.conf.example" >"$RUN/nginx.conf"
for part in demo-http demo-api demo-server; do
    n=$(grep -c "include $RUN/$part.conf;" "$RUN/nginx.conf" || true)
    if [ "$n" != 1 ]; then
        echo "run.sh: nginx.conf.example changed: the demo's $part.conf went in $n times, not once" >&2
        exit 1
    fi
done

# the worker, allowed to fetch from this machine's own nginx
ASYNC_DL_DATABASE_URL=$DB_URL \
ASYNC_DL_S3_ENDPOINT=http://127.0.0.1:$S3_PORT \
ASYNC_DL_S3_BUCKET=async-dl ASYNC_DL_S3_REGION=us-east-1 \
ASYNC_DL_S3_ACCESS_KEY_ID=S3RVER ASYNC_DL_S3_SECRET_ACCESS_KEY=S3RVER \
ASYNC_DL_ALLOW_CIDRS=127.0.0.1/32 \
    "$WORKER" >"$RUN/logs/worker.log" 2>&1 &
pids+=($!)

# a module built with sanitizers (make SANITIZE=1) needs their runtime
# loaded first into the uninstrumented nginx
san=()
if ldd "$MODULE" | grep libasan >/dev/null; then   # no -q: pipefail + SIGPIPE
    san=(env "LD_PRELOAD=$(gcc -print-file-name=libasan.so)"
         ASAN_OPTIONS=detect_leaks=0)
fi
"${san[@]}" /usr/sbin/nginx -p "$RUN/" -c "$RUN/nginx.conf" -g "daemon off;" &
pids+=($!)

for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$PORT/v1/download/health" >/dev/null 2>&1 && break
    sleep 0.1
done

cat <<MSG

async-dl is running on http://127.0.0.1:$PORT  (logs in $RUN/logs)

The demo page: http://127.0.0.1:$PORT/  (clients/demo, on clients/js)

Jobs belong to the X-User header (here only, for the demo page's event
streams, the adl_user cookie stands in for it: anyone can claim any owner):

  health:   curl http://127.0.0.1:$PORT/v1/download/health
  initiate: curl -i -X POST http://127.0.0.1:$PORT/v1/download/initiate -H 'X-User: demo' \\
                 -H 'Content-Type: application/json' -d '{"file_ids":[70000,70001,70002]}'
  status:   curl -H 'X-User: demo' http://127.0.0.1:$PORT/v1/download/status/<jobId>
  stream:   curl -N -H 'X-User: demo' http://127.0.0.1:$PORT/v1/download/stream/<jobId>
  one file: curl -L -H 'X-User: demo' -o f0.bin http://127.0.0.1:$PORT/v1/download/<jobId>/files/0
  all (zip): curl -L -H 'X-User: demo' -o job.zip http://127.0.0.1:$PORT/v1/download/<jobId>

Ctrl-C stops everything.
MSG
wait -n "${pids[@]}" || true
echo "a process of the stack exited; see $RUN/logs" >&2
