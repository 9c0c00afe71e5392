//! A receiving data lane's record checker ([`LaneReader`]) on fuzzer-made record sequences:
//! valid-looking entries, chunks (plain, zstd-compressed, or a fuzzer's "zstd" payload),
//! file ends with the right or a wrong hash, resume records and resume states (from held
//! bytes, from group CVs, or a whole held file), lane ends, and raw bytes.
//!
//! Checked against a model of the bytes the reader let through: it never emits more than a
//! chunk or beyond a file's size, a file end is accepted only with the BLAKE3 hash of exactly
//! the bytes held and emitted for that file, a hash error only when the hash is wrong, the
//! group CVs it yields are those of the content, and the lane end counts the entries.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use p2p_copy::internals::proto::tree::group_cv;
use p2p_copy::internals::proto::{Held, LaneError, LaneEvent, LaneReader, TreeHasher, GROUP};
use p2p_copy::internals::wire::data::{Entry, EntryKind, Record, Timestamp, Xattr, FLAG_ZSTD};

#[derive(Arbitrary, Debug)]
struct Input {
    /// The reader's chunk cap: 16 KiB << (n % 7).
    chunk_log: u8,
    recs: Vec<Rec>,
}

#[derive(Arbitrary, Debug)]
enum Rec {
    Entry {
        id: u8,
        kind: u8,
        size: u32,
        path: Vec<u8>,
        mtime: Option<(i64, u32)>,
    },
    /// Next bytes of the open file: `len` bytes of `byte` (or the fuzzer's bytes).
    Chunk {
        zstd: bool,
        id: Option<u8>,
        offset: Option<u64>,
        fill: Option<(u8, u32)>,
        data: Vec<u8>,
    },
    /// A CHUNK flagged zstd whose payload is the fuzzer's.
    RawZstd {
        payload: Vec<u8>,
    },
    FileEnd {
        id: Option<u8>,
        right: bool,
        hash: [u8; 32],
    },
    LaneEnd {
        entries: Option<u64>,
    },
    ResumeAt {
        id: Option<u8>,
        offset: u32,
    },
    /// The driver's [`LaneReader::resume`]: the state of `byte` repeated up to the resume
    /// offset (from CVs when on a group boundary), or a whole held file.
    Resume {
        byte: u8,
        whole: bool,
        right: bool,
        len: Option<u32>,
    },
    TakeCvs,
    Raw(Vec<u8>),
    /// A HOLE of `len` zeros (at the open file's place unless given).
    Hole {
        id: Option<u8>,
        offset: Option<u64>,
        len: u32,
    },
    /// XATTRS for the last entry (unless another id is given), names in `user.`.
    Xattrs {
        id: Option<u8>,
        attrs: Vec<(String, Vec<u8>)>,
    },
}

/// The file the reader has open, as the model sees it.
struct File {
    id: u64,
    /// A stream has no size (`u64::MAX` here) and ends at its FILE_END.
    stream: bool,
    size: u64,
    /// Bytes held before the lane (resumed) and bytes emitted, in order.
    content: Vec<u8>,
    /// The resume offset awaiting its state.
    resume_at: Option<u64>,
    /// A whole held file's hash, if given.
    whole: Option<[u8; 32]>,
    /// CVs taken so far cover groups below this.
    cvs_from: u64,
}

const MAX_SIZE: u64 = 3 * GROUP + 1000;

fuzz_target!(|input: Input| {
    let max_chunk = (16usize << 10) << (input.chunk_log % 7);
    let mut reader = LaneReader::new(max_chunk);
    let mut file: Option<File> = None;
    let mut last_id = 0u64;
    let mut entries = 0u64;
    // The file or directory just entered, whose XATTRS may come.
    let mut attributable: Option<u64> = None;
    let mut buf = Vec::new();
    for rec in input.recs.into_iter().take(512) {
        buf.clear();
        match rec {
            Rec::Entry { id, kind, size, path, mtime } => {
                let size = u64::from(size) % (MAX_SIZE + 1);
                let kind = match kind % 6 {
                    0 => EntryKind::Dir,
                    1 => EntryKind::Symlink { target: path.clone() },
                    2 => EntryKind::File { size: size % 4096 },
                    3 => EntryKind::Stream,
                    4 => EntryKind::HardLink { target: path.clone() },
                    _ => EntryKind::File { size },
                };
                let entry = Entry {
                    id: u64::from(id),
                    path,
                    kind,
                    mode: 0o644,
                    mtime: mtime.map(|(secs, nanos)| Timestamp { secs, nanos }),
                };
                Record::Entry(entry).encode(&mut buf);
            }
            Rec::Chunk { zstd, id, offset, fill, data } => {
                let Some(f) = &file else { continue };
                let data = match fill {
                    Some((byte, len)) => vec![byte; len as usize % (max_chunk + 1)],
                    None => data,
                };
                let payload = if zstd { zstd::bulk::compress(&data, 1).unwrap() } else { data };
                Record::Chunk {
                    flags: if zstd { FLAG_ZSTD } else { 0 },
                    file_id: id.map_or(f.id, u64::from),
                    offset: offset.unwrap_or(f.content.len() as u64),
                    payload: &payload,
                }
                .encode(&mut buf);
            }
            Rec::RawZstd { payload } => {
                let (id, at) = file.as_ref().map_or((0, 0), |f| (f.id, f.content.len() as u64));
                Record::Chunk { flags: FLAG_ZSTD, file_id: id, offset: at, payload: &payload }
                    .encode(&mut buf);
            }
            Rec::FileEnd { id, right, hash } => {
                let (fid, good) = match &file {
                    Some(f) => {
                        (f.id, f.whole.unwrap_or_else(|| *blake3::hash(&f.content).as_bytes()))
                    }
                    None => (last_id, [0; 32]),
                };
                let hash = if right { good } else { hash };
                Record::FileEnd { file_id: id.map_or(fid, u64::from), hash }.encode(&mut buf);
            }
            Rec::LaneEnd { entries: n } => {
                Record::LaneEnd { entries: n.unwrap_or(entries) }.encode(&mut buf);
            }
            Rec::ResumeAt { id, offset } => {
                let fid = file.as_ref().map_or(last_id, |f| f.id);
                Record::ResumeAt { file_id: id.map_or(fid, u64::from), offset: u64::from(offset) }
                    .encode(&mut buf);
            }
            Rec::Resume { byte, whole, right, len } => {
                let at = file.as_ref().and_then(|f| f.resume_at);
                let len = len.map_or(at.unwrap_or(0), |l| u64::from(l) % (MAX_SIZE + 1));
                let prefix = vec![byte; len as usize];
                let held = if whole {
                    let root = *blake3::hash(&prefix).as_bytes();
                    Held::Whole(if right { root } else { [byte; 32] })
                } else if len % GROUP == 0 {
                    TreeHasher::resume((0..len / GROUP).map(|g| {
                        group_cv(g, &prefix[(g * GROUP) as usize..((g + 1) * GROUP) as usize])
                    }))
                    .into_held()
                } else {
                    let mut h = TreeHasher::new();
                    h.update(&prefix);
                    Held::Prefix(h)
                };
                let whole_root = match &held {
                    Held::Whole(root) => Some(*root),
                    Held::Prefix(_) => None,
                };
                match reader.resume(held) {
                    Ok(()) => {
                        let f = file.as_mut().expect("resume accepted without an open file");
                        let expected = if whole { f.size } else { len };
                        assert_eq!(
                            f.resume_at,
                            Some(expected),
                            "resume accepted at another length"
                        );
                        f.content = prefix;
                        f.whole = whole_root;
                        f.resume_at = None;
                        f.cvs_from = len / GROUP;
                    }
                    Err(_) => return,
                }
                continue;
            }
            Rec::TakeCvs => {
                let (first, cvs) = reader.take_cvs();
                check_cvs(file.as_mut(), first, &cvs);
                continue;
            }
            Rec::Raw(bytes) => buf = bytes,
            Rec::Hole { id, offset, len } => {
                let (fid, at) =
                    file.as_ref().map_or((last_id, 0), |f| (f.id, f.content.len() as u64));
                let len = u64::from(len) % (MAX_SIZE + 1);
                if len == 0 {
                    continue;
                }
                Record::Hole {
                    file_id: id.map_or(fid, u64::from),
                    offset: offset.unwrap_or(at),
                    len,
                }
                .encode(&mut buf);
            }
            Rec::Xattrs { id, attrs } => {
                let attrs = attrs
                    .into_iter()
                    .take(8)
                    .map(|(name, value)| Xattr { name: format!("user.{name}"), value })
                    .collect();
                Record::Xattrs { entry_id: id.map_or(last_id, u64::from), attrs }.encode(&mut buf);
            }
        }
        let result = reader.handle(&buf);
        let event = match result {
            Ok(event) => event,
            Err(LaneError::Hash { .. }) => {
                let f = file.as_ref().expect("a hash error without an open file");
                let Ok(Record::FileEnd { hash, .. }) = Record::decode(&buf) else {
                    panic!("a hash error on another record");
                };
                let good = f.whole.unwrap_or_else(|| *blake3::hash(&f.content).as_bytes());
                assert_ne!(hash, good, "a right hash refused");
                return;
            }
            // The driver stops the lane at the first error.
            Err(_) => return,
        };
        let was = attributable.take();
        match event {
            LaneEvent::Xattrs(list) => {
                let Ok(Record::Xattrs { entry_id, .. }) = Record::decode(&buf) else {
                    panic!("xattrs from another record");
                };
                assert_eq!(was, Some(entry_id), "xattrs accepted away from their entry");
                assert!(list.iter().all(|a| a.name.starts_with("user.")), "a name outside user.");
            }
            LaneEvent::Entry(e) => {
                if matches!(e.kind, EntryKind::File { .. } | EntryKind::Dir) {
                    attributable = Some(e.id);
                }
                assert!(file.is_none(), "an entry inside a file");
                entries += 1;
                last_id = e.id;
                let size = match e.kind {
                    EntryKind::File { size } => Some(size),
                    EntryKind::Stream => Some(u64::MAX),
                    _ => None,
                };
                if let Some(size) = size {
                    file = Some(File {
                        id: e.id,
                        stream: e.kind == EntryKind::Stream,
                        size,
                        content: Vec::new(),
                        resume_at: None,
                        whole: None,
                        cvs_from: 0,
                    });
                }
            }
            LaneEvent::ResumeAt { file_id, offset } => {
                let f = file.as_mut().expect("resume outside a file");
                assert_eq!(file_id, f.id);
                assert!(f.content.is_empty() && f.resume_at.is_none());
                assert!(!f.stream, "a stream resumed");
                assert!(offset > 0 && offset <= f.size);
                f.resume_at = Some(offset);
            }
            LaneEvent::Data(d) => {
                let f = file.as_mut().expect("data outside a file");
                assert!(f.resume_at.is_none(), "data before the resume state");
                assert!(f.whole.is_none(), "data for a file held whole");
                assert!(!d.is_empty() && d.len() <= max_chunk, "chunk of {} bytes", d.len());
                f.content.extend_from_slice(d);
                assert!(f.content.len() as u64 <= f.size, "more than the file's size");
            }
            LaneEvent::Hole(len) => {
                let f = file.as_mut().expect("hole outside a file");
                assert!(f.resume_at.is_none(), "a hole before the resume state");
                assert!(f.whole.is_none(), "a hole in a file held whole");
                assert!(len > 0, "an empty hole");
                f.content.resize(f.content.len() + len as usize, 0);
                assert!(f.content.len() as u64 <= f.size, "more than the file's size");
            }
            LaneEvent::FileEnd { file_id, hash, size } => {
                let f = file.take().expect("file end outside a file");
                assert_eq!(file_id, f.id);
                assert_eq!(f.content.len() as u64, size, "the size reported");
                assert!(f.stream || size == f.size, "a file ended short");
                let good = f.whole.unwrap_or_else(|| *blake3::hash(&f.content).as_bytes());
                assert_eq!(hash, good, "a file ended with a hash of other bytes");
            }
            LaneEvent::End => {
                assert!(file.is_none());
                assert_eq!(reader.entries(), entries);
                assert!(reader.is_ended());
            }
        }
        let (first, cvs) = reader.take_cvs();
        check_cvs(file.as_mut(), first, &cvs);
    }
});

/// CVs the reader yields are those of the model's content, each group once, in order.
fn check_cvs(
    file: Option<&mut File>,
    first: u64,
    cvs: &[p2p_copy::internals::proto::tree::ChainingValue],
) {
    if cvs.is_empty() {
        return;
    }
    let f = file.expect("CVs without an open file");
    assert_eq!(first, f.cvs_from, "CVs skipped or repeated a group");
    for (i, cv) in cvs.iter().enumerate() {
        let g = first + i as u64;
        let end = ((g + 1) * GROUP) as usize;
        assert!(end <= f.content.len(), "a CV of a group not received yet");
        assert_eq!(*cv, group_cv(g, &f.content[(g * GROUP) as usize..end]), "CV of group {g}");
    }
    f.cvs_from = first + cvs.len() as u64;
}

trait IntoHeld {
    fn into_held(self) -> Held;
}

impl IntoHeld for TreeHasher {
    fn into_held(self) -> Held {
        Held::Prefix(self)
    }
}
