//! `txpipe generate`: a seeded, BankSim-shaped data set (the public file cannot be
//! downloaded here). Same format and quoting as bs140513_032310.csv and its network
//! file; the shape follows its published profile: ~4,100 customers, 50 merchants, one
//! category per merchant, two transport merchants with most of the traffic, F ≈ 54.6 %,
//! M ≈ 45.1 %, E/U rare, amounts by category.
//!
//! The shape is tuned so each pattern fires on the default data: a few frequent,
//! low-spending commuters (UPGRADE), many small transport fares (CHILD), and some
//! male-leaning categories (DEI-NEEDED).

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::io::{BufWriter, Write};
use std::path::Path;

/// Size and seed of a generated data set.
pub struct GenerateOptions {
    /// Data rows in transactions.csv.
    pub rows: u64,
    /// RNG seed: the same seed gives byte-identical files.
    pub seed: u64,
    /// Distinct customers.
    pub customers: usize,
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

/// Writes transactions.csv and CustomerImportance.csv into `out`.
pub fn generate(opts: &GenerateOptions, out: &Path) -> Result<(u64, usize)> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);

    let mut merchants = Vec::new();
    for i in 0..50 {
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
    let small_weights: Vec<f64> = (0..50)
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
        let g: f64 = rng.gen();
        let gender = if g < 0.546 {
            "F"
        } else if g < 0.997 {
            "M"
        } else if g < 0.999 {
            "E"
        } else {
            "U"
        };
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
        let favourites = (0..rng.gen_range(3..9))
            .map(|_| pick(&affinity, &mut rng))
            .collect();
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

    let tx_path = out.join("transactions.csv");
    let imp_path = out.join("CustomerImportance.csv");
    let mut tx = BufWriter::new(
        std::fs::File::create(&tx_path)
            .with_context(|| format!("creating {}", tx_path.display()))?,
    );
    let mut imp = BufWriter::new(
        std::fs::File::create(&imp_path)
            .with_context(|| format!("creating {}", imp_path.display()))?,
    );
    writeln!(
        tx,
        "step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud"
    )?;
    writeln!(imp, "Source,Target,Weight,typeTrans,fraud")?;
    for row in 0..opts.rows {
        let step = row * 180 / opts.rows.max(1);
        let c = &customers[pick(&by_activity, &mut rng)];
        let r: f64 = rng.gen();
        let m = if r < 0.50 {
            &merchants[0]
        } else if r < 0.85 {
            &merchants[1]
        } else {
            &merchants[c.favourites[rng.gen_range(0..c.favourites.len())]]
        };
        let (category, mean, _) = CATEGORIES[m.category];
        let amount = (mean * c.spend * (0.45 * normal(&mut rng) - 0.1).exp()).max(0.0);
        let cents = (amount * 100.0).round() as u64;
        let fraud = u8::from(rng.gen::<f64>() < 0.012);
        let amount = amount_text(cents);
        writeln!(
            tx,
            "{step},'{}','{}','{}','28007','{}','28007','{category}',{amount},{fraud}",
            c.id, c.age, c.gender, m.id
        )?;
        writeln!(imp, "'{}','{}',{amount},'{category}',{fraud}", c.id, m.id)?;
    }
    tx.flush()?;
    imp.flush()?;
    Ok((opts.rows, customers.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes_and_parseable() {
        let dir = std::env::temp_dir().join(format!("txpipe-gen-{}", std::process::id()));
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

    #[test]
    fn amounts_look_like_python_floats() {
        assert_eq!(amount_text(455), "4.55");
        assert_eq!(amount_text(11200), "112.0");
        assert_eq!(amount_text(2690), "26.9");
    }
}
