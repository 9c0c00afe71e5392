//! The destination directory: checked walks from the root, directories, symlinks, new files.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use super::error::{classify, FsError};
use super::part::{Finished, PartFile};
use super::path::{RelPath, MAX_COMPONENT_LEN};

/// Attempts at finding an unused temporary name before giving up.
const TEMP_ATTEMPTS: usize = 16;
/// Marker in every temporary name, so leftovers are recognisable.
const TEMP_MARKER: &str = ".p2p-copy-";
const TEMP_SUFFIX: &str = ".part";

/// The destination directory. All operations take [`RelPath`]s and stay inside `root`.
#[derive(Debug)]
pub struct Dest {
    /// Canonical: no symlinks, absolute.
    root: PathBuf,
    /// Directories that received entries (files, directories, symlinks) whose names are not
    /// yet durable: [`Dest::sync_dirs`] fsyncs each once, at the end, instead of once per entry.
    unsynced: Mutex<HashSet<PathBuf>>,
}

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
        let meta = fs::metadata(&canonical).map_err(|e| classify(&canonical, e))?;
        if !meta.is_dir() {
            return Err(FsError::Io {
                path: canonical,
                source: io::Error::new(
                    io::ErrorKind::NotADirectory,
                    "the destination is not a directory; choose a directory with --out",
                ),
            });
        }
        Ok(Dest { root: canonical, unsynced: Mutex::default() })
    }

    /// The canonical destination directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Which of these top-level names already exist (any file type, dangling symlinks too)?
    ///
    /// Names that are not valid [`RelPath`]s are never reported: they are refused later anyway.
    pub fn existing(&self, names: &[&str]) -> Vec<String> {
        names
            .iter()
            .filter(|name| {
                RelPath::parse(name).is_ok() && fs::symlink_metadata(self.root.join(name)).is_ok()
            })
            .map(|name| (*name).to_owned())
            .collect()
    }

    /// Create a directory and its missing parents; fine if it already is a real directory.
    pub fn create_dir(&self, rel: &RelPath) -> Result<(), FsError> {
        self.walk(rel, rel.components(), true).map(drop)
    }

    /// Apply `mode` (permission bits, setuid/setgid dropped) and `mtime` to a directory. Call it
    /// after the directory's contents are written.
    pub fn finish_dir(
        &self,
        rel: &RelPath,
        mode: u32,
        mtime: Option<SystemTime>,
    ) -> Result<(), FsError> {
        let path = self.walk(rel, rel.components(), false)?;
        // The walk saw a real directory; make sure the handle we change is that same one and not
        // something swapped in since.
        let before = fs::symlink_metadata(&path).map_err(|e| classify(&path, e))?;
        check_dir(rel, rel.as_str(), &before)?;
        let dir = File::open(&path).map_err(|e| classify(&path, e))?;
        let after = dir.metadata().map_err(|e| classify(&path, e))?;
        if (after.dev(), after.ino()) != (before.dev(), before.ino()) {
            return Err(unsafe_path(rel, "the directory was replaced while being written"));
        }
        dir.set_permissions(Permissions::from_mode(safe_mode(mode)))
            .map_err(|e| classify(&path, e))?;
        if let Some(mtime) = mtime {
            dir.set_modified(mtime).map_err(|e| classify(&path, e))?;
        }
        Ok(())
    }

    /// Create a symlink at `rel` pointing to `target`, stored verbatim and never followed here.
    /// With `overwrite`, an existing non-directory is replaced atomically.
    pub fn symlink(&self, rel: &RelPath, target: &str, overwrite: bool) -> Result<(), FsError> {
        if target.is_empty() || target.contains('\0') || target.len() > super::MAX_PATH_LEN {
            return Err(unsafe_path(
                rel,
                "the link target is empty, too long or contains a NUL byte",
            ));
        }
        let (parent, path) = self.prepare_final(rel, overwrite)?;
        self.unsynced(parent.clone());
        if !overwrite {
            // symlink(2) never replaces: an entry that appeared meanwhile is reported.
            return std::os::unix::fs::symlink(target, &path).map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => FsError::Exists { path: path.clone() },
                _ => classify(&path, e),
            });
        }
        for _ in 0..TEMP_ATTEMPTS {
            let tmp = parent.join(temp_name(rel.name()));
            match std::os::unix::fs::symlink(target, &tmp) {
                Ok(()) => {
                    return fs::rename(&tmp, &path).map_err(|e| {
                        if let Err(e) = fs::remove_file(&tmp) {
                            tracing::warn!(path = %tmp.display(), error = %e, "could not remove temporary link");
                        }
                        rename_error(rel, &path, e)
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(classify(&path, e)),
            }
        }
        Err(no_temp_name(&path))
    }

    /// Start receiving a file: create missing parents, then open a new temporary file beside the
    /// final name (hidden, `O_EXCL`, mode 0o600). Data never goes to the final name directly.
    pub fn create_file(&self, rel: &RelPath, overwrite: bool) -> Result<PartFile, FsError> {
        let (parent, path) = self.prepare_final(rel, overwrite)?;
        for _ in 0..TEMP_ATTEMPTS {
            let tmp = parent.join(temp_name(rel.name()));
            let opened = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp);
            match opened {
                Ok(file) => {
                    tracing::debug!(path = %path.display(), tmp = %tmp.display(), "receiving file");
                    self.unsynced(parent.clone());
                    return Ok(PartFile::new(file, tmp, path, rel.clone(), overwrite));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(classify(&path, e)),
            }
        }
        Err(no_temp_name(&path))
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
    pub fn commit_all(&self, syncer: &Syncer, files: Vec<Finished>) -> Result<(), FsError> {
        let whole_fs = files.len() > 1
            && files.iter().all(|f| Some(f.dev()) == syncer.dev)
            && syncer.sync_fs().is_ok();
        if !whole_fs {
            for file in &files {
                file.sync()?;
            }
        }
        for file in files {
            file.install()?;
        }
        Ok(())
    }

    /// Notes that `dir` got a new entry, to be made durable by [`Dest::sync_dirs`].
    fn unsynced(&self, dir: PathBuf) {
        self.unsynced.lock().unwrap_or_else(PoisonError::into_inner).insert(dir);
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
    /// and never as a directory. Returns the parent directory and the final path.
    fn prepare_final(&self, rel: &RelPath, overwrite: bool) -> Result<(PathBuf, PathBuf), FsError> {
        let parent = match rel.parent() {
            Some(parent) => self.walk(rel, parent.components(), true)?,
            None => self.root.clone(),
        };
        let path = parent.join(rel.name());
        match fs::symlink_metadata(&path) {
            Ok(_) if !overwrite => Err(FsError::Exists { path }),
            Ok(meta) if meta.is_dir() => Err(replaces_dir(rel)),
            Ok(_) => Ok((parent, path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((parent, path)),
            Err(e) => Err(classify(&path, e)),
        }
    }

    /// Walk `comps` (a prefix of `rel`) from the root one component at a time. Each must be a
    /// real directory, not a symlink; missing ones are created when `create`. Returns the path
    /// of the last one.
    fn walk<'a>(
        &self,
        rel: &RelPath,
        comps: impl Iterator<Item = &'a str>,
        create: bool,
    ) -> Result<PathBuf, FsError> {
        let mut path = self.root.clone();
        let mut shown = String::new();
        for comp in comps {
            path.push(comp);
            if !shown.is_empty() {
                shown.push('/');
            }
            shown.push_str(comp);
            let meta = match fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    match fs::create_dir(&path) {
                        Ok(()) => {
                            if let Some(parent) = path.parent() {
                                self.unsynced(parent.to_path_buf());
                            }
                            continue;
                        }
                        // Lost a race: look again at whatever is there now.
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                            fs::symlink_metadata(&path).map_err(|e| classify(&path, e))?
                        }
                        Err(e) => return Err(classify(&path, e)),
                    }
                }
                Err(e) => return Err(classify(&path, e)),
            };
            check_dir(rel, &shown, &meta)?;
        }
        Ok(path)
    }
}

/// Permission bits to apply: `mode & 0o7777` without setuid and setgid.
pub(super) fn safe_mode(mode: u32) -> u32 {
    mode & 0o7777 & !0o6000
}

/// A hidden, unique name beside `name`: `.<name>.p2p-copy-<16 hex>.part`, with `name`
/// shortened (at a character boundary) so the result fits in one component.
fn temp_name(name: &str) -> String {
    let overhead = 1 + TEMP_MARKER.len() + 16 + TEMP_SUFFIX.len();
    let mut keep = name.len().min(MAX_COMPONENT_LEN - overhead);
    while !name.is_char_boundary(keep) {
        keep -= 1;
    }
    format!(".{}{TEMP_MARKER}{:016x}{TEMP_SUFFIX}", &name[..keep], rand::random::<u64>())
}

/// Refuse anything but a real directory at `shown` (a prefix of `rel`).
fn check_dir(rel: &RelPath, shown: &str, meta: &fs::Metadata) -> Result<(), FsError> {
    let ft = meta.file_type();
    if ft.is_dir() {
        Ok(())
    } else if ft.is_symlink() {
        Err(unsafe_path(
            rel,
            &format!(
                "{shown} is a symbolic link, and p2p-copy never writes through links \
                 in the destination"
            ),
        ))
    } else {
        Err(unsafe_path(rel, &format!("{shown} exists and is not a directory")))
    }
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
        _ => classify(path, err),
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
        let a = temp_name("photo.jpg");
        let b = temp_name("photo.jpg");
        assert_ne!(a, b);
        assert!(a.starts_with(".photo.jpg.p2p-copy-") && a.ends_with(".part"), "{a}");
        assert_eq!(a.len(), ".photo.jpg".len() + TEMP_MARKER.len() + 16 + TEMP_SUFFIX.len());

        let long = "é".repeat(MAX_COMPONENT_LEN / 2);
        let t = temp_name(&long);
        assert!(t.len() <= MAX_COMPONENT_LEN, "{}", t.len());
        assert!(t.starts_with(".é"));
    }

    #[test]
    fn safe_mode_drops_setuid_and_setgid() {
        assert_eq!(safe_mode(0o104755), 0o755);
        assert_eq!(safe_mode(0o6777), 0o777);
        assert_eq!(safe_mode(0o1777), 0o1777);
        assert_eq!(safe_mode(0o640), 0o640);
    }
}
