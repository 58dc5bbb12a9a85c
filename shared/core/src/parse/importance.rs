//! CustomerImportance.csv: the weight of each customer at each merchant.

use super::csv_scan::{strip_bom, strip_single_quotes, Scanner};
use super::decimal::parse_micros;
use super::header::{ColumnMap, HeaderError};
use super::ids::check_no_nul;
use super::transactions::{take_id, RejectReason};
use super::RejectedRow;
use crate::weight::Weight;
use rustc_hash::FxHashMap;
use std::borrow::Cow;

/// The columns read from CustomerImportance.csv (`typeTrans` and `fraud` are ignored).
pub const IMPORTANCE_COLUMNS: [&str; 3] = ["Source", "Target", "Weight"];

/// `w(m,c)` for every (merchant, customer) pair that has importance rows.
#[derive(Debug, Default, Clone)]
pub struct ImportanceTable {
    by_merchant: FxHashMap<String, FxHashMap<String, Weight>>,
    rows: u64,
}

/// The table plus the rows that could not be used.
#[derive(Debug)]
pub struct ImportanceLoad {
    /// The weights.
    pub table: ImportanceTable,
    /// Rows rejected, with reasons.
    pub rejected: Vec<RejectedRow>,
}

impl ImportanceTable {
    /// Parses a whole CustomerImportance.csv.
    pub fn parse(buf: &[u8]) -> Result<ImportanceLoad, HeaderError> {
        let buf = strip_bom(buf);
        let mut scanner = Scanner::new();
        let mut pos = 0;
        let mut header = None;
        while let Some(span) = scanner.next_record(buf, pos, true) {
            pos = span.next;
            if !span.is_blank() {
                header = Some(&buf[span.start..span.end]);
                break;
            }
        }
        let columns = ColumnMap::find("CustomerImportance", header, &IMPORTANCE_COLUMNS)?;
        let [source, target, weight] = [0, 1, 2].map(|i| columns.positions[i]);
        let mut sums: FxHashMap<String, FxHashMap<String, (i128, u64)>> = FxHashMap::default();
        let mut rejected = Vec::new();
        let mut fields: Vec<Cow<[u8]>> = Vec::new();
        let mut row = 0u64;
        let mut accepted = 0u64;
        while let Some(span) = scanner.next_record(buf, pos, true) {
            pos = span.next;
            if span.is_blank() {
                continue;
            }
            row += 1;
            let raw = &buf[span.start..span.end];
            scanner.split_fields(raw, &mut fields);
            let parsed = (|| {
                check_no_nul(raw)?;
                if fields.len() != columns.width {
                    return Err(RejectReason::FieldCount {
                        expected: columns.width,
                        found: fields.len(),
                    });
                }
                let customer = take_id(&mut fields[source], "Source")?;
                let merchant = take_id(&mut fields[target], "Target")?;
                let text = strip_single_quotes(&fields[weight]);
                let micros = parse_micros(text).ok_or_else(|| RejectReason::BadWeight {
                    text: String::from_utf8_lossy(text).into_owned(),
                })?;
                Ok((customer.into_owned(), merchant.into_owned(), micros))
            })();
            match parsed {
                Ok((customer, merchant, micros)) => {
                    accepted += 1;
                    let entry = sums
                        .entry(merchant)
                        .or_default()
                        .entry(customer)
                        .or_default();
                    entry.0 += i128::from(micros);
                    entry.1 += 1;
                }
                Err(reason) => rejected.push(RejectedRow {
                    row,
                    raw: raw.to_vec(),
                    reason,
                }),
            }
        }
        let by_merchant = sums
            .into_iter()
            .map(|(m, customers)| {
                let weights = customers
                    .into_iter()
                    .map(|(c, (sum, n))| (c, Weight::new(sum, n)))
                    .collect();
                (m, weights)
            })
            .collect();
        Ok(ImportanceLoad {
            table: ImportanceTable {
                by_merchant,
                rows: accepted,
            },
            rejected,
        })
    }

    /// `w(m,c)`, if customer `c` has any importance row at merchant `m`.
    pub fn weight(&self, merchant: &str, customer: &str) -> Option<Weight> {
        self.by_merchant.get(merchant)?.get(customer).copied()
    }

    /// Number of rows that contributed to the table.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Number of (merchant, customer) pairs with a weight.
    pub fn pairs(&self) -> usize {
        self.by_merchant.values().map(|m| m.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_is_mean_over_all_type_trans() {
        let text = "Source,Target,Weight,typeTrans,fraud\n'C1','M1',4.55,'es_food',0\n'C1','M1',1.00,'es_bar',0\n\"C2\",M1,3,x,1\n";
        let load = ImportanceTable::parse(text.as_bytes()).unwrap();
        assert!(load.rejected.is_empty());
        assert_eq!(
            load.table.weight("M1", "C1"),
            Some(Weight::new(5_550_000, 2))
        );
        assert_eq!(
            load.table.weight("M1", "C2"),
            Some(Weight::new(3_000_000, 1))
        );
        assert_eq!(load.table.weight("M2", "C1"), None);
        assert_eq!(load.table.rows(), 3);
    }

    #[test]
    fn bad_weight_rows_are_kept_with_reasons() {
        let text = "Source,Target,Weight,typeTrans,fraud\r\n'C1','M1',abc,'x',0\r\n'C1','M1',2,'x'\r\n'','M1',2,'x',0\r\n";
        let load = ImportanceTable::parse(text.as_bytes()).unwrap();
        let reasons: Vec<_> = load
            .rejected
            .iter()
            .map(|r| (r.row, r.reason.clone()))
            .collect();
        assert_eq!(
            reasons,
            vec![
                (1, RejectReason::BadWeight { text: "abc".into() }),
                (
                    2,
                    RejectReason::FieldCount {
                        expected: 5,
                        found: 4
                    }
                ),
                (3, RejectReason::EmptyField { column: "Source" }),
            ]
        );
        assert_eq!(load.table.pairs(), 0);
    }

    #[test]
    fn id_rules_and_nul_apply_to_importance_rows() {
        let long = "C".repeat(129);
        let mut text = b"Source,Target,Weight,typeTrans,fraud\n".to_vec();
        text.extend_from_slice(format!("'{long}','M1',1,'x',0\n").as_bytes());
        text.extend_from_slice(b"'C1','M\t1',1,'x',0\n");
        text.extend_from_slice(b"'C1','M1',1,'x\0',0\n");
        text.extend_from_slice(b"'C\xff','M1',1,'x',0\n");
        text.extend_from_slice(b"'C1','M1',1,'caf\xe9',0\n"); // unused column: fine
        text.extend_from_slice(format!("'{}','M1',2,'x',0\n", "C".repeat(128)).as_bytes());
        let load = ImportanceTable::parse(&text).unwrap();
        let reasons: Vec<_> = load
            .rejected
            .iter()
            .map(|r| (r.row, r.reason.clone()))
            .collect();
        assert_eq!(
            reasons,
            vec![
                (
                    1,
                    RejectReason::IdTooLong {
                        column: "Source",
                        len: 129,
                        limit: 128
                    }
                ),
                (
                    2,
                    RejectReason::ControlCharacter {
                        column: "Target",
                        code: 9
                    }
                ),
                (3, RejectReason::NulByte { offset: 14 }),
                (4, RejectReason::NotUtf8 { column: "Source" }),
            ]
        );
        assert_eq!(load.rejected[2].raw, b"'C1','M1',1,'x\0',0");
        assert_eq!(
            load.table.weight("M1", "C1"),
            Some(Weight::new(1_000_000, 1))
        );
        assert_eq!(
            load.table.weight("M1", &"C".repeat(128)),
            Some(Weight::new(2_000_000, 1))
        );
        assert_eq!(load.table.rows(), 2);
    }

    #[test]
    fn missing_weight_column_rejects_file() {
        let err = ImportanceTable::parse(b"Source,Target,typeTrans\n").unwrap_err();
        assert!(err.to_string().contains("`Weight`"));
    }
}
