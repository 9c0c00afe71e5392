//! Tests for the abuse findings of the security review (issue 13 #4 and #7): allocation,
//! guessing, and filling the node from many sources.

use super::*;
use std::net::Ipv6Addr;

/// Finding 4 of the review: `Allocate` used to hand out the smallest free number, so the
/// live nameplates were the lowest few and an `Allocate` told where they ended. Numbers are
/// now drawn at random from a range 100 times what is taken (at least 1..=999).
#[test]
fn allocation_is_random_and_reveals_no_frontier() {
    let mut h = Harness::with_random(Limits::default(), Random::seeded(4));
    let mut numbers = Vec::new();
    for id in 1..=60u64 {
        h.join(id, ip(id as u8));
        let taken = numbers.len() as u32;
        let n = h.allocate(id);
        assert!(n >= 1 && n <= (100 * taken).max(999), "{n} with {taken} taken");
        numbers.push(n);
    }
    let distinct: BTreeSet<u32> = numbers.iter().copied().collect();
    assert_eq!(distinct.len(), 60);
    // Neither the first numbers nor the whole set are the low end of the range.
    assert!(numbers[..10].iter().filter(|&&n| n <= 10).count() <= 1, "{numbers:?}");
    assert!(numbers.iter().filter(|&&n| n > 999).count() >= 10, "{numbers:?}");
    // The attacker's sweep of the lowest numbers finds (almost) nobody to join.
    h.join(100, ip(100));
    let hits = (1..=10u32).filter(|n| distinct.contains(n)).count();
    assert!(hits <= 1, "{hits}");
}

/// A claim that joins somebody's nameplate (which may be a guess) costs [`JOIN_COST`] tokens:
/// one address joins 30 / 5 = 6 nameplates in a burst, not 30, and then one every 10 s.
#[test]
fn joining_somebody_elses_nameplate_costs_more() {
    let mut h = Harness::open();
    let victims: Vec<(ClientId, u32)> = (1..=8u64)
        .map(|id| {
            h.join(id, ip(id as u8));
            (id, h.allocate(id))
        })
        .collect();
    for (i, &(victim, n)) in victims.iter().enumerate().take(6) {
        let attacker = 100 + i as ClientId;
        h.join(attacker, ip(99));
        assert_eq!(
            h.claim(attacker, n)[..2],
            [to(attacker, claimed(n, true)), to(victim, NodeMsg::PeerJoined)]
        );
    }
    h.join(106, ip(99));
    assert_eq!(codes(&h.claim(106, victims[6].1)), [(106, ErrorCode::RateLimited)]);
    // Nothing is left, not even for a claim of a free number.
    assert_eq!(codes(&h.claim(106, 5_000)), [(106, ErrorCode::RateLimited)]);
    // Five tokens come back in 10 s: one more join.
    h.at(10);
    assert_eq!(h.claim(106, victims[6].1)[0], to(106, claimed(victims[6].1, true)));
    h.join(107, ip(99));
    assert_eq!(codes(&h.claim(107, victims[7].1)), [(107, ErrorCode::RateLimited)]);

    // Rejoin nameplates are nobody's code: joining one costs a single token, so peers that
    // retry a rejoin every few seconds are not locked out.
    let mut h = Harness::open();
    for i in 0..15u32 {
        let (a, b) = (2 * u64::from(i) + 1, 2 * u64::from(i) + 2);
        h.join(a, ip(1));
        h.join(b, ip(1));
        let n = REJOIN_NAMEPLATES | (100 + i);
        assert_eq!(h.claim(a, n), [to(a, claimed(n, false))]);
        assert_eq!(h.claim(b, n)[0], to(b, claimed(n, true)), "rejoin {i}");
    }
}

/// What the node sees of a failed key exchange: the second side joins and the nameplate
/// closes within seconds, before anybody asked for a relay ticket.
#[test]
fn failed_exchanges_count_as_suspected_guesses() {
    let mut h = Harness::open();
    for id in 1..=8 {
        h.join(id, ip(id as u8));
    }
    // A wrong code: PAKE messages, then one side leaves.
    let n = h.allocate(1);
    h.send(1, b"pake");
    h.claim(2, n);
    h.send(2, b"pake");
    h.at(2);
    h.msg(2, ClientMsg::Release);
    assert_eq!(h.t.suspected_guesses(), 1);
    // A transfer: the sides ask for relay tickets before they leave.
    let n = h.allocate(3);
    h.claim(4, n);
    h.msg(3, ClientMsg::RelayTicket);
    h.msg(4, ClientMsg::RelayTicket);
    h.msg(4, ClientMsg::Release);
    // A side alone that leaves, and a pairing that lasted longer than the window.
    let n = h.allocate(5);
    h.msg(5, ClientMsg::Release);
    let n2 = h.allocate(6);
    assert_ne!(n, n2);
    h.claim(7, n2);
    h.at(2 + 31);
    h.disconnect(7);
    // Rejoin nameplates carry no code.
    let r = REJOIN_NAMEPLATES | 9;
    h.claim(8, r);
    h.claim(5, r);
    h.msg(8, ClientMsg::Release);
    assert_eq!(h.t.suspected_guesses(), 1);
}

/// Finding 7 of the review: 334 IPv4 sources claiming and releasing 30 numbers each used to
/// fill `max_closed` (100,000) for ten minutes, after which nobody could open a nameplate.
#[test]
fn claim_and_release_from_many_sources_does_not_close_the_node() {
    let limits = Limits { total_claims_per_minute: 0, ..Limits::default() };
    let mut h = Harness::new(limits);
    let mut number = 1_000_000;
    for source in 0..334u32 {
        let id = 1_000 + u64::from(source);
        let [_, _, x, y] = (source + 256).to_be_bytes();
        let addr = SocketAddr::from((Ipv4Addr::new(203, 0, x, y), 5_000));
        h.join(id, addr);
        for _ in 0..30 {
            number += 1;
            assert_eq!(h.claim(id, number), [to(id, claimed(number, false))]);
            h.msg(id, ClientMsg::Release);
        }
        assert_eq!(codes(&h.claim(id, 1)), [(id, ErrorCode::RateLimited)]);
    }
    assert_eq!(h.t.closed.len(), 10_020);
    h.join(A, ip(1));
    let n = h.allocate(A);
    h.join(B, ip(2));
    assert_eq!(h.claim(B, n)[0], to(B, claimed(n, true)));
}

/// The same from IPv6 sources in one /56: the /56 as a whole gets 4 × 30 requests a minute
/// (and 4 × 64 clients), however many of its 256 /64s take part.
#[test]
fn one_ipv6_slash_56_is_not_256_sources() {
    let mut h = Harness::open();
    let v6 = |net: u16, host: u16| {
        SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0x77, net, 0, 0, 0, host), 4_000))
    };
    let mut admitted = 0;
    let mut number = 1_000_000;
    for net in 0..256u16 {
        let id = 1_000 + u64::from(net);
        h.join(id, v6(net, 1));
        for _ in 0..30 {
            number += 1;
            match codes(&h.claim(id, number)).as_slice() {
                [] => admitted += 1,
                [(_, ErrorCode::RateLimited)] => break,
                other => panic!("{other:?}"),
            }
            h.msg(id, ClientMsg::Release);
        }
    }
    assert_eq!(admitted, 120);
    match h.claim(1_200, 1).as_slice() {
        [Output::Send { msg: NodeMsg::Error { code: ErrorCode::RateLimited, message }, .. }] => {
            assert!(message.contains("your network (2001:db8:77::/56)"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // Another /56 of the same /48 has its own share; a fresh source is untouched.
    h.join(A, v6(0x100, 1));
    assert_eq!(h.claim(A, 5), [to(A, claimed(5, false))]);
    h.join(B, ip(2));
    assert_eq!(h.allocate(B), 1);
    // Clients: 64 per /64 but 256 per /56, which its 256 /64s above already hold.
    assert_eq!(h.t.connect(h.now, 3_000, v6(7, 3)), Err(ErrorCode::Busy));
    h.disconnect(1_007);
    assert_eq!(h.t.connect(h.now, 3_000, v6(7, 3)), Ok(()));
}

/// Past the node-wide ceiling, sources that used it in the last minute get `Busy`; one that
/// made no request in that minute still gets its request through, and then waits like the
/// others.
#[test]
fn the_node_wide_ceiling_stays_fair() {
    let limits = Limits { total_claims_per_minute: 60, ..Limits::default() };
    let mut h = Harness::new(limits);
    let mut number = 1_000_000;
    let mut admitted = 0;
    for source in 0..10u8 {
        let id = 100 + u64::from(source);
        h.join(id, ip(100 + source));
        for _ in 0..10 {
            number += 1;
            match codes(&h.claim(id, number)).as_slice() {
                [] => admitted += 1,
                [(_, ErrorCode::Busy)] => continue,
                other => panic!("{other:?}"),
            }
            h.msg(id, ClientMsg::Release);
        }
    }
    // Six sources used the 60 tokens; each of the four others got its first request.
    assert_eq!(admitted, 64);
    h.join(A, ip(1));
    h.allocate(A);
    assert_eq!(codes(&h.msg(A, ClientMsg::Release)), []);
    assert_eq!(codes(&h.msg(A, ClientMsg::Allocate)), [(A, ErrorCode::Busy)]);
    // A fresh source gets a join through too.
    h.join(B, ip(2));
    h.join(C, ip(3));
    assert_eq!(codes(&h.claim(C, 42)), []);
    assert_eq!(h.claim(B, 42)[0], to(B, claimed(42, true)));
    // A second of refill: one token, for whoever comes first.
    h.at(1);
    assert_eq!(codes(&h.claim(107, 77)), [], "source 7 released its last nameplate");
    assert_eq!(codes(&h.msg(A, ClientMsg::Allocate)), [(A, ErrorCode::Busy)]);
}

/// Only numbers of nameplates that had two sides count towards `max_closed`: a number
/// claimed and released alone cools down (a late receiver hears that the code is used) but
/// cannot fill the node.
#[test]
fn closed_numbers_are_bounded() {
    let limits = Limits { max_closed: 2, ..Limits::default() };
    let mut h = Harness::new(limits);
    h.join(A, ip(1));
    h.join(B, ip(2));
    for n in [10, 11] {
        h.claim(A, n);
        h.msg(A, ClientMsg::Release);
    }
    assert_eq!(codes(&h.claim(A, 10)), [(A, ErrorCode::NameplateClosed)], "still cooling");
    for n in [12, 13] {
        h.claim(A, n);
        h.claim(B, n);
        h.msg(A, ClientMsg::Release);
    }
    h.msg(B, ClientMsg::Release);
    assert_eq!(codes(&h.claim(A, 14)), [(A, ErrorCode::Busy)]);
    assert_eq!(codes(&h.msg(A, ClientMsg::Allocate)), [(A, ErrorCode::Busy)]);
    h.at(600);
    assert_eq!(h.claim(A, 14), [to(A, claimed(14, false))]);
}
