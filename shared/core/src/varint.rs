//! LEB128 variable-length integers and zigzag signs: the small encoding every stored
//! format here uses (deltas, snapshots, a head's pending detections, a cursor's chunk
//! starts), written once.

/// Appends `v` as a varint (7 bits a byte, high bit = more follows).
#[inline]
pub fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a varint at `*pos` and moves past it; `None` if the bytes end first or it is
/// longer than a `u64` can hold.
#[inline]
pub fn read(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*pos)?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// How many bytes [`put`] writes for `v`.
#[inline]
pub fn len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// A signed value as an unsigned one with small magnitudes kept small.
#[inline]
pub fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// The inverse of [`zigzag`].
#[inline]
pub fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_lengths() {
        for v in [0, 1, 127, 128, 300, 1 << 35, u64::MAX] {
            let mut out = Vec::new();
            put(&mut out, v);
            assert_eq!(out.len(), len(v), "{v}");
            let mut pos = 0;
            assert_eq!(read(&out, &mut pos), Some(v));
            assert_eq!(pos, out.len());
            assert_eq!(read(&out[..out.len() - 1], &mut 0), None);
        }
        for v in [0, 1, -1, 63, -64, i64::MAX, i64::MIN] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        assert_eq!(zigzag(-1), 1);
        // Eleven continuation bytes overflow a u64.
        assert_eq!(read(&[0x80; 11], &mut 0), None);
    }
}
