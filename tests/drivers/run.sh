#!/usr/bin/env bash
# Real-driver checks of prepared statements through a PostgreSQL endpoint,
# normally sluice in transaction mode with fewer servers than clients.
#
#   tests/drivers/run.sh psycopg|asyncpg|node|jdbc|all
#
# The endpoint comes from PGHOST PGPORT PGUSER PGPASSWORD PGDATABASE
# (defaults 127.0.0.1 6432 app app app); CHECK_CLIENTS, CHECK_ROUNDS,
# CHECK_TIMEOUT and CHECK_REQUIRE_SWITCHING are passed on to the checks
# (see the comment at the top of any of them). Nothing here starts sluice
# or PostgreSQL.
#
# Each check holds up to CHECK_CLIENTS + 2 connections (22 by default) at
# once, some of them waiting on each other: in session mode sluice needs a
# pool at least that large, or the check stalls until it times out. In
# transaction mode a pool smaller than CHECK_CLIENTS is the point: every
# client's transactions then move between servers. CHECK_REQUIRE_SWITCHING=1
# makes each check prove that happened.
#
# wiretap.py beside this script is a logging proxy that shows the messages a
# driver sends (python3 wiretap.py 7500 127.0.0.1 6432 /tmp/tap.log, then
# PGPORT=7500 run.sh psycopg).
#
# Each driver is set up on first use and re-used after that:
#   psycopg, asyncpg  a venv in tests/drivers/.venv (pip install only when it
#                     is missing or python/requirements.txt changed)
#   node              npm ci into tests/drivers/node/node_modules (only when it
#                     is missing or package-lock.json changed)
#   jdbc              javac into tests/drivers/.java-build (only when the
#                     source is newer than the class)
# System packages (javac, pgjdbc, python3-venv) come from install.sh.
#
# Exit status: 0 if every check run passed, 1 otherwise (2: bad usage).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PGHOST="${PGHOST:-127.0.0.1}"
export PGPORT="${PGPORT:-6432}"
export PGUSER="${PGUSER:-app}"
export PGPASSWORD="${PGPASSWORD:-app}"
export PGDATABASE="${PGDATABASE:-app}"

JDBC_JAR=/usr/share/java/postgresql.jar

usage() {
    echo "usage: $0 psycopg|asyncpg|node|jdbc|all" >&2
    exit 2
}

sha() { sha256sum "$1" | cut -d' ' -f1; }

setup_python() {
    local venv="$here/.venv" req="$here/python/requirements.txt"
    local stamp="$venv/.requirements.sha256"
    if [[ -x "$venv/bin/python" && "$(cat "$stamp" 2>/dev/null)" == "$(sha "$req")" ]]; then
        return 0
    fi
    echo "run.sh: setting up $venv" >&2
    # (Each step says `|| return 1`: run_one runs inside an `if`, where
    # set -e does not stop a function, and the stamp must not outlive a
    # failed install.)
    rm -f "$stamp"
    "${PYTHON:-python3}" -m venv "$venv" || return 1
    "$venv/bin/pip" install --disable-pip-version-check -q -r "$req" || return 1
    sha "$req" >"$stamp"
}

setup_node() {
    local dir="$here/node"
    local stamp="$dir/node_modules/.package-lock.sha256"
    if [[ -d "$dir/node_modules/pg" && "$(cat "$stamp" 2>/dev/null)" == "$(sha "$dir/package-lock.json")" ]]; then
        return 0
    fi
    echo "run.sh: npm ci in $dir" >&2
    (cd "$dir" && npm ci --prefer-offline --no-audit --no-fund --loglevel=error) || return 1
    sha "$dir/package-lock.json" >"$stamp"
}

setup_jdbc() {
    local out="$here/.java-build" src="$here/java/PgJdbcCheck.java"
    if [[ ! -f "$JDBC_JAR" ]]; then
        echo "run.sh: $JDBC_JAR is missing: run $here/install.sh" >&2
        return 1
    fi
    if [[ -f "$out/PgJdbcCheck.class" && "$out/PgJdbcCheck.class" -nt "$src" ]]; then
        return 0
    fi
    echo "run.sh: javac $src" >&2
    mkdir -p "$out" || return 1
    javac -cp "$JDBC_JAR" -d "$out" "$src"
}

# Set up and run one driver's check; its exit status is the check's.
run_one() {
    case "$1" in
        psycopg)
            setup_python || return 1
            "$here/.venv/bin/python" "$here/python/psycopg_check.py"
            ;;
        asyncpg)
            setup_python || return 1
            "$here/.venv/bin/python" "$here/python/asyncpg_check.py"
            ;;
        node)
            setup_node || return 1
            node "$here/node/pg_check.js"
            ;;
        jdbc)
            setup_jdbc || return 1
            java -cp "$JDBC_JAR:$here/.java-build" PgJdbcCheck
            ;;
        *)
            usage
            ;;
    esac
}

[[ $# -eq 1 ]] || usage
case "$1" in
    all) drivers=(psycopg asyncpg node jdbc) ;;
    psycopg | asyncpg | node | jdbc) drivers=("$1") ;;
    *) usage ;;
esac

echo "run.sh: checking ${drivers[*]} against $PGUSER@$PGHOST:$PGPORT/$PGDATABASE"
failed=()
for driver in "${drivers[@]}"; do
    start=$SECONDS
    if run_one "$driver"; then
        echo "run.sh: $driver passed ($((SECONDS - start))s)"
    else
        echo "run.sh: $driver FAILED ($((SECONDS - start))s)"
        failed+=("$driver")
    fi
done
if ((${#failed[@]} > 0)); then
    echo "run.sh: failed: ${failed[*]}"
fi
# A closing tally of drivers, alone on its line.
echo "drivers: $((${#drivers[@]} - ${#failed[@]})) passed, ${#failed[@]} failed"
((${#failed[@]} == 0))
