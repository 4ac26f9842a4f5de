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
    ParseComplete,
    BindComplete,
    CloseComplete,
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
}

impl Owed {
    pub fn new() -> Owed {
        Owed {
            queue: VecDeque::with_capacity(32),
            copy_in: false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Records a message the client sent to this server.
    pub fn on_client(&mut self, t: u8) {
        let reply = match t {
            tag::PARSE => Reply::ParseComplete,
            tag::BIND => Reply::BindComplete,
            tag::CLOSE => Reply::CloseComplete,
            tag::DESCRIBE => Reply::Describe,
            tag::EXECUTE => Reply::Execute,
            // PostgreSQL ignores Sync while in COPY FROM STDIN.
            tag::SYNC if self.copy_in => return,
            tag::SYNC => Reply::Sync,
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

    /// Records a message the server sent.
    pub fn on_server(&mut self, t: u8) -> Result<Progress, OutOfSync> {
        let front = self.queue.front().copied();
        let oos = || OutOfSync {
            got: t,
            expected: front,
        };
        let in_execute = matches!(front, Some(Reply::Execute | Reply::Query));
        match t {
            btag::PARAMETER_STATUS | btag::NOTICE_RESPONSE | btag::NOTIFICATION => {}
            btag::PARSE_COMPLETE => self.pop_expect(Reply::ParseComplete).ok_or_else(oos)?,
            btag::BIND_COMPLETE => self.pop_expect(Reply::BindComplete).ok_or_else(oos)?,
            btag::CLOSE_COMPLETE => self.pop_expect(Reply::CloseComplete).ok_or_else(oos)?,
            btag::PARAMETER_DESCRIPTION if front == Some(Reply::Describe) => {}
            btag::ROW_DESCRIPTION | btag::NO_DATA if front == Some(Reply::Describe) => {
                self.queue.pop_front();
            }
            btag::ROW_DESCRIPTION if front == Some(Reply::Query) => {}
            btag::DATA_ROW if in_execute => {}
            btag::COMMAND_COMPLETE | btag::EMPTY_QUERY | btag::PORTAL_SUSPENDED
                if front == Some(Reply::Execute) =>
            {
                self.queue.pop_front();
            }
            btag::COMMAND_COMPLETE | btag::EMPTY_QUERY if front == Some(Reply::Query) => {}
            btag::COPY_IN | btag::COPY_BOTH if in_execute => {
                self.copy_in = true;
                // Syncs already sent behind the COPY reach the server while it
                // is in copy-in mode, which ignores them: no ReadyForQuery.
                let head = self.queue.pop_front();
                self.queue.retain(|r| *r != Reply::Sync);
                if let Some(h) = head {
                    self.queue.push_front(h);
                }
            }
            btag::COPY_OUT | btag::COPY_DATA | btag::COPY_DONE if in_execute => {}
            btag::FUNCTION_CALL_RESPONSE if front == Some(Reply::FunctionCall) => {}
            btag::ERROR_RESPONSE => {
                self.copy_in = false;
                match front {
                    // A simple query or function call still ends in ReadyForQuery.
                    Some(Reply::Query | Reply::FunctionCall) | None => {}
                    // In the extended protocol the server skips to the next Sync.
                    Some(_) => {
                        while let Some(r) = self.queue.front() {
                            if *r == Reply::Sync {
                                break;
                            }
                            self.queue.pop_front();
                        }
                    }
                }
            }
            btag::READY_FOR_QUERY => match front {
                Some(r) if r.ends_with_ready() => {
                    self.queue.pop_front();
                    if self.queue.is_empty() {
                        return Ok(Progress::Idle);
                    }
                }
                _ => return Err(oos()),
            },
            _ => return Err(oos()),
        }
        Ok(Progress::Continue)
    }

    fn pop_expect(&mut self, want: Reply) -> Option<()> {
        if self.queue.front() == Some(&want) {
            self.queue.pop_front();
            Some(())
        } else {
            None
        }
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
            assert_eq!(o.on_server(t), Ok(Progress::Continue));
        }
        assert_eq!(o.on_server(b'Z'), Ok(Progress::Continue));
        for &t in b"2DC" {
            assert_eq!(o.on_server(t), Ok(Progress::Continue));
        }
        assert_eq!(o.on_server(b'Z'), Ok(Progress::Idle));
        assert!(o.is_empty());
    }

    #[test]
    fn flush_without_sync_keeps_server_owed() {
        let mut o = Owed::new();
        feed(&mut o, b"PDH");
        assert_eq!(o.on_server(b'1'), Ok(Progress::Continue));
        assert_eq!(o.on_server(b't'), Ok(Progress::Continue));
        assert_eq!(o.on_server(b'T'), Ok(Progress::Continue));
        assert!(o.is_empty());
        // The server has answered everything but is not at ReadyForQuery.
        feed(&mut o, b"S");
        assert_eq!(o.on_server(b'Z'), Ok(Progress::Idle));
    }

    #[test]
    fn error_skips_to_sync() {
        let mut o = Owed::new();
        feed(&mut o, b"PBES");
        assert_eq!(o.on_server(b'E'), Ok(Progress::Continue));
        assert_eq!(o.on_server(b'Z'), Ok(Progress::Idle));
    }

    #[test]
    fn simple_query_with_many_results_and_an_error() {
        let mut o = Owed::new();
        feed(&mut o, b"Q");
        for &t in b"TDCTDCE" {
            assert_eq!(o.on_server(t), Ok(Progress::Continue));
        }
        assert_eq!(o.on_server(b'Z'), Ok(Progress::Idle));
    }

    #[test]
    fn copy_in_extended_ignores_early_sync() {
        let mut o = Owed::new();
        // libpq: Parse/Bind/Describe/Execute/Sync, then data, CopyDone, Sync.
        feed(&mut o, b"PBDES");
        for &t in b"12nG" {
            assert_eq!(o.on_server(t), Ok(Progress::Continue));
        }
        feed(&mut o, b"ddcS");
        assert_eq!(o.on_server(b'C'), Ok(Progress::Continue));
        assert_eq!(o.on_server(b'Z'), Ok(Progress::Idle));
    }

    #[test]
    fn copy_in_simple() {
        let mut o = Owed::new();
        feed(&mut o, b"Q");
        assert_eq!(o.on_server(b'G'), Ok(Progress::Continue));
        feed(&mut o, b"ddc");
        assert_eq!(o.on_server(b'C'), Ok(Progress::Continue));
        assert_eq!(o.on_server(b'Z'), Ok(Progress::Idle));
    }

    #[test]
    fn out_of_sync_is_detected() {
        let mut o = Owed::new();
        assert!(o.on_server(b'Z').is_err());
        feed(&mut o, b"BES");
        assert!(o.on_server(b'1').is_err());
    }
}
