//! The work any copy of a file or tree must do besides moving its bytes, measured step by step
//! on one thread: the floor `scripts/bench` adds to raw quinn's CPU to bound what p2p-copy
//! can reach on this machine (`docs/benchmarks.md`, "Limits").
//!
//! ```text
//! floor SRC DIR [CHUNK]
//! ```
//!
//! Walks SRC (a file or a tree), then in separate passes: reads every file in CHUNK-byte
//! pieces (default 512 KiB, p2p-copy's chunk); hashes as many bytes per file with BLAKE3; and
//! writes a copy of each file's size under DIR the way a careful receiver does (a new file
//! under a temporary name, its bytes in CHUNK-byte writes, its mode and mtime, then renamed
//! onto its name), three times, keeping the cheapest. Hashing and writing use the bytes of one
//! buffer (their cost does not depend on the bytes), so neither pays for a read. Prints the
//! CPU seconds of each step:
//!
//! ```text
//! walk 0.081 read 0.394 hash 0.187 write 1.112 files 100000 bytes 461234567
//! ```
//!
//! The copy under DIR is removed at the end. DIR should be on the file system the receiver
//! writes to.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Rounds of writing the copy; the cheapest counts.
const WRITES: usize = 3;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(src), Some(dir)) = (args.first(), args.get(1)) else {
        return Err("usage: floor SRC DIR [CHUNK]".into());
    };
    let chunk: usize = args.get(2).map_or(Ok(512 << 10), |c| c.parse())?;
    let (src, dir) = (Path::new(src), Path::new(dir));
    let mut buf = vec![0u8; chunk];
    let top = PathBuf::from(src.file_name().ok_or("SRC has no name")?);

    let start = cpu()?;
    let mut files = Vec::new();
    walk(src, &top, &mut files)?;
    let walked = cpu()?;
    let mut bytes = 0;
    for (path, _, _) in &files {
        bytes += read_file(path, &mut buf, |_| Ok(()))?;
    }
    let read = cpu()?;
    // Hashing and writing cost the same whatever the bytes: both use the buffer's, so that
    // neither counts a read nor holds the data in memory.
    buf.fill(0x5a);
    for (_, _, meta) in &files {
        let mut hasher = blake3::Hasher::new();
        each_piece(meta.len(), chunk, |n| {
            hasher.update(&buf[..n]);
            Ok(())
        })?;
        hasher.finalize();
    }
    let hashed = cpu()?;
    // What a write costs depends on the page allocator's state (in a VM, on whether the host
    // still backs the freed pages): the cheapest of WRITES rounds is the floor.
    let mut write = f64::INFINITY;
    // The directories are made first, untimed: a receiver makes each once, not per file.
    let parents: std::collections::BTreeSet<PathBuf> =
        files.iter().filter_map(|(_, rel, _)| dir.join(rel).parent().map(Path::to_owned)).collect();
    for _ in 0..WRITES {
        for parent in &parents {
            fs::create_dir_all(parent)?;
        }
        let began = cpu()?;
        for (_, rel, meta) in &files {
            let name = dir.join(rel);
            let mut part = name.clone().into_os_string();
            part.push(".part");
            let mut out = File::options().write(true).create_new(true).open(&part)?;
            each_piece(meta.len(), chunk, |n| out.write_all(&buf[..n]))?;
            out.set_permissions(fs::Permissions::from_mode(meta.permissions().mode()))?;
            out.set_modified(meta.modified()?)?;
            drop(out);
            fs::rename(&part, &name)?;
        }
        write = write.min(cpu()? - began);
        fs::remove_dir_all(dir.join(&top)).or_else(|_| fs::remove_file(dir.join(&top)))?;
    }
    let (walk, read) = (walked - start, read - walked);
    println!(
        "walk {walk:.3} read {read:.3} hash {:.3} write {:.3} files {} bytes {bytes}",
        hashed - read,
        write,
        files.len()
    );
    Ok(())
}

/// The regular files under `path` (or `path` itself), each with its path below SRC's parent
/// and its metadata, in directory order.
fn walk(path: &Path, rel: &Path, files: &mut Vec<(PathBuf, PathBuf, fs::Metadata)>) -> Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            walk(&entry.path(), &rel.join(entry.file_name()), files)?;
        }
    } else if meta.is_file() {
        files.push((path.to_owned(), rel.to_owned(), meta));
    }
    Ok(())
}

/// Calls `each` with the sizes of the CHUNK-byte pieces of `len` bytes.
fn each_piece(
    len: u64,
    chunk: usize,
    mut each: impl FnMut(usize) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk as u64) as usize;
        each(n)?;
        left -= n as u64;
    }
    Ok(())
}

/// Reads the file at `path` in pieces of `buf`'s size, handing each to `each`; its length.
fn read_file(
    path: &Path,
    buf: &mut [u8],
    mut each: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> Result<u64> {
    let mut file = File::open(path)?;
    let mut total = 0;
    loop {
        let n = file.read(buf)?;
        if n == 0 {
            return Ok(total);
        }
        each(&buf[..n])?;
        total += n as u64;
    }
}

/// CPU seconds this process has run so far (all one thread).
fn cpu() -> Result<f64> {
    let stat = fs::read_to_string("/proc/self/schedstat")?;
    let ns: f64 = stat.split_whitespace().next().ok_or("empty schedstat")?.parse()?;
    Ok(ns / 1e9)
}
