//! The server under trial: a real `lobby-server` child process on 127.0.0.1 (the port it picks),
//! configured by environment variables, its log in a file; killed with SIGKILL, restarted on the
//! same data directory, and ready once `grpc.health.v1` answers SERVING.

use anyhow::{bail, Context, Result};
use lobby_service::auth::{hash_token, hex_digest, new_token};
use lobby_service::config::Role;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// How long a start may take before it counts as failed (models load, the galleries are built).
const START_LIMIT: Duration = Duration::from_secs(120);

/// One credential: the holder (recorded in decisions and the audit trail), its role, its property
/// (kiosks), and the bearer token (only its sha256 goes into the token file).
#[derive(Debug, Clone)]
pub struct Credential {
    pub holder: String,
    pub role: Role,
    pub property: Option<String>,
    pub token: String,
}

impl Credential {
    pub fn new(holder: &str, role: Role, property: Option<&str>) -> Credential {
        Credential {
            holder: holder.to_string(),
            role,
            property: property.map(str::to_string),
            token: new_token(),
        }
    }
}

/// Writes the server's token file (`auth.token_files`): holder, role, property and the token's
/// sha256 per credential.
pub fn write_token_file(path: &Path, creds: &[Credential]) -> Result<()> {
    let mut text = String::new();
    for c in creds {
        text.push_str(&format!(
            "[[token]]\nid = {:?}\nrole = {:?}\nsha256 = {:?}\n",
            c.holder,
            c.role.as_str(),
            hex_digest(&hash_token(&c.token))
        ));
        if let Some(p) = &c.property {
            text.push_str(&format!("property = {p:?}\n"));
        }
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// How to start the server: the binary, the data directory, the log file and the settings
/// (`LOBBY__SECTION__KEY` variables; any `LOBBY_*` variable of this process is not passed on).
#[derive(Debug, Clone)]
pub struct Launch {
    pub binary: PathBuf,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub env: Vec<(String, String)>,
}

/// A running server process. Dropping it kills the process (SIGKILL) and waits for it.
pub struct Server {
    child: Child,
    pub addr: String,
}

impl Server {
    /// Starts the server and waits until it listens and answers SERVING; also returns how long
    /// that took, from the spawn.
    pub async fn start(l: &Launch) -> Result<(Server, Duration)> {
        let t0 = Instant::now();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&l.log)
            .with_context(|| format!("opening {}", l.log.display()))?;
        let from = log.metadata()?.len();
        let mut cmd = Command::new(&l.binary);
        cmd.arg("--data-dir")
            .arg(&l.data_dir)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .stdin(Stdio::null())
            // The log goes to stdout (tracing's default); errors before it starts to stderr.
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, _) in std::env::vars_os() {
            if k.to_str().is_some_and(|k| k.starts_with("LOBBY_")) {
                cmd.env_remove(k);
            }
        }
        cmd.env("NO_COLOR", "1").env("RUST_LOG", "info");
        cmd.envs(l.env.iter().map(|(k, v)| (k, v)));
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", l.binary.display()))?;
        let mut server = Server {
            child,
            addr: String::new(),
        };
        server.addr = server.wait_listening(&l.log, from, t0).await?;
        server.wait_serving(t0).await?;
        Ok((server, t0.elapsed()))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The address from the server's "lobby-server listening" log line.
    async fn wait_listening(&mut self, log: &Path, from: u64, t0: Instant) -> Result<String> {
        loop {
            let text = read_from(log, from)?;
            if let Some(addr) = text
                .lines()
                .map(strip_ansi)
                .filter(|l| l.contains("lobby-server listening"))
                .find_map(|l| field(&l, "addr"))
            {
                return Ok(addr);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the server exited ({status}) before listening; its log:\n{}",
                    tail(&text, 20)
                );
            }
            if t0.elapsed() > START_LIMIT {
                bail!(
                    "the server did not listen within {START_LIMIT:?}; its log:\n{}",
                    tail(&text, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn wait_serving(&mut self, t0: Instant) -> Result<()> {
        let mut last = String::new();
        while t0.elapsed() < START_LIMIT {
            if let Some(status) = self.child.try_wait()? {
                bail!("the server exited ({status}) before serving");
            }
            match health(&self.addr).await {
                Ok(true) => return Ok(()),
                Ok(false) => last = "NOT_SERVING".into(),
                Err(e) => last = format!("{e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        bail!("the server did not answer SERVING within {START_LIMIT:?} (last: {last})")
    }

    /// SIGKILL (`Child::kill` on unix), then waits for the process to be gone.
    pub fn kill(mut self) -> Result<()> {
        self.child.kill().context("SIGKILL")?;
        self.child.wait().context("waiting for the killed server")?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether the server's overall health (service "") is SERVING.
async fn health(addr: &str) -> Result<bool> {
    let ch = lobby_kiosk_client::connect(addr).await?;
    let r = HealthClient::new(ch)
        .check(HealthCheckRequest { service: String::new() })
        .await?
        .into_inner();
    Ok(r.status == ServingStatus::Serving as i32)
}

fn read_from(path: &Path, from: u64) -> Result<String> {
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// A log line without terminal colour codes (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `key=value` of a tracing log line.
fn field(line: &str, key: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim_matches('"').to_string())
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_listening_address() {
        let line = "\u{1b}[2m2026-12-07T18:51:51.674014Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \u{1b}[2mlobby_server\u{1b}[0m\u{1b}[2m:\u{1b}[0m lobby-server listening \u{1b}[3maddr\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:36605 \u{1b}[3mtls\u{1b}[0m\u{1b}[2m=\u{1b}[0m\"off (plaintext)\"";
        assert_eq!(field(&strip_ansi(line), "addr").as_deref(), Some("127.0.0.1:36605"));
        let plain = "2026-12-07T18:51:51Z INFO lobby_server: lobby-server listening addr=127.0.0.1:5 tls=\"off\"";
        assert_eq!(field(&strip_ansi(plain), "addr").as_deref(), Some("127.0.0.1:5"));
    }
}
