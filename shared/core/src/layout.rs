//! Where things are stored: object keys and stream names. Every key is a function of
//! the source and a number only, never of the clock, so writing something twice writes
//! the same object.

/// The key of chunk `k` under a stream prefix: `<prefix><k, 8 digits>.csv`.
pub fn chunk_key(prefix: &str, k: u64) -> String {
    format!("{prefix}{k:08}.csv")
}

/// Splits a chunk key into its stream prefix and chunk number.
pub fn parse_chunk_key(key: &str) -> Option<(&str, u64)> {
    let slash = key.rfind('/')?;
    let (prefix, file) = key.split_at(slash + 1);
    let digits = file.strip_suffix(".csv")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((prefix, digits.parse().ok()?))
}

/// The stream prefix for a source object: `<chunk_prefix><source key without extension,
/// '/' replaced by '-'>/`, so two sources never share chunk keys.
pub fn stream_prefix(chunk_prefix: &str, source_key: &str) -> String {
    let stem = source_key.strip_suffix(".csv").unwrap_or(source_key);
    let name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{chunk_prefix}{name}/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let prefix = stream_prefix("chunks/", "input/transactions.csv");
        assert_eq!(prefix, "chunks/input-transactions/");
        let key = chunk_key(&prefix, 42);
        assert_eq!(key, "chunks/input-transactions/00000042.csv");
        assert_eq!(parse_chunk_key(&key), Some((prefix.as_str(), 42)));
        assert_eq!(parse_chunk_key("chunks/x/abc.csv"), None);
        assert_eq!(parse_chunk_key("nochunk"), None);
    }
}
