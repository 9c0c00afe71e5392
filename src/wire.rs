//! Codecs for everything that crosses the network.

pub mod discovery;
