//! Surveys: `GET /v1/surveys?limit=&device=&location=&fresh=`.
//!
//! With `fresh=true` the read first asks the aggregator for a pull round that asks every provider after
//! the read came (the round in flight if it has not asked them yet, else the one after it), then waits
//! until the processor has committed everything in the SURVEYS stream, so the answer holds every item the
//! providers had when the read came. Without it, it answers from what is stored.

use crate::error::ErrorBody;
use crate::params::{self, Params};
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::{Query, State};
use serde::Serialize;
use std::time::Instant;
use tributary_aggregator::{RoundReport, SYNC_SUBJECT};
use tributary_broker::Kind;
use tributary_store::surveys;
use utoipa::ToSchema;

/// `fresh` of surveys, which pulls first.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct FreshRound {
    /// true: wait for a pull round that asks every provider after the read came (shared with concurrent
    /// reads), then until the processor committed what it found; 503 when no aggregator runs, 504 past
    /// api.fresh_timeout_ms.
    #[param(default = false)]
    fresh: Option<bool>,
}

/// Survey items with each provider's latest pull.
#[derive(Serialize, ToSchema)]
pub struct Surveys {
    /// Newest first.
    pub items: Vec<surveys::Item>,
    /// By name.
    pub providers: Vec<surveys::Provider>,
    /// With fresh=true: the pull round this read waited for (shared with every read that arrived while it
    /// was in flight).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub round: Option<Round>,
}

/// A pull round.
#[derive(Serialize, ToSchema)]
pub struct Round {
    /// Each provider's outcome.
    pub providers: Vec<RoundProvider>,
    /// The round's number in its aggregator (from 1).
    pub round: u64,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// How long it took, in milliseconds.
    pub took_ms: f64,
}

/// One provider's outcome in a round.
#[derive(Serialize, ToSchema)]
pub struct RoundProvider {
    /// The highest provider id published so far.
    pub cursor: i64,
    /// What went wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Items published this round.
    pub items: u64,
    /// The provider.
    pub provider: String,
    /// `ok`, `timeout`, `unreachable` or `error`.
    pub status: String,
}

impl From<RoundReport> for Round {
    fn from(r: RoundReport) -> Self {
        Round {
            providers: r
                .providers
                .into_iter()
                .map(|p| RoundProvider {
                    cursor: p.cursor,
                    error: p.error,
                    items: p.items,
                    provider: p.provider,
                    status: p.status,
                })
                .collect(),
            round: r.round,
            started_at: r.started_at,
            took_ms: r.took_ms,
        }
    }
}

/// Items, newest first, with each provider's latest pull.
#[utoipa::path(get, path = "/v1/surveys", tag = "surveys", operation_id = "listSurveys",
    summary = "Survey items pulled from every provider, newest first; fresh=true pulls first (fully synced)",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 10000,
            description = "At most this many items (1 to 10000, default 100)."),
        ("device" = Option<String>, Query, description = "Exact device."),
        ("location" = Option<String>, Query, description = "Exact location."),
        FreshRound,
    ),
    responses(
        (status = 200, description = "Items and each provider's latest pull", body = Surveys),
        (status = 503, description = "No aggregator runs (fresh=true)", body = ErrorBody),
        crate::openapi::Stale,
    ))]
pub async fn list(State(s): State<AppState>, Query(p): Query<Params>) -> Result<Json<Surveys>, ApiError> {
    let limit = params::limit(&p, 100, 10_000)?;
    let round = if crate::sync::fresh(&p)? {
        let deadline = Instant::now() + s.fresh_timeout();
        let report = round(&s).await?;
        crate::sync::committed(&s, &[Kind::Survey], deadline).await?;
        Some(report)
    } else {
        None
    };
    let filter = surveys::ItemFilter { device: p.get("device").cloned(), location: p.get("location").cloned() };
    let items = surveys::items(s.pool(), &filter, limit as i64).await?;
    let providers = surveys::providers(s.pool()).await?;
    Ok(Json(Surveys { items, providers, round: round.map(Round::from) }))
}

/// Asks the aggregator for a round and waits for its report.
async fn round(s: &AppState) -> Result<RoundReport, ApiError> {
    let ask = s.nats.request(SYNC_SUBJECT, "{}".into());
    let reply = match tokio::time::timeout(s.fresh_timeout(), ask).await {
        Err(_) => {
            return Err(ApiError::Timeout("the aggregator's round did not finish within the fresh timeout".into()));
        }
        Ok(Err(e)) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => {
            return Err(ApiError::Unavailable("no aggregator is running to pull the providers".into()));
        }
        Ok(Err(e)) if e.kind() == async_nats::client::RequestErrorKind::TimedOut => {
            return Err(ApiError::Timeout("the aggregator's round did not finish in time".into()));
        }
        Ok(Err(e)) => return Err(ApiError::Unavailable(format!("cannot reach the aggregator: {e}"))),
        Ok(Ok(m)) => m,
    };
    serde_json::from_slice(&reply.payload)
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("decoding the aggregator's round report")))
}
