//! The library API (issue 15): `Sender` and `Receiver` in one process, over the loopback
//! interface and LAN discovery on a port of the test's own, with every kind of source and
//! sink, the event stream, a refusal and a stop.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::time::Duration;

use p2p_copy::{ErrorKind, Event, FileOutcome, Finished, Receiver, Sender, Transfer};
use util::*;

/// Every event of `transfer`, then its end.
async fn drain(mut transfer: Transfer) -> (Vec<Event>, Result<Finished, p2p_copy::Error>) {
    let mut events = Vec::new();
    while let Some(event) = transfer.next_event().await {
        events.push(event);
    }
    (events, transfer.wait().await)
}

fn names(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let json: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
            json["event"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_arrive_in_memory_with_the_events_of_json() {
    let mut fx = Fixture::new();
    let mut data = vec![0u8; 3 << 20];
    fx.rng.fill(&mut data);
    let sender = Sender::bytes("blob.bin", data.clone())
        .code(&fx.code)
        .discovery_port(fx.port)
        .start()
        .unwrap();
    assert_eq!(sender.code(), Some(fx.code.clone()));
    let receiver =
        Receiver::new(&fx.code).into_memory(4 << 20).discovery_port(fx.port).start().unwrap();
    let ((s_events, sent), (r_events, received)) = tokio::join!(drain(sender), drain(receiver));
    let sent = sent.unwrap();
    let received = received.unwrap();
    assert_eq!(received.data.as_deref(), Some(&data[..]), "the bytes, whole");
    assert_eq!(sent.report.bytes, data.len() as u64);
    assert_eq!(received.report.files, 1);

    let s = names(&s_events);
    let r = names(&r_events);
    assert_eq!(s.first().map(String::as_str), Some("code"), "{s:?}");
    assert_eq!(s.last().map(String::as_str), Some("done"), "{s:?}");
    assert_eq!(r.last().map(String::as_str), Some("done"), "{r:?}");
    for want in ["connected", "secured", "offer", "accepted", "file"] {
        assert!(s.iter().any(|n| n == want), "sender has {want}: {s:?}");
        assert!(r.iter().any(|n| n == want), "receiver has {want}: {r:?}");
    }
    let file = r_events.iter().find_map(|e| match e {
        Event::File { path, bytes, outcome, .. } => Some((path.clone(), *bytes, *outcome)),
        _ => None,
    });
    assert_eq!(file, Some(("blob.bin".to_owned(), data.len() as u64, FileOutcome::Received)));
    // The `done` line is the report, flattened.
    let Some(Event::Done(done)) = r_events.last() else { panic!("no done") };
    assert_eq!(done.bytes, received.report.bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_arrives_as_text() {
    let fx = Fixture::new();
    let text = "über\nline two \u{202e} as sent";
    let sender = Sender::text(text).code(&fx.code).discovery_port(fx.port).start().unwrap();
    let receiver =
        Receiver::new(&fx.code).into_dir(fx.path("never")).discovery_port(fx.port).start().unwrap();
    let (sent, received) = tokio::join!(sender.wait(), receiver.wait());
    sent.unwrap();
    let received = received.unwrap();
    assert_eq!(received.text.as_deref(), Some(text));
    assert!(!fx.path("never").exists(), "a text writes no file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_reader_streams_into_an_async_writer() {
    let mut fx = Fixture::new();
    let mut data = vec![0u8; 5 << 20];
    fx.rng.fill(&mut data);
    // The producer writes into a pipe the sender reads; the receiver writes into another
    // pipe the consumer reads: neither side holds the stream.
    let (mut produce, input) = tokio::io::duplex(64 << 10);
    let (output, mut consume) = tokio::io::duplex(64 << 10);
    let producer = tokio::spawn({
        let data = data.clone();
        async move {
            use tokio::io::AsyncWriteExt;
            produce.write_all(&data).await.unwrap();
            produce.shutdown().await.unwrap();
        }
    });
    let consumer = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut got = Vec::new();
        consume.read_to_end(&mut got).await.unwrap();
        got
    });
    let sender =
        Sender::reader("stream", input).code(&fx.code).discovery_port(fx.port).start().unwrap();
    let receiver =
        Receiver::new(&fx.code).into_writer(output).discovery_port(fx.port).start().unwrap();
    let (sent, received) = tokio::join!(sender.wait(), receiver.wait());
    sent.unwrap();
    let received = received.unwrap();
    producer.await.unwrap();
    // The receiver's writer is dropped with its transfer: the consumer sees the end.
    let got = tokio::time::timeout(Duration::from_secs(30), consumer).await.unwrap().unwrap();
    assert!(got == data, "{} bytes of {} arrived, in order", got.len(), data.len());
    assert_eq!(received.report.bytes, data.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_offer_writes_nothing_and_both_sides_say_so() {
    let mut fx = Fixture::new();
    random_file(&fx.path("src/a.bin"), 10_000, &mut fx.rng);
    random_file(&fx.path("src/sub/b.bin"), 20_000, &mut fx.rng);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let sender =
        Sender::paths([fx.path("src")]).code(&fx.code).discovery_port(fx.port).start().unwrap();
    let receiver = Receiver::new(&fx.code)
        .into_dir(fx.path("out"))
        .on_offer({
            let seen = seen.clone();
            move |offer| {
                *seen.lock().unwrap() = Some(offer.clone());
                false
            }
        })
        .discovery_port(fx.port)
        .start()
        .unwrap();
    let (sent, received) = tokio::join!(sender.wait(), receiver.wait());
    assert_eq!(sent.unwrap_err().kind, ErrorKind::Refused);
    assert_eq!(received.unwrap_err().kind, ErrorKind::Refused);
    let offer = seen.lock().unwrap().clone().expect("the decision saw the offer");
    assert_eq!((offer.files, offer.dirs, offer.bytes), (2, 2, 30_000));
    assert_eq!(offer.names, vec!["src".to_owned()]);
    assert!(!fx.path("out/src").exists(), "nothing written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_arrives_in_a_directory_and_a_stop_ends_a_waiting_sender() {
    let mut fx = Fixture::new();
    random_file(&fx.path("src/a.bin"), 100_000, &mut fx.rng);
    random_file(&fx.path("src/sub/b.bin"), 1_000, &mut fx.rng);
    std::fs::write(fx.path("src/skip.o"), b"object").unwrap();
    let sender = Sender::paths([fx.path("src")])
        .exclude("*.o")
        .code(&fx.code)
        .discovery_port(fx.port)
        .start()
        .unwrap();
    let receiver =
        Receiver::new(&fx.code).into_dir(fx.path("out")).discovery_port(fx.port).start().unwrap();
    let (sent, received) = tokio::join!(sender.wait(), receiver.wait());
    assert_eq!(sent.unwrap().report.files, 2);
    assert_eq!(received.unwrap().report.files, 2);
    assert_eq!(
        std::fs::read(fx.path("out/src/a.bin")).unwrap(),
        std::fs::read(fx.path("src/a.bin")).unwrap()
    );
    assert_eq!(
        std::fs::read(fx.path("out/src/sub/b.bin")).unwrap(),
        std::fs::read(fx.path("src/sub/b.bin")).unwrap()
    );
    assert!(!fx.path("out/src/skip.o").exists(), "excluded");

    // Nobody comes: a stop ends the sender at once, as interrupted.
    let other = Sender::paths([fx.path("src")]).discovery_port(fx.port).start().unwrap();
    let generated = other.code().expect("known at once on a local network");
    assert_ne!(generated, fx.code, "a generated code");
    other.stop();
    let stopped = tokio::time::timeout(Duration::from_secs(10), other.wait()).await;
    assert_eq!(stopped.expect("ends at once").unwrap_err().kind, ErrorKind::Interrupted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_options_fail_at_start_with_a_usage_error() {
    let weak = Sender::text("hi").code("1-a").start().unwrap_err();
    assert_eq!(weak.kind, ErrorKind::Usage, "{weak}");
    let lanes = Sender::text("hi").lanes(0).start().unwrap_err();
    assert_eq!(lanes.kind, ErrorKind::Usage, "{lanes}");
    let name = Sender::bytes("a/b", b"x".to_vec()).start().unwrap_err();
    assert_eq!(name.kind, ErrorKind::Usage, "{name}");
    let code = Receiver::new("not a code").start().unwrap_err();
    assert_eq!(code.kind, ErrorKind::Usage, "{code}");
}

/// A stream may pause for longer than the stall watchdog allows a transfer to stand still
/// (`tail -f | p2p-copy send -`): neither side gives up on it. Through the driver's options,
/// where the watchdog's limit is set to a second (it is two minutes by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_may_pause_longer_than_the_stall_watchdog() {
    use std::io::Read;
    use std::sync::Arc;

    use p2p_copy::internals::code::Code;
    use p2p_copy::internals::transfer::walk::StreamSource;
    use p2p_copy::internals::transfer::{self, Progress, Quiet, ReceiveOptions, SendOptions};

    /// Gives `first`, then waits `pause` before giving `second`.
    struct Pausing {
        parts: Vec<Vec<u8>>,
        pause: Duration,
    }
    impl Read for Pausing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.parts.len() == 1 && !self.pause.is_zero() {
                std::thread::sleep(std::mem::take(&mut self.pause));
            }
            let Some(part) = self.parts.first_mut() else { return Ok(0) };
            let n = buf.len().min(part.len());
            buf[..n].copy_from_slice(&part[..n]);
            part.drain(..n);
            if part.is_empty() {
                self.parts.remove(0);
            }
            Ok(n)
        }
    }

    let mut fx = Fixture::new();
    let first = fx.rng.bytes(300_000);
    let second = fx.rng.bytes(200_000);
    let stall = Duration::from_secs(1);
    let reader = Pausing { parts: vec![first.clone(), second.clone()], pause: 4 * stall };
    let code = Code::parse(&fx.code).unwrap();
    let mut send = SendOptions::new(Vec::new(), code.clone());
    send.stream = Some(StreamSource::new("log", Box::new(reader)).unwrap());
    send.stall_timeout = stall;
    send.discovery.port = fx.port;
    let mut receive = ReceiveOptions::new(code, fx.path("out"));
    receive.yes = true;
    receive.stall_timeout = stall;
    receive.discovery.port = fx.port;
    let (sent, received) = tokio::join!(
        transfer::send(send, Arc::new(Quiet), Progress::new()),
        transfer::receive(receive, Arc::new(Quiet), Progress::new()),
    );
    sent.unwrap();
    received.unwrap();
    let got = std::fs::read(fx.path("out/log")).unwrap();
    assert!(got == [first, second].concat(), "the stream arrived whole, in order");
}

/// A program that reads its events late loses the ones past the queue, is told how many,
/// and still gets the last one (`done`): the transfer never waits for its watcher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_reader_is_told_what_it_missed_and_still_gets_the_end() {
    let fx = Fixture::new();
    let files = p2p_copy::EVENT_QUEUE + 200;
    for i in 0..files {
        write_file(&fx.path(&format!("src/d{}/f{i}", i % 10)), b"x");
    }
    let mut sender =
        Sender::paths([fx.path("src")]).code(&fx.code).discovery_port(fx.port).start().unwrap();
    let receiver =
        Receiver::new(&fx.code).into_dir(fx.path("out")).discovery_port(fx.port).start().unwrap();
    assert_eq!(receiver.wait().await.unwrap().report.files, files as u64);
    // The sender's events were not read meanwhile: it queued one per file as it sent them.
    let mut events = Vec::new();
    while let Some(event) = sender.next_event().await {
        events.push(event);
    }
    let seen = events.iter().filter(|e| matches!(e, Event::File { .. })).count();
    let missed: u64 = events
        .iter()
        .map(|e| match e {
            Event::Lagged { missed, .. } => *missed,
            _ => 0,
        })
        .sum();
    assert!(missed > 0, "some were dropped: {} events read", events.len());
    assert!(seen as u64 + missed >= files as u64, "{seen} seen, {missed} missed");
    assert!(matches!(events.last(), Some(Event::Done(_))), "the end is never dropped");
    assert!(sender.wait().await.is_ok());
}

/// A memory sink refuses a file it cannot hold before a byte moves, and the builders hold
/// their options to the command line's ranges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_checked_before_anything_moves() {
    let mut fx = Fixture::new();
    random_file(&fx.path("big.bin"), 100_000, &mut fx.rng);
    let sender =
        Sender::paths([fx.path("big.bin")]).code(&fx.code).discovery_port(fx.port).start().unwrap();
    let receiver =
        Receiver::new(&fx.code).into_memory(10_000).discovery_port(fx.port).start().unwrap();
    let (sent, received) = tokio::join!(sender.wait(), receiver.wait());
    assert_eq!(received.unwrap_err().kind, ErrorKind::Refused);
    assert_eq!(sent.unwrap_err().kind, ErrorKind::Refused);

    for (what, e) in [
        ("no wait", Sender::text("t").wait(Duration::ZERO).start().unwrap_err()),
        ("a 1 KiB chunk", Sender::bytes("b", vec![1]).chunk_size(1024).start().unwrap_err()),
        ("a zero window", Sender::text("t").window(0).start().unwrap_err()),
        ("exclude with a text", Sender::text("t").exclude("*.o").start().unwrap_err()),
        ("xattrs with bytes", Sender::bytes("b", vec![1]).xattrs(true).start().unwrap_err()),
        (
            "a day and more",
            Receiver::new(&fx.code).wait(Duration::from_secs(86_401)).start().unwrap_err(),
        ),
    ] {
        assert_eq!(e.kind, ErrorKind::Usage, "{what}: {e}");
    }
}
