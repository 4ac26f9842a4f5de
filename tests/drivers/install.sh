#!/usr/bin/env bash
# System packages the real-driver checks (tests/drivers/run.sh) need on a
# fresh Debian 12 machine, run as root. Idempotent and quick when all is
# there: apt-get update runs only if some package is missing.
#
#   python3 with venv + ensurepip  python3-venv (only if python3 cannot make a venv)
#   javac (Java 17)                openjdk-17-jdk-headless (only if javac is missing)
#   pgjdbc                         libpostgresql-jdbc-java -> /usr/share/java/postgresql.jar
#   node + npm                     nodejs npm (only if node or npm is missing)
#
# The Python packages (PyPI) and node-postgres (npm registry) are not system
# packages: run.sh installs them into tests/drivers/.venv and
# tests/drivers/node/node_modules on first use.
set -euo pipefail

need=()
# Debian's own python3 can make a venv only with python3-venv installed.
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    need+=(python3-venv)
fi
if ! command -v javac >/dev/null 2>&1; then
    need+=(openjdk-17-jdk-headless)
fi
if [[ ! -f /usr/share/java/postgresql.jar ]]; then
    need+=(libpostgresql-jdbc-java)
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    need+=(nodejs npm)
fi

if ((${#need[@]} == 0)); then
    echo "install.sh: nothing to install"
    exit 0
fi
echo "install.sh: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}"
