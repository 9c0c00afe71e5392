//! Transfers inside network namespaces the tests create: a host with nothing but loopback, and
//! two hosts on one Ethernet segment (a veth pair) with nothing configured but their
//! addresses. Needs root and `ip` (iproute2); without them the tests fail under `CI=true` and
//! are skipped otherwise. Namespaces are deleted on drop, also when a test panics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::ffi::OsStr;
use std::os::unix::fs::symlink;
use std::path::Path;

use serde_json::Value;
use util::netns::*;
use util::*;

const NOTES: &str = "été\n";
/// File bytes in [`small_tree`].
const TREE_BYTES: u64 = 300_000 + 1_500_000 + NOTES.len() as u64;

/// A small tree with a subdirectory, an empty directory, a symlink and set mtimes.
fn small_tree(fx: &mut Fixture) -> std::path::PathBuf {
    let tree = fx.path("src/photos");
    random_file(&tree.join("a.jpg"), 300_000, &mut fx.rng);
    random_file(&tree.join("2024/b.jpg"), 1_500_000, &mut fx.rng);
    write_file(&tree.join("2024/notes.txt"), NOTES.as_bytes());
    std::fs::create_dir_all(tree.join("empty")).expect("mkdir");
    symlink("2024/b.jpg", tree.join("latest.jpg")).expect("symlink");
    for (i, f) in ["a.jpg", "2024/b.jpg", "2024/notes.txt", "empty", "2024", ""].iter().enumerate()
    {
        set_mtime(&tree.join(f), 1_700_000_000 + i as u64);
    }
    tree
}

fn peer_ip(o: &Outcome) -> String {
    let connected = o.event("connected").unwrap_or_else(|| panic!("no connected event\n{o}"));
    let peer = connected["peer"].as_str().unwrap_or_else(|| panic!("peer is a string\n{o}"));
    let addr: std::net::SocketAddr = peer.parse().unwrap_or_else(|e| panic!("{peer:?}: {e}\n{o}"));
    addr.ip().to_string()
}

/// Sends `tree` from `send_ns` to `recv_ns`; returns (sender, receiver) after checking the copy.
fn transfer_between(
    fx: &Fixture,
    tree: &Path,
    send_ns: &Netns,
    recv_ns: &Netns,
) -> (Outcome, Outcome) {
    let out = fx.path("out");
    let sender = fx.send_in(&send_ns.prefix(), [tree]);
    let receiver = fx
        .receive_in(&recv_ns.prefix(), [OsStr::new("--yes"), OsStr::new("--out"), out.as_os_str()]);
    let (s, r) = finish_pair(sender, receiver);
    assert_exits(&[(&s, 0), (&r, 0)]);
    let name = tree.file_name().expect("named");
    let entries = assert_same_tree(tree, &out.join(name));
    let done: Value = assert_done(&r, TREE_BYTES, 3);
    assert_eq!(done["entries"], entries as u64, "{r}");
    assert_done(&s, TREE_BYTES, 3);
    (s, r)
}

#[test]
fn loopback_only_host() {
    if !can_use_netns() {
        return;
    }
    let (name, _) = unique("l");
    let ns = match Netns::add(name) {
        Ok(ns) => ns,
        Err(e) => return skip_or_fail(&format!("cannot create a network namespace: {e}")),
    };
    let mut fx = Fixture::new();
    let tree = small_tree(&mut fx);
    let (s, r) = transfer_between(&fx, &tree, &ns, &ns);
    assert_eq!(peer_ip(&r), "127.0.0.1", "{r}");
    assert_eq!(peer_ip(&s), "127.0.0.1", "{s}");
}

#[test]
fn two_hosts_on_one_segment() {
    let Some((a, b, a_addr, b_addr)) = two_hosts() else { return };
    let mut fx = Fixture::new();
    let tree = small_tree(&mut fx);
    let (s, r) = transfer_between(&fx, &tree, &a, &b);
    assert_eq!(peer_ip(&r), a_addr, "the receiver reached the sender's veth address\n{r}");
    assert_eq!(peer_ip(&s), b_addr, "the sender saw the receiver's veth address\n{s}");
}

/// With a rendezvous node configured, two hosts on one LAN still connect directly (host
/// candidates); with the relay forced, the same transfer goes through the node.
#[test]
fn two_hosts_on_one_segment_through_a_node() {
    let Some((a, b, a_addr, _b_addr)) = two_hosts() else { return };
    let mut fx = Fixture::new();
    let tree = small_tree(&mut fx);
    let node_addr = format!("{a_addr}:4433");
    let mut node = fx.spawn(
        "node",
        &a.prefix(),
        ["rendezvous", "-q", "--listen", &node_addr, "--claims-per-minute", "0"],
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    for (i, forced) in [false, true].into_iter().enumerate() {
        let out = fx.path(&format!("out{i}"));
        let code = fresh_code();
        let mut send_args = vec!["send", "--json", "--rendezvous", &node_addr, "--code", &code];
        send_args.push(tree.to_str().unwrap());
        let mut sender = fx.spawn("sender", &a.prefix(), send_args);
        sender.wait_event("code");
        let mut recv_args = vec!["receive", "--json", "--yes", "--rendezvous", &node_addr, "--out"];
        recv_args.push(out.to_str().unwrap());
        if forced {
            recv_args.push("--force-relay");
        }
        recv_args.push(&code);
        let receiver = fx.spawn("receiver", &b.prefix(), recv_args);
        let (s, r) = finish_pair(sender, receiver);
        assert_exits(&[(&s, 0), (&r, 0)]);
        assert_same_tree(&tree, &out.join("photos"));
        let want = if forced { "relay" } else { "direct" };
        assert_done_via(&r, TREE_BYTES, 3, want);
        assert_done_via(&s, TREE_BYTES, 3, want);
        if !forced {
            assert_eq!(peer_ip(&r), a_addr, "the receiver reached the sender's LAN address\n{r}");
        }
    }
    node.kill();
}
