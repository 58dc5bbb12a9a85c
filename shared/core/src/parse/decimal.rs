//! Exact decimal parsing: amounts to integer cents, weights to integer micro-units.
//!
//! Floating point never touches money or weights: `0.1 + 0.2` style drift would make two
//! implementations disagree at a threshold.

/// Parses a non-negative decimal with at most `max_frac` fractional digits into an
/// integer scaled by `10^max_frac` (`"4.5"` with 2 digits is `450`).
///
/// Accepted: `digits` or `digits.digits` (one to `max_frac` fractional digits). Rejected:
/// signs, exponents, spaces, a bare `.`, `5.`, `.5`, and values that overflow `u64`.
pub fn parse_scaled(text: &[u8], max_frac: u32) -> Option<u64> {
    let (int_part, frac_part) = match memchr::memchr(b'.', text) {
        Some(dot) => (&text[..dot], Some(&text[dot + 1..])),
        None => (text, None),
    };
    if int_part.is_empty() || !int_part.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut value: u64 = 0;
    for &d in int_part {
        value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    let frac = frac_part.unwrap_or(b"");
    if frac_part.is_some() && (frac.is_empty() || frac.len() > max_frac as usize) {
        return None;
    }
    if !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    for i in 0..max_frac as usize {
        let digit = frac.get(i).map_or(0, |d| u64::from(d - b'0'));
        value = value.checked_mul(10)?.checked_add(digit)?;
    }
    Some(value)
}

/// Most integer digits an amount may have (`999999999999.99` is the largest amount).
pub const MAX_AMOUNT_INT_DIGITS: usize = 12;

/// Why an amount field is not an amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmountError {
    /// Not a non-negative decimal with at most 2 fractional digits.
    Syntax,
    /// Well formed, but with more than [`MAX_AMOUNT_INT_DIGITS`] integer digits (as
    /// written: leading zeros count, the rule is about the text).
    TooManyDigits(usize),
}

/// Parses a transaction amount (at most 12 integer and 2 fractional digits) into cents.
/// The largest result, 99,999,999,999,999, needs 47 bits.
pub fn parse_amount(text: &[u8]) -> Result<u64, AmountError> {
    let int_digits = memchr::memchr(b'.', text).unwrap_or(text.len());
    if int_digits > MAX_AMOUNT_INT_DIGITS {
        // Checked before the value, so a long amount is named as such even when it
        // would overflow.
        return Err(if well_formed(text, 2) {
            AmountError::TooManyDigits(int_digits)
        } else {
            AmountError::Syntax
        });
    }
    parse_scaled(text, 2).ok_or(AmountError::Syntax)
}

/// Whether `text` is `digits` or `digits.digits` with 1 to `max_frac` fractional digits.
fn well_formed(text: &[u8], max_frac: usize) -> bool {
    let (int_part, frac) = match memchr::memchr(b'.', text) {
        Some(dot) => (&text[..dot], Some(&text[dot + 1..])),
        None => (text, None),
    };
    !int_part.is_empty()
        && int_part.iter().all(u8::is_ascii_digit)
        && frac.is_none_or(|f| {
            !f.is_empty() && f.len() <= max_frac && f.iter().all(u8::is_ascii_digit)
        })
}

/// Parses a transaction amount into cents; `None` when [`parse_amount`] rejects it.
pub fn parse_cents(text: &[u8]) -> Option<u64> {
    parse_amount(text).ok()
}

/// Parses an importance weight (optionally negative, at most 6 fractional digits) into
/// micro-units.
pub fn parse_micros(text: &[u8]) -> Option<i64> {
    match text.strip_prefix(b"-") {
        Some(rest) => i64::try_from(parse_scaled(rest, 6)?).ok().map(|v| -v),
        None => i64::try_from(parse_scaled(text, 6)?).ok(),
    }
}

/// Formats cents as a decimal with two fractional digits (`455` → `"4.55"`).
pub fn format_cents(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cents_accepts_spec_forms() {
        assert_eq!(parse_cents(b"4.55"), Some(455));
        assert_eq!(parse_cents(b"112.0"), Some(11200));
        assert_eq!(parse_cents(b"0"), Some(0));
        assert_eq!(parse_cents(b"23"), Some(2300));
        assert_eq!(parse_cents(b"007.10"), Some(710));
    }

    #[test]
    fn cents_rejects_everything_else() {
        for bad in [
            &b""[..],
            b"-1",
            b"+1",
            b"1.234",
            b"1.",
            b".5",
            b"1e3",
            b" 1",
            b"1 ",
            b"1,5",
            b"abc",
            b"1.2.3",
            b"NaN",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_cents(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn amounts_have_at_most_12_integer_digits() {
        assert_eq!(parse_amount(b"999999999999.99"), Ok(99_999_999_999_999));
        assert_eq!(parse_amount(b"999999999999"), Ok(99_999_999_999_900));
        assert_eq!(
            parse_amount(b"1000000000000.00"),
            Err(AmountError::TooManyDigits(13))
        );
        assert_eq!(
            parse_amount(b"0000000000001"),
            Err(AmountError::TooManyDigits(13))
        );
        assert_eq!(parse_amount(b"1.234"), Err(AmountError::Syntax));
        assert_eq!(
            parse_amount(b"99999999999999999999"),
            Err(AmountError::TooManyDigits(20))
        );
        assert_eq!(parse_amount(b"1000000000000x"), Err(AmountError::Syntax));
    }

    #[test]
    fn micros_handle_sign_and_six_digits() {
        assert_eq!(parse_micros(b"0.000001"), Some(1));
        assert_eq!(parse_micros(b"-2.5"), Some(-2_500_000));
        assert_eq!(parse_micros(b"4.55"), Some(4_550_000));
        assert_eq!(parse_micros(b"1.0000001"), None);
        assert_eq!(parse_micros(b"--1"), None);
    }

    #[test]
    fn cents_format_round_trips() {
        assert_eq!(format_cents(455), "4.55");
        assert_eq!(format_cents(5), "0.05");
        assert_eq!(format_cents(11200), "112.00");
    }
}
