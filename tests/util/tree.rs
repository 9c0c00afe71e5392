//! Tree builders and a byte-for-byte tree comparison.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use super::XorShift;

/// Writes `data` to `path`, creating parents.
pub fn write_file(path: &Path, data: &[u8]) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("create parents");
    }
    fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Writes `size` seeded random bytes to `path` in 1 MiB blocks.
pub fn random_file(path: &Path, size: u64, rng: &mut XorShift) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("create parents");
    }
    let mut f = std::io::BufWriter::new(fs::File::create(path).expect("create"));
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        rng.fill(&mut block[..n]);
        f.write_all(&block[..n]).expect("write");
        left -= n as u64;
    }
    f.flush().expect("flush");
}

pub fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Sets the mtime of a file or directory (seconds since the epoch, plus some nanoseconds).
pub fn set_mtime(path: &Path, secs: u64) {
    let t = UNIX_EPOCH + Duration::new(secs, 123_456_789);
    fs::File::open(path)
        .and_then(|f| f.set_modified(t))
        .unwrap_or_else(|e| panic!("mtime {}: {e}", path.display()));
}

/// Every path below `dir` (relative, sorted); empty if `dir` does not exist.
pub fn list_all(dir: &Path) -> Vec<PathBuf> {
    fn go(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).expect("below base").to_path_buf());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                go(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    go(dir, dir, &mut out);
    out.sort();
    out
}

/// Every path below `dir` but the receiver's state directory (`.p2p-copy`).
pub fn final_names(dir: &Path) -> Vec<PathBuf> {
    list_all(dir).into_iter().filter(|p| !p.starts_with(".p2p-copy")).collect()
}

/// The partial files the receiver keeps in its state directory below `dir`.
pub fn partial_copies(dir: &Path) -> Vec<PathBuf> {
    list_all(dir)
        .into_iter()
        .filter(|p| p.starts_with(".p2p-copy") && p.to_string_lossy().ends_with(".part"))
        .collect()
}

/// Leftover temporary files of the receiver below `dir`.
pub fn part_files(dir: &Path) -> Vec<PathBuf> {
    list_all(dir)
        .into_iter()
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.contains(".p2p-copy-") || n.ends_with(".part")
            })
        })
        .collect()
}

/// Asserts that `dst` is a copy of `src`: same types, file contents, symlink targets, modes,
/// and mtimes (seconds) of files and directories. Returns the number of entries compared.
pub fn assert_same_tree(src: &Path, dst: &Path) -> usize {
    let mut problems = Vec::new();
    let n = compare(src, dst, &mut problems);
    if !problems.is_empty() {
        let shown: Vec<&str> = problems.iter().take(30).map(String::as_str).collect();
        panic!(
            "{} differs from {} ({} problems):\n{}",
            dst.display(),
            src.display(),
            problems.len(),
            shown.join("\n")
        );
    }
    n
}

fn compare(a: &Path, b: &Path, problems: &mut Vec<String>) -> usize {
    let (ma, mb) = match (fs::symlink_metadata(a), fs::symlink_metadata(b)) {
        (Ok(ma), Ok(mb)) => (ma, mb),
        (_, Err(e)) => {
            problems.push(format!("{}: missing ({e})", b.display()));
            return 1;
        }
        (Err(e), _) => panic!("source {}: {e}", a.display()),
    };
    let (ta, tb) = (ma.file_type(), mb.file_type());
    if (ta.is_dir(), ta.is_file(), ta.is_symlink()) != (tb.is_dir(), tb.is_file(), tb.is_symlink())
    {
        problems.push(format!("{}: type {:?}, want {:?}", b.display(), tb, ta));
        return 1;
    }
    if ta.is_symlink() {
        let (la, lb) = (fs::read_link(a).ok(), fs::read_link(b).ok());
        if la != lb {
            problems.push(format!("{}: link target {lb:?}, want {la:?}", b.display()));
        }
        return 1;
    }
    if ma.mode() & 0o7777 != mb.mode() & 0o7777 {
        problems.push(format!(
            "{}: mode {:o}, want {:o}",
            b.display(),
            mb.mode() & 0o7777,
            ma.mode() & 0o7777
        ));
    }
    let mut count = 1;
    if ta.is_file() {
        if let Some(diff) = first_difference(a, b) {
            problems.push(format!("{}: content differs ({diff})", b.display()));
        }
    } else {
        let names = |p: &Path| -> BTreeSet<OsString> {
            fs::read_dir(p).expect("read_dir").map(|e| e.expect("entry").file_name()).collect()
        };
        let (na, nb) = (names(a), names(b));
        for extra in nb.difference(&na) {
            problems.push(format!("{}: unexpected {extra:?}", b.display()));
        }
        for name in &na {
            count += compare(&a.join(name), &b.join(name), problems);
        }
    }
    // After the children: reading a directory does not change its mtime.
    if ma.mtime() != mb.mtime() {
        problems.push(format!("{}: mtime {}, want {}", b.display(), mb.mtime(), ma.mtime()));
    }
    count
}

/// `None` if the files are equal, else where they first differ.
fn first_difference(a: &Path, b: &Path) -> Option<String> {
    let (mut fa, mut fb) = (fs::File::open(a).expect("open source"), fs::File::open(b).ok()?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut offset = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        if let Some(i) = ba[..na.min(nb)].iter().zip(&bb[..na.min(nb)]).position(|(x, y)| x != y) {
            return Some(format!("at byte {}", offset + i as u64));
        }
        if na != nb {
            return Some(format!("lengths differ after byte {}", offset + na.min(nb) as u64));
        }
        if na == 0 {
            return None;
        }
        offset += na as u64;
    }
}

fn read_full(f: &mut fs::File, buf: &mut [u8]) -> usize {
    let mut filled = 0;
    while filled < buf.len() {
        match f.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    filled
}
