//! Resume and sync through the built binary: a transfer killed (kill -9, Ctrl-C) is finished
//! by running the same commands again with a new code, moving only what is missing; a tree
//! sent again moves only what differs; changed sources and tampered partial copies never end
//! up in the result.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use util::netns::*;
use util::*;

const MIB: u64 = 1 << 20;

/// A tree with a large file (journaled), a medium one (not), and many small ones.
fn tree(fx: &mut Fixture, big: u64, small: usize) -> PathBuf {
    let root = fx.path("src/data");
    random_file(&root.join("big.bin"), big, &mut fx.rng);
    random_file(&root.join("medium.bin"), 5 * MIB + 17, &mut fx.rng);
    for i in 0..small {
        let size = fx.rng.range(0, 40_000);
        random_file(&root.join(format!("small/{:03}/f{i}", i % 7)), size, &mut fx.rng);
    }
    if small > 0 {
        set_mtime(&root.join("small"), 1_700_000_000);
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

fn receive_args(out: &Path) -> Vec<&OsStr> {
    vec![OsStr::new("--yes"), OsStr::new("--out"), out.as_os_str()]
}

/// A finished receive's `done`: checks that what moved, was kept and was already there add up
/// to the whole offer, and returns it.
fn done_adds_up(r: &Outcome, total: u64) -> Value {
    let done = r.event("done").unwrap_or_else(|| panic!("no done event\n{r}"));
    let n = |k: &str| done[k].as_u64().unwrap_or_else(|| panic!("{k} in {done}"));
    assert_eq!(n("bytes") + n("resumed_bytes") + n("skipped_bytes"), total, "{done}");
    done
}

/// Waits until the receiver reports file bytes written (its first progress event).
fn until_bytes_flow(receiver: &mut Proc) {
    receiver.wait_event_where("progress", |e| e["bytes"].as_u64().is_some_and(|b| b > 0));
}

/// Killed mid-transfer (both sides, kill -9), then the same commands again with a new code:
/// only what is missing moves, and the copy is identical; nothing is left but the names.
#[test]
fn a_killed_transfer_resumes_with_a_new_code() {
    let mut fx = Fixture::new();
    let src = tree(&mut fx, 600 * MIB, 300);
    let total = total_bytes(&src);
    let out = fx.path("out");
    let mut sender = fx.send([&src]);
    let mut receiver = fx.receive(receive_args(&out));
    until_bytes_flow(&mut receiver);
    receiver.kill();
    sender.kill();
    let _ = (receiver.finish(), sender.finish());
    assert!(!out.join("data/big.bin").exists(), "no final name on a partial file");
    assert!(!partial_copies(&out).is_empty(), "the partial copy is kept: {:?}", list_all(&out));

    fx.code = fresh_code();
    let (s, r) = fx.transfer(&[src.as_os_str()], &receive_args(&out));
    assert_exits(&[(&s, 0), (&r, 0)]);
    let done = done_adds_up(&r, total);
    let kept = done["resumed_bytes"].as_u64().unwrap() + done["skipped_bytes"].as_u64().unwrap();
    assert!(kept > 0, "something was kept\n{r}");
    assert_eq!(s.event("done").unwrap()["resumed_bytes"], done["resumed_bytes"], "{s}");
    assert_same_tree(&src, &out.join("data"));
    assert_eq!(list_all(&out).iter().filter(|p| p.starts_with(".p2p-copy")).count(), 0);
}

/// A source that changed between the kill and the rerun arrives as it is now: its partial
/// copy is not used, and the obsolete copy is gone once the new one is in place.
#[test]
fn a_source_changed_between_runs_arrives_as_it_is_now() {
    let mut fx = Fixture::new();
    let src = tree(&mut fx, 400 * MIB, 0);
    let out = fx.path("out");
    let mut sender = fx.send([&src]);
    let mut receiver = fx.receive(receive_args(&out));
    until_bytes_flow(&mut receiver);
    receiver.kill();
    sender.kill();
    let _ = (receiver.finish(), sender.finish());
    // Change a byte near the start of the big file (same size, new mtime).
    let big = src.join("big.bin");
    let f = std::fs::OpenOptions::new().write(true).open(&big).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"changed", 1000).unwrap();
    drop(f);
    set_mtime(&big, 1_800_000_000);

    fx.code = fresh_code();
    let (s, r) = fx.transfer(&[src.as_os_str()], &receive_args(&out));
    assert_exits(&[(&s, 0), (&r, 0)]);
    assert_same_tree(&src, &out.join("data"));
    assert!(
        partial_copies(&out).is_empty(),
        "the old version's copy is gone: {:?}",
        list_all(&out)
    );
}

/// A partial copy changed on disk between runs is noticed (its ctime changed): the journal is
/// checked against the data, and the copy is repaired from the damaged group on.
#[test]
fn a_tampered_partial_copy_is_detected_and_repaired() {
    let mut fx = Fixture::new();
    let src = tree(&mut fx, 400 * MIB, 0);
    let out = fx.path("out");
    let mut sender = fx.send([&src]);
    let mut receiver = fx.receive(receive_args(&out));
    receiver.wait_event_where("progress", |e| e["bytes"].as_u64().is_some_and(|b| b > 40 * MIB));
    receiver.kill();
    sender.kill();
    let _ = (receiver.finish(), sender.finish());
    let parts: Vec<(std::path::PathBuf, u64)> = partial_copies(&out)
        .into_iter()
        .map(|p| out.join(p))
        .map(|p| {
            let len = std::fs::metadata(&p).unwrap().len();
            (p, len)
        })
        .collect();
    let (part, held) = parts.iter().max_by_key(|(_, len)| *len).cloned().expect("a partial copy");
    // The other file's partial copy (if the kill came while it was arriving) may be kept too.
    let others: u64 = parts.iter().map(|(_, len)| len).sum::<u64>() - held;
    assert!(held > 20 * MIB, "held {held}");
    // Between the runs (not within the instant the killed receiver announced its last write).
    std::thread::sleep(Duration::from_millis(200));
    let f = std::fs::OpenOptions::new().write(true).open(&part).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"\xff\xfe", 10 * MIB + 5).unwrap();
    drop(f);

    fx.code = fresh_code();
    let (s, r) = fx.transfer(&[src.as_os_str()], &receive_args(&out));
    assert_exits(&[(&s, 0), (&r, 0)]);
    let done = done_adds_up(&r, total_bytes(&src));
    let resumed = done["resumed_bytes"].as_u64().unwrap();
    assert!(
        resumed <= 10 * MIB + others,
        "kept only what precedes the damage (and {others} bytes of the other file): {resumed}\n{r}"
    );
    assert!(resumed > 0, "kept what precedes the damage\n{r}");
    assert_same_tree(&src, &out.join("data"));
}

/// A tree sent again into a copy of itself moves no file data; one changed file is a conflict
/// (nothing written) without --overwrite, and moves alone with it.
#[test]
fn a_tree_sent_again_moves_only_what_differs() {
    let mut fx = Fixture::new();
    let src = tree(&mut fx, 3 * MIB, 400);
    let total = total_bytes(&src);
    let files = list_all(&src).iter().filter(|p| src.join(p).is_file()).count() as u64;
    let out = fx.path("out");
    let (s, r) = fx.transfer(&[src.as_os_str()], &receive_args(&out));
    assert_exits(&[(&s, 0), (&r, 0)]);

    fx.code = fresh_code();
    let (s, r) = fx.transfer(&[OsStr::new("-v"), src.as_os_str()], &receive_args(&out));
    assert_exits(&[(&s, 0), (&r, 0)]);
    assert!(!s.messages().contains("walking the paths again"), "kept from the listing\n{s}");
    let done = done_adds_up(&r, total);
    assert_eq!(done["bytes"], 0, "no file data moved\n{r}");
    assert_eq!(done["wire_bytes"], 0, "{r}");
    assert_eq!(done["skipped_files"], files, "{r}");
    assert_eq!(r.event("offer").unwrap()["present_bytes"], total, "{r}");
    assert_same_tree(&src, &out.join("data"));

    // One file changes.
    let changed = src.join("small/003/f3");
    write_file(&changed, b"a new version of f3\n");
    fx.code = fresh_code();
    let (s, r) = fx.transfer(&[src.as_os_str()], &receive_args(&out));
    assert_exits(&[(&s, 5), (&r, 5)]);
    assert_says(&r, &["small/003/f3", "--overwrite"]);
    assert_ne!(std::fs::read(out.join("data/small/003/f3")).unwrap(), b"a new version of f3\n");

    fx.code = fresh_code();
    let mut args = receive_args(&out);
    args.push(OsStr::new("--overwrite"));
    let (s, r) = fx.transfer(&[src.as_os_str()], &args);
    assert_exits(&[(&s, 0), (&r, 0)]);
    let done = done_adds_up(&r, total_bytes(&src));
    assert_eq!(done["files"], 1, "only the changed file moved\n{r}");
    assert_eq!(done["bytes"], 20, "{r}");
    assert_same_tree(&src, &out.join("data"));
}

/// Sent again with everything changed: more entries (long paths) than the sender keeps in
/// memory from its scan or from the listing, so it walks its paths again for the data; all of
/// it moves, once.
#[test]
fn a_large_listing_is_walked_again() {
    let mut fx = Fixture::new();
    let src = fx.path("src/t");
    let deep: PathBuf = (0..11).map(|i| format!("{i:02}{}", "d".repeat(240))).collect();
    // About 2.9 KB of path each: 4,000 are more than the scan's 10 MiB and the listing's 4 MiB.
    let files = 4000;
    for i in 0..files {
        write_file(&src.join(&deep).join(format!("{i:04}{}", "f".repeat(200))), b"one\n");
    }
    let out = fx.path("out");
    let (s, r) = fx.transfer(&[src.as_os_str()], &receive_args(&out));
    assert_exits(&[(&s, 0), (&r, 0)]);

    for p in list_all(&src) {
        let p = src.join(p);
        if p.is_file() {
            write_file(&p, b"two!\n");
            set_mtime(&p, 1_700_000_000);
        }
    }
    fx.code = fresh_code();
    let mut args = receive_args(&out);
    args.push(OsStr::new("--overwrite"));
    let (s, r) = fx.transfer(&[OsStr::new("-v"), src.as_os_str()], &args);
    assert_exits(&[(&s, 0), (&r, 0)]);
    assert_says(&s, &["walking the paths again"]);
    let done = done_adds_up(&r, 5 * files);
    assert_eq!(done["files"], files, "{r}");
    assert_eq!(done["skipped_files"], 0, "{r}");
    assert_same_tree(&src, &out.join("t"));
}

/// Same size and mtime, other content: skipped by default, found with --checksum.
#[test]
fn checksum_compares_content() {
    let mut fx = Fixture::new();
    let src = fx.path("src/d");
    write_file(&src.join("a.txt"), b"version one\n");
    set_mtime(&src.join("a.txt"), 1_700_000_000);
    let out = fx.path("out");
    let (s, r) = fx.transfer(&[src.as_os_str()], &receive_args(&out));
    assert_exits(&[(&s, 0), (&r, 0)]);
    write_file(&src.join("a.txt"), b"version two\n");
    set_mtime(&src.join("a.txt"), 1_700_000_000);

    fx.code = fresh_code();
    let (s, r) = fx.transfer(&[src.as_os_str()], &receive_args(&out));
    assert_exits(&[(&s, 0), (&r, 0)]);
    assert_eq!(r.event("done").unwrap()["skipped_files"], 1, "{r}");
    assert_eq!(std::fs::read(out.join("d/a.txt")).unwrap(), b"version one\n");

    fx.code = fresh_code();
    let mut args = receive_args(&out);
    args.extend([OsStr::new("--checksum"), OsStr::new("--overwrite")]);
    let (s, r) = fx.transfer(&[src.as_os_str()], &args);
    assert_exits(&[(&s, 0), (&r, 0)]);
    assert_eq!(r.event("done").unwrap()["files"], 1, "{r}");
    assert_eq!(std::fs::read(out.join("d/a.txt")).unwrap(), b"version two\n");
}

/// Bytes a round may send again beyond what the receiver keeps: one flow-control window, plus
/// per lane a chunk and the unjournaled part of a group, plus a margin for the listing and
/// QUIC's own bytes.
const RESEND_BOUND: u64 = 8 * MIB + 4 * (MIB / 2 + MIB) + 2 * MIB;

/// kill -9 at random points, `rounds` times (one side or the other, per `victim`), between two
/// hosts on a rate-limited veth, with a new code each round; then a run to the end. The bytes
/// the link carried, by its own counter, stay within what the tree needs plus the resend bound
/// per round, and the last round's counter agrees with what its receiver reports.
fn kill_loop(victim: &str) {
    let Some((a, b, _, _)) = two_hosts() else { return };
    // 100 Mbit/s: a round lasts long enough to be cut anywhere.
    if let Err(e) = a.ip(&["link", "set", &a.name, "mtu", "1500"]).and_then(|()| {
        run(
            "ip",
            &[
                "netns", "exec", &a.name, "tc", "qdisc", "add", "dev", &a.name, "root", "tbf",
                "rate", "100mbit", "burst", "128kb", "latency", "50ms",
            ],
        )
    }) {
        return skip_or_fail(&format!("cannot limit the link's rate: {e}"));
    }
    let mut fx = Fixture::new();
    let src = tree(&mut fx, 160 * MIB, 150);
    let total = total_bytes(&src);
    let out = fx.path("out");
    let rounds = 10;
    let mut carried = 0;
    for round in 0..rounds {
        fx.code = fresh_code();
        let before = a.tx_bytes(&a.name);
        let mut sender = fx.send_in(&a.prefix(), [&src]);
        let mut receiver = fx.receive_in(&b.prefix(), receive_args(&out));
        receiver.wait_event("accepted");
        let cut = fx.rng.range(50, 1_500);
        std::thread::sleep(Duration::from_millis(cut));
        let (first, second) = if victim == "sender" {
            (&mut sender, &mut receiver)
        } else {
            (&mut receiver, &mut sender)
        };
        if !first.running() {
            panic!("round {round} finished before the cut at {cut} ms: make the tree larger");
        }
        first.kill();
        std::thread::sleep(Duration::from_millis(20));
        second.kill();
        let _ = (sender.finish(), receiver.finish());
        let this = a.tx_bytes(&a.name) - before;
        carried += this;
        eprintln!("round {round}: cut at {cut} ms, the link carried {this} bytes");
    }
    fx.code = fresh_code();
    let before = a.tx_bytes(&a.name);
    let sender = fx.send_in(&a.prefix(), [&src]);
    let receiver = fx.receive_in(&b.prefix(), receive_args(&out));
    let (s, r) = finish_pair(sender, receiver);
    assert_exits(&[(&s, 0), (&r, 0)]);
    let last = a.tx_bytes(&a.name) - before;
    carried += last;
    assert_same_tree(&src, &out.join("data"));
    let done = done_adds_up(&r, total);
    let moved = done["bytes"].as_u64().unwrap();
    assert!(
        last >= moved && last <= moved + moved / 20 + 2 * MIB,
        "the last round's link counter ({last}) agrees with what the receiver reports ({moved})"
    );
    let allowed = total + total / 20 + rounds * RESEND_BOUND;
    eprintln!("{rounds} kills of the {victim}: the link carried {carried} bytes for {total} (allowed {allowed})");
    assert!(carried <= allowed, "the link carried {carried} bytes for {total} (allowed {allowed})");
    assert!(partial_copies(&out).is_empty(), "{:?}", list_all(&out));
}

#[test]
fn the_receiver_killed_ten_times_resends_little() {
    kill_loop("receiver");
}

#[test]
fn the_sender_killed_ten_times_resends_little() {
    kill_loop("sender");
}
