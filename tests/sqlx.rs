//! sqlx (its default statement cache: named prepared statements) through sluice
//! in transaction mode with fewer servers than clients.

mod support;

use futures_util::future::join_all;
use sqlx::postgres::PgPoolOptions;
use sqlx::Row;
use support::*;

#[tokio::test]
async fn sqlx_statement_cache_across_servers() {
    let addr = pooler("default_pool_size = 4").await;
    let url = format!(
        "postgres://app:{APP_PASSWORD}@{}:{}/app?sslmode=disable",
        addr.ip(),
        addr.port()
    );
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .connect(&url)
        .await
        .unwrap();
    let tasks = (0..32i32).map(|t| {
        let pool = pool.clone();
        async move {
            for i in 0..50i32 {
                let row = sqlx::query("SELECT $1::int4 * 2 AS doubled, $2::text AS tag")
                    .bind(t * 1000 + i)
                    .bind(format!("task-{t}"))
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                assert_eq!(row.get::<i32, _>("doubled"), (t * 1000 + i) * 2);
                assert_eq!(row.get::<String, _>("tag"), format!("task-{t}"));
            }
            let mut tx = pool.begin().await.unwrap();
            let n: i64 = sqlx::query_scalar("SELECT $1::int8 + 1")
                .bind(t as i64)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            assert_eq!(n, t as i64 + 1);
            tx.commit().await.unwrap();
        }
    });
    join_all(tasks).await;
}
