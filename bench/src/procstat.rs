//! CPU time of a process from /proc, and a short `strace -c -f` sample.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use serde_json::{Value, json};

fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// utime + stime of every thread of `pid`, in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid} is gone"))?;
    // The command name may contain spaces; fields resume after its closing parenthesis.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("bad /proc/{pid}/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        Ok(f.get(i)
            .ok_or_else(|| anyhow!("short /proc/{pid}/stat"))?
            .parse::<u64>()? as f64)
    };
    // After the name: state(0) ppid pgrp session tty tpgid flags minflt cminflt majflt
    // cmajflt utime(11) stime(12).
    Ok((ticks(11)? + ticks(12)?) / clk_tck())
}

/// Seconds on the monotonic clock; the bench shell reads the clock.
#[allow(clippy::disallowed_methods)]
pub fn monotonic() -> f64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// `strace -c -f` attached to the server while the terminals report packet counts.
pub struct StraceRun {
    child: Child,
    out: PathBuf,
    start: Option<(f64, u64)>,
}

fn packets(v: &Value) -> u64 {
    v["rtp_packets_received"].as_u64().unwrap_or(0)
}

impl StraceRun {
    pub fn start(pid: u32) -> Result<Self> {
        let out = std::env::temp_dir().join(format!("hbench-strace-{}", std::process::id()));
        let child = Command::new("strace")
            .args(["-c", "-f", "-qq", "-o"])
            .arg(&out)
            .args(["-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting strace")?;
        Ok(StraceRun {
            child,
            out,
            start: None,
        })
    }

    pub fn mark_start(&mut self, snapshot: Value) {
        self.start = Some((monotonic(), packets(&snapshot)));
    }

    /// Stops strace and relates its syscall counts to the packets forwarded meanwhile.
    pub fn finish(mut self, snapshot: Value) -> Result<Value> {
        let (t0, p0) = self.start.context("no tail start mark")?;
        let secs = monotonic() - t0;
        let pkts = packets(&snapshot).saturating_sub(p0);
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = monotonic() + 10.0;
        while self.child.try_wait()?.is_none() && monotonic() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let text = std::fs::read_to_string(&self.out).context("strace output")?;
        let _ = std::fs::remove_file(&self.out);
        let mut rows: Vec<(String, u64)> = text
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                // % time, seconds, usecs/call, calls, [errors], syscall
                if f.len() < 5 || f[0].starts_with('%') || f[0].starts_with('-') {
                    return None;
                }
                let name = f.last()?.to_string();
                let calls = f.get(3)?.parse().ok()?;
                (name != "total").then_some((name, calls))
            })
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.1));
        let total: u64 = rows.iter().map(|r| r.1).sum();
        let top: Vec<String> = rows
            .iter()
            .take(5)
            .map(|(n, c)| format!("{n} {:.2}/pkt", *c as f64 / pkts.max(1) as f64))
            .collect();
        Ok(json!({
            "seconds": (secs * 10.0).round() / 10.0,
            "packets_forwarded_meanwhile": pkts,
            "syscalls": total,
            "syscalls_per_packet": total as f64 / pkts.max(1) as f64,
            "top": top.join(", "),
            "note": "under strace the server slows down; the ratio, not the rate, is meaningful",
        }))
    }
}
