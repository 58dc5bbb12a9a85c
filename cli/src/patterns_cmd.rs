//! `txpipe patterns`: the patterns this build runs, what each is asked about after a
//! chunk, and each setting with the value this environment gives it (its default when
//! unset) and its range. `--env` prints only `VAR=value` lines, for scripts.

use std::fmt::Write as _;
use txpipe::config::EnvVars;
use txpipe::patterns::{Asks, REGISTERED};

/// The listing, with the settings `env` gives (refused as the Lambdas refuse them).
pub fn describe(env: &EnvVars, only_env: bool) -> anyhow::Result<String> {
    let config = txpipe::config::patterns(env)?;
    let mut out = String::new();
    for r in REGISTERED {
        let pattern = (r.build)(&config);
        if !only_env {
            let asks = match pattern.asks() {
                Asks::TouchedPairs => "once per pair; asked about each pair a chunk touched",
                Asks::TouchedMerchants => {
                    "once per merchant; asked about each merchant a chunk touched"
                }
                Asks::CustomersOfTouchedMerchants => {
                    "once per pair; asked about the customers of each merchant a chunk touched"
                }
            };
            writeln!(out, "{} {}: {asks}", r.id.id(), r.id.action())?;
            writeln!(out, "  evidence: {}", pattern.evidence_fields().join(", "))?;
        }
        for s in r.settings {
            let value = config.get(s);
            match only_env {
                true => writeln!(out, "{}={value}", s.var)?,
                false => writeln!(
                    out,
                    "  {}={value} (default {}; {})",
                    s.var, s.default, s.expected
                )?,
            }
        }
    }
    if !only_env {
        writeln!(out, "pinned per stream as: {}", config.fingerprint())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use txpipe::PatternConfig;

    #[test]
    fn lists_every_registered_setting_with_the_environment_s_value() {
        let env = EnvVars::from_pairs([("TXPIPE_CHILD_MIN_TXNS", "81")]);
        let text = describe(&env, true).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), txpipe::patterns::settings().count());
        assert!(lines.contains(&"TXPIPE_CHILD_MIN_TXNS=81"), "{text}");
        assert!(lines.contains(&"TXPIPE_DEI_MIN_FEMALE=100"), "{text}");
        let long = describe(&env, false).unwrap();
        assert!(
            long.contains("PatId3 DEI-NEEDED: once per merchant"),
            "{long}"
        );
        assert!(long.contains("child>=81:avg<2300"), "{long}");
        let bad = EnvVars::from_pairs([("TXPIPE_UPGRADE_TOP_BP", "10000")]);
        assert!(describe(&bad, true)
            .unwrap_err()
            .to_string()
            .contains("TXPIPE_UPGRADE_TOP_BP"));
    }

    /// A default is written in the code once (its pattern's file) and restated where a
    /// person or SAM reads it: this names every place that disagrees.
    #[test]
    fn every_setting_s_default_is_the_one_the_docs_and_the_template_give() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let read = |path: &str| std::fs::read_to_string(root.join(path)).unwrap();
        let (behaviour, deploy, template) = (
            read("docs/behaviour.md"),
            read("docs/deploy.md"),
            read("infra/template.yaml"),
        );
        let mut wrong = Vec::new();
        for s in txpipe::patterns::settings() {
            let var = format!("`{}`", s.var);
            let plain = s.default.to_string();
            // behaviour.md writes thousands with commas (50,000), cents beside rupees.
            let behaviour_default = behaviour
                .lines()
                .find(|l| l.starts_with('|') && l.contains(&var))
                .and_then(|l| l.split('|').nth(2).map(|cell| cell.replace(',', "")));
            // The cell's leading number, or for cents the one in parentheses
            // ("23.00 (2300 cents)").
            let number =
                |t: &str| -> String { t.trim().chars().take_while(char::is_ascii_digit).collect() };
            let holds = |cell: &str| {
                let paren = cell.split_once('(').map(|(_, rest)| number(rest));
                number(cell) == plain || (cell.contains("cents") && paren == Some(plain.clone()))
            };
            if !behaviour_default.is_some_and(|cell| holds(&cell)) {
                wrong.push(format!("docs/behaviour.md#defaults: {}", s.var));
            }
            let deploy_row = deploy
                .lines()
                .find(|l| l.starts_with("| `") && l.contains(&format!("| {var}:")));
            if !deploy_row.is_some_and(|l| l.contains(&format!("| {plain} ("))) {
                wrong.push(format!("docs/deploy.md parameters: {}", s.var));
            }
            // The template parameter whose constraint names the variable: its
            // `Default:` line comes a few lines before.
            let default_line = template
                .find(&format!("({}) must be", s.var))
                .and_then(|at| {
                    let before = &template[..at];
                    let from = before.rfind("Default: ")?;
                    (before[from..].lines().count() <= 4).then(|| before[from..].lines().next())
                })
                .flatten();
            if default_line != Some(format!("Default: {plain}").as_str()) {
                wrong.push(format!("infra/template.yaml parameter: {}", s.var));
            }
        }
        assert!(
            wrong.is_empty(),
            "these disagree with the defaults in shared/core/src/patterns/: {wrong:?}"
        );
    }

    /// Athena reads the evidence files through a struct listing every field (the JSON
    /// reader matches keys case-insensitively): a pattern whose fields it lacks would
    /// show nulls there.
    #[test]
    fn the_athena_evidence_table_has_every_registered_pattern_s_fields() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/template.yaml");
        let template = std::fs::read_to_string(path).unwrap();
        let columns = template
            .lines()
            .find(|l| l.contains("{Name: evidence, Type: \"struct<"))
            .expect("the evidence table's struct column");
        let config = PatternConfig::default();
        let missing: Vec<String> = REGISTERED
            .iter()
            .flat_map(|r| (r.build)(&config).evidence_fields().to_vec())
            .map(str::to_lowercase)
            .filter(|f| !columns.contains(&format!("{f}:string")))
            .collect();
        assert!(
            missing.is_empty(),
            "infra/template.yaml's evidence table lacks {missing:?}"
        );
    }
}
