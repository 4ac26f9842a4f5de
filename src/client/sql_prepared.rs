//! SQL-level `PREPARE` / `EXECUTE` / `DEALLOCATE` across pooled servers.
//!
//! A client's SQL statement names are its own, so each PREPARE gets a
//! server-side name unique to it (`sluice_<id>`, from the statement
//! registry's counter) and is replayed with that name on any server that
//! lacks it before an EXECUTE or DEALLOCATE. Only single-statement simple
//! queries are mapped; anything else passes through to the server unchanged.

use std::collections::HashMap;

use crate::router::first_keyword;

/// What a simple Query does to SQL-level prepared statements.
#[derive(Debug, PartialEq, Eq)]
pub enum SqlCommand<'a> {
    /// `PREPARE name <rest>`, where rest is `[(types)] AS statement`.
    Prepare { name: String, rest: &'a [u8] },
    /// `EXECUTE name <rest>`, where rest is `[(arguments)]`.
    Execute { name: String, rest: &'a [u8] },
    /// `DEALLOCATE [PREPARE] name` (not ALL).
    Deallocate { name: String },
}

/// A client's SQL-level statement.
#[derive(Debug, Clone)]
pub struct SqlStatement {
    pub id: u64,
    /// `[(types)] AS statement`, as the client wrote it.
    pub rest: Box<[u8]>,
}

impl SqlStatement {
    /// The Query that prepares it on a server under its own name.
    pub fn prepare_query(&self) -> Vec<u8> {
        let mut sql = format!("PREPARE {} ", super::prepared::global_name(self.id)).into_bytes();
        sql.extend_from_slice(&self.rest);
        sql
    }
}

#[derive(Default)]
pub struct SqlStatements {
    by_name: HashMap<String, SqlStatement>,
    /// Bytes of the names and texts held.
    bytes: usize,
}

fn held_bytes(name: &str, statement: &SqlStatement) -> usize {
    name.len() + statement.rest.len()
}

impl SqlStatements {
    pub fn get(&self, name: &str) -> Option<&SqlStatement> {
        self.by_name.get(name)
    }

    pub fn insert(&mut self, name: String, statement: SqlStatement) {
        let name_len = name.len();
        self.bytes += name_len + statement.rest.len();
        if let Some(old) = self.by_name.insert(name, statement) {
            self.bytes -= name_len + old.rest.len();
        }
    }

    pub fn remove(&mut self, name: &str) -> Option<SqlStatement> {
        let old = self.by_name.remove(name)?;
        self.bytes -= held_bytes(name, &old);
        Some(old)
    }

    pub fn clear(&mut self) {
        self.by_name.clear();
        self.bytes = 0;
    }

    /// (names, bytes) held.
    pub fn usage(&self) -> (usize, usize) {
        (self.by_name.len(), self.bytes)
    }
}

/// Recognises a single PREPARE, EXECUTE or DEALLOCATE in a Query's text.
pub fn parse(sql: &[u8]) -> Option<SqlCommand<'_>> {
    let sql = sql.strip_suffix(b"\0").unwrap_or(sql);
    let keyword = first_keyword(sql);
    let is = |w: &str| keyword.eq_ignore_ascii_case(w.as_bytes());
    if !(is("PREPARE") || is("EXECUTE") || is("DEALLOCATE")) {
        return None;
    }
    if !single_statement(sql) {
        return None;
    }
    let after_keyword = offset_after(sql, keyword);
    let mut rest = &sql[after_keyword..];
    if is("DEALLOCATE") {
        let next = first_keyword(rest);
        if next.eq_ignore_ascii_case(b"PREPARE") {
            rest = &rest[offset_after(rest, next)..];
        }
    }
    let (name, rest) = identifier(rest)?;
    if is("PREPARE") {
        Some(SqlCommand::Prepare { name, rest })
    } else if is("EXECUTE") {
        Some(SqlCommand::Execute { name, rest })
    } else if name == "all" {
        None
    } else {
        Some(SqlCommand::Deallocate { name })
    }
}

/// Offset just past `word`, a slice of `text`.
fn offset_after(text: &[u8], word: &[u8]) -> usize {
    word.as_ptr() as usize - text.as_ptr() as usize + word.len()
}

/// A statement name: an identifier folded to lower case, or a quoted one.
fn identifier(text: &[u8]) -> Option<(String, &[u8])> {
    let start = text.iter().position(|b| !b.is_ascii_whitespace())?;
    let text = &text[start..];
    if text.first() == Some(&b'"') {
        let mut name = Vec::new();
        let mut i = 1;
        while i < text.len() {
            if text[i] == b'"' {
                if text.get(i + 1) == Some(&b'"') {
                    name.push(b'"');
                    i += 2;
                    continue;
                }
                return Some((String::from_utf8(name).ok()?, &text[i + 1..]));
            }
            name.push(text[i]);
            i += 1;
        }
        return None;
    }
    let end = text
        .iter()
        .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_' || *b == b'$'))
        .unwrap_or(text.len());
    if end == 0 || text[0].is_ascii_digit() {
        return None;
    }
    let name = std::str::from_utf8(&text[..end]).ok()?.to_ascii_lowercase();
    Some((name, &text[end..]))
}

/// No `;` other than at the very end, outside quotes, comments and dollar
/// quotes would be hard to tell apart; any `;` followed by more text counts
/// as several statements, which are then passed through unmapped.
fn single_statement(sql: &[u8]) -> bool {
    match sql.iter().position(|&b| b == b';') {
        None => true,
        Some(i) => sql[i + 1..].iter().all(|b| b.is_ascii_whitespace()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_commands() {
        assert_eq!(
            parse(b"PREPARE Foo (int) AS SELECT $1\0"),
            Some(SqlCommand::Prepare {
                name: "foo".into(),
                rest: b" (int) AS SELECT $1"
            })
        );
        assert_eq!(
            parse(b"execute \"Foo\"(1);"),
            Some(SqlCommand::Execute {
                name: "Foo".into(),
                rest: b"(1);"
            })
        );
        assert_eq!(
            parse(b"DEALLOCATE PREPARE foo"),
            Some(SqlCommand::Deallocate { name: "foo".into() })
        );
        assert_eq!(parse(b"DEALLOCATE ALL"), None);
        assert_eq!(parse(b"PREPARE a AS SELECT 1; SELECT 2"), None);
        assert_eq!(parse(b"SELECT 1"), None);
    }
}
