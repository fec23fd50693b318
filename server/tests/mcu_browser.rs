//! A browser receives the MCU's mix: headless Chromium joins a meeting that has an MCU
//! (`signaling.mcu_auto`), the real web client shows "会议画面" like any participant and
//! decodes its 1920×1080 track (getStats `frameWidth` 1920, `framesDecoded` rising).
//! Then the browser shares its screen and the MCU publishes the content as a second
//! stream (dual stream), which the browser decodes too.
//!
//! ```text
//! cargo test -p server --test mcu_browser -- --nocapture
//! ```
//!
//! Needs Debian `chromium` and `chromium-driver`, like `browser_e2e`
//! (`BROWSER_E2E_CHROMEDRIVER` / `BROWSER_E2E_CHROMIUM` override the paths).

mod common;

use std::time::Duration;

use common::browser::{Browser, LOG_TAIL_LINES, Server, TestResult, check_tools, poll};
use serde_json::{Value, json};
use tokio::time::timeout;

const MEETING: &str = "800900100";
const WHOLE_TEST_TIMEOUT: Duration = Duration::from_secs(300);

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

async fn scenario(server: &Server, b: &Browser) -> TestResult<()> {
    b.submit_join(&format!("http://{}/", server.http), MEETING, true)
        .await?;
    // The MCU joins as a participant named 会议画面 with kind "mcu".
    let mcu = poll(
        Duration::from_secs(30),
        Duration::from_millis(250),
        || async {
            let snap = b.snapshot().await.ok()?;
            snap["participants"]
                .as_array()?
                .iter()
                .find(|p| p["kind"] == "mcu")
                .cloned()
        },
    )
    .await
    .ok_or("the MCU never appeared among the participants")?;
    assert_eq!(mcu["name"], "会议画面");
    let mcu_id = mcu["id"].as_str().ok_or("mcu id")?.to_owned();

    // Its mix is decoded at 1920×1080 and keeps coming.
    let first = poll(
        Duration::from_secs(90),
        Duration::from_millis(250),
        || async {
            let s = b.stats().await.ok()?;
            let v = &s[mcu_id.as_str()]["video"];
            (num(&v["frameWidth"]) == 1920.0
                && num(&v["frameHeight"]) == 1080.0
                && num(&v["framesDecoded"]) > 0.0)
                .then(|| num(&v["framesDecoded"]))
        },
    )
    .await
    .ok_or_else(|| format!("no 1920×1080 frames decoded from the MCU {mcu_id}"))?;
    let rising = poll(
        Duration::from_secs(20),
        Duration::from_millis(250),
        || async {
            let s = b.stats().await.ok()?;
            (num(&s[mcu_id.as_str()]["video"]["framesDecoded"]) >= first + 10.0).then_some(())
        },
    )
    .await;
    rising.ok_or("the MCU's framesDecoded stopped rising")?;
    // The web client shows it like any participant: a camera tile of its own.
    let snap = b.snapshot().await?;
    let tiles = snap["tiles"].to_string();
    if !tiles.contains(&mcu_id) {
        return Err(format!("no tile for the MCU {mcu_id}: {tiles}"));
    }

    // A picture of our own: the layout selector (shown because the meeting has an MCU)
    // asks the MCU for layout "1"; the MCU answers with a track of its own, which the
    // client shows instead of the shared mix and keeps decoding. Then back to the mix.
    let shown = b
        .js("return !document.querySelector('#mcu-layout-box').hidden;")
        .await?;
    if shown != Value::Bool(true) {
        return Err("the MCU layout selector is hidden although the meeting has an MCU".into());
    }
    let pick = |layout: &'static str| {
        format!(
            "const s = document.querySelector('#mcu-layout'); s.value = '{layout}';\n\
             s.dispatchEvent(new Event('change')); return true;"
        )
    };
    b.js(&pick("1")).await?;
    let own = poll(
        Duration::from_secs(30),
        Duration::from_millis(250),
        || async {
            let t = b.js("return window.huitong.state.mcuTrack;").await.ok()?;
            t.as_str().map(str::to_owned)
        },
    )
    .await
    .ok_or("no mcu_track answered the layout choice")?;
    // Counted on that track itself: the MCU participant has two video tracks now.
    let before = num(&b.stats().await?["tracks"][own.as_str()]["framesDecoded"]);
    poll(
        Duration::from_secs(30),
        Duration::from_millis(250),
        || async {
            let s = b.stats().await.ok()?;
            let v = &s["tracks"][own.as_str()];
            (num(&v["framesDecoded"]) >= before + 10.0 && num(&v["frameWidth"]) == 1920.0)
                .then_some(())
        },
    )
    .await
    .ok_or_else(|| format!("our own MCU picture ({own}) is not being decoded"))?;
    b.js(&pick("")).await?;

    // Dual stream: the browser shares (a canvas stream), the MCU publishes the content
    // as a second track of its own.
    b.js_async(
        "const c = document.createElement('canvas'); c.width = 1280; c.height = 720;\n\
         const g = c.getContext('2d'); let n = 0;\n\
         setInterval(() => { g.fillStyle = `hsl(${(n++ * 7) % 360} 70% 50%)`; g.fillRect(0, 0, 1280, 720);\n\
           g.fillStyle = '#fff'; g.font = '64px sans-serif'; g.fillText('slide ' + n, 80, 360); }, 66);\n\
         await window.huitong.startShare(c.captureStream(15)); return true;",
    )
    .await?;
    poll(
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async {
            let s = b.stats().await.ok()?;
            let c = &s[mcu_id.as_str()]["screen"];
            (num(&c["framesDecoded"]) > 3.0 && num(&c["frameWidth"]) > 0.0).then_some(())
        },
    )
    .await
    .ok_or("the MCU's content stream was not decoded")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_decodes_the_mcu_mix_at_1080p_and_its_content_stream() {
    browser_decodes_the_mix("openh264").await;
}

/// The same with `[mcu] encoder = "x264"`: Chromium decodes libx264's Constrained
/// Baseline mix like OpenH264's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_decodes_the_x264_encoded_mix() {
    if !common::x264_or_skip() {
        return;
    }
    browser_decodes_the_mix("x264").await;
}

async fn browser_decodes_the_mix(encoder: &str) {
    check_tools().unwrap_or_else(|e| panic!("{e}"));
    let server = Server::start_with(&[
        ("HUITONG_SIGNALING__MCU_AUTO__LAYOUT", "pip"),
        ("HUITONG_MCU__WIDTH", "1920"),
        ("HUITONG_MCU__HEIGHT", "1080"),
        ("HUITONG_MCU__FPS", "10"),
        ("HUITONG_MCU__ENCODER", encoder),
    ])
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let browser = Browser::launch("分会场 Dora")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let outcome = match timeout(WHOLE_TEST_TIMEOUT, scenario(&server, &browser)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "scenario did not finish within {WHOLE_TEST_TIMEOUT:?}"
        )),
    };
    let diag = match &outcome {
        Err(_) => {
            let snap = browser.snapshot().await.unwrap_or_else(|e| json!(e));
            let stats = browser.stats().await.unwrap_or_else(|e| json!(e));
            format!("snapshot {snap}\nstats {stats}")
        }
        Ok(()) => String::new(),
    };
    let _ = timeout(Duration::from_secs(10), browser.client.clone().close()).await;
    if let Err(e) = outcome {
        panic!(
            "{e}\n{diag}\n--- server stderr:\n{}",
            server.log.tail(LOG_TAIL_LINES)
        );
    }
}
