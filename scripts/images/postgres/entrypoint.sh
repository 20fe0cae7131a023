#!/bin/sh
# A PostgreSQL container for freezer's tests, driven like the official image: on first
# start with an empty data directory ($PGDATA, default /var/lib/postgresql/data) it runs
# initdb with POSTGRES_USER (default postgres) as the superuser whose password is
# POSTGRES_PASSWORD, creates POSTGRES_DB (default: the user's name) and accepts password
# logins from anywhere. It runs the server as user postgres, never as root.
set -eu
export PGDATA=${PGDATA:-/var/lib/postgresql/data}
bin=/usr/lib/postgresql/15/bin
if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /run/postgresql
  chown -R postgres:postgres "$PGDATA" /run/postgresql
  chmod 700 "$PGDATA"
  exec su postgres -s /bin/sh -c 'exec /entrypoint.sh'
fi
# POSTGRES_PASSWORD_FILE names a file holding the password (a compose secret).
if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
  POSTGRES_PASSWORD=$(cat "$POSTGRES_PASSWORD_FILE")
fi
user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  [ -n "${POSTGRES_PASSWORD:-}" ] || { echo "entrypoint: POSTGRES_PASSWORD is not set" >&2; exit 1; }
  pwfile=/run/postgresql/pw
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  "$bin/initdb" -D "$PGDATA" -U "$user" --pwfile="$pwfile" -E UTF8 --locale=C \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  if [ "$db" != postgres ]; then
    printf 'CREATE DATABASE "%s";\n' "$db" | "$bin/postgres" --single -D "$PGDATA" postgres >/dev/null
  fi
fi
exec "$bin/postgres" -D "$PGDATA" -c listen_addresses='*' -k /run/postgresql
