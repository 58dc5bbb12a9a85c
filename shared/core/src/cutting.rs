//! Cutting exactly R data rows out of transactions.csv into chunks, from a byte buffer
//! that may end anywhere (the chunker's ranged reads) or from a whole file (replay).

use crate::parse::csv_scan::{strip_bom, strip_single_quotes, Scanner};
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

/// The longest header line read: a file with no line terminator this far in is
/// refused (it would otherwise be read whole as its header).
pub const MAX_HEADER_BYTES: usize = 64 << 10;

/// A first line that ends in a bare CR (old Mac line endings), or no line terminator
/// within [`MAX_HEADER_BYTES`]: the file cannot be cut into rows.
fn unreadable_lines(body: &[u8]) -> Option<HeaderError> {
    let line_end = body.iter().position(|&b| b == b'\n');
    let line = &body[..line_end.unwrap_or(body.len())];
    let bare_cr = line
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\r' && i + 1 < body.len() && body[i + 1] != b'\n');
    if bare_cr {
        return Some(HeaderError::CrLineEndings {
            file: "transactions",
        });
    }
    (line_end.is_none() && body.len() > MAX_HEADER_BYTES).then_some(HeaderError::HeaderTooLong {
        file: "transactions",
        limit: MAX_HEADER_BYTES,
    })
}

/// Reads the header from the first bytes of a source file. `None` means more bytes are
/// needed (no complete header line yet and not at end of file).
pub fn read_header(buf: &[u8], at_eof: bool) -> Option<Result<SourceHeader, HeaderError>> {
    let bom = buf.len() - strip_bom(buf).len();
    let body = &buf[bom..];
    if let Some(e) = unreadable_lines(body) {
        return Some(Err(e));
    }
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

/// The header of one file of a prefix stream, as the chunker reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHeader {
    /// The header line the file's rows go under in a chunk, with its line terminator:
    /// the file's own, or `columns` for a file without one. Empty for a file with no
    /// records at all.
    pub line: Vec<u8>,
    /// Byte offset in the file where its data rows start (`u64::MAX`: none can be
    /// read, the file is skipped).
    pub data_offset: u64,
    /// Why the file's rows cannot be read (its header lacks a needed column): they go
    /// into chunks as they are and are rejected with this reason.
    pub problem: Option<HeaderError>,
}

/// Reads the header of one file of a prefix stream from its first bytes (`None`: more
/// bytes are needed). The first record is the header when it names the needed
/// columns. Otherwise, with `columns` (a header line for files written without one, as
/// a Firehose delivery stream writes them), the first record is data; without, the
/// file's rows are unreadable and [`FileHeader::problem`] says why.
pub fn read_file_header(buf: &[u8], at_eof: bool, columns: Option<&[u8]>) -> Option<FileHeader> {
    let bom = buf.len() - strip_bom(buf).len();
    let body = &buf[bom..];
    if let Some(problem) = unreadable_lines(body) {
        // Not rows at all: the file is skipped whole (and reported), never read as one
        // giant record.
        return Some(FileHeader {
            line: Vec::new(),
            data_offset: u64::MAX,
            problem: Some(problem),
        });
    }
    let mut scanner = Scanner::new();
    let mut pos = 0;
    let terminated = |mut line: Vec<u8>| {
        if !line.is_empty() && !line.ends_with(b"\n") {
            line.push(b'\n');
        }
        line
    };
    loop {
        let Some(span) = scanner.next_record(body, pos, at_eof) else {
            if !at_eof {
                return None;
            }
            return Some(FileHeader {
                line: terminated(columns.unwrap_or_default().to_vec()),
                data_offset: buf.len() as u64,
                problem: None,
            });
        };
        pos = span.next;
        if span.is_blank() {
            continue;
        }
        let record = &body[span.start..span.end];
        let own = || terminated(body[span.start..span.next].to_vec());
        let after = (bom + span.next) as u64;
        return Some(
            match (
                ColumnMap::find("transactions", Some(record), &TRANSACTION_COLUMNS),
                columns,
            ) {
                (Ok(_), _) => FileHeader {
                    line: own(),
                    data_offset: after,
                    problem: None,
                },
                (Err(_), Some(columns)) if !names_a_column(record) => FileHeader {
                    line: terminated(columns.to_vec()),
                    data_offset: (bom + span.start) as u64,
                    problem: None,
                },
                (Err(problem), _) => FileHeader {
                    line: own(),
                    data_offset: after,
                    problem: Some(problem),
                },
            },
        );
    }
}

/// Whether a record names one of the needed columns: then it is a header (maybe an
/// incomplete one), not a data row, whose ids and amounts never read as column names.
fn names_a_column(record: &[u8]) -> bool {
    let mut fields = Vec::new();
    Scanner::new().split_fields(record, &mut fields);
    fields.iter().any(|f| {
        let name = String::from_utf8_lossy(strip_single_quotes(f));
        TRANSACTION_COLUMNS.contains(&name.trim())
    })
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

/// FNV-1a (64 bits) of some bytes: a chunk's fingerprint, recorded when it is cut and
/// checked before it is applied (and the importance file's, in a stream's settings).
pub fn content_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The data rows in a chunk's bytes, as the chunker counted them when it cut it: in each
/// segment (the chunk split at `later_headers`, one per file), the non-blank records
/// after the first (its header).
pub fn chunk_rows(data: &[u8], later_headers: &[usize]) -> u64 {
    let mut bounds = vec![0];
    bounds.extend(later_headers.iter().map(|&o| o.min(data.len())));
    bounds.push(data.len());
    let mut rows = 0;
    for w in bounds.windows(2) {
        let segment = strip_bom(&data[w[0]..w[1].max(w[0])]);
        let (mut scanner, mut pos, mut header) = (Scanner::new(), 0, false);
        while let Some(span) = scanner.next_record(segment, pos, true) {
            pos = span.next;
            match (span.is_blank(), header) {
                (true, _) => {}
                (false, true) => rows += 1,
                (false, false) => header = true,
            }
        }
    }
    rows
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

/// Reading a source for chunks failed.
#[derive(Debug, thiserror::Error)]
pub enum ChunkReadError {
    /// The source could not be read.
    #[error("reading the source: {0}")]
    Io(#[from] std::io::Error),
    /// The source's header is unusable.
    #[error(transparent)]
    Header(#[from] HeaderError),
}

/// One chunk from a [`ChunkReader`], borrowed from its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef<'a> {
    /// Chunk number.
    pub k: u64,
    /// Header line then the rows, as in the source (exactly what the chunker writes).
    pub bytes: &'a [u8],
    /// Data rows.
    pub rows: u64,
    /// 1-based source row number of the first data row.
    pub first_row: u64,
    /// End of stream.
    pub last: bool,
}

/// Cuts chunks from a source read piece by piece (a file), holding about one read block
/// in memory: the same chunks as [`split_source`] without reading the whole file first
/// or copying each chunk. A chunk must be the header line followed by its rows in one
/// slice; the reader writes the header into the already consumed bytes just before the
/// chunk's rows, so the unread rest is only moved when more must be read.
pub struct ChunkReader<R> {
    source: R,
    rows_per_chunk: u64,
    /// Consumed bytes (or the header), then the bytes not yet cut from `start` on.
    buf: Vec<u8>,
    start: usize,
    /// The header line (empty until read).
    header: Vec<u8>,
    at_eof: bool,
    next_k: u64,
    next_first_row: u64,
    finished: bool,
}

/// How much a [`ChunkReader`] reads at a time.
const READ_BLOCK: usize = 4 << 20;

impl<R: std::io::Read> ChunkReader<R> {
    /// A reader cutting `rows_per_chunk` rows per chunk.
    pub fn new(source: R, rows_per_chunk: u64) -> Self {
        ChunkReader {
            source,
            rows_per_chunk: rows_per_chunk.max(1),
            buf: Vec::new(),
            start: 0,
            header: Vec::new(),
            at_eof: false,
            next_k: 0,
            next_first_row: 1,
            finished: false,
        }
    }

    /// Moves the uncut bytes to just after room for the header, then appends up to one
    /// block from the source; sets `at_eof` when it has ended.
    fn fill(&mut self) -> Result<(), std::io::Error> {
        let room = self.header.len();
        if self.start > room {
            self.buf.copy_within(self.start.., room);
            self.buf.truncate(self.buf.len() - (self.start - room));
            self.start = room;
        }
        let old = self.buf.len();
        self.buf.resize(old + READ_BLOCK, 0);
        // Fill the whole block (pipes return less per read), or stop at the end.
        let mut filled = 0;
        while filled < READ_BLOCK {
            match self.source.read(&mut self.buf[old + filled..]) {
                Ok(0) => {
                    self.at_eof = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.buf.truncate(old + filled);
                    return Err(e);
                }
            }
        }
        self.buf.truncate(old + filled);
        Ok(())
    }

    /// The next chunk, or `None` after the last one (an empty source has none).
    pub fn next_chunk(&mut self) -> Result<Option<ChunkRef<'_>>, ChunkReadError> {
        if self.finished {
            return Ok(None);
        }
        if self.header.is_empty() {
            loop {
                match read_header(&self.buf, self.at_eof) {
                    Some(result) => {
                        let header = result?;
                        self.start = header.data_offset as usize;
                        // `line` may have gained a newline the file lacks: the room
                        // before `start` may be one byte short, so make it fit.
                        if self.start < header.line.len() {
                            let pad = header.line.len() - self.start;
                            self.buf.splice(0..0, std::iter::repeat_n(0, pad));
                            self.start += pad;
                        }
                        self.header = header.line;
                        break;
                    }
                    None => self.fill()?,
                }
            }
        }
        loop {
            match cut_rows(&self.buf[self.start..], self.rows_per_chunk, self.at_eof) {
                Cut::NeedMore => self.fill()?,
                Cut::Done { rows: 0, .. } => {
                    self.finished = true;
                    return Ok(None);
                }
                Cut::Done {
                    consumed,
                    rows,
                    last,
                } => {
                    // The bytes before `start` are consumed (or a BOM and the header):
                    // the header goes right in front of the rows.
                    let from = self.start - self.header.len();
                    self.buf[from..self.start].copy_from_slice(&self.header);
                    self.start += consumed;
                    self.finished = last;
                    let chunk = ChunkRef {
                        k: self.next_k,
                        bytes: &self.buf[from..self.start],
                        rows,
                        first_row: self.next_first_row,
                        last,
                    };
                    self.next_k += 1;
                    self.next_first_row += rows;
                    return Ok(Some(chunk));
                }
            }
        }
    }
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

    #[test]
    fn bare_cr_line_endings_and_lineless_files_are_refused_at_the_header() {
        let cr = format!(
            "{}1,'C1','1','F','1','M1','1','c',1.0,0\r",
            SRC.replace('\n', "\r")
        );
        assert!(matches!(
            read_header(cr.as_bytes(), false),
            Some(Err(HeaderError::CrLineEndings { .. }))
        ));
        // CRLF is fine, even when a read window ends between the CR and the LF.
        let crlf = SRC.replace('\n', "\r\n");
        assert!(matches!(read_header(crlf.as_bytes(), true), Some(Ok(_))));
        assert!(read_header(&crlf.as_bytes()[..crlf.len() - 1], false).is_none());
        let lineless = vec![b'a'; MAX_HEADER_BYTES + 1];
        let err = read_header(&lineless, false).unwrap().unwrap_err();
        assert!(err.to_string().contains("no line terminator"), "{err}");
    }

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

    /// A reader that returns at most `step` bytes per call.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = self.step.min(out.len()).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn read_all(source: &[u8], rows: u64, step: usize) -> Result<Vec<ChunkBytes>, ChunkReadError> {
        let mut reader = ChunkReader::new(Trickle { data: source, step }, rows);
        let mut out = Vec::new();
        while let Some(c) = reader.next_chunk()? {
            out.push(ChunkBytes {
                k: c.k,
                bytes: c.bytes.to_vec(),
                rows: c.rows,
                first_row: c.first_row,
                last: c.last,
            });
        }
        Ok(out)
    }

    #[test]
    fn chunk_reader_equals_split_source_whatever_the_reads() {
        let mut quoted = format!("\u{feff}{SRC}");
        quoted.push_str("0,\"C\r\n1\",1,F,1,M1,1,c,1.0,0\r\n\n1,C2,1,F,1,M1,1,c,1.0,0\r\n");
        for text in [
            source(25, false),
            source(25, true),
            source(20, false) + "\n\r\n",
            quoted,
        ] {
            for rows in [1, 3, 10, 100] {
                let want = split_source(text.as_bytes(), rows).unwrap();
                for step in [1, 2, 7, 64, 1 << 20] {
                    assert_eq!(
                        read_all(text.as_bytes(), rows, step).unwrap(),
                        want,
                        "rows {rows} step {step}"
                    );
                }
            }
        }
        assert!(read_all(SRC.as_bytes(), 10, 3).unwrap().is_empty());
        assert!(matches!(
            read_all(b"", 10, 3),
            Err(ChunkReadError::Header(_))
        ));
        assert!(matches!(
            read_all(b"a,b\n1,2\n", 10, 3),
            Err(ChunkReadError::Header(_))
        ));
    }

    #[test]
    fn quoted_newline_is_not_a_row_break() {
        let text = format!("{SRC}0,\"C\n1\",1,F,1,M1,1,c,1.0,0\n1,C2,1,F,1,M1,1,c,1.0,0\n");
        let chunks = split_source(text.as_bytes(), 1).unwrap();
        assert_eq!(chunks.len(), 2);
        assert!(String::from_utf8_lossy(&chunks[0].bytes).contains("\"C\n1\""));
    }
}
