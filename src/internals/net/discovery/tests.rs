//! Tests of LAN discovery: the sans-IO rules, loopback runs, and a loopback-only namespace.

// Tests may panic on unexpected results; that is how they fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::collector::Ambiguous;
use super::responder::Answer;
use super::*;
use rand::Rng;
use std::net::SocketAddrV6;
use std::process::Command;

/// A config on a random port (and the caller picks a random nameplate), so tests running
/// in parallel, or in another checkout on this host, never see each other.
fn test_config() -> DiscoveryConfig {
    DiscoveryConfig {
        port: rand::thread_rng().gen_range(40000..60000),
        group_v4: GROUP_V4,
        group_v6: GROUP_V6,
        announce_interval: Duration::from_millis(100),
    }
}

fn nameplate() -> u32 {
    rand::thread_rng().gen_range(1..1_000_000)
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Checks what a loopback-only or ordinary host must yield: the right instance, and
/// the announced port on the loopback address.
async fn finds_sender_on_loopback() {
    let config = test_config();
    let np = nameplate();
    let announcer = Announcer::start(&config, np, 4433).await.unwrap();
    let started = std::time::Instant::now();
    let found = find(&config, np, Duration::from_secs(2)).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(found.instance, announcer.instance());
    assert!(found.addrs.contains(&loopback(4433)), "{found:?}");
    assert!(found.addrs.iter().all(|a| a.port() == 4433), "{found:?}");
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
}

#[tokio::test]
async fn finds_announcer_on_loopback() {
    finds_sender_on_loopback().await;
}

#[tokio::test]
async fn other_nameplate_is_not_found() {
    let config = test_config();
    let np = nameplate();
    let _announcer = Announcer::start(&config, np, 4433).await.unwrap();
    let err = find(&config, np + 1, Duration::from_millis(600)).await.unwrap_err();
    match &err {
        DiscoveryError::NotFound { nameplate, waited, port } => {
            assert_eq!(*nameplate, np + 1);
            assert_eq!(*waited, Duration::from_millis(600));
            assert_eq!(*port, config.port);
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&format!("nameplate {}", np + 1)), "{msg}");
    assert!(msg.contains("within 600ms"), "{msg}");
    assert!(msg.contains(&format!("UDP port {}", config.port)), "{msg}");
}

#[tokio::test]
async fn two_senders_on_one_nameplate_are_ambiguous() {
    let config = test_config();
    let np = nameplate();
    let a = Announcer::start(&config, np, 4433).await.unwrap();
    let b = Announcer::start(&config, np, 4434).await.unwrap();
    assert_ne!(a.instance(), b.instance());
    let err = find(&config, np, Duration::from_secs(2)).await.unwrap_err();
    assert!(matches!(err, DiscoveryError::Ambiguous { nameplate } if nameplate == np), "{err:?}");
    assert!(err.to_string().contains("start again"), "{err}");
}

#[tokio::test]
async fn find_started_before_the_announcer() {
    let config = test_config();
    let np = nameplate();
    let finder = tokio::spawn({
        let config = config.clone();
        async move { find(&config, np, Duration::from_secs(3)).await }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let announcer = Announcer::start(&config, np, 5555).await.unwrap();
    let found = finder.await.unwrap().unwrap();
    assert_eq!(found.instance, announcer.instance());
    assert!(found.addrs.contains(&loopback(5555)), "{found:?}");
}

#[tokio::test]
async fn malformed_datagrams_do_not_disturb_discovery() {
    let config = test_config();
    let np = nameplate();
    let _announcer = Announcer::start(&config, np, 4433).await.unwrap();
    let junk: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"P2".to_vec(),
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        vec![0xff; 600],
        {
            let mut v = DiscoveryMsg::Query { nameplate: np, query_id: 1 }.encode();
            v[4] = 9; // unsupported version
            v
        },
        {
            let mut v = DiscoveryMsg::Query { nameplate: np, query_id: 1 }.encode();
            v.push(0); // trailing byte
            v
        },
        // Well-formed but harmless: another nameplate, and a port-0 announce.
        DiscoveryMsg::Announce { nameplate: np + 1, instance: 1, port: 9, query_id: 0 }.encode(),
        DiscoveryMsg::Announce { nameplate: np, instance: 2, port: 0, query_id: 0 }.encode(),
    ];
    let sender = socket::bind_query_socket(Family::V4).unwrap();
    socket2::SockRef::from(&sender).set_multicast_if_v4(&Ipv4Addr::LOCALHOST).unwrap();
    let group = config.group(Family::V4);
    let flood = tokio::spawn(async move {
        loop {
            for datagram in &junk {
                for to in [loopback(config.port), group] {
                    let _ = sender.send_to(datagram, to).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let found = find(&config, np, Duration::from_secs(2)).await;
    flood.abort();
    let found = found.unwrap();
    assert!(found.addrs.contains(&loopback(4433)), "{found:?}");
}

#[tokio::test]
async fn dropped_announcer_stops_answering() {
    let config = test_config();
    let np = nameplate();
    let announcer = Announcer::start(&config, np, 4433).await.unwrap();
    find(&config, np, Duration::from_secs(2)).await.unwrap();
    drop(announcer);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = find(&config, np, Duration::from_millis(500)).await.unwrap_err();
    assert!(matches!(err, DiscoveryError::NotFound { .. }), "{err:?}");
}

#[test]
fn port_from_env_falls_back_to_default() {
    assert_eq!(port_from_env(None), DEFAULT_PORT);
    assert_eq!(port_from_env(Some("50000")), 50000);
    assert_eq!(port_from_env(Some(" 50001 ")), 50001);
    assert_eq!(port_from_env(Some("0")), DEFAULT_PORT);
    assert_eq!(port_from_env(Some("70000")), DEFAULT_PORT);
    assert_eq!(port_from_env(Some("abc")), DEFAULT_PORT);
}

fn announce(nameplate: u32, instance: u64, port: u16) -> Vec<u8> {
    DiscoveryMsg::Announce { nameplate, instance, port, query_id: 0 }.encode()
}

#[test]
fn collector_collects_addresses_of_one_sender() {
    let t0 = Instant::now();
    let mut c = Collector::new(7);
    let from = |ip: [u8; 4]| SocketAddr::from((ip, DEFAULT_PORT));
    assert_eq!(c.poll_timeout(), None);
    // Noise changes nothing.
    c.handle(t0, from([10, 0, 0, 1]), b"junk").unwrap();
    c.handle(t0, from([10, 0, 0, 1]), &announce(8, 1, 4433)).unwrap();
    c.handle(t0, from([10, 0, 0, 1]), &announce(7, 1, 0)).unwrap();
    assert_eq!(c.poll_timeout(), None);

    // An announce with no query before it: the longest grace.
    c.handle(t0, from([10, 0, 0, 1]), &announce(7, 1, 4433)).unwrap();
    assert_eq!(c.poll_timeout(), Some(t0 + GRACE));
    let later = t0 + Duration::from_millis(100);
    c.handle(later, from([10, 0, 0, 1]), &announce(7, 1, 4433)).unwrap();
    c.handle(later, from([127, 0, 0, 1]), &announce(7, 1, 4433)).unwrap();
    // The grace period runs from the first answer only.
    assert_eq!(c.poll_timeout(), Some(t0 + GRACE));
    for i in 0..100u8 {
        c.handle(later, from([192, 168, 0, i]), &announce(7, 1, 4433)).unwrap();
    }
    let found = c.finish().unwrap();
    assert_eq!(found.instance, 1);
    assert_eq!(found.addrs.len(), MAX_ADDRS);
    assert_eq!(found.addrs[0], "10.0.0.1:4433".parse().unwrap());
    assert_eq!(found.addrs[1], "127.0.0.1:4433".parse().unwrap());
}

#[test]
fn the_grace_period_follows_the_first_answers_delay() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let answer = |query_id| {
        DiscoveryMsg::Announce { nameplate: 7, instance: 1, port: 4433, query_id }.encode()
    };
    for (delay, grace) in [(ms(1), MIN_GRACE), (ms(40), ms(160)), (ms(900), GRACE)] {
        let mut c = Collector::new(7);
        c.queried(5, t0);
        c.handle(t0 + delay, loopback(DEFAULT_PORT), &answer(5)).unwrap();
        assert_eq!(c.poll_timeout(), Some(t0 + delay + grace), "answer after {delay:?}");
    }
    // An answer to an earlier query, or an unsolicited announce, says nothing about the
    // delay: the full grace.
    // delay: the full grace, and a fresh query at once, whose answer shortens it.
    for other in [4, 0] {
        let mut c = Collector::new(7);
        c.queried(5, t0);
        c.handle(t0 + ms(1), loopback(DEFAULT_PORT), &answer(other)).unwrap();
        assert_eq!(c.poll_timeout(), Some(t0 + ms(1) + GRACE), "query id {other}");
        assert!(c.take_requery(), "query id {other}");
        assert!(!c.take_requery(), "one fresh query is enough");
        c.queried(6, t0 + ms(2));
        c.handle(t0 + ms(3), loopback(DEFAULT_PORT), &answer(6)).unwrap();
        assert_eq!(c.poll_timeout(), Some(t0 + ms(3) + MIN_GRACE), "query id {other}");
        // A later, slower answer never lengthens it again.
        c.queried(7, t0 + ms(4));
        c.handle(t0 + ms(200), loopback(DEFAULT_PORT), &answer(7)).unwrap();
        assert_eq!(c.poll_timeout(), Some(t0 + ms(3) + MIN_GRACE), "query id {other}");
    }
    // An answer to the last query asks for no fresh one.
    let mut c = Collector::new(7);
    c.queried(5, t0);
    c.handle(t0 + ms(1), loopback(DEFAULT_PORT), &answer(5)).unwrap();
    assert!(!c.take_requery());
}

#[test]
fn collector_detects_a_second_instance() {
    let t0 = Instant::now();
    let mut c = Collector::new(7);
    let from = loopback(DEFAULT_PORT);
    c.handle(t0, from, &announce(7, 1, 4433)).unwrap();
    assert_eq!(c.handle(t0, from, &announce(7, 2, 4433)), Err(Ambiguous));
}

#[test]
fn a_busy_answer_ends_the_wait_unless_a_free_sender_answers() {
    let t0 = Instant::now();
    let from = loopback(DEFAULT_PORT);
    let busy = DiscoveryMsg::Busy { nameplate: 7, instance: 1, query_id: 5, again: false }.encode();
    let mut c = Collector::new(7);
    c.queried(5, t0);
    c.handle(t0 + Duration::from_millis(10), from, &busy).unwrap();
    assert!(c.only_busy());
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_millis(10) + MIN_GRACE));
    // Another sender on the nameplate that is free wins; it is not a second instance.
    c.handle(t0, from, &announce(7, 2, 4433)).unwrap();
    assert!(!c.only_busy());
    assert_eq!(c.finish().map(|f| f.instance), Some(2));
    // A busy answer for another nameplate is nobody's business.
    let mut c = Collector::new(8);
    c.handle(t0, from, &busy).unwrap();
    assert!(!c.only_busy() && c.poll_timeout().is_none());
}

#[test]
fn a_busy_responder_answers_busy() {
    let t0 = Instant::now();
    let mut r = Responder::new(7, 42, 4433, t0);
    r.busy = Some(false);
    let query = DiscoveryMsg::Query { nameplate: 7, query_id: 9 }.encode();
    let answer = r.handle(t0, loopback(5000), &query).unwrap();
    assert_eq!(
        answer.msg,
        DiscoveryMsg::Busy { nameplate: 7, instance: 42, query_id: 9, again: false }
    );
    r.busy = Some(true);
    let answer = r.handle(t0, loopback(5000), &query).unwrap();
    assert!(matches!(answer.msg, DiscoveryMsg::Busy { again: true, .. }));
}

/// A sender that serves a receiver tells a second one so, at once.
#[tokio::test]
async fn a_busy_sender_is_reported_busy() {
    let config = test_config();
    let np = nameplate();
    let announcer = Announcer::start(&config, np, 4433).await.unwrap();
    announcer.set_busy(false);
    let err = find(&config, np, Duration::from_secs(20)).await.unwrap_err();
    assert!(matches!(err, DiscoveryError::Busy { nameplate } if nameplate == np), "{err:?}");
    // One that serves again after: the receiver waits for it (here, in vain) to the end.
    announcer.set_busy(true);
    let err = find(&config, np, Duration::from_millis(800)).await.unwrap_err();
    assert!(matches!(err, DiscoveryError::StillBusy { .. }), "{err:?}");
}

#[test]
fn responder_answers_only_its_queries_within_limits() {
    let t0 = Instant::now();
    let mut r = Responder::new(7, 42, 4433, t0);
    let from = loopback(50000);
    let query = |nameplate| DiscoveryMsg::Query { nameplate, query_id: 9 }.encode();
    assert_eq!(r.handle(t0, from, b"junk"), None);
    assert_eq!(r.handle(t0, from, &query(8)), None);
    assert_eq!(r.handle(t0, from, &announce(7, 43, 1)), None);

    let expected_msg =
        DiscoveryMsg::Announce { nameplate: 7, instance: 42, port: 4433, query_id: 9 };
    assert_eq!(
        r.handle(t0, from, &query(7)),
        Some(Answer { msg: expected_msg.clone(), unicast_to: Some(from), multicast: true })
    );
    // Right after, unicast only: multicast answers are spaced out.
    let answer = r.handle(t0, from, &query(7)).unwrap();
    assert_eq!((answer.unicast_to, answer.multicast), (Some(from), false));
    // A flood exhausts the unicast budget of the window.
    for _ in 2..UNICAST_REPLIES_PER_WINDOW {
        assert!(r.handle(t0, from, &query(7)).is_some());
    }
    assert_eq!(r.handle(t0, from, &query(7)), None);
    let t1 = t0 + MULTICAST_REPLY_SPACING;
    let answer = r.handle(t1, from, &query(7)).unwrap();
    assert_eq!((answer.unicast_to, answer.multicast), (None, true));
    // A new window restores unicast answers.
    let t2 = t0 + UNICAST_REPLY_WINDOW;
    let answer = r.handle(t2, from, &query(7)).unwrap();
    assert_eq!(answer.unicast_to, Some(from));
}

/// Finding 5: only queries sent to the group from the link are answered.
#[test]
fn only_group_queries_from_the_link_count() {
    let group = IpAddr::V4(DiscoveryConfig::default().group_v4);
    let unicast = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
    assert!(from_the_link(Some(group), group, || true));
    assert!(!from_the_link(Some(group), group, || false));
    assert!(!from_the_link(unicast, group, || true));
    // A platform that does not tell the destination: the source decides.
    assert!(from_the_link(None, group, || true));
    assert!(!from_the_link(None, group, || false));

    // IPv6 alike: the link-local group, not a unicast address of this host, nor another group.
    let group = IpAddr::V6(DiscoveryConfig::default().group_v6);
    let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
    assert!(from_the_link(Some(group), group, || true));
    assert!(!from_the_link(Some(group), group, || false));
    for dst in ["fe80::1", "2001:db8::1", "ff02::1", "::ffff:239.255.41.41"] {
        assert!(!from_the_link(ip(dst), group, || true), "{dst}");
    }
}

/// The IPv6 group is link-local in scope (never routed) and flagged transient: ours, not one
/// IANA assigned.
#[test]
fn the_ipv6_group_is_link_local_and_transient() {
    assert!(GROUP_V6.is_multicast());
    let flags_and_scope = GROUP_V6.octets()[1];
    assert_eq!(flags_and_scope & 0x0f, 0x2, "link-local scope");
    assert_eq!(flags_and_scope & 0xf0, 0x10, "transient (T) flag only");
    assert_eq!(GROUP_V6.to_string(), "ff12::5032:5043");
    assert_eq!(&GROUP_V6.octets()[12..], crate::wire::discovery::MAGIC);
}

fn v6(ip: &str, port: u16, scope: u32) -> SocketAddr {
    SocketAddrV6::new(ip.parse().unwrap(), port, 0, scope).into()
}

/// An announce from a link-local source keeps the interface it came in on (its scope), which
/// a connection to it needs; one without is dropped; other IPv6 sources need none.
#[test]
fn link_local_senders_keep_their_interface() {
    let t0 = Instant::now();
    let mut c = Collector::new(7);
    c.handle(t0, v6("fe80::1", DEFAULT_PORT, 0), &announce(7, 1, 4433)).unwrap();
    assert_eq!(c.poll_timeout(), None, "no interface, no sender");
    c.handle(t0, v6("fe80::1", DEFAULT_PORT, 3), &announce(7, 1, 4433)).unwrap();
    // The same address on another interface is another way there.
    c.handle(t0, v6("fe80::1", DEFAULT_PORT, 4), &announce(7, 1, 4433)).unwrap();
    c.handle(t0, v6("fe80::1", DEFAULT_PORT, 3), &announce(7, 1, 4433)).unwrap();
    c.handle(t0, v6("2001:db8::1", DEFAULT_PORT, 5), &announce(7, 1, 4433)).unwrap();
    let found = c.finish().unwrap();
    assert_eq!(
        found.addrs,
        [v6("fe80::1", 4433, 3), v6("fe80::1", 4433, 4), v6("2001:db8::1", 4433, 0)]
    );
    let SocketAddr::V6(first) = found.addrs[0] else { panic!() };
    assert_eq!(first.scope_id(), 3);
}

/// One sender heard over both families is one sender: its addresses merge, IPv4 first (tried
/// first, as before IPv6 was used), each family in order of arrival.
#[test]
fn both_families_of_one_sender_merge_ipv4_first() {
    let t0 = Instant::now();
    let mut c = Collector::new(7);
    c.handle(t0, v6("fe80::1", DEFAULT_PORT, 3), &announce(7, 1, 4433)).unwrap();
    c.handle(t0, SocketAddr::from(([10, 0, 0, 1], DEFAULT_PORT)), &announce(7, 1, 4433)).unwrap();
    c.handle(t0, v6("fd00::1", DEFAULT_PORT, 0), &announce(7, 1, 4433)).unwrap();
    c.handle(t0, loopback(DEFAULT_PORT), &announce(7, 1, 4433)).unwrap();
    let found = c.finish().unwrap();
    assert_eq!(
        found.addrs,
        [
            SocketAddr::from(([10, 0, 0, 1], 4433)),
            loopback(4433),
            v6("fe80::1", 4433, 3),
            v6("fd00::1", 4433, 0),
        ]
    );
}

/// A second instance is ambiguous whichever family it answers on; a busy answer over IPv6
/// counts as over IPv4.
#[test]
fn the_families_share_ambiguity_and_busy() {
    let t0 = Instant::now();
    let mut c = Collector::new(7);
    c.handle(t0, loopback(DEFAULT_PORT), &announce(7, 1, 4433)).unwrap();
    let other = c.handle(t0, v6("fe80::9", DEFAULT_PORT, 2), &announce(7, 2, 4433));
    assert_eq!(other, Err(Ambiguous));

    let busy = DiscoveryMsg::Busy { nameplate: 7, instance: 1, query_id: 5, again: false };
    let mut c = Collector::new(7);
    c.queried(5, t0);
    c.handle(t0, v6("fe80::9", DEFAULT_PORT, 2), &busy.encode()).unwrap();
    assert!(c.only_busy());
}

/// The sender answers an IPv6 query by unicast to its scoped source, so the answer leaves
/// through the interface the query came in on.
#[test]
fn an_ipv6_query_is_answered_at_its_scoped_source() {
    let t0 = Instant::now();
    let mut r = Responder::new(7, 42, 4433, t0);
    let from = v6("fe80::2", 50000, 3);
    let query = DiscoveryMsg::Query { nameplate: 7, query_id: 9 }.encode();
    let answer = r.handle(t0, from, &query).unwrap();
    assert_eq!(answer.unicast_to, Some(from));
    assert!(answer.multicast);
    let Some(SocketAddr::V6(to)) = answer.unicast_to else { panic!() };
    assert_eq!(to.scope_id(), 3);
}

/// Removes the network namespace when the test ends, however it ends.
struct NetnsGuard(String);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Skips the test with a reason, unless `CI=true`, where a skipped test would hide a
/// broken runner: then it fails.
fn skip_or_fail(reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{reason}; CI=true, so this test must run: give it root and iproute2 (`ip`)");
    }
    eprintln!("skipping a network namespace test: {reason}");
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Set inside the namespace, so that the inner tests know they are there.
const NETNS_MARKER_ENV: &str = "P2P_COPY_NETNS_INNER";

/// Runs the ignored test `inner` (a name below `net::discovery::tests::`) of this test binary
/// in a fresh network namespace, after running each of `setup` (a command) inside it.
fn in_namespace(inner: &str, setup: &[&[&str]]) {
    if effective_uid() != Some(0) {
        return skip_or_fail("not running as root (network namespaces need it)");
    }
    if !Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success()) {
        return skip_or_fail("`ip` (iproute2) is not installed");
    }
    let name = format!("p2pc-disc-{}-{:08x}", std::process::id(), rand::random::<u32>());
    let added = Command::new("ip").args(["netns", "add", &name]).output().unwrap();
    if !added.status.success() {
        return skip_or_fail(&format!(
            "`ip netns add` failed: {}",
            String::from_utf8_lossy(&added.stderr).trim()
        ));
    }
    let _guard = NetnsGuard(name.clone());
    for command in setup {
        let done = Command::new("ip").args(["netns", "exec", &name]).args(*command).output();
        let done = done.unwrap();
        assert!(
            done.status.success(),
            "{command:?} failed in namespace {name}: {}",
            String::from_utf8_lossy(&done.stderr).trim()
        );
    }

    let exe = std::env::current_exe().unwrap();
    // The test's name as libtest knows it: its module path without the crate's name.
    let module = module_path!().split_once("::").map_or("", |(_, rest)| rest);
    let test = format!("{module}::{inner}");
    let out = Command::new("ip")
        .args(["netns", "exec", &name])
        .arg(&exe)
        .args(["--exact", &test, "--ignored", "--nocapture"])
        .env(NETNS_MARKER_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "inner test failed in namespace {name}:\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
}

/// Discovery between two "processes" on a host whose only interface is `lo` (no
/// MULTICAST flag): runs [`netns_inner_discovery`] in a fresh network namespace.
#[test]
fn discovery_in_loopback_only_namespace() {
    in_namespace("netns_inner_discovery", &[&["ip", "link", "set", "lo", "up"]]);
}

/// Run by [`discovery_in_loopback_only_namespace`] inside a namespace with only `lo`.
#[tokio::test]
#[ignore = "runs inside a loopback-only network namespace; started by \
            discovery_in_loopback_only_namespace"]
async fn netns_inner_discovery() {
    if std::env::var_os(NETNS_MARKER_ENV).is_some() {
        let interfaces = socket::interfaces(Family::V4).unwrap();
        assert!(
            interfaces.iter().all(|(_, via)| matches!(via, Via::V4(ip) if ip.is_loopback())),
            "expected a loopback-only namespace, found {interfaces:?}"
        );
    }
    finds_sender_on_loopback().await;
}

/// Discovery, and the QUIC connection after it, on a host with no IPv4 address at all (not
/// even 127.0.0.1) whose only link is a veth pair with the kernel's IPv6 link-local addresses:
/// runs [`netns_inner_ipv6_discovery`] in a fresh network namespace.
#[test]
fn discovery_on_ipv6_link_local_only() {
    in_namespace(
        "netns_inner_ipv6_discovery",
        &[
            &["ip", "link", "set", "lo", "up"],
            &["ip", "addr", "del", "127.0.0.1/8", "dev", "lo"],
            &["ip", "link", "add", "p2pc0", "type", "veth", "peer", "name", "p2pc1"],
            &["sysctl", "-q", "-w", "net.ipv6.conf.p2pc0.accept_dad=0"],
            &["sysctl", "-q", "-w", "net.ipv6.conf.p2pc1.accept_dad=0"],
            &["ip", "link", "set", "p2pc0", "up"],
            &["ip", "link", "set", "p2pc1", "up"],
        ],
    );
}

/// Run by [`discovery_on_ipv6_link_local_only`] inside its namespace.
#[tokio::test]
#[ignore = "runs inside a network namespace without IPv4; started by \
            discovery_on_ipv6_link_local_only"]
async fn netns_inner_ipv6_discovery() {
    if std::env::var_os(NETNS_MARKER_ENV).is_none() {
        return;
    }
    assert_eq!(socket::interfaces(Family::V4).unwrap(), vec![], "no IPv4 here");
    // The link-local addresses come once both ends are up.
    let link_local = |ip: &IpAddr| matches!(ip, IpAddr::V6(ip) if ip.is_unicast_link_local());
    for _ in 0..100 {
        if if_addrs::get_if_addrs().unwrap().iter().filter(|i| link_local(&i.ip())).count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let config = test_config();
    let np = nameplate();
    let tuning = crate::net::quic::Tuning::default();
    let any = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let socket = crate::net::quic::socket_for(any, crate::crypto::Role::Sender).unwrap();
    let server = crate::net::quic::Node::with_socket(socket, &tuning, true).unwrap();
    let port = server.local_addr().unwrap().port();
    let announcer = Announcer::start(&config, np, port).await.unwrap();
    let found = find(&config, np, Duration::from_secs(5)).await.unwrap();
    assert_eq!(found.instance, announcer.instance());
    for addr in &found.addrs {
        let SocketAddr::V6(v6) = addr else { panic!("an IPv4 address: {found:?}") };
        assert!(v6.ip().is_unicast_link_local(), "{found:?}");
        assert_ne!(v6.scope_id(), 0, "a link-local address keeps its interface: {found:?}");
        assert_eq!(v6.port(), port, "{found:?}");
    }

    // The sender's endpoint takes a connection to the scoped address.
    let socket = crate::net::quic::socket_for(any, crate::crypto::Role::Receiver).unwrap();
    let client = crate::net::quic::Node::with_socket(socket, &tuning, false).unwrap();
    let accept = tokio::spawn({
        let endpoint = server.endpoint.clone();
        async move { endpoint.accept().await.unwrap().await.unwrap() }
    });
    let conn = client.connect_any(&found.addrs, Duration::from_secs(5)).await.unwrap();
    let served = accept.await.unwrap();
    assert!(
        found.addrs.contains(&crate::net::quic::peer_addr(&conn)),
        "{:?}",
        conn.remote_address()
    );
    assert!(link_local(&crate::net::quic::peer_addr(&served).ip()));
}
