//! What sluice knows about functions: which ones write (or need the primary),
//! from a built-in list, the operator's configuration and the catalog loaded
//! from the primary. Only a provably read-only call may go to a replica.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Loads every function, aggregate and window function with its schema and
/// volatility, for [`Catalog::from_rows`].
pub const CATALOG_QUERY: &str = "SELECT n.nspname::text, p.proname::text, p.provolatile::text \
     FROM pg_catalog.pg_proc p \
     JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace";

/// pg_catalog functions that write, take locks or session state, or only work
/// on a primary (exact names).
const BUILTIN_WRITE: &[&str] = &[
    "nextval",
    "setval",
    "currval",
    "lastval",
    "lowrite",
    "loread",
    "pg_notify",
    "set_config",
    "txid_current",
    "txid_current_if_assigned",
    "pg_current_xact_id",
    "pg_current_xact_id_if_assigned",
    "pg_current_wal_lsn",
    "pg_current_wal_insert_lsn",
    "pg_current_wal_flush_lsn",
    "pg_current_xlog_location",
    "pg_current_xlog_insert_location",
    "pg_current_xlog_flush_location",
    "pg_switch_wal",
    "pg_switch_xlog",
    "pg_create_restore_point",
    "pg_export_snapshot",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_cancel_backend",
    "pg_terminate_backend",
    "pg_promote",
    "pg_drop_replication_slot",
    "pg_replication_slot_advance",
    "pg_copy_physical_replication_slot",
    "pg_copy_logical_replication_slot",
    "pg_sync_replication_slots",
    "pg_logical_emit_message",
    "pg_import_system_collations",
    "query_to_xml",
    "query_to_xml_and_xmlschema",
    "query_to_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "dblink",
    "dblink_exec",
    "pg_file_write",
    "pg_file_rename",
    "pg_file_unlink",
    "pg_file_sync",
];

/// Name prefixes of built-in write functions.
const BUILTIN_WRITE_PREFIXES: &[&str] = &[
    "pg_advisory_",
    "pg_try_advisory_",
    "lo_",
    "pg_stat_reset",
    "pg_replication_origin_",
    "pg_logical_slot_",
    "dblink_",
];

/// Session-level advisory lock functions: they pin the client to its server.
const SESSION_ADVISORY_LOCKS: &[&str] = &[
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
];

/// Names that look like calls but are SQL syntax (not in pg_proc), so the
/// catalog never knows them; all read-only.
const SYNTAX_FUNCTIONS: &[&str] = &[
    "coalesce",
    "nullif",
    "greatest",
    "least",
    "row",
    "array",
    "exists",
    "grouping",
    "current_date",
    "current_time",
    "current_timestamp",
    "localtime",
    "localtimestamp",
    "current_user",
    "current_role",
    "current_catalog",
    "session_user",
    "system_user",
    "user",
    "xmlelement",
    "xmlforest",
    "xmlconcat",
    "xmlparse",
    "xmlpi",
    "xmlroot",
    "xmlserialize",
    "xmlexists",
    "json_array",
    "json_arrayagg",
    "json_object",
    "json_objectagg",
    "json_exists",
    "json_value",
    "json_query",
    "json_scalar",
    "json_serialize",
    "json",
    "merge_action",
];

const BUILTIN_SCHEMAS: &[&str] = &["pg_catalog", "information_schema"];

/// Is `name` (lower case, unqualified) a built-in function that writes?
pub fn is_builtin_write(name: &str) -> bool {
    BUILTIN_WRITE.contains(&name)
        || BUILTIN_WRITE_PREFIXES.iter().any(|p| name.starts_with(p))
        || (name.starts_with("pg_create_") && name.ends_with("_replication_slot"))
}

/// Is `name` (lower case, unqualified) a session-level advisory lock?
pub fn is_session_advisory_lock(name: &str) -> bool {
    SESSION_ADVISORY_LOCKS.contains(&name)
}

/// Split `schema.name` (the last two dotted parts) and fold to lower case.
pub fn split_name(qualified: &str) -> (Option<String>, String) {
    let lower = qualified.to_ascii_lowercase();
    let mut parts = lower.rsplitn(3, '.');
    let name = parts.next().unwrap_or_default().to_string();
    let schema = parts.next().map(str::to_string);
    (schema, name)
}

#[derive(Debug, Clone, Default)]
struct NameInfo {
    /// Some overload lives in pg_catalog or information_schema.
    builtin: bool,
    /// Some overload outside the built-in schemas is VOLATILE.
    user_volatile: bool,
    /// Per schema: does any overload there have VOLATILE?
    schemas: Vec<(Box<str>, bool)>,
}

/// Functions known to the primary, by lower-case unqualified name.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    names: HashMap<Box<str>, NameInfo>,
}

impl Catalog {
    /// Build from `(schema, name, provolatile)` rows as [`CATALOG_QUERY`]
    /// returns them. Unknown volatility letters count as volatile.
    pub fn from_rows<'a, I>(rows: I) -> Self
    where
        I: IntoIterator<Item = (&'a str, &'a str, char)>,
    {
        let mut names: HashMap<Box<str>, NameInfo> = HashMap::new();
        for (schema, name, vol) in rows {
            let schema = schema.to_ascii_lowercase();
            let volatile = !matches!(vol, 's' | 'i');
            let info = names.entry(name.to_ascii_lowercase().into()).or_default();
            let builtin = BUILTIN_SCHEMAS.contains(&schema.as_str());
            info.builtin |= builtin;
            info.user_volatile |= volatile && !builtin;
            match info.schemas.iter_mut().find(|(s, _)| **s == *schema) {
                Some((_, v)) => *v |= volatile,
                None => info.schemas.push((schema.into(), volatile)),
            }
        }
        Catalog { names }
    }

    /// Number of distinct function names.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// `Some(true)` when the call may write, `Some(false)` when it provably
    /// does not, `None` when the catalog does not know it. Arguments are lower
    /// case.
    fn lookup(&self, schema: Option<&str>, name: &str) -> Option<bool> {
        let info = self.names.get(name)?;
        match schema {
            // search_path could reach any schema: a volatile user overload
            // anywhere is enough to refuse.
            None => Some(info.user_volatile),
            Some(s) if BUILTIN_SCHEMAS.contains(&s) => {
                info.schemas.iter().find(|(x, _)| **x == *s).map(|_| false)
            }
            Some(s) => info
                .schemas
                .iter()
                .find(|(x, _)| **x == *s)
                .map(|(_, v)| *v),
        }
    }
}

/// Why a function call keeps a statement on the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriteCause {
    /// Listed in `write_functions`.
    Config,
    /// On the built-in write list.
    Builtin,
    /// A user function with a VOLATILE overload.
    Volatile,
    /// The catalog does not know it.
    Unknown,
    /// No catalog loaded yet.
    NoCatalog,
}

/// The routing policy for function calls.
#[derive(Debug, Clone, Default)]
pub struct FunctionPolicy {
    /// `None` until the catalog has been loaded from the primary.
    pub catalog: Option<Arc<Catalog>>,
    /// `read_only_functions` from the config, lower case, `name` or `schema.name`.
    pub read_only: HashSet<String>,
    /// `write_functions` from the config, lower case, `name` or `schema.name`.
    pub write: HashSet<String>,
}

impl FunctionPolicy {
    /// A policy from config lists (any case) and an optional catalog.
    pub fn new<R, W, S1, S2>(catalog: Option<Arc<Catalog>>, read_only: R, write: W) -> Self
    where
        R: IntoIterator<Item = S1>,
        W: IntoIterator<Item = S2>,
        S1: AsRef<str>,
        S2: AsRef<str>,
    {
        FunctionPolicy {
            catalog,
            read_only: read_only
                .into_iter()
                .map(|s| s.as_ref().trim().to_ascii_lowercase())
                .collect(),
            write: write
                .into_iter()
                .map(|s| s.as_ref().trim().to_ascii_lowercase())
                .collect(),
        }
    }

    /// Does a call of `name` (possibly `schema.name`, any case) need the primary?
    pub fn is_write(&self, name: &str) -> bool {
        let (schema, name) = split_name(name);
        self.write_cause(schema.as_deref(), &name).is_some()
    }

    /// Why a call of `schema.name` needs the primary, or `None` when it is
    /// provably read-only. Both parts must already be lower case.
    ///
    /// Order: config write list, config read-only list, built-in write list,
    /// SQL syntax pseudo-functions, then the catalog (volatile user function
    /// or unknown name writes; anything else reads), and without a catalog
    /// every call writes.
    pub fn write_cause(&self, schema: Option<&str>, name: &str) -> Option<WriteCause> {
        if self.config_matches(&self.write, schema, name) {
            return Some(WriteCause::Config);
        }
        if self.config_matches(&self.read_only, schema, name) {
            return None;
        }
        let builtin_schema = matches!(schema, None | Some("pg_catalog"));
        if builtin_schema && is_builtin_write(name) {
            return Some(WriteCause::Builtin);
        }
        if schema.is_none() && SYNTAX_FUNCTIONS.contains(&name) {
            return None;
        }
        let Some(catalog) = &self.catalog else {
            return Some(WriteCause::NoCatalog);
        };
        match catalog.lookup(schema, name) {
            Some(true) => Some(WriteCause::Volatile),
            Some(false) => None,
            None => Some(WriteCause::Unknown),
        }
    }

    /// An unqualified entry matches the name in any schema; a qualified one
    /// matches that schema, and also an unqualified call of the same name
    /// (the operator vouches for what search_path finds).
    fn config_matches(&self, set: &HashSet<String>, schema: Option<&str>, name: &str) -> bool {
        if set.is_empty() {
            return false;
        }
        if set.contains(name) {
            return true;
        }
        match schema {
            Some(s) => {
                // Avoid allocating on the hot path for short names.
                let mut buf = [0u8; 128];
                let len = s.len() + 1 + name.len();
                if len <= buf.len() {
                    buf[..s.len()].copy_from_slice(s.as_bytes());
                    buf[s.len()] = b'.';
                    buf[s.len() + 1..len].copy_from_slice(name.as_bytes());
                    std::str::from_utf8(&buf[..len]).is_ok_and(|q| set.contains(q))
                } else {
                    set.contains(&format!("{s}.{name}"))
                }
            }
            None => set
                .iter()
                .any(|e| e.rsplit_once('.').is_some_and(|(_, n)| n == name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Arc<Catalog> {
        Arc::new(Catalog::from_rows([
            ("pg_catalog", "now", 's'),
            ("pg_catalog", "random", 'v'),
            ("pg_catalog", "count", 'i'),
            ("public", "write_fn", 'v'),
            ("public", "stable_fn", 's'),
            ("public", "mixed", 's'),
            ("other", "mixed", 'v'),
            ("public", "lower", 'v'),
            ("pg_catalog", "lower", 'i'),
        ]))
    }

    #[test]
    fn builtin_list() {
        let p = FunctionPolicy::new(Some(catalog()), [""; 0], [""; 0]);
        for f in [
            "nextval",
            "NEXTVAL",
            "pg_catalog.nextval",
            "pg_advisory_xact_lock",
            "pg_try_advisory_lock_shared",
            "pg_advisory_unlock_all",
            "lo_import",
            "lo_from_bytea",
            "pg_stat_reset_shared",
            "pg_create_logical_replication_slot",
            "pg_logical_slot_peek_changes",
            "pg_replication_origin_create",
            "dblink_connect",
            "query_to_xml",
        ] {
            assert!(p.is_write(f), "{f}");
        }
    }

    #[test]
    fn catalog_rules() {
        let p = FunctionPolicy::new(Some(catalog()), [""; 0], [""; 0]);
        assert!(!p.is_write("now"));
        assert!(!p.is_write("random"), "built-in volatile reads");
        assert!(!p.is_write("pg_catalog.count"));
        assert!(p.is_write("write_fn"));
        assert!(p.is_write("public.write_fn"));
        assert!(!p.is_write("stable_fn"));
        assert!(!p.is_write("Public.Stable_Fn"));
        assert!(p.is_write("mixed"), "a volatile overload in any schema");
        assert!(!p.is_write("public.mixed"));
        assert!(p.is_write("other.mixed"));
        assert!(p.is_write("lower"), "volatile user shadow");
        assert!(!p.is_write("pg_catalog.lower"));
        assert!(p.is_write("nosuch"));
        assert!(p.is_write("public.now"), "not in that schema");
        assert!(!p.is_write("coalesce"));
    }

    #[test]
    fn no_catalog() {
        let p = FunctionPolicy::default();
        assert!(p.is_write("now"));
        assert!(!p.is_write("coalesce"));
    }

    #[test]
    fn config_precedence() {
        let p = FunctionPolicy::new(
            Some(catalog()),
            ["write_fn", "public.nosuch", "nextval"],
            ["STABLE_FN", "nextval"],
        );
        assert!(!p.is_write("write_fn"));
        assert!(!p.is_write("public.write_fn"));
        assert!(!p.is_write("public.nosuch"));
        assert!(!p.is_write("nosuch"));
        assert!(p.is_write("other.nosuch"));
        assert!(p.is_write("stable_fn"));
        assert!(p.is_write("nextval"), "write wins over read_only");
    }
}
