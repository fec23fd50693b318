//! Runs the meetings' MCUs in this process. The hub asks for them (`host` action `mcu`,
//! `signaling.mcu_auto`, a meeting seed); each MCU joins its meeting over an in-process
//! signalling connection and reaches the SFU's media port over loopback like any other
//! client (`mcu::participant`), so the same MCU can later run on a node of its own.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use anyhow::Context;
use mcu::engine::{EngineConfig, TerminalSettings};
use mcu::layout::LayoutSet;
use mcu::participant::McuClientConfig;
use mcu::shell::{McuCommand, McuHandle, SignalChannel};
use mcu::text::TextRenderer;
use signaling::{Hub, McuRequest};

use crate::config::McuConfig;

/// Starts taking the hub's MCU requests. `media_ip` is an address of this host from
/// which the SFU's advertised media address is reachable.
pub fn start(hub: Arc<Hub>, cfg: McuConfig, media_ip: IpAddr) -> anyhow::Result<()> {
    if !cfg.enabled {
        return Ok(());
    }
    let mut layouts = LayoutSet::default();
    if let Some(f) = &cfg.layouts_file {
        let json = std::fs::read_to_string(f)
            .with_context(|| format!("reading mcu.layouts_file {}", f.display()))?;
        layouts
            .add_from_json(&json)
            .with_context(|| format!("mcu.layouts_file {}", f.display()))?;
    }
    layouts.get(&cfg.layout).with_context(|| "mcu.layout")?;
    // Every mix would fail at its first picture; say so once, before accepting meetings.
    if !mcu::engine::encoder_available(cfg.encoder.backend()) {
        anyhow::bail!(
            "mcu.encoder = {:?} but libx264 build 164 (Debian libx264-164) is not installed",
            cfg.encoder
        );
    }
    let font = match &cfg.font {
        Some(f) => match std::fs::read(f) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                tracing::warn!(font = %f.display(), error = %e, "MCU font unreadable: mixes carry no names");
                None
            }
        },
        None => None,
    };
    let mut requests = hub.mcu_requests();
    tokio::spawn(async move {
        let mut running: HashMap<String, McuHandle> = HashMap::new();
        while let Some(req) = requests.recv().await {
            running.retain(|_, h| !h.status().done);
            match req {
                McuRequest::Start { meeting, options } => {
                    if let Some(h) = running.get(&meeting) {
                        if let Some(l) = options.layout {
                            h.command(McuCommand::SetLayout(l));
                        }
                        continue;
                    }
                    let client = McuClientConfig {
                        meeting: meeting.clone(),
                        mix: TerminalSettings {
                            layout: options.layout.unwrap_or_else(|| cfg.layout.clone()),
                            width: cfg.width,
                            height: cfg.height,
                            fps: cfg.fps,
                            bitrate_bps: cfg.bitrate_bps,
                            self_view: false,
                        },
                        content_fps: cfg.content_fps,
                        content_bitrate_bps: cfg.content_bitrate_bps,
                        engine: EngineConfig {
                            decoder: cfg.decoder.backend(),
                            encoder: cfg.encoder.backend(),
                            ..EngineConfig::default()
                        },
                        ..McuClientConfig::default()
                    };
                    let text = font.clone().and_then(|b| TextRenderer::from_bytes(b).ok());
                    let conn = signaling::local::connect(Arc::clone(&hub));
                    let signal = SignalChannel {
                        to_server: conn.to_server,
                        from_server: conn.from_server,
                    };
                    match mcu::shell::spawn(signal, client, layouts.clone(), text, media_ip) {
                        Ok(h) => {
                            tracing::info!(%meeting, "MCU started");
                            running.insert(meeting, h);
                        }
                        Err(e) => tracing::error!(%meeting, error = %e, "MCU could not start"),
                    }
                }
                McuRequest::Stop { meeting } => {
                    if let Some(h) = running.remove(&meeting) {
                        h.command(McuCommand::Stop);
                    }
                }
            }
        }
    });
    Ok(())
}
