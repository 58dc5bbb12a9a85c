//! The sample events in `events/` do what the README says they do, on the data
//! `make services` uploads (the default generated set): their keys name its stream.

use anyhow::Result;
use txpipe_e2e::*;

fn event(name: &str) -> Result<serde_json::Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../events")
        .join(name);
    Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_events_drive_the_detector() -> Result<()> {
    let stack = Stack::start(true).await?;
    let dir = temp_dir("events")?;
    // `txpipe generate`'s defaults, as `make services` uploads them.
    let (transactions, importance) = generate(&dir, 594_643, 42, 4_112)?;
    stack.put(SOURCE_KEY, transactions).await?;
    stack.put(IMPORTANCE_KEY, importance).await?;
    assert_eq!(
        stack.stream().await?.as_str(),
        "input-transactions.ab6e50eda701dd19",
        "the sample events (and the README) name the default data's stream"
    );
    // The schedule tick is an EventBridge event; the chunker takes any event as a tick.
    let tick: aws_lambda_events::eventbridge::EventBridgeEvent =
        serde_json::from_value(event("schedule-tick.json")?)?;
    assert_eq!(tick.detail_type, "Scheduled Event");
    let run = stack.chunker(&[])?.run(far(), Some(5)).await?;
    assert_eq!(run.written.len(), 5);

    let detector = stack.detector(&[]).await?;
    let reply = |r: txpipe::detector::DetectorResponse| serde_json::to_value(r);
    let r = reply(
        detector
            .handle(&event("s3-put-chunk-3-out-of-order.json")?, far())
            .await?,
    )?;
    // Chunk 3's event catches up in order, to the chunker's cursor (5 chunks cut).
    assert_eq!(
        r["streams"][0]["applied"],
        serde_json::json!([0, 1, 2, 3, 4])
    );
    let r = reply(
        detector
            .handle(&event("s3-put-chunk-0.json")?, far())
            .await?,
    )?;
    assert_eq!(r["streams"][0]["duplicate"], true);
    let r = reply(
        detector
            .handle(&event("s3-put-chunk-0-duplicate.json")?, far())
            .await?,
    )?;
    assert_eq!(r["streams"][0]["applied"], serde_json::json!([]));
    let r = reply(detector.handle(&event("garbage.json")?, far()).await?)?;
    assert_eq!(r["status"], "malformed");
    let head = detector
        .detector()
        .await
        .head(&stack.stream().await?)
        .await?;
    assert_eq!(head.map(|h| h.next_chunk), Some(5));
    Ok(())
}
