//! The NAT matrix (DESIGN §7) in the kernel layer: real `p2p-copy` binaries, a real node, and
//! NAT routers built with nftables in network namespaces (`netsim`). Each case checks the bytes
//! and whether the path was direct or relayed. Needs root; fails rather than skips under
//! `CI=true`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::ffi::OsString;
use std::time::{Duration, Instant};

use p2p_copy_netsim::{Host, Nat, Net, RouterOptions};
use util::*;

/// Where a peer sits.
#[derive(Debug, Clone, Copy)]
enum Place {
    Public,
    Behind(Nat),
    /// Behind a home NAT (port-restricted) behind a carrier-grade NAT of this kind.
    Cgnat(Nat),
    /// Behind a port-restricted NAT that drops all UDP.
    UdpBlocked,
}

fn place(net: &mut Net, name: &str, p: Place) -> Host {
    match p {
        Place::Public => net.public_host(name).unwrap(),
        Place::Behind(nat) => {
            let mut r = net.router(&format!("{name}r"), nat, RouterOptions::default()).unwrap();
            net.host_behind(&mut r, name).unwrap()
        }
        Place::Cgnat(nat) => {
            let mut carrier =
                net.router(&format!("{name}c"), nat, RouterOptions::default()).unwrap();
            let mut home = net
                .router_behind(
                    &mut carrier,
                    &format!("{name}h"),
                    Nat::PortRestricted,
                    RouterOptions::default(),
                )
                .unwrap();
            net.host_behind(&mut home, name).unwrap()
        }
        Place::UdpBlocked => {
            let options = RouterOptions { udp_blocked: true, ..RouterOptions::default() };
            let mut r = net.router(&format!("{name}r"), Nat::PortRestricted, options).unwrap();
            net.host_behind(&mut r, name).unwrap()
        }
    }
}

/// A topology with a public node, started.
struct World {
    net: Net,
    node: Host,
    node_proc: Option<Proc>,
    fx: Fixture,
}

impl World {
    fn new() -> Option<World> {
        World::build(false)
    }

    fn build(ipv6: bool) -> Option<World> {
        if !privileged("building NAT topologies in network namespaces") {
            return None;
        }
        let built = if ipv6 { Net::with_ipv6() } else { Net::new() };
        let mut net = match built {
            Ok(net) => net,
            Err(e) => {
                skip_or_fail(&format!("cannot build a topology: {e}"));
                return None;
            }
        };
        let node = net.public_host("node").unwrap();
        let fx = Fixture::new();
        Some(World { net, node, node_proc: None, fx })
    }

    fn node_addr(&self) -> String {
        format!("{}:4433", self.node.addr)
    }

    fn start_node(&mut self) {
        let listen = self.node_addr();
        let args = ["rendezvous", "-q", "--listen", &listen, "--claims-per-minute", "0"];
        self.node_proc = Some(self.fx.spawn("node", &self.node.prefix(), args));
        std::thread::sleep(Duration::from_millis(300));
    }

    /// Sends a file from `s` to `r` through the node; returns (sender, receiver, time from the
    /// receiver's start to its `connected` event).
    fn transfer(&mut self, s: &Host, r: &Host, code: &str) -> (Outcome, Outcome, Duration) {
        self.transfer_with(s, r, code, 3 << 20, |_| {})
    }

    /// As [`World::transfer`], with a file of `size` bytes, calling `during` with the topology
    /// once the receiver connected.
    fn transfer_with(
        &mut self,
        s: &Host,
        r: &Host,
        code: &str,
        size: u64,
        during: impl FnOnce(&Net),
    ) -> (Outcome, Outcome, Duration) {
        let src = self.fx.path(&format!("src-{size}/data.bin"));
        if !src.exists() {
            random_file(&src, size, &mut self.fx.rng);
        }
        let node = self.node_addr();
        let out = self.fx.path(&format!("out-{}", fresh_code()));
        let send_args: Vec<OsString> = vec![
            "send".into(),
            "--json".into(),
            "--rendezvous".into(),
            node.clone().into(),
            "--code".into(),
            code.into(),
            src.clone().into(),
        ];
        let mut sender = self.fx.spawn("sender", &s.prefix(), send_args);
        sender.wait_event("code");
        // `-v`: the receiver's log says which direct address answered.
        let recv_args: Vec<OsString> = vec![
            "receive".into(),
            "-v".into(),
            "--json".into(),
            "--yes".into(),
            "--rendezvous".into(),
            node.into(),
            "--out".into(),
            out.clone().into(),
            code.into(),
        ];
        let started = Instant::now();
        let mut receiver = self.fx.spawn("receiver", &r.prefix(), recv_args);
        let _ = receiver.wait_line(Duration::from_secs(60), |_, line| {
            line.contains("\"connected\"") || line.contains("\"error\"")
        });
        let connect = started.elapsed();
        during(&self.net);
        let (s_out, r_out) = finish_pair(sender, receiver);
        if r_out.code() == Some(0) {
            assert_same_tree(&src, &out.join("data.bin"));
        }
        (s_out, r_out, connect)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(mut p) = self.node_proc.take() {
            p.kill();
        }
    }
}

/// The receiver's log line naming the address the direct path was validated with.
fn direct_peer(o: &Outcome) -> String {
    o.stderr.lines().find(|l| l.contains("direct path up")).unwrap_or_default().to_owned()
}

/// Runs one pair and checks the path both sides report.
fn pair(sender: Place, receiver: Place, expected: &str) {
    let Some(mut w) = World::new() else { return };
    let s = place(&mut w.net, "snd", sender);
    let r = place(&mut w.net, "rcv", receiver);
    w.start_node();
    let (so, ro, connect) = w.transfer(&s, &r, &fresh_code());
    assert_exits(&[(&so, 0), (&ro, 0)]);
    for o in [&so, &ro] {
        assert_eq!(o.event("done").unwrap()["path"], expected, "{sender:?} -> {receiver:?}\n{o}");
    }
    let punch = ro.event("done").unwrap()["punch_seconds"].clone();
    eprintln!(
        "MATRIX {sender:?} -> {receiver:?}: {expected}, connected after {connect:?}, punching {punch}s"
    );
}

#[test]
fn public_to_public_is_direct() {
    pair(Place::Public, Place::Public, "direct");
}

#[test]
fn port_restricted_to_public_is_direct() {
    pair(Place::Behind(Nat::PortRestricted), Place::Public, "direct");
}

#[test]
fn public_to_port_restricted_is_direct() {
    pair(Place::Public, Place::Behind(Nat::PortRestricted), "direct");
}

#[test]
fn port_restricted_to_port_restricted_is_direct() {
    pair(Place::Behind(Nat::PortRestricted), Place::Behind(Nat::PortRestricted), "direct");
}

#[test]
fn full_cone_to_symmetric_is_direct() {
    pair(Place::Behind(Nat::FullCone), Place::Behind(Nat::Symmetric), "direct");
}

#[test]
fn symmetric_to_full_cone_is_direct() {
    pair(Place::Behind(Nat::Symmetric), Place::Behind(Nat::FullCone), "direct");
}

#[test]
fn address_restricted_to_symmetric_is_direct() {
    pair(Place::Behind(Nat::AddressRestricted), Place::Behind(Nat::Symmetric), "direct");
}

#[test]
fn port_restricted_to_symmetric_is_relayed() {
    pair(Place::Behind(Nat::PortRestricted), Place::Behind(Nat::Symmetric), "relay");
}

#[test]
fn symmetric_to_symmetric_is_relayed() {
    pair(Place::Behind(Nat::Symmetric), Place::Behind(Nat::Symmetric), "relay");
}

#[test]
fn port_preserving_cgnat_to_port_restricted_is_direct() {
    pair(Place::Cgnat(Nat::PortRestricted), Place::Behind(Nat::PortRestricted), "direct");
}

#[test]
fn random_port_cgnat_to_port_restricted_is_relayed() {
    pair(Place::Cgnat(Nat::Symmetric), Place::Behind(Nat::PortRestricted), "relay");
}

#[test]
fn udp_blocked_is_relayed_over_tcp() {
    pair(Place::UdpBlocked, Place::Behind(Nat::PortRestricted), "relay");
}

/// Two hosts behind one NAT, which does not hairpin (most do not): direct through their LAN
/// addresses. With hairpinning, direct too (by the LAN or through the router).
#[test]
fn same_lan_behind_one_nat_is_direct() {
    for hairpin in [false, true] {
        let Some(mut w) = World::new() else { return };
        let options = RouterOptions { hairpin, ..RouterOptions::default() };
        let mut router = w.net.router("homer", Nat::PortRestricted, options).unwrap();
        let s = w.net.host_behind(&mut router, "snd").unwrap();
        let r = w.net.host_behind(&mut router, "rcv").unwrap();
        w.start_node();
        let (so, ro, connect) = w.transfer(&s, &r, &fresh_code());
        assert_exits(&[(&so, 0), (&ro, 0)]);
        assert_eq!(ro.event("done").unwrap()["path"], "direct", "hairpin {hairpin}: {ro}");
        let peer = direct_peer(&ro);
        let lan = peer.contains(&format!("peer={}:", s.addr));
        let hairpinned = peer.contains(&format!("peer={}:", router.wan));
        assert!(lan || (hairpin && hairpinned), "hairpin {hairpin}: reached {peer}");
        eprintln!(
            "MATRIX same LAN behind one NAT, hairpin {hairpin}: direct ({}), connected after \
             {connect:?}",
            if lan { "LAN address" } else { "through the router" }
        );
    }
}

/// Behind NATs, a wrong code still fails cleanly on both sides and writes nothing.
#[test]
fn wrong_code_behind_nats_fails_cleanly() {
    let Some(mut w) = World::new() else { return };
    let s = place(&mut w.net, "snd", Place::Behind(Nat::PortRestricted));
    let r = place(&mut w.net, "rcv", Place::Behind(Nat::Symmetric));
    w.start_node();
    let code = fresh_code();
    let src = w.fx.path("src/secret.bin");
    random_file(&src, 1000, &mut w.fx.rng);
    let node = w.node_addr();
    let mut sender = w.fx.spawn(
        "sender",
        &s.prefix(),
        ["send", "--json", "--rendezvous", &node, "--code", &code, src.to_str().unwrap()],
    );
    sender.wait_event("code");
    let out = w.fx.path("out");
    let wrong = other_code(&code);
    let receiver = w.fx.spawn(
        "receiver",
        &r.prefix(),
        [
            "receive",
            "--json",
            "--yes",
            "--rendezvous",
            &node,
            "--out",
            out.to_str().unwrap(),
            &wrong,
        ],
    );
    let (so, ro) = finish_pair(sender, receiver);
    assert_exits(&[(&so, 3), (&ro, 3)]);
    assert!(list_all(&out).is_empty());
}

/// 5 % loss both ways and a 20 Mbit/s limit at the sender's NAT: the transfer completes with
/// identical bytes (checked in `transfer`).
#[test]
fn lossy_rate_limited_link_completes() {
    let Some(mut w) = World::new() else { return };
    let options =
        RouterOptions { loss_percent: 5, rate_kbit: Some(20_000), ..RouterOptions::default() };
    let mut router = w.net.router("sndr", Nat::PortRestricted, options).unwrap();
    let s = w.net.host_behind(&mut router, "snd").unwrap();
    let r = place(&mut w.net, "rcv", Place::Behind(Nat::PortRestricted));
    w.start_node();
    let started = Instant::now();
    let (so, ro, connect) = w.transfer(&s, &r, &fresh_code());
    assert_exits(&[(&so, 0), (&ro, 0)]);
    eprintln!(
        "MATRIX 5% loss, 20 Mbit/s: {}, connected after {connect:?}, done after {:?}",
        ro.event("done").unwrap()["path"],
        started.elapsed()
    );
}

/// Both sides behind symmetric IPv4 NATs, but with IPv6 (firewalled the same way, not
/// translated): the IPv6 candidates go direct where IPv4 would need the relay.
#[test]
fn ipv6_goes_direct_where_ipv4_is_symmetric() {
    let Some(mut w) = World::build(true) else { return };
    // The IPv6 path answers about a second into probing, as the receiver's wait for a direct
    // path ends, so the transfer may start on the relay. At 20 Mbit/s from the sender, 8 MiB
    // take over 3 s: time to move to the direct path, which must then carry the rest.
    let options = RouterOptions { rate_kbit: Some(20_000), ..RouterOptions::default() };
    let mut s_router = w.net.router("sndr", Nat::Symmetric, options).unwrap();
    let s = w.net.host_behind(&mut s_router, "snd").unwrap();
    let r = place(&mut w.net, "rcv", Place::Behind(Nat::Symmetric));
    assert!(s.addr6.is_some() && r.addr6.is_some());
    w.start_node();
    let (so, ro, connect) = w.transfer_with(&s, &r, &fresh_code(), 8 << 20, |_| {});
    assert_exits(&[(&so, 0), (&ro, 0)]);
    assert_eq!(ro.event("done").unwrap()["path"], "direct", "{ro}");
    let sender6 = s.addr6.unwrap().to_string();
    let up = direct_peer(&ro);
    assert!(up.contains(&sender6), "the direct path is the sender's IPv6 address: {up}\n{ro}");
    eprintln!(
        "MATRIX symmetric <-> symmetric with IPv6: direct ({up}), connected after {connect:?}"
    );
}

/// The direct path dies mid-transfer (both NATs' routers drop each other's traffic, the node
/// stays reachable): the transfer moves to the relay and completes with identical bytes,
/// without starting the file again.
#[test]
fn direct_path_cut_mid_transfer_completes_over_the_relay() {
    let Some(mut w) = World::new() else { return };
    // 40 Mbit/s at the sender: 24 MiB need at least 5 s, so a cut at 1.5 s is mid-file.
    let options = RouterOptions { rate_kbit: Some(40_000), ..RouterOptions::default() };
    let mut s_router = w.net.router("sndr", Nat::PortRestricted, options).unwrap();
    let s = w.net.host_behind(&mut s_router, "snd").unwrap();
    let mut r_router = w.net.router("rcvr", Nat::PortRestricted, RouterOptions::default()).unwrap();
    let r = w.net.host_behind(&mut r_router, "rcv").unwrap();
    w.start_node();
    let cut = |net: &Net| {
        std::thread::sleep(Duration::from_millis(1500));
        net.cut(&s_router.ns, r_router.wan).unwrap();
    };
    let (so, ro, connect) = w.transfer_with(&s, &r, &fresh_code(), 24 << 20, cut);
    assert_exits(&[(&so, 0), (&ro, 0)]);
    let done = ro.event("done").unwrap();
    assert_eq!(done["path"], "relay", "{ro}");
    assert!(done["path_changes"].as_u64().unwrap() >= 1, "{ro}");
    assert_eq!(done["bytes"], 24 << 20);
    // Progress only ever grows: nothing was received twice from the start of the file.
    let progress: Vec<u64> = ro
        .events()
        .iter()
        .filter(|e| e["event"] == "progress")
        .map(|e| e["bytes"].as_u64().unwrap())
        .collect();
    assert!(progress.windows(2).all(|p| p[0] <= p[1]), "{progress:?}");
    eprintln!("MATRIX direct path cut mid-transfer: relay, connected after {connect:?}, {done}");
    for line in ro.stderr.lines().filter(|l| l.contains("path")) {
        eprintln!("  {line}");
    }
}

/// A transfer that saturates the sender's uplink (40 Mbit/s, a tbf queue of up to 400 ms that
/// the transfer keeps full) on a healthy direct path: the liveness probes, queued behind the
/// data and waiting for room in a full socket buffer, keep answering, so the transfer stays
/// direct with no change of path (issue 13, bug B1: it used to be given up after 3 s).
#[test]
fn a_saturated_slow_uplink_stays_direct() {
    let Some(mut w) = World::new() else { return };
    let mut s_router = w.net.router("sndr", Nat::PortRestricted, RouterOptions::default()).unwrap();
    let s = w.net.host_behind(&mut s_router, "snd").unwrap();
    // The sender's own interface is the bottleneck (as a Wi-Fi card or a slow NIC is): its
    // queue fills, and so does the socket's send buffer behind it.
    let shaped = s
        .command("tc")
        .args(["qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "40mbit"])
        .args(["burst", "32kbit", "latency", "400ms"])
        .status()
        .unwrap();
    assert!(shaped.success(), "tc tbf on the sender's interface");
    let r = place(&mut w.net, "rcv", Place::Behind(Nat::PortRestricted));
    w.start_node();
    // 40 MiB at 40 Mbit/s: over 8 s, well past the 3 s a silent direct path is given up after.
    let (so, ro, connect) = w.transfer_with(&s, &r, &fresh_code(), 40 << 20, |_| {});
    assert_exits(&[(&so, 0), (&ro, 0)]);
    let done = ro.event("done").unwrap();
    assert_eq!(done["path"], "direct", "{ro}");
    assert_eq!(done["path_changes"], 0, "the direct path was never given up: {ro}");
    eprintln!("MATRIX saturated 40 Mbit/s uplink: direct, connected after {connect:?}, {done}");
}
