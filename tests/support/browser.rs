//! Opens a page in headless Chromium (`TXPIPE_CHROMIUM`, installed by
//! tests/ensure-tools.sh) and reports what a person would see: the DOM after its
//! scripts ran, every console message, every request the page made, a screenshot.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;

/// What the browser saw.
#[derive(Debug)]
pub struct PageView {
    /// The DOM, serialized after the page's scripts ran.
    pub dom: String,
    /// Console messages (errors, warnings, CSP violations, logs).
    pub console: Vec<String>,
    /// URLs the page asked for beyond its own file.
    pub requests: Vec<String>,
}

/// Loads `page` twice (DOM and screenshot) and returns what was seen; the screenshot
/// goes to `screenshot`.
pub fn open_page(page: &Path, screenshot: &Path) -> Result<PageView> {
    let chromium = std::env::var("TXPIPE_CHROMIUM").context(
        "TXPIPE_CHROMIUM is not set: run the tests through `make test` (tests/ensure-tools.sh installs Chromium)",
    )?;
    let page = std::fs::canonicalize(page).with_context(|| format!("{}", page.display()))?;
    let url = format!("file://{}", page.display());
    let scratch = screenshot
        .parent()
        .context("the screenshot needs a folder")?
        .join(format!(
            "chromium-{}",
            screenshot
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("page")
        ));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let netlog = scratch.join("netlog.json");
    let base = |profile: &str| {
        let mut c = Command::new(&chromium);
        // As root in a container, without a GPU, and quiet: no background traffic to
        // Google's hosts (refused here, and not the page's).
        c.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!(
            "--user-data-dir={}",
            scratch.join(profile).display()
        ));
        c
    };
    let out = base("dom")
        .args([
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--log-net-log={}", netlog.display()))
        .args(["--dump-dom", &url])
        .output()
        .context("starting Chromium")?;
    if !out.status.success() {
        bail!(
            "Chromium failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dom = String::from_utf8(out.stdout).context("the DOM is not UTF-8")?;
    let console = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_string)
        .collect();
    let requests = page_requests(&std::fs::read(&netlog).context("reading the net log")?)?;

    let shot = base("shot")
        .args(["--window-size=1280,2400"])
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg(&url)
        .output()
        .context("starting Chromium")?;
    if !shot.status.success() || !screenshot.exists() {
        bail!(
            "Chromium took no screenshot ({}): {}",
            shot.status,
            String::from_utf8_lossy(&shot.stderr)
        );
    }
    Ok(PageView {
        dom,
        console,
        requests,
    })
}

/// URLs requested on behalf of a page opened from a file (their network isolation
/// key is the file's), from Chromium's net log. The browser's own background requests
/// carry another key and are not the page's.
fn page_requests(netlog: &[u8]) -> Result<Vec<String>> {
    let log: serde_json::Value = serde_json::from_slice(netlog).context("parsing the net log")?;
    let start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
        .as_u64()
        .context("the net log names no URL_REQUEST_START_JOB events")?;
    let events = log["events"]
        .as_array()
        .context("the net log has no events")?;
    Ok(events
        .iter()
        .filter(|e| e["type"].as_u64() == Some(start))
        .filter(|e| {
            e["params"]["network_isolation_key"]
                .as_str()
                .is_some_and(|k| k.starts_with("file://"))
        })
        .filter_map(|e| e["params"]["url"].as_str())
        .filter(|u| !u.starts_with("file:") && !u.starts_with("data:"))
        .map(str::to_string)
        .collect())
}

/// The cells of the rows of the table with `id`, as text.
pub fn table_rows(dom: &str, id: &str) -> Vec<Vec<String>> {
    let Some(start) = dom.find(&format!("<table id=\"{id}\"")) else {
        return Vec::new();
    };
    let table = &dom[start..];
    let table = &table[..table.find("</table>").unwrap_or(table.len())];
    let body = table.split("<tbody>").nth(1).unwrap_or("");
    body.split("<tr")
        .skip(1)
        .map(|row| {
            row.split("<td")
                .skip(1)
                .map(|cell| {
                    let inner = cell.split_once('>').map_or("", |(_, rest)| rest);
                    let inner = inner.split("</td>").next().unwrap_or("");
                    text(inner)
                })
                .collect()
        })
        .collect()
}

/// Markup stripped of tags, entities decoded.
pub fn text(markup: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in markup.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&")
}
