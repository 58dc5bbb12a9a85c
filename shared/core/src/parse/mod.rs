//! Reading the two input files exactly as SPEC §1 describes.

pub mod csv_scan;
pub mod decimal;
pub mod header;
pub mod importance;
pub mod transactions;

pub use header::HeaderError;
pub use importance::{ImportanceLoad, ImportanceTable};
pub use transactions::{Gender, RejectReason, Transaction, TransactionReader};

/// A row that was not used, kept with where it was and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRow {
    /// 1-based data row number in its file (the header is row 0).
    pub row: u64,
    /// The row's original text (invalid UTF-8 replaced).
    pub raw: String,
    /// Why it was rejected.
    pub reason: RejectReason,
}
