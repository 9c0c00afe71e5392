//! Hard links between received files: made once every lane has finished, through the open
//! parent directories, never following a link.

use std::io;

use rustix::fs::FileType;

use super::super::at::{walk, At, Walked};
use super::super::error::{classify, classify_link, FsError};
use super::super::path::RelPath;
use super::{no_temp_name, rename_error, temp_name, Dest, NO_HARDLINKS, TEMP_ATTEMPTS};

/// A file's device and inode.
type Identity = (u64, u64);

impl Dest {
    /// Gives the regular file at `target` the further name `link`, as a hard link (`linkat`
    /// through the parents' handles, without following anything). The target must be a
    /// regular file now ([`FsError::LinkTarget`] otherwise). A name already at `link` is
    /// [`FsError::Exists`] without `overwrite`, and replaced atomically with it (never a
    /// directory); a `link` that already is the target's file is left as it is.
    pub fn hard_link(
        &self,
        target: &RelPath,
        link: &RelPath,
        overwrite: bool,
    ) -> Result<(), FsError> {
        let refuse = |reason: &str| FsError::LinkTarget {
            path: link.to_string(),
            target: target.to_string(),
            reason: reason.to_owned(),
        };
        let Some((from, identity)) = self.regular_file(target)? else {
            return Err(refuse("it is not a regular file here"));
        };
        if self.regular_file(link)?.is_some_and(|(_, found)| found == identity) {
            return Ok(());
        }
        let at = self.prepare_final(link, overwrite)?;
        let parent = at.dir.clone();
        self.unsynced(&parent.path);
        if !overwrite {
            // link(2) never replaces: an entry that appeared meanwhile is reported.
            return from.dir.link(&from.name, &at).map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => FsError::Exists { path: at.path() },
                _ => classify_link(&at.path(), e, NO_HARDLINKS),
            });
        }
        for _ in 0..TEMP_ATTEMPTS {
            let tmp = At::new(&parent, temp_name(link.name()));
            match from.dir.link(&from.name, &tmp) {
                Ok(()) => {
                    return parent.rename(&tmp.name, &at).map_err(|e| {
                        if let Err(e) = parent.remove(&tmp.name) {
                            tracing::warn!(path = %tmp.path().display(), error = %e, "could not remove temporary link");
                        }
                        rename_error(link, &at.path(), e)
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(classify_link(&at.path(), e, NO_HARDLINKS)),
            }
        }
        Err(no_temp_name(&at.path()))
    }

    /// Whether `a` and `b` are both names of the same regular file here.
    pub fn same_file(&self, a: &RelPath, b: &RelPath) -> Result<bool, FsError> {
        let (Some((_, a)), Some((_, b))) = (self.regular_file(a)?, self.regular_file(b)?) else {
            return Ok(false);
        };
        Ok(a == b)
    }

    /// The regular file at `rel` (reached through real directories only, not followed if it
    /// is a link) in its open parent, with its device and inode; `None` if nothing or
    /// something else is there.
    fn regular_file(&self, rel: &RelPath) -> Result<Option<(At, Identity)>, FsError> {
        let dir = match walk(&self.root_dir, &self.dirs, rel.dir(), None)? {
            Walked::Dir(dir) => dir,
            Walked::Missing | Walked::Blocked { .. } => return Ok(None),
        };
        let at = At::new(&dir, rel.name());
        // `dev_t` and `ino_t` are narrower than u64 on some targets.
        #[allow(clippy::unnecessary_cast)]
        match dir.stat(rel.name()).map_err(|e| classify(&at.path(), e))? {
            Some(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {
                Ok(Some((at, (st.st_dev as u64, st.st_ino as u64))))
            }
            _ => Ok(None),
        }
    }
}
