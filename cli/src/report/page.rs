//! The report as one HTML file: inline CSS, inline SVG charts and a few lines of
//! inline script (table filter and sort). A Content-Security-Policy forbids every
//! request, so the page opens the same from a disk, a mail or a presigned S3 link.

use super::charts::{line_chart, Series, PALETTE};
use super::{ReportData, LATEST_DETECTIONS, REJECT_EXAMPLES};
use chrono::{DateTime, Utc};
use std::fmt::Write as _;
use txpipe::detection::{PerPattern, OUTPUT_TZ};

/// The page for `data`.
pub fn render(data: &ReportData) -> String {
    let status = &data.status;
    let title = match &status.stream {
        Some(s) => format!("txpipe report: {s}"),
        None => "txpipe report".to_string(),
    };
    let mut p = String::new();
    let _ = write!(
        p,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
         style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head>\n<body data-state=\"{}\">\n",
        esc(&title),
        state(data).0
    );
    let _ = writeln!(
        p,
        "<header><h1>{}</h1><p class=\"muted\">read {} UTC from {}</p></header>",
        esc(&title),
        data.generated_at.format("%Y-%m-%d %H:%M:%S"),
        esc(&status.source)
    );
    summary(&mut p, data);
    if status.stream.is_some() {
        charts(&mut p, data);
        detections(&mut p, data);
        rejects(&mut p, data);
        merchants(&mut p, data);
    }
    let _ = write!(
        p,
        "<section><h2>txpipe status</h2><pre>{}</pre></section>\n<script>{SCRIPT}</script>\n</body></html>\n",
        esc(&status.render())
    );
    p
}

/// The stream's state: (a word for machines, a sentence for people).
fn state(data: &ReportData) -> (&'static str, String) {
    let s = &data.status;
    if let Some(f) = s.failure.as_ref().filter(|f| f.parked) {
        return (
            "parked",
            format!("PARKED at chunk {} after {} attempts", f.chunk, f.attempts),
        );
    }
    if s.stream.is_none() {
        return if s.waiting_for_input {
            (
                "waiting",
                "waiting for input: the source is not uploaded yet".into(),
            )
        } else {
            (
                "not-started",
                "not started: the chunker has not cut a chunk yet".into(),
            )
        };
    }
    if s.detector_finished {
        return ("finished", "finished: every chunk applied".into());
    }
    if let Some(blocked) = s.prefix.as_ref().and_then(|p| p.blocked.clone()) {
        return ("blocked", format!("BLOCKED: {blocked}"));
    }
    if let Some(f) = &s.failure {
        return (
            "failing",
            format!("failing: chunk {} after {} attempts", f.chunk, f.attempts),
        );
    }
    match s.lag() {
        0 => ("running", "running: caught up".into()),
        n => (
            "lagging",
            format!("running: {n} chunks cut but not applied"),
        ),
    }
}

fn summary(p: &mut String, data: &ReportData) {
    let s = &data.status;
    let (word, sentence) = state(data);
    let _ = write!(
        p,
        "<section class=\"state {word}\"><p class=\"banner\">{}</p>",
        esc(&sentence)
    );
    if let Some(f) = &s.failure {
        let _ = write!(p, "<p>reason: <code>{}</code></p>", esc(&f.reason));
        if f.parked {
            if let Some(stream) = &s.stream {
                let _ = write!(
                    p,
                    "<p>fix the cause, then resume: <code>txpipe resume --stream {}</code></p>",
                    esc(stream.as_str())
                );
            }
        }
    }
    if let Some(note) = &data.postgres_note {
        let _ = write!(
            p,
            "<p class=\"note\">{}: the ledger, detections and rejected rows are not shown</p>",
            esc(note)
        );
    }
    let _ = write!(p, "</section>\n<section><table class=\"facts\">");
    let mut fact = |name: &str, value: String| {
        let _ = write!(p, "<tr><th>{}</th><td>{}</td></tr>", esc(name), esc(&value));
    };
    if let Some(stream) = &s.stream {
        fact(
            "stream",
            format!("{stream} (R = {} rows per chunk)", s.rows_per_chunk),
        );
    }
    if let Some(prefix) = &s.prefix {
        fact(
            "files",
            format!(
                "{} joined, newest {}, {} late, {} changed{}",
                prefix.files,
                if prefix.newest_key.is_empty() {
                    "-"
                } else {
                    &prefix.newest_key
                },
                prefix.late,
                prefix.changed,
                if prefix.closing { ", closing" } else { "" }
            ),
        );
    }
    fact(
        "chunker (X)",
        format!(
            "{} chunks created, {} rows{}",
            s.chunks_created,
            s.rows_chunked,
            if s.chunker_finished { ", finished" } else { "" }
        ),
    );
    fact(
        "detector (Y)",
        format!(
            "{} chunks applied, lag {}, {} rows, {} rejected{}",
            s.chunks_applied,
            s.lag(),
            s.rows.0,
            s.rows.1,
            if s.detector_finished {
                ", finished"
            } else {
                ""
            }
        ),
    );
    let detections: Vec<String> = txpipe::patterns::registered()
        .map(|p| format!("{} {} {}", p.id(), p.action(), s.detections.get(p)))
        .collect();
    fact(
        "detections",
        format!(
            "{} ({} files in S3)",
            detections.join(", "),
            s.detection_files
        ),
    );
    if let Some((version, snapshot)) = &s.head {
        fact(
            "state",
            match snapshot {
                Some(k) => format!(
                    "head version {version}, snapshot of chunks 0..{}: {} bytes in {} part{}",
                    k.next,
                    k.bytes,
                    k.parts,
                    if k.parts == 1 { "" } else { "s" }
                ),
                None => format!("head version {version}, no snapshot yet"),
            },
        );
    }
    let millis: Vec<i64> = data.ledger.iter().map(|r| r.millis()).collect();
    if !millis.is_empty() {
        fact(
            "detector time per chunk",
            format!(
                "median {} ms, p99 {} ms, max {} ms",
                percentile(&millis, 50),
                percentile(&millis, 99),
                millis.iter().max().copied().unwrap_or(0)
            ),
        );
    }
    let latency = cut_to_applied_ms(data);
    if !latency.is_empty() {
        fact(
            "cut to applied",
            format!(
                "median {} ms, p99 {} ms (chunk object written → outputs committed)",
                percentile(&latency, 50),
                percentile(&latency, 99)
            ),
        );
    }
    let _ = writeln!(p, "</table></section>");
}

fn charts(p: &mut String, data: &ReportData) {
    let _ = writeln!(p, "<section><h2>Chunks</h2>");
    if data.ledger.is_empty() {
        let _ = writeln!(
            p,
            "<p class=\"note\">no chunk applied yet: the charts appear with the first one</p></section>"
        );
        return;
    }
    let line = |label: &str, color, points: Vec<(u64, f64)>| Series {
        label: label.to_string(),
        color,
        points,
    };
    let over = |f: &dyn Fn(&super::LedgerRow) -> f64| -> Vec<(u64, f64)> {
        data.ledger.iter().map(|r| (r.chunk, f(r))).collect()
    };
    let millis: Vec<i64> = data.ledger.iter().map(|r| r.millis()).collect();
    let (median, p99) = (percentile(&millis, 50), percentile(&millis, 99));
    figure(
        p,
        "time",
        "Detector time per chunk (ms)",
        line_chart(
            "ms",
            &[line(
                "ms per chunk",
                PALETTE[0],
                over(&|r| r.millis() as f64),
            )],
            &[
                (format!("median {median} ms"), median as f64),
                (format!("p99 {p99} ms"), p99 as f64),
            ],
        ),
    );
    match lag_points(data) {
        Some(points) => figure(
            p,
            "lag",
            "Lag: chunks cut but not yet applied, when each chunk was applied",
            line_chart("chunks", &[line("chunks waiting", PALETTE[1], points)], &[]),
        ),
        None => {
            let _ = writeln!(
                p,
                "<p class=\"note\">lag is not shown: the chunk objects are gone (expired)</p>"
            );
        }
    }
    figure(
        p,
        "rows",
        "Valid rows per chunk",
        line_chart(
            "rows",
            &[line("rows", PALETTE[0], over(&|r| r.rows as f64))],
            &[],
        ),
    );
    figure(
        p,
        "rejects",
        "Rejected rows per chunk",
        line_chart(
            "rows",
            &[line("rejected", PALETTE[1], over(&|r| r.rejected as f64))],
            &[],
        ),
    );
    let mut totals = PerPattern::default();
    let mut by_chunk = data.detections_per_chunk.iter().peekable();
    let mut cumulative: Vec<Vec<(u64, f64)>> = vec![Vec::new(); totals.iter().count()];
    for r in &data.ledger {
        while let Some((_, counts)) = by_chunk.next_if(|(c, _)| *c <= r.chunk) {
            totals += counts;
        }
        for (points, (_, t)) in cumulative.iter_mut().zip(totals.iter()) {
            points.push((r.chunk, t as f64));
        }
    }
    let series: Vec<Series> = totals
        .iter()
        .zip(cumulative)
        .enumerate()
        .map(|(i, ((pat, _), points))| {
            line(
                &format!("{} {}", pat.id(), pat.action()),
                PALETTE[i % PALETTE.len()],
                points,
            )
        })
        .collect();
    figure(
        p,
        "detections",
        "Detections per pattern (cumulative)",
        line_chart("detections", &series, &[]),
    );
    let _ = writeln!(p, "</section>");
}

fn figure(p: &mut String, id: &str, caption: &str, svg: anyhow::Result<String>) {
    let body = svg.unwrap_or_else(|e| format!("<p class=\"note\">{}</p>", esc(&format!("{e:#}"))));
    let _ = writeln!(
        p,
        "<figure class=\"chart\" id=\"chart-{id}\"><figcaption>{}</figcaption>{body}</figure>",
        esc(caption)
    );
}

/// For each applied chunk: how many chunks had been cut but not applied when it was.
fn lag_points(data: &ReportData) -> Option<Vec<(u64, f64)>> {
    if data.cut_ms.is_empty() {
        return None;
    }
    let mut cuts: Vec<i64> = data.cut_ms.values().copied().collect();
    cuts.sort_unstable();
    Some(
        data.ledger
            .iter()
            .map(|r| {
                let cut_by_then = cuts.partition_point(|&t| t <= r.finished.timestamp_millis());
                let waiting = (cut_by_then as u64).saturating_sub(r.chunk + 1);
                (r.chunk, waiting as f64)
            })
            .collect(),
    )
}

/// Per applied chunk whose object still exists: ms from its cut to its outputs.
fn cut_to_applied_ms(data: &ReportData) -> Vec<i64> {
    data.ledger
        .iter()
        .filter_map(|r| {
            let cut = data.cut_ms.get(&r.chunk)?;
            Some((r.finished.timestamp_millis() - cut).max(0))
        })
        .collect()
}

fn detections(p: &mut String, data: &ReportData) {
    let _ = write!(p, "<section><h2>Latest detections</h2>");
    if data.latest.is_empty() {
        let _ = writeln!(p, "<p class=\"note\">no detection yet</p></section>");
        return;
    }
    let _ = write!(
        p,
        "<p class=\"muted\">the latest {} (at most {LATEST_DETECTIONS}), newest first; times in {}; \
         click a column to sort</p>\
         <p class=\"screen\"><input id=\"filter\" type=\"search\" placeholder=\"filter: merchant, customer, pattern…\"> \
         <span id=\"shown\">{}</span> shown</p>\
         <table id=\"detections\" class=\"sortable\"><thead><tr><th data-num=\"1\">chunk</th><th>pattern</th>\
         <th>action</th><th>customer</th><th>merchant</th><th>y start time</th><th>detection time</th></tr></thead><tbody>",
        data.latest.len(),
        OUTPUT_TZ.name(),
        data.latest.len()
    );
    for d in &data.latest {
        let _ = write!(
            p,
            "<tr><td class=\"num\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            d.chunk,
            esc(&d.pattern_id),
            esc(&d.action_type),
            esc(&d.customer),
            esc(&d.merchant),
            local(d.y_start_time),
            local(d.detection_time)
        );
    }
    let _ = writeln!(p, "</tbody></table></section>");
}

fn rejects(p: &mut String, data: &ReportData) {
    let _ = write!(p, "<section><h2>Rejected rows by reason</h2>");
    if data.rejects.is_empty() {
        let _ = writeln!(p, "<p class=\"note\">no row rejected</p></section>");
        return;
    }
    let _ = write!(
        p,
        "<p class=\"muted\">reasons that differ only in the values they quote are grouped; \
         the first {REJECT_EXAMPLES} rows of each</p>\
         <table id=\"rejects\"><thead><tr><th>rows</th><th>reason</th><th>examples (row: text)</th></tr></thead><tbody>"
    );
    for g in &data.rejects {
        let examples: Vec<String> = g
            .examples
            .iter()
            .map(|(row, reason, raw)| {
                format!(
                    "<div title=\"{}\"><b>{row}</b>: <code>{}</code></div>",
                    esc(reason),
                    esc(raw)
                )
            })
            .collect();
        let _ = write!(
            p,
            "<tr><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
            g.count,
            esc(&g.kind),
            examples.concat()
        );
    }
    let _ = writeln!(p, "</tbody></table></section>");
}

fn merchants(p: &mut String, data: &ReportData) {
    let _ = write!(p, "<section><h2>Top merchants by detections</h2>");
    if data.top_merchants.is_empty() {
        let _ = writeln!(p, "<p class=\"note\">no detection yet</p></section>");
        return;
    }
    let _ = write!(
        p,
        "<table id=\"merchants\" class=\"sortable\"><thead><tr><th>merchant</th><th data-num=\"1\">all</th>"
    );
    for pat in txpipe::patterns::registered() {
        let _ = write!(p, "<th data-num=\"1\">{} {}</th>", pat.id(), pat.action());
    }
    let _ = write!(p, "</tr></thead><tbody>");
    for (merchant, counts) in &data.top_merchants {
        let _ = write!(
            p,
            "<tr><td>{}</td><td class=\"num\">{}</td>",
            esc(merchant),
            counts.total()
        );
        for (_, c) in counts.iter() {
            let _ = write!(p, "<td class=\"num\">{c}</td>");
        }
        let _ = write!(p, "</tr>");
    }
    let _ = writeln!(p, "</tbody></table></section>");
}

/// Nearest-rank percentile of unsorted values.
fn percentile(values: &[i64], pct: usize) -> i64 {
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = (v.len() * pct).div_ceil(100).max(1);
    v.get(rank - 1).copied().unwrap_or(0)
}

fn local(t: DateTime<Utc>) -> String {
    t.with_timezone(&OUTPUT_TZ)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// Escapes text for HTML content and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:#222;max-width:1100px;margin:0 auto;padding:16px 24px}
h1{font-size:22px;margin:8px 0 0}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.muted{color:#666;margin:2px 0 8px}.note{color:#8a5a00;background:#fff6e0;padding:6px 10px;border-radius:4px}
.state .banner{font-size:16px;font-weight:600;padding:8px 12px;border-radius:4px;background:#e8f3e8;margin:12px 0 6px}
.state.parked .banner,.state.blocked .banner,.state.failing .banner{background:#fde2e1;color:#8b0000}
.state.lagging .banner,.state.waiting .banner,.state.not-started .banner{background:#fff3cd}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{text-align:left;padding:3px 8px;border-bottom:1px solid #eee;vertical-align:top}
thead th{background:#f4f4f4;position:sticky;top:0}table.sortable thead th{cursor:pointer}
table.facts th{width:210px;color:#555;font-weight:500}td.num{text-align:right;font-variant-numeric:tabular-nums}
code{font-size:12px;word-break:break-all}figure{margin:12px 0}figcaption{font-weight:600;margin-bottom:4px}
figure svg{width:100%;height:auto;max-width:1000px}pre{background:#f7f7f7;padding:10px;overflow-x:auto;font-size:12px}
input[type=search]{width:320px;padding:4px 6px}
@media print{.screen{display:none}body{max-width:none;padding:0}figure,tr{break-inside:avoid}thead th{position:static}}
";

const SCRIPT: &str = "
(function () {
  var input = document.getElementById('filter');
  var table = document.getElementById('detections');
  if (input && table) {
    input.addEventListener('input', function () {
      var q = input.value.toLowerCase(), shown = 0;
      Array.prototype.forEach.call(table.tBodies[0].rows, function (tr) {
        var hit = tr.textContent.toLowerCase().indexOf(q) >= 0;
        tr.hidden = !hit;
        if (hit) { shown++; }
      });
      document.getElementById('shown').textContent = shown;
    });
  }
  Array.prototype.forEach.call(document.querySelectorAll('table.sortable'), function (t) {
    Array.prototype.forEach.call(t.tHead.rows[0].cells, function (th, i) {
      th.addEventListener('click', function () {
        var numeric = th.getAttribute('data-num') === '1';
        var dir = th.getAttribute('data-dir') === 'asc' ? -1 : 1;
        th.setAttribute('data-dir', dir === 1 ? 'asc' : 'desc');
        var body = t.tBodies[0], rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = a.cells[i].textContent, y = b.cells[i].textContent;
          return dir * (numeric ? Number(x) - Number(y) : x.localeCompare(y));
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  document.body.setAttribute('data-ready', '1');
})();
";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{DetectionRow, LedgerRow, RejectGroup};
    use txpipe::layout::StreamName;

    fn t(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).unwrap()
    }

    #[test]
    fn a_source_not_uploaded_renders_a_clear_page() {
        let mut data = ReportData::default();
        data.status.source = "s3://b/input/transactions.csv".into();
        data.status.waiting_for_input = true;
        let page = render(&data);
        assert!(page.contains("data-state=\"waiting\""));
        assert!(page.contains("waiting for input"));
        assert!(!page.contains("<svg"));
    }

    #[test]
    fn a_stream_with_chunks_gets_every_chart_and_table() {
        let mut data = ReportData::default();
        data.status.stream = StreamName::parse("input-transactions.0011223344556677");
        data.status.chunks_created = 3;
        data.status.chunks_applied = 2;
        for k in 0..2u64 {
            let start = 1_000_000 + k as i64 * 1000;
            data.ledger.push(LedgerRow {
                chunk: k,
                rows: 10,
                rejected: k,
                detections: 1,
                started: t(start),
                finished: t(start + 40),
            });
        }
        data.cut_ms = [(0, 999_000), (1, 1_000_100), (2, 1_000_500)].into();
        use txpipe::PatternId;
        let one = |p: PatternId| PerPattern::from_fn(|q| u64::from(q == p));
        data.detections_per_chunk = vec![(0, one(PatternId::UPGRADE)), (1, one(PatternId::CHILD))];
        data.latest.push(DetectionRow {
            chunk: 1,
            pattern_id: "PatId2".into(),
            action_type: "CHILD".into(),
            customer: "'C<1>'".into(),
            merchant: "'M1'".into(),
            y_start_time: t(1_001_000),
            detection_time: t(1_001_040),
        });
        data.rejects.push(RejectGroup {
            kind: "`amount` is \"…\"".into(),
            count: 1,
            examples: vec![(5, "`amount` is \"x\"".into(), "a,b,x".into())],
        });
        data.top_merchants.push((
            "'M1'".into(),
            PerPattern::from_fn(|q| u64::from(q != PatternId::DEI_NEEDED)),
        ));
        let page = render(&data);
        for id in ["time", "lag", "rows", "rejects", "detections"] {
            assert!(page.contains(&format!("id=\"chart-{id}\"")), "{id}");
        }
        assert_eq!(page.matches("<svg").count(), 5);
        assert!(page.contains("&#39;C&lt;1&gt;&#39;"), "customer escaped");
        assert!(page.contains("data-state=\"lagging\""));
        assert!(page.contains("median 40 ms"));
        // Chunk 1 finished at 1,001,040: chunks 0..=2 were cut by then, so 1 waited.
        assert_eq!(
            lag_points(&data),
            Some(vec![(0, 0.0), (1, 1.0)]),
            "chunk 0 finished at 1,000,040 with only itself cut"
        );
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), 50);
        assert_eq!(percentile(&v, 99), 99);
        assert_eq!(percentile(&[7], 99), 7);
        assert_eq!(percentile(&[], 50), 0);
    }
}
