#!/usr/bin/env bash
# Side-by-side pgbench: sluice vs. direct PostgreSQL vs. PgBouncer.
#
# All three targets sit in front of the same throwaway primary and are run
# interleaved (sluice, direct, pgbouncer, next round ...), so slow drift on the
# machine (thermal, page cache, a neighbour's build) hits every target alike
# instead of skewing whichever one happened to run last.
#
# Usage (as root, Debian 12, PostgreSQL 15 installed):
#   bash bench/compare.sh
#   DURATION=5 ROUNDS=1 bash bench/compare.sh          # quick smoke run
#   SLUICE_BIN=/path/to/sluice bash bench/compare.sh   # use a prebuilt binary
#
# Knobs (environment):
#   DURATION   seconds per pgbench run                     (20)
#   CLIENTS    pgbench -c                                  (50)
#   JOBS       pgbench -j                                  (2)
#   ROUNDS     interleaved rounds per mode                 (2)
#   MODES      pgbench -M protocols, space separated       ("simple extended prepared")
#              (PgBouncer before 1.21 cannot run "prepared" in transaction
#              mode; it is skipped there and the summary says so.)
#   WARMUP     seconds of unrecorded load per target first (3; 0 = skip)
#   SCALE      pgbench -i -s                               (10)
#   POOL_SIZE  server pool size for both poolers           (20)
#   WORKERS    sluice's [pooler] workers                   (1: one thread,
#              like PgBouncer; target "sluice-mt" is the same sluice with
#              workers = 0, one thread per CPU)
#   ROUTING    1: also start two streaming replicas and measure routing
#              (1)                    (target "routed": sluice with reads to
#              the replicas; "classified": routing on but its replicas
#              unreachable, so every read is classified and falls back to the
#              primary: the pooler's own cost of routing, with the servers'
#              work the same as plain sluice; "tpcb-like" runs pgbench's default script through
#              routed sluice with read_your_writes and with eventual
#              consistency, for the write-latency cost of read-your-writes)
#   TARGETS    which targets to run, in this order     (all of the above;
#              e.g. "sluice routed" for the routing cost alone)
#   TPCB       1: run the tpcb-like read-your-writes case   (ROUTING)
#   EQUAL_LOAD 1: run sluice and routed once more per mode at one fixed rate
#              (pgbench -R), EQUAL_LOAD_PCT percent of the lower of their
#              saturated mean tps, as modes "eq-simple" and so on  (ROUTING)
#              At saturation routed runs fewer tps (the replicas' backends
#              share the two cores), and a pooler's CPU per transaction
#              rises as its load falls (fewer ready sockets per wake-up);
#              at one rate both have the same load, and the ratio is what
#              routing itself costs.
#   EQUAL_LOAD_PCT                                              (60)
#   BOUNCER_SCHED  PgBouncer's Linux scheduling policy: normal, or batch
#              (SCHED_BATCH, as sluice's sched_policy default)     (normal)
#   SERVER_SOCKET  how both poolers reach PostgreSQL: tcp (loopback) or unix
#              (a Unix-domain socket in the run's directory, as a pooler on
#              the database host would)             (tcp; pgbench always uses TCP)
#   SLUICE_BIN sluice binary        (<repo>/target/release/sluice)
#   PG_BIN     PostgreSQL server binaries (/usr/lib/postgresql/15/bin)

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SLUICE_BIN="${SLUICE_BIN:-$REPO_ROOT/target/release/sluice}"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
PGBOUNCER_BIN=/usr/sbin/pgbouncer

DURATION="${DURATION:-20}"
CLIENTS="${CLIENTS:-50}"
JOBS="${JOBS:-2}"
ROUNDS="${ROUNDS:-2}"
MODES="${MODES:-simple extended prepared}"
WARMUP="${WARMUP:-3}"
SCALE="${SCALE:-10}"
POOL_SIZE="${POOL_SIZE:-20}"
WORKERS="${WORKERS:-1}"
ROUTING="${ROUTING:-1}"
SERVER_SOCKET="${SERVER_SOCKET:-tcp}"
[[ $SERVER_SOCKET == tcp || $SERVER_SOCKET == unix ]] || { echo "SERVER_SOCKET must be tcp or unix" >&2; exit 2; }
DEFAULT_TARGETS="sluice sluice-mt direct pgbouncer"
[[ $ROUTING == 1 ]] && DEFAULT_TARGETS="sluice sluice-mt classified routed direct pgbouncer"
TARGETS="${TARGETS:-$DEFAULT_TARGETS}"
for t in $TARGETS; do
    [[ " $DEFAULT_TARGETS " == *" $t "* ]] || { echo "TARGETS: '$t' is not one of: $DEFAULT_TARGETS" >&2; exit 2; }
done
TPCB="${TPCB:-$ROUTING}"
BOUNCER_SCHED="${BOUNCER_SCHED:-normal}"
[[ $BOUNCER_SCHED == normal || $BOUNCER_SCHED == batch ]] || { echo "BOUNCER_SCHED must be normal or batch" >&2; exit 2; }
EQUAL_LOAD="${EQUAL_LOAD:-$ROUTING}"
EQUAL_LOAD_PCT="${EQUAL_LOAD_PCT:-60}"

# Stray libpq settings from the caller's shell would silently redirect or alter
# connections; everything below passes host/port/user/db explicitly.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGSERVICE PGOPTIONS
# Neither pooler is given TLS here; disabling it for all three targets keeps the
# handshake identical and avoids a wasted SSLRequest round trip.
export PGSSLMODE=disable PGGSSENCMODE=disable

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'compare.sh: %s\n' "$*" >&2; exit 1; }

[[ $EUID -eq 0 ]] || die "run as root (PostgreSQL and PgBouncer are started as the postgres user via runuser/setpriv)"
[[ -x "$SLUICE_BIN" ]] || die "sluice binary not found at $SLUICE_BIN (build it or set SLUICE_BIN)"
[[ -x "$PG_BIN/initdb" ]] || die "PostgreSQL server binaries not found in $PG_BIN"
command -v pgbench >/dev/null || die "pgbench not on PATH"
command -v psql >/dev/null || die "psql not on PATH"
id postgres >/dev/null 2>&1 || die "no postgres OS user"

# ---------------------------------------------------------------------------
# PgBouncer install. The Debian package would normally start its own service
# on port 6432; we want only the instance we configure ourselves, so block
# service starts for the duration of the install unless a policy already does.
# ---------------------------------------------------------------------------
if [[ ! -x $PGBOUNCER_BIN ]]; then
    log "installing pgbouncer"
    created_policy=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    install_ok=1
    DEBIAN_FRONTEND=noninteractive apt-get install -y pgbouncer >/dev/null ||
        { apt-get update >/dev/null &&
          DEBIAN_FRONTEND=noninteractive apt-get install -y pgbouncer >/dev/null; } ||
        install_ok=""
    [[ -n $created_policy ]] && rm -f /usr/sbin/policy-rc.d
    [[ -n $install_ok && -x $PGBOUNCER_BIN ]] || die "could not install pgbouncer"
fi

# ---------------------------------------------------------------------------
# State and cleanup. Everything we start is tracked by PID so that cleanup
# never touches a PostgreSQL or pooler that belongs to someone else.
# ---------------------------------------------------------------------------
TMP=""
SLUICE_PID=""
SLUICE_MT_PID=""
ROUTED_PID=""
CLASSIFIED_PID=""
EVENTUAL_PID=""
REPLICA_DIRS=""
BOUNCER_PID=""
PG_STARTED=""

stop_pid() {
    local pid=$1 name=$2 i
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    # sluice drains gracefully on SIGTERM; give it a moment, then insist.
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name ($pid) ignored SIGTERM; killing"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    stop_pid "${PGBENCH_PID:-}" pgbench
    stop_pid "$SLUICE_PID" sluice
    stop_pid "$SLUICE_MT_PID" sluice-mt
    stop_pid "$ROUTED_PID" sluice-routed
    stop_pid "$CLASSIFIED_PID" sluice-classified
    stop_pid "$EVENTUAL_PID" sluice-eventual
    for d in $REPLICA_DIRS; do
        as_pg "$PG_BIN/pg_ctl" -D "$d" -m immediate -w stop >/dev/null 2>&1
    done
    stop_pid "$BOUNCER_PID" pgbouncer
    if [[ -n $PG_STARTED ]]; then
        as_pg "$PG_BIN/pg_ctl" -D "$TMP/data" -m immediate -w stop >/dev/null 2>&1
    fi
    [[ -n $TMP && -d $TMP ]] && rm -rf -- "$TMP"
    exit "$rc"
}
trap cleanup EXIT
# Route signals through EXIT so cleanup runs exactly once.
trap 'exit 130' INT
trap 'exit 143' TERM

# initdb/postgres refuse to run as root. The subshell cd avoids "could not
# change directory" noise when the caller's cwd is unreadable to postgres.
as_pg() { (cd "$TMP" && runuser -u postgres -- "$@"); }

TMP="$(mktemp -d /tmp/sluice-compare.XXXXXX)"
# The host both poolers give for PostgreSQL: a directory means its socket.
SERVER_HOST=127.0.0.1
SOCKET_DIR=""
if [[ $SERVER_SOCKET == unix ]]; then
    SERVER_HOST=$TMP
    SOCKET_DIR=$TMP
fi
chown postgres: "$TMP"

# Random start so two concurrent invocations rarely race for the same port;
# the used-list keeps our own picks distinct before anything binds them.
USED_PORTS=" "
pick_port() {
    local p tries
    for ((tries = 0; tries < 500; tries++)); do
        p=$((20000 + RANDOM % 12700))
        [[ $USED_PORTS == *" $p "* ]] && continue
        if [[ -z "$(ss -ltnH "sport = :$p")" ]]; then
            USED_PORTS+="$p "
            echo "$p"
            return 0
        fi
    done
    die "no free TCP port found"
}
PG_PORT=$(pick_port)
SLUICE_PORT=$(pick_port)
SLUICE_MT_PORT=$(pick_port)
ROUTED_PORT=$(pick_port)
CLASSIFIED_PORT=$(pick_port)
DEAD_PORT=$(pick_port)
EVENTUAL_PORT=$(pick_port)
BOUNCER_PORT=$(pick_port)

# ---------------------------------------------------------------------------
# Throwaway primary.
# ---------------------------------------------------------------------------
log "initdb in $TMP/data (port $PG_PORT)"
as_pg "$PG_BIN/initdb" -D "$TMP/data" -U postgres --auth=trust -E UTF8 --locale=C -N \
    >"$TMP/initdb.log" 2>&1 || { cat "$TMP/initdb.log" >&2; die "initdb failed"; }

cat >>"$TMP/data/postgresql.conf" <<EOF

# --- compare.sh ---
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$SOCKET_DIR'
max_connections = 300
# Durability is irrelevant for a disposable cluster and only adds noise.
fsync = off
synchronous_commit = off
full_page_writes = off
# Scale 10 is ~160 MB; keep it all in shared buffers so select-only runs
# measure the connection path, not the page cache.
shared_buffers = 256MB
password_encryption = 'scram-sha-256'
EOF

# The superuser stays on trust for setup; the benchmark role must really go
# through SCRAM so every target pays the same authentication cost.
cat >"$TMP/data/pg_hba.conf" <<EOF
local all postgres trust
local all all scram-sha-256
host all postgres 127.0.0.1/32 trust
host all all      127.0.0.1/32 scram-sha-256
host replication postgres 127.0.0.1/32 trust
EOF

as_pg "$PG_BIN/pg_ctl" -D "$TMP/data" -l "$TMP/postgres.log" -w -t 60 start >/dev/null ||
    { tail -n 30 "$TMP/postgres.log" >&2; die "postgres did not start"; }
PG_STARTED=1

psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
    -c "CREATE ROLE bench LOGIN PASSWORD 'bench'" \
    -c "CREATE DATABASE bench OWNER bench" >/dev/null

log "pgbench -i -s $SCALE"
# Initialise as bench so it owns the tables and needs no extra grants.
PGPASSWORD=bench pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$PG_PORT" -U bench bench \
    >"$TMP/pgbench-init.log" 2>&1 || { cat "$TMP/pgbench-init.log" >&2; die "pgbench -i failed"; }

# ---------------------------------------------------------------------------
# Streaming replicas (ROUTING=1), copied from the initialised primary.
# ---------------------------------------------------------------------------
REPLICA_PORTS=()
if [[ $ROUTING == 1 ]]; then
    for i in 1 2; do
        port=$(pick_port)
        dir="$TMP/replica$i"
        log "replica $i in $dir (port $port)"
        as_pg "$PG_BIN/pg_basebackup" -D "$dir" -R -X stream -c fast \
            -h 127.0.0.1 -p "$PG_PORT" -U postgres >"$TMP/basebackup$i.log" 2>&1 ||
            { cat "$TMP/basebackup$i.log" >&2; die "pg_basebackup failed"; }
        echo "port = $port" >>"$dir/postgresql.conf"
        REPLICA_DIRS+="$dir "
        as_pg "$PG_BIN/pg_ctl" -D "$dir" -l "$TMP/replica$i.log" -w -t 60 start >/dev/null ||
            { tail -n 30 "$TMP/replica$i.log" >&2; die "replica $i did not start"; }
        REPLICA_PORTS+=("$port")
    done
fi

# ---------------------------------------------------------------------------
# Poolers.
# ---------------------------------------------------------------------------
# Poll with a real authenticated query: a listening socket alone does not
# prove that the pooler can reach and authenticate against the primary.
wait_ready() {
    local name=$1 pid=$2 port=$3 logf=$4 i
    for ((i = 0; i < 300; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$logf" >&2 || true
            die "$name exited during startup"
        fi
        if PGPASSWORD=bench PGCONNECT_TIMEOUT=2 psql -X -Atq -h 127.0.0.1 -p "$port" \
            -U bench -d bench -c 'SELECT 1' >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    tail -n 30 "$logf" >&2 || true
    die "$name not ready on port $port after 30s"
}

# The HTTP endpoint is off: its fixed default port could clash with another
# instance on the box, and it plays no part in the data path being measured.
cat >"$TMP/pooler.toml" <<EOF
[pooler]
listen = "127.0.0.1:$SLUICE_PORT"
pool_mode = "transaction"
default_pool_size = $POOL_SIZE
workers = $WORKERS
log_connections = false
log_disconnections = false

[http]
enabled = false

[users.bench]
password = "bench"

[databases.bench]
primary = "$SERVER_HOST:$PG_PORT"
EOF

log "starting sluice ($SLUICE_BIN) on port $SLUICE_PORT"
SLUICE_LOG=warn "$SLUICE_BIN" --config "$TMP/pooler.toml" >"$TMP/sluice.log" 2>&1 &
SLUICE_PID=$!
wait_ready sluice "$SLUICE_PID" "$SLUICE_PORT" "$TMP/sluice.log"

# The same with one runtime thread per CPU.
sed -e "s/^listen = .*/listen = \"127.0.0.1:$SLUICE_MT_PORT\"/" -e "s/^workers = .*/workers = 0/" \
    "$TMP/pooler.toml" >"$TMP/sluice-mt.toml"
log "starting sluice-mt (workers = 0) on port $SLUICE_MT_PORT"
SLUICE_LOG=warn "$SLUICE_BIN" --config "$TMP/sluice-mt.toml" >"$TMP/sluice-mt.log" 2>&1 &
SLUICE_MT_PID=$!
wait_ready sluice-mt "$SLUICE_MT_PID" "$SLUICE_MT_PORT" "$TMP/sluice-mt.log"

# The same pooler with the two replicas and routing on; and once more with
# eventual consistency, to price read-your-writes.
start_routed() { # name port consistency [replica ports] -> pid in STARTED_PID
    local name=$1 port=$2 consistency=$3 replicas
    shift 3
    [[ $# -gt 0 ]] || set -- "${REPLICA_PORTS[@]}"
    replicas=$(printf "\"$SERVER_HOST:%s\", " "$@")
    sed -e "s/^listen = .*/listen = \"127.0.0.1:$port\"/" "$TMP/pooler.toml" >"$TMP/$name.toml"
    printf 'replicas = [%s]\n\n[routing]\nconsistency = "%s"\n' "${replicas%, }" "$consistency" >>"$TMP/$name.toml"
    log "starting $name on port $port"
    SLUICE_LOG=warn "$SLUICE_BIN" --config "$TMP/$name.toml" >"$TMP/$name.log" 2>&1 &
    STARTED_PID=$!
    wait_ready "$name" "$STARTED_PID" "$port" "$TMP/$name.log"
}
if [[ $ROUTING == 1 ]]; then
    start_routed routed "$ROUTED_PORT" read_your_writes
    ROUTED_PID=$STARTED_PID
    start_routed eventual "$EVENTUAL_PORT" eventual
    EVENTUAL_PID=$STARTED_PID
    # Nothing listens on DEAD_PORT: the replicas never come up.
    start_routed classified "$CLASSIFIED_PORT" read_your_writes "$DEAD_PORT" "$DEAD_PORT"
    CLASSIFIED_PID=$STARTED_PID
fi

# Plaintext userlist: PgBouncer needs the cleartext (or SCRAM secret) to do
# SCRAM both towards the client and towards the server.
printf '"bench" "bench"\n' >"$TMP/userlist.txt"
chown postgres: "$TMP/userlist.txt"
chmod 600 "$TMP/userlist.txt"
cat >"$TMP/pgbouncer.ini" <<EOF
[databases]
bench = host=$SERVER_HOST port=$PG_PORT dbname=bench

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $TMP/userlist.txt
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = 1000
logfile = $TMP/pgbouncer.log
log_connections = 0
log_disconnections = 0
EOF

log "starting pgbouncer ($($PGBOUNCER_BIN --version | head -n1)) on port $BOUNCER_PORT"
# setpriv execs in place (runuser would fork and wait), so $! is PgBouncer
# itself: the PID whose CPU we sample and which cleanup stops.
# BOUNCER_SCHED=batch runs it under SCHED_BATCH, sluice's default policy
# (chrt execs in place too).
bouncer_sched=()
[[ $BOUNCER_SCHED == batch ]] && bouncer_sched=(chrt --batch 0)
(cd "$TMP" && exec "${bouncer_sched[@]}" setpriv --reuid=postgres --regid=postgres --init-groups \
    "$PGBOUNCER_BIN" "$TMP/pgbouncer.ini") >"$TMP/pgbouncer.out" 2>&1 &
BOUNCER_PID=$!
wait_ready pgbouncer "$BOUNCER_PID" "$BOUNCER_PORT" "$TMP/pgbouncer.log"

# ---------------------------------------------------------------------------
# Measurement.
# ---------------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)

port_of() {
    case $1 in
        sluice) echo "$SLUICE_PORT" ;;
        sluice-mt) echo "$SLUICE_MT_PORT" ;;
        routed) echo "$ROUTED_PORT" ;;
        classified) echo "$CLASSIFIED_PORT" ;;
        eventual) echo "$EVENTUAL_PORT" ;;
        direct) echo "$PG_PORT" ;;
        pgbouncer) echo "$BOUNCER_PORT" ;;
    esac
}
pid_of() {
    case $1 in
        sluice) echo "$SLUICE_PID" ;;
        sluice-mt) echo "$SLUICE_MT_PID" ;;
        routed) echo "$ROUTED_PID" ;;
        classified) echo "$CLASSIFIED_PID" ;;
        eventual) echo "$EVENTUAL_PID" ;;
        pgbouncer) echo "$BOUNCER_PID" ;;
        *) echo "" ;;
    esac
}

# utime+stime (stat fields 14 and 15) in clock ticks, summed over all threads.
# The comm field may contain spaces, so fields are counted after its ')'.
cpu_ticks() {
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

# pgbench runs in the background and is waited for, because bash defers traps
# while a foreground child runs: a SIGTERM to this script would otherwise sit
# unhandled until the whole -T period had elapsed.
PGBENCH_PID=""
declare -A EQ_RATE=()
run_pgbench() { # target mode seconds outfile
    local rc=0 script=(-S -M "${2#eq-}")
    # "tpcb-like": pgbench's default read-write script, simple protocol.
    [[ $2 == tpcb-like ]] && script=(-M simple)
    # "eq-<mode>": the same at the fixed rate set for it.
    [[ $2 == eq-* ]] && script+=(-R "${EQ_RATE[$2]}")
    PGPASSWORD=bench pgbench -n "${script[@]}" -c "$CLIENTS" -j "$JOBS" -T "$3" \
        -h 127.0.0.1 -p "$(port_of "$1")" -U bench bench >"$4" 2>&1 &
    PGBENCH_PID=$!
    wait "$PGBENCH_PID" || rc=$?
    PGBENCH_PID=""
    return "$rc"
}

RESULTS="$TMP/results.tsv"
: >"$RESULTS"

measure() { # round mode target
    local round=$1 mode=$2 target=$3 pid out rc=0 t0="" t1 tps lat tx failed cpu="NA" per1k="n/a"
    pid=$(pid_of "$target")
    out="$TMP/run-$round-$mode-$target.log"
    [[ -z $pid ]] || t0=$(cpu_ticks "$pid")
    run_pgbench "$target" "$mode" "$DURATION" "$out" || rc=$?
    if [[ -n $pid ]]; then
        kill -0 "$pid" 2>/dev/null || { tail -n 30 "$TMP/$target.log" >&2 || true; die "$target died during the run"; }
        t1=$(cpu_ticks "$pid")
        cpu=$(awk -v a="$t0" -v b="$t1" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) / hz }')
    fi
    tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time).*/\1/p' "$out")
    lat=$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' "$out")
    tx=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out")
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$out")
    if [[ $rc -ne 0 || -z $tps || -z $tx ]]; then
        log "pgbench against $target exited $rc; output tail:"
        tail -n 15 "$out" >&2
    fi
    tps=${tps:-0} lat=${lat:-NA} tx=${tx:-0} failed=${failed:-NA}
    if [[ $cpu != NA && $tx -gt 0 ]]; then
        per1k=$(awk -v c="$cpu" -v n="$tx" 'BEGIN { printf "%.4f", c * 1000 / n }')
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$mode" "$target" "$round" "$tps" "$lat" "$tx" "$failed" "$cpu" "$rc" >>"$RESULTS"
    printf 'run round=%s mode=%-8s target=%-9s tps=%-10s lat_ms=%-7s tx=%-8s failed=%-3s pooler_cpu_s=%-6s cpu_s_per_1k_tx=%s%s\n' \
        "$round" "$mode" "$target" "$tps" "$lat" "$tx" "$failed" "$cpu" "$per1k" \
        "$([[ $rc -eq 0 ]] || echo " pgbench_exit=$rc")"
}

echo "# sluice vs direct vs pgbouncer — pgbench -S -c $CLIENTS -j $JOBS -T $DURATION, scale $SCALE, pool size $POOL_SIZE"
echo "# modes: $MODES; rounds: $ROUNDS; order per round: $TARGETS; poolers reach PostgreSQL over $SERVER_SOCKET"
echo "# sluice: $SLUICE_BIN ($("$SLUICE_BIN" --version 2>/dev/null || echo '?')), workers = $WORKERS; sluice-mt: workers = 0"
echo "# pgbouncer: $($PGBOUNCER_BIN --version | head -n1) (policy $BOUNCER_SCHED); postgres: $("$PG_BIN/postgres" --version)"
echo "# host: $(nproc) CPUs, load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

# First contact pays for server-connection setup and cold caches; absorb that
# outside the measured runs so round 1 is not penalised per target.
if [[ $WARMUP -gt 0 ]]; then
    for target in $TARGETS; do
        log "warmup $target (${WARMUP}s)"
        run_pgbench "$target" simple "$WARMUP" "$TMP/warmup-$target.log" ||
            { tail -n 15 "$TMP/warmup-$target.log" >&2; die "warmup against $target failed"; }
    done
fi

# PgBouncer tracks protocol-level prepared statements only from 1.21 on.
pgbouncer_prepared=yes
read -r pgb_major pgb_minor < <($PGBOUNCER_BIN --version | head -n1 | grep -oE '[0-9]+\.[0-9]+' | head -n1 | tr . ' ')
if (( pgb_major == 1 && pgb_minor < 21 )); then
    pgbouncer_prepared=no
    echo "# pgbouncer $pgb_major.$pgb_minor cannot run -M prepared in transaction mode: skipped"
fi

for ((round = 1; round <= ROUNDS; round++)); do
    for mode in $MODES; do
        for target in $TARGETS; do
            if [[ $mode == prepared && $target == pgbouncer && $pgbouncer_prepared == no ]]; then
                continue
            fi
            measure "$round" "$mode" "$target"
        done
    done
    if [[ $ROUTING == 1 && $TPCB == 1 ]]; then
        # Alternate which goes first: writes leave work behind (replay,
        # autovacuum, checkpoints) that would land on whichever runs second.
        order="routed eventual"
        ((round % 2 == 0)) && order="eventual routed"
        for target in $order; do
            measure "$round" tpcb-like "$target"
        done
    fi
done
[[ $ROUTING == 1 && $TPCB == 1 ]] && MODES="$MODES tpcb-like" && TARGETS="$TARGETS eventual"

# Routing's own cost at equal load: sluice and routed at one fixed rate.
if [[ $ROUTING == 1 && $EQUAL_LOAD == 1 && " $TARGETS " == *" sluice "* && " $TARGETS " == *" routed "* ]]; then
    EQ_MODES=""
    for mode in $MODES; do
        [[ $mode == tpcb-like ]] && continue
        rate=$(awk -F'\t' -v m="$mode" -v pct="$EQUAL_LOAD_PCT" '
            $1 == m && ($2 == "sluice" || $2 == "routed") { t[$2] += $4; n[$2]++ }
            END { if (n["sluice"] && n["routed"]) {
                      a = t["sluice"] / n["sluice"]; b = t["routed"] / n["routed"]
                      printf "%d", (a < b ? a : b) * pct / 100 } }' "$RESULTS")
        [[ -n $rate && $rate -gt 0 ]] || continue
        EQ_RATE[eq-$mode]=$rate
        EQ_MODES+=" eq-$mode"
        echo "# eq-$mode: pgbench -M $mode -R $rate ($EQUAL_LOAD_PCT% of the lower saturated mean tps)"
    done
    for ((round = 1; round <= ROUNDS; round++)); do
        # Alternate which goes first, as for the tpcb-like pair.
        order="sluice routed"
        ((round % 2 == 0)) && order="routed sluice"
        for mode in $EQ_MODES; do
            for target in $order; do
                measure "$round" "$mode" "$target"
            done
        done
    done
    MODES="$MODES$EQ_MODES"
fi

# ---------------------------------------------------------------------------
# Summary. CPU per 1000 tx is total pooler CPU over total transactions across
# rounds (a transaction-weighted mean), which is steadier than averaging the
# per-run ratios.
# ---------------------------------------------------------------------------
echo
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
awk -F'\t' -v modes="$MODES" -v targets="$TARGETS" '
    {
        k = $1 SUBSEP $2
        n[k]++; tps[k] += $4; tx[k] += $6
        if ($5 != "NA") { lat[k] += $5; nl[k]++ }
        if ($7 != "NA") fail[k] += $7; else failna[k] = 1
        if ($8 != "NA") { cpu[k] += $8; hascpu[k] = 1 }
        if ($9 != 0) bad[k]++
    }
    function cpk(k) { return (hascpu[k] && tx[k] > 0) ? cpu[k] * 1000 / tx[k] : -1 }
    function mtps(k) { return n[k] ? tps[k] / n[k] : 0 }
    function ratio(a, b) { return (b > 0 && a >= 0) ? sprintf("%.3f", a / b) : "n/a" }
    END {
        nm = split(modes, M, " "); nt = split(targets, T, " ")
        print "| mode | target | tps (mean) | avg latency ms | pooler CPU s / 1000 tx | failed |"
        print "|---|---|---:|---:|---:|---:|"
        for (i = 1; i <= nm; i++) for (j = 1; j <= nt; j++) {
            k = M[i] SUBSEP T[j]
            if (!n[k]) continue
            c = cpk(k)
            printf "| %s | %s | %.1f | %s | %s | %s%s |\n", M[i], T[j], mtps(k),
                (nl[k] ? sprintf("%.3f", lat[k] / nl[k]) : "n/a"),
                (c >= 0 ? sprintf("%.4f", c) : "n/a"),
                (failna[k] ? "n/a" : fail[k]), (bad[k] ? " (" bad[k] " pgbench errors)" : "")
        }
        print ""
        for (i = 1; i <= nm; i++) {
            if (M[i] ~ /^eq-/) continue
            s = M[i] SUBSEP "sluice"; d = M[i] SUBSEP "direct"; b = M[i] SUBSEP "pgbouncer"
            printf "%s: sluice/pgbouncer tps = %s, sluice/pgbouncer CPU per tx = %s, sluice/direct tps = %s\n",
                M[i], ratio(mtps(s), mtps(b)), ratio(cpk(s), cpk(b)), ratio(mtps(s), mtps(d))
            m = M[i] SUBSEP "sluice-mt"
            if (n[m])
                printf "%s: sluice-mt/pgbouncer tps = %s, sluice-mt/pgbouncer CPU per tx = %s\n",
                    M[i], ratio(mtps(m), mtps(b)), ratio(cpk(m), cpk(b))
        }
        for (i = 1; i <= nm; i++) {
            s = M[i] SUBSEP "sluice"; r = M[i] SUBSEP "routed"; c = M[i] SUBSEP "classified"
            if (n[s] && n[c])
                printf "%s: classified/sluice CPU per tx = %s (routing decided for every statement, same servers)\n", M[i], ratio(cpk(c), cpk(s))
            if (n[s] && n[r] && M[i] ~ /^eq-/)
                printf "%s: routed/sluice CPU per tx at equal load = %s (%.0f vs %.0f tps)%s\n", M[i], ratio(cpk(r), cpk(s)), mtps(r), mtps(s),
                    (mtps(r) < 0.97 * mtps(s) || mtps(s) < 0.97 * mtps(r) ? "; NOT equal: one fell behind the rate, lower EQUAL_LOAD_PCT" : "")
            else if (n[s] && n[r])
                printf "%s: routed/sluice CPU per tx = %s, tps = %s (reads on the replicas, on the same 2 cores)\n", M[i], ratio(cpk(r), cpk(s)), ratio(mtps(r), mtps(s))
        }
        r = "tpcb-like" SUBSEP "routed"; v = "tpcb-like" SUBSEP "eventual"
        if (n[r] && n[v] && nl[r] && nl[v])
            printf "tpcb-like: latency read_your_writes/eventual = %s (%.3f ms vs %.3f ms)\n", ratio(lat[r] / nl[r], lat[v] / nl[v]), lat[r] / nl[r], lat[v] / nl[v]
        p = "prepared" SUBSEP "sluice"; e = "extended" SUBSEP "sluice"
        if (n[p] && n[e])
            printf "sluice -M prepared / sluice -M extended tps = %s\n", ratio(mtps(p), mtps(e))
    }' "$RESULTS"
