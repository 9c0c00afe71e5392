//! Networking: QUIC endpoints, LAN discovery, candidates and the relayed path.
//!
//! - [`quic`]: endpoints with self-signed certificates that the session pins afterwards.
//! - [`discovery`]: multicast discovery of a sender by nameplate on the local network.
//! - [`relay`]: the peers' QUIC connection carried over the rendezvous node's relay.
//! - [`candidates`]: the addresses a peer may be reached at.

pub mod candidates;
pub mod discovery;
pub mod quic;
pub mod relay;
