//! Records on data lanes (sender → receiver unidirectional QUIC streams).
//!
//! A lane stream starts with `lane: u32 BE`, then carries frames ([`super::frame`]) whose
//! bodies are records (QUIC encrypts them; p2p-copy does not seal them again). A record starts
//! with a type byte:
//!
//! | type | name     | bytes after the type byte                                          |
//! |------|----------|--------------------------------------------------------------------|
//! | 0x01 | ENTRY    | postcard-encoded [`Entry`]                                         |
//! | 0x02 | CHUNK    | `flags: u8 ‖ file_id: u64 BE ‖ offset: u64 BE ‖ payload`           |
//! | 0x03 | FILE_END | `file_id: u64 BE ‖ blake3: [u8; 32]`                               |
//! | 0x04 | LANE_END | `entries: u64 BE` (entries this lane carried)                      |
//! | 0x05 | RESUME_AT| `file_id: u64 BE ‖ offset: u64 BE` (the receiver holds `offset` bytes) |
//! | 0x06 | HOLE     | `file_id: u64 BE ‖ offset: u64 BE ‖ len: u64 BE` (`len` zero bytes, not sent) |
//! | 0x07 | XATTRS   | `entry_id: u64 BE ‖` postcard-encoded `Vec<`[`Xattr`]`>` (`send --xattrs`) |
//!
//! CHUNK `flags` bit 0: the payload is a zstd frame (decompressed size ≤ the chunk size);
//! other bits must be zero. A file's chunks follow its ENTRY on the same lane, in order, then
//! its FILE_END. A resumed file's ENTRY is followed by RESUME_AT, and its chunks start at that
//! offset. A HOLE stands for a run of zeros the sender's file does not store (a sparse file),
//! in place of CHUNKs: the receiver leaves a hole too. XATTRS, when the sender keeps extended
//! attributes, comes right after the ENTRY of a file or directory it belongs to (before any
//! RESUME_AT or CHUNK), at most once, and holds only `user.` attributes. LANE_END is the last
//! record; a lane that ends without it was cut.

use serde::{Deserialize, Serialize};

use super::{fixed, from_postcard, to_postcard, DecodeError};

/// Largest chunk payload any peer may send (the default is 512 KiB).
pub const MAX_CHUNK: usize = 4 << 20;
/// Smallest chunk size a sender may choose.
pub const MIN_CHUNK: usize = 16 << 10;
/// Default chunk payload size.
pub const DEFAULT_CHUNK: usize = 512 << 10;
/// Cap on a data frame body: the largest record.
pub const MAX_FRAME: usize = CHUNK_HEADER_LEN + MAX_CHUNK;
/// Cap on one HOLE record's length: a longer hole goes as several (each costs the receiver
/// hashing that many zeros, and the lane shows progress between records).
pub const MAX_HOLE: u64 = 1 << 30;
/// Cap on a symlink target, in bytes.
pub const MAX_TARGET: usize = 4096;
/// Length of the header of a CHUNK record (type byte included).
pub const CHUNK_HEADER_LEN: usize = 1 + 1 + 8 + 8;
/// CHUNK flag: payload compressed with zstd.
pub const FLAG_ZSTD: u8 = 0x01;

const TYPE_ENTRY: u8 = 0x01;
const TYPE_CHUNK: u8 = 0x02;
const TYPE_FILE_END: u8 = 0x03;
const TYPE_LANE_END: u8 = 0x04;
const TYPE_RESUME_AT: u8 = 0x05;
const TYPE_HOLE: u8 = 0x06;
const TYPE_XATTRS: u8 = 0x07;

/// Cap on the encoded XATTRS record of one entry (it fits the smallest frame a receiver
/// accepts); attributes beyond it are not sent.
pub const MAX_XATTRS_RECORD: usize = 15 << 10;
/// Cap on the attributes of one entry.
pub const MAX_XATTRS: usize = 256;
/// The only namespace sent: what an unprivileged user may set. `security.`, `trusted.` and
/// `system.` (ACLs, capabilities, SELinux labels) are never sent nor accepted.
pub const XATTR_NAMESPACE: &str = "user.";

/// One extended attribute (`send --xattrs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    /// Its full name, `user.` included (at most 255 bytes, as Linux allows).
    pub name: String,
    /// Its value.
    pub value: Vec<u8>,
}

/// One item of the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Sender-assigned id, unique within the session; chunks name it.
    pub id: u64,
    /// Relative path with `/` separators; its first component is an offered top-level name.
    /// Bytes: a Unix name need not be UTF-8.
    pub path: Vec<u8>,
    /// What it is.
    pub kind: EntryKind,
    /// Unix permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Modification time, if known.
    pub mtime: Option<Timestamp>,
}

/// Kinds of manifest entries. Devices, sockets and FIFOs are never sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A directory (created even when empty).
    Dir,
    /// A regular file of this many bytes.
    File {
        /// Size in bytes.
        size: u64,
    },
    /// A symbolic link, recreated as a link and never followed.
    Symlink {
        /// The link target, verbatim (bytes, as a path is).
        target: Vec<u8>,
    },
    /// A regular file whose size is not known in advance (`send -`, a stream): its chunks
    /// go on until its FILE_END. Never resumed.
    Stream,
    /// Another name for a regular file of this transfer: the receiver links `target` (an
    /// earlier FILE entry's path, as on the wire) under this entry's path once every lane has
    /// finished. Carries no data; its `mode` and `mtime` are the target's.
    HardLink {
        /// The path of the entry this one names again.
        target: Vec<u8>,
    },
}

/// Seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timestamp {
    /// Whole seconds (negative before 1970).
    pub secs: i64,
    /// Nanoseconds, below 1e9.
    pub nanos: u32,
}

/// A decoded data record, borrowing its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    /// A manifest entry.
    Entry(Entry),
    /// File data.
    Chunk {
        /// Flags ([`FLAG_ZSTD`]).
        flags: u8,
        /// The file's entry id.
        file_id: u64,
        /// Offset of the (decompressed) payload in the file.
        offset: u64,
        /// The payload as sent.
        payload: &'a [u8],
    },
    /// The end of a file and the BLAKE3 hash of its whole content.
    FileEnd {
        /// The file's entry id.
        file_id: u64,
        /// BLAKE3 hash (32 bytes) of the file.
        hash: [u8; 32],
    },
    /// The lane is complete.
    LaneEnd {
        /// Entries the lane carried.
        entries: u64,
    },
    /// The file just entered continues the receiver's partial copy: its chunks start here.
    ResumeAt {
        /// The file's entry id.
        file_id: u64,
        /// Bytes the receiver holds (as it answered in the listing).
        offset: u64,
    },
    /// `len` zero bytes of the file at `offset` that the sender's file does not store.
    Hole {
        /// The file's entry id.
        file_id: u64,
        /// Where the hole starts.
        offset: u64,
        /// Its length (at least 1).
        len: u64,
    },
    /// The extended attributes of the entry just sent.
    Xattrs {
        /// The entry's id.
        entry_id: u64,
        /// Its attributes (`user.` ones only).
        attrs: Vec<Xattr>,
    },
}

impl Record<'_> {
    /// Appends the plaintext encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Record::Entry(e) => {
                out.push(TYPE_ENTRY);
                to_postcard(e, out);
            }
            Record::Chunk { flags, file_id, offset, payload } => {
                out.extend_from_slice(&chunk_header(*flags, *file_id, *offset));
                out.extend_from_slice(payload);
            }
            Record::FileEnd { file_id, hash } => {
                out.push(TYPE_FILE_END);
                out.extend_from_slice(&file_id.to_be_bytes());
                out.extend_from_slice(hash);
            }
            Record::LaneEnd { entries } => {
                out.push(TYPE_LANE_END);
                out.extend_from_slice(&entries.to_be_bytes());
            }
            Record::ResumeAt { file_id, offset } => {
                out.push(TYPE_RESUME_AT);
                out.extend_from_slice(&file_id.to_be_bytes());
                out.extend_from_slice(&offset.to_be_bytes());
            }
            Record::Hole { file_id, offset, len } => {
                out.push(TYPE_HOLE);
                out.extend_from_slice(&file_id.to_be_bytes());
                out.extend_from_slice(&offset.to_be_bytes());
                out.extend_from_slice(&len.to_be_bytes());
            }
            Record::Xattrs { entry_id, attrs } => {
                out.push(TYPE_XATTRS);
                out.extend_from_slice(&entry_id.to_be_bytes());
                to_postcard(attrs, out);
            }
        }
    }

    /// Decodes a plaintext record.
    pub fn decode(bytes: &[u8]) -> Result<Record<'_>, DecodeError> {
        let (&ty, rest) = bytes.split_first().ok_or(DecodeError::Truncated)?;
        match ty {
            TYPE_ENTRY => {
                let entry: Entry = from_postcard(rest)?;
                entry.validate()?;
                Ok(Record::Entry(entry))
            }
            TYPE_CHUNK => {
                if rest.len() < CHUNK_HEADER_LEN - 1 {
                    return Err(DecodeError::Truncated);
                }
                let flags = rest[0];
                if flags & !FLAG_ZSTD != 0 {
                    return Err(DecodeError::Invalid("chunk flags"));
                }
                let payload = &rest[17..];
                if payload.len() > MAX_CHUNK {
                    return Err(DecodeError::TooLong {
                        what: "chunk",
                        len: payload.len(),
                        max: MAX_CHUNK,
                    });
                }
                Ok(Record::Chunk {
                    flags,
                    file_id: be_u64(&rest[1..9]),
                    offset: be_u64(&rest[9..17]),
                    payload,
                })
            }
            TYPE_FILE_END => {
                let body = fixed::<40>(rest)?;
                let mut hash = [0; 32];
                hash.copy_from_slice(&body[8..]);
                Ok(Record::FileEnd { file_id: be_u64(&body[..8]), hash })
            }
            TYPE_LANE_END => Ok(Record::LaneEnd { entries: be_u64(&fixed::<8>(rest)?) }),
            TYPE_RESUME_AT => {
                let body = fixed::<16>(rest)?;
                Ok(Record::ResumeAt { file_id: be_u64(&body[..8]), offset: be_u64(&body[8..]) })
            }
            TYPE_HOLE => {
                let body = fixed::<24>(rest)?;
                let len = be_u64(&body[16..]);
                if len == 0 {
                    return Err(DecodeError::Invalid("empty hole"));
                }
                Ok(Record::Hole { file_id: be_u64(&body[..8]), offset: be_u64(&body[8..16]), len })
            }
            TYPE_XATTRS => {
                if rest.len() + 1 > MAX_XATTRS_RECORD {
                    return Err(DecodeError::TooLong {
                        what: "xattrs record",
                        len: rest.len() + 1,
                        max: MAX_XATTRS_RECORD,
                    });
                }
                let (id, list) = rest.split_at_checked(8).ok_or(DecodeError::Truncated)?;
                let attrs: Vec<Xattr> = from_postcard(list)?;
                validate_xattrs(&attrs)?;
                Ok(Record::Xattrs { entry_id: be_u64(id), attrs })
            }
            other => Err(DecodeError::UnknownType(other)),
        }
    }
}

/// A CHUNK record's header; the payload follows it. Lets the sender read file data straight
/// into the record buffer.
pub fn chunk_header(flags: u8, file_id: u64, offset: u64) -> [u8; CHUNK_HEADER_LEN] {
    let mut header = [0u8; CHUNK_HEADER_LEN];
    header[0] = TYPE_CHUNK;
    header[1] = flags;
    header[2..10].copy_from_slice(&file_id.to_be_bytes());
    header[10..].copy_from_slice(&offset.to_be_bytes());
    header
}

impl Entry {
    /// Checks the caps on strings. Path *safety* is the receiver's file-system layer's job.
    pub fn validate(&self) -> Result<(), DecodeError> {
        if self.path.len() > super::control::MAX_PATH {
            return Err(DecodeError::TooLong {
                what: "path",
                len: self.path.len(),
                max: super::control::MAX_PATH,
            });
        }
        if let EntryKind::Symlink { target } = &self.kind {
            if target.len() > MAX_TARGET {
                return Err(DecodeError::TooLong {
                    what: "symlink target",
                    len: target.len(),
                    max: MAX_TARGET,
                });
            }
        }
        if let EntryKind::HardLink { target } = &self.kind {
            if target.len() > super::control::MAX_PATH {
                return Err(DecodeError::TooLong {
                    what: "hard link target",
                    len: target.len(),
                    max: super::control::MAX_PATH,
                });
            }
        }
        if matches!(self.mtime, Some(t) if t.nanos >= 1_000_000_000) {
            return Err(DecodeError::Invalid("timestamp"));
        }
        Ok(())
    }
}

/// Checks a list of extended attributes: at most [`MAX_XATTRS`], each a `user.` name of at
/// most 255 bytes with no NUL, no name twice.
pub fn validate_xattrs(attrs: &[Xattr]) -> Result<(), DecodeError> {
    if attrs.is_empty() || attrs.len() > MAX_XATTRS {
        return Err(DecodeError::Invalid("xattr count"));
    }
    let mut names = std::collections::HashSet::new();
    for a in attrs {
        let ok = a.name.len() > XATTR_NAMESPACE.len()
            && a.name.len() <= 255
            && a.name.starts_with(XATTR_NAMESPACE)
            && !a.name.contains('\0');
        if !ok {
            return Err(DecodeError::Invalid("xattr name"));
        }
        if !names.insert(a.name.as_str()) {
            return Err(DecodeError::Invalid("xattr named twice"));
        }
    }
    Ok(())
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn file_entry() -> Entry {
        Entry {
            id: 5,
            path: "photos/a.jpg".into(),
            kind: EntryKind::File { size: 1000 },
            mode: 0o644,
            mtime: Some(Timestamp { secs: 1_700_000_000, nanos: 5 }),
        }
    }

    fn hex_of(r: &Record) -> String {
        let mut out = Vec::new();
        r.encode(&mut out);
        hex::encode(out)
    }

    #[test]
    fn record_snapshots() {
        assert_eq!(
            hex_of(&Record::Entry(file_entry())),
            "01050c70686f746f732f612e6a706701e807a4030180c49fd50c05"
        );
        let link = Entry {
            id: 6,
            path: "l".into(),
            kind: EntryKind::Symlink { target: "t".into() },
            mode: 0o777,
            mtime: None,
        };
        assert_eq!(hex_of(&Record::Entry(link)), "0106016c020174ff0300");
        let dir = Entry { id: 1, path: "d".into(), kind: EntryKind::Dir, mode: 0o755, mtime: None };
        assert_eq!(hex_of(&Record::Entry(dir)), "0101016400ed0300");
        let stream = Entry {
            id: 1,
            path: "stdin".into(),
            kind: EntryKind::Stream,
            mode: 0o644,
            mtime: None,
        };
        assert_eq!(hex_of(&Record::Entry(stream)), "010105737464696e03a40300");
        let hard = Entry {
            id: 7,
            path: "b".into(),
            kind: EntryKind::HardLink { target: "a".into() },
            mode: 0o644,
            mtime: None,
        };
        assert_eq!(hex_of(&Record::Entry(hard)), "01070162040161a40300");
        assert_eq!(
            hex_of(&Record::Chunk { flags: 1, file_id: 5, offset: 256, payload: b"xy" }),
            "02010000000000000005000000000000010078 79".replace(' ', "")
        );
        assert_eq!(
            hex_of(&Record::FileEnd { file_id: 5, hash: [0xee; 32] }),
            format!("030000000000000005{}", "ee".repeat(32))
        );
        assert_eq!(hex_of(&Record::LaneEnd { entries: 3 }), "040000000000000003");
        assert_eq!(
            hex_of(&Record::ResumeAt { file_id: 5, offset: 1 << 20 }),
            "0500000000000000050000000000100000"
        );
        assert_eq!(
            hex_of(&Record::Hole { file_id: 5, offset: 1 << 20, len: 4096 }),
            "06000000000000000500000000001000000000000000001000"
        );
        let attrs = vec![Xattr { name: "user.a".into(), value: b"xy".to_vec() }];
        assert_eq!(
            hex_of(&Record::Xattrs { entry_id: 5, attrs }),
            "0700000000000000050106757365722e61027879"
        );
    }

    #[test]
    fn decode_errors() {
        assert_eq!(Record::decode(&[]), Err(DecodeError::Truncated));
        assert_eq!(Record::decode(&[0x7f]), Err(DecodeError::UnknownType(0x7f)));
        assert_eq!(Record::decode(&[TYPE_CHUNK, 0, 1]), Err(DecodeError::Truncated));
        let mut bad_flags = Vec::new();
        bad_flags.extend_from_slice(&chunk_header(0x80, 1, 0));
        assert_eq!(Record::decode(&bad_flags), Err(DecodeError::Invalid("chunk flags")));
        assert_eq!(Record::decode(&[TYPE_LANE_END, 0]), Err(DecodeError::Truncated));
        let mut long = vec![TYPE_LANE_END];
        long.extend_from_slice(&[0; 9]);
        assert_eq!(Record::decode(&long), Err(DecodeError::TrailingBytes(1)));
        assert_eq!(Record::decode(&[TYPE_RESUME_AT, 0, 0]), Err(DecodeError::Truncated));
        let mut empty_hole = vec![TYPE_HOLE];
        empty_hole.extend_from_slice(&[0; 24]);
        assert_eq!(Record::decode(&empty_hole), Err(DecodeError::Invalid("empty hole")));

        let mut e = file_entry();
        e.path = vec![b'x'; 5000];
        let mut out = Vec::new();
        Record::Entry(e).encode(&mut out);
        assert!(matches!(Record::decode(&out), Err(DecodeError::TooLong { what: "path", .. })));

        let mut e = file_entry();
        e.mtime = Some(Timestamp { secs: 0, nanos: 1_000_000_000 });
        out.clear();
        Record::Entry(e).encode(&mut out);
        assert_eq!(Record::decode(&out), Err(DecodeError::Invalid("timestamp")));
    }

    proptest! {
        #[test]
        fn records_round_trip(
            id in any::<u64>(), off in any::<u64>(), path in proptest::collection::vec(any::<u8>(), 0..64), size in any::<u64>(),
            payload in proptest::collection::vec(any::<u8>(), 0..2000), sha in any::<[u8; 32]>(),
            secs in any::<i64>(), nanos in 0u32..1_000_000_000,
        ) {
            let entry = Entry { id, path: path.clone(), kind: EntryKind::File { size }, mode: 0o600, mtime: Some(Timestamp { secs, nanos }) };
            let link = Entry { id, path: path.clone(), kind: EntryKind::Symlink { target: path.clone() }, mode: 0, mtime: None };
            let hard = Entry { id, path: path.clone(), kind: EntryKind::HardLink { target: path }, mode: 0o644, mtime: None };
            let records = [
                Record::Entry(entry),
                Record::Entry(link),
                Record::Entry(hard),
                Record::Chunk { flags: 0, file_id: id, offset: off, payload: &payload },
                Record::FileEnd { file_id: id, hash: sha },
                Record::LaneEnd { entries: off },
                Record::ResumeAt { file_id: id, offset: off },
                Record::Hole { file_id: id, offset: off, len: size.max(1) },
            ];
            for r in records {
                let mut out = Vec::new();
                r.encode(&mut out);
                prop_assert_eq!(Record::decode(&out).unwrap(), r);
            }
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Record::decode(&bytes);
        }
    }

    #[test]
    fn xattrs_records_hold_user_attributes_only() {
        let record = |attrs: Vec<Xattr>| {
            let mut out = Vec::new();
            Record::Xattrs { entry_id: 1, attrs }.encode(&mut out);
            out
        };
        let attr = |name: &str| Xattr { name: name.into(), value: vec![1] };
        let ok = record(vec![attr("user.a"), attr("user.b")]);
        assert!(
            matches!(Record::decode(&ok), Ok(Record::Xattrs { entry_id: 1, attrs }) if attrs.len() == 2)
        );
        for (attrs, why) in [
            (vec![], "empty list"),
            (vec![attr("security.selinux")], "another namespace"),
            (vec![attr("trusted.x")], "another namespace"),
            (vec![attr("system.posix_acl_access")], "an ACL"),
            (vec![attr("user.")], "no name after the namespace"),
            (vec![attr("user.a\0b")], "a NUL"),
            (vec![attr(&format!("user.{}", "n".repeat(251)))], "over 255 bytes"),
            (vec![attr("user.a"), attr("user.a")], "a name twice"),
        ] {
            assert!(Record::decode(&record(attrs)).is_err(), "refused: {why}");
        }
        let many: Vec<Xattr> = (0..=MAX_XATTRS).map(|i| attr(&format!("user.{i}"))).collect();
        assert!(Record::decode(&record(many)).is_err(), "too many");
        let big = vec![Xattr { name: "user.big".into(), value: vec![0; MAX_XATTRS_RECORD] }];
        assert!(
            matches!(Record::decode(&record(big)), Err(DecodeError::TooLong { .. })),
            "over the record's cap"
        );
        assert!(matches!(Record::decode(&[TYPE_XATTRS, 0, 0]), Err(DecodeError::Truncated)));
    }
}
