//! The receiver's lane worker — [`LaneReader`] checks plus every write through the file-system
//! layer (`transfer::fs::Dest`): entries, symlinks, files in chunks (plain or zstd), file ends
//! with right or wrong hashes, lane ends — run on fuzzer-made records into a fresh destination
//! in a scratch directory (on /dev/shm when there is one).
//!
//! The invariant is the one that matters against a hostile sender: nothing is ever created,
//! changed or followed outside the destination. Beside the destination sits `outside/` with a
//! canary file; symlinks the sender makes point there (by relative paths of every depth, never
//! anywhere else, so a bug cannot reach the rest of the machine). After each run the scratch
//! directory holds exactly the destination and `outside/`, `outside/` holds exactly the
//! canary, unchanged, and nothing under the destination is a device, FIFO or socket, or has
//! setuid/setgid bits.
#![no_main]

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use p2p_copy::internals::transfer::fs::Dest;
use p2p_copy::internals::transfer::lanes::{apply_frames, Sink};
use p2p_copy::internals::transfer::Progress;
use p2p_copy::internals::wire::control::Offer;
use p2p_copy::internals::wire::data::{Entry, EntryKind, Record, Timestamp, FLAG_ZSTD};

const CHUNK: usize = 16 << 10;
const CANARY: &[u8] = b"must stay as it is";
const COMPONENTS: [&str; 12] =
    ["a", "b", "c", "..", ".", "", "link", "x y", "a\\b", ".p2p-copy", "d\u{7}", "b/.."];
const TARGETS: [&str; 10] = [
    "../outside",
    "../../outside",
    "../../../outside",
    "..",
    "../..",
    ".",
    "a",
    "b/c",
    "../outside/canary",
    "link",
];

#[derive(Arbitrary, Debug)]
struct Input {
    overwrite: bool,
    /// Limits of the offer (files, dirs, symlinks, bytes; the names are "a" and "b"), or
    /// roomy ones.
    limits: Option<(u8, u8, u8, u16)>,
    /// End the lane properly after the records.
    end: bool,
    recs: Vec<Rec>,
}

#[derive(Arbitrary, Debug)]
enum Rec {
    Dir {
        path: Vec<u8>,
        mode: u16,
    },
    Symlink {
        path: Vec<u8>,
        target: u8,
    },
    /// A whole file: entry, chunks of `split` bytes (zstd or not), file end.
    File {
        path: Vec<u8>,
        mode: u16,
        content: Vec<u8>,
        split: u16,
        zstd: bool,
        right: bool,
        extra: u8,
    },
    /// Just a file's entry (what follows decides).
    FileEntry {
        path: Vec<u8>,
        size: u16,
    },
    Chunk {
        offset: u16,
        data: Vec<u8>,
    },
    FileEnd {
        hash: [u8; 32],
    },
    LaneEnd {
        right: bool,
    },
    Raw(Vec<u8>),
    /// A hard link to an offered path or to one of the bad targets.
    HardLink {
        path: Vec<u8>,
        target: Vec<u8>,
        bad: Option<u8>,
    },
    /// Hand the records so far to the worker as one message.
    Batch,
}

/// A path: mostly under an offered name, from components good and bad.
fn path(choice: &[u8]) -> String {
    let first = match choice.first() {
        Some(&c) if c >= 0xf0 => COMPONENTS[c as usize % COMPONENTS.len()],
        Some(&c) => ["a", "b"][usize::from(c & 1)],
        None => "a",
    };
    let rest = choice.iter().skip(1).take(7).map(|&c| COMPONENTS[c as usize % COMPONENTS.len()]);
    std::iter::once(first).chain(rest).collect::<Vec<_>>().join("/")
}

fn scratch() -> &'static PathBuf {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let parent = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
        let base = parent.join(format!("p2p-copy-fuzz-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(base.join("outside")).unwrap();
        fs::write(base.join("outside/canary"), CANARY).unwrap();
        base
    })
}

fn entry(id: u64, path: String, kind: EntryKind, mode: u16) -> Vec<u8> {
    let mut buf = Vec::new();
    let mtime = Some(Timestamp { secs: 1_700_000_000, nanos: 0 });
    Record::Entry(Entry { id, path: path.into_bytes(), kind, mode: u32::from(mode), mtime })
        .encode(&mut buf);
    buf
}

fuzz_target!(|input: Input| {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let base = scratch();
    let root = base.join(format!("dest-{}", RUN.fetch_add(1, Ordering::Relaxed)));

    let mut batches: Vec<Vec<Vec<u8>>> = vec![Vec::new()];
    let mut id = 0u64;
    let mut entries = 0u64;
    for rec in input.recs.into_iter().take(64) {
        let out = batches.last_mut().unwrap();
        match rec {
            Rec::Dir { path: p, mode } => {
                id += 1;
                entries += 1;
                out.push(entry(id, path(&p), EntryKind::Dir, mode));
            }
            Rec::Symlink { path: p, target } => {
                id += 1;
                entries += 1;
                let target = TARGETS[target as usize % TARGETS.len()].into();
                out.push(entry(id, path(&p), EntryKind::Symlink { target }, 0o777));
            }
            Rec::File { path: p, mode, content, split, zstd, right, extra } => {
                id += 1;
                entries += 1;
                // `extra` announces more bytes than come (the file end is then refused).
                let size = content.len() as u64 + u64::from(extra % 4 == 0) * u64::from(extra);
                out.push(entry(id, path(&p), EntryKind::File { size }, mode));
                let split = (usize::from(split) % CHUNK).max(1);
                let mut offset = 0u64;
                for piece in content.chunks(split) {
                    let compressed;
                    let (flags, payload) = if zstd {
                        compressed = zstd::bulk::compress(piece, 1).unwrap();
                        (FLAG_ZSTD, &compressed[..])
                    } else {
                        (0, piece)
                    };
                    let mut buf = Vec::new();
                    Record::Chunk { flags, file_id: id, offset, payload }.encode(&mut buf);
                    out.push(buf);
                    offset += piece.len() as u64;
                }
                let hash = if right { *blake3::hash(&content).as_bytes() } else { [7; 32] };
                let mut buf = Vec::new();
                Record::FileEnd { file_id: id, hash }.encode(&mut buf);
                out.push(buf);
            }
            Rec::FileEntry { path: p, size } => {
                id += 1;
                entries += 1;
                out.push(entry(id, path(&p), EntryKind::File { size: u64::from(size) }, 0o600));
            }
            Rec::Chunk { offset, data } => {
                let mut buf = Vec::new();
                Record::Chunk { flags: 0, file_id: id, offset: u64::from(offset), payload: &data }
                    .encode(&mut buf);
                out.push(buf);
            }
            Rec::FileEnd { hash } => {
                let mut buf = Vec::new();
                Record::FileEnd { file_id: id, hash }.encode(&mut buf);
                out.push(buf);
            }
            Rec::LaneEnd { right } => {
                let mut buf = Vec::new();
                Record::LaneEnd { entries: if right { entries } else { entries + 1 } }
                    .encode(&mut buf);
                out.push(buf);
            }
            Rec::Raw(bytes) => out.push(bytes),
            Rec::HardLink { path: p, target, bad } => {
                id += 1;
                entries += 1;
                let target = match bad {
                    Some(t) => TARGETS[t as usize % TARGETS.len()].to_string(),
                    None => path(&target),
                };
                out.push(entry(
                    id,
                    path(&p),
                    EntryKind::HardLink { target: target.into_bytes() },
                    0o644,
                ));
            }
            Rec::Batch => batches.push(Vec::new()),
        }
    }

    if input.end {
        let mut buf = Vec::new();
        Record::LaneEnd { entries }.encode(&mut buf);
        batches.last_mut().unwrap().push(buf);
    }
    let (files, dirs, symlinks, bytes) = input.limits.map_or((1000, 1000, 1000, 1 << 20), |l| {
        (u64::from(l.0), u64::from(l.1), u64::from(l.2), u64::from(l.3))
    });
    let offer = Offer {
        files,
        dirs,
        symlinks,
        bytes,
        names: vec!["a".into(), "b".into()],
        lanes: 1,
        chunk_size: CHUNK as u32,
        transfer_id: [9; 16],
        streams: 0,
        text: None,
        hardlinks: 64,
        xattrs: false,
    };
    {
        let dest = Dest::open(&root).unwrap();
        dest.begin(&offer.names, offer.dirs);
        let sink = Arc::new(Sink::new(dest, input.overwrite, &offer, None, Progress::new()));
        let result = apply_frames(CHUNK, batches, &sink);
        if std::env::var_os("LANE_RESULT").is_some() {
            // What the inputs achieve (to check the corpus gets files written).
            match &result {
                Ok(s) => eprintln!("lane ok entries={} files={}", s.entries, s.files),
                Err(e) => eprintln!("lane err {:?}", e.kind),
            }
        }
        if result.is_ok() && sink.check_complete().is_ok() && sink.make_links().is_ok() {
            let _ = sink.finish_dirs();
        }
        if let Some(dest) = sink.dest() {
            dest.end();
        }
    }

    check_outside(base, &root);
    check_inside(&root);
    remove(&root);
});

/// The scratch directory holds the destination and `outside/` with its canary, nothing else.
fn check_outside(base: &Path, root: &Path) {
    let mut names: Vec<_> = fs::read_dir(base).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    let dest_name = root.file_name().unwrap().to_os_string();
    assert_eq!(
        names,
        vec![dest_name, "outside".into()],
        "something was created beside the destination"
    );
    let outside: Vec<_> =
        fs::read_dir(base.join("outside")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(outside, vec![std::ffi::OsString::from("canary")], "something was created outside");
    let canary = base.join("outside/canary");
    assert!(fs::symlink_metadata(&canary).unwrap().file_type().is_file());
    assert_eq!(fs::read(&canary).unwrap(), CANARY, "the canary outside was written");
}

/// Nothing special, nothing setuid/setgid under the destination.
fn check_inside(dir: &Path) {
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let meta = fs::symlink_metadata(e.path()).unwrap();
        let t = meta.file_type();
        assert!(
            !(t.is_block_device() || t.is_char_device() || t.is_fifo() || t.is_socket()),
            "a special file was created: {:?}",
            e.path()
        );
        if !t.is_symlink() {
            assert_eq!(meta.permissions().mode() & 0o6000, 0, "setuid/setgid on {:?}", e.path());
        }
        if t.is_dir() {
            check_inside(&e.path());
        }
    }
}

fn remove(root: &Path) {
    // Directories may have been given modes without write or search permission.
    fn open_up(dir: &Path) {
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    open_up(&e.path());
                }
            }
        }
    }
    open_up(root);
    fs::remove_dir_all(root).unwrap();
}
