//! `txpipe`: the command-line tool for people. Generate data, replay it offline, run
//! the whole pipeline on local services, and show a deployment's status.

use txpipe_cli::run::{default_view, Rate, RunOptions};
use txpipe_cli::{generate, replay_cmd, run, status};

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use txpipe::config::{
    DEFAULT_DETECTIONS_PER_FILE, DEFAULT_ROWS_PER_CHUNK, MAX_DETECTIONS_PER_FILE,
    MAX_ROWS_PER_CHUNK,
};

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
        /// Rows per chunk (R).
        #[arg(long, env = "TXPIPE_ROWS_PER_CHUNK", default_value_t = DEFAULT_ROWS_PER_CHUNK,
              value_parser = clap::value_parser!(u64).range(1..=MAX_ROWS_PER_CHUNK))]
        rows_per_chunk: u64,
        /// Detections per output file.
        #[arg(long, env = "TXPIPE_DETECTIONS_PER_FILE", default_value_t = DEFAULT_DETECTIONS_PER_FILE,
              value_parser = clap::value_parser!(u64).range(1..=MAX_DETECTIONS_PER_FILE))]
        per_file: u64,
        /// Output directory.
        #[arg(long, default_value = "out/replay")]
        out: PathBuf,
        /// Replay this stream's chunk objects from the deployment (same environment as
        /// `status`) instead of a file: reproduces a prefix stream's outputs, whose
        /// chunks may span files or end short.
        #[arg(long)]
        stream: Option<String>,
    },
    /// Run the whole pipeline locally: moto for S3 and DynamoDB, a throwaway Postgres,
    /// the real chunker and detector code, S3 events delivered as S3 would.
    Run {
        /// Directory with transactions.csv and CustomerImportance.csv. Give it more than
        /// once (or comma-separated in DATA) to run several streams at once; the first
        /// one's CustomerImportance.csv serves them all.
        #[arg(long, env = "DATA", default_value = "data", value_delimiter = ',')]
        data: Vec<PathBuf>,
        /// `max` (as fast as possible) or chunks per second (default 1, as in production).
        #[arg(long, env = "RATE", default_value = "1")]
        rate: String,
        /// Where to copy the detection files (`detections/`) and write the report
        /// (`report.html`).
        #[arg(long, default_value = "out")]
        out: PathBuf,
        /// Keep moto and Postgres running after the run until Ctrl-C.
        #[arg(long, env = "KEEP", default_value_t = false, value_parser = clap::builder::BoolishValueParser::new())]
        keep: bool,
        /// Only start the services and upload the data (for `cargo lambda watch`).
        #[arg(long)]
        services_only: bool,
        /// A data set of parts: upload every part before the stream starts (a prefix
        /// that already holds files: a backfill) instead of one by one while it runs.
        #[arg(long)]
        backfill: bool,
    },
    /// Show where a deployment stands (cursor, detector head, a parked chunk and how
    /// to resume it, S3 files, Postgres rows), from the same environment variables the
    /// Lambdas read.
    Status {
        /// A stream other than the configured source's current one.
        #[arg(long)]
        stream: Option<String>,
    },
    /// Why a pattern holds, or not, for a merchant (PatId3, and PatId1's thresholds
    /// there) or a customer at it (PatId2, PatId1): the numbers and thresholds now, from
    /// the stream's state rebuilt as a cold detector rebuilds it, and the detection with
    /// its evidence if one was emitted. Same environment variables as `status`.
    Explain {
        /// A stream other than the configured source's current one.
        #[arg(long)]
        stream: Option<String>,
        /// Merchant id, unquoted (M348934600).
        #[arg(long)]
        merchant: String,
        /// Customer id, unquoted (C1093826151).
        #[arg(long)]
        customer: Option<String>,
    },
    /// List the patterns this build runs and each setting with the value this
    /// environment gives it (`TXPIPE_*`, else its default) and its range.
    Patterns {
        /// Only `VAR=value` lines, for scripts.
        #[arg(long)]
        env: bool,
    },
    /// Write one self-contained HTML page about a stream (state, charts per chunk,
    /// latest detections, rejected rows by reason, top merchants), from the same
    /// environment variables as `status`.
    Report {
        /// A stream other than the configured source's current one.
        #[arg(long)]
        stream: Option<String>,
        /// Where to write the page.
        #[arg(long, default_value = "out/report.html")]
        out: PathBuf,
    },
    /// Resume a parked stream once the cause is fixed: clear the parked chunk and get
    /// it applied (by writing it again, which notifies the deployed detector).
    Resume {
        /// The stream (default: the configured source's current stream).
        #[arg(long)]
        stream: Option<String>,
        /// Apply the stream in this process instead (needs the database reachable).
        #[arg(long)]
        here: bool,
    },
    /// Start a replaced source file as a new stream, abandoning the old stream where it
    /// stands (the chunker refuses to mix two versions of a file).
    RestartSource,
    /// Close a prefix stream: no more files join it, and the chunker cuts the rows left
    /// as its last chunk (the last detection file is written).
    CloseStream,
    /// End the file that stops a prefix stream (changed or vanished after it joined)
    /// where the stream stands, and go on with the next file.
    SkipFile {
        /// The file's key.
        #[arg(long)]
        key: String,
    },
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

fn parse_stream(text: &str) -> Result<txpipe::layout::StreamName> {
    txpipe::layout::StreamName::parse(text).ok_or_else(|| {
        anyhow::anyhow!(
            "{text:?} is not a stream name (one path segment, like input-transactions.3f9a1c2e5b7d0a41)"
        )
    })
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
            backfill,
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
                backfill,
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
        Command::Status { stream } => {
            init_logs();
            let config = txpipe::config::Config::from_env()?;
            let stream = stream.map(|s| parse_stream(&s)).transpose()?;
            let views = tokio::runtime::Runtime::new()?.block_on(async {
                let clients = txpipe::aws::AwsClients::from_env().await;
                let mut views = Vec::new();
                for key in &config.source.transactions_keys {
                    views.push(status::read_status(&clients, &config, key, stream.clone()).await?);
                    if stream.is_some() {
                        break;
                    }
                }
                anyhow::Ok(views)
            })?;
            for view in views {
                print!("{}", view.render());
            }
        }
        Command::Explain {
            stream,
            merchant,
            customer,
        } => {
            init_logs();
            let config = txpipe::config::Config::from_env()?;
            let stream = stream.map(|s| parse_stream(&s)).transpose()?;
            let text = tokio::runtime::Runtime::new()?.block_on(async {
                let clients = txpipe::aws::AwsClients::from_env().await;
                let question = txpipe_cli::explain::Question {
                    stream,
                    merchant: &merchant,
                    customer: customer.as_deref(),
                };
                txpipe_cli::explain::explain(&clients, &config, question).await
            })?;
            print!("{text}");
        }
        Command::Report { stream, out } => {
            init_logs();
            let config = txpipe::config::Config::from_env()?;
            let stream = stream.map(|s| parse_stream(&s)).transpose()?;
            tokio::runtime::Runtime::new()?.block_on(async {
                let clients = txpipe::aws::AwsClients::from_env().await;
                txpipe_cli::report::write_report(&clients, &config, None, stream, &out).await
            })?;
            println!("{}", out.display());
        }
        Command::Resume { stream, here } => {
            init_logs();
            let config = txpipe::config::Config::from_env()?;
            let stream = stream.map(|s| parse_stream(&s)).transpose()?;
            let said = tokio::runtime::Runtime::new()?.block_on(async {
                let clients = txpipe::aws::AwsClients::from_env().await;
                txpipe_cli::operate::resume(&clients, &config, stream, here).await
            })?;
            print!("{said}");
        }
        Command::RestartSource => {
            init_logs();
            let config = txpipe::config::Config::from_env()?;
            let said = tokio::runtime::Runtime::new()?.block_on(async {
                let clients = txpipe::aws::AwsClients::from_env().await;
                txpipe_cli::operate::restart_source(&clients, &config).await
            })?;
            print!("{said}");
        }
        Command::CloseStream => {
            init_logs();
            let config = txpipe::config::Config::from_env()?;
            let said = tokio::runtime::Runtime::new()?.block_on(async {
                let clients = txpipe::aws::AwsClients::from_env().await;
                txpipe_cli::operate::close_stream(&clients, &config).await
            })?;
            print!("{said}");
        }
        Command::SkipFile { key } => {
            init_logs();
            let config = txpipe::config::Config::from_env()?;
            let said = tokio::runtime::Runtime::new()?.block_on(async {
                let clients = txpipe::aws::AwsClients::from_env().await;
                txpipe_cli::operate::skip_file(&clients, &config, &key).await
            })?;
            print!("{said}");
        }
        Command::Generate(args) => generate::run(args)?,
        Command::Patterns { env } => print!(
            "{}",
            txpipe_cli::patterns_cmd::describe(&txpipe::config::EnvVars::from_env(), env)?
        ),
        Command::Replay {
            transactions,
            importance,
            rows_per_chunk,
            per_file,
            out,
            stream,
        } => {
            replay_cmd::run(replay_cmd::ReplayArgs {
                transactions,
                importance,
                rows_per_chunk,
                per_file,
                out,
                stream: stream.map(|s| parse_stream(&s)).transpose()?,
            })?;
        }
    }
    Ok(())
}
