//! End to end through the built binary on loopback: a sender and a receiver process meet by
//! LAN discovery (on a port of their own) and move files; the result is compared byte for byte.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::ffi::OsStr;
use std::os::unix::fs::symlink;
use std::path::Path;

use p2p_copy::internals::code::Code;
use util::*;

/// Sends one file of `size` random bytes and checks the copy and the `done` events.
fn one_file(size: u64) {
    let mut fx = Fixture::new();
    let src = fx.path("src/data.bin");
    random_file(&src, size, &mut fx.rng);
    let out = fx.path("out");
    let (s, r) = fx
        .transfer(&[src.as_os_str()], &[OsStr::new("--yes"), OsStr::new("--out"), out.as_os_str()]);
    assert_exits(&[(&s, 0), (&r, 0)]);
    assert_done(&s, size, 1);
    assert_done(&r, size, 1);
    assert_same_tree(&src, &out.join("data.bin"));
    assert_eq!(list_all(&out), vec![Path::new("data.bin")], "only the file arrived");
}

#[test]
fn empty_file() {
    one_file(0);
}

#[test]
fn one_byte_file() {
    one_file(1);
}

#[test]
fn large_random_file() {
    one_file(200 << 20);
}

/// Text that zstd shrinks several-fold, like a service's log.
fn log_text(lines: usize, rng: &mut XorShift) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..lines {
        let status = [200, 200, 200, 304, 404, 500][rng.range(0, 5) as usize];
        let line = format!(
            "2026-12-01T10:{:02}:{:02}.{:03}Z INFO http request={i} id={:08x} status={status} \
             bytes={} path=/api/v1/items/{}\n",
            i / 60_000 % 60,
            i / 1000 % 60,
            i % 1000,
            rng.next_u64() as u32,
            rng.range(0, 99_999),
            rng.range(0, 4999)
        );
        out.extend_from_slice(line.as_bytes());
    }
    out
}

/// Every compression mode delivers identical bytes; `on` shrinks the logs on the wire (both
/// sides report it in `wire_bytes`), `auto` at least the small log, `off` sends every byte as
/// it is.
#[test]
fn compression_modes_deliver_identical_bytes() {
    let mut fx = Fixture::new();
    let tree = fx.path("src/tree");
    let logs = log_text(60_000, &mut fx.rng);
    write_file(&tree.join("service.log"), &logs);
    write_file(&tree.join("small.log"), &logs[..3000]);
    random_file(&tree.join("photo.jpg"), 3 << 20, &mut fx.rng);
    // Random data, then logs: the chunks after the first change nature.
    let mut mixed = std::fs::read(tree.join("photo.jpg")).unwrap();
    mixed.extend_from_slice(&logs);
    write_file(&tree.join("mixed.bin"), &mixed);
    let total: u64 =
        list_all(&tree).iter().map(|p| std::fs::metadata(tree.join(p)).unwrap().len()).sum();
    let random = 2 * (3u64 << 20);
    for mode in ["auto", "on", "off"] {
        let out = fx.path(&format!("out-{mode}"));
        fx.code = fresh_code();
        let (s, r) = fx.transfer(
            &[OsStr::new("--compress"), OsStr::new(mode), tree.as_os_str()],
            &[OsStr::new("--yes"), OsStr::new("--out"), out.as_os_str()],
        );
        assert_exits(&[(&s, 0), (&r, 0)]);
        assert_same_tree(&tree, &out.join("tree"));
        let wire = |o: &Outcome| assert_done(o, total, 4)["wire_bytes"].as_u64().unwrap();
        let (sent, received) = (wire(&s), wire(&r));
        assert_eq!(sent, received, "{mode}: both sides count the same bytes");
        match mode {
            "off" => assert_eq!(sent, total, "off sends the bytes as they are"),
            "on" => assert!(
                sent < random + (total - random) / 3,
                "on: the logs shrink ({sent} of {total} bytes on the wire)"
            ),
            // Large chunks go as they are where that is faster (this loopback, whose CPU is
            // the limit, may well be such a place: see the compress module); the small log
            // is compressed either way.
            _ => assert!(sent < total, "auto: something shrinks ({sent} of {total} bytes)"),
        }
    }
}

/// A tree with every kind of entry, names that need care, 1,000 small files, modes and
/// mtimes, sent together with a plain file as two top-level paths.
#[test]
fn directory_tree_and_file_together() {
    let mut fx = Fixture::new();
    let tree = fx.path("src/tree");
    let lone = fx.path("src/lone.txt");
    let rng = &mut fx.rng;

    std::fs::create_dir_all(tree.join("empty")).expect("mkdir");
    write_file(&tree.join("résumé.txt"), "naïve café\n".as_bytes());
    write_file(&tree.join("emoji-🎉.txt"), "🎉".as_bytes());
    random_file(&tree.join("日本語/ファイル.bin"), 70_000, rng);
    random_file(&tree.join("a/b/c/deep.bin"), 3 << 20, rng);
    write_file(&tree.join("a/script.sh"), b"#!/bin/sh\necho hi\n");
    set_mode(&tree.join("a/script.sh"), 0o755);
    write_file(&tree.join("a/secret.txt"), b"only me\n");
    set_mode(&tree.join("a/secret.txt"), 0o600);
    symlink("b/c/deep.bin", tree.join("a/link-to-deep")).expect("symlink");
    symlink("../résumé.txt", tree.join("日本語/up-link")).expect("symlink");
    let mut small_bytes = 0;
    for i in 0..1000u64 {
        let size = rng.range(1024, 8192);
        small_bytes += size;
        let path = tree.join(format!("many/{:02}/f{i:04}.dat", i % 10));
        random_file(&path, size, rng);
        set_mtime(&path, 1_600_000_000 + i * 3_600);
    }
    for (i, f) in
        ["résumé.txt", "emoji-🎉.txt", "日本語/ファイル.bin", "a/b/c/deep.bin"].iter().enumerate()
    {
        set_mtime(&tree.join(f), 1_500_000_000 + i as u64);
    }
    random_file(&lone, 12_345, rng);
    set_mode(&lone, 0o640);
    set_mtime(&lone, 1_234_567_890);
    // Directories last (filling them changed their mtimes), deepest first.
    set_mode(&tree.join("a/b"), 0o700);
    for i in 0..10 {
        set_mode(&tree.join(format!("many/{i:02}")), 0o700);
    }
    set_mode(&tree, 0o750);
    let mut dirs: Vec<_> = list_all(&tree)
        .into_iter()
        .filter(|p| tree.join(p).is_dir() && !tree.join(p).is_symlink())
        .collect();
    dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, d) in dirs.iter().enumerate() {
        set_mtime(&tree.join(d), 1_400_000_000 + i as u64 * 60);
    }
    set_mtime(&tree, 1_300_000_000);

    let out = fx.path("out");
    let (s, r) = fx.transfer(
        &[tree.as_os_str(), lone.as_os_str()],
        &[OsStr::new("--yes"), OsStr::new("--out"), out.as_os_str()],
    );
    assert_exits(&[(&s, 0), (&r, 0)]);
    let sizes: Vec<u64> = list_all(&tree)
        .iter()
        .map(|p| std::fs::symlink_metadata(tree.join(p)).expect("stat"))
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .collect();
    let bytes = sizes.iter().sum::<u64>() + 12_345;
    assert!(bytes > small_bytes + (3 << 20), "the tree holds what was written");
    // 1000 small files, résumé, emoji, ファイル, deep, script, secret, lone.
    let files = 1000 + 7;
    assert_eq!(sizes.len() + 1, files as usize);
    assert_done(&s, bytes, files);
    let done = assert_done(&r, bytes, files);
    let offer = r.event("offer").expect("offer event");
    assert_eq!(offer["names"], serde_json::json!(["tree", "lone.txt"]), "{r}");
    assert_eq!(offer["symlinks"], 2, "{r}");

    let compared =
        assert_same_tree(&tree, &out.join("tree")) + assert_same_tree(&lone, &out.join("lone.txt"));
    assert_eq!(done["entries"], compared as u64, "entries counted = entries compared\n{r}");
    assert_eq!(std::fs::read_dir(&out).expect("out").count(), 2, "only the two names in --out");
    assert!(part_files(&out).is_empty(), "leftover temporary files: {:?}", part_files(&out));
}

#[test]
fn code_command_prints_a_valid_code() {
    let fx = Fixture::new();
    let o = fx.spawn("code", &[], ["code"]).finish();
    assert_exits(&[(&o, 0)]);
    let printed = o.stdout.trim();
    let code = Code::parse(printed).unwrap_or_else(|e| panic!("{printed:?} does not parse: {e}"));
    assert_eq!(code.to_string(), printed, "printed in canonical form");
    assert_eq!(code.word_count(), 3);
    Code::parse_chosen(printed).expect("strong enough to be chosen with --code");
    let more = fx.spawn("code", &[], ["code", "--code-words", "5"]).finish();
    assert_exits(&[(&more, 0)]);
    assert_eq!(Code::parse(more.stdout.trim()).expect("parses").word_count(), 5);
}

#[test]
fn weak_custom_code_is_refused() {
    let fx = Fixture::new();
    let file = fx.path("f.txt");
    write_file(&file, b"x");
    for weak in ["7-abc", "12-password", "3-aaaa-bbbb"] {
        let o = fx
            .spawn(
                "sender",
                &[],
                [OsStr::new("send"), OsStr::new("--code"), OsStr::new(weak), file.as_os_str()],
            )
            .finish();
        assert_exits(&[(&o, 2)]);
        assert_says(&o, &["too easy to guess", "p2p-copy code"]);
        assert!(!o.stderr.contains("Code:"), "no code shown for a refused one\n{o}");
    }
}

/// A path that does not exist is refused before a code is shown; a tree that cannot be sent
/// (found while it is scanned, which runs while the peers meet) ends the sender with the
/// reason, with no receiver in sight.
#[test]
fn unsendable_paths_are_usage_errors() {
    use std::os::unix::ffi::OsStrExt;
    let fx = Fixture::new();
    let missing = fx.path("nope");
    let o = fx.spawn("sender", &[], [OsStr::new("send"), missing.as_os_str()]).finish();
    assert_exits(&[(&o, 2)]);
    assert_says(&o, &["does not exist"]);
    assert!(!o.stderr.contains("Code:"), "no code for nothing to send\n{o}");

    // Found deep inside the tree, after the code was shown: a directory below the depth
    // any receiver takes (a name that is not UTF-8 beside it is fine).
    let tree = fx.path("tree");
    write_file(&tree.join("a/b/ok.txt"), b"x");
    std::os::unix::fs::symlink(OsStr::from_bytes(b"fine\xff"), tree.join("a/b/link")).unwrap();
    std::fs::create_dir_all(tree.join(vec!["d"; 128].join("/"))).unwrap();
    let o = fx.spawn("sender", &[], [OsStr::new("send"), tree.as_os_str()]).finish();
    assert_exits(&[(&o, 2)]);
    assert_says(&o, &["more than 128 levels deep"]);
}

#[test]
fn receive_without_code_or_terminal_is_a_usage_error() {
    let fx = Fixture::new();
    let out = fx.path("out");
    let o = fx
        .spawn("receiver", &[], [OsStr::new("receive"), OsStr::new("--out"), out.as_os_str()])
        .finish();
    assert_exits(&[(&o, 2)]);
    assert_says(&o, &["no code given", "P2P_COPY_CODE"]);
    assert!(!out.exists(), "nothing created");
}

#[test]
fn receive_without_terminal_or_yes_declines() {
    let mut fx = Fixture::new();
    let src = fx.path("src/doc.bin");
    random_file(&src, 4096, &mut fx.rng);
    let out = fx.path("out");
    let (s, r) = fx.transfer(&[src.as_os_str()], &[OsStr::new("--out"), out.as_os_str()]);
    assert_exits(&[(&s, 4), (&r, 4)]);
    assert_says(&r, &["--yes"]);
    assert_says(&s, &["receiver declined"]);
    assert_eq!(r.event("error").expect("error event")["kind"], "refused", "{r}");
    assert_eq!(s.event("error").expect("error event")["kind"], "refused", "{s}");
    assert!(list_all(&out).is_empty(), "nothing written: {:?}", list_all(&out));
}
