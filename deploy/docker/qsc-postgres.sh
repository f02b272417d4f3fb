#!/bin/sh
# qsc-postgres: PostgreSQL for the scale-out cortex (compose profile "scale"), as user qsc-postgres.
# On first start it creates the cluster in /var/lib/qsc-postgres/data and the login role and
# database `qsc` with the password the compose `init` wrote to /var/lib/qsc-postgres/password;
# then it serves on loopback only (host network), on QSC_PG_PORT (default 5432).
set -eu

fail() {
    echo "qsc-postgres: $*" >&2
    exit 1
}

STATE=/var/lib/qsc-postgres
DATA="$STATE/data"
PORT="${QSC_PG_PORT:-5432}"
BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
[ -x "$BIN/postgres" ] || fail "no PostgreSQL server under /usr/lib/postgresql"
case "$PORT" in
    '' | *[!0-9]*) fail "QSC_PG_PORT '$PORT' is not a port number" ;;
esac
[ -s "$STATE/password" ] || fail "$STATE/password is missing: the compose init service writes it"
PASSWORD="$(cat "$STATE/password")"
case "$PASSWORD" in
    *[!0-9a-f]*) fail "$STATE/password must be hex (init makes it so)" ;;
esac

if [ ! -s "$DATA/PG_VERSION" ]; then
    "$BIN/initdb" --pgdata "$DATA" --username postgres --auth-local peer \
        --auth-host scram-sha-256 --encoding UTF8 > /dev/null
    printf "CREATE ROLE qsc LOGIN PASSWORD '%s';\n" "$PASSWORD" \
        | "$BIN/postgres" --single -D "$DATA" postgres > /dev/null
    echo "CREATE DATABASE qsc OWNER qsc;" \
        | "$BIN/postgres" --single -D "$DATA" postgres > /dev/null
    echo "qsc-postgres: created the cluster with role and database qsc"
fi
exec "$BIN/postgres" -D "$DATA" -c listen_addresses=127.0.0.1 -c "port=$PORT" \
    -c unix_socket_directories=/tmp
