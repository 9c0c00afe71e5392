//! Transfers inside network namespaces the tests create: a host with nothing but loopback, and
//! two hosts on one Ethernet segment (a veth pair) with nothing configured but their
//! addresses. Needs root and `ip` (iproute2); without them the tests fail under `CI=true` and
//! are skipped otherwise. Namespaces are deleted on drop, also when a test panics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::ffi::OsStr;
use std::os::unix::fs::symlink;
use std::path::Path;

use serde_json::Value;
use util::netns::*;
use util::*;

const NOTES: &str = "été\n";
/// File bytes in [`small_tree`].
const TREE_BYTES: u64 = 300_000 + 1_500_000 + NOTES.len() as u64;

/// A small tree with a subdirectory, an empty directory, a symlink and set mtimes.
fn small_tree(fx: &mut Fixture) -> std::path::PathBuf {
    let tree = fx.path("src/photos");
    random_file(&tree.join("a.jpg"), 300_000, &mut fx.rng);
    random_file(&tree.join("2024/b.jpg"), 1_500_000, &mut fx.rng);
    write_file(&tree.join("2024/notes.txt"), NOTES.as_bytes());
    std::fs::create_dir_all(tree.join("empty")).expect("mkdir");
    symlink("2024/b.jpg", tree.join("latest.jpg")).expect("symlink");
    for (i, f) in ["a.jpg", "2024/b.jpg", "2024/notes.txt", "empty", "2024", ""].iter().enumerate()
    {
        set_mtime(&tree.join(f), 1_700_000_000 + i as u64);
    }
    tree
}

fn peer_ip(o: &Outcome) -> String {
    let connected = o.event("connected").unwrap_or_else(|| panic!("no connected event\n{o}"));
    let peer = connected["peer"].as_str().unwrap_or_else(|| panic!("peer is a string\n{o}"));
    let addr: std::net::SocketAddr = peer.parse().unwrap_or_else(|e| panic!("{peer:?}: {e}\n{o}"));
    addr.ip().to_string()
}

/// Sends `tree` from `send_ns` to `recv_ns`; returns (sender, receiver) after checking the copy.
fn transfer_between(
    fx: &Fixture,
    tree: &Path,
    send_ns: &Netns,
    recv_ns: &Netns,
) -> (Outcome, Outcome) {
    let out = fx.path("out");
    let sender = fx.send_in(&send_ns.prefix(), [tree]);
    let receiver = fx
        .receive_in(&recv_ns.prefix(), [OsStr::new("--yes"), OsStr::new("--out"), out.as_os_str()]);
    let (s, r) = finish_pair(sender, receiver);
    assert_exits(&[(&s, 0), (&r, 0)]);
    let name = tree.file_name().expect("named");
    let entries = assert_same_tree(tree, &out.join(name));
    let done: Value = assert_done(&r, TREE_BYTES, 3);
    assert_eq!(done["entries"], entries as u64, "{r}");
    assert_done(&s, TREE_BYTES, 3);
    (s, r)
}

#[test]
fn loopback_only_host() {
    if !can_use_netns() {
        return;
    }
    let (name, _) = unique("l");
    let ns = match Netns::add(name) {
        Ok(ns) => ns,
        Err(e) => return skip_or_fail(&format!("cannot create a network namespace: {e}")),
    };
    let mut fx = Fixture::new();
    let tree = small_tree(&mut fx);
    let (s, r) = transfer_between(&fx, &tree, &ns, &ns);
    assert_eq!(peer_ip(&r), "127.0.0.1", "{r}");
    assert_eq!(peer_ip(&s), "127.0.0.1", "{s}");
}

#[test]
fn two_hosts_on_one_segment() {
    let Some((a, b, a_addr, b_addr)) = two_hosts() else { return };
    let mut fx = Fixture::new();
    let tree = small_tree(&mut fx);
    let (s, r) = transfer_between(&fx, &tree, &a, &b);
    assert_eq!(peer_ip(&r), a_addr, "the receiver reached the sender's veth address\n{r}");
    assert_eq!(peer_ip(&s), b_addr, "the sender saw the receiver's veth address\n{s}");
}

/// Two hosts on a segment with no IPv4 on it, only the link-local IPv6 address the kernel gives
/// each end (issue 15): discovery finds the sender by IPv6 multicast, and QUIC runs to the
/// sender's `fe80::…` address on the interface the announce came in on.
#[test]
fn two_hosts_on_one_segment_with_ipv6_link_local_only() {
    let Some((a, b, a_addr, b_addr)) = two_hosts_link_local() else { return };
    let mut fx = Fixture::new();
    let tree = small_tree(&mut fx);
    let (s, r) = transfer_between(&fx, &tree, &a, &b);
    assert_eq!(
        peer_ip(&r),
        a_addr.to_string(),
        "the receiver reached the sender's fe80 address\n{r}"
    );
    assert_eq!(peer_ip(&s), b_addr.to_string(), "the sender saw the receiver's fe80 address\n{s}");
    for o in [&r, &s] {
        let peer = o.event("connected").unwrap()["peer"].as_str().unwrap().to_owned();
        assert!(peer.contains('%'), "a link-local peer keeps its interface: {peer}\n{o}");
    }
}

/// With a rendezvous node configured, two hosts on one LAN still connect directly (host
/// candidates); with the relay forced, the same transfer goes through the node.
#[test]
fn two_hosts_on_one_segment_through_a_node() {
    let Some((a, b, a_addr, _b_addr)) = two_hosts() else { return };
    let mut fx = Fixture::new();
    let tree = small_tree(&mut fx);
    let node_addr = format!("{a_addr}:4433");
    let mut node = fx.spawn(
        "node",
        &a.prefix(),
        ["rendezvous", "-q", "--listen", &node_addr, "--claims-per-minute", "0"],
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    for (i, forced) in [false, true].into_iter().enumerate() {
        let out = fx.path(&format!("out{i}"));
        let code = fresh_code();
        let mut send_args = vec!["send", "--json", "--rendezvous", &node_addr, "--code", &code];
        send_args.push(tree.to_str().unwrap());
        let mut sender = fx.spawn("sender", &a.prefix(), send_args);
        sender.wait_event("code");
        let mut recv_args = vec!["receive", "--json", "--yes", "--rendezvous", &node_addr, "--out"];
        recv_args.push(out.to_str().unwrap());
        if forced {
            recv_args.push("--force-relay");
        }
        recv_args.push(&code);
        let receiver = fx.spawn("receiver", &b.prefix(), recv_args);
        let (s, r) = finish_pair(sender, receiver);
        assert_exits(&[(&s, 0), (&r, 0)]);
        assert_same_tree(&tree, &out.join("photos"));
        let want = if forced { "relay" } else { "direct" };
        assert_done_via(&r, TREE_BYTES, 3, want);
        assert_done_via(&s, TREE_BYTES, 3, want);
        if !forced {
            assert_eq!(peer_ip(&r), a_addr, "the receiver reached the sender's LAN address\n{r}");
        }
    }
    node.kill();
}

/// Environment of [`lan_helper`]: what to do (`find`, `query`, `probe`, `echo`, `reach`), and
/// its inputs.
const HELPER_ENV: &str = "P2P_COPY_TEST_LAN_HELPER";

/// LAN mode keeps to the link (issue 13, finding 5), over IPv4 and IPv6 alike (issue 15): a
/// sender on host A, a host R on A's segment that routes to a host C on another subnet. C
/// reaches A by routed unicast, as a host on the Internet reaches a sender with a public
/// address. From R, discovery finds the sender (on both families), but a unicast query from R
/// gets no answer; from C, a unicast query gets no answer and a QUIC connection to the port R
/// learnt gets no handshake; and the sender still serves the receiver on R afterwards (C's
/// attempts did not take its one session).
#[test]
fn lan_mode_keeps_to_the_link() {
    if !can_use_netns() {
        return;
    }
    let (base, n) = unique("k");
    let s = (std::process::id().wrapping_mul(7).wrapping_add(n)) % 250 + 1;
    let (a_addr, r_near, r_far, c_addr) = (
        format!("10.97.{s}.1"),
        format!("10.97.{s}.2"),
        format!("10.96.{s}.1"),
        format!("10.96.{s}.2"),
    );
    // The same plan in IPv6: unique local addresses, the link's /64 and the far one.
    let (a6, r6_near, r6_far, c6) = (
        format!("fd97:{s:x}::1"),
        format!("fd97:{s:x}::2"),
        format!("fd96:{s:x}::1"),
        format!("fd96:{s:x}::2"),
    );
    let setup = || -> Result<(Netns, Netns, Netns), String> {
        let a = Netns::add(format!("{base}a"))?;
        let r = Netns::add(format!("{base}r"))?;
        let c = Netns::add(format!("{base}c"))?;
        let (va, vr1, vr2, vc) =
            (format!("{base}a"), format!("{base}r1"), format!("{base}r2"), format!("{base}c"));
        let pair = |x: &str, xn: &Netns, y: &str, yn: &Netns| {
            run(
                "ip",
                &[
                    "link", "add", x, "netns", &xn.name, "type", "veth", "peer", "name", y,
                    "netns", &yn.name,
                ],
            )
        };
        pair(&va, &a, &vr1, &r)?;
        pair(&vr2, &r, &vc, &c)?;
        let ends = [(&a, &va), (&r, &vr1), (&r, &vr2), (&c, &vc)];
        for (ns, dev) in ends {
            ns.no_dad(dev)?;
        }
        a.ip(&["addr", "add", &format!("{a_addr}/24"), "dev", &va])?;
        r.ip(&["addr", "add", &format!("{r_near}/24"), "dev", &vr1])?;
        r.ip(&["addr", "add", &format!("{r_far}/24"), "dev", &vr2])?;
        c.ip(&["addr", "add", &format!("{c_addr}/24"), "dev", &vc])?;
        a.ip(&["-6", "addr", "add", &format!("{a6}/64"), "dev", &va, "nodad"])?;
        r.ip(&["-6", "addr", "add", &format!("{r6_near}/64"), "dev", &vr1, "nodad"])?;
        r.ip(&["-6", "addr", "add", &format!("{r6_far}/64"), "dev", &vr2, "nodad"])?;
        c.ip(&["-6", "addr", "add", &format!("{c6}/64"), "dev", &vc, "nodad"])?;
        for (ns, dev) in ends {
            ns.ip(&["link", "set", dev, "up"])?;
        }
        a.ip(&["route", "add", &format!("10.96.{s}.0/24"), "via", &r_near])?;
        c.ip(&["route", "add", &format!("10.97.{s}.0/24"), "via", &r_far])?;
        a.ip(&["-6", "route", "add", &format!("fd96:{s:x}::/64"), "via", &r6_near])?;
        c.ip(&["-6", "route", "add", &format!("fd97:{s:x}::/64"), "via", &r6_far])?;
        r.sysctl("net.ipv4.ip_forward", "1")?;
        r.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        Ok((a, r, c))
    };
    let (a, r, c) = match setup() {
        Ok(hosts) => hosts,
        Err(e) => return skip_or_fail(&format!("cannot set up three namespaces: {e}")),
    };
    // C and A do reach each other by UDP, on both families: the routing works, so only
    // p2p-copy's own rules can keep C out.
    let a_v4 = a_addr.parse::<std::net::IpAddr>().unwrap();
    let a_v6 = a6.parse::<std::net::IpAddr>().unwrap();
    for ip in [a_v4, a_v6] {
        let echo_at = std::net::SocketAddr::new(ip, 9).to_string();
        let echo =
            helper_command(&a, "echo", &echo_at, 0, 0).spawn().expect("start the echo helper");
        let reached = helper(&c, "reach", &echo_at, 0, 0);
        let echoed = echo.wait_with_output().expect("echo helper");
        assert!(
            reached.as_ref().is_ok_and(|t| t.contains("REACHED")),
            "C cannot reach A at {echo_at} by UDP: {reached:?}\n{}",
            String::from_utf8_lossy(&echoed.stdout)
        );
    }

    let mut fx = Fixture::new();
    let tree = small_tree(&mut fx);
    let sender = fx.send_in(&a.prefix(), [&tree]);
    let nameplate: u32 = fx.code.split('-').next().unwrap().parse().unwrap();

    let found = helper(&r, "find", &a_addr, nameplate, fx.port).expect("discovery from R");
    let quic_port: u16 = found
        .lines()
        .find_map(|l| l.strip_prefix("FOUND "))
        .unwrap_or_else(|| panic!("R found no sender:\n{found}"))
        .trim()
        .parse()
        .unwrap();
    // Both families found the sender: its IPv4 address first, then IPv6 ones (link-local,
    // from the link-local group's answers).
    let addrs: Vec<std::net::SocketAddr> =
        found.lines().filter_map(|l| l.strip_prefix("ADDR ")?.trim().parse().ok()).collect();
    assert_eq!(addrs.first().map(|a| a.ip()), Some(a_v4), "{found}");
    assert!(addrs.iter().any(|a| a.is_ipv6()), "R found the sender over IPv4 only:\n{found}");

    for ip in [a_v4, a_v6] {
        let quic = std::net::SocketAddr::new(ip, quic_port).to_string();
        let probed = helper(&c, "probe", &quic, nameplate, fx.port).expect("probe from C");
        assert!(probed.contains("ANSWERS 0\n"), "C got discovery answers at {ip}:\n{probed}");
        assert!(probed.contains("QUIC none\n"), "C got a QUIC handshake at {ip}:\n{probed}");

        // Even on the link, only queries sent to the group are answered: a unicast query
        // (which a host anywhere could send with a forged on-link source) is not.
        let queried = helper(&r, "query", &quic, nameplate, fx.port).expect("unicast query from R");
        assert!(
            queried.contains("ANSWERS 0\n"),
            "a unicast query to {ip} was answered:\n{queried}"
        );
    }

    let out = fx.path("out");
    let receiver =
        fx.receive_in(&r.prefix(), [OsStr::new("--yes"), OsStr::new("--out"), out.as_os_str()]);
    let (s, rr) = finish_pair(sender, receiver);
    assert_exits(&[(&s, 0), (&rr, 0)]);
    assert_same_tree(&tree, &out.join("photos"));
    assert_eq!(peer_ip(&s), r_near, "the sender served R over IPv4, as before\n{s}");
}

/// [`lan_helper`] inside `ns`, to be run.
fn helper_command(
    ns: &Netns,
    mode: &str,
    target: &str,
    nameplate: u32,
    port: u16,
) -> std::process::Command {
    let exe = std::env::current_exe().expect("the test binary");
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", &ns.name])
        .arg(exe)
        .args(["--exact", "lan_helper", "--ignored", "--nocapture"])
        .env(HELPER_ENV, format!("{mode} {target} {nameplate} {port}"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd
}

/// Runs [`lan_helper`] inside `ns`; returns its output.
fn helper(
    ns: &Netns,
    mode: &str,
    target: &str,
    nameplate: u32,
    port: u16,
) -> Result<String, String> {
    let out =
        helper_command(ns, mode, target, nameplate, port).output().map_err(|e| e.to_string())?;
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() && text.contains("1 passed") {
        Ok(text)
    } else {
        Err(text)
    }
}

/// Run by [`lan_mode_keeps_to_the_link`] inside a namespace (does nothing on its own):
/// `find` discovers the nameplate and prints the sender's QUIC port and addresses; `query`
/// sends a unicast query to the sender's discovery port and counts answers for two seconds;
/// `probe` does that, then tries a QUIC handshake with the sender's port; `reach` checks that
/// a UDP datagram gets from here to the target (an ICMP-free stand-in for ping). Targets may
/// be IPv4 or IPv6 socket addresses; the helper's sockets take the target's family.
#[tokio::test]
#[ignore = "started inside a namespace by lan_mode_keeps_to_the_link"]
async fn lan_helper() {
    use p2p_copy::internals::net::discovery::{find, DiscoveryConfig};
    use p2p_copy::internals::wire::discovery::DiscoveryMsg;
    use std::net::SocketAddr;
    use std::time::Duration;

    let Ok(spec) = std::env::var(HELPER_ENV) else { return };
    let parts: Vec<&str> = spec.split(' ').collect();
    let (mode, target, nameplate, port) =
        (parts[0], parts[1], parts[2].parse::<u32>().unwrap(), parts[3].parse::<u16>().unwrap());
    let config = DiscoveryConfig { port, ..DiscoveryConfig::default() };
    // Any local address of the target's family.
    let any = |target: &str| -> SocketAddr {
        match target.parse::<SocketAddr>() {
            Ok(SocketAddr::V6(_)) => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
            _ => SocketAddr::from(([0, 0, 0, 0], 0)),
        }
    };
    match mode {
        "find" => {
            let found = find(&config, nameplate, Duration::from_secs(10)).await.expect("found");
            println!("FOUND {}", found.addrs[0].port());
            for addr in &found.addrs {
                println!("ADDR {addr}");
            }
        }
        "echo" => {
            let socket = tokio::net::UdpSocket::bind(target).await.unwrap();
            let mut buf = [0u8; 64];
            let got = tokio::time::timeout(Duration::from_secs(10), socket.recv_from(&mut buf));
            if let Ok(Ok((len, from))) = got.await {
                socket.send_to(&buf[..len], from).await.unwrap();
                println!("ECHOED to {from}");
            }
        }
        "reach" => {
            let socket = tokio::net::UdpSocket::bind(any(target)).await.unwrap();
            let mut buf = [0u8; 64];
            for _ in 0..25 {
                socket.send_to(b"reach", target).await.unwrap();
                let got =
                    tokio::time::timeout(Duration::from_millis(200), socket.recv_from(&mut buf));
                if let Ok(Ok(_)) = got.await {
                    println!("REACHED");
                    break;
                }
            }
        }
        "probe" | "query" => {
            let quic: SocketAddr = target.parse().unwrap();
            let socket = tokio::net::UdpSocket::bind(any(target)).await.unwrap();
            let query = DiscoveryMsg::Query { nameplate, query_id: 77 }.encode();
            let to = SocketAddr::new(quic.ip(), port);
            let mut answers = 0;
            let mut buf = [0u8; 512];
            let until = tokio::time::Instant::now() + Duration::from_secs(2);
            for _ in 0..5 {
                socket.send_to(&query, to).await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            while let Ok(Ok((len, from))) =
                tokio::time::timeout_at(until, socket.recv_from(&mut buf)).await
            {
                println!("answer from {from}: {:?}", DiscoveryMsg::decode(&buf[..len]));
                answers += 1;
            }
            println!("ANSWERS {answers}");
            if mode == "query" {
                return;
            }
            let node = p2p_copy::internals::net::quic::Node::bind(
                any(target),
                &p2p_copy::internals::net::quic::Tuning::default(),
                false,
            )
            .unwrap();
            match node.connect_any(&[quic], Duration::from_secs(3)).await {
                Ok(_) => println!("QUIC handshake"),
                Err(e) => println!("QUIC none\n({e})"),
            }
        }
        other => panic!("unknown helper mode {other}"),
    }
}
