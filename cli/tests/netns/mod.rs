//! Network-namespace labs for multi-host tests: hosts on bridged segments, built and torn
//! down by the test itself. Needs root and `ip` (iproute2); [`Lab::new`] returns `None` and
//! prints why when they are missing, so tests skip with a clear message.
//!
//! Every namespace, interface and address is created here and removed on drop (processes
//! still running inside are killed first). Traffic stays inside the lab: namespaces have no
//! route out.
//!
//! Topologies: [`Lab::segment`] (a switch), [`Lab::host`] / [`Lab::host_via`] (a machine),
//! [`Lab::router`] (a NAT router between a public segment and a LAN, endpoint-independent or
//! symmetric, with iptables MASQUERADE).
//!
//! Run by hand: `sudo cargo test -p mesh-cli --test lan -- --nocapture` (LAN) or
//! `--test internet` (NAT, relays, hole punching); while a test runs, `ip netns list` shows
//! its namespaces (`am<pid>-...`), `ip netns exec <ns> bash` gets a shell on a host, and
//! `ip netns exec <router ns> conntrack -L` (package conntrack) shows NAT mappings. Daemon logs
//! are written next to each test home (`<home>.log`).

#![allow(dead_code, missing_docs)]

use std::net::Ipv4Addr;
use std::process::Command;

/// A lab: a set of namespaces with a common name prefix.
pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    next_port: u32,
    /// Daemons the lab runs itself (an IGD), reaped when it is torn down.
    daemons: Vec<std::process::Child>,
}

/// A segment (Ethernet broadcast domain): a bridge inside its own namespace.
#[derive(Clone, Debug)]
pub struct Segment {
    pub ns: String,
    pub subnet: [u8; 3],
}

/// How a router translates addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// Masquerade keeping the source port when it can: the same inside address and port
    /// always map to the same outside port (endpoint-independent mapping, as most home
    /// routers do). Hole punching works through it.
    EndpointIndependent,
    /// A fresh random outside port for every new flow (`--random-fully`): a symmetric NAT,
    /// as in many carrier-grade and corporate NATs. Hole punching fails through it.
    Symmetric,
}

/// A NAT router between a public segment and a private LAN.
#[derive(Clone, Debug)]
pub struct Router {
    pub ns: String,
    /// Its address on the public side.
    pub wan_ip: Ipv4Addr,
    /// Its address on the LAN (the LAN's gateway).
    pub lan_ip: Ipv4Addr,
}

/// A host: a namespace with one interface on a segment.
#[derive(Clone, Debug)]
pub struct Host {
    pub ns: String,
    pub ip: Ipv4Addr,
}

/// Runs a command, panicking with its output if it fails.
#[track_caller]
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Skips a test with a message, or fails it under CI.
#[track_caller]
pub fn skip<T>(tag: &str, why: &str) -> Option<T> {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{tag}: {why} (CI=true: this test must run, not skip)");
    }
    eprintln!("SKIPPED: {tag}: {why}");
    None
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

impl Lab {
    /// A new lab named `tag`, or `None` (with a message) if this machine cannot host one.
    /// Under CI (`CI=true`) a lab that cannot be built fails the test instead: a suite
    /// that passes by skipping proves nothing.
    pub fn new(tag: &str) -> Option<Lab> {
        if !is_root() {
            return skip(tag, "network-namespace tests need root (run as root or with sudo)");
        }
        if Command::new("ip")
            .arg("-V")
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            return skip(tag, "the `ip` command (iproute2) is missing; .ci/run installs it");
        }
        let prefix = format!("am{}-{tag}", std::process::id());
        Some(Lab {
            prefix,
            namespaces: Vec::new(),
            next_port: 0,
            daemons: Vec::new(),
        })
    }

    fn add_ns(&mut self, name: &str) -> String {
        let ns = format!("{}-{name}", self.prefix);
        sh(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    /// A namespace with only a loopback interface: a machine with no network at all.
    pub fn offline(&mut self, name: &str) -> String {
        self.add_ns(name)
    }

    /// A segment `10.<a>.<b>.0/24` (subnet `[10, a, b]`).
    pub fn segment(&mut self, name: &str, subnet: [u8; 3]) -> Segment {
        let ns = self.add_ns(name);
        sh(&["ip", "-n", &ns, "link", "add", "br0", "type", "bridge"]);
        // mDNS is multicast: do not let snooping decide who hears it.
        sh(&[
            "ip",
            "-n",
            &ns,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        sh(&["ip", "-n", &ns, "link", "set", "br0", "up"]);
        Segment { ns, subnet }
    }

    /// Plugs interface `ifname` of namespace `ns` into `seg`.
    fn plug(&mut self, ns: &str, ifname: &str, seg: &Segment) {
        self.next_port += 1;
        let port = format!("p{}", self.next_port);
        sh(&[
            "ip", "-n", ns, "link", "add", ifname, "type", "veth", "peer", "name", &port, "netns", &seg.ns,
        ]);
        sh(&["ip", "-n", &seg.ns, "link", "set", &port, "master", "br0"]);
        sh(&["ip", "-n", &seg.ns, "link", "set", &port, "up"]);
    }

    /// A host on `seg` with address `.<last>`.
    pub fn host(&mut self, name: &str, seg: &Segment, last: u8) -> Host {
        let ns = self.add_ns(name);
        self.plug(&ns, "eth0", seg);
        let [a, b, c] = seg.subnet;
        let ip = Ipv4Addr::new(a, b, c, last);
        sh(&["ip", "-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        // Multicast (mDNS) leaves through the LAN interface.
        sh(&["ip", "-n", &ns, "route", "add", "224.0.0.0/4", "dev", "eth0"]);
        Host { ns, ip }
    }

    /// A NAT router: `.wan_last` on `wan`, `.1` on `lan`, forwarding LAN traffic out with
    /// the given NAT; unsolicited traffic from the outside is dropped silently, as home
    /// routers do.
    pub fn router(&mut self, name: &str, wan: &Segment, wan_last: u8, lan: &Segment, nat: Nat) -> Router {
        self.router_with(name, wan, wan_last, lan, nat, true)
    }

    /// A NAT router that answers unsolicited traffic as a plain Linux box does (a TCP reset,
    /// an ICMP port unreachable) instead of dropping it (`quiet` false): harder on hole
    /// punching, whose first packets are unsolicited on the other side.
    pub fn router_with(
        &mut self,
        name: &str,
        wan: &Segment,
        wan_last: u8,
        lan: &Segment,
        nat: Nat,
        quiet: bool,
    ) -> Router {
        let ns = self.add_ns(name);
        self.plug(&ns, "wan", wan);
        self.plug(&ns, "lan", lan);
        let [a, b, c] = wan.subnet;
        let wan_ip = Ipv4Addr::new(a, b, c, wan_last);
        let [a, b, c] = lan.subnet;
        let lan_ip = Ipv4Addr::new(a, b, c, 1);
        sh(&["ip", "-n", &ns, "addr", "add", &format!("{wan_ip}/24"), "dev", "wan"]);
        sh(&["ip", "-n", &ns, "addr", "add", &format!("{lan_ip}/24"), "dev", "lan"]);
        sh(&["ip", "-n", &ns, "link", "set", "wan", "up"]);
        sh(&["ip", "-n", &ns, "link", "set", "lan", "up"]);
        sh(&["ip", "netns", "exec", &ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let mut rule = vec![
            "ip",
            "netns",
            "exec",
            &ns,
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "wan",
            "-j",
            "MASQUERADE",
        ];
        if nat == Nat::Symmetric {
            rule.push("--random-fully");
        }
        sh(&rule);
        // Like a home router: unsolicited traffic from the outside is dropped silently
        // (not answered with a reset), to the router and to the LAN alike, except what a
        // port forwarding (UPnP, [`Lab::upnp`]) sends on to the LAN.
        for chain in ["INPUT", "FORWARD"].into_iter().filter(|_| quiet) {
            sh(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "iptables",
                "-A",
                chain,
                "-i",
                "wan",
                "-m",
                "conntrack",
                "--ctstate",
                "NEW",
                "-m",
                "conntrack",
                "!",
                "--ctstate",
                "DNAT",
                "-j",
                "DROP",
            ]);
        }
        Router { ns, wan_ip, lan_ip }
    }

    /// Runs a UPnP IGD (Debian's `miniupnpd`, nftables backend) on `router`, serving its
    /// LAN: hosts there may have ports of the router's public address forwarded to them.
    /// `None` (with a message, or a failure under CI) when miniupnpd is not installed.
    pub fn upnp(&mut self, router: &Router) -> Option<()> {
        self.port_mapper(router, true)
    }

    /// The same, speaking UPnP only when `igd` (PCP and NAT-PMP always).
    pub fn port_mapper(&mut self, router: &Router, igd: bool) -> Option<()> {
        if Command::new("miniupnpd").arg("--version").output().is_err() {
            return skip(
                &self.prefix,
                "miniupnpd is missing; .ci/run installs it (miniupnpd-nftables)",
            );
        }
        let dir = std::env::temp_dir().join(format!("{}-{}-upnp", self.prefix, router.ns));
        std::fs::create_dir_all(&dir).expect("upnp dir");
        let rules = dir.join("upnp.nft");
        std::fs::write(
            &rules,
            "table inet upnp {\n\
             chain forward { type filter hook forward priority -5; policy accept; jump miniupnpd; }\n\
             chain miniupnpd { }\n\
             chain prerouting { type nat hook prerouting priority -105; policy accept; jump prerouting_miniupnpd; }\n\
             chain postrouting { type nat hook postrouting priority 95; policy accept; jump postrouting_miniupnpd; }\n\
             chain prerouting_miniupnpd { }\n\
             chain postrouting_miniupnpd { }\n\
             }\n",
        )
        .expect("nft rules");
        sh(&["ip", "netns", "exec", &router.ns, "nft", "-f", &rules.to_string_lossy()]);
        let [a, b, c, _] = router.lan_ip.octets();
        let conf = dir.join("miniupnpd.conf");
        std::fs::write(
            &conf,
            format!(
                "ext_ifname=wan\nlistening_ip=lan\nport=0\nenable_natpmp=yes\nenable_upnp={}\n\
                 secure_mode=yes\nuuid=3d3cec3a-8cf0-11e0-98ee-001a6bd2d07a\n\
                 upnp_table_name=upnp\nupnp_nat_table_name=upnp\nupnp_forward_chain=miniupnpd\n\
                 upnp_nat_chain=prerouting_miniupnpd\nupnp_nat_postrouting_chain=postrouting_miniupnpd\n\
                 allow 1024-65535 {a}.{b}.{c}.0/24 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n",
                if igd { "yes" } else { "no" }
            ),
        )
        .expect("miniupnpd.conf");
        // Runs until the lab's namespaces are torn down (their processes are killed).
        let igd = Command::new("ip")
            .args(["netns", "exec", &router.ns, "miniupnpd", "-d", "-f"])
            .arg(&conf)
            // A pid file of its own: two labs' IGDs in one test run must not find each
            // other's (the second would refuse to start).
            .arg("-P")
            .arg(dir.join("miniupnpd.pid"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("miniupnpd.log")).expect("log"))
            .spawn()
            .expect("miniupnpd");
        self.daemons.push(igd);
        Some(())
    }

    /// The port forwardings a router's IGD holds now (its nftables DNAT rules).
    pub fn forwarded(&self, router: &Router) -> String {
        let out = self.exec(
            &router.ns,
            &["nft", "list", "chain", "inet", "upnp", "prerouting_miniupnpd"],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A host on `seg` with address `.<last>` and its default route through `gateway`.
    pub fn host_via(&mut self, name: &str, seg: &Segment, last: u8, gateway: Ipv4Addr) -> Host {
        let h = self.host(name, seg, last);
        sh(&[
            "ip",
            "-n",
            &h.ns,
            "route",
            "add",
            "default",
            "via",
            &gateway.to_string(),
        ]);
        h
    }

    /// Runs a command inside `ns` (for the test's own checks).
    pub fn exec(&self, ns: &str, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .output()
            .expect("ip netns exec")
    }

    /// Moves a host to another address of its LAN (`.<last>`), as when a laptop joins
    /// another network: its old address is gone, its default route kept.
    pub fn renumber_host(&self, host: &mut Host, last: u8, gateway: Ipv4Addr) {
        let [a, b, c, _] = host.ip.octets();
        let ip = Ipv4Addr::new(a, b, c, last);
        sh(&[
            "ip",
            "-n",
            &host.ns,
            "addr",
            "del",
            &format!("{}/24", host.ip),
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", &host.ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        sh(&[
            "ip",
            "-n",
            &host.ns,
            "route",
            "replace",
            "default",
            "via",
            &gateway.to_string(),
        ]);
        host.ip = ip;
    }

    /// Gives a router another public address (`.<last>` of its public segment), as an
    /// ISP does: connections translated to the old one lead nowhere.
    pub fn renumber_router(&self, router: &mut Router, last: u8) {
        let [a, b, c, _] = router.wan_ip.octets();
        let ip = Ipv4Addr::new(a, b, c, last);
        sh(&[
            "ip",
            "-n",
            &router.ns,
            "addr",
            "del",
            &format!("{}/24", router.wan_ip),
            "dev",
            "wan",
        ]);
        sh(&["ip", "-n", &router.ns, "addr", "add", &format!("{ip}/24"), "dev", "wan"]);
        router.wan_ip = ip;
    }

    /// Takes a host's link down or up (a cable pulled or plugged back).
    pub fn link(&self, host: &Host, up: bool) {
        sh(&[
            "ip",
            "-n",
            &host.ns,
            "link",
            "set",
            "eth0",
            if up { "up" } else { "down" },
        ]);
    }
}

impl Host {
    /// A command run inside this host's namespace.
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            // Kill whatever still runs inside, then remove the namespace (its interfaces go
            // with it).
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        for mut d in self.daemons.drain(..) {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}
