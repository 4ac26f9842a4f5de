//! SET and RESET statements that a transaction pooler must track so that a
//! client's settings follow it to every server that serves it.
//!
//! Only a plain value list is recognised (quoted strings, quoted identifiers,
//! words and numbers, separated by commas). Anything else (`SET LOCAL`,
//! `SET TIME ZONE`, `SET ROLE`, expressions, comments) is not tracked, so a
//! value that is replayed on another server is always exactly one the client's
//! own server has accepted.

/// A change to the client's session that sluice replays elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetChange {
    /// `SET [SESSION] name {TO | =} value`: the value as SQL text.
    Set { name: String, value: String },
    /// `RESET name` or `SET name TO DEFAULT`.
    Reset { name: String },
}

/// Recognises a single trackable SET or RESET in a simple Query's text.
pub fn parse_set(sql: &[u8]) -> Option<SetChange> {
    let text = std::str::from_utf8(sql).ok()?;
    let text = text.trim_end_matches('\0');
    let mut lx = Lexer { s: text, at: 0 };
    let first = lx.word()?;
    if first.eq_ignore_ascii_case("RESET") {
        let name = lx.name()?;
        lx.end()?;
        if name == "all" {
            return None;
        }
        return Some(SetChange::Reset { name });
    }
    if !first.eq_ignore_ascii_case("SET") {
        return None;
    }
    let mut name = lx.name()?;
    if name == "session" {
        name = lx.name()?;
    }
    // SET LOCAL belongs to its transaction; the others have their own syntax.
    if matches!(
        name.as_str(),
        "local" | "transaction" | "time" | "role" | "names" | "schema" | "characteristics"
    ) {
        return None;
    }
    lx.skip_ws();
    if lx.rest().starts_with('=') {
        lx.at += 1;
    } else {
        let to = lx.word()?;
        if !to.eq_ignore_ascii_case("TO") {
            return None;
        }
    }
    let mut items = Vec::new();
    loop {
        items.push(lx.value()?);
        lx.skip_ws();
        if lx.rest().starts_with(',') {
            lx.at += 1;
            continue;
        }
        break;
    }
    lx.end()?;
    if items.len() == 1 && items[0].eq_ignore_ascii_case("DEFAULT") {
        return Some(SetChange::Reset { name });
    }
    Some(SetChange::Set {
        name,
        value: items.join(", "),
    })
}

struct Lexer<'a> {
    s: &'a str,
    at: usize,
}

impl<'a> Lexer<'a> {
    fn rest(&self) -> &'a str {
        &self.s[self.at..]
    }

    fn skip_ws(&mut self) {
        let r = self.rest();
        self.at += r.len() - r.trim_start().len();
    }

    fn word(&mut self) -> Option<&'a str> {
        self.skip_ws();
        let r = self.rest();
        let n = r
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .count();
        if n == 0 || !r.as_bytes()[0].is_ascii_alphabetic() && r.as_bytes()[0] != b'_' {
            return None;
        }
        self.at += n;
        Some(&r[..n])
    }

    /// A parameter name, folded to lower case; dotted custom names allowed.
    fn name(&mut self) -> Option<String> {
        let mut name = self.word()?.to_ascii_lowercase();
        while self.rest().starts_with('.') {
            self.at += 1;
            let part = self.word()?;
            name.push('.');
            name.push_str(&part.to_ascii_lowercase());
        }
        Some(name)
    }

    fn value(&mut self) -> Option<String> {
        self.skip_ws();
        let r = self.rest();
        let b = r.as_bytes();
        match *b.first()? {
            q @ (b'\'' | b'"') => {
                // Quoted, with the quote doubled inside; no backslash escapes.
                let mut i = 1;
                loop {
                    match *b.get(i)? {
                        c if c == q && b.get(i + 1) == Some(&q) => i += 2,
                        c if c == q => break,
                        _ => i += 1,
                    }
                }
                self.at += i + 1;
                Some(r[..=i].to_string())
            }
            _ => {
                let n = b
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || b"_.+-$".contains(c))
                    .count();
                // "--" starts a comment.
                if n == 0 || r[..n].contains("--") {
                    return None;
                }
                self.at += n;
                Some(r[..n].to_string())
            }
        }
    }

    /// Only white space and one optional semicolon may follow.
    fn end(&mut self) -> Option<()> {
        self.skip_ws();
        if self.rest().starts_with(';') {
            self.at += 1;
            self.skip_ws();
        }
        self.rest().is_empty().then_some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str, value: &str) -> Option<SetChange> {
        Some(SetChange::Set {
            name: name.into(),
            value: value.into(),
        })
    }

    #[test]
    fn recognised() {
        assert_eq!(
            parse_set(b"SET statement_timeout = 5000"),
            set("statement_timeout", "5000")
        );
        assert_eq!(
            parse_set(b"set Statement_Timeout to '5s';"),
            set("statement_timeout", "'5s'")
        );
        assert_eq!(
            parse_set(b"SET search_path = '$user', public"),
            set("search_path", "'$user', public")
        );
        assert_eq!(
            parse_set(b"SET SESSION search_path TO \"My Schema\",public\0"),
            set("search_path", "\"My Schema\", public")
        );
        assert_eq!(
            parse_set(b"SET myapp.user_id = 42"),
            set("myapp.user_id", "42")
        );
        assert_eq!(
            parse_set(b"SET work_mem = '64MB'"),
            set("work_mem", "'64MB'")
        );
        assert_eq!(parse_set(b"SET x = 'it''s'"), set("x", "'it''s'"));
        assert_eq!(
            parse_set(b"SET lock_timeout = -1"),
            set("lock_timeout", "-1")
        );
        assert_eq!(
            parse_set(b"RESET statement_timeout"),
            Some(SetChange::Reset {
                name: "statement_timeout".into()
            })
        );
        assert_eq!(
            parse_set(b"SET statement_timeout TO DEFAULT"),
            Some(SetChange::Reset {
                name: "statement_timeout".into()
            })
        );
    }

    #[test]
    fn not_tracked() {
        for sql in [
            "SET LOCAL statement_timeout = 1",
            "SET TRANSACTION READ ONLY",
            "SET TIME ZONE 'UTC'",
            "SET ROLE admin",
            "SET SESSION AUTHORIZATION bob",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            "RESET ALL",
            "SET x = 1; DROP TABLE t",
            "SET x = 1 -- comment",
            "SET x = 1 /* c */",
            "SET x = now()",
            "SET x = E'a\\'b'",
            "SET x = 'unterminated",
            "SET = 1",
            "SELECT 1",
            "SET x",
        ] {
            assert_eq!(parse_set(sql.as_bytes()), None, "{sql}");
        }
    }
}
