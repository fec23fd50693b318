//! Set-up of the tests that drive a real `huitong serve` process and headless
//! Chromium over WebDriver (`browser_e2e`, `admin_console_e2e`): the server process with
//! its captured output, one chromedriver per browser in its own process group, and
//! wall-clock polling.
//!
//! Needs Debian `chromium` and `chromium-driver` (`/usr/bin/chromedriver`); set
//! `BROWSER_E2E_CHROMEDRIVER` / `BROWSER_E2E_CHROMIUM` to use other paths. Nothing is
//! downloaded. `BROWSER_E2E_VERBOSE=1` echoes the server's output.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tokio::time::sleep;

pub const SERVER_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Server output lines shown with a failure.
pub const LOG_TAIL_LINES: usize = 80;

pub type TestResult<T> = Result<T, String>;

// ------------------------------------------------------------------ server process

/// Lines the server printed, kept so a failure can show what it said.
#[derive(Clone, Default)]
pub struct LogBuf(Arc<Mutex<Vec<String>>>);

impl LogBuf {
    fn push(&self, line: String) {
        if let Ok(mut v) = self.0.lock() {
            v.push(line);
        }
    }

    /// Every line so far, tagged `[out]` or `[err]`.
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }

    pub fn tail(&self, n: usize) -> String {
        let v = self.0.lock().map(|v| v.clone()).unwrap_or_default();
        v[v.len().saturating_sub(n)..].join("\n")
    }

    fn find_ready(&self) -> Option<String> {
        let v = self.0.lock().ok()?;
        v.iter()
            .find_map(|l| l.strip_prefix("[out] HUITONG_READY ").map(str::to_owned))
    }
}

fn drain<R: Read + Send + 'static>(reader: R, tag: &'static str, log: LogBuf) {
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if std::env::var_os("BROWSER_E2E_VERBOSE").is_some() {
                eprintln!("[server {tag}] {line}");
            }
            log.push(format!("[{tag}] {line}"));
        }
    });
}

pub struct Server {
    child: Child,
    /// `127.0.0.1:port` of the HTTP listener.
    pub http: String,
    pub log: LogBuf,
    _data: tempfile::TempDir,
}

impl Server {
    pub async fn start() -> TestResult<Server> {
        Self::start_with(&[]).await
    }

    /// Starts `huitong serve` on loopback with a fresh data dir and `env` added.
    pub async fn start_with(env: &[(&str, &str)]) -> TestResult<Server> {
        Self::spawn(env, false).await
    }

    /// Media on all interfaces, advertising the server's route address: Firefox gathers
    /// no loopback candidates and will not pair its LAN address with a loopback one.
    pub async fn start_lan_media() -> TestResult<Server> {
        Self::spawn(&[], true).await
    }

    async fn spawn(env: &[(&str, &str)], lan_media: bool) -> TestResult<Server> {
        let data = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_huitong"));
        cmd.arg("serve").env("HUITONG_HTTP__LISTEN", "127.0.0.1:0");
        if lan_media {
            cmd.env("HUITONG_MEDIA__UDP_LISTEN", "0.0.0.0:0");
        } else {
            cmd.env("HUITONG_MEDIA__UDP_LISTEN", "127.0.0.1:0")
                .env("HUITONG_MEDIA__ADVERTISE_IP", "127.0.0.1");
        }
        let mut child = cmd
            .env("HUITONG_DATA_DIR", data.path())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start huitong: {e}"))?;
        let log = LogBuf::default();
        drain(child.stdout.take().expect("piped"), "out", log.clone());
        drain(child.stderr.take().expect("piped"), "err", log.clone());
        let mut ready = None;
        let end = now() + SERVER_START_TIMEOUT;
        while now() < end {
            ready = log.find_ready();
            // A server that exits (bad config, port in use) will never be ready.
            if ready.is_some() || child.try_wait().ok().flatten().is_some() {
                sleep(Duration::from_millis(100)).await; // let the drain threads catch up
                break;
            }
            sleep(Duration::from_millis(50)).await;
        }
        let server = |child| Server {
            child,
            http: String::new(),
            log: log.clone(),
            _data: data,
        };
        let Some(ready) = ready else {
            let s = server(child);
            return Err(format!(
                "server printed no HUITONG_READY line (exited or {SERVER_START_TIMEOUT:?} passed)\n{}",
                s.log.tail(LOG_TAIL_LINES)
            ));
        };
        let mut s = server(child);
        let v: Value = serde_json::from_str(&ready)
            .map_err(|e| format!("bad HUITONG_READY payload {ready:?}: {e}"))?;
        s.http = v["http"]
            .as_str()
            .ok_or_else(|| format!("HUITONG_READY without http: {ready}"))?
            .to_owned();
        Ok(s)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------ browsers

pub fn chromedriver_path() -> PathBuf {
    std::env::var_os("BROWSER_E2E_CHROMEDRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromedriver"))
}

pub fn geckodriver_path() -> PathBuf {
    if let Some(p) = std::env::var_os("BROWSER_E2E_GECKODRIVER") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default();
    home.join("bin/geckodriver")
}

pub fn firefox_path() -> PathBuf {
    std::env::var_os("BROWSER_E2E_FIREFOX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/firefox-esr"))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Engine {
    Chromium,
    Firefox,
}

pub fn chromium_path() -> PathBuf {
    std::env::var_os("BROWSER_E2E_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

pub fn free_port() -> TestResult<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local_addr: {e}"))
}

/// One chromedriver (and the Chromium it starts) per browser, in its own process
/// group so that nothing outlives the test even when a session cannot be closed.
pub struct Driver {
    child: Child,
}

impl Driver {
    fn start(engine: Engine, port: u16) -> TestResult<Driver> {
        use std::os::unix::process::CommandExt;
        let path = match engine {
            Engine::Chromium => chromedriver_path(),
            Engine::Firefox => geckodriver_path(),
        };
        let mut cmd = Command::new(&path);
        match engine {
            Engine::Chromium => cmd.arg(format!("--port={port}")),
            // Port 0: Marionette on a system-chosen port, so parallel tests don't clash.
            Engine::Firefox => cmd.args(["--port", &port.to_string(), "--marionette-port", "0"]),
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", path.display()))?;
        Ok(Driver { child })
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // chromedriver's pid is its process group id (process_group(0) above).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Browser {
    pub name: &'static str,
    pub client: Client,
    _driver: Driver,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn launch(name: &'static str) -> TestResult<Browser> {
        Self::launch_engine(name, Engine::Chromium).await
    }

    pub async fn launch_engine(name: &'static str, engine: Engine) -> TestResult<Browser> {
        let port = free_port()?;
        let driver = Driver::start(engine, port)?;
        let profile = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let args = vec![
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--use-fake-device-for-media-stream".to_owned(),
            "--use-fake-ui-for-media-stream".to_owned(),
            "--enable-usermedia-screen-capturing".to_owned(),
            "--auto-select-desktop-capture-source=Entire screen".to_owned(),
            "--allow-loopback-in-peer-connection".to_owned(),
            "--autoplay-policy=no-user-gesture-required".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--no-first-run".to_owned(),
            "--window-size=1280,800".to_owned(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = match engine {
            Engine::Chromium => json!({
                "browserName": "chrome",
                "goog:chromeOptions": { "binary": chromium_path(), "args": args },
            }),
            // Fake camera and microphone without a prompt; loopback ICE allowed; no
            // mDNS host obfuscation; no plug-in downloads.
            Engine::Firefox => json!({
                "browserName": "firefox",
                "moz:firefoxOptions": {
                    "binary": firefox_path(),
                    "args": ["-headless", "-width", "1280", "-height", "800"],
                    "prefs": {
                        "media.navigator.streams.fake": true,
                        "media.navigator.permission.disabled": true,
                        "media.peerconnection.ice.loopback": true,
                        "media.peerconnection.ice.obfuscate_host_addresses": false,
                        "media.autoplay.default": 0,
                        "media.autoplay.blocking_policy": 0,
                        "app.update.enabled": false,
                        "browser.shell.checkDefaultBrowser": false,
                        "datareporting.policy.dataSubmissionEnabled": false,
                        "media.gmp-manager.updateEnabled": false,
                    },
                },
            }),
        };
        let Value::Object(caps) = caps else {
            unreachable!("json! object")
        };
        let url = format!("http://127.0.0.1:{port}");
        let mut last_err = String::new();
        // chromedriver needs a moment to listen; Chromium start-up on a busy machine more.
        for _ in 0..100 {
            match ClientBuilder::new(HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => {
                    return Ok(Browser {
                        name,
                        client,
                        _driver: driver,
                        _profile: profile,
                    });
                }
                Err(e) => {
                    last_err = e.to_string();
                    sleep(Duration::from_millis(200)).await;
                }
            }
        }
        Err(format!("{name}: no WebDriver session: {last_err}"))
    }

    /// Opens the web client at `base`, fills the join form and clicks "join".
    pub async fn submit_join(&self, base: &str, number: &str, create: bool) -> TestResult<()> {
        let c = &self.client;
        let e =
            |what: &str, err: fantoccini::error::CmdError| format!("{}: {what}: {err}", self.name);
        c.goto(base).await.map_err(|err| e("open page", err))?;
        let meeting = c
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css("#meeting"))
            .await
            .map_err(|err| e("find #meeting", err))?;
        meeting
            .clear()
            .await
            .map_err(|err| e("clear meeting", err))?;
        meeting
            .send_keys(number)
            .await
            .map_err(|err| e("type meeting", err))?;
        let name = c
            .find(Locator::Css("#name"))
            .await
            .map_err(|err| e("find #name", err))?;
        name.clear().await.map_err(|err| e("clear name", err))?;
        name.send_keys(self.name)
            .await
            .map_err(|err| e("type name", err))?;
        let create_box = c
            .find(Locator::Css("#create"))
            .await
            .map_err(|err| e("find #create", err))?;
        if create_box
            .is_selected()
            .await
            .map_err(|err| e("read #create", err))?
            != create
        {
            create_box
                .click()
                .await
                .map_err(|err| e("tick #create", err))?;
        }
        c.find(Locator::Css("#join"))
            .await
            .map_err(|err| e("find #join", err))?
            .click()
            .await
            .map_err(|err| e("click #join", err))?;
        Ok(())
    }

    /// The web client's state (`window.huitong.snapshot()`).
    pub async fn snapshot(&self) -> TestResult<Value> {
        self.js("return window.huitong.snapshot();").await
    }

    /// Receive statistics per participant (`window.huitong.stats()`).
    pub async fn stats(&self) -> TestResult<Value> {
        self.js_async("return await window.huitong.stats();").await
    }

    pub async fn js(&self, script: &str) -> TestResult<Value> {
        self.client
            .execute(script, vec![])
            .await
            .map_err(|e| format!("{}: script failed: {e}\n{script}", self.name))
    }

    /// Runs `body` (which may use `await`) and returns its value.
    pub async fn js_async(&self, body: &str) -> TestResult<Value> {
        let script = format!(
            "const done = arguments[arguments.length - 1];\n\
             (async () => {{ {body} }})().then(done, (e) => done({{ __error: String(e && e.stack || e) }}));"
        );
        let v = self
            .client
            .execute_async(&script, vec![])
            .await
            .map_err(|e| format!("{}: async script failed: {e}\n{body}", self.name))?;
        if let Some(err) = v.get("__error") {
            return Err(format!("{}: script threw {err}\n{body}", self.name));
        }
        Ok(v)
    }
}

// ------------------------------------------------------------------ helpers

/// This test drives real browsers and a real server: its timeouts are wall-clock.
#[allow(clippy::disallowed_methods)]
pub fn now() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

pub async fn poll<T, F, Fut>(limit: Duration, every: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = now() + limit;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if now() >= end {
            return None;
        }
        sleep(every).await;
    }
}

pub fn check_tools() -> TestResult<()> {
    check_tools_for(false)
}

pub fn check_tools_for(firefox: bool) -> TestResult<()> {
    let mut need = vec![
        (chromedriver_path(), "install Debian chromium-driver"),
        (chromium_path(), "install Debian chromium"),
    ];
    if firefox {
        need.push((firefox_path(), "install Debian firefox-esr"));
        need.push((
            geckodriver_path(),
            "cargo install geckodriver (scripts/deps.sh does)",
        ));
    }
    for (p, how) in need {
        if !Path::new(&p).exists() {
            return Err(format!("{} not found: {how}", p.display()));
        }
    }
    Ok(())
}
