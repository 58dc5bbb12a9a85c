//! Finding CSV records and fields in a byte buffer.
//!
//! Both the chunker (which must cut exactly R rows out of ranged reads) and the row parser
//! need the same notion of where a record ends, so it lives here once. The common case —
//! a line with no double quote — is found with `memchr` and split on commas; a record with
//! double quotes goes through a small RFC 4180 state machine (a quoted field may contain
//! commas, `""` escapes and line breaks).

use std::borrow::Cow;

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
}

impl RecordSpan {
    /// Whether the record is a blank line (no text at all).
    pub fn is_blank(&self) -> bool {
        self.start == self.end
    }
}

/// Finds the record that starts at `start`.
///
/// Returns `None` when `buf[start..]` holds no complete record: either it is empty, or the
/// record has no line terminator yet and `at_eof` is false (more bytes may follow). At end
/// of input a record without a terminator runs to the end of the buffer.
pub fn next_record(buf: &[u8], start: usize, at_eof: bool) -> Option<RecordSpan> {
    if start >= buf.len() {
        return None;
    }
    let rest = &buf[start..];
    let line_len = memchr::memchr(b'\n', rest);
    let candidate = &rest[..line_len.unwrap_or(rest.len())];
    if memchr::memchr(b'"', candidate).is_none() {
        return match line_len {
            Some(len) => Some(span(buf, start, start + len, start + len + 1)),
            None if at_eof => Some(span(buf, start, buf.len(), buf.len())),
            None => None,
        };
    }
    quoted_record(buf, start, at_eof)
}

/// Builds a span, dropping a `\r` that precedes the `\n`.
fn span(buf: &[u8], start: usize, mut end: usize, next: usize) -> RecordSpan {
    if end > start && buf[end - 1] == b'\r' {
        end -= 1;
    }
    RecordSpan { start, end, next }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    FieldStart,
    Unquoted,
    Quoted,
    QuoteInQuoted,
}

fn quoted_record(buf: &[u8], start: usize, at_eof: bool) -> Option<RecordSpan> {
    let mut state = State::FieldStart;
    for (i, &b) in buf[start..].iter().enumerate() {
        let pos = start + i;
        state = match (state, b) {
            (State::Quoted, b'"') => State::QuoteInQuoted,
            (State::Quoted, _) => State::Quoted,
            (_, b'\n') => return Some(span(buf, start, pos, pos + 1)),
            (State::FieldStart, b'"') => State::Quoted,
            (State::QuoteInQuoted, b'"') => State::Quoted,
            (_, b',') => State::FieldStart,
            _ => State::Unquoted,
        };
    }
    at_eof.then(|| span(buf, start, buf.len(), buf.len()))
}

/// Splits one record's text (as found by [`next_record`]) into its fields, undoing CSV
/// double quoting. Fields without quotes borrow from the record.
pub fn split_fields<'a>(record: &'a [u8], out: &mut Vec<Cow<'a, [u8]>>) {
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
    let mut i = 0;
    loop {
        if record.get(i) == Some(&b'"') {
            // Quoted field: runs to the closing quote; `""` is one quote. Anything after
            // the closing quote up to the comma is kept verbatim, as the csv crate does.
            let mut value = Vec::new();
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
            let tail_end = memchr::memchr(b',', &record[i..]).map_or(record.len(), |p| i + p);
            value.extend_from_slice(&record[i..tail_end]);
            out.push(Cow::Owned(value));
            i = tail_end;
        } else {
            let end = memchr::memchr(b',', &record[i..]).map_or(record.len(), |p| i + p);
            out.push(Cow::Borrowed(&record[i..end]));
            i = end;
        }
        if i >= record.len() {
            return;
        }
        i += 1; // the comma
        if i == record.len() {
            out.push(Cow::Borrowed(&record[i..]));
            return;
        }
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

    fn records(buf: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut pos = 0;
        while let Some(span) = next_record(buf, pos, true) {
            out.push(&buf[span.start..span.end]);
            pos = span.next;
        }
        out
    }

    fn fields(record: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        split_fields(record, &mut out);
        out.into_iter().map(|f| f.into_owned()).collect()
    }

    #[test]
    fn lf_and_crlf_lines() {
        assert_eq!(
            records(b"a,b\nc,d\r\ne,f"),
            vec![&b"a,b"[..], b"c,d", b"e,f"]
        );
        assert_eq!(records(b"a\r\n"), vec![&b"a"[..]]);
    }

    #[test]
    fn incomplete_record_waits_for_more_bytes() {
        assert_eq!(next_record(b"a,b", 0, false), None);
        assert_eq!(next_record(b"a,\"b\nc", 0, false), None);
        assert_eq!(next_record(b"", 0, true), None);
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
}
