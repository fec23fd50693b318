//! `bench __clients`: the simulated terminals of one run, in their own process (entered
//! into the client namespace). Talks to the parent through stdout lines:
//! `BENCH_MEASURE_START`, `BENCH_MEASURE_END`, `BENCH_TAIL_START {snapshot}`,
//! `BENCH_TAIL_END {snapshot}`, `BENCH_RESULT {json}`.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use endpoints_sim::huitong::{HuitongTerminal, JoinParams};
use endpoints_sim::janus::JanusTerminal;
use endpoints_sim::stats::quantile;
use endpoints_sim::{MediaConfig, PeerConfig, PeerHandle, Stats};
use serde_json::json;

use crate::Target;

struct ClientOpts {
    target: Target,
    http: SocketAddr,
    local_ip: IpAddr,
    publishers: usize,
    subscribers: usize,
    seconds: u64,
    warmup: u64,
    threads: usize,
    tail: u64,
    simulcast: bool,
}

fn parse(args: &[String]) -> Result<ClientOpts> {
    let mut o = ClientOpts {
        target: Target::Huitong,
        http: "127.0.0.1:0".parse()?,
        local_ip: "127.0.0.1".parse()?,
        publishers: 4,
        subscribers: 16,
        seconds: 20,
        warmup: 5,
        threads: 1,
        tail: 0,
        simulcast: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--simulcast" {
            o.simulcast = true;
            continue;
        }
        let v = it.next().ok_or_else(|| anyhow!("{a} needs a value"))?;
        match a.as_str() {
            "--target" => {
                o.target = match v.as_str() {
                    "huitong" => Target::Huitong,
                    "janus" => Target::Janus,
                    _ => bail!("unknown target {v}"),
                }
            }
            "--http" => o.http = v.parse()?,
            "--local-ip" => o.local_ip = v.parse()?,
            "--publishers" => o.publishers = v.parse()?,
            "--subscribers" => o.subscribers = v.parse()?,
            "--seconds" => o.seconds = v.parse()?,
            "--warmup" => o.warmup = v.parse()?,
            "--threads" => o.threads = v.parse()?,
            "--tail" => o.tail = v.parse()?,
            _ => bail!("unknown argument {a}"),
        }
    }
    Ok(o)
}

pub fn main(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(o.threads.max(1))
        .enable_all()
        .build()?
        .block_on(run(o))
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

enum Terminal {
    Huitong(HuitongTerminal),
    Janus(Box<JanusTerminal>),
}

impl Terminal {
    fn subscriber(&self) -> Option<PeerHandle> {
        match self {
            Terminal::Huitong(t) => t.subscriber(),
            Terminal::Janus(t) => t.subscriber.clone(),
        }
    }
    async fn leave(self) {
        match self {
            Terminal::Huitong(t) => t.leave().await,
            Terminal::Janus(t) => (*t).leave().await,
        }
    }
}

#[allow(clippy::disallowed_methods)] // the client shell owns the clock
fn now() -> Instant {
    Instant::now()
}

async fn join_one(
    o: &ClientOpts,
    idx: usize,
    publish: bool,
    create: bool,
    epoch: Instant,
    stats: Arc<Stats>,
) -> Result<Terminal> {
    let cfg = PeerConfig {
        id: idx as u32 + 1,
        epoch,
        seed: 0x5eed_0000 + idx as u64,
        media: publish.then(|| MediaConfig {
            simulcast: o.simulcast,
            ..MediaConfig::default()
        }),
    };
    let name = format!("{}{idx}", if publish { "pub" } else { "sub" });
    match o.target {
        Target::Huitong => {
            let params = JoinParams {
                meeting: "900000042".into(),
                passcode: None,
                name,
                create,
            };
            let t = HuitongTerminal::join(o.http, params, o.local_ip, cfg, stats)
                .await
                .with_context(|| format!("terminal {idx} joining huitong"))?;
            Ok(Terminal::Huitong(t))
        }
        Target::Janus => {
            // Janus may still be starting: retry its first request for a while.
            let mut tries = 0;
            loop {
                match JanusTerminal::join(
                    o.http,
                    crate::janus::ROOM,
                    o.local_ip,
                    cfg.clone(),
                    stats.clone(),
                )
                .await
                {
                    Ok(t) => return Ok(Terminal::Janus(Box::new(t))),
                    Err(endpoints_sim::SimError::Io(e)) if tries < 100 => {
                        tries += 1;
                        tracing::debug!("janus not up yet: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => {
                        return Err(anyhow!(e).context(format!("terminal {idx} joining janus")));
                    }
                }
            }
        }
    }
}

/// Sum of the server's forwarded-packet counters in its Prometheus text, if it has any.
async fn metrics_forwarded(o: &ClientOpts) -> Option<f64> {
    if o.target != Target::Huitong {
        return None;
    }
    let body = endpoints_sim::http::request(o.http, "GET", "/metrics", None)
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&body);
    let mut sum = None;
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = l.rsplit_once(' ')?;
        let n = name.to_ascii_lowercase();
        if n.contains("rtp_forwarded") || (n.contains("forwarded") && n.contains("packets")) {
            *sum.get_or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    sum
}

async fn run(o: ClientOpts) -> Result<()> {
    let epoch = now();
    let stats = Arc::new(Stats::default());
    let t0 = now();

    // Publishers first (the first one creates the meeting), then everyone subscribes.
    let mut terminals = Vec::new();
    terminals.push(join_one(&o, 0, true, true, epoch, stats.clone()).await?);
    let mut joins = Vec::new();
    for i in 1..o.publishers {
        joins.push(join_one(&o, i, true, false, epoch, stats.clone()));
    }
    for t in futures_util::future::join_all(joins).await {
        terminals.push(t?);
    }
    if o.target == Target::Janus {
        // Janus subscribers name the feeds they want; publishers take everyone else's.
        for t in terminals.iter_mut() {
            if let Terminal::Janus(j) = t {
                let feeds = janus_feeds(j, o.publishers - 1).await?;
                j.subscribe(&feeds).await?;
            }
        }
    }
    let mut joins = Vec::new();
    for i in 0..o.subscribers {
        joins.push(join_one(
            &o,
            o.publishers + i,
            false,
            false,
            epoch,
            stats.clone(),
        ));
    }
    for t in futures_util::future::join_all(joins).await {
        let mut t = t?;
        if let Terminal::Janus(j) = &mut t {
            let feeds = janus_feeds(j, o.publishers).await?;
            j.subscribe(&feeds).await?;
        }
        terminals.push(t);
    }

    // Ready when every terminal decodes video from every publisher but itself.
    let expect = |i: usize| {
        if i < o.publishers {
            o.publishers - 1
        } else {
            o.publishers
        }
    };
    let ready_deadline = now() + Duration::from_secs(30);
    let ready = loop {
        let ready = terminals
            .iter()
            .enumerate()
            .filter(|(i, t)| {
                let want = expect(*i);
                want == 0
                    || t.subscriber()
                        .is_some_and(|s| s.status().video_senders >= want)
            })
            .count();
        if ready == terminals.len() || now() > ready_deadline {
            break ready;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let setup_ms = now().duration_since(t0).as_millis();
    if ready < terminals.len() {
        for (i, t) in terminals.iter().enumerate() {
            eprintln!(
                "terminal {i}: subscriber {:?}, wants video from {}",
                t.subscriber().map(|s| s.status()),
                expect(i)
            );
        }
        eprintln!(
            "only {ready} of {} terminals receive all publishers' video after {setup_ms} ms; measuring anyway",
            terminals.len()
        );
    }

    tokio::time::sleep(Duration::from_secs(o.warmup)).await;
    let m0 = metrics_forwarded(&o).await;
    let s0 = stats.snapshot();
    let _ = stats.take_latencies();
    stats.set_recording(true);
    say("BENCH_MEASURE_START");
    tokio::time::sleep(Duration::from_secs(o.seconds)).await;
    let s1 = stats.snapshot();
    stats.set_recording(false);
    say("BENCH_MEASURE_END");
    let m1 = metrics_forwarded(&o).await;

    if o.tail > 0 {
        // Give strace time to attach before the counted interval starts.
        tokio::time::sleep(Duration::from_millis(700)).await;
        say(&format!(
            "BENCH_TAIL_START {}",
            serde_json::to_string(&stats.snapshot())?
        ));
        tokio::time::sleep(Duration::from_secs(o.tail)).await;
        say(&format!(
            "BENCH_TAIL_END {}",
            serde_json::to_string(&stats.snapshot())?
        ));
    }

    let window = s1.since(&s0);
    let mut lat = stats.take_latencies();
    let ms = |q: f64, lat: &mut Vec<u32>| quantile(lat, q).map(|us| f64::from(us) / 1000.0);
    let p50 = ms(0.5, &mut lat);
    let p99 = ms(0.99, &mut lat);
    let result = json!({
        "window": window,
        "loss": window.loss(),
        "p50_ms": p50,
        "p99_ms": p99,
        "latency_samples": lat.len(),
        "ready": format!("{ready}/{}", terminals.len()),
        "setup_ms": setup_ms,
        "metrics_forwarded": match (m0, m1) { (Some(a), Some(b)) => Some(b - a), _ => None },
    });
    say(&format!("BENCH_RESULT {result}"));
    for t in terminals {
        let _ = tokio::time::timeout(Duration::from_secs(3), t.leave()).await;
    }
    Ok(())
}

/// The other publishers' feeds once Janus lists `want` of them as publishing.
async fn janus_feeds(j: &mut JanusTerminal, want: usize) -> Result<Vec<u64>> {
    let deadline = now() + Duration::from_secs(15);
    loop {
        let feeds = j.list_feeds().await?;
        if feeds.len() >= want || now() > deadline {
            return Ok(feeds);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
