//! The MCU as a participant of the SFU, end to end through a real `huitong serve`:
//! four simulated terminals each publish a numbered test pattern (a colour and a big
//! seven-segment digit, real H.264 at 320×180), the host asks for a 4-picture MCU, and a
//! fifth terminal receives the mix as an ordinary track, decodes it and checks that each
//! quadrant shows the right source (colour and number) and that the picture moves.
//!
//! ```text
//! cargo test -p server --test mcu_mix -- --nocapture
//! ```

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Ws, connect, expect_where, send, start_server};

use endpoints_sim::huitong::{HuitongTerminal, JoinParams};
use endpoints_sim::{MediaConfig, PeerConfig, Stats, VideoSource};
use media::codec::openh264::{H264Decoder, H264Encoder, H264EncoderConfig, I420Frame};
use serde_json::{Value, json};

const MEETING: &str = "700700700";
const MIX_W: usize = 640;
const MIX_H: usize = 360;
const SRC_W: usize = 320;
const SRC_H: usize = 180;

// ------------------------------------------------------------------ the test pattern

/// Background colours (Y, U, V) of sources 1..=4: red, green, blue, yellow.
const COLOURS: [[u8; 3]; 4] = [[81, 90, 240], [145, 54, 34], [41, 240, 110], [170, 30, 150]];
const WHITE: [u8; 3] = [235, 128, 128];
/// Seven-segment digits: segments a b c d e f g.
const DIGITS: [[bool; 7]; 10] = [
    [true, true, true, true, true, true, false],
    [false, true, true, false, false, false, false],
    [true, true, false, true, true, false, true],
    [true, true, true, true, false, false, true],
    [false, true, true, false, false, true, true],
    [true, false, true, true, false, true, true],
    [true, false, true, true, true, true, true],
    [true, true, true, false, false, false, false],
    [true, true, true, true, true, true, true],
    [true, true, true, true, false, true, true],
];
/// Segment rectangles (x, y, w, h) in the 320×180 source.
const SEGMENTS: [(usize, usize, usize, usize); 7] = [
    (40, 20, 72, 12),  // a
    (100, 20, 12, 60), // b
    (100, 80, 12, 60), // c
    (40, 128, 72, 12), // d
    (40, 80, 12, 60),  // e
    (40, 20, 12, 60),  // f
    (40, 74, 72, 12),  // g
];
/// Where each segment is sampled (its middle, away from the others).
const SEGMENT_PROBES: [(usize, usize); 7] = [
    (76, 26),
    (106, 50),
    (106, 110),
    (76, 134),
    (46, 110),
    (46, 50),
    (76, 80),
];
/// A plain-colour area of the source.
const COLOUR_PROBE: (usize, usize, usize, usize) = (200, 30, 90, 60);
/// The strip where a white square moves: x = 150 + (n * 6) % 140.
const MOVER_STRIP: (usize, usize, usize, usize) = (150, 110, 164, 24);

fn fill(f: &mut I420Frame, (x0, y0, w, h): (usize, usize, usize, usize), c: [u8; 3]) {
    let fw = f.width();
    for y in y0..y0 + h {
        for x in x0..x0 + w {
            f.y[y * fw + x] = c[0];
            f.u[(y / 2) * (fw / 2) + x / 2] = c[1];
            f.v[(y / 2) * (fw / 2) + x / 2] = c[2];
        }
    }
}

fn pattern(source: usize, n: u64) -> I420Frame {
    let mut f = I420Frame::filled(SRC_W, SRC_H, COLOURS[source - 1]).expect("frame");
    for (on, seg) in DIGITS[source].iter().zip(SEGMENTS) {
        if *on {
            fill(&mut f, seg, WHITE);
        }
    }
    let x = MOVER_STRIP.0 + (n as usize * 6) % 140;
    fill(&mut f, (x & !1, MOVER_STRIP.1, 24, 24), WHITE);
    f
}

fn video_source(source: usize) -> VideoSource {
    let enc = Mutex::new(
        H264Encoder::new(H264EncoderConfig {
            bitrate_bps: 600_000,
            fps: 15.0,
            allow_frame_skip: false,
            ..Default::default()
        })
        .expect("encoder"),
    );
    VideoSource(Arc::new(move |n, key, _div| {
        let Ok(mut enc) = enc.lock() else {
            return vec![];
        };
        if key {
            enc.force_keyframe();
        }
        match enc.encode(&pattern(source, n)) {
            Ok(Some(p)) => p.data,
            _ => vec![],
        }
    }))
}

// ------------------------------------------------------------------ reading the mix

fn mean(f: &I420Frame, x0: usize, y0: usize, w: usize, h: usize) -> [f64; 3] {
    let fw = f.width();
    let mut s = [0.0; 3];
    for y in y0..y0 + h {
        for x in x0..x0 + w {
            s[0] += f64::from(f.y[y * fw + x]);
            s[1] += f64::from(f.u[(y / 2) * (fw / 2) + x / 2]);
            s[2] += f64::from(f.v[(y / 2) * (fw / 2) + x / 2]);
        }
    }
    s.map(|v| v / (w * h) as f64)
}

/// One quadrant of the mix, read back: colour, digit and where the mover is.
#[derive(Debug, Clone)]
struct Quadrant {
    colour: [f64; 3],
    digit: Option<usize>,
    mover_x: Option<f64>,
}

fn read_quadrant(f: &I420Frame, tile: mcu::layout::PixelRect) -> Quadrant {
    // Source pixel → mix pixel (the 16:9 source fills its 16:9 tile).
    let sx = |x: usize| tile.x + x * tile.w / SRC_W;
    let sy = |y: usize| tile.y + y * tile.h / SRC_H;
    let (cx, cy, cw, ch) = COLOUR_PROBE;
    let colour = mean(f, sx(cx), sy(cy), cw * tile.w / SRC_W, ch * tile.h / SRC_H);
    let lit: Vec<bool> = SEGMENT_PROBES
        .iter()
        .map(|&(x, y)| {
            let m = mean(f, sx(x) - 2, sy(y) - 2, 4, 4);
            m[0] > 190.0 && (m[1] - 128.0).abs() + (m[2] - 128.0).abs() < 40.0
        })
        .collect();
    let digit = DIGITS.iter().position(|d| d.as_slice() == lit.as_slice());
    let (mx, my, mw, mh) = MOVER_STRIP;
    let (mut sum, mut count) = (0.0, 0.0);
    for y in sy(my + 4)..sy(my + mh - 4) {
        for x in sx(mx)..sx(mx + mw).min(tile.x + tile.w) {
            if f.y[y * f.width() + x] > 200 {
                sum += x as f64;
                count += 1.0;
            }
        }
    }
    Quadrant {
        colour,
        digit,
        mover_x: (count > 20.0).then(|| sum / count),
    }
}

fn check_mix(f: &I420Frame, tiles: &[mcu::layout::PixelRect]) -> Result<Vec<Quadrant>, String> {
    let mut out = vec![];
    for (i, t) in tiles.iter().enumerate() {
        let q = read_quadrant(f, *t);
        let want = COLOURS[i];
        if (0..3).any(|k| (q.colour[k] - f64::from(want[k])).abs() > 14.0) {
            return Err(format!(
                "tile {i}: colour {:?}, want source {}'s {want:?}",
                q.colour,
                i + 1
            ));
        }
        if q.digit != Some(i + 1) {
            return Err(format!("tile {i}: digit {:?}, want {}", q.digit, i + 1));
        }
        if q.mover_x.is_none() {
            return Err(format!("tile {i}: no moving square"));
        }
        out.push(q);
    }
    Ok(out)
}

// ------------------------------------------------------------------ signalling

/// Next message satisfying `pred` within 20 s; a server `error` fails the test.
async fn expect(ws: &mut Ws, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let v = expect_where(ws, what, Duration::from_secs(20), |v| {
        v["type"] == "error" || pred(v)
    })
    .await;
    assert_ne!(
        v["type"], "error",
        "server error while waiting for {what}: {v}"
    );
    v
}

/// `huitong serve` whose MCU mixes at MIX_W × MIX_H, 10 fps.
fn start_mcu_server(bitrate_bps: &str, encoder: &str) -> common::Server {
    let (w, h) = (MIX_W.to_string(), MIX_H.to_string());
    start_server(&[
        ("HUITONG_MCU__WIDTH", w.as_str()),
        ("HUITONG_MCU__HEIGHT", h.as_str()),
        ("HUITONG_MCU__FPS", "10"),
        ("HUITONG_MCU__BITRATE_BPS", bitrate_bps),
        ("HUITONG_MCU__ENCODER", encoder),
    ])
}

/// The host opens the meeting and asks for a 4-picture MCU; returns its socket and the
/// MCU's participant id.
async fn host_with_mcu(server: &common::Server) -> (Ws, String) {
    let mut host = connect(server.http).await;
    send(
        &mut host,
        json!({"type": "join", "v": 1, "meeting": MEETING, "name": "主持人", "create": true}),
    )
    .await;
    expect(&mut host, "joined", |v| v["type"] == "joined").await;
    send(
        &mut host,
        json!({"type": "host", "id": 1, "action": "mcu", "mcu": {"layout": "4"}}),
    )
    .await;
    expect(&mut host, "ok", |v| v["type"] == "ok" && v["re"] == 1).await;
    let mcu = expect(&mut host, "the MCU joining", |v| {
        v["type"] == "participant_joined"
    })
    .await;
    assert_eq!(mcu["participant"]["kind"], "mcu", "{mcu}");
    assert_eq!(mcu["participant"]["name"], "会议画面");
    assert_eq!(
        mcu["participant"]["role"], "participant",
        "a service never holds the host role"
    );
    let mcu_id = mcu["participant"]["id"].as_str().expect("id").to_string();
    (host, mcu_id)
}

/// Venues 1..=n publish their numbered patterns.
async fn join_venues(server: &common::Server, epoch: Instant, n: usize) -> Vec<HuitongTerminal> {
    let mut venues = vec![];
    for i in 1..=n {
        let cfg = PeerConfig {
            id: i as u32,
            epoch,
            seed: i as u64,
            media: Some(MediaConfig {
                fps: 15,
                audio: false,
                video_source: Some(video_source(i)),
                ..MediaConfig::default()
            }),
        };
        venues.push(join_as(server, &format!("会场{i}"), cfg, Arc::new(Stats::default())).await);
    }
    venues
}

async fn join_as(
    server: &common::Server,
    name: &str,
    cfg: PeerConfig,
    stats: Arc<Stats>,
) -> HuitongTerminal {
    let params = JoinParams {
        meeting: MEETING.into(),
        passcode: None,
        name: name.into(),
        create: false,
    };
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    HuitongTerminal::join(server.http, params, lo, cfg, stats)
        .await
        .expect("join")
}

/// Stats whose video tap decodes every subscribed H.264 track and hands each picture
/// to `on_picture` with its subscribe-pc mid.
fn decoding_stats(on_picture: impl Fn(&str, I420Frame) + Send + Sync + 'static) -> Arc<Stats> {
    let decoders: Mutex<HashMap<String, H264Decoder>> = Mutex::default();
    let stats = Arc::new(Stats::default());
    stats.set_video_tap(Arc::new(move |mid, data| {
        let Ok(mut decs) = decoders.lock() else {
            return;
        };
        if !decs.contains_key(mid) {
            let Ok(dec) = H264Decoder::new() else { return };
            decs.insert(mid.to_string(), dec);
        }
        let Some(dec) = decs.get_mut(mid) else { return };
        if let Ok(Some(f)) = dec.decode(data) {
            on_picture(mid, f);
        }
    }));
    stats
}

// The test measures a real server in wall-clock time.
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_terminals_mixed_into_quadrants_by_the_mcu_participant() {
    quadrants_mixed_by("openh264").await;
}

/// The same meeting with `[mcu] encoder = "x264"`: the server starts, and the mix it
/// publishes (one temporal layer, no frame marking) reaches the receiver intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_x264_encoded_mix_reaches_the_receiver() {
    if !common::x264_or_skip() {
        return;
    }
    quadrants_mixed_by("x264").await;
}

async fn quadrants_mixed_by(encoder: &str) {
    let server = start_mcu_server("1500000", encoder);
    let epoch = now();
    let (mut host, mcu_id) = host_with_mcu(&server).await;
    let track = expect(&mut host, "the mix track", |v| {
        v["type"] == "track_published"
    })
    .await;
    assert_eq!(track["track"]["participant"], mcu_id.as_str());
    assert_eq!(track["track"]["kind"], "video");
    let venues = join_venues(&server, epoch, 4).await;

    // The receiving terminal decodes every video track it gets and keeps the mix pictures.
    let mixes: Arc<Mutex<Vec<(Instant, I420Frame)>>> = Arc::default();
    let keep = Arc::clone(&mixes);
    let rx_stats = decoding_stats(move |_, f| {
        if (f.width(), f.height()) == (MIX_W, MIX_H) {
            if let Ok(mut m) = keep.lock() {
                m.push((now(), f));
                let excess = m.len().saturating_sub(4);
                m.drain(..excess);
            }
        }
    });
    let receiver_cfg = PeerConfig {
        id: 99,
        epoch,
        seed: 99,
        media: None,
    };
    let receiver = join_as(&server, "主会场", receiver_cfg, rx_stats).await;

    // The host (no camera) leaves: the four venues fill the four tiles in join order.
    send(&mut host, json!({"type": "leave"})).await;

    let layouts = mcu::layout::LayoutSet::default();
    let tiles: Vec<_> = layouts
        .get("4")
        .expect("layout 4")
        .tiles
        .iter()
        .map(|t| t.rect.to_pixels(MIX_W, MIX_H))
        .collect();
    let deadline = now() + Duration::from_secs(60);
    let mut first: Option<(Instant, Vec<Quadrant>)> = None;
    let mut last_err = String::from("no mixed picture received");
    let moved = loop {
        assert!(
            now() < deadline,
            "the mix never showed the four venues moving: {last_err}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let latest = mixes.lock().expect("mixes").last().cloned();
        let Some((at, pic)) = latest else { continue };
        match check_mix(&pic, &tiles) {
            Err(e) => last_err = e,
            Ok(q) => match &first {
                None => first = Some((at, q)),
                Some((t0, q0)) if at > *t0 + Duration::from_millis(500) => {
                    let moved: Vec<bool> = q0
                        .iter()
                        .zip(&q)
                        .map(|(a, b)| {
                            (a.mover_x.unwrap_or(0.0) - b.mover_x.unwrap_or(0.0)).abs() > 4.0
                        })
                        .collect();
                    if moved.iter().all(|m| *m) {
                        break moved;
                    }
                    last_err = format!("pictures do not update: moved {moved:?}");
                }
                Some(_) => {}
            },
        }
    };
    assert_eq!(moved, vec![true; 4]);

    receiver.leave().await;
    for v in venues {
        v.leave().await;
    }
}

/// Frames one receiver decoded, per subscribe-pc mid: (width, height) of each.
type Decoded = Arc<Mutex<HashMap<String, Vec<(usize, usize)>>>>;

/// Pictures of one's own (issue 5 (b) end to end): two participants asking for the same
/// picture get the same MCU track (one encode), a third asking for another gets its
/// own, and each decodes its picture at the size it asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_get_their_own_pictures_and_equal_ones_share_a_track() {
    let server = start_mcu_server("1000000", "openh264");
    let epoch = now();
    let (mut host, mcu_id) = host_with_mcu(&server).await;
    let venues = join_venues(&server, epoch, 2).await;

    // (layout, width, height) each receiver asks for; the first and the third are equal.
    let asks = [("1", 320, 180), ("2", 480, 270), ("1", 320, 180)];
    let mut receivers = vec![];
    for (i, (layout, w, h)) in asks.iter().enumerate() {
        let decoded: Decoded = Arc::default();
        let sizes = Arc::clone(&decoded);
        let stats = decoding_stats(move |mid, f| {
            if let Ok(mut d) = sizes.lock() {
                d.entry(mid.to_string())
                    .or_default()
                    .push((f.width(), f.height()));
            }
        });
        let cfg = PeerConfig {
            id: 90 + i as u32,
            epoch,
            seed: 90 + i as u64,
            media: None,
        };
        let r = join_as(&server, &format!("分会场{i}"), cfg, stats).await;
        r.send_signal(json!({"type": "mcu_view", "view":
            {"layout": layout, "width": w, "height": h, "fps": 10}}));
        receivers.push((r, decoded, (*w, *h)));
    }

    // Each receiver is told its track, and decodes pictures of its size from it.
    let deadline = now() + Duration::from_secs(60);
    let tracks = loop {
        let mut status = vec![];
        let mut tracks = vec![];
        for (r, decoded, size) in &receivers {
            let Some(track) = r.mcu_track() else {
                status.push(format!("{}: no mcu_track yet", r.participant));
                continue;
            };
            let frames = decoded
                .lock()
                .expect("decoded")
                .iter()
                .filter(|(mid, _)| r.sub_track(mid).as_deref() == Some(track.as_str()))
                .map(|(_, v)| v.iter().filter(|s| *s == size).count())
                .sum::<usize>();
            if frames < 5 {
                status.push(format!(
                    "{}: {frames} frames of {size:?} on {track}",
                    r.participant
                ));
            }
            tracks.push(track);
        }
        if status.is_empty() {
            break tracks;
        }
        assert!(now() < deadline, "own pictures not received: {status:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        tracks[0], tracks[2],
        "equal requests share one track (one encode)"
    );
    assert_ne!(
        tracks[0], tracks[1],
        "a different request gets its own track"
    );

    // The host sees exactly the MCU's mix and the two distinct views published.
    let mut views = std::collections::BTreeSet::new();
    let until = now() + Duration::from_secs(2);
    while now() < until {
        let got = tokio::time::timeout(
            until.saturating_duration_since(now()),
            expect_where(&mut host, "MCU tracks", Duration::from_secs(5), |v| {
                v["type"] == "track_published" && v["track"]["participant"] == mcu_id.as_str()
            }),
        )
        .await;
        if let Ok(v) = got {
            views.insert(v["track"]["view"].as_str().unwrap_or("").to_string());
        }
    }
    let own: Vec<_> = views.iter().filter(|v| *v != "mix").collect();
    assert_eq!(
        own.len(),
        2,
        "two distinct pictures besides the mix, so two encodes: {views:?}"
    );

    for (r, _, _) in receivers {
        r.leave().await;
    }
    for v in venues {
        v.leave().await;
    }
}

/// Audio through the MCU (issue 5 (d) end to end): three terminals each send their own
/// Opus-coded tone and ask the MCU for the sound (`mcu_view.audio`); each is offered one
/// MCU audio track, meant for it alone, and hears the other two tones in it and not its
/// own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_terminal_hears_the_others_through_the_mcu_and_not_itself() {
    use media::codec::opus::{FRAME_SAMPLES, OpusDecoder, OpusEncoder};
    use media::tone::{sine, tone_share};

    let server = start_mcu_server("500000", "openh264");
    let epoch = now();
    let (_host, mcu_id) = host_with_mcu(&server).await;
    let tones = [440.0, 700.0, 1100.0];
    type Packets = Arc<Mutex<HashMap<String, Vec<Vec<u8>>>>>;
    let mut terminals = vec![];
    for (i, freq) in tones.iter().copied().enumerate() {
        let enc = Mutex::new(OpusEncoder::new(1, 32_000).expect("opus"));
        let source = endpoints_sim::AudioSource(Arc::new(move |n| {
            let pcm = sine(freq, 48_000, FRAME_SAMPLES, n as usize * FRAME_SAMPLES, 6000.0);
            enc.lock()
                .ok()
                .and_then(|mut e| e.encode(&pcm).ok())
                .unwrap_or_default()
        }));
        let heard: Packets = Arc::default();
        let tap = Arc::clone(&heard);
        let stats = Arc::new(Stats::default());
        stats.set_audio_tap(Arc::new(move |mid, data| {
            if let Ok(mut h) = tap.lock() {
                h.entry(mid.to_string()).or_default().push(data.to_vec());
            }
        }));
        let cfg = PeerConfig {
            id: 60 + i as u32,
            epoch,
            seed: 60 + i as u64,
            media: Some(MediaConfig {
                video: false,
                audio_source: Some(source),
                ..MediaConfig::default()
            }),
        };
        let t = join_as(&server, &format!("会场{i}"), cfg, stats).await;
        t.send_signal(json!({"type": "mcu_view", "view": {"audio": true}}));
        terminals.push((t, heard, freq));
    }

    // The MCU audio tracks each terminal is offered, with what it heard on them.
    let mcu_audio = |t: &HuitongTerminal, heard: &Packets| -> Vec<(String, Value, usize)> {
        let h = heard.lock().expect("heard");
        t.sub_tracks()
            .into_iter()
            .filter(|(_, info)| info["participant"] == mcu_id.as_str() && info["kind"] == "audio")
            .map(|(mid, info)| {
                let n = h.get(&mid).map_or(0, Vec::len);
                (mid, info, n)
            })
            .collect()
    };
    let deadline = now() + Duration::from_secs(60);
    loop {
        let waiting: Vec<String> = terminals
            .iter()
            .filter_map(|(t, heard, _)| {
                let tracks = mcu_audio(t, heard);
                (tracks.len() != 1 || tracks[0].2 < 150)
                    .then(|| format!("{}: {tracks:?}", t.participant))
            })
            .collect();
        if waiting.is_empty() {
            break;
        }
        assert!(now() < deadline, "MCU audio not received: {waiting:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    for (t, heard, own) in &terminals {
        let tracks = mcu_audio(t, heard);
        let (mid, info, _) = &tracks[0];
        assert_eq!(
            info["audience"],
            t.participant.as_str(),
            "only one's own mix is offered: {info}"
        );
        let packets = heard.lock().expect("heard")[mid].clone();
        let mut dec = OpusDecoder::new(1).expect("opus");
        let mut pcm = vec![];
        for p in &packets {
            pcm.extend(dec.decode(Some(p)).expect("decodable mix"));
        }
        // The last second: past the start, where voices join one by one.
        let tail = &pcm[pcm.len() - 48_000..];
        let mine = tone_share(tail, 48_000, *own);
        assert!(mine < 0.02, "{} hears itself: {mine:.3}", t.participant);
        for other in tones.iter().filter(|f| *f != own) {
            let s = tone_share(tail, 48_000, *other);
            assert!(
                s > 0.2,
                "{} misses the {other} Hz voice: {s:.3}",
                t.participant
            );
        }
    }
    for (t, _, _) in terminals {
        t.leave().await;
    }
}
