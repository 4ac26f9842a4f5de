//! Session parameters (GUCs) as the pooler tracks them for a client and for a
//! server connection, so that a client's settings follow it to whichever server
//! serves it, with a SET only where the values differ.

use std::hash::BuildHasher;
use std::sync::OnceLock;

/// Parameters by name, matched case-insensitively as PostgreSQL does, keeping
/// the spelling the server reports (`DateStyle`, `TimeZone`).
#[derive(Debug, Clone, Default)]
pub struct ParamMap {
    entries: Vec<(String, String)>,
    /// Names whose value is SQL text as the client wrote it in a SET
    /// (`'$user', public`), replayed verbatim rather than quoted.
    raw: Vec<String>,
    /// A keyed hash of the contents, kept current by every change, so that a
    /// server can remember which settings it was last brought in line with
    /// and skip the comparison when the next client's are the same.
    hash: u64,
}

impl PartialEq for ParamMap {
    fn eq(&self, other: &ParamMap) -> bool {
        self.entries == other.entries && self.raw == other.raw
    }
}

impl Eq for ParamMap {}

/// The hash key, random per process: a client that picks its own settings
/// cannot aim for a collision with another's.
fn hash_key() -> &'static std::collections::hash_map::RandomState {
    static KEY: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    KEY.get_or_init(Default::default)
}

impl ParamMap {
    pub fn new() -> ParamMap {
        let mut m = ParamMap::default();
        m.rehash();
        m
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Sets a value; an existing entry keeps its spelling unless the new one
    /// comes from the server (`canonical`).
    pub fn set(&mut self, name: &str, value: &str, canonical: bool) {
        if !self.raw.is_empty() {
            self.raw.retain(|k| !k.eq_ignore_ascii_case(name));
        }
        self.put(name, value, canonical);
        self.rehash();
    }

    /// The contents' hash: equal maps have equal hashes; unequal ones differ
    /// but with negligible odds.
    pub fn content_hash(&self) -> u64 {
        self.hash
    }

    fn rehash(&mut self) {
        self.hash = hash_key().hash_one((&self.entries, &self.raw));
    }

    /// Sets a value that is SQL text from a client's SET, to be replayed as is.
    pub fn set_raw(&mut self, name: &str, sql_value: &str) {
        self.put(name, sql_value, false);
        if !self.is_raw(name) {
            self.raw.push(name.to_string());
        }
        self.rehash();
    }

    pub fn is_raw(&self, name: &str) -> bool {
        self.raw.iter().any(|k| k.eq_ignore_ascii_case(name))
    }

    fn put(&mut self, name: &str, value: &str, canonical: bool) {
        if let Some(entry) = self
            .entries
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            if canonical && entry.0 != name {
                entry.0 = name.to_string();
            }
            if entry.1 != value {
                entry.1 = value.to_string();
            }
        } else {
            self.entries.push((name.to_string(), value.to_string()));
        }
    }

    pub fn remove(&mut self, name: &str) {
        self.entries.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.raw.retain(|k| !k.eq_ignore_ascii_case(name));
        self.rehash();
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes of names and values.
    pub fn bytes(&self) -> usize {
        self.entries.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

/// Parameters a client may not set through the startup packet or that the
/// pooler must not forward as a SET.
pub fn is_startup_only(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "user" | "database" | "options" | "replication"
    )
}

/// Parameters that belong to the server, reported but never set by clients.
pub fn is_server_owned(name: &str) -> bool {
    const OWNED: [&str; 6] = [
        "server_version",
        "server_encoding",
        "integer_datetimes",
        "is_superuser",
        "session_authorization",
        "in_hot_standby",
    ];
    OWNED.iter().any(|o| o.eq_ignore_ascii_case(name))
}

/// Quotes a value as an SQL string literal.
pub fn quote_literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    if value.contains('\\') {
        out.push('E');
    }
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A parameter name safe to put in a SET statement unquoted.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

/// The SET and RESET statements that make a server look like `wanted`, given
/// its `defaults` and the `overrides` in effect on it; `None` when it already
/// does. Allocates nothing in that common case.
pub fn sync_statements(
    wanted: &ParamMap,
    overrides: &ParamMap,
    defaults: &ParamMap,
) -> Option<String> {
    let mut sql: Option<String> = None;
    for (name, value) in wanted.iter() {
        let current = overrides.get(name).or_else(|| defaults.get(name));
        if current != Some(value) && !is_server_owned(name) && is_valid_name(name) {
            let s = sql.get_or_insert_with(String::new);
            if wanted.is_raw(name) {
                s.push_str(&format!("SET {name} = {value};"));
            } else {
                s.push_str(&format!("SET {name} = {};", quote_literal(value)));
            }
        }
    }
    for (name, _) in overrides.iter() {
        if wanted.get(name).is_none() && !is_server_owned(name) && is_valid_name(name) {
            sql.get_or_insert_with(String::new)
                .push_str(&format!("RESET {name};"));
        }
    }
    sql
}

/// Splits a libpq `options` value into `name=value` settings from `-c name=value`
/// and `--name=value`, honouring backslash escapes of spaces.
pub fn parse_options(options: &str) -> Result<Vec<(String, String)>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next().ok_or("-c needs name=value")?
        } else if let Some(s) = w.strip_prefix("-c") {
            s.to_string()
        } else if let Some(s) = w.strip_prefix("--") {
            s.to_string()
        } else {
            return Err(format!("unsupported option {w:?} (only -c name=value)"));
        };
        let (name, value) = setting
            .split_once('=')
            .ok_or_else(|| format!("option {setting:?} needs name=value"))?;
        out.push((name.replace('-', "_"), value.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse() {
        let got =
            parse_options(r"-c search_path=a\ b --statement-timeout=5s -csynchronous_commit=off")
                .unwrap();
        assert_eq!(
            got,
            vec![
                ("search_path".into(), "a b".into()),
                ("statement_timeout".into(), "5s".into()),
                ("synchronous_commit".into(), "off".into()),
            ]
        );
        assert!(parse_options("-x").is_err());
    }

    #[test]
    fn sync_sets_only_differences() {
        let mut wanted = ParamMap::new();
        wanted.set("application_name", "app", false);
        wanted.set("TimeZone", "UTC", false);
        let mut overrides = ParamMap::new();
        overrides.set("search_path", "x", false);
        let mut defaults = ParamMap::new();
        defaults.set("TimeZone", "UTC", true);
        defaults.set("application_name", "", true);
        assert_eq!(
            sync_statements(&wanted, &overrides, &defaults).as_deref(),
            Some("SET application_name = 'app';RESET search_path;")
        );
        overrides.set("application_name", "app", false);
        overrides.remove("search_path");
        assert_eq!(sync_statements(&wanted, &overrides, &defaults), None);
    }

    #[test]
    fn literals_are_quoted() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"a\b"), r"E'a\\b'");
    }
}
