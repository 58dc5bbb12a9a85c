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
    /// The row's original bytes, exactly (NUL bytes and invalid UTF-8 included).
    pub raw: Vec<u8>,
    /// Why it was rejected.
    pub reason: RejectReason,
}

impl RejectedRow {
    /// The row as readable text: valid UTF-8 as is, every other byte and every control
    /// character (NUL, tab, …) escaped as `\xNN`, so nothing is hidden or lost from view.
    pub fn raw_text(&self) -> String {
        let mut out = String::with_capacity(self.raw.len());
        for chunk in self.raw.utf8_chunks() {
            for ch in chunk.valid().chars() {
                if ch.is_control() && ch != '\n' && ch != '\r' || ch == '\\' {
                    out.push_str(&format!("\\x{:02x}", u32::from(ch)));
                } else {
                    out.push(ch);
                }
            }
            for byte in chunk.invalid() {
                out.push_str(&format!("\\x{byte:02x}"));
            }
        }
        out
    }
}
