//! Network topologies for tests, built from Linux network namespaces, veth pairs, bridges,
//! nftables and `tc` (the kernel layer of DESIGN §7). Needs root, `ip` (iproute2), `nft` and,
//! for rate limits, `tc`.
//!
//! A [`Net`] is one topology: an "internet" (a bridge in a namespace of its own, addresses in
//! 198.18.0.0/16, the benchmarking range that nothing on a real network uses), hosts on it
//! with public addresses, and NAT routers with hosts behind them on private LANs (10.K.0.0/24,
//! or 100.64.K.0/24 behind a carrier-grade NAT). Everything exists only inside the
//! namespaces; dropping the `Net` deletes them, also when a test panics. Namespaces left by a
//! process that was killed are deleted by the next [`Net::new`].
//!
//! NAT behaviours ([`Nat`]), all with a forward policy that drops unsolicited input like a
//! home router:
//!
//! | kind | mapping | filtering |
//! |---|---|---|
//! | [`Nat::FullCone`] | endpoint-independent (port kept) | none: anyone may send to a mapped port |
//! | [`Nat::AddressRestricted`] | endpoint-independent | from addresses the host has sent to |
//! | [`Nat::PortRestricted`] | endpoint-independent | from the exact address and port sent to |
//! | [`Nat::Symmetric`] | a random port per destination | from the exact address and port |
//!
//! Full-cone and address-restricted NATs forward unsolicited UDP to the first host behind them.
//! Options per router ([`Router`]): UDP blocked, random loss (`nft numgen`), a rate limit on the
//! WAN side (`tc tbf`), and hairpinning: without it (the default) a host cannot reach a neighbour
//! through the router's public address; with it, a datagram from the LAN to a public mapping
//! of the router reaches the host behind that mapping, from the sender's public mapping.
//!
//! [`Host::udp_socket`] opens a socket inside a host, so tests can check what a topology lets
//! through from their own process.

pub mod sim;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// Why a topology could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command failed.
    #[error("`{command}` failed: {message}")]
    Command {
        /// The command line.
        command: String,
        /// Its stderr, or why it could not run.
        message: String,
    },
}

/// NAT behaviour of a router (see the crate documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// Endpoint-independent mapping and no filtering.
    FullCone,
    /// Endpoint-independent mapping, filtering by address.
    AddressRestricted,
    /// Endpoint-independent mapping, filtering by address and port (Linux masquerade).
    PortRestricted,
    /// A random port per destination, filtering by address and port.
    Symmetric,
}

impl Nat {
    /// A short name, for test output.
    pub fn name(self) -> &'static str {
        match self {
            Nat::FullCone => "full-cone",
            Nat::AddressRestricted => "address-restricted",
            Nat::PortRestricted => "port-restricted",
            Nat::Symmetric => "symmetric",
        }
    }
}

/// Options of a router beyond its NAT kind.
#[derive(Debug, Clone, Default)]
pub struct RouterOptions {
    /// Drop all UDP from the LAN (only TCP gets out).
    pub udp_blocked: bool,
    /// Drop this percentage of forwarded packets, both ways.
    pub loss_percent: u8,
    /// Limit what leaves the WAN side to this many kbit/s.
    pub rate_kbit: Option<u32>,
    /// Hairpin: datagrams from the LAN to one of the router's public UDP mappings go to the
    /// host behind it (translated to come from the sender's public address).
    pub hairpin: bool,
}

/// A namespace with an address: something that runs programs.
#[derive(Debug, Clone)]
pub struct Host {
    /// The namespace.
    pub ns: String,
    /// Its address (public, or on its router's LAN).
    pub addr: Ipv4Addr,
    /// Its global IPv6 address, in a topology built with [`Net::with_ipv6`].
    pub addr6: Option<Ipv6Addr>,
}

impl Host {
    /// `program` to run inside this host (`ip netns exec NS program`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }

    /// The prefix that runs a program inside this host: `["ip", "netns", "exec", NS]`.
    pub fn prefix(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.ns]
    }

    /// A UDP socket on `port` (0: any) of all this host's IPv4 addresses, made inside the
    /// host's namespace and usable from anywhere in the calling process.
    pub fn udp_socket(&self, port: u16) -> Result<std::net::UdpSocket, Error> {
        let failed = |message: String| Error::Command {
            command: format!("bind UDP port {port} in {}", self.ns),
            message,
        };
        let ns = std::fs::File::open(format!("/run/netns/{}", self.ns))
            .map_err(|e| failed(e.to_string()))?;
        // A socket stays in the namespace it was made in; setns changes only the calling
        // thread's, so a thread of its own enters the namespace and ends.
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};
                    use std::os::fd::AsFd;
                    move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Network))
                        .map_err(|e| failed(format!("setns: {e}")))?;
                    std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))
                        .map_err(|e| failed(e.to_string()))
                })
                .join()
                .unwrap_or_else(|_| Err(failed("the thread panicked".to_owned())))
        })
    }
}

/// A NAT router: a WAN side (public, or on a carrier-grade NAT's LAN) and a LAN bridge.
#[derive(Debug, Clone)]
pub struct Router {
    /// The namespace.
    pub ns: String,
    /// The WAN address (what the hosts behind it look like from outside).
    pub wan: Ipv4Addr,
    /// The NAT kind.
    pub nat: Nat,
    lan_prefix: [u8; 3],
    hosts: u8,
    /// The LAN's IPv6 prefix number (`2001:db8:K::/64`), when it has IPv6.
    lan6: Option<u16>,
}

/// One topology; see the crate documentation.
#[derive(Debug)]
pub struct Net {
    prefix: String,
    internet: String,
    namespaces: Vec<String>,
    next_public: u16,
    next_lan: u8,
    next_port: u16,
    ipv6: bool,
}

/// Namespaces of this crate start with this; the process id follows.
const NS_PREFIX: &str = "nsim";

impl Net {
    /// An empty internet. Deletes namespaces that processes which no longer exist left behind.
    pub fn new() -> Result<Net, Error> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        remove_stale();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{NS_PREFIX}{}-{n}-", std::process::id());
        let mut net = Net {
            internet: format!("{prefix}inet"),
            prefix,
            namespaces: Vec::new(),
            next_public: 2,
            next_lan: 1,
            next_port: 0,
            ipv6: false,
        };
        net.add_ns(&net.internet.clone())?;
        net.exec(&net.internet.clone(), &["ip", "link", "add", "name", "br0", "type", "bridge"])?;
        net.exec(&net.internet.clone(), &["ip", "addr", "add", "198.18.0.1/16", "dev", "br0"])?;
        net.exec(&net.internet.clone(), &["ip", "link", "set", "br0", "up"])?;
        Ok(net)
    }

    /// As [`Net::new`], with IPv6 as well: public addresses in 2001:db8:ffff::/64, each LAN of a
    /// router on the internet in 2001:db8:K::/64, no NAT for IPv6, and the same stateful filter
    /// in the routers (only replies and forwarded LAN traffic pass). Routers behind a
    /// carrier-grade NAT stay IPv4 only.
    pub fn with_ipv6() -> Result<Net, Error> {
        let mut net = Net::new()?;
        net.ipv6 = true;
        let inet = net.internet.clone();
        net.no_dad(&inet)?;
        net.exec(&inet, &["sh", "-c", "echo 0 > /proc/sys/net/ipv6/conf/br0/accept_dad"])?;
        net.exec(
            &inet,
            &["ip", "-6", "addr", "add", "2001:db8:ffff::1/64", "dev", "br0", "nodad"],
        )?;
        net.exec(&inet, &["sh", "-c", "echo 1 > /proc/sys/net/ipv6/conf/all/forwarding"])?;
        Ok(net)
    }

    /// A host on the internet with a public address.
    pub fn public_host(&mut self, name: &str) -> Result<Host, Error> {
        let ns = format!("{}{name}", self.prefix);
        self.add_ns(&ns)?;
        let addr = self.public_addr();
        self.plug_into_internet(&ns, "eth0")?;
        self.exec(&ns, &["ip", "addr", "add", &format!("{addr}/16"), "dev", "eth0"])?;
        self.exec(&ns, &["ip", "link", "set", "eth0", "up"])?;
        let addr6 = self.public_v6(&ns, "eth0", addr)?;
        Ok(Host { ns, addr, addr6 })
    }

    /// With IPv6: a public address on `ifname` derived from the IPv4 one, and the default route.
    fn public_v6(&self, ns: &str, ifname: &str, v4: Ipv4Addr) -> Result<Option<Ipv6Addr>, Error> {
        if !self.ipv6 {
            return Ok(None);
        }
        let [_, _, c, d] = v4.octets();
        let addr6 = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, u16::from(c), u16::from(d));
        self.exec(
            ns,
            &["ip", "-6", "addr", "add", &format!("{addr6}/64"), "dev", ifname, "nodad"],
        )?;
        self.exec(ns, &["ip", "-6", "route", "add", "default", "via", "2001:db8:ffff::1"])?;
        Ok(Some(addr6))
    }

    /// A NAT router on the internet.
    pub fn router(
        &mut self,
        name: &str,
        nat: Nat,
        options: RouterOptions,
    ) -> Result<Router, Error> {
        let ns = format!("{}{name}", self.prefix);
        self.add_ns(&ns)?;
        let wan = self.public_addr();
        self.plug_into_internet(&ns, "wan")?;
        self.exec(&ns, &["ip", "addr", "add", &format!("{wan}/16"), "dev", "wan"])?;
        self.exec(&ns, &["ip", "link", "set", "wan", "up"])?;
        let wan6 = self.public_v6(&ns, "wan", wan)?;
        let k = self.lan_number();
        let mut router = self.finish_router(ns, wan, nat, [10, k, 0], &options)?;
        if let Some(wan6) = wan6 {
            // The LAN's prefix, routed by the internet to this router.
            let k6 = u16::from(k);
            let lan6 = Ipv6Addr::new(0x2001, 0xdb8, k6, 0, 0, 0, 0, 1);
            let ns = router.ns.clone();
            self.exec(
                &ns,
                &["ip", "-6", "addr", "add", &format!("{lan6}/64"), "dev", "lan", "nodad"],
            )?;
            self.exec(&ns, &["sh", "-c", "echo 1 > /proc/sys/net/ipv6/conf/all/forwarding"])?;
            let prefix = format!("2001:db8:{k6:x}::/64");
            let inet = self.internet.clone();
            self.exec(&inet, &["ip", "-6", "route", "add", &prefix, "via", &wan6.to_string()])?;
            run_stdin(&["ip", "netns", "exec", &ns, "nft", "-f", "-"], &ruleset6(&options))?;
            router.lan6 = Some(k6);
        }
        Ok(router)
    }

    /// A NAT router whose WAN side is on `outer`'s LAN (a home router behind a carrier-grade
    /// NAT).
    pub fn router_behind(
        &mut self,
        outer: &mut Router,
        name: &str,
        nat: Nat,
        options: RouterOptions,
    ) -> Result<Router, Error> {
        let ns = format!("{}{name}", self.prefix);
        self.add_ns(&ns)?;
        let wan = self.attach(outer, &ns, "wan")?;
        let k = self.lan_number();
        self.finish_router(ns, wan, nat, [10, k, 0], &options)
    }

    /// A host on `router`'s LAN.
    pub fn host_behind(&mut self, router: &mut Router, name: &str) -> Result<Host, Error> {
        let ns = format!("{}{name}", self.prefix);
        self.add_ns(&ns)?;
        let addr = self.attach(router, &ns, "eth0")?;
        let addr6 = match router.lan6 {
            Some(k6) => {
                let a6 = Ipv6Addr::new(0x2001, 0xdb8, k6, 0, 0, 0, 0, u16::from(router.hosts) + 1);
                self.exec(
                    &ns,
                    &["ip", "-6", "addr", "add", &format!("{a6}/64"), "dev", "eth0", "nodad"],
                )?;
                let gateway = Ipv6Addr::new(0x2001, 0xdb8, k6, 0, 0, 0, 0, 1).to_string();
                self.exec(&ns, &["ip", "-6", "route", "add", "default", "via", &gateway])?;
                Some(a6)
            }
            None => None,
        };
        Ok(Host { ns, addr, addr6 })
    }

    /// Makes `router` forward unsolicited UDP (full cone, address-restricted) to `host`.
    fn forward_to(&self, router: &Router, host: Ipv4Addr) -> Result<(), Error> {
        let rule = match router.nat {
            Nat::FullCone => format!("iifname \"wan\" meta l4proto udp dnat to {host}"),
            Nat::AddressRestricted => {
                format!("iifname \"wan\" ip saddr @contacted meta l4proto udp dnat to {host}")
            }
            Nat::PortRestricted | Nat::Symmetric => return Ok(()),
        };
        self.exec(&router.ns, &["nft", &format!("add rule ip netsim pre {rule}")])
    }

    /// Connects namespace `ns` (interface `ifname`) to `router`'s LAN; returns its address.
    fn attach(&mut self, router: &mut Router, ns: &str, ifname: &str) -> Result<Ipv4Addr, Error> {
        router.hosts += 1;
        let [a, b, c] = router.lan_prefix;
        let addr = Ipv4Addr::new(a, b, c, router.hosts + 1);
        let port = self.port_name();
        self.exec_root(&[
            "ip", "link", "add", "name", ifname, "netns", ns, "type", "veth", "peer", "name",
            &port, "netns", &router.ns,
        ])?;
        self.exec(&router.ns, &["ip", "link", "set", &port, "master", "lan"])?;
        self.exec(&router.ns, &["ip", "link", "set", &port, "up"])?;
        self.exec(ns, &["ip", "addr", "add", &format!("{addr}/24"), "dev", ifname])?;
        self.exec(ns, &["ip", "link", "set", ifname, "up"])?;
        let gateway = Ipv4Addr::new(a, b, c, 1).to_string();
        self.exec(ns, &["ip", "route", "add", "default", "via", &gateway])?;
        if router.hosts == 1 {
            self.forward_to(router, addr)?;
        }
        Ok(addr)
    }

    fn finish_router(
        &mut self,
        ns: String,
        wan: Ipv4Addr,
        nat: Nat,
        lan_prefix: [u8; 3],
        options: &RouterOptions,
    ) -> Result<Router, Error> {
        let [a, b, c] = lan_prefix;
        self.exec(&ns, &["ip", "link", "add", "name", "lan", "type", "bridge"])?;
        self.exec(&ns, &["ip", "addr", "add", &format!("{a}.{b}.{c}.1/24"), "dev", "lan"])?;
        self.exec(&ns, &["ip", "link", "set", "lan", "up"])?;
        self.exec(&ns, &["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])?;
        // With br_netfilter loaded, bridged LAN traffic would go through the forward chain
        // (and be dropped): neighbours on a LAN talk directly.
        for family in ["iptables", "ip6tables"] {
            let knob = format!("/proc/sys/net/bridge/bridge-nf-call-{family}");
            if std::path::Path::new(&knob).exists() {
                self.exec(&ns, &["sh", "-c", &format!("echo 0 > {knob}")])?;
            }
        }
        let rules = ruleset(nat, options, wan, lan_prefix);
        run_stdin(&["ip", "netns", "exec", &ns, "nft", "-f", "-"], &rules)?;
        if let Some(kbit) = options.rate_kbit {
            let rate = format!("{kbit}kbit");
            self.exec(
                &ns,
                &[
                    "tc", "qdisc", "add", "dev", "wan", "root", "tbf", "rate", &rate, "burst",
                    "32kbit", "latency", "400ms",
                ],
            )?;
        }
        Ok(Router { ns, wan, nat, lan_prefix, hosts: 0, lan6: None })
    }

    fn public_addr(&mut self) -> Ipv4Addr {
        let n = self.next_public;
        self.next_public += 1;
        Ipv4Addr::new(198, 18, (n >> 8) as u8, (n & 0xff) as u8)
    }

    fn lan_number(&mut self) -> u8 {
        let k = self.next_lan;
        self.next_lan = self.next_lan.wrapping_add(1).max(1);
        k
    }

    /// An interface name unique in this topology (at most 15 bytes).
    fn port_name(&mut self) -> String {
        self.next_port += 1;
        format!("p{}", self.next_port)
    }

    fn plug_into_internet(&mut self, ns: &str, ifname: &str) -> Result<(), Error> {
        let port = self.port_name();
        let internet = self.internet.clone();
        self.exec_root(&[
            "ip", "link", "add", "name", ifname, "netns", ns, "type", "veth", "peer", "name",
            &port, "netns", &internet,
        ])?;
        self.exec(&internet, &["ip", "link", "set", &port, "master", "br0"])?;
        self.exec(&internet, &["ip", "link", "set", &port, "up"])
    }

    /// New interfaces in `ns` skip duplicate address detection, so that IPv6 works at once
    /// (their link-local addresses would otherwise stay tentative for a second or two, and
    /// neighbour discovery with them).
    fn no_dad(&self, ns: &str) -> Result<(), Error> {
        let off = "echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad; \
                   echo 0 > /proc/sys/net/ipv6/conf/all/accept_dad";
        self.exec(ns, &["sh", "-c", off])
    }

    fn add_ns(&mut self, ns: &str) -> Result<(), Error> {
        self.exec_root(&["ip", "netns", "add", ns])?;
        self.namespaces.push(ns.to_owned());
        if self.ipv6 {
            self.no_dad(ns)?;
        }
        self.exec(ns, &["ip", "link", "set", "lo", "up"])
    }

    /// Cuts namespace `ns` (a host or a router of this topology) off from `peer`, both ways,
    /// from now on: whatever it sends, forwards or receives to or from that address is dropped,
    /// established flows included. Everything else still flows: a path that dies mid-transfer.
    pub fn cut(&self, ns: &str, peer: Ipv4Addr) -> Result<(), Error> {
        if !self.namespaces.iter().any(|n| n == ns) {
            return Err(Error::Command {
                command: format!("cut {ns} from {peer}"),
                message: "not a namespace of this topology".to_owned(),
            });
        }
        let chain = |name: &str| {
            format!(
                "  chain {name} {{\n    type filter hook {name} priority -10; policy accept;\n    \
                 ip daddr {peer} drop\n    ip saddr {peer} drop\n  }}\n"
            )
        };
        let rules = format!(
            "table ip netsimcut {{\n{}{}{}}}\n",
            chain("forward"),
            chain("input"),
            chain("output")
        );
        run_stdin(&["ip", "netns", "exec", ns, "nft", "-f", "-"], &rules)
    }

    fn exec(&self, ns: &str, args: &[&str]) -> Result<(), Error> {
        let mut all = vec!["ip", "netns", "exec", ns];
        all.extend_from_slice(args);
        run(&all).map(drop)
    }

    fn exec_root(&self, args: &[&str]) -> Result<(), Error> {
        run(args).map(drop)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}

/// The nftables ruleset of a router.
///
/// Hairpinning: a filter chain after the source NAT remembers, for every UDP flow leaving by
/// the WAN side, which LAN address and port its public port belongs to (`hairpin` map). A
/// datagram from the LAN to the router's public address and such a port is sent (destination
/// NAT) to that host, with the router's public address as its source (so the host sees the
/// sender's public mapping, as from outside).
fn ruleset(nat: Nat, options: &RouterOptions, wan: Ipv4Addr, lan: [u8; 3]) -> String {
    let [a, b, c] = lan;
    let (hairpin_in, hairpin_out, hairpin_forward, hairpin_learn) = if options.hairpin {
        (
            format!(
                "iifname \"lan\" ip daddr {wan} meta l4proto udp dnat ip to udp dport map @hairpin"
            ),
            format!("oifname \"lan\" ip saddr {a}.{b}.{c}.0/24 ct status dnat snat ip to {wan}"),
            "iifname \"lan\" oifname \"lan\" ct status dnat accept".to_owned(),
            "oifname \"wan\" meta l4proto udp update @hairpin \
             { ct reply proto-dst : ct original ip saddr . ct original proto-src }"
                .to_owned(),
        )
    } else {
        Default::default()
    };
    let masquerade = if nat == Nat::Symmetric { "masquerade random" } else { "masquerade" };
    let loss = if options.loss_percent > 0 {
        format!("numgen random mod 100 < {} drop", options.loss_percent)
    } else {
        String::new()
    };
    let udp_blocked =
        if options.udp_blocked { "iifname \"lan\" meta l4proto udp drop" } else { "" };
    let remember =
        if nat == Nat::AddressRestricted { "update @contacted { ip daddr }" } else { "" };
    let forwarded = if matches!(nat, Nat::FullCone | Nat::AddressRestricted) {
        "ct status dnat accept"
    } else {
        ""
    };
    format!(
        "table ip netsim {{
  set contacted {{ type ipv4_addr; flags timeout; timeout 5m; }}
  map hairpin {{ type inet_service : ipv4_addr . inet_service; flags dynamic,timeout; timeout 5m; }}
  chain pre {{ type nat hook prerouting priority dstnat; policy accept;
    {hairpin_in}
  }}
  chain post {{ type nat hook postrouting priority srcnat; policy accept;
    oifname \"wan\" {masquerade}
    {hairpin_out}
  }}
  chain learn {{ type filter hook postrouting priority srcnat + 10; policy accept;
    {hairpin_learn}
  }}
  chain forward {{ type filter hook forward priority filter; policy drop;
    {loss}
    ct state established,related accept
    {udp_blocked}
    iifname \"lan\" oifname \"wan\" {remember} accept
    {forwarded}
    {hairpin_forward}
  }}
  chain input {{ type filter hook input priority filter; policy drop;
    iifname \"lo\" accept
    ct state established,related accept
    iifname \"lan\" accept
  }}
}}
"
    )
}

/// The IPv6 ruleset of a router: no NAT, the same stateful filter as for IPv4.
fn ruleset6(options: &RouterOptions) -> String {
    let loss = if options.loss_percent > 0 {
        format!("numgen random mod 100 < {} drop", options.loss_percent)
    } else {
        String::new()
    };
    let udp_blocked =
        if options.udp_blocked { "iifname \"lan\" meta l4proto udp drop" } else { "" };
    format!(
        "table ip6 netsim6 {{
  chain forward {{ type filter hook forward priority filter; policy drop;
    {loss}
    ct state established,related accept
    meta l4proto ipv6-icmp accept
    {udp_blocked}
    iifname \"lan\" oifname \"wan\" accept
  }}
}}
"
    )
}

/// Deletes namespaces of this crate whose process is gone.
fn remove_stale() {
    let Ok(out) = run(&["ip", "netns", "list"]) else { return };
    let list = String::from_utf8_lossy(&out.stdout).into_owned();
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        let Some(rest) = name.strip_prefix(NS_PREFIX) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run(&["ip", "netns", "del", name]);
        }
    }
}

fn run(args: &[&str]) -> Result<Output, Error> {
    let fail = |message: String| Error::Command { command: args.join(" "), message };
    let out = Command::new(args[0]).args(&args[1..]).output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    Ok(out)
}

fn run_stdin(args: &[&str], input: &str) -> Result<(), Error> {
    use std::io::Write;
    let fail = |message: String| Error::Command { command: args.join(" "), message };
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).map_err(|e| fail(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    Ok(())
}
