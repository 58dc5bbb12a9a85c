//! `txpipe`: the command-line tool for people. Generate data, replay it offline, run
//! the whole pipeline on local services, and show a deployment's status.

use txpipe_cli::{generate, replay_cmd};

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "txpipe",
    version,
    about = "Real-time transaction pattern detection: tools for people"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a deterministic BankSim-shaped transactions.csv and CustomerImportance.csv.
    Generate {
        /// Data rows.
        #[arg(long, default_value_t = 594_643)]
        rows: u64,
        /// Seed: the same seed writes the same bytes.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Distinct customers.
        #[arg(long, default_value_t = 4_112)]
        customers: usize,
        /// Output directory.
        #[arg(long, default_value = "data")]
        out: PathBuf,
    },
    /// Run the engine over a local file chunk by chunk, with no AWS at all.
    Replay {
        /// transactions.csv (BankSim format).
        #[arg(long, default_value = "data/transactions.csv")]
        transactions: PathBuf,
        /// CustomerImportance.csv.
        #[arg(long, default_value = "data/CustomerImportance.csv")]
        importance: PathBuf,
        /// Rows per chunk.
        #[arg(long, env = "TXPIPE_ROWS_PER_CHUNK", default_value_t = 10_000)]
        rows_per_chunk: u64,
        /// Detections per output file.
        #[arg(long, env = "TXPIPE_DETECTIONS_PER_FILE", default_value_t = 50)]
        per_file: u64,
        /// Output directory.
        #[arg(long, default_value = "out/replay")]
        out: PathBuf,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Generate {
            rows,
            seed,
            customers,
            out,
        } => {
            let (rows, customers) = generate::generate(
                &generate::GenerateOptions {
                    rows,
                    seed,
                    customers,
                },
                &out,
            )?;
            println!(
                "wrote {rows} rows, {customers} customers to {}",
                out.display()
            );
        }
        Command::Replay {
            transactions,
            importance,
            rows_per_chunk,
            per_file,
            out,
        } => {
            replay_cmd::run(replay_cmd::ReplayArgs {
                transactions,
                importance,
                rows_per_chunk,
                per_file,
                out,
            })?;
        }
    }
    Ok(())
}
