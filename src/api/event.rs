//! What a transfer tells its watcher: [`Event`], the same events `--json` prints.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::ErrorKind;
use crate::transfer::fs::shown;
use crate::transfer::survey::Present;
use crate::transfer::{FileOutcome, Link, Note, PathKind, Progress, Report};
use crate::wire::control::Offer;

/// Something that happened in a transfer, in the order it happened.
///
/// These are the events `p2p-copy --json` prints, one JSON object per line with the variant's
/// name in snake case under `"event"` and the fields beside it (`docs/cli.md`, "JSON events"):
/// serializing an `Event` with serde gives that line. Strings that came from the peer (names,
/// texts, warnings, reasons) are as the peer sent them: escape them before showing them on a
/// terminal.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// Sender: the code to hand to the receiver; the sender now waits for it.
    #[non_exhaustive]
    Code {
        /// The code, as the receiver types it.
        code: String,
        /// Its leading number.
        nameplate: u32,
    },
    /// Receiver: looking for the sender on the local network.
    #[non_exhaustive]
    Searching {
        /// The nameplate searched for.
        nameplate: u32,
    },
    /// A connection to the peer is up (not yet authenticated).
    #[non_exhaustive]
    Connected {
        /// The peer's address.
        peer: SocketAddr,
        /// How the data will flow.
        path: PathKind,
    },
    /// The peer proved it knows the code.
    #[non_exhaustive]
    Secured {
        /// A short string equal on both sides.
        verifier: String,
    },
    /// What is offered: the receiver is about to decide, the sender waits for the decision.
    Offer(OfferSummary),
    /// The offer was accepted; data is about to flow.
    #[non_exhaustive]
    Accepted {
        /// Bytes to move; `None` when the offer holds a stream of unknown size.
        bytes: Option<u64>,
        /// Bytes the destination already holds (not sent again).
        present_bytes: u64,
        /// Files the destination already holds whole.
        present_files: u64,
        /// Partial copies that are continued.
        partial_files: u64,
    },
    /// Receiver: the text of a text offer, as sent (untrusted).
    #[non_exhaustive]
    Text {
        /// The text.
        text: String,
    },
    /// About once a second while data flows.
    Progress(ProgressSample),
    /// One file is done on this side.
    #[non_exhaustive]
    File {
        /// Its path as offered, `/`-separated; a path that is not UTF-8 is given with `\xNN`
        /// for each byte that is not.
        path: String,
        /// Its size.
        bytes: u64,
        /// How it ended.
        outcome: FileOutcome,
    },
    /// Something worth telling that does not stop the transfer.
    #[non_exhaustive]
    Warning {
        /// What happened.
        message: String,
    },
    /// The connection was lost mid-transfer; both sides try to meet again.
    #[non_exhaustive]
    Reconnecting {
        /// Why it was lost.
        reason: String,
        /// How long they try, in seconds.
        wait_seconds: u64,
    },
    /// The transfer goes on over a new connection.
    Reconnected,
    /// The transfer succeeded (the last event).
    Done(Summary),
    /// The transfer failed (the last event).
    #[non_exhaustive]
    Error {
        /// What kind of failure (the command line's exit status follows it).
        kind: ErrorKind,
        /// A sentence for a person (it may quote the peer: escape it for a terminal).
        message: String,
    },
    /// Library only: this many events were dropped because they were not read in time (the
    /// queue is bounded, and a transfer never waits for its watcher).
    #[non_exhaustive]
    Lagged {
        /// How many.
        missed: u64,
    },
}

/// What an offer holds: the `offer` event, and what a receiver's `on_offer` decides on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct OfferSummary {
    /// Regular files (streams included).
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Hard links to files of the offer.
    pub hardlinks: u64,
    /// Bytes of the files (what is known of them: a stream's size is not).
    pub bytes: u64,
    /// The top-level names, as the sender sent them (untrusted: they are checked before
    /// anything is written, but escape them for a terminal). A name is bytes: one that is not
    /// UTF-8 is given with `\xNN` for each byte that is not (`caf\xe9`).
    pub names: Vec<String>,
    /// Bytes the destination already holds.
    pub present_bytes: u64,
    /// Files the destination already holds whole.
    pub present_files: u64,
    /// Partial copies the destination holds, to be continued.
    pub partial_files: u64,
    /// Files and directories come with their extended attributes (`send --xattrs`).
    pub xattrs: bool,
    /// The offer holds a stream of unknown size (`send -`).
    #[serde(skip)]
    pub stream: bool,
}

impl OfferSummary {
    pub(crate) fn new(offer: &Offer, present: Present) -> OfferSummary {
        OfferSummary {
            files: offer.files,
            dirs: offer.dirs,
            symlinks: offer.symlinks,
            hardlinks: offer.hardlinks,
            bytes: offer.bytes,
            names: offer.names.iter().map(|n| shown(n).into_owned()).collect(),
            present_bytes: present.bytes,
            present_files: present.files,
            partial_files: present.partial,
            xattrs: offer.xattrs,
            stream: offer.streams > 0,
        }
    }
}

/// A `progress` event: bytes so far, rate and the connection's quality.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ProgressSample {
    /// Bytes so far (held ones included).
    pub bytes: u64,
    /// Bytes in all; `None` for a stream.
    pub total: Option<u64>,
    /// Bytes per second, over about the last few seconds.
    pub rate: u64,
    /// Seconds to go at that rate, when known.
    pub eta_seconds: Option<u64>,
    /// The path the data takes now.
    pub path: Option<PathKind>,
    /// QUIC's smoothed round trip now, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Packets lost so far.
    pub lost_packets: u64,
}

impl ProgressSample {
    /// A sample of `progress` for a transfer of `total` bytes, moving at `rate`.
    pub(crate) fn of(progress: &Progress, total: Option<u64>, rate: f64) -> ProgressSample {
        let bytes = progress.bytes();
        let link = progress.link();
        ProgressSample {
            bytes,
            total,
            rate: rate.round() as u64,
            eta_seconds: total
                .filter(|_| rate > 0.0)
                .map(|total| (total.saturating_sub(bytes) as f64 / rate).round() as u64),
            path: link.path,
            rtt_ms: link.rtt.map(millis),
            lost_packets: link.lost_packets,
        }
    }
}

/// The `done` event: what the transfer did ([`Report`], flattened for a line of JSON).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Summary {
    /// The path the data took last.
    pub path: PathKind,
    /// How often the data moved between the direct path and the relay.
    pub path_changes: u32,
    /// File bytes moved (not those already held).
    pub bytes: u64,
    /// Bytes of partial copies continued rather than sent again.
    pub resumed_bytes: u64,
    /// Files already at the destination, not sent.
    pub skipped_files: u64,
    /// Their bytes.
    pub skipped_bytes: u64,
    /// What the file bytes took as chunk payloads (less than `bytes` when compression paid).
    pub wire_bytes: u64,
    /// Files moved.
    pub files: u64,
    /// Entries of every kind.
    pub entries: u64,
    /// Seconds from the start to the end.
    pub seconds: f64,
    /// Seconds from the first file byte to the end.
    pub data_seconds: f64,
    /// Seconds to the first file byte.
    pub first_byte_seconds: Option<f64>,
    /// Rendezvous mode: seconds to find the path.
    pub punch_seconds: Option<f64>,
    /// Reconnections after lost connections.
    pub reconnects: u32,
    /// Round trips and losses over the transfer.
    pub quality: Quality,
    /// Entries that arrived but that the receiver's file system cannot hold (names it does not
    /// allow, links where it has none): left out, each told in a warning (the first 20) and,
    /// for files, by a `file` event with the outcome `refused`. Everything else arrived. The
    /// command line then exits with status 11 (`incomplete`).
    pub refused: u64,
}

/// The connection's quality over a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Quality {
    /// The lowest round trip seen, in milliseconds.
    pub rtt_min_ms: Option<f64>,
    /// The mean round trip, in milliseconds.
    pub rtt_avg_ms: Option<f64>,
    /// Packets QUIC declared lost.
    pub lost_packets: u64,
    /// Packets sent.
    pub sent_packets: u64,
}

impl From<&Link> for Quality {
    fn from(link: &Link) -> Quality {
        Quality {
            rtt_min_ms: link.rtt_min.map(millis),
            rtt_avg_ms: link.rtt_mean.map(millis),
            lost_packets: link.lost_packets,
            sent_packets: link.sent_packets,
        }
    }
}

impl From<&Report> for Summary {
    fn from(r: &Report) -> Summary {
        Summary {
            path: r.path,
            path_changes: r.path_changes,
            bytes: r.bytes,
            resumed_bytes: r.resumed_bytes,
            skipped_files: r.skipped_files,
            skipped_bytes: r.skipped_bytes,
            wire_bytes: r.wire_bytes,
            files: r.files,
            entries: r.entries,
            seconds: r.seconds,
            data_seconds: r.data_seconds(),
            first_byte_seconds: r.first_byte_seconds,
            punch_seconds: r.punch_seconds,
            reconnects: r.reconnects,
            quality: Quality::from(&r.quality),
            refused: r.refused,
        }
    }
}

impl Event {
    /// The event for a milestone of the driver.
    pub(crate) fn from_note(note: &Note<'_>) -> Event {
        match note {
            Note::Code(code) => Event::Code { code: code.to_string(), nameplate: code.nameplate() },
            Note::Searching { nameplate } => Event::Searching { nameplate: *nameplate },
            Note::Connected { peer, path } => Event::Connected { peer: *peer, path: *path },
            Note::Secured { verifier } => Event::Secured { verifier: (*verifier).to_owned() },
            Note::Offer { offer, present } => Event::Offer(OfferSummary::new(offer, *present)),
            Note::Accepted { total, present } => Event::Accepted {
                bytes: *total,
                present_bytes: present.bytes,
                present_files: present.files,
                partial_files: present.partial,
            },
            Note::Warning(message) => Event::Warning { message: message.clone() },
            Note::Reconnecting { reason, wait } => {
                Event::Reconnecting { reason: (*reason).to_owned(), wait_seconds: wait.as_secs() }
            }
            Note::Reconnected => Event::Reconnected,
            Note::Text { text } => Event::Text { text: (*text).to_owned() },
            Note::File { path, bytes, outcome } => {
                Event::File { path: shown(path).into_owned(), bytes: *bytes, outcome: *outcome }
            }
        }
    }

    /// The JSON line `--json` prints for this event (without the newline).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Milliseconds with one decimal, for events.
pub(crate) fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// The transfer rate over about the last few seconds (an exponentially weighted mean of
/// one-second rates, so one slow second does not make the estimate jump).
#[derive(Debug, Default)]
pub(crate) struct Rate {
    last: Option<(u64, Instant)>,
    mean: f64,
}

impl Rate {
    /// Adds `bytes` done at `now`; returns the rate in bytes per second.
    pub(crate) fn update(&mut self, bytes: u64, now: Instant) -> f64 {
        if let Some((before, at)) = self.last {
            let secs = now.saturating_duration_since(at).as_secs_f64();
            if secs > 0.0 {
                let current = bytes.saturating_sub(before) as f64 / secs;
                self.mean =
                    if self.mean == 0.0 { current } else { 0.7 * self.mean + 0.3 * current };
            }
        }
        self.last = Some((bytes, now));
        self.mean
    }
}
