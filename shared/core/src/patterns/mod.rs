//! The three patterns, one file each: its condition over the engine's running stats and
//! the evidence it records when it fires (docs/behaviour.md#patterns). The engine keeps
//! the stats and decides whom to ask after a chunk — the touched pairs (CHILD), the
//! touched merchants (DEI-NEEDED), and every customer of a touched merchant at or below
//! its weight threshold (UPGRADE, whose thresholds move with any customer) — and emits
//! each detection once. Their settings are [`crate::config::PatternConfig`].

pub mod child;
pub mod dei;
pub mod upgrade;
