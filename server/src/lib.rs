//! `huitong serve`: every plane in one process on embedded defaults.

pub mod admin_cli;
pub mod config;
pub mod directory;
pub mod http;
pub mod mcu_supervisor;
pub mod tls;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

pub use config::Config;

/// A running server.
pub struct Running {
    pub http_addr: SocketAddr,
    pub udp_addr: SocketAddr,
    pub advertised: SocketAddr,
    serve: tokio::task::JoinHandle<()>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish (bounded), and returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.serve).await;
    }

    /// Waits until the server ends on its own.
    pub async fn wait(self) {
        let _ = self.serve.await;
    }
}

/// The address put into ICE candidates.
fn advertise_ip(cfg: &Config) -> IpAddr {
    if let Some(ip) = cfg.media.advertise_ip {
        return ip;
    }
    let ip = cfg.media.udp_listen.ip();
    if !ip.is_unspecified() {
        return ip;
    }
    // The source address the kernel would use towards a public address: no packet is sent.
    UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| s.connect((Ipv4Addr::new(192, 0, 2, 1), 9)).map(|_| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// Retention: entries older than `admin.audit_retention_days` go once a day (the chain
/// stays verifiable because the oldest go first).
async fn prune_audit_daily(admin: admin_api::AdminState) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(24 * 3600));
    loop {
        every.tick().await;
        match admin.prune_audit().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(entries = n, "audit log pruned"),
            Err(e) => tracing::warn!(error = %e, "audit pruning failed"),
        }
    }
}

/// The admin plane's configuration: its database lives under the server's `data_dir`
/// unless `admin.database_url` points elsewhere. `serve` and `admin` commands share it.
pub fn admin_config(cfg: &Config) -> admin_api::AdminConfig {
    let mut admin = cfg.admin.clone();
    admin.data_dir = cfg.data_dir.clone();
    admin
}

/// Binds the sockets and starts every plane.
pub async fn start(cfg: Config) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data_dir {}", cfg.data_dir.display()))?;
    let udp = UdpSocket::bind(cfg.media.udp_listen)
        .with_context(|| format!("binding media UDP {}", cfg.media.udp_listen))?;
    let udp_addr = udp.local_addr()?;
    let advertised = SocketAddr::new(advertise_ip(&cfg), udp_addr.port());
    let sfu_cfg = sfu::SfuConfig {
        candidates: vec![advertised],
        downlink_protection: sfu::protect::TxPolicy {
            // `Config::load` checked it is finite and ≥ 0.
            round_penalty_scale: cfg.media.downlink_fec_round_price,
            ..sfu::protect::TxPolicy::SFU_DOWNLINK
        },
        keyframe_interval: std::time::Duration::from_millis(cfg.media.keyframe_interval_ms),
        max_participants: cfg.media.max_participants,
        timer_slack: std::time::Duration::from_micros(cfg.media.timer_slack_us),
        ..Default::default()
    };
    let (sfu, events) = sfu::spawn(udp, sfu_cfg)?;
    let hub = signaling::Hub::start(sfu, events, cfg.signaling.clone());
    // The MCU reaches the media port at the advertised address, as any client would.
    mcu_supervisor::start(Arc::clone(&hub), cfg.mcu.clone(), advertised.ip()).context("starting the MCU")?;

    let admin = admin_api::AdminState::connect(
        admin_config(&cfg),
        Arc::new(admin_api::SystemClock),
        Arc::new(admin_api::OsEntropy),
    )
    .await
    .context("starting the admin plane")?;
    hub.set_directory(Arc::new(directory::AdminDirectory(admin.clone())));
    tokio::spawn(prune_audit_daily(admin.clone()));

    let mut tls_names = cfg.http.tls_names.clone();
    tls_names.push(advertised.ip().to_string());
    let tls = tls::server_config(
        cfg.http.tls_cert.as_deref(),
        cfg.http.tls_key.as_deref(),
        &cfg.data_dir,
        &tls_names,
    )?;
    let tcp = TcpListener::bind(cfg.http.listen)
        .await
        .with_context(|| format!("binding HTTP {}", cfg.http.listen))?;
    let http_addr = tcp.local_addr()?;
    // `tap_io` is a no-op wrapper that gives axum a listener it can take connection info from.
    let listener = axum::serve::ListenerExt::tap_io(tls::SniffListener::new(tcp, tls)?, |_| {});
    let app = http::app(Arc::clone(&hub), admin_api::router(admin));
    let (shutdown, mut rx) = tokio::sync::watch::channel(false);
    let serve = tokio::spawn(async move {
        let stop = async move {
            let _ = rx.wait_for(|v| *v).await;
        };
        // Connection info lets the admin plane audit where each request came from.
        let svc = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, svc)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    tracing::info!(%http_addr, %udp_addr, %advertised, "huitong serving");
    Ok(Running {
        http_addr,
        udp_addr,
        advertised,
        serve,
        shutdown,
    })
}
