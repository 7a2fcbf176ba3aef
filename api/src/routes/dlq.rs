//! `GET /v1/dlq` and `POST /v1/dlq/{seq}/replay`.

use super::events::Published;
use crate::error::ErrorBody;
use crate::params::{self, Params};
use crate::{ApiError, AppState};
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::RawMessageErrorKind;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use tributary_broker::dlq;
use tributary_broker::publish::publish_one;
use utoipa::ToSchema;

/// The newest dead letters.
#[derive(Serialize, ToSchema)]
pub struct DeadLetters {
    /// Newest first.
    #[schema(value_type = Vec<DeadLetter>)]
    pub dead_letters: Vec<dlq::DeadLetter>,
}

/// One dead letter, as [`dlq::DeadLetter`] serializes it.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct DeadLetter {
    /// Sequence in the DLQ stream (what replay takes).
    #[schema(minimum = 1)]
    seq: u64,
    /// The original subject.
    subject: String,
    /// Why it was refused.
    reason: String,
    /// `bad_subject`, `undecodable`, `invalid`, `expired` or `processing_failed`.
    class: String,
    /// When it was dead-lettered.
    time: DateTime<Utc>,
    /// The original stream sequence, if known.
    original_seq: Option<u64>,
    /// The payload: text when it is UTF-8, else base64; empty when it was left out.
    payload: String,
    /// The original payload's size in bytes, when the original was too large to keep beside the dead
    /// letter's headers (payload and headers are left out, and replay reads them from the original
    /// stream), or when this listing had carried 4 MiB of payloads and headers already (both left out of
    /// the listing only).
    payload_omitted: Option<u64>,
    /// How the payload is written.
    payload_encoding: PayloadEncoding,
    /// The original headers.
    headers: BTreeMap<String, String>,
}

/// `utf8` or `base64`.
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "lowercase")]
pub enum PayloadEncoding {
    /// The payload as text.
    Utf8,
    /// The payload's bytes in base64.
    Base64,
}

/// The newest dead letters, newest first; `before` pages back.
#[utoipa::path(get, path = "/v1/dlq", tag = "dlq", operation_id = "listDeadLetters",
    summary = "Newest dead letters, newest first",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "1 to 1000, default 100"),
        ("before" = Option<i64>, Query, minimum = 1,
            description = "Only letters with a smaller seq: the last seq of a page gives the next page"),
    ),
    responses(
        (status = 200, description = "Dead letters", body = DeadLetters),
        (status = 503, description = "The dead-letter stream cannot be read", body = ErrorBody),
    ))]
pub async fn list(State(s): State<AppState>, Query(p): Query<Params>) -> Result<Json<DeadLetters>, ApiError> {
    let limit = params::limit(&p, 100, 1000)?;
    let before = match p.get("before") {
        None => None,
        Some(v) => Some(v.trim().parse::<i64>().ok().filter(|&n| n > 0).map(|n| n as u64).ok_or_else(|| {
            ApiError::field("invalid_before", "before", format!("before must be a positive whole number, got {v:?}"))
        })?),
    };
    let letters = dlq::list(&s.js, &s.streams, limit as usize, before)
        .await
        .map_err(|e| ApiError::Unavailable(format!("cannot read the dead-letter stream: {e}")))?;
    Ok(Json(DeadLetters { dead_letters: letters }))
}

/// Republishes one dead letter to its original subject.
#[utoipa::path(post, path = "/v1/dlq/{seq}/replay", tag = "dlq", operation_id = "replayDeadLetter",
    summary = "Republish a dead letter to its original subject",
    description = "A letter is republished once, however often and however long after it is asked: asked again, \
        the answer is the first replay's stream and sequence with `duplicate: true`.",
    params(("seq" = u64, Path, minimum = 1, description = "Sequence in the DLQ stream")),
    responses(
        (status = 202, description = "Republished (or republished before: `duplicate`)", body = Published),
        (status = 404, description = "No such dead letter", body = ErrorBody),
        (status = 409, description = "The dead letter's subject is no event subject: a replay would be refused again (`not_replayable`)", body = ErrorBody),
        (status = 410, description = "The dead letter left its original out and the original's stream no longer holds it", body = ErrorBody),
        (status = 413, description = "The original with the replay's idempotency key is larger than the NATS server takes (`exceeds_max_payload`)", body = ErrorBody),
        crate::openapi::NatsUnavailable,
    ))]
pub async fn replay(
    State(s): State<AppState>,
    Path(seq): Path<String>,
) -> Result<(StatusCode, Json<Published>), ApiError> {
    let seq: u64 = seq.parse().ok().filter(|&n: &u64| n > 0).ok_or_else(|| {
        ApiError::field("invalid_seq", "seq", format!("seq must be a positive whole number, got {seq:?}"))
    })?;
    let stream =
        s.js.get_stream(s.streams.dlq_name())
            .await
            .map_err(|e| ApiError::Unavailable(format!("cannot open the dead-letter stream: {e}")))?;
    let m = stream.get_raw_message(seq).await.map_err(|e| match e.kind() {
        RawMessageErrorKind::NoMessageFound => ApiError::NotFound(format!("no dead letter with seq {seq}")),
        _ => ApiError::Unavailable(format!("cannot read dead letter {seq}: {e}")),
    })?;
    let letter = dlq::DeadLetter::from_stream_message(&m);
    // To the subject its publisher wrote, not the partition's the stream made of it: the stream partitions it
    // again by the count it has now (a partition's subject is not one it takes).
    let subject = tributary_broker::kind::published_subject(&letter.subject).into_owned();
    if let Err(why) = tributary_broker::kind::parse_subject(&subject) {
        return Err(ApiError::NotReplayable(format!("dead letter {seq} cannot be replayed: {why}")));
    }
    // Replayed before, however long ago: that replay, not another.
    let replays = dlq::Replays::open(&s.js, stream.cached_info())
        .await
        .map_err(|e| ApiError::Unavailable(format!("cannot read the replays of dead letters: {e}")))?;
    let before = replays
        .of(seq)
        .await
        .map_err(|e| ApiError::Unavailable(format!("cannot read dead letter {seq}'s replay: {e}")))?;
    if let Some(r) = before {
        return Ok((StatusCode::ACCEPTED, Json(Published { duplicate: true, seq: r.seq, stream: r.stream, subject })));
    }
    let (payload, headers) = match letter.payload_omitted {
        None => (m.payload.clone(), dlq::replay_headers(&m.headers, m.sequence)),
        Some(_) => {
            let original = original_of(&s, &m, &letter).await?;
            (original.payload, dlq::replay_headers(&original.headers, m.sequence))
        }
    };
    let ack = publish_one(&s.js, subject.clone(), headers, payload).await.map_err(|e| {
        super::not_published(&format!("dead letter {seq}'s original with the replay's idempotency key"), e)
    })?;
    // Not recorded (NATS gone since the publish): the idempotency key still holds for the duplicate window.
    let at = dlq::Replayed { stream: ack.stream.clone(), seq: ack.sequence };
    if let Err(e) = replays.record(seq, &at).await {
        tracing::warn!(seq, error = %e, "replayed dead letter not recorded: a replay asked again after the duplicate window would store it again");
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(Published { duplicate: ack.duplicate, seq: ack.sequence, stream: ack.stream, subject }),
    ))
}

/// The original of a dead letter that left it out, from the original's stream: 410 when that no longer
/// holds it (aged out, deleted, or the stream made anew and the sequence now another message's).
async fn original_of(
    s: &AppState,
    letter: &StreamMessage,
    parsed: &dlq::DeadLetter,
) -> Result<StreamMessage, ApiError> {
    let header = |k: &str| letter.headers.get(k).map(|v| v.as_str().to_owned());
    let seq = letter.sequence;
    let (Some(stream), Some(at)) = (header(dlq::STREAM), parsed.original_seq) else {
        return Err(ApiError::Gone(format!("dead letter {seq} left its original out and does not say where it is")));
    };
    let gone = || {
        ApiError::Gone(format!(
            "dead letter {seq} left its original out (too large) and stream {stream} no longer holds it at seq {at}"
        ))
    };
    let unavailable = |e: String| ApiError::Unavailable(format!("cannot read the original of dead letter {seq}: {e}"));
    let original = match s.js.get_stream(&stream).await {
        Ok(o) => o,
        Err(e) if tributary_broker::streams::missing(&e) => return Err(gone()),
        Err(e) => return Err(unavailable(e.to_string())),
    };
    match original.get_raw_message(at).await {
        Ok(m) if m.subject.as_str() == parsed.subject => Ok(m),
        Ok(_) => Err(gone()),
        Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Err(gone()),
        Err(e) => Err(unavailable(e.to_string())),
    }
}
