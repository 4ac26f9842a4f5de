#!/usr/bin/env bash
# Offline validation of the deployment artifacts (Dockerfile, docker-compose.yml,
# deploy/compose/, deploy/grafana/, deploy/kubernetes/). Used by CI through cargo test.
#
# The first run creates deploy/.venv and pip-installs deploy/requirements.txt (needs
# PyPI); later runs reuse it without touching the network. Everything is checked
# against schemas bundled in those packages, so no cluster, daemon or download is needed.
#
# Environment:
#   PYTHON              interpreter to make the venv with          (default: python3)
#   SLUICE_DEPLOY_VENV  venv directory                             (default: deploy/.venv)
#   K8S_VERSIONS        Kubernetes versions to validate against    (default: "1.37.0 1.30.0")
#   SLUICE_BIN          if set, also run `$SLUICE_BIN check` on each embedded pooler.toml
#
# Exits 0 when everything passes, 1 on the first failing step (all problems of that
# step are listed).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
venv=${SLUICE_DEPLOY_VENV:-$here/.venv}
req=$here/requirements.txt
k8s_versions=${K8S_VERSIONS:-1.37.0 1.30.0}

fail() {
    echo "deploy/validate.sh: FAIL: $*" >&2
    exit 1
}
step() { echo "== $*"; }

# ---- tools ---------------------------------------------------------------------------
# The stamp records the requirements and interpreter the venv was made from; while they
# match, pip is skipped. A lock keeps concurrent runs from building the venv together.
setup_venv() {
    local want stamp
    want="$(cat "$req") $("${PYTHON:-python3}" -c 'import sys; print(sys.version)' 2>/dev/null || true)"
    want=$(printf '%s' "$want" | sha256sum | cut -d' ' -f1)
    stamp=$venv/.sluice-requirements.sha256
    if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null || true)" = "$want" ]; then
        return 0
    fi
    step "setting up $venv"
    if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c '' 2>/dev/null; then
        "${PYTHON:-python3}" -m venv --clear "$venv" \
            || fail "could not create a venv at $venv (is python3-venv installed?)"
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" \
        || fail "pip install -r $req failed (the first run needs PyPI)"
    printf '%s\n' "$want" > "$stamp"
}

lock=${TMPDIR:-/tmp}/sluice-deploy-venv-$(printf '%s' "$venv" | cksum | cut -d' ' -f1).lock
if command -v flock >/dev/null 2>&1; then
    exec 9>"$lock"
    flock 9
    setup_venv
    flock -u 9
else
    setup_venv
fi
py=$venv/bin/python
export PATH="$venv/bin:$PATH"

cd "$root"

# ---- shell scripts -------------------------------------------------------------------
step "shell syntax"
sh -n deploy/compose/replica-setup.sh || fail "deploy/compose/replica-setup.sh: sh syntax error"
bash -n deploy/compose/primary-init.sh || fail "deploy/compose/primary-init.sh: bash syntax error"
bash -n deploy/validate.sh || fail "deploy/validate.sh: bash syntax error"
if command -v shellcheck >/dev/null 2>&1; then
    shellcheck -S warning deploy/compose/replica-setup.sh deploy/compose/primary-init.sh deploy/validate.sh \
        || fail "shellcheck found problems"
fi
for f in deploy/compose/replica-setup.sh deploy/compose/primary-init.sh; do
    [ -f "$f" ] || fail "$f missing"
done

# ---- Kubernetes ----------------------------------------------------------------------
# Every manifest except kustomization.yaml (a kustomize file, not an API object: it is
# checked by validate.py) against the bundled schemas, rejecting unknown fields.
manifests=()
for f in deploy/kubernetes/*.yaml; do
    [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")
done
[ "${#manifests[@]}" -gt 0 ] || fail "no manifests in deploy/kubernetes/"
for v in $k8s_versions; do
    step "kubernetes-validate --strict -k $v (${#manifests[@]} files)"
    kubernetes-validate --strict --quiet -k "$v" "${manifests[@]}" \
        || fail "Kubernetes manifests do not validate against $v"
done

# ---- docker-compose.yml --------------------------------------------------------------
if docker compose version >/dev/null 2>&1; then
    step "docker compose config -q"
    docker compose -f docker-compose.yml config -q || fail "docker-compose.yml: docker compose config failed"
else
    step "docker-compose.yml against the compose-spec schema (check-jsonschema; docker compose not available)"
    check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml \
        || fail "docker-compose.yml does not match the compose-spec schema"
fi

# ---- Prometheus, Grafana, sluice configs, cross-references ---------------------------
if command -v promtool >/dev/null 2>&1; then
    step "promtool"
    promtool check rules deploy/compose/alerts.yml || fail "promtool check rules failed"
    promtool check config --syntax-only deploy/compose/prometheus.yml || fail "promtool check config failed"
fi
step "validate.py (PromQL, Prometheus, Grafana, pooler.toml, cross-references, metric names)"
"$py" deploy/validate.py "$root" || fail "see the FAIL lines above"

echo "deploy/validate.sh: OK"
