//! The NAT matrix in the in-process layer: the library's real send and receive, a real node,
//! and real quinn endpoints, all on `netsim`'s simulated network with 20–150 ms between the
//! peers. No root needed. Each case prints its seed; `P2P_COPY_SIM_SEED=N` replays it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use p2p_copy::internals::code::Code;
use p2p_copy::internals::transfer::meet::Rendezvous;
use p2p_copy::internals::transfer::{self, PathKind, Progress, Quiet, ReceiveOptions, SendOptions};
use p2p_copy_netsim::sim::{Link, NatOptions, Sim, SimHost};
use p2p_copy_netsim::Nat;
use p2p_copy_rendezvous::server::{self, Listeners, ServerConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Where a peer sits.
#[derive(Debug, Clone, Copy)]
enum Place {
    Public,
    Behind(Nat),
    /// Behind a port-restricted home NAT behind a carrier-grade NAT of this kind.
    Cgnat(Nat),
}

fn seed() -> u64 {
    std::env::var("P2P_COPY_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::random::<u64>() >> 1)
}

fn host(sim: &Sim, place: Place, link: Link) -> SimHost {
    match place {
        Place::Public => sim.public_host(link),
        Place::Behind(nat) => sim.host_behind(sim.nat(nat, NatOptions::default()), link),
        Place::Cgnat(nat) => {
            let carrier = sim.nat(nat, NatOptions::default());
            let home = sim.nat_behind(carrier, Nat::PortRestricted, NatOptions::default());
            sim.host_behind(home, link)
        }
    }
}

type NodeTask = tokio::task::JoinHandle<()>;

/// A rendezvous node on `host`, port 4433, until the sender is used or dropped.
fn start_node(host: &SimHost) -> (tokio::sync::oneshot::Sender<()>, NodeTask) {
    let config = ServerConfig::default();
    let quic = server::endpoint_on(host.bind(4433).unwrap(), &config).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let node = tokio::spawn(server::serve(Listeners { quic, tcp: None }, config, async {
        let _ = stopped.await;
    }));
    (stop, node)
}

/// One transfer from `sender` to `receiver` through a node on the simulated network; checks the
/// bytes and returns the path both sides took.
async fn pair(sender: Place, receiver: Place) -> (PathKind, Duration) {
    let seed = seed();
    eprintln!("sim seed {seed} (P2P_COPY_SIM_SEED): {sender:?} -> {receiver:?}");
    let sim = Sim::new(seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let node_host = sim.public_host(link(&mut rng));
    let s_host = host(&sim, sender, link(&mut rng));
    let r_host = host(&sim, receiver, link(&mut rng));
    let label = format!("{sender:?} -> {receiver:?}");
    let (path, elapsed, punch) = run(seed, &node_host, &s_host, &r_host, Outcome::Completes).await;
    eprintln!("SIM {label}: {} (punching {punch:?} s, all {elapsed:?})", path.as_str());
    (path, elapsed)
}

/// An access link of 10–75 ms one way, so 20–150 ms between two hosts.
fn link(rng: &mut StdRng) -> Link {
    Link {
        latency: Duration::from_millis(rng.gen_range(10..=75)),
        jitter: Duration::from_millis(2),
        ..Link::IDEAL
    }
}

/// What a run must end with.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Completes,
    /// The receiver types another code: both fail with `wrong_code`, nothing is written.
    WrongCode,
}

/// A sender on `sender.0` sending `sender.2` with code `sender.1`, and a receiver on
/// `receiver.0` typing `receiver.1` into `receiver.2`, both through the node on `node_host`.
fn options(
    node_host: &SimHost,
    sender: (&SimHost, Code, &Path),
    receiver: (&SimHost, Code, &Path),
) -> (SendOptions, ReceiveOptions) {
    let rendezvous = Rendezvous::new(format!("{}:4433", node_host.ip));
    let mut s = SendOptions::new(vec![sender.2.to_path_buf()], sender.1);
    s.rendezvous = Some(rendezvous.clone());
    s.code_chosen = true;
    s.socket = Some(sender.0.bind(0).unwrap());
    let mut r = ReceiveOptions::new(receiver.1, receiver.2.to_path_buf());
    r.yes = true;
    r.rendezvous = Some(rendezvous);
    r.socket = Some(receiver.0.bind(0).unwrap());
    (s, r)
}

/// Sends 1 MB from `s_host` to `r_host` through a node on `node_host`; checks the outcome and
/// the bytes, and returns the path both sides took (for a wrong code, the relay), the time
/// taken and the receiver's `punch_seconds`.
async fn run(
    seed: u64,
    node_host: &SimHost,
    s_host: &SimHost,
    r_host: &SimHost,
    outcome: Outcome,
) -> (PathKind, Duration, Option<f64>) {
    let (stop, node) = start_node(node_host);
    let mut rng = StdRng::seed_from_u64(seed ^ 1);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("data.bin");
    let data: Vec<u8> =
        (0..1_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    let out = dir.path().join("out");
    let code = Code::generate(rng.gen_range(1..=999), 3, &mut rand::rngs::OsRng).unwrap();
    let typed = match outcome {
        Outcome::Completes => code.clone(),
        // The same nameplate, other words.
        Outcome::WrongCode => Code::generate(code.nameplate(), 3, &mut rand::rngs::OsRng).unwrap(),
    };
    let (s, r) = options(node_host, (s_host, code, &src), (r_host, typed, &out));
    let started = std::time::Instant::now();
    // Spawned: the futures are Send, so a library user can run them on any task.
    let sending = tokio::spawn(transfer::send(s, Arc::new(Quiet), Progress::new()));
    let received = transfer::receive(r, Arc::new(Quiet), Progress::new()).await;
    let sent = sending.await.unwrap();
    let elapsed = started.elapsed();
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), node).await;
    if outcome == Outcome::WrongCode {
        for result in [&sent, &received] {
            let e = result.as_ref().expect_err("a wrong code fails");
            assert_eq!(e.kind, p2p_copy::error::ErrorKind::WrongCode, "seed {seed}: {e:?}");
        }
        assert!(!out.exists(), "seed {seed}: nothing written");
        return (PathKind::Relay, elapsed, None);
    }
    let (sent, received) = match (sent, received) {
        (Ok(s), Ok(r)) => (s, r),
        other => panic!("seed {seed}: failed: {other:?}"),
    };
    assert_eq!(sent.path, received.path, "seed {seed}");
    assert!(std::fs::read(out.join("data.bin")).unwrap() == data, "seed {seed}: identical bytes");
    (received.path, elapsed, received.punch_seconds)
}

macro_rules! case {
    ($name:ident, $sender:expr, $receiver:expr, $path:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let (path, _) = pair($sender, $receiver).await;
            assert_eq!(path, $path, "{:?} -> {:?}", $sender, $receiver);
        }
    };
}

case!(public_to_public, Place::Public, Place::Public, PathKind::Direct);
case!(
    public_to_port_restricted,
    Place::Public,
    Place::Behind(Nat::PortRestricted),
    PathKind::Direct
);
case!(
    symmetric_to_full_cone,
    Place::Behind(Nat::Symmetric),
    Place::Behind(Nat::FullCone),
    PathKind::Direct
);
case!(
    port_restricted_to_public,
    Place::Behind(Nat::PortRestricted),
    Place::Public,
    PathKind::Direct
);
case!(
    port_restricted_to_port_restricted,
    Place::Behind(Nat::PortRestricted),
    Place::Behind(Nat::PortRestricted),
    PathKind::Direct
);
case!(
    full_cone_to_symmetric,
    Place::Behind(Nat::FullCone),
    Place::Behind(Nat::Symmetric),
    PathKind::Direct
);
case!(
    address_restricted_to_symmetric,
    Place::Behind(Nat::AddressRestricted),
    Place::Behind(Nat::Symmetric),
    PathKind::Direct
);
case!(
    port_restricted_to_symmetric,
    Place::Behind(Nat::PortRestricted),
    Place::Behind(Nat::Symmetric),
    PathKind::Relay
);
case!(
    symmetric_to_symmetric,
    Place::Behind(Nat::Symmetric),
    Place::Behind(Nat::Symmetric),
    PathKind::Relay
);
case!(
    port_preserving_cgnat_to_port_restricted,
    Place::Cgnat(Nat::PortRestricted),
    Place::Behind(Nat::PortRestricted),
    PathKind::Direct
);
case!(
    random_port_cgnat_to_port_restricted,
    Place::Cgnat(Nat::Symmetric),
    Place::Behind(Nat::PortRestricted),
    PathKind::Relay
);

/// Two hosts behind one NAT, with and without hairpinning: direct either way (through their
/// LAN addresses, or the NAT's public mappings).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_lan_behind_one_nat_is_direct() {
    for hairpin in [false, true] {
        let seed = seed();
        eprintln!("sim seed {seed} (P2P_COPY_SIM_SEED): same LAN, hairpin {hairpin}");
        let sim = Sim::new(seed);
        let mut rng = StdRng::seed_from_u64(seed);
        let node_host = sim.public_host(link(&mut rng));
        let nat = sim.nat(Nat::PortRestricted, NatOptions { hairpin, ..NatOptions::default() });
        let lan = Link::latency(Duration::from_millis(1));
        let (s_host, r_host) = (sim.host_behind(nat, lan), sim.host_behind(nat, lan));
        let (path, ..) = run(seed, &node_host, &s_host, &r_host, Outcome::Completes).await;
        assert_eq!(path, PathKind::Direct, "seed {seed}, hairpin {hairpin}");
    }
}

/// 5 % loss each way on the sender's link and 20 Mbit/s: completes with identical bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_rate_limited_link_completes() {
    let seed = seed();
    eprintln!("sim seed {seed} (P2P_COPY_SIM_SEED): 5% loss, 20 Mbit/s");
    let sim = Sim::new(seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let node_host = sim.public_host(link(&mut rng));
    let lossy = Link { loss: 0.05, rate: Some(2_500_000), ..link(&mut rng) };
    let s_host = host(&sim, Place::Behind(Nat::PortRestricted), lossy);
    let r_host = host(&sim, Place::Behind(Nat::PortRestricted), link(&mut rng));
    let (path, elapsed, _) = run(seed, &node_host, &s_host, &r_host, Outcome::Completes).await;
    eprintln!("SIM 5% loss, 20 Mbit/s: {} (all {elapsed:?})", path.as_str());
}

/// A wrong code behind NATs fails on both sides, nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_code_behind_nats_fails_cleanly() {
    let seed = seed();
    eprintln!("sim seed {seed} (P2P_COPY_SIM_SEED): wrong code");
    let sim = Sim::new(seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let node_host = sim.public_host(link(&mut rng));
    let s_host = host(&sim, Place::Behind(Nat::PortRestricted), link(&mut rng));
    let r_host = host(&sim, Place::Behind(Nat::Symmetric), link(&mut rng));
    run(seed, &node_host, &s_host, &r_host, Outcome::WrongCode).await;
}

/// The direct path between two port-restricted NATs dies mid-file (the NATs cannot reach each
/// other any more; the node still can): the transfer moves to the relay and completes with
/// identical bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_path_cut_mid_transfer_moves_to_the_relay() {
    let seed = seed();
    eprintln!("sim seed {seed} (P2P_COPY_SIM_SEED): direct path cut mid-transfer");
    let sim = Sim::new(seed);
    let node_host = sim.public_host(Link::latency(Duration::from_millis(10)));
    let (stop, node) = start_node(&node_host);
    // 4 MB/s each way: 8 MiB need two seconds at least, so the cut at 1 MiB is mid-file.
    let link = Link {
        latency: Duration::from_millis(20),
        jitter: Duration::from_millis(2),
        rate: Some(4_000_000),
        ..Link::IDEAL
    };
    let (s_nat, r_nat) = (
        sim.nat(Nat::PortRestricted, NatOptions::default()),
        sim.nat(Nat::PortRestricted, NatOptions::default()),
    );
    let (s_host, r_host) = (sim.host_behind(s_nat, link), sim.host_behind(r_nat, link));

    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("data.bin");
    let mut rng = StdRng::seed_from_u64(seed);
    let data: Vec<u8> = (0..8 << 20).map(|_| rng.gen()).collect();
    std::fs::write(&src, &data).unwrap();
    let out = dir.path().join("out");
    let code = Code::generate(rng.gen_range(1..=999), 3, &mut rand::rngs::OsRng).unwrap();
    let (s, r) = options(&node_host, (&s_host, code.clone(), &src), (&r_host, code, &out));
    let progress = Progress::new();
    let sending = tokio::spawn(transfer::send(s, Arc::new(Quiet), Progress::new()));
    let receiving = tokio::spawn(transfer::receive(r, Arc::new(Quiet), progress.clone()));
    let moved = tokio::time::timeout(Duration::from_secs(60), async {
        while progress.bytes() < 1 << 20 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    moved.await.expect("a first MiB within a minute");
    assert!(progress.bytes() < 8 << 20, "seed {seed}: the cut comes mid-file");
    sim.cut(s_nat.public, r_nat.public, true);
    let (sent, received) = (sending.await.unwrap(), receiving.await.unwrap());
    let (sent, received) = match (sent, received) {
        (Ok(s), Ok(r)) => (s, r),
        other => panic!("seed {seed}: failed after the cut: {other:?}"),
    };
    assert!(std::fs::read(out.join("data.bin")).unwrap() == data, "seed {seed}: identical bytes");
    for report in [&sent, &received] {
        assert_eq!(report.path, PathKind::Relay, "seed {seed}: {report:?}");
        assert!(report.path_changes >= 1, "seed {seed}: {report:?}");
    }
    assert_eq!(progress.bytes(), 8 << 20, "seed {seed}: every byte written once");
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), node).await;
}
