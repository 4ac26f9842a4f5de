#!/usr/bin/env python3
"""Prepared statements through sluice with asyncpg (a real driver).

asyncpg runs every query with arguments, and fetch/fetchrow/fetchval even
without, as a named prepared statement (__asyncpg_stmt_N__) kept in a
per-connection cache. Run against sluice in transaction mode with fewer
server connections than CHECK_CLIENTS, each client's statements must follow
it from server to server. It also passes directly against PostgreSQL and
against sluice in session mode, which is what its answers are held to.

Phases (one summary line each; exit status 1 if any phase fails):

  fetch           fetch/fetchrow/fetchval/execute, transactions, an error
  pool            an asyncpg Pool shared by twice as many tasks
  executemany     insert rows with executemany, verify count and sum
  prepare         conn.prepare() statements reused; a cursor in a transaction
  cache eviction  statement_cache_size=4 over 10 query texts
  schema change   ALTER TABLE (add column, change type, drop column) on a
                  table the other connections read with SELECT *

What asyncpg sends (0.32), worth knowing for the pooler:
  * a new statement: Parse(name) + Describe(S) + Flush, with no Sync; it waits
    for ParseComplete/ParameterDescription/RowDescription, then sends
    Bind + Execute + Sync. Later executions send only Bind + Execute + Sync,
    with no Describe: asyncpg decodes rows by the RowDescription it cached.
  * executemany: one Bind + Execute per row, one Sync at the end.
  * fetchval/fetchrow: Execute with max_rows=1 (PortalSuspended may follow).
  * a statement evicted from the cache, or replaced after an error, is closed
    later, with Close(S) + Sync sent before the next query.
  * an error "cached plan must not change result type" (0A000) outside a
    transaction makes asyncpg drop its cache and prepare the query again
    under a new name, invisibly to the caller. conn.prepare() statements and
    queries inside a transaction raise InvalidCachedStatementError instead.
  * transaction(): simple Query 'BEGIN;' / 'COMMIT;' / 'ROLLBACK;'.
  * Pool release runs the simple Query "SELECT pg_advisory_unlock_all();
    CLOSE ALL; UNLISTEN *; RESET ALL;".

Settings come from PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE (defaults
127.0.0.1, 6432, app, app, app). CHECK_CLIENTS (20) and CHECK_ROUNDS (200)
size the run; CHECK_TIMEOUT (120 s) aborts a run that hangs;
CHECK_REQUIRE_SWITCHING=1 fails the run unless some client was served by
more than one server backend (proof that transaction pooling happened).
"""

import asyncio
import os
import random
import re
import sys
import threading
import time
import uuid
from decimal import Decimal

import asyncpg

CLIENTS = int(os.environ.get("CHECK_CLIENTS", "20"))
ROUNDS = int(os.environ.get("CHECK_ROUNDS", "200"))
TIMEOUT = float(os.environ.get("CHECK_TIMEOUT", "120"))
REQUIRE_SWITCHING = os.environ.get("CHECK_REQUIRE_SWITCHING", "") not in ("", "0")

# One prefix per run, so two runs (or a crashed one) never share tables.
PREFIX = f"drv_asyncpg_{os.getpid()}_{uuid.uuid4().hex[:8]}"


def conn_kwargs():
    """Connection keywords from the PG* environment, with the demo's defaults."""
    return dict(
        host=os.environ.get("PGHOST", "127.0.0.1"),
        port=int(os.environ.get("PGPORT", "6432")),
        user=os.environ.get("PGUSER", "app"),
        password=os.environ.get("PGPASSWORD", "app"),
        database=os.environ.get("PGDATABASE", "app"),
        timeout=15,  # connect timeout
        ssl=False,
    )


async def connect(**extra):
    return await asyncpg.connect(**conn_kwargs(), **extra)


def tbl(suffix):
    """A quoted name for one of this run's tables."""
    return '"' + f"{PREFIX}_{suffix}" + '"'


class CheckFailed(Exception):
    """A wrong answer (as opposed to a driver error, which is also fatal)."""


def expect(actual, wanted, what):
    if actual != wanted:
        raise CheckFailed(f"{what}: got {actual!r}, wanted {wanted!r}")


class Stats:
    def __init__(self):
        self.checked = 0
        self.backends = []  # number of backend pids each client saw

    def backend_summary(self):
        if not self.backends:
            return ""
        lo, hi = min(self.backends), max(self.backends)
        avg = sum(self.backends) / len(self.backends)
        return f", server backends per client {lo}..{hi} (avg {avg:.1f})"

    def check_switching(self):
        if REQUIRE_SWITCHING and (not self.backends or max(self.backends) <= 1):
            raise CheckFailed("no client was served by more than one server backend")


async def gather_workers(coros):
    """Run the workers together; raise a summary of every failure."""
    results = await asyncio.gather(*coros, return_exceptions=True)
    failures = [(i, r) for i, r in enumerate(results) if isinstance(r, BaseException)]
    if failures:
        kinds = {}
        for _, err in failures:
            kinds[type(err).__name__] = kinds.get(type(err).__name__, 0) + 1
        seen = set()
        for i, err in failures:
            line = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            # One line per kind of message: names, values and numbers masked.
            key = re.sub(r"[0-9]+", "N", re.sub(r"'[^']*'", "'...'", re.sub(r'"[^"]*"', '"..."', line)))
            if key not in seen:
                seen.add(key)
                sys.stderr.write(f"--- worker {i}: {line}\n")
        i, e = failures[0]
        kinds_text = ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1]))
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise RuntimeError(
            f"{len(failures)}/{len(results)} workers failed ({kinds_text}); "
            f"first: worker {i}: {type(e).__name__}: {first_line}"
        ) from e
    return results


# --- phase: fetch and friends ---------------------------------------------------


async def fetch_rounds(conn, wid, rng, rounds, t, pids):
    """The body shared by the fetch and pool phases; returns answers checked."""
    checked = 0
    for i in range(rounds):
        a = rng.randint(-(10**6), 10**6)
        s = f"w{wid}-r{i}-{rng.randint(0, 10**9)}"
        # The worker's number is part of the text, so each client's statement
        # differs from the others': running another client's gives a wrong answer.
        row = await conn.fetchrow(f"SELECT $1::int * 2, $2::text || '!', pg_backend_pid(), {wid}", a, s)
        expect(len(row), 4, "columns of the first query")
        expect((row[0], row[1], row[3]), (a * 2, s + "!", wid), "int*2, text||'!', worker")
        pids.add(row[2])
        checked += 1

        kind = i % 3
        if kind == 0:
            # Several rows back, in order.
            n = rng.randint(1, 20)
            rows = await conn.fetch("SELECT g, g * $1::int FROM generate_series(1, $2::int) g", a, n)
            expect([tuple(r) for r in rows], [(g, g * a) for g in range(1, n + 1)], "generate_series rows")
        elif kind == 1:
            # Assorted types in the binary format, NULL among them.
            f = rng.random() * 1000
            arr = [rng.randint(0, 100) for _ in range(rng.randint(0, 5))]
            dec = Decimal(rng.randint(0, 10**6)) / 100
            row = await conn.fetchrow(
                "SELECT $1::float8 * 2, $2::int[] || 7, $3::numeric + 1, $4::bytea, $5::int IS NULL",
                f, arr, dec, s.encode(), None,
            )
            expect(tuple(row), (f * 2, arr + [7], dec + 1, s.encode(), True), "float/array/numeric/bytea/null")
        else:
            # A transaction: insert with execute(), read it back inside.
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {t} (worker, n, label) VALUES ($1, $2, $3)", wid, i, s)
                got = await conn.fetchval(f"SELECT label FROM {t} WHERE worker = $1 AND n = $2", wid, i)
                expect(got, s, "row read back in its transaction")
        checked += 1

        if i % 50 == 49:
            # An error inside a transaction surfaces as itself; the connection
            # and its statements are fine afterwards.
            try:
                async with conn.transaction():
                    await conn.fetchval("SELECT 1 / $1::int", 0)
                raise CheckFailed("1/0 did not raise division_by_zero")
            except asyncpg.DivisionByZeroError:
                pass
            expect(await conn.fetchval("SELECT $1::int + 1", a), a + 1, "query after a failed transaction")
            checked += 1
    return checked


async def fetch_worker(wid, t, stats):
    rng = random.Random(wid)
    pids = set()
    conn = await connect()
    try:
        checked = await fetch_rounds(conn, wid, rng, ROUNDS, t, pids)
        committed = len(range(2, ROUNDS, 3))
        expect(await conn.fetchval(f"SELECT count(*) FROM {t} WHERE worker = $1", wid), committed, "committed rows")
    finally:
        await conn.close()
    stats.checked += checked + 1
    stats.backends.append(len(pids))


async def phase_fetch():
    t = tbl("fetch")
    stats = Stats()
    await gather_workers([fetch_worker(i, t, stats) for i in range(CLIENTS)])
    stats.check_switching()
    return f"{CLIENTS} connections x {ROUNDS} rounds, {stats.checked} answers checked" + stats.backend_summary()


# --- phase: pool ----------------------------------------------------------------


async def phase_pool():
    """2 x CLIENTS tasks share a pool of CLIENTS connections.

    Each task acquires a connection for a few rounds and gives it back, so
    the statements a connection prepared for one task are used by the next
    (and the pool's reset query runs in between).
    """
    t = tbl("pool")
    stats = Stats()
    tasks = CLIENTS * 2
    rounds = max(1, ROUNDS // 4)
    pool = await asyncpg.create_pool(**conn_kwargs(), min_size=CLIENTS, max_size=CLIENTS)
    try:

        async def task(wid):
            rng = random.Random(1000 + wid)
            pids = set()
            checked = 0
            for chunk in range(max(1, rounds // 5)):
                async with pool.acquire() as conn:
                    # fetch_rounds numbers its rows from 0 each time: a
                    # worker id per chunk keeps the primary key unique.
                    checked += await fetch_rounds(conn, wid * 1000 + chunk, rng, 5, t, pids)
            stats.checked += checked
            stats.backends.append(len(pids))

        await gather_workers([task(i) for i in range(tasks)])
    finally:
        await asyncio.wait_for(pool.close(), TIMEOUT)
    # Tasks share connections, so the backend counts say little here.
    return f"{tasks} tasks on a pool of {CLIENTS} connections, {stats.checked} answers checked"


# --- phase: executemany ---------------------------------------------------------


async def executemany_worker(wid, t, stats):
    rng = random.Random(wid)
    conn = await connect()
    try:
        count = total = 0
        for batch in range(max(1, ROUNDS // 20)):
            rows = [(wid, batch * 1000 + k, rng.randint(-1000, 1000)) for k in range(rng.randint(1, 40))]
            if batch % 2:
                async with conn.transaction():
                    await conn.executemany(f"INSERT INTO {t} (worker, n, v) VALUES ($1, $2, $3)", rows)
            else:
                await conn.executemany(f"INSERT INTO {t} (worker, n, v) VALUES ($1, $2, $3)", rows)
            count += len(rows)
            total += sum(r[2] for r in rows)
            got = await conn.fetchrow(f"SELECT count(*), coalesce(sum(v), 0) FROM {t} WHERE worker = $1", wid)
            expect(tuple(got), (count, total), "count and sum after executemany")
            stats.checked += 1
        # A batch that fails part-way leaves nothing behind (asyncpg runs
        # executemany as one implicit transaction).
        bad = [(wid, 10**6 + k, k) for k in range(5)] + [(wid, 10**6, 0)]  # duplicate key
        try:
            await conn.executemany(f"INSERT INTO {t} (worker, n, v) VALUES ($1, $2, $3)", bad)
            raise CheckFailed("duplicate key in executemany did not raise")
        except asyncpg.UniqueViolationError:
            pass
        got = await conn.fetchrow(f"SELECT count(*), coalesce(sum(v), 0) FROM {t} WHERE worker = $1", wid)
        expect(tuple(got), (count, total), "count and sum after a failed executemany")
        stats.checked += 1
    finally:
        await conn.close()


async def phase_executemany():
    t = tbl("many")
    stats = Stats()
    await gather_workers([executemany_worker(i, t, stats) for i in range(CLIENTS)])
    return f"{CLIENTS} connections x {max(1, ROUNDS // 20)} batches, {stats.checked} answers checked"


# --- phase: explicit prepared statements ----------------------------------------


async def prepare_worker(wid, stats):
    rng = random.Random(wid)
    conn = await connect()
    try:
        mul = await conn.prepare("SELECT $1::bigint * $2::bigint, pg_backend_pid()")
        cat = await conn.prepare("SELECT $1::text || '/' || $2::text")
        series = await conn.prepare("SELECT g FROM generate_series(1, $1::int) g")
        expect(len(mul.get_parameters()), 2, "parameters of a prepared statement")
        for i in range(ROUNDS):
            a, b = rng.randint(-(10**9), 10**9), rng.randint(-(10**9), 10**9)
            row = await mul.fetchrow(a, b)
            expect(row[0], a * b, "bigint product")
            expect(await cat.fetchval(str(a), str(b)), f"{a}/{b}", "text concatenation")
            stats.checked += 2
            if i % 20 == 0:
                # A cursor over a prepared statement: a named portal, fetched
                # in pieces (Execute with a row limit) inside one transaction.
                n = rng.randint(10, 200)
                async with conn.transaction():
                    total = 0
                    async for r in series.cursor(n, prefetch=7):
                        total += r[0]
                    cur = await series.cursor(n)
                    first = await cur.fetch(5)
                    expect([r[0] for r in first], list(range(1, min(n, 5) + 1)), "cursor.fetch(5)")
                expect(total, n * (n + 1) // 2, "sum over a cursor")
                stats.checked += 2
    finally:
        await conn.close()


async def phase_prepare():
    stats = Stats()
    await gather_workers([prepare_worker(i, stats) for i in range(CLIENTS)])
    return f"{CLIENTS} connections x {ROUNDS} rounds, {stats.checked} answers checked"


# --- phase: statement cache eviction ---------------------------------------------


async def eviction_worker(wid, stats):
    """Ten query texts through a cache of four: asyncpg closes what it evicts."""
    rng = random.Random(wid)
    conn = await connect(statement_cache_size=4)
    try:
        for _ in range(ROUNDS):
            k = rng.randint(0, 9)
            a = rng.randint(0, 10**6)
            row = await conn.fetchrow(f"SELECT $1::int + {k}, {k}", a)
            expect(tuple(row), (a + k, k), f"query variant {k}")
            stats.checked += 1
    finally:
        await conn.close()


async def phase_eviction():
    stats = Stats()
    await gather_workers([eviction_worker(i, stats) for i in range(CLIENTS)])
    return f"{CLIENTS} connections x {ROUNDS} queries over 10 texts with statement_cache_size=4, {stats.checked} answers checked"


# --- phase: schema change ------------------------------------------------------

# The table's shape after each step: how to read row k, and the DDL that
# leads to the next step.
SHAPES = [
    (lambda k: (k, -k), "ALTER TABLE {t} ADD COLUMN extra text DEFAULT 'added'"),
    (lambda k: (k, -k, "added"), "ALTER TABLE {t} ALTER COLUMN v TYPE bigint"),
    (lambda k: (k, -k, "added"), "ALTER TABLE {t} DROP COLUMN extra"),
    (lambda k: (k, -k), None),
]


async def phase_schema_change():
    """Readers SELECT * from a table while another connection alters it.

    Readers run `SELECT * FROM t WHERE id = $1` with fetchrow (the statement
    cache) outside any transaction, over and over. Another connection makes
    three changes, each after every reader has read the current shape ten
    times. PostgreSQL answers a stale statement with "cached plan must not
    change result type"; asyncpg then prepares it again and retries, so the
    readers must never see an error, and every answer read after a change
    has committed must have the new shape. A pooler that ran a statement
    prepared after the change under the RowDescription asyncpg cached before
    it would hand back rows of the wrong shape.
    """
    t = tbl("shared")
    stats = Stats()
    admin = await connect()
    # Table and rows in one commit: read-your-writes is per connection, so a
    # reader on a replica between a CREATE and an INSERT would see no rows.
    await admin.execute(f"CREATE TABLE {t} AS SELECT g AS id, -g AS v FROM generate_series(1, 50) g")
    await admin.execute(f"ALTER TABLE {t} ADD PRIMARY KEY (id)")
    step = 0  # how many changes have committed (an index into SHAPES)
    reads = [0] * CLIENTS  # reads of the current shape, per reader
    done = False

    async def reader(wid):
        rng = random.Random(wid)
        latest = 0  # the newest shape this reader has seen
        conn = await connect()
        try:
            while not done:
                seen = step  # changes known committed before the query
                k = rng.randint(1, 50)
                got = tuple(await conn.fetchrow(f"SELECT * FROM {t} WHERE id = $1", k))
                # The answer has the shape of every change committed before
                # the query was sent, and maybe of one more committing just
                # then; never an older shape than this reader saw before.
                lowest = max(latest, seen)
                highest = min(seen + 1, len(SHAPES) - 1)
                fits = [j for j in range(lowest, highest + 1) if got == SHAPES[j][0](k)]
                if not fits:
                    raise CheckFailed(
                        f"SELECT * after {seen} changes: got {got!r}, wanted {SHAPES[lowest][0](k)!r}"
                    )
                latest = fits[0]
                if step == seen:
                    reads[wid] += 1
                stats.checked += 1
                await asyncio.sleep(0)  # let the alterer run
        finally:
            await conn.close()

    tasks = [asyncio.ensure_future(reader(i)) for i in range(CLIENTS)]
    try:
        for i, (_, ddl) in enumerate(SHAPES):
            # Wait until every reader has read this shape 10 times (or one
            # of them has stopped, which can only be a failure).
            while min(reads) < 10 and not any(task.done() for task in tasks):
                await asyncio.sleep(0.005)
            if ddl is None or any(task.done() for task in tasks):
                break
            await admin.execute(ddl.format(t=t))
            for w in range(CLIENTS):
                reads[w] = 0
            step = i + 1
        done = True
        await gather_workers(tasks)
    finally:
        done = True
        await asyncio.gather(*tasks, return_exceptions=True)
        await admin.execute(f"DROP TABLE IF EXISTS {t}")
        await admin.close()
    if step != len(SHAPES) - 1:
        raise CheckFailed(f"only {step} of {len(SHAPES) - 1} changes were made")
    return (
        f"{CLIENTS} readers, 3 changes by another connection (add column, change type, "
        f"drop column), {stats.checked} answers checked"
    )


# --- main ------------------------------------------------------------------------


async def setup():
    conn = await connect()
    try:
        for suffix in ("fetch", "pool"):
            await conn.execute(
                f"CREATE TABLE {tbl(suffix)} (worker int, n int, label text, PRIMARY KEY (worker, n))"
            )
        await conn.execute(f"CREATE TABLE {tbl('many')} (worker int, n int, v int, PRIMARY KEY (worker, n))")
    finally:
        await conn.close()


async def teardown():
    conn = await connect()
    try:
        for suffix in ("fetch", "pool", "many", "shared"):
            await conn.execute(f"DROP TABLE IF EXISTS {tbl(suffix)}")
    finally:
        await conn.close()


def watchdog():
    """A hung pooler must not hang CI: give up after CHECK_TIMEOUT seconds."""

    def fire():
        sys.stderr.write(f"asyncpg: FAIL: run exceeded CHECK_TIMEOUT={TIMEOUT:g}s, aborting\n")
        sys.stderr.flush()
        os._exit(3)

    timer = threading.Timer(TIMEOUT, fire)
    timer.daemon = True
    timer.start()


async def main():
    kw = conn_kwargs()
    print(f"asyncpg {asyncpg.__version__} -> {kw['host']}:{kw['port']} db={kw['database']} user={kw['user']}")
    start = time.monotonic()
    try:
        await setup()
    except Exception as e:  # noqa: BLE001
        print(f"asyncpg setup: FAIL: {type(e).__name__}: {e}")
        return 1
    phases = [
        ("fetch", phase_fetch),
        ("pool", phase_pool),
        ("executemany", phase_executemany),
        ("prepare", phase_prepare),
        ("cache eviction", phase_eviction),
        ("schema change", phase_schema_change),
    ]
    passed = failed = 0
    for name, phase in phases:
        t0 = time.monotonic()
        try:
            summary = await phase()
            passed += 1
            print(f"asyncpg {name}: PASS: {summary} ({time.monotonic() - t0:.1f}s)", flush=True)
        except Exception as e:  # noqa: BLE001 - any error fails the phase
            failed += 1
            print(f"asyncpg {name}: FAIL: {type(e).__name__}: {e} ({time.monotonic() - t0:.1f}s)", flush=True)
    try:
        await teardown()
    except Exception as e:  # noqa: BLE001 - a failed cleanup fails the run
        failed += 1
        print(f"asyncpg teardown: FAIL: {type(e).__name__}: {e}")
    print(f"asyncpg: total {time.monotonic() - start:.1f}s")
    # The plain closing line CI reads, alone on its line.
    print(f"asyncpg: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    watchdog()
    sys.exit(asyncio.run(main()))
