//! Tests of `Dest` and `PartFile` against a real temporary directory.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;

use super::*;

fn rel(s: impl AsRef<[u8]> + std::fmt::Debug) -> RelPath {
    match RelPath::parse(&s) {
        Ok(p) => p,
        Err(e) => panic!("{s:?}: {e}"),
    }
}

/// A destination `dest/` and a sibling `outside/` in one temporary directory.
struct Fixture {
    _tmp: TempDir,
    dest: Dest,
    outside: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = TempDir::new().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let dest = Dest::open(&tmp.path().join("dest")).unwrap();
    Fixture { _tmp: tmp, dest, outside }
}

fn mtime(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn write_file(dest: &Dest, path: &str, data: &[u8], overwrite: bool) -> Result<(), FsError> {
    let mut part = dest.create_file(&rel(path), 0, None, overwrite)?;
    part.write_all(data)?;
    part.commit(0o644, None, [0; 32])
}

/// Every entry below `dir`, relative, sorted; symlinks are listed, not followed. The state
/// directory (partial files) is left out: see [`partials`].
fn list(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if path == base.join(STATE_DIR) {
                continue;
            }
            out.push(path.strip_prefix(base).unwrap().display().to_string());
            if entry.file_type().unwrap().is_dir() {
                walk(base, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

fn mtime_of(path: &Path) -> SystemTime {
    fs::symlink_metadata(path).unwrap().modified().unwrap()
}

#[test]
fn open_creates_the_root_and_refuses_a_file() {
    let tmp = TempDir::new().unwrap();
    let root = tmp.path().join("a/b/c");
    let dest = Dest::open(&root).unwrap();
    assert!(root.is_dir());
    assert_eq!(dest.root(), fs::canonicalize(&root).unwrap());

    let file = tmp.path().join("file");
    fs::write(&file, b"x").unwrap();
    let err = Dest::open(&file).unwrap_err();
    assert!(err.to_string().contains("not a directory"), "{err}");
}

#[test]
fn nested_file_is_committed_with_content_mode_and_mtime() {
    let f = fixture();
    let mut part = f.dest.create_file(&rel("top/a/b/data.bin"), 0, None, false).unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
    for chunk in data.chunks(1 << 20) {
        part.write_all(chunk).unwrap();
    }
    assert_eq!(part.written(), data.len() as u64);
    part.commit(0o640, Some(mtime(1_600_000_000)), [0; 32]).unwrap();

    let path = f.dest.root().join("top/a/b/data.bin");
    assert_eq!(fs::read(&path).unwrap(), data);
    assert_eq!(mode_of(&path), 0o640);
    assert_eq!(mtime_of(&path), mtime(1_600_000_000));
    assert_eq!(list(f.dest.root()), ["top", "top/a", "top/a/b", "top/a/b/data.bin"]);
}

/// The files in the state directory.
fn partials(dest: &Dest) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(dest.state().path()) {
        Ok(dir) => dir.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

#[test]
fn the_partial_file_is_private_in_the_state_directory() {
    let f = fixture();
    let part = f.dest.create_file(&rel("d/x.txt"), 4, None, false).unwrap();
    assert_eq!(list(f.dest.root()), ["d"], "nothing under a final name");
    let names = partials(&f.dest);
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].ends_with(".part") && names[0].len() == 32 + 5, "{names:?}");
    assert_eq!(mode_of(&f.dest.state().path().join(&names[0])), 0o600);
    assert_eq!(mode_of(f.dest.state().path()), 0o700);
    drop(part);
}

/// A file given up (a failed or stopped transfer) keeps its partial copy for the next
/// transfer, under no final name; one discarded (it failed verification) leaves nothing; a
/// committed one leaves nothing but itself.
#[test]
fn a_partial_copy_stays_until_it_is_committed_or_discarded() {
    let f = fixture();
    let mut part = f.dest.create_file(&rel("dir/x.txt"), 8, None, false).unwrap();
    part.write_all(b"half").unwrap();
    drop(part);
    assert_eq!(list(f.dest.root()), ["dir"]);
    assert_eq!(partials(&f.dest).len(), 1);

    let part = f.dest.create_file(&rel("y.txt"), 0, None, false).unwrap();
    part.discard().unwrap();
    assert_eq!(partials(&f.dest).len(), 1, "y's went, x's stays");

    write_file(&f.dest, "z.txt", b"z", false).unwrap();
    assert_eq!(partials(&f.dest).len(), 1);
    f.dest.end();
    assert!(f.dest.state().exists(), "x's partial copy keeps the state directory");
}

#[test]
fn existing_final_name_without_overwrite_is_refused() {
    let f = fixture();
    let path = f.dest.root().join("x.txt");
    fs::write(&path, b"old").unwrap();
    let err = f.dest.create_file(&rel("x.txt"), 0, None, false).unwrap_err();
    assert!(matches!(err, FsError::Exists { ref path } if path.ends_with("x.txt")), "{err:?}");
    assert!(err.to_string().contains("--overwrite"), "{err}");
    assert_eq!(fs::read(&path).unwrap(), b"old");
    assert_eq!(list(f.dest.root()), ["x.txt"]);
}

#[test]
fn final_name_appearing_during_the_transfer_is_not_replaced() {
    let f = fixture();
    let mut part = f.dest.create_file(&rel("x.txt"), 0, None, false).unwrap();
    part.write_all(b"new").unwrap();
    let path = f.dest.root().join("x.txt");
    fs::write(&path, b"old").unwrap();
    let err = part.commit(0o644, None, [0; 32]).unwrap_err();
    assert!(matches!(err, FsError::Exists { .. }), "{err:?}");
    assert_eq!(fs::read(&path).unwrap(), b"old");
    assert_eq!(list(f.dest.root()), ["x.txt"]);
}

#[test]
fn existing_final_name_with_overwrite_is_replaced() {
    let f = fixture();
    let path = f.dest.root().join("x.txt");
    fs::write(&path, b"old content").unwrap();
    write_file(&f.dest, "x.txt", b"new", true).unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"new");
    assert_eq!(list(f.dest.root()), ["x.txt"]);
}

#[test]
fn a_directory_is_never_replaced_by_a_file() {
    let f = fixture();
    f.dest.create_dir(&rel("d/sub")).unwrap();
    fs::write(f.dest.root().join("d/sub/keep"), b"k").unwrap();
    for overwrite in [false, true] {
        let err = f.dest.create_file(&rel("d/sub"), 0, None, overwrite).unwrap_err();
        assert!(matches!(err, FsError::Exists { .. } | FsError::Unsafe { .. }), "{err:?}");
    }
    // A directory appearing during the transfer is not replaced either.
    let part = f.dest.create_file(&rel("d/late"), 0, None, true).unwrap();
    fs::create_dir(f.dest.root().join("d/late")).unwrap();
    let err = part.commit(0o644, None, [0; 32]).unwrap_err();
    assert!(matches!(err, FsError::Unsafe { .. }), "{err:?}");
    assert_eq!(list(f.dest.root()), ["d", "d/late", "d/sub", "d/sub/keep"]);
}

#[test]
fn a_parent_symlink_out_of_the_destination_is_refused() {
    let f = fixture();
    let outside_mode = mode_of(&f.outside);
    symlink(&f.outside, f.dest.root().join("link")).unwrap();
    let err = f.dest.create_file(&rel("link/evil.txt"), 0, None, true).unwrap_err();
    match &err {
        FsError::Unsafe { path, reason } => {
            assert_eq!(path, "link/evil.txt");
            assert!(reason.contains("link is a symbolic link"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(f.dest.create_dir(&rel("link/sub")).is_err());
    assert!(f.dest.symlink(&rel("link/l"), b"x", true).is_err());
    assert!(f.dest.create_file(&rel("link/a/b/c"), 0, None, true).is_err());
    assert!(f.dest.finish_dir(&rel("link"), Some(0o777), None).is_err());
    assert!(list(&f.outside).is_empty());
    assert_eq!(mode_of(&f.outside), outside_mode);
}

/// A local process that swaps a checked parent for a link while a file is being received
/// (rule 2 against races): the file still lands in the directory that was checked, wherever
/// it went, and nothing reaches the link's target.
#[test]
fn a_parent_swapped_for_a_link_mid_file_cannot_redirect_it() {
    let f = fixture();
    let root = f.dest.root().to_path_buf();
    let mut part = f.dest.create_file(&rel("d/f.txt"), 5, None, false).unwrap();
    part.write_all(b"hello").unwrap();
    fs::rename(root.join("d"), root.join("moved")).unwrap();
    symlink(&f.outside, root.join("d")).unwrap();
    part.commit(0o644, None, [0; 32]).unwrap();
    assert_eq!(fs::read(root.join("moved/f.txt")).unwrap(), b"hello");
    // What follows in that directory goes where the handle is, never through the link.
    write_file(&f.dest, "d/g.txt", b"more", false).unwrap();
    f.dest.symlink(&rel("d/l"), b"target", false).unwrap();
    f.dest.create_dir(&rel("d/sub")).unwrap();
    f.dest.finish_dir(&rel("d/sub"), Some(0o700), None).unwrap();
    assert!(list(&f.outside).is_empty(), "{:?}", list(&f.outside));
    assert_eq!(list(&root.join("moved")), ["f.txt", "g.txt", "l", "sub"]);
}

/// The same swap with no handle kept (a fresh destination): the walk refuses the link.
#[test]
fn a_parent_swapped_for_a_link_before_the_walk_is_refused() {
    let f = fixture();
    let root = f.dest.root().to_path_buf();
    f.dest.create_dir(&rel("d")).unwrap();
    fs::rename(root.join("d"), root.join("moved")).unwrap();
    symlink(&f.outside, root.join("d")).unwrap();
    let fresh = Dest::open(&root).unwrap();
    let err = fresh.create_file(&rel("d/f.txt"), 0, None, true).unwrap_err();
    assert!(matches!(err, FsError::Unsafe { .. }), "{err:?}");
    assert!(fresh.finish_dir(&rel("d"), Some(0o777), None).is_err());
    assert!(list(&f.outside).is_empty());
}

#[test]
fn a_parent_symlink_inside_the_destination_is_refused_too() {
    let f = fixture();
    f.dest.create_dir(&rel("real")).unwrap();
    symlink("real", f.dest.root().join("alias")).unwrap();
    let err = f.dest.create_file(&rel("alias/x"), 0, None, false).unwrap_err();
    assert!(matches!(err, FsError::Unsafe { .. }), "{err:?}");
    assert_eq!(list(f.dest.root()), ["alias", "real"]);
}

#[test]
fn a_file_as_parent_is_refused() {
    let f = fixture();
    write_file(&f.dest, "f", b"x", false).unwrap();
    let err = f.dest.create_file(&rel("f/x"), 0, None, true).unwrap_err();
    assert!(
        matches!(err, FsError::Unsafe { ref reason, .. } if reason.contains("not a directory")),
        "{err:?}"
    );
    assert!(matches!(f.dest.create_dir(&rel("f")), Err(FsError::Unsafe { .. })));
}

#[test]
fn a_symlink_final_name_is_replaced_not_written_through() {
    let f = fixture();
    let victim = f.outside.join("victim");
    fs::write(&victim, b"precious").unwrap();
    let link = f.dest.root().join("x.txt");
    symlink(&victim, &link).unwrap();

    let err = f.dest.create_file(&rel("x.txt"), 0, None, false).unwrap_err();
    assert!(matches!(err, FsError::Exists { .. }), "{err:?}");

    write_file(&f.dest, "x.txt", b"new", true).unwrap();
    assert!(fs::symlink_metadata(&link).unwrap().file_type().is_file());
    assert_eq!(fs::read(&link).unwrap(), b"new");
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
}

#[test]
fn symlinks_are_created_verbatim_and_never_followed() {
    let f = fixture();
    f.dest.symlink(&rel("d/up"), b"../../outside", false).unwrap();
    let link = f.dest.root().join("d/up");
    assert_eq!(fs::read_link(&link).unwrap(), PathBuf::from("../../outside"));
    // Writing below the new link is refused.
    assert!(matches!(
        f.dest.create_file(&rel("d/up/x"), 0, None, true),
        Err(FsError::Unsafe { .. })
    ));
    assert!(list(&f.outside).is_empty());

    // Existing name: refused without overwrite, replaced with it; directories never.
    assert!(matches!(
        f.dest.symlink(&rel("d/up"), b"elsewhere", false),
        Err(FsError::Exists { .. })
    ));
    f.dest.symlink(&rel("d/up"), b"elsewhere", true).unwrap();
    assert_eq!(fs::read_link(&link).unwrap(), PathBuf::from("elsewhere"));
    write_file(&f.dest, "d/file", b"x", false).unwrap();
    f.dest.symlink(&rel("d/file"), b"up", true).unwrap();
    assert_eq!(fs::read_link(f.dest.root().join("d/file")).unwrap(), PathBuf::from("up"));
    f.dest.create_dir(&rel("d/dir")).unwrap();
    assert!(matches!(f.dest.symlink(&rel("d/dir"), b"x", true), Err(FsError::Unsafe { .. })));
    assert!(f.dest.symlink(&rel("d/bad"), b"", true).is_err());
    assert!(f.dest.symlink(&rel("d/bad"), b"a\0b", true).is_err());
    assert_eq!(list(f.dest.root()), ["d", "d/dir", "d/file", "d/up"]);
}

/// Hard links are made through the parents' handles, to regular files only: never to a
/// symlink (which would otherwise be linked, or followed out of the destination) or a
/// directory; an existing name is a conflict unless `overwrite`, and a directory is never
/// replaced.
#[test]
fn hard_links_join_regular_files_only() {
    use std::os::unix::fs::MetadataExt;
    let f = fixture();
    write_file(&f.dest, "t/a", b"same", false).unwrap();
    f.dest.hard_link(&rel("t/a"), &rel("t/sub/b"), false).unwrap();
    let root = f.dest.root();
    let (a, b) =
        (fs::metadata(root.join("t/a")).unwrap(), fs::metadata(root.join("t/sub/b")).unwrap());
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
    assert!(f.dest.same_file(&rel("t/a"), &rel("t/sub/b")).unwrap());
    // Already this file: nothing to do, even without overwrite.
    f.dest.hard_link(&rel("t/a"), &rel("t/sub/b"), false).unwrap();

    // A symlink as target, inside or pointing out of the destination, and a directory or
    // nothing at all, are refused.
    let secret = f.outside.join("secret");
    fs::write(&secret, b"private").unwrap();
    symlink(&secret, root.join("t/out")).unwrap();
    symlink("a", root.join("t/in")).unwrap();
    f.dest.create_dir(&rel("t/dir")).unwrap();
    for target in ["t/out", "t/in", "t/dir", "t/none", "t/out/x"] {
        let err = f.dest.hard_link(&rel(target), &rel("t/c"), true).unwrap_err();
        assert!(matches!(err, FsError::LinkTarget { .. }), "{target}: {err:?}");
    }
    assert_eq!(fs::metadata(&secret).unwrap().nlink(), 1);
    assert!(fs::symlink_metadata(root.join("t/c")).is_err());

    // An existing other file: a conflict, or replaced with overwrite; a directory never.
    write_file(&f.dest, "t/c", b"other", false).unwrap();
    let err = f.dest.hard_link(&rel("t/a"), &rel("t/c"), false).unwrap_err();
    assert!(matches!(err, FsError::Exists { .. }), "{err:?}");
    assert!(!f.dest.same_file(&rel("t/a"), &rel("t/c")).unwrap());
    f.dest.hard_link(&rel("t/a"), &rel("t/c"), true).unwrap();
    assert_eq!(fs::read(root.join("t/c")).unwrap(), b"same");
    assert_eq!(fs::metadata(root.join("t/a")).unwrap().nlink(), 3);
    let err = f.dest.hard_link(&rel("t/a"), &rel("t/dir"), true).unwrap_err();
    assert!(matches!(err, FsError::Unsafe { .. }), "{err:?}");
    // A symlink at the link's name is replaced, not followed.
    symlink(&secret, root.join("t/d")).unwrap();
    f.dest.hard_link(&rel("t/a"), &rel("t/d"), true).unwrap();
    assert!(fs::symlink_metadata(root.join("t/d")).unwrap().is_file());
    assert_eq!(fs::read(&secret).unwrap(), b"private");
    assert_eq!(
        list(root),
        ["t", "t/a", "t/c", "t/d", "t/dir", "t/in", "t/out", "t/sub", "t/sub/b"]
    );
}

#[test]
fn existing_detects_files_dirs_and_dangling_symlinks() {
    let f = fixture();
    let root = f.dest.root();
    fs::write(root.join("file"), b"").unwrap();
    fs::create_dir(root.join("dir")).unwrap();
    symlink("nowhere", root.join("dangling")).unwrap();
    let names = ["file", "dir", "dangling", "absent", "..", "/etc", ""].map(Vec::from);
    let found = f.dest.existing(&names);
    assert_eq!(found, ["file", "dir", "dangling"].map(Vec::from));
}

#[test]
fn create_dir_is_idempotent_for_real_directories() {
    let f = fixture();
    f.dest.create_dir(&rel("a/b/c")).unwrap();
    f.dest.create_dir(&rel("a/b/c")).unwrap();
    f.dest.create_dir(&rel("a")).unwrap();
    assert_eq!(list(f.dest.root()), ["a", "a/b", "a/b/c"]);
}

#[test]
fn finish_dir_sets_mode_and_mtime() {
    let f = fixture();
    f.dest.create_dir(&rel("a/b")).unwrap();
    write_file(&f.dest, "a/b/x", b"x", false).unwrap();
    f.dest.finish_dir(&rel("a/b"), Some(0o750), Some(mtime(1_500_000_000))).unwrap();
    f.dest.finish_dir(&rel("a"), Some(0o700), None).unwrap();
    let b = f.dest.root().join("a/b");
    assert_eq!(mode_of(&b), 0o750);
    assert_eq!(mtime_of(&b), mtime(1_500_000_000));
    assert_eq!(mode_of(&f.dest.root().join("a")), 0o700);

    assert!(f.dest.finish_dir(&rel("a/missing"), Some(0o755), None).is_err());
    assert!(matches!(
        f.dest.finish_dir(&rel("a/b/x"), Some(0o755), None),
        Err(FsError::Unsafe { .. })
    ));
}

#[test]
fn setuid_and_setgid_bits_are_dropped() {
    let f = fixture();
    let mut part = f.dest.create_file(&rel("d/tool"), 0, None, false).unwrap();
    part.write_all(b"#!/bin/sh\n").unwrap();
    part.commit(0o106755, None, [0; 32]).unwrap();
    assert_eq!(mode_of(&f.dest.root().join("d/tool")), 0o755);

    f.dest.finish_dir(&rel("d"), Some(0o2775), None).unwrap();
    assert_eq!(mode_of(&f.dest.root().join("d")), 0o775);
}

#[test]
fn long_names_get_a_temporary_name_that_fits() {
    let f = fixture();
    let name = "n".repeat(MAX_COMPONENT_LEN);
    write_file(&f.dest, &name, b"x", false).unwrap();
    assert_eq!(list(f.dest.root()), [name]);
}

/// Finished files stay under their partial names until `commit_all` puts the batch in place
/// with their modes and mtimes; a name that appeared meanwhile stops the batch there, and the
/// files after it stay partial copies (for a later transfer), never under a final name.
#[test]
fn finished_files_go_in_place_together() {
    let f = fixture();
    let finish = |path: &str, data: &[u8]| {
        let mut part = f.dest.create_file(&rel(path), 0, None, false).unwrap();
        part.write_all(data).unwrap();
        part.finish(0o640, Some(mtime(1_600_000_000)), [0; 32]).unwrap()
    };
    let batch = vec![finish("a", b"1"), finish("d/b", b"22"), finish("d/c", b"333")];
    assert!(!f.dest.root().join("a").exists(), "in place before commit_all");
    let syncer = f.dest.syncer();
    f.dest.commit_all(&syncer, batch).unwrap();
    assert_eq!(list(f.dest.root()), ["a", "d", "d/b", "d/c"]);
    assert_eq!(fs::read(f.dest.root().join("d/c")).unwrap(), b"333");
    let meta = fs::metadata(f.dest.root().join("d/b")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    assert_eq!(meta.modified().unwrap(), mtime(1_600_000_000));

    // A file keeps mode 0o600 until it is durable (it is opened again to be synced, which a
    // mode like 0o200 would forbid to anyone but root); it gets its own mode when put in place.
    let mut part = f.dest.create_file(&rel("w"), 0, None, false).unwrap();
    part.write_all(b"w").unwrap();
    let alone = part.finish(0o200, None, [0; 32]).unwrap();
    let tmp: Vec<_> =
        fs::read_dir(f.dest.state().path()).unwrap().map(|e| e.unwrap().path()).collect();
    let tmp = tmp.iter().find(|p| p.to_string_lossy().ends_with(".part")).expect("temp file");
    assert_eq!(fs::metadata(tmp).unwrap().permissions().mode() & 0o777, 0o600);
    f.dest.commit_all(&syncer, vec![alone]).unwrap();
    let meta = fs::metadata(f.dest.root().join("w")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o200);

    // One file alone is synced by itself; an empty batch does nothing.
    f.dest.commit_all(&syncer, vec![finish("e", b"4")]).unwrap();
    f.dest.commit_all(&syncer, Vec::new()).unwrap();
    assert_eq!(fs::read(f.dest.root().join("e")).unwrap(), b"4");

    let batch = vec![finish("x", b"x"), finish("y", b"new"), finish("z", b"z")];
    fs::write(f.dest.root().join("y"), b"old").unwrap();
    let err = f.dest.commit_all(&syncer, batch).unwrap_err();
    assert!(matches!(err, FsError::Exists { ref path } if path.ends_with("y")), "{err:?}");
    assert_eq!(fs::read(f.dest.root().join("y")).unwrap(), b"old");
    assert_eq!(list(f.dest.root()), ["a", "d", "d/b", "d/c", "e", "w", "x", "y"]);
}

// ---------------------------------------------------------------------------------------------
// Resuming partial copies: every state a kill (or a reboot, or tampering) can leave either
// resumes correctly or falls back to sending the file again.

mod resume {
    use super::*;
    use crate::proto::tree::{prefix_digest, TreeHasher, GROUP};
    use crate::proto::Held;
    use crate::wire::data::Timestamp;

    const MTIME: Option<Timestamp> = Some(Timestamp { secs: 1_650_000_000, nanos: 7 });
    const G: u64 = GROUP;

    fn content(size: u64) -> Vec<u8> {
        (0..size).map(|i| (i.wrapping_mul(0x9E37_79B9) >> 13) as u8).collect()
    }

    /// Receives the first `upto` bytes of `data` as `big.bin` in writes of `piece`, journaling
    /// as a lane does, then stops as a kill would (nothing else runs). With `record_last`
    /// false the kill comes between the last write and its journal record.
    fn receive_prefix(dest: &Dest, data: &[u8], upto: usize, piece: usize, record_last: bool) {
        let size = data.len() as u64;
        let mut part = dest.create_file(&rel("big.bin"), size, MTIME, false).unwrap();
        let mut h = TreeHasher::new().collect_cvs();
        let mut at = 0;
        while at < upto {
            let n = piece.min(upto - at);
            part.write_all(&data[at..at + n]).unwrap();
            h.update(&data[at..at + n]);
            at += n;
            let (_, cvs) = h.take_cvs();
            if at < upto || record_last {
                part.record(&cvs).unwrap();
            }
        }
        drop(part);
    }

    /// What `examine` offers for `big.bin`, checked against the truth: the digest is the one
    /// the sender computes from the real data, and the state continues to the file's hash.
    /// Returns the bytes offered (0 for nothing).
    fn offered(dest: &Dest, data: &[u8]) -> u64 {
        let size = data.len() as u64;
        let Some(r) = dest.examine(&rel("big.bin"), size, MTIME, &|| {}).unwrap() else {
            return 0;
        };
        let offset = r.offset;
        assert!(crate::transfer::prefix::valid_offset(offset, size), "offset {offset}");
        let root = *blake3::hash(data).as_bytes();
        match &r.held {
            Held::Whole(h) => {
                assert_eq!(offset, size);
                assert_eq!(*h, root);
                assert_eq!(r.digest, root);
            }
            Held::Prefix(state) => {
                let mut truth = TreeHasher::new().collect_cvs();
                truth.update(&data[..offset as usize]);
                let (_, cvs) = truth.take_cvs();
                assert_eq!(r.digest, prefix_digest(&cvs), "digest at {offset}");
                let mut state = state.clone();
                state.update(&data[offset as usize..]);
                assert_eq!(state.finalize(), root, "continued from {offset}");
            }
        }
        offset
    }

    fn size() -> u64 {
        SMALL + 5 * G + 100
    }

    #[test]
    fn a_killed_receive_resumes_at_its_last_whole_group() {
        let data = content(size());
        for upto in (0..size() as usize).step_by(1_300_007).chain([size() as usize]) {
            for record_last in [true, false] {
                let f = fixture();
                receive_prefix(&f.dest, &data, upto, 300_000, record_last);
                let want = (upto as u64 / G).min((size() - 1) / G) * G;
                let got = offered(&f.dest, &data);
                if record_last {
                    assert_eq!(got, want, "cut at {upto}");
                } else {
                    // The last write's groups were never journaled: at most one is lost.
                    assert!(got + G >= want && got <= want, "cut at {upto}, unrecorded: {got}");
                }
            }
        }
    }

    /// A kill between a write and its record (the common state after kill -9: the write
    /// changed the ctime, its record never came) keeps the journal trusted in the same boot,
    /// because the ctime changed right when the write was announced. A change made later
    /// (between runs) is not ours: the journal is checked against the data.
    #[test]
    fn a_write_cut_before_its_record_keeps_the_journal_trusted() {
        let data = content(size());
        let f = fixture();
        receive_prefix(&f.dest, &data, 9 * G as usize + 5, 1 << 20, false);
        let id = super::state::partial_id(b"big.bin", size(), MTIME);
        let part = f.dest.state().path().join(format!("{id}.part"));
        assert_eq!(fs::metadata(&part).unwrap().len(), 9 * G + 5, "the unrecorded write is there");
        let r = f.dest.examine(&rel("big.bin"), size(), MTIME, &|| {}).unwrap().unwrap();
        assert_eq!(r.offset, 9 * G, "the groups journaled before the cut write");
        drop(r);
        // Changed later, in the prefix: checked against the data, nothing before the damage.
        std::thread::sleep(Duration::from_millis(120));
        let file = fs::OpenOptions::new().write(true).open(&part).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &[data[G as usize + 10] ^ 1], G + 10)
            .unwrap();
        assert_eq!(offered(&f.dest, &data), G, "only group 0 precedes the damage");
        // Longer than the announced write would make it: checked as well.
        std::os::unix::fs::FileExt::write_all_at(&file, &[data[G as usize + 10]], G + 10).unwrap();
        file.set_len(9 * G + 5 + (2 << 20)).unwrap();
        assert_eq!(offered(&f.dest, &data), 9 * G, "repaired: every journaled group checks out");
    }

    #[test]
    fn after_a_reboot_the_journal_is_checked_against_the_data() {
        let data = content(size());
        let mut f = fixture();
        receive_prefix(&f.dest, &data, 9 * G as usize + 5, 1 << 20, true);
        f.dest.set_boot([0x42; 16]);
        assert_eq!(offered(&f.dest, &data), 9 * G, "all of it checks out");
        // Data that did not reach the disk (zeros where the journal claims groups): cut there.
        let part = f
            .dest
            .state()
            .path()
            .join(format!("{}.part", super::state::partial_id(b"big.bin", size(), MTIME)));
        let file = fs::OpenOptions::new().write(true).open(&part).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &vec![0; G as usize], 6 * G).unwrap();
        assert_eq!(offered(&f.dest, &data), 6 * G);
    }

    /// A byte changed on disk changes the file's ctime: the journal is checked against the
    /// data and the resume stops before the changed group.
    #[test]
    fn a_tampered_partial_resumes_only_before_the_damage() {
        let data = content(size());
        for at in [0, G / 2, 3 * G + 1, 9 * G - 1] {
            let f = fixture();
            receive_prefix(&f.dest, &data, 10 * G as usize, 700_000, true);
            let id = super::state::partial_id(b"big.bin", size(), MTIME);
            let part = f.dest.state().path().join(format!("{id}.part"));
            std::thread::sleep(Duration::from_millis(15));
            let file = fs::OpenOptions::new().write(true).open(&part).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&file, &[data[at as usize] ^ 1], at).unwrap();
            drop(file);
            assert_eq!(offered(&f.dest, &data), at / G * G, "flip at {at}");
        }
    }

    /// A journal cut at any byte, or one belonging to another file, never yields a wrong
    /// prefix.
    #[test]
    fn a_torn_or_foreign_journal_never_yields_a_wrong_prefix() {
        let data = content(size());
        let f = fixture();
        receive_prefix(&f.dest, &data, 11 * G as usize, 1 << 20, true);
        let id = super::state::partial_id(b"big.bin", size(), MTIME);
        let journal = f.dest.state().path().join(format!("{id}.journal"));
        let whole = fs::read(&journal).unwrap();
        for cut in (0..whole.len()).step_by(37).chain([whole.len() - 1]) {
            fs::write(&journal, &whole[..cut]).unwrap();
            let got = offered(&f.dest, &data);
            assert!(got <= 11 * G, "cut at {cut}: {got}");
        }
        // Another file's journal in its place: not used.
        fs::write(&journal, &whole).unwrap();
        let other = fixture();
        let other_data = content(size() + 1);
        receive_prefix(&other.dest, &other_data, 7 * G as usize, 1 << 20, true);
        let other_id = super::state::partial_id(b"big.bin", size() + 1, MTIME);
        fs::copy(other.dest.state().path().join(format!("{other_id}.journal")), &journal).unwrap();
        assert_eq!(offered(&f.dest, &data), 0);
    }

    /// A file received whole and verified but killed before it went in place is offered whole,
    /// with its hash.
    #[test]
    fn a_finished_file_not_yet_in_place_is_offered_whole() {
        let data = content(size());
        let f = fixture();
        let mut part = f.dest.create_file(&rel("big.bin"), size(), MTIME, false).unwrap();
        let mut h = TreeHasher::new().collect_cvs();
        for piece in data.chunks(1 << 20) {
            part.write_all(piece).unwrap();
            h.update(piece);
            part.record(&h.take_cvs().1).unwrap();
        }
        let finished = part.finish(0o644, None, h.finalize()).unwrap();
        drop(finished);
        assert_eq!(offered(&f.dest, &data), size());
        // A small file is hashed again, whole or in part.
        let small = content(1000);
        let mut part = f.dest.create_file(&rel("s"), 1000, None, false).unwrap();
        part.write_all(&small[..600]).unwrap();
        drop(part);
        let r = f.dest.examine(&rel("s"), 1000, None, &|| {}).unwrap().unwrap();
        assert_eq!((r.offset, r.digest), (600, *blake3::hash(&small[..600]).as_bytes()));
        // While one holds it, another cannot.
        assert!(matches!(f.dest.examine(&rel("s"), 1000, None, &|| {}), Err(FsError::Busy { .. })));
    }

    /// Continuing a partial copy keeps its prefix and its journal in step: after another kill
    /// it resumes further on.
    #[test]
    fn a_resumed_file_journals_on_from_where_it_resumed() {
        let data = content(size());
        let f = fixture();
        receive_prefix(&f.dest, &data, 4 * G as usize + 10, 1 << 20, true);
        let r = f.dest.examine(&rel("big.bin"), size(), MTIME, &|| {}).unwrap().unwrap();
        assert_eq!(r.offset, 4 * G);
        let Held::Prefix(state) = &r.held else { panic!("a prefix") };
        let mut h = state.clone().collect_cvs();
        let mut part = f.dest.resume_file(&rel("big.bin"), r, size(), MTIME, false).unwrap();
        assert_eq!(part.written(), 4 * G);
        let upto = 8 * G as usize + 3;
        for piece in data[4 * G as usize..upto].chunks(500_000) {
            part.write_all(piece).unwrap();
            h.update(piece);
            part.record(&h.take_cvs().1).unwrap();
        }
        drop(part);
        assert_eq!(offered(&f.dest, &data), 8 * G);
    }
}

/// Directories made for an offer, as entries or as a file's parents, never number more than
/// the offer declared; lanes creating the same directory at once count it once.
#[test]
fn directories_made_are_counted_against_the_offer() {
    let fx = fixture();
    fx.dest.begin(&[b"t".to_vec()], 3);
    write_file(&fx.dest, "t/a/f1", b"1", false).unwrap();
    write_file(&fx.dest, "t/a/f2", b"2", false).unwrap();
    fx.dest.create_dir(&rel("t/b")).unwrap();
    let err = write_file(&fx.dest, "t/c/f", b"3", false).unwrap_err();
    assert!(matches!(err, FsError::TooManyDirs { limit: 3 }), "{err:?}");
    assert!(!fx.dest.root().join("t/c").exists());

    let fx = fixture();
    let names: Vec<Vec<u8>> = (0..8).map(|i| format!("d{i}").into()).collect();
    fx.dest.begin(&names, 8);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for name in &names {
                    fx.dest.create_dir(&rel(name)).unwrap();
                }
            });
        }
    });
    assert_eq!(list(fx.dest.root()).len(), 8);
}
