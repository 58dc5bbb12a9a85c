//! Operator actions on a running deployment, from the same environment the Lambdas
//! read: resume a parked stream, and start a replaced source file as a new stream.

use anyhow::{bail, Context, Result};
use std::time::{Duration, Instant};
use txpipe::aws::AwsClients;
use txpipe::chunker::{Chunker, ChunkerSettings};
use txpipe::config::Config;
use txpipe::detector::DetectorService;
use txpipe::layout::StreamName;
use txpipe::setup::Stores;
use txpipe::store::{ChunkCursor, Fenced};

/// `txpipe resume`: clears a parked chunk (after its cause is fixed) and gets it
/// applied — by writing the chunk again, which notifies the deployed detector as the
/// first write did, or, with `here`, by applying the stream in this process.
pub async fn resume(
    clients: &AwsClients,
    config: &Config,
    stream: Option<StreamName>,
    here: bool,
) -> Result<String> {
    let stores = Stores::aws(clients, config);
    let settings = ChunkerSettings::from_config(config);
    let cursor = stores.cursors.load_cursor(&settings.source_id()).await?;
    let stream = match stream.or_else(|| cursor.as_ref().map(|c| c.stream.clone())) {
        Some(stream) => stream,
        None => bail!(
            "no stream to resume: the chunker has not started on {}; name one with --stream",
            settings.source_id()
        ),
    };
    let Some(head) = stores.state.load_head(&stream).await? else {
        bail!("stream {stream} has no detector head: nothing to resume");
    };
    let mut out = String::new();
    match head.parked() {
        None => out.push_str(&format!(
            "stream {stream} is not parked (next chunk {})\n",
            head.next_chunk
        )),
        Some(parked) => {
            let mut cleared = head.clone();
            cleared.failure = None;
            match stores.state.put_head(&cleared, Some(head.version)).await? {
                Fenced::Written => out.push_str(&format!(
                    "stream {stream}: chunk {} unparked (it had failed {} times: {})\n",
                    parked.chunk, parked.attempts, parked.reason
                )),
                Fenced::Lost => bail!(
                    "stream {stream}'s head changed while resuming; run `txpipe resume` again"
                ),
            }
        }
    }
    if here {
        let detector =
            DetectorService::new(stores.clone(), stores.postgres(clients, config)?, config).await?;
        let report = detector
            .detector()
            .await
            .catch_up(
                &stream,
                head.next_chunk,
                Instant::now() + Duration::from_secs(600),
            )
            .await
            .with_context(|| format!("applying stream {stream} from chunk {}", head.next_chunk))?;
        out.push_str(&format!(
            "applied {} chunk(s) here; next chunk {}{}\n",
            report.applied.len(),
            report.next_chunk,
            report.parked.map_or(String::new(), |p| format!(
                "; parked again at {}: {}",
                p.chunk, p.reason
            ))
        ));
        return Ok(out);
    }
    match cursor.filter(|c| c.stream == stream && head.next_chunk < c.next_chunk) {
        Some(cursor) => {
            let mut chunker = Chunker::new(stores.objects.as_ref(), stores.cursors.as_ref(), settings);
            let k = head.next_chunk;
            match chunker.recut(&cursor, k).await {
                Ok(chunk) => chunker.put(&chunk).await?,
                Err(e) if e.source_is_gone() => chunker.rewrite_stored(&cursor, k, e).await?,
                Err(e) => return Err(e.into()),
            }
            out.push_str(&format!(
                "wrote {} again: its S3 event invokes the detector, which catches up from there\n",
                cursor.stream.chunk_key(k)
            ));
        }
        None => out.push_str("nothing cut beyond the detector's head yet: the next chunk's event continues the stream\n"),
    }
    Ok(out)
}

/// `txpipe restart-source`: the source file was replaced while its stream was still
/// being cut. The chunker refuses to mix two files; this abandons the old stream where
/// it stands and starts the new file as a new stream from chunk 0.
pub async fn restart_source(clients: &AwsClients, config: &Config) -> Result<String> {
    let stores = Stores::aws(clients, config);
    let settings = ChunkerSettings::from_config(config);
    let id = settings.source_id();
    let Some(old) = stores.cursors.load_cursor(&id).await? else {
        bail!("{id} has no cursor yet: the chunker starts the file by itself");
    };
    // A finished stream is not dropped while its detector is behind: its last chunks
    // and detection file would never be written.
    let applied = stores
        .state
        .load_head(&old.stream)
        .await?
        .map_or(0, |h| h.next_chunk);
    if old.finished && applied < old.next_chunk {
        bail!(
            "stream {} is cut but its detector has applied {applied} of {} chunks; wait until it has them all (`txpipe status`; `txpipe resume` if it is parked), then run this again",
            old.stream,
            old.next_chunk
        );
    }
    if settings.is_prefix() {
        // A new stream over the prefix: every file under it joins again, from the first.
        let chunker = Chunker::new(stores.objects.as_ref(), stores.cursors.as_ref(), settings);
        let fresh = chunker.fresh_prefix_cursor();
        return match stores.cursors.replace_cursor(&fresh, &old.stream).await? {
            Fenced::Written => Ok(format!(
                "stream {} {} after {} chunks; stream {} starts over the prefix from its first file on the next tick\n",
                old.stream,
                if old.finished { "finished" } else { "abandoned" },
                old.next_chunk,
                fresh.stream
            )),
            Fenced::Lost => bail!("the cursor of {id} changed meanwhile; run `txpipe status` and try again"),
        };
    }
    let Some(info) = stores
        .objects
        .head(&settings.source_bucket, &settings.source_key)
        .await?
    else {
        bail!("{id} does not exist: upload the new file first");
    };
    if info.etag == old.etag {
        return Ok(format!(
            "{id} has not changed (ETag {}); stream {} goes on\n",
            old.etag, old.stream
        ));
    }
    let chunker = Chunker::new(stores.objects.as_ref(), stores.cursors.as_ref(), settings);
    let fresh: ChunkCursor = chunker.fresh_cursor(info.etag, info.size).await?;
    match stores.cursors.replace_cursor(&fresh, &old.stream).await? {
        Fenced::Written => Ok(format!(
            "stream {} abandoned after {} chunks ({}); the new file is stream {}, cut from chunk 0 on the next tick\n",
            old.stream,
            old.next_chunk,
            if old.finished { "finished" } else { "not finished" },
            fresh.stream
        )),
        Fenced::Lost => bail!("the cursor of {id} changed meanwhile; run `txpipe status` and try again"),
    }
}

/// The configured prefix stream's cursor, or why there is none.
async fn prefix_cursor(stores: &Stores, config: &Config) -> Result<ChunkCursor> {
    let settings = ChunkerSettings::from_config(config);
    if !settings.is_prefix() {
        bail!(
            "s3://{}/{} is a single file (closed when it is cut); set TXPIPE_SOURCE_PREFIX to the prefix stream's prefix",
            settings.source_bucket,
            settings.source_key
        );
    }
    stores
        .cursors
        .load_cursor(&settings.source_id())
        .await?
        .with_context(|| {
            format!(
                "{} has no stream yet: the chunker starts it on its next tick",
                settings.source_id()
            )
        })
}

/// `txpipe close-stream`: the prefix stream takes no more files; the chunker cuts the
/// rows left as its last chunk, so the last detection file is written.
pub async fn close_stream(clients: &AwsClients, config: &Config) -> Result<String> {
    let stores = Stores::aws(clients, config);
    let cursor = prefix_cursor(&stores, config).await?;
    match txpipe::chunker::close_stream(stores.cursors.as_ref(), &cursor).await? {
        true => Ok(format!(
            "stream {} is closing: {} files joined, {} rows cut so far; the chunker's next tick cuts the rest as the last chunk. New files under the prefix no longer join it: `txpipe restart-source` starts a new stream over the prefix\n",
            cursor.stream, cursor.files, cursor.rows_emitted
        )),
        false => Ok(format!(
            "stream {} is already {}\n",
            cursor.stream,
            if cursor.finished { "finished" } else { "closing" }
        )),
    }
}

/// `txpipe skip-file`: the file that stops a prefix stream (changed or vanished after
/// it joined) ends where the stream stands; the chunker goes on with the next file.
pub async fn skip_file(clients: &AwsClients, config: &Config, key: &str) -> Result<String> {
    let stores = Stores::aws(clients, config);
    let cursor = prefix_cursor(&stores, config).await?;
    let files = stores
        .cursors
        .files_by_key(&cursor.stream, &[key.to_string()])
        .await?;
    let Some(file) = files.get(key) else {
        bail!(
            "{key} has not joined stream {}: nothing to skip",
            cursor.stream
        );
    };
    txpipe::chunker::skip_file(stores.cursors.as_ref(), &cursor, file)
        .await
        .map_err(anyhow::Error::msg)
}
