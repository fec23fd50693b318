//! Browser end-to-end tests: three headless Chromium instances meet through a real
//! `huitong serve` process and the real web client; and Chromium meets Firefox.
//!
//! Run alone (it starts its own server and browsers):
//!
//! ```text
//! cargo test -p server --test browser_e2e -- --nocapture
//! ```
//!
//! Needs Debian `chromium` and `chromium-driver` (`/usr/bin/chromedriver`); set
//! `BROWSER_E2E_CHROMEDRIVER` / `BROWSER_E2E_CHROMIUM` to use other paths. The Firefox test
//! needs Debian `firefox-esr` and `geckodriver` (built from crates.io by `scripts/deps.sh`;
//! `BROWSER_E2E_GECKODRIVER` / `BROWSER_E2E_FIREFOX` override). Nothing is downloaded.
//! On failure the panic message says which browser missed what from whom, with its
//! client state and send statistics, followed by the tail of the server's output.

mod common;

use std::time::Duration;

use common::browser::{Browser, Engine, LOG_TAIL_LINES, Server, TestResult, check_tools, check_tools_for, now, poll};
use fantoccini::Locator;
use serde_json::{Value, json};
use tokio::time::{sleep, timeout};

const MEETING: &str = "800123456";
const NAMES: [&str; 3] = ["Alice 甲", "Bob 乙", "Carol 丙"];
const MEDIA_TIMEOUT: Duration = Duration::from_secs(90);
const WHOLE_TEST_TIMEOUT: Duration = Duration::from_secs(420);
const RISE_WINDOW: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------ this test's page

impl Browser {
    /// State and send-side statistics, for failure messages.
    async fn diagnostics(&self) -> String {
        let snap = self.snapshot().await.unwrap_or_else(|e| json!(e));
        let stats = self.stats().await.unwrap_or_else(|e| json!(e));
        let pubs = self
            .js_async("return await window.huitong.pubStats();")
            .await
            .unwrap_or_else(|e| json!(e));
        let banner = self
            .js("const b = document.querySelector('#banner'); const j = document.querySelector('#join-error'); return [b && !b.hidden ? b.textContent : null, j && !j.hidden ? j.textContent : null];")
            .await
            .unwrap_or_else(|e| json!(e));
        format!(
            "--- {}: errors shown {banner}\n  snapshot {snap}\n  recv stats {stats}\n  send stats {pubs}",
            self.name
        )
    }

    /// Joins the meeting through the page and waits for the server's `joined`.
    async fn join(&self, base: &str, create: bool) -> TestResult<()> {
        self.submit_join(base, MEETING, create).await?;
        let joined = poll(
            Duration::from_secs(30),
            Duration::from_millis(100),
            || async {
                let s = self.snapshot().await.ok()?;
                (s["joined"] == json!(true) && s["participant"].is_string()).then_some(())
            },
        )
        .await;
        if joined.is_none() {
            return Err(format!(
                "{} did not join\n{}",
                self.name,
                self.diagnostics().await
            ));
        }
        Ok(())
    }

    async fn own_id(&self) -> TestResult<String> {
        self.snapshot().await?["participant"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("{}: no own participant id", self.name))
    }

    async fn join_to_first_frame_ms(&self) -> TestResult<Option<f64>> {
        let t = self.js("return window.huitong.timings;").await?;
        Ok(
            match (
                t["joinClickedAt"].as_f64(),
                t["firstRemoteFrameAt"].as_f64(),
            ) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            },
        )
    }
}

// ------------------------------------------------------------------ helpers

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_f64().unwrap_or(0.0)
}

/// What `viewer` still misses from `peer`, or `None` when it decodes video of at
/// least 320 px width and receives audio.
fn missing_media(stats: &Value, peer: &str) -> Option<String> {
    let p = &stats[peer];
    let mut missing = Vec::new();
    if num(p, &["video", "framesDecoded"]) <= 0.0 {
        missing.push("no decoded video frames".to_owned());
    }
    let w = num(p, &["video", "frameWidth"]);
    if w < 320.0 {
        missing.push(format!("video frameWidth {w} < 320"));
    }
    if num(p, &["audio", "totalSamplesReceived"]) <= 0.0 {
        missing.push("no audio samples".to_owned());
    }
    (!missing.is_empty()).then(|| missing.join(", "))
}

/// Waits until `viewer` gets video and audio from each of `peers`, then checks that
/// both keep flowing (counters rise over a further interval).
async fn expect_media(viewer: &Browser, peers: &[(&str, String)]) -> TestResult<()> {
    let mut last = Value::Null;
    let end = now() + MEDIA_TIMEOUT;
    let mut ok = None;
    while now() < end {
        if let Ok(s) = viewer.stats().await {
            let done = peers.iter().all(|(_, id)| missing_media(&s, id).is_none());
            last = s;
            if done {
                ok = Some(());
                break;
            }
        }
        sleep(Duration::from_millis(250)).await;
    }
    if ok.is_none() {
        let what: Vec<String> = peers
            .iter()
            .filter_map(|(name, id)| {
                missing_media(&last, id).map(|m| format!("from {name} ({id}): {m}"))
            })
            .collect();
        return Err(format!(
            "{} after {MEDIA_TIMEOUT:?}: {}\n{}",
            viewer.name,
            what.join("; "),
            viewer.diagnostics().await
        ));
    }
    // "Rising" means: within RISE_WINDOW every counter grows by a clear margin (a
    // busy CI machine may freeze a stream for a moment; a dead stream stays flat).
    let before = viewer.stats().await?;
    let grew = |after: &Value| -> Vec<String> {
        let mut flat = Vec::new();
        for (name, id) in peers {
            for (kind, counter, margin) in [
                ("video", "framesDecoded", 5.0),
                ("audio", "totalSamplesReceived", 4800.0),
            ] {
                let (a, b) = (
                    num(&before[id.as_str()], &[kind, counter]),
                    num(&after[id.as_str()], &[kind, counter]),
                );
                if b < a + margin {
                    flat.push(format!("{kind} {counter} from {name}: {a} -> {b}"));
                }
            }
        }
        flat
    };
    let start = now();
    let mut after = before.clone();
    let mut flat = grew(&after);
    while !flat.is_empty() && now() < start + RISE_WINDOW {
        sleep(Duration::from_millis(500)).await;
        after = viewer.stats().await?;
        flat = grew(&after);
    }
    if !flat.is_empty() {
        return Err(format!(
            "{}: stopped rising within {RISE_WINDOW:?}: {}\n{}",
            viewer.name,
            flat.join("; "),
            viewer.diagnostics().await
        ));
    }
    let secs = (now() - start).as_secs_f64();
    for (name, id) in peers {
        println!(
            "{} <- {name}: video {}x{} (+{} frames), audio +{} samples in {secs:.1} s",
            viewer.name,
            num(&after[id.as_str()], &["video", "frameWidth"]),
            num(&after[id.as_str()], &["video", "frameHeight"]),
            num(&after[id.as_str()], &["video", "framesDecoded"])
                - num(&before[id.as_str()], &["video", "framesDecoded"]),
            num(&after[id.as_str()], &["audio", "totalSamplesReceived"])
                - num(&before[id.as_str()], &["audio", "totalSamplesReceived"]),
        );
    }
    Ok(())
}

async fn expect_screen(viewer: &Browser, sharer: &Browser, sharer_id: &str) -> TestResult<()> {
    let frames = |s: &Value| num(&s[sharer_id], &["screen", "framesDecoded"]);
    let first = poll(MEDIA_TIMEOUT, Duration::from_millis(250), || async {
        let s = viewer.stats().await.ok()?;
        (frames(&s) > 0.0 && num(&s[sharer_id], &["screen", "frameWidth"]) > 0.0).then_some(s)
    })
    .await;
    let Some(first) = first else {
        return Err(format!(
            "{} decodes no screen share from {}\n{}\n{}",
            viewer.name,
            sharer.name,
            viewer.diagnostics().await,
            sharer.diagnostics().await
        ));
    };
    let start = now();
    let mut later = viewer.stats().await?;
    while frames(&later) < frames(&first) + 3.0 && now() < start + RISE_WINDOW {
        sleep(Duration::from_millis(500)).await;
        later = viewer.stats().await?;
    }
    if frames(&later) < frames(&first) + 3.0 {
        return Err(format!(
            "{}: screen frames from {} stopped rising ({} -> {} in {RISE_WINDOW:?})\n{}",
            viewer.name,
            sharer.name,
            frames(&first),
            frames(&later),
            viewer.diagnostics().await
        ));
    }
    let tile = viewer
        .js(&format!(
            "return !!document.querySelector('#tiles [data-participant=\"{sharer_id}\"][data-source=\"screen\"]');"
        ))
        .await?;
    if tile != json!(true) {
        return Err(format!(
            "{}: no screen tile for {}",
            viewer.name, sharer.name
        ));
    }
    println!(
        "{} <- {} screen: {} px wide, +{} frames",
        viewer.name,
        sharer.name,
        num(&later[sharer_id], &["screen", "frameWidth"]),
        frames(&later) - frames(&first)
    );
    Ok(())
}

/// Starts sharing with the page's own button (getDisplayMedia). Headless Chromium
/// with the fake-UI flags auto-selects a (fake) screen; if that ever stops working,
/// the test falls back to a canvas stream published as the "screen" source through
/// the `huitong.startShare(stream)` test hook, and says so.
async fn start_share(b: &Browser) -> TestResult<&'static str> {
    b.client
        .find(Locator::Css("#share"))
        .await
        .map_err(|e| format!("{}: find #share: {e}", b.name))?
        .click()
        .await
        .map_err(|e| format!("{}: click #share: {e}", b.name))?;
    let sharing = poll(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async { (b.snapshot().await.ok()?["sharing"] == json!(true)).then_some(()) },
    )
    .await;
    if sharing.is_some() {
        return Ok("getDisplayMedia");
    }
    b.js_async(
        "const c = document.createElement('canvas'); c.width = 1280; c.height = 720;\n\
         const g = c.getContext('2d'); let n = 0;\n\
         setInterval(() => { g.fillStyle = `hsl(${(n++ * 7) % 360} 70% 50%)`; g.fillRect(0, 0, 1280, 720);\n\
           g.fillStyle = '#fff'; g.font = '64px sans-serif'; g.fillText('slide ' + n, 80, 360); }, 66);\n\
         await window.huitong.startShare(c.captureStream(15)); return true;",
    )
    .await?;
    let sharing = poll(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async { (b.snapshot().await.ok()?["sharing"] == json!(true)).then_some(()) },
    )
    .await;
    match sharing {
        Some(()) => Ok("canvas fallback (getDisplayMedia unavailable)"),
        None => Err(format!(
            "{}: could not start sharing\n{}",
            b.name,
            b.diagnostics().await
        )),
    }
}

async fn expect_gone(viewer: &Browser, gone_name: &str, gone_id: &str) -> TestResult<()> {
    let script = format!(
        "return {{ inState: window.huitong.state.participants.has('{gone_id}'),\n\
                  tiles: document.querySelectorAll('#tiles [data-participant=\"{gone_id}\"]').length,\n\
                  audio: document.querySelectorAll('audio[data-participant=\"{gone_id}\"]').length }};"
    );
    let mut last = Value::Null;
    let end = now() + Duration::from_secs(20);
    let mut ok = None;
    while now() < end {
        if let Ok(v) = viewer.js(&script).await {
            let gone =
                v["inState"] == json!(false) && v["tiles"] == json!(0) && v["audio"] == json!(0);
            last = v;
            if gone {
                ok = Some(());
                break;
            }
        }
        sleep(Duration::from_millis(100)).await;
    }
    if ok.is_some() {
        // The UI check above is what users see; the protocol also says the server
        // re-offers without the tracks that went away. Report (not fail) a stale m-line.
        let stale = viewer
            .js(&format!(
                "return window.huitong.snapshot().subscribed.filter((t) => t.participant === '{gone_id}').map((t) => t.id);"
            ))
            .await?;
        if stale.as_array().is_some_and(|a| !a.is_empty()) {
            println!(
                "WARNING: {}'s last subscribe offer still carries {gone_name}'s tracks {stale} after it left",
                viewer.name
            );
        }
    }
    match ok {
        Some(()) => Ok(()),
        None => Err(format!(
            "{} still shows {gone_name} after it left: {last}\n{}",
            viewer.name,
            viewer.diagnostics().await
        )),
    }
}

// ------------------------------------------------------------------ the scenario

async fn scenario(server: &Server, browsers: &[Browser]) -> TestResult<()> {
    let base = format!("http://{}/", server.http);
    let [a, b, c] = browsers else {
        return Err("need three browsers".into());
    };

    // Before the meeting exists, joining without "create" must fail visibly.
    c.submit_join(&base, MEETING, false).await?;
    let shown = poll(Duration::from_secs(20), Duration::from_millis(100), || async {
        let v = c
            .js("const e = document.querySelector('#join-error'); return e && !e.hidden ? e.textContent : null;")
            .await
            .ok()?;
        v.as_str().map(str::to_owned)
    })
    .await;
    match shown {
        Some(text) if text.contains("unknown_meeting") => {
            println!("{}: join refused: {text}", c.name)
        }
        other => {
            return Err(format!(
                "{}: joining an unknown meeting did not show unknown_meeting (got {other:?})\n{}",
                c.name,
                c.diagnostics().await
            ));
        }
    }

    // A creates the meeting; B and C join one after the other so that each of their
    // join → first-remote-frame times is measured against a meeting already live.
    a.join(&base, true).await?;
    let id_a = a.own_id().await?;
    b.join(&base, false).await?;
    let id_b = b.own_id().await?;
    c.join(&base, false).await?;
    let id_c = c.own_id().await?;
    println!(
        "participants: {}={id_a} {}={id_b} {}={id_c}",
        a.name, b.name, c.name
    );

    let ids = [
        (a.name, id_a.clone()),
        (b.name, id_b.clone()),
        (c.name, id_c.clone()),
    ];
    for (i, viewer) in browsers.iter().enumerate() {
        let peers: Vec<(&str, String)> = ids
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, (n, id))| (*n, id.clone()))
            .collect();
        expect_media(viewer, &peers).await?;
    }

    for (i, br) in browsers.iter().enumerate() {
        let note = if i == 0 {
            " (first in the meeting: includes waiting for the others to join)"
        } else {
            ""
        };
        match br.join_to_first_frame_ms().await? {
            Some(ms) => println!("{}: join_to_first_frame_ms={ms:.0}{note}", br.name),
            None => return Err(format!("{}: no first remote frame recorded", br.name)),
        }
    }

    let how = start_share(a).await?;
    println!("{} shares its screen via {how}", a.name);
    expect_screen(b, a, &id_a).await?;
    expect_screen(c, a, &id_a).await?;

    c.client
        .find(Locator::Css("#leave"))
        .await
        .map_err(|e| format!("{}: find #leave: {e}", c.name))?
        .click()
        .await
        .map_err(|e| format!("{}: click #leave: {e}", c.name))?;
    expect_gone(a, c.name, &id_c).await?;
    expect_gone(b, c.name, &id_c).await?;
    println!("{} left; {} and {} dropped it", c.name, a.name, b.name);
    Ok(())
}

/// A Chromium and a Firefox meet: each decodes the other's camera and hears its
/// microphone, whichever codec the two could agree on through the SFU; then Firefox
/// leaves.
async fn two_engines(server: &Server, browsers: &[Browser]) -> TestResult<()> {
    let base = format!("http://{}/", server.http);
    let [a, b] = browsers else {
        return Err("need two browsers".into());
    };
    a.join(&base, true).await?;
    let id_a = a.own_id().await?;
    b.join(&base, false).await?;
    let id_b = b.own_id().await?;
    // Either side's failure is often caused by the other: show both.
    if let Err(e) = expect_media(a, &[(b.name, id_b.clone())]).await {
        return Err(format!("{e}\n{}", b.diagnostics().await));
    }
    if let Err(e) = expect_media(b, &[(a.name, id_a.clone())]).await {
        return Err(format!("{e}\n{}", a.diagnostics().await));
    }
    match b.join_to_first_frame_ms().await? {
        Some(ms) => println!("{}: join_to_first_frame_ms={ms:.0}", b.name),
        None => return Err(format!("{}: no first remote frame recorded", b.name)),
    }
    b.client
        .find(Locator::Css("#leave"))
        .await
        .map_err(|e| format!("{}: find #leave: {e}", b.name))?
        .click()
        .await
        .map_err(|e| format!("{}: click #leave: {e}", b.name))?;
    expect_gone(a, b.name, &id_b).await?;
    Ok(())
}

/// Closes the browsers and the server; panics with the server's output if the
/// scenario failed.
async fn finish(
    server: Server,
    browsers: Vec<Browser>,
    outcome: Result<TestResult<()>, tokio::time::error::Elapsed>,
) {
    let outcome = outcome.unwrap_or_else(|_| {
        Err(format!(
            "scenario did not finish within {WHOLE_TEST_TIMEOUT:?}"
        ))
    });
    let server_log = server.log.tail(LOG_TAIL_LINES);
    for b in browsers {
        let _ = timeout(Duration::from_secs(10), b.client.clone().close()).await;
    }
    drop(server);
    if let Err(e) = outcome {
        panic!("{e}\n--- server output (last {LOG_TAIL_LINES} lines):\n{server_log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_and_firefox_meet() {
    if let Err(e) = check_tools_for(true) {
        panic!("{e}");
    }
    let server = match Server::start_lan_media().await {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    let launched = tokio::try_join!(
        Browser::launch_engine("Chromium 甲", Engine::Chromium),
        Browser::launch_engine("Firefox 乙", Engine::Firefox),
    );
    let browsers = match launched {
        Ok((a, b)) => vec![a, b],
        Err(e) => panic!("{e}"),
    };
    let outcome = timeout(WHOLE_TEST_TIMEOUT, two_engines(&server, &browsers)).await;
    finish(server, browsers, outcome).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_browsers_meet_share_and_leave() {
    if let Err(e) = check_tools() {
        panic!("{e}");
    }
    let server = match Server::start().await {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    let launched = tokio::try_join!(
        Browser::launch(NAMES[0]),
        Browser::launch(NAMES[1]),
        Browser::launch(NAMES[2]),
    );
    let browsers = match launched {
        Ok((a, b, c)) => vec![a, b, c],
        Err(e) => panic!("{e}"),
    };
    let outcome = timeout(WHOLE_TEST_TIMEOUT, scenario(&server, &browsers)).await;
    finish(server, browsers, outcome).await;
}
