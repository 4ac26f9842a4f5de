//! The monitor of one database: a task for the primary (WAL position every
//! `lag_check_interval`, function catalog every `catalog_refresh_interval`) and
//! one per replica (recovery state and replay position every
//! `lag_check_interval`, which doubles as its health check). Each keeps one
//! connection of its own and reconnects after a failure.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::functions::{Catalog, FunctionPolicy, CATALOG_QUERY};
use super::replicas::{parse_lsn, record_end, DbRouting};
use crate::server::{ServerConn, ServerError, ServerTarget};

pub fn spawn(state: &Arc<DbRouting>, primary: ServerTarget) {
    for index in 0..state.replicas.len() {
        let target = ServerTarget {
            addr: state.replicas[index].addr.clone(),
            ..primary.clone()
        };
        tokio::spawn(replica_loop(Arc::downgrade(state), index, target));
    }
    tokio::spawn(primary_loop(Arc::downgrade(state), primary));
}

/// How often checks run: the lag interval, or the health interval when that is
/// shorter.
fn interval(state: &DbRouting) -> Duration {
    let r = &state.config.routing;
    let lag = r.lag_check_interval.0;
    let health = r.health_check_interval.0;
    match (lag.is_zero(), health.is_zero()) {
        (false, false) => lag.min(health),
        (false, true) => lag,
        (true, false) => health,
        (true, true) => Duration::from_secs(1),
    }
}

/// Runs one check on `conn` (connecting first where needed) within the
/// health-check timeout.
async fn checked<T>(
    conn: &mut Option<ServerConn>,
    target: &ServerTarget,
    timeout: Duration,
    sql: &str,
    read: impl FnOnce(Vec<Vec<Option<String>>>) -> Option<T>,
) -> Result<T, String> {
    let work = async {
        if conn.as_ref().is_none_or(|c| c.broken) {
            *conn = Some(ServerConn::connect(target, false).await?);
        }
        let c = conn.as_mut().ok_or(ServerError::Closed)?;
        c.simple_query(sql).await
    };
    let rows = match tokio::time::timeout(timeout, work).await {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => {
            *conn = None;
            return Err(e.to_string());
        }
        Err(_) => {
            *conn = None;
            return Err(format!(
                "no answer within health_check_timeout ({timeout:?})"
            ));
        }
    };
    read(rows).ok_or_else(|| "unexpected answer to the check".to_string())
}

fn first_cell(rows: &[Vec<Option<String>>], col: usize) -> Option<&str> {
    rows.first()?.get(col)?.as_deref()
}

async fn primary_loop(state: Weak<DbRouting>, target: ServerTarget) {
    let mut conn: Option<ServerConn> = None;
    let mut catalog_due = Instant::now();
    loop {
        let Some(s) = state.upgrade() else { return };
        if s.stopped.load(Ordering::Acquire) {
            return;
        }
        let timeout = s.config.routing.health_check_timeout.0;
        let asked = Instant::now();
        let lsn = checked(
            &mut conn,
            &target,
            timeout,
            "SELECT pg_current_wal_insert_lsn()",
            |rows| parse_lsn(first_cell(&rows, 0)?).map(record_end),
        )
        .await;
        // Stopped while the check ran (a reload, the demo ending): its
        // failure is about servers nobody routes to any more.
        if s.stopped.load(Ordering::Acquire) {
            return;
        }
        match lsn {
            Ok(lsn) => {
                s.record_primary(asked, lsn);
                if !s.primary_ok.swap(true, Ordering::AcqRel) {
                    tracing::info!(db = %s.database, primary = %target.addr, "primary reachable again");
                }
            }
            Err(e) => {
                if s.primary_ok.swap(false, Ordering::AcqRel) {
                    tracing::warn!(db = %s.database, primary = %target.addr, "primary check failed: {e}");
                }
            }
        }
        if conn.is_some() && Instant::now() >= catalog_due {
            let refresh = s.config.routing.catalog_refresh_interval.0;
            catalog_due = Instant::now() + refresh.max(Duration::from_secs(1));
            let rows = checked(
                &mut conn,
                &target,
                timeout.max(Duration::from_secs(10)),
                CATALOG_QUERY,
                Some,
            )
            .await;
            match rows {
                Ok(rows) => {
                    let catalog = Catalog::from_rows(rows.iter().filter_map(|r| {
                        let schema = r.first()?.as_deref()?;
                        let name = r.get(1)?.as_deref()?;
                        let volatility = r.get(2)?.as_deref()?.chars().next()?;
                        Some((schema, name, volatility))
                    }));
                    tracing::debug!(db = %s.database, functions = catalog.len(), "function catalog loaded");
                    let r = &s.config.routing;
                    s.set_policy(FunctionPolicy::new(
                        Some(Arc::new(catalog)),
                        &r.read_only_functions,
                        &r.write_functions,
                    ));
                }
                Err(e) => {
                    tracing::warn!(db = %s.database, "cannot load the function catalog: {e}");
                    catalog_due = Instant::now() + Duration::from_secs(1);
                }
            }
        }
        let pause = interval(&s);
        drop(s);
        tokio::time::sleep(pause).await;
    }
}

async fn replica_loop(state: Weak<DbRouting>, index: usize, target: ServerTarget) {
    let mut conn: Option<ServerConn> = None;
    loop {
        let Some(s) = state.upgrade() else { return };
        if s.stopped.load(Ordering::Acquire) {
            return;
        }
        let timeout = s.config.routing.health_check_timeout.0;
        let sql = "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()";
        let check = checked(&mut conn, &target, timeout, sql, |rows| {
            let standby = first_cell(&rows, 0)? == "t";
            let replay = first_cell(&rows, 1).and_then(parse_lsn);
            Some((standby, replay))
        })
        .await;
        if s.stopped.load(Ordering::Acquire) {
            return;
        }
        match check {
            Ok((true, Some(replay))) => s.record_replica(index, replay),
            Ok((false, _)) => s.replica_failed(index, "the server is not in recovery (promoted?)"),
            Ok((true, None)) => s.replica_failed(index, "the server has no replay position"),
            Err(e) => s.replica_failed(index, &e),
        }
        let pause = interval(&s);
        drop(s);
        tokio::time::sleep(pause).await;
    }
}
