//! Janus 1.1.2 (Debian) with a private configuration generated at run time: only the
//! VideoRoom plugin and the HTTP transport, ICE on the server namespace's veth only.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};

use anyhow::{Context, Result, bail};

use crate::netns::Netns;
use crate::{Opts, in_ns};

pub const ROOM: u64 = 4242;
const HTTP_PORT: u16 = 18088;
const JANUS: &str = "/usr/bin/janus";
const LIB: &str = "/usr/lib/x86_64-linux-gnu/janus";

pub fn start(ns: &Netns, dir: &Path, opts: &Opts) -> Result<(Child, SocketAddr)> {
    if !Path::new(JANUS).is_file() {
        bail!("{JANUS} is missing (Debian package `janus`)");
    }
    let conf = dir.join("conf");
    let plugins = dir.join("plugins");
    let transports = dir.join("transports");
    for d in [&conf, &plugins, &transports] {
        std::fs::create_dir_all(d)?;
    }
    // Janus loads every plugin in its folder: give it a folder with just the two we use.
    std::os::unix::fs::symlink(
        format!("{LIB}/plugins/libjanus_videoroom.so"),
        plugins.join("libjanus_videoroom.so"),
    )?;
    std::os::unix::fs::symlink(
        format!("{LIB}/transports/libjanus_http.so"),
        transports.join("libjanus_http.so"),
    )?;
    let ip = ns.server_ip;
    std::fs::write(
        conf.join("janus.jcfg"),
        format!(
            r#"general: {{
  configs_folder = "{conf}"
  plugins_folder = "{plugins}"
  transports_folder = "{transports}"
  events_folder = "{dir}/none"
  loggers_folder = "{dir}/none"
  interface = "{ip}"
  debug_level = 3
  session_timeout = 0
}}
certificates: {{ }}
media: {{ }}
nat: {{
  nice_debug = false
  ice_enforce_list = "{dev}"
}}
plugins: {{ }}
transports: {{ }}
loggers: {{ }}
events: {{ broadcast = false }}
"#,
            conf = conf.display(),
            plugins = plugins.display(),
            transports = transports.display(),
            dir = dir.display(),
            dev = ns.server_dev,
        ),
    )?;
    std::fs::write(
        conf.join("janus.plugin.videoroom.jcfg"),
        format!(
            r#"general: {{ }}
room-{ROOM}: {{
  description = "huitong bench"
  publishers = {publishers}
  bitrate = 0
  fir_freq = 0
  audiocodec = "opus"
  videocodec = "h264"
  h264_profile = "42e01f"
  audiolevel_ext = true
  record = false
}}
"#,
            publishers = opts.publishers + 2,
        ),
    )?;
    std::fs::write(
        conf.join("janus.transport.http.jcfg"),
        format!(
            r#"general: {{
  json = "plain"
  base_path = "/janus"
  http = true
  port = {HTTP_PORT}
  ip = "{ip}"
  https = false
}}
admin: {{ admin_http = false }}
cors: {{ }}
"#
        ),
    )?;
    let child = in_ns(Some(&ns.server), JANUS)
        .arg("-C")
        .arg(conf.join("janus.jcfg"))
        .arg("-F")
        .arg(&conf)
        .args(["-o", "-N", "-L"])
        .arg(dir.join("janus.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting janus")?;
    Ok((child, SocketAddr::new(ip.into(), HTTP_PORT)))
}
