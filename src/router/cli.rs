//! `sluice classify "SQL"`: the route a statement would get, and why, so a DBA
//! can check a query before deploying it.

use std::sync::Arc;

use super::classify::{explain, Classifier};
use super::functions::{Catalog, FunctionPolicy, CATALOG_QUERY};
use crate::auth::Secret;
use crate::config::Config;
use crate::server::{ServerConn, ServerTarget};

/// Classifies `sql` with the config's function lists and, with a database,
/// the function catalog of that database's primary.
pub async fn classify(
    cfg: Option<Config>,
    database: Option<String>,
    sql: &str,
) -> Result<String, String> {
    let (read_only, write) = cfg
        .as_ref()
        .map(|c| {
            (
                c.routing.read_only_functions.clone(),
                c.routing.write_functions.clone(),
            )
        })
        .unwrap_or_default();
    let catalog = match (&cfg, &database) {
        (Some(cfg), Some(db)) => Some(Arc::new(load_catalog(cfg, db).await?)),
        (None, Some(_)) => return Err("--database needs --config".into()),
        _ => None,
    };
    let no_catalog = catalog.is_none();
    let policy = FunctionPolicy::new(catalog, &read_only, &write);
    let c = Classifier::new(1 << 20).classify_uncached(sql, &policy);
    let mut line = explain(&c);
    if no_catalog {
        line.push_str("\n# without --config and --database, every function outside the built-in write list counts as unknown");
    }
    Ok(line)
}

async fn load_catalog(cfg: &Config, database: &str) -> Result<Catalog, String> {
    let db = cfg
        .databases
        .get(database)
        .ok_or_else(|| format!("no [databases.{database}] in the config"))?;
    let (user, password) = match &db.server_user {
        Some(u) => (u.clone(), db.server_password.clone()),
        None => cfg
            .users
            .iter()
            .find(|(_, u)| u.password.is_some())
            .map(|(n, u)| (n.clone(), u.password.clone()))
            .ok_or("no user with a password to log into the primary")?,
    };
    let target = ServerTarget {
        addr: db.primary.clone(),
        dbname: db.dbname.clone().unwrap_or_else(|| database.to_string()),
        user,
        password: password.as_deref().and_then(|p| Secret::parse(p).ok()),
    };
    let mut conn = ServerConn::connect(&target, false)
        .await
        .map_err(|e| format!("cannot reach the primary: {e}"))?;
    let rows = conn
        .simple_query(CATALOG_QUERY)
        .await
        .map_err(|e| format!("cannot read the catalog: {e}"))?;
    Ok(Catalog::from_rows(rows.iter().filter_map(|r| {
        Some((
            r.first()?.as_deref()?,
            r.get(1)?.as_deref()?,
            r.get(2)?.as_deref()?.chars().next()?,
        ))
    })))
}
