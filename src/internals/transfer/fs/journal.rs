//! The journal beside a large partial file: what lets a receiver resume it without reading it.
//!
//! A partial file (`<id>.part` in the destination's state directory) bigger than
//! [`super::SMALL`] gets `<id>.journal`:
//!
//! ```text
//! offset 0    mark slot (77 bytes, rewritten in place before and after every write of data)
//!               len u64 ‖ ctime secs i64 ‖ ctime nanos u32 ‖ cvs u64 ‖ pending u64 ‖ done u8 ‖
//!               root [32] ‖ check [8]
//! offset 77   header (written once)
//!               magic "P2PCJRN4" ‖ boot id [16] ‖ dev u64 ‖ ino u64 ‖ size u64 ‖
//!               mtime secs i64 ‖ mtime nanos u32 (u32::MAX: none) ‖ path len u16 ‖ path ‖
//!               check [8]
//! then        CV records, appended as groups complete
//!               first u64 ‖ n u16 ‖ n × CV [32] ‖ check [8]
//! ```
//!
//! Integers are big-endian. Every check is the first 8 bytes of a BLAKE3 hash: of the slot's
//! fields, of the header, and, for a record, of the previous record's check (the header's for
//! the first) and the record, so records form a chain. A reader stops at the first record that
//! is torn, corrupt, out of sequence (`first` must equal the CVs read so far) or spliced from
//! elsewhere, and keeps what came before.
//!
//! The journal says what the receiver wrote; it is never proof. The mark slot records the
//! partial file's length and ctime after the last write, and before each write how long the
//! file may become (`pending`). In the same boot the CVs are trusted when the file's length and
//! ctime are as marked, or when the file is longer than marked but no longer than `pending`
//! (a kill between a write and its record: the write that changed the ctime was ours). Else
//! (another boot, another identity, a file changed otherwise) the CVs are checked against the
//! data (`dest`).
//! Its CVs are compared with the sender's before anything is kept.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;

use crate::proto::tree::ChainingValue;
use crate::wire::data::Timestamp;

const MAGIC: &[u8; 8] = b"P2PCJRN4";
/// Bytes of the mark slot at the start of the journal.
pub const SLOT_LEN: usize = 8 + 8 + 4 + 8 + 8 + 1 + 32 + 8;
const CHECK_LEN: usize = 8;
/// CVs per record at most.
const MAX_RECORD_CVS: usize = 1024;

/// What the journal is about: the partial file and the entry it will become.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The boot the journal was written in (zeros where unknown).
    pub boot: [u8; 16],
    /// Device and inode of the partial file.
    pub dev: u64,
    /// See `dev`.
    pub ino: u64,
    /// The file's size, as the sender announced it.
    pub size: u64,
    /// The file's mtime, as the sender announced it.
    pub mtime: Option<Timestamp>,
    /// Its relative path at the destination.
    pub path: Vec<u8>,
}

/// The partial file as the receiver left it after its last write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mark {
    /// Its length.
    pub len: u64,
    /// Its ctime (seconds, nanoseconds).
    pub ctime: (i64, u32),
    /// CVs journaled by then.
    pub cvs: u64,
    /// Writes begun since may have made the file up to this long (`len` when none is under
    /// way).
    pub pending: u64,
    /// The whole file arrived and matched this hash.
    pub done: Option<[u8; 32]>,
}

fn check(parts: &[&[u8]]) -> [u8; CHECK_LEN] {
    let mut h = blake3::Hasher::new_derive_key("p2p-copy/1 journal check");
    for p in parts {
        h.update(p);
    }
    let mut out = [0; CHECK_LEN];
    out.copy_from_slice(&h.finalize().as_bytes()[..CHECK_LEN]);
    out
}

impl Mark {
    /// The slot's bytes.
    pub fn encode(&self) -> [u8; SLOT_LEN] {
        let mut out = [0u8; SLOT_LEN];
        out[..8].copy_from_slice(&self.len.to_be_bytes());
        out[8..16].copy_from_slice(&self.ctime.0.to_be_bytes());
        out[16..20].copy_from_slice(&self.ctime.1.to_be_bytes());
        out[20..28].copy_from_slice(&self.cvs.to_be_bytes());
        out[28..36].copy_from_slice(&self.pending.to_be_bytes());
        if let Some(root) = self.done {
            out[36] = 1;
            out[37..69].copy_from_slice(&root);
        }
        let c = check(&[&out[..69]]);
        out[69..].copy_from_slice(&c);
        out
    }

    /// A slot read back; `None` if torn or corrupt.
    pub fn decode(b: &[u8]) -> Option<Mark> {
        let b: &[u8; SLOT_LEN] = b.get(..SLOT_LEN)?.try_into().ok()?;
        if check(&[&b[..69]]) != b[69..] || b[36] > 1 {
            return None;
        }
        let mut root = [0; 32];
        root.copy_from_slice(&b[37..69]);
        Some(Mark {
            len: be_u64(&b[..8]),
            ctime: (be_u64(&b[8..16]) as i64, u32::from_be_bytes([b[16], b[17], b[18], b[19]])),
            cvs: be_u64(&b[20..28]),
            pending: be_u64(&b[28..36]),
            done: (b[36] == 1).then_some(root),
        })
    }
}

impl Header {
    /// The header's bytes, check included.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.path.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.boot);
        out.extend_from_slice(&self.dev.to_be_bytes());
        out.extend_from_slice(&self.ino.to_be_bytes());
        out.extend_from_slice(&self.size.to_be_bytes());
        let (secs, nanos) = self.mtime.map_or((0, u32::MAX), |t| (t.secs, t.nanos));
        out.extend_from_slice(&secs.to_be_bytes());
        out.extend_from_slice(&nanos.to_be_bytes());
        // Paths are at most 4,096 bytes (`RelPath`).
        out.extend_from_slice(&(self.path.len().min(u16::MAX as usize) as u16).to_be_bytes());
        out.extend_from_slice(&self.path[..self.path.len().min(u16::MAX as usize)]);
        let c = check(&[&out]);
        out.extend_from_slice(&c);
        out
    }

    /// Reads a header from `r`; `None` if it is not one.
    fn read(r: &mut impl Read) -> Option<(Header, [u8; CHECK_LEN])> {
        let mut fixed = [0u8; 8 + 16 + 8 * 3 + 8 + 4 + 2];
        r.read_exact(&mut fixed).ok()?;
        if &fixed[..8] != MAGIC {
            return None;
        }
        let path_len = usize::from(u16::from_be_bytes([fixed[60], fixed[61]]));
        let mut path = vec![0u8; path_len];
        r.read_exact(&mut path).ok()?;
        let mut c = [0u8; CHECK_LEN];
        r.read_exact(&mut c).ok()?;
        if check(&[&fixed, &path]) != c {
            return None;
        }
        let mut boot = [0; 16];
        boot.copy_from_slice(&fixed[8..24]);
        let nanos = u32::from_be_bytes([fixed[56], fixed[57], fixed[58], fixed[59]]);
        let mtime =
            (nanos != u32::MAX).then(|| Timestamp { secs: be_u64(&fixed[48..56]) as i64, nanos });
        let header = Header {
            boot,
            dev: be_u64(&fixed[24..32]),
            ino: be_u64(&fixed[32..40]),
            size: be_u64(&fixed[40..48]),
            mtime,
            path,
        };
        Some((header, c))
    }
}

/// Appends to a journal: CVs as groups complete, the mark after every write.
#[derive(Debug)]
pub struct JournalWriter {
    file: File,
    last_check: [u8; CHECK_LEN],
    cvs: u64,
    buf: Vec<u8>,
    /// The mark in the slot.
    last: Mark,
}

impl JournalWriter {
    /// Starts a journal in `file` (empty, or to be emptied): the slot, then `header`, then
    /// the given CVs of the groups already held.
    pub fn create(
        mut file: File,
        header: &Header,
        held: impl IntoIterator<Item = ChainingValue>,
        mark: Mark,
    ) -> io::Result<JournalWriter> {
        file.set_len(0)?;
        let mut start = mark.encode().to_vec();
        let h = header.encode();
        let last_check = {
            let mut c = [0; CHECK_LEN];
            c.copy_from_slice(&h[h.len() - CHECK_LEN..]);
            c
        };
        start.extend_from_slice(&h);
        file.write_all(&start)?;
        let mut w = JournalWriter { file, last_check, cvs: 0, buf: Vec::new(), last: mark };
        let mut batch = Vec::with_capacity(MAX_RECORD_CVS);
        for cv in held {
            batch.push(cv);
            if batch.len() == MAX_RECORD_CVS {
                w.append(&batch)?;
                batch.clear();
            }
        }
        w.append(&batch)?;
        w.mark(Mark { cvs: w.cvs, ..mark })?;
        Ok(w)
    }

    /// CVs journaled so far.
    pub fn cvs(&self) -> u64 {
        self.cvs
    }

    /// Appends the CVs of the next groups.
    pub fn append(&mut self, cvs: &[ChainingValue]) -> io::Result<()> {
        if cvs.is_empty() {
            return Ok(());
        }
        self.buf.clear();
        for part in cvs.chunks(MAX_RECORD_CVS) {
            let start = self.buf.len();
            self.buf.extend_from_slice(&self.cvs.to_be_bytes());
            self.buf.extend_from_slice(&(part.len() as u16).to_be_bytes());
            for cv in part {
                self.buf.extend_from_slice(cv);
            }
            let c = check(&[&self.last_check, &self.buf[start..]]);
            self.buf.extend_from_slice(&c);
            self.last_check = c;
            self.cvs += part.len() as u64;
        }
        self.file.write_all(&self.buf)
    }

    /// Rewrites the mark slot.
    pub fn mark(&mut self, mark: Mark) -> io::Result<()> {
        self.file.write_all_at(&mark.encode(), 0)?;
        self.last = mark;
        Ok(())
    }

    /// Before a write: says that the file may grow to `end` bytes (the last mark otherwise
    /// unchanged), so that a kill before the write's record does not make the journal look
    /// stale.
    pub fn intend(&mut self, end: u64) -> io::Result<()> {
        if end <= self.last.pending.max(self.last.len) {
            return Ok(());
        }
        self.mark(Mark { pending: end, ..self.last })
    }
}

/// A journal read back: header, mark, and how many CVs it holds intact.
#[derive(Debug, Clone)]
pub struct Journal {
    /// The header.
    pub header: Header,
    /// The last mark, if intact.
    pub mark: Option<Mark>,
    /// CVs in intact records, in order from group 0.
    pub cvs: u64,
}

impl Journal {
    /// Reads `file`'s header and mark and counts its intact CVs; `None` if it is no journal.
    pub fn load(file: &File) -> Option<Journal> {
        let mut slot = [0u8; SLOT_LEN];
        file.read_exact_at(&mut slot, 0).ok()?;
        let mut cvs = 0;
        let header = read_cvs(file, |_| {
            cvs += 1;
            true
        })?;
        Some(Journal { header, mark: Mark::decode(&slot), cvs })
    }
}

/// Calls `each` with every intact CV of `file`'s journal in order, until it returns false;
/// returns the header, or `None` if there is no valid one.
pub fn read_cvs(file: &File, mut each: impl FnMut(&ChainingValue) -> bool) -> Option<Header> {
    let mut start = file;
    io::Seek::seek(&mut start, io::SeekFrom::Start(SLOT_LEN as u64)).ok()?;
    let mut r = io::BufReader::with_capacity(64 << 10, file);
    let (header, mut last) = Header::read(&mut r)?;
    let mut count = 0u64;
    let mut head = [0u8; 10];
    let mut body = Vec::new();
    loop {
        if r.read_exact(&mut head).is_err() {
            return Some(header);
        }
        let first = be_u64(&head[..8]);
        let n = usize::from(u16::from_be_bytes([head[8], head[9]]));
        if first != count || n == 0 || n > MAX_RECORD_CVS {
            return Some(header);
        }
        body.resize(n * 32 + CHECK_LEN, 0);
        if r.read_exact(&mut body).is_err() {
            return Some(header);
        }
        let (cvs, c) = body.split_at(n * 32);
        if check(&[&last, &head, cvs]) != c {
            return Some(header);
        }
        last.copy_from_slice(c);
        for cv in cvs.chunks_exact(32) {
            let mut v = [0u8; 32];
            v.copy_from_slice(cv);
            if !each(&v) {
                return Some(header);
            }
            count += 1;
        }
    }
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            boot: [3; 16],
            dev: 7,
            ino: 9,
            size: 50 << 20,
            mtime: Some(Timestamp { secs: 1_700_000_000, nanos: 5 }),
            path: b"dir/big.bin".to_vec(),
        }
    }

    fn cv(i: u64) -> ChainingValue {
        *blake3::hash(&i.to_be_bytes()).as_bytes()
    }

    /// A journal with 10 CVs written in records of 1, 2, 3 and 4.
    fn written() -> (tempfile::TempDir, std::path::PathBuf, Vec<ChainingValue>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let file =
            File::options().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        let mut w = JournalWriter::create(file, &header(), [cv(0)], Mark::default()).unwrap();
        let all: Vec<ChainingValue> = (0..10).map(cv).collect();
        for r in [&all[1..3], &all[3..6], &all[6..10]] {
            w.append(r).unwrap();
        }
        let mark =
            Mark { len: 10 << 20, ctime: (5, 6), cvs: 10, pending: 10 << 20, done: Some([8; 32]) };
        w.mark(mark).unwrap();
        (dir, path, all)
    }

    fn cvs_of(path: &std::path::Path) -> (Option<Header>, Vec<ChainingValue>) {
        let file = File::open(path).unwrap();
        let mut got = Vec::new();
        let h = read_cvs(&file, |c| {
            got.push(*c);
            true
        });
        (h, got)
    }

    #[test]
    fn a_journal_reads_back_whole() {
        let (_d, path, all) = written();
        let j = Journal::load(&File::open(&path).unwrap()).unwrap();
        assert_eq!(j.header, header());
        assert_eq!(j.cvs, 10);
        assert_eq!(
            j.mark,
            Some(Mark {
                len: 10 << 20,
                ctime: (5, 6),
                cvs: 10,
                pending: 10 << 20,
                done: Some([8; 32])
            })
        );
        assert_eq!(cvs_of(&path).1, all);
    }

    /// Cut anywhere, the journal keeps exactly the records before the cut.
    #[test]
    fn a_torn_journal_keeps_the_records_before_the_tear() {
        let (_d, path, all) = written();
        let bytes = std::fs::read(&path).unwrap();
        let header_end = SLOT_LEN + header().encode().len();
        // Record ends: after 1, 3, 6 and 10 CVs.
        let rec = |n: usize| 10 + 32 * n + CHECK_LEN;
        let ends = [rec(1), rec(1) + rec(2), rec(1) + rec(2) + rec(3), bytes.len() - header_end];
        for cut in header_end..bytes.len() {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let (h, got) = cvs_of(&path);
            assert_eq!(h, Some(header()), "cut at {cut}");
            let whole = ends.iter().filter(|&&e| header_end + e <= cut).count();
            let want = [0, 1, 3, 6, 10][whole];
            assert_eq!(got, all[..want], "cut at {cut}");
        }
        // A cut inside the header or the slot: no journal.
        for cut in [0, 10, SLOT_LEN, header_end - 1] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            assert_eq!(cvs_of(&path).0, None, "cut at {cut}");
        }
    }

    /// A flipped bit anywhere is noticed: in the slot, the mark is lost; in the header, the
    /// journal; in a record, that record and everything after it.
    #[test]
    fn a_corrupt_byte_is_never_taken_for_data() {
        let (_d, path, all) = written();
        let bytes = std::fs::read(&path).unwrap();
        let header_end = SLOT_LEN + header().encode().len();
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            let file = File::open(&path).unwrap();
            let j = Journal::load(&file);
            if at < SLOT_LEN {
                let j = j.expect("the header is intact");
                assert_eq!(j.mark, None, "slot byte {at}");
                assert_eq!(j.cvs, 10);
            } else if at < header_end {
                assert!(j.is_none(), "header byte {at}");
            } else {
                let (_, got) = cvs_of(&path);
                assert!(got.len() < 10, "record byte {at} went unnoticed");
                assert_eq!(got, all[..got.len()], "what is kept is right");
            }
        }
    }

    /// Records taken from another journal (another header, so another chain) are not read.
    #[test]
    fn records_spliced_from_another_journal_are_rejected() {
        let (_d, path, _) = written();
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other");
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&other)
            .unwrap();
        let h = Header { path: b"another".to_vec(), ..header() };
        let mut w = JournalWriter::create(file, &h, [cv(0)], Mark::default()).unwrap();
        w.append(&[cv(1)]).unwrap();
        let mut a = std::fs::read(&path).unwrap();
        let b = std::fs::read(&other).unwrap();
        let a_head = SLOT_LEN + header().encode().len();
        let b_head = SLOT_LEN + h.encode().len();
        // Our first record, then the other journal's second.
        let rec1 = 10 + 32 + CHECK_LEN;
        a.truncate(a_head + rec1);
        a.extend_from_slice(&b[b_head + rec1..]);
        std::fs::write(&path, &a).unwrap();
        assert_eq!(cvs_of(&path).1.len(), 1);
    }
}
