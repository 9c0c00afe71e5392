//! The simulated network's NAT and link behaviour, on tokio's virtual clock.

use super::*;

const WAIT: Duration = Duration::from_secs(5);

async fn recv(s: &SimSocket) -> Option<(Vec<u8>, SocketAddr)> {
    tokio::time::timeout(WAIT, s.recv_from()).await.ok().flatten()
}

#[tokio::test(start_paused = true)]
async fn latency_adds_up_on_both_links() {
    let sim = Sim::new(1);
    let a = sim.public_host(Link::latency(Duration::from_millis(30))).bind(1000).unwrap();
    let b = sim.public_host(Link::latency(Duration::from_millis(20))).bind(2000).unwrap();
    let start = Instant::now();
    a.send_to(b"hi", b.local_addr().unwrap());
    let (data, from) = recv(&b).await.unwrap();
    assert_eq!((data.as_slice(), from), (&b"hi"[..], a.local_addr().unwrap()));
    assert_eq!(start.elapsed(), Duration::from_millis(50));
}

/// Port-restricted: the port is kept; only the exact address and port sent to may answer.
#[tokio::test(start_paused = true)]
async fn port_restricted_filters_by_address_and_port() {
    let sim = Sim::new(2);
    let nat = sim.nat(Nat::PortRestricted, NatOptions::default());
    let inside = sim.host_behind(nat, Link::IDEAL).bind(5000).unwrap();
    let server = sim.public_host(Link::IDEAL);
    let s1 = server.bind(7000).unwrap();
    let s2 = server.bind(7001).unwrap();
    let mapped = SocketAddr::from((nat.public, 5000));
    // Unsolicited: dropped.
    s1.send_to(b"early", mapped);
    inside.send_to(b"out", s1.local_addr().unwrap());
    let (_, seen) = recv(&s1).await.unwrap();
    assert_eq!(seen, mapped, "the port is kept");
    s1.send_to(b"reply", mapped);
    assert_eq!(recv(&inside).await.unwrap().0, b"reply");
    s2.send_to(b"other port", mapped);
    assert!(recv(&inside).await.is_none(), "another port of the same host is filtered");
    assert!(sim.dropped() >= 2);
}

#[tokio::test(start_paused = true)]
async fn address_restricted_admits_any_port_of_a_contacted_address() {
    let sim = Sim::new(3);
    let nat = sim.nat(Nat::AddressRestricted, NatOptions::default());
    let inside = sim.host_behind(nat, Link::IDEAL).bind(5000).unwrap();
    let server = sim.public_host(Link::IDEAL);
    let (s1, s2) = (server.bind(7000).unwrap(), server.bind(7001).unwrap());
    let stranger = sim.public_host(Link::IDEAL).bind(7000).unwrap();
    inside.send_to(b"out", s1.local_addr().unwrap());
    let (_, mapped) = recv(&s1).await.unwrap();
    s2.send_to(b"same address", mapped);
    assert_eq!(recv(&inside).await.unwrap().0, b"same address");
    stranger.send_to(b"stranger", mapped);
    assert!(recv(&inside).await.is_none());
}

#[tokio::test(start_paused = true)]
async fn full_cone_admits_anyone_once_mapped() {
    let sim = Sim::new(4);
    let nat = sim.nat(Nat::FullCone, NatOptions::default());
    let inside = sim.host_behind(nat, Link::IDEAL).bind(5000).unwrap();
    let s1 = sim.public_host(Link::IDEAL).bind(7000).unwrap();
    let stranger = sim.public_host(Link::IDEAL).bind(9000).unwrap();
    inside.send_to(b"out", s1.local_addr().unwrap());
    let (_, mapped) = recv(&s1).await.unwrap();
    stranger.send_to(b"anyone", mapped);
    assert_eq!(recv(&inside).await.unwrap().0, b"anyone");
}

/// Symmetric: a new port for each destination; the reply must come from that destination.
#[tokio::test(start_paused = true)]
async fn symmetric_maps_per_destination() {
    let sim = Sim::new(5);
    let nat = sim.nat(Nat::Symmetric, NatOptions::default());
    let inside = sim.host_behind(nat, Link::IDEAL).bind(5000).unwrap();
    let (s1, s2) = (
        sim.public_host(Link::IDEAL).bind(7000).unwrap(),
        sim.public_host(Link::IDEAL).bind(7000).unwrap(),
    );
    inside.send_to(b"a", s1.local_addr().unwrap());
    inside.send_to(b"b", s2.local_addr().unwrap());
    let (_, m1) = recv(&s1).await.unwrap();
    let (_, m2) = recv(&s2).await.unwrap();
    assert_eq!(m1.ip(), m2.ip());
    assert_ne!(m1.port(), m2.port(), "endpoint-dependent mapping");
    s2.send_to(b"wrong mapping", m1);
    assert!(recv(&inside).await.is_none());
    s1.send_to(b"right", m1);
    assert_eq!(recv(&inside).await.unwrap().0, b"right");
}

/// Hosts behind one NAT reach each other on the LAN; through the public address (of a full-cone
/// mapping) only with hairpinning.
#[tokio::test(start_paused = true)]
async fn lan_neighbours_and_hairpinning() {
    for hairpin in [false, true] {
        let sim = Sim::new(6);
        let nat = sim.nat(Nat::FullCone, NatOptions { hairpin, ..NatOptions::default() });
        let a = sim.host_behind(nat, Link::IDEAL).bind(5000).unwrap();
        let b = sim.host_behind(nat, Link::IDEAL).bind(6000).unwrap();
        a.send_to(b"lan", b.local_addr().unwrap());
        assert_eq!(recv(&b).await.unwrap().1, a.local_addr().unwrap(), "LAN source kept");
        // b's mapping exists once it sent something out.
        let outside = sim.public_host(Link::IDEAL).bind(7000).unwrap();
        b.send_to(b"out", outside.local_addr().unwrap());
        let (_, b_public) = recv(&outside).await.unwrap();
        a.send_to(b"hairpin", b_public);
        let got = recv(&b).await;
        assert_eq!(got.is_some(), hairpin, "hairpin {hairpin}");
    }
}

/// Behind a carrier-grade NAT: two layers of translation, replies find their way back.
#[tokio::test(start_paused = true)]
async fn double_nat_round_trip() {
    let sim = Sim::new(7);
    let carrier = sim.nat(Nat::PortRestricted, NatOptions::default());
    let home = sim.nat_behind(carrier, Nat::PortRestricted, NatOptions::default());
    let inside = sim.host_behind(home, Link::IDEAL).bind(5000).unwrap();
    let server = sim.public_host(Link::IDEAL).bind(7000).unwrap();
    inside.send_to(b"out", server.local_addr().unwrap());
    let (_, mapped) = recv(&server).await.unwrap();
    assert_eq!(mapped.ip(), IpAddr::V4(carrier.public));
    server.send_to(b"back", mapped);
    assert_eq!(recv(&inside).await.unwrap().0, b"back");
}

#[tokio::test(start_paused = true)]
async fn udp_blocked_drops_everything_out() {
    let sim = Sim::new(8);
    let nat =
        sim.nat(Nat::PortRestricted, NatOptions { udp_blocked: true, ..NatOptions::default() });
    let inside = sim.host_behind(nat, Link::IDEAL).bind(5000).unwrap();
    let server = sim.public_host(Link::IDEAL).bind(7000).unwrap();
    inside.send_to(b"out", server.local_addr().unwrap());
    assert!(recv(&server).await.is_none());
}

/// Loss and rate come from the seed: the same seed drops the same datagrams, and the rate
/// spaces arrivals.
#[tokio::test(start_paused = true)]
async fn loss_is_seeded_and_rate_paces() {
    async fn run(seed: u64) -> (u64, Duration) {
        let sim = Sim::new(seed);
        let lossy = Link { loss: 0.1, rate: Some(100_000), ..Link::IDEAL };
        let a = sim.public_host(lossy).bind(1000).unwrap();
        let b = sim.public_host(Link::IDEAL).bind(2000).unwrap();
        let start = Instant::now();
        for _ in 0..100 {
            a.send_to(&[0u8; 1000], b.local_addr().unwrap());
        }
        let mut got = 0;
        let mut last = start;
        while recv(&b).await.is_some() {
            got += 1;
            last = Instant::now();
        }
        assert!(got < 100, "some lost");
        (sim.dropped(), last - start)
    }
    let (d1, t1) = run(42).await;
    let (d2, t2) = run(42).await;
    assert_eq!((d1, t1), (d2, t2), "same seed, same network");
    // 100 kB at 100 kB/s: the last arrival is about a second after the first send (fewer
    // datagrams queued beyond 200 ms are dropped, so it is bounded by the queue).
    assert!(t1 <= Duration::from_millis(250), "{t1:?}");
}

/// A cut stops traffic between two public addresses both ways, and only between them; healing
/// it lets traffic through again.
#[tokio::test(start_paused = true)]
async fn a_cut_separates_two_addresses_until_healed() {
    let sim = Sim::new(9);
    let nat = sim.nat(Nat::FullCone, NatOptions::default());
    let inside = sim.host_behind(nat, Link::IDEAL).bind(5000).unwrap();
    let far = sim.public_host(Link::IDEAL);
    let (f, other) = (far.bind(7000).unwrap(), sim.public_host(Link::IDEAL).bind(7000).unwrap());
    let mapped = SocketAddr::from((nat.public, 5000));
    inside.send_to(b"open", f.local_addr().unwrap());
    assert_eq!(recv(&f).await.unwrap().0, b"open");
    sim.cut(nat.public, far.ip, true);
    inside.send_to(b"lost", f.local_addr().unwrap());
    f.send_to(b"lost too", mapped);
    assert!(recv(&f).await.is_none());
    assert!(recv(&inside).await.is_none());
    inside.send_to(b"elsewhere", other.local_addr().unwrap());
    assert_eq!(recv(&other).await.unwrap().0, b"elsewhere", "only the cut pair is affected");
    sim.cut(far.ip, nat.public, false);
    f.send_to(b"back", mapped);
    assert_eq!(recv(&inside).await.unwrap().0, b"back");
}
