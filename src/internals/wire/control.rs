//! Control-stream messages.
//!
//! Every control frame body starts with a kind byte:
//!
//! | kind | name    | body after the kind byte                                   |
//! |------|---------|------------------------------------------------------------|
//! | 0x01 | PAKE    | `version: u16 BE ‖ spake2 message (33 bytes)`              |
//! | 0x02 | CONFIRM | `mac: [u8; 32]` (HMAC-SHA256 key confirmation)             |
//! | 0x03 | SEALED  | AES-256-GCM ciphertext of a postcard-encoded [`Control`]   |
//! | 0x04 | REJOIN  | `version: u16 BE ‖ nonce (32 bytes)`: instead of PAKE, to rejoin |
//!
//! PAKE and CONFIRM travel in clear (they are safe to show); everything after them is SEALED.
//! [`Control`] is encoded with postcard (varint integers, length-prefixed strings, enum
//! variants by index: new variants and fields are only ever appended). Its protocol version is
//! the one in the PAKE frame and again in [`Hello`]. After decoding, [`Control::validate`]
//! enforces the caps on every list and string.

use serde::{Deserialize, Serialize};

use super::{fixed, from_postcard, to_postcard, DecodeError};
use crate::error::ErrorKind;

/// The protocol version this build speaks.
pub const VERSION: u16 = 7;
/// Cap on a control frame body (an offer naming many top-level paths is the largest).
pub const MAX_FRAME: usize = 4 << 20;
/// Cap on the top-level names in an offer.
pub const MAX_NAMES: usize = 10_000;
/// Cap on one path or name, in bytes.
pub const MAX_PATH: usize = 4096;
/// Cap on the hard links of one offer ([`Offer::hardlinks`]): the receiver keeps them until
/// every lane has finished.
pub const MAX_HARDLINKS: u64 = 100_000;
/// Cap on the bytes of the paths of an offer's hard link entries, each counted as its path
/// plus its target.
pub const MAX_HARDLINK_BYTES: usize = 16 << 20;
/// Cap on a free-text message (errors).
pub const MAX_MESSAGE: usize = 4096;
/// Cap on the text of a text offer (`send --text`), in bytes.
pub const MAX_TEXT: usize = 1 << 20;
/// Cap on the entries of one [`Control::Listing`] (and so on the answers to it).
pub const MAX_LISTING: usize = 1024;
/// Length of the SPAKE2 message.
pub const PAKE_LEN: usize = crate::crypto::PAKE_MSG_LEN;

const KIND_PAKE: u8 = 0x01;
const KIND_CONFIRM: u8 = 0x02;
/// Kind byte of a sealed frame (exposed so a sealed frame can be built in place).
pub const KIND_SEALED: u8 = 0x03;
const KIND_REJOIN: u8 = 0x04;

/// A control frame as it crosses the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Our SPAKE2 message and the protocol version we speak.
    Pake {
        /// Protocol version.
        version: u16,
        /// SPAKE2 message.
        msg: [u8; PAKE_LEN],
    },
    /// Key confirmation MAC.
    Confirm([u8; 32]),
    /// A sealed [`Control`] message (ciphertext and tag).
    Sealed(Vec<u8>),
    /// Instead of PAKE, on a connection that rejoins a transfer: a fresh nonce; the keys come
    /// from the transfer's resume secret and both nonces.
    Rejoin {
        /// Protocol version.
        version: u16,
        /// Fresh random bytes.
        nonce: [u8; 32],
    },
}

impl Frame {
    /// Appends the frame body to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Frame::Pake { version, msg } => {
                out.push(KIND_PAKE);
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(msg);
            }
            Frame::Confirm(mac) => {
                out.push(KIND_CONFIRM);
                out.extend_from_slice(mac);
            }
            Frame::Sealed(ct) => {
                out.push(KIND_SEALED);
                out.extend_from_slice(ct);
            }
            Frame::Rejoin { version, nonce } => {
                out.push(KIND_REJOIN);
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(nonce);
            }
        }
    }

    /// Decodes a frame body.
    pub fn decode(body: &[u8]) -> Result<Frame, DecodeError> {
        if body.len() > MAX_FRAME {
            return Err(DecodeError::TooLong {
                what: "control frame",
                len: body.len(),
                max: MAX_FRAME,
            });
        }
        let (&kind, rest) = body.split_first().ok_or(DecodeError::Truncated)?;
        match kind {
            KIND_PAKE => {
                let fixed = fixed::<{ 2 + PAKE_LEN }>(rest)?;
                let version = u16::from_be_bytes([fixed[0], fixed[1]]);
                let mut msg = [0; PAKE_LEN];
                msg.copy_from_slice(&fixed[2..]);
                Ok(Frame::Pake { version, msg })
            }
            KIND_CONFIRM => Ok(Frame::Confirm(fixed::<32>(rest)?)),
            KIND_SEALED => Ok(Frame::Sealed(rest.to_vec())),
            KIND_REJOIN => {
                let fixed = fixed::<34>(rest)?;
                let mut nonce = [0; 32];
                nonce.copy_from_slice(&fixed[2..]);
                Ok(Frame::Rejoin { version: u16::from_be_bytes([fixed[0], fixed[1]]), nonce })
            }
            other => Err(DecodeError::UnknownType(other)),
        }
    }
}

/// A session message, sealed inside [`Frame::Sealed`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// First sealed message each way: who I am on the QUIC layer, what I can do.
    Hello(Hello),
    /// Sender → receiver: what would be sent.
    Offer(Offer),
    /// Receiver → sender: go ahead.
    Accept(Accept),
    /// Receiver → sender: no.
    Refuse(Refuse),
    /// Sender → receiver: every lane is written; the totals that were sent.
    Finish(Summary),
    /// Receiver → sender: every file verified and in place.
    Complete(Summary),
    /// Either way: the session is over because of this error.
    Error(ErrorReport),
    /// Receiver → sender, instead of a decision: the destination may already hold part of the
    /// offer; list the entries first (answered by [`Control::Answers`]).
    Ask(Ask),
    /// Sender → receiver, after [`Control::Ask`]: the next entries of the manifest, in walk
    /// order (ids 1, 2, … without gaps).
    Listing(Vec<Listed>),
    /// Sender → receiver: the listing is complete; the receiver now decides.
    ListEnd,
    /// Receiver → sender: what to do with each entry of the oldest unanswered listing, in order.
    Answers(Vec<Answer>),
}

/// The receiver's request for a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ask {
    /// Send each file's BLAKE3 hash with its entry (`--checksum`: the sender reads every file
    /// first).
    pub checksum: bool,
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    /// The entry as the data lanes would carry it.
    pub entry: crate::wire::data::Entry,
    /// The file's BLAKE3 hash, when the listing was asked with `checksum`.
    pub hash: Option<[u8; 32]>,
}

/// The receiver's answer for one listed entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// Send it (whole).
    Send,
    /// It is already here: do not send it.
    Skip,
    /// The receiver holds the first `offset` bytes of this file; `digest` proves which
    /// (`docs/protocol.md` §12). The sender sends the rest if its own prefix has the same
    /// digest, else the whole file.
    Resume {
        /// Bytes held.
        offset: u64,
        /// Their digest.
        digest: [u8; 32],
    },
}

/// Capabilities and the QUIC identity of one side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version (equal to the one in the PAKE frame).
    pub version: u16,
    /// SHA-256 of this side's QUIC certificate (DER).
    pub cert_fingerprint: [u8; 32],
    /// `HMAC(bind_key[side], TLS exporter ‖ sender fp ‖ receiver fp)`: proves the QUIC session
    /// carrying this message is the one the PAKE partners share.
    pub binding: [u8; 32],
    /// Most data lanes this side will run at once.
    pub max_lanes: u16,
    /// Largest chunk payload this side accepts.
    pub max_chunk: u32,
    /// Feature bits (none defined in version 2; unknown bits are ignored).
    pub features: u64,
}

/// What the sender offers. Counts come from a walk just before the offer; the manifest itself
/// streams on the data lanes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// Regular files.
    pub files: u64,
    /// Directories (including the top-level ones).
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Sum of file sizes.
    pub bytes: u64,
    /// Top-level names: every entry path starts with one of these. Names are bytes (a Unix
    /// name need not be UTF-8).
    pub names: Vec<Vec<u8>>,
    /// Data lanes the sender will open.
    pub lanes: u16,
    /// Chunk payload size the sender will use.
    pub chunk_size: u32,
    /// Random per transfer; the same when a transfer is resumed by the same sender.
    pub transfer_id: [u8; 16],
    /// Of `files`, those of unknown size (`send -`: a stream, not counted in `bytes`, never
    /// resumed).
    pub streams: u64,
    /// A text message instead of files (`send --text`): then `names` is empty, every count
    /// is zero, and the receiver shows the text and writes nothing.
    pub text: Option<String>,
    /// Hard links: entries that name again a file sent earlier in this transfer (not counted
    /// in `files`; they carry no bytes).
    pub hardlinks: u64,
    /// Files and directories may come with their extended attributes (`send --xattrs`): XATTRS
    /// records; without it, one is a protocol error.
    pub xattrs: bool,
}

/// The receiver's yes. What it already holds it said in its [`Answer`]s, if it asked for a
/// listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accept {}

/// Why the receiver said no.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refuse {
    /// The reason.
    pub reason: RefuseReason,
    /// What the refusal concerns, to show the sender (for a conflict: each path in the way
    /// with why, `photos/a.jpg (already exists and differs)`), at most 20; bytes, as names are.
    pub names: Vec<Vec<u8>>,
}

/// Reasons for a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefuseReason {
    /// The person (or `--yes` missing on a non-interactive receive) declined.
    Declined,
    /// Destination names exist and `--overwrite` was not given.
    Conflict,
    /// Not enough free space at the destination.
    NoSpace,
    /// The receiver writes one file to its standard output (`receive --stdout`), and the
    /// offer holds something else.
    NotOneFile,
}

/// Totals of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Summary {
    /// Manifest entries of every kind.
    pub entries: u64,
    /// Regular files.
    pub files: u64,
    /// File bytes (whole sizes of the files sent, resumed ones included).
    pub bytes: u64,
    /// Of `bytes`, those the receiver already held (the prefixes of resumed files).
    pub resumed: u64,
    /// `Complete` only (0 in `Finish`): entries that arrived but that the receiver's file
    /// system cannot hold (a name it does not allow, a link where it has none), left out.
    pub refused: u64,
}

/// An error one side reports to the other before closing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReport {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// A sentence for the person on the other side.
    pub message: String,
}

impl Control {
    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        to_postcard(self, out);
    }

    /// Decodes and validates a message.
    pub fn decode(bytes: &[u8]) -> Result<Control, DecodeError> {
        let msg: Control = from_postcard(bytes)?;
        msg.validate()?;
        Ok(msg)
    }

    /// Checks every cap. Called by [`Control::decode`].
    pub fn validate(&self) -> Result<(), DecodeError> {
        match self {
            Control::Hello(h) if h.version != VERSION => Err(DecodeError::Version(h.version)),
            Control::Hello(h) if h.max_lanes == 0 => Err(DecodeError::Invalid("lane limit")),
            Control::Hello(h) if (h.max_chunk as usize) < crate::wire::data::MIN_CHUNK => {
                Err(DecodeError::Invalid("chunk limit"))
            }
            Control::Offer(o) => {
                check_names("offer names", &o.names)?;
                if o.lanes == 0 {
                    return Err(DecodeError::Invalid("lane count"));
                }
                // A stream (`send -`) goes alone: one file of unknown size, nothing else (the
                // receiver gives a stream offer no stall limit, which must not cover a tree).
                let alone = [o.dirs, o.symlinks, o.hardlinks].iter().all(|&n| n == 0)
                    && o.files == 1
                    && o.names.len() == 1;
                if o.streams > 1 || (o.streams == 1 && !alone) {
                    return Err(DecodeError::Invalid("stream count"));
                }
                if let Some(text) = &o.text {
                    cap("text", text.len(), MAX_TEXT)?;
                    let counts = [o.files, o.dirs, o.symlinks, o.hardlinks, o.bytes];
                    if !o.names.is_empty() || counts.iter().any(|&n| n != 0) {
                        return Err(DecodeError::Invalid("text offer with files"));
                    }
                }
                Ok(())
            }
            Control::Listing(l) => {
                cap("listing", l.len(), MAX_LISTING)?;
                l.iter().try_for_each(|e| e.entry.validate())
            }
            Control::Answers(a) => cap("answers", a.len(), MAX_LISTING),
            Control::Refuse(r) => check_names("refused names", &r.names),
            Control::Error(e) => cap("error message", e.message.len(), MAX_MESSAGE),
            _ => Ok(()),
        }
    }
}

/// Cap on the addresses in [`Candidates`].
pub const MAX_CANDIDATES: usize = 32;

/// What each side tells the other through the rendezvous mailbox once the keys are confirmed,
/// sealed under the mailbox lane ([`crate::proto::MAILBOX_LANE`]): where it can be reached and
/// which certificate it will present there. Postcard: `fingerprint: [u8; 32]` (no length),
/// `addrs: varint n ‖ n × SocketAddr` (see the rendezvous wire format), `relay: bool`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidates {
    /// SHA-256 of the certificate this side presents on every path (direct and relayed).
    pub fingerprint: [u8; 32],
    /// Addresses to try for a direct connection, best first (empty: relay only).
    pub addrs: Vec<std::net::SocketAddr>,
    /// This side will use the node's relay.
    pub relay: bool,
}

impl Candidates {
    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        to_postcard(self, out);
    }

    /// Decodes and checks the cap.
    pub fn decode(bytes: &[u8]) -> Result<Candidates, DecodeError> {
        let c: Candidates = from_postcard(bytes)?;
        cap("candidate list", c.addrs.len(), MAX_CANDIDATES)?;
        Ok(c)
    }
}

fn check_names(what: &'static str, names: &[Vec<u8>]) -> Result<(), DecodeError> {
    cap(what, names.len(), MAX_NAMES)?;
    names.iter().try_for_each(|n| cap("name", n.len(), MAX_PATH))
}

fn cap(what: &'static str, len: usize, max: usize) -> Result<(), DecodeError> {
    if len > max {
        return Err(DecodeError::TooLong { what, len, max });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::data::{Entry, EntryKind, Timestamp};
    use proptest::prelude::*;

    #[test]
    fn candidates_snapshot_and_caps() {
        let c = Candidates {
            fingerprint: [0x11; 32],
            addrs: vec!["192.0.2.1:4433".parse().unwrap(), "[2001:db8::1]:80".parse().unwrap()],
            relay: true,
        };
        let mut out = Vec::new();
        c.encode(&mut out);
        assert_eq!(
            hex::encode(&out),
            "1111111111111111111111111111111111111111111111111111111111111111\
             0200c0000201d1220120010db80000000000000000000000015001"
        );
        assert_eq!(Candidates::decode(&out), Ok(c.clone()));
        let many = Candidates { addrs: vec![c.addrs[0]; MAX_CANDIDATES + 1], ..c };
        let mut out = Vec::new();
        many.encode(&mut out);
        assert!(matches!(Candidates::decode(&out), Err(DecodeError::TooLong { .. })));
        assert!(Candidates::decode(&out[..10]).is_err());
    }

    fn samples() -> Vec<Control> {
        vec![
            Control::Hello(Hello {
                version: VERSION,
                cert_fingerprint: [0xab; 32],
                binding: [0xcd; 32],
                max_lanes: 4,
                max_chunk: 1 << 20,
                features: 0,
            }),
            Control::Offer(Offer {
                files: 2,
                dirs: 1,
                symlinks: 0,
                bytes: 300,
                names: vec!["photos".into(), "notes.txt".into()],
                lanes: 2,
                chunk_size: 1 << 20,
                transfer_id: [0x77; 16],
                streams: 0,
                text: None,
                hardlinks: 0,
                xattrs: false,
            }),
            Control::Accept(Accept {}),
            Control::Refuse(Refuse { reason: RefuseReason::Conflict, names: vec!["a".into()] }),
            Control::Finish(Summary { entries: 3, files: 2, bytes: 300, resumed: 100, refused: 0 }),
            Control::Complete(Summary {
                entries: 3,
                files: 2,
                bytes: 300,
                resumed: 100,
                refused: 1,
            }),
            Control::Error(ErrorReport { kind: ErrorKind::Io, message: "disk full".into() }),
            Control::Ask(Ask { checksum: true }),
            Control::Listing(vec![
                Listed { entry: dir_entry(), hash: None },
                Listed { entry: file_entry(), hash: Some([0xee; 32]) },
            ]),
            Control::ListEnd,
            Control::Answers(vec![
                Answer::Send,
                Answer::Skip,
                Answer::Resume { offset: 1 << 20, digest: [0x5a; 32] },
            ]),
            Control::Offer(Offer {
                files: 0,
                dirs: 0,
                symlinks: 0,
                bytes: 0,
                names: vec![],
                lanes: 1,
                chunk_size: 1 << 20,
                transfer_id: [0x77; 16],
                streams: 0,
                text: Some("hi".into()),
                hardlinks: 0,
                xattrs: false,
            }),
            Control::Offer(Offer {
                files: 1,
                dirs: 0,
                symlinks: 0,
                bytes: 0,
                names: vec!["stdin".into()],
                lanes: 1,
                chunk_size: 1 << 20,
                transfer_id: [0x77; 16],
                streams: 1,
                text: None,
                hardlinks: 0,
                xattrs: false,
            }),
            Control::Refuse(Refuse { reason: RefuseReason::NotOneFile, names: vec![] }),
        ]
    }

    fn dir_entry() -> Entry {
        Entry { id: 1, path: "d".into(), kind: EntryKind::Dir, mode: 0o755, mtime: None }
    }

    fn file_entry() -> Entry {
        Entry {
            id: 5,
            path: "photos/a.jpg".into(),
            kind: EntryKind::File { size: 1000 },
            mode: 0o644,
            mtime: Some(Timestamp { secs: 1_700_000_000, nanos: 5 }),
        }
    }

    fn encoded(m: &Control) -> String {
        let mut out = Vec::new();
        m.encode(&mut out);
        hex::encode(out)
    }

    #[test]
    fn control_snapshots() {
        let got: Vec<String> = samples().iter().map(encoded).collect();
        let want = [
            "0007abababababababababababababababababababababababababababababababab\
             cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd04808040\
             00",
            "01020100ac02020670686f746f73096e6f7465732e74787402808040\
             77777777777777777777777777777777 000000 00",
            "02",
            "0301010161",
            "040302ac026400",
            "050302ac026401",
            "0607096469736b2066756c6c",
            "0701",
            "0802010164\
             00ed030000\
             050c70686f746f732f612e6a706701e807a4030180c49fd50c05\
             01eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee",
            "09",
            "0a03000102808040\
             5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a",
            "010000000000 01808040 77777777777777777777777777777777 00 01026869 00 00",
            "010100000001 05737464696e 01808040 77777777777777777777777777777777 01 00 00 00",
            "030300",
        ];
        let want: Vec<String> = want.iter().map(|w| w.replace(' ', "")).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn frame_snapshots() {
        let mut out = Vec::new();
        Frame::Pake { version: 1, msg: [7; PAKE_LEN] }.encode(&mut out);
        assert_eq!(hex::encode(&out), format!("010001{}", "07".repeat(PAKE_LEN)));
        out.clear();
        Frame::Confirm([9; 32]).encode(&mut out);
        assert_eq!(hex::encode(&out), format!("02{}", "09".repeat(32)));
        out.clear();
        Frame::Sealed(vec![1, 2]).encode(&mut out);
        assert_eq!(hex::encode(&out), "030102");
        out.clear();
        Frame::Rejoin { version: 3, nonce: [5; 32] }.encode(&mut out);
        assert_eq!(hex::encode(&out), format!("040003{}", "05".repeat(32)));
        assert_eq!(Frame::decode(&out), Ok(Frame::Rejoin { version: 3, nonce: [5; 32] }));
        assert_eq!(Frame::decode(&out[..30]), Err(DecodeError::Truncated));
    }

    #[test]
    fn frame_errors() {
        assert_eq!(Frame::decode(&[]), Err(DecodeError::Truncated));
        assert_eq!(Frame::decode(&[0x09]), Err(DecodeError::UnknownType(9)));
        assert_eq!(Frame::decode(&[KIND_REJOIN; 36]), Err(DecodeError::TrailingBytes(1)));
        assert_eq!(Frame::decode(&[KIND_CONFIRM, 1]), Err(DecodeError::Truncated));
        assert_eq!(Frame::decode(&[KIND_CONFIRM; 34]), Err(DecodeError::TrailingBytes(1)));
    }

    #[test]
    fn control_rejects_trailing_bytes_bad_version_and_oversized_lists() {
        let mut out = Vec::new();
        Control::Accept(Accept {}).encode(&mut out);
        out.push(0);
        assert_eq!(Control::decode(&out), Err(DecodeError::TrailingBytes(1)));

        let Control::Hello(hello) = samples()[0].clone() else { unreachable!() };
        for (bad, want) in [
            (Hello { version: 9, ..hello.clone() }, DecodeError::Version(9)),
            (Hello { max_chunk: 0, ..hello.clone() }, DecodeError::Invalid("chunk limit")),
            (Hello { max_lanes: 0, ..hello.clone() }, DecodeError::Invalid("lane limit")),
        ] {
            out.clear();
            Control::Hello(bad).encode(&mut out);
            assert_eq!(Control::decode(&out), Err(want));
        }

        let offer = Control::Offer(Offer {
            files: 0,
            dirs: 0,
            symlinks: 0,
            bytes: 0,
            names: vec![Vec::new(); MAX_NAMES + 1],
            lanes: 1,
            chunk_size: 1,
            transfer_id: [0; 16],
            streams: 0,
            text: None,
            hardlinks: 0,
            xattrs: false,
        });
        out.clear();
        offer.encode(&mut out);
        assert!(matches!(Control::decode(&out), Err(DecodeError::TooLong { .. })));

        // A text offer holds nothing else, and its text has a cap; streams are files.
        let Control::Offer(base) = samples()[1].clone() else { unreachable!() };
        let text = |t: &str| Offer { text: Some(t.into()), ..base.clone() };
        for (bad, why) in [
            (text("hi"), DecodeError::Invalid("text offer with files")),
            (Offer { streams: 3, ..base.clone() }, DecodeError::Invalid("stream count")),
            // A stream beside other entries: a tree with no stall limit.
            (Offer { streams: 1, ..base.clone() }, DecodeError::Invalid("stream count")),
            (
                Offer { hardlinks: 1, names: vec![], files: 0, dirs: 0, bytes: 0, ..text("hi") },
                DecodeError::Invalid("text offer with files"),
            ),
            // Counts that would wrap to zero if added.
            (
                Offer { names: vec![], files: u64::MAX, dirs: 1, bytes: 0, ..text("hi") },
                DecodeError::Invalid("text offer with files"),
            ),
        ] {
            out.clear();
            Control::Offer(bad).encode(&mut out);
            assert_eq!(Control::decode(&out), Err(why));
        }
        let empty = Offer { files: 0, dirs: 0, bytes: 0, names: vec![], ..base };
        let long = Offer { text: Some("x".repeat(MAX_TEXT + 1)), ..empty.clone() };
        out.clear();
        Control::Offer(long).encode(&mut out);
        assert!(matches!(Control::decode(&out), Err(DecodeError::TooLong { what: "text", .. })));
        let fine = Control::Offer(Offer { text: Some("x".repeat(MAX_TEXT)), ..empty });
        out.clear();
        fine.encode(&mut out);
        assert_eq!(Control::decode(&out), Ok(fine));

        let listed = Listed { entry: dir_entry(), hash: None };
        for long in [
            Control::Listing(vec![listed; MAX_LISTING + 1]),
            Control::Answers(vec![Answer::Skip; MAX_LISTING + 1]),
        ] {
            out.clear();
            long.encode(&mut out);
            assert!(matches!(Control::decode(&out), Err(DecodeError::TooLong { .. })));
        }
        let mut bad = file_entry();
        bad.path = vec![b'x'; MAX_PATH + 1];
        out.clear();
        Control::Listing(vec![Listed { entry: bad, hash: None }]).encode(&mut out);
        assert!(matches!(Control::decode(&out), Err(DecodeError::TooLong { what: "path", .. })));
    }

    proptest! {
        #[test]
        fn control_round_trips(i in 0usize..11, names in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..5), n in any::<u64>()) {
            let mut m = samples()[i].clone();
            match &mut m {
                Control::Offer(o) => { o.names = names; o.bytes = n; }
                Control::Refuse(r) => r.names = names,
                Control::Finish(s) | Control::Complete(s) => s.bytes = n,
                Control::Answers(a) => a.push(Answer::Resume { offset: n, digest: [1; 32] }),
                _ => {}
            }
            let mut out = Vec::new();
            m.encode(&mut out);
            prop_assert_eq!(Control::decode(&out).unwrap(), m);
        }

        #[test]
        fn frame_round_trips(ct in proptest::collection::vec(any::<u8>(), 0..100), mac in any::<[u8; 32]>()) {
            for f in [Frame::Sealed(ct.clone()), Frame::Confirm(mac), Frame::Rejoin { version: 3, nonce: mac }] {
                let mut out = Vec::new();
                f.encode(&mut out);
                prop_assert_eq!(Frame::decode(&out).unwrap(), f);
            }
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Frame::decode(&bytes);
            let _ = Control::decode(&bytes);
        }
    }
}
