//! Cutting exactly R data rows out of transactions.csv into chunks, from a byte buffer
//! that may end anywhere (the chunker's ranged reads) or from a whole file (replay).

use crate::parse::csv_scan::{strip_bom, Scanner};
use crate::parse::header::ColumnMap;
use crate::parse::transactions::TRANSACTION_COLUMNS;
use crate::parse::HeaderError;

/// The header line of a source file, as the chunks repeat it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceHeader {
    /// The header record's original bytes with its line terminator (BOM removed).
    pub line: Vec<u8>,
    /// Byte offset in the source file where the first data row starts.
    pub data_offset: u64,
}

/// Reads the header from the first bytes of a source file. `None` means more bytes are
/// needed (no complete header line yet and not at end of file).
pub fn read_header(buf: &[u8], at_eof: bool) -> Option<Result<SourceHeader, HeaderError>> {
    let bom = buf.len() - strip_bom(buf).len();
    let body = &buf[bom..];
    let mut scanner = Scanner::new();
    let mut pos = 0;
    loop {
        let Some(span) = scanner.next_record(body, pos, at_eof) else {
            if at_eof {
                return Some(Err(HeaderError::Empty {
                    file: "transactions",
                    expected: TRANSACTION_COLUMNS.join(", "),
                }));
            }
            return None;
        };
        pos = span.next;
        if span.is_blank() {
            continue;
        }
        let record = &body[span.start..span.end];
        return Some(
            ColumnMap::find("transactions", Some(record), &TRANSACTION_COLUMNS).map(|_| {
                let mut line = body[span.start..span.next].to_vec();
                if !line.ends_with(b"\n") {
                    line.push(b'\n'); // a header with no rows after it ends the file unterminated
                }
                SourceHeader {
                    line,
                    data_offset: (bom + span.next) as u64,
                }
            }),
        );
    }
}

/// The outcome of trying to cut one chunk from a buffer of data rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// A chunk: `buf[..consumed]` holds its `rows` data rows (blank lines included but
    /// not counted). `last` says no data row follows it in the file.
    Done {
        /// Bytes of the buffer the chunk takes.
        consumed: usize,
        /// Data rows in the chunk (may be 0 only when the source has no more rows).
        rows: u64,
        /// Whether this is the end of the stream.
        last: bool,
    },
    /// The buffer ends before the chunk does: read more bytes and try again.
    NeedMore,
}

/// Cuts up to `want` data rows from `buf`, which starts at a row boundary. `at_eof`
/// says `buf` runs to the end of the source file.
pub fn cut_rows(buf: &[u8], want: u64, at_eof: bool) -> Cut {
    let mut scanner = Scanner::new();
    let mut pos = 0;
    let mut rows = 0;
    while rows < want {
        match scanner.next_record(buf, pos, at_eof) {
            Some(span) => {
                pos = span.next;
                if !span.is_blank() {
                    rows += 1;
                }
            }
            None if at_eof => {
                return Cut::Done {
                    consumed: buf.len(),
                    rows,
                    last: true,
                }
            }
            None => return Cut::NeedMore,
        }
    }
    // Full chunk: it is the last one only if nothing but blank lines follows.
    let rest = &buf[pos..];
    if rest.iter().any(|&b| b != b'\n' && b != b'\r') {
        Cut::Done {
            consumed: pos,
            rows,
            last: false,
        }
    } else if at_eof {
        Cut::Done {
            consumed: buf.len(),
            rows,
            last: true,
        }
    } else {
        Cut::NeedMore
    }
}

/// One chunk cut from an in-memory source, for offline replay and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkBytes {
    /// Chunk number.
    pub k: u64,
    /// Header line then the rows, as in the source.
    pub bytes: Vec<u8>,
    /// Data rows.
    pub rows: u64,
    /// 1-based source row number of the first data row.
    pub first_row: u64,
    /// End of stream.
    pub last: bool,
}

/// Cuts a whole in-memory source into its chunks (what the chunker writes, in order).
pub fn split_source(source: &[u8], rows_per_chunk: u64) -> Result<Vec<ChunkBytes>, HeaderError> {
    let header = match read_header(source, true) {
        Some(result) => result?,
        None => return Ok(Vec::new()),
    };
    let mut offset = header.data_offset as usize;
    let mut chunks = Vec::new();
    let mut first_row = 1;
    loop {
        let Cut::Done {
            consumed,
            rows,
            last,
        } = cut_rows(&source[offset..], rows_per_chunk, true)
        else {
            unreachable!("cut_rows at end of file always finishes")
        };
        if rows == 0 {
            break;
        }
        let mut bytes = header.line.clone();
        bytes.extend_from_slice(&source[offset..offset + consumed]);
        chunks.push(ChunkBytes {
            k: chunks.len() as u64,
            bytes,
            rows,
            first_row,
            last,
        });
        first_row += rows;
        offset += consumed;
        if last {
            break;
        }
    }
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str =
        "step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud\n";

    fn source(rows: usize, crlf: bool) -> String {
        let eol = if crlf { "\r\n" } else { "\n" };
        let mut s = SRC.replace('\n', eol);
        for i in 0..rows {
            s.push_str(&format!("{i},'C{i}','1','F','1','M1','1','c',1.0,0{eol}"));
        }
        s
    }

    #[test]
    fn header_and_offset() {
        let text = format!("\u{feff}{}", source(1, false));
        let h = read_header(text.as_bytes(), false).unwrap().unwrap();
        assert_eq!(h.line, SRC.as_bytes());
        assert_eq!(h.data_offset as usize, 3 + SRC.len());
        assert_eq!(read_header(&SRC.as_bytes()[..10], false), None);
        assert!(read_header(b"", true).unwrap().is_err());
        assert!(read_header(b"a,b\n", true)
            .unwrap()
            .unwrap_err()
            .to_string()
            .contains("`customer`"));
    }

    #[test]
    fn chunks_are_exact_slices() {
        for crlf in [false, true] {
            let text = source(25, crlf);
            let chunks = split_source(text.as_bytes(), 10).unwrap();
            assert_eq!(
                chunks
                    .iter()
                    .map(|c| (c.k, c.rows, c.first_row, c.last))
                    .collect::<Vec<_>>(),
                vec![(0, 10, 1, false), (1, 10, 11, false), (2, 5, 21, true)]
            );
            let lines: Vec<&str> = text.split_inclusive('\n').collect();
            for c in &chunks {
                let mut expect = lines[0].to_string();
                for row in c.first_row..c.first_row + c.rows {
                    expect.push_str(lines[row as usize]);
                }
                assert_eq!(String::from_utf8(c.bytes.clone()).unwrap(), expect);
            }
        }
    }

    #[test]
    fn exact_multiple_marks_last_full_chunk() {
        let chunks = split_source(source(20, false).as_bytes(), 10).unwrap();
        assert_eq!(
            chunks.iter().map(|c| c.last).collect::<Vec<_>>(),
            vec![false, true]
        );
        let chunks = split_source((source(20, false) + "\n\r\n").as_bytes(), 10).unwrap();
        assert_eq!(
            chunks.iter().map(|c| (c.rows, c.last)).collect::<Vec<_>>(),
            vec![(10, false), (10, true)]
        );
    }

    #[test]
    fn empty_source_has_no_chunks() {
        assert!(split_source(SRC.as_bytes(), 10).unwrap().is_empty());
        assert!(split_source(b"", 10)
            .unwrap_err()
            .to_string()
            .contains("empty"));
    }

    #[test]
    fn need_more_inside_a_row_or_crlf_pair() {
        let text = source(3, true);
        let data = &text.as_bytes()[SRC.len() + 1..];
        let first_row_len = data.iter().position(|&b| b == b'\n').unwrap() + 1;
        // Buffer ends between \r and \n of the second row.
        let cut_at = first_row_len
            + data[first_row_len..]
                .iter()
                .position(|&b| b == b'\r')
                .unwrap()
            + 1;
        assert_eq!(cut_rows(&data[..cut_at], 2, false), Cut::NeedMore);
        assert_eq!(
            cut_rows(&data[..first_row_len + 5], 2, false),
            Cut::NeedMore
        );
        // One full row and more data after it: a complete 1-row cut.
        assert_eq!(
            cut_rows(&data[..first_row_len + 5], 1, false),
            Cut::Done {
                consumed: first_row_len,
                rows: 1,
                last: false
            }
        );
    }

    #[test]
    fn quoted_newline_is_not_a_row_break() {
        let text = format!("{SRC}0,\"C\n1\",1,F,1,M1,1,c,1.0,0\n1,C2,1,F,1,M1,1,c,1.0,0\n");
        let chunks = split_source(text.as_bytes(), 1).unwrap();
        assert_eq!(chunks.len(), 2);
        assert!(String::from_utf8_lossy(&chunks[0].bytes).contains("\"C\n1\""));
    }
}
