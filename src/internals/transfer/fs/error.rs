//! Errors of the destination file system, classified so the user is told what to do next.

use std::io;
use std::path::{Path, PathBuf};

use rustix::io::Errno;

/// A failure writing to the destination.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The sender's entries need more directories than its offer declared.
    #[error("the sender's entries need more directories than the {limit} it offered")]
    TooManyDirs {
        /// The offer's directory count.
        limit: u64,
    },
    /// Disk full (ENOSPC) or quota exceeded (EDQUOT).
    #[error(
        "disk full while writing {}: free space on the destination or choose another --out",
        shown_path(path)
    )]
    DiskFull {
        /// The destination path being written.
        path: PathBuf,
    },
    /// Permission denied, or a read-only file system.
    #[error(
        "permission denied writing {}: make the destination writable or choose another --out",
        shown_path(path)
    )]
    PermissionDenied {
        /// The destination path being written.
        path: PathBuf,
    },
    /// A final name exists and overwriting is off.
    #[error(
        "{} already exists: pass --overwrite to replace it, or choose another --out",
        shown_path(path)
    )]
    Exists {
        /// The existing destination path.
        path: PathBuf,
    },
    /// Writing would go through a symbolic link, replace a directory, or otherwise leave the
    /// destination.
    #[error("refusing to write {path}: {reason}")]
    Unsafe {
        /// The relative path that was asked for.
        path: String,
        /// What makes it unsafe, naming the offending component.
        reason: String,
    },
    /// A hard link's target is not a regular file at the destination (the sender named
    /// something it did not send as a file).
    #[error("refusing to link {path} to {target}: {reason}")]
    LinkTarget {
        /// The link's relative path.
        path: String,
        /// The target's relative path.
        target: String,
        /// What is wrong with the target.
        reason: String,
    },
    /// Another transfer is writing the partial copy of this file right now.
    #[error(
        "another p2p-copy is receiving {} into this destination right now; wait for it to end \
         or choose another --out",
        shown_path(path)
    )]
    Busy {
        /// The destination path.
        path: PathBuf,
    },
    /// The destination's file system cannot hold this entry: its name (a character it does
    /// not allow, bytes that are not valid in its character set, a name too long for it) or its
    /// kind (a symbolic or hard link where it has none). The receiver refuses the entry alone
    /// and goes on with the rest.
    #[error("cannot write {} here: {why}", shown_path(path))]
    Unwritable {
        /// The destination path.
        path: PathBuf,
        /// What the file system does not take.
        why: &'static str,
    },
    /// Any other I/O error.
    #[error("I/O error on {}: {source}", shown_path(path))]
    Io {
        /// The destination path being written.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

impl FsError {
    /// Whether this is a disk-full (or quota) error.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, FsError::DiskFull { .. })
    }
}

/// Map an I/O error on `path` to the right [`FsError`] variant.
pub fn classify(path: &Path, err: io::Error) -> FsError {
    let path = path.to_path_buf();
    let errno = err.raw_os_error().map(Errno::from_raw_os_error);
    if errno == Some(Errno::ILSEQ) {
        return FsError::Unwritable { path, why: NOT_IN_CHARSET };
    }
    if errno == Some(Errno::NAMETOOLONG) {
        return FsError::Unwritable { path, why: "its name is too long for this file system" };
    }
    match err.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => FsError::DiskFull { path },
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            FsError::PermissionDenied { path }
        }
        _ => FsError::Io { path, source: err },
    }
}

/// A destination path for a message: a name that is not UTF-8 is shown with `\xNN` for its
/// bytes that are not, as everywhere else.
pub fn shown_path(path: &Path) -> String {
    match super::path::name_bytes(path.as_os_str()) {
        Some(bytes) => super::path::shown(bytes).into_owned(),
        None => path.display().to_string(),
    }
}

const NOT_IN_CHARSET: &str = "its name is not valid in this file system's character set";
const NAME_REFUSED: &str = "this file system does not allow its name";

/// [`classify`] for an error from creating or renaming onto `path`, a name in a directory that
/// is open: there, `EINVAL` says the file system will not take the name (FAT, NTFS: `:`, `?`,
/// `\\`, a trailing dot), and so does `ENOENT` (exFAT through FUSE says it so).
pub fn classify_new(path: &Path, err: io::Error) -> FsError {
    match err.raw_os_error().map(Errno::from_raw_os_error) {
        Some(Errno::INVAL | Errno::NOENT) => {
            FsError::Unwritable { path: path.to_path_buf(), why: NAME_REFUSED }
        }
        _ => classify(path, err),
    }
}

/// [`classify_new`] for making a symbolic or hard link (`what`) at `path`: a file system
/// without such links says `EPERM` (FAT), `ENOSYS` (FUSE) or `EOPNOTSUPP`.
pub fn classify_link(path: &Path, err: io::Error, what: &'static str) -> FsError {
    match err.raw_os_error().map(Errno::from_raw_os_error) {
        Some(Errno::PERM | Errno::NOSYS | Errno::OPNOTSUPP) => {
            FsError::Unwritable { path: path.to_path_buf(), why: what }
        }
        _ => classify_new(path, err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENOENT: i32 = 2;
    const EACCES: i32 = 13;
    const ENOSPC: i32 = 28;
    const EROFS: i32 = 30;
    #[cfg(target_os = "linux")]
    const EDQUOT: i32 = 122;

    fn classify_os(code: i32) -> FsError {
        classify(Path::new("/dest/photos/a.jpg"), io::Error::from_raw_os_error(code))
    }

    #[test]
    fn enospc_is_disk_full() {
        let err = classify_os(ENOSPC);
        assert!(err.is_disk_full(), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("disk full"), "{msg}");
        assert!(msg.contains("/dest/photos/a.jpg"), "{msg}");
        assert!(msg.contains("--out"), "{msg}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn edquot_is_disk_full() {
        assert!(classify_os(EDQUOT).is_disk_full());
    }

    #[test]
    fn permission_and_read_only_are_permission_denied() {
        for code in [EACCES, EROFS] {
            let err = classify_os(code);
            assert!(matches!(err, FsError::PermissionDenied { .. }), "{code}: {err:?}");
            assert!(err.to_string().contains("permission denied writing /dest/photos/a.jpg"));
        }
    }

    #[test]
    fn other_errors_keep_their_source() {
        let err = classify_os(ENOENT);
        assert!(!err.is_disk_full());
        match &err {
            FsError::Io { path, source } => {
                assert_eq!(path, Path::new("/dest/photos/a.jpg"));
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn names_and_kinds_the_file_system_cannot_hold_are_unwritable() {
        let path = Path::new("/dest/a:b");
        let os = |e: Errno| io::Error::from_raw_os_error(e.raw_os_error());
        for e in [Errno::ILSEQ, Errno::NAMETOOLONG] {
            assert!(matches!(classify(path, os(e)), FsError::Unwritable { .. }), "{e:?}");
        }
        // Only where a name is being made do these speak of the name.
        for e in [Errno::INVAL, Errno::NOENT] {
            assert!(matches!(classify(path, os(e)), FsError::Io { .. }), "{e:?}");
            assert!(matches!(classify_new(path, os(e)), FsError::Unwritable { .. }), "{e:?}");
        }
        assert!(matches!(classify_new(path, os(Errno::PERM)), FsError::PermissionDenied { .. }));
        let link = classify_link(path, os(Errno::PERM), "this file system has no symbolic links");
        assert_eq!(
            link.to_string(),
            "cannot write /dest/a:b here: this file system has no symbolic links"
        );
        assert!(classify_new(path, os(Errno::NOSPC)).is_disk_full());
    }

    #[test]
    fn messages() {
        let exists = FsError::Exists { path: PathBuf::from("/d/x") };
        assert!(exists.to_string().contains("--overwrite"));
        let unsafe_ = FsError::Unsafe { path: "a/b".into(), reason: "a is a symbolic link".into() };
        assert_eq!(unsafe_.to_string(), "refusing to write a/b: a is a symbolic link");
    }
}
