//! The one typed configuration of `huitong`: embedded defaults, then `huitong.toml`
//! (or `--config FILE`), then `HUITONG_*` environment variables, where `__` separates
//! sections (`HUITONG_MEDIA__UDP_LISTEN=0.0.0.0:8081`). `deploy/huitong.toml` documents
//! every key.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where state lives (TLS material now; database and recordings later).
    pub data_dir: PathBuf,
    /// `tracing` filter, e.g. `info` or `info,sfu=debug`.
    pub log: String,
    pub http: HttpConfig,
    pub media: MediaConfig,
    pub signaling: signaling::HubConfig,
    /// The admin plane (directory, auth, scheduling, audit). Its database lives under
    /// `data_dir` unless `admin.database_url` points elsewhere.
    pub admin: admin_api::AdminConfig,
    /// The in-process MCU (docs/mcu.md): what it publishes when a meeting asks for one.
    pub mcu: McuConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct McuConfig {
    /// Run MCUs in this process. Off: `host` `mcu` is refused with `unavailable`.
    pub enabled: bool,
    /// Layout when the request names none.
    pub layout: String,
    /// The mixed picture.
    pub width: usize,
    pub height: usize,
    pub fps: u32,
    pub bitrate_bps: u32,
    /// The content (dual) stream while someone shares.
    pub content_fps: u32,
    pub content_bitrate_bps: u32,
    /// Font for participant names (a CJK font; face 0 of a .ttc). Missing: no labels.
    pub font: Option<PathBuf>,
    /// Extra layouts: a JSON file as described in docs/mcu.md.
    pub layouts_file: Option<PathBuf>,
    /// H.264 decoder for the venues' video.
    pub decoder: McuDecoder,
    /// H.264 encoder for the mixed outputs.
    pub encoder: McuEncoder,
}

/// Which library encodes the MCU's mixed outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum McuEncoder {
    /// OpenH264, built in: two temporal layers, so the SFU can halve a mix's frame rate
    /// for a weak receiver.
    #[default]
    Openh264,
    /// libx264 (build 164, GPL), opened at run time: 1.4 dB more PSNR at the same bitrate
    /// for a quarter less encode CPU, one temporal layer, Constrained Baseline. The server
    /// refuses to start without it.
    X264,
    /// libx264 with CABAC (Main profile at the MCU's setting): better still, for
    /// deployments whose every receiver decodes Main (browsers do).
    #[serde(rename = "x264-high")]
    X264High,
}

impl McuEncoder {
    pub fn backend(self) -> mcu::engine::EncoderBackend {
        use mcu::engine::EncoderBackend;
        match self {
            Self::Openh264 => EncoderBackend::OpenH264,
            Self::X264 => EncoderBackend::X264,
            Self::X264High => EncoderBackend::X264High,
        }
    }
}

/// Which library decodes the venues' video in the MCU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum McuDecoder {
    /// FFmpeg's libavcodec when installed (about a third less decode CPU), else OpenH264.
    #[default]
    Auto,
    /// OpenH264, built in.
    Openh264,
    /// libavcodec only; a meeting's mix fails to decode without it.
    Libavcodec,
}

impl McuDecoder {
    pub fn backend(self) -> mcu::engine::DecoderBackend {
        use mcu::engine::DecoderBackend;
        match self {
            Self::Auto => DecoderBackend::Auto,
            Self::Openh264 => DecoderBackend::OpenH264,
            Self::Libavcodec => DecoderBackend::Libav,
        }
    }
}

impl Default for McuConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            layout: "4".into(),
            width: 1920,
            height: 1080,
            fps: 15,
            bitrate_bps: 2_000_000,
            content_fps: 5,
            content_bitrate_bps: 1_500_000,
            font: Some(PathBuf::from("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc")),
            layouts_file: None,
            decoder: McuDecoder::Auto,
            encoder: McuEncoder::Openh264,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// One TCP port for HTTP, HTTPS and WebSocket signalling (TLS is detected per connection).
    pub listen: SocketAddr,
    /// PEM certificate chain; when unset a self-signed one is made under data_dir/tls.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Extra names for the self-signed certificate besides localhost and the advertised IP.
    pub tls_names: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// The one UDP port for all WebRTC media.
    pub udp_listen: SocketAddr,
    /// Address clients reach the media port at (put into ICE candidates). Default: the
    /// listen IP if it is specific, otherwise this host's primary IPv4 address.
    pub advertise_ip: Option<IpAddr>,
    /// Minimum time between keyframe requests for one layer of one track.
    pub keyframe_interval_ms: u64,
    /// Participants this node accepts.
    pub max_participants: usize,
    /// A media timer due this close is run at once instead of after a sleep.
    pub timer_slack_us: u64,
    /// Price of a NACK round on loss-protected downlinks, relative to a terminal's own
    /// uplink ([`sfu::protect::TxPolicy::SFU_DOWNLINK`]): higher sends more FEC from the
    /// SFU and repairs sooner.
    pub downlink_fec_round_price: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            log: "info".into(),
            http: HttpConfig::default(),
            media: MediaConfig::default(),
            signaling: signaling::HubConfig::default(),
            admin: admin_api::AdminConfig::default(),
            mcu: McuConfig::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: ([0, 0, 0, 0], 8080).into(),
            tls_cert: None,
            tls_key: None,
            tls_names: vec![],
        }
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            udp_listen: ([0, 0, 0, 0], 8081).into(),
            advertise_ip: None,
            keyframe_interval_ms: 500,
            max_participants: 2000,
            timer_slack_us: 1000,
            downlink_fec_round_price: sfu::protect::DOWNLINK_ROUND_PENALTY_SCALE,
        }
    }
}

/// Top-level keys of [`Config`]; see [`Config::load`].
const SECTIONS: [&str; 7] = ["data_dir", "log", "http", "media", "signaling", "admin", "mcu"];

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(#[from] Box<figment::Error>);

impl Config {
    /// Layers defaults, the TOML file (if present) and the environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(f) => fig = fig.merge(Toml::file_exact(f)),
            None => fig = fig.merge(Toml::file("huitong.toml")),
        }
        // Only variables naming a configuration section are configuration: HUITONG_CONFIG,
        // HUITONG_LOG_FILTER and test settings share the prefix but are not keys.
        let env = Env::prefixed("HUITONG_")
            .filter(|k| {
                let top = k
                    .as_str()
                    .split("__")
                    .next()
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                SECTIONS.contains(&top.as_str())
            })
            .split("__");
        fig = fig.merge(env);
        let cfg: Config = fig.extract().map_err(|e| ConfigError(Box::new(e)))?;
        let price = cfg.media.downlink_fec_round_price;
        if !(price.is_finite() && price >= 0.0) {
            let msg = format!("media.downlink_fec_round_price must be a number ≥ 0, not {price}");
            return Err(ConfigError(Box::new(figment::Error::from(msg))));
        }
        Ok(cfg)
    }
}

#[cfg(test)]
// figment's Jail dictates the closure's error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn defaults_then_file_then_env() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "huitong.toml",
                "log = \"debug\"\n[media]\nkeyframe_interval_ms = 300\n",
            )?;
            jail.set_env("HUITONG_MEDIA__UDP_LISTEN", "127.0.0.1:9999");
            jail.set_env("HUITONG_DATA_DIR", "/tmp/x");
            jail.set_env("HUITONG_LOG_FILTER", "debug");
            jail.set_env("HUITONG_TEST_POSTGRES_URL", "postgres://x");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.log, "debug");
            assert_eq!(c.media.keyframe_interval_ms, 300);
            assert_eq!(c.media.udp_listen, "127.0.0.1:9999".parse().unwrap());
            assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
            assert_eq!(c.http.listen.port(), 8080);
            assert_eq!(
                c.media.downlink_fec_round_price,
                sfu::protect::DOWNLINK_ROUND_PENALTY_SCALE
            );
            jail.set_env("HUITONG_MEDIA__DOWNLINK_FEC_ROUND_PRICE", "2.5");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.media.downlink_fec_round_price, 2.5);
            jail.set_env("HUITONG_MEDIA__DOWNLINK_FEC_ROUND_PRICE", "-1");
            let e = Config::load(None).expect_err("a negative price is refused");
            assert!(e.to_string().contains("downlink_fec_round_price"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_errors() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("huitong.toml", "[media]\nudp_lisen = \"0.0.0.0:1\"\n")?;
            assert!(Config::load(None).is_err());
            Ok(())
        });
    }

    #[test]
    fn shipped_example_config_parses() {
        // In a Jail too: it holds figment's lock, so the other tests' HUITONG_* variables
        // are not set while this one reads the environment.
        figment::Jail::expect_with(|_| {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/huitong.toml");
            let c = Config::load(Some(&path)).expect("deploy/huitong.toml must match Config");
            // The example states the defaults.
            let default = MediaConfig::default().downlink_fec_round_price;
            assert_eq!(c.media.downlink_fec_round_price, default);
            Ok(())
        });
    }
}
