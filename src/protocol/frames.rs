//! The frame splitter of the data path.
//!
//! A PostgreSQL message is a one-byte tag and a four-byte big-endian length that
//! counts itself. The scanner walks a read buffer and reports where each message
//! starts and ends without copying or decoding it. Messages the pooler must look
//! at are only reported once they are complete; bulk messages (DataRow, CopyData,
//! Bind, FunctionCall) may be streamed through in pieces, so that one huge row or
//! copy chunk never has to sit whole in our memory.

use thiserror::Error;

/// Length of the tag plus the length word.
pub const HEADER_LEN: usize = 5;

/// A bulk message larger than this is streamed through in pieces rather than
/// buffered whole.
pub const STREAM_THRESHOLD: usize = 64 * 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("invalid message length {0}")]
    BadLength(u32),
    #[error("message of type '{}' with length {len} exceeds max_packet_size {max}", *.tag as char)]
    TooLarge { tag: u8, len: usize, max: usize },
}

/// One step of the scan.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Piece {
    /// A whole message of `len` bytes (header included) at the scan position.
    Frame { tag: u8, len: usize },
    /// The first `len` bytes of a bulk message that is still arriving; the rest
    /// will follow as `Tail` pieces.
    Head { tag: u8, len: usize },
    /// `len` more bytes of the bulk message started by an earlier `Head`.
    Tail { len: usize },
    /// Nothing more can be reported until more bytes arrive.
    NeedMore,
}

/// Splits a byte stream into messages. It keeps only how much of a streamed
/// message is still to come, so it can be reused across reads.
#[derive(Debug, Clone)]
pub struct FrameScanner {
    max_len: usize,
    /// Bytes of a streamed message not yet seen.
    tail_remaining: usize,
    streamable: fn(u8) -> bool,
}

/// Bulk messages from a client that the pooler never needs whole.
pub fn client_streamable(tag: u8) -> bool {
    matches!(tag, b'd' | b'B' | b'F')
}

/// Bulk messages from a server that the pooler never needs whole.
pub fn server_streamable(tag: u8) -> bool {
    matches!(tag, b'D' | b'd')
}

impl FrameScanner {
    pub fn new(max_len: usize, streamable: fn(u8) -> bool) -> Self {
        FrameScanner {
            max_len,
            tail_remaining: 0,
            streamable,
        }
    }

    /// True while a streamed message is only partly through.
    pub fn in_tail(&self) -> bool {
        self.tail_remaining > 0
    }

    /// Reports the next piece of `buf[pos..]`. The caller advances `pos` by the
    /// piece's length (not for `NeedMore`).
    pub fn next(&mut self, buf: &[u8], pos: usize) -> Result<Piece, FrameError> {
        let avail = buf.len().saturating_sub(pos);
        if self.tail_remaining > 0 {
            if avail == 0 {
                return Ok(Piece::NeedMore);
            }
            let len = avail.min(self.tail_remaining);
            self.tail_remaining -= len;
            return Ok(Piece::Tail { len });
        }
        if avail < HEADER_LEN {
            return Ok(Piece::NeedMore);
        }
        let tag = buf[pos];
        let declared = u32::from_be_bytes([buf[pos + 1], buf[pos + 2], buf[pos + 3], buf[pos + 4]]);
        if declared < 4 || declared > i32::MAX as u32 {
            return Err(FrameError::BadLength(declared));
        }
        let len = declared as usize + 1;
        let streamable = (self.streamable)(tag);
        if len > self.max_len && !streamable {
            return Err(FrameError::TooLarge {
                tag,
                len,
                max: self.max_len,
            });
        }
        if avail >= len {
            return Ok(Piece::Frame { tag, len });
        }
        if streamable && len > STREAM_THRESHOLD {
            self.tail_remaining = len - avail;
            return Ok(Piece::Head { tag, len: avail });
        }
        Ok(Piece::NeedMore)
    }

    /// How many bytes the buffer must hold before the message at `pos` can be
    /// reported whole; used to reserve capacity once instead of growing in steps.
    pub fn wanted(&self, buf: &[u8], pos: usize) -> usize {
        if self.tail_remaining > 0 || buf.len() < pos + HEADER_LEN {
            return 0;
        }
        let tag = buf[pos];
        let declared = u32::from_be_bytes([buf[pos + 1], buf[pos + 2], buf[pos + 3], buf[pos + 4]]);
        let len = declared as usize + 1;
        if (self.streamable)(tag) && len > STREAM_THRESHOLD {
            return 0;
        }
        len.min(self.max_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn whole_frames_then_need_more() {
        let mut buf = msg(b'Q', b"select 1\0");
        buf.extend(msg(b'S', b""));
        buf.extend_from_slice(&[b'Z', 0, 0]);
        let mut sc = FrameScanner::new(1 << 20, client_streamable);
        assert_eq!(sc.next(&buf, 0), Ok(Piece::Frame { tag: b'Q', len: 14 }));
        assert_eq!(sc.next(&buf, 14), Ok(Piece::Frame { tag: b'S', len: 5 }));
        assert_eq!(sc.next(&buf, 19), Ok(Piece::NeedMore));
    }

    #[test]
    fn bad_length_is_an_error() {
        let buf = [b'Q', 0, 0, 0, 3];
        let mut sc = FrameScanner::new(1 << 20, client_streamable);
        assert_eq!(sc.next(&buf, 0), Err(FrameError::BadLength(3)));
        let buf = [b'Q', 0xff, 0xff, 0xff, 0xff];
        assert!(sc.next(&buf, 0).is_err());
    }

    #[test]
    fn oversized_inspected_message_is_refused() {
        let buf = [b'Q', 0, 0x10, 0, 0];
        let mut sc = FrameScanner::new(1024, client_streamable);
        assert!(matches!(sc.next(&buf, 0), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn big_bulk_message_streams() {
        let body = vec![7u8; STREAM_THRESHOLD * 2];
        let whole = msg(b'd', &body);
        let mut sc = FrameScanner::new(1024, client_streamable);
        let first = &whole[..1000];
        assert_eq!(
            sc.next(first, 0),
            Ok(Piece::Head {
                tag: b'd',
                len: 1000
            })
        );
        assert!(sc.in_tail());
        let rest = &whole[1000..];
        assert_eq!(sc.next(rest, 0), Ok(Piece::Tail { len: rest.len() }));
        assert!(!sc.in_tail());
    }
}
