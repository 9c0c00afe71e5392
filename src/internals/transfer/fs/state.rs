//! The receiver's state directory: partial files kept for resuming, under `--out/.p2p-copy`.
//!
//! - Every file being received is written to `<id>.part` here (mode 0600), where `id` names
//!   the entry the sender offered: its path, size and mtime ([`partial_id`]). Another version
//!   of the same path gets another id, so a new transfer never overwrites a partial copy of
//!   something else. A partial is renamed onto its final name once verified; until then it
//!   survives a kill, a lost connection or Ctrl-C, and the next transfer of the same entry
//!   continues it.
//! - A partial of a file over [`SMALL`] has a [`journal`](super::journal) beside it, so that
//!   resuming it needs no reading. Smaller partials are hashed again to resume (at most
//!   [`SMALL`] bytes each).
//! - While a transfer writes a partial it holds an exclusive `flock` on it: a second receiver
//!   into the same destination leaves it alone.
//! - `dirs-<names>` lists the directories p2p-copy created for a set of offered names and
//!   has not finished yet (their modes and mtimes are set at the end), so that a resumed
//!   transfer still gives them the sender's.
//! - Anything here older than [`STALE_AFTER`] (by mtime) is removed at the next receive into
//!   the same destination; `receive --discard-partial` removes it all at once. The directory
//!   itself goes once it is empty.
//!
//! Nothing here is trusted blindly: a partial is used only if it is a regular file of ours
//! with one link, its journal (if any) matches it, and its content is then proven to the
//! sender by digest before a byte of it is kept (see `docs/security.md`).

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{FileType, OFlags};

use super::at::{not_a_dir, open_own_dir, At, Dir};
use super::error::{classify, FsError};
use crate::wire::data::Timestamp;

/// The state directory's name below the destination. A top-level name of an offer may not
/// be this.
pub const STATE_DIR: &str = ".p2p-copy";
/// Partial files up to this size have no journal: resuming one hashes it again.
pub const SMALL: u64 = 8 << 20;
/// State older than this is removed at the next receive into the same destination.
pub const STALE_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

const PART: &str = ".part";
const JOURNAL: &str = ".journal";
const DIRS: &str = "dirs-";

/// The id of the partial copy of an entry: 32 hex digits, 16 from its path and 16 from its
/// size and mtime, so that the copies of other versions of a path are found by the first half
/// ([`path_part`]).
pub fn partial_id(path: &[u8], size: u64, mtime: Option<Timestamp>) -> String {
    let mut h = blake3::Hasher::new_derive_key("p2p-copy/1 partial version");
    h.update(&size.to_be_bytes());
    match mtime {
        Some(t) => {
            h.update(&[1]);
            h.update(&t.secs.to_be_bytes());
            h.update(&t.nanos.to_be_bytes());
        }
        None => {
            h.update(&[0]);
        }
    }
    let version = hex::encode(&h.finalize().as_bytes()[..8]);
    format!("{}{version}", path_part(path))
}

/// The first half of the partial ids of `path`.
pub fn path_part(path: &[u8]) -> String {
    let h = blake3::derive_key("p2p-copy/1 partial path", path);
    hex::encode(&h[..8])
}

/// The id of the directory log of a set of offered top-level names.
pub fn names_id(names: &[Vec<u8>]) -> String {
    let mut sorted: Vec<&Vec<u8>> = names.iter().collect();
    sorted.sort();
    let mut h = blake3::Hasher::new_derive_key("p2p-copy/1 offered names");
    for n in sorted {
        h.update(&(n.len() as u64).to_be_bytes());
        h.update(n);
    }
    hex::encode(&h.finalize().as_bytes()[..16])
}

/// This boot's identity (Linux: `/proc/sys/kernel/random/boot_id`; zeros where unknown).
/// `P2P_COPY_TEST_BOOT_ID` replaces it, for tests that pretend the machine rebooted.
pub fn boot_id() -> [u8; 16] {
    let text = std::env::var("P2P_COPY_TEST_BOOT_ID")
        .ok()
        .or_else(|| fs::read_to_string("/proc/sys/kernel/random/boot_id").ok())
        .unwrap_or_default();
    let digits: String = text.chars().filter(char::is_ascii_hexdigit).collect();
    let mut id = [0u8; 16];
    if digits.len() >= 32 {
        if let Ok(bytes) = hex::decode(&digits[..32]) {
            id.copy_from_slice(&bytes);
        }
    }
    id
}

/// The state directory of one destination.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    /// The directory, open, once it was made and checked.
    dir: Mutex<Option<Arc<Dir>>>,
    /// Its file system keeps no permission bits (FAT, exFAT: every file shows the mount's
    /// mode, and `chmod` changes nothing): a partial file is then checked by its owner only.
    modeless: std::sync::atomic::AtomicBool,
}

/// A partial file, opened and locked for this transfer.
#[derive(Debug)]
pub(super) struct Partial {
    /// Read and write, positioned at the start.
    pub file: File,
    /// Its length when opened.
    pub len: u64,
    /// Its name in the state directory.
    pub part: At,
    /// Its journal's (used for files over [`SMALL`]).
    pub journal: At,
}

impl StateDir {
    /// The state directory of the destination `root` (not created yet).
    pub fn new(root: &Path) -> StateDir {
        StateDir { path: root.join(STATE_DIR), dir: Mutex::default(), modeless: Default::default() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether it exists (as a directory).
    pub fn exists(&self) -> bool {
        fs::symlink_metadata(&self.path).is_ok_and(|m| m.is_dir())
    }

    /// The directory, open and checked, if it exists (nothing is created): what is read or
    /// removed here is read or removed in the directory checked, never through a link.
    fn existing(&self) -> Option<Arc<Dir>> {
        if let Some(dir) = &*self.dir.lock().unwrap_or_else(PoisonError::into_inner) {
            return Some(dir.clone());
        }
        if !self.exists() {
            return None;
        }
        self.ensure().ok()
    }

    /// Creates it if needed, checks that it is a real directory of ours, mode 0700, and
    /// keeps it open: partial files are made in the directory checked, whatever happens to
    /// its name.
    fn ensure(&self) -> Result<Arc<Dir>, FsError> {
        let mut held = self.dir.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(dir) = &*held {
            return Ok(dir.clone());
        }
        let mut b = fs::DirBuilder::new();
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        match b.create(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(classify(&self.path, e)),
        }
        let not_ours = || FsError::Io {
            path: self.path.clone(),
            source: io::Error::other(
                "this is not a directory of p2p-copy's owned by you; move it away",
            ),
        };
        let (dir, st) = match open_own_dir(&self.path) {
            Ok(opened) => opened,
            // A link or something else than a directory under our name.
            Err(e) if not_a_dir(&e) => return Err(not_ours()),
            Err(e) => return Err(classify(&self.path, e)),
        };
        if st.st_uid != rustix::process::geteuid().as_raw() {
            return Err(not_ours());
        }
        if st.st_mode & 0o077 != 0 {
            rustix::fs::fchmod(&dir, rustix::fs::Mode::from_raw_mode(0o700))
                .map_err(|e| classify(&self.path, e.into()))?;
            let now = rustix::fs::fstat(&dir).map_err(|e| classify(&self.path, e.into()))?;
            if now.st_mode & 0o077 != 0 {
                self.modeless.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let dir = Arc::new(dir);
        *held = Some(dir.clone());
        Ok(dir)
    }

    /// The ids of the partial files here (none if the directory does not exist).
    pub fn partial_ids(&self) -> HashSet<String> {
        let Some(dir) = self.existing() else { return HashSet::new() };
        let names = dir.names().unwrap_or_default();
        names.iter().filter_map(|name| name.strip_suffix(PART).map(str::to_owned)).collect()
    }

    /// Opens (creating) the partial file `id` for reading and writing, locked for this
    /// transfer. `Ok(None)` if another transfer holds it. A file that is not ours (not a
    /// regular file owned by us with one link) is replaced by a new one.
    pub(super) fn open(&self, id: &str) -> Result<Option<Partial>, FsError> {
        let dir = self.ensure()?;
        let part = At::new(&dir, format!("{id}{PART}"));
        let journal = At::new(&dir, format!("{id}{JOURNAL}"));
        let lock = |file: &File| match rustix::fs::flock(
            file,
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        ) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
            Err(e) => Err(classify(&part.path(), e.into())),
        };
        for _ in 0..2 {
            // Most partials are new: one this call makes is ours (in our own 0700 directory,
            // mode 0600, one link) without looking at it.
            match dir.open_file(&part.name, OFlags::RDWR | OFlags::CREATE | OFlags::EXCL) {
                Ok(file) if lock(&file)? => {
                    return Ok(Some(Partial { file, len: 0, part, journal }));
                }
                Ok(_) => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(classify(&part.path(), e)),
            }
            let file = dir
                .open_file(&part.name, OFlags::RDWR | OFlags::CREATE)
                .map_err(|e| classify(&part.path(), e))?;
            if !lock(&file)? {
                return Ok(None);
            }
            let meta = file.metadata().map_err(|e| classify(&part.path(), e))?;
            let ours = meta.is_file()
                && meta.uid() == rustix::process::geteuid().as_raw()
                && meta.nlink() == 1
                && (meta.permissions().mode() & 0o077 == 0 || self.keeps_no_modes(&file));
            if ours {
                return Ok(Some(Partial { file, len: meta.len(), part, journal }));
            }
            tracing::warn!(path = %part.path().display(), "replacing a partial file that is not ours");
            dir.remove(&part.name).map_err(|e| classify(&part.path(), e))?;
            let _ = dir.remove(&journal.name);
        }
        Err(FsError::Io {
            path: part.path(),
            source: io::Error::other("cannot make a partial file of our own here"),
        })
    }

    /// Whether the file system of `file`, one of ours that shows group or other bits, keeps no
    /// permission bits at all (FAT, exFAT show the mount's mode on every file, and `chmod`
    /// changes nothing): then a partial file is ours by its owner alone. Where `chmod` works,
    /// such a file was open to others and is not taken.
    fn keeps_no_modes(&self, file: &File) -> bool {
        use std::sync::atomic::Ordering;
        if self.modeless.load(Ordering::Relaxed) {
            return true;
        }
        let before = rustix::fs::fstat(file).map(|st| st.st_mode);
        let _ = rustix::fs::fchmod(file, rustix::fs::Mode::from_raw_mode(0o600));
        let after = rustix::fs::fstat(file).map(|st| st.st_mode);
        let modeless = matches!((before, after), (Ok(b), Ok(a)) if a == b && a & 0o077 != 0);
        if modeless {
            self.modeless.store(true, Ordering::Relaxed);
        }
        modeless
    }

    /// Removes partial `id` and its journal unless a transfer holds it.
    pub fn remove_unused(&self, id: &str) {
        let Some(dir) = self.existing() else { return };
        if unused(&dir, &format!("{id}{PART}")) {
            self.remove(id);
        }
    }

    /// Removes partial `id` and its journal.
    pub fn remove(&self, id: &str) {
        let Some(dir) = self.existing() else { return };
        for suffix in [PART, JOURNAL] {
            let name = format!("{id}{suffix}");
            if let Err(e) = dir.remove(&name) {
                if e.kind() != io::ErrorKind::NotFound {
                    let path = self.path.join(&name);
                    tracing::warn!(path = %path.display(), error = %e, "could not remove partial state");
                }
            }
        }
    }

    /// The log of directories made for `names`: those listed so far, and its name (the file
    /// is created when the first directory is made). Each path in it ends with a NUL, the one
    /// byte no name holds.
    pub fn dirs_log(&self, names: &[Vec<u8>]) -> (HashSet<Vec<u8>>, String) {
        use std::io::Read;
        let name = format!("{DIRS}{}", names_id(names));
        let mut log = Vec::new();
        if let Some(dir) = self.existing() {
            if let Ok(f) = dir.open_file(&name, OFlags::RDONLY | OFlags::NONBLOCK) {
                // At most one record per directory the offer may hold, each a path.
                let _ = f.take(MAX_DIRS_LOG).read_to_end(&mut log);
            }
        }
        // A record cut short (by a crash mid-write) has no NUL and is left out.
        let mut records: Vec<&[u8]> = log.split(|&b| b == 0).collect();
        records.pop();
        (records.into_iter().filter(|r| !r.is_empty()).map(<[u8]>::to_vec).collect(), name)
    }

    /// Appends a path to the directory log `log` (creating the state directory and the log
    /// as needed).
    pub fn log_dir(&self, log: &str, rel: &[u8]) -> Result<(), FsError> {
        use std::io::Write;
        let dir = self.ensure()?;
        let path = || self.path.join(log);
        let mut f = dir
            .open_file(log, OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE)
            .map_err(|e| classify(&path(), e))?;
        f.write_all(&[rel, b"\0"].concat()).map_err(|e| classify(&path(), e))
    }

    /// Removes a directory log.
    pub fn drop_log(&self, log: &str) {
        if let Some(dir) = self.existing() {
            let _ = dir.remove(log);
        }
    }

    /// What is kept here: (partial files, their bytes).
    pub fn held(&self) -> (u64, u64) {
        let Some(dir) = self.existing() else { return (0, 0) };
        let names = dir.names().unwrap_or_default();
        names
            .iter()
            .filter(|name| name.ends_with(PART))
            .filter_map(|name| dir.stat(name).ok().flatten())
            .fold((0, 0), |(n, b), st| (n + 1, b + st.st_size as u64))
    }

    /// Removes what is older than [`STALE_AFTER`] and not in use; then the directory, if
    /// empty. Returns how many files went.
    pub fn sweep(&self) -> usize {
        let now = SystemTime::now();
        self.clear(|m| now.duration_since(m).unwrap_or_default() > STALE_AFTER).0
    }

    /// Removes everything not in use (`--discard-partial`): returns (files removed, bytes of
    /// partial files removed, files left because a transfer is using them).
    pub fn discard(&self) -> (usize, u64, usize) {
        self.clear(|_| true)
    }

    fn clear(&self, old: impl Fn(SystemTime) -> bool) -> (usize, u64, usize) {
        let (mut removed, mut bytes, mut busy) = (0, 0, 0);
        let Some(dir) = self.existing() else { return (0, 0, 0) };
        for name in dir.names().unwrap_or_default() {
            let Ok(Some(st)) = dir.stat(&name) else { continue };
            let mtime = UNIX_EPOCH + Duration::new(st.st_mtime.max(0) as u64, 0);
            if !old(mtime) {
                continue;
            }
            if let Some(id) = name.strip_suffix(PART) {
                // In use by a running transfer: leave it (and its journal). Anything but a
                // regular file is nobody's partial and just goes.
                let regular = FileType::from_raw_mode(st.st_mode) == FileType::RegularFile;
                if regular && !unused(&dir, &name) {
                    busy += 1;
                    continue;
                }
                if regular {
                    bytes += st.st_size as u64;
                }
                let _ = dir.remove(format!("{id}{JOURNAL}"));
                removed += 1;
            } else if let Some(id) = name.strip_suffix(JOURNAL) {
                if dir.stat(format!("{id}{PART}")).is_ok_and(|st| st.is_some()) {
                    continue; // goes with its partial
                }
            }
            if dir.remove(&name).is_ok() && !name.ends_with(PART) {
                removed += 1;
            }
        }
        self.remove_if_empty();
        (removed, bytes, busy)
    }

    /// Removes the directory if nothing is left in it.
    pub fn remove_if_empty(&self) {
        // rmdir: only an empty directory goes, and never through a link. The handle kept
        // goes with it: a later partial file makes the directory again.
        let mut held = self.dir.lock().unwrap_or_else(PoisonError::into_inner);
        if fs::remove_dir(&self.path).is_ok() {
            *held = None;
        }
    }
}

/// Whether nobody holds the partial file `name` in `dir` (a running transfer locks it). Opened
/// without following a link and without blocking (a FIFO planted under the name cannot hang
/// us).
fn unused(dir: &Dir, name: &str) -> bool {
    let regular = dir.stat(name).ok().flatten().map(|st| FileType::from_raw_mode(st.st_mode));
    if regular.is_some_and(|t| t != FileType::RegularFile) {
        return true;
    }
    let Ok(f) = dir.open_file(name, OFlags::RDONLY | OFlags::NONBLOCK) else { return false };
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok()
}

/// Largest directory log read: one line per directory of an offer at most.
const MAX_DIRS_LOG: u64 = 64 << 20;

/// The ctime of `meta` as (seconds, nanoseconds).
pub fn ctime(meta: &fs::Metadata) -> (i64, u32) {
    (meta.ctime(), meta.ctime_nsec() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_ids_tell_versions_apart() {
        let t = Some(Timestamp { secs: 5, nanos: 1 });
        let a = partial_id(b"a/b", 10, t);
        assert_eq!(a.len(), 32);
        assert_eq!(a, partial_id(b"a/b", 10, t));
        assert_ne!(a, partial_id(b"a/b", 11, t));
        assert_ne!(a, partial_id(b"a/b", 10, Some(Timestamp { secs: 5, nanos: 2 })));
        assert_ne!(a, partial_id(b"a/b", 10, None));
        assert_ne!(a, partial_id(b"a/c", 10, t));
        assert_eq!(a[..16], partial_id(b"a/b", 99, None)[..16], "one path, one first half");
        assert_eq!(a[..16], path_part(b"a/b"));
        let (x, y) = (b"x".to_vec(), b"y".to_vec());
        assert_eq!(names_id(&[x.clone(), y.clone()]), names_id(&[y, x]));
    }

    #[test]
    fn a_partial_is_locked_while_open_and_swept_when_stale() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        assert!(!state.exists());
        let p = state.open("abc").unwrap().expect("free");
        let meta = fs::metadata(state.path()).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        assert_eq!(p.file.metadata().unwrap().permissions().mode() & 0o777, 0o600);
        assert!(state.open("abc").unwrap().is_none(), "locked by the first");
        assert_eq!(state.partial_ids(), HashSet::from(["abc".to_owned()]));
        // Not stale: stays. In use: stays even when discarded.
        assert_eq!(state.sweep(), 0);
        assert_eq!(state.discard(), (0, 0, 1));
        drop(p);
        let old = SystemTime::now() - STALE_AFTER - Duration::from_secs(60);
        File::options()
            .write(true)
            .open(state.path().join("abc.part"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(state.sweep(), 1);
        assert!(!state.exists(), "removed once empty");
    }

    /// What is planted in the state directory under our names (a FIFO, a link to a file
    /// elsewhere) is removed without being opened through or waited on.
    #[test]
    fn planted_fifos_and_links_are_removed_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        drop(state.open("abc").unwrap());
        let outside = dir.path().join("outside.txt");
        fs::write(&outside, b"keep").unwrap();
        let fifo = state.path().join("fifo.part");
        let made = rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        );
        made.unwrap();
        std::os::unix::fs::symlink(&outside, state.path().join("link.part")).unwrap();
        assert_eq!(state.held().0, 3);
        let (removed, _, busy) = state.discard();
        assert_eq!((removed, busy), (3, 0));
        assert!(!state.exists());
        assert_eq!(fs::read(&outside).unwrap(), b"keep");
    }

    #[test]
    fn a_foreign_or_linked_partial_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        drop(state.open("x").unwrap());
        let part = state.path().join("x.part");
        fs::write(&part, b"planted").unwrap();
        fs::hard_link(&part, dir.path().join("second-name")).unwrap();
        let p = state.open("x").unwrap().unwrap();
        assert_eq!(p.file.metadata().unwrap().len(), 0, "a fresh file, not the linked one");
        assert_eq!(fs::read(dir.path().join("second-name")).unwrap(), b"planted");
    }
}
