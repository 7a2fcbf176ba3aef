//! `POST /v1/events/<kind>.<key>`: validates a JSON event and publishes it to its stream.
//!
//! One operation per kind of subject, each with its payload's schema (see `crate::openapi::events`); a
//! subject of no kind (`/v1/events/nope.x`) reaches [`unknown`] through the router's fallback and is
//! answered 400 `unknown_subject`, naming the kinds.

use crate::{ApiError, AppState};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;
use tributary_broker::events::{IndexDefinition, PricePoint};
use tributary_broker::fleet::FleetRecord;
use tributary_broker::ports::PortRecord;
use tributary_broker::samples::ServerSample;
use tributary_broker::surveys::SurveyRecord;
use tributary_broker::ts::Ts;
use tributary_broker::{Kind, codec, publish};
use utoipa::{IntoParams, ToSchema};

/// Where a message was stored.
#[derive(Serialize, ToSchema)]
pub struct Published {
    /// Whether the stream already held a message with this idempotency key (it was not stored again).
    pub duplicate: bool,
    /// The message's sequence in its stream.
    pub seq: u64,
    /// The stream.
    pub stream: String,
    /// The subject.
    pub subject: String,
}

/// `Idempotency-Key`.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub(crate) struct Idempotency {
    /// Becomes the Nats-Msg-Id: a repeat within the duplicate window is not stored twice. Keys starting
    /// `replay:` or `dlq:` are Tributary's own (a dead letter's replay, a dead letter).
    #[param(rename = "Idempotency-Key")]
    idempotency_key: Option<String>,
}

type Answer = Result<(StatusCode, Json<Published>), ApiError>;

/// The prefixes of the idempotency keys Tributary gives its own publishes that a client's key could take:
/// a dead letter's replay and a dead letter.
const RESERVED_KEYS: [&str; 2] = [tributary_broker::dlq::REPLAY_KEY, tributary_broker::dlq::LETTER_KEY];

/// Validates one event for `subject` and publishes it; an `Idempotency-Key` header becomes its
/// `Nats-Msg-Id`.
async fn publish(s: AppState, subject: String, headers: HeaderMap, body: Body) -> Answer {
    let kind = Kind::of_subject(&subject).ok_or_else(|| {
        let known: Vec<&str> = Kind::ALL.iter().map(|k| k.shape()).collect();
        ApiError::field(
            "unknown_subject",
            "subject",
            format!("unknown subject {subject:?}: expected one of {}", known.join(", ")),
        )
    })?;
    // Its shape: a partition's subject (`price.p.3.ACME`) is the stream's own, and no stream takes it.
    tributary_broker::kind::parse_subject(&subject)
        .map_err(|why| ApiError::field("unknown_subject", "subject", why))?;
    // A key that is not plain text would be dropped, and the retries it was meant to make safe stored twice.
    let msg_id = headers.get("Idempotency-Key").map(|v| v.to_str()).transpose().map_err(|_| {
        ApiError::field(
            "invalid_idempotency_key",
            "Idempotency-Key",
            "the Idempotency-Key header must be printable ASCII",
        )
    })?;
    // Taken, a dead letter's replay would be dropped as a repeat of this event and recorded as done.
    if let Some(own) = msg_id.filter(|k| RESERVED_KEYS.iter().any(|p| k.starts_with(p))) {
        return Err(ApiError::field(
            "invalid_idempotency_key",
            "Idempotency-Key",
            format!("{own:?}: keys starting with {} are Tributary's own", RESERVED_KEYS.join(" or ")),
        ));
    }
    let bytes = super::body(&s, body).await?;
    let json_headers = publish::headers(None, codec::JSON);
    let now = Ts::new(chrono::Utc::now());
    let checked = match kind {
        Kind::Price => PricePoint::decode(&subject, Some(&json_headers), &bytes, now).map(|_| ()),
        Kind::Index => IndexDefinition::decode(&subject, Some(&json_headers), &bytes).map(|_| ()),
        Kind::Sample => ServerSample::decode(&subject, Some(&json_headers), &bytes, now).map(|_| ()),
        Kind::Port => PortRecord::decode(&subject, Some(&json_headers), &bytes).map(|_| ()),
        Kind::Fleet => FleetRecord::decode(&subject, Some(&json_headers), &bytes).map(|_| ()),
        Kind::Survey => SurveyRecord::decode(&subject, Some(&json_headers), &bytes, now).map(|_| ()),
    };
    checked.map_err(|r| {
        ApiError::bad(if r.class == "bad_subject" { "unknown_subject" } else { "invalid_event" }, r.reason)
    })?;
    let ack = publish::publish_one(&s.js, subject.clone(), publish::headers(msg_id, codec::JSON), bytes)
        .await
        .map_err(|e| super::not_published("the event with its headers", e))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Published { duplicate: ack.duplicate, seq: ack.sequence, stream: ack.stream, subject }),
    ))
}

/// A subject of no kind (the fallback of `POST /v1/events/{subject}`): 400 `unknown_subject`.
pub async fn unknown(s: AppState, subject: String, headers: HeaderMap, body: Body) -> Answer {
    publish(s, subject, headers, body).await
}

/// One route per kind: the handler, its path, the key's name and the payload's schema.
macro_rules! event_route {
    ($handler:ident, $op:literal, $path:literal, $key:literal, $prefix:literal, $schema:literal, $summary:literal) => {
        #[utoipa::path(post, path = $path, tag = "events", operation_id = $op, summary = $summary,
                    params(
                        ($key = String, Path, max_length = 128,
                            pattern = "^[^.*>\\x00-\\x20\\x7f-\\xa0\u{1680}\u{2000}-\u{200a}\u{2028}\u{2029}\u{202f}\u{205f}\u{3000}]+$",
                            description = "The key: one subject token (no '.', '*', '>', whitespace or control character), at most 128 characters"),
                        Idempotency,
                    ),
                    request_body(content = ref($schema), content_type = "application/json"),
                    responses(
                        (status = 202, description = "Stored in the stream", body = Published),
                        crate::openapi::Publishing,
                    ))]
        pub async fn $handler(
            State(s): State<AppState>,
            Path(key): Path<String>,
            headers: HeaderMap,
            body: Body,
        ) -> Answer {
            publish(s, format!(concat!($prefix, "{}"), key), headers, body).await
        }
    };
}

event_route!(
    price,
    "publishPrice",
    "/v1/events/price.{instrument}",
    "instrument",
    "price.",
    "#/components/schemas/PriceEvent",
    "Publish a price of one instrument"
);
event_route!(
    index,
    "publishIndex",
    "/v1/events/index.{name}",
    "name",
    "index.",
    "#/components/schemas/IndexDefinition",
    "Publish an index definition (PUT /v1/indices/{name} waits for it)"
);
event_route!(
    metric,
    "publishMetric",
    "/v1/events/metric.{host}",
    "host",
    "metric.",
    "#/components/schemas/SampleEvent",
    "Publish a server's metric sample"
);
event_route!(
    port,
    "publishPort",
    "/v1/events/port.{unlocode}",
    "unlocode",
    "port.",
    "#/components/schemas/PortEvent",
    "Publish a port"
);
event_route!(
    driver,
    "publishDriver",
    "/v1/events/fleet.driver.{driver_id}",
    "driver_id",
    "fleet.driver.",
    "#/components/schemas/DriverEvent",
    "Publish a driver (or its removal)"
);
event_route!(
    shipment,
    "publishShipment",
    "/v1/events/fleet.shipment.{shipment_id}",
    "shipment_id",
    "fleet.shipment.",
    "#/components/schemas/ShipmentEvent",
    "Publish a shipment (or its removal)"
);
event_route!(
    survey,
    "publishSurvey",
    "/v1/events/survey.{provider}",
    "provider",
    "survey.",
    "#/components/schemas/SurveyEvent",
    "Publish a survey item or a pull's outcome"
);
