#!/usr/bin/env bash
# Prepares the PostgreSQL, MariaDB and RabbitMQ already installed on a Debian
# machine for wasmcdc. Safe to run any number of times: each step checks
# before it changes anything, and PostgreSQL restarts only when a setting that
# needs a restart actually changed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { printf 'services: %s\n' "$*"; }
die() { printf 'services: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run this as root (it installs packages and edits server configuration)."

pg_ver="$(ls /etc/postgresql 2>/dev/null | sort -n | tail -n1)"
[ -n "$pg_ver" ] || die "no PostgreSQL cluster under /etc/postgresql; install the postgresql package first."
pg_conf="/etc/postgresql/$pg_ver/main"
psql_admin() { PGOPTIONS="-c client_min_messages=warning" runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d "${PSQL_DB:-postgres}" "$@"; }

pg_running() { pg_lsclusters -h | awk -v v="$pg_ver" '$1==v && $2=="main" {print $4}' | grep -q online; }
pg_start() { pg_ctlcluster --skip-systemctl-redirect "$pg_ver" main start; }

wait_for() { # wait_for NAME COMMAND...: up to 60 s for COMMAND to succeed
    local name="$1"; shift
    for _ in $(seq 1 120); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
    die "$name did not come up within 60 s; look at its log."
}

# --- PostgreSQL: wal2json ----------------------------------------------------
if ! dpkg -s "postgresql-$pg_ver-wal2json" >/dev/null 2>&1; then
    say "installing postgresql-$pg_ver-wal2json"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "postgresql-$pg_ver-wal2json" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q "postgresql-$pg_ver-wal2json" >/dev/null; }
fi

# --- Chromium: the status page test drives it headless ---------------------------
if ! command -v chromium >/dev/null 2>&1; then
    say "installing chromium"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q chromium >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
fi

pg_running || pg_start
wait_for PostgreSQL runuser -u postgres -- psql -X -d postgres -c 'select 1'

# --- PostgreSQL: settings ------------------------------------------------------
setting() { psql_admin -Atc "select setting from pg_settings where name = '$1'"; }
changed=0
set_if() { # set_if NAME VALUE: ALTER SYSTEM only when the value differs
    if [ "$(setting "$1")" != "$2" ]; then
        psql_admin -c "ALTER SYSTEM SET $1 = $3"
        changed=1
    fi
}
# postgresql/wasmcdc.conf is the one list of settings; docker-compose.yml mirrors it.
while IFS='=' read -r name value; do
    name="$(echo "$name" | xargs)"; value="$(echo "$value" | xargs)"
    [ -n "$name" ] && [ "${name#\#}" = "$name" ] || continue
    if [[ "$value" =~ ^[0-9]+$ ]]; then
        # A numeric setting only ever grows: never lower what the machine already has.
        [ "$(setting "$name")" -ge "$value" ] || { psql_admin -c "ALTER SYSTEM SET $name = $value"; changed=1; }
    else
        set_if "$name" "$value" "$value"
    fi
done < "$here/postgresql/wasmcdc.conf"
# Some builds only load output plugins that this list names.
if [ -n "$(psql_admin -Atc "select 1 from pg_settings where name = 'output_plugin_libraries'")" ]; then
    current="$(setting output_plugin_libraries)"
    case ",${current// /}," in
        *,wal2json,*) ;;
        *) psql_admin -c "ALTER SYSTEM SET output_plugin_libraries = pgoutput, test_decoding, wal2json"; changed=1 ;;
    esac
fi

# Password authentication over TCP, for normal and replication connections, so
# that credentials are really checked. The local socket keeps the distribution's
# setting for administration.
hba="$pg_conf/pg_hba.conf"
marker="# wasmcdc: password authentication over TCP"
if ! grep -qF "$marker" "$hba"; then
    say "enabling scram-sha-256 over TCP in $hba"
    tmp="$(mktemp)"
    {
        echo "$marker"
        echo "host    all          all  127.0.0.1/32  scram-sha-256"
        echo "host    all          all  ::1/128       scram-sha-256"
        echo "host    replication  all  127.0.0.1/32  scram-sha-256"
        echo "host    replication  all  ::1/128       scram-sha-256"
        echo "# wasmcdc: end"
        cat "$hba"
    } > "$tmp"
    cat "$tmp" > "$hba"
    rm -f "$tmp"
    changed=1
fi

if [ "$changed" = 1 ]; then
    say "restarting PostgreSQL $pg_ver to apply settings"
    pg_ctlcluster --skip-systemctl-redirect "$pg_ver" main restart
    wait_for PostgreSQL runuser -u postgres -- psql -X -d postgres -c 'select 1'
fi
[ "$(setting wal_level)" = logical ] || die "wal_level is still '$(setting wal_level)' after a restart; check $pg_conf."

# --- PostgreSQL: users, database, seed schema --------------------------------------
psql_admin -c "ALTER USER postgres PASSWORD 'postgres'"
if [ -z "$(psql_admin -Atc "select 1 from pg_database where datname = 'requests'")" ]; then
    psql_admin -c "CREATE DATABASE requests"
fi
PSQL_DB=requests psql_admin -f "$here/postgresql/init.sql"

# --- MariaDB -------------------------------------------------------------------
mariadb_up() { mariadb -uroot -e 'select 1'; }
if ! mariadb_up >/dev/null 2>&1; then
    say "starting MariaDB"
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
fi
wait_for MariaDB mariadb_up
mariadb -uroot < "$here/mariadb/init.sql"

# --- RabbitMQ ------------------------------------------------------------------
if ! rabbitmqctl -q status >/dev/null 2>&1; then
    say "starting RabbitMQ"
    rabbitmq-server -detached
fi
wait_for RabbitMQ rabbitmqctl -q await_startup

say "ready: PostgreSQL $pg_ver (wal_level=logical, wal2json), MariaDB, RabbitMQ"
