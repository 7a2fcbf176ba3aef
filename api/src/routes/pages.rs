//! The pages: the dashboard at `/`, this API's OpenAPI document at `/openapi.json` and its rendering at
//! `/docs` (dependency-free, so it works offline).

use axum::Extension;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use std::sync::Arc;

const DOCS: &str = include_str!("../docs.html");
const DASHBOARD: &str = include_str!("../dashboard.html");

/// The served document's text, made once when the router is built.
#[derive(Clone)]
pub(crate) struct Document(pub(crate) Arc<str>);

#[utoipa::path(get, path = "/", tag = "operations", operation_id = "dashboard",
    summary = "The live dashboard page (servers, prices, indices)",
    responses((status = 200, description = "HTML", body = String, content_type = "text/html")))]
pub async fn dashboard() -> Html<&'static str> {
    Html(DASHBOARD)
}

#[utoipa::path(get, path = "/docs", tag = "operations", operation_id = "docs",
    summary = "This document, rendered (no external assets)",
    responses((status = 200, description = "HTML", body = String, content_type = "text/html")))]
pub async fn docs() -> Html<&'static str> {
    Html(DOCS)
}

#[utoipa::path(get, path = "/openapi.json", tag = "operations", operation_id = "openapi",
    summary = "This document",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)))]
pub async fn openapi(Extension(doc): Extension<Document>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], doc.0.to_string())
}
