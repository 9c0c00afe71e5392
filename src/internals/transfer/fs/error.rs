//! Errors of the destination file system, classified so the user is told what to do next.

use std::io;
use std::path::{Path, PathBuf};

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
        path.display()
    )]
    DiskFull {
        /// The destination path being written.
        path: PathBuf,
    },
    /// Permission denied, or a read-only file system.
    #[error(
        "permission denied writing {}: make the destination writable or choose another --out",
        path.display()
    )]
    PermissionDenied {
        /// The destination path being written.
        path: PathBuf,
    },
    /// A final name exists and overwriting is off.
    #[error(
        "{} already exists: pass --overwrite to replace it, or choose another --out",
        path.display()
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
        path.display()
    )]
    Busy {
        /// The destination path.
        path: PathBuf,
    },
    /// Any other I/O error.
    #[error("I/O error on {}: {source}", path.display())]
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
    match err.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => FsError::DiskFull { path },
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            FsError::PermissionDenied { path }
        }
        _ => FsError::Io { path, source: err },
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
    fn messages() {
        let exists = FsError::Exists { path: PathBuf::from("/d/x") };
        assert!(exists.to_string().contains("--overwrite"));
        let unsafe_ = FsError::Unsafe { path: "a/b".into(), reason: "a is a symbolic link".into() };
        assert_eq!(unsafe_.to_string(), "refusing to write a/b: a is a symbolic link");
    }
}
