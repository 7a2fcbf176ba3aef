//! The served OpenAPI document: a well-formed OpenAPI 3.1 document whose every operation is routed, and
//! whose schemas hold for the responses the server actually gives (each JSON operation at least once with
//! a success and with an error).

use crate::common::{TestApp, spawn_app, spawn_app_with};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// The served document and the operations checked against it so far.
pub struct Contract {
    doc: Value,
    /// (method, path template, status) of every response checked.
    pub seen: BTreeSet<(String, String, u16)>,
}

impl Contract {
    pub async fn of(app: &TestApp) -> Contract {
        let (s, doc) = app.get("/openapi.json").await;
        assert_eq!(s, 200);
        Contract { doc, seen: BTreeSet::new() }
    }

    /// The documented path template a concrete path falls under (static segments before parameters, as the
    /// router matches).
    fn template(&self, path: &str) -> Option<String> {
        let path = path.split('?').next().unwrap_or(path);
        let concrete: Vec<&str> = path.split('/').collect();
        let matches = |t: &str| {
            let parts: Vec<&str> = t.split('/').collect();
            parts.len() == concrete.len()
                && parts.iter().zip(&concrete).all(|(t, c)| match t.find('{') {
                    None => t == c,
                    Some(i) => c.starts_with(&t[..i]) && c.len() > i,
                })
        };
        let params = |t: &str| t.matches('{').count();
        self.doc["paths"].as_object()?.keys().filter(|t| matches(t)).min_by_key(|t| params(t)).cloned()
    }

    /// Checks one response: its path and method are documented, its status too, and a JSON body holds to
    /// the status's schema (formats included).
    pub fn check(&mut self, method: &Method, path: &str, status: u16, content_type: &str, body: &[u8]) {
        let what = format!("{method} {path} → {status}");
        let template = self.template(path).unwrap_or_else(|| panic!("{what}: no documented path"));
        let op = &self.doc["paths"][&template][method.as_str().to_lowercase()];
        assert!(op.is_object(), "{what}: {method} is not documented on {template}");
        let mut response = op["responses"][status.to_string()].clone();
        assert!(response.is_object(), "{what}: status {status} is not documented");
        if let Some(r) = response["$ref"].as_str() {
            response = self.resolve(r).clone();
        }
        let media = content_type.split(';').next().unwrap_or("").trim();
        let content = response["content"].as_object().cloned().unwrap_or_default();
        let documented = content.keys().any(|k| k.split(';').next().unwrap_or("").trim() == media);
        assert!(documented || body.is_empty(), "{what}: {content_type} is not documented ({:?})", content.keys());
        if media == "application/json" {
            let body: Value = serde_json::from_slice(body).unwrap_or_else(|e| panic!("{what}: not JSON: {e}"));
            let schema = content.get("application/json").map(|m| m["schema"].clone());
            let schema = schema.unwrap_or_else(|| panic!("{what}: a JSON response without a schema"));
            let errors = self.errors(&schema, &body);
            assert!(errors.is_empty(), "{what}: the body breaks its schema: {errors:#?}\n{body:#}");
        }
        self.seen.insert((method.as_str().to_owned(), template, status));
    }

    fn resolve(&self, pointer: &str) -> &Value {
        let found = self.doc.pointer(pointer.trim_start_matches('#'));
        found.unwrap_or_else(|| panic!("{pointer} does not resolve"))
    }

    /// Why `value` breaks `schema` (whose `$ref`s point into the document's components).
    fn errors(&self, schema: &Value, value: &Value) -> Vec<String> {
        let mut root = json!({"allOf": [schema]});
        root["components"] = self.doc["components"].clone();
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("{schema} is not a valid schema: {e}"));
        validator.iter_errors(value).map(|e| format!("{} at {}", e, e.instance_path())).collect()
    }

    /// Sends a request and checks its response; returns the status and the JSON body (or null).
    pub async fn send(&mut self, app: &TestApp, method: Method, path: &str, body: &str) -> (u16, Value) {
        let mut r = app.http.request(method.clone(), format!("{}{path}", app.base));
        if !body.is_empty() {
            r = r.header("content-type", "application/json").body(body.to_owned());
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        let ct = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let bytes = r.bytes().await.unwrap();
        self.check(&method, path, status, &ct, &bytes);
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// Every documented (method, path) answering JSON, with each of its statuses.
    fn json_operations(&self) -> BTreeSet<(String, String)> {
        let mut ops = BTreeSet::new();
        for (path, item) in self.doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let json = op["responses"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .any(|(s, r)| s.starts_with('2') && r["content"].get("application/json").is_some());
                if json {
                    ops.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        ops
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_well_formed_openapi_3_1() {
    let app = spawn_app().await;
    let c = Contract::of(&app).await;
    let doc = &c.doc;
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let mut ids = BTreeSet::new();
    let methods = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
    for (path, item) in doc["paths"].as_object().expect("paths") {
        assert!(path.starts_with('/'), "{path}");
        let vars: BTreeSet<&str> = path.split('{').skip(1).map(|s| s.split('}').next().unwrap()).collect();
        for (method, op) in item.as_object().unwrap() {
            assert!(methods.contains(&method.as_str()), "{path}: {method}");
            let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path}: no operationId"));
            assert!(ids.insert(id.to_owned()), "operationId {id} twice");
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            let in_path: BTreeSet<&str> =
                params.iter().filter(|p| p["in"] == "path").map(|p| p["name"].as_str().unwrap()).collect();
            assert_eq!(in_path, vars, "{method} {path}: path parameters");
            for p in &params {
                assert!(["path", "query", "header", "cookie"].contains(&p["in"].as_str().unwrap()), "{p}");
                assert!(p["in"] != "path" || p["required"] == true, "{method} {path}: {p}");
                c.errors(&p["schema"], &Value::Null); // compiles: a valid schema
            }
            let responses = op["responses"].as_object().unwrap();
            assert!(!responses.is_empty(), "{method} {path}: no responses");
            for (status, r) in responses {
                assert!(status.len() == 3 && status.parse::<u16>().is_ok(), "{method} {path}: {status}");
                let r = match r["$ref"].as_str() {
                    Some(p) => c.resolve(p),
                    None => r,
                };
                assert!(r["description"].is_string(), "{method} {path} {status}: no description");
                if let Some(json) = r["content"].get("application/json") {
                    assert!(json["schema"].is_object(), "{method} {path} {status}: a JSON body without schema");
                }
            }
            if let Some(body) = op.get("requestBody") {
                let schema = &body["content"]["application/json"]["schema"];
                if !schema.is_null() {
                    c.errors(schema, &Value::Null);
                }
            }
        }
    }
    // Every reference resolves, and every component schema is a valid JSON Schema.
    let text = doc.to_string();
    for r in text.split("\"$ref\":\"").skip(1).map(|s| s.split('"').next().unwrap()) {
        c.resolve(r);
    }
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        assert!(schema.is_object(), "{name}");
        c.errors(&json!({"$ref": format!("#/components/schemas/{name}")}), &Value::Null);
    }
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_responses_hold_to_the_document() {
    // Partitioned, so that /v1/status has members and partitions to check.
    let app = spawn_app_with(|c| c.processor.partitions = 2).await;
    let mut c = Contract::of(&app).await;
    let events = [
        ("price.ACME", r#"{"ts":"2026-01-02","price":10,"volume":3}"#),
        ("price.ACME", r#"{"ts":"2026-01-03T00:00:00Z","price":11}"#),
        ("price.INITECH", r#"{"ts":"2026-01-02","price":20}"#),
        ("metric.db-1", r#"{"cpu_usage":12.5,"load1":0.5}"#),
        ("port.AEAJM", r#"{"name":"Ajman","country":"United Arab Emirates","coordinates":[55.5,25.4]}"#),
        ("fleet.driver.d1", r#"{"name":"Alice Smith"}"#),
        ("fleet.shipment.s1", r#"{"address":"44 Fake Dr., San Diego, CA"}"#),
        ("survey.blue", r#"{"id":1,"text":"hi","device":"ios","location":"MX","created_at":"2026-01-02"}"#),
        ("survey.blue", r#"{"status":"ok"}"#),
        ("index.world", r#"{"weights":{"ACME":0.5,"INITECH":0.5}}"#),
    ];
    for (subject, body) in events {
        let (s, b) = c.send(&app, Method::POST, &format!("/v1/events/{subject}"), body).await;
        assert_eq!(s, 202, "{subject}: {b}");
    }
    // A dead letter, to list and replay.
    app.publish_plain("price.BAD", r#"{"price":-1}"#).await;
    app.settled().await;

    let get = Method::GET;
    let cases: Vec<(Method, &str, &str, u16)> = vec![
        (get.clone(), "/v1/series/price", "", 200),
        (get.clone(), "/v1/series/price?fresh=maybe", "", 400),
        (get.clone(), "/v1/series/price/ACME?from=2026-01-01&limit=10", "", 200),
        (get.clone(), "/v1/series/price/NOPE", "", 404),
        (get.clone(), "/v1/metrics/latest?limit=10", "", 200),
        (get.clone(), "/v1/metrics/latest", "", 400),
        (get.clone(), "/v1/servers", "", 200),
        (get.clone(), "/v1/servers?fresh=2", "", 400),
        (get.clone(), "/v1/series/metric/db-1/cpu_usage", "", 200),
        (get.clone(), "/v1/series/metric/db-1/nope", "", 404),
        (get.clone(), "/v1/series/metric/db-1/cpu_usage/rollups/1m", "", 200),
        (get.clone(), "/v1/series/metric/db-1/cpu_usage/rollups/7q", "", 400),
        (get.clone(), "/v1/ports?country=United%20Arab%20Emirates", "", 200),
        (get.clone(), "/v1/ports?offset=-1", "", 400),
        (get.clone(), "/v1/ports/nearest?lat=25&lon=55", "", 200),
        (get.clone(), "/v1/ports/nearest?lat=95&lon=55", "", 400),
        (get.clone(), "/v1/ports/countries", "", 200),
        (get.clone(), "/v1/ports/countries?fresh=x", "", 400),
        (get.clone(), "/v1/ports/AEAJM", "", 200),
        (get.clone(), "/v1/ports/NOPE", "", 404),
        (get.clone(), "/v1/fleet/plan", "", 200),
        (get.clone(), "/v1/fleet/plan?fresh=x", "", 400),
        (get.clone(), "/v1/fleet/scores?shipment=s1&driver=d1", "", 200),
        (get.clone(), "/v1/fleet/scores?shipment=s1&driver=nope", "", 404),
        (get.clone(), "/v1/surveys", "", 200),
        (get.clone(), "/v1/surveys?limit=0", "", 400),
        (get.clone(), "/v1/indices", "", 200),
        (get.clone(), "/v1/indices?fresh=x", "", 400),
        (get.clone(), "/v1/indices/world", "", 200),
        (get.clone(), "/v1/indices/NOPE", "", 404),
        (Method::PUT, "/v1/indices/world2", r#"{"base":10,"weights":{"ACME":1}}"#, 200),
        (Method::PUT, "/v1/indices/world2", r#"{"weights":{}}"#, 400),
        (get.clone(), "/v1/status", "", 200),
        (get.clone(), "/v1/dlq", "", 200),
        (get.clone(), "/v1/dlq?limit=0", "", 400),
        (Method::POST, "/v1/dlq/1/replay", "", 202),
        (Method::POST, "/v1/dlq/99999/replay", "", 404),
        (get.clone(), "/v1/uploads/nope", "", 404),
        (get.clone(), "/v1/uploads/nope/events", "", 404),
        (Method::POST, "/v1/uploads?kind=nope", "", 400),
        (get.clone(), "/v1/live/ws", "", 400),
        (get.clone(), "/healthz", "", 200),
        (get.clone(), "/healthz?x=%00", "", 400),
        (get.clone(), "/readyz", "", 200),
        (get.clone(), "/openapi.json", "", 200),
    ];
    for (method, path, body, status) in cases {
        let (s, b) = c.send(&app, method.clone(), path, body).await;
        assert_eq!(s, status, "{method} {path}: {b}");
    }
    // Each event kind refuses what its schema refuses.
    for (subject, body) in [
        ("price.ACME", r#"{"price":0}"#),
        ("index.w", r#"{"weights":{"A":1},"x":1}"#),
        ("metric.db-1", r#"{"ts":"2026-01-02"}"#),
        ("port.X", r#"{"name":" "}"#),
        ("fleet.driver.d2", r#"{"address":"x"}"#),
        ("fleet.shipment.s2", r#"{"deleted":true,"address":"x"}"#),
        ("survey.blue", r#"{"status":"fine"}"#),
    ] {
        let (s, b) = c.send(&app, Method::POST, &format!("/v1/events/{subject}"), body).await;
        assert_eq!(s, 400, "{subject} {body}: {b}");
    }

    // An upload, its status and its progress stream.
    let r = app.http.post(format!("{}/v1/uploads?kind=numbers", app.base)).body("1\n2\n3\n").send().await.unwrap();
    let (status, ct) = (r.status().as_u16(), r.headers()["content-type"].to_str().unwrap().to_owned());
    let bytes = r.bytes().await.unwrap();
    c.check(&Method::POST, "/v1/uploads?kind=numbers", status, &ct, &bytes);
    let started: Value = serde_json::from_slice(&bytes).unwrap();
    let status_path = started["status"].as_str().unwrap().to_owned();
    let (s, _) = c.send(&app, get.clone(), &status_path, "").await;
    assert_eq!(s, 200);
    let r = app.http.get(format!("{}{}", app.base, started["events"].as_str().unwrap())).send().await.unwrap();
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    c.check(&get, started["events"].as_str().unwrap(), r.status().as_u16(), &ct, b"");
    // Every SSE `data:` of the upload is an UploadStatus.
    let text = r.text().await.unwrap();
    for data in text.lines().filter_map(|l| l.strip_prefix("data:")) {
        let v: Value = serde_json::from_str(data.trim()).unwrap();
        let errors = c.errors(&json!({"$ref": "#/components/schemas/UploadStatus"}), &v);
        assert!(errors.is_empty(), "{errors:?}: {v}");
    }

    // Every operation that answers JSON was checked with a success and with an error.
    let statuses =
        |op: &(String, String), ok: bool| c.seen.iter().any(|(m, p, s)| (m, p) == (&op.0, &op.1) && (*s < 300) == ok);
    for op in c.json_operations() {
        if ["/readyz", "/openapi.json", "/v1/status"].contains(&op.1.as_str()) {
            continue; // no error to provoke but the middleware's, checked on /healthz
        }
        assert!(statuses(&op, true), "{op:?}: no success checked");
        assert!(statuses(&op, false), "{op:?}: no error checked");
    }
}
