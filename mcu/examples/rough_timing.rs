//! Rough per-frame figures of the real code paths (compose of a 9-picture 1080p canvas
//! from 640×360 sources, 1080p H.264 encode of that canvas). Not the `bench -- mcu`
//! benchmark: one run, no baseline. `cargo run --release -p mcu --example rough_timing`.

use std::time::{Duration, Instant};

use mcu::engine::{EngineConfig, MeetingMixer, Output, TerminalSettings};
use mcu::layout::LayoutSet;
use mcu::text::{DEFAULT_FONT, TextRenderer};
use media::codec::openh264::I420Frame;

// A tool, not a core: it measures wall time.
#[allow(clippy::disallowed_methods)]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    let font = TextRenderer::from_file(DEFAULT_FONT)?;
    let mut m = MeetingMixer::new(
        t0,
        EngineConfig::default(),
        LayoutSet::default(),
        Some(font),
    )?;
    for id in 1..=9u64 {
        m.add_participant(id, &format!("第{id}会场"), true);
    }
    let settings = TerminalSettings {
        layout: "9".into(),
        ..TerminalSettings::default()
    };
    m.set_terminal(1, &settings)?;
    let frames = 90u32;
    let (mut compose, mut total) = (Duration::ZERO, Duration::ZERO);
    let mut bytes = 0usize;
    for f in 0..frames {
        let now = t0 + Duration::from_millis(u64::from(f) * 33);
        for id in 1..=9u64 {
            // A moving bright block on a textured background per source.
            let mut src = I420Frame::filled(640, 360, [60 + id as u8 * 10, 128, 128])?;
            for y in 0..360 {
                for x in 0..640 {
                    src.y[y * 640 + x] =
                        src.y[y * 640 + x].wrapping_add(((x / 8 + y / 8) % 2) as u8 * 40);
                }
            }
            let (bx, by) = (
                (f as usize * 5 + id as usize * 30) % 560,
                (f as usize * 3) % 280,
            );
            for y in by..by + 80 {
                src.y[y * 640 + bx..y * 640 + bx + 80].fill(230);
            }
            m.push_frame(now, id, src);
        }
        let key = m.terminal_key(1).ok_or("no key")?.clone();
        let a = Instant::now();
        m.handle_timeout(now)?;
        total += a.elapsed();
        let b = Instant::now();
        m.compose(now, &key);
        compose += b.elapsed();
        while let Some(o) = m.poll_output() {
            if let Output::Video { picture, .. } = o {
                bytes += picture.data.len();
            }
        }
    }
    let per = |d: Duration| d.as_secs_f64() * 1000.0 / f64::from(frames);
    println!(
        "9 x 640x360 -> 1080p: compose {:.2} ms/frame, compose+encode {:.2} ms/frame ({:.1} fps one thread), {:.0} kbit/s",
        per(compose),
        per(total),
        1000.0 / per(total),
        bytes as f64 * 8.0 / (f64::from(frames) / 30.0) / 1000.0
    );
    Ok(())
}
