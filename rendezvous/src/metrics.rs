//! The node's counters, and a small HTTP listener that reports them and the node's health.
//!
//! [`Metrics`] holds atomics the node's tasks update as they go; [`Metrics::render`] writes
//! them in the Prometheus text format. [`serve`] answers, on a listener of its own that should
//! stay private:
//!
//! 1. `GET /metrics` → `200` with the counters (`text/plain; version=0.0.4`).
//! 2. `GET /health` or `/healthz` → `200 ok`, or `503 shutting down` from the moment shutdown
//!    starts (through the grace period), so a load balancer stops sending clients.
//! 3. Another path → `404`; another method → `405` (`HEAD` is answered as `GET` without body).
//!
//! Each connection gets one answer and is closed. Bounds: [`MAX_HTTP_CONNECTIONS`] at once
//! (more are dropped on accept), [`MAX_REQUEST`] bytes of request head, and
//! [`HTTP_TIMEOUT`] for the whole exchange; a request over either is dropped unanswered.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::table::Output;
use crate::wire::{ErrorCode, NodeMsg};

/// Largest request head read (request line and headers), in bytes.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Time allowed to read a request and write the answer.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP connections served at once.
pub const MAX_HTTP_CONNECTIONS: usize = 64;
/// Prefix of every metric name.
const PREFIX: &str = "p2p_copy_rendezvous_";

/// The node's counters and gauges. Gauges are signed so that a stray decrement shows as a
/// negative value rather than wrapping. All use relaxed ordering: each is read on its own.
#[derive(Debug, Default)]
pub struct Metrics {
    /// QUIC connections open (including those still in their handshake).
    pub connections_quic: AtomicI64,
    /// TCP connections open.
    pub connections_tcp: AtomicI64,
    /// Relay sessions running.
    pub relays_active: AtomicI64,
    /// Relay sessions started.
    pub relays_total: AtomicU64,
    /// Bytes relayed, both directions added.
    pub relay_bytes_total: AtomicU64,
    /// Relay sessions refused (session cap, shutdown).
    pub relays_refused_total: AtomicU64,
    /// Relayed packets dropped: over a rate, towards a full link, or not from an attached
    /// client.
    pub relay_dropped_total: AtomicU64,
    /// Nameplates open.
    pub nameplates_open: AtomicI64,
    /// Nameplates handed out by `Allocate`.
    pub nameplates_allocated_total: AtomicU64,
    /// Successful claims (of allocated or pre-shared nameplates).
    pub claims_total: AtomicU64,
    /// Nameplates closed within 30 s of their second side joining with no relay ticket asked
    /// for: failed key exchanges (a wrong code, or someone guessing), or transfers with the
    /// relay turned off (see [`crate::table`]).
    pub suspected_guesses_total: AtomicU64,
    /// Connections refused by the connection limits (in all or per address).
    pub clients_refused_total: AtomicU64,
    /// QUIC connection attempts answered with a Retry (address validation, under load).
    pub quic_retries_total: AtomicU64,
    /// Requests answered `Busy`: claim rate limit, nameplate table or mailbox full.
    pub busy_total: AtomicU64,
    /// Mailbox messages delivered.
    pub messages_total: AtomicU64,
    /// Shutdown has started: health reports 503.
    pub shutting_down: AtomicBool,
}

/// Prometheus metric types.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

impl Metrics {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Accounts for one output of the table: allocations, claims, deliveries, refusals.
    pub(crate) fn observe(&self, output: &Output) {
        let Output::Send { msg, .. } = output else { return };
        match msg {
            NodeMsg::Allocated { .. } => Self::bump(&self.nameplates_allocated_total),
            NodeMsg::Claimed { .. } => Self::bump(&self.claims_total),
            NodeMsg::Message { .. } => Self::bump(&self.messages_total),
            NodeMsg::Error { code: ErrorCode::Busy, .. } => Self::bump(&self.busy_total),
            _ => {}
        }
    }

    /// The counters in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let i = |a: &AtomicI64| a.load(Ordering::Relaxed).to_string();
        let u = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
        let mut out = String::with_capacity(2048);
        let quic = i(&self.connections_quic);
        let tcp = i(&self.connections_tcp);
        family(
            &mut out,
            "connections",
            Kind::Gauge,
            "Client connections open, by transport.",
            &[("transport=\"quic\"", &quic), ("transport=\"tcp\"", &tcp)],
        );
        let plain: [(&str, Kind, &str, String); 13] = [
            ("nameplates_open", Kind::Gauge, "Nameplates open.", i(&self.nameplates_open)),
            (
                "nameplates_allocated_total",
                Kind::Counter,
                "Nameplates handed out by Allocate.",
                u(&self.nameplates_allocated_total),
            ),
            ("claims_total", Kind::Counter, "Successful nameplate claims.", u(&self.claims_total)),
            (
                "suspected_guesses_total",
                Kind::Counter,
                "Nameplates closed within 30 s of their second side joining, no relay ticket \
                 asked: failed key exchanges (wrong code or guessing), or the relay turned off.",
                u(&self.suspected_guesses_total),
            ),
            (
                "messages_total",
                Kind::Counter,
                "Mailbox messages delivered.",
                u(&self.messages_total),
            ),
            (
                "clients_refused_total",
                Kind::Counter,
                "Connections refused by the connection limits.",
                u(&self.clients_refused_total),
            ),
            (
                "quic_retries_total",
                Kind::Counter,
                "QUIC connection attempts answered with a Retry (address validation under load).",
                u(&self.quic_retries_total),
            ),
            (
                "busy_total",
                Kind::Counter,
                "Requests answered Busy: claim rate limit, nameplate table or mailbox full.",
                u(&self.busy_total),
            ),
            ("relays_active", Kind::Gauge, "Relay sessions running.", i(&self.relays_active)),
            ("relays_total", Kind::Counter, "Relay sessions started.", u(&self.relays_total)),
            (
                "relay_bytes_total",
                Kind::Counter,
                "Bytes relayed, both directions added.",
                u(&self.relay_bytes_total),
            ),
            (
                "relays_refused_total",
                Kind::Counter,
                "Relay sessions refused.",
                u(&self.relays_refused_total),
            ),
            (
                "relay_dropped_total",
                Kind::Counter,
                "Relayed packets dropped: over a rate, towards a full link, or not from an \
                 attached client.",
                u(&self.relay_dropped_total),
            ),
        ];
        for (name, kind, help, value) in &plain {
            family(&mut out, name, *kind, help, &[("", value)]);
        }
        let down = if self.shutting_down.load(Ordering::Relaxed) { "1" } else { "0" };
        family(
            &mut out,
            "shutting_down",
            Kind::Gauge,
            "1 once shutdown has started.",
            &[("", down)],
        );
        out
    }
}

/// Writes one metric family: HELP, TYPE and its samples (`labels` without braces).
fn family(out: &mut String, name: &str, kind: Kind, help: &str, samples: &[(&str, &str)]) {
    let kind = match kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
    };
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {PREFIX}{name} {help}");
    let _ = writeln!(out, "# TYPE {PREFIX}{name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{PREFIX}{name} {value}");
        } else {
            let _ = writeln!(out, "{PREFIX}{name}{{{labels}}} {value}");
        }
    }
}

/// Holds a gauge up by one while it lives: `GaugeGuard::new(metrics, |m| &m.relays_active)`.
#[derive(Debug)]
pub struct GaugeGuard {
    metrics: Arc<Metrics>,
    gauge: fn(&Metrics) -> &AtomicI64,
}

impl GaugeGuard {
    /// Adds one to the gauge `gauge` picks; dropping the guard takes it off again.
    pub fn new(metrics: Arc<Metrics>, gauge: fn(&Metrics) -> &AtomicI64) -> GaugeGuard {
        gauge(&metrics).fetch_add(1, Ordering::Relaxed);
        GaugeGuard { metrics, gauge }
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        (self.gauge)(&self.metrics).fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `/metrics` and `/health` on `listener` until `shutdown` resolves (see the
/// [module documentation](self)).
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) if connections.len() < MAX_HTTP_CONNECTIONS => {
                    connections.spawn(answer(stream, metrics.clone()));
                }
                Ok(_) => tracing::debug!("too many metrics connections: dropping one"),
                Err(e) => {
                    // Out of file descriptors, usually: let some close before trying again.
                    tracing::debug!(error = %e, "metrics listener cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    connections.shutdown().await;
}

/// Reads one request from `stream` and answers it, within [`HTTP_TIMEOUT`].
async fn answer(mut stream: TcpStream, metrics: Arc<Metrics>) {
    let exchange = async {
        let Some(head) = read_head(&mut stream).await else { return };
        let response = respond(&head, &metrics);
        if stream.write_all(&response).await.is_ok() {
            let _ = stream.shutdown().await;
        }
    };
    let _ = tokio::time::timeout(HTTP_TIMEOUT, exchange).await;
}

/// Reads up to the end of the request head; `None` when it is over [`MAX_REQUEST`] bytes or
/// the connection ends first.
async fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        let scan_from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        if head[scan_from..].windows(4).any(|w| w == b"\r\n\r\n") {
            return Some(head);
        }
        if head.len() >= MAX_REQUEST {
            return None;
        }
    }
}

/// The whole HTTP response to a request head.
fn respond(head: &[u8], metrics: &Metrics) -> Vec<u8> {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = std::str::from_utf8(line).unwrap_or_default();
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let (Some(method), Some(target), Some(version), None) = (method, target, version, parts.next())
    else {
        return response("400 Bad Request", "text/plain", "bad request\n", true);
    };
    if !version.starts_with("HTTP/1.") {
        return response("400 Bad Request", "text/plain", "bad request\n", true);
    }
    let with_body = match method {
        "GET" => true,
        "HEAD" => false,
        _ => return response("405 Method Not Allowed", "text/plain", "use GET\n", true),
    };
    let path = target.split('?').next().unwrap_or_default();
    match path {
        "/metrics" => {
            let body = metrics.render();
            response("200 OK", "text/plain; version=0.0.4; charset=utf-8", &body, with_body)
        }
        "/health" | "/healthz" if metrics.shutting_down.load(Ordering::Relaxed) => {
            response("503 Service Unavailable", "text/plain", "shutting down\n", with_body)
        }
        "/health" | "/healthz" => response("200 OK", "text/plain", "ok\n", with_body),
        _ => response(
            "404 Not Found",
            "text/plain",
            "not found: try /metrics or /health\n",
            with_body,
        ),
    }
}

fn response(status: &str, content_type: &str, body: &str, with_body: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if with_body {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(head: &str) -> String {
        let out = respond(head.as_bytes(), &Metrics::default());
        let text = String::from_utf8(out).unwrap();
        text.lines().next().unwrap().to_owned()
    }

    #[test]
    fn routes() {
        assert_eq!(status("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), "HTTP/1.1 200 OK");
        assert_eq!(status("GET /health HTTP/1.0\r\n\r\n"), "HTTP/1.1 200 OK");
        assert_eq!(status("GET /healthz?verbose HTTP/1.1\r\n\r\n"), "HTTP/1.1 200 OK");
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), "HTTP/1.1 404 Not Found");
        assert_eq!(status("POST /metrics HTTP/1.1\r\n\r\n"), "HTTP/1.1 405 Method Not Allowed");
        assert_eq!(status("GET /metrics\r\n\r\n"), "HTTP/1.1 400 Bad Request");
        assert_eq!(status("\u{0}\u{1}\r\n\r\n"), "HTTP/1.1 400 Bad Request");
        assert_eq!(status("GET /metrics SPDY/3\r\n\r\n"), "HTTP/1.1 400 Bad Request");
    }

    #[test]
    fn head_has_no_body_and_health_follows_shutdown() {
        let metrics = Metrics::default();
        let out = String::from_utf8(respond(b"HEAD /health HTTP/1.1\r\n\r\n", &metrics)).unwrap();
        assert!(out.ends_with("\r\n\r\n") && out.contains("Content-Length: 3\r\n"), "{out}");
        metrics.shutting_down.store(true, Ordering::Relaxed);
        let out = String::from_utf8(respond(b"GET /health HTTP/1.1\r\n\r\n", &metrics)).unwrap();
        assert!(out.starts_with("HTTP/1.1 503 ") && out.ends_with("\r\n\r\nshutting down\n"));
    }

    #[test]
    fn render_is_prometheus_text() {
        let metrics = Arc::new(Metrics::default());
        let guard = GaugeGuard::new(metrics.clone(), |m| &m.connections_quic);
        Metrics::bump(&metrics.claims_total);
        let text = metrics.render();
        assert!(text.contains("p2p_copy_rendezvous_connections{transport=\"quic\"} 1\n"), "{text}");
        assert!(text.contains("# TYPE p2p_copy_rendezvous_claims_total counter\n"));
        assert!(text.contains("\np2p_copy_rendezvous_claims_total 1\n"));
        drop(guard);
        assert!(metrics.render().contains("{transport=\"quic\"} 0\n"));
        // Every sample line is `name[{labels}] value`, and every family has HELP and TYPE.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(name.starts_with(PREFIX), "{line}");
            value.parse::<i64>().unwrap();
        }
        assert_eq!(
            text.lines().filter(|l| l.starts_with("# HELP")).count(),
            text.lines().filter(|l| l.starts_with("# TYPE")).count()
        );
    }
}
