//! Named prepared statements across pooled servers.
//!
//! In transaction and statement mode a client's next transaction may run on
//! another server, where its statement names mean nothing. So sluice gives each
//! distinct statement (its text and parameter types) one pooler-wide name,
//! `sluice_<id>`, maps each client's names onto those, and prepares a statement
//! on a server the first time that server needs it. Statement texts are stored
//! once, in the registry, and shared by reference by every client.

use bytes::{BufMut, Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One distinct statement: text and parameter types, with its pooler-wide name.
#[derive(Debug)]
pub struct Statement {
    pub id: u64,
    /// The whole Parse message under the pooler-wide name, ready to send.
    pub parse: Bytes,
    /// Offset in `parse` where the name ends and the query text begins.
    key_at: usize,
    /// Some server has accepted this statement's Parse.
    valid: AtomicBool,
    /// The version clients preparing it now get. A version is what servers
    /// hold, under the name `sluice_<version>`; a schema change that makes a
    /// server refuse the cached plan starts a new version, so that new Parses
    /// get a fresh plan while clients still bound to the old version keep
    /// getting PostgreSQL's error (their cached row descriptions are stale).
    version: AtomicU64,
    /// The registry's schema epoch when `version` began.
    epoch: AtomicU64,
}

impl Statement {
    /// The pooler-wide name, as a slice of the Parse message (no NUL).
    pub fn name(&self) -> &[u8] {
        &self.parse[5..self.key_at - 1]
    }

    /// Query text and parameter types: what makes two statements the same.
    pub fn key(&self) -> &[u8] {
        &self.parse[self.key_at..]
    }

    /// A server accepted the Parse once: a client's Parse of it can be
    /// answered without a server.
    pub fn is_valid(&self) -> bool {
        self.valid.load(Ordering::Relaxed)
    }

    pub fn mark_valid(&self) {
        self.valid.store(true, Ordering::Relaxed);
    }

    /// The version a Parse of this statement gets now.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }

    /// The Parse message that prepares `version` of this statement.
    pub fn parse_for(&self, version: u64) -> Bytes {
        if version == self.id {
            return self.parse.clone();
        }
        let name = global_name(version);
        let key = self.key();
        let mut parse = BytesMut::with_capacity(5 + name.len() + 1 + key.len());
        parse.put_u8(b'P');
        parse.put_u32((4 + name.len() + 1 + key.len()) as u32);
        parse.put_slice(name.as_bytes());
        parse.put_u8(0);
        parse.put_slice(key);
        parse.freeze()
    }

    /// Bytes this statement holds in memory.
    pub fn size(&self) -> usize {
        self.parse.len() + std::mem::size_of::<Statement>()
    }
}

/// Pooler-wide name for a statement id.
pub fn global_name(id: u64) -> String {
    format!("sluice_{id}")
}

/// Every distinct statement any client has prepared, bounded in bytes: when
/// over the limit, statements no client holds any more are forgotten.
pub struct Registry {
    inner: Mutex<Inner>,
    max_bytes: usize,
    /// Counts the schema changes clients ran through sluice. A statement
    /// version from an older epoch may have another result shape now: a new
    /// Parse gets a new version, and a client bound to the old one is not
    /// planned afresh on a server that never held it.
    schema_epoch: AtomicU64,
    /// Schema changes sent and not yet counted in `schema_epoch`.
    schema_in_flight: AtomicU64,
}

struct Inner {
    by_key: HashMap<Bytes, Arc<Statement>>,
    next_id: u64,
    bytes: usize,
}

impl Registry {
    pub fn new(max_bytes: usize) -> Registry {
        Registry {
            inner: Mutex::new(Inner {
                by_key: HashMap::new(),
                next_id: 1,
                bytes: 0,
            }),
            max_bytes,
            schema_epoch: AtomicU64::new(0),
            schema_in_flight: AtomicU64::new(0),
        }
    }

    pub fn schema_epoch(&self) -> u64 {
        self.schema_epoch.load(Ordering::Acquire)
    }

    /// A client sent a schema change; `schema_changed` follows when its
    /// transaction ends.
    pub fn schema_change_started(&self) {
        self.schema_in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// A schema change's transaction ended.
    pub fn schema_changed(&self) {
        self.schema_epoch.fetch_add(1, Ordering::AcqRel);
        let _ = self
            .schema_in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// What a client's Parse of `statement` binds to now: its current
    /// version, or a new one if the schema changed since that version began.
    pub fn bind(&self, statement: Arc<Statement>) -> Bound {
        let epoch = self.schema_epoch();
        if statement.epoch.load(Ordering::Acquire) < epoch {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if statement.epoch.load(Ordering::Acquire) < epoch {
                inner.start_version(&statement, epoch);
            }
        }
        Bound {
            version: statement.version(),
            epoch: statement.epoch.load(Ordering::Acquire),
            statement,
        }
    }

    /// Whether `statement`'s current version began after the last schema
    /// change, so a Parse of it may be answered without a server.
    pub fn is_current(&self, statement: &Statement) -> bool {
        statement.epoch.load(Ordering::Acquire) >= self.schema_epoch()
    }

    /// Whether a client bound to `bound` may have a row description from
    /// before a schema change.
    pub fn is_stale(&self, bound: &Bound) -> bool {
        bound.version != bound.statement.version() || bound.epoch < self.schema_epoch()
    }

    /// The statement for a Parse body's text and types (`key`), registering it
    /// on first sight.
    pub fn get_or_insert(&self, key: &[u8]) -> Arc<Statement> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = inner.by_key.get(key) {
            return s.clone();
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let name = global_name(id);
        let mut parse = BytesMut::with_capacity(5 + name.len() + 1 + key.len());
        parse.put_u8(b'P');
        parse.put_u32((4 + name.len() + 1 + key.len()) as u32);
        parse.put_slice(name.as_bytes());
        parse.put_u8(0);
        let key_at = parse.len();
        parse.put_slice(key);
        let parse = parse.freeze();
        let statement = Arc::new(Statement {
            id,
            parse,
            key_at,
            valid: AtomicBool::new(false),
            version: AtomicU64::new(id),
            epoch: AtomicU64::new(self.schema_epoch()),
        });
        inner.bytes += statement.size() + statement.key().len();
        if inner.bytes > self.max_bytes {
            inner.evict_unused();
        }
        let stored_key = statement.parse.slice(key_at..);
        inner.by_key.insert(stored_key, statement.clone());
        statement
    }

    /// The statement for `key`, if known and accepted by a server before.
    pub fn get_valid(&self, key: &[u8]) -> Option<Arc<Statement>> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.by_key.get(key).filter(|s| s.is_valid()).cloned()
    }

    /// Starts a new version of `statement` after a schema change, unless one
    /// was started since `seen`; returns the current version.
    pub fn new_version(&self, statement: &Statement, seen: u64) -> u64 {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if statement.version() != seen {
            return statement.version();
        }
        // A server refused the old plan, so the change in flight has
        // committed: this version already has the new shape and must not be
        // taken for stale when that change is counted.
        let pending = self.schema_in_flight.load(Ordering::Acquire);
        inner.start_version(statement, self.schema_epoch() + pending)
    }

    /// A fresh id from the same counter as statement versions.
    pub fn fresh_id(&self) -> u64 {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let id = inner.next_id;
        inner.next_id += 1;
        id
    }

    /// (statements, bytes) held now.
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (inner.by_key.len(), inner.bytes)
    }
}

impl Inner {
    /// Gives `statement` a new version, begun in `epoch`; returns it.
    fn start_version(&mut self, statement: &Statement, epoch: u64) -> u64 {
        let version = self.next_id;
        self.next_id += 1;
        statement.version.store(version, Ordering::Relaxed);
        statement.epoch.store(epoch, Ordering::Release);
        version
    }

    fn evict_unused(&mut self) {
        let mut freed = 0;
        self.by_key.retain(|_, s| {
            let keep = Arc::strong_count(s) > 1;
            if !keep {
                freed += s.size() + s.key().len();
            }
            keep
        });
        self.bytes -= freed;
    }
}

/// A client's statement: the pooler-wide statement and the version of it the
/// client prepared.
#[derive(Clone)]
pub struct Bound {
    pub statement: Arc<Statement>,
    pub version: u64,
    /// The schema epoch `version` began in.
    pub epoch: u64,
}

/// A client's own statement names.
#[derive(Default)]
pub struct ClientStatements {
    by_name: HashMap<Box<[u8]>, Bound>,
    /// Bytes of the names and of the statement texts they keep alive.
    bytes: usize,
}

fn held_bytes(name: &[u8], bound: &Bound) -> usize {
    name.len() + bound.statement.key().len()
}

impl ClientStatements {
    pub fn get(&self, name: &[u8]) -> Option<&Bound> {
        self.by_name.get(name)
    }

    /// Gives `name` to `bound` (from `Registry::bind`).
    pub fn insert(&mut self, name: &[u8], bound: Bound) {
        self.bytes += held_bytes(name, &bound);
        if let Some(old) = self.by_name.insert(name.into(), bound) {
            self.bytes -= held_bytes(name, &old);
        }
    }

    pub fn remove(&mut self, name: &[u8]) {
        if let Some(old) = self.by_name.remove(name) {
            self.bytes -= held_bytes(name, &old);
        }
    }

    pub fn clear(&mut self) {
        self.by_name.clear();
        self.bytes = 0;
    }

    /// (names, bytes) held.
    pub fn usage(&self) -> (usize, usize) {
        (self.by_name.len(), self.bytes)
    }

    /// The statement whose `version` the client has a name for.
    pub fn find(&self, version: u64) -> Option<&Arc<Statement>> {
        self.by_name
            .values()
            .find(|b| b.version == version)
            .map(|b| &b.statement)
    }

    /// Moves every name bound to `old` to `new` (a retried batch after a
    /// schema change gets the fresh version).
    pub fn upgrade(&mut self, old: u64, new: u64) {
        for b in self.by_name.values_mut() {
            if b.version == old {
                b.version = new;
                b.epoch = b.statement.epoch.load(Ordering::Acquire);
            }
        }
    }

    /// Forgets every name bound to a version whose Parse failed, as
    /// PostgreSQL would not have created them.
    pub fn forget_version(&mut self, version: u64) {
        let mut freed = 0;
        self.by_name.retain(|name, b| {
            let keep = b.version != version;
            if !keep {
                freed += held_bytes(name, b);
            }
            keep
        });
        self.bytes -= freed;
    }
}

/// Splits a NUL-terminated name off the front of a message body.
pub fn split_name(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = body.iter().position(|&b| b == 0)?;
    Some((&body[..nul], &body[nul + 1..]))
}

/// Appends a Bind (or another message of the shape prefix, name, rest) with the
/// statement name replaced.
pub fn put_renamed(out: &mut BytesMut, tag: u8, prefix: &[u8], name: &[u8], rest: &[u8]) {
    out.put_u8(tag);
    out.put_u32((4 + prefix.len() + name.len() + 1 + rest.len()) as u32);
    out.put_slice(prefix);
    out.put_slice(name);
    out.put_u8(0);
    out.put_slice(rest);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_text_and_types_share_one_statement() {
        let r = Registry::new(1 << 20);
        let a = r.get_or_insert(b"SELECT $1\0\0\x01\0\0\0\x17");
        let b = r.get_or_insert(b"SELECT $1\0\0\x01\0\0\0\x17");
        let c = r.get_or_insert(b"SELECT $1\0\0\x01\0\0\0\x19");
        assert!(Arc::ptr_eq(&a, &b));
        assert_ne!(a.id, c.id);
        assert_eq!(a.name(), global_name(a.id).as_bytes());
        assert_eq!(a.key(), b"SELECT $1\0\0\x01\0\0\0\x17");
        // The Parse message is well formed.
        let len = u32::from_be_bytes([a.parse[1], a.parse[2], a.parse[3], a.parse[4]]) as usize;
        assert_eq!(len + 1, a.parse.len());
    }

    #[test]
    fn unused_statements_are_forgotten_over_the_byte_limit() {
        let r = Registry::new(2000);
        let held = r.get_or_insert(b"SELECT 'kept'\0\0\0");
        for i in 0..100 {
            drop(r.get_or_insert(format!("SELECT {i}\0\0\0").as_bytes()));
        }
        let (n, bytes) = r.usage();
        assert!(bytes <= 2000 + 200, "{bytes}");
        assert!(n < 100);
        let again = r.get_or_insert(b"SELECT 'kept'\0\0\0");
        assert!(Arc::ptr_eq(&held, &again));
    }

    #[test]
    fn a_clients_names_count_their_bytes() {
        let r = Registry::new(1 << 20);
        let mut mine = ClientStatements::default();
        let long = r.bind(r.get_or_insert(b"SELECT 'a long text'\0\0\0"));
        let short = r.bind(r.get_or_insert(b"SELECT 1\0\0\0"));
        mine.insert(b"a", long.clone());
        mine.insert(b"b", long.clone());
        assert_eq!(mine.usage(), (2, 2 * (1 + 23)));
        mine.insert(b"a", short.clone());
        assert_eq!(mine.usage(), (2, 1 + 11 + 1 + 23));
        mine.forget_version(long.version);
        assert_eq!(mine.usage(), (1, 1 + 11));
        mine.remove(b"a");
        mine.remove(b"a");
        assert_eq!(mine.usage(), (0, 0));
        mine.insert(b"c", short);
        mine.clear();
        assert_eq!(mine.usage(), (0, 0));
    }

    #[test]
    fn renamed_bind() {
        let mut out = BytesMut::new();
        put_renamed(&mut out, b'B', b"portal\0", b"sluice_7", b"\0\0\0\0\0\0");
        assert_eq!(&out[5..], b"portal\0sluice_7\0\0\0\0\0\0\0");
        assert_eq!(
            u32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize + 1,
            out.len()
        );
    }
}
