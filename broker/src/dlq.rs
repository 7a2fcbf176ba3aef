//! Dead letters: bad input kept with its reason on `dlq.<original subject>`, listed and replayed.
//!
//! A dead letter carries the original payload unchanged and the original headers, plus the
//! `Tributary-Dlq-*` headers below. Its `Nats-Msg-Id` is derived from the original stream sequence, so a
//! bad message redelivered after a crash is dead-lettered once. An original too large to go with those
//! headers (within the server's `max_payload`) is left out, payload and headers, the payload's size in
//! [`PAYLOAD_OMITTED`]: the letter names the original's stream and sequence, where replay reads it.

use crate::publish::MSG_ID;
use crate::streams::{DLQ_PREFIX, StreamsConfig};
use async_nats::HeaderMap;
use async_nats::jetstream::{
    self,
    context::{PublishAckFuture, PublishErrorKind},
    message::{PublishMessage as Publish, StreamMessage},
};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;

/// Why the message was dead-lettered.
pub const REASON: &str = "Tributary-Dlq-Reason";
/// The class of the reason (`bad_subject`, `undecodable`, `invalid`).
pub const CLASS: &str = "Tributary-Dlq-Class";
/// The subject the message was first published to.
pub const SUBJECT: &str = "Tributary-Dlq-Subject";
/// The stream that held the original.
pub const STREAM: &str = "Tributary-Dlq-Stream";
/// The original's stream sequence.
pub const SEQ: &str = "Tributary-Dlq-Seq";
/// The original's `Nats-Msg-Id`, if it had one.
pub const ORIGINAL_MSG_ID: &str = "Tributary-Dlq-Msg-Id";
/// Set when the original was too large to go with the letter's headers (its payload and headers are left
/// out): the payload's size in bytes.
pub const PAYLOAD_OMITTED: &str = "Tributary-Dlq-Payload-Omitted";

/// The prefix of a dead letter's idempotency key (`dlq:<stream>:<seq>`).
pub const LETTER_KEY: &str = "dlq:";
/// The prefix of a replay's idempotency key (`replay:<letter seq>`).
pub const REPLAY_KEY: &str = "replay:";

/// The most bytes of a reason a dead letter keeps: a decoder's message can quote the whole offending
/// value (serde's "invalid type: string …"), which must not make the letter larger than the server takes.
pub const MAX_REASON: usize = 4096;

/// Header values are single lines: fold anything else; at most [`MAX_REASON`] bytes, marked when cut.
fn header_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_REASON + 16));
    for c in s.chars() {
        if out.len() + c.len_utf8() > MAX_REASON {
            out.push_str(" …(cut)");
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out
}

/// Whether a header is NATS's own (`Nats-…`): the pin of a delivery, or a directive to the server about
/// the publish it came with (`Nats-Expected-Stream`, `Nats-Expected-Last-Sequence`, `Nats-Rollup`,
/// `Nats-TTL`, …). Neither belongs to the message: carried onto a dead letter or a replay, a directive is
/// applied to that publish (an expected stream other than the DLQ's refused the letter, so the original
/// came back for ever).
fn is_directive(name: &str) -> bool {
    name.as_bytes().get(..5).is_some_and(|prefix| prefix.eq_ignore_ascii_case(b"nats-"))
}

/// Whether a header is a dead letter's own (`Tributary-Dlq-…`, in any case): never taken from an original,
/// whose publisher could otherwise say what its letter means (a `Tributary-Dlq-Payload-Omitted` of its
/// own made a letter holding its payload read as one without, and replay look for it elsewhere).
fn is_letters(name: &str) -> bool {
    const PREFIX: &[u8] = b"tributary-dlq-";
    name.as_bytes().get(..PREFIX.len()).is_some_and(|prefix| prefix.eq_ignore_ascii_case(PREFIX))
}

/// Sends a dead letter for one message, without the original's NATS headers ([`is_directive`]; its
/// message id is kept as [`ORIGINAL_MSG_ID`]); the returned future resolves once the DLQ stream stored it.
pub async fn send(
    js: &jetstream::Context,
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: Bytes,
    stream: &str,
    seq: u64,
    class: &str,
    reason: &str,
) -> Result<PublishAckFuture, jetstream::context::PublishError> {
    let own = |h: &mut HeaderMap| {
        h.insert(REASON, header_safe(reason).as_str());
        h.insert(CLASS, class);
        h.insert(SUBJECT, subject);
        h.insert(STREAM, stream);
        h.insert(SEQ, seq.to_string().as_str());
        h.insert(MSG_ID, format!("{LETTER_KEY}{stream}:{seq}").as_str());
    };
    let mut h = HeaderMap::new();
    if let Some(orig) = headers {
        for (k, vs) in orig.iter() {
            let name = match k.as_ref() {
                MSG_ID => ORIGINAL_MSG_ID,
                name if is_directive(name) || is_letters(name) => continue,
                name => name,
            };
            for v in vs {
                h.append(name, v.as_str());
            }
        }
    }
    own(&mut h);
    let to = format!("{DLQ_PREFIX}.{subject}");
    match js.send_publish(to.clone(), Publish::build().payload(payload.clone()).headers(h)).await {
        // Refused before sending: the original no longer fits beside the letter's headers. Sending it again
        // would fail again, for ever: the letter goes without the original's payload and headers (replay
        // reads both from the original's stream).
        Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
            let mut h = HeaderMap::new();
            own(&mut h);
            h.insert(PAYLOAD_OMITTED, payload.len().to_string().as_str());
            js.send_publish(to, Publish::build().payload(Bytes::new()).headers(h)).await
        }
        sent => sent,
    }
}

/// One dead letter, as the API lists it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeadLetter {
    /// Sequence in the DLQ stream (what `replay` takes).
    pub seq: u64,
    /// The original subject.
    pub subject: String,
    /// Why it was refused.
    pub reason: String,
    /// `bad_subject`, `undecodable` or `invalid`.
    pub class: String,
    /// When it was dead-lettered.
    pub time: DateTime<Utc>,
    /// The original stream sequence, if known.
    pub original_seq: Option<u64>,
    /// The payload: text when it is UTF-8, else base64; empty when it was left out.
    pub payload: String,
    /// The original payload's size, when the original was too large to keep in the letter (payload and
    /// headers are left out; replay reads them from the original stream), or when a listing had carried
    /// [`LIST_PAYLOAD_BUDGET`] already (payload and headers left out of the listing only).
    pub payload_omitted: Option<u64>,
    /// `utf8` or `base64`.
    pub payload_encoding: &'static str,
    /// The original headers.
    pub headers: BTreeMap<String, String>,
}

impl DeadLetter {
    /// Reads a dead letter back from the DLQ stream.
    pub fn from_stream_message(m: &StreamMessage) -> DeadLetter {
        let get = |k: &str| m.headers.get(k).map(|v| v.as_str().to_owned());
        let subject = get(SUBJECT).unwrap_or_else(|| m.subject.strip_prefix("dlq.").unwrap_or(&m.subject).to_owned());
        let (payload, payload_encoding) = match std::str::from_utf8(&m.payload) {
            Ok(s) => (s.to_owned(), "utf8"),
            Err(_) => (base64(&m.payload), "base64"),
        };
        let headers = m
            .headers
            .iter()
            .filter(|(k, _)| {
                let k: &str = k.as_ref();
                !is_letters(k) && k != MSG_ID
            })
            .map(|(k, v)| (k.to_string(), v.first().map(|v| v.as_str().to_owned()).unwrap_or_default()))
            .collect();
        DeadLetter {
            seq: m.sequence,
            subject,
            reason: get(REASON).unwrap_or_default(),
            class: get(CLASS).unwrap_or_default(),
            time: m.time,
            original_seq: get(SEQ).and_then(|s| s.parse().ok()),
            payload,
            payload_omitted: get(PAYLOAD_OMITTED).and_then(|s| s.parse().ok()),
            payload_encoding,
            headers,
        }
    }
}

/// The headers to republish dead letter `letter_seq` with: the original's (`original`: the letter's, or
/// the original message's own when the letter left them out) but NATS's own ([`is_directive`]: the
/// original idempotency key too, as a replay is a new event), with an idempotency key derived from the
/// dead letter, so a replay requested twice is stored once.
pub fn replay_headers(original: &HeaderMap, letter_seq: u64) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, vs) in original.iter() {
        let name: &str = k.as_ref();
        if is_letters(name) || is_directive(name) || ["traceparent", "tracestate"].contains(&name) {
            continue;
        }
        for v in vs {
            h.append(name, v.as_str());
        }
    }
    h.insert(MSG_ID, format!("{REPLAY_KEY}{letter_seq}").as_str());
    h
}

/// The KV bucket recording each replayed dead letter and where its replay was stored.
pub const REPLAYS: &str = "TRIBUTARY_REPLAYS";

/// Where a dead letter's replay was stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Replayed {
    /// The stream that stored it.
    pub stream: String,
    /// Its sequence there.
    pub seq: u64,
}

/// The replays of the dead letters of one DLQ stream, kept for good: a replay is stored once however
/// often, and however long after, it is asked. (Its idempotency key alone held for the duplicate window:
/// asked again after it, by a retried call or a script, a replay stored the old event again, over
/// whatever had corrected it meanwhile.)
#[derive(Clone)]
pub struct Replays {
    store: async_nats::jetstream::kv::Store,
    prefix: String,
}

impl Replays {
    /// The replays of the letters of `dlq` (its creation time tells a stream made anew, whose sequences
    /// start over), the bucket created if missing.
    pub async fn open(js: &jetstream::Context, dlq: &jetstream::stream::Info) -> Result<Replays, async_nats::Error> {
        let store = crate::kv::bucket(js, REPLAYS, std::time::Duration::ZERO, dlq.config.num_replicas).await?;
        Ok(Replays { store, prefix: format!("{}.{}", dlq.config.name, dlq.created.timestamp()) })
    }

    /// Where letter `seq`'s replay was stored, if it was replayed.
    pub async fn of(&self, seq: u64) -> Result<Option<Replayed>, async_nats::Error> {
        let Some(value) = self.store.get(format!("{}.{seq}", self.prefix)).await? else { return Ok(None) };
        let text = String::from_utf8_lossy(&value);
        let (stream, at) = text.rsplit_once(':').unwrap_or_default();
        Ok(at.parse().ok().map(|seq| Replayed { stream: stream.to_owned(), seq }))
    }

    /// Records that letter `seq`'s replay was stored `at`.
    pub async fn record(&self, seq: u64, at: &Replayed) -> Result<(), async_nats::Error> {
        self.store.put(format!("{}.{seq}", self.prefix), format!("{}:{}", at.stream, at.seq).into()).await?;
        Ok(())
    }
}

/// The most payload and header bytes one listing carries: past it, letters come without their payload (its
/// size in `payload_omitted`) and headers, so a page of letters as large as the server takes is not a
/// gigabyte in memory. (Headers counted too: a page of letters with large headers and small payloads was.)
pub const LIST_PAYLOAD_BUDGET: usize = 4 << 20;

/// The newest `limit` dead letters before sequence `before` (all: `None`), newest first, with at most
/// [`LIST_PAYLOAD_BUDGET`] of payloads and headers.
pub async fn list(
    js: &jetstream::Context,
    cfg: &StreamsConfig,
    limit: usize,
    before: Option<u64>,
) -> Result<Vec<DeadLetter>, async_nats::Error> {
    let mut stream = js.get_stream(cfg.dlq_name()).await?;
    let info = stream.info().await?;
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let mut out = Vec::new();
    let (mut seq, mut budget) = (before.map_or(last, |b| last.min(b.saturating_sub(1))), LIST_PAYLOAD_BUDGET);
    while seq >= first && seq > 0 && out.len() < limit {
        match stream.get_raw_message(seq).await {
            Ok(m) => {
                let mut letter = DeadLetter::from_stream_message(&m);
                let size = letter.payload.len() + letter.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
                if size > budget {
                    letter.payload = String::new();
                    letter.headers.clear();
                    letter.payload_omitted.get_or_insert(m.payload.len() as u64);
                } else {
                    budget -= size;
                }
                out.push(letter);
            }
            Err(e) if removed(&e) => {}
            Err(e) => return Err(e.into()),
        }
        seq -= 1;
    }
    Ok(out)
}

/// Whether a read of a letter failed because retention (or a delete) removed it: it is skipped. Any
/// other failure (NATS not answering) fails the listing; it was taken as removed too, so a listing
/// during a NATS stall was a 200 with letters missing.
fn removed(e: &async_nats::jetstream::stream::RawMessageError) -> bool {
    e.kind() == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    /// A replay carries the message's own headers, not the letter's nor a delivery's: a pinned consumer's
    /// `Nats-Pin-Id` stored with it would later be read as the pin of whichever loop is delivered it, and
    /// the original publish's directives (an expected last sequence, say) would refuse the replay.
    #[test]
    fn a_replay_carries_neither_the_letters_headers_nor_nats_own() {
        use async_nats::header::NATS_PIN_ID as PIN_ID;
        let mut letter = async_nats::HeaderMap::new();
        letter.insert("Content-Type", "application/json");
        letter.insert(super::REASON, "bad");
        letter.insert(super::MSG_ID, "dlq:PRICES:7");
        letter.insert(PIN_ID, "stale-pin");
        letter.insert("nats-expected-last-sequence", "5");
        let replay = super::replay_headers(&letter, 3);
        assert_eq!(replay.get("Content-Type").map(|v| v.as_str()), Some("application/json"));
        assert_eq!(replay.get(super::MSG_ID).map(|v| v.as_str()), Some("replay:3"));
        assert!(replay.get(super::REASON).is_none() && replay.get(PIN_ID).is_none(), "{replay:?}");
        assert_eq!(replay.iter().count(), 2, "{replay:?}");
    }

    #[test]
    fn only_a_removed_letter_is_skipped() {
        use async_nats::jetstream::stream::{RawMessageError, RawMessageErrorKind};
        assert!(super::removed(&RawMessageError::new(RawMessageErrorKind::NoMessageFound)));
        assert!(!super::removed(&RawMessageError::new(RawMessageErrorKind::Other)));
    }

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(b"foobar"), "Zm9vYmFy");
    }
}
