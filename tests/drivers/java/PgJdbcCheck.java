// Prepared statements through sluice with the PostgreSQL JDBC driver (pgjdbc),
// a real driver: Debian's libpostgresql-jdbc-java, /usr/share/java/postgresql.jar.
//
// With prepareThreshold=1 pgjdbc turns a PreparedStatement into a named
// server-side statement (S_1, S_2, ...) on its first execution and from then
// on sends only Bind + Execute. Run against sluice in transaction mode with
// fewer server connections than CHECK_CLIENTS, each connection's statements
// must follow it from server to server. It also passes directly against
// PostgreSQL and against sluice in session mode, which is what its answers
// are held to.
//
// Phases (one summary line each; exit status 1 if any phase fails):
//   autocommit      PreparedStatements reused many times, varying parameters
//   transactions    autoCommit off: insert and read back, commit; rollback;
//                   an expected error; every answer checked
//   batch           addBatch/executeBatch, then count and sum
//   schema change   ALTER TABLE (add column, change type, drop column) on a
//                   table the other connections read with SELECT *
//
// What pgjdbc sends (42.5), worth knowing for the pooler:
//   * SET extra_float_digits / application_name at connect, unnamed.
//   * first execution: Parse(S_n) + Bind + Describe(portal) + Execute + Sync;
//     later ones: Bind + Execute + Sync, no Describe: pgjdbc decodes rows by
//     the RowDescription it cached.
//   * autoCommit off: BEGIN is itself a named statement, sent in the same
//     batch as the first query: Parse(S_k 'BEGIN') + Bind + Execute + Bind +
//     Execute + Sync; COMMIT/ROLLBACK likewise become named statements.
//   * statements it drops: Close(S, S_n), queued and sent ahead of the next
//     Parse in the same batch.
//   * "cached plan must not change result type" (0A000): pgjdbc closes the
//     statement and, in autocommit mode, re-prepares and retries at once,
//     invisibly; inside a transaction the error reaches the caller and the
//     statement is re-prepared on its next use.
//   * executeBatch: Bind + Execute per row, one Sync.
//
// Settings come from PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE (defaults
// 127.0.0.1, 6432, app, app, app). CHECK_CLIENTS (20) and CHECK_ROUNDS (200)
// size the run; CHECK_TIMEOUT (120 s) aborts a run that hangs;
// CHECK_REQUIRE_SWITCHING=1 fails the run unless some connection was served
// by more than one server backend (proof that transaction pooling happened).

import java.math.BigDecimal;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Properties;
import java.util.Random;
import java.util.Set;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.atomic.AtomicIntegerArray;
import java.util.concurrent.atomic.AtomicLong;

public class PgJdbcCheck {
    static final int CLIENTS = intEnv("CHECK_CLIENTS", 20);
    static final int ROUNDS = intEnv("CHECK_ROUNDS", 200);
    static final double TIMEOUT = Double.parseDouble(env("CHECK_TIMEOUT", "120"));
    static final boolean REQUIRE_SWITCHING =
            !Arrays.asList("", "0").contains(env("CHECK_REQUIRE_SWITCHING", ""));

    // One prefix per run, so two runs (or a crashed one) never share tables.
    static final String PREFIX = "drv_jdbc_" + ProcessHandle.current().pid() + "_"
            + Integer.toHexString(new Random().nextInt() & 0x7fffffff);

    static String env(String name, String dflt) {
        String v = System.getenv(name);
        return v == null || v.isEmpty() ? dflt : v;
    }

    static int intEnv(String name, int dflt) {
        return Integer.parseInt(env(name, Integer.toString(dflt)));
    }

    static String host() { return env("PGHOST", "127.0.0.1"); }
    static String port() { return env("PGPORT", "6432"); }
    static String database() { return env("PGDATABASE", "app"); }
    static String user() { return env("PGUSER", "app"); }

    /** A connection whose statements are named server-side ones from the first execution on. */
    static Connection connect() throws SQLException {
        return connect(1);
    }

    /**
     * A connection with the given prepareThreshold. 1: named server-side
     * statements from the first execution on (plain Statements too). 0: only
     * the unnamed statement, used for setting up and dropping tables, so that
     * a pooler that loses named statements fails the phases, not the setup.
     * sslmode=disable: sluice answers SSLRequest with N.
     */
    static Connection connect(int prepareThreshold) throws SQLException {
        String url = "jdbc:postgresql://" + host() + ":" + port() + "/" + database()
                + "?prepareThreshold=" + prepareThreshold + "&connectTimeout=15&sslmode=disable";
        Properties props = new Properties();
        props.setProperty("user", user());
        props.setProperty("password", env("PGPASSWORD", "app"));
        return DriverManager.getConnection(url, props);
    }

    /** A quoted name for one of this run's tables. */
    static String tbl(String suffix) {
        return "\"" + PREFIX + "_" + suffix + "\"";
    }

    /** A wrong answer (as opposed to a driver error, which is also fatal). */
    static class CheckFailed extends RuntimeException {
        CheckFailed(String message) { super(message); }
    }

    static void expect(Object actual, Object wanted, String what) {
        if (!Objects.equals(actual, wanted)) {
            throw new CheckFailed(what + ": got " + actual + ", wanted " + wanted);
        }
    }

    /** Counts checked answers and the server backends each connection saw. */
    static class Stats {
        final AtomicLong checked = new AtomicLong();
        final ConcurrentLinkedQueue<Integer> backends = new ConcurrentLinkedQueue<>();

        String backendSummary() {
            if (backends.isEmpty()) return "";
            int lo = Integer.MAX_VALUE, hi = 0;
            long sum = 0;
            for (int b : backends) { lo = Math.min(lo, b); hi = Math.max(hi, b); sum += b; }
            return String.format(", server backends per connection %d..%d (avg %.1f)",
                    lo, hi, (double) sum / backends.size());
        }

        void checkSwitching() {
            int hi = 0;
            for (int b : backends) hi = Math.max(hi, b);
            if (REQUIRE_SWITCHING && hi <= 1) {
                throw new CheckFailed("no connection was served by more than one server backend");
            }
        }
    }

    interface Worker { void run(int wid) throws Exception; }

    /** Run worker(i) in `count` threads; throw a summary of every failure. */
    static void runWorkers(int count, Worker worker) throws Exception {
        Throwable[] errors = new Throwable[count];
        Thread[] threads = new Thread[count];
        for (int i = 0; i < count; i++) {
            final int wid = i;
            threads[i] = new Thread(() -> {
                try {
                    worker.run(wid);
                } catch (Throwable e) {
                    errors[wid] = e;
                }
            });
            threads[i].setDaemon(true);
            threads[i].start();
        }
        for (Thread t : threads) t.join();
        Map<String, Integer> kinds = new LinkedHashMap<>();
        Set<String> seen = new HashSet<>();
        int failed = 0, first = -1;
        for (int i = 0; i < count; i++) {
            Throwable e = errors[i];
            if (e == null) continue;
            failed++;
            if (first < 0) first = i;
            String kind = describeKind(e);
            kinds.merge(kind, 1, Integer::sum);
            String line = kind + ": " + firstLine(e.getMessage());
            // One line per kind of message: names, values and numbers masked.
            String key = line.replaceAll("\"[^\"]*\"", "\"...\"").replaceAll("'[^']*'", "'...'")
                    .replaceAll("[0-9]+", "N");
            if (seen.add(key)) {
                System.err.println("--- worker " + i + ": " + line);
            }
        }
        if (failed > 0) {
            StringBuilder k = new StringBuilder();
            kinds.entrySet().stream()
                    .sorted((a, b) -> b.getValue() - a.getValue())
                    .forEach(en -> k.append(k.length() > 0 ? ", " : "").append(en.getKey()).append(" x").append(en.getValue()));
            throw new RuntimeException(failed + "/" + count + " workers failed (" + k + "); first: worker "
                    + first + ": " + describeKind(errors[first]) + ": " + firstLine(errors[first].getMessage()),
                    errors[first]);
        }
    }

    static String describeKind(Throwable e) {
        if (e instanceof SQLException && ((SQLException) e).getSQLState() != null) {
            return e.getClass().getSimpleName() + "(" + ((SQLException) e).getSQLState() + ")";
        }
        return e.getClass().getSimpleName();
    }

    static String firstLine(String s) {
        if (s == null) return "";
        int nl = s.indexOf('\n');
        return nl < 0 ? s : s.substring(0, nl);
    }

    static void exec(Connection c, String sql) throws SQLException {
        try (Statement st = c.createStatement()) {
            st.execute(sql);
        }
    }

    // --- phase: autocommit ---------------------------------------------------------

    static String phaseAutocommit() throws Exception {
        Stats stats = new Stats();
        runWorkers(CLIENTS, wid -> {
            Random rng = new Random(wid);
            Set<Integer> pids = new HashSet<>();
            try (Connection c = connect();
                 // The worker's number is part of the text, so S_1 (this is
                 // the first statement each connection runs) differs between
                 // connections: running another one's S_1 gives a wrong answer.
                 PreparedStatement own = c.prepareStatement("SELECT ?::int + 1, " + wid);
                 PreparedStatement mul = c.prepareStatement(
                         "SELECT ?::int * 2, ?::text || '!', pg_backend_pid()");
                 PreparedStatement types = c.prepareStatement(
                         "SELECT ?::float8 * 2, NOT ?::bool, length(?::bytea), ?::int IS NULL, ?::numeric + 1");
                 PreparedStatement series = c.prepareStatement(
                         "SELECT g, g * ?::int FROM generate_series(1, ?::int) g")) {
                for (int i = 0; i < ROUNDS; i++) {
                    int a = rng.nextInt(2_000_001) - 1_000_000;
                    String s = "w" + wid + "-r" + i + "-" + rng.nextInt(1_000_000_000);
                    own.setInt(1, i);
                    try (ResultSet rs = own.executeQuery()) {
                        expect(rs.next(), true, "one row");
                        expect(rs.getInt(1), i + 1, "int+1");
                        expect(rs.getInt(2), wid, "worker number");
                    }
                    mul.setInt(1, a);
                    mul.setString(2, s);
                    try (ResultSet rs = mul.executeQuery()) {
                        expect(rs.next(), true, "one row");
                        expect(rs.getInt(1), a * 2, "int*2");
                        expect(rs.getString(2), s + "!", "text||'!'");
                        pids.add(rs.getInt(3));
                        expect(rs.next(), false, "only one row");
                    }
                    if (i % 2 == 0) {
                        double f = rng.nextDouble() * 1000;
                        boolean flag = rng.nextBoolean();
                        byte[] blob = s.getBytes();
                        BigDecimal dec = BigDecimal.valueOf(rng.nextInt(1_000_000), 2);
                        types.setDouble(1, f);
                        types.setBoolean(2, flag);
                        types.setBytes(3, blob);
                        types.setNull(4, java.sql.Types.INTEGER);
                        types.setBigDecimal(5, dec);
                        try (ResultSet rs = types.executeQuery()) {
                            rs.next();
                            expect(rs.getDouble(1), f * 2, "float8*2");
                            expect(rs.getBoolean(2), !flag, "NOT bool");
                            expect(rs.getInt(3), blob.length, "length(bytea)");
                            expect(rs.getBoolean(4), true, "NULL IS NULL");
                            expect(rs.getBigDecimal(5), dec.add(BigDecimal.ONE), "numeric+1");
                        }
                    } else {
                        int n = 1 + rng.nextInt(30);
                        series.setInt(1, a);
                        series.setInt(2, n);
                        try (ResultSet rs = series.executeQuery()) {
                            int g = 0;
                            while (rs.next()) {
                                g++;
                                expect(rs.getInt(1), g, "series g");
                                expect(rs.getInt(2), g * a, "series g*a");
                            }
                            expect(g, n, "series row count");
                        }
                    }
                    stats.checked.addAndGet(3);
                }
            }
            stats.backends.add(pids.size());
        });
        stats.checkSwitching();
        return CLIENTS + " connections x " + ROUNDS + " rounds, " + stats.checked + " answers checked"
                + stats.backendSummary();
    }

    // --- phase: transactions ---------------------------------------------------------

    static String phaseTransactions() throws Exception {
        String t = tbl("tx");
        try (Connection c = connect(0)) {
            exec(c, "CREATE TABLE " + t + " (worker int, n int, label text, PRIMARY KEY (worker, n))");
        }
        Stats stats = new Stats();
        int rounds = Math.max(1, ROUNDS / 2);
        runWorkers(CLIENTS, wid -> {
            Random rng = new Random(100 + wid);
            Set<Integer> pids = new HashSet<>();
            int committed = 0;
            try (Connection c = connect()) {
                c.setAutoCommit(false);
                try (PreparedStatement ins = c.prepareStatement(
                             "INSERT INTO " + t + " (worker, n, label) VALUES (?, ?, ?)");
                     PreparedStatement sel = c.prepareStatement(
                             "SELECT label, pg_backend_pid() FROM " + t + " WHERE worker = ? AND n = ?");
                     PreparedStatement div = c.prepareStatement("SELECT 1 / ?::int");
                     PreparedStatement cnt = c.prepareStatement(
                             "SELECT count(*) FROM " + t + " WHERE worker = ?")) {
                    for (int i = 0; i < rounds; i++) {
                        String label = "w" + wid + "-" + i + "-" + rng.nextInt(1_000_000_000);
                        ins.setInt(1, wid);
                        ins.setInt(2, i);
                        ins.setString(3, label);
                        expect(ins.executeUpdate(), 1, "rows inserted");
                        sel.setInt(1, wid);
                        sel.setInt(2, i);
                        try (ResultSet rs = sel.executeQuery()) {
                            expect(rs.next(), true, "row read back in its transaction");
                            expect(rs.getString(1), label, "label read back");
                            pids.add(rs.getInt(2));
                        }
                        if (i % 5 == 4) {
                            c.rollback();
                            try (ResultSet rs = sel.executeQuery()) {
                                expect(rs.next(), false, "rolled-back row is absent");
                            }
                            c.commit();
                        } else {
                            c.commit();
                            committed++;
                        }
                        stats.checked.addAndGet(2);
                        if (i % 20 == 19) {
                            // An error inside a transaction surfaces as itself;
                            // after the rollback the statements still work.
                            div.setInt(1, 0);
                            try (ResultSet rs = div.executeQuery()) {
                                throw new CheckFailed("1/0 did not raise division_by_zero");
                            } catch (SQLException e) {
                                if (!"22012".equals(e.getSQLState())) throw e;
                            }
                            c.rollback();
                            div.setInt(1, 1);
                            try (ResultSet rs = div.executeQuery()) {
                                rs.next();
                                expect(rs.getInt(1), 1, "query after a failed transaction");
                            }
                            c.commit();
                            stats.checked.incrementAndGet();
                        }
                    }
                    cnt.setInt(1, wid);
                    try (ResultSet rs = cnt.executeQuery()) {
                        rs.next();
                        expect(rs.getInt(1), committed, "committed rows");
                    }
                    c.commit();
                    stats.checked.incrementAndGet();
                } catch (Exception e) {
                    // Leave no transaction open behind a failure.
                    try { c.rollback(); } catch (SQLException ignored) { }
                    throw e;
                }
            }
            stats.backends.add(pids.size());
        });
        return CLIENTS + " connections x " + rounds + " transactions, " + stats.checked + " answers checked"
                + stats.backendSummary();
    }

    // --- phase: batch ------------------------------------------------------------------

    static String phaseBatch() throws Exception {
        String t = tbl("batch");
        try (Connection c = connect(0)) {
            exec(c, "CREATE TABLE " + t + " (worker int, n int, v int, PRIMARY KEY (worker, n))");
        }
        Stats stats = new Stats();
        int batches = Math.max(1, ROUNDS / 20);
        runWorkers(CLIENTS, wid -> {
            Random rng = new Random(200 + wid);
            long count = 0, sum = 0;
            try (Connection c = connect();
                 PreparedStatement ins = c.prepareStatement("INSERT INTO " + t + " (worker, n, v) VALUES (?, ?, ?)");
                 PreparedStatement agg = c.prepareStatement(
                         "SELECT count(*), coalesce(sum(v), 0) FROM " + t + " WHERE worker = ?")) {
                for (int b = 0; b < batches; b++) {
                    boolean inTransaction = b % 2 == 1;
                    c.setAutoCommit(!inTransaction);
                    int rows = 1 + rng.nextInt(40);
                    for (int k = 0; k < rows; k++) {
                        int v = rng.nextInt(2001) - 1000;
                        ins.setInt(1, wid);
                        ins.setInt(2, b * 1000 + k);
                        ins.setInt(3, v);
                        ins.addBatch();
                        count++;
                        sum += v;
                    }
                    int[] done = ins.executeBatch();
                    expect(done.length, rows, "batch result count");
                    if (inTransaction) c.commit();
                    agg.setInt(1, wid);
                    try (ResultSet rs = agg.executeQuery()) {
                        rs.next();
                        expect(rs.getLong(1), count, "count after batch");
                        expect(rs.getLong(2), sum, "sum after batch");
                    }
                    if (inTransaction) c.commit();
                    stats.checked.incrementAndGet();
                }
            }
        });
        return CLIENTS + " connections x " + batches + " batches, " + stats.checked + " answers checked";
    }

    // --- phase: schema change -------------------------------------------------------

    /** The table's columns ("name:type") and row k after each change. */
    static final String[][] SHAPE_COLUMNS = {
        {"id:int4", "v:int4"},
        {"id:int4", "v:int4", "extra:text"},
        {"id:int4", "v:int8", "extra:text"},
        {"id:int4", "v:int8"},
    };
    static final String[] CHANGES = {
        "ALTER TABLE %s ADD COLUMN extra text DEFAULT 'added'",
        "ALTER TABLE %s ALTER COLUMN v TYPE bigint",
        "ALTER TABLE %s DROP COLUMN extra",
    };

    static List<String> expectedRow(int shape, int k) {
        List<String> row = new ArrayList<>();
        for (String col : SHAPE_COLUMNS[shape]) {
            String name = col.substring(0, col.indexOf(':'));
            row.add(col + "=" + (name.equals("id") ? Integer.toString(k)
                    : name.equals("v") ? Integer.toString(-k) : "added"));
        }
        return row;
    }

    /**
     * Readers SELECT * from a table while another connection alters it.
     *
     * Readers run one PreparedStatement, SELECT * FROM t WHERE id = ?, in
     * autocommit mode, over and over, and check column names, column types
     * and values. Another connection makes three changes, each after every
     * reader has read the current shape ten times. PostgreSQL answers a stale
     * statement with "cached plan must not change result type" and pgjdbc, in
     * autocommit mode, re-prepares and retries by itself: so no error may
     * reach the readers, and every answer read after a change has committed
     * must have the new shape. A pooler that ran a statement prepared after
     * the change under a RowDescription pgjdbc cached before it would give
     * rows of the wrong shape.
     */
    static String phaseSchemaChange() throws Exception {
        String t = tbl("shared");
        Stats stats = new Stats();
        try (Connection admin = connect(0)) {
            // Table and rows in one commit: read-your-writes is per connection, so
            // a reader on a replica between a CREATE and an INSERT would see no rows.
            exec(admin, "CREATE TABLE " + t + " AS SELECT g AS id, -g AS v FROM generate_series(1, 50) g");
            exec(admin, "ALTER TABLE " + t + " ADD PRIMARY KEY (id)");
            AtomicIntegerArray reads = new AtomicIntegerArray(CLIENTS);
            int[] step = {0}; // changes committed; guarded by `step`
            boolean[] done = {false};
            Throwable[] alterError = {null};

            Thread alterer = new Thread(() -> {
                try {
                    for (int i = 0; ; i++) {
                        // Wait until every reader has read this shape 10 times.
                        while (!allAtLeast(reads, 10)) {
                            synchronized (step) { if (done[0]) return; }
                            Thread.sleep(2);
                        }
                        if (i == CHANGES.length) break;
                        exec(admin, String.format(CHANGES[i], t));
                        synchronized (step) {
                            for (int w = 0; w < CLIENTS; w++) reads.set(w, 0);
                            step[0] = i + 1;
                        }
                    }
                } catch (Throwable e) {
                    alterError[0] = e;
                } finally {
                    synchronized (step) { done[0] = true; }
                }
            });
            alterer.setDaemon(true);
            alterer.start();

            try {
                runWorkers(CLIENTS, wid -> {
                    Random rng = new Random(300 + wid);
                    int latest = 0; // the newest shape this reader has seen
                    try (Connection c = connect();
                         PreparedStatement sel = c.prepareStatement("SELECT * FROM " + t + " WHERE id = ?")) {
                        while (true) {
                            int seen;
                            synchronized (step) {
                                if (done[0]) break;
                                seen = step[0]; // changes known committed
                            }
                            int k = 1 + rng.nextInt(50);
                            sel.setInt(1, k);
                            List<String> got = new ArrayList<>();
                            try (ResultSet rs = sel.executeQuery()) {
                                ResultSetMetaData md = rs.getMetaData();
                                expect(rs.next(), true, "row " + k);
                                for (int col = 1; col <= md.getColumnCount(); col++) {
                                    got.add(md.getColumnName(col) + ":" + md.getColumnTypeName(col)
                                            + "=" + rs.getString(col));
                                }
                            }
                            // The shape of every change committed before the
                            // query, maybe one more committing just then; never
                            // older than a shape this reader saw before.
                            int lowest = Math.max(latest, seen);
                            int highest = Math.min(seen + 1, SHAPE_COLUMNS.length - 1);
                            int fit = -1;
                            for (int j = lowest; j <= highest && fit < 0; j++) {
                                if (got.equals(expectedRow(j, k))) fit = j;
                            }
                            if (fit < 0) {
                                throw new CheckFailed("SELECT * after " + seen + " changes: got " + got
                                        + ", wanted " + expectedRow(lowest, k));
                            }
                            latest = fit;
                            synchronized (step) {
                                if (step[0] == seen) reads.incrementAndGet(wid);
                            }
                            stats.checked.incrementAndGet();
                        }
                    } catch (Throwable e) {
                        synchronized (step) { done[0] = true; } // stop the others
                        throw e;
                    }
                });
            } finally {
                synchronized (step) { done[0] = true; }
                alterer.join((long) (TIMEOUT * 1000));
                exec(admin, "DROP TABLE IF EXISTS " + t);
            }
            if (alterError[0] != null) throw new RuntimeException("ALTER failed: " + alterError[0], alterError[0]);
            if (step[0] != CHANGES.length) {
                throw new CheckFailed("only " + step[0] + " of " + CHANGES.length + " changes were made");
            }
        }
        return CLIENTS + " readers, 3 changes by another connection (add column, change type, drop column), "
                + stats.checked + " answers checked";
    }

    static boolean allAtLeast(AtomicIntegerArray a, int n) {
        for (int i = 0; i < a.length(); i++) if (a.get(i) < n) return false;
        return true;
    }

    // --- main ----------------------------------------------------------------------

    interface Phase { String run() throws Exception; }

    public static void main(String[] args) throws Exception {
        // A hung pooler must not hang CI: give up after CHECK_TIMEOUT seconds.
        Thread watchdog = new Thread(() -> {
            try {
                Thread.sleep((long) (TIMEOUT * 1000));
                System.err.println("jdbc: FAIL: run exceeded CHECK_TIMEOUT=" + TIMEOUT + "s, aborting");
                System.err.flush();
                Runtime.getRuntime().halt(3);
            } catch (InterruptedException ignored) {
            }
        });
        watchdog.setDaemon(true);
        watchdog.start();

        Class.forName("org.postgresql.Driver");
        System.out.println("pgjdbc " + org.postgresql.util.DriverInfo.DRIVER_VERSION
                + " (java " + System.getProperty("java.version") + ") -> " + host() + ":" + port()
                + " db=" + database() + " user=" + user());
        long start = System.nanoTime();
        Map<String, Phase> phases = new LinkedHashMap<>();
        phases.put("autocommit", PgJdbcCheck::phaseAutocommit);
        phases.put("transactions", PgJdbcCheck::phaseTransactions);
        phases.put("batch", PgJdbcCheck::phaseBatch);
        phases.put("schema change", PgJdbcCheck::phaseSchemaChange);
        int passed = 0, failed = 0;
        for (Map.Entry<String, Phase> phase : phases.entrySet()) {
            long t0 = System.nanoTime();
            try {
                String summary = phase.getValue().run();
                passed++;
                System.out.printf("jdbc %s: PASS: %s (%.1fs)%n", phase.getKey(), summary, (System.nanoTime() - t0) / 1e9);
            } catch (Exception e) {
                failed++;
                System.out.printf("jdbc %s: FAIL: %s: %s (%.1fs)%n", phase.getKey(), e.getClass().getSimpleName(),
                        firstLine(e.getMessage()), (System.nanoTime() - t0) / 1e9);
            }
            System.out.flush();
        }
        try (Connection c = connect(0)) {
            for (String suffix : new String[] {"tx", "batch", "shared"}) {
                exec(c, "DROP TABLE IF EXISTS " + tbl(suffix));
            }
        } catch (SQLException e) {
            failed++;
            System.out.println("jdbc teardown: FAIL: " + e.getMessage());
        }
        System.out.printf("jdbc: total %.1fs%n", (System.nanoTime() - start) / 1e9);
        // The plain closing line CI reads, alone on its line.
        System.out.println("jdbc: " + passed + " passed, " + failed + " failed");
        System.out.flush();
        System.exit(failed > 0 ? 1 : 0);
    }
}
