#!/usr/bin/env bash
# A PostgreSQL server on this machine (Debian's postgresql package), for the tests of a tracking server that keeps its
# runs in PostgreSQL, as docs/sweeps.md's shared server does. Run as root:
#   scripts/local_postgres.sh install   # apt-get install postgresql, if missing
#   scripts/local_postgres.sh start     # install if missing, create the cluster and the database `mlflow`, start it
#   scripts/local_postgres.sh uri       # the database's URI for `mlflow server --backend-store-uri` (it holds the password)
#   scripts/local_postgres.sh status    # exit 0 when the server accepts connections
#   scripts/local_postgres.sh stop      # stop the server this script started
# Everything lives under $AOS_PG_DIR (default /var/tmp/aos_postgres), owned by the user postgres; the server listens on
# 127.0.0.1 only, port $AOS_PG_PORT (default 54329), and asks for the password of its one user, `aos`, which start
# draws at random once and keeps in $AOS_PG_DIR/password (mode 600). Debian's own cluster (/etc/postgresql) is not touched.
set -euo pipefail

DIR="${AOS_PG_DIR:-/var/tmp/aos_postgres}"
PORT="${AOS_PG_PORT:-54329}"
DATA="$DIR/data"
USER_NAME=aos
DATABASE=mlflow

# The binaries of the newest PostgreSQL installed (Debian keeps them out of PATH, in /usr/lib/postgresql/<version>/bin).
bin() {
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  [ -n "$dir" ] || { echo "local_postgres: PostgreSQL is not installed: run \`$0 install\` as root" >&2; return 1; }
  echo "$dir/$1"
}

# Install the package, unless a PostgreSQL server is already on this machine.
install() {
  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 && return
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
}

# As the user postgres (initdb and postgres refuse to run as root).
as_postgres() {
  runuser -u postgres -- "$@"
}

# The cluster and its password file, once: scram-sha-256 for every connection, TCP on 127.0.0.1 only.
init_cluster() {
  [ -f "$DATA/PG_VERSION" ] && return
  mkdir -p "$DIR"
  chown postgres:postgres "$DIR"
  chmod 700 "$DIR"
  [ -f "$DIR/password" ] || (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$DIR/password")
  chown postgres:postgres "$DIR/password"
  as_postgres "$(bin initdb)" -D "$DATA" -U "$USER_NAME" --pwfile="$DIR/password" --auth=scram-sha-256 \
    --encoding=UTF8 --locale=C.UTF-8 >"$DIR/initdb.log"
}

# Poll pg_isready until the server accepts connections, for at most $1 seconds.
wait_ready() {
  local deadline=$(( SECONDS + $1 ))
  until "$(bin pg_isready)" -q -h 127.0.0.1 -p "$PORT"; do
    if (( SECONDS >= deadline )); then
      echo "local_postgres: no connection after $1 s" >&2
      tail -n 5 "$DIR/server.log" >&2 || true
      return 1
    fi
    sleep 0.2
  done
}

start() {
  if status 2>/dev/null; then
    return
  fi
  install
  init_cluster
  as_postgres "$(bin pg_ctl)" -D "$DATA" -l "$DIR/server.log" -w -t "${AOS_PG_WAIT_S:-60}" \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DIR" start >/dev/null
  wait_ready "${AOS_PG_WAIT_S:-60}"
  PGPASSWORD="$(cat "$DIR/password")" "$(bin psql)" -q -h 127.0.0.1 -p "$PORT" -U "$USER_NAME" -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'" | grep -q 1 ||
    PGPASSWORD="$(cat "$DIR/password")" "$(bin createdb)" -h 127.0.0.1 -p "$PORT" -U "$USER_NAME" "$DATABASE"
}

# The URI of the database `mlflow`, password included: for the server's --backend-store-uri only, never a tracking.uri.
uri() {
  echo "postgresql://$USER_NAME:$(cat "$DIR/password")@127.0.0.1:$PORT/$DATABASE"
}

# Exit 0 when this script's server runs and accepts connections.
status() {
  [ -f "$DATA/postmaster.pid" ] && "$(bin pg_isready)" -q -h 127.0.0.1 -p "$PORT"
}

# Stop the server this script started (pg_ctl's fast mode: clients are disconnected, the data is kept).
stop() {
  [ -f "$DATA/postmaster.pid" ] || return 0
  as_postgres "$(bin pg_ctl)" -D "$DATA" -m fast -w -t 60 stop >/dev/null
}

case "${1:-}" in
  install | start | uri | status | stop) "$1" ;;
  *) echo "usage: $0 install|start|uri|status|stop" >&2; exit 2 ;;
esac
