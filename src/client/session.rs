//! One client session after login: wait for a request, attach a server, shuttle
//! frames both ways until the pool mode says the server is free, release it.
//!
//! Frames are forwarded as raw byte runs, one write per read; the pooler looks
//! at tags only, and decodes a body only for ParameterStatus, ReadyForQuery,
//! ErrorResponse severity, and the first keyword of a Query or Parse.

use bytes::{Buf, BufMut, BytesMut};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

mod route;

use super::cancel::{spawn_cancel, CancelSlot, ServerKey};
use super::prepared::{global_name, put_renamed, split_name, Bound, ClientStatements};
use super::registry::{ClientInfo, Notified};
use super::sql_prepared::{self, SqlCommand, SqlStatement, SqlStatements};
use crate::app::App;
use crate::config::PoolMode;
use crate::metrics::stats::{self, LocalStats};
use crate::metrics::RouteReason;
use crate::pool::{CheckoutError, PoolGroup, PooledServer, ServerPool};
use crate::protocol::error_fields::ErrorFields;
use crate::protocol::frames::{
    client_streamable, client_streamable_unless_bind, HEADER_LEN, STREAM_THRESHOLD,
};
use crate::protocol::messages::{self, sqlstate, Severity};
use crate::protocol::{btag, read_cstr, tag, FrameScanner, Piece};
use crate::server::params::is_server_owned;
use crate::server::prepared::Held;
use crate::server::{ParamMap, Progress, Reply, ServerConn};

/// Why a session ended.
#[derive(Debug)]
pub enum Exit {
    /// The client sent Terminate.
    Quit,
    /// The client's connection closed or failed.
    Gone,
    /// The pooler closed the session; the client has been told why.
    Closed(String),
}

/// What serving one attachment came to.
enum Served {
    /// The server is free for someone else.
    Release,
    /// A read failed on a replica before any reply reached the client: drop
    /// the server and run the read elsewhere.
    Retry,
    Exit(Exit),
}

/// Bytes staged for a server (rewritten or injected messages) before they
/// are sent in the middle of a client's batch.
const MAX_STAGED: usize = 1 << 20;

/// Most replies a client may be owed at once (about 24 bytes each).
const MAX_OWED_REPLIES: usize = 1 << 20;

/// Most prepared statement names (protocol and SQL `PREPARE`) one client
/// may hold in transaction and statement mode.
const MAX_CLIENT_STATEMENTS: usize = 10_000;

/// Client read buffers above this are shrunk back once empty.
const MAX_IDLE_BUFFER: usize = 256 * 1024;
const INITIAL_BUFFER: usize = 8 * 1024;
/// How far reads may walk into an empty buffer before they go back to its start.
const RECLAIM_AFTER: usize = 1024;

pub struct Session {
    app: Arc<App>,
    stream: TcpStream,
    peer: SocketAddr,
    rbuf: BytesMut,
    /// Scratch space for messages the pooler writes itself.
    out: BytesMut,
    scanner: FrameScanner,
    /// The pool of the attached server (the primary's when none is).
    pool: Arc<ServerPool>,
    /// The primary's and the replicas' pools for this database and user.
    pools: Arc<PoolGroup>,
    route: route::RouteState,
    mode: PoolMode,
    user: String,
    database: String,
    wanted: ParamMap,
    reported: ParamMap,
    cancel: Arc<CancelSlot>,
    /// A FATAL error from the server has reached the client.
    server_fatal_sent: bool,
    /// Map named prepared statements onto pooler-wide ones (transaction and
    /// statement mode).
    map_statements: bool,
    max_prepared: usize,
    /// `max_prepared_statement_memory`: also the most one client may hold.
    max_statement_bytes: usize,
    statements: ClientStatements,
    sql_statements: SqlStatements,
    /// Rewritten messages staged for one write to the server.
    to_server: BytesMut,
    /// Replies staged for one write to the client when the server's stream
    /// needs cutting (injected replies) or the pooler answers itself.
    to_client: BytesMut,
    /// The client's last batch, kept in case a schema change makes the server
    /// refuse a mapped statement's cached plan.
    replay: Replay,
    /// A Bind of a statement version older than a schema change went to a
    /// server that never prepared it: the server's "does not exist" error is
    /// answered as the plan-change error the client would get from a server
    /// that did.
    stale_bind: bool,
    /// What SHOW CLIENTS shows of this session.
    info: Arc<ClientInfo>,
    /// Counts since the last flush into the pool group's statistics.
    stats: LocalStats,
    /// When the request now on the server was sent.
    query_start: Option<Instant>,
    /// When the transaction now open started.
    xact_start: Option<Instant>,
    /// Clock reads reused for the next timestamp that falls at the same
    /// moment (a read per event is a measurable share of a short
    /// transaction): the end of the checkout, for the first query's start;
    /// the last ReadyForQuery, for the release.
    attached_at: Option<Instant>,
    replied_at: Option<Instant>,
}

/// Retrying a batch once after "cached plan must not change result type".
#[derive(Default)]
struct Replay {
    state: ReplayState,
    /// The batch as the client sent it.
    bytes: BytesMut,
    /// Pooler-wide statements it used.
    statements: Vec<u64>,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum ReplayState {
    #[default]
    Off,
    /// Recorded; no reply has reached the client yet.
    Armed,
    /// The server refused the plan: its replies are cut out up to ReadyForQuery.
    Swallowing,
    /// The batch is being sent again; it is not retried a second time.
    Replaying,
}

/// Largest batch kept for a retry.
const MAX_REPLAY: usize = 64 * 1024;
/// Most reply bytes held back while a read on a replica may still be retried.
const MAX_HELD: usize = 64 * 1024;

impl Session {
    pub fn new(
        app: Arc<App>,
        stream: TcpStream,
        peer: SocketAddr,
        login: super::login::LoggedIn,
        cancel: Arc<CancelSlot>,
        info: Arc<ClientInfo>,
    ) -> Session {
        let cfg = app.config();
        let max_packet = cfg.pooler.max_packet_size;
        let mode = login.pools.primary.mode;
        let max_prepared = cfg.pooler.max_prepared_statements;
        login
            .pools
            .stats
            .clients
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let map_statements = mode != PoolMode::Session && max_prepared > 0;
        // Mapped Binds are rewritten, so they are read whole.
        let streamable = if map_statements {
            client_streamable_unless_bind
        } else {
            client_streamable
        };
        Session {
            app,
            stream,
            peer,
            rbuf: login.rbuf,
            out: BytesMut::with_capacity(512),
            scanner: FrameScanner::new(max_packet, streamable),
            pool: login.pools.primary.clone(),
            route: route::RouteState::new(&login.pools, mode, &login.wanted),
            pools: login.pools,
            mode,
            user: login.user,
            database: login.database,
            wanted: login.wanted,
            reported: login.reported,
            cancel,
            server_fatal_sent: false,
            map_statements,
            max_prepared,
            max_statement_bytes: cfg.pooler.max_prepared_statement_memory,
            statements: ClientStatements::default(),
            sql_statements: SqlStatements::default(),
            to_server: BytesMut::new(),
            to_client: BytesMut::new(),
            replay: Replay::default(),
            stale_bind: false,
            info,
            stats: LocalStats::default(),
            query_start: None,
            xact_start: None,
            attached_at: None,
            replied_at: None,
        }
    }

    pub async fn run(mut self) -> Exit {
        let mut server: Option<PooledServer> = None;
        // One wake-up future for the whole session, not one per request.
        let info = self.info.clone();
        let mut wake = info.wake.notified();
        let exit = loop {
            let srv = match server.as_mut() {
                Some(s) => s,
                None => {
                    if let Err(exit) = self.wait_for_request(&mut wake).await {
                        break exit;
                    }
                    if let Some(why) = self.too_many_statements() {
                        break self.close(sqlstate::PROGRAM_LIMIT_EXCEEDED, &why).await;
                    }
                    if self.pools.is_retired() {
                        if let Err(exit) = self.move_to_new_pools().await {
                            break exit;
                        }
                    }
                    if self.map_statements {
                        match self.answer_without_server().await {
                            Ok(true) => continue,
                            Ok(false) => {}
                            Err(exit) => break exit,
                        }
                    }
                    let target = match self.plan().await {
                        Ok(Some(t)) => t,
                        Ok(None) => continue,
                        Err(exit) => break exit,
                    };
                    match self.attach(target).await {
                        Ok(s) => server.insert(s),
                        Err(exit) => break exit,
                    }
                }
            };
            match self.serve(srv, &mut wake).await {
                Served::Release => {
                    if let Some(s) = server.take() {
                        self.detach(s).await;
                    }
                    self.shrink_buffer();
                }
                Served::Retry => {
                    if let Some(s) = server.take() {
                        if s.is_clean() {
                            self.pool.release(s);
                        } else {
                            self.pool.discard(s);
                        }
                    }
                    self.restore_retry();
                }
                Served::Exit(exit) => break exit,
            }
        };
        if let Some(s) = server.take() {
            self.cleanup(s).await;
        }
        // The rest of the ending is in `Drop`, so a panic cannot skip it.
        exit
    }

    /// The pools were replaced by a reload: move to the new ones between
    /// transactions; a database that was removed ends the session.
    async fn move_to_new_pools(&mut self) -> Result<(), Exit> {
        let cfg = self.app.config();
        match self
            .app
            .pools
            .get_or_create(&cfg, &self.database, &self.user)
        {
            Some(group) => {
                self.pools.stats.flush(&mut self.stats);
                self.route.rebind(&group, self.mode);
                self.pool = group.primary.clone();
                self.pools = group;
                Ok(())
            }
            None => {
                let msg = format!(
                    "terminating connection: database \"{}\" was removed from the configuration",
                    self.database
                );
                Err(self.close(sqlstate::ADMIN_SHUTDOWN, &msg).await)
            }
        }
    }

    /// Whether an operator's control ends this session now: KILL always;
    /// a drain or a removed database only between transactions.
    fn ended_by_control(&self, between_transactions: bool) -> Option<&'static str> {
        if self.info.killed.load(std::sync::atomic::Ordering::Acquire) {
            return Some("terminating connection due to administrator command (KILL)");
        }
        if between_transactions && self.app.is_draining() {
            return Some("terminating connection due to administrator command");
        }
        None
    }

    /// Waits until the client has sent the start of a request; handles
    /// Terminate and client_idle_timeout while no server is attached.
    async fn wait_for_request(&mut self, wake: &mut Notified<'_>) -> Result<(), Exit> {
        let in_transaction = self.route.held_begin.is_some();
        let idle_limit = {
            let (idle_tx, idle) = self.app.idle_limits();
            if in_transaction {
                idle_tx
            } else {
                idle
            }
        };
        loop {
            // No query runs: a cancel now is a no-op, as in PostgreSQL.
            self.info.take_cancel();
            if let Some(why) = self.ended_by_control(!in_transaction) {
                return Err(self.close(sqlstate::ADMIN_SHUTDOWN, why).await);
            }
            if self.rbuf.len() >= HEADER_LEN {
                let tag = self.rbuf[0];
                let total =
                    u32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]])
                        as usize
                        + 1;
                if tag == tag::TERMINATE {
                    return Err(Exit::Quit);
                }
                // A length no message may have is refused before any server
                // is checked out for it.
                if let Err(e) = self.scanner.clone().next(&self.rbuf, 0) {
                    return Err(self
                        .close(sqlstate::PROTOCOL_VIOLATION, &e.to_string())
                        .await);
                }
                if self.rbuf.len() >= total || total > STREAM_THRESHOLD {
                    return Ok(());
                }
                self.rbuf.reserve(total - self.rbuf.len());
            }
            let deadline = idle_limit.map(|d| Instant::now() + d);
            // Biased: polled in order, without the random start that costs a
            // thread-local RNG draw per pass; controls are checked at the top
            // of every pass anyway.
            tokio::select! {
                biased;
                r = read_more(&mut self.stream, &mut self.rbuf, INITIAL_BUFFER) => {
                    if !r {
                        return Err(Exit::Gone);
                    }
                }
                _ = &mut *wake => {}
                _ = sleep_opt(deadline) => {
                    if in_transaction {
                        return Err(self.close(sqlstate::IDLE_IN_TRANSACTION_TIMEOUT,
                            "terminating connection due to idle_transaction_timeout").await);
                    }
                    return Err(self.close(sqlstate::IDLE_SESSION_TIMEOUT,
                        "terminating connection due to client_idle_timeout").await);
                }
            }
        }
    }

    /// Answers, without a server, the leading messages that need none: a
    /// Parse of a statement some server has accepted, a Close of a statement,
    /// Flush, and Sync (ReadyForQuery, idle: no server is held so no
    /// transaction is open). Blocking drivers that prepare with Parse+Sync
    /// (libpq's PQprepare, pgbench -M prepared) then never wait for a server
    /// only to prepare. Returns true when nothing is left that needs one.
    async fn answer_without_server(&mut self) -> Result<bool, Exit> {
        let mut pos = 0;
        let mut pinned = None;
        self.to_client.clear();
        while self.rbuf.len() >= pos + HEADER_LEN {
            let tag = self.rbuf[pos];
            let len = u32::from_be_bytes([
                self.rbuf[pos + 1],
                self.rbuf[pos + 2],
                self.rbuf[pos + 3],
                self.rbuf[pos + 4],
            ]) as usize
                + 1;
            if len < HEADER_LEN || self.rbuf.len() < pos + len {
                break;
            }
            let body = &self.rbuf[pos + HEADER_LEN..pos + len];
            match tag {
                tag::PARSE => {
                    let Some((name, key)) = split_name(body) else {
                        break;
                    };
                    if name.is_empty() {
                        break;
                    }
                    let Some(stmt) = self.app.statements.get_valid(key) else {
                        break;
                    };
                    // After a schema change the text may no longer parse:
                    // let a server say so.
                    if !self.app.statements.is_current(&stmt) {
                        break;
                    }
                    // Its Bind names it only: look for a pin in its text now.
                    if let Some(reason) = self.pin_made_by(stmt.key()) {
                        pinned = Some(reason);
                    }
                    let bound = self.app.statements.bind(stmt);
                    self.statements.insert(name, bound);
                    self.stats.totals.client_parses += 1;
                    self.stats.prepared_hits += 1;
                    put_empty_message(&mut self.to_client, btag::PARSE_COMPLETE);
                }
                tag::CLOSE => {
                    let Some((&kind, rest)) = body.split_first() else {
                        break;
                    };
                    let Some((name, _)) = split_name(rest) else {
                        break;
                    };
                    if kind != b'S' || name.is_empty() {
                        break;
                    }
                    self.statements.remove(name);
                    put_empty_message(&mut self.to_client, btag::CLOSE_COMPLETE);
                }
                tag::SYNC => messages::ready_for_query(&mut self.to_client, b'I'),
                tag::FLUSH => {}
                _ => break,
            }
            pos += len;
        }
        if let Some(reason) = pinned {
            self.pin(reason);
        }
        if pos == 0 {
            return Ok(false);
        }
        self.rbuf.advance(pos);
        if !self.to_client.is_empty() {
            let written = self.stream.write_all(&self.to_client).await;
            self.to_client.clear();
            written.map_err(|_| Exit::Gone)?;
        }
        Ok(self.rbuf.len() < HEADER_LEN)
    }

    /// Checks out a server and makes its session parameters the client's.
    async fn attach(&mut self, mut target: route::Target) -> Result<PooledServer, Exit> {
        self.wait_while_paused().await?;
        let waiting_since = Instant::now();
        self.info.waiting(waiting_since.into_std());
        self.count_waiting(true);
        let checkout = loop {
            let pool = match target {
                route::Target::Primary => &self.pools.primary,
                route::Target::Replica(i) => &self.pools.replicas[i],
            };
            if !Arc::ptr_eq(pool, &self.pool) {
                self.pool = pool.clone();
            }
            // A client killed while it waits ends once it has a server (KILL
            // frees the database's servers): serve() looks first.
            let result = self.pool.checkout(waiting_since.into_std()).await;
            match (result, target) {
                (Err(e @ CheckoutError::Server(_)), route::Target::Replica(i))
                | (Err(e @ CheckoutError::ConnectTimeout), route::Target::Replica(i)) => {
                    tracing::warn!(client = %self.peer, db = %self.database, replica = %self.pool.addr, "{e}");
                    target = self.fallback_after_connect_failure(i);
                }
                (result, _) => break result,
            }
        };
        self.count_waiting(false);
        let (checkout, attached_at) = match checkout {
            Ok((srv, at)) => (Ok(srv), Instant::from_std(at)),
            Err(e) => (Err(e), Instant::now()),
        };
        self.attached_at = Some(attached_at);
        let waited = attached_at - waiting_since;
        self.stats.observe(stats::WAIT, waited);
        self.stats.totals.server_assignments += 1;
        self.route.target = target;
        let replica = matches!(target, route::Target::Replica(_));
        if replica && self.route.reason == RouteReason::NoReplica {
            // Another replica took over after a connect failure.
            self.route.reason = RouteReason::Read;
        } else if !replica && matches!(self.route.reason, RouteReason::Read) {
            self.route.reason = RouteReason::NoReplica;
        }
        self.stats.route(replica, self.route.reason);
        tracing::trace!(client = %self.peer, ?target, server = %self.pool.addr, "attach");
        let mut srv = match checkout {
            Ok(s) => s,
            Err(e) => {
                self.info.unlinked();
                let (code, msg) = match &e {
                    CheckoutError::WaitTimeout => (
                        sqlstate::PROTOCOL_VIOLATION,
                        "query_wait_timeout".to_string(),
                    ),
                    CheckoutError::Server(crate::server::ServerError::Postgres(f)) => (
                        sqlstate::CANNOT_CONNECT_NOW,
                        format!("server login failed: {}", f.message),
                    ),
                    CheckoutError::Server(crate::server::ServerError::Auth(
                        crate::auth::server::ServerAuthError::Refused(f),
                    )) => (
                        sqlstate::CANNOT_CONNECT_NOW,
                        format!("server login failed: {}", f.message),
                    ),
                    other => (
                        sqlstate::CANNOT_CONNECT_NOW,
                        format!("server connection failed: {other}"),
                    ),
                };
                tracing::warn!(client = %self.peer, db = %self.database, user = %self.user, "{e}");
                return Err(self.close(code, &msg).await);
            }
        };
        if srv.params_in_line != Some(self.params_key(&srv.overrides)) {
            if let Err(exit) = self.bring_in_line(&mut srv).await {
                if srv.broken {
                    self.pool.discard(srv);
                } else {
                    self.pool.release(srv);
                }
                return Err(exit);
            }
        }
        // A cancel that came while the client waited had no query to stop.
        self.info.take_cancel();
        self.info.linked(srv.id);
        if let Some(i) = &srv.info {
            let at = self.attached_at.unwrap_or_else(Instant::now);
            i.link(self.cancel.pid, at.into_std());
        }
        self.stage_begin(&mut srv);
        Ok(srv)
    }

    /// Makes the server's session parameters the client's, and tells the
    /// client the values the server settled on where they differ from what it
    /// was told; remembers on the server that the two are in line.
    async fn bring_in_line(&mut self, srv: &mut PooledServer) -> Result<(), Exit> {
        match srv.sync_params(&self.wanted).await {
            Ok(None) => {}
            Ok(Some(err)) => {
                // The client asked for a setting the server refuses; PostgreSQL
                // would have refused the login the same way.
                return Err(self.close(&err.code, &err.message).await);
            }
            Err(e) => {
                srv.broken = true;
                return Err(self
                    .close(
                        sqlstate::CONNECTION_FAILURE,
                        &format!("server connection failed: {e}"),
                    )
                    .await);
            }
        }
        // Tell the client the values the server settled on, where they differ
        // from what it was told (for example a normalised DateStyle).
        self.out.clear();
        for (name, _) in self.wanted.iter() {
            if let Some(actual) = srv.param(name) {
                if self.reported.get(name) != Some(actual) {
                    messages::parameter_status(&mut self.out, name, actual);
                }
            }
        }
        if !self.out.is_empty() {
            let names: Vec<(String, String)> = self
                .wanted
                .iter()
                // Only parameters the server reports; the others keep the
                // client's own SQL text.
                .filter(|(n, _)| srv.defaults.get(n).is_some())
                .filter_map(|(n, _)| srv.param(n).map(|v| (n.to_string(), v.to_string())))
                .collect();
            for (n, v) in names {
                self.reported.set(&n, &v, false);
                self.wanted.set(&n, &v, false);
            }
            if self.stream.write_all(&self.out).await.is_err() {
                return Err(Exit::Gone);
            }
        }
        srv.params_in_line = Some(self.params_key(&srv.overrides));
        Ok(())
    }

    /// What a server remembers of the settings it was brought in line with:
    /// the content hashes of this client's wanted and reported parameters and
    /// of the server's overrides.
    fn params_key(&self, overrides: &ParamMap) -> (u64, u64, u64) {
        (
            self.wanted.content_hash(),
            self.reported.content_hash(),
            overrides.content_hash(),
        )
    }

    /// Counts this client in its pools' waiting clients, or stops counting it.
    fn count_waiting(&self, waiting: bool) {
        self.pools.stats.set_waiting(waiting);
    }

    /// Holds a new transaction while the database is paused (PAUSE, KILL);
    /// the client counts as waiting meanwhile.
    async fn wait_while_paused(&mut self) -> Result<(), Exit> {
        if !self.app.is_paused(&self.database) {
            return Ok(());
        }
        self.info.waiting(std::time::Instant::now());
        self.count_waiting(true);
        let result = loop {
            if !self.app.is_paused(&self.database) {
                break Ok(());
            }
            if self.ended_by_control(false).is_some() {
                break Err(None);
            }
            // Reading on notices a client that leaves; past one whole message
            // of input, stop, so a client that keeps sending while paused
            // cannot grow the buffer without bound.
            let room = self.rbuf.len() < self.scanner.max_len();
            tokio::select! {
                _ = self.info.wake.notified() => {}
                r = read_more(&mut self.stream, &mut self.rbuf, INITIAL_BUFFER), if room => {
                    if !r {
                        break Err(Some(Exit::Gone));
                    }
                }
            }
        };
        self.count_waiting(false);
        match result {
            Ok(()) => Ok(()),
            Err(Some(exit)) => Err(exit),
            Err(None) => {
                let why = self
                    .ended_by_control(false)
                    .unwrap_or("terminating connection");
                Err(self.close(sqlstate::ADMIN_SHUTDOWN, why).await)
            }
        }
    }

    async fn detach(&mut self, mut srv: PooledServer) {
        self.info.unlinked();
        self.on_release();
        // State a pin would have kept, made where no pin is taken (a READ
        // ONLY transaction on a replica), is cleared before anyone else
        // gets the server.
        let left_state = std::mem::take(&mut self.route.left_state);
        if left_state && self.pool.reset_query.is_empty() {
            // Nothing would clear it: do not reuse the server.
            self.pool.discard(srv);
            self.flush_stats();
            return;
        }
        if (self.pool.reset_always || left_state) && srv.is_clean() {
            self.pool.resetting(&srv, true);
            self.reset(&mut srv).await;
            self.pool.resetting(&srv, false);
        }
        let now = self.replied_at.take().unwrap_or_else(Instant::now);
        self.pool.release_at(srv, now.into_std());
        self.flush_stats();
    }

    /// Adds this session's counts to the pool group's, once per transaction.
    fn flush_stats(&mut self) {
        let m = &self.app.metrics;
        let hits = std::mem::take(&mut self.stats.prepared_hits);
        if hits > 0 {
            m.prepared_hits.increment(hits);
        }
        if self.stats.totals.server_parses > 0 {
            m.prepared_misses.increment(self.stats.totals.server_parses);
        }
        self.pools.stats.flush(&mut self.stats);
    }

    /// Why this client holds more prepared statements than sluice keeps for
    /// one client, if it does. The names are sluice's to keep in transaction
    /// and statement mode (a server holds them only while it serves the
    /// client), so they are bounded like every other per-client buffer.
    fn too_many_statements(&self) -> Option<String> {
        let (names, bytes) = self.statements.usage();
        let (sql_names, sql_bytes) = self.sql_statements.usage();
        let max_bytes = self.max_statement_bytes;
        (names + sql_names > MAX_CLIENT_STATEMENTS || bytes + sql_bytes > max_bytes).then(|| {
            format!(
                "too many prepared statements: sluice keeps at most {MAX_CLIENT_STATEMENTS} per \
                 client, and {max_bytes} bytes of them (max_prepared_statement_memory)"
            )
        })
    }

    /// Runs the reset query; afterwards the server has its login parameters.
    async fn reset(&self, srv: &mut ServerConn) {
        let query = self.pool.reset_query.clone();
        if query.is_empty() {
            return;
        }
        match tokio::time::timeout(Duration::from_secs(5), srv.run_internal(&query)).await {
            Ok(Ok(None)) => {
                srv.overrides = ParamMap::new();
                srv.prepared.clear();
            }
            Ok(Ok(Some(e))) => {
                tracing::warn!(db = %self.database, user = %self.user, server = %srv.peer, "server_reset_query failed: {e}");
                srv.broken = true;
            }
            _ => srv.broken = true,
        }
    }

    /// Returns a server after the session ended: roll back what the client
    /// left open, reset in session mode, or close the server when its state is
    /// unknown (a query still running, replies still owed).
    async fn cleanup(&mut self, mut srv: PooledServer) {
        self.info.unlinked();
        self.flush_stats();
        if self.info.killed.load(std::sync::atomic::Ordering::Acquire) {
            self.pool.discard(srv);
            return;
        }
        if srv.broken || !srv.owed.is_empty() || !srv.rbuf.is_empty() {
            self.pool.discard(srv);
            return;
        }
        if srv.tx_status != b'I' {
            let ok = matches!(
                tokio::time::timeout(Duration::from_secs(5), srv.rollback()).await,
                Ok(Ok(()))
            );
            if !ok {
                srv.broken = true;
                self.pool.discard(srv);
                return;
            }
        }
        if self.route.pinned.is_some() && self.pool.reset_query.is_empty() {
            // Nothing would clear what the pin was for: do not reuse it.
            self.pool.discard(srv);
            return;
        }
        // A pinned client left state on its server (temporary tables,
        // advisory locks, cursors): reset it like a session-mode server.
        if self.mode == PoolMode::Session || self.pool.reset_always || self.route.pinned.is_some() {
            self.pool.resetting(&srv, true);
            self.reset(&mut srv).await;
            self.pool.resetting(&srv, false);
        }
        self.pool.release(srv);
    }

    /// Shuttles frames between client and server until the server can be
    /// released or the session ends.
    async fn serve(&mut self, srv: &mut ServerConn, wake: &mut Notified<'_>) -> Served {
        let (idle_tx_limit, idle_limit) = self.app.idle_limits();
        loop {
            if self.info.take_cancel() && !srv.owed.is_empty() {
                // The client's query runs on this server: cancel it there.
                spawn_cancel(ServerKey {
                    addr: srv.peer.clone(),
                    pid: srv.pid,
                    secret: srv.secret,
                });
            }
            let between = srv.owed.is_empty() && srv.tx_status == b'I' && self.rbuf.is_empty();
            if let Some(why) = self.ended_by_control(between) {
                return Served::Exit(self.close(sqlstate::ADMIN_SHUTDOWN, why).await);
            }
            let holding_back = self.route.unit_only && self.route.unit_sent;
            if !self.rbuf.is_empty() && !holding_back {
                if let Err(exit) = self.forward_client(srv).await {
                    return Served::Exit(exit);
                }
                if let Some(why) = self.too_many_statements() {
                    return Served::Exit(self.close(sqlstate::PROGRAM_LIMIT_EXCEEDED, &why).await);
                }
                if srv.owed.len() > MAX_OWED_REPLIES {
                    // Messages sent on to the server meet its backpressure;
                    // those sluice answers itself (a Close of a mapped
                    // statement) queue behind a reply still owed, and a
                    // client must not grow that queue without bound.
                    let why = format!(
                        "more than {MAX_OWED_REPLIES} replies owed to this client: \
                         read them before sending more"
                    );
                    return Served::Exit(self.close(sqlstate::PROGRAM_LIMIT_EXCEEDED, &why).await);
                }
            }
            // On a replica the next unit waits, unread, for its own route.
            let holding_back = self.route.unit_only && self.route.unit_sent;
            let waiting_on_client = srv.owed.is_empty();
            let limit = match (waiting_on_client, srv.tx_status) {
                (true, b'T' | b'E') => idle_tx_limit,
                (true, _) => idle_limit,
                _ => None,
            };
            let deadline = limit.map(|d| Instant::now() + d);
            reserve_for_next(&mut self.rbuf, &self.scanner);
            reserve_for_next(&mut srv.rbuf, &srv.scanner);
            // Biased, as in wait_for_request: the server's replies first.
            tokio::select! {
                biased;
                r = read_more(&mut srv.stream, &mut srv.rbuf, crate::server::READ_BUF) => {
                    if !r {
                        srv.broken = true;
                        if self.route.retry.armed {
                            self.ban_attached("connection lost");
                            return Served::Retry;
                        }
                        return Served::Exit(self.server_lost().await);
                    }
                    match self.forward_server(srv).await {
                        Ok(true) if self.route.retry_now => return Served::Retry,
                        Ok(true) => return Served::Release,
                        Ok(false) => {
                            if srv.owed.is_empty() {
                                // Idle inside a transaction (or pinned): the
                                // rest of it belongs on this server.
                                self.route.unit_only = false;
                                self.route.unit_sent = false;
                            }
                        }
                        Err(exit) => return Served::Exit(exit),
                    }
                }
                r = read_more(&mut self.stream, &mut self.rbuf, INITIAL_BUFFER), if !holding_back => {
                    if !r {
                        return Served::Exit(Exit::Gone);
                    }
                }
                _ = &mut *wake => {}
                _ = sleep_opt(deadline) => {
                    let exit = if srv.tx_status == b'I' {
                        self.close(sqlstate::IDLE_SESSION_TIMEOUT,
                            "terminating connection due to client_idle_timeout").await
                    } else {
                        self.close(sqlstate::IDLE_IN_TRANSACTION_TIMEOUT,
                            "terminating connection due to idle_transaction_timeout").await
                    };
                    return Served::Exit(exit);
                }
            }
        }
    }

    /// Forwards the complete (or streamable) client messages in the buffer:
    /// raw runs straight from the read buffer, or, when a message must be
    /// rewritten (statement names, LISTEN), staged in `to_server` and sent in
    /// one write.
    async fn forward_client(&mut self, srv: &mut ServerConn) -> Result<(), Exit> {
        let mut pos = 0;
        let mut flushed = 0;
        // A batch sent outside a transaction may be retried once after a
        // schema change; record it (not when it is itself the retry).
        let record = self.map_statements
            && srv.owed.is_empty()
            && srv.tx_status == b'I'
            && self.replay.state != ReplayState::Replaying;
        self.replay.state = ReplayState::Off;
        self.replay.statements.clear();
        // Only a read taken at this moment may stand in for the clock.
        let attached_at = self.attached_at.take();
        self.replied_at = None;
        if srv.owed.is_empty() {
            // Right after a checkout the checkout's clock read will do.
            let now = attached_at.unwrap_or_else(Instant::now);
            self.query_start = Some(now);
            if srv.tx_status == b'I' {
                self.xact_start = Some(now);
            }
        }
        let mut syncs = 0;
        let mut describes = 0;
        let mut last_tag = 0;
        loop {
            if self.route.unit_only && self.route.unit_sent {
                break;
            }
            if self.to_server.len() > MAX_STAGED {
                // Statements prepared again for each Bind can stage far more
                // than the client sent: send what is staged before going on.
                self.send_to_server(srv, flushed, pos).await?;
                flushed = pos;
            }
            let piece = match self.scanner.next(&self.rbuf, pos) {
                Ok(p) => p,
                Err(e) => {
                    self.send_to_server(srv, flushed, pos).await?;
                    return Err(self
                        .close(sqlstate::PROTOCOL_VIOLATION, &e.to_string())
                        .await);
                }
            };
            // Whether a Query or Parse may be one of the statements the pooler
            // looks at (a schema change, LISTEN, PREPARE, DISCARD ALL, ...):
            // each of those is told by its first keyword, so one look at it
            // spares the common SELECT all the other tests.
            let mut special = false;
            let mut pin_made = None;
            if let Piece::Frame { tag, len } = piece {
                // The end of a unit: on a replica, the next one is routed anew.
                self.route.unit_sent |= matches!(tag, tag::QUERY | tag::SYNC);
                if matches!(tag, tag::QUERY | tag::PARSE) {
                    let body = &self.rbuf[pos + HEADER_LEN..pos + len];
                    let sql = if tag == tag::PARSE {
                        read_cstr(body).map_or(&[][..], |(_, rest)| rest)
                    } else {
                        body
                    };
                    special = !crate::router::first_keyword(sql).eq_ignore_ascii_case(b"SELECT");
                    // State that cannot move between servers (a temporary
                    // table, LISTEN, ...) keeps the client on this one.
                    pin_made = self.pin_made_by(sql);
                    if special && self.watches_schema_changes() && route::changes_schema(sql) {
                        self.note_schema_change(route::changes_result_shapes(sql));
                    }
                }
            }
            if let Some(reason) = pin_made {
                if matches!(self.route.target, route::Target::Replica(_)) {
                    self.route.left_state = true;
                } else {
                    self.pin(reason);
                }
            }
            match piece {
                Piece::NeedMore => break,
                Piece::Tail { len } => pos += len,
                Piece::Head { tag, len } => {
                    srv.owed.on_client(tag);
                    pos += len;
                }
                Piece::Frame { tag, len } => match tag {
                    tag::TERMINATE => {
                        self.send_to_server(srv, flushed, pos).await?;
                        self.rbuf.clear();
                        return Err(Exit::Quit);
                    }
                    tag::PARSE | tag::BIND | tag::DESCRIBE | tag::CLOSE
                        if self.map_statements
                            && self.map_statement(srv, tag, flushed, pos, len) =>
                    {
                        describes += usize::from(tag == tag::DESCRIBE);
                        last_tag = tag;
                        pos += len;
                        flushed = pos;
                    }
                    tag::QUERY
                        if special
                            && self.map_statements
                            && self.map_sql_statement(srv, flushed, pos, len) =>
                    {
                        pos += len;
                        flushed = pos;
                    }
                    tag::QUERY => {
                        if special && self.mode != PoolMode::Session {
                            self.forget_on_deallocate_all(srv, pos, len);
                        }
                        srv.owed.on_client(tag);
                        pos += len;
                    }
                    tag::PARSE
                    | tag::BIND
                    | tag::DESCRIBE
                    | tag::EXECUTE
                    | tag::CLOSE
                    | tag::SYNC
                    | tag::FLUSH
                    | tag::FUNCTION_CALL
                    | tag::COPY_DATA
                    | tag::COPY_DONE
                    | tag::COPY_FAIL => {
                        srv.owed.on_client(tag);
                        syncs += usize::from(tag == tag::SYNC);
                        describes += usize::from(tag == tag::DESCRIBE);
                        last_tag = tag;
                        pos += len;
                    }
                    other => {
                        self.send_to_server(srv, flushed, pos).await?;
                        let msg = format!("invalid frontend message type {other}");
                        return Err(self.close(sqlstate::PROTOCOL_VIOLATION, &msg).await);
                    }
                },
            }
        }
        self.send_to_server(srv, flushed, pos).await?;
        self.stats.totals.received += pos as u64;
        // Only a batch that asks for a fresh row description is retried: a
        // client that decodes rows with a description it cached (asyncpg,
        // pgjdbc) must see PostgreSQL's error and re-prepare by itself.
        if record
            && describes > 0
            && syncs == 1
            && last_tag == tag::SYNC
            && pos <= MAX_REPLAY
            && !self.replay.statements.is_empty()
        {
            self.replay.bytes.clear();
            self.replay.bytes.extend_from_slice(&self.rbuf[..pos]);
            self.replay.state = ReplayState::Armed;
        }
        self.rbuf.advance(pos);
        // Replies the pooler answers itself are due now if nothing is owed
        // before them.
        self.to_client.clear();
        while let Some(t) = srv.owed.pop_synthetic() {
            put_empty_message(&mut self.to_client, t);
        }
        if !self.to_client.is_empty() {
            let written = self.stream.write_all(&self.to_client).await;
            self.to_client.clear();
            written.map_err(|_| Exit::Gone)?;
        }
        Ok(())
    }

    /// Rewrites a Parse, Bind, Describe or Close of a named statement onto the
    /// pooler-wide statement, preparing it on this server first where needed.
    /// Stages everything up to and including the message; false when the
    /// message should pass through unchanged (unnamed, unknown or malformed;
    /// the server then answers as PostgreSQL would).
    fn map_statement(
        &mut self,
        srv: &mut ServerConn,
        tag: u8,
        flushed: usize,
        start: usize,
        len: usize,
    ) -> bool {
        let body = &self.rbuf[start + HEADER_LEN..start + len];
        let max = self.max_prepared;
        match tag {
            tag::PARSE => {
                let Some((name, key)) = split_name(body) else {
                    return false;
                };
                if name.is_empty() {
                    return false;
                }
                let stmt = self.app.statements.get_or_insert(key);
                let bound = self.app.statements.bind(stmt);
                self.statements.insert(name, bound.clone());
                self.replay.statements.push(bound.version);
                self.to_server.extend_from_slice(&self.rbuf[flushed..start]);
                self.stats.totals.client_parses += 1;
                match srv.prepared.lookup(bound.version, srv.owed.segment()) {
                    Held::Yes => {
                        self.stats.prepared_hits += 1;
                        // Already there: answer without a round trip.
                        srv.prepared.touch(bound.version);
                        srv.owed.push(Reply::Synthetic(btag::PARSE_COMPLETE));
                    }
                    Held::Uncertain => {
                        close_on(&mut self.to_server, srv, bound.version);
                        prepare_on(&mut self.to_server, srv, &bound, true, max);
                    }
                    Held::No => prepare_on(&mut self.to_server, srv, &bound, true, max),
                }
            }
            tag::BIND => {
                let Some((portal, rest)) = split_name(body) else {
                    return false;
                };
                let Some((name, rest)) = split_name(rest) else {
                    return false;
                };
                let Some(bound) = (!name.is_empty())
                    .then(|| self.statements.get(name))
                    .flatten()
                    .cloned()
                else {
                    return false;
                };
                self.replay.statements.push(bound.version);
                self.to_server.extend_from_slice(&self.rbuf[flushed..start]);
                let prefix = &body[..portal.len() + 1];
                let stale = self.app.statements.is_stale(&bound)
                    && srv.prepared.lookup(bound.version, srv.owed.segment()) == Held::No
                    && !describes_portal_next(&self.rbuf[start + len..], portal);
                if stale {
                    // Preparing the old version here would plan it in the
                    // new shape, under row descriptions the client cached
                    // before the change (a client that describes the portal
                    // gets the new shape and is safe). A name no server
                    // holds makes the server fail this Bind and skip to
                    // Sync.
                    put_renamed(
                        &mut self.to_server,
                        tag::BIND,
                        prefix,
                        b"sluice_stale",
                        rest,
                    );
                    srv.owed.push(Reply::BindComplete { stmt: None });
                    self.stale_bind = true;
                    return true;
                }
                ensure_prepared(&mut self.to_server, srv, &bound, max);
                put_renamed(
                    &mut self.to_server,
                    tag::BIND,
                    prefix,
                    &server_name(&bound),
                    rest,
                );
                srv.owed.push(Reply::BindComplete {
                    stmt: Some(bound.version),
                });
            }
            tag::DESCRIBE | tag::CLOSE => {
                let Some((&kind, rest)) = body.split_first() else {
                    return false;
                };
                let Some((name, _)) = split_name(rest) else {
                    return false;
                };
                if kind != b'S' || name.is_empty() {
                    return false;
                }
                if tag == tag::CLOSE {
                    // Only this client's name goes; the server keeps the
                    // statement for everyone else.
                    self.statements.remove(name);
                    self.to_server.extend_from_slice(&self.rbuf[flushed..start]);
                    srv.owed.push(Reply::Synthetic(btag::CLOSE_COMPLETE));
                    return true;
                }
                let Some(bound) = self.statements.get(name).cloned() else {
                    return false;
                };
                self.replay.statements.push(bound.version);
                self.to_server.extend_from_slice(&self.rbuf[flushed..start]);
                ensure_prepared(&mut self.to_server, srv, &bound, max);
                put_renamed(
                    &mut self.to_server,
                    tag::DESCRIBE,
                    b"S",
                    &server_name(&bound),
                    b"",
                );
                srv.owed.push(Reply::Describe);
            }
            _ => return false,
        }
        true
    }

    /// Puts the recorded batch back in front of the client's unread bytes; its
    /// statements have moved to a new version, which this server lacks.
    fn start_replay(&mut self) {
        tracing::info!(client = %self.peer, db = %self.database, "re-preparing statements after a schema change");
        let mut again = std::mem::take(&mut self.replay.bytes);
        again.extend_from_slice(&self.rbuf);
        self.rbuf = again;
        self.replay.state = ReplayState::Replaying;
    }

    /// `DEALLOCATE ALL` and `DISCARD ALL` drop every prepared statement on the
    /// server and in the client's session.
    /// Rewrites a single SQL-level PREPARE, EXECUTE or DEALLOCATE onto the
    /// client's server-side name, replaying the PREPARE first on a server that
    /// lacks it. False when the Query is anything else or names a statement
    /// the client never prepared (the server then answers as PostgreSQL would).
    fn map_sql_statement(
        &mut self,
        srv: &mut ServerConn,
        flushed: usize,
        start: usize,
        len: usize,
    ) -> bool {
        let body = &self.rbuf[start + HEADER_LEN..start + len];
        let Some(command) = sql_prepared::parse(body) else {
            return false;
        };
        let max = self.max_prepared;
        let sql: Vec<u8> = match command {
            SqlCommand::Prepare { name, rest } => {
                let statement = SqlStatement {
                    id: self.app.statements.fresh_id(),
                    rest: rest.into(),
                };
                let sql = statement.prepare_query();
                if let Some(evicted) =
                    srv.prepared
                        .insert_pending(statement.id, srv.owed.segment(), max)
                {
                    self.to_server.extend_from_slice(&self.rbuf[flushed..start]);
                    close_on(&mut self.to_server, srv, evicted);
                    self.sql_statements.insert(name, statement);
                    put_query(&mut self.to_server, &sql);
                    srv.owed.on_client(tag::QUERY);
                    return true;
                }
                self.sql_statements.insert(name, statement);
                sql
            }
            SqlCommand::Execute { name, rest } => {
                let Some(statement) = self.sql_statements.get(&name).cloned() else {
                    return false;
                };
                let mut sql = format!("EXECUTE {}", global_name(statement.id)).into_bytes();
                sql.extend_from_slice(rest);
                self.to_server.extend_from_slice(&self.rbuf[flushed..start]);
                self.ensure_sql_prepared(srv, &statement);
                put_query(&mut self.to_server, &sql);
                srv.owed.on_client(tag::QUERY);
                return true;
            }
            SqlCommand::Deallocate { name } => {
                let Some(statement) = self.sql_statements.get(&name).cloned() else {
                    return false;
                };
                self.to_server.extend_from_slice(&self.rbuf[flushed..start]);
                self.ensure_sql_prepared(srv, &statement);
                self.sql_statements.remove(&name);
                srv.prepared.remove(statement.id);
                put_query(
                    &mut self.to_server,
                    format!("DEALLOCATE {}", global_name(statement.id)).as_bytes(),
                );
                srv.owed.on_client(tag::QUERY);
                return true;
            }
        };
        self.to_server.extend_from_slice(&self.rbuf[flushed..start]);
        put_query(&mut self.to_server, &sql);
        srv.owed.on_client(tag::QUERY);
        true
    }

    /// Replays a client's PREPARE on a server that lacks it.
    fn ensure_sql_prepared(&mut self, srv: &mut ServerConn, statement: &SqlStatement) {
        let held = srv.prepared.lookup(statement.id, srv.owed.segment());
        if held == Held::Yes {
            srv.prepared.touch(statement.id);
            return;
        }
        if held == Held::Uncertain {
            close_on(&mut self.to_server, srv, statement.id);
        }
        if let Some(evicted) =
            srv.prepared
                .insert_pending(statement.id, srv.owed.segment(), self.max_prepared)
        {
            close_on(&mut self.to_server, srv, evicted);
        }
        put_query(&mut self.to_server, &statement.prepare_query());
        srv.owed.push(Reply::InjectedQuery);
    }

    /// Also `RESET ALL`: the server's parameters go back to its defaults, so
    /// what sluice set there is forgotten and set again at the next sync.
    fn forget_on_deallocate_all(&mut self, srv: &mut ServerConn, start: usize, len: usize) {
        let sql = &self.rbuf[start + HEADER_LEN..start + len];
        // The cheap first-keyword test keeps the common query free of work.
        let first = crate::router::first_keyword(sql);
        let candidate = ["DISCARD", "DEALLOCATE", "RESET"]
            .iter()
            .any(|w| first.eq_ignore_ascii_case(w.as_bytes()));
        if !candidate {
            return;
        }
        let (statements, parameters) = drops_all_state(sql);
        if statements && self.map_statements {
            srv.prepared.clear();
            self.statements.clear();
            self.sql_statements.clear();
        }
        if parameters {
            srv.overrides = ParamMap::new();
            self.reset_wanted();
        }
    }

    /// Sends what is staged plus the raw run `rbuf[from..to]`, in one write.
    async fn send_to_server(
        &mut self,
        srv: &mut ServerConn,
        from: usize,
        to: usize,
    ) -> Result<(), Exit> {
        let result = write_staged(&mut srv.stream, &mut self.to_server, &self.rbuf[from..to]).await;
        if let Err(e) = result {
            tracing::debug!(server = %srv.peer, "write to server failed: {e}");
            srv.broken = true;
            return Err(self.server_lost().await);
        }
        Ok(())
    }

    /// Forwards what the server sent. Returns true when the server is free for
    /// release under the pool mode.
    async fn forward_server(&mut self, srv: &mut ServerConn) -> Result<bool, Exit> {
        let mut pos = 0;
        // Start of the raw run not yet staged or sent.
        let mut flushed = 0;
        let mut idle = false;
        let mut plan_changed = false;
        let mut formats_outdated = false;
        let mut replace_error = false;
        while !idle {
            // The pooler's own replies go out as soon as everything owed
            // before them has been forwarded.
            while let Some(t) = srv.owed.pop_synthetic() {
                self.to_client.extend_from_slice(&srv.rbuf[flushed..pos]);
                flushed = pos;
                put_empty_message(&mut self.to_client, t);
            }
            let piece = match srv.scanner.next(&srv.rbuf, pos) {
                Ok(p) => p,
                Err(e) => {
                    srv.broken = true;
                    tracing::error!(client = %self.peer, db = %self.database, user = %self.user, server = %srv.peer, "server protocol error: {e}");
                    return Err(self
                        .close(
                            sqlstate::PROTOCOL_VIOLATION,
                            "server sent an invalid message",
                        )
                        .await);
                }
            };
            let (tag, len) = match piece {
                Piece::NeedMore => break,
                Piece::Tail { len } => {
                    pos += len;
                    continue;
                }
                Piece::Head { tag, len } => (tag, len),
                Piece::Frame { tag, len } => {
                    let body = &srv.rbuf[pos + HEADER_LEN..pos + len];
                    match tag {
                        btag::READY_FOR_QUERY => {
                            srv.tx_status = body.first().copied().unwrap_or(b'I');
                            self.count_query(srv.tx_status);
                            if srv.tx_status == b'I' && std::mem::take(&mut self.route.ddl_seen) {
                                // The schema change has committed (or rolled
                                // back): count it before the client, or anyone
                                // it tells, can act on it.
                                self.app.statements.schema_changed();
                            }
                        }
                        btag::PARAMETER_STATUS => self.track_parameter(srv, pos, len),
                        btag::ERROR_RESPONSE => {
                            let fields = ErrorFields::parse(body);
                            self.app.metrics.count_error(&fields.code);
                            replace_error = self.stale_bind && fields.code == "26000";
                            self.stale_bind = false;
                            plan_changed = fields.code == "0A000"
                                && fields.message == "cached plan must not change result type";
                            formats_outdated = fields.code == sqlstate::PROTOCOL_VIOLATION
                                && fields.message.starts_with("bind message has ")
                                && fields.message.contains(" result formats but query has ");
                            self.route.pending_set = None;
                            if self.route.retry.armed && route::retryable(&fields.code) {
                                // A replica refused a read before answering
                                // any of it: cut the error out, run it elsewhere.
                                self.route.retry.swallow = true;
                                if fields.is_fatal() {
                                    srv.broken = true;
                                    self.ban_attached(&fields.message);
                                }
                            } else if fields.is_fatal() {
                                srv.broken = true;
                                self.server_fatal_sent = true;
                            } else if self.replay.state == ReplayState::Armed && plan_changed {
                                // The schema changed under a mapped statement:
                                // re-prepare it and send the batch again.
                                self.replay.state = ReplayState::Swallowing;
                            }
                        }
                        _ => {}
                    }
                    (tag, len)
                }
            };
            let handled = match srv.owed.on_server(tag) {
                Ok(h) => h,
                Err(e) => {
                    srv.broken = true;
                    tracing::error!(server = %srv.peer, client = %self.peer, "server out of sync: {e}");
                    self.send_to_client(srv, flushed, pos).await?;
                    return Err(self
                        .close(
                            sqlstate::PROTOCOL_VIOLATION,
                            "server connection out of sync",
                        )
                        .await);
                }
            };
            if let Some(id) = handled.prepared {
                self.stats.totals.server_parses += 1;
                srv.prepared.confirm(id);
                if let Some(stmt) = self.statements.find(id) {
                    stmt.mark_valid();
                }
            }
            if tag == btag::ERROR_RESPONSE {
                let formats_outdated = std::mem::take(&mut formats_outdated);
                if std::mem::take(&mut plan_changed) || formats_outdated {
                    // The schema changed under this statement: new Parses get
                    // a new version with a fresh plan; a batch about to be
                    // retried moves to it too. Outdated formats (one per
                    // column of a description the client cached, met by a
                    // plan made here after the table changed, outside sluice
                    // or before it counted the change) get the error a
                    // server holding the old plan gives, which drivers
                    // answer by preparing again.
                    if let Some(old) = srv.owed.error_on_bind() {
                        if let Some(stmt) = self.statements.find(old).cloned() {
                            let new = self.app.statements.new_version(&stmt, old);
                            if self.replay.state == ReplayState::Swallowing {
                                self.statements.upgrade(old, new);
                            }
                            replace_error |= formats_outdated;
                        }
                    }
                }
                for id in srv.owed.take_failed_parses() {
                    srv.prepared.remove(id);
                    self.statements.forget_version(id);
                }
            }
            idle = handled.progress == Progress::Idle;
            if idle && self.mode == PoolMode::Statement && srv.tx_status != b'I' {
                // Statement mode cannot keep a transaction open across
                // statements: roll it back and say so instead of ReadyForQuery.
                self.send_to_client(srv, flushed, pos).await?;
                return self.refuse_transaction(srv, pos + len).await;
            }
            let swallowing = self.replay.state == ReplayState::Swallowing;
            if replace_error && handled.forward && !swallowing && !self.route.retry.swallow {
                self.to_client.extend_from_slice(&srv.rbuf[flushed..pos]);
                messages::plan_changed_error(&mut self.to_client);
                flushed = pos + len;
                replace_error = false;
                self.replay.state = ReplayState::Off;
            } else if !handled.forward || swallowing || self.route.retry.swallow {
                // A reply to a message the pooler injected, or to a batch it
                // is about to send again: cut it out.
                self.to_client.extend_from_slice(&srv.rbuf[flushed..pos]);
                flushed = pos + len;
            } else {
                if self.replay.state == ReplayState::Armed && tag != btag::NOTICE_RESPONSE {
                    // The client has seen part of the answer: no retry any more.
                    self.replay.state = ReplayState::Off;
                }
            }
            pos += len;
            if idle && self.route.retry.swallow {
                // Nothing of this attempt reaches the client.
                self.to_client.clear();
                srv.rbuf.advance(pos);
                self.route.retry_now = true;
                return Ok(true);
            }
            if idle && swallowing {
                self.send_to_client(srv, flushed, pos).await?;
                srv.rbuf.advance(pos);
                self.start_replay();
                return Ok(false);
            }
        }
        if self.route.retry.armed && !idle && self.to_client.len() + pos - flushed <= MAX_HELD {
            // A read on a replica may still be retried elsewhere: hold its
            // first replies back until it completes (or they grow large).
            self.to_client.extend_from_slice(&srv.rbuf[flushed..pos]);
            srv.rbuf.advance(pos);
            return Ok(false);
        }
        self.route.retry.armed = false;
        self.send_to_client(srv, flushed, pos).await?;
        srv.rbuf.advance(pos);
        if !idle {
            return Ok(false);
        }
        if !srv.rbuf.is_empty()
            && matches!(srv.rbuf[0], btag::ERROR_RESPONSE | btag::NOTICE_RESPONSE)
            && srv.tx_status == b'I'
            && self.mode != PoolMode::Session
            && self.route.pinned.is_none()
        {
            // The server is going away (an immediate shutdown sends a WARNING,
            // then closes; a crash of a sibling, a FATAL) right after
            // answering: the client has its whole answer; only this server
            // is lost.
            srv.broken = true;
            tracing::info!(server = %srv.peer, "server closed right after a reply: dropping it");
            return Ok(true);
        }
        if !srv.rbuf.is_empty() {
            srv.broken = true;
            tracing::error!(client = %self.peer, db = %self.database, user = %self.user, server = %srv.peer, "server sent data after its last ReadyForQuery");
            return Err(self
                .close(
                    sqlstate::PROTOCOL_VIOLATION,
                    "server connection out of sync",
                )
                .await);
        }
        if srv.tx_status == b'I' {
            self.apply_pending_set(srv);
        }
        Ok(self.mode != PoolMode::Session && srv.tx_status == b'I' && self.route.pinned.is_none())
    }

    async fn refuse_transaction(
        &mut self,
        srv: &mut ServerConn,
        consumed: usize,
    ) -> Result<bool, Exit> {
        srv.rbuf.advance(consumed);
        if srv.rollback().await.is_err() || !srv.rbuf.is_empty() {
            srv.broken = true;
            return Err(self.server_lost().await);
        }
        self.out.clear();
        messages::error(
            &mut self.out,
            Severity::Error,
            sqlstate::ACTIVE_SQL_TRANSACTION,
            "transaction blocks are not allowed in statement pooling mode; the transaction was rolled back",
        );
        messages::ready_for_query(&mut self.out, b'I');
        self.stream
            .write_all(&self.out)
            .await
            .map_err(|_| Exit::Gone)?;
        Ok(true)
    }

    /// Records a ParameterStatus the server sent while serving this client: it
    /// is now part of the client's session.
    fn track_parameter(&mut self, srv: &mut ServerConn, pos: usize, len: usize) {
        let body = srv.rbuf[pos + HEADER_LEN..pos + len].to_vec();
        if let Some((name, value)) = srv.record_parameter(&body) {
            self.reported.set(&name, &value, true);
            if !is_server_owned(&name) {
                self.wanted.set(&name, &value, true);
            }
        }
    }

    /// Sends what is staged for the client plus the raw run `rbuf[from..to]`.
    async fn send_to_client(
        &mut self,
        srv: &mut ServerConn,
        from: usize,
        to: usize,
    ) -> Result<(), Exit> {
        self.stats.totals.sent += (self.to_client.len() + to - from) as u64;
        let result = write_staged(&mut self.stream, &mut self.to_client, &srv.rbuf[from..to]).await;
        result.map_err(|_| Exit::Gone)
    }

    /// A ReadyForQuery from the server ends a query; with status idle, a
    /// transaction too.
    fn count_query(&mut self, tx_status: u8) {
        let now = Instant::now();
        self.replied_at = Some(now);
        self.stats.totals.queries += 1;
        if let Some(start) = self.query_start.take() {
            self.stats.observe(stats::QUERY, now - start);
        }
        if tx_status == b'I' {
            self.stats.totals.xacts += 1;
            if let Some(start) = self.xact_start.take() {
                self.stats.observe(stats::XACT, now - start);
            }
        }
    }

    async fn server_lost(&mut self) -> Exit {
        if self.server_fatal_sent {
            return Exit::Closed("the server ended the connection".into());
        }
        self.close(
            sqlstate::CONNECTION_FAILURE,
            "server closed the connection unexpectedly",
        )
        .await
    }

    /// Sends a FATAL error; the session ends.
    async fn close(&mut self, code: &str, message: &str) -> Exit {
        self.app.metrics.count_error(code);
        self.out.clear();
        messages::error(&mut self.out, Severity::Fatal, code, message);
        let _ = self.stream.write_all(&self.out).await;
        let _ = self.stream.flush().await;
        Exit::Closed(format!("{code}: {message}"))
    }

    fn shrink_buffer(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > MAX_IDLE_BUFFER {
            self.rbuf = BytesMut::with_capacity(INITIAL_BUFFER);
        }
    }
}

/// Prepares the client's version of a statement on the server; the client
/// sees the ParseComplete only when it asked for the Parse.
fn prepare_on(
    out: &mut BytesMut,
    srv: &mut ServerConn,
    bound: &Bound,
    client_asked: bool,
    max: usize,
) {
    let segment = srv.owed.segment();
    if let Some(evicted) = srv.prepared.insert_pending(bound.version, segment, max) {
        close_on(out, srv, evicted);
    }
    out.extend_from_slice(&bound.statement.parse_for(bound.version));
    srv.owed.push(Reply::ParseComplete {
        stmt: Some(bound.version),
        forward: client_asked,
    });
}

/// Injects a Parse before a Bind or Describe on a server that lacks the
/// statement. One whose Parse went out in an earlier segment may yet fail, so
/// it is closed (a no-op if it does not exist) and prepared again.
fn ensure_prepared(out: &mut BytesMut, srv: &mut ServerConn, bound: &Bound, max: usize) {
    match srv.prepared.lookup(bound.version, srv.owed.segment()) {
        Held::Yes => srv.prepared.touch(bound.version),
        Held::Uncertain => {
            close_on(out, srv, bound.version);
            prepare_on(out, srv, bound, false, max);
        }
        Held::No => prepare_on(out, srv, bound, false, max),
    }
}

/// Whether the frame after a Bind, if already received, is a Describe of
/// the portal it creates: the client then takes the row description from the
/// server rather than from its cache.
fn describes_portal_next(after: &[u8], portal: &[u8]) -> bool {
    let Some((&tag, rest)) = after.split_first() else {
        return false;
    };
    let Some(len) = rest.get(..4) else {
        return false;
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let Some(body) = rest.get(4..len) else {
        return false;
    };
    tag == tag::DESCRIBE
        && body.len() == portal.len() + 2
        && body[0] == b'P'
        && body[1..=portal.len()] == *portal
        && body[portal.len() + 1] == 0
}

/// The name a server knows the client's version of a statement by.
fn server_name(bound: &Bound) -> std::borrow::Cow<'_, [u8]> {
    if bound.version == bound.statement.id {
        std::borrow::Cow::Borrowed(bound.statement.name())
    } else {
        std::borrow::Cow::Owned(global_name(bound.version).into_bytes())
    }
}

/// Closes a statement the server no longer needs to hold.
fn close_on(out: &mut BytesMut, srv: &mut ServerConn, id: u64) {
    let name = global_name(id);
    out.put_u8(tag::CLOSE);
    out.put_u32((4 + 1 + name.len() + 1) as u32);
    out.put_u8(b'S');
    out.put_slice(name.as_bytes());
    out.put_u8(0);
    srv.owed.push(Reply::CloseComplete { forward: false });
}

/// Appends a simple Query message with this text.
fn put_query(out: &mut BytesMut, sql: &[u8]) {
    out.put_u8(tag::QUERY);
    out.put_u32((4 + sql.len() + 1) as u32);
    out.put_slice(sql);
    out.put_u8(0);
}

/// A message with no body (ParseComplete, CloseComplete).
fn put_empty_message(out: &mut BytesMut, tag: u8) {
    out.put_u8(tag);
    out.put_u32(4);
}

/// What a statement drops: (prepared statements, session parameters), for
/// `DEALLOCATE [PREPARE] ALL`, `DISCARD ALL` and `RESET ALL`.
fn drops_all_state(sql: &[u8]) -> (bool, bool) {
    let words = crate::router::keywords(sql, 3);
    let is = |i: usize, w: &str| {
        words
            .get(i)
            .is_some_and(|k| k.eq_ignore_ascii_case(w.as_bytes()))
    };
    let discard_all = is(0, "DISCARD") && is(1, "ALL");
    let deallocate_all =
        is(0, "DEALLOCATE") && (is(1, "ALL") || (is(1, "PREPARE") && is(2, "ALL")));
    let reset_all = is(0, "RESET") && is(1, "ALL");
    (discard_all || deallocate_all, discard_all || reset_all)
}

/// Writes `staged` followed by `raw` in one write: straight from the read
/// buffer when nothing is staged (the common case, no copy), else appended.
async fn write_staged(
    stream: &mut (impl tokio::io::AsyncWrite + Unpin),
    staged: &mut BytesMut,
    raw: &[u8],
) -> std::io::Result<()> {
    if staged.is_empty() {
        return if raw.is_empty() {
            Ok(())
        } else {
            stream.write_all(raw).await
        };
    }
    staged.extend_from_slice(raw);
    let result = stream.write_all(staged).await;
    staged.clear();
    result
}

impl Drop for Session {
    /// The end of every session, however it ended: its cancel key goes, and
    /// its counts reach the pool's.
    fn drop(&mut self) {
        self.app.cancels.unregister(self.cancel.pid);
        self.pools.stats.flush(&mut self.stats);
        self.pools
            .stats
            .clients
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Reads more bytes; false on end of stream or error. `nominal` is the size
/// the buffer was made with.
async fn read_more(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    buf: &mut BytesMut,
    nominal: usize,
) -> bool {
    if buf.is_empty() && buf.capacity() + RECLAIM_AFTER <= nominal {
        // Read into the start of the allocation again once reads have walked
        // a little way through it, not on through all of it: otherwise every
        // read lands on cache lines not touched for a while (64 KiB per
        // server connection), which costs the pooler and, by eviction, the
        // servers beside it. Not on every read: the check is a call into
        // bytes. Asking for one byte more than is left makes bytes move the
        // start back; it never allocates here.
        let _ = buf.try_reclaim(buf.capacity() + 1);
    }
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(INITIAL_BUFFER);
    }
    matches!(stream.read_buf(buf).await, Ok(n) if n > 0)
}

/// Makes room for the whole message at the head of the buffer, once.
fn reserve_for_next(buf: &mut BytesMut, scanner: &FrameScanner) {
    let want = scanner.wanted(buf, 0);
    if want > buf.len() {
        buf.reserve(want - buf.len());
    }
}

async fn sleep_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
