//! A hostile party on the local network, against the real binaries on loopback.
//!
//! It does not know the code. It sees what everybody on the LAN sees (the discovery
//! datagrams: the nameplate, the sender's QUIC port and instance id) and uses it: it answers
//! discovery for the real sender, pointing the receiver at a QUIC endpoint of its own; it
//! connects to the sender first and guesses; it does both and relays the handshake between
//! them; it opens QUIC connections that never open a control stream, idle or filled with
//! data; it floods discovery with announces and queries. It is built from the library's
//! public API (`net::discovery`, `net::quic`, `proto`), and from raw UDP sockets where it
//! forges discovery datagrams (`wire::discovery`, in `hostile_lan/udp.rs`). Every case runs
//! on the fixture's own discovery port.
//!
//! What must hold: the attacker gets at most one guess per side and learns nothing; nobody
//! writes anything wrong (an honest receiver either gets identical bytes from the real sender
//! or fails with a clear error and writes nothing); every side ends with the documented exit
//! code; memory stays bounded (the product's bound, 40 MiB) where the attack is about
//! resources; and the sender keeps serving an honest receiver once an attack that did not
//! spend its code is over.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "hostile_lan/udp.rs"]
mod udp;
mod util;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use p2p_copy::error::ErrorKind;
use p2p_copy::internals::code::Code;
use p2p_copy::internals::crypto::Role;
use p2p_copy::internals::net::discovery::{self, DiscoveryConfig};
use p2p_copy::internals::net::quic::{Node, Tuning};
use p2p_copy::internals::proto::{Config, Session, SessionError};
use p2p_copy::internals::transfer::control::ControlStream;
use p2p_copy::internals::wire::discovery::DiscoveryMsg;
use p2p_copy::internals::wire::frame;
use rand::rngs::OsRng;
use udp::*;
use util::*;

/// Bound on everything the hostile side waits for.
const STEP: Duration = Duration::from_secs(60);
/// The product's memory bound: no process may peak above it, whatever a peer does.
const MEMORY_BOUND_KIB: u64 = 40 * 1024;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A fixture with `src/d/a` (200,000 bytes), `src/d/b` (0 bytes) and `src/f` (30,000 bytes).
fn tree() -> Fixture {
    let mut fx = Fixture::new();
    random_file(&fx.path("src/d/a"), 200_000, &mut fx.rng);
    write_file(&fx.path("src/d/b"), b"");
    random_file(&fx.path("src/f"), 30_000, &mut fx.rng);
    fx
}

/// The real sender of `src/d` and `src/f`, waiting for its receiver.
fn sender(fx: &Fixture) -> Proc {
    fx.send([fx.path("src/d"), fx.path("src/f")])
}

/// The real receiver, `--yes --out ROOT/out EXTRA…`.
fn receiver(fx: &Fixture, extra: &[&str]) -> Proc {
    let mut args: Vec<OsString> = vec!["--yes".into(), "--out".into(), fx.path("out").into()];
    args.extend(extra.iter().map(Into::into));
    fx.receive(args)
}

/// An honest receiver gets `src/d` and `src/f` from the (still waiting) real sender: both
/// exit 0 and the copy is identical. Returns the sender's outcome.
fn honest_transfer(fx: &Fixture, sender: Proc) -> Outcome {
    let (s, r) = finish_pair(sender, receiver(fx, &[]));
    assert_exits(&[(&s, 0), (&r, 0)]);
    assert_done(&r, 230_000, 3);
    assert_same_tree(&fx.path("src/d"), &fx.path("out/d"));
    assert_same_tree(&fx.path("src/f"), &fx.path("out/f"));
    s
}

/// Everything written below the test root but the source tree and the programs' own
/// settings, cache and state folders.
fn written(fx: &Fixture) -> Vec<PathBuf> {
    list_all(fx.root())
        .into_iter()
        .filter(|p| {
            !["src", "xdg-config", "xdg-cache", "xdg-state"].iter().any(|d| p.starts_with(d))
        })
        .collect()
}

fn discovery_config(fx: &Fixture) -> DiscoveryConfig {
    DiscoveryConfig { port: fx.port, ..DiscoveryConfig::default() }
}

fn nameplate(fx: &Fixture) -> u32 {
    Code::parse(&fx.code).expect("fixture code").nameplate()
}

fn peak_kib(o: &Outcome) -> u64 {
    o.peak_rss_kib.unwrap_or_else(|| panic!("no memory sample\n{o}"))
}

// ---------------------------------------------------------------------------------------------
// Processes

/// Sends `signal` (`-STOP`, `-CONT`) to `pid`.
fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill").args([signal, &pid.to_string()]).status().expect("kill");
    assert!(status.success(), "kill {signal} {pid}: {status}");
}

/// Whether every thread of `pid` is stopped.
fn stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    tasks.flatten().all(|t| {
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // The state follows the command name, which is in parentheses.
        let state = stat.rfind(')').and_then(|i| stat[i + 1..].trim_start().chars().next());
        matches!(state, Some('T' | 't'))
    })
}

/// Stops `pid` (SIGSTOP) and waits until all of its threads are stopped.
fn pause(pid: u32) {
    signal(pid, "-STOP");
    let until = Instant::now() + STEP;
    while !stopped(pid) {
        assert!(Instant::now() < until, "process {pid} did not stop");
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------------
// QUIC

/// One frame body from a control stream.
async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Vec<u8>, &'static str> {
    let mut header = [0u8; frame::HEADER_LEN];
    recv.read_exact(&mut header).await.map_err(|_| "the stream ended")?;
    let len = frame::body_len(header, p2p_copy::internals::wire::control::MAX_FRAME)
        .map_err(|_| "a frame over its cap")?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(|_| "the stream ended within a frame")?;
    Ok(body)
}

/// Finds the fixture's sender as a receiver does.
async fn find_sender(fx: &Fixture) -> discovery::Found {
    discovery::find(&discovery_config(fx), nameplate(fx), STEP).await.expect("sender found")
}

fn client() -> Node {
    Node::bind(SocketAddr::from(([0, 0, 0, 0], 0)), &Tuning::default(), false).expect("bind")
}

// ---------------------------------------------------------------------------------------------
// 1. Answering discovery for the sender

/// The attack: a party that heard the real sender's announces answers the receiver's queries
/// for the nameplate itself, copying the sender's instance id and pointing at its own QUIC
/// endpoint, and runs the handshake there with a guess (a code of the same nameplate). Only
/// its answer reaches the receiver: the real sender is paused (SIGSTOP) while the receiver
/// looks, which is what a faster answer or a lost real one does (with both answering, the
/// first address whose handshake completes wins, a race).
///
/// What must hold: the receiver spends its one exchange on the fake, says the code is wrong
/// (exit 3) and writes nothing, not even `--out`; the fake's guess fails the same way; the
/// real sender, which never heard of it, still serves an honest receiver afterwards (identical
/// bytes, both exit 0, one connection in its log).
#[test]
fn a_party_answering_discovery_for_the_sender_gets_one_wrong_guess_at_the_receiver() {
    let fx = tree();
    let mut real = sender(&fx);
    let wrong = Code::parse(&other_code(&fx.code)).expect("a code");
    let rt = runtime();
    let answered = Arc::new(AtomicU64::new(0));
    let (node, answerer, instance) = rt.block_on(async {
        // What anyone on the LAN can learn: the sender's instance id, from its answers.
        let found = find_sender(&fx).await;
        let node = Node::bind(SocketAddr::from(([0, 0, 0, 0], 0)), &Tuning::default(), true)
            .expect("bind");
        let port = node.local_addr().expect("local addr").port();
        assert!(found.addrs.iter().all(|a| a.port() != port), "{found:?}");
        let socket = group_listener(fx.port);
        socket.set_nonblocking(true).expect("nonblocking");
        let socket = tokio::net::UdpSocket::from_std(socket).expect("tokio socket");
        let answerer = tokio::spawn(answer_for(
            socket,
            wrong.nameplate(),
            found.instance,
            port,
            answered.clone(),
        ));
        (node, answerer, found.instance)
    });
    pause(real.id());

    let honest = receiver(&fx, &[]);
    let fake_port = node.local_addr().expect("local addr").port();
    let guess = rt.block_on(async {
        let (conn, send, recv) = first_session(&node.endpoint, STEP).await;
        let channel = node.channel(&conn).expect("channel binding inputs");
        let session = Session::new(
            Role::Sender,
            &wrong,
            channel,
            Config::default(),
            Instant::now(),
            &mut OsRng,
        );
        let mut ctl = ControlStream::new(session, send, recv);
        let guess = ctl.next_event(STEP).await;
        // The connection stays up until the receiver has exited on its own.
        (guess, conn)
    });
    let r = honest.finish_within(STEP);
    assert_exits(&[(&r, 3)]);
    assert_says(&r, &["the code is wrong"]);
    let connected = r.event("connected").unwrap_or_else(|| panic!("no connection\n{r}"));
    let peer: SocketAddr = connected["peer"].as_str().expect("peer").parse().expect("an address");
    assert_eq!(peer.port(), fake_port, "the receiver connected to the fake\n{r}");
    assert!(r.event("offer").is_none() && r.event("secured").is_none(), "{r}");
    assert!(written(&fx).is_empty(), "the receiver wrote {:?}\n{r}", written(&fx));
    let (guess, conn) = guess;
    let kind = guess.as_ref().map_err(|e| e.kind);
    assert_eq!(kind.err(), Some(ErrorKind::WrongCode), "the fake's guess: {guess:?}");
    assert!(answered.load(Ordering::Relaxed) > 0);
    eprintln!(
        "the fake answered {} queries for instance {instance:016x}",
        answered.load(Ordering::Relaxed)
    );

    // The fake leaves; the real sender goes on as if nothing happened.
    answerer.abort();
    drop((conn, node));
    drop(rt);
    signal(real.id(), "-CONT");
    assert!(real.running(), "the real sender gave up\n{}", real.output_so_far());
    let s = honest_transfer(&fx, real);
    let connections = s.events().iter().filter(|e| e["event"] == "connected").count();
    assert_eq!(connections, 1, "the sender served exactly the honest receiver\n{s}");
}

// ---------------------------------------------------------------------------------------------
// 2. Connecting first with a guess

/// A party that connected to the sender and sent its PAKE message with a guess; its key
/// confirmation is held back, so the sender is still waiting for it.
struct Guess {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    session: Session,
    /// What the session queued after the sender's PAKE message: the confirmation.
    held: Vec<Vec<u8>>,
    _node: Node,
}

impl Guess {
    /// Finds the sender as a receiver does, connects, opens the control stream with the
    /// PAKE message of `code`, and reads the sender's PAKE message.
    async fn start(fx: &Fixture, code: &Code) -> Guess {
        let found = find_sender(fx).await;
        let node = client();
        let conn = node.connect_any(&found.addrs, STEP).await.expect("connect");
        let (mut send, mut recv) = conn.open_bi().await.expect("control stream");
        let channel = node.channel(&conn).expect("channel binding inputs");
        let mut session = Session::new(
            Role::Receiver,
            code,
            channel,
            Config::default(),
            Instant::now(),
            &mut OsRng,
        );
        let pake = session.poll_transmit().expect("the PAKE message");
        assert!(session.poll_transmit().is_none(), "only the PAKE message goes first");
        send.write_all(&pake).await.expect("write the PAKE message");
        let theirs = tokio::time::timeout(STEP, read_frame(&mut recv))
            .await
            .expect("the sender's PAKE message within STEP")
            .expect("the sender's PAKE message");
        session.handle_frame(Instant::now(), &theirs).expect("a PAKE message");
        let held: Vec<Vec<u8>> = std::iter::from_fn(|| session.poll_transmit()).collect();
        assert!(!held.is_empty(), "the session confirms after the sender's PAKE message");
        Guess { conn, send, recv, session, held, _node: node }
    }

    /// Sends the held confirmation and reads what the sender still says until its stream
    /// ends: returns how its first frame (the sender's confirmation) checked out, the number
    /// of frames after it, and whether the sender opened a data lane.
    async fn confirm(mut self) -> (Result<(), SessionError>, usize, bool) {
        for f in std::mem::take(&mut self.held) {
            let _ = self.send.write_all(&f).await;
        }
        let confirm = tokio::time::timeout(STEP, read_frame(&mut self.recv))
            .await
            .expect("the sender's confirmation within STEP")
            .expect("the sender's confirmation");
        let checked = self.session.handle_frame(Instant::now(), &confirm);
        let mut more = 0;
        while let Ok(Ok(_)) = tokio::time::timeout(STEP, read_frame(&mut self.recv)).await {
            more += 1;
        }
        // A lane the sender opened would be delivered before its connection's close.
        let lane = tokio::time::timeout(STEP, self.conn.accept_uni()).await;
        (checked, more, !matches!(lane, Ok(Err(_))))
    }
}

/// The attack: a party that saw the nameplate connects to the sender before the receiver
/// does and makes a guess (a code of the same nameplate); while it holds the session, the
/// honest receiver comes.
///
/// What must hold: the honest receiver is told at once that the code is taken (exit 7,
/// "already serving another receiver") and writes nothing; the sender, once the guess's
/// confirmation arrives, ends with exit 3 ("the code is wrong") without an offer, a lane or a
/// frame after its confirmation; the guesser's own check fails too (it learns nothing).
#[test]
fn a_party_that_connects_first_with_a_guess_spends_the_code() {
    let fx = tree();
    let real = sender(&fx);
    let wrong = Code::parse(&other_code(&fx.code)).expect("a code");
    let rt = runtime();
    let guess = rt.block_on(Guess::start(&fx, &wrong));

    let r = receiver(&fx, &[]).finish_within(STEP);
    assert_exits(&[(&r, 7)]);
    assert_says(&r, &["already serving another receiver", "new code"]);
    assert!(r.event("connected").is_none(), "{r}");

    let (checked, more, lane) = rt.block_on(guess.confirm());
    let s = real.finish_within(STEP);
    assert_exits(&[(&s, 3)]);
    assert_says(&s, &["the code is wrong"]);
    for event in ["secured", "offer", "accepted"] {
        assert!(s.event(event).is_none(), "the sender got as far as {event}\n{s}");
    }
    assert!(matches!(checked, Err(SessionError::WrongCode)), "the guess: {checked:?}");
    assert_eq!(more, 0, "frames after the sender's confirmation");
    assert!(!lane, "the sender opened a data lane");
    assert!(written(&fx).is_empty(), "written: {:?}", written(&fx));
}

/// The attack: a party connects to the sender first and opens the control stream (one byte
/// of a frame header), then says nothing: it holds the code's only session without making a
/// guess.
///
/// What must hold: an honest receiver that comes meanwhile is told the code is taken (exit 7)
/// and writes nothing; the sender does not wait for ever: when its handshake timeout (30 s)
/// runs out it ends with a network error (exit 7) saying so, with no offer made.
#[test]
fn a_party_that_connects_first_and_says_nothing_is_given_up() {
    let fx = tree();
    let real = sender(&fx);
    let rt = runtime();
    let held = rt.block_on(async {
        let found = find_sender(&fx).await;
        let node = client();
        let conn = node.connect_any(&found.addrs, STEP).await.expect("connect to the sender");
        let (mut send, recv) = conn.open_bi().await.expect("control stream");
        send.write_all(&[0]).await.expect("the first byte");
        (node, conn, send, recv)
    });
    let r = receiver(&fx, &[]).finish_within(STEP);
    assert_exits(&[(&r, 7)]);
    assert_says(&r, &["already serving another receiver"]);
    assert!(written(&fx).is_empty(), "written: {:?}", written(&fx));
    let s = real.finish_within(STEP);
    drop(held);
    assert_exits(&[(&s, 7)]);
    assert_says(&s, &["did not complete the handshake within 30s"]);
    assert!(s.event("offer").is_none(), "{s}");
}

/// Copies `from` to `to` until `from` ends or either fails; returns the bytes copied.
async fn relay(mut from: quinn::RecvStream, mut to: quinn::SendStream) -> u64 {
    let mut copied = 0;
    while let Ok(Some(chunk)) = from.read_chunk(64 << 10, true).await {
        if to.write_all(&chunk.bytes).await.is_err() {
            break;
        }
        copied += chunk.bytes.len() as u64;
    }
    let _ = to.finish();
    copied
}

/// The attack: both halves at once, relayed. A party connects to the sender first (the
/// first byte of a frame header opens the control stream, so the sender then answers
/// discovery with `Busy` only), answers the receiver's discovery for the real sender with its
/// own QUIC endpoint, and relays the two control streams byte for byte: the PAKE and CONFIRM
/// go through unchanged, so both sides derive the same key, over two TLS sessions that end at
/// the relay.
///
/// What must hold: both sides see that the certificate of their connection is not the one
/// their peer announced in its sealed hello, and stop before any offer with an integrity
/// error ("someone is in the middle", exit 6); nothing is written; the relay learns nothing
/// (everything after the CONFIRMs is sealed).
#[test]
fn a_party_in_the_middle_that_relays_the_handshake_is_found_out() {
    let fx = tree();
    let real = sender(&fx);
    let rt = runtime();
    let (node, to_sender, instance, answerer) = rt.block_on(async {
        let found = find_sender(&fx).await;
        // As a receiver: one connection, its control stream opened by a frame header's first
        // byte (every frame here is far shorter than 16 MiB, so that byte is 0).
        let node = Node::bind(SocketAddr::from(([0, 0, 0, 0], 0)), &Tuning::default(), true)
            .expect("bind");
        let conn = node.connect_any(&found.addrs, STEP).await.expect("connect to the sender");
        let (mut send, recv) = conn.open_bi().await.expect("control stream");
        send.write_all(&[0]).await.expect("the first byte");
        let port = node.local_addr().expect("local addr").port();
        let socket = group_listener(fx.port);
        socket.set_nonblocking(true).expect("nonblocking");
        let socket = tokio::net::UdpSocket::from_std(socket).expect("tokio socket");
        let answerer = tokio::spawn(answer_for(
            socket,
            nameplate(&fx),
            found.instance,
            port,
            Arc::new(AtomicU64::new(0)),
        ));
        (node, (conn, send, recv), found.instance, answerer)
    });

    let honest = receiver(&fx, &[]);
    let (upstream, downstream) = rt.block_on(async {
        let (conn, send, mut recv) = first_session(&node.endpoint, STEP).await;
        let mut first = [0u8; 1];
        recv.read_exact(&mut first).await.expect("the receiver's first byte");
        assert_eq!(first, [0], "a frame header's first byte");
        let (_sender_conn, to_send, from_send) = to_sender;
        let up = tokio::spawn(relay(recv, to_send));
        let down = tokio::spawn(relay(from_send, send));
        let up = tokio::time::timeout(STEP, up).await.expect("relayed within STEP").expect("up");
        let down =
            tokio::time::timeout(STEP, down).await.expect("relayed within STEP").expect("down");
        drop(conn);
        (up, down)
    });
    let (s, r) = finish_pair(real, honest);
    answerer.abort();
    drop(node);
    eprintln!("relayed {upstream} bytes up, {downstream} down, as instance {instance:016x}");
    assert_exits(&[(&s, 6), (&r, 6)]);
    assert_says(&s, &["someone is in the middle"]);
    assert_says(&r, &["someone is in the middle"]);
    for o in [&s, &r] {
        assert!(o.event("secured").is_none() && o.event("offer").is_none(), "{o}");
    }
    assert!(written(&fx).is_empty(), "written: {:?}", written(&fx));
}

// ---------------------------------------------------------------------------------------------
// 3. Connections that never open a stream

/// Opens `count` connections to `to`, `at_once` at a time; returns those that were
/// established and the reasons the others failed.
async fn connect_many(
    node: &Arc<Node>,
    to: SocketAddr,
    count: usize,
    at_once: usize,
) -> (Vec<quinn::Connection>, Vec<String>) {
    let (mut held, mut failed) = (Vec::new(), Vec::new());
    let mut attempts = tokio::task::JoinSet::new();
    let mut started = 0;
    while started < count || !attempts.is_empty() {
        while started < count && attempts.len() < at_once {
            let node = node.clone();
            attempts.spawn(async move { node.connect_any(&[to], STEP).await });
            started += 1;
        }
        match attempts.join_next().await.expect("an attempt").expect("attempt task") {
            Ok(conn) => held.push(conn),
            Err(e) => failed.push(e.to_string()),
        }
    }
    (held, failed)
}

/// The attack: a party opens many QUIC connections to the LAN sender, completes their
/// handshakes and never opens a control stream: 16 first (the sender keeps at most 16 such
/// connections pending), then 1,000 more, 32 at a time. An honest receiver comes while the 16
/// are held; a second one after the sender dropped them.
///
/// What must hold: the first 16 connections are taken, every later one is refused while they
/// are held, and so is the honest receiver then (exit 7, writing nothing): a denial of
/// service a LAN party can do anyway (docs/security.md §10). The sender drops each held
/// connection by itself (no stream within 10 s), then serves the second honest receiver
/// (identical bytes), and its peak resident set stays under 40 MiB.
#[test]
fn connections_that_never_open_a_stream_are_bounded_and_dropped() {
    let fx = tree();
    let real = sender(&fx);
    let rt = runtime();
    let node = Arc::new(rt.block_on(async { client() }));
    let (held, failed) = rt.block_on(async {
        let found = find_sender(&fx).await;
        let to = SocketAddr::from((Ipv4Addr::LOCALHOST, found.addrs[0].port()));
        let (held, failed) = connect_many(&node, to, 16, 16).await;
        assert!(failed.is_empty(), "the first 16 connections are taken: {failed:?}");
        let (more, failed) = connect_many(&node, to, 1_000, 32).await;
        (held.into_iter().chain(more).collect::<Vec<_>>(), failed)
    });
    let still_held = |held: &[quinn::Connection]| held.iter().all(|c| c.close_reason().is_none());
    // The sender drops a held connection after 10 s; all of this takes far less.
    assert!(still_held(&held), "a held connection was dropped before the attack ended");
    assert_eq!(
        held.len(),
        16,
        "connections taken beyond the 16 pending; refused: {}",
        failed.len()
    );
    let refused = failed.iter().filter(|f| f.contains("refused")).count();
    assert_eq!(
        refused,
        1_000,
        "every later attempt is refused: {:?}",
        &failed[..3.min(failed.len())]
    );
    eprintln!("1,016 attempts: 16 held, 1,000 refused ({})", failed[0]);

    let r = receiver(&fx, &[]).finish_within(STEP);
    assert!(still_held(&held), "a held connection was dropped before the receiver tried");
    assert_exits(&[(&r, 7)]);
    assert_says(&r, &["could not connect to the sender", "refused"]);
    assert!(written(&fx).is_empty(), "written: {:?}", written(&fx));

    let closes = rt.block_on(async {
        let mut closes = BTreeSet::new();
        for conn in &held {
            let why = tokio::time::timeout(STEP, conn.closed()).await.expect("dropped within STEP");
            closes.insert(why.to_string());
        }
        closes
    });
    eprintln!("the sender closed the held connections: {closes:?}");
    drop((held, node));
    drop(rt);
    let s = honest_transfer(&fx, real);
    eprintln!("sender peak: {} KiB", peak_kib(&s));
    assert!(peak_kib(&s) < MEMORY_BOUND_KIB, "sender peak {} KiB\n{s}", peak_kib(&s));
}

/// Makes the peer of `conn` hold what a connection without a control stream can make it
/// hold: unreliable datagrams (2 MB of them) and unidirectional streams (8 of 1 MiB; a write
/// that makes no progress for 2 s is blocked by flow control and ends the filling). Returns
/// the bytes written.
async fn stuff(conn: quinn::Connection) -> u64 {
    let mut written = 0;
    if let Some(max) = conn.max_datagram_size() {
        for _ in 0..2_000_000 / max {
            let datagram = bytes::Bytes::from(vec![0x55; max]);
            match tokio::time::timeout(STEP, conn.send_datagram_wait(datagram)).await {
                Ok(Ok(())) => written += max as u64,
                _ => break,
            }
        }
    }
    let junk = vec![0xaa; 1 << 20];
    for _ in 0..8 {
        let Ok(mut stream) = conn.open_uni().await else { break };
        match tokio::time::timeout(Duration::from_secs(2), stream.write_all(&junk)).await {
            Ok(Ok(())) => written += junk.len() as u64,
            _ => break,
        }
    }
    written
}

/// The attack: 16 connections that never open a control stream (as above), each filled
/// with what the sender holds for a connection until it reads it: datagrams and
/// unidirectional streams, up to the flow-control windows.
///
/// What must hold: the sender drops each of them at once (a receiver opens nothing before its
/// control stream) instead of holding their data for 10 s, its peak resident set stays under
/// 40 MiB, and it then serves an honest receiver.
#[test]
fn data_on_connections_without_a_control_stream_is_not_kept() {
    let fx = tree();
    let real = sender(&fx);
    let rt = runtime();
    let node = Arc::new(rt.block_on(async { client() }));
    let (written, closes) = rt.block_on(async {
        let found = find_sender(&fx).await;
        let to = SocketAddr::from((Ipv4Addr::LOCALHOST, found.addrs[0].port()));
        let (held, failed) = connect_many(&node, to, 16, 16).await;
        assert!(failed.is_empty(), "16 connections are taken: {failed:?}");
        let mut stuffing = tokio::task::JoinSet::new();
        for conn in &held {
            stuffing.spawn(stuff(conn.clone()));
        }
        let written: u64 = stuffing.join_all().await.into_iter().sum();
        let mut closes = BTreeSet::new();
        for conn in &held {
            let why = tokio::time::timeout(STEP, conn.closed()).await.expect("dropped within STEP");
            closes.insert(match why {
                quinn::ConnectionError::ApplicationClosed(close) => close.reason.to_vec(),
                other => panic!("the sender did not close the connection: {other}"),
            });
        }
        (written, closes)
    });
    eprintln!("{written} bytes accepted for sending on 16 connections");
    // Dropped for the stream at once, not after 10 s without a control stream.
    let why: Vec<&[u8]> = vec![b"a stream before the control stream"];
    assert_eq!(closes.iter().map(Vec::as_slice).collect::<Vec<_>>(), why);
    drop(node);
    drop(rt);
    let s = honest_transfer(&fx, real);
    eprintln!("sender peak: {} KiB", peak_kib(&s));
    assert!(peak_kib(&s) < MEMORY_BOUND_KIB, "sender peak {} KiB\n{s}", peak_kib(&s));
}

// ---------------------------------------------------------------------------------------------
// 4. Floods

/// The attack: a party floods the group with announces for the nameplate, each from another
/// instance (thousands: it starts before the receiver and goes on until it exits).
///
/// What must hold: the receiver stops at once as ambiguous (exit 7, "two different senders",
/// asks for a new code) without connecting anywhere or writing anything, its peak resident set
/// under 40 MiB; the real sender, which the flood does not concern, serves an honest receiver
/// once the flood is over.
#[test]
fn a_flood_of_announces_from_other_instances_stops_the_receiver_at_once() {
    let fx = tree();
    let real = sender(&fx);
    let np = nameplate(&fx);
    let (stop, sent) = (AtomicBool::new(false), AtomicU64::new(0));
    let r = std::thread::scope(|s| {
        s.spawn(|| {
            flood(&group_sender(), fx.port, 1_000_000, &stop, &sent, |i| DiscoveryMsg::Announce {
                nameplate: np,
                instance: 0x5eed_0000_0000 + i,
                port: 9,
                query_id: 0,
            })
        });
        let until = Instant::now() + STEP;
        while sent.load(Ordering::Relaxed) < 1_000 {
            assert!(Instant::now() < until, "the flood did not start");
            std::thread::sleep(Duration::from_millis(5));
        }
        let r = receiver(&fx, &[]).finish_within(STEP);
        stop.store(true, Ordering::Relaxed);
        r
    });
    let sent = sent.load(Ordering::Relaxed);
    eprintln!("{sent} announces sent; receiver peak {} KiB", peak_kib(&r));
    assert_exits(&[(&r, 7)]);
    assert_says(&r, &["two different senders", "new code"]);
    assert!(r.event("connected").is_none(), "{r}");
    assert!(written(&fx).is_empty(), "written: {:?}", written(&fx));
    assert!(peak_kib(&r) < MEMORY_BOUND_KIB, "receiver peak {} KiB\n{r}", peak_kib(&r));
    honest_transfer(&fx, real);
}

/// Marks the query ids of the flood, to tell its answers from any other.
const FLOOD_TAG: u64 = 0xf100_d000_0000_0000;

/// The attack: a party floods the sender with queries for its nameplate (thousands in 2 s,
/// sent to the group from loopback, as a receiver's are) to make it an amplifier.
///
/// What must hold: within the 2 s, the flooding socket gets at most 50 unicast answers per
/// second (100: the sender ran quietly for a second before, so its budget starts with the
/// flood), and the group at most one multicast answer per 100 ms (20); the sender still
/// serves an honest receiver afterwards, its peak resident set under 40 MiB.
#[test]
fn a_flood_of_queries_gets_rate_limited_answers() {
    let fx = tree();
    let real = sender(&fx);
    // Longer than the sender's answer window: the flood's first query opens a fresh one.
    std::thread::sleep(Duration::from_millis(1_100));
    let np = nameplate(&fx);
    let flooder = group_sender();
    let listener = group_listener(fx.port);
    let (stop, sent) = (AtomicBool::new(false), AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(2);
    let (unicast, multicast) = std::thread::scope(|s| {
        let unicast = s.spawn(|| collect_until(&flooder, end));
        let multicast = s.spawn(|| collect_until(&listener, end));
        flood(&flooder, fx.port, u64::MAX, &stop, &sent, |i| {
            if Instant::now() >= end {
                stop.store(true, Ordering::Relaxed);
            }
            DiscoveryMsg::Query { nameplate: np, query_id: FLOOD_TAG | i }
        });
        (unicast.join().expect("unicast counter"), multicast.join().expect("multicast counter"))
    });
    let answers = |got: &[DiscoveryMsg]| -> BTreeSet<u64> {
        got.iter()
            .filter_map(|m| match m {
                DiscoveryMsg::Announce { nameplate, query_id, .. }
                    if *nameplate == np && query_id & FLOOD_TAG == FLOOD_TAG =>
                {
                    Some(*query_id)
                }
                _ => None,
            })
            .collect()
    };
    let (uni, multi) = (answers(&unicast), answers(&multicast));
    let sent = sent.load(Ordering::Relaxed);
    eprintln!(
        "{sent} queries in 2 s: {} unicast answers ({} datagrams), {} multicast answers",
        uni.len(),
        unicast.len(),
        multi.len()
    );
    assert!(sent >= 1_000, "only {sent} queries sent");
    assert_eq!(unicast.len(), uni.len(), "one unicast datagram per answered query");
    assert!((1..=100).contains(&uni.len()), "{} unicast answers in 2 s", uni.len());
    assert!(multi.len() <= 20, "{} multicast answers in 2 s", multi.len());
    let s = honest_transfer(&fx, real);
    eprintln!("sender peak: {} KiB", peak_kib(&s));
    assert!(peak_kib(&s) < MEMORY_BOUND_KIB, "sender peak {} KiB\n{s}", peak_kib(&s));
}
