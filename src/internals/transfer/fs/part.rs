//! A file being received: a partial file until it is verified and put in place.
//!
//! Normally the partial file is the destination's state directory's `<id>.part` (see
//! [`super::state`]): it stays when the transfer fails or is stopped, so that the next one
//! continues it, and a large one keeps its journal up to date after every write. Where the
//! state directory cannot be used (the file's directory is on another file system: a rename
//! would not be atomic), it is a hidden temporary file beside the final name instead, removed
//! when dropped.

use std::fs::{File, Permissions};
use std::io::{self, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::time::SystemTime;

use rustix::fs::{FileType, OFlags};

use super::at::At;
use super::dest::{rename_error, replaces_dir, safe_mode};
use super::error::{classify, FsError};
use super::journal::{JournalWriter, Mark};
use super::path::RelPath;
use super::state::ctime;
use crate::proto::tree::ChainingValue;

/// A file being received. Dropping it keeps a resumable partial file (and removes a
/// temporary one).
#[derive(Debug)]
pub struct PartFile {
    file: File,
    names: Names,
    written: u64,
    /// Bytes it held when it was opened (a resumed partial copy).
    from: u64,
    journal: Option<JournalWriter>,
    /// The last bytes were a hole ([`PartFile::skip`]): the file's length must be set at the
    /// end, as no write made it that long.
    hole_at_end: bool,
}

/// A file received in full and verified, closed, with its mtime set, waiting to be made
/// durable and put in place with others ([`Dest::commit_all`](super::Dest::commit_all)). Its
/// partial file keeps mode 0o600 until then, so it can still be opened to be synced.
#[derive(Debug)]
pub struct Finished {
    names: Names,
    /// The mode it gets once durable.
    mode: u32,
    /// The device it is on.
    dev: u64,
    /// Whether it is durable and has its mode already (a temporary file).
    ready: bool,
    /// Its size, and whether it continued a partial copy.
    size: u64,
    resumed: bool,
}

/// Where a received file is and where it goes, as names in open directories.
#[derive(Debug)]
pub(super) struct Names {
    /// The partial file.
    pub tmp: At,
    /// The final name.
    pub at: At,
    pub rel: RelPath,
    pub overwrite: bool,
    /// Whether `tmp` still exists.
    pub tmp_exists: bool,
    /// Whether `tmp` is kept when this is dropped (a resumable partial file) or removed (a
    /// temporary file).
    pub keep: bool,
    /// The journal beside `tmp`, removed once the file is in place.
    pub journal: Option<At>,
}

impl PartFile {
    pub(super) fn new(
        file: File,
        names: Names,
        written: u64,
        journal: Option<JournalWriter>,
    ) -> PartFile {
        PartFile { file, names, written, from: written, journal, hole_at_end: false }
    }

    /// Append `data`. ENOSPC and EDQUOT surface as [`FsError::DiskFull`].
    pub fn write_all(&mut self, data: &[u8]) -> Result<(), FsError> {
        if let Some(journal) = self.journal.as_mut() {
            let end = self.written + data.len() as u64;
            journal.intend(end).map_err(|e| classify(&self.names.tmp.path(), e))?;
        }
        self.file.write_all(data).map_err(|e| classify(&self.names.at.path(), e))?;
        self.written += data.len() as u64;
        self.hole_at_end = false;
        Ok(())
    }

    /// Leave the next `len` bytes a hole (zeros the file system does not store): the sender's
    /// file is sparse there.
    pub fn skip(&mut self, len: u64) -> Result<(), FsError> {
        let end = self.written.checked_add(len).filter(|&e| i64::try_from(e).is_ok());
        let end = end.ok_or_else(|| FsError::Io {
            path: self.names.at.path(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "a hole beyond any file size"),
        })?;
        if let Some(journal) = self.journal.as_mut() {
            journal.intend(end).map_err(|e| classify(&self.names.tmp.path(), e))?;
        }
        self.file.seek(io::SeekFrom::Start(end)).map_err(|e| classify(&self.names.at.path(), e))?;
        self.written = end;
        self.hole_at_end = true;
        Ok(())
    }

    /// After a write: journals the CVs of the groups it completed and where the file stands
    /// (a file without a journal ignores this). The data is written before the record that
    /// claims it.
    pub fn record(&mut self, cvs: &[ChainingValue]) -> Result<(), FsError> {
        let Some(journal) = self.journal.as_mut() else { return Ok(()) };
        let err = |e| classify(&self.names.tmp.path(), e);
        let meta = self.file.metadata().map_err(err)?;
        journal.append(cvs).map_err(err)?;
        let (len, cvs) = (self.written, journal.cvs());
        let mark = Mark { len, ctime: ctime(&meta), cvs, pending: len, done: None };
        journal.mark(mark).map_err(err)
    }

    /// Bytes of the file held so far (a resumed file's prefix included).
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Make the file durable and put it in place at once: set `mtime` and `mode`
    /// (setuid/setgid dropped), fsync, atomically move it onto the final name. The name itself
    /// becomes durable with [`Dest::sync_dirs`](super::Dest::sync_dirs).
    ///
    /// Without `overwrite`, a final name that appeared since the file was started is reported
    /// as [`FsError::Exists`] and left alone; a directory there is never replaced.
    pub fn commit(
        self,
        mode: u32,
        mtime: Option<SystemTime>,
        root: [u8; 32],
    ) -> Result<(), FsError> {
        let finished = self.finish(mode, mtime, root)?;
        finished.sync()?;
        finished.install()
    }

    /// Gives the file these extended attributes (`send --xattrs`); the first that cannot be
    /// set ends it (the file system may not support them).
    pub fn set_xattrs(&self, attrs: &[crate::wire::data::Xattr]) -> std::io::Result<()> {
        use xattr::FileExt;
        attrs.iter().try_for_each(|a| self.file.set_xattr(&a.name, &a.value))
    }

    /// The whole file arrived and its hash `root` matched: sets `mtime`, closes the file and
    /// journals it as complete; making it durable, giving it `mode` and putting it in place is
    /// left to [`Dest::commit_all`](super::Dest::commit_all), which does that for many files
    /// at once.
    pub fn finish(
        mut self,
        mode: u32,
        mtime: Option<SystemTime>,
        root: [u8; 32],
    ) -> Result<Finished, FsError> {
        if self.hole_at_end {
            self.file.set_len(self.written).map_err(|e| classify(&self.names.at.path(), e))?;
        }
        if let Some(mtime) = mtime {
            self.file.set_modified(mtime).map_err(|e| classify(&self.names.at.path(), e))?;
        }
        // A file is on its directory's device.
        let dev = self.names.tmp.dir.dev;
        if let Some(journal) = self.journal.as_mut() {
            let err = |e| classify(&self.names.tmp.path(), e);
            let meta = self.file.metadata().map_err(err)?;
            let mark = Mark {
                len: self.written,
                ctime: ctime(&meta),
                cvs: journal.cvs(),
                pending: self.written,
                done: Some(root),
            };
            journal.mark(mark).map_err(err)?;
        }
        let mode = safe_mode(mode);
        if !self.names.keep {
            // A temporary file beside its final name, in a directory others may write to: it
            // gets its mode and goes to disk through the handle it was written with, never by
            // name (it is on another file system than the batch, so synced alone anyway).
            let err = |e| classify(&self.names.at.path(), e);
            self.file.set_permissions(Permissions::from_mode(mode)).map_err(err)?;
            self.file.sync_all().map_err(err)?;
        }
        let (size, resumed) = (self.written, self.from > 0);
        Ok(Finished { ready: !self.names.keep, names: self.names, mode, dev, size, resumed })
    }

    /// Discard the file: remove the partial file (and its journal), reporting any error.
    pub fn discard(mut self) -> Result<(), FsError> {
        self.names.discard()
    }
}

impl Finished {
    /// Its path at the destination.
    pub fn rel(&self) -> &RelPath {
        &self.names.rel
    }

    /// Its size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether it continued a partial copy.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// The device the file is on.
    pub(super) fn dev(&self) -> u64 {
        self.dev
    }

    /// fsyncs the file (opened again: it was closed; it is still 0o600 and ours).
    pub(super) fn sync(&self) -> Result<(), FsError> {
        if self.ready {
            return Ok(());
        }
        let tmp = &self.names.tmp;
        tmp.dir
            .open_file(&tmp.name, OFlags::RDONLY)
            .and_then(|f| f.sync_all())
            .map_err(|e| classify(&self.names.at.path(), e))
    }

    /// Gives the file its mode and moves it into place; the caller made its data durable
    /// first (the mode and the name become durable with the directory: `Dest::sync_dirs`).
    pub(super) fn install(mut self) -> Result<(), FsError> {
        let tmp = &self.names.tmp;
        if !self.ready {
            // In the state directory, which only we can write to.
            let err = |e| classify(&self.names.at.path(), e);
            tmp.dir.chmod(&tmp.name, self.mode).map_err(err)?;
        }
        if let Err(e) = self.names.install() {
            if let FsError::Unwritable { .. } = e {
                // It can never be put in place here: its partial copy and journal go.
                self.names.discard()?;
            }
            return Err(e);
        }
        if let Some(journal) = &self.names.journal {
            if let Err(e) = journal.dir.remove(&journal.name) {
                tracing::warn!(path = %journal.path().display(), error = %e, "could not remove a journal");
            }
        }
        tracing::debug!(path = %self.names.at.path().display(), "file committed");
        Ok(())
    }

    /// Discard the file (it failed after all): remove the partial file and its journal.
    pub fn discard(mut self) -> Result<(), FsError> {
        self.names.discard()
    }
}

impl Names {
    /// Move the partial file onto the final name.
    fn install(&mut self) -> Result<(), FsError> {
        let exists = |at: &At| FsError::Exists { path: at.path() };
        if self.overwrite {
            // rename(2) replaces a file or a symlink itself (never what a link points to) and
            // fails with EISDIR on a directory; checking first gives the clearer error.
            let found = self.at.dir.stat(&self.at.name).ok().flatten();
            if found.is_some_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory) {
                return Err(replaces_dir(&self.rel));
            }
            return self.rename();
        }
        // Atomically only if the final name is free: renameat2(RENAME_NOREPLACE), or else
        // link(2), which fails if the name exists, then removing the partial name.
        match self.tmp.dir.rename_new(&self.tmp.name, &self.at) {
            Ok(()) => {
                self.tmp_exists = false;
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(exists(&self.at)),
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {}
            Err(e) => return Err(self.rename_failed(e)),
        }
        match self.tmp.dir.link(&self.tmp.name, &self.at) {
            Ok(()) => {
                match self.tmp.dir.remove(&self.tmp.name) {
                    Ok(()) => self.tmp_exists = false,
                    // The file is in place; Drop tries again to remove the extra name.
                    Err(e) => {
                        self.keep = false;
                        tracing::warn!(path = %self.tmp.path().display(), error = %e, "could not remove the partial file")
                    }
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(exists(&self.at)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
                ) =>
            {
                Err(classify(&self.at.path(), e))
            }
            // No hard links on this file system (FAT, some network and FUSE file systems):
            // check, then rename. Only another local process could race us here.
            Err(_) => match self.at.dir.stat(&self.at.name) {
                Ok(Some(_)) => Err(exists(&self.at)),
                Ok(None) => self.rename(),
                Err(e) => Err(classify(&self.at.path(), e)),
            },
        }
    }

    fn rename(&mut self) -> Result<(), FsError> {
        self.tmp.dir.rename(&self.tmp.name, &self.at).map_err(|e| self.rename_failed(e))?;
        self.tmp_exists = false;
        Ok(())
    }

    /// The error for a failed move onto the final name: `ENOENT` says that the file system
    /// will not take the name only while the partial file is still there (else it went).
    fn rename_failed(&self, e: io::Error) -> FsError {
        let gone = e.kind() == io::ErrorKind::NotFound
            && !matches!(self.tmp.dir.stat(&self.tmp.name), Ok(Some(_)));
        match gone {
            true => classify(&self.tmp.path(), e),
            false => rename_error(&self.rel, &self.at.path(), e),
        }
    }

    fn discard(&mut self) -> Result<(), FsError> {
        if let Some(journal) = &self.journal {
            let _ = journal.dir.remove(&journal.name);
        }
        self.tmp_exists = false;
        match self.tmp.dir.remove(&self.tmp.name) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(classify(&self.tmp.path(), e)),
        }
    }
}

impl Drop for Names {
    fn drop(&mut self) {
        if self.tmp_exists && !self.keep {
            if let Err(e) = self.tmp.dir.remove(&self.tmp.name) {
                tracing::warn!(path = %self.tmp.path().display(), error = %e, "could not remove temporary file");
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
