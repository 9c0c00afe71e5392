//! Networking: QUIC endpoints, LAN discovery, candidates and the relayed path.
//!
//! - [`quic`]: endpoints with self-signed certificates that the session pins afterwards.
//! - [`discovery`]: multicast discovery of a sender by nameplate on the local network.
//! - [`path`]: one QUIC connection to the peer over the direct path or the relay, switching as
//!   they come and go; the probes that find the direct path.
//! - [`relay`]: the relay path: the peers' QUIC packets through the rendezvous node, as
//!   datagrams or as records on a TCP stream.
//! - [`congestion`]: CUBIC told random loss from congestion (the default controller).
//! - [`candidates`]: the addresses a peer may be reached at.
//! - [`tune`]: flow-control window auto-tuning for long fat links.

pub mod candidates;
pub mod congestion;
pub mod discovery;
pub mod link;
pub mod path;
pub mod quic;
pub mod relay;
pub mod tune;
