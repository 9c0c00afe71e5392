//! Error kinds shared by every layer, and the process exit code each one maps to.
//!
//! The exit codes are a stable contract for scripts; `docs/cli.md` lists them.

use serde::{Deserialize, Serialize};

/// What went wrong, coarsely: enough for a script to decide what to do next.
///
/// Also part of the wire format: an `ErrorReport` carries it by variant index (postcard).
/// Never reorder or remove variants; new ones go at the end, before a protocol version bump
/// makes old peers see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// Bad command line or input (clap reports its own errors with the same code).
    Usage,
    /// The peer did not know the code, or someone guessed and failed.
    WrongCode,
    /// The receiver refused the offer (or the sender's peer did).
    Refused,
    /// Files to be written already exist at the destination.
    Conflict,
    /// A file's BLAKE3 hash did not match, or a sealed record failed authentication.
    Integrity,
    /// The network failed or timed out; no peer found.
    Network,
    /// The peer broke the protocol (malformed, unexpected or unsafe messages).
    Protocol,
    /// Local storage: disk full, permission denied, other I/O errors.
    Io,
    /// The peer reported an error of its own.
    Peer,
    /// Anything else: a bug.
    Internal,
    /// Stopped by a signal (Ctrl-C, SIGTERM).
    Interrupted,
    /// The transfer finished, but the receiver's file system could not hold some entries
    /// (names it does not allow, links where it has none): those were left out, everything
    /// else arrived.
    Incomplete,
}

impl ErrorKind {
    /// The process exit code for this kind. 0 is success; 1 is never used for a known kind.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Usage => 2,
            ErrorKind::WrongCode => 3,
            ErrorKind::Refused => 4,
            ErrorKind::Conflict => 5,
            ErrorKind::Integrity => 6,
            ErrorKind::Network => 7,
            ErrorKind::Protocol => 8,
            ErrorKind::Io => 9,
            ErrorKind::Peer => 10,
            ErrorKind::Interrupted => 130,
            ErrorKind::Incomplete => 11,
            ErrorKind::Internal => 1,
        }
    }

    /// Every kind, in wire order.
    pub const ALL: &[ErrorKind] = &[
        ErrorKind::Usage,
        ErrorKind::WrongCode,
        ErrorKind::Refused,
        ErrorKind::Conflict,
        ErrorKind::Integrity,
        ErrorKind::Network,
        ErrorKind::Protocol,
        ErrorKind::Io,
        ErrorKind::Peer,
        ErrorKind::Internal,
        ErrorKind::Interrupted,
        ErrorKind::Incomplete,
    ];

    /// The kind with this [`ErrorKind::as_str`] name.
    pub fn from_name(name: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.iter().copied().find(|k| k.as_str() == name)
    }

    /// The name used in `--json` error events.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Usage => "usage",
            ErrorKind::WrongCode => "wrong_code",
            ErrorKind::Refused => "refused",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Integrity => "integrity",
            ErrorKind::Network => "network",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Io => "io",
            ErrorKind::Peer => "peer",
            ErrorKind::Interrupted => "interrupted",
            ErrorKind::Incomplete => "incomplete",
            ErrorKind::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_exit_codes_are_distinct() {
        let mut codes = std::collections::HashSet::new();
        for &k in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_name(k.as_str()), Some(k));
            assert!(codes.insert(k.exit_code()), "{k} shares its exit code");
            assert_ne!(k.exit_code(), 0);
        }
        assert_eq!(ErrorKind::from_name("nonsense"), None);
    }
}
