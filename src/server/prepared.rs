//! Which pooler-wide prepared statements one server connection holds, bounded
//! by `max_prepared_statements` with least-recently-used eviction.
//!
//! A statement is pending from the moment its Parse is sent until its
//! ParseComplete arrives. Within one Sync segment a pending statement can be
//! used as if held: if its Parse fails, the server skips the rest of the
//! segment anyway. A later segment cannot rely on it, so it re-prepares.

use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Confirmed,
    /// Parse sent in this Sync segment, not yet answered.
    Pending(u64),
}

/// Where a statement stands on a server, seen from a given Sync segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Usable: prepared, or being prepared in the same segment.
    Yes,
    /// Being prepared in an earlier segment, which may still fail.
    Uncertain,
    No,
}

#[derive(Debug, Default)]
pub struct HeldStatements {
    /// Statement id to (tick of last use, state).
    used: HashMap<u64, (u64, State)>,
    clock: u64,
}

impl HeldStatements {
    /// Statements held (or being prepared) now.
    pub fn len(&self) -> usize {
        self.used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }

    pub fn lookup(&self, id: u64, segment: u64) -> Held {
        match self.used.get(&id) {
            Some((_, State::Confirmed)) => Held::Yes,
            Some((_, State::Pending(s))) if *s == segment => Held::Yes,
            Some(_) => Held::Uncertain,
            None => Held::No,
        }
    }

    /// Marks a statement used now.
    pub fn touch(&mut self, id: u64) {
        self.clock += 1;
        if let Some((t, _)) = self.used.get_mut(&id) {
            *t = self.clock;
        }
    }

    /// Records a Parse sent in `segment`; returns the statement to close when
    /// the server would now hold more than `max`.
    pub fn insert_pending(&mut self, id: u64, segment: u64, max: usize) -> Option<u64> {
        self.clock += 1;
        self.used.insert(id, (self.clock, State::Pending(segment)));
        if self.used.len() <= max {
            return None;
        }
        let (&oldest, _) = self
            .used
            .iter()
            .filter(|(&k, _)| k != id)
            .min_by_key(|(_, (t, _))| *t)?;
        self.used.remove(&oldest);
        Some(oldest)
    }

    /// The server answered the Parse.
    pub fn confirm(&mut self, id: u64) {
        if let Some((_, state)) = self.used.get_mut(&id) {
            *state = State::Confirmed;
        }
    }

    pub fn remove(&mut self, id: u64) {
        self.used.remove(&id);
    }

    pub fn clear(&mut self) {
        self.used.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used() {
        let mut h = HeldStatements::default();
        assert_eq!(h.insert_pending(1, 0, 2), None);
        assert_eq!(h.insert_pending(2, 0, 2), None);
        h.touch(1);
        assert_eq!(h.insert_pending(3, 0, 2), Some(2));
        assert_eq!(h.lookup(2, 0), Held::No);
        assert_eq!(h.lookup(1, 0), Held::Yes);
    }

    #[test]
    fn pending_is_usable_only_in_its_segment() {
        let mut h = HeldStatements::default();
        h.insert_pending(7, 3, 10);
        assert_eq!(h.lookup(7, 3), Held::Yes);
        assert_eq!(h.lookup(7, 4), Held::Uncertain);
        h.confirm(7);
        assert_eq!(h.lookup(7, 4), Held::Yes);
    }
}
