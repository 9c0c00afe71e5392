//! The destination directory: checked walks from the root, directories, symlinks, new files.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Permissions};
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{FileType, OFlags};
use rustix::io::Errno;

use super::at::{not_a_dir, walk, At, Dir, DirCache, MakeDir, Walked};

use super::error::{classify, classify_link, classify_new, FsError};
use super::journal::{read_cvs, Header, Journal, JournalWriter, Mark};
use super::part::{Finished, Names, PartFile};
use super::path::{RelPath, MAX_COMPONENT_LEN};
use super::state::{boot_id, ctime, partial_id, Partial, StateDir, SMALL};
use crate::proto::tree::{group_cv, GROUP};
use crate::proto::Held;
use crate::transfer::prefix::prefix;
use crate::transfer::walk::system_time;
use crate::wire::data::Timestamp;

mod link;

/// Attempts at finding an unused temporary name before giving up.
const TEMP_ATTEMPTS: usize = 16;
/// Marker in every temporary name, so leftovers are recognisable.
/// Why a symbolic link cannot be made where the file system has none.
const NO_SYMLINKS: &str = "this file system has no symbolic links";
/// Why a hard link cannot be made where the file system has none.
pub(super) const NO_HARDLINKS: &str = "this file system has no hard links";

const TEMP_MARKER: &str = ".p2p-copy-";
const TEMP_SUFFIX: &str = ".part";

/// The destination directory. All operations take [`RelPath`]s and stay inside `root`.
#[derive(Debug)]
pub struct Dest {
    /// Canonical: no symlinks, absolute.
    root: PathBuf,
    /// The root, open: every walk starts here.
    root_dir: Arc<Dir>,
    /// Its device: partial files in the state directory can be renamed onto final names on it.
    dev: u64,
    /// Where partial files are kept.
    state: StateDir,
    /// Directories that received entries (files, directories, symlinks) whose names are not
    /// yet durable: [`Dest::sync_dirs`] fsyncs each once, at the end, instead of once per entry.
    unsynced: Mutex<HashSet<PathBuf>>,
    /// Directories p2p-copy made for this offer (in this transfer or an interrupted one).
    made: Mutex<Made>,
    /// The directories used last, open.
    dirs: DirCache,
    /// This boot's id: journals written in another boot are checked against their data.
    boot: [u8; 16],
    /// Partial copies found when the transfer began, by the first half of their id (their
    /// path): when a file is put in place, the copies of its other versions are obsolete.
    earlier: Mutex<HashMap<String, Vec<String>>>,
}

/// The directories made for an offer, and their log in the state directory.
#[derive(Debug, Default)]
struct Made {
    dirs: HashSet<Vec<u8>>,
    /// The log's name in the state directory.
    log: Option<String>,
    /// Directories this transfer created, and how many the offer allows it.
    created: u64,
    /// Those made by this run (not by an interrupted one) and holding no directory: no file
    /// can be in one but what this run puts there.
    fresh: HashSet<Vec<u8>>,
    limit: u64,
}

/// What is at a destination path, as [`Dest::inspect`] finds it (nothing is created).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Nothing (a missing parent included).
    Missing,
    /// A directory.
    Dir,
    /// A regular file.
    File {
        /// Its size.
        size: u64,
        /// Its mtime.
        mtime: Option<SystemTime>,
    },
    /// A symbolic link.
    Symlink {
        /// Its target.
        target: PathBuf,
    },
    /// Anything else (a device, a FIFO, a socket).
    Other,
    /// A parent is not a real directory (a file, a symlink): nothing can be written there.
    Blocked(String),
}

/// A partial copy found for an entry, locked and checked: what the sender may continue.
#[derive(Debug)]
pub struct Resumable {
    /// The partial file, open and locked.
    partial: Partial,
    /// Bytes held.
    pub offset: u64,
    /// Their digest, for the sender to compare (`transfer::prefix`).
    pub digest: [u8; 32],
    /// The hash state the lane reader continues from.
    pub held: Held,
}

/// How soon after a write is announced in the journal's mark the write changes the partial
/// file's ctime (the announcement and the write follow each other at once; the margin is for
/// the clock's granularity and scheduling).
const WRITE_STARTS: Duration = Duration::from_millis(50);

impl Dest {
    /// Open the destination, creating it (and missing parents) if needed.
    ///
    /// `root` is the user's choice, so symlinks in it are resolved once here; everything below
    /// it is checked on every operation.
    pub fn open(root: &Path) -> Result<Dest, FsError> {
        match fs::metadata(root) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(root).map_err(|e| classify(root, e))?;
            }
            Err(e) => return Err(classify(root, e)),
        }
        let canonical = fs::canonicalize(root).map_err(|e| classify(root, e))?;
        let root_dir = match Dir::open(&canonical) {
            Ok(dir) => dir,
            Err(e) if e.raw_os_error() == Some(Errno::NOTDIR.raw_os_error()) => {
                return Err(FsError::Io {
                    path: canonical,
                    source: io::Error::new(
                        io::ErrorKind::NotADirectory,
                        "the destination is not a directory; choose a directory with --out",
                    ),
                })
            }
            Err(e) => return Err(classify(&canonical, e)),
        };
        Ok(Dest {
            state: StateDir::new(&canonical),
            dev: root_dir.dev,
            root_dir: Arc::new(root_dir),
            root: canonical,
            unsynced: Mutex::default(),
            // No limit on directories until a transfer begins (`Dest::begin`).
            made: Mutex::new(Made { limit: u64::MAX, ..Made::default() }),
            dirs: DirCache::default(),
            boot: boot_id(),
            earlier: Mutex::default(),
        })
    }

    /// Pretends to be in another boot (tests of what a reboot leaves).
    #[cfg(test)]
    pub(crate) fn set_boot(&mut self, boot: [u8; 16]) {
        self.boot = boot;
    }

    /// The state directory (partial files).
    pub fn state(&self) -> &StateDir {
        &self.state
    }

    /// Picks up what earlier transfers of these offered names left: the directories they
    /// made (which get the sender's modes and mtimes like this transfer's own). From now on at
    /// most `dir_limit` directories are created (the offer's count). Call before writing.
    pub fn begin(&self, names: &[Vec<u8>], dir_limit: u64) {
        let mut earlier = self.earlier.lock().unwrap_or_else(PoisonError::into_inner);
        for id in self.state.partial_ids() {
            earlier.entry(id[..id.len().min(16)].to_owned()).or_default().push(id);
        }
        drop(earlier);
        let (dirs, log) = self.state.dirs_log(names);
        let mut made = self.made.lock().unwrap_or_else(PoisonError::into_inner);
        made.dirs = dirs;
        made.log = Some(log);
        made.created = 0;
        made.limit = dir_limit;
    }

    /// The transfer is complete: forget the directories made (their metadata is set) and
    /// remove the state directory if nothing else is in it.
    pub fn end(&self) {
        let made = self.made.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(log) = &made.log {
            self.state.drop_log(log);
        }
        self.state.remove_if_empty();
    }

    /// Whether p2p-copy made this directory (for this offer).
    pub fn made(&self, rel: &RelPath) -> bool {
        self.made.lock().unwrap_or_else(PoisonError::into_inner).dirs.contains(rel.as_bytes())
    }

    /// What is at `rel` now, looking without creating or following anything. A name this
    /// file system cannot hold is not there (writing it will be refused, for that entry).
    pub fn inspect(&self, rel: &RelPath) -> Result<Found, FsError> {
        match self.look(rel) {
            Err(FsError::Unwritable { .. }) => Ok(Found::Missing),
            found => found,
        }
    }

    fn look(&self, rel: &RelPath) -> Result<Found, FsError> {
        let dir = match walk(&self.root_dir, &self.dirs, rel.dir(), None)? {
            Walked::Dir(dir) => dir,
            Walked::Missing => return Ok(Found::Missing),
            Walked::Blocked { shown, link: true } => {
                return Ok(Found::Blocked(format!("{shown} is a symbolic link")))
            }
            Walked::Blocked { shown, link: false } => {
                return Ok(Found::Blocked(format!("{shown} exists and is not a directory")))
            }
        };
        let path = || dir.path.join(rel.name());
        let Some(st) = dir.stat(rel.name()).map_err(|e| classify(&path(), e))? else {
            return Ok(Found::Missing);
        };
        // `time_t` is narrower than i64 on some 32-bit targets.
        #[allow(clippy::useless_conversion)]
        let secs = i64::from(st.st_mtime);
        Ok(match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => Found::Dir,
            FileType::RegularFile => Found::File {
                size: st.st_size as u64,
                mtime: system_time(Timestamp { secs, nanos: st.st_mtime_nsec as u32 }),
            },
            FileType::Symlink => {
                let target = dir.readlink(rel.name()).map_err(|e| classify(&path(), e))?;
                Found::Symlink { target: OsString::from_vec(target).into() }
            }
            _ => Found::Other,
        })
    }

    /// The partial copy of the entry `rel` (of `size` bytes and `mtime`, as the sender
    /// offers it) that this destination holds, if one can be continued: locked, checked
    /// against its journal or hashed again (`docs/security.md` §7), with the digest the sender
    /// must match. `Err(Busy)` if another transfer is writing it.
    pub fn examine(
        &self,
        rel: &RelPath,
        size: u64,
        mtime: Option<Timestamp>,
        touch: &dyn Fn(),
    ) -> Result<Option<Resumable>, FsError> {
        let id = partial_id(rel.as_bytes(), size, mtime);
        let Some(partial) = self.state.open(&id)? else {
            return Err(FsError::Busy { path: self.root.join(rel.as_path()) });
        };
        let meta = partial.file.metadata().map_err(|e| classify(&partial.part.path(), e))?;
        let len = meta.len();
        let io_err = |e| classify(&partial.part.path(), e);
        if len == 0 || len > size {
            return Ok(None);
        }
        if size <= SMALL {
            // No journal: hash what is there; the sender compares.
            let p =
                prefix(&partial.file, len, size, &mut std::iter::empty(), &mut |_, _| {}, touch)
                    .map_err(io_err)?;
            return Ok(Some(Resumable {
                partial,
                offset: len,
                digest: p.digest,
                held: Held::Prefix(p.state),
            }));
        }
        let journal = match partial.journal.dir.open_file(&partial.journal.name, OFlags::RDONLY) {
            Ok(f) => f,
            Err(_) => return Ok(None),
        };
        let Some(j) = Journal::load(&journal) else { return Ok(None) };
        let h = &j.header;
        if (h.dev, h.ino, h.size, h.mtime, h.path.as_slice())
            != (meta.dev(), meta.ino(), size, mtime, rel.as_bytes())
        {
            // Not this file's journal (the partial was replaced, or the entry differs).
            return Ok(None);
        }
        let boot = self.boot;
        // As marked, or longer by the write of ours that was under way when it stopped: the
        // write changed the ctime within `WRITE_STARTS` of being announced in the mark (the
        // journal's mtime); a change at any other time is not ours, and the data is checked. The
        // groups such a write completed are not journaled and are not used.
        let announced = journal.metadata().and_then(|m| m.modified()).ok();
        let changed =
            UNIX_EPOCH + Duration::new(meta.ctime().max(0) as u64, meta.ctime_nsec() as u32);
        // Either clock may be the coarse one: a change just before the announcement counts too.
        let ours = announced.is_some_and(|a| {
            let apart = changed.duration_since(a).unwrap_or_else(|e| e.duration());
            apart <= WRITE_STARTS
        });
        let trusted = j.mark.filter(|m| {
            let as_marked = m.len == len && m.ctime == ctime(&meta);
            let ours_under_way = m.len < len && len <= m.pending && ours;
            (as_marked || ours_under_way) && h.boot == boot && boot != [0; 16]
        });
        let most = (len / GROUP).min((size - 1) / GROUP);
        let groups = match trusted {
            Some(Mark { done: Some(root), .. }) if len == size => {
                return Ok(Some(Resumable {
                    partial,
                    offset: size,
                    digest: root,
                    held: Held::Whole(root),
                }));
            }
            Some(m) => most.min(j.cvs).min(m.cvs),
            // The file changed since the journal's last word about it, or the machine
            // rebooted (what was written may not have reached the disk): check the
            // journal's CVs against the data, keeping the groups that match.
            None => {
                let mut verified = 0u64;
                let mut buf = vec![0u8; GROUP as usize];
                read_cvs(&journal, |cv| {
                    if verified >= most {
                        return false;
                    }
                    touch();
                    let ok = partial.file.read_exact_at(&mut buf, verified * GROUP).is_ok()
                        && group_cv(verified, &buf) == *cv;
                    if ok {
                        verified += 1;
                    }
                    ok
                });
                tracing::info!(path = %rel, groups = verified, "checked a partial file against its journal");
                verified
            }
        };
        if groups == 0 {
            return Ok(None);
        }
        let mut cvs = Vec::new();
        let mut taken = 0u64;
        // The first `groups` CVs, streamed (at most `groups` × 32 bytes in memory, 32 bytes per
        // MiB held).
        read_cvs(&journal, |cv| {
            cvs.push(*cv);
            taken += 1;
            taken < groups
        });
        if taken < groups {
            return Ok(None);
        }
        let p = prefix(
            &partial.file,
            groups * GROUP,
            size,
            &mut cvs.into_iter(),
            &mut |_, _| {},
            touch,
        )
        .map_err(io_err)?;
        Ok(Some(Resumable {
            partial,
            offset: groups * GROUP,
            digest: p.digest,
            held: Held::Prefix(p.state),
        }))
    }

    /// The canonical destination directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Which of these top-level names already exist (any file type, dangling symlinks too)?
    ///
    /// Names that are not valid [`RelPath`]s are never reported: they are refused later anyway.
    pub fn existing(&self, names: &[Vec<u8>]) -> Vec<Vec<u8>> {
        names
            .iter()
            .filter(|name| {
                RelPath::parse(name).is_ok()
                    && self.root_dir.stat(super::path::os(name)).is_ok_and(|s| s.is_some())
            })
            .cloned()
            .collect()
    }

    /// Create a directory and its missing parents; fine if it already is a real directory.
    pub fn create_dir(&self, rel: &RelPath) -> Result<(), FsError> {
        self.dir_of(rel, rel.as_bytes(), true).map(drop)
    }

    /// Apply `mode` (permission bits, setuid/setgid dropped) and `mtime`, where given, to a
    /// directory. Call it after the directory's contents are written.
    pub fn finish_dir(
        &self,
        rel: &RelPath,
        mode: Option<u32>,
        mtime: Option<SystemTime>,
    ) -> Result<(), FsError> {
        let parent = self.dir_of(rel, rel.dir(), false)?;
        let path = || parent.path.join(rel.name());
        // Opened without following a link, as a directory: what is changed is a real
        // directory in the real parent, whatever was swapped in since the walk.
        let dir = match parent.open_dir(rel.name()) {
            Ok(dir) => dir,
            Err(e) if not_a_dir(&e) => {
                let link = parent.stat(rel.name()).ok().flatten().is_some_and(is_symlink);
                return Err(blocked(rel, &rel.to_string(), link));
            }
            Err(e) => return Err(classify(&path(), e)),
        };
        if let Some(mode) = mode {
            dir.set_permissions(Permissions::from_mode(safe_mode(mode)))
                .map_err(|e| classify(&path(), e))?;
        }
        if let Some(mtime) = mtime {
            dir.set_modified(mtime).map_err(|e| classify(&path(), e))?;
        }
        Ok(())
    }

    /// Gives the directory at `rel` (made by this transfer or already there) these extended
    /// attributes, through a handle that follows no link.
    pub fn set_dir_xattrs(
        &self,
        rel: &RelPath,
        attrs: &[crate::wire::data::Xattr],
    ) -> Result<(), FsError> {
        use xattr::FileExt;
        let parent = self.dir_of(rel, rel.dir(), false)?;
        let path = || parent.path.join(rel.name());
        let dir = parent.open_dir(rel.name()).map_err(|e| classify(&path(), e))?;
        for a in attrs {
            dir.set_xattr(&a.name, &a.value).map_err(|e| classify(&path(), e))?;
        }
        Ok(())
    }

    /// Create a symlink at `rel` pointing to `target`, stored verbatim and never followed here.
    /// With `overwrite`, an existing non-directory is replaced atomically.
    pub fn symlink(&self, rel: &RelPath, target: &[u8], overwrite: bool) -> Result<(), FsError> {
        if target.is_empty() || target.contains(&0) || target.len() > super::MAX_PATH_LEN {
            return Err(unsafe_path(
                rel,
                "the link target is empty, too long or contains a NUL byte",
            ));
        }
        let at = self.prepare_final(rel, overwrite)?;
        let parent = &at.dir;
        self.unsynced(&parent.path);
        if !overwrite {
            // symlink(2) never replaces: an entry that appeared meanwhile is reported.
            return parent.symlink(target, &at.name).map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => FsError::Exists { path: at.path() },
                _ => classify_link(&at.path(), e, NO_SYMLINKS),
            });
        }
        for _ in 0..TEMP_ATTEMPTS {
            let tmp = temp_name(rel.name());
            match parent.symlink(target, &tmp) {
                Ok(()) => {
                    return parent.rename(&tmp, &at).map_err(|e| {
                        if let Err(e) = parent.remove(&tmp) {
                            tracing::warn!(path = %parent.path.join(&tmp).display(), error = %e, "could not remove temporary link");
                        }
                        rename_error(rel, &at.path(), e)
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(classify_link(&at.path(), e, NO_SYMLINKS)),
            }
        }
        Err(no_temp_name(&at.path()))
    }

    /// Start receiving a file of `size` bytes (and `mtime`, as offered): create missing
    /// parents, then open its partial file, empty, in the state directory (or, on another file
    /// system than the destination's, a new hidden temporary file beside the final name).
    /// Data never goes to the final name directly.
    pub fn create_file(
        &self,
        rel: &RelPath,
        size: u64,
        mtime: Option<Timestamp>,
        overwrite: bool,
    ) -> Result<PartFile, FsError> {
        let at = self.prepare_final(rel, overwrite)?;
        self.unsynced(&at.dir.path);
        if at.dir.dev != self.dev {
            return self.create_temp(rel, at, overwrite);
        }
        let id = partial_id(rel.as_bytes(), size, mtime);
        let Some(partial) = self.state.open(&id)? else {
            return Err(FsError::Busy { path: at.path() });
        };
        self.start(rel, at, partial, size, mtime, overwrite)
    }

    /// Start receiving a file again from nothing in the partial copy that was offered for
    /// resuming (the sender's copy turned out to differ).
    pub fn restart_file(
        &self,
        rel: &RelPath,
        held: Resumable,
        size: u64,
        mtime: Option<Timestamp>,
        overwrite: bool,
    ) -> Result<PartFile, FsError> {
        let at = self.prepare_held(rel, &held, overwrite)?;
        self.unsynced(&at.dir.path);
        self.start(rel, at, held.partial, size, mtime, overwrite)
    }

    /// [`Dest::prepare_final`] for a file continued from `held`: where the file system cannot
    /// hold its name, the partial copy goes too, as it could never be put in place.
    fn prepare_held(
        &self,
        rel: &RelPath,
        held: &Resumable,
        overwrite: bool,
    ) -> Result<At, FsError> {
        let found = self.prepare_final(rel, overwrite);
        if let Err(FsError::Unwritable { .. }) = &found {
            for at in [&held.partial.part, &held.partial.journal] {
                let _ = at.dir.remove(&at.name);
            }
        }
        found
    }

    /// Continue receiving a file from the partial copy `held` ([`Dest::examine`] found it):
    /// what follows `held.offset` is dropped, and the file goes on from there.
    pub fn resume_file(
        &self,
        rel: &RelPath,
        held: Resumable,
        size: u64,
        mtime: Option<Timestamp>,
        overwrite: bool,
    ) -> Result<PartFile, FsError> {
        let at = self.prepare_held(rel, &held, overwrite)?;
        self.unsynced(&at.dir.path);
        let Resumable { partial, offset, .. } = held;
        let Partial { mut file, part, journal, .. } = partial;
        let err = |e| classify(&part.path(), e);
        if offset < size {
            file.set_len(offset).map_err(err)?;
        }
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(offset)).map_err(err)?;
        let writer = if size > SMALL && offset < size {
            // A fresh journal with the CVs of the groups kept, then on as usual.
            let meta = file.metadata().map_err(err)?;
            let old = journal.dir.open_file(&journal.name, OFlags::RDONLY).map_err(err)?;
            let mut next = journal.name.clone();
            next.push(".new");
            let next = At::new(&journal.dir, next);
            let header = header_for(self.boot, rel, size, mtime, &meta);
            let out = new_journal(&next).map_err(err)?;
            let mut w = JournalWriter::create(out, &header, [], Mark::default()).map_err(err)?;
            let groups = offset / GROUP;
            let mut batch = Vec::with_capacity(1024);
            let mut taken = 0u64;
            let mut failed = None;
            read_cvs(&old, |cv| {
                batch.push(*cv);
                taken += 1;
                if batch.len() == 1024 {
                    failed = failed.take().or(w.append(&batch).err());
                    batch.clear();
                }
                taken < groups
            });
            if let Some(e) = failed.or(w.append(&batch).err()) {
                return Err(err(e));
            }
            if taken < groups {
                return Err(FsError::Io {
                    path: journal.path(),
                    source: io::Error::other("the journal changed while resuming"),
                });
            }
            w.mark(Mark {
                len: offset,
                ctime: ctime(&meta),
                cvs: w.cvs(),
                pending: offset,
                done: None,
            })
            .map_err(err)?;
            next.dir.rename(&next.name, &journal).map_err(err)?;
            Some(w)
        } else {
            None
        };
        let names = Names {
            tmp: part,
            at,
            rel: rel.clone(),
            overwrite,
            tmp_exists: true,
            keep: true,
            journal: (size > SMALL).then_some(journal),
        };
        tracing::debug!(path = %names.at.path().display(), offset, "resuming file");
        Ok(PartFile::new(file, names, offset, writer))
    }

    /// A fresh start in `partial` (emptied), with a new journal for a large file.
    fn start(
        &self,
        rel: &RelPath,
        at: At,
        partial: Partial,
        size: u64,
        mtime: Option<Timestamp>,
        overwrite: bool,
    ) -> Result<PartFile, FsError> {
        let Partial { file, len, part, journal } = partial;
        let err = |e| classify(&part.path(), e);
        if len > 0 {
            file.set_len(0).map_err(err)?;
        }
        // A small file's id never has a journal (the id holds the size).
        let writer = if size > SMALL {
            let meta = file.metadata().map_err(err)?;
            let out = new_journal(&journal).map_err(err)?;
            let header = header_for(self.boot, rel, size, mtime, &meta);
            Some(JournalWriter::create(out, &header, [], Mark::default()).map_err(err)?)
        } else {
            None
        };
        let names = Names {
            tmp: part,
            at,
            rel: rel.clone(),
            overwrite,
            tmp_exists: true,
            keep: true,
            journal: writer.is_some().then_some(journal),
        };
        tracing::debug!(path = %names.at.path().display(), tmp = %names.tmp.path().display(), "receiving file");
        Ok(PartFile::new(file, names, 0, writer))
    }

    /// A temporary file beside the final name, removed unless committed (not resumable).
    fn create_temp(&self, rel: &RelPath, at: At, overwrite: bool) -> Result<PartFile, FsError> {
        let parent = at.dir.clone();
        for _ in 0..TEMP_ATTEMPTS {
            let tmp = temp_name(rel.name());
            match parent.open_file(&tmp, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL) {
                Ok(file) => {
                    let tmp = At::new(&parent, tmp);
                    tracing::debug!(path = %at.path().display(), tmp = %tmp.path().display(), "receiving file (not resumable: another file system)");
                    let names = Names {
                        tmp,
                        at,
                        rel: rel.clone(),
                        overwrite,
                        tmp_exists: true,
                        keep: false,
                        journal: None,
                    };
                    return Ok(PartFile::new(file, names, 0, None));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(classify_new(&at.path(), e)),
            }
        }
        Err(no_temp_name(&at.path()))
    }
    /// A receiving lane's handle for making its batches of files durable; open it when the
    /// lane starts, so that write-back errors from then on are reported to it.
    pub fn syncer(&self) -> Syncer {
        Syncer::open(&self.root)
    }

    /// Makes received files durable, gives them their modes and puts them in place, many at
    /// once: one `syncfs(2)` of the destination's file system flushes a whole batch, where an
    /// fsync per file would cost a journal commit each. Each file is fsynced by itself when it
    /// is alone, on another device than the destination (a mount point below it), where the
    /// file system is not one known to be local (FUSE and network file systems may not pass
    /// `syncfs` on), or if `syncfs` fails. Then each moves onto its final name, as
    /// [`PartFile::commit`] does. On error, the files not yet in place are removed.
    ///
    /// A file whose name the file system will not take ([`FsError::Unwritable`]) is removed
    /// and returned with its error; the others go on.
    pub fn commit_all(
        &self,
        syncer: &Syncer,
        files: Vec<Finished>,
    ) -> Result<Vec<(RelPath, FsError)>, FsError> {
        let whole_fs = files.len() > 1
            && files.iter().all(|f| Some(f.dev()) == syncer.dev)
            && syncer.sync_fs().is_ok();
        if !whole_fs {
            for file in &files {
                file.sync()?;
            }
        }
        let mut refused = Vec::new();
        for file in files {
            let rel = file.rel().clone();
            match file.install() {
                Ok(()) => self.forget_versions(&rel),
                // No version of it can be put in place here.
                Err(e @ FsError::Unwritable { .. }) => {
                    self.forget_versions(&rel);
                    refused.push((rel, e));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(refused)
    }

    /// `rel` is in place: partial copies of other versions of it, from earlier transfers, go.
    fn forget_versions(&self, rel: &RelPath) {
        let mut earlier = self.earlier.lock().unwrap_or_else(PoisonError::into_inner);
        if earlier.is_empty() {
            return;
        }
        if let Some(ids) = earlier.remove(&super::state::path_part(rel.as_bytes())) {
            for id in ids {
                tracing::debug!(path = %rel, id, "removing a partial copy of another version");
                self.state.remove_unused(&id);
            }
        }
    }

    /// Creates the directory `name` in `parent` (`rel` below the root), counted against
    /// the offer: a file's parents are created as needed (it may arrive before their
    /// entries), but never more of them than the offer declared. Fine if something is there
    /// already (another lane made it first: the walk then opens whatever it is). Lanes create
    /// directories one at a time, and a directory is noted as p2p-copy's (here and in the
    /// log, so that a resumed transfer still gives it the sender's metadata) before anyone
    /// else can see it: none is counted twice, and none is taken for the user's own.
    fn create_counted(&self, parent: &Dir, name: &OsStr, rel: &[u8]) -> Result<(), FsError> {
        let path = || parent.path.join(name);
        let mut made = self.made.lock().unwrap_or_else(PoisonError::into_inner);
        if parent.stat(name).map_err(|e| classify(&path(), e))?.is_some() {
            return Ok(());
        }
        if made.created >= made.limit {
            return Err(FsError::TooManyDirs { limit: made.limit });
        }
        match parent.mkdir(name) {
            Ok(()) => {
                made.created += 1;
                // A directory holding a directory of ours is no longer taken as empty: only
                // files are left to be found at the final rename.
                let up = rel.iter().rposition(|&b| b == b'/').map_or(&rel[..0], |i| &rel[..i]);
                made.fresh.remove(up);
                made.fresh.insert(rel.to_vec());
                if made.dirs.insert(rel.to_vec()) {
                    if let Some(log) = &made.log {
                        self.state.log_dir(log, rel)?;
                    }
                }
                drop(made);
                self.unsynced(&parent.path);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(classify_new(&path(), e)),
        }
    }

    /// Notes that `dir` got a new entry, to be made durable by [`Dest::sync_dirs`].
    fn unsynced(&self, dir: &Path) {
        let mut unsynced = self.unsynced.lock().unwrap_or_else(PoisonError::into_inner);
        if !unsynced.contains(dir) {
            unsynced.insert(dir.to_path_buf());
        }
    }

    /// Makes the names of the entries created so far durable: fsyncs every directory that
    /// received one (file systems that cannot are skipped). Call once every file is in place,
    /// before telling the sender the transfer is complete.
    pub fn sync_dirs(&self) -> Result<(), FsError> {
        let dirs =
            std::mem::take(&mut *self.unsynced.lock().unwrap_or_else(PoisonError::into_inner));
        for dir in dirs {
            super::part::sync_dir(&dir)?;
        }
        Ok(())
    }

    /// Create the parents of `rel` and check its final name: it may exist only with `overwrite`,
    /// and never as a directory. Returns the final name in its (open) parent.
    fn prepare_final(&self, rel: &RelPath, overwrite: bool) -> Result<At, FsError> {
        let parent = self.dir_of(rel, rel.dir(), true)?;
        let at = At::new(&parent, rel.name());
        if self.made.lock().unwrap_or_else(PoisonError::into_inner).fresh.contains(rel.dir()) {
            // This run made the directory and no directory in it: the name is free, or taken by
            // a file, which putting the file in place finds as it would find one that raced us
            // to the name. One call less for each file of a new tree.
            return Ok(at);
        }
        match parent.stat(rel.name()) {
            Ok(Some(_)) if !overwrite => Err(FsError::Exists { path: at.path() }),
            Ok(Some(st)) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                Err(replaces_dir(rel))
            }
            Ok(_) => Ok(at),
            Err(e) => Err(classify(&at.path(), e)),
        }
    }

    /// The directory `to` (a prefix of `rel`, `""` for the root), open: walked from the root
    /// one component at a time, each a real directory, never a link; missing ones are created
    /// when `create` (counted against the offer).
    fn dir_of(&self, rel: &RelPath, to: &[u8], create: bool) -> Result<Arc<Dir>, FsError> {
        let mkdir = |parent: &Dir, name: &OsStr, to: &[u8]| self.create_counted(parent, name, to);
        let mkdir: Option<MakeDir<'_>> = if create { Some(&mkdir) } else { None };
        match walk(&self.root_dir, &self.dirs, to, mkdir)? {
            Walked::Dir(dir) => Ok(dir),
            Walked::Missing => Err(classify(
                &self.root.join(super::path::os(to)),
                io::Error::new(io::ErrorKind::NotFound, "no such directory"),
            )),
            Walked::Blocked { shown, link } => Err(blocked(rel, &shown, link)),
        }
    }
}

/// A journal's header for the partial file `meta` of the entry `rel`.
fn header_for(
    boot: [u8; 16],
    rel: &RelPath,
    size: u64,
    mtime: Option<Timestamp>,
    meta: &fs::Metadata,
) -> Header {
    Header { boot, dev: meta.dev(), ino: meta.ino(), size, mtime, path: rel.as_bytes().to_vec() }
}

/// A journal file, emptied, mode 0o600, never through a symlink.
fn new_journal(at: &At) -> io::Result<File> {
    at.dir.open_file(&at.name, OFlags::RDWR | OFlags::CREATE | OFlags::TRUNC)
}

/// Permission bits to apply: `mode & 0o7777` without setuid and setgid.
pub(super) fn safe_mode(mode: u32) -> u32 {
    mode & 0o7777 & !0o6000
}

/// A hidden, unique name beside `name`: `.<name>.p2p-copy-<16 hex>.part`, with `name`
/// shortened (at a character boundary, if it is text) so the result fits in one component.
fn temp_name(name: &OsStr) -> OsString {
    let name = name.as_encoded_bytes();
    let overhead = 1 + TEMP_MARKER.len() + 16 + TEMP_SUFFIX.len();
    let mut keep = name.len().min(MAX_COMPONENT_LEN - overhead);
    if let Ok(text) = std::str::from_utf8(name) {
        while !text.is_char_boundary(keep) {
            keep -= 1;
        }
    }
    let random = format!("{:016x}", rand::random::<u64>());
    let tmp =
        [b".", &name[..keep], TEMP_MARKER.as_bytes(), random.as_bytes(), TEMP_SUFFIX.as_bytes()];
    super::path::os(&tmp.concat()).to_os_string()
}

/// The error for `shown` (a prefix of `rel`) that is not a real directory: a link (`link`)
/// or anything else.
fn blocked(rel: &RelPath, shown: &str, link: bool) -> FsError {
    if link {
        unsafe_path(
            rel,
            &format!(
                "{shown} is a symbolic link, and p2p-copy never writes through links \
                 in the destination"
            ),
        )
    } else {
        unsafe_path(rel, &format!("{shown} exists and is not a directory"))
    }
}

fn is_symlink(st: rustix::fs::Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::Symlink
}

pub(super) fn unsafe_path(rel: &RelPath, reason: &str) -> FsError {
    FsError::Unsafe { path: rel.to_string(), reason: reason.to_owned() }
}

pub(super) fn replaces_dir(rel: &RelPath) -> FsError {
    unsafe_path(rel, "a directory is in the way, and p2p-copy never replaces a directory")
}

/// The destination's file system, for one `syncfs(2)` per batch of received files, where that
/// can be trusted (see [`Dest::commit_all`]).
#[derive(Debug)]
pub struct Syncer {
    /// The destination directory, open; `None` where `syncfs` is not used.
    root: Option<fs::File>,
    /// Its device.
    dev: Option<u64>,
}

impl Syncer {
    fn open(root: &Path) -> Syncer {
        use std::os::unix::fs::MetadataExt;
        let Ok(dir) = fs::File::open(root) else { return Syncer { root: None, dev: None } };
        let dev = dir.metadata().ok().map(|m| m.dev());
        let local = local_fs(&dir);
        Syncer { root: local.then_some(dir), dev }
    }

    fn sync_fs(&self) -> io::Result<()> {
        let Some(root) = &self.root else {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "no syncfs here"));
        };
        sync_fs(root)
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn sync_fs(dir: &fs::File) -> io::Result<()> {
    rustix::fs::syncfs(dir).map_err(io::Error::from)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn sync_fs(_dir: &fs::File) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "no syncfs here"))
}

/// Whether `dir` is on a local file system whose `syncfs` writes its files' data: ext2/3/4,
/// XFS, Btrfs, tmpfs, F2FS, ZFS, bcachefs. Anything else (FUSE, NFS, SMB, …) gets an fsync
/// per file.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn local_fs(dir: &fs::File) -> bool {
    const LOCAL: [u64; 7] =
        [0xEF53, 0x5846_5342, 0x9123_683E, 0x0102_1994, 0xF2F5_2010, 0x2FC1_2FC1, 0xCA45_1A4E];
    rustix::fs::fstatfs(dir).is_ok_and(|s| LOCAL.contains(&(s.f_type as u64)))
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn local_fs(_dir: &fs::File) -> bool {
    false
}

/// Map a failed rename onto `path`; EISDIR means a directory appeared under the final name.
pub(super) fn rename_error(rel: &RelPath, path: &Path, err: io::Error) -> FsError {
    match err.kind() {
        io::ErrorKind::IsADirectory | io::ErrorKind::DirectoryNotEmpty => replaces_dir(rel),
        _ => classify_new(path, err),
    }
}

fn no_temp_name(path: &Path) -> FsError {
    FsError::Io {
        path: path.to_path_buf(),
        source: io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no unused temporary name found beside it",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_hidden_unique_and_fit() {
        let a = temp_name(OsStr::new("photo.jpg")).into_string().unwrap();
        let b = temp_name(OsStr::new("photo.jpg")).into_string().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(".photo.jpg.p2p-copy-") && a.ends_with(".part"), "{a}");
        assert_eq!(a.len(), ".photo.jpg".len() + TEMP_MARKER.len() + 16 + TEMP_SUFFIX.len());

        let long = "é".repeat(MAX_COMPONENT_LEN / 2);
        let t = temp_name(OsStr::new(&long)).into_string().expect("cut between characters");
        assert!(t.len() <= MAX_COMPONENT_LEN, "{}", t.len());
        assert!(t.starts_with(".é"));

        // A name that is not text is cut anywhere, and kept as bytes.
        let bytes = vec![0xff; MAX_COMPONENT_LEN];
        let t = temp_name(super::super::path::os(&bytes));
        assert!(t.len() <= MAX_COMPONENT_LEN && t.as_encoded_bytes().starts_with(b".\xff\xff"));
    }

    #[test]
    fn safe_mode_drops_setuid_and_setgid() {
        assert_eq!(safe_mode(0o104755), 0o755);
        assert_eq!(safe_mode(0o6777), 0o777);
        assert_eq!(safe_mode(0o1777), 0o1777);
        assert_eq!(safe_mode(0o640), 0o640);
    }
}
