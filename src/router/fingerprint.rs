//! Statement fingerprints and routing hints.
//!
//! A fingerprint is a 128-bit hash of a statement's token stream with every
//! literal (strings in all their forms, numbers, bind parameters) replaced by
//! one placeholder, each run of white space and comments folded to one space
//! and unquoted words folded to lower case, hashed with XXH3-128. Two texts with the same fingerprint have the same shape, so
//! they classify the same way: the classifier caches by it. A leading routing
//! hint is part of the fingerprint (it changes the route).
//!
//! The lexer follows PostgreSQL's scanner closely enough that whatever it drops
//! (literals, comments, white space) is also what the server and sqlparser treat
//! as such; where it splits tokens differently the only effect is a fingerprint
//! that shares less, never one that merges two different statements.

use xxhash_rust::xxh3::{xxh3_128_with_seed, Xxh3};

use super::chunk::{ws_at, Chunk};

/// A routing hint given by a leading `/* sluice:primary */` or
/// `/* sluice:replica */` comment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hint {
    Primary,
    Replica,
}

/// The 128-bit fingerprint of a statement text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub u128);

/// What one pass over a statement found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    pub fingerprint: Fingerprint,
    pub hint: Option<Hint>,
}

/// Fixed seed for [`fingerprint`]; the classifier uses a random one so that
/// clients cannot aim collisions at its cache.
const DEFAULT_SEED: u64 = 0x5c1e_eb0f_2c6a_9d01;

/// The fingerprint of `sql` with the default seed.
pub fn fingerprint(sql: &[u8]) -> Fingerprint {
    scan_seeded(sql, DEFAULT_SEED).fingerprint
}

/// Fingerprint and leading hint in one pass, with the default seed.
pub fn scan(sql: &[u8]) -> Scan {
    scan_seeded(sql, DEFAULT_SEED)
}

/// The routing hint of `sql`: the first leading block comment (before any
/// token; white space and other comments may precede it) that reads
/// `sluice:primary` or `sluice:replica`, white space and case tolerant.
pub fn hint(sql: &[u8]) -> Option<Hint> {
    let mut lx = Lexer::new(sql);
    while let Some(t) = lx.next_token() {
        match t.kind {
            TokenKind::Comment => {
                if let Some(h) = parse_hint(&sql[t.start..t.end]) {
                    return Some(h);
                }
            }
            _ => return None,
        }
    }
    None
}

/// Fingerprint and hint of `sql` with an explicit hash seed.
pub fn scan_seeded(sql: &[u8], seed: u64) -> Scan {
    let mut out = Normalised::new(seed);
    let hint = normalise(sql, &mut out);
    Scan {
        fingerprint: Fingerprint(out.finish()),
        hint,
    }
}

/// Write the normalised stream of `sql` to `out`; returns the leading hint.
fn normalise(sql: &[u8], out: &mut Normalised) -> Option<Hint> {
    let mut hint = None;
    let mut body = sql.len();
    let first = sql.iter().position(|&b| !is_space(b)).unwrap_or(sql.len());
    // Leading comments (and the hint) with the general lexer; most texts
    // start right away with a keyword.
    let mut lx = Lexer::new(sql);
    if sql.get(first).is_some_and(|&b| b != b'-' && b != b'/') {
        body = first;
        lx = Lexer::new(&[]);
    }
    while let Some(t) = lx.next_token() {
        if t.kind != TokenKind::Comment {
            body = t.start;
            break;
        }
        if hint.is_none() {
            if let Some(found) = parse_hint(&sql[t.start..t.end]) {
                hint = Some(found);
                out.byte(match found {
                    Hint::Primary => TAG_HINT_PRIMARY,
                    Hint::Replica => TAG_HINT_REPLICA,
                });
            }
        }
    }
    normalise_body(out, sql, body);
    hint
}

/// The normalised stream, straight from the bytes: plain runs (words,
/// operators, punctuation, single spaces) are copied lower-cased sixteen
/// bytes at a time; literals become one tag, each run of white space and
/// comments one space, quoted identifiers stay exact. Whatever it drops is a
/// subset of what [`Lexer`] drops, so equal fingerprints imply equal token
/// streams up to literal values (a test checks this).
fn normalise_body(out: &mut Normalised, s: &[u8], mut i: usize) {
    let n = s.len();
    while i < n {
        let chunk = Chunk::load(s, i);
        // Past the end the chunk holds zeros, which are never special.
        let m = chunk.special(ws_at(s, i + 16));
        let k = if m == 0 {
            (n - i).min(16)
        } else {
            m.trailing_zeros() as usize
        };
        if k > 0 {
            out.put(chunk.lower(), k);
            i += k;
        }
        if m != 0 {
            i = special(out, s, i);
        }
    }
}

/// Handle the special byte at `i`; returns where to go on. A plain run
/// never starts with white space after this has written a space (the white
/// space that follows is skipped here), so the stream has no double spaces.
fn special(out: &mut Normalised, s: &[u8], i: usize) -> usize {
    let n = s.len();
    let b = s[i];
    let prev = if i > 0 { s[i - 1] } else { b' ' };
    let next = s.get(i + 1).copied().unwrap_or(0);
    // A token starts at `j` unless a word runs on into it; a literal or a
    // lone `$` ending in a word byte (`1`, `$$`, `$`) does not.
    let word_start_at = |j: usize| j == 0 || !is_ident_cont(s[j - 1]) || j == out.token_end;
    let in_word = !word_start_at(i);
    let literal = |out: &mut Normalised, end: usize| {
        out.byte(TAG_LITERAL);
        out.token_end = end;
        end
    };
    let malformed = |out: &mut Normalised| {
        // Tagged at both ends: nothing after it is taken for a trailing space.
        out.byte(TAG_MALFORMED);
        out.copy(s, i, n, false);
        out.byte(TAG_MALFORMED);
        n
    };
    let space_then = |out: &mut Normalised, mut j: usize| {
        out.space();
        while j < n && is_space(s[j]) {
            j += 1;
        }
        j
    };
    match b {
        _ if is_space(b) => space_then(out, i + 1),
        b'-' if next == b'-' => {
            let mut j = i + 2;
            while j < n && s[j] != b'\n' && s[j] != b'\r' {
                j += 1;
            }
            space_then(out, j)
        }
        b'/' if next == b'*' => {
            let (j, ok) = skip_block_comment(s, i);
            if !ok {
                return malformed(out);
            }
            space_then(out, j)
        }
        b'0'..=b'9' if in_word => {
            // Inside a word (t1, col_2): copy the rest of it.
            let j = ident_end(s, i);
            out.copy(s, i, j, true);
            j
        }
        b'0'..=b'9' if prev == b'.' => {
            // `.5`: the dot, copied already, starts the number (as in the
            // lexer; nothing else ends in a dot right before a digit).
            out.pop();
            literal(out, skip_number(s, i - 1))
        }
        b'0'..=b'9' => literal(out, skip_number(s, i)),
        b'$' if in_word => {
            out.byte(b'$');
            i + 1
        }
        b'$' if next.is_ascii_digit() => {
            let mut j = i + 1;
            while j < n && s[j].is_ascii_digit() {
                j += 1;
            }
            literal(out, j)
        }
        b'$' => match skip_dollar_quote(s, i) {
            Some((j, true)) => literal(out, j),
            Some((_, false)) => malformed(out),
            None => {
                out.byte(b'$');
                out.token_end = i + 1;
                i + 1
            }
        },
        b'\'' => {
            // The prefix letter (E, X, ...) was copied already; it only
            // counts when it starts a word, as in the lexer.
            let prefixed = |c: u8| (prev | 0x20) == c && i >= 1 && word_start_at(i - 1);
            let (j, ok) = skip_string(s, i + 1, prefixed(b'e'));
            if !ok || (prefixed(b'x') && s[i..j].contains(&b'\\')) {
                return malformed(out);
            }
            let unicode =
                prev == b'&' && i >= 2 && (s[i - 2] | 0x20) == b'u' && word_start_at(i - 2);
            if [b'e', b'b', b'x', b'n'].into_iter().any(prefixed) {
                // E'..', B'..', X'..', N'..' share with '..'.
                out.pop();
            }
            if unicode {
                out.byte(TAG_UNICODE_STRING);
                out.token_end = j;
                return j;
            }
            literal(out, j)
        }
        b'"' => {
            let (j, ok) = skip_quoted_ident(s, i + 1);
            if !ok {
                return malformed(out);
            }
            out.byte(TAG_QUOTED);
            out.copy(s, i, j, false);
            j
        }
        _ => {
            out.byte(b);
            i + 1
        }
    }
}

/// Bytes of the normalised stream kept before they are hashed: most
/// statements fit, and are hashed in one call.
const OUT_BUF: usize = 512;

/// The normalised stream on its way into XXH3-128 (the `xxhash-rust`
/// crate): gathered in a buffer, hashed in one call when it fits and
/// streamed in buffer-sized pieces when it does not (the same hash).
struct Normalised {
    buf: [u8; OUT_BUF],
    len: usize,
    seed: u64,
    /// Where in the input the last literal or lone `$` ended: a word byte
    /// there (the `1` of `1e`) starts a token, it does not continue one.
    token_end: usize,
    /// The last byte streamed, for [`Normalised::last`] after a flush.
    streamed_last: u8,
    stream: Option<Xxh3>,
    /// Everything written, for tests that read the stream itself.
    #[cfg(test)]
    seen: Vec<u8>,
}

impl Normalised {
    fn new(seed: u64) -> Self {
        Normalised {
            buf: [0; OUT_BUF],
            len: 0,
            seed,
            token_end: usize::MAX,
            streamed_last: 0,
            stream: None,
            #[cfg(test)]
            seen: Vec::new(),
        }
    }

    /// Make room for `k` more bytes. Only ever called right before a write,
    /// so the byte last written is in the buffer ([`Normalised::pop`]).
    #[inline(always)]
    fn room(&mut self, k: usize) {
        if self.len + k > OUT_BUF {
            self.flush();
        }
    }

    #[cold]
    fn flush(&mut self) {
        let part = &self.buf[..self.len];
        #[cfg(test)]
        self.seen.extend_from_slice(part);
        let seed = self.seed;
        self.stream
            .get_or_insert_with(|| Xxh3::with_seed(seed))
            .update(part);
        if let Some(&b) = part.last() {
            self.streamed_last = b;
        }
        self.len = 0;
    }

    /// Append the first `k` of these sixteen bytes (one whole store).
    #[inline(always)]
    fn put(&mut self, bytes: [u8; 16], k: usize) {
        self.room(16);
        if let Some(dst) = self.buf.get_mut(self.len..self.len + 16) {
            dst.copy_from_slice(&bytes);
            self.len += k.min(16);
        }
    }

    #[inline(always)]
    fn byte(&mut self, b: u8) {
        self.room(1);
        if let Some(dst) = self.buf.get_mut(self.len) {
            *dst = b;
            self.len += 1;
        }
    }

    /// Append `s[from..to]`, lower-cased or exact.
    fn copy(&mut self, s: &[u8], mut from: usize, to: usize, lower: bool) {
        while from < to {
            let c = Chunk::load(s, from);
            let k = (to - from).min(16);
            self.put(if lower { c.lower() } else { c.bytes() }, k);
            from += k;
        }
    }

    fn last(&self) -> u8 {
        match self.len {
            0 => self.streamed_last,
            n => self.buf[n - 1],
        }
    }

    /// One space, unless the stream ends with one already.
    #[inline]
    fn space(&mut self) {
        if self.last() != b' ' {
            self.byte(b' ');
        }
    }

    /// Take back the byte just written.
    #[inline]
    fn pop(&mut self) {
        self.len = self.len.saturating_sub(1);
    }

    fn finish(&mut self) -> u128 {
        if self.len > 0 && self.buf[self.len - 1] == b' ' {
            // A space written before a trailing comment or white space.
            self.len -= 1;
        }
        let rest = &self.buf[..self.len];
        #[cfg(test)]
        self.seen.extend_from_slice(rest);
        match self.stream.take() {
            Some(mut stream) => {
                stream.update(rest);
                stream.digest128()
            }
            None => xxh3_128_with_seed(rest, self.seed),
        }
    }
}

// Bytes that never occur in UTF-8, so they cannot be confused with text.
const TAG_LITERAL: u8 = 0xFE;
const TAG_QUOTED: u8 = 0xFD;
const TAG_HINT_PRIMARY: u8 = 0xFC;
const TAG_HINT_REPLICA: u8 = 0xFB;
const TAG_MALFORMED: u8 = 0xFA;
/// After the `u&` of a `U&'..'` string (which is one token, unlike `u&1`).
const TAG_UNICODE_STRING: u8 = 0xF9;

/// `text` is a whole comment; is it a sluice hint?
fn parse_hint(text: &[u8]) -> Option<Hint> {
    let inner = text.strip_prefix(b"/*")?.strip_suffix(b"*/")?;
    let inner = trim_ws(inner);
    let rest = strip_prefix_ci(inner, b"sluice")?;
    let rest = trim_ws(rest).strip_prefix(b":")?;
    let word = trim_ws(rest);
    if word.eq_ignore_ascii_case(b"primary") {
        Some(Hint::Primary)
    } else if word.eq_ignore_ascii_case(b"replica") {
        Some(Hint::Replica)
    } else {
        None
    }
}

fn strip_prefix_ci<'a>(s: &'a [u8], p: &[u8]) -> Option<&'a [u8]> {
    if s.len() >= p.len() && s[..p.len()].eq_ignore_ascii_case(p) {
        Some(&s[p.len()..])
    } else {
        None
    }
}

fn trim_ws(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if is_space(*first) {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if is_space(*last) {
            s = rest;
        } else {
            break;
        }
    }
    s
}

const C_SPACE: u8 = 1;
const C_IDENT_START: u8 = 2;
const C_IDENT_CONT: u8 = 4;
const C_OP: u8 = 8;

/// Byte classes, so the hot loops are one table load per byte.
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let mut c = 0;
        if matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c') {
            c |= C_SPACE;
        }
        if b.is_ascii_alphabetic() || b == b'_' || b >= 0x80 {
            c |= C_IDENT_START | C_IDENT_CONT;
        }
        if b.is_ascii_digit() || b == b'$' {
            c |= C_IDENT_CONT;
        }
        if matches!(
            b,
            b'+' | b'-'
                | b'*'
                | b'/'
                | b'<'
                | b'>'
                | b'='
                | b'~'
                | b'!'
                | b'@'
                | b'#'
                | b'%'
                | b'^'
                | b'&'
                | b'|'
                | b'`'
                | b'?'
        ) {
            c |= C_OP;
        }
        t[i] = c;
        i += 1;
    }
    t
};

#[inline(always)]
pub(crate) fn is_space(b: u8) -> bool {
    CLASS[b as usize] & C_SPACE != 0
}

#[inline(always)]
fn is_ident_start(b: u8) -> bool {
    CLASS[b as usize] & C_IDENT_START != 0
}

#[inline(always)]
fn is_ident_cont(b: u8) -> bool {
    CLASS[b as usize] & C_IDENT_CONT != 0
}

#[inline(always)]
fn is_op_char(b: u8) -> bool {
    CLASS[b as usize] & C_OP != 0
}

/// Token classes of the lexer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Keyword or unquoted identifier.
    Word,
    /// `"..."` or `U&"..."`, quotes included.
    QuotedIdent,
    /// String, bit string, dollar-quoted string or number.
    Literal,
    /// `$1`.
    Param,
    /// A run of operator characters.
    Op,
    /// Any other single byte: `( ) , ; [ ] . :` and so on.
    Punct,
    /// `-- ...` or a (nested) `/* ... */`.
    Comment,
    /// A string, quoted identifier or block comment still open at the end,
    /// or an `X'..'` with a backslash (which sqlparser reads as an escape and
    /// the server does not). Kept apart so a broken text never shares a
    /// fingerprint with a good one.
    Malformed,
}

#[inline]
fn closed(ok: bool, kind: TokenKind) -> TokenKind {
    if ok {
        kind
    } else {
        TokenKind::Malformed
    }
}

/// One token: a kind and its byte range in the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub kind: TokenKind,
    pub start: usize,
    pub end: usize,
}

/// A PostgreSQL-flavoured lexer over bytes. Never fails: an unterminated
/// string, identifier or comment runs to the end of the input.
#[derive(Debug, Clone)]
pub struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Lexer<'a> {
    pub fn new(s: &'a [u8]) -> Self {
        Lexer { s, i: 0 }
    }

    /// Byte offset of the next unread byte.
    pub fn pos(&self) -> usize {
        self.i
    }

    #[inline]
    fn at(&self, i: usize) -> u8 {
        self.s.get(i).copied().unwrap_or(0)
    }

    /// The next token, comments included; `None` at the end.
    pub fn next_token(&mut self) -> Option<Token> {
        let s = self.s;
        let n = s.len();
        let mut i = self.i;
        // Mostly a single space between tokens.
        if i < n && s[i] == b' ' {
            i += 1;
        }
        while i < n && is_space(s[i]) {
            i += 1;
        }
        if i >= n {
            self.i = n;
            return None;
        }
        let start = i;
        let b = s[i];
        let kind = match b {
            b'-' if self.at(i + 1) == b'-' => {
                // The server ends a line comment at either newline byte.
                while i < n && s[i] != b'\n' && s[i] != b'\r' {
                    i += 1;
                }
                TokenKind::Comment
            }
            b'/' if self.at(i + 1) == b'*' => {
                let (end, ok) = skip_block_comment(s, i);
                i = end;
                closed(ok, TokenKind::Comment)
            }
            b'\'' => {
                let (end, ok) = skip_string(s, i + 1, false);
                i = end;
                closed(ok, TokenKind::Literal)
            }
            b'"' => {
                let (end, ok) = skip_quoted_ident(s, i + 1);
                i = end;
                closed(ok, TokenKind::QuotedIdent)
            }
            b'$' => {
                let c = self.at(i + 1);
                if c.is_ascii_digit() {
                    i += 1;
                    while i < n && s[i].is_ascii_digit() {
                        i += 1;
                    }
                    TokenKind::Param
                } else if let Some((end, ok)) = skip_dollar_quote(s, i) {
                    i = end;
                    closed(ok, TokenKind::Literal)
                } else {
                    i += 1;
                    TokenKind::Punct
                }
            }
            b'0'..=b'9' => {
                i = skip_number(s, i);
                TokenKind::Literal
            }
            b'.' if self.at(i + 1).is_ascii_digit() => {
                i = skip_number(s, i);
                TokenKind::Literal
            }
            _ if is_ident_start(b) => {
                let c = self.at(i + 1);
                if c == b'\'' && matches!(b, b'e' | b'E') {
                    let (end, ok) = skip_string(s, i + 2, true);
                    i = end;
                    closed(ok, TokenKind::Literal)
                } else if c == b'\'' && matches!(b, b'b' | b'B' | b'x' | b'X' | b'n' | b'N') {
                    let (end, ok) = skip_string(s, i + 2, false);
                    let hex_backslash = matches!(b, b'x' | b'X') && s[i..end].contains(&b'\\');
                    i = end;
                    closed(ok && !hex_backslash, TokenKind::Literal)
                } else if matches!(b, b'u' | b'U') && c == b'&' && self.at(i + 2) == b'\'' {
                    let (end, ok) = skip_string(s, i + 3, false);
                    i = end;
                    closed(ok, TokenKind::Literal)
                } else if matches!(b, b'u' | b'U') && c == b'&' && self.at(i + 2) == b'"' {
                    let (end, ok) = skip_quoted_ident(s, i + 3);
                    i = end;
                    closed(ok, TokenKind::QuotedIdent)
                } else {
                    i = ident_end(s, i + 1);
                    TokenKind::Word
                }
            }
            _ if is_op_char(b) => {
                i += 1;
                while i < n && is_op_char(s[i]) {
                    // A comment start ends the operator, as in the server.
                    let c = self.at(i + 1);
                    if (s[i] == b'-' && c == b'-') || (s[i] == b'/' && c == b'*') {
                        break;
                    }
                    i += 1;
                }
                TokenKind::Op
            }
            _ => {
                i += 1;
                TokenKind::Punct
            }
        };
        self.i = i;
        Some(Token {
            kind,
            start,
            end: i,
        })
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// High bit set in each byte of `w` that lies in `lo..=hi` (both ASCII);
/// only meaningful for ASCII bytes.
#[inline(always)]
fn in_range(x7: u64, lo: u8, hi: u8) -> u64 {
    let ge = x7.wrapping_add(ONES * (0x80 - lo as u64));
    let gt = x7.wrapping_add(ONES * (0x7f - hi as u64));
    ge & !gt & HIGH
}

/// The end of an identifier run starting at or before `i`, eight bytes at a
/// time: no per-byte branch to mispredict at the end of every word.
#[inline]
fn ident_end(s: &[u8], mut i: usize) -> usize {
    let n = s.len();
    while i + 8 <= n {
        let w = load8(s, i);
        let x7 = w & !HIGH;
        let ident = (w & HIGH)
            | in_range(x7 | (ONES * 0x20), b'a', b'z')
            | in_range(x7, b'0', b'9')
            | in_range(x7, b'_', b'_')
            | in_range(x7, b'$', b'$');
        let stop = !ident & HIGH;
        if stop != 0 {
            return i + (stop.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < n && is_ident_cont(s[i]) {
        i += 1;
    }
    i
}

#[inline(always)]
fn load8(s: &[u8], i: usize) -> u64 {
    match s.get(i..i + 8) {
        Some(c) => {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            u64::from_le_bytes(w)
        }
        None => 0,
    }
}

/// `i` is at `/*`; returns the index after the matching `*/` (they nest).
fn skip_block_comment(s: &[u8], mut i: usize) -> (usize, bool) {
    let n = s.len();
    let mut depth = 0usize;
    while i < n {
        if s[i] == b'/' && i + 1 < n && s[i + 1] == b'*' {
            depth += 1;
            i += 2;
        } else if s[i] == b'*' && i + 1 < n && s[i + 1] == b'/' {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return (i, true);
            }
        } else {
            i += 1;
        }
    }
    (n, false)
}

/// `i` is just after the opening quote; returns the index after the closing
/// one. `''` is a quote; with `backslash` (E'..') so is `\'`.
fn skip_string(s: &[u8], mut i: usize, backslash: bool) -> (usize, bool) {
    let n = s.len();
    while i < n {
        match s[i] {
            b'\\' if backslash => i += 2,
            b'\'' => {
                if i + 1 < n && s[i + 1] == b'\'' {
                    i += 2;
                } else {
                    return (i + 1, true);
                }
            }
            _ => i += 1,
        }
    }
    (n, false)
}

fn skip_quoted_ident(s: &[u8], mut i: usize) -> (usize, bool) {
    let n = s.len();
    while i < n {
        if s[i] == b'"' {
            if i + 1 < n && s[i + 1] == b'"' {
                i += 2;
            } else {
                return (i + 1, true);
            }
        } else {
            i += 1;
        }
    }
    (n, false)
}

/// `i` is at a `$`; if a dollar-quote tag starts here, returns the index after
/// its closing tag and whether there was one.
fn skip_dollar_quote(s: &[u8], i: usize) -> Option<(usize, bool)> {
    let n = s.len();
    let mut j = i + 1;
    if j < n && s[j] != b'$' {
        if !is_ident_start(s[j]) {
            return None;
        }
        while j < n && s[j] != b'$' {
            if !(s[j].is_ascii_alphanumeric() || s[j] == b'_' || s[j] >= 0x80) {
                return None;
            }
            j += 1;
        }
    }
    if j >= n {
        return None;
    }
    let tag = &s[i..=j];
    let mut k = j + 1;
    while k + tag.len() <= n {
        if s[k] == b'$' && &s[k..k + tag.len()] == tag {
            return Some((k + tag.len(), true));
        }
        k += 1;
    }
    Some((n, false))
}

/// `i` is at a digit or at `.digit`.
fn skip_number(s: &[u8], mut i: usize) -> usize {
    let n = s.len();
    if s[i] == b'0' && i + 1 < n && matches!(s[i + 1] | 0x20, b'x' | b'o' | b'b') {
        i += 2;
        while i < n && (s[i].is_ascii_hexdigit() || s[i] == b'_') {
            i += 1;
        }
        return i;
    }
    while i < n && (s[i].is_ascii_digit() || s[i] == b'_') {
        i += 1;
    }
    // A fraction, but not the `..` of a range.
    if i < n && s[i] == b'.' && !(i + 1 < n && s[i + 1] == b'.') {
        i += 1;
        while i < n && (s[i].is_ascii_digit() || s[i] == b'_') {
            i += 1;
        }
    }
    if i < n && (s[i] | 0x20) == b'e' {
        let mut j = i + 1;
        if j < n && (s[j] == b'+' || s[j] == b'-') {
            j += 1;
        }
        if j < n && s[j].is_ascii_digit() {
            i = j;
            while i < n && s[i].is_ascii_digit() {
                i += 1;
            }
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(s: &str) -> Fingerprint {
        fingerprint(s.as_bytes())
    }

    fn kinds(s: &str) -> Vec<(TokenKind, &str)> {
        let mut lx = Lexer::new(s.as_bytes());
        let mut v = Vec::new();
        while let Some(t) = lx.next_token() {
            v.push((t.kind, &s[t.start..t.end]));
        }
        v
    }

    #[test]
    fn literals_share() {
        assert_eq!(
            fp("SELECT * FROM t WHERE a = 1 AND b = 'x'"),
            fp("SELECT * FROM t WHERE a = 42.5e3 AND b = E'y\\'z'")
        );
        assert_eq!(fp("SELECT $1, $2"), fp("SELECT 'a', 0x1F"));
        assert_eq!(fp("SELECT N'd'"), fp("SELECT B'0101'"));
        assert_eq!(fp("SELECT (E'x')"), fp("SELECT ('y')"));
        // U&'..' keeps its prefix in the stream (it shares with other U& strings).
        assert_eq!(fp("SELECT U&'d\\0061t'"), fp("SELECT U&'x'"));
        assert_eq!(fp("SELECT 'it''s'"), fp("SELECT 'plain'"));
    }

    #[test]
    fn dollar_quotes_share() {
        assert_eq!(fp("SELECT $$DELETE FROM t$$"), fp("SELECT $$anything$$"));
        assert_eq!(fp("DO $f$ BEGIN x; END $f$"), fp("DO $$ other $$"));
        assert_eq!(fp("SELECT $a$ $$ $a$"), fp("SELECT 1"));
    }

    #[test]
    fn case_space_comments() {
        let base = fp("select a, b from t where c = 1");
        assert_eq!(base, fp("SELECT A, B FROM T WHERE C = 1"));
        assert_eq!(fp("select f(a, b)"), fp("select f(a,\n\t  b) -- x"));
        // Operators keep their spacing: `x - 1` and `x-1` may differ.
        assert_ne!(fp("select a < = b"), fp("select a <= b"));
        assert_ne!(fp("select e 'x'"), fp("select e'x'"));
        assert_eq!(base, fp("  select\n\ta,  b\r\nfrom t where c = 2  "));
        assert_eq!(base, fp("select a, b from t /* x */ where c = 2"));
        assert_eq!(base, fp("select a, b from t/* x */where c = 2"));
        assert_eq!(base, fp("select a, b from t /**/where c = 2"));
        assert_eq!(
            base,
            fp("-- hi\nselect a, /* x /* nested */ y */ b from t where c = 3")
        );
        assert_eq!(base, fp("select a, b from t where c = 3 -- trailing"));
        assert_ne!(base, fp("select a, b from u where c = 1"));
        assert_ne!(base, fp("select a, bb from t where c = 1"));
        assert_ne!(fp("select ab"), fp("select a b"));
    }

    #[test]
    fn quoted_identifiers_exact() {
        assert_ne!(fp("SELECT \"A\" FROM t"), fp("SELECT \"a\" FROM t"));
        assert_ne!(fp("SELECT \"a\" FROM t"), fp("SELECT a FROM t"));
        assert_ne!(fp("SELECT \"a\" FROM t"), fp("SELECT 'a' FROM t"));
        assert_eq!(fp("SELECT \"a\"\"b\""), fp("select \"a\"\"b\""));
    }

    #[test]
    fn keyword_not_hidden_by_literals() {
        assert_ne!(fp("SELECT 1 FOR UPDATE"), fp("SELECT 1"));
        assert_ne!(fp("SELECT 1for update"), fp("SELECT 1"));
        assert_ne!(fp("SELECT 'a'; DELETE FROM t"), fp("SELECT 'a'"));
        // Backslash does not escape in a standard string.
        assert_ne!(fp("SELECT 'a\\'; DELETE FROM t"), fp("SELECT 'a'"));
        assert_eq!(fp("SELECT E'a\\'; DELETE FROM t'"), fp("SELECT 'a'"));
        // Malformed tokens never look like finished ones.
        assert_ne!(fp("SELECT 'a"), fp("SELECT 'a'"));
        assert_ne!(fp("SELECT 1 /* x"), fp("SELECT 1"));
        assert_ne!(fp("SELECT \"a"), fp("SELECT \"a\""));
    }

    #[test]
    fn hints() {
        assert_eq!(hint(b"/* sluice:primary */ SELECT 1"), Some(Hint::Primary));
        assert_eq!(hint(b"  /*SLUICE : Replica*/SELECT 1"), Some(Hint::Replica));
        assert_eq!(
            hint(b"-- note\n /* other */ /* sluice:replica */ SELECT 1"),
            Some(Hint::Replica)
        );
        assert_eq!(hint(b"SELECT /* sluice:primary */ 1"), None);
        assert_eq!(hint(b"/* sluice:nope */ SELECT 1"), None);
        assert_eq!(hint(b"/* sluice:primary"), None);
        assert_eq!(hint(b""), None);
        // The hint is part of the fingerprint, other comments are not.
        let plain = fp("SELECT f()");
        assert_ne!(plain, fp("/* sluice:primary */ SELECT f()"));
        assert_ne!(plain, fp("/* sluice:replica */ SELECT f()"));
        assert_ne!(
            fp("/* sluice:primary */ SELECT f()"),
            fp("/* sluice:replica */ SELECT f()")
        );
        assert_eq!(plain, fp("/* just a note */ SELECT f()"));
        let s = scan(b"/* sluice:replica */ SELECT 1");
        assert_eq!(s.hint, Some(Hint::Replica));
    }

    #[test]
    fn lexer_tokens() {
        use TokenKind::*;
        assert_eq!(
            kinds("a$1 $1 $$x$$ x::int <= -1 e'q' \"Q\""),
            vec![
                (Word, "a$1"),
                (Param, "$1"),
                (Literal, "$$x$$"),
                (Word, "x"),
                (Punct, ":"),
                (Punct, ":"),
                (Word, "int"),
                (Op, "<="),
                (Op, "-"),
                (Literal, "1"),
                (Literal, "e'q'"),
                (QuotedIdent, "\"Q\""),
            ]
        );
        assert_eq!(kinds("a+-- c\nb")[1], (Op, "+"));
        assert_eq!(kinds("1for")[1], (Word, "for"));
        assert_eq!(kinds("x 'a")[1], (Malformed, "'a"));
        assert_eq!(kinds("x /* a")[1], (Malformed, "/* a"));
        assert_eq!(kinds("x $q$ a")[1], (Malformed, "$q$ a"));
        assert_eq!(kinds("x X'1\\'")[1], (Malformed, "X'1\\'"));
        assert_eq!(kinds("-- a\rb")[1], (Word, "b"));
    }

    /// The normalised stream itself, as it is hashed.
    fn stream(s: &str) -> Vec<u8> {
        let mut out = Normalised::new(DEFAULT_SEED);
        normalise(s.as_bytes(), &mut out);
        let hash = out.finish();
        assert_eq!(hash, xxh3_128_with_seed(&out.seen, DEFAULT_SEED), "{s}");
        out.seen
    }

    #[test]
    fn the_stream_is_the_normalised_text() {
        // `L` stands for the literal tag, `Q` for the quoted-identifier tag.
        let want = |w: &str| {
            w.bytes()
                .map(|b| match b {
                    b'L' => TAG_LITERAL,
                    b'Q' => TAG_QUOTED,
                    b => b,
                })
                .collect::<Vec<u8>>()
        };
        assert_eq!(
            stream("SELECT  A.b ,\t'x' -- c\n FROM \"T\" WHERE x=$1 /* c */"),
            want("select a.b , L from Q\"T\" where x=L")
        );
        assert_eq!(
            stream("select t1.c_2, E'x', 1.5e3"),
            want("select t1.c_2, L, L")
        );
        assert_eq!(stream("/* sluice:primary */ SELECT 1")[0], TAG_HINT_PRIMARY);
        let broken = stream("SELECT 'a ");
        assert_eq!(broken.last(), Some(&TAG_MALFORMED));
        assert_ne!(fp("SELECT 'a "), fp("SELECT 'a"));
    }

    #[test]
    fn long_texts_stream_the_same_hash() {
        // Longer than the buffer: hashed in pieces, to the same XXH3 value
        // as the whole stream in one call (`stream` checks).
        let cols: Vec<String> = (0..120).map(|i| format!("\"Col{i}\" AS c{i}")).collect();
        let text = format!("SELECT {} FROM t WHERE a = 'x' AND b = 7", cols.join(",  "));
        assert!(text.len() > 4 * OUT_BUF);
        let s = stream(&text);
        assert!(s.len() > 3 * OUT_BUF);
        assert!(!s.windows(2).any(|w| w == b"  "));
        assert_eq!(
            fp(&text),
            fp(&text.replace(",  ", ",\n\t").replace("'x'", "'y'"))
        );
        let upper = text.replace("AS", "as");
        assert_eq!(fp(&text), fp(&upper));
        for at in [
            OUT_BUF - 1,
            OUT_BUF,
            OUT_BUF + 1,
            2 * OUT_BUF + 3,
            text.len() - 20,
        ] {
            let mut changed = text.clone().into_bytes();
            if changed[at].is_ascii_lowercase() {
                changed[at] = if changed[at] == b'z' {
                    b'y'
                } else {
                    changed[at] + 1
                };
                let changed = String::from_utf8(changed).unwrap();
                assert_ne!(fp(&text), fp(&changed), "byte {at}");
            }
        }
    }

    #[test]
    fn long_words_hash_all_bytes() {
        assert_ne!(
            fp("SELECT abcdefghijklmnopqrstuvwxyz_1"),
            fp("SELECT abcdefghijklmnopqrstuvwxyz_2")
        );
        assert_eq!(
            fp("SELECT ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
            fp("select abcdefghijklmnopqrstuvwxyz")
        );
        assert_ne!(fp("SELECT a"), fp("SELECT a\0"));
    }

    /// The lexer's view: tokens with literal values dropped.
    fn reference(s: &str) -> Vec<(TokenKind, String)> {
        let mut lx = Lexer::new(s.as_bytes());
        let mut v = Vec::new();
        while let Some(t) = lx.next_token() {
            let text = &s[t.start..t.end];
            match t.kind {
                TokenKind::Comment => {}
                TokenKind::Literal | TokenKind::Param => {
                    v.push((TokenKind::Literal, String::new()))
                }
                TokenKind::Word => v.push((t.kind, text.to_ascii_lowercase())),
                _ => v.push((t.kind, text.to_string())),
            }
        }
        v
    }

    #[test]
    fn equal_fingerprints_mean_equal_token_streams() {
        let corpus = [
            "SELECT 1",
            "SELECT 2",
            "SELECT '1'",
            "SELECT $1",
            "SELECT 1for update",
            "SELECT 1 for update",
            "SELECT 1.5e3",
            "SELECT .5",
            "SELECT t.5",
            "SELECT t1",
            "SELECT t 1",
            "SELECT a$1",
            "SELECT a $1",
            "SELECT $$x$$",
            "SELECT $a$x$a$",
            "SELECT e'x'",
            "SELECT E'\\''",
            "SELECT xe'x'",
            "SELECT x'1F'",
            "SELECT X'1\\'",
            "SELECT U&'x'",
            "SELECT u&\"x\"",
            "SELECT \"x\"",
            "SELECT \"X\"",
            "SELECT x",
            "SELECT 'a''b'",
            "SELECT 'a' 'b'",
            "SELECT 'a'; DELETE FROM t",
            "SELECT 'a\\'; DELETE FROM t",
            "SELECT 1 -- x\nFOR UPDATE",
            "SELECT 1 /* x */ FOR UPDATE",
            "SELECT 1 /* /* */ */",
            "SELECT a+-1",
            "SELECT a+--1\n",
            "SELECT a/**/b",
            "SELECT ab",
            "SELECT a b",
            "SELECT 1$2",
            "SELECT $$a$$1",
            "SELECT 0x1F",
            "SELECT 0xFOR",
            "SELECT 1e",
            "SELECT 1e5x",
            "SELECT f(a, b)",
            "SELECT f(a,b)",
            "SELECT nextval('s')",
            "SELECT nextval(1)",
            "SELECT \"nextval\"('s')",
            "SELECT 'x",
            "SELECT 'y",
            "SELECT 1 /* x",
            "select é1",
            "select é 1",
            "SELECT a /**/b",
            "SELECT a /**/ b",
            "SELECT a  b",
            "SELECT a\tb",
            "SELECT e 'x'",
            "SELECT 'x' -- c",
            "SELECT 'x'-- c",
            "SELECT x -- c\n",
            "SELECT x ",
            "SELECT x;",
            "SELECT x ;",
            "SELECT a.b",
            "SELECT a. b",
            "SELECT a.5",
            "SELECT a .5",
            "SELECT -1",
            "SELECT - 1",
            "SELECT a-1",
        ];
        let fps: Vec<_> = corpus.iter().map(|s| fp(s)).collect();
        for (i, a) in corpus.iter().enumerate() {
            for (j, b) in corpus.iter().enumerate() {
                if fps[i] == fps[j] {
                    assert_eq!(
                        reference(a),
                        reference(b),
                        "{a:?} and {b:?} share a fingerprint"
                    );
                }
            }
        }
    }

    #[test]
    fn long_plain_runs_at_every_alignment() {
        // Runs of whole eight-byte words take a shortcut; check it at every
        // offset against spacing, case and single-byte changes.
        let body = "select customer_identifier, another_long_column_name from some_schema.some_table_name where a_column = 1";
        let base = fp(body);
        for pad in 0..17 {
            let spaced = format!("{}{}", " ".repeat(pad), body.to_uppercase());
            assert_eq!(base, fp(&spaced), "pad {pad}");
            let doubled = format!("{}{}", " ".repeat(pad), body.replacen(", ", ",   ", 1));
            assert_eq!(base, fp(&doubled), "pad {pad}");
        }
        for at in 0..body.len() {
            let b = body.as_bytes()[at];
            if !b.is_ascii_lowercase() {
                continue;
            }
            let mut changed = body.as_bytes().to_vec();
            changed[at] = if b == b'z' { b'y' } else { b + 1 };
            let changed = String::from_utf8(changed).unwrap();
            assert_ne!(base, fp(&changed), "byte {at} of {changed}");
            let mut split = body.to_string();
            split.insert(at, ' ');
            if at > 0 && body.as_bytes()[at - 1].is_ascii_alphanumeric() {
                assert_ne!(base, fp(&split), "space at {at}");
            }
        }
    }

    #[test]
    fn equal_streams_mean_equal_token_streams_for_every_short_text() {
        // Every text of up to four tricky pieces, alone and after a
        // keyword: texts whose streams are equal must lex alike.
        const PIECES: [&str; 27] = [
            "a", "A", "e", "x1", "1", "1.5", "'x'", "E'y'", "'a''b'", " ", "  ", "\t", "--c\n",
            "/*c*/", "$1", "$$q$$", "\"a\"", "\"A\"", "-", "/", ".", "$", "(", "'", "U&", "x'1'",
            "e5",
        ];
        let mut texts = Vec::new();
        let mut level = vec![String::new()];
        for _ in 0..4 {
            level = level
                .iter()
                .flat_map(|t| PIECES.iter().map(move |p| format!("{t}{p}")))
                .collect();
            texts.extend(level.iter().cloned());
        }
        let mut by_stream = std::collections::HashMap::new();
        let mut merged = 0;
        for body in &texts {
            for text in [body.clone(), format!("select {body}")] {
                let tokens = reference(&text);
                match by_stream.entry(stream(&text)) {
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert((text, tokens));
                    }
                    std::collections::hash_map::Entry::Occupied(o) => {
                        let (first, first_tokens) = o.get();
                        assert_eq!(&tokens, first_tokens, "{text:?} and {first:?}");
                        merged += 1;
                    }
                }
            }
        }
        // The property was put to work: many texts share a stream.
        assert!(merged > texts.len() / 2, "{merged} of {}", texts.len());
    }

    #[test]
    fn garbage_does_not_panic() {
        for s in [
            "'", "\"", "$", "$a", "$a$", "$a$ x", "/*", "/* /*", "--", "E'\\", "U&", "u&'", "0x",
            "1e", "1e+", ".", "$1$", "\u{0}", "é'",
        ] {
            let _ = fp(s);
            let _ = hint(s.as_bytes());
        }
        let bytes: Vec<u8> = (0..=255u8).collect();
        let _ = fingerprint(&bytes);
    }
}
