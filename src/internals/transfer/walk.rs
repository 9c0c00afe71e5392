//! The sender's paths: a counting scan for the offer, then a streaming walk for the lanes.
//!
//! Each command-line path becomes a top-level name (its last component). Directories are
//! walked without following symlinks (a top-level symlink is followed, as the user named it);
//! entries come out sorted by name, parents before children. Sockets, FIFOs and devices are
//! skipped with a warning. The scan remembers what it saw, compactly, while that fits in
//! [`SEEN_BYTES`] (about 100,000 entries), and later walks replay it instead of reading the
//! file system again; a larger tree is walked again each time, and memory stays flat: a walk
//! holds one directory listing per level, never the whole tree. Either way a file that changed
//! since it was scanned is caught when it is opened to be sent (its device and inode, size and
//! mtime are checked against the walk's).
//!
//! Hard links: a regular file with more than one name whose inode the walk met before goes as
//! an [`EntryKind::HardLink`] naming the path it was first sent under (`Linked`). The walk
//! remembers at most [`MAX_LINKED`] such inodes (and [`LINKED_BYTES`] of their paths) and sends
//! at most [`MAX_HARDLINKS`] links, of at most [`MAX_HARDLINK_BYTES`] of paths; beyond that,
//! further names go as copies. The decision depends only on the walk order, so the scan and
//! every later walk or replay agree.

use std::collections::{HashMap, HashSet};
use std::fs::Metadata;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use walkdir::WalkDir;

use super::fs::{name_bytes, os, rel_path_of, shown, RelPath};
use super::TransferError;
use crate::error::ErrorKind;
use crate::wire::control::{Summary, MAX_HARDLINKS, MAX_HARDLINK_BYTES, MAX_NAMES};
use crate::wire::data::{Entry, EntryKind, Timestamp};

/// How many skipped names a scan remembers for its warning.
const MAX_SKIPPED_NAMES: usize = 20;

/// Bytes of entries (paths and symlink targets, plus `SEEN_ITEM_BYTES` each) a scan
/// remembers for the walks that follow it.
pub const SEEN_BYTES: usize = 10 << 20;
const SEEN_ITEM_BYTES: usize = std::mem::size_of::<Seen>();

/// Most inodes with several names a walk remembers (to send their later names as links).
pub const MAX_LINKED: usize = 100_000;
/// Most bytes of first paths of such inodes a walk remembers.
pub const LINKED_BYTES: usize = 8 << 20;

/// One command-line path.
#[derive(Debug, Clone)]
pub struct Source {
    /// As given.
    pub path: PathBuf,
    /// Its top-level name on the receiving side (bytes, as on the wire).
    pub name: Vec<u8>,
    /// What is left out below it (`send --exclude`), matched relative to it.
    pub exclude: Option<Arc<Gitignore>>,
}

/// A reader sent as one file of unknown size (`send -`: standard input), under `name`.
/// Read once: a clone shares the reader, and the first lane to send it takes it.
#[derive(Clone)]
pub struct StreamSource {
    /// The name the receiver writes it under (a single path component).
    pub name: String,
    reader: Arc<std::sync::Mutex<Option<Box<dyn std::io::Read + Send>>>>,
}

impl StreamSource {
    /// Sends what `reader` gives until its end as the file `name`, which must be a valid
    /// single path component.
    pub fn new(name: &str, reader: Box<dyn std::io::Read + Send>) -> Result<Self, TransferError> {
        let rel = RelPath::parse(name).map_err(|e| {
            TransferError::new(ErrorKind::Usage, format!("cannot send under that name: {e}"))
        })?;
        if rel.components().count() != 1 {
            return Err(TransferError::new(
                ErrorKind::Usage,
                format!("{name:?} is not a plain file name (no slashes)"),
            ));
        }
        let reader = Arc::new(std::sync::Mutex::new(Some(reader)));
        Ok(StreamSource { name: name.to_owned(), reader })
    }

    /// The reader, to the first caller only.
    pub fn take(&self) -> Option<Box<dyn std::io::Read + Send>> {
        self.reader.lock().ok()?.take()
    }
}

impl std::fmt::Debug for StreamSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSource").field("name", &self.name).finish_non_exhaustive()
    }
}

/// What the sender is about to offer.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// The paths, in the order given.
    pub sources: Vec<Source>,
    /// Or instead of paths, one stream (`send -`).
    pub stream: Option<StreamSource>,
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Hard links: later names of a file already counted in `files`.
    pub hardlinks: u64,
    /// Sum of file sizes.
    pub bytes: u64,
    /// Special files that will not be sent (first few names).
    pub skipped: Vec<String>,
    /// How many were skipped.
    pub skipped_count: u64,
    /// Every entry, in walk order, if they fit in [`SEEN_BYTES`].
    seen: Option<Arc<Remembered>>,
}

impl Scan {
    /// Whether the scan remembers its entries (walks replay them).
    pub fn remembered(&self) -> bool {
        self.seen.is_some()
    }
}

/// The entries of a scan: their paths (and symlink targets) in one buffer.
#[derive(Debug, Default)]
struct Remembered {
    text: Vec<u8>,
    entries: Vec<Seen>,
}

/// One remembered entry.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// Where its path ends in the text (it starts where the one before ended); a symlink's
    /// or hard link's target follows it, up to `target_end`.
    path_end: u32,
    target_end: u32,
    /// The index of its source.
    source: u32,
    mode: u32,
    /// A file's size; `u64::MAX` for a directory, `u64::MAX - 1` for a symlink, `u64::MAX - 2`
    /// for a hard link.
    size: u64,
    mtime: Option<Timestamp>,
    /// The device and inode it had: what is opened to be sent must be the same file.
    identity: (u64, u64),
}

const DIR: u64 = u64::MAX;
const SYMLINK: u64 = u64::MAX - 1;
const HARDLINK: u64 = u64::MAX - 2;

/// The inodes with several names met so far in a walk, by device and inode, with the path
/// each was first sent under; bounded by [`MAX_LINKED`], [`LINKED_BYTES`] and
/// [`MAX_HARDLINKS`] and [`MAX_HARDLINK_BYTES`].
#[derive(Debug, Default)]
struct Linked {
    first: HashMap<(u64, u64), (u32, u32)>,
    text: Vec<u8>,
    links: u64,
    link_bytes: usize,
}

impl Linked {
    /// What a regular file found at `rel` with `meta` goes as: a hard link to the path its
    /// inode was first sent under, or (`None`) a file, remembered if it has other names.
    fn target_of(&mut self, rel: &RelPath, meta: &Metadata) -> Option<Vec<u8>> {
        if meta.nlink() < 2 {
            return None;
        }
        let identity = (meta.dev(), meta.ino());
        if let Some(&(start, end)) = self.first.get(&identity) {
            let bytes = self.link_bytes + rel.as_bytes().len() + (end - start) as usize;
            if self.links >= MAX_HARDLINKS || bytes > MAX_HARDLINK_BYTES {
                return None;
            }
            self.links += 1;
            self.link_bytes = bytes;
            return Some(self.text[start as usize..end as usize].to_vec());
        }
        if self.first.len() < MAX_LINKED && self.text.len() + rel.as_bytes().len() <= LINKED_BYTES {
            let start = self.text.len() as u32;
            self.text.extend_from_slice(rel.as_bytes());
            self.first.insert(identity, (start, self.text.len() as u32));
        }
        None
    }
}

impl Remembered {
    /// Adds an entry; false when the whole would no longer fit.
    fn push(&mut self, source: usize, entry: &Entry, identity: (u64, u64)) -> bool {
        let target = match &entry.kind {
            EntryKind::Symlink { target } | EntryKind::HardLink { target } => target.as_slice(),
            _ => &[],
        };
        let text = self.text.len() + entry.path.len() + target.len();
        if text + SEEN_ITEM_BYTES * (self.entries.len() + 1) > SEEN_BYTES {
            return false;
        }
        self.text.extend_from_slice(&entry.path);
        let path_end = self.text.len() as u32;
        self.text.extend_from_slice(target);
        self.entries.push(Seen {
            path_end,
            target_end: self.text.len() as u32,
            source: source as u32,
            mode: entry.mode,
            size: match entry.kind {
                EntryKind::Dir => DIR,
                EntryKind::Symlink { .. } => SYMLINK,
                EntryKind::File { size } => size,
                EntryKind::HardLink { .. } => HARDLINK,
                // A scan of paths finds no streams.
                EntryKind::Stream => return false,
            },
            mtime: entry.mtime,
            identity,
        });
        true
    }

    /// The entries again, as a walk of the sources would give them.
    fn replay(&self, sources: &[Source], mut emit: impl FnMut(Job) -> bool) {
        let mut start = 0;
        for (i, seen) in self.entries.iter().enumerate() {
            let path = &self.text[start..seen.path_end as usize];
            let target = &self.text[seen.path_end as usize..seen.target_end as usize];
            start = seen.target_end as usize;
            let source = &sources[seen.source as usize];
            let below = path.get(source.name.len() + 1..).unwrap_or_default();
            let local =
                if below.is_empty() { source.path.clone() } else { source.path.join(os(below)) };
            let kind = match seen.size {
                DIR => EntryKind::Dir,
                SYMLINK => EntryKind::Symlink { target: target.to_vec() },
                HARDLINK => EntryKind::HardLink { target: target.to_vec() },
                size => EntryKind::File { size },
            };
            let entry = Entry {
                id: i as u64 + 1,
                path: path.to_vec(),
                kind,
                mode: seen.mode,
                mtime: seen.mtime,
            };
            if !emit(Job { entry, local, identity: seen.identity, resume: None }) {
                return;
            }
        }
    }
}

/// One manifest entry with the local file it describes.
#[derive(Debug, Clone)]
pub struct Job {
    /// The entry as sent.
    pub entry: Entry,
    /// The local path (for files: what to read).
    pub local: PathBuf,
    /// The device and inode the walk found there: a file opened to be sent must still be
    /// this one (not one swapped in since, through a renamed parent or under the same name).
    pub identity: (u64, u64),
    /// The receiver holds this many bytes of it, with this digest (to be checked).
    pub resume: Option<(u64, [u8; 32])>,
}

/// What a stream (`send -`) offers: one file of unknown size.
pub fn stream_scan(stream: StreamSource) -> Scan {
    Scan { stream: Some(stream), files: 1, ..Scan::default() }
}

/// Checks that the paths can be sent (they exist, are files or directories, with distinct
/// names), without walking them.
pub fn check(paths: &[PathBuf], exclude: &[String]) -> Result<(), TransferError> {
    sources(paths, exclude).map(drop)
}

/// Checks the paths and counts what they hold, leaving out what matches one of the
/// gitignore-style `exclude` patterns (relative to each path: `*.o`, `target/`, `/build`,
/// `**/cache`, `!keep.o`).
pub fn scan(paths: &[PathBuf], exclude: &[String]) -> Result<Scan, TransferError> {
    let sources = sources(paths, exclude)?;
    let mut scan = Scan { sources: sources.clone(), ..Scan::default() };
    let mut seen = Some(Remembered::default());
    let mut linked = Linked::default();
    visit(&sources, |item| {
        match item {
            Item::Entry { source, local, rel, meta, kind } => {
                let link = match kind {
                    Kind::File => linked.target_of(&rel, meta),
                    _ => None,
                };
                if let Some(r) = seen.as_mut() {
                    let identity = (meta.dev(), meta.ino());
                    let mut entry = entry_of(0, &rel, local, meta, &kind)?;
                    if let Some(target) = &link {
                        entry.kind = EntryKind::HardLink { target: target.clone() };
                    }
                    if !r.push(source, &entry, identity) {
                        seen = None;
                    }
                }
                match kind {
                    Kind::Dir => scan.dirs += 1,
                    Kind::Symlink => scan.symlinks += 1,
                    Kind::File if link.is_some() => scan.hardlinks += 1,
                    Kind::File => {
                        scan.files += 1;
                        scan.bytes += meta.len();
                    }
                }
            }
            Item::Skipped(path) => {
                scan.skipped_count += 1;
                if scan.skipped.len() < MAX_SKIPPED_NAMES {
                    scan.skipped.push(path.display().to_string());
                }
            }
        }
        Ok(true)
    })?;
    scan.seen = seen.map(|mut r| {
        r.text.shrink_to_fit();
        r.entries.shrink_to_fit();
        Arc::new(r)
    });
    Ok(scan)
}

/// Walks the scanned sources again, handing each entry to `emit` (ids from 1). Stops early
/// when `emit` returns false. Returns the totals of what was emitted. The walk never exceeds
/// the scan (the receiver accepted the scan's counts and holds the sender to them): paths that
/// grew in between are an error that says so.
pub fn walk(scan: &Scan, mut emit: impl FnMut(Job) -> bool) -> Result<Summary, TransferError> {
    let mut totals = Summary::default();
    if let Some(stream) = &scan.stream {
        let entry = Entry {
            id: 1,
            path: stream.name.clone().into_bytes(),
            kind: EntryKind::Stream,
            mode: 0o644,
            mtime: None,
        };
        emit(Job { entry, local: PathBuf::from("-"), identity: (0, 0), resume: None });
        return Ok(Summary { entries: 1, files: 1, ..Summary::default() });
    }
    if let Some(seen) = &scan.seen {
        seen.replay(&scan.sources, |job| {
            totals.entries += 1;
            if let EntryKind::File { size } = job.entry.kind {
                totals.files += 1;
                totals.bytes += size;
            }
            emit(job)
        });
        return Ok(totals);
    }
    let (mut dirs, mut symlinks, mut hardlinks) = (0u64, 0u64, 0u64);
    let mut linked = Linked::default();
    visit(&scan.sources, |item| {
        let Item::Entry { local, rel, meta, kind, .. } = item else { return Ok(true) };
        let mut entry = entry_of(totals.entries + 1, &rel, local, meta, &kind)?;
        if let Kind::File = kind {
            if let Some(target) = linked.target_of(&rel, meta) {
                entry.kind = EntryKind::HardLink { target };
            }
        }
        match entry.kind {
            EntryKind::Dir => dirs += 1,
            EntryKind::Symlink { .. } => symlinks += 1,
            EntryKind::HardLink { .. } => hardlinks += 1,
            EntryKind::File { size } => {
                totals.files += 1;
                totals.bytes += size;
            }
            EntryKind::Stream => totals.files += 1,
        }
        if totals.files > scan.files
            || totals.bytes > scan.bytes
            || dirs > scan.dirs
            || symlinks > scan.symlinks
            || hardlinks > scan.hardlinks
        {
            return Err(TransferError::new(
                ErrorKind::Io,
                format!(
                    "the paths changed after the offer was made (more files or bytes than offered, noticed at {}); send again once they are settled",
                    local.display()
                ),
            ));
        }
        totals.entries += 1;
        let identity = (meta.dev(), meta.ino());
        Ok(emit(Job { entry, local: local.to_owned(), identity, resume: None }))
    })?;
    Ok(totals)
}

/// The manifest entry for what the walk found at `local`.
fn entry_of(
    id: u64,
    rel: &RelPath,
    local: &Path,
    meta: &Metadata,
    kind: &Kind,
) -> Result<Entry, TransferError> {
    let kind = match kind {
        Kind::Dir => EntryKind::Dir,
        Kind::File => EntryKind::File { size: meta.len() },
        Kind::Symlink => EntryKind::Symlink { target: link_target(local)? },
    };
    Ok(Entry {
        id,
        path: rel.as_bytes().to_vec(),
        kind,
        mode: meta.permissions().mode() & 0o7777,
        mtime: mtime(meta),
    })
}

fn link_target(local: &Path) -> Result<Vec<u8>, TransferError> {
    let target = std::fs::read_link(local).map_err(|e| read_failed(local, &e))?;
    let bytes = name_bytes(target.as_os_str()).ok_or_else(|| {
        TransferError::new(
            ErrorKind::Usage,
            format!("the target of symlink {} is not valid Unicode", local.display()),
        )
    })?;
    Ok(bytes.to_vec())
}

fn sources(paths: &[PathBuf], exclude: &[String]) -> Result<Vec<Source>, TransferError> {
    if paths.is_empty() {
        return Err(TransferError::new(
            ErrorKind::Usage,
            "nothing to send: name files or directories",
        ));
    }
    if paths.len() > MAX_NAMES {
        return Err(TransferError::new(
            ErrorKind::Usage,
            format!("too many paths ({}); put them in a directory and send that", paths.len()),
        ));
    }
    let mut seen = HashSet::new();
    paths
        .iter()
        .map(|path| {
            let meta = std::fs::metadata(path).map_err(|e| read_failed(path, &e))?;
            if !meta.is_dir() && !meta.is_file() {
                return Err(TransferError::new(
                    ErrorKind::Usage,
                    format!("{} is not a file or directory", path.display()),
                ));
            }
            let name = top_name(path)?;
            // A file named through a symlink is read at its target: files are opened without
            // following symlinks (`open_source`).
            let path = if meta.is_file() && path.is_symlink() {
                std::fs::canonicalize(path).map_err(|e| read_failed(path, &e))?
            } else {
                path.clone()
            };
            if !seen.insert(name.clone()) {
                return Err(TransferError::new(
                    ErrorKind::Usage,
                    format!("two paths are named {:?}; the receiver would get only one; rename one or send their parent", shown(&name)),
                ));
            }
            let exclude = match exclude.is_empty() || !meta.is_dir() {
                true => None,
                false => Some(Arc::new(excluder(&path, exclude)?)),
            };
            Ok(Source { path, name, exclude })
        })
        .collect()
}

/// The last component of a path, resolving `.` and `..` first.
fn top_name(path: &Path) -> Result<Vec<u8>, TransferError> {
    let named = match path.file_name() {
        Some(n) if !path.ends_with("..") => Some(n.to_owned()),
        _ => std::fs::canonicalize(path)
            .map_err(|e| read_failed(path, &e))?
            .file_name()
            .map(|n| n.to_owned()),
    };
    let name = named.ok_or_else(|| {
        TransferError::new(
            ErrorKind::Usage,
            format!("{} has no name to send it under; send the paths inside it", path.display()),
        )
    })?;
    let name = name_bytes(&name).ok_or_else(|| {
        TransferError::new(ErrorKind::Usage, format!("{} is not valid Unicode", path.display()))
    })?;
    RelPath::parse(name).map_err(|e| TransferError::new(ErrorKind::Usage, e.to_string()))?;
    Ok(name.to_vec())
}

enum Kind {
    Dir,
    File,
    Symlink,
}

enum Item<'a> {
    Entry { source: usize, local: &'a Path, rel: RelPath, meta: &'a Metadata, kind: Kind },
    Skipped(&'a Path),
}

fn visit(
    sources: &[Source],
    mut f: impl FnMut(Item<'_>) -> Result<bool, TransferError>,
) -> Result<(), TransferError> {
    for (index, source) in sources.iter().enumerate() {
        let excluded = source.exclude.clone();
        let walker = WalkDir::new(&source.path)
            .follow_links(false)
            .follow_root_links(true)
            .sort_by_file_name()
            .into_iter()
            // An excluded directory is not entered at all.
            .filter_entry(move |e| {
                e.depth() == 0
                    || !excluded
                        .as_ref()
                        .is_some_and(|gi| gi.matched(e.path(), e.file_type().is_dir()).is_ignore())
            });
        for dent in walker {
            let dent = dent.map_err(|e| {
                let path = e.path().map(Path::to_path_buf).unwrap_or_else(|| source.path.clone());
                let io =
                    e.into_io_error().unwrap_or_else(|| std::io::Error::other("filesystem loop"));
                read_failed(&path, &io)
            })?;
            let meta = dent.metadata().map_err(|e| {
                read_failed(
                    dent.path(),
                    &e.into_io_error().unwrap_or_else(|| std::io::Error::other("unreadable")),
                )
            })?;
            let ft = meta.file_type();
            let kind = if ft.is_dir() {
                Kind::Dir
            } else if ft.is_file() {
                Kind::File
            } else if ft.is_symlink() {
                Kind::Symlink
            } else {
                if !f(Item::Skipped(dent.path()))? {
                    return Ok(());
                }
                continue;
            };
            let below = dent.path().strip_prefix(&source.path).unwrap_or(Path::new(""));
            let rel = rel_path_of(os(&source.name), below).map_err(|e| {
                TransferError::new(
                    ErrorKind::Usage,
                    format!("cannot send {}: {e}", dent.path().display()),
                )
            })?;
            if !f(Item::Entry { source: index, local: dent.path(), rel, meta: &meta, kind })? {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// A file's mtime as the wire carries it.
fn mtime(meta: &Metadata) -> Option<Timestamp> {
    let t = meta.modified().ok()?;
    Some(match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timestamp { secs: d.as_secs() as i64, nanos: d.subsec_nanos() },
        Err(before) => {
            let d = before.duration();
            if d.subsec_nanos() == 0 {
                Timestamp { secs: -(d.as_secs() as i64), nanos: 0 }
            } else {
                Timestamp {
                    secs: -(d.as_secs() as i64) - 1,
                    nanos: 1_000_000_000 - d.subsec_nanos(),
                }
            }
        }
    })
}

/// The matcher for `patterns` below the sent directory `root`.
fn excluder(root: &Path, patterns: &[String]) -> Result<Gitignore, TransferError> {
    let mut builder = GitignoreBuilder::new(root);
    for pattern in patterns {
        builder.add_line(None, pattern).map_err(|e| {
            TransferError::new(ErrorKind::Usage, format!("bad --exclude pattern {pattern:?}: {e}"))
        })?;
    }
    builder
        .build()
        .map_err(|e| TransferError::new(ErrorKind::Usage, format!("bad --exclude patterns: {e}")))
}

/// Opens a file of the walk to read it, as it was offered: the file `identity` (device and
/// inode), `size` bytes, modified at `mtime`. Never through a symlink, and never blocking on a
/// FIFO, that someone swapped in for it since the walk; another file put in its place (also
/// through a parent directory swapped for a link) or a file that changed since is refused
/// too, as it would arrive under a description that is not its own. (A top-level path the user named is resolved once, before the walk:
/// see [`check`].)
pub(crate) fn open_source(
    local: &Path,
    size: u64,
    modified: Option<Timestamp>,
    identity: (u64, u64),
) -> Result<(std::fs::File, Metadata), TransferError> {
    use rustix::fs::{Mode, OFlags};
    let changed = |what: &str| {
        TransferError::new(
            ErrorKind::Io,
            format!(
                "{} {what} after the offer was made; send again once it is settled",
                local.display()
            ),
        )
    };
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = rustix::fs::open(local, flags, Mode::empty()).map_err(|e| match e {
        rustix::io::Errno::LOOP => changed("became a symbolic link"),
        e => read_failed(local, &e.into()),
    })?;
    let file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(|e| read_failed(local, &e))?;
    if !meta.is_file() {
        return Err(changed("is no longer a regular file: it changed"));
    }
    if (meta.dev(), meta.ino()) != identity {
        return Err(changed("is another file than the one offered (it was replaced)"));
    }
    if meta.len() != size || mtime(&meta) != modified {
        return Err(changed("changed"));
    }
    Ok((file, meta))
}

/// A local read failure, classified.
pub(crate) fn read_failed(path: &Path, e: &std::io::Error) -> TransferError {
    let what = match e.kind() {
        std::io::ErrorKind::NotFound => "does not exist".to_owned(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => e.to_string(),
    };
    let kind =
        if e.kind() == std::io::ErrorKind::NotFound { ErrorKind::Usage } else { ErrorKind::Io };
    TransferError::new(kind, format!("cannot read {}: {what}", path.display()))
}

/// Converts a wire timestamp back to a system time.
pub fn system_time(t: Timestamp) -> Option<std::time::SystemTime> {
    let nanos = std::time::Duration::new(0, t.nanos);
    if t.secs >= 0 {
        UNIX_EPOCH.checked_add(std::time::Duration::from_secs(t.secs as u64))?.checked_add(nanos)
    } else {
        UNIX_EPOCH
            .checked_sub(std::time::Duration::from_secs(t.secs.unsigned_abs()))?
            .checked_add(nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_and_walk_agree_and_sort() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("top");
        std::fs::create_dir_all(root.join("b/empty")).unwrap();
        std::fs::write(root.join("b/z.txt"), b"zz").unwrap();
        std::fs::write(root.join("a.txt"), b"a").unwrap();
        std::os::unix::fs::symlink("a.txt", root.join("link")).unwrap();
        let single = dir.path().join("single.bin");
        std::fs::write(&single, vec![0u8; 10]).unwrap();

        let remembered = scan(&[root.clone(), single.clone()], &[]).unwrap();
        let s = &remembered;
        assert_eq!((s.files, s.dirs, s.symlinks, s.bytes), (3, 3, 1, 13));
        assert!(remembered.seen.is_some());
        let walked = Scan { seen: None, ..remembered.clone() };
        let jobs = |scan: &Scan| {
            let mut jobs = Vec::new();
            let totals = walk(scan, |job| {
                jobs.push((job.entry, job.local));
                true
            })
            .unwrap();
            assert_eq!((totals.entries, totals.files, totals.bytes), (7, 3, 13));
            jobs
        };
        let replayed = jobs(&remembered);
        let paths: Vec<_> =
            replayed.iter().map(|(e, _)| String::from_utf8_lossy(&e.path)).collect();
        assert_eq!(
            paths,
            ["top", "top/a.txt", "top/b", "top/b/empty", "top/b/z.txt", "top/link", "single.bin"]
        );
        assert_eq!(replayed[0].1, root);
        assert_eq!(replayed[4].1, root.join("b/z.txt"));
        assert_eq!(replayed[6].1, single);
        assert_eq!(replayed[5].0.kind, EntryKind::Symlink { target: "a.txt".into() });
        // The file system gives the same.
        assert_eq!(jobs(&walked), replayed);

        // A file that grew after the scan: a walk of the file system refuses it rather than
        // send beyond the offer (a replay leaves that to the lane that opens it).
        std::fs::write(root.join("a.txt"), b"grown").unwrap();
        let err = walk(&walked, |_| true).unwrap_err();
        assert!(err.message.contains("changed after the offer"), "{err}");
    }

    /// The later names of a file with several go as hard links to the first name in walk
    /// order (also across sources); a replay of the scan and a fresh walk agree; a file with
    /// one name, and a linked file whose other names are not sent, go as files.
    #[test]
    fn later_names_of_a_file_are_hard_links_to_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("top");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::create_dir_all(root.join("b")).unwrap();
        std::fs::write(root.join("b/first"), b"shared").unwrap();
        std::fs::hard_link(root.join("b/first"), root.join("a/second")).unwrap();
        std::fs::hard_link(root.join("b/first"), root.join("c")).unwrap();
        std::fs::write(root.join("plain"), b"p").unwrap();
        std::fs::write(dir.path().join("lonely"), b"l").unwrap();
        std::fs::hard_link(dir.path().join("lonely"), dir.path().join("elsewhere")).unwrap();
        let single = dir.path().join("single");
        std::fs::hard_link(root.join("b/first"), &single).unwrap();

        let remembered = scan(&[root.clone(), dir.path().join("lonely"), single], &[]).unwrap();
        let s = &remembered;
        assert_eq!((s.files, s.hardlinks, s.dirs, s.bytes), (3, 3, 3, 8));
        let jobs = |scan: &Scan| {
            let mut jobs = Vec::new();
            let totals = walk(scan, |job| {
                jobs.push(job.entry);
                true
            })
            .unwrap();
            assert_eq!((totals.entries, totals.files, totals.bytes), (9, 3, 8));
            jobs
        };
        let replayed = jobs(&remembered);
        let link = |path: &str| {
            replayed.iter().find(|e| e.path == path.as_bytes()).map(|e| e.kind.clone()).unwrap()
        };
        // Walk order: top, top/a, top/a/second (the first name met), top/b, top/b/first, …
        assert_eq!(link("top/a/second"), EntryKind::File { size: 6 });
        for later in ["top/b/first", "top/c", "single"] {
            assert_eq!(link(later), EntryKind::HardLink { target: "top/a/second".into() });
        }
        assert_eq!(link("top/plain"), EntryKind::File { size: 1 });
        assert_eq!(link("lonely"), EntryKind::File { size: 1 });
        let walked = Scan { seen: None, ..remembered.clone() };
        assert_eq!(jobs(&walked), replayed);
    }

    /// Beyond the bound on remembered inodes, further names go as copies, in the scan and
    /// every walk alike.
    #[test]
    fn linked_inodes_beyond_the_bound_are_copies() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        std::fs::hard_link(&file, dir.path().join("g")).unwrap();
        let meta = std::fs::metadata(&file).unwrap();
        let name = |s: &str| RelPath::parse(s).unwrap();
        let mut linked = Linked::default();
        // Fill the table with other inodes (as if met before).
        for i in 0..MAX_LINKED as u64 {
            linked.first.insert((u64::MAX, i), (0, 0));
        }
        assert_eq!(linked.target_of(&name("t/f"), &meta), None);
        assert_eq!(linked.target_of(&name("t/g"), &meta), None, "not remembered: a copy");
        let mut linked = Linked::default();
        assert_eq!(linked.target_of(&name("t/f"), &meta), None);
        assert_eq!(linked.target_of(&name("t/g"), &meta), Some("t/f".into()));
        linked.links = MAX_HARDLINKS;
        assert_eq!(linked.target_of(&name("t/h"), &meta), None, "no more links: a copy");
    }

    #[test]
    fn a_scan_too_large_to_remember_is_walked_again() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("top");
        let long = "n".repeat(250);
        let n = SEEN_BYTES / (2 * long.len()) + 1;
        for i in 0..n.div_ceil(1000) {
            let sub = root.join(format!("{i}{long}"));
            std::fs::create_dir_all(&sub).unwrap();
            for j in 0..1000.min(n - i * 1000) {
                std::fs::File::create(sub.join(format!("{j}{long}"))).unwrap();
            }
        }
        let scan = scan(&[root], &[]).unwrap();
        assert!(scan.seen.is_none());
        let totals = walk(&scan, |_| true).unwrap();
        assert_eq!(totals.files, n as u64);
    }

    #[test]
    fn duplicate_names_and_missing_paths_are_usage_errors() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["x/same", "y/same"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let err = scan(&[dir.path().join("x/same"), dir.path().join("y/same")], &[]).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Usage);
        assert!(err.message.contains("same"));
        let err = scan(&[dir.path().join("nope")], &[]).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Usage);
        assert!(err.message.contains("does not exist"));
    }

    /// A file swapped for a symlink or a FIFO after the walk is refused, without following
    /// the link or blocking on the FIFO; a top-level symlink the user named is read at its
    /// target under its own name.
    #[test]
    fn sources_are_opened_without_following_what_was_swapped_in() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"private").unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"ok").unwrap();
        let as_walked = |p: &Path| {
            let meta = std::fs::symlink_metadata(p).unwrap();
            (meta.len(), mtime(&meta), (meta.dev(), meta.ino()))
        };
        let (size, modified, id) = as_walked(&plain);
        assert_eq!(open_source(&plain, size, modified, id).unwrap().1.len(), 2);
        // Changed since: another size, or the same size written again later.
        let err = open_source(&plain, 3, modified, id).unwrap_err();
        assert!(err.message.contains("changed after the offer"), "{err}");
        let earlier = modified.map(|t| Timestamp { secs: t.secs - 10, ..t });
        assert!(open_source(&plain, size, earlier, id).is_err());

        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        let err = open_source(&link, 7, None, id).unwrap_err();
        assert!(err.message.contains("symbolic link"), "{err}");
        let fifo = dir.path().join("fifo");
        rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, rustix::fs::Mode::from_raw_mode(0o600))
            .unwrap();
        let err = open_source(&fifo, 0, None, id).unwrap_err();
        assert!(err.message.contains("no longer a regular file"), "{err}");

        let scan = scan(std::slice::from_ref(&link), &[]).unwrap();
        assert_eq!(scan.sources[0].name, b"link");
        let mut locals = Vec::new();
        walk(&scan, |job| {
            locals.push(job.local);
            true
        })
        .unwrap();
        assert_eq!(locals, [std::fs::canonicalize(&secret).unwrap()]);
        let (size, modified, id) = as_walked(&locals[0]);
        assert!(open_source(&locals[0], size, modified, id).is_ok());
    }

    /// Finding 14: a parent directory swapped for a link to a directory holding a file of the
    /// same name, size and mtime (all a local attacker can copy) still cannot have that file
    /// sent: it is another inode than the walk's.
    #[test]
    fn a_file_reached_through_a_swapped_parent_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("sub")).unwrap();
        std::fs::write(tree.join("sub/key"), b"public!").unwrap();
        let private = dir.path().join("private");
        std::fs::create_dir(&private).unwrap();
        std::fs::write(private.join("key"), b"secret!").unwrap();
        let when = std::fs::metadata(tree.join("sub/key")).unwrap().modified().unwrap();
        std::fs::File::options()
            .write(true)
            .open(private.join("key"))
            .unwrap()
            .set_modified(when)
            .unwrap();
        let scan = scan(std::slice::from_ref(&tree), &[]).unwrap();
        let mut jobs = Vec::new();
        walk(&scan, |job| {
            jobs.push(job);
            true
        })
        .unwrap();
        let job = jobs.iter().find(|j| j.entry.path == b"tree/sub/key").unwrap();
        std::fs::rename(tree.join("sub"), dir.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(&private, tree.join("sub")).unwrap();
        let EntryKind::File { size } = job.entry.kind else { panic!("a file") };
        let err = open_source(&job.local, size, job.entry.mtime, job.identity).unwrap_err();
        assert!(err.message.contains("replaced"), "{err}");
    }

    /// `--exclude`: gitignore-style patterns relative to each sent directory; an excluded
    /// directory is not entered; negation re-includes; the sent path itself always goes.
    #[test]
    fn excluded_paths_are_left_out_of_scan_and_walk() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("proj");
        for f in
            ["a.o", "keep.o", "src/main.rs", "src/x.o", "target/big", "build/out", "sub/build/in"]
        {
            let p = root.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        let patterns: Vec<String> =
            ["*.o", "!keep.o", "target/", "/build"].map(str::to_owned).to_vec();
        let scan = scan(std::slice::from_ref(&root), &patterns).unwrap();
        let mut paths = Vec::new();
        walk(&scan, |job| {
            paths.push(String::from_utf8(job.entry.path).unwrap());
            true
        })
        .unwrap();
        assert_eq!(
            paths,
            [
                "proj",
                "proj/keep.o",
                "proj/src",
                "proj/src/main.rs",
                "proj/sub",
                "proj/sub/build",
                "proj/sub/build/in"
            ]
        );
        assert_eq!((scan.files, scan.dirs), (3, 4));
        let err = check(std::slice::from_ref(&root), &["[z-a]".to_owned()]).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Usage);
        assert!(err.message.contains("--exclude"), "{err}");
    }

    #[test]
    fn dot_is_named_after_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("named");
        std::fs::create_dir(&inner).unwrap();
        assert_eq!(top_name(&inner.join(".")).unwrap(), b"named");
        assert!(top_name(Path::new("/")).is_err());
    }

    #[test]
    fn timestamps_round_trip_including_before_1970() {
        for t in [
            UNIX_EPOCH + std::time::Duration::new(5, 7),
            UNIX_EPOCH - std::time::Duration::new(5, 7),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let f = dir.path().join("f");
            std::fs::write(&f, b"").unwrap();
            std::fs::File::options().write(true).open(&f).unwrap().set_modified(t).unwrap();
            let ts = mtime(&std::fs::metadata(&f).unwrap()).unwrap();
            assert_eq!(system_time(ts), Some(t));
        }
    }
}
