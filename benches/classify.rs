//! Classification cost: cache hits (fingerprint included) and uncached
//! classification per statement kind.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use sluice::router::classify::{classify_uncached, Classifier, Target};
use sluice::router::fingerprint::fingerprint;
use sluice::router::functions::{Catalog, FunctionPolicy};
use sluice::router::SummaryMemo;

const SELECT_200: &str = "SELECT u.id, u.email, u.created_at, p.display_name \
    FROM users u JOIN profiles p ON p.user_id = u.id \
    WHERE u.tenant_id = 42 AND u.status = 'active' AND u.created_at > '2024-01-01' \
    ORDER BY u.created_at DESC LIMIT 50";

const SIMPLE: &str = "SELECT * FROM accounts WHERE id = $1";
const JOIN: &str = "SELECT o.id, o.total, c.name FROM orders o JOIN customers c ON c.id = o.customer_id \
    WHERE o.created_at >= $1 AND o.created_at < $2 AND c.region = $3 ORDER BY o.total DESC LIMIT $4";
const INSERT: &str =
    "INSERT INTO events (kind, payload, created_at) VALUES ($1, $2, now()) RETURNING id";
const UPDATE: &str = "UPDATE accounts SET balance = balance - $1, updated_at = now() WHERE id = $2 AND balance >= $1";
const CTE: &str = "WITH moved AS (DELETE FROM queue WHERE id IN (SELECT id FROM queue ORDER BY id LIMIT 100) RETURNING *) \
    INSERT INTO archive SELECT * FROM moved";

fn orm_select() -> String {
    let cols: Vec<String> = (0..60)
        .map(|i| format!("\"t0\".\"column_number_{i}\" AS \"t0_c{i}\""))
        .collect();
    let sql = format!(
        "SELECT {} FROM \"public\".\"big_table\" AS \"t0\" LEFT OUTER JOIN \"public\".\"other\" AS \"t1\" \
         ON \"t1\".\"id\" = \"t0\".\"other_id\" WHERE (\"t0\".\"tenant_id\" = $1 AND \"t0\".\"deleted_at\" IS NULL \
         AND lower(\"t1\".\"name\") LIKE $2) ORDER BY \"t0\".\"id\" ASC LIMIT $3 OFFSET $4",
        cols.join(", ")
    );
    assert!(sql.len() > 2000, "{}", sql.len());
    sql
}

fn policy() -> FunctionPolicy {
    let rows = [("pg_catalog", "now", 's'), ("pg_catalog", "lower", 'i')];
    FunctionPolicy::new(Some(Arc::new(Catalog::from_rows(rows))), [""; 0], [""; 0])
}

fn bench(c: &mut Criterion) {
    let policy = policy();
    let classifier = Classifier::new(8 << 20);
    assert_eq!(SELECT_200.len(), SELECT_200.len().clamp(180, 230));
    assert_eq!(
        classifier.classify(SELECT_200, &policy).target,
        Target::Replica
    );

    c.bench_function("fingerprint/select_200b", |b| {
        b.iter(|| fingerprint(black_box(SELECT_200.as_bytes())))
    });
    // What the router calls per statement: the route, the statement count,
    // the first kind and the pins, without building the per-statement list.
    c.bench_function("cached/select_200b", |b| {
        b.iter(|| classifier.summarize(black_box(SELECT_200), &policy))
    });
    // The full answer with a reason per statement (`sluice classify`).
    c.bench_function("cached_full/select_200b", |b| {
        b.iter(|| classifier.classify(black_box(SELECT_200), &policy))
    });
    let orm = orm_select();
    let _ = classifier.classify(&orm, &policy);
    c.bench_function("cached/orm_2kb", |b| {
        b.iter(|| classifier.classify(black_box(&orm), &policy))
    });

    // A session's memo of its last extended-protocol texts: what a repeated
    // Parse or a Bind of a named statement costs the router.
    let shared = Arc::new(policy.clone());
    let mut memo = SummaryMemo::default();
    let _ = memo.summarize(&classifier, SELECT_200.as_bytes(), &shared);
    c.bench_function("memo/select_200b", |b| {
        b.iter(|| memo.summarize(&classifier, black_box(SELECT_200.as_bytes()), &shared))
    });
    let _ = memo.summarize(&classifier, orm.as_bytes(), &shared);
    c.bench_function("memo/orm_2kb", |b| {
        b.iter(|| memo.summarize(&classifier, black_box(orm.as_bytes()), &shared))
    });

    let mut g = c.benchmark_group("uncached");
    for (name, sql) in [
        ("simple_select", SIMPLE),
        ("join_params", JOIN),
        ("insert", INSERT),
        ("update", UPDATE),
        ("modifying_cte", CTE),
        ("orm_2kb", orm.as_str()),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| classify_uncached(black_box(sql), &policy))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
