//! The rendezvous node's sans-IO table (`p2p_copy_rendezvous::table::Table`) under long
//! fuzzer-chosen operation sequences from several clients and sources (IPv4, IPv6 sharing a
//! /64, IPv4-mapped), with real (small) limits: connect (with or without a TLS channel),
//! hello (right or wrong version; the token's proof right, on another channel, of another
//! token, forged or missing), allocate, claim, send, release, relay ticket, relay, raw client
//! bytes through `decode_client`, disconnect, time passing, timers, shutdown.
//!
//! Only the public API is used; a model built from the table's own outputs checks what the
//! table's proptest checks on its internals: a mailbox message reaches only the other side of
//! the nameplate its sender held when sending (never the sender, never another opening of the
//! same number); outputs go only to connected clients and never to one just disconnected;
//! every message is within the wire caps; a relay pairing belongs to one opening of one
//! nameplate and names its sides 0 and 1; allocated numbers are in range; the open nameplates
//! and clients stay within the limits; after any call no timer due now is left pending.
#![no_main]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use p2p_copy_rendezvous::auth::proof;
use p2p_copy_rendezvous::table::{ClientId, Limits, Output, Random, Table};
use p2p_copy_rendezvous::wire::{decode_client, ClientMsg, ErrorCode, NodeMsg, MAX_BODY, VERSION};

#[derive(Arbitrary, Debug)]
struct Input {
    token: bool,
    /// Seeds the table's nameplate numbers.
    seed: u64,
    /// 0: the small limits; otherwise the defaults with a few shrunk.
    roomy: bool,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Connect from one of a few addresses (over TLS, with a channel, or plaintext without
    /// one), then usually a hello.
    Connect(u8, u8, bool, Option<HelloKind>),
    Hello(u8, HelloKind),
    Allocate(u8),
    Claim(u8, u8),
    ClaimAny(u8, u32),
    Send(u8, u16),
    Release(u8),
    RelayTicket(u8),
    Relay(u8, u64),
    /// Hold the nameplate (`send --count`).
    Hold(u8),
    /// Reclaim a held nameplate with its key (or, `false`, a wrong one).
    Reclaim(u8, u8, bool),
    Raw(u8, Vec<u8>),
    Disconnect(u8),
    Wait(u16),
    WaitMillis(u16),
    Timeout,
    ShutDown,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum HelloKind {
    Good,
    WrongVersion,
    WrongToken,
    NoProof,
    OtherChannel,
    Forged([u8; 32]),
}

fn addr(i: u8) -> SocketAddr {
    let port = 1000 + u16::from(i);
    match i % 6 {
        0 => SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), port),
        1 => SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), port),
        2 => SocketAddr::new(IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped()), port),
        3 => SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 1)), port),
        4 => SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 9, 9, 9, 9)), port),
        _ => SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, 1)), port),
    }
}

/// The TLS channel of client `c`'s connection (each connection its own).
fn channel(c: ClientId) -> [u8; 32] {
    [c as u8 + 1; 32]
}

fn hello(kind: HelloKind, c: ClientId) -> ClientMsg {
    let good = Some(proof(TOKEN, &channel(c)));
    let proof = match kind {
        HelloKind::Good | HelloKind::WrongVersion => good,
        HelloKind::WrongToken => Some(proof("wrong", &channel(c))),
        HelloKind::NoProof => None,
        HelloKind::OtherChannel => Some(proof(TOKEN, &channel(c + 1))),
        HelloKind::Forged(bytes) => Some(bytes),
    };
    let version = if matches!(kind, HelloKind::WrongVersion) { VERSION + 1 } else { VERSION };
    ClientMsg::Hello { version, proof }
}

const TOKEN: &str = "secret";

#[derive(Default)]
struct Model {
    /// Connected clients and the opening of a nameplate each holds (number, epoch).
    clients: HashMap<ClientId, Option<(u32, u64)>>,
    /// The current opening of each number.
    epochs: HashMap<u32, u64>,
    next_epoch: u64,
    /// Message body → its sender and the opening it held when sending.
    sent: HashMap<Vec<u8>, (ClientId, Option<(u32, u64)>)>,
    /// Relay pairing → (opening, sides seen).
    pairings: HashMap<u64, (u64, [bool; 2])>,
    by_epoch: HashMap<u64, u64>,
    /// Holder keys handed out, by nameplate.
    keys: Vec<(u32, [u8; 16])>,
}

fuzz_target!(|input: Input| {
    let limits = if input.roomy {
        Limits {
            idle_expiry: Duration::from_secs(900),
            clients_per_ip: 4,
            token: input.token.then(|| TOKEN.to_string()),
            ..Limits::default()
        }
    } else {
        Limits {
            max_nameplates: 3,
            max_nameplate_number: 4,
            idle_expiry: Duration::from_secs(600),
            reuse_after: Duration::from_secs(300),
            claims_per_minute: 6,
            clients_per_ip: 3,
            mailbox_messages: 2,
            mailbox_bytes: 30,
            token: input.token.then(|| TOKEN.to_string()),
            max_closed: 3,
            max_idle_sources: 1,
            ..Limits::default()
        }
    };
    let max_number = limits.max_nameplate_number;
    let max_nameplates = limits.max_nameplates;
    let mut t = Table::new(limits, Random::seeded(input.seed));
    let mut now = Instant::now();
    let mut m = Model::default();
    let mut counter = 0u64;
    for op in input.ops.into_iter().take(1000) {
        let mut gone = None;
        let mut called = true;
        match op {
            Op::Connect(c, i, tls, h) => {
                let c = ClientId::from(c % 8);
                let a = addr(i);
                let connected =
                    if tls { t.connect_bound(now, c, a, channel(c)) } else { t.connect(now, c, a) };
                match connected {
                    Ok(()) => {
                        assert!(!m.clients.contains_key(&c), "a connected id connected again");
                        m.clients.insert(c, None);
                        if let Some(h) = h {
                            t.handle(now, c, hello(h, c));
                        }
                    }
                    Err(ErrorCode::Protocol) => assert!(m.clients.contains_key(&c)),
                    Err(ErrorCode::Busy) => {}
                    Err(e) => panic!("connect failed with {e:?}"),
                }
            }
            Op::Hello(c, h) => {
                let c = ClientId::from(c % 8);
                t.handle(now, c, hello(h, c))
            }
            Op::Allocate(c) => t.handle(now, ClientId::from(c % 8), ClientMsg::Allocate),
            Op::Claim(c, n) => {
                let nameplate = u32::from(n % 8);
                t.handle(now, ClientId::from(c % 8), ClientMsg::Claim { nameplate })
            }
            Op::ClaimAny(c, nameplate) => {
                t.handle(now, ClientId::from(c % 8), ClientMsg::Claim { nameplate })
            }
            Op::Send(c, len) => {
                let c = ClientId::from(c % 8);
                counter += 1;
                let mut body = counter.to_be_bytes().to_vec();
                body.resize(8 + usize::from(len) % (MAX_BODY + 16), 0xee);
                m.sent.insert(body.clone(), (c, m.clients.get(&c).copied().flatten()));
                t.handle(now, c, ClientMsg::Send { body });
            }
            Op::Release(c) => {
                let c = ClientId::from(c % 8);
                t.handle(now, c, ClientMsg::Release);
                if let Some(held) = m.clients.get_mut(&c) {
                    *held = None;
                }
            }
            Op::RelayTicket(c) => t.handle(now, ClientId::from(c % 8), ClientMsg::RelayTicket),
            Op::Relay(c, ticket) => t.handle(
                now,
                ClientId::from(c % 8),
                ClientMsg::Relay { version: VERSION, proof: None, ticket },
            ),
            Op::Hold(c) => t.handle(now, ClientId::from(c % 8), ClientMsg::Hold),
            Op::Reclaim(c, i, right) => {
                let Some(&(nameplate, key)) = m.keys.get(usize::from(i) % m.keys.len().max(1))
                else {
                    continue;
                };
                let key = if right { key } else { [0x5a; 16] };
                t.handle(now, ClientId::from(c % 8), ClientMsg::Reclaim { nameplate, key })
            }
            Op::Raw(c, bytes) => {
                let c = ClientId::from(c % 8);
                if let Ok(msg) = decode_client(&bytes) {
                    if let ClientMsg::Send { body } = &msg {
                        // Tell it apart from the tagged bodies above.
                        if m.sent.contains_key(body) {
                            continue;
                        }
                        m.sent.insert(body.clone(), (c, m.clients.get(&c).copied().flatten()));
                    }
                    let release = matches!(msg, ClientMsg::Release);
                    t.handle(now, c, msg);
                    if release {
                        if let Some(held) = m.clients.get_mut(&c) {
                            *held = None;
                        }
                    }
                } else {
                    called = false;
                }
            }
            Op::Disconnect(c) => {
                let c = ClientId::from(c % 8);
                t.disconnect(now, c);
                m.clients.remove(&c);
                gone = Some(c);
            }
            Op::Wait(secs) => {
                now += Duration::from_secs(u64::from(secs));
                called = false;
            }
            Op::WaitMillis(ms) => {
                now += Duration::from_millis(u64::from(ms));
                called = false;
            }
            Op::Timeout => t.handle_timeout(now),
            Op::ShutDown => {
                t.shutting_down();
                called = false;
            }
        }
        while let Some(out) = t.poll_output() {
            check(&mut m, out, gone, max_number);
        }
        assert!(t.nameplates() <= max_nameplates, "{} nameplates open", t.nameplates());
        assert_eq!(t.clients(), m.clients.len(), "clients counted");
        if called {
            if let Some(at) = t.poll_timeout() {
                assert!(at > now, "a timer due now was not applied");
            }
        }
    }
});

fn check(m: &mut Model, out: Output, gone: Option<ClientId>, max_number: u32) {
    let (Output::Send { to: client, .. }
    | Output::Close { client }
    | Output::Ticket { to: client, .. }) = out;
    assert!(m.clients.contains_key(&client), "output to unknown client {client}: {out:?}");
    assert_ne!(Some(client), gone, "output to the client that just left");
    match out {
        Output::Close { .. } => {}
        Output::Ticket { to, pairing, side } => {
            let Some((_, epoch)) = m.clients[&to] else {
                panic!("a ticket for a client without a nameplate");
            };
            assert!(side <= 1);
            let entry = m.pairings.entry(pairing).or_insert((epoch, [false; 2]));
            assert_eq!(entry.0, epoch, "one pairing for two openings");
            entry.1[usize::from(side)] = true;
            let p = *m.by_epoch.entry(epoch).or_insert(pairing);
            assert_eq!(p, pairing, "two pairings for one opening");
        }
        Output::Send { to, msg } => {
            assert!(msg.validate().is_ok(), "a message over the caps: {msg:?}");
            match msg {
                NodeMsg::Allocated { nameplate } => {
                    assert!((1..=max_number).contains(&nameplate), "allocated {nameplate}");
                    assert!(m.clients[&to].is_none(), "a second nameplate");
                    open(m, to, nameplate);
                }
                NodeMsg::Claimed { nameplate, peer_present: false } => {
                    assert!(nameplate != 0);
                    assert!(m.clients[&to].is_none(), "a second nameplate");
                    open(m, to, nameplate);
                }
                NodeMsg::Claimed { nameplate, peer_present: true } => {
                    assert!(m.clients[&to].is_none(), "a second nameplate");
                    let epoch = *m.epochs.get(&nameplate).expect("joined a nameplate never opened");
                    let holders =
                        m.clients.values().filter(|h| *h == &Some((nameplate, epoch))).count();
                    assert_eq!(holders, 1, "joined a nameplate held by {holders}");
                    m.clients.insert(to, Some((nameplate, epoch)));
                }
                NodeMsg::PeerLeft
                | NodeMsg::Error {
                    code: ErrorCode::Expired | ErrorCode::NameplateClosed, ..
                } => {
                    m.clients.insert(to, None);
                }
                NodeMsg::Held { key } => {
                    let Some((nameplate, _)) = m.clients[&to] else {
                        panic!("a holder key for a client without a nameplate");
                    };
                    assert!(!m.keys.iter().any(|&(_, k)| k == key), "a holder key drawn twice");
                    m.keys.push((nameplate, key));
                }
                NodeMsg::Message { body } => {
                    let (sender, held) = m.sent.get(&body).copied().expect("a message nobody sent");
                    assert_ne!(to, sender, "a message back to its sender");
                    let Some(opening) = held else { panic!("a message sent without a nameplate") };
                    assert_eq!(m.clients[&to], Some(opening), "a message crossed nameplates");
                }
                _ => {}
            }
        }
    }
}

fn open(m: &mut Model, to: ClientId, nameplate: u32) {
    m.next_epoch += 1;
    m.epochs.insert(nameplate, m.next_epoch);
    m.clients.insert(to, Some((nameplate, m.next_epoch)));
}
