//! Failures through the built binary on loopback: the right exit codes and messages on both
//! sides, and nothing incomplete left on disk.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use util::*;

#[test]
fn wrong_code_fails_on_both_sides() {
    let mut fx = Fixture::new();
    let src = fx.path("src/secret.bin");
    random_file(&src, 10_000, &mut fx.rng);
    let out = fx.path("out");
    let sender = fx.send([&src]);
    // Same nameplate (so discovery pairs them), another secret.
    let wrong = other_code(&fx.code);
    let receiver = fx.spawn(
        "receiver",
        &[],
        [
            OsStr::new("receive"),
            OsStr::new("--json"),
            OsStr::new("--yes"),
            OsStr::new("--out"),
            out.as_os_str(),
            OsStr::new(&wrong),
        ],
    );
    let (s, r) = finish_pair(sender, receiver);
    assert_exits(&[(&s, 3), (&r, 3)]);
    for o in [&s, &r] {
        assert_says(o, &["code is wrong"]);
        assert_eq!(o.event("error").expect("error event")["kind"], "wrong_code", "{o}");
        assert!(o.event("secured").is_none(), "never secured\n{o}");
    }
    assert!(r.event("offer").is_none(), "the receiver saw no offer\n{r}");
    assert!(list_all(&out).is_empty(), "nothing written: {:?}", list_all(&out));
}

/// An `--out` that cannot take anything fails at once, before the code is used (no sender
/// needed), and names the problem.
#[test]
fn a_bad_out_fails_before_the_code_is_used() {
    let fx = Fixture::new();
    let file = fx.path("a-file");
    write_file(&file, b"x");
    for out in [file.clone(), file.join("below")] {
        let o = fx.receive([OsStr::new("--yes"), OsStr::new("--out"), out.as_os_str()]);
        let o = o.finish_within(Duration::from_secs(10));
        assert_exits(&[(&o, 2)]);
        assert_says(&o, &["not a directory", "--out"]);
        assert!(o.event("searching").is_none(), "no search for the sender\n{o}");
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
}

/// An offer larger than the destination's free space is refused before anything is written;
/// the sender is told why.
#[test]
fn an_offer_larger_than_the_free_space_is_refused() {
    let fx = Fixture::new();
    let src = fx.path("src/huge.bin");
    std::fs::create_dir_all(src.parent().unwrap()).unwrap();
    // Sparse: 8 TiB that take no room on the sender's disk.
    std::fs::File::create(&src).and_then(|f| f.set_len(8 << 40)).unwrap();
    let out = fx.path("out");
    let (s, r) = fx
        .transfer(&[src.as_os_str()], &[OsStr::new("--yes"), OsStr::new("--out"), out.as_os_str()]);
    assert_exits(&[(&s, 4), (&r, 9)]);
    assert_says(&r, &["not enough free space", "--out"]);
    assert_says(&s, &["not have enough free space"]);
    assert!(r.event("accepted").is_none(), "{r}");
    assert!(list_all(&out).is_empty(), "nothing written: {:?}", list_all(&out));
}

#[test]
fn conflict_then_overwrite() {
    let mut fx = Fixture::new();
    let src = fx.path("src/report.txt");
    random_file(&src, 50_000, &mut fx.rng);
    let out = fx.path("out");
    let existing = out.join("report.txt");
    write_file(&existing, b"old contents\n");
    let args = [OsStr::new("--yes"), OsStr::new("--out"), out.as_os_str()];

    let (s, r) = fx.transfer(&[src.as_os_str()], &args);
    assert_exits(&[(&s, 5), (&r, 5)]);
    assert_says(&r, &["report.txt", "--overwrite"]);
    assert_says(&s, &["report.txt", "--overwrite"]);
    assert_eq!(r.event("error").expect("error event")["kind"], "conflict", "{r}");
    assert_eq!(std::fs::read(&existing).expect("still there"), b"old contents\n", "untouched");
    assert_eq!(list_all(&out), vec![PathBuf::from("report.txt")], "nothing else written");

    fx.code = fresh_code();
    let mut args = args.to_vec();
    args.push(OsStr::new("--overwrite"));
    let (s, r) = fx.transfer(&[src.as_os_str()], &args);
    assert_exits(&[(&s, 0), (&r, 0)]);
    assert_done(&r, 50_000, 1);
    assert_same_tree(&src, &existing);
    assert_eq!(list_all(&out), vec![PathBuf::from("report.txt")], "replaced in place");
}

/// `--overwrite` replaces files, never a directory: the directory and its contents survive.
#[test]
fn overwrite_never_replaces_a_directory() {
    let mut fx = Fixture::new();
    let src = fx.path("src/x");
    random_file(&src, 1000, &mut fx.rng);
    let out = fx.path("out");
    write_file(&out.join("x/keep.txt"), b"mine\n");
    let (s, r) = fx.transfer(
        &[src.as_os_str()],
        &[OsStr::new("--yes"), OsStr::new("--overwrite"), OsStr::new("--out"), out.as_os_str()],
    );
    assert_exits(&[(&r, 5), (&s, 5)]);
    assert_says(&r, &["directory is in the way"]);
    assert_eq!(std::fs::read(out.join("x/keep.txt")).expect("kept"), b"mine\n");
    assert_eq!(list_all(&out), [Path::new("x"), Path::new("x/keep.txt")], "nothing else written");
}

/// Starts sending a 1 GiB sparse file as zeros (`--sparse off`: cheap for the sender, and it
/// cannot finish before the test acts) and returns once the receiver reported bytes written.
fn mid_transfer(fx: &Fixture) -> (Proc, Proc, PathBuf) {
    mid_transfer_with(fx, "600")
}

/// [`mid_transfer`], both sides with this `--reconnect-wait`.
fn mid_transfer_with(fx: &Fixture, reconnect_wait: &str) -> (Proc, Proc, PathBuf) {
    let src = fx.path("src/huge.bin");
    std::fs::create_dir_all(src.parent().expect("parent")).expect("mkdir");
    std::fs::File::create(&src).and_then(|f| f.set_len(1 << 30)).expect("sparse file");
    let out = fx.path("out");
    let wait = ["--reconnect-wait", reconnect_wait].map(OsStr::new);
    // Zeros compress to almost nothing: uncompressed, the sender stays within a flow-control
    // window of what the receiver has, so the transfer is still running when a side is killed.
    let off = ["--compress", "off", "--sparse", "off"].map(OsStr::new);
    let sender = fx.send(wait.iter().chain(&off).copied().chain([src.as_os_str()]));
    let mut receiver = fx.receive(wait.iter().copied().chain([
        OsStr::new("--yes"),
        OsStr::new("--out"),
        out.as_os_str(),
    ]));
    receiver.wait_event_where("progress", |e| e["bytes"].as_u64().is_some_and(|b| b > 0));
    (sender, receiver, out)
}

/// The sender dies mid-transfer: the receiver notices within the idle timeout, says it is
/// reconnecting, and when nobody comes back within `--reconnect-wait` fails with a network
/// error, keeping what arrived as a partial copy (for a later resume), never under the final
/// name.
#[test]
fn sender_killed_mid_transfer() {
    let fx = Fixture::new();
    let (mut sender, receiver, out) = mid_transfer_with(&fx, "5");
    assert!(sender.running(), "the sender is still sending\n{}", sender.output_so_far());
    sender.kill();
    let s = sender.finish();
    assert_eq!(s.code(), None, "killed by a signal\n{s}");

    let r = receiver.finish_within(Duration::from_secs(60));
    assert_exits(&[(&r, 7)]);
    let note = r.event("reconnecting").unwrap_or_else(|| panic!("no reconnecting event\n{r}"));
    assert_eq!(note["wait_seconds"], 5, "{r}");
    assert!(r.event("reconnected").is_none(), "{r}");
    assert_eq!(r.event("error").expect("error event")["kind"], "network", "{r}");
    assert_says(&r, &["no reconnection within 5s"]);
    assert!(r.event("done").is_none(), "{r}");
    assert_says(&r, &["--discard-partial"]);
    assert_eq!(final_names(&out), Vec::<PathBuf>::new(), "nothing under a final name");
    assert_eq!(partial_copies(&out).len(), 1, "{:?}", list_all(&out));
}

/// The receiver dies mid-transfer: the sender notices within the idle timeout, and with
/// `--reconnect-wait 0` fails at once, as before reconnection existed.
#[test]
fn receiver_killed_mid_transfer() {
    let fx = Fixture::new();
    let (sender, mut receiver, _) = mid_transfer_with(&fx, "0");
    receiver.kill();
    let r = receiver.finish();
    assert_eq!(r.code(), None, "killed by a signal\n{r}");
    let s = sender.finish_within(Duration::from_secs(60));
    assert_exits(&[(&s, 7)]);
    assert_eq!(s.event("error").expect("error event")["kind"], "network", "{s}");
    assert!(s.event("reconnecting").is_none(), "{s}");
}

/// A second receiver with the code of a sender that already serves one is told that the
/// sender is busy (exit 7), at once, instead of waiting for a sender that never answers.
#[test]
fn a_second_receiver_is_told_the_sender_is_busy() {
    let fx = Fixture::new();
    let (mut sender, mut receiver, _) = mid_transfer(&fx);
    let other = fx.path("other");
    let second = fx
        .receive([OsStr::new("--yes"), OsStr::new("--out"), other.as_os_str()])
        .finish_within(Duration::from_secs(60));
    assert_exits(&[(&second, 7)]);
    assert_says(&second, &["already serving another receiver", "new code"]);
    assert!(!other.exists() || list_all(&other).is_empty(), "the second receiver wrote nothing");
    assert!(sender.running() && receiver.running(), "the first transfer goes on");
    receiver.kill();
    sender.kill();
}

/// Ctrl-C on the receiver: exit 130 at once; the partial copy is kept (under no final name),
/// and the message says how to resume or remove it; `--discard-partial` removes it.
#[test]
fn receiver_interrupted_keeps_the_partial_copy() {
    let fx = Fixture::new();
    let (_sender, receiver, out) = mid_transfer(&fx);
    run("kill", &["-INT", &receiver.id().to_string()]).expect("SIGINT");
    let r = receiver.finish_within(Duration::from_secs(20));
    assert_exits(&[(&r, 130)]);
    assert_eq!(r.event("error").expect("error event")["kind"], "interrupted", "{r}");
    assert_says(&r, &["kept in", "to resume", "--discard-partial"]);
    assert_eq!(final_names(&out), Vec::<PathBuf>::new(), "nothing under a final name");
    let kept = partial_copies(&out);
    assert_eq!(kept.len(), 1, "{:?}", list_all(&out));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(out.join(&kept[0])).expect("partial").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    let d = fx.spawn(
        "discard",
        &[],
        [
            OsStr::new("receive"),
            OsStr::new("--out"),
            out.as_os_str(),
            OsStr::new("--discard-partial"),
        ],
    );
    let d = d.finish();
    assert_exits(&[(&d, 0)]);
    assert_says(&d, &["Removed"]);
    assert!(list_all(&out).is_empty(), "all gone: {:?}", list_all(&out));
}

/// Ctrl-C on the receiver: the sender hears of it at once (the receiver's own trouble: exit 10,
/// `peer`), not after the idle timeout.
#[test]
fn sender_is_told_promptly_when_the_receiver_is_interrupted() {
    let fx = Fixture::new();
    let (sender, receiver, _) = mid_transfer(&fx);
    run("kill", &["-INT", &receiver.id().to_string()]).expect("SIGINT");
    let r = receiver.finish_within(Duration::from_secs(20));
    assert_exits(&[(&r, 130)]);
    let s = sender.finish_within(Duration::from_secs(60));
    assert_exits(&[(&s, 10)]);
    assert!(s.waited < Duration::from_secs(10), "the sender took {:?}\n{s}", s.waited);
    assert_eq!(s.event("error").expect("error event")["kind"], "peer", "{s}");
    assert_says(&s, &["Ctrl-C"]);
}

/// A tmpfs mount, unmounted on drop (lazily if busy).
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, size: &str) -> Result<Mount, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let path = dir.to_str().ok_or("non-UTF-8 path")?;
        run("mount", &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", path])?;
        Ok(Mount(dir.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let path = self.0.to_string_lossy().into_owned();
        if let Err(e) = run("umount", &[&path]) {
            eprintln!("{e}; unmounting lazily");
            let _ = run("umount", &["-l", &path]);
        }
    }
}

#[test]
fn disk_full() {
    if !privileged("mounting a small tmpfs") {
        return;
    }
    let fx = Fixture::new();
    let small = fx.path("small");
    let _mount = match Mount::tmpfs(&small, "600m") {
        Ok(m) => m,
        Err(e) => return skip_or_fail(&format!("cannot mount a tmpfs: {e}")),
    };
    // The offer fits when it is checked; the disk fills up while it is being written (another
    // program takes the space), as disks do.
    let src = fx.path("src/big.bin");
    std::fs::create_dir_all(src.parent().unwrap()).unwrap();
    std::fs::File::create(&src).and_then(|f| f.set_len(500 << 20)).unwrap();
    let out = small.join("out");
    // A sparse source, sent as the zeros it reads as (`--sparse off`), fills the disk.
    let sender = fx.send(
        ["--compress", "off", "--sparse", "off"]
            .map(OsStr::new)
            .into_iter()
            .chain([src.as_os_str()]),
    );
    let mut receiver = fx.receive([OsStr::new("--yes"), OsStr::new("--out"), out.as_os_str()]);
    receiver.wait_event_where("progress", |e| e["bytes"].as_u64().is_some_and(|b| b > 0));
    let mut filler = std::fs::File::create(small.join("filler")).unwrap();
    let block = vec![1u8; 1 << 20];
    while std::io::Write::write_all(&mut filler, &block).is_ok() {}
    let (s, r) = finish_pair(sender, receiver);
    assert_exits(&[(&r, 9)]);
    assert_says(&r, &["disk full"]);
    assert_eq!(r.event("error").expect("error event")["kind"], "io", "{r}");
    // The sender learns why from the receiver's report: the peer failed, with its reason.
    assert_exits(&[(&s, 10), (&r, 9)]);
    assert_says(&s, &["other side failed", "disk full"]);
    // What fit is kept for when there is room again, under no final name.
    assert_eq!(final_names(&out), Vec::<PathBuf>::new(), "nothing under a final name");
    assert_says(&r, &["--discard-partial"]);
}
