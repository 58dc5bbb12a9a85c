//! The seam between the engine and its patterns holds: two patterns defined here, in
//! the test and nowhere else — PatId4 BIG-SPENDER (a customer with more than 20
//! transactions at one merchant whose average is above Rs 5,000; once per pair) and
//! PatId5 CROWDED (a merchant with more than 3 customers; once per merchant) — run
//! beside the three registered ones through the engine, the delta codec, the snapshot
//! codec, a rebuild from either, the pending detections a stream's head carries, and
//! `explain`'s verdicts, using only the core's public API (no engine file knows them).

use std::fmt::Write as _;
use std::sync::Arc;
use txpipe_core::batch::DetectionBatcher;
use txpipe_core::detection::{Detection, DetectionKey};
use txpipe_core::engine::verdict;
use txpipe_core::evidence::{exact_fraction, Evidence};
use txpipe_core::patterns::{Asks, MerchantFacts, PairFacts, Pattern, Patterns};
use txpipe_core::{ChunkDelta, Engine, ImportanceTable, PatternConfig, PatternId};

/// PatId4: more than `min_txns` transactions at one merchant, averaging above
/// `avg_above_cents`.
#[derive(Debug)]
struct BigSpender {
    min_txns: u64,
    avg_above_cents: u64,
}

const BIG_SPENDER: PatternId = PatternId::new(4, "PatId4", "BIG-SPENDER");

impl Pattern for BigSpender {
    fn id(&self) -> PatternId {
        BIG_SPENDER
    }

    fn asks(&self) -> Asks {
        Asks::TouchedPairs
    }

    fn fingerprint(&self) -> String {
        format!("big>{}:avg>{}", self.min_txns, self.avg_above_cents)
    }

    fn evidence_fields(&self) -> &'static [&'static str] {
        &["txns", "averageRupees"]
    }

    fn pair(&self, pair: &PairFacts) -> Option<Evidence> {
        let holds = pair.txns > self.min_txns
            && pair.cents > u128::from(self.avg_above_cents) * u128::from(pair.txns);
        holds.then(|| {
            Evidence::Values(vec![
                ("txns".into(), pair.txns.to_string()),
                (
                    "averageRupees".into(),
                    exact_fraction(pair.cents as i128, u128::from(pair.txns) * 100),
                ),
            ])
        })
    }
}

/// PatId5: a merchant with more than `min_customers` customers.
#[derive(Debug)]
struct Crowded {
    min_customers: u64,
}

const CROWDED: PatternId = PatternId::new(5, "PatId5", "CROWDED");

impl Pattern for Crowded {
    fn id(&self) -> PatternId {
        CROWDED
    }

    fn asks(&self) -> Asks {
        Asks::TouchedMerchants
    }

    fn fingerprint(&self) -> String {
        format!("crowded>{}", self.min_customers)
    }

    fn evidence_fields(&self) -> &'static [&'static str] {
        &["customers"]
    }

    fn merchant(&self, merchant: &MerchantFacts<'_>) -> Option<Evidence> {
        let customers = merchant.by_count.len();
        (customers > self.min_customers)
            .then(|| Evidence::Values(vec![("customers".into(), customers.to_string())]))
    }
}

fn patterns() -> Patterns {
    Patterns::registered(PatternConfig::default())
        .with(Arc::new(BigSpender {
            min_txns: 20,
            avg_above_cents: 500_000,
        }))
        .with(Arc::new(Crowded { min_customers: 3 }))
}

fn weights() -> Arc<ImportanceTable> {
    let csv = "Source,Target,Weight,typeTrans,fraud\n'C1','M1',1.5,'es_food',0\n";
    Arc::new(ImportanceTable::parse(csv.as_bytes()).unwrap().table)
}

/// A chunk of `(customer, merchant, amount, how many)` rows.
fn chunk(rows: &[(&str, &str, &str, usize)]) -> String {
    let mut s = String::from(
        "step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud\n",
    );
    for &(c, m, amount, n) in rows {
        for _ in 0..n {
            writeln!(
                s,
                "0,'{c}','3','F','28007','{m}','28007','es_food',{amount},0"
            )
            .unwrap();
        }
    }
    s
}

/// The stream: C1 reaches 21 transactions above Rs 5,000 in chunk 1 (and buys again in
/// chunk 2: emitted once); C2 stops at exactly 20; C3's average is exactly Rs 5,000;
/// M1 gets its fourth customer in chunk 2; C5 qualifies in chunk 3.
fn stream() -> Vec<String> {
    vec![
        chunk(&[("C1", "M1", "6000.00", 15), ("C2", "M1", "9000", 20)]),
        chunk(&[("C1", "M1", "6000.00", 6), ("C3", "M1", "5000.00", 30)]),
        chunk(&[
            ("C1", "M1", "7000", 1),
            ("C4", "M1", "1", 1),
            ("C5", "M2", "5001", 10),
        ]),
        chunk(&[("C1", "M1", "7000", 1), ("C5", "M2", "5001", 11)]),
    ]
}

fn key(pattern: PatternId, merchant: &str, customer: &str) -> DetectionKey {
    DetectionKey {
        pattern,
        merchant: merchant.into(),
        customer: customer.into(),
    }
}

#[test]
fn a_pattern_defined_outside_the_engine_fires_once_with_its_evidence() {
    let mut e = Engine::with_patterns(patterns(), weights());
    let mut found = Vec::new();
    for (k, text) in stream().iter().enumerate() {
        let out = e.apply_chunk(k as u64, text.as_bytes(), 1).unwrap();
        for (d, why) in out.detections.iter().zip(&out.evidence) {
            found.push((k, d.clone(), why.to_json().to_string()));
        }
    }
    assert_eq!(
        found,
        vec![
            (
                1,
                key(BIG_SPENDER, "M1", "C1"),
                r#"{"averageRupees":"6000","txns":"21"}"#.to_string()
            ),
            (
                2,
                key(CROWDED, "M1", ""),
                r#"{"customers":"4"}"#.to_string()
            ),
            (
                3,
                key(BIG_SPENDER, "M2", "C5"),
                r#"{"averageRupees":"5001","txns":"21"}"#.to_string()
            ),
        ]
    );
    let totals = e.totals().detections;
    assert_eq!(
        totals.to_string(),
        "PatId1 0, PatId2 0, PatId3 0, PatId4 2, PatId5 1"
    );
    // `txpipe explain` asks it as a chunk does.
    let pair = e.explain_pair("M1", "C1").unwrap();
    let v = verdict(&pair.verdicts, BIG_SPENDER).unwrap();
    assert!(v.emitted && v.holds.is_some(), "{v:?}");
    let other = e.explain_pair("M1", "C2").unwrap();
    let v = verdict(&other.verdicts, BIG_SPENDER).unwrap();
    assert!(
        !v.emitted && v.holds.is_none(),
        "exactly 20 transactions: {v:?}"
    );
    let m = e.explain_merchant("M1").unwrap();
    let v = verdict(&m.verdicts, CROWDED).unwrap();
    assert_eq!(
        v.holds.as_ref().map(|e| e.to_json().to_string()),
        Some(r#"{"customers":"4"}"#.to_string())
    );
    // Its settings are pinned with the stream like the registered ones'.
    assert!(e
        .patterns()
        .fingerprint()
        .ends_with(";big>20:avg>500000;crowded>3"));
    // The output record names it and its action.
    let line = Detection {
        key: key(BIG_SPENDER, "M1", "C1"),
        chunk: 1,
        y_start: chrono::DateTime::UNIX_EPOCH,
        detected_at: chrono::DateTime::UNIX_EPOCH,
        evidence: None,
    }
    .to_json_line();
    assert!(
        line.contains(r#""patternId":"PatId4","ActionType":"BIG-SPENDER""#),
        "{line}"
    );
}

#[test]
fn deltas_and_snapshots_carry_it_and_a_rebuild_never_emits_it_again() {
    let texts = stream();
    let mut live = Engine::with_patterns(patterns(), weights());
    let mut from_deltas = Engine::with_patterns(patterns(), weights());
    for (k, text) in texts[..3].iter().enumerate() {
        let delta = live
            .apply_chunk(k as u64, text.as_bytes(), 1)
            .unwrap()
            .delta;
        let stored = ChunkDelta::decode(&delta.encode()).unwrap();
        assert_eq!(stored, delta);
        from_deltas.apply_delta(&stored).unwrap();
    }
    assert_eq!(from_deltas.encode_snapshot(), live.encode_snapshot());
    assert_eq!(from_deltas.totals(), live.totals());

    // A snapshot in parts of one item each, decoded on two threads.
    let parts = live.encode_snapshot_parts(1);
    assert!(parts.len() > 1);
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    let mut rebuilt = Engine::decode_snapshot_parts_on(&refs, patterns(), weights(), 2).unwrap();
    assert_eq!(rebuilt.encode_snapshot(), live.encode_snapshot());

    // Chunk 3: C1 (already emitted) buys again, C5 newly holds — the same on all three.
    for e in [&mut live, &mut from_deltas, &mut rebuilt] {
        let out = e.apply_chunk(3, texts[3].as_bytes(), 1).unwrap();
        assert_eq!(out.detections, vec![key(BIG_SPENDER, "M2", "C5")]);
    }
    assert_eq!(rebuilt.encode_snapshot(), live.encode_snapshot());

    // A build that does not run PatId4 refuses the state rather than emit it again.
    let bytes = live.encode_snapshot();
    let without =
        Patterns::registered(PatternConfig::default()).with(Arc::new(Crowded { min_customers: 3 }));
    let err = Engine::decode_snapshot(&bytes, without, weights()).unwrap_err();
    assert!(err.to_string().contains("PatId4"), "{err}");
    // … and a delta naming it.
    let mut fresh = Engine::new(PatternConfig::default(), weights());
    let first = Engine::with_patterns(patterns(), weights())
        .apply_chunk(0, texts[0].as_bytes(), 1)
        .unwrap()
        .delta;
    assert!(fresh.apply_delta(&first).is_ok(), "chunk 0 fires nothing");
    let mut second = Engine::with_patterns(patterns(), weights());
    second.apply_chunk(0, texts[0].as_bytes(), 1).unwrap();
    let delta = second.apply_chunk(1, texts[1].as_bytes(), 1).unwrap().delta;
    let err = fresh.apply_delta(&delta).unwrap_err();
    assert!(err.to_string().contains("PatId4"), "{err}");
}

#[test]
fn a_pending_detection_of_it_survives_the_head() {
    let mut e = Engine::with_patterns(patterns(), weights());
    let mut batcher = DetectionBatcher::new(50);
    for (k, text) in stream().iter().enumerate() {
        let out = e.apply_chunk(k as u64, text.as_bytes(), 1).unwrap();
        let detections = out
            .detections
            .into_iter()
            .zip(out.evidence)
            .map(|(key, why)| Detection {
                key,
                chunk: k as u64,
                y_start: chrono::DateTime::UNIX_EPOCH,
                detected_at: chrono::DateTime::UNIX_EPOCH,
                evidence: Some(why),
            });
        assert!(batcher.push(detections).is_empty());
    }
    let stored = batcher.encode_pending(&e).unwrap();
    let back = DetectionBatcher::restore(50, 0, &stored, &e).unwrap();
    assert!(back == batcher);
    let lines: Vec<String> = back
        .pending()
        .iter()
        .map(Detection::evidence_line)
        .collect();
    assert!(
        lines[0].contains(r#""patternId":"PatId4""#)
            && lines[0].contains(r#""averageRupees":"6000""#),
        "{lines:?}"
    );
}
