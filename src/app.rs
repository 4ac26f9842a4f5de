//! The state every client task shares: configuration, credentials, pools and
//! cancel keys.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::auth::client::Credentials;
use crate::auth::Secret;
use crate::client::cancel::CancelRegistry;
use crate::client::prepared::Registry;
use crate::client::session::PinCounts;
use crate::config::Config;
use crate::pool::Pools;
use crate::router::classify::{Classifier, PinReason};

pub struct App {
    pub config: Arc<Config>,
    pub credentials: HashMap<String, Credentials>,
    pub pools: Arc<Pools>,
    pub cancels: CancelRegistry,
    /// Every distinct prepared statement, shared by all clients.
    pub statements: Registry,
    /// Statement classification for routing, with its cache.
    pub classifier: Classifier,
    /// Clients pinned to their server, by reason.
    pub pins: PinCounts,
    clients: AtomicUsize,
}

impl App {
    pub fn new(config: Config) -> Arc<App> {
        let credentials = build_credentials(&config);
        let statements = Registry::new(config.pooler.max_prepared_statement_memory);
        let classifier = Classifier::new(config.routing.classify_cache_memory);
        Arc::new(App {
            config: Arc::new(config),
            credentials,
            pools: Arc::new(Pools::default()),
            cancels: CancelRegistry::default(),
            statements,
            classifier,
            pins: PinCounts::default(),
            clients: AtomicUsize::new(0),
        })
    }

    pub fn count_pin(&self, reason: PinReason) {
        self.pins.count(reason);
    }

    /// Counts a new client; `None` when max_client_conn is reached.
    pub fn admit_client(self: &Arc<Self>) -> Option<ClientSlot> {
        let max = self.config.pooler.max_client_conn;
        let prev = self.clients.fetch_add(1, Ordering::AcqRel);
        if prev >= max {
            self.clients.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ClientSlot { app: self.clone() })
    }
}

/// Holds one place under max_client_conn until dropped.
pub struct ClientSlot {
    app: Arc<App>,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.app.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

fn build_credentials(cfg: &Config) -> HashMap<String, Credentials> {
    cfg.users
        .iter()
        .map(|(name, u)| {
            let method = u.auth.unwrap_or(cfg.auth.auth_type);
            let secret = u.password.as_deref().and_then(|p| Secret::parse(p).ok());
            (name.clone(), Credentials::new(method, secret))
        })
        .collect()
}
