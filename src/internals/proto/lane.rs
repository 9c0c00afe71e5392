//! Data lanes: one sender → receiver QUIC stream each, carrying manifest entries and whole
//! files, record by record.
//!
//! Records are not sealed: the QUIC connection they travel on is the record layer, and its
//! TLS keys are bound to the PAKE before any lane is opened (`docs/security.md` §6).
//!
//! The sender's [`LaneWriter`] turns entries and file data into framed records and hashes each
//! file as it goes. The receiver's [`LaneReader`] decodes records in order and checks the
//! structure a well-behaved sender produces:
//!
//! 1. `ENTRY` (directory or symlink: complete by itself; file: opens it), optionally followed
//!    at once by one `XATTRS` for it (a file or directory only);
//! 2. for a file, optionally `RESUME_AT` (the receiver's partial copy continues: the driver
//!    must then hand the reader the hash state of the bytes it holds, [`LaneReader::resume`]),
//!    then `CHUNK`s with the file's id, consecutive offsets from 0 (or the resume offset),
//!    never beyond the announced size; then `FILE_END`, whose BLAKE3 hash must equal the hash
//!    of the whole file;
//! 3. finally `LANE_END` with the number of entries the lane carried.
//!
//! Any deviation is a [`LaneError`]; the driver stops the transfer and discards the file.

use super::tree::{TreeHasher, GROUP};
use crate::wire::data::{self, Entry, EntryKind, Record, Xattr, CHUNK_HEADER_LEN, FLAG_ZSTD};
use crate::wire::{frame, DecodeError};

/// Ways a lane can go wrong on the receiving side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaneError {
    /// A record could not be decoded.
    #[error("the sender sent a malformed record: {0}")]
    Decode(#[from] DecodeError),
    /// Records out of the allowed order.
    #[error("the sender broke the protocol: {0}")]
    Order(&'static str),
    /// A file's content did not match its hash.
    #[error("{path} arrived corrupted (its BLAKE3 hash did not match)")]
    Hash {
        /// The file's path, as shown.
        path: String,
    },
}

/// Where a chunk's payload starts in the record [`LaneWriter::chunk_at`] makes:
/// after the frame header and the chunk header.
pub const CHUNK_PAYLOAD_AT: usize = frame::HEADER_LEN + CHUNK_HEADER_LEN;

/// Builds the records of one lane. Each record is framed and appended to the buffer given
/// (except [`LaneWriter::chunk`], which replaces it), so that small records can be gathered
/// into one message as they are made.
#[derive(Debug)]
pub struct LaneWriter {
    lane: u32,
    entries: u64,
    file: Option<WriteFile>,
}

#[derive(Debug)]
struct WriteFile {
    id: u64,
    /// `None` for a stream: it ends where its writer says.
    size: Option<u64>,
    written: u64,
    hash: TreeHasher,
}

/// A file's hasher: files over one group yield their group CVs (the driver must take them,
/// [`LaneWriter::take_cvs`] / [`LaneReader::take_cvs`], or they pile up at 32 bytes per MiB).
fn file_hasher(size: u64) -> TreeHasher {
    if size > GROUP {
        TreeHasher::new().collect_cvs()
    } else {
        TreeHasher::new()
    }
}

impl LaneWriter {
    /// A writer for `lane` (≥ 1; lane 0 is the control stream).
    pub fn new(lane: u32) -> LaneWriter {
        LaneWriter { lane, entries: 0, file: None }
    }

    /// The bytes that open the lane's stream.
    pub fn preamble(&self) -> [u8; 4] {
        self.lane.to_be_bytes()
    }

    /// Writes the framed ENTRY record into `out`. A file entry must be followed by
    /// exactly `size` bytes of [`LaneWriter::chunk`]s and a [`LaneWriter::file_end`]; a
    /// stream entry by any number of chunks and its end.
    pub fn entry(&mut self, entry: &Entry, out: &mut Vec<u8>) {
        debug_assert!(self.file.is_none(), "entry while a file is open");
        let size = match entry.kind {
            EntryKind::File { size } => Some(Some(size)),
            EntryKind::Stream => Some(None),
            _ => None,
        };
        if let Some(size) = size {
            let hash = file_hasher(size.unwrap_or(0));
            self.file = Some(WriteFile { id: entry.id, size, written: 0, hash });
        }
        self.entries += 1;
        framed(out, |buf| Record::Entry(entry.clone()).encode(buf));
    }

    /// Writes the XATTRS record of the entry just written (a file or directory), before
    /// anything else of it; `attrs` must pass [`data::validate_xattrs`] and encode within
    /// [`data::MAX_XATTRS_RECORD`].
    pub fn xattrs(&mut self, entry_id: u64, attrs: Vec<Xattr>, out: &mut Vec<u8>) {
        framed(out, |buf| Record::Xattrs { entry_id, attrs }.encode(buf));
    }

    /// Writes the RESUME_AT record of the file just entered: the receiver holds its first
    /// `hash.len()` bytes (0 < len ≤ size), whose hash state is `hash`; the chunks that follow
    /// start there.
    pub fn resume(&mut self, hash: TreeHasher, out: &mut Vec<u8>) {
        let Some(file) = self.file.as_mut() else {
            debug_assert!(false, "resume without an open file");
            return;
        };
        let Some(size) = file.size else {
            debug_assert!(false, "a stream is never resumed");
            return;
        };
        debug_assert!(file.written == 0 && hash.len() <= size, "resume out of place");
        let (file_id, offset) = (file.id, hash.len());
        file.written = offset;
        file.hash = if size > GROUP { hash.collect_cvs() } else { hash };
        framed(out, |buf| Record::ResumeAt { file_id, offset }.encode(buf));
    }

    /// CVs of the open file's groups completed since the last call, with the first's index.
    pub fn take_cvs(&mut self) -> (u64, Vec<blake3::hazmat::ChainingValue>) {
        self.file.as_mut().map(|f| f.hash.take_cvs()).unwrap_or_default()
    }

    /// Writes a CHUNK record with the next `payload` bytes of the open file. `compressed`, if
    /// given, is a zstd frame of `payload` to send instead (the hash covers `payload`).
    pub fn chunk(&mut self, payload: &[u8], compressed: Option<&[u8]>, out: &mut Vec<u8>) {
        out.clear();
        out.reserve(CHUNK_PAYLOAD_AT + payload.len());
        out.resize(CHUNK_PAYLOAD_AT, 0);
        out.extend_from_slice(payload);
        self.chunk_at(out, 0, compressed);
    }

    /// Turns the end of `buf` from `at` into a CHUNK record without copying its payload:
    /// `buf[at..]` holds [`CHUNK_PAYLOAD_AT`] bytes of room (any content), then the open file's
    /// next bytes; what precedes `at` (other records) is left alone. `compressed`, if given, is
    /// a zstd frame of those bytes to send instead (the hash covers the original).
    pub fn chunk_at(&mut self, buf: &mut Vec<u8>, at: usize, compressed: Option<&[u8]>) {
        let Some(file) = self.file.as_mut() else {
            debug_assert!(false, "chunk without an open file");
            return;
        };
        debug_assert!(buf.len() > at + CHUNK_PAYLOAD_AT, "chunk without room or payload");
        let payload = &buf[at + CHUNK_PAYLOAD_AT..];
        debug_assert!(
            file.size.is_none_or(|size| file.written + payload.len() as u64 <= size),
            "chunk beyond file size"
        );
        file.hash.update(payload);
        let (id, offset) = (file.id, file.written);
        file.written += payload.len() as u64;
        let flags = match compressed {
            Some(c) => {
                buf.truncate(at + CHUNK_PAYLOAD_AT);
                buf.extend_from_slice(c);
                FLAG_ZSTD
            }
            None => 0,
        };
        let record = &mut buf[at..];
        record[frame::HEADER_LEN..CHUNK_PAYLOAD_AT]
            .copy_from_slice(&data::chunk_header(flags, id, offset));
        frame::finish(record);
    }

    /// Writes a HOLE record: the open file's next `len` bytes (1 to [`data::MAX_HOLE`]) are
    /// zeros its source does not store.
    pub fn hole(&mut self, len: u64, out: &mut Vec<u8>) {
        let Some(file) = self.file.as_mut() else {
            debug_assert!(false, "hole without an open file");
            return;
        };
        debug_assert!(len > 0 && len <= data::MAX_HOLE, "hole of {len} bytes");
        debug_assert!(
            file.size.is_none_or(|size| file.written + len <= size),
            "hole beyond the size"
        );
        file.hash.update_zeros(len);
        let (file_id, offset) = (file.id, file.written);
        file.written += len;
        framed(out, |buf| Record::Hole { file_id, offset, len }.encode(buf));
    }

    /// Bytes of the open file written so far.
    pub fn file_written(&self) -> u64 {
        self.file.as_ref().map_or(0, |f| f.written)
    }

    /// Writes the FILE_END record of the open file; returns its BLAKE3 hash.
    pub fn file_end(&mut self, out: &mut Vec<u8>) -> [u8; 32] {
        let Some(file) = self.file.take() else {
            debug_assert!(false, "file_end without an open file");
            return [0; 32];
        };
        debug_assert!(
            file.size.is_none_or(|s| s == file.written),
            "file_end before the whole file"
        );
        let hash = file.hash.finalize();
        framed(out, |buf| Record::FileEnd { file_id: file.id, hash }.encode(buf));
        hash
    }

    /// Writes the LANE_END record; the stream must be finished after it.
    pub fn lane_end(&mut self, out: &mut Vec<u8>) {
        let entries = self.entries;
        framed(out, |buf| Record::LaneEnd { entries }.encode(buf));
    }
}

/// Appends one frame whose body `fill` writes to `out`.
fn framed(out: &mut Vec<u8>, fill: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.extend_from_slice(&[0; frame::HEADER_LEN]);
    fill(out);
    frame::finish(&mut out[at..]);
}

/// What one record means for the receiving application.
#[derive(Debug, PartialEq, Eq)]
pub enum LaneEvent<'a> {
    /// A directory or symlink to create, or a file to start (its data follows).
    Entry(Entry),
    /// The file just entered continues a partial copy the receiver holds, from `offset`: the
    /// driver checks that it offered exactly that and calls [`LaneReader::resume`].
    ResumeAt {
        /// The file's entry id.
        file_id: u64,
        /// Bytes held.
        offset: u64,
    },
    /// The extended attributes of the entry just entered.
    Xattrs(Vec<Xattr>),
    /// The next bytes of the open file.
    Data(&'a [u8]),
    /// The next bytes of the open file are this many zeros, stored as a hole.
    Hole(u64),
    /// The open file is complete and its hash verified: commit it.
    FileEnd {
        /// The file's entry id.
        file_id: u64,
        /// Its BLAKE3 hash.
        hash: [u8; 32],
        /// Its size (what a stream's size turned out to be).
        size: u64,
    },
    /// The lane is complete.
    End,
}

/// Decodes and checks the records of one lane.
#[derive(Debug)]
pub struct LaneReader {
    max_chunk: usize,
    entries: u64,
    ended: bool,
    file: Option<ReadFile>,
    scratch: Vec<u8>,
    unzstd: Unzstd,
    /// Chunk payload bytes received, as sent (compressed or not).
    wire: u64,
    /// The entry just entered, while its XATTRS may still come.
    attributable: Option<u64>,
}

/// A zstd decompression context, kept for the lane's life.
#[derive(Default)]
struct Unzstd(zstd::bulk::Decompressor<'static>);

impl std::fmt::Debug for Unzstd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Unzstd")
    }
}

#[derive(Debug)]
struct ReadFile {
    id: u64,
    path: Vec<u8>,
    /// `u64::MAX` for a stream, which ends at its FILE_END.
    size: u64,
    stream: bool,
    received: u64,
    hash: Check,
    /// Where the file stands before its first chunk.
    start: Start,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Right after the ENTRY: a RESUME_AT may come.
    Fresh,
    /// After RESUME_AT, waiting for [`LaneReader::resume`].
    AwaitingState,
    /// Chunks (or the end) may come.
    Flowing,
}

/// What a file's content is checked against at its end. One per lane, so its size does not
/// matter.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Check {
    /// The hash of what arrived (continuing what was held).
    Hashing(TreeHasher),
    /// A partial copy that was already complete: its hash, as the receiver computed it.
    Held([u8; 32]),
}

/// The state a resumed file continues from, handed to [`LaneReader::resume`]. One per file
/// being resumed, so its size does not matter.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Held {
    /// The hash state of the bytes held (`len()` equals the offset).
    Prefix(TreeHasher),
    /// The whole file is held; this is its BLAKE3 hash.
    Whole([u8; 32]),
}

impl LaneReader {
    /// A reader for `lane`, accepting chunks of at most `max_chunk` bytes (decompressed).
    pub fn new(max_chunk: usize) -> LaneReader {
        LaneReader {
            max_chunk,
            entries: 0,
            ended: false,
            file: None,
            scratch: Vec::new(),
            unzstd: Unzstd::default(),
            wire: 0,
            attributable: None,
        }
    }

    /// Chunk payload bytes received so far, as they travelled (compressed or not).
    pub fn wire_bytes(&self) -> u64 {
        self.wire
    }

    /// Entries seen so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// True after a valid LANE_END.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Decodes and checks one frame body (a record).
    pub fn handle<'a>(&'a mut self, body: &'a [u8]) -> Result<LaneEvent<'a>, LaneError> {
        if self.ended {
            return Err(LaneError::Order("record after the lane end"));
        }
        let record = Record::decode(body)?;
        let attributable = self.attributable.take();
        match record {
            Record::Xattrs { entry_id, attrs } => {
                if attributable != Some(entry_id) {
                    return Err(LaneError::Order("xattrs not right after their file or directory"));
                }
                Ok(LaneEvent::Xattrs(attrs))
            }
            Record::Entry(entry) => {
                if self.file.is_some() {
                    return Err(LaneError::Order("entry before the previous file ended"));
                }
                let (size, stream) = match entry.kind {
                    EntryKind::File { size } => (Some(size), false),
                    EntryKind::Stream => (Some(u64::MAX), true),
                    _ => (None, false),
                };
                if let Some(size) = size {
                    self.file = Some(ReadFile {
                        id: entry.id,
                        path: entry.path.clone(),
                        size,
                        stream,
                        received: 0,
                        hash: Check::Hashing(file_hasher(if stream { 0 } else { size })),
                        start: Start::Fresh,
                    });
                }
                self.entries += 1;
                let attributed = matches!(entry.kind, EntryKind::File { .. } | EntryKind::Dir);
                self.attributable = attributed.then_some(entry.id);
                Ok(LaneEvent::Entry(entry))
            }
            Record::ResumeAt { file_id, offset } => {
                let file = self.file.as_mut().ok_or(LaneError::Order("resume outside a file"))?;
                if file_id != file.id || file.start != Start::Fresh {
                    return Err(LaneError::Order("resume not right after its entry"));
                }
                if file.stream {
                    return Err(LaneError::Order("resume of a stream"));
                }
                if offset == 0 || offset > file.size {
                    return Err(LaneError::Order("resume offset out of bounds"));
                }
                file.start = Start::AwaitingState;
                file.received = offset;
                Ok(LaneEvent::ResumeAt { file_id, offset })
            }
            Record::Chunk { flags, file_id, offset, payload } => {
                let file = self.file.as_mut().ok_or(LaneError::Order("chunk outside a file"))?;
                flowing(file)?;
                if file_id != file.id || offset != file.received {
                    return Err(LaneError::Order("chunk out of sequence"));
                }
                let data: &[u8] = if flags & FLAG_ZSTD != 0 {
                    // Into the same buffer every time; more than `max_chunk` bytes fail.
                    self.scratch.clear();
                    self.scratch.reserve(self.max_chunk);
                    self.unzstd
                        .0
                        .decompress_to_buffer(payload, &mut self.scratch)
                        .map_err(|_| LaneError::Decode(DecodeError::Invalid("zstd payload")))?;
                    &self.scratch
                } else {
                    payload
                };
                if data.is_empty() || data.len() > self.max_chunk {
                    return Err(LaneError::Order("chunk size out of bounds"));
                }
                if file.received.checked_add(data.len() as u64).is_none_or(|n| n > file.size) {
                    return Err(LaneError::Order("more data than the file's size"));
                }
                let Check::Hashing(hasher) = &mut file.hash else {
                    return Err(LaneError::Order("data for a file held whole"));
                };
                file.received += data.len() as u64;
                hasher.update(data);
                self.wire += payload.len() as u64;
                Ok(LaneEvent::Data(data))
            }
            Record::Hole { file_id, offset, len } => {
                let file = self.file.as_mut().ok_or(LaneError::Order("hole outside a file"))?;
                flowing(file)?;
                if file_id != file.id || offset != file.received {
                    return Err(LaneError::Order("hole out of sequence"));
                }
                if len > data::MAX_HOLE {
                    return Err(LaneError::Order("hole too long"));
                }
                if file.received.checked_add(len).is_none_or(|n| n > file.size) {
                    return Err(LaneError::Order("more data than the file's size"));
                }
                let Check::Hashing(hasher) = &mut file.hash else {
                    return Err(LaneError::Order("data for a file held whole"));
                };
                file.received += len;
                hasher.update_zeros(len);
                Ok(LaneEvent::Hole(len))
            }
            Record::FileEnd { file_id, hash } => {
                let mut file =
                    self.file.take().ok_or(LaneError::Order("file end outside a file"))?;
                flowing(&mut file)?;
                if file_id != file.id || (!file.stream && file.received != file.size) {
                    return Err(LaneError::Order("file end before the whole file"));
                }
                let got = match &file.hash {
                    Check::Hashing(h) => h.finalize(),
                    Check::Held(root) => *root,
                };
                if got != hash {
                    return Err(LaneError::Hash {
                        path: crate::transfer::fs::shown(&file.path).into_owned(),
                    });
                }
                Ok(LaneEvent::FileEnd { file_id, hash, size: file.received })
            }
            Record::LaneEnd { entries } => {
                if self.file.is_some() {
                    return Err(LaneError::Order("lane end inside a file"));
                }
                if entries != self.entries {
                    return Err(LaneError::Order("lane end with a wrong entry count"));
                }
                self.ended = true;
                Ok(LaneEvent::End)
            }
        }
    }
}

/// A file's first chunk (or its end) may come only once its resume state, if any, is in.
fn flowing(file: &mut ReadFile) -> Result<(), LaneError> {
    match file.start {
        Start::AwaitingState => Err(LaneError::Order("data before the resume state")),
        Start::Fresh | Start::Flowing => {
            file.start = Start::Flowing;
            Ok(())
        }
    }
}

impl LaneReader {
    /// After [`LaneEvent::ResumeAt`]: the hash state of the bytes the receiver holds. A prefix
    /// must be exactly the resume offset long; a whole file, the file's size.
    pub fn resume(&mut self, held: Held) -> Result<(), LaneError> {
        let file = self.file.as_mut().ok_or(LaneError::Order("resume outside a file"))?;
        if file.start != Start::AwaitingState {
            return Err(LaneError::Order("resume state without a resume"));
        }
        file.hash = match held {
            Held::Prefix(h) if h.len() == file.received => {
                Check::Hashing(if file.size > GROUP { h.collect_cvs() } else { h })
            }
            Held::Whole(root) if file.received == file.size => Check::Held(root),
            _ => return Err(LaneError::Order("resume state of another length")),
        };
        file.start = Start::Flowing;
        Ok(())
    }

    /// CVs of the open file's groups completed since the last call, with the first's index.
    pub fn take_cvs(&mut self) -> (u64, Vec<blake3::hazmat::ChainingValue>) {
        match self.file.as_mut().map(|f| &mut f.hash) {
            Some(Check::Hashing(h)) => h.take_cvs(),
            _ => (0, Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::data::Timestamp;

    fn file(id: u64, size: u64) -> Entry {
        Entry {
            id,
            path: format!("dir/f{id}").into(),
            kind: EntryKind::File { size },
            mode: 0o644,
            mtime: Some(Timestamp { secs: 1, nanos: 0 }),
        }
    }

    /// Frames the writer produced, split back into bodies.
    fn bodies(frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
        frames.iter().map(|f| f[frame::HEADER_LEN..].to_vec()).collect()
    }

    fn write_lane(w: &mut LaneWriter, files: &[(u64, &[u8])]) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let mut out = Vec::new();
        for (id, content) in files {
            w.entry(&file(*id, content.len() as u64), &mut out);
            frames.push(std::mem::take(&mut out));
            for piece in content.chunks(3) {
                w.chunk(piece, None, &mut out);
                frames.push(std::mem::take(&mut out));
            }
            w.file_end(&mut out);
            frames.push(std::mem::take(&mut out));
        }
        w.lane_end(&mut out);
        frames.push(out);
        frames
    }

    #[test]
    fn a_lane_round_trips_files_and_verifies_hashes() {
        let mut w = LaneWriter::new(1);
        assert_eq!(w.preamble(), [0, 0, 0, 1]);
        let frames = write_lane(&mut w, &[(1, b"hello world"), (2, b""), (3, b"abc")]);
        let mut reader = LaneReader::new(1 << 20);
        let mut got: Vec<u8> = Vec::new();
        let mut ends = Vec::new();
        for body in bodies(&frames) {
            match reader.handle(&body).unwrap() {
                LaneEvent::Data(d) => got.extend_from_slice(d),
                LaneEvent::FileEnd { file_id, .. } => ends.push(file_id),
                LaneEvent::Entry(_) | LaneEvent::End => {}
                LaneEvent::ResumeAt { .. } | LaneEvent::Hole(_) | LaneEvent::Xattrs(_) => {
                    panic!("no resume, hole or xattrs here")
                }
            }
        }
        assert_eq!(got, b"hello worldabc");
        assert_eq!(ends, [1, 2, 3]);
        assert!(reader.is_ended());
        assert_eq!(reader.entries(), 3);
    }

    /// A file resumed at a group boundary (state rebuilt from CVs) or at any offset (state
    /// from the held bytes) arrives whole and verified; the group CVs come out on both sides.
    #[test]
    fn a_resumed_file_continues_and_verifies_the_whole_hash() {
        let g = GROUP as usize;
        let content: Vec<u8> = (0..3 * g + 100).map(|i| (i % 251) as u8).collect();
        let mut full = TreeHasher::new().collect_cvs();
        full.update(&content);
        let (_, cvs) = full.take_cvs();
        assert_eq!(cvs.len(), 3);
        for held_len in [g, 2 * g, 2 * g + 7] {
            let held = |h: TreeHasher| h;
            let prefix = if held_len % g == 0 {
                TreeHasher::resume(cvs[..held_len / g].iter().copied())
            } else {
                let mut h = TreeHasher::new();
                h.update(&content[..held_len]);
                h
            };
            let mut w = LaneWriter::new(1);
            let mut out = Vec::new();
            let mut frames = Vec::new();
            w.entry(&file(1, content.len() as u64), &mut out);
            frames.push(std::mem::take(&mut out));
            w.resume(held(prefix.clone()), &mut out);
            frames.push(std::mem::take(&mut out));
            let mut sent_cvs = Vec::new();
            for piece in content[held_len..].chunks(300_000) {
                w.chunk(piece, None, &mut out);
                frames.push(std::mem::take(&mut out));
                sent_cvs.extend(w.take_cvs().1);
            }
            w.file_end(&mut out);
            frames.push(std::mem::take(&mut out));
            assert_eq!(sent_cvs, cvs[held_len / g..], "the sender's new CVs");

            let mut reader = LaneReader::new(1 << 20);
            let mut got = content[..held_len].to_vec();
            let mut got_cvs = Vec::new();
            for body in bodies(&frames) {
                match reader.handle(&body).unwrap() {
                    LaneEvent::ResumeAt { offset, .. } => {
                        assert_eq!(offset, held_len as u64);
                        reader.resume(Held::Prefix(prefix.clone())).unwrap();
                    }
                    LaneEvent::Data(d) => got.extend_from_slice(d),
                    LaneEvent::Hole(_) | LaneEvent::Xattrs(_) => panic!("no hole or xattrs here"),
                    LaneEvent::FileEnd { .. } | LaneEvent::Entry(_) | LaneEvent::End => {}
                }
                got_cvs.extend(reader.take_cvs().1);
            }
            assert_eq!(got, content);
            assert_eq!(got_cvs, cvs[held_len / g..], "the receiver's new CVs");
        }
    }

    /// A hard link is complete by itself, like a directory: no data may follow it, and the
    /// next entry may.
    #[test]
    fn a_hard_link_carries_no_data() {
        let link = |id| Entry {
            id,
            path: "t/b".into(),
            kind: EntryKind::HardLink { target: "t/a".into() },
            mode: 0o644,
            mtime: None,
        };
        let mut w = LaneWriter::new(1);
        let mut frames = Vec::new();
        for id in [1, 2] {
            let mut out = Vec::new();
            w.entry(&link(id), &mut out);
            frames.push(out);
        }
        let mut out = Vec::new();
        w.lane_end(&mut out);
        frames.push(out);
        let mut reader = LaneReader::new(1 << 20);
        let events: Vec<_> = bodies(&frames)
            .iter()
            .map(|b| matches!(reader.handle(b).unwrap(), LaneEvent::Entry(_)))
            .collect();
        assert_eq!(events, [true, true, false]);

        let mut reader = LaneReader::new(1 << 20);
        let mut out = Vec::new();
        LaneWriter::new(1).entry(&link(1), &mut out);
        reader.handle(&bodies(&[out])[0]).unwrap();
        let mut chunk = Vec::new();
        Record::Chunk { flags: 0, file_id: 1, offset: 0, payload: b"x" }.encode(&mut chunk);
        assert!(reader.handle(&chunk).is_err(), "data after a link");
    }

    /// A stream (size unknown) ends at its FILE_END, whatever its length, and is checked
    /// against its hash like a file; it cannot be resumed, and a wrong hash is caught.
    #[test]
    fn a_stream_ends_where_its_writer_says_and_is_verified() {
        let stream = |id| Entry {
            id,
            path: "stdin".into(),
            kind: EntryKind::Stream,
            mode: 0o644,
            mtime: None,
        };
        let content: Vec<u8> = (0..3 * GROUP as usize + 5).map(|i| (i % 253) as u8).collect();
        let mut w = LaneWriter::new(1);
        let mut out = Vec::new();
        let mut frames = Vec::new();
        w.entry(&stream(1), &mut out);
        frames.push(std::mem::take(&mut out));
        for piece in content.chunks(65_536) {
            w.chunk(piece, None, &mut out);
            frames.push(std::mem::take(&mut out));
        }
        let hash = w.file_end(&mut out);
        frames.push(std::mem::take(&mut out));
        assert_eq!(hash, *blake3::hash(&content).as_bytes());
        w.lane_end(&mut out);
        frames.push(out);
        let mut reader = LaneReader::new(1 << 20);
        let mut got = Vec::new();
        let mut size = None;
        for body in bodies(&frames) {
            match reader.handle(&body).unwrap() {
                LaneEvent::Data(d) => got.extend_from_slice(d),
                LaneEvent::FileEnd { size: s, .. } => size = Some(s),
                _ => {}
            }
        }
        assert_eq!(got, content);
        assert_eq!(size, Some(content.len() as u64));

        // A wrong hash at the end, and a resume, are refused.
        let bodies = bodies(&frames);
        let mut reader = LaneReader::new(1 << 20);
        for body in &bodies[..bodies.len() - 2] {
            reader.handle(body).unwrap();
        }
        let mut bad = Vec::new();
        Record::FileEnd { file_id: 1, hash: [0; 32] }.encode(&mut bad);
        assert!(matches!(reader.handle(&bad), Err(LaneError::Hash { .. })));
        let mut reader = LaneReader::new(1 << 20);
        reader.handle(&bodies[0]).unwrap();
        let mut resume = Vec::new();
        Record::ResumeAt { file_id: 1, offset: 10 }.encode(&mut resume);
        assert_eq!(reader.handle(&resume), Err(LaneError::Order("resume of a stream")));
    }

    /// Holes stand for zeros: the reader hashes them as such, so the file's hash is that of
    /// its whole content; a hole past the size, out of place or over the cap is refused.
    #[test]
    fn holes_are_zeros_in_the_hash_and_keep_to_the_file() {
        let g = GROUP as usize;
        let mut content = vec![0u8; 3 * g + 10];
        content[g + 5..g + 9].copy_from_slice(b"data");
        content[3 * g..].fill(7);
        let mut w = LaneWriter::new(1);
        let mut out = Vec::new();
        let mut frames = Vec::new();
        w.entry(&file(1, content.len() as u64), &mut out);
        frames.push(std::mem::take(&mut out));
        w.hole(g as u64 + 5, &mut out);
        frames.push(std::mem::take(&mut out));
        w.chunk(&content[g + 5..g + 9], None, &mut out);
        frames.push(std::mem::take(&mut out));
        w.hole((3 * g - (g + 9)) as u64, &mut out);
        frames.push(std::mem::take(&mut out));
        w.chunk(&content[3 * g..], None, &mut out);
        frames.push(std::mem::take(&mut out));
        assert_eq!(w.file_end(&mut out), *blake3::hash(&content).as_bytes());
        frames.push(std::mem::take(&mut out));
        let mut reader = LaneReader::new(1 << 20);
        let mut got = Vec::new();
        for body in bodies(&frames) {
            match reader.handle(&body).unwrap() {
                LaneEvent::Data(d) => got.extend_from_slice(d),
                LaneEvent::Hole(n) => got.resize(got.len() + n as usize, 0),
                _ => {}
            }
        }
        assert_eq!(got, content);

        let bodies = bodies(&frames);
        let hole = |offset, len| {
            let mut b = Vec::new();
            Record::Hole { file_id: 1, offset, len }.encode(&mut b);
            b
        };
        for (bad, why) in [
            (hole(0, content.len() as u64 + 1), "more data than the file's size"),
            (hole(3, 10), "hole out of sequence"),
            (hole(0, data::MAX_HOLE + 1), "hole too long"),
        ] {
            let mut reader = LaneReader::new(1 << 20);
            reader.handle(&bodies[0]).unwrap();
            assert_eq!(reader.handle(&bad), Err(LaneError::Order(why)));
        }
    }

    /// A file held whole is checked against the hash the receiver holds for it.
    #[test]
    fn a_file_held_whole_ends_at_once_and_is_checked() {
        let content = b"complete already";
        let mut prefix = TreeHasher::new();
        prefix.update(content);
        let root = prefix.finalize();
        for (held_root, ok) in [(root, true), ([0; 32], false)] {
            let mut w = LaneWriter::new(1);
            let mut out = Vec::new();
            let mut frames = Vec::new();
            w.entry(&file(1, content.len() as u64), &mut out);
            frames.push(std::mem::take(&mut out));
            w.resume(prefix.clone(), &mut out);
            frames.push(std::mem::take(&mut out));
            w.file_end(&mut out);
            frames.push(std::mem::take(&mut out));
            let mut reader = LaneReader::new(1 << 20);
            let mut result = Ok(());
            for body in bodies(&frames) {
                match reader.handle(&body) {
                    Ok(LaneEvent::ResumeAt { .. }) => {
                        reader.resume(Held::Whole(held_root)).unwrap();
                    }
                    Ok(_) => {}
                    Err(e) => result = Err(e),
                }
            }
            assert_eq!(result.is_ok(), ok, "{result:?}");
        }
    }

    /// Records made into one buffer, a chunk among them made in place after others, are the
    /// same frames, back to back, as records made one by one.
    #[test]
    fn records_gather_into_one_buffer() {
        let content = vec![b'x'; 3000];
        // The file's two chunks: the first sent as it is, the second compressed.
        let (first, second) = content.split_at(1000);
        let packed = zstd::bulk::compress(second, 1).unwrap();
        let mut alone = Vec::new();
        let mut one = LaneWriter::new(1);
        let mut out = Vec::new();
        one.entry(&file(4, content.len() as u64), &mut out);
        alone.extend(std::mem::take(&mut out));
        one.chunk(first, None, &mut out);
        alone.extend(std::mem::take(&mut out));
        one.chunk(second, Some(&packed), &mut out);
        alone.extend(std::mem::take(&mut out));
        one.file_end(&mut out);
        alone.extend(std::mem::take(&mut out));

        let mut gathered = b"earlier records".to_vec();
        let start = gathered.len();
        let mut two = LaneWriter::new(1);
        two.entry(&file(4, content.len() as u64), &mut gathered);
        for (piece, compressed) in [(first, None), (second, Some(&packed[..]))] {
            let at = gathered.len();
            gathered.resize(at + CHUNK_PAYLOAD_AT, 0xee);
            gathered.extend_from_slice(piece);
            two.chunk_at(&mut gathered, at, compressed);
        }
        two.file_end(&mut gathered);
        assert_eq!(gathered[start..], alone[..]);
        assert_eq!(&gathered[..start], b"earlier records", "what came before is left alone");
    }

    #[test]
    fn compressed_chunks_are_inflated_and_hashed() {
        let mut w = LaneWriter::new(2);
        let content = vec![b'a'; 5000];
        let packed = zstd::bulk::compress(&content, 3).unwrap();
        let mut out = Vec::new();
        let mut frames = Vec::new();
        w.entry(&file(9, 5000), &mut out);
        frames.push(std::mem::take(&mut out));
        w.chunk(&content, Some(&packed), &mut out);
        assert!(out.len() < 1000, "the compressed form is what is sent");
        frames.push(std::mem::take(&mut out));
        w.file_end(&mut out);
        frames.push(std::mem::take(&mut out));
        let mut reader = LaneReader::new(1 << 20);
        let mut got = Vec::new();
        for body in bodies(&frames) {
            if let LaneEvent::Data(d) = reader.handle(&body).unwrap() {
                got.extend_from_slice(d);
            }
        }
        assert_eq!(got, content);
    }

    #[test]
    fn a_bomb_over_the_chunk_size_is_refused() {
        let mut w = LaneWriter::new(1);
        let content = vec![0u8; 64 << 10];
        let packed = zstd::bulk::compress(&content, 3).unwrap();
        let mut out = Vec::new();
        w.entry(&file(1, content.len() as u64), &mut out);
        let mut reader = LaneReader::new(16 << 10);
        reader.handle(&out[4..]).unwrap();
        w.chunk(&content, Some(&packed), &mut out);
        assert!(reader.handle(&out[4..]).is_err());
    }

    /// Builds a lane by hand, to express what a malicious sender could send.
    fn attrs() -> Vec<Xattr> {
        vec![Xattr { name: "user.k".into(), value: b"v".to_vec() }]
    }

    /// A file's and a directory's attributes come right after their entries, and a resume
    /// may follow them.
    #[test]
    fn xattrs_follow_their_entry() {
        let dir = Entry { id: 1, path: "d".into(), kind: EntryKind::Dir, mode: 0o755, mtime: None };
        let bodies = forged(&[
            Record::Entry(dir),
            Record::Xattrs { entry_id: 1, attrs: attrs() },
            Record::Entry(file(2, 1)),
            Record::Xattrs { entry_id: 2, attrs: attrs() },
            Record::Chunk { flags: 0, file_id: 2, offset: 0, payload: b"x" },
        ]);
        let mut reader = LaneReader::new(1 << 20);
        let mut seen = 0;
        for body in &bodies {
            if let LaneEvent::Xattrs(list) = reader.handle(body).unwrap() {
                assert_eq!(list, attrs());
                seen += 1;
            }
        }
        assert_eq!(seen, 2);
    }

    fn forged(records: &[Record]) -> Vec<Vec<u8>> {
        records
            .iter()
            .map(|r| {
                let mut buf = Vec::new();
                r.encode(&mut buf);
                buf
            })
            .collect()
    }

    fn first_error(bodies: Vec<Vec<u8>>) -> LaneError {
        let mut reader = LaneReader::new(1 << 20);
        for b in bodies {
            if let Err(e) = reader.handle(&b) {
                return e;
            }
        }
        panic!("the lane was accepted");
    }

    #[test]
    fn malicious_sequences_are_rejected() {
        let sha = |d: &[u8]| -> [u8; 32] { blake3::hash(d).into() };
        let cases: Vec<(Vec<Record>, &str)> = vec![
            (vec![Record::Chunk { flags: 0, file_id: 1, offset: 0, payload: b"x" }], "outside"),
            (
                vec![
                    Record::Entry(file(1, 2)),
                    Record::Chunk { flags: 0, file_id: 1, offset: 1, payload: b"x" },
                ],
                "sequence",
            ),
            (
                vec![
                    Record::Entry(file(1, 1)),
                    Record::Chunk { flags: 0, file_id: 1, offset: 0, payload: b"xy" },
                ],
                "more data",
            ),
            (
                vec![
                    Record::Entry(file(1, 2)),
                    Record::Chunk { flags: 0, file_id: 1, offset: 0, payload: b"x" },
                    Record::FileEnd { file_id: 1, hash: sha(b"x") },
                ],
                "before the whole",
            ),
            (
                vec![
                    Record::Entry(file(1, 1)),
                    Record::Chunk { flags: 0, file_id: 1, offset: 0, payload: b"x" },
                    Record::FileEnd { file_id: 1, hash: sha(b"y") },
                ],
                "corrupted",
            ),
            (vec![Record::Entry(file(1, 1)), Record::Entry(file(2, 1))], "previous file"),
            (vec![Record::LaneEnd { entries: 5 }], "entry count"),
            (vec![Record::ResumeAt { file_id: 1, offset: 1 }], "outside a file"),
            (
                vec![
                    Record::Entry(file(1, 5)),
                    Record::Chunk { flags: 0, file_id: 1, offset: 0, payload: b"x" },
                    Record::ResumeAt { file_id: 1, offset: 1 },
                ],
                "right after its entry",
            ),
            (
                vec![Record::Entry(file(1, 5)), Record::ResumeAt { file_id: 1, offset: 6 }],
                "out of bounds",
            ),
            (
                vec![Record::Entry(file(1, 5)), Record::ResumeAt { file_id: 1, offset: 0 }],
                "out of bounds",
            ),
            (
                vec![
                    Record::Entry(file(1, 5)),
                    Record::ResumeAt { file_id: 1, offset: 2 },
                    Record::Chunk { flags: 0, file_id: 1, offset: 2, payload: b"x" },
                ],
                "before the resume state",
            ),
            (
                vec![Record::LaneEnd { entries: 0 }, Record::LaneEnd { entries: 0 }],
                "after the lane end",
            ),
            (vec![Record::Xattrs { entry_id: 1, attrs: attrs() }], "xattrs not right after"),
            (
                vec![Record::Entry(file(1, 5)), Record::Xattrs { entry_id: 2, attrs: attrs() }],
                "xattrs not right after",
            ),
            (
                vec![
                    Record::Entry(file(1, 5)),
                    Record::Xattrs { entry_id: 1, attrs: attrs() },
                    Record::Xattrs { entry_id: 1, attrs: attrs() },
                ],
                "xattrs not right after",
            ),
            (
                vec![
                    Record::Entry(file(1, 5)),
                    Record::Chunk { flags: 0, file_id: 1, offset: 0, payload: b"x" },
                    Record::Xattrs { entry_id: 1, attrs: attrs() },
                ],
                "xattrs not right after",
            ),
            (
                vec![
                    Record::Entry(Entry {
                        id: 1,
                        path: "l".into(),
                        kind: EntryKind::Symlink { target: "t".into() },
                        mode: 0,
                        mtime: None,
                    }),
                    Record::Xattrs { entry_id: 1, attrs: attrs() },
                ],
                "xattrs not right after",
            ),
        ];
        for (records, want) in cases {
            let err = first_error(forged(&records));
            assert!(err.to_string().contains(want), "{err} should mention {want:?}");
        }
    }
}
