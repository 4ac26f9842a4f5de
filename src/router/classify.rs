//! Read/write classification of statement texts.
//!
//! Only a provably read-only statement may go to a replica: SELECT, VALUES,
//! TABLE, SHOW and EXPLAIN without ANALYZE, with no locking clause, no
//! data-modifying CTE, no SELECT INTO and no call that [`FunctionPolicy`]
//! says writes. Everything else goes to the primary.
//!
//! Statements are first split and classified by their leading keywords with
//! the lexer from [`super::fingerprint`]; only query-shaped statements (SELECT,
//! WITH, VALUES, TABLE, `(`) are handed to sqlparser, which is what finds the
//! function calls, data-modifying CTEs and SELECT INTO. That keeps utility
//! statements sqlparser does not know (DO, VACUUM ANALYZE t, BEGIN ...
//! DEFERRABLE, FOR NO KEY UPDATE) correctly classified, not just "unparsable".
//!
//! Hints (a leading comment, see [`super::fingerprint::hint`]):
//! - `/* sluice:primary */` sends every statement that would go to a replica
//!   to the primary instead (reason [`Reason::Hint`]).
//! - `/* sluice:replica */` sends a statement to a replica only when the one
//!   thing keeping it on the primary is a call the catalog cannot vouch for: a
//!   volatile user function, a function unknown to the catalog, or any function
//!   while no catalog is loaded. It never overrides a built-in write function
//!   (nextval: it would fail on a replica), a `write_functions` entry (the
//!   operator said so), a lock, DML, SELECT INTO, utility, session or
//!   transaction statements, or a parse failure.

use std::hash::BuildHasher;
use std::ops::ControlFlow;
use std::sync::Arc;

use quick_cache::sync::Cache;
use quick_cache::Weighter;
use sqlparser::ast::{
    Expr, ObjectName, ObjectNamePart, Query, Select, SetExpr, Statement as Ast, TableFactor, Visit,
    Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::fingerprint::{scan_seeded, Hint, Lexer, Token, TokenKind};
use super::functions::{is_session_advisory_lock, FunctionPolicy, WriteCause};
use super::Summary;

/// Statements longer than this are not parsed: primary, [`Reason::ParseFailure`].
pub const MAX_PARSE_LEN: usize = 1 << 20;

/// Where a statement may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Primary,
    Replica,
}

/// Which lock keeps a statement on the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockKind {
    ForUpdate,
    ForNoKeyUpdate,
    ForShare,
    ForKeyShare,
    /// `LOCK [TABLE]`.
    Table,
}

/// Why a statement got its target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Provably read-only.
    ReadOnly,
    /// DML, a data-modifying CTE, SELECT INTO, CALL.
    Write,
    /// A call of `name` (as written, lower case) that may write.
    Function { name: Arc<str>, cause: WriteCause },
    /// A locking clause or LOCK.
    Lock(LockKind),
    /// Transaction control; the session layer decides where it goes.
    Transaction,
    /// A routing hint decided.
    Hint,
    /// Could not be parsed (sqlparser's message).
    ParseFailure(Arc<str>),
    /// SET, RESET, DISCARD, LISTEN, PREPARE and the like.
    SessionState,
    /// VACUUM, COPY, DDL, DO, CHECKPOINT and the like.
    Utility,
    /// Parsed, but nothing says what it does (EXECUTE, an empty string).
    Unknown,
}

/// What the session layer needs to know about a statement beyond its route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A query that may go to a replica.
    Read,
    /// Anything that changes state: DML, writing calls, locking reads.
    Write,
    /// BEGIN / START TRANSACTION; `read_only` is `None` when not said.
    Begin {
        read_only: Option<bool>,
    },
    SetTransaction {
        read_only: Option<bool>,
    },
    /// COMMIT, END, and PREPARE TRANSACTION (which also ends the block).
    Commit,
    /// ROLLBACK, ABORT.
    Rollback,
    /// SAVEPOINT, RELEASE, ROLLBACK TO.
    Savepoint,
    /// SET, SET SESSION, SET SESSION CHARACTERISTICS AS TRANSACTION ...
    SetSession,
    /// SET LOCAL, SET CONSTRAINTS.
    SetLocal,
    Reset,
    ResetAll,
    DiscardAll,
    Listen,
    /// Utility, DDL, COMMIT/ROLLBACK PREPARED, cursors, parse failures.
    Other,
}

/// Why a session must stay on its server connection after a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PinReason {
    /// CREATE TEMP TABLE / VIEW / SEQUENCE, SELECT INTO TEMP.
    TempTable,
    /// Session-level pg_advisory_lock / pg_try_advisory_lock (and _shared).
    AdvisoryLock,
    /// DECLARE ... WITH HOLD.
    WithHoldCursor,
    Listen,
}

/// The classification of one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub kind: Kind,
    pub target: Target,
    pub reason: Reason,
}

/// The classification of a statement text (one or more statements).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// Replica only when every statement may go to a replica.
    pub target: Target,
    /// The first primary statement's reason, else that of the first one.
    pub reason: Reason,
    /// One per statement, in order; empty for a text with no statement.
    pub statements: Vec<Statement>,
    /// The first pin any statement asks for.
    pub pins: Option<PinReason>,
}

/// A one-line human explanation, e.g. `primary (function nextval writes)`.
pub fn explain(c: &Classification) -> String {
    let target = match c.target {
        Target::Primary => "primary",
        Target::Replica => "replica",
    };
    let mut why = reason_text(&c.reason);
    if c.statements.len() > 1 && c.target == Target::Primary {
        if let Some(i) = c
            .statements
            .iter()
            .position(|s| s.target == Target::Primary)
        {
            why = format!("statement {}: {why}", i + 1);
        }
    }
    let mut out = format!("{target} ({why})");
    if let Some(pin) = c.pins {
        let p = match pin {
            PinReason::TempTable => "temporary object",
            PinReason::AdvisoryLock => "session advisory lock",
            PinReason::WithHoldCursor => "WITH HOLD cursor",
            PinReason::Listen => "LISTEN",
        };
        out.push_str(&format!(", pins the session: {p}"));
    }
    out
}

fn reason_text(r: &Reason) -> String {
    match r {
        Reason::ReadOnly => "read-only".into(),
        Reason::Write => "write".into(),
        Reason::Function { name, cause } => match cause {
            WriteCause::Config => format!("function {name} is in write_functions"),
            WriteCause::Builtin => format!("function {name} writes"),
            WriteCause::Volatile => format!("function {name} is volatile"),
            WriteCause::Unknown => format!("function {name} is not in the catalog"),
            WriteCause::NoCatalog => format!("function {name}: catalog not loaded"),
        },
        Reason::Lock(k) => match k {
            LockKind::ForUpdate => "FOR UPDATE lock".into(),
            LockKind::ForNoKeyUpdate => "FOR NO KEY UPDATE lock".into(),
            LockKind::ForShare => "FOR SHARE lock".into(),
            LockKind::ForKeyShare => "FOR KEY SHARE lock".into(),
            LockKind::Table => "LOCK TABLE".into(),
        },
        Reason::Transaction => "transaction control".into(),
        Reason::Hint => "hint".into(),
        Reason::ParseFailure(m) => format!("could not parse: {m}"),
        Reason::SessionState => "session state".into(),
        Reason::Utility => "utility statement".into(),
        Reason::Unknown => "unknown statement".into(),
    }
}

/// A function call as written: lower-case name and optional schema.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FnRef {
    schema: Option<Box<str>>,
    name: Box<str>,
    /// `schema.name` or `name`, for [`Reason::Function`].
    display: Arc<str>,
}

/// The policy-independent result for one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Syn {
    /// Decided by syntax alone.
    Fixed(Statement),
    /// A query: read-only unless one of these calls writes.
    Query(Box<[FnRef]>),
}

/// What the cache holds for a fingerprint.
#[derive(Debug)]
struct Syntax {
    stmts: Vec<Syn>,
    pins: Option<PinReason>,
    /// Approximate bytes owned, for the cache weighter.
    weight: u64,
    /// False for parse failures, whose messages quote positions in the text.
    cacheable: bool,
}

#[derive(Clone)]
struct SyntaxWeighter;

/// The cache key is already a seeded 128-bit hash of the text: hashing it
/// again (quick_cache's default) would only add a few nanoseconds per hit.
#[derive(Clone, Default)]
struct FingerprintHash;

impl std::hash::BuildHasher for FingerprintHash {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

/// Takes the low and high halves of the fingerprint as the hash.
#[derive(Default)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached for keys other than u128, which this cache has none of.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 ^= (v as u64) ^ ((v >> 64) as u64);
    }
}

impl Weighter<u128, Arc<Syntax>> for SyntaxWeighter {
    fn weight(&self, _key: &u128, val: &Arc<Syntax>) -> u64 {
        val.weight
    }
}

/// A classifier with a fingerprint-keyed cache of syntactic results, shared
/// by reference across threads. Cache hits are re-checked against the
/// [`FunctionPolicy`] given to each call, so catalog refreshes apply at once.
pub struct Classifier {
    cache: Cache<u128, Arc<Syntax>, SyntaxWeighter, FingerprintHash>,
    seed: u64,
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier")
            .field("entries", &self.cache.len())
            .field("bytes", &self.cache.weight())
            .finish()
    }
}

impl Classifier {
    /// A classifier whose cache holds at most about `max_bytes` of entries.
    pub fn new(max_bytes: usize) -> Self {
        let max = max_bytes.max(1) as u64;
        let items = (max_bytes / 256).clamp(16, 1 << 20);
        // A per-process random seed: clients cannot aim collisions at the cache.
        let seed = std::collections::hash_map::RandomState::new().hash_one(0x5151_u64);
        Classifier {
            cache: Cache::with(
                items,
                max,
                SyntaxWeighter,
                FingerprintHash,
                quick_cache::sync::DefaultLifecycle::default(),
            ),
            seed,
        }
    }

    /// Classify `sql`, using the cache.
    pub fn classify(&self, sql: &str, policy: &FunctionPolicy) -> Classification {
        let (syn, hint) = self.lookup(sql);
        resolve(&syn, policy, hint)
    }

    /// What routing needs of `classify`, without building the per-statement
    /// list: no allocation on a cache hit.
    pub fn summarize(&self, sql: &str, policy: &FunctionPolicy) -> Summary {
        let (syn, hint) = self.lookup(sql);
        let mut out = Summary {
            target: if syn.stmts.is_empty() {
                Target::Primary
            } else {
                Target::Replica
            },
            statements: syn.stmts.len(),
            first: None,
            pins: syn.pins,
        };
        for s in &syn.stmts {
            let (kind, target, overridable) = match s {
                Syn::Fixed(st) => (st.kind, st.target, hint_may_override(&st.reason)),
                Syn::Query(funcs) if funcs.is_empty() => (Kind::Read, Target::Replica, false),
                Syn::Query(funcs) => {
                    let st = query_statement(funcs, policy);
                    (st.kind, st.target, hint_may_override(&st.reason))
                }
            };
            // The same hint rules as `resolve`.
            let (kind, target) = match hint {
                Some(Hint::Primary) if target == Target::Replica => (kind, Target::Primary),
                Some(Hint::Replica) if overridable => (Kind::Read, Target::Replica),
                _ => (kind, target),
            };
            out.first.get_or_insert(kind);
            if target == Target::Primary {
                out.target = Target::Primary;
            }
        }
        out
    }

    fn lookup(&self, sql: &str) -> (Arc<Syntax>, Option<Hint>) {
        let scan = scan_seeded(sql.as_bytes(), self.seed);
        let key = scan.fingerprint.0;
        let syn = match self.cache.get(&key) {
            Some(s) => s,
            None => {
                let s = Arc::new(syntax(sql));
                if s.cacheable {
                    self.cache.insert(key, Arc::clone(&s));
                }
                s
            }
        };
        (syn, scan.hint)
    }

    /// Classify `sql` without the cache (for the CLI and benchmarks).
    pub fn classify_uncached(&self, sql: &str, policy: &FunctionPolicy) -> Classification {
        classify_uncached(sql, policy)
    }

    /// Entries and bytes in the cache.
    pub fn cache_usage(&self) -> (usize, u64) {
        (self.cache.len(), self.cache.weight())
    }
}

/// Classify `sql` from scratch, no cache involved.
pub fn classify_uncached(sql: &str, policy: &FunctionPolicy) -> Classification {
    let hint = super::fingerprint::hint(sql.as_bytes());
    resolve(&syntax(sql), policy, hint)
}

/// Apply the function policy and the hint to a syntactic result.
fn resolve(syn: &Syntax, policy: &FunctionPolicy, hint: Option<Hint>) -> Classification {
    let mut statements = Vec::with_capacity(syn.stmts.len());
    let mut target = Target::Replica;
    let mut reason: Option<Reason> = None;
    for s in &syn.stmts {
        let mut st = match s {
            Syn::Fixed(st) => st.clone(),
            Syn::Query(funcs) => query_statement(funcs, policy),
        };
        match hint {
            Some(Hint::Primary) if st.target == Target::Replica => {
                st.target = Target::Primary;
                st.reason = Reason::Hint;
            }
            Some(Hint::Replica) if hint_may_override(&st.reason) => {
                st.target = Target::Replica;
                st.kind = Kind::Read;
                st.reason = Reason::Hint;
            }
            _ => {}
        }
        if st.target == Target::Primary && target == Target::Replica {
            target = Target::Primary;
            reason = Some(st.reason.clone());
        }
        statements.push(st);
    }
    if statements.is_empty() {
        target = Target::Primary;
        reason = Some(Reason::Unknown);
    }
    let reason = reason
        .or_else(|| {
            statements
                .iter()
                .find(|s| s.reason == Reason::Hint)
                .or(statements.first())
                .map(|s| s.reason.clone())
        })
        .unwrap_or(Reason::Unknown);
    Classification {
        target,
        reason,
        statements,
        pins: syn.pins,
    }
}

fn hint_may_override(r: &Reason) -> bool {
    matches!(
        r,
        Reason::Function {
            cause: WriteCause::Volatile | WriteCause::Unknown | WriteCause::NoCatalog,
            ..
        }
    )
}

fn query_statement(funcs: &[FnRef], policy: &FunctionPolicy) -> Statement {
    for f in funcs {
        if let Some(cause) = policy.write_cause(f.schema.as_deref(), &f.name) {
            return Statement {
                kind: Kind::Write,
                target: Target::Primary,
                reason: Reason::Function {
                    name: Arc::clone(&f.display),
                    cause,
                },
            };
        }
    }
    Statement {
        kind: Kind::Read,
        target: Target::Replica,
        reason: Reason::ReadOnly,
    }
}

fn fixed(kind: Kind, target: Target, reason: Reason) -> Syn {
    Syn::Fixed(Statement {
        kind,
        target,
        reason,
    })
}

fn primary(kind: Kind, reason: Reason) -> Syn {
    fixed(kind, Target::Primary, reason)
}

/// The policy-independent analysis of a whole text.
fn syntax(sql: &str) -> Syntax {
    let mut stmts = Vec::new();
    let mut pins = None;
    if sql.len() > MAX_PARSE_LEN {
        stmts.push(primary(
            Kind::Other,
            Reason::ParseFailure("statement longer than 1 MiB".into()),
        ));
    } else {
        for toks in split(sql) {
            let (syn, pin) = analyze(sql, &toks);
            pins = pins.or(pin);
            stmts.push(syn);
        }
    }
    let mut weight = (std::mem::size_of::<Syntax>() + 64) as u64;
    let mut cacheable = true;
    for s in &stmts {
        weight += std::mem::size_of::<Syn>() as u64;
        match s {
            Syn::Query(funcs) => {
                for f in funcs.iter() {
                    weight += (std::mem::size_of::<FnRef>()
                        + f.name.len()
                        + f.schema.as_ref().map_or(0, |s| s.len())
                        + f.display.len()
                        + 16) as u64;
                }
            }
            Syn::Fixed(st) => {
                if let Reason::ParseFailure(m) = &st.reason {
                    weight += m.len() as u64;
                    cacheable = false;
                }
            }
        }
    }
    Syntax {
        stmts,
        pins,
        weight,
        cacheable,
    }
}

/// Split into statements (non-comment tokens each) at `;` outside
/// parentheses and outside a `BEGIN ATOMIC ... END` function body.
fn split(sql: &str) -> Vec<Vec<Token>> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut cur: Vec<Token> = Vec::new();
    let mut parens = 0usize;
    let mut atomic = 0usize;
    let mut lx = Lexer::new(b);
    while let Some(t) = lx.next_token() {
        match t.kind {
            TokenKind::Comment => continue,
            TokenKind::Punct => match b[t.start] {
                b'(' => parens += 1,
                b')' => parens = parens.saturating_sub(1),
                b';' if parens == 0 && atomic == 0 => {
                    if !cur.is_empty() {
                        out.push(std::mem::take(&mut cur));
                    }
                    continue;
                }
                _ => {}
            },
            TokenKind::Word if cur.first().is_some_and(|f| is_word(b, f, "create")) => {
                let w = &b[t.start..t.end];
                if atomic > 0 {
                    if w.eq_ignore_ascii_case(b"case") {
                        atomic += 1;
                    } else if w.eq_ignore_ascii_case(b"end") {
                        atomic -= 1;
                    }
                } else if w.eq_ignore_ascii_case(b"atomic")
                    && cur.last().is_some_and(|p| is_word(b, p, "begin"))
                {
                    atomic = 1;
                }
            }
            _ => {}
        }
        cur.push(t);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn is_word(b: &[u8], t: &Token, w: &str) -> bool {
    t.kind == TokenKind::Word && b[t.start..t.end].eq_ignore_ascii_case(w.as_bytes())
}

/// Token-level view of one statement.
struct Toks<'a> {
    sql: &'a str,
    t: &'a [Token],
}

impl<'a> Toks<'a> {
    fn kw(&self, i: usize, w: &str) -> bool {
        self.t
            .get(i)
            .is_some_and(|t| is_word(self.sql.as_bytes(), t, w))
    }

    fn word(&self, i: usize) -> Option<&'a str> {
        let t = self.t.get(i)?;
        (t.kind == TokenKind::Word).then(|| &self.sql[t.start..t.end])
    }

    fn punct(&self, i: usize, c: u8) -> bool {
        self.t
            .get(i)
            .is_some_and(|t| t.kind == TokenKind::Punct && self.sql.as_bytes()[t.start] == c)
    }

    /// The text from token `i` to the end of the statement.
    fn text_from(&self, i: usize) -> &'a str {
        match (self.t.get(i), self.t.last()) {
            (Some(a), Some(z)) => &self.sql[a.start..z.end],
            _ => "",
        }
    }

    fn sub(&self, i: usize) -> Toks<'a> {
        Toks {
            sql: self.sql,
            t: self.t.get(i..).unwrap_or(&[]),
        }
    }

    /// The last `READ ONLY` / `READ WRITE` among the tokens.
    fn access_mode(&self) -> Option<bool> {
        let mut mode = None;
        for i in 0..self.t.len() {
            if self.kw(i, "read") {
                if self.kw(i + 1, "only") {
                    mode = Some(true);
                } else if self.kw(i + 1, "write") {
                    mode = Some(false);
                }
            }
        }
        mode
    }

    /// A locking clause anywhere in a query.
    fn lock_clause(&self) -> Option<LockKind> {
        for i in 0..self.t.len() {
            if !self.kw(i, "for") {
                continue;
            }
            if self.kw(i + 1, "update") {
                return Some(LockKind::ForUpdate);
            }
            if self.kw(i + 1, "share") {
                return Some(LockKind::ForShare);
            }
            if self.kw(i + 1, "no") && self.kw(i + 2, "key") && self.kw(i + 3, "update") {
                return Some(LockKind::ForNoKeyUpdate);
            }
            if self.kw(i + 1, "key") && self.kw(i + 2, "share") {
                return Some(LockKind::ForKeyShare);
            }
        }
        None
    }

    /// A call of a session-level advisory lock function.
    fn session_advisory_lock(&self) -> bool {
        (0..self.t.len()).any(|i| {
            self.punct(i + 1, b'(')
                && self
                    .word(i)
                    .is_some_and(|w| is_session_advisory_lock(&w.to_ascii_lowercase()))
        })
    }

    /// `INTO [GLOBAL|LOCAL] TEMP|TEMPORARY` (SELECT INTO a temp table).
    fn selects_into_temp(&self) -> bool {
        (0..self.t.len()).any(|i| {
            if !self.kw(i, "into") {
                return false;
            }
            let j = if self.kw(i + 1, "global") || self.kw(i + 1, "local") {
                i + 2
            } else {
                i + 1
            };
            self.kw(j, "temp") || self.kw(j, "temporary")
        })
    }
}

/// Classify one statement's tokens; also report a pin.
fn analyze(sql: &str, toks: &[Token]) -> (Syn, Option<PinReason>) {
    let t = Toks { sql, t: toks };
    let syn = analyze_kind(&t);
    let mut pin = None;
    let explain_only = matches!(&syn, Syn::Fixed(s) if s.kind == Kind::Read) && t.kw(0, "explain");
    if !explain_only {
        if t.session_advisory_lock() {
            pin = Some(PinReason::AdvisoryLock);
        } else if t.kw(0, "listen") {
            pin = Some(PinReason::Listen);
        } else if t.kw(0, "declare") && declare_with_hold(&t) {
            pin = Some(PinReason::WithHoldCursor);
        } else if (t.kw(0, "create") && create_temp(&t) && !drops_on_commit(&t))
            || (is_query_start(&t) && t.selects_into_temp())
        {
            pin = Some(PinReason::TempTable);
        }
    }
    (syn, pin)
}

fn declare_with_hold(t: &Toks) -> bool {
    for i in 1..t.t.len() {
        if t.kw(i, "for") {
            return false;
        }
        if t.kw(i, "with") && t.kw(i + 1, "hold") {
            return true;
        }
    }
    false
}

/// `CREATE [OR REPLACE] [GLOBAL|LOCAL] TEMP|TEMPORARY ...`
fn create_temp(t: &Toks) -> bool {
    let mut i = 1;
    if t.kw(i, "or") && t.kw(i + 1, "replace") {
        i += 2;
    }
    if t.kw(i, "global") || t.kw(i, "local") {
        i += 1;
    }
    t.kw(i, "temp") || t.kw(i, "temporary")
}

/// `... ON COMMIT DROP`: the temporary table ends with its transaction, so
/// the client need not keep the server.
fn drops_on_commit(t: &Toks) -> bool {
    (1..t.t.len()).any(|i| t.kw(i, "on") && t.kw(i + 1, "commit") && t.kw(i + 2, "drop"))
}

fn is_query_start(t: &Toks) -> bool {
    t.punct(0, b'(')
        || ["select", "with", "values", "table"]
            .iter()
            .any(|w| t.kw(0, w))
}

fn analyze_kind(t: &Toks) -> Syn {
    use Kind as K;
    use Reason as R;
    if is_query_start(t) {
        return analyze_query(t);
    }
    let Some(first) = t.word(0) else {
        return parse_failure_or(t, R::Unknown);
    };
    let first = first.to_ascii_lowercase();
    match first.as_str() {
        "show" => fixed(K::Read, Target::Replica, R::ReadOnly),
        "explain" => analyze_explain(t),
        "begin" => primary(
            K::Begin {
                read_only: t.access_mode(),
            },
            R::Transaction,
        ),
        "start" if t.kw(1, "transaction") => primary(
            K::Begin {
                read_only: t.access_mode(),
            },
            R::Transaction,
        ),
        "commit" | "end" if t.kw(1, "prepared") => primary(K::Other, R::Transaction),
        "commit" | "end" => primary(K::Commit, R::Transaction),
        "rollback" if t.kw(1, "prepared") => primary(K::Other, R::Transaction),
        "rollback" | "abort" => {
            if (1..t.t.len()).any(|i| t.kw(i, "to")) {
                primary(K::Savepoint, R::Transaction)
            } else {
                primary(K::Rollback, R::Transaction)
            }
        }
        "savepoint" | "release" => primary(K::Savepoint, R::Transaction),
        "prepare" if t.kw(1, "transaction") => primary(K::Commit, R::Transaction),
        "prepare" | "deallocate" | "unlisten" => primary(K::Other, R::SessionState),
        "set" => {
            let kind = if t.kw(1, "transaction") {
                K::SetTransaction {
                    read_only: t.access_mode(),
                }
            } else if t.kw(1, "local") || t.kw(1, "constraints") {
                K::SetLocal
            } else {
                K::SetSession
            };
            primary(kind, R::SessionState)
        }
        "reset" if t.kw(1, "all") => primary(K::ResetAll, R::SessionState),
        "reset" => primary(K::Reset, R::SessionState),
        "discard" if t.kw(1, "all") => primary(K::DiscardAll, R::SessionState),
        "discard" => primary(K::Other, R::SessionState),
        "listen" => primary(K::Listen, R::SessionState),
        "insert" | "update" | "delete" | "merge" | "truncate" | "call" => {
            primary(K::Write, R::Write)
        }
        "lock" => primary(K::Write, R::Lock(LockKind::Table)),
        "copy" => {
            let from = copy_direction_from(t);
            primary(if from { K::Write } else { K::Other }, R::Utility)
        }
        "execute" => primary(K::Other, R::Unknown),
        "do" | "vacuum" | "analyze" | "analyse" | "cluster" | "reindex" | "checkpoint"
        | "refresh" | "load" | "security" | "import" | "comment" | "grant" | "revoke"
        | "create" | "alter" | "drop" | "reassign" | "notify" | "declare" | "fetch" | "move"
        | "close" => primary(K::Other, R::Utility),
        _ => parse_failure_or(t, R::Unknown),
    }
}

/// COPY ... FROM (a write) rather than COPY ... TO: the first FROM or TO
/// outside parentheses decides.
fn copy_direction_from(t: &Toks) -> bool {
    let mut depth = 0usize;
    for i in 1..t.t.len() {
        if t.punct(i, b'(') {
            depth += 1;
        } else if t.punct(i, b')') {
            depth = depth.saturating_sub(1);
        } else if depth == 0 && t.kw(i, "from") {
            return true;
        } else if depth == 0 && t.kw(i, "to") {
            return false;
        }
    }
    true
}

/// An unknown statement: a parse failure when sqlparser rejects it too.
fn parse_failure_or(t: &Toks, otherwise: Reason) -> Syn {
    match parse(t, t.text_from(0)) {
        Err(m) => primary(Kind::Other, Reason::ParseFailure(m.into())),
        Ok(_) => primary(Kind::Other, otherwise),
    }
}

/// The most tokens sluice gives sqlparser. Chains such as `a + b + ...`,
/// `x::int::int...` or `p OR q OR ...` parse in a loop into a tree one level
/// per operator, and dropping that tree recurses once per level: a long chain
/// would overflow a worker's stack and abort the whole process. A statement
/// with more tokens goes to the primary unparsed. 10,000 tokens make at most
/// about 5,000 levels; 16,000 levels still fit a 2 MiB stack in a debug build.
const MAX_PARSED_TOKENS: usize = 10_000;

fn parse(t: &Toks, text: &str) -> Result<Vec<Ast>, String> {
    if t.t.len() > MAX_PARSED_TOKENS {
        return Err(format!(
            "{} tokens, more than the {MAX_PARSED_TOKENS} sluice parses",
            t.t.len()
        ));
    }
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(text)
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| e.to_string())
}

/// `EXPLAIN [ANALYZE] [VERBOSE] stmt` or `EXPLAIN (option [value], ...) stmt`.
fn analyze_explain(t: &Toks) -> Syn {
    let mut analyze = false;
    let mut i = 1;
    if t.punct(1, b'(') {
        i = 2;
        let mut depth = 1usize;
        let mut at_option = true;
        while i < t.t.len() && depth > 0 {
            if t.punct(i, b'(') {
                depth += 1;
            } else if t.punct(i, b')') {
                depth -= 1;
            } else if t.punct(i, b',') && depth == 1 {
                at_option = true;
                i += 1;
                continue;
            } else if at_option && (t.kw(i, "analyze") || t.kw(i, "analyse")) {
                // Only an explicit false/off turns it off; a literal value
                // counts as on, so the fingerprint cache stays sound.
                let off = t.kw(i + 1, "false") || t.kw(i + 1, "off");
                analyze |= !off;
            }
            at_option = false;
            i += 1;
        }
    } else {
        while t.kw(i, "analyze") || t.kw(i, "analyse") || t.kw(i, "verbose") {
            analyze |= !t.kw(i, "verbose");
            i += 1;
        }
    }
    if !analyze {
        return fixed(Kind::Read, Target::Replica, Reason::ReadOnly);
    }
    let inner = t.sub(i);
    if inner.t.is_empty() {
        return parse_failure_or(t, Reason::Unknown);
    }
    if inner.kw(0, "explain") {
        // Not valid SQL, and each level would be a recursion of this
        // function: a long enough chain would overflow the stack.
        return primary(
            Kind::Other,
            Reason::ParseFailure("EXPLAIN of an EXPLAIN".into()),
        );
    }
    analyze_kind(&inner)
}

/// SELECT, WITH, VALUES, TABLE or a parenthesised query.
fn analyze_query(t: &Toks) -> Syn {
    if t.t.iter().any(|x| x.kind == TokenKind::Malformed) {
        return primary(
            Kind::Other,
            Reason::ParseFailure("unterminated string, identifier or comment".into()),
        );
    }
    if let Some(lock) = t.lock_clause() {
        return primary(Kind::Write, Reason::Lock(lock));
    }
    let text = t.text_from(0);
    let rewritten;
    let text = if t.kw(0, "table") {
        // sqlparser has no TABLE t; it means SELECT * FROM t.
        let rest = t.text_from(1);
        rewritten = format!("SELECT * FROM {rest}");
        rewritten.as_str()
    } else {
        text
    };
    let stmts = match parse(t, text) {
        Ok(s) => s,
        Err(m) => return primary(Kind::Other, Reason::ParseFailure(m.into())),
    };
    let mut c = Collect::default();
    for s in &stmts {
        let _ = s.visit(&mut c);
    }
    if c.other || stmts.is_empty() {
        primary(Kind::Other, Reason::Utility)
    } else if c.dml || c.select_into {
        primary(Kind::Write, Reason::Write)
    } else if let Some(lock) = c.lock {
        primary(Kind::Write, Reason::Lock(lock))
    } else {
        Syn::Query(c.funcs.into_boxed_slice())
    }
}

/// Walks a parsed query for what makes it not read-only.
#[derive(Default)]
struct Collect {
    funcs: Vec<FnRef>,
    dml: bool,
    select_into: bool,
    lock: Option<LockKind>,
    /// A statement that is neither a query nor DML.
    other: bool,
}

impl Collect {
    fn push(&mut self, name: &ObjectName) {
        let mut parts = name.0.iter().rev().map(|p| match p {
            ObjectNamePart::Identifier(id) => id.value.to_ascii_lowercase(),
            // Not a plain name: nothing can vouch for it.
            ObjectNamePart::Function(_) => "?".to_string(),
        });
        let fname = parts.next().unwrap_or_default();
        let schema = parts.next();
        if self
            .funcs
            .iter()
            .any(|f| *f.name == *fname && f.schema.as_deref() == schema.as_deref())
        {
            return;
        }
        let display: Arc<str> = match &schema {
            Some(s) => format!("{s}.{fname}").into(),
            None => fname.as_str().into(),
        };
        self.funcs.push(FnRef {
            schema: schema.map(String::into_boxed_str),
            name: fname.into_boxed_str(),
            display,
        });
    }
}

impl Visitor for Collect {
    type Break = ();

    fn pre_visit_statement(&mut self, s: &Ast) -> ControlFlow<()> {
        match s {
            Ast::Query(_) => {}
            Ast::Insert(_) | Ast::Update(_) | Ast::Delete(_) | Ast::Merge(_) => self.dml = true,
            _ => self.other = true,
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if let Some(l) = q.locks.first() {
            self.lock.get_or_insert(match l.lock_type {
                sqlparser::ast::LockType::Update => LockKind::ForUpdate,
                sqlparser::ast::LockType::Share => LockKind::ForShare,
            });
        }
        if matches!(
            *q.body,
            SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_)
        ) {
            self.dml = true;
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, s: &Select) -> ControlFlow<()> {
        if s.into.is_some() {
            self.select_into = true;
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<()> {
        match t {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            }
            | TableFactor::Function { name, .. } => self.push(name),
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = e {
            self.push(&f.name);
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::functions::Catalog;
    use super::*;

    fn catalog() -> Arc<Catalog> {
        let mut rows: Vec<(&str, &str, char)> = vec![
            ("public", "write_fn", 'v'),
            ("public", "stable_fn", 's'),
            ("public", "immutable_fn", 'i'),
            ("app", "audit", 'v'),
            ("pg_catalog", "random", 'v'),
            ("pg_catalog", "pg_sleep", 'v'),
            ("pg_catalog", "clock_timestamp", 'v'),
            ("pg_catalog", "set_config", 'v'),
            ("pg_catalog", "nextval", 'v'),
        ];
        for f in [
            "now",
            "count",
            "sum",
            "max",
            "lower",
            "upper",
            "length",
            "row_number",
            "rank",
            "lag",
            "generate_series",
            "jsonb_build_object",
            "jsonb_array_elements",
            "array_agg",
            "string_agg",
            "date_trunc",
            "to_char",
            "unnest",
            "current_setting",
        ] {
            rows.push(("pg_catalog", f, 's'));
        }
        Arc::new(Catalog::from_rows(rows))
    }

    fn policy() -> FunctionPolicy {
        FunctionPolicy::new(
            Some(catalog()),
            ["report_fn", "public.write_ok"],
            ["app.stable_but_writes", "now_w"],
        )
    }

    use Kind as K;
    use Target::{Primary as P, Replica as Rp};

    /// Expected reason, loosely: function causes by name.
    #[derive(Debug, Clone, Copy)]
    enum E {
        Ro,
        W,
        F(&'static str, WriteCause),
        L(LockKind),
        Tx,
        H,
        Pf,
        Ss,
        U,
        Unk,
    }

    fn matches_reason(r: &Reason, e: E) -> bool {
        match (r, e) {
            (Reason::ReadOnly, E::Ro)
            | (Reason::Write, E::W)
            | (Reason::Transaction, E::Tx)
            | (Reason::Hint, E::H)
            | (Reason::ParseFailure(_), E::Pf)
            | (Reason::SessionState, E::Ss)
            | (Reason::Utility, E::U)
            | (Reason::Unknown, E::Unk) => true,
            (Reason::Lock(a), E::L(b)) => *a == b,
            (Reason::Function { name, cause }, E::F(n, c)) => &**name == n && *cause == c,
            _ => false,
        }
    }

    use WriteCause::*;

    /// SQL, target, reason, kind (of a single statement), pin.
    type Case = (&'static str, Target, E, Option<Kind>, Option<PinReason>);

    #[rustfmt::skip]
    fn cases() -> Vec<Case> {
        let read = Some(K::Read);
        let write = Some(K::Write);
        vec![
            // Plain reads.
            ("SELECT 1", Rp, E::Ro, read, None),
            ("select * from t where id = 1", Rp, E::Ro, read, None),
            ("SELECT * FROM t WHERE a = $1 AND b = $2", Rp, E::Ro, read, None),
            ("SELECT a.x, b.y FROM a JOIN b ON a.id = b.a_id WHERE a.k = $1 ORDER BY 1 LIMIT $2", Rp, E::Ro, read, None),
            ("VALUES (1, 'a'), (2, 'b')", Rp, E::Ro, read, None),
            ("TABLE t", Rp, E::Ro, read, None),
            ("TABLE s.t ORDER BY 1 LIMIT 3", Rp, E::Ro, read, None),
            ("SHOW search_path", Rp, E::Ro, read, None),
            ("SHOW ALL", Rp, E::Ro, read, None),
            ("(SELECT 1) UNION ALL (SELECT 2)", Rp, E::Ro, read, None),
            ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 10) SELECT * FROM r", Rp, E::Ro, read, None),
            ("WITH x AS MATERIALIZED (SELECT * FROM t) SELECT * FROM x", Rp, E::Ro, read, None),
            ("SELECT count(*) FROM t", Rp, E::Ro, read, None),
            ("SELECT now(), clock_timestamp()", Rp, E::Ro, read, None),
            ("SELECT random()", Rp, E::Ro, read, None),
            ("SELECT pg_sleep(1)", Rp, E::Ro, read, None),
            ("SELECT row_number() OVER (PARTITION BY a ORDER BY b), lag(b) OVER w FROM t WINDOW w AS (ORDER BY b)", Rp, E::Ro, read, None),
            ("SELECT d->>'a', d #> '{a,b}', d @> '{\"x\":1}'::jsonb FROM t WHERE d ? 'k'", Rp, E::Ro, read, None),
            ("SELECT '1'::int, CAST(x AS text), x::regclass FROM t", Rp, E::Ro, read, None),
            ("SELECT coalesce(a, b), nullif(a, 0), greatest(a, b), CURRENT_TIMESTAMP FROM t", Rp, E::Ro, read, None),
            ("SELECT * FROM generate_series(1, 10) g", Rp, E::Ro, read, None),
            ("SELECT * FROM t, LATERAL jsonb_array_elements(t.d) e", Rp, E::Ro, read, None),
            ("SELECT stable_fn()", Rp, E::Ro, read, None),
            ("SELECT public.stable_fn(), immutable_fn(1)", Rp, E::Ro, read, None),
            ("SELECT pg_catalog.now()", Rp, E::Ro, read, None),
            ("SELECT EXISTS (SELECT 1 FROM t WHERE a = $1)", Rp, E::Ro, read, None),
            ("SELECT a FROM t WHERE a IN (SELECT b FROM u WHERE c = lower($1))", Rp, E::Ro, read, None),
            ("SELECT $$DELETE FROM t$$", Rp, E::Ro, read, None),
            ("SELECT $tag$ INSERT INTO t VALUES (1) $tag$ AS q", Rp, E::Ro, read, None),
            ("SELECT 'DELETE FROM t; UPDATE t SET a = 1'", Rp, E::Ro, read, None),
            ("SELECT E'it\\'s; DROP TABLE t'", Rp, E::Ro, read, None),
            ("SELECT \"for\" FROM t", Rp, E::Ro, read, None),
            ("SELECT substring(a FROM 1 FOR 2) FROM t", Rp, E::Ro, read, None),
            ("-- comment\nSELECT 1", Rp, E::Ro, read, None),
            ("/* a /* nested */ comment */ SELECT 1 -- trailing", Rp, E::Ro, read, None),
            ("SELECT 1 /* DELETE FROM t */", Rp, E::Ro, read, None),
            ("SELECT report_fn()", Rp, E::Ro, read, None),
            ("SELECT public.write_ok()", Rp, E::Ro, read, None),
            ("SELECT upper(x) FROM t GROUP BY 1 HAVING count(*) > $1", Rp, E::Ro, read, None),
            ("SELECT array_agg(a ORDER BY b), string_agg(c, ',') FILTER (WHERE c IS NOT NULL) FROM t", Rp, E::Ro, read, None),
            // EXPLAIN.
            ("EXPLAIN SELECT * FROM t", Rp, E::Ro, read, None),
            ("EXPLAIN DELETE FROM t", Rp, E::Ro, read, None),
            ("EXPLAIN (FORMAT JSON, VERBOSE) UPDATE t SET a = 1", Rp, E::Ro, read, None),
            ("EXPLAIN (ANALYZE false) DELETE FROM t", Rp, E::Ro, read, None),
            ("EXPLAIN ANALYZE SELECT * FROM t", Rp, E::Ro, read, None),
            ("EXPLAIN (ANALYZE, BUFFERS) SELECT 1", Rp, E::Ro, read, None),
            ("EXPLAIN ANALYZE DELETE FROM t", P, E::W, write, None),
            ("EXPLAIN (ANALYZE true, FORMAT TEXT) INSERT INTO t VALUES (1)", P, E::W, write, None),
            ("EXPLAIN (ANALYZE 1) DELETE FROM t", P, E::W, write, None),
            ("EXPLAIN ANALYZE VERBOSE SELECT nextval('s')", P, E::F("nextval", Builtin), write, None),
            // Functions that write.
            ("SELECT nextval('s')", P, E::F("nextval", Builtin), write, None),
            ("SELECT NEXTVAL('s')", P, E::F("nextval", Builtin), write, None),
            ("SELECT pg_catalog.setval('s', 10)", P, E::F("pg_catalog.setval", Builtin), write, None),
            ("SELECT currval('s'), lastval()", P, E::F("currval", Builtin), write, None),
            ("SELECT write_fn()", P, E::F("write_fn", Volatile), write, None),
            ("SELECT * FROM t WHERE a = (SELECT write_fn())", P, E::F("write_fn", Volatile), write, None),
            ("SELECT * FROM write_fn()", P, E::F("write_fn", Volatile), write, None),
            ("WITH x AS (SELECT app.audit(1)) SELECT * FROM x", P, E::F("app.audit", Volatile), write, None),
            ("SELECT unknown_fn(1)", P, E::F("unknown_fn", Unknown), write, None),
            ("SELECT other.stable_fn()", P, E::F("other.stable_fn", Unknown), write, None),
            ("SELECT app.stable_but_writes()", P, E::F("app.stable_but_writes", Config), write, None),
            ("SELECT set_config('a.b', 'c', false)", P, E::F("set_config", Builtin), write, None),
            ("SELECT pg_advisory_xact_lock(1)", P, E::F("pg_advisory_xact_lock", Builtin), write, None),
            ("SELECT pg_advisory_lock(42)", P, E::F("pg_advisory_lock", Builtin), write, Some(PinReason::AdvisoryLock)),
            ("SELECT pg_try_advisory_lock_shared(1, 2)", P, E::F("pg_try_advisory_lock_shared", Builtin), write, Some(PinReason::AdvisoryLock)),
            ("SELECT pg_advisory_unlock(42)", P, E::F("pg_advisory_unlock", Builtin), write, None),
            ("SELECT lo_import('/tmp/x')", P, E::F("lo_import", Builtin), write, None),
            ("SELECT pg_notify('ch', 'x')", P, E::F("pg_notify", Builtin), write, None),
            ("SELECT txid_current()", P, E::F("txid_current", Builtin), write, None),
            ("SELECT pg_current_wal_lsn()", P, E::F("pg_current_wal_lsn", Builtin), write, None),
            ("SELECT query_to_xml('DELETE FROM t RETURNING *', true, false, '')", P, E::F("query_to_xml", Builtin), write, None),
            ("SELECT * FROM dblink('x', 'SELECT 1') AS t(a int)", P, E::F("dblink", Builtin), write, None),
            ("SELECT pg_terminate_backend(123)", P, E::F("pg_terminate_backend", Builtin), write, None),
            // Locks.
            ("SELECT * FROM t FOR UPDATE", P, E::L(LockKind::ForUpdate), write, None),
            ("SELECT * FROM t WHERE id = $1 FOR UPDATE SKIP LOCKED", P, E::L(LockKind::ForUpdate), write, None),
            ("SELECT * FROM t FOR NO KEY UPDATE", P, E::L(LockKind::ForNoKeyUpdate), write, None),
            ("SELECT * FROM t FOR KEY SHARE", P, E::L(LockKind::ForKeyShare), write, None),
            ("SELECT * FROM t FOR SHARE OF t NOWAIT", P, E::L(LockKind::ForShare), write, None),
            ("SELECT * FROM (SELECT * FROM t FOR UPDATE) s", P, E::L(LockKind::ForUpdate), write, None),
            ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", P, E::L(LockKind::Table), write, None),
            // DML and friends.
            ("INSERT INTO t (a) VALUES ($1) RETURNING id", P, E::W, write, None),
            ("UPDATE t SET a = a + 1 WHERE id = $1", P, E::W, write, None),
            ("DELETE FROM t WHERE id = 1", P, E::W, write, None),
            ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a", P, E::W, write, None),
            ("TRUNCATE t", P, E::W, write, None),
            ("CALL proc(1)", P, E::W, write, None),
            ("WITH x AS (DELETE FROM t WHERE a < 0 RETURNING *) SELECT count(*) FROM x", P, E::W, write, None),
            ("WITH x AS (INSERT INTO t VALUES (1) RETURNING id) SELECT id FROM x", P, E::W, write, None),
            ("WITH x AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM x", P, E::W, write, None),
            ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", P, E::W, write, None),
            ("SELECT * INTO t2 FROM t", P, E::W, write, None),
            ("SELECT * INTO TEMP t2 FROM t", P, E::W, write, Some(PinReason::TempTable)),
            // Utility and DDL.
            ("DO $$ BEGIN PERFORM 1; END $$", P, E::U, Some(K::Other), None),
            ("DO LANGUAGE plpgsql $body$ BEGIN DELETE FROM t; END $body$", P, E::U, Some(K::Other), None),
            ("COPY t TO STDOUT", P, E::U, Some(K::Other), None),
            ("COPY (SELECT * FROM t) TO STDOUT WITH (FORMAT csv)", P, E::U, Some(K::Other), None),
            ("COPY t (a, b) FROM STDIN", P, E::U, write, None),
            ("VACUUM", P, E::U, Some(K::Other), None),
            ("VACUUM ANALYZE t", P, E::U, Some(K::Other), None),
            ("VACUUM (VERBOSE, ANALYZE) t", P, E::U, Some(K::Other), None),
            ("ANALYZE t", P, E::U, Some(K::Other), None),
            ("CREATE TABLE t (a int)", P, E::U, Some(K::Other), None),
            ("CREATE TEMP TABLE tt (a int)", P, E::U, Some(K::Other), Some(PinReason::TempTable)),
            ("CREATE TEMP TABLE tt (a int) ON COMMIT DROP", P, E::U, Some(K::Other), None),
            ("create temp table tt on commit delete rows as select 1", P, E::U, Some(K::Other), Some(PinReason::TempTable)),
            ("CREATE GLOBAL TEMPORARY TABLE tt AS SELECT 1", P, E::U, Some(K::Other), Some(PinReason::TempTable)),
            ("create temporary view v as select 1", P, E::U, Some(K::Other), Some(PinReason::TempTable)),
            ("CREATE UNLOGGED TABLE t (a int)", P, E::U, Some(K::Other), None),
            ("ALTER TABLE t ADD COLUMN b int", P, E::U, Some(K::Other), None),
            ("DROP TABLE IF EXISTS t", P, E::U, Some(K::Other), None),
            ("REFRESH MATERIALIZED VIEW CONCURRENTLY mv", P, E::U, Some(K::Other), None),
            ("NOTIFY ch, 'payload'", P, E::U, Some(K::Other), None),
            ("CHECKPOINT", P, E::U, Some(K::Other), None),
            ("GRANT SELECT ON t TO r", P, E::U, Some(K::Other), None),
            ("DECLARE c CURSOR WITH HOLD FOR SELECT * FROM t", P, E::U, Some(K::Other), Some(PinReason::WithHoldCursor)),
            ("DECLARE c NO SCROLL CURSOR FOR SELECT * FROM t", P, E::U, Some(K::Other), None),
            ("FETCH 10 FROM c", P, E::U, Some(K::Other), None),
            ("EXECUTE stmt(1)", P, E::Unk, Some(K::Other), None),
            ("PREPARE q (int) AS SELECT $1", P, E::Ss, Some(K::Other), None),
            // Transaction control.
            ("BEGIN", P, E::Tx, Some(K::Begin { read_only: None }), None),
            ("begin transaction read only", P, E::Tx, Some(K::Begin { read_only: Some(true) }), None),
            ("BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE", P, E::Tx, Some(K::Begin { read_only: Some(true) }), None),
            ("BEGIN ISOLATION LEVEL REPEATABLE READ", P, E::Tx, Some(K::Begin { read_only: None }), None),
            ("START TRANSACTION READ WRITE", P, E::Tx, Some(K::Begin { read_only: Some(false) }), None),
            ("START TRANSACTION ISOLATION LEVEL READ COMMITTED READ ONLY", P, E::Tx, Some(K::Begin { read_only: Some(true) }), None),
            ("SET TRANSACTION READ ONLY", P, E::Ss, Some(K::SetTransaction { read_only: Some(true) }), None),
            ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", P, E::Ss, Some(K::SetTransaction { read_only: None }), None),
            ("COMMIT", P, E::Tx, Some(K::Commit), None),
            ("END", P, E::Tx, Some(K::Commit), None),
            ("commit and chain", P, E::Tx, Some(K::Commit), None),
            ("ROLLBACK", P, E::Tx, Some(K::Rollback), None),
            ("ABORT", P, E::Tx, Some(K::Rollback), None),
            ("SAVEPOINT s1", P, E::Tx, Some(K::Savepoint), None),
            ("RELEASE SAVEPOINT s1", P, E::Tx, Some(K::Savepoint), None),
            ("ROLLBACK TO SAVEPOINT s1", P, E::Tx, Some(K::Savepoint), None),
            ("PREPARE TRANSACTION 'gx'", P, E::Tx, Some(K::Commit), None),
            ("COMMIT PREPARED 'gx'", P, E::Tx, Some(K::Other), None),
            ("ROLLBACK PREPARED 'gx'", P, E::Tx, Some(K::Other), None),
            // Session state.
            ("SET search_path = app, public", P, E::Ss, Some(K::SetSession), None),
            ("SET SESSION statement_timeout TO 1000", P, E::Ss, Some(K::SetSession), None),
            ("SET LOCAL lock_timeout = '1s'", P, E::Ss, Some(K::SetLocal), None),
            ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", P, E::Ss, Some(K::SetSession), None),
            ("RESET search_path", P, E::Ss, Some(K::Reset), None),
            ("RESET ALL", P, E::Ss, Some(K::ResetAll), None),
            ("DISCARD ALL", P, E::Ss, Some(K::DiscardAll), None),
            ("DISCARD PLANS", P, E::Ss, Some(K::Other), None),
            ("LISTEN ch", P, E::Ss, Some(K::Listen), Some(PinReason::Listen)),
            ("UNLISTEN *", P, E::Ss, Some(K::Other), None),
            // Hints.
            ("/* sluice:primary */ SELECT 1", P, E::H, read, None),
            ("-- why\n/*sluice: primary*/ SELECT * FROM t", P, E::H, read, None),
            ("/* sluice:replica */ SELECT write_fn()", Rp, E::H, read, None),
            ("/* sluice:replica */ SELECT unknown_fn()", Rp, E::H, read, None),
            ("/* sluice:replica */ SELECT 1", Rp, E::Ro, read, None),
            ("/* sluice:replica */ SELECT nextval('s')", P, E::F("nextval", Builtin), write, None),
            ("/* sluice:replica */ SELECT app.stable_but_writes()", P, E::F("app.stable_but_writes", Config), write, None),
            ("/* sluice:replica */ DELETE FROM t", P, E::W, write, None),
            ("/* sluice:replica */ SELECT * FROM t FOR UPDATE", P, E::L(LockKind::ForUpdate), write, None),
            ("SELECT /* sluice:primary */ 1", Rp, E::Ro, read, None),
            // Multi-statement strings.
            ("SELECT 1; SELECT 2", Rp, E::Ro, None, None),
            ("SELECT 1; DELETE FROM t; SELECT 3", P, E::W, None, None),
            ("SELECT 'a;b'; SELECT $$;$$;", Rp, E::Ro, None, None),
            ("BEGIN; SELECT 1; COMMIT", P, E::Tx, None, None),
            ("SELECT 1; SELECT pg_advisory_lock(1)", P, E::F("pg_advisory_lock", Builtin), None, Some(PinReason::AdvisoryLock)),
            ("/* sluice:replica */ SELECT write_fn(); SELECT 2", Rp, E::H, None, None),
            // Garbage.
            ("SELEKT 1", P, E::Pf, Some(K::Other), None),
            ("SELECT FROM WHERE (((", P, E::Pf, Some(K::Other), None),
            ("SELECT 1 +", P, E::Pf, Some(K::Other), None),
            ("'unterminated", P, E::Pf, Some(K::Other), None),
            ("SELECT 'unterminated", P, E::Pf, Some(K::Other), None),
            ("SELECT X'1\\'; DELETE FROM t; --'", P, E::Pf, None, None),
            ("SELECT 1; --x\rDELETE FROM t", P, E::W, None, None),
            ("SELECT 1 --x\r, nextval('s')", P, E::F("nextval", Builtin), read.map(|_| K::Write), None),
            ("SELECT N'a\\'; DELETE FROM t; --'", P, E::W, None, None),
            (")))", P, E::Pf, Some(K::Other), None),
            ("", P, E::Unk, None, None),
            ("  ; ;  -- nothing", P, E::Unk, None, None),
        ]
    }

    #[test]
    fn table() {
        let policy = policy();
        let classifier = Classifier::new(1 << 20);
        let cases = cases();
        assert!(cases.len() >= 90, "{} cases", cases.len());
        let mut failures = Vec::new();
        for (sql, target, reason, kind, pin) in cases {
            // Uncached, then twice through the cache (miss, hit).
            for pass in 0..3 {
                let c = if pass == 0 {
                    classify_uncached(sql, &policy)
                } else {
                    classifier.classify(sql, &policy)
                };
                let kind_ok = match kind {
                    Some(k) => c.statements.len() == 1 && c.statements[0].kind == k,
                    None => true,
                };
                if c.target != target
                    || !matches_reason(&c.reason, reason)
                    || !kind_ok
                    || c.pins != pin
                {
                    failures.push(format!(
                        "{sql:?} (pass {pass}): want {target:?} {reason:?} {kind:?} {pin:?}, got {c:?} = {}",
                        explain(&c)
                    ));
                    break;
                }
                // The routing summary agrees with the full classification.
                let sum = classifier.summarize(sql, &policy);
                if sum.target != c.target
                    || sum.statements != c.statements.len()
                    || sum.first != c.statements.first().map(|s| s.kind)
                    || sum.pins != c.pins
                {
                    failures.push(format!("{sql:?}: summary {sum:?} differs from {c:?}"));
                    break;
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{} failures:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn multi_statement_kinds() {
        let c = classify_uncached(
            "BEGIN READ ONLY; SELECT 1; SET LOCAL a = 1; COMMIT",
            &policy(),
        );
        let kinds: Vec<Kind> = c.statements.iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            vec![
                K::Begin {
                    read_only: Some(true)
                },
                K::Read,
                K::SetLocal,
                K::Commit
            ]
        );
        assert_eq!(c.statements[1].target, Rp);
        // A SQL-standard function body does not end at its inner `;`.
        let c = classify_uncached(
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT CASE WHEN true THEN 1 END; SELECT 2; END; SELECT 3",
            &policy(),
        );
        assert_eq!(c.statements.len(), 2, "{c:?}");
        assert_eq!(c.statements[1].kind, K::Read);
        // A rule body in parentheses neither.
        let c = classify_uncached(
            "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); INSERT INTO b VALUES (2))",
            &policy(),
        );
        assert_eq!(c.statements.len(), 1);
    }

    /// Statements whose tree would be deeper than a stack allows go to the
    /// primary unparsed, on a 2 MiB stack like a runtime worker's; up to the
    /// cap they are classified as usual.
    #[test]
    fn deep_statements_go_to_the_primary_without_overflowing_the_stack() {
        let cases = [
            (format!("SELECT {}1", "1+".repeat(200_000)), P),
            (format!("SELECT 1{}", "::int".repeat(100_000)), P),
            (
                format!("SELECT 1 WHERE {}true", "true OR ".repeat(100_000)),
                P,
            ),
            (format!("{}SELECT 1", "EXPLAIN ANALYZE ".repeat(60_000)), P),
            (format!("SELECT {}1", "1+".repeat(4_990)), Rp),
            (
                format!("SELECT 1 WHERE 1 IN ({}1)", "1, ".repeat(4_990)),
                Rp,
            ),
        ];
        let worker = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let policy = FunctionPolicy::default();
                for (sql, target) in cases {
                    let c = classify_uncached(&sql, &policy);
                    assert_eq!(c.target, target, "{}", &sql[..40]);
                    if target == P {
                        assert!(
                            matches!(c.reason, Reason::ParseFailure(_)),
                            "{:?}",
                            c.reason
                        );
                    }
                }
            })
            .unwrap();
        worker.join().unwrap();
    }

    #[test]
    fn no_catalog_loaded() {
        let policy = FunctionPolicy::default();
        let c = classify_uncached("SELECT 1", &policy);
        assert_eq!((c.target, &c.reason), (Rp, &Reason::ReadOnly));
        let c = classify_uncached("SELECT * FROM t WHERE a = $1", &policy);
        assert_eq!(c.target, Rp);
        let c = classify_uncached("SELECT coalesce(a, 1) FROM t", &policy);
        assert_eq!(c.target, Rp);
        let c = classify_uncached("SELECT now()", &policy);
        assert_eq!(c.target, P);
        assert!(matches!(
            c.reason,
            Reason::Function {
                cause: WriteCause::NoCatalog,
                ..
            }
        ));
        assert_eq!(explain(&c), "primary (function now: catalog not loaded)");
        let c = classify_uncached("SELECT nextval('s')", &policy);
        assert!(matches!(
            c.reason,
            Reason::Function {
                cause: WriteCause::Builtin,
                ..
            }
        ));
    }

    #[test]
    fn cache_rechecks_policy() {
        let classifier = Classifier::new(1 << 16);
        let sql = "SELECT stable_fn(), count(*) FROM t WHERE a = 1";
        let none = FunctionPolicy::default();
        assert_eq!(classifier.classify(sql, &none).target, P);
        let loaded = policy();
        assert_eq!(classifier.classify(sql, &loaded).target, Rp);
        // Same fingerprint, the catalog changed: stable_fn became volatile.
        let changed = FunctionPolicy::new(
            Some(Arc::new(Catalog::from_rows([
                ("public", "stable_fn", 'v'),
                ("pg_catalog", "count", 'i'),
            ]))),
            [""; 0],
            [""; 0],
        );
        let c = classifier.classify("SELECT stable_fn(), count(*) FROM t WHERE a = 2", &changed);
        assert_eq!(c.target, P);
        assert!(matches!(
            c.reason,
            Reason::Function {
                cause: WriteCause::Volatile,
                ..
            }
        ));
        // Config override on the same cached entry.
        let overridden = FunctionPolicy::new(Some(catalog()), [""; 0], ["stable_fn"]);
        let c = classifier.classify(sql, &overridden);
        assert!(matches!(
            c.reason,
            Reason::Function {
                cause: WriteCause::Config,
                ..
            }
        ));
    }

    #[test]
    fn hints_survive_the_cache() {
        let classifier = Classifier::new(1 << 16);
        let p = policy();
        for _ in 0..2 {
            assert_eq!(
                classifier
                    .classify("SELECT a FROM t WHERE b = 1", &p)
                    .target,
                Rp
            );
            let c = classifier.classify("/* sluice:primary */ SELECT a FROM t WHERE b = 2", &p);
            assert_eq!((c.target, &c.reason), (P, &Reason::Hint));
            assert_eq!(classifier.classify("SELECT write_fn()", &p).target, P);
            let c = classifier.classify("/* sluice:replica */ SELECT write_fn()", &p);
            assert_eq!((c.target, &c.reason), (Rp, &Reason::Hint));
        }
    }

    #[test]
    fn literals_share_cache_entries() {
        let classifier = Classifier::new(1 << 16);
        let p = policy();
        for i in 0..50 {
            let sql = format!("SELECT * FROM t WHERE a = {i} AND b = 'x{i}'");
            assert_eq!(classifier.classify(&sql, &p).target, Rp);
        }
        assert_eq!(classifier.cache_usage().0, 1);
    }

    #[test]
    fn cache_is_bounded() {
        let classifier = Classifier::new(16 * 1024);
        let p = policy();
        for i in 0..5000 {
            let sql = format!("SELECT c{i}, stable_fn() FROM t{i}");
            let _ = classifier.classify(&sql, &p);
        }
        let (_, bytes) = classifier.cache_usage();
        assert!(bytes <= 16 * 1024, "{bytes}");
    }

    #[test]
    fn explain_texts() {
        let p = policy();
        let e = |s: &str| explain(&classify_uncached(s, &p));
        assert_eq!(e("SELECT 1"), "replica (read-only)");
        assert_eq!(
            e("SELECT nextval('s')"),
            "primary (function nextval writes)"
        );
        assert_eq!(e("SELECT 1 FOR UPDATE"), "primary (FOR UPDATE lock)");
        assert_eq!(e("/* sluice:primary */ SELECT 1"), "primary (hint)");
        assert_eq!(e("SELECT 1; DELETE FROM t"), "primary (statement 2: write)");
        assert_eq!(
            e("LISTEN x"),
            "primary (session state), pins the session: LISTEN"
        );
        assert!(
            e("SELEKT").starts_with("primary (could not parse: "),
            "{}",
            e("SELEKT")
        );
    }

    #[test]
    fn hostile_input() {
        let p = policy();
        let deep = format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000));
        assert_eq!(classify_uncached(&deep, &p).target, P);
        let deep = format!("SELECT {}", "-".repeat(100_000));
        let _ = classify_uncached(&deep, &p);
        let long = format!("SELECT '{}'", "x".repeat(MAX_PARSE_LEN));
        let c = classify_uncached(&long, &p);
        assert!(matches!(c.reason, Reason::ParseFailure(_)));
        for s in [
            "\0",
            "$",
            "$$",
            "E'\\",
            "/*",
            "U&\"",
            "EXPLAIN",
            "EXPLAIN (",
            "EXPLAIN ANALYZE",
            "TABLE",
            "(",
            "WITH",
            "SET",
            "COPY",
            "\u{feff}SELECT 1",
            "SELECT 'é' || \"ü\"",
        ] {
            let c = classify_uncached(s, &p);
            let _ = explain(&c);
        }
    }
}
