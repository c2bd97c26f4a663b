#!/usr/bin/env bash
# `make run`: the whole service on loopback, in the foreground.
# PostgreSQL (a private cluster), the S3-compatible store, the worker and
# nginx with the module on 127.0.0.1:$PORT, configured from
# nginx.conf.example, plus sample files served by the same nginx.
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

sed -e "s|/usr/lib/nginx/modules/ngx_http_async_dl_module.so|$MODULE|" \
    -e "s|127\.0\.0\.1:8080|127.0.0.1:$PORT|g" \
    -e "s|port=5432|port=$PG_PORT|" \
    -e "s|127\.0\.0\.1:9000|127.0.0.1:$S3_PORT|g" \
    -e "s|/var/lib/async-dl|$RUN|g" \
    -e "s|/usr/share/async-dl/clients|$top/clients|g" \
    "$top/nginx.conf.example" >"$RUN/nginx.conf"

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

Jobs belong to the X-User header (or the demo page's adl_user cookie):

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
