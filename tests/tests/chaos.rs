//! The chaos run: the real chunker and detector services against moto and Postgres,
//! driven through a random schedule of faults, must leave exactly what the offline
//! replay gives (`docs/chaos.md`, `docs/behaviour.md#exactly-once`).
//!
//! Each schedule has its own source key, so its own stream, on one shared stack; it
//! is decided by ChaCha8 from the run's seed and the schedule's number. Settings:
//! `TXPIPE_CHAOS_SEED`, `TXPIPE_CHAOS_SCHEDULES`, `TXPIPE_CHAOS_ROWS`,
//! `TXPIPE_CHAOS_ONLY` (one schedule of the seed), `TXPIPE_CHAOS_VERBOSE=1` (every
//! step). `make chaos SEED=… SCHEDULES=…` runs this test with them.

use anyhow::{ensure, Context, Result};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;
use txpipe::chunker::{close_stream, ChunkerService};
use txpipe::config::Config;
use txpipe::detector::{DetectorError, DetectorResponse, DetectorService};
use txpipe::layout::StreamName;
use txpipe::parse::csv_scan::MAX_RECORD_BYTES;
use txpipe::setup::Stores;
use txpipe::store::{ChunkCursor, DetectorHead, ObjectStore};
use txpipe_e2e::outputs::{
    exactly_once, first_difference, reference, stream_outputs, times_disagree, Reference, StatsRow,
};
use txpipe_e2e::*;
use txpipe_testkit::chaos::{
    BusCounts, CrashMode, CrashSwitch, CrashingCursors, CrashingObjects, CrashingSink,
    CrashingState, EventBus, EventChaos,
};
use txpipe_testkit::clock::{Expiring, TestClock};
use txpipe_testkit::events::Notifying;
use txpipe_testkit::faults::{FaultPlan, FaultPoint, FaultyObjects, FaultySink, FaultyState};

/// The seed `make test` runs.
const DEFAULT_SEED: u64 = 20_261_124;
/// Schedules `make test` runs.
const DEFAULT_SCHEDULES: u64 = 8;
/// Rows of the generated source.
const DEFAULT_ROWS: u64 = 6_000;
/// Customers of the generated source.
const CUSTOMERS: usize = 400;

/// Thresholds low enough that all three patterns fire on a small file.
const PATTERNS: &[(&str, &str)] = &[
    ("TXPIPE_UPGRADE_MIN_MERCHANT_TXNS", "100"),
    ("TXPIPE_UPGRADE_TOP_BP", "1000"),
    ("TXPIPE_UPGRADE_BOTTOM_BP", "1000"),
    ("TXPIPE_CHILD_MIN_TXNS", "6"),
    ("TXPIPE_DEI_MIN_FEMALE", "2"),
];

/// Seconds without detector progress after which the chunker's tick writes the next
/// chunk again.
const STALL_SECS: i64 = 30;
/// Days after which chunk objects expire (the lifecycle rule).
const RETENTION_DAYS: i64 = 7;

struct RunSettings {
    seed: u64,
    schedules: u64,
    rows: u64,
    only: Option<u64>,
    verbose: bool,
    keep_going: bool,
}

fn env_u64(var: &str) -> Result<Option<u64>> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => {
            Ok(Some(v.trim().replace('_', "").parse().with_context(
                || format!("{var}={v:?} is not a whole number"),
            )?))
        }
        _ => Ok(None),
    }
}

fn run_settings() -> Result<RunSettings> {
    Ok(RunSettings {
        seed: env_u64("TXPIPE_CHAOS_SEED")?.unwrap_or(DEFAULT_SEED),
        schedules: env_u64("TXPIPE_CHAOS_SCHEDULES")?.unwrap_or(DEFAULT_SCHEDULES),
        rows: env_u64("TXPIPE_CHAOS_ROWS")?.unwrap_or(DEFAULT_ROWS),
        only: env_u64("TXPIPE_CHAOS_ONLY")?,
        verbose: std::env::var("TXPIPE_CHAOS_VERBOSE").is_ok_and(|v| v == "1"),
        keep_going: std::env::var("TXPIPE_CHAOS_KEEP_GOING").is_ok_and(|v| v == "1"),
    })
}

/// SplitMix64: independent seeds for schedules and steps from one seed.
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What the run did, added up over schedules.
#[derive(Debug, Default)]
struct Figures {
    schedules: u64,
    steps: u64,
    chunks: u64,
    detections: u64,
    lost: u64,
    duplicated: u64,
    faults_armed: BTreeMap<String, u64>,
    faults_struck: BTreeMap<String, u64>,
    kills: BTreeMap<String, u64>,
    chunker_kills: BTreeMap<String, u64>,
    holds: u64,
    holds_expired: u64,
    holds_at: BTreeMap<String, u64>,
    overlaps: u64,
    busy: u64,
    cold_starts: u64,
    ticks: u64,
    kicks: u64,
    backpressure: u64,
    pg_outages: u64,
    refusals: u64,
    parked: u64,
    resumed: u64,
    pauses: u64,
    expired: u64,
    missing: u64,
    deferred: u64,
    applied: u64,
    errors: BTreeMap<String, u64>,
    poison: u64,
    corrupted: u64,
    /// One event handed to two overlapping containers (S3 may deliver an event twice).
    twice: u64,
    /// Importance files replaced (and put back), and parks they caused.
    importance_swaps: u64,
    settings_parks: u64,
    source_swaps: u64,
    /// Schedules over an input prefix, files uploaded under it while the stream ran
    /// (each must join it), and streams closed by the operator.
    prefix_schedules: u64,
    files_joined: u64,
    closed: u64,
    /// Chunker ticks that failed (loudly) while the source was overwritten.
    source_refusals: u64,
    /// Warm containers whose state was compared with the replay's at the end.
    warm_compared: u64,
    drain_rounds: u64,
    bus: BusCounts,
}

impl Figures {
    fn add(&mut self, o: &Figures) {
        let add_map = |a: &mut BTreeMap<String, u64>, b: &BTreeMap<String, u64>| {
            for (k, v) in b {
                *a.entry(k.clone()).or_default() += v;
            }
        };
        self.schedules += o.schedules;
        self.steps += o.steps;
        self.chunks += o.chunks;
        self.detections += o.detections;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        add_map(&mut self.faults_armed, &o.faults_armed);
        add_map(&mut self.faults_struck, &o.faults_struck);
        add_map(&mut self.kills, &o.kills);
        add_map(&mut self.chunker_kills, &o.chunker_kills);
        add_map(&mut self.errors, &o.errors);
        add_map(&mut self.holds_at, &o.holds_at);
        self.holds += o.holds;
        self.holds_expired += o.holds_expired;
        self.overlaps += o.overlaps;
        self.busy += o.busy;
        self.cold_starts += o.cold_starts;
        self.ticks += o.ticks;
        self.kicks += o.kicks;
        self.backpressure += o.backpressure;
        self.pg_outages += o.pg_outages;
        self.refusals += o.refusals;
        self.parked += o.parked;
        self.resumed += o.resumed;
        self.pauses += o.pauses;
        self.expired += o.expired;
        self.missing += o.missing;
        self.deferred += o.deferred;
        self.applied += o.applied;
        self.poison += o.poison;
        self.corrupted += o.corrupted;
        self.twice += o.twice;
        self.importance_swaps += o.importance_swaps;
        self.source_swaps += o.source_swaps;
        self.prefix_schedules += o.prefix_schedules;
        self.files_joined += o.files_joined;
        self.closed += o.closed;
        self.source_refusals += o.source_refusals;
        self.settings_parks += o.settings_parks;
        self.warm_compared += o.warm_compared;
        self.drain_rounds += o.drain_rounds;
        self.bus.add(&o.bus);
    }

    /// The fault kinds the run claims that never happened: a regression that stops one
    /// from firing fails the run instead of leaving it green by accident.
    fn never_happened(&self) -> Vec<&'static str> {
        let sum = |m: &BTreeMap<String, u64>| m.values().sum::<u64>();
        let struck = |point: &str| self.faults_struck.get(point).copied().unwrap_or(0);
        let b = &self.bus;
        [
            ("detector kills", sum(&self.kills)),
            ("chunker kills", sum(&self.chunker_kills)),
            ("injected faults struck", sum(&self.faults_struck)),
            ("faults struck in a rebuild", struck("ReadState")),
            ("faults struck taking a lease", struck("Lease")),
            ("faults struck in a prune", struck("Prune")),
            ("containers held mid-call", self.holds),
            ("concurrent overlaps", self.overlaps),
            ("cold starts", self.cold_starts),
            ("Postgres outages", self.pg_outages),
            ("sink refusals", self.refusals),
            ("parks", self.parked),
            ("resumes", self.resumed),
            ("pauses past retention", self.pauses),
            ("expired chunk objects", self.expired),
            ("chunker kicks", self.kicks),
            ("poison rows", self.poison),
            ("corrupted chunk objects", self.corrupted),
            ("warm states compared", self.warm_compared),
            ("importance file replaced", self.importance_swaps),
            ("source file overwritten", self.source_swaps),
            ("schedules over an input prefix", self.prefix_schedules),
            (
                "files uploaded to a running prefix stream",
                self.files_joined,
            ),
            ("prefix streams closed", self.closed),
            (
                "ticks refused by an overwritten source",
                self.source_refusals,
            ),
            ("dropped events", b.dropped),
            ("duplicated events", b.duplicated),
            ("delayed events", b.delayed),
            ("reordered events", b.reordered),
        ]
        .into_iter()
        .filter(|(_, n)| *n == 0)
        .map(|(kind, _)| kind)
        .collect()
    }

    fn report(&self) -> String {
        let map = |m: &BTreeMap<String, u64>| {
            let total: u64 = m.values().sum();
            let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k} {v}")).collect();
            format!("{total} ({})", parts.join(", "))
        };
        let b = &self.bus;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "  schedules {}, steps {}, chunks {} ({} applications answered, repeats included), drain rounds {}",
            self.schedules, self.steps, self.chunks, self.applied, self.drain_rounds
        );
        let _ = writeln!(
            s,
            "  injected faults armed {}; struck {}",
            map(&self.faults_armed),
            map(&self.faults_struck)
        );
        let _ = writeln!(s, "  detector kills {}", map(&self.kills));
        let _ = writeln!(s, "  chunker kills {}", map(&self.chunker_kills));
        let _ = writeln!(
            s,
            "  cold starts {}; concurrent overlaps {}; busy answers {}",
            self.cold_starts, self.overlaps, self.busy
        );
        let _ = writeln!(
            s,
            "  containers held mid-call while another ran {} (lease ran out during {}): {}",
            self.holds,
            self.holds_expired,
            map(&self.holds_at)
        );
        let _ = writeln!(
            s,
            "  Postgres outages {}; sink refusals {} -> parked {}, resumed {}",
            self.pg_outages, self.refusals, self.parked, self.resumed
        );
        let _ = writeln!(
            s,
            "  pauses past retention {}: chunk objects expired {}, missing reported {}; chunker ticks {}, kicks {}, backpressure waits {}; deferred catch-ups {}",
            self.pauses, self.expired, self.missing, self.ticks, self.kicks, self.backpressure, self.deferred
        );
        let _ = writeln!(
            s,
            "  events: announced {}, delivered {} events / {} records, duplicated {}, dropped {}, delayed {}, reordered {}, retried {}, one event to two overlapping containers {}",
            b.announced, b.events, b.records, b.duplicated, b.dropped, b.delayed, b.reordered, b.retried, self.twice
        );
        let _ = writeln!(s, "  invocation errors {}", map(&self.errors));
        let _ = writeln!(
            s,
            "  poison rows {} (kept in rejected_rows, no stats changed); chunk objects truncated before they were applied {}",
            self.poison, self.corrupted
        );
        let _ = writeln!(
            s,
            "  importance file replaced and put back {} (parks it caused, resumed {}); source file overwritten and put back {} (ticks refused meanwhile {})",
            self.importance_swaps, self.settings_parks, self.source_swaps, self.source_refusals
        );
        let _ = writeln!(
            s,
            "  schedules over an input prefix {}: files uploaded while the stream ran {} (all joined: the outputs match), streams closed by the operator {}",
            self.prefix_schedules, self.files_joined, self.closed
        );
        let _ = writeln!(
            s,
            "  at the end: warm states equal to the replay's {}, cold rebuilds equal {}; no state object left beyond the head's",
            self.warm_compared, self.schedules
        );
        let _ = write!(
            s,
            "  detections checked {}: lost = {}, duplicated = {}",
            self.detections, self.lost, self.duplicated
        );
        s
    }
}

/// A detector "container": one service and what can break it.
struct Container {
    name: String,
    service: DetectorService,
    plan: Arc<FaultPlan>,
    switch: Arc<CrashSwitch>,
}

/// A chunk the sink refuses (a CHECK constraint) until it is lifted.
struct Refusal {
    chunk: u64,
    constraint: String,
}

/// What a step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Tick,
    ChunkerKill,
    Deliver,
    Kill,
    Overlap,
    Hold,
    ArmFault,
    ColdStart,
    PgOutage,
    Refuse,
    Pause,
    ClockStep,
    Corrupt,
    StateFaults,
    ReplaceImportance,
    ReplaceSource,
    JoinFile,
}

const WEIGHTS: &[(Action, u32)] = &[
    (Action::Tick, 16),
    (Action::ChunkerKill, 3),
    (Action::Deliver, 30),
    (Action::Kill, 8),
    (Action::Overlap, 4),
    (Action::Hold, 4),
    (Action::ArmFault, 7),
    (Action::ColdStart, 3),
    (Action::PgOutage, 1),
    (Action::Refuse, 1),
    (Action::Pause, 1),
    (Action::ClockStep, 6),
    (Action::Corrupt, 2),
    (Action::StateFaults, 1),
    (Action::ReplaceImportance, 1),
    (Action::ReplaceSource, 1),
    (Action::JoinFile, 3),
];

/// Every schedule does each of these at least once, at random steps.
const MANDATORY: &[Action] = &[
    Action::ChunkerKill,
    Action::Kill,
    Action::Kill,
    Action::Overlap,
    Action::Hold,
    Action::Hold,
    Action::ArmFault,
    Action::ArmFault,
    Action::ColdStart,
    Action::PgOutage,
    Action::Refuse,
    Action::Pause,
    Action::Corrupt,
    Action::StateFaults,
    Action::ReplaceImportance,
    Action::ReplaceSource,
    Action::JoinFile,
];

/// The detector's remote calls, by name: a crash can be aimed at each step boundary.
const DETECTOR_OPS: &[&str] = &[
    "acquire lease",
    "load head",
    "get snapshot",
    "get delta",
    "load cursor",
    "get chunk",
    "put detections",
    "write sink",
    "put delta",
    "put snapshot",
    "commit",
    "list snapshot",
    "delete",
    "record failure",
    "release lease",
];

/// The chunker's remote calls, by name.
const CHUNKER_OPS: &[&str] = &[
    "load cursor",
    "head input",
    "get range input",
    "load head",
    "put chunk",
    "advance cursor",
];

/// Where a crash strikes: the n-th call from now, or the (skip + 1)-th call of a name.
#[derive(Debug, Clone, Copy)]
enum Strike {
    Call(u64),
    Op(&'static str, u64),
}

impl Strike {
    fn random(rng: &mut impl Rng, ops: &[&'static str], max_call: u64) -> Strike {
        match rng.gen_bool(0.5) {
            true => Strike::Call(rng.gen_range(1..=max_call)),
            false => Strike::Op(
                ops.choose(rng).copied().unwrap_or("commit"),
                rng.gen_range(0..=2),
            ),
        }
    }

    fn arm(self, switch: &CrashSwitch, mode: CrashMode) {
        match self {
            Strike::Call(n) => switch.arm(n, mode),
            Strike::Op(op, skip) => switch.arm_op(op, skip, mode),
        }
    }
}

fn random_action(rng: &mut impl Rng) -> Action {
    let total: u32 = WEIGHTS.iter().map(|w| w.1).sum();
    let mut x = rng.gen_range(0..total);
    for (a, w) in WEIGHTS {
        if x < *w {
            return *a;
        }
        x -= w;
    }
    Action::Deliver
}

/// How many poison kinds [`poison_lines`] makes.
const POISON_KINDS: usize = 10;

/// Lines the parser must reject, made from real rows so that, were one accepted, it
/// would change a real pair's stats: the line (without its terminator), how many
/// records the parser reads in it, and what is wrong. `templates` are 3 real rows.
fn poison_lines(templates: [&[u8]; 3], kind: usize) -> (Vec<u8>, u64, &'static str) {
    let template = templates[0];
    let mut fields: Vec<Vec<u8>> = template.split(|&b| b == b',').map(<[u8]>::to_vec).collect();
    let quoted = |inner: &[u8]| [b"'".as_slice(), inner, b"'"].concat();
    let id = |f: &[u8]| {
        f.iter()
            .copied()
            .filter(|&b| b != b'\'')
            .collect::<Vec<u8>>()
    };
    let what = match kind {
        0 => {
            let mut c = id(&fields[1]);
            c.insert(2, 0);
            fields[1] = quoted(&c);
            "NUL in the customer id"
        }
        1 => {
            fields[8] = b"1234567890123.45".to_vec();
            "13-digit amount"
        }
        2 => {
            fields[7] = quoted(b"es_\0food");
            "NUL in an unused column"
        }
        3 => {
            let mut m = id(&fields[5]);
            m.push(0x07);
            fields[5] = quoted(&m);
            "control character in the merchant id"
        }
        4 => {
            let mut c = id(&fields[1]);
            c.resize(129, b'7');
            fields[1] = quoted(&c);
            "129-byte customer id"
        }
        5 => {
            fields.pop();
            "a field missing"
        }
        6 => {
            // A quote that never closes: read as data, the row ends at its line's end
            // (it used to swallow the rest of the file as one row).
            fields[1].insert(0, b'"');
            "a stray double quote opening the customer field"
        }
        7 => {
            // Over the record limit: its first MAX_RECORD_BYTES are one rejected
            // record, the rest of the line another (too few fields).
            let mut c = id(&fields[1]);
            c.resize(MAX_RECORD_BYTES + 5_000, b'7');
            fields[1] = quoted(&c);
            return (fields.join(&b','), 2, "a line over the 64 KiB record limit");
        }
        8 => {
            // An old-Mac part: three rows ended by bare CRs are one line, one record
            // of 28 fields.
            return (
                templates.join(&b'\r'),
                1,
                "three rows joined by bare CR line endings",
            );
        }
        _ => {
            let mut m = id(&fields[5]);
            m.insert(1, 0xFF);
            fields[5] = quoted(&m);
            "invalid UTF-8 in the merchant id"
        }
    };
    (fields.join(&b','), 1, what)
}

/// A poison row: its row number, its bytes (the first record's), what is wrong with it.
type Poison = (u64, Vec<u8>, &'static str);

/// The base source with 1–3 poison lines inserted at random places: the new source,
/// and each poison line's first record.
fn poisoned(base: &[u8], rng: &mut impl Rng) -> (Vec<u8>, Vec<Poison>) {
    let mut lines: Vec<&[u8]> = base.split(|&b| b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let header = lines.remove(0);
    // Each line, with (records, what) when it is poison.
    type Line = (Vec<u8>, Option<(u64, &'static str)>);
    let mut rows: Vec<Line> = lines.iter().map(|l| (l.to_vec(), None)).collect();
    let mut stray_quote = false;
    for _ in 0..rng.gen_range(1..=3) {
        let mut pick = || lines[rng.gen_range(0..lines.len())].to_vec();
        let templates = [pick(), pick(), pick()];
        // One stray quote per file at most: a second within 64 KiB would close it.
        let kind = match rng.gen_range(0..POISON_KINDS) {
            6 if stray_quote => POISON_KINDS - 1,
            6 => {
                stray_quote = true;
                6
            }
            k => k,
        };
        let (line, records, what) =
            poison_lines([&templates[0], &templates[1], &templates[2]], kind);
        let at = rng.gen_range(0..=rows.len());
        rows.insert(at, (line, Some((records, what))));
    }
    let mut out = header.to_vec();
    out.push(b'\n');
    let mut numbered: Vec<Poison> = Vec::new();
    let mut row = 1;
    for (line, poison) in &rows {
        out.extend_from_slice(line);
        out.push(b'\n');
        match poison {
            Some((records, what)) => {
                let first = &line[..line.len().min(MAX_RECORD_BYTES)];
                numbered.push((row, first.to_vec(), *what));
                row += records;
            }
            None => row += 1,
        }
    }
    (out, numbered)
}

/// The files of a schedule over an input prefix: the source split at line boundaries,
/// each part with the header line, uploaded one by one under keys that sort in
/// upload order (so they join in that order, whenever the chunker lists them).
struct PrefixFiles {
    keys: Vec<String>,
    bytes: Vec<Vec<u8>>,
    uploaded: usize,
}

impl PrefixFiles {
    fn split(prefix: &str, source: &[u8], rng: &mut impl Rng) -> PrefixFiles {
        let mut lines: Vec<&[u8]> = source.split_inclusive(|&b| b == b'\n').collect();
        let header = lines.remove(0);
        let mut cuts: Vec<usize> = (0..rng.gen_range(1..=3))
            .map(|_| rng.gen_range(1..lines.len()))
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut bytes = Vec::new();
        let mut at = 0;
        for cut in cuts.into_iter().chain([lines.len()]) {
            bytes.push([&[header], &lines[at..cut]].concat().concat());
            at = cut;
        }
        let keys = (1..=bytes.len())
            .map(|i| format!("{prefix}part-{i:04}.csv"))
            .collect();
        PrefixFiles {
            keys,
            bytes,
            uploaded: 0,
        }
    }

    /// The next file to upload, if any is left.
    fn next(&mut self) -> Option<(String, Vec<u8>)> {
        let i = self.uploaded;
        let next = self.keys.get(i).cloned().zip(self.bytes.get(i).cloned());
        self.uploaded += usize::from(next.is_some());
        next
    }
}

/// `bytes` with one digit changed: the first of its first data row's amount (the 9th
/// field), so that rows read from the wrong version would change the stats; else its
/// last digit.
fn one_digit_changed(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let row = out.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
    let amount = out[row..]
        .iter()
        .take_while(|&&b| b != b'\n')
        .enumerate()
        .filter(|(_, &b)| b == b',')
        .nth(7)
        .map(|(i, _)| row + i + 1)
        .filter(|&at| out.get(at).is_some_and(u8::is_ascii_digit));
    if let Some(at) = amount.or_else(|| out.iter().rposition(u8::is_ascii_digit)) {
        out[at] = if out[at] == b'9' { b'8' } else { out[at] + 1 };
    }
    out
}

/// One schedule: its own stream, clock, stores, containers and event bus.
struct Schedule<'a> {
    stack: &'a mut Stack,
    label: String,
    seed: u64,
    n: u64,
    schedule_seed: u64,
    verbose: bool,
    env: Vec<(String, String)>,
    config: Config,
    pg_transactions: bool,
    park_after: u64,
    source_key: String,
    stream: StreamName,
    reference: Reference,
    poison: Vec<Poison>,
    clock: Arc<TestClock>,
    expiring: Arc<Expiring>,
    announce: UnboundedSender<String>,
    bus: EventBus,
    bus_rng: ChaCha8Rng,
    chaos: EventChaos,
    plain: Stores,
    chunker: ChunkerService,
    chunker_switch: Arc<CrashSwitch>,
    containers: Vec<Container>,
    made: u32,
    pg_down_until: Option<u64>,
    refusal: Option<Refusal>,
    /// The importance file as the stream was built with it.
    importance: Vec<u8>,
    /// The step at which a replaced importance file is put back.
    importance_back_at: Option<u64>,
    /// The source as cut (a single file's, or a prefix's files).
    source: Vec<u8>,
    files: Option<PrefixFiles>,
    /// A source file overwritten (its key and bytes as they were), and the step at
    /// which it is put back.
    swapped: Option<(String, Vec<u8>)>,
    source_back_at: Option<u64>,
    step: u64,
    last_head: u64,
    last_cursor: u64,
    head_before_drain: u64,
    log: VecDeque<String>,
    fig: Figures,
}

impl<'a> Schedule<'a> {
    async fn new(
        stack: &'a mut Stack,
        settings: &RunSettings,
        n: u64,
        base: &[u8],
        importance: &[u8],
    ) -> Result<Schedule<'a>> {
        let schedule_seed = mix(settings.seed, n);
        let mut rng = ChaCha8Rng::seed_from_u64(schedule_seed);
        let rows_per_chunk = *[300u64, 450, 600, 800].choose(&mut rng).unwrap_or(&450);
        let per_file = rng.gen_range(2..=12u64);
        let snapshot_every = rng.gen_range(2..=6u64);
        let max_lag = rng.gen_range(2..=6u64);
        let park_after = rng.gen_range(2..=3u64);
        let pg_transactions = rng.gen_bool(0.7);
        let (source, poison) = poisoned(base, &mut rng);
        // Odd schedules read every file under a prefix as one stream.
        let prefix = n % 2 == 1;
        let source_key = match prefix {
            true => format!("input/chaos-{}-{n}/", settings.seed),
            false => format!("input/chaos-{}-{n}.csv", settings.seed),
        };
        let mut env: Vec<(String, String)> = PATTERNS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let source_var = match prefix {
            // The quiet tail is never cut short: chunk boundaries stay the replay's
            // (a pause uploads the next file, or the stream is closed, first).
            true => {
                env.push(("TXPIPE_FLUSH_AFTER_SECS".into(), "86400".into()));
                "TXPIPE_SOURCE_PREFIX"
            }
            false => "TXPIPE_SOURCE_KEY",
        };
        for (k, v) in [
            (source_var, source_key.clone()),
            ("TXPIPE_ROWS_PER_CHUNK", rows_per_chunk.to_string()),
            ("TXPIPE_DETECTIONS_PER_FILE", per_file.to_string()),
            ("TXPIPE_SNAPSHOT_MAX_DELTAS", snapshot_every.to_string()),
            ("TXPIPE_MAX_LAG_CHUNKS", max_lag.to_string()),
            ("TXPIPE_PARK_AFTER_ATTEMPTS", park_after.to_string()),
            ("TXPIPE_DETECTOR_STALL_SECS", STALL_SECS.to_string()),
            (
                "TXPIPE_PG_TRANSACTIONS",
                if pg_transactions { "on" } else { "off" }.to_string(),
            ),
        ] {
            env.push((k.to_string(), v));
        }
        let extra: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let config = stack.config(&extra)?;
        let clock = TestClock::new();
        let plain = stack.stores(&config);
        let expiring = Arc::new(Expiring::new(
            plain.objects.clone(),
            clock.clone(),
            "chunks/",
            chrono::Duration::days(RETENTION_DAYS),
        ));
        let (announce, rx) = tokio::sync::mpsc::unbounded_channel();
        let chaos = EventChaos {
            drop: rng.gen_range(0.0..0.25),
            duplicate: rng.gen_range(0.0..0.3),
            delay: rng.gen_range(0.0..0.4),
            max_delay: rng.gen_range(1..=5),
            reorder: rng.gen_range(0.0..0.6),
            max_batch: rng.gen_range(1..=4),
        };
        let chunker_switch = CrashSwitch::new();
        let chunker = make_chunker(
            &*stack,
            &extra,
            &plain,
            &expiring,
            &announce,
            &chunker_switch,
            &clock,
        )?;
        let mut files = prefix.then(|| PrefixFiles::split(&source_key, &source, &mut rng));
        let stream = match files.as_mut().and_then(PrefixFiles::next) {
            Some((key, bytes)) => {
                // A prefix stream is named when the chunker first sees it.
                stack.put(&key, bytes).await?;
                let tick = serde_json::json!({"detail-type": "Scheduled Event"});
                let r = chunker
                    .handle(&tick, Instant::now() + Duration::from_millis(300))
                    .await?;
                let name = r.sources[0].stream.clone().context("no stream named")?;
                StreamName::parse(name.as_str()).context("stream name")?
            }
            None => {
                stack.put(&source_key, source.clone()).await?;
                stack.stream_of(&source_key).await?
            }
        };
        let reference = reference(&stream, &source, importance, &config, pg_transactions)?;
        for (row, bytes, what) in &poison {
            let found = reference.replay.rejected.iter().find(|r| r.row == *row);
            ensure!(
                found.is_some_and(|r| &r.raw == bytes),
                "schedule {n}: the replay does not reject poison row {row} ({what}) as inserted: {found:?}"
            );
        }
        let read_from = match &files {
            Some(f) => format!("a prefix of {} files", f.keys.len()),
            None => "one file".into(),
        };
        let label = format!(
            "schedule {n} (seed {}): {read_from}, R={rows_per_chunk}, {} chunks, {} detections/file, snapshot every {snapshot_every}, max lag {max_lag}, park after {park_after}, transactions {}, {} poison row(s), events {:?}",
            settings.seed,
            reference.chunks,
            per_file,
            if pg_transactions { "on" } else { "off" },
            poison.len(),
            chaos
        );
        let mut fig = Figures {
            schedules: 1,
            prefix_schedules: u64::from(prefix),
            chunks: reference.chunks,
            poison: poison.len() as u64,
            ..Figures::default()
        };
        fig.detections = reference.replay.detections.len() as u64;
        Ok(Schedule {
            stack,
            label,
            seed: settings.seed,
            n,
            schedule_seed,
            verbose: settings.verbose,
            env,
            config,
            pg_transactions,
            park_after,
            source_key,
            stream,
            reference,
            poison,
            clock,
            expiring,
            announce,
            bus: EventBus::new(rx),
            bus_rng: ChaCha8Rng::seed_from_u64(mix(schedule_seed, u64::MAX)),
            chaos,
            plain,
            chunker,
            chunker_switch,
            containers: Vec::new(),
            made: 0,
            pg_down_until: None,
            refusal: None,
            importance: importance.to_vec(),
            importance_back_at: None,
            source: source.clone(),
            files,
            swapped: None,
            source_back_at: None,
            step: 0,
            last_head: 0,
            last_cursor: 0,
            head_before_drain: 0,
            log: VecDeque::new(),
            fig,
        })
    }

    fn extra(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    fn note(&mut self, line: String) {
        let line = format!("step {}: {line}", self.step);
        if self.verbose {
            println!("    {line}");
        }
        self.log.push_back(line);
        while self.log.len() > 40 {
            self.log.pop_front();
        }
    }

    /// A failure, with everything needed to replay it.
    fn failure(&self, what: impl std::fmt::Display) -> anyhow::Error {
        let mut s = format!(
            "CHAOS FAILURE in schedule {} of seed {}: {what}\n  {}\n  replay: make chaos SEED={} ONLY={} VERBOSE=1 ROWS={}\n  last steps:\n",
            self.n,
            self.seed,
            self.label,
            self.seed,
            self.n,
            std::env::var("TXPIPE_CHAOS_ROWS").unwrap_or_else(|_| DEFAULT_ROWS.to_string())
        );
        for line in &self.log {
            let _ = writeln!(s, "    {line}");
        }
        anyhow::anyhow!(s)
    }

    async fn head(&self) -> Result<Option<DetectorHead>> {
        Ok(self.plain.state.load_head(&self.stream).await?)
    }

    async fn cursor(&self) -> Result<Option<ChunkCursor>> {
        let id = self.chunker.settings().source_id();
        Ok(self.plain.cursors.load_cursor(&id).await?)
    }

    /// A fresh detector container (a cold start).
    async fn container(&mut self) -> Result<usize> {
        self.made += 1;
        if self.made > 1 {
            self.fig.cold_starts += 1;
        }
        let plan = FaultPlan::new();
        let switch = CrashSwitch::new();
        let expiring: Arc<dyn ObjectStore> = self.expiring.clone();
        let stores = Stores {
            objects: Arc::new(CrashingObjects {
                inner: Arc::new(FaultyObjects {
                    inner: expiring,
                    plan: plan.clone(),
                }),
                switch: switch.clone(),
            }),
            state: Arc::new(CrashingState {
                inner: Arc::new(FaultyState {
                    inner: self.plain.state.clone(),
                    plan: plan.clone(),
                }),
                switch: switch.clone(),
            }),
            cursors: Arc::new(CrashingCursors {
                inner: self.plain.cursors.clone(),
                switch: switch.clone(),
            }),
            requests: Default::default(),
        };
        let sink = Arc::new(CrashingSink {
            inner: Arc::new(FaultySink {
                inner: self.stack.sink(&self.config)?,
                plan: plan.clone(),
            }),
            switch: switch.clone(),
        });
        let service = self
            .stack
            .detector_over(&self.extra(), stores, sink, self.clock.clone())
            .await?;
        self.containers.push(Container {
            name: format!("d{}", self.made),
            service,
            plan,
            switch,
        });
        Ok(self.containers.len() - 1)
    }

    /// A live container chosen at random, or a new one.
    async fn pick(&mut self, rng: &mut impl Rng) -> Result<usize> {
        match self.containers.len() {
            0 => self.container().await,
            n => Ok(rng.gen_range(0..n)),
        }
    }

    /// Two distinct containers.
    async fn pair(&mut self) -> Result<(usize, usize)> {
        while self.containers.len() < 2 {
            self.container().await?;
        }
        Ok((0, 1))
    }

    fn count_struck(&mut self, plan: &FaultPlan) {
        for (point, _) in plan.fired() {
            *self
                .fig
                .faults_struck
                .entry(format!("{point:?}"))
                .or_default() += 1;
        }
    }

    fn drop_container(&mut self, i: usize) {
        let c = self.containers.remove(i);
        self.count_struck(&c.plan);
    }

    /// A detector invocation's deadline: often too short for a chunk (nothing or part
    /// of the catch-up is done), sometimes a few chunks, sometimes plenty.
    fn deadline(rng: &mut impl Rng) -> Instant {
        let ms = match rng.gen_range(0..100) {
            0..35 => rng.gen_range(100..700),
            35..75 => rng.gen_range(700..3_000),
            _ => 10_000,
        };
        Instant::now() + Duration::from_millis(ms)
    }

    /// The next event's records, if one is ready. Nothing is invented when none is:
    /// S3 delivers what was announced (at least once, in any order, late), and a
    /// stream whose events were all lost must be found by the pipeline's own watch.
    fn event(&mut self) -> Option<Vec<String>> {
        let keys = self.bus.next_event(&mut self.bus_rng, &self.chaos);
        (!keys.is_empty()).then_some(keys)
    }

    /// Events for two overlapping containers: two ready events, or one delivered to
    /// both (S3 may deliver an event twice, to two containers at once).
    fn two_events(&mut self) -> Option<(Vec<String>, Vec<String>)> {
        let first = self.event()?;
        let second = match self.event() {
            Some(keys) => keys,
            None => {
                self.fig.twice += 1;
                first.clone()
            }
        };
        Some((first, second))
    }

    fn describe_keys(keys: &[String]) -> String {
        let numbers: Vec<String> = keys
            .iter()
            .filter_map(|k| txpipe::layout::parse_chunk_key(k).map(|(_, n)| n.to_string()))
            .collect();
        format!("[{}]", numbers.join(","))
    }

    /// Records what an invocation answered.
    fn answered(
        &mut self,
        who: &str,
        keys: &[String],
        r: &Result<DetectorResponse, DetectorError>,
    ) {
        let text = match r {
            Ok(resp) => {
                let mut parts = Vec::new();
                for s in &resp.streams {
                    self.fig.applied += s.applied.len() as u64;
                    if !s.applied.is_empty() {
                        parts.push(format!(
                            "applied {}..={}",
                            s.applied[0],
                            s.applied[s.applied.len() - 1]
                        ));
                    }
                    if s.duplicate {
                        parts.push("duplicate".into());
                    }
                    if s.busy {
                        self.fig.busy += 1;
                        parts.push("busy".into());
                    }
                    if s.deferred {
                        self.fig.deferred += 1;
                        parts.push("deferred".into());
                    }
                    if let Some(k) = s.missing {
                        self.fig.missing += 1;
                        parts.push(format!("missing {k}"));
                    }
                    if let Some(k) = s.waiting_for {
                        parts.push(format!("waiting for {k}"));
                    }
                    if let Some(k) = s.parked {
                        parts.push(format!("parked at {k}"));
                    }
                    parts.push(format!("next {}", s.next_chunk));
                }
                parts.join(", ")
            }
            Err(e) => {
                let kind = error_kind(e);
                *self.fig.errors.entry(kind.clone()).or_default() += 1;
                format!("error ({kind}): {}", truncate(&e.to_string(), 160))
            }
        };
        self.note(format!("{who} <- {}: {text}", Self::describe_keys(keys)));
    }

    /// Delivers `keys` to container `i`, which may be killed at its `kill`-th call.
    async fn invoke(
        &mut self,
        i: usize,
        keys: Vec<String>,
        deadline: Instant,
        kill: Option<(Strike, CrashMode)>,
        retry: bool,
        rng: &mut impl Rng,
    ) -> Result<()> {
        let event = object_created(BUCKET, &keys);
        let c = &self.containers[i];
        let name = c.name.clone();
        if let Some((strike, mode)) = kill {
            strike.arm(&c.switch, mode);
        }
        let outcome = tokio::select! {
            r = c.service.handle(&event, deadline) => Ok(r),
            trip = c.switch.tripped() => Err(trip),
        };
        c.switch.disarm();
        match outcome {
            Err(trip) => {
                *self
                    .fig
                    .kills
                    .entry(format!("{:?} {}", trip.mode, trip.op).to_lowercase())
                    .or_default() += 1;
                self.note(format!(
                    "{name} <- {}: killed {:?} call {} ({})",
                    Self::describe_keys(&keys),
                    trip.mode,
                    trip.call,
                    trip.op
                ));
                self.drop_container(i);
                // Lambda retries an invocation that timed out or crashed.
                if retry && rng.gen_bool(0.5) {
                    self.bus.retry(&keys, rng.gen_range(0..=2));
                }
            }
            Ok(r) => {
                self.answered(&name, &keys, &r);
                if r.is_err() && retry && rng.gen_bool(0.67) {
                    self.bus.retry(&keys, rng.gen_range(0..=2));
                }
            }
        }
        Ok(())
    }

    /// One chunker tick with `budget_ms`, maybe killed at its `kill`-th call.
    async fn tick(&mut self, budget_ms: u64, kill: Option<(Strike, CrashMode)>) -> Result<()> {
        self.fig.ticks += 1;
        let deadline = Instant::now() + Duration::from_millis(budget_ms);
        if let Some((strike, mode)) = kill {
            strike.arm(&self.chunker_switch, mode);
        }
        let switch = self.chunker_switch.clone();
        let tick = serde_json::json!({"detail-type": "Scheduled Event"});
        let outcome = tokio::select! {
            r = self.chunker.handle(&tick, deadline) => Ok(r),
            trip = switch.tripped() => Err(trip),
        };
        switch.disarm();
        match outcome {
            Err(trip) => {
                *self
                    .fig
                    .chunker_kills
                    .entry(format!("{:?} {}", trip.mode, trip.op).to_lowercase())
                    .or_default() += 1;
                self.note(format!(
                    "chunker ({budget_ms} ms) killed {:?} call {} ({})",
                    trip.mode, trip.call, trip.op
                ));
                // A new container.
                self.chunker_switch = CrashSwitch::new();
                self.chunker = make_chunker(
                    &*self.stack,
                    &self.extra(),
                    &self.plain,
                    &self.expiring,
                    &self.announce,
                    &self.chunker_switch,
                    &self.clock,
                )?;
            }
            Ok(Ok(mut response)) => {
                // One source per schedule.
                let r = response.sources.remove(0);
                // (A prefix stream may still cut rows of files before the one
                // overwritten: the outputs' comparison shows any mix.)
                if self.swapped.is_some() && self.files.is_none() && !r.chunks.is_empty() {
                    return Err(self.failure(format!(
                        "the chunker cut chunks {:?} from the overwritten source",
                        r.chunks
                    )));
                }
                self.fig.backpressure += r.backpressure_waits;
                if r.kicked.is_some() {
                    self.fig.kicks += 1;
                }
                self.note(format!(
                    "chunker ({budget_ms} ms): cut {:?}, next {}, lag {}, kicked {:?}, parked {:?}, backpressure {}",
                    r.chunks, r.next_chunk, r.lag, r.kicked, r.parked, r.backpressure_waits
                ));
            }
            Ok(Err(e)) => {
                *self.fig.errors.entry("chunker".to_string()).or_default() += 1;
                if self.source_back_at.is_some() {
                    self.fig.source_refusals += 1;
                }
                self.note(format!("chunker ({budget_ms} ms): error {e}"));
            }
        }
        Ok(())
    }

    async fn pg_pause(&mut self) -> Result<()> {
        let pg = self.stack.local.pg.as_mut().context("no Postgres")?;
        tokio::task::block_in_place(|| pg.pause())?;
        Ok(())
    }

    async fn pg_resume(&mut self) -> Result<()> {
        let pg = self.stack.local.pg.as_mut().context("no Postgres")?;
        tokio::task::block_in_place(|| pg.resume())?;
        self.pg_down_until = None;
        self.note("Postgres back".into());
        Ok(())
    }

    /// Drops the sink's refusal; if the stream parked on it, resumes it as an operator
    /// would (`txpipe resume`, which writes the chunk again: S3 announces it).
    async fn lift_refusal(&mut self) -> Result<()> {
        let Some(r) = self.refusal.take() else {
            return Ok(());
        };
        let pg = self.stack.pg_client().await?;
        pg.batch_execute(&format!(
            "ALTER TABLE chunks DROP CONSTRAINT {}",
            r.constraint
        ))
        .await?;
        let head = self.head().await?;
        let parked = head.as_ref().and_then(|h| h.parked().cloned());
        let Some(p) = parked else {
            self.note(format!(
                "sink refusal of chunk {} lifted (not parked)",
                r.chunk
            ));
            return Ok(());
        };
        if p.chunk != r.chunk || p.attempts < self.park_after || !p.reason.contains("23514") {
            return Err(self.failure(format!(
                "the stream parked at chunk {} after {} attempts ({}), but the sink refused chunk {} with park-after {}",
                p.chunk, p.attempts, p.reason, r.chunk, self.park_after
            )));
        }
        self.operator_resumes(&format!("sink refusal of chunk {} lifted", r.chunk))
            .await
    }

    /// The operator runs `txpipe resume`, which writes the parked chunk again: S3
    /// announces that write.
    async fn operator_resumes(&mut self, why: &str) -> Result<()> {
        self.fig.parked += 1;
        let out = txpipe_cli::operate::resume(
            &self.stack.local.clients,
            &self.config,
            Some(self.stream.clone()),
            false,
        )
        .await?;
        self.fig.resumed += 1;
        self.note(format!(
            "{why}; resumed: {}",
            out.trim().replace('\n', "; ")
        ));
        if let Some(key) = out
            .split("wrote ")
            .nth(1)
            .and_then(|rest| rest.split(" again").next())
        {
            self.bus
                .announce(key.to_string(), &mut self.bus_rng, &self.chaos);
        }
        Ok(())
    }

    /// Puts the original importance file back, as an operator would after the alarm.
    async fn restore_importance(&mut self) -> Result<()> {
        if self.importance_back_at.take().is_some() {
            self.stack
                .put(IMPORTANCE_KEY, self.importance.clone())
                .await?;
            self.note("the importance file restored".into());
        }
        Ok(())
    }

    /// Puts the source file back as it was (same bytes, so the same ETag).
    async fn restore_source(&mut self) -> Result<()> {
        self.source_back_at = None;
        if let Some((key, bytes)) = self.swapped.take() {
            self.stack.put(&key, bytes).await?;
            self.note(format!("{key} restored"));
        }
        Ok(())
    }

    /// A prefix schedule's next file lands under the prefix. Whether one did.
    async fn upload_next_file(&mut self) -> Result<bool> {
        let Some((key, bytes)) = self.files.as_mut().and_then(PrefixFiles::next) else {
            return Ok(false);
        };
        self.stack.put(&key, bytes).await?;
        self.fig.files_joined += 1;
        self.note(format!("{key} uploaded"));
        Ok(true)
    }

    /// The operator closes a prefix stream (`txpipe close-stream`) once every file has
    /// joined it. Whether it is closed (or finished) now.
    async fn close_when_joined(&mut self) -> Result<bool> {
        let Some(files) = &self.files else {
            return Ok(false);
        };
        let all = files.keys.len() as u64;
        let Some(cursor) = self.cursor().await? else {
            return Ok(false);
        };
        if cursor.closing || cursor.finished {
            return Ok(true);
        }
        if files.uploaded < files.keys.len() || cursor.files < all {
            return Ok(false);
        }
        match close_stream(self.plain.cursors.as_ref(), &cursor).await {
            Ok(_) => {
                self.fig.closed += 1;
                self.note(format!(
                    "the operator closed the stream ({all} files joined)"
                ));
                Ok(true)
            }
            Err(e) => {
                self.note(format!("close-stream: {e}"));
                Ok(false)
            }
        }
    }

    /// A stream parked because a container ran with the replaced importance file is
    /// resumed once the file is back (`txpipe resume`). Whether it was.
    async fn resume_settings_park(&mut self) -> Result<bool> {
        let head = self.head().await?;
        let parked = head.as_ref().and_then(|h| h.parked());
        let Some(p) = parked.filter(|p| p.reason.contains("was built with settings")) else {
            return Ok(false);
        };
        if self.importance_back_at.is_some() || self.fig.importance_swaps == 0 {
            return Ok(false);
        }
        let why = format!(
            "parked at chunk {} by the replaced importance file",
            p.chunk
        );
        self.fig.settings_parks += 1;
        self.operator_resumes(&why).await?;
        Ok(true)
    }

    /// Things that end by themselves: Postgres comes back; the importance file is put
    /// back; an operator resumes a stream parked on the refused chunk or on the
    /// replaced importance file.
    async fn housekeeping(&mut self, rng: &mut impl Rng) -> Result<()> {
        if self.pg_down_until.is_some_and(|s| self.step >= s) {
            self.pg_resume().await?;
        }
        if self.importance_back_at.is_some_and(|s| self.step >= s) {
            self.restore_importance().await?;
        }
        if self.source_back_at.is_some_and(|s| self.step >= s) {
            self.restore_source().await?;
        }
        if self.resume_settings_park().await? {
            return Ok(());
        }
        if self.refusal.is_some() && self.pg_down_until.is_none() && rng.gen_bool(0.7) {
            let parked = self.head().await?.is_some_and(|h| {
                h.parked()
                    .is_some_and(|p| !p.reason.contains("was built with settings"))
            });
            if parked {
                self.lift_refusal().await?;
            }
        }
        Ok(())
    }

    /// Heads and cursors never move back; the detector is never past the chunks cut.
    async fn check_progress(&mut self) -> Result<()> {
        let head = self.head().await?.map_or(0, |h| h.next_chunk);
        let cursor = self.cursor().await?.map_or(0, |c| c.next_chunk);
        if head < self.last_head {
            return Err(self.failure(format!(
                "the detector's head moved back from {} to {head}",
                self.last_head
            )));
        }
        if cursor < self.last_cursor {
            return Err(self.failure(format!(
                "the chunker's cursor moved back from {} to {cursor}",
                self.last_cursor
            )));
        }
        if head > cursor + 1 {
            return Err(self.failure(format!(
                "the detector applied {head} chunks but only {cursor} are cut"
            )));
        }
        self.last_head = head;
        self.last_cursor = cursor;
        Ok(())
    }

    async fn act(&mut self, action: Action, rng: &mut ChaCha8Rng) -> Result<()> {
        match action {
            Action::Tick => {
                let budget = match rng.gen_range(0..10) {
                    0..3 => rng.gen_range(0..200),
                    3..8 => rng.gen_range(200..700),
                    _ => rng.gen_range(700..2_500),
                };
                self.tick(budget, None).await?;
            }
            Action::ChunkerKill => {
                let mode = *[CrashMode::Before, CrashMode::After]
                    .choose(rng)
                    .unwrap_or(&CrashMode::Before);
                let strike = Strike::random(rng, CHUNKER_OPS, 14);
                self.tick(rng.gen_range(300..1_500), Some((strike, mode)))
                    .await?;
            }
            Action::Deliver => {
                let keys = self.bus.next_event(&mut self.bus_rng, &self.chaos);
                if keys.is_empty() {
                    self.note("no event ready".into());
                    return Ok(());
                }
                let i = self.pick(rng).await?;
                let deadline = Self::deadline(rng);
                self.invoke(i, keys, deadline, None, true, rng).await?;
            }
            Action::Kill => {
                let Some(keys) = self.event() else {
                    self.note("no event ready for a kill".into());
                    return Ok(());
                };
                let i = self.pick(rng).await?;
                let mode = *[CrashMode::Before, CrashMode::After]
                    .choose(rng)
                    .unwrap_or(&CrashMode::Before);
                let strike = Strike::random(rng, DETECTOR_OPS, 24);
                let deadline = Self::deadline(rng);
                self.invoke(i, keys, deadline, Some((strike, mode)), true, rng)
                    .await?;
            }
            Action::ReplaceImportance => {
                // Once a detector took the stream up (its head pins the file): before,
                // the replaced file would rightly become the stream's own.
                if self.importance_back_at.is_none() && self.head().await?.is_some() {
                    // One weight changed: containers that load it must refuse the
                    // stream, never apply chunks with other weights.
                    let text = String::from_utf8_lossy(&self.importance).into_owned();
                    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
                    if let Some(row) = lines.get_mut(1) {
                        let mut fields: Vec<String> = row.split(',').map(str::to_string).collect();
                        if fields.len() > 2 {
                            fields[2] = "99.99".into();
                        }
                        *row = fields.join(",");
                    }
                    self.stack
                        .put(IMPORTANCE_KEY, (lines.join("\n") + "\n").into_bytes())
                        .await?;
                    let back = self.step + rng.gen_range(1..=4);
                    self.importance_back_at = Some(back);
                    self.fig.importance_swaps += 1;
                    self.note(format!(
                        "the importance file replaced (one weight changed) until step {back}"
                    ));
                }
            }
            Action::ReplaceSource => {
                // The source overwritten (its last digit changed) for a few steps, then
                // put back: cutting must stop loudly meanwhile and never mix the two
                // versions; re-cuts of chunks the detector needs must still work.
                // While it is being cut (a finished stream's source replaced starts
                // another stream: a different scenario).
                // A prefix stream: one of the files that joined it, cut or not (one
                // uploaded but not joined yet would rightly join as it is then).
                let cursor = self.cursor().await?;
                let cutting = cursor.as_ref().is_some_and(|c| !c.finished);
                let joined = cursor.map_or(0, |c| c.files as usize);
                let target = match &self.files {
                    Some(f) if f.uploaded.min(joined) > 0 => {
                        let i = rng.gen_range(0..f.uploaded.min(joined));
                        Some((f.keys[i].clone(), f.bytes[i].clone()))
                    }
                    Some(_) => None,
                    None => Some((self.source_key.clone(), self.source.clone())),
                };
                if let Some((key, bytes)) = target.filter(|_| self.swapped.is_none() && cutting) {
                    self.stack.put(&key, one_digit_changed(&bytes)).await?;
                    let back = self.step + rng.gen_range(1..=4);
                    self.swapped = Some((key.clone(), bytes));
                    self.source_back_at = Some(back);
                    self.fig.source_swaps += 1;
                    self.note(format!(
                        "{key} overwritten (one digit changed) until step {back}"
                    ));
                }
            }
            Action::StateFaults => {
                // A cold container whose rebuild fails once; every live container's
                // next lease and next prune fail once.
                for i in 0..self.containers.len() {
                    self.containers[i].plan.arm(FaultPoint::Lease, 0);
                    self.containers[i].plan.arm(FaultPoint::Prune, 0);
                }
                let i = self.container().await?;
                self.containers[i].plan.arm(FaultPoint::ReadState, 0);
                for point in ["Lease", "Prune"] {
                    *self.fig.faults_armed.entry(point.into()).or_default() +=
                        self.containers.len() as u64 - 1;
                }
                *self.fig.faults_armed.entry("ReadState".into()).or_default() += 1;
                let name = self.containers[i].name.clone();
                self.note(format!(
                    "{name} (new) will fail its rebuild once; every other container its next lease and prune"
                ));
            }
            Action::Overlap => self.overlap(rng).await?,
            Action::Hold => self.hold(rng).await?,
            Action::ArmFault => {
                let i = self.pick(rng).await?;
                let next = self.head().await?.map_or(0, |h| h.next_chunk);
                let point = *FaultPoint::ALL.choose(rng).unwrap_or(&FaultPoint::Commit);
                let chunk = next + rng.gen_range(0..=3);
                self.containers[i].plan.arm(point, chunk);
                *self
                    .fig
                    .faults_armed
                    .entry(format!("{point:?}"))
                    .or_default() += 1;
                let name = self.containers[i].name.clone();
                self.note(format!("{name}: armed {point:?} at chunk {chunk}"));
            }
            Action::ColdStart => {
                if !self.containers.is_empty() {
                    let i = rng.gen_range(0..self.containers.len());
                    let name = self.containers[i].name.clone();
                    self.drop_container(i);
                    self.note(format!("{name} dropped (the next event cold-starts)"));
                }
            }
            Action::PgOutage => {
                if self.pg_down_until.is_none() {
                    self.pg_pause().await?;
                    self.fig.pg_outages += 1;
                    let back = self.step + rng.gen_range(1..=5);
                    self.pg_down_until = Some(back);
                    self.note(format!("Postgres down until step {back}"));
                }
            }
            Action::Refuse => {
                if self.refusal.is_none() && self.pg_down_until.is_none() {
                    let next = self.head().await?.map_or(0, |h| h.next_chunk);
                    let chunk = next + rng.gen_range(0..=2);
                    if chunk < self.reference.chunks {
                        let constraint = format!("chaos_refuse_{}_{}", self.n, chunk);
                        let pg = self.stack.pg_client().await?;
                        pg.batch_execute(&format!(
                            "ALTER TABLE chunks ADD CONSTRAINT {constraint}
                             CHECK (NOT (stream = '{}' AND chunk = {chunk})) NOT VALID",
                            self.stream.as_str()
                        ))
                        .await?;
                        self.fig.refusals += 1;
                        self.refusal = Some(Refusal { chunk, constraint });
                        self.note(format!("the sink refuses chunk {chunk} from now on"));
                    }
                }
            }
            Action::Corrupt => {
                // A chunk not applied yet, overwritten with its first half under its
                // metadata: the detector must refuse it and the chunker re-cut it.
                let next = self.head().await?.map_or(0, |h| h.next_chunk);
                let cut = self.cursor().await?.map_or(0, |c| c.next_chunk);
                if next < cut {
                    let k = rng.gen_range(next..cut);
                    let key = self.stream.chunk_key(k);
                    if let Some(o) = self.plain.objects.get(BUCKET, &key).await? {
                        if o.bytes.len() > 1 {
                            let metadata: Vec<(&str, String)> = o
                                .metadata
                                .iter()
                                .map(|(k, v)| (k.as_str(), v.clone()))
                                .collect();
                            let half = o.bytes[..o.bytes.len() / 2].to_vec();
                            self.plain
                                .objects
                                .put(BUCKET, &key, half, &metadata)
                                .await?;
                            self.fig.corrupted += 1;
                            self.note(format!("chunk {k} truncated to half under its metadata"));
                        }
                    }
                }
            }
            Action::JoinFile => {
                if !self.upload_next_file().await? {
                    self.close_when_joined().await?;
                }
            }
            Action::Pause => {
                // A prefix stream's quiet tail would be cut short after the pause:
                // closed first once every file is in, put off while one is on its way.
                let closed = self.close_when_joined().await?;
                let more = self.files.as_ref().map(|f| f.uploaded < f.keys.len());
                if more == Some(false) && !closed {
                    self.note("pause put off: the last file has not joined yet".into());
                    return Ok(());
                }
                let hours = RETENTION_DAYS * 24 + rng.gen_range(1..=72);
                self.clock.advance(chrono::Duration::hours(hours));
                let gone = self.expiring.expire_due().await?;
                self.fig.pauses += 1;
                self.fig.expired += gone.len() as u64;
                self.note(format!(
                    "paused {hours} h: {} chunk objects expired",
                    gone.len()
                ));
                // New data after the pause: the next tick finds a file joining.
                self.upload_next_file().await?;
            }
            Action::ClockStep => {
                let secs = match rng.gen_bool(0.5) {
                    true => STALL_SECS + 1,
                    false => rng.gen_range(1..=STALL_SECS),
                };
                self.clock.advance(chrono::Duration::seconds(secs));
                self.note(format!("clock +{secs} s"));
            }
        }
        Ok(())
    }

    /// Two containers handle events at the same time.
    async fn overlap(&mut self, rng: &mut ChaCha8Rng) -> Result<()> {
        let Some((k1, k2)) = self.two_events() else {
            self.note("no event ready to overlap".into());
            return Ok(());
        };
        let (a, b) = self.pair().await?;
        let d1 = Self::deadline(rng);
        let d2 = Self::deadline(rng);
        let (e1, e2) = (object_created(BUCKET, &k1), object_created(BUCKET, &k2));
        let (ca, cb) = (&self.containers[a], &self.containers[b]);
        let (na, nb) = (ca.name.clone(), cb.name.clone());
        let (ra, rb) = tokio::join!(ca.service.handle(&e1, d1), cb.service.handle(&e2, d2));
        self.fig.overlaps += 1;
        self.answered(&format!("{na} (overlapping {nb})"), &k1, &ra);
        self.answered(&format!("{nb} (overlapping {na})"), &k2, &rb);
        Ok(())
    }

    /// One container is held at a call (a paused process, lease in hand); maybe its
    /// lease runs out; another container handles an event; then the first goes on.
    async fn hold(&mut self, rng: &mut ChaCha8Rng) -> Result<()> {
        let Some((k1, k2)) = self.two_events() else {
            self.note("no event ready to hold".into());
            return Ok(());
        };
        let (a, b) = self.pair().await?;
        let strike = Strike::random(rng, DETECTOR_OPS, 16);
        let expire = rng.gen_bool(0.5);
        let d2 = Self::deadline(rng);
        let d1 = Instant::now() + Duration::from_secs(20);
        let (e1, e2) = (object_created(BUCKET, &k1), object_created(BUCKET, &k2));
        let clock = self.clock.clone();
        let (na, nb) = (
            self.containers[a].name.clone(),
            self.containers[b].name.clone(),
        );
        let outcome = {
            let (ca, cb) = (&self.containers[a], &self.containers[b]);
            strike.arm(&ca.switch, CrashMode::Hold);
            let first = ca.service.handle(&e1, d1);
            tokio::pin!(first);
            let held = tokio::select! {
                r = &mut first => Err(r),
                trip = ca.switch.tripped() => Ok(trip),
            };
            match held {
                Err(r) => {
                    ca.switch.disarm();
                    Err(r)
                }
                Ok(trip) => {
                    if expire {
                        // Longer than any lease a container takes here (deadline + 5 s).
                        clock.advance(chrono::Duration::seconds(60));
                    }
                    let rb = cb.service.handle(&e2, d2).await;
                    ca.switch.release();
                    let ra = first.await;
                    ca.switch.disarm();
                    Ok((trip, ra, rb))
                }
            }
        };
        let (trip, ra, rb) = match outcome {
            Ok(held) => held,
            Err(r) => {
                self.answered(
                    &format!("{na} (not held: never reached {strike:?})"),
                    &k1,
                    &r,
                );
                return Ok(());
            }
        };
        self.fig.holds += 1;
        *self.fig.holds_at.entry(trip.op.clone()).or_default() += 1;
        if expire {
            self.fig.holds_expired += 1;
        }
        let how = format!(
            "held at call {} ({}){}",
            trip.call,
            trip.op,
            if expire { ", lease ran out" } else { "" }
        );
        self.answered(&format!("{nb} (while {na} {how})"), &k2, &rb);
        self.answered(&format!("{na} (released after {how})"), &k1, &ra);
        Ok(())
    }

    /// Ticks the chunker and delivers events until the stream is finished. For the
    /// first `chunks` rounds the faults go on: lossy, late events spread over three
    /// containers, a container killed now and then, maybe a Postgres outage. Then the
    /// faults end, and two warm containers take the events in turn (each must pick up
    /// where the other left off).
    async fn drain(&mut self) -> Result<()> {
        for c in &self.containers {
            c.switch.disarm();
        }
        self.restore_importance().await?;
        self.restore_source().await?;
        while self.upload_next_file().await? {}
        let faulty_rounds = self.reference.chunks;
        let bound = faulty_rounds + 6 * self.reference.chunks + 60;
        for round in 0..bound {
            self.step += 1;
            self.fig.drain_rounds += 1;
            let mut rng = ChaCha8Rng::seed_from_u64(mix(self.schedule_seed, u64::MAX - round));
            if self
                .pg_down_until
                .is_some_and(|s| self.step >= s || round >= faulty_rounds)
            {
                self.pg_resume().await?;
            }
            self.tick(55_000, None).await?;
            self.close_when_joined().await?;
            if round < faulty_rounds {
                if round == 0 && self.pg_down_until.is_none() && rng.gen_bool(0.3) {
                    self.pg_pause().await?;
                    self.fig.pg_outages += 1;
                    self.pg_down_until = Some(self.step + rng.gen_range(1..=3));
                    self.note("Postgres down for the first drain rounds".into());
                }
                self.bus.collect(&mut self.bus_rng, &self.chaos);
                for _ in 0..rng.gen_range(1..=3) {
                    let Some(keys) = self.event() else {
                        break;
                    };
                    while self.containers.len() < 3 {
                        self.container().await?;
                    }
                    let i = rng.gen_range(0..self.containers.len());
                    let kill = rng.gen_bool(0.15).then(|| {
                        let mode = *[CrashMode::Before, CrashMode::After]
                            .choose(&mut rng)
                            .unwrap_or(&CrashMode::Before);
                        (Strike::random(&mut rng, DETECTOR_OPS, 24), mode)
                    });
                    let deadline = Self::deadline(&mut rng);
                    self.invoke(i, keys, deadline, kill, true, &mut rng).await?;
                }
            } else {
                self.bus.collect(&mut self.bus_rng, &EventChaos::reliable());
                let keys = self.bus.take_all();
                if !keys.is_empty() {
                    while self.containers.len() < 2 {
                        self.container().await?;
                    }
                    let i = (round % 2) as usize;
                    self.invoke(i, keys, far(), None, false, &mut rng).await?;
                }
            }
            self.check_progress().await?;
            let head = self.head().await?;
            if let Some(h) = &head {
                // Finished, and its old state pruned (the watch wakes the detector
                // until it is).
                if h.finished && !h.prune_pending && h.next_chunk == self.reference.chunks {
                    self.note(format!("finished after {round} drain rounds"));
                    if self.pg_down_until.is_some() {
                        self.pg_resume().await?;
                    }
                    return Ok(());
                }
                if h.parked().is_some() && self.resume_settings_park().await? {
                    continue;
                }
                if let Some(p) = h.parked() {
                    match &self.refusal {
                        // The operator acts once Postgres is back.
                        Some(_) if self.pg_down_until.is_some() => {}
                        Some(r) if r.chunk == p.chunk => self.lift_refusal().await?,
                        _ => {
                            return Err(self.failure(format!(
                            "the stream parked at chunk {} with no cause injected: {} attempts, {}",
                            p.chunk, p.attempts, p.reason
                        )))
                        }
                    }
                }
            }
            self.clock
                .advance(chrono::Duration::seconds(STALL_SECS + 1));
        }
        let head = self.head().await?;
        let cursor = self.cursor().await?;
        Err(self.failure(format!(
            "the stream did not finish within {bound} drain rounds: head {:?}, cursor next {:?} finished {:?}, {} events queued",
            head.map(|h| (h.next_chunk, h.finished, h.failure)),
            cursor.as_ref().map(|c| c.next_chunk),
            cursor.as_ref().map(|c| c.finished),
            self.bus.queued()
        )))
    }

    /// The stream's outputs against the replay.
    async fn verify(&mut self, clean_stats: &[CleanStats]) -> Result<()> {
        let got = stream_outputs(&*self.stack, &self.stream, self.pg_transactions).await?;
        let want = &self.reference.outputs;
        let once = exactly_once(&got, want);
        self.fig.lost = once.lost();
        self.fig.duplicated = once.duplicated();
        if once.lost() > 0 || once.duplicated() > 0 {
            return Err(self.failure(format!("detections not exactly once: {once:?}")));
        }
        if let Some(d) = first_difference(&got, want) {
            return Err(self.failure(format!("outputs differ from the replay: {d}")));
        }
        // Times included: however often a chunk was redone, S3, Postgres and the
        // ledger carry one set of times.
        if let Some(d) = times_disagree(&*self.stack, &self.stream).await? {
            return Err(self.failure(format!("a published time changed: {d}")));
        }
        let head = self.head().await?.context("no head")?;
        if head.totals != self.reference.totals || head.failure.is_some() {
            return Err(self.failure(format!(
                "head totals {:?} (failure {:?}), replay {:?}",
                head.totals, head.failure, self.reference.totals
            )));
        }
        self.same_state_everywhere(&head).await?;
        for (row, bytes, what) in &self.poison {
            let kept = got
                .rejected
                .iter()
                .any(|r| r.0 == *row as i64 && &r.2 == bytes);
            if !kept {
                return Err(self.failure(format!(
                    "poison row {row} ({what}) is not in rejected_rows with its exact bytes"
                )));
            }
        }
        let stats = without_last_chunk(&got.stats);
        if stats != clean_stats {
            let i = (0..stats.len().max(clean_stats.len()))
                .find(|&i| stats.get(i) != clean_stats.get(i))
                .unwrap_or(0);
            return Err(self.failure(format!(
                "the poison rows changed customer_stats: first difference at {i}: got {:?}, without poison {:?}",
                stats.get(i),
                clean_stats.get(i)
            )));
        }
        Ok(())
    }

    /// The state a warm container holds, a cold rebuild from storage and the replay's
    /// engine are the same bytes; and storage keeps nothing the head does not need.
    async fn same_state_everywhere(&mut self, head: &DetectorHead) -> Result<()> {
        let want = &self.reference.state.clone();
        for c in &self.containers {
            let image = c.service.detector().await.state_image(&self.stream);
            if let Some((next, image)) = image.filter(|(next, _)| *next == head.next_chunk) {
                self.fig.warm_compared += 1;
                if &image != want {
                    return Err(self.failure(format!(
                        "container {}'s warm state after chunk {next} differs from the replay's ({} bytes, want {})",
                        c.name,
                        image.len(),
                        want.len()
                    )));
                }
            }
        }
        let i = self.container().await?;
        let rebuilt = {
            let mut detector = self.containers[i].service.detector().await;
            detector.load_stream(&self.stream).await?;
            detector.state_image(&self.stream)
        };
        if rebuilt.as_ref().map(|(_, image)| image) != Some(want) {
            return Err(self.failure(format!(
                "a cold rebuild from storage differs from the replay's state: next chunk {:?}, {:?} bytes, want {} bytes",
                rebuilt.as_ref().map(|r| r.0),
                rebuilt.as_ref().map(|r| r.1.len()),
                want.len()
            )));
        }
        let left = self.stack.unneeded_state(&self.stream, head).await?;
        if !left.is_empty() {
            return Err(self.failure(format!(
                "the finished stream keeps state objects its head does not need: {left:?}"
            )));
        }
        Ok(())
    }

    async fn run(mut self) -> Result<(Figures, u64)> {
        let mut plan_rng = ChaCha8Rng::seed_from_u64(self.schedule_seed);
        let steps = 30 + 4 * self.reference.chunks as usize;
        let mut plan: Vec<Action> = MANDATORY.to_vec();
        while plan.len() < steps {
            plan.push(random_action(&mut plan_rng));
        }
        plan.shuffle(&mut plan_rng);
        for action in plan {
            self.step += 1;
            // Decisions of one step do not shift those of the next, whatever the
            // services answered.
            let mut rng = ChaCha8Rng::seed_from_u64(mix(self.schedule_seed, self.step));
            // Time passes between steps (leases of killed containers run out, a
            // detector without progress looks stalled to the chunker).
            self.clock
                .advance(chrono::Duration::milliseconds(rng.gen_range(0..8_000)));
            self.bus.collect(&mut self.bus_rng, &self.chaos);
            self.housekeeping(&mut rng).await?;
            self.act(action, &mut rng).await?;
            self.bus.collect(&mut self.bus_rng, &self.chaos);
            self.check_progress().await?;
        }
        self.fig.steps = self.step;
        self.head_before_drain = self.head().await?.map_or(0, |h| h.next_chunk);
        self.drain().await?;
        let live: Vec<Arc<FaultPlan>> = self.containers.iter().map(|c| c.plan.clone()).collect();
        for plan in live {
            self.count_struck(&plan);
        }
        let clean = CLEAN.get().cloned().unwrap_or_default();
        self.verify(&clean).await?;
        self.fig.bus = self.bus.counts.clone();
        Ok((self.fig, self.head_before_drain))
    }
}

/// After a failed schedule (TXPIPE_CHAOS_KEEP_GOING=1): Postgres up, no refusal left.
async fn recover(stack: &mut Stack) -> Result<()> {
    if let Some(pg) = stack.local.pg.as_mut() {
        // Fails harmlessly when it is running.
        let _ = tokio::task::block_in_place(|| pg.resume());
    }
    let pg = stack.pg_client().await?;
    for row in pg
        .query(
            "SELECT conname FROM pg_constraint WHERE conname LIKE 'chaos_refuse_%'",
            &[],
        )
        .await?
    {
        let name: String = row.get(0);
        pg.batch_execute(&format!("ALTER TABLE chunks DROP CONSTRAINT {name}"))
            .await?;
    }
    Ok(())
}

/// A customer_stats row without `last_chunk` (which shifts with the poison rows).
type CleanStats = (String, String, i64, String, String, Option<String>);

/// Customer stats rows with `last_chunk` dropped.
fn without_last_chunk(stats: &[StatsRow]) -> Vec<CleanStats> {
    stats
        .iter()
        .map(|s| {
            (
                s.0.clone(),
                s.1.clone(),
                s.2,
                s.3.clone(),
                s.4.clone(),
                s.5.clone(),
            )
        })
        .collect()
}

/// Customer stats of the source without poison rows.
static CLEAN: std::sync::OnceLock<Vec<CleanStats>> = std::sync::OnceLock::new();

fn make_chunker(
    stack: &Stack,
    extra: &[(&str, &str)],
    plain: &Stores,
    expiring: &Arc<Expiring>,
    announce: &UnboundedSender<String>,
    switch: &Arc<CrashSwitch>,
    clock: &Arc<TestClock>,
) -> Result<ChunkerService> {
    let expiring: Arc<dyn ObjectStore> = expiring.clone();
    let stores = Stores {
        objects: Arc::new(CrashingObjects {
            inner: Arc::new(Notifying {
                inner: expiring,
                events: announce.clone(),
            }),
            switch: switch.clone(),
        }),
        cursors: Arc::new(CrashingCursors {
            inner: plain.cursors.clone(),
            switch: switch.clone(),
        }),
        state: Arc::new(CrashingState {
            inner: plain.state.clone(),
            switch: switch.clone(),
        }),
        requests: Default::default(),
    };
    stack.chunker_over(extra, stores, clock.clone())
}

fn error_kind(e: &DetectorError) -> String {
    let text = e.to_string();
    if text.contains("injected fault") {
        "injected fault".into()
    } else if text.contains("23514") {
        "sink refused".into()
    } else if text.contains("was built with settings") {
        "refused: built with another importance file".into()
    } else if matches!(e, DetectorError::Sink(_)) || text.contains("Connection refused") {
        "Postgres unavailable".into()
    } else if matches!(e, DetectorError::Contended { .. }) {
        "commit contended".into()
    } else {
        // Unexpected: named in full in the figures.
        format!("other: {}", truncate(&text, 120))
    }
}

fn truncate(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_schedules_end_exactly_as_the_replay() -> Result<()> {
    let settings = run_settings()?;
    println!(
        "chaos: seed {} ({} schedules, {} rows); replay one with `make chaos SEED={} ROWS={} ONLY=<n> VERBOSE=1`",
        settings.seed, settings.schedules, settings.rows, settings.seed, settings.rows
    );
    let started = Instant::now();
    let mut stack = Stack::start(true).await?;
    let dir = temp_dir("chaos")?;
    let (base, importance) = generate(&dir, settings.rows, settings.seed, CUSTOMERS)?;
    stack.put(IMPORTANCE_KEY, importance.clone()).await?;
    // The schema, as the first detector would make it (a refusal may come first).
    txpipe::postgres::migrate(&mut stack.pg_client().await?).await?;
    {
        let config = stack.config(PATTERNS)?;
        let clean = reference(
            &StreamName::parse("clean").context("stream name")?,
            &base,
            &importance,
            &config,
            false,
        )?;
        let per_pattern = txpipe::PerPattern::of(clean.replay.detections.iter().map(|d| &d.key));
        println!(
            "chaos: data {} rows, {} customers: detections {per_pattern}",
            settings.rows, CUSTOMERS
        );
        ensure!(
            per_pattern.iter().all(|(_, n)| n > 0),
            "every pattern must fire on the chaos data: {per_pattern}"
        );
        let stats = without_last_chunk(&clean.outputs.stats);
        let _ = CLEAN.set(stats);
    }
    let mut total = Figures::default();
    let schedules: Vec<u64> = match settings.only {
        Some(n) => vec![n],
        None => (0..settings.schedules).collect(),
    };
    let mut failed: Vec<(u64, String)> = Vec::new();
    for n in schedules {
        let t = Instant::now();
        let schedule = Schedule::new(&mut stack, &settings, n, &base, &importance).await?;
        println!("chaos: {}", schedule.label);
        let (fig, before_drain) = match schedule.run().await {
            Ok(done) => done,
            Err(e) if settings.keep_going => {
                println!("{e:#}");
                failed.push((
                    n,
                    format!("{e:#}")
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                ));
                recover(&mut stack).await?;
                continue;
            }
            Err(e) => return Err(e),
        };
        println!(
            "chaos: schedule {n} done in {:.1} s: {} steps ({before_drain}/{} chunks applied before the drain), {} kills, {} faults struck, {} holds, {} events ({} dropped, {} duplicated), {} detections, lost {} duplicated {}",
            t.elapsed().as_secs_f64(),
            fig.steps,
            fig.chunks,
            fig.kills.values().sum::<u64>() + fig.chunker_kills.values().sum::<u64>(),
            fig.faults_struck.values().sum::<u64>(),
            fig.holds,
            fig.bus.events,
            fig.bus.dropped,
            fig.bus.duplicated,
            fig.detections,
            fig.lost,
            fig.duplicated
        );
        total.add(&fig);
    }
    if !failed.is_empty() {
        let list: Vec<String> = failed.iter().map(|(n, e)| format!("  {n}: {e}")).collect();
        anyhow::bail!(
            "chaos: seed {}: {} schedule(s) failed (the others passed):\n{}\n{}",
            settings.seed,
            failed.len(),
            list.join("\n"),
            total.report()
        );
    }
    println!(
        "chaos: seed {} passed in {:.1} s\n{}",
        settings.seed,
        started.elapsed().as_secs_f64(),
        total.report()
    );
    ensure!(total.lost == 0 && total.duplicated == 0);
    // One schedule (ONLY=<n>) need not show every kind; a run does.
    if settings.only.is_none() {
        let missing = total.never_happened();
        ensure!(
            missing.is_empty(),
            "chaos: seed {}: the run claims these faults, but they never happened: {}",
            settings.seed,
            missing.join(", ")
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
