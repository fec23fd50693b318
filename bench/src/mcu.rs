//! `bench mcu`: CPU cost of the MCU video mix (decode → scale → compose → encode 1080p30)
//! through the real `mcu::engine::MeetingMixer`, against the same mix done by Debian's
//! `ffmpeg` (`xstack` + `libx264 -preset veryfast -tune zerolatency`, one thread).
//!
//! Inputs are H.264 streams at the resolution the tile needs (the simulcast layer an SFU
//! subscription would pick), encoded once with OpenH264 from synthetic scenes and cached
//! under the temp dir, so both mixers decode the very same bits:
//! * `talking`: a static room with a person whose head sways and mouth moves (the
//!   realistic conference picture);
//! * `full_motion`: a panning texture with moving shapes over the whole frame (worst case).
//!
//! Our CPU is the mixing thread's own CPU time (`/proc/thread-self/schedstat`, ns) over
//! the decode and tick calls only; ffmpeg's is the child's user + system time as the
//! kernel hands it to the waiting parent (the `cutime`/`cstime` delta of this process
//! around `wait`, i.e. what `wait4` reports). Quality is luma PSNR of each output against
//! its own uncompressed composed canvas: ours is `MeetingMixer::canvas`, ffmpeg's is the
//! same `xstack` graph written as raw video.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ::mcu::engine::{
    EngineConfig, MeetingMixer, Output, OutputKey, TerminalSettings, default_output_encoder,
};
use ::mcu::layout::LayoutSet;
use ::mcu::text::{DEFAULT_FONT, TextRenderer};
use anyhow::{Context, Result, anyhow, bail};
use media::codec::openh264::{
    DecoderBackend, EncoderBackend, H264Complexity, H264Decoder, H264Encoder, H264EncoderConfig,
    H264RateControl, I420Frame,
};
use serde_json::json;

const USAGE: &str = "usage: bench mcu [--seconds N] [--pictures 4,9,16] [--scenes talking,full_motion] \
[--bitrate BPS] [--ours-bitrate BPS] [--ffmpeg-bitrate BPS] [--no-ffmpeg] [--no-layouts] [--no-labels] \
[--no-stages] [--only-ours] [--complexity low|medium|high] [--scene-change on|off] [--aq on|off] \
[--background on|off] [--frame-skip on|off] [--screen-content] [--ltr] [--temporal-layers N] \
[--rc bitrate|quality|buffer|timestamp|off] [--qp MIN-MAX] [--threads N] [--encoder openh264|x264|x264-high] \
[--decoder auto|openh264|libav]";

/// Output picture every figure is about.
const OUT_W: usize = 1920;
const OUT_H: usize = 1080;
const FPS: u32 = 30;
/// Bump when the scene generators change so cached inputs are regenerated.
const SCENE_VERSION: u32 = 1;

fn encoder_name(b: EncoderBackend) -> &'static str {
    match b {
        EncoderBackend::OpenH264 => "openh264",
        EncoderBackend::X264 => "x264",
        EncoderBackend::X264High => "x264-high",
    }
}

/// The backend `MeetingMixer` ends up with for `b` on this host.
fn resolved_decoder(b: DecoderBackend) -> DecoderBackend {
    H264Decoder::with_backend(b).map_or(b, |d| d.backend())
}

#[derive(Debug, Clone)]
struct Opts {
    seconds: u64,
    pictures: Vec<usize>,
    scenes: Vec<Scene>,
    /// Our output bitrate tier.
    bitrate_bps: u32,
    /// ffmpeg's `-b:v` (the same as ours unless pairing at equal PSNR).
    ffmpeg_bitrate_bps: u32,
    ffmpeg: bool,
    layouts: bool,
    labels: bool,
    /// Time decode, compose and encode apart (`mcu-stages` lines) and split ffmpeg's CPU
    /// into decode + xstack and encode with a second, encoder-less ffmpeg run.
    stages: bool,
    encoder: H264EncoderConfig,
    /// The mixer's H.264 decoder (`--decoder auto|openh264|libav`).
    decoder: DecoderBackend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scene {
    Talking,
    FullMotion,
}

impl Scene {
    fn name(self) -> &'static str {
        match self {
            Scene::Talking => "talking",
            Scene::FullMotion => "full_motion",
        }
    }
}

fn parse_opts(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        seconds: 10,
        pictures: vec![4, 9, 16],
        scenes: vec![Scene::Talking, Scene::FullMotion],
        bitrate_bps: 2_000_000,
        ffmpeg_bitrate_bps: 2_000_000,
        ffmpeg: true,
        layouts: true,
        labels: true,
        stages: true,
        encoder: default_output_encoder(),
        decoder: DecoderBackend::Auto,
    };
    let (mut ours_bitrate, mut ff_bitrate) = (None, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val =
            || -> Result<&String> { it.next().ok_or_else(|| anyhow!("{a} needs a value")) };
        match a.as_str() {
            "--seconds" => o.seconds = val()?.parse().context("--seconds")?,
            "--bitrate" => {
                o.bitrate_bps = val()?.parse().context("--bitrate")?;
                o.ffmpeg_bitrate_bps = o.bitrate_bps;
            }
            "--ours-bitrate" => ours_bitrate = Some(val()?.parse().context("--ours-bitrate")?),
            "--ffmpeg-bitrate" => ff_bitrate = Some(val()?.parse().context("--ffmpeg-bitrate")?),
            "--pictures" => {
                o.pictures = val()?
                    .split(',')
                    .map(|p| p.parse::<usize>().context("--pictures"))
                    .collect::<Result<_>>()?;
            }
            "--scenes" => {
                o.scenes = val()?
                    .split(',')
                    .map(|s| match s {
                        "talking" => Ok(Scene::Talking),
                        "full_motion" => Ok(Scene::FullMotion),
                        _ => Err(anyhow!("unknown scene {s}")),
                    })
                    .collect::<Result<_>>()?;
            }
            "--complexity" => {
                o.encoder.complexity = match val()?.as_str() {
                    "low" => H264Complexity::Low,
                    "medium" => H264Complexity::Medium,
                    "high" => H264Complexity::High,
                    v => bail!("unknown complexity {v}"),
                }
            }
            "--scene-change" => o.encoder.scene_change_detect = on_off(val()?)?,
            "--aq" => o.encoder.adaptive_quant = on_off(val()?)?,
            "--background" => o.encoder.background_detection = on_off(val()?)?,
            "--frame-skip" => o.encoder.allow_frame_skip = on_off(val()?)?,
            "--screen-content" => o.encoder.screen_content = true,
            "--ltr" => o.encoder.long_term_reference = true,
            "--encoder" => {
                o.encoder.backend = match val()?.as_str() {
                    "openh264" => EncoderBackend::OpenH264,
                    "x264" => EncoderBackend::X264,
                    "x264-high" => EncoderBackend::X264High,
                    v => bail!("unknown encoder {v} (openh264, x264, x264-high)"),
                }
            }
            "--decoder" => {
                o.decoder = match val()?.as_str() {
                    "auto" => DecoderBackend::Auto,
                    "openh264" => DecoderBackend::OpenH264,
                    "libav" => DecoderBackend::Libav,
                    v => bail!("unknown decoder {v} (auto, openh264, libav)"),
                }
            }
            "--temporal-layers" => {
                o.encoder.temporal_layers = val()?
                    .parse::<u8>()
                    .ok()
                    .filter(|n| (1..=4).contains(n))
                    .ok_or_else(|| anyhow!("--temporal-layers needs 1..=4"))?
            }
            "--rc" => {
                o.encoder.rate_control = match val()?.as_str() {
                    "bitrate" => H264RateControl::Bitrate,
                    "quality" => H264RateControl::Quality,
                    "buffer" => H264RateControl::BufferBased,
                    "timestamp" => H264RateControl::Timestamp,
                    "off" => H264RateControl::Off,
                    v => bail!("unknown rate control {v}"),
                }
            }
            "--qp" => {
                let v = val()?;
                let (lo, hi) = v
                    .split_once('-')
                    .ok_or_else(|| anyhow!("--qp wants MIN-MAX, e.g. 10-36"))?;
                o.encoder.min_qp = lo.parse().context("--qp")?;
                o.encoder.max_qp = hi.parse().context("--qp")?;
            }
            "--threads" => o.encoder.threads = val()?.parse().context("--threads")?,
            "--no-stages" => o.stages = false,
            "--no-ffmpeg" => o.ffmpeg = false,
            "--no-layouts" => o.layouts = false,
            "--no-labels" => o.labels = false,
            "--only-ours" => {
                o.ffmpeg = false;
                o.layouts = false;
            }
            _ => bail!("unknown argument {a}\n{USAGE}"),
        }
    }
    if let Some(b) = ours_bitrate {
        o.bitrate_bps = b;
    }
    if let Some(b) = ff_bitrate {
        o.ffmpeg_bitrate_bps = b;
    }
    if o.seconds == 0 || o.pictures.iter().any(|p| ![4, 9, 16].contains(p)) {
        bail!("--seconds must be > 0 and --pictures one of 4, 9, 16\n{USAGE}");
    }
    Ok(o)
}

fn on_off(v: &str) -> Result<bool> {
    match v {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => bail!("expected on or off, got {v}"),
    }
}

// ---------------------------------------------------------------------------------------
// Clocks and CPU accounting (the bench is a shell: it may read clocks).

/// CPU time of the calling thread in seconds (`/proc/thread-self/schedstat`, ns resolution).
fn thread_cpu() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0.0, |ns| ns as f64 / 1e9)
}

/// CPU time of waited-for children (`cutime + cstime` of this process), in seconds.
fn children_cpu() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("bad /proc/self/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) … utime(11) stime(12) cutime(13) cstime(14).
    let t = |i: usize| -> Result<f64> {
        Ok(f.get(i)
            .ok_or_else(|| anyhow!("short /proc/self/stat"))?
            .parse::<f64>()?)
    };
    Ok((t(13)? + t(14)?) / clk_tck())
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// (pictures, scene, our cores, ffmpeg cores, our PSNR, ffmpeg PSNR)
type RunResult = (usize, Scene, f64, Option<f64>, f64, Option<f64>);

#[allow(clippy::disallowed_methods)] // the bench shell reads the clock
fn wall_now() -> Instant {
    Instant::now()
}

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn round(v: f64, digits: i32) -> f64 {
    let k = 10f64.powi(digits);
    (v * k).round() / k
}

// ---------------------------------------------------------------------------------------
// Synthetic scenes.

/// Cheap deterministic hash for textures.
fn hash(x: u32, y: u32, s: u32) -> u32 {
    let mut h = x
        .wrapping_mul(0x9E37_79B1)
        .wrapping_add(y.wrapping_mul(0x85EB_CA77))
        .wrapping_add(s.wrapping_mul(0xC2B2_AE3D));
    h ^= h >> 15;
    h = h.wrapping_mul(0x2C1B_3C6D);
    h ^= h >> 12;
    h
}

/// One picture of participant `who` at frame `t`.
fn scene_frame(scene: Scene, who: u32, w: usize, h: usize, t: usize) -> I420Frame {
    match scene {
        Scene::Talking => talking_frame(who, w, h, t),
        Scene::FullMotion => motion_frame(who, w, h, t),
    }
}

fn talking_frame(who: u32, w: usize, h: usize, t: usize) -> I420Frame {
    let mut f = I420Frame::filled(w, h, [16, 128, 128]).expect("even size");
    let secs = t as f64 / f64::from(FPS);
    let (wf, hf) = (w as f64, h as f64);
    // Room: wall with a soft vertical gradient and a faint texture, a darker table band,
    // a picture frame on the wall; hue differs per venue.
    let wall = 120.0 + f64::from(who % 5) * 12.0;
    let table_y = hf * 0.78;
    // The person: head sways on a slow sine, bobs a little; mouth opens at ~4 Hz.
    let sway = (secs * std::f64::consts::TAU / (2.7 + f64::from(who % 4) * 0.4)).sin();
    let cx = wf * (0.5 + 0.04 * f64::from(who % 3) - 0.04) + sway * wf * 0.035;
    let cy = hf * 0.40 + (secs * 2.3).sin() * hf * 0.008;
    let (rx, ry) = (wf * 0.085, hf * 0.17);
    let mouth = 0.25 + 0.75 * ((secs * 25.0 + f64::from(who)).sin() * 0.5 + 0.5);
    let blink = (t + who as usize * 17) % 110 < 4;
    for y in 0..h {
        for x in 0..w {
            let (xf, yf) = (x as f64, y as f64);
            let mut v = if yf > table_y {
                70.0 + (xf / wf) * 20.0
            } else {
                wall - yf / hf * 30.0 + f64::from(hash(x as u32 / 4, y as u32 / 4, who) % 6)
            };
            // Picture frame on the wall (static detail).
            let (px, py) = (wf * 0.12, hf * 0.12);
            if xf > px && xf < px + wf * 0.16 && yf > py && yf < py + hf * 0.2 {
                v = if xf < px + 4.0
                    || xf > px + wf * 0.16 - 4.0
                    || yf < py + 4.0
                    || yf > py + hf * 0.2 - 4.0
                {
                    50.0
                } else {
                    170.0 - (yf - py) * 0.6
                };
            }
            // Shoulders and body: a wide rounded block under the head.
            let body_top = cy + ry * 1.05;
            let bx = (xf - cx) / (wf * 0.2);
            if yf > body_top
                && yf < table_y
                && bx.abs() < 1.0 - ((table_y - yf) / hf * 0.3).max(0.0)
            {
                v = 60.0
                    + 15.0 * (1.0 - bx.abs())
                    + f64::from(hash(x as u32 / 2, y as u32 / 3, 7) % 4);
            }
            // Head: shaded ellipse with eyes and a mouth.
            let (dx, dy) = ((xf - cx) / rx, (yf - cy) / ry);
            let d = dx * dx + dy * dy;
            if d < 1.0 {
                v = 185.0 - 40.0 * d - dx * 15.0;
                let eye_y = -0.25;
                for ex in [-0.38, 0.38] {
                    let (ddx, ddy) = (
                        (dx - ex) / 0.16,
                        (dy - eye_y) / if blink { 0.02 } else { 0.08 },
                    );
                    if ddx * ddx + ddy * ddy < 1.0 {
                        v = 40.0;
                    }
                }
                let (mdx, mdy) = (dx / 0.3, (dy - 0.45) / (0.11 * mouth));
                if mdx * mdx + mdy * mdy < 1.0 {
                    v = 55.0;
                }
                // Skin texture that changes with the picture (a camera is never perfect).
                v += f64::from(hash(x as u32, y as u32, t as u32) % 5) - 2.0;
            }
            f.y[y * w + x] = v.clamp(16.0, 235.0) as u8;
        }
    }
    let (cw, ch) = (w / 2, h / 2);
    for y in 0..ch {
        for x in 0..cw {
            let (xf, yf) = ((2 * x) as f64, (2 * y) as f64);
            let (dx, dy) = ((xf - cx) / rx, (yf - cy) / ry);
            let (u, v) = if dx * dx + dy * dy < 1.0 {
                (110.0, 150.0)
            } else if yf > table_y {
                (120.0, 140.0)
            } else if yf > cy + ry * 1.05 && ((xf - cx) / (wf * 0.2)).abs() < 1.0 {
                (140.0, 120.0)
            } else {
                (
                    118.0 + f64::from(who % 4) * 6.0,
                    126.0 + f64::from(who % 3) * 5.0,
                )
            };
            f.u[y * cw + x] = u as u8;
            f.v[y * cw + x] = v as u8;
        }
    }
    f
}

fn motion_frame(who: u32, w: usize, h: usize, t: usize) -> I420Frame {
    let mut f = I420Frame::filled(w, h, [16, 128, 128]).expect("even size");
    let (ox, oy) = (t * (3 + who as usize % 3), t * (2 + who as usize % 2));
    for y in 0..h {
        for x in 0..w {
            let (sx, sy) = (x + ox, y + oy);
            let checker = ((sx / 24 + sy / 24) % 2) as u32 * 50;
            let grad = (sx % 256) as u32 / 4;
            let tex = hash(sx as u32 / 3, sy as u32 / 3, who) % 24;
            f.y[y * w + x] = (40 + checker + grad + tex).min(235) as u8;
        }
    }
    // Three bright blocks moving on their own paths.
    for k in 0..3usize {
        let bw = w / 8;
        let bh = h / 6;
        let bx = (t * (5 + 2 * k) + k * w / 3) % (w - bw);
        let by = (t * (3 + k) + k * h / 4) % (h - bh);
        for y in by..by + bh {
            for x in bx..bx + bw {
                f.y[y * w + x] = 200 + ((x + y + t) % 30) as u8;
            }
        }
    }
    let (cw, ch) = (w / 2, h / 2);
    for y in 0..ch {
        for x in 0..cw {
            f.u[y * cw + x] = (80 + ((x + ox / 2) % 96)) as u8;
            f.v[y * cw + x] = (170 - ((y + oy / 2) % 80)) as u8;
        }
    }
    f
}

/// A sender's bitrate for a layer of this size (≈ 2.6 bit/pixel/s: 600 kbit/s at 360p).
fn sender_bitrate(w: usize, h: usize) -> u32 {
    ((w * h) as f64 * 2.6) as u32
}

/// Encoded access units of one participant, cached on disk as an Annex-B file.
struct Input {
    path: PathBuf,
    access_units: Vec<Vec<u8>>,
}

fn cache_dir() -> PathBuf {
    std::env::temp_dir().join("hbench-mcu")
}

fn make_input(scene: Scene, who: u32, w: usize, h: usize, frames: usize) -> Result<Input> {
    let dir = cache_dir();
    std::fs::create_dir_all(&dir)?;
    let stem = format!("v{SCENE_VERSION}-{}-{who}-{w}x{h}-{frames}", scene.name());
    let path = dir.join(format!("{stem}.264"));
    let index = dir.join(format!("{stem}.idx"));
    if let (Ok(data), Ok(idx)) = (std::fs::read(&path), std::fs::read_to_string(&index)) {
        let lens: Vec<usize> = idx.lines().filter_map(|l| l.parse().ok()).collect();
        if lens.len() == frames && lens.iter().sum::<usize>() == data.len() {
            let mut at = 0;
            let access_units = lens
                .iter()
                .map(|n| {
                    let au = data[at..at + n].to_vec();
                    at += n;
                    au
                })
                .collect();
            return Ok(Input { path, access_units });
        }
    }
    let mut enc = H264Encoder::new(H264EncoderConfig {
        bitrate_bps: sender_bitrate(w, h),
        fps: FPS as f32,
        allow_frame_skip: false,
        ..H264EncoderConfig::default()
    })?;
    let mut access_units = Vec::with_capacity(frames);
    for t in 0..frames {
        let pic = enc
            .encode(&scene_frame(scene, who, w, h, t))?
            .ok_or_else(|| anyhow!("sender encoder skipped a frame"))?;
        access_units.push(pic.data);
    }
    let mut out = BufWriter::new(File::create(&path)?);
    for au in &access_units {
        out.write_all(au)?;
    }
    out.flush()?;
    let idx: String = access_units
        .iter()
        .map(|a| format!("{}\n", a.len()))
        .collect();
    std::fs::write(&index, idx)?;
    Ok(Input { path, access_units })
}

// ---------------------------------------------------------------------------------------
// Our mix.

const NAMES: [&str; 16] = [
    "主会场",
    "城关镇",
    "红旗村",
    "东风街道",
    "新华乡",
    "河西镇",
    "青山村",
    "南湖街道",
    "北关镇",
    "李家庄",
    "西城区",
    "长安镇",
    "白云乡",
    "石桥村",
    "高新区",
    "滨江街道",
];

#[derive(Debug, Default, Clone)]
struct OurRun {
    frames: usize,
    decode_s: f64,
    /// `handle_timeout`: compose (when not timed apart) + encode.
    tick_s: f64,
    /// Compose timed apart (`MeetingMixer::compose` before the tick); 0 without stages.
    compose_s: f64,
    wall_s: f64,
    /// Per output frame: decode of that frame's inputs + compose + encode, CPU ms.
    frame_ms: Vec<f64>,
    frame_wall_ms: Vec<f64>,
    psnr: Vec<f64>,
    bytes: usize,
    skipped: usize,
}

impl OurRun {
    fn cores(&self) -> f64 {
        (self.decode_s + self.compose_s + self.tick_s) / (self.frames as f64 / f64::from(FPS))
    }
}

fn layout_for(pictures: usize) -> String {
    pictures.to_string()
}

/// Runs the real mixer over the inputs with one terminal per entry of `layouts` (each a
/// distinct output). PSNR is measured on the first output only, outside the timed spans.
/// With `opts.stages` the first output is composed by `MeetingMixer::compose` before the
/// tick, so the tick's CPU is the encode (plus a no-op re-check of the tiles).
fn run_ours(inputs: &[Input], layouts: &[&str], opts: &Opts, psnr: bool) -> Result<OurRun> {
    let (bitrate, labels) = (opts.bitrate_bps, opts.labels);
    #[allow(clippy::disallowed_methods)] // virtual time origin; only offsets matter
    let t0 = Instant::now();
    let font = if labels {
        Some(TextRenderer::from_file(DEFAULT_FONT).context("font (fonts-wqy-microhei)")?)
    } else {
        None
    };
    let cfg = EngineConfig {
        decoder: opts.decoder,
        encoder: opts.encoder.backend,
        ..EngineConfig::default()
    };
    let mut m = MeetingMixer::new(t0, cfg, LayoutSet::default(), font)?;
    m.set_encoder_template(opts.encoder);
    for (i, _) in inputs.iter().enumerate() {
        m.add_participant(i as u64 + 1, NAMES[i % NAMES.len()], true);
    }
    for (i, layout) in layouts.iter().enumerate() {
        m.set_terminal(
            i as u64 + 1,
            &TerminalSettings {
                layout: (*layout).to_string(),
                width: OUT_W,
                height: OUT_H,
                fps: FPS,
                bitrate_bps: bitrate,
                self_view: true,
            },
        )?;
    }
    let key: OutputKey = m.terminal_key(1).context("terminal key")?.clone();
    let frames = inputs
        .iter()
        .map(|i| i.access_units.len())
        .min()
        .unwrap_or(0);
    let period = Duration::from_secs(1) / FPS;
    let mut run = OurRun {
        frames,
        ..OurRun::default()
    };
    // libavcodec when installed: it decodes every profile x264 may code.
    let mut rx = H264Decoder::with_backend(DecoderBackend::Auto)?;
    let mut shown: Option<I420Frame> = None;
    let wall0 = wall_now();
    for k in 0..frames {
        let now = t0 + period * k as u32;
        let w0 = wall_now();
        let c0 = thread_cpu();
        for (i, input) in inputs.iter().enumerate() {
            m.push_access_unit(now, i as u64 + 1, &input.access_units[k]);
        }
        let c1 = thread_cpu();
        if opts.stages {
            m.compose(now, &key);
        }
        let c15 = thread_cpu();
        m.handle_timeout(now)?;
        let c2 = thread_cpu();
        let w1 = wall_now();
        run.decode_s += c1 - c0;
        run.compose_s += c15 - c1;
        run.tick_s += c2 - c15;
        run.frame_ms.push((c2 - c0) * 1e3);
        run.frame_wall_ms.push((w1 - w0).as_secs_f64() * 1e3);
        let mut got = false;
        while let Some(o) = m.poll_output() {
            let Output::Video {
                key: k2, picture, ..
            } = o
            else {
                continue;
            };
            if k2 != key {
                continue;
            }
            got = true;
            run.bytes += picture.data.len();
            if psnr && let Some(pic) = rx.decode(&picture.data)? {
                shown = Some(pic);
            }
        }
        if !got {
            run.skipped += 1;
        }
        if psnr {
            let canvas = m.canvas(&key).context("canvas")?;
            if let Some(s) = &shown {
                run.psnr.push(s.psnr_y(canvas)?.min(99.0));
            }
        }
    }
    run.wall_s = wall0.elapsed().as_secs_f64();
    let c = m.counters();
    if c.decode_errors > 0
        || c.encode_errors > 0
        || c.lost_video_tiles > layouts.len() as u64 * inputs.len() as u64
    {
        bail!("mix had trouble: {c:?}");
    }
    Ok(run)
}

// ---------------------------------------------------------------------------------------
// ffmpeg's mix.

struct FfRun {
    cpu_s: f64,
    /// CPU of the same decode + `xstack` graph with no encoder (output discarded).
    decode_compose_s: Option<f64>,
    psnr: Vec<f64>,
    bytes: usize,
}

/// `-filter_complex` for the grid, tile positions taken from our layout so both canvases
/// have the same geometry.
fn xstack_graph(pictures: usize) -> Result<String> {
    let layouts = LayoutSet::default();
    let l = layouts.get(&layout_for(pictures))?;
    let pos: Vec<String> = l
        .tiles
        .iter()
        .map(|t| {
            let r = t.rect.to_pixels(OUT_W, OUT_H);
            format!("{}_{}", r.x, r.y)
        })
        .collect();
    let ins: String = (0..pictures).map(|i| format!("[{i}:v]")).collect();
    Ok(format!(
        "{ins}xstack=inputs={pictures}:layout={}[v]",
        pos.join("|")
    ))
}

fn ffmpeg_inputs(cmd: &mut Command, inputs: &[Input]) {
    for i in inputs {
        cmd.args(["-threads", "1", "-f", "h264", "-framerate", "30", "-i"])
            .arg(&i.path);
    }
}

fn run_ffmpeg(
    inputs: &[Input],
    pictures: usize,
    bitrate: u32,
    split: bool,
    work: &Path,
) -> Result<FfRun> {
    let graph = xstack_graph(pictures)?;
    let decode_compose_s = if split {
        let mut cmd = Command::new("ffmpeg");
        cmd.args(["-hide_banner", "-loglevel", "error", "-nostdin"]);
        ffmpeg_inputs(&mut cmd, inputs);
        cmd.args(["-filter_threads", "1", "-filter_complex_threads", "1"])
            .args([
                "-filter_complex",
                &graph,
                "-map",
                "[v]",
                "-fps_mode",
                "passthrough",
            ])
            // `wrapped_avframe` hands the composed pictures on without copying or coding.
            .args(["-c:v", "wrapped_avframe", "-f", "null", "-"])
            .stdin(Stdio::null());
        let before = children_cpu()?;
        let status = cmd.status().context("running ffmpeg")?;
        let cpu = children_cpu()? - before;
        if !status.success() {
            bail!("ffmpeg decode+xstack run failed: {status}");
        }
        Some(cpu)
    } else {
        None
    };
    let out = work.join(format!("ffmpeg-{pictures}.264"));
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"]);
    ffmpeg_inputs(&mut cmd, inputs);
    cmd.args(["-filter_threads", "1", "-filter_complex_threads", "1"])
        .args([
            "-filter_complex",
            &graph,
            "-map",
            "[v]",
            "-fps_mode",
            "passthrough",
        ])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-tune",
            "zerolatency",
        ])
        .args(["-threads", "1", "-b:v", &bitrate.to_string(), "-f", "h264"])
        .arg(&out)
        .stdin(Stdio::null());
    let before = children_cpu()?;
    let status = cmd
        .status()
        .context("running ffmpeg (Debian package ffmpeg)")?;
    let cpu_s = children_cpu()? - before;
    if !status.success() {
        bail!("ffmpeg mix failed: {status}");
    }
    let bytes = std::fs::metadata(&out)?.len() as usize;

    // Reference: the same graph, uncompressed. Decoded output: ffmpeg decodes its own file.
    let mut reference = Command::new("ffmpeg");
    reference.args(["-hide_banner", "-loglevel", "error", "-nostdin"]);
    ffmpeg_inputs(&mut reference, inputs);
    reference
        .args([
            "-filter_complex",
            &graph,
            "-map",
            "[v]",
            "-fps_mode",
            "passthrough",
        ])
        .args(["-f", "rawvideo", "-pix_fmt", "yuv420p", "pipe:1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut decoded = Command::new("ffmpeg");
    decoded
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-i"])
        .arg(&out)
        .args([
            "-fps_mode",
            "passthrough",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "yuv420p",
            "pipe:1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut rc = reference.spawn()?;
    let mut dc = decoded.spawn()?;
    let (mut rs, mut ds) = (
        rc.stdout.take().context("pipe")?,
        dc.stdout.take().context("pipe")?,
    );
    let frame_len = OUT_W * OUT_H * 3 / 2;
    let (mut a, mut b) = (vec![0u8; frame_len], vec![0u8; frame_len]);
    let mut psnr = Vec::new();
    loop {
        let ra = read_full(&mut rs, &mut a)?;
        let rb = read_full(&mut ds, &mut b)?;
        if !ra || !rb {
            break;
        }
        let sse: u64 = a[..OUT_W * OUT_H]
            .iter()
            .zip(&b[..OUT_W * OUT_H])
            .map(|(x, y)| u64::from(x.abs_diff(*y)).pow(2))
            .sum();
        let mse = sse as f64 / (OUT_W * OUT_H) as f64;
        psnr.push(if sse == 0 {
            99.0
        } else {
            (10.0 * (255.0 * 255.0 / mse).log10()).min(99.0)
        });
    }
    drop(rs);
    drop(ds);
    let _ = rc.wait();
    let _ = dc.wait();
    let _ = std::fs::remove_file(&out);
    Ok(FfRun {
        cpu_s,
        decode_compose_s,
        psnr,
        bytes,
    })
}

/// Fills `buf` from `r`; `false` at a clean end of stream.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<bool> {
    let mut at = 0;
    while at < buf.len() {
        let n = r.read(&mut buf[at..])?;
        if n == 0 {
            return Ok(false);
        }
        at += n;
    }
    Ok(true)
}

/// Mean PSNR of the first second and of the rest: OpenH264's rate control starts at a
/// coarse QP and takes about a second to settle, x264's does not, so the whole-run mean
/// alone would mix a start-up effect into the steady-state comparison.
fn psnr_split(v: &[f64]) -> (f64, f64) {
    let n = (FPS as usize).min(v.len());
    (mean(&v[..n]), mean(&v[n..]))
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

// ---------------------------------------------------------------------------------------

pub fn main(args: &[String]) -> Result<()> {
    let opts = parse_opts(args)?;
    let frames = (opts.seconds * u64::from(FPS)) as usize;
    let secs = frames as f64 / f64::from(FPS);
    let load_start = load_avg();
    eprintln!(
        "bench mcu: load average at start {load_start}, {frames} frames per run, encoder {:?}",
        opts.encoder
    );
    let layouts = LayoutSet::default();
    let mut summary = Vec::new();
    let mut profile = Vec::new();
    let mut results: Vec<RunResult> = Vec::new();
    for &pictures in &opts.pictures {
        let tile = layouts.get(&layout_for(pictures))?.tiles[0]
            .rect
            .to_pixels(OUT_W, OUT_H);
        for &scene in &opts.scenes {
            let g0 = wall_now();
            let inputs: Vec<Input> = (0..pictures)
                .map(|i| make_input(scene, i as u32 + 1, tile.w, tile.h, frames))
                .collect::<Result<_>>()?;
            eprintln!(
                "  inputs {pictures} x {}x{} {} ready in {:.1} s",
                tile.w,
                tile.h,
                scene.name(),
                g0.elapsed().as_secs_f64()
            );
            let layout = layout_for(pictures);
            let ours = run_ours(&inputs, &[&layout], &opts, true)?;
            let ff = if opts.ffmpeg {
                Some(run_ffmpeg(
                    &inputs,
                    pictures,
                    opts.ffmpeg_bitrate_bps,
                    opts.stages,
                    &cache_dir(),
                )?)
            } else {
                None
            };
            let mut ms = ours.frame_ms.clone();
            ms.sort_by(f64::total_cmp);
            let mut wall = ours.frame_wall_ms.clone();
            wall.sort_by(f64::total_cmp);
            let cores = ours.cores();
            let ff_cores = ff.as_ref().map(|f| f.cpu_s / secs);
            let psnr = mean(&ours.psnr);
            let ff_psnr = ff.as_ref().map(|f| mean(&f.psnr));
            let (psnr_first, psnr_rest) = psnr_split(&ours.psnr);
            let ff_split = ff.as_ref().map(|f| psnr_split(&f.psnr));
            let kbps = ours.bytes as f64 * 8.0 / secs / 1e3;
            let ff_kbps = ff.as_ref().map(|f| f.bytes as f64 * 8.0 / secs / 1e3);
            let line = json!({
                "bench": "mcu",
                "pictures": pictures,
                "scene": scene.name(),
                "output": "1080p30",
                "encoder": encoder_name(opts.encoder.backend),
                "cores_per_meeting": round(cores, 3),
                "ffmpeg_cores_per_meeting": ff_cores.map(|c| round(c, 3)),
                "ffmpeg_ratio": ff_cores.map(|c| round(c / cores, 2)),
                "psnr_db": round(psnr, 2),
                "ffmpeg_psnr_db": ff_psnr.map(|p| round(p, 2)),
                "p99_compose_ms": round(percentile(&ms, 0.99), 2),
                "psnr_first_s_db": round(psnr_first, 2),
                "psnr_rest_db": round(psnr_rest, 2),
                "ffmpeg_psnr_first_s_db": ff_split.map(|p| round(p.0, 2)),
                "ffmpeg_psnr_rest_db": ff_split.map(|p| round(p.1, 2)),
                "kbps": round(kbps, 0),
                "ffmpeg_kbps": ff_kbps.map(|k| round(k, 0)),
            });
            println!("{line}");
            results.push((pictures, scene, cores, ff_cores, psnr, ff_psnr));
            if opts.stages {
                let total = ours.decode_s + ours.compose_s + ours.tick_s;
                let ff_dc = ff.as_ref().and_then(|f| f.decode_compose_s);
                println!(
                    "{}",
                    json!({
                        "bench": "mcu-stages",
                        "pictures": pictures,
                        "scene": scene.name(),
                        "decode_cores": round(ours.decode_s / secs, 3),
                        "compose_cores": round(ours.compose_s / secs, 3),
                        "encode_cores": round(ours.tick_s / secs, 3),
                        "decode_share": round(ours.decode_s / total, 3),
                        "compose_share": round(ours.compose_s / total, 3),
                        "encode_share": round(ours.tick_s / total, 3),
                        "ffmpeg_decode_xstack_cores": ff_dc.map(|c| round(c / secs, 3)),
                        "ffmpeg_encode_cores": ff.as_ref().zip(ff_dc).map(|(f, c)| round((f.cpu_s - c) / secs, 3)),
                    })
                );
            }
            summary.push(format!(
                "{pictures:>2} x {}x{} {:<11} ours {:.3} core (decode {:.3}, compose+encode {:.3}), \
                 {:.1} dB (1st s {:.1}, rest {:.1}), {:.0} kbit/s, frame CPU p50 {:.2} / p99 {:.2} ms (wall p50 {:.2} / p99 {:.2}), \
                 {} skipped | ffmpeg {} core, {} dB (1st s {}, rest {}), {} kbit/s, ratio {}",
                tile.w,
                tile.h,
                scene.name(),
                cores,
                ours.decode_s / secs,
                (ours.compose_s + ours.tick_s) / secs,
                psnr,
                psnr_first,
                psnr_rest,
                kbps,
                percentile(&ms, 0.5),
                percentile(&ms, 0.99),
                percentile(&wall, 0.5),
                percentile(&wall, 0.99),
                ours.skipped,
                ff_cores.map_or("-".into(), |c| format!("{c:.3}")),
                ff_psnr.map_or("-".into(), |p| format!("{p:.1}")),
                ff_split.map_or("-".into(), |p| format!("{:.1}", p.0)),
                ff_split.map_or("-".into(), |p| format!("{:.1}", p.1)),
                ff_kbps.map_or("-".into(), |k| format!("{k:.0}")),
                ff_cores.map_or("-".into(), |c| format!("{:.2}", c / cores)),
            ));
            let total = ours.decode_s + ours.compose_s + ours.tick_s;
            let ff_dc = ff.as_ref().and_then(|f| f.decode_compose_s);
            profile.push(format!(
                "{pictures:>2} {:<11} ours: decode {:>4.1} %  scale+compose {:>4.1} %  encode {:>4.1} %{}{}",
                scene.name(),
                100.0 * ours.decode_s / total,
                100.0 * ours.compose_s / total,
                100.0 * ours.tick_s / total,
                if opts.stages { "" } else { " (compose not timed apart: --no-stages)" },
                ff.as_ref().zip(ff_dc).map_or(String::new(), |(f, dc)| format!(
                    " | ffmpeg: decode+xstack {:.3} core, encode {:.3} core",
                    dc / secs,
                    (f.cpu_s - dc) / secs
                )),
            ));

            if opts.layouts && pictures == 9 && scene == Scene::Talking {
                let distinct = ["9", "1+7", "speaker-center-ring", "1+5"];
                let mut base = None;
                for n in [1usize, 2, 4] {
                    let r = run_ours(&inputs, &distinct[..n], &opts, false)?;
                    let c = r.cores();
                    let b = *base.get_or_insert(c);
                    let per_added = if n > 1 { (c - b) / (n - 1) as f64 } else { 0.0 };
                    println!(
                        "{}",
                        json!({
                            "bench": "mcu-layouts",
                            "pictures": 9,
                            "scene": "talking",
                            "distinct_layouts": n,
                            "layouts": &distinct[..n],
                            "cores_per_meeting": round(c, 3),
                            "cores_per_added_layout": round(per_added, 3),
                        })
                    );
                    summary.push(format!(
                        "   9 talking, {n} distinct 1080p30 layouts ({}): {c:.3} core, +{per_added:.3} core per added layout",
                        distinct[..n].join(", ")
                    ));
                }
            }
        }
    }
    let nine = results
        .iter()
        .find(|(p, s, _, _, _, _)| *p == 9 && *s == Scene::Talking);
    println!(
        "{}",
        json!({
            "bench": "mcu",
            "summary": true,
            "goal_cores_9_talking": 0.35,
            "cores_9_talking": nine.map(|r| round(r.2, 3)),
            "ffmpeg_ratio_9_talking": nine.and_then(|r| r.3.map(|c| round(c / r.2, 2))),
            "psnr_gap_db_9_talking": nine.and_then(|r| r.5.map(|p| round(r.4 - p, 2))),
            "bitrate_bps": opts.bitrate_bps,
            "ffmpeg_bitrate_bps": opts.ffmpeg_bitrate_bps,
            "encoder": format!("{:?}", opts.encoder),
            "decoder": format!("{:?}", resolved_decoder(opts.decoder)),
            "load_average_start": load_start,
            "load_average_end": load_avg(),
        })
    );
    eprintln!();
    eprintln!(
        "== mcu summary (1080p30 out, {} s of media per run, ours {} kbit/s decoding with {:?} and encoding with {}, ffmpeg {} kbit/s, one thread each) ==",
        opts.seconds,
        opts.bitrate_bps / 1000,
        resolved_decoder(opts.decoder),
        encoder_name(opts.encoder.backend),
        opts.ffmpeg_bitrate_bps / 1000
    );
    for s in &summary {
        eprintln!("{s}");
    }
    eprintln!("where our CPU goes (thread CPU time split):");
    for p in &profile {
        eprintln!("  {p}");
    }
    eprintln!("load average at start {load_start}, at end {}", load_avg());
    Ok(())
}
