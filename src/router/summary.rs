//! What the session needs of a classification, as a small `Copy` value, and
//! a per-session memo of the last few.

use std::sync::Arc;

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

/// Texts longer than this are not memoised: with `MEMO_ENTRIES` that bounds
/// the memo at 8 KiB per session, the size of its read buffer.
const MEMO_MAX_TEXT: usize = 4096;
const MEMO_ENTRIES: usize = 2;

/// The summaries of the last extended-protocol statement texts a session
/// routed. Drivers send the same parameterised text again and again (an
/// unnamed Parse per execution, or a Bind of a named statement); comparing
/// bytes costs a few nanoseconds where the fingerprint and the shared cache
/// cost a few hundred (microseconds for a long ORM statement). A summary
/// depends only on the text and the function policy, so the memo holds for
/// one policy and is emptied when the catalog refresh or a reload swaps it;
/// it keeps that policy alive, so a new one cannot reuse its address.
/// At most `MEMO_ENTRIES` texts of up to `MEMO_MAX_TEXT` bytes, and nothing
/// for a session that never uses the extended protocol.
#[derive(Default)]
pub struct SummaryMemo {
    policy: Option<Arc<FunctionPolicy>>,
    entries: [Option<(Vec<u8>, Summary)>; MEMO_ENTRIES],
    /// The entry the next new text replaces.
    next: usize,
}

impl SummaryMemo {
    /// The summary of `sql` under `policy`, from the memo or else from the
    /// classifier (and then remembered).
    pub fn summarize(
        &mut self,
        classifier: &Classifier,
        sql: &[u8],
        policy: &Arc<FunctionPolicy>,
    ) -> Summary {
        if !self.policy.as_ref().is_some_and(|p| Arc::ptr_eq(p, policy)) {
            self.entries = Default::default();
            self.policy = Some(Arc::clone(policy));
        }
        for (text, summary) in self.entries.iter().flatten() {
            if text.as_slice() == sql {
                return *summary;
            }
        }
        let summary = summarize_bytes(classifier, sql, policy);
        if sql.len() <= MEMO_MAX_TEXT {
            let slot = &mut self.entries[self.next];
            self.next = (self.next + 1) % MEMO_ENTRIES;
            // The replaced entry's buffer is reused.
            let mut text = slot.take().map(|(t, _)| t).unwrap_or_default();
            text.clear();
            text.extend_from_slice(sql);
            *slot = Some((text, summary));
        }
        summary
    }
}

/// The summary of a statement text in any encoding: one that is not UTF-8
/// (another client_encoding) proves nothing and goes to the primary.
pub fn summarize_bytes(classifier: &Classifier, sql: &[u8], policy: &FunctionPolicy) -> Summary {
    match std::str::from_utf8(sql) {
        Ok(text) => classifier.summarize(text, policy),
        Err(_) => Summary::primary(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::functions::Catalog;

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

    fn policy_with(volatility: char) -> Arc<FunctionPolicy> {
        let catalog = Catalog::from_rows([("public", "f", volatility)]);
        let no: [&str; 0] = [];
        Arc::new(FunctionPolicy::new(Some(Arc::new(catalog)), no, no))
    }

    #[test]
    fn memo_answers_as_the_classifier_and_follows_the_policy() {
        let c = Classifier::new(1 << 20);
        let mut memo = SummaryMemo::default();
        let stable = policy_with('s');
        let sql = b"SELECT f($1)";
        let first = memo.summarize(&c, sql, &stable);
        assert_eq!(first, summarize_bytes(&c, sql, &stable));
        assert_eq!(first.target, Target::Replica);
        // Remembered: the same answer again.
        assert_eq!(memo.summarize(&c, sql, &stable), first);
        // A refreshed catalog that finds f volatile: the memo is not trusted.
        let volatile = policy_with('v');
        assert_eq!(memo.summarize(&c, sql, &volatile).target, Target::Primary);
        assert_eq!(memo.summarize(&c, sql, &stable).target, Target::Replica);
    }

    #[test]
    fn memo_keeps_the_last_texts_and_tells_them_apart() {
        let c = Classifier::new(1 << 20);
        let mut memo = SummaryMemo::default();
        let policy = policy_with('s');
        let texts: [&[u8]; 5] = [
            b"SELECT 1",
            b"INSERT INTO t VALUES ($1)",
            b"SELECT * FROM t FOR UPDATE",
            b"/* sluice:primary */ SELECT 1",
            b"SELECT \xff",
        ];
        // Round and round, more texts than entries, and then each twice in a
        // row: always the classifier's own answer.
        for round in 0..3 {
            for t in texts {
                let want = summarize_bytes(&c, t, &policy);
                assert_eq!(memo.summarize(&c, t, &policy), want, "{round}");
                assert_eq!(memo.summarize(&c, t, &policy), want, "{round}");
            }
        }
        assert_eq!(
            memo.summarize(&c, texts[0], &policy).target,
            Target::Replica
        );
        assert_eq!(
            memo.summarize(&c, texts[1], &policy).target,
            Target::Primary
        );
        assert_eq!(
            memo.summarize(&c, texts[3], &policy).target,
            Target::Primary
        );
        // Not UTF-8: the primary, memoised or not.
        let latin1: &[u8] = b"SELECT '\xe9'";
        assert_eq!(memo.summarize(&c, latin1, &policy).target, Target::Primary);
        assert_eq!(memo.summarize(&c, latin1, &policy).target, Target::Primary);
        // A long text is answered but not kept.
        let long = format!("SELECT 1 {}", " ".repeat(MEMO_MAX_TEXT));
        assert_eq!(
            memo.summarize(&c, long.as_bytes(), &policy).target,
            Target::Replica
        );
        assert!(memo
            .entries
            .iter()
            .flatten()
            .all(|(t, _)| t.len() <= MEMO_MAX_TEXT));
    }
}
