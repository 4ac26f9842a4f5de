#!/usr/bin/env python3
"""Prepared statements through sluice with psycopg 3 (a real driver).

Many connections, each running a few hundred server-side prepared queries
with varying parameters, every answer checked. Run it against sluice in
transaction mode with fewer server connections than CHECK_CLIENTS: each
client's transactions then land on different servers, so its named
statements must follow it. It also passes directly against PostgreSQL and
against sluice in session mode, which is what its answers are held to.

Phases (one summary line each; exit status 1 if any phase fails):

  prepare_threshold=0   every query is a named prepared statement
  default threshold     psycopg prepares a query on its 6th execution
  pipeline              pipeline mode, executemany, a transaction inside
  cache eviction        prepared_max=4: psycopg closes statements it evicts
  schema change         ALTER TABLE ... ADD COLUMN under SELECT * statements

What psycopg sends (psycopg 3.3, libpq 18), worth knowing for the pooler:
  * a first execution prepares separately: Parse(name=_pg3_N) + Sync, then
    Bind + Describe(portal) + Execute + Sync; later ones skip the Parse.
    In transaction mode the Parse and the Bind are two transactions, so
    they may well land on two different servers.
  * an evicted statement is closed with Close(S, _pg3_N) + Sync.
  * after a command whose tag starts with DROP, ALTER, ROLLBACK, DISCARD ALL
    or DEALLOCATE ALL (run as a prepared statement, or the first time as an
    unprepared one), psycopg forgets its statements and sends a simple
    Query 'DEALLOCATE ALL'; the names go on counting up.
  * pipeline mode: Parse/Bind/Describe/Execute for several queries, one Sync,
    then Flush.
  * BEGIN/COMMIT/ROLLBACK of conn.transaction() are simple Queries.

Settings come from PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE (defaults
127.0.0.1, 6432, app, app, app). CHECK_CLIENTS (20) and CHECK_ROUNDS (200)
size the run; CHECK_TIMEOUT (120 s) aborts a run that hangs;
CHECK_REQUIRE_SWITCHING=1 fails the run unless some client was served by
more than one server backend (proof that transaction pooling happened).
"""

import os
import random
import re
import sys
import threading
import time
import traceback
import uuid

import psycopg
from psycopg import errors, sql

CLIENTS = int(os.environ.get("CHECK_CLIENTS", "20"))
ROUNDS = int(os.environ.get("CHECK_ROUNDS", "200"))
TIMEOUT = float(os.environ.get("CHECK_TIMEOUT", "120"))
REQUIRE_SWITCHING = os.environ.get("CHECK_REQUIRE_SWITCHING", "") not in ("", "0")

# One prefix per run, so two runs (or a crashed one) never share tables.
PREFIX = f"drv_psycopg_{os.getpid()}_{uuid.uuid4().hex[:8]}"


def conninfo():
    """Connection keywords from the PG* environment, with the demo's defaults."""
    return dict(
        host=os.environ.get("PGHOST", "127.0.0.1"),
        port=int(os.environ.get("PGPORT", "6432")),
        user=os.environ.get("PGUSER", "app"),
        password=os.environ.get("PGPASSWORD", "app"),
        dbname=os.environ.get("PGDATABASE", "app"),
        connect_timeout=15,
    )


def connect(**kwargs):
    """A new connection; autocommit unless the caller says otherwise."""
    kwargs.setdefault("autocommit", True)
    return psycopg.connect(**conninfo(), **kwargs)


class CheckFailed(Exception):
    """A wrong answer (as opposed to a driver error, which is also fatal)."""


def expect(actual, wanted, what):
    if actual != wanted:
        raise CheckFailed(f"{what}: got {actual!r}, wanted {wanted!r}")


def table(suffix):
    """A quoted identifier for one of this run's tables."""
    return sql.Identifier(f"{PREFIX}_{suffix}")


class Stats:
    """Counts checked answers and the server backends each client saw."""

    def __init__(self):
        self.lock = threading.Lock()
        self.checked = 0
        self.backends = []  # number of backend pids each client saw
        self.prepared = []  # most named statements each client held at once

    def add(self, checked, pids=None, prepared=None):
        with self.lock:
            self.checked += checked
            if pids is not None:
                self.backends.append(len(pids))
            if prepared is not None:
                self.prepared.append(prepared)

    def backend_summary(self):
        if not self.backends:
            return ""
        lo, hi = min(self.backends), max(self.backends)
        avg = sum(self.backends) / len(self.backends)
        return f", server backends per client {lo}..{hi} (avg {avg:.1f})"


def run_workers(count, worker, *args):
    """Run worker(i, *args) in `count` threads; raise the first failure."""
    failures = []

    def body(i):
        try:
            worker(i, *args)
        except BaseException as e:  # noqa: BLE001 - everything is reported
            failures.append((i, e, traceback.format_exc()))

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        # A worker that only saw a barrier broken by another is not the news.
        failures.sort(key=lambda f: isinstance(f[1], threading.BrokenBarrierError))
        i, e, tb = failures[0]
        sys.stdout.flush()
        sys.stderr.write(f"--- worker {i} failed ({len(failures)} of {count} failed):\n{tb}")
        seen = set()
        for j, err, _ in failures[1:]:
            line = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            # One line per kind of message: names, values and numbers masked.
            key = re.sub(r"[0-9]+", "N", re.sub(r"'[^']*'", "'...'", re.sub(r'"[^"]*"', '"..."', line)))
            if key not in seen:
                seen.add(key)
                sys.stderr.write(f"--- also, worker {j}: {line}\n")
        sys.stderr.flush()
        kinds = {}
        for _, err, _ in failures:
            kinds[type(err).__name__] = kinds.get(type(err).__name__, 0) + 1
        kinds_text = ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1]))
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise RuntimeError(
            f"{len(failures)}/{count} workers failed ({kinds_text}); "
            f"first: worker {i}: {type(e).__name__}: {first_line}"
        ) from e


# --- phase: many clients, named statements, transactions ---------------------


def mixed_worker(wid, conn_kwargs, t, stats):
    """A few hundred prepared queries with varying parameters, all checked.

    Each round runs one query outside any transaction (which also reports the
    backend pid, to see the client move between servers) and then, in turn,
    a committed insert read back or a query of assorted types. Every 50
    rounds come an expected error inside a transaction and a transaction
    rolled back with a user-issued ROLLBACK (after each, psycopg deallocates
    all its statements). At the end the worker's committed rows are counted.
    """
    rng = random.Random(wid * 7919 + len(conn_kwargs))
    pids = set()
    checked = 0
    committed = 0
    most_prepared = 0
    with connect(**conn_kwargs) as conn:
        for i in range(ROUNDS):
            a = rng.randint(-(10**6), 10**6)
            s = f"w{wid}-r{i}-{rng.randint(0, 10**9)}"
            # The worker's number is part of the text, so this statement
            # (psycopg's _pg3_0 on every connection) differs between
            # clients: running another client's _pg3_0 gives a wrong answer.
            row = conn.execute(
                f"SELECT %s::int * 2, %s::text || '!', pg_backend_pid(), {wid}", (a, s)
            ).fetchone()
            expect(len(row), 4, "columns of the first query")
            expect((row[0], row[1], row[3]), (a * 2, s + "!", wid), "int*2, text||'!', worker")
            pids.add(row[2])
            checked += 1

            if i % 2 == 0:
                # A committed transaction: insert, read back inside it.
                with conn.transaction():
                    conn.execute(
                        sql.SQL("INSERT INTO {} (worker, n, label) VALUES (%s, %s, %s)").format(t),
                        (wid, i, s),
                    )
                    got = conn.execute(
                        sql.SQL("SELECT label FROM {} WHERE worker = %s AND n = %s").format(t),
                        (wid, i),
                    ).fetchall()
                    expect(got, [(s,)], "row read back in its transaction")
                committed += 1
                checked += 1
            else:
                # Assorted parameter and result types, including NULL.
                f = rng.random() * 1000
                flag = rng.random() < 0.5
                blob = s.encode()
                got = conn.execute(
                    "SELECT %s::float8 * 2, NOT %s::bool, length(%s::bytea), %s::int IS NULL",
                    (f, flag, blob, None),
                ).fetchone()
                expect(got, (f * 2, not flag, len(blob), True), "float/bool/bytea/null")
                checked += 1

            # How many named statements psycopg holds (a private attribute,
            # read only to prove the phase really used prepared statements).
            names = getattr(getattr(conn, "_prepared", None), "_names", None)
            if names is not None:
                most_prepared = max(most_prepared, len(names))

            # Every rollback, of either kind below, makes psycopg forget its
            # statements and send DEALLOCATE ALL, then prepare them anew. So
            # they are rare: with the default threshold a query is prepared
            # only on its 6th execution after that.
            if i % 50 == 24:
                # An error inside a transaction must surface as itself, and
                # the connection must be fine afterwards.
                try:
                    with conn.transaction():
                        conn.execute("SELECT 1 / %s::int", (0,))
                    raise CheckFailed("1/0 did not raise division_by_zero")
                except errors.DivisionByZero:
                    pass
                got = conn.execute("SELECT %s::int + 1", (a,)).fetchone()
                expect(got, (a + 1,), "query after a failed transaction")
                checked += 1

            if i % 50 == 49:
                # A rolled-back transaction, with BEGIN and ROLLBACK run as
                # ordinary statements (prepared ones, with threshold 0).
                conn.execute("BEGIN")
                conn.execute(
                    sql.SQL("INSERT INTO {} (worker, n, label) VALUES (%s, %s, %s)").format(t),
                    (wid, -i, "rolled back"),  # negative n: no clash with the others
                )
                conn.execute("ROLLBACK")
                got = conn.execute(
                    sql.SQL("SELECT count(*) FROM {} WHERE worker = %s AND n = %s").format(t),
                    (wid, -i),
                ).fetchone()
                expect(got, (0,), "rolled-back row is absent")
                checked += 1

        got = conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE worker = %s").format(t), (wid,)
        ).fetchone()
        expect(got, (committed,), f"committed rows of worker {wid}")
    stats.add(checked + 1, pids, most_prepared)


def phase_mixed(conn_kwargs, suffix):
    t = table(suffix)
    with connect() as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {} (worker int, n int, label text, PRIMARY KEY (worker, n))").format(t)
        )
    stats = Stats()
    run_workers(CLIENTS, mixed_worker, conn_kwargs, t, stats)
    if REQUIRE_SWITCHING and max(stats.backends) <= 1:
        raise CheckFailed("no client was served by more than one server backend")
    if stats.prepared and max(stats.prepared) == 0:
        raise CheckFailed("psycopg prepared no statement: the phase tested nothing")
    held = f", up to {max(stats.prepared)} named statements per client" if stats.prepared else ""
    return f"{CLIENTS} clients x {ROUNDS} rounds, {stats.checked} answers checked{held}" + stats.backend_summary()


# --- phase: pipeline mode ------------------------------------------------------


def pipeline_worker(wid, stats):
    """Batches of queries in pipeline mode, plus executemany and a transaction."""
    rng = random.Random(wid)
    t = table("pipe")
    checked = 0
    total = 0
    count = 0
    with connect(prepare_threshold=0) as conn:
        for batch in range(max(1, ROUNDS // 10)):
            pending = []
            rows = [(wid, batch * 100 + k, rng.randint(0, 1000)) for k in range(5)]
            with conn.pipeline():
                for _ in range(8):
                    a, b = rng.randint(0, 10**6), rng.randint(0, 10**6)
                    cur = conn.cursor()
                    cur.execute("SELECT %s::int + %s::int, %s::text", (a, b, f"{a}:{b}"))
                    pending.append((cur, (a + b, f"{a}:{b}")))
                with conn.transaction():
                    with conn.cursor() as cur:
                        # executemany in a pipeline: one Parse, many Binds.
                        cur.executemany(
                            sql.SQL("INSERT INTO {} (worker, n, v) VALUES (%s, %s, %s)").format(t),
                            rows,
                        )
                    cur = conn.cursor()
                    cur.execute(
                        sql.SQL("SELECT count(*), coalesce(sum(v), 0) FROM {} WHERE worker = %s").format(t),
                        (wid,),
                    )
            count += len(rows)
            total += sum(r[2] for r in rows)
            pending.append((cur, (count, total)))
            # Leaving the pipeline block synced it: every result is in.
            for cur, wanted in pending:
                expect(cur.fetchone(), wanted, "pipelined result")
                checked += 1
    stats.add(checked)


def phase_pipeline():
    stats = Stats()
    run_workers(CLIENTS, pipeline_worker, stats)
    return f"{CLIENTS} clients x {max(1, ROUNDS // 10)} pipelines, {stats.checked} answers checked"


# --- phase: statement cache eviction ------------------------------------------


def eviction_worker(wid, stats):
    """Ten query texts through a cache of four: constant Close and re-Parse."""
    rng = random.Random(wid)
    checked = 0
    with connect(prepare_threshold=0) as conn:
        conn.prepared_max = 4
        for i in range(ROUNDS):
            k = rng.randint(0, 9)
            a = rng.randint(0, 10**6)
            # The constant k is part of the text: ten different statements.
            got = conn.execute(f"SELECT %s::int + {k}, {k}", (a,)).fetchone()
            expect(got, (a + k, k), f"query variant {k}")
            checked += 1
    stats.add(checked)


def phase_eviction():
    stats = Stats()
    run_workers(CLIENTS, eviction_worker, stats)
    return f"{CLIENTS} clients x {ROUNDS} queries over 10 texts with prepared_max=4, {stats.checked} answers checked"


# --- phase: schema change -----------------------------------------------------


def own_table_worker(wid, stats):
    """ALTER a table on the connection whose statements read it.

    psycopg sees the ALTER TABLE tag and sends DEALLOCATE ALL, then prepares
    the same SELECT * text again under a new name: every later answer must
    have the new column, whichever server runs it.
    """
    t = table(f"own{wid}")
    checked = 0
    with connect(prepare_threshold=0) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, v int)").format(t))
        conn.execute(sql.SQL("INSERT INTO {} SELECT g, g * 10 FROM generate_series(1, 20) g").format(t))
        try:
            extra = []  # values of the columns added so far
            for step in range(4):
                for _ in range(15):
                    k = random.randint(1, 20)
                    got = conn.execute(sql.SQL("SELECT * FROM {} WHERE id = %s").format(t), (k,)).fetchone()
                    expect(got, (k, k * 10, *extra), f"SELECT * after {step} ALTERs")
                    checked += 1
                value = wid * 100 + step
                conn.execute(
                    sql.SQL("ALTER TABLE {} ADD COLUMN {} int DEFAULT {}").format(
                        t, sql.Identifier(f"c{step}"), sql.Literal(value)
                    )
                )
                extra.append(value)
        finally:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(t))
    stats.add(checked)


def shared_reader(wid, t, before, after, stats):
    """Read a shared table with SELECT *; another connection alters it.

    PostgreSQL itself answers "cached plan must not change result type" to a
    statement prepared before another session's ALTER, and psycopg does not
    re-prepare on its own, so, as an application would after a migration,
    each reader stops, waits for the ALTER, then refreshes: even-numbered
    readers with DEALLOCATE ALL, odd-numbered ones by reconnecting. Then
    the same text is prepared again and every answer must show the new
    column. A pooler that hands the old server-side statement back (say,
    one shared by query text) fails here.
    """
    checked = 0
    query = sql.SQL("SELECT * FROM {} WHERE id = %s").format(t)
    conn = None
    try:
        conn = connect(prepare_threshold=0)
        for _ in range(20):
            k = random.randint(1, 50)
            expect(conn.execute(query, (k,)).fetchone(), (k, -k), "SELECT * before the ALTER")
            checked += 1
        before.wait()  # everybody has prepared and used the old shape
        after.wait()  # the ALTER has committed
        if wid % 2 == 0:
            conn.execute("DEALLOCATE ALL", prepare=False)
        else:
            conn.close()
            conn = connect(prepare_threshold=0)
        for _ in range(20):
            k = random.randint(1, 50)
            expect(conn.execute(query, (k,)).fetchone(), (k, -k, "added"), "SELECT * after the ALTER")
            checked += 1
    except BaseException:
        # Release the others at once instead of leaving them at a barrier.
        before.abort()
        after.abort()
        raise
    finally:
        if conn is not None:
            conn.close()
    stats.add(checked)


def phase_schema_change():
    stats = Stats()
    # Part 1: each connection alters its own table.
    own = min(CLIENTS, 8)
    run_workers(own, own_table_worker, stats)

    # Part 2: one connection alters the table the others read.
    t = table("shared")
    readers = CLIENTS
    before = threading.Barrier(readers + 1, timeout=TIMEOUT)
    after = threading.Barrier(readers + 1, timeout=TIMEOUT)
    with connect() as admin:
        # Table and rows in one commit: read-your-writes is per connection, so
        # a reader on a replica between a CREATE and an INSERT would see no rows.
        admin.execute(
            sql.SQL("CREATE TABLE {} AS SELECT g AS id, -g AS v FROM generate_series(1, 50) g").format(t)
        )
        admin.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id)").format(t))

        alter_error = []

        def alterer():
            try:
                before.wait()
                with connect() as c:
                    c.execute(sql.SQL("ALTER TABLE {} ADD COLUMN extra text DEFAULT 'added'").format(t))
                after.wait()
            except BaseException as e:  # noqa: BLE001 - reported below
                alter_error.append(e)
                before.abort()
                after.abort()

        th = threading.Thread(target=alterer, daemon=True)
        th.start()
        try:
            run_workers(readers, shared_reader, t, before, after, stats)
        finally:
            th.join(timeout=TIMEOUT)
        if alter_error and not isinstance(alter_error[0], threading.BrokenBarrierError):
            raise alter_error[0]
    return (
        f"{own} clients ALTER their own table 4 times, {readers} clients re-read a table "
        f"altered by another; {stats.checked} answers checked"
    )


# --- main ----------------------------------------------------------------------


def setup():
    with connect() as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {} (worker int, n int, v int, PRIMARY KEY (worker, n))").format(table("pipe"))
        )


def teardown():
    with connect() as conn:
        for suffix in ("mixed0", "mixed", "pipe", "shared"):
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table(suffix)))


def watchdog():
    """A hung pooler must not hang CI: give up after CHECK_TIMEOUT seconds."""

    def fire():
        sys.stderr.write(f"psycopg: FAIL: run exceeded CHECK_TIMEOUT={TIMEOUT:g}s, aborting\n")
        sys.stderr.flush()
        os._exit(3)

    timer = threading.Timer(TIMEOUT, fire)
    timer.daemon = True
    timer.start()


def main():
    watchdog()
    info = conninfo()
    print(
        f"psycopg {psycopg.__version__} (libpq {psycopg.pq.version()}, {psycopg.pq.__impl__}) "
        f"-> {info['host']}:{info['port']} db={info['dbname']} user={info['user']}"
    )
    start = time.monotonic()
    try:
        setup()
    except Exception as e:  # noqa: BLE001
        print(f"psycopg setup: FAIL: {type(e).__name__}: {e}")
        return 1

    phases = [
        ("prepare_threshold=0", lambda: phase_mixed({"prepare_threshold": 0}, "mixed0")),
        # psycopg's default (5): a query is prepared on its 6th execution.
        ("default prepare_threshold", lambda: phase_mixed({}, "mixed")),
        ("pipeline", phase_pipeline),
        ("cache eviction", phase_eviction),
        ("schema change", phase_schema_change),
    ]
    passed = failed = 0
    for name, phase in phases:
        t0 = time.monotonic()
        try:
            summary = phase()
            passed += 1
            print(f"psycopg {name}: PASS: {summary} ({time.monotonic() - t0:.1f}s)", flush=True)
        except Exception as e:  # noqa: BLE001 - any error fails the phase
            failed += 1
            print(f"psycopg {name}: FAIL: {type(e).__name__}: {e} ({time.monotonic() - t0:.1f}s)", flush=True)
    try:
        teardown()
    except Exception as e:  # noqa: BLE001 - a failed cleanup fails the run
        failed += 1
        print(f"psycopg teardown: FAIL: {type(e).__name__}: {e}")
    print(f"psycopg: total {time.monotonic() - start:.1f}s")
    # The plain closing line CI reads, alone on its line.
    print(f"psycopg: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
