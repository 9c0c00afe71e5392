//! The receiver's file system: the only code that writes to the destination directory.
//!
//! The peer is untrusted, so every name it sends is a [`RelPath`] first, and every write goes
//! through [`Dest`]. The rules:
//!
//! 1. **Paths are validated before use** ([`RelPath::parse`]): relative, non-empty components,
//!    no `.` or `..`, no NUL, `\` or control characters (a name must not rewrite the user's
//!    terminal), no drive prefix, at most 255 bytes per component and 4096 in all.
//! 2. **Walk, never resolve; then use the handle.** Parents are opened from the root one
//!    component at a time, each with `openat(O_DIRECTORY | O_NOFOLLOW)` in the one before
//!    (`at`): each must be a real directory. A symlink is refused even if it points inside
//!    the destination, and so is a file where a directory is needed. Missing directories are
//!    created one by one (`mkdirat`), counted against the offer; losing a creation race means
//!    opening whatever is there, not trusting. Everything after the walk (`openat`,
//!    `renameat2`, `linkat`, `symlinkat`, `unlinkat`, `fchmod`) names an entry in the open
//!    directory, never a path, and the handles of the directories used last are kept, so a
//!    large tree costs one lookup per entry.
//! 3. **Final names are never opened.** File data goes to a partial file in the destination's
//!    state directory (`.p2p-copy/<id>.part`, mode 0o600, locked; [`state`]), which is given
//!    its mode and mtime, made durable (fsync, or one `syncfs` for a batch:
//!    [`Dest::commit_all`]), then atomically renamed into place; each directory that got
//!    entries is fsynced once at the end ([`Dest::sync_dirs`]). A partial file that is not
//!    committed stays for the next transfer of the same entry to continue (a large one with
//!    its [`journal`]); no half-written file is ever visible under a final name. Where a
//!    file's directory is on another file system, it is a hidden temporary file beside the
//!    final name instead (`.<name>.p2p-copy-<hex>.part`, `O_EXCL`), removed when dropped.
//! 4. **Overwriting is explicit.** Without it, an existing final name (any type, dangling
//!    symlinks included) is [`FsError::Exists`], also when it appears during the transfer
//!    (`link(2)` refuses atomically). With it, a file or symlink is replaced by the rename
//!    itself, so a symlink is replaced, never written through. A directory is never replaced
//!    or deleted.
//! 5. **Only files, directories, symlinks and hard links are created.** Symlink targets are
//!    stored verbatim and never followed here; a later path through the link is refused by
//!    rule 2. A hard link ([`Dest::hard_link`]) joins two names below the root, its target
//!    walked to by rule 2 and checked to be a regular file (`linkat` without
//!    `AT_SYMLINK_FOLLOW`). Device files and FIFOs are never created. Setuid and setgid bits
//!    are dropped.
//! 6. **Errors say what to do:** ENOSPC/EDQUOT become [`FsError::DiskFull`], EACCES/EROFS
//!    [`FsError::PermissionDenied`], each naming the destination path.
//!
//! Races: the peer can only act through this module, and a local process that writes into the
//! destination at the same time (a shared `/tmp`, a group directory) can rename or replace
//! any name, but not what a handle refers to. A directory swapped for a link after the walk
//! is not followed: what was to go into it goes into the directory that was checked, wherever
//! it was moved, and a fresh walk refuses the link. The state directory is opened once,
//! checked (ours, mode 0700) and used by handle from then on, for listing and removing too
//! (a FIFO or link planted under one of its names is removed, never opened through).

mod error;
mod path;

#[cfg(unix)]
mod at;
#[cfg(unix)]
mod dest;
#[cfg(unix)]
pub mod journal;
#[cfg(unix)]
mod part;
#[cfg(unix)]
pub mod state;

pub use error::{classify, shown_path, FsError};
pub use path::{
    name_bytes, os, rel_path_of, shown, PathError, RelPath, MAX_COMPONENT_LEN, MAX_DEPTH,
    MAX_PATH_LEN,
};

#[cfg(unix)]
pub use dest::{Dest, Found, Resumable, Syncer};
#[cfg(unix)]
pub use part::{Finished, PartFile};
#[cfg(unix)]
pub use state::{StateDir, SMALL, STATE_DIR};

#[cfg(all(test, unix))]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
