//! Routing: statement classification (`classify`, over `fingerprint` and
//! `functions`), SET tracking (`session_state`), each database's replica state
//! and load balancer (`replicas`) and the monitor that keeps it current
//! (`monitor`). Here: cheap keyword scans used before any parse.

mod chunk;
pub mod classify;
pub mod cli;
pub mod fingerprint;
pub mod functions;
pub mod monitor;
pub mod replicas;
pub mod session_state;
pub mod summary;

pub use summary::{Summary, SummaryMemo};

/// The first keyword of `sql`, after white space, comments and opening
/// parentheses, as an ASCII slice; empty when there is none.
pub fn first_keyword(sql: &[u8]) -> &[u8] {
    let mut i = 0;
    while i < sql.len() {
        match sql[i] {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' | b'(' => i += 1,
            b'-' if sql.get(i + 1) == Some(&b'-') => {
                while i < sql.len() && sql[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if sql.get(i + 1) == Some(&b'*') => {
                // Block comments nest in PostgreSQL.
                let mut depth = 0usize;
                while i < sql.len() {
                    if sql[i] == b'/' && sql.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if sql[i] == b'*' && sql.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            _ => break,
        }
    }
    let start = i;
    while i < sql.len() && (sql[i].is_ascii_alphanumeric() || sql[i] == b'_') {
        i += 1;
    }
    &sql[start..i]
}

/// Up to `n` leading keywords of `sql`, skipping white space and comments.
pub fn keywords(sql: &[u8], n: usize) -> Vec<&[u8]> {
    let mut out = Vec::with_capacity(n);
    let mut rest = sql;
    while out.len() < n {
        let word = first_keyword(rest);
        if word.is_empty() {
            break;
        }
        out.push(word);
        let end = word.as_ptr() as usize - rest.as_ptr() as usize + word.len();
        rest = &rest[end..];
    }
    out
}

/// Whether `sql` may create state that pins a client to its server: a cheap
/// look for the words every such statement has (`temp` starting TEMP or
/// TEMPORARY, `advisory` in the session lock functions, `hold` in WITH HOLD,
/// `listen`), so that only those texts are classified. False positives are
/// classified and cleared; there are no false negatives. `temp`,
/// `temporary`, `hold` and `listen` must be whole words, so identifiers such
/// as `attempts`, `template` or `threshold` do not send a statement to the
/// classifier.
pub fn may_pin(sql: &[u8]) -> bool {
    let has = |i: usize, word: &[u8]| {
        sql.get(i..i + word.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(word))
    };
    let in_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80;
    // `word` alone at `i`: no identifier byte before or after it.
    let whole = |i: usize, word: &[u8]| {
        has(i, word)
            && (i == 0 || !in_word(sql[i - 1]))
            && sql.get(i + word.len()).is_none_or(|&b| !in_word(b))
    };
    (0..sql.len()).any(|i| match sql[i] | 0x20 {
        b't' => whole(i, b"temp") || whole(i, b"temporary"),
        b'a' => has(i, b"advisory"),
        b'h' => whole(i, b"hold"),
        b'l' => whole(i, b"listen"),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn may_pin_finds_every_pinning_word() {
        for sql in [
            "CREATE TEMP TABLE t (a int)",
            "create temporary view v as select 1",
            "SELECT * INTO TEMP t FROM x",
            "SELECT pg_advisory_lock(1)",
            "select PG_ADVISORY_LOCK_SHARED(1)",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "SELECT 1;LISTEN ch",
            "CREATE/**/TEMP TABLE t (a int)",
            "SELECT 1 INTO\nTEMPORARY t",
        ] {
            assert!(may_pin(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "INSERT INTO login_attempts (template, threshold) VALUES (1, 2)",
            "SELECT placeholder, holdings, unlisten FROM t",
            "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2",
            "",
            "te",
        ] {
            assert!(!may_pin(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn skips_comments_and_space() {
        assert_eq!(first_keyword(b"  select 1"), b"select");
        assert_eq!(
            first_keyword(b"-- hi\n/* a /* nested */ b */ LISTEN x"),
            b"LISTEN"
        );
        assert_eq!(first_keyword(b"(SELECT 1)"), b"SELECT");
        assert_eq!(first_keyword(b""), b"");
        assert!(first_keyword(b"listen foo").eq_ignore_ascii_case(b"LISTEN"));
        assert!(!first_keyword(b"listener").eq_ignore_ascii_case(b"LISTEN"));
        assert_eq!(
            keywords(b"DEALLOCATE /* x */ prepare ALL", 3),
            vec![&b"DEALLOCATE"[..], b"prepare", b"ALL"]
        );
    }
}
