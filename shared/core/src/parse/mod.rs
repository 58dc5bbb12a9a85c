//! Reading the two input files exactly as docs/behaviour.md (inputs) describes.
//!
//! The parser is the only gate: every row it yields is storable by every sink (ids of 1
//! to 128 bytes of UTF-8 without control characters, amounts of at most 12 integer
//! digits, no NUL byte anywhere in the row); every other row is a [`RejectedRow`] with
//! its reason.

pub mod csv_scan;
pub mod decimal;
pub mod header;
pub mod ids;
pub mod importance;
pub mod transactions;

pub use header::HeaderError;
pub use importance::{ImportanceLoad, ImportanceTable};
pub use transactions::{Gender, RejectReason, Transaction, TransactionReader};

use std::borrow::Cow;

/// A row that was not used, kept with where it was and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRow {
    /// 1-based data row number in its file (the header is row 0).
    pub row: u64,
    /// The row's original bytes, exactly (NUL bytes and invalid UTF-8 included).
    pub raw: Vec<u8>,
    /// Why it was rejected.
    pub reason: RejectReason,
}

impl RejectedRow {
    /// The row's original bytes, lossless.
    pub fn raw_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// The row as readable text: the original when it is UTF-8 without NUL bytes;
    /// otherwise each NUL and each byte that is not UTF-8 is written `\xNN` and each
    /// backslash `\\`. Readable, not reversible: [`RejectedRow::raw_bytes`] is exact.
    pub fn raw_text(&self) -> Cow<'_, str> {
        readable(&self.raw)
    }
}

/// See [`RejectedRow::raw_text`].
pub fn readable(raw: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(raw) {
        Ok(text) if memchr::memchr(0, raw).is_none() => Cow::Borrowed(text),
        _ => Cow::Owned(escape(raw)),
    }
}

fn escape(raw: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(raw.len() + 16);
    for chunk in raw.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\0' => out.push_str("\\x00"),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\x{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_text_is_the_text_when_it_can_be() {
        assert_eq!(readable(b"a,b\\c"), "a,b\\c");
        assert!(matches!(readable("é,x".as_bytes()), Cow::Borrowed(_)));
    }

    #[test]
    fn raw_text_escapes_nul_and_invalid_bytes_but_raw_keeps_them() {
        let row = RejectedRow {
            row: 1,
            raw: b"a\0b\xff\\c\xc3".to_vec(),
            reason: RejectReason::NulByte { offset: 1 },
        };
        assert_eq!(row.raw_text(), "a\\x00b\\xFF\\\\c\\xC3");
        assert_eq!(row.raw_bytes(), b"a\0b\xff\\c\xc3");
    }
}
