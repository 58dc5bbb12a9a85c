//! `txpipe status`: where a deployment stands, read from DynamoDB, S3 and Postgres.
//! Works against local endpoints (`AWS_ENDPOINT_URL`) or real AWS alike.

use anyhow::{Context, Result};
use std::fmt::Write as _;
use txpipe::aws::AwsClients;
use txpipe::config::Config;
use txpipe::layout::StreamName;
use txpipe::postgres::PgSettings;
use txpipe::setup::Stores;
use txpipe::store::{ChunkCursor, ChunkFailure, SnapshotRef};

/// A deployment's state at one moment.
#[derive(Debug, Default)]
pub struct Status {
    /// Source object.
    pub source: String,
    /// The stream the source's current version feeds, if the chunker has started.
    pub stream: Option<StreamName>,
    /// R of the stream.
    pub rows_per_chunk: u64,
    /// Chunks written by the chunker.
    pub chunks_created: u64,
    /// Source rows cut into chunks.
    pub rows_chunked: u64,
    /// Byte offset / size of the source.
    pub offset: (u64, u64),
    /// The chunker is done.
    pub chunker_finished: bool,
    /// The source file is not uploaded yet.
    pub waiting_for_input: bool,
    /// Backpressure: the chunker cuts nothing while the lag is this or more.
    pub max_lag_chunks: u64,
    /// Chunks applied by the detector.
    pub chunks_applied: u64,
    /// Valid and rejected rows applied.
    pub rows: (u64, u64),
    /// Detections per pattern.
    pub detections: txpipe::PerPattern,
    /// The detector is done (end-of-stream applied).
    pub detector_finished: bool,
    /// The finished stream's final prune has not succeeded yet.
    pub prune_pending: bool,
    /// Head version and snapshot.
    pub head: Option<(u64, Option<SnapshotRef>)>,
    /// The next chunk's failed attempts, parked or not.
    pub failure: Option<ChunkFailure>,
    /// Detection files in S3.
    pub detection_files: usize,
    /// Row counts of the Postgres tables, if reachable.
    pub tables: Vec<(String, i64)>,
    /// A prefix stream's files.
    pub prefix: Option<PrefixView>,
}

impl Status {
    /// Chunks created but not applied.
    pub fn lag(&self) -> u64 {
        self.chunks_created.saturating_sub(self.chunks_applied)
    }

    /// The view, as lines of text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "source            {}", self.source);
        if let Some(p) = &self.prefix {
            p.render(&mut s);
        }
        if self.waiting_for_input {
            let _ = writeln!(
                s,
                "                  waiting for input: the file is not uploaded yet"
            );
        }
        if let Some(stream) = &self.stream {
            let _ = writeln!(
                s,
                "stream            {stream} (R = {} rows per chunk)",
                self.rows_per_chunk
            );
        }
        let pct = if self.offset.1 > 0 {
            self.offset.0 as f64 * 100.0 / self.offset.1 as f64
        } else {
            0.0
        };
        let _ = writeln!(
            s,
            "chunker (X)       {} chunks created, {} rows{}{}",
            self.chunks_created,
            self.rows_chunked,
            match self.prefix {
                Some(_) => String::new(),
                None => format!(", {pct:.1}% of the file"),
            },
            if self.chunker_finished {
                ", finished"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "detector (Y)      {} chunks applied, lag {}, {} rows, {} rejected{}",
            self.chunks_applied,
            self.lag(),
            self.rows.0,
            self.rows.1,
            match (self.detector_finished, self.prune_pending) {
                (true, true) => ", finished (its old state not pruned yet: the chunker's watch wakes the detector to prune it)",
                (true, false) => ", finished",
                _ => "",
            }
        );
        if !self.chunker_finished && self.max_lag_chunks > 0 && self.lag() >= self.max_lag_chunks {
            let _ = writeln!(
                s,
                "backpressure      the chunker waits: the detector is {} chunks behind (at most {} \
                 may wait); it cuts again as the detector catches up",
                self.lag(),
                self.max_lag_chunks
            );
        }
        if let Some((version, snapshot)) = self.head {
            let _ = writeln!(
                s,
                "state             head version {version}, snapshot {}",
                snapshot.map_or("none".into(), |k| format!(
                    "covers chunks 0..{} ({} part{}, {} bytes)",
                    k.next,
                    k.parts,
                    if k.parts == 1 { "" } else { "s" },
                    k.bytes
                ))
            );
        }
        if let Some(f) = &self.failure {
            let when = |ms: i64| {
                chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
                    .map_or(ms.to_string(), |t| t.to_rfc3339())
            };
            let label = if f.parked { "PARKED" } else { "failing" };
            let _ = writeln!(
                s,
                "{label:<18}chunk {} after {} attempt{} (first {}, last {})",
                f.chunk,
                f.attempts,
                if f.attempts == 1 { "" } else { "s" },
                when(f.first_ms),
                when(f.last_ms)
            );
            let _ = writeln!(s, "                  {}", f.reason);
            if f.parked {
                if let Some(stream) = &self.stream {
                    let _ = writeln!(
                        s,
                        "                  fix the cause, then: txpipe resume --stream {stream}"
                    );
                }
            }
        }
        let per_pattern: Vec<String> = self
            .detections
            .iter()
            .map(|(p, n)| format!("{} {} {n}", p.id(), p.action()))
            .collect();
        let _ = writeln!(
            s,
            "detections        {} ({} files in S3)",
            per_pattern.join(", "),
            self.detection_files
        );
        if !self.tables.is_empty() {
            let tables: Vec<String> = self
                .tables
                .iter()
                .map(|(t, n)| format!("{t} {n}"))
                .collect();
            let _ = writeln!(s, "postgres          {}", tables.join(", "));
        }
        s
    }
}

/// Where a prefix stream stands among its files.
#[derive(Debug, Clone, Default)]
pub struct PrefixView {
    /// Files joined.
    pub files: u64,
    /// The greatest key that joined.
    pub newest_key: String,
    /// Files that joined late, and that changed after joining.
    pub late: u64,
    /// Files changed after joining.
    pub changed: u64,
    /// The latest late, changed or skipped files.
    pub flagged: Vec<String>,
    /// The file the cursor is in: (index, key, offset, size).
    pub current: Option<(u64, String, u64, u64)>,
    /// Seconds since a file last joined.
    pub tail_age_secs: i64,
    /// `txpipe close-stream` was run.
    pub closing: bool,
    /// Every row is cut: the stream is closed and its last chunk written.
    pub finished: bool,
    /// The file that stops the stream, with what to do.
    pub blocked: Option<String>,
}

impl PrefixView {
    fn render(&self, s: &mut String) {
        let _ =
            writeln!(
            s,
            "files             {} joined, newest {}, {} late, {} changed; last joined {}s ago{}",
            self.files,
            if self.newest_key.is_empty() { "-" } else { &self.newest_key },
            self.late,
            self.changed,
            self.tail_age_secs,
            match (self.finished, self.closing) {
                (true, _) => "; closed, every row cut",
                (false, true) => "; closing",
                (false, false) => "",
            }
        );
        if let Some((index, key, offset, size)) = &self.current {
            let _ = writeln!(
                s,
                "                  cutting file {index} {key} at byte {offset} of {size}"
            );
        }
        for note in &self.flagged {
            let _ = writeln!(s, "                  {note}");
        }
        if let Some(blocked) = &self.blocked {
            let _ = writeln!(s, "BLOCKED           {blocked}");
        }
    }
}

/// A prefix stream's view, from its cursor.
fn prefix_view(c: &ChunkCursor) -> PrefixView {
    PrefixView {
        files: c.files,
        newest_key: c.newest_key.clone(),
        late: c.late_files,
        changed: c.changed_files,
        flagged: c.flagged.clone(),
        // A finished stream is in no file any more.
        current: (!c.file_key.is_empty() && !c.finished)
            .then(|| (c.file, c.file_key.clone(), c.offset, c.size)),
        tail_age_secs: (chrono::Utc::now().timestamp_millis() - c.tail_ms) / 1000,
        closing: c.closing,
        finished: c.finished,
        blocked: (!c.blocked.is_empty()).then(|| c.blocked.clone()),
    }
}

/// Reads where the source `source_key` stands: its current stream, or `stream` if
/// given.
pub async fn read_status(
    clients: &AwsClients,
    config: &Config,
    source_key: &str,
    stream: Option<StreamName>,
) -> Result<Status> {
    let stores = Stores::aws(clients, config);
    let source = &config.source;
    let mut status = Status {
        source: format!("s3://{}/{}", source.bucket, source_key),
        max_lag_chunks: config.chunker.max_lag_chunks,
        ..Status::default()
    };
    let id = ChunkCursor::source_id(&source.bucket, source_key);
    let cursor = stores
        .cursors
        .load_cursor(&id)
        .await
        .context("reading the cursor")?;
    if let Some(c) = cursor
        .as_ref()
        .filter(|c| stream.is_none() || stream.as_ref() == Some(&c.stream))
    {
        status.chunks_created = c.next_chunk;
        status.rows_chunked = c.rows_emitted;
        status.offset = (c.offset, c.size);
        status.chunker_finished = c.finished;
        status.rows_per_chunk = c.rows_per_chunk;
        if c.is_prefix() {
            status.prefix = Some(prefix_view(c));
        }
    }
    if cursor.is_none() && !source_key.ends_with('/') {
        status.waiting_for_input = stores
            .objects
            .head(&source.bucket, source_key)
            .await
            .context("looking for the source file")?
            .is_none();
    }
    status.stream = stream.or(cursor.map(|c| c.stream));
    let Some(stream) = status.stream.clone() else {
        return Ok(status);
    };
    if let Some(h) = stores
        .state
        .load_head(&stream)
        .await
        .context("reading the detector head")?
    {
        status.chunks_applied = h.next_chunk;
        status.rows = (h.totals.rows, h.totals.rejected);
        status.detections = h.totals.detections;
        status.detector_finished = h.finished;
        status.prune_pending = h.prune_pending;
        status.head = Some((h.version, h.snapshot));
        status.failure = h.failure;
    }
    status.detection_files = stores
        .objects
        .list(&config.bucket, &stream.detections_prefix())
        .await
        .context("listing detection files")?
        .len();
    if let Some(pg) = &config.postgres {
        let secrets = aws_sdk_secretsmanager::Client::new(&clients.config);
        match pg_counts(pg, &secrets, stream.as_str()).await {
            Ok(tables) => status.tables = tables,
            Err(e) => status.tables = vec![(format!("unreachable: {e}"), 0)],
        }
    }
    Ok(status)
}

async fn pg_counts(
    pg: &PgSettings,
    secrets: &aws_sdk_secretsmanager::Client,
    stream: &str,
) -> Result<Vec<(String, i64)>> {
    let config = pg.resolve(secrets).await?;
    let client = pg.connect(&config).await?;
    let mut out = Vec::new();
    for table in ["detections", "chunks", "transactions", "customer_stats"] {
        let n: i64 = client
            .query_one(
                &format!("SELECT count(*) FROM {table} WHERE stream = $1"),
                &[&stream],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(-1);
        out.push((table.to_string(), n));
    }
    let n: i64 = client
        .query_one("SELECT count(*) FROM rejected_rows", &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or(-1);
    out.push(("rejected_rows".into(), n));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A finished prefix stream says so, and names no file it would be cutting.
    #[test]
    fn a_finished_prefix_stream_is_cutting_no_file() {
        let stream = txpipe::layout::StreamName::parse("feed").unwrap();
        let cursor = |finished: bool| ChunkCursor {
            files: 3,
            file: 2,
            file_key: "feed/part-0003.csv".into(),
            closing: true,
            finished,
            ..ChunkCursor::start("b", "feed/", stream.clone(), 10)
        };
        let render = |c: &ChunkCursor| {
            let mut s = String::new();
            prefix_view(c).render(&mut s);
            s
        };
        let done = render(&cursor(true));
        assert!(
            done.contains("; closed, every row cut") && !done.contains("cutting file"),
            "{done}"
        );
        let going = render(&cursor(false));
        assert!(
            going.contains("; closing") && going.contains("cutting file 2 feed/part-0003.csv"),
            "{going}"
        );
    }
}
