use super::*;
use proptest::prelude::*;
use std::net::Ipv4Addr;

mod abuse;

const A: ClientId = 1;
const B: ClientId = 2;
const C: ClientId = 3;
const D: ClientId = 4;
const E: ClientId = 5;

fn ip(last: u8) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(198, 51, 100, last), 40_000 + u16::from(last)))
}

fn to(to: ClientId, msg: NodeMsg) -> Output {
    Output::Send { to, msg }
}

/// A table, a base instant and a clock offset from it.
struct Harness {
    t: Table,
    base: Instant,
    now: Instant,
}

impl Harness {
    /// A table whose draws are all 0, so `Allocate` hands out the smallest free number: the
    /// routing tests read better with predictable numbers (the draw itself is tested with a
    /// seeded generator in `random_allocation_*` and `numbers`).
    fn new(limits: Limits) -> Harness {
        Harness::with_random(limits, Random::new(|| 0))
    }

    fn with_random(limits: Limits, random: Random) -> Harness {
        let base = Instant::now();
        Harness { t: Table::new(limits, random), base, now: base }
    }

    /// Default limits, except a 10-minute idle expiry that the timing tests are written for.
    fn open() -> Harness {
        Harness::new(Limits { idle_expiry: Duration::from_secs(600), ..Limits::default() })
    }

    fn at(&mut self, secs: u64) {
        self.now = self.base + Duration::from_secs(secs);
    }

    fn at_millis(&mut self, millis: u64) {
        self.now = self.base + Duration::from_millis(millis);
    }

    fn outputs(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.t.poll_output()).collect()
    }

    fn msg(&mut self, client: ClientId, msg: ClientMsg) -> Vec<Output> {
        self.t.handle(self.now, client, msg);
        self.outputs()
    }

    /// Connects and says hello.
    fn join(&mut self, client: ClientId, addr: SocketAddr) {
        self.t.connect(self.now, client, addr).unwrap();
        let out = self.msg(client, ClientMsg::Hello { version: VERSION, proof: None });
        assert_eq!(out, [to(client, NodeMsg::Welcome { version: VERSION, observed: addr })]);
    }

    fn allocate(&mut self, client: ClientId) -> u32 {
        match self.msg(client, ClientMsg::Allocate).as_slice() {
            [Output::Send { to, msg: NodeMsg::Allocated { nameplate } }] if *to == client => {
                *nameplate
            }
            other => panic!("allocate: {other:?}"),
        }
    }

    fn claim(&mut self, client: ClientId, nameplate: u32) -> Vec<Output> {
        self.msg(client, ClientMsg::Claim { nameplate })
    }

    fn send(&mut self, client: ClientId, body: &[u8]) -> Vec<Output> {
        self.msg(client, ClientMsg::Send { body: body.to_vec() })
    }

    fn disconnect(&mut self, client: ClientId) -> Vec<Output> {
        self.t.disconnect(self.now, client);
        self.outputs()
    }
}

/// The error codes sent, in order.
fn codes(out: &[Output]) -> Vec<(ClientId, ErrorCode)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { to, msg: NodeMsg::Error { code, .. } } => Some((*to, *code)),
            _ => None,
        })
        .collect()
}

fn message(body: &[u8]) -> NodeMsg {
    NodeMsg::Message { body: body.to_vec() }
}

fn claimed(nameplate: u32, peer_present: bool) -> NodeMsg {
    NodeMsg::Claimed { nameplate, peer_present }
}

#[test]
fn happy_path() {
    let mut h = Harness::open();
    h.join(A, ip(1));
    h.join(B, ip(2));
    assert_eq!(h.allocate(A), 1);
    assert_eq!(h.send(A, b"pake-a"), []);
    assert_eq!(h.send(A, b"hello-a"), []);
    assert_eq!(
        h.claim(B, 1),
        [
            to(B, claimed(1, true)),
            to(A, NodeMsg::PeerJoined),
            to(B, message(b"pake-a")),
            to(B, message(b"hello-a")),
        ]
    );
    assert_eq!(h.send(B, b"pake-b"), [to(A, message(b"pake-b"))]);
    assert_eq!(h.send(A, b"more"), [to(B, message(b"more"))]);
    assert_eq!((h.t.nameplates(), h.t.clients()), (1, 2));

    assert_eq!(h.msg(A, ClientMsg::Release), [to(B, NodeMsg::PeerLeft)]);
    assert_eq!(h.t.nameplates(), 0);
    // B lost the nameplate with its peer; releasing again is harmless.
    assert_eq!(codes(&h.send(B, b"late")), [(B, ErrorCode::NameplateClosed)]);
    assert_eq!(h.msg(B, ClientMsg::Release), []);
    assert_eq!(codes(&h.send(A, b"late")), [(A, ErrorCode::Protocol)]);
    // Both may start again; 1 is cooling down.
    assert_eq!(h.allocate(B), 2);
    assert_eq!(h.allocate(A), 3);
}

/// Relay tickets go only to the two sides of a pairing; each opening of a number is a new
/// pairing.
#[test]
fn relay_tickets_name_the_pairing_and_the_side() {
    let mut h = Harness::open();
    h.join(A, ip(1));
    h.join(B, ip(2));
    h.join(C, ip(3));
    assert_eq!(codes(&h.msg(A, ClientMsg::RelayTicket)), [(A, ErrorCode::Protocol)]);
    let n = h.allocate(A);
    assert_eq!(codes(&h.msg(A, ClientMsg::RelayTicket)), [(A, ErrorCode::Protocol)], "alone");
    h.claim(B, n);
    let first = h.msg(A, ClientMsg::RelayTicket);
    let second = h.msg(B, ClientMsg::RelayTicket);
    let (pairing, sides) = match (first.as_slice(), second.as_slice()) {
        (
            [Output::Ticket { to: A, pairing: p, side: sa }],
            [Output::Ticket { to: B, pairing: q, side: sb }],
        ) if p == q => (*p, (*sa, *sb)),
        other => panic!("{other:?}"),
    };
    assert_eq!(sides, (0, 1));
    // A third party holds no side of it.
    assert_eq!(codes(&h.msg(C, ClientMsg::RelayTicket)), [(C, ErrorCode::Protocol)]);
    // Closed: B lost it.
    h.msg(A, ClientMsg::Release);
    assert_eq!(codes(&h.msg(B, ClientMsg::RelayTicket)), [(B, ErrorCode::NameplateClosed)]);
    // A new pairing on a new nameplate.
    let m = h.allocate(C);
    h.msg(B, ClientMsg::Release);
    h.claim(B, m);
    match h.msg(B, ClientMsg::RelayTicket).as_slice() {
        [Output::Ticket { to: B, pairing: p, side: 1 }] => assert_ne!(*p, pairing),
        other => panic!("{other:?}"),
    }
}

#[test]
fn pre_shared_claim_on_both_sides() {
    let mut h = Harness::open();
    h.join(A, ip(1));
    h.join(B, ip(2));
    assert_eq!(h.claim(A, 4_000_000_000), [to(A, claimed(4_000_000_000, false))]);
    assert_eq!(h.send(A, b"x"), []);
    assert_eq!(
        h.claim(B, 4_000_000_000),
        [to(B, claimed(4_000_000_000, true)), to(A, NodeMsg::PeerJoined), to(B, message(b"x"))]
    );
    // A number outside the allocation range does not disturb allocation.
    h.join(C, ip(3));
    assert_eq!(h.allocate(C), 1);
}

#[test]
fn third_party_gets_full_and_keeps_its_connection() {
    let mut h = Harness::open();
    h.join(A, ip(1));
    h.join(B, ip(2));
    h.join(C, ip(3));
    let n = h.allocate(A);
    h.claim(B, n);
    assert_eq!(codes(&h.claim(C, n)), [(C, ErrorCode::NameplateFull)]);
    assert_eq!(h.send(A, b"still private"), [to(B, message(b"still private"))]);
    assert_eq!(h.allocate(C), 2);
}

#[test]
fn a_used_nameplate_is_never_reopened() {
    let mut h = Harness::open();
    for id in [A, B, C] {
        h.join(id, ip(id as u8));
    }
    h.claim(A, 77);
    h.claim(B, 77);
    assert_eq!(h.disconnect(B), [to(A, NodeMsg::PeerLeft)]);
    assert_eq!(codes(&h.claim(C, 77)), [(C, ErrorCode::NameplateClosed)]);
    assert_eq!(codes(&h.claim(A, 77)), [(A, ErrorCode::NameplateClosed)]);
    h.at(599);
    assert_eq!(codes(&h.claim(C, 77)), [(C, ErrorCode::NameplateClosed)]);
    // After the cooldown the number is forgotten: a claim opens a new nameplate.
    h.at(600);
    assert_eq!(h.claim(C, 77), [to(C, claimed(77, false))]);

    // A nameplate released by its only side is closed too.
    h.claim(A, 78);
    assert_eq!(h.msg(A, ClientMsg::Release), []);
    assert_eq!(codes(&h.claim(A, 78)), [(A, ErrorCode::NameplateClosed)]);
}

#[test]
fn idle_nameplates_expire() {
    let mut h = Harness::open();
    h.join(A, ip(1));
    h.join(B, ip(2));
    h.join(C, ip(3));
    let n = h.allocate(A);
    assert_eq!(h.t.poll_timeout(), Some(h.base + Duration::from_secs(600)));
    h.at(300);
    h.claim(B, n);
    assert_eq!(h.t.poll_timeout(), Some(h.base + Duration::from_secs(900)));
    h.at(899);
    h.send(B, b"keepalive");
    assert_eq!(h.t.poll_timeout(), Some(h.base + Duration::from_secs(1499)));
    h.t.handle_timeout(h.base + Duration::from_secs(1498));
    assert_eq!(h.outputs(), []);
    h.t.handle_timeout(h.base + Duration::from_secs(1499));
    assert_eq!(codes(&h.outputs()), [(A, ErrorCode::Expired), (B, ErrorCode::Expired)]);
    assert_eq!((h.t.nameplates(), h.t.clients()), (0, 3));
    h.at(1499);
    assert_eq!(codes(&h.send(A, b"x")), [(A, ErrorCode::NameplateClosed)]);
    assert_eq!(codes(&h.claim(C, n)), [(C, ErrorCode::NameplateClosed)]);
    assert_eq!(h.allocate(A), n + 1);

    // A lone side with queued messages expires the same way, found by any later call.
    h.send(A, b"queued");
    h.at(1499 + 600);
    assert_eq!(codes(&h.claim(C, 50)), [(A, ErrorCode::Expired)]);
    assert_eq!(h.outputs(), []);
}

#[test]
fn disconnect_when_the_nameplate_expires_tells_only_the_peer() {
    let mut h = Harness::open();
    h.join(A, ip(1));
    h.join(B, ip(2));
    let n = h.allocate(A);
    h.claim(B, n);
    h.at(600);
    let out = h.disconnect(A);
    match out.as_slice() {
        [Output::Send { to: B, msg: NodeMsg::Error { code: ErrorCode::Expired, message } }] => {
            assert_eq!(
                message,
                "nameplate 1 expired after 10 minutes without activity: start again with a new code"
            );
        }
        other => panic!("{other:?}"),
    }
}

/// A rejoin nameplate is claimable again as soon as it closes: the peers that rejoin on it
/// prove a key, not a code, so a stale side trying it gains nothing.
#[test]
fn rejoin_nameplates_reopen_at_once() {
    let mut h = Harness::open();
    for id in [A, B, C] {
        h.join(id, ip(id as u8));
    }
    let n = REJOIN_NAMEPLATES | 12_345;
    assert_eq!(h.claim(A, n), [to(A, claimed(n, false))]);
    h.claim(B, n);
    h.msg(A, ClientMsg::Release);
    h.msg(B, ClientMsg::Release);
    assert_eq!(h.claim(C, n), [to(C, claimed(n, false))], "no cooldown");
    // An ordinary claimed number still cools down.
    let out = h.claim(A, 777);
    assert_eq!(out, [to(A, claimed(777, false))]);
    h.claim(B, 777);
    h.msg(A, ClientMsg::Release);
    h.msg(C, ClientMsg::Release);
    let out = h.claim(C, 777);
    assert_eq!(codes(&out), [(C, ErrorCode::NameplateClosed)]);
}

#[test]
fn released_numbers_cool_down_before_reuse() {
    let mut h = Harness::open();
    for id in [A, B, C] {
        h.join(id, ip(id as u8));
    }
    assert_eq!(h.allocate(A), 1);
    h.msg(A, ClientMsg::Release);
    assert_eq!(h.allocate(A), 2);
    assert_eq!(h.t.poll_timeout(), Some(h.base + Duration::from_secs(600)));
    h.msg(A, ClientMsg::Release);
    h.at(599);
    assert_eq!(h.allocate(B), 3);
    h.at(600);
    assert_eq!(h.allocate(C), 1);
}

#[test]
fn claims_are_rate_limited_per_source() {
    let mut h = Harness::open();
    h.join(A, ip(1));
    h.join(B, ip(1));
    h.join(C, ip(2));
    // 30 claims from one address in a burst (one of them an allocate by its other client)
    // pass...
    assert_eq!(h.allocate(B), 1);
    for i in 0..29 {
        let n = 100 + i;
        assert_eq!(h.claim(A, n), [to(A, claimed(n, false))]);
        assert_eq!(h.msg(A, ClientMsg::Release), []);
    }
    // ... the 31st is refused and does nothing: its number stays free.
    assert_eq!(codes(&h.claim(A, 500)), [(A, ErrorCode::RateLimited)]);
    assert_eq!(codes(&h.msg(B, ClientMsg::Claim { nameplate: 500 })), [(B, ErrorCode::Protocol)]);
    assert_eq!(h.t.nameplates(), 1);
    // Another address is not affected.
    assert_eq!(h.claim(C, 500), [to(C, claimed(500, false))]);
    // One token comes back every two seconds.
    h.at_millis(1_999);
    assert_eq!(codes(&h.claim(A, 501)), [(A, ErrorCode::RateLimited)]);
    h.at_millis(2_000);
    assert_eq!(h.claim(A, 501), [to(A, claimed(501, false))]);
    h.msg(A, ClientMsg::Release);
    assert_eq!(codes(&h.claim(A, 502)), [(A, ErrorCode::RateLimited)]);
    // A failed claim costs a token as well (one online guess per token).
    h.at_millis(4_000);
    assert_eq!(codes(&h.claim(A, 100)), [(A, ErrorCode::NameplateClosed)]);
    assert_eq!(codes(&h.claim(A, 503)), [(A, ErrorCode::RateLimited)]);
    // Steady use at the limit always passes: one claim every two seconds.
    for i in 0..10 {
        h.at_millis(6_000 + i * 2_000);
        let n = 600 + i as u32;
        assert_eq!(h.claim(A, n), [to(A, claimed(n, false))]);
        h.msg(A, ClientMsg::Release);
    }
    // After a quiet minute the whole bucket is back.
    h.at_millis(84_000);
    for i in 0..30 {
        let n = 1000 + i;
        assert_eq!(h.claim(A, n), [to(A, claimed(n, false))]);
        h.msg(A, ClientMsg::Release);
    }
    assert_eq!(codes(&h.claim(A, 2000)), [(A, ErrorCode::RateLimited)]);
}

#[test]
fn zero_claims_per_minute_means_unlimited() {
    let mut h = Harness::new(Limits { claims_per_minute: 0, ..Limits::default() });
    h.join(A, ip(1));
    for n in 1..=100 {
        assert_eq!(h.allocate(A), n);
        h.msg(A, ClientMsg::Release);
    }
}

#[test]
fn clients_per_source() {
    let mut h = Harness::open();
    for id in 0..64 {
        h.t.connect(h.now, id, ip(1)).unwrap();
    }
    assert_eq!(h.t.connect(h.now, 64, ip(1)), Err(ErrorCode::Busy));
    assert_eq!(h.t.connect(h.now, 64, ip(2)), Ok(()));
    // The same IPv4 address written as IPv4-mapped IPv6 is the same source.
    let mapped = SocketAddr::new(Ipv4Addr::new(198, 51, 100, 1).to_ipv6_mapped().into(), 9);
    assert_eq!(h.t.connect(h.now, 65, mapped), Err(ErrorCode::Busy));
    h.t.disconnect(h.now, 0);
    assert_eq!(h.t.connect(h.now, 65, mapped), Ok(()));
    assert_eq!(h.t.clients(), 65);
    // The reported address is the IPv4 one.
    let out = h.msg(65, ClientMsg::Hello { version: VERSION, proof: None });
    let observed = SocketAddr::from((Ipv4Addr::new(198, 51, 100, 1), 9));
    assert_eq!(out, [to(65, NodeMsg::Welcome { version: VERSION, observed })]);

    // IPv6 addresses count per /64.
    let mut h = Harness::new(Limits { clients_per_ip: 2, ..Limits::default() });
    let v6 = |s: &str| SocketAddr::new(s.parse().unwrap(), 1);
    assert_eq!(h.t.connect(h.now, 1, v6("2001:db8:1:2::1")), Ok(()));
    assert_eq!(h.t.connect(h.now, 2, v6("2001:db8:1:2:ffff::9")), Ok(()));
    assert_eq!(h.t.connect(h.now, 3, v6("2001:db8:1:2::3")), Err(ErrorCode::Busy));
    assert_eq!(h.t.connect(h.now, 3, v6("2001:db8:1:3::3")), Ok(()));
}

/// The token's proof is checked against the channel the client connected with: a proof of
/// the right token on another session, of a wrong token, or without a channel fails.
#[test]
fn token_required() {
    let limits = Limits { token: Some("s3cret".into()), ..Limits::default() };
    let mut h = Harness::new(limits);
    let channel = [7u8; 32];
    let mut other = channel;
    other[0] ^= 1;
    let cases = [
        (A, None),
        (B, Some(crate::auth::proof("s3cre", &channel))),
        (C, Some(crate::auth::proof("s3cret!", &channel))),
        (5, Some(crate::auth::proof("s3cret", &other))),
    ];
    for (id, proof) in cases {
        h.t.connect_bound(h.now, id, ip(1), channel).unwrap();
        let out = h.msg(id, ClientMsg::Hello { version: VERSION, proof });
        assert_eq!(codes(&out), [(id, ErrorCode::Unauthorized)]);
        assert_eq!(out.last(), Some(&Output::Close { client: id }));
        // Nothing more is answered until the driver disconnects it.
        assert_eq!(h.msg(id, ClientMsg::Allocate), []);
    }
    // No channel (a plaintext connection): no proof can hold.
    h.t.connect(h.now, 6, ip(3)).unwrap();
    let proof = Some(crate::auth::proof("s3cret", &channel));
    assert_eq!(
        codes(&h.msg(6, ClientMsg::Hello { version: VERSION, proof })),
        [(6, ErrorCode::Unauthorized)]
    );
    h.t.connect_bound(h.now, 4, ip(2), channel).unwrap();
    let out = h.msg(4, ClientMsg::Hello { version: VERSION, proof });
    assert_eq!(out, [to(4, NodeMsg::Welcome { version: VERSION, observed: ip(2) })]);
    assert_eq!(h.allocate(4), 1);

    // An open node ignores a proof.
    let mut h = Harness::open();
    h.t.connect(h.now, A, ip(1)).unwrap();
    let out = h.msg(A, ClientMsg::Hello { version: VERSION, proof: Some([1; 32]) });
    assert_eq!(out, [to(A, NodeMsg::Welcome { version: VERSION, observed: ip(1) })]);
}

#[test]
fn wrong_version_is_refused() {
    let mut h = Harness::open();
    h.t.connect(h.now, A, ip(1)).unwrap();
    let out = h.msg(A, ClientMsg::Hello { version: VERSION + 1, proof: None });
    assert_eq!(codes(&out), [(A, ErrorCode::Version)]);
    assert_eq!(out.last(), Some(&Output::Close { client: A }));
    assert_eq!(h.msg(A, ClientMsg::Hello { version: VERSION, proof: None }), []);
    h.disconnect(A);
    assert_eq!(h.t.clients(), 0);
}

#[test]
fn hello_comes_first_and_once() {
    let mut h = Harness::open();
    h.t.connect(h.now, A, ip(1)).unwrap();
    let out = h.msg(A, ClientMsg::Allocate);
    assert_eq!(codes(&out), [(A, ErrorCode::Protocol)]);
    assert_eq!(out.last(), Some(&Output::Close { client: A }));
    assert_eq!(h.t.nameplates(), 0);

    h.join(B, ip(2));
    let out = h.msg(B, ClientMsg::Hello { version: VERSION, proof: None });
    assert_eq!(codes(&out), [(B, ErrorCode::Protocol)]);
    assert_eq!(out.len(), 1, "the connection stays usable");
}

#[test]
fn one_nameplate_per_client_and_send_needs_one() {
    let mut h = Harness::open();
    h.join(A, ip(1));
    assert_eq!(codes(&h.send(A, b"x")), [(A, ErrorCode::Protocol)]);
    assert_eq!(h.msg(A, ClientMsg::Release), []);
    let n = h.allocate(A);
    assert_eq!(codes(&h.msg(A, ClientMsg::Allocate)), [(A, ErrorCode::Protocol)]);
    assert_eq!(codes(&h.claim(A, n)), [(A, ErrorCode::Protocol)]);
    assert_eq!(codes(&h.claim(A, 9)), [(A, ErrorCode::Protocol)]);
    assert_eq!(h.t.nameplates(), 1);
    assert_eq!(codes(&h.claim(A, 0)), [(A, ErrorCode::Protocol)]);
    h.msg(A, ClientMsg::Release);
    assert_eq!(codes(&h.claim(A, 0)), [(A, ErrorCode::NoSuchNameplate)]);
}

#[test]
fn mailbox_is_bounded() {
    let mut h = Harness::open();
    h.join(A, ip(1));
    h.join(B, ip(2));
    let n = h.allocate(A);
    for i in 0..16u8 {
        assert_eq!(h.send(A, &[i]), []);
    }
    assert_eq!(codes(&h.send(A, &[16])), [(A, ErrorCode::Busy)]);
    let out = h.claim(B, n);
    assert_eq!(out.len(), 2 + 16);
    assert_eq!(out[2..], (0..16u8).map(|i| to(B, message(&[i]))).collect::<Vec<_>>());
    // With the peer present nothing is queued: no bound applies.
    for i in 0..40u8 {
        assert_eq!(h.send(A, &[i]), [to(B, message(&[i]))]);
    }

    // Bytes: eight full bodies fit 64 KiB, a ninth does not, a smaller one still does not.
    h.join(C, ip(3));
    h.allocate(C);
    let body = vec![7; crate::wire::MAX_BODY];
    for _ in 0..8 {
        assert_eq!(h.send(C, &body), []);
    }
    assert_eq!(codes(&h.send(C, &[1])), [(C, ErrorCode::Busy)]);
    // A body over the wire cap is refused outright.
    h.join(4, ip(4));
    h.claim(4, 42);
    let big = vec![0; crate::wire::MAX_BODY + 1];
    assert_eq!(codes(&h.send(4, &big)), [(4, ErrorCode::Protocol)]);
}

#[test]
fn nameplate_count_and_range_are_bounded() {
    let limits = Limits { max_nameplates: 2, max_nameplate_number: 3, ..Limits::default() };
    let mut h = Harness::new(limits);
    for id in 1..=6 {
        h.join(id, ip(id as u8));
    }
    assert_eq!(h.allocate(1), 1);
    assert_eq!(h.claim(2, 50), [to(2, claimed(50, false))]);
    assert_eq!(codes(&h.msg(3, ClientMsg::Allocate)), [(3, ErrorCode::Busy)]);
    assert_eq!(codes(&h.claim(3, 51)), [(3, ErrorCode::Busy)]);
    // Joining an open nameplate needs no room.
    assert_eq!(h.claim(3, 50)[0], to(3, claimed(50, true)));
    // Numbers run out before the count does.
    h.msg(3, ClientMsg::Release);
    assert_eq!(h.allocate(4), 2);
    h.msg(4, ClientMsg::Release);
    h.msg(1, ClientMsg::Release);
    // 1 and 2 cool down, 3 is free.
    assert_eq!(h.allocate(5), 3);
    assert_eq!(codes(&h.msg(6, ClientMsg::Allocate)), [(6, ErrorCode::Busy)]);
    h.msg(5, ClientMsg::Release);
    h.msg(2, ClientMsg::Release);
    h.at(600);
    assert_eq!(h.allocate(6), 1);
}

#[test]
fn shutting_down_refuses_new_nameplates_only() {
    let mut h = Harness::open();
    h.join(A, ip(1));
    h.join(B, ip(2));
    h.join(C, ip(3));
    let n = h.allocate(A);
    h.t.shutting_down();
    assert_eq!(codes(&h.claim(B, n)), [(B, ErrorCode::ShuttingDown)]);
    assert_eq!(codes(&h.msg(C, ClientMsg::Allocate)), [(C, ErrorCode::ShuttingDown)]);
    assert_eq!(h.send(A, b"x"), []);
    assert_eq!(h.msg(A, ClientMsg::Release), []);
    assert_eq!(h.t.nameplates(), 0);
}

#[test]
fn unknown_and_duplicate_clients() {
    let mut h = Harness::open();
    assert_eq!(h.msg(9, ClientMsg::Allocate), []);
    assert_eq!(h.disconnect(9), []);
    h.join(A, ip(1));
    assert_eq!(h.t.connect(h.now, A, ip(2)), Err(ErrorCode::Protocol));
    assert_eq!(h.t.clients(), 1);
    assert_eq!(h.t.sources.len(), 1);
    h.disconnect(A);
    h.disconnect(A);
    assert_eq!(h.t.clients(), 0);
}

#[test]
fn idle_sources_are_forgotten_when_full_and_a_minute_old() {
    let mut h = Harness::new(Limits { max_idle_sources: 1, ..Limits::default() });
    h.join(A, ip(1));
    h.disconnect(A);
    // A source that never spent anything is dropped at once.
    assert_eq!(h.t.sources.len(), 0);
    assert_eq!(h.t.poll_timeout(), None);

    h.join(A, ip(1));
    for _ in 0..2 {
        h.allocate(A);
        h.msg(A, ClientMsg::Release);
    }
    h.disconnect(A);
    assert_eq!(h.t.sources.len(), 1);
    // Its bucket is full after 4 s, but it is kept until its last request is a minute old:
    // reconnecting must not buy a fresh pass past the node-wide ceiling.
    assert_eq!(h.t.poll_timeout(), Some(h.base + FAIR_WINDOW));
    // A reconnection within the window finds the drained bucket.
    h.at(1);
    h.join(A, ip(1));
    assert_eq!(h.t.sources.tokens(ip(1).ip()), Some(28));
    h.disconnect(A);
    assert_eq!(h.t.poll_timeout(), Some(h.base + FAIR_WINDOW));
    // A second idle source evicts the one due first.
    h.at(2);
    h.join(B, ip(2));
    for _ in 0..3 {
        h.allocate(B);
        h.msg(B, ClientMsg::Release);
    }
    h.disconnect(B);
    assert_eq!(h.t.sources.tokens(ip(1).ip()), None);
    assert_eq!(h.t.sources.tokens(ip(2).ip()), Some(27));
    assert_eq!(h.t.poll_timeout(), Some(h.base + Duration::from_secs(2) + FAIR_WINDOW));
    h.t.handle_timeout(h.base + Duration::from_secs(62));
    assert_eq!(h.t.sources.len(), 0);
    // The cooldowns of the released numbers remain.
    assert_eq!(h.t.poll_timeout(), Some(h.base + Duration::from_secs(600)));
}

#[test]
fn error_texts_fit_the_cap() {
    let mut s = "é".repeat(MAX_TEXT);
    truncate_utf8(&mut s, MAX_TEXT);
    assert!(s.len() <= MAX_TEXT && s.len() >= MAX_TEXT - 1);
    let mut h = Harness::new(Limits { idle_expiry: Duration::MAX, ..Limits::default() });
    h.join(A, ip(1));
    h.allocate(A);
    assert!(h.t.poll_timeout().is_some());
}

/// Checks the table's internal consistency.
fn check_invariants(t: &Table) {
    for (&n, np) in &t.nameplates {
        assert_eq!(t.clients[&np.first].slot, Slot::Held(n));
        if let Some(second) = np.second {
            assert_ne!(second, np.first);
            assert_eq!(t.clients[&second].slot, Slot::Held(n));
            assert!(np.queue.is_empty());
        }
        assert!(t.deadlines.contains(&(np.deadline, n)));
        assert!(!t.closed.contains_key(&n));
        assert!(np.queue.len() <= t.limits.mailbox_messages);
        assert_eq!(np.queued_bytes, np.queue.iter().map(Vec::len).sum::<usize>());
        assert!(np.queued_bytes <= t.limits.mailbox_bytes);
    }
    assert_eq!(t.deadlines.len(), t.nameplates.len());
    assert!(t.nameplates.len() <= t.limits.max_nameplates);
    assert_eq!(t.closed.values().filter(|c| c.joined).count(), t.closed_joined);
    assert!(t.closed_joined <= t.limits.max_closed + t.limits.max_nameplates);
    assert_eq!(t.cooldowns.len(), t.closed.len());
    let in_range = |n: &&u32| (1..=t.limits.max_nameplate_number).contains(*n);
    let taken: BTreeSet<u32> =
        t.nameplates.keys().chain(t.closed.keys()).filter(in_range).copied().collect();
    assert_eq!(taken, t.taken);
    for (id, c) in &t.clients {
        if let Slot::Held(n) = c.slot {
            let np = &t.nameplates[&n];
            assert!(np.first == *id || np.second == Some(*id));
        }
    }
    assert_eq!(t.sources.leaf_clients(), t.clients.len());
    t.sources.check();
}

/// Addresses for the random operations: three IPv4 sources, and two IPv6 /64s of one /56
/// (entries at every level, shared by both, go through the same bookkeeping).
fn any_ip(i: u8) -> SocketAddr {
    match i {
        0..=2 => ip(i),
        _ => SocketAddr::from((
            std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, u16::from(i), 0, 0, 0, 1),
            7,
        )),
    }
}

/// The channel of every connection in the random operations.
const CHANNEL: [u8; 32] = [3; 32];

#[derive(Debug, Clone)]
enum Op {
    /// Connect, then (usually) a good hello.
    Connect(ClientId, u8, u8),
    Disconnect(ClientId),
    Hello(ClientId, u16, Option<&'static str>),
    Allocate(ClientId),
    Claim(ClientId, u32),
    Send(ClientId, usize),
    Release(ClientId),
    Wait(u64),
    Timeout,
    ShutDown,
}

fn op() -> impl Strategy<Value = Op> {
    let id = 0..5u64;
    prop_oneof![
        3 => (id.clone(), 0..5u8, 0..10u8).prop_map(|(c, i, hello)| Op::Connect(c, i, hello)),
        1 => id.clone().prop_map(Op::Disconnect),
        1 => (id.clone(), prop_oneof![4 => Just(VERSION), 1 => Just(VERSION + 1)],
              prop_oneof![Just(None), Just(Some("secret")), Just(Some("wrong"))])
            .prop_map(|(c, v, t)| Op::Hello(c, v, t)),
        3 => id.clone().prop_map(Op::Allocate),
        4 => (id.clone(), 0..6u32).prop_map(|(c, n)| Op::Claim(c, n)),
        6 => (id.clone(), 0..12usize).prop_map(|(c, len)| Op::Send(c, len)),
        2 => id.clone().prop_map(Op::Release),
        2 => prop_oneof![Just(0), 1..5u64, 100..400u64].prop_map(Op::Wait),
        1 => Just(Op::Timeout),
        1 => prop::bool::weighted(0.05).prop_map(|b| if b { Op::ShutDown } else { Op::Timeout }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Random operations from a few clients never panic, keep the table consistent, and never
    /// route a message to anyone but the other side of the sender's nameplate.
    #[test]
    fn random_operations_route_only_to_the_peer(
        ops in proptest::collection::vec(op(), 0..120),
        token in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let limits = Limits {
            max_nameplates: 3,
            max_nameplate_number: 4,
            idle_expiry: Duration::from_secs(600),
            reuse_after: Duration::from_secs(300),
            claims_per_minute: 6,
            clients_per_ip: 3,
            mailbox_messages: 2,
            mailbox_bytes: 30,
            token: token.then(|| "secret".to_string()),
            max_closed: 3,
            total_claims_per_minute: 10,
            max_idle_sources: 1,
        };
        let mut t = Table::new(limits, Random::seeded(seed));
        let base = Instant::now();
        let mut now = base;
        // Message body → (sender, serial of the sender's nameplate when it sent).
        let mut sent: HashMap<Vec<u8>, (ClientId, Option<u64>)> = HashMap::new();
        let mut counter = 0u64;
        let mut stale = false;
        for op in ops {
            // Whether time passed since the table last saw `now` (so timers may be pending).
            stale = match op {
                Op::Wait(_) => true,
                Op::ShutDown => stale,
                _ => false,
            };
            let mut gone = None;
            match op {
                Op::Connect(c, i, hello) => {
                    if t.connect_bound(now, c, any_ip(i), CHANNEL).is_ok() {
                        let proof = match hello {
                            8 => Some(crate::auth::proof("wrong", &CHANNEL)),
                            _ => token.then(|| crate::auth::proof("secret", &CHANNEL)),
                        };
                        let version = if hello == 7 { VERSION + 1 } else { VERSION };
                        if hello < 9 {
                            t.handle(now, c, ClientMsg::Hello { version, proof });
                        }
                    }
                }
                Op::Disconnect(c) => { t.disconnect(now, c); gone = Some(c); }
                Op::Hello(c, version, token) => {
                    let proof = token.map(|t| crate::auth::proof(t, &CHANNEL));
                    t.handle(now, c, ClientMsg::Hello { version, proof });
                }
                Op::Allocate(c) => t.handle(now, c, ClientMsg::Allocate),
                Op::Claim(c, nameplate) => t.handle(now, c, ClientMsg::Claim { nameplate }),
                Op::Send(c, len) => {
                    counter += 1;
                    let mut body = counter.to_be_bytes().to_vec();
                    body.resize(8 + len, 0xee);
                    let serial = t.clients.get(&c).and_then(|cl| match cl.slot {
                        Slot::Held(n) => t.nameplates.get(&n).map(|np| np.serial),
                        _ => None,
                    });
                    sent.insert(body.clone(), (c, serial));
                    t.handle(now, c, ClientMsg::Send { body });
                }
                Op::Release(c) => t.handle(now, c, ClientMsg::Release),
                Op::Wait(secs) => now += Duration::from_secs(secs),
                Op::Timeout => t.handle_timeout(now),
                Op::ShutDown => t.shutting_down(),
            }
            while let Some(out) = t.poll_output() {
                let (Output::Send { to: client, .. } | Output::Close { client } | Output::Ticket { to: client, .. }) = out;
                prop_assert!(t.clients.contains_key(&client), "output to unknown {client}");
                prop_assert_ne!(Some(client), gone);
                let Output::Send { to, msg } = out else { continue };
                prop_assert!(msg.validate().is_ok());
                if let NodeMsg::Message { body } = msg {
                    let (sender, serial) = sent[&body];
                    prop_assert_ne!(to, sender);
                    let Slot::Held(n) = t.clients[&to].slot else {
                        return Err(TestCaseError::fail("message to a client without nameplate"));
                    };
                    let np = &t.nameplates[&n];
                    prop_assert_eq!(Some(np.serial), serial, "message crossed nameplates");
                    prop_assert_eq!(np.peer_of(to), Some(sender));
                }
            }
            check_invariants(&t);
            if let (Some(at), false) = (t.poll_timeout(), stale) {
                prop_assert!(at > now, "a timer due now was not applied");
            }
        }
    }
}

/// The holder's key from `Hold`.
fn held(out: &[Output]) -> [u8; 16] {
    match out {
        [Output::Send { msg: NodeMsg::Held { key }, .. }] => *key,
        other => panic!("hold: {other:?}"),
    }
}

/// A sender serving several receivers (`send --count`): it holds its nameplate, each pairing
/// closes as usual, and only the holder's key reopens the number while it cools down; a
/// receiver that comes meanwhile is told to try again (`Serving`), not that the code is used.
#[test]
fn a_held_nameplate_reopens_for_its_holder_only() {
    let limits = Limits {
        idle_expiry: Duration::from_secs(3600),
        reuse_after: Duration::from_secs(600),
        ..Limits::default()
    };
    let mut h = Harness::with_random(limits, Random::seeded(7));
    for id in [A, B, C, D] {
        h.join(id, ip(id as u8));
    }
    let n = h.allocate(A);
    let key = held(&h.msg(A, ClientMsg::Hold));
    assert_eq!(codes(&h.msg(A, ClientMsg::Hold)), [(A, ErrorCode::Protocol)], "held once");
    h.claim(B, n);
    // While they pair, a third party is told the sender is busy, not that the code is taken.
    assert_eq!(codes(&h.claim(C, n)), [(C, ErrorCode::Serving)]);
    // Their key exchange worked (they ask for relay tickets), they connect and release: the
    // number cools down, held.
    h.msg(A, ClientMsg::RelayTicket);
    h.msg(B, ClientMsg::RelayTicket);
    h.msg(A, ClientMsg::Release);
    h.msg(B, ClientMsg::Release);
    assert_eq!(codes(&h.claim(C, n)), [(C, ErrorCode::Serving)]);
    // A wrong key reopens nothing.
    let wrong = ClientMsg::Reclaim { nameplate: n, key: [0; 16] };
    assert_eq!(codes(&h.msg(D, wrong)), [(D, ErrorCode::NameplateClosed)]);
    // The holder, on a new connection and after the usual cooldown (a long transfer), reopens
    // it, and the next receiver joins.
    h.disconnect(A);
    h.at(1200);
    h.join(E, ip(E as u8));
    let reclaim = ClientMsg::Reclaim { nameplate: n, key };
    assert_eq!(h.msg(E, reclaim.clone()), [to(E, claimed(n, false))]);
    let out = h.claim(C, n);
    assert_eq!(out, [to(C, claimed(n, true)), to(E, NodeMsg::PeerJoined)]);
    h.msg(E, ClientMsg::RelayTicket);
    // Reopened nameplates stay held: once this pairing closes, the same key opens it again.
    h.disconnect(C);
    assert_eq!(codes(&h.claim(B, n)), [(B, ErrorCode::Serving)]);
    h.disconnect(E);
    h.join(E, ip(E as u8));
    assert_eq!(h.msg(E, reclaim.clone()), [to(E, claimed(n, false))]);
    // A pairing that closes like a failed key exchange (no relay ticket, at once) ends the
    // hold: the holder stops there, and later comers hear that the code was used.
    h.msg(B, ClientMsg::Release);
    h.claim(B, n);
    h.disconnect(B);
    h.join(C, ip(C as u8));
    assert_eq!(codes(&h.claim(C, n)), [(C, ErrorCode::NameplateClosed)]);
    h.disconnect(E);
    h.join(E, ip(E as u8));
    assert_eq!(codes(&h.msg(E, reclaim)), [(E, ErrorCode::NameplateClosed)]);
    assert_eq!(h.t.closed.values().filter(|c| c.joined).count(), h.t.closed_joined);
}

/// A hold outlives the cooldown, up to the idle expiry; once it has run out, a waiting receiver
/// that claims the number first is joined by the holder's `Reclaim`, and a number nobody took
/// is the holder's again.
#[test]
fn a_hold_that_ran_out_still_serves_the_next_receiver() {
    let limits = Limits {
        idle_expiry: Duration::from_secs(3600),
        reuse_after: Duration::from_secs(600),
        ..Limits::default()
    };
    let mut h = Harness::with_random(limits, Random::seeded(9));
    for id in [A, B, C] {
        h.join(id, ip(id as u8));
    }
    let n = h.allocate(A);
    let key = held(&h.msg(A, ClientMsg::Hold));
    h.claim(B, n);
    h.msg(A, ClientMsg::RelayTicket);
    h.disconnect(A);
    h.disconnect(B);
    h.at(3599);
    assert_eq!(codes(&h.claim(C, n)), [(C, ErrorCode::Serving)]);
    h.at(3600);
    assert_eq!(h.claim(C, n), [to(C, claimed(n, false))]);
    h.join(A, ip(1));
    let out = h.msg(A, ClientMsg::Reclaim { nameplate: n, key });
    assert_eq!(out, [to(A, claimed(n, true)), to(C, NodeMsg::PeerJoined)]);
    // Held again by the same key.
    h.msg(C, ClientMsg::RelayTicket);
    h.disconnect(C);
    h.join(B, ip(2));
    assert_eq!(codes(&h.claim(B, n)), [(B, ErrorCode::Serving)]);
}

/// Holding is for code nameplates held by the asker: not without a nameplate, not for a
/// rejoin nameplate, and reclaiming costs a rate token like any claim.
#[test]
fn hold_and_reclaim_are_checked() {
    let mut h = Harness::new(Limits { claims_per_minute: 2, ..Limits::default() });
    h.join(A, ip(1));
    assert_eq!(codes(&h.msg(A, ClientMsg::Hold)), [(A, ErrorCode::Protocol)]);
    h.claim(A, REJOIN_NAMEPLATES | 5);
    assert_eq!(codes(&h.msg(A, ClientMsg::Hold)), [(A, ErrorCode::Protocol)]);
    h.msg(A, ClientMsg::Release);
    let reclaim = |n| ClientMsg::Reclaim { nameplate: n, key: [1; 16] };
    assert_eq!(codes(&h.msg(A, reclaim(0))), [(A, ErrorCode::Protocol)]);
    assert_eq!(codes(&h.msg(A, reclaim(9))), [(A, ErrorCode::RateLimited)]);
    h.at(60);
    // A free number is opened for the one who reclaims it (as a claim would), held by its key.
    assert_eq!(h.msg(A, reclaim(9)), [to(A, claimed(9, false))]);
    h.msg(A, ClientMsg::Release);
    h.join(B, ip(2));
    assert_eq!(codes(&h.claim(B, 9)), [(B, ErrorCode::Serving)]);
}
