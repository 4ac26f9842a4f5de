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

/// Like [`client_streamable`] when the pooler rewrites Bind messages.
pub fn client_streamable_unless_bind(tag: u8) -> bool {
    matches!(tag, b'd' | b'F')
}

/// Bulk messages from a server that the pooler never needs whole.
pub fn server_streamable(tag: u8) -> bool {
    matches!(tag, b'D' | b'd')
}

impl FrameScanner {
    /// The largest message buffered whole.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

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

    mod splitting {
        use super::*;
        use proptest::prelude::*;

        fn message() -> impl Strategy<Value = (u8, usize)> {
            let tags = prop::sample::select(vec![b'Q', b'P', b'S', b'd', b'B', b'D', b'X']);
            let sizes = prop_oneof![
                0usize..64,
                0usize..4096,
                (STREAM_THRESHOLD - 10)..(STREAM_THRESHOLD * 3)
            ];
            (tags, sizes)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// However the stream is cut into reads, the scanner reports each
            /// message once, whole or as a head and tails adding up to it.
            #[test]
            fn any_chunking_reconstructs_the_messages(
                msgs in prop::collection::vec(message(), 1..20),
                cuts in prop::collection::vec(1usize..70_000, 1..50),
            ) {
                let mut stream = Vec::new();
                for (t, n) in &msgs {
                    stream.extend(msg(*t, &vec![0xab; *n]));
                }
                let mut sc = FrameScanner::new(STREAM_THRESHOLD * 4, client_streamable);
                let mut buf: Vec<u8> = Vec::new();
                let mut seen: Vec<(u8, usize)> = Vec::new();
                let mut open: Option<(u8, usize)> = None;
                let mut fed = 0;
                let mut cut = cuts.iter().cycle();
                while fed < stream.len() || !buf.is_empty() {
                    let n = (*cut.next().unwrap()).min(stream.len() - fed);
                    buf.extend_from_slice(&stream[fed..fed + n]);
                    fed += n;
                    let mut pos = 0;
                    loop {
                        match sc.next(&buf, pos).unwrap() {
                            Piece::NeedMore => break,
                            Piece::Frame { tag, len } => {
                                prop_assert!(open.is_none());
                                seen.push((tag, len));
                                pos += len;
                            }
                            Piece::Head { tag, len } => {
                                prop_assert!(open.is_none());
                                open = Some((tag, len));
                                pos += len;
                            }
                            Piece::Tail { len } => {
                                let (tag, so_far) = open.take().expect("tail after head");
                                pos += len;
                                if sc.in_tail() {
                                    open = Some((tag, so_far + len));
                                } else {
                                    seen.push((tag, so_far + len));
                                }
                            }
                        }
                    }
                    buf.drain(..pos);
                    if n == 0 && pos == 0 {
                        break;
                    }
                }
                let want: Vec<(u8, usize)> = msgs.iter().map(|(t, n)| (*t, n + HEADER_LEN)).collect();
                prop_assert_eq!(seen, want);
                prop_assert!(buf.is_empty());
            }
        }
    }
}
