//! Sixteen statement bytes classified and lower-cased at once, for the
//! fingerprint scan. On x86_64 this is SSE2 (part of the baseline, so no
//! runtime detection); elsewhere a plain loop gives the same answers. No
//! crate does this classification: it is a handful of byte compares, written
//! here so the scan runs without a branch per byte.

use super::fingerprint::is_space;

/// Bytes that may need more than copying into the normalised stream: white
/// space (a single space before a byte that is not white space is copied as
/// is), quotes, `$`, digits and `-` `/` (comment starts). `#` comes along,
/// being between `"` and `$`; the scan simply copies it.
#[inline(always)]
pub(crate) fn is_special_byte(b: u8) -> bool {
    matches!(b, 9..=13 | b'"'..=b'$' | b'\'' | b'-' | b'/'..=b'9')
}

/// Sixteen bytes of input, zero-padded past its end.
#[derive(Clone, Copy)]
pub(crate) struct Chunk(imp::Vector);

impl Chunk {
    /// The sixteen bytes at `s[i..]`, zeros past the end of `s`.
    #[inline(always)]
    pub(crate) fn load(s: &[u8], i: usize) -> Chunk {
        match s.get(i..i + 16) {
            Some(c) => Chunk(imp::load(c)),
            None => {
                let mut b = [0u8; 16];
                let rest = s.get(i..).unwrap_or(&[]);
                b[..rest.len()].copy_from_slice(rest);
                Chunk(imp::load(&b))
            }
        }
    }

    /// Bit `j` set when byte `j` is special: [`is_special_byte`], or a space
    /// followed by white space (`next_ws` tells for the byte after the last).
    #[inline(always)]
    pub(crate) fn special(self, next_ws: bool) -> u32 {
        let (other, ws, sp) = imp::masks(self.0);
        other | (sp & ((ws >> 1) | ((next_ws as u32) << 15)))
    }

    /// The bytes, ASCII upper case folded to lower case.
    #[inline(always)]
    pub(crate) fn lower(self) -> [u8; 16] {
        imp::store(imp::lower(self.0))
    }

    /// The bytes as they are.
    #[inline(always)]
    pub(crate) fn bytes(self) -> [u8; 16] {
        imp::store(self.0)
    }
}

/// Whether `s[i]` is white space; false past the end.
#[inline(always)]
pub(crate) fn ws_at(s: &[u8], i: usize) -> bool {
    s.get(i).is_some_and(|&b| is_space(b))
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use std::arch::x86_64::*;

    pub(super) type Vector = __m128i;

    #[inline(always)]
    pub(super) fn load(b: &[u8]) -> Vector {
        assert!(b.len() >= 16);
        // SAFETY: `b` holds at least 16 bytes (checked above, and every
        // caller passes exactly 16); `loadu` has no alignment requirement.
        unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
    }

    #[inline(always)]
    pub(super) fn store(v: Vector) -> [u8; 16] {
        let mut b = [0u8; 16];
        // SAFETY: `b` is 16 writable bytes; `storeu` has no alignment
        // requirement.
        unsafe { _mm_storeu_si128(b.as_mut_ptr().cast(), v) };
        b
    }

    // SAFETY (every `unsafe` below that is not a load or store): the
    // intrinsics need SSE2, which every x86_64 CPU has and every x86_64
    // target enables; they touch no memory.

    /// All-ones in each byte of `v` within `lo..=hi`: shift the range to
    /// the bottom of the signed bytes and compare once.
    #[inline(always)]
    fn in_range(v: Vector, lo: u8, hi: u8) -> Vector {
        let bias = 0x80u8.wrapping_sub(lo) as i8;
        let limit = (0x81u8 + (hi - lo)) as i8;
        unsafe { _mm_cmplt_epi8(_mm_add_epi8(v, _mm_set1_epi8(bias)), _mm_set1_epi8(limit)) }
    }

    #[inline(always)]
    fn eq(v: Vector, b: u8) -> Vector {
        unsafe { _mm_cmpeq_epi8(v, _mm_set1_epi8(b as i8)) }
    }

    #[inline(always)]
    fn or(a: Vector, b: Vector) -> Vector {
        unsafe { _mm_or_si128(a, b) }
    }

    #[inline(always)]
    fn bits(m: Vector) -> u32 {
        unsafe { _mm_movemask_epi8(m) as u32 }
    }

    /// (special bytes other than a space, white space, spaces) as bit masks.
    #[inline(always)]
    pub(super) fn masks(v: Vector) -> (u32, u32, u32) {
        let ctrl_ws = in_range(v, 9, 13);
        let sp = eq(v, b' ');
        let quotes = or(in_range(v, b'"', b'$'), eq(v, b'\''));
        let comments_digits = or(eq(v, b'-'), in_range(v, b'/', b'9'));
        let other = or(ctrl_ws, or(quotes, comments_digits));
        (bits(other), bits(or(ctrl_ws, sp)), bits(sp))
    }

    #[inline(always)]
    pub(super) fn lower(v: Vector) -> Vector {
        let upper = in_range(v, b'A', b'Z');
        unsafe { _mm_or_si128(v, _mm_and_si128(upper, _mm_set1_epi8(0x20))) }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod imp {
    pub(super) type Vector = [u8; 16];

    #[inline(always)]
    pub(super) fn load(b: &[u8]) -> Vector {
        let mut v = [0u8; 16];
        v.copy_from_slice(&b[..16]);
        v
    }

    #[inline(always)]
    pub(super) fn store(v: Vector) -> [u8; 16] {
        v
    }

    pub(super) fn masks(v: Vector) -> (u32, u32, u32) {
        super::reference_masks(&v)
    }

    #[inline(always)]
    pub(super) fn lower(v: Vector) -> Vector {
        v.map(|b| b.to_ascii_lowercase())
    }
}

/// The masks byte by byte: the portable implementation, and the reference
/// the SIMD one is tested against.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn reference_masks(v: &[u8; 16]) -> (u32, u32, u32) {
    let (mut other, mut ws, mut sp) = (0, 0, 0);
    for (j, &b) in v.iter().enumerate() {
        other |= (is_special_byte(b) as u32) << j;
        ws |= (is_space(b) as u32) << j;
        sp |= ((b == b' ') as u32) << j;
    }
    (other, ws, sp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reference_special(v: &[u8; 16], next_ws: bool) -> u32 {
        let mut m = 0;
        for j in 0..16 {
            let next = if j == 15 { next_ws } else { is_space(v[j + 1]) };
            if is_special_byte(v[j]) || (v[j] == b' ' && next) {
                m |= 1 << j;
            }
        }
        m
    }

    #[test]
    fn every_byte_value_in_every_lane() {
        for b in 0..=255u8 {
            for lane in 0..16 {
                for filler in [b'a', b' ', b'\t', 0xC3] {
                    let mut v = [filler; 16];
                    v[lane] = b;
                    let c = Chunk::load(&v, 0);
                    for next_ws in [false, true] {
                        assert_eq!(
                            c.special(next_ws),
                            reference_special(&v, next_ws),
                            "{v:?} {next_ws}"
                        );
                    }
                    assert_eq!(c.lower(), v.map(|x| x.to_ascii_lowercase()));
                    assert_eq!(c.bytes(), v);
                }
            }
        }
    }

    #[test]
    fn loads_past_the_end_are_zero() {
        let s = b"ABC def";
        assert_eq!(&Chunk::load(s, 4).bytes()[..4], b"def\0");
        assert_eq!(Chunk::load(s, 7).bytes(), [0; 16]);
        assert_eq!(Chunk::load(s, 99).bytes(), [0; 16]);
        assert!(ws_at(s, 3) && !ws_at(s, 4) && !ws_at(s, 7));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn matches_the_reference(v in proptest::array::uniform16(any::<u8>()), next_ws: bool) {
            let c = Chunk::load(&v, 0);
            prop_assert_eq!(c.special(next_ws), reference_special(&v, next_ws));
            prop_assert_eq!(c.lower(), v.map(|x| x.to_ascii_lowercase()));
        }
    }
}
