//! What the session needs of a classification, as a small `Copy` value.

use super::classify::{Classifier, Kind, PinReason, Target};
use super::functions::FunctionPolicy;

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

impl Classifier {
    /// Classifies `sql` (through the cache) down to what routing needs.
    pub fn summarize(&self, sql: &str, policy: &FunctionPolicy) -> Summary {
        let c = self.classify(sql, policy);
        Summary {
            target: c.target,
            statements: c.statements.len(),
            first: c.statements.first().map(|s| s.kind),
            pins: c.pins,
        }
    }
}
