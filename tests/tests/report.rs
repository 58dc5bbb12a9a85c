//! `txpipe report` opened in a real browser (headless Chromium): the page of a finished
//! run shows every chart drawn, the latest detections as the S3 files hold them and
//! the rejected rows by reason; a source not uploaded yet and a parked stream get
//! clear pages; no page logs to the console or asks for anything beyond its file.

use anyhow::Result;
use std::path::Path;
use txpipe_cli::report::write_report;
use txpipe_cli::run::{run, Rate, RunOptions, View};
use txpipe_e2e::browser::{open_page, table_rows, PageView};
use txpipe_e2e::*;

/// Opens `page` and checks what holds for every report: its script ran, nothing on
/// the console, no request leaving the file.
fn view(page: &Path) -> Result<PageView> {
    let shot = page.with_extension("png");
    let v = open_page(page, &shot)?;
    assert!(
        v.dom.contains("data-ready=\"1\""),
        "the page's script did not finish"
    );
    assert_eq!(v.console, Vec::<String>::new(), "console messages");
    assert_eq!(v.requests, Vec::<String>::new(), "requests beyond the file");
    assert!(std::fs::metadata(&shot)?.len() > 10_000, "empty screenshot");
    Ok(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_of_a_run_shows_what_the_pipeline_stored() -> Result<()> {
    let dir = temp_dir("report-run")?;
    let (mut transactions, _) = generate(&dir, 30_000, 7, 900)?;
    // Two kinds of poison, one of them twice.
    transactions.extend_from_slice(
        b"0,'C1','4','M','28007','M1','28007','es_food',abc,0\n\
          0,'C2','4','M','28007','M1','28007','es_food',1.234,0\n\
          0,'C3','4'\n",
    );
    std::fs::write(dir.join("transactions.csv"), &transactions)?;
    let out = dir.join("out");
    let summary = run(RunOptions {
        data: vec![dir.clone()],
        rate: Rate::Max,
        out: out.clone(),
        keep: false,
        view: View::Quiet,
        backfill: false,
        settings: vec![
            ("TXPIPE_ROWS_PER_CHUNK".into(), "3000".into()),
            ("TXPIPE_UPGRADE_MIN_MERCHANT_TXNS".into(), "3000".into()),
            ("TXPIPE_DEI_MIN_FEMALE".into(), "20".into()),
        ],
    })
    .await?;
    assert_eq!(summary.rejected, 3);
    let page = out.join("report.html");
    assert_eq!(summary.reports, vec![page.clone()]);
    let v = view(&page)?;
    assert!(v.dom.contains("data-state=\"finished\""));

    // Every chart is drawn: an SVG with its line in each figure.
    let figures: Vec<&str> = v.dom.split("<figure class=\"chart\"").skip(1).collect();
    assert_eq!(figures.len(), 5, "charts");
    for f in &figures {
        let f = &f[..f.find("</figure>").unwrap_or(f.len())];
        assert!(
            f.contains("<svg") && f.contains("<polyline"),
            "{}",
            &f[..200.min(f.len())]
        );
    }

    // The detections table lists the newest detections, as the S3 files hold them.
    let mut files: Vec<_> = std::fs::read_dir(out.join("detections"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    let mut all = Vec::new();
    for f in files {
        all.extend(batch_identities(&std::fs::read_to_string(f)?)?);
    }
    let newest: Vec<_> = all
        .iter()
        .rev()
        .take(txpipe_cli::report::LATEST_DETECTIONS as usize)
        .cloned()
        .collect();
    assert!(!newest.is_empty());
    let shown: Vec<(String, String, String)> = table_rows(&v.dom, "detections")
        .into_iter()
        .map(|c| (c[1].clone(), c[4].clone(), c[3].clone()))
        .collect();
    assert_eq!(shown, newest);

    // Rejected rows, grouped by reason with their examples.
    let rejects = table_rows(&v.dom, "rejects");
    let counts: Vec<(&str, &str)> = rejects
        .iter()
        .map(|r| (r[0].as_str(), r[1].as_str()))
        .collect();
    assert_eq!(
        counts,
        [
            ("2", "`amount` is \"…\"; expected a non-negative decimal with at most N fractional digits, like N.N or N.N"),
            ("1", "row has N fields but the header has N"),
        ]
    );
    assert!(rejects[0][2].contains("abc") && rejects[0][2].contains("1.234"));
    assert!(!table_rows(&v.dom, "merchants").is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_not_started_and_a_parked_stream_get_clear_pages() -> Result<()> {
    let stack = Stack::start(true).await?;
    let dir = temp_dir("report-parked")?;
    let extra = [
        ("TXPIPE_ROWS_PER_CHUNK", "2000"),
        ("TXPIPE_PARK_AFTER_ATTEMPTS", "2"),
    ];
    let config = stack.config(&extra)?;
    let clients = &stack.local.clients;

    // Nothing uploaded: a page that says so.
    let empty = dir.join("empty.html");
    write_report(clients, &config, None, None, &empty).await?;
    let v = view(&empty)?;
    assert!(v.dom.contains("data-state=\"waiting\""));
    assert!(v.dom.contains("waiting for input"));

    // Chunk 1 refused by the database until parked.
    let (transactions, importance) = generate(&dir, 6_000, 5, 500)?;
    stack.put(SOURCE_KEY, transactions).await?;
    stack.put(IMPORTANCE_KEY, importance).await?;
    stack.chunker(&extra)?.run(far(), Some(1)).await?;
    let stream = stack.stream().await?;
    let detector = stack.detector(&extra).await?;
    deliver(&detector, &[stream.chunk_key(0)]).await?;
    stack.chunker(&extra)?.run(far(), None).await?;
    let pg = stack.pg_client().await?;
    pg.batch_execute("ALTER TABLE chunks ADD CONSTRAINT refuse_1 CHECK (chunk <> 1)")
        .await?;
    for _ in 0..2 {
        assert!(deliver(&detector, &[stream.chunk_key(2)]).await.is_err());
    }
    let parked = dir.join("parked.html");
    write_report(clients, &config, None, None, &parked).await?;
    let v = view(&parked)?;
    assert!(v.dom.contains("data-state=\"parked\""));
    assert!(v.dom.contains("PARKED at chunk 1 after 2 attempts"));
    assert!(
        v.dom.contains("refuse_1"),
        "the reason, in the server's words"
    );
    assert!(v.dom.contains(&format!("txpipe resume --stream {stream}")));
    // The chunk that was applied is charted.
    assert_eq!(v.dom.matches("<figure class=\"chart\"").count(), 5);
    Ok(())
}

#[test]
fn the_browser_check_sees_console_errors_and_requests() -> Result<()> {
    let dir = temp_dir("report-control")?;
    let page = dir.join("bad.html");
    std::fs::write(
        &page,
        "<!doctype html><html><body><img src=\"http://example.invalid/x.png\">\
         <script>console.error('boom'); notDefined();</script></body></html>",
    )?;
    let v = open_page(&page, &dir.join("bad.png"))?;
    assert_eq!(v.requests, vec!["http://example.invalid/x.png".to_string()]);
    assert!(
        v.console.iter().any(|l| l.contains("boom")),
        "{:?}",
        v.console
    );
    assert!(
        v.console.iter().any(|l| l.contains("notDefined")),
        "{:?}",
        v.console
    );
    Ok(())
}
