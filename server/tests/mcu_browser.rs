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

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tokio::time::{sleep, timeout};

const MEETING: &str = "800900100";
const WHOLE_TEST_TIMEOUT: Duration = Duration::from_secs(300);

type TestResult<T> = Result<T, String>;

// This test drives a real browser and server: its timeouts are wall-clock.
#[allow(clippy::disallowed_methods)]
fn now() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

struct Server {
    child: Child,
    http: String,
    log: Arc<Mutex<Vec<String>>>,
    _data: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start() -> TestResult<Server> {
        let data = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let mut child = Command::new(env!("CARGO_BIN_EXE_huitong"))
            .arg("serve")
            .env("HUITONG_HTTP__LISTEN", "127.0.0.1:0")
            .env("HUITONG_MEDIA__UDP_LISTEN", "127.0.0.1:0")
            .env("HUITONG_MEDIA__ADVERTISE_IP", "127.0.0.1")
            .env("HUITONG_DATA_DIR", data.path())
            .env("HUITONG_SIGNALING__MCU_AUTO__LAYOUT", "pip")
            .env("HUITONG_MCU__WIDTH", "1920")
            .env("HUITONG_MCU__HEIGHT", "1080")
            .env("HUITONG_MCU__FPS", "10")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start huitong: {e}"))?;
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let err = child.stderr.take().ok_or("stderr")?;
        let l = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Ok(mut v) = l.lock() {
                    v.push(line);
                }
            }
        });
        let mut lines = BufReader::new(child.stdout.take().ok_or("stdout")?).lines();
        let ready = loop {
            let line = lines
                .next()
                .ok_or("server exited before READY")?
                .map_err(|e| e.to_string())?;
            if let Some(j) = line.strip_prefix("HUITONG_READY ") {
                break serde_json::from_str::<Value>(j).map_err(|e| e.to_string())?;
            }
        };
        std::thread::spawn(move || for _ in lines {});
        let http = ready["http"].as_str().ok_or("no http in READY")?.to_owned();
        Ok(Server {
            child,
            http,
            log,
            _data: data,
        })
    }

    fn tail(&self) -> String {
        let v = self.log.lock().map(|v| v.clone()).unwrap_or_default();
        v[v.len().saturating_sub(60)..].join("\n")
    }
}

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        // chromedriver leads its own process group (process_group(0)): end Chromium too.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Browser {
    client: Client,
    _driver: Driver,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn launch() -> TestResult<Browser> {
        use std::os::unix::process::CommandExt;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("free port: {e}"))?
            .port();
        let chromedriver = std::env::var_os("BROWSER_E2E_CHROMEDRIVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/chromedriver"));
        let chromium = std::env::var_os("BROWSER_E2E_CHROMIUM")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
        let driver = Driver(
            Command::new(&chromedriver)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", chromedriver.display()))?,
        );
        let profile = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
            "--allow-loopback-in-peer-connection",
            "--autoplay-policy=no-user-gesture-required",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--window-size=1280,800",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let caps = json!({"browserName": "chrome", "goog:chromeOptions": {"binary": chromium, "args": args}});
        let Value::Object(caps) = caps else {
            return Err("capabilities".into());
        };
        let mut last = String::new();
        for _ in 0..100 {
            match ClientBuilder::new(HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => {
                    return Ok(Browser {
                        client,
                        _driver: driver,
                        _profile: profile,
                    });
                }
                Err(e) => {
                    last = e.to_string();
                    sleep(Duration::from_millis(200)).await;
                }
            }
        }
        Err(format!("no WebDriver session: {last}"))
    }

    async fn js(&self, script: &str) -> TestResult<Value> {
        self.client
            .execute(script, vec![])
            .await
            .map_err(|e| format!("script failed: {e}\n{script}"))
    }

    async fn js_async(&self, body: &str) -> TestResult<Value> {
        let script = format!(
            "const done = arguments[arguments.length - 1];\n\
             (async () => {{ {body} }})().then(done, (e) => done({{ __error: String(e && e.stack || e) }}));"
        );
        let v = self
            .client
            .execute_async(&script, vec![])
            .await
            .map_err(|e| format!("async script: {e}"))?;
        match v.get("__error") {
            Some(err) => Err(format!("script threw {err}\n{body}")),
            None => Ok(v),
        }
    }

    async fn join(&self, base: &str) -> TestResult<()> {
        let c = &self.client;
        let e = |what: &str, err: fantoccini::error::CmdError| format!("{what}: {err}");
        c.goto(base).await.map_err(|err| e("open page", err))?;
        let meeting = c
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css("#meeting"))
            .await
            .map_err(|err| e("find #meeting", err))?;
        meeting.clear().await.map_err(|err| e("clear", err))?;
        meeting
            .send_keys(MEETING)
            .await
            .map_err(|err| e("type meeting", err))?;
        let name = c
            .find(Locator::Css("#name"))
            .await
            .map_err(|err| e("find #name", err))?;
        name.clear().await.map_err(|err| e("clear", err))?;
        name.send_keys("分会场 Dora")
            .await
            .map_err(|err| e("type name", err))?;
        let create = c
            .find(Locator::Css("#create"))
            .await
            .map_err(|err| e("find #create", err))?;
        if !create
            .is_selected()
            .await
            .map_err(|err| e("read #create", err))?
        {
            create.click().await.map_err(|err| e("tick #create", err))?;
        }
        c.find(Locator::Css("#join"))
            .await
            .map_err(|err| e("find #join", err))?
            .click()
            .await
            .map_err(|err| e("click #join", err))?;
        Ok(())
    }
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

/// Waits until `f` returns `Some`, polling every 250 ms.
async fn wait_for<T>(limit: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> Option<T> {
    let end = now() + limit;
    while now() < end {
        if let Some(v) = f().await {
            return Some(v);
        }
        sleep(Duration::from_millis(250)).await;
    }
    None
}

async fn scenario(server: &Server, b: &Browser) -> TestResult<()> {
    b.join(&format!("http://{}/", server.http)).await?;
    // The MCU joins as a participant named 会议画面 with kind "mcu".
    let mcu = wait_for(Duration::from_secs(30), async || {
        let snap = b.js("return window.huitong.snapshot();").await.ok()?;
        snap["participants"]
            .as_array()?
            .iter()
            .find(|p| p["kind"] == "mcu")
            .cloned()
    })
    .await
    .ok_or("the MCU never appeared among the participants")?;
    assert_eq!(mcu["name"], "会议画面");
    let mcu_id = mcu["id"].as_str().ok_or("mcu id")?.to_owned();

    // Its mix is decoded at 1920×1080 and keeps coming.
    let stats = async || {
        b.js_async("return await window.huitong.stats();")
            .await
            .ok()
    };
    let first = wait_for(Duration::from_secs(90), async || {
        let s = stats().await?;
        let v = &s[mcu_id.as_str()]["video"];
        (num(&v["frameWidth"]) == 1920.0
            && num(&v["frameHeight"]) == 1080.0
            && num(&v["framesDecoded"]) > 0.0)
            .then(|| num(&v["framesDecoded"]))
    })
    .await
    .ok_or_else(|| format!("no 1920×1080 frames decoded from the MCU {mcu_id}"))?;
    let rising = wait_for(Duration::from_secs(20), async || {
        let s = stats().await?;
        (num(&s[mcu_id.as_str()]["video"]["framesDecoded"]) >= first + 10.0).then_some(())
    })
    .await;
    rising.ok_or("the MCU's framesDecoded stopped rising")?;
    // The web client shows it like any participant: a camera tile of its own.
    let snap = b.js("return window.huitong.snapshot();").await?;
    let tiles = snap["tiles"].to_string();
    if !tiles.contains(&mcu_id) {
        return Err(format!("no tile for the MCU {mcu_id}: {tiles}"));
    }

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
    wait_for(Duration::from_secs(60), async || {
        let s = stats().await?;
        let c = &s[mcu_id.as_str()]["screen"];
        (num(&c["framesDecoded"]) > 3.0 && num(&c["frameWidth"]) > 0.0).then_some(())
    })
    .await
    .ok_or("the MCU's content stream was not decoded")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "written but not yet run: the shared build machine did not finish compiling before the deadline; run with --ignored and remove this"]
async fn browser_decodes_the_mcu_mix_at_1080p_and_its_content_stream() {
    let server = Server::start().unwrap_or_else(|e| panic!("{e}"));
    let browser = Browser::launch().await.unwrap_or_else(|e| panic!("{e}"));
    let outcome = match timeout(WHOLE_TEST_TIMEOUT, scenario(&server, &browser)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "scenario did not finish within {WHOLE_TEST_TIMEOUT:?}"
        )),
    };
    let diag = match &outcome {
        Err(_) => {
            let snap = browser
                .js("return window.huitong.snapshot();")
                .await
                .unwrap_or_else(|e| json!(e));
            let stats = browser
                .js_async("return await window.huitong.stats();")
                .await
                .unwrap_or_else(|e| json!(e));
            format!("snapshot {snap}\nstats {stats}")
        }
        Ok(()) => String::new(),
    };
    let _ = timeout(Duration::from_secs(10), browser.client.clone().close()).await;
    if let Err(e) = outcome {
        panic!("{e}\n{diag}\n--- server stderr:\n{}", server.tail());
    }
}
