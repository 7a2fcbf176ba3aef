//! `GET /v1/status`: the processor group as it stands: its members, and each partition's owner and lag.

use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::State;
use serde::Serialize;
use tributary_broker::Kind;
use tributary_broker::consume::processor_consumers;
use tributary_broker::group::{self, Group};
use utoipa::ToSchema;

/// The processor group.
#[derive(Serialize, ToSchema)]
pub struct Status {
    /// The processor processes alive, by the order they joined.
    pub members: Vec<group::Member>,
    /// Every partition of the partitioned kinds (none when `processor.partitions` is 1).
    pub partitions: Vec<Partition>,
}

/// One partition: its consumer, owner and lag.
#[derive(Serialize, ToSchema)]
pub struct Partition {
    /// `price` or `metric`.
    pub kind: String,
    /// Its number, from 0.
    pub partition: u32,
    /// Its durable consumer, e.g. `processor-price-p3`.
    pub consumer: String,
    /// The member consuming it; null while none does (its owner died and the others have not yet taken
    /// it over).
    pub owner: Option<String>,
    /// Messages not yet acked: `waiting` + `unacked`.
    #[schema(minimum = 0)]
    pub pending: u64,
    /// Messages not yet delivered.
    #[schema(minimum = 0)]
    pub waiting: u64,
    /// Messages delivered and not yet acked.
    #[schema(minimum = 0)]
    pub unacked: u64,
    /// Seconds since the oldest message not yet acked was stored; 0 when none.
    #[schema(minimum = 0)]
    pub oldest_unacked_secs: f64,
}

#[utoipa::path(get, path = "/v1/status", tag = "operations", operation_id = "status",
    summary = "The processor group: members, and each partition's owner and lag",
    responses((status = 200, description = "The group as it stands", body = Status)))]
pub async fn status(State(s): State<AppState>) -> Result<Json<Status>, ApiError> {
    // What NATS cannot tell is a 503: an empty group or a partition without lag would look healthy.
    let unavailable = |what: &str, e: &dyn std::fmt::Display| ApiError::Unavailable(format!("cannot read {what}: {e}"));
    let members =
        match Group::open(&s.js, &s.durable_prefix).await.map_err(|e| unavailable("the processor group", &e))? {
            Some(g) => g.members().await.map_err(|e| unavailable("the processor group", &e))?,
            None => Vec::new(),
        };
    let mut partitions = Vec::new();
    for kind in Kind::ALL.into_iter().filter(|k| k.partitioned()) {
        let name = s.streams.stream_name(kind);
        let stream = match s.js.get_stream(&name).await {
            Ok(stream) => stream,
            Err(e) if tributary_broker::streams::missing(&e) => continue,
            Err(e) => return Err(unavailable(&format!("stream {name}"), &e)),
        };
        for (consumer, filter, partition) in processor_consumers(&s.durable_prefix, kind, s.partitions) {
            let Some(partition) = partition else { continue };
            let lag = group::lag(&stream, &consumer, &filter)
                .await
                .map_err(|e| unavailable(&format!("consumer {consumer}"), &e))?
                .unwrap_or_default();
            let owner = members.iter().find(|m| m.owns.contains(&consumer)).map(|m| m.id.clone());
            partitions.push(Partition {
                kind: kind.prefix().to_owned(),
                partition,
                consumer,
                owner,
                pending: lag.pending(),
                waiting: lag.waiting,
                unacked: lag.unacked,
                oldest_unacked_secs: lag.oldest_unacked.as_secs_f64(),
            });
        }
    }
    Ok(Json(Status { members, partitions }))
}
