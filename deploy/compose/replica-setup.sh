#!/bin/sh
# Start a PostgreSQL streaming replica of a primary.
#
# On first start (empty data directory) the replica is cloned from the primary with
# pg_basebackup -R, which also writes standby.signal and primary_conninfo; on later
# starts the existing data directory is reused. The script then execs postgres, so
# the postmaster keeps this process's PID (signals and `kill PID` reach it directly).
#
# Environment (all optional):
#   PRIMARY_HOST          primary's host name or address       (default: primary)
#   PRIMARY_PORT          primary's port                        (default: 5432)
#   REPLICATION_USER      role with the REPLICATION attribute   (default: replicator)
#   REPLICATION_PASSWORD  its password; if unset, PGPASSWORD (or .pgpass, or trust) is used
#   PGDATA                replica data directory                (default: /var/lib/postgresql/data)
#   REPLICA_PORT          if set, `port = N` is appended to the replica's postgresql.conf
#   REPLICA_LISTEN        listen_addresses of the replica       (default: *)
#   UNIX_SOCKETS          "off": no Unix-domain socket (unix_socket_directories = '')
#   PG_BIN                directory of the server binaries      (default: found on PATH)
#   WAIT_TRIES            pg_isready attempts before giving up  (default: 60)
#   WAIT_INTERVAL         seconds between attempts              (default: 1)
# Arguments are passed on to postgres (e.g. `-c hot_standby_feedback=on`).
#
# Runs as the PostgreSQL OS user (never as root: postgres refuses to).
set -eu

PRIMARY_HOST=${PRIMARY_HOST:-primary}
PRIMARY_PORT=${PRIMARY_PORT:-5432}
REPLICATION_USER=${REPLICATION_USER:-replicator}
PGDATA=${PGDATA:-/var/lib/postgresql/data}
REPLICA_LISTEN=${REPLICA_LISTEN:-*}
UNIX_SOCKETS=${UNIX_SOCKETS:-on}
WAIT_TRIES=${WAIT_TRIES:-60}
WAIT_INTERVAL=${WAIT_INTERVAL:-1}

log() { printf 'replica-setup: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Resolve a server binary: $PG_BIN/NAME when PG_BIN is set, else NAME on PATH.
bin() {
    if [ -n "${PG_BIN:-}" ]; then
        [ -x "$PG_BIN/$1" ] || die "$PG_BIN/$1 not found or not executable (PG_BIN=$PG_BIN)"
        printf '%s\n' "$PG_BIN/$1"
    else
        command -v "$1" >/dev/null 2>&1 || die "$1 not found on PATH; set PG_BIN"
        command -v "$1"
    fi
}
PG_ISREADY=$(bin pg_isready)
PG_BASEBACKUP=$(bin pg_basebackup)
POSTGRES=$(bin postgres)

[ "$(id -u)" -ne 0 ] || die "run this as the PostgreSQL OS user, not root"

if [ -n "${REPLICATION_PASSWORD:-}" ]; then
    PGPASSWORD=$REPLICATION_PASSWORD
    export PGPASSWORD
fi

# Wait until the primary accepts connections.
tries=0
until "$PG_ISREADY" -q -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U "$REPLICATION_USER"; do
    tries=$((tries + 1))
    if [ "$tries" -ge "$WAIT_TRIES" ]; then
        die "primary $PRIMARY_HOST:$PRIMARY_PORT not accepting connections after $tries tries"
    fi
    log "waiting for primary $PRIMARY_HOST:$PRIMARY_PORT ($tries/$WAIT_TRIES)"
    sleep "$WAIT_INTERVAL"
done

if [ -f "$PGDATA/PG_VERSION" ]; then
    log "reusing existing data directory $PGDATA"
elif [ -d "$PGDATA" ] && [ -n "$(ls -A "$PGDATA" 2>/dev/null)" ]; then
    die "$PGDATA is not empty and holds no PostgreSQL cluster; refusing to overwrite it"
else
    log "cloning $PRIMARY_HOST:$PRIMARY_PORT into $PGDATA"
    mkdir -p "$PGDATA"
    "$PG_BASEBACKUP" -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U "$REPLICATION_USER" \
        -D "$PGDATA" -R -X stream -c fast --no-password
fi
chmod 700 "$PGDATA"

if [ -n "${REPLICA_PORT:-}" ]; then
    case $REPLICA_PORT in
        *[!0-9]*) die "REPLICA_PORT must be a number, got '$REPLICA_PORT'" ;;
    esac
    # The copied postgresql.conf carries the primary's port; the last setting wins.
    if [ "$(grep -E '^[[:space:]]*port[[:space:]]*=' "$PGDATA/postgresql.conf" | tail -n 1 | tr -d ' \t')" != "port=$REPLICA_PORT" ]; then
        printf 'port = %s\n' "$REPLICA_PORT" >> "$PGDATA/postgresql.conf"
    fi
fi

set -- -c "listen_addresses=$REPLICA_LISTEN" "$@"
if [ "$UNIX_SOCKETS" = off ]; then
    set -- -c "unix_socket_directories=" "$@"
fi

log "starting replica: $POSTGRES -D $PGDATA $*"
exec "$POSTGRES" -D "$PGDATA" "$@"
