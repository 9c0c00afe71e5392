//! Networking: QUIC endpoints and LAN discovery.

pub mod discovery;
