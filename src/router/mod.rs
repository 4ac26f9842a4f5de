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

/// True when the first keyword of `sql` is `word` (ASCII, case-insensitive).
pub fn starts_with_keyword(sql: &[u8], word: &str) -> bool {
    first_keyword(sql).eq_ignore_ascii_case(word.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_comments_and_space() {
        assert_eq!(first_keyword(b"  select 1"), b"select");
        assert_eq!(
            first_keyword(b"-- hi\n/* a /* nested */ b */ LISTEN x"),
            b"LISTEN"
        );
        assert_eq!(first_keyword(b"(SELECT 1)"), b"SELECT");
        assert_eq!(first_keyword(b""), b"");
        assert!(starts_with_keyword(b"listen foo", "LISTEN"));
        assert!(!starts_with_keyword(b"listener", "LISTEN"));
        assert_eq!(
            keywords(b"DEALLOCATE /* x */ prepare ALL", 3),
            vec![&b"DEALLOCATE"[..], b"prepare", b"ALL"]
        );
    }
}
