//! A real Kiln for the benchmark: this binary re-executed as `kiln serve` (the same code
//! as the `kiln` binary, through `kiln::cli::main_from`) on a fresh data dir, on loopback.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// First argument that makes this binary act as `kiln`.
pub const SERVE_FLAG: &str = "--as-kiln";

/// A running server process.
pub struct KilnServer {
    child: Child,
    pub base: String,
}

impl KilnServer {
    /// Starts a server with these plugins and extra TOML config.
    pub fn start(data_dir: &Path, plugins_dir: &Path, config: &str) -> anyhow::Result<Self> {
        let config_path = data_dir.with_extension("toml");
        std::fs::write(&config_path, config)?;
        let mut child = Command::new(std::env::current_exe()?)
            .arg(SERVE_FLAG)
            .args(["serve", "--addr", "127.0.0.1:0", "--config"])
            .arg(&config_path)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--plugins-dir")
            .arg(plugins_dir)
            .env("KILN_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning kiln")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let said = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let log = said.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("kiln listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                } else if line.contains("ERROR") {
                    eprintln!("kiln: {line}");
                }
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        let base = rx.recv_timeout(Duration::from_secs(300)).with_context(|| {
            let said = said.lock().unwrap_or_else(|e| e.into_inner());
            format!("kiln did not start; it said:\n{said}")
        })?;
        Ok(Self { child, base })
    }

    /// Resident memory of the server process, bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// SIGKILL: the process dies mid-work, as in a crash.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for KilnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
