//! The prefix of a file that one side holds, as both sides see it: its hash state (to go on
//! hashing after it) and its digest (to compare without sending it).
//!
//! The receiver computes it over its partial copy, the sender over its source file; the
//! digests must be equal for the sender to send only the rest (`docs/protocol.md` §12):
//!
//! - a prefix of a file over [`SMALL`] that is not the whole file must end on a group
//!   boundary; its digest is the [`PrefixDigest`] of its group CVs;
//! - any other prefix (a small file's, or a whole file) has its plain BLAKE3 hash as digest.
//!
//! Group CVs come from a journal (receiver) or a cache (sender) when they have them, and are
//! hashed from the file where they do not: that read is the only cost that grows with the
//! prefix, and only when neither side's records cover it.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::fs::SMALL;
use crate::proto::tree::{group_cv, ChainingValue, PrefixDigest, TreeHasher, GROUP};

/// A prefix held, ready to be continued.
#[derive(Debug, Clone)]
pub struct Prefix {
    /// The hash state after the prefix.
    pub state: TreeHasher,
    /// What the other side must compute over its own prefix of the same length.
    pub digest: [u8; 32],
}

/// Whether a file of `size` bytes can be resumed after `len` of them: a whole file always, a
/// small file anywhere, a large one on a group boundary. Never after nothing.
pub fn valid_offset(len: u64, size: u64) -> bool {
    len > 0 && len <= size && (size <= SMALL || len == size || len % GROUP == 0)
}

/// The prefix of `data` (a file of `size` bytes) up to `len`, which must be a
/// [`valid_offset`]. Group CVs are taken from `cvs` while it has them (the CVs of groups 0, 1,
/// … in order) and hashed from `data` after that; `fresh` sees every CV that was hashed from
/// the data, with its index (for a cache). `touch` is called every group (a watchdog).
pub fn prefix(
    data: &File,
    len: u64,
    size: u64,
    cvs: &mut dyn Iterator<Item = ChainingValue>,
    fresh: &mut dyn FnMut(u64, &ChainingValue),
    touch: &dyn Fn(),
) -> io::Result<Prefix> {
    debug_assert!(valid_offset(len, size), "prefix of {len} of {size}");
    let partial_group_file = size > SMALL && len < size;
    // Groups taken whole: all of a large partial prefix; for the rest, all but the group that
    // holds the last byte (read, so that the state has input and can give a root).
    let groups = if partial_group_file { len / GROUP } else { len.saturating_sub(1) / GROUP };
    let mut state = TreeHasher::new();
    let mut digest = PrefixDigest::new();
    let mut buf = Vec::new();
    for g in 0..groups {
        let cv = match cvs.next() {
            Some(cv) => cv,
            None => {
                read_at(data, g * GROUP, GROUP, &mut buf)?;
                let cv = group_cv(g, &buf);
                fresh(g, &cv);
                cv
            }
        };
        state.push_group(cv);
        digest.push(&cv);
        touch();
    }
    let tail = len - groups * GROUP;
    if tail > 0 {
        read_at(data, groups * GROUP, tail, &mut buf)?;
        state.update(&buf);
    }
    let digest = if partial_group_file { digest.finish() } else { state.finalize() };
    Ok(Prefix { state, digest })
}

/// Reads exactly `n` bytes at `offset` into `buf`.
fn read_at(data: &File, offset: u64, n: u64, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.resize(n as usize, 0);
    data.read_exact_at(buf, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_of(bytes: &[u8]) -> (tempfile::NamedTempFile, File) {
        let mut t = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut t, bytes).unwrap();
        let f = File::open(t.path()).unwrap();
        (t, f)
    }

    /// Whatever mix of recorded and freshly hashed CVs, the digest and the state are the same,
    /// and the state continues to the file's BLAKE3 hash.
    #[test]
    fn recorded_and_hashed_groups_give_the_same_prefix() {
        let g = GROUP as usize;
        let size = SMALL as usize + 3 * g + 123;
        let data: Vec<u8> = (0..size).map(|i| (i * 7 % 253) as u8).collect();
        let (_t, f) = file_of(&data);
        let mut full = TreeHasher::new().collect_cvs();
        full.update(&data);
        let (_, all) = full.take_cvs();
        let root = *blake3::hash(&data).as_bytes();
        for len in [GROUP, 5 * GROUP, size as u64] {
            let mut reference = None;
            for recorded in [0, 2, all.len()] {
                let mut cvs = all.iter().copied().take(recorded);
                let mut hashed = Vec::new();
                let p = prefix(&f, len, size as u64, &mut cvs, &mut |i, _| hashed.push(i), &|| {})
                    .unwrap();
                let groups = if len == size as u64 { (len - 1) / GROUP } else { len / GROUP };
                let want: Vec<u64> = (recorded as u64..groups).collect();
                assert_eq!(hashed, want, "len {len}, {recorded} recorded");
                let digest = *reference.get_or_insert(p.digest);
                assert_eq!(p.digest, digest, "len {len}, {recorded} recorded");
                let mut state = p.state;
                state.update(&data[len as usize..]);
                assert_eq!(state.finalize(), root);
            }
            if len == size as u64 {
                assert_eq!(reference, Some(root), "a whole file's digest is its hash");
            }
        }
    }

    #[test]
    fn a_small_prefix_digest_is_its_hash() {
        let data = b"0123456789".repeat(1000);
        let (_t, f) = file_of(&data);
        let p = prefix(&f, 777, data.len() as u64, &mut std::iter::empty(), &mut |_, _| {}, &|| {})
            .unwrap();
        assert_eq!(p.digest, *blake3::hash(&data[..777]).as_bytes());
        assert!(valid_offset(777, data.len() as u64));
        assert!(!valid_offset(0, 10) && !valid_offset(11, 10));
        assert!(!valid_offset(SMALL + 1, SMALL + GROUP * 4), "a large file resumes on groups");
        assert!(valid_offset(SMALL + 5, SMALL + 5));
    }
}
