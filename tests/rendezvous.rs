//! Transfers through a rendezvous node: the node runs in this test process (on its own
//! runtime thread) on loopback, the peers are the built binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use p2p_copy_rendezvous::client::Client;
use p2p_copy_rendezvous::relay::Tap;
use p2p_copy_rendezvous::server::{self, Listeners, ServerConfig};
use util::*;

/// A node served on a thread of its own until stopped (or dropped).
struct TestNode {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Sockets the test holds for the node's lifetime (a UDP black hole).
    _held: Vec<std::net::UdpSocket>,
}

impl TestNode {
    fn start(config: ServerConfig) -> TestNode {
        TestNode::start_with(config, "127.0.0.1:0".parse().unwrap(), false)
    }

    /// `udp_blocked`: QUIC is served on another port; on the port clients are given, UDP is a
    /// socket that never answers and only TCP reaches the node.
    fn start_with(mut config: ServerConfig, at: SocketAddr, udp_blocked: bool) -> TestNode {
        config.grace = Duration::ZERO;
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let hole = udp_blocked.then(|| std::net::UdpSocket::bind(at).unwrap());
        let hole_addr = hole.as_ref().map(|h| h.local_addr().unwrap());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listeners = match hole_addr {
                    Some(port_addr) => Listeners {
                        quic: server::endpoint("127.0.0.1:0".parse().unwrap(), &config).unwrap(),
                        tcp: Some(tokio::net::TcpListener::bind(port_addr).await.unwrap()),
                    },
                    None => server::bind(at, &config).unwrap(),
                };
                let addr = hole_addr.unwrap_or_else(|| listeners.local_addr().unwrap());
                addr_tx.send(addr).unwrap();
                server::serve(listeners, config, async {
                    let _ = stopped.await;
                })
                .await;
            });
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).expect("node started");
        eprintln!("node at {addr} (udp blocked: {udp_blocked})");
        TestNode { addr, stop: Some(stop), thread: Some(thread), _held: hole.into_iter().collect() }
    }

    fn arg(&self) -> OsString {
        self.addr.to_string().into()
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `send --json --rendezvous NODE [--code CODE] EXTRA… PATH`, returned once it printed its code.
fn send_via(
    fx: &Fixture,
    node: &TestNode,
    code: Option<&str>,
    extra: &[&str],
    path: &OsStr,
) -> Proc {
    let mut args: Vec<OsString> =
        vec!["send".into(), "--json".into(), "--rendezvous".into(), node.arg()];
    if let Some(code) = code {
        args.extend(["--code".into(), code.into()]);
    }
    args.extend(extra.iter().map(OsString::from));
    args.push(path.to_owned());
    let mut p = fx.spawn("sender", &[], args);
    p.wait_event("code");
    p
}

fn receive_via(fx: &Fixture, node: &TestNode, code: &str, extra: &[&str], out: &OsStr) -> Proc {
    let mut args: Vec<OsString> =
        vec!["receive".into(), "--json".into(), "--rendezvous".into(), node.arg(), "--yes".into()];
    args.extend(extra.iter().map(OsString::from));
    args.extend(["--out".into(), out.to_owned(), code.into()]);
    fx.spawn("receiver", &[], args)
}

/// A loopback address where nothing listens, UDP or TCP (it was free a moment ago).
fn unused_addr() -> SocketAddr {
    let free = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    free.local_addr().unwrap()
}

/// A node whose relay has no rate limits (the tests measure nothing).
fn unlimited_relay() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.relay.session_rate = 0;
    config.relay.total_rate = 0;
    config
}

fn path_of(o: &Outcome) -> String {
    o.event("done").expect("done event")["path"].as_str().unwrap().to_owned()
}

/// A generated code: the sender allocates a nameplate on the node, its code carries that
/// number; a directory arrives whole over the direct path.
#[test]
fn a_directory_goes_direct_through_the_node() {
    let mut fx = Fixture::new();
    let node = TestNode::start(ServerConfig::default());
    let src = fx.path("src/photos");
    for (i, size) in [0u64, 1, 70_000, 3_000_000].iter().enumerate() {
        random_file(&src.join(format!("album/{i}.jpg")), *size, &mut fx.rng);
    }
    std::fs::create_dir_all(src.join("empty")).unwrap();
    let out = fx.path("out");
    let mut args: Vec<OsString> =
        vec!["send".into(), "--json".into(), "--rendezvous".into(), node.arg()];
    args.push(src.clone().into());
    let mut sender = fx.spawn("sender", &[], args);
    let code = sender.wait_event("code")["code"].as_str().unwrap().to_owned();
    let receiver = receive_via(&fx, &node, &code, &[], out.as_os_str());
    let (s, r) = finish_pair(sender, receiver);
    assert_exits(&[(&s, 0), (&r, 0)]);
    assert_eq!(path_of(&s), "direct", "{s}");
    assert_eq!(path_of(&r), "direct", "{r}");
    assert_eq!(r.event("connected").unwrap()["path"], "direct");
    for o in [&s, &r] {
        let done = o.event("done").unwrap();
        let punch = done["punch_seconds"].as_f64().expect("punch time through a node");
        let first = done["first_byte_seconds"].as_f64().expect("time to first byte");
        assert!(punch >= 0.0 && first > 0.0 && first <= done["seconds"].as_f64().unwrap(), "{o}");
    }
    assert_same_tree(&src, &out.join("photos"));
}

/// Both clients tell the node they are gone as they exit, directly or through its relay: its
/// gauges fall to zero at once, not after its idle timeout (30 s), when the ghosts would
/// still count against the per-address and relay limits.
#[test]
fn clients_tell_the_node_they_left() {
    let mut fx = Fixture::new();
    let config = ServerConfig::default();
    let metrics = config.metrics_handle.clone();
    let node = TestNode::start(config);
    let src = fx.path("src/note.txt");
    random_file(&src, 10_000, &mut fx.rng);
    for extra in [&[][..], &["--force-relay"][..]] {
        let out = fx.path(&format!("out{}", extra.len()));
        fx.code = fresh_code();
        let code = fx.code.clone();
        let sender = send_via(&fx, &node, Some(&code), &[], src.as_os_str());
        let receiver = receive_via(&fx, &node, &code, extra, out.as_os_str());
        let (s, r) = finish_pair(sender, receiver);
        assert_exits(&[(&s, 0), (&r, 0)]);
        let gauges = || {
            let g = |a: &std::sync::atomic::AtomicI64| a.load(Ordering::Relaxed);
            (g(&metrics.connections_quic), g(&metrics.connections_tcp), g(&metrics.relays_active))
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while gauges() != (0, 0, 0) {
            assert!(Instant::now() < deadline, "the node still counts {:?} {extra:?}", gauges());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Big enough that the relay's queues fill (both peers' QUIC connections to the node share
/// the socket with the relayed connection: a full relay must not stop the node's).
#[test]
fn forced_relay_delivers_identical_bytes() {
    let mut fx = Fixture::new();
    let node = TestNode::start(ServerConfig::default());
    let src = fx.path("src/big.bin");
    random_file(&src, 96 << 20, &mut fx.rng);
    let out = fx.path("out");
    let code = fx.code.clone();
    let sender = send_via(&fx, &node, Some(&code), &[], src.as_os_str());
    let receiver = receive_via(&fx, &node, &code, &["--force-relay"], out.as_os_str());
    let (s, r) = finish_pair(sender, receiver);
    assert_exits(&[(&s, 0), (&r, 0)]);
    assert_eq!(path_of(&s), "relay", "{s}");
    assert_eq!(path_of(&r), "relay", "{r}");
    assert!(
        std::fs::read(&src).unwrap() == std::fs::read(out.join("big.bin")).unwrap(),
        "identical bytes"
    );
}

/// UDP to the node gets no answer: both sides reach it over TCP (TLS). Direct between the
/// peers still works; with the relay forced, the relay runs over TCP too.
#[test]
fn without_udp_to_the_node_tcp_is_used() {
    let mut fx = Fixture::new();
    let node = TestNode::start_with(ServerConfig::default(), "127.0.0.1:0".parse().unwrap(), true);
    let src = fx.path("src/data.bin");
    random_file(&src, 2 << 20, &mut fx.rng);
    for (i, forced) in [false, true].into_iter().enumerate() {
        let out = fx.path(&format!("out{i}"));
        let code = fresh_code();
        let started = Instant::now();
        let sender = send_via(&fx, &node, Some(&code), &[], src.as_os_str());
        let extra: &[&str] = if forced { &["--force-relay"] } else { &[] };
        let receiver = receive_via(&fx, &node, &code, extra, out.as_os_str());
        let (s, r) = finish_pair(sender, receiver);
        assert_exits(&[(&s, 0), (&r, 0)]);
        assert_eq!(path_of(&r), if forced { "relay" } else { "direct" }, "{r}");
        assert_same_tree(&src, &out.join("data.bin"));
        eprintln!("forced relay {forced}: {:?}", started.elapsed());
    }
}

#[test]
fn a_wrong_code_fails_on_both_sides_through_the_node() {
    let mut fx = Fixture::new();
    let node = TestNode::start(ServerConfig::default());
    let src = fx.path("src/secret.bin");
    random_file(&src, 10_000, &mut fx.rng);
    let out = fx.path("out");
    let code = fx.code.clone();
    let sender = send_via(&fx, &node, Some(&code), &[], src.as_os_str());
    let receiver = receive_via(&fx, &node, &other_code(&code), &[], out.as_os_str());
    let (s, r) = finish_pair(sender, receiver);
    assert_exits(&[(&s, 3), (&r, 3)]);
    for o in [&s, &r] {
        assert_says(o, &["code is wrong"]);
        assert!(o.event("secured").is_none() && o.event("connected").is_none(), "{o}");
    }
    assert!(list_all(&out).is_empty());
}

/// Two parties hold a nameplate; a third that claims it is refused with a clear error and
/// no guess at the code.
#[test]
fn a_third_party_is_refused() {
    let fx = Fixture::new();
    let node = TestNode::start(ServerConfig::default());
    let code = fx.code.clone();
    let nameplate: u32 = code.split('-').next().unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (_a, _b, _ep) = rt.block_on(async {
        let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let wait = Duration::from_secs(5);
        let mut a = Client::connect(&ep, node.addr, None, wait).await.unwrap();
        let mut b = Client::connect(&ep, node.addr, None, wait).await.unwrap();
        assert!(!a.claim(nameplate).await.unwrap());
        assert!(b.claim(nameplate).await.unwrap());
        (a, b, ep)
    });
    let out = fx.path("out");
    let r = receive_via(&fx, &node, &code, &[], out.as_os_str()).finish();
    assert_exits(&[(&r, 3)]);
    assert_says(&r, &["already in use"]);
    assert!(r.event("secured").is_none());
}

/// The node goes away while the sender waits: it fails at once with a message naming the
/// node; against the restarted node, the old code finds nobody.
#[test]
fn a_node_restart_mid_handshake_is_a_clear_error() {
    let mut fx = Fixture::new();
    let mut node = TestNode::start(ServerConfig::default());
    let src = fx.path("src/a.bin");
    random_file(&src, 1000, &mut fx.rng);
    let code = fx.code.clone();
    let sender = send_via(&fx, &node, Some(&code), &[], src.as_os_str());
    let addr = node.addr;
    node.stop();
    let s = sender.finish_within(Duration::from_secs(40));
    assert_exits(&[(&s, 7)]);
    assert_says(&s, &["rendezvous node", &addr.to_string(), "is shutting down"]);

    let node = TestNode::start_with(ServerConfig::default(), addr, false);
    let out = fx.path("out");
    let r = receive_via(&fx, &node, &code, &["--wait", "2"], out.as_os_str()).finish();
    assert_exits(&[(&r, 7)]);
    assert_says(&r, &["nobody is sending"]);
}

#[test]
fn an_unreachable_node_fails_in_bounded_time_and_is_named() {
    let mut fx = Fixture::new();
    let src = fx.path("src/a.bin");
    random_file(&src, 10, &mut fx.rng);
    let addr = unused_addr();
    let started = Instant::now();
    let args: Vec<OsString> = vec![
        "send".into(),
        "--json".into(),
        "--rendezvous".into(),
        addr.to_string().into(),
        src.into(),
    ];
    let s = fx.spawn("sender", &[], args).finish();
    assert_exits(&[(&s, 7)]);
    assert_says(&s, &["cannot reach the rendezvous node", &addr.to_string()]);
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
}

/// A relay that damages one packet of the data costs a retransmission and nothing else: QUIC
/// rejects the packet, sends its content again, and the file arrives whole.
#[test]
fn a_packet_the_relay_damages_is_sent_again() {
    let mut fx = Fixture::new();
    let damaged = Arc::new(AtomicBool::new(false));
    let flag = damaged.clone();
    // The first full-size packet well into the transfer (data packets are full size; the
    // receiver's acknowledgements are small).
    let tap = Tap(Arc::new(move |_side: u8, offset: u64, buf: &mut [u8]| {
        if offset > 1_500_000 && buf.len() > 1000 && !flag.swap(true, Ordering::SeqCst) {
            buf[buf.len() / 2] ^= 0x40;
        }
    }));
    let node = TestNode::start(ServerConfig { relay_tap: Some(tap), ..unlimited_relay() });
    let src = fx.path("src/victim.bin");
    random_file(&src, 8 << 20, &mut fx.rng);
    let out = fx.path("out");
    let code = fx.code.clone();
    let sender = send_via(&fx, &node, Some(&code), &["--force-relay"], src.as_os_str());
    let receiver = receive_via(&fx, &node, &code, &[], out.as_os_str());
    let (s, r) = finish_pair(sender, receiver);
    assert!(damaged.load(Ordering::SeqCst), "the relay damaged a packet");
    assert_exits(&[(&s, 0), (&r, 0)]);
    assert_eq!(path_of(&r), "relay", "{r}");
    assert!(
        std::fs::read(&src).unwrap() == std::fs::read(out.join("victim.bin")).unwrap(),
        "identical bytes"
    );
}

/// A relay that alters every data packet from some point on: QUIC rejects them all, the
/// receiver sees packets arrive through the relay that never authenticate and reports the
/// relay (integrity, exit 6), the sender hears why, and nothing altered is written.
#[test]
fn a_relay_that_alters_every_packet_is_reported() {
    let mut fx = Fixture::new();
    let tampered = Arc::new(AtomicBool::new(false));
    let flag = tampered.clone();
    let tap = Tap(Arc::new(move |_side: u8, offset: u64, buf: &mut [u8]| {
        if offset > 1_500_000 && buf.len() > 1000 {
            buf[buf.len() / 2] ^= 0x40;
            flag.store(true, Ordering::SeqCst);
        }
    }));
    let node = TestNode::start(ServerConfig { relay_tap: Some(tap), ..unlimited_relay() });
    let src = fx.path("src/victim.bin");
    random_file(&src, 8 << 20, &mut fx.rng);
    let out = fx.path("out");
    let code = fx.code.clone();
    let sender = send_via(
        &fx,
        &node,
        Some(&code),
        &["--force-relay", "--reconnect-wait", "5"],
        src.as_os_str(),
    );
    let receiver = receive_via(&fx, &node, &code, &[], out.as_os_str());
    let (s, r) = finish_pair(sender, receiver);
    assert!(tampered.load(Ordering::SeqCst), "the relay tampered");
    assert_exits(&[(&r, 6)]);
    assert_says(&r, &["relay alters"]);
    assert_ne!(s.code(), Some(0), "{s}");
    assert!(!out.join("victim.bin").exists(), "nothing under the final name");
    // Only what arrived authenticated was written; it may stay as a partial copy.
    assert_eq!(final_names(&out), Vec::<std::path::PathBuf>::new(), "{:?}", list_all(&out));
}

/// The settings file names the node when neither the option nor the variable does; a bad
/// settings file is a usage error that names it.
#[test]
fn the_settings_file_names_the_node() {
    let mut fx = Fixture::new();
    let src = fx.path("src/a.bin");
    random_file(&src, 10, &mut fx.rng);
    let addr = unused_addr();
    let settings = fx.path("settings.toml");
    write_file(&settings, format!("rendezvous = \"{addr}\"\n").as_bytes());
    let mut cmd = fx.command(&[], [OsStr::new("send"), OsStr::new("--json"), src.as_os_str()]);
    cmd.env("P2P_COPY_CONFIG", &settings);
    let s = Proc::spawn("sender", cmd).finish();
    assert_exits(&[(&s, 7)]);
    assert_says(&s, &["rendezvous node", &addr.to_string()]);

    write_file(&settings, b"rendezvouz = \"typo:1\"\n");
    let mut cmd = fx.command(&[], [OsStr::new("send"), OsStr::new("--json"), src.as_os_str()]);
    cmd.env("P2P_COPY_CONFIG", &settings);
    let s = Proc::spawn("sender", cmd).finish();
    assert_exits(&[(&s, 2)]);
    assert_says(&s, &["settings.toml", "rendezvouz"]);
}

/// A token in the settings file goes only to the file's node: naming another node on the
/// command line does not send it there (even when it happens to be that node's token).
#[test]
fn the_settings_file_token_stays_with_its_node() {
    let mut fx = Fixture::new();
    let token = "file-secret";
    let config = ServerConfig {
        limits: p2p_copy_rendezvous::table::Limits {
            token: Some(token.into()),
            ..Default::default()
        },
        ..ServerConfig::default()
    };
    let node = TestNode::start(config);
    let src = fx.path("src/a.bin");
    random_file(&src, 10, &mut fx.rng);
    let settings = fx.path("settings.toml");
    let elsewhere = unused_addr();
    let text = format!("rendezvous = \"{elsewhere}\"\nrendezvous_token = \"{token}\"\n");
    write_file(&settings, text.as_bytes());
    let args = [OsStr::new("send"), OsStr::new("--json"), OsStr::new("--rendezvous")];
    let node_arg = node.arg();
    let mut cmd = fx.command(&[], args.into_iter().chain([node_arg.as_os_str(), src.as_os_str()]));
    cmd.env("P2P_COPY_CONFIG", &settings);
    let s = Proc::spawn("sender", cmd).finish();
    assert_exits(&[(&s, 2)]);
    assert_says(&s, &["--rendezvous-token"]);
}

/// A client pinned to the node's certificate (`--rendezvous-fingerprint`, as the node logs
/// it at start) transfers through it; pinned to another certificate, it refuses the node
/// (exit 7, naming the pin) before saying anything to it (issue 13 #10).
#[test]
fn a_pinned_client_refuses_a_node_with_another_certificate() {
    let mut fx = Fixture::new();
    let certified = rcgen::generate_simple_self_signed(vec!["node.example".to_owned()]).unwrap();
    let (cert, key) = (fx.path("tls/cert.pem"), fx.path("tls/key.pem"));
    write_file(&cert, certified.cert.pem().as_bytes());
    write_file(&key, certified.key_pair.serialize_pem().as_bytes());
    let pin = p2p_copy_rendezvous::auth::fingerprint(certified.cert.der());
    let pin = p2p_copy_rendezvous::auth::fingerprint_hex(&pin);
    let tls = Some(p2p_copy_rendezvous::server::TlsFiles { cert, key });
    let node = TestNode::start(ServerConfig { tls, ..ServerConfig::default() });
    let src = fx.path("src/a.bin");
    random_file(&src, 1_000, &mut fx.rng);

    let code = fresh_code();
    let pinned = ["--rendezvous-fingerprint", pin.as_str()];
    let sender = send_via(&fx, &node, Some(&code), &pinned, src.as_os_str());
    let out = fx.path("out");
    let receiver = receive_via(&fx, &node, &code, &pinned, out.as_os_str());
    let (s, r) = finish_pair(sender, receiver);
    assert_exits(&[(&s, 0), (&r, 0)]);

    let wrong = "ab".repeat(32);
    let out = fx.path("out2");
    let args = ["--rendezvous-fingerprint", wrong.as_str()];
    let r = receive_via(&fx, &node, &fresh_code(), &args, out.as_os_str()).finish();
    assert_exits(&[(&r, 7)]);
    assert_says(&r, &["pinned", "--rendezvous-fingerprint"]);
}

/// The library through a node: a sender with a generated code learns it once the node has
/// allocated the nameplate (`wait_code`), and a receiver given it gets the file.
#[test]
fn the_library_meets_through_a_node() {
    use p2p_copy::{Receiver, Rendezvous, Sender};
    let mut fx = Fixture::new();
    let node = TestNode::start(ServerConfig::default());
    let src = fx.path("src/data.bin");
    random_file(&src, 2 << 20, &mut fx.rng);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    rt.unwrap().block_on(async {
        let at = Rendezvous::new(node.addr.to_string());
        let sender = Sender::paths([src.clone()]).rendezvous(at.clone()).start().unwrap();
        let code = tokio::time::timeout(Duration::from_secs(30), sender.wait_code())
            .await
            .expect("the node allocates a nameplate in time")
            .expect("a code");
        let receiver = Receiver::new(code).into_dir(fx.path("out")).rendezvous(at).start().unwrap();
        let (sent, received) = tokio::join!(sender.wait(), receiver.wait());
        assert_eq!(sent.unwrap().report.files, 1);
        assert_eq!(received.unwrap().report.bytes, 2 << 20);
    });
    assert!(std::fs::read(&src).unwrap() == std::fs::read(fx.path("out/data.bin")).unwrap());

    // A node nobody answers at: no code ever, and waiting for one ends with the transfer.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    rt.unwrap().block_on(async {
        let nowhere = Rendezvous::new(unused_addr().to_string());
        let sender = Sender::paths([src.clone()]).rendezvous(nowhere).start().unwrap();
        assert_eq!(sender.code(), None, "not known before the node allocates");
        let code = tokio::time::timeout(Duration::from_secs(90), sender.wait_code()).await;
        assert_eq!(code.expect("ends with the transfer"), None);
        assert_eq!(sender.wait().await.unwrap_err().kind, p2p_copy::ErrorKind::Network);
    });
}

/// `send --count` through a node: the sender holds its nameplate across its receivers. A
/// receiver that comes while another is served is told to wait and is served next, with the
/// same code; both get the file, and the sender has a `done` per receiver. Once the count is
/// served, a late receiver waits out its `--wait` and is told why.
#[test]
fn count_serves_receivers_one_after_another_through_the_node() {
    let mut fx = Fixture::new();
    let node = TestNode::start(ServerConfig::default());
    let src = fx.path("src/data.bin");
    random_file(&src, 3 << 20, &mut fx.rng);
    // Slow enough that the second receiver comes while the first is served.
    let mut args: Vec<OsString> =
        vec!["send".into(), "--json".into(), "--rendezvous".into(), node.arg()];
    args.extend(["--count", "2", "--limit-rate", "512K"].map(OsString::from));
    args.push(src.clone().into());
    let mut sender = fx.spawn("sender", &[], args);
    let code = sender.wait_event("code")["code"].as_str().unwrap().to_owned();
    let (one, two) = (fx.path("one"), fx.path("two"));
    let mut first = receive_via(&fx, &node, &code, &[], one.as_os_str());
    first.wait_event("accepted");
    let second = receive_via(&fx, &node, &code, &["--wait", "60"], two.as_os_str()).finish();
    let first = first.finish();
    assert_exits(&[(&first, 0), (&second, 0)]);
    let told = second.events().into_iter().any(|e| {
        e["event"] == "warning"
            && e["message"].as_str().is_some_and(|m| m.contains("serving another receiver"))
    });
    assert!(told, "the second receiver was told to wait\n{second}");
    for out in [&one, &two] {
        assert_eq!(std::fs::read(out.join("data.bin")).unwrap(), std::fs::read(&src).unwrap());
    }
    let s = sender.finish();
    assert_exits(&[(&s, 0)]);
    let codes: Vec<_> = s.events().into_iter().filter(|e| e["event"] == "code").collect();
    assert!(codes.iter().all(|e| e["code"] == code.as_str()), "one code throughout\n{s}");
    assert_eq!(s.events().into_iter().filter(|e| e["event"] == "done").count(), 2, "{s}");

    let late = receive_via(&fx, &node, &code, &["--wait", "4"], fx.path("late").as_os_str());
    let late = late.finish();
    assert_exits(&[(&late, 7)]);
    assert_says(&late, &["one after another"]);
}
