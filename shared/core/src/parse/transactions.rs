//! transactions.csv (BankSim format) rows: validated into [`Transaction`]s or kept as
//! [`RejectedRow`]s with the reason.

use super::csv_scan::{strip_single_quotes, RecordFault, RowReader, MAX_RECORD_BYTES};
use super::decimal::{parse_amount, AmountError, MAX_AMOUNT_INT_DIGITS};
use super::header::{ColumnMap, HeaderError};
use super::ids::{check_id, check_no_nul};
use super::RejectedRow;
use std::borrow::Cow;

/// The columns the engine reads; every other column travels with the raw row.
pub const TRANSACTION_COLUMNS: [&str; 4] = ["customer", "gender", "merchant", "amount"];

/// A customer's gender as written on a transaction. Only exactly `F` and `M` count for
/// the DEI pattern; anything else (`E`, `U`, empty, …) counts for neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Gender {
    /// `F`.
    Female,
    /// `M`.
    Male,
    /// Any other value.
    Other,
}

impl Gender {
    /// Reads an (unquoted) gender field.
    pub fn from_field(field: &[u8]) -> Self {
        match field {
            b"F" => Gender::Female,
            b"M" => Gender::Male,
            _ => Gender::Other,
        }
    }

    /// `F`, `M`, or `other` (the original text of other values is not kept).
    pub fn as_str(self) -> &'static str {
        match self {
            Gender::Female => "F",
            Gender::Male => "M",
            Gender::Other => "other",
        }
    }

    /// Compact code for the state codec.
    pub fn code(self) -> u8 {
        match self {
            Gender::Female => 1,
            Gender::Male => 2,
            Gender::Other => 0,
        }
    }

    /// Inverse of [`Gender::code`]; unknown codes read as `Other`.
    pub fn from_code(code: u8) -> Self {
        match code {
            1 => Gender::Female,
            2 => Gender::Male,
            _ => Gender::Other,
        }
    }
}

/// Why a row was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    /// The row's field count differs from the header's.
    #[error("row has {found} fields but the header has {expected}")]
    FieldCount {
        /// Fields in the header.
        expected: usize,
        /// Fields in the row.
        found: usize,
    },
    /// A required identifier is empty.
    #[error("`{column}` is empty")]
    EmptyField {
        /// The empty column.
        column: &'static str,
    },
    /// An id is not valid UTF-8.
    #[error("`{column}` is not valid UTF-8")]
    NotUtf8 {
        /// The offending column.
        column: &'static str,
    },
    /// An id is longer than the limit.
    #[error("`{column}` is {len} bytes long; an id is at most {limit} bytes of UTF-8")]
    IdTooLong {
        /// The offending column.
        column: &'static str,
        /// Its length in bytes, unquoted.
        len: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// An id holds a control character.
    #[error("`{column}` contains the control character U+{code:04X}; an id may not hold U+0000-U+001F or U+007F")]
    ControlCharacter {
        /// The offending column.
        column: &'static str,
        /// The first control character's code point.
        code: u32,
    },
    /// The row holds a NUL byte (in any column, used or not).
    #[error("the row contains a NUL byte (at byte {offset} of the row); no row may hold one")]
    NulByte {
        /// Offset of the first NUL in the row's text.
        offset: usize,
    },
    /// The amount is not a non-negative decimal with at most two fractional digits.
    #[error("`amount` is {text:?}; expected a non-negative decimal with at most 2 fractional digits, like 4.55 or 112.0")]
    BadAmount {
        /// The field as written.
        text: String,
    },
    /// The amount is well formed but has too many integer digits.
    #[error("`amount` is {text:?}: {digits} integer digits, but an amount has at most {limit} (999999999999.99 is the largest)")]
    AmountTooLarge {
        /// The field as written.
        text: String,
        /// Its integer digits, as written.
        digits: usize,
        /// The limit.
        limit: usize,
    },
    /// The id table cannot take another id (more than 4 billion ids or 4 GiB of id
    /// text); the row is kept so nothing is lost silently.
    #[error("the table of ids is full; the row cannot be indexed")]
    TableFull,
    /// The header the row came under (the chunk's, or in a chunk spanning files, its
    /// file's) is unusable, so the row cannot be read.
    #[error("the chunk's header is unusable: {why}")]
    UnreadableChunk {
        /// What is wrong with the header.
        why: String,
    },
    /// A double quote opened a field that never closed within the record limit: the
    /// quote was read as data and the row ends at its line's end.
    #[error("a double quote opens a field that does not close within {limit} bytes (or before the input ends); it is read as data and the row ends at its line's end")]
    UnclosedQuote {
        /// The record limit in bytes.
        limit: usize,
    },
    /// The line is longer than a record may be: this is one piece of it.
    #[error("the line runs past {limit} bytes, the longest a row may be; it is cut into rows of {limit} bytes, each rejected")]
    RecordTooLong {
        /// The record limit in bytes.
        limit: usize,
    },
    /// The importance weight is not a decimal with at most six fractional digits.
    #[error(
        "`Weight` is {text:?}; expected a decimal with at most 6 fractional digits, like 35.13"
    )]
    BadWeight {
        /// The field as written.
        text: String,
    },
}

impl From<RecordFault> for RejectReason {
    fn from(fault: RecordFault) -> Self {
        let limit = MAX_RECORD_BYTES;
        match fault {
            RecordFault::UnclosedQuote => RejectReason::UnclosedQuote { limit },
            RecordFault::TooLong => RejectReason::RecordTooLong { limit },
        }
    }
}

/// One valid transaction row, borrowing from the input where it can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction<'a> {
    /// 1-based data row number in the source file (the header is row 0).
    pub row: u64,
    /// Customer id without quotes (checked: 1 to 128 bytes of UTF-8, no control
    /// character).
    pub customer: Cow<'a, str>,
    /// Merchant id without quotes (checked like the customer).
    pub merchant: Cow<'a, str>,
    /// Gender as written.
    pub gender: Gender,
    /// Amount in integer cents.
    pub cents: u64,
    /// The row's original text.
    pub raw: &'a [u8],
}

impl Transaction<'_> {
    /// Customer and merchant ids. Always `Ok`: the reader checks ids before it yields a
    /// row (the `Result` remains for callers written when it did not).
    pub fn ids(&self) -> Result<(&str, &str), RejectReason> {
        Ok((&self.customer, &self.merchant))
    }
}

/// Iterates over the data rows of a transactions.csv file or chunk.
pub struct TransactionReader<'a> {
    rows: RowReader<'a>,
    columns: ColumnMap,
    next_row: u64,
}

impl<'a> TransactionReader<'a> {
    /// Reads the header of `buf` (a whole file or one chunk, header first). `first_row`
    /// is the 1-based number of the first data row, so rejected rows carry their row
    /// number in the source file.
    pub fn new(buf: &'a [u8], first_row: u64) -> Result<Self, HeaderError> {
        let rows = RowReader::new(buf);
        let columns = ColumnMap::find("transactions", rows.header(), &TRANSACTION_COLUMNS)?;
        Ok(TransactionReader {
            rows,
            columns,
            next_row: first_row,
        })
    }

    /// The row number the next data row gets.
    pub fn next_row(&self) -> u64 {
        self.next_row
    }

    /// The header's column names.
    pub fn column_names(&self) -> &[String] {
        &self.columns.names
    }

    fn parse(&mut self, raw: &'a [u8], row: u64) -> Result<Transaction<'a>, RejectReason> {
        if let Some(fault) = self.rows.fault {
            return Err(fault.into());
        }
        check_no_nul(raw)?;
        let fields = &mut self.rows.fields;
        if fields.len() != self.columns.width {
            return Err(RejectReason::FieldCount {
                expected: self.columns.width,
                found: fields.len(),
            });
        }
        let [customer, gender, merchant, amount] = [0, 1, 2, 3].map(|i| self.columns.positions[i]);
        let customer = take_id(&mut fields[customer], "customer")?;
        let merchant = take_id(&mut fields[merchant], "merchant")?;
        let gender = Gender::from_field(strip_single_quotes(&fields[gender]));
        let amount_text = strip_single_quotes(&fields[amount]);
        let cents = parse_amount(amount_text).map_err(|e| {
            let text = String::from_utf8_lossy(amount_text).into_owned();
            match e {
                AmountError::Syntax => RejectReason::BadAmount { text },
                AmountError::TooManyDigits(digits) => RejectReason::AmountTooLarge {
                    text,
                    digits,
                    limit: MAX_AMOUNT_INT_DIGITS,
                },
            }
        })?;
        Ok(Transaction {
            row,
            customer,
            merchant,
            gender,
            cents,
            raw,
        })
    }
}

/// Takes an id field out of the field list: unquoted (one pair of single quotes) and
/// checked against the id rule.
pub(crate) fn take_id<'a>(
    field: &mut Cow<'a, [u8]>,
    column: &'static str,
) -> Result<Cow<'a, str>, RejectReason> {
    match std::mem::take(field) {
        Cow::Borrowed(b) => check_id(strip_single_quotes(b), column).map(Cow::Borrowed),
        Cow::Owned(v) => check_id(strip_single_quotes(&v), column).map(|t| Cow::Owned(t.into())),
    }
}

impl<'a> Iterator for TransactionReader<'a> {
    type Item = Result<Transaction<'a>, RejectedRow>;

    fn next(&mut self) -> Option<Self::Item> {
        let raw = self.rows.next_row()?;
        let row = self.next_row;
        self.next_row += 1;
        Some(self.parse(raw, row).map_err(|reason| RejectedRow {
            row,
            raw: raw.to_vec(),
            reason,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str =
        "step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud\n";

    fn read(body: &str) -> Vec<Result<Transaction<'_>, RejectedRow>> {
        TransactionReader::new(body.as_bytes(), 1)
            .unwrap()
            .collect()
    }

    #[test]
    fn banksim_row_parses() {
        let text = format!("{HEADER}0,'C1093826151','4','M','28007','M348934600','28007','es_transportation',4.55,0\n");
        let rows = read(&text);
        let tx = rows[0].as_ref().unwrap();
        assert_eq!(tx.ids().unwrap(), ("C1093826151", "M348934600"));
        assert_eq!(tx.gender, Gender::Male);
        assert_eq!(tx.cents, 455);
        assert_eq!(tx.row, 1);
    }

    #[test]
    fn unquoted_double_quoted_crlf_and_bom() {
        let text = format!(
            "\u{feff}{}\r\n0,C1,4,F,1,M1,1,c,1.00,0\r\n0,\"C2\",4,\"F\",1,\"M,1\",1,c,\"2.5\",1\r\n",
            HEADER.trim_end()
        );
        let rows = read(&text);
        assert_eq!(rows.len(), 2);
        let a = rows[0].as_ref().unwrap();
        assert_eq!((a.ids().unwrap(), a.cents), (("C1", "M1"), 100));
        let b = rows[1].as_ref().unwrap();
        assert_eq!(
            (b.ids().unwrap(), b.cents, b.gender),
            (("C2", "M,1"), 250, Gender::Female)
        );
    }

    #[test]
    fn columns_found_by_name_in_any_order() {
        let rows = read("amount,merchant,extra,gender,customer\n'9.99','M1',x,'F','C1'\n");
        let tx = rows[0].as_ref().unwrap();
        assert_eq!((tx.ids().unwrap(), tx.cents), (("C1", "M1"), 999));
    }

    fn reason(line: &str) -> RejectReason {
        let text = format!("{HEADER}{line}\n");
        let rows = read(&text);
        let rejected = rows.into_iter().next().unwrap().unwrap_err();
        assert_eq!(rejected.raw, line.as_bytes());
        assert_eq!(rejected.row, 1);
        rejected.reason
    }

    #[test]
    fn every_rejection_reason() {
        assert_eq!(
            reason("0,'C1','4','M','1','M1','1','c',4.55"),
            RejectReason::FieldCount {
                expected: 10,
                found: 9
            }
        );
        assert_eq!(
            reason("0,'C1','4','M','1','M1','1','c',4.55,0,9"),
            RejectReason::FieldCount {
                expected: 10,
                found: 11
            }
        );
        assert_eq!(
            reason("0,'','4','M','1','M1','1','c',4.55,0"),
            RejectReason::EmptyField { column: "customer" }
        );
        assert_eq!(
            reason("0,C1,'4','M','1',,'1','c',4.55,0"),
            RejectReason::EmptyField { column: "merchant" }
        );
        assert_eq!(
            reason("0,'C1','4','M','1','M1','1','c',-4.55,0"),
            RejectReason::BadAmount {
                text: "-4.55".into()
            }
        );
        assert_eq!(
            reason("0,'C1','4','M','1','M1','1','c',4.555,0"),
            RejectReason::BadAmount {
                text: "4.555".into()
            }
        );
        assert_eq!(
            reason("0,'C1','4','M','1','M1','1','c',,0"),
            RejectReason::BadAmount { text: "".into() }
        );
    }

    /// Reads one data row given as bytes; returns the rejection, if any.
    fn read_bytes(line: &[u8]) -> Result<(String, String, u64), RejectedRow> {
        let mut bytes = HEADER.as_bytes().to_vec();
        bytes.extend_from_slice(line);
        bytes.push(b'\n');
        let mut rows = TransactionReader::new(&bytes, 1).unwrap();
        let row = rows.next().unwrap();
        assert!(rows.next().is_none());
        row.map(|tx| (tx.customer.into_owned(), tx.merchant.into_owned(), tx.cents))
    }

    fn row_with(customer: &[u8], merchant: &[u8], amount: &[u8]) -> Vec<u8> {
        let mut line = b"0,'".to_vec();
        line.extend_from_slice(customer);
        line.extend_from_slice(b"','4','M','1','");
        line.extend_from_slice(merchant);
        line.extend_from_slice(b"','1','c',");
        line.extend_from_slice(amount);
        line.extend_from_slice(b",0");
        line
    }

    #[test]
    fn invalid_utf8_id_is_rejected_and_kept_exactly() {
        let line = row_with(b"C\xff", b"M1", b"4.55");
        let rejected = read_bytes(&line).unwrap_err();
        assert_eq!(
            rejected.reason,
            RejectReason::NotUtf8 { column: "customer" }
        );
        assert_eq!(rejected.raw, line);
        let line = row_with(b"C1", b"M\xfe", b"4.55");
        assert_eq!(
            read_bytes(&line).unwrap_err().reason,
            RejectReason::NotUtf8 { column: "merchant" }
        );
    }

    #[test]
    fn ids_of_128_bytes_pass_and_129_are_rejected() {
        let c128 = "C".repeat(128);
        assert_eq!(
            read_bytes(&row_with(c128.as_bytes(), b"M1", b"1"))
                .unwrap()
                .0,
            c128
        );
        let m129 = "M".repeat(129);
        let rejected = read_bytes(&row_with(b"C1", m129.as_bytes(), b"1")).unwrap_err();
        assert_eq!(
            rejected.reason,
            RejectReason::IdTooLong {
                column: "merchant",
                len: 129,
                limit: 128
            }
        );
        let text = rejected.reason.to_string();
        assert!(text.contains("129") && text.contains("128"), "{text}");
        // The quotes are not part of the id: 128 bytes inside '…' is fine.
        let quoted = format!("\"{c128}\"");
        let line = format!("0,{quoted},4,M,1,M1,1,c,1,0");
        assert!(read_bytes(line.as_bytes()).is_ok());
    }

    #[test]
    fn multibyte_id_at_the_limit() {
        let fits = format!("{}ü", "C".repeat(126));
        assert!(read_bytes(&row_with(fits.as_bytes(), b"M1", b"1")).is_ok());
        let over = format!("{}ü", "C".repeat(127));
        assert_eq!(
            read_bytes(&row_with(over.as_bytes(), b"M1", b"1"))
                .unwrap_err()
                .reason,
            RejectReason::IdTooLong {
                column: "customer",
                len: 129,
                limit: 128
            }
        );
        let (c, m, _) =
            read_bytes(&row_with("Çustömer".as_bytes(), "Mé".as_bytes(), b"1")).unwrap();
        assert_eq!((c.as_str(), m.as_str()), ("Çustömer", "Mé"));
    }

    #[test]
    fn control_characters_in_ids_are_rejected() {
        for (id, code) in [(&b"C\t1"[..], 0x09), (b"C\x7f", 0x7f), (b"\x01C", 0x01)] {
            let rejected = read_bytes(&row_with(id, b"M1", b"1")).unwrap_err();
            assert_eq!(
                rejected.reason,
                RejectReason::ControlCharacter {
                    column: "customer",
                    code
                }
            );
            assert!(rejected
                .reason
                .to_string()
                .contains(&format!("U+{code:04X}")));
        }
        // A tab in a column that is not an id is fine.
        let line = b"0,'C1','4\t','M','1','M1','1','c',1,0";
        assert!(read_bytes(line).is_ok());
    }

    #[test]
    fn nul_anywhere_rejects_the_row_and_is_kept() {
        // In an unused column.
        let line = b"0,'C1','4','M','1','M1','1','c\0x',1,0";
        let rejected = read_bytes(line).unwrap_err();
        assert_eq!(rejected.reason, RejectReason::NulByte { offset: 30 });
        assert_eq!(rejected.raw, line);
        assert!(rejected.reason.to_string().contains("NUL"));
        // Inside a double-quoted field, and in an id.
        let line = b"0,C1,4,M,1,M1,1,\"a\0\",1,0";
        assert!(matches!(
            read_bytes(line).unwrap_err().reason,
            RejectReason::NulByte { .. }
        ));
        assert!(matches!(
            read_bytes(&row_with(b"C\x001", b"M1", b"1"))
                .unwrap_err()
                .reason,
            RejectReason::NulByte { .. }
        ));
    }

    #[test]
    fn invalid_utf8_in_an_unused_column_is_accepted() {
        let line = b"0,'C1','4','M','1','M1','1','caf\xe9',1,0";
        assert_eq!(
            read_bytes(line).unwrap(),
            ("C1".to_string(), "M1".to_string(), 100)
        );
    }

    #[test]
    fn amounts_of_12_integer_digits_pass_and_13_are_rejected() {
        assert_eq!(
            read_bytes(&row_with(b"C1", b"M1", b"999999999999.99"))
                .unwrap()
                .2,
            99_999_999_999_999
        );
        let rejected = read_bytes(&row_with(b"C1", b"M1", b"1000000000000.00")).unwrap_err();
        assert_eq!(
            rejected.reason,
            RejectReason::AmountTooLarge {
                text: "1000000000000.00".into(),
                digits: 13,
                limit: 12
            }
        );
        assert!(rejected.reason.to_string().contains("13 integer digits"));
    }

    #[test]
    fn row_numbers_continue_from_first_row_and_skip_blank_lines() {
        let text = format!("{HEADER}\n0,C1,4,M,1,M1,1,c,1,0\n\n0,C1,4,M,1,M1,1,c,x,0\n");
        let rows: Vec<_> = TransactionReader::new(text.as_bytes(), 20_001)
            .unwrap()
            .collect();
        assert_eq!(rows[0].as_ref().unwrap().row, 20_001);
        assert_eq!(rows[1].as_ref().unwrap_err().row, 20_002);
    }

    #[test]
    fn missing_column_rejects_file() {
        let err = TransactionReader::new(b"step,customer,merchant,amount\n", 1)
            .err()
            .unwrap();
        assert!(err.to_string().contains("`gender`"));
    }

    #[test]
    fn gender_is_exact() {
        assert_eq!(Gender::from_field(b"F"), Gender::Female);
        assert_eq!(Gender::from_field(b"f"), Gender::Other);
        assert_eq!(Gender::from_field(b"E"), Gender::Other);
        assert_eq!(Gender::from_code(Gender::Male.code()), Gender::Male);
    }
}
