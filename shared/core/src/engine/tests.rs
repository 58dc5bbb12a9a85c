//! Engine tests: one or more per rule of docs/behaviour.md at its boundaries, delta/snapshot round
//! trips, and a property test against a plain recompute-from-scratch reference.

use super::*;
use crate::detection::PatternId;
const UPGRADE: PatternId = PatternId::UPGRADE;
const CHILD: PatternId = PatternId::CHILD;
const DEI: PatternId = PatternId::DEI_NEEDED;
use crate::parse::RejectReason;
use proptest::prelude::*;
use std::fmt::Write as _;

const HEADER: &str =
    "step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud\n";

/// A transaction in a test: customer, gender, merchant, amount text.
type Row<'a> = (&'a str, &'a str, &'a str, &'a str);

fn chunk_text(rows: &[Row]) -> String {
    let mut s = HEADER.to_string();
    for (c, g, m, a) in rows {
        writeln!(s, "0,'{c}','3','{g}','28007','{m}','28007','es_food',{a},0").unwrap();
    }
    s
}

fn importance(rows: &[(&str, &str, &str)]) -> Arc<ImportanceTable> {
    let mut s = String::from("Source,Target,Weight,typeTrans,fraud\n");
    for (c, m, w) in rows {
        writeln!(s, "'{c}','{m}',{w},'es_food',0").unwrap();
    }
    Arc::new(ImportanceTable::parse(s.as_bytes()).unwrap().table)
}

fn engine(config: PatternConfig, weights: Arc<ImportanceTable>) -> Engine {
    Engine::new(config, weights)
}

fn apply(e: &mut Engine, rows: &[Row]) -> Vec<(PatternId, String, String)> {
    let k = e.next_chunk();
    let out = e
        .apply_chunk(k, chunk_text(rows).as_bytes(), k * 1000 + 1)
        .unwrap();
    out.detections
        .into_iter()
        .map(|d| (d.pattern, d.merchant, d.customer))
        .collect()
}

fn det(p: PatternId, m: &str, c: &str) -> (PatternId, String, String) {
    (p, m.to_string(), c.to_string())
}

fn repeat<'a>(row: Row<'a>, n: usize) -> Vec<Row<'a>> {
    vec![row; n]
}

// ---- PatId2 CHILD ----

#[test]
fn child_needs_80_transactions() {
    let mut e = engine(PatternConfig::default(), Arc::default());
    assert!(apply(&mut e, &repeat(("C1", "M", "M1", "1.00"), 79)).is_empty());
    assert_eq!(
        apply(&mut e, &[("C1", "M", "M1", "1.00")]),
        vec![det(CHILD, "M1", "C1")]
    );
}

#[test]
fn child_average_exactly_23_is_not_below() {
    let mut e = engine(PatternConfig::default(), Arc::default());
    assert!(apply(&mut e, &repeat(("C1", "M", "M1", "23.00"), 80)).is_empty());
    // 79 × 23.00 + 22.20 → average 22.99: below.
    let mut rows = repeat(("C2", "M", "M1", "23.00"), 79);
    rows.push(("C2", "M", "M1", "22.20"));
    assert_eq!(apply(&mut e, &rows), vec![det(CHILD, "M1", "C2")]);
}

#[test]
fn child_average_uses_exact_cents() {
    // 80 × 22.995 cannot be written; 40 × 22.99 + 40 × 23.01 averages exactly 23.00.
    let mut rows = repeat(("C1", "M", "M1", "22.99"), 40);
    rows.extend(repeat(("C1", "M", "M1", "23.01"), 40));
    let mut e = engine(PatternConfig::default(), Arc::default());
    assert!(apply(&mut e, &rows).is_empty());
}

#[test]
fn child_is_emitted_once_even_after_the_condition_flips() {
    let mut e = engine(PatternConfig::default(), Arc::default());
    assert_eq!(
        apply(&mut e, &repeat(("C1", "M", "M1", "1.00"), 80)).len(),
        1
    );
    // Average rises far above 23, then falls below again: no second detection.
    assert!(apply(&mut e, &[("C1", "M", "M1", "9000.00")]).is_empty());
    assert!(apply(&mut e, &repeat(("C1", "M", "M1", "0"), 2000)).is_empty());
    assert_eq!(
        e.totals().detections.to_string(),
        "PatId1 0, PatId2 1, PatId3 0"
    );
}

// ---- PatId3 DEI-NEEDED ----

fn customers(prefix: &str, gender: &'static str, n: usize) -> Vec<(String, &'static str)> {
    (0..n).map(|i| (format!("{prefix}{i}"), gender)).collect()
}

fn dei_rows(female: usize, male: usize) -> Vec<(String, &'static str)> {
    let mut v = customers("F", "F", female);
    v.extend(customers("X", "M", male));
    v
}

fn apply_owned(
    e: &mut Engine,
    rows: &[(String, &str)],
    merchant: &str,
) -> Vec<(PatternId, String, String)> {
    let rows: Vec<Row> = rows
        .iter()
        .map(|(c, g)| (c.as_str(), *g, merchant, "100.00"))
        .collect();
    apply(e, &rows)
}

#[test]
fn dei_needs_more_than_100_female_and_fewer_female_than_male() {
    let mut e = engine(PatternConfig::default(), Arc::default());
    assert!(
        apply_owned(&mut e, &dei_rows(100, 150), "M1").is_empty(),
        "100 female is not more than 100"
    );
    assert_eq!(
        apply_owned(&mut e, &customers("G", "F", 1), "M1"),
        vec![det(DEI, "M1", "")]
    );
    let mut e = engine(PatternConfig::default(), Arc::default());
    assert!(
        apply_owned(&mut e, &dei_rows(101, 101), "M2").is_empty(),
        "F == M is not fewer"
    );
    assert_eq!(
        apply_owned(&mut e, &customers("Y", "M", 1), "M2"),
        vec![det(DEI, "M2", "")]
    );
}

#[test]
fn dei_counts_only_exact_f_and_m() {
    let mut e = engine(PatternConfig::default(), Arc::default());
    let mut rows = dei_rows(101, 101);
    rows.extend(customers("E", "E", 50));
    rows.extend(customers("U", "U", 50));
    rows.extend(customers("L", "m", 50));
    assert!(apply_owned(&mut e, &rows, "M1").is_empty());
}

#[test]
fn gender_is_the_first_valid_transactions() {
    let mut e = engine(PatternConfig::default(), Arc::default());
    // 101 customers first seen as F (then also as M), 102 male customers.
    let mut rows = dei_rows(101, 102);
    rows.extend(customers("F", "M", 101));
    assert_eq!(apply_owned(&mut e, &rows, "M1"), vec![det(DEI, "M1", "")]);
    let m = e.merchants().next().unwrap();
    assert_eq!((m.female, m.male, m.customers), (101, 102, 203));
}

#[test]
fn rejected_first_row_does_not_fix_gender() {
    let mut e = engine(PatternConfig::default(), Arc::default());
    apply(
        &mut e,
        &[("C1", "M", "M1", "bad"), ("C1", "F", "M1", "1.00")],
    );
    assert_eq!(e.pair("M1", "C1").unwrap().gender, Gender::Female);
}

// ---- PatId1 UPGRADE ----

fn small_upgrade(min: u64, top_bp: u64, bottom_bp: u64) -> PatternConfig {
    PatternConfig::default()
        .with(&crate::patterns::upgrade::MIN_MERCHANT_TXNS, min)
        .with(&crate::patterns::upgrade::TOP_BP, top_bp)
        .with(&crate::patterns::upgrade::BOTTOM_BP, bottom_bp)
}

#[test]
fn upgrade_needs_more_than_50000_merchant_transactions() {
    // C1: top count and lowest weight. N(M1) = 50,000 exactly: not more, no UPGRADE.
    let weights = importance(&[("C1", "M1", "1.0"), ("C2", "M1", "5.0")]);
    let mut e = engine(PatternConfig::default(), weights);
    let mut rows = repeat(("C2", "M", "M1", "1.00"), 2);
    rows.extend(repeat(("C1", "M", "M1", "1.00"), 49_998));
    assert!(
        apply(&mut e, &rows).iter().all(|d| d.0 != UPGRADE),
        "N = 50,000 is not more"
    );
    // One more transaction, by another customer: N = 50,001 and C1 qualifies untouched.
    assert_eq!(
        apply(&mut e, &[("C2", "M", "M1", "1.00")]),
        vec![det(UPGRADE, "M1", "C1")]
    );
}

#[test]
fn upgrade_needs_both_top_count_and_bottom_weight() {
    // Counts {3, 49998}: top 1 % is C2; weights {C1: 1, C2: 5}: bottom 1 % is C1.
    let weights = importance(&[("C1", "M1", "1.0"), ("C2", "M1", "5.0")]);
    let mut e = engine(PatternConfig::default(), weights);
    let mut rows = repeat(("C1", "M", "M1", "1.00"), 3);
    rows.extend(repeat(("C2", "M", "M1", "1.00"), 49_998));
    assert!(apply(&mut e, &rows).iter().all(|d| d.0 != UPGRADE));
}

#[test]
fn upgrade_ties_at_both_thresholds_all_qualify() {
    // Counts {5,5,5,1}: top 25 % (2500 bp → q 7500, rank 3) is 5; all three 5s qualify.
    // Weights {1,1,2,3}: bottom 50 % rank 2 is 1: both weight-1 customers qualify.
    let weights = importance(&[
        ("A", "M1", "1"),
        ("B", "M1", "1"),
        ("C", "M1", "2"),
        ("D", "M1", "1"),
    ]);
    let mut e = engine(small_upgrade(0, 2500, 5000), weights);
    let mut rows = repeat(("A", "M", "M1", "1"), 5);
    rows.extend(repeat(("B", "M", "M1", "1"), 5));
    rows.extend(repeat(("C", "M", "M1", "1"), 5));
    rows.push(("D", "M", "M1", "1"));
    let ups: Vec<_> = apply(&mut e, &rows)
        .into_iter()
        .filter(|d| d.0 == UPGRADE)
        .collect();
    assert_eq!(ups, vec![det(UPGRADE, "M1", "A"), det(UPGRADE, "M1", "B")]);
}

#[test]
fn upgrade_percentile_uses_integer_rank_300_customers() {
    // 300 customers with weights 1..=300 at 100 bp: rank ceil(3.0) = 3, so Tweight is 3
    // (floating point would give rank 4 and let customer 4 in).
    let names: Vec<String> = (1..=300).map(|i| format!("C{i:03}")).collect();
    let weight_text: Vec<String> = (1..=300).map(|i| i.to_string()).collect();
    let rows: Vec<(&str, &str, &str)> = names
        .iter()
        .zip(&weight_text)
        .map(|(c, w)| (c.as_str(), "M1", w.as_str()))
        .collect();
    let mut e = engine(small_upgrade(0, 9999, 100), importance(&rows));
    // Everyone has count 1, top_bp 9999 → q = 1 bp → Tcount is the minimum: all qualify by count.
    let txns: Vec<Row> = names
        .iter()
        .map(|c| (c.as_str(), "F", "M1", "1.00"))
        .collect();
    let ups: Vec<_> = apply(&mut e, &txns)
        .into_iter()
        .filter(|d| d.0 == UPGRADE)
        .map(|d| d.2)
        .collect();
    assert_eq!(ups, vec!["C001", "C002", "C003"]);
}

#[test]
fn upgrade_single_customer_population() {
    let mut e = engine(small_upgrade(0, 100, 100), importance(&[("C1", "M1", "7")]));
    assert_eq!(
        apply(&mut e, &[("C1", "F", "M1", "1")]),
        vec![det(UPGRADE, "M1", "C1")]
    );
}

#[test]
fn upgrade_ignores_customers_without_weight() {
    // C2 has no weight: it is not in the weight population and never qualifies, even
    // with the top count.
    // top_bp 1 → q 9999: with two customers Tcount is the larger count.
    let mut e = engine(
        small_upgrade(0, 1, 10_000),
        importance(&[("C1", "M1", "9")]),
    );
    let mut rows = repeat(("C2", "F", "M1", "1"), 5);
    rows.push(("C1", "F", "M1", "1"));
    assert!(apply(&mut e, &rows).is_empty());
    assert_eq!(
        apply(&mut e, &repeat(("C1", "F", "M1", "1"), 9)),
        vec![det(UPGRADE, "M1", "C1")]
    );
}

#[test]
fn upgrade_weight_is_per_merchant_mean_as_fraction() {
    // C1 at M1: mean(1, 2) = 1.5 exactly, tying C2's 1.5; C3's 1.500001 is above. C3's
    // weight at M2 must not leak into M1. Bottom 6666 bp of 3 → rank 2 → Tweight 1.5.
    let w = importance(&[
        ("C1", "M1", "1"),
        ("C1", "M1", "2"),
        ("C2", "M1", "1.5"),
        ("C3", "M1", "1.500001"),
        ("C3", "M2", "0"),
    ]);
    let mut e = engine(small_upgrade(0, 9999, 6666), w);
    let ups: Vec<_> = apply(
        &mut e,
        &[
            ("C1", "F", "M1", "1"),
            ("C2", "F", "M1", "1"),
            ("C3", "F", "M1", "1"),
        ],
    )
    .into_iter()
    .map(|d| d.2)
    .collect();
    assert_eq!(ups, vec!["C1", "C2"]);
}

#[test]
fn upgrade_untouched_customer_qualifies_when_threshold_moves() {
    // C1 has the only weight below the rest. Count threshold drops when many count-1
    // customers arrive, letting C1 (untouched in that chunk) qualify.
    let w = importance(&[
        ("C1", "M1", "1"),
        ("B0", "M1", "9"),
        ("B1", "M1", "9"),
        ("B2", "M1", "9"),
    ]);
    let mut e = engine(small_upgrade(0, 5000, 2500), w);
    let mut rows = repeat(("B0", "F", "M1", "1"), 3);
    rows.extend(repeat(("B1", "F", "M1", "1"), 3));
    rows.extend(repeat(("B2", "F", "M1", "1"), 3));
    rows.push(("C1", "F", "M1", "1"));
    let first = apply(&mut e, &rows);
    // Counts {1,3,3,3}: median rank 2 → 3; C1 (count 1) not in; B* have weight 9 > Tweight 1.
    assert!(first.is_empty(), "{first:?}");
    let newcomers: Vec<String> = (0..10).map(|i| format!("N{i}")).collect();
    let rows: Vec<Row> = newcomers
        .iter()
        .map(|c| (c.as_str(), "F", "M1", "1"))
        .collect();
    // Counts now ten 1s, C1's 1, three 3s: median is 1 → C1 qualifies without a new row.
    assert_eq!(apply(&mut e, &rows), vec![det(UPGRADE, "M1", "C1")]);
}

// ---- ordering, order of application, bad input ----

#[test]
fn detections_in_a_chunk_are_ordered_by_pattern_merchant_customer() {
    let cfg = small_upgrade(0, 0, 10_000)
        .with(&crate::patterns::child::MIN_TXNS, 1)
        .with(&crate::patterns::dei::MIN_FEMALE, 0);
    let w = importance(&[("C2", "M2", "1"), ("C1", "M2", "1")]);
    let mut e = engine(cfg, w);
    let dets = apply(
        &mut e,
        &[
            ("C2", "M", "M2", "1"),
            ("C1", "M", "M2", "1"),
            ("C3", "F", "M1", "1"),
            ("C4", "M", "M1", "1"),
            ("C5", "M", "M1", "1"),
        ],
    );
    assert_eq!(
        dets,
        vec![
            det(UPGRADE, "M2", "C1"),
            det(UPGRADE, "M2", "C2"),
            det(CHILD, "M1", "C3"),
            det(CHILD, "M1", "C4"),
            det(CHILD, "M1", "C5"),
            det(CHILD, "M2", "C1"),
            det(CHILD, "M2", "C2"),
            det(DEI, "M1", ""),
        ]
    );
}

#[test]
fn chunks_apply_in_order_only() {
    let mut e = engine(PatternConfig::default(), Arc::default());
    let text = chunk_text(&[("C1", "F", "M1", "1")]);
    assert!(matches!(
        e.apply_chunk(1, text.as_bytes(), 1),
        Err(ApplyError::OutOfOrder {
            expected: 0,
            got: 1
        })
    ));
    e.apply_chunk(0, text.as_bytes(), 1).unwrap();
    assert!(matches!(
        e.apply_chunk(0, text.as_bytes(), 1),
        Err(ApplyError::OutOfOrder {
            expected: 1,
            got: 0
        })
    ));
}

#[test]
fn rejected_rows_change_nothing_and_are_kept() {
    let mut e = engine(PatternConfig::default(), Arc::default());
    let text = format!("{HEADER}0,'C1','3','F','1','M1','1','x',1.00,0\n0,'C1','3','F','1','M1','1','x',1.001,0\n0,'','3','F','1','M1','1','x',1,0\n");
    let out = e.apply_chunk(0, text.as_bytes(), 10_001).unwrap();
    assert_eq!(
        out.rejected.iter().map(|r| r.row).collect::<Vec<_>>(),
        vec![10_002, 10_003]
    );
    assert_eq!(e.pair("M1", "C1").unwrap().txns, 1);
    assert_eq!(e.totals().rejected, 2);
    assert_eq!(out.delta.rejected, 2);
}

#[test]
fn invalid_utf8_ids_are_rejected_and_state_still_round_trips() {
    let mut e = engine(PatternConfig::default(), Arc::default());
    let mut bytes = HEADER.as_bytes().to_vec();
    bytes.extend_from_slice(b"0,'C\xff','3','F','1','M9','1','x',1.00,0\n0,'C1','3','F','1','M\xfe','1','x',1.00,0\n0,'C1','3','F','1','M1','1','x',1.00,0\n");
    let out = e.apply_chunk(0, &bytes, 1).unwrap();
    let reasons: Vec<_> = out
        .rejected
        .iter()
        .map(|r| (r.row, r.reason.clone()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            (1, RejectReason::NotUtf8 { column: "customer" }),
            (2, RejectReason::NotUtf8 { column: "merchant" })
        ]
    );
    assert_eq!(e.totals().rows, 1);
    let back = Engine::decode_snapshot(
        &e.encode_snapshot(),
        PatternConfig::default(),
        Arc::default(),
    )
    .unwrap();
    assert_eq!(back.encode_snapshot(), e.encode_snapshot());
}

#[test]
fn header_without_amount_rejects_the_chunk() {
    let mut e = engine(PatternConfig::default(), Arc::default());
    let err = e
        .apply_chunk(0, b"customer,gender,merchant\nC1,F,M1\n", 1)
        .unwrap_err();
    assert!(err.to_string().contains("`amount`"), "{err}");
    assert_eq!(
        e.next_chunk(),
        0,
        "a rejected chunk does not advance the engine"
    );
}

// ---- persistence ----

fn sample_stream() -> Vec<Vec<Row<'static>>> {
    vec![
        vec![
            ("C1", "F", "M1", "1.00"),
            ("C2", "M", "M1", "25.10"),
            ("C1", "F", "M2", "3"),
        ],
        vec![
            ("C3", "E", "M1", "0.5"),
            ("C1", "M", "M1", "1.00"),
            ("C9", "F", "M3", "bad"),
        ],
        vec![("C2", "M", "M2", "2"), ("C4", "F", "M4", "4")],
    ]
}

fn sample_config() -> PatternConfig {
    small_upgrade(1, 5000, 5000)
        .with(&crate::patterns::child::MIN_TXNS, 1)
        .with(&crate::patterns::dei::MIN_FEMALE, 0)
}

#[test]
fn deltas_rebuild_the_same_state() {
    let w = importance(&[("C1", "M1", "1"), ("C2", "M1", "2"), ("C2", "M2", "1")]);
    let mut live = engine(sample_config(), w.clone());
    let mut rebuilt = engine(sample_config(), w.clone());
    for rows in sample_stream() {
        let k = live.next_chunk();
        let out = live
            .apply_chunk(k, chunk_text(&rows).as_bytes(), 1)
            .unwrap();
        let delta = ChunkDelta::decode(&out.delta.encode()).unwrap();
        assert_eq!(delta, out.delta);
        rebuilt.apply_delta(&delta).unwrap();
        assert_eq!(rebuilt.encode_snapshot(), live.encode_snapshot());
    }
    let snap = Engine::decode_snapshot(&live.encode_snapshot(), sample_config(), w).unwrap();
    assert_eq!(snap.encode_snapshot(), live.encode_snapshot());
    assert_eq!(snap.totals(), live.totals());
}

#[test]
fn snapshot_then_more_chunks_matches_uninterrupted_run() {
    let w = importance(&[("C1", "M1", "1"), ("C2", "M1", "2")]);
    let stream = sample_stream();
    let mut straight = engine(sample_config(), w.clone());
    let mut all = Vec::new();
    for rows in &stream {
        let k = straight.next_chunk();
        all.extend(
            straight
                .apply_chunk(k, chunk_text(rows).as_bytes(), 1)
                .unwrap()
                .detections,
        );
    }
    let mut first = engine(sample_config(), w.clone());
    let mut resumed_dets = first
        .apply_chunk(0, chunk_text(&stream[0]).as_bytes(), 1)
        .unwrap()
        .detections;
    let mut resumed =
        Engine::decode_snapshot(&first.encode_snapshot(), sample_config(), w).unwrap();
    for (k, rows) in stream.iter().enumerate().skip(1) {
        resumed_dets.extend(
            resumed
                .apply_chunk(k as u64, chunk_text(rows).as_bytes(), 1)
                .unwrap()
                .detections,
        );
    }
    assert_eq!(resumed_dets, all);
    assert_eq!(resumed.encode_snapshot(), straight.encode_snapshot());
}

#[test]
fn corrupt_state_is_an_error_not_a_panic() {
    let e = engine(sample_config(), Arc::default());
    let snap = e.encode_snapshot();
    assert!(Engine::decode_snapshot(b"nope", sample_config(), Arc::default()).is_err());
    assert!(
        Engine::decode_snapshot(&snap[..snap.len() - 1], sample_config(), Arc::default()).is_err()
    );
    assert!(ChunkDelta::decode(b"TXD1\x05\x00\x00\x00\x01").is_err());
    let bad = ChunkDelta {
        chunk: 0,
        rows: 0,
        rejected: 0,
        merchants_before: 3,
        customers_before: 0,
        new_merchants: vec![],
        new_customers: vec![],
        pairs: vec![],
        detections: vec![],
    };
    let mut e = engine(sample_config(), Arc::default());
    assert!(matches!(
        e.apply_delta(&bad),
        Err(ApplyError::BadDelta { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = ChunkDelta::decode(&bytes);
        for magic in [b"TXS1", b"TXS2", b"TXS3"] {
            let mut tagged = magic.to_vec();
            tagged.extend_from_slice(&bytes);
            let _ = Engine::decode_snapshot(&tagged, PatternConfig::default(), Arc::default());
            let _ = Engine::decode_snapshot_parts_on(&[&tagged, &tagged], PatternConfig::default(), Arc::default(), 2);
        }
    }
}

// ---- state at scale: parts, old snapshots, deltas that do not fit, wide sums ----

/// A deterministic stream of `chunks` chunks over 40 customers and 6 merchants, with
/// weights for some pairs, bad rows, and thresholds low enough that every pattern fires.
fn busy_stream(chunks: usize) -> (Vec<String>, Arc<ImportanceTable>) {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let genders = ["F", "M", "E", "M"];
    let mut weights = String::from("Source,Target,Weight,typeTrans,fraud\n");
    for c in 0..40 {
        for m in 0..6 {
            if (c + m) % 3 == 0 {
                writeln!(weights, "'C{c}','M{m}',{}.{},'x',0", next(5), next(10)).unwrap();
            }
        }
    }
    let texts = (0..chunks)
        .map(|_| {
            let mut s = HEADER.to_string();
            for _ in 0..60 {
                let (c, m) = (next(40), next(6));
                let amount = if next(40) == 0 {
                    "bad".to_string()
                } else {
                    format!("{}.{:02}", next(40), next(100))
                };
                writeln!(
                    s,
                    "0,'C{c}','3','{}','1','M{m}','1','x',{amount},0",
                    genders[next(4) as usize]
                )
                .unwrap();
            }
            s
        })
        .collect();
    (
        texts,
        Arc::new(ImportanceTable::parse(weights.as_bytes()).unwrap().table),
    )
}

fn busy_config() -> PatternConfig {
    PatternConfig::default()
        .with(&crate::patterns::upgrade::MIN_MERCHANT_TXNS, 30)
        .with(&crate::patterns::upgrade::TOP_BP, 3000)
        .with(&crate::patterns::upgrade::BOTTOM_BP, 3000)
        .with(&crate::patterns::child::MIN_TXNS, 6)
        .with(&crate::patterns::child::AVG_BELOW_CENTS, 2000)
        .with(&crate::patterns::dei::MIN_FEMALE, 2)
}

fn run_busy(e: &mut Engine, texts: &[String]) -> Vec<DetectionKey> {
    let mut out = Vec::new();
    for text in texts {
        let k = e.next_chunk();
        out.extend(e.apply_chunk(k, text.as_bytes(), 1).unwrap().detections);
    }
    out
}

#[test]
fn busy_stream_fires_every_pattern() {
    let (texts, w) = busy_stream(30);
    let mut e = engine(busy_config(), w);
    run_busy(&mut e, &texts);
    assert!(
        e.totals().detections.iter().all(|(_, n)| n > 0),
        "{:?}",
        e.totals()
    );
}

#[test]
fn snapshot_parts_decode_to_the_same_state_in_any_order() {
    let (texts, w) = busy_stream(30);
    let mut straight = engine(busy_config(), w.clone());
    let want = run_busy(&mut straight, &texts);
    for cut in [0, 1, 12, 29] {
        let mut e = engine(busy_config(), w.clone());
        let mut got = run_busy(&mut e, &texts[..cut]);
        let blob = e.encode_snapshot();
        for max in [64, 300, 4096, usize::MAX] {
            let parts = e.encode_snapshot_parts(max);
            if max == 64 && cut >= 12 {
                assert!(parts.len() > 3, "small parts: {}", parts.len());
            }
            if max != usize::MAX {
                // Bounded unless a part must hold the head.
                assert!(parts[1..].iter().all(|p| p.len() <= max.max(200)));
            } else {
                assert_eq!(parts, vec![blob.clone()]);
            }
            let mut refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            refs.reverse();
            for threads in [1, 3] {
                let back =
                    Engine::decode_snapshot_parts_on(&refs, busy_config(), w.clone(), threads)
                        .unwrap();
                assert_eq!(back.encode_snapshot(), blob, "cut {cut} max {max}");
                assert_eq!(back.totals(), e.totals());
            }
        }
        let mut resumed = Engine::decode_snapshot(&blob, busy_config(), w.clone()).unwrap();
        got.extend(run_busy(&mut resumed, &texts[cut..]));
        assert_eq!(got, want);
        assert_eq!(resumed.encode_snapshot(), straight.encode_snapshot());
    }
}

#[test]
fn parts_must_all_belong_to_one_snapshot() {
    let (texts, w) = busy_stream(10);
    let mut a = engine(busy_config(), w.clone());
    run_busy(&mut a, &texts[..5]);
    let mut b = a.clone();
    run_busy(&mut b, &texts[5..6]);
    let pa = a.encode_snapshot_parts(200);
    let pb = b.encode_snapshot_parts(200);
    assert!(pa.len() >= 3);
    fn refs<'a>(parts: &[&'a Vec<u8>]) -> Vec<&'a [u8]> {
        parts.iter().map(|p| p.as_slice()).collect()
    }
    let decode = |parts: Vec<&[u8]>| {
        Engine::decode_snapshot_parts_on(&parts, busy_config(), w.clone(), 2)
            .err()
            .map(|e| e.to_string())
    };
    let all: Vec<&Vec<u8>> = pa.iter().collect();
    assert_eq!(decode(refs(&all)), None);
    // Missing, repeated, and foreign parts.
    assert!(decode(refs(&all[1..])).is_some());
    let mut repeated = all.clone();
    repeated[1] = all[0];
    assert!(decode(refs(&repeated)).is_some());
    if pb.len() == pa.len() {
        let mut mixed = all.clone();
        mixed[1] = &pb[1];
        assert!(decode(refs(&mixed)).unwrap().contains("snapshot"));
    }
    // A header claiming more than its body holds is refused before any allocation.
    let mut w = codec::Writer::default();
    for v in [0, 1, 7, 1, 0, 1 << 40, 0, 0, 1 << 40] {
        w.u64(v);
    }
    let mut forged = b"TXS2".to_vec();
    forged.extend_from_slice(&w.0);
    forged.extend_from_slice(&lz4_flex::compress_prepend_size(b"tiny"));
    assert!(decode(vec![&forged])
        .unwrap()
        .contains("larger than the part"));
    let mut truncated = pa[1].clone();
    truncated.pop();
    let mut broken = all.clone();
    broken[1] = &truncated;
    assert!(decode(refs(&broken)).is_some());
}

/// The emitted bits older forms kept per pair: 1 PatId1, 2 PatId2.
fn legacy_bits(e: &Engine, p: usize) -> u8 {
    u8::from(e.was_emitted(UPGRADE, p as u32)) | u8::from(e.was_emitted(CHILD, p as u32)) << 1
}

/// The older forms' head: chunk, totals of the three patterns, merchants (and, for
/// `TXS1`, customers), then (`TXS2`) the DEI flags.
fn legacy_head(e: &Engine, w: &mut codec::Writer, v1: bool) {
    w.u64(e.next_chunk);
    w.u64(e.totals.rows);
    w.u64(e.totals.rejected);
    for p in [UPGRADE, CHILD, DEI] {
        w.u64(e.totals.detections.get(p));
    }
    w.u64(e.merchants.len() as u64);
    e.merchants.since(0).for_each(|n| w.str(n));
    if v1 {
        w.u64(e.customers.len() as u64);
        e.customers.since(0).for_each(|n| w.str(n));
    }
    for m in 0..e.merchants.len() {
        w.u64(u64::from(e.was_emitted(DEI, m as u32)));
    }
}

/// The `TXS1` form as an earlier engine wrote it.
fn encode_v1(e: &Engine) -> Vec<u8> {
    let mut w = codec::Writer::default();
    legacy_head(e, &mut w, true);
    w.u64(e.pairs.len() as u64);
    for (p, r) in e.pairs.records().iter().enumerate() {
        w.u64(u64::from(r.merchant));
        w.u64(u64::from(r.customer));
        w.u64(e.pairs.txns(p as u32));
        w.uint(e.pairs.cents(p as u32));
        w.u64(u64::from(r.gender().code()));
        w.u64(u64::from(legacy_bits(e, p)));
    }
    w.finish(b"TXS1")
}

/// The one-part `TXS2` form as the previous engine wrote it: DEI flags in the head, the
/// per-pair emitted bits beside the gender.
fn encode_v2(e: &Engine) -> Vec<u8> {
    let mut body = codec::Writer::default();
    legacy_head(e, &mut body, false);
    e.customers.since(0).for_each(|n| body.str(n));
    let mut columns: [codec::Writer; 5] = Default::default();
    let mut prev = 0i64;
    for (p, r) in e.pairs.records().iter().enumerate() {
        columns[0].u64(u64::from(r.merchant));
        columns[1].u64(crate::varint::zigzag(i64::from(r.customer) - prev));
        prev = i64::from(r.customer);
        columns[2].u64(e.pairs.txns(p as u32));
        columns[3].uint(e.pairs.cents(p as u32));
        columns[4]
            .0
            .push(r.gender().code() | legacy_bits(e, p) << 2);
    }
    columns.iter().for_each(|c| body.u64(c.0.len() as u64));
    columns.iter().for_each(|c| body.0.extend_from_slice(&c.0));
    let mut w = codec::Writer::default();
    let names = e.customers.bytes_since(0) as u64;
    for v in [
        0,
        1,
        7,
        1,
        0,
        e.customers.len() as u64,
        names,
        0,
        e.pairs.len() as u64,
    ] {
        w.u64(v);
    }
    let mut out = b"TXS2".to_vec();
    out.extend_from_slice(&w.0);
    out.extend_from_slice(&lz4_flex::compress_prepend_size(&body.0));
    out
}

#[test]
fn each_pattern_declares_the_fields_its_evidence_has() {
    let (texts, w) = busy_stream(12);
    let mut e = engine(busy_config(), w);
    let mut seen = std::collections::BTreeSet::new();
    for (k, text) in texts.iter().enumerate() {
        let out = e.apply_chunk(k as u64, text.as_bytes(), 1).unwrap();
        for (d, why) in out.detections.iter().zip(&out.evidence) {
            let (_, pattern) = e
                .patterns()
                .by_number(u64::from(d.pattern.number()))
                .unwrap();
            let mut keys: Vec<String> =
                why.to_json().as_object().unwrap().keys().cloned().collect();
            let mut declared: Vec<String> = pattern
                .evidence_fields()
                .iter()
                .map(|f| f.to_string())
                .collect();
            keys.sort();
            declared.sort();
            assert_eq!(keys, declared, "{:?}", d.pattern);
            seen.insert(d.pattern);
        }
    }
    assert_eq!(seen.len(), 3, "every pattern fired");
}

#[test]
fn older_snapshot_forms_still_decode_with_every_emitted_detection() {
    let (texts, w) = busy_stream(12);
    let mut e = engine(busy_config(), w.clone());
    run_busy(&mut e, &texts);
    for p in [UPGRADE, CHILD, DEI] {
        assert!(e.totals().detections.get(p) > 0, "{p:?} fired");
    }
    for (form, bytes) in [("TXS1", encode_v1(&e)), ("TXS2", encode_v2(&e))] {
        let back = Engine::decode_snapshot(&bytes, busy_config(), w.clone()).unwrap();
        assert_eq!(back.encode_snapshot(), e.encode_snapshot(), "{form}");
        assert_eq!(back.emitted, e.emitted, "{form}");
    }
}

#[test]
fn a_delta_that_does_not_fit_changes_nothing() {
    let (texts, w) = busy_stream(2);
    let mut e = engine(busy_config(), w.clone());
    run_busy(&mut e, &texts[..1]);
    let mut live = e.clone();
    let good = live.apply_chunk(1, texts[1].as_bytes(), 1).unwrap().delta;
    assert!(!good.pairs.is_empty() && !good.new_customers.is_empty());
    let before = e.encode_snapshot();
    let mut breakers: Vec<(&str, ChunkDelta)> = Vec::new();
    let mut d = good.clone();
    d.pairs.push(d.pairs[0].clone());
    breakers.push(("repeated pair", d));
    let mut d = good.clone();
    d.pairs[0].customer = 10_000;
    breakers.push(("unknown index", d));
    let mut d = good.clone();
    d.pairs.last_mut().unwrap().txns = 0;
    breakers.push(("no transactions", d));
    let mut d = good.clone();
    d.detections.push((CHILD.number(), 0, 9_999));
    breakers.push(("unknown detection", d));
    let mut d = good.clone();
    d.new_customers.push(e.customers.name(0).to_string());
    breakers.push(("known name", d));
    let mut d = good.clone();
    d.new_customers.push(d.new_customers[0].clone());
    breakers.push(("repeated name", d));
    for (why, delta) in breakers {
        assert!(
            matches!(e.apply_delta(&delta), Err(ApplyError::BadDelta { .. })),
            "{why}"
        );
        assert_eq!(e.encode_snapshot(), before, "{why} changed the state");
        assert_eq!(e.next_chunk(), 1);
    }
    e.apply_delta(&good).unwrap();
    assert_eq!(e.encode_snapshot(), live.encode_snapshot());
}

#[test]
fn deltas_rebuild_a_busy_stream_chunk_by_chunk() {
    let (texts, w) = busy_stream(25);
    let mut live = engine(busy_config(), w.clone());
    let mut rebuilt = engine(busy_config(), w.clone());
    for text in &texts {
        let k = live.next_chunk();
        let out = live.apply_chunk(k, text.as_bytes(), 1).unwrap();
        rebuilt
            .apply_delta(&ChunkDelta::decode(&out.delta.encode()).unwrap())
            .unwrap();
        assert_eq!(rebuilt.encode_snapshot(), live.encode_snapshot());
        for p in live.pairs_of(&out.delta) {
            assert_eq!(rebuilt.pair(p.merchant, p.customer), Some(p));
        }
    }
    assert!(live.totals().detections.iter().all(|(_, n)| n > 0));
}

#[test]
fn row_callback_sees_every_valid_row_once_with_its_weight() {
    let (texts, w) = busy_stream(6);
    let mut with = engine(busy_config(), w.clone());
    let mut without = engine(busy_config(), w.clone());
    for (k, text) in texts.iter().enumerate() {
        let mut seen = Vec::new();
        let a = with
            .apply_chunk_with(k as u64, text.as_bytes(), 100, &mut |r| {
                seen.push((
                    r.row,
                    r.customer.to_string(),
                    r.merchant.to_string(),
                    r.gender,
                    r.cents,
                    r.weight,
                    r.raw.to_vec(),
                ))
            })
            .unwrap();
        let b = without.apply_chunk(k as u64, text.as_bytes(), 100).unwrap();
        assert_eq!((a.detections, a.delta), (b.detections, b.delta));
        let want: Vec<_> = TransactionReader::new(text.as_bytes(), 100)
            .unwrap()
            .filter_map(Result::ok)
            .map(|t| {
                let weight = w.weight(&t.merchant, &t.customer);
                (
                    t.row,
                    t.customer.to_string(),
                    t.merchant.to_string(),
                    t.gender,
                    t.cents,
                    weight,
                    t.raw.to_vec(),
                )
            })
            .collect();
        assert_eq!(seen, want);
        assert!(seen.iter().any(|r| r.5.is_some()) && seen.iter().any(|r| r.5.is_none()));
    }
    assert_eq!(with.encode_snapshot(), without.encode_snapshot());
}

#[test]
fn sums_past_u64_stay_exact_through_deltas_and_snapshots() {
    // One pair gets 200,000 maximal amounts through deltas: 2e19 cents, past u64.
    let max = 99_999_999_999_999u128;
    let mut e = engine(busy_config(), Arc::default());
    let first = e
        .apply_chunk(
            0,
            chunk_text(&[("C1", "F", "M1", "999999999999.99")]).as_bytes(),
            1,
        )
        .unwrap();
    assert_eq!(e.pair("M1", "C1").unwrap().cents, max);
    let mut rebuilt = engine(busy_config(), Arc::default());
    rebuilt.apply_delta(&first.delta).unwrap();
    for k in 1..=2u64 {
        let delta = ChunkDelta {
            chunk: k,
            rows: 100_000,
            rejected: 0,
            merchants_before: 1,
            customers_before: 1,
            new_merchants: vec![],
            new_customers: vec![],
            pairs: vec![PairDelta {
                merchant: 0,
                customer: 0,
                txns: 100_000,
                cents: max * 100_000,
                gender: Gender::Female,
            }],
            detections: vec![],
        };
        let delta = ChunkDelta::decode(&delta.encode()).unwrap();
        e.apply_delta(&delta).unwrap();
        rebuilt.apply_delta(&delta).unwrap();
    }
    let pair = e.pair("M1", "C1").unwrap();
    assert_eq!((pair.txns, pair.cents), (200_001, max * 200_001));
    assert!(pair.cents > u128::from(u64::MAX));
    let back =
        Engine::decode_snapshot(&e.encode_snapshot(), busy_config(), Arc::default()).unwrap();
    assert_eq!(back.pair("M1", "C1"), Some(pair.clone()));
    assert_eq!(rebuilt.pair("M1", "C1"), Some(pair));
    // And it keeps counting exactly, in a chunk.
    let mut back = back;
    back.apply_chunk(3, chunk_text(&[("C1", "F", "M1", "1.00")]).as_bytes(), 1)
        .unwrap();
    assert_eq!(back.pair("M1", "C1").unwrap().cents, max * 200_001 + 100);
}

// ---- property test: incremental engine == naive recompute ----

mod reference {
    //! The behaviour written as plainly as possible: recompute every stat from all rows after
    //! each chunk, sort populations, compare fractions by cross-multiplication.
    use super::super::super::detection::PatternId;
    use super::PatternConfig;
    use std::collections::{BTreeMap, BTreeSet};

    pub struct Tx {
        pub customer: String,
        pub merchant: String,
        pub gender: String,
        pub cents: u64,
    }

    /// (sum of micros, rows) per (merchant, customer).
    pub type Weights = BTreeMap<(String, String), (i128, i128)>;

    fn rank(q: u64, n: u64) -> usize {
        let r = (q * n).div_ceil(10_000);
        r.max(1) as usize
    }

    pub fn run(
        chunks: &[Vec<Tx>],
        weights: &Weights,
        cfg: &PatternConfig,
    ) -> Vec<Vec<(PatternId, String, String)>> {
        let mut seen: BTreeSet<(PatternId, String, String)> = BTreeSet::new();
        let mut applied: Vec<&Tx> = Vec::new();
        let mut out = Vec::new();
        for chunk in chunks {
            applied.extend(chunk.iter());
            // (m, c) -> (n, s, gender of first)
            let mut pairs: BTreeMap<(String, String), (u64, u64, String)> = BTreeMap::new();
            let mut n_m: BTreeMap<String, u64> = BTreeMap::new();
            for tx in &applied {
                let e = pairs
                    .entry((tx.merchant.clone(), tx.customer.clone()))
                    .or_insert((0, 0, tx.gender.clone()));
                e.0 += 1;
                e.1 += tx.cents;
                *n_m.entry(tx.merchant.clone()).or_default() += 1;
            }
            let mut holds = BTreeSet::new();
            for ((m, c), (n, s, _)) in &pairs {
                if *n >= cfg.get(&crate::patterns::child::MIN_TXNS)
                    && u128::from(*s)
                        < u128::from(cfg.get(&crate::patterns::child::AVG_BELOW_CENTS))
                            * u128::from(*n)
                {
                    holds.insert((PatternId::CHILD, m.clone(), c.clone()));
                }
            }
            for (m, total) in &n_m {
                let custs: Vec<(&String, &(u64, u64, String))> = pairs
                    .iter()
                    .filter(|((pm, _), _)| pm == m)
                    .map(|((_, c), v)| (c, v))
                    .collect();
                let f = custs.iter().filter(|(_, v)| v.2 == "F").count() as u64;
                let male = custs.iter().filter(|(_, v)| v.2 == "M").count() as u64;
                if f > cfg.get(&crate::patterns::dei::MIN_FEMALE) && f < male {
                    holds.insert((PatternId::DEI_NEEDED, m.clone(), String::new()));
                }
                if *total > cfg.get(&crate::patterns::upgrade::MIN_MERCHANT_TXNS) {
                    let mut counts: Vec<u64> = custs.iter().map(|(_, v)| v.0).collect();
                    counts.sort();
                    let t_count = counts[rank(
                        10_000 - cfg.get(&crate::patterns::upgrade::TOP_BP),
                        counts.len() as u64,
                    ) - 1];
                    let mut ws: Vec<(i128, i128)> = custs
                        .iter()
                        .filter_map(|(c, _)| weights.get(&(m.clone(), (*c).clone())).copied())
                        .collect();
                    if ws.is_empty() {
                        continue;
                    }
                    ws.sort_by(|a, b| (a.0 * b.1).cmp(&(b.0 * a.1)));
                    let t_w = ws[rank(
                        cfg.get(&crate::patterns::upgrade::BOTTOM_BP),
                        ws.len() as u64,
                    ) - 1];
                    for (c, v) in &custs {
                        if let Some(w) = weights.get(&(m.clone(), (*c).clone())) {
                            if v.0 >= t_count && w.0 * t_w.1 <= t_w.0 * w.1 {
                                holds.insert((PatternId::UPGRADE, m.clone(), (*c).clone()));
                            }
                        }
                    }
                }
            }
            let new: Vec<_> = holds.into_iter().filter(|d| !seen.contains(d)).collect();
            seen.extend(new.iter().cloned());
            out.push(new);
        }
        out
    }
}

/// (customer, merchant, gender, cents, fault): fault 0 is a plain valid row; the others
/// exercise the parse gate (see `row_bytes`).
fn tx_strategy() -> impl Strategy<Value = (usize, usize, usize, u64, u8)> {
    (
        0..4usize,
        0..10usize,
        0..4usize,
        prop_oneof![0u64..3000, Just(2300u64)],
        prop_oneof![20 => Just(0u8), 1 => 1u8..=8],
    )
}

/// One transactions.csv row for the property test, and the transaction the reference
/// sees (`None` when the row must be rejected). Faults: 1 bad amount, 2 control
/// character in the customer, 3 NUL in an unused column, 4 a 13-digit amount, 5 a
/// 129-byte customer, 6 invalid UTF-8 in an unused column (valid), 7 the largest amount
/// (valid), 8 a 128-byte customer (valid).
fn row_bytes(
    (c, m, g, cents, fault): (usize, usize, usize, u64, u8),
) -> (Vec<u8>, Option<reference::Tx>) {
    let genders = ["F", "M", "E", "U"];
    let mut customer = format!("C{c}");
    let mut category = b"x".to_vec();
    let mut amount = format!("{}.{:02}", cents / 100, cents % 100);
    let mut cents = cents;
    let valid = match fault {
        1 => {
            amount = "x".into();
            false
        }
        2 => {
            customer.push('\t');
            false
        }
        3 => {
            category.push(0);
            false
        }
        4 => {
            amount = "1000000000000.00".into();
            false
        }
        5 => {
            customer = format!("{customer:x<129}");
            false
        }
        6 => {
            category.push(0xff);
            true
        }
        7 => {
            amount = "999999999999.99".into();
            cents = 99_999_999_999_999;
            true
        }
        8 => {
            customer = format!("{customer:x<128}");
            true
        }
        _ => true,
    };
    let mut line = format!("0,'{customer}','3','{}','1','M{m}','1','", genders[g]).into_bytes();
    line.extend_from_slice(&category);
    line.extend_from_slice(format!("',{amount},0\n").as_bytes());
    let tx = valid.then(|| reference::Tx {
        customer,
        merchant: format!("M{m}"),
        gender: genders[g].to_string(),
        cents,
    });
    (line, tx)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    #[test]
    fn incremental_engine_equals_naive_recompute(
        chunks in proptest::collection::vec(proptest::collection::vec(tx_strategy(), 0..40), 1..8),
        weight_rows in proptest::collection::vec((0..10usize, 0..4usize, prop_oneof![0i64..5, Just(-1)]), 0..40),
        upgrade_min in 0u64..30,
        top_bp in prop_oneof![Just(0u64), Just(100), Just(2500), Just(5000), Just(9999)],
        bottom_bp in prop_oneof![Just(1u64), Just(100), Just(3333), Just(5000), Just(10_000)],
        child_min in 1u64..6,
        child_avg in prop_oneof![Just(2300u64), 500u64..3000],
        dei_min in 0u64..3,
    ) {
        let cfg = PatternConfig::default()
.with(&crate::patterns::upgrade::MIN_MERCHANT_TXNS, upgrade_min)
.with(&crate::patterns::upgrade::TOP_BP, top_bp)
.with(&crate::patterns::upgrade::BOTTOM_BP, bottom_bp)
.with(&crate::patterns::child::MIN_TXNS, child_min)
.with(&crate::patterns::child::AVG_BELOW_CENTS, child_avg)
.with(&crate::patterns::dei::MIN_FEMALE, dei_min);
        let mut weights_csv = String::from("Source,Target,Weight,typeTrans,fraud\n");
        let mut weights = reference::Weights::new();
        for (c, m, w) in &weight_rows {
            // Weights in tenths (-0.1 … 0.4), so ties, means and negatives are exercised.
            let sign = if *w < 0 { "-" } else { "" };
            writeln!(weights_csv, "'C{c}','M{m}',{sign}{}.{},'x',0", w.abs() / 10, w.abs() % 10).unwrap();
            let e = weights.entry((format!("M{m}"), format!("C{c}"))).or_insert((0, 0));
            e.0 += (*w as i128) * 100_000;
            e.1 += 1;
        }
        let table = Arc::new(ImportanceTable::parse(weights_csv.as_bytes()).unwrap().table);
        let mut e = Engine::new(cfg.clone(), table);
        let mut ref_chunks = Vec::new();
        let mut got = Vec::new();
        for (k, chunk) in chunks.iter().enumerate() {
            let mut text = HEADER.as_bytes().to_vec();
            let mut txs = Vec::new();
            for &row in chunk {
                let (line, tx) = row_bytes(row);
                text.extend_from_slice(&line);
                txs.extend(tx);
            }
            let out = e.apply_chunk(k as u64, &text, 1).unwrap();
            prop_assert_eq!(out.rejected.len() + txs.len(), chunk.len());
            got.push(out.detections.into_iter().map(|d| (d.pattern, d.merchant, d.customer)).collect::<Vec<_>>());
            ref_chunks.push(txs);
        }
        let expected = reference::run(&ref_chunks, &weights, &cfg);
        prop_assert_eq!(got, expected);
    }
}

// ---- Evidence ----

/// A chunk's detections with their evidence as JSON text.
fn apply_with_evidence(e: &mut Engine, rows: &[Row]) -> Vec<(PatternId, String, String)> {
    let k = e.next_chunk();
    let out = e
        .apply_chunk(k, chunk_text(rows).as_bytes(), k * 1000 + 1)
        .unwrap();
    assert_eq!(out.detections.len(), out.evidence.len());
    out.detections
        .into_iter()
        .zip(out.evidence)
        .map(|(d, ev)| (d.pattern, d.customer, ev.to_json().to_string()))
        .collect()
}

#[test]
fn child_evidence_is_the_exact_average_just_below_23() {
    let mut e = engine(PatternConfig::default(), Arc::default());
    // An average of exactly Rs 23 does not fire: no evidence at all.
    assert!(apply_with_evidence(&mut e, &repeat(("C1", "M", "M1", "23.00"), 80)).is_empty());
    // 79 × 23.00 + 22.20 = 1839.20 over 80: exactly 22.99.
    let mut rows = repeat(("C2", "M", "M1", "23.00"), 79);
    rows.push(("C2", "M", "M1", "22.20"));
    assert_eq!(
        apply_with_evidence(&mut e, &rows),
        vec![(
            CHILD,
            "C2".into(),
            r#"{"amountCents":"183920","averageRupees":"22.99","txns":"80"}"#.into()
        )]
    );
    // 80 × 23.00 + 22.00 over 81 has no finite decimal: a fraction, never rounded.
    let mut rows = repeat(("C3", "M", "M1", "23.00"), 80);
    rows.push(("C3", "M", "M1", "22.00"));
    let got = apply_with_evidence(&mut e, &rows);
    assert_eq!(
        got[0].2,
        r#"{"amountCents":"186200","averageRupees":"1862/81","txns":"81"}"#
    );
}

#[test]
fn upgrade_evidence_names_both_ranks_and_the_customer_exactly_at_the_top_rank() {
    // Counts {5, 5, 5, 1}: top 25 % is rank 3 of 4 (ascending), count 5 — A and B are
    // exactly at it. Weights {A 1, B 1, C 2, D 1.5}: bottom 50 % is rank 2 of 4, weight 1.
    let weights = importance(&[
        ("A", "M1", "1"),
        ("B", "M1", "1"),
        ("C", "M1", "2"),
        ("D", "M1", "1.5"),
    ]);
    let mut e = engine(small_upgrade(0, 2500, 5000), weights);
    let mut rows = repeat(("A", "M", "M1", "1"), 5);
    rows.extend(repeat(("B", "M", "M1", "1"), 5));
    rows.extend(repeat(("C", "M", "M1", "1"), 5));
    rows.push(("D", "M", "M1", "1"));
    let ups: Vec<_> = apply_with_evidence(&mut e, &rows)
        .into_iter()
        .filter(|d| d.0 == UPGRADE)
        .collect();
    let want = |c: &str| {
        (
            UPGRADE,
            c.to_string(),
            r#"{"bottomRank":"2","countAtTopRank":"5","customerTxns":"5","customerWeight":"1","customers":"4","merchantTxns":"16","topRank":"3","weightAtBottomRank":"1","weightedCustomers":"4"}"#
                .to_string(),
        )
    };
    assert_eq!(ups, vec![want("A"), want("B")]);
}

#[test]
fn dei_evidence_counts_customers_by_gender() {
    let rows = dei_rows(101, 102);
    let mut e = engine(PatternConfig::default(), Arc::default());
    let owned: Vec<(String, &str, &str, &str)> = rows
        .iter()
        .map(|(c, g)| (c.clone(), *g, "M1", "100.00"))
        .collect();
    let borrowed: Vec<Row> = owned
        .iter()
        .map(|(c, g, m, a)| (c.as_str(), *g, *m, *a))
        .collect();
    let found = apply_with_evidence(&mut e, &borrowed);
    assert_eq!(
        found,
        vec![(
            DEI,
            String::new(),
            r#"{"femaleCustomers":"101","maleCustomers":"102"}"#.into()
        )]
    );
}

/// `txpipe explain`'s verdicts are the patterns' own: they agree with what `detect`
/// emitted for every pair and merchant of a chunk.
#[test]
fn explain_verdicts_agree_with_detect() {
    let weights = importance(&[
        ("A", "M1", "1"),
        ("B", "M1", "1"),
        ("C", "M1", "2"),
        ("D", "M1", "1.5"),
    ]);
    let cfg = small_upgrade(0, 2500, 5000)
        .with(&crate::patterns::child::MIN_TXNS, 5)
        .with(&crate::patterns::dei::MIN_FEMALE, 0);
    let mut e = engine(cfg, weights);
    let mut rows = repeat(("A", "F", "M1", "1"), 5);
    rows.extend(repeat(("B", "M", "M1", "1"), 5));
    rows.extend(repeat(("C", "M", "M1", "100"), 5));
    rows.push(("D", "M", "M1", "1"));
    let out = e.apply_chunk(0, chunk_text(&rows).as_bytes(), 1).unwrap();
    let fired = |p: PatternId, c: &str| {
        let at = out
            .detections
            .iter()
            .position(|d| d.pattern == p && d.customer == c);
        at.map(|i| out.evidence[i].clone())
    };
    // Every verdict: it holds (with the evidence it fired with) exactly where detect
    // fired, and was emitted there.
    let mut held = 0;
    for c in ["A", "B", "C", "D"] {
        let p = e.explain_pair("M1", c).unwrap();
        assert_eq!(p.verdicts.len(), 2, "UPGRADE and CHILD are per pair");
        for v in &p.verdicts {
            assert_eq!(v.holds, fired(v.pattern, c), "{c} {:?}", v.pattern);
            assert_eq!(v.emitted, v.holds.is_some(), "{c} {:?}", v.pattern);
            held += usize::from(v.holds.is_some());
        }
    }
    let m = e.explain_merchant("M1").unwrap();
    let dei = verdict(&m.verdicts, DEI).unwrap();
    assert_eq!(dei.holds, fired(DEI, ""));
    assert!(dei.emitted && dei.holds.is_some());
    assert!(held >= 2 && out.detections.iter().any(|d| d.pattern == UPGRADE));
}
