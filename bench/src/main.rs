//! Huitong benchmarks. `bench mcu` measures the MCU video mix against ffmpeg (see `mcu.rs`).
//! `bench sfu-forward` measures the CPU cost per forwarded packet of
//! the real `huitong` server and of Janus 1.1.2 (VideoRoom) under the same workload.
//!
//! Topology: the servers run in network namespace `hbench-srv` (veth address 127.79.0.1),
//! the simulated terminals in `hbench-cli` (127.79.0.2), joined by a veth pair. Janus's
//! libnice ignores loopback interfaces, so it needs the veth; Huitong gets the very same
//! path so both pay the same kernel costs. The terminals run in a child process (this
//! binary, hidden subcommand `__clients`) entered into the client namespace.

mod admin;
mod clients;
mod janus;
mod loss;
mod mcu;
mod netns;
mod procstat;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::netns::Netns;
use crate::procstat::cpu_seconds;

#[derive(Debug, Clone)]
pub struct Opts {
    pub publishers: usize,
    pub subscribers: usize,
    pub seconds: u64,
    pub warmup: u64,
    pub janus: bool,
    pub huitong: bool,
    pub simulcast: bool,
    pub strace: bool,
    pub client_threads: usize,
    pub rounds: usize,
}

const USAGE: &str = "usage: bench admin [--quick] (see bench/README.md) | bench loss (see bench/README.md) | bench sfu-forward [--publishers P] [--subscribers S] [--seconds N] \
[--warmup W] [--rounds R] [--no-janus] [--no-huitong] [--simulcast] [--no-strace] [--client-threads T]";

fn parse_opts(args: &[String]) -> Result<Opts> {
    // Defaults sized for 2 cores: 4 publishers x (3 + 16) receivers = 76 forwarded streams,
    // about 14,000 packets/s and 115 Mbit/s of SRTP out of the server. That keeps the
    // clients (which decrypt and depacketize every packet too) under one core, so the
    // server under test has a core of its own and the figure is its per-packet cost, not
    // scheduler contention.
    let mut o = Opts {
        publishers: 4,
        subscribers: 16,
        seconds: 20,
        warmup: 5,
        janus: true,
        huitong: true,
        simulcast: false,
        strace: true,
        client_threads: 1,
        // The machines are shared: one pair of runs moved the ratio by +-15 %. Alternating
        // the servers over rounds and taking the median ratio cancels slow drifts in what
        // the rest of the machine is doing.
        rounds: 3,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = || -> Result<u64> {
            it.next()
                .ok_or_else(|| anyhow!("{a} needs a value"))?
                .parse()
                .with_context(|| format!("{a} needs a number"))
        };
        match a.as_str() {
            "--publishers" => o.publishers = num()? as usize,
            "--subscribers" => o.subscribers = num()? as usize,
            "--seconds" => o.seconds = num()?,
            "--warmup" => o.warmup = num()?,
            "--client-threads" => o.client_threads = num()?.max(1) as usize,
            "--rounds" => o.rounds = num()?.max(1) as usize,
            "--no-janus" => o.janus = false,
            "--no-huitong" => o.huitong = false,
            "--simulcast" => o.simulcast = true,
            "--no-strace" => o.strace = false,
            _ => bail!("unknown argument {a}\n{USAGE}"),
        }
    }
    if o.publishers == 0 {
        bail!("--publishers must be at least 1");
    }
    Ok(o)
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("sfu-forward") => sfu_forward(parse_opts(&args[1..])?),
        Some("mcu") => mcu::main(&args[1..]),
        Some("loss") => loss::main(&args[1..]),
        Some("admin") => admin::main(&args[1..]),
        Some("__clients") => clients::main(&args[1..]),
        Some("__serve") => serve_main(),
        _ => {
            eprintln!("{USAGE}\n   or: bench mcu --help");
            std::process::exit(2)
        }
    }
}

/// `bench __serve`: the real Huitong server (the `server` crate's `start`, as
/// `huitong serve` runs it), in this binary so the bench always measures the server
/// built from the same tree.
fn serve_main() -> Result<()> {
    let cfg = server::Config::load(None)?;
    // `bench` initialised tracing from RUST_LOG already; the server's `log` setting is for
    // its own binary.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let running = server::start(cfg).await.context("starting huitong")?;
            println!(
                "HUITONG_READY {}",
                json!({"http": running.http_addr.to_string(), "udp": running.udp_addr.to_string()})
            );
            std::io::Write::flush(&mut std::io::stdout())?;
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            term.recv().await;
            running.shutdown().await;
            Ok(())
        })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Huitong,
    Janus,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Huitong => "huitong",
            Target::Janus => "janus",
        }
    }
}

/// A running server under test.
struct Server {
    child: Child,
    http: SocketAddr,
    _dir: TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM first so the server can shut down cleanly, then make sure.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..30 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    fn new(tag: &str) -> Result<Self> {
        let p = std::env::temp_dir().join(format!("hbench-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn in_ns(ns: Option<&str>, program: &str) -> Command {
    match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            // `ip netns exec` execs the program in place, so the child's pid is the server's.
            c.args(["netns", "exec", ns, program]);
            c
        }
        None => Command::new(program),
    }
}

/// The server to run: `HUITONG_BIN serve` if set, else this binary's `__serve`.
fn huitong_cmd() -> Result<(PathBuf, &'static str)> {
    if let Ok(p) = std::env::var("HUITONG_BIN") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!(
                "HUITONG_BIN={} is not a file (build it with `cargo build --release -p server`)",
                p.display()
            );
        }
        return Ok((p, "serve"));
    }
    Ok((std::env::current_exe()?, "__serve"))
}

fn start_huitong(ns: Option<&Netns>) -> Result<Server> {
    let (bin, sub) = huitong_cmd()?;
    let dir = TempDir::new("huitong")?;
    let ip = ns
        .map(|n| n.server_ip.to_string())
        .unwrap_or("127.0.0.1".into());
    let mut child = in_ns(ns.map(|n| n.server.as_str()), &bin.to_string_lossy())
        .arg(sub)
        .current_dir(&dir.0)
        .env("HUITONG_HTTP__LISTEN", format!("{ip}:0"))
        .env("HUITONG_MEDIA__UDP_LISTEN", format!("{ip}:0"))
        .env("HUITONG_MEDIA__ADVERTISE_IP", &ip)
        .env("HUITONG_DATA_DIR", &dir.0)
        // The config's `log` filter; `warn` keeps logging out of the measured cost.
        .env(
            "HUITONG_LOG",
            std::env::var("BENCH_SERVER_LOG").unwrap_or("warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().context("server stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !sent && let Some(rest) = line.strip_prefix("HUITONG_READY ") {
                let _ = tx.send(rest.to_string());
                sent = true;
            }
        }
    });
    let mut server = Server {
        child,
        http: "0.0.0.0:0".parse()?,
        _dir: dir,
    };
    let mut waited = Duration::ZERO;
    let ready = loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(r) => break r,
            Err(_) => {
                waited += Duration::from_millis(200);
                if let Some(status) = server.child.try_wait()? {
                    bail!("huitong exited before it was ready ({status}); its stderr is above");
                }
                if waited > Duration::from_secs(30) {
                    bail!("huitong did not print HUITONG_READY within 30 s");
                }
            }
        }
    };
    let v: Value = serde_json::from_str(&ready).context("HUITONG_READY is not JSON")?;
    server.http = v["http"]
        .as_str()
        .context("HUITONG_READY has no http")?
        .parse()?;
    Ok(server)
}

/// One server's figures over the measured window.
#[derive(Debug, Clone)]
struct Figures {
    target: Target,
    cpu_s: f64,
    client_cpu_s: f64,
    window_s: f64,
    result: Value,
    strace: Option<Value>,
}

impl Figures {
    fn packets(&self) -> u64 {
        self.result["window"]["rtp_packets_received"]
            .as_u64()
            .unwrap_or(0)
    }
    fn cpu_per_mpkt(&self) -> Option<f64> {
        let p = self.packets();
        (p > 0).then(|| self.cpu_s / (p as f64 / 1e6))
    }
    fn json(&self) -> Value {
        json!({
            "bench": "sfu-forward",
            "server": self.target.name(),
            "forwarded_packets": self.packets(),
            "forwarded_pps": self.packets() as f64 / self.window_s,
            "server_cpu_s": self.cpu_s,
            "server_cpu_util": self.cpu_s / self.window_s,
            "cpu_s_per_mpkt": self.cpu_per_mpkt(),
            "client_cpu_util": self.client_cpu_s / self.window_s,
            "p50_forward_ms": self.result["p50_ms"],
            "p99_forward_ms": self.result["p99_ms"],
            "loss": self.result["loss"],
            "window_s": self.window_s,
            "receivers_ready": self.result["ready"],
            "server_metrics_forwarded": self.result["metrics_forwarded"],
        })
    }
}

fn run_target(target: Target, opts: &Opts, ns: Option<&Netns>) -> Result<Figures> {
    let janus_dir;
    let server = match target {
        Target::Huitong => start_huitong(ns)?,
        Target::Janus => {
            let ns = ns.ok_or_else(|| {
                anyhow!("no network namespace: Janus's libnice ignores loopback interfaces")
            })?;
            janus_dir = TempDir::new("janus")?;
            let (child, http) = janus::start(ns, &janus_dir.0, opts)?;
            Server {
                child,
                http,
                _dir: janus_dir,
            }
        }
    };
    let server_pid = server.child.id();
    let client_ip = ns
        .map(|n| n.client_ip.to_string())
        .unwrap_or("127.0.0.1".into());
    let exe = std::env::current_exe()?;
    let mut cmd = in_ns(ns.map(|n| n.client.as_str()), &exe.to_string_lossy());
    cmd.arg("__clients")
        .args(["--target", target.name()])
        .args(["--http", &server.http.to_string()])
        .args(["--local-ip", &client_ip])
        .args(["--publishers", &opts.publishers.to_string()])
        .args(["--subscribers", &opts.subscribers.to_string()])
        .args(["--seconds", &opts.seconds.to_string()])
        .args(["--warmup", &opts.warmup.to_string()])
        .args(["--threads", &opts.client_threads.to_string()])
        .args(["--tail", if opts.strace { "4" } else { "0" }]);
    if opts.simulcast {
        cmd.arg("--simulcast");
    }
    let mut clients = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the simulated terminals")?;
    let client_pid = clients.id();
    let stdout = clients.stdout.take().context("clients stdout")?;
    let mut start = None;
    let mut window = None;
    let mut result = None;
    let mut strace = None;
    let mut strace_run: Option<procstat::StraceRun> = None;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if line == "BENCH_MEASURE_START" {
            start = Some((
                cpu_seconds(server_pid)?,
                cpu_seconds(client_pid)?,
                procstat::monotonic(),
            ));
        } else if line == "BENCH_MEASURE_END" {
            let (s0, c0, t0) = start.context("END before START")?;
            window = Some((
                cpu_seconds(server_pid)? - s0,
                cpu_seconds(client_pid)? - c0,
                procstat::monotonic() - t0,
            ));
            if opts.strace {
                strace_run = procstat::StraceRun::start(server_pid)
                    .map_err(|e| eprintln!("strace not run: {e:#}"))
                    .ok();
            }
        } else if let Some(rest) = line.strip_prefix("BENCH_TAIL_START ") {
            if let Some(s) = strace_run.as_mut() {
                s.mark_start(serde_json::from_str(rest)?);
            }
        } else if let Some(rest) = line.strip_prefix("BENCH_TAIL_END ") {
            if let Some(s) = strace_run.take() {
                strace = s
                    .finish(serde_json::from_str(rest)?)
                    .map_err(|e| eprintln!("strace failed: {e:#}"))
                    .ok();
            }
        } else if let Some(rest) = line.strip_prefix("BENCH_RESULT ") {
            result = Some(serde_json::from_str::<Value>(rest)?);
        } else {
            eprintln!("[{} clients] {line}", target.name());
        }
    }
    let status = clients.wait()?;
    let result = result.ok_or_else(|| anyhow!("the terminals failed ({status})"))?;
    let (cpu_s, client_cpu_s, window_s) =
        window.ok_or_else(|| anyhow!("the terminals never finished a measurement window"))?;
    drop(server);
    Ok(Figures {
        target,
        cpu_s,
        client_cpu_s,
        window_s,
        result,
        strace,
    })
}

fn sfu_forward(opts: Opts) -> Result<()> {
    let ns = match Netns::setup() {
        Ok(n) => Some(n),
        Err(e) => {
            eprintln!("network namespaces unavailable ({e:#}); Huitong runs on 127.0.0.1 only");
            None
        }
    };
    let targets: Vec<Target> = [(opts.huitong, Target::Huitong), (opts.janus, Target::Janus)]
        .into_iter()
        .filter_map(|(on, t)| on.then_some(t))
        .collect();
    let mut rounds: Vec<Round> = Vec::new();
    let mut janus_error = None;
    for round in 0..opts.rounds {
        // strace slows what it watches, and it runs after the window; once is enough.
        let opts = Opts {
            strace: opts.strace && round == 0,
            ..opts.clone()
        };
        let mut r = Round::default();
        for &target in &targets {
            match run_target(target, &opts, ns.as_ref()) {
                Ok(f) => {
                    let mut line = f.json();
                    line["round"] = json!(round + 1);
                    println!("{line}");
                    if let Some(s) = &f.strace {
                        println!(
                            "{}",
                            json!({"bench": "sfu-forward", "server": f.target.name(), "strace": s})
                        );
                    }
                    match target {
                        Target::Huitong => r.huitong = Some(f),
                        Target::Janus => r.janus = Some(f),
                    }
                }
                Err(e) => {
                    if target == Target::Janus {
                        janus_error = Some(format!("{e:#}"));
                    }
                    println!(
                        "{}",
                        json!({"bench": "sfu-forward", "server": target.name(), "round": round + 1, "error": format!("{e:#}")})
                    );
                }
            }
        }
        rounds.push(r);
    }
    drop(ns);

    // The round whose ratio is the median stands for the run, so the figures printed
    // together (CPU, latency, syscalls) come from one pair of measurements.
    let ratios: Vec<Option<f64>> = rounds.iter().map(Round::ratio).collect();
    let mut measured: Vec<(f64, usize)> = ratios
        .iter()
        .enumerate()
        .filter_map(|(i, r)| Some(((*r)?, i)))
        .collect();
    measured.sort_by(|a, b| a.0.total_cmp(&b.0));
    let pick = measured.get(measured.len() / 2).map_or(0, |m| m.1);
    let rep = rounds.get(pick);
    let h = rep.and_then(|r| r.huitong.as_ref());
    let j = rep.and_then(|r| r.janus.as_ref());
    let h_cpu = h.and_then(Figures::cpu_per_mpkt);
    let j_cpu = j.and_then(Figures::cpu_per_mpkt);

    println!();
    summary(&opts, h, j, janus_error.as_deref());
    if rounds.len() > 1 {
        let list: Vec<String> = ratios
            .iter()
            .map(|r| r.map_or("-".into(), |r| format!("{r:.2}")))
            .collect();
        println!(
            "  rounds (huitong then janus, alternating): ratios {}; the median round is shown above",
            list.join(", ")
        );
    }
    println!(
        "{}",
        json!({
            "bench": "sfu-forward",
            "publishers": opts.publishers,
            "subscribers": opts.subscribers,
            "rounds": rounds.len(),
            "huitong_cpu_s_per_mpkt": h_cpu,
            "janus_cpu_s_per_mpkt": j_cpu,
            "janus_ratio": rep.and_then(Round::ratio),
            "janus_ratio_rounds": ratios,
            "p99_forward_ms": h.map(|f| f.result["p99_ms"].clone()),
            "loss": h.map(|f| f.result["loss"].clone()),
        })
    );
    Ok(())
}

/// One Huitong run and one Janus run back to back.
#[derive(Default)]
struct Round {
    huitong: Option<Figures>,
    janus: Option<Figures>,
}

impl Round {
    fn ratio(&self) -> Option<f64> {
        let h = self.huitong.as_ref()?.cpu_per_mpkt()?;
        let j = self.janus.as_ref()?.cpu_per_mpkt()?;
        (h > 0.0).then(|| j / h)
    }
}

fn summary(opts: &Opts, h: Option<&Figures>, j: Option<&Figures>, janus_error: Option<&str>) {
    let streams = opts.publishers * (opts.publishers - 1 + opts.subscribers);
    println!(
        "sfu-forward: {} publishers x {} subscribers, 1.5 Mbit/s H.264 + Opus each, {} forwarded streams, {} s measured after {} s warm-up.",
        opts.publishers, opts.subscribers, streams, opts.seconds, opts.warmup
    );
    for f in [h, j].into_iter().flatten() {
        println!(
            "  {:8} {:>8.0} pkt/s forwarded, server CPU {:>5.1} % of a core = {:.2} CPU-s per million packets; latency p50 {} ms p99 {} ms; loss {}; terminals' CPU {:.0} %",
            f.target.name(),
            f.packets() as f64 / f.window_s,
            100.0 * f.cpu_s / f.window_s,
            f.cpu_per_mpkt().unwrap_or(f64::NAN),
            f.result["p50_ms"],
            f.result["p99_ms"],
            f.result["loss"],
            100.0 * f.client_cpu_s / f.window_s,
        );
        if let Some(s) = &f.strace {
            println!(
                "           syscalls (strace -c -f, {} s): {:.2} per forwarded packet; top: {}",
                s["seconds"], s["syscalls_per_packet"], s["top"]
            );
        }
    }
    if let Some(e) = janus_error {
        println!("  janus: not measured: {e}");
    }
    if let (Some(h), Some(j)) = (h, j)
        && let (Some(hc), Some(jc)) = (h.cpu_per_mpkt(), j.cpu_per_mpkt())
    {
        println!(
            "  janus_ratio = janus CPU per packet / huitong CPU per packet = {:.2}",
            jc / hc
        );
    }
    if let Some(h) = h {
        let util = h.cpu_s / h.window_s;
        let spp = h
            .strace
            .as_ref()
            .and_then(|s| s["syscalls_per_packet"].as_f64());
        let limit = if util > 0.9 {
            "the server is CPU-bound on its core (utilisation > 90 %): the figure is its per-packet cost at saturation"
        } else if spp.is_some_and(|s| s > 1.5) {
            "the server is not saturated; per packet it makes more than one syscall (one recv plus one send per copy), so syscalls dominate: batching sends (sendmmsg/GSO via quinn-udp) is the next lever"
        } else {
            "the server is not saturated; the offered load (what 2 cores' worth of simulated terminals can generate and decrypt) limits the packet rate, the per-packet cost is what matters"
        };
        println!("  what limits the Huitong figure: {limit}.");
        if let Some(m) = h.result["metrics_forwarded"].as_f64()
            && m > 1.1 * h.packets() as f64
        {
            println!(
                "  note: the server wrote {m:.0} packets to subscribers (sfu_rtp_forwarded_total) but the terminals received {}: packets queue in the subscriber pcs' pacer (bandwidth estimate below the forwarded rate), which is what the latency shows.",
                h.packets()
            );
        }
    }
}
