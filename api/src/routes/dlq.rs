//! `GET /v1/dlq` and `POST /v1/dlq/{seq}/replay`.

use crate::params::{self, Params};
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use tributary_broker::dlq;
use tributary_broker::publish::publish_one;

/// The newest dead letters, newest first.
pub async fn list(State(s): State<AppState>, Query(p): Query<Params>) -> Result<Json<Value>, ApiError> {
    let limit = params::limit(&p, 100, 1000)?;
    let letters = dlq::list(&s.js, &s.streams, limit as usize)
        .await
        .map_err(|e| ApiError::Unavailable(format!("cannot read the dead-letter stream: {e}")))?;
    Ok(Json(json!({"dead_letters": letters})))
}

/// Republishes one dead letter to its original subject.
pub async fn replay(State(s): State<AppState>, Path(seq): Path<String>) -> Result<(StatusCode, Json<Value>), ApiError> {
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
    let ack = publish_one(&s.js, letter.subject.clone(), dlq::replay_headers(&m), m.payload.clone())
        .await
        .map_err(|e| ApiError::Unavailable(format!("cannot publish to NATS: {e}")))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"subject": letter.subject, "stream": ack.stream, "seq": ack.sequence, "duplicate": ack.duplicate})),
    ))
}
