//! The node's settings: defaults, a TOML file and the command line, merged in that order.
//!
//! 1. clap parses [`NodeArgs`] (flags, and a `P2P_COPY_RENDEZVOUS_*` variable for each). No
//!    flag has a default of its own, so a flag that is not given never hides the file.
//! 2. [`NodeArgs::load`] reads the file named by `--config` (at most [`MAX_FILE`] bytes). Its
//!    keys are the flags' names with `_` for `-`; the `--relay-*` settings go in a `[relay]`
//!    table and `--tls-cert`/`--tls-key` in `[tls]` as `cert`/`key`. A key the node does not
//!    know is an error that names it.
//! 3. Each setting takes the flag's value, else the file's, else [`ServerConfig::default`]'s.
//! 4. The result is checked (ranges, TLS files read and matched) before anything binds, so a
//!    mistake stops the node at startup with a message naming the setting or the file.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use crate::metrics::Metrics;
use crate::table::Limits;
use crate::wire::MAX_TOKEN;

/// Largest config file read, in bytes.
pub const MAX_FILE: u64 = 64 * 1024;
/// Largest PEM file read (certificate chain or key), in bytes.
const MAX_PEM: u64 = 1 << 20;
/// Longest grace period at shutdown.
const MAX_GRACE: Duration = Duration::from_secs(3600);
/// Longest relay session that may be configured.
const MAX_RELAY_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Everything the node runs with. [`ServerConfig::default`] suits a public node.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address and port of the QUIC (UDP) listener, and of the TCP listener on the same port.
    /// Used by [`crate::server::run`]; [`crate::server::serve`] is handed a bound endpoint.
    pub listen: SocketAddr,
    /// Nameplate, rate and mailbox limits.
    pub limits: Limits,
    /// Connections served at once (beyond `Limits::clients_per_ip` per source).
    pub max_connections: usize,
    /// With this many QUIC connections in their handshake, a new one whose address is not
    /// validated yet gets a Retry first (one round trip more; a spoofed source costs the node
    /// one small packet and no state). 0: always.
    pub retry_above: usize,
    /// How long running sessions may continue after shutdown starts.
    pub grace: Duration,
    /// Silence after which a client is dropped.
    pub idle_timeout: Duration,
    /// Caps on relayed sessions.
    pub relay: RelayLimits,
    /// Also listen on TCP at the same port.
    pub tcp: bool,
    /// Also serve TCP clients that do not speak TLS (tools, debugging). Off by default: their
    /// traffic, the access token included, is readable on the way.
    pub tcp_plaintext: bool,
    /// Certificate and key the node presents on QUIC and TCP (`None`: a fresh self-signed one
    /// at every start).
    pub tls: Option<TlsFiles>,
    /// Address of the metrics and health listener (`None`: off).
    pub metrics: Option<SocketAddr>,
    /// The counters the node updates and the metrics listener reports.
    pub metrics_handle: Arc<Metrics>,
    /// How the binaries format logs (set up before the node starts; the server ignores it).
    pub log_format: LogFormat,
    /// Tests only: sees and may alter relayed bytes (plays a malicious relay).
    #[doc(hidden)]
    pub relay_tap: Option<crate::relay::Tap>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 4433)),
            limits: Limits::default(),
            max_connections: 20_000,
            retry_above: 64,
            grace: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            relay: RelayLimits::default(),
            tcp: true,
            tcp_plaintext: false,
            tls: None,
            metrics: None,
            metrics_handle: Arc::default(),
            log_format: LogFormat::Text,
            relay_tap: None,
        }
    }
}

pub use crate::relay::RelayLimits;

/// PEM files of the certificate the node presents on QUIC and TCP. [`NodeArgs::load`] has checked that they load and
/// that the key matches the certificate.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl TlsFiles {
    /// Reads the certificate chain and the private key, and checks that they match.
    pub fn load(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), ConfigError> {
        let tls =
            |path: &Path, message: String| ConfigError::Tls { path: path.to_owned(), message };
        let read = |path: &Path| {
            read_capped(path, MAX_PEM).map_err(|e| match e {
                ConfigError::Read { source, .. } => tls(path, format!("cannot read it: {source}")),
                other => other,
            })
        };
        let pem = read(&self.cert)?;
        let chain = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls(&self.cert, format!("not a PEM certificate chain: {e}")))?;
        if chain.is_empty() {
            let message = "no certificate in it (expected -----BEGIN CERTIFICATE-----)";
            return Err(tls(&self.cert, message.to_owned()));
        }
        let pem = read(&self.key)?;
        let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
            tls(&self.key, format!("no PEM private key in it (PKCS#8, PKCS#1 or SEC1): {e}"))
        })?;
        let provider = rustls::crypto::ring::default_provider();
        rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider).map_err(
            |e| {
                tls(
                    &self.key,
                    format!("does not go with the certificate {}: {e}", self.cert.display()),
                )
            },
        )?;
        Ok((chain, key))
    }
}

/// How logs are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl LogFormat {
    /// Installs the global log subscriber: `RUST_LOG` if set, else `default_filter`.
    /// Does nothing if one is already installed.
    pub fn init(self, default_filter: &str) {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
        use std::io::IsTerminal;
        // Colour only on a terminal: the journal or a log file gets plain text.
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal());
        let _ = match self {
            LogFormat::Text => builder.try_init(),
            LogFormat::Json => builder.json().flatten_event(true).try_init(),
        };
    }
}

/// Why the settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file is larger than it can sensibly be.
    #[error("{} is larger than {max} bytes: is it the right file?", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The cap.
        max: u64,
    },
    /// The config file is not valid TOML, has a key the node does not know, or a value of the
    /// wrong type.
    #[error("config file {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's account, with line and key.
        message: String,
    },
    /// A setting is out of range or contradicts another.
    #[error("{setting}: {message}")]
    Invalid {
        /// The setting, as flag and file key.
        setting: &'static str,
        /// What is wrong and what would do.
        message: String,
    },
    /// A TLS certificate or key file is unusable.
    #[error("TLS file {}: {message}", path.display())]
    Tls {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

/// The node's command line (`p2p-copy rendezvous` and `p2p-copy-rendezvous` share it). Every
/// setting may also come from the `--config` file; a flag wins over the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NodeArgs {
    /// TOML file with any of these settings (flags and variables win over it).
    #[arg(long, env = "P2P_COPY_RENDEZVOUS_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Address and port to listen on, UDP and TCP [default: 0.0.0.0:4433].
    #[arg(long, env = "P2P_COPY_RENDEZVOUS_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Require clients to prove this token (they pass it with --rendezvous-token; only an HMAC
    /// of it bound to their TLS session crosses the wire).
    #[arg(long, env = "P2P_COPY_RENDEZVOUS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Nameplates open at once [default: 10000].
    #[arg(long, env = "P2P_COPY_RENDEZVOUS_MAX_NAMEPLATES", value_name = "N")]
    pub max_nameplates: Option<usize>,
    /// Nameplate allocations and claims per minute from one IPv4 address or IPv6 /64 (a /56
    /// gets 4 times as many, a /48 16 times; joining a nameplate counts 5), 0 for no limit
    /// [default: 30].
    #[arg(long, env = "P2P_COPY_RENDEZVOUS_CLAIMS_PER_MINUTE", value_name = "N")]
    pub claims_per_minute: Option<u32>,
    /// Nameplate allocations and claims per minute in all; past it, a source that made no
    /// request in the last minute still gets one, 0 for no limit [default: 6000].
    #[arg(long, env = "P2P_COPY_RENDEZVOUS_TOTAL_CLAIMS_PER_MINUTE", value_name = "N")]
    pub total_claims_per_minute: Option<u32>,
    /// Connections at once from one IPv4 address or IPv6 /64 (a /56 gets 4 times as many, a
    /// /48 16 times) [default: 64].
    #[arg(long, env = "P2P_COPY_RENDEZVOUS_CLIENTS_PER_IP", value_name = "N")]
    pub clients_per_ip: Option<usize>,
    /// Connections at once in all [default: 20000].
    #[arg(long, env = "P2P_COPY_RENDEZVOUS_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Seconds running sessions may go on after SIGTERM or Ctrl-C [default: 10].
    #[arg(long, env = "P2P_COPY_RENDEZVOUS_GRACE", value_name = "SECS")]
    pub grace: Option<u64>,
    /// Relay sessions at once, 0 for no relaying [default: 1000].
    #[arg(long, env = "P2P_COPY_RENDEZVOUS_RELAY_MAX_SESSIONS", value_name = "N")]
    pub relay_max_sessions: Option<usize>,
    /// Bytes per second per relay session each way, with an optional K, M or G (powers of
    /// 1000), 0 for no limit; over it, packets are dropped [default: 50M].
    #[arg(long, env = "P2P_COPY_RENDEZVOUS_RELAY_SESSION_RATE", value_name = "RATE", value_parser = parse_rate)]
    pub relay_session_rate: Option<u64>,
    /// Bytes per second over all relay sessions, shared evenly between the source addresses
    /// relaying at the moment, as --relay-session-rate [default: 250M].
    #[arg(long, env = "P2P_COPY_RENDEZVOUS_RELAY_TOTAL_RATE", value_name = "RATE", value_parser = parse_rate)]
    pub relay_total_rate: Option<u64>,
    /// Longest relay session in seconds [default: 21600].
    #[arg(long, env = "P2P_COPY_RENDEZVOUS_RELAY_MAX_DURATION", value_name = "SECS")]
    pub relay_max_duration: Option<u64>,
    /// Seconds without a packet (keep-alives included) either way after which a relay session
    /// is closed [default: 60].
    #[arg(long, env = "P2P_COPY_RENDEZVOUS_RELAY_IDLE", value_name = "SECS")]
    pub relay_idle: Option<u64>,
    /// Listen on UDP (QUIC) only, not also on TCP.
    #[arg(long, env = "P2P_COPY_RENDEZVOUS_NO_TCP", value_parser = clap::builder::FalseyValueParser::new())]
    pub no_tcp: bool,
    /// Also serve TCP clients that do not speak TLS (tools, debugging): their traffic is
    /// readable on the way, and they cannot prove a token.
    #[arg(long, env = "P2P_COPY_RENDEZVOUS_TCP_PLAINTEXT", value_parser = clap::builder::FalseyValueParser::new())]
    pub tcp_plaintext: bool,
    /// PEM certificate chain the node presents on QUIC and TCP (with --tls-key); clients pin
    /// its SHA-256, which the node logs at start [default: a fresh self-signed one].
    #[arg(long, env = "P2P_COPY_RENDEZVOUS_TLS_CERT", value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "P2P_COPY_RENDEZVOUS_TLS_KEY", value_name = "PATH")]
    pub tls_key: Option<PathBuf>,
    /// Serve Prometheus metrics (/metrics) and health (/health) over HTTP on this address;
    /// keep it private [default: off].
    #[arg(long, env = "P2P_COPY_RENDEZVOUS_METRICS", value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Log format on stderr [default: text].
    #[arg(long, env = "P2P_COPY_RENDEZVOUS_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

impl NodeArgs {
    /// The settings these arguments describe, merged over the `--config` file and the
    /// defaults, and checked.
    pub fn load(&self) -> Result<ServerConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => FileConfig::read(path)?,
            None => FileConfig::default(),
        };
        self.merge(file)
    }

    /// Flags over `file` over defaults, then [`check`].
    fn merge(&self, file: FileConfig) -> Result<ServerConfig, ConfigError> {
        let d = ServerConfig::default();
        let relay = file.relay.unwrap_or_default();
        let secs = Duration::from_secs;
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert: cert.clone(), key: key.clone() }),
            (None, None) => file.tls,
            _ => {
                let message = "give both the certificate and the key, or neither".to_owned();
                return Err(ConfigError::Invalid { setting: TLS, message });
            }
        };
        let limits = Limits {
            token: self.token.clone().or(file.token),
            max_nameplates: self
                .max_nameplates
                .or(file.max_nameplates)
                .unwrap_or(d.limits.max_nameplates),
            claims_per_minute: self
                .claims_per_minute
                .or(file.claims_per_minute)
                .unwrap_or(d.limits.claims_per_minute),
            clients_per_ip: self
                .clients_per_ip
                .or(file.clients_per_ip)
                .unwrap_or(d.limits.clients_per_ip),
            total_claims_per_minute: self
                .total_claims_per_minute
                .or(file.total_claims_per_minute)
                .unwrap_or(d.limits.total_claims_per_minute),
            ..d.limits
        };
        let config = ServerConfig {
            listen: self.listen.or(file.listen).unwrap_or(d.listen),
            limits,
            max_connections: self
                .max_connections
                .or(file.max_connections)
                .unwrap_or(d.max_connections),
            grace: self.grace.or(file.grace).map_or(d.grace, secs),
            relay: RelayLimits {
                per_source: d.relay.per_source,
                max_sessions: self
                    .relay_max_sessions
                    .or(relay.max_sessions)
                    .unwrap_or(d.relay.max_sessions),
                session_rate: self
                    .relay_session_rate
                    .or(relay.session_rate.map(|r| r.0))
                    .unwrap_or(d.relay.session_rate),
                total_rate: self
                    .relay_total_rate
                    .or(relay.total_rate.map(|r| r.0))
                    .unwrap_or(d.relay.total_rate),
                max_duration: self
                    .relay_max_duration
                    .or(relay.max_duration)
                    .map_or(d.relay.max_duration, secs),
                idle_timeout: self.relay_idle.or(relay.idle).map_or(d.relay.idle_timeout, secs),
            },
            tcp: !self.no_tcp && file.tcp.unwrap_or(d.tcp),
            tcp_plaintext: self.tcp_plaintext || file.tcp_plaintext.unwrap_or(d.tcp_plaintext),
            tls,
            metrics: self.metrics.or(file.metrics),
            log_format: self.log_format.or(file.log_format).unwrap_or(d.log_format),
            ..d
        };
        check(&config)?;
        Ok(config)
    }
}

const TLS: &str = "--tls-cert/--tls-key ([tls] cert/key)";

/// Checks ranges and combinations, and that the TLS files load.
fn check(c: &ServerConfig) -> Result<(), ConfigError> {
    let invalid =
        |setting, message: &str| Err(ConfigError::Invalid { setting, message: message.to_owned() });
    if let Some(token) = &c.limits.token {
        if token.is_empty() || token.len() > MAX_TOKEN {
            return invalid("--token (token)", &format!("must be 1 to {MAX_TOKEN} bytes long"));
        }
    }
    if c.limits.max_nameplates == 0 {
        return invalid("--max-nameplates (max_nameplates)", "must be at least 1");
    }
    if c.limits.clients_per_ip == 0 {
        return invalid("--clients-per-ip (clients_per_ip)", "must be at least 1");
    }
    if c.max_connections == 0 {
        return invalid("--max-connections (max_connections)", "must be at least 1");
    }
    if c.grace > MAX_GRACE {
        return invalid("--grace (grace)", &format!("at most {} seconds", MAX_GRACE.as_secs()));
    }
    if c.relay.max_duration.is_zero() || c.relay.max_duration > MAX_RELAY_DURATION {
        let message = format!("must be 1 to {} seconds", MAX_RELAY_DURATION.as_secs());
        return invalid("--relay-max-duration ([relay] max_duration)", &message);
    }
    if c.relay.idle_timeout.is_zero() || c.relay.idle_timeout > c.relay.max_duration {
        let message = "must be at least 1 second and at most the relay's max_duration";
        return invalid("--relay-idle ([relay] idle)", message);
    }
    if let Some(metrics) = c.metrics {
        let overlaps = metrics.ip() == c.listen.ip()
            || metrics.ip().is_unspecified()
            || c.listen.ip().is_unspecified();
        if c.tcp && metrics.port() != 0 && metrics.port() == c.listen.port() && overlaps {
            let message = "must be on another port than --listen, which TCP clients use";
            return invalid("--metrics (metrics)", message);
        }
    }
    if let Some(tls) = &c.tls {
        tls.load()?;
    }
    Ok(())
}

/// The config file: the same settings as [`NodeArgs`], all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    token: Option<String>,
    max_nameplates: Option<usize>,
    claims_per_minute: Option<u32>,
    total_claims_per_minute: Option<u32>,
    clients_per_ip: Option<usize>,
    max_connections: Option<usize>,
    grace: Option<u64>,
    tcp: Option<bool>,
    tcp_plaintext: Option<bool>,
    metrics: Option<SocketAddr>,
    log_format: Option<LogFormat>,
    relay: Option<RelayFile>,
    tls: Option<TlsFiles>,
}

/// The `[relay]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RelayFile {
    max_sessions: Option<usize>,
    session_rate: Option<Rate>,
    total_rate: Option<Rate>,
    max_duration: Option<u64>,
    idle: Option<u64>,
}

impl FileConfig {
    fn read(path: &Path) -> Result<FileConfig, ConfigError> {
        let bytes = read_capped(path, MAX_FILE)?;
        let parse = |message: String| ConfigError::Parse { path: path.to_owned(), message };
        let text = String::from_utf8(bytes).map_err(|_| parse("not UTF-8 text".to_owned()))?;
        Self::parse(&text).map_err(parse)
    }

    fn parse(text: &str) -> Result<FileConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }
}

/// Reads at most `max` bytes of `path`; larger files are an error.
fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>, ConfigError> {
    use std::io::Read;
    let read = |source| ConfigError::Read { path: path.to_owned(), source };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes).map_err(read)?;
    if bytes.len() as u64 > max {
        return Err(ConfigError::TooLarge { path: path.to_owned(), max });
    }
    Ok(bytes)
}

/// A rate in the file: an integer, or a string as [`parse_rate`] takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rate(u64);

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Rate, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Rate;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("bytes per second: an integer, or a string such as \"10M\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Rate, E> {
                Ok(Rate(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Rate, E> {
                u64::try_from(v).map(Rate).map_err(|_| E::custom("a rate cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Rate, E> {
                parse_rate(v).map(Rate).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Parses bytes per second: digits with an optional `K`, `M` or `G` (×1000, ×1000², ×1000³;
/// either case), e.g. `500000`, `10M`, `1G`. `0` means unlimited.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, scale) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1_000),
        Some((i, 'm' | 'M')) => (&s[..i], 1_000_000),
        Some((i, 'g' | 'G')) => (&s[..i], 1_000_000_000),
        _ => (s, 1),
    };
    let bad = || format!("{s:?} is not a rate: use bytes per second, e.g. 500000, 800K, 10M or 1G");
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(scale).ok_or_else(|| format!("{s:?} is too large a rate"))
}

#[cfg(test)]
mod tests;
