//! `bench loss` (issue 4): real H.264 video and an audio stand-in through the real SFU on
//! real UDP sockets, with loss on the uplink and on the downlink at once, for Huitong's
//! hop-by-hop protection and for a NACK/RTX-only baseline in the same run.
//!
//! Topology per run (all on 127.0.0.1, one process):
//!
//! ```text
//! sender ⇄ relay(up link) ⇄ SFU (sfu::spawn, own thread) ⇄ relay(down link) ⇄ receiver
//! ```
//!
//! Each relay (`endpoints_sim::relay`) runs one seeded `media::netem` per direction:
//! 20 ± 3 ms each way by default (`--link-delay-ms`), so 40 ms RTT per link and 80 ms
//! end to end, and the scenario's loss on every datagram
//! both ways (media, repair, RTX, RTCP feedback, STUN alike). Loss starts when the sender
//! starts its media (ICE/DTLS set-up is not what is measured); the first `--warmup`
//! seconds are not counted.
//!
//! The sender encodes live (OpenH264, one thread, `Complexity::Low`); the receiver
//! decodes every delivered frame and checks it against the regenerated source.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use endpoints_sim::realvideo::{
    self, Epoch, Figures, LatencyParts, LossReceiver, LossSender, Method,
};
use endpoints_sim::relay::Relay;
use media::netem::{GilbertElliott, LossModel, NetemConfig};
use serde_json::json;
use sfu::{MediaKind, ParticipantId, SfuConfig, SfuEvent, TrackDecl, TrackSource};

const USAGE: &str = "usage: bench loss [--seconds N] [--warmup W] [--height 1080|720] \
[--link-delay-ms D] [--uplink-round-price X] [--downlink-round-price X] [--uplink-grace-ms G] [--trace-dir DIR] [--scenarios random0,random10,random30,random50,bursty50,random70] [--methods huitong,nack_only]";

const ALL_SCENARIOS: [&str; 6] = [
    "random0", "random10", "random30", "random50", "bursty50", "random70",
];

struct Opts {
    seconds: u64,
    warmup: u64,
    height: usize,
    /// One-way delay of each link (both links, both ways; ±3 ms jitter on top).
    link_delay_ms: u64,
    /// The SFU's `TxPolicy::SFU_DOWNLINK` round price (the server's
    /// `media.downlink_fec_round_price`), to measure the latency it buys.
    downlink_round_price: f64,
    /// The publisher's `TxPolicy::ENDPOINT` round price: more buys fewer repair rounds
    /// on the uplink with more FEC, the trade between the goal's overhead and latency.
    uplink_round_price: f64,
    /// The SFU's uplink late grace (`SfuConfig::uplink_late_grace`).
    uplink_grace_ms: u64,
    /// Where to write each run's per-frame timeline (`<scenario>-<method>.csv`).
    trace_dir: Option<std::path::PathBuf>,
    scenarios: Vec<String>,
    methods: Vec<Method>,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        seconds: 20,
        warmup: 2,
        height: 1080,
        link_delay_ms: 20,
        downlink_round_price: sfu::protect::DOWNLINK_ROUND_PENALTY_SCALE,
        uplink_round_price: sfu::protect::TxPolicy::ENDPOINT.round_penalty_scale,
        uplink_grace_ms: sfu::protect::SFU_UPLINK_LATE_GRACE.as_millis() as u64,
        trace_dir: None,
        scenarios: ALL_SCENARIOS.iter().map(|s| s.to_string()).collect(),
        methods: vec![Method::Huitong, Method::NackOnly],
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .ok_or_else(|| anyhow!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--seconds" => o.seconds = val()?.parse().context("--seconds")?,
            "--warmup" => o.warmup = val()?.parse().context("--warmup")?,
            "--height" => o.height = val()?.parse().context("--height")?,
            "--link-delay-ms" => o.link_delay_ms = val()?.parse().context("--link-delay-ms")?,
            "--uplink-grace-ms" => {
                o.uplink_grace_ms = val()?.parse().context("--uplink-grace-ms")?
            }
            "--trace-dir" => o.trace_dir = Some(val()?.into()),
            "--uplink-round-price" => {
                o.uplink_round_price = val()?.parse().context("--uplink-round-price")?;
            }
            "--downlink-round-price" => {
                o.downlink_round_price = val()?.parse().context("--downlink-round-price")?;
            }
            "--scenarios" => {
                o.scenarios = val()?.split(',').map(str::to_string).collect();
                for s in &o.scenarios {
                    scenario_loss(s)?;
                }
            }
            "--methods" => {
                o.methods = val()?
                    .split(',')
                    .map(|m| match m {
                        "huitong" => Ok(Method::Huitong),
                        "nack_only" => Ok(Method::NackOnly),
                        _ => Err(anyhow!("unknown method {m}")),
                    })
                    .collect::<Result<_>>()?;
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => bail!("unknown argument {a}\n{USAGE}"),
        }
    }
    if !matches!(o.height, 720 | 1080) {
        bail!("--height must be 1080 or 720");
    }
    if o.seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    if !(o.downlink_round_price.is_finite() && o.downlink_round_price >= 0.0) {
        bail!("--downlink-round-price must be a number ≥ 0");
    }
    if !(o.uplink_round_price.is_finite() && o.uplink_round_price >= 0.0) {
        bail!("--uplink-round-price must be a number ≥ 0");
    }
    Ok(o)
}

/// `randomNN`: Bernoulli NN %; `burstyNN`: Gilbert–Elliott averaging NN % in runs of 3.
fn scenario_loss(s: &str) -> Result<LossModel> {
    let pct = |rest: &str| -> Result<f64> {
        let p: f64 = rest.parse().with_context(|| format!("scenario {s}"))?;
        if !(0.0..100.0).contains(&p) {
            bail!("scenario {s}: loss must be below 100 %");
        }
        Ok(p / 100.0)
    };
    if let Some(r) = s.strip_prefix("random") {
        let p = pct(r)?;
        Ok(if p == 0.0 {
            LossModel::None
        } else {
            LossModel::Bernoulli(p)
        })
    } else if let Some(r) = s.strip_prefix("bursty") {
        Ok(LossModel::GilbertElliott(GilbertElliott::from_average(
            pct(r)?,
            3.0,
        )))
    } else {
        bail!("unknown scenario {s} (randomNN or burstyNN)")
    }
}

fn link(delay_ms: u64, seed: u64, loss: LossModel) -> NetemConfig {
    NetemConfig::new()
        .latency(Duration::from_millis(delay_ms))
        .jitter(Duration::from_millis(3))
        .loss(loss)
        .seed(seed)
}

#[allow(clippy::disallowed_methods)] // a bench binary reads the clock
fn now() -> Instant {
    Instant::now()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The kernel's count of UDP datagrams dropped for a full receive buffer, machine-wide
/// (`/proc/net/snmp`): such drops are loss the scenario did not ask for.
fn udp_rcvbuf_errors() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let i = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// Points the SDP's host candidate on `from` at `to` (the relay in front of the SFU).
fn redirect(sdp: &str, from: SocketAddr, to: SocketAddr) -> Result<String> {
    let a = format!(" {} {} typ", from.ip(), from.port());
    let b = format!(" {} {} typ", to.ip(), to.port());
    if !sdp.contains(&a) {
        bail!("SDP has no candidate {from}");
    }
    Ok(sdp.replace(&a, &b))
}

struct Run {
    scenario: String,
    method: Method,
    fig: Figures,
    /// The same with each picture counted when its decode finished (no render clock).
    at_decode: Figures,
    overhead: f64,
    /// The same for what the SFU sent the receiver (everything on that socket path).
    overhead_downlink: f64,
    /// `overhead` by what the sender's datagrams carried.
    overhead_parts: realvideo::OverheadParts,
    /// Measured loss on [up link up, up link down, down link down, down link up].
    link_loss: [f64; 4],
    frames_sent: u64,
    keyframes_sent: u64,
    encode_ms_per_frame: f64,
    skipped: u64,
    parts: LatencyParts,
}

async fn run_one(o: &Opts, scenario: &str, seed: u64, method: Method) -> Result<Run> {
    let loss = scenario_loss(scenario)?;
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let width = o.height * 16 / 9;
    let sfu_sock = UdpSocket::bind(SocketAddr::new(lo, 0))?;
    let cfg = SfuConfig {
        downlink_protection: sfu::protect::TxPolicy {
            round_penalty_scale: o.downlink_round_price,
            ..SfuConfig::default().downlink_protection
        },
        uplink_late_grace: Duration::from_millis(o.uplink_grace_ms),
        ..SfuConfig::default()
    };
    let (sfu, mut events) = sfu::spawn(sfu_sock, cfg)?;
    let sfu_addr = sfu.local_addr();
    let none = |i| link(o.link_delay_ms, seed * 16 + i, LossModel::None);
    let up = Relay::spawn(lo, sfu_addr, none(0), none(1)).await?;
    let down = Relay::spawn(lo, sfu_addr, none(2), none(3)).await?;

    let s_sock = UdpSocket::bind(SocketAddr::new(lo, 0))?;
    let r_sock = UdpSocket::bind(SocketAddr::new(lo, 0))?;
    for s in [&s_sock, &r_sock] {
        s.set_nonblocking(false)?;
        // As the SFU and the relays do: at 50 % loss protection a terminal receives
        // about 1,200 datagrams/s, and the default buffer holds about 90 of them, 80 ms
        // of a network thread held off the CPU. A drop there would be loss the scenario
        // did not ask for; the run prints the kernel's count.
        let _ = socket2::SockRef::from(s).set_recv_buffer_size(4 << 20);
    }
    let drops_before = udp_rcvbuf_errors();
    let epoch: Epoch = Arc::default();
    let mut sender = LossSender::new(
        now(),
        s_sock.local_addr()?,
        method,
        width,
        o.height,
        epoch.clone(),
    )?;
    sender.uplink_policy.round_penalty_scale = o.uplink_round_price;
    let mut receiver = LossReceiver::new(now(), r_sock.local_addr()?, method, width, o.height)?;

    let room = "loss".to_string();
    let (pp, sp) = (ParticipantId(1), ParticipantId(2));
    sfu.join(room.clone(), sp).await?;
    sfu.join(room, pp).await?;
    let (offer, amid, vmid) = sender.offer()?;
    let decls = vec![
        TrackDecl {
            mid: amid.to_string(),
            kind: MediaKind::Audio,
            source: TrackSource::Mic,
            label: None,
            audience: None,
        },
        TrackDecl {
            mid: vmid.to_string(),
            kind: MediaKind::Video,
            source: TrackSource::Camera,
            label: None,
            audience: None,
        },
    ];
    let answer = sfu.publish(pp, offer, decls).await?;
    sender.accept_answer(&redirect(&answer, sfu_addr, up.near_addr())?)?;
    // The subscriber's offer with both tracks.
    let deadline = now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(now());
        let ev = tokio::time::timeout(left, events.recv())
            .await
            .map_err(|_| anyhow!("no subscriber offer within 5 s"))?
            .ok_or_else(|| anyhow!("SFU stopped"))?;
        if let SfuEvent::SubscriberOffer {
            participant,
            sdp,
            tracks,
        } = ev
        {
            if participant == sp && tracks.len() == 2 {
                let a = receiver.accept_offer(&redirect(&sdp, sfu_addr, down.near_addr())?)?;
                sfu.subscriber_answer(sp, a).await?;
                break;
            }
        }
    }
    // Later events (quality reports, speaker changes) are not needed.
    tokio::spawn(async move { while events.recv().await.is_some() {} });

    let receiver_up = receiver.connected.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let s_thread = std::thread::Builder::new()
        .name("loss-sender".into())
        .spawn(move || {
            let r = realvideo::run(&mut sender, &s_sock, &st);
            r.map(|()| sender)
        })?;
    let st = stop.clone();
    let r_thread = std::thread::Builder::new()
        .name("loss-receiver".into())
        .spawn(move || {
            let r = realvideo::run(&mut receiver, &r_sock, &st);
            r.map(|()| {
                receiver.finish();
                receiver
            })
        })?;

    let t0 = now();
    let start = loop {
        if let Some(e) = epoch.get() {
            break *e;
        }
        if now() > t0 + Duration::from_secs(15) {
            stop.store(true, Ordering::Relaxed);
            bail!("{scenario}/{}: the sender never connected", method.name());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // Loss is on media, not on call set-up: the receiver's ICE/DTLS must be up first too
    // (under 50 % loss a handshake can take longer than the whole window).
    while !receiver_up.load(Ordering::Relaxed) {
        if now() > t0 + Duration::from_secs(15) {
            stop.store(true, Ordering::Relaxed);
            bail!("{scenario}/{}: the receiver never connected", method.name());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let lossy = |i| link(o.link_delay_ms, seed * 16 + 8 + i, loss);
    up.set_config(lossy(0), lossy(1));
    down.set_config(lossy(3), lossy(2));
    let from = start.max(now()) + Duration::from_secs(o.warmup);
    let to = from + Duration::from_secs(o.seconds);
    // Frames captured just before `to` may still be in recovery: let them land.
    tokio::time::sleep_until((to + Duration::from_millis(600)).into()).await;
    stop.store(true, Ordering::Relaxed);
    let sender = s_thread
        .join()
        .map_err(|_| anyhow!("sender thread panicked"))??;
    let receiver = r_thread
        .join()
        .map_err(|_| anyhow!("receiver thread panicked"))??;
    if let Some(dir) = &o.trace_dir {
        write_trace(dir, scenario, method, start, &sender, &receiver)?;
    }
    let fig = realvideo::figures(&receiver, start, from, to);
    let parts = realvideo::latency_parts(&sender.encoded, &receiver, start, from, to);
    let at_decode = realvideo::figures_at_decode(&receiver, start, from, to);
    {
        // Audio frames lost for good, as runs: independent loss gives runs of one or
        // two; long runs mean something dropped audio in a block.
        let frame = |t: Instant| (t.saturating_duration_since(start).as_millis() / 20) as u64;
        let (a0, a1) = (frame(from), frame(to).saturating_sub(25));
        let mut runs: Vec<(u64, u64)> = vec![];
        for m in (a0..a1).filter(|m| !receiver.audio.contains(m)) {
            match runs.last_mut() {
                Some((first, len)) if *first + *len == m => *len += 1,
                _ => runs.push((m, 1)),
            }
        }
        eprintln!(
            "loss {scenario}/{}: audio frames lost (first, run length): {runs:?}; sender repeated {} frames in RED; receiver got {} RED and {} plain packets",
            method.name(),
            sender.audio_redundant_frames,
            receiver.audio_packets.0,
            receiver.audio_packets.1,
        );
    }
    if let Some(st) = sender.protection_stats() {
        // What the sender's overhead is made of: the video's own repair, against the
        // socket total (audio redundancy, carrier and SRTP headers, RTCP).
        eprintln!(
            "loss {scenario}/{}: sender video packets: media {} kB, FEC {} kB, RTX {} kB in {} packets for {} NACKs ({:.3}x of the packets' bytes; encoded video {} kB; {} packets in {} FEC blocks); socket total {} kB",
            method.name(),
            st.media_bytes / 1000,
            st.fec_bytes / 1000,
            st.rtx_bytes / 1000,
            st.rtx_packets,
            st.nacks_received,
            st.overhead(),
            sender.video_bytes / 1000,
            st.media_packets,
            st.fec_blocks,
            sender.bytes_sent / 1000,
        );
    }
    let sb = &sender.sent;
    eprintln!(
        "loss {scenario}/{}: sender socket by kind [datagrams, bytes, RTP header bytes]: video carrier {:?}, audio {:?}, other RTP {:?}; RTCP {:?}; STUN/DTLS {:?}; media {} kB (video {} kB)",
        method.name(),
        sb.rtp[0],
        sb.rtp[1],
        sb.rtp[2],
        sb.rtcp,
        sb.other,
        sender.media_bytes / 1000,
        sender.video_bytes / 1000,
    );
    eprintln!(
        "loss {scenario}/{}: frames in {}, to decoder {}, shown {}, decoder errors {}, skipped {} {:?} rx {:?}",
        method.name(),
        receiver.frames_in,
        receiver.frames_decoded,
        receiver.shown.len(),
        receiver.decode_errors,
        receiver.skipped,
        receiver.skip_reasons,
        receiver.recovery_stats(),
    );
    let frac = |s: media::netem::NetemStats| {
        if s.offered == 0 {
            0.0
        } else {
            s.lost as f64 / s.offered as f64
        }
    };
    if let (Some(a), Some(b)) = (drops_before, udp_rcvbuf_errors()) {
        eprintln!(
            "loss {scenario}/{}: kernel UDP receive-buffer drops during the run (machine-wide): {}",
            method.name(),
            b.saturating_sub(a)
        );
    }
    let [uu, ud] = up.stats();
    let [du, dd] = down.stats();
    // Datagrams per hop: where packets go missing between the sender and the receiver.
    eprintln!(
        "loss {scenario}/{}: datagrams sender→SFU offered {} delivered {}, SFU→receiver offered {} delivered {}, receiver→SFU {}/{}, SFU→sender {}/{}",
        method.name(),
        uu.offered,
        uu.delivered,
        dd.offered,
        dd.delivered,
        du.offered,
        du.delivered,
        ud.offered,
        ud.delivered
    );
    // Where frames die: the SFU's own uplink recovery skips frames the receiver then
    // never hears of (they show as missing frames, not receiver skips).
    if let Ok(st) = sfu.stats().await {
        let c = &st.counters;
        eprintln!(
            "loss {scenario}/{}: SFU uplink frames delivered {}, skipped {} ({} incomplete), gaps {}, keyframe requests to sender {} (absorbed {})",
            method.name(),
            c.protected_frames_up,
            c.protected_skipped_up,
            c.protected_incomplete_up,
            c.protected_gaps_up,
            c.keyframe_requests_up,
            c.keyframe_requests_absorbed
        );
        eprintln!(
            "loss {scenario}/{}: SFU uplink recovery {:?}; downlink protection {:?}",
            method.name(),
            st.uplink_protection,
            st.downlink_protection
        );
    }
    sfu.leave(pp);
    sfu.leave(sp);
    Ok(Run {
        scenario: scenario.to_string(),
        method,
        fig,
        at_decode,
        overhead: sender.bytes_sent as f64 / sender.media_bytes.max(1) as f64,
        overhead_downlink: dd.offered_bytes as f64 / sender.media_bytes.max(1) as f64,
        overhead_parts: sender.sent.overhead_parts(
            sender.media_bytes,
            sender
                .protection_stats()
                .map(|st| st.media_bytes + st.fec_bytes + st.rtx_bytes),
        ),
        link_loss: [frac(uu), frac(ud), frac(dd), frac(du)],
        frames_sent: sender.frames_sent,
        keyframes_sent: sender.keyframes_sent,
        encode_ms_per_frame: sender.encode_time.as_secs_f64() * 1e3
            / sender.frames_sent.max(1) as f64,
        skipped: receiver.skipped,
        parts,
    })
}

/// Each frame's timeline in ms since the media clock's start: captured (frame number ×
/// interval), encoded (the packets went to the protection), arrived (its recovery
/// completed at the receiver), decoded, shown; empty where the frame never got there.
/// What the latency is made of, frame by frame (`docs/benchmarks.md`).
fn write_trace(
    dir: &std::path::Path,
    scenario: &str,
    method: Method,
    epoch: Instant,
    sender: &LossSender,
    receiver: &LossReceiver,
) -> Result<()> {
    use std::fmt::Write as _;
    let ms = |t: Instant| {
        let d = t.saturating_duration_since(epoch).as_secs_f64()
            - epoch.saturating_duration_since(t).as_secs_f64();
        format!("{:.2}", d * 1e3)
    };
    let shown: std::collections::HashMap<u64, &realvideo::Shown> =
        receiver.shown.iter().map(|s| (s.frame, s)).collect();
    let mut out = String::from(
        "frame,temporal_id,captured_ms,encoded_ms,arrived_ms,decoded_ms,shown_ms,psnr\n",
    );
    for e in &sender.encoded {
        let n = e.frame;
        let cap = n as f64 * realvideo::FRAME_INTERVAL.as_secs_f64() * 1e3;
        let _ = write!(out, "{n},{},{cap:.2},{}", e.temporal_id, ms(e.at));
        match shown.get(&n) {
            Some(s) => {
                let _ = writeln!(
                    out,
                    ",{},{},{},{:.1}",
                    ms(s.arrived),
                    ms(s.decoded),
                    ms(s.at),
                    s.psnr
                );
            }
            None => out.push_str(",,,,\n"),
        }
    }
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{scenario}-{}.csv", method.name()));
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

fn json_line(r: &Run, o: &Opts) -> serde_json::Value {
    let (f, d) = (&r.fig, &r.at_decode);
    let ms = |x: f64| {
        if x.is_finite() {
            json!(round(x, 1))
        } else {
            json!(null)
        }
    };
    json!({
        "bench": "loss",
        "link_delay_ms": o.link_delay_ms,
        "downlink_round_price": o.downlink_round_price,
        "uplink_round_price": o.uplink_round_price,
        "uplink_grace_ms": o.uplink_grace_ms,
        "scenario": r.scenario,
        "method": r.method.name(),
        "width": f.width,
        "height": f.height,
        "fps_avg": round(f.fps_avg, 2),
        "fps_worst_1s": f.fps_worst_1s,
        "corrupt_frames": f.corrupt_frames,
        "freeze_ms": f.freeze_ms,
        "p95_latency_ms": ms(f.p95_latency_ms),
        "fps_worst_1s_at_decode": d.fps_worst_1s,
        "freeze_ms_at_decode": d.freeze_ms,
        "p95_latency_ms_at_decode": ms(d.p95_latency_ms),
        "overhead": round(r.overhead, 3),
        "overhead_downlink": round(r.overhead_downlink, 3),
        "overhead_video": round(r.overhead_parts.video, 3),
        "overhead_video_wrapping": r.overhead_parts.video_wrapping.map(|w| round(w, 3)),
        "overhead_audio": round(r.overhead_parts.audio, 3),
        "overhead_other": round(r.overhead_parts.other, 3),
        "audio_residual_loss": if f.audio_residual_loss.is_finite() { json!(round(f.audio_residual_loss, 4)) } else { json!(null) },
        "p95_encode_ms": ms(r.parts.encode.p95),
        "p95_network_ms": ms(r.parts.network.p95),
        "p95_decode_ms": ms(r.parts.decode.p95),
        "p95_render_wait_ms": ms(r.parts.render_wait.p95),
        "p95_arrived_base_ms": ms(r.parts.arrived_base.p95),
        "p95_arrived_upper_ms": ms(r.parts.arrived_upper.p95),
    })
}

pub fn main(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let load_before = loadavg();
    let mut runs = vec![];
    for (i, sc) in o.scenarios.iter().enumerate() {
        for &m in &o.methods {
            let seed = 1_000 + i as u64;
            match rt.block_on(run_one(&o, sc, seed, m)) {
                Ok(r) => {
                    println!("{}", json_line(&r, &o));
                    runs.push(r);
                }
                Err(e) => eprintln!("loss {sc}/{}: {e:#}", m.name()),
            }
        }
    }
    let load_after = loadavg();
    println!();
    println!(
        "loss bench: {}p30 live OpenH264, {} s measured after {} s warm-up, {}±3 ms each way per link, loss on both links both ways, publisher's uplink round price {}, SFU downlink round price {}, SFU uplink late grace {} ms",
        o.height,
        o.seconds,
        o.warmup,
        o.link_delay_ms,
        o.uplink_round_price,
        o.downlink_round_price,
        o.uplink_grace_ms
    );
    println!("load average before {load_before}, after {load_after}");
    println!(
        "{:<9} {:<9} {:>9} {:>6} {:>7} {:>7} {:>8} {:>8} {:>13} {:>7} {:>7} {:>9} {:>14} {:>6} {:>5}",
        "scenario",
        "method",
        "size",
        "fps",
        "worst1s",
        "corrupt",
        "freeze",
        "p95 ms",
        "at decode*",
        "ovh",
        "dl ovh",
        "audio loss",
        "link loss %",
        "idr",
        "enc ms"
    );
    for r in &runs {
        let f = &r.fig;
        println!(
            "{:<9} {:<9} {:>9} {:>6.2} {:>7} {:>7} {:>8} {:>8.0} {:>13} {:>7.2} {:>7.2} {:>9.2}% {:>14} {:>6} {:>5.1}",
            r.scenario,
            r.method.name(),
            format!("{}x{}", f.width, f.height),
            f.fps_avg,
            f.fps_worst_1s,
            f.corrupt_frames,
            f.freeze_ms,
            f.p95_latency_ms,
            format!(
                "{}/{}/{:.0}",
                r.at_decode.fps_worst_1s, r.at_decode.freeze_ms, r.at_decode.p95_latency_ms
            ),
            r.overhead,
            r.overhead_downlink,
            f.audio_residual_loss * 100.0,
            r.link_loss
                .iter()
                .map(|l| format!("{:.0}", l * 100.0))
                .collect::<Vec<_>>()
                .join("/"),
            format!("{}/{}", r.keyframes_sent, r.frames_sent),
            r.encode_ms_per_frame,
        );
    }
    println!(
        "* worst1s / freeze ms / p95 ms with each picture counted when its decode finished, without the receiver's render clock"
    );
    println!();
    println!(
        "sender overhead by datagram kind (bytes over media bytes): video (of it the carrier's net wrapping: RTP header and SRTP trailer less the inner header bytes it leaves out), audio, RTCP/ICE/DTLS/other RTP"
    );
    for r in &runs {
        let o = &r.overhead_parts;
        println!(
            "{:<9} {:<9} video {:.3} ({})  audio {:.3}  other {:.3}  = {:.3}",
            r.scenario,
            r.method.name(),
            o.video,
            o.video_wrapping
                .map_or("-".to_string(), |w| format!("{w:.3}")),
            o.audio,
            o.other,
            r.overhead,
        );
    }
    println!();
    println!(
        "latency parts, p50/p95 ms (each part's own percentiles): capture→encoded, encoded→complete at the receiver, complete→decoded, decoded→shown; capture→complete of base- and upper-layer frames"
    );
    for r in &runs {
        let p = &r.parts;
        let s = |x: realvideo::Spread| format!("{:.0}/{:.0}", x.p50, x.p95);
        println!(
            "{:<9} {:<9} encode {:>7}  network {:>7}  decode {:>7}  render wait {:>7}  complete T0 {:>7} T1 {:>7}",
            r.scenario,
            r.method.name(),
            s(p.encode),
            s(p.network),
            s(p.decode),
            s(p.render_wait),
            s(p.arrived_base),
            s(p.arrived_upper),
        );
    }
    println!();
    println!(
        "huitong / nack_only per scenario (fps avg, worst second; freeze ms and audio loss side by side):"
    );
    for sc in &o.scenarios {
        let find = |m| runs.iter().find(|r| &r.scenario == sc && r.method == m);
        if let (Some(h), Some(n)) = (find(Method::Huitong), find(Method::NackOnly)) {
            let ratio = |a: f64, b: f64| {
                if b > 0.0 {
                    format!("{:.2}x", a / b)
                } else {
                    "inf".into()
                }
            };
            println!(
                "{:<9} fps {:.2}/{:.2} = {}  worst {}/{} = {}  freeze {}/{} ms  audio {:.2}%/{:.2}%  skipped {}",
                sc,
                h.fig.fps_avg,
                n.fig.fps_avg,
                ratio(h.fig.fps_avg, n.fig.fps_avg),
                h.fig.fps_worst_1s,
                n.fig.fps_worst_1s,
                ratio(h.fig.fps_worst_1s as f64, n.fig.fps_worst_1s as f64),
                h.fig.freeze_ms,
                n.fig.freeze_ms,
                h.fig.audio_residual_loss * 100.0,
                n.fig.audio_residual_loss * 100.0,
                h.skipped,
            );
        }
    }
    Ok(())
}
