//! Compact binary forms of the engine state: one chunk's [`ChunkDelta`] here, snapshots
//! in `snapshot.rs`. LEB128 varints, LZ4-compressed, with a magic tag and version so a
//! reader never misreads another format. Decoding never panics and never allocates
//! from a stored length without first checking it against the bytes that remain.

use crate::parse::Gender;

const DELTA_MAGIC: &[u8; 4] = b"TXD1";

/// LZ4 expands at most 255 times (one byte of a run per 255 bytes of output), so a
/// stored size above this cannot be genuine: refused before allocating it.
const LZ4_MAX_RATIO: usize = 255;

/// Stored state could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// Not this format, or a version this build cannot read.
    #[error("not a txpipe {what} (bad magic or version)")]
    BadMagic {
        /// Delta or snapshot.
        what: &'static str,
    },
    /// The bytes end early or hold an impossible value.
    #[error("corrupt txpipe {what}: {why}")]
    Corrupt {
        /// Delta or snapshot.
        what: &'static str,
        /// What was wrong.
        why: String,
    },
}

/// The change one chunk made to the running stats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkDelta {
    /// The chunk.
    pub chunk: u64,
    /// Valid rows in the chunk.
    pub rows: u64,
    /// Rejected rows in the chunk.
    pub rejected: u64,
    /// Merchants known before the chunk (new ones get the next indices).
    pub merchants_before: u32,
    /// Customers known before the chunk.
    pub customers_before: u32,
    /// Merchant ids first seen in the chunk, in index order.
    pub new_merchants: Vec<String>,
    /// Customer ids first seen in the chunk, in index order.
    pub new_customers: Vec<String>,
    /// Per-pair increments.
    pub pairs: Vec<PairDelta>,
    /// Detections emitted by the chunk: (pattern number, merchant index, customer index
    /// or `u32::MAX` for merchant-only patterns).
    pub detections: Vec<(u8, u32, u32)>,
}

/// One pair's increments in one chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairDelta {
    /// Merchant index.
    pub merchant: u32,
    /// Customer index.
    pub customer: u32,
    /// Added transactions.
    pub txns: u64,
    /// Added cents.
    pub cents: u128,
    /// Gender at the merchant (used when the pair is new).
    pub gender: Gender,
}

/// Varint writer for the codecs.
#[derive(Default)]
pub(super) struct Writer(pub(super) Vec<u8>);

impl Writer {
    pub(super) fn uint(&mut self, mut v: u128) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(byte);
                return;
            }
            self.0.push(byte | 0x80);
        }
    }
    #[inline]
    pub(super) fn u64(&mut self, v: u64) {
        crate::varint::put(&mut self.0, v);
    }
    pub(super) fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }
    pub(super) fn finish(self, magic: &[u8; 4]) -> Vec<u8> {
        let mut out = magic.to_vec();
        out.extend_from_slice(&lz4_flex::compress_prepend_size(&self.0));
        out
    }
}

/// Varint reader for the codecs.
pub(super) struct Reader<'a> {
    pub(super) buf: &'a [u8],
    pub(super) pos: usize,
    pub(super) what: &'static str,
}

impl<'a> Reader<'a> {
    /// Checks the magic and decompresses the body.
    pub(super) fn open(
        bytes: &[u8],
        magic: &[u8; 4],
        what: &'static str,
    ) -> Result<Vec<u8>, CodecError> {
        let body = bytes
            .strip_prefix(magic.as_slice())
            .ok_or(CodecError::BadMagic { what })?;
        Self::open_body(body, what)
    }

    /// Decompresses an LZ4 body (size-prepended), refusing a size it cannot hold.
    pub(super) fn open_body(body: &[u8], what: &'static str) -> Result<Vec<u8>, CodecError> {
        let corrupt = |why: String| CodecError::Corrupt { what, why };
        let size = body
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| corrupt("no size".into()))?;
        if size > body.len().saturating_mul(LZ4_MAX_RATIO).saturating_add(64) {
            return Err(corrupt(format!(
                "claims {size} bytes from {} compressed",
                body.len()
            )));
        }
        lz4_flex::decompress_size_prepended(body).map_err(|e| corrupt(e.to_string()))
    }
    pub(super) fn corrupt(&self, why: &str) -> CodecError {
        CodecError::Corrupt {
            what: self.what,
            why: format!("{why} at byte {}", self.pos),
        }
    }
    pub(super) fn uint(&mut self) -> Result<u128, CodecError> {
        let mut v: u128 = 0;
        for shift in (0..128).step_by(7) {
            let byte = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| self.corrupt("unexpected end"))?;
            self.pos += 1;
            v |= u128::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.corrupt("varint too long"))
    }
    pub(super) fn u64(&mut self) -> Result<u64, CodecError> {
        u64::try_from(self.uint()?).map_err(|_| self.corrupt("value too large"))
    }
    pub(super) fn u32(&mut self) -> Result<u32, CodecError> {
        u32::try_from(self.uint()?).map_err(|_| self.corrupt("value too large"))
    }
    pub(super) fn len(&mut self) -> Result<usize, CodecError> {
        let n = self.u64()? as usize;
        // A length can never exceed the remaining bytes: guards against huge allocations.
        if n > self.buf.len() - self.pos.min(self.buf.len()) {
            return Err(self.corrupt("length past the end"));
        }
        Ok(n)
    }
    pub(super) fn str(&mut self) -> Result<String, CodecError> {
        let n = self.len()?;
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.corrupt("name is not UTF-8"))
    }
    /// A pattern number, stored as number - 1 (PatId1 is 0).
    pub(super) fn pattern(&mut self) -> Result<u8, CodecError> {
        let stored = self.u64()?;
        stored
            .checked_add(1)
            .and_then(|n| u8::try_from(n).ok())
            .ok_or_else(|| self.corrupt("pattern number out of range"))
    }
    pub(super) fn done(&self) -> Result<(), CodecError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(self.corrupt("trailing bytes"))
        }
    }
}

impl ChunkDelta {
    /// Encodes the delta.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        for v in [
            self.chunk,
            self.rows,
            self.rejected,
            u64::from(self.merchants_before),
            u64::from(self.customers_before),
        ] {
            w.u64(v);
        }
        for names in [&self.new_merchants, &self.new_customers] {
            w.u64(names.len() as u64);
            names.iter().for_each(|n| w.str(n));
        }
        w.u64(self.pairs.len() as u64);
        for p in &self.pairs {
            w.u64(u64::from(p.merchant));
            w.u64(u64::from(p.customer));
            w.u64(p.txns);
            w.uint(p.cents);
            w.u64(u64::from(p.gender.code()));
        }
        w.u64(self.detections.len() as u64);
        for &(pattern, m, c) in &self.detections {
            w.u64(u64::from(pattern) - 1);
            w.u64(u64::from(m));
            w.u64(u64::from(c));
        }
        w.finish(DELTA_MAGIC)
    }

    /// Decodes a delta written by [`ChunkDelta::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let buf = Reader::open(bytes, DELTA_MAGIC, "delta")?;
        let mut r = Reader {
            buf: &buf,
            pos: 0,
            what: "delta",
        };
        let (chunk, rows, rejected) = (r.u64()?, r.u64()?, r.u64()?);
        let (merchants_before, customers_before) = (r.u32()?, r.u32()?);
        let mut names = || -> Result<Vec<String>, CodecError> {
            let n = r.len()?;
            (0..n).map(|_| r.str()).collect()
        };
        let new_merchants = names()?;
        let new_customers = names()?;
        let n = r.len()?;
        let mut pairs = Vec::with_capacity(n);
        for _ in 0..n {
            pairs.push(PairDelta {
                merchant: r.u32()?,
                customer: r.u32()?,
                txns: r.u64()?,
                cents: r.uint()?,
                gender: Gender::from_code(r.u64()? as u8),
            });
        }
        let n = r.len()?;
        let mut detections = Vec::with_capacity(n);
        for _ in 0..n {
            detections.push((r.pattern()?, r.u32()?, r.u32()?));
        }
        r.done()?;
        Ok(ChunkDelta {
            chunk,
            rows,
            rejected,
            merchants_before,
            customers_before,
            new_merchants,
            new_customers,
            pairs,
            detections,
        })
    }
}
