//! Finding CSV records and fields in a byte buffer.
//!
//! Both the chunker (which must cut exactly R rows out of ranged reads) and the row parser
//! need the same notion of where a record ends, so it lives here once. RFC 4180 parsing
//! (a quoted field may hold commas, `""` and line breaks) is the `csv-core` crate's state
//! machine. A hand fast path stays in front of it for lines with no double quote at all:
//! such a line ends at its first `\n` and splits on commas, found with `memchr` (SIMD),
//! whereas csv-core walks its DFA a byte at a time. A line with a double quote anywhere
//! goes to csv-core whole, so the fast path only decides lines whose meaning does not
//! depend on quoting. It stays because it pays; measured with
//! `TXPIPE_BENCH_DATA=$PWD/data/bench/banksim cargo bench -p txpipe-core --bench scan`
//! (BankSim-shaped set, 594,643 rows, 48 MB; one core; median of 9 paired runs):
//!
//! | work                                    | fast path | csv-core only | ratio |
//! |-----------------------------------------|-----------|---------------|-------|
//! | record boundaries (the chunk cutter)    | 4.7 GB/s  | 1.15 GB/s     | 4.1×  |
//! | row split + checks (the row parser)     | 0.67 GB/s | 0.58 GB/s     | 1.17× |
//!
//! The row parser's single-pass version of the fast path (`memchr3` over `,` `\n` `"`)
//! is [`RowReader`].
//!
//! csv-core runs with `\n` as the only terminator: a lone `\r` is data (as in the hand
//! scanner this replaced), and a `\r` right before the `\n` is dropped from the record.
//! Blank lines are records of no text ([`RecordSpan::is_blank`]); callers skip them.
//!
//! A record is bounded ([`MAX_RECORD_BYTES`]), so no input holds more than that in one
//! record, and one stray `"` cannot swallow the rest of a file: a quote still open
//! when the record reaches the limit (or the input ends) is data, and the record ends
//! at its line's end ([`RecordFault::UnclosedQuote`]); a line without a terminator
//! within the limit is cut into records of exactly the limit
//! ([`RecordFault::TooLong`]). Both depend only on the record's first
//! `MAX_RECORD_BYTES` bytes, so the chunker (reading windows of a file) and the parser
//! (reading a chunk, which may end right after such a record) find the same records.

use csv_core::{ReadRecordResult, ReaderBuilder, Terminator};
use std::borrow::Cow;

/// The longest record, in bytes (64 KiB): a line holding more is cut into records of
/// this size, each rejected, and a double quote that does not close within it is read
/// as data.
pub const MAX_RECORD_BYTES: usize = 64 << 10;

/// Why a record does not end where CSV quoting alone would end it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordFault {
    /// A double quote opened a field that did not close within [`MAX_RECORD_BYTES`]
    /// (or before the end of the input): the record ends at its first line terminator.
    UnclosedQuote,
    /// The line has no terminator within [`MAX_RECORD_BYTES`]: the record is its first
    /// `MAX_RECORD_BYTES` bytes, and the rest of the line follows as further records.
    TooLong,
}

/// Where one record lies in a buffer: `start..end` is its text without the line
/// terminator, `next` is where the following record starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordSpan {
    /// First byte of the record.
    pub start: usize,
    /// One past the last byte of the record's text (line terminator excluded).
    pub end: usize,
    /// First byte after the line terminator.
    pub next: usize,
    /// Set when the record was bounded rather than ended by CSV quoting.
    pub fault: Option<RecordFault>,
}

impl RecordSpan {
    /// Whether the record is a blank line (no text at all).
    pub fn is_blank(&self) -> bool {
        self.start == self.end
    }
}

/// A CSV scanner: the hand fast path plus a reusable csv-core reader for lines with
/// double quotes. The csv-core reader (a DFA table) is built on the first such line and
/// kept, so keep one scanner per file or chunk rather than one per record.
#[derive(Default)]
pub struct Scanner {
    core: Option<Box<csv_core::Reader>>,
    out: Vec<u8>,
    ends: Vec<usize>,
}

impl std::fmt::Debug for Scanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scanner")
    }
}

impl Scanner {
    /// A scanner for comma-separated, double-quoted CSV with `\n` or `\r\n` lines.
    pub fn new() -> Self {
        Scanner::default()
    }

    /// The csv-core reader, reset to the start of a record.
    fn core(&mut self) -> &mut csv_core::Reader {
        let core = self.core.get_or_insert_with(|| {
            Box::new(
                ReaderBuilder::new()
                    .delimiter(b',')
                    .quote(b'"')
                    .double_quote(true)
                    .escape(None)
                    .comment(None)
                    .terminator(Terminator::Any(b'\n'))
                    .build(),
            )
        });
        core.reset();
        core
    }

    /// Finds the record that starts at `start`.
    ///
    /// Returns `None` when `buf[start..]` holds no complete record: either it is empty,
    /// or the record has no line terminator yet and `at_eof` is false (more bytes may
    /// follow; this includes a buffer that ends inside quotes or between `\r` and `\n`).
    /// At end of input a record without a terminator runs to the end of the buffer.
    pub fn next_record(&mut self, buf: &[u8], start: usize, at_eof: bool) -> Option<RecordSpan> {
        if start >= buf.len() {
            return None;
        }
        let rest = &buf[start..];
        let window = &rest[..rest.len().min(MAX_RECORD_BYTES)];
        let line_len = memchr::memchr(b'\n', window);
        let candidate = &window[..line_len.unwrap_or(window.len())];
        if memchr::memchr(b'"', candidate).is_none() {
            return match line_len {
                Some(len) => Some(span(buf, start, start + len, start + len + 1)),
                None if rest.len() >= MAX_RECORD_BYTES => Some(too_long(start)),
                None if at_eof => Some(span(buf, start, buf.len(), buf.len())),
                None => None,
            };
        }
        self.quoted_record(buf, start, at_eof)
    }

    /// A record whose quote is still open at the limit or at the end of the input:
    /// the quote is data and the record ends at its line's end.
    fn unclosed_quote(buf: &[u8], start: usize, window: &[u8]) -> Option<RecordSpan> {
        let record = match memchr::memchr(b'\n', window) {
            Some(len) => span(buf, start, start + len, start + len + 1),
            None if window.len() >= MAX_RECORD_BYTES => return Some(too_long(start)),
            None => span(buf, start, start + window.len(), start + window.len()),
        };
        Some(RecordSpan {
            fault: Some(RecordFault::UnclosedQuote),
            ..record
        })
    }

    /// A record whose first line holds a double quote, by csv-core. Only the record's
    /// extent is wanted here; the unquoted field bytes are discarded.
    fn quoted_record(&mut self, buf: &[u8], start: usize, at_eof: bool) -> Option<RecordSpan> {
        let rest = &buf[start..];
        let input = &rest[..rest.len().min(MAX_RECORD_BYTES)];
        if self.out.len() < 4096 {
            self.out.resize(4096, 0);
            self.ends.resize(64, 0);
        }
        self.core();
        let Scanner { core, out, ends } = self;
        let core = core.as_mut()?;
        let mut pos = 0;
        loop {
            let (result, nin, _, _) = core.read_record(&input[pos..], out, ends);
            pos += nin;
            match result {
                // The terminating `\n` has been consumed.
                ReadRecordResult::Record => {
                    return Some(span(buf, start, start + pos - 1, start + pos));
                }
                ReadRecordResult::OutputFull | ReadRecordResult::OutputEndsFull => continue,
                // No end within the limit: the quote did not close.
                ReadRecordResult::InputEmpty | ReadRecordResult::End
                    if input.len() >= MAX_RECORD_BYTES =>
                {
                    return Scanner::unclosed_quote(buf, start, input);
                }
                ReadRecordResult::InputEmpty | ReadRecordResult::End if !at_eof => return None,
                // The input ends inside the record. Past a line terminator csv-core did
                // not end on, the quote is open; otherwise the last line simply has no
                // terminator.
                ReadRecordResult::InputEmpty | ReadRecordResult::End => {
                    return match input.last() {
                        Some(b'\n') => Scanner::unclosed_quote(buf, start, input),
                        _ => Some(span(buf, start, buf.len(), buf.len())),
                    };
                }
            }
        }
    }

    /// Splits one record's text (as found by [`Scanner::next_record`]) into its fields,
    /// undoing CSV double quoting. Fields of a record without double quotes borrow from
    /// it.
    pub fn split_fields<'a>(&mut self, record: &'a [u8], out: &mut Vec<Cow<'a, [u8]>>) {
        out.clear();
        if memchr::memchr(b'"', record).is_none() {
            let mut start = 0;
            for comma in memchr::memchr_iter(b',', record) {
                out.push(Cow::Borrowed(&record[start..comma]));
                start = comma + 1;
            }
            out.push(Cow::Borrowed(&record[start..]));
            return;
        }
        // Unquoting never lengthens a field, and there are at most commas + 1 fields, so
        // one call with buffers this size reads the whole record.
        if self.out.len() < record.len() {
            self.out.resize(record.len(), 0);
        }
        let fields = memchr::memchr_iter(b',', record).count() + 1;
        if self.ends.len() < fields {
            self.ends.resize(fields, 0);
        }
        self.core();
        let (mut nin, mut nout, mut nend, mut base) = (0, 0, 0, 0);
        loop {
            let input = &record[nin..];
            let Scanner { core, out, ends } = self;
            let Some(core) = core.as_mut() else { return };
            let (result, i, o, e) = core.read_record(input, &mut out[nout..], &mut ends[nend..]);
            // csv-core counts end positions from the start of the record's output.
            for end in &mut self.ends[nend..nend + e] {
                *end += base;
            }
            nin += i;
            nout += o;
            nend += e;
            match result {
                // All input taken: an empty input ends the record (the text has no
                // terminator).
                ReadRecordResult::InputEmpty => {}
                ReadRecordResult::End => break,
                ReadRecordResult::Record if input.is_empty() => break,
                // Only for text that is not one record (an unquoted `\n` inside): the
                // next line's fields follow.
                ReadRecordResult::Record => base = nout,
                // Cannot happen with the sizes above; growing keeps it correct anyway.
                ReadRecordResult::OutputFull => {
                    let len = self.out.len().max(64) * 2;
                    self.out.resize(len, 0);
                }
                ReadRecordResult::OutputEndsFull => {
                    let len = self.ends.len().max(8) * 2;
                    self.ends.resize(len, 0);
                }
            }
        }
        let mut start = 0;
        for &end in &self.ends[..nend] {
            out.push(Cow::Owned(self.out[start..end].to_vec()));
            start = end;
        }
    }
}

/// The data rows of a whole file or chunk (header first), split into fields: the row
/// parser's loop, shared by both input files. A line without a double quote is found
/// and split in one `memchr3` pass over `,` `\n` `"`; a line with one goes to csv-core
/// through the [`Scanner`]. Blank lines are skipped.
pub struct RowReader<'a> {
    buf: &'a [u8],
    pos: usize,
    scanner: Scanner,
    header: Option<&'a [u8]>,
    /// The fields of the row [`RowReader::next_row`] returned last (undone quoting).
    pub fields: Vec<Cow<'a, [u8]>>,
    /// Set when that row was bounded ([`RecordFault`]): it is rejected for it.
    pub fault: Option<RecordFault>,
}

impl<'a> RowReader<'a> {
    /// Skips a BOM and blank lines and takes the first record as the header.
    pub fn new(buf: &'a [u8]) -> Self {
        let buf = strip_bom(buf);
        let mut scanner = Scanner::new();
        let mut pos = 0;
        let mut header = None;
        while let Some(span) = scanner.next_record(buf, pos, true) {
            pos = span.next;
            if !span.is_blank() {
                header = Some(&buf[span.start..span.end]);
                break;
            }
        }
        RowReader {
            buf,
            pos,
            scanner,
            header,
            fields: Vec::new(),
            fault: None,
        }
    }

    /// Rows with no header: `buf` starts at a record boundary.
    pub fn body(buf: &'a [u8]) -> Self {
        RowReader {
            buf,
            pos: 0,
            scanner: Scanner::new(),
            header: None,
            fields: Vec::new(),
            fault: None,
        }
    }

    /// The header record, if there is one.
    pub fn header(&self) -> Option<&'a [u8]> {
        self.header
    }

    /// The bytes not read yet (after [`RowReader::new`]: the data rows).
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos.min(self.buf.len())..]
    }

    /// The next row's text (line terminator excluded), its fields in
    /// [`RowReader::fields`]; `None` at the end.
    pub fn next_row(&mut self) -> Option<&'a [u8]> {
        let buf: &'a [u8] = self.buf;
        loop {
            if self.pos >= buf.len() {
                return None;
            }
            let rest = &buf[self.pos..];
            self.fields.clear();
            self.fault = None;
            let window = &rest[..rest.len().min(MAX_RECORD_BYTES)];
            let mut field_start = 0;
            let mut line_end = rest.len();
            // A line with no terminator within the limit is the scanner's to cut.
            let mut quoted = window.len() == MAX_RECORD_BYTES;
            for i in memchr::memchr3_iter(b',', b'\n', b'"', window) {
                match rest[i] {
                    b',' => {
                        self.fields.push(Cow::Borrowed(&rest[field_start..i]));
                        field_start = i + 1;
                    }
                    b'\n' => {
                        line_end = i;
                        quoted = false;
                        break;
                    }
                    _ => {
                        quoted = true;
                        break;
                    }
                }
            }
            if quoted {
                let span = self.scanner.next_record(buf, self.pos, true)?;
                self.pos = span.next;
                if span.is_blank() {
                    continue;
                }
                let raw = &buf[span.start..span.end];
                self.scanner.split_fields(raw, &mut self.fields);
                self.fault = span.fault;
                return Some(raw);
            }
            self.pos += (line_end + 1).min(rest.len());
            let text_end = if line_end > 0 && rest[line_end - 1] == b'\r' {
                line_end - 1
            } else {
                line_end
            };
            if text_end == 0 {
                continue; // a blank line is not a row
            }
            self.fields
                .push(Cow::Borrowed(&rest[field_start.min(text_end)..text_end]));
            return Some(&rest[..text_end]);
        }
    }
}

/// Builds a span, dropping a `\r` that precedes the `\n`.
fn span(buf: &[u8], start: usize, mut end: usize, next: usize) -> RecordSpan {
    if end > start && buf[end - 1] == b'\r' {
        end -= 1;
    }
    RecordSpan {
        start,
        end,
        next,
        fault: None,
    }
}

/// The first [`MAX_RECORD_BYTES`] of a line with no terminator within them.
fn too_long(start: usize) -> RecordSpan {
    let end = start + MAX_RECORD_BYTES;
    RecordSpan {
        start,
        end,
        next: end,
        fault: Some(RecordFault::TooLong),
    }
}

/// Removes one pair of surrounding single quotes, BankSim style (`'C123'` means `C123`).
pub fn strip_single_quotes(field: &[u8]) -> &[u8] {
    match field {
        [b'\'', inner @ .., b'\''] => inner,
        other => other,
    }
}

/// Removes a UTF-8 byte order mark from the start of a file.
pub fn strip_bom(buf: &[u8]) -> &[u8] {
    buf.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn records(buf: &[u8]) -> Vec<&[u8]> {
        let mut scanner = Scanner::new();
        let mut out = Vec::new();
        let mut pos = 0;
        while let Some(span) = scanner.next_record(buf, pos, true) {
            out.push(&buf[span.start..span.end]);
            pos = span.next;
        }
        out
    }

    type Found = Vec<(Vec<u8>, Option<RecordFault>, usize)>;

    /// Records (text, fault, next) of a whole buffer.
    fn spans(buf: &[u8]) -> Found {
        let mut scanner = Scanner::new();
        let (mut out, mut pos) = (Vec::new(), 0);
        while let Some(s) = scanner.next_record(buf, pos, true) {
            out.push((buf[s.start..s.end].to_vec(), s.fault, s.next));
            pos = s.next;
        }
        out
    }

    /// The same, found as the chunk cutter finds them: from a window that grows by
    /// `step` bytes whenever the record is not complete in it.
    fn spans_windowed(buf: &[u8], step: usize) -> Found {
        let mut scanner = Scanner::new();
        let (mut out, mut pos, mut have) = (Vec::new(), 0, step.min(buf.len()));
        loop {
            let at_eof = have == buf.len();
            match scanner.next_record(&buf[..have], pos, at_eof) {
                Some(s) => {
                    out.push((buf[s.start..s.end].to_vec(), s.fault, s.next));
                    pos = s.next;
                }
                None if at_eof => return out,
                None => have = (have + step).min(buf.len()),
            }
        }
    }

    /// Every way of reading `buf` finds the same records: whole, in windows, and as
    /// chunks (a prefix ending at a record boundary, read on its own).
    fn assert_same_everywhere(buf: &[u8]) -> Found {
        let whole = spans(buf);
        for step in [1000, 4096, 70_000] {
            assert_eq!(spans_windowed(buf, step), whole, "windows of {step}");
        }
        for (i, (_, _, next)) in whole.iter().enumerate().step_by(97) {
            assert_eq!(
                spans(&buf[..*next]),
                whole[..=i],
                "a chunk ending at {next}"
            );
        }
        whole
    }

    #[test]
    fn a_stray_quote_is_data_when_it_does_not_close_within_the_limit() {
        let mut buf = b"a,\"b,c\n".to_vec();
        for i in 0..2000 {
            buf.extend(format!("row{i:05},x,y,zzzzzzzzzzzzzzzzzzzzzzzzzzzzz\n").as_bytes());
        }
        assert!(buf.len() > MAX_RECORD_BYTES);
        let found = assert_same_everywhere(&buf);
        assert_eq!(found.len(), 2001);
        assert_eq!(
            (&found[0].0[..], found[0].1),
            (&b"a,\"b,c"[..], Some(RecordFault::UnclosedQuote))
        );
        assert!(found[1..].iter().all(|(_, f, _)| f.is_none()));
        // A quote that closes within the limit still spans lines.
        assert_eq!(
            records(b"a,\"b\nc\",d\ne\n"),
            vec![&b"a,\"b\nc\",d"[..], b"e"]
        );
    }

    #[test]
    fn a_quote_open_at_the_end_of_the_input_is_data() {
        let found = assert_same_everywhere(b"a,\"b\nc,d\n");
        let texts: Vec<_> = found.iter().map(|(t, f, _)| (&t[..], *f)).collect();
        assert_eq!(
            texts,
            [
                (&b"a,\"b"[..], Some(RecordFault::UnclosedQuote)),
                (b"c,d", None)
            ]
        );
        // Without a final terminator the last line runs to the end, as any last line.
        assert_eq!(records(b"a,\"b\nc"), vec![&b"a,\"b\nc"[..]]);
    }

    #[test]
    fn a_line_past_the_limit_is_cut_into_records_of_the_limit() {
        let mut buf = vec![b'x'; 2 * MAX_RECORD_BYTES + 100];
        buf.extend(b"\na,b\n");
        let found = assert_same_everywhere(&buf);
        let shape: Vec<_> = found.iter().map(|(t, f, _)| (t.len(), *f)).collect();
        assert_eq!(
            shape,
            [
                (MAX_RECORD_BYTES, Some(RecordFault::TooLong)),
                (MAX_RECORD_BYTES, Some(RecordFault::TooLong)),
                (100, None),
                (3, None)
            ]
        );
        // A quoted line past the limit too, and the row reader says which rows were cut.
        let mut quoted = b"\"".to_vec();
        quoted.extend(vec![b'y'; MAX_RECORD_BYTES + 10]);
        quoted.extend(b"\nok,1\n");
        let mut rows = RowReader::body(&quoted);
        let mut seen = Vec::new();
        while let Some(raw) = rows.next_row() {
            seen.push((raw.len(), rows.fault));
        }
        assert_eq!(
            seen,
            [
                (MAX_RECORD_BYTES, Some(RecordFault::TooLong)),
                (11, None),
                (4, None)
            ]
        );
    }

    fn fields(record: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        Scanner::new().split_fields(record, &mut out);
        out.into_iter().map(|f| f.into_owned()).collect()
    }

    #[test]
    fn lf_and_crlf_lines() {
        assert_eq!(
            records(b"a,b\nc,d\r\ne,f"),
            vec![&b"a,b"[..], b"c,d", b"e,f"]
        );
        assert_eq!(records(b"a\r\n"), vec![&b"a"[..]]);
        assert_eq!(records(b"\"a\"\r\nb"), vec![&b"\"a\""[..], b"b"]);
    }

    #[test]
    fn lone_cr_is_data() {
        assert_eq!(
            records(b"a\rb\n\"c\"\rd\n"),
            vec![&b"a\rb"[..], b"\"c\"\rd"]
        );
        assert_eq!(fields(b"\"c\"\rd"), vec![b"c\rd".to_vec()]);
    }

    #[test]
    fn incomplete_record_waits_for_more_bytes() {
        let mut s = Scanner::new();
        assert_eq!(s.next_record(b"a,b", 0, false), None);
        assert_eq!(s.next_record(b"a,\"b\nc", 0, false), None);
        assert_eq!(s.next_record(b"a,\"b\"\r", 0, false), None);
        assert_eq!(s.next_record(b"", 0, true), None);
    }

    #[test]
    fn blank_lines_are_blank_records() {
        let mut s = Scanner::new();
        let buf = b"\n\r\n\"x\"\n";
        let a = s.next_record(buf, 0, true).unwrap();
        let b = s.next_record(buf, a.next, true).unwrap();
        let c = s.next_record(buf, b.next, true).unwrap();
        assert!(a.is_blank() && b.is_blank() && !c.is_blank());
        assert_eq!(&buf[c.start..c.end], b"\"x\"");
    }

    #[test]
    fn quoted_newline_and_comma_stay_in_field() {
        let buf = b"1,\"x,\ny\",2\n3,4\n";
        assert_eq!(records(buf), vec![&b"1,\"x,\ny\",2"[..], b"3,4"]);
        assert_eq!(
            fields(b"1,\"x,\ny\",2"),
            vec![b"1".to_vec(), b"x,\ny".to_vec(), b"2".to_vec()]
        );
    }

    #[test]
    fn doubled_quotes_unescape() {
        assert_eq!(
            fields(b"\"a\"\"b\",c"),
            vec![b"a\"b".to_vec(), b"c".to_vec()]
        );
        assert_eq!(fields(b"a,\"\""), vec![b"a".to_vec(), b"".to_vec()]);
    }

    #[test]
    fn trailing_comma_gives_empty_field() {
        assert_eq!(fields(b"a,"), vec![b"a".to_vec(), b"".to_vec()]);
        assert_eq!(fields(b"\"a\","), vec![b"a".to_vec(), b"".to_vec()]);
        assert_eq!(fields(b""), vec![b"".to_vec()]);
    }

    #[test]
    fn long_quoted_records_and_many_fields() {
        let long = format!("\"{}\"", "x,".repeat(5000));
        assert_eq!(
            fields(long.as_bytes()),
            vec!["x,".repeat(5000).into_bytes()]
        );
        let many = vec!["\"a\""; 300].join(",");
        assert_eq!(fields(many.as_bytes()).len(), 300);
        let buf = format!("{long}\nz\n");
        assert_eq!(records(buf.as_bytes()).len(), 2);
    }

    #[test]
    fn single_quotes_strip_once() {
        assert_eq!(strip_single_quotes(b"'C1'"), b"C1");
        assert_eq!(strip_single_quotes(b"''C1''"), b"'C1'");
        assert_eq!(strip_single_quotes(b"'"), b"'");
        assert_eq!(strip_single_quotes(b"C1"), b"C1");
    }

    #[test]
    fn bom_is_dropped() {
        assert_eq!(strip_bom(b"\xEF\xBB\xBFstep"), b"step");
        assert_eq!(strip_bom(b"step"), b"step");
    }

    /// RFC 4180 written out by hand (the scanner this module used before csv-core), as
    /// an independent reference: `Some((text_end, next))` for the record at `start`.
    fn reference_record(buf: &[u8], start: usize, at_eof: bool) -> Option<(usize, usize)> {
        #[derive(Clone, Copy)]
        enum St {
            FieldStart,
            Unquoted,
            Quoted,
            QuoteInQuoted,
        }
        if start >= buf.len() {
            return None;
        }
        let cut = |end: usize| {
            if end > start && buf[end - 1] == b'\r' {
                end - 1
            } else {
                end
            }
        };
        let mut st = St::FieldStart;
        for (i, &b) in buf[start..].iter().enumerate() {
            let pos = start + i;
            st = match (st, b) {
                (St::Quoted, b'"') => St::QuoteInQuoted,
                (St::Quoted, _) => St::Quoted,
                (_, b'\n') => return Some((cut(pos), pos + 1)),
                (St::FieldStart, b'"') => St::Quoted,
                (St::QuoteInQuoted, b'"') => St::Quoted,
                (_, b',') => St::FieldStart,
                _ => St::Unquoted,
            };
        }
        // The input ends inside quotes that a line terminator did not end: the quote
        // is data and the record is its first line.
        if at_eof && buf.last() == Some(&b'\n') {
            let line = start + buf[start..].iter().position(|&b| b == b'\n')?;
            return Some((cut(line), line + 1));
        }
        at_eof.then(|| (cut(buf.len()), buf.len()))
    }

    fn reference_fields(record: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut i = 0;
        loop {
            let mut value = Vec::new();
            if record.get(i) == Some(&b'"') {
                i += 1;
                while i < record.len() {
                    if record[i] == b'"' {
                        if record.get(i + 1) == Some(&b'"') {
                            value.push(b'"');
                            i += 2;
                            continue;
                        }
                        i += 1;
                        break;
                    }
                    value.push(record[i]);
                    i += 1;
                }
            }
            // Anything up to the comma is kept verbatim (quotes there are data).
            while i < record.len() && record[i] != b',' {
                value.push(record[i]);
                i += 1;
            }
            out.push(value);
            if i >= record.len() {
                return out;
            }
            i += 1;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
        #[test]
        fn scanner_matches_the_hand_written_reference(
            bytes in proptest::collection::vec(
                prop_oneof![Just(b'a'), Just(b','), Just(b'"'), Just(b'\r'), Just(b'\n')], 0..40),
            cut in 0usize..41,
        ) {
            let mut s = Scanner::new();
            // Whole buffer at end of input, and a prefix that may end anywhere.
            for (buf, at_eof) in [(&bytes[..], true), (&bytes[..cut.min(bytes.len())], false)] {
                let mut pos = 0;
                loop {
                    let got = s.next_record(buf, pos, at_eof);
                    let want = reference_record(buf, pos, at_eof);
                    prop_assert_eq!(got.map(|r| (r.end, r.next)), want);
                    let Some(span) = got else { break };
                    let text = &buf[span.start..span.end];
                    if !span.is_blank() {
                        let mut f = Vec::new();
                        s.split_fields(text, &mut f);
                        let f: Vec<Vec<u8>> = f.into_iter().map(|x| x.into_owned()).collect();
                        prop_assert_eq!(f, reference_fields(text));
                    }
                    pos = span.next;
                }
            }
        }
    }
}
