//! The queue of replies a server connection still owes its client.
//!
//! Every request the client sends that the server answers (Parse, Bind,
//! Describe, Execute, Close, Sync, Query, FunctionCall) pushes what it will be
//! answered with; every reply pops it. This is what lets the pooler forward a
//! pipelined batch, a Flush or an unfinished extended-protocol exchange without
//! waiting for ReadyForQuery, and know exactly when the server is free again.
//! A reply that matches nothing owed means the stream is out of sync: the
//! server connection is closed, never reused.

use std::collections::VecDeque;

use crate::protocol::{btag, tag};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// ParseComplete. `stmt` is the pooler-wide statement the Parse prepares;
    /// `forward` is false for a Parse the pooler injected, whose reply the
    /// client must not see.
    ParseComplete { stmt: Option<u64>, forward: bool },
    /// BindComplete; `stmt` is the pooler-wide statement bound, if mapped.
    BindComplete { stmt: Option<u64> },
    /// CloseComplete; `forward` is false for a Close the pooler injected.
    CloseComplete { forward: bool },
    /// RowDescription or NoData (after a ParameterDescription for a statement).
    Describe,
    /// CommandComplete, EmptyQueryResponse or PortalSuspended.
    Execute,
    /// ReadyForQuery after an extended-protocol Sync.
    Sync,
    /// Everything up to ReadyForQuery after a simple Query.
    Query,
    /// FunctionCallResponse then ReadyForQuery.
    FunctionCall,
    /// A reply the pooler writes itself (this tag, empty body) once everything
    /// owed before it has been answered: ParseComplete for a statement the
    /// server already holds, CloseComplete for a client's Close.
    Synthetic(u8),
    /// A simple Query the pooler injected (a PREPARE replayed on this
    /// server): everything up to its ReadyForQuery is cut out.
    InjectedQuery,
}

impl Reply {
    fn ends_with_ready(self) -> bool {
        matches!(self, Reply::Sync | Reply::Query | Reply::FunctionCall)
    }
}

/// What a server message meant for the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Nothing changed that the pooler acts on.
    Continue,
    /// ReadyForQuery arrived and nothing more is owed: the server is idle
    /// (in the transaction state its status byte says).
    Idle,
}

/// How to treat one server message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handled {
    pub progress: Progress,
    /// False for replies to messages the pooler injected.
    pub forward: bool,
    /// The pooler-wide statement this ParseComplete confirms.
    pub prepared: Option<u64>,
}

const CONTINUE: Handled = Handled {
    progress: Progress::Continue,
    forward: true,
    prepared: None,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("server sent '{}' while owing {expected:?}", *.got as char)]
pub struct OutOfSync {
    pub got: u8,
    pub expected: Option<Reply>,
}

#[derive(Debug, Default)]
pub struct Owed {
    queue: VecDeque<Reply>,
    /// The server is in COPY FROM STDIN and ignores Sync until CopyDone/Fail.
    copy_in: bool,
    /// Statements whose Parse an error made the server skip or refuse.
    failed_parses: Vec<u64>,
    /// Syncs sent so far: numbers the segments an error can skip to the end of.
    syncs: u64,
    /// What was owed first when the last ErrorResponse arrived.
    error_at: Option<Reply>,
}

impl Owed {
    pub fn new() -> Owed {
        Owed {
            queue: VecDeque::with_capacity(32),
            copy_in: false,
            failed_parses: Vec::new(),
            syncs: 0,
            error_at: None,
        }
    }

    /// Replies owed now.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The Sync segment messages sent now belong to.
    pub fn segment(&self) -> u64 {
        self.syncs
    }

    /// Records a message the client sent to this server unchanged.
    pub fn on_client(&mut self, t: u8) {
        let reply = match t {
            tag::PARSE => Reply::ParseComplete {
                stmt: None,
                forward: true,
            },
            tag::BIND => Reply::BindComplete { stmt: None },
            tag::CLOSE => Reply::CloseComplete { forward: true },
            tag::DESCRIBE => Reply::Describe,
            tag::EXECUTE => Reply::Execute,
            // PostgreSQL ignores Sync while in COPY FROM STDIN.
            tag::SYNC if self.copy_in => return,
            tag::SYNC => {
                self.syncs += 1;
                Reply::Sync
            }
            tag::QUERY => Reply::Query,
            tag::FUNCTION_CALL => Reply::FunctionCall,
            tag::COPY_DONE | tag::COPY_FAIL => {
                self.copy_in = false;
                return;
            }
            _ => return,
        };
        self.queue.push_back(reply);
    }

    /// Records a reply owed for a message the pooler rewrote or injected, or
    /// one it will write itself.
    pub fn push(&mut self, reply: Reply) {
        self.queue.push_back(reply);
    }

    /// The statement a Bind named when the last error answered that Bind.
    pub fn error_on_bind(&self) -> Option<u64> {
        match self.error_at {
            Some(Reply::BindComplete { stmt }) => stmt,
            _ => None,
        }
    }

    /// Takes the pooler's own reply at the front of the queue, if it is due.
    pub fn pop_synthetic(&mut self) -> Option<u8> {
        match self.queue.front() {
            Some(Reply::Synthetic(t)) => {
                let t = *t;
                self.queue.pop_front();
                Some(t)
            }
            _ => None,
        }
    }

    /// Statements an error made the server skip or refuse since the last call.
    pub fn take_failed_parses(&mut self) -> std::vec::Drain<'_, u64> {
        self.failed_parses.drain(..)
    }

    /// Records a message the server sent.
    pub fn on_server(&mut self, t: u8) -> Result<Handled, OutOfSync> {
        let front = self.queue.front().copied();
        let oos = || OutOfSync {
            got: t,
            expected: front,
        };
        let in_execute = matches!(front, Some(Reply::Execute | Reply::Query));
        match (t, front) {
            (btag::PARAMETER_STATUS | btag::NOTICE_RESPONSE | btag::NOTIFICATION, _) => {}
            (btag::PARSE_COMPLETE, Some(Reply::ParseComplete { forward, stmt })) => {
                self.queue.pop_front();
                return Ok(Handled {
                    progress: Progress::Continue,
                    forward,
                    prepared: stmt,
                });
            }
            (btag::CLOSE_COMPLETE, Some(Reply::CloseComplete { forward })) => {
                self.queue.pop_front();
                return Ok(Handled {
                    progress: Progress::Continue,
                    forward,
                    prepared: None,
                });
            }
            (btag::BIND_COMPLETE, Some(Reply::BindComplete { .. })) => {
                self.queue.pop_front();
            }
            (btag::PARAMETER_DESCRIPTION, Some(Reply::Describe)) => {}
            (btag::ROW_DESCRIPTION | btag::NO_DATA, Some(Reply::Describe)) => {
                self.queue.pop_front();
            }
            (btag::ROW_DESCRIPTION, Some(Reply::Query)) => {}
            (btag::DATA_ROW, _) if in_execute => {}
            (
                btag::COMMAND_COMPLETE | btag::EMPTY_QUERY | btag::PORTAL_SUSPENDED,
                Some(Reply::Execute),
            ) => {
                self.queue.pop_front();
            }
            (btag::COMMAND_COMPLETE | btag::EMPTY_QUERY, Some(Reply::Query)) => {}
            (btag::COPY_IN | btag::COPY_BOTH, _) if in_execute => {
                self.copy_in = true;
                // Syncs already sent behind the COPY reach the server while it
                // is in copy-in mode, which ignores them: no ReadyForQuery.
                let head = self.queue.pop_front();
                self.queue.retain(|r| *r != Reply::Sync);
                if let Some(h) = head {
                    self.queue.push_front(h);
                }
            }
            (btag::COPY_OUT | btag::COPY_DATA | btag::COPY_DONE, _) if in_execute => {}
            (btag::FUNCTION_CALL_RESPONSE, Some(Reply::FunctionCall)) => {}
            (btag::READY_FOR_QUERY, Some(Reply::InjectedQuery)) => {
                self.queue.pop_front();
                return Ok(Handled {
                    progress: Progress::Continue,
                    forward: false,
                    prepared: None,
                });
            }
            (_, Some(Reply::InjectedQuery))
                if t != btag::NOTIFICATION && t != btag::PARAMETER_STATUS =>
            {
                // Its CommandComplete, or an error the client's own next
                // statement will report in its own words.
                self.copy_in = false;
                return Ok(Handled {
                    progress: Progress::Continue,
                    forward: false,
                    prepared: None,
                });
            }
            (btag::ERROR_RESPONSE, _) => {
                self.copy_in = false;
                self.error_at = front;
                match front {
                    // A simple query or function call still ends in ReadyForQuery.
                    Some(Reply::Query | Reply::FunctionCall) | None => {}
                    // In the extended protocol the server skips to the next
                    // Sync: nothing owed before it will come, and the pooler's
                    // own replies there are void too. The error itself always
                    // reaches the client, even when an injected Parse caused it.
                    Some(_) => {
                        while let Some(r) = self.queue.front().copied() {
                            if r == Reply::Sync {
                                break;
                            }
                            if let Reply::ParseComplete { stmt: Some(id), .. } = r {
                                self.failed_parses.push(id);
                            }
                            self.queue.pop_front();
                        }
                    }
                }
            }
            (btag::READY_FOR_QUERY, Some(r)) if r.ends_with_ready() => {
                self.queue.pop_front();
                if self.queue.is_empty() {
                    return Ok(Handled {
                        progress: Progress::Idle,
                        forward: true,
                        prepared: None,
                    });
                }
            }
            _ => return Err(oos()),
        }
        Ok(CONTINUE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(o: &mut Owed, client: &[u8]) {
        for &t in client {
            o.on_client(t);
        }
    }

    #[test]
    fn pipelined_extended_batch() {
        let mut o = Owed::new();
        feed(&mut o, b"PBDES");
        feed(&mut o, b"BES");
        for &t in b"12TDDC" {
            assert_eq!(o.on_server(t).map(|h| h.progress), Ok(Progress::Continue));
        }
        assert_eq!(
            o.on_server(b'Z').map(|h| h.progress),
            Ok(Progress::Continue)
        );
        for &t in b"2DC" {
            assert_eq!(o.on_server(t).map(|h| h.progress), Ok(Progress::Continue));
        }
        assert_eq!(o.on_server(b'Z').map(|h| h.progress), Ok(Progress::Idle));
        assert!(o.is_empty());
    }

    #[test]
    fn flush_without_sync_keeps_server_owed() {
        let mut o = Owed::new();
        feed(&mut o, b"PDH");
        assert_eq!(
            o.on_server(b'1').map(|h| h.progress),
            Ok(Progress::Continue)
        );
        assert_eq!(
            o.on_server(b't').map(|h| h.progress),
            Ok(Progress::Continue)
        );
        assert_eq!(
            o.on_server(b'T').map(|h| h.progress),
            Ok(Progress::Continue)
        );
        assert!(o.is_empty());
        // The server has answered everything but is not at ReadyForQuery.
        feed(&mut o, b"S");
        assert_eq!(o.on_server(b'Z').map(|h| h.progress), Ok(Progress::Idle));
    }

    #[test]
    fn error_skips_to_sync() {
        let mut o = Owed::new();
        feed(&mut o, b"PBES");
        assert_eq!(
            o.on_server(b'E').map(|h| h.progress),
            Ok(Progress::Continue)
        );
        assert_eq!(o.on_server(b'Z').map(|h| h.progress), Ok(Progress::Idle));
    }

    #[test]
    fn simple_query_with_many_results_and_an_error() {
        let mut o = Owed::new();
        feed(&mut o, b"Q");
        for &t in b"TDCTDCE" {
            assert_eq!(o.on_server(t).map(|h| h.progress), Ok(Progress::Continue));
        }
        assert_eq!(o.on_server(b'Z').map(|h| h.progress), Ok(Progress::Idle));
    }

    #[test]
    fn copy_in_extended_ignores_early_sync() {
        let mut o = Owed::new();
        // libpq: Parse/Bind/Describe/Execute/Sync, then data, CopyDone, Sync.
        feed(&mut o, b"PBDES");
        for &t in b"12nG" {
            assert_eq!(o.on_server(t).map(|h| h.progress), Ok(Progress::Continue));
        }
        feed(&mut o, b"ddcS");
        assert_eq!(
            o.on_server(b'C').map(|h| h.progress),
            Ok(Progress::Continue)
        );
        assert_eq!(o.on_server(b'Z').map(|h| h.progress), Ok(Progress::Idle));
    }

    #[test]
    fn copy_in_simple() {
        let mut o = Owed::new();
        feed(&mut o, b"Q");
        assert_eq!(
            o.on_server(b'G').map(|h| h.progress),
            Ok(Progress::Continue)
        );
        feed(&mut o, b"ddc");
        assert_eq!(
            o.on_server(b'C').map(|h| h.progress),
            Ok(Progress::Continue)
        );
        assert_eq!(o.on_server(b'Z').map(|h| h.progress), Ok(Progress::Idle));
    }

    #[test]
    fn out_of_sync_is_detected() {
        let mut o = Owed::new();
        assert!(o.on_server(b'Z').is_err());
        feed(&mut o, b"BES");
        assert!(o.on_server(b'1').is_err());
    }

    #[test]
    fn injected_parse_is_swallowed_and_synthetic_replies_wait_their_turn() {
        let mut o = Owed::new();
        o.push(Reply::ParseComplete {
            stmt: Some(7),
            forward: false,
        });
        o.on_client(b'B');
        o.push(Reply::Synthetic(b'3'));
        o.on_client(b'S');
        assert_eq!(o.pop_synthetic(), None);
        assert!(!o.on_server(b'1').unwrap().forward);
        assert!(o.on_server(b'2').unwrap().forward);
        assert_eq!(o.pop_synthetic(), Some(b'3'));
        assert_eq!(o.on_server(b'Z').map(|h| h.progress), Ok(Progress::Idle));
    }

    #[test]
    fn failed_injected_parse_is_reported() {
        let mut o = Owed::new();
        o.push(Reply::ParseComplete {
            stmt: Some(9),
            forward: false,
        });
        o.on_client(b'B');
        o.on_client(b'E');
        o.on_client(b'S');
        assert!(o.on_server(b'E').unwrap().forward);
        assert_eq!(o.take_failed_parses().collect::<Vec<_>>(), vec![9]);
        assert_eq!(o.on_server(b'Z').map(|h| h.progress), Ok(Progress::Idle));
    }
}
