#!/bin/bash
# Runs once inside the postgres:15 image (/docker-entrypoint-initdb.d) when the primary's
# data directory is created: adds the replication role, the application role and
# database, and lets the replication role connect for streaming replication.
set -euo pipefail

: "${REPLICATION_USER:=replicator}"
: "${REPLICATION_PASSWORD:?REPLICATION_PASSWORD must be set}"
: "${APP_PASSWORD:?APP_PASSWORD must be set}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    --set repl_user="$REPLICATION_USER" \
    --set repl_password="$REPLICATION_PASSWORD" \
    --set app_password="$APP_PASSWORD" <<'SQL'
CREATE ROLE :"repl_user" WITH LOGIN REPLICATION PASSWORD :'repl_password';
CREATE ROLE app WITH LOGIN PASSWORD :'app_password';
CREATE DATABASE app OWNER app;
SQL

# "all" in the database column does not cover replication connections.
echo "host replication ${REPLICATION_USER} all scram-sha-256" >> "$PGDATA/pg_hba.conf"
