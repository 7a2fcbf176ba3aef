//! `POST /v1/events/{subject}`: validates a JSON event and publishes it to its stream.

use crate::{ApiError, AppState};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use tributary_broker::events::{IndexDefinition, PricePoint};
use tributary_broker::fleet::FleetRecord;
use tributary_broker::metrics::MetricSample;
use tributary_broker::ports::PortRecord;
use tributary_broker::surveys::SurveyRecord;
use tributary_broker::ts::Ts;
use tributary_broker::{Kind, codec, publish};

/// Publishes one event; an `Idempotency-Key` header becomes its `Nats-Msg-Id`.
pub async fn publish(
    State(s): State<AppState>,
    Path(subject): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let kind = Kind::of_subject(&subject).ok_or_else(|| {
        let known: Vec<&str> = Kind::ALL.iter().map(|k| k.shape()).collect();
        ApiError::field(
            "unknown_subject",
            "subject",
            format!("unknown subject {subject:?}: expected one of {}", known.join(", ")),
        )
    })?;
    let bytes = super::body(&s, body).await?;
    let json_headers = publish::headers(None, codec::JSON);
    let now = Ts::new(chrono::Utc::now());
    let checked = match kind {
        Kind::Price => PricePoint::decode(&subject, Some(&json_headers), &bytes, now).map(|_| ()),
        Kind::Index => IndexDefinition::decode(&subject, Some(&json_headers), &bytes).map(|_| ()),
        Kind::Metric => MetricSample::decode(&subject, Some(&json_headers), &bytes, now).map(|_| ()),
        Kind::Port => PortRecord::decode(&subject, Some(&json_headers), &bytes).map(|_| ()),
        Kind::Fleet => FleetRecord::decode(&subject, Some(&json_headers), &bytes).map(|_| ()),
        Kind::Survey => SurveyRecord::decode(&subject, Some(&json_headers), &bytes, now).map(|_| ()),
    };
    checked.map_err(|r| {
        ApiError::bad(if r.class == "bad_subject" { "unknown_subject" } else { "invalid_event" }, r.reason)
    })?;
    let msg_id = headers.get("Idempotency-Key").and_then(|v| v.to_str().ok());
    let ack = publish::publish_one(&s.js, subject.clone(), publish::headers(msg_id, codec::JSON), bytes)
        .await
        .map_err(|e| ApiError::Unavailable(format!("cannot publish to NATS: {e}")))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"subject": subject, "stream": ack.stream, "seq": ack.sequence, "duplicate": ack.duplicate})),
    ))
}
