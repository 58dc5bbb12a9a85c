//! moto in server mode: S3 and DynamoDB on one loopback port.
//!
//! moto is started on port 0, so the operating system picks a free port and the
//! spawned process owns it from the start; the port is read from moto's own startup
//! line. (Picking a "free" port first and handing it to moto would leave a window in
//! which two tests starting at once end up on one server.)

use super::{which, LocalError};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
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
        let command = std::env::var("TXPIPE_MOTO_CMD")
            .ok()
            .filter(|c| !c.trim().is_empty())
            .or_else(|| which("moto_server"))
            .map(|c| c.split_whitespace().map(String::from).collect::<Vec<_>>())
            .unwrap_or_else(|| vec!["python3".into(), "-m".into(), "moto.server".into()]);
        let hint = |why: String| LocalError::Missing {
            what: "moto server",
            hint: format!(
                "{} {why}; run `make tools` or `pip install 'moto[server]'`",
                command.join(" ")
            ),
        };
        let mut child = Command::new(&command[0])
            .args(&command[1..])
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| hint(format!("could not start: {e}")))?;
        let Some(stderr) = child.stderr.take() else {
            return Err(LocalError::failed("starting moto", "no stderr pipe"));
        };
        // moto logs every request on stderr: keep draining it for the server's life so
        // the pipe never fills, and hand the port line to this thread.
        let (port_tx, port_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut port_tx = Some(port_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(port) = port_from_banner(&line) {
                    if let Some(tx) = port_tx.take() {
                        let _ = tx.send(port);
                    }
                }
            }
        });
        let mut server = MotoServer { child, port: 0 };
        match port_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(port) => server.port = port,
            Err(_) => {
                return Err(match server.child.try_wait() {
                    Ok(Some(status)) => hint(format!("exited with {status}")),
                    _ => LocalError::failed(
                        "starting moto",
                        "no `Running on http://127.0.0.1:<port>` line within 60 s",
                    ),
                })
            }
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

/// The port in werkzeug's startup line ` * Running on http://127.0.0.1:36447`.
fn port_from_banner(line: &str) -> Option<u16> {
    let rest = line.split("Running on http://127.0.0.1:").nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().filter(|&p| p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_is_read_from_the_banner() {
        assert_eq!(
            port_from_banner(" * Running on http://127.0.0.1:36447"),
            Some(36447)
        );
        assert_eq!(port_from_banner("Press CTRL+C to quit"), None);
        assert_eq!(port_from_banner(" * Running on http://127.0.0.1:0"), None);
    }
}
