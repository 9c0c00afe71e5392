//! Rejoining a transfer without a new code, through the built binary between two network
//! namespaces: one side killed and started again with the same command joins the side still
//! waiting; a link that goes down for longer than the idle timeout (on the LAN, and through a
//! rendezvous node that is restarted meanwhile) and a flapping link both end in a finished,
//! identical copy with no file started again. Needs root and `ip`; fails under `CI=true`
//! without them and is skipped otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use util::netns::*;
use util::*;

const MIB: u64 = 1 << 20;
/// What one interruption may cost beyond the tree: one flow-control window, per lane a chunk
/// and the unjournaled part of a group, and a margin (as in `tests/resume.rs`).
const RESEND_BOUND: u64 = 8 * MIB + 4 * (MIB / 2 + MIB) + 2 * MIB;
/// Longer than the QUIC idle timeout (30 s): the old connection is surely given up.
const LONG_OUTAGE: Duration = Duration::from_secs(40);

/// Two hosts on a veth whose sending side (a) is limited to 100 Mbit/s, so that a transfer of
/// a few hundred MiB lasts long enough to be cut.
fn slow_hosts() -> Option<(Netns, Netns, String, String)> {
    let (a, b, a_addr, b_addr) = two_hosts()?;
    let limited = run(
        "ip",
        &[
            "netns", "exec", &a.name, "tc", "qdisc", "add", "dev", &a.name, "root", "tbf", "rate",
            "100mbit", "burst", "128kb", "latency", "50ms",
        ],
    );
    if let Err(e) = limited {
        skip_or_fail(&format!("cannot limit the link's rate: {e}"));
        return None;
    }
    Some((a, b, a_addr, b_addr))
}

/// A large file (journaled), a medium one and a few small ones.
fn tree(fx: &mut Fixture, big: u64) -> PathBuf {
    let root = fx.path("src/data");
    random_file(&root.join("big.bin"), big, &mut fx.rng);
    random_file(&root.join("medium.bin"), 5 * MIB + 17, &mut fx.rng);
    for i in 0..20 {
        let size = fx.rng.range(0, 40_000);
        random_file(&root.join(format!("small/f{i}")), size, &mut fx.rng);
    }
    root
}

fn total_bytes(dir: &Path) -> u64 {
    list_all(dir)
        .iter()
        .map(|p| std::fs::symlink_metadata(dir.join(p)).unwrap())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Sets a's end of the veth down or up.
fn link(a: &Netns, up: bool) {
    a.ip(&["link", "set", &a.name, if up { "up" } else { "down" }]).expect("ip link set");
}

/// Waits until the receiver reports file bytes written.
fn until_bytes_flow(receiver: &mut Proc) {
    receiver.wait_event_where("progress", |e| e["bytes"].as_u64().is_some_and(|b| b > 0));
}

/// The `done` of a side that finished, after checking that it reconnected at least once and
/// said so first (a `reconnecting` event with a reason).
fn reconnected(o: &Outcome) -> Value {
    let note = o.event("reconnecting").unwrap_or_else(|| panic!("no reconnecting event\n{o}"));
    assert!(note["reason"].as_str().is_some_and(|r| !r.is_empty()), "a reason: {note}");
    assert_eq!(note["wait_seconds"], 600, "{note}");
    assert!(o.event("reconnected").is_some(), "{o}");
    let done = o.event("done").unwrap_or_else(|| panic!("no done\n{o}"));
    assert!(done["reconnects"].as_u64().is_some_and(|n| n >= 1), "{done}");
    done
}

/// The receiver's counts add up: what was kept from before plus what moved is the offer.
fn nothing_started_again(done: &Value, total: u64) {
    let n = |k: &str| done[k].as_u64().unwrap_or_else(|| panic!("{k} in {done}"));
    assert_eq!(n("bytes") + n("resumed_bytes") + n("skipped_bytes"), total, "{done}");
}

fn receive_args(out: &Path) -> Vec<&OsStr> {
    vec![OsStr::new("--yes"), OsStr::new("--out"), out.as_os_str()]
}

/// The receiver is killed; started again with the same command and code, it joins the sender
/// that is still waiting (no new code), and only what was missing moves.
#[test]
fn a_restarted_receiver_rejoins_the_waiting_sender() {
    let Some((a, b, _, _)) = slow_hosts() else { return };
    let mut fx = Fixture::new();
    let src = tree(&mut fx, 200 * MIB);
    let total = total_bytes(&src);
    let out = fx.path("out");
    let sender = fx.send_in(&a.prefix(), [&src]).with_deadline(Duration::from_secs(240));
    let mut receiver = fx.receive_in(&b.prefix(), receive_args(&out));
    until_bytes_flow(&mut receiver);
    std::thread::sleep(Duration::from_millis(fx.rng.range(500, 3_000)));
    receiver.kill();
    let first = receiver.finish();
    assert!(!out.join("data/big.bin").exists(), "{first}");

    let receiver =
        fx.receive_in(&b.prefix(), receive_args(&out)).with_deadline(Duration::from_secs(240));
    let (s, r) = finish_pair(sender, receiver);
    assert_exits(&[(&s, 0), (&r, 0)]);
    assert_same_tree(&src, &out.join("data"));
    reconnected(&s);
    let done = r.event("done").unwrap_or_else(|| panic!("{r}"));
    nothing_started_again(&done, total);
    assert!(done["resumed_bytes"].as_u64().unwrap() > 0, "the partial copy was kept\n{r}");
    assert!(
        r.event("code").is_none()
            && s.events().iter().filter(|e| e["event"] == "code").count() == 1
    );
    assert!(partial_copies(&out).is_empty(), "{:?}", list_all(&out));
}

/// The sender is killed; started again with the same paths (it prints a new code, which
/// nobody needs), it joins the receiver that is still waiting.
#[test]
fn a_restarted_sender_rejoins_the_waiting_receiver() {
    let Some((a, b, _, _)) = slow_hosts() else { return };
    let mut fx = Fixture::new();
    let src = tree(&mut fx, 200 * MIB);
    let total = total_bytes(&src);
    let out = fx.path("out");
    let mut sender = fx.send_in(&a.prefix(), [&src]);
    let mut receiver =
        fx.receive_in(&b.prefix(), receive_args(&out)).with_deadline(Duration::from_secs(240));
    until_bytes_flow(&mut receiver);
    std::thread::sleep(Duration::from_millis(fx.rng.range(500, 3_000)));
    sender.kill();
    let _ = sender.finish();

    fx.code = fresh_code();
    let sender = fx.send_in(&a.prefix(), [&src]).with_deadline(Duration::from_secs(240));
    let (s, r) = finish_pair(sender, receiver);
    assert_exits(&[(&s, 0), (&r, 0)]);
    assert_same_tree(&src, &out.join("data"));
    let done = reconnected(&r);
    nothing_started_again(&done, total);
    assert!(partial_copies(&out).is_empty(), "{:?}", list_all(&out));
}

/// Runs a transfer from a to b (through a rendezvous node in a when `via_node`) while
/// `outages` happen on the link (each: seconds after the first bytes, how long it is down).
/// The node, if any, is restarted in the middle of the longest outage.
fn through_outages(via_node: bool, outages: &[(u64, u64)]) {
    let Some((a, b, a_addr, _)) = slow_hosts() else { return };
    let mut fx = Fixture::new();
    let src = tree(&mut fx, 300 * MIB);
    let total = total_bytes(&src);
    let out = fx.path("out");
    let node_addr = format!("{a_addr}:4433");
    let start_node = |fx: &Fixture| {
        let args = ["rendezvous", "-q", "--listen", &node_addr, "--claims-per-minute", "0"];
        let p = fx.spawn("node", &a.prefix(), args).with_deadline(Duration::from_secs(400));
        std::thread::sleep(Duration::from_millis(300));
        p
    };
    let mut node = via_node.then(|| start_node(&fx));
    let limit = Duration::from_secs(300);
    let (sender, mut receiver) = if via_node {
        let code = fx.code.clone();
        let src_s = src.to_str().unwrap();
        let send_args = ["send", "--json", "--rendezvous", &node_addr, "--code", &code, src_s];
        let mut sender = fx.spawn("sender", &a.prefix(), send_args).with_deadline(limit);
        sender.wait_event("code");
        let out_s = out.to_str().unwrap();
        let recv_args =
            ["receive", "--json", "--yes", "--rendezvous", &node_addr, "--out", out_s, &code];
        (sender, fx.spawn("receiver", &b.prefix(), recv_args).with_deadline(limit))
    } else {
        let sender = fx.send_in(&a.prefix(), [&src]).with_deadline(limit);
        (sender, fx.receive_in(&b.prefix(), receive_args(&out)).with_deadline(limit))
    };
    let before = a.tx_bytes(&a.name);
    until_bytes_flow(&mut receiver);
    let start = std::time::Instant::now();
    let longest = outages.iter().map(|o| o.1).max().unwrap_or(0);
    let mut restarted = false;
    for &(at, down) in outages {
        let when = start + Duration::from_secs(at);
        std::thread::sleep(when.saturating_duration_since(std::time::Instant::now()));
        eprintln!("link down for {down}s at {:?}", start.elapsed());
        link(&a, false);
        match node.as_mut() {
            Some(old) if down == longest && !restarted => {
                std::thread::sleep(Duration::from_secs(down / 2));
                old.kill();
                eprintln!("node restarted at {:?}", start.elapsed());
                node = Some(start_node(&fx));
                restarted = true;
                std::thread::sleep(Duration::from_secs(down - down / 2));
            }
            _ => std::thread::sleep(Duration::from_secs(down)),
        }
        link(&a, true);
    }
    let (s, r) = finish_pair(sender, receiver);
    drop(node);
    assert_exits(&[(&s, 0), (&r, 0)]);
    assert_same_tree(&src, &out.join("data"));
    let done = reconnected(&r);
    reconnected(&s);
    nothing_started_again(&done, total);
    // No file started again: the link carried the tree once, plus per reconnection what was
    // in flight, by its own counter.
    let carried = a.tx_bytes(&a.name) - before;
    let reconnects = done["reconnects"].as_u64().unwrap();
    let allowed = total + total / 20 + reconnects * RESEND_BOUND;
    eprintln!("{reconnects} reconnection(s): the link carried {carried} bytes for {total}");
    eprintln!("receiver: {done}\nsender: {}", s.event("done").unwrap());
    if carried > allowed {
        eprintln!("{s}\n{r}");
    }
    assert!(carried <= allowed, "the link carried {carried} bytes for {total} (allowed {allowed})");
    assert!(partial_copies(&out).is_empty(), "{:?}", list_all(&out));
}

/// Both paths gone for longer than the idle timeout on a LAN: both sides reconnect by
/// discovery when the link is back.
#[test]
fn a_long_outage_on_the_lan_reconnects_by_itself() {
    through_outages(false, &[(2, LONG_OUTAGE.as_secs())]);
}

/// The same through a rendezvous node, which is restarted while the link is down: both sides
/// meet again at the new node process.
#[test]
fn a_long_outage_through_a_restarted_node_reconnects_by_itself() {
    through_outages(true, &[(2, LONG_OUTAGE.as_secs())]);
}

/// A link that goes down and up several times, once for longer than the idle timeout: the
/// transfer finishes by itself.
#[test]
fn a_flapping_link_still_finishes() {
    through_outages(false, &[(1, 3), (6, 2), (10, LONG_OUTAGE.as_secs()), (52, 4), (58, 2)]);
}
