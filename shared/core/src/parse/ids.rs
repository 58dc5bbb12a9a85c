//! The id rule shared by both files: `customer`, `merchant`, `Source` and `Target` are 1
//! to [`MAX_ID_BYTES`] bytes of UTF-8 after unquoting, with no control character
//! (U+0000–U+001F, U+007F). Non-ASCII letters are valid; so are U+0080–U+009F, which
//! the rule does not name.

use super::transactions::RejectReason;

/// Longest id, in bytes of UTF-8.
pub const MAX_ID_BYTES: usize = 128;

/// Checks an unquoted id field and returns it as text, or the reason it breaks the rule.
/// Checks run in a fixed order (empty, length, UTF-8, control character) so a field
/// with several faults always gets the same reason.
pub fn check_id<'a>(bytes: &'a [u8], column: &'static str) -> Result<&'a str, RejectReason> {
    if bytes.is_empty() {
        return Err(RejectReason::EmptyField { column });
    }
    if bytes.len() > MAX_ID_BYTES {
        return Err(RejectReason::IdTooLong {
            column,
            len: bytes.len(),
            limit: MAX_ID_BYTES,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|_| RejectReason::NotUtf8 { column })?;
    // In UTF-8 the control characters are single bytes that never occur inside a
    // multi-byte sequence, so a byte scan finds exactly them.
    if let Some(&b) = bytes.iter().find(|&&b| b < 0x20 || b == 0x7f) {
        return Err(RejectReason::ControlCharacter {
            column,
            code: u32::from(b),
        });
    }
    Ok(text)
}

/// The reason a row holding a NUL byte is rejected, if it holds one.
pub fn check_no_nul(raw: &[u8]) -> Result<(), RejectReason> {
    match memchr::memchr(0, raw) {
        Some(offset) => Err(RejectReason::NulByte { offset }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_is_in_bytes_and_128_is_the_limit() {
        let ok = "C".repeat(128);
        assert_eq!(check_id(ok.as_bytes(), "customer"), Ok(ok.as_str()));
        let long = "C".repeat(129);
        assert_eq!(
            check_id(long.as_bytes(), "customer"),
            Err(RejectReason::IdTooLong {
                column: "customer",
                len: 129,
                limit: 128
            })
        );
    }

    #[test]
    fn multibyte_at_the_boundary_counts_bytes() {
        let fits = format!("{}é", "C".repeat(126)); // 126 + 2 = 128 bytes
        assert!(check_id(fits.as_bytes(), "merchant").is_ok());
        let over = format!("{}é", "C".repeat(127)); // 129 bytes, 128 characters
        assert_eq!(
            check_id(over.as_bytes(), "merchant"),
            Err(RejectReason::IdTooLong {
                column: "merchant",
                len: 129,
                limit: 128
            })
        );
    }

    #[test]
    fn control_characters_are_named() {
        for (text, code) in [
            ("C\t1", 0x09),
            ("C\x7f", 0x7f),
            ("é\x01", 0x01),
            ("\x1f", 0x1f),
        ] {
            assert_eq!(
                check_id(text.as_bytes(), "Source"),
                Err(RejectReason::ControlCharacter {
                    column: "Source",
                    code
                }),
                "{text:?}"
            );
        }
        let reason = check_id(b"a\tb", "customer").unwrap_err().to_string();
        assert!(
            reason.contains("U+0009") && reason.contains("customer"),
            "{reason}"
        );
    }

    #[test]
    fn non_ascii_letters_and_c1_are_valid() {
        assert_eq!(
            check_id("Zoë-ß-日本".as_bytes(), "customer"),
            Ok("Zoë-ß-日本")
        );
        assert!(check_id("a\u{85}b".as_bytes(), "customer").is_ok());
        assert_eq!(check_id(b" ", "customer"), Ok(" "));
    }

    #[test]
    fn invalid_utf8_and_empty() {
        assert_eq!(
            check_id(b"C\xff", "merchant"),
            Err(RejectReason::NotUtf8 { column: "merchant" })
        );
        assert_eq!(
            check_id(b"", "Target"),
            Err(RejectReason::EmptyField { column: "Target" })
        );
    }

    #[test]
    fn nul_anywhere() {
        assert_eq!(check_no_nul(b"abc"), Ok(()));
        assert_eq!(
            check_no_nul(b"ab\0c"),
            Err(RejectReason::NulByte { offset: 2 })
        );
    }
}
