//! The OpenAPI document, generated from the code: each route's `#[utoipa::path]` (registered with the
//! route itself by `utoipa_axum::routes!`, so a route cannot be served undocumented or documented
//! unserved), the request and response types' derived schemas, and what the middleware and this
//! server's settings add to every operation (see [`finish`]). Served at `/openapi.json`, rendered at
//! `/docs`.

mod events;

use crate::error::ErrorBody;
use crate::{ApiConfig, auth};
use serde_json::json;
use tributary_store::RollupConfig;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{AnyOfBuilder, KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::{IntoParams, OpenApi};

/// The document's fixed parts; the paths come from the routes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tributary API",
        description = "Derived time series from events on NATS JetStream, stored in PostgreSQL. Reads come from \
            PostgreSQL; writes are published to NATS. Errors are JSON: {\"error\": {\"code\", \"message\", \
            \"field\"?}}. When the API is configured with tokens (api.write_tokens, api.read_tokens), writes need \
            Authorization: Bearer <write token> (401 unauthorized without a known token, 403 forbidden with a read \
            token); reads need a token only with api.require_read_token. The operations' `security` and their 401 \
            and 403 responses say what this server's settings enforce."
    ),
    components(schemas(ErrorBody, crate::live::LiveSample, crate::uploads::Status)),
    tags(
        (name = "series", description = "Price series and their derived values"),
        (name = "metrics", description = "Server metrics: latest samples, raw series and rollups"),
        (name = "live", description = "Committed metric samples as they are committed"),
        (name = "uploads", description = "Files streamed through an importer, with progress"),
        (name = "ports", description = "Ports by UN/LOCODE, name, country and distance"),
        (name = "fleet", description = "The optimal assignment of shipments to drivers"),
        (name = "surveys", description = "Survey items pulled from providers"),
        (name = "indices", description = "Weighted indices over price series"),
        (name = "events", description = "Publishing one event to its stream"),
        (name = "dlq", description = "The dead-letter stream"),
        (name = "operations", description = "Probes, metrics and the pages"),
    )
)]
pub(crate) struct ApiDoc;

/// `fresh`, taken by reads that can wait for the processors.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct Fresh {
    /// true: answer only after the processors have committed everything that was in the streams this read
    /// depends on when the request arrived (504 sync_timeout after api.fresh_timeout_ms).
    #[param(default = false)]
    fresh: Option<bool>,
}

/// `from`, `to`, `limit` and `fresh`, taken by the reads of one series: the newest `limit` points in range.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct Newest {
    /// Start (inclusive): RFC 3339, YYYY-MM-DD or epoch milliseconds. A range whose start is after its end
    /// holds nothing.
    #[param(schema_with = timestamp)]
    from: Option<String>,
    /// End (inclusive), same forms as from.
    #[param(schema_with = timestamp)]
    to: Option<String>,
    /// Keep the newest N in range (1 to 100000, default 1000).
    #[param(minimum = 1, maximum = 100000)]
    limit: Option<u32>,
    /// true: answer only after the processors have committed everything that was in the streams this read
    /// depends on when the request arrived (504 sync_timeout after api.fresh_timeout_ms).
    #[param(default = false)]
    fresh: Option<bool>,
}

/// `after`, `limit` and `fresh`, taken by listings: a page of rows by key.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct Page {
    /// Only the rows whose key comes after this one: the `next` of the page before.
    after: Option<String>,
    /// At most this many rows (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// true: answer only after the processors have committed everything that was in the streams this read
    /// depends on when the request arrived (504 sync_timeout after api.fresh_timeout_ms).
    #[param(default = false)]
    fresh: Option<bool>,
}

/// `limit` and `fresh`, taken by reads of the first rows of a ranking (the countries with the most ports).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct Top {
    /// At most this many rows (1 to 10000, default 1000).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<u32>,
    /// true: answer only after the processors have committed everything that was in the streams this read
    /// depends on when the request arrived (504 sync_timeout after api.fresh_timeout_ms).
    #[param(default = false)]
    fresh: Option<bool>,
}

/// The answer of a read that can wait for the processors and found nothing else wrong.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(crate) enum Stale {
    /// A fresh read's wait ran out
    #[response(status = 504)]
    Timeout(ErrorBody),
}

/// The errors of a read of one thing by name that can wait for the processors.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(crate) enum Lookup {
    /// Nothing by that name
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// A fresh read's wait ran out
    #[response(status = 504)]
    Timeout(ErrorBody),
}

/// The errors of a route that publishes the request's body to a stream.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(crate) enum Publishing {
    /// The body is larger than api.max_body_bytes (`payload_too_large`), or with its headers larger than the NATS server takes (`exceeds_max_payload`)
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// NATS is unavailable
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// The error of a route that needs NATS when NATS does not answer.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(crate) enum NatsUnavailable {
    /// NATS is unavailable
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// `from` and `to` of rollups, which bound bucket starts.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct BucketRange {
    /// Earliest bucket start (inclusive); same forms as for series.
    #[param(schema_with = timestamp)]
    from: Option<String>,
    /// Latest bucket start (inclusive).
    #[param(schema_with = timestamp)]
    to: Option<String>,
}

/// A time as the API takes it: RFC 3339, `YYYY-MM-DD` or epoch milliseconds.
pub(crate) fn timestamp() -> RefOr<Schema> {
    let string =
        |format| ObjectBuilder::new().schema_type(Type::String).format(Some(SchemaFormat::KnownFormat(format)));
    // The years 0000 to 9999 (what RFC 3339 writes), in milliseconds.
    let millis = ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(tributary_broker::ts::MIN_MILLIS))
        .maximum(Some(tributary_broker::ts::MAX_MILLIS));
    let any_of = AnyOfBuilder::new()
        .item(string(KnownFormat::DateTime))
        .item(string(KnownFormat::Date))
        .item(millis)
        .description(Some("RFC 3339, YYYY-MM-DD or epoch milliseconds, in the years 0000 to 9999"));
    RefOr::T(Schema::AnyOf(any_of.build()))
}

/// The document this server serves, as JSON text: the routes' paths with what every route shares
/// (400 `invalid_url` and 503 `request_timeout` from the middleware, the bearer tokens this server's
/// settings ask for) and the rollup widths it is configured with.
pub(crate) fn finish(doc: utoipa::openapi::OpenApi, config: &ApiConfig, rollups: &RollupConfig) -> String {
    let mut doc = serde_json::to_value(doc).expect("an OpenAPI document is JSON");
    let error = json!({"$ref": "#/components/responses/Error"});
    doc["components"]["responses"] = json!({"Error": {
        "description": "An error: {\"error\": {\"code\", \"message\", \"field\"?}}",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }});
    doc["components"]["securitySchemes"] = json!({"bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "A token from api.write_tokens (writes and reads) or api.read_tokens (reads). Without \
            tokens configured the API is open.",
    }});
    for (name, schema) in events::schemas() {
        doc["components"]["schemas"][name] = schema;
    }
    let tokens = auth::Auth::new(config);
    let widths: Vec<String> = rollups.width_names();
    let Some(paths) = doc["paths"].as_object_mut() else { return doc.to_string() };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else { continue };
        for (method, op) in item.iter_mut() {
            let Some(responses) = op.get_mut("responses").and_then(|r| r.as_object_mut()) else { continue };
            // The middleware's answers, whatever the route.
            for status in ["400", "503"] {
                responses.entry(status).or_insert_with(|| error.clone());
            }
            // A JSON body is required (an empty one is not JSON); an upload may be empty.
            if let Some(body) = op.get_mut("requestBody") {
                body["required"] = json!(body["content"].get("application/json").is_some());
            }
            // A stream's events: `event` and `data` (the JSON of one item).
            if let Some(sse) = op.pointer_mut("/responses/200/content/text~1event-stream") {
                let (events, item) = match path.as_str() {
                    "/v1/uploads/{id}/events" => (json!(["progress", "summary"]), "UploadStatus"),
                    _ => (json!(["metric"]), "LiveSample"),
                };
                sse["schema"] = json!({"type": "object", "required": ["data"], "properties": {
                    "event": {"type": "string", "enum": events},
                    "data": {"type": "string", "contentMediaType": "application/json",
                             "contentSchema": {"$ref": format!("#/components/schemas/{item}")}},
                    "id": {"type": "string"},
                    "retry": {"type": "integer", "minimum": 0},
                }});
            }
            let write = !matches!(method.as_str(), "get" | "head" | "options");
            if tokens.required(path, write) {
                op["security"] = json!([{"bearer": []}]);
                let Some(responses) = op.get_mut("responses").and_then(|r| r.as_object_mut()) else { continue };
                responses.entry("401").or_insert_with(|| error.clone());
                if write {
                    responses.entry("403").or_insert_with(|| error.clone());
                }
            }
            for p in op.get_mut("parameters").and_then(|p| p.as_array_mut()).into_iter().flatten() {
                if p["name"] == "width" && p["in"] == "path" {
                    p["schema"] = json!({"type": "string", "enum": widths});
                }
                // A parameter is absent or a string, never JSON null (utoipa calls an Option nullable).
                if let Some(types) = p["schema"].get_mut("type").and_then(|t| t.as_array_mut()) {
                    types.retain(|t| t != "null");
                    if let [one] = types.as_slice() {
                        p["schema"]["type"] = one.clone();
                    }
                }
                // No name or parameter holds a NUL: the middleware refuses `%00` anywhere in the URL.
                if p["schema"]["type"] == "string" && p["schema"].get("pattern").is_none() {
                    p["schema"]["pattern"] = json!("^[^\\x00]*$");
                }
            }
        }
    }
    doc.to_string()
}
