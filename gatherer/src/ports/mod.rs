//! The ports importer: a file shaped like `../shared/data/ports.json` (one top-level object keyed by
//! UN/LOCODE) streamed to `port.<unlocode>` with bounded memory, whatever the file's size.
//!
//! [`ObjectEntries`] reads the input in chunks and yields one `"KEY": VALUE` member at a time, with the
//! byte offset and line where it starts; its buffer holds one member plus one chunk at most (a member
//! over [`MAX_ENTRY`] stops the import), and [`ObjectEntries::high_water`] says how large it got.
//! - A syntax error (or a truncated file) stops the import: everything before it has been published, and
//!   the error names its byte offset and line.
//! - A well-formed but invalid port (say, coordinates that are not two numbers) is reported with its
//!   position and published anyway: the processor dead-letters it with the same reason, and the import
//!   goes on.
//!
//! The idempotency key is the member's byte offset in this run ([`crate::Run`]): importing the same file
//! again stores it again and changes no value.

use crate::{Destination, Progress, import_headers};
use async_nats::jetstream;
use tokio::io::AsyncRead;
use tributary_broker::kind::valid_key;
use tributary_broker::ports::{Port, PortRecord};
use tributary_broker::{Kind, PublishReport, Publisher, codec};

mod object;

pub use object::{Entry, MAX_ENTRY, ObjectEntries, Position, SyntaxError};

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PortsReport {
    /// Bytes read.
    pub bytes: u64,
    /// Members read.
    pub entries: u64,
    /// What became of the publishes.
    pub publish: PublishReport,
    /// Well-formed members that are not valid ports, counted. Published anyway, so the processor
    /// dead-letters them.
    pub invalid_count: u64,
    /// The first [`crate::MAX_ERRORS`] of them: (position, UN/LOCODE, reason).
    pub invalid: Vec<(Position, String, String)>,
    /// Members that could not be published at all (a key that is not a subject token), counted.
    pub skipped_count: u64,
    /// The first [`crate::MAX_ERRORS`] of them.
    pub skipped: Vec<(Position, String, String)>,
    /// The syntax error that stopped the import, if any.
    pub syntax_error: Option<SyntaxError>,
    /// Why the import stopped before the input's end otherwise (NATS not acknowledging), if it did.
    pub stopped: Option<String>,
    /// The decoder's buffer high-water mark, in bytes.
    pub max_buffer: usize,
}

/// Streams `input` to `port.<unlocode>`. `size` (if known) sizes the progress bar; `progress` false hides it.
pub async fn import(
    js: jetstream::Context,
    input: impl AsyncRead + Unpin,
    size: Option<u64>,
    progress: bool,
) -> PortsReport {
    let bar = crate::byte_progress_bar(size, progress);
    let started = std::time::Instant::now();
    let mut show = |p: &Progress| {
        bar.set_position(p.bytes);
        bar.set_message(format!("{} ports, {:.0}/s", p.entries, p.entries as f64 / started.elapsed().as_secs_f64()));
    };
    let report = import_with(input, Destination { js, upload: None, progress: &mut show }).await;
    bar.finish_and_clear();
    report
}

/// Streams `input` to `port.<unlocode>` through `to`, telling its progress every 256 entries and at the
/// end.
pub async fn import_with(input: impl AsyncRead + Unpin, to: Destination<'_>) -> PortsReport {
    let Destination { js, upload, progress } = to;
    let mut entries = ObjectEntries::new(input).unchecked_values();
    // 512 acks in flight: as fast as 1024 here, and each pending publish holds what a resend needs.
    let mut publisher = Publisher::new(js, 512);
    let mut report = PortsReport::default();
    let mut p = Progress::default();
    let run = crate::Run::new("port");
    loop {
        if let Some(why) = crate::given_up(&publisher, &p) {
            report.stopped = Some(why);
            break;
        }
        // The acks in flight are collected while the next entry is awaited (see `Publisher::settling`).
        let e = match publisher.settling(entries.next()).await {
            Ok(Some(e)) => e,
            Ok(None) => break,
            Err(e) => {
                report.syntax_error = Some(e);
                break;
            }
        };
        report.entries += 1;
        p.entries += 1;
        p.bytes = entries.bytes;
        if !valid_key(&e.key) {
            report.skipped_count += 1;
            if report.skipped.len() < crate::MAX_ERRORS {
                report.skipped.push((e.at, e.key, "the key is not a valid UN/LOCODE subject token".into()));
            }
            p.invalid += 1;
            continue;
        }
        // One parse: malformed JSON stops the file (like any syntax error); a well-formed but invalid port
        // is reported and published, for the processor to dead-letter.
        let invalid = match serde_json::from_slice::<Port>(&e.value) {
            Ok(port) => PortRecord::validate(e.key.clone(), port).err(),
            Err(err) if err.is_data() => Some(err.to_string()),
            Err(err) => {
                let at = Position { offset: e.at.offset, line: e.at.line + err.line() as u64 - 1 };
                report.syntax_error =
                    Some(SyntaxError { at, reason: format!("malformed value of {:?}: {err}", e.key) });
                break;
            }
        };
        if let Some(reason) = invalid {
            report.invalid_count += 1;
            if report.invalid.len() < crate::MAX_ERRORS {
                report.invalid.push((e.at, e.key.clone(), reason));
            }
            p.invalid += 1;
        }
        let id = run.key(e.at.offset);
        publisher.publish_raw(Kind::Port.subject(&e.key), import_headers(&id, codec::JSON, upload), e.value).await;
        p.published += 1;
        if report.entries % 256 == 0 {
            progress(&p);
        }
    }
    report.bytes = entries.bytes;
    p.bytes = entries.bytes;
    report.max_buffer = entries.high_water();
    report.publish = publisher.finish().await;
    progress(&p);
    report
}

#[cfg(test)]
mod tests {
    use super::object::CHUNK;
    use super::*;

    async fn all(text: &[u8]) -> (Vec<Entry>, Option<SyntaxError>, usize) {
        // Tiny reads exercise every split point.
        let reader = tokio_test_reader(text);
        let mut e = ObjectEntries::new(reader);
        let mut out = Vec::new();
        loop {
            match e.next().await {
                Ok(Some(x)) => out.push(x),
                Ok(None) => return (out, None, e.high_water()),
                Err(err) => return (out, Some(err), e.high_water()),
            }
        }
    }

    /// A reader returning at most 7 bytes per read.
    fn tokio_test_reader(text: &[u8]) -> impl AsyncRead + Unpin {
        struct Slow(std::io::Cursor<Vec<u8>>);
        impl AsyncRead for Slow {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                let mut tmp = [0u8; 7];
                let n = std::io::Read::read(&mut self.0, &mut tmp[..buf.remaining().min(7)])?;
                buf.put_slice(&tmp[..n]);
                std::task::Poll::Ready(Ok(()))
            }
        }
        Slow(std::io::Cursor::new(text.to_vec()))
    }

    #[tokio::test]
    async fn members_with_positions_across_any_split() {
        let text = b"{\n  \"A\": {\"name\": \"x}\\\"{\", \"n\": [1, [2]]},\n  \"B\" : 12,\n  \"C\":\"s\"\n}\n";
        let (e, err, _) = all(text).await;
        assert_eq!(err, None);
        let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["A", "B", "C"]);
        assert_eq!(&e[0].value[..], br#"{"name": "x}\"{", "n": [1, [2]]}"#);
        assert_eq!(e[0].at, Position { offset: 4, line: 2 });
        assert_eq!((&e[1].value[..], e[1].at.line), (&b"12"[..], 3));
        assert_eq!(&e[2].value[..], br#""s""#);
    }

    #[tokio::test]
    async fn syntax_errors_stop_with_their_position_after_what_came_before() {
        let (e, err, _) = all(b"{\"A\": {\"name\": \"a\"},\n \"B\": {\"name\": \"b\",, }\n}").await;
        assert_eq!(e.len(), 1);
        let err = err.unwrap();
        assert_eq!(err.at.line, 2);
        assert!(err.reason.contains("malformed value of \"B\""), "{err}");
        let (e, err, _) = all(b"{\"A\": {\"name\": \"a\"},\n \"B\": {\"name\"").await;
        assert_eq!(e.len(), 1);
        assert!(err.unwrap().reason.contains("truncated"));
        let (_, err, _) = all(b"[1, 2]").await;
        assert!(err.unwrap().reason.contains("expected '{'"));
        let (e, err, _) = all(b"{\"A\": 1 \"B\": 2}").await;
        assert_eq!((e.len(), err.unwrap().reason.contains("expected ',' or '}'")), (1, true));
        let (_, err, _) = all(b"{\"A\": 1} x").await;
        assert!(err.unwrap().reason.contains("after the closing"));
    }

    #[tokio::test]
    async fn memory_is_bounded_by_one_member_and_a_chunk() {
        let mut text = b"{".to_vec();
        for i in 0..20_000 {
            text.extend_from_slice(
                format!("\"P{i:05}\": {{\"name\": \"port {i}\", \"coordinates\": [1.5, 2.5]}},\n").as_bytes(),
            );
        }
        text.extend_from_slice(b"\"Z\": {\"name\": \"z\"}}");
        let mut e = ObjectEntries::new(std::io::Cursor::new(text.clone()));
        let mut n = 0;
        while e.next().await.unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, 20_001);
        assert!(text.len() > 1_000_000);
        assert!(e.high_water() <= 2 * CHUNK, "buffer grew to {}", e.high_water());
    }
}
