//! LAN discovery datagrams: the receiver asks the local network who offers a nameplate, the
//! sender answers with the UDP port its QUIC endpoint listens on.
//!
//! These datagrams travel in the clear over multicast and carry nothing secret: only the public
//! nameplate (the `7` of `7-orbit-velvet-canyon`), random identifiers and a port number. The code
//! words and every key stay out of them; the PAKE that follows authenticates the peer.
//!
//! # Byte layout
//!
//! Every datagram starts with the same six-byte header; all integers are big-endian.
//!
//! ```text
//! offset size field
//!      0    4 magic      "P2PC" (50 32 50 43)
//!      4    1 version    1
//!      5    1 type       1 = Query, 2 = Announce, 3 = Busy
//! ```
//!
//! `Query` (type 1, 18 bytes), receiver → multicast group:
//!
//! ```text
//!      6    4 nameplate  u32
//!     10    8 query_id   u64, random per querier (one lookup); echoed in the answer
//! ```
//!
//! `Announce` (type 2, 28 bytes), sender → group (periodically) and → querier (unicast reply):
//!
//! ```text
//!      6    4 nameplate  u32
//!     10    8 instance   u64, random per sender; two instances on one nameplate = ambiguous
//!     18    2 port       u16, UDP port of the sender's QUIC endpoint
//!     20    8 query_id   u64, the query answered, 0 when unsolicited
//! ```
//!
//! `Busy` (type 3, 27 bytes), sender → querier (unicast reply) and group, while it serves a
//! receiver: the nameplate is taken, so a second receiver is told so instead of timing out:
//!
//! ```text
//!      6    4 nameplate  u32
//!     10    8 instance   u64
//!     18    8 query_id   u64, the query answered
//!     26    1 again      0 or 1: 1 when the sender serves another receiver after this one
//! ```
//!
//! The decoder rejects anything longer than [`MAX_DATAGRAM`], a wrong magic, another version,
//! an unknown type, a short datagram and trailing bytes, each with its own
//! [`DiscoveryDecodeError`]. It never panics, whatever the input.

/// First four bytes of every discovery datagram.
pub const MAGIC: [u8; 4] = *b"P2PC";
/// The only version this codec speaks.
pub const VERSION: u8 = 1;
/// Upper bound on a discovery datagram; the decoder rejects larger input.
pub const MAX_DATAGRAM: usize = 512;

/// Length of magic + version + type.
const HEADER_LEN: usize = MAGIC.len() + 2;
const TYPE_QUERY: u8 = 1;
const TYPE_ANNOUNCE: u8 = 2;
const TYPE_BUSY: u8 = 3;

/// One LAN discovery datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryMsg {
    /// Receiver → group: who offers this nameplate?
    Query {
        /// The public nameplate being looked for.
        nameplate: u32,
        /// Random per querier (one lookup), echoed by the answer.
        query_id: u64,
    },
    /// Sender → group (periodically) and → querier (unicast reply): I offer this nameplate, my
    /// QUIC endpoint listens on `port`.
    Announce {
        /// The public nameplate offered.
        nameplate: u32,
        /// Random per sender; distinguishes two senders that use the same nameplate.
        instance: u64,
        /// UDP port of the sender's QUIC endpoint.
        port: u16,
        /// The query this answers, 0 when unsolicited.
        query_id: u64,
    },
    /// Sender → querier and group: I offer this nameplate but already serve a receiver.
    Busy {
        /// The public nameplate, taken.
        nameplate: u32,
        /// The sender's instance.
        instance: u64,
        /// The query this answers.
        query_id: u64,
        /// The sender serves another receiver after this one (`send --count`): wait for it.
        again: bool,
    },
}

/// Why a datagram is not a valid discovery message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryDecodeError {
    /// Not a p2p-copy discovery datagram at all.
    #[error("not a p2p-copy discovery datagram (bad magic)")]
    BadMagic,
    /// A p2p-copy datagram of a version this build does not speak.
    #[error(
        "discovery datagram has unsupported version {0} (this build speaks version {VERSION})"
    )]
    UnsupportedVersion(u8),
    /// A message type this version does not define.
    #[error("discovery datagram has unknown type {0}")]
    UnknownType(u8),
    /// The datagram ends before the message does.
    #[error("discovery datagram is truncated")]
    Truncated,
    /// Bytes follow the end of the message.
    #[error("discovery datagram has trailing bytes")]
    TrailingBytes,
    /// Longer than [`MAX_DATAGRAM`].
    #[error("discovery datagram is longer than {MAX_DATAGRAM} bytes")]
    TooLong,
    /// A flag byte other than 0 or 1.
    #[error("discovery datagram has a flag of {0}, not 0 or 1")]
    BadFlag(u8),
}

impl DiscoveryMsg {
    /// The exact bytes of this message, as laid out in the module documentation.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + 22);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        match *self {
            DiscoveryMsg::Query { nameplate, query_id } => {
                out.push(TYPE_QUERY);
                out.extend_from_slice(&nameplate.to_be_bytes());
                out.extend_from_slice(&query_id.to_be_bytes());
            }
            DiscoveryMsg::Announce { nameplate, instance, port, query_id } => {
                out.push(TYPE_ANNOUNCE);
                out.extend_from_slice(&nameplate.to_be_bytes());
                out.extend_from_slice(&instance.to_be_bytes());
                out.extend_from_slice(&port.to_be_bytes());
                out.extend_from_slice(&query_id.to_be_bytes());
            }
            DiscoveryMsg::Busy { nameplate, instance, query_id, again } => {
                out.push(TYPE_BUSY);
                out.extend_from_slice(&nameplate.to_be_bytes());
                out.extend_from_slice(&instance.to_be_bytes());
                out.extend_from_slice(&query_id.to_be_bytes());
                out.push(u8::from(again));
            }
        }
        out
    }

    /// Parses one datagram. Never panics; rejects trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<DiscoveryMsg, DiscoveryDecodeError> {
        if bytes.len() > MAX_DATAGRAM {
            return Err(DiscoveryDecodeError::TooLong);
        }
        let mut r = Reader(bytes);
        let magic = r.array::<4>().map_err(|_| {
            // A prefix of the magic is a cut-off datagram; anything else is foreign.
            if MAGIC.starts_with(bytes) {
                DiscoveryDecodeError::Truncated
            } else {
                DiscoveryDecodeError::BadMagic
            }
        })?;
        if magic != MAGIC {
            return Err(DiscoveryDecodeError::BadMagic);
        }
        let version = r.u8()?;
        if version != VERSION {
            return Err(DiscoveryDecodeError::UnsupportedVersion(version));
        }
        let msg = match r.u8()? {
            TYPE_QUERY => DiscoveryMsg::Query { nameplate: r.u32()?, query_id: r.u64()? },
            TYPE_ANNOUNCE => DiscoveryMsg::Announce {
                nameplate: r.u32()?,
                instance: r.u64()?,
                port: r.u16()?,
                query_id: r.u64()?,
            },
            TYPE_BUSY => DiscoveryMsg::Busy {
                nameplate: r.u32()?,
                instance: r.u64()?,
                query_id: r.u64()?,
                again: match r.u8()? {
                    0 => false,
                    1 => true,
                    other => return Err(DiscoveryDecodeError::BadFlag(other)),
                },
            },
            other => return Err(DiscoveryDecodeError::UnknownType(other)),
        };
        if !r.0.is_empty() {
            return Err(DiscoveryDecodeError::TrailingBytes);
        }
        Ok(msg)
    }
}

/// A cursor over the datagram; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DiscoveryDecodeError> {
        let (head, rest) =
            self.0.split_first_chunk::<N>().ok_or(DiscoveryDecodeError::Truncated)?;
        self.0 = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, DiscoveryDecodeError> {
        self.array::<1>().map(|[b]| b)
    }

    fn u16(&mut self) -> Result<u16, DiscoveryDecodeError> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, DiscoveryDecodeError> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, DiscoveryDecodeError> {
        self.array().map(u64::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn query() -> DiscoveryMsg {
        DiscoveryMsg::Query { nameplate: 7, query_id: 0x0102_0304_0506_0708 }
    }

    fn announce() -> DiscoveryMsg {
        DiscoveryMsg::Announce {
            nameplate: 7,
            instance: 0x1122_3344_5566_7788,
            port: 41641,
            query_id: 0x0102_0304_0506_0708,
        }
    }

    #[test]
    fn query_snapshot() {
        let bytes = query().encode();
        assert_eq!(
            hex::encode(&bytes),
            concat!("50325043", "01", "01", "00000007", "0102030405060708")
        );
        assert_eq!(bytes.len(), 18);
        assert_eq!(DiscoveryMsg::decode(&bytes), Ok(query()));
    }

    #[test]
    fn announce_snapshot() {
        let bytes = announce().encode();
        assert_eq!(
            hex::encode(&bytes),
            concat!(
                "50325043",
                "01",
                "02",
                "00000007",
                "1122334455667788",
                "a2a9",
                "0102030405060708"
            )
        );
        assert_eq!(bytes.len(), 28);
        assert_eq!(DiscoveryMsg::decode(&bytes), Ok(announce()));
    }

    #[test]
    fn busy_snapshot() {
        let busy = DiscoveryMsg::Busy {
            nameplate: 7,
            instance: 0x1122_3344_5566_7788,
            query_id: 9,
            again: true,
        };
        let bytes = busy.encode();
        assert_eq!(
            hex::encode(&bytes),
            concat!(
                "50325043",
                "01",
                "03",
                "00000007",
                "1122334455667788",
                "0000000000000009",
                "01"
            )
        );
        assert_eq!(bytes.len(), 27);
        let mut bad = bytes.clone();
        bad[26] = 2;
        assert_eq!(DiscoveryMsg::decode(&bad), Err(DiscoveryDecodeError::BadFlag(2)));
        assert_eq!(DiscoveryMsg::decode(&bytes), Ok(busy));
    }

    #[test]
    fn typed_errors() {
        use DiscoveryDecodeError::*;
        let good = announce().encode();
        let with = |i: usize, b: u8| {
            let mut v = good.clone();
            v[i] = b;
            DiscoveryMsg::decode(&v)
        };
        assert_eq!(DiscoveryMsg::decode(b""), Err(Truncated));
        assert_eq!(DiscoveryMsg::decode(b"P2"), Err(Truncated));
        assert_eq!(DiscoveryMsg::decode(b"GE"), Err(BadMagic));
        assert_eq!(DiscoveryMsg::decode(b"GET / HTTP/1.1"), Err(BadMagic));
        assert_eq!(with(0, b'X'), Err(BadMagic));
        assert_eq!(with(4, 2), Err(UnsupportedVersion(2)));
        assert_eq!(with(5, 9), Err(UnknownType(9)));
        assert_eq!(DiscoveryMsg::decode(&good[..HEADER_LEN]), Err(Truncated));
        assert_eq!(DiscoveryMsg::decode(&good[..good.len() - 1]), Err(Truncated));
        let mut long = good.clone();
        long.push(0);
        assert_eq!(DiscoveryMsg::decode(&long), Err(TrailingBytes));
        long.resize(MAX_DATAGRAM + 1, 0);
        assert_eq!(DiscoveryMsg::decode(&long), Err(TooLong));
    }

    fn any_msg() -> impl Strategy<Value = DiscoveryMsg> {
        prop_oneof![
            (any::<u32>(), any::<u64>())
                .prop_map(|(nameplate, query_id)| DiscoveryMsg::Query { nameplate, query_id }),
            (any::<u32>(), any::<u64>(), any::<u16>(), any::<u64>()).prop_map(
                |(nameplate, instance, port, query_id)| DiscoveryMsg::Announce {
                    nameplate,
                    instance,
                    port,
                    query_id
                }
            ),
            (any::<u32>(), any::<u64>(), any::<u64>(), any::<bool>()).prop_map(
                |(nameplate, instance, query_id, again)| DiscoveryMsg::Busy {
                    nameplate,
                    instance,
                    query_id,
                    again
                }
            ),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(msg in any_msg()) {
            let bytes = msg.encode();
            prop_assert!(bytes.len() <= MAX_DATAGRAM);
            prop_assert_eq!(DiscoveryMsg::decode(&bytes), Ok(msg));
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = DiscoveryMsg::decode(&bytes);
        }

        #[test]
        fn valid_header_random_body_never_panics(
            ty in 0u8..5,
            body in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let mut bytes = MAGIC.to_vec();
            bytes.push(VERSION);
            bytes.push(ty);
            bytes.extend_from_slice(&body);
            if let Ok(msg) = DiscoveryMsg::decode(&bytes) {
                prop_assert_eq!(msg.encode(), bytes);
            }
        }
    }
}
