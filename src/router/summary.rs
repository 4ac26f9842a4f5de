//! What the session needs of a classification, as a small `Copy` value.

use super::classify::{Kind, PinReason, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Replica only when every statement may go to one.
    pub target: Target,
    /// How many statements the text holds.
    pub statements: usize,
    /// The first statement's kind.
    pub first: Option<Kind>,
    pub pins: Option<PinReason>,
}

impl Summary {
    /// Nothing proven: the primary.
    pub fn primary() -> Summary {
        Summary {
            target: Target::Primary,
            statements: 0,
            first: None,
            pins: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::classify::Classifier;
    use crate::router::functions::{Catalog, FunctionPolicy};
    use std::sync::Arc;

    #[test]
    fn builtin_read_functions_go_to_replicas_once_the_catalog_is_loaded() {
        let catalog = Catalog::from_rows([("pg_catalog", "inet_server_port", 's')]);
        let no: [&str; 0] = [];
        let policy = FunctionPolicy::new(Some(Arc::new(catalog)), no, no);
        let c = Classifier::new(1 << 20);
        let s = c.summarize("SELECT inet_server_port()", &policy);
        assert_eq!(s.target, Target::Replica, "{s:?}");
        assert_eq!(s.first, Some(Kind::Read));
    }
}
