//! Directory handles: below the destination, every name is looked up in a directory that is
//! already open, one component at a time, and never through a symbolic link.
//!
//! A path that is checked and then used by name can change in between: any local process that
//! can write into the destination (a shared `/tmp`, a group directory) could swap a checked
//! directory for a link and have the next file land wherever the receiver may write. Here a
//! directory is opened with `O_NOFOLLOW | O_DIRECTORY` (so it is a real directory, or nothing
//! is opened), and what follows (`openat`, `mkdirat`, `renameat2`, `symlinkat`, …) happens in
//! that very directory, wherever it may have been moved since. The handles of the directories
//! used last are kept ([`DirCache`]): most entries share their parent with the one before, so a
//! large tree costs one lookup per entry, not one per component of its path.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, CWD};
use rustix::io::Errno;

use super::error::{classify, FsError};
use super::path::{os, shown};

/// How a directory is held for walking and for the `*at` calls: `O_PATH` where there is one
/// (only search permission is needed, as for a path).
#[cfg(any(target_os = "linux", target_os = "android"))]
const WALK: OFlags =
    OFlags::PATH.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const WALK: OFlags =
    OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

/// How many directory handles a destination keeps.
const CACHED: usize = 64;

/// An open directory.
#[derive(Debug)]
pub(super) struct Dir {
    fd: OwnedFd,
    /// Its device: a mount point below the destination is another one.
    pub dev: u64,
    /// Where it was when opened, for messages and for syncing its entries.
    pub path: PathBuf,
}

/// A name in an open directory.
#[derive(Debug, Clone)]
pub(super) struct At {
    pub dir: Arc<Dir>,
    pub name: OsString,
}

impl At {
    pub fn new(dir: &Arc<Dir>, name: impl Into<OsString>) -> At {
        At { dir: dir.clone(), name: name.into() }
    }

    /// The path, for messages.
    pub fn path(&self) -> PathBuf {
        self.dir.path.join(&self.name)
    }
}

/// The result of walking to a directory.
#[derive(Debug)]
pub(super) enum Walked {
    /// There, and a real directory.
    Dir(Arc<Dir>),
    /// A component is missing (and was not to be created).
    Missing,
    /// A component, `shown` (relative to the destination), is not a real directory.
    Blocked { shown: String, link: bool },
}

impl Dir {
    /// Opens the directory at `path` (its last component is not followed if it is a link).
    pub fn open(path: &Path) -> io::Result<Dir> {
        Dir::from_fd(rustix::fs::open(path, WALK, Mode::empty())?, path.to_path_buf())
    }

    /// Opens the directory `name` in this one; `Err(NOTDIR or LOOP)` if it is not a real
    /// directory.
    fn child(&self, name: &OsStr) -> Result<Dir, Errno> {
        let fd = rustix::fs::openat(&self.fd, name, WALK, Mode::empty())?;
        let st = rustix::fs::fstat(&fd)?;
        Ok(Dir { fd, dev: st.st_dev as u64, path: self.path.join(name) })
    }

    fn from_fd(fd: OwnedFd, path: PathBuf) -> io::Result<Dir> {
        let st = rustix::fs::fstat(&fd)?;
        Ok(Dir { fd, dev: st.st_dev as u64, path })
    }

    /// What `name` is, without following it; `None` if nothing is there.
    pub fn stat(&self, name: impl AsRef<OsStr>) -> io::Result<Option<Stat>> {
        match rustix::fs::statat(&self.fd, name.as_ref(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens (with `flags`, creating it mode 0o600 if `flags` say so) the file `name`, never
    /// through a link.
    pub fn open_file(&self, name: impl AsRef<OsStr>, flags: OFlags) -> io::Result<File> {
        let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.fd, name.as_ref(), flags, Mode::from_raw_mode(0o600))?;
        Ok(File::from(fd))
    }

    /// Opens the directory `name` for changing its mode and times (not through a link).
    pub fn open_dir(&self, name: impl AsRef<OsStr>) -> io::Result<File> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        Ok(File::from(rustix::fs::openat(&self.fd, name.as_ref(), flags, Mode::empty())?))
    }

    /// Makes the directory `name` (modes as the umask allows).
    pub fn mkdir(&self, name: impl AsRef<OsStr>) -> io::Result<()> {
        Ok(rustix::fs::mkdirat(&self.fd, name.as_ref(), Mode::from_raw_mode(0o777))?)
    }

    /// Removes the file or link `name`.
    pub fn remove(&self, name: impl AsRef<OsStr>) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(&self.fd, name.as_ref(), AtFlags::empty())?)
    }

    /// Sets the permission bits of `name`, which must be a file of ours (`chmod` follows
    /// links: call it only on names this process created where nobody else can write).
    pub fn chmod(&self, name: impl AsRef<OsStr>, mode: u32) -> io::Result<()> {
        Ok(rustix::fs::chmodat(
            &self.fd,
            name.as_ref(),
            Mode::from_raw_mode(mode),
            AtFlags::empty(),
        )?)
    }

    /// Creates the link `name` to `target`, which is stored as given.
    pub fn symlink(&self, target: &[u8], name: impl AsRef<OsStr>) -> io::Result<()> {
        Ok(rustix::fs::symlinkat(os(target), &self.fd, name.as_ref())?)
    }

    /// The target of the link `name`.
    pub fn readlink(&self, name: impl AsRef<OsStr>) -> io::Result<Vec<u8>> {
        Ok(rustix::fs::readlinkat(&self.fd, name.as_ref(), Vec::new())?.into_bytes())
    }

    /// Moves `name` onto `to`, replacing what is there (a file or a link, never followed).
    pub fn rename(&self, name: impl AsRef<OsStr>, to: &At) -> io::Result<()> {
        Ok(rustix::fs::renameat(&self.fd, name.as_ref(), &to.dir.fd, to.name.as_os_str())?)
    }

    /// Moves `name` onto `to` if nothing is there (`AlreadyExists` otherwise), atomically;
    /// `Unsupported` where the file system cannot tell.
    pub fn rename_new(&self, name: impl AsRef<OsStr>, to: &At) -> io::Result<()> {
        rename_noreplace(&self.fd, name.as_ref(), &to.dir.fd, &to.name)
    }

    /// The names in this directory (`.` and `..` left out); the directory must have been
    /// opened readable ([`open_own_dir`]).
    pub fn names(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in rustix::fs::Dir::read_from(&self.fd)? {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                // Names that are not UTF-8 are never ours.
                if let Ok(name) = std::str::from_utf8(name) {
                    out.push(name.to_owned());
                }
            }
        }
        Ok(out)
    }

    /// Gives the file `name` a second name `to`, which must not exist.
    pub fn link(&self, name: impl AsRef<OsStr>, to: &At) -> io::Result<()> {
        let flags = AtFlags::empty();
        Ok(rustix::fs::linkat(&self.fd, name.as_ref(), &to.dir.fd, to.name.as_os_str(), flags)?)
    }
}

#[cfg(any(target_os = "linux", target_os = "android", target_vendor = "apple"))]
fn rename_noreplace(from: &OwnedFd, name: &OsStr, to: &OwnedFd, to_name: &OsStr) -> io::Result<()> {
    use rustix::fs::RenameFlags;
    match rustix::fs::renameat_with(from, name, to, to_name, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        // The file system (or the kernel) cannot rename without replacing.
        Err(Errno::INVAL | Errno::NOSYS | Errno::NOTSUP) => {
            Err(io::Error::new(io::ErrorKind::Unsupported, "no rename without replacing"))
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_vendor = "apple")))]
fn rename_noreplace(_: &OwnedFd, _: &OsStr, _: &OwnedFd, _: &OsStr) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "no rename without replacing"))
}

/// Whether `e`, from opening a directory without following links, says that what is there is
/// not a real directory (a symbolic link: `ELOOP`; anything else: `ENOTDIR`).
pub(super) fn not_a_dir(e: &io::Error) -> bool {
    [Errno::LOOP, Errno::NOTDIR].iter().any(|n| e.raw_os_error() == Some(n.raw_os_error()))
}

/// The handles of the directories used last, by their path below the destination.
#[derive(Debug, Default)]
pub(super) struct DirCache {
    dirs: Mutex<HashMap<Vec<u8>, Arc<Dir>>>,
}

impl DirCache {
    fn get(&self, rel: &[u8]) -> Option<Arc<Dir>> {
        self.dirs.lock().unwrap_or_else(PoisonError::into_inner).get(rel).cloned()
    }

    fn put(&self, rel: &[u8], dir: &Arc<Dir>) {
        let mut dirs = self.dirs.lock().unwrap_or_else(PoisonError::into_inner);
        if dirs.len() >= CACHED && !dirs.contains_key(rel) {
            // Any one goes: a walk from the nearest kept ancestor is short anyway.
            if let Some(old) = dirs.keys().next().cloned() {
                dirs.remove(&old);
            }
        }
        dirs.insert(rel.to_vec(), dir.clone());
    }
}

/// Makes the directory `name` in a parent (`rel` below the destination) for [`walk`].
pub(super) type MakeDir<'a> = &'a dyn Fn(&Dir, &OsStr, &[u8]) -> Result<(), FsError>;

/// Walks from `root` to the directory `to` (a path below it, `""` for the root itself) one
/// component at a time, each opened without following links. A missing component is made
/// with `mkdir(parent, name, shown)` where given (which may find that someone else made it
/// first: the walk opens whatever is there then), else the walk stops at it. `to` is a
/// valid path's bytes ([`super::RelPath`]).
pub(super) fn walk(
    root: &Arc<Dir>,
    cache: &DirCache,
    to: &[u8],
    mkdir: Option<MakeDir<'_>>,
) -> Result<Walked, FsError> {
    if to.is_empty() {
        return Ok(Walked::Dir(root.clone()));
    }
    if let Some(dir) = cache.get(to) {
        return Ok(Walked::Dir(dir));
    }
    // From the nearest ancestor whose handle is kept.
    let (mut dir, mut done) = (root.clone(), 0);
    for i in (0..to.len()).rev().filter(|&i| to[i] == b'/') {
        if let Some(d) = cache.get(&to[..i]) {
            (dir, done) = (d, i + 1);
            break;
        }
    }
    let mut end = done;
    for comp in to[done..].split(|&b| b == b'/') {
        end += comp.len();
        let (rel, comp) = (&to[..end], os(comp));
        end += 1;
        let opened = match dir.child(comp) {
            Err(Errno::NOENT) => match mkdir {
                Some(mkdir) => {
                    mkdir(&dir, comp, rel)?;
                    dir.child(comp)
                }
                None => return Ok(Walked::Missing),
            },
            other => other,
        };
        dir = match opened {
            Ok(child) => Arc::new(child),
            Err(Errno::NOTDIR | Errno::LOOP) => {
                let link = dir
                    .stat(comp)
                    .ok()
                    .flatten()
                    .is_some_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink);
                return Ok(Walked::Blocked { shown: shown(rel).into_owned(), link });
            }
            Err(e) => return Err(classify(&dir.path.join(comp), e.into())),
        };
    }
    cache.put(to, &dir);
    Ok(Walked::Dir(dir))
}

/// Opens the directory `path` as a [`Dir`] for the state directory: `O_RDONLY` (its mode may
/// need setting), not through a link.
pub(super) fn open_own_dir(path: &Path) -> io::Result<(Dir, Stat)> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(CWD, path, flags, Mode::empty())?;
    let st = rustix::fs::fstat(&fd)?;
    Ok((Dir { fd, dev: st.st_dev as u64, path: path.to_path_buf() }, st))
}

impl std::os::fd::AsFd for Dir {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.fd)
    }
}
