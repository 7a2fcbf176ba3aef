//! `GET /v1/dlq` and `POST /v1/dlq/{seq}/replay`.

use super::events::Published;
use crate::error::ErrorBody;
use crate::params::{self, Params};
use crate::{ApiError, AppState};
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
    /// The original payload's size in bytes, when it was too large to keep beside the dead letter's
    /// headers (replay reads it from the original stream).
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

/// The newest dead letters, newest first.
#[utoipa::path(get, path = "/v1/dlq", tag = "dlq", operation_id = "listDeadLetters",
    summary = "Newest dead letters, newest first",
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "1 to 1000, default 100")),
    responses(
        (status = 200, description = "Dead letters", body = DeadLetters),
        (status = 503, description = "The dead-letter stream cannot be read", body = ErrorBody),
    ))]
pub async fn list(State(s): State<AppState>, Query(p): Query<Params>) -> Result<Json<DeadLetters>, ApiError> {
    let limit = params::limit(&p, 100, 1000)?;
    let letters = dlq::list(&s.js, &s.streams, limit as usize)
        .await
        .map_err(|e| ApiError::Unavailable(format!("cannot read the dead-letter stream: {e}")))?;
    Ok(Json(DeadLetters { dead_letters: letters }))
}

/// Republishes one dead letter to its original subject.
#[utoipa::path(post, path = "/v1/dlq/{seq}/replay", tag = "dlq", operation_id = "replayDeadLetter",
    summary = "Republish a dead letter to its original subject",
    params(("seq" = u64, Path, minimum = 1, description = "Sequence in the DLQ stream")),
    responses(
        (status = 202, description = "Republished", body = Published),
        (status = 404, description = "No such dead letter", body = ErrorBody),
        (status = 410, description = "The dead letter left its payload out and its original is no longer stored", body = ErrorBody),
        (status = 503, description = "NATS is unavailable", body = ErrorBody),
    ))]
pub async fn replay(
    State(s): State<AppState>,
    Path(seq): Path<String>,
) -> Result<(StatusCode, Json<Published>), ApiError> {
    let seq: u64 = seq.parse().map_err(|_| {
        ApiError::field("invalid_seq", "seq", format!("seq must be a positive whole number, got {seq:?}"))
    })?;
    let stream =
        s.js.get_stream(s.streams.dlq_name())
            .await
            .map_err(|e| ApiError::Unavailable(format!("cannot open the dead-letter stream: {e}")))?;
    let m =
        stream.get_raw_message(seq).await.map_err(|_| ApiError::NotFound(format!("no dead letter with seq {seq}")))?;
    let letter = dlq::DeadLetter::from_stream_message(&m);
    let payload = match letter.payload_omitted {
        None => m.payload.clone(),
        Some(_) => original_payload(&s, &m).await?,
    };
    let ack = publish_one(&s.js, letter.subject.clone(), dlq::replay_headers(&m), payload)
        .await
        .map_err(|e| ApiError::Unavailable(format!("cannot publish to NATS: {e}")))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Published { duplicate: ack.duplicate, seq: ack.sequence, stream: ack.stream, subject: letter.subject }),
    ))
}

/// The payload a dead letter left out, read from the original's stream; 410 when it is no longer there.
async fn original_payload(
    s: &AppState,
    letter: &async_nats::jetstream::message::StreamMessage,
) -> Result<bytes::Bytes, ApiError> {
    let header = |k: &str| letter.headers.get(k).map(|v| v.as_str().to_owned());
    let (Some(stream), Some(seq)) = (header(dlq::STREAM), header(dlq::SEQ).and_then(|s| s.parse::<u64>().ok())) else {
        return Err(ApiError::Gone(format!(
            "dead letter {} left its payload out and does not name its original",
            letter.sequence
        )));
    };
    let gone = || {
        ApiError::Gone(format!(
            "dead letter {} left its payload out (too large) and its original, stream {stream} seq {seq}, is no longer stored",
            letter.sequence
        ))
    };
    let original = s.js.get_stream(&stream).await.map_err(|_| gone())?;
    match original.get_raw_message(seq).await {
        Ok(m) => Ok(m.payload),
        Err(e) if e.kind() == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound => Err(gone()),
        Err(e) => {
            Err(ApiError::Unavailable(format!("cannot read the original of dead letter {}: {e}", letter.sequence)))
        }
    }
}
