//! `txpipe`: the command-line tool for people. Generate data, replay it offline, run
//! the whole pipeline on local services, and show a deployment's status.

use txpipe_cli::run::{default_view, Rate, RunOptions};
use txpipe_cli::{generate, replay_cmd, run, status};

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
    /// Write a deterministic transactions.csv and CustomerImportance.csv in BankSim's
    /// format (shape banksim, high-cardinality or new-pairs).
    Generate(generate::GenerateArgs),
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
    /// Run the whole pipeline locally: moto for S3 and DynamoDB, a throwaway Postgres,
    /// the real chunker and detector code, S3 events delivered as S3 would.
    Run {
        /// Directory with transactions.csv and CustomerImportance.csv.
        #[arg(long, env = "DATA", default_value = "data")]
        data: PathBuf,
        /// `max` (as fast as possible) or chunks per second (default 1, as in production).
        #[arg(long, env = "RATE", default_value = "1")]
        rate: String,
        /// Where to copy the detection files.
        #[arg(long, default_value = "out/run")]
        out: PathBuf,
        /// Keep moto and Postgres running after the run until Ctrl-C.
        #[arg(long, env = "KEEP", default_value_t = false, value_parser = clap::builder::BoolishValueParser::new())]
        keep: bool,
        /// Only start the services and upload the data (for `cargo lambda watch`).
        #[arg(long)]
        services_only: bool,
    },
    /// Show where a deployment stands (cursor, detector head, S3 files, Postgres rows),
    /// from the same environment variables the Lambdas read.
    Status,
    /// Run one invocation of a Lambda function here: the same handler code, configured
    /// from the same environment variables (AWS_*, TXPIPE_*) as the deployed function.
    /// Prints the function's JSON answer.
    Invoke {
        /// The function.
        #[arg(value_enum)]
        function: txpipe_cli::invoke::Function,
        /// The event, as a JSON file (the chunker takes any event; default `{}`).
        #[arg(long)]
        event: Option<PathBuf>,
        /// Seconds the invocation may take, as the function's timeout.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Measure the pipeline against local services: ms and remote requests per chunk
    /// for both functions, cold-start reload time, peak memory.
    Bench {
        /// Directory with transactions.csv and CustomerImportance.csv.
        #[arg(long, env = "DATA", default_value = "data")]
        data: PathBuf,
        /// Internal: the detector phase, in its own process.
        #[arg(long, hide = true)]
        detector_phase: bool,
    },
}

fn parse_rate(rate: &str) -> Result<Rate> {
    if rate.eq_ignore_ascii_case("max") {
        return Ok(Rate::Max);
    }
    let per_second: f64 = rate
        .parse()
        .ok()
        .filter(|r: &f64| *r > 0.0 && r.is_finite())
        .ok_or_else(|| {
            anyhow::anyhow!("RATE={rate:?}: expected `max` or chunks per second, like 1 or 5")
        })?;
    Ok(Rate::Paced(std::time::Duration::from_secs_f64(
        1.0 / per_second,
    )))
}

fn init_logs() {
    use tracing_subscriber::EnvFilter;
    // Per-chunk info logs would drown the progress view; RUST_LOG=info shows them.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Run {
            data,
            rate,
            out,
            keep,
            services_only,
        } => {
            init_logs();
            if services_only {
                return tokio::runtime::Runtime::new()?.block_on(run::serve(&data));
            }
            let options = RunOptions {
                data,
                rate: parse_rate(&rate)?,
                out,
                keep,
                view: default_view(),
                settings: Vec::new(),
            };
            let summary = tokio::runtime::Runtime::new()?.block_on(run::run(options))?;
            if summary.interrupted {
                std::process::exit(130);
            }
        }
        Command::Bench {
            data,
            detector_phase,
        } => {
            init_logs();
            let runtime = tokio::runtime::Runtime::new()?;
            if detector_phase {
                runtime.block_on(txpipe_cli::bench::detector_phase())?;
            } else {
                runtime.block_on(txpipe_cli::bench::run(&data))?;
            }
        }
        Command::Invoke {
            function,
            event,
            timeout,
        } => {
            init_logs();
            let answer = tokio::runtime::Runtime::new()?.block_on(txpipe_cli::invoke::invoke(
                function,
                event.as_deref(),
                std::time::Duration::from_secs(timeout),
            ))?;
            println!("{answer}");
        }
        Command::Status => {
            init_logs();
            let view = tokio::runtime::Runtime::new()?.block_on(async {
                let clients = txpipe::store::clients::AwsClients::from_env().await;
                status::read_status(&clients, &txpipe::config::Settings::from_env()).await
            })?;
            print!("{}", view.render());
        }
        Command::Generate(args) => generate::run(args)?,
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
