//! `bench admin`: the admin plane (issue 3) at city scale. Generates a five-level
//! organisation tree (city → county/banner → township → village → branch, ~20,000 orgs)
//! and 300,000 users, imports them as CSV through `POST /api/v1/users/import` (the code
//! path the console and `huitong admin import` use), then drives the real admin router
//! over HTTP/1.1 keep-alive with N concurrent clients and reports p50/p99 latency of
//! login, subtree user listing, meeting creation and sign-in submission — on SQLite (a
//! WAL file in a temp dir, as `huitong serve` uses by default) and on PostgreSQL.
//!
//! The server runs in this process on its own tokio runtime (as many workers as cores,
//! like `huitong serve`), the clients on a second runtime; both share the machine's
//! cores, as a load generator on the same host would.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

const USAGE: &str = "usage: bench admin [--quick] [--users N] [--concurrency C] [--db sqlite|postgres|both] \
[--server-threads T] [--client-threads T] [--login-rounds R] [--rounds R] [--think-ms MS] \
[--login-load F] [--no-closed-loop] [--keep-db]";

/// Password of every bench account: passes the default policy (12+ chars, 3 classes).
const PASSWORD: &str = "Huitong-Bench-2026";

#[derive(Debug, Clone)]
struct Opts {
    users: usize,
    concurrency: usize,
    sqlite: bool,
    postgres: bool,
    server_threads: usize,
    client_threads: usize,
    /// Logins per client (each is one argon2id verification).
    login_rounds: usize,
    /// Requests per client for the list, create-meeting and sign-in phases.
    rounds: usize,
    /// Mean pause of a client between its requests (uniform in 0..2×), not timed. 0 is a
    /// closed loop: every client always has a request in flight, so latency is
    /// concurrency / throughput (Little's law).
    think_ms: u64,
    /// Paced logins offer this fraction of the argon2 rate the machine affords
    /// (measured while the bench sets the accounts' passwords).
    login_load: f64,
    /// After the paced pass, run every operation again with no think time (each client
    /// always has a request in flight) and report the throughput reached.
    closed_loop: bool,
    /// Leave the database behind (PostgreSQL `huitong_bench_admin`, or the SQLite file
    /// path printed) so its plans can be inspected afterwards.
    keep_db: bool,
}

fn parse_opts(args: &[String]) -> Result<Opts> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut o = Opts {
        users: 300_000,
        concurrency: 500,
        sqlite: true,
        postgres: true,
        server_threads: cores,
        client_threads: cores,
        login_rounds: 1,
        rounds: 10,
        think_ms: 1500,
        login_load: 0.5,
        closed_loop: true,
        keep_db: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = || -> Result<usize> {
            it.next()
                .ok_or_else(|| anyhow!("{a} needs a value"))?
                .parse()
                .with_context(|| format!("{a} needs a number"))
        };
        match a.as_str() {
            "--quick" => {
                o.users = 20_000;
                o.concurrency = 50;
            }
            "--users" => o.users = num()?.max(100),
            "--concurrency" => o.concurrency = num()?.max(1),
            "--server-threads" => o.server_threads = num()?.max(1),
            "--client-threads" => o.client_threads = num()?.max(1),
            "--login-rounds" => o.login_rounds = num()?.max(1),
            "--rounds" => o.rounds = num()?.max(1),
            "--think-ms" => o.think_ms = num()? as u64,
            "--no-closed-loop" => o.closed_loop = false,
            "--keep-db" => o.keep_db = true,
            "--login-load" => {
                let v = it
                    .next()
                    .ok_or_else(|| anyhow!("--login-load needs a value"))?;
                o.login_load = v
                    .parse::<f64>()
                    .ok()
                    .filter(|f| *f > 0.0 && *f <= 4.0)
                    .ok_or_else(|| anyhow!("--login-load needs a fraction in (0, 4]"))?;
            }
            "--db" => {
                let v = it.next().ok_or_else(|| anyhow!("--db needs a value"))?;
                (o.sqlite, o.postgres) = match v.as_str() {
                    "sqlite" => (true, false),
                    "postgres" => (false, true),
                    "both" => (true, true),
                    _ => bail!("--db sqlite|postgres|both"),
                };
            }
            _ => bail!("unknown argument {a}\n{USAGE}"),
        }
    }
    Ok(o)
}

pub fn main(args: &[String]) -> Result<()> {
    let o = parse_opts(args)?;
    let mut summaries = Vec::new();
    let mut notes = Vec::new();
    if o.sqlite {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}/huitong.db?mode=rwc", dir.path().display());
        let r = run_db(&o, "sqlite", &url);
        if o.keep_db {
            eprintln!("[sqlite] kept {}", dir.keep().display());
        }
        let (s, n) = r?;
        summaries.push(s);
        notes.push(n);
    }
    if o.postgres {
        let base = std::env::var("HUITONG_TEST_POSTGRES_URL").context(
            "HUITONG_TEST_POSTGRES_URL is not set (source scripts/deps.sh && huitong_postgres), \
             or pass --db sqlite",
        )?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let url = rt.block_on(fresh_postgres_db(&base, "huitong_bench_admin"))?;
        let r = run_db(&o, "postgres", &url);
        if o.keep_db {
            eprintln!("[postgres] kept {url}");
        } else {
            rt.block_on(drop_postgres_db(&base, "huitong_bench_admin"))?;
        }
        let (s, n) = r?;
        summaries.push(s);
        notes.push(n);
    }
    println!();
    println!(
        "admin bench: {} users, {} concurrent HTTP/1.1 keep-alive clients (paced: a request every 0–{} ms per client, open loop; then closed loop); server {} threads, clients {} threads, {} cores; load average at start/end per db below",
        o.users,
        o.concurrency,
        2 * o.think_ms,
        o.server_threads,
        o.client_threads,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for n in &notes {
        println!("{n}");
    }
    for s in &summaries {
        println!("{s}");
    }
    Ok(())
}

/// `postgres://…/db` → the same server with database `name`, dropped and recreated empty.
async fn fresh_postgres_db(base: &str, name: &str) -> Result<String> {
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(base).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await?;
    Ok(with_database(base, name))
}

async fn drop_postgres_db(base: &str, name: &str) -> Result<()> {
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(base).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    Ok(())
}

fn with_database(base: &str, name: &str) -> String {
    let (head, query) = match base.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (base, None),
    };
    // The database is the path after the authority: `postgres://user@host:port/db`.
    let scheme_end = head.find("://").map_or(0, |i| i + 3);
    let path_start = head[scheme_end..]
        .find('/')
        .map_or(head.len(), |i| scheme_end + i);
    let mut url = format!("{}/{name}", &head[..path_start]);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Data generation (deterministic: a fixed seed, so every run imports the same directory).

/// splitmix64: small, seedable, good enough to pick names.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

const CITY: &str = "鄂尔多斯市";
const COUNTIES: &[&str] = &[
    "东胜区",
    "康巴什区",
    "达拉特旗",
    "准格尔旗",
    "鄂托克前旗",
    "鄂托克旗",
    "杭锦旗",
    "乌审旗",
    "伊金霍洛旗",
    "高新技术产业开发区",
];
const PLACE_CHARS: &[char] = &[
    '树', '林', '召', '王', '爱', '乌', '兰', '白', '泥', '井', '罕', '台', '吉', '格', '图', '巴',
    '音', '布', '拉', '克', '沙', '圪', '堵', '新', '民', '红', '庆', '河', '柳', '青', '达', '尔',
];
const TOWNSHIP_SUFFIX: &[&str] = &["镇", "苏木", "街道", "镇"];
const VILLAGE_SUFFIX: &[&str] = &["村", "嘎查", "社区", "村"];
const NUMERALS: &[&str] = &[
    "一", "二", "三", "四", "五", "六", "七", "八", "九", "十", "十一", "十二",
];
const SURNAMES: &[&str] = &[
    "王", "李", "张", "刘", "陈", "杨", "赵", "黄", "周", "吴", "徐", "孙", "胡", "朱", "高", "林",
    "何", "郭", "马", "罗", "梁", "宋", "郑", "谢", "韩", "唐", "冯", "于", "董", "萧", "程", "曹",
    "袁", "邓", "许", "傅", "沈", "曾", "彭", "吕", "苏", "卢", "蒋", "蔡", "贾", "丁", "魏", "薛",
    "叶", "阎", "余", "潘", "杜", "戴", "夏", "钟", "汪", "田", "任", "姜", "范", "方", "石", "姚",
    "谭", "廖", "邹", "熊", "金", "陆", "郝", "孔", "白", "崔", "康", "毛", "邱", "秦", "江", "史",
    "顾", "侯", "邵", "孟", "龙", "万", "段", "欧阳", "司马",
];
const GIVEN: &[char] = &[
    '伟', '芳', '娜', '敏', '静', '丽', '强', '磊', '军', '洋', '勇', '艳', '杰', '娟', '涛', '明',
    '超', '秀', '霞', '平', '刚', '桂', '英', '华', '文', '玉', '兰', '建', '国', '红', '志', '海',
    '燕', '鹏', '春', '晓', '东', '辉', '宇', '琳', '俊', '婷', '雪', '斌', '浩', '凯', '峰', '欣',
    '慧', '瑞', '鑫', '佳', '子', '梓', '涵', '思', '宁', '博', '家', '云',
];
/// Mongolian given names as written in Chinese (Ordos is in Inner Mongolia).
const MONGOLIAN: &[&str] = &[
    "巴特尔",
    "乌云其其格",
    "额尔敦",
    "其木格",
    "那仁",
    "苏日娜",
    "朝鲁",
    "萨仁高娃",
    "格日勒图",
    "阿拉坦",
    "斯琴",
    "宝音",
];
const TITLES: &[&str] = &[
    "党员",
    "党员",
    "党员",
    "党员",
    "党员",
    "党员",
    "书记",
    "副书记",
    "组织委员",
    "宣传委员",
    "纪检委员",
    "干部",
];

struct Tree {
    /// `org` column values (name paths below the city), by level 1..=4.
    levels: [Vec<String>; 4],
}

impl Tree {
    fn count(&self) -> usize {
        1 + self.levels.iter().map(Vec::len).sum::<usize>()
    }
}

/// 10 counties × 15 townships × 16 villages × 7 branches = 19,361 organisations with
/// the city. Smaller user counts shrink the lower levels to keep ~15 users per branch.
fn gen_tree(users: usize) -> Tree {
    let scale = (users as f64 / 300_000.0).min(1.0);
    let townships = ((15.0 * scale.sqrt()).round() as usize).max(2);
    let villages = ((16.0 * scale.sqrt()).round() as usize).max(2);
    let branches = 7;
    let mut levels: [Vec<String>; 4] = Default::default();
    let n = PLACE_CHARS.len();
    let place = |i: usize, salt: usize| -> String {
        let a = PLACE_CHARS[(i + salt) % n];
        let b = PLACE_CHARS[(i / n + 3 * salt + 1) % n];
        format!("{a}{b}")
    };
    for (ci, county) in COUNTIES.iter().enumerate() {
        levels[0].push((*county).to_owned());
        for t in 0..townships {
            let tname = format!(
                "{county}/{}{}",
                place(t, ci),
                TOWNSHIP_SUFFIX[t % TOWNSHIP_SUFFIX.len()]
            );
            levels[1].push(tname.clone());
            for v in 0..villages {
                let vname = format!(
                    "{tname}/{}{}",
                    place(v, ci + t),
                    VILLAGE_SUFFIX[v % VILLAGE_SUFFIX.len()]
                );
                levels[2].push(vname.clone());
                for numeral in NUMERALS.iter().take(branches) {
                    levels[3].push(format!("{vname}/第{numeral}党支部"));
                }
            }
        }
    }
    Tree { levels }
}

fn username(i: usize) -> String {
    format!("u{i:06}")
}

/// The CSV the import endpoint takes: 90 % of people in branches, the rest in village,
/// township and county offices; 5 % of phone numbers hidden; a third with e-mail.
fn gen_csv(tree: &Tree, users: usize) -> Vec<u8> {
    let mut rng = Rng(0x0048_5549_544f_4e47);
    let mut out = String::with_capacity(users * 110);
    out.push_str("username,name,org,title,phone,phone_hidden,email,tags\n");
    for i in 0..users {
        let r = rng.below(100);
        let level = match r {
            0..90 => 3,
            90..96 => 2,
            96..99 => 1,
            _ => 0,
        };
        let org = rng.pick(&tree.levels[level]).clone();
        let name = if rng.below(100) < 4 {
            (*rng.pick(MONGOLIAN)).to_owned()
        } else {
            let mut s = (*rng.pick(SURNAMES)).to_owned();
            s.push(*rng.pick(GIVEN));
            if rng.below(3) > 0 {
                s.push(*rng.pick(GIVEN));
            }
            s
        };
        let prefix = *rng.pick(&[
            "130", "131", "133", "135", "136", "137", "138", "139", "150", "151", "152", "155",
            "158", "159", "177", "180", "183", "186", "187", "189", "199",
        ]);
        let phone = format!("{prefix}{:08}", rng.below(100_000_000));
        let hidden = rng.below(100) < 5;
        let email = if rng.below(3) == 0 {
            format!("{}@ordos.gov.cn", username(i))
        } else {
            String::new()
        };
        let title = *rng.pick(TITLES);
        let tags = if title == "党员" {
            "党员"
        } else {
            "党员;干部"
        };
        out.push_str(&format!(
            "{},{name},{org},{title},{phone},{},{email},{tags}\n",
            username(i),
            u8::from(hidden)
        ));
    }
    out.into_bytes()
}

// ---------------------------------------------------------------------------------------
// HTTP client: one keep-alive HTTP/1.1 connection per simulated client.

struct Conn {
    tx: SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Self> {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self { tx })
    }

    async fn call(
        &mut self,
        method: hyper::Method,
        path: &str,
        token: Option<&str>,
        ctype: &str,
        body: Bytes,
    ) -> Result<(u16, Bytes)> {
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "127.0.0.1");
        if !body.is_empty() {
            b = b.header(hyper::header::CONTENT_TYPE, ctype);
        }
        if let Some(t) = token {
            b = b.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        self.tx.ready().await?;
        let resp = self.tx.send_request(b.body(Full::new(body))?).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    async fn json(
        &mut self,
        method: hyper::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(u16, Bytes)> {
        let bytes = body.map_or_else(Bytes::new, |v| Bytes::from(v.to_string()));
        self.call(method, path, token, "application/json", bytes)
            .await
    }
}

/// Decode a 200 response or fail with the API's error body.
fn ok_json((status, body): (u16, Bytes), what: &str) -> Result<Value> {
    if status != 200 {
        bail!(
            "{what}: HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
    }
    Ok(serde_json::from_slice(&body)?)
}

#[allow(clippy::disallowed_methods)] // the bench shell owns the clock: it measures latency
fn now() -> Instant {
    Instant::now()
}

#[allow(clippy::disallowed_methods)] // meeting times are wall-clock milliseconds
fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

// ---------------------------------------------------------------------------------------
// Latency bookkeeping.

#[derive(Debug, Default)]
struct Samples {
    ok_ms: Vec<f64>,
    errors: usize,
    first_error: Option<String>,
    wall_s: f64,
}

impl Samples {
    fn merge(&mut self, o: Samples) {
        self.ok_ms.extend(o.ok_ms);
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
    fn pct(&self, p: f64) -> f64 {
        if self.ok_ms.is_empty() {
            return f64::NAN;
        }
        let mut v = self.ok_ms.clone();
        v.sort_by(f64::total_cmp);
        let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
        v[idx.min(v.len() - 1)]
    }
    fn json(&self, db: &str, op: &str, concurrency: usize, pass: &Pass) -> Value {
        let r = |x: f64| (x * 100.0).round() / 100.0;
        let n = self.ok_ms.len();
        json!({
            "bench": "admin", "db": db, "op": op, "concurrency": concurrency, "pass": pass.name,
            "think_ms": if op == "login" { pass.login_think_ms } else { pass.think_ms },
            "requests": n, "errors": self.errors,
            "p50_ms": r(self.pct(50.0)), "p90_ms": r(self.pct(90.0)), "p99_ms": r(self.pct(99.0)),
            "max_ms": r(self.pct(100.0)),
            "mean_ms": r(if n == 0 { f64::NAN } else { self.ok_ms.iter().sum::<f64>() / n as f64 }),
            "throughput_rps": r(if self.wall_s > 0.0 { n as f64 / self.wall_s } else { 0.0 }),
            "first_error": self.first_error,
        })
    }
}

/// What each client knows about its account.
#[derive(Debug, Clone)]
struct Account {
    id: i64,
    username: String,
    token: String,
}

/// Run `per_client(i, conn)` on every client at once (each on its own connection, all
/// released together) and collect the latencies each reports.
async fn phase<F, Fut>(conns: &mut Vec<Conn>, per_client: F) -> Result<Samples>
where
    F: Fn(usize, Conn) -> Fut,
    Fut: std::future::Future<Output = (Conn, Samples)> + Send + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(conns.len() + 1));
    let mut tasks = Vec::with_capacity(conns.len());
    for (i, c) in conns.drain(..).enumerate() {
        let b = Arc::clone(&barrier);
        let fut = per_client(i, c);
        tasks.push(tokio::spawn(async move {
            b.wait().await;
            fut.await
        }));
    }
    barrier.wait().await;
    let t0 = now();
    let mut all = Samples::default();
    for t in tasks {
        let (c, s) = t.await?;
        conns.push(c);
        all.merge(s);
    }
    all.wall_s = t0.elapsed().as_secs_f64();
    Ok(all)
}

/// One pass over the four operations: `paced` (each client sends a request every
/// 0–2×`think_ms`, open loop) or `closed` (no pause: a client's next request leaves as
/// soon as its last one is answered, so the pass measures throughput).
#[derive(Debug, Clone, Copy)]
struct Pass {
    name: &'static str,
    think_ms: u64,
    login_think_ms: u64,
}

/// Open-loop pacing of one client: request k is due at a fixed time (the previous due
/// time plus a pause drawn uniformly in 0..2×mean), whenever the previous answer came.
/// Latency counts from the due time, so a request that leaves late because the server
/// was slow with the one before is charged the wait (no coordinated omission).
struct Pace {
    due: Instant,
    mean_ms: u64,
    rng: Rng,
}

impl Pace {
    fn new(mean_ms: u64, seed: u64) -> Self {
        let mut rng = Rng(seed);
        // Clients start spread over one mean interval, not all at once.
        let first = if mean_ms == 0 {
            0
        } else {
            rng.below(mean_ms as usize * 1000) as u64
        };
        Self {
            due: now() + Duration::from_micros(first),
            mean_ms,
            rng,
        }
    }

    /// Wait until the next request is due and return when it was due.
    async fn next(&mut self) -> Instant {
        if self.mean_ms == 0 {
            return now();
        }
        let due = self.due;
        tokio::time::sleep_until(due.into()).await;
        let us = self.rng.below(2 * self.mean_ms as usize * 1000 + 1) as u64;
        self.due = due + Duration::from_micros(us);
        due
    }
}

/// Time one request; a non-200 answer counts as an error, not a sample.
async fn timed(
    conn: &mut Conn,
    s: &mut Samples,
    t: Instant,
    method: hyper::Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Option<Bytes> {
    match conn.json(method, path, token, body).await {
        Ok((200, b)) => {
            s.ok_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            Some(b)
        }
        Ok((st, b)) => {
            s.errors += 1;
            if s.first_error.is_none() {
                s.first_error = Some(format!(
                    "HTTP {st}: {}",
                    String::from_utf8_lossy(&b[..b.len().min(200)])
                ));
            }
            None
        }
        Err(e) => {
            s.errors += 1;
            if s.first_error.is_none() {
                s.first_error = Some(format!("{e:#}"));
            }
            None
        }
    }
}

// ---------------------------------------------------------------------------------------
// One database.

fn run_db(o: &Opts, db: &str, url: &str) -> Result<(Value, String)> {
    let load_start = loadavg();
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(o.server_threads)
        .thread_name("admin-server")
        .enable_all()
        .build()?;
    let cfg = admin_api::AdminConfig {
        database_url: url.to_owned(),
        bootstrap: admin_api::BootstrapConfig {
            root_org_name: CITY.to_owned(),
            system_admin_password: PASSWORD.to_owned(),
            security_admin_password: PASSWORD.to_owned(),
            audit_admin_password: PASSWORD.to_owned(),
            ..Default::default()
        },
        // Everything else as `huitong serve` defaults: pool size, argon2id cost (19 MiB,
        // 2 passes), body limits.
        ..Default::default()
    };
    eprintln!(
        "[{db}] admin plane: pool {} connections, argon2id {} KiB × {} passes",
        cfg.max_connections, cfg.argon2_memory_kib, cfg.argon2_iterations
    );
    let state = server_rt.block_on(admin_api::AdminState::connect(
        cfg,
        Arc::new(admin_api::SystemClock),
        Arc::new(admin_api::OsEntropy),
    ))?;
    let addr = server_rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?;
        // Connection info, as `huitong serve` provides: the admin plane audits the peer.
        let svc =
            admin_api::router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(l, svc).await {
                eprintln!("admin server failed: {e}");
            }
        });
        anyhow::Ok(addr)
    })?;
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(o.client_threads)
        .thread_name("admin-clients")
        .enable_all()
        .build()?;
    let server = server_rt.handle().clone();
    let r = client_rt.block_on(drive(o, db, addr, state.clone(), server));
    drop(client_rt);
    drop(state);
    server_rt.shutdown_timeout(Duration::from_secs(5));
    let (summary, mut note) = r?;
    note.push_str(&format!(
        "\n  load average (1/5/15 min) at start {load_start}, at end {}",
        loadavg()
    ));
    Ok((summary, note))
}

async fn drive(
    o: &Opts,
    db: &str,
    addr: SocketAddr,
    state: admin_api::AdminState,
    server: tokio::runtime::Handle,
) -> Result<(Value, String)> {
    let mut admin = Conn::open(addr).await?;
    let login = |u: &str| json!({"username": u, "password": PASSWORD});
    let sys = ok_json(
        admin
            .json(
                hyper::Method::POST,
                "/api/v1/auth/login",
                None,
                Some(&login("sysadmin")),
            )
            .await?,
        "sysadmin login",
    )?;
    let sys_token = sys["access_token"]
        .as_str()
        .ok_or_else(|| anyhow!("no access token"))?
        .to_owned();
    let me = ok_json(
        admin
            .json(hyper::Method::GET, "/api/v1/me", Some(&sys_token), None)
            .await?,
        "me",
    )?;
    let root_id = me["org_id"].as_i64().ok_or_else(|| anyhow!("me.org_id"))?;

    // --- Import -----------------------------------------------------------------------
    let tree = gen_tree(o.users);
    let csv = Bytes::from(gen_csv(&tree, o.users));
    eprintln!(
        "[{db}] importing {} users in {} organisations ({:.1} MB CSV)",
        o.users,
        tree.count(),
        csv.len() as f64 / 1e6
    );
    let t = now();
    let (status, body) = admin
        .call(
            hyper::Method::POST,
            &format!("/api/v1/users/import?org_id={root_id}&create_orgs=true"),
            Some(&sys_token),
            "text/csv; charset=utf-8",
            csv,
        )
        .await?;
    let import_s = t.elapsed().as_secs_f64();
    let report = ok_json((status, body), "import")?;
    let created = report["created"].as_u64().unwrap_or(0) as usize;
    let orgs_created = report["orgs_created"].as_u64().unwrap_or(0) as usize;
    let import_line = json!({
        "bench": "admin", "db": db, "op": "import", "users": o.users, "created": created,
        "orgs_created": orgs_created, "failed": report["failed"], "import_s": (import_s * 100.0).round() / 100.0,
        "rows_per_s": (o.users as f64 / import_s).round(),
    });
    println!("{import_line}");
    if created != o.users || orgs_created + 1 != tree.count() {
        bail!(
            "import created {created} users and {orgs_created} orgs, expected {} and {}: {report}",
            o.users,
            tree.count() - 1
        );
    }

    // --- Accounts: one per client, spread over the tree ----------------------------------
    let step = o.users / o.concurrency.min(o.users);
    let names: Vec<String> = (0..o.concurrency.min(o.users))
        .map(|i| username(i * step))
        .collect();
    eprintln!(
        "[{db}] setting passwords of {} accounts (argon2id, as the security admin's reset does)",
        names.len()
    );
    let t_hash = now();
    let ids = {
        let st = state.clone();
        let names = names.clone();
        server
            .spawn(async move {
                let mut ids = Vec::with_capacity(names.len());
                for n in &names {
                    let id: i64 = sqlx::query_scalar("SELECT id FROM users WHERE username = $1")
                        .bind(n)
                        .fetch_one(st.pool())
                        .await?;
                    ids.push(id);
                }
                let mut set = tokio::task::JoinSet::new();
                for (id, n) in ids.iter().zip(&names) {
                    let st = st.clone();
                    let (id, n) = (*id, n.clone());
                    set.spawn(async move { st.set_password(id, &n, PASSWORD, false).await });
                }
                while let Some(r) = set.join_next().await {
                    r??;
                }
                anyhow::Ok(ids)
            })
            .await??
    };
    // The passwords were set `hash_slots` at a time, as logins verify them: this is the
    // argon2 rate the machine affords while the server does nothing else.
    let hash_rps = names.len() as f64 / t_hash.elapsed().as_secs_f64();
    let mut conns = Vec::with_capacity(names.len());
    for _ in 0..names.len() {
        conns.push(Conn::open(addr).await?);
    }
    let c = conns.len();
    let mut lines = vec![import_line];
    // Paced logins: `login_load` × the affordable rate, spread over the clients.
    let login_rate = (o.login_load * hash_rps).max(0.1);
    let mut passes = vec![Pass {
        name: "paced",
        think_ms: o.think_ms,
        login_think_ms: ((c as f64 / login_rate) * 1000.0).round() as u64,
    }];
    if o.closed_loop {
        passes.push(Pass {
            name: "closed",
            think_ms: 0,
            login_think_ms: 0,
        });
    }
    let subtree_ids = Arc::new({
        let orgs = ok_json(
            admin
                .json(
                    hyper::Method::GET,
                    &format!("/api/v1/orgs?parent_id={root_id}"),
                    Some(&sys_token),
                    None,
                )
                .await?,
            "orgs",
        )
        .ok();
        subtree_sample(&mut admin, &sys_token, root_id, orgs).await?
    });
    let mut results: Vec<(Pass, [Samples; 4])> = Vec::new();
    for pass in passes {
        let p = pass.name;
        // --- (a) login ----------------------------------------------------------------
        eprintln!(
            "[{db}] {p} (a) login: {c} clients × {} logins (mean pause {} ms; argon2 affords {hash_rps:.1}/s)",
            o.login_rounds, pass.login_think_ms
        );
        let accounts = Arc::new(std::sync::Mutex::new(vec![None::<Account>; c]));
        let login_s = {
            let names = Arc::new(names.clone());
            let ids = Arc::new(ids.clone());
            let accounts = Arc::clone(&accounts);
            let rounds = o.login_rounds;
            let think_ms = pass.login_think_ms;
            phase(&mut conns, move |i, mut conn| {
                let names = Arc::clone(&names);
                let ids = Arc::clone(&ids);
                let accounts = Arc::clone(&accounts);
                async move {
                    let mut s = Samples::default();
                    let body = json!({"username": names[i], "password": PASSWORD});
                    let mut pace = Pace::new(think_ms, 0xa0a0 + i as u64);
                    for _ in 0..rounds {
                        let t = pace.next().await;
                        if let Some(b) = timed(
                            &mut conn,
                            &mut s,
                            t,
                            hyper::Method::POST,
                            "/api/v1/auth/login",
                            None,
                            Some(&body),
                        )
                        .await
                        {
                            let v: Value = serde_json::from_slice(&b).unwrap_or_default();
                            if let Some(t) = v["access_token"].as_str()
                                && let Ok(mut a) = accounts.lock()
                            {
                                a[i] = Some(Account {
                                    id: ids[i],
                                    username: names[i].clone(),
                                    token: t.to_owned(),
                                });
                            }
                        }
                    }
                    (conn, s)
                }
            })
            .await?
        };
        let mut line = login_s.json(db, "login", c, &pass);
        if pass.login_think_ms > 0 {
            line["offered_rps"] = json!((login_rate * 100.0).round() / 100.0);
            line["argon2_affordable_rps"] = json!((hash_rps * 100.0).round() / 100.0);
        }
        println!("{line}");
        lines.push(line);
        let accounts: Vec<Account> = accounts
            .lock()
            .map_err(|_| anyhow!("poisoned"))?
            .iter()
            .flatten()
            .cloned()
            .collect();
        if accounts.len() != c {
            bail!(
                "only {} of {c} logins succeeded: {:?}",
                accounts.len(),
                login_s.first_error
            );
        }
        let accounts = Arc::new(accounts);

        // --- (b) subtree listing ------------------------------------------------------
        // Subtree admins page through their county, township or village; the bench uses
        // the system admin's token (scope: the whole city), so every request is
        // authorised and the scope check still runs.
        eprintln!(
            "[{db}] {p} (b) list: {c} clients × {} pages of 50 over {} subtrees",
            o.rounds,
            subtree_ids.len()
        );
        let list_s = {
            let subtree_ids = Arc::clone(&subtree_ids);
            let token = Arc::new(sys_token.clone());
            let rounds = o.rounds;
            let think_ms = pass.think_ms;
            phase(&mut conns, move |i, mut conn| {
                let subtree_ids = Arc::clone(&subtree_ids);
                let token = Arc::clone(&token);
                async move {
                    let mut s = Samples::default();
                    let mut rng = Rng(0xb0b0 + i as u64);
                    let mut pace = Pace::new(think_ms, 0xb1b1 + i as u64);
                    for _ in 0..rounds {
                        let t = pace.next().await;
                        let org = *rng.pick(&subtree_ids);
                        let page = rng.below(5);
                        let path = format!(
                            "/api/v1/users?org_id={org}&subtree=true&limit=50&offset={}",
                            page * 50
                        );
                        timed(
                            &mut conn,
                            &mut s,
                            t,
                            hyper::Method::GET,
                            &path,
                            Some(&token),
                            None,
                        )
                        .await;
                    }
                    (conn, s)
                }
            })
            .await?
        };
        let line = list_s.json(db, "list_users_subtree", c, &pass);
        println!("{line}");
        lines.push(line);

        // --- (c) meeting creation -----------------------------------------------------
        eprintln!(
            "[{db}] {p} (c) create meeting: {c} clients × {} meetings",
            o.rounds
        );
        let start_ms = wall_ms() + 86_400_000;
        let create_s = {
            let accounts = Arc::clone(&accounts);
            let rounds = o.rounds;
            let think_ms = pass.think_ms;
            phase(&mut conns, move |i, mut conn| {
                let accounts = Arc::clone(&accounts);
                async move {
                    let mut s = Samples::default();
                    let me = &accounts[i];
                    let peers: Vec<i64> = (1..=5)
                        .map(|k| accounts[(i + k * 7) % accounts.len()].id)
                        .collect();
                    let mut pace = Pace::new(think_ms, 0xc0c0 + i as u64);
                    for r in 0..rounds {
                        let t = pace.next().await;
                        let body = json!({
                            "title": format!("{}的组织生活会 第{}次", me.username, r + 1),
                            "starts_at_ms": start_ms + (r as i64) * 3_600_000,
                            "duration_minutes": 90,
                            "passcode": "2026",
                            "invitees": {"users": peers},
                        });
                        timed(
                            &mut conn,
                            &mut s,
                            t,
                            hyper::Method::POST,
                            "/api/v1/meetings",
                            Some(&me.token),
                            Some(&body),
                        )
                        .await;
                    }
                    (conn, s)
                }
            })
            .await?
        };
        let line = create_s.json(db, "create_meeting", c, &pass);
        println!("{line}");
        lines.push(line);

        // --- (d) sign-in submission ---------------------------------------------------
        // The system admin schedules `rounds` city-wide meetings (invitees: the whole
        // tree) and opens a sign-in in each; every client signs in to each once (a new
        // record each time), as participants do when a roll call opens.
        let mut signins = Vec::new();
        for r in 0..o.rounds {
            let m = ok_json(
                admin
                    .json(
                        hyper::Method::POST,
                        "/api/v1/meetings",
                        Some(&sys_token),
                        Some(&json!({
                            "title": format!("全市党员大会 {p} 第{}场", r + 1),
                            "starts_at_ms": wall_ms(),
                            "duration_minutes": 120,
                            "org_id": root_id,
                            "invitees": {"orgs": [{"id": root_id, "subtree": true}]},
                        })),
                    )
                    .await?,
                "city meeting",
            )?;
            let mid = m["id"].as_i64().ok_or_else(|| anyhow!("meeting id"))?;
            let s = ok_json(
                admin
                    .json(
                        hyper::Method::POST,
                        &format!("/api/v1/meetings/{mid}/signins"),
                        Some(&sys_token),
                        Some(&json!({"deadline_ms": wall_ms() + 3_600_000})),
                    )
                    .await?,
                "start sign-in",
            )?;
            let sid = s["id"].as_i64().ok_or_else(|| anyhow!("sign-in id"))?;
            signins.push((mid, sid));
        }
        eprintln!(
            "[{db}] {p} (d) sign-in: {c} clients × {} sign-ins",
            signins.len()
        );
        let signin_s = {
            let accounts = Arc::clone(&accounts);
            let signins = Arc::new(signins.clone());
            let think_ms = pass.think_ms;
            phase(&mut conns, move |i, mut conn| {
                let accounts = Arc::clone(&accounts);
                let signins = Arc::clone(&signins);
                async move {
                    let mut s = Samples::default();
                    let mut pace = Pace::new(think_ms, 0xd0d0 + i as u64);
                    for (mid, sid) in signins.iter() {
                        let t = pace.next().await;
                        timed(
                            &mut conn,
                            &mut s,
                            t,
                            hyper::Method::POST,
                            &format!("/api/v1/meetings/{mid}/signins/{sid}/submit"),
                            Some(&accounts[i].token),
                            None,
                        )
                        .await;
                    }
                    (conn, s)
                }
            })
            .await?
        };
        let line = signin_s.json(db, "signin_submit", c, &pass);
        println!("{line}");
        lines.push(line);
        // The roll call must have counted every submission.
        let (mid, sid) = signins[0];
        let res = ok_json(
            admin
                .json(
                    hyper::Method::GET,
                    &format!("/api/v1/meetings/{mid}/signins/{sid}"),
                    Some(&sys_token),
                    None,
                )
                .await?,
            "sign-in results",
        )?;
        eprintln!("[{db}] {p} sign-in 1 counted {} signed", signed_count(&res));
        results.push((pass, [login_s, list_s, create_s, signin_s]));
    }

    let r2 = |x: f64| (x * 100.0).round() / 100.0;
    let [login_s, list_s, create_s, signin_s] = &results[0].1;
    let mut summary = json!({
        "bench": "admin", "db": db, "users": o.users,
        "import_s": r2(import_s),
        "p99_login_ms": r2(login_s.pct(99.0)),
        "p99_list_ms": r2(list_s.pct(99.0)),
        "p99_create_meeting_ms": r2(create_s.pct(99.0)),
        "p99_signin_ms": r2(signin_s.pct(99.0)),
        "concurrency": c,
        "think_ms": o.think_ms,
        "login_offered_rps": r2(login_rate),
    });
    let rps = |s: &Samples| r2(s.ok_ms.len() as f64 / s.wall_s);
    let mut note = format!(
        "[{db}] import {import_s:.1} s ({:.0} rows/s, {} orgs); argon2 affords {hash_rps:.1} logins/s",
        o.users as f64 / import_s,
        tree.count(),
    );
    let mut errors = 0;
    for (pass, [login_s, list_s, create_s, signin_s]) in &results {
        errors += login_s.errors + list_s.errors + create_s.errors + signin_s.errors;
        note.push_str(&format!(
            "\n  {}: p50/p99 ms: login {:.0}/{:.0} ({:.1}/s), list {:.1}/{:.1} ({:.0}/s), \
             create meeting {:.1}/{:.1} ({:.0}/s), sign-in {:.1}/{:.1} ({:.0}/s)",
            pass.name,
            login_s.pct(50.0),
            login_s.pct(99.0),
            rps(login_s),
            list_s.pct(50.0),
            list_s.pct(99.0),
            rps(list_s),
            create_s.pct(50.0),
            create_s.pct(99.0),
            rps(create_s),
            signin_s.pct(50.0),
            signin_s.pct(99.0),
            rps(signin_s),
        ));
        if pass.name == "closed" {
            summary["closed_loop_rps"] = json!({
                "login": rps(login_s), "list": rps(list_s),
                "create_meeting": rps(create_s), "signin": rps(signin_s),
            });
        }
    }
    note.push_str(&format!("\n  {errors} errors"));
    summary["errors"] = json!(errors);
    Ok((summary, note))
}

/// Organisations to list: every county plus a spread of townships and villages, so the
/// listed subtrees range from ~30,000 users to ~100.
async fn subtree_sample(
    admin: &mut Conn,
    token: &str,
    root_id: i64,
    counties: Option<Value>,
) -> Result<Vec<i64>> {
    let ids_of = |v: &Value| -> Vec<i64> {
        v.as_array()
            .map(|a| a.iter().filter_map(|o| o["id"].as_i64()).collect())
            .unwrap_or_default()
    };
    let counties = counties.as_ref().map(ids_of).unwrap_or_default();
    if counties.is_empty() {
        return Ok(vec![root_id]);
    }
    let mut out = counties.clone();
    for c in counties.iter().take(4) {
        let towns = ok_json(
            admin
                .json(
                    hyper::Method::GET,
                    &format!("/api/v1/orgs?parent_id={c}"),
                    Some(token),
                    None,
                )
                .await?,
            "townships",
        )?;
        let towns = ids_of(&towns);
        out.extend(towns.iter().take(5));
        if let Some(t) = towns.first() {
            let villages = ok_json(
                admin
                    .json(
                        hyper::Method::GET,
                        &format!("/api/v1/orgs?parent_id={t}"),
                        Some(token),
                        None,
                    )
                    .await?,
                "villages",
            )?;
            out.extend(ids_of(&villages).iter().take(5));
        }
    }
    Ok(out)
}

fn signed_count(res: &Value) -> String {
    for k in ["signed", "signed_count", "total_signed"] {
        if let Some(n) = res[k].as_i64() {
            return n.to_string();
        }
        if let Some(n) = res["totals"][k].as_i64() {
            return n.to_string();
        }
    }
    "?".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_has_five_levels_and_about_20000_orgs() {
        let t = gen_tree(300_000);
        assert_eq!(t.count(), 19_361);
        assert!(t.levels[3].iter().all(|p| p.split('/').count() == 4));
        let mut uniq = t.levels[3].clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), t.levels[3].len(), "sibling names collide");
    }

    #[test]
    fn csv_rows_are_well_formed() {
        let t = gen_tree(1000);
        let csv = gen_csv(&t, 1000);
        let text = String::from_utf8(csv).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1001);
        assert!(lines[1..].iter().all(|l| l.split(',').count() == 8));
    }

    #[test]
    fn database_is_replaced_in_url() {
        assert_eq!(
            with_database("postgres://u:p@127.0.0.1:5432/huitong?sslmode=disable", "b"),
            "postgres://u:p@127.0.0.1:5432/b?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://u@localhost", "b"),
            "postgres://u@localhost/b"
        );
    }
}
