#!/usr/bin/env node
// Prepared statements through sluice with node-postgres (`pg`), a real driver.
//
// node-postgres prepares a query on the server only when it is given a name:
// `{name: 'q1', text: ..., values: [...]}`. Each connection remembers which
// names it has parsed and, from the second use on, sends only Bind. Run it
// against sluice in transaction mode with fewer server connections than
// CHECK_CLIENTS: every client's named statements must then follow it from
// server to server. It also passes directly against PostgreSQL and against
// sluice in session mode, which is what its answers are held to.
//
// Phases (one summary line each; exit status 1 if any phase fails):
//   named queries   a Pool of CHECK_CLIENTS connections shared by twice as
//                   many tasks, named queries with varying values
//   transactions    BEGIN / named insert and select / COMMIT or ROLLBACK,
//                   an expected error inside a transaction
//   mixed           named and unnamed (no name) queries interleaved, array
//                   rows, many rows
//   schema change   ALTER TABLE ... ADD COLUMN on a table read by SELECT *
//
// What node-postgres sends (pg 8.x), worth knowing for the pooler:
//   * a name used for the first time on a connection: Parse(name) + Bind +
//     Describe(portal) + Execute + Sync, all in one write. Later uses: Bind +
//     Describe(portal) + Execute + Sync (a RowDescription every time).
//   * no name but values: the same with the unnamed statement ''.
//   * no values and no name: a simple Query (so BEGIN/COMMIT/ROLLBACK are).
//   * never Flush, never Close, never DEALLOCATE: a name lives as long as
//     the connection. After "cached plan must not change result type"
//     (0A000) the name keeps failing; an application must use a new name.
//
// Settings come from PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE (defaults
// 127.0.0.1, 6432, app, app, app). CHECK_CLIENTS (20) and CHECK_ROUNDS (200)
// size the run; CHECK_TIMEOUT (120 s) aborts a run that hangs;
// CHECK_REQUIRE_SWITCHING=1 fails the run unless some connection was served
// by more than one server backend (proof that transaction pooling happened).

'use strict';

const crypto = require('crypto');
const pg = require('pg');

const CLIENTS = parseInt(process.env.CHECK_CLIENTS || '20', 10);
const ROUNDS = parseInt(process.env.CHECK_ROUNDS || '200', 10);
const TIMEOUT = parseFloat(process.env.CHECK_TIMEOUT || '120');
const REQUIRE_SWITCHING = !['', '0'].includes(process.env.CHECK_REQUIRE_SWITCHING || '');

// One prefix per run, so two runs (or a crashed one) never share tables.
const PREFIX = `drv_node_${process.pid}_${crypto.randomBytes(4).toString('hex')}`;

function config() {
  return {
    host: process.env.PGHOST || '127.0.0.1',
    port: parseInt(process.env.PGPORT || '6432', 10),
    user: process.env.PGUSER || 'app',
    password: process.env.PGPASSWORD || 'app',
    database: process.env.PGDATABASE || 'app',
    connectionTimeoutMillis: 15000,
  };
}

// A quoted name for one of this run's tables.
function tbl(suffix) {
  return `"${PREFIX}_${suffix}"`;
}

class CheckFailed extends Error {}

function expect(actual, wanted, what) {
  const a = JSON.stringify(actual);
  const w = JSON.stringify(wanted);
  if (a !== w) throw new CheckFailed(`${what}: got ${a}, wanted ${w}`);
}

// A small deterministic random generator (mulberry32), one per worker.
function rng(seed) {
  let s = seed >>> 0;
  const next = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return { next, int: (lo, hi) => lo + Math.floor(next() * (hi - lo + 1)) };
}

// Run the workers together; throw one error that sums up every failure.
async function gatherWorkers(promises) {
  const results = await Promise.allSettled(promises);
  const failures = [];
  results.forEach((r, i) => {
    if (r.status === 'rejected') failures.push([i, r.reason]);
  });
  if (failures.length === 0) return results.map((r) => r.value);
  const kinds = new Map();
  const seen = new Set();
  for (const [i, e] of failures) {
    const kind = e && e.code ? `${e.constructor.name}(${e.code})` : (e && e.constructor.name) || 'Error';
    kinds.set(kind, (kinds.get(kind) || 0) + 1);
    const line = `${kind}: ${e && e.message}`;
    // One line per kind of message: names, values and numbers masked.
    const key = line.replace(/"[^"]*"/g, '"..."').replace(/'[^']*'/g, "'...'").replace(/[0-9]+/g, 'N');
    if (!seen.has(key)) {
      seen.add(key);
      process.stderr.write(`--- worker ${i}: ${line}\n`);
    }
  }
  const [i, first] = failures[0];
  const kindsText = [...kinds.entries()].sort((a, b) => b[1] - a[1]).map(([k, n]) => `${k} x${n}`).join(', ');
  const err = new Error(
    `${failures.length}/${results.length} workers failed (${kindsText}); first: worker ${i}: ${first && first.message}`,
  );
  err.cause = first;
  throw err;
}

class Stats {
  constructor() {
    this.checked = 0;
    this.backends = new Map(); // pg client object -> Set of backend pids
  }

  sawBackend(client, pid) {
    if (!this.backends.has(client)) this.backends.set(client, new Set());
    this.backends.get(client).add(pid);
  }

  backendSummary() {
    const counts = [...this.backends.values()].map((s) => s.size);
    if (counts.length === 0) return '';
    const avg = counts.reduce((a, b) => a + b, 0) / counts.length;
    return `, server backends per connection ${Math.min(...counts)}..${Math.max(...counts)} (avg ${avg.toFixed(1)})`;
  }

  checkSwitching() {
    const counts = [...this.backends.values()].map((s) => s.size);
    if (REQUIRE_SWITCHING && (counts.length === 0 || Math.max(...counts) <= 1)) {
      throw new CheckFailed('no connection was served by more than one server backend');
    }
  }
}

// Give a pool connection back; after a failure, close it instead, since it
// may be inside an (aborted) transaction that would hold a server forever.
function releaseClient(client, failure) {
  client.release(failure ? failure : undefined);
}

// --- phase: named queries on a pool ------------------------------------------

// The named queries every pool connection prepares (once each).
const MUL = 'SELECT $1::int * 2 AS d, $2::text || \'!\' AS t, pg_backend_pid() AS pid';
const TYPES = 'SELECT $1::float8 * 2 AS f, NOT $2::bool AS b, length($3::bytea) AS n, $4::int IS NULL AS isnull';

async function phaseNamed(pool) {
  const stats = new Stats();
  const tasks = CLIENTS * 2;
  const rounds = Math.max(1, Math.floor(ROUNDS / 2));
  const task = async (wid) => {
    const r = rng(wid + 1);
    for (let i = 0; i < rounds; i++) {
      // Hold a connection for a few queries, then give it back: the next
      // task to take it uses the statements this one parsed.
      const client = await pool.connect();
      let failure;
      try {
        for (let j = 0; j < 3; j++) {
          const a = r.int(-1e6, 1e6);
          const s = `w${wid}-r${i}-${j}-${r.int(0, 1e9)}`;
          const res = await client.query({ name: 'mul', text: MUL, values: [a, s] });
          expect([res.rows.length, res.rows[0].d, res.rows[0].t], [1, a * 2, `${s}!`], 'named mul');
          stats.sawBackend(client, res.rows[0].pid);
          stats.checked++;
        }
        // A statement of this task's own: its text differs from every
        // other task's, so running another one's statement would show.
        const own = await client.query({ name: `own_${wid}`, text: `SELECT $1::int + 1 AS v, ${wid} AS wid`, values: [i] });
        expect(own.rows, [{ v: i + 1, wid }], 'named query of this task');
        const f = r.next() * 1000;
        const flag = r.next() < 0.5;
        const buf = Buffer.from(`bytes-${wid}-${i}`);
        const res = await client.query({ name: 'types', text: TYPES, values: [f, flag, buf, null] });
        expect(res.rows[0], { f: f * 2, b: !flag, n: buf.length, isnull: true }, 'named types');
        stats.checked += 2;
      } catch (e) {
        failure = e;
        throw e;
      } finally {
        releaseClient(client, failure);
      }
    }
  };
  await gatherWorkers([...Array(tasks).keys()].map(task));
  stats.checkSwitching();
  return `${tasks} tasks on a pool of ${CLIENTS} connections, ${stats.checked} answers checked${stats.backendSummary()}`;
}

// --- phase: transactions ----------------------------------------------------------

async function phaseTransactions(pool) {
  const t = tbl('tx');
  await pool.query(`CREATE TABLE ${t} (worker int, n int, label text, PRIMARY KEY (worker, n))`);
  const insert = { name: 'tx_insert', text: `INSERT INTO ${t} (worker, n, label) VALUES ($1, $2, $3)` };
  const select = { name: 'tx_select', text: `SELECT label FROM ${t} WHERE worker = $1 AND n = $2` };
  const count = { name: 'tx_count', text: `SELECT count(*)::int AS n FROM ${t} WHERE worker = $1` };
  const stats = new Stats();
  const rounds = Math.max(1, Math.floor(ROUNDS / 4));
  const task = async (wid) => {
    const r = rng(100 + wid);
    let committed = 0;
    const client = await pool.connect();
    let failure;
    try {
      for (let i = 0; i < rounds; i++) {
        const label = `w${wid}-${i}-${r.int(0, 1e9)}`;
        await client.query('BEGIN');
        await client.query({ ...insert, values: [wid, i, label] });
        const got = await client.query({ ...select, values: [wid, i] });
        expect(got.rows, [{ label }], 'row read back in its transaction');
        const pid = await client.query({ name: 'mul', text: MUL, values: [i, label] });
        stats.sawBackend(client, pid.rows[0].pid);
        if (i % 5 === 4) {
          await client.query('ROLLBACK');
          const gone = await client.query({ ...select, values: [wid, i] });
          expect(gone.rows, [], 'rolled-back row is absent');
        } else {
          // PostgreSQL answers COMMIT of a failed transaction with the tag
          // ROLLBACK and no error: the tag is the only sign.
          const done = await client.query('COMMIT');
          expect(done.command, 'COMMIT', 'COMMIT command tag');
          committed++;
        }
        stats.checked += 2;
        if (i % 10 === 9) {
          // An error inside a transaction surfaces as itself; the named
          // statements still work after the ROLLBACK.
          await client.query('BEGIN');
          let raised = false;
          try {
            await client.query({ name: 'div', text: 'SELECT 1 / $1::int AS q', values: [0] });
          } catch (e) {
            if (e.code !== '22012') throw e;
            raised = true;
          }
          await client.query('ROLLBACK');
          if (!raised) throw new CheckFailed('1/0 did not raise division_by_zero');
          const ok = await client.query({ name: 'div', text: 'SELECT 1 / $1::int AS q', values: [1] });
          expect(ok.rows, [{ q: 1 }], 'named query after a failed transaction');
          stats.checked++;
        }
      }
      const n = await client.query({ ...count, values: [wid] });
      expect(n.rows, [{ n: committed }], 'committed rows');
      stats.checked++;
    } catch (e) {
      failure = e;
      throw e;
    } finally {
      releaseClient(client, failure);
    }
  };
  await gatherWorkers([...Array(CLIENTS).keys()].map(task));
  return `${CLIENTS} connections x ${rounds} transactions, ${stats.checked} answers checked${stats.backendSummary()}`;
}

// --- phase: named and unnamed together ------------------------------------------

async function phaseMixed(pool) {
  const stats = new Stats();
  const rounds = Math.max(1, Math.floor(ROUNDS / 2));
  const task = async (wid) => {
    const r = rng(200 + wid);
    const client = await pool.connect();
    let failure;
    try {
      for (let i = 0; i < rounds; i++) {
        const a = r.int(-1e6, 1e6);
        const n = r.int(1, 50);
        // Unnamed (Parse ''), then named, then array rows of a named query.
        const u = await client.query('SELECT $1::int + 1 AS v', [a]);
        expect(u.rows, [{ v: a + 1 }], 'unnamed query');
        const series = await client.query({
          name: 'series',
          text: 'SELECT g, g * $1::int AS m FROM generate_series(1, $2::int) g',
          values: [a, n],
        });
        expect(series.rows.length, n, 'row count');
        expect(series.rows[n - 1], { g: n, m: n * a }, 'last row');
        const arr = await client.query({
          name: 'array_row',
          text: 'SELECT $1::text AS a, $2::bigint + 1 AS b, $3::numeric * 2 AS c',
          values: [`x${a}`, String(a), '1.25'],
          rowMode: 'array',
        });
        // bigint and numeric come back as strings in node-postgres.
        expect(arr.rows, [[`x${a}`, String(a + 1), '2.50']], 'array row');
        stats.checked += 3;
      }
    } catch (e) {
      failure = e;
      throw e;
    } finally {
      releaseClient(client, failure);
    }
  };
  await gatherWorkers([...Array(CLIENTS).keys()].map(task));
  return `${CLIENTS} connections x ${rounds} rounds, ${stats.checked} answers checked`;
}

// --- phase: schema change ---------------------------------------------------------

// Readers hold their own connections (not the pool, which is closed by
// then) so each one's named statements are its own.
async function phaseSchemaChange() {
  const t = tbl('shared');
  const stats = new Stats();
  const admin = new pg.Client(config());
  await admin.connect();
  const readers = [];
  try {
    // Table and rows in one commit: read-your-writes is per connection, so a
    // reader on a replica between a CREATE and an INSERT would see no rows.
    await admin.query(`CREATE TABLE ${t} AS SELECT g AS id, -g AS v FROM generate_series(1, 50) g`);
    await admin.query(`ALTER TABLE ${t} ADD PRIMARY KEY (id)`);
    for (let i = 0; i < CLIENTS; i++) {
      const c = new pg.Client(config());
      readers.push(c);
      await c.connect();
    }
    const text = `SELECT * FROM ${t} WHERE id = $1`;
    // Every reader reads with the statement name `name`, `times` times,
    // and must get the shape `shape(k)` each time.
    const readAll = (name, shape, times) =>
      gatherWorkers(
        readers.map(async (c, wid) => {
          const r = rng(300 + wid);
          for (let i = 0; i < times; i++) {
            const k = r.int(1, 50);
            const res = await c.query({ name, text, values: [k] });
            expect(res.rows, [shape(k)], `${name}: SELECT *`);
            stats.checked++;
          }
        }),
      );

    // Step 1: everyone prepares and uses SELECT * under the name sel_v1.
    await readAll('sel_v1', (k) => ({ id: k, v: -k }), 20);
    // Step 2: another connection adds a column. PostgreSQL would answer
    // sel_v1 with "cached plan must not change result type" from now on,
    // and node-postgres never re-prepares, so (as an application must) the
    // readers switch to a new name for the same text. A pooler that hands
    // back a server-side statement prepared before the ALTER (one shared by
    // query text, say) fails here.
    await admin.query(`ALTER TABLE ${t} ADD COLUMN extra text DEFAULT 'added'`);
    await readAll('sel_v2', (k) => ({ id: k, v: -k, extra: 'added' }), 20);
    // Step 3: each reader alters a table of its own on its own connection,
    // then reads it under a new name.
    await gatherWorkers(
      readers.map(async (c, wid) => {
        const own = tbl(`own${wid}`);
        await c.query(`CREATE TABLE ${own} (id int PRIMARY KEY, v int)`);
        try {
          await c.query(`INSERT INTO ${own} SELECT g, g * 10 FROM generate_series(1, 20) g`);
          const ownText = `SELECT * FROM ${own} WHERE id = $1`;
          for (let i = 0; i < 10; i++) {
            const res = await c.query({ name: 'own_v1', text: ownText, values: [i + 1] });
            expect(res.rows, [{ id: i + 1, v: (i + 1) * 10 }], 'own table before ALTER');
          }
          await c.query(`ALTER TABLE ${own} ADD COLUMN c int DEFAULT ${wid}`);
          for (let i = 0; i < 10; i++) {
            const res = await c.query({ name: 'own_v2', text: ownText, values: [i + 1] });
            expect(res.rows, [{ id: i + 1, v: (i + 1) * 10, c: wid }], 'own table after ALTER');
          }
          stats.checked += 20;
        } finally {
          await c.query(`DROP TABLE IF EXISTS ${own}`);
        }
      }),
    );
  } finally {
    await Promise.allSettled(readers.map((c) => c.end()));
    await admin.query(`DROP TABLE IF EXISTS ${t}`).catch(() => {});
    await admin.end();
  }
  return `${CLIENTS} readers re-read a table another connection altered, then ALTER their own; ${stats.checked} answers checked`;
}

// --- main -------------------------------------------------------------------------

async function main() {
  const cfg = config();
  const version = require('pg/package.json').version;
  console.log(`node-postgres ${version} (node ${process.version}) -> ${cfg.host}:${cfg.port} db=${cfg.database} user=${cfg.user}`);
  const start = Date.now();
  const pool = new pg.Pool({ ...cfg, max: CLIENTS, idleTimeoutMillis: 0 });
  // An idle pool connection that errors must not crash the process silently.
  pool.on('error', (e) => process.stderr.write(`pool error: ${e.message}\n`));

  const phases = [
    ['named queries', () => phaseNamed(pool)],
    ['transactions', () => phaseTransactions(pool)],
    ['mixed', () => phaseMixed(pool)],
    // Close the pool first: in session mode its idle connections would
    // each keep a server the schema phase's own connections need.
    ['schema change', async () => {
      await closePool();
      return phaseSchemaChange();
    }],
  ];
  let passed = 0;
  let failed = 0;
  let poolOpen = true;
  async function closePool() {
    if (!poolOpen) return;
    poolOpen = false;
    try {
      await pool.query(`DROP TABLE IF EXISTS ${tbl('tx')}`);
    } finally {
      await pool.end();
    }
  }
  for (const [name, phase] of phases) {
    const t0 = Date.now();
    try {
      const summary = await phase();
      passed++;
      console.log(`node ${name}: PASS: ${summary} (${((Date.now() - t0) / 1000).toFixed(1)}s)`);
    } catch (e) {
      failed++;
      console.log(`node ${name}: FAIL: ${e.constructor.name}: ${e.message} (${((Date.now() - t0) / 1000).toFixed(1)}s)`);
    }
  }
  try {
    await closePool();
  } catch (e) {
    failed++;
    console.log(`node teardown: FAIL: ${e.message}`);
  }
  console.log(`node: total ${((Date.now() - start) / 1000).toFixed(1)}s`);
  // The plain closing line CI reads, alone on its line.
  console.log(`node: ${passed} passed, ${failed} failed`);
  return failed ? 1 : 0;
}

// A hung pooler must not hang CI: give up after CHECK_TIMEOUT seconds.
setTimeout(() => {
  process.stderr.write(`node: FAIL: run exceeded CHECK_TIMEOUT=${TIMEOUT}s, aborting\n`);
  process.exit(3);
}, TIMEOUT * 1000).unref();

main().then(
  (code) => process.exit(code),
  (e) => {
    console.log(`node: FAIL: ${e.stack || e}`);
    process.exit(1);
  },
);
