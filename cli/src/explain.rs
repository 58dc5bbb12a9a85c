//! `txpipe explain`: whether each pattern holds now for a merchant, or for a customer
//! at a merchant, and why or why not — with the numbers and the thresholds — and the
//! detection with its evidence if one was emitted. The stream's state is rebuilt from
//! its head exactly as a cold detector rebuilds it; nothing is written.

use anyhow::{bail, Result};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use txpipe::aws::AwsClients;
use txpipe::chunker::ChunkerSettings;
use txpipe::config::Config;
use txpipe::detector::{Detector, DetectorSettings, NoOutputs};
use txpipe::engine::{verdict, MerchantExplain, PairExplain, Verdict};
use txpipe::evidence::exact_fraction;
use txpipe::layout::StreamName;
use txpipe::patterns::{child::Child, dei::Dei, upgrade::Upgrade};
use txpipe::setup::Stores;
use txpipe::weight::Weight;
use txpipe::{Detection, PatternConfig, PatternId};

/// What to explain: a merchant, or a customer at it.
pub struct Question<'a> {
    /// The stream (default: the configured source's current stream).
    pub stream: Option<StreamName>,
    /// Merchant id, unquoted.
    pub merchant: &'a str,
    /// Customer id, unquoted.
    pub customer: Option<&'a str>,
}

/// The answer, as text for a person.
pub async fn explain(clients: &AwsClients, config: &Config, q: Question<'_>) -> Result<String> {
    let stores = Stores::aws(clients, config);
    let settings = ChunkerSettings::from_config(config);
    let cursor = stores.cursors.load_cursor(&settings.source_id()).await?;
    let Some(stream) = q.stream.or_else(|| cursor.map(|c| c.stream)) else {
        bail!(
            "no stream: the chunker has not started on {}; name one with --stream",
            settings.source_id()
        );
    };
    // Only a stream that exists: rebuilding one without a head would start it.
    if stores.state.load_head(&stream).await?.is_none() {
        bail!("stream {stream} has no detector head: no chunk of it was applied yet");
    }
    let mut detector = Detector::load(
        stores.clone(),
        Arc::new(NoOutputs),
        DetectorSettings::from_config(config),
        txpipe::clock::system(),
    )
    .await?;
    detector.load_stream(&stream).await?;
    let Some((head, engine, pending)) = detector.warm_state(&stream) else {
        bail!("stream {stream}: its state did not load");
    };
    let cfg = engine.config();
    let mut out = String::new();
    let totals = &head.totals;
    writeln!(
        out,
        "stream {stream}: {} chunks applied ({} rows, {} rejected){}",
        head.next_chunk,
        totals.rows,
        totals.rejected,
        if head.finished { ", finished" } else { "" }
    )?;
    let Some(m) = engine.explain_merchant(q.merchant) else {
        writeln!(
            out,
            "merchant {}: no transaction in this stream",
            q.merchant
        )?;
        return Ok(out);
    };
    let emitted = EmittedDetections::read(&stores, config, &stream, q.merchant, pending).await?;
    describe_merchant(&mut out, &m, cfg, &emitted)?;
    if let Some(customer) = q.customer {
        match engine.explain_pair(q.merchant, customer) {
            None => writeln!(
                out,
                "\ncustomer {customer}: no transaction at {}",
                q.merchant
            )?,
            Some(p) => describe_pair(&mut out, &p, &m, cfg, &emitted)?,
        }
    }
    Ok(out)
}

fn yes(holds: bool) -> &'static str {
    if holds {
        "yes"
    } else {
        "no"
    }
}

fn weight_text(w: &Weight) -> String {
    readable(w.micros_sum(), u128::from(w.rows()) * 1_000_000)
}

/// An exact value for a person: a fraction gets its value to 4 decimals beside it
/// (`55033/9520 (≈ 5.7808)`); the evidence itself stays exact only.
fn readable(num: i128, den: u128) -> String {
    let exact = exact_fraction(num, den);
    match exact.contains('/') {
        true => format!("{exact} (≈ {:.4})", num as f64 / den as f64),
        false => exact,
    }
}

fn percent(bp: u64) -> String {
    exact_fraction(i128::from(bp), 100)
}

fn describe_merchant(
    out: &mut String,
    m: &MerchantExplain<'_>,
    cfg: &PatternConfig,
    emitted: &EmittedDetections,
) -> Result<()> {
    let (up, dei) = (Upgrade::new(cfg), Dei::new(cfg));
    let dei_verdict = verdict(&m.verdicts, PatternId::DEI_NEEDED);
    let s = &m.stats;
    writeln!(
        out,
        "merchant {}: {} transactions, {} customers ({} female, {} male)",
        s.merchant, s.txns, s.customers, s.female, s.male
    )?;
    // The verdicts come from the pattern files (through the engine); the clauses are
    // shown beside them.
    let (more, fewer) = (s.female > dei.min_female, s.female < s.male);
    writeln!(
        out,
        "\n{} {}: female customers {} > {}: {}; female {} < male {}: {}",
        PatternId::DEI_NEEDED.id(),
        holds_text(dei_verdict.is_some_and(|v| v.holds.is_some())),
        s.female,
        dei.min_female,
        yes(more),
        s.female,
        s.male,
        yes(fewer)
    )?;
    let dei_emitted = dei_verdict.is_some_and(|v| v.emitted);
    emitted.describe(out, PatternId::DEI_NEEDED, s.merchant, "", dei_emitted)?;
    for v in m
        .verdicts
        .iter()
        .filter(|v| v.pattern != PatternId::DEI_NEEDED)
    {
        describe_other(out, v, s.merchant, "", emitted)?;
    }
    writeln!(
        out,
        "\n{} thresholds at {}: merchant transactions {} > {}: {}",
        PatternId::UPGRADE.id(),
        s.merchant,
        s.txns,
        up.min_merchant_txns,
        yes(s.txns > up.min_merchant_txns)
    )?;
    match &m.upgrade {
        None => writeln!(out, "  no customer of it has a weight: nobody can qualify")?,
        Some(t) => {
            writeln!(
                out,
                "  top {} % of counts: rank {} of {} customers (lowest first), count {}",
                percent(up.top_bp),
                t.top_rank,
                t.customers,
                t.count_at_top_rank
            )?;
            writeln!(
                out,
                "  bottom {} % of weights: rank {} of {} weighted customers (lowest first), weight {}",
                percent(up.bottom_bp),
                t.bottom_rank,
                t.weighted_customers,
                weight_text(&t.weight_at_bottom_rank)
            )?;
        }
    }
    Ok(())
}

fn holds_text(holds: bool) -> &'static str {
    if holds {
        "holds now"
    } else {
        "does not hold now"
    }
}

fn describe_pair(
    out: &mut String,
    p: &PairExplain<'_>,
    m: &MerchantExplain<'_>,
    cfg: &PatternConfig,
    emitted: &EmittedDetections,
) -> Result<()> {
    let (up, child) = (Upgrade::new(cfg), Child::new(cfg));
    let holds = |id| verdict(&p.verdicts, id).is_some_and(|v| v.holds.is_some());
    let was_emitted = |id| verdict(&p.verdicts, id).is_some_and(|v| v.emitted);
    let s = &p.stats;
    let average = readable(s.cents as i128, u128::from(s.txns) * 100);
    writeln!(
        out,
        "\ncustomer {} at {}: {} transactions, Rs {}.{:02} (average Rs {}), gender {}, weight {}",
        s.customer,
        s.merchant,
        s.txns,
        s.cents / 100,
        s.cents % 100,
        average,
        s.gender.as_str(),
        s.weight
            .as_ref()
            .map_or("none (not in the importance file)".into(), weight_text)
    )?;
    let enough = s.txns >= child.min_txns;
    let below = s.cents < u128::from(child.avg_below_cents) * u128::from(s.txns);
    writeln!(
        out,
        "\n{} {}: transactions {} >= {}: {}; average Rs {} < Rs {}: {}",
        PatternId::CHILD.id(),
        holds_text(holds(PatternId::CHILD)),
        s.txns,
        child.min_txns,
        yes(enough),
        average,
        exact_fraction(i128::from(child.avg_below_cents), 100),
        yes(below)
    )?;
    emitted.describe(
        out,
        PatternId::CHILD,
        s.merchant,
        s.customer,
        was_emitted(PatternId::CHILD),
    )?;
    let big = m.stats.txns > up.min_merchant_txns;
    let (top, bottom) = match (&m.upgrade, &s.weight) {
        (Some(t), Some(w)) => (s.txns >= t.count_at_top_rank, *w <= t.weight_at_bottom_rank),
        (Some(t), None) => (s.txns >= t.count_at_top_rank, false),
        (None, _) => (false, false),
    };
    writeln!(
        out,
        "\n{} {}: merchant transactions {} > {}: {}; count {} at or above the top rank's {}: {}; weight {} at or below the bottom rank's {}: {}",
        PatternId::UPGRADE.id(),
        holds_text(holds(PatternId::UPGRADE)),
        m.stats.txns,
        up.min_merchant_txns,
        yes(big),
        s.txns,
        m.upgrade.map_or("-".into(), |t| t.count_at_top_rank.to_string()),
        yes(top),
        s.weight.as_ref().map_or("none".into(), weight_text),
        m.upgrade
            .map_or("-".into(), |t| weight_text(&t.weight_at_bottom_rank)),
        yes(bottom)
    )?;
    emitted.describe(
        out,
        PatternId::UPGRADE,
        s.merchant,
        s.customer,
        was_emitted(PatternId::UPGRADE),
    )?;
    let described = [PatternId::UPGRADE, PatternId::CHILD];
    for v in p
        .verdicts
        .iter()
        .filter(|v| !described.contains(&v.pattern))
    {
        describe_other(out, v, s.merchant, s.customer, emitted)?;
    }
    Ok(())
}

/// A pattern the lines above do not reason about (one added since): its verdict, and
/// its evidence when it holds now.
fn describe_other(
    out: &mut String,
    v: &Verdict,
    merchant: &str,
    customer: &str,
    emitted: &EmittedDetections,
) -> Result<()> {
    let (id, action) = (v.pattern.id(), v.pattern.action());
    writeln!(out, "\n{id} {action} {}", holds_text(v.holds.is_some()))?;
    if let Some(why) = &v.holds {
        writeln!(out, "  why now: {}", why.to_json())?;
    }
    emitted.describe(out, v.pattern, merchant, customer, v.emitted)
}

/// The stream's emitted detections with their evidence: the evidence files in S3, and
/// the detections still waiting for their file (kept in the head).
struct EmittedDetections {
    /// (patternId, merchant, customer) → (where, chunk, evidence JSON).
    found: HashMap<(String, String, String), (String, u64, String)>,
}

impl EmittedDetections {
    async fn read(
        stores: &Stores,
        config: &Config,
        stream: &StreamName,
        merchant: &str,
        pending: &[Detection],
    ) -> Result<Self> {
        let bucket = &config.bucket;
        let mut found = HashMap::new();
        let keys = stores
            .objects
            .list(bucket, &stream.evidence_prefix())
            .await?;
        // Read 16 at a time: a long stream has thousands of files.
        let mut files = futures_util::stream::iter(keys)
            .map(|key| async move {
                let object = stores.objects.get(bucket, &key).await?;
                anyhow::Ok((key, object.map(|o| o.bytes).unwrap_or_default()))
            })
            .buffered(16);
        while let Some(file) = files.next().await {
            let (key, bytes) = file?;
            for (i, line) in String::from_utf8_lossy(&bytes).lines().enumerate() {
                let v: serde_json::Value = serde_json::from_str(line)?;
                let text = |f: &str| v[f].as_str().unwrap_or_default().to_string();
                // Only the merchant asked about is kept.
                if text("MerchantId") != merchant {
                    continue;
                }
                found.insert(
                    (text("patternId"), text("MerchantId"), text("customerName")),
                    (
                        format!("{key} line {}", i + 1),
                        v["chunk"].as_u64().unwrap_or_default(),
                        v["evidence"].to_string(),
                    ),
                );
            }
        }
        for d in pending {
            found.insert(
                (
                    d.key.pattern.id().to_string(),
                    d.key.merchant.clone(),
                    d.key.customer.clone(),
                ),
                (
                    "waiting for its detection file (in the head)".to_string(),
                    d.chunk,
                    d.evidence
                        .clone()
                        .map_or("null".to_string(), |e| e.to_json().to_string()),
                ),
            );
        }
        Ok(EmittedDetections { found })
    }

    fn describe(
        &self,
        out: &mut String,
        pattern: PatternId,
        merchant: &str,
        customer: &str,
        flagged: bool,
    ) -> Result<()> {
        let key = (
            pattern.id().to_string(),
            merchant.to_string(),
            customer.to_string(),
        );
        match (self.found.get(&key), flagged) {
            (Some((at, chunk, evidence)), _) => writeln!(
                out,
                "  emitted at chunk {chunk} ({at}); evidence then: {evidence}"
            )?,
            (None, true) => writeln!(
                out,
                "  emitted (the state says so), but no evidence line names it: a detection published before evidence was kept"
            )?,
            (None, false) => writeln!(out, "  not emitted")?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use txpipe::evidence::Evidence;

    #[test]
    fn a_pattern_added_since_gets_its_verdict_and_evidence() {
        let id = PatternId::new(4, "PatId4", "BIG-SPENDER");
        let why = Evidence::Values(vec![("txns".into(), "21".into())]);
        let emitted = EmittedDetections {
            found: HashMap::from([(
                ("PatId4".to_string(), "M1".to_string(), "C1".to_string()),
                (
                    "evidence/s/00000000.jsonl line 1".to_string(),
                    3,
                    why.to_json().to_string(),
                ),
            )]),
        };
        let mut out = String::new();
        let holding = Verdict {
            pattern: id,
            holds: Some(why),
            emitted: true,
        };
        describe_other(&mut out, &holding, "M1", "C1", &emitted).unwrap();
        let idle = Verdict {
            pattern: id,
            holds: None,
            emitted: false,
        };
        describe_other(&mut out, &idle, "M1", "C2", &emitted).unwrap();
        assert_eq!(
            out,
            "\nPatId4 BIG-SPENDER holds now\n  why now: {\"txns\":\"21\"}\n  emitted at chunk 3 \
             (evidence/s/00000000.jsonl line 1); evidence then: {\"txns\":\"21\"}\n\
             \nPatId4 BIG-SPENDER does not hold now\n  not emitted\n"
        );
    }
}
