//! What each side keeps so that it can rejoin a transfer without the code: after a lost
//! connection (both processes alive), or after one of them was killed and started again with
//! the same command.
//!
//! Once a session is secured, each side stores the transfer's resume secret (from the key
//! schedule: [`crate::crypto::Keys::resume_secret`]) and the transfer id in its state
//! directory, `$XDG_STATE_HOME/p2p-copy` (or `~/.local/state/p2p-copy`), mode 0600: the
//! sender under a key made of its canonical source paths, the receiver under one made of the
//! code and its destination. With the secret both sides meet on the rejoin nameplate
//! ([`crate::crypto::rejoin_nameplate`]) and run a rejoin handshake instead of a PAKE. The
//! file is removed when the transfer succeeds or fails for good, and ignored (and replaced)
//! once older than [`STALE_AFTER`].
//!
//! The secret never goes into `--out`: copying a destination never copies a bearer secret.

use std::fs::{self, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::control::{unexpected, ControlStream};
use super::meet::Guard;
use super::{Note, Observer, Stop, TransferError};
use crate::code::Code;
use crate::error::ErrorKind;
use crate::net::quic::Node;
use crate::proto::Event;
use crate::wire::control::Hello;

/// Saved state older than this is not used.
pub const STALE_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

const MAGIC: &[u8; 8] = b"P2PCRJ03";
const LEN: usize = 8 + 8 + 32 + 16 + 8;

/// A transfer's rejoin secret and id.
#[derive(Clone, PartialEq, Eq)]
pub struct Rejoin {
    /// The resume secret.
    pub secret: [u8; 32],
    /// The transfer id (from the first offer).
    pub transfer_id: [u8; 16],
}

impl std::fmt::Debug for Rejoin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rejoin")
            .field("transfer_id", &hex::encode(self.transfer_id))
            .finish_non_exhaustive()
    }
}

/// Where one transfer's state is saved.
#[derive(Debug, Clone)]
pub struct Saved {
    path: PathBuf,
}

impl Saved {
    /// The sender's state for these source paths.
    pub fn sender(sources: &[PathBuf]) -> Option<Saved> {
        let mut h = blake3::Hasher::new_derive_key("p2p-copy/1 saved sender");
        for p in sources {
            let p = fs::canonicalize(p).unwrap_or_else(|_| p.clone());
            let bytes = p.as_os_str().as_encoded_bytes();
            h.update(&(bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        }
        Saved::at("send", h.finalize())
    }

    /// The receiver's state for this code and destination.
    pub fn receiver(code: &Code, out: &Path) -> Option<Saved> {
        let mut h = blake3::Hasher::new_derive_key("p2p-copy/1 saved receiver");
        let code = code.to_string();
        h.update(&(code.len() as u64).to_be_bytes());
        h.update(code.as_bytes());
        let out = fs::canonicalize(out).unwrap_or_else(|_| out.to_path_buf());
        h.update(out.as_os_str().as_encoded_bytes());
        Saved::at("receive", h.finalize())
    }

    fn at(kind: &str, key: blake3::Hash) -> Option<Saved> {
        let base = std::env::var_os("XDG_STATE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/state")))?;
        let dir = base.join("p2p-copy").join(kind);
        Some(Saved { path: dir.join(hex::encode(&key.as_bytes()[..16])) })
    }

    /// The saved state, if there is a fresh one of ours.
    pub fn load(&self) -> Option<Rejoin> {
        let meta = fs::symlink_metadata(&self.path).ok()?;
        if !meta.is_file()
            || meta.uid() != rustix::process::geteuid().as_raw()
            || meta.mode() & 0o077 != 0
        {
            return None;
        }
        let bytes = fs::read(&self.path).ok()?;
        let b: &[u8; LEN] = bytes.as_slice().try_into().ok()?;
        if &b[..8] != MAGIC || check(&b[..LEN - 8]) != b[LEN - 8..] {
            return None;
        }
        let created =
            UNIX_EPOCH + Duration::from_secs(u64::from_be_bytes(b[8..16].try_into().ok()?));
        if SystemTime::now().duration_since(created).unwrap_or_default() > STALE_AFTER {
            return None;
        }
        let mut r = Rejoin { secret: [0; 32], transfer_id: [0; 16] };
        r.secret.copy_from_slice(&b[16..48]);
        r.transfer_id.copy_from_slice(&b[48..64]);
        Some(r)
    }

    /// Saves `rejoin` (replacing what was there). Failing to save only means no rejoin after a
    /// restart; it is logged, not fatal.
    pub fn store(&self, rejoin: &Rejoin) {
        let write = || -> std::io::Result<()> {
            if let Some(dir) = self.path.parent() {
                fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
            }
            let mut b = Vec::with_capacity(LEN);
            b.extend_from_slice(MAGIC);
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
            b.extend_from_slice(&now.to_be_bytes());
            b.extend_from_slice(&rejoin.secret);
            b.extend_from_slice(&rejoin.transfer_id);
            let c = check(&b);
            b.extend_from_slice(&c);
            let tmp = self.path.with_extension("new");
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&tmp)?;
            f.write_all(&b)?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)
        };
        if let Err(e) = write() {
            tracing::warn!(path = %self.path.display(), error = %e, "could not save the transfer's state for a rejoin");
        }
    }

    /// Forgets the transfer.
    pub fn remove(&self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn check(b: &[u8]) -> [u8; 8] {
    let h = blake3::derive_key("p2p-copy/1 saved check", b);
    let mut out = [0; 8];
    out.copy_from_slice(&h[..8]);
    out
}

// ---------------------------------------------------------------------------------------------
// Meeting again.

/// A connection whose session is secured: the peer proved the code (or the transfer's secret).
pub(crate) struct Secured {
    pub node: Node,
    pub conn: quinn::Connection,
    pub ctl: ControlStream,
    pub guard: Guard,
    /// The peer's hello (its limits).
    pub peer: Hello,
}

/// Runs the handshake on a connection up to the peer's verified hello. On failure the peer is
/// told (when it can be) and the connection closed.
pub(crate) async fn secure(
    joined: super::meet::Joined,
    observer: &Arc<dyn Observer>,
) -> Result<Secured, TransferError> {
    let (node, conn, mut ctl, guard) = joined;
    let failed = match ctl.next_event(Duration::from_secs(60)).await {
        Ok(Event::Secured { verifier, peer }) => {
            observer.note(Note::Secured { verifier: &verifier });
            return Ok(Secured { node, conn, ctl, guard, peer });
        }
        Ok(other) => unexpected(&other),
        Err(e) => e,
    };
    let open = node.endpoint.open_connections();
    ctl.abort(&conn, &failed).await;
    super::drained(&node.endpoint, open, Duration::from_secs(1)).await;
    guard.close().await;
    Err(failed)
}

/// Whether a transfer that failed this way may go on after rejoining: the network or the
/// other process went away (not a refusal, a wrong code, a broken protocol, bad data, or a
/// stop asked for on either side).
pub(crate) fn reconnectable(e: &TransferError) -> bool {
    e.kind == ErrorKind::Network
}

/// The longest one attempt to meet again waits: a fresh attempt binds anew and looks on every
/// interface up at the time (a link that came back, an address that changed, a node that
/// restarted).
const ATTEMPT: Duration = Duration::from_secs(20);

/// Tries `attempt` (given how long it may wait) until it succeeds, `deadline` passes or a stop
/// is asked for, backing off between attempts.
pub(crate) async fn until<F, Fut>(
    deadline: tokio::time::Instant,
    stop: &mut Stop,
    mut attempt: F,
) -> Result<Secured, TransferError>
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Result<Secured, TransferError>>,
{
    let mut backoff = Duration::from_millis(250);
    let mut last = None;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(last.unwrap_or_else(|| {
                TransferError::network("the other side did not come back in time")
            }));
        }
        tokio::select! {
            r = attempt(left.min(ATTEMPT)) => match r {
                Ok(s) => return Ok(s),
                Err(e) => {
                    tracing::debug!(error = %e, "rejoin attempt failed");
                    last = Some(e);
                }
            },
            e = stop.requested() => return Err(e),
        }
        let pause = backoff.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            e = stop.requested() => return Err(e),
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// The first of two ways of meeting that succeeds: by the code, and by the secret of an
/// interrupted transfer. A failure of the first is final unless it is only that nobody came
/// (then the second may still).
pub(crate) async fn race(
    by_code: impl Future<Output = Result<Secured, TransferError>>,
    by_secret: impl Future<Output = Result<Secured, TransferError>>,
) -> Result<Secured, TransferError> {
    tokio::pin!(by_code, by_secret);
    let (mut code_failed, mut secret_failed) = (None, false);
    loop {
        tokio::select! {
            r = &mut by_code, if code_failed.is_none() => match r {
                Ok(s) => return Ok(s),
                Err(e) if e.kind == ErrorKind::Network && !secret_failed => code_failed = Some(e),
                Err(e) => return Err(e),
            },
            r = &mut by_secret, if !secret_failed => match r {
                Ok(s) => return Ok(s),
                Err(e) => match code_failed.take() {
                    Some(first) => return Err(first),
                    None if e.kind == ErrorKind::Interrupted => return Err(e),
                    None => secret_failed = true,
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_state_round_trips_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let saved = Saved { path: dir.path().join("sub/x") };
        assert_eq!(saved.load(), None);
        let r = Rejoin { secret: [7; 32], transfer_id: [8; 16] };
        saved.store(&r);
        assert_eq!(saved.load(), Some(r.clone()));
        let meta = fs::metadata(&saved.path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(dir.path().join("sub")).unwrap().mode() & 0o777, 0o700);
        // Damaged, or readable by others: not used.
        let mut bytes = fs::read(&saved.path).unwrap();
        bytes[20] ^= 1;
        fs::write(&saved.path, &bytes).unwrap();
        assert_eq!(saved.load(), None);
        saved.store(&r);
        fs::set_permissions(&saved.path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        assert_eq!(saved.load(), None);
        saved.remove();
        assert!(!saved.path.exists());
    }
}
