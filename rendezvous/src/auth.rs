//! The access token, proved without sending it; and the node's certificate fingerprint.
//!
//! A node with an access token must not hand it to whoever answers in its name (a DNS or
//! route hijack, a hostile network), and clients do not authenticate the node unless pinned.
//! So the token never crosses the wire:
//!
//! 1. Both ends of a connection to the node (QUIC, or TLS over TCP) export
//!    [`CHANNEL_LEN`] bytes of keying material from their TLS session ([`EXPORTER_LABEL`],
//!    empty context): the *channel*, the same at both ends and different for every session.
//! 2. The client sends `proof = HMAC-SHA256(key = token, PROOF_LABEL ‖ channel)` in `Hello`
//!    and in `Relay` ([`proof`]), never the token.
//! 3. The node computes the same from its own side of the session and compares in constant
//!    time ([`verify`]).
//!
//! An impersonator learns a proof for its own session with the client, which is worth
//! nothing on its own session with the real node (another channel), and cannot test token
//! guesses offline any faster than HMAC allows: a long random token stays safe. A connection
//! without TLS (`--tcp-plaintext`) has no channel and cannot prove a token.
//!
//! A client that also pins the node ([`fingerprint`] of its certificate) refuses any other
//! certificate, so an impersonator learns nothing at all.

/// Label of the TLS exporter that binds a proof to its session.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-p2p-copy-rendezvous token";
/// What the HMAC covers ahead of the channel.
const PROOF_LABEL: &[u8] = b"p2p-copy-rendezvous/1 token proof";
/// Length of the exported channel and of a proof.
pub const CHANNEL_LEN: usize = 32;

/// Keying material both ends of one TLS session export.
pub type Channel = [u8; CHANNEL_LEN];
/// What a client sends instead of the token.
pub type Proof = [u8; CHANNEL_LEN];
/// SHA-256 of a certificate (DER).
pub type Fingerprint = [u8; 32];

/// The proof of `token` on `channel`.
pub fn proof(token: &str, channel: &Channel) -> Proof {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token.as_bytes());
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(PROOF_LABEL);
    ctx.update(channel);
    let mut out = [0; CHANNEL_LEN];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// Whether `presented` proves `token` on `channel` (constant time). `None` for either means
/// no: no proof, or a connection without a channel.
pub fn verify(token: &str, channel: Option<&Channel>, presented: Option<&Proof>) -> bool {
    let (Some(channel), Some(presented)) = (channel, presented) else { return false };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token.as_bytes());
    let mut message = Vec::with_capacity(PROOF_LABEL.len() + CHANNEL_LEN);
    message.extend_from_slice(PROOF_LABEL);
    message.extend_from_slice(channel);
    ring::hmac::verify(&key, &message, presented).is_ok()
}

/// The channel of a QUIC connection (`None` if the TLS session cannot export, which a
/// TLS 1.3 session always can).
pub fn quic_channel(conn: &quinn::Connection) -> Option<Channel> {
    let mut out = [0; CHANNEL_LEN];
    conn.export_keying_material(&mut out, EXPORTER_LABEL, &[]).ok()?;
    Some(out)
}

/// The channel of a TLS session (client or server side).
pub fn tls_channel<D>(conn: &rustls::ConnectionCommon<D>) -> Option<Channel> {
    conn.export_keying_material([0; CHANNEL_LEN], EXPORTER_LABEL, Some(&[])).ok()
}

/// SHA-256 of a certificate's DER bytes: what `--rendezvous-fingerprint` pins and what the
/// node logs at start (`certificate_sha256`).
pub fn fingerprint(cert_der: &[u8]) -> Fingerprint {
    let mut out = [0; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, cert_der).as_ref());
    out
}

/// A fingerprint as 64 lowercase hex digits.
pub fn fingerprint_hex(fp: &Fingerprint) -> String {
    fp.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a fingerprint: 64 hex digits, either case, optionally in pairs separated by `:`
/// (as `openssl x509 -fingerprint -sha256` prints it).
pub fn parse_fingerprint(text: &str) -> Result<Fingerprint, String> {
    let digits: Vec<u8> = text.trim().bytes().filter(|&b| b != b':').collect();
    let bad = || {
        "a node fingerprint is the SHA-256 of its certificate: 64 hex digits (colons allowed), \
         as the node logs it at start"
            .to_owned()
    };
    if digits.len() != 64 {
        return Err(bad());
    }
    let mut out = [0; 32];
    for (i, pair) in digits.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).map_err(|_| bad())?;
        out[i] = u8::from_str_radix(text, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known answer, computed independently (Python's `hmac` and `hashlib`).
    #[test]
    fn proof_known_answer() {
        let channel: Channel = std::array::from_fn(|i| i as u8);
        let got = proof("sesame", &channel);
        assert_eq!(
            fingerprint_hex(&got),
            "5c8989fbcaf3188c58045280d1d331a302cdb8fe48d3ef5a27b2db9f06547208"
        );
        assert!(verify("sesame", Some(&channel), Some(&got)));
        assert!(!verify("sesame!", Some(&channel), Some(&got)));
        let mut other = channel;
        other[31] ^= 1;
        assert!(!verify("sesame", Some(&other), Some(&got)), "another session");
        assert!(!verify("sesame", None, Some(&got)), "no channel");
        assert!(!verify("sesame", Some(&channel), None), "no proof");
    }

    #[test]
    fn fingerprints_known_answer_and_parse() {
        let fp = fingerprint(b"abc");
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(fingerprint_hex(&fp), hex);
        assert_eq!(parse_fingerprint(hex), Ok(fp));
        assert_eq!(parse_fingerprint(&format!(" {} ", hex.to_uppercase())), Ok(fp));
        let colons: Vec<String> =
            hex.as_bytes().chunks(2).map(|p| String::from_utf8_lossy(p).into()).collect();
        assert_eq!(parse_fingerprint(&colons.join(":")), Ok(fp));
        for bad in ["", &hex[1..], &format!("{hex}00"), &hex.replace('b', "g"), "é"] {
            assert!(parse_fingerprint(bad).is_err(), "{bad:?}");
        }
    }
}
