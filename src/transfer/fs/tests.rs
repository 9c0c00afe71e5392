//! Tests of `Dest` and `PartFile` against a real temporary directory.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;

use super::*;

fn rel(s: &str) -> RelPath {
    match RelPath::parse(s) {
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
    let mut part = dest.create_file(&rel(path), overwrite)?;
    part.write_all(data)?;
    part.commit(0o644, None)
}

/// Every entry below `dir`, relative, sorted; symlinks are listed, not followed.
fn list(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
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
    let mut part = f.dest.create_file(&rel("top/a/b/data.bin"), false).unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
    for chunk in data.chunks(1 << 20) {
        part.write_all(chunk).unwrap();
    }
    assert_eq!(part.written(), data.len() as u64);
    part.commit(0o640, Some(mtime(1_600_000_000))).unwrap();

    let path = f.dest.root().join("top/a/b/data.bin");
    assert_eq!(fs::read(&path).unwrap(), data);
    assert_eq!(mode_of(&path), 0o640);
    assert_eq!(mtime_of(&path), mtime(1_600_000_000));
    assert_eq!(list(f.dest.root()), ["top", "top/a", "top/a/b", "top/a/b/data.bin"]);
}

#[test]
fn the_temporary_file_is_hidden_beside_the_final_name() {
    let f = fixture();
    let part = f.dest.create_file(&rel("d/x.txt"), false).unwrap();
    let names = list(&f.dest.root().join("d"));
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].starts_with(".x.txt.p2p-copy-") && names[0].ends_with(".part"));
    let tmp = f.dest.root().join("d").join(&names[0]);
    assert_eq!(mode_of(&tmp), 0o600);
    assert!(!f.dest.root().join("d/x.txt").exists());
    drop(part);
}

#[test]
fn drop_without_commit_leaves_nothing() {
    let f = fixture();
    let mut part = f.dest.create_file(&rel("dir/x.txt"), false).unwrap();
    part.write_all(b"half").unwrap();
    drop(part);
    assert_eq!(list(f.dest.root()), ["dir"]);

    let part = f.dest.create_file(&rel("y.txt"), false).unwrap();
    part.discard().unwrap();
    assert_eq!(list(f.dest.root()), ["dir"]);
}

#[test]
fn existing_final_name_without_overwrite_is_refused() {
    let f = fixture();
    let path = f.dest.root().join("x.txt");
    fs::write(&path, b"old").unwrap();
    let err = f.dest.create_file(&rel("x.txt"), false).unwrap_err();
    assert!(matches!(err, FsError::Exists { ref path } if path.ends_with("x.txt")), "{err:?}");
    assert!(err.to_string().contains("--overwrite"), "{err}");
    assert_eq!(fs::read(&path).unwrap(), b"old");
    assert_eq!(list(f.dest.root()), ["x.txt"]);
}

#[test]
fn final_name_appearing_during_the_transfer_is_not_replaced() {
    let f = fixture();
    let mut part = f.dest.create_file(&rel("x.txt"), false).unwrap();
    part.write_all(b"new").unwrap();
    let path = f.dest.root().join("x.txt");
    fs::write(&path, b"old").unwrap();
    let err = part.commit(0o644, None).unwrap_err();
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
        let err = f.dest.create_file(&rel("d/sub"), overwrite).unwrap_err();
        assert!(matches!(err, FsError::Exists { .. } | FsError::Unsafe { .. }), "{err:?}");
    }
    // A directory appearing during the transfer is not replaced either.
    let part = f.dest.create_file(&rel("d/late"), true).unwrap();
    fs::create_dir(f.dest.root().join("d/late")).unwrap();
    let err = part.commit(0o644, None).unwrap_err();
    assert!(matches!(err, FsError::Unsafe { .. }), "{err:?}");
    assert_eq!(list(f.dest.root()), ["d", "d/late", "d/sub", "d/sub/keep"]);
}

#[test]
fn a_parent_symlink_out_of_the_destination_is_refused() {
    let f = fixture();
    let outside_mode = mode_of(&f.outside);
    symlink(&f.outside, f.dest.root().join("link")).unwrap();
    let err = f.dest.create_file(&rel("link/evil.txt"), true).unwrap_err();
    match &err {
        FsError::Unsafe { path, reason } => {
            assert_eq!(path, "link/evil.txt");
            assert!(reason.contains("link is a symbolic link"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(f.dest.create_dir(&rel("link/sub")).is_err());
    assert!(f.dest.symlink(&rel("link/l"), "x", true).is_err());
    assert!(f.dest.create_file(&rel("link/a/b/c"), true).is_err());
    assert!(f.dest.finish_dir(&rel("link"), 0o777, None).is_err());
    assert!(list(&f.outside).is_empty());
    assert_eq!(mode_of(&f.outside), outside_mode);
}

#[test]
fn a_parent_symlink_inside_the_destination_is_refused_too() {
    let f = fixture();
    f.dest.create_dir(&rel("real")).unwrap();
    symlink("real", f.dest.root().join("alias")).unwrap();
    let err = f.dest.create_file(&rel("alias/x"), false).unwrap_err();
    assert!(matches!(err, FsError::Unsafe { .. }), "{err:?}");
    assert_eq!(list(f.dest.root()), ["alias", "real"]);
}

#[test]
fn a_file_as_parent_is_refused() {
    let f = fixture();
    write_file(&f.dest, "f", b"x", false).unwrap();
    let err = f.dest.create_file(&rel("f/x"), true).unwrap_err();
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

    let err = f.dest.create_file(&rel("x.txt"), false).unwrap_err();
    assert!(matches!(err, FsError::Exists { .. }), "{err:?}");

    write_file(&f.dest, "x.txt", b"new", true).unwrap();
    assert!(fs::symlink_metadata(&link).unwrap().file_type().is_file());
    assert_eq!(fs::read(&link).unwrap(), b"new");
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
}

#[test]
fn symlinks_are_created_verbatim_and_never_followed() {
    let f = fixture();
    f.dest.symlink(&rel("d/up"), "../../outside", false).unwrap();
    let link = f.dest.root().join("d/up");
    assert_eq!(fs::read_link(&link).unwrap(), PathBuf::from("../../outside"));
    // Writing below the new link is refused.
    assert!(matches!(f.dest.create_file(&rel("d/up/x"), true), Err(FsError::Unsafe { .. })));
    assert!(list(&f.outside).is_empty());

    // Existing name: refused without overwrite, replaced with it; directories never.
    assert!(matches!(
        f.dest.symlink(&rel("d/up"), "elsewhere", false),
        Err(FsError::Exists { .. })
    ));
    f.dest.symlink(&rel("d/up"), "elsewhere", true).unwrap();
    assert_eq!(fs::read_link(&link).unwrap(), PathBuf::from("elsewhere"));
    write_file(&f.dest, "d/file", b"x", false).unwrap();
    f.dest.symlink(&rel("d/file"), "up", true).unwrap();
    assert_eq!(fs::read_link(f.dest.root().join("d/file")).unwrap(), PathBuf::from("up"));
    f.dest.create_dir(&rel("d/dir")).unwrap();
    assert!(matches!(f.dest.symlink(&rel("d/dir"), "x", true), Err(FsError::Unsafe { .. })));
    assert!(f.dest.symlink(&rel("d/bad"), "", true).is_err());
    assert!(f.dest.symlink(&rel("d/bad"), "a\0b", true).is_err());
    assert_eq!(list(f.dest.root()), ["d", "d/dir", "d/file", "d/up"]);
}

#[test]
fn existing_detects_files_dirs_and_dangling_symlinks() {
    let f = fixture();
    let root = f.dest.root();
    fs::write(root.join("file"), b"").unwrap();
    fs::create_dir(root.join("dir")).unwrap();
    symlink("nowhere", root.join("dangling")).unwrap();
    let found = f.dest.existing(&["file", "dir", "dangling", "absent", "..", "/etc", ""]);
    assert_eq!(found, ["file", "dir", "dangling"]);
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
    f.dest.finish_dir(&rel("a/b"), 0o750, Some(mtime(1_500_000_000))).unwrap();
    f.dest.finish_dir(&rel("a"), 0o700, None).unwrap();
    let b = f.dest.root().join("a/b");
    assert_eq!(mode_of(&b), 0o750);
    assert_eq!(mtime_of(&b), mtime(1_500_000_000));
    assert_eq!(mode_of(&f.dest.root().join("a")), 0o700);

    assert!(f.dest.finish_dir(&rel("a/missing"), 0o755, None).is_err());
    assert!(matches!(f.dest.finish_dir(&rel("a/b/x"), 0o755, None), Err(FsError::Unsafe { .. })));
}

#[test]
fn setuid_and_setgid_bits_are_dropped() {
    let f = fixture();
    let mut part = f.dest.create_file(&rel("d/tool"), false).unwrap();
    part.write_all(b"#!/bin/sh\n").unwrap();
    part.commit(0o106755, None).unwrap();
    assert_eq!(mode_of(&f.dest.root().join("d/tool")), 0o755);

    f.dest.finish_dir(&rel("d"), 0o2775, None).unwrap();
    assert_eq!(mode_of(&f.dest.root().join("d")), 0o775);
}

#[test]
fn long_names_get_a_temporary_name_that_fits() {
    let f = fixture();
    let name = "n".repeat(MAX_COMPONENT_LEN);
    write_file(&f.dest, &name, b"x", false).unwrap();
    assert_eq!(list(f.dest.root()), [name]);
}

/// Finished files stay under their temporary names until `commit_all` puts the batch in place
/// with their modes and mtimes; a name that appeared meanwhile stops the batch there, and the
/// files after it are removed, not left behind as temporary files.
#[test]
fn finished_files_go_in_place_together() {
    let f = fixture();
    let finish = |path: &str, data: &[u8]| {
        let mut part = f.dest.create_file(&rel(path), false).unwrap();
        part.write_all(data).unwrap();
        part.finish(0o640, Some(mtime(1_600_000_000))).unwrap()
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
    let mut part = f.dest.create_file(&rel("w"), false).unwrap();
    part.write_all(b"w").unwrap();
    let alone = part.finish(0o200, None).unwrap();
    let tmp: Vec<_> = fs::read_dir(f.dest.root()).unwrap().map(|e| e.unwrap().path()).collect();
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
