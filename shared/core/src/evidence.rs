//! Why a detection fired: the values that made its pattern's condition true at the
//! chunk where it fired (docs/behaviour.md#evidence). Exact, like the engine: counts
//! are integers, weights and averages exact fractions, and every value is written as a
//! string, so no reader rounds it.

use crate::varint;
use crate::weight::Weight;
use serde_json::{json, Value};

/// The values behind one detection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evidence {
    /// PatId1, UPGRADE.
    Upgrade(UpgradeEvidence),
    /// PatId2, CHILD: the customer's transactions at the merchant and their total.
    Child {
        /// Transactions.
        txns: u64,
        /// Their total amount, in cents.
        cents: u128,
    },
    /// PatId3, DEI-NEEDED: the merchant's customers by gender.
    Dei {
        /// Female customers.
        female: u64,
        /// Male customers.
        male: u64,
    },
    /// Any other pattern's values, by name (camelCase), each already an exact string
    /// (an integer, or [`exact_fraction`]).
    Values(Vec<(String, String)>),
}

/// PatId1's values: where the customer stands in the merchant's count and weight
/// distributions, and the thresholds there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpgradeEvidence {
    /// The customer's transactions at the merchant.
    pub txns: u64,
    /// The merchant's transactions.
    pub merchant_txns: u64,
    /// Customers of the merchant (the count distribution's size).
    pub customers: u64,
    /// The top percentile's nearest rank, counted from the lowest count.
    pub top_rank: u64,
    /// The count at that rank: the customer has at least this many.
    pub count_at_top_rank: u64,
    /// The customer's weight w(m, c).
    pub weight: Weight,
    /// Customers of the merchant with a weight (the weight distribution's size).
    pub weighted_customers: u64,
    /// The bottom percentile's nearest rank, counted from the lowest weight.
    pub bottom_rank: u64,
    /// The weight at that rank: the customer's is at most this.
    pub weight_at_bottom_rank: Weight,
}

/// `num / den` exactly: a decimal when it has a finite one (`22.99`), else a fraction
/// in lowest terms (`2299/3`).
pub fn exact_fraction(num: i128, den: u128) -> String {
    let den = den.max(1);
    let g = gcd(num.unsigned_abs(), den);
    let (n, d) = (num.unsigned_abs() / g, den / g);
    let sign = if num < 0 && n != 0 { "-" } else { "" };
    // d = 2^a 5^b has a finite decimal with max(a, b) digits.
    let (mut rest, mut twos, mut fives) = (d, 0u32, 0u32);
    while rest % 2 == 0 {
        rest /= 2;
        twos += 1;
    }
    while rest % 5 == 0 {
        rest /= 5;
        fives += 1;
    }
    let digits = twos.max(fives);
    let scale = 10u128.checked_pow(digits);
    // No finite decimal, or one too long to compute: the fraction itself.
    let Some((scale, scaled)) = scale
        .filter(|_| rest == 1)
        .and_then(|scale| Some((scale, n.checked_mul(scale / d)?)))
    else {
        return format!("{sign}{n}/{d}");
    };
    let (int, frac) = (scaled / scale, scaled % scale);
    match digits {
        0 => format!("{sign}{int}"),
        _ => format!("{sign}{int}.{frac:0width$}", width = digits as usize),
    }
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

/// A weight as its exact decimal value (weights are means of micro-unit decimals).
fn weight_text(w: &Weight) -> String {
    exact_fraction(w.micros_sum(), u128::from(w.rows()) * 1_000_000)
}

impl Evidence {
    /// The JSON object of the evidence: field names in camelCase, every value a string.
    pub fn to_json(&self) -> Value {
        let s = |n: u64| n.to_string();
        match self {
            Evidence::Upgrade(u) => json!({
                "customerTxns": s(u.txns),
                "merchantTxns": s(u.merchant_txns),
                "customers": s(u.customers),
                "topRank": s(u.top_rank),
                "countAtTopRank": s(u.count_at_top_rank),
                "customerWeight": weight_text(&u.weight),
                "weightedCustomers": s(u.weighted_customers),
                "bottomRank": s(u.bottom_rank),
                "weightAtBottomRank": weight_text(&u.weight_at_bottom_rank),
            }),
            Evidence::Child { txns, cents } => json!({
                "txns": s(*txns),
                "amountCents": cents.to_string(),
                "averageRupees": exact_fraction(*cents as i128, u128::from(*txns) * 100),
            }),
            Evidence::Dei { female, male } => json!({
                "femaleCustomers": s(*female),
                "maleCustomers": s(*male),
            }),
            Evidence::Values(values) => Value::Object(
                values
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            ),
        }
    }

    /// Appends the compact stored form (a kind byte, then varints), for detections a
    /// stream carries between chunks until their file is full. Kind 0 is no evidence.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let wide = |out: &mut Vec<u8>, v: u128| {
            varint::put(out, (v >> 64) as u64);
            varint::put(out, v as u64);
        };
        let weight = |out: &mut Vec<u8>, w: &Weight| {
            // Zigzag over i128: a weight's sum may be negative.
            let m = w.micros_sum();
            wide(out, ((m << 1) ^ (m >> 127)) as u128);
            varint::put(out, w.rows());
        };
        match self {
            Evidence::Upgrade(u) => {
                out.push(1);
                for v in [u.txns, u.merchant_txns, u.customers, u.top_rank] {
                    varint::put(out, v);
                }
                varint::put(out, u.count_at_top_rank);
                weight(out, &u.weight);
                varint::put(out, u.weighted_customers);
                varint::put(out, u.bottom_rank);
                weight(out, &u.weight_at_bottom_rank);
            }
            Evidence::Child { txns, cents } => {
                out.push(2);
                varint::put(out, *txns);
                wide(out, *cents);
            }
            Evidence::Dei { female, male } => {
                out.push(3);
                varint::put(out, *female);
                varint::put(out, *male);
            }
            Evidence::Values(values) => {
                out.push(4);
                varint::put(out, values.len() as u64);
                for text in values.iter().flat_map(|(k, v)| [k, v]) {
                    varint::put(out, text.len() as u64);
                    out.extend_from_slice(text.as_bytes());
                }
            }
        }
    }

    /// Reads what [`Evidence::encode`] wrote (`Some(None)`: kind 0, no evidence;
    /// `None`: truncated or unknown).
    pub fn decode(bytes: &[u8], pos: &mut usize) -> Option<Option<Evidence>> {
        let kind = *bytes.get(*pos)?;
        *pos += 1;
        let mut next = || varint::read(bytes, pos);
        let wide = |next: &mut dyn FnMut() -> Option<u64>| {
            Some((u128::from(next()?) << 64) | u128::from(next()?))
        };
        let weight = |next: &mut dyn FnMut() -> Option<u64>| {
            let z = wide(next)?;
            let m = ((z >> 1) as i128) ^ -((z & 1) as i128);
            let rows = next()?;
            (rows > 0).then(|| Weight::new(m, rows))
        };
        Some(Some(match kind {
            0 => return Some(None),
            1 => {
                let (txns, merchant_txns, customers, top_rank) =
                    (next()?, next()?, next()?, next()?);
                let count_at_top_rank = next()?;
                let w = weight(&mut next)?;
                let (weighted_customers, bottom_rank) = (next()?, next()?);
                let at_bottom = weight(&mut next)?;
                Evidence::Upgrade(UpgradeEvidence {
                    txns,
                    merchant_txns,
                    customers,
                    top_rank,
                    count_at_top_rank,
                    weight: w,
                    weighted_customers,
                    bottom_rank,
                    weight_at_bottom_rank: at_bottom,
                })
            }
            2 => {
                let txns = next()?;
                Evidence::Child {
                    txns,
                    cents: wide(&mut next)?,
                }
            }
            3 => Evidence::Dei {
                female: next()?,
                male: next()?,
            },
            4 => {
                let n = next()?;
                // Each value takes at least two bytes: a count beyond that is damage.
                if n > bytes.len() as u64 {
                    return None;
                }
                let mut values = Vec::new();
                for _ in 0..n {
                    values.push((read_text(bytes, pos)?, read_text(bytes, pos)?));
                }
                Evidence::Values(values)
            }
            _ => return None,
        }))
    }
}

/// A length-prefixed UTF-8 text of the stored form.
fn read_text(bytes: &[u8], pos: &mut usize) -> Option<String> {
    let len = usize::try_from(varint::read(bytes, pos)?).ok()?;
    let end = pos.checked_add(len).filter(|&e| e <= bytes.len())?;
    let text = std::str::from_utf8(&bytes[*pos..end]).ok()?.to_string();
    *pos = end;
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_are_exact() {
        assert_eq!(exact_fraction(2299, 100), "22.99");
        assert_eq!(exact_fraction(2300, 100), "23");
        assert_eq!(exact_fraction(6899, 300), "6899/300");
        assert_eq!(exact_fraction(45_980, 2_000), "22.99");
        assert_eq!(exact_fraction(1, 3), "1/3");
        assert_eq!(exact_fraction(-5, 2), "-2.5");
        assert_eq!(exact_fraction(0, 7), "0");
        assert_eq!(exact_fraction(5_550_000, 2_000_000), "2.775");
        // Too large to scale to a decimal: exact as a fraction, never wrapped.
        let big = i128::MAX;
        assert_eq!(
            exact_fraction(big, 1 << 40),
            format!("{big}/{}", 1u128 << 40)
        );
        // A decimal of 30 digits whose scaled numerator would not fit in 128 bits.
        assert_eq!(
            exact_fraction(big, 1 << 30),
            format!("{big}/{}", 1u128 << 30)
        );
        assert_eq!(exact_fraction(i128::MAX, 1), i128::MAX.to_string());
    }

    #[test]
    fn the_stored_form_round_trips() {
        let all = [
            Evidence::Upgrade(UpgradeEvidence {
                txns: 41,
                merchant_txns: 50_001,
                customers: 300,
                top_rank: 297,
                count_at_top_rank: 40,
                weight: Weight::new(-1_234_567, 3),
                weighted_customers: 280,
                bottom_rank: 3,
                weight_at_bottom_rank: Weight::new(i128::MAX / 4, 7),
            }),
            Evidence::Child {
                txns: 80,
                cents: u128::from(u64::MAX) * 3,
            },
            Evidence::Dei {
                female: 101,
                male: 102,
            },
            Evidence::Values(vec![
                ("txns".into(), "21".into()),
                ("averageRupees".into(), "5000.01".into()),
            ]),
        ];
        let mut out = Vec::new();
        for e in &all {
            e.encode(&mut out);
        }
        out.push(0);
        let mut pos = 0;
        for e in &all {
            let back = Evidence::decode(&out, &mut pos).unwrap().unwrap();
            assert_eq!(back.to_json(), e.to_json());
        }
        assert_eq!(Evidence::decode(&out, &mut pos), Some(None), "kind 0: none");
        assert_eq!(pos, out.len());
        assert_eq!(Evidence::decode(&[9], &mut 0), None, "an unknown kind");
    }
}
