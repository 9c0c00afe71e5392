//! Networking: QUIC endpoints and LAN discovery.
//!
//! - [`quic`]: endpoints with self-signed certificates that the session pins afterwards.
//! - [`discovery`]: multicast discovery of a sender by nameplate on the local network.

pub mod discovery;
pub mod quic;
