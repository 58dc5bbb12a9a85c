//! Header rows: finding the columns a file must have, by name.

use super::csv_scan::{strip_single_quotes, Scanner};
use std::borrow::Cow;

/// A file could not be read at all because its header is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The input has no header line.
    #[error("the {file} file is empty: expected a header line naming the columns {expected}")]
    Empty {
        /// Which file (for the message).
        file: &'static str,
        /// The columns the file needs.
        expected: String,
    },
    /// The header line ends in a bare carriage return (old Mac line endings): the file
    /// would read as one record.
    #[error("the {file} file's line endings are a bare carriage return (CR, old Mac style); convert it to LF or CRLF line endings and upload it again")]
    CrLineEndings {
        /// Which file (for the message).
        file: &'static str,
    },
    /// No line terminator within the first `limit` bytes.
    #[error("the {file} file has no line terminator in its first {limit} bytes: its header line cannot be read (a file without line breaks, or with a bare-CR ending); convert it to LF or CRLF line endings")]
    HeaderTooLong {
        /// Which file (for the message).
        file: &'static str,
        /// The limit.
        limit: usize,
    },
    /// A column the pipeline needs is not named in the header.
    #[error("the {file} header has no `{column}` column (header was: {header}); expected the columns {expected}")]
    MissingColumn {
        /// Which file (for the message).
        file: &'static str,
        /// The missing column.
        column: &'static str,
        /// The header as read.
        header: String,
        /// The columns the file needs.
        expected: String,
    },
}

/// Positions of the needed columns in a header, plus the header's width.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnMap {
    /// Number of fields every data row must have.
    pub width: usize,
    /// Index of each needed column, in the order they were asked for.
    pub positions: Vec<usize>,
    /// All column names, unquoted, as in the header.
    pub names: Vec<String>,
}

impl ColumnMap {
    /// Finds `needed` columns in a header record (quotes removed, BOM already stripped).
    pub fn find(
        file: &'static str,
        header: Option<&[u8]>,
        needed: &[&'static str],
    ) -> Result<Self, HeaderError> {
        let expected = needed.join(", ");
        let header = header.ok_or(HeaderError::Empty {
            file,
            expected: expected.clone(),
        })?;
        let mut fields: Vec<Cow<[u8]>> = Vec::new();
        Scanner::new().split_fields(header, &mut fields);
        let names: Vec<String> = fields
            .iter()
            .map(|f| {
                String::from_utf8_lossy(strip_single_quotes(f))
                    .trim()
                    .to_string()
            })
            .collect();
        let positions = needed
            .iter()
            .map(|&column| {
                names
                    .iter()
                    .position(|n| n == column)
                    .ok_or_else(|| HeaderError::MissingColumn {
                        file,
                        column,
                        header: String::from_utf8_lossy(header).into_owned(),
                        expected: expected.clone(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ColumnMap {
            width: names.len(),
            positions,
            names,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_columns_in_any_order_with_quotes() {
        let map = ColumnMap::find("t", Some(b"'b',\"a\",c"), &["a", "c"]).unwrap();
        assert_eq!(map.positions, vec![1, 2]);
        assert_eq!(map.width, 3);
    }

    #[test]
    fn missing_column_names_it() {
        let err = ColumnMap::find(
            "transactions",
            Some(b"step,customer"),
            &["customer", "amount"],
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`amount`"), "{text}");
        assert!(text.contains("step,customer"), "{text}");
    }

    #[test]
    fn empty_input_is_an_error() {
        assert!(matches!(
            ColumnMap::find("t", None, &["a"]),
            Err(HeaderError::Empty { .. })
        ));
    }
}
