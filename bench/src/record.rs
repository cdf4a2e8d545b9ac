//! Appends a benchmark's figures to `bench/RESULTS-log.md` (section "Benchmark log", at its end),
//! with the command line that produced them and the machine they ran on. `bench/RESULTS.md` holds
//! only the current figure per goal and is edited by hand.

use anyhow::Result;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The output options every benchmark binary takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Output {
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Results log the figures are appended to.
    #[arg(long, default_value = "bench/RESULTS-log.md")]
    pub results: PathBuf,
    /// Do not append the figures to the results log.
    #[arg(long)]
    pub no_record: bool,
}

impl Output {
    /// Writes `json` (when asked) and appends `body` to the results log (unless `--no-record`).
    pub fn emit(&self, bench: &str, body: &str, json: &serde_json::Value) -> Result<()> {
        if let Some(p) = &self.json {
            std::fs::write(p, serde_json::to_string_pretty(json)?)?;
        }
        if !self.no_record {
            append(&self.results, bench, body)?;
        }
        Ok(())
    }
}

/// CPU model, cores, memory and the git commit, in one line.
pub fn machine_facts() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    format!("{cpu}, {cores} cores, {mem_gib:.0} GiB; commit {commit}")
}

/// Appends `body` (Markdown) under a dated heading naming the benchmark and its command line.
pub fn append(results: &Path, bench: &str, body: &str) -> Result<()> {
    let cmd: Vec<String> = std::env::args().collect();
    let date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC");
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(results)?;
    let text = std::fs::read_to_string(results).unwrap_or_default();
    if !text.contains("\n## Benchmark log\n") {
        writeln!(
            f,
            "\n## Benchmark log\n\nAppended by the benchmark binaries themselves (`--no-record` to skip), newest last.\n"
        )?;
    }
    writeln!(
        f,
        "\n### {bench}, {date}\n\n`{}`  \n{}\n\n{}",
        cmd.join(" "),
        machine_facts(),
        body.trim_end()
    )?;
    Ok(())
}
