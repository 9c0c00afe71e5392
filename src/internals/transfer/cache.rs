//! The sender's cache of group CVs: what lets a restarted sender prove the prefix a receiver
//! holds without reading it again.
//!
//! For every file over [`SMALL`] it sends, the sender appends the CV of each group it hashes
//! to `$XDG_CACHE_HOME/p2p-copy/cv/<key>` (or `~/.cache/…`), where `key` comes from the file's
//! device and inode. The file starts with a header: magic, device, inode, size, mtime and
//! ctime (seconds and nanoseconds) of the source when it was opened. An entry is used only
//! while all of them still hold: any write to the source changes its ctime, which cannot be
//! set back without changing the clock. CVs after a torn tail are ignored.
//!
//! The cache is a hint: a wrong CV only makes the digests differ, and the file is sent whole.
//! The directory is capped at [`CAP`] bytes; the least recently written entries go first.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::fs::SMALL;
use crate::proto::tree::ChainingValue;

/// Bytes the cache directory may hold (32 bytes per MiB sent: about 8 TiB of files).
pub const CAP: u64 = 256 << 20;
const MAGIC: &[u8; 8] = b"P2PCCV03";
const HEADER_LEN: u64 = 8 + 8 * 3 + 8 + 4 + 8 + 4;

/// The cache directory, if it can be used.
#[derive(Debug, Clone)]
pub struct CvCache {
    dir: PathBuf,
}

impl CvCache {
    /// The user's cache directory (created, mode 0700), trimmed to [`CAP`]; `None` if there
    /// is none (the sender then hashes prefixes from the files).
    pub fn open() -> Option<CvCache> {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
        let dir = base.join("p2p-copy").join("cv");
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).ok()?;
        let cache = CvCache { dir };
        cache.trim(CAP);
        Some(cache)
    }

    /// A cache in `dir` (tests).
    pub fn at(dir: PathBuf) -> CvCache {
        CvCache { dir }
    }

    fn path(&self, meta: &fs::Metadata) -> PathBuf {
        let mut h = blake3::Hasher::new_derive_key("p2p-copy/1 cv cache key");
        h.update(&meta.dev().to_be_bytes());
        h.update(&meta.ino().to_be_bytes());
        self.dir.join(hex::encode(&h.finalize().as_bytes()[..16]))
    }

    /// The cached CVs of the source whose current metadata is `meta`, in order from group 0;
    /// empty if there are none, or they are of another version of the file.
    pub fn cvs(&self, meta: &fs::Metadata) -> CvReader {
        // Never cached (see `writer`): no lookup for each small file of a tree.
        if meta.len() <= SMALL {
            return CvReader::empty();
        }
        let Ok(mut file) = File::open(self.path(meta)) else { return CvReader::empty() };
        let mut header = [0u8; HEADER_LEN as usize];
        if file.read_exact(&mut header).is_err() || header[..] != encode_header(meta)[..] {
            return CvReader::empty();
        }
        let len = file.metadata().map_or(0, |m| m.len());
        let count = len.saturating_sub(HEADER_LEN) / 32;
        CvReader { file: Some(io::BufReader::new(file)), left: count }
    }

    /// A writer of this source's CVs from group `keep` on, keeping the first `keep` of an
    /// entry that is still valid (a new entry when it is not, or `keep` is 0). `None` if the
    /// file is too small to cache, or the entry cannot be written (another sender of the same
    /// file holds it).
    pub fn writer(&self, meta: &fs::Metadata, keep: u64) -> Option<CvWriter> {
        if meta.len() <= SMALL {
            return None;
        }
        let path = self.path(meta);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
            .ok()?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).ok()?;
        let header = encode_header(meta);
        let mut found = [0u8; HEADER_LEN as usize];
        let valid = file.read_exact(&mut found).is_ok() && found == header;
        let have = file.metadata().ok()?.len().saturating_sub(HEADER_LEN) / 32;
        let next = if valid && keep <= have && keep > 0 { keep } else { 0 };
        if next == 0 {
            file.set_len(0).ok()?;
            file.seek(SeekFrom::Start(0)).ok()?;
            file.write_all(&header).ok()?;
        } else {
            file.set_len(HEADER_LEN + next * 32).ok()?;
            file.seek(SeekFrom::End(0)).ok()?;
        }
        Some(CvWriter { file, next })
    }

    /// Removes the least recently written entries until at most `cap` bytes are left.
    fn trim(&self, cap: u64) {
        let Ok(dir) = fs::read_dir(&self.dir) else { return };
        let mut entries: Vec<(std::time::SystemTime, u64, PathBuf)> = dir
            .flatten()
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        entries.sort();
        for (_, len, path) in entries {
            if total <= cap {
                break;
            }
            if fs::remove_file(&path).is_ok() {
                total -= len;
            }
        }
    }
}

fn encode_header(meta: &fs::Metadata) -> [u8; HEADER_LEN as usize] {
    let mut out = [0u8; HEADER_LEN as usize];
    let mut at = 0;
    let mut put = |b: &[u8]| {
        out[at..at + b.len()].copy_from_slice(b);
        at += b.len();
    };
    put(MAGIC);
    put(&meta.dev().to_be_bytes());
    put(&meta.ino().to_be_bytes());
    put(&meta.len().to_be_bytes());
    put(&meta.mtime().to_be_bytes());
    put(&(meta.mtime_nsec() as u32).to_be_bytes());
    put(&meta.ctime().to_be_bytes());
    put(&(meta.ctime_nsec() as u32).to_be_bytes());
    out
}

/// Cached CVs, read in order.
#[derive(Debug)]
pub struct CvReader {
    file: Option<io::BufReader<File>>,
    left: u64,
}

impl CvReader {
    /// No CVs.
    pub fn empty() -> CvReader {
        CvReader { file: None, left: 0 }
    }

    /// CVs left.
    pub fn len(&self) -> u64 {
        self.left
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.left == 0
    }
}

impl Iterator for CvReader {
    type Item = ChainingValue;

    fn next(&mut self) -> Option<ChainingValue> {
        if self.left == 0 {
            return None;
        }
        let mut cv = [0u8; 32];
        match self.file.as_mut()?.read_exact(&mut cv) {
            Ok(()) => {
                self.left -= 1;
                Some(cv)
            }
            Err(_) => {
                self.left = 0;
                None
            }
        }
    }
}

/// Appends a source's CVs to its cache entry, in order; stops quietly at a gap or an error
/// (the cache is only a hint).
#[derive(Debug)]
pub struct CvWriter {
    file: File,
    next: u64,
}

impl CvWriter {
    /// Records the CVs of groups `first..first + cvs.len()` (those before the next expected
    /// one are there already; a gap stops the entry here).
    pub fn push(&mut self, first: u64, cvs: &[ChainingValue]) {
        if first > self.next {
            return;
        }
        let skip = (self.next - first) as usize;
        let Some(cvs) = cvs.get(skip..).filter(|c| !c.is_empty()) else { return };
        let bytes: Vec<u8> = cvs.iter().flatten().copied().collect();
        if self.file.write_all(&bytes).is_ok() {
            self.next += cvs.len() as u64;
        } else {
            self.next = u64::MAX;
        }
    }

    /// The next group expected.
    pub fn next(&self) -> u64 {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn big(dir: &Path) -> PathBuf {
        let p = dir.join("src.bin");
        let f = File::create(&p).unwrap();
        f.set_len(SMALL + 5 * (1 << 20)).unwrap();
        p
    }

    #[test]
    fn cached_cvs_survive_a_restart_and_die_with_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CvCache::at(dir.path().join("cache"));
        fs::create_dir(dir.path().join("cache")).unwrap();
        let src = big(dir.path());
        let meta = fs::metadata(&src).unwrap();
        let cvs: Vec<ChainingValue> = (0..4u8).map(|i| [i; 32]).collect();
        let mut w = cache.writer(&meta, 0).unwrap();
        w.push(0, &cvs[..2]);
        w.push(5, &cvs[2..]); // a gap: ignored
        w.push(1, &cvs[1..]); // overlapping: the new part is taken
        drop(w);
        assert_eq!(cache.cvs(&meta).collect::<Vec<_>>(), cvs);

        // Keeping a prefix of a valid entry, then going on.
        let mut w = cache.writer(&meta, 1).unwrap();
        assert_eq!(w.next(), 1);
        w.push(1, &[[9; 32]]);
        drop(w);
        assert_eq!(cache.cvs(&meta).collect::<Vec<_>>(), vec![[0; 32], [9; 32]]);

        // A write to the source (its ctime changes): nothing cached applies.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::OpenOptions::new().write(true).open(&src).unwrap().write_all(b"x").unwrap();
        let changed = fs::metadata(&src).unwrap();
        assert_eq!(cache.cvs(&changed).count(), 0);
        assert_eq!(cache.writer(&changed, 1).unwrap().next(), 0, "starts over");
    }

    #[test]
    fn a_torn_tail_is_ignored_and_the_cap_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cdir = dir.path().join("cache");
        fs::create_dir(&cdir).unwrap();
        let cache = CvCache::at(cdir.clone());
        let src = big(dir.path());
        let meta = fs::metadata(&src).unwrap();
        let mut w = cache.writer(&meta, 0).unwrap();
        w.push(0, &[[1; 32], [2; 32]]);
        drop(w);
        let entry = fs::read_dir(&cdir).unwrap().next().unwrap().unwrap().path();
        let f = OpenOptions::new().write(true).open(&entry).unwrap();
        f.set_len(HEADER_LEN + 32 + 7).unwrap();
        assert_eq!(cache.cvs(&meta).collect::<Vec<_>>(), vec![[1; 32]]);
        fs::write(cdir.join("old"), vec![0; 100]).unwrap();
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        File::options().write(true).open(cdir.join("old")).unwrap().set_modified(hour_ago).unwrap();
        cache.trim(HEADER_LEN + 40);
        assert_eq!(fs::read_dir(&cdir).unwrap().count(), 1, "the oldest went first");
    }
}
