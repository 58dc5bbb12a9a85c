//! moto in server mode: S3 and DynamoDB on one loopback port.

use super::{free_port, wait_for_port, LocalError};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running moto server, killed on drop.
pub struct MotoServer {
    child: Child,
    port: u16,
}

impl MotoServer {
    /// Starts moto: `TXPIPE_MOTO_CMD` if set (e.g. `.tools/venv/bin/moto_server`),
    /// else `moto_server` on PATH, else `python3 -m moto.server`.
    pub fn start() -> Result<Self, LocalError> {
        let port = free_port()?;
        let command = std::env::var("TXPIPE_MOTO_CMD")
            .ok()
            .filter(|c| !c.trim().is_empty())
            .or_else(|| which("moto_server"))
            .map(|c| c.split_whitespace().map(String::from).collect::<Vec<_>>())
            .unwrap_or_else(|| vec!["python3".into(), "-m".into(), "moto.server".into()]);
        let child = Command::new(&command[0])
            .args(&command[1..])
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| LocalError::Missing {
                what: "moto server",
                hint: format!(
                    "{} could not start: {e}; run `make tools` or `pip install 'moto[server]'`",
                    command.join(" ")
                ),
            })?;
        let mut server = MotoServer { child, port };
        if let Err(e) = wait_for_port(port, Duration::from_secs(30), "starting moto") {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(LocalError::Missing {
                    what: "moto server",
                    hint: format!(
                        "{} exited with {status}; run `make tools` or `pip install 'moto[server]'`",
                        command.join(" ")
                    ),
                });
            }
            return Err(e);
        }
        Ok(server)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The full path of a program on PATH.
pub(super) fn which(program: &str) -> Option<String> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .map(|p| p.to_string_lossy().into_owned())
}
