//! Where things are stored: the key of every object and the name of every stream, in
//! one place. Every key is a function of the stream and a number only, never of the
//! clock, so writing something twice writes the same object.
//!
//! ```text
//! chunks/<stream>/<k:08>.csv           chunk k: the header, then R source rows
//! detections/<stream>/<b:08>.jsonl     detection file b
//! evidence/<stream>/<b:08>.jsonl       why each detection of file b fired, line by line
//! state/<stream>/…                     the detector's snapshots and deltas
//! ```

use std::fmt;

/// Prefix of every chunk object.
pub const CHUNKS_PREFIX: &str = "chunks/";
/// Prefix of every detection file.
pub const DETECTIONS_PREFIX: &str = "detections/";
/// Prefix of every evidence file.
pub const EVIDENCE_PREFIX: &str = "evidence/";
/// Prefix of the detector's stored state.
pub const STATE_PREFIX: &str = "state/";

// The chunker writes these with every chunk object and the detector checks them
// before it applies one (docs/behaviour.md#chunk-keys).
/// Object metadata on every chunk: 1-based source row number of its first data row.
pub const META_FIRST_ROW: &str = "txpipe-first-row";
/// Object metadata: data rows in the chunk.
pub const META_ROWS: &str = "txpipe-rows";
/// Object metadata: `true` on the end-of-stream chunk.
pub const META_LAST: &str = "txpipe-last";
/// Object metadata: R, the stream's rows per chunk.
pub const META_ROWS_PER_CHUNK: &str = "txpipe-rows-per-chunk";
/// Object metadata: the chunker's cursor the chunk came from (`s3://bucket/key`).
pub const META_SOURCE: &str = "txpipe-source";
/// Object metadata: the ETag of the source version the chunk was cut from (of the
/// file its first row is in).
pub const META_SOURCE_ETAG: &str = "txpipe-source-etag";
/// Object metadata on a chunk that spans files: the byte offsets (comma-separated) in
/// the chunk where each later file's header line starts.
pub const META_HEADERS: &str = "txpipe-headers";
/// Object metadata: FNV-1a (64 bits, hex) of the chunk's bytes as cut, so a chunk
/// changed after it was written (truncated, overwritten) is never applied.
pub const META_CONTENT_HASH: &str = "txpipe-content-hash";

/// The name of one stream: the chunks of one version of one source file and
/// everything derived from them. It is one path segment (letters, digits, `-`, `_`,
/// `.`), so it can name a folder under each prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamName(String);

impl StreamName {
    /// A stream name from any text: characters outside `[A-Za-z0-9._-]` become `-`.
    pub fn sanitized(text: &str) -> Self {
        let name: String = text
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        StreamName(name)
    }

    /// Reads a stream name that must already be one valid path segment.
    pub fn parse(text: &str) -> Option<Self> {
        let valid = !text.is_empty()
            && text != "."
            && text != ".."
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        valid.then(|| StreamName(text.to_string()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `chunks/<stream>/`: where the stream's chunks are.
    pub fn chunks_prefix(&self) -> String {
        format!("{CHUNKS_PREFIX}{self}/")
    }

    /// The key of chunk `k`: `chunks/<stream>/<k:08>.csv`.
    pub fn chunk_key(&self, k: u64) -> String {
        format!("{CHUNKS_PREFIX}{self}/{k:08}.csv")
    }

    /// `detections/<stream>/`: where the stream's detection files are.
    pub fn detections_prefix(&self) -> String {
        format!("{DETECTIONS_PREFIX}{self}/")
    }

    /// The key of detection file `b`: `detections/<stream>/<b:08>.jsonl`.
    pub fn detections_key(&self, b: u64) -> String {
        format!("{DETECTIONS_PREFIX}{self}/{b:08}.jsonl")
    }

    /// The key of evidence file `b`, beside detection file `b`:
    /// `evidence/<stream>/<b:08>.jsonl`.
    pub fn evidence_key(&self, b: u64) -> String {
        format!("{EVIDENCE_PREFIX}{self}/{b:08}.jsonl")
    }

    /// `evidence/<stream>/`: where the stream's evidence files are.
    pub fn evidence_prefix(&self) -> String {
        format!("{EVIDENCE_PREFIX}{self}/")
    }

    /// `state/<stream>/`: where the detector keeps the stream's state.
    pub fn state_prefix(&self) -> String {
        format!("{STATE_PREFIX}{self}/")
    }

    /// Part `i` of the snapshot covering chunks `0..next`:
    /// `state/<stream>/snapshot-<next:08>/part-<i:04>.bin`.
    pub fn snapshot_part_key(&self, next: u64, i: u32) -> String {
        format!("{STATE_PREFIX}{self}/snapshot-{next:08}/part-{i:04}.bin")
    }

    /// The state change chunk `k` made: `state/<stream>/delta-<k:08>.bin`.
    pub fn delta_key(&self, k: u64) -> String {
        format!("{STATE_PREFIX}{self}/delta-{k:08}.bin")
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The stream name of a source object: its key without `.csv`, `/` (and anything else
/// outside a path segment) turned into `-` — `input/transactions.csv` is
/// `input-transactions`.
pub fn stream_for_source(source_key: &str) -> StreamName {
    StreamName::sanitized(source_key.strip_suffix(".csv").unwrap_or(source_key))
}

/// The stream name of one version of a source object: the key's stream name, a dot,
/// and 16 hex digits (64 bits: no two versions meet by chance in any real bucket)
/// identifying (bucket, key, ETag) — `input/transactions.csv` at some ETag is
/// `input-transactions.3f9a1c2e5b7d0a41`. A replaced file (new ETag) is a new stream,
/// and two sources whose keys read alike (`a/b.csv`, `a-b.csv`) never share one.
/// Streams named before (8 hex digits) keep their names: a name is fixed in the
/// cursor when its stream starts.
pub fn stream_for_source_version(bucket: &str, key: &str, etag: &str) -> StreamName {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in [bucket, key, etag].join("\0").bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    StreamName(format!("{}.{hash:016x}", stream_for_source(key)))
}

/// Splits a chunk key `chunks/<stream>/<digits>.csv` into its stream and number.
pub fn parse_chunk_key(key: &str) -> Option<(StreamName, u64)> {
    let rest = key.strip_prefix(CHUNKS_PREFIX)?;
    let (stream, file) = rest.split_once('/')?;
    let digits = file.strip_suffix(".csv")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((StreamName::parse(stream)?, digits.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let stream = stream_for_source("input/transactions.csv");
        assert_eq!(stream.as_str(), "input-transactions");
        let key = stream.chunk_key(42);
        assert_eq!(key, "chunks/input-transactions/00000042.csv");
        assert_eq!(parse_chunk_key(&key), Some((stream.clone(), 42)));
        assert_eq!(
            stream.detections_key(3),
            "detections/input-transactions/00000003.jsonl"
        );
        assert_eq!(
            stream.snapshot_part_key(20, 1),
            "state/input-transactions/snapshot-00000020/part-0001.bin"
        );
        assert_eq!(
            stream.delta_key(7),
            "state/input-transactions/delta-00000007.bin"
        );
    }

    #[test]
    fn only_chunk_keys_parse() {
        for key in [
            "chunks/x/abc.csv",
            "nochunk",
            "chunks/00000001.csv",
            "chunks/a/b/00000001.csv",
            "detections/x/00000001.csv",
            "chunks/../00000001.csv",
            "chunks/x/.csv",
        ] {
            assert_eq!(parse_chunk_key(key), None, "{key}");
        }
    }

    #[test]
    fn a_source_version_is_its_own_stream() {
        let a = stream_for_source_version("b", "input/transactions.csv", "\"e1\"");
        assert!(a.as_str().starts_with("input-transactions."), "{a}");
        assert_eq!(a.as_str().len(), "input-transactions.".len() + 16);
        assert_eq!(
            a,
            stream_for_source_version("b", "input/transactions.csv", "\"e1\"")
        );
        assert_ne!(
            a,
            stream_for_source_version("b", "input/transactions.csv", "\"e2\"")
        );
        assert_ne!(
            stream_for_source_version("b", "a/b.csv", "e"),
            stream_for_source_version("b", "a-b.csv", "e")
        );
        assert!(StreamName::parse(a.as_str()).is_some());
    }

    #[test]
    fn stream_names_are_one_path_segment() {
        assert_eq!(StreamName::sanitized("a b/c").as_str(), "a-b-c");
        assert_eq!(StreamName::parse("a/b"), None);
        assert_eq!(StreamName::parse(".."), None);
        assert!(StreamName::parse("input-transactions.3f9a").is_some());
    }
}
