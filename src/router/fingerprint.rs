//! Statement fingerprints and routing hints.
//!
//! A fingerprint is a 128-bit hash of a statement's token stream with every
//! literal (strings in all their forms, numbers, bind parameters) replaced by
//! one placeholder, white space and comments dropped and unquoted words folded
//! to lower case. Two texts with the same fingerprint have the same shape, so
//! they classify the same way: the classifier caches by it. A leading routing
//! hint is part of the fingerprint (it changes the route).
//!
//! The lexer follows PostgreSQL's scanner closely enough that whatever it drops
//! (literals, comments, white space) is also what the server and sqlparser treat
//! as such; where it splits tokens differently the only effect is a fingerprint
//! that shares less, never one that merges two different statements.

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
    let mut h = Hasher::new(seed);
    let mut lx = Lexer::new(sql);
    let mut hint = None;
    let mut leading = true;
    while let Some(t) = lx.next_token() {
        let text = &sql[t.start..t.end];
        match t.kind {
            TokenKind::Comment => {
                if leading && hint.is_none() {
                    if let Some(found) = parse_hint(text) {
                        hint = Some(found);
                        h.byte(match found {
                            Hint::Primary => TAG_HINT_PRIMARY,
                            Hint::Replica => TAG_HINT_REPLICA,
                        });
                    }
                }
                continue;
            }
            TokenKind::Word => {
                for &b in text {
                    h.byte(b.to_ascii_lowercase());
                }
                h.byte(TAG_END);
            }
            TokenKind::QuotedIdent => {
                h.byte(TAG_QUOTED);
                h.bytes(text);
                h.byte(TAG_END);
            }
            TokenKind::Literal | TokenKind::Param => h.byte(TAG_LITERAL),
            TokenKind::Op => {
                h.bytes(text);
                h.byte(TAG_END);
            }
            TokenKind::Punct => h.byte(text.first().copied().unwrap_or(0)),
            TokenKind::Malformed => {
                h.byte(TAG_MALFORMED);
                h.bytes(text);
            }
        }
        leading = false;
    }
    Scan {
        fingerprint: Fingerprint(h.finish()),
        hint,
    }
}

// Bytes that never occur in UTF-8, so they cannot be confused with text.
const TAG_END: u8 = 0xFF;
const TAG_LITERAL: u8 = 0xFE;
const TAG_QUOTED: u8 = 0xFD;
const TAG_HINT_PRIMARY: u8 = 0xFC;
const TAG_HINT_REPLICA: u8 = 0xFB;
const TAG_MALFORMED: u8 = 0xFA;

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

#[inline]
pub(crate) fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
}

#[inline]
fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

#[inline]
fn is_ident_cont(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

#[inline]
fn is_op_char(b: u8) -> bool {
    matches!(
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
    )
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
                    i += 1;
                    while i < n && is_ident_cont(s[i]) {
                        i += 1;
                    }
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

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;

/// A small streaming hash (xxh64-style rounds over four lanes) that yields
/// 128 bits. Bytes are buffered so the rounds run on whole words.
struct Hasher {
    lanes: [u64; 4],
    buf: [u8; 32],
    n: usize,
    total: u64,
}

impl Hasher {
    fn new(seed: u64) -> Self {
        Hasher {
            lanes: [
                seed.wrapping_add(P1).wrapping_add(P2),
                seed.wrapping_add(P2),
                seed,
                seed.wrapping_sub(P1),
            ],
            buf: [0; 32],
            n: 0,
            total: 0,
        }
    }

    #[inline(always)]
    fn byte(&mut self, b: u8) {
        self.buf[self.n] = b;
        self.n += 1;
        if self.n == 32 {
            self.block();
        }
    }

    #[inline]
    fn bytes(&mut self, bs: &[u8]) {
        for &b in bs {
            self.byte(b);
        }
    }

    #[inline(always)]
    fn round(acc: u64, w: u64) -> u64 {
        acc.wrapping_add(w.wrapping_mul(P2))
            .rotate_left(31)
            .wrapping_mul(P1)
    }

    #[inline]
    fn block(&mut self) {
        for (k, lane) in self.lanes.iter_mut().enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(&self.buf[k * 8..k * 8 + 8]);
            *lane = Self::round(*lane, u64::from_le_bytes(w));
        }
        self.total += 32;
        self.n = 0;
    }

    fn finish(mut self) -> u128 {
        let len = self.total + self.n as u64;
        if self.n > 0 {
            self.buf[self.n..].fill(0);
            self.block();
        }
        let [v1, v2, v3, v4] = self.lanes;
        let a = v1
            .rotate_left(1)
            .wrapping_add(v2.rotate_left(7))
            .wrapping_add(v3.rotate_left(12))
            .wrapping_add(v4.rotate_left(18))
            ^ len.wrapping_mul(P3);
        let b = (v1.wrapping_mul(P3) ^ v2.rotate_left(29))
            .wrapping_add(v3.wrapping_mul(P4) ^ v4.rotate_left(43))
            ^ len.wrapping_mul(P4);
        let a = avalanche(a ^ b.rotate_left(17));
        let b = avalanche(b.wrapping_add(a));
        ((a as u128) << 64) | b as u128
    }
}

#[inline]
fn avalanche(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
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
        assert_eq!(fp("SELECT U&'d\\0061t'"), fp("SELECT B'0101'"));
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
        assert_eq!(base, fp("SELECT A,B FROM T WHERE C=1"));
        assert_eq!(base, fp("  select\n\ta ,  b\r\nfrom t where c = 2  "));
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
