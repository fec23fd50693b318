//! The two namespaces of the benchmark, joined by a veth pair with 127.79.0.x addresses
//! (`route_localnet=1`), as `../shared/tools/lossy-link` does but without loss rules.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{Context, Result, bail};

pub struct Netns {
    pub server: String,
    pub client: String,
    pub server_ip: Ipv4Addr,
    pub client_ip: Ipv4Addr,
    /// Name of the server-side veth (Janus is told to gather candidates on it only).
    pub server_dev: String,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Netns {
    pub fn setup() -> Result<Netns> {
        let n = Netns {
            server: "hbench-srv".into(),
            client: "hbench-cli".into(),
            server_ip: Ipv4Addr::new(127, 79, 0, 1),
            client_ip: Ipv4Addr::new(127, 79, 0, 2),
            server_dev: "hbvs".into(),
        };
        n.teardown();
        ip(&["netns", "add", &n.server])?;
        ip(&["netns", "add", &n.client])?;
        ip(&[
            "link", "add", "hbvs", "type", "veth", "peer", "name", "hbvc",
        ])?;
        ip(&["link", "set", "hbvs", "netns", &n.server])?;
        ip(&["link", "set", "hbvc", "netns", &n.client])?;
        for (ns, dev, addr) in [
            (&n.server, "hbvs", n.server_ip),
            (&n.client, "hbvc", n.client_ip),
        ] {
            let localnet = format!("net.ipv4.conf.{dev}.route_localnet=1");
            let out = Command::new("ip")
                .args(["netns", "exec", ns, "sysctl", "-qw"])
                .args(["net.ipv4.conf.all.route_localnet=1", &localnet])
                .output()?;
            if !out.status.success() {
                bail!("sysctl route_localnet in {ns} failed");
            }
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(n)
    }

    fn teardown(&self) {
        let _ = ip(&["netns", "del", &self.server]);
        let _ = ip(&["netns", "del", &self.client]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.teardown();
    }
}
