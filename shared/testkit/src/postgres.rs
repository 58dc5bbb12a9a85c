//! A throwaway Postgres cluster: `initdb` into a temp dir, `pg_ctl start` on a free
//! port, `pg_ctl stop` and delete on drop. As root, the server runs as `nobody`
//! (Postgres refuses to run as root).
//!
//! Postgres cannot be told to pick its own port, so a free one is chosen first; if
//! another process takes it before the server binds, the server fails to start and
//! another port is tried. Once started, the port is the server's: `pg_ctl -w` waits
//! for this cluster's own postmaster, never for whatever else listens there.

use super::{which, LocalError};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A running throwaway cluster.
pub struct LocalPostgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_nobody: bool,
    running: bool,
}

impl LocalPostgres {
    /// Finds the server binaries (`TXPIPE_PG_BIN`, PATH, `/usr/lib/postgresql/*/bin`),
    /// makes a cluster and starts it.
    pub fn start() -> Result<Self, LocalError> {
        let bin = find_bin()?;
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!(
            "txpipe-pg-{}-{port}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
        ));
        let as_nobody = is_root();
        std::fs::create_dir_all(&dir).map_err(|e| failed("creating the cluster dir", e))?;
        if as_nobody {
            chown_nobody(&dir)?;
        }
        let mut pg = LocalPostgres {
            bin,
            dir,
            port,
            as_nobody,
            running: false,
        };
        let data = pg.dir.join("data");
        pg.run(
            "initdb",
            &[
                "-D",
                path(&data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
            ],
        )?;
        // A port taken between choosing and binding makes the start fail: try others.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match pg.resume() {
                Ok(()) => return Ok(pg),
                Err(e) if attempts < 5 && pg.port_was_taken() => {
                    let _ = e;
                    pg.port = free_port()?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether the last start failed because the port was in use.
    fn port_was_taken(&self) -> bool {
        std::fs::read_to_string(self.dir.join("server.log"))
            .map(|log| log.contains("could not bind") || log.contains("already in use"))
            .unwrap_or(false)
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (it can be started again with [`LocalPostgres::resume`]).
    pub fn pause(&mut self) -> Result<(), LocalError> {
        let data = self.dir.join("data");
        self.run("pg_ctl", &["-D", path(&data), "-m", "fast", "-w", "stop"])?;
        self.running = false;
        Ok(())
    }

    /// Starts the server (again, after a pause) on its port.
    pub fn resume(&mut self) -> Result<(), LocalError> {
        let data = self.dir.join("data");
        // Durability is pointless for a throwaway cluster; speed is not.
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            self.port,
            path(&self.dir)
        );
        let log = self.dir.join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                path(&data),
                "-o",
                &options,
                "-l",
                path(&log),
                "-w",
                "-t",
                "60",
                "start",
            ],
        )?;
        self.running = true;
        Ok(())
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<Output, LocalError> {
        let exe = self.bin.join(program);
        let mut command = if self.as_nobody {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
                .arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = command
            .args(args)
            .current_dir(&self.dir)
            .output()
            .map_err(|e| failed(format!("running {}", exe.display()), e))?;
        if !out.status.success() {
            return Err(LocalError::Failed {
                what: format!("{program} {}", args.join(" ")),
                why: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }
        Ok(out)
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        if self.running {
            let data = self.dir.join("data");
            let _ = self.run(
                "pg_ctl",
                &["-D", path(&data), "-m", "immediate", "-w", "stop"],
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

fn failed(what: impl Into<String>, e: impl std::fmt::Display) -> LocalError {
    LocalError::failed(what, e)
}

/// A TCP port that was free a moment ago.
fn free_port() -> Result<u16, LocalError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| failed("finding a free port", e))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn chown_nobody(dir: &Path) -> Result<(), LocalError> {
    let out = Command::new("chown")
        .args(["nobody:nogroup", path(dir)])
        .output()
        .map_err(|e| failed("chown", e))?;
    if !out.status.success() {
        return Err(failed("chown", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}

fn find_bin() -> Result<PathBuf, LocalError> {
    if let Ok(dir) = std::env::var("TXPIPE_PG_BIN") {
        if Path::new(&dir).join("initdb").is_file() {
            return Ok(dir.into());
        }
    }
    if let Some(initdb) = which("initdb") {
        if let Some(dir) = Path::new(&initdb).parent() {
            if dir.join("pg_ctl").is_file() {
                return Ok(dir.to_path_buf());
            }
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop().ok_or_else(|| LocalError::Missing {
        what: "PostgreSQL server binaries (initdb, pg_ctl)",
        hint: "run `make tools`, or install Debian's `postgresql` package, or set TXPIPE_PG_BIN"
            .into(),
    })
}
