//! The client ↔ node messages and their framing. Pure; never panics on peer bytes.
//!
//! # Framing
//!
//! A client opens one QUIC bidirectional stream to the node. Each direction carries frames
//! `len: u32 BE ‖ body`, where `len` counts the body only and is at most [`MAX_FRAME`]. Read the
//! four header bytes, check them with [`frame_len`] (before allocating anything), read the body,
//! decode it with [`decode_client`] (node side) or [`decode_node`] (client side). [`encode`]
//! builds a whole frame.
//!
//! # Flow
//!
//! 1. Client: `Hello { version, proof }`. Node: `Welcome { version, observed }`, or `Error`
//!    (`Version` or `Unauthorized`) and the node closes the connection. `proof` proves the
//!    node's access token without sending it: an HMAC of the token over keying material
//!    exported from this connection's TLS session ([`crate::auth`]); `None` for an open node.
//! 2. Client: `Allocate` → `Allocated { nameplate }`, or `Claim { nameplate }` →
//!    `Claimed { nameplate, peer_present }`.
//! 3. When the second side claims, the first gets `PeerJoined`.
//! 4. Either side: `Send { body }`; the other side gets `Message { body }` (at once, or when it
//!    joins: the node queues a few messages for an absent peer).
//! 5. Either side, while both are there: `RelayTicket` → `RelayTicket { ticket }`, this side's
//!    ticket for the relay of this pairing (see below), or `Error` (`Protocol` without a
//!    partner, `Busy` when the relay is full).
//! 6. Either side: `Release` (or it disconnects); the other gets `PeerLeft` and the nameplate
//!    is closed for good.
//! 7. A side that serves several peers one after another (`send --count`) sends `Hold` while
//!    it holds the nameplate and gets `Held { key }`. Once that pairing has closed, the number
//!    cools down as usual, but `Reclaim { nameplate, key }` reopens it for the holder, as its
//!    first side; meanwhile a `Claim` of it gets `Error Serving` (try again shortly) instead
//!    of `NameplateClosed`. Every pairing is its own key exchange.
//!
//! Any request may instead be answered by `Error { code, message }`; see [`ErrorCode`].
//!
//! # Relays
//!
//! The node draws two random 64-bit tickets for each pairing of two sides on a nameplate, one
//! per side, and gives each side its own (step 5): only the two clients of that pairing can
//! use its relay. A client attaches with a further stream (a further TCP connection, for a
//! client on TCP) whose first frame is `Relay { version, proof, ticket }` (`proof` as in
//! `Hello`, for the connection this stream is on). The node answers
//! `Paired` once both tickets of the pairing are attached (or `Error { code: Expired }` if the
//! other never comes). Then:
//!
//! - **over QUIC**, the stream only holds the relay open: the client sends the peer's QUIC
//!   packets as UDP datagrams to the node's port, each `0x01 ‖ ticket: u64 BE ‖ packet`
//!   ([`DATAGRAM_HEADER`] bytes of header). The node checks that the ticket is attached and
//!   that the datagram comes from the address of the QUIC connection that attached it,
//!   writes the *other* side's ticket into the header and sends it on to that side, unchanged
//!   otherwise. A datagram with the header alone is a keep-alive and goes nowhere. The first
//!   byte lacks QUIC's fixed bit (0x40), so these datagrams share the node's port with QUIC.
//! - **over TCP**, the stream carries records `len: u32 BE ‖ stride: u16 BE ‖ packets` both
//!   ways: `packets` is one QUIC packet, or several of `stride` bytes each (the last may be
//!   shorter), at most 64 KiB; `len` counts stride and packets. An empty record
//!   (`len` = 2) is a keep-alive.
//!
//! The node translates between the two when one side is on QUIC and the other on TCP. It
//! never decrypts, seals or otherwise changes a packet: they are the peers' QUIC packets,
//! encrypted end to end. Closing the stream (or the connection) ends the relay for both
//! sides.
//!
//! # Body layout
//!
//! Bodies are [postcard]: integers are LEB128 varints (`u16`, `u32`), `bool` and `u8` are one
//! byte, a string or byte vector is `varint len ‖ bytes`, a `[u8; 32]` is its 32 bytes (no
//! length), an `Option` is `00` or `01 ‖ value`,
//! an enum is `varint variant index ‖ fields in order`. A [`SocketAddr`] is `00 ‖ 4 address
//! bytes ‖ varint port` (IPv4) or `01 ‖ 16 address bytes ‖ varint port` (IPv6; flow info and
//! scope id are not sent).
//!
//! | index | [`ClientMsg`] | fields                                   |
//! |-------|---------------|------------------------------------------|
//! | 0     | `Hello`       | `version: u16`, `proof: Option<[u8; 32]>` |
//! | 1     | `Allocate`    | —                                        |
//! | 2     | `Claim`       | `nameplate: u32`                         |
//! | 3     | `Send`        | `body: bytes` (≤ [`MAX_BODY`])           |
//! | 4     | `Release`     | —                                        |
//! | 5     | `Relay`       | `version: u16`, `proof: Option<[u8; 32]>`, `ticket: u64` |
//! | 6     | `RelayTicket` | —                                        |
//! | 7     | `Hold`        | —                                        |
//! | 8     | `Reclaim`     | `nameplate: u32`, `key: [u8; 16]`        |
//!
//! | index | [`NodeMsg`]   | fields                                         |
//! |-------|---------------|------------------------------------------------|
//! | 0     | `Welcome`     | `version: u16`, `observed: SocketAddr`         |
//! | 1     | `Allocated`   | `nameplate: u32`                               |
//! | 2     | `Claimed`     | `nameplate: u32`, `peer_present: bool`         |
//! | 3     | `PeerJoined`  | —                                              |
//! | 4     | `Message`     | `body: bytes` (≤ [`MAX_BODY`])                 |
//! | 5     | `PeerLeft`    | —                                              |
//! | 6     | `Error`       | `code: ErrorCode`, `message: String` (≤ [`MAX_TEXT`]) |
//! | 7     | `Paired`      | —                                              |
//! | 8     | `RelayTicket` | `ticket: u64`                                  |
//! | 9     | `Held`        | `key: [u8; 16]`                                |
//!
//! [`ErrorCode`] indexes: 0 `Version`, 1 `Unauthorized`, 2 `NoSuchNameplate`, 3
//! `NameplateFull`, 4 `NameplateClosed`, 5 `RateLimited`, 6 `Busy`, 7 `Protocol`, 8 `Expired`,
//! 9 `ShuttingDown`, 10 `Serving`.
//!
//! New variants and codes are only ever appended. `Hello` stays variant 0 with `version` first
//! in every protocol version, so a node can always read a client's version and answer a
//! mismatch with `Error { code: Version }` (decoding does not reject other versions; the
//! table does). The snapshot tests pin these bytes.
//!
//! [postcard]: https://postcard.jamesmunns.com/wire-format

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The rendezvous protocol version this build speaks.
pub const VERSION: u16 = 3;
/// Nameplates with this bit set are for peers rejoining a transfer they already share a key
/// for: never allocated, and claimable again as soon as they close (no code is guessed there,
/// so there is nothing to cool down for).
pub const REJOIN_NAMEPLATES: u32 = 1 << 31;
/// Cap on a frame body, either direction.
pub const MAX_FRAME: usize = 16 * 1024;
/// Cap on one mailbox message (`Send` / `Message` body).
pub const MAX_BODY: usize = 8 * 1024;
/// Cap on the node's access token, in bytes (it never crosses the wire: see
/// [`crate::auth`]).
pub const MAX_TOKEN: usize = 256;
/// Cap on the text of an `Error`, in bytes.
pub const MAX_TEXT: usize = 512;
/// Length of the frame header.
pub const HEADER_LEN: usize = 4;

/// A message from a client to the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMsg {
    /// First message: protocol version and the proof of the access token if the node
    /// requires one.
    Hello {
        /// The client's protocol version ([`VERSION`]).
        version: u16,
        /// [`crate::auth::proof`] of the node's access token on this connection (ignored by
        /// an open node).
        proof: Option<[u8; 32]>,
    },
    /// Give me a fresh nameplate (I am its first side).
    Allocate,
    /// Join this nameplate (creating it if nobody holds it: a pre-shared code).
    Claim {
        /// The nameplate number (the number in front of the code).
        nameplate: u32,
    },
    /// Pass this opaque message to the other side (queued until it joins).
    Send {
        /// The message, at most [`MAX_BODY`] bytes.
        body: Vec<u8>,
    },
    /// I am done with my nameplate.
    Release,
    /// First (and only) message of a relay stream: attach me to the relay of this ticket.
    /// Answered by `Paired` once the other side's ticket is attached too, or `Error`. After
    /// `Paired`, a QUIC client's stream stays silent (packets go as datagrams); a TCP
    /// client's carries relay records (see the module documentation).
    Relay {
        /// The client's protocol version ([`VERSION`]).
        version: u16,
        /// [`crate::auth::proof`] of the node's access token on the connection this stream
        /// is on (ignored by an open node).
        proof: Option<[u8; 32]>,
        /// This side's ticket, from `RelayTicket`.
        ticket: u64,
    },
    /// Give me my ticket for the relay of my nameplate's pairing (both sides must be there).
    RelayTicket,
    /// I serve several peers on my nameplate, one after another (`send --count`): give me
    /// its holder key, with which I may reopen it once this pairing has closed.
    Hold,
    /// Reopen this nameplate, which I hold (its number is cooling down after my last
    /// pairing), and make me its first side again; answered like a `Claim` that created it.
    Reclaim {
        /// The nameplate number.
        nameplate: u32,
        /// The holder key from `Held`.
        key: [u8; 16],
    },
}

/// A message from the node to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeMsg {
    /// Answer to Hello: the address the node sees this connection come from.
    Welcome {
        /// The node's protocol version.
        version: u16,
        /// The client's address as the node sees it (its NAT mapping).
        observed: SocketAddr,
    },
    /// Answer to Allocate: the client now holds this nameplate, alone.
    Allocated {
        /// The fresh nameplate number.
        nameplate: u32,
    },
    /// Joined; `peer_present` tells whether the other side is already there.
    Claimed {
        /// The claimed nameplate.
        nameplate: u32,
        /// The other side is already there (this client is the second side).
        peer_present: bool,
    },
    /// The other side joined.
    PeerJoined,
    /// A message from the other side.
    Message {
        /// The message, at most [`MAX_BODY`] bytes.
        body: Vec<u8>,
    },
    /// The other side left; the nameplate is closed for good.
    PeerLeft,
    /// The request failed (the connection stays usable unless the code says otherwise).
    Error {
        /// What failed.
        code: ErrorCode,
        /// A sentence for the person, at most [`MAX_TEXT`] bytes.
        message: String,
    },
    /// Answer to `Relay`: the other side attached too; the relay carries packets from now on.
    Paired,
    /// Answer to `RelayTicket`: this side's ticket for the relay of its pairing.
    RelayTicket {
        /// Random; presented in `Relay` and in every relay datagram.
        ticket: u64,
    },
    /// Answer to `Hold`: the key that reopens the nameplate (`Reclaim`) while its number cools
    /// down after a pairing.
    Held {
        /// Random; only the holder learns it.
        key: [u8; 16],
    },
}

/// First byte of a relay datagram (QUIC packets have 0x40 set; probes between peers are 0x00).
pub const DATAGRAM_KIND: u8 = 0x01;
/// Length of a relay datagram's header: the kind byte and the ticket.
pub const DATAGRAM_HEADER: usize = 9;

/// Writes the header of a relay datagram for `ticket` into the first [`DATAGRAM_HEADER`] bytes
/// of `segment`.
pub fn put_datagram_header(segment: &mut [u8], ticket: u64) {
    segment[0] = DATAGRAM_KIND;
    segment[1..DATAGRAM_HEADER].copy_from_slice(&ticket.to_be_bytes());
}

/// The ticket of a relay datagram, or `None` when `segment` is not one (too short, or another
/// kind).
pub fn datagram_ticket(segment: &[u8]) -> Option<u64> {
    let header = segment.first_chunk::<DATAGRAM_HEADER>()?;
    if header[0] != DATAGRAM_KIND {
        return None;
    }
    let mut ticket = [0; 8];
    ticket.copy_from_slice(&header[1..]);
    Some(u64::from_be_bytes(ticket))
}

/// Why the node refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The client speaks another protocol version. The node closes the connection.
    Version,
    /// The access token is missing or wrong. The node closes the connection.
    Unauthorized,
    /// The nameplate number cannot exist (0).
    NoSuchNameplate,
    /// The nameplate already has two sides.
    NameplateFull,
    /// The nameplate was used (or expired) and is closed; it is not reopened.
    NameplateClosed,
    /// Too many claims from this source address; wait and retry.
    RateLimited,
    /// The node (or the mailbox) is full; retry later.
    Busy,
    /// The request is not allowed now (e.g. a second nameplate, Send without one). Before
    /// `Hello`, the node closes the connection.
    Protocol,
    /// The nameplate saw no activity for too long and was closed.
    Expired,
    /// The node is shutting down and takes no new nameplates.
    ShuttingDown,
    /// The nameplate's holder serves peers one after another (`Hold`) and is busy with one
    /// now: claim again in a moment.
    Serving,
}

/// Why bytes from the other end could not be decoded. Every variant is the peer's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The input ended in the middle of a field.
    #[error("rendezvous message truncated")]
    Truncated,
    /// Bytes were left over after a complete message.
    #[error("{0} unexpected bytes after the rendezvous message")]
    TrailingBytes(usize),
    /// A length over the cap for its field.
    #[error("rendezvous {what} too long: {len} > {max}")]
    TooLong {
        /// Which field.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// Bytes that are not a message (unknown variant, bad UTF-8, overlong varint, …).
    #[error("invalid rendezvous message")]
    Invalid,
}

/// A message type of this protocol: [`ClientMsg`] or [`NodeMsg`].
///
/// Sealed: [`encode`] relies on every implementor serialising without error.
pub trait WireMsg: Serialize + sealed::Sealed {}
impl WireMsg for ClientMsg {}
impl WireMsg for NodeMsg {}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::ClientMsg {}
    impl Sealed for super::NodeMsg {}
}

/// Encodes a whole frame: length prefix and body.
///
/// Does not check the caps: the other end rejects a message over them, so a client checks
/// with [`ClientMsg::validate`] (or simply `body.len() <= MAX_BODY`) first.
pub fn encode<T: WireMsg>(msg: &T) -> Vec<u8> {
    let mut out = vec![0; HEADER_LEN];
    // Invariant: postcard only fails on writer errors or serde features our two types do not
    // use (maps, sequences of unknown length); extending a Vec never fails.
    #[allow(clippy::expect_used)]
    let mut out = postcard::to_extend(msg, std::mem::take(&mut out)).expect("postcard into a Vec");
    // A body over 4 GiB cannot be built from capped fields; saturate rather than wrap, the
    // other end rejects it either way.
    let len = u32::try_from(out.len() - HEADER_LEN).unwrap_or(u32::MAX);
    out[..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    out
}

/// Reads a body length from a frame header, checking it against [`MAX_FRAME`].
pub fn frame_len(header: [u8; HEADER_LEN]) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(header) as usize;
    cap("frame", len, MAX_FRAME)?;
    Ok(len)
}

/// Decodes a frame body from a client: exactly one message, within every cap.
pub fn decode_client(body: &[u8]) -> Result<ClientMsg, WireError> {
    let msg: ClientMsg = from_postcard(body)?;
    msg.validate()?;
    Ok(msg)
}

/// Decodes a frame body from the node: exactly one message, within every cap.
pub fn decode_node(body: &[u8]) -> Result<NodeMsg, WireError> {
    let msg: NodeMsg = from_postcard(body)?;
    msg.validate()?;
    Ok(msg)
}

impl ClientMsg {
    /// Checks the caps ([`MAX_BODY`]). Called by [`decode_client`].
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            ClientMsg::Send { body } => cap("message body", body.len(), MAX_BODY),
            _ => Ok(()),
        }
    }
}

impl NodeMsg {
    /// Checks the caps ([`MAX_BODY`], [`MAX_TEXT`]). Called by [`decode_node`].
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            NodeMsg::Message { body } => cap("message body", body.len(), MAX_BODY),
            NodeMsg::Error { message, .. } => cap("error text", message.len(), MAX_TEXT),
            _ => Ok(()),
        }
    }
}

fn cap(what: &'static str, len: usize, max: usize) -> Result<(), WireError> {
    if len > max {
        return Err(WireError::TooLong { what, len, max });
    }
    Ok(())
}

/// Decodes exactly `body` (at most [`MAX_FRAME`] bytes), rejecting trailing data.
fn from_postcard<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, WireError> {
    cap("frame", body.len(), MAX_FRAME)?;
    let (value, rest) = postcard::take_from_bytes(body).map_err(|e| match e {
        postcard::Error::DeserializeUnexpectedEnd => WireError::Truncated,
        _ => WireError::Invalid,
    })?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};

    const CODES: [ErrorCode; 11] = [
        ErrorCode::Version,
        ErrorCode::Unauthorized,
        ErrorCode::NoSuchNameplate,
        ErrorCode::NameplateFull,
        ErrorCode::NameplateClosed,
        ErrorCode::RateLimited,
        ErrorCode::Busy,
        ErrorCode::Protocol,
        ErrorCode::Expired,
        ErrorCode::ShuttingDown,
        ErrorCode::Serving,
    ];

    fn body_hex<T: WireMsg>(msg: &T) -> String {
        let frame = encode(msg);
        let len = frame_len([frame[0], frame[1], frame[2], frame[3]]).unwrap();
        assert_eq!(len, frame.len() - HEADER_LEN);
        hex::encode(&frame[HEADER_LEN..])
    }

    #[test]
    fn client_snapshots() {
        const PROOF: [u8; 32] = [
            0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23,
            24, 25, 26, 27, 28, 29, 30, 31,
        ];
        let cases = [
            (ClientMsg::Hello { version: VERSION, proof: None }, "000300"),
            (
                ClientMsg::Hello { version: 300, proof: Some(PROOF) },
                "00ac0201000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
            ),
            (ClientMsg::Allocate, "01"),
            (ClientMsg::Claim { nameplate: 7 }, "0207"),
            (ClientMsg::Claim { nameplate: u32::MAX }, "02ffffffff0f"),
            (ClientMsg::Send { body: vec![0xde, 0xad] }, "0302dead"),
            (ClientMsg::Release, "04"),
            (ClientMsg::Relay { version: VERSION, proof: None, ticket: 0x0102 }, "0503008202"),
            (
                ClientMsg::Relay { version: VERSION, proof: Some(PROOF), ticket: 1 },
                "050301000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f01",
            ),
            (ClientMsg::RelayTicket, "06"),
            (ClientMsg::Hold, "07"),
            (
                ClientMsg::Reclaim { nameplate: 7, key: [0xab; 16] },
                "0807abababababababababababababababab",
            ),
        ];
        for (msg, want) in cases {
            assert_eq!(body_hex(&msg), want, "{msg:?}");
            assert_eq!(decode_client(&hex::decode(want).unwrap()), Ok(msg));
        }
    }

    #[test]
    fn node_snapshots() {
        let v4 = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 443));
        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, 1));
        let cases = [
            (NodeMsg::Welcome { version: VERSION, observed: v4 }, "000300c0000201bb03"),
            (
                NodeMsg::Welcome { version: VERSION, observed: v6 },
                "0003010000000000000000000000000000000101",
            ),
            (NodeMsg::Allocated { nameplate: 1000 }, "01e807"),
            (NodeMsg::Claimed { nameplate: 7, peer_present: true }, "020701"),
            (NodeMsg::Claimed { nameplate: 7, peer_present: false }, "020700"),
            (NodeMsg::PeerJoined, "03"),
            (NodeMsg::Message { body: vec![1, 2, 3] }, "0403010203"),
            (NodeMsg::PeerLeft, "05"),
            (NodeMsg::Paired, "07"),
            (NodeMsg::RelayTicket { ticket: u64::MAX }, "08ffffffffffffffffff01"),
            (NodeMsg::Held { key: [0xcd; 16] }, "09cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd"),
            (NodeMsg::Error { code: ErrorCode::Busy, message: "full".into() }, "06060466756c6c"),
        ];
        for (msg, want) in cases {
            assert_eq!(body_hex(&msg), want, "{msg:?}");
            assert_eq!(decode_node(&hex::decode(want).unwrap()), Ok(msg));
        }
    }

    #[test]
    fn error_code_snapshots() {
        for (i, code) in CODES.into_iter().enumerate() {
            let msg = NodeMsg::Error { code, message: String::new() };
            assert_eq!(body_hex(&msg), format!("06{i:02x}00"));
        }
    }

    #[test]
    fn datagram_header_snapshot() {
        let mut segment = [0u8; DATAGRAM_HEADER + 2];
        put_datagram_header(&mut segment, 0x0102_0304_0506_0708);
        segment[DATAGRAM_HEADER..].copy_from_slice(&[0x4f, 0x00]);
        assert_eq!(hex::encode(segment), "0101020304050607084f00");
        assert_eq!(datagram_ticket(&segment), Some(0x0102_0304_0506_0708));
        assert_eq!(datagram_ticket(&segment[..DATAGRAM_HEADER]), Some(0x0102_0304_0506_0708));
        assert_eq!(datagram_ticket(&segment[..DATAGRAM_HEADER - 1]), None);
        segment[0] = 0x41;
        assert_eq!(datagram_ticket(&segment), None, "a QUIC packet is not a relay datagram");
    }

    #[test]
    fn frame_header() {
        assert_eq!(hex::encode(encode(&ClientMsg::Allocate)), "0000000101");
        assert_eq!(frame_len([0, 0, 0x40, 0]), Ok(MAX_FRAME));
        assert_eq!(
            frame_len([0, 0, 0x40, 1]),
            Err(WireError::TooLong { what: "frame", len: MAX_FRAME + 1, max: MAX_FRAME })
        );
        assert!(frame_len([0xff; 4]).is_err());
    }

    #[test]
    fn decode_errors() {
        assert_eq!(decode_client(&[]), Err(WireError::Truncated));
        assert_eq!(decode_node(&[]), Err(WireError::Truncated));
        assert_eq!(decode_client(&[0x09]), Err(WireError::Invalid));
        assert_eq!(decode_node(&[0x0a]), Err(WireError::Invalid));
        assert_eq!(decode_node(&[0x06, 0x0b, 0x00]), Err(WireError::Invalid));
        assert_eq!(decode_client(&[0x01, 0x00]), Err(WireError::TrailingBytes(1)));
        assert_eq!(decode_node(&[0x05, 0x00, 0x00]), Err(WireError::TrailingBytes(2)));
        assert_eq!(decode_client(&[0x03, 0x05, 1, 2]), Err(WireError::Truncated));
        // A proof shorter than 32 bytes; an Option tag that is neither 0 nor 1.
        assert_eq!(decode_client(&[0x00, 0x01, 0x01, 0x01, 0xff]), Err(WireError::Truncated));
        assert_eq!(decode_client(&[0x00, 0x01, 0x02]), Err(WireError::Invalid));
        // Invalid UTF-8 in an error text.
        assert_eq!(decode_node(&[0x06, 0x00, 0x01, 0xff]), Err(WireError::Invalid));
        // A bool that is neither 0 nor 1.
        assert_eq!(decode_node(&[0x02, 0x07, 0x02]), Err(WireError::Invalid));
        let big = vec![0x04; MAX_FRAME + 1];
        assert!(matches!(decode_client(&big), Err(WireError::TooLong { what: "frame", .. })));
        assert!(matches!(decode_node(&big), Err(WireError::TooLong { what: "frame", .. })));
    }

    fn body_of<T: WireMsg>(msg: &T) -> Vec<u8> {
        encode(msg)[HEADER_LEN..].to_vec()
    }

    #[test]
    fn caps_enforced() {
        let too_long = |what, len, max| WireError::TooLong { what, len, max };

        assert!(decode_client(&body_of(&ClientMsg::Send { body: vec![0; MAX_BODY] })).is_ok());
        let big = body_of(&ClientMsg::Send { body: vec![0; MAX_BODY + 1] });
        assert_eq!(decode_client(&big), Err(too_long("message body", MAX_BODY + 1, MAX_BODY)));

        assert!(decode_node(&body_of(&NodeMsg::Message { body: vec![0; MAX_BODY] })).is_ok());
        let big = body_of(&NodeMsg::Message { body: vec![0; MAX_BODY + 1] });
        assert_eq!(decode_node(&big), Err(too_long("message body", MAX_BODY + 1, MAX_BODY)));

        let text = |n| NodeMsg::Error { code: ErrorCode::Protocol, message: "x".repeat(n) };
        assert!(decode_node(&body_of(&text(MAX_TEXT))).is_ok());
        assert_eq!(
            decode_node(&body_of(&text(MAX_TEXT + 1))),
            Err(too_long("error text", MAX_TEXT + 1, MAX_TEXT))
        );

        // The largest valid messages fit a frame.
        assert!(body_of(&ClientMsg::Send { body: vec![0; MAX_BODY] }).len() <= MAX_FRAME);
        assert!(body_of(&text(MAX_TEXT)).len() <= MAX_FRAME);
    }

    fn client_msg() -> impl Strategy<Value = ClientMsg> {
        prop_oneof![
            (any::<u16>(), proptest::option::of(any::<[u8; 32]>()))
                .prop_map(|(version, proof)| ClientMsg::Hello { version, proof }),
            Just(ClientMsg::Allocate),
            any::<u32>().prop_map(|nameplate| ClientMsg::Claim { nameplate }),
            proptest::collection::vec(any::<u8>(), 0..300)
                .prop_map(|body| ClientMsg::Send { body }),
            Just(ClientMsg::Release),
            (any::<u16>(), proptest::option::of(any::<[u8; 32]>()), any::<u64>())
                .prop_map(|(version, proof, ticket)| ClientMsg::Relay { version, proof, ticket }),
            Just(ClientMsg::RelayTicket),
            Just(ClientMsg::Hold),
            (any::<u32>(), any::<[u8; 16]>())
                .prop_map(|(nameplate, key)| ClientMsg::Reclaim { nameplate, key }),
        ]
    }

    fn socket_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
            // Flow info and scope id do not cross the wire.
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| v6(ip, port)),
        ]
    }

    fn v6(ip: [u8; 16], port: u16) -> SocketAddr {
        SocketAddrV6::new(ip.into(), port, 0, 0).into()
    }

    fn node_msg() -> impl Strategy<Value = NodeMsg> {
        prop_oneof![
            (any::<u16>(), socket_addr())
                .prop_map(|(version, observed)| NodeMsg::Welcome { version, observed }),
            any::<u32>().prop_map(|nameplate| NodeMsg::Allocated { nameplate }),
            (any::<u32>(), any::<bool>()).prop_map(|(nameplate, peer_present)| {
                NodeMsg::Claimed { nameplate, peer_present }
            }),
            Just(NodeMsg::PeerJoined),
            proptest::collection::vec(any::<u8>(), 0..300)
                .prop_map(|body| NodeMsg::Message { body }),
            Just(NodeMsg::PeerLeft),
            Just(NodeMsg::Paired),
            any::<u64>().prop_map(|ticket| NodeMsg::RelayTicket { ticket }),
            any::<[u8; 16]>().prop_map(|key| NodeMsg::Held { key }),
            (0..CODES.len(), ".{0,60}")
                .prop_map(|(i, message)| NodeMsg::Error { code: CODES[i], message }),
        ]
    }

    proptest! {
        #[test]
        fn client_round_trips(msg in client_msg()) {
            let frame = encode(&msg);
            let len = frame_len([frame[0], frame[1], frame[2], frame[3]]).unwrap();
            prop_assert_eq!(len, frame.len() - HEADER_LEN);
            prop_assert_eq!(decode_client(&frame[HEADER_LEN..]).unwrap(), msg);
        }

        #[test]
        fn node_round_trips(msg in node_msg()) {
            let frame = encode(&msg);
            let len = frame_len([frame[0], frame[1], frame[2], frame[3]]).unwrap();
            prop_assert_eq!(len, frame.len() - HEADER_LEN);
            prop_assert_eq!(decode_node(&frame[HEADER_LEN..]).unwrap(), msg);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode_client(&bytes);
            let _ = decode_node(&bytes);
            let _ = datagram_ticket(&bytes);
            if let Some(header) = bytes.first_chunk::<4>() {
                let _ = frame_len(*header);
            }
        }

        #[test]
        fn truncations_never_panic(msg in node_msg(), cut in any::<prop::sample::Index>()) {
            let frame = encode(&msg);
            let body = &frame[HEADER_LEN..];
            let cut = cut.index(body.len());
            prop_assert!(decode_node(&body[..cut]).is_err());
        }
    }
}
