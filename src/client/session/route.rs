//! Where the next unit of a client's work runs: the routing half of a session.
//!
//! A unit is what runs between two idle points of a server outside a
//! transaction: one simple Query, or extended-protocol messages up to a Sync.
//! With no server attached, the session looks at the unit at the head of its
//! buffer and picks the primary or a replica for it:
//! - a unit whose every statement is provably read-only goes to a fit replica
//!   that has replayed the client's last write (read-your-writes), else to the
//!   primary (or fails, with `replica_fallback = "error"`);
//! - a simple-Query BEGIN is answered by sluice and held until the first
//!   statement of its transaction: READ ONLY transactions run whole on one
//!   replica, every other one whole on the primary;
//! - a statement that creates state that cannot move between servers
//!   (temporary tables, session advisory locks, WITH HOLD cursors, LISTEN)
//!   pins the client to its server until it leaves.
//!
//! On a replica only the unit itself is forwarded; the next one is routed on
//! its own once the replica is idle again. A read that fails on a replica
//! before any reply reached the client is run again elsewhere, once.

use bytes::{Buf, BytesMut};
use std::time::Instant;

use super::{Exit, Session};
use crate::config::{Consistency, PoolMode, ReplicaFallback};
use crate::metrics::RouteReason;
use crate::pool::PoolGroup;
use crate::protocol::frames::HEADER_LEN;
use crate::protocol::messages::{self, sqlstate, Severity};
use crate::protocol::{read_cstr, tag};
use crate::router::classify::{Kind, PinReason, Target as Class};
use crate::router::replicas::{NoReplica, SchemaChange};
use crate::router::session_state::{parse_set, SetChange};
use crate::router::summary::summarize_bytes;
use crate::router::{Summary, SummaryMemo};
use crate::server::{ParamMap, Reply, ServerConn};

/// The server a unit runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Primary,
    Replica(usize),
}

/// A BEGIN answered by sluice, not yet sent to any server.
pub struct HeldBegin {
    sql: Vec<u8>,
    read_only: Option<bool>,
    serializable: bool,
}

/// The unit kept while a read on a replica may still be retried.
#[derive(Default)]
pub struct ReadRetry {
    bytes: BytesMut,
    /// Nothing of the reply has reached the client yet.
    pub armed: bool,
    /// The replica refused the read: its replies are cut out up to ReadyForQuery.
    pub swallow: bool,
    /// This unit was retried once already.
    used: bool,
    replica: usize,
}

pub struct RouteState {
    /// Reads may go to replicas for this client.
    enabled: bool,
    /// Track SET/RESET so that settings follow the client (not session mode).
    track_sets: bool,
    pub target: Target,
    /// Forward only the current unit (a read on a replica).
    pub unit_only: bool,
    /// The current unit's end has been forwarded.
    pub unit_sent: bool,
    /// The current attachment may write: it sets `last_write` when it ends.
    writes: bool,
    pub held_begin: Option<HeldBegin>,
    /// The held BEGIN goes to the server before the client's first statement.
    inject_begin: Option<Vec<u8>>,
    /// When the client's last write finished, until resolved to `min_lsn`.
    last_write: Option<Instant>,
    /// The WAL position a replica must have replayed to serve this client.
    min_lsn: u64,
    pub retry: ReadRetry,
    /// Set when the replica's refusal has been cut out: run the unit again.
    pub retry_now: bool,
    pub pinned: Option<PinReason>,
    /// This attachment made state a pin would keep where no pin is taken
    /// (on a replica): the server is reset when it is released.
    pub left_state: bool,
    /// A SET or RESET in flight, applied once the server accepts it.
    pub pending_set: Option<SetChange>,
    /// The client's startup parameters: what RESET goes back to.
    pub startup: ParamMap,
    /// The attached server runs a schema change of this client's.
    schema_change: Option<SchemaChange>,
    /// This attachment sent a schema change that may change result shapes
    /// (routing on or off).
    pub ddl_seen: bool,
    /// Why the current unit goes where it goes (for the metrics).
    pub reason: RouteReason,
    /// The last extended-protocol texts routed and their summaries.
    memo: SummaryMemo,
}

impl RouteState {
    pub fn new(pools: &PoolGroup, mode: PoolMode, wanted: &ParamMap) -> RouteState {
        RouteState {
            enabled: mode != PoolMode::Session && !pools.primary_only && pools.routing.routes(),
            track_sets: mode != PoolMode::Session,
            target: Target::Primary,
            unit_only: false,
            unit_sent: false,
            writes: true,
            held_begin: None,
            inject_begin: None,
            last_write: None,
            min_lsn: 0,
            retry: ReadRetry::default(),
            retry_now: false,
            pinned: None,
            left_state: false,
            pending_set: None,
            startup: wanted.clone(),
            schema_change: None,
            ddl_seen: false,
            reason: RouteReason::Write,
            memo: SummaryMemo::default(),
        }
    }

    /// Follows the client to the pools a reload put in place of its own.
    pub fn rebind(&mut self, pools: &PoolGroup, mode: PoolMode) {
        self.enabled = mode != PoolMode::Session
            && !pools.primary_only
            && pools.routing.routes()
            && self.pinned.is_none();
        self.target = Target::Primary;
    }
}

/// Most settings (SET outside a transaction) kept for one client, and the
/// most bytes of their names and values. Bringing a server in line compares
/// every setting with the server's, so the count is kept well below the
/// ~350 parameters PostgreSQL has; clients set a handful.
const MAX_TRACKED_SETTINGS: usize = 256;
const MAX_TRACKED_SETTING_BYTES: usize = 256 * 1024;

/// Largest read unit kept for a retry elsewhere.
const MAX_RETRY_UNIT: usize = 64 * 1024;

/// Errors a replica gives for a read that the primary (or another replica)
/// would serve: shutting down or starting, read-only violations, lost
/// connections and recovery conflicts.
pub fn retryable(code: &str) -> bool {
    matches!(code, "25006" | "57P01" | "57P02" | "57P03" | "40001") || code.starts_with("08")
}

/// What the unit at the head of the client's buffer is.
struct Unit {
    /// Bytes through the unit's end (its Query, or its first Sync); `None`
    /// when the end has not arrived yet.
    len: Option<usize>,
    /// Every statement in it may run on a replica.
    read: bool,
    /// One simple Query of exactly one statement, alone in the unit: its kind.
    single: Option<Kind>,
    /// The first statement's kind.
    first: Option<Kind>,
    pin: Option<PinReason>,
    /// It only changes session settings (SET, RESET, DISCARD): it writes no
    /// data, so read-your-writes need not wait for it.
    settings_only: bool,
    /// It runs something (a Query or an Execute), not only a prepare.
    executes: bool,
}

impl Session {
    /// Decides where the unit at the head of the buffer runs. `None` when
    /// sluice answered it itself (a held BEGIN, or the end of an empty
    /// transaction) or refused it.
    pub(super) async fn plan(&mut self) -> Result<Option<Target>, Exit> {
        self.route.unit_sent = false;
        self.route.unit_only = false;
        self.route.pending_set = None;
        if self.route.track_sets && self.route.held_begin.is_none() {
            self.route.pending_set = self.set_at_head();
            if self
                .route
                .pending_set
                .as_ref()
                .is_some_and(|c| self.over_set_limit(c))
            {
                return self.refuse_set().await;
            }
        }
        if !self.route.enabled {
            self.route.writes = true;
            self.route.reason = if self.route.pinned.is_some() {
                RouteReason::Pinned
            } else {
                RouteReason::RoutingOff
            };
            return Ok(Some(Target::Primary));
        }
        let unit = self.inspect_unit();
        tracing::trace!(client = %self.peer, len = ?unit.len, read = unit.read, first = ?unit.first, pin = ?unit.pin, "unit");
        if let Some(held) = self.route.held_begin.take() {
            return self.plan_held(held, &unit).await;
        }
        if let (Some(Kind::Begin { read_only }), Some(len)) = (unit.single, unit.len) {
            if self.mode == PoolMode::Transaction && unit.pin.is_none() {
                return self.hold_begin(len, read_only).await;
            }
        }
        if let Some(reason) = unit.pin {
            self.pin(reason);
            self.route.writes = true;
            self.route.reason = RouteReason::Pinned;
            return Ok(Some(Target::Primary));
        }
        let (true, Some(len)) = (unit.read, unit.len) else {
            // A unit not all here yet may still hold a write.
            self.route.writes = !(unit.settings_only && unit.len.is_some());
            self.route.reason = RouteReason::Write;
            return Ok(Some(Target::Primary));
        };
        self.route.writes = false;
        self.route.reason = RouteReason::Read;
        let exclude = self.retry_exclude();
        match self.choose_replica(exclude, unit.executes) {
            Ok(Target::Replica(i)) => {
                self.arm_retry(len, i);
                self.route.unit_only = true;
                Ok(Some(Target::Replica(i)))
            }
            Ok(t) => {
                self.route.retry.used = false;
                Ok(Some(t))
            }
            Err(()) => self.refuse_read(len).await,
        }
    }

    /// The held BEGIN's transaction starts with this unit.
    async fn plan_held(&mut self, held: HeldBegin, unit: &Unit) -> Result<Option<Target>, Exit> {
        if let (Some(k @ (Kind::Commit | Kind::Rollback)), Some(len)) = (unit.single, unit.len) {
            // Nothing ran: end the empty transaction here.
            self.rbuf.advance(len);
            self.out.clear();
            let tag = if k == Kind::Commit {
                "COMMIT"
            } else {
                "ROLLBACK"
            };
            messages::command_complete(&mut self.out, tag);
            messages::ready_for_query(&mut self.out, b'I');
            self.write_out().await?;
            return Ok(None);
        }
        let read_only = match unit.first {
            Some(Kind::SetTransaction {
                read_only: Some(ro),
            }) => Some(ro),
            _ => held.read_only,
        }
        .unwrap_or_else(|| self.default_read_only());
        self.route.inject_begin = Some(held.sql);
        if unit.pin.is_some() || !read_only || held.serializable {
            // Serializable transactions cannot run on a standby.
            self.route.writes = true;
            self.route.reason = RouteReason::Transaction;
            if let Some(reason) = unit.pin {
                self.pin(reason);
            }
            return Ok(Some(Target::Primary));
        }
        self.route.writes = false;
        self.route.reason = RouteReason::ReadOnlyTransaction;
        match self.choose_replica(None, true) {
            Ok(t) => Ok(Some(t)),
            Err(()) => {
                // No replica may serve it: run it on the primary, where a READ
                // ONLY transaction is just as correct.
                Ok(Some(Target::Primary))
            }
        }
    }

    /// Answers a lone BEGIN and keeps it until the transaction's first statement.
    async fn hold_begin(
        &mut self,
        len: usize,
        read_only: Option<bool>,
    ) -> Result<Option<Target>, Exit> {
        let body = &self.rbuf[HEADER_LEN..len];
        let sql = body.strip_suffix(b"\0").unwrap_or(body).to_vec();
        let serializable = contains_word(&sql, b"SERIALIZABLE");
        self.rbuf.advance(len);
        self.route.held_begin = Some(HeldBegin {
            sql,
            read_only,
            serializable,
        });
        self.out.clear();
        messages::command_complete(&mut self.out, "BEGIN");
        messages::ready_for_query(&mut self.out, b'T');
        self.write_out().await?;
        Ok(None)
    }

    /// Whether keeping `change` would take the client's settings past what
    /// sluice keeps for one client (each is replayed on every server that
    /// serves it).
    fn over_set_limit(&self, change: &SetChange) -> bool {
        let SetChange::Set { name, value } = change else {
            return false;
        };
        let (entries, old) = match self.wanted.get(name) {
            Some(v) => (self.wanted.len(), name.len() + v.len()),
            None => (self.wanted.len() + 1, 0),
        };
        entries > MAX_TRACKED_SETTINGS
            || self.wanted.bytes() - old + name.len() + value.len() > MAX_TRACKED_SETTING_BYTES
    }

    /// The SET at the head of the buffer fails: the client has too many.
    async fn refuse_set(&mut self) -> Result<Option<Target>, Exit> {
        self.route.pending_set = None;
        let len = frame_len(&self.rbuf, 0).unwrap_or(self.rbuf.len());
        self.rbuf.advance(len);
        self.out.clear();
        let msg = format!(
            "sluice keeps at most {MAX_TRACKED_SETTINGS} settings, {} KiB in all, per client in transaction and statement mode",
            MAX_TRACKED_SETTING_BYTES / 1024
        );
        messages::error(
            &mut self.out,
            Severity::Error,
            sqlstate::PROGRAM_LIMIT_EXCEEDED,
            &msg,
        );
        messages::ready_for_query(&mut self.out, b'I');
        self.write_out().await?;
        Ok(None)
    }

    /// With `replica_fallback = "error"` and no replica fit: the unit fails.
    async fn refuse_read(&mut self, len: usize) -> Result<Option<Target>, Exit> {
        self.rbuf.advance(len);
        self.out.clear();
        messages::error(
            &mut self.out,
            Severity::Error,
            sqlstate::CANNOT_CONNECT_NOW,
            "no replica can serve this read now (replica_fallback = \"error\")",
        );
        messages::ready_for_query(&mut self.out, b'I');
        self.write_out().await?;
        Ok(None)
    }

    async fn write_out(&mut self) -> Result<(), Exit> {
        use tokio::io::AsyncWriteExt;
        self.stream
            .write_all(&self.out)
            .await
            .map_err(|_| Exit::Gone)
    }

    /// The session's `default_transaction_read_only`, as the client set it.
    fn default_read_only(&self) -> bool {
        self.wanted
            .get("default_transaction_read_only")
            .is_some_and(|v| {
                matches!(
                    v.trim_matches('\'').to_ascii_lowercase().as_str(),
                    "on" | "true" | "yes" | "1"
                )
            })
    }

    /// The pin a Query or Parse text makes, looked for as it is forwarded:
    /// the router planned only the first unit of a batch, and nothing inside
    /// a transaction or with routing off. Texts without a pinning word cost
    /// one byte scan. The caller does not pin on a replica (a READ ONLY
    /// transaction's): a client kept there could never write again.
    pub(super) fn pin_made_by(&self, sql: &[u8]) -> Option<PinReason> {
        if self.mode == PoolMode::Session
            || self.route.pinned.is_some()
            || !crate::router::may_pin(sql)
        {
            return None;
        }
        // A Parse's text ends at its NUL; parameter types follow.
        let text = sql.split(|&b| b == 0).next().unwrap_or(sql);
        let policy = self.pools.routing.policy();
        summarize_bytes(&self.app.classifier, text, &policy).pins
    }

    /// Keeps the client on its server connection until it disconnects.
    pub(super) fn pin(&mut self, reason: PinReason) {
        if self.route.pinned.is_none() {
            tracing::info!(client = %self.peer, db = %self.database, user = %self.user, ?reason, "client pinned to its server connection until it disconnects");
            self.app.count_pin(reason);
        }
        self.route.pinned = Some(reason);
        self.route.enabled = false;
    }

    /// A fit replica for a read by this client, or the primary when none has
    /// replayed its last write. `Err` when none is fit and reads must not fall
    /// back to the primary.
    fn choose_replica(&mut self, exclude: Option<usize>, advance: bool) -> Result<Target, ()> {
        let routing = &self.pools.routing;
        let ryw = routing.config.routing.consistency == Consistency::ReadYourWrites;
        if ryw {
            if let Some(at) = self.route.last_write {
                match routing.lsn_after(at) {
                    Some(lsn) => {
                        self.route.min_lsn = self.route.min_lsn.max(lsn);
                        self.route.last_write = None;
                    }
                    // The primary has not been sampled since the write.
                    None => {
                        self.route.reason = RouteReason::ReadYourWrites;
                        return Ok(Target::Primary);
                    }
                }
            }
        }
        // Every client sees a schema change once it has committed: a
        // statement prepared on a replica that lacks it would have the old
        // shape.
        let Some(schema_lsn) = routing.schema_lsn() else {
            self.route.reason = RouteReason::ReadYourWrites;
            return Ok(Target::Primary);
        };
        let min_lsn = if ryw { self.route.min_lsn } else { 0 }.max(schema_lsn);
        tracing::trace!(client = %self.peer, min_lsn = format_args!("{min_lsn:X}"), "choosing a replica");
        let replicas = &self.pools.replicas;
        match routing.pick(min_lsn, exclude, advance, |i| replicas[i].in_use()) {
            Ok(i) => Ok(Target::Replica(i)),
            Err(NoReplica::NotCaughtUp) => {
                self.route.reason = RouteReason::ReadYourWrites;
                Ok(Target::Primary)
            }
            Err(NoReplica::Unfit) => match routing.config.routing.replica_fallback {
                ReplicaFallback::Primary => {
                    self.route.reason = RouteReason::NoReplica;
                    Ok(Target::Primary)
                }
                ReplicaFallback::Error => Err(()),
            },
        }
    }

    fn arm_retry(&mut self, len: usize, replica: usize) {
        let r = &mut self.route.retry;
        r.swallow = false;
        if r.used || len > MAX_RETRY_UNIT {
            // Retried once already, or too large to keep a copy of.
            r.used = false;
            r.armed = false;
            return;
        }
        r.bytes.clear();
        r.bytes.extend_from_slice(&self.rbuf[..len]);
        r.armed = true;
        r.replica = replica;
    }

    /// Puts a unit that failed on a replica back in front of the buffer and
    /// marks it to run elsewhere.
    pub(super) fn restore_retry(&mut self) {
        let r = &mut self.route.retry;
        let mut again = std::mem::take(&mut r.bytes);
        again.extend_from_slice(&self.rbuf);
        self.rbuf = again;
        r.armed = false;
        r.swallow = false;
        r.used = true;
        // Replies held back from the failed attempt never reach the client.
        self.to_client.clear();
        self.route.retry_now = false;
        self.route.unit_sent = false;
        self.replay.state = super::ReplayState::Off;
        tracing::info!(client = %self.peer, db = %self.database, replica = %self.pools.routing.replicas[r.replica].addr, "read failed on a replica before any reply: running it elsewhere");
    }

    /// The replica to leave out when re-planning a retried unit.
    pub(super) fn retry_exclude(&self) -> Option<usize> {
        self.route.retry.used.then_some(self.route.retry.replica)
    }

    /// Bans the attached replica after a connection failure.
    pub(super) fn ban_attached(&self, why: &str) {
        if let Target::Replica(i) = self.route.target {
            let ban = self.pools.routing.config.routing.ban_time.0;
            self.pools.routing.replicas[i].ban(ban, why);
        }
    }

    /// Picks the pool to check out from; after a replica failed to connect,
    /// another one or the primary.
    pub(super) fn fallback_after_connect_failure(&mut self, failed: usize) -> Target {
        let ban = self.pools.routing.config.routing.ban_time.0;
        self.pools.routing.replicas[failed].ban(ban, "cannot connect");
        self.route.unit_only = false;
        self.route.retry.armed = false;
        match self.choose_replica(Some(failed), true) {
            Ok(Target::Replica(i)) => {
                self.route.unit_only = self.route.inject_begin.is_none();
                Target::Replica(i)
            }
            _ => Target::Primary,
        }
    }

    /// The held BEGIN, staged to go out before the client's statement.
    pub(super) fn stage_begin(&mut self, srv: &mut ServerConn) {
        if let Some(sql) = self.route.inject_begin.take() {
            use bytes::BufMut;
            self.to_server.put_u8(tag::QUERY);
            self.to_server.put_u32((4 + sql.len() + 1) as u32);
            self.to_server.extend_from_slice(&sql);
            self.to_server.put_u8(0);
            srv.owed.push(Reply::InjectedQuery);
        }
    }

    /// Bookkeeping when the server goes back: a primary attachment that may
    /// have written dates the client's last write (read-your-writes).
    pub(super) fn on_release(&mut self) {
        // Dropping the guard dates the schema change for everyone.
        self.route.schema_change = None;
        if std::mem::take(&mut self.route.ddl_seen) {
            // Its transaction ended without a ReadyForQuery seen (the
            // client or the server went away): count it anyway.
            self.app.statements.schema_changed();
        }
        if self.route.target == Target::Primary && self.route.writes && self.route.enabled {
            self.route.last_write = Some(Instant::now());
        }
    }

    /// Whether Query and Parse texts are checked for schema changes: not
    /// once this attachment has been seen to make one.
    pub(super) fn watches_schema_changes(&self) -> bool {
        !self.route.ddl_seen && self.route.schema_change.is_none()
    }

    /// The client sent a schema change. Prepared statements from before it
    /// get new versions once it ends (`Registry::schema_changed`), and with routing on no
    /// client reads from a replica until it has replayed the change (see
    /// `choose_replica`).
    pub(super) fn note_schema_change(&mut self, shapes: bool) {
        // Counted once its transaction ends: a statement prepared while it
        // runs gets the old shape, and is known stale after the count.
        if shapes {
            self.route.ddl_seen = true;
            self.app.statements.schema_change_started();
        }
        if self.route.enabled {
            self.route.schema_change = Some(SchemaChange::start(&self.pools.routing));
        }
    }

    /// A server accepted the client's SET or RESET: remember it so it follows
    /// the client to every other server.
    pub(super) fn apply_pending_set(&mut self, srv: &mut ServerConn) {
        let Some(change) = self.route.pending_set.take() else {
            return;
        };
        match change {
            SetChange::Set { name, value } => {
                // Reported parameters came back as ParameterStatus already.
                if srv.defaults.get(&name).is_none() {
                    self.wanted.set_raw(&name, &value);
                    srv.overrides.set_raw(&name, &value);
                }
            }
            SetChange::Reset { name } => {
                if srv.defaults.get(&name).is_none() {
                    srv.overrides.remove(&name);
                }
                match self.route.startup.get(&name).map(str::to_string) {
                    Some(v) => self.wanted.set(&name, &v, false),
                    None => self.wanted.remove(&name),
                }
            }
        }
    }

    /// `RESET ALL` / `DISCARD ALL`: the client's settings go back to the ones
    /// it logged in with.
    pub(super) fn reset_wanted(&mut self) {
        self.wanted = self.route.startup.clone();
    }

    /// A trackable SET or RESET as the whole unit.
    fn set_at_head(&self) -> Option<SetChange> {
        if self.rbuf.first() != Some(&tag::QUERY) || self.rbuf.len() < HEADER_LEN {
            return None;
        }
        let len = frame_len(&self.rbuf, 0)?;
        let body = self.rbuf.get(HEADER_LEN..len)?;
        let first = crate::router::first_keyword(body);
        if !(first.eq_ignore_ascii_case(b"SET") || first.eq_ignore_ascii_case(b"RESET")) {
            return None;
        }
        parse_set(body)
    }

    /// Looks at the unit at the head of the buffer.
    fn inspect_unit(&mut self) -> Unit {
        let mut unit = Unit {
            len: None,
            read: true,
            single: None,
            first: None,
            pin: None,
            settings_only: true,
            executes: false,
        };
        let policy = self.pools.routing.policy();
        let classifier = &self.app.classifier;
        let memo = &mut self.route.memo;
        let note = |unit: &mut Unit, s: Summary| {
            unit.read &= s.target == Class::Replica;
            unit.settings_only &= s.statements == 1
                && matches!(
                    s.first,
                    Some(Kind::SetSession | Kind::Reset | Kind::ResetAll | Kind::DiscardAll)
                );
            if unit.first.is_none() {
                unit.first = s.first;
            }
            if unit.pin.is_none() {
                unit.pin = s.pins;
            }
        };
        let mut pos = 0;
        let mut unnamed_parsed = false;
        while let Some(len) = frame_len(&self.rbuf, pos) {
            let body = &self.rbuf[pos + HEADER_LEN..pos + len];
            let tag = self.rbuf[pos];
            pos += len;
            match tag {
                tag::QUERY => {
                    unit.executes = true;
                    let sql = body.strip_suffix(b"\0").unwrap_or(body);
                    // Simple Query texts carry their literals and seldom
                    // repeat: not memoised.
                    let s = summarize_bytes(classifier, sql, &policy);
                    // Only a unit that is this Query alone may be answered by
                    // sluice (a held BEGIN, an empty transaction's end): after
                    // extended-protocol messages it is just the unit's end.
                    if s.statements == 1 && pos == len {
                        unit.single = s.first;
                    }
                    note(&mut unit, s);
                    unit.len = Some(pos);
                    return unit;
                }
                tag::PARSE => {
                    let Some((name, rest)) = read_cstr(body) else {
                        unit.read = false;
                        return unit;
                    };
                    let sql = rest.split(|&b| b == 0).next().unwrap_or(b"");
                    note(&mut unit, memo.summarize(classifier, sql, &policy));
                    unnamed_parsed |= name.is_empty();
                }
                tag::BIND => {
                    let name = read_cstr(body)
                        .and_then(|(_, r)| read_cstr(r))
                        .map(|(n, _)| n);
                    match name {
                        Some("") if unnamed_parsed => {}
                        Some(n) if !n.is_empty() => match self.statements.get(n.as_bytes()) {
                            Some(bound) => {
                                let key = bound.statement.key();
                                let sql = key.split(|&b| b == 0).next().unwrap_or(b"");
                                note(&mut unit, memo.summarize(classifier, sql, &policy));
                            }
                            None => unit.read = false,
                        },
                        _ => unit.read = false,
                    }
                }
                tag::EXECUTE => unit.executes = true,
                tag::DESCRIBE | tag::CLOSE | tag::FLUSH => {}
                tag::SYNC => {
                    unit.len = Some(pos);
                    return unit;
                }
                _ => {
                    unit.read = false;
                    return unit;
                }
            }
        }
        unit
    }
}

/// A statement that changes the schema, by its first keyword.
pub fn changes_schema(sql: &[u8]) -> bool {
    const DDL: [&str; 8] = [
        "CREATE", "ALTER", "DROP", "TRUNCATE", "COMMENT", "GRANT", "REVOKE", "REFRESH",
    ];
    let first = crate::router::first_keyword(sql);
    DDL.iter().any(|w| first.eq_ignore_ascii_case(w.as_bytes()))
}

/// A schema change that may change the result shape of statements other
/// sessions prepared: CREATE (not of a temporary object), ALTER or DROP.
pub fn changes_result_shapes(sql: &[u8]) -> bool {
    let first = crate::router::first_keyword(sql);
    if first.eq_ignore_ascii_case(b"ALTER") || first.eq_ignore_ascii_case(b"DROP") {
        return true;
    }
    if !first.eq_ignore_ascii_case(b"CREATE") {
        return false;
    }
    // TEMP comes among the modifiers before the object's kind.
    for w in crate::router::keywords(sql, 5).into_iter().skip(1) {
        if w.eq_ignore_ascii_case(b"TEMP") || w.eq_ignore_ascii_case(b"TEMPORARY") {
            return false;
        }
        let modifier = [&b"OR"[..], b"REPLACE", b"LOCAL", b"GLOBAL"]
            .iter()
            .any(|m| w.eq_ignore_ascii_case(m));
        if !modifier {
            break;
        }
    }
    true
}

/// The length of the complete message at `pos`, if it is all there.
fn frame_len(buf: &[u8], pos: usize) -> Option<usize> {
    let h = buf.get(pos..pos + HEADER_LEN)?;
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize + 1;
    (len >= HEADER_LEN && buf.len() >= pos + len).then_some(len)
}

/// A case-insensitive whole-word search (the SQL has been parsed already).
fn contains_word(sql: &[u8], word: &[u8]) -> bool {
    sql.windows(word.len()).enumerate().any(|(i, w)| {
        w.eq_ignore_ascii_case(word)
            && (i == 0 || !sql[i - 1].is_ascii_alphanumeric())
            && sql
                .get(i + word.len())
                .is_none_or(|c| !c.is_ascii_alphanumeric())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_shape_changes() {
        for sql in [
            "ALTER TABLE t ADD COLUMN c int",
            "drop view v",
            "CREATE OR REPLACE VIEW v AS SELECT 1",
            "CREATE TABLE t (temp int)",
        ] {
            assert!(changes_result_shapes(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "CREATE TEMP TABLE t (a int)",
            "create local temporary table t (a int)",
            "CREATE OR REPLACE TEMP VIEW v AS SELECT 1",
            "TRUNCATE t",
            "GRANT SELECT ON t TO u",
            "SELECT 1",
        ] {
            assert!(!changes_result_shapes(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn schema_changes_by_first_keyword() {
        for sql in [
            "ALTER TABLE t ADD c int",
            " create index i on t(a)",
            "/* x */ DROP VIEW v",
            "truncate t",
            "GRANT SELECT ON t TO u",
            "REFRESH MATERIALIZED VIEW m",
        ] {
            assert!(changes_schema(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "SELECT 1",
            "INSERT INTO t VALUES (1)",
            "-- ALTER\nSELECT 1",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "",
        ] {
            assert!(!changes_schema(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn retryable_codes() {
        for code in [
            "25006", "57P01", "57P02", "57P03", "40001", "08006", "08P01",
        ] {
            assert!(retryable(code), "{code}");
        }
        for code in ["42P01", "23505", "57014", "0A000"] {
            assert!(!retryable(code), "{code}");
        }
    }

    #[test]
    fn whole_words_only() {
        assert!(contains_word(
            b"BEGIN ISOLATION LEVEL SERIALIZABLE",
            b"SERIALIZABLE"
        ));
        assert!(contains_word(
            b"begin isolation level serializable, read only",
            b"SERIALIZABLE"
        ));
        assert!(!contains_word(
            b"BEGIN /* NOTSERIALIZABLEX */",
            b"SERIALIZABLE"
        ));
    }
}
