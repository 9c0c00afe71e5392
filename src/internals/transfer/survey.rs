//! What the destination already holds: the receiver's answers to a listing, and the sender's
//! plan made of them.
//!
//! When the destination holds any of the offered names (or partial copies of them), the
//! receiver asks for a listing before it decides (`docs/protocol.md` §12):
//!
//! 1. The sender walks its paths and lists every entry, in walk order, in batches.
//! 2. The receiver answers each entry ([`Survey::answer`]): **skip** (the same file is here:
//!    same size and mtime, or with `--checksum` the same BLAKE3 hash; the same symlink),
//!    **resume** (a partial copy of exactly this entry is here, with its length and digest),
//!    or **send**. A differing file is a conflict unless `--overwrite` (then it is sent, or
//!    resumed). Conflicts are counted, and the receiver refuses once the listing is complete,
//!    before anything is written.
//! 3. The sender keeps one byte and a fingerprint per entry ([`Plan`]); it sends only what is
//!    wanted, resuming where its own prefix has the receiver's digest. The wanted entries are
//!    kept from the listing while they fit in [`KEPT_BYTES`] (a sync, where nearly everything
//!    is skipped, needs no further walk); beyond that the sender walks again and checks each
//!    entry against its fingerprint.
//! 4. The receiver holds it to the answers: every entry sent must be one it asked for, with the
//!    same path, kind, size and mtime as listed, at most once; every one it asked for must
//!    come ([`Survey::arrive`], [`Survey::check_complete`]).
//!
//! Memory on either side is 5 bytes per listed entry, plus one resumable partial per file
//! being resumed, plus (on the sender) the kept entries, at most [`KEPT_BYTES`]; nothing else
//! grows with the tree, except on the receiver of an offer with hard links: it keeps a keyed
//! 8-byte hash of every regular file's path ([`LinkTargets`]), to hold each link to a file of
//! the offer.
//!
//! A hard link is skipped when its target is skipped and its name here already is the same
//! file as its target's name; otherwise it is made again (a conflict, as for a file, if
//! something else is in its place and `--overwrite` is off).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::SystemTime;

use super::fs::{os, shown, Dest, Found, RelPath, Resumable};
use super::walk::{system_time, Job};
use super::TransferError;
use crate::error::ErrorKind;
use crate::transfer::prefix::valid_offset;
use crate::wire::control::{Answer, Listed, Offer};
use crate::wire::data::{Entry, EntryKind, Timestamp};

/// How a listed entry stands on the receiver.
const WANT: u8 = 0;
const SKIP: u8 = 1;
const RESUME: u8 = 2;
const ARRIVED: u8 = 3;

/// Conflicting names kept for the message (the count is exact).
const SHOWN_CONFLICTS: usize = 20;

/// What the destination already holds of an offer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Present {
    /// Bytes already here: whole files, and the prefixes of partial copies.
    pub bytes: u64,
    /// Files already here whole (not sent again).
    pub files: u64,
    /// Of `bytes`, those in whole files.
    pub file_bytes: u64,
    /// Partial copies to be continued.
    pub partial: u64,
}

/// The receiver's side: answers the listing and holds the sender to its answers.
#[derive(Debug)]
pub struct Survey {
    overwrite: bool,
    checksum: bool,
    limits: Offer,
    admitted: Offer,
    /// The files listed so far, and whether each was skipped: what a link may name.
    targets: LinkTargets,
    /// Per listed entry (id − 1).
    states: Vec<u8>,
    fingerprints: Vec<u32>,
    key: [u8; 32],
    /// Partial copies offered for resuming, by entry id.
    resumes: HashMap<u64, Resumable>,
    /// Partial files in the state directory when the listing began.
    partials: HashSet<String>,
    /// What is here.
    pub present: Present,
    conflicts: Vec<String>,
    conflict_count: u64,
}

impl Survey {
    /// A survey of `offer` into a destination whose state directory holds `partials`.
    pub fn new(
        offer: &Offer,
        overwrite: bool,
        checksum: bool,
        partials: HashSet<String>,
    ) -> Survey {
        Survey {
            overwrite,
            checksum,
            admitted: none_admitted(offer),
            targets: LinkTargets::new(offer),
            limits: offer.clone(),
            states: Vec::new(),
            fingerprints: Vec::new(),
            key: rand::random(),
            resumes: HashMap::new(),
            partials,
            present: Present::default(),
            conflicts: Vec::new(),
            conflict_count: 0,
        }
    }

    /// Answers one batch of the listing. Entries must come in walk order with ids 1, 2, …,
    /// lie below the offered names and stay within the offer's counts. `touch` is called while
    /// partial copies are checked (a watchdog).
    pub fn answer(
        &mut self,
        dest: &Dest,
        batch: &[Listed],
        touch: &dyn Fn(),
    ) -> Result<Vec<Answer>, TransferError> {
        batch.iter().map(|l| self.answer_one(dest, l, touch)).collect()
    }

    fn answer_one(
        &mut self,
        dest: &Dest,
        listed: &Listed,
        touch: &dyn Fn(),
    ) -> Result<Answer, TransferError> {
        let entry = &listed.entry;
        if entry.id != self.states.len() as u64 + 1 {
            return Err(protocol(format!("the sender listed entry {} out of order", entry.id)));
        }
        let rel = admit(&self.limits, &mut self.admitted, entry)?;
        self.fingerprints.push(fingerprint(&self.key, entry));
        let found = dest.inspect(&rel)?;
        let (state, answer) = match &entry.kind {
            EntryKind::Dir => match found {
                Found::Missing | Found::Dir => (WANT, Answer::Send),
                Found::Blocked(why) => self.conflict(&rel, &why),
                _ => self.conflict(&rel, "a file is where the directory goes"),
            },
            EntryKind::Symlink { target } => match found {
                Found::Missing => (WANT, Answer::Send),
                Found::Symlink { target: t } if t.as_os_str() == os(target) => (SKIP, Answer::Skip),
                Found::Dir => self.conflict(&rel, DIR_IN_THE_WAY),
                Found::Blocked(why) => self.conflict(&rel, &why),
                _ if self.overwrite => (WANT, Answer::Send),
                _ => self.conflict(&rel, "exists and differs"),
            },
            EntryKind::File { size } => {
                let size = *size;
                match found {
                    Found::File { size: s, mtime }
                        if s == size && self.same(dest, &rel, listed, mtime)? =>
                    {
                        self.present.files += 1;
                        self.present.file_bytes += size;
                        self.present.bytes += size;
                        tracing::info!(path = %rel, "skipping: already here ({})", if self.checksum && listed.hash.is_some() { "same BLAKE3 hash" } else { "same size and mtime" });
                        (SKIP, Answer::Skip)
                    }
                    Found::Dir => self.conflict(&rel, DIR_IN_THE_WAY),
                    Found::Blocked(why) => self.conflict(&rel, &why),
                    Found::Missing => self.partial(dest, &rel, entry, size, touch)?,
                    _ if self.overwrite => self.partial(dest, &rel, entry, size, touch)?,
                    _ => self.conflict(&rel, "already exists and differs"),
                }
            }
            // A stream cannot be compared or resumed: it is sent whole, or is a conflict.
            EntryKind::Stream => match found {
                Found::Missing => (WANT, Answer::Send),
                Found::Dir => self.conflict(&rel, DIR_IN_THE_WAY),
                Found::Blocked(why) => self.conflict(&rel, &why),
                _ if self.overwrite => (WANT, Answer::Send),
                _ => self.conflict(&rel, "already exists"),
            },
            EntryKind::HardLink { target } => {
                let Some((target, skipped)) = self.targets.find(target) else {
                    return Err(unlisted_target(&rel, target));
                };
                match found {
                    Found::File { .. } if skipped && dest.same_file(&target, &rel)? => {
                        tracing::info!(path = %rel, "skipping: already a link to {target}");
                        (SKIP, Answer::Skip)
                    }
                    Found::Missing => (WANT, Answer::Send),
                    Found::Dir => self.conflict(&rel, DIR_IN_THE_WAY),
                    Found::Blocked(why) => self.conflict(&rel, &why),
                    _ if self.overwrite => (WANT, Answer::Send),
                    _ => self.conflict(&rel, "already exists and differs"),
                }
            }
        };
        if let EntryKind::File { .. } = entry.kind {
            self.targets.file(&entry.path, state == SKIP);
        }
        self.states.push(state);
        Ok(answer)
    }

    /// Whether the file here is the one listed.
    fn same(
        &self,
        dest: &Dest,
        rel: &RelPath,
        listed: &Listed,
        mtime: Option<SystemTime>,
    ) -> Result<bool, TransferError> {
        match (self.checksum, listed.hash) {
            (true, Some(hash)) => {
                let path = dest.root().join(rel.as_path());
                let mut h = blake3::Hasher::new();
                std::fs::File::open(&path)
                    .and_then(|mut f| std::io::copy(&mut f, &mut h))
                    .map_err(|e| {
                        TransferError::new(
                            ErrorKind::Io,
                            format!("cannot read {}: {e}", path.display()),
                        )
                    })?;
                Ok(*h.finalize().as_bytes() == hash)
            }
            _ => Ok(same_mtime(mtime, listed.entry.mtime)),
        }
    }

    /// A file to send: continued from a partial copy of this very entry, if one is here.
    fn partial(
        &mut self,
        dest: &Dest,
        rel: &RelPath,
        entry: &Entry,
        size: u64,
        touch: &dyn Fn(),
    ) -> Result<(u8, Answer), TransferError> {
        let id = super::fs::state::partial_id(rel.as_bytes(), size, entry.mtime);
        if size == 0 || !self.partials.contains(&id) {
            tracing::info!(path = %rel, "sending whole: not here");
            return Ok((WANT, Answer::Send));
        }
        match dest.examine(rel, size, entry.mtime, touch) {
            Ok(Some(r)) => {
                let answer = Answer::Resume { offset: r.offset, digest: r.digest };
                tracing::info!(path = %rel, held = r.offset, "resuming: a partial copy is here");
                self.present.bytes += r.offset;
                self.present.partial += 1;
                self.resumes.insert(entry.id, r);
                Ok((RESUME, answer))
            }
            Ok(None) => {
                tracing::info!(path = %rel, "sending whole: the partial copy here cannot be used");
                Ok((WANT, Answer::Send))
            }
            Err(super::fs::FsError::Busy { .. }) => Ok(self
                .conflict(rel, "another p2p-copy is receiving it into this destination right now")),
            Err(e) => Err(e.into()),
        }
    }

    fn conflict(&mut self, rel: &RelPath, why: &str) -> (u8, Answer) {
        self.conflict_count += 1;
        if self.conflicts.len() < SHOWN_CONFLICTS {
            self.conflicts.push(format!("{rel} ({why})"));
        }
        (WANT, Answer::Send)
    }

    /// Conflicts found: how many, and the first few (each with its reason).
    pub fn conflicts(&self) -> (u64, &[String]) {
        (self.conflict_count, &self.conflicts)
    }

    /// Entries listed.
    pub fn listed(&self) -> u64 {
        self.states.len() as u64
    }

    /// The data lanes bring `entry`: it must be one the receiver asked for, as listed, and the
    /// first time. Returns the partial copy to continue, if the answer was to resume.
    pub fn arrive(&mut self, entry: &Entry) -> Result<Option<Resumable>, TransferError> {
        let i = entry.id.checked_sub(1).map(|i| i as usize).filter(|&i| i < self.states.len());
        let Some(i) = i else {
            return Err(protocol(format!(
                "the sender sent entry {}, which it never listed",
                entry.id
            )));
        };
        if self.fingerprints[i] != fingerprint(&self.key, entry) {
            return Err(protocol(format!(
                "the sender sent {} other than it listed it",
                crate::transfer::printable_name(&entry.path)
            )));
        }
        match self.states[i] {
            SKIP => Err(protocol(format!(
                "the sender sent {}, which it was told is already here",
                crate::transfer::printable_name(&entry.path)
            ))),
            ARRIVED => Err(protocol(format!(
                "the sender sent {} twice",
                crate::transfer::printable_name(&entry.path)
            ))),
            state => {
                self.states[i] = ARRIVED;
                Ok(if state == RESUME { self.resumes.remove(&entry.id) } else { None })
            }
        }
    }

    /// After the lanes: every entry asked for arrived.
    pub fn check_complete(&self) -> Result<(), TransferError> {
        let missing = self.states.iter().filter(|&&s| s == WANT || s == RESUME).count();
        if missing > 0 {
            return Err(protocol(format!(
                "the sender left out {missing} entr{} it was asked for",
                if missing == 1 { "y" } else { "ies" }
            )));
        }
        Ok(())
    }
}

/// Checks a listed entry against the offer, as the lanes check entries without a listing:
/// a safe path below an offered name, within the offered counts.
pub fn admit(limits: &Offer, got: &mut Offer, entry: &Entry) -> Result<RelPath, TransferError> {
    let rel = RelPath::parse(&entry.path)
        .map_err(|e| protocol(format!("the sender sent an unsafe path: {e}")))?;
    if !limits.names.iter().any(|n| n == rel.first()) {
        return Err(protocol(format!("the sender sent {rel}, which is outside what it offered")));
    }
    let over = match entry.kind {
        EntryKind::Dir => {
            got.dirs += 1;
            got.dirs > limits.dirs
        }
        EntryKind::Symlink { .. } => {
            got.symlinks += 1;
            got.symlinks > limits.symlinks
        }
        EntryKind::File { size } => {
            got.files += 1;
            got.bytes = got.bytes.saturating_add(size);
            got.files > limits.files || got.bytes > limits.bytes
        }
        EntryKind::Stream => {
            got.files += 1;
            got.streams += 1;
            got.files > limits.files || got.streams > limits.streams
        }
        EntryKind::HardLink { .. } => {
            got.hardlinks += 1;
            got.hardlinks > limits.hardlinks
        }
    };
    if over {
        return Err(protocol(format!("the sender sent more than it offered (at {rel}); stopped")));
    }
    Ok(rel)
}

/// Whether the mtime found equals the one offered: exactly, or to the second where the file
/// system keeps no finer time.
fn same_mtime(found: Option<SystemTime>, offered: Option<Timestamp>) -> bool {
    let (Some(found), Some(offered)) = (found, offered.and_then(system_time)) else {
        return false;
    };
    if found == offered {
        return true;
    }
    let secs = |t: SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH).ok().map(|d| (d.as_secs(), d.subsec_nanos()))
    };
    matches!((secs(found), secs(offered)), (Some((a, 0)), Some((b, _))) if a == b)
}

/// Why an entry cannot go where a directory is.
const DIR_IN_THE_WAY: &str = "a directory is in the way, and p2p-copy never replaces a directory";

/// The counts of nothing admitted yet under `offer`: what [`admit`] starts from.
pub fn none_admitted(offer: &Offer) -> Offer {
    Offer { files: 0, dirs: 0, symlinks: 0, bytes: 0, streams: 0, hardlinks: 0, ..offer.clone() }
}

/// A short keyed hash of what identifies an entry: id, path, kind, size or target, mtime.
fn fingerprint(key: &[u8; 32], entry: &Entry) -> u32 {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(&entry.id.to_be_bytes());
    h.update(&(entry.path.len() as u64).to_be_bytes());
    h.update(&entry.path);
    match &entry.kind {
        EntryKind::Dir => {
            h.update(&[0]);
        }
        EntryKind::File { size } => {
            h.update(&[1]);
            h.update(&size.to_be_bytes());
        }
        EntryKind::Symlink { target } => {
            h.update(&[2]);
            h.update(target);
        }
        EntryKind::Stream => {
            h.update(&[3]);
        }
        EntryKind::HardLink { target } => {
            h.update(&[4]);
            h.update(target);
        }
    }
    if let Some(t) = entry.mtime {
        h.update(&t.secs.to_be_bytes());
        h.update(&t.nanos.to_be_bytes());
    }
    let b = h.finalize();
    u32::from_be_bytes([b.as_bytes()[0], b.as_bytes()[1], b.as_bytes()[2], b.as_bytes()[3]])
}

fn protocol(message: String) -> TransferError {
    TransferError::new(ErrorKind::Protocol, message)
}

/// The error for a hard link at `rel` whose `target` is not a regular file of the offer.
pub fn unlisted_target(rel: &RelPath, target: &[u8]) -> TransferError {
    protocol(format!(
        "the sender sent {rel} as a hard link to {}, which it did not send as a file",
        crate::transfer::printable_name(target)
    ))
}

/// The regular files of an offer with hard links, by a keyed hash of their paths, each with
/// whether it was skipped (already here): what a link may name; and those the destination
/// refused (a name its file system cannot hold), whose links are refused too. Never filled
/// for an offer without links.
#[derive(Debug)]
pub struct LinkTargets {
    key: [u8; 32],
    used: bool,
    files: HashMap<u64, bool>,
    refused: HashSet<u64>,
}

impl LinkTargets {
    /// Ready for the files of `offer`.
    pub fn new(offer: &Offer) -> LinkTargets {
        LinkTargets {
            key: rand::random(),
            used: offer.hardlinks > 0,
            files: HashMap::new(),
            refused: HashSet::new(),
        }
    }

    /// The file `path` is an entry of the offer (`skipped`: and is already here).
    pub fn file(&mut self, path: &[u8], skipped: bool) {
        if self.used {
            self.files.insert(self.hash(path), skipped);
        }
    }

    /// The file `path` could not be written here.
    pub fn refused(&mut self, path: &[u8]) {
        if self.used {
            self.refused.insert(self.hash(path));
        }
    }

    /// Whether the file `path` could not be written here.
    pub fn was_refused(&self, path: &[u8]) -> bool {
        self.used && self.refused.contains(&self.hash(path))
    }

    /// The safe path of `target` and whether it was skipped, if it is a file of the offer.
    pub fn find(&self, target: &[u8]) -> Option<(RelPath, bool)> {
        let skipped = *self.files.get(&self.hash(target))?;
        Some((RelPath::parse(target).ok()?, skipped))
    }

    fn hash(&self, path: &[u8]) -> u64 {
        let b = blake3::keyed_hash(&self.key, path);
        let mut first = [0; 8];
        first.copy_from_slice(&b.as_bytes()[..8]);
        u64::from_be_bytes(first)
    }
}

/// What the sender does with an entry, per the receiver's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it whole.
    Send,
    /// Already there: leave it out.
    Skip,
    /// The receiver holds `offset` bytes with this digest.
    Resume {
        /// Bytes held.
        offset: u64,
        /// Their digest.
        digest: [u8; 32],
    },
}

/// The sender's side: the answers, one per listed entry.
#[derive(Debug, Default)]
pub struct Plan {
    verdicts: Vec<u8>,
    fingerprints: Vec<u32>,
    resumes: HashMap<u64, (u64, [u8; 32])>,
    /// Listed entries not answered yet.
    pending: VecDeque<Job>,
    /// The wanted entries in walk order, while they fit in [`KEPT_BYTES`]; `None` once they
    /// did not.
    kept: Option<Vec<Job>>,
    kept_bytes: usize,
    /// What the receiver holds, by its answers.
    pub present: Present,
}

/// Bytes of wanted entries (counted as paths plus a fixed overhead) the sender keeps from the
/// listing rather than walking its paths again.
pub const KEPT_BYTES: usize = 4 << 20;

const KEY: [u8; 32] = [0; 32];

impl Plan {
    /// An empty plan.
    pub fn new() -> Plan {
        Plan { kept: Some(Vec::new()), ..Plan::default() }
    }

    /// A batch was listed; `jobs` are its entries with their local paths.
    pub fn listed(&mut self, jobs: impl IntoIterator<Item = Job>) {
        for job in jobs {
            self.fingerprints.push(fingerprint(&KEY, &job.entry));
            self.pending.push_back(job);
        }
    }

    /// The receiver answered the oldest listed entries (the session checked the count).
    /// Returns the entries it already has (nothing of them will be sent).
    pub fn answered(&mut self, answers: &[Answer]) -> Result<Vec<Job>, TransferError> {
        let mut skipped = Vec::new();
        for answer in answers {
            let Some(mut job) = self.pending.pop_front() else {
                return Err(protocol("the receiver answered more than was listed".into()));
            };
            let id = job.entry.id;
            let size = match job.entry.kind {
                EntryKind::File { size } => Some(size),
                _ => None,
            };
            let v = match *answer {
                Answer::Send => 0,
                Answer::Skip => {
                    if let Some(size) = size {
                        self.present.files += 1;
                        self.present.file_bytes += size;
                        self.present.bytes += size;
                    }
                    1
                }
                Answer::Resume { offset, digest } => {
                    if !size.is_some_and(|s| valid_offset(offset, s)) {
                        return Err(protocol(format!(
                            "the receiver asked to resume entry {id} at an impossible offset"
                        )));
                    }
                    self.present.bytes += offset;
                    self.present.partial += 1;
                    self.resumes.insert(id, (offset, digest));
                    job.resume = Some((offset, digest));
                    2
                }
            };
            self.verdicts.push(v);
            if v == 1 {
                skipped.push(job);
            } else {
                self.keep(job);
            }
        }
        Ok(skipped)
    }

    fn keep(&mut self, job: Job) {
        let Some(kept) = self.kept.as_mut() else { return };
        self.kept_bytes += 128 + job.entry.path.len() + job.local.as_os_str().len();
        if let EntryKind::Symlink { target } | EntryKind::HardLink { target } = &job.entry.kind {
            self.kept_bytes += target.len();
        }
        if self.kept_bytes > KEPT_BYTES {
            self.kept = None;
        } else {
            kept.push(job);
        }
    }

    /// The wanted entries in walk order, with where to resume, if they all fit in
    /// [`KEPT_BYTES`]; otherwise the paths must be walked again (and checked with
    /// [`Plan::verdict`]). Call once every entry is answered.
    pub fn take_kept(&mut self) -> Option<Vec<Job>> {
        self.kept.take()
    }

    /// Every listed entry answered.
    pub fn is_answered(&self) -> bool {
        self.pending.is_empty()
    }

    /// What to do with `entry` of the second walk; an error if it is not what was listed (the
    /// paths changed in between).
    pub fn verdict(&self, entry: &Entry) -> Result<Verdict, TransferError> {
        let i = entry.id.checked_sub(1).map(|i| i as usize);
        let listed = i.and_then(|i| self.fingerprints.get(i).map(|f| (i, *f)));
        match listed {
            Some((i, f)) if f == fingerprint(&KEY, entry) => Ok(match self.verdicts.get(i) {
                Some(1) => Verdict::Skip,
                Some(2) => self
                    .resumes
                    .get(&entry.id)
                    .map_or(Verdict::Send, |&(offset, digest)| Verdict::Resume { offset, digest }),
                _ => Verdict::Send,
            }),
            _ => Err(TransferError::new(
                ErrorKind::Io,
                format!(
                    "the paths changed after they were listed (at {}); send again once they are settled",
                    shown(&entry.path)
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: u64, path: &str, kind: EntryKind) -> Job {
        let entry = Entry { id, path: path.into(), kind, mode: 0o644, mtime: None };
        Job { entry, local: format!("/src/{path}").into(), identity: (0, 0), resume: None }
    }

    /// The plan keeps what the receiver wants, in order, with where to resume; skipped entries
    /// are counted as present and left out.
    #[test]
    fn the_plan_keeps_the_wanted_entries() {
        let mut plan = Plan::new();
        plan.listed([
            job(1, "d", EntryKind::Dir),
            job(2, "d/same", EntryKind::File { size: 10 }),
            job(3, "d/part", EntryKind::File { size: 1 << 30 }),
        ]);
        plan.answered(&[Answer::Send, Answer::Skip]).unwrap();
        assert!(!plan.is_answered());
        plan.answered(&[Answer::Resume { offset: 1 << 20, digest: [7; 32] }]).unwrap();
        assert!(plan.is_answered());
        assert_eq!(plan.present.files, 1);
        assert_eq!(plan.present.bytes, 10 + (1 << 20));
        let kept = plan.take_kept().unwrap();
        let got: Vec<_> = kept.iter().map(|j| (j.entry.path.as_slice(), j.resume)).collect();
        assert_eq!(got, [(&b"d"[..], None), (b"d/part", Some((1 << 20, [7; 32])))]);
        // The plan still answers for a walk of the same entries.
        let skipped = job(2, "d/same", EntryKind::File { size: 10 });
        assert_eq!(plan.verdict(&skipped.entry).unwrap(), Verdict::Skip);
        let other = job(2, "d/same", EntryKind::File { size: 11 });
        assert!(plan.verdict(&other.entry).is_err());
        assert!(plan.answered(&[Answer::Send]).is_err(), "more answers than entries");
    }

    /// A listed hard link is skipped when its target is skipped and its name already is the
    /// same file; another file there is a conflict (sent with `--overwrite`); a target that
    /// was not listed as a file is a protocol error.
    #[test]
    fn hard_links_are_answered_by_the_file_they_name() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("t")).unwrap();
        std::fs::write(root.join("t/a"), b"same").unwrap();
        std::fs::hard_link(root.join("t/a"), root.join("t/b")).unwrap();
        std::fs::write(root.join("t/c"), b"same").unwrap();
        let meta = std::fs::metadata(root.join("t/a")).unwrap();
        let mtime = Some(Timestamp { secs: meta.mtime(), nanos: meta.mtime_nsec() as u32 });
        let dest = Dest::open(root).unwrap();
        let offer = Offer {
            files: 1,
            dirs: 1,
            symlinks: 0,
            bytes: 4,
            names: vec!["t".into()],
            lanes: 1,
            chunk_size: 1 << 20,
            transfer_id: [0; 16],
            streams: 0,
            text: None,
            hardlinks: 4,
            xattrs: false,
        };
        let link = |id, path: &str, target: &str| {
            let kind = EntryKind::HardLink { target: target.into() };
            Listed { entry: Entry { id, path: path.into(), kind, mode: 0o644, mtime }, hash: None }
        };
        let file = Entry { mtime, ..job(2, "t/a", EntryKind::File { size: 4 }).entry };
        let listing =
            [job(1, "t", EntryKind::Dir).entry, file].map(|entry| Listed { entry, hash: None });
        for overwrite in [false, true] {
            let mut survey = Survey::new(&offer, overwrite, false, HashSet::new());
            let answers = survey.answer(&dest, &listing, &|| ()).unwrap();
            assert_eq!(answers, [Answer::Send, Answer::Skip]);
            let links = [link(3, "t/b", "t/a"), link(4, "t/c", "t/a"), link(5, "t/d", "t/a")];
            let answers = survey.answer(&dest, &links, &|| ()).unwrap();
            assert_eq!(answers, [Answer::Skip, Answer::Send, Answer::Send]);
            assert_eq!(survey.conflicts().0, u64::from(!overwrite), "t/c differs");
            let err = survey.answer(&dest, &[link(6, "t/e", "t/none")], &|| ()).unwrap_err();
            assert_eq!(err.kind, ErrorKind::Protocol, "{err}");
        }
    }

    /// Wanted entries beyond the bound are not kept: the sender walks again.
    #[test]
    fn too_many_wanted_entries_are_walked_again() {
        let mut plan = Plan::new();
        let name = "n".repeat(1000);
        let n = KEPT_BYTES / 2000 + 1;
        plan.listed((1..=n as u64).map(|i| job(i, &format!("{name}/{i}"), EntryKind::Dir)));
        plan.answered(&vec![Answer::Send; n]).unwrap();
        assert!(plan.take_kept().is_none());
        let mut plan = Plan::new();
        plan.listed((1..=n as u64).map(|i| job(i, &format!("{name}/{i}"), EntryKind::Dir)));
        plan.answered(&vec![Answer::Skip; n]).unwrap();
        assert_eq!(plan.take_kept().map(|k| k.len()), Some(0), "skipped entries cost nothing");
    }
}
