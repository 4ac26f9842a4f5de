"""Offline checks of sluice's deployment artifacts, run by deploy/validate.sh.

Schema validation of the Kubernetes manifests and of docker-compose.yml is done by
validate.sh with kubernetes-validate and check-jsonschema (or docker compose); this
file checks what no schema covers: PromQL syntax (promql-parser), the structure of the
Prometheus and Grafana files, metric names, the embedded sluice configs, and that the
files agree with each other (mount paths, names, ports, grace period, image).

Usage: python validate.py ROOT    (ROOT: the repository's top directory)
Prints one line per problem and exits 1 if there is any.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import promql_parser
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

# The metrics sluice exports (histograms render as _bucket/_sum/_count). Dashboards and
# alerts may use only these. Keep in step with src/metrics; the test that scrapes a live
# sluice is the authority, this list lets the check run offline.
GAUGES = {
    "sluice_clients_active", "sluice_clients_waiting", "sluice_servers_active",
    "sluice_servers_idle", "sluice_servers_used", "sluice_servers_connecting",
    "sluice_pool_size", "sluice_clients_connected", "sluice_max_client_conn",
    "sluice_replica_lag_seconds", "sluice_replica_lag_bytes", "sluice_replica_banned",
    "sluice_draining", "sluice_paused",
}
COUNTERS = {
    "sluice_queries_total", "sluice_transactions_total", "sluice_received_bytes_total",
    "sluice_sent_bytes_total", "sluice_errors_total", "sluice_routed_total",
    "sluice_prepared_cache_hits_total", "sluice_prepared_cache_misses_total",
    "sluice_pins_total", "sluice_config_reloads_total", "sluice_client_logins_total",
}
HISTOGRAMS = {
    "sluice_client_wait_seconds", "sluice_query_duration_seconds",
    "sluice_transaction_duration_seconds",
}
KNOWN_METRICS = GAUGES | COUNTERS | HISTOGRAMS
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

IMAGE = "ghcr.io/sluice-pooler/sluice"

DURATION_RE = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")

errors = []
checked = []


def fail(where, msg):
    errors.append(f"{where}: {msg}")


def ok(what, errors_before):
    """Report `what` as passed if no problem was found since errors_before."""
    if len(errors) == errors_before:
        checked.append(what)


def rel(root, path):
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def load_yaml(root, path, multi=False):
    try:
        with open(path, encoding="utf-8") as f:
            if multi:
                return [d for d in yaml.safe_load_all(f) if d is not None]
            return yaml.safe_load(f)
    except FileNotFoundError:
        fail(rel(root, path), "missing")
    except yaml.YAMLError as e:
        fail(rel(root, path), f"invalid YAML: {e}")
    return None


def parse_promql(where, expr):
    try:
        promql_parser.parse(expr)
        return True
    except Exception as e:  # the parser raises ValueError with the reason
        fail(where, f"invalid PromQL ({e}): {expr.strip()}")
        return False


def sluice_duration_seconds(text):
    m = re.fullmatch(r"([0-9]+)(ms|s|m|h|d)", text)
    if not m:
        return None
    n, unit = int(m.group(1)), m.group(2)
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


# ---- metric names -------------------------------------------------------------------

METRIC_TOKEN = re.compile(r"(?i)\bsluice_[a-z0-9_]+")


def check_metric_names(root):
    """Every sluice_* token in the deploy YAML/JSON files is a metric sluice exports."""
    n0 = len(errors)
    files = [root / "docker-compose.yml"]
    for ext in ("*.yml", "*.yaml", "*.json"):
        files += [p for p in (root / "deploy").rglob(ext) if ".venv" not in p.parts]
    for path in sorted(set(files)):
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        for m in METRIC_TOKEN.finditer(text):
            token = m.group(0)
            base = token
            suffix = ""
            for s in HISTOGRAM_SUFFIXES:
                if token.endswith(s) and token[: -len(s)] in HISTOGRAMS:
                    base, suffix = token[: -len(s)], s
            line = text.count("\n", 0, m.start()) + 1
            where = f"{rel(root, path)}:{line}"
            if base not in KNOWN_METRICS:
                fail(where, f"{token} is not a metric sluice exports")
            elif base in HISTOGRAMS and not suffix:
                fail(where, f"{token} is a histogram: use {token}_bucket, _sum or _count")
    ok("metric names", n0)


# ---- Prometheus ---------------------------------------------------------------------

RULE_KEYS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
GROUP_KEYS = {"name", "interval", "rules", "limit", "query_offset", "labels"}


def check_rules(root, path):
    n0 = len(errors)
    doc = load_yaml(root, path)
    where = rel(root, path)
    if doc is None:
        return
    if not isinstance(doc, dict) or set(doc) != {"groups"}:
        fail(where, "a rule file holds exactly one key, groups")
        return
    groups = doc["groups"]
    if not isinstance(groups, list) or not groups:
        fail(where, "groups must be a non-empty list")
        return
    names = set()
    alerts = 0
    for gi, g in enumerate(groups):
        gw = f"{where}: groups[{gi}]"
        if not isinstance(g, dict):
            fail(gw, "not a mapping")
            continue
        for k in set(g) - GROUP_KEYS:
            fail(gw, f"unknown key {k!r}")
        name = g.get("name")
        if not isinstance(name, str) or not name:
            fail(gw, "name missing")
        elif name in names:
            fail(gw, f"duplicate group name {name!r}")
        names.add(name)
        if "interval" in g and not DURATION_RE.match(str(g["interval"])):
            fail(gw, f"bad interval {g['interval']!r}")
        rules = g.get("rules")
        if not isinstance(rules, list) or not rules:
            fail(gw, "rules must be a non-empty list")
            continue
        seen = set()
        for ri, r in enumerate(rules):
            rw = f"{gw}.rules[{ri}]"
            if not isinstance(r, dict):
                fail(rw, "not a mapping")
                continue
            rw = f"{gw} {r.get('alert') or r.get('record') or ri}"
            for k in set(r) - RULE_KEYS:
                fail(rw, f"unknown key {k!r}")
            if ("alert" in r) == ("record" in r):
                fail(rw, "needs exactly one of alert and record")
            if "alert" in r:
                alerts += 1
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(r["alert"])):
                    fail(rw, "alert name must be a valid label value identifier")
                if r["alert"] in seen:
                    fail(rw, "duplicate alert name in group")
                seen.add(r["alert"])
            elif not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", str(r["record"])):
                fail(rw, "record must be a valid metric name")
            expr = r.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                fail(rw, "expr missing")
            else:
                parse_promql(rw, expr)
            for k in ("for", "keep_firing_for"):
                if k in r and not DURATION_RE.match(str(r[k])):
                    fail(rw, f"bad {k} duration {r[k]!r}")
            for k in ("labels", "annotations"):
                v = r.get(k, {})
                if not isinstance(v, dict):
                    fail(rw, f"{k} must be a mapping")
                    continue
                for lk, lv in v.items():
                    if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", str(lk)):
                        fail(rw, f"bad {k} name {lk!r}")
                    if not isinstance(lv, str):
                        fail(rw, f"{k}.{lk} must be a string")
                    elif lv.count("{{") != lv.count("}}"):
                        fail(rw, f"{k}.{lk}: unbalanced template braces")
            if "alert" in r and "severity" not in r.get("labels", {}):
                fail(rw, "alert has no severity label")
            if "alert" in r and "summary" not in r.get("annotations", {}):
                fail(rw, "alert has no summary annotation")
    if alerts == 0:
        fail(where, "no alerting rules")
    ok(f"{where} ({alerts} alerts)", n0)


def check_prometheus_config(root, path, compose):
    n0 = len(errors)
    doc = load_yaml(root, path)
    where = rel(root, path)
    if not isinstance(doc, dict):
        if doc is not None:
            fail(where, "not a mapping")
        return
    allowed = {"global", "rule_files", "scrape_configs", "alerting", "remote_write",
               "remote_read", "storage", "tracing", "scrape_config_files", "runtime",
               "otlp"}
    for k in set(doc) - allowed:
        fail(where, f"unknown top-level key {k!r}")
    for k, v in (doc.get("global") or {}).items():
        if k.endswith(("_interval", "_timeout")) and not DURATION_RE.match(str(v)):
            fail(where, f"global.{k}: bad duration {v!r}")
    scrapes = doc.get("scrape_configs")
    if not isinstance(scrapes, list) or not scrapes:
        fail(where, "scrape_configs must be a non-empty list")
        scrapes = []
    jobs = set()
    targets = []
    for sc in scrapes:
        job = sc.get("job_name") if isinstance(sc, dict) else None
        if not job:
            fail(where, "scrape config without job_name")
            continue
        if job in jobs:
            fail(where, f"duplicate job_name {job!r}")
        jobs.add(job)
        for k in ("scrape_interval", "scrape_timeout"):
            if k in sc and not DURATION_RE.match(str(sc[k])):
                fail(where, f"{job}.{k}: bad duration {sc[k]!r}")
        for stc in sc.get("static_configs") or []:
            for t in stc.get("targets") or []:
                if not re.fullmatch(r"[A-Za-z0-9.\-_\[\]:]+:[0-9]+", str(t)):
                    fail(where, f"{job}: target {t!r} is not host:port")
                targets.append((job, t))
    if "sluice" not in jobs:
        fail(where, "no job_name sluice (the alerts select up{job=\"sluice\"})")
    if ("sluice", "sluice:9930") not in targets:
        fail(where, "job sluice does not scrape sluice:9930")
    # rule_files are container paths: each must be a file docker-compose.yml mounts.
    mounts = service_mounts(compose, "prometheus")
    for rf in doc.get("rule_files") or []:
        src = mounts.get(rf)
        if src is None:
            fail(where, f"rule file {rf} is not mounted into the prometheus service")
        elif not (root / src).is_file():
            fail(where, f"rule file {rf} is mounted from {src}, which does not exist")
    if mounts.get("/etc/prometheus/prometheus.yml") != rel(root, path):
        fail("docker-compose.yml", f"prometheus does not mount {rel(root, path)} at /etc/prometheus/prometheus.yml")
    ok(where, n0)


# ---- docker-compose.yml -------------------------------------------------------------

def service_mounts(compose, service):
    """Container path -> repository-relative source of the service's bind mounts."""
    out = {}
    svc = ((compose or {}).get("services") or {}).get(service) or {}
    for v in svc.get("volumes") or []:
        if isinstance(v, str):
            parts = v.split(":")
            if len(parts) >= 2 and parts[0].startswith((".", "/")):
                out[parts[1]] = os.path.normpath(parts[0])
        elif isinstance(v, dict) and v.get("type") == "bind":
            out[v.get("target")] = os.path.normpath(v.get("source", ""))
    return out


def check_compose(root, compose):
    n0 = len(errors)
    where = "docker-compose.yml"
    if not isinstance(compose, dict):
        fail(where, "not a mapping")
        return
    services = compose.get("services") or {}
    for name in ("primary", "replica", "sluice", "prometheus", "grafana"):
        if name not in services:
            fail(where, f"service {name!r} missing")
    named_volumes = set((compose.get("volumes") or {}).keys())
    for name, svc in services.items():
        sw = f"{where}: services.{name}"
        if not isinstance(svc, dict):
            fail(sw, "not a mapping")
            continue
        if "image" not in svc and "build" not in svc:
            fail(sw, "neither image nor build")
        build = svc.get("build")
        if build is not None:
            ctx = build if isinstance(build, str) else build.get("context", ".")
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            if not (root / ctx / dockerfile).is_file():
                fail(sw, f"build context {ctx} has no {dockerfile}")
        for v in svc.get("volumes") or []:
            if not isinstance(v, str):
                continue
            src = v.split(":")[0]
            if src.startswith((".", "/")):
                if not (root / src).exists():
                    fail(sw, f"mounted path {src} does not exist")
            elif src not in named_volumes:
                fail(sw, f"volume {src!r} is not declared under top-level volumes")
        for dep in svc.get("depends_on") or []:
            if dep not in services:
                fail(sw, f"depends_on unknown service {dep!r}")
    sluice = services.get("sluice") or {}
    if sluice.get("image", "").rsplit(":", 1)[0] != IMAGE:
        fail(f"{where}: services.sluice", f"image should be {IMAGE}:<tag>")
    published = {str(p).split(":")[-1] for p in sluice.get("ports") or []}
    for port in ("6432", "9930"):
        if port not in published:
            fail(f"{where}: services.sluice", f"port {port} not published")
    mounts = service_mounts(compose, "sluice")
    if "/etc/sluice/pooler.toml" not in mounts:
        fail(f"{where}: services.sluice", "no config mounted at /etc/sluice/pooler.toml")
    replica = services.get("replica") or {}
    if "replica-setup.sh" not in json.dumps(replica.get("entrypoint")):
        fail(f"{where}: services.replica", "entrypoint does not run replica-setup.sh")
    if str(replica.get("user", "root")) in ("root", "0"):
        fail(f"{where}: services.replica", "must run as the postgres user (postgres refuses root)")
    ok(f"{where} (structure, mounts)", n0)


# ---- Grafana ------------------------------------------------------------------------

GRAFANA_MACROS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}


def grafana_expr_to_promql(expr):
    for name, value in GRAFANA_MACROS.items():
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    return expr


def check_dashboard(root, path):
    n0 = len(errors)
    where = rel(root, path)
    try:
        dash = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        fail(where, "missing")
        return
    except json.JSONDecodeError as e:
        fail(where, f"invalid JSON: {e}")
        return
    for k in ("uid", "title", "schemaVersion", "panels", "templating", "time"):
        if k not in dash:
            fail(where, f"{k} missing")
    if "id" in dash and dash["id"] is not None:
        fail(where, "a provisioned dashboard should not carry a numeric id")
    sv = dash.get("schemaVersion")
    if not isinstance(sv, int) or not 36 <= sv <= 41:
        fail(where, f"schemaVersion {sv!r} outside 36..41")
    variables = set()
    for var in (dash.get("templating") or {}).get("list") or []:
        name = var.get("name")
        if name in variables:
            fail(where, f"duplicate template variable {name!r}")
        variables.add(name)
        q = var.get("query")
        if var.get("type") == "query":
            qs = q.get("query") if isinstance(q, dict) else q
            m = re.fullmatch(r"label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)", qs or "")
            if not m:
                fail(where, f"variable {name}: expected label_values(selector, label)")
            else:
                parse_promql(f"{where}: variable {name}", m.group(1))
    for needed in ("datasource", "database"):
        if needed not in variables:
            fail(where, f"template variable {needed!r} missing")

    ids = set()
    cells = {}
    targets_total = 0

    def walk(panels):
        for p in panels:
            yield p
            yield from walk(p.get("panels") or [])

    for p in walk(dash.get("panels") or []):
        pw = f"{where}: panel {p.get('id')} {p.get('title')!r}"
        pid = p.get("id")
        if not isinstance(pid, int):
            fail(pw, "id must be an integer")
        elif pid in ids:
            fail(pw, "duplicate panel id")
        ids.add(pid)
        if not p.get("type") or not p.get("title"):
            fail(pw, "type and title required")
        gp = p.get("gridPos") or {}
        if not all(isinstance(gp.get(k), int) for k in ("x", "y", "w", "h")):
            fail(pw, "gridPos needs integer x, y, w, h")
        else:
            if gp["x"] < 0 or gp["w"] < 1 or gp["x"] + gp["w"] > 24 or gp["h"] < 1:
                fail(pw, f"gridPos {gp} outside the 24-column grid")
            for x in range(gp["x"], gp["x"] + gp["w"]):
                for y in range(gp["y"], gp["y"] + gp["h"]):
                    if (x, y) in cells:
                        fail(pw, f"overlaps panel {cells[(x, y)]}")
                        break
                    cells[(x, y)] = pid
                else:
                    continue
                break
        if p.get("type") == "row":
            continue
        targets = p.get("targets") or []
        if not targets:
            fail(pw, "no targets")
        refs = set()
        for t in targets:
            targets_total += 1
            ref = t.get("refId")
            if not ref or ref in refs:
                fail(pw, f"missing or duplicate refId {ref!r}")
            refs.add(ref)
            expr = t.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                fail(pw, "target without expr")
                continue
            for v in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", expr):
                if v not in variables and v not in GRAFANA_MACROS:
                    fail(pw, f"expr uses undefined variable ${v}")
            parse_promql(pw, grafana_expr_to_promql(expr))
        for ds in [p.get("datasource")] + [t.get("datasource") for t in targets]:
            if isinstance(ds, dict) and ds.get("type") == "prometheus" and ds.get("uid") != "${datasource}":
                fail(pw, "datasource should be the ${datasource} variable")
    if targets_total == 0:
        fail(where, "no queries")
    ok(f"{where} ({len(ids)} panels, {targets_total} queries)", n0)


def check_grafana_provisioning(root, compose):
    n0 = len(errors)
    base = root / "deploy/compose/grafana/provisioning"
    ds_path = base / "datasources/prometheus.yml"
    ds = load_yaml(root, ds_path)
    where = rel(root, ds_path)
    if isinstance(ds, dict):
        if ds.get("apiVersion") != 1:
            fail(where, "apiVersion must be 1")
        entries = ds.get("datasources") or []
        if not any(d.get("type") == "prometheus" and d.get("url") == "http://prometheus:9090" for d in entries):
            fail(where, "no prometheus datasource at http://prometheus:9090")
        for d in entries:
            for k in ("name", "type", "url"):
                if k not in d:
                    fail(where, f"datasource without {k}")
        ok(where, n0)
    n0 = len(errors)
    db_path = base / "dashboards/sluice.yml"
    db = load_yaml(root, db_path)
    where = rel(root, db_path)
    if isinstance(db, dict):
        if db.get("apiVersion") != 1:
            fail(where, "apiVersion must be 1")
        mounts = service_mounts(compose, "grafana")
        if mounts.get("/etc/grafana/provisioning") != "deploy/compose/grafana/provisioning":
            fail("docker-compose.yml", "grafana does not mount deploy/compose/grafana/provisioning at /etc/grafana/provisioning")
        providers = db.get("providers") or []
        if not providers:
            fail(where, "no providers")
        for prov in providers:
            p = (prov.get("options") or {}).get("path")
            if prov.get("type") != "file" or not p:
                fail(where, "provider must be of type file with options.path")
                continue
            src = mounts.get(p)
            if src is None:
                fail(where, f"dashboards path {p} is not mounted into the grafana service")
            elif not list((root / src).glob("*.json")):
                fail(where, f"{p} is mounted from {src}, which holds no dashboard JSON")
        ok(where, n0)


# ---- sluice configs -----------------------------------------------------------------

def check_pooler_toml(root, where, text, client_listen, require=()):
    n0 = len(errors)
    try:
        cfg = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        fail(where, f"invalid TOML: {e}")
        return None
    pooler = cfg.get("pooler") or {}
    http = cfg.get("http") or {}
    if pooler.get("listen") != client_listen:
        fail(where, f"[pooler] listen should be {client_listen!r}, is {pooler.get('listen')!r}")
    if http.get("listen") != "0.0.0.0:9930":
        fail(where, "[http] listen should be \"0.0.0.0:9930\" (probes/scrapes come from outside the container)")
    if http.get("enabled") is False:
        fail(where, "[http] is disabled: the health checks need it")
    for k, v in require:
        if pooler.get(k) != v:
            fail(where, f"[pooler] {k} should be {v!r}, is {pooler.get(k)!r}")
    if pooler.get("log_format") not in (None, "text", "json"):
        fail(where, "[pooler] log_format must be text or json")
    users = cfg.get("users") or {}
    if "app" not in users:
        fail(where, "no [users.app]")
    for name, u in users.items():
        pw = str((u or {}).get("password", ""))
        if not re.fullmatch(r"\$\{[A-Z_][A-Z0-9_]*\}", pw):
            fail(where, f"[users.{name}] password should come from the environment (${{VAR}}), not the file")
    dbs = cfg.get("databases") or {}
    if "app" not in dbs:
        fail(where, "no [databases.app]")
    for name, d in dbs.items():
        for hp in [d.get("primary")] + list(d.get("replicas") or []):
            if not isinstance(hp, str) or not re.fullmatch(r"[A-Za-z0-9.\-]+:[0-9]+", hp):
                fail(where, f"[databases.{name}] {hp!r} is not host:port")
    sluice_bin = os.environ.get("SLUICE_BIN")
    if sluice_bin:
        env = dict(os.environ)
        for var in set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)\}", text)):
            env.setdefault(var, "validate-placeholder")
        with tempfile.TemporaryDirectory() as tmpdir:
            tmp = Path(tmpdir) / "pooler.toml"
            tmp.write_text(text, encoding="utf-8")
            r = subprocess.run([sluice_bin, "check", "--config", str(tmp)], env=env,
                               capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            fail(where, f"`sluice check` rejected it: {(r.stderr or r.stdout).strip()}")
    ok(where + (" (+ sluice check)" if sluice_bin else ""), n0)
    return cfg


# ---- Kubernetes cross-checks --------------------------------------------------------

def k8s_docs(root):
    out = {}
    for path in sorted((root / "deploy/kubernetes").glob("*.yaml")):
        docs = load_yaml(root, path, multi=True) or []
        out[path.name] = docs
    return out


def find(docs, kind, name=None):
    for d in docs:
        if isinstance(d, dict) and d.get("kind") == kind and (name is None or d["metadata"]["name"] == name):
            return d
    return None


def check_kubernetes(root):
    n0 = len(errors)
    kdir = root / "deploy/kubernetes"
    files = k8s_docs(root)
    kz = (files.get("kustomization.yaml") or [None])[0]
    if not isinstance(kz, dict):
        fail("deploy/kubernetes/kustomization.yaml", "missing or empty")
        return
    kw = "deploy/kubernetes/kustomization.yaml"
    if kz.get("kind") != "Kustomization":
        fail(kw, "kind must be Kustomization")
    resources = kz.get("resources") or []
    for r in resources:
        if not (kdir / r).is_file():
            fail(kw, f"resource {r} does not exist")
    expected = {"configmap.yaml", "secret.yaml", "deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml"}
    for missing in sorted(expected - set(resources)):
        fail(kw, f"{missing} not listed in resources")
    if "sidecar-example.yaml" in resources:
        fail(kw, "sidecar-example.yaml is an example, not part of the standalone resources")

    all_docs = [d for docs in files.values() for d in docs if isinstance(d, dict)]
    for name, docs in files.items():
        for d in docs:
            if not isinstance(d, dict) or d.get("kind") == "Kustomization":
                continue
            spec = (d.get("spec") or {}).get("template", {}).get("spec", {})
            for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
                img = c.get("image", "")
                if "sluice" in img and img.rsplit(":", 1)[0] != IMAGE:
                    fail(f"deploy/kubernetes/{name}", f"image {img} should be {IMAGE}:<tag>")
    for img in kz.get("images") or []:
        if img.get("name") != IMAGE:
            fail(kw, f"images entry {img.get('name')} does not match {IMAGE}")

    dep = find(all_docs, "Deployment", "sluice")
    cm = find(all_docs, "ConfigMap", "sluice-config")
    dw = "deploy/kubernetes/deployment.yaml"
    if dep is None or cm is None:
        fail(dw, "Deployment sluice or ConfigMap sluice-config missing")
        return
    cfg = check_pooler_toml(root, "deploy/kubernetes/configmap.yaml [pooler.toml]", cm["data"].get("pooler.toml", ""),
                            "0.0.0.0:6432", require=(("so_reuseport", True), ("shutdown_timeout", "30s")))
    pod = dep["spec"]["template"]["spec"]
    c = next((c for c in pod["containers"] if c["name"] == "sluice"), None)
    if c is None:
        fail(dw, "no container named sluice")
        return
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
    if ports.get("postgres") != 6432 or ports.get("http") != 9930:
        fail(dw, "container ports must be postgres: 6432 and http: 9930")
    for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
        hg = (c.get(probe) or {}).get("httpGet") or {}
        if hg.get("path") != path or hg.get("port") not in ("http", 9930):
            fail(dw, f"{probe} should GET {path} on port http (9930)")
    mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts") or []}
    vols = {v["name"]: v for v in pod.get("volumes") or []}
    cm_vol = next((n for n, v in vols.items() if (v.get("configMap") or {}).get("name") == "sluice-config"), None)
    if cm_vol is None or mounts.get(cm_vol) != "/etc/sluice":
        fail(dw, "ConfigMap sluice-config must be mounted at /etc/sluice")
    args = c.get("args") or []
    if args[-2:] != ["--config", "/etc/sluice/pooler.toml"] and args:
        fail(dw, "args should be --config /etc/sluice/pooler.toml")
    secret_names = {s["metadata"]["name"] for s in all_docs if s.get("kind") == "Secret"}
    for ef in c.get("envFrom") or []:
        n = (ef.get("secretRef") or {}).get("name")
        if n and n not in secret_names:
            fail(dw, f"envFrom refers to unknown Secret {n}")
    sec = find(all_docs, "Secret", "sluice-secrets")
    if sec is None or "APP_PASSWORD" not in (sec.get("stringData") or {}):
        fail("deploy/kubernetes/secret.yaml", "Secret sluice-secrets with stringData.APP_PASSWORD missing")
    sc = c.get("securityContext") or {}
    psc = pod.get("securityContext") or {}
    if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")) or 10001 not in (sc.get("runAsUser"), psc.get("runAsUser")):
        fail(dw, "must run as non-root uid 10001")
    if sc.get("readOnlyRootFilesystem") is not True:
        fail(dw, "readOnlyRootFilesystem must be true")
    # Grace period: preStop sleep + shutdown_timeout + a margin of at least 5s.
    shutdown = sluice_duration_seconds(str(((cfg or {}).get("pooler") or {}).get("shutdown_timeout", "30s"))) or 30
    prestop = 0
    cmd = (((c.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command") or []
    if len(cmd) == 2 and cmd[0] == "sleep":
        prestop = int(cmd[1])
    sleep_action = ((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep")
    if sleep_action:
        prestop = int(sleep_action.get("seconds", 0))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace < prestop + shutdown + 5:
        fail(dw, f"terminationGracePeriodSeconds {grace} < preStop {prestop}s + shutdown_timeout {shutdown:g}s + 5s margin")

    svc = find(all_docs, "Service", "sluice")
    sw = "deploy/kubernetes/service.yaml"
    if svc is None:
        fail(sw, "Service sluice missing")
    else:
        if svc["spec"].get("type", "ClusterIP") != "ClusterIP":
            fail(sw, "type should be ClusterIP")
        if {p["port"] for p in svc["spec"].get("ports") or []} != {6432, 9930}:
            fail(sw, "ports should be 6432 and 9930")
        for p in svc["spec"].get("ports") or []:
            tp = p.get("targetPort", p["port"])
            if isinstance(tp, str) and tp not in ports:
                fail(sw, f"targetPort {tp} is not a named port of the sluice container")
        sel = svc["spec"].get("selector") or {}
        labels = dep["spec"]["template"]["metadata"].get("labels") or {}
        if not sel or any(labels.get(k) != v for k, v in sel.items()):
            fail(sw, "selector does not match the Deployment's pod labels")
    hpa = find(all_docs, "HorizontalPodAutoscaler")
    if hpa is not None and hpa["spec"]["scaleTargetRef"].get("name") != "sluice":
        fail("deploy/kubernetes/hpa.yaml", "scaleTargetRef should be Deployment sluice")
    pdb = find(all_docs, "PodDisruptionBudget")
    if pdb is not None:
        labels = dep["spec"]["template"]["metadata"].get("labels") or {}
        sel = (pdb["spec"].get("selector") or {}).get("matchLabels") or {}
        if not sel or any(labels.get(k) != v for k, v in sel.items()):
            fail("deploy/kubernetes/pdb.yaml", "selector does not match the Deployment's pod labels")

    side = files.get("sidecar-example.yaml") or []
    scm = find(side, "ConfigMap")
    if scm is None:
        fail("deploy/kubernetes/sidecar-example.yaml", "no ConfigMap")
    else:
        check_pooler_toml(root, "deploy/kubernetes/sidecar-example.yaml [pooler.toml]",
                          scm["data"].get("pooler.toml", ""), "127.0.0.1:6432")
    sdep = find(side, "Deployment")
    if sdep is not None:
        spod = sdep["spec"]["template"]["spec"]
        envs = [e for c2 in spod.get("containers") or [] for e in c2.get("env") or []]
        url = next((e.get("value") for e in envs if e["name"] == "DATABASE_URL"), None)
        if url != "postgres://app:$(APP_PASSWORD)@127.0.0.1:6432/app":
            fail("deploy/kubernetes/sidecar-example.yaml", "app's DATABASE_URL should be postgres://app:$(APP_PASSWORD)@127.0.0.1:6432/app")
        names = [e["name"] for e in envs]
        if "APP_PASSWORD" not in names or ("DATABASE_URL" in names and names.index("APP_PASSWORD") > names.index("DATABASE_URL")):
            fail("deploy/kubernetes/sidecar-example.yaml", "APP_PASSWORD must be defined before DATABASE_URL for $(APP_PASSWORD) to expand")
    ok("deploy/kubernetes (cross-references)", n0)


# ---- Dockerfile ---------------------------------------------------------------------

def check_dockerfile(root):
    n0 = len(errors)
    where = "Dockerfile"
    try:
        text = (root / "Dockerfile").read_text(encoding="utf-8")
    except FileNotFoundError:
        fail(where, "missing")
        return
    lines = re.sub(r"\\\n", " ", text).splitlines()
    instr = [l.strip() for l in lines if l.strip() and not l.strip().startswith("#")]
    froms = [l for l in instr if l.upper().startswith("FROM ")]
    if len(froms) < 2 or not froms[0].split()[1].startswith("rust:") or "bookworm-slim" not in froms[-1]:
        fail(where, "expected a rust builder stage and a debian:bookworm-slim runtime stage")
    want = [
        (r"cargo build --release --locked", "builds with cargo build --release --locked"),
        (r"^USER\s+(10001|sluice)", "runs as user 10001"),
        (r"^EXPOSE\s+6432\s+9930\b", "EXPOSE 6432 9930"),
        (r"^STOPSIGNAL\s+SIGTERM\b", "STOPSIGNAL SIGTERM"),
        (r"^HEALTHCHECK\b.*http://127\.0\.0\.1:9930/health", "HEALTHCHECK on http://127.0.0.1:9930/health"),
        (r'^ENTRYPOINT\s+\["sluice"\]', 'ENTRYPOINT ["sluice"]'),
        (r'^CMD\s+\["--config",\s*"/etc/sluice/pooler.toml"\]', 'CMD ["--config", "/etc/sluice/pooler.toml"]'),
    ]
    for pattern, what in want:
        if not any(re.search(pattern, l) for l in instr):
            fail(where, f"does not have: {what}")
    di = root / ".dockerignore"
    if not di.is_file() or "target" not in di.read_text(encoding="utf-8"):
        fail(".dockerignore", "missing or does not exclude target/")
    ok(where, n0)


def main():
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent).resolve()
    compose = load_yaml(root, root / "docker-compose.yml")
    check_compose(root, compose)
    check_prometheus_config(root, root / "deploy/compose/prometheus.yml", compose)
    check_rules(root, root / "deploy/compose/alerts.yml")
    check_dashboard(root, root / "deploy/grafana/sluice-dashboard.json")
    check_grafana_provisioning(root, compose)
    pooler = root / "deploy/compose/pooler.toml"
    if pooler.is_file():
        check_pooler_toml(root, "deploy/compose/pooler.toml", pooler.read_text(encoding="utf-8"),
                          "0.0.0.0:6432", require=(("log_format", "json"),))
        if service_mounts(compose, "sluice").get("/etc/sluice/pooler.toml") != "deploy/compose/pooler.toml":
            fail("docker-compose.yml", "sluice does not mount deploy/compose/pooler.toml at /etc/sluice/pooler.toml")
    else:
        fail("deploy/compose/pooler.toml", "missing")
    check_kubernetes(root)
    check_dockerfile(root)
    check_metric_names(root)
    for c in checked:
        print(f"  ok  {c}")
    for e in errors:
        print(f"FAIL  {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
