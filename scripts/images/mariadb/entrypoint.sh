#!/bin/sh
# A MariaDB container for freezer's tests, driven like the official image: on first start
# with an empty data directory it creates the system tables, root's password
# (MARIADB_ROOT_PASSWORD), a database (MARIADB_DATABASE) and a user with all privileges
# on it (MARIADB_USER, MARIADB_PASSWORD); MYSQL_* names and *_FILE forms work too.
set -eu
# VAR_FILE names a file holding VAR's value (a compose secret); its trailing newlines
# are dropped, as the official image's file_env does.
for v in MARIADB_ROOT_PASSWORD MYSQL_ROOT_PASSWORD MARIADB_USER MYSQL_USER MARIADB_PASSWORD \
    MYSQL_PASSWORD MARIADB_DATABASE MYSQL_DATABASE; do
  eval "f=\${${v}_FILE:-}"
  if [ -n "$f" ]; then
    val=$(cat "$f") || { echo "entrypoint: cannot read ${v}_FILE ($f)" >&2; exit 1; }
    export "$v=$val"
  fi
done
d=/var/lib/mysql
root_pw=${MARIADB_ROOT_PASSWORD:-${MYSQL_ROOT_PASSWORD:-}}
db=${MARIADB_DATABASE:-${MYSQL_DATABASE:-}}
user=${MARIADB_USER:-${MYSQL_USER:-}}
user_pw=${MARIADB_PASSWORD:-${MYSQL_PASSWORD:-}}
opts="--no-defaults --user=root --datadir=$d --lc-messages-dir=/usr/share/mysql --character-sets-dir=/usr/share/mysql/charsets"
mkdir -p "$d" /run/mysqld /tmp
init=
if [ ! -d "$d/mysql" ]; then
  [ -n "$root_pw" ] || { echo "entrypoint: MARIADB_ROOT_PASSWORD is not set" >&2; exit 1; }
  # System tables (--bootstrap reads one statement per line and skips grant checks) ...
  {
    printf '%s\n' "create database if not exists mysql;" "use mysql;" "SET @auth_root_socket=NULL;"
    cat /usr/share/mysql/mysql_system_tables.sql /usr/share/mysql/mysql_performance_tables.sql \
        /usr/share/mysql/mysql_system_tables_data.sql
  } | mariadbd $opts --bootstrap --log-warnings=0 --enforce-storage-engine="" \
      --max_allowed_packet=8M --net_buffer_length=16K
  # ... then accounts and the database, run by the real server once at its first start.
  init=/run/mysqld/init.sql
  {
    echo "SET PASSWORD FOR 'root'@'localhost' = PASSWORD('$root_pw');"
    echo "CREATE USER 'root'@'%' IDENTIFIED BY '$root_pw';"
    echo "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;"
    if [ -n "$db" ]; then
      echo "CREATE DATABASE \`$db\`;"
      if [ -n "$user" ]; then
        echo "CREATE USER '$user'@'%' IDENTIFIED BY '$user_pw';"
        echo "GRANT ALL ON \`$db\`.* TO '$user'@'%';"
      fi
    fi
  } > "$init"
  set -- --init-file="$init"
fi
exec mariadbd $opts --bind-address=0.0.0.0 --skip-name-resolve --socket=/run/mysqld/mysqld.sock \
  --max_allowed_packet=256M "$@"
