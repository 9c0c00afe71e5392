//! A file being received: a temporary file beside its final name until `commit`.

use std::fs::{self, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::time::SystemTime;

use super::dest::{rename_error, replaces_dir, safe_mode};
use super::error::{classify, FsError};
use super::path::RelPath;

/// A file being received. Dropping it without [`commit`](PartFile::commit) or
/// [`finish`](PartFile::finish) removes the temporary file.
#[derive(Debug)]
pub struct PartFile {
    file: File,
    names: Names,
    written: u64,
}

/// A file received in full, closed, with its mtime set, waiting to be made durable and put
/// in place with others ([`Dest::commit_all`](super::Dest::commit_all)). Its temporary file
/// keeps mode 0o600 until then, so it can still be opened to be synced. Dropping it removes
/// the temporary file.
#[derive(Debug)]
pub struct Finished {
    names: Names,
    /// The mode it gets once durable.
    mode: u32,
    /// The device it is on.
    dev: u64,
}

/// Where a received file is and where it goes. Dropping it removes the temporary file unless
/// it was moved into place.
#[derive(Debug)]
struct Names {
    /// The temporary file, in the same directory as `path`.
    tmp: PathBuf,
    /// The final name.
    path: PathBuf,
    rel: RelPath,
    overwrite: bool,
    /// Whether `tmp` still exists and is ours to remove.
    tmp_exists: bool,
}

impl PartFile {
    pub(super) fn new(
        file: File,
        tmp: PathBuf,
        path: PathBuf,
        rel: RelPath,
        overwrite: bool,
    ) -> PartFile {
        PartFile { file, names: Names { tmp, path, rel, overwrite, tmp_exists: true }, written: 0 }
    }

    /// Append `data`. ENOSPC and EDQUOT surface as [`FsError::DiskFull`].
    pub fn write_all(&mut self, data: &[u8]) -> Result<(), FsError> {
        self.file.write_all(data).map_err(|e| classify(&self.names.path, e))?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Make the file durable and put it in place: set `mtime` and `mode` (setuid/setgid
    /// dropped), fsync, atomically move it onto the final name. The name itself becomes
    /// durable with [`Dest::sync_dirs`](super::Dest::sync_dirs): a crash before that may lose
    /// the file, but never leaves its final name on incomplete data.
    ///
    /// Without `overwrite`, a final name that appeared since [`create_file`] is reported as
    /// [`FsError::Exists`] and left alone; a directory there is never replaced. On error the
    /// temporary file is removed.
    ///
    /// [`create_file`]: super::Dest::create_file
    pub fn commit(mut self, mode: u32, mtime: Option<SystemTime>) -> Result<(), FsError> {
        self.set_metadata(mode, mtime)?;
        self.file.sync_all().map_err(|e| classify(&self.names.path, e))?;
        self.names.install()?;
        tracing::debug!(path = %self.names.path.display(), bytes = self.written, "file committed");
        Ok(())
    }

    /// Like [`commit`](PartFile::commit) but leaves making it durable, giving it `mode` and
    /// putting it in place to [`Dest::commit_all`](super::Dest::commit_all), which does that
    /// for many files at once. Sets `mtime` and closes the file.
    pub fn finish(self, mode: u32, mtime: Option<SystemTime>) -> Result<Finished, FsError> {
        let path = &self.names.path;
        if let Some(mtime) = mtime {
            self.file.set_modified(mtime).map_err(|e| classify(path, e))?;
        }
        let dev = self.file.metadata().map_err(|e| classify(path, e))?.dev();
        Ok(Finished { names: self.names, mode: safe_mode(mode), dev })
    }

    fn set_metadata(&mut self, mode: u32, mtime: Option<SystemTime>) -> Result<(), FsError> {
        let path = &self.names.path;
        if let Some(mtime) = mtime {
            self.file.set_modified(mtime).map_err(|e| classify(path, e))?;
        }
        self.file
            .set_permissions(Permissions::from_mode(safe_mode(mode)))
            .map_err(|e| classify(path, e))
    }

    /// Discard the file: remove the temporary file, reporting any error.
    pub fn discard(mut self) -> Result<(), FsError> {
        self.names.tmp_exists = false;
        match fs::remove_file(&self.names.tmp) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(classify(&self.names.tmp, e)),
        }
    }
}

impl Finished {
    /// The device the file is on.
    pub(super) fn dev(&self) -> u64 {
        self.dev
    }

    /// fsyncs the temporary file (opened again: it was closed; it is still 0o600 and ours).
    pub(super) fn sync(&self) -> Result<(), FsError> {
        File::open(&self.names.tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| classify(&self.names.path, e))
    }

    /// Gives the file its mode and moves it into place; the caller made its data durable
    /// first (the mode and the name become durable with the directory: `Dest::sync_dirs`).
    pub(super) fn install(mut self) -> Result<(), FsError> {
        fs::set_permissions(&self.names.tmp, Permissions::from_mode(self.mode))
            .map_err(|e| classify(&self.names.path, e))?;
        self.names.install()?;
        tracing::debug!(path = %self.names.path.display(), "file committed");
        Ok(())
    }
}

impl Names {
    /// Move the temporary file onto the final name.
    fn install(&mut self) -> Result<(), FsError> {
        if self.overwrite {
            // rename(2) replaces a file or a symlink itself (never what a link points to) and
            // fails with EISDIR on a directory; checking first gives the clearer error.
            if fs::symlink_metadata(&self.path).is_ok_and(|m| m.is_dir()) {
                return Err(replaces_dir(&self.rel));
            }
            return self.rename();
        }
        // link(2) fails atomically if the final name exists, which rename(2) cannot do.
        match fs::hard_link(&self.tmp, &self.path) {
            Ok(()) => {
                match fs::remove_file(&self.tmp) {
                    Ok(()) => self.tmp_exists = false,
                    // The file is in place; Drop tries again to remove the extra name.
                    Err(e) => {
                        tracing::warn!(path = %self.tmp.display(), error = %e, "could not remove temporary file")
                    }
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(FsError::Exists { path: self.path.clone() })
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
                ) =>
            {
                Err(classify(&self.path, e))
            }
            // No hard links on this file system (FAT, some network and FUSE file systems):
            // check, then rename. Only another local process could race us here.
            Err(_) => match fs::symlink_metadata(&self.path) {
                Ok(_) => Err(FsError::Exists { path: self.path.clone() }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => self.rename(),
                Err(e) => Err(classify(&self.path, e)),
            },
        }
    }

    fn rename(&mut self) -> Result<(), FsError> {
        fs::rename(&self.tmp, &self.path).map_err(|e| rename_error(&self.rel, &self.path, e))?;
        self.tmp_exists = false;
        Ok(())
    }
}

impl Drop for Names {
    fn drop(&mut self) {
        if self.tmp_exists {
            if let Err(e) = fs::remove_file(&self.tmp) {
                tracing::warn!(path = %self.tmp.display(), error = %e, "could not remove temporary file");
            }
        }
    }
}

/// fsync a directory so a rename in it survives a crash. File systems that cannot (EINVAL) are
/// skipped.
pub(super) fn sync_dir(dir: &std::path::Path) -> Result<(), FsError> {
    let result = File::open(dir).and_then(|d| d.sync_all());
    match result {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.kind(), io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported) => {
            Ok(())
        }
        Err(e) => Err(classify(dir, e)),
    }
}
