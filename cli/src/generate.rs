//! `txpipe generate`: seeded data sets in BankSim's format (the public file cannot be
//! downloaded here), in three cardinality shapes:
//!
//! - `banksim` (default): the shape of bs140513_032310.csv and its network file, after
//!   its published profile: ~4,100 customers, 50 merchants, one category per merchant,
//!   two transport merchants with most of the traffic, F ≈ 54.6 %, M ≈ 45.1 %, E/U rare,
//!   amounts by category, one importance row per transaction. Tuned so each pattern
//!   fires: a few frequent, low-spending commuters (UPGRADE), many small transport fares
//!   (CHILD), some male-leaning categories (DEI-NEEDED). Its bytes for a seed never
//!   change (tests depend on them).
//! - `high-cardinality`: a stream with millions of customers over thousands of
//!   merchants. Merchant popularity is Zipf (s = 1) so a few merchants take most rows;
//!   each customer has 1 to 3 favourite merchants (3 of 4 rows) and goes anywhere else
//!   by popularity; activity is log-normal. 3 M rows give about 955 k customers and
//!   1.98 M distinct (merchant, customer) pairs over 5,000 merchants, with 100 k
//!   importance rows by default.
//! - `new-pairs`: every row is a new (merchant, customer) pair (each customer visits
//!   distinct merchants in turn): the worst case for state size and delta size.
//!
//! Ids are unique by construction in the two large shapes (a bijection of the index),
//! so "every row a new pair" holds exactly.

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Size and seed of a generated data set.
pub struct GenerateOptions {
    /// Data rows in transactions.csv.
    pub rows: u64,
    /// RNG seed: the same seed gives byte-identical files.
    pub seed: u64,
    /// Distinct customers.
    pub customers: usize,
}

/// The cardinality shape of a data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// BankSim's shape: ~4,100 customers, 50 merchants.
    Banksim,
    /// Millions of customers over thousands of merchants, heavy-tailed.
    HighCardinality,
    /// Every row a new (merchant, customer) pair.
    NewPairs,
}

/// Shape-specific settings; `None` takes the shape's default.
#[derive(Debug, Clone, Copy)]
pub struct ShapeOptions {
    /// The shape.
    pub shape: Shape,
    /// Merchants (banksim 50, the others 5,000).
    pub merchants: Option<usize>,
    /// CustomerImportance.csv rows (not for banksim, which has one per transaction;
    /// the others 100,000 per 3 M rows).
    pub importance_rows: Option<u64>,
}

/// Arguments of `txpipe generate`.
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    /// Data rows.
    #[arg(long, default_value_t = 594_643)]
    pub rows: u64,
    /// Seed: the same seed writes the same bytes.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Distinct customers (default: banksim 4,112; high-cardinality 0.343 per row, which
    /// leaves ~0.318 per row that appear; new-pairs one per 8 rows).
    #[arg(long)]
    pub customers: Option<usize>,
    /// Cardinality shape.
    #[arg(long, value_enum, default_value_t = Shape::Banksim)]
    pub shape: Shape,
    /// Merchants (default: banksim 50, others 5,000).
    #[arg(long)]
    pub merchants: Option<usize>,
    /// CustomerImportance.csv rows (high-cardinality and new-pairs; default 1 per 30 rows).
    #[arg(long)]
    pub importance_rows: Option<u64>,
    /// Output directory.
    #[arg(long, default_value = "data")]
    pub out: PathBuf,
    /// Write the transactions as a `transactions/` folder of this many parts (keys
    /// like `2026/12/04/10/part-0001.csv`, four to an hour), for a prefix stream,
    /// instead of one transactions.csv.
    #[arg(long)]
    pub parts: Option<usize>,
}

/// `txpipe generate`: writes the files and says what it wrote.
pub fn run(args: GenerateArgs) -> Result<()> {
    let customers = args.customers.unwrap_or(match args.shape {
        Shape::Banksim => 4_112,
        Shape::HighCardinality => ((args.rows as f64 * 0.343) as usize).max(1),
        Shape::NewPairs => (args.rows.div_ceil(8) as usize).max(1),
    });
    let (rows, customers) = generate_shaped(
        &GenerateOptions {
            rows: args.rows,
            seed: args.seed,
            customers,
        },
        &ShapeOptions {
            shape: args.shape,
            merchants: args.merchants,
            importance_rows: args.importance_rows,
        },
        &args.out,
    )?;
    if let Some(parts) = args.parts {
        let written = write_parts(&args.out, parts)?;
        println!(
            "wrote {rows} rows in {written} parts under {}, {customers} customers",
            args.out.join(PARTS_DIR).display()
        );
        return Ok(());
    }
    println!(
        "wrote {rows} rows, {customers} customers to {}",
        args.out.display()
    );
    Ok(())
}

/// The folder of a data set's parts (a prefix stream's files).
pub const PARTS_DIR: &str = "transactions";

/// The key of part `i` (0-based) under the parts folder: four parts to an hour, as a
/// Firehose delivery stream lays out its objects.
pub fn part_key(i: usize) -> String {
    format!("2026/12/04/{:02}/part-{:04}.csv", 10 + i / 4, i + 1)
}

/// Splits `dir/transactions.csv` into `parts` files under `dir/transactions/` (each
/// with the header, row counts uneven by design) and removes it; returns the parts
/// written. The parts' rows, in key order, are the file's rows.
pub fn write_parts(dir: &Path, parts: usize) -> Result<usize> {
    if parts == 0 {
        bail!("--parts must be at least 1");
    }
    let path = dir.join("transactions.csv");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    let header = lines.next().context("transactions.csv is empty")?;
    let rows: Vec<&str> = lines.collect();
    let folder = dir.join(PARTS_DIR);
    let _ = std::fs::remove_dir_all(&folder);
    // Uneven sizes: part i gets a share weighted 1, 2, 3, 1, 2, 3, …
    let weights: Vec<usize> = (0..parts).map(|i| 1 + i % 3).collect();
    let total: usize = weights.iter().sum();
    let mut at = 0;
    for (i, w) in weights.iter().enumerate() {
        let n = match i + 1 == parts {
            true => rows.len() - at,
            false => (rows.len() * w / total).min(rows.len() - at),
        };
        let file = folder.join(part_key(i));
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut body = String::with_capacity(header.len() + 1 + n * 80);
        body.push_str(header);
        body.push('\n');
        for row in &rows[at..at + n] {
            body.push_str(row);
            body.push('\n');
        }
        std::fs::write(&file, body).with_context(|| format!("writing {}", file.display()))?;
        at += n;
    }
    std::fs::remove_file(&path)?;
    Ok(parts)
}

/// The parts under `dir/transactions/`, as (key under the folder, path), in key order.
pub fn list_parts(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let folder = dir.join(PARTS_DIR);
    let mut found = Vec::new();
    let mut pending = vec![folder.clone()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(rel) = path.strip_prefix(&folder) {
                let key = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                found.push((key, path));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// (category, mean amount in rupees, male lean: >1 attracts men).
const CATEGORIES: [(&str, f64, f64); 15] = [
    ("es_transportation", 26.9, 1.0),
    ("es_food", 37.1, 0.9),
    ("es_health", 103.7, 0.9),
    ("es_wellnessandbeauty", 65.5, 0.5),
    ("es_fashion", 65.7, 0.6),
    ("es_barsandrestaurants", 43.5, 1.3),
    ("es_hyper", 45.9, 1.0),
    ("es_sportsandtoys", 215.7, 2.2),
    ("es_tech", 120.9, 2.4),
    ("es_home", 165.7, 0.8),
    ("es_hotelservices", 205.6, 1.2),
    ("es_otherservices", 75.7, 1.1),
    ("es_contents", 44.5, 1.8),
    ("es_travel", 2250.4, 1.4),
    ("es_leisure", 288.9, 1.2),
];

struct Customer {
    id: String,
    age: char,
    gender: &'static str,
    activity: f64,
    spend: f64,
    favourites: Vec<usize>,
}

struct Merchant {
    id: String,
    category: usize,
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box–Muller.
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn pick(cumulative: &[f64], rng: &mut ChaCha8Rng) -> usize {
    let total = *cumulative.last().unwrap_or(&1.0);
    let x = rng.gen::<f64>() * total;
    cumulative
        .partition_point(|&c| c <= x)
        .min(cumulative.len() - 1)
}

fn cumulative(weights: impl Iterator<Item = f64>) -> Vec<f64> {
    weights
        .scan(0.0, |acc, w| {
            *acc += w;
            Some(*acc)
        })
        .collect()
}

/// Python-style amount text: `26.9`, `112.0`, `4.55`.
fn amount_text(cents: u64) -> String {
    let mut s = format!("{}.{:02}", cents / 100, cents % 100);
    if s.ends_with('0') {
        s.pop();
    }
    s
}

fn gender(rng: &mut ChaCha8Rng) -> &'static str {
    let g: f64 = rng.gen();
    if g < 0.546 {
        "F"
    } else if g < 0.997 {
        "M"
    } else if g < 0.999 {
        "E"
    } else {
        "U"
    }
}

/// The two output files, header written.
struct Files {
    tx: BufWriter<std::fs::File>,
    imp: BufWriter<std::fs::File>,
}

impl Files {
    fn create(out: &Path) -> Result<Self> {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let open = |name: &str| -> Result<BufWriter<std::fs::File>> {
            let path = out.join(name);
            Ok(BufWriter::with_capacity(
                1 << 20,
                std::fs::File::create(&path)
                    .with_context(|| format!("creating {}", path.display()))?,
            ))
        };
        let mut files = Files {
            tx: open("transactions.csv")?,
            imp: open("CustomerImportance.csv")?,
        };
        writeln!(
            files.tx,
            "step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud"
        )?;
        writeln!(files.imp, "Source,Target,Weight,typeTrans,fraud")?;
        Ok(files)
    }

    fn finish(mut self) -> Result<()> {
        self.tx.flush()?;
        self.imp.flush()?;
        Ok(())
    }
}

/// Writes the default (banksim) transactions.csv and CustomerImportance.csv into `out`.
pub fn generate(opts: &GenerateOptions, out: &Path) -> Result<(u64, usize)> {
    generate_shaped(
        opts,
        &ShapeOptions {
            shape: Shape::Banksim,
            merchants: None,
            importance_rows: None,
        },
        out,
    )
}

/// Writes a data set of the given shape into `out`; returns (rows, customers).
pub fn generate_shaped(
    opts: &GenerateOptions,
    shape: &ShapeOptions,
    out: &Path,
) -> Result<(u64, usize)> {
    if opts.customers == 0 {
        bail!("--customers must be at least 1");
    }
    if shape.merchants == Some(0) {
        bail!("--merchants must be at least 1");
    }
    match shape.shape {
        Shape::Banksim => {
            if shape.importance_rows.is_some() {
                bail!("--importance-rows does not apply to the banksim shape, which writes one importance row per transaction");
            }
            banksim(opts, shape.merchants.unwrap_or(50), out)
        }
        Shape::HighCardinality | Shape::NewPairs => {
            let merchants = shape.merchants.unwrap_or(5_000);
            let importance = shape.importance_rows.unwrap_or((opts.rows / 30).max(1));
            if shape.shape == Shape::HighCardinality {
                high_cardinality(opts, merchants, importance, out)
            } else {
                new_pairs(opts, merchants, importance, out)
            }
        }
    }
}

fn banksim(opts: &GenerateOptions, n_merchants: usize, out: &Path) -> Result<(u64, usize)> {
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);

    let mut merchants = Vec::new();
    for i in 0..n_merchants {
        // Merchants 0 and 1 are the two big transport merchants; the rest cycle the
        // other categories.
        let category = if i < 2 {
            0
        } else {
            1 + (i - 2) % (CATEGORIES.len() - 1)
        };
        merchants.push(Merchant {
            id: format!("M{}", rng.gen_range(100_000_000u64..2_100_000_000)),
            category,
        });
    }
    let small_weights: Vec<f64> = (0..n_merchants)
        .map(|i| {
            if i < 2 {
                0.0
            } else {
                1.0 / (1.0 + (i as f64 - 2.0) * 0.08)
            }
        })
        .collect();

    let mut customers = Vec::with_capacity(opts.customers);
    for _ in 0..opts.customers {
        let gender = gender(&mut rng);
        let commuter = rng.gen::<f64>() < 0.012;
        let activity = (0.6 * normal(&mut rng)).exp() * if commuter { 4.0 } else { 1.0 };
        let spend = (0.35 * normal(&mut rng)).exp() * if commuter { 0.3 } else { 1.0 };
        let age = b"0123456U"[rng.gen_range(0..8)] as char;
        let lean = |m: &Merchant| {
            let male_lean = CATEGORIES[m.category].2;
            if gender == "M" {
                male_lean
            } else {
                1.0 / male_lean
            }
        };
        let affinity = cumulative(
            merchants
                .iter()
                .enumerate()
                .map(|(i, m)| small_weights[i] * lean(m)),
        );
        // With fewer than 3 merchants every merchant is a big one: no favourites.
        let favourites = if n_merchants > 2 {
            (0..rng.gen_range(3..9))
                .map(|_| pick(&affinity, &mut rng))
                .collect()
        } else {
            vec![0]
        };
        customers.push(Customer {
            id: format!("C{}", rng.gen_range(100_000_000u64..2_100_000_000)),
            age,
            gender,
            activity,
            spend,
            favourites,
        });
    }
    let by_activity = cumulative(customers.iter().map(|c| c.activity));

    let mut files = Files::create(out)?;
    for row in 0..opts.rows {
        let step = row * 180 / opts.rows.max(1);
        let c = &customers[pick(&by_activity, &mut rng)];
        let r: f64 = rng.gen();
        let m = if r < 0.50 {
            &merchants[0]
        } else if r < 0.85 {
            &merchants[1.min(n_merchants - 1)]
        } else {
            &merchants[c.favourites[rng.gen_range(0..c.favourites.len())]]
        };
        let (category, mean, _) = CATEGORIES[m.category];
        let amount = (mean * c.spend * (0.45 * normal(&mut rng) - 0.1).exp()).max(0.0);
        let cents = (amount * 100.0).round() as u64;
        let fraud = u8::from(rng.gen::<f64>() < 0.012);
        let amount = amount_text(cents);
        writeln!(
            files.tx,
            "{step},'{}','{}','{}','28007','{}','28007','{category}',{amount},{fraud}",
            c.id, c.age, c.gender, m.id
        )?;
        writeln!(
            files.imp,
            "'{}','{}',{amount},'{category}',{fraud}",
            c.id, m.id
        )?;
    }
    files.finish()?;
    Ok((opts.rows, customers.len()))
}

/// A unique id for index `i`: `prefix` then a 10-digit number. The map
/// `i ↦ (i·A + offset) mod 9·10⁹` is a bijection (A is coprime with 9·10⁹), so distinct
/// indices get distinct ids that still look random.
fn unique_id(prefix: char, i: u64, offset: u64) -> String {
    const SPAN: u64 = 9_000_000_000;
    const A: u64 = 2_654_435_761; // odd and not a multiple of 3 or 5
    let n = (u128::from(i) * u128::from(A) + u128::from(offset)) % u128::from(SPAN);
    format!("{prefix}{}", 1_000_000_000 + n as u64)
}

/// Merchants for the large shapes: unique ids, a category each, Zipf popularity (s = 1)
/// in a random order of ids.
fn large_merchants(rng: &mut ChaCha8Rng, n: usize) -> Vec<Merchant> {
    let offset = rng.gen_range(0..9_000_000_000u64);
    (0..n)
        .map(|i| Merchant {
            id: unique_id('M', i as u64, offset),
            category: rng.gen_range(0..CATEGORIES.len()),
        })
        .collect()
}

/// Writes one transaction row.
fn write_row(
    out: &mut impl Write,
    step: u64,
    customer: &Customer,
    merchant: &Merchant,
    rng: &mut ChaCha8Rng,
) -> Result<()> {
    let (category, mean, _) = CATEGORIES[merchant.category];
    let amount = (mean * customer.spend * (0.45 * normal(rng) - 0.1).exp()).max(0.0);
    let cents = (amount * 100.0).round() as u64;
    let fraud = u8::from(rng.gen::<f64>() < 0.012);
    writeln!(
        out,
        "{step},'{}','{}','{}','28007','{}','28007','{category}',{},{fraud}",
        customer.id,
        customer.age,
        customer.gender,
        merchant.id,
        amount_text(cents)
    )?;
    Ok(())
}

/// Importance rows for pairs drawn by `draw` (a row's (customer, merchant)), from their
/// own RNG so the transactions do not depend on how many there are.
fn write_importance(
    files: &mut Files,
    rows: u64,
    seed: u64,
    customers: &[Customer],
    merchants: &[Merchant],
    mut draw: impl FnMut(&mut ChaCha8Rng) -> (usize, usize),
) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x1a2b_3c4d_5e6f_7081);
    for _ in 0..rows {
        let (c, m) = draw(&mut rng);
        let (customer, merchant) = (&customers[c], &merchants[m]);
        let category = CATEGORIES[merchant.category].0;
        // Weights from 0.01 to 100.00, cents only, so equal weights (ties) happen.
        let weight = rng.gen_range(1..=10_000u64);
        writeln!(
            files.imp,
            "'{}','{}',{},'{category}',0",
            customer.id,
            merchant.id,
            amount_text(weight)
        )?;
    }
    Ok(())
}

fn large_customers(rng: &mut ChaCha8Rng, n: usize, activity_sigma: f64) -> Vec<Customer> {
    let offset = rng.gen_range(0..9_000_000_000u64);
    (0..n)
        .map(|i| Customer {
            id: unique_id('C', i as u64, offset),
            age: b"0123456U"[rng.gen_range(0..8)] as char,
            gender: gender(rng),
            activity: (activity_sigma * normal(rng)).exp(),
            spend: (0.35 * normal(rng)).exp(),
            favourites: Vec::new(),
        })
        .collect()
}

fn high_cardinality(
    opts: &GenerateOptions,
    n_merchants: usize,
    importance_rows: u64,
    out: &Path,
) -> Result<(u64, usize)> {
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let merchants = large_merchants(&mut rng, n_merchants);
    // Zipf popularity, with a gender lean by category so some merchants draw more men
    // than women (DEI-NEEDED can fire).
    let zipf = |i: usize| 1.0 / (i as f64 + 1.0);
    let by_popularity = |male: bool| {
        cumulative(merchants.iter().enumerate().map(|(i, m)| {
            let lean = CATEGORIES[m.category].2;
            zipf(i) * if male { lean } else { 1.0 / lean }
        }))
    };
    let (for_women, for_men) = (by_popularity(false), by_popularity(true));
    let mut customers = large_customers(&mut rng, opts.customers, 0.25);
    for c in customers.iter_mut() {
        let cum = if c.gender == "M" {
            &for_men
        } else {
            &for_women
        };
        c.favourites = (0..rng.gen_range(1..=3))
            .map(|_| pick(cum, &mut rng))
            .collect();
    }
    let by_activity = cumulative(customers.iter().map(|c| c.activity));

    let mut files = Files::create(out)?;
    let draw = |rng: &mut ChaCha8Rng| {
        let c = pick(&by_activity, rng);
        let customer = &customers[c];
        let m = if rng.gen::<f64>() < 0.75 {
            customer.favourites[rng.gen_range(0..customer.favourites.len())]
        } else {
            pick(
                if customer.gender == "M" {
                    &for_men
                } else {
                    &for_women
                },
                rng,
            )
        };
        (c, m)
    };
    for row in 0..opts.rows {
        let (c, m) = draw(&mut rng);
        let step = row * 180 / opts.rows.max(1);
        write_row(&mut files.tx, step, &customers[c], &merchants[m], &mut rng)?;
    }
    write_importance(
        &mut files,
        importance_rows,
        opts.seed,
        &customers,
        &merchants,
        draw,
    )?;
    files.finish()?;
    Ok((opts.rows, customers.len()))
}

fn new_pairs(
    opts: &GenerateOptions,
    n_merchants: usize,
    importance_rows: u64,
    out: &Path,
) -> Result<(u64, usize)> {
    let per_customer = opts.rows.div_ceil(opts.customers as u64);
    if per_customer > n_merchants as u64 {
        bail!(
            "new-pairs: {} rows over {} customers is {per_customer} rows each, more than the {n_merchants} merchants; give more --customers or --merchants",
            opts.rows,
            opts.customers
        );
    }
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let merchants = large_merchants(&mut rng, n_merchants);
    let customers = large_customers(&mut rng, opts.customers, 0.0);
    let starts: Vec<usize> = (0..customers.len())
        .map(|_| rng.gen_range(0..n_merchants))
        .collect();
    // Row i goes to customer i mod C, on that customer's (i div C)-th merchant after
    // its start: at most one row per (customer, merchant).
    let pair = |i: u64| {
        let c = (i % customers.len() as u64) as usize;
        let j = (i / customers.len() as u64) as usize;
        (c, (starts[c] + j) % n_merchants)
    };
    let mut files = Files::create(out)?;
    for row in 0..opts.rows {
        let (c, m) = pair(row);
        let step = row * 180 / opts.rows.max(1);
        write_row(&mut files.tx, step, &customers[c], &merchants[m], &mut rng)?;
    }
    let rows = opts.rows.max(1);
    write_importance(
        &mut files,
        importance_rows,
        opts.seed,
        &customers,
        &merchants,
        |rng| pair(rng.gen_range(0..rows)),
    )?;
    files.finish()?;
    Ok((opts.rows, customers.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("txpipe-gen-{name}-{}", std::process::id()))
    }

    #[test]
    fn same_seed_same_bytes_and_parseable() {
        let dir = temp("seed");
        let opts = GenerateOptions {
            rows: 2_000,
            seed: 7,
            customers: 300,
        };
        generate(&opts, &dir.join("a")).unwrap();
        generate(&opts, &dir.join("b")).unwrap();
        let a = std::fs::read(dir.join("a/transactions.csv")).unwrap();
        assert_eq!(a, std::fs::read(dir.join("b/transactions.csv")).unwrap());
        let rows: Vec<_> = txpipe::parse::TransactionReader::new(&a, 1)
            .unwrap()
            .collect();
        assert_eq!(rows.len(), 2_000);
        assert!(rows.iter().all(|r| r.is_ok()));
        let imp = std::fs::read(dir.join("a/CustomerImportance.csv")).unwrap();
        let load = txpipe::ImportanceTable::parse(&imp).unwrap();
        assert!(load.rejected.is_empty());
        assert_eq!(load.table.rows(), 2_000);
        std::fs::remove_dir_all(dir).ok();
    }

    /// The banksim bytes are pinned: tests elsewhere depend on them. (FNV-1a of the
    /// files for a small set, taken before the shapes were added.)
    #[test]
    fn banksim_bytes_do_not_change() {
        let dir = temp("pinned");
        let opts = GenerateOptions {
            rows: 5_000,
            seed: 42,
            customers: 4_112,
        };
        generate(&opts, &dir).unwrap();
        let fnv = |b: &[u8]| {
            b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
                (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
            })
        };
        let tx = std::fs::read(dir.join("transactions.csv")).unwrap();
        let imp = std::fs::read(dir.join("CustomerImportance.csv")).unwrap();
        assert_eq!(
            (fnv(&tx), fnv(&imp)),
            (PINNED_TX, PINNED_IMP),
            "banksim output changed"
        );
        std::fs::remove_dir_all(dir).ok();
    }

    const PINNED_TX: u64 = 0xf81e_70fd_f7a3_1107;
    const PINNED_IMP: u64 = 0x3a3c_ecc1_be21_73cc;

    fn pairs_of(dir: &Path) -> (usize, usize, usize, u64) {
        let tx = std::fs::read(dir.join("transactions.csv")).unwrap();
        let mut pairs = HashSet::new();
        let mut customers = HashSet::new();
        let mut rows = 0;
        for row in txpipe::parse::TransactionReader::new(&tx, 1).unwrap() {
            let row = row.unwrap();
            customers.insert(row.customer.to_string());
            pairs.insert((row.merchant.to_string(), row.customer.to_string()));
            rows += 1;
        }
        let imp = std::fs::read(dir.join("CustomerImportance.csv")).unwrap();
        let load = txpipe::ImportanceTable::parse(&imp).unwrap();
        assert!(load.rejected.is_empty());
        (
            pairs.len(),
            customers.len(),
            load.table.rows() as usize,
            rows,
        )
    }

    #[test]
    fn new_pairs_are_all_new() {
        let dir = temp("new-pairs");
        let opts = GenerateOptions {
            rows: 20_000,
            seed: 3,
            customers: 2_500,
        };
        let shape = ShapeOptions {
            shape: Shape::NewPairs,
            merchants: Some(100),
            importance_rows: Some(500),
        };
        generate_shaped(&opts, &shape, &dir).unwrap();
        assert_eq!(pairs_of(&dir), (20_000, 2_500, 500, 20_000));
        let too_few = GenerateOptions {
            customers: 10,
            ..opts
        };
        assert!(generate_shaped(&too_few, &shape, &dir).is_err());
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn high_cardinality_is_deterministic_and_wide() {
        let dir = temp("high");
        let opts = GenerateOptions {
            rows: 30_000,
            seed: 5,
            customers: 10_290,
        };
        let shape = ShapeOptions {
            shape: Shape::HighCardinality,
            merchants: Some(500),
            importance_rows: None,
        };
        generate_shaped(&opts, &shape, &dir.join("a")).unwrap();
        generate_shaped(&opts, &shape, &dir.join("b")).unwrap();
        for f in ["transactions.csv", "CustomerImportance.csv"] {
            assert_eq!(
                std::fs::read(dir.join("a").join(f)).unwrap(),
                std::fs::read(dir.join("b").join(f)).unwrap()
            );
        }
        let (pairs, customers, importance, rows) = pairs_of(&dir.join("a"));
        assert_eq!((importance, rows), (1_000, 30_000));
        // ~0.66 pairs and ~0.32 customers per row, as at 3 M rows.
        assert!((17_000..23_000).contains(&pairs), "{pairs}");
        assert!((8_000..11_000).contains(&customers), "{customers}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn ids_are_unique() {
        let ids: HashSet<String> = (0..100_000).map(|i| unique_id('C', i, 12_345)).collect();
        assert_eq!(ids.len(), 100_000);
        assert!(ids.iter().all(|id| id.len() == 11));
    }

    #[test]
    fn amounts_look_like_python_floats() {
        assert_eq!(amount_text(455), "4.55");
        assert_eq!(amount_text(11200), "112.0");
        assert_eq!(amount_text(2690), "26.9");
    }
}
